//! From an HTTP request to the `tonic::Request` the services take: the body read within the
//! member's request limit, the auth token from the `Authorization` header (etcd's gateway hands
//! it to the server as the `token` metadata), and the connection's extensions (a TLS client
//! certificate identifies a user through the gateway as it does over gRPC).

use axum::body::{Body, Bytes};
use axum::http::request::Parts;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::Status;

use crate::auth::TOKEN_METADATA_KEY;
use crate::errors;

/// What gRPC adds to a message's limit (framing, headers), as the client port allows it.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The largest protobuf message a gateway call may carry: what the member's gRPC services
/// take (`--max-request-bytes` plus gRPC's overhead).
pub fn max_message(max_request_bytes: usize) -> usize {
    max_request_bytes.saturating_add(GRPC_OVERHEAD_BYTES)
}

/// Reads a request body. JSON spells bytes in base64, so the body may be up to twice the
/// message limit; each decoded message is checked against the limit itself.
pub async fn read_body(body: Body, max_message: usize) -> Result<Bytes, Status> {
    let limit = max_message.saturating_mul(2);
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| errors::message_too_large(limit.saturating_add(1), max_message))
}

/// Checks a decoded message against the limit.
pub fn check_size<T: prost::Message>(message: &T, max_message: usize) -> Result<(), Status> {
    let len = message.encoded_len();
    if len > max_message {
        return Err(errors::message_too_large(len, max_message));
    }
    Ok(())
}

/// The token a request carries: the `Authorization` header (as etcd's gateway forwards it), or
/// grpc-gateway's `Grpc-Metadata-Token`.
fn token(parts: &Parts) -> Option<MetadataValue<tonic::metadata::Ascii>> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .or_else(|| parts.headers.get("grpc-metadata-token"))?;
    MetadataValue::try_from(header.as_bytes()).ok()
}

/// Wraps a decoded message as the services expect a call: the token as metadata, the
/// connection's extensions carried over.
pub fn grpc_request<T>(parts: &Parts, message: T) -> tonic::Request<T> {
    let mut metadata = MetadataMap::new();
    if let Some(token) = token(parts) {
        metadata.insert(TOKEN_METADATA_KEY, token);
    }
    tonic::Request::from_parts(metadata, parts.extensions.clone(), message)
}
