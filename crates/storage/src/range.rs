//! etcd's Range: revision checks, the key scan, filters, sorting, limit, `more` and `count`.
//!
//! The order of steps is etcd's, because it is observable:
//! 1. `count` is the number of keys live in the span at the revision, before filters and limit.
//! 2. When no sort order and no revision filter is given, only `limit + 1` keys are fetched (in
//!    key order); otherwise every key is fetched.
//! 3. Revision filters prune, then the fetched keys are sorted (a sort target other than KEY with
//!    order NONE sorts ascending), then truncated to `limit`, setting `more` if anything was cut.
//!
//! A Range runs in two phases: [`plan_range`] walks only the key index (counting, and choosing
//! the versions to fetch), [`finish_range`] reads those versions' rows. Outside apply, the store
//! releases the index lock between the two (see `MvccStore::range`).

use std::cmp::Ordering;

use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_proto::etcdserverpb::{RangeRequest, RangeResponse};
use concord_proto::mvccpb::KeyValue;

use crate::error::{KvError, OpError, StorageError};
use crate::index::{IndexRead, Rev};
use crate::keys::{KeySpan, Record};
use crate::view::{for_each_row, live_record, RowTable, View};

/// Resolves a request's `revision` field against a view at `view_rev` with compaction point
/// `compact_rev`, with etcd's checks: 0 (or negative) means the view's revision; above it is a
/// future revision; below the compaction point is gone (exactly at the compaction point is still
/// readable).
pub(crate) fn resolve_revision(view_rev: i64, compact_rev: i64, requested: i64) -> Result<i64, KvError> {
    if requested > view_rev {
        return Err(KvError::FutureRevision);
    }
    let rev = if requested <= 0 { view_rev } else { requested };
    if rev < compact_rev {
        return Err(KvError::Compacted);
    }
    Ok(rev)
}

/// The revision check etcd makes on a range inside a txn before executing it: 0 is always fine,
/// anything else must be neither above the current revision nor below the compaction point.
/// (Unlike [`resolve_revision`], a negative revision is not read as "current" here, as in etcd.)
pub(crate) fn check_txn_range_revision<I, T>(view: &View<'_, I, T>, requested: i64) -> Result<(), KvError> {
    if requested == 0 {
        Ok(())
    } else if requested > view.rev {
        Err(KvError::FutureRevision)
    } else if requested < view.compact_rev {
        Err(KvError::Compacted)
    } else {
        Ok(())
    }
}

/// Serves `req` from `view`. The response header is left `None`; the caller knows the revision
/// to report (`view.rev`).
pub(crate) fn execute_range<I: IndexRead, T: RowTable>(
    view: &View<'_, I, T>,
    req: &RangeRequest,
) -> Result<RangeResponse, OpError> {
    let plan = plan_range(view.index, view.rev, view.compact_rev, req)?;
    Ok(finish_range(view.rows, plan, req)?)
}

/// What the index phase of a Range decided: the count, and the versions whose rows make up the
/// answer, in key order.
pub(crate) struct RangePlan {
    count: i64,
    fetch: Vec<Rev>,
}

/// The index phase of `req` against an index at `view_rev` with compaction point
/// `compact_rev`: resolves the revision, counts the live keys, and picks the versions to fetch
/// (only `limit + 1` of them when nothing needs them all).
pub(crate) fn plan_range<I: IndexRead>(
    index: &I,
    view_rev: i64,
    compact_rev: i64,
    req: &RangeRequest,
) -> Result<RangePlan, KvError> {
    let rev = resolve_revision(view_rev, compact_rev, req.revision)?;
    let span = KeySpan::new(&req.key, &req.range_end);
    let requested_order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    // How many versions to fetch; `None` = all of them.
    let limit = if requested_order != SortOrder::None || filtered(req) || req.limit <= 0 {
        None
    } else {
        Some(req.limit as usize + 1)
    };
    let mut count: i64 = 0;
    let mut fetch = Vec::new();
    let walked: Result<(), std::convert::Infallible> = index.scan_live(span, rev, |_, version| {
        count += 1;
        if !req.count_only && limit.is_none_or(|n| fetch.len() < n) {
            fetch.push(version);
        }
        Ok(true)
    });
    let Ok(()) = walked;
    Ok(RangePlan { count, fetch })
}

/// The row phase of `req`: reads the planned versions from `rows`, then filters, sorts and
/// truncates. The response header is left `None`.
pub(crate) fn finish_range<T: RowTable>(
    rows: &T,
    plan: RangePlan,
    req: &RangeRequest,
) -> Result<RangeResponse, StorageError> {
    let requested_order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let order = match (requested_order, target) {
        (SortOrder::None, SortTarget::Key) | (SortOrder::Ascend, SortTarget::Key) => SortOrder::None,
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    let with_values = !req.keys_only || (order != SortOrder::None && target == SortTarget::Value);

    // Rows arrive in table order; each lands in its key's slot.
    let mut kvs: Vec<KeyValue> = Vec::new();
    kvs.resize_with(plan.fetch.len(), KeyValue::default);
    let mut passed = filtered(req).then(|| vec![false; plan.fetch.len()]);
    for_each_row(rows, &plan.fetch, |i, bytes| {
        let (key, record) = live_record(bytes)?;
        if let Some(passed) = passed.as_mut() {
            if !passes_filters(req, &record) {
                return Ok(());
            }
            passed[i] = true;
        }
        kvs[i] = record.to_key_value(key, with_values)?;
        Ok(())
    })?;
    if let Some(passed) = passed {
        let mut passed = passed.into_iter();
        kvs.retain(|_| passed.next().unwrap_or(false));
    }

    if order != SortOrder::None {
        let cmp = comparator(target);
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| cmp(b, a));
        } else {
            kvs.sort_by(cmp);
        }
    }
    let mut more = false;
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        more = true;
    }
    if req.keys_only && with_values {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    Ok(RangeResponse {
        header: None,
        kvs,
        more,
        count: plan.count,
    })
}

/// Whether `req` filters by create or mod revision.
fn filtered(req: &RangeRequest) -> bool {
    req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0
}

fn passes_filters(req: &RangeRequest, rec: &Record<'_>) -> bool {
    let h = &rec.header;
    !((req.max_mod_revision != 0 && h.mod_revision > req.max_mod_revision)
        || (req.min_mod_revision != 0 && h.mod_revision < req.min_mod_revision)
        || (req.max_create_revision != 0 && h.create_revision > req.max_create_revision)
        || (req.min_create_revision != 0 && h.create_revision < req.min_create_revision))
}

fn comparator(target: SortTarget) -> fn(&KeyValue, &KeyValue) -> Ordering {
    match target {
        SortTarget::Key => |a, b| a.key.cmp(&b.key),
        SortTarget::Version => |a, b| a.version.cmp(&b.version),
        SortTarget::Create => |a, b| a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => |a, b| a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => |a, b| a.value.cmp(&b.value),
    }
}
