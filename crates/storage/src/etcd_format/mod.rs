//! etcd's snapshot format, both ways: a snapshot of etcd (`etcdctl snapshot save`) is the bbolt
//! file of its backend, and `etcdctl snapshot status|restore` read only that. So that backups
//! move between etcd and Concord with every revision, lease, user and role:
//!
//! - [`MvccStore::write_etcd_snapshot`] (`export.rs`) lays the store out as etcd 3.4/3.5's
//!   backend, in a bbolt file written by `bolt_write.rs`;
//! - [`MvccStore::import_etcd_snapshot`] (`import.rs`) makes a Concord store from such a file,
//!   read by `bolt_read.rs`;
//! - [`etcd_snapshot_status`] tells what one holds, as `etcdutl snapshot status` does;
//! - [`MvccStore::replay_etcd_wal`] (`replay.rs`) applies what an etcd member committed after its
//!   backend's last commit, read from its WAL by `wal.rs`, to a store imported from that backend
//!   (migrating a member that was killed, not stopped).
//!
//! `encoding.rs` has etcd's bucket names and value encodings. Raft-internal snapshots (members
//! catching up) stay redb files: this is only the format of backups.

mod bolt_read;
mod bolt_write;
mod encoding;
mod export;
mod import;
mod replay;
#[cfg(test)]
mod tests;
mod wal;

use crate::error::StorageError;

pub use replay::{ReplayError, ReplayRules, WalReplay};
pub use wal::{read_etcd_wal, EtcdWal, TornTail, WalEntry, WalError};

/// What an etcd-format snapshot holds, as written or imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdSnapshotInfo {
    /// The store revision.
    pub revision: i64,
    /// The revision of the last compaction, -1 if never compacted.
    pub compact_revision: i64,
    /// etcd's `consistent_index`: the Raft index the state stands for (Concord's applied index).
    pub consistent_index: u64,
    /// Rows of the `key` bucket: every key revision held, tombstones included.
    pub key_revisions: u64,
    /// Bytes of the bbolt file.
    pub size: u64,
}

/// What `etcdutl snapshot status` prints about a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdSnapshotStatus {
    /// CRC-32C of every bucket name and every key and value in them, as etcd computes it.
    pub hash: u32,
    /// The newest main revision in the `key` bucket.
    pub revision: i64,
    /// Keys in all buckets (etcd counts every bucket's entries, not only user keys).
    pub total_key: u64,
    /// Bytes of the bbolt file.
    pub total_size: u64,
}

/// Whether a file starting with `head` (its first 20 bytes suffice) is a bbolt file, i.e. an
/// etcd-format snapshot rather than a redb one.
pub fn is_etcd_backend(head: &[u8]) -> bool {
    bolt_read::looks_like_bolt(head)
}

/// Reads an etcd-format snapshot (without its SHA-256 trailer) and sums it up as etcd does.
pub fn etcd_snapshot_status(bolt: Vec<u8>) -> Result<EtcdSnapshotStatus, StorageError> {
    let total_size = bolt.len() as u64;
    let file = bolt_read::BoltFile::parse(bolt)?;
    let mut crc = Crc32c::new();
    let (mut revision, mut total_key) = (0i64, 0u64);
    for bucket in file.entries(file.root())? {
        if !bucket.is_bucket {
            continue;
        }
        crc.update(bucket.key);
        let entries = file.entries(file.open_bucket(bucket.value)?)?;
        if bucket.key == encoding::KEY {
            if let Some(last) = entries.last() {
                revision = encoding::parse_revision_key(last.key).map_or(0, |(main, _, _)| main);
            }
        }
        for e in entries {
            crc.update(e.key);
            crc.update(e.value);
            total_key += 1;
        }
    }
    Ok(EtcdSnapshotStatus {
        hash: crc.finish(),
        revision,
        total_key,
        total_size,
    })
}

/// CRC-32 with the Castagnoli polynomial (Go's `crc32.MakeTable(crc32.Castagnoli)`), fed in
/// pieces.
struct Crc32c(u32);

impl Crc32c {
    fn new() -> Crc32c {
        Crc32c(0)
    }

    fn update(&mut self, bytes: &[u8]) {
        self.0 = crc32c::crc32c_append(self.0, bytes);
    }

    fn finish(&self) -> u32 {
        self.0
    }
}
