//! etcd's snapshot format in the snapshot commands: telling an etcd-format (bbolt) snapshot
//! from a redb one, and turning a redb one into etcd's format.
//!
//! A member streams its snapshot in etcd's format (see `MvccStore::write_etcd_snapshot`).
//! Members of earlier versions stream their redb store: `concord snapshot save` converts such a
//! stream on the client, so that every file it writes is what `etcdctl snapshot save` would
//! have written, readable by `etcdctl snapshot status|restore` and by Concord alike.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use concord_proto::etcdserverpb::Member;
use concord_storage::{is_etcd_backend, MvccStore};
use sha2::{Digest, Sha256};

use super::{create_private, SnapshotLayout};

/// Whether the store in a snapshot file is a bbolt file (etcd's format), not a redb one.
pub fn is_etcd_snapshot(file: &mut File) -> Result<bool, String> {
    let mut head = [0u8; 20];
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..]).map_err(|e| e.to_string())? {
            0 => break,
            n => read += n,
        }
    }
    Ok(is_etcd_backend(&head[..read]))
}

/// The store bytes of a snapshot file (the file but its trailer).
pub fn store_bytes(file: &mut File, layout: &SnapshotLayout) -> Result<Vec<u8>, String> {
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut bytes = Vec::with_capacity(layout.store_len as usize);
    Read::by_ref(file)
        .take(layout.store_len)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 != layout.store_len {
        return Err("the file shrank while being read".into());
    }
    Ok(bytes)
}

/// Rewrites the snapshot at `path` (a redb store and its SHA-256 trailer, as a member of an
/// earlier version streams it) in etcd's format, with `members` as its membership, and a new
/// trailer. Values sealed at rest cannot be converted here (the keys are the members').
pub fn convert_to_etcd(path: &Path, store_len: u64, members: &[Member]) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let redb = dir.path().join("kv.redb");
    {
        let mut from = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut to = create_private(&redb).map_err(|e| format!("{}: {e}", redb.display()))?;
        std::io::copy(&mut Read::by_ref(&mut from).take(store_len), &mut to)
            .map_err(|e| format!("{}: {e}", redb.display()))?;
    }
    let bolt = dir.path().join("etcd.db");
    {
        let store = MvccStore::open(&redb).map_err(|e| format!("the snapshot is not a usable Concord store: {e}"))?;
        store
            .write_etcd_snapshot(&bolt, members)
            .map_err(|e| format!("cannot convert the snapshot to etcd's format: {e}"))?;
    }
    let bytes = std::fs::read(&bolt).map_err(|e| format!("{}: {e}", bolt.display()))?;
    let mut out = create_private(path).map_err(|e| format!("{}: {e}", path.display()))?;
    out.write_all(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    out.write_all(&Sha256::digest(&bytes))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    out.sync_all().map_err(|e| format!("{}: {e}", path.display()))
}

/// Makes `dest` (a new store file) from an etcd-format snapshot: etcd 3.4/3.5's, or Concord's.
pub fn import(file: &mut File, layout: &SnapshotLayout, dest: &Path) -> Result<(), String> {
    let bytes = store_bytes(file, layout)?;
    MvccStore::import_etcd_snapshot(bytes, dest).map_err(|e| format!("not a usable etcd snapshot: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::inspect;
    use concord_proto::concordpb::raft_command::Op;
    use concord_proto::concordpb::RaftCommand;
    use concord_proto::etcdserverpb::PutRequest;
    use concord_storage::ApplyEntry;

    #[test]
    fn a_redb_snapshot_converts_to_etcds_format() {
        let dir = tempfile::tempdir().unwrap();
        let store = MvccStore::open(&dir.path().join("kv.redb")).unwrap();
        let put = RaftCommand {
            op: Some(Op::Put(PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        };
        store
            .apply(&[ApplyEntry {
                index: 1,
                command: Some(&put),
                stamp: None,
            }])
            .unwrap();
        // A redb snapshot with its trailer, as a member of an earlier version streams it.
        let redb = dir.path().join("snap.redb");
        store.write_snapshot(&redb).unwrap();
        let mut bytes = std::fs::read(&redb).unwrap();
        bytes.extend_from_slice(&Sha256::digest(&bytes));
        let path = dir.path().join("backup.db");
        std::fs::write(&path, &bytes).unwrap();
        let mut file = File::open(&path).unwrap();
        assert!(!is_etcd_snapshot(&mut file).unwrap());
        let store_len = inspect(&mut file, false).unwrap().store_len;

        convert_to_etcd(&path, store_len, &[]).unwrap();
        let mut file = File::open(&path).unwrap();
        assert!(is_etcd_snapshot(&mut file).unwrap());
        let layout = inspect(&mut file, false).unwrap();
        assert!(layout.verified, "the converted file has a matching trailer");
        let status = concord_storage::etcd_snapshot_status(store_bytes(&mut file, &layout).unwrap()).unwrap();
        assert_eq!(status.revision, 2);
    }
}
