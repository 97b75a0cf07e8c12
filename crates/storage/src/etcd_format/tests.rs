//! Round trips: the bbolt writer against the reader, and a store exported then imported.

use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::RaftCommand;
use concord_proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, Member, PutRequest, RangeRequest,
};

use super::bolt_read::{BoltFile, BucketRoot};
use super::bolt_write::{encode_file, BoltWriter, Bucket, Item, PAGE_SIZE};
use super::{etcd_snapshot_status, is_etcd_backend, Crc32c};
use crate::{ApplyEntry, MvccStore};

/// Reads a bucket back into the writer's form, nested buckets included.
fn read_back(file: &BoltFile, root: BucketRoot<'_>) -> Bucket {
    let mut out = Bucket::default();
    for e in file.entries(root).unwrap() {
        let item = if e.is_bucket {
            Item::Bucket(read_back(file, file.open_bucket(e.value).unwrap()))
        } else {
            Item::Value(e.value.to_vec())
        };
        out.entries.insert(e.key.to_vec(), item);
    }
    out
}

#[test]
fn bolt_files_read_back_whole() {
    let mut root = Bucket::default();
    // Many keys: several leaves and a branch level.
    let big = root.bucket(b"many");
    for i in 0..20_000u32 {
        big.put(
            format!("key-{i:08}").into_bytes(),
            vec![(i % 251) as u8; (i % 97) as usize],
        );
    }
    // Values bigger than a page: overflow pages.
    let huge = root.bucket(b"huge");
    huge.put(b"a".to_vec(), vec![1u8; 3 * PAGE_SIZE + 5]);
    huge.put(b"b".to_vec(), vec![2u8; 10]);
    // Small buckets are inlined; nested buckets are not.
    root.bucket(b"small").put(b"k".to_vec(), b"v".to_vec());
    root.bucket(b"empty");
    root.bucket(b"outer").bucket(b"inner").put(b"x".to_vec(), b"y".to_vec());
    let bytes = encode_file(&root);
    assert_eq!(bytes.len() % PAGE_SIZE, 0);
    let file = BoltFile::parse(bytes).unwrap();
    assert_eq!(read_back(&file, file.root()), root);
    let small = file
        .entries(file.root())
        .unwrap()
        .into_iter()
        .find(|e| e.key == b"small")
        .unwrap();
    assert!(matches!(file.open_bucket(small.value).unwrap(), BucketRoot::Inline(_)));
}

#[test]
fn keys_bigger_than_half_a_page_still_make_a_tree() {
    // Users or roles with long names: every branch element is bigger than half a page.
    let mut root = Bucket::default();
    let users = root.bucket(b"authUsers");
    for i in 0..50u8 {
        users.put(vec![i; 3 * PAGE_SIZE], vec![i; 10]);
    }
    let bytes = encode_file(&root);
    assert!(
        bytes.len() < 4 * 50 * 3 * PAGE_SIZE,
        "{} bytes for 600 KiB of keys",
        bytes.len()
    );
    let file = BoltFile::parse(bytes).unwrap();
    assert_eq!(read_back(&file, file.root()), root);
}

#[test]
fn streamed_buckets_read_back_and_small_ones_inline() {
    let rows =
        |n: u32| (0..n).map(|i| Ok::<_, std::io::Error>((i.to_be_bytes().to_vec(), vec![i as u8; (i % 300) as usize])));
    let mut writer = BoltWriter::new(std::io::Cursor::new(Vec::new())).unwrap();
    let big = writer.stream_bucket(rows(5000)).unwrap();
    let small = writer.stream_bucket(rows(3)).unwrap();
    let mut root = Bucket::default();
    root.entries.insert(b"big".to_vec(), Item::Written(big));
    root.entries.insert(b"small".to_vec(), Item::Written(small));
    let (out, size) = writer.finish(root).unwrap();
    let bytes = out.into_inner();
    assert_eq!(bytes.len() as u64, size);
    let file = BoltFile::parse(bytes).unwrap();
    for (name, n) in [(&b"big"[..], 5000u32), (b"small", 3)] {
        let bucket = file.bucket(name).unwrap().unwrap();
        assert_eq!(matches!(bucket, BucketRoot::Inline(_)), n == 3);
        let got: Vec<(Vec<u8>, Vec<u8>)> = file
            .entries(bucket)
            .unwrap()
            .iter()
            .map(|e| (e.key.to_vec(), e.value.to_vec()))
            .collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> = rows(n).map(Result::unwrap).collect();
        assert_eq!(got, want);
    }
}

#[test]
fn damaged_bolt_files_are_errors_not_panics() {
    let mut root = Bucket::default();
    for i in 0..3000u32 {
        root.bucket(b"k").put(i.to_be_bytes().to_vec(), vec![7u8; 40]);
    }
    let bytes = encode_file(&root);
    assert!(BoltFile::parse(bytes[..PAGE_SIZE].to_vec()).is_err());
    assert!(BoltFile::parse(b"not a bolt file at all".to_vec()).is_err());
    // Flip bytes all over the data pages: reading may fail, never panic.
    for at in (2 * PAGE_SIZE..bytes.len()).step_by(509) {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0xa5;
        if let Ok(file) = BoltFile::parse(damaged) {
            if let Ok(entries) = file.entries(file.root()) {
                for e in entries.iter().filter(|e| e.is_bucket) {
                    if let Ok(b) = file.open_bucket(e.value) {
                        let _ = file.entries(b);
                    }
                }
            }
        }
    }
    // A damaged meta page falls back to the other one.
    let mut one_meta = bytes.clone();
    one_meta[PAGE_SIZE + 40] ^= 1;
    assert!(BoltFile::parse(one_meta).is_ok());
}

#[test]
fn crc32c_is_castagnoli() {
    let mut crc = Crc32c::new();
    crc.update(b"1234");
    crc.update(b"56789");
    assert_eq!(crc.finish(), 0xE306_9283);
}

fn apply(store: &MvccStore, index: u64, op: Op) {
    let cmd = RaftCommand { op: Some(op) };
    let results = store
        .apply(&[ApplyEntry {
            index,
            command: Some(&cmd),
            stamp: None,
        }])
        .unwrap();
    for (_, r) in results {
        r.unwrap();
    }
}

fn put(key: &str, value: &str, lease: i64) -> Op {
    Op::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        lease,
        ..Default::default()
    })
}

#[test]
fn a_store_survives_export_and_import() {
    let dir = tempfile::tempdir().unwrap();
    let store = MvccStore::open(&dir.path().join("a.redb")).unwrap();
    let ops = vec![
        put("a", "1", 0),
        put("a", "2", 0),
        put("b", "x", 0),
        Op::LeaseGrant(LeaseGrantRequest { ttl: 600, id: 0x1234 }),
        put("leased", "v", 0x1234),
        Op::DeleteRange(DeleteRangeRequest {
            key: "b".into(),
            ..Default::default()
        }),
        put("a", "3", 0),
        Op::Compaction(CompactionRequest {
            revision: 3,
            physical: true,
        }),
        put("c", "after", 0),
    ];
    for (i, op) in ops.into_iter().enumerate() {
        apply(&store, i as u64 + 1, op);
    }
    let snap = dir.path().join("etcd.db");
    let member = Member {
        id: 1,
        name: "m".into(),
        peer_ur_ls: vec!["http://a:2380".into()],
        ..Default::default()
    };
    let written = store.write_etcd_snapshot(&snap, &[member]).unwrap();
    assert_eq!(written.revision, store.current_revision());
    assert_eq!(written.compact_revision, 3);

    let bytes = std::fs::read(&snap).unwrap();
    assert!(is_etcd_backend(&bytes));
    let status = etcd_snapshot_status(bytes.clone()).unwrap();
    assert_eq!(status.revision, store.current_revision());

    let imported_path = dir.path().join("b.redb");
    let imported = MvccStore::import_etcd_snapshot(bytes, &imported_path).unwrap();
    assert_eq!(imported.revision, written.revision);
    assert_eq!(imported.compact_revision, 3);
    assert_eq!(imported.key_revisions, written.key_revisions);
    let copy = MvccStore::open(&imported_path).unwrap();
    assert_eq!(copy.current_revision(), store.current_revision());
    assert_eq!(copy.compact_revision(), store.compact_revision());
    assert_eq!(copy.hash_kv(0).unwrap(), store.hash_kv(0).unwrap());
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    assert_eq!(copy.range(&all).unwrap().0.kvs, store.range(&all).unwrap().0.kvs);
    let at4 = RangeRequest { revision: 4, ..all };
    assert_eq!(copy.range(&at4).unwrap().0.kvs, store.range(&at4).unwrap().0.kvs);
    assert_eq!(copy.lease_ttl(0x1234).unwrap(), Some(600));
    assert_eq!(copy.lease_keys(0x1234).unwrap(), vec![b"leased".to_vec()]);
}
