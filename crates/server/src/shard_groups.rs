//! The groups of the shards after the first (multi-shard mode): each with its own store
//! (`member/shard-<group>.redb`), snapshots (`member/snap/shard-<group>/`), watch hub and driver
//! thread, its log in the member's one raft-engine instance, and its writes stamped with
//! revisions from the oracle. Group 1, started by `member.rs`, holds the first shard and the
//! cluster's metadata.
//!
//! The set changes when a shard this member holds is split: the splitting group's state machine
//! reports the split ([`ShardGroups::on_split`]) on its driver thread, after the child's store is
//! written and before the split entry is answered, and the child's group starts here on the same
//! members, so a request refused by the parent for a moved key finds the child in the router.
//! Members that hold no replica learn of the child from group 1 ([`ShardGroups::on_recorded`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use concord_proto::concordpb::SplitShardResponse;
use concord_raft::{start_group, GroupConfig, PeerTransport, RevisionSource};
use concord_storage::{MvccStore, SplitChild};

use crate::apply::{Effects, KvStateMachine};
use crate::live_router::LiveRouter;
use crate::membership::Membership;
use crate::router::{KeyRouter, RemoteShard, Shard};
use crate::shard_map::ShardPlacement;
use crate::watch::WatchHub;

/// Makes the state machine effects of group `id` with its watch hub.
pub type EffectsFactory = Box<dyn Fn(u64, Arc<WatchHub>) -> Effects + Send + Sync>;

/// What starting a shard's group takes, known once group 1 and the oracle run.
pub struct GroupStarter {
    /// Group 1's configuration, the template of every shard's (its sealer also seals the
    /// shards' stores).
    pub first: GroupConfig,
    /// The member's raft-engine instance, which holds every group's log.
    pub engine: Arc<concord_raft::LogEngine>,
    /// The member's peer transport.
    pub transport: Arc<PeerTransport>,
    /// Stamps every shard's writes.
    pub revisions: Arc<dyn RevisionSource>,
    /// A shard's state machine effects.
    pub effects: EffectsFactory,
    /// Group 1's shard: the router's first.
    pub first_shard: Shard,
    /// Where the watch hubs run.
    pub runtime: tokio::runtime::Handle,
}

/// The running groups of the shards after the first that this member holds, the map of every
/// shard, and the member's router over them.
pub struct ShardGroups {
    member_dir: PathBuf,
    membership: Arc<Membership>,
    /// Told whenever a group starts, for [`failed`](Self::failed).
    started: tokio::sync::Notify,
    state: Mutex<State>,
    starter: OnceLock<GroupStarter>,
    router: OnceLock<Arc<LiveRouter>>,
}

struct State {
    /// Every shard after the first, ascending by start key.
    placements: Vec<ShardPlacement>,
    /// The shards held and started here, by group id.
    local: BTreeMap<u64, Shard>,
    threads: BTreeMap<u64, JoinHandle<()>>,
    /// Splits applied before the groups could be started (while group 1 replays its log at
    /// start): the parent's replicas and what the split did.
    pending: Vec<(Vec<u64>, SplitShardResponse)>,
}

impl ShardGroups {
    /// The shards of `placements`, none started yet: [`start`](Self::start) starts them once
    /// group 1 runs. Exists before group 1 starts, since group 1 may apply a split at once.
    pub fn new(member_dir: PathBuf, placements: Vec<ShardPlacement>, membership: Arc<Membership>) -> Arc<ShardGroups> {
        Arc::new(ShardGroups {
            member_dir,
            membership,
            started: tokio::sync::Notify::new(),
            state: Mutex::new(State {
                placements,
                local: BTreeMap::new(),
                threads: BTreeMap::new(),
                pending: Vec::new(),
            }),
            starter: OnceLock::new(),
            router: OnceLock::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a group for each shard that has a replica on this member, then those of the splits
    /// group 1 applied meanwhile, and returns the member's router.
    pub fn start(&self, starter: GroupStarter) -> Result<Arc<LiveRouter>, String> {
        let first = starter.first_shard.group.clone();
        if self.starter.set(starter).is_err() {
            return Err("the shard groups were started twice".into());
        }
        let mut state = self.state();
        let me = self.starter().first.member_id;
        let held: Vec<ShardPlacement> = state
            .placements
            .iter()
            .filter(|p| p.replicas.contains(&me))
            .cloned()
            .collect();
        for placement in &held {
            self.start_group(&mut state, placement, false)?;
        }
        self.adopt_unrecorded_children(&mut state)?;
        for (replicas, split) in std::mem::take(&mut state.pending) {
            self.add_child(&mut state, replicas, &split)?;
        }
        let router = Arc::new(LiveRouter::new(first, self.build_router(&state)));
        let _ = self.router.set(router.clone());
        Ok(router)
    }

    fn starter(&self) -> &GroupStarter {
        self.starter.get().expect("the shard groups are started")
    }

    /// Starts the group of `placement`'s shard on this member: with its replicas as voters when
    /// its log is new (every replica starts it alike, with the same store), as static shards and
    /// split children are; or, when `join` (or once told to join), with none, waiting for the
    /// leader's snapshot: this member missed the split that made the shard (it installed a
    /// snapshot of the parent taken after it), so it has no copy of the shard's keys.
    fn start_group(&self, state: &mut State, placement: &ShardPlacement, join: bool) -> Result<(), String> {
        let starter = self.starter();
        let group_id = placement.group;
        if state.local.contains_key(&group_id) {
            return Ok(());
        }
        // A split starts the group on its parent's driver thread, outside the runtime.
        let _runtime = starter.runtime.enter();
        let marker = self.member_dir.join(format!("shard-{group_id}.joining"));
        if join {
            std::fs::write(&marker, b"")
                .and_then(|()| std::fs::File::open(&self.member_dir)?.sync_all())
                .map_err(|e| format!("{}: {e}", marker.display()))?;
        }
        let initial_voters = match marker.exists() {
            true => Vec::new(),
            false => placement.replicas.clone(),
        };
        let path = concord_storage::shard_store_path(&self.member_dir, group_id);
        let store = Arc::new(
            MvccStore::open_with(&path, starter.first.sealer.clone())
                .map_err(|e| format!("{}: {e}", path.display()))?,
        );
        let hub = WatchHub::for_shard(store.clone());
        starter.runtime.spawn(hub.clone().run());
        let cfg = GroupConfig {
            group_id,
            initial_voters,
            snapshot_dir: starter.first.snapshot_dir.join(format!("shard-{group_id}")),
            // An idle shard costs nothing while its group does not tick.
            hibernate: true,
            ..starter.first.clone()
        };
        let machine = KvStateMachine::new(store.clone(), (starter.effects)(group_id, hub.clone()));
        let (group, thread) =
            start_group(cfg, starter.engine.clone(), machine, starter.transport.clone()).map_err(|e| e.to_string())?;
        starter.transport.register_group(group_id, Arc::new(group.clone()));
        group.stamp_with(starter.revisions.clone());
        state.threads.insert(group_id, thread);
        self.started.notify_waiters();
        state.local.insert(
            group_id,
            Shard {
                start: placement.start.clone(),
                end: Vec::new(),
                group,
                store,
                hub,
            },
        );
        Ok(())
    }

    /// Starts the groups of the children that the stores held here split off and that do not
    /// run here: after a crash between a split's commit and the map's update, or a snapshot of
    /// the parent that was taken after the split.
    fn adopt_unrecorded_children(&self, state: &mut State) -> Result<(), String> {
        let first = &self.starter().first_shard;
        let mut parents: Vec<(u64, Arc<MvccStore>)> = vec![(first.group.group_id(), first.store.clone())];
        parents.extend(state.local.iter().map(|(id, s)| (*id, s.store.clone())));
        while let Some((parent, store)) = parents.pop() {
            for child in store.split_children().map_err(|e| e.to_string())? {
                if self.adopt_child(state, parent, child.clone())? {
                    parents.push((child.group, state.local[&child.group].store.clone()));
                }
            }
        }
        Ok(())
    }

    /// Starts the group of `child`, split off group `parent`, when this member holds a replica
    /// and it does not run yet; whether it started it. The child's store came from applying the
    /// split when its file holds the child's range; else this member joins its group empty.
    fn adopt_child(&self, state: &mut State, parent: u64, child: SplitChild) -> Result<bool, String> {
        if state.local.contains_key(&child.group) {
            return Ok(false);
        }
        let replicas = match state.placements.iter().find(|p| p.group == child.group) {
            Some(known) => known.replicas.clone(),
            None => self.replicas_of(state, parent),
        };
        if !replicas.contains(&self.starter().first.member_id) {
            return Ok(false);
        }
        let placement = ShardPlacement {
            group: child.group,
            start: child.start,
            replicas,
        };
        if !state.placements.iter().any(|p| p.group == placement.group) {
            state.placements.push(placement.clone());
            state.placements.sort_by(|a, b| a.start.cmp(&b.start));
            crate::shard_map::save(&self.member_dir, &state.placements)?;
        }
        let join = !self.made_by_split(&placement)?;
        tracing::warn!(
            group = placement.group,
            join,
            "starting the group of a shard split off unseen"
        );
        self.start_group(state, &placement, join)?;
        Ok(true)
    }

    /// Whether this member's store file of `placement`'s shard is the one applying the split
    /// wrote (it records the shard's start), not missing or empty.
    fn made_by_split(&self, placement: &ShardPlacement) -> Result<bool, String> {
        let path = concord_storage::shard_store_path(&self.member_dir, placement.group);
        if !path.exists() {
            return Ok(false);
        }
        let store = MvccStore::open_with(&path, self.starter().first.sealer.clone())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(store.key_range().start == placement.start)
    }

    /// The replicas of group `group`'s shard: per the map, and for group 1 every voting member
    /// (as of the applied membership: a split applies at the same point of group 1's log on
    /// every member, so all agree).
    fn replicas_of(&self, state: &State, group: u64) -> Vec<u64> {
        match state.placements.iter().find(|p| p.group == group) {
            Some(placement) => placement.replicas.clone(),
            None => self.membership.voter_ids(),
        }
    }

    /// A shard this member holds was split (group `parent`'s state machine applied the split):
    /// records the child, starts its group on the parent's replicas and routes its keys to it.
    pub fn on_split(&self, parent: u64, split: &SplitShardResponse) -> Result<(), String> {
        let mut state = self.state();
        let replicas = self.replicas_of(&state, parent);
        if self.starter.get().is_none() {
            state.pending.push((replicas, split.clone()));
            return Ok(());
        }
        self.add_child(&mut state, replicas, split)?;
        self.campaign_child(&state, parent, split);
        self.reroute(&state);
        Ok(())
    }

    fn add_child(&self, state: &mut State, replicas: Vec<u64>, split: &SplitShardResponse) -> Result<(), String> {
        let placement = ShardPlacement {
            group: split.child_group,
            start: split.start.clone(),
            replicas,
        };
        if !state.placements.iter().any(|p| p.group == placement.group) {
            state.placements.push(placement.clone());
            state.placements.sort_by(|a, b| a.start.cmp(&b.start));
            crate::shard_map::save(&self.member_dir, &state.placements)?;
        }
        tracing::info!(
            group = placement.group,
            start = %String::from_utf8_lossy(&placement.start),
            "starting the group of a shard split off"
        );
        self.start_group(state, &placement, false)
    }

    /// On the replica the split names (else the member leading the split shard): has the
    /// child's group elect it as its first leader now rather than after an election timeout.
    /// The other replicas start the group as they apply the split, a little after this member
    /// may have, and drop its votes until then: so it asks again each tick, for a few election
    /// timeouts at most.
    fn campaign_child(&self, state: &State, parent: u64, split: &SplitShardResponse) {
        let starter = self.starter();
        let parent = match state.local.get(&parent) {
            Some(shard) => shard.group.clone(),
            None => starter.first_shard.group.clone(),
        };
        let Some(child) = state.local.get(&split.child_group).map(|s| s.group.clone()) else {
            return;
        };
        let me = starter.first.member_id;
        let chosen = match split.first_leader {
            0 => parent.leader_id() == me,
            first => first == me,
        };
        if !chosen {
            return;
        }
        let tick = starter.first.tick_interval;
        let attempts = 3 * starter.first.election_ticks;
        starter.runtime.spawn(async move {
            for _ in 0..attempts {
                if child.leader_id() != 0 || child.campaign().is_err() {
                    return;
                }
                tokio::time::sleep(tick).await;
            }
        });
    }

    /// Group `parent`'s store was replaced by a snapshot: the splits it made that this member did
    /// not apply get their groups here, joining (the leader's snapshot brings their keys).
    pub fn on_snapshot_installed(&self, parent: u64, store: &MvccStore) -> Result<(), String> {
        let children = store.split_children().map_err(|e| e.to_string())?;
        let mut state = self.state();
        if self.starter.get().is_none() {
            // `start` adopts them.
            return Ok(());
        }
        let mut changed = false;
        for child in children {
            changed |= self.adopt_child(&mut state, parent, child)?;
        }
        if changed {
            self.reroute(&state);
        }
        Ok(())
    }

    /// Group 1 told every member where a shard is: after a split, a member holding none of its
    /// replicas adds it to its map and routes its keys to those that do; during a move, the
    /// members in `joining` start its group empty (the leader's snapshot brings its keys), and
    /// those no longer among its replicas stop theirs and forget it. A member holding a replica
    /// of a new shard records it only on applying the split (or a snapshot after it), so that the
    /// map never names a shard it holds without its store.
    pub fn on_recorded(&self, placement: ShardPlacement, joining: &[u64]) -> Result<(), String> {
        let mut state = self.state();
        let me = self.membership.local_id();
        let known = state.placements.iter().position(|p| p.group == placement.group);
        match known {
            None if placement.replicas.contains(&me) && !joining.contains(&me) => return Ok(()),
            None => state.placements.push(placement.clone()),
            Some(i) => state.placements[i].replicas = placement.replicas.clone(),
        }
        state.placements.sort_by(|a, b| a.start.cmp(&b.start));
        crate::shard_map::save(&self.member_dir, &state.placements)?;
        if self.starter.get().is_some() {
            if joining.contains(&me) {
                self.start_group(&mut state, &placement, true)?;
            } else if !placement.replicas.is_empty() && !placement.replicas.contains(&me) {
                self.drop_group(&mut state, placement.group)?;
            }
        }
        self.reroute(&state);
        Ok(())
    }

    /// Stops this member's replica of group `group_id`, if it has one, and forgets it: its log
    /// in raft-engine, its store and its snapshots, once its driver has finished.
    fn drop_group(&self, state: &mut State, group_id: u64) -> Result<(), String> {
        let Some(shard) = state.local.remove(&group_id) else {
            return Ok(());
        };
        let starter = self.starter();
        tracing::info!(
            group = group_id,
            "this member no longer holds the shard: dropping its replica"
        );
        shard.group.stop();
        shard.hub.stop();
        starter.transport.unregister_group(group_id);
        let thread = state.threads.remove(&group_id);
        let engine = starter.engine.clone();
        let store = concord_storage::shard_store_path(&self.member_dir, group_id);
        let snapshots = starter.first.snapshot_dir.join(format!("shard-{group_id}"));
        let marker = self.member_dir.join(format!("shard-{group_id}.joining"));
        drop(shard);
        starter.runtime.spawn_blocking(move || {
            if let Some(thread) = thread {
                let _ = thread.join();
            }
            if let Err(e) = concord_raft::log_store::LogStore::forget_group(&engine, group_id) {
                tracing::warn!(group = group_id, "cannot forget the dropped shard's log: {e}");
            }
            for file in [store, marker] {
                let _ = std::fs::remove_file(file);
            }
            let _ = std::fs::remove_dir_all(snapshots);
        });
        Ok(())
    }

    /// The map of every shard after the first.
    pub fn placements(&self) -> Vec<ShardPlacement> {
        self.state().placements.clone()
    }

    fn reroute(&self, state: &State) {
        if let Some(router) = self.router.get() {
            router.replace(self.build_router(state));
        }
    }

    /// The router over the map: group 1's shard from the empty key to the first start, then each
    /// shard up to the next start, served here when its group runs here.
    fn build_router(&self, state: &State) -> KeyRouter {
        let starts: Vec<&[u8]> = state.placements.iter().map(|p| p.start.as_slice()).collect();
        let end_of = |i: usize| starts.get(i + 1).map(|s| s.to_vec()).unwrap_or_default();
        let mut first = self.starter().first_shard.clone();
        first.end = starts.first().map(|s| s.to_vec()).unwrap_or_default();
        let mut local = vec![first];
        let mut remote = Vec::new();
        for (i, placement) in state.placements.iter().enumerate() {
            match state.local.get(&placement.group) {
                Some(shard) => local.push(Shard {
                    start: placement.start.clone(),
                    end: end_of(i),
                    ..shard.clone()
                }),
                None => remote.push(RemoteShard {
                    start: placement.start.clone(),
                    end: end_of(i),
                    group_id: placement.group,
                    replicas: placement.replicas.clone(),
                }),
            }
        }
        KeyRouter::new(local, remote)
    }

    /// Resolves, with the reason, once any of these groups (those started later too) has
    /// stopped on a fault of this member's storage (as group 1's `RaftHandle::failed`).
    pub async fn failed(&self) -> String {
        loop {
            let started = self.started.notified();
            let groups: Vec<_> = self.state().local.values().map(|s| s.group.clone()).collect();
            let faults = groups
                .into_iter()
                .map(|group| Box::pin(async move { format!("shard {}: {}", group.group_id(), group.failed().await) }));
            let any_fault = async move {
                match faults.len() {
                    0 => std::future::pending().await,
                    _ => futures::future::select_all(faults).await.0,
                }
            };
            tokio::select! {
                reason = any_fault => return reason,
                () = started => continue,
            }
        }
    }

    /// Stops every group and waits for its driver to finish.
    pub async fn stop(&self) {
        let (groups, threads) = {
            let mut state = self.state();
            let groups: Vec<_> = state.local.values().map(|s| s.group.clone()).collect();
            (groups, std::mem::take(&mut state.threads))
        };
        for group in &groups {
            group.stop();
        }
        for thread in threads.into_values() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}
