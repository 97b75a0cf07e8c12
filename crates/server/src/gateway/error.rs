//! etcd's gateway error answers: the JSON body grpc-gateway v1 writes for a failed call
//! (`{"error":"…","code":N,"message":"…"}`), under the HTTP status grpc-gateway's
//! `HTTPStatusFromCode` gives the gRPC code, and the error object of a failed stream.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tonic::{Code, Status};

/// The HTTP status grpc-gateway v1 (etcd 3.4's gateway) answers a gRPC code with.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// The answer to a call that failed before any response was sent: etcd's error body.
pub fn response(status: &Status) -> Response {
    /// etcd's fields, in etcd's order.
    #[derive(serde::Serialize)]
    struct Body<'a> {
        error: &'a str,
        message: &'a str,
        code: i32,
    }
    let body = Body {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    };
    let text = serde_json::to_string(&body).unwrap_or_default();
    (
        http_status(status.code()),
        [(header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}

/// The line a response stream ends with when the call fails mid-stream, as grpc-gateway v1
/// writes it: `{"error":{"grpc_code":N,"http_code":H,"message":"…","http_status":"…"}}`.
pub fn stream_line(status: &Status) -> Vec<u8> {
    let http = http_status(status.code());
    let body = serde_json::json!({
        "error": {
            "grpc_code": status.code() as i32,
            "http_code": http.as_u16(),
            "message": status.message(),
            "http_status": http.canonical_reason().unwrap_or(""),
        }
    });
    let mut line = body.to_string().into_bytes();
    line.push(b'\n');
    line
}

/// A plain-text answer as Go's HTTP server writes it (`404 page not found`, ...).
pub fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_as_grpc_gateway_v1() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::FailedPrecondition), StatusCode::PRECONDITION_FAILED);
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(Code::Unknown), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn stream_error_names_both_codes() {
        let line = stream_line(&Status::not_found("gone"));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["error"]["grpc_code"], 5);
        assert_eq!(v["error"]["http_code"], 404);
        assert_eq!(v["error"]["http_status"], "Not Found");
    }
}
