//! The web dashboard: one self-contained page (`index.html`: inline CSS and JavaScript, no
//! external assets, no build step), and the JSON and event-stream API behind it.
//!
//! Under `/ui`:
//!
//! - `GET /` (also `/ui/`) — the page.
//! - `GET /api/cluster` — [`ClusterView`]: the members, who leads, each member's
//!   health and Raft and store numbers (other members are asked over gRPC), alarms.
//! - `GET /api/rates` — the last five minutes of [`crate::metrics::rates::Sample`]s.
//! - `GET /api/alarms` — the raised alarms.
//! - `GET /api/keys?prefix=&limit=` — [`KeyList`]: a prefix search, read as clients read.
//! - `GET /api/key?key=` (or `?key_b64=`) — [`KeyDetail`]: one key, its earlier versions,
//!   its lease.
//! - `GET /api/leases` — [`LeaseList`]: every lease with its TTL.
//! - `POST /api/login` — `{"name","password"}` → `{"token"}`, when auth is enabled.
//! - `GET /api/events` — server-sent events: the cluster view and the newest rate sample every
//!   second, and at once when the leader changes.
//!
//! Keys and leases are read with the caller's token (`Authorization: Bearer <token>`, from
//! `/api/login`) under the same permission checks as etcd's KV and Lease services; the cluster
//! view, rates and alarms are public, as etcd's Status, `/metrics` and `/health` are.

mod cluster;
mod events;
mod keys;
mod leases;
mod session;

use std::sync::Arc;
use std::time::Instant;

use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::HttpState;
use crate::forward::LeaderChannels;

pub use cluster::{AlarmView, ClusterView, MemberStatus, MemberView};
pub use keys::{Encoded, KeyDetail, KeyEntry, KeyList};
pub use leases::{LeaseList, LeaseView};

/// The page, compiled into the binary.
const PAGE: &str = include_str!("index.html");

/// What the dashboard's handlers share: the member's HTTP state, channels to the other members,
/// the Auth service logins go through, and the last cluster view.
pub struct Dashboard {
    http: HttpState,
    /// gRPC channels to other members' client URLs, for their Status.
    peers: LeaderChannels,
    /// Logins run Authenticate as a client's call would.
    auth: crate::auth::service::AuthService,
    /// The newest cluster view and when it was taken, shared by every open page.
    view: tokio::sync::Mutex<Option<(Instant, Arc<ClusterView>)>>,
}

/// The dashboard's routes, to be nested under `/ui`.
pub fn routes(state: HttpState) -> Router {
    let dashboard = Arc::new(Dashboard {
        auth: crate::auth::service::AuthService::new(state.ctx.clone()),
        http: state,
        peers: LeaderChannels::default(),
        view: tokio::sync::Mutex::new(None),
    });
    Router::new()
        .route("/", get(page))
        .route("/index.html", get(page))
        .route("/api/cluster", get(cluster::get_cluster))
        .route("/api/rates", get(rates))
        .route("/api/alarms", get(cluster::get_alarms))
        .route("/api/keys", get(keys::list))
        .route("/api/key", get(keys::detail))
        .route("/api/leases", get(leases::list))
        .route("/api/login", post(session::login))
        .route("/api/events", get(events::events))
        .with_state(dashboard)
}

/// The page.
pub async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(PAGE)).into_response()
}

async fn rates(axum::extract::State(dashboard): axum::extract::State<Arc<Dashboard>>) -> Response {
    Json(dashboard.http.rates.samples()).into_response()
}

/// A failed API call: an HTTP status and a message, answered as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication is enabled: log in to read keys and leases",
        )
    }
}

impl From<tonic::Status> for ApiError {
    /// etcd's gRPC errors as the HTTP statuses a browser understands: missing or bad
    /// credentials are 401, refused permissions 403, an unavailable cluster 503.
    fn from(status: tonic::Status) -> ApiError {
        use tonic::Code;
        let message = status.message().to_string();
        let http = match status.code() {
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::InvalidArgument
                if message.contains("user name is empty") || message.contains("invalid user ID or password") =>
            {
                StatusCode::UNAUTHORIZED
            }
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(http, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

/// A member or lease id as etcd prints it: lowercase hex without padding.
fn hex_id(id: u64) -> String {
    format!("{id:x}")
}
