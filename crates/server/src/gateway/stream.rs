//! Streaming calls through the gateway, as grpc-gateway streams them: every response message is
//! a line `{"result":…}`; a call that fails after the response began ends with a line
//! `{"error":{…}}`. A client stream (Watch, LeaseKeepAlive) is the body's JSON values, one
//! after another, read as they arrive.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::codec::Codec;
use tonic::{Status, Streaming};

use concord_proto::codec::CompactCodec;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::error::{Failure, GRPC_METADATA_CONTENT_TYPE};
use super::services::Services;
use super::values::JsonValues;
use super::{error, json, request};

/// Client messages decoded ahead of the service reading them.
const FRAMES_IN_FLIGHT: usize = 16;

/// What a client stream does once the body's requests are all sent.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum AfterRequests {
    /// Keep the stream open (Watch: etcd keeps watching until the client goes away).
    KeepOpen,
    /// Close it (LeaseKeepAlive: etcd answers each request and ends).
    Close,
}

/// A server stream (Election.Observe, Maintenance.Snapshot): one JSON request, streamed answers.
pub async fn server<Req, Resp, S, F, Fut>(services: Arc<Services>, http: Request, rpc: F) -> Response
where
    Req: DeserializeOwned + Default + prost::Message,
    Resp: Serialize + Send + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
    F: FnOnce(Arc<Services>, tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<S>, Status>>,
{
    let (parts, body) = http.into_parts();
    let max = services.max_message;
    let started = async {
        let body = request::read_body(body, max).await.map_err(Failure::Call)?;
        let message: Req = json::decode_one(&body).map_err(Failure::Request)?;
        request::check_size(&message, max).map_err(Failure::Call)?;
        rpc(services, request::grpc_request(&parts, message))
            .await
            .map_err(Failure::Call)
    };
    match started.await {
        Ok(response) => lines(response.into_inner()),
        Err(failure) => failure.answer(),
    }
}

/// A bidirectional stream (Watch, LeaseKeepAlive): the body's JSON values as the client's
/// messages, read as they arrive; streamed answers. A malformed first value fails the call with
/// etcd's error answer; a malformed later one ends the client's side of the stream.
pub async fn bidi<Req, Resp, S, F, Fut>(
    services: Arc<Services>,
    http: Request,
    after: AfterRequests,
    rpc: F,
) -> Response
where
    Req: DeserializeOwned + prost::Message + Default + Send + 'static,
    Resp: Serialize + Send + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
    F: FnOnce(Arc<Services>, tonic::Request<Streaming<Req>>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<S>, Status>>,
{
    let (parts, body) = http.into_parts();
    let max = services.max_message;
    let mut values = JsonValues::new(body, max.saturating_mul(2));
    let first = match values.next::<Req>().await {
        None => None,
        Some(Ok(message)) => match request::check_size(&message, max) {
            Ok(()) => Some(message),
            Err(status) => return Failure::Call(status).answer(),
        },
        // An oversized first value is gRPC's refusal in etcd; anything else the gateway's.
        Some(Err(status)) if status.code() == tonic::Code::OutOfRange => return Failure::Call(status).answer(),
        Some(Err(status)) => return Failure::Request(status).answer(),
    };
    let (frames, inbound) = mpsc::channel::<Result<Bytes, Infallible>>(FRAMES_IN_FLIGHT);
    tokio::spawn(async move {
        if let Some(first) = first {
            if frames.send(Ok(frame(&first))).await.is_err() {
                return;
            }
            while let Some(Ok(message)) = values.next::<Req>().await {
                if request::check_size(&message, max).is_err() || frames.send(Ok(frame(&message))).await.is_err() {
                    return;
                }
            }
        }
        if after == AfterRequests::KeepOpen {
            // Until the call lets go of its inbound stream (the client went away).
            frames.closed().await;
        }
    });
    let decoder = CompactCodec::<(), Req>::default().decoder();
    let inbound = Streaming::new_request(
        decoder,
        Body::from_stream(ReceiverStream::new(inbound)),
        None,
        Some(max),
    );
    match rpc(services, request::grpc_request(&parts, inbound)).await {
        Ok(response) => lines(response.into_inner()),
        Err(status) => Failure::Call(status).answer(),
    }
}

/// A message as a gRPC frame, as the services' decoder reads a client stream.
fn frame<Req: prost::Message>(message: &Req) -> Bytes {
    let len = message.encoded_len();
    let mut frame = Vec::with_capacity(5 + len);
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    message.encode_raw(&mut frame);
    Bytes::from(frame)
}

/// The response stream as newline-separated JSON; a failure ends it with its error line.
fn lines<Resp, S>(stream: S) -> Response
where
    Resp: Serialize + Send + 'static,
    S: Stream<Item = Result<Resp, Status>> + Send + 'static,
{
    let stream = Box::pin(stream);
    let body = futures::stream::unfold(Some(stream), |state| async move {
        let mut stream = state?;
        let line = match stream.next().await? {
            Ok(message) => json::stream_line(&message),
            Err(status) => Err(status),
        };
        Some(match line {
            Ok(line) => (Ok::<_, Infallible>(Bytes::from(line)), Some(stream)),
            Err(status) => (Ok(Bytes::from(error::stream_line(&status))), None),
        })
    });
    (
        [
            (header::CONTENT_TYPE.as_str(), "application/json"),
            GRPC_METADATA_CONTENT_TYPE,
        ],
        Body::from_stream(body),
    )
        .into_response()
}
