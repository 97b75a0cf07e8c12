//! Behavioural tests of the store against etcd's KV semantics.

use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::RaftCommand;
use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_proto::etcdserverpb::request_op::Request;
use concord_proto::etcdserverpb::response_op::Response;
use concord_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, TxnResponse,
};
use concord_proto::mvccpb::event::EventType;
use concord_proto::mvccpb::KeyValue;

use crate::{ApplyEntry, ErrorCode, KvError, MvccStore, WriteResult};

mod alarm;
mod cross_shard;
mod hash;
mod index;
mod lease;
mod legacy;
mod memory;
mod sealing;
mod snapshot;
mod split;
mod stamp;

/// Opens a test store. With `CONCORD_STORAGE_TEST_SEAL` set in the environment every store of
/// the suite seals its values (encryption at rest), so all of these tests also run against
/// sealed records.
fn open_store(path: &std::path::Path) -> MvccStore {
    if std::env::var_os("CONCORD_STORAGE_TEST_SEAL").is_some() {
        MvccStore::open_with(path, Some(sealing::suite_sealer())).unwrap()
    } else {
        MvccStore::open(path).unwrap()
    }
}

/// A store in a temporary directory plus a Raft index counter.
struct Harness {
    dir: tempfile::TempDir,
    store: MvccStore,
    next_index: u64,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir.path().join("data").join("kv.redb"));
        Harness {
            dir,
            store,
            next_index: 1,
        }
    }

    fn reopen(self) -> Harness {
        let Harness { dir, store, next_index } = self;
        drop(store);
        let store = open_store(&dir.path().join("data").join("kv.redb"));
        Harness { dir, store, next_index }
    }

    fn apply(&mut self, op: Op) -> Result<WriteResult, KvError> {
        self.apply_stamped(op, None)
    }

    /// Applies `op` as a shard leader stamped it with a global revision (multi-shard mode).
    fn apply_stamped(&mut self, op: Op, stamp: Option<i64>) -> Result<WriteResult, KvError> {
        let cmd = RaftCommand { op: Some(op) };
        let index = self.next_index;
        self.next_index += 1;
        let mut results = self
            .store
            .apply(&[ApplyEntry {
                index,
                command: Some(&cmd),
                stamp,
            }])
            .unwrap();
        assert_eq!(results.len(), 1);
        self.store.assert_index_matches_file();
        let (got_index, result) = results.pop().unwrap();
        assert_eq!(got_index, index);
        result
    }

    fn put_req(&mut self, req: PutRequest) -> Result<PutResponse, KvError> {
        match self.apply(Op::Put(req))? {
            WriteResult::Put(resp) => Ok(resp),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Puts and returns the revision after the put.
    fn put(&mut self, key: &str, value: &str) -> i64 {
        let resp = self.put_req(put_req(key, value)).unwrap();
        resp.header.unwrap().revision
    }

    fn delete(&mut self, key: &str, range_end: &[u8]) -> DeleteRangeResponse {
        let req = DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            range_end: range_end.to_vec(),
            prev_kv: true,
        };
        match self.apply(Op::DeleteRange(req)).unwrap() {
            WriteResult::DeleteRange(resp) => resp,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn txn(&mut self, req: TxnRequest) -> Result<TxnResponse, KvError> {
        match self.apply(Op::Txn(req))? {
            WriteResult::Txn(resp) => Ok(resp),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn grant(&mut self, id: i64, ttl: i64) -> Result<LeaseGrantResponse, KvError> {
        match self.apply(Op::LeaseGrant(LeaseGrantRequest { ttl, id }))? {
            WriteResult::LeaseGrant(resp) => Ok(resp),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, KvError> {
        match self.apply(Op::LeaseRevoke(LeaseRevokeRequest { id }))? {
            WriteResult::LeaseRevoke(resp) => Ok(resp),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn compact(&mut self, revision: i64) -> Result<WriteResult, KvError> {
        self.apply(Op::Compaction(CompactionRequest {
            revision,
            physical: true,
        }))
    }

    fn range(&self, req: RangeRequest) -> Result<RangeResponse, KvError> {
        self.store.range(&req).map(|(resp, _)| resp)
    }

    fn get(&self, key: &str) -> Option<KeyValue> {
        let resp = self.range(range_req(key, "")).unwrap();
        assert!(resp.kvs.len() <= 1);
        resp.kvs.into_iter().next()
    }

    fn get_at(&self, key: &str, revision: i64) -> Result<Option<KeyValue>, KvError> {
        let req = RangeRequest {
            revision,
            ..range_req(key, "")
        };
        Ok(self.range(req)?.kvs.into_iter().next())
    }
}

fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn range_req(key: &str, range_end: &str) -> RangeRequest {
    RangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: range_end.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn range_bytes(key: &[u8], range_end: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        ..Default::default()
    }
}

fn keys(resp: &RangeResponse) -> Vec<String> {
    resp.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn op_put(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(put_req(key, value))),
    }
}

fn op_range(key: &str, range_end: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestRange(range_req(key, range_end))),
    }
}

fn op_delete(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

fn op_txn(txn: TxnRequest) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestTxn(txn)),
    }
}

fn cmp(key: &str, target: CompareTarget, result: CompareResult, union: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        target_union: Some(union),
    }
}

fn range_resp(op: &concord_proto::etcdserverpb::ResponseOp) -> &RangeResponse {
    match &op.response {
        Some(Response::ResponseRange(r)) => r,
        other => panic!("expected a range response, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Basics: revisions, versions, delete and re-create
// ---------------------------------------------------------------------------------------------

#[test]
fn fresh_store_is_at_revision_one() {
    let h = Harness::new();
    assert_eq!(h.store.current_revision(), 1);
    assert_eq!(h.store.compact_revision(), -1);
    assert_eq!(h.store.applied_index(), 0);
    let (resp, rev) = h.store.range(&range_bytes(b"\0", b"\0")).unwrap();
    assert_eq!(rev, 1);
    assert!(resp.kvs.is_empty());
    assert_eq!(resp.count, 0);
    assert!(resp.header.is_none());
}

#[test]
fn put_and_get_track_revisions_and_versions() {
    let mut h = Harness::new();
    assert_eq!(h.put("foo", "bar"), 2);
    let kv = h.get("foo").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    assert_eq!(kv.value, b"bar");

    assert_eq!(h.put("foo", "baz"), 3);
    let kv = h.get("foo").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(kv.value, b"baz");
    assert_eq!(h.store.current_revision(), 3);
    assert_eq!(h.store.range(&range_req("foo", "")).unwrap().1, 3);
    assert!(h.get("fo").is_none());
    assert!(h.get("fooo").is_none());
}

#[test]
fn put_prev_kv_and_lease() {
    let mut h = Harness::new();
    h.grant(7, 60).unwrap();
    let resp = h
        .put_req(PutRequest {
            prev_kv: true,
            lease: 7,
            ..put_req("k", "v1")
        })
        .unwrap();
    assert!(resp.prev_kv.is_none());
    let resp = h
        .put_req(PutRequest {
            prev_kv: true,
            ..put_req("k", "v2")
        })
        .unwrap();
    let prev = resp.prev_kv.unwrap();
    assert_eq!((prev.value.as_slice(), prev.version, prev.lease), (&b"v1"[..], 1, 7));
    assert_eq!(resp.header.unwrap().revision, 3);
    assert_eq!(h.get("k").unwrap().lease, 0);
}

#[test]
fn put_ignore_value_and_ignore_lease() {
    let mut h = Harness::new();
    let err = h
        .put_req(PutRequest {
            ignore_value: true,
            ..put_req("k", "")
        })
        .unwrap_err();
    assert_eq!(err, KvError::KeyNotFound);
    assert_eq!(err.to_string(), "etcdserver: key not found");
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    let err = h
        .put_req(PutRequest {
            ignore_lease: true,
            ..put_req("k", "v")
        })
        .unwrap_err();
    assert_eq!(err, KvError::KeyNotFound);
    assert_eq!(h.store.current_revision(), 1, "a failed put must not bump the revision");
    assert!(h.store.kv_rows().is_empty());

    h.grant(42, 60).unwrap();
    h.grant(43, 60).unwrap();
    h.put_req(PutRequest {
        lease: 42,
        ..put_req("k", "orig")
    })
    .unwrap();
    h.put_req(PutRequest {
        ignore_value: true,
        lease: 43,
        ..put_req("k", "")
    })
    .unwrap();
    let kv = h.get("k").unwrap();
    assert_eq!((kv.value.as_slice(), kv.lease, kv.version), (&b"orig"[..], 43, 2));
    h.put_req(PutRequest {
        ignore_lease: true,
        ..put_req("k", "new")
    })
    .unwrap();
    let kv = h.get("k").unwrap();
    assert_eq!((kv.value.as_slice(), kv.lease, kv.version), (&b"new"[..], 43, 3));
}

#[test]
fn delete_and_recreate_resets_version() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("a", "2"); // 3
    let resp = h.delete("a", b""); // 4
    assert_eq!(resp.deleted, 1);
    assert_eq!(resp.header.unwrap().revision, 4);
    assert_eq!(resp.prev_kvs.len(), 1);
    assert_eq!(resp.prev_kvs[0].value, b"2");
    assert!(h.get("a").is_none());

    // Deleting nothing does not bump the revision.
    let resp = h.delete("a", b"");
    assert_eq!(resp.deleted, 0);
    assert_eq!(resp.header.unwrap().revision, 4);
    assert_eq!(h.store.current_revision(), 4);

    assert_eq!(h.put("a", "3"), 5);
    let kv = h.get("a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
}

#[test]
fn delete_range_uses_one_revision_with_sub_revisions() {
    let mut h = Harness::new();
    for k in ["a", "b", "c", "d"] {
        h.put(k, k);
    }
    let resp = h.delete("b", b"d");
    assert_eq!(resp.deleted, 2);
    assert_eq!(
        resp.prev_kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        vec![b"b".to_vec(), b"c".to_vec()]
    );
    assert_eq!(h.store.current_revision(), 6);
    let tombstones: Vec<_> = h
        .store
        .kv_rows()
        .into_iter()
        .filter(|r| r.3)
        .map(|r| (r.0, r.1, r.2))
        .collect();
    assert_eq!(tombstones, vec![(b"b".to_vec(), 6, 0), (b"c".to_vec(), 6, 1)]);
    assert_eq!(h.store.latest_keys(), vec![b"a".to_vec(), b"d".to_vec()]);

    // From-key delete.
    let resp = h.delete("b", b"\0");
    assert_eq!(resp.deleted, 1);
    assert_eq!(h.store.latest_keys(), vec![b"a".to_vec()]);
}

// ---------------------------------------------------------------------------------------------
// Range forms, limit, count, sorting, filters
// ---------------------------------------------------------------------------------------------

#[test]
fn range_forms() {
    let mut h = Harness::new();
    for k in ["a", "a\0", "ab", "abc", "b", "c"] {
        h.put(k, "v");
    }
    // Single key.
    assert_eq!(keys(&h.range(range_req("ab", "")).unwrap()), vec!["ab"]);
    // Prefix "a": [a, b).
    assert_eq!(
        keys(&h.range(range_req("a", "b")).unwrap()),
        vec!["a", "a\0", "ab", "abc"]
    );
    // Prefix "ab": [ab, ac).
    assert_eq!(keys(&h.range(range_req("ab", "ac")).unwrap()), vec!["ab", "abc"]);
    // From key.
    assert_eq!(
        keys(&h.range(range_bytes(b"ab", b"\0")).unwrap()),
        vec!["ab", "abc", "b", "c"]
    );
    // All keys.
    let all = h.range(range_bytes(b"\0", b"\0")).unwrap();
    assert_eq!(keys(&all), vec!["a", "a\0", "ab", "abc", "b", "c"]);
    assert_eq!(all.count, 6);
    // range_end at or before key: nothing.
    assert!(h.range(range_req("b", "a")).unwrap().kvs.is_empty());
    assert!(h.range(range_req("b", "b")).unwrap().kvs.is_empty());
}

#[test]
fn limit_more_count_and_flags() {
    let mut h = Harness::new();
    for k in ["k1", "k2", "k3", "k4", "k5"] {
        h.put(k, &format!("value-{k}"));
    }
    let resp = h
        .range(RangeRequest {
            limit: 2,
            ..range_req("k", "l")
        })
        .unwrap();
    assert_eq!(keys(&resp), vec!["k1", "k2"]);
    assert!(resp.more);
    assert_eq!(resp.count, 5);

    let resp = h
        .range(RangeRequest {
            limit: 5,
            ..range_req("k", "l")
        })
        .unwrap();
    assert_eq!(resp.kvs.len(), 5);
    assert!(!resp.more);

    let resp = h
        .range(RangeRequest {
            count_only: true,
            ..range_req("k", "l")
        })
        .unwrap();
    assert!(resp.kvs.is_empty());
    assert_eq!(resp.count, 5);
    assert!(!resp.more);

    let resp = h
        .range(RangeRequest {
            keys_only: true,
            ..range_req("k", "l")
        })
        .unwrap();
    assert_eq!(resp.kvs.len(), 5);
    assert!(resp.kvs.iter().all(|kv| kv.value.is_empty() && kv.version == 1));

    // Count of a single key that does not exist.
    let resp = h.range(range_req("nope", "")).unwrap();
    assert_eq!((resp.count, resp.kvs.len()), (0, 0));
}

#[test]
fn sorting() {
    let mut h = Harness::new();
    // Versions: a=1, b=3, c=2; create: a=2, b=3, c=4; values: a="z", b="x", c="y".
    h.put("a", "z"); // 2
    h.put("b", "x"); // 3
    h.put("c", "q"); // 4
    h.put("b", "x"); // 5
    h.put("c", "y"); // 6
    h.put("b", "x"); // 7
    let sorted = |order: SortOrder, target: SortTarget| {
        let req = RangeRequest {
            sort_order: order as i32,
            sort_target: target as i32,
            ..range_req("a", "z")
        };
        keys(&h.range(req).unwrap())
    };
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Key), vec!["c", "b", "a"]);
    assert_eq!(sorted(SortOrder::Ascend, SortTarget::Key), vec!["a", "b", "c"]);
    assert_eq!(sorted(SortOrder::Ascend, SortTarget::Version), vec!["a", "c", "b"]);
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Version), vec!["b", "c", "a"]);
    // Order NONE with a non-KEY target sorts ascending.
    assert_eq!(sorted(SortOrder::None, SortTarget::Version), vec!["a", "c", "b"]);
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Create), vec!["c", "b", "a"]);
    assert_eq!(sorted(SortOrder::Ascend, SortTarget::Mod), vec!["a", "c", "b"]);
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Mod), vec!["b", "c", "a"]);
    assert_eq!(sorted(SortOrder::Ascend, SortTarget::Value), vec!["b", "c", "a"]);
    assert_eq!(sorted(SortOrder::Descend, SortTarget::Value), vec!["a", "c", "b"]);

    // With a sort order, limit applies after sorting the whole range.
    let req = RangeRequest {
        sort_order: SortOrder::Descend as i32,
        sort_target: SortTarget::Version as i32,
        limit: 1,
        ..range_req("a", "z")
    };
    let resp = h.range(req).unwrap();
    assert_eq!(keys(&resp), vec!["b"]);
    assert!(resp.more);
    assert_eq!(resp.count, 3);

    // keys_only with a VALUE sort still sorts by value but returns no values.
    let req = RangeRequest {
        sort_order: SortOrder::Ascend as i32,
        sort_target: SortTarget::Value as i32,
        keys_only: true,
        ..range_req("a", "z")
    };
    let resp = h.range(req).unwrap();
    assert_eq!(keys(&resp), vec!["b", "c", "a"]);
    assert!(resp.kvs.iter().all(|kv| kv.value.is_empty()));
}

#[test]
fn revision_filters_prune_but_do_not_change_count() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("b", "1"); // 3
    h.put("c", "1"); // 4
    h.put("a", "2"); // 5 (a: create 2, mod 5)
    let filtered = |req: RangeRequest| {
        let resp = h
            .range(RangeRequest {
                key: b"a".to_vec(),
                range_end: b"z".to_vec(),
                ..req
            })
            .unwrap();
        assert_eq!(resp.count, 3);
        keys(&resp)
    };
    assert_eq!(
        filtered(RangeRequest {
            min_mod_revision: 4,
            ..Default::default()
        }),
        vec!["a", "c"]
    );
    assert_eq!(
        filtered(RangeRequest {
            max_mod_revision: 3,
            ..Default::default()
        }),
        vec!["b"]
    );
    assert_eq!(
        filtered(RangeRequest {
            min_create_revision: 3,
            ..Default::default()
        }),
        vec!["b", "c"]
    );
    assert_eq!(
        filtered(RangeRequest {
            max_create_revision: 2,
            ..Default::default()
        }),
        vec!["a"]
    );
    assert_eq!(
        filtered(RangeRequest {
            min_mod_revision: 3,
            max_mod_revision: 4,
            ..Default::default()
        }),
        vec!["b", "c"]
    );
    // Limit applies after filtering.
    let resp = h
        .range(RangeRequest {
            max_mod_revision: 4,
            limit: 1,
            ..range_req("a", "z")
        })
        .unwrap();
    assert_eq!(keys(&resp), vec!["b"]);
    assert!(resp.more);
}

// ---------------------------------------------------------------------------------------------
// History, future revisions, compaction
// ---------------------------------------------------------------------------------------------

#[test]
fn historical_reads() {
    let mut h = Harness::new();
    h.put("a", "a1"); // 2
    h.put("b", "b1"); // 3
    h.put("a", "a2"); // 4
    h.delete("b", b""); // 5
    h.put("c", "c1"); // 6
    h.put("b", "b2"); // 7

    let at = |rev: i64| {
        let resp = h
            .range(RangeRequest {
                revision: rev,
                ..range_bytes(b"\0", b"\0")
            })
            .unwrap();
        resp.kvs
            .iter()
            .map(|kv| {
                format!(
                    "{}={}",
                    String::from_utf8_lossy(&kv.key),
                    String::from_utf8_lossy(&kv.value)
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(at(1), Vec::<String>::new());
    assert_eq!(at(2), vec!["a=a1"]);
    assert_eq!(at(3), vec!["a=a1", "b=b1"]);
    assert_eq!(at(4), vec!["a=a2", "b=b1"]);
    assert_eq!(at(5), vec!["a=a2"]);
    assert_eq!(at(6), vec!["a=a2", "c=c1"]);
    assert_eq!(at(7), vec!["a=a2", "b=b2", "c=c1"]);
    assert_eq!(at(0), at(7));

    let old = h.get_at("a", 3).unwrap().unwrap();
    assert_eq!(
        (old.mod_revision, old.version, old.value.as_slice()),
        (2, 1, &b"a1"[..])
    );
    assert!(h.get_at("b", 6).unwrap().is_none());
    let resp = h
        .range(RangeRequest {
            revision: 4,
            count_only: true,
            ..range_bytes(b"\0", b"\0")
        })
        .unwrap();
    assert_eq!(resp.count, 2);
    // The header revision of a historical read is still the current revision.
    assert_eq!(
        h.store
            .range(&RangeRequest {
                revision: 2,
                ..range_req("a", "")
            })
            .unwrap()
            .1,
        7
    );
}

#[test]
fn historical_scan_skips_long_runs_of_newer_versions() {
    let mut h = Harness::new();
    h.put("a", "a0"); // 2
    h.put("b", "b0"); // 3
    h.put("c", "c0"); // 4
    let snapshot_rev = h.store.current_revision();
    for i in 0..30 {
        h.put("b", &format!("b{}", i + 1));
        h.put("a", &format!("a{}", i + 1));
    }
    h.put("d", "d0");
    let resp = h
        .range(RangeRequest {
            revision: snapshot_rev,
            ..range_bytes(b"\0", b"\0")
        })
        .unwrap();
    let got: Vec<_> = resp.kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(got, vec![b"a0".to_vec(), b"b0".to_vec(), b"c0".to_vec()]);
    let resp = h
        .range(RangeRequest {
            revision: snapshot_rev + 3,
            ..range_bytes(b"\0", b"\0")
        })
        .unwrap();
    let got: Vec<_> = resp.kvs.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(got, vec![b"a1".to_vec(), b"b2".to_vec(), b"c0".to_vec()]);
    let resp = h
        .range(RangeRequest {
            revision: snapshot_rev,
            limit: 1,
            ..range_bytes(b"\0", b"\0")
        })
        .unwrap();
    assert_eq!((resp.kvs.len(), resp.count, resp.more), (1, 3, true));
}

#[test]
fn future_revision_is_an_error() {
    let mut h = Harness::new();
    h.put("a", "1");
    let err = h.get_at("a", 3).unwrap_err();
    assert_eq!(err, KvError::FutureRevision);
    assert_eq!(
        err.to_string(),
        "etcdserver: mvcc: required revision is a future revision"
    );
    assert_eq!(err.code(), ErrorCode::OutOfRange);
    assert!(h.get_at("a", 2).unwrap().is_some());
}

#[test]
fn compaction_removes_history_and_guards_reads() {
    let mut h = Harness::new();
    h.put("a", "a1"); // 2
    h.put("a", "a2"); // 3
    h.put("b", "b1"); // 4
    h.delete("b", b""); // 5
    h.put("c", "c1"); // 6
    h.put("a", "a3"); // 7
    h.put("d", "d1"); // 8
    h.delete("d", b""); // 9

    match h.compact(6).unwrap() {
        WriteResult::Compaction(resp) => assert_eq!(resp.header.unwrap().revision, 9),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(h.store.compact_revision(), 6);
    assert_eq!(h.store.current_revision(), 9, "compaction does not bump the revision");

    // Reads below the compaction point fail; at it they still work.
    let err = h.get_at("a", 5).unwrap_err();
    assert_eq!(err, KvError::Compacted);
    assert_eq!(
        err.to_string(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(err.code(), ErrorCode::OutOfRange);
    let at6 = h
        .range(RangeRequest {
            revision: 6,
            ..range_bytes(b"\0", b"\0")
        })
        .unwrap();
    assert_eq!(keys(&at6), vec!["a", "c"]);
    assert_eq!(at6.kvs[0].value, b"a2");
    assert_eq!(h.get_at("d", 8).unwrap().unwrap().value, b"d1");

    // Physically: a keeps its version at 3 (newest <= 6) and 7; b is gone (tombstoned at 5);
    // c keeps 6; d's history above 6 is untouched.
    let rows: Vec<_> = h
        .store
        .kv_rows()
        .into_iter()
        .map(|(k, main, _, tomb)| (String::from_utf8(k).unwrap(), main, tomb))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("a".into(), 3, false),
            ("a".into(), 7, false),
            ("c".into(), 6, false),
            ("d".into(), 8, false),
            ("d".into(), 9, true),
        ]
    );
    // The rows are the change log too: below the compaction point only the surviving versions
    // are left; every change at it and above is there.
    assert_eq!(h.store.change_ids(), vec![(3, 0), (6, 0), (7, 0), (8, 0), (9, 0)]);

    // Compacting again at or below the point fails; beyond the current revision too.
    assert_eq!(h.compact(6).unwrap_err(), KvError::Compacted);
    assert_eq!(h.compact(5).unwrap_err(), KvError::Compacted);
    assert_eq!(h.compact(10).unwrap_err(), KvError::FutureRevision);

    // A second compaction drops d's put and a's version at 3. d's deletion at exactly the
    // compaction point stays for watchers starting there, until the next compaction.
    h.compact(9).unwrap();
    let rows: Vec<_> = h
        .store
        .kv_rows()
        .into_iter()
        .map(|(k, main, _, tomb)| (String::from_utf8(k).unwrap(), main, tomb))
        .collect();
    assert_eq!(
        rows,
        vec![("a".into(), 7, false), ("c".into(), 6, false), ("d".into(), 9, true)]
    );
    assert_eq!(keys(&h.range(range_bytes(b"\0", b"\0")).unwrap()), vec!["a", "c"]);
    assert_eq!(h.store.change_ids(), vec![(6, 0), (7, 0), (9, 0)]);
    h.put("e", "1"); // 10
    h.compact(10).unwrap();
    assert_eq!(h.store.change_ids(), vec![(6, 0), (7, 0), (10, 0)]);
}

#[test]
fn compaction_at_current_revision_keeps_current_state() {
    let mut h = Harness::new();
    for i in 0..5 {
        h.put("k", &i.to_string());
    }
    h.compact(h.store.current_revision()).unwrap();
    let kv = h.get("k").unwrap();
    assert_eq!((kv.value.as_slice(), kv.version, kv.create_revision), (&b"4"[..], 5, 2));
    assert_eq!(h.store.kv_rows().len(), 1);
    // Writes after compaction continue normally.
    assert_eq!(h.put("k", "5"), 7);
    assert_eq!(h.get("k").unwrap().version, 6);
}

// ---------------------------------------------------------------------------------------------
// Txn
// ---------------------------------------------------------------------------------------------

/// Runs a txn whose only effect is reporting whether `compare` held.
fn compare_holds(h: &mut Harness, compare: Compare) -> bool {
    let before = h.store.current_revision();
    let resp = h
        .txn(TxnRequest {
            compare: vec![compare],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(h.store.current_revision(), before);
    assert_eq!(resp.header.unwrap().revision, before);
    resp.succeeded
}

#[test]
fn txn_compare_targets_and_results() {
    use CompareResult::*;
    use CompareTarget::*;
    let mut h = Harness::new();
    h.grant(5, 60).unwrap(); // a grant keeps revision 1
    h.put_req(PutRequest {
        lease: 5,
        ..put_req("k", "m")
    })
    .unwrap(); // 2
    h.put_req(PutRequest {
        lease: 5,
        ..put_req("k", "m")
    })
    .unwrap(); // 3: version 2, create 2, mod 3

    let cases: Vec<(CompareTarget, TargetUnion, TargetUnion, TargetUnion)> = vec![
        // (target, equal value, smaller value, larger value)
        (
            Value,
            TargetUnion::Value(b"m".to_vec()),
            TargetUnion::Value(b"a".to_vec()),
            TargetUnion::Value(b"z".to_vec()),
        ),
        (
            Version,
            TargetUnion::Version(2),
            TargetUnion::Version(1),
            TargetUnion::Version(3),
        ),
        (
            Create,
            TargetUnion::CreateRevision(2),
            TargetUnion::CreateRevision(1),
            TargetUnion::CreateRevision(3),
        ),
        (
            Mod,
            TargetUnion::ModRevision(3),
            TargetUnion::ModRevision(2),
            TargetUnion::ModRevision(4),
        ),
        (
            Lease,
            TargetUnion::Lease(5),
            TargetUnion::Lease(4),
            TargetUnion::Lease(6),
        ),
    ];
    for (target, eq, smaller, larger) in cases {
        let c = |result, union: &TargetUnion| cmp("k", target, result, union.clone());
        assert!(compare_holds(&mut h, c(Equal, &eq)), "{target:?} equal");
        assert!(!compare_holds(&mut h, c(Equal, &smaller)), "{target:?} equal (smaller)");
        assert!(!compare_holds(&mut h, c(NotEqual, &eq)), "{target:?} not equal");
        assert!(
            compare_holds(&mut h, c(NotEqual, &larger)),
            "{target:?} not equal (larger)"
        );
        assert!(compare_holds(&mut h, c(Greater, &smaller)), "{target:?} greater");
        assert!(!compare_holds(&mut h, c(Greater, &eq)), "{target:?} greater (equal)");
        assert!(compare_holds(&mut h, c(Less, &larger)), "{target:?} less");
        assert!(!compare_holds(&mut h, c(Less, &eq)), "{target:?} less (equal)");
    }
}

#[test]
fn txn_compare_on_missing_keys_and_ranges() {
    use CompareResult::*;
    use CompareTarget::*;
    let mut h = Harness::new();
    // A missing key compares as the zero key-value, except for VALUE, which always fails.
    assert!(compare_holds(
        &mut h,
        cmp("nope", Version, Equal, TargetUnion::Version(0))
    ));
    assert!(compare_holds(
        &mut h,
        cmp("nope", Create, Equal, TargetUnion::CreateRevision(0))
    ));
    assert!(!compare_holds(
        &mut h,
        cmp("nope", Value, Equal, TargetUnion::Value(Vec::new()))
    ));
    assert!(!compare_holds(
        &mut h,
        cmp("nope", Value, NotEqual, TargetUnion::Value(b"x".to_vec()))
    ));

    h.put("r1", "1");
    h.put("r2", "2");
    h.put("r3", "3");
    let ranged = |result, value: &str| Compare {
        range_end: b"r9".to_vec(),
        ..cmp("r", Value, result, TargetUnion::Value(value.as_bytes().to_vec()))
    };
    // Every key in the range must satisfy the compare.
    assert!(compare_holds(&mut h, ranged(Greater, "0")));
    assert!(!compare_holds(&mut h, ranged(Greater, "1")));
    assert!(compare_holds(&mut h, ranged(Less, "4")));
    // Multiple compares are a conjunction.
    let both = TxnRequest {
        compare: vec![ranged(Greater, "0"), cmp("r1", Version, Equal, TargetUnion::Version(2))],
        ..Default::default()
    };
    assert!(!h.txn(both).unwrap().succeeded);
}

#[test]
fn txn_branches_revisions_and_read_your_writes() {
    let mut h = Harness::new();
    h.put("x", "0"); // 2
    let txn = TxnRequest {
        compare: vec![cmp(
            "x",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(b"0".to_vec()),
        )],
        success: vec![
            op_range("x", ""),
            op_put("x", "1"),
            op_put("y", "1"),
            op_range("x", "z"),
            RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    revision: 2,
                    ..range_req("x", "z")
                })),
            },
            op_delete("nothing"),
        ],
        failure: vec![op_put("failed", "1")],
    };
    let resp = h.txn(txn.clone()).unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 3);
    assert_eq!(resp.responses.len(), 6);
    // Read before the writes: the old value, at the pre-txn revision.
    let first = range_resp(&resp.responses[0]);
    assert_eq!(first.kvs[0].value, b"0");
    assert_eq!(first.header.unwrap().revision, 2);
    // Puts share one main revision.
    for i in [1, 2] {
        match &resp.responses[i].response {
            Some(Response::ResponsePut(p)) => assert_eq!(p.header.unwrap().revision, 3),
            other => panic!("{other:?}"),
        }
    }
    // Read after the writes sees them.
    let after = range_resp(&resp.responses[3]);
    assert_eq!(keys(after), vec!["x", "y"]);
    assert_eq!(after.kvs[0].value, b"1");
    assert_eq!(after.kvs[0].mod_revision, 3);
    assert_eq!(after.header.unwrap().revision, 3);
    // A read at the pre-txn revision does not.
    let old = range_resp(&resp.responses[4]);
    assert_eq!(keys(old), vec!["x"]);
    assert_eq!(old.kvs[0].value, b"0");
    // A delete of nothing after writes reports the pending revision.
    match &resp.responses[5].response {
        Some(Response::ResponseDeleteRange(d)) => {
            assert_eq!((d.deleted, d.header.unwrap().revision), (0, 3))
        }
        other => panic!("{other:?}"),
    }
    // Sub revisions follow execution order.
    let rows: Vec<_> = h
        .store
        .kv_rows()
        .into_iter()
        .filter(|r| r.1 == 3)
        .map(|r| (r.0, r.2))
        .collect();
    assert_eq!(rows, vec![(b"x".to_vec(), 0), (b"y".to_vec(), 1)]);

    // Same txn again: the compare now fails and the failure branch runs.
    let resp = h.txn(txn).unwrap();
    assert!(!resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 4);
    assert!(h.get("failed").is_some());
}

#[test]
fn read_only_txn_does_not_bump_revision() {
    let mut h = Harness::new();
    h.put("a", "1");
    let resp = h
        .txn(TxnRequest {
            success: vec![op_range("a", "")],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(resp.header.unwrap().revision, 2);
    assert_eq!(h.store.current_revision(), 2);
    assert_eq!(range_resp(&resp.responses[0]).kvs.len(), 1);

    // A txn whose writes change nothing (delete of a missing key) doesn't either.
    let resp = h
        .txn(TxnRequest {
            success: vec![op_delete("missing")],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(resp.header.unwrap().revision, 2);
    assert_eq!(h.store.current_revision(), 2);
}

#[test]
fn txn_read_serves_read_only_txns_from_a_snapshot() {
    let mut h = Harness::new();
    h.put("a", "1");
    let txn = TxnRequest {
        compare: vec![cmp(
            "a",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(1),
        )],
        success: vec![
            op_range("a", ""),
            op_txn(TxnRequest {
                success: vec![op_range("b", "")],
                ..Default::default()
            }),
        ],
        failure: vec![],
    };
    assert!(crate::is_txn_read_only(&txn));
    let (resp, rev) = h.store.txn_read(&txn).unwrap();
    assert_eq!(rev, 2);
    assert!(resp.succeeded);
    assert!(resp.header.is_none());
    assert_eq!(range_resp(&resp.responses[0]).kvs[0].value, b"1");

    let writing = TxnRequest {
        failure: vec![op_put("x", "y")],
        ..Default::default()
    };
    assert!(!crate::is_txn_read_only(&writing));
    assert!(h.store.txn_read(&writing).is_err());
    assert!(h.get("x").is_none());
}

#[test]
fn nested_txn_compares_see_pre_txn_state() {
    let mut h = Harness::new();
    h.put("flag", "off"); // 2
    let inner = TxnRequest {
        // Evaluated before the outer put, so it sees "off" even though the put runs first.
        compare: vec![cmp(
            "flag",
            CompareTarget::Value,
            CompareResult::Equal,
            TargetUnion::Value(b"off".to_vec()),
        )],
        success: vec![op_put("inner", "saw-off"), op_range("flag", "")],
        failure: vec![op_put("inner", "saw-on")],
    };
    let outer = TxnRequest {
        compare: vec![],
        success: vec![op_put("flag", "on"), op_txn(inner), op_put("after", "1")],
        failure: vec![],
    };
    let resp = h.txn(outer).unwrap();
    assert!(resp.succeeded);
    assert_eq!(resp.header.unwrap().revision, 3);
    assert_eq!(h.get("inner").unwrap().value, b"saw-off");
    let nested = match &resp.responses[1].response {
        Some(Response::ResponseTxn(t)) => t,
        other => panic!("{other:?}"),
    };
    assert!(nested.succeeded);
    // A nested txn response carries an empty header, like etcd's.
    assert_eq!(nested.header.unwrap().revision, 0);
    // ...but its reads see the outer txn's writes.
    assert_eq!(range_resp(&nested.responses[1]).kvs[0].value, b"on");
    let rows: Vec<_> = h
        .store
        .kv_rows()
        .into_iter()
        .filter(|r| r.1 == 3)
        .map(|r| (String::from_utf8(r.0).unwrap(), r.2))
        .collect();
    assert_eq!(rows, vec![("after".into(), 2), ("flag".into(), 0), ("inner".into(), 1)]);
}

#[test]
fn txn_checks_fail_the_whole_txn_before_writing() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    let bad_put = TxnRequest {
        success: vec![
            op_put("b", "1"),
            RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    ignore_value: true,
                    ..put_req("missing", "")
                })),
            },
        ],
        ..Default::default()
    };
    assert_eq!(h.txn(bad_put).unwrap_err(), KvError::KeyNotFound);
    let future = TxnRequest {
        success: vec![
            op_put("b", "1"),
            op_txn(TxnRequest {
                success: vec![RequestOp {
                    request: Some(Request::RequestRange(RangeRequest {
                        revision: 99,
                        ..range_req("a", "")
                    })),
                }],
                ..Default::default()
            }),
        ],
        ..Default::default()
    };
    assert_eq!(h.txn(future).unwrap_err(), KvError::FutureRevision);
    assert!(h.get("b").is_none());
    assert_eq!(h.store.current_revision(), 2);
    // The failed commands still advanced the applied index.
    assert_eq!(h.store.applied_index(), 3);
}

// ---------------------------------------------------------------------------------------------
// Apply batches, replay, restart, crash
// ---------------------------------------------------------------------------------------------

#[test]
fn batch_with_failures_noops_and_replay() {
    let h = Harness::new();
    let cmds = [
        RaftCommand {
            op: Some(Op::Put(put_req("a", "1"))),
        },
        RaftCommand {
            op: Some(Op::Put(PutRequest {
                ignore_value: true,
                ..put_req("zz", "")
            })),
        },
        RaftCommand {
            op: Some(Op::Put(put_req("b", "1"))),
        },
        RaftCommand { op: None },
    ];
    let entries = [
        ApplyEntry {
            index: 1,
            command: Some(&cmds[0]),
            stamp: None,
        },
        ApplyEntry {
            index: 2,
            command: None,
            stamp: None,
        },
        ApplyEntry {
            index: 3,
            command: Some(&cmds[1]),
            stamp: None,
        },
        ApplyEntry {
            index: 4,
            command: Some(&cmds[2]),
            stamp: None,
        },
        ApplyEntry {
            index: 5,
            command: Some(&cmds[3]),
            stamp: None,
        },
    ];
    let results = h.store.apply(&entries).unwrap();
    let summary: Vec<_> = results
        .iter()
        .map(|(i, r)| (*i, r.as_ref().map(|w| w.revision()).map_err(|e| e.clone())))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, Ok(2)),
            (3, Err(KvError::KeyNotFound)),
            (4, Ok(3)),
            (5, Err(KvError::EmptyCommand))
        ]
    );
    assert_eq!(h.store.applied_index(), 5);
    assert_eq!(h.store.current_revision(), 3);
    let rows_before = h.store.kv_rows();

    // Replaying the same entries changes nothing and yields nothing.
    assert!(h.store.apply(&entries).unwrap().is_empty());
    // A batch overlapping the applied prefix applies only the new tail.
    let extra = RaftCommand {
        op: Some(Op::Put(put_req("c", "1"))),
    };
    let mut overlapping = entries.to_vec();
    overlapping.push(ApplyEntry {
        index: 6,
        command: Some(&extra),
        stamp: None,
    });
    let results = h.store.apply(&overlapping).unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].0, 6);
    assert_eq!(h.store.current_revision(), 4);
    assert_eq!(h.store.kv_rows().len(), rows_before.len() + 1);
    assert_eq!(h.get("a").unwrap().version, 1);
}

#[test]
fn reopen_keeps_data_revision_and_applied_index() {
    let mut h = Harness::new();
    h.put("a", "1");
    h.put("b", "2");
    h.delete("a", b"");
    h.put("c", "3");
    h.compact(3).unwrap();
    let applied = h.store.applied_index();
    assert_eq!(applied, 5);
    let h = h.reopen();
    assert_eq!(h.store.applied_index(), applied);
    assert_eq!(h.store.durable_applied_index(), applied);
    assert_eq!(h.store.current_revision(), 5);
    assert_eq!(h.store.compact_revision(), 3);
    assert_eq!(keys(&h.range(range_bytes(b"\0", b"\0")).unwrap()), vec!["b", "c"]);
    assert_eq!(h.get_at("b", 3).unwrap().unwrap().value, b"2");
    assert_eq!(h.get_at("a", 2).unwrap_err(), KvError::Compacted);
}

#[test]
fn sync_makes_applied_index_durable() {
    let mut h = Harness::new();
    h.put("a", "1");
    h.put("a", "2");
    h.store.sync().unwrap();
    assert_eq!(h.store.durable_applied_index(), h.store.applied_index());
}

/// Child half of `crash_rolls_back_to_last_durable_commit`: writes, then dies without closing.
#[test]
#[ignore = "run only as the child of crash_rolls_back_to_last_durable_commit"]
fn crash_child() {
    let Some(path) = std::env::var_os("CONCORD_STORAGE_CRASH_PATH") else {
        return;
    };
    let store = MvccStore::open(std::path::Path::new(&path)).unwrap();
    let apply_put = |index: u64, key: &str| {
        let cmd = RaftCommand {
            op: Some(Op::Put(put_req(key, "v"))),
        };
        store
            .apply(&[ApplyEntry {
                index,
                command: Some(&cmd),
                stamp: None,
            }])
            .unwrap();
    };
    apply_put(1, "durable-1");
    apply_put(2, "durable-2");
    store.sync().unwrap();
    // These commit non-durably (the first apply after open may be durable, the rest are not
    // within 1 s), and the process aborts before anything forces them to disk.
    for i in 3..=10 {
        apply_put(i, &format!("volatile-{i}"));
    }
    println!("DURABLE_INDEX={}", store.durable_applied_index());
    std::process::abort();
}

#[test]
fn crash_rolls_back_to_last_durable_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CONCORD_STORAGE_CRASH_PATH", &path)
        .output()
        .unwrap();
    assert!(!output.status.success(), "the child must die by abort");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let durable: u64 = stdout
        .lines()
        .find_map(|l| l.split("DURABLE_INDEX=").nth(1))
        .unwrap_or_else(|| panic!("child printed no durable index: {stdout}"))
        .trim()
        .parse()
        .unwrap();
    assert!(durable >= 2, "sync() made at least index 2 durable");

    let store = MvccStore::open(&path).unwrap();
    let applied = store.applied_index();
    // A non-durable commit never reaches the on-disk header, so the store comes back exactly at
    // the last durable commit (10 only if the child was slow enough to hit the 1 s rule).
    assert_eq!(applied, durable, "store reopened at the last durable commit");
    eprintln!("crash test: recovered at applied index {applied} of 10");
    assert_eq!(store.current_revision(), applied as i64 + 1);
    let (all, _) = store.range(&range_bytes(b"\0", b"\0")).unwrap();
    assert_eq!(
        all.count as u64, applied,
        "one key per applied put, nothing more or less"
    );
    assert!(all.kvs.iter().any(|kv| kv.key == b"durable-2"));
    // Replaying the log from the recovered index brings it forward again.
    for index in (applied + 1)..=10 {
        let cmd = RaftCommand {
            op: Some(Op::Put(put_req(&format!("volatile-{index}"), "v"))),
        };
        store
            .apply(&[ApplyEntry {
                index,
                command: Some(&cmd),
                stamp: None,
            }])
            .unwrap();
    }
    assert_eq!(store.current_revision(), 11);
    assert_eq!(store.range(&range_bytes(b"\0", b"\0")).unwrap().0.count, 10);
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

#[test]
fn events_follow_revision_order() {
    let mut h = Harness::new();
    h.put("a", "1"); // 2
    h.put("b", "1"); // 3
    h.put("a", "2"); // 4
    h.delete("a", b"\0"); // 5: a, b
    let (events, rev) = h.store.events(3, 100, true).unwrap();
    assert_eq!(rev, 5);
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                EventType::try_from(e.r#type).unwrap(),
                String::from_utf8(kv.key.clone()).unwrap(),
                kv.mod_revision,
                e.prev_kv.as_ref().map(|p| p.mod_revision),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (EventType::Put, "b".into(), 3, None),
            (EventType::Put, "a".into(), 4, Some(2)),
            (EventType::Delete, "a".into(), 5, Some(4)),
            (EventType::Delete, "b".into(), 5, Some(3)),
        ]
    );
    assert_eq!(events[1].kv.as_ref().unwrap().version, 2);

    // A limit stops at a revision boundary and never splits a revision.
    let (events, _) = h.store.events(2, 3, false).unwrap();
    assert_eq!(events.len(), 3);
    assert!(events.iter().all(|e| e.prev_kv.is_none()));
    let (events, _) = h.store.events(2, 4, false).unwrap();
    assert_eq!(events.len(), 5, "revision 5's two deletions come together");
    let (events, _) = h.store.events(6, 4, false).unwrap();
    assert!(events.is_empty());

    h.compact(4).unwrap();
    assert_eq!(h.store.events(3, 10, false).unwrap_err(), KvError::Compacted);
    let (events, _) = h.store.events(4, 10, false).unwrap();
    assert_eq!(events.len(), 3, "changes at the compaction revision stay readable");
}
