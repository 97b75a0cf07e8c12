//! `concord snapshot status FILE`: what a backup holds, before restoring it
//! (like `etcdutl snapshot status`): its hash, revision, number of keys and
//! size, in etcdctl's simple, table or JSON output.
//!
//! An etcd-format snapshot (what `snapshot save` writes, and etcd's) gets
//! etcdutl's numbers exactly: the CRC-32C of its buckets, the newest revision
//! in `key`, and the entries of every bucket. A redb snapshot (of an earlier
//! Concord) gets the store's `Hash` (what the Maintenance Hash RPC returns for
//! a member holding the same data) and the number of live keys; its store is
//! read from a private temporary copy, so the file itself is never opened for
//! writing.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use clap::Args;
use concord_proto::etcdserverpb::RangeRequest;
use concord_storage::MvccStore;
use serde::Serialize;

use super::{create_private, inspect};
use crate::output::{print_json, si_bytes, Align, Format, OutputArgs, Table};

/// Flags of `concord snapshot status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The snapshot file.
    pub file: PathBuf,
    /// Read the file even if its SHA-256 trailer is missing or wrong.
    #[arg(long)]
    pub skip_hash_check: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// etcdutl's snapshot status, in its JSON field names.
#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct SnapshotStatus {
    /// The store's hash (etcdutl's CRC-32C of the buckets; a redb store's Hash).
    pub hash: u32,
    /// The store's revision.
    pub revision: i64,
    /// Entries of all buckets (etcdutl's count); live keys of a redb store.
    #[serde(rename = "totalKey")]
    pub total_keys: i64,
    /// Bytes of the store (the file but its trailer).
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// Prints the status of a snapshot file.
pub fn run(args: StatusArgs) -> Result<(), String> {
    let status = read_status(&args.file, args.skip_hash_check).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let row = [
        format!("{:x}", status.hash),
        status.revision.to_string(),
        status.total_keys.to_string(),
        si_bytes(status.total_size),
    ];
    match args.output.write_out {
        Format::Simple => println!("{}", row.join(", ")),
        Format::Table => {
            let mut table = Table::new(&["hash", "revision", "total keys", "total size"], Align::Right);
            table.row(row);
            print!("{}", table.render());
        }
        Format::Json => print_json(&status)?,
    }
    Ok(())
}

/// Reads what a snapshot file holds, from a temporary copy of its store.
pub fn read_status(path: &std::path::Path, skip_hash_check: bool) -> Result<SnapshotStatus, String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let layout = inspect(&mut file, skip_hash_check)?;
    if super::etcd::is_etcd_snapshot(&mut file)? {
        let bytes = super::etcd::store_bytes(&mut file, &layout)?;
        let status =
            concord_storage::etcd_snapshot_status(bytes).map_err(|e| format!("not a usable etcd snapshot: {e}"))?;
        return Ok(SnapshotStatus {
            hash: status.hash,
            revision: status.revision,
            total_keys: status.total_key as i64,
            total_size: status.total_size,
        });
    }
    let dir = tempfile::tempdir().map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let copy = dir.path().join("kv.redb");
    {
        file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        let mut out = create_private(&copy).map_err(|e| format!("{}: {e}", copy.display()))?;
        std::io::copy(&mut Read::by_ref(&mut file).take(layout.store_len), &mut out)
            .map_err(|e| format!("{}: {e}", copy.display()))?;
    }
    let store = MvccStore::open(&copy).map_err(|e| format!("not a usable Concord store: {e}"))?;
    let hash = store.hash().map_err(|e| format!("cannot hash the store: {e}"))?;
    let every_key = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        count_only: true,
        ..Default::default()
    };
    let (counted, _) = store
        .range(&every_key)
        .map_err(|e| format!("cannot count the keys: {e}"))?;
    Ok(SnapshotStatus {
        hash,
        revision: store.current_revision(),
        total_keys: counted.count,
        total_size: layout.store_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_uses_etcdutls_names() {
        let s = SnapshotStatus {
            hash: 7,
            revision: 10,
            total_keys: 3,
            total_size: 4096,
        };
        assert_eq!(
            crate::output::to_json(&s).unwrap(),
            r#"{"hash":7,"revision":10,"totalKey":3,"totalSize":4096}"#
        );
    }

    #[test]
    fn a_file_that_is_no_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.db");
        std::fs::write(&path, vec![1u8; 4096]).unwrap();
        assert!(read_status(&path, false).unwrap_err().contains("--skip-hash-check"));
        assert!(read_status(&path, true).is_err());
    }
}
