//! A store's key range, and splitting it (multi-shard mode).
//!
//! A store that has been split, or made by a split, records the key range it holds in its
//! `shard` table; a store that never was holds every key and records nothing. Every write is
//! checked against the range at apply ([`KeyRange::admits`]), so a write proposed before a split
//! and applied after it is refused the same way on every replica, and its member sends it again
//! to the new shard.
//!
//! A split ([`Writer::split_shard`]) runs inside an apply batch, at its place in the log: the
//! `revisions` rows of the moved keys (every retained version) are copied into a new store file
//! for the child group, which is made durable first; then they are deleted from this store in
//! the batch's transaction, which also records the narrower range and the child. A crash between
//! the two leaves a child file that nothing refers to, and the split is applied again on restart,
//! writing the file afresh.

use std::path::{Path, PathBuf};

use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::{AllocateShardId, AllocateShardIdResponse, SplitShard, SplitShardResponse};
use concord_proto::etcdserverpb::request_op::Request as TxnOp;
use concord_proto::etcdserverpb::TxnRequest;
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use crate::error::{KvError, OpError, StorageError};
use crate::keys::{self, KeySpan, Row, RowId};
use crate::write::Writer;

/// The key range of a store made or narrowed by a split: `"start"` and, unless the range runs to
/// the end of the keyspace, `"end"`; and `"child/<group id in hex>"` → the start of each shard
/// split off it.
pub(crate) const SHARD: TableDefinition<&str, &[u8]> = TableDefinition::new("shard");

const START: &str = "start";
const END: &str = "end";
const CHILD_PREFIX: &str = "child/";

/// The keys a store holds: `[start, end)`, `end: None` for the end of the keyspace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRange {
    /// The first key.
    pub start: Vec<u8>,
    /// The first key past the range; `None` for the end of the keyspace.
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }

    /// Whether every key etcd's `key`/`range_end` pair addresses is in the range.
    pub fn covers(&self, key: &[u8], range_end: &[u8]) -> bool {
        match KeySpan::new(key, range_end) {
            KeySpan::Single(key) => self.contains(key),
            // An empty span names no key, but a request for it is still served by the shard
            // its key falls in.
            KeySpan::Empty => self.contains(key),
            KeySpan::Range { start, end } => {
                start >= self.start.as_slice()
                    && match (end, &self.end) {
                        (_, None) => true,
                        (None, Some(_)) => false,
                        (Some(end), Some(limit)) => end <= limit.as_slice(),
                    }
            }
        }
    }

    /// Whether every key a write command names (a txn's compares and operations, nested ones
    /// too) is in the range. Commands that name no key pass.
    pub fn admits(&self, op: &Op) -> bool {
        match op {
            Op::Put(put) => self.contains(&put.key),
            Op::DeleteRange(delete) => self.covers(&delete.key, &delete.range_end),
            Op::Txn(txn) => self.admits_txn(txn),
            _ => true,
        }
    }

    /// Whether every key a txn names (compares and operations, nested ones too) is in the range.
    pub fn admits_txn(&self, txn: &TxnRequest) -> bool {
        txn.compare.iter().all(|c| self.covers(&c.key, &c.range_end))
            && txn.success.iter().chain(&txn.failure).all(|op| match &op.request {
                Some(TxnOp::RequestRange(r)) => self.covers(&r.key, &r.range_end),
                Some(TxnOp::RequestPut(p)) => self.contains(&p.key),
                Some(TxnOp::RequestDeleteRange(d)) => self.covers(&d.key, &d.range_end),
                Some(TxnOp::RequestTxn(t)) => self.admits_txn(t),
                None => true,
            })
    }
}

/// A shard split off a store: its group and its first key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitChild {
    /// The child's group id.
    pub group: u64,
    /// The child's first key.
    pub start: Vec<u8>,
}

/// The file of group `group`'s store in the directory `dir` of a member's stores.
pub fn shard_store_path(dir: &Path, group: u64) -> PathBuf {
    dir.join(format!("shard-{group}.redb"))
}

/// Reads the range and children recorded in a store's `shard` table.
pub(crate) fn read_shard_table<T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
) -> Result<(KeyRange, Vec<SplitChild>), StorageError> {
    let mut range = KeyRange::default();
    let mut children = Vec::new();
    for row in table.iter()? {
        let (name, value) = row?;
        let (name, value) = (name.value(), value.value().to_vec());
        match name {
            START => range.start = value,
            END => range.end = Some(value),
            _ => {
                let group = name
                    .strip_prefix(CHILD_PREFIX)
                    .and_then(|id| u64::from_str_radix(id, 16).ok())
                    .ok_or_else(|| StorageError::Corrupt(format!("unknown row {name:?} in the shard table")))?;
                children.push(SplitChild { group, start: value });
            }
        }
    }
    children.sort_by(|a, b| a.start.cmp(&b.start));
    Ok((range, children))
}

fn write_range(txn: &WriteTransaction, range: &KeyRange) -> Result<(), StorageError> {
    let mut table = txn.open_table(SHARD)?;
    table.insert(START, range.start.as_slice())?;
    match &range.end {
        Some(end) => table.insert(END, end.as_slice())?,
        None => table.remove(END)?,
    };
    Ok(())
}

impl Writer<'_, '_> {
    /// Splits the store's range at `req.key` (see the module docs): the child's store is
    /// written to `child_path`. Refused, changing nothing, when the key is not strictly inside
    /// the range, or while auth is enabled (the child would not carry the auth state). The
    /// child keeps every lease (each shard knows every lease, so that any key can be attached
    /// to one) and the moved keys' attachments.
    pub fn split_shard(
        &mut self,
        txn: &WriteTransaction,
        req: &SplitShard,
        child_path: &Path,
        auth_enabled: bool,
    ) -> Result<SplitShardResponse, OpError> {
        let at = req.key.as_slice();
        if at <= self.key_range.start.as_slice() || !self.key_range.contains(at) {
            return Err(OpError::Kv(KvError::SplitOutsideShard));
        }
        if auth_enabled {
            return Err(OpError::Kv(KvError::SplitRefused("auth is enabled")));
        }
        let moved = KeyRange {
            start: at.to_vec(),
            end: self.key_range.end.clone(),
        };
        // The moved keys' attachments go with them; every lease is known to both shards.
        let mut attachments: Vec<(i64, Vec<u8>)> = Vec::new();
        self.lease_keys.retain(|(lease, key), ()| match moved.contains(key) {
            true => {
                attachments.push((lease, key.to_vec()));
                false
            }
            false => true,
        })?;
        let mut leases = Vec::new();
        for row in self.leases.iter()? {
            let (id, ttl) = row?;
            leases.push((id.value(), ttl.value()));
        }
        let mut remaining = Vec::new();
        for row in self.lease_remaining.iter()? {
            let (id, left) = row?;
            remaining.push((id.value(), left.value()));
        }
        // One pass takes the moved rows out; the child's file is durable before this
        // transaction commits.
        let mut rows: Vec<(RowId, Vec<u8>)> = Vec::new();
        let mut undecodable = None;
        self.revisions.retain(|id, bytes| match Row::decode(bytes) {
            Ok(row) if moved.contains(row.key) => {
                rows.push((id, bytes.to_vec()));
                false
            }
            Ok(_) => true,
            Err(e) => {
                undecodable.get_or_insert(e);
                true
            }
        })?;
        if let Some(e) = undecodable {
            return Err(e.into());
        }
        let child = ChildStore {
            rows: &rows,
            range: &moved,
            leases: &leases,
            remaining: &remaining,
            attachments: &attachments,
        };
        write_child(
            txn,
            child_path,
            &child,
            self.revision,
            self.compact_revision,
            self.stamp_floor,
        )?;
        self.key_range.end = Some(at.to_vec());
        write_range(txn, &self.key_range)?;
        txn.open_table(SHARD)?
            .insert(format!("{CHILD_PREFIX}{:x}", req.child_group).as_str(), at)?;
        self.split = true;
        Ok(SplitShardResponse {
            header: None,
            child_group: req.child_group,
            start: moved.start,
            end: moved.end.unwrap_or_default(),
            first_leader: req.first_leader,
        })
    }
}

/// Hands out the id of a new shard's group (group 1's store keeps the counter): the next unused
/// one, at least `req.floor`.
pub(crate) fn allocate_shard_id(
    txn: &WriteTransaction,
    req: &AllocateShardId,
) -> Result<AllocateShardIdResponse, StorageError> {
    let mut meta = txn.open_table(keys::META)?;
    let next = meta.get(keys::META_NEXT_SHARD_ID)?.map_or(0, |v| v.value());
    let group = next.max(req.floor).max(2);
    meta.insert(keys::META_NEXT_SHARD_ID, group + 1)?;
    Ok(AllocateShardIdResponse { header: None, group })
}

/// What a split's child store starts with.
struct ChildStore<'a> {
    /// The moved keys' rows, every retained version.
    rows: &'a [(RowId, Vec<u8>)],
    range: &'a KeyRange,
    /// Every lease (id, TTL), and what each checkpointed one had left.
    leases: &'a [(i64, i64)],
    remaining: &'a [(i64, i64)],
    /// The moved keys attached to leases: (lease, key).
    attachments: &'a [(i64, Vec<u8>)],
}

/// Writes the child store of a split to `path` (replacing any file left by an earlier attempt)
/// and makes it durable: the moved rows, the leases and the moved keys' attachments, the
/// parent's revision counters and the keys its values are sealed with, its range, and applied
/// index 0 (its group starts a new log).
fn write_child(
    parent: &WriteTransaction,
    path: &Path,
    child: &ChildStore<'_>,
    revision: i64,
    compact_revision: i64,
    stamp_floor: i64,
) -> Result<(), StorageError> {
    let (rows, range) = (child.rows, child.range);
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let (db, _) = crate::store::prepare_database(crate::store::database_builder().create(path)?)?;
    let txn = db.begin_write()?;
    {
        let mut revisions = txn.open_table(keys::REVISIONS)?;
        for (id, bytes) in rows {
            revisions.insert(*id, bytes.as_slice())?;
        }
        let mut leases = txn.open_table(keys::LEASES)?;
        for (id, ttl) in child.leases {
            leases.insert(*id, *ttl)?;
        }
        let mut remaining = txn.open_table(keys::LEASE_REMAINING)?;
        for (id, left) in child.remaining {
            remaining.insert(*id, *left)?;
        }
        let mut lease_keys = txn.open_table(keys::LEASE_KEYS)?;
        for (lease, key) in child.attachments {
            lease_keys.insert((*lease, key.as_slice()), ())?;
        }
        // The parent's counters, but for those that are the parent's alone.
        let mut meta = txn.open_table(keys::META)?;
        for row in parent.open_table(keys::META)?.iter()? {
            let (name, value) = row?;
            meta.insert(name.value(), value.value())?;
        }
        for own in [keys::META_REVISION_CEILING, keys::META_NEXT_SHARD_ID] {
            meta.remove(own)?;
        }
        meta.insert(keys::META_APPLIED_INDEX, 0)?;
        meta.insert(keys::META_REVISION, revision as u64)?;
        // The parent's floor as of this entry, not as its last batch left it: replicas batch
        // their entries differently.
        meta.insert(keys::META_STAMP_FLOOR, stamp_floor.max(0) as u64)?;
        if compact_revision >= 0 {
            meta.insert(keys::META_COMPACT_REVISION, compact_revision as u64)?;
        }
    }
    write_range(&txn, range)?;
    txn.commit()?;
    drop(db);
    crate::snapshot::sync_parent_dir(path)?;
    Ok(())
}
