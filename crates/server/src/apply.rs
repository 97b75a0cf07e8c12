//! The state machine a KV group replicates into: decodes each committed
//! `RaftCommand` and applies it to the MVCC store, or to the membership;
//! applies membership changes; builds and installs snapshots.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Weak};

use concord_proto::concordpb::{raft_command::Op, ClusterState, RaftCommand};
use concord_proto::etcdserverpb::Member;
use concord_raft::{
    BuiltSnapshot, Committed, ConfChangeApplied, MemberChangeKind, PeerTransport, SnapshotJob, StateMachine,
};
use concord_storage::{ApplyEntry, KvError, MvccStore, WriteResult};
use prost::Message as _;
use tokio::sync::watch;

use crate::auth::AuthState;
use crate::lease::lessor::Lessor;
use crate::membership::Membership;
use crate::shard_groups::ShardGroups;
use crate::shard_map::ShardPlacement;
use crate::watch::WatchHub;

/// What applying one command produced, handed back to the proposer.
pub enum Applied {
    /// A KV write's response, or etcd's error for it.
    Kv(Result<WriteResult, KvError>),
    /// A membership update took effect.
    Membership,
}

/// Everything a member's state machine updates besides the store.
pub struct Effects {
    /// The cluster's membership.
    pub membership: Arc<Membership>,
    /// Told of each new revision, for watchers.
    pub hub: Arc<WatchHub>,
    /// Told of each lease granted or revoked.
    pub lessor: Arc<Lessor>,
    /// Told of each member added, moved or removed.
    pub transport: Arc<PeerTransport>,
    /// Set when this member is removed from the cluster.
    pub removed: watch::Sender<bool>,
    /// Told of every applied auth change (tokens, the enabled flag and revision).
    pub auth: Arc<AuthState>,
    /// The id of the group applying.
    pub group_id: u64,
    /// Told of every split of this group's shard and (group 1) of every shard a split made.
    pub shards: Weak<ShardGroups>,
}

/// Applies a KV group's log to its store.
pub struct KvStateMachine {
    store: Arc<MvccStore>,
    effects: Effects,
}

impl KvStateMachine {
    /// A state machine over `store` with its side effects.
    pub fn new(store: Arc<MvccStore>, effects: Effects) -> Self {
        KvStateMachine { store, effects }
    }

    /// Updates the membership (and the transport) for a configuration change.
    fn apply_member_change(&self, change: &ConfChangeApplied) -> Result<(), BoxError> {
        let announced = Member::decode(change.context.as_slice()).ok();
        for (kind, id) in &change.changes {
            match kind {
                MemberChangeKind::AddVoter | MemberChangeKind::AddLearner => {
                    let is_learner = *kind == MemberChangeKind::AddLearner;
                    let mut member = match (&announced, self.effects.membership.member(*id)) {
                        (Some(m), _) if m.id == *id => m.clone(),
                        (_, Some(existing)) => existing,
                        _ => Member {
                            id: *id,
                            ..Default::default()
                        },
                    };
                    member.is_learner = is_learner;
                    if let Some(url) = member.peer_ur_ls.first() {
                        self.effects.transport.set_peer(*id, url);
                    }
                    self.effects.membership.upsert(member)?;
                }
                MemberChangeKind::Remove => {
                    self.effects.membership.remove(*id)?;
                    self.effects.transport.remove_peer(*id);
                    if *id == self.effects.membership.local_id() {
                        tracing::warn!("this member was removed from the cluster");
                        self.effects.removed.send_replace(true);
                    }
                }
            }
        }
        Ok(())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl KvStateMachine {
    /// The member's shard groups, which outlive every state machine while the member runs.
    fn shards(&self) -> Result<Arc<ShardGroups>, BoxError> {
        self.effects
            .shards
            .upgrade()
            .ok_or_else(|| "the member's shard groups are gone".into())
    }
}

impl StateMachine for KvStateMachine {
    type Output = Applied;

    fn applied_index(&self) -> u64 {
        self.store.applied_index()
    }

    fn apply(&mut self, entries: &[Committed<'_>]) -> Result<Vec<(usize, Applied)>, BoxError> {
        let applied = self.store.applied_index();
        let mut commands = Vec::with_capacity(entries.len());
        // The position in `entries` of each command the store answers, in its order.
        let mut answered = Vec::with_capacity(entries.len());
        let mut membership_changes = Vec::new();
        let mut revokes = HashMap::new();
        // Entries no member can decode: each is answered with the same error everywhere.
        let mut undecodable = Vec::new();
        for (position, entry) in entries.iter().enumerate() {
            let fresh = entry.index > applied;
            if let Some(change) = &entry.conf_change {
                // A shard's replica changes (`Shards.Move`) are the shard's own: only group 1's
                // configuration is the cluster's membership.
                if fresh && self.effects.group_id == crate::member::FIRST_GROUP_ID {
                    self.apply_member_change(change)?;
                }
                membership_changes.push(position);
            }
            let command = if entry.data.is_empty() {
                None
            } else {
                let cmd = match decode_command(entry) {
                    Ok(cmd) => cmd,
                    Err(refused) => {
                        if fresh {
                            undecodable.push((position, refused));
                        }
                        commands.push((entry.index, None, entry.stamp));
                        continue;
                    }
                };
                // A client's command may come in an envelope naming its sender; what matters
                // here is the command inside.
                let inner = concord_storage::open_envelope(&cmd).0.and_then(|c| c.op.as_ref());
                if fresh {
                    count_kv_op(inner);
                }
                let revoked = match inner {
                    Some(Op::LeaseRevoke(revoke)) => Some(revoke.id),
                    _ => None,
                };
                if let Some(id) = revoked {
                    revokes.insert(position, id);
                }
                match cmd.op {
                    Some(Op::PublishMember(member)) => {
                        if fresh {
                            self.effects.membership.publish(&member)?;
                        }
                        membership_changes.push(position);
                        None
                    }
                    Some(Op::RecordShard(record)) => {
                        if fresh {
                            let placement = ShardPlacement {
                                group: record.group,
                                start: record.start,
                                replicas: record.replicas,
                            };
                            self.shards()?.on_recorded(placement, &record.joining)?;
                        }
                        membership_changes.push(position);
                        None
                    }
                    Some(Op::UpdateMember(member)) => {
                        if fresh {
                            if let Some(url) = member.peer_ur_ls.first() {
                                self.effects.transport.set_peer(member.id, url);
                            }
                            self.effects.membership.update_peer_urls(member.id, member.peer_ur_ls)?;
                        }
                        membership_changes.push(position);
                        None
                    }
                    _ => Some(cmd),
                }
            };
            if fresh && command.is_some() {
                answered.push(position);
            }
            commands.push((entry.index, command, entry.stamp));
        }
        let batch: Vec<ApplyEntry<'_>> = commands
            .iter()
            .map(|(index, command, stamp)| ApplyEntry {
                index: *index,
                command: command.as_ref(),
                stamp: *stamp,
            })
            .collect();
        let started = std::time::Instant::now();
        let results = self.store.apply(&batch)?;
        if results.len() != answered.len() {
            return Err(format!("the store answered {} of {} commands", results.len(), answered.len()).into());
        }
        let results: Vec<(usize, Result<WriteResult, KvError>)> = answered
            .into_iter()
            .zip(results)
            .map(|(position, (_, result))| (position, result))
            .collect();
        crate::metrics::BACKEND_COMMIT_SECONDS.observe(started.elapsed().as_secs_f64());
        // Auth changes take effect in memory before the Raft driver reports these entries
        // applied, so a read that passed a ReadIndex barrier sees them.
        let mut auth_changed = false;
        for (_, result) in &results {
            if let Ok(WriteResult::Auth(applied)) = result {
                self.effects.auth.on_applied(&applied.effect);
                auth_changed = true;
            }
        }
        if auth_changed {
            self.effects.auth.refresh();
        }
        // A split's child group starts before the split (and anything after it) is answered.
        for (_, result) in &results {
            if let Ok(WriteResult::ShardSplit(split)) = result {
                self.shards()?.on_split(self.effects.group_id, split)?;
            }
        }
        self.effects.hub.notify_applied(self.store.current_revision());
        // The lessor keeps group 1's leases; the other shards' copies only answer puts.
        let keeps_leases = self.effects.group_id == crate::member::FIRST_GROUP_ID;
        for (position, result) in results.iter().filter(|_| keeps_leases) {
            match result {
                Ok(WriteResult::CrossShard(outcome)) if outcome.revoked_lease != 0 => {
                    self.effects.lessor.on_revoked(outcome.revoked_lease)
                }
                Ok(WriteResult::LeaseGrant(grant)) => self.effects.lessor.on_granted(grant.id, grant.ttl),
                Ok(WriteResult::LeaseCheckpoint(_)) => self.effects.lessor.on_checkpointed(),
                Ok(WriteResult::LeaseRevoke(_)) | Err(KvError::LeaseNotFound) => {
                    if let Some(id) = revokes.get(position) {
                        self.effects.lessor.on_revoked(*id);
                    }
                }
                _ => {}
            }
        }
        let mut outputs: Vec<(usize, Applied)> = results
            .into_iter()
            .map(|(position, result)| (position, Applied::Kv(result)))
            .collect();
        outputs.extend(
            membership_changes
                .into_iter()
                .map(|position| (position, Applied::Membership)),
        );
        outputs.extend(
            undecodable
                .into_iter()
                .map(|(position, refused)| (position, Applied::Kv(Err(refused)))),
        );
        Ok(outputs)
    }

    fn sync(&mut self) -> Result<(), BoxError> {
        Ok(self.store.sync()?)
    }

    fn durable_index(&self) -> u64 {
        self.store.durable_applied_index()
    }

    fn snapshot_job(&self) -> SnapshotJob {
        let store = self.store.clone();
        let membership = self.effects.membership.clone();
        Box::new(move |path: &Path| {
            let info = store.write_snapshot(path)?;
            // The membership travels beside the data, so a member that
            // installs the snapshot knows every peer.
            let mut state = membership.state();
            state.local_member_id = 0;
            Ok(BuiltSnapshot {
                applied_index: info.applied_index,
                path: path.to_path_buf(),
                app_data: state.encode_to_vec(),
            })
        })
    }

    fn install_snapshot(&mut self, path: &Path, app_data: &[u8]) -> Result<(), BoxError> {
        self.store.install_snapshot(path)?;
        let state = ClusterState::decode(app_data)?;
        for member in &state.members {
            if let Some(url) = member.peer_ur_ls.first() {
                self.effects.transport.set_peer(member.id, url);
            }
        }
        if self.effects.group_id == crate::member::FIRST_GROUP_ID {
            self.effects.membership.replace_members(state)?;
        }
        self.shards()?
            .on_snapshot_installed(self.effects.group_id, &self.store)?;
        self.effects.auth.on_snapshot_installed();
        self.effects.hub.notify_applied(self.store.current_revision());
        Ok(())
    }
}

/// Decodes a committed entry's command. An entry that does not decode (one an older build let
/// into the log past the decoder's nesting limit, say) is not a fault of this member: every member
/// reads the same bytes and reaches the same error, so apply answers it with that error and goes
/// on, and a log that holds such an entry heals on upgrade instead of stopping every member.
fn decode_command(entry: &Committed<'_>) -> Result<RaftCommand, KvError> {
    RaftCommand::decode(entry.data).map_err(|e| {
        tracing::warn!(
            index = entry.index,
            "a committed entry cannot be decoded; it is applied as an error: {e}"
        );
        KvError::Undecodable
    })
}

/// Counts a client's write in etcd's `etcd_mvcc_*_total` metrics as it is applied.
fn count_kv_op(op: Option<&Op>) {
    match op {
        Some(Op::Put(_)) => crate::metrics::MVCC_PUTS.inc(),
        Some(Op::DeleteRange(_)) => crate::metrics::MVCC_DELETES.inc(),
        Some(Op::Txn(_)) => crate::metrics::MVCC_TXNS.inc(),
        _ => {}
    }
}
