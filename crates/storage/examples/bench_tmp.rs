use concord_proto::concordpb::{raft_command::Op, RaftCommand};
use concord_proto::etcdserverpb::{PutRequest, RangeRequest};
use concord_storage::{ApplyEntry, MvccStore};
use std::time::Instant;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = MvccStore::open(&dir.path().join("kv.redb")).unwrap();
    let n = 100_000u64;
    let batch = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1usize);
    let cmds: Vec<RaftCommand> = (0..n)
        .map(|i| RaftCommand { op: Some(Op::Put(PutRequest { key: format!("key/{:08}", i % 10_000).into_bytes(), value: vec![7u8; 256], ..Default::default() })) })
        .collect();
    let t = Instant::now();
    let mut idx = 1;
    for chunk in cmds.chunks(batch) {
        let entries: Vec<_> = chunk.iter().map(|c| { let e = ApplyEntry { index: idx, command: Some(c) }; idx += 1; e }).collect();
        store.apply(&entries).unwrap();
    }
    let el = t.elapsed();
    println!("batch {batch}: {n} puts in {:?} = {:.0} puts/s", el, n as f64 / el.as_secs_f64());
    let t = Instant::now();
    let reads = 10_000;
    for i in 0..reads {
        let (r, _) = store.range(&RangeRequest { key: format!("key/{:08}", (i * 7) % 10_000).into_bytes(), ..Default::default() }).unwrap();
        assert_eq!(r.kvs.len(), 1);
    }
    let el = t.elapsed();
    println!("single-key range: {:.0}/s", reads as f64 / el.as_secs_f64());
    let t = Instant::now();
    for _ in 0..100 {
        let (r, _) = store.range(&RangeRequest { key: b"key/".to_vec(), range_end: b"key0".to_vec(), limit: 100, ..Default::default() }).unwrap();
        assert_eq!(r.count, 10_000);
    }
    println!("prefix range limit 100 (count 10k): {:?}/op", t.elapsed() / 100);
    let rev = store.current_revision() - 5000;
    let t = Instant::now();
    for _ in 0..10 {
        let (r, _) = store.range(&RangeRequest { key: b"key/".to_vec(), range_end: b"key0".to_vec(), revision: rev, ..Default::default() }).unwrap();
        assert_eq!(r.count, 10_000);
    }
    println!("historical full range 10k keys x10 versions: {:?}/op", t.elapsed() / 10);
    let t = Instant::now();
    let c = RaftCommand { op: Some(Op::Compaction(concord_proto::etcdserverpb::CompactionRequest { revision: store.current_revision() - 1000, physical: true })) };
    store.apply(&[ApplyEntry { index: idx, command: Some(&c) }]).unwrap();
    println!("compaction of ~99k versions: {:?}", t.elapsed());
}
