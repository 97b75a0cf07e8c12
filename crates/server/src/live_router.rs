//! The member's router as it changes: a split replaces it, and requests routed by the one before
//! are refused by the shard they reached and routed again ([`LiveRouter::changed_since`] waits
//! for the replacement). Group 1 itself never changes (a split only narrows its range), so what
//! needs only group 1 reads it without a lock.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::router::{GroupHandle, KeyRouter};

/// The current [`KeyRouter`], with group 1 beside it.
pub struct LiveRouter {
    first: GroupHandle,
    current: RwLock<Arc<KeyRouter>>,
    version: watch::Sender<u64>,
}

impl LiveRouter {
    /// A router starting as `initial`, whose first shard's group is `first` (group 1).
    pub fn new(first: GroupHandle, initial: KeyRouter) -> Self {
        LiveRouter {
            first,
            current: RwLock::new(Arc::new(initial)),
            version: watch::channel(0).0,
        }
    }

    /// Group 1: it holds the cluster's metadata (membership, leases, auth, alarms) besides the
    /// first shard's keys, and its state answers cluster-wide questions (revision, term).
    pub fn default_group(&self) -> &GroupHandle {
        &self.first
    }

    /// The router as it is now.
    pub fn current(&self) -> Arc<KeyRouter> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many times the router was replaced: read it before routing, to wait for the next
    /// replacement when the route turns out stale.
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Tells of every replacement.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Makes `router` the current one.
    pub fn replace(&self, router: KeyRouter) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(router);
        self.version.send_modify(|v| *v += 1);
    }

    /// Whether the keyspace is split into several shards.
    pub fn is_sharded(&self) -> bool {
        self.current().is_sharded()
    }

    /// Every group this member serves.
    pub fn groups(&self) -> Vec<GroupHandle> {
        self.current().groups().cloned().collect()
    }

    /// Waits, at most `timeout`, until every group here that is still electing its first leader
    /// (one a split just made) has one; false when there is none such, or it took too long.
    pub async fn first_leaders_elected(&self, timeout: Duration) -> bool {
        let newborn: Vec<GroupHandle> = self.groups().into_iter().filter(|g| g.is_newborn()).collect();
        if newborn.is_empty() {
            return false;
        }
        let elected = newborn.into_iter().map(|group| async move {
            let mut leader = group.watch_leader();
            let elected = leader.wait_for(|l| *l != 0).await.is_ok();
            elected
        });
        tokio::time::timeout(timeout, futures::future::join_all(elected))
            .await
            .is_ok_and(|all| all.into_iter().all(|ok| ok))
    }

    /// Waits, at most `timeout`, until the router is newer than `version`; whether it is.
    pub async fn changed_since(&self, version: u64, timeout: Duration) -> bool {
        let mut changes = self.version.subscribe();
        tokio::time::timeout(timeout, changes.wait_for(|v| *v > version))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}
