//! The answer for gRPC methods Concord does not serve yet: `Unimplemented`
//! with the method's name, instead of an empty status.

/// Builds the response for an unknown method path.
pub async fn unimplemented_method(uri: axum::http::Uri) -> axum::response::Response {
    tonic::Status::unimplemented(format!(
        "concord: {} is not implemented yet",
        uri.path()
    ))
    .into_http::<axum::body::Body>()
}
