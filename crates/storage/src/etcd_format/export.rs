//! The exporter: one redb read transaction of the store, laid out as etcd's bbolt backend.

use std::fs;
use std::io::BufWriter;
use std::path::Path;

use concord_proto::etcdserverpb::{AlarmMember, Member};
use concord_proto::mvccpb::KeyValue;
use prost::Message as _;
use redb::{ReadableDatabase, ReadableTable};

use super::bolt_write::{BoltWriter, Bucket, Item};
use super::encoding::*;
use super::EtcdSnapshotInfo;
use crate::error::StorageError;
use crate::keys::{self, split_row_id, Row};
use crate::store::{read_meta, MvccStore};

impl MvccStore {
    /// Writes the store, as of one read transaction, into a new file at `dest` in etcd's
    /// backend format (a bbolt file as etcd 3.4/3.5 keeps it: every key revision still held,
    /// leases, auth, the compaction marks, the applied index as `consistent_index`, and
    /// `members`), and makes it durable. This is what `Maintenance.Snapshot` streams (followed
    /// by its SHA-256) so that `etcdctl snapshot status|restore` take Concord's snapshots.
    /// Values sealed at rest are written plain, as etcd stores them.
    ///
    /// The `key` bucket streams from the store to the file; only the small buckets (leases,
    /// auth, members) are gathered in memory first.
    pub fn write_etcd_snapshot(&self, dest: &Path, members: &[Member]) -> Result<EtcdSnapshotInfo, StorageError> {
        let db = self.db();
        let txn = db.begin_read()?;
        let meta = read_meta(&txn.open_table(keys::META)?)?;
        // Only its owner may read it: it holds every key, in the clear.
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut writer = BoltWriter::new(BufWriter::new(options.open(dest)?))?;

        // `key` streams from the table to the file, a page at a time.
        let mut key_count = 0u64;
        let revisions = txn.open_table(keys::REVISIONS)?;
        let rows = revisions
            .iter()?
            .map(|row| -> Result<(Vec<u8>, Vec<u8>), StorageError> {
                let (id, bytes) = row?;
                let (main, sub) = split_row_id(id.value());
                let (main, sub) = (main as i64, sub as i64);
                let row = Row::decode(bytes.value())?;
                key_count += 1;
                Ok(match row.record {
                    Some(rec) => (
                        revision_key(main, sub, false),
                        KeyValue {
                            key: row.key.to_vec(),
                            create_revision: rec.header.create_revision,
                            mod_revision: rec.header.mod_revision,
                            version: rec.header.version,
                            value: rec.value()?.into_owned(),
                            lease: rec.header.lease,
                        }
                        .encode_to_vec(),
                    ),
                    None => (
                        revision_key(main, sub, true),
                        KeyValue {
                            key: row.key.to_vec(),
                            ..Default::default()
                        }
                        .encode_to_vec(),
                    ),
                })
            });
        let key_bucket = writer.stream_bucket(rows)?;
        let mut root = Bucket::default();
        root.entries.insert(KEY.to_vec(), Item::Written(key_bucket));

        let meta_bucket = root.bucket(META);
        meta_bucket.put(CONSISTENT_INDEX, meta.applied_index.to_be_bytes());
        if meta.compact_revision > 0 {
            let rev = revision_key(meta.compact_revision, 0, false);
            meta_bucket.put(FINISHED_COMPACT, rev.clone());
            meta_bucket.put(SCHEDULED_COMPACT, rev);
        }

        let lease_bucket = root.bucket(LEASE);
        for row in txn.open_table(keys::LEASES)?.iter()? {
            let (id, ttl) = row?;
            let lease = LeaseRecord {
                id: id.value(),
                ttl: ttl.value(),
                remaining_ttl: 0,
            };
            lease_bucket.put(id.value().to_be_bytes(), lease.encode_to_vec());
        }

        let alarm_bucket = root.bucket(ALARM);
        for row in txn.open_table(keys::ALARMS)?.iter()? {
            let (k, _) = row?;
            let (member_id, alarm) = k.value();
            alarm_bucket.put(AlarmMember { member_id, alarm }.encode_to_vec(), Vec::new());
        }

        // auth_meta's rows, named as in auth/mod.rs (`enabled`, `revision`; revision 1 when absent).
        let auth_meta = txn.open_table(crate::auth::META)?;
        let enabled = auth_meta.get("enabled")?.is_some_and(|v| v.value() == 1);
        let auth_revision = auth_meta.get("revision")?.map_or(1, |v| v.value());
        let auth = root.bucket(AUTH);
        auth.put(AUTH_ENABLED, vec![u8::from(enabled)]);
        auth.put(AUTH_REVISION, auth_revision.to_be_bytes());
        for (table, name) in [(crate::auth::USERS, AUTH_USERS), (crate::auth::ROLES, AUTH_ROLES)] {
            let bucket = root.bucket(name);
            for row in txn.open_table(table)?.iter()? {
                let (k, v) = row?;
                bucket.put(k.value().as_bytes(), v.value());
            }
        }

        let members_bucket = root.bucket(MEMBERS);
        for m in members {
            members_bucket.put(member_key(m.id), member_json(m).into_bytes());
        }
        root.bucket(MEMBERS_REMOVED);
        root.bucket(CLUSTER).put(CLUSTER_VERSION, EXPORTED_CLUSTER_VERSION);
        drop(auth_meta);
        drop(revisions);
        drop(txn);

        let (out, size) = writer.finish(root)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.set_len(size)?;
        file.sync_all()?;
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::File::open(parent)?.sync_all()?;
        }
        let info = EtcdSnapshotInfo {
            revision: meta.revision,
            compact_revision: meta.compact_revision,
            consistent_index: meta.applied_index,
            key_revisions: key_count,
            size,
        };
        tracing::info!(path = %dest.display(), revision = info.revision, size = info.size, "wrote etcd-format snapshot");
        Ok(info)
    }
}
