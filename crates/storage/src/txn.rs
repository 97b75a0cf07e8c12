//! etcd's Txn: compares, branch selection, up-front checks, and execution with nested txns.
//!
//! Phases, as in etcd:
//! 1. **Path.** The compares of the txn, and of every nested txn on the chosen branches, are all
//!    evaluated against the state *before* the txn (nested compares do not see the txn's own
//!    writes). The outcome is a pre-order list of branch choices.
//! 2. **Checks.** Along that path, every put with `ignore_value`/`ignore_lease` must find its key,
//!    every put naming a lease must find the lease granted, and every range's revision must be
//!    servable, again against the state before the txn. A failure fails the whole txn before
//!    anything is written.
//! 3. **Execution.** Ops run in order; reads see the writes made earlier in the same txn. All
//!    writes of the txn share one main revision.

use std::cmp::Ordering;

use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcdserverpb::request_op::Request;
use concord_proto::etcdserverpb::response_op::Response;
use concord_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RequestOp, ResponseHeader, ResponseOp,
    TxnRequest, TxnResponse,
};
use concord_proto::mvccpb::KeyValue;

use crate::error::{KvError, OpError, StorageError};
use crate::index::{IndexRead, PendingIndex};
use crate::keys::{KeySpan, Record};
use crate::lease::NO_LEASE;
use crate::range::{check_txn_range_revision, execute_range};
use crate::view::{RowTable, View};
use crate::write::{header_at, RevisionsMut, Writer};

/// What a txn runs against: the batch writer when applying, or a read snapshot for read-only
/// txns served outside Raft.
pub(crate) trait TxnTarget {
    type Index: IndexRead;
    type Rows: RowTable;
    /// The state as the txn sees it now (its own earlier writes included).
    fn view(&self) -> View<'_, Self::Index, Self::Rows>;
    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, OpError>;
    fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, OpError>;
    /// Whether lease `id` is granted.
    fn lease_exists(&self, id: i64) -> Result<bool, OpError>;
}

impl<'t, 'i> TxnTarget for Writer<'t, 'i> {
    type Index = PendingIndex<'i>;
    type Rows = RevisionsMut<'t>;
    fn view(&self) -> View<'_, PendingIndex<'i>, RevisionsMut<'t>> {
        Writer::view(self)
    }
    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, OpError> {
        Writer::put(self, req)
    }
    fn delete_range(&mut self, req: &DeleteRangeRequest) -> Result<DeleteRangeResponse, OpError> {
        Writer::delete_range(self, req)
    }
    fn lease_exists(&self, id: i64) -> Result<bool, OpError> {
        Ok(Writer::lease_exists(self, id)?)
    }
}

/// A read snapshot as a txn target; only read-only txns may run on it.
pub(crate) struct ReadOnlyTarget<'v, I, T> {
    pub view: View<'v, I, T>,
}

impl<I: IndexRead, T: RowTable> TxnTarget for ReadOnlyTarget<'_, I, T> {
    type Index = I;
    type Rows = T;
    fn view(&self) -> View<'_, I, T> {
        View {
            index: self.view.index,
            rows: self.view.rows,
            rev: self.view.rev,
            compact_rev: self.view.compact_rev,
        }
    }
    fn put(&mut self, _: &PutRequest) -> Result<PutResponse, OpError> {
        Err(KvError::Internal("write in a read-only txn".into()).into())
    }
    fn delete_range(&mut self, _: &DeleteRangeRequest) -> Result<DeleteRangeResponse, OpError> {
        Err(KvError::Internal("write in a read-only txn".into()).into())
    }
    // Only the checks of a put ask, and a read-only txn has no put.
    fn lease_exists(&self, _: i64) -> Result<bool, OpError> {
        Err(KvError::Internal("lease lookup in a read-only txn".into()).into())
    }
}

/// True when no branch of `txn`, at any depth, contains a put or a delete: such a txn never
/// changes the store and etcd serves it without going through Raft.
pub fn is_txn_read_only(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(txn.failure.iter())
        .all(|op| match &op.request {
            Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => false,
            Some(Request::RequestTxn(inner)) => is_txn_read_only(inner),
            Some(Request::RequestRange(_)) | None => true,
        })
}

/// Runs `req` against `target`. The top-level response header is left `None` (the caller knows
/// the revision after the txn); nested responses carry etcd's headers (see [`execute`]).
pub(crate) fn run_txn<T: TxnTarget>(target: &mut T, req: &TxnRequest) -> Result<TxnResponse, OpError> {
    let mut path = Vec::new();
    {
        let view = target.view();
        choose_path(&view, req, &mut path)?;
        check_path(&*target, &view, req, &path, &mut 0)?;
    }
    let mut resp = execute(target, req, &path, &mut 0)?;
    resp.header = None;
    Ok(resp)
}

fn branch(req: &TxnRequest, succeeded: bool) -> &[RequestOp] {
    if succeeded {
        &req.success
    } else {
        &req.failure
    }
}

/// Phase 1: appends the branch choice of `req` and of its nested txns, in pre-order.
fn choose_path<I: IndexRead, T: RowTable>(
    view: &View<'_, I, T>,
    req: &TxnRequest,
    path: &mut Vec<bool>,
) -> Result<(), StorageError> {
    let mut succeeded = true;
    for cmp in &req.compare {
        if !compare_holds(view, cmp)? {
            succeeded = false;
            break;
        }
    }
    path.push(succeeded);
    for op in branch(req, succeeded) {
        if let Some(Request::RequestTxn(inner)) = &op.request {
            choose_path(view, inner, path)?;
        }
    }
    Ok(())
}

/// Phase 2: the checks etcd makes before executing; `cursor` walks `path`. For a put, the key
/// check comes before the lease check, as in etcd.
fn check_path<T: TxnTarget>(
    target: &T,
    view: &View<'_, T::Index, T::Rows>,
    req: &TxnRequest,
    path: &[bool],
    cursor: &mut usize,
) -> Result<(), OpError> {
    let succeeded = path[*cursor];
    *cursor += 1;
    for op in branch(req, succeeded) {
        match &op.request {
            Some(Request::RequestTxn(inner)) => check_path(target, view, inner, path, cursor)?,
            Some(Request::RequestPut(put)) => {
                if (put.ignore_value || put.ignore_lease) && !view.exists(&put.key) {
                    return Err(KvError::KeyNotFound.into());
                }
                if put.lease != NO_LEASE && !target.lease_exists(put.lease)? {
                    return Err(KvError::LeaseNotFound.into());
                }
            }
            Some(Request::RequestRange(range)) => check_txn_range_revision(view, range.revision)?,
            _ => {}
        }
    }
    Ok(())
}

/// Phase 3: executes the chosen branch of `req`. Responses mirror etcd's: range, put and delete
/// responses carry a header with the revision they observed or wrote, a nested txn's response
/// carries an empty header.
fn execute<T: TxnTarget>(
    target: &mut T,
    req: &TxnRequest,
    path: &[bool],
    cursor: &mut usize,
) -> Result<TxnResponse, OpError> {
    let succeeded = path[*cursor];
    *cursor += 1;
    let ops = branch(req, succeeded);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(Request::RequestRange(range)) => {
                let view = target.view();
                let mut resp = execute_range(&view, range).map_err(after_checks)?;
                resp.header = Some(header_at(view.rev));
                Some(Response::ResponseRange(resp))
            }
            Some(Request::RequestPut(put)) => match target.put(put) {
                Ok(resp) => Some(Response::ResponsePut(resp)),
                // Only reachable when an earlier op of this txn deleted the key, which etcd's
                // request validation rejects as a duplicate key (a txn cannot revoke a lease, so
                // the lease check still holds). etcd would crash here; the store skips the put
                // instead so the outcome stays deterministic.
                Err(OpError::Kv(err)) => {
                    tracing::warn!(key = ?put.key, %err, "put skipped inside txn after checks");
                    Some(Response::ResponsePut(PutResponse::default()))
                }
                Err(err) => return Err(err),
            },
            Some(Request::RequestDeleteRange(del)) => Some(Response::ResponseDeleteRange(
                target.delete_range(del).map_err(after_checks)?,
            )),
            Some(Request::RequestTxn(inner)) => Some(Response::ResponseTxn(execute(target, inner, path, cursor)?)),
            None => None,
        };
        responses.push(ResponseOp { response });
    }
    Ok(TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded,
        responses,
    })
}

/// Maps an error that the checks should have ruled out. Writes of the txn may already be in the
/// batch, so it cannot be reported as a clean per-command error: the batch is abandoned.
fn after_checks(err: OpError) -> OpError {
    match err {
        OpError::Kv(err) => OpError::Storage(StorageError::Corrupt(format!(
            "txn op failed after its checks passed: {err}"
        ))),
        other => other,
    }
}

/// Evaluates one compare at the view's revision. Over a range, every live key must satisfy it;
/// an empty range compares a zero key-value, except that a VALUE compare on no key is false.
fn compare_holds<I: IndexRead, T: RowTable>(view: &View<'_, I, T>, cmp: &Compare) -> Result<bool, StorageError> {
    let mut seen = false;
    let mut holds = true;
    view.scan(KeySpan::new(&cmp.key, &cmp.range_end), view.rev, |_, rec| {
        seen = true;
        holds = compare_record(cmp, Some(&rec))?;
        Ok(holds)
    })?;
    if !seen {
        if CompareTarget::try_from(cmp.target) == Ok(CompareTarget::Value) {
            return Ok(false);
        }
        return compare_record(cmp, None);
    }
    Ok(holds)
}

/// Compares one stored key-value (`None` = the zero key-value) against `cmp`.
fn compare_record(cmp: &Compare, rec: Option<&Record<'_>>) -> Result<bool, StorageError> {
    let compared = match rec {
        None => None,
        Some(r) => Some(Compared {
            // Only a VALUE compare opens the value (it may be sealed).
            value: match CompareTarget::try_from(cmp.target) {
                Ok(CompareTarget::Value) => r.value()?,
                _ => std::borrow::Cow::Borrowed(&[][..]),
            },
            version: r.header.version,
            create_revision: r.header.create_revision,
            mod_revision: r.header.mod_revision,
            lease: r.header.lease,
        }),
    };
    Ok(compare_fields(cmp, compared.as_ref()))
}

/// Whether `cmp` holds over `kvs`, the live keys of its range at one revision, however they were
/// read (a compare over keys of several shards reads them from each): every key must satisfy
/// it; no key compares a zero key-value, except that a VALUE compare on no key is false.
pub fn compare_holds_over(cmp: &Compare, kvs: &[KeyValue]) -> bool {
    if kvs.is_empty() {
        return CompareTarget::try_from(cmp.target) != Ok(CompareTarget::Value) && compare_fields(cmp, None);
    }
    kvs.iter().all(|kv| {
        let compared = Compared {
            value: std::borrow::Cow::Borrowed(&kv.value),
            version: kv.version,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            lease: kv.lease,
        };
        compare_fields(cmp, Some(&compared))
    })
}

/// What a compare looks at in one key-value.
struct Compared<'a> {
    value: std::borrow::Cow<'a, [u8]>,
    version: i64,
    create_revision: i64,
    mod_revision: i64,
    lease: i64,
}

/// Compares one key-value (`None` = the zero key-value) against `cmp`. Unknown targets compare
/// equal and unknown results hold, as in etcd.
fn compare_fields(cmp: &Compare, kv: Option<&Compared<'_>>) -> bool {
    let field = |get: fn(&Compared<'_>) -> i64| kv.map_or(0, get);
    let int_target = |want: fn(&TargetUnion) -> Option<i64>| cmp.target_union.as_ref().and_then(want).unwrap_or(0);
    let ordering = match CompareTarget::try_from(cmp.target) {
        Ok(CompareTarget::Value) => {
            let want: &[u8] = match &cmp.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.map_or(&[][..], |kv| kv.value.as_ref()).cmp(want)
        }
        Ok(CompareTarget::Version) => field(|kv| kv.version).cmp(&int_target(|t| match t {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Create) => field(|kv| kv.create_revision).cmp(&int_target(|t| match t {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => field(|kv| kv.mod_revision).cmp(&int_target(|t| match t {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => field(|kv| kv.lease).cmp(&int_target(|t| match t {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(cmp.result) {
        Ok(CompareResult::Equal) => ordering == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ordering != Ordering::Equal,
        Ok(CompareResult::Greater) => ordering == Ordering::Greater,
        Ok(CompareResult::Less) => ordering == Ordering::Less,
        Err(_) => true,
    }
}
