//! Micro-benchmarks of the MVCC store's hot paths, to guard them against regressions:
//!
//! - `put`: applying a batch of 64 puts (what one Raft Ready typically carries under load),
//!   over a key space of 10,000 keys that already exist, so each put replaces a version;
//! - `range`: a single-key read at the current revision, and a 100-key prefix read;
//! - `compaction`: compacting away four old versions of each of 2,000 keys;
//! - `open`: opening a store of 10,000 keys with two versions each, which rebuilds its in-memory
//!   key index from the file (what a member pays on start, snapshot install and defragment).
//!
//! Each batch is one redb write transaction committed without fsync, as the store does between
//! its periodic durable commits, so the numbers are the store's CPU cost, not the disk's.
//!
//! With `CONCORD_BENCH_SEAL=1` in the environment the stores seal their values (encryption at
//! rest, `--encryption-key-file`), to measure what that costs.

use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::RaftCommand;
use concord_proto::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};
use concord_storage::{ApplyEntry, MvccStore};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const KEYS: u64 = 10_000;
const BATCH: u64 = 64;

fn key(i: u64) -> Vec<u8> {
    format!("/bench/key/{i:08}").into_bytes()
}

fn put(i: u64, value_size: usize) -> RaftCommand {
    RaftCommand {
        op: Some(Op::Put(PutRequest {
            key: key(i),
            value: vec![b'v'; value_size],
            ..Default::default()
        })),
    }
}

/// A store in a temporary directory with its Raft index counter.
struct Bench {
    _dir: tempfile::TempDir,
    store: MvccStore,
    next_index: u64,
}

impl Bench {
    fn new() -> Bench {
        let dir = tempfile::tempdir().expect("tempdir");
        let sealer = std::env::var_os("CONCORD_BENCH_SEAL").map(|_| {
            let keys = "bench:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
            let keyring = concord_crypt::Keyring::parse(keys, "bench keys").expect("key");
            std::sync::Arc::new(concord_crypt::Sealer::new(std::sync::Arc::new(keyring)).expect("sealer"))
        });
        let store = MvccStore::open_with(&dir.path().join("kv.redb"), sealer).expect("open store");
        Bench {
            _dir: dir,
            store,
            next_index: 1,
        }
    }

    fn apply(&mut self, commands: &[RaftCommand]) {
        let entries: Vec<ApplyEntry<'_>> = commands
            .iter()
            .map(|command| {
                self.next_index += 1;
                ApplyEntry {
                    index: self.next_index,
                    command: Some(command),
                }
            })
            .collect();
        for (_, result) in self.store.apply(&entries).expect("apply") {
            result.expect("command succeeds");
        }
    }

    /// Writes every key of the key space `versions` times.
    fn load(&mut self, keys: u64, versions: u64) {
        for _ in 0..versions {
            for start in (0..keys).step_by(1000) {
                let batch: Vec<RaftCommand> = (start..(start + 1000).min(keys)).map(|i| put(i, 256)).collect();
                self.apply(&batch);
            }
        }
    }
}

fn bench_put(c: &mut Criterion) {
    let mut bench = Bench::new();
    bench.load(KEYS, 1);
    let mut group = c.benchmark_group("put");
    group.throughput(Throughput::Elements(BATCH));
    let mut next = 0u64;
    group.bench_function("batch of 64 puts, 256 B values", |b| {
        b.iter_batched(
            || {
                let batch: Vec<RaftCommand> = (0..BATCH).map(|i| put((next + i * 157) % KEYS, 256)).collect();
                next += BATCH;
                batch
            },
            |batch| bench.apply(&batch),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_range(c: &mut Criterion) {
    let mut bench = Bench::new();
    bench.load(KEYS, 2);
    let mut group = c.benchmark_group("range");
    let mut i = 0u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function("one key at the current revision", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            let request = RangeRequest {
                key: key(i),
                ..Default::default()
            };
            let (response, _) = bench.store.range(&request).expect("range");
            assert_eq!(response.kvs.len(), 1);
        })
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("100-key prefix", |b| {
        b.iter(|| {
            i = (i + 7919) % (KEYS / 100);
            let prefix = format!("/bench/key/{:06}", i).into_bytes();
            let mut end = prefix.clone();
            *end.last_mut().expect("non-empty") += 1;
            let request = RangeRequest {
                key: prefix,
                range_end: end,
                ..Default::default()
            };
            let (response, _) = bench.store.range(&request).expect("range");
            assert_eq!(response.kvs.len(), 100);
        })
    });
    group.finish();
}

fn bench_compaction(c: &mut Criterion) {
    const COMPACT_KEYS: u64 = 2_000;
    let mut group = c.benchmark_group("compaction");
    group.sample_size(10);
    group.throughput(Throughput::Elements(COMPACT_KEYS * 4));
    group.bench_function("4 old versions of 2,000 keys", |b| {
        b.iter_batched(
            || {
                let mut bench = Bench::new();
                bench.load(COMPACT_KEYS, 5);
                bench
            },
            |mut bench| {
                let revision = bench.store.current_revision();
                let compact = RaftCommand {
                    op: Some(Op::Compaction(CompactionRequest {
                        revision,
                        physical: false,
                    })),
                };
                bench.apply(&[compact]);
                bench
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn bench_open(c: &mut Criterion) {
    let mut bench = Bench::new();
    bench.load(KEYS, 2);
    bench.store.sync().expect("sync");
    let path = bench.store.path().to_path_buf();
    let Bench { _dir: dir, store, .. } = bench;
    drop(store);
    let mut group = c.benchmark_group("open");
    group.sample_size(20);
    group.throughput(Throughput::Elements(KEYS));
    group.bench_function("10,000 keys x 2 versions", |b| {
        b.iter(|| MvccStore::open(&path).expect("open store"))
    });
    group.finish();
    drop(dir);
}

criterion_group!(benches, bench_put, bench_range, bench_compaction, bench_open);
criterion_main!(benches);
