//! The durable Raft log of one group, kept in raft-engine.
//!
//! raft-engine stores the logs of many groups in shared append-only files, so
//! thousands of groups on one member still cost one fsync per batch. Each
//! group's entries live under its group id; its hard state, configuration and
//! truncation point live beside them as small keyed messages.

use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use raft_engine::{Command, Engine, LogBatch, MessageExt};

use crate::snapshot::SnapshotSlot;

const HARD_STATE_KEY: &[u8] = b"hard_state";
const CONF_STATE_KEY: &[u8] = b"conf_state";
/// The index and term of the last entry removed from the front of the log.
const TRUNCATED_KEY: &[u8] = b"truncated";

/// A new group's log starts as if a snapshot at this index and term held its
/// initial configuration (as TiKV does). A member joining later has an empty
/// log, so the leader must send it a snapshot, which carries the
/// configuration and the data, instead of entries that assume both.
pub const INITIAL_INDEX: u64 = 5;
/// The term of the initial snapshot point.
pub const INITIAL_TERM: u64 = 5;

/// Tells raft-engine how to find the index of a raft-rs entry.
#[derive(Clone)]
pub struct EntryCodec;

impl MessageExt for EntryCodec {
    type Entry = Entry;

    fn index(entry: &Entry) -> u64 {
        entry.index
    }
}

/// Opens the raft-engine instance that holds every group's log on this member.
pub fn open_engine(dir: &std::path::Path) -> Result<Arc<Engine>, raft_engine::Error> {
    let cfg = raft_engine::Config {
        dir: dir.to_string_lossy().into_owned(),
        ..Default::default()
    };
    Ok(Arc::new(Engine::open(cfg)?))
}

/// One group's view of the shared log engine; implements raft-rs's `Storage`.
///
/// Reads go to raft-engine's in-memory index; writes are staged into a
/// [`LogBatch`] by [`LogStore::stage_entries`] and friends, then made durable
/// together by [`LogStore::write`], so one Ready costs one fsync.
pub struct LogStore {
    engine: Arc<Engine>,
    group_id: u64,
    hard_state: HardState,
    conf_state: ConfState,
    truncated_index: u64,
    truncated_term: u64,
    snapshots: Arc<SnapshotSlot>,
}

impl LogStore {
    /// Loads the group's state from the engine; an unknown group starts empty.
    pub fn open(engine: Arc<Engine>, group_id: u64, snapshots: Arc<SnapshotSlot>) -> raft_engine::Result<Self> {
        let hard_state = engine
            .get_message::<HardState>(group_id, HARD_STATE_KEY)?
            .unwrap_or_default();
        let conf_state = engine
            .get_message::<ConfState>(group_id, CONF_STATE_KEY)?
            .unwrap_or_default();
        let (truncated_index, truncated_term) = engine
            .get_message::<Entry>(group_id, TRUNCATED_KEY)?
            .map(|e| (e.index, e.term))
            .unwrap_or((0, 0));
        Ok(LogStore {
            engine,
            group_id,
            hard_state,
            conf_state,
            truncated_index,
            truncated_term,
            snapshots,
        })
    }

    /// Stages the state of a group that starts with `voters`: an initial
    /// snapshot point holding the configuration, and nothing in the log.
    pub fn stage_bootstrap(&mut self, batch: &mut LogBatch, voters: Vec<u64>) {
        let mut cs = ConfState::default();
        cs.voters = voters;
        self.stage_conf_state(batch, cs);
        self.stage_truncated(batch, INITIAL_INDEX, INITIAL_TERM);
        let mut hs = HardState::default();
        hs.term = INITIAL_TERM;
        hs.commit = INITIAL_INDEX;
        self.stage_hard_state(batch, hs);
    }

    fn stage_truncated(&mut self, batch: &mut LogBatch, index: u64, term: u64) {
        let mut marker = Entry::default();
        marker.index = index;
        marker.term = term;
        batch
            .put_message(self.group_id, TRUNCATED_KEY.to_vec(), &marker)
            .expect("encoding the truncation point cannot fail");
        self.truncated_index = index;
        self.truncated_term = term;
    }

    /// Stages dropping every entry before `index`; the entry at `index - 1`
    /// becomes the truncation point. Returns false when there is nothing to drop.
    pub fn stage_compact(&mut self, batch: &mut LogBatch, index: u64) -> bool {
        if index <= self.truncated_index + 1 || index > self.last_index().unwrap_or(0) {
            return false;
        }
        let Ok(term) = self.term(index - 1) else {
            return false;
        };
        self.stage_truncated(batch, index - 1, term);
        batch.add_command(self.group_id, Command::Compact { index });
        true
    }

    /// Stages replacing the whole log with a snapshot's point: every entry
    /// goes, and the snapshot's configuration and position take their place.
    pub fn stage_snapshot(&mut self, batch: &mut LogBatch, meta: &SnapshotMetadata) {
        batch.add_command(self.group_id, Command::Clean);
        self.stage_truncated(batch, meta.index, meta.term);
        self.stage_conf_state(batch, meta.get_conf_state().clone());
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        self.stage_hard_state(batch, hs);
    }

    /// The index of the last entry dropped from the front of the log.
    pub fn truncated_index(&self) -> u64 {
        self.truncated_index
    }

    /// True when the group has never been given a configuration.
    pub fn is_initialized(&self) -> bool {
        !self.conf_state.voters.is_empty() || !self.conf_state.learners.is_empty()
    }

    /// The hard state as last staged.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The configuration as last staged.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Stages new entries; raft-engine drops any conflicting suffix itself.
    pub fn stage_entries(&self, batch: &mut LogBatch, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        batch
            .add_entries::<EntryCodec>(self.group_id, entries)
            .expect("encoding raft entries cannot fail");
    }

    /// Stages a new hard state.
    pub fn stage_hard_state(&mut self, batch: &mut LogBatch, hs: HardState) {
        batch
            .put_message(self.group_id, HARD_STATE_KEY.to_vec(), &hs)
            .expect("encoding hard state cannot fail");
        self.hard_state = hs;
    }

    /// Stages only a newer commit index (from a `LightReady`).
    pub fn stage_commit(&mut self, batch: &mut LogBatch, commit: u64) {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.stage_hard_state(batch, hs);
    }

    /// Stages a new configuration.
    pub fn stage_conf_state(&mut self, batch: &mut LogBatch, cs: ConfState) {
        batch
            .put_message(self.group_id, CONF_STATE_KEY.to_vec(), &cs)
            .expect("encoding conf state cannot fail");
        self.conf_state = cs;
    }

    /// Writes a staged batch; with `sync`, returns only once it is on disk.
    pub fn write(&self, batch: &mut LogBatch, sync: bool) -> raft_engine::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.engine.write(batch, sync)?;
        Ok(())
    }

    fn engine_last_index(&self) -> Option<u64> {
        self.engine.last_index(self.group_id)
    }
}

fn unavailable() -> raft::Error {
    raft::Error::Store(StorageError::Unavailable)
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let mut entries = Vec::with_capacity((high - low) as usize);
        let max_size = max_size.into().map(|s| s as usize);
        self.engine
            .fetch_entries_to::<EntryCodec>(self.group_id, low, high, max_size, &mut entries)
            .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
        if entries.is_empty() && low < high {
            return Err(unavailable());
        }
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if idx < self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.engine.get_entry::<EntryCodec>(self.group_id, idx) {
            Ok(Some(entry)) => Ok(entry.term),
            Ok(None) => Err(unavailable()),
            Err(e) => Err(raft::Error::Store(StorageError::Other(Box::new(e)))),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self
            .engine
            .first_index(self.group_id)
            .map_or(self.truncated_index + 1, |first| first.max(self.truncated_index + 1)))
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self
            .engine_last_index()
            .map_or(self.truncated_index, |last| last.max(self.truncated_index)))
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // Building a snapshot copies the whole store, so it happens on a
        // builder thread; raft-rs asks again until one is ready.
        // raft-rs asks with request_index 0 unless the follower asked for a
        // snapshot itself, but a snapshot older than the log's truncation
        // point is useless: the follower would still miss the entries between
        // it and the log's first entry (the chaos rig found a follower that
        // ignored such a snapshot forever). So it must reach that point.
        let needed = request_index.max(self.truncated_index);
        self.snapshots
            .take_ready(needed, to)
            .ok_or(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
    }
}

/// Encodes a raft-rs message for the wire.
pub fn encode_message(msg: &raft::eraftpb::Message) -> Vec<u8> {
    msg.write_to_bytes().expect("encoding a raft message cannot fail")
}

/// Decodes a raft-rs message from the wire.
pub fn decode_message(bytes: &[u8]) -> Result<raft::eraftpb::Message, protobuf::ProtobufError> {
    raft::eraftpb::Message::parse_from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = vec![index as u8].into();
        e
    }

    #[test]
    fn entries_and_hard_state_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = open_engine(dir.path()).unwrap();
            let mut store = LogStore::open(engine, 7, Arc::default()).unwrap();
            let mut batch = LogBatch::default();
            store.stage_entries(&mut batch, &[entry(1, 1), entry(2, 1), entry(3, 2)]);
            let mut hs = HardState::default();
            hs.term = 2;
            hs.vote = 3;
            hs.commit = 2;
            store.stage_hard_state(&mut batch, hs);
            store.write(&mut batch, true).unwrap();
        }
        let engine = open_engine(dir.path()).unwrap();
        let store = LogStore::open(engine, 7, Arc::default()).unwrap();
        assert_eq!(store.hard_state().term, 2);
        assert_eq!(store.hard_state().vote, 3);
        assert_eq!(store.first_index().unwrap(), 1);
        assert_eq!(store.last_index().unwrap(), 3);
        assert_eq!(store.term(3).unwrap(), 2);
        let got = store
            .entries(1, 4, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn conflicting_suffix_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_engine(dir.path()).unwrap();
        let store = LogStore::open(engine, 1, Arc::default()).unwrap();
        let mut batch = LogBatch::default();
        store.stage_entries(&mut batch, &[entry(1, 1), entry(2, 1), entry(3, 1)]);
        store.write(&mut batch, false).unwrap();
        store.stage_entries(&mut batch, &[entry(2, 2)]);
        store.write(&mut batch, false).unwrap();
        assert_eq!(store.last_index().unwrap(), 2);
        assert_eq!(store.term(2).unwrap(), 2);
    }

    #[test]
    fn bootstrap_compaction_and_snapshot_move_the_truncation_point() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_engine(dir.path()).unwrap();
        let mut store = LogStore::open(engine.clone(), 3, Arc::default()).unwrap();
        let mut batch = LogBatch::default();
        store.stage_bootstrap(&mut batch, vec![1, 2, 3]);
        store.write(&mut batch, true).unwrap();
        assert_eq!(store.first_index().unwrap(), INITIAL_INDEX + 1);
        assert_eq!(store.last_index().unwrap(), INITIAL_INDEX);
        assert_eq!(store.term(INITIAL_INDEX).unwrap(), INITIAL_TERM);

        let entries: Vec<Entry> = (6..=20).map(|i| entry(i, 6)).collect();
        store.stage_entries(&mut batch, &entries);
        store.write(&mut batch, true).unwrap();
        assert!(store.stage_compact(&mut batch, 15));
        store.write(&mut batch, true).unwrap();
        assert_eq!(store.first_index().unwrap(), 15);
        assert_eq!(store.term(14).unwrap(), 6);
        assert!(store.term(13).is_err());

        let mut meta = SnapshotMetadata::default();
        meta.index = 100;
        meta.term = 9;
        meta.mut_conf_state().voters = vec![1, 2, 3, 4];
        store.stage_snapshot(&mut batch, &meta);
        store.write(&mut batch, true).unwrap();
        let reopened = LogStore::open(engine, 3, Arc::default()).unwrap();
        assert_eq!(reopened.first_index().unwrap(), 101);
        assert_eq!(reopened.last_index().unwrap(), 100);
        assert_eq!(reopened.term(100).unwrap(), 9);
        assert_eq!(reopened.conf_state().voters, vec![1, 2, 3, 4]);
        assert_eq!(reopened.hard_state().commit, 100);
    }
}
