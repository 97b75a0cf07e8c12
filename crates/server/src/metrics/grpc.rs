//! `grpc_server_started_total`, `grpc_server_handled_total` and `grpc_server_handling_seconds`,
//! with the labels of go-grpc-prometheus that etcd exports, recorded by [`start`] and
//! [`finish_on`] around every call of the client services.
//!
//! A gRPC call's status usually arrives in the response's trailers, after the last message; a
//! call that fails before answering carries it in the headers ("trailers-only"). [`MeteredBody`]
//! watches the body for the trailers, so a call is counted when it really ends: a watch stream
//! when it closes, a call the client abandoned as `Canceled`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus::{
    exponential_buckets, register_histogram_vec, register_int_counter, register_int_counter_vec, HistogramVec,
    IntCounter, IntCounterVec,
};

/// etcd's `etcd_network_client_grpc_received_bytes_total`: bytes of gRPC requests from clients.
pub static RECEIVED_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "etcd_network_client_grpc_received_bytes_total",
        "The total number of bytes received from grpc clients."
    )
    .expect("metric registered once")
});

/// etcd's `etcd_network_client_grpc_sent_bytes_total`: bytes of gRPC responses to clients.
pub static SENT_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "etcd_network_client_grpc_sent_bytes_total",
        "The total number of bytes sent to grpc clients."
    )
    .expect("metric registered once")
});

/// Calls started, by service, method and type.
pub static STARTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "grpc_server_started_total",
        "Total number of RPCs started on the server.",
        &["grpc_type", "grpc_service", "grpc_method"]
    )
    .expect("metric registered once")
});

/// Calls finished, by service, method, type and status code.
pub static HANDLED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.",
        &["grpc_type", "grpc_service", "grpc_method", "grpc_code"]
    )
    .expect("metric registered once")
});

/// How long calls took from request to status, by service, method and type. Finer buckets than
/// go-grpc-prometheus's defaults, because the dashboard reads percentiles from them.
pub static HANDLING_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "grpc_server_handling_seconds",
        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
        &["grpc_type", "grpc_service", "grpc_method"],
        exponential_buckets(0.00025, 2.0, 18).expect("valid buckets")
    )
    .expect("metric registered once")
});

/// One method's series, resolved once: looking a series up by its labels hashes every label,
/// which would cost more than the rest of a small call's bookkeeping.
struct MethodSeries {
    kind: &'static str,
    service: String,
    method: String,
    started: IntCounter,
    handled_ok: IntCounter,
    seconds: prometheus::Histogram,
}

impl MethodSeries {
    fn new(service: &str, method: &str) -> MethodSeries {
        let kind = call_type(service, method);
        MethodSeries {
            kind,
            service: service.to_string(),
            method: method.to_string(),
            started: STARTED.with_label_values(&[kind, service, method]),
            handled_ok: HANDLED.with_label_values(&[kind, service, method, "OK"]),
            seconds: HANDLING_SECONDS.with_label_values(&[kind, service, method]),
        }
    }

    /// The series of the method at `path` (`/service/method`); `None` for a path no service
    /// serves, so a client cannot add series (or a lock-taking lookup) by inventing paths. Every
    /// method's series exist from the first call on, at zero, as go-grpc-prometheus registers them.
    fn of(path: &str) -> Option<Arc<MethodSeries>> {
        static BY_PATH: LazyLock<HashMap<String, Arc<MethodSeries>>> = LazyLock::new(|| {
            SERVED
                .iter()
                .flat_map(|(service, methods)| methods.iter().map(move |method| (*service, *method)))
                .map(|(service, method)| {
                    (
                        format!("/{service}/{method}"),
                        Arc::new(MethodSeries::new(service, method)),
                    )
                })
                .collect()
        });
        BY_PATH.get(path).cloned()
    }
}

/// The methods of the client services, by service: etcd's and its lock and election services.
const SERVED: &[(&str, &[&str])] = &[
    ("etcdserverpb.KV", &["Range", "Put", "DeleteRange", "Txn", "Compact"]),
    ("etcdserverpb.Watch", &["Watch"]),
    (
        "etcdserverpb.Lease",
        &[
            "LeaseGrant",
            "LeaseRevoke",
            "LeaseKeepAlive",
            "LeaseTimeToLive",
            "LeaseLeases",
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            "MemberAdd",
            "MemberRemove",
            "MemberUpdate",
            "MemberList",
            "MemberPromote",
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            "Alarm",
            "Status",
            "Defragment",
            "Hash",
            "HashKV",
            "Snapshot",
            "MoveLeader",
            "Downgrade",
        ],
    ),
    (
        "etcdserverpb.Auth",
        &[
            "AuthEnable",
            "AuthDisable",
            "AuthStatus",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        ],
    ),
    ("v3lockpb.Lock", &["Lock", "Unlock"]),
    (
        "v3electionpb.Election",
        &["Campaign", "Proclaim", "Leader", "Observe", "Resign"],
    ),
];

/// One gRPC call in progress, from [`start`] until its status is known.
pub struct Call {
    series: Arc<MethodSeries>,
    started: Instant,
}

impl Call {
    fn finish(&self, code: &str) {
        let series = &self.series;
        if code == "OK" {
            series.handled_ok.inc();
        } else {
            HANDLED
                .with_label_values(&[series.kind, &series.service, &series.method, code])
                .inc();
        }
        series.seconds.observe(self.started.elapsed().as_secs_f64());
    }
}

/// etcd's streaming methods; every other method of the client services is unary.
fn call_type(service: &str, method: &str) -> &'static str {
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") | ("etcdserverpb.Lease", "LeaseKeepAlive") => "bidi_stream",
        ("etcdserverpb.Maintenance", "Snapshot") | ("v3electionpb.Election", "Observe") => "server_stream",
        _ => "unary",
    }
}

/// The name go-grpc-prometheus gives a status code.
fn code_name(code: &[u8]) -> &'static str {
    match code {
        b"0" => "OK",
        b"1" => "Canceled",
        b"2" => "Unknown",
        b"3" => "InvalidArgument",
        b"4" => "DeadlineExceeded",
        b"5" => "NotFound",
        b"6" => "AlreadyExists",
        b"7" => "PermissionDenied",
        b"8" => "ResourceExhausted",
        b"9" => "FailedPrecondition",
        b"10" => "Aborted",
        b"11" => "OutOfRange",
        b"12" => "Unimplemented",
        b"13" => "Internal",
        b"14" => "Unavailable",
        b"15" => "DataLoss",
        b"16" => "Unauthenticated",
        _ => "Unknown",
    }
}

/// Starts the record of `request` when it is a gRPC call to a known method; other HTTP requests
/// (metrics, health, the dashboard) are not counted.
pub fn start<B>(request: &http::Request<B>) -> Option<Call> {
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !is_grpc {
        return None;
    }
    let series = MethodSeries::of(request.uri().path())?;
    series.started.inc();
    Some(Call {
        series,
        started: Instant::now(),
    })
}

/// Hands `call` to the response: a call that failed before answering carries its status in the
/// headers and is recorded now; otherwise the body records it when its trailers pass. Without a
/// call (not a gRPC request) the body passes uncounted.
pub fn finish_on<B>(call: Option<Call>, response: http::Response<B>) -> http::Response<MeteredBody<B>> {
    let counted = call.is_some();
    let call = match (call, response.headers().get("grpc-status")) {
        (Some(call), Some(code)) => {
            call.finish(code_name(code.as_bytes()));
            None
        }
        (call, _) => call,
    };
    response.map(|inner| MeteredBody { inner, call, counted })
}

/// A response body that counts the bytes it carries and records its call when the trailers
/// carrying the status pass, or when it is dropped before then (the client went away).
pub struct MeteredBody<B> {
    inner: B,
    call: Option<Call>,
    /// Whether its bytes count as sent to gRPC clients.
    counted: bool,
}

impl<B> HttpBody for MeteredBody<B>
where
    B: HttpBody<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref().filter(|_| self.counted) {
                    SENT_BYTES.inc_by(data.len() as u64);
                }
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .map(|c| code_name(c.as_bytes()))
                        .unwrap_or("Unknown");
                    if let Some(call) = self.call.take() {
                        call.finish(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = self.call.take() {
                    call.finish("Unknown");
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = self.call.take() {
                    call.finish("OK");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.finish("Canceled");
        }
    }
}

/// A request body that counts the bytes a client sends.
pub struct CountedBody<B> {
    inner: B,
    counted: bool,
}

impl<B> CountedBody<B> {
    /// Counts what `inner` carries when it is a gRPC request's body (`counted`).
    pub fn new(inner: B, counted: bool) -> CountedBody<B> {
        CountedBody { inner, counted }
    }
}

impl<B> HttpBody for CountedBody<B>
where
    B: HttpBody<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref().filter(|_| self.counted) {
                RECEIVED_BYTES.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_methods_have_series() {
        let put = MethodSeries::of("/etcdserverpb.KV/Put").expect("a served method");
        assert_eq!(
            (put.kind, put.service.as_str(), put.method.as_str()),
            ("unary", "etcdserverpb.KV", "Put")
        );
        assert_eq!(
            MethodSeries::of("/etcdserverpb.Watch/Watch").map(|s| s.kind),
            Some("bidi_stream")
        );
        for invented in ["/etcdserverpb.KV/Bogus", "/x/y", "/", "", "/etcdserverpb.KV/Put/extra"] {
            assert!(MethodSeries::of(invented).is_none(), "{invented}");
        }
    }
}
