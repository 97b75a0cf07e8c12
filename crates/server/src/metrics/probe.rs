//! Background work that feeds metrics: counting leader changes as the Raft layer reports them,
//! and timing a round trip to every peer, as etcd's prober does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_proto::concordpb::cluster_peer_client::ClusterPeerClient;
use concord_proto::concordpb::MembershipRequest;
use concord_tls::Dialer;
use tokio::sync::watch;

use crate::context::MemberContext;
use crate::forward::LeaderChannels;

/// How often each peer's round trip is measured.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Counts every change to a new, known leader, as etcd does (so a fresh cluster shows 1).
pub async fn count_leader_changes(ctx: Arc<MemberContext>, mut stop: watch::Receiver<bool>) {
    let mut leader = ctx.router.default_group().watch_leader();
    let mut last = 0;
    loop {
        let now = *leader.borrow_and_update();
        if now != 0 && now != last {
            super::LEADER_CHANGES.inc();
        }
        last = now;
        tokio::select! {
            changed = leader.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Times a small call to every other member's peer URL every few seconds; a failed call counts
/// as a send failure to that peer.
pub async fn probe_peers(ctx: Arc<MemberContext>, dialer: Dialer, mut stop: watch::Receiver<bool>) {
    let channels = LeaderChannels::default();
    let me = ctx.membership.local_id();
    loop {
        for member in ctx.membership.members() {
            let Some(url) = member.peer_ur_ls.first().filter(|_| member.id != me) else {
                continue;
            };
            let to = format!("{:x}", member.id);
            let Ok(channel) = channels.channel(url, &dialer) else {
                continue;
            };
            let started = Instant::now();
            let mut client = ClusterPeerClient::new(channel);
            let call = client.membership(MembershipRequest {});
            match tokio::time::timeout(PROBE_INTERVAL, call).await {
                Ok(Ok(_)) => super::PEER_ROUND_TRIP_SECONDS
                    .with_label_values(&[&to])
                    .observe(started.elapsed().as_secs_f64()),
                _ => super::PEER_PROBE_FAILURES.with_label_values(&[&to]).inc(),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
