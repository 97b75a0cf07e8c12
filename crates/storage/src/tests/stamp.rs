//! Commands stamped with a global revision (multi-shard mode): their writes take the stamp, so a
//! shard's revisions skip the numbers other shards used, and everything read by revision (ranges
//! at a revision, history, compaction, restarts) works across the gaps.

use super::*;

fn stamped_put(h: &mut Harness, key: &str, value: &str, stamp: i64) -> Result<i64, KvError> {
    match h.apply_stamped(Op::Put(put_req(key, value)), Some(stamp))? {
        WriteResult::Put(resp) => Ok(resp.header.unwrap().revision),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_stamped_write_takes_its_stamp_as_revision() {
    let mut h = Harness::new();
    assert_eq!(h.put("a", "1"), 2);
    assert_eq!(stamped_put(&mut h, "a", "2", 10), Ok(10));
    assert_eq!(stamped_put(&mut h, "b", "1", 17), Ok(17));
    assert_eq!(h.store.current_revision(), 17);

    let a = h.get("a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (2, 10, 2));
    let b = h.get("b").unwrap();
    assert_eq!((b.create_revision, b.mod_revision, b.version), (17, 17, 1));

    // Reads at a revision inside a gap see the history as of the write before it.
    assert_eq!(h.get_at("a", 9).unwrap().unwrap().value, b"1");
    assert_eq!(h.get_at("a", 16).unwrap().unwrap().value, b"2");
    assert_eq!(h.get_at("b", 16).unwrap(), None);
    assert_eq!(h.get_at("b", 18), Err(KvError::FutureRevision));
}

#[test]
fn a_txn_shares_its_stamp_and_a_write_of_nothing_leaves_the_revision() {
    let mut h = Harness::new();
    let both = TxnRequest {
        success: vec![op_put("x", "1"), op_put("y", "1")],
        ..Default::default()
    };
    let resp = match h.apply_stamped(Op::Txn(both), Some(5)).unwrap() {
        WriteResult::Txn(resp) => resp,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(resp.header.unwrap().revision, 5);
    assert_eq!(h.get("x").unwrap().mod_revision, 5);
    assert_eq!(h.get("y").unwrap().mod_revision, 5);

    // A delete of nothing writes nothing: the store's revision stays, and the answer reports
    // the stamp, above everything handed out before it (every write of this shard below it is
    // applied already). So does a read's barrier.
    let nothing = DeleteRangeRequest {
        key: b"nope".to_vec(),
        ..Default::default()
    };
    match h.apply_stamped(Op::DeleteRange(nothing), Some(6)).unwrap() {
        WriteResult::DeleteRange(resp) => assert_eq!((resp.deleted, resp.header.unwrap().revision), (0, 6)),
        other => panic!("unexpected {other:?}"),
    }
    let barrier = Op::ReadBarrier(concord_proto::concordpb::ReadBarrier {});
    match h.apply_stamped(barrier, Some(8)).unwrap() {
        WriteResult::ReadBarrier(resp) => assert_eq!(resp.header.unwrap().revision, 8),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(h.store.current_revision(), 5);
    // A stamp between the two is above the store's revision, but reads at 8 were served
    // without it: refused, so they stay true.
    assert!(matches!(
        stamped_put(&mut h, "x", "2", 7),
        Err(KvError::StaleStamp { .. })
    ));
    assert_eq!(stamped_put(&mut h, "x", "2", 9), Ok(9));
}

#[test]
fn a_stamp_at_or_below_the_revision_is_refused_and_changes_nothing() {
    let mut h = Harness::new();
    assert_eq!(stamped_put(&mut h, "a", "1", 10), Ok(10));
    for stale in [10, 3] {
        let refused = stamped_put(&mut h, "a", "2", stale).unwrap_err();
        assert_eq!(
            refused,
            KvError::StaleStamp {
                stamp: stale,
                revision: 10
            }
        );
        assert_eq!(refused.code(), ErrorCode::Unavailable);
    }
    assert_eq!(h.get("a").unwrap().value, b"1");
    assert_eq!(h.store.current_revision(), 10);
    // Unstamped commands (single-shard mode) still take the next revision.
    assert_eq!(h.put("a", "3"), 11);
}

#[test]
fn history_compaction_and_restarts_cross_the_gaps() {
    let mut h = Harness::new();
    assert_eq!(stamped_put(&mut h, "k", "1", 4), Ok(4));
    assert_eq!(stamped_put(&mut h, "k", "2", 9), Ok(9));
    assert_eq!(stamped_put(&mut h, "k", "3", 20), Ok(20));
    h.delete("k", b"");
    assert_eq!(h.store.current_revision(), 21);

    let (events, revision) = h.store.events(5, 100, true).unwrap();
    assert_eq!(revision, 21);
    let seen: Vec<(i64, Vec<u8>)> = events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            let prev = e.prev_kv.as_ref().map_or(Vec::new(), |p| p.value.clone());
            (kv.mod_revision, prev)
        })
        .collect();
    assert_eq!(seen, vec![(9, b"1".to_vec()), (20, b"2".to_vec()), (21, b"3".to_vec())]);
    assert_eq!(events[2].r#type, EventType::Delete as i32);

    // Compacting at a revision no write took keeps the version that was live there.
    h.compact(15).unwrap();
    assert_eq!(h.get_at("k", 15).unwrap().unwrap().value, b"2");
    assert_eq!(h.get_at("k", 9), Err(KvError::Compacted));

    let mut h = h.reopen();
    assert_eq!(h.store.current_revision(), 21);
    assert_eq!(h.get_at("k", 20).unwrap().unwrap().value, b"3");
    assert_eq!(
        stamped_put(&mut h, "k", "4", 21),
        Err(KvError::StaleStamp {
            stamp: 21,
            revision: 21
        })
    );
    assert_eq!(stamped_put(&mut h, "k", "4", 30), Ok(30));
}

#[test]
fn the_revision_ceiling_only_rises_and_survives_a_restart() {
    use concord_proto::concordpb::RevisionCeiling;
    let mut h = Harness::new();
    assert_eq!(h.store.revision_ceiling().unwrap(), 0);
    let raise = |h: &mut Harness, ceiling| match h.apply(Op::RaiseRevisionCeiling(RevisionCeiling { ceiling })) {
        Ok(WriteResult::RevisionCeiling(resp)) => resp.ceiling,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(raise(&mut h, 10_000), 10_000);
    assert_eq!(raise(&mut h, 5_000), 10_000, "a late, lower raise leaves it");
    assert_eq!(h.store.current_revision(), 1, "raising it writes no revision");
    let h = h.reopen();
    assert_eq!(h.store.revision_ceiling().unwrap(), 10_000);
}

#[test]
fn a_stamped_compaction_past_the_shard_revision_raises_it_there() {
    let mut h = Harness::new();
    assert_eq!(stamped_put(&mut h, "a", "1", 10), Ok(10));
    assert_eq!(stamped_put(&mut h, "a", "2", 12), Ok(12));
    let compact = |revision| {
        Op::Compaction(CompactionRequest {
            revision,
            physical: false,
        })
    };
    // Unstamped, or stamped at or below the asked revision, it is a future revision.
    assert_eq!(h.apply_stamped(compact(20), None).unwrap_err(), KvError::FutureRevision);
    assert_eq!(
        h.apply_stamped(compact(20), Some(20)).unwrap_err(),
        KvError::FutureRevision
    );
    assert_eq!(h.store.current_revision(), 12);

    // The cluster's revision 20 is above the shard's last write, and the stamp vouches that the
    // shard has nothing up to it.
    h.apply_stamped(compact(20), Some(25)).unwrap();
    assert_eq!((h.store.current_revision(), h.store.compact_revision()), (20, 20));
    assert_eq!(h.get("a").unwrap().value, b"2");
    assert_eq!(h.get_at("a", 20).unwrap().unwrap().value, b"2");
    assert_eq!(h.get_at("a", 12), Err(KvError::Compacted));
    assert_eq!(stamped_put(&mut h, "a", "3", 30), Ok(30));
    assert_eq!(h.apply_stamped(compact(20), Some(31)).unwrap_err(), KvError::Compacted);
}
