//! Tests of opening a store file written in the layout before `revisions`.

use redb::{Database, ReadableDatabase, TableHandle};

use super::*;
use crate::keys::{encode_record, RecordHeader, META, META_APPLIED_INDEX};
use crate::keys::{META_COMPACT_REVISION, META_REVISION};
use crate::legacy::{CHANGES, CHANGE_DELETE, KV, LATEST};

fn record(create_revision: i64, mod_revision: i64, version: i64, value: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    let header = RecordHeader {
        create_revision,
        mod_revision,
        version,
        lease: 0,
    };
    encode_record(&mut buf, &header, value.as_bytes(), None);
    buf
}

fn change(kind: u8, key: &str) -> Vec<u8> {
    let mut buf = vec![kind];
    buf.extend_from_slice(key.as_bytes());
    buf
}

#[test]
fn old_files_are_folded_into_revisions() {
    // What the old layout held after: a=1 (2), a=2 (3), b=1 (4), delete b (5), compact 5,
    // c=1 (6).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut kv = txn.open_table(KV).unwrap();
            kv.insert((&b"a"[..], 3, 0), &record(2, 3, 2, "2")[..]).unwrap();
            kv.insert((&b"c"[..], 6, 0), &record(6, 6, 1, "1")[..]).unwrap();
            let mut latest = txn.open_table(LATEST).unwrap();
            latest.insert(&b"a"[..], &record(2, 3, 2, "2")[..]).unwrap();
            latest.insert(&b"c"[..], &record(6, 6, 1, "1")[..]).unwrap();
            let mut changes = txn.open_table(CHANGES).unwrap();
            changes.insert((5, 0), &change(CHANGE_DELETE, "b")[..]).unwrap();
            changes.insert((6, 0), &change(0, "c")[..]).unwrap();
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(META_APPLIED_INDEX, 6).unwrap();
            meta.insert(META_REVISION, 6).unwrap();
            meta.insert(META_COMPACT_REVISION, 5).unwrap();
        }
        txn.commit().unwrap();
    }

    let store = MvccStore::open(&path).unwrap();
    store.assert_index_matches_file();
    let (all, rev) = store.range(&range_bytes(b"\0", b"\0")).unwrap();
    assert_eq!(rev, 6);
    let got: Vec<_> = all
        .kvs
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone(), kv.version))
        .collect();
    assert_eq!(
        got,
        vec![(b"a".to_vec(), b"2".to_vec(), 2), (b"c".to_vec(), b"1".to_vec(), 1)]
    );
    let (events, _) = store.events(5, 10, true).unwrap();
    assert_eq!(events.len(), 2, "the deletion at the compaction point is still there");

    // The same log applied natively gives the same content.
    let mut native = Harness::new();
    native.put("a", "1");
    native.put("a", "2");
    native.put("b", "1");
    native.delete("b", b"");
    native.compact(5).unwrap();
    native.put("c", "1");
    assert_eq!(store.hash().unwrap(), native.store.hash().unwrap());
    assert_eq!(store.hash_kv(0).unwrap(), native.store.hash_kv(0).unwrap());
    assert_eq!(store.kv_rows(), native.store.kv_rows());

    // The old tables are gone, and opening again changes nothing.
    drop(store);
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let names: Vec<String> = txn.list_tables().unwrap().map(|t| t.name().to_string()).collect();
        assert!(!names.iter().any(|n| n == "kv" || n == "latest" || n == "changes"));
    }
    let store = MvccStore::open(&path).unwrap();
    assert_eq!(store.hash().unwrap(), native.store.hash().unwrap());
}
