//! etcd's `--force-new-cluster`: a member restarts on its own log as the only voter of its
//! group, the recovery path after a quorum is lost for good.
//!
//! # What happens, and why this way
//!
//! [`force_new_cluster`] runs on the group's log before the `RawNode` exists. It does not edit
//! the persisted configuration (`ConfState`) in place; instead it appends ordinary configuration
//! change entries after the last entry of the log, one `RemoveNode` per other member (and an
//! `AddNode` for this member first when it is a learner, so the group never has zero voters in
//! between), and sets the hard state's commit index to the new last index. raft-rs then hands
//! every entry from the applied index on to the driver as committed, and the driver applies the
//! appended changes the way it applies any other: raft-rs's `apply_conf_change` shrinks the
//! configuration, the log store persists it, and the state machine drops the members from the
//! membership (`member/cluster.pb`) and the transport. Nothing about membership is written twice
//! by hand, and the result is the same on disk as if the removals had been proposed.
//!
//! Appending after every existing entry (as etcd does) is what makes it sound: a configuration
//! change still waiting in the log (say, an `AddNode` not yet applied) is applied first, and the
//! removals computed over it (see [`members_after_log`]) undo it. Rewriting the `ConfState`
//! alone would be undone by such an entry.
//!
//! # Where it differs from etcd
//!
//! etcd first discards the entries past the commit index its WAL recorded, then commits the
//! rest. Concord commits every entry in the log: a follower learns the commit index only with
//! the leader's next message and persists it lazily, so an entry that a quorum held (and whose
//! write was acknowledged) may sit past this member's recorded commit index; discarding it would
//! lose an acknowledged write. An entry that was never committed may thus become committed, which
//! is a possible outcome for any write whose client saw no answer.
//!
//! # Restarting with the flag again
//!
//! The members are computed from the log, so once the appended changes are in the log (applied
//! or not), the group has one voter and nothing more is appended: a second start with the flag
//! changes nothing but the log line.

use std::collections::BTreeMap;
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeTransition, ConfChangeType, ConfChangeV2, Entry, EntryType};
use raft::{GetEntriesContext, Storage};
/// The engine holding every group's log (as [`crate::log_store::open_engine`] opens it), named
/// here for callers that do not depend on raft-engine.
pub use raft_engine::Engine;
use raft_engine::LogBatch;

use crate::error::RaftError;
use crate::log_store::LogStore;

/// What [`force_new_cluster`] did, for the member's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForcedCluster {
    /// The members whose removal was appended to the log.
    pub removed: Vec<u64>,
    /// The entries that were past the recorded commit index and are now committed (the
    /// appended configuration changes not counted).
    pub newly_committed: u64,
    /// The commit index the group now starts from: the index of the last entry.
    pub commit: u64,
}

/// A member's place in a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Voter,
    Learner,
}

/// Bytes of entries read at once while scanning the log for configuration changes.
const SCAN_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// The members of the group once every entry of the log is applied, and whether it would then be
/// in a joint configuration: the persisted configuration with every configuration change of the
/// log replayed over it in order.
///
/// Replaying entries that the persisted configuration already reflects is harmless: adding and
/// removing members are idempotent, and after a replay each member's place is the one its last
/// change in the log gave it, as it is in the real configuration.
fn members_after_log(store: &LogStore) -> Result<(BTreeMap<u64, Place>, bool), RaftError> {
    let cs = store.conf_state();
    let mut members = BTreeMap::new();
    for id in cs.voters.iter().chain(&cs.voters_outgoing) {
        members.insert(*id, Place::Voter);
    }
    for id in cs.learners.iter().chain(&cs.learners_next) {
        members.entry(*id).or_insert(Place::Learner);
    }
    let mut joint = !cs.voters_outgoing.is_empty();
    let last = store.last_index().map_err(RaftError::raft)?;
    let mut next = store.first_index().map_err(RaftError::raft)?;
    while next <= last {
        let chunk = store
            .entries(next, last + 1, SCAN_CHUNK_BYTES, GetEntriesContext::empty(false))
            .map_err(RaftError::raft)?;
        let Some(end) = chunk.last().map(|e| e.index) else {
            return Err(RaftError::Io(format!("raft log entries from {next} cannot be read")));
        };
        for entry in &chunk {
            replay(entry, &mut members, &mut joint)?;
        }
        next = end + 1;
    }
    Ok((members, joint))
}

/// Applies one entry's configuration change, if it holds one, to `members` and `joint`.
fn replay(entry: &Entry, members: &mut BTreeMap<u64, Place>, joint: &mut bool) -> Result<(), RaftError> {
    let undecodable = |e: protobuf::ProtobufError| {
        RaftError::Io(format!(
            "configuration change at index {} does not decode: {e}",
            entry.index
        ))
    };
    let changes: Vec<(ConfChangeType, u64)> = match entry.get_entry_type() {
        EntryType::EntryNormal => return Ok(()),
        EntryType::EntryConfChange => {
            let cc = ConfChange::parse_from_bytes(&entry.data).map_err(undecodable)?;
            vec![(cc.get_change_type(), cc.node_id)]
        }
        EntryType::EntryConfChangeV2 => {
            let cc = ConfChangeV2::parse_from_bytes(&entry.data).map_err(undecodable)?;
            // raft-rs's rules: no change leaves a joint configuration; several changes, or an
            // explicit transition, enter one.
            if cc.get_changes().is_empty() {
                *joint = false;
            } else if cc.get_changes().len() > 1 || cc.get_transition() != ConfChangeTransition::Auto {
                *joint = true;
            }
            cc.get_changes()
                .iter()
                .map(|c| (c.get_change_type(), c.node_id))
                .collect()
        }
    };
    for (kind, id) in changes {
        match kind {
            ConfChangeType::AddNode => {
                members.insert(id, Place::Voter);
            }
            ConfChangeType::AddLearnerNode => {
                members.insert(id, Place::Learner);
            }
            ConfChangeType::RemoveNode => {
                members.remove(&id);
            }
        }
    }
    Ok(())
}

fn encode(message: &impl protobuf::Message) -> Vec<u8> {
    message
        .write_to_bytes()
        .expect("encoding a configuration change cannot fail")
}

/// Rewrites the log of group `group_id` in `engine` so that it restarts as a one-voter group of
/// `member_id` (see the module documentation): appends the configuration changes that leave only
/// this member, and commits everything up to them, in one durable write. `sealer` is the one
/// the group runs with (entries are read and appended as the driver would). Call it before the
/// group is started; a group that was never initialized is left alone (`None`), as etcd ignores
/// the flag for a member without a log.
pub fn force_new_cluster(
    engine: &Arc<Engine>,
    group_id: u64,
    member_id: u64,
    sealer: Option<Arc<concord_crypt::Sealer>>,
) -> Result<Option<ForcedCluster>, RaftError> {
    let mut store = LogStore::open(engine.clone(), group_id, Arc::default()).map_err(RaftError::log)?;
    if !store.is_initialized() {
        return Ok(None);
    }
    store.prepare_encryption(sealer)?;
    rewrite(&mut store, member_id).map(Some)
}

/// [`force_new_cluster`] on an opened log.
fn rewrite(store: &mut LogStore, member_id: u64) -> Result<ForcedCluster, RaftError> {
    let (members, joint) = members_after_log(store)?;
    let last = store.last_index().map_err(RaftError::raft)?;
    let hs = store.hard_state().clone();
    let mut appended = Vec::new();
    let mut push = |entry_type: EntryType, data: Vec<u8>| {
        let mut entry = Entry::default();
        entry.set_entry_type(entry_type);
        // The hard state's term is at least the last entry's, so the log's terms stay ordered.
        entry.term = hs.term;
        entry.index = last + 1 + appended.len() as u64;
        entry.data = data.into();
        appended.push(entry);
    };
    if joint {
        // Simple changes cannot be applied in a joint configuration: leave it first.
        let leave = ConfChangeV2::default();
        push(EntryType::EntryConfChangeV2, encode(&leave));
    }
    let change = |kind: ConfChangeType, id: u64| {
        let mut cc = ConfChange::default();
        cc.set_change_type(kind);
        cc.node_id = id;
        encode(&cc)
    };
    if members.get(&member_id) != Some(&Place::Voter) {
        // A learner (or a member its own log removed) becomes a voter before the others go, so
        // the configuration never runs out of voters on the way.
        push(EntryType::EntryConfChange, change(ConfChangeType::AddNode, member_id));
    }
    let removed: Vec<u64> = members.keys().copied().filter(|id| *id != member_id).collect();
    for id in &removed {
        push(EntryType::EntryConfChange, change(ConfChangeType::RemoveNode, *id));
    }
    let commit = last + appended.len() as u64;
    let newly_committed = last.saturating_sub(hs.commit);
    let mut batch = LogBatch::default();
    store.stage_entries(&mut batch, &appended);
    if commit != hs.commit {
        store.stage_commit(&mut batch, commit);
    }
    store.write(&mut batch, true).map_err(RaftError::log)?;
    Ok(ForcedCluster {
        removed,
        newly_committed,
        commit,
    })
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::{ConfChangeSingle, HardState};

    use super::*;
    use crate::log_store::open_engine;

    fn conf_entry(index: u64, kind: ConfChangeType, id: u64) -> Entry {
        let mut cc = ConfChangeV2::default();
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = id;
        cc.mut_changes().push(single);
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChangeV2);
        e.index = index;
        e.term = 6;
        e.data = cc.write_to_bytes().unwrap().into();
        e
    }

    fn normal_entry(index: u64) -> Entry {
        Entry {
            index,
            term: 6,
            data: vec![0x0a, 0x00].into(),
            ..Default::default()
        }
    }

    /// A group of voters 1, 2, 3 with entries 6..=9 committed up to 7, and entry 8 adding
    /// member 4, not applied yet.
    fn three_member_log(dir: &std::path::Path) -> LogStore {
        let mut store = LogStore::open(open_engine(dir).unwrap(), 1, Arc::default()).unwrap();
        let mut batch = LogBatch::default();
        store.stage_bootstrap(&mut batch, vec![1, 2, 3]);
        store.stage_entries(
            &mut batch,
            &[
                normal_entry(6),
                normal_entry(7),
                conf_entry(8, ConfChangeType::AddLearnerNode, 4),
                normal_entry(9),
            ],
        );
        store.stage_hard_state(
            &mut batch,
            HardState {
                term: 7,
                vote: 2,
                commit: 7,
                ..Default::default()
            },
        );
        store.write(&mut batch, true).unwrap();
        store
    }

    #[test]
    fn removals_follow_every_entry_and_everything_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = three_member_log(dir.path());
        let forced = rewrite(&mut store, 1).unwrap();
        // Member 4 is only in the log's pending change, and still removed after it.
        assert_eq!(forced.removed, vec![2, 3, 4]);
        assert_eq!(forced.newly_committed, 2);
        assert_eq!(forced.commit, 12);
        drop(store);

        let reopened = LogStore::open(open_engine(dir.path()).unwrap(), 1, Arc::default()).unwrap();
        assert_eq!(reopened.hard_state().commit, 12);
        assert_eq!(reopened.hard_state().term, 7);
        assert_eq!(reopened.last_index().unwrap(), 12);
        let tail = reopened.entries(10, 13, None, GetEntriesContext::empty(false)).unwrap();
        let removed: Vec<(u64, u64)> = tail
            .iter()
            .map(|e| {
                let cc = ConfChange::parse_from_bytes(&e.data).unwrap();
                assert_eq!(cc.get_change_type(), ConfChangeType::RemoveNode);
                (e.term, cc.node_id)
            })
            .collect();
        assert_eq!(removed, vec![(7, 2), (7, 3), (7, 4)]);
        let (members, joint) = members_after_log(&reopened).unwrap();
        assert_eq!(members.into_iter().collect::<Vec<_>>(), vec![(1, Place::Voter)]);
        assert!(!joint);
    }

    #[test]
    fn forcing_again_appends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = three_member_log(dir.path());
        rewrite(&mut store, 1).unwrap();
        let again = rewrite(&mut store, 1).unwrap();
        assert_eq!(
            again,
            ForcedCluster {
                removed: vec![],
                newly_committed: 0,
                commit: 12
            }
        );
        assert_eq!(store.last_index().unwrap(), 12);
    }

    #[test]
    fn a_learner_is_promoted_before_the_voters_go() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = three_member_log(dir.path());
        let forced = rewrite(&mut store, 4).unwrap();
        assert_eq!(forced.removed, vec![1, 2, 3]);
        let first = store.entries(10, 11, None, GetEntriesContext::empty(false)).unwrap();
        let cc = ConfChange::parse_from_bytes(&first[0].data).unwrap();
        assert_eq!((cc.get_change_type(), cc.node_id), (ConfChangeType::AddNode, 4));
        let (members, _) = members_after_log(&store).unwrap();
        assert_eq!(members.into_iter().collect::<Vec<_>>(), vec![(4, Place::Voter)]);
    }
}
