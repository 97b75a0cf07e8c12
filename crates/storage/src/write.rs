//! The write side of one apply batch: the tables opened once for the batch, the revision
//! counters, and the two primitive mutations (put and delete-range) every command is built from.
//! Both keep the key's lease attachment in step with its newest record (see `lease.rs`).
//!
//! Revision rule (etcd's): a command that changes at least one key takes main revision
//! `revision + 1`; its changes get sub revisions 0, 1, 2, … in order. A command that changes
//! nothing leaves the revision alone.

use std::sync::Arc;

use concord_crypt::Sealer;
use concord_proto::etcdserverpb::{
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, ResponseHeader,
};
use concord_proto::mvccpb::KeyValue;
use redb::{ReadableTable, Table, WriteTransaction};

use crate::alarm::{no_space_raised, AlarmsMut};
use crate::error::{KvError, OpError, StorageError};
use crate::keys::{
    self, encode_change, encode_record, KeySpan, Record, RecordHeader, CHANGE_DELETE, CHANGE_PUT,
    TOMBSTONE,
};
use crate::lease::{self, LeaseKeysMut, LeasesMut, NO_LEASE};
use crate::view::View;

/// `latest` opened for writing.
pub(crate) type LatestMut<'t> = Table<'t, &'static [u8], &'static [u8]>;
/// `kv` opened for writing.
pub(crate) type HistoryMut<'t> = Table<'t, (&'static [u8], u64, u64), &'static [u8]>;
/// `changes` opened for writing.
pub(crate) type ChangesMut<'t> = Table<'t, (u64, u64), &'static [u8]>;

/// Mutable state of one apply batch.
pub(crate) struct Writer<'t> {
    pub latest: LatestMut<'t>,
    pub kv: HistoryMut<'t>,
    pub changes: ChangesMut<'t>,
    pub leases: LeasesMut<'t>,
    pub lease_keys: LeaseKeysMut<'t>,
    pub alarms: AlarmsMut<'t>,
    /// Whether a NOSPACE alarm is raised (kept in step by `Writer::alarm`).
    pub no_space: bool,
    /// Store revision before the command being applied.
    pub revision: i64,
    /// Last compaction point (-1 when never compacted).
    pub compact_revision: i64,
    /// Changes made so far by the command being applied (its next sub revision).
    pub sub: u64,
    record_buf: Vec<u8>,
    change_buf: Vec<u8>,
    /// Seals the values of new records (encryption at rest).
    sealer: Option<Arc<Sealer>>,
}

impl<'t> Writer<'t> {
    /// Opens the data tables in `txn`; new values are sealed with `sealer` when given.
    pub fn open(
        txn: &'t WriteTransaction,
        revision: i64,
        compact_revision: i64,
        sealer: Option<Arc<Sealer>>,
    ) -> Result<Writer<'t>, StorageError> {
        let alarms = txn.open_table(keys::ALARMS)?;
        Ok(Writer {
            latest: txn.open_table(keys::LATEST)?,
            kv: txn.open_table(keys::KV)?,
            changes: txn.open_table(keys::CHANGES)?,
            leases: txn.open_table(keys::LEASES)?,
            lease_keys: txn.open_table(keys::LEASE_KEYS)?,
            no_space: no_space_raised(&alarms)?,
            alarms,
            revision,
            compact_revision,
            sub: 0,
            record_buf: Vec::new(),
            change_buf: Vec::new(),
            sealer,
        })
    }

    /// Starts a new command: nothing of it is changed yet.
    pub fn begin_command(&mut self) {
        self.sub = 0;
    }

    /// Ends the current command, bumping the revision if it changed anything, and returns the
    /// store revision after it.
    pub fn end_command(&mut self) -> i64 {
        if self.sub > 0 {
            self.revision += 1;
            self.sub = 0;
        }
        self.revision
    }

    /// The revision a write of the current command gets.
    fn write_revision(&self) -> i64 {
        self.revision + 1
    }

    /// The store as the current command sees it so far (its own writes included).
    pub fn view(&self) -> View<'_, LatestMut<'t>, HistoryMut<'t>> {
        View {
            latest: &self.latest,
            kv: &self.kv,
            rev: self.revision + i64::from(self.sub > 0),
            compact_rev: self.compact_revision,
        }
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
        let need_prev_value = req.ignore_value || req.prev_kv;
        let (prev, prev_value) = match self.latest.get(key)? {
            Some(guard) => {
                let rec = Record::decode(guard.value())?;
                let value = if need_prev_value {
                    Some(rec.value()?.into_owned())
                } else {
                    None
                };
                (Some(rec.header), value)
            }
            None => (None, None),
        };
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(KvError::KeyNotFound.into());
        }

        let rev = self.write_revision();
        let header = RecordHeader {
            create_revision: prev.map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.map_or(1, |p| p.version + 1),
            lease: match prev {
                Some(p) if req.ignore_lease => p.lease,
                _ => req.lease,
            },
        };
        let value = match &prev_value {
            Some(v) if req.ignore_value => v.as_slice(),
            _ => req.value.as_slice(),
        };
        encode_record(&mut self.record_buf, &header, value, self.sealer.as_deref());
        self.kv
            .insert((key, rev as u64, self.sub), self.record_buf.as_slice())?;
        self.latest.insert(key, self.record_buf.as_slice())?;
        encode_change(&mut self.change_buf, CHANGE_PUT, key);
        self.changes
            .insert((rev as u64, self.sub), self.change_buf.as_slice())?;
        self.sub += 1;
        lease::reattach(
            &mut self.lease_keys,
            key,
            prev.map_or(NO_LEASE, |p| p.lease),
            header.lease,
        )?;

        let prev_kv = match (req.prev_kv, prev, prev_value) {
            (true, Some(h), Some(value)) => Some(KeyValue {
                key: key.to_vec(),
                create_revision: h.create_revision,
                mod_revision: h.mod_revision,
                version: h.version,
                value,
                lease: h.lease,
            }),
            _ => None,
        };
        Ok(PutResponse {
            header: Some(header_at(rev)),
            prev_kv,
        })
    }

    /// etcd's DeleteRange. Never fails with a `KvError`. Deleted keys are detached from their
    /// leases.
    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse, OpError> {
        let rev = self.write_revision();
        let mut prev_kvs = Vec::new();
        let mut deleted: i64 = 0;
        let Writer {
            latest,
            kv,
            changes,
            lease_keys,
            sub,
            change_buf,
            ..
        } = self;
        // Records the deletion of `key`, whose removed record was `rec`.
        let mut tombstone =
            |key: &[u8], rec: &Record<'_>, sub: &mut u64| -> Result<(), StorageError> {
                kv.insert((key, rev as u64, *sub), TOMBSTONE)?;
                encode_change(change_buf, CHANGE_DELETE, key);
                changes.insert((rev as u64, *sub), change_buf.as_slice())?;
                *sub += 1;
                lease::detach(lease_keys, key, rec.header.lease)
            };
        match KeySpan::new(&req.key, &req.range_end) {
            KeySpan::Empty => {}
            KeySpan::Single(key) => {
                let removed = latest.remove(key)?;
                if let Some(guard) = removed {
                    let rec = Record::decode(guard.value())?;
                    if req.prev_kv {
                        prev_kvs.push(rec.to_key_value(key, true)?);
                    }
                    tombstone(key, &rec, sub)?;
                    deleted = 1;
                }
            }
            KeySpan::Range { start, end } => {
                let upper = match end {
                    Some(end) => std::ops::Bound::Excluded(end),
                    None => std::ops::Bound::Unbounded,
                };
                let range = (std::ops::Bound::Included(start), upper);
                for row in latest.extract_from_if::<&[u8], _>(range, |_, _| true)? {
                    let (key, value) = row?;
                    let key = key.value();
                    let rec = Record::decode(value.value())?;
                    if req.prev_kv {
                        prev_kvs.push(rec.to_key_value(key, true)?);
                    }
                    tombstone(key, &rec, sub)?;
                    deleted += 1;
                }
            }
        }
        // etcd reports the pending revision once the command has changed anything, even if this
        // particular delete removed nothing (a later op of the same txn).
        let header_rev = if *sub > 0 { rev } else { rev - 1 };
        Ok(DeleteRangeResponse {
            header: Some(header_at(header_rev)),
            deleted,
            prev_kvs,
        })
    }
}

/// A response header carrying only a revision; the server fills in the cluster fields.
pub(crate) fn header_at(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}
