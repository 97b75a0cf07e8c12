//! Tests of the replica consistency hashes: `hash_kv` (etcd's HashKV) and `hash` (etcd's Hash).

use super::*;
use crate::hash::Crc32c;
use crate::keys::{encode_record, RecordHeader};

/// A fixed workload with overwrites, deletes, a txn, a lease and its revoke. Revision after it:
/// 12.
fn workload(h: &mut Harness) {
    h.put("a", "1"); // 2
    h.put("b", "1"); // 3
    h.put("a", "2"); // 4
    h.delete("b", b""); // 5
    h.put("c", "1"); // 6
    h.grant(7, 30).unwrap();
    h.put_req(PutRequest {
        lease: 7,
        ..put_req("d", "1")
    })
    .unwrap(); // 7
    h.put("a", "3"); // 8
    let txn = TxnRequest {
        success: vec![op_put("b", "2"), op_delete("c")],
        ..Default::default()
    };
    h.txn(txn).unwrap(); // 9
    h.put("e", "1"); // 10
    h.revoke(7).unwrap(); // 11
    h.put("a", "4"); // 12
}

fn hash_kv(h: &Harness, revision: i64) -> (u32, i64, i64) {
    h.store.hash_kv(revision).unwrap()
}

#[test]
fn hash_kv_answers_and_checks_revisions() {
    let mut h = Harness::new();
    workload(&mut h);
    let (hash, compacted, rev) = hash_kv(&h, 0);
    assert_eq!((compacted, rev), (-1, 12));
    assert_eq!(hash_kv(&h, 12).0, hash);
    assert_ne!(hash_kv(&h, 11).0, hash);
    assert_eq!(h.store.hash_kv(13), Err(KvError::FutureRevision));

    h.compact(5).unwrap();
    assert_eq!(h.store.hash_kv(4), Err(KvError::Compacted));
    let (_, compacted, rev) = hash_kv(&h, 5);
    assert_eq!((compacted, rev), (5, 5), "the compaction point itself can be hashed");
    assert_eq!(hash_kv(&h, 0).1, 5);
}

#[test]
fn hash_kv_at_a_revision_ignores_later_writes() {
    let mut h = Harness::new();
    workload(&mut h);
    h.compact(4).unwrap();
    let before: Vec<_> = (4..=12).map(|rev| hash_kv(&h, rev)).collect();
    h.put("a", "5");
    h.delete("d", b"");
    h.put("zz", "1");
    let after: Vec<_> = (4..=12).map(|rev| hash_kv(&h, rev)).collect();
    assert_eq!(before, after);
    // Every revision hashes differently here, since each changed something.
    let mut hashes: Vec<u32> = before.iter().map(|(hash, ..)| *hash).collect();
    hashes.sort_unstable();
    hashes.dedup();
    assert_eq!(hashes.len(), before.len());
}

#[test]
fn hashes_agree_when_the_same_log_compacted_at_different_times() {
    // Both stores apply the same entries and compact at revision 5, but one compacts right
    // away and the other only after everything else.
    let mut early = Harness::new();
    let mut late = Harness::new();
    early.put("a", "1"); // 2
    late.put("a", "1");
    early.put("a", "2"); // 3
    late.put("a", "2");
    early.put("b", "1"); // 4
    late.put("b", "1");
    early.delete("b", b""); // 5
    late.delete("b", b"");
    early.compact(5).unwrap();
    workload(&mut early);
    workload(&mut late);
    late.compact(5).unwrap();

    assert_eq!(early.store.compact_revision(), 5);
    assert_eq!(late.store.compact_revision(), 5);
    for rev in 5..=16 {
        assert_eq!(hash_kv(&early, rev), hash_kv(&late, rev), "revision {rev}");
    }
    assert_eq!(early.store.hash().unwrap(), late.store.hash().unwrap());
}

#[test]
fn hash_kv_is_comparable_only_at_equal_compaction_points() {
    let mut compacted = Harness::new();
    let mut full = Harness::new();
    for h in [&mut compacted, &mut full] {
        workload(h);
    }
    compacted.compact(5).unwrap();
    // The uncompacted store still holds versions the other dropped, so the hashes differ: this
    // is why hashes are compared only when the compact revisions are equal.
    assert_eq!(hash_kv(&full, 12).1, -1);
    assert_eq!(hash_kv(&compacted, 12).1, 5);
    assert_ne!(hash_kv(&full, 12).0, hash_kv(&compacted, 12).0);
    // Once the other store applies the same compaction, they agree again.
    full.compact(5).unwrap();
    for rev in 5..=12 {
        assert_eq!(hash_kv(&full, rev), hash_kv(&compacted, rev), "revision {rev}");
    }
}

#[test]
fn hashes_change_with_the_content() {
    let mut one = Harness::new();
    let mut other = Harness::new();
    workload(&mut one);
    workload(&mut other);
    assert_eq!(hash_kv(&one, 0), hash_kv(&other, 0));
    assert_eq!(one.store.hash().unwrap(), other.store.hash().unwrap());

    // A different value at the same revision.
    one.put("x", "same");
    other.put("x", "diff");
    assert_ne!(hash_kv(&one, 0).0, hash_kv(&other, 0).0);
    assert_ne!(one.store.hash().unwrap(), other.store.hash().unwrap());
    // Older revisions still agree.
    assert_eq!(hash_kv(&one, 12), hash_kv(&other, 12));

    // Leases and alarms are part of `hash` but not of `hash_kv`.
    let mut one = Harness::new();
    let mut other = Harness::new();
    workload(&mut one);
    workload(&mut other);
    one.grant(99, 10).unwrap();
    assert_eq!(hash_kv(&one, 0), hash_kv(&other, 0));
    assert_ne!(one.store.hash().unwrap(), other.store.hash().unwrap());
}

#[test]
fn hashes_ignore_the_applied_index() {
    let mut one = Harness::new();
    let mut other = Harness::new();
    workload(&mut one);
    // Entries without a command (Raft no-ops, configuration changes) only move the applied
    // index.
    other
        .store
        .apply(&[ApplyEntry {
            index: 1,
            command: None,
            stamp: None,
        }])
        .unwrap();
    other.next_index = 2;
    workload(&mut other);
    assert_ne!(one.store.applied_index(), other.store.applied_index());
    assert_eq!(hash_kv(&one, 0), hash_kv(&other, 0));
    assert_eq!(one.store.hash().unwrap(), other.store.hash().unwrap());
}

/// The rows `hash_kv` feeds, rebuilt by hand: `(key, main, sub, record)` in revision order.
fn expected_hash(rows: &[(&str, u64, u64, Option<RecordHeader>, &str)]) -> u32 {
    let mut crc = Crc32c::new();
    let mut record = Vec::new();
    for (key, main, sub, header, value) in rows {
        match header {
            Some(header) => encode_record(&mut record, header, value.as_bytes(), None),
            None => record.clear(),
        }
        crc.field(key.as_bytes());
        crc.update(&main.to_le_bytes());
        crc.update(&sub.to_le_bytes());
        crc.field(&record);
    }
    crc.finish()
}

fn header(create_revision: i64, mod_revision: i64, version: i64) -> Option<RecordHeader> {
    Some(RecordHeader {
        create_revision,
        mod_revision,
        version,
        lease: 0,
    })
}

#[test]
fn hash_kv_covers_history_since_compaction_and_older_live_versions() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("a", "2"); // 3
    h.put("b", "1"); // 4
    h.put("c", "1"); // 5
    h.compact(4).unwrap();
    h.put("a", "3"); // 6
    h.delete("c", b""); // 7

    // At 5: "a"@3 is older than the compaction but still a's version at 5; "b"@4 likewise.
    let at_5 = [
        ("a", 3, 0, header(2, 3, 2), "2"),
        ("b", 4, 0, header(4, 4, 1), "1"),
        ("c", 5, 0, header(5, 5, 1), "1"),
    ];
    assert_eq!(h.store.hash_kv(5).unwrap(), (expected_hash(&at_5), 4, 5));
    // At 7: "a"@3 was replaced at 6, so only the newer history counts for "a"; the deletion of
    // "c" is history too.
    let at_7 = [
        ("b", 4, 0, header(4, 4, 1), "1"),
        ("c", 5, 0, header(5, 5, 1), "1"),
        ("a", 6, 0, header(2, 6, 3), "3"),
        ("c", 7, 0, None, ""),
    ];
    assert_eq!(h.store.hash_kv(7).unwrap(), (expected_hash(&at_7), 4, 7));
}
