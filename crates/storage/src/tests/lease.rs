//! Behavioural tests of leases: grant, attachment through puts and deletes, revoke, txn checks,
//! restart and replay.

use super::*;

/// Puts `key` attached to `lease` and returns the revision after the put.
fn put_lease(h: &mut Harness, key: &str, lease: i64) -> Result<i64, KvError> {
    let resp = h.put_req(PutRequest {
        lease,
        ..put_req(key, "v")
    })?;
    Ok(resp.header.unwrap().revision)
}

fn lease_keys(h: &Harness, id: i64) -> Vec<String> {
    h.store
        .lease_keys(id)
        .unwrap()
        .into_iter()
        .map(|k| String::from_utf8(k).unwrap())
        .collect()
}

fn op_put_lease(key: &str, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            lease,
            ..put_req(key, "v")
        })),
    }
}

#[test]
fn grant_records_the_lease_without_a_new_revision() {
    let mut h = Harness::new();
    let resp = h.grant(5, 60).unwrap();
    assert_eq!((resp.id, resp.ttl, resp.error.as_str()), (5, 60, ""));
    assert_eq!(resp.header.unwrap().revision, 1);
    assert_eq!(h.store.current_revision(), 1);
    assert_eq!(h.store.lease_ttl(5).unwrap(), Some(60));
    assert_eq!(h.store.lease_ttl(6).unwrap(), None);

    h.put("k", "v"); // 2

    // The TTL is stored as given, however small: clamping is the server's job.
    let result = h.apply(Op::LeaseGrant(LeaseGrantRequest { ttl: 1, id: 2 }));
    assert_eq!(result.as_ref().map(WriteResult::revision), Ok(2));
    assert_eq!(h.store.current_revision(), 2);
    assert_eq!(h.store.leases().unwrap(), vec![(2, 1), (5, 60)]);
    assert!(h.store.lease_keys(5).unwrap().is_empty());
}

#[test]
fn duplicate_grant_and_grant_of_id_zero_fail() {
    let mut h = Harness::new();
    h.grant(5, 60).unwrap();
    let err = h.grant(5, 30).unwrap_err();
    assert_eq!(err, KvError::LeaseExists);
    assert_eq!(err.to_string(), "etcdserver: lease already exists");
    assert_eq!(err.code(), ErrorCode::FailedPrecondition);
    assert_eq!(h.store.lease_ttl(5).unwrap(), Some(60), "the first grant stands");

    assert_eq!(h.grant(0, 60).unwrap_err(), KvError::LeaseNotFound);
    assert_eq!(h.store.leases().unwrap(), vec![(5, 60)]);
    assert_eq!(h.store.current_revision(), 1);
}

#[test]
fn put_with_unknown_lease_fails_and_writes_nothing() {
    let mut h = Harness::new();
    let err = put_lease(&mut h, "k", 9).unwrap_err();
    assert_eq!(err, KvError::LeaseNotFound);
    assert_eq!(err.to_string(), "etcdserver: requested lease not found");
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert_eq!(h.store.current_revision(), 1);
    assert!(h.store.kv_rows().is_empty());
    assert!(h.store.change_ids().is_empty());
    assert!(h.store.lease_keys(9).unwrap().is_empty());

    h.put("k", "orig"); // 2
    assert_eq!(put_lease(&mut h, "k", 9).unwrap_err(), KvError::LeaseNotFound);
    let kv = h.get("k").unwrap();
    assert_eq!((kv.value.as_slice(), kv.version, kv.lease), (&b"orig"[..], 1, 0));
    assert_eq!(h.store.current_revision(), 2);

    // As in etcd, a plain put checks its lease before `ignore_value` looks for the key.
    let err = h
        .put_req(PutRequest {
            ignore_value: true,
            lease: 9,
            ..put_req("missing", "")
        })
        .unwrap_err();
    assert_eq!(err, KvError::LeaseNotFound);
    assert_eq!(h.store.kv_rows().len(), 1);
}

#[test]
fn puts_and_deletes_move_attachments() {
    let mut h = Harness::new();
    h.grant(1, 60).unwrap();
    h.grant(2, 60).unwrap();

    put_lease(&mut h, "b", 1).unwrap();
    put_lease(&mut h, "a", 1).unwrap();
    assert_eq!(lease_keys(&h, 1), vec!["a", "b"]);
    assert_eq!(h.get("a").unwrap().lease, 1);

    // Overwriting with another lease moves the key.
    put_lease(&mut h, "a", 2).unwrap();
    assert_eq!(lease_keys(&h, 1), vec!["b"]);
    assert_eq!(lease_keys(&h, 2), vec!["a"]);
    assert_eq!(h.get("a").unwrap().lease, 2);

    // ignore_lease keeps the key's lease.
    h.put_req(PutRequest {
        ignore_lease: true,
        ..put_req("b", "new")
    })
    .unwrap();
    assert_eq!(lease_keys(&h, 1), vec!["b"]);
    let kv = h.get("b").unwrap();
    assert_eq!((kv.value.as_slice(), kv.lease), (&b"new"[..], 1));

    // A put without a lease detaches.
    h.put("b", "plain");
    assert!(lease_keys(&h, 1).is_empty());
    assert_eq!(h.get("b").unwrap().lease, 0);

    // Deletes detach: a single key, a range, and a delete inside a txn.
    h.delete("a", b"");
    assert!(lease_keys(&h, 2).is_empty());
    put_lease(&mut h, "c", 2).unwrap();
    put_lease(&mut h, "d", 2).unwrap();
    put_lease(&mut h, "e", 1).unwrap();
    h.delete("c", b"e");
    assert!(lease_keys(&h, 2).is_empty());
    assert_eq!(lease_keys(&h, 1), vec!["e"]);
    h.txn(TxnRequest {
        success: vec![op_delete("e")],
        ..Default::default()
    })
    .unwrap();
    assert!(lease_keys(&h, 1).is_empty());

    // Both leases are now empty: revoking them changes no key and no revision.
    let rev = h.store.current_revision();
    assert_eq!(h.revoke(1).unwrap().header.unwrap().revision, rev);
    assert_eq!(h.revoke(2).unwrap().header.unwrap().revision, rev);
    assert_eq!(h.store.current_revision(), rev);
    assert_eq!(h.get("b").unwrap().value, b"plain");
    assert!(h.store.leases().unwrap().is_empty());
}

#[test]
fn revoke_deletes_attached_keys_in_one_revision() {
    let mut h = Harness::new();
    h.grant(1, 60).unwrap();
    h.grant(2, 60).unwrap();
    put_lease(&mut h, "b", 1).unwrap(); // 2
    put_lease(&mut h, "a", 1).unwrap(); // 3
    put_lease(&mut h, "c", 2).unwrap(); // 4
    h.put("d", "v"); // 5
    put_lease(&mut h, "aa", 1).unwrap(); // 6

    let resp = h.revoke(1).unwrap();
    assert_eq!(resp.header.unwrap().revision, 7);
    assert_eq!(h.store.current_revision(), 7);
    assert!(h.get("a").is_none() && h.get("aa").is_none() && h.get("b").is_none());
    assert_eq!(h.store.latest_keys(), vec![b"c".to_vec(), b"d".to_vec()]);
    assert_eq!(h.store.lease_ttl(1).unwrap(), None);
    assert!(h.store.lease_keys(1).unwrap().is_empty());
    assert_eq!(h.store.leases().unwrap(), vec![(2, 60)]);
    assert_eq!(lease_keys(&h, 2), vec!["c"]);

    // One main revision, sub revisions in ascending key order.
    let tombstones: Vec<_> = h
        .store
        .kv_rows()
        .into_iter()
        .filter(|r| r.3)
        .map(|r| (String::from_utf8(r.0).unwrap(), r.1, r.2))
        .collect();
    assert_eq!(
        tombstones,
        vec![
            ("a".to_string(), 7, 0),
            ("aa".to_string(), 7, 1),
            ("b".to_string(), 7, 2)
        ]
    );

    // Watchers see three DELETE events at revision 7.
    let (events, rev) = h.store.events(7, 100, true).unwrap();
    assert_eq!(rev, 7);
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            let prev = e.prev_kv.as_ref().unwrap();
            (
                EventType::try_from(e.r#type).unwrap(),
                String::from_utf8(kv.key.clone()).unwrap(),
                kv.mod_revision,
                prev.mod_revision,
                prev.lease,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (EventType::Delete, "a".into(), 7, 3, 1),
            (EventType::Delete, "aa".into(), 7, 6, 1),
            (EventType::Delete, "b".into(), 7, 2, 1),
        ]
    );

    // History before the revoke is still readable, and the id can be granted again.
    assert_eq!(h.get_at("a", 6).unwrap().unwrap().lease, 1);
    assert_eq!(h.revoke(1).unwrap_err(), KvError::LeaseNotFound);
    h.grant(1, 5).unwrap();
    assert!(h.store.lease_keys(1).unwrap().is_empty());
    assert_eq!(h.store.current_revision(), 7);
}

#[test]
fn revoke_of_unknown_lease_fails() {
    let mut h = Harness::new();
    h.put("k", "v"); // 2
    let err = h.revoke(42).unwrap_err();
    assert_eq!(err, KvError::LeaseNotFound);
    assert_eq!(err.to_string(), "etcdserver: requested lease not found");
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert_eq!(h.revoke(0).unwrap_err(), KvError::LeaseNotFound);
    assert_eq!(h.store.current_revision(), 2);
    assert_eq!(h.store.change_ids(), vec![(2, 0)]);
}

#[test]
fn txn_with_put_naming_unknown_lease_fails_whole() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.grant(1, 60).unwrap();
    let bad = TxnRequest {
        success: vec![
            op_put("b", "1"),
            op_put_lease("c", 1),
            op_delete("a"),
            op_txn(TxnRequest {
                success: vec![op_put_lease("d", 99)],
                ..Default::default()
            }),
        ],
        ..Default::default()
    };
    assert_eq!(h.txn(bad).unwrap_err(), KvError::LeaseNotFound);
    assert!(h.get("b").is_none() && h.get("c").is_none() && h.get("d").is_none());
    assert_eq!(h.get("a").unwrap().value, b"1");
    assert_eq!(h.store.current_revision(), 2);
    assert!(h.store.lease_keys(1).unwrap().is_empty());
    assert_eq!(h.store.change_ids(), vec![(2, 0)]);

    // In a txn the key check comes first, as in etcd.
    let both = TxnRequest {
        success: vec![RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                ignore_value: true,
                lease: 99,
                ..put_req("missing", "")
            })),
        }],
        ..Default::default()
    };
    assert_eq!(h.txn(both).unwrap_err(), KvError::KeyNotFound);

    // Only the branch taken is checked; puts in it attach their keys.
    let ok = TxnRequest {
        compare: vec![cmp(
            "a",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(b"nope".to_vec()),
        )],
        success: vec![op_put_lease("x", 99)],
        failure: vec![op_put_lease("f", 1), op_put_lease("e", 1)],
    };
    let resp = h.txn(ok).unwrap();
    assert!(!resp.succeeded);
    assert_eq!(lease_keys(&h, 1), vec!["e", "f"]);
    assert_eq!(h.store.current_revision(), 3);
}

#[test]
fn leases_survive_reopen() {
    let mut h = Harness::new();
    h.grant(1, 10).unwrap();
    h.grant(2, 20).unwrap();
    h.grant(3, 30).unwrap();
    put_lease(&mut h, "a", 1).unwrap(); // 2
    put_lease(&mut h, "b", 2).unwrap(); // 3
    h.revoke(2).unwrap(); // 4
    h.compact(4).unwrap();

    let mut h = h.reopen();
    assert_eq!(h.store.leases().unwrap(), vec![(1, 10), (3, 30)]);
    assert_eq!(h.store.lease_ttl(2).unwrap(), None);
    assert_eq!(lease_keys(&h, 1), vec!["a"]);
    assert_eq!(h.grant(1, 99).unwrap_err(), KvError::LeaseExists);

    assert_eq!(h.revoke(1).unwrap().header.unwrap().revision, 5);
    assert!(h.get("a").is_none());
    assert_eq!(h.store.leases().unwrap(), vec![(3, 30)]);
}

#[test]
fn replaying_grants_and_revokes_is_idempotent() {
    let h = Harness::new();
    let cmds = [
        Op::LeaseGrant(LeaseGrantRequest { ttl: 60, id: 1 }),
        Op::Put(PutRequest {
            lease: 1,
            ..put_req("a", "v")
        }),
        Op::Put(PutRequest {
            lease: 1,
            ..put_req("b", "v")
        }),
        Op::LeaseRevoke(LeaseRevokeRequest { id: 1 }),
        Op::LeaseGrant(LeaseGrantRequest { ttl: 30, id: 2 }),
    ]
    .map(|op| RaftCommand { op: Some(op) });
    let entries: Vec<_> = cmds
        .iter()
        .enumerate()
        .map(|(i, cmd)| ApplyEntry {
            index: i as u64 + 1,
            command: Some(cmd),
            stamp: None,
        })
        .collect();
    let summary = |results: Vec<(u64, Result<WriteResult, KvError>)>| -> Vec<_> {
        results.into_iter().map(|(i, r)| (i, r.map(|w| w.revision()))).collect()
    };
    assert_eq!(
        summary(h.store.apply(&entries).unwrap()),
        vec![(1, Ok(1)), (2, Ok(2)), (3, Ok(3)), (4, Ok(4)), (5, Ok(4))]
    );
    let state = |h: &Harness| {
        (
            h.store.current_revision(),
            h.store.leases().unwrap(),
            h.store.kv_rows(),
            h.store.change_ids(),
        )
    };
    let before = state(&h);
    assert_eq!(before.1, vec![(2, 30)]);

    // Replaying the whole batch, or a prefix of it (a grant that would now fail with
    // LeaseExists, a revoke that would fail with LeaseNotFound), yields nothing and changes nothing.
    assert!(h.store.apply(&entries).unwrap().is_empty());
    assert!(h.store.apply(&entries[..1]).unwrap().is_empty());
    assert!(h.store.apply(&entries[3..4]).unwrap().is_empty());
    assert_eq!(state(&h), before);

    // After a restart too; an overlapping batch applies only its new tail.
    let h = h.reopen();
    assert!(h.store.apply(&entries).unwrap().is_empty());
    assert_eq!(state(&h), before);
    let regrant = RaftCommand {
        op: Some(Op::LeaseGrant(LeaseGrantRequest { ttl: 5, id: 1 })),
    };
    let mut overlapping = entries.clone();
    overlapping.push(ApplyEntry {
        index: 6,
        command: Some(&regrant),
        stamp: None,
    });
    assert_eq!(summary(h.store.apply(&overlapping).unwrap()), vec![(6, Ok(4))]);
    assert_eq!(h.store.leases().unwrap(), vec![(1, 5), (2, 30)]);
    assert!(h.store.lease_keys(1).unwrap().is_empty());
}

#[test]
fn checkpoints_record_remaining_time_until_cleared_or_revoked() {
    use concord_proto::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest};
    let checkpoint = |h: &mut Harness, pairs: &[(i64, i64)]| {
        let req = LeaseCheckpointRequest {
            checkpoints: pairs
                .iter()
                .map(|&(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                .collect(),
        };
        h.apply(Op::LeaseCheckpoint(req)).unwrap()
    };
    let mut h = Harness::new();
    h.grant(1, 60).unwrap();
    h.grant(2, 60).unwrap();
    h.put("a", "1"); // 2
                     // A lease that does not exist is skipped; the revision never moves.
    checkpoint(&mut h, &[(1, 42), (2, 17), (9, 5)]);
    assert_eq!(h.store.current_revision(), 2);
    let recorded = h.store.lease_remaining_ttls().unwrap();
    assert_eq!(recorded, [(1, 42), (2, 17)].into_iter().collect());
    // Zero (a renewal) or a full TTL clear the record; a revoke drops it with the lease.
    checkpoint(&mut h, &[(1, 0)]);
    h.revoke(2).unwrap();
    checkpoint(&mut h, &[(2, 10)]);
    assert!(h.store.lease_remaining_ttls().unwrap().is_empty());
    checkpoint(&mut h, &[(1, 30)]);
    let mut h = h.reopen();
    assert_eq!(h.store.lease_remaining_ttls().unwrap(), [(1, 30)].into_iter().collect());
    checkpoint(&mut h, &[(1, 60)]);
    assert!(h.store.lease_remaining_ttls().unwrap().is_empty());
}
