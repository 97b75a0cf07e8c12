//! etcd's Watch service: change events from any retained revision, in
//! order, exactly once.
//!
//! - [`hub`]: reads applied history once and broadcasts it to every stream.
//! - [`watcher`]: one watcher's range, filters and position.
//! - [`stream`]: one client stream with its watchers.
//! - [`outbound`]: a stream's responses waiting for its client, bounded in bytes.
//! - [`sharded`]: in a cluster with global revisions, a watcher that follows the shards holding
//!   its keys itself ([`shard_events`] reads one shard's part, [`merge`] puts the parts back in
//!   revision order).
//! - [`wait`]: the same, for waiters inside the server.

pub mod hub;
pub mod merge;
pub mod outbound;
pub mod shard_events;
pub mod sharded;
pub mod stream;
pub mod wait;
pub mod watcher;

use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcdserverpb::watch_server::Watch;
use concord_proto::etcdserverpb::WatchRequest;
use tonic::{Request, Response, Status, Streaming};

use crate::context::MemberContext;
pub use hub::WatchHub;

/// The Watch service of one member.
pub struct WatchService {
    ctx: Arc<MemberContext>,
    hub: Arc<WatchHub>,
    progress_interval: Duration,
}

impl WatchService {
    /// A Watch service reading from `hub`; watchers that ask for progress
    /// notifications get one every `progress_interval` while idle.
    pub fn new(ctx: Arc<MemberContext>, hub: Arc<WatchHub>, progress_interval: Duration) -> Self {
        WatchService {
            ctx,
            hub,
            progress_interval,
        }
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = outbound::Outbound;

    async fn watch(&self, request: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let (out, rx) = outbound::channel(outbound::OUTBOUND_BYTES, self.hub.outbound_budget());
        let creds = crate::auth::Credentials::of(&request);
        let task = stream::WatchStreamTask::new(self.ctx.clone(), self.hub.clone(), out, self.progress_interval)
            .with_credentials(creds);
        tokio::spawn(task.run(request.into_inner()));
        Ok(Response::new(rx))
    }
}
