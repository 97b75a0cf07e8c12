//! etcd's KV calls answered without tonic's generic server.
//!
//! Every KV call is unary: one request message in, one response message out. tonic's server
//! handles any call shape, so it decodes through a streaming decoder and encodes through a
//! streaming body, each with its own buffers and state machines; at tens of thousands of puts a
//! second that costs a member more than the KV handler's own work. Here the request's body is
//! gathered (it is almost always one data frame), its one message decoded with prost, the
//! handler ([`KvService`], the same one tonic would call) awaited, and the answer sent as one
//! data frame and the `grpc-status: 0` trailers. A failed call is answered "trailers-only", as
//! tonic does, with the same statuses and messages.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use concord_proto::etcdserverpb::kv_server::Kv;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::errors;
use crate::kv::KvService;

/// A gRPC message's frame header: a compression flag and the message's length.
const FRAME_HEADER_BYTES: usize = 5;

/// The KV methods, by the last part of their path.
const PATH_PREFIX: &str = "/etcdserverpb.KV/";

/// The KV service's methods.
enum Method {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
}

/// Whether `path` names a KV call (one this module answers).
pub fn is_kv(path: &str) -> bool {
    path.starts_with(PATH_PREFIX)
}

/// Answers one KV call; requests whose message exceeds `max_message` bytes are refused as tonic
/// refuses them.
pub async fn call<B>(kv: Arc<KvService>, request: Request<B>, max_message: usize) -> Response<UnaryBody>
where
    B: Body<Data = Bytes> + Send + Unpin,
    B::Error: std::fmt::Display,
{
    let (head, body) = request.into_parts();
    let method = match head.uri.path().strip_prefix(PATH_PREFIX).unwrap_or_default() {
        "Range" => Method::Range,
        "Put" => Method::Put,
        "DeleteRange" => Method::DeleteRange,
        "Txn" => Method::Txn,
        "Compact" => Method::Compact,
        other => return failed(errors::unknown_kv_method(other)),
    };
    if let Some(encoding) = head
        .headers
        .get("grpc-encoding")
        .filter(|e| e.as_bytes() != b"identity")
    {
        let encoding = String::from_utf8_lossy(encoding.as_bytes());
        return failed(errors::compression_unsupported(&encoding));
    }
    let message = match read_message(body, max_message).await {
        Ok(message) => message,
        Err(status) => return failed(status),
    };
    let metadata = MetadataMap::from_headers(head.headers);
    let extensions = head.extensions;
    let answered = match method {
        Method::Range => answer(message, metadata, extensions, |r| Kv::range(&*kv, r)).await,
        Method::Put => answer(message, metadata, extensions, |r| Kv::put(&*kv, r)).await,
        Method::DeleteRange => answer(message, metadata, extensions, |r| Kv::delete_range(&*kv, r)).await,
        Method::Txn => answer(message, metadata, extensions, |r| Kv::txn(&*kv, r)).await,
        Method::Compact => answer(message, metadata, extensions, |r| Kv::compact(&*kv, r)).await,
    };
    match answered {
        Ok(response) => response,
        Err(status) => failed(status),
    }
}

/// The largest answer sent, as etcd sets grpc-go's `MaxSendMsgSize` (`math.MaxInt32`); a gRPC
/// frame's length field could not say more than 4 GiB anyway.
const MAX_SEND_BYTES: usize = i32::MAX as usize;

/// Decodes the request, runs `handler` on it and encodes its answer.
async fn answer<Q, A, F>(
    message: Bytes,
    metadata: MetadataMap,
    extensions: tonic::Extensions,
    handler: impl FnOnce(tonic::Request<Q>) -> F,
) -> Result<Response<UnaryBody>, Status>
where
    Q: prost::Message + Default,
    A: prost::Message,
    F: std::future::Future<Output = Result<tonic::Response<A>, Status>>,
{
    let decoded = Q::decode(message).map_err(errors::decode_failed)?;
    let request = tonic::Request::from_parts(metadata, extensions, decoded);
    let (metadata, answer, _) = handler(request).await?.into_parts();
    let len = answer.encoded_len();
    if len > MAX_SEND_BYTES {
        return Err(errors::response_too_large(len, MAX_SEND_BYTES));
    }
    let mut data = BytesMut::with_capacity(FRAME_HEADER_BYTES + len);
    data.put_u8(0);
    data.put_u32(len as u32);
    answer.encode(&mut data).map_err(errors::encode_failed)?;
    let mut response = Response::new(UnaryBody {
        data: Some(data.freeze()),
        trailers: Some(ok_trailers()),
    });
    *response.headers_mut() = metadata.into_headers();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(response)
}

/// The request's one message, without its frame header.
///
/// Nothing past one message of at most `max_message` bytes is held: the call is refused as soon
/// as the announced length passes the limit or a byte arrives after the announced message (a
/// unary call carries exactly one), without waiting for the rest of the body.
async fn read_message<B>(mut body: B, max_message: usize) -> Result<Bytes, Status>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut message = Gathered::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(errors::read_failed)?;
        if let Ok(data) = frame.into_data() {
            message.push(data, max_message)?;
        }
    }
    message.finish()
}

/// The bytes of a unary request's one message, as its data frames arrive.
#[derive(Default)]
struct Gathered {
    /// The first data frame, used as it is while it is the only one (the usual case).
    first: Bytes,
    /// Everything received, once a second frame arrived.
    joined: Option<BytesMut>,
    /// The message's length, once its frame header is in.
    announced: Option<usize>,
}

impl Gathered {
    /// Bytes received so far, frame header included.
    fn len(&self) -> usize {
        self.joined.as_ref().map_or(self.first.len(), BytesMut::len)
    }

    /// Adds one data frame, refusing the call once it cannot be one message of at most
    /// `max_message` bytes.
    fn push(&mut self, data: Bytes, max_message: usize) -> Result<(), Status> {
        if data.is_empty() {
            return Ok(());
        }
        if let Some(len) = self.announced {
            if self.len() + data.len() > FRAME_HEADER_BYTES + len {
                return Err(errors::more_than_one_message());
            }
        }
        match self.joined.as_mut() {
            Some(joined) => joined.extend_from_slice(&data),
            None if self.first.is_empty() => self.first = data,
            None => {
                let capacity = FRAME_HEADER_BYTES + self.announced.unwrap_or(0);
                let mut joined = BytesMut::with_capacity(capacity.max(self.first.len() + data.len()));
                joined.extend_from_slice(&self.first);
                joined.extend_from_slice(&data);
                self.first = Bytes::new();
                self.joined = Some(joined);
            }
        }
        if self.announced.is_none() {
            self.read_header(max_message)?;
        }
        Ok(())
    }

    /// Reads the announced length once the frame header is in, and checks it and what already
    /// arrived against it.
    fn read_header(&mut self, max_message: usize) -> Result<(), Status> {
        let head = self.joined.as_deref().unwrap_or(&self.first[..]);
        let Some(&[_, a, b, c, d]) = head.get(..FRAME_HEADER_BYTES) else {
            return Ok(());
        };
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        if len > max_message {
            return Err(errors::message_too_large(len, max_message));
        }
        if self.len() > FRAME_HEADER_BYTES + len {
            return Err(errors::more_than_one_message());
        }
        self.announced = Some(len);
        Ok(())
    }

    /// The message, once the body has ended.
    fn finish(self) -> Result<Bytes, Status> {
        let Some(len) = self.announced else {
            return Err(match self.len() {
                0 => errors::missing_message(),
                _ => errors::unexpected_eof(),
            });
        };
        let mut message = self.joined.map_or(self.first, BytesMut::freeze);
        if message.len() < FRAME_HEADER_BYTES + len {
            return Err(errors::unexpected_eof());
        }
        let flag = message.get_u8();
        if flag != 0 {
            return Err(errors::invalid_compression_flag(flag));
        }
        message.advance(FRAME_HEADER_BYTES - 1);
        Ok(message)
    }
}

/// The trailers of a call that succeeded.
fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert(Status::GRPC_STATUS, HeaderValue::from_static("0"));
    trailers
}

/// The "trailers-only" answer of a failed call.
fn failed(status: Status) -> Response<UnaryBody> {
    status.into_http()
}

/// A unary answer's body: its one message, then the trailers; empty for a failed call.
#[derive(Default)]
pub struct UnaryBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for UnaryBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut data = vec![0];
        data.extend_from_slice(&(message.len() as u32).to_be_bytes());
        data.extend_from_slice(message);
        data
    }

    fn gather(frames: &[&[u8]], max_message: usize) -> Result<Bytes, Status> {
        let mut message = Gathered::default();
        for frame in frames {
            message.push(Bytes::copy_from_slice(frame), max_message)?;
        }
        message.finish()
    }

    #[test]
    fn one_message_in_any_number_of_frames() {
        let data = framed(b"hello world");
        assert_eq!(gather(&[&data], 100).unwrap(), &b"hello world"[..]);
        let (a, rest) = data.split_at(3);
        let (b, c) = rest.split_at(4);
        assert_eq!(gather(&[a, b, &[], c], 100).unwrap(), &b"hello world"[..]);
    }

    #[test]
    fn a_byte_past_the_message_is_refused_at_once() {
        let mut data = framed(b"0123456789");
        data.push(0);
        let status = gather(&[&data], 100).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
        let mut message = Gathered::default();
        message.push(Bytes::from(framed(b"0123456789")), 100).unwrap();
        assert!(message.push(Bytes::from_static(b"x"), 100).is_err());
    }

    #[test]
    fn an_announced_length_past_the_limit_is_refused_before_the_message() {
        let mut message = Gathered::default();
        let status = message.push(Bytes::from_static(&[0, 0, 0, 0, 101]), 100).unwrap_err();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
    }

    #[test]
    fn short_bodies_are_refused() {
        assert_eq!(gather(&[], 100).unwrap_err().message(), "Missing request message.");
        assert_eq!(
            gather(&[&[0, 0]], 100).unwrap_err().message(),
            "Unexpected EOF decoding stream."
        );
        assert_eq!(
            gather(&[&[0, 0, 0, 0, 3, 1]], 100).unwrap_err().message(),
            "Unexpected EOF decoding stream."
        );
        assert_eq!(
            gather(&[&[1, 0, 0, 0, 0]], 100).unwrap_err().code(),
            tonic::Code::Internal
        );
    }
}
