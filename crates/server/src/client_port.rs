//! Serving the client port with hyper directly, so a KV call reaches the KV service in one step.
//!
//! tonic's own server wraps every call in a dozen layers before a service sees it: a boxed
//! service per connection, timeout and error recovery layers, axum's router with its own boxed
//! services, bodies and futures, then the metrics layer. Each boxes or copies something, and
//! under a load of small puts that bookkeeping cost more than the KV handler itself. Here a
//! connection's requests go to [`ClientCalls`], which meters every gRPC call and sends calls of
//! etcd's KV service straight to the KV handler ([`crate::kv_unary`]); everything else (the other services,
//! `/metrics`, `/health`, the dashboard, unknown methods) goes through the axum router as
//! before. HTTP/1.1 is accepted for the plain HTTP routes, as on etcd's client port.
//!
//! What tonic's server did that matters is kept: TLS clients' certificates reach the services
//! (client-certificate authentication reads them from the request), HTTP/2 keep-alive pings
//! find dead clients (and clients that ping too often are sent away, as by etcd's gRPC server:
//! [`crate::ping_policy`]), there is no limit on concurrent streams (etcd's), and a stop closes the
//! listener at once and lets open connections finish their calls. What a connection may hold of
//! the member's memory is bounded by its flow-control windows (request bytes not yet read) and
//! the send buffer of each of its streams (response bytes its client has not taken). A client's `grpc-timeout` is
//! left to the client, which cancels the call when it expires.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;

use futures::future::BoxFuture;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::Connected;
use tower_service::Service as _;

use crate::kv::KvService;
use crate::kv_unary::{self, UnaryBody};
use crate::metrics::grpc::{self as grpc_metrics, Call, CountedBody, MeteredBody};
use crate::ping_policy::PingPolicy;
use crate::scheme_authority::SchemeAuthority;

/// How the client port treats connections: etcd's `--grpc-keepalive-interval`,
/// `--grpc-keepalive-timeout` and `--max-concurrent-streams`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// How often an idle connection is pinged to find a dead client; `None` never pings.
    /// Concord's default is 10 s (etcd's is 2 h): a dead client's watches and keep-alives go
    /// within seconds rather than hours.
    pub keepalive_interval: Option<Duration>,
    /// How long a ping may go unanswered before the connection is closed (etcd: 20 s).
    pub keepalive_timeout: Duration,
    /// The most streams one connection may have open at once; `None` sets no limit (etcd's
    /// default, math.MaxUint32).
    pub max_concurrent_streams: Option<u32>,
    /// `--grpc-keepalive-min-time`: how often a client with calls in progress may ping
    /// (etcd: 5 s); a client that pings more often is sent away (see [`crate::ping_policy`]).
    pub keepalive_min_time: Duration,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_timeout: Duration::from_secs(20),
            max_concurrent_streams: None,
            keepalive_min_time: Duration::from_secs(5),
        }
    }
}
/// Response bytes HTTP/2 holds per stream beyond what the socket takes (hyper's default is
/// 400 KiB). A stream whose client stops reading keeps this much, plus the one chunk it was
/// handed last, for as long as the client keeps it open; the socket's own buffer keeps a fast
/// client's stream busy without it.
const MAX_SEND_BUFFER_BYTES: usize = 64 * 1024;
/// Request bytes a client may send ahead on one stream, and on one connection, before the
/// member reads them: what a request body the member has not read yet can hold of its memory.
/// hyper's defaults, stated here because they are part of that bound.
const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;

/// The body of any response on the client port.
pub type ClientBody = MeteredBody<http_body_util::Either<UnaryBody, axum::body::Body>>;

/// What one connection's calls go to: the KV service directly, the router for the rest.
#[derive(Clone)]
pub struct ClientCalls<C> {
    kv: Arc<KvService>,
    /// The largest KV request message accepted.
    max_message: usize,
    router: axum::Router,
    /// The connection's TLS details, copied into each request, for services that read the
    /// client's certificate. `None` on plain connections, where nothing reads them.
    tls_info: Option<C>,
}

impl ClientCalls<()> {
    /// Calls for `kv` (with messages of at most `max_message` bytes), and `router` for
    /// everything else.
    pub fn new(kv: KvService, max_message: usize, router: axum::Router) -> ClientCalls<()> {
        ClientCalls {
            kv: Arc::new(kv),
            max_message,
            router,
            tls_info: None,
        }
    }
}

impl<C> ClientCalls<C> {
    /// The same calls for a connection whose TLS details are `info`.
    fn with_tls_info<D>(&self, info: Option<D>) -> ClientCalls<D> {
        ClientCalls {
            kv: self.kv.clone(),
            max_message: self.max_message,
            router: self.router.clone(),
            tls_info: info,
        }
    }
}

impl<C: Clone + Send + Sync + 'static> hyper::service::Service<Request<Incoming>> for ClientCalls<C> {
    type Response = Response<ClientBody>;
    type Error = Infallible;
    type Future = ClientCall;

    fn call(&self, mut request: Request<Incoming>) -> ClientCall {
        if let Some(info) = &self.tls_info {
            request.extensions_mut().insert(info.clone());
        }
        let call = grpc_metrics::start(&request);
        let grpc = call.is_some();
        let request = request.map(|body| CountedBody::new(body, grpc));
        let answer = if kv_unary::is_kv(request.uri().path()) {
            Answer::Kv(Box::pin(kv_unary::call(self.kv.clone(), request, self.max_message)))
        } else {
            let mut router = self.router.clone();
            Answer::Routed(Box::pin(async move {
                let Ok(response) = router.call(request).await;
                Ok(response)
            }))
        };
        ClientCall { answer, call }
    }
}

/// Where a call's response comes from.
enum Answer {
    Kv(BoxFuture<'static, Response<UnaryBody>>),
    Routed(BoxFuture<'static, Result<Response<axum::body::Body>, Infallible>>),
}

/// One call on the client port, metered until its response is ready (and then by its body).
pub struct ClientCall {
    answer: Answer,
    call: Option<Call>,
}

impl Future for ClientCall {
    type Output = Result<Response<ClientBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match &mut self.answer {
            Answer::Kv(future) => match future.as_mut().poll(cx) {
                Poll::Ready(response) => response.map(http_body_util::Either::Left),
                Poll::Pending => return Poll::Pending,
            },
            Answer::Routed(future) => match future.as_mut().poll(cx) {
                Poll::Ready(Ok(response)) => response.map(http_body_util::Either::Right),
                Poll::Pending => return Poll::Pending,
            },
        };
        Poll::Ready(Ok(grpc_metrics::finish_on(self.call.take(), response)))
    }
}

/// Serves `calls` on every connection `incoming` yields until `stop` turns true; then stops
/// accepting, asks each open connection to finish its calls and close, and returns once all have.
/// With `certificate_users` (TLS with `--client-cert-auth`), a call's client certificate reaches
/// the services, which take its common name as the user, as etcd does only then.
pub async fn serve<I, IO>(
    incoming: I,
    calls: ClientCalls<()>,
    certificate_users: bool,
    settings: ConnectionSettings,
    mut stop: watch::Receiver<bool>,
) where
    I: Stream<Item = std::io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_send_buf_size(MAX_SEND_BUFFER_BYTES)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        // gRPC has no use for a `date` header (etcd sends none), and one that changes every
        // second churns the connection's header compression table.
        .auto_date_header(false);
    // hyper enforces its HTTP/1 header read timeout only when it has a timer.
    builder.http1().timer(TokioTimer::new());

    let (closing_tx, closing_rx) = watch::channel(());
    {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let io = tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => break,
                accepted = incoming.next() => match accepted {
                    Some(Ok(io)) => io,
                    Some(Err(e)) => {
                        tracing::debug!("accepting a client connection failed: {e}");
                        continue;
                    }
                    None => break,
                },
            };
            let calls = calls.with_tls_info(certificate_users.then(|| io.connect_info()));
            let io = PingPolicy::new(io, settings.keepalive_min_time);
            tokio::spawn(serve_connection(builder.clone(), io, calls, closing_rx.clone()));
        }
    }
    let _ = closing_tx.send(());
    drop(closing_rx);
    closing_tx.closed().await;
}

/// Serves one connection until it closes, closing it gracefully once `closing` changes.
async fn serve_connection<IO, C>(
    builder: auto::Builder<TokioExecutor>,
    io: IO,
    calls: ClientCalls<C>,
    mut closing: watch::Receiver<()>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    C: Clone + Send + Sync + 'static,
{
    // etcdctl 3.4 sends `http://host:port` as `:authority`, which h2 refuses: mended on the way in.
    let connection = builder.serve_connection(TokioIo::new(SchemeAuthority::new(io)), calls);
    let mut connection = std::pin::pin!(connection);
    let mut asked_to_close = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!("client connection ended: {e}");
                }
                return;
            }
            changed = closing.changed(), if !asked_to_close => {
                asked_to_close = true;
                if changed.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
