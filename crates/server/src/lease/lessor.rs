//! The lease clock. Leases live in the store (granted and revoked through
//! Raft, so every member agrees on which exist); their deadlines live here,
//! in memory, and only the leader's deadlines count. The leader renews them
//! on keep-alives and proposes a revoke when one passes.
//!
//! When a member becomes leader it restarts every deadline at a full TTL
//! plus an election timeout, as etcd does, so no lease expires because of a
//! failover; leases can outlive their TTL by that much, never fall short.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_proto::concordpb::raft_command::Op;
use concord_proto::etcdserverpb::LeaseRevokeRequest;
use concord_raft::Role;
use concord_storage::MvccStore;

use crate::auth::Sender;
use crate::context::MemberContext;

/// How often the leader looks for expired leases (etcd: 500 ms).
const EXPIRY_CHECK: Duration = Duration::from_millis(500);
/// Most revokes the leader proposes per check.
const REVOKES_PER_CHECK: usize = 500;

struct LeaseClock {
    granted_ttl: i64,
    deadline: Instant,
    /// When a revoke for it was last proposed, so it is not proposed again at once.
    revoking_since: Option<Instant>,
}

#[derive(Default)]
struct LessorState {
    /// True while this member leads and its deadlines are authoritative.
    primary: bool,
    leases: HashMap<i64, LeaseClock>,
}

/// The lease deadlines of one member.
pub struct Lessor {
    store: Arc<MvccStore>,
    state: Mutex<LessorState>,
    /// Added to every deadline on promotion: one election timeout.
    promotion_grace: Duration,
    /// How long an unanswered revoke waits before it is proposed again.
    revoke_retry: Duration,
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
    /// A lessor over the leases in `store`.
    pub fn new(store: Arc<MvccStore>, promotion_grace: Duration, revoke_retry: Duration) -> Arc<Self> {
        Arc::new(Lessor {
            store,
            state: Mutex::new(LessorState::default()),
            promotion_grace,
            revoke_retry,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LessorState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A grant was applied.
    pub fn on_granted(&self, id: i64, ttl: i64) {
        let clock = LeaseClock {
            granted_ttl: ttl,
            deadline: Instant::now() + secs(ttl),
            revoking_since: None,
        };
        self.state().leases.insert(id, clock);
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
        let now = Instant::now();
        let mut state = self.state();
        state.leases = leases
            .into_iter()
            .map(|(id, ttl)| {
                let clock = LeaseClock {
                    granted_ttl: ttl,
                    deadline: now + self.promotion_grace + secs(ttl),
                    revoking_since: None,
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
        match state.leases.get_mut(&id) {
            Some(clock) => {
                clock.deadline = Instant::now() + secs(clock.granted_ttl);
                Renewal::Renewed(clock.granted_ttl)
            }
            None => Renewal::NotFound,
        }
    }

    /// The seconds left on a lease and its granted TTL, as the primary sees them.
    pub fn time_to_live(&self, id: i64) -> Option<(i64, i64)> {
        let state = self.state();
        let clock = state.leases.get(&id)?;
        let left = clock.deadline.saturating_duration_since(Instant::now());
        Some((left.as_secs_f64().ceil() as i64, clock.granted_ttl))
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
            _ = check.tick() => {
                for id in lessor.due_for_revoke() {
                    let (ctx, lessor, group) = (ctx.clone(), lessor.clone(), group.clone());
                    tokio::spawn(async move {
                        let revoke = Op::LeaseRevoke(LeaseRevokeRequest { id });
                        // The member revokes what expired, whoever's keys the lease holds.
                        match ctx.propose_write(&group, &Sender::Member, revoke).await {
                            Ok(_) => tracing::debug!(lease = id, "expired lease revoked"),
                            Err(status) if status.code() == tonic::Code::NotFound => lessor.on_revoked(id),
                            Err(status) => tracing::debug!(lease = id, "revoking expired lease failed: {}", status.message()),
                        }
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lessor() -> (tempfile::TempDir, Arc<Lessor>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MvccStore::open(&dir.path().join("kv.redb")).unwrap());
        (dir, Lessor::new(store, Duration::from_secs(1), Duration::from_secs(5)))
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
