//! The leases: every granted lease, its granted TTL, the seconds it has left and how many keys
//! are attached to it.
//!
//! The list is read from the store after a ReadIndex barrier (as LeaseLeases); the seconds left
//! come from the leader's lease clock through the Lease service (as LeaseTimeToLive, forwarded
//! to the leader when this member does not lead). With auth enabled, the page must be logged in.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use concord_proto::etcdserverpb::lease_server::Lease as _;
use concord_proto::etcdserverpb::LeaseTimeToLiveRequest;
use serde::Serialize;

use super::{hex_id, session, ApiError, Dashboard};

/// The most leases listed with their TTL.
const MAX_LISTED: usize = 200;
/// How long the leader has to tell a lease's TTL.
const TTL_TIMEOUT: Duration = Duration::from_secs(1);

/// The leases.
#[derive(Debug, Serialize)]
pub struct LeaseList {
    /// How many leases are granted in all.
    pub total: usize,
    /// The first of them, ascending by id.
    pub leases: Vec<LeaseView>,
}

/// One lease.
#[derive(Debug, Serialize)]
pub struct LeaseView {
    /// Its id, in hex.
    pub id: String,
    /// The TTL it was granted, in seconds.
    pub granted_ttl: i64,
    /// The seconds it has left by the leader's clock; `None` when the leader did not say.
    pub ttl: Option<i64>,
    /// How many keys are attached to it.
    pub keys: usize,
}

/// `GET /ui/api/leases`.
pub async fn list(State(dashboard): State<Arc<Dashboard>>, headers: HeaderMap) -> Result<Json<LeaseList>, ApiError> {
    session::require_user(&dashboard, &headers).await?;
    let ctx = &dashboard.http.ctx;
    ctx.router
        .default_group()
        .read_barrier()
        .await
        .map_err(crate::errors::from_raft)?;
    let granted = ctx.store.leases().map_err(crate::errors::from_kv)?;
    let total = granted.len();
    let leases = futures::future::join_all(granted.into_iter().take(MAX_LISTED).map(|(id, granted_ttl)| {
        let (dashboard, headers) = (&dashboard, &headers);
        async move {
            let call = dashboard
                .http
                .leases
                .lease_time_to_live(session::request(headers, LeaseTimeToLiveRequest { id, keys: false }));
            let ttl = match tokio::time::timeout(TTL_TIMEOUT, call).await {
                Ok(Ok(resp)) => Some(resp.into_inner().ttl),
                _ => None,
            };
            let keys = dashboard.http.ctx.store.lease_keys(id).map_or(0, |k| k.len());
            LeaseView {
                id: hex_id(id as u64),
                granted_ttl,
                ttl,
                keys,
            }
        }
    }))
    .await;
    Ok(Json(LeaseList { total, leases }))
}
