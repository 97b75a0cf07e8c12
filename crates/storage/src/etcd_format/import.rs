//! The importer: an etcd backend (bbolt) file, such as `etcdctl snapshot save` writes, turned
//! into a new Concord store file with the same key revisions, leases, users and roles.

use std::collections::BTreeMap;
use std::path::Path;

use concord_proto::mvccpb::KeyValue;
use prost::Message as _;
use redb::{Database, ReadableTable};

use super::bolt_read::{BoltFile, BucketRoot};
use super::encoding::*;
use super::EtcdSnapshotInfo;
use crate::error::StorageError;
use crate::keys::{self, encode_row, row_id, RecordHeader};
use crate::store::{prepare_database, MvccStore};

fn corrupt(what: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("etcd snapshot: {what}"))
}

fn be_u64(v: &[u8], what: &str) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = v
        .try_into()
        .map_err(|_| corrupt(format!("{what} is {} bytes, not 8", v.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// A key and its value, borrowed from the file.
type Pair<'a> = (&'a [u8], &'a [u8]);

/// The plain (non-bucket) entries of an optional top-level bucket.
fn values<'a>(file: &'a BoltFile, bucket: Option<BucketRoot<'a>>) -> Result<Vec<Pair<'a>>, StorageError> {
    let Some(bucket) = bucket else { return Ok(Vec::new()) };
    Ok(file
        .entries(bucket)?
        .into_iter()
        .filter(|e| !e.is_bucket)
        .map(|e| (e.key, e.value))
        .collect())
}

impl MvccStore {
    /// Makes a new store file at `dest` (which must not exist) from `bolt`, the bytes of an etcd
    /// backend file (an etcd snapshot without its SHA-256 trailer, from etcd 3.4/3.5 or from
    /// [`write_etcd_snapshot`](Self::write_etcd_snapshot)): every key revision with its create
    /// and mod revisions, version and lease, the compaction mark, leases, users, roles, the auth
    /// flag and revision; `consistent_index` becomes the applied index. Members and alarms are
    /// left out: a restore makes a new membership. A damaged file gives an error.
    pub fn import_etcd_snapshot(bolt: Vec<u8>, dest: &Path) -> Result<EtcdSnapshotInfo, StorageError> {
        let size = bolt.len() as u64;
        let file = BoltFile::parse(bolt)?;
        let meta = values(&file, file.bucket(META)?)?;
        let meta_value = |name: &[u8]| meta.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let consistent_index = meta_value(CONSISTENT_INDEX)
            .map(|v| be_u64(v, "consistent_index"))
            .transpose()?
            .unwrap_or(0);
        let compact_revision = match meta_value(FINISHED_COMPACT) {
            Some(v) => {
                parse_revision_key(v)
                    .ok_or_else(|| corrupt("finishedCompactRev is not a revision"))?
                    .0
            }
            None => -1,
        };

        let db = Database::builder().create(dest)?;
        let txn = db.begin_write()?;
        let mut revision = 1i64;
        let mut key_revisions = 0u64;
        {
            let mut leases = txn.open_table(keys::LEASES)?;
            for (k, v) in values(&file, file.bucket(LEASE)?)? {
                let id = be_u64(k, "a lease id")? as i64;
                let lease = LeaseRecord::decode(v).map_err(|e| corrupt(format!("lease {id:x}: {e}")))?;
                leases.insert(id, lease.ttl)?;
            }
            let granted = |id: i64| -> Result<bool, StorageError> { Ok(leases.get(id)?.is_some()) };
            // Each key's newest lease (0 once deleted), for lease_keys.
            let mut attached: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
            let mut rows = txn.open_table(keys::REVISIONS)?;
            let mut buf = Vec::new();
            for (k, v) in values(&file, file.bucket(KEY)?)? {
                let (main, sub, tombstone) = parse_revision_key(k)
                    .ok_or_else(|| corrupt(format!("key bucket holds a non-revision key of {} bytes", k.len())))?;
                if main < 1 || sub < 0 {
                    return Err(corrupt(format!("revision {main}_{sub} is out of range")));
                }
                let kv = KeyValue::decode(v).map_err(|e| corrupt(format!("revision {main}_{sub}: {e}")))?;
                if tombstone {
                    encode_row(&mut buf, &kv.key, None, None)?;
                    attached.insert(kv.key, 0);
                } else {
                    let header = RecordHeader {
                        create_revision: kv.create_revision,
                        mod_revision: kv.mod_revision,
                        version: kv.version,
                        lease: kv.lease,
                    };
                    encode_row(&mut buf, &kv.key, Some((&header, &kv.value)), None)?;
                    attached.insert(kv.key, kv.lease);
                }
                rows.insert(row_id(main as u64, sub as u64), buf.as_slice())?;
                revision = revision.max(main);
                key_revisions += 1;
            }
            let mut lease_keys = txn.open_table(keys::LEASE_KEYS)?;
            for (key, lease) in attached {
                if lease == 0 {
                    continue;
                }
                if granted(lease)? {
                    lease_keys.insert((lease, key.as_slice()), ())?;
                } else {
                    tracing::warn!(lease = %format!("{lease:x}"), "etcd snapshot: a key names a lease the snapshot lacks; it will not expire");
                }
            }
            let revision = revision.max(compact_revision);
            let mut store_meta = txn.open_table(keys::META)?;
            store_meta.insert(keys::META_APPLIED_INDEX, consistent_index)?;
            store_meta.insert(keys::META_REVISION, revision as u64)?;
            if compact_revision > 0 {
                store_meta.insert(keys::META_COMPACT_REVISION, compact_revision as u64)?;
            }

            let auth = values(&file, file.bucket(AUTH)?)?;
            let auth_value = |name: &[u8]| auth.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
            let mut auth_meta = txn.open_table(crate::auth::META)?;
            // auth_meta's rows, named as in auth/mod.rs.
            auth_meta.insert("enabled", u64::from(auth_value(AUTH_ENABLED) == Some(&[1u8][..])))?;
            if let Some(v) = auth_value(AUTH_REVISION) {
                auth_meta.insert("revision", be_u64(v, "authRevision")?)?;
            }
            for (table, name, what) in [
                (crate::auth::USERS, AUTH_USERS, "user"),
                (crate::auth::ROLES, AUTH_ROLES, "role"),
            ] {
                let mut out = txn.open_table(table)?;
                for (k, v) in values(&file, file.bucket(name)?)? {
                    let name = std::str::from_utf8(k).map_err(|_| corrupt(format!("a {what} name is not UTF-8")))?;
                    let valid = if what == "user" {
                        concord_proto::authpb::User::decode(v).is_ok()
                    } else {
                        concord_proto::authpb::Role::decode(v).is_ok()
                    };
                    if !valid {
                        return Err(corrupt(format!("{what} {name:?} is undecodable")));
                    }
                    out.insert(name, v)?;
                }
            }
        }
        txn.commit()?;
        let (db, stored) = prepare_database(db)?;
        drop(db);
        Ok(EtcdSnapshotInfo {
            revision: stored.revision,
            compact_revision: stored.compact_revision,
            consistent_index,
            key_revisions,
            size,
        })
    }
}
