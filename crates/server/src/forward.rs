//! Sending calls that only the leader can answer (lease keep-alives and
//! time-to-live, membership changes) to the leader's client URL, as etcd's
//! followers do.

use std::collections::HashMap;
use std::sync::Mutex;

use concord_raft::RaftError;
use concord_tls::Dialer;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::context::MemberContext;
use crate::errors;

/// Marks a request that one member already forwarded, so that a member that
/// is not leader either refuses it instead of forwarding it again.
pub const FORWARDED_HEADER: &str = "concord-forwarded";

/// Cached gRPC channels to other members' client URLs.
#[derive(Default)]
pub struct LeaderChannels {
    channels: Mutex<HashMap<String, Channel>>,
}

impl LeaderChannels {
    /// A channel to `url`, made by `dialer`, connecting lazily on first use.
    pub fn channel(&self, url: &str, dialer: &Dialer) -> Result<Channel, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(url) {
            return Ok(c.clone());
        }
        let channel = dialer
            .connect_lazy(url, |e: Endpoint| {
                e.connect_timeout(std::time::Duration::from_secs(1)).tcp_nodelay(true)
            })
            .map_err(|e| errors::bad_leader_url(url, e))?;
        channels.insert(url.to_string(), channel.clone());
        Ok(channel)
    }

    /// A channel to the member that leads now, by its advertised client URL.
    pub fn to_leader(&self, ctx: &MemberContext, leader_id: u64) -> Result<Channel, Status> {
        let url = ctx
            .membership
            .member(leader_id)
            .and_then(|m| m.client_ur_ls.first().cloned())
            .ok_or_else(|| errors::from_raft(RaftError::NoLeader))?;
        self.channel(&url, &ctx.client_dialer)
    }
}

/// The current leader, once there is one that this member can reach: itself,
/// or one whose client URL it has learned (members announce their URLs through
/// Raft just after start-up). Waits up to the request timeout, as etcd does.
pub async fn wait_for_leader(ctx: &MemberContext) -> Result<u64, Status> {
    let group = ctx.router.default_group();
    let deadline = tokio::time::Instant::now() + ctx.request_timeout;
    loop {
        let leader_id = group.leader_id();
        let reachable = leader_id == ctx.membership.local_id()
            || ctx
                .membership
                .member(leader_id)
                .is_some_and(|m| !m.client_ur_ls.is_empty());
        if leader_id != 0 && reachable {
            return Ok(leader_id);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(errors::from_raft(RaftError::NoLeader));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Marks `request` as forwarded.
pub fn mark_forwarded<T>(request: &mut tonic::Request<T>) {
    request
        .metadata_mut()
        .insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
}

/// Whether `request` came from another member.
pub fn was_forwarded<T>(request: &tonic::Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}
