//! Behavioural tests of alarms: etcd's activate/deactivate/get semantics, NOSPACE refusing the
//! writes that grow the store while letting the ones that shrink it through, and CORRUPT refusing
//! every change to keys and leases.

use concord_proto::etcdserverpb::alarm_request::AlarmAction;
use concord_proto::etcdserverpb::{AlarmMember, AlarmRequest, AlarmResponse, AlarmType};

use super::*;

const NONE: AlarmType = AlarmType::None;
const NOSPACE: AlarmType = AlarmType::Nospace;
const CORRUPT: AlarmType = AlarmType::Corrupt;

fn alarm(h: &mut Harness, action: AlarmAction, member_id: u64, kind: AlarmType) -> AlarmResponse {
    let req = AlarmRequest {
        action: action as i32,
        member_id,
        alarm: kind as i32,
    };
    match h.apply(Op::Alarm(req)).unwrap() {
        WriteResult::Alarm(resp) => resp,
        other => panic!("unexpected {other:?}"),
    }
}

fn members(list: &[(u64, AlarmType)]) -> Vec<AlarmMember> {
    list.iter()
        .map(|&(member_id, kind)| AlarmMember {
            member_id,
            alarm: kind as i32,
        })
        .collect()
}

#[test]
fn activate_get_deactivate_follow_etcd() {
    let mut h = Harness::new();
    h.put("k", "v"); // 2

    let resp = alarm(&mut h, AlarmAction::Activate, 7, NOSPACE);
    assert_eq!(resp.alarms, members(&[(7, NOSPACE)]));
    assert_eq!(resp.header.unwrap().revision, 2, "alarms keep the revision");
    // Raising it again changes nothing, but the answer still names it (etcd returns the alarm
    // already in its store).
    let resp = alarm(&mut h, AlarmAction::Activate, 7, NOSPACE);
    assert_eq!(resp.alarms, members(&[(7, NOSPACE)]));
    alarm(&mut h, AlarmAction::Activate, 3, CORRUPT);
    alarm(&mut h, AlarmAction::Activate, 3, NOSPACE);
    // Activating NONE raises nothing.
    assert!(alarm(&mut h, AlarmAction::Activate, 9, NONE).alarms.is_empty());
    assert_eq!(h.store.current_revision(), 2);

    let all = members(&[(3, NOSPACE), (3, CORRUPT), (7, NOSPACE)]);
    assert_eq!(h.store.alarms().unwrap(), all);
    // GET of NONE lists every alarm; GET of a type lists that type; the member id is ignored.
    assert_eq!(alarm(&mut h, AlarmAction::Get, 0, NONE).alarms, all);
    assert_eq!(
        alarm(&mut h, AlarmAction::Get, 3, NOSPACE).alarms,
        members(&[(3, NOSPACE), (7, NOSPACE)])
    );
    assert_eq!(
        alarm(&mut h, AlarmAction::Get, 0, CORRUPT).alarms,
        members(&[(3, CORRUPT)])
    );

    // DEACTIVATE lowers exactly one (member, type); NONE and member 0 are not wildcards.
    assert!(alarm(&mut h, AlarmAction::Deactivate, 3, NONE).alarms.is_empty());
    assert!(alarm(&mut h, AlarmAction::Deactivate, 0, NOSPACE).alarms.is_empty());
    assert_eq!(h.store.alarms().unwrap(), all);
    let resp = alarm(&mut h, AlarmAction::Deactivate, 3, NOSPACE);
    assert_eq!(resp.alarms, members(&[(3, NOSPACE)]));
    assert_eq!(resp.header.unwrap().revision, 2);
    assert!(alarm(&mut h, AlarmAction::Deactivate, 3, NOSPACE).alarms.is_empty());

    // An unknown action changes nothing.
    let req = AlarmRequest {
        action: 42,
        member_id: 7,
        alarm: NOSPACE as i32,
    };
    match h.apply(Op::Alarm(req)).unwrap() {
        WriteResult::Alarm(resp) => assert!(resp.alarms.is_empty()),
        other => panic!("unexpected {other:?}"),
    }

    // Alarms are durable.
    let h = h.reopen();
    assert_eq!(h.store.alarms().unwrap(), members(&[(3, CORRUPT), (7, NOSPACE)]));
    assert_eq!(h.store.current_revision(), 2);
}

fn lease_put(key: &str, lease: i64) -> PutRequest {
    PutRequest {
        lease,
        ..put_req(key, "v")
    }
}

#[test]
fn nospace_refuses_growth_but_not_deletes_compaction_or_revokes() {
    let mut h = Harness::new();
    h.grant(10, 60).unwrap();
    h.put_req(lease_put("leased", 10)).unwrap(); // 2
    h.put("a", "1"); // 3
    h.put("b", "1"); // 4
    h.put("c", "1"); // 5
    alarm(&mut h, AlarmAction::Activate, 1, NOSPACE);

    let err = h.put_req(put_req("a", "2")).unwrap_err();
    assert_eq!(err, KvError::NoSpace);
    assert_eq!(err.code(), ErrorCode::ResourceExhausted);
    assert_eq!(err.to_string(), "etcdserver: mvcc: database space exceeded");
    assert_eq!(h.grant(11, 60).unwrap_err(), KvError::NoSpace);
    // A txn with a put is refused whichever branch would run and however deep the put is.
    let put_on_failure = TxnRequest {
        compare: vec![],
        success: vec![op_range("a", "")],
        failure: vec![op_put("a", "2")],
    };
    assert_eq!(h.txn(put_on_failure).unwrap_err(), KvError::NoSpace);
    let nested_put = TxnRequest {
        success: vec![op_txn(TxnRequest {
            success: vec![op_put("z", "1")],
            ..Default::default()
        })],
        ..Default::default()
    };
    assert_eq!(h.txn(nested_put).unwrap_err(), KvError::NoSpace);
    assert_eq!(h.store.current_revision(), 5, "refused commands change nothing");
    assert_eq!(h.get("a").unwrap().value, b"1");
    assert_eq!(h.store.lease_ttl(11).unwrap(), None);

    // What frees space still applies.
    assert_eq!(h.delete("a", b"").deleted, 1); // 6
    let delete_txn = TxnRequest {
        success: vec![op_delete("b"), op_range("", "\0")],
        ..Default::default()
    };
    assert!(h.txn(delete_txn).unwrap().succeeded); // 7
    assert!(h.compact(6).is_ok());
    h.revoke(10).unwrap(); // 8: deletes "leased"
    assert_eq!(h.store.current_revision(), 8);
    assert!(h.get("leased").is_none());
    assert!(h.store.leases().unwrap().is_empty());

    // The refusal survives a restart (the alarm table is read again), and lowering the alarm
    // lifts it only once no member has NOSPACE raised.
    let mut h = h.reopen();
    assert_eq!(h.put_req(put_req("x", "1")).unwrap_err(), KvError::NoSpace);
    alarm(&mut h, AlarmAction::Activate, 2, NOSPACE);
    alarm(&mut h, AlarmAction::Deactivate, 1, NOSPACE);
    assert_eq!(h.put_req(put_req("x", "1")).unwrap_err(), KvError::NoSpace);
    alarm(&mut h, AlarmAction::Deactivate, 2, NOSPACE);
    assert_eq!(h.put("x", "1"), 9);
    h.grant(11, 60).unwrap();
}

#[test]
fn corrupt_refuses_every_change_to_keys_and_leases_until_lowered() {
    let mut h = Harness::new();
    h.grant(10, 60).unwrap();
    h.put("a", "1"); // 2
    alarm(&mut h, AlarmAction::Activate, 3, CORRUPT);
    // Also raised: CORRUPT is the answer, as etcd's corrupt applier wraps its capped one.
    alarm(&mut h, AlarmAction::Activate, 3, NOSPACE);

    let err = h.put_req(put_req("a", "2")).unwrap_err();
    assert_eq!(err, KvError::Corrupt);
    assert_eq!(err.code(), ErrorCode::DataLoss);
    assert_eq!(err.to_string(), "etcdserver: corrupt cluster");
    let delete = Op::DeleteRange(DeleteRangeRequest {
        key: b"a".to_vec(),
        ..Default::default()
    });
    assert_eq!(h.apply(delete).unwrap_err(), KvError::Corrupt);
    let delete_txn = TxnRequest {
        success: vec![op_delete("a")],
        ..Default::default()
    };
    assert_eq!(h.txn(delete_txn).unwrap_err(), KvError::Corrupt);
    assert_eq!(h.compact(1).unwrap_err(), KvError::Corrupt);
    assert_eq!(h.grant(11, 60).unwrap_err(), KvError::Corrupt);
    assert_eq!(h.revoke(10).unwrap_err(), KvError::Corrupt);
    assert_eq!(h.store.current_revision(), 2, "refused commands change nothing");
    assert_eq!(h.get("a").unwrap().value, b"1");

    // Survives a restart; lowering CORRUPT leaves NOSPACE's refusals, lowering both lifts them.
    let mut h = h.reopen();
    assert_eq!(h.put_req(put_req("x", "1")).unwrap_err(), KvError::Corrupt);
    alarm(&mut h, AlarmAction::Deactivate, 3, CORRUPT);
    assert_eq!(h.put_req(put_req("x", "1")).unwrap_err(), KvError::NoSpace);
    assert_eq!(h.delete("a", b"").deleted, 1); // 3
    alarm(&mut h, AlarmAction::Deactivate, 3, NOSPACE);
    assert_eq!(h.put("x", "1"), 4);
}

#[test]
fn alarm_takes_effect_within_its_batch() {
    let h = Harness::new();
    let activate = RaftCommand {
        op: Some(Op::Alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: 1,
            alarm: NOSPACE as i32,
        })),
    };
    let deactivate = RaftCommand {
        op: Some(Op::Alarm(AlarmRequest {
            action: AlarmAction::Deactivate as i32,
            member_id: 1,
            alarm: NOSPACE as i32,
        })),
    };
    let put = RaftCommand {
        op: Some(Op::Put(put_req("k", "v"))),
    };
    let entries = [
        ApplyEntry {
            index: 1,
            command: Some(&put),
            stamp: None,
        },
        ApplyEntry {
            index: 2,
            command: Some(&activate),
            stamp: None,
        },
        ApplyEntry {
            index: 3,
            command: Some(&put),
            stamp: None,
        },
        ApplyEntry {
            index: 4,
            command: Some(&deactivate),
            stamp: None,
        },
        ApplyEntry {
            index: 5,
            command: Some(&put),
            stamp: None,
        },
    ];
    let results = h.store.apply(&entries).unwrap();
    let revisions: Vec<_> = results
        .iter()
        .map(|(index, r)| (*index, r.as_ref().map(WriteResult::revision).map_err(Clone::clone)))
        .collect();
    assert_eq!(
        revisions,
        vec![
            (1, Ok(2)),
            (2, Ok(2)),
            (3, Err(KvError::NoSpace)),
            (4, Ok(2)),
            (5, Ok(3)),
        ]
    );
}

#[test]
fn update_member_is_left_to_the_server() {
    let mut h = Harness::new();
    let cmd = RaftCommand {
        op: Some(Op::UpdateMember(Default::default())),
    };
    let results = h
        .store
        .apply(&[ApplyEntry {
            index: 1,
            command: Some(&cmd),
            stamp: None,
        }])
        .unwrap();
    assert!(results.is_empty());
    assert_eq!(h.store.applied_index(), 1);
    assert_eq!(h.store.current_revision(), 1);
    h.next_index = 2;
    h.put("k", "v");
}
