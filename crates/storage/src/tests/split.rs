//! Splitting a store's key range (multi-shard mode): the moved keys leave with their history for
//! the child's store, and writes that name them are refused afterwards.

use concord_proto::concordpb::{AllocateShardId, SplitShard};

use super::*;
use crate::{shard_store_path, KeyRange};

fn split(h: &mut Harness, key: &str, child: u64) -> Result<WriteResult, KvError> {
    h.apply(Op::SplitShard(SplitShard {
        key: key.as_bytes().to_vec(),
        child_group: child,
        first_leader: 0,
    }))
}

fn keys_of(store: &MvccStore) -> Vec<Vec<u8>> {
    let all = RangeRequest {
        key: vec![0],
        range_end: vec![0],
        ..Default::default()
    };
    store.range(&all).unwrap().0.kvs.into_iter().map(|kv| kv.key).collect()
}

#[test]
fn a_split_moves_the_keys_and_their_history_into_the_childs_store() {
    let mut h = Harness::new();
    h.put("a", "1");
    h.put("n", "1");
    h.put("n", "2");
    h.put("z", "1");
    let before = h.store.current_revision();

    let WriteResult::ShardSplit(done) = split(&mut h, "m", 7).unwrap() else {
        panic!("not a split");
    };
    assert_eq!(
        (done.child_group, done.start.as_slice(), done.end.as_slice()),
        (7, &b"m"[..], &b""[..])
    );
    assert_eq!(keys_of(&h.store), vec![b"a".to_vec()]);
    assert_eq!(
        h.store.key_range(),
        KeyRange {
            start: Vec::new(),
            end: Some(b"m".to_vec())
        }
    );
    assert_eq!(h.store.current_revision(), before);
    let children = h.store.split_children().unwrap();
    assert_eq!((children[0].group, children[0].start.as_slice()), (7, &b"m"[..]));

    let child = open_store(&shard_store_path(h.store.path().parent().unwrap(), 7));
    assert_eq!(keys_of(&child), vec![b"n".to_vec(), b"z".to_vec()]);
    assert_eq!(child.applied_index(), 0);
    assert_eq!(child.current_revision(), before);
    assert_eq!(child.key_range().start, b"m");
    assert_eq!(child.key_range().end, None);
    // The history came along: the first version of `n` is readable at its revision.
    let first = RangeRequest {
        key: b"n".to_vec(),
        revision: 3,
        ..Default::default()
    };
    assert_eq!(child.range(&first).unwrap().0.kvs[0].value, b"1");

    // A reopened parent still holds only its half.
    let h = h.reopen();
    assert_eq!(keys_of(&h.store), vec![b"a".to_vec()]);
    assert_eq!(h.store.key_range().end, Some(b"m".to_vec()));

    // So does a snapshot of it, installed on a member that never applied the split: it learns
    // the range and the child from it.
    let snapshot = h.dir.path().join("parent.snap");
    h.store.write_snapshot(&snapshot).unwrap();
    let other = Harness::new();
    other.store.install_snapshot(&snapshot).unwrap();
    assert_eq!(other.store.key_range().end, Some(b"m".to_vec()));
    assert_eq!(other.store.split_children().unwrap(), children);
}

#[test]
fn writes_naming_moved_keys_are_refused_and_splits_must_fall_inside() {
    let mut h = Harness::new();
    h.put("a", "1");
    split(&mut h, "m", 2).unwrap();
    let moved = h.put_req(put_req("q", "1"));
    assert_eq!(moved, Err(KvError::WrongShard));
    assert_eq!(moved.unwrap_err().code(), ErrorCode::Unavailable);
    let spanning = DeleteRangeRequest {
        key: b"a".to_vec(),
        range_end: vec![0],
        ..Default::default()
    };
    assert_eq!(h.apply(Op::DeleteRange(spanning)), Err(KvError::WrongShard));
    let txn = TxnRequest {
        success: vec![op_put("b", "1"), op_put("x", "1")],
        ..Default::default()
    };
    assert_eq!(h.txn(txn), Err(KvError::WrongShard));
    // Inside the range all is as before.
    assert!(h.put_req(put_req("l", "1")).is_ok());

    assert_eq!(split(&mut h, "", 3), Err(KvError::SplitOutsideShard));
    assert_eq!(split(&mut h, "q", 3), Err(KvError::SplitOutsideShard));
}

#[test]
fn keys_attached_to_leases_move_with_their_lease() {
    let mut h = Harness::new();
    h.grant(5, 60).unwrap();
    h.grant(6, 30).unwrap();
    for (key, lease) in [("b", 5), ("x", 5), ("y", 6)] {
        h.put_req(PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"1".to_vec(),
            lease,
            ..Default::default()
        })
        .unwrap();
    }
    split(&mut h, "m", 2).unwrap();
    assert_eq!(h.store.lease_keys(5).unwrap(), vec![b"b".to_vec()]);
    assert!(h.store.lease_keys(6).unwrap().is_empty());

    let child = open_store(&shard_store_path(h.store.path().parent().unwrap(), 2));
    assert_eq!(child.leases().unwrap().len(), 2);
    assert_eq!(child.lease_keys(5).unwrap(), vec![b"x".to_vec()]);
    assert_eq!(child.lease_keys(6).unwrap(), vec![b"y".to_vec()]);
}

#[test]
fn shard_ids_are_handed_out_once_and_never_below_the_floor() {
    let mut h = Harness::new();
    let mut allocate = |floor| match h.apply(Op::AllocateShardId(AllocateShardId { floor })).unwrap() {
        WriteResult::ShardId(resp) => resp.group,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(allocate(0), 2);
    assert_eq!(allocate(0), 3);
    assert_eq!(allocate(10), 10);
    assert_eq!(allocate(4), 11);
}
