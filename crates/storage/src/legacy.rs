//! Stores written before the `revisions` table: the first time such a file is opened (as a
//! store, or as a snapshot to install), its `kv`, `latest` and `changes` tables are folded into
//! `revisions`, in the same transaction that readies the file, so a crash leaves either layout
//! whole.
//!
//! The old layout kept every version in `kv` ((user key, main, sub) → record, or empty for a
//! deletion), the newest live record of each key in `latest`, and a `changes` row per change
//! above the compaction point and at it. Each `kv` row becomes the `revisions` row of the same
//! revision; `latest` had nothing else. Compaction had also dropped from `kv` the deletions at
//! exactly the compaction point (which `revisions` keeps for watchers), so those come from
//! `changes`. A put at the compaction point that a later change in the same revision replaced
//! is gone from the old file altogether and stays gone; nothing else differs from a store that
//! applied the same log in the new layout, hashes included. Records are copied as stored, so a
//! value sealed in the old layout stays sealed (and opens: its header bytes are unchanged).

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use crate::error::StorageError;
use crate::keys::{self, encode_row, encode_row_stored, row_id, Record};

/// The old `kv` table.
pub(crate) const KV: TableDefinition<(&[u8], u64, u64), &[u8]> = TableDefinition::new("kv");
/// The old `latest` table.
pub(crate) const LATEST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("latest");
/// The old `changes` table: `(main, sub)` → change kind byte, then the user key.
pub(crate) const CHANGES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("changes");
/// The change kind byte of a deletion in `changes`.
pub(crate) const CHANGE_DELETE: u8 = 1;

/// Folds the old tables of `txn`'s file into `revisions` and deletes them; does nothing to a
/// file without them.
pub(crate) fn migrate(txn: &WriteTransaction) -> Result<(), StorageError> {
    if !txn.list_tables()?.any(|table| table.name() == KV.name()) {
        return Ok(());
    }
    let mut rows = 0u64;
    {
        let mut revisions = txn.open_table(keys::REVISIONS)?;
        let mut buf = Vec::new();
        let kv = txn.open_table(KV)?;
        for row in kv.iter()? {
            let (id, value) = row?;
            let (key, main, sub) = id.value();
            let value = value.value();
            if !value.is_empty() {
                // Validated, then copied as stored: a sealed value stays bound to the same
                // header bytes.
                Record::decode(value)?;
            }
            encode_row_stored(&mut buf, key, value)?;
            revisions.insert(row_id(main, sub), buf.as_slice())?;
            rows += 1;
        }
        let changes = txn.open_table(CHANGES)?;
        for row in changes.iter()? {
            let (id, value) = row?;
            let (main, sub) = id.value();
            let Some((&CHANGE_DELETE, key)) = value.value().split_first() else {
                continue;
            };
            if revisions.get(row_id(main, sub))?.is_none() {
                encode_row(&mut buf, key, None, None)?;
                revisions.insert(row_id(main, sub), buf.as_slice())?;
                rows += 1;
            }
        }
    }
    txn.delete_table(KV)?;
    txn.delete_table(LATEST)?;
    txn.delete_table(CHANGES)?;
    tracing::info!(rows, "moved the store to the revisions layout");
    Ok(())
}
