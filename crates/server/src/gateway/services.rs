//! The in-process services the gateway calls: the same implementations the member serves over
//! gRPC, so a JSON call gets the same checks, limits, auth and errors as a gRPC one.

use std::sync::Arc;

use crate::auth::service::AuthService;
use crate::cluster::ClusterService;
use crate::election::ElectionService;
use crate::http::HttpState;
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::lock::LockService;
use crate::maintenance::MaintenanceService;
use crate::watch::WatchService;

/// One member's services, as the gateway's handlers share them.
pub struct Services {
    /// KV: Range, Put, DeleteRange, Txn, Compact.
    pub kv: KvService,
    /// Watch.
    pub watch: WatchService,
    /// Lease: the member's own instance, which holds the leader's keep-alive channels.
    pub lease: Arc<LeaseService>,
    /// Cluster membership.
    pub cluster: ClusterService,
    /// Maintenance.
    pub maintenance: MaintenanceService,
    /// Auth.
    pub auth: AuthService,
    /// v3lock.
    pub lock: LockService,
    /// v3election.
    pub election: ElectionService,
    /// The largest message a call may carry.
    pub max_message: usize,
}

impl Services {
    /// Builds the services over the member's shared state.
    pub fn new(state: &HttpState) -> Services {
        let ctx = state.ctx.clone();
        let hub = state.hub.clone();
        Services {
            kv: KvService::new(ctx.clone()),
            watch: WatchService::new(ctx.clone(), hub.clone(), state.watch_progress_notify_interval),
            lease: state.leases.clone(),
            cluster: ClusterService::new(ctx.clone()),
            maintenance: MaintenanceService::new(ctx.clone()),
            auth: AuthService::new(ctx.clone()),
            lock: LockService::new(ctx.clone(), hub.clone()),
            election: ElectionService::new(ctx.clone(), hub),
            max_message: super::request::max_message(ctx.limits.max_request_bytes),
        }
    }
}
