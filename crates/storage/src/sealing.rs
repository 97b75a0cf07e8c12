//! Encryption at rest, store side: which keys sealed values of a store file, the checks made
//! when a store is opened or a snapshot installed, and the re-sealing copy a defragment makes.
//! Sealing and opening single records is in `keys.rs` (`encode_record`, `Record::value`,
//! `plain_record`, `plain_row`, `reseal_row`).
//!
//! `meta` holds a row `sealed_key:<key id>` (value: the revision at which it was recorded) for
//! every key that may have sealed a value of the file. A member records its key in the first
//! batch it applies; the rows travel with snapshots, and a defragment, which re-seals every value
//! under the first key, keeps only that key's row. So an old key is needed until every member
//! has been defragmented after the rotation. Only `meta`'s revision and compaction point are
//! hashed, so these rows, which differ between members with different keys, never upset a hash.

use concord_crypt::{KeyId, Sealer};
use redb::{Database, Durability, ReadTransaction, ReadableTable, WriteTransaction};

use crate::error::StorageError;
use crate::keys::{self, reseal_row};

/// Prefix of the `meta` rows naming the keys that sealed values.
const SEALED_KEY_PREFIX: &str = "sealed_key:";
/// The first string after every row with [`SEALED_KEY_PREFIX`] (`;` follows `:`).
const SEALED_KEY_END: &str = "sealed_key;";

/// The `meta` row of key `id`.
fn row(id: KeyId) -> String {
    format!("{SEALED_KEY_PREFIX}{id}")
}

/// The key ids recorded in `meta` as having sealed values of the file.
pub(crate) fn sealed_ids<T: ReadableTable<&'static str, u64>>(meta: &T) -> Result<Vec<KeyId>, StorageError> {
    let mut ids = Vec::new();
    for entry in meta.range::<&str>(SEALED_KEY_PREFIX..SEALED_KEY_END)? {
        let (name, _) = entry?;
        let name = name.value();
        let hex = &name[SEALED_KEY_PREFIX.len()..];
        let id =
            u32::from_str_radix(hex, 16).map_err(|_| StorageError::Corrupt(format!("malformed meta row {name:?}")))?;
        ids.push(KeyId(id));
    }
    Ok(ids)
}

/// Records in `txn` that key `id` seals values from `revision` on.
pub(crate) fn record_key(txn: &WriteTransaction, id: KeyId, revision: i64) -> Result<(), StorageError> {
    txn.open_table(keys::META)?.insert(row(id).as_str(), revision as u64)?;
    Ok(())
}

/// Fails unless `sealer` can open every key in `ids`; `what` names the file in the message.
pub(crate) fn check_keys(ids: &[KeyId], sealer: Option<&Sealer>, what: &str) -> Result<(), StorageError> {
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| !sealer.is_some_and(|s| s.keyring().contains(**id)))
        .map(|id| id.to_string())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let missing = missing.join(", ");
    Err(StorageError::Encryption(match sealer {
        None => format!(
            "{what} holds values sealed with key id {missing}; start with \
             --encryption-key-file listing that key"
        ),
        Some(s) => format!(
            "{what} holds values sealed with key id {missing}, which the key file does not list \
             (it has {}); put the key back (a defragment re-seals every value under the first \
             key, after which it is no longer needed)",
            s.keyring().describe()
        ),
    }))
}

/// Copies `revisions` into `out`, each value re-sealed under `sealer`'s first key, committing
/// every `batch_bytes`.
pub(crate) fn copy_resealed(
    snapshot: &ReadTransaction,
    out: &Database,
    sealer: &Sealer,
    batch_bytes: usize,
) -> Result<(), StorageError> {
    let source = snapshot.open_table(keys::REVISIONS)?;
    let mut rows = source.iter()?;
    let mut buf = Vec::new();
    loop {
        let mut txn = out.begin_write()?;
        txn.set_durability(Durability::None)?;
        let mut more = false;
        {
            let mut dest = txn.open_table(keys::REVISIONS)?;
            let mut bytes = 0;
            for row in rows.by_ref() {
                let (id, value) = row?;
                reseal_row(value.value(), Some(sealer), &mut buf)?;
                bytes += std::mem::size_of::<keys::RowId>() + buf.len();
                dest.insert(id.value(), buf.as_slice())?;
                if bytes >= batch_bytes {
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

/// After a re-sealing copy: `out`'s `meta` names only `sealer`'s first key.
pub(crate) fn reset_keys(out: &Database, sealer: &Sealer, revision: i64) -> Result<(), StorageError> {
    let txn = out.begin_write()?;
    {
        let mut meta = txn.open_table(keys::META)?;
        let old = sealed_ids(&meta)?;
        for id in old {
            meta.remove(row(id).as_str())?;
        }
    }
    record_key(&txn, sealer.active_id(), revision)?;
    txn.commit()?;
    Ok(())
}
