//! The load generator's gRPC connections.
//!
//! The load generator runs on the machine it measures, so every microsecond it spends per
//! request is taken from the cluster under test. tonic's `Channel` hands each call from the
//! caller's task to a `tower::buffer` task, and from there to hyper's client task, before h2
//! sees it: two hand-offs between tasks per request. Under a thousand clients those cost the
//! load generator about a fifth of its CPU.
//!
//! For plain `http://` endpoints, [`BenchChannel::H2`] speaks gRPC over one h2 connection
//! directly: the caller's own task opens the stream and sends the request's message, and reads
//! the answer. `https://` endpoints keep tonic's channel and its TLS. Both serve tonic's
//! generated clients, so the workloads do not know which one they use.
//!
//! The timed unary calls skip tonic's client as well ([`BenchChannel::unary`]): the request is
//! encoded into one buffer with its gRPC frame header, sent as the stream's only data frame, and
//! the answer is decoded from the response's data once its trailers say the call succeeded.
//! tonic's generic client, which streams bodies and statuses through several boxed layers,
//! cost the load generator a third of its time per call.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, TE};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri};
use http_body::{Body, Frame};
use tonic::transport::Channel;
use tower_service::Service;

/// An error from either kind of connection, as tonic's clients take it.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// h2's flow-control windows, as large as hyper's defaults for clients, so that neither side
/// waits for window updates under load.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;

/// One connection of the load generator: see the module documentation.
#[derive(Clone)]
pub enum BenchChannel {
    /// tonic's channel, for TLS endpoints.
    Tonic(Channel),
    /// A direct h2 connection, for plain endpoints.
    H2(H2Channel),
}

/// gRPC calls straight over one h2 connection.
#[derive(Clone)]
pub struct H2Channel {
    send: h2::client::SendRequest<Bytes>,
    authority: Authority,
    /// How long a call may wait for its response headers (a unary call: for its answer).
    timeout: Duration,
}

impl H2Channel {
    /// Opens a connection to `url` (`http://host:port`).
    pub async fn connect(url: &str, connect_timeout: Duration, timeout: Duration) -> Result<H2Channel, String> {
        let uri: Uri = url.parse().map_err(|e| format!("bad endpoint {url:?}: {e}"))?;
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("bad endpoint {url:?}: no host"))?;
        let connecting = async {
            // The member's own connector: Nagle off, h2's writes batched.
            let tcp = concord_tls::TcpConnector::new(None, connect_timeout).call(uri).await?;
            h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .handshake::<_, Bytes>(tcp.into_inner())
                .await
                .map_err(std::io::Error::other)
        };
        let (send, connection) = tokio::time::timeout(connect_timeout, connecting)
            .await
            .map_err(|_| format!("no connection within {connect_timeout:?}"))?
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            // The connection ends when every handle to it is dropped, or on an error that
            // the calls on it report themselves.
            let _ = connection.await;
        });
        Ok(H2Channel {
            send,
            authority,
            timeout,
        })
    }

    /// One unary call of `path` (see the module documentation).
    async fn unary<Q, A>(&mut self, path: &'static str, request: &Q) -> Result<A, tonic::Status>
    where
        Q: prost::Message,
        A: prost::Message + Default,
    {
        let mut message = BytesMut::with_capacity(GRPC_HEADER_BYTES + request.encoded_len());
        message.put_u8(0); // not compressed
        message.put_u32(request.encoded_len() as u32);
        request
            .encode(&mut message)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(PathAndQuery::from_static(path))
            .build()
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let mut head = Request::new(());
        *head.method_mut() = Method::POST;
        *head.uri_mut() = uri;
        head.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        head.headers_mut().insert(TE, HeaderValue::from_static("trailers"));
        let call = async {
            std::future::poll_fn(|cx| self.send.poll_ready(cx))
                .await
                .map_err(h2_status)?;
            let (answer, mut stream) = self.send.send_request(head, false).map_err(h2_status)?;
            // As in `start`: the answer says how the call went even if this fails.
            let _ = stream.send_data(message.freeze(), true);
            let (head, mut recv) = answer.await.map_err(h2_status)?.into_parts();
            if let Some(status) = grpc_status(&head.headers) {
                return Err(status);
            }
            // An answer usually arrives in one data frame, which is then used as it is.
            let mut data = Bytes::new();
            while let Some(chunk) = recv.data().await {
                let chunk = chunk.map_err(h2_status)?;
                let _ = recv.flow_control().release_capacity(chunk.len());
                data = if data.is_empty() {
                    chunk
                } else {
                    [data, chunk].concat().into()
                };
            }
            let trailers = recv.trailers().await.map_err(h2_status)?.unwrap_or_default();
            if let Some(status) = grpc_status(&trailers) {
                return Err(status);
            }
            if head.status != http::StatusCode::OK {
                return Err(tonic::Status::unknown(format!("HTTP status {}", head.status)));
            }
            decode_message(data)
        };
        let timeout = self.timeout;
        tokio::time::timeout(timeout, call).await.unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {timeout:?}"
            )))
        })
    }

    /// Starts one call: opens its stream here (after `poll_ready`), sends its message, and
    /// returns the answer's future.
    fn start(
        &mut self,
        request: Request<tonic::body::Body>,
    ) -> impl Future<Output = Result<Response<tonic::body::Body>, BoxError>> + Send + 'static {
        let (mut head, body) = request.into_parts();
        // tonic's generated clients give only the path; h2 needs the scheme and authority.
        let mut uri = std::mem::take(&mut head.uri).into_parts();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        let opened = Uri::from_parts(uri).map_err(BoxError::from).and_then(|uri| {
            head.uri = uri;
            self.send
                .send_request(Request::from_parts(head, ()), false)
                .map_err(BoxError::from)
        });
        let timeout = self.timeout;
        async move {
            let (answer, stream) = opened?;
            // A server may answer (and close the stream) before it has seen the end of the
            // request, as grpc-go does once it has the whole message; and a stream the server
            // refused fails to send. Either way the answer says how the call went.
            let _ = send_body(body, stream);
            let answer = tokio::time::timeout(timeout, answer)
                .await
                .map_err(|_| BoxError::from(format!("no answer within {timeout:?}")))??;
            let (head, recv) = answer.into_parts();
            Ok(Response::from_parts(
                head,
                tonic::body::Body::new(H2Body { recv, data_done: false }),
            ))
        }
    }
}

/// A gRPC message's frame header: a compression flag and the message's length.
const GRPC_HEADER_BYTES: usize = 5;

/// The status of a call from `headers` (the trailers, or the headers of an answer without a
/// body); `None` when they say the call succeeded or carry no status.
fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Status> {
    const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
    const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
    let code = headers.get(GRPC_STATUS)?;
    if code.as_bytes() == b"0" {
        return None;
    }
    let code = std::str::from_utf8(code.as_bytes())
        .ok()
        .and_then(|c| c.parse::<i32>().ok())
        .unwrap_or(2);
    let message = headers
        .get(GRPC_MESSAGE)
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default();
    Some(tonic::Status::new(tonic::Code::from(code), message.to_string()))
}

/// The one message of a unary answer's body.
fn decode_message<A: prost::Message + Default>(mut body: Bytes) -> Result<A, tonic::Status> {
    if body.len() < GRPC_HEADER_BYTES || body[0] != 0 {
        return Err(tonic::Status::internal(
            "an answer that is not one uncompressed gRPC message",
        ));
    }
    body.advance(1);
    let len = body.get_u32() as usize;
    if body.len() != len {
        return Err(tonic::Status::internal(
            "an answer whose length does not match its frame",
        ));
    }
    A::decode(body).map_err(|e| tonic::Status::internal(format!("undecodable answer: {e}")))
}

/// The status tonic would give a call that failed in h2.
fn h2_status(e: h2::Error) -> tonic::Status {
    tonic::Status::unavailable(e.to_string())
}

/// Sends what of `body` is ready now; a body that is not finished (a stream of requests, as
/// Watch and LeaseKeepAlive send) goes on in a task of its own.
fn send_body(mut body: tonic::body::Body, mut stream: h2::SendStream<Bytes>) -> Result<(), h2::Error> {
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(frame) => {
                if !send_frame(frame, &mut stream)? {
                    return Ok(());
                }
            }
            Poll::Pending => {
                tokio::spawn(async move {
                    loop {
                        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
                        if !matches!(send_frame(frame, &mut stream), Ok(true)) {
                            return;
                        }
                    }
                });
                return Ok(());
            }
        }
    }
}

/// Sends one frame of a request body; returns whether more may follow.
fn send_frame(
    frame: Option<Result<Frame<Bytes>, tonic::Status>>,
    stream: &mut h2::SendStream<Bytes>,
) -> Result<bool, h2::Error> {
    match frame {
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => {
                stream.send_data(data, false)?;
                Ok(true)
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    stream.send_trailers(trailers)?;
                }
                Ok(false)
            }
        },
        None => {
            stream.send_data(Bytes::new(), true)?;
            Ok(false)
        }
        Some(Err(_)) => {
            stream.send_reset(h2::Reason::CANCEL);
            Ok(false)
        }
    }
}

/// A response body read from an h2 stream: its data, then its trailers (where gRPC puts the
/// call's status).
struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Let the server send more as soon as this much is read.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

impl BenchChannel {
    /// One unary call of `path`, straight over h2 for plain endpoints (see the module
    /// documentation) and through tonic's client for TLS ones.
    pub async fn unary<Q, A>(&mut self, path: &'static str, request: Q) -> Result<A, tonic::Status>
    where
        Q: prost::Message + Send + 'static,
        A: prost::Message + Default + Send + 'static,
    {
        match self {
            BenchChannel::H2(h2) => h2.unary(path, &request).await,
            BenchChannel::Tonic(_) => {
                let mut grpc = tonic::client::Grpc::new(self.clone()).max_decoding_message_size(usize::MAX);
                grpc.ready()
                    .await
                    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                let codec = concord_proto::codec::CompactCodec::<Q, A>::default();
                let path = PathAndQuery::from_static(path);
                grpc.unary(tonic::Request::new(request), path, codec)
                    .await
                    .map(tonic::Response::into_inner)
            }
        }
    }
}

impl Service<Request<tonic::body::Body>> for BenchChannel {
    type Response = Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            BenchChannel::Tonic(channel) => channel.poll_ready(cx).map_err(BoxError::from),
            BenchChannel::H2(h2) => h2.send.poll_ready(cx).map_err(BoxError::from),
        }
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        match self {
            BenchChannel::Tonic(channel) => {
                let answer = channel.call(request);
                Box::pin(async move { answer.await.map_err(BoxError::from) })
            }
            BenchChannel::H2(h2) => Box::pin(h2.start(request)),
        }
    }
}
