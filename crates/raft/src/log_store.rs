//! The durable Raft log of one group, kept in raft-engine.
//!
//! raft-engine stores the logs of many groups in shared append-only files, so
//! thousands of groups on one member still cost one fsync per batch. Each
//! group's entries live under its group id; its hard state, configuration and
//! truncation point live beside them as small keyed messages.
//!
//! # Encryption at rest
//!
//! With a [`Sealer`] ([`LogStore::prepare_encryption`]), the `data` of every entry is sealed
//! (concord-crypt's format) before it is staged and opened when it is fetched, bound to the
//! group, index and term it sits at. `context` stays plain: Concord puts only the proposer's
//! member id and request id there; a configuration change's context (the new member's name and
//! URLs) travels inside `data`. Hard state, configuration and truncation point hold no client
//! data and stay plain too.
//!
//! Sealed and plain entries can sit side by side (encryption turned on over an existing log).
//! They are told apart in-band: Concord's entry data is always a protobuf message
//! (`RaftCommand`, `ConfChange`, `ConfChangeV2`) or empty, and no protobuf message starts with a
//! byte below 0x08 (field number 0 does not exist), while sealed data starts with
//! [`FORMAT_V1`] (0x01). A log that holds no sealed entry skips the test altogether.
//!
//! Which keys sealed the log is kept under [`SEALED_KEYS_KEY`]: for each key, an index that no
//! entry it sealed lies beyond. So a member can refuse at start, before raft-rs reads a single
//! entry, when a key it needs is missing from the key file; and it stops needing a key once the
//! log is truncated past that index.

use std::sync::Arc;

use concord_crypt::{KeyId, Sealer, FORMAT_V1};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use raft_engine::{Command, Engine, LogBatch, MessageExt};

use crate::entry_cache::EntryCache;
use crate::error::RaftError;
use crate::snapshot::SnapshotSlot;

const HARD_STATE_KEY: &[u8] = b"hard_state";
const CONF_STATE_KEY: &[u8] = b"conf_state";
/// The index and term of the last entry removed from the front of the log.
const TRUNCATED_KEY: &[u8] = b"truncated";
/// The keys that sealed entries of the log (see [`SealedRange`]), 12 bytes each, oldest first.
pub const SEALED_KEYS_KEY: &[u8] = b"sealed_keys";

/// A key that sealed entries of the log: none of them lies beyond `last`, which is
/// [`OPEN_RANGE`] while the key is the one this member seals with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SealedRange {
    key: KeyId,
    last: u64,
}

/// The `last` of the range of the key in use.
const OPEN_RANGE: u64 = u64::MAX;

fn encode_ranges(ranges: &[SealedRange]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ranges.len() * 12);
    for r in ranges {
        out.extend_from_slice(&r.key.0.to_be_bytes());
        out.extend_from_slice(&r.last.to_be_bytes());
    }
    out
}

fn decode_ranges(bytes: &[u8]) -> Option<Vec<SealedRange>> {
    if !bytes.len().is_multiple_of(12) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(12)
            .map(|c| SealedRange {
                key: KeyId(u32::from_be_bytes(c[..4].try_into().unwrap())),
                last: u64::from_be_bytes(c[4..].try_into().unwrap()),
            })
            .collect(),
    )
}

/// What a sealed entry's data is bound to: its group, index and term.
fn entry_aad(group_id: u64, entry: &Entry) -> [u8; 24] {
    let mut aad = [0u8; 24];
    aad[..8].copy_from_slice(&group_id.to_be_bytes());
    aad[8..16].copy_from_slice(&entry.index.to_be_bytes());
    aad[16..].copy_from_slice(&entry.term.to_be_bytes());
    aad
}

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

/// Whether a purge of the log engine's files is running (one at a time per process is plenty).
static PURGING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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
    /// Seals entry data when encryption at rest is on.
    sealer: Option<Arc<Sealer>>,
    /// The keys that sealed entries still in the log, as stored under [`SEALED_KEYS_KEY`].
    sealed: Vec<SealedRange>,
    /// The log's newest entries, plaintext, so raft-rs's reads of them skip the log file.
    cache: EntryCache,
}

impl LogStore {
    /// Deletes the engine's log files that hold only truncated entries, on a thread of its own.
    ///
    /// Truncation only moves the group's first index; raft-engine frees disk space when asked to
    /// purge, which may also rewrite the live tail of old files. Without this, the log's files
    /// (and, under encryption, entries sealed with retired keys) would stay on disk forever.
    pub fn purge_in_background(&self) {
        use std::sync::atomic::Ordering;
        if PURGING.swap(true, Ordering::AcqRel) {
            return;
        }
        let engine = self.engine.clone();
        let spawned = std::thread::Builder::new()
            .name("raft-log-purge".into())
            .spawn(move || {
                match engine.purge_expired_files() {
                    Ok(_) => tracing::debug!("raft log files purged"),
                    Err(e) => tracing::warn!("cannot purge raft log files: {e}"),
                }
                PURGING.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            PURGING.store(false, Ordering::Release);
        }
    }

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
        let sealed = match engine.get(group_id, SEALED_KEYS_KEY) {
            Some(bytes) => decode_ranges(&bytes).ok_or_else(|| {
                raft_engine::Error::Corruption(format!("group {group_id}: malformed sealed_keys record"))
            })?,
            None => Vec::new(),
        };
        Ok(LogStore {
            engine,
            group_id,
            hard_state,
            conf_state,
            truncated_index,
            truncated_term,
            snapshots,
            sealer: None,
            sealed,
            cache: EntryCache::default(),
        })
    }

    /// Sets how entries are sealed from now on (`None`: not at all) and checks the log against
    /// it: every key that sealed entries still in the log must be in `sealer`'s keyring, else
    /// this fails, naming the missing key ids, and nothing changes. Then the range of the key
    /// used before is closed at the last index, the active key's range is opened, ranges wholly
    /// truncated are forgotten, and the record is written durably. Call it once, right after
    /// [`open`](Self::open), before raft-rs reads the log.
    pub fn prepare_encryption(&mut self, sealer: Option<Arc<Sealer>>) -> Result<(), RaftError> {
        let active = sealer.as_ref().map(|s| s.active_id());
        let last = self.engine_last_index().unwrap_or(0).max(self.truncated_index);
        let mut ranges = self.sealed.clone();
        for r in &mut ranges {
            if r.last == OPEN_RANGE && Some(r.key) != active {
                r.last = last;
            }
        }
        ranges.retain(|r| r.last > self.truncated_index);
        let missing: Vec<&SealedRange> = ranges
            .iter()
            .filter(|r| !sealer.as_ref().is_some_and(|s| s.keyring().contains(r.key)))
            .collect();
        if let Some(worst) = missing.iter().max_by_key(|r| r.last) {
            let ids: Vec<String> = missing.iter().map(|r| r.key.to_string()).collect();
            let upto = worst.last.min(last);
            return Err(RaftError::Encryption(match &sealer {
                None => format!(
                    "the Raft log of group {} holds entries sealed with key id {} (up to index {upto}); \
                     start with --encryption-key-file listing that key",
                    self.group_id,
                    ids.join(", ")
                ),
                Some(s) => format!(
                    "the Raft log of group {} holds entries sealed with key id {} (up to index {upto}), \
                     which the key file does not list (it has {}); put the key back until the log \
                     is truncated past index {upto}",
                    self.group_id,
                    ids.join(", "),
                    s.keyring().describe()
                ),
            }));
        }
        if let Some(id) = active {
            if !ranges.iter().any(|r| r.key == id && r.last == OPEN_RANGE) {
                ranges.push(SealedRange {
                    key: id,
                    last: OPEN_RANGE,
                });
            }
        }
        if ranges != self.sealed {
            let mut batch = LogBatch::default();
            batch
                .put(self.group_id, SEALED_KEYS_KEY.to_vec(), encode_ranges(&ranges))
                .map_err(RaftError::log)?;
            self.engine.write(&mut batch, true).map_err(RaftError::log)?;
            self.sealed = ranges;
        }
        let older: Vec<String> = self
            .sealed
            .iter()
            .filter(|r| r.last != OPEN_RANGE)
            .map(|r| format!("{} (up to index {})", r.key, r.last))
            .collect();
        if !older.is_empty() {
            tracing::info!(
                group = self.group_id,
                "the Raft log still holds entries sealed with key id {}; they go as the log is truncated",
                older.join(", ")
            );
        }
        self.sealer = sealer;
        Ok(())
    }

    /// Forgets the closed sealed ranges `keep` rejects (their entries are gone) and stages the
    /// new record if that changed it.
    fn stage_forget_sealed(&mut self, batch: &mut LogBatch, keep: impl Fn(&SealedRange) -> bool) {
        let before = self.sealed.len();
        self.sealed.retain(|r| r.last == OPEN_RANGE || keep(r));
        if self.sealed.len() != before {
            batch
                .put(self.group_id, SEALED_KEYS_KEY.to_vec(), encode_ranges(&self.sealed))
                .expect("a small keyed value cannot fail to encode");
        }
    }

    /// Stages the state of a group that starts with `voters`: an initial
    /// snapshot point holding the configuration, and nothing in the log.
    pub fn stage_bootstrap(&mut self, batch: &mut LogBatch, voters: Vec<u64>) {
        let cs = ConfState {
            voters,
            ..Default::default()
        };
        self.stage_conf_state(batch, cs);
        self.stage_truncated(batch, INITIAL_INDEX, INITIAL_TERM);
        let hs = HardState {
            term: INITIAL_TERM,
            commit: INITIAL_INDEX,
            ..Default::default()
        };
        self.stage_hard_state(batch, hs);
    }

    fn stage_truncated(&mut self, batch: &mut LogBatch, index: u64, term: u64) {
        let marker = Entry {
            index,
            term,
            ..Default::default()
        };
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
        self.cache.drop_through(index - 1);
        batch.add_command(self.group_id, Command::Compact { index });
        self.stage_forget_sealed(batch, |r| r.last >= index);
        true
    }

    /// Removes everything `engine` holds of group `group_id` (its entries, state and snapshot
    /// point), durably: a member that no longer holds a shard's replica, so that holding it again
    /// later starts from nothing.
    pub fn forget_group(engine: &Engine, group_id: u64) -> Result<(), raft_engine::Error> {
        let mut batch = LogBatch::default();
        batch.add_command(group_id, Command::Clean);
        engine.write(&mut batch, true).map(|_| ())
    }

    /// Stages replacing the whole log with a snapshot's point: every entry
    /// goes, and the snapshot's configuration and position take their place.
    pub fn stage_snapshot(&mut self, batch: &mut LogBatch, meta: &SnapshotMetadata) {
        batch.add_command(self.group_id, Command::Clean);
        self.cache.clear();
        // No entry is left, whichever key sealed it.
        self.stage_forget_sealed(batch, |_| false);
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

    /// Stages new entries, their data sealed when encryption is on; raft-engine drops any
    /// conflicting suffix itself.
    pub fn stage_entries(&mut self, batch: &mut LogBatch, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        self.cache.append(entries);
        let staged = match &self.sealer {
            None => batch.add_entries::<EntryCodec>(self.group_id, entries),
            Some(sealer) => {
                let sealed: Vec<Entry> = entries
                    .iter()
                    .map(|e| {
                        let mut copy = e.clone();
                        if !e.data.is_empty() {
                            copy.data = sealer.seal(&e.data, &entry_aad(self.group_id, e)).into();
                        }
                        copy
                    })
                    .collect();
                batch.add_entries::<EntryCodec>(self.group_id, &sealed)
            }
        };
        staged.expect("encoding raft entries cannot fail");
    }

    /// Replaces a fetched entry's sealed data by its plaintext; plain data is left alone. A log
    /// that never held a sealed entry is never looked at.
    fn open_entry(&self, entry: &mut Entry) -> raft::Result<()> {
        if self.sealed.is_empty() || entry.data.first() != Some(&FORMAT_V1) {
            return Ok(());
        }
        let aad = entry_aad(self.group_id, entry);
        let opened = match &self.sealer {
            Some(sealer) => sealer.open(&entry.data, &aad),
            None => concord_crypt::open_registered(&entry.data, &aad),
        };
        match opened {
            Ok(plain) => {
                entry.data = plain.into();
                Ok(())
            }
            Err(e) => Err(raft::Error::Store(StorageError::Other(
                format!("raft log entry {} of group {}: {e}", entry.index, self.group_id).into(),
            ))),
        }
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
        let started = std::time::Instant::now();
        let bytes = self.engine.write(batch, sync)?;
        crate::metrics::WAL_WRITE_BYTES.inc_by(bytes as u64);
        if sync {
            crate::metrics::WAL_FSYNC_SECONDS.observe(started.elapsed().as_secs_f64());
        }
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
        let max_size = max_size.into();
        if let Some(cached) = self.cache.fetch(low, high, max_size) {
            if cached.len() as u64 == high - low || max_size.is_some() {
                return Ok(cached);
            }
        }
        let mut entries = Vec::with_capacity((high - low) as usize);
        let max_size = max_size.map(|s| s as usize);
        self.engine
            .fetch_entries_to::<EntryCodec>(self.group_id, low, high, max_size, &mut entries)
            .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
        if entries.is_empty() && low < high {
            return Err(unavailable());
        }
        for entry in &mut entries {
            self.open_entry(entry)?;
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
        if let Some(term) = self.cache.term(idx) {
            return Ok(term);
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

/// Decodes a raft-rs message from a received buffer; the entries' data are slices of
/// `bytes`, not copies.
pub fn decode_shared_message(bytes: &prost::bytes::Bytes) -> Result<raft::eraftpb::Message, protobuf::ProtobufError> {
    raft::eraftpb::Message::parse_from_carllerche_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8].into(),
            ..Default::default()
        }
    }

    #[test]
    fn truncated_log_files_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = raft_engine::Config {
            dir: dir.path().to_string_lossy().into_owned(),
            target_file_size: raft_engine::ReadableSize::kb(16),
            purge_threshold: raft_engine::ReadableSize::kb(32),
            ..Default::default()
        };
        let engine = Arc::new(Engine::open(cfg).unwrap());
        let mut store = LogStore::open(engine, 7, Arc::default()).unwrap();
        for chunk in 0..100u64 {
            let mut batch = LogBatch::default();
            let entries: Vec<Entry> = (1..=10)
                .map(|i| {
                    let mut e = entry(chunk * 10 + i, 1);
                    // Bytes that do not compress, so the log really grows.
                    let mut x = chunk * 10 + i;
                    e.data = (0..1024)
                        .map(|_| {
                            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                            (x >> 56) as u8
                        })
                        .collect::<Vec<u8>>()
                        .into();
                    e
                })
                .collect();
            store.stage_entries(&mut batch, &entries);
            store.write(&mut batch, false).unwrap();
        }
        let log_files = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|f| f.as_ref().unwrap().path().extension().is_some_and(|e| e == "raftlog"))
                .count()
        };
        let before = log_files();
        let mut batch = LogBatch::default();
        assert!(store.stage_compact(&mut batch, 990));
        store.write(&mut batch, false).unwrap();
        store.purge_in_background();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while log_files() * 2 > before {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {before} log files left",
                log_files()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
            store.purge_in_background();
        }
        assert_eq!(store.first_index().unwrap(), 990);
    }

    #[test]
    fn entries_and_hard_state_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = open_engine(dir.path()).unwrap();
            let mut store = LogStore::open(engine, 7, Arc::default()).unwrap();
            let mut batch = LogBatch::default();
            store.stage_entries(&mut batch, &[entry(1, 1), entry(2, 1), entry(3, 2)]);
            let hs = HardState {
                term: 2,
                vote: 3,
                commit: 2,
                ..Default::default()
            };
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
        let got = store.entries(1, 4, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn conflicting_suffix_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_engine(dir.path()).unwrap();
        let mut store = LogStore::open(engine, 1, Arc::default()).unwrap();
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

        let mut meta = SnapshotMetadata {
            index: 100,
            term: 9,
            ..Default::default()
        };
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

    const K1: &str = "k1:1111111111111111111111111111111111111111111111111111111111111111";
    const K2: &str = "k2:2222222222222222222222222222222222222222222222222222222222222222";

    fn sealer(key_file: &str) -> Option<Arc<Sealer>> {
        let keyring = Arc::new(concord_crypt::Keyring::parse(key_file, "test keys").unwrap());
        Some(Arc::new(Sealer::new(keyring).unwrap()))
    }

    fn secret(index: u64) -> Vec<u8> {
        format!("\x0aPLAINTEXT-CANARY-{index:04}").into_bytes()
    }

    fn secret_entry(index: u64, term: u64) -> Entry {
        let mut e = entry(index, term);
        e.data = secret(index).into();
        e
    }

    /// Whether any file under `dir` holds `needle`.
    fn files_contain(dir: &std::path::Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).unwrap().any(|f| {
            let path = f.unwrap().path();
            if path.is_dir() {
                files_contain(&path, needle)
            } else {
                std::fs::read(&path).unwrap().windows(needle.len()).any(|w| w == needle)
            }
        })
    }

    fn open_with(dir: &std::path::Path, keys: Option<Arc<Sealer>>) -> Result<LogStore, RaftError> {
        let mut store = LogStore::open(open_engine(dir).unwrap(), 1, Arc::default()).unwrap();
        store.prepare_encryption(keys)?;
        Ok(store)
    }

    fn write_secrets(store: &mut LogStore, indexes: std::ops::RangeInclusive<u64>, term: u64) {
        let mut batch = LogBatch::default();
        let entries: Vec<Entry> = indexes.map(|i| secret_entry(i, term)).collect();
        store.stage_entries(&mut batch, &entries);
        store.write(&mut batch, true).unwrap();
    }

    fn read_all(store: &LogStore) -> Vec<Vec<u8>> {
        let (low, high) = (store.first_index().unwrap(), store.last_index().unwrap() + 1);
        store
            .entries(low, high, None, GetEntriesContext::empty(false))
            .unwrap()
            .into_iter()
            .map(|e| e.data.to_vec())
            .collect()
    }

    /// The key id a stored entry's data is sealed with, `None` when it is plain.
    fn stored_key(store: &LogStore, index: u64) -> Option<KeyId> {
        let raw = store.engine.get_entry::<EntryCodec>(1, index).unwrap().unwrap();
        concord_crypt::sealed_key_id(&raw.data).ok()
    }

    #[test]
    fn sealed_entries_leave_no_plaintext_on_disk_and_read_back() {
        // Control: the scan finds plain entries.
        let plain_dir = tempfile::tempdir().unwrap();
        {
            let mut store = open_with(plain_dir.path(), None).unwrap();
            write_secrets(&mut store, 1..=3, 1);
        }
        assert!(files_contain(plain_dir.path(), b"PLAINTEXT-CANARY-0002"));

        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = open_with(dir.path(), sealer(K1)).unwrap();
            write_secrets(&mut store, 1..=3, 1);
            assert_eq!(read_all(&store), (1..=3).map(secret).collect::<Vec<_>>());
            // The batch was staged from copies: the caller's entries are untouched, and terms
            // need no key.
            assert_eq!(store.term(3).unwrap(), 1);
        }
        assert!(!files_contain(dir.path(), b"PLAINTEXT-CANARY"));
        // Read back after a restart with the same key file.
        let mut store = open_with(dir.path(), sealer(K1)).unwrap();
        assert_eq!(read_all(&store), (1..=3).map(secret).collect::<Vec<_>>());
        let k1 = sealer(K1).unwrap().active_id();
        assert_eq!(stored_key(&store, 2), Some(k1));
        // Empty data (a leader's no-op) stays empty.
        let mut batch = LogBatch::default();
        let mut noop = entry(4, 2);
        noop.data = Vec::new().into();
        store.stage_entries(&mut batch, &[noop]);
        store.write(&mut batch, true).unwrap();
        assert!(read_all(&store)[3].is_empty());
    }

    #[test]
    fn a_missing_key_is_refused_until_the_log_is_truncated_past_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, k2) = (sealer(K1).unwrap().active_id(), sealer(K2).unwrap().active_id());
        {
            let mut store = open_with(dir.path(), sealer(K1)).unwrap();
            write_secrets(&mut store, 1..=10, 1);
        }
        let no_key = open_with(dir.path(), None).err().unwrap().to_string();
        assert!(
            no_key.contains(&k1.to_string()) && no_key.contains("--encryption-key-file"),
            "{no_key}"
        );
        let wrong_key = open_with(dir.path(), sealer(K2)).err().unwrap().to_string();
        assert!(
            wrong_key.contains(&k1.to_string()) && wrong_key.contains("does not list"),
            "{wrong_key}"
        );
        assert!(wrong_key.contains("index 10"), "{wrong_key}");

        // Rotation: the new key on top, the old one below.
        let both = format!("{K2}\n{K1}");
        {
            let mut store = open_with(dir.path(), sealer(&both)).unwrap();
            write_secrets(&mut store, 11..=20, 2);
            assert_eq!(read_all(&store), (1..=20).map(secret).collect::<Vec<_>>());
            assert_eq!(stored_key(&store, 10), Some(k1));
            assert_eq!(stored_key(&store, 11), Some(k2));
        }
        // The old key is still needed for entries 1..=10.
        assert!(open_with(dir.path(), sealer(K2)).is_err());
        {
            let mut store = open_with(dir.path(), sealer(&both)).unwrap();
            let mut batch = LogBatch::default();
            assert!(store.stage_compact(&mut batch, 11));
            store.write(&mut batch, true).unwrap();
        }
        // Truncated past them: the old key may go.
        let store = open_with(dir.path(), sealer(K2)).unwrap();
        assert_eq!(read_all(&store), (11..=20).map(secret).collect::<Vec<_>>());
    }

    #[test]
    fn plain_entries_stay_readable_when_encryption_is_turned_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = open_with(dir.path(), None).unwrap();
            write_secrets(&mut store, 1..=5, 1);
        }
        {
            let mut store = open_with(dir.path(), sealer(K1)).unwrap();
            write_secrets(&mut store, 6..=10, 1);
            assert_eq!(read_all(&store), (1..=10).map(secret).collect::<Vec<_>>());
            assert_eq!(stored_key(&store, 5), None);
            assert!(stored_key(&store, 6).is_some());
        }
        // Turning it off again is refused while sealed entries remain...
        assert!(open_with(dir.path(), None).is_err());
        // ...and allowed once a snapshot replaced the whole log.
        {
            let mut store = open_with(dir.path(), sealer(K1)).unwrap();
            let mut meta = SnapshotMetadata {
                index: 50,
                term: 3,
                ..Default::default()
            };
            meta.mut_conf_state().voters = vec![1];
            let mut batch = LogBatch::default();
            store.stage_snapshot(&mut batch, &meta);
            store.write(&mut batch, true).unwrap();
        }
        // The key in use keeps its open range until a member starts without it.
        let store = open_with(dir.path(), None).unwrap();
        assert_eq!(store.first_index().unwrap(), 51);
    }
}
