//! The lease clock. Leases live in the store (granted and revoked through
//! Raft, so every member agrees on which exist); their deadlines live here,
//! in memory, and only the leader's deadlines count. The leader renews them
//! on keep-alives and proposes a revoke when one passes.
//!
//! When a member becomes leader it restarts every deadline at a full TTL
//! plus an election timeout, as etcd does, so no lease expires because of a
//! failover; leases can outlive their TTL by that much, never fall short.
//!
//! With etcd's `--experimental-enable-lease-checkpoint`, the leader also
//! records through Raft, every checkpoint interval (etcd: 5 minutes), how
//! long each lease longer than that interval has left, and a new leader
//! starts such a lease at what was recorded (plus the election timeout)
//! rather than at its full TTL: a lease whose holder is gone expires in
//! about its TTL even across repeated failovers. A renewal of a lease with a
//! recorded remainder proposes a checkpoint that clears it, so the record
//! never cuts a renewed lease short. The records are kept in the store
//! (etcd's `-persist` variant), so they also survive restarts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_proto::concordpb::raft_command::Op;
use concord_proto::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest};
use concord_raft::Role;
use concord_storage::MvccStore;

use crate::auth::Sender;
use crate::context::MemberContext;

/// How often the leader looks for expired leases (etcd: 500 ms).
const EXPIRY_CHECK: Duration = Duration::from_millis(500);
/// Most revokes the leader proposes per check.
const REVOKES_PER_CHECK: usize = 500;
/// Most lease checkpoints in one Raft entry (etcd's `maxLeaseCheckpointBatchSize`).
const CHECKPOINTS_PER_ENTRY: usize = 1000;

struct LeaseClock {
    granted_ttl: i64,
    deadline: Instant,
    /// When a revoke for it was last proposed, so it is not proposed again at once.
    revoking_since: Option<Instant>,
    /// When the leader records its remaining time next (checkpointing on, lease long enough).
    next_checkpoint: Option<Instant>,
    /// Whether the store holds a recorded remainder for it.
    recorded: bool,
}

#[derive(Default)]
struct LessorState {
    /// True while this member leads and its deadlines are authoritative.
    primary: bool,
    leases: HashMap<i64, LeaseClock>,
    /// Renewed leases whose recorded remainder must be cleared.
    to_clear: Vec<i64>,
}

/// The lease deadlines of one member.
pub struct Lessor {
    store: Arc<MvccStore>,
    state: Mutex<LessorState>,
    /// Added to every deadline on promotion: one election timeout.
    promotion_grace: Duration,
    /// How long an unanswered revoke waits before it is proposed again.
    revoke_retry: Duration,
    /// etcd's lease checkpoint interval; `None` when checkpointing is off.
    checkpoint_interval: Option<Duration>,
    /// Woken when a renewal leaves a recorded remainder to clear, so the clearing is proposed at
    /// once rather than at the next expiry check.
    clear_due: tokio::sync::Notify,
}

/// What a renewal found.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed; the lease's TTL in seconds.
    Renewed(i64),
    /// No such lease.
    NotFound,
    /// This member is not the primary lessor (not leader, or not promoted yet).
    NotPrimary,
}

impl Lessor {
    /// A lessor over the leases in `store`; `checkpoint_interval` turns etcd's lease
    /// checkpoints on.
    pub fn new(
        store: Arc<MvccStore>,
        promotion_grace: Duration,
        revoke_retry: Duration,
        checkpoint_interval: Option<Duration>,
    ) -> Arc<Self> {
        Arc::new(Lessor {
            store,
            state: Mutex::new(LessorState::default()),
            promotion_grace,
            revoke_retry,
            checkpoint_interval,
            clear_due: tokio::sync::Notify::new(),
        })
    }

    /// When a lease with `left` to run is checkpointed next: only a lease that outlives the
    /// interval is, as in etcd.
    fn checkpoint_after(&self, now: Instant, left: Duration) -> Option<Instant> {
        let interval = self.checkpoint_interval?;
        (left > interval).then_some(now + interval)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LessorState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A grant was applied.
    pub fn on_granted(&self, id: i64, ttl: i64) {
        let now = Instant::now();
        let clock = LeaseClock {
            granted_ttl: ttl,
            deadline: now + secs(ttl),
            revoking_since: None,
            next_checkpoint: self.checkpoint_after(now, secs(ttl)),
            recorded: false,
        };
        self.state().leases.insert(id, clock);
    }

    /// A checkpoint was applied: which leases have a recorded remainder is read back.
    pub fn on_checkpointed(&self) {
        let recorded = match self.store.lease_remaining_ttls() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot read lease checkpoints: {e}");
                return;
            }
        };
        let mut state = self.state();
        for (id, clock) in state.leases.iter_mut() {
            clock.recorded = recorded.contains_key(id);
        }
    }

    /// A revoke was applied (or the lease turned out not to exist).
    pub fn on_revoked(&self, id: i64) {
        self.state().leases.remove(&id);
    }

    /// Takes over as the lease clock: every lease gets a full TTL plus grace.
    pub fn promote(&self) {
        let leases = match self.store.leases() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot read leases to promote the lessor: {e}");
                return;
            }
        };
        let recorded = match self.store.lease_remaining_ttls() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cannot read lease checkpoints to promote the lessor: {e}");
                return;
            }
        };
        let now = Instant::now();
        let mut state = self.state();
        state.to_clear.clear();
        state.leases = leases
            .into_iter()
            .map(|(id, ttl)| {
                // A recorded remainder counts only with checkpointing on, as in etcd.
                let remainder = recorded.get(&id).filter(|_| self.checkpoint_interval.is_some());
                let left = secs(remainder.copied().unwrap_or(ttl));
                let clock = LeaseClock {
                    granted_ttl: ttl,
                    deadline: now + self.promotion_grace + left,
                    revoking_since: None,
                    next_checkpoint: self.checkpoint_after(now, left),
                    recorded: recorded.contains_key(&id),
                };
                (id, clock)
            })
            .collect();
        state.primary = true;
        tracing::info!(leases = state.leases.len(), "lessor promoted");
    }

    /// Stops acting as the lease clock.
    pub fn demote(&self) {
        self.state().primary = false;
    }

    /// Whether this member's deadlines count.
    pub fn is_primary(&self) -> bool {
        self.state().primary
    }

    /// Renews a lease for a full TTL.
    pub fn renew(&self, id: i64) -> Renewal {
        let mut state = self.state();
        if !state.primary {
            return Renewal::NotPrimary;
        }
        let now = Instant::now();
        let next_checkpoint = |ttl| self.checkpoint_after(now, secs(ttl));
        let Some(clock) = state.leases.get_mut(&id) else {
            return Renewal::NotFound;
        };
        clock.deadline = now + secs(clock.granted_ttl);
        clock.next_checkpoint = next_checkpoint(clock.granted_ttl);
        let ttl = clock.granted_ttl;
        if std::mem::take(&mut clock.recorded) && self.checkpoint_interval.is_some() {
            state.to_clear.push(id);
            self.clear_due.notify_one();
        }
        Renewal::Renewed(ttl)
    }

    /// The seconds left on a lease and its granted TTL, as the primary sees them.
    pub fn time_to_live(&self, id: i64) -> Option<(i64, i64)> {
        let state = self.state();
        let clock = state.leases.get(&id)?;
        let left = clock.deadline.saturating_duration_since(Instant::now());
        Some((left.as_secs_f64().ceil() as i64, clock.granted_ttl))
    }

    /// The checkpoints to propose now: each lease due for one with its seconds left (rounded up),
    /// and each renewed lease whose recorded remainder must go (0).
    fn due_for_checkpoint(&self) -> Vec<LeaseCheckpoint> {
        let now = Instant::now();
        let mut state = self.state();
        if !state.primary || self.checkpoint_interval.is_none() {
            return Vec::new();
        }
        let mut due: Vec<LeaseCheckpoint> = std::mem::take(&mut state.to_clear)
            .into_iter()
            .map(|id| LeaseCheckpoint { id, remaining_ttl: 0 })
            .collect();
        for (id, clock) in state.leases.iter_mut() {
            if clock.next_checkpoint.is_none_or(|at| at > now) {
                continue;
            }
            let left = clock.deadline.saturating_duration_since(now);
            let remaining_ttl = left.as_secs_f64().ceil() as i64;
            clock.next_checkpoint = self.checkpoint_after(now, left);
            clock.recorded = remaining_ttl > 0;
            due.push(LeaseCheckpoint { id: *id, remaining_ttl });
        }
        due
    }

    /// Leases past their deadline that need a revoke proposed now.
    fn due_for_revoke(&self) -> Vec<i64> {
        let now = Instant::now();
        let mut state = self.state();
        if !state.primary {
            return Vec::new();
        }
        let mut due = Vec::new();
        for (id, clock) in state.leases.iter_mut() {
            let retry_ok = clock
                .revoking_since
                .is_none_or(|since| now.duration_since(since) >= self.revoke_retry);
            if clock.deadline <= now && retry_ok {
                clock.revoking_since = Some(now);
                due.push(*id);
                if due.len() >= REVOKES_PER_CHECK {
                    break;
                }
            }
        }
        due
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

/// The leader's lease duties: follow this member's role, promote or demote
/// the lessor, and propose revokes for expired leases.
pub async fn run_lessor(lessor: Arc<Lessor>, ctx: Arc<MemberContext>) {
    let group = ctx.router.default_group().clone();
    let mut role = group.watch_role();
    let mut check = tokio::time::interval(EXPIRY_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = role.changed() => {
                if changed.is_err() {
                    return;
                }
                let (now, _) = *role.borrow_and_update();
                match (now == Role::Leader, lessor.is_primary()) {
                    (true, false) => lessor.promote(),
                    (false, true) => lessor.demote(),
                    _ => {}
                }
            }
            _ = lessor.clear_due.notified() => propose_checkpoints(&lessor, &ctx, &group),
            _ = check.tick() => {
                propose_checkpoints(&lessor, &ctx, &group);
                for id in lessor.due_for_revoke() {
                    let (ctx, lessor, group) = (ctx.clone(), lessor.clone(), group.clone());
                    tokio::spawn(async move {
                        // The member revokes what expired, whoever's keys the lease holds.
                        let revoked = match ctx.router.is_sharded() {
                            true => super::sharded::revoke(&ctx, &Default::default(), id).await.map(|_| ()),
                            false => {
                                let revoke = Op::LeaseRevoke(LeaseRevokeRequest { id });
                                ctx.propose_write(&group, &Sender::Member, revoke).await.map(|_| ())
                            }
                        };
                        match revoked {
                            Ok(()) => tracing::debug!(lease = id, "expired lease revoked"),
                            Err(status) if status.code() == tonic::Code::NotFound => lessor.on_revoked(id),
                            Err(status) => tracing::debug!(lease = id, "revoking expired lease failed: {}", status.message()),
                        }
                    });
                }
            }
        }
    }
}

/// Proposes the checkpoints due now (see [`Lessor::due_for_checkpoint`]), in entries of at most
/// [`CHECKPOINTS_PER_ENTRY`].
fn propose_checkpoints(lessor: &Lessor, ctx: &Arc<MemberContext>, group: &crate::router::GroupHandle) {
    for batch in lessor.due_for_checkpoint().chunks(CHECKPOINTS_PER_ENTRY) {
        let cleared = batch.iter().filter(|c| c.remaining_ttl == 0).count();
        let (recorded, leases) = (batch.len() - cleared, batch.len());
        let checkpoint = Op::LeaseCheckpoint(LeaseCheckpointRequest {
            checkpoints: batch.to_vec(),
        });
        let (ctx, group) = (ctx.clone(), group.clone());
        tokio::spawn(async move {
            match ctx.propose_write(&group, &Sender::Member, checkpoint).await {
                Ok(_) => tracing::info!(
                    leases,
                    "lease checkpoint applied: {recorded} recorded, {cleared} cleared"
                ),
                Err(status) => tracing::warn!("lease checkpoint failed: {}", status.message()),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lessor() -> (tempfile::TempDir, Arc<Lessor>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MvccStore::open(&dir.path().join("kv.redb")).unwrap());
        (
            dir,
            Lessor::new(store, Duration::from_secs(1), Duration::from_secs(5), None),
        )
    }

    #[test]
    fn only_the_primary_renews_and_expires() {
        let (_dir, lessor) = lessor();
        lessor.on_granted(7, 0);
        assert_eq!(lessor.renew(7), Renewal::NotPrimary);
        assert!(lessor.due_for_revoke().is_empty());
        lessor.state().primary = true;
        assert_eq!(lessor.renew(7), Renewal::Renewed(0));
        assert_eq!(lessor.renew(8), Renewal::NotFound);
        assert_eq!(lessor.due_for_revoke(), vec![7]);
        // Not proposed again until the retry interval passes.
        assert!(lessor.due_for_revoke().is_empty());
        lessor.on_revoked(7);
        assert!(lessor.time_to_live(7).is_none());
    }

    #[test]
    fn checkpoints_record_long_leases_and_a_renewal_clears_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MvccStore::open(&dir.path().join("kv.redb")).unwrap());
        let interval = Duration::from_millis(50);
        let lessor = Lessor::new(store, Duration::from_secs(1), Duration::from_secs(5), Some(interval));
        lessor.state().primary = true;
        lessor.on_granted(1, 60);
        // Not longer than the interval: never checkpointed, as in etcd.
        lessor.on_granted(2, 0);
        assert!(lessor.due_for_checkpoint().is_empty(), "not due before the interval");
        std::thread::sleep(interval * 2);
        let due = lessor.due_for_checkpoint();
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].id, 1);
        assert!((59..=60).contains(&due[0].remaining_ttl), "{due:?}");
        assert!(
            lessor.due_for_checkpoint().is_empty(),
            "rescheduled a full interval later"
        );
        // The record is there, so a renewal asks for it to be cleared at the next round.
        assert_eq!(lessor.renew(1), Renewal::Renewed(60));
        let cleared = lessor.due_for_checkpoint();
        assert_eq!(
            cleared,
            vec![LeaseCheckpoint {
                id: 1,
                remaining_ttl: 0
            }]
        );
        assert_eq!(lessor.renew(1), Renewal::Renewed(60));
        assert!(
            lessor.due_for_checkpoint().is_empty(),
            "nothing recorded, nothing to clear"
        );
    }

    #[test]
    fn promotion_restarts_deadlines_with_grace() {
        let (_dir, lessor) = lessor();
        lessor.on_granted(1, 10);
        // The store has no leases, so promotion (which trusts the store) forgets it.
        lessor.promote();
        assert!(lessor.is_primary());
        assert!(lessor.time_to_live(1).is_none());
        lessor.on_granted(2, 10);
        let (left, granted) = lessor.time_to_live(2).unwrap();
        assert_eq!(granted, 10);
        assert!((9..=10).contains(&left));
    }
}
