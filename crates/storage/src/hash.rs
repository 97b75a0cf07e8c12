//! Hashes of the store's content, for checking that replicas agree (etcd's HashKV and Hash).
//!
//! Both use CRC-32C (Castagnoli), as etcd does, over an encoding of our own rows, so the values
//! never equal etcd's; they only have to agree between Concord members. Every row is fed as
//! length-prefixed fields, so no two different contents produce the same byte stream.
//!
//! # What `hash_kv` covers
//!
//! With `C` the store's compaction point and `R` the requested revision, the hash covers, in
//! revision order (the order of `revisions`):
//! * every version written in `(C, R]`, deletions (tombstones) included, and
//! * for each key, its version live at `R` when that version is at or below `C`.
//!
//! Each version is fed as its key, main and sub revision, and record (empty for a deletion), the
//! record in its plain form (value opened, sealed flag cleared), so members agree whatever keys
//! they seal with.
//!
//! This is etcd's choice: history since the last compaction plus what a compaction at `R` would
//! keep of the older versions. It is a function of the applied log, `C` and `R` alone: two
//! members that applied the same log up to `R` and have the same compaction point agree however
//! their files were built (in particular after one was restored from a snapshot). Compaction is a
//! replicated command, so members that applied the same prefix of the log share `C`. Members
//! with different compaction points generally disagree even when both are healthy: compare only
//! answers whose compact revisions are equal, as etcd's corruption check does.

use redb::{Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, Value};

use crate::error::{KvError, StorageError};
use crate::index::IndexRead;
use crate::keys::{self, main_revisions, split_row_id, Row};
use crate::store::{read_meta, MvccStore, Snapshot};

/// `hash_kv` re-takes the index lock after this many lookups, so the writer never waits long.
const LOOKUPS_PER_LOCK: usize = 1024;

impl MvccStore {
    /// etcd's HashKV: a hash of the key space's history up to `revision` (0 or negative: the
    /// current revision), see the module docs for what it covers and when two answers are
    /// comparable. Returns `(hash, compact revision, hashed revision)`; the compact revision is
    /// -1 if the store was never compacted.
    ///
    /// Fails with `FutureRevision` above the current revision and with `Compacted` below the
    /// compaction point. Walks `revisions` up to the hashed revision.
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), KvError> {
        loop {
            let snap = self.read_state()?.1;
            let (current, compacted) = (snap.revision, snap.compact_revision);
            if revision > current {
                return Err(KvError::FutureRevision);
            }
            if revision > 0 && revision < compacted {
                return Err(KvError::Compacted);
            }
            let rev = if revision <= 0 { current } else { revision };
            if let Some(hash) = self.hash_history(&snap, rev)? {
                return Ok((hash, compacted, rev));
            }
            // Compacted (or replaced) meanwhile: start over on a fresh snapshot.
        }
    }

    /// Hashes the rows `hash_kv` covers at `rev` (see the module docs), or `None` if the key
    /// index no longer pairs with `snap` when it is needed.
    ///
    /// Rows above the compaction point are fed as they come. A row at or below it is fed when it
    /// is its key's version at `rev` and live, which the key index tells.
    fn hash_history(&self, snap: &Snapshot, rev: i64) -> Result<Option<u32>, StorageError> {
        let compacted = snap.compact_revision;
        let mut crc = Crc32c::new();
        let mut shared = None;
        let mut lookups = 0;
        for row in snap.revisions.range(main_revisions(0, rev))? {
            let (id, value) = row?;
            let (main, sub) = split_row_id(id.value());
            let row = Row::decode(value.value())?;
            if main as i64 > compacted {
                shared = None;
                hash_row(&mut crc, row.key, main, sub, row.record_bytes)?;
                continue;
            }
            if row.record.is_none() {
                continue;
            }
            if lookups % LOOKUPS_PER_LOCK == 0 {
                shared = None;
            }
            lookups += 1;
            let index = match &shared {
                Some(guard) => guard,
                None => {
                    let guard = self.shared();
                    if !guard.pairs_with(snap) {
                        return Ok(None);
                    }
                    shared.insert(guard)
                }
            };
            let current = index.index.version_at(row.key, rev);
            if current.is_some_and(|v| v.id() == id.value()) {
                hash_row(&mut crc, row.key, main, sub, row.record_bytes)?;
            }
        }
        Ok(Some(crc.finish()))
    }

    /// etcd's Hash: one hash over the store's whole replicated content (every table, with the
    /// revision and compaction point), leaving out only the applied index, which depends on how
    /// the member's Raft log went (e.g. after a snapshot restore). Two members that applied the
    /// same log agree.
    ///
    /// Tables are hashed in redb's byte encoding of their rows, which is fixed by redb's file
    /// format. Walks every table.
    pub fn hash(&self) -> Result<u32, KvError> {
        let db = self.db();
        let txn = db.begin_read()?;
        let mut crc = Crc32c::new();
        hash_revisions(&mut crc, &txn)?;
        hash_table(&mut crc, &txn, keys::LEASES)?;
        hash_table(&mut crc, &txn, keys::LEASE_KEYS)?;
        hash_table(&mut crc, &txn, keys::LEASE_REMAINING)?;
        hash_table(&mut crc, &txn, keys::ALARMS)?;
        hash_table(&mut crc, &txn, crate::auth::USERS)?;
        hash_table(&mut crc, &txn, crate::auth::ROLES)?;
        hash_table(&mut crc, &txn, crate::auth::META)?;
        let meta = read_meta(&txn.open_table(keys::META)?)?;
        crc.field(keys::META.name().as_bytes());
        crc.update(&meta.revision.to_le_bytes());
        crc.update(&meta.compact_revision.to_le_bytes());
        Ok(crc.finish())
    }
}

/// Feeds one version: key, main and sub revision, and the record (empty for a tombstone) in its
/// plain form, so members agree whether or not, and with which keys, they seal values.
fn hash_row(crc: &mut Crc32c, key: &[u8], main: u64, sub: u64, record: &[u8]) -> Result<(), StorageError> {
    crc.field(key);
    crc.update(&main.to_le_bytes());
    crc.update(&sub.to_le_bytes());
    crc.field(&keys::plain_record(record)?);
    Ok(())
}

/// [`hash_table`] for `revisions`: each row with its record in its plain form.
fn hash_revisions(crc: &mut Crc32c, txn: &ReadTransaction) -> Result<(), StorageError> {
    let table = keys::REVISIONS;
    crc.field(table.name().as_bytes());
    for row in txn.open_table(table)?.iter()? {
        let (key, value) = row?;
        crc.field(keys::RowId::as_bytes(&key.value()).as_ref());
        crc.field(&keys::plain_row(value.value())?);
    }
    Ok(())
}

/// Feeds a table's name and every row's key and value bytes.
fn hash_table<K: Key + 'static, V: Value + 'static>(
    crc: &mut Crc32c,
    txn: &ReadTransaction,
    table: TableDefinition<K, V>,
) -> Result<(), StorageError> {
    crc.field(table.name().as_bytes());
    for row in txn.open_table(table)?.iter()? {
        let (key, value) = row?;
        crc.field(K::as_bytes(&key.value()).as_ref());
        crc.field(V::as_bytes(&value.value()).as_ref());
    }
    Ok(())
}

/// The reflected Castagnoli polynomial.
const CASTAGNOLI: u32 = 0x82F6_3B78;

/// `TABLES[0]` is the classic byte-at-a-time table; `TABLES[k][b]` is the CRC of byte `b`
/// followed by `k` zero bytes, which lets [`Crc32c::update`] fold eight bytes per step.
const TABLES: [[u32; 256]; 8] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut tables = [[0u32; 256]; 8];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = byte as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ CASTAGNOLI
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][byte] = crc;
        byte += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut byte = 0;
        while byte < 256 {
            let prev = tables[k - 1][byte];
            tables[k][byte] = (prev >> 8) ^ tables[0][(prev & 0xff) as usize];
            byte += 1;
        }
        k += 1;
    }
    tables
}

/// A running CRC-32C (the checksum etcd's hashes use).
pub(crate) struct Crc32c(u32);

impl Crc32c {
    /// A checksum of nothing yet.
    pub fn new() -> Crc32c {
        Crc32c(!0)
    }

    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut crc = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let low = crc ^ u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            crc = TABLES[7][(low & 0xff) as usize]
                ^ TABLES[6][((low >> 8) & 0xff) as usize]
                ^ TABLES[5][((low >> 16) & 0xff) as usize]
                ^ TABLES[4][(low >> 24) as usize]
                ^ TABLES[3][chunk[4] as usize]
                ^ TABLES[2][chunk[5] as usize]
                ^ TABLES[1][chunk[6] as usize]
                ^ TABLES[0][chunk[7] as usize];
        }
        for &byte in chunks.remainder() {
            crc = TABLES[0][((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
        }
        self.0 = crc;
    }

    /// Feeds `bytes` preceded by their length, so consecutive fields cannot run into each other.
    pub fn field(&mut self, bytes: &[u8]) {
        self.update(&(bytes.len() as u64).to_le_bytes());
        self.update(bytes);
    }

    /// The checksum of everything fed so far.
    pub fn finish(&self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crc(bytes: &[u8]) -> u32 {
        let mut crc = Crc32c::new();
        crc.update(bytes);
        crc.finish()
    }

    /// Byte-at-a-time reference, to check the eight-byte folding.
    fn slow_crc(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc = TABLES[0][((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
        }
        !crc
    }

    #[test]
    fn crc32c_check_values() {
        // The standard check value of CRC-32C, and the iSCSI test vector of 32 zero bytes.
        assert_eq!(crc(b"123456789"), 0xE306_9283);
        assert_eq!(crc(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc(b""), 0);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        for len in [1, 7, 8, 9, 15, 16, 17, 100, 1000] {
            assert_eq!(crc(&data[..len]), slow_crc(&data[..len]), "len {len}");
        }
        // Feeding in pieces gives the same checksum as feeding at once.
        let mut pieces = Crc32c::new();
        pieces.update(&data[..13]);
        pieces.update(&data[13..]);
        assert_eq!(pieces.finish(), crc(&data));
    }
}
