//! The write side of one apply batch: the tables opened once for the batch, the batch's view of
//! the key index, the revision counters, and the two primitive mutations (put and delete-range)
//! every command is built from. Both append one `revisions` row per changed key, record the new
//! version in the batch's [`PendingIndex`], and keep the key's lease attachment in step with its
//! newest record (see `lease.rs`).
//!
//! Revision rule (etcd's): a command that changes at least one key takes main revision
//! `revision + 1`; its changes get sub revisions 0, 1, 2, … in order. A command that changes
//! nothing leaves the revision alone. In multi-shard mode a command comes stamped with the
//! global revision its shard's leader took for it, and takes that one instead: the stamp is
//! above the store's revision (a stamp that is not is refused, deterministically), so the
//! revision still only grows, and the numbers between belong to other shards' writes.

use std::sync::Arc;

use concord_crypt::Sealer;
use concord_proto::concordpb::{PrepareCrossShard, RevisionCeiling, RevisionCeilingResponse};
use concord_proto::etcdserverpb::{DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, ResponseHeader};
use redb::{ReadableTable, Table, WriteTransaction};

use crate::alarm::{corrupt_raised, no_space_raised, AlarmsMut};
use crate::error::{KvError, OpError, StorageError};
use crate::index::{Head, IndexRead, KeyIndex, PendingIndex, Rev};
use crate::keys::{self, encode_row, KeySpan, RecordHeader, RowId};
use crate::lease::{self, LeaseKeysMut, LeasesMut, NO_LEASE};
use crate::split::KeyRange;
use crate::view::{fetch_row, live_record, View};

/// `revisions` opened for writing.
pub(crate) type RevisionsMut<'t> = Table<'t, RowId, &'static [u8]>;

/// Mutable state of one apply batch.
pub(crate) struct Writer<'t, 'i> {
    pub revisions: RevisionsMut<'t>,
    /// The committed key index with this batch's changes on top.
    pub index: PendingIndex<'i>,
    pub leases: LeasesMut<'t>,
    pub lease_keys: LeaseKeysMut<'t>,
    pub lease_remaining: LeasesMut<'t>,
    pub alarms: AlarmsMut<'t>,
    /// Whether a NOSPACE alarm is raised (kept in step by `Writer::alarm`).
    pub no_space: bool,
    /// Whether a CORRUPT alarm is raised (kept in step by `Writer::alarm`).
    pub corrupt: bool,
    /// Store revision before the command being applied.
    pub revision: i64,
    /// Last compaction point (-1 when never compacted).
    pub compact_revision: i64,
    /// The revision oracle's committed ceiling (0 while never raised).
    pub revision_ceiling: i64,
    /// The keys the store holds (narrowed by a split in this batch).
    pub key_range: KeyRange,
    /// Whether a split in this batch moved keys out (the key index is then rebuilt).
    pub split: bool,
    /// Changes made so far by the command being applied (its next sub revision).
    pub sub: u32,
    /// The global revision stamped on the command being applied, if any.
    pub(crate) stamp: Option<i64>,
    /// The highest stamp applied (read barriers and cross-shard commits included): a write
    /// stamped at or below it would land under history a read or a commit already counted on.
    pub(crate) stamp_floor: i64,
    /// The part of a cross-shard write this store holds, if any (see `cross_shard.rs`).
    pub(crate) held: Option<PrepareCrossShard>,
    pub(crate) cross_shard_held: Table<'t, &'static str, &'static [u8]>,
    pub(crate) cross_shard_outcomes: Table<'t, u64, &'static [u8]>,
    row_buf: Vec<u8>,
    /// Seals the values of new records (encryption at rest).
    sealer: Option<Arc<Sealer>>,
}

impl<'t, 'i> Writer<'t, 'i> {
    /// Opens the data tables in `txn`, over the committed key index `index`; new values are
    /// sealed with `sealer` when given.
    pub fn open(
        txn: &'t WriteTransaction,
        index: &'i KeyIndex,
        revision: i64,
        compact_revision: i64,
        sealer: Option<Arc<Sealer>>,
    ) -> Result<Writer<'t, 'i>, StorageError> {
        let alarms = txn.open_table(keys::ALARMS)?;
        let meta = txn.open_table(keys::META)?;
        let counter = |name| Ok::<_, StorageError>(meta.get(name)?.map_or(0, |v| v.value() as i64));
        let revision_ceiling = counter(keys::META_REVISION_CEILING)?;
        let stamp_floor = counter(keys::META_STAMP_FLOOR)?;
        drop(meta);
        let (key_range, _) = crate::split::read_shard_table(&txn.open_table(crate::split::SHARD)?)?;
        let cross_shard_held = txn.open_table(crate::cross_shard::HELD)?;
        Ok(Writer {
            held: crate::cross_shard::read_held(&cross_shard_held)?,
            cross_shard_held,
            cross_shard_outcomes: txn.open_table(crate::cross_shard::OUTCOMES)?,
            stamp_floor,
            key_range,
            split: false,
            revisions: txn.open_table(keys::REVISIONS)?,
            index: PendingIndex::new(index),
            leases: txn.open_table(keys::LEASES)?,
            lease_keys: txn.open_table(keys::LEASE_KEYS)?,
            lease_remaining: txn.open_table(keys::LEASE_REMAINING)?,
            no_space: no_space_raised(&alarms)?,
            corrupt: corrupt_raised(&alarms)?,
            alarms,
            revision,
            compact_revision,
            revision_ceiling,
            sub: 0,
            stamp: None,
            row_buf: Vec::new(),
            sealer,
        })
    }

    /// Starts a new command, stamped with the global revision its writes take (multi-shard
    /// mode) or not: nothing of it is changed yet. A stamp at or below the store's revision
    /// would rewrite history, and refuses the command.
    pub fn begin_command(&mut self, stamp: Option<i64>) -> Result<(), KvError> {
        self.sub = 0;
        self.stamp = None;
        match stamp {
            Some(stamp) if stamp <= self.revision => Err(KvError::StaleStamp {
                stamp,
                revision: self.revision,
            }),
            _ => {
                self.stamp = stamp;
                Ok(())
            }
        }
    }

    /// Ends the current command, moving the revision to the command's if it changed anything,
    /// and returns the store revision after it.
    pub fn end_command(&mut self) -> i64 {
        if self.sub > 0 {
            self.revision = self.write_revision();
            self.sub = 0;
        }
        self.stamp = None;
        self.revision
    }

    /// The revision a write of the current command gets.
    fn write_revision(&self) -> i64 {
        self.stamp.unwrap_or(self.revision + 1)
    }

    /// The revision the current command sees: its own writes included.
    pub(crate) fn view_revision(&self) -> i64 {
        match self.sub {
            0 => self.revision,
            _ => self.write_revision(),
        }
    }

    /// The store as the current command sees it so far (its own writes included).
    pub fn view(&self) -> View<'_, PendingIndex<'i>, RevisionsMut<'t>> {
        View {
            index: &self.index,
            rows: &self.revisions,
            rev: self.view_revision(),
            compact_rev: self.compact_revision,
        }
    }

    /// Appends the row in `row_buf` as the current command's next change of `key` and records
    /// it in the index with `head`.
    fn append(&mut self, key: &[u8], tombstone: bool, head: Head) -> Result<(), StorageError> {
        let version = Rev {
            main: self.write_revision(),
            sub: self.sub,
            tombstone,
        };
        self.sub = self
            .sub
            .checked_add(1)
            .ok_or_else(|| StorageError::Corrupt("too many changes in one command".into()))?;
        self.revisions.insert(version.id(), self.row_buf.as_slice())?;
        self.index.record(key, version, head);
        Ok(())
    }

    /// etcd's Put. Fails only with `LeaseNotFound` (a non-zero `lease` that is not granted) or
    /// `KeyNotFound` (`ignore_value`/`ignore_lease` on a missing key), checked in that order as
    /// etcd does, and then before writing anything. The key ends up attached to the lease its new
    /// record names (`ignore_lease` keeps the old one; lease 0 detaches it).
    pub fn put(&mut self, req: &PutRequest) -> Result<PutResponse, OpError> {
        let key = req.key.as_slice();
        if req.lease != NO_LEASE && !self.lease_exists(req.lease)? {
            return Err(KvError::LeaseNotFound.into());
        }
        // The index knows everything of the previous version but its value.
        let prev = self.index.newest(key).filter(|(v, _)| v.is_live());
        let prev_kv = match prev {
            Some((version, _)) if req.ignore_value || req.prev_kv => {
                let guard = fetch_row(&self.revisions, version)?;
                let (_, record) = live_record(guard.value())?;
                Some(record.to_key_value(key, true)?)
            }
            _ => None,
        };
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(KvError::KeyNotFound.into());
        }

        let rev = self.write_revision();
        let prev_head = prev.map(|(_, head)| head);
        let header = RecordHeader {
            create_revision: prev_head.map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev_head.map_or(1, |p| p.version + 1),
            lease: match prev_head {
                Some(p) if req.ignore_lease => p.lease,
                _ => req.lease,
            },
        };
        let value = match &prev_kv {
            Some(prev) if req.ignore_value => prev.value.as_slice(),
            _ => req.value.as_slice(),
        };
        encode_row(&mut self.row_buf, key, Some((&header, value)), self.sealer.as_deref())?;
        self.append(key, false, Head::of(&header))?;
        lease::reattach(
            &mut self.lease_keys,
            key,
            prev_head.map_or(NO_LEASE, |p| p.lease),
            header.lease,
        )?;

        Ok(PutResponse {
            header: Some(header_at(rev)),
            prev_kv: prev_kv.filter(|_| req.prev_kv),
        })
    }

    /// etcd's DeleteRange. Never fails with a `KvError`. Deleted keys are detached from their
    /// leases.
    pub fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, OpError> {
        let span = KeySpan::new(&req.key, &req.range_end);
        // The live keys of the span, ascending, with the version each one's deletion replaces.
        let mut doomed: Vec<(Vec<u8>, Rev)> = Vec::new();
        self.index.scan_live(span, self.view_revision(), |key, version| {
            doomed.push((key.to_vec(), version));
            Ok::<_, StorageError>(true)
        })?;
        let mut prev_kvs = Vec::new();
        for (key, version) in &doomed {
            if req.prev_kv {
                let guard = fetch_row(&self.revisions, *version)?;
                let (_, record) = live_record(guard.value())?;
                prev_kvs.push(record.to_key_value(key, true)?);
            }
            let lease = self.index.newest(key).map_or(NO_LEASE, |(_, head)| head.lease);
            encode_row(&mut self.row_buf, key, None, None)?;
            self.append(key, true, Head::default())?;
            lease::detach(&mut self.lease_keys, key, lease)?;
        }
        // etcd reports the pending revision once the command has changed anything, even if this
        // particular delete removed nothing (a later op of the same txn).
        let header_rev = self.view_revision();
        Ok(DeleteRangeResponse {
            header: Some(header_at(header_rev)),
            deleted: doomed.len() as i64,
            prev_kvs,
        })
    }
}

impl Writer<'_, '_> {
    /// Raises the revision oracle's ceiling to `req.ceiling`; a lower one (a raise that lost a
    /// race with a larger one) leaves it, so the committed ceiling never falls.
    pub fn raise_revision_ceiling(&mut self, req: &RevisionCeiling) -> RevisionCeilingResponse {
        self.revision_ceiling = self.revision_ceiling.max(req.ceiling);
        RevisionCeilingResponse {
            header: Some(header_at(self.revision)),
            ceiling: self.revision_ceiling,
        }
    }
}

/// A response header carrying only a revision; the server fills in the cluster fields.
pub(crate) fn header_at(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}
