//! etcd's JSON gRPC gateway: every v3 RPC under etcd's HTTP paths (`/v3/...`, and `/v3beta/...`
//! as etcd 3.4 also serves), POST with a JSON body, answered in protobuf's JSON mapping as
//! etcd's gateway writes it (proto field names, bytes in base64, 64-bit integers as strings,
//! enums by name, default values left out).
//!
//! It exists for the clients that speak HTTP and JSON rather than gRPC: Patroni's etcd3 DCS,
//! APISIX, scripts with curl. Each call goes to the member's own service implementations
//! in-process ([`services`]), with the `Authorization` header as the auth token; streams
//! (Watch, LeaseKeepAlive, Election.Observe, Maintenance.Snapshot) answer newline-separated
//! `{"result":…}` objects ([`stream`]). Failures answer etcd's error body under
//! grpc-gateway's HTTP status for the gRPC code ([`error`]). The answers carry the headers (and
//! trailer) etcd's gateway forwards from its gRPC server (see [`error`]).

mod error;
mod json;
mod request;
mod services;
mod stream;
mod unary;
mod values;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::{any, MethodRouter};
use axum::Router;
use concord_proto::etcdserverpb::auth_server::Auth as _;
use concord_proto::etcdserverpb::cluster_server::Cluster as _;
use concord_proto::etcdserverpb::kv_server::Kv as _;
use concord_proto::etcdserverpb::lease_server::Lease as _;
use concord_proto::etcdserverpb::maintenance_server::Maintenance as _;
use concord_proto::etcdserverpb::watch_server::Watch as _;
use concord_proto::v3electionpb::election_server::Election as _;
use concord_proto::v3lockpb::lock_server::Lock as _;

use crate::http::HttpState;
use services::Services;
use stream::AfterRequests;

/// The path prefixes etcd's gateway serves every RPC under (3.4 serves both).
pub const PREFIXES: &[&str] = &["/v3", "/v3beta"];

/// A unary RPC: `unary!(service.method)`.
macro_rules! unary {
    ($svc:ident . $method:ident) => {
        only_post(|State(s): State<Arc<Services>>, req: Request| async move {
            unary::call(s, req, |s, r| async move { s.$svc.$method(r).await }).await
        })
    };
}

/// A server-streaming RPC.
macro_rules! server_stream {
    ($svc:ident . $method:ident) => {
        only_post(|State(s): State<Arc<Services>>, req: Request| async move {
            stream::server(s, req, |s, r| async move { s.$svc.$method(r).await }).await
        })
    };
}

/// A bidirectional RPC, with what to do once the body's requests are sent.
macro_rules! bidi_stream {
    ($svc:ident . $method:ident, $after:expr) => {
        only_post(|State(s): State<Arc<Services>>, req: Request| async move {
            stream::bidi(s, req, $after, |s, r| async move { s.$svc.$method(r).await }).await
        })
    };
}

/// Every RPC's path (after the prefix) and handler, as etcd's `google.api.http` annotations
/// (rpc.proto, v3lock.proto, v3election.proto) name them, with their alias paths.
/// `/maintenance/hash` is Hash: etcd annotates HashKV with the same path, and Hash, registered
/// first, answers it. `/auth/status` and `/maintenance/downgrade` are etcd 3.5's.
fn rpcs() -> Vec<(&'static str, MethodRouter<Arc<Services>>)> {
    vec![
        ("/kv/range", unary!(kv.range)),
        ("/kv/put", unary!(kv.put)),
        ("/kv/deleterange", unary!(kv.delete_range)),
        ("/kv/txn", unary!(kv.txn)),
        ("/kv/compaction", unary!(kv.compact)),
        ("/watch", bidi_stream!(watch.watch, AfterRequests::KeepOpen)),
        ("/lease/grant", unary!(lease.lease_grant)),
        ("/lease/revoke", unary!(lease.lease_revoke)),
        ("/kv/lease/revoke", unary!(lease.lease_revoke)),
        (
            "/lease/keepalive",
            bidi_stream!(lease.lease_keep_alive, AfterRequests::Close),
        ),
        ("/lease/timetolive", unary!(lease.lease_time_to_live)),
        ("/kv/lease/timetolive", unary!(lease.lease_time_to_live)),
        ("/lease/leases", unary!(lease.lease_leases)),
        ("/kv/lease/leases", unary!(lease.lease_leases)),
        ("/cluster/member/add", unary!(cluster.member_add)),
        ("/cluster/member/remove", unary!(cluster.member_remove)),
        ("/cluster/member/update", unary!(cluster.member_update)),
        ("/cluster/member/list", unary!(cluster.member_list)),
        ("/cluster/member/promote", unary!(cluster.member_promote)),
        ("/maintenance/alarm", unary!(maintenance.alarm)),
        ("/maintenance/status", unary!(maintenance.status)),
        ("/maintenance/defragment", unary!(maintenance.defragment)),
        ("/maintenance/hash", unary!(maintenance.hash)),
        ("/maintenance/snapshot", server_stream!(maintenance.snapshot)),
        ("/maintenance/transfer-leadership", unary!(maintenance.move_leader)),
        ("/maintenance/downgrade", unary!(maintenance.downgrade)),
        ("/auth/enable", unary!(auth.auth_enable)),
        ("/auth/disable", unary!(auth.auth_disable)),
        ("/auth/status", unary!(auth.auth_status)),
        ("/auth/authenticate", unary!(auth.authenticate)),
        ("/auth/user/add", unary!(auth.user_add)),
        ("/auth/user/get", unary!(auth.user_get)),
        ("/auth/user/list", unary!(auth.user_list)),
        ("/auth/user/delete", unary!(auth.user_delete)),
        ("/auth/user/changepw", unary!(auth.user_change_password)),
        ("/auth/user/grant", unary!(auth.user_grant_role)),
        ("/auth/user/revoke", unary!(auth.user_revoke_role)),
        ("/auth/role/add", unary!(auth.role_add)),
        ("/auth/role/get", unary!(auth.role_get)),
        ("/auth/role/list", unary!(auth.role_list)),
        ("/auth/role/delete", unary!(auth.role_delete)),
        ("/auth/role/grant", unary!(auth.role_grant_permission)),
        ("/auth/role/revoke", unary!(auth.role_revoke_permission)),
        ("/lock/lock", unary!(lock.lock)),
        ("/lock/unlock", unary!(lock.unlock)),
        ("/election/campaign", unary!(election.campaign)),
        ("/election/proclaim", unary!(election.proclaim)),
        ("/election/leader", unary!(election.leader)),
        ("/election/observe", server_stream!(election.observe)),
        ("/election/resign", unary!(election.resign)),
    ]
}

/// The gateway's routes, for the client port: every RPC under each prefix, 405 for other
/// methods on them and 404 for other paths under the prefixes, as etcd answers.
pub fn routes(state: &HttpState) -> Router {
    let services = Arc::new(Services::new(state));
    let mut router = Router::new();
    for prefix in PREFIXES {
        for (path, handler) in rpcs() {
            router = router.route(&format!("{prefix}{path}"), handler);
        }
        router = router.route(&format!("{prefix}/{{*rest}}"), any(not_found));
    }
    router.with_state(services)
}

/// `handler` for POST, and etcd's 405 for every other method. (axum's own method routing would
/// add an `Allow` header etcd's gateway does not send.)
fn only_post<H, T>(handler: H) -> MethodRouter<Arc<Services>>
where
    H: Handler<T, Arc<Services>>,
    T: 'static,
{
    any(move |State(services): State<Arc<Services>>, request: Request| {
        let handler = handler.clone();
        async move {
            if request.method() == Method::POST {
                handler.call(request, services).await
            } else {
                method_not_allowed().await
            }
        }
    })
}

/// A gateway path asked with another method than POST.
async fn method_not_allowed() -> Response {
    error::plain(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
}

/// A path under a gateway prefix that names no RPC (grpc-gateway's answer).
async fn not_found() -> Response {
    error::plain(StatusCode::NOT_FOUND, "Not Found\n")
}
