//! The groups of the shards after the first (multi-shard mode): each with its own store
//! (`member/shard-<group>.redb`), snapshots (`member/snap/shard-<group>/`), watch hub and driver
//! thread, its log in the member's one raft-engine instance, and its writes stamped with
//! revisions from the oracle. Group 1, started by `member.rs`, holds the first shard and the
//! cluster's metadata.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use concord_raft::{start_group, GroupConfig, PeerTransport, RevisionSource};
use concord_storage::MvccStore;

use crate::apply::{Effects, KvStateMachine};
use crate::router::{GroupHandle, KeyRouter, RemoteShard, Shard};
use crate::shard_map::ShardPlacement;
use crate::watch::WatchHub;

/// The running groups of the shards after the first that this member holds, and their driver
/// threads, with the shards it does not hold.
pub struct ShardGroups {
    /// The shards held here, ascending by start key.
    pub shards: Vec<Shard>,
    /// The shards held elsewhere.
    pub remote: Vec<RemoteShard>,
    threads: Vec<JoinHandle<()>>,
}

impl ShardGroups {
    /// Starts a group for each shard after the first that has a replica on this member:
    /// `placements[i]` is group `i + 2`. `first` is group 1's configuration (its sealer also seals the shards' stores); `effects` makes a state machine's side effects for a
    /// shard's watch hub.
    pub fn start(
        placements: &[ShardPlacement],
        first: &GroupConfig,
        member_dir: &Path,
        engine: &Arc<concord_raft::LogEngine>,
        transport: &Arc<PeerTransport>,
        revisions: Arc<dyn RevisionSource>,
        effects: impl Fn(Arc<WatchHub>) -> Effects,
    ) -> Result<ShardGroups, String> {
        let mut started = ShardGroups {
            shards: Vec::new(),
            remote: Vec::new(),
            threads: Vec::new(),
        };
        for (i, placement) in placements.iter().enumerate() {
            let group_id = i as u64 + 2;
            let start = &placement.start;
            let end = placements.get(i + 1).map(|p| p.start.clone()).unwrap_or_default();
            if !placement.replicas.contains(&first.member_id) {
                started.remote.push(RemoteShard {
                    start: start.clone(),
                    end,
                    group_id,
                    replicas: placement.replicas.clone(),
                });
                continue;
            }
            let path = member_dir.join(format!("shard-{group_id}.redb"));
            let store = Arc::new(
                MvccStore::open_with(&path, first.sealer.clone()).map_err(|e| format!("{}: {e}", path.display()))?,
            );
            let hub = WatchHub::new(store.clone());
            tokio::spawn(hub.clone().run());
            let cfg = GroupConfig {
                group_id,
                // A founding member starts the shard's group with its replicas as voters.
                initial_voters: match first.initial_voters.is_empty() {
                    true => Vec::new(),
                    false => placement.replicas.clone(),
                },
                snapshot_dir: first.snapshot_dir.join(format!("shard-{group_id}")),
                ..first.clone()
            };
            let machine = KvStateMachine::new(store.clone(), effects(hub.clone()));
            let (group, thread) =
                start_group(cfg, engine.clone(), machine, transport.clone()).map_err(|e| e.to_string())?;
            transport.register_group(group_id, Arc::new(group.clone()));
            group.stamp_with(revisions.clone());
            started.threads.push(thread);
            started.shards.push(Shard {
                start: start.clone(),
                end,
                group,
                store,
                hub,
            });
        }
        Ok(started)
    }

    /// The member's router: group 1's shard (`group`, `store`, `hub`), from the empty key to the
    /// first of these, then these.
    pub fn router(&self, group: GroupHandle, store: Arc<MvccStore>, hub: Arc<WatchHub>) -> KeyRouter {
        let end = self
            .shards
            .iter()
            .map(|s| &s.start)
            .chain(self.remote.iter().map(|s| &s.start))
            .min()
            .cloned()
            .unwrap_or_default();
        let first = Shard {
            start: Vec::new(),
            end,
            group,
            store,
            hub,
        };
        let shards = std::iter::once(first).chain(self.shards.iter().cloned()).collect();
        KeyRouter::new(shards, self.remote.clone())
    }

    /// Resolves, with the reason, once any of these groups has stopped on a fault of this
    /// member's storage (as group 1's `RaftHandle::failed`); never while there are none.
    pub async fn failed(&self) -> String {
        if self.shards.is_empty() {
            return std::future::pending().await;
        }
        let faults = self.shards.iter().map(|s| {
            let group = s.group.clone();
            Box::pin(async move { format!("shard {}: {}", group.group_id(), group.failed().await) })
        });
        futures::future::select_all(faults).await.0
    }

    /// Stops every group and waits for its driver to finish.
    pub async fn stop(self) {
        for shard in &self.shards {
            shard.group.stop();
        }
        for thread in self.threads {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}
