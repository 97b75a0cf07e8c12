//! Measurements of the key index (run by hand, they print figures): its heap size per key and
//! how long a store takes to open (rebuilding it) for a given number of keys.
//!
//! `CONCORD_INDEX_KEYS=1000000 cargo test -p concord-storage --release -- --ignored --nocapture
//! index_memory_and_rebuild_time`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::*;
use crate::index::KeyIndex;
use crate::keys;

/// The system allocator, counting the bytes and blocks currently allocated through it.
struct Counting;

static BYTES: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        BLOCKS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        BYTES.fetch_add(new_size, Ordering::Relaxed);
        BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
#[ignore = "a measurement, run by hand"]
fn index_memory_and_rebuild_time() {
    let keys: u64 = std::env::var("CONCORD_INDEX_KEYS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let versions: u64 = std::env::var("CONCORD_INDEX_VERSIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    {
        let store = MvccStore::open(&path).unwrap();
        let mut index = 0;
        for _ in 0..versions {
            for start in (0..keys).step_by(10_000) {
                let commands: Vec<RaftCommand> = (start..(start + 10_000).min(keys))
                    .map(|i| RaftCommand {
                        op: Some(Op::Put(PutRequest {
                            key: format!("/bench/key/{i:08}").into_bytes(),
                            value: vec![b'v'; 256],
                            ..Default::default()
                        })),
                    })
                    .collect();
                let entries: Vec<ApplyEntry<'_>> = commands
                    .iter()
                    .map(|command| {
                        index += 1;
                        ApplyEntry {
                            index,
                            command: Some(command),
                            stamp: None,
                        }
                    })
                    .collect();
                store.apply(&entries).unwrap();
            }
        }
        store.sync().unwrap();
    }

    let started = Instant::now();
    let store = MvccStore::open(&path).unwrap();
    let open = started.elapsed();
    drop(store);

    // The index alone: what dropping it gives back.
    let db = redb::Database::open(&path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let table = txn.open_table(keys::REVISIONS).unwrap();
    let started = Instant::now();
    let index = KeyIndex::load(&table, 0, -1).unwrap();
    let load = started.elapsed();
    let (bytes, blocks) = (BYTES.load(Ordering::SeqCst), BLOCKS.load(Ordering::SeqCst));
    drop(index);
    let bytes = bytes - BYTES.load(Ordering::SeqCst);
    let blocks = blocks - BLOCKS.load(Ordering::SeqCst);
    println!(
        "{keys} keys x {versions} versions (19-byte keys, 256 B values), file {} MiB: \
         open {:.0} ms (index scan alone {:.0} ms); index {:.1} MiB in {blocks} blocks = \
         {:.0} B per key requested, ~{:.0} B per key with glibc's 16 B per block",
        std::fs::metadata(&path).unwrap().len() >> 20,
        open.as_secs_f64() * 1e3,
        load.as_secs_f64() * 1e3,
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / keys as f64,
        (bytes + 16 * blocks) as f64 / keys as f64,
    );
}
