//! etcd's data corruption checks: `--experimental-initial-corrupt-check` and
//! `--experimental-corrupt-check-time`.
//!
//! Both compare HashKV answers between members, and, as etcd, only answers whose compact revisions
//! are equal: a hash covers the history since the compaction point (see `concord_storage`'s
//! `hash` module), so members compacted at different points disagree even when healthy.
//!
//! - **Initial check**: a member that already has data asks every other member, before its Raft
//!   group starts and before it serves anyone, for HashKV at its own current revision. A peer
//!   with the same compact revision and another hash stops it (`... found data inconsistency with
//!   peers`). Peers that do not answer, that have not reached the revision yet or that compacted
//!   past it are logged and skipped, so a member restarting beside a down or lagging peer still
//!   starts. A member that founds or joins a cluster has nothing to compare yet and skips it.
//! - **Periodic check**: every interval, the leader hashes its store at its current revision,
//!   asks every other member for HashKV at that revision, confirms its leadership with a
//!   ReadIndex barrier and hashes again. It raises the CORRUPT alarm (through Raft, on its own
//!   behalf) for the first member found wrong: itself if its own hash changed at an unchanged
//!   revision, a peer ahead of it in revision or compaction, or a peer with its compact revision
//!   and another hash.
//!
//! Members answer each other's HashKV on their peer URLs, over the peer TLS settings, as etcd
//! 3.5 does (`/members/hashkv` on its peer listener): the question is the cluster's own, not a
//! client's, so it needs no user when auth is on, and a member's peer URLs are known from the
//! membership even before it has published its client URLs.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::concordpb::raft_command::Op;
use concord_proto::etcdserverpb::alarm_request::AlarmAction;
use concord_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use concord_proto::etcdserverpb::maintenance_server::{Maintenance, MaintenanceServer};
use concord_proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse, DowngradeRequest, DowngradeResponse,
    HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse,
};
use concord_raft::Role;
use concord_storage::{KvError, MvccStore};
use concord_tls::Dialer;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::context::MemberContext;
use crate::membership::Membership;

/// A member's corruption checks (etcd's flags of the same names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CorruptCheck {
    /// `--experimental-initial-corrupt-check`: compare with the peers before serving.
    pub initial: bool,
    /// `--experimental-corrupt-check-time`: how often the leader compares every member;
    /// `None` (etcd's 0) for never.
    pub periodic: Option<Duration>,
    /// `--experimental-compact-hash-check-enabled` with its `-time`: how often the leader
    /// compares every member at its latest compaction point (`crate::compact_hash_check`);
    /// `None` when disabled.
    pub after_compaction: Option<Duration>,
}

/// A HashKV answer reduced to what the checks compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    /// The hash of the key space's history.
    pub hash: u32,
    /// The compaction point the history starts from (-1 if never compacted).
    pub compact_revision: i64,
    /// The answering member's current revision (etcd's header revision).
    pub revision: i64,
}

/// Why a peer gave no hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerFailure {
    /// The peer has not reached the revision asked for (etcd's ErrFutureRev).
    FutureRevision,
    /// The peer compacted past the revision asked for (etcd's ErrCompacted).
    Compacted,
    /// The peer could not be reached, timed out or refused the call.
    Other(String),
}

/// One other member's answer to "your HashKV at revision R".
#[derive(Clone, Debug)]
pub struct PeerHash {
    /// The member's id.
    pub id: u64,
    /// The peer URLs it was asked at.
    pub urls: Vec<String>,
    /// Its hash, or why there is none.
    pub answer: Result<KvHash, PeerFailure>,
}

/// How the initial check reads one peer's answer against the local hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialVerdict {
    /// Same hash.
    Agrees,
    /// Same compact revision, another hash: the data differ.
    Mismatch,
    /// Another hash at another compact revision: not comparable.
    CompactRevisionDiffers,
    /// The peer has not reached the local revision.
    PeerBehind,
    /// The peer compacted past the local revision.
    LocalBehind,
    /// The peer did not answer.
    NoAnswer,
}

/// The initial check's reading of `peer` against the local hash `local`.
pub fn initial_verdict(local: &KvHash, peer: &PeerHash) -> InitialVerdict {
    match &peer.answer {
        Ok(theirs) if theirs.hash == local.hash => InitialVerdict::Agrees,
        Ok(theirs) if theirs.compact_revision == local.compact_revision => InitialVerdict::Mismatch,
        Ok(_) => InitialVerdict::CompactRevisionDiffers,
        Err(PeerFailure::FutureRevision) => InitialVerdict::PeerBehind,
        Err(PeerFailure::Compacted) => InitialVerdict::LocalBehind,
        Err(PeerFailure::Other(_)) => InitialVerdict::NoAnswer,
    }
}

/// Compares the member's store with its peers' before it starts (see the module docs); an error
/// names the reason the member must not start. `timeout` bounds each peer's answer (etcd: the
/// request timeout).
pub async fn initial_check(
    store: &Arc<MvccStore>,
    membership: &Membership,
    dialer: &Dialer,
    timeout: Duration,
) -> Result<(), String> {
    let me = membership.local_id();
    tracing::info!(local_member_id = %format!("{me:x}"), ?timeout, "starting initial corruption check");
    let local = local_hash(store)
        .await
        .map_err(|e| format!("{me:x} failed to fetch hash ({e})"))?;
    let peers = peer_hashes(membership, local.revision, dialer, timeout).await;
    let mut mismatches = 0;
    for peer in &peers {
        let verdict = initial_verdict(&local, peer);
        let (remote_revision, remote_compact_revision, remote_hash) = match &peer.answer {
            Ok(h) => (h.revision, h.compact_revision, h.hash),
            Err(_) => (0, 0, 0),
        };
        macro_rules! log {
            ($level:ident, $message:literal) => {
                tracing::$level!(
                    local_member_id = %format!("{me:x}"),
                    local_member_revision = local.revision,
                    local_member_compact_revision = local.compact_revision,
                    local_member_hash = local.hash,
                    remote_peer_id = %format!("{:x}", peer.id),
                    remote_peer_endpoints = ?peer.urls,
                    remote_peer_revision = remote_revision,
                    remote_peer_compact_revision = remote_compact_revision,
                    remote_peer_hash = remote_hash,
                    $message
                )
            };
        }
        match verdict {
            InitialVerdict::Agrees => {}
            InitialVerdict::Mismatch => {
                log!(warn, "found different hash values from remote peer");
                mismatches += 1;
            }
            InitialVerdict::CompactRevisionDiffers => {
                log!(warn, "found different compact revision values from remote peer")
            }
            InitialVerdict::PeerBehind => log!(warn, "cannot fetch hash from slow remote peer"),
            InitialVerdict::LocalBehind => log!(warn, "cannot fetch hash from remote peer; local member is behind"),
            // Already logged, per URL, by `peer_hashes`; skipped as etcd skips it.
            InitialVerdict::NoAnswer => {}
        }
    }
    if mismatches > 0 {
        return Err(format!("{me:x} found data inconsistency with peers"));
    }
    tracing::info!(local_member_id = %format!("{me:x}"), "initial corruption checking passed; no corruption");
    Ok(())
}

/// A member the periodic check finds wrong, and why (etcd's log message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The member to raise CORRUPT for.
    pub member_id: u64,
    /// etcd's message for what was found.
    pub reason: &'static str,
}

/// What the leader's periodic check finds (see the module docs), in etcd's order: the leader's
/// own hash taken `before` and `after` its ReadIndex barrier, then each peer's answer to HashKV
/// at `before.revision`. Peers without an answer are not judged. The CORRUPT alarm goes to the
/// first finding's member only, as etcd raises one alarm per check.
pub fn periodic_findings(leader_id: u64, before: &KvHash, after: &KvHash, peers: &[PeerHash]) -> Vec<Finding> {
    let mut found = Vec::new();
    if after.hash != before.hash
        && after.revision == before.revision
        && after.compact_revision == before.compact_revision
    {
        found.push(Finding {
            member_id: leader_id,
            reason: "found hash mismatch",
        });
    }
    for peer in peers {
        let Ok(theirs) = &peer.answer else { continue };
        // Their answers were taken before the barrier, so they cannot be ahead of what the
        // leader applied after it.
        if theirs.revision > after.revision {
            found.push(Finding {
                member_id: peer.id,
                reason: "revision from follower must be less than or equal to leader's",
            });
        }
        if theirs.compact_revision > after.compact_revision {
            found.push(Finding {
                member_id: peer.id,
                reason: "compact revision from follower must be less than or equal to leader's",
            });
        }
        if theirs.compact_revision == before.compact_revision && theirs.hash != before.hash {
            found.push(Finding {
                member_id: peer.id,
                reason: "same compact revision then hashes must match",
            });
        }
    }
    found
}

/// Runs the periodic check on `ctx`'s member until `stop` turns true: every `interval`, if the
/// member leads. Returns at once when `interval` is `None`.
pub async fn run_periodic(
    interval: Option<Duration>,
    ctx: Arc<MemberContext>,
    dialer: Dialer,
    mut stop: watch::Receiver<bool>,
) {
    let Some(interval) = interval.filter(|i| !i.is_zero()) else {
        return;
    };
    let me = ctx.membership.local_id();
    tracing::info!(local_member_id = %format!("{me:x}"), ?interval, "enabled corruption checking");
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    // A check that took longer than the interval is not followed by a burst of catch-up checks.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if ctx.router.default_group().status().role != Role::Leader {
            continue;
        }
        if let Err(e) = periodic_check(&ctx, &dialer).await {
            tracing::warn!(error = %e, "failed to check hash KV");
        }
    }
}

/// One round of the periodic check (see [`periodic_findings`]); raises CORRUPT for what it finds.
async fn periodic_check(ctx: &Arc<MemberContext>, dialer: &Dialer) -> Result<(), String> {
    let me = ctx.membership.local_id();
    let before = local_hash(&ctx.store).await.map_err(|e| e.to_string())?;
    let peers = peer_hashes(&ctx.membership, before.revision, dialer, ctx.request_timeout).await;
    let group = ctx.router.default_group();
    match tokio::time::timeout(ctx.request_timeout, group.read_barrier()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(crate::errors::timeout().message().to_string()),
    }
    let after = local_hash(&ctx.store).await.map_err(|e| e.to_string())?;
    let findings = periodic_findings(me, &before, &after, &peers);
    for finding in &findings {
        let peer = peers.iter().find(|p| p.id == finding.member_id);
        tracing::warn!(
            member_id = %format!("{:x}", finding.member_id),
            leader_revision = after.revision,
            leader_compact_revision = before.compact_revision,
            leader_hash = before.hash,
            leader_hash_after = after.hash,
            follower = ?peer.map(|p| &p.answer),
            "{}", finding.reason
        );
    }
    if let Some(first) = findings.first() {
        raise_corrupt(ctx, first.member_id).await;
    }
    let checked = peers.iter().filter(|p| p.answer.is_ok()).count();
    tracing::info!(number_of_peers_checked = checked, "finished peer corruption check");
    Ok(())
}

/// Proposes the CORRUPT alarm for `member_id` on the member's own behalf, as etcd's leader does.
/// An alarm already raised is not proposed again at every check (raising is idempotent anyway).
pub(crate) async fn raise_corrupt(ctx: &MemberContext, member_id: u64) {
    let raised = ctx.store.alarms().is_ok_and(|alarms| {
        alarms
            .iter()
            .any(|a| a.member_id == member_id && a.alarm == AlarmType::Corrupt as i32)
    });
    if raised {
        return;
    }
    let raise = AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id,
        alarm: AlarmType::Corrupt as i32,
    };
    let group = ctx.router.default_group();
    match ctx
        .propose_write(group, &crate::auth::Sender::Member, Op::Alarm(raise))
        .await
    {
        Ok(_) => tracing::error!(member_id = %format!("{member_id:x}"), "raised the CORRUPT alarm"),
        Err(status) => tracing::warn!("raising the CORRUPT alarm failed: {}", status.message()),
    }
}

/// The member's own HashKV at its current revision.
async fn local_hash(store: &Arc<MvccStore>) -> Result<KvHash, KvError> {
    hash_at(store, 0).await
}

/// The member's own HashKV at `revision` (0: the current one); hashing walks the store, so off
/// the async workers.
pub(crate) async fn hash_at(store: &Arc<MvccStore>, revision: i64) -> Result<KvHash, KvError> {
    let store = store.clone();
    let (hash, compact_revision, revision) = tokio::task::spawn_blocking(move || store.hash_kv(revision))
        .await
        .map_err(|e| KvError::Internal(format!("hashing failed: {e}")))??;
    Ok(KvHash {
        hash,
        compact_revision,
        revision,
    })
}

/// Asks every other member, all at once, for its HashKV at `revision`, trying each of its peer
/// URLs in turn; each URL's answer is bounded by `timeout`. Failures are logged here (etcd's
/// "failed hash kv request").
pub async fn peer_hashes(membership: &Membership, revision: i64, dialer: &Dialer, timeout: Duration) -> Vec<PeerHash> {
    let me = membership.local_id();
    let asks = membership
        .members()
        .into_iter()
        .filter(|m| m.id != me && !m.peer_ur_ls.is_empty())
        .map(|m| async move {
            let mut answer = Err(PeerFailure::Other("no peer URL".to_string()));
            for url in &m.peer_ur_ls {
                answer = hash_of_peer(url, revision, dialer, timeout).await;
                match &answer {
                    Ok(_) => break,
                    Err(e) => tracing::warn!(
                        local_member_id = %format!("{me:x}"),
                        requested_revision = revision,
                        remote_peer_endpoint = %url,
                        error = ?e,
                        "failed hash kv request"
                    ),
                }
            }
            PeerHash {
                id: m.id,
                urls: m.peer_ur_ls,
                answer,
            }
        });
    futures::future::join_all(asks).await
}

/// One peer URL's HashKV at `revision`.
async fn hash_of_peer(url: &str, revision: i64, dialer: &Dialer, timeout: Duration) -> Result<KvHash, PeerFailure> {
    let call = async {
        let channel = dialer
            .connect(url, |e| e.connect_timeout(timeout).timeout(timeout))
            .await
            .map_err(PeerFailure::Other)?;
        let resp = MaintenanceClient::new(channel)
            .hash_kv(HashKvRequest { revision })
            .await
            .map_err(|status| classify(&status))?
            .into_inner();
        Ok(KvHash {
            hash: resp.hash,
            compact_revision: resp.compact_revision,
            revision: resp.header.map_or(0, |h| h.revision),
        })
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(PeerFailure::Other(format!("no answer within {timeout:?}"))))
}

/// A peer's refusal read back into the cases the checks tell apart (by etcd's messages, which
/// [`crate::errors::from_kv`] sends).
fn classify(status: &Status) -> PeerFailure {
    if status.message() == KvError::FutureRevision.to_string() {
        PeerFailure::FutureRevision
    } else if status.message() == KvError::Compacted.to_string() {
        PeerFailure::Compacted
    } else {
        PeerFailure::Other(format!("{:?}: {}", status.code(), status.message()))
    }
}

/// Answers other members' HashKV on the peer URLs; every other Maintenance call is refused there
/// (clients use the client URLs).
pub struct PeerHashService {
    ctx: Arc<MemberContext>,
}

impl PeerHashService {
    /// The service, ready to mount on the peer listener.
    pub fn server(ctx: Arc<MemberContext>) -> MaintenanceServer<Self> {
        MaintenanceServer::new(PeerHashService { ctx })
    }
}

#[tonic::async_trait]
impl Maintenance for PeerHashService {
    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let (store, revision) = (self.ctx.store.clone(), request.get_ref().revision);
        let (hash, compact_revision, hash_revision) = tokio::task::spawn_blocking(move || store.hash_kv(revision))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(crate::errors::from_kv)?;
        Ok(Response::new(HashKvResponse {
            header: Some(self.ctx.header(self.ctx.store.current_revision())),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    async fn alarm(&self, _request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        Err(crate::errors::only_hash_kv_on_peer_urls())
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Err(crate::errors::only_hash_kv_on_peer_urls())
    }

    async fn defragment(&self, _request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        Err(crate::errors::only_hash_kv_on_peer_urls())
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(crate::errors::only_hash_kv_on_peer_urls())
    }

    type SnapshotStream = Pin<Box<dyn futures::Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(&self, _request: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(crate::errors::only_hash_kv_on_peer_urls())
    }

    async fn move_leader(&self, _request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(crate::errors::only_hash_kv_on_peer_urls())
    }

    async fn downgrade(&self, _request: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        Err(crate::errors::only_hash_kv_on_peer_urls())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(hash: u32, compact_revision: i64, revision: i64) -> KvHash {
        KvHash {
            hash,
            compact_revision,
            revision,
        }
    }

    fn peer(id: u64, answer: Result<KvHash, PeerFailure>) -> PeerHash {
        PeerHash {
            id,
            urls: vec![format!("http://peer{id}")],
            answer,
        }
    }

    #[test]
    fn initial_check_fails_only_on_another_hash_at_the_same_compaction_point() {
        let local = hash(7, 5, 20);
        let verdict = |answer| initial_verdict(&local, &peer(2, answer));
        assert_eq!(verdict(Ok(hash(7, 5, 20))), InitialVerdict::Agrees);
        assert_eq!(verdict(Ok(hash(8, 5, 20))), InitialVerdict::Mismatch);
        assert_eq!(verdict(Ok(hash(8, 9, 20))), InitialVerdict::CompactRevisionDiffers);
        assert_eq!(verdict(Err(PeerFailure::FutureRevision)), InitialVerdict::PeerBehind);
        assert_eq!(verdict(Err(PeerFailure::Compacted)), InitialVerdict::LocalBehind);
        assert_eq!(
            verdict(Err(PeerFailure::Other("refused".into()))),
            InitialVerdict::NoAnswer
        );
    }

    #[test]
    fn periodic_check_names_the_member_that_differs() {
        let leader = hash(7, -1, 20);
        let peers = [
            peer(2, Ok(hash(7, -1, 18))),
            peer(3, Ok(hash(9, -1, 20))),
            peer(4, Err(PeerFailure::FutureRevision)),
        ];
        let found = periodic_findings(1, &leader, &leader, &peers);
        assert_eq!(
            found,
            [Finding {
                member_id: 3,
                reason: "same compact revision then hashes must match"
            }]
        );
        // Healthy peers, one compacted further back: nothing.
        let peers = [peer(2, Ok(hash(7, -1, 20))), peer(3, Ok(hash(1, -1, 19)))];
        let compacted_leader = hash(5, 4, 20);
        assert_eq!(periodic_findings(1, &leader, &leader, &peers[..1]), []);
        assert_eq!(periodic_findings(1, &compacted_leader, &compacted_leader, &peers), []);
    }

    #[test]
    fn periodic_check_catches_peers_ahead_and_a_leader_whose_hash_moved() {
        let before = hash(7, 3, 20);
        let peers = [peer(2, Ok(hash(7, 3, 21))), peer(3, Ok(hash(7, 4, 20)))];
        let found: Vec<u64> = periodic_findings(1, &before, &before, &peers)
            .iter()
            .map(|f| f.member_id)
            .collect();
        assert_eq!(found, [2, 3]);
        let moved = hash(8, 3, 20);
        assert_eq!(periodic_findings(1, &before, &moved, &[])[0].member_id, 1);
        // New writes between the two hashes move it legitimately.
        assert_eq!(periodic_findings(1, &before, &hash(8, 3, 21), &[]), []);
    }

    #[test]
    fn refusals_are_read_back_by_etcds_messages() {
        assert_eq!(
            classify(&crate::errors::from_kv(KvError::FutureRevision)),
            PeerFailure::FutureRevision
        );
        assert_eq!(
            classify(&crate::errors::from_kv(KvError::Compacted)),
            PeerFailure::Compacted
        );
        assert!(matches!(classify(&Status::unavailable("down")), PeerFailure::Other(_)));
    }
}
