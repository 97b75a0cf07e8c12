//! A unary call through the gateway: one JSON request in, one JSON response (or etcd's error
//! body) out.

use std::future::Future;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::Status;

use super::error::{Failure, GRPC_METADATA_CONTENT_TYPE};
use super::services::Services;
use super::{json, request};

/// Decodes the body, makes the call and encodes its answer.
pub async fn call<Req, Resp, F, Fut>(services: Arc<Services>, http: Request, rpc: F) -> Response
where
    Req: DeserializeOwned + Default + prost::Message,
    Resp: Serialize,
    F: FnOnce(Arc<Services>, tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    match answer(services, http, rpc).await {
        Ok(body) => (
            [
                (header::CONTENT_TYPE.as_str(), "application/json"),
                GRPC_METADATA_CONTENT_TYPE,
            ],
            body,
        )
            .into_response(),
        Err(failure) => failure.answer(),
    }
}

async fn answer<Req, Resp, F, Fut>(services: Arc<Services>, http: Request, rpc: F) -> Result<Vec<u8>, Failure>
where
    Req: DeserializeOwned + Default + prost::Message,
    Resp: Serialize,
    F: FnOnce(Arc<Services>, tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let (parts, body) = http.into_parts();
    let max = services.max_message;
    let body = request::read_body(body, max).await.map_err(Failure::Call)?;
    let message: Req = json::decode_one(&body).map_err(Failure::Request)?;
    request::check_size(&message, max).map_err(Failure::Call)?;
    let response = rpc(services, request::grpc_request(&parts, message))
        .await
        .map_err(Failure::Call)?;
    json::encode(response.get_ref()).map_err(Failure::Request)
}
