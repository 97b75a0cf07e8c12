//! Tests of whole-store copies: write_snapshot, install_snapshot, reset_applied_index,
//! defragment, and the size reports.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use concord_proto::etcdserverpb::alarm_request::AlarmAction;
use concord_proto::etcdserverpb::{AlarmMember, AlarmRequest, AlarmType};

use super::*;

/// A store with history, a compaction, leases with keys and a checkpoint, and an alarm (CORRUPT,
/// raised last since it refuses writes).
fn populated() -> Harness {
    let mut h = Harness::new();
    for i in 0..50 {
        h.put(&format!("key/{i:03}"), &format!("v{i}"));
    }
    h.put("key/007", "again");
    h.delete("key/01", b"key/02");
    h.compact(20).unwrap();
    h.grant(5, 60).unwrap();
    h.grant(6, 90).unwrap();
    h.put_req(PutRequest {
        lease: 5,
        ..put_req("leased/a", "x")
    })
    .unwrap();
    h.apply(Op::LeaseCheckpoint(
        concord_proto::etcdserverpb::LeaseCheckpointRequest {
            checkpoints: vec![concord_proto::etcdserverpb::LeaseCheckpoint {
                id: 6,
                remaining_ttl: 33,
            }],
        },
    ))
    .unwrap();
    h.put("key/049", "last");
    h.apply(Op::Alarm(AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: 42,
        alarm: AlarmType::Corrupt as i32,
    }))
    .unwrap();
    h
}

/// Lowers the alarm [`populated`] raises.
fn disarm() -> Op {
    Op::Alarm(AlarmRequest {
        action: AlarmAction::Deactivate as i32,
        member_id: 42,
        alarm: AlarmType::Corrupt as i32,
    })
}

fn everything(h: &Harness) -> RangeResponse {
    h.range(range_bytes(b"\0", b"\0")).unwrap()
}

/// Everything a member's clients or peers could observe of the store.
#[derive(Debug, PartialEq)]
struct Observed {
    all: RangeResponse,
    /// Everything at an older revision (30, or the compaction point if that is later).
    older: RangeResponse,
    hash_kv: (u32, i64, i64),
    hash: u32,
    leases: Vec<(i64, i64)>,
    lease_remaining: Vec<(i64, i64)>,
    lease_keys: Vec<Vec<u8>>,
    alarms: Vec<AlarmMember>,
    revision: i64,
    compact_revision: i64,
}

fn observe(h: &Harness) -> Observed {
    Observed {
        all: everything(h),
        older: h
            .range(RangeRequest {
                revision: h.store.compact_revision().max(30),
                ..range_bytes(b"\0", b"\0")
            })
            .unwrap(),
        hash_kv: h.store.hash_kv(0).unwrap(),
        hash: h.store.hash().unwrap(),
        leases: h.store.leases().unwrap(),
        lease_remaining: {
            let mut remaining: Vec<(i64, i64)> = h.store.lease_remaining_ttls().unwrap().into_iter().collect();
            remaining.sort_unstable();
            remaining
        },
        lease_keys: h.store.lease_keys(5).unwrap(),
        alarms: h.store.alarms().unwrap(),
        revision: h.store.current_revision(),
        compact_revision: h.store.compact_revision(),
    }
}

fn snapshot_path(h: &Harness, name: &str) -> PathBuf {
    h.dir.path().join(name)
}

#[test]
fn snapshot_installs_identically_on_another_store() {
    let source = populated();
    let expected = observe(&source);
    let path = snapshot_path(&source, "snap.redb");
    let info = source.store.write_snapshot(&path).unwrap();
    assert_eq!(info.applied_index, source.store.applied_index());
    assert_eq!(info.revision, source.store.current_revision());
    assert_eq!(info.size, std::fs::metadata(&path).unwrap().len());

    // Writes after the snapshot are not in it (the alarm lowered first, as it refuses them).
    let mut source = source;
    source.apply(disarm()).unwrap();
    source.put("after", "snapshot");

    // The target has content of its own, which the install replaces wholesale.
    let mut target = Harness::new();
    for i in 0..5 {
        target.put(&format!("other/{i}"), "x");
    }
    target.grant(77, 10).unwrap();
    target.store.install_snapshot(&path).unwrap();
    assert!(!path.exists(), "the snapshot file is moved into place");

    assert_eq!(observe(&target), expected);
    assert_eq!(target.store.applied_index(), info.applied_index);
    assert_eq!(target.store.durable_applied_index(), info.applied_index);
    assert!(target.get("after").is_none());

    // The target carries on from the snapshot's index: older entries are skipped, newer apply.
    target.next_index = 1;
    let skipped = target
        .store
        .apply(&[ApplyEntry {
            index: 1,
            command: Some(&RaftCommand {
                op: Some(Op::Put(put_req("stale", "x"))),
            }),
            stamp: None,
        }])
        .unwrap();
    assert!(skipped.is_empty());
    target.next_index = info.applied_index + 1;
    target.apply(disarm()).unwrap();
    let rev = target.put("after", "snapshot");
    assert_eq!(rev, info.revision + 1);

    // Both now applied the same log: they agree, also after a restart of the target.
    assert_eq!(source.store.hash().unwrap(), target.store.hash().unwrap());
    let target = target.reopen();
    assert_eq!(observe(&target), observe(&source));
}

#[test]
fn install_does_not_disturb_reads_in_flight() {
    let mut h = Harness::new();
    h.put("k", "old");
    let mut other = Harness::new();
    other.put("k", "new");
    other.put("k2", "new");
    let path = snapshot_path(&other, "snap.redb");
    other.store.write_snapshot(&path).unwrap();

    // A range planned on the old index whose rows are read only after the install.
    let (shared, held) = h.store.read_state().unwrap();
    let plan = crate::range::plan_range(
        &shared.index,
        held.revision,
        held.compact_revision,
        &range_bytes(b"\0", b"\0"),
    )
    .unwrap();
    drop(shared);
    h.store.install_snapshot(&path).unwrap();
    // The reader that started before the install still sees the old file, whole.
    let old = crate::range::finish_range(&held.revisions, plan, &range_bytes(b"\0", b"\0")).unwrap();
    let seen: Vec<_> = old.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone())).collect();
    assert_eq!(seen, vec![(b"k".to_vec(), b"old".to_vec())]);
    drop(held);
    assert_eq!(h.get("k").unwrap().value, b"new");
    assert_eq!(h.get("k2").unwrap().value, b"new");
}

#[test]
fn concurrent_readers_survive_installs() {
    let mut a = Harness::new();
    let mut b = Harness::new();
    for i in 0..200 {
        a.put(&format!("k{i:03}"), "a");
        b.put(&format!("k{i:03}"), "b");
    }
    let h = Arc::new(a);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (h, stop) = (h.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) || reads == 0 {
                    let resp = everything(&h);
                    assert_eq!(resp.count, 200);
                    // Never a mix of the two stores.
                    let first = resp.kvs[0].value.clone();
                    assert!(resp.kvs.iter().all(|kv| kv.value == first));
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    for round in 0..4 {
        let path = snapshot_path(&b, &format!("snap-{round}.redb"));
        if round % 2 == 0 {
            b.store.write_snapshot(&path).unwrap();
        } else {
            h.store.write_snapshot(&path).unwrap();
        }
        h.store.install_snapshot(&path).unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert_eq!(h.get("k000").unwrap().value, b"b");
}

#[test]
fn a_bad_snapshot_is_refused_and_the_store_kept() {
    let h = populated();
    let before = observe(&h);
    let path = snapshot_path(&h, "garbage.redb");
    std::fs::write(&path, vec![0xAB; 64 << 10]).unwrap();
    assert!(h.store.install_snapshot(&path).is_err());
    assert!(h.store.install_snapshot(&snapshot_path(&h, "missing.redb")).is_err());
    assert!(h.store.install_snapshot(h.store.path()).is_err());
    assert!(h.store.write_snapshot(h.store.path()).is_err());
    assert_eq!(observe(&h), before);
    let h = h.reopen();
    assert_eq!(observe(&h), before);
}

#[test]
fn reset_applied_index_rewrites_only_the_index() {
    let h = populated();
    let path = snapshot_path(&h, "backup.redb");
    let info = h.store.write_snapshot(&path).unwrap();
    assert!(info.applied_index > 1);
    MvccStore::reset_applied_index(&path, 1).unwrap();

    let restored = MvccStore::open(&path).unwrap();
    assert_eq!(restored.applied_index(), 1);
    assert_eq!(restored.durable_applied_index(), 1);
    assert_eq!(restored.current_revision(), info.revision);
    assert_eq!(restored.hash().unwrap(), h.store.hash().unwrap());
    assert_eq!(restored.hash_kv(0).unwrap(), h.store.hash_kv(0).unwrap());
    // The restored store applies the new log from index 2 on.
    let cmd = RaftCommand {
        op: Some(Op::Put(put_req("new", "log"))),
    };
    let results = restored
        .apply(&[ApplyEntry {
            index: 2,
            command: Some(&cmd),
            stamp: None,
        }])
        .unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(restored.applied_index(), 2);
    drop(restored);
    assert!(MvccStore::reset_applied_index(&snapshot_path(&h, "missing.redb"), 1).is_err());
}

#[test]
fn defragment_reclaims_space_and_keeps_content() {
    let mut h = Harness::new();
    let value = "v".repeat(2000);
    for i in 0..2000 {
        h.put(&format!("bulk/{i:05}"), &value);
    }
    h.put("keep", "me");
    h.delete("bulk/", b"bulk0");
    let rev = h.store.current_revision();
    h.compact(rev).unwrap();
    let before = observe(&h);
    let applied = h.store.applied_index();
    let size_before = h.store.db_size();
    let in_use_before = h.store.db_size_in_use();
    assert!(in_use_before > 0 && in_use_before <= size_before);

    h.store.defragment().unwrap();
    let size_after = h.store.db_size();
    eprintln!(
        "defragment: {size_before} -> {size_after} bytes (in use before: {in_use_before}, after: {})",
        h.store.db_size_in_use()
    );
    assert!(size_after < size_before / 4, "{size_after} vs {size_before}");
    assert!(h.store.db_size_in_use() <= size_after);
    assert_eq!(observe(&h), before);
    assert_eq!(h.store.applied_index(), applied);
    assert_eq!(h.store.durable_applied_index(), applied);
    assert!(!h.store.path().with_extension("redb.defrag").exists());

    // The store keeps working, and the defragmented file is the one it reopens.
    assert_eq!(h.put("keep", "again"), rev + 1);
    let h = h.reopen();
    assert_eq!(h.get("keep").unwrap().value, b"again");
    assert_eq!(h.store.current_revision(), rev + 1);

    // Defragmenting an already compact store keeps it compact: the same content gives a file of
    // the same size.
    h.store.defragment().unwrap();
    let size = h.store.db_size();
    h.store.defragment().unwrap();
    assert_eq!(h.store.db_size(), size);
    assert!(size < size_before / 4);
}

#[test]
fn a_snapshot_has_every_table_of_the_store() {
    let source = populated();
    let path = snapshot_path(&source, "snap.redb");
    source.store.write_snapshot(&path).unwrap();
    let names = |path: &std::path::Path| {
        let db = redb::Database::open(path).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let mut names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| redb::TableHandle::name(&t).to_string())
            .collect();
        names.sort();
        names
    };
    let copied = names(&path);
    drop(source.store);
    assert_eq!(copied, names(&source.dir.path().join("data").join("kv.redb")));
}
