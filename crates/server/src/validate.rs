//! etcd's checks on KV requests, made before anything is proposed, so a bad
//! request costs no Raft round and gets etcd's error.

use std::collections::{BTreeMap, HashSet};

use concord_proto::etcdserverpb::request_op::Request;
use concord_proto::etcdserverpb::{range_request, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest};
use tonic::Status;

use crate::errors;

/// Checks a Range: a key is required and the sort options must be known.
pub fn check_range(r: &RangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    if range_request::SortOrder::try_from(r.sort_order).is_err()
        || range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(errors::invalid_sort_option());
    }
    Ok(())
}

/// Checks a Put: a key is required; `ignore_value`/`ignore_lease` exclude a value/lease.
pub fn check_put(r: &PutRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(errors::value_provided());
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(errors::lease_provided());
    }
    Ok(())
}

/// Checks a DeleteRange: a key is required.
pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    Ok(())
}

/// How deeply txns may nest, the outermost counting as 1.
///
/// etcd sets no limit of its own. Concord needs one because every member must decode the txn again
/// from the Raft log, where it sits two or three messages deeper (inside the `RaftCommand` and
/// its sender's envelope), and prost refuses messages nested more than 100 deep: a txn that the
/// edge could decode but the log could not would stop apply. prost's limit stays (lifting it
/// would let a 1.5 MiB request of empty nested messages overflow a decoder's stack), and this
/// one is set well inside it, so the log always decodes what validation lets through, with room
/// for more envelopes later (`deepest_allowed_txn_decodes_from_the_log` checks the margin).
/// No client nests txns more than a few deep.
pub const MAX_TXN_DEPTH: usize = 32;

/// Checks a Txn: nested at most `max_depth` deep (normally [`MAX_TXN_DEPTH`]), at most
/// `max_ops` compares or operations in a branch, every operation valid, and no key written twice
/// in one branch.
pub fn check_txn(r: &TxnRequest, max_ops: usize, max_depth: usize) -> Result<(), Status> {
    check_txn_ops(r, max_ops, max_depth, 1)?;
    key_writes(&r.success)?;
    key_writes(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_ops: usize, max_depth: usize, depth: usize) -> Result<(), Status> {
    if depth > max_depth {
        return Err(errors::txn_too_deep());
    }
    let widest = r.compare.len().max(r.success.len()).max(r.failure.len());
    if widest > max_ops {
        return Err(errors::too_many_ops());
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(errors::empty_key());
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(Request::RequestRange(q)) => check_range(q)?,
            Some(Request::RequestPut(q)) => check_put(q)?,
            Some(Request::RequestDeleteRange(q)) => check_delete(q)?,
            Some(Request::RequestTxn(q)) => check_txn_ops(q, max_ops, max_depth, depth + 1)?,
            None => {}
        }
    }
    Ok(())
}

/// The keys a branch deletes: the union of its deleted keys and ranges, kept as disjoint
/// `[start, end)` intervals by start (an end of `None`: to the end of the keyspace), so asking
/// whether a key is deleted is one lookup however many deletes a txn holds. A txn may hold
/// thousands (128 per branch, times its nested txns), and every put is checked against them.
#[derive(Default)]
struct DeletedKeys {
    by_start: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl DeletedKeys {
    /// Adds a DeleteRange's keys: one key when `range_end` is empty, to the end of the
    /// keyspace when it is `[0]`, else `[key, range_end)`, which is empty when `range_end` does
    /// not sort after `key`.
    fn add_request(&mut self, key: &[u8], range_end: &[u8]) {
        let end = match range_end {
            [] => Some([key, &[0]].concat()),
            [0] => None,
            end => Some(end.to_vec()),
        };
        self.add(key.to_vec(), end);
    }

    /// Adds `[start, end)`, merging it with every interval it overlaps or touches.
    fn add(&mut self, mut start: Vec<u8>, mut end: Option<Vec<u8>>) {
        if end.as_ref().is_some_and(|e| *e <= start) {
            return;
        }
        if let Some((before, before_end)) = self.by_start.range(..=start.clone()).next_back() {
            if before_end.as_ref().is_none_or(|e| *e >= start) {
                start = before.clone();
                end = wider_end(end, before_end.clone());
            }
        }
        let touched: Vec<Vec<u8>> = match &end {
            Some(e) => self
                .by_start
                .range(start.clone()..=e.clone())
                .map(|(s, _)| s.clone())
                .collect(),
            None => self.by_start.range(start.clone()..).map(|(s, _)| s.clone()).collect(),
        };
        for s in touched {
            if let Some(e) = self.by_start.remove(&s) {
                end = wider_end(end, e);
            }
        }
        self.by_start.insert(start, end);
    }

    fn covers(&self, key: &[u8]) -> bool {
        self.by_start
            .range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(key)))
            .next_back()
            .is_some_and(|(_, end)| end.as_deref().is_none_or(|e| key < e))
    }

    fn extend(&mut self, other: DeletedKeys) {
        for (start, end) in other.by_start {
            self.add(start, end);
        }
    }
}

/// The later of two interval ends, `None` (the end of the keyspace) being the latest.
fn wider_end(a: Option<Vec<u8>>, b: Option<Vec<u8>>) -> Option<Vec<u8>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    }
}

/// Collects the keys put and the keys deleted by one branch (and the branches nested in it),
/// failing when a key would be written twice. The two branches of a nested txn are
/// alternatives, so a key put in both is not a duplicate.
fn key_writes(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, DeletedKeys), Status> {
    let mut deleted = DeletedKeys::default();
    for op in ops {
        if let Some(Request::RequestDeleteRange(d)) = &op.request {
            deleted.add_request(&d.key, &d.range_end);
        }
    }
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = key_writes(&nested.success)?;
        let (puts_else, dels_else) = key_writes(&nested.failure)?;
        for key in puts_then.iter() {
            if puts.contains(key) || deleted.covers(key) {
                return Err(errors::duplicate_key());
            }
            puts.insert(key.clone());
        }
        for key in puts_else {
            let clash = puts.contains(&key) && !puts_then.contains(&key);
            if clash || deleted.covers(&key) {
                return Err(errors::duplicate_key());
            }
            puts.insert(key);
        }
        deleted.extend(dels_then);
        deleted.extend(dels_else);
    }
    for op in ops {
        let Some(Request::RequestPut(put)) = &op.request else {
            continue;
        };
        if puts.contains(&put.key) || deleted.covers(&put.key) {
            return Err(errors::duplicate_key());
        }
        puts.insert(put.key.clone());
    }
    Ok((puts, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.into(),
                ..Default::default()
            })),
        }
    }

    fn del(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_puts_in_one_branch_are_refused() {
        let t = txn(vec![put("a"), put("a")], vec![]);
        assert_eq!(
            check_txn(&t, 128, MAX_TXN_DEPTH).unwrap_err().message(),
            "etcdserver: duplicate key given in txn request"
        );
        assert!(check_txn(&txn(vec![put("a")], vec![put("a")]), 128, MAX_TXN_DEPTH).is_ok());
    }

    #[test]
    fn put_inside_a_deleted_range_is_refused() {
        assert!(check_txn(&txn(vec![del("a", "c"), put("b")], vec![]), 128, MAX_TXN_DEPTH).is_err());
        assert!(check_txn(&txn(vec![del("a", "c"), put("c")], vec![]), 128, MAX_TXN_DEPTH).is_ok());
        assert!(check_txn(&txn(vec![del("a", "\0"), put("zzz")], vec![]), 128, MAX_TXN_DEPTH).is_err());
    }

    #[test]
    fn nested_branches_are_alternatives() {
        let nested = RequestOp {
            request: Some(Request::RequestTxn(txn(vec![put("k")], vec![put("k")]))),
        };
        assert!(check_txn(&txn(vec![nested.clone()], vec![]), 128, MAX_TXN_DEPTH).is_ok());
        assert!(check_txn(&txn(vec![nested, put("k")], vec![]), 128, MAX_TXN_DEPTH).is_err());
    }

    /// A txn of `depth` levels, the innermost holding a put and a compare.
    fn nested(depth: usize) -> TxnRequest {
        let mut inner = txn(vec![put("deep")], vec![]);
        inner.compare.push(concord_proto::etcdserverpb::Compare {
            key: b"deep".to_vec(),
            ..Default::default()
        });
        for _ in 1..depth {
            inner = txn(
                vec![RequestOp {
                    request: Some(Request::RequestTxn(inner)),
                }],
                vec![],
            );
        }
        inner
    }

    #[test]
    fn txns_nested_past_the_limit_are_refused() {
        assert!(check_txn(&nested(MAX_TXN_DEPTH), 128, MAX_TXN_DEPTH).is_ok());
        for depth in [MAX_TXN_DEPTH + 1, 49, 50, 200] {
            let refused = check_txn(&nested(depth), 128, MAX_TXN_DEPTH).unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "depth {depth}");
            assert_eq!(refused.message(), errors::txn_too_deep().message());
        }
    }

    /// What validation lets through must decode again from the log, inside the deepest wrapping
    /// a command gets there (the sender's envelope), with room to spare for more wrapping.
    #[test]
    fn deepest_allowed_txn_decodes_from_the_log() {
        use concord_proto::concordpb::{raft_command::Op, Authorized, RaftCommand, Requester};
        use prost::Message as _;
        let wrap = |depth: usize, extra_envelopes: usize| {
            let mut command = RaftCommand {
                op: Some(Op::Txn(nested(depth))),
            };
            for _ in 0..=extra_envelopes {
                command = RaftCommand {
                    op: Some(Op::Authorized(Box::new(Authorized {
                        requester: Some(Requester::default()),
                        command: Some(Box::new(command)),
                    }))),
                };
            }
            command.encode_to_vec()
        };
        // Four more envelopes (eight message levels) than today's one still decode ...
        let logged = wrap(MAX_TXN_DEPTH, 4);
        assert!(RaftCommand::decode(logged.as_slice()).is_ok());
        // ... and the check is real: prost refuses a txn nested as deep as the edge admits.
        assert!(RaftCommand::decode(wrap(50, 0).as_slice()).is_err());
    }

    #[test]
    fn deleted_keys_merge_into_disjoint_intervals() {
        let mut d = DeletedKeys::default();
        d.add_request(b"b", b"d");
        d.add_request(b"f", b"");
        d.add_request(b"x", b"a"); // an empty range deletes nothing
        assert!(!d.covers(b"a") && d.covers(b"b") && d.covers(b"c") && !d.covers(b"d"));
        assert!(d.covers(b"f") && !d.covers(b"f\0") && !d.covers(b"x"));
        d.add_request(b"c", b"f"); // bridges [b, d) and {f}
        assert_eq!(d.by_start.len(), 1);
        assert!(d.covers(b"e") && d.covers(b"f") && !d.covers(b"g"));
        d.add_request(b"a", b"\0");
        assert_eq!(d.by_start.len(), 1);
        assert!(d.covers(b"a") && d.covers(b"zzz") && !d.covers(b"\0"));
    }

    /// Thousands of deletes and puts in one txn (nested txns multiply the per-branch limit) are
    /// checked in about as many steps, not in their product.
    #[test]
    fn many_deletes_and_puts_are_checked_quickly() {
        let deletes: Vec<RequestOp> = (0..128)
            .map(|i| del(&format!("d{i:03}"), &format!("d{i:03}~")))
            .collect();
        let puts: Vec<RequestOp> = (0..128).map(|i| put(&format!("p{i:03}"))).collect();
        let nest = |ops: Vec<RequestOp>| RequestOp {
            request: Some(Request::RequestTxn(txn(ops, vec![]))),
        };
        let mut ops: Vec<RequestOp> = (0..64).map(|_| nest(deletes.clone())).collect();
        ops.extend((0..64).map(|i| {
            let renamed = puts.iter().map(|p| match &p.request {
                Some(Request::RequestPut(q)) => put(&format!("{}-{i}", String::from_utf8_lossy(&q.key))),
                _ => unreachable!(),
            });
            nest(renamed.collect())
        }));
        assert!(check_txn(&txn(ops.clone(), vec![]), 128, MAX_TXN_DEPTH).is_ok());
        ops.push(nest(vec![put("d050x")]));
        assert!(
            check_txn(&txn(ops, vec![]), 129, MAX_TXN_DEPTH).is_err(),
            "d050x is deleted"
        );
    }

    #[test]
    fn too_many_ops_and_empty_keys() {
        let many: Vec<RequestOp> = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(
            check_txn(&txn(many, vec![]), 128, MAX_TXN_DEPTH).unwrap_err().message(),
            "etcdserver: too many operations in txn request"
        );
        assert_eq!(
            check_put(&PutRequest::default()).unwrap_err().message(),
            "etcdserver: key is not provided"
        );
        let bad_sort = RangeRequest {
            key: b"a".to_vec(),
            sort_order: 9,
            ..Default::default()
        };
        assert_eq!(
            check_range(&bad_sort).unwrap_err().message(),
            "etcdserver: invalid sort option"
        );
    }
}
