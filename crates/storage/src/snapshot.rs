//! Whole-store copies: snapshots for lagging members and backups, installing one, resetting the
//! applied index of a restored file, and defragmentation (which is a copy installed in place).
//!
//! A snapshot is a plain redb file with this crate's tables, written row by row from one read
//! transaction, so it is exactly the store as of one applied index, and the copy never blocks
//! the writer. Being written afresh in key order, it holds next to no free pages (under 1% in
//! tests: what the copy's own batch commits left behind).
//!
//! Installing a file renames it over the store's path and swaps the store's database handle,
//! together with a key index rebuilt from the new file, under the writer lock; reads that began
//! before keep the old (now unlinked) file until they end. The new file is made durable before
//! the rename and the directory after it, so a crash leaves either the old store or the new one
//! at that path.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, Value};

use concord_crypt::{KeyId, Sealer};

use crate::error::StorageError;
use crate::keys::{self, META_APPLIED_INDEX};
use crate::sealing::{copy_resealed, reset_keys, sealed_ids};
use crate::store::{prepare_database, read_meta, Meta, MvccStore};

/// A copy commits (without fsync) after about this many bytes of rows, so memory stays bounded.
const COPY_BATCH_BYTES: usize = 16 << 20;

/// What [`MvccStore::write_snapshot`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The applied index recorded in the copied state: the Raft log index the snapshot stands
    /// for.
    pub applied_index: u64,
    /// The store revision of the copied state.
    pub revision: i64,
    /// The size in bytes of the written file.
    pub size: u64,
}

impl MvccStore {
    /// Writes a consistent copy of the store, as of one read transaction, into a new redb file at
    /// `dest` (replacing any file there; `dest` must not be the store's own file) and makes it
    /// durable (file and directory fsync'd). Applies go on meanwhile; the copy sees none of them.
    ///
    /// The copy is what [`install_snapshot`](Self::install_snapshot) takes on another member,
    /// and a backup that `concord snapshot restore` can start a new cluster from (after
    /// [`reset_applied_index`](Self::reset_applied_index)).
    pub fn write_snapshot(&self, dest: &Path) -> Result<SnapshotInfo, StorageError> {
        if is_same_file(dest, self.path()) {
            return Err(StorageError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "snapshot destination is the store's own file",
            )));
        }
        let info = copy_database(&self.db(), dest, None)?;
        tracing::info!(
            path = %dest.display(),
            applied_index = info.applied_index,
            revision = info.revision,
            size = info.size,
            "wrote snapshot"
        );
        Ok(info)
    }

    /// Replaces the store's whole content with the snapshot file at `src` (one written by
    /// [`write_snapshot`](Self::write_snapshot)), including the applied index recorded in it.
    ///
    /// `src` is consumed: it is renamed over the store's file (copied first if it lies on
    /// another file system), so put it next to the store to avoid the copy. It is checked before
    /// anything changes (a file redb cannot open, or whose pages fail their checksums, is
    /// refused and the store is left as it was). Then, under the writer lock, the file replaces
    /// the store's and every counter is reloaded from it. Reads already running finish on the
    /// old content; later reads see only the new. An error after the rename leaves the store
    /// unusable: the member must stop.
    pub fn install_snapshot(&self, src: &Path) -> Result<(), StorageError> {
        if is_same_file(src, self.path()) {
            return Err(StorageError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "snapshot to install is the store's own file",
            )));
        }
        let (incoming, sealed_with) = verify_snapshot(src)?;
        // Values sealed with keys this member lacks could never be read: refuse before anything
        // changes.
        crate::sealing::check_keys(&sealed_with, self.sealer(), &format!("snapshot {}", src.display()))?;
        let mut state = self.lock_writer();
        let previous = self.applied_index();
        if incoming.applied_index < previous {
            // Raft only sends snapshots ahead of a member; going back is the caller's choice.
            tracing::warn!(
                previous_applied_index = previous,
                applied_index = incoming.applied_index,
                "installing a snapshot older than the applied state"
            );
        }
        move_into_place(src, self.path())?;
        let meta = self.reopen_file(&mut state)?;
        tracing::info!(
            previous_applied_index = previous,
            applied_index = meta.applied_index,
            revision = meta.revision,
            compact_revision = meta.compact_revision,
            "installed snapshot"
        );
        debug_assert_eq!(meta.applied_index, incoming.applied_index);
        Ok(())
    }

    /// Sets the applied index recorded in the (closed) store file at `path` and makes it
    /// durable. `concord snapshot restore` uses it on a snapshot file, since a restored cluster
    /// starts a new Raft log.
    pub fn reset_applied_index(path: &Path, index: u64) -> Result<(), StorageError> {
        let (db, _) = prepare_database(crate::store::database_builder().open(path)?)?;
        let txn = db.begin_write()?;
        txn.open_table(keys::META)?.insert(META_APPLIED_INDEX, index)?;
        txn.commit()?;
        db.close()?;
        Ok(())
    }

    /// Reclaims the file's free space, as etcd's defragment: rewrites the store into a fresh
    /// file next to it and installs that in its place. Content, applied index, and hashes are
    /// unchanged. With encryption at rest, every value is re-sealed under the first key of the
    /// key file, so older keys are no longer needed by this file. Applies wait until it is done
    /// (it holds the writer lock throughout, which takes about as long as a snapshot); reads go
    /// on, on the old file until the swap.
    pub fn defragment(&self) -> Result<(), StorageError> {
        let mut state = self.lock_writer();
        let before = self.db_size();
        let fresh = sibling(self.path(), "defrag");
        if let Err(err) = copy_database(&self.db(), &fresh, self.sealer()) {
            // Best effort: a leftover is replaced by the next attempt anyway.
            let _ = fs::remove_file(&fresh);
            return Err(err);
        }
        move_into_place(&fresh, self.path())?;
        self.reopen_file(&mut state)?;
        tracing::info!(before, after = self.db_size(), "defragmented store");
        Ok(())
    }
}

/// Copies every table of `db`, as of one read transaction, into a new file at `dest`; with
/// `reseal`, every value is re-sealed under its first key.
fn copy_database(db: &Database, dest: &Path, reseal: Option<&Sealer>) -> Result<SnapshotInfo, StorageError> {
    let snapshot = db.begin_read()?;
    let meta = read_meta(&snapshot.open_table(keys::META)?)?;
    match fs::remove_file(dest) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err.into()),
    }
    let out = Database::builder().create(dest)?;
    match reseal {
        None => copy_table(&snapshot, &out, keys::REVISIONS)?,
        Some(sealer) => copy_resealed(&snapshot, &out, sealer, COPY_BATCH_BYTES)?,
    }
    copy_table(&snapshot, &out, keys::LEASES)?;
    copy_table(&snapshot, &out, keys::LEASE_KEYS)?;
    copy_table(&snapshot, &out, keys::LEASE_REMAINING)?;
    copy_table(&snapshot, &out, keys::ALARMS)?;
    copy_table(&snapshot, &out, crate::auth::USERS)?;
    copy_table(&snapshot, &out, crate::auth::ROLES)?;
    copy_table(&snapshot, &out, crate::auth::META)?;
    copy_table(&snapshot, &out, keys::META)?;
    copy_table(&snapshot, &out, crate::split::SHARD)?;
    copy_table(&snapshot, &out, crate::cross_shard::HELD)?;
    copy_table(&snapshot, &out, crate::cross_shard::OUTCOMES)?;
    if let Some(sealer) = reseal {
        reset_keys(&out, sealer, meta.revision)?;
    }
    // The batches committed without fsync; this commit makes them all durable.
    out.begin_write()?.commit()?;
    out.close()?;
    sync_parent_dir(dest)?;
    Ok(SnapshotInfo {
        applied_index: meta.applied_index,
        revision: meta.revision,
        size: fs::metadata(dest)?.len(),
    })
}

/// Copies one table row by row, committing every [`COPY_BATCH_BYTES`]. The table is created in
/// `out` even when it is empty.
fn copy_table<K: Key + 'static, V: Value + 'static>(
    snapshot: &ReadTransaction,
    out: &Database,
    table: TableDefinition<K, V>,
) -> Result<(), StorageError> {
    let source = snapshot.open_table(table)?;
    let mut rows = source.iter()?;
    loop {
        let mut txn = out.begin_write()?;
        txn.set_durability(Durability::None)?;
        let mut more = false;
        {
            let mut dest = txn.open_table(table)?;
            let mut bytes = 0;
            for row in rows.by_ref() {
                let (key, value) = row?;
                let (key, value) = (key.value(), value.value());
                bytes += K::as_bytes(&key).as_ref().len() + V::as_bytes(&value).as_ref().len();
                dest.insert(key, value)?;
                if bytes >= COPY_BATCH_BYTES {
                    more = true;
                    break;
                }
            }
        }
        txn.commit()?;
        if !more {
            return Ok(());
        }
    }
}

/// Opens a received snapshot with every page checked, readies it as a store file, and makes it
/// durable: nothing of the running store changes before this succeeds. Returns its counters and
/// the keys that sealed its values.
fn verify_snapshot(src: &Path) -> Result<(Meta, Vec<KeyId>), StorageError> {
    let db = Database::builder().set_check_integrity_on_open(true).open(src)?;
    let (db, meta) = prepare_database(db)?;
    let sealed_with = sealed_ids(&db.begin_read()?.open_table(keys::META)?)?;
    db.close()?;
    // Whoever wrote the file may not have synced it.
    File::open(src)?.sync_all()?;
    Ok((meta, sealed_with))
}

/// Renames `src` over `dest` durably; across file systems, copies it next to `dest` first.
fn move_into_place(src: &Path, dest: &Path) -> Result<(), StorageError> {
    if let Err(err) = fs::rename(src, dest) {
        if err.kind() != io::ErrorKind::CrossesDevices {
            return Err(err.into());
        }
        let staged = sibling(dest, "install");
        fs::copy(src, &staged)?;
        File::open(&staged)?.sync_all()?;
        fs::rename(&staged, dest)?;
        fs::remove_file(src)?;
    }
    sync_parent_dir(dest)
}

/// `path` with `.suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// Makes the directory entries of `path`'s directory durable (a rename or a new file in it).
pub(crate) fn sync_parent_dir(path: &Path) -> Result<(), StorageError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Whether `a` and `b` name the same existing file.
fn is_same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
