//! etcd's `--experimental-compact-hash-check-enabled`: after each compaction, the leader checks
//! that every member holds the same data at the compaction revision.
//!
//! A store compacted at `C` answers HashKV at `C` with a hash of the key space as it stood at `C`
//! (see `concord_storage`'s `hash` module: no history above `C`, every version live at `C`).
//! That answer stays the same however far the member has applied since, so the leader can compare
//! members that are at different revisions, which the periodic check (`corrupt_check`) cannot.
//! Every `--experimental-compact-hash-check-time`, the leader takes its own compaction point `C`
//! (if it has not checked it yet), asks every other member for HashKV at `C`, and compares the
//! answers of members compacted at `C` too. A member with another hash gets the CORRUPT alarm; a
//! member that has not compacted at `C` yet (or compacted further) is skipped, and `C` is checked
//! again at the next tick until every member was compared, as etcd does.
//!
//! etcd hashes the history between the previous compaction point and `C` when it compacts and
//! keeps the last ten such hashes; Concord compares the key space at the latest compaction point
//! only. Both catch a member whose data differ at `C`; etcd's also covers overwritten history that
//! the compaction removes.

use std::sync::Arc;
use std::time::Duration;

use concord_raft::Role;
use concord_tls::Dialer;
use tokio::sync::watch;

use crate::context::MemberContext;
use crate::corrupt_check::{hash_at, peer_hashes, raise_corrupt, KvHash, PeerHash};

/// What one round found about one compaction revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompactVerdict {
    /// Every other member answered at the same compaction point with the same hash.
    AllAgree,
    /// This member answered at the same compaction point with another hash.
    Mismatch(u64),
    /// No member differs, but some could not be compared yet (no answer, or another
    /// compaction point).
    Incomplete {
        /// How many members were compared.
        checked: usize,
    },
}

/// Reads the peers' answers to HashKV at `leader.compact_revision` against the leader's own.
pub fn compact_verdict(leader: &KvHash, peers: &[PeerHash]) -> CompactVerdict {
    let mut checked = 0;
    for peer in peers {
        let Ok(theirs) = &peer.answer else { continue };
        if theirs.compact_revision != leader.compact_revision {
            continue;
        }
        if theirs.hash != leader.hash {
            return CompactVerdict::Mismatch(peer.id);
        }
        checked += 1;
    }
    if checked == peers.len() {
        CompactVerdict::AllAgree
    } else {
        CompactVerdict::Incomplete { checked }
    }
}

/// Runs the check on `ctx`'s member every `interval` while it leads, until `stop` turns true.
/// Returns at once when `interval` is `None` (the check is off).
pub async fn run(interval: Option<Duration>, ctx: Arc<MemberContext>, dialer: Dialer, mut stop: watch::Receiver<bool>) {
    let Some(interval) = interval.filter(|i| !i.is_zero()) else {
        return;
    };
    let me = ctx.membership.local_id();
    tracing::info!(local_member_id = %format!("{me:x}"), ?interval, "enabled compaction hash check");
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The newest compaction revision every member was compared at.
    let mut latest_checked = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if ctx.router.default_group().status().role != Role::Leader {
            continue;
        }
        match check_once(&ctx, &dialer, latest_checked).await {
            Ok(Some(revision)) => latest_checked = revision,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "compaction hash check failed"),
        }
    }
}

/// One round: returns the compaction revision once every member agreed at it.
async fn check_once(ctx: &Arc<MemberContext>, dialer: &Dialer, latest_checked: i64) -> Result<Option<i64>, String> {
    let compacted = ctx.store.compact_revision();
    if compacted <= 0 || compacted <= latest_checked {
        return Ok(None);
    }
    tracing::info!(
        local_member_id = %format!("{:x}", ctx.membership.local_id()),
        timeout = ?ctx.request_timeout,
        "starting compact hash check"
    );
    let leader = hash_at(&ctx.store, compacted).await.map_err(|e| e.to_string())?;
    if leader.compact_revision != compacted {
        // Compacted again meanwhile: the next tick checks the new point.
        return Ok(None);
    }
    let peers = peer_hashes(&ctx.membership, compacted, dialer, ctx.request_timeout).await;
    match compact_verdict(&leader, &peers) {
        CompactVerdict::Mismatch(id) => {
            let theirs = peers.iter().find(|p| p.id == id).map(|p| &p.answer);
            tracing::error!(
                revision = compacted,
                leader_compact_revision = leader.compact_revision,
                leader_hash = leader.hash,
                follower = ?theirs,
                follower_peer_id = %format!("{id:x}"),
                "failed compaction hash check"
            );
            raise_corrupt(ctx, id).await;
            Ok(None)
        }
        CompactVerdict::AllAgree => {
            tracing::info!(
                number_of_peers_checked = peers.len(),
                revision = compacted,
                "successfully checked hash on whole cluster"
            );
            Ok(Some(compacted))
        }
        CompactVerdict::Incomplete { checked } => {
            tracing::warn!(
                revision = compacted,
                number_of_peers_checked = checked,
                number_of_peers = peers.len(),
                "skipped revision in compaction hash check; was not able to check all peers"
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corrupt_check::PeerFailure;

    fn hash(hash: u32, compact_revision: i64) -> KvHash {
        KvHash {
            hash,
            compact_revision,
            revision: 100,
        }
    }

    fn peer(id: u64, answer: Result<KvHash, PeerFailure>) -> PeerHash {
        PeerHash {
            id,
            urls: vec![],
            answer,
        }
    }

    #[test]
    fn members_are_compared_only_at_the_same_compaction_point() {
        let leader = hash(7, 50);
        let agree = [peer(2, Ok(hash(7, 50))), peer(3, Ok(hash(7, 50)))];
        assert_eq!(compact_verdict(&leader, &agree), CompactVerdict::AllAgree);
        let one_lags = [peer(2, Ok(hash(9, 40))), peer(3, Ok(hash(7, 50)))];
        assert_eq!(
            compact_verdict(&leader, &one_lags),
            CompactVerdict::Incomplete { checked: 1 }
        );
        let one_down = [
            peer(2, Err(PeerFailure::Other("down".into()))),
            peer(3, Ok(hash(7, 50))),
        ];
        assert_eq!(
            compact_verdict(&leader, &one_down),
            CompactVerdict::Incomplete { checked: 1 }
        );
        let one_differs = [peer(2, Ok(hash(7, 50))), peer(3, Ok(hash(8, 50)))];
        assert_eq!(compact_verdict(&leader, &one_differs), CompactVerdict::Mismatch(3));
    }
}
