//! The answer for paths nothing else serves: for a gRPC call (its content type is
//! `application/grpc...`), `Unimplemented` with the method's name instead of an empty status;
//! for anything else, the `404 page not found` etcd's HTTP server answers.

use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// Builds the response for an unknown path.
pub async fn unimplemented_method(uri: Uri, headers: HeaderMap) -> Response {
    if is_grpc(&headers) {
        return crate::errors::unknown_path(uri.path()).into_http::<axum::body::Body>();
    }
    (
        StatusCode::NOT_FOUND,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        "404 page not found\n",
    )
        .into_response()
}

/// Whether a request is a gRPC call.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}
