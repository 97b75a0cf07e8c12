//! The state machine a KV group replicates into: decodes each committed
//! `RaftCommand` and applies it to the MVCC store, or to the membership.

use std::sync::Arc;

use concord_proto::concordpb::{raft_command::Op, RaftCommand};
use concord_raft::{Committed, StateMachine};
use concord_storage::{ApplyEntry, KvError, MvccStore, WriteResult};
use prost::Message as _;

use crate::lease::lessor::Lessor;
use crate::membership::Membership;
use crate::watch::WatchHub;

/// What applying one command produced, handed back to the proposer.
pub enum Applied {
    /// A KV write's response, or etcd's error for it.
    Kv(Result<WriteResult, KvError>),
    /// A membership update took effect.
    Membership,
}

/// Applies a KV group's log to its store.
pub struct KvStateMachine {
    store: Arc<MvccStore>,
    membership: Arc<Membership>,
    hub: Arc<WatchHub>,
    lessor: Arc<Lessor>,
}

impl KvStateMachine {
    /// A state machine over `store`, updating `membership` on publish
    /// entries, telling `hub` of each new revision and `lessor` of each
    /// lease granted or revoked.
    pub fn new(
        store: Arc<MvccStore>,
        membership: Arc<Membership>,
        hub: Arc<WatchHub>,
        lessor: Arc<Lessor>,
    ) -> Self {
        KvStateMachine { store, membership, hub, lessor }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl StateMachine for KvStateMachine {
    type Output = Applied;

    fn applied_index(&self) -> u64 {
        self.store.applied_index()
    }

    fn apply(&mut self, entries: &[Committed<'_>]) -> Result<Vec<(u64, Applied)>, BoxError> {
        let applied = self.store.applied_index();
        let mut commands = Vec::with_capacity(entries.len());
        let mut published = Vec::new();
        let mut revokes = std::collections::HashMap::new();
        for entry in entries {
            let command = if entry.data.is_empty() {
                None
            } else {
                let cmd = RaftCommand::decode(entry.data)
                    .map_err(|e| format!("undecodable entry at index {}: {e}", entry.index))?;
                match cmd.op {
                    Some(Op::PublishMember(member)) => {
                        if entry.index > applied {
                            self.membership.publish(&member)?;
                            published.push(entry.index);
                        }
                        None
                    }
                    Some(Op::LeaseRevoke(ref revoke)) => {
                        revokes.insert(entry.index, revoke.id);
                        Some(cmd)
                    }
                    _ => Some(cmd),
                }
            };
            commands.push((entry.index, command));
        }
        let batch: Vec<ApplyEntry<'_>> = commands
            .iter()
            .map(|(index, command)| ApplyEntry {
                index: *index,
                command: command.as_ref(),
            })
            .collect();
        let results = self.store.apply(&batch)?;
        self.hub.notify_applied(self.store.current_revision());
        for (index, result) in &results {
            match result {
                Ok(WriteResult::LeaseGrant(grant)) => self.lessor.on_granted(grant.id, grant.ttl),
                Ok(WriteResult::LeaseRevoke(_)) | Err(KvError::LeaseNotFound) => {
                    if let Some(id) = revokes.get(index) {
                        self.lessor.on_revoked(*id);
                    }
                }
                _ => {}
            }
        }
        let mut outputs: Vec<(u64, Applied)> = results
            .into_iter()
            .map(|(index, result)| (index, Applied::Kv(result)))
            .collect();
        outputs.extend(published.into_iter().map(|index| (index, Applied::Membership)));
        Ok(outputs)
    }

    fn sync(&mut self) -> Result<(), BoxError> {
        Ok(self.store.sync()?)
    }
}
