//! etcd's gateway error answers: the JSON body grpc-gateway v1 writes for a failed call
//! (`{"error":"…","code":N,"message":"…"}`), under the HTTP status grpc-gateway's
//! `HTTPStatusFromCode` gives the gRPC code, and the error object of a failed stream.
//!
//! etcd's gateway is a gRPC client of its own member, and its answers show it: a call the
//! gRPC server answered carries that answer's metadata under grpc-gateway's names. A success has
//! the header `Grpc-Metadata-Content-Type: application/grpc` ([`GRPC_METADATA_CONTENT_TYPE`]);
//! a failure, which gRPC answers with trailers only, ends with the trailer
//! `Grpc-Trailer-Content-Type: application/grpc`, announced in a `Trailer` header
//! ([`call_failed`]). A request the gateway cannot read never reaches gRPC and has neither
//! ([`response`]). HTTP/1.1 carries the trailer only to clients that accept trailers (`TE:
//! trailers`); Go's server sends it to every client.

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body::Frame;
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

/// Why a gateway call has no response. Which side of etcd's gateway the failure is on decides
/// the answer's headers.
pub enum Failure {
    /// The gateway could not read the request (no JSON of the request's type): it never became
    /// a gRPC call.
    Request(Status),
    /// The gRPC side failed the call, or refused it as gRPC would (a message over the limit).
    Call(Status),
}

impl Failure {
    /// etcd's answer to this failure.
    pub fn answer(&self) -> Response {
        match self {
            Failure::Request(status) => response(status),
            Failure::Call(status) => call_failed(status),
        }
    }
}

/// The header etcd's gateway forwards the gRPC server's `content-type` as, on every call that
/// succeeds.
pub const GRPC_METADATA_CONTENT_TYPE: (&str, &str) = ("grpc-metadata-content-type", "application/grpc");

/// The trailer etcd's gateway forwards the `content-type` of a failed call's trailers as.
const GRPC_TRAILER_CONTENT_TYPE: &str = "grpc-trailer-content-type";

/// The answer to a request the gateway could not make a call of (a body that is no JSON of the
/// request's type): etcd's error body.
pub fn response(status: &Status) -> Response {
    (
        http_status(status.code()),
        [(header::CONTENT_TYPE, "application/json")],
        error_json(status),
    )
        .into_response()
}

/// etcd's error body for `status`.
fn error_json(status: &Status) -> String {
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
    serde_json::to_string(&body).unwrap_or_default()
}

/// The answer to a call the member's services failed, or refused as gRPC would (a message over
/// the size limit): etcd's error body, then the gRPC trailer etcd's gateway forwards.
pub fn call_failed(status: &Status) -> Response {
    let mut trailers = HeaderMap::new();
    trailers.insert(
        HeaderName::from_static(GRPC_TRAILER_CONTENT_TYPE),
        HeaderValue::from_static("application/grpc"),
    );
    let frames = [Frame::data(Bytes::from(error_json(status))), Frame::trailers(trailers)]
        .map(Ok::<_, std::convert::Infallible>);
    // A stream of frames has no length, so HTTP/1.1 sends it chunked, with room for the trailer.
    let body = Body::new(http_body_util::StreamBody::new(futures::stream::iter(frames)));
    (
        http_status(status.code()),
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::TRAILER, "Grpc-Trailer-Content-Type"),
        ],
        body,
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

    #[tokio::test]
    async fn failed_calls_end_with_grpc_gateways_trailer() {
        use http_body_util::BodyExt;
        let answer = call_failed(&Status::invalid_argument("etcdserver: key is not provided"));
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
        assert_eq!(answer.headers()[header::TRAILER], "Grpc-Trailer-Content-Type");
        assert!(answer.headers().get(header::CONTENT_LENGTH).is_none());
        let collected = answer.into_body().collect().await.unwrap();
        assert_eq!(
            collected.trailers().unwrap()["grpc-trailer-content-type"],
            "application/grpc"
        );
        assert_eq!(
            collected.to_bytes(),
            r#"{"error":"etcdserver: key is not provided","message":"etcdserver: key is not provided","code":3}"#
        );
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
