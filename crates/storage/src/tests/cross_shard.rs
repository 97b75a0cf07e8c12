//! A shard's part of a write across shards: prepare holds the shard, commit applies the part at
//! the write's revision, abort releases it, and every replica refuses alike what may not apply
//! while the part is held.

use concord_proto::concordpb::{AbortCrossShard, CommitCrossShard, CrossShardOutcome, PrepareCrossShard, ReadBarrier};

use super::*;

fn prepare(id: u64, key: &str, range_end: &[u8]) -> Op {
    Op::PrepareCrossShard(PrepareCrossShard {
        id,
        revision: 0,
        delete_range: Some(DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            range_end: range_end.to_vec(),
            prev_kv: true,
        }),
        primary_group: 1,
        ..Default::default()
    })
}

fn outcome(result: Result<WriteResult, KvError>) -> Result<CrossShardOutcome, KvError> {
    match result? {
        WriteResult::CrossShard(outcome) => Ok(outcome),
        other => panic!("unexpected {other:?}"),
    }
}

fn commit(h: &mut Harness, id: u64, revision: i64, stamp: Option<i64>) -> Result<CrossShardOutcome, KvError> {
    outcome(h.apply_stamped(Op::CommitCrossShard(CommitCrossShard { id, revision }), stamp))
}

fn abort(h: &mut Harness, id: u64) -> Result<CrossShardOutcome, KvError> {
    outcome(h.apply(Op::AbortCrossShard(AbortCrossShard { id })))
}

fn stamped_put(h: &mut Harness, key: &str, stamp: i64) -> Result<WriteResult, KvError> {
    h.apply_stamped(Op::Put(put_req(key, "v")), Some(stamp))
}

fn barrier(h: &mut Harness, stamp: i64) -> Result<WriteResult, KvError> {
    h.apply_stamped(Op::ReadBarrier(ReadBarrier {}), Some(stamp))
}

#[test]
fn a_held_part_commits_at_its_revision_and_holds_back_what_is_stamped_above() {
    let mut h = Harness::new();
    stamped_put(&mut h, "a/1", 10).unwrap();
    stamped_put(&mut h, "a/2", 11).unwrap();
    stamped_put(&mut h, "b", 12).unwrap();
    stamped_put(&mut h, "a/3", 13).unwrap();

    // Another shard's prepare took 20: the write's revision.
    let held = outcome(h.apply_stamped(prepare(7, "a/", b"a0"), Some(14))).unwrap();
    assert!(!held.committed);
    assert_eq!(held.revision, 14);
    assert_eq!(h.store.held_cross_shard().unwrap().map(|p| p.id), Some(7));

    // Above the prepare's stamp nothing applies that writes or reads, nor a split, nor another
    // write's prepare (the shard's log is in stamp order: nothing stamped below it comes after).
    assert_eq!(stamped_put(&mut h, "a/4", 15), Err(KvError::ShardHeld));
    assert_eq!(stamped_put(&mut h, "c", 22), Err(KvError::ShardHeld));
    assert!(matches!(barrier(&mut h, 16), Err(KvError::ShardHeld)));
    let split = Op::SplitShard(concord_proto::concordpb::SplitShard {
        key: b"b".to_vec(),
        child_group: 2,
        first_leader: 0,
    });
    assert!(matches!(h.apply_stamped(split, Some(18)), Err(KvError::ShardHeld)));
    assert_eq!(
        outcome(h.apply_stamped(prepare(8, "b", b""), Some(19))),
        Err(KvError::ShardHeld)
    );
    // The same prepare again (a retried proposal) is no error, and keeps its first stamp.
    assert_eq!(
        outcome(h.apply_stamped(prepare(7, "a/", b"a0"), Some(21)))
            .unwrap()
            .revision,
        14
    );
    assert_eq!(h.store.current_revision(), 13);
    // A commit below the prepare's stamp would be a coordinator's bug: refused.
    assert!(matches!(commit(&mut h, 7, 13, None), Err(KvError::StaleStamp { .. })));

    // A leader's stamp on the commit is ignored: the part takes the write's revision.
    let done = commit(&mut h, 7, 20, Some(40)).unwrap();
    assert!(done.committed);
    let deleted = done.delete_range.unwrap();
    assert_eq!(deleted.deleted, 3);
    let keys: Vec<_> = deleted.prev_kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, [b"a/1".to_vec(), b"a/2".to_vec(), b"a/3".to_vec()]);
    assert_eq!(h.store.current_revision(), 20);
    assert_eq!(h.get("a/1"), None);
    assert_eq!(h.get_at("a/3", 19).unwrap().unwrap().value, b"v");
    assert_eq!(h.store.held_cross_shard().unwrap(), None);

    // Released: writes above apply again; one stamped below the commit is stale, as any.
    assert!(matches!(
        stamped_put(&mut h, "a/4", 17),
        Err(KvError::StaleStamp { .. })
    ));
    assert!(stamped_put(&mut h, "a/4", 25).is_ok());
    // Asking again answers the recorded outcome.
    assert_eq!(commit(&mut h, 7, 20, None).unwrap().delete_range.unwrap().deleted, 3);
}

#[test]
fn a_part_that_deleted_nothing_still_lifts_the_floor_to_its_revision() {
    let mut h = Harness::new();
    stamped_put(&mut h, "b", 10).unwrap();
    outcome(h.apply_stamped(prepare(1, "a/", b"a0"), Some(11))).unwrap();
    let done = commit(&mut h, 1, 20, None).unwrap();
    assert_eq!(done.delete_range.unwrap().deleted, 0);
    assert_eq!(h.store.current_revision(), 10);
    // A write stamped below the commit would now land under a revision the write across
    // shards counted on: refused, and retried by its member with a new stamp.
    assert!(matches!(
        stamped_put(&mut h, "a/1", 15),
        Err(KvError::StaleStamp { .. })
    ));
    assert!(stamped_put(&mut h, "a/1", 25).is_ok());
    // The floor survives a restart.
    h = h.reopen();
    assert!(matches!(
        stamped_put(&mut h, "a/2", 24),
        Err(KvError::StaleStamp { .. })
    ));
}

#[test]
fn a_prepare_stamped_below_what_the_shard_applied_is_refused() {
    let mut h = Harness::new();
    stamped_put(&mut h, "a", 10).unwrap();
    barrier(&mut h, 14).unwrap();
    // A barrier at 14 served reads there: a part held below it could change what they saw.
    for stamp in [10, 12] {
        assert!(matches!(
            outcome(h.apply_stamped(prepare(1, "a", b""), Some(stamp))),
            Err(KvError::StaleStamp { .. })
        ));
    }
    assert_eq!(h.store.held_cross_shard().unwrap(), None);
}

#[test]
fn an_abort_releases_the_shard_and_the_primary_decides_for_good() {
    let mut h = Harness::new();
    stamped_put(&mut h, "a/1", 10).unwrap();
    outcome(h.apply(prepare(5, "a/", b"a0"))).unwrap();
    let aborted = abort(&mut h, 5).unwrap();
    assert!(!aborted.committed);
    assert_eq!(h.store.held_cross_shard().unwrap(), None);
    assert!(h.get("a/1").is_some());
    assert_eq!(commit(&mut h, 5, 20, None), Err(KvError::CrossShardAborted));
    // A prepare that arrives after its write was aborted is refused.
    assert_eq!(
        outcome(h.apply(prepare(5, "a/", b"a0"))),
        Err(KvError::CrossShardAborted)
    );
    // A primary asked to abort a write it never saw records it aborted.
    assert!(!abort(&mut h, 6).unwrap().committed);
    assert_eq!(
        outcome(h.apply(prepare(6, "a/", b"a0"))),
        Err(KvError::CrossShardAborted)
    );
    // An abort of a committed write answers the commit.
    outcome(h.apply(prepare(9, "a/", b"a0"))).unwrap();
    commit(&mut h, 9, 40, None).unwrap();
    let answer = abort(&mut h, 9).unwrap();
    assert!(answer.committed);
    assert_eq!(answer.revision, 40);
}

#[test]
fn the_held_part_survives_a_restart_and_outcomes_go_with_compaction() {
    let mut h = Harness::new();
    stamped_put(&mut h, "a/1", 10).unwrap();
    outcome(h.apply_stamped(prepare(3, "a/", b"a0"), Some(20))).unwrap();
    h = h.reopen();
    assert_eq!(h.store.held_cross_shard().unwrap().map(|p| p.revision), Some(20));
    assert_eq!(stamped_put(&mut h, "z", 21), Err(KvError::ShardHeld));
    commit(&mut h, 3, 20, None).unwrap();
    stamped_put(&mut h, "z", 30).unwrap();
    let compact = Op::Compaction(CompactionRequest {
        revision: 30,
        physical: false,
    });
    h.apply_stamped(compact, Some(31)).unwrap();
    // The outcome is gone with the history it belonged to.
    assert_eq!(commit(&mut h, 3, 20, None), Err(KvError::CrossShardAborted));
}

#[test]
fn a_prepare_outside_the_shard_is_refused() {
    let mut h = Harness::new();
    stamped_put(&mut h, "m", 10).unwrap();
    let split = Op::SplitShard(concord_proto::concordpb::SplitShard {
        key: b"m".to_vec(),
        child_group: 2,
        first_leader: 0,
    });
    h.apply_stamped(split, Some(11)).unwrap();
    assert_eq!(outcome(h.apply(prepare(1, "a", b"z"))), Err(KvError::WrongShard));
}

fn revoke_part(id: u64, lease: i64, primary: bool) -> Op {
    Op::PrepareCrossShard(PrepareCrossShard {
        id,
        lease_revoke: Some(LeaseRevokeRequest { id: lease }),
        primary,
        primary_group: 1,
        ..Default::default()
    })
}

#[test]
fn a_lease_revoke_part_deletes_the_leases_keys_here_at_the_writes_revision() {
    let mut h = Harness::new();
    h.apply(Op::LeaseGrant(LeaseGrantRequest { id: 5, ttl: 60 })).unwrap();
    let mut leased = put_req("k/1", "v");
    leased.lease = 5;
    h.apply_stamped(Op::Put(leased), Some(10)).unwrap();
    stamped_put(&mut h, "k/2", 11).unwrap();

    outcome(h.apply_stamped(revoke_part(1, 5, false), Some(12))).unwrap();
    let done = commit(&mut h, 1, 30, None).unwrap();
    assert_eq!(done.revoked_lease, 5);
    assert_eq!(h.get("k/1"), None);
    assert!(h.get("k/2").is_some());
    assert_eq!(h.store.current_revision(), 30);
    assert!(h.store.leases().unwrap().is_empty());

    // A shard that never learned of the lease has nothing to do; the primary refuses, as etcd
    // refuses to revoke a lease that is not there.
    outcome(h.apply_stamped(revoke_part(2, 9, false), Some(31))).unwrap();
    assert!(commit(&mut h, 2, 31, None).unwrap().committed);
    assert_eq!(
        outcome(h.apply_stamped(revoke_part(3, 9, true), Some(32))),
        Err(KvError::LeaseNotFound)
    );
}

#[test]
fn a_snapshot_carries_the_held_part_the_outcomes_and_the_floor() {
    let mut source = Harness::new();
    stamped_put(&mut source, "a/1", 10).unwrap();
    outcome(source.apply_stamped(prepare(1, "a/", b"a0"), Some(11))).unwrap();
    commit(&mut source, 1, 20, None).unwrap();
    stamped_put(&mut source, "a/2", 21).unwrap();
    outcome(source.apply_stamped(prepare(2, "a/", b"a0"), Some(22))).unwrap();
    let path = source.dir.path().join("snap.redb");
    source.store.write_snapshot(&path).unwrap();

    // A member that installs it refuses and answers exactly as the source does.
    let mut target = Harness::new();
    target.store.install_snapshot(&path).unwrap();
    target.next_index = source.next_index;
    for h in [&mut source, &mut target] {
        assert_eq!(h.store.held_cross_shard().unwrap().map(|p| p.id), Some(2));
        assert_eq!(stamped_put(h, "b", 23), Err(KvError::ShardHeld));
        assert_eq!(commit(h, 1, 20, None).unwrap().revision, 20);
        assert_eq!(commit(h, 2, 22, None).unwrap().delete_range.unwrap().deleted, 1);
        assert!(matches!(stamped_put(h, "b", 21), Err(KvError::StaleStamp { .. })));
    }
}
