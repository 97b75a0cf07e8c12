//! The HTTP endpoints a member serves beside gRPC, for operators and their tools:
//! `/metrics` (Prometheus), `/health`, `/livez`, `/readyz` and `/version` (etcd's), and the
//! web dashboard under `/ui`; on client URLs also etcd's JSON gateway ([`crate::gateway`]).
//!
//! They are mounted on every client URL (gRPC and HTTP/1.1 share the port, as with etcd) unless
//! `--listen-client-http-urls` is given, in which case those listeners serve them all and the
//! client URLs serve gRPC only (etcd 3.5); and on the dedicated listeners of
//! `--listen-metrics-urls` (metrics and health) and `--listen-dashboard-urls` (the dashboard).
//! On client URLs (and those of `--listen-client-http-urls`) they sit behind etcd's access
//! control ([`access`]: `--host-whitelist`, `--cors`), as etcd's client listeners' do.

pub mod access;
pub mod dashboard;
mod health;

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::context::MemberContext;
use crate::metrics::rates::RateHistory;

/// What the HTTP handlers of one member share.
#[derive(Clone)]
pub struct HttpState {
    /// The member's services' shared state.
    pub ctx: Arc<MemberContext>,
    /// The last minutes of request rates, for the dashboard.
    pub rates: Arc<RateHistory>,
    /// The member's Lease service, which the dashboard asks for lease TTLs (it answers from
    /// the leader's lease clock, forwarding when this member does not lead).
    pub leases: Arc<crate::lease::LeaseService>,
    /// The member's watch hub, which the JSON gateway's Watch, Lock and Election streams share
    /// with the gRPC ones.
    pub hub: Arc<crate::watch::hub::WatchHub>,
    /// etcd's `--experimental-watch-progress-notify-interval`, for the gateway's watches.
    pub watch_progress_notify_interval: std::time::Duration,
}

/// `/metrics`, `/health`, `/livez`, `/readyz` and `/version`: what `--listen-metrics-urls`
/// serves.
pub fn operator_routes(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health::health))
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/version", get(version))
        .with_state(state)
}

/// The dashboard: its page and assets, and the JSON and event-stream API behind them, under
/// `/ui`. What `--listen-dashboard-urls` serves.
pub fn dashboard_routes(state: HttpState) -> Router {
    // A nested router's "/" answers "/ui" only: "/ui/" needs its own route.
    Router::new()
        .nest("/ui", dashboard::routes(state))
        .route("/ui/", get(dashboard::page))
        .route("/", get(|| async { axum::response::Redirect::temporary("/ui/") }))
}

/// Everything above, and etcd's JSON gateway (`/v3/...`), for the client port.
pub fn all_routes(state: HttpState) -> Router {
    operator_routes(state.clone())
        .merge(crate::gateway::routes(&state))
        .merge(dashboard_routes(state))
}

async fn metrics(axum::extract::State(state): axum::extract::State<HttpState>) -> impl IntoResponse {
    let ctx = state.ctx.clone();
    // Reading the store's size and the groups' state is quick, but keep it off the async workers.
    let body = tokio::task::spawn_blocking(move || crate::metrics::render(&ctx))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body)
}

async fn version() -> impl IntoResponse {
    let v = crate::maintenance::ETCD_API_VERSION;
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"etcdserver":"{v}","etcdcluster":"{}"}}"#, cluster_version(v)),
    )
}

/// etcd reports the cluster version as major.minor.0.
fn cluster_version(server: &str) -> String {
    let mut parts = server.split('.');
    format!("{}.{}.0", parts.next().unwrap_or("3"), parts.next().unwrap_or("5"))
}
