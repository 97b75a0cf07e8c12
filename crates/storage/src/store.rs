//! [`MvccStore`]: opening the redb file, applying committed Raft entries in batches, and serving
//! reads from snapshots.
//!
//! # Reads and the key index
//!
//! A read needs two things that must agree: the key index, which says which version of each key
//! to read, and a redb read snapshot, which holds those versions' rows. They live behind one lock
//! ([`Shared`], with the database handle), and they are paired like this:
//!
//! * The writer changes the index only under the write lock, only after the batch's redb
//!   transaction has committed, and only by merging in that batch ([`KeyIndex::apply`]). So at
//!   any moment the index reflects some committed batch `B` (its `revision` and
//!   `compact_revision`), and redb holds `B` or a later commit.
//! * A reader takes the read lock and, while holding it, begins its redb read transaction
//!   ([`MvccStore::read_state`]). That snapshot contains every row the index names: rows are
//!   committed before the index learns of them, and the only thing that removes rows is a
//!   compaction. A later commit the snapshot may already see adds only rows above the index's
//!   revision, which no lookup at or below it can name, unless it also compacted: then the
//!   snapshot's compaction point is above the index's, and the reader lets go of both, yields
//!   so the writer can merge that batch, and starts again.
//! * With a matching pair, the reader reads at the index's revision `R`, never at redb's own
//!   (possibly newer) `meta.revision`. Once it has its snapshot it may drop the lock: the
//!   snapshot never changes, and the index only gains versions above `R` until the next
//!   compaction. Readers that look the index up again later (events' previous versions,
//!   `hash_kv`) check that its compaction point and file are still those of their snapshot
//!   ([`Shared::pairs_with`]) and start over otherwise.
//! * Installing a snapshot or defragmenting swaps the handle and an index built from the new
//!   file together, under the write lock, so a pair never mixes two files.
//!
//! Lock holds are short: a batch's merge is a few map updates per changed key, a range holds
//! the lock for the index walk only (rows are fetched after), a read-only txn for its duration
//! (as etcd does), and the longer readers re-take it in short stretches. The writer holds the
//! read side while it applies a batch, which only excludes itself.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::split::{KeyRange, SplitChild};
use concord_crypt::{KeyId, Sealer};
use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::{
    AllocateShardIdResponse, CrossShardOutcome, RaftCommand, ReadBarrierResponse, RevisionCeilingResponse,
    SplitShardResponse,
};
use concord_proto::etcdserverpb::{
    AlarmMember, AlarmResponse, CompactionResponse, DeleteRangeResponse, LeaseCheckpointResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use concord_proto::mvccpb::Event;
use redb::{
    Database, Durability, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    WriteTransaction,
};

use crate::alarm::{needs_space, raised_alarms, refused_while_corrupt};
use crate::error::{KvError, OpError, StorageError};
use crate::events::{attach_prev_kvs, read_events};
use crate::index::{KeyIndex, Rev};
use crate::keys::{self, META_APPLIED_INDEX, META_COMPACT_REVISION, META_REVISION};
use crate::lease::{all_leases, attached_keys};
use crate::range::{finish_range, plan_range};
use crate::txn::{is_txn_read_only, run_txn, ReadOnlyTarget};
use crate::view::View;
use crate::write::{header_at, Writer};

/// A non-durable batch commit is followed by a durable (fsync'd) one after this many batches…
/// The Raft log already holds every entry; these commits only bound replay and allow log
/// truncation.
const DURABLE_EVERY_BATCHES: u32 = 4096;
/// …or once this much time has passed since the last durable commit, whichever comes first.
/// redb keeps the pages of non-durable commits in its own write buffer, so a durable commit
/// writes every page dirtied since the last one and fsyncs them, on the Raft driver thread,
/// and every request waits behind it. Under 64 writers every 5 s, that took 100–200 ms and set
/// the put p99.9 (120–145 ms, max 160–190 ms); every 250 ms the p99.9 is 32–37 ms and the max
/// 37–44 ms, at the same throughput and p99. It also bounds the log replayed after a crash.
const DURABLE_EVERY: Duration = Duration::from_millis(250);

/// One committed Raft log entry handed to [`MvccStore::apply`].
#[derive(Debug, Clone, Copy)]
pub struct ApplyEntry<'a> {
    /// The entry's Raft log index.
    pub index: u64,
    /// The replicated command, or `None` for entries that carry none (Raft no-ops, configuration
    /// changes), which only advance the applied index.
    pub command: Option<&'a RaftCommand>,
    /// The global revision a shard's leader stamped on the command (multi-shard mode): its
    /// writes take this main revision instead of the store's next, so revisions may skip
    /// numbers. `None` in a single-shard cluster, where revisions stay dense as etcd's.
    pub stamp: Option<i64>,
}

/// The outcome of one successfully applied command.
///
/// Response headers carry only `revision` (the store revision after the command); the server
/// fills in cluster id, member id and Raft term.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteResult {
    /// A Put.
    Put(PutResponse),
    /// A DeleteRange.
    DeleteRange(DeleteRangeResponse),
    /// A Txn (with at least one write, or one sent through Raft anyway).
    Txn(TxnResponse),
    /// A Compaction.
    Compaction(CompactionResponse),
    /// A lease grant.
    LeaseGrant(LeaseGrantResponse),
    /// A lease revoke.
    LeaseRevoke(LeaseRevokeResponse),
    /// A lease checkpoint.
    LeaseCheckpoint(LeaseCheckpointResponse),
    /// An alarm request (get, activate or deactivate).
    Alarm(AlarmResponse),
    /// A change to the auth store, or an authentication (see [`crate::auth`]).
    Auth(crate::auth::AuthApplied),
    /// The revision oracle's ceiling raised (multi-shard mode).
    RevisionCeiling(RevisionCeilingResponse),
    /// A linearizable read's barrier applied (multi-shard mode): its header carries its stamp.
    ReadBarrier(ReadBarrierResponse),
    /// The store's shard split (see `split.rs`): the child's group and range.
    ShardSplit(SplitShardResponse),
    /// A new shard's group id handed out (group 1).
    ShardId(AllocateShardIdResponse),
    /// A phase of a write across shards applied (see `cross_shard.rs`).
    CrossShard(CrossShardOutcome),
}

impl WriteResult {
    /// The store revision after this command: what etcd reports in the response header.
    pub fn revision(&self) -> i64 {
        let header = match self {
            WriteResult::Put(r) => &r.header,
            WriteResult::DeleteRange(r) => &r.header,
            WriteResult::Txn(r) => &r.header,
            WriteResult::Compaction(r) => &r.header,
            WriteResult::LeaseGrant(r) => &r.header,
            WriteResult::LeaseRevoke(r) => &r.header,
            WriteResult::LeaseCheckpoint(r) => &r.header,
            WriteResult::Alarm(r) => &r.header,
            WriteResult::Auth(r) => &r.header,
            WriteResult::RevisionCeiling(r) => &r.header,
            WriteResult::ReadBarrier(r) => &r.header,
            WriteResult::ShardSplit(r) => &r.header,
            WriteResult::ShardId(r) => &r.header,
            WriteResult::CrossShard(r) => &r.header,
        };
        header.as_ref().map_or(0, |h| h.revision)
    }
}

/// Bookkeeping of the single writer: when the next commit must be durable.
pub(crate) struct WriterState {
    batches_since_durable: u32,
    last_durable: Instant,
}

/// Etcd's MVCC key-value state machine, persisted in one redb file. See the crate docs for the
/// table layout and invariants.
///
/// Writes come only through [`apply`](Self::apply) (committed Raft entries, in log order);
/// reads ([`range`](Self::range), [`txn_read`](Self::txn_read), [`events`](Self::events)) run on
/// the in-memory key index and redb read snapshots (see the module docs for how the two are
/// kept in step), never wait for a batch to be applied, and never see part of one.
///
/// The redb handle can be replaced as a whole ([`install_snapshot`](Self::install_snapshot),
/// [`defragment`](Self::defragment)), together with an index rebuilt from the new file: both sit
/// behind a lock that readers hold only briefly, and each read keeps its own clone of the
/// handle, so a read that began before a replacement finishes on the old file.
pub struct MvccStore {
    path: PathBuf,
    shared: RwLock<Shared>,
    writer: Mutex<WriterState>,
    applied_index: AtomicU64,
    durable_applied_index: AtomicU64,
    revision: AtomicI64,
    compact_revision: AtomicI64,
    /// Seals new values (encryption at rest); see [`open_with`](Self::open_with).
    sealer: Option<Arc<Sealer>>,
    /// Whether the file's `meta` already names the sealer's key (see `sealing.rs`).
    sealing_recorded: AtomicBool,
    /// The file's size as of the last applied batch (see [`db_size_hint`](Self::db_size_hint)).
    size_after_apply: AtomicU64,
    /// The keys the store holds (see `split.rs`), narrowed before a split's commit.
    key_range: RwLock<KeyRange>,
    /// Whether the store holds a part of a write across shards (see `cross_shard.rs`), so that
    /// looking for one costs nothing while none is held.
    holds_cross_shard: AtomicBool,
    /// Makes the next batch fail just before its commit, as a storage error would.
    #[cfg(test)]
    pub(crate) fail_next_batch: std::sync::atomic::AtomicBool,
}

/// The store-wide counters as stored in `meta`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub applied_index: u64,
    pub revision: i64,
    pub compact_revision: i64,
}

/// Reads the counters from `meta`, with the defaults of an empty store for missing rows.
pub(crate) fn read_meta<T: ReadableTable<&'static str, u64>>(meta: &T) -> Result<Meta, StorageError> {
    let get = |name: &str| -> Result<Option<u64>, StorageError> { Ok(meta.get(name)?.map(|guard| guard.value())) };
    Ok(Meta {
        applied_index: get(META_APPLIED_INDEX)?.unwrap_or(0),
        revision: get(META_REVISION)?.map_or(1, |r| r as i64),
        compact_revision: get(META_COMPACT_REVISION)?.map_or(-1, |r| r as i64),
    })
}

/// `revisions` opened in a read snapshot.
pub(crate) type RevisionsRead = ReadOnlyTable<crate::keys::RowId, &'static [u8]>;

/// What the lock of [`MvccStore`] guards: the database handle and the key index of its
/// committed state, which are replaced together.
pub(crate) struct Shared {
    pub db: Arc<Database>,
    pub index: KeyIndex,
}

impl Shared {
    /// Whether this is still the state `snap` was paired with (see the module docs): the same
    /// file, and no compaction since.
    pub fn pairs_with(&self, snap: &Snapshot) -> bool {
        Arc::ptr_eq(&self.db, &snap.db) && self.index.compact_revision() == snap.compact_revision
    }
}

/// A redb read snapshot paired with the key index (see [`MvccStore::read_state`]), with the
/// revision and compaction point of that index. It holds its own handle on the database, so a
/// replacement of the store's file does not cut it short.
pub(crate) struct Snapshot {
    pub revisions: RevisionsRead,
    /// The revision reads on this snapshot stand at (the index's, not redb's `meta`, which may
    /// already be ahead).
    pub revision: i64,
    pub compact_revision: i64,
    // Dropped after the table, in declaration order.
    _txn: ReadTransaction,
    db: Arc<Database>,
}

/// How many times a reader retries a snapshot that is ahead of the index (a compaction that is
/// committed but not merged yet) before it reports the store as broken: merging takes the
/// writer microseconds to milliseconds, so this is never reached unless they truly disagree.
const PAIRING_ATTEMPTS: u32 = 1_000_000;

/// redb's page cache for one store. redb's default (1 GiB) lets a member's memory grow with its
/// data. The hot pages of a write load (the B-tree's upper levels, the revision table's tail)
/// fit in far less, reads of the newest versions go through the in-memory key index straight to
/// one page, and a miss here is a copy from the OS page cache, which still holds the file.
/// BENCHMARKS.md has reads and memory at this size (2026-11-25, night).
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// How every store file is opened or created: with [`CACHE_BYTES`] of cache.
pub(crate) fn database_builder() -> redb::Builder {
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    builder
}

/// Readies a freshly opened redb file for use as a store: moves a file of the old layout to the
/// current one (see `legacy.rs`), creates every table it lacks (so read snapshots can always
/// open them) and reads its counters.
pub(crate) fn prepare_database(db: Database) -> Result<(Database, Meta), StorageError> {
    let txn = db.begin_write()?;
    let meta = {
        crate::legacy::migrate(&txn)?;
        txn.open_table(keys::REVISIONS)?;
        txn.open_table(keys::LEASES)?;
        txn.open_table(keys::LEASE_KEYS)?;
        txn.open_table(keys::LEASE_REMAINING)?;
        txn.open_table(keys::ALARMS)?;
        txn.open_table(crate::split::SHARD)?;
        txn.open_table(crate::cross_shard::HELD)?;
        txn.open_table(crate::cross_shard::OUTCOMES)?;
        crate::auth::create_tables(&txn)?;
        read_meta(&txn.open_table(keys::META)?)?
    };
    txn.commit()?;
    Ok((db, meta))
}

/// The key range recorded in a prepared database.
fn read_key_range(db: &Database) -> Result<KeyRange, StorageError> {
    Ok(crate::split::read_shard_table(&db.begin_read()?.open_table(crate::split::SHARD)?)?.0)
}

/// Builds the key index of a prepared database, from one read snapshot.
fn load_index(db: &Database) -> Result<KeyIndex, StorageError> {
    let started = Instant::now();
    let txn = db.begin_read()?;
    let meta = read_meta(&txn.open_table(keys::META)?)?;
    let index = KeyIndex::load(&txn.open_table(keys::REVISIONS)?, meta.revision, meta.compact_revision)?;
    tracing::info!(
        keys = index.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "built key index"
    );
    Ok(index)
}

impl MvccStore {
    /// Opens or creates the store at `path` (a file path; missing parent directories are
    /// created).
    pub fn open(path: &Path) -> Result<MvccStore, StorageError> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let (db, meta) = prepare_database(database_builder().create(path)?)?;
        let index = load_index(&db)?;
        let key_range = read_key_range(&db)?;
        tracing::info!(
            path = %path.display(),
            applied_index = meta.applied_index,
            revision = meta.revision,
            compact_revision = meta.compact_revision,
            "opened MVCC store"
        );
        Ok(MvccStore {
            path: path.to_path_buf(),
            shared: RwLock::new(Shared {
                db: Arc::new(db),
                index,
            }),
            writer: Mutex::new(WriterState {
                batches_since_durable: 0,
                last_durable: Instant::now(),
            }),
            applied_index: AtomicU64::new(meta.applied_index),
            durable_applied_index: AtomicU64::new(meta.applied_index),
            revision: AtomicI64::new(meta.revision),
            compact_revision: AtomicI64::new(meta.compact_revision),
            sealer: None,
            sealing_recorded: AtomicBool::new(false),
            size_after_apply: AtomicU64::new(std::fs::metadata(path).map_or(0, |m| m.len())),
            key_range: RwLock::new(key_range),
            holds_cross_shard: AtomicBool::new(true),
            #[cfg(test)]
            fail_next_batch: Default::default(),
        })
    }

    /// Opens the store as [`open`](Self::open) does, for a member: with `sealer`, new values are
    /// sealed and its keys can open sealed ones (they are registered for this process). Fails
    /// when the file holds values sealed with a key `sealer` lacks, or any sealed value when
    /// there is no sealer. Plain values already in the file stay readable either way.
    pub fn open_with(path: &Path, sealer: Option<Arc<Sealer>>) -> Result<MvccStore, StorageError> {
        let mut store = MvccStore::open(path)?;
        let ids = store.sealed_key_ids()?;
        crate::sealing::check_keys(&ids, sealer.as_deref(), &path.display().to_string())?;
        if let Some(sealer) = &sealer {
            concord_crypt::register(sealer.keyring());
            *store.sealing_recorded.get_mut() = ids.contains(&sealer.active_id());
            let ids: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
            tracing::info!(
                sealing_with = %sealer.active_id(),
                sealed_with = %ids.join(","),
                "store values are sealed (encryption at rest)"
            );
        }
        store.sealer = sealer;
        Ok(store)
    }

    /// The keys that may have sealed values of the store's file (its `meta` rows), ascending.
    /// After a key rotation, a key drops out of this list when a defragment re-sealed every
    /// value.
    pub fn sealed_key_ids(&self) -> Result<Vec<KeyId>, StorageError> {
        let db = self.db();
        let txn = db.begin_read()?;
        crate::sealing::sealed_ids(&txn.open_table(keys::META)?)
    }

    /// The sealer new values are sealed with, if any.
    pub(crate) fn sealer(&self) -> Option<&Sealer> {
        self.sealer.as_deref()
    }

    /// The Raft log index of the last applied entry (possibly not yet durable, see
    /// [`durable_applied_index`](Self::durable_applied_index)).
    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }

    /// The applied index of the last durable (fsync'd) commit: after a crash the store reopens at
    /// least here, so the Raft log must keep every entry above it.
    pub fn durable_applied_index(&self) -> u64 {
        self.durable_applied_index.load(Ordering::Acquire)
    }

    /// The store revision: 1 for an empty store, +1 per command that changed something.
    pub fn current_revision(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }

    /// The revision of the last compaction, or -1 if the store was never compacted (as etcd).
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision.load(Ordering::Acquire)
    }

    /// The path of the store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database handle and key index, read-locked.
    pub(crate) fn shared(&self) -> RwLockReadGuard<'_, Shared> {
        self.shared.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The database handle and key index, write-locked; only the writer (holding the writer
    /// lock) takes it.
    fn shared_mut(&self) -> RwLockWriteGuard<'_, Shared> {
        self.shared.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The current database handle. Readers that need no key index clone it and let go of the
    /// lock at once.
    pub(crate) fn db(&self) -> Arc<Database> {
        self.shared().db.clone()
    }

    /// Takes the single-writer lock: no batch is applied while it is held.
    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, WriterState> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key index, read-locked, and a redb read snapshot that holds every row it names (see
    /// the module docs). Reads stand at the index's revision, which the snapshot records.
    pub(crate) fn read_state(&self) -> Result<(RwLockReadGuard<'_, Shared>, Snapshot), StorageError> {
        for _ in 0..PAIRING_ATTEMPTS {
            let shared = self.shared();
            let db = shared.db.clone();
            let txn = db.begin_read()?;
            let meta = read_meta(&txn.open_table(keys::META)?)?;
            if meta.compact_revision == shared.index.compact_revision() {
                let snap = Snapshot {
                    revisions: txn.open_table(keys::REVISIONS)?,
                    revision: shared.index.revision(),
                    compact_revision: shared.index.compact_revision(),
                    _txn: txn,
                    db,
                };
                return Ok((shared, snap));
            }
            // A compaction committed but not merged into the index yet: let the writer merge it.
            drop(shared);
            std::thread::yield_now();
        }
        Err(StorageError::Corrupt(
            "the key index and the store's file disagree on the compaction point".into(),
        ))
    }

    /// Serves a Range against a consistent snapshot. The response header is left `None` (the
    /// server fills it); the store revision of the snapshot, which etcd reports as the header
    /// revision, is returned alongside.
    pub fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, i64), KvError> {
        let (shared, snap) = self.read_state()?;
        let plan = plan_range(&shared.index, snap.revision, snap.compact_revision, req)?;
        // The rows are fetched from the snapshot alone: no need to hold up the writer meanwhile.
        drop(shared);
        let resp = finish_range(&snap.revisions, plan, req)?;
        Ok((resp, snap.revision))
    }

    /// Serves a read-only Txn (see [`is_txn_read_only`]) against a consistent snapshot, as etcd
    /// does without going through Raft. Header handling as for [`range`](Self::range): the
    /// top-level header is `None` and the snapshot revision is returned alongside.
    pub fn txn_read(&self, req: &TxnRequest) -> Result<(TxnResponse, i64), KvError> {
        if !is_txn_read_only(req) {
            return Err(KvError::Internal("txn_read given a txn that writes".into()));
        }
        // Compares and ranges interleave with row reads here, so the lock is held throughout, as
        // etcd holds its index lock for a read txn; such txns are short.
        let (shared, snap) = self.read_state()?;
        let view = View {
            index: &shared.index,
            rows: &snap.revisions,
            rev: snap.revision,
            compact_rev: snap.compact_revision,
        };
        let resp = run_txn(&mut ReadOnlyTarget { view }, req)?;
        Ok((resp, snap.revision))
    }

    /// Reads the change history from `start_rev` on, in revision order, for watchers catching
    /// up. Returns the events of every main revision in `[start_rev, snapshot revision]`, but
    /// stops at the end of the first main revision at which `max_events` is reached (a revision
    /// is never split), together with the snapshot revision. When fewer than `max_events` come
    /// back the history is exhausted up to that revision.
    ///
    /// `start_rev` below the compaction point fails with `Compacted`; at the compaction point
    /// itself every change is still available. With `prev_kv`, put and delete events carry the
    /// version the change replaced, when history still holds it.
    pub fn events(&self, start_rev: i64, max_events: usize, prev_kv: bool) -> Result<(Vec<Event>, i64), KvError> {
        loop {
            let snap = self.read_state()?.1;
            if start_rev < snap.compact_revision {
                return Err(KvError::Compacted);
            }
            let (mut events, ids) = read_events(&snap.revisions, start_rev.max(1), snap.revision, max_events)?;
            if prev_kv && !events.is_empty() {
                let prevs: Vec<Option<Rev>> = {
                    let shared = self.shared();
                    if !shared.pairs_with(&snap) {
                        // Compacted (or replaced) meanwhile: the index may have lost versions
                        // this snapshot still shows.
                        continue;
                    }
                    events
                        .iter()
                        .zip(&ids)
                        .map(|(event, &(main, sub))| {
                            let key = event.kv.as_ref().map_or(&[][..], |kv| &kv.key[..]);
                            shared.index.version_before(key, main, sub)
                        })
                        .collect()
                };
                attach_prev_kvs(&snap.revisions, &mut events, &prevs)?;
            }
            return Ok((events, snap.revision));
        }
    }

    /// Every granted lease with the TTL (seconds) it was granted with, ascending by id: what the
    /// server's lessor rebuilds its expiry clock from (on start and on becoming leader).
    pub fn leases(&self) -> Result<Vec<(i64, i64)>, KvError> {
        let db = self.db();
        let txn = db.begin_read()?;
        Ok(all_leases(&txn.open_table(keys::LEASES)?)?)
    }

    /// The leases whose last checkpoint recorded less than their full TTL: id → seconds left
    /// then (see `keys::LEASE_REMAINING`).
    pub fn lease_remaining_ttls(&self) -> Result<std::collections::HashMap<i64, i64>, KvError> {
        let db = self.db();
        let txn = db.begin_read()?;
        let table = txn.open_table(keys::LEASE_REMAINING)?;
        let mut remaining = std::collections::HashMap::new();
        for row in table.iter()? {
            let (id, left) = row?;
            remaining.insert(id.value(), left.value());
        }
        Ok(remaining)
    }

    /// The TTL (seconds) lease `id` was granted with, or `None` if it is not granted.
    pub fn lease_ttl(&self, id: i64) -> Result<Option<i64>, KvError> {
        let db = self.db();
        let txn = db.begin_read()?;
        let leases = txn.open_table(keys::LEASES)?;
        let ttl = leases.get(id)?.map(|guard| guard.value());
        Ok(ttl)
    }

    /// The keys attached to lease `id`, ascending (empty when the lease has none or does not
    /// exist).
    pub fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, KvError> {
        let db = self.db();
        let txn = db.begin_read()?;
        Ok(attached_keys(&txn.open_table(keys::LEASE_KEYS)?, id)?)
    }

    /// Every raised alarm, ascending by (member id, alarm type): what etcd's alarm GET of type
    /// `NONE` answers, read from the local store without going through Raft.
    pub fn alarms(&self) -> Result<Vec<AlarmMember>, KvError> {
        let db = self.db();
        let txn = db.begin_read()?;
        Ok(raised_alarms(&txn.open_table(keys::ALARMS)?, None)?)
    }

    /// The size in bytes of the store's file on disk (0 if it cannot be read), as etcd's
    /// `db_size`.
    pub fn db_size(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// The file's size as of the last applied batch, without a system call: cheap enough to
    /// check on every write. It can be stale after a defragmentation or a snapshot install
    /// until the next batch; callers that refuse work on it confirm with [`db_size`](Self::db_size).
    pub fn db_size_hint(&self) -> u64 {
        self.size_after_apply.load(Ordering::Acquire)
    }

    /// The bytes of the file that hold live data, as etcd's `db_size_in_use`: the size of every
    /// page of the store's tables as of now (redb's own bookkeeping pages, a handful, are not
    /// counted); free pages, which only [`defragment`](Self::defragment) gives back to the file
    /// system, are not. Falls back to [`db_size`](Self::db_size) if redb cannot say.
    ///
    /// Runs on a read snapshot, so it never holds up applies, but it visits every page of the
    /// store (about 0.15 s per GiB when cached): call it from a blocking context, and not in a
    /// tight loop on a large store.
    pub fn db_size_in_use(&self) -> u64 {
        match self.table_bytes() {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::warn!(%err, "cannot read storage stats");
                self.db_size()
            }
        }
    }

    /// The total size of every table's pages in a read snapshot.
    fn table_bytes(&self) -> Result<u64, StorageError> {
        let db = self.db();
        let txn = db.begin_read()?;
        let mut bytes = 0;
        for table in txn.list_tables()? {
            let stats = txn.open_untyped_table(table)?.stats()?;
            bytes += stats.stored_bytes() + stats.metadata_bytes() + stats.fragmented_bytes();
        }
        Ok(bytes)
    }

    /// Applies committed Raft entries in one redb write transaction and records the last index
    /// as applied.
    ///
    /// Entries with `index <= applied_index()` are skipped, so replay after a restart is
    /// idempotent. Consecutive entries may share an index (the proposals of one batch entry of
    /// the log); they are applied, or skipped, together. An entry without a command, or whose command is not the store's
    /// (`PublishMember`, `UpdateMember`: membership, which the server handles), only advances the
    /// applied index and yields no result. Every other entry (alarms included) yields
    /// `Ok(WriteResult)` or a deterministic `Err(KvError)`; a failed command changes nothing and
    /// does not affect the rest of the batch. A [`StorageError`] abandons the whole batch
    /// (nothing of it becomes visible); redb then refuses further writes until the store is
    /// reopened.
    #[allow(clippy::type_complexity)] // the signature the Raft layer is written against
    pub fn apply(&self, entries: &[ApplyEntry<'_>]) -> Result<Vec<(u64, Result<WriteResult, KvError>)>, StorageError> {
        let mut state = self.lock_writer();
        let mut last_index = self.applied_index();
        if entries.iter().all(|e| e.index <= last_index) {
            return Ok(Vec::new());
        }
        let durable =
            state.batches_since_durable + 1 >= DURABLE_EVERY_BATCHES || state.last_durable.elapsed() >= DURABLE_EVERY;
        // Only this thread (holding the writer lock) ever write-locks `shared`, so holding the
        // read side for the batch blocks nobody.
        let shared = self.shared();
        let mut txn = shared.db.begin_write()?;
        if !durable {
            txn.set_durability(Durability::None)?;
        }

        let mut results = Vec::new();
        let mut split = false;
        // Where the store's range ends after a split in this batch.
        let mut split_end = None;
        let stamp_floor;
        let holds_cross_shard;
        let stores_dir = self.path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
        let (revision, compact_revision, revision_ceiling, changes) = {
            let mut writer = Writer::open(
                &txn,
                &shared.index,
                self.current_revision(),
                self.compact_revision(),
                self.sealer.clone(),
            )?;
            let mut auth = crate::auth::AuthTables::open(&txn)?;
            // Entries come in log order; several in a row may share an index (the proposals of
            // one batch entry), and those are applied or skipped together.
            let applied_before = last_index;
            for entry in entries {
                if entry.index <= applied_before {
                    continue;
                }
                last_index = entry.index;
                let Some(command) = entry.command else {
                    continue;
                };
                if let Some(result) = apply_command(&mut writer, &mut auth, &txn, command, entry.stamp, &stores_dir)? {
                    results.push((entry.index, result));
                }
            }
            let counters = (writer.revision, writer.compact_revision, writer.revision_ceiling);
            stamp_floor = writer.stamp_floor;
            holds_cross_shard = writer.held.is_some();
            if writer.split {
                // Readers check the range after reading: narrow it before the moved keys go.
                *self.key_range.write().unwrap_or_else(|e| e.into_inner()) = writer.key_range.clone();
                split = true;
                split_end = writer.key_range.end.clone();
            }
            (counters.0, counters.1, counters.2, writer.index.into_changes())
        };
        write_meta(
            &txn,
            last_index,
            revision,
            compact_revision,
            revision_ceiling,
            stamp_floor,
        )?;
        let record_key = match &self.sealer {
            Some(sealer) if !self.sealing_recorded.load(Ordering::Acquire) => Some(sealer.active_id()),
            _ => None,
        };
        if let Some(id) = record_key {
            crate::sealing::record_key(&txn, id, revision)?;
        }
        #[cfg(test)]
        if self.fail_next_batch.swap(false, Ordering::SeqCst) {
            return Err(StorageError::Corrupt("injected failure".into()));
        }
        drop(shared);
        // On any error up to here the batch's index changes are simply dropped with the
        // transaction: the index only ever learns of committed batches.
        txn.commit()?;
        if record_key.is_some() {
            self.sealing_recorded.store(true, Ordering::Release);
        }
        if !changes.is_empty() || compact_revision != self.compact_revision() || split {
            let mut shared = self.shared_mut();
            shared.index.apply(changes, revision, compact_revision);
            if let Some(end) = split_end.as_deref() {
                // The moved keys left the file with their history.
                shared.index.forget_from(end);
            }
        }

        if holds_cross_shard {
            self.holds_cross_shard.store(true, Ordering::Release);
        }
        self.applied_index.store(last_index, Ordering::Release);
        self.revision.store(revision, Ordering::Release);
        self.compact_revision.store(compact_revision, Ordering::Release);
        if durable {
            self.durable_applied_index.store(last_index, Ordering::Release);
            state.batches_since_durable = 0;
            state.last_durable = Instant::now();
        } else {
            state.batches_since_durable += 1;
        }
        self.size_after_apply.store(self.db_size(), Ordering::Release);
        Ok(results)
    }

    /// The keys the store holds: all of them unless it was split or made by a split.
    pub fn key_range(&self) -> KeyRange {
        self.key_range.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the store holds every key of etcd's `key`/`range_end` pair. A read checks it
    /// after reading: a split that moved the keys before the read ends makes it `false`.
    pub fn covers(&self, key: &[u8], range_end: &[u8]) -> bool {
        self.key_range
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .covers(key, range_end)
    }

    /// The part of a write across shards this store holds, if any (see `cross_shard.rs`): a
    /// held part whose coordinator went quiet is resolved by asking its primary shard.
    pub fn held_cross_shard(&self) -> Result<Option<concord_proto::concordpb::PrepareCrossShard>, StorageError> {
        if !self.holds_cross_shard.load(Ordering::Acquire) {
            return Ok(None);
        }
        let held = crate::cross_shard::held_in(&self.db().begin_read()?)?;
        if held.is_none() {
            // Only the writer sets it again, after a batch that left a part held; while a batch
            // is applying, the flag stays (a split's batch can take seconds, and callers run on
            // async workers).
            if let Ok(_writer) = self.writer.try_lock() {
                if crate::cross_shard::held_in(&self.db().begin_read()?)?.is_none() {
                    self.holds_cross_shard.store(false, Ordering::Release);
                }
            }
        }
        Ok(held)
    }

    /// The shards split off this store, ascending by start key.
    pub fn split_children(&self) -> Result<Vec<SplitChild>, StorageError> {
        let txn = self.db().begin_read()?;
        Ok(crate::split::read_shard_table(&txn.open_table(crate::split::SHARD)?)?.1)
    }

    /// The revision oracle's committed ceiling (see [`WriteResult::RevisionCeiling`]); 0 while
    /// it was never raised.
    pub fn revision_ceiling(&self) -> Result<i64, StorageError> {
        let txn = self.db().begin_read()?;
        let meta = txn.open_table(keys::META)?;
        Ok(meta
            .get(keys::META_REVISION_CEILING)?
            .map_or(0, |ceiling| ceiling.value() as i64))
    }

    /// Forces everything applied so far onto disk (fsync).
    pub fn sync(&self) -> Result<(), StorageError> {
        let mut state = self.lock_writer();
        let txn = self.db().begin_write()?;
        txn.commit()?;
        self.durable_applied_index
            .store(self.applied_index(), Ordering::Release);
        state.batches_since_durable = 0;
        state.last_durable = Instant::now();
        Ok(())
    }
}

impl MvccStore {
    /// Opens whatever file is now at the store's path and makes it the store: the handle is
    /// swapped together with a key index built from the new file (reads already running keep
    /// the old ones) and every cached counter is reloaded. The caller holds the writer lock
    /// (`state`) and has made the new file durable, so its applied index is durable too.
    pub(crate) fn reopen_file(&self, state: &mut WriterState) -> Result<Meta, StorageError> {
        let (db, meta) = prepare_database(database_builder().open(&self.path)?)?;
        let index = load_index(&db)?;
        *self.key_range.write().unwrap_or_else(|e| e.into_inner()) = read_key_range(&db)?;
        let old = std::mem::replace(
            &mut *self.shared_mut(),
            Shared {
                db: Arc::new(db),
                index,
            },
        );
        self.holds_cross_shard.store(true, Ordering::Release);
        self.applied_index.store(meta.applied_index, Ordering::Release);
        self.durable_applied_index.store(meta.applied_index, Ordering::Release);
        self.revision.store(meta.revision, Ordering::Release);
        self.compact_revision.store(meta.compact_revision, Ordering::Release);
        state.batches_since_durable = 0;
        state.last_durable = Instant::now();
        if let Some(sealer) = &self.sealer {
            let recorded = self.sealed_key_ids()?.contains(&sealer.active_id());
            self.sealing_recorded.store(recorded, Ordering::Release);
        }
        // Outside the lock: closing the old file (if no reader still holds it) and freeing the old
        // index may take a moment.
        drop(old);
        Ok(meta)
    }
}

/// Applies one command inside the batch. `Ok(None)` for commands that are not KV operations.
fn apply_command(
    writer: &mut Writer<'_, '_>,
    auth: &mut crate::auth::AuthTables<'_>,
    txn: &WriteTransaction,
    command: &RaftCommand,
    stamp: Option<i64>,
    stores_dir: &Path,
) -> Result<Option<Result<WriteResult, KvError>>, StorageError> {
    let (command, sender) = crate::auth::open_envelope(command);
    let op = command.and_then(|command| command.op.as_ref());
    // The last phases of a write across shards take no stamp of their own (a follower's proposal
    // of one is stamped by its leader like any other): a commit applies at the write's revision.
    let phase = matches!(op, Some(Op::CommitCrossShard(_) | Op::AbortCrossShard(_)));
    let stamp = stamp.filter(|_| !phase);
    if let Err(refused) = writer.begin_command(stamp) {
        return Ok(Some(Err(refused)));
    }
    if let Some(refused) = stamp_refusal(writer, stamp, op, phase) {
        return Ok(Some(Err(refused)));
    }
    if let Some(stamp) = stamp {
        writer.stamp_floor = writer.stamp_floor.max(stamp);
    }
    // The sender's permissions first, as etcd's auth applier wraps every other check.
    let Some(command) = command else {
        return Ok(Some(Err(KvError::EmptyCommand)));
    };
    if let Err(refused) = auth.authorize(writer, sender, command)? {
        return Ok(Some(Err(refused)));
    }
    let outcome = match &command.op {
        Some(op) if !writer.key_range.admits(op) => Err(OpError::Kv(KvError::WrongShard)),
        Some(op) if writer.corrupt && refused_while_corrupt(op) => Err(OpError::Kv(KvError::Corrupt)),
        Some(op) if writer.no_space && needs_space(op) => Err(OpError::Kv(KvError::NoSpace)),
        Some(Op::Put(req)) => writer.put(req).map(WriteResult::Put),
        Some(Op::DeleteRange(req)) => writer.delete_range(req).map(WriteResult::DeleteRange),
        Some(Op::Txn(req)) => run_txn(writer, req).map(WriteResult::Txn),
        Some(Op::Compaction(req)) => writer.compact(req).map(WriteResult::Compaction),
        Some(Op::LeaseGrant(req)) => writer.lease_grant(req).map(WriteResult::LeaseGrant),
        Some(Op::LeaseRevoke(req)) => writer.lease_revoke(req).map(WriteResult::LeaseRevoke),
        Some(Op::LeaseCheckpoint(req)) => writer.lease_checkpoint(req).map(WriteResult::LeaseCheckpoint),
        Some(Op::Alarm(req)) => writer.alarm(req).map(WriteResult::Alarm),
        Some(Op::Auth(req)) => auth.apply(req, writer.revision).map(WriteResult::Auth),
        Some(Op::RaiseRevisionCeiling(req)) => Ok(WriteResult::RevisionCeiling(writer.raise_revision_ceiling(req))),
        Some(Op::ReadBarrier(_)) => Ok(WriteResult::ReadBarrier(ReadBarrierResponse::default())),
        Some(Op::PrepareCrossShard(req)) => writer.prepare_cross_shard(req).map(WriteResult::CrossShard),
        Some(Op::CommitCrossShard(req)) => writer.commit_cross_shard(req).map(WriteResult::CrossShard),
        Some(Op::AbortCrossShard(req)) => writer.abort_cross_shard(req).map(WriteResult::CrossShard),
        Some(Op::SplitShard(req)) => {
            let child = crate::split::shard_store_path(stores_dir, req.child_group);
            writer
                .split_shard(txn, req, &child, auth.enabled())
                .map(WriteResult::ShardSplit)
        }
        Some(Op::AllocateShardId(req)) => crate::split::allocate_shard_id(txn, req)
            .map(WriteResult::ShardId)
            .map_err(OpError::Storage),
        // An envelope inside an envelope: never proposed.
        Some(Op::Authorized(_)) => Err(OpError::Kv(KvError::EmptyCommand)),
        None => Err(OpError::Kv(KvError::EmptyCommand)),
        // Membership changes are the server's business, not the store's.
        Some(Op::PublishMember(_)) => return Ok(None),
        Some(Op::UpdateMember(_)) => return Ok(None),
        Some(Op::RecordShard(_)) => return Ok(None),
    };
    let revision = writer.end_command();
    match outcome {
        Ok(mut result) => {
            // The top-level header reports the revision after the whole command; a stamped one
            // that wrote nothing reports its stamp, which is above every revision handed out
            // before it was sent, whatever the shard (this shard's writes below it are applied:
            // its log is in stamp order).
            let reported = stamp.map_or(revision, |stamp| stamp.max(revision));
            let header = Some(header_at(reported));
            match &mut result {
                WriteResult::Put(r) => r.header = header,
                WriteResult::DeleteRange(r) => r.header = header,
                WriteResult::Txn(r) => r.header = header,
                WriteResult::Compaction(r) => r.header = header,
                WriteResult::LeaseGrant(r) => r.header = header,
                WriteResult::LeaseRevoke(r) => r.header = header,
                WriteResult::LeaseCheckpoint(r) => r.header = header,
                WriteResult::Alarm(r) => r.header = header,
                WriteResult::Auth(r) => r.header = header,
                WriteResult::RevisionCeiling(r) => r.header = header,
                WriteResult::ReadBarrier(r) => r.header = header,
                WriteResult::ShardSplit(r) => r.header = header,
                WriteResult::ShardId(r) => r.header = header,
                WriteResult::CrossShard(r) => r.header = header,
            }
            Ok(Some(Ok(result)))
        }
        // Every KvError is raised before the command writes anything, so there is nothing to undo.
        Err(OpError::Kv(err)) => Ok(Some(Err(err))),
        Err(OpError::Storage(err)) => Err(err),
    }
}

/// Why a command stamped `stamp` may not apply now: the store holds its part of a write across
/// shards and the command is stamped above that write's revision (or splits the store), or the
/// command writes and its stamp is not above the store's stamp floor (a read barrier or a
/// cross-shard commit counted on nothing of the shard landing there). `None` when it may.
fn stamp_refusal(writer: &Writer<'_, '_>, stamp: Option<i64>, op: Option<&Op>, phase: bool) -> Option<KvError> {
    if phase {
        return None;
    }
    // A prepare while another write is held is refused by the prepare itself (the same one
    // again is not refused).
    let prepare = matches!(op, Some(Op::PrepareCrossShard(_)));
    if let Some(refused) = writer
        .refused_while_held(stamp, matches!(op, Some(Op::SplitShard(_))))
        .filter(|_| !prepare)
    {
        return Some(refused);
    }
    match (stamp, op) {
        (_, Some(Op::ReadBarrier(_))) => None,
        (Some(stamp), _) if stamp <= writer.stamp_floor => Some(KvError::StaleStamp {
            stamp,
            revision: writer.stamp_floor,
        }),
        _ => None,
    }
}

fn write_meta(
    txn: &WriteTransaction,
    applied_index: u64,
    revision: i64,
    compact_revision: i64,
    revision_ceiling: i64,
    stamp_floor: i64,
) -> Result<(), StorageError> {
    let mut meta = txn.open_table(keys::META)?;
    if stamp_floor > 0 {
        meta.insert(keys::META_STAMP_FLOOR, stamp_floor as u64)?;
    }
    meta.insert(META_APPLIED_INDEX, applied_index)?;
    meta.insert(META_REVISION, revision as u64)?;
    if compact_revision >= 0 {
        meta.insert(META_COMPACT_REVISION, compact_revision as u64)?;
    }
    if revision_ceiling > 0 {
        meta.insert(keys::META_REVISION_CEILING, revision_ceiling as u64)?;
    }
    Ok(())
}

#[cfg(test)]
impl MvccStore {
    /// Every `revisions` row as (key, main, sub, is_tombstone), ordered by key, then revision
    /// (the order of the old `kv` table, which tests were written against).
    pub(crate) fn kv_rows(&self) -> Vec<(Vec<u8>, u64, u64, bool)> {
        let snap = self.read_state().unwrap().1;
        let mut rows: Vec<_> = snap
            .revisions
            .iter()
            .unwrap()
            .map(|row| {
                let (id, value) = row.unwrap();
                let (main, sub) = crate::keys::split_row_id(id.value());
                let row = crate::keys::Row::decode(value.value()).unwrap();
                (row.key.to_vec(), main, sub, row.record.is_none())
            })
            .collect();
        rows.sort();
        rows
    }

    /// Every `revisions` row's (main, sub), ascending.
    pub(crate) fn change_ids(&self) -> Vec<(u64, u64)> {
        let snap = self.read_state().unwrap().1;
        snap.revisions
            .iter()
            .unwrap()
            .map(|row| crate::keys::split_row_id(row.unwrap().0.value()))
            .collect()
    }

    /// The keys live at the current revision, ascending, as the key index has them.
    pub(crate) fn latest_keys(&self) -> Vec<Vec<u8>> {
        self.shared().index.live_keys()
    }

    /// Checks the crate's central invariant: the key index equals the one rebuilt from the file.
    pub(crate) fn assert_index_matches_file(&self) {
        let shared = self.shared();
        let rebuilt = load_index(&shared.db).unwrap();
        assert_eq!(shared.index, rebuilt, "key index differs from the file's rows");
    }
}
