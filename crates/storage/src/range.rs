//! etcd's Range: revision checks, the key scan, filters, sorting, limit, `more` and `count`.
//!
//! The order of steps is etcd's, because it is observable:
//! 1. `count` is the number of keys live in the span at the revision, before filters and limit.
//! 2. When no sort order and no revision filter is given, only `limit + 1` keys are fetched (in
//!    key order); otherwise every key is fetched.
//! 3. Revision filters prune, then the fetched keys are sorted (a sort target other than KEY with
//!    order NONE sorts ascending), then truncated to `limit`, setting `more` if anything was cut.

use std::cmp::Ordering;

use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_proto::etcdserverpb::{RangeRequest, RangeResponse};
use concord_proto::mvccpb::KeyValue;

use crate::error::{KvError, OpError};
use crate::keys::{KeySpan, Record};
use crate::view::{HistoryTable, LatestTable, View};

/// Resolves a request's `revision` field against `view`, with etcd's checks: 0 (or negative)
/// means the view's revision; above it is a future revision; below the compaction point is gone
/// (exactly at the compaction point is still readable).
pub(crate) fn resolve_revision<L, H>(
    view: &View<'_, L, H>,
    requested: i64,
) -> Result<i64, KvError> {
    if requested > view.rev {
        return Err(KvError::FutureRevision);
    }
    let rev = if requested <= 0 { view.rev } else { requested };
    if rev < view.compact_rev {
        return Err(KvError::Compacted);
    }
    Ok(rev)
}

/// The revision check etcd makes on a range inside a txn before executing it: 0 is always fine,
/// anything else must be neither above the current revision nor below the compaction point.
/// (Unlike [`resolve_revision`], a negative revision is not read as "current" here, as in etcd.)
pub(crate) fn check_txn_range_revision<L, H>(
    view: &View<'_, L, H>,
    requested: i64,
) -> Result<(), KvError> {
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
pub(crate) fn execute_range<L: LatestTable, H: HistoryTable>(
    view: &View<'_, L, H>,
    req: &RangeRequest,
) -> Result<RangeResponse, OpError> {
    let rev = resolve_revision(view, req.revision)?;
    let span = KeySpan::new(&req.key, &req.range_end);

    let requested_order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    // How many keys to materialise; `None` = all of them.
    let fetch = if requested_order != SortOrder::None || filtered || req.limit <= 0 {
        None
    } else {
        Some(req.limit as usize + 1)
    };
    let order = match (requested_order, target) {
        (SortOrder::None, SortTarget::Key) | (SortOrder::Ascend, SortTarget::Key) => {
            SortOrder::None
        }
        (SortOrder::None, _) => SortOrder::Ascend,
        (order, _) => order,
    };
    let with_values = !req.keys_only || (order != SortOrder::None && target == SortTarget::Value);

    let mut count: i64 = 0;
    let mut kvs: Vec<KeyValue> = Vec::new();
    view.scan(span, rev, |key, rec| {
        count += 1;
        if req.count_only || fetch.is_some_and(|n| kvs.len() >= n) || !passes_filters(req, &rec) {
            return Ok(true);
        }
        kvs.push(rec.to_key_value(key, with_values)?);
        Ok(true)
    })?;

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
        count,
    })
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
