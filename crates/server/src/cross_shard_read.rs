//! A Range over keys of several shards, answered at one revision, consistent across them.
//!
//! The read takes one revision `R` from the oracle: above every revision handed out before the
//! read began, so above every write that completed before it. Each shard then serves its part of
//! the range at `R` after a read barrier of its own (`MemberContext::read_point`): the barrier's
//! stamp is above `R` (it was taken later), and a shard's log is in stamp order, so once the
//! barrier is applied every write of the shard at or below `R` is too, and none above `R` is read.
//! A shard whose store stands below `R` has no write between its revision and `R`, and is read as
//! it stands. Shards held elsewhere are read the same way by a member holding them, told `R` in
//! the [`READ_AT_HEADER`] of the forwarded call. The parts are merged as etcd orders one range:
//! in key order, or sorted by the asked target, then cut at `limit`; `count` adds up.
//!
//! Serializable reads across shards are served the same way, so linearizably: a replica alone
//! cannot tell how far each shard's other writes have come.

use std::cmp::Ordering;

use concord_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use concord_proto::etcdserverpb::{RangeRequest, RangeResponse};
use concord_proto::mvccpb::KeyValue;
use concord_storage::auth::perms;
use tonic::{Request, Response, Status};

use crate::auth::Credentials;
use crate::context::MemberContext;
use crate::errors;
use crate::router::{Route, Shard};
use crate::shard_forward::forward;

/// The metadata of a Range a member forwards as its part of a cross-shard read: the revision to
/// read at (the receiver reads at it, or as it stands when its store is below it).
pub const READ_AT_HEADER: &str = "concord-read-at";

/// Serves `request`, whose range spans shards.
pub async fn range(ctx: &MemberContext, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
    let creds = Credentials::of(&request);
    let req = request.into_inner();
    let first = ctx.router.default_group();
    let id = ctx
        .auth
        .authorize_read(&creds, first, &perms::range_needs(&req))
        .await?;
    let at = ctx
        .revisions
        .allocate(1)
        .await
        .map_err(|reason| errors::no_revisions(&reason))?;
    if req.revision > at {
        return Err(errors::from_kv(concord_storage::KvError::FutureRevision));
    }
    let read_at = if req.revision > 0 { req.revision } else { at };
    let mut resp = range_at(ctx, &req, read_at).await?;
    ctx.auth.check_unchanged(id.as_ref())?;
    resp.header = Some(ctx.header(read_at));
    Ok(Response::new(resp))
}

/// Reads `req`'s range, whatever shards it spans, at `read_at`, which the oracle handed out
/// (or a revision below one it did); the answer has no header.
pub async fn range_at(ctx: &MemberContext, req: &RangeRequest, read_at: i64) -> Result<RangeResponse, Status> {
    let key_sorted = by_key(req);
    let router = ctx.router.current();
    // The parts are read side by side: each waits on its own shard's barrier.
    let reads = router
        .parts_of_range(&req.key, &req.range_end)
        .into_iter()
        .map(|(route, key, range_end)| {
            let part = RangeRequest {
                key,
                range_end,
                // Each part needs no more than the limit when the merge keeps key order; any
                // other order needs every key to sort first.
                limit: if key_sorted { req.limit } else { 0 },
                revision: 0,
                ..req.clone()
            };
            read_routed(ctx, route, part, read_at)
        });
    let parts = futures::future::try_join_all(reads).await?;
    Ok(merge(req, parts))
}

/// One shard's part of a cross-shard read at `read_at`, here or from a member holding it.
async fn read_routed(
    ctx: &MemberContext,
    route: Route<'_>,
    part: RangeRequest,
    read_at: i64,
) -> Result<RangeResponse, Status> {
    match route {
        Route::Local(shard) => read_part(ctx, shard, part, read_at).await,
        Route::Remote(remote) => {
            let mut request = Request::new(part);
            request.metadata_mut().insert(READ_AT_HEADER, read_at.into());
            let range =
                |mut kv: concord_proto::etcdserverpb::kv_client::KvClient<_>, r| async move { kv.range(r).await };
            Ok(forward(ctx, remote, request, range).await?.into_inner())
        }
    }
}

/// Serves one shard's part of a cross-shard read at `read_at`, after the shard's read barrier;
/// `WrongShard` when a split moved some of its keys meanwhile.
pub async fn read_part(
    ctx: &MemberContext,
    shard: &Shard,
    mut part: RangeRequest,
    read_at: i64,
) -> Result<RangeResponse, Status> {
    ctx.read_point(&shard.group, false).await?;
    part.revision = read_at.min(shard.store.current_revision());
    let (resp, _) = shard.store.range(&part).map_err(errors::from_kv)?;
    if !shard.store.covers(&part.key, &part.range_end) {
        return Err(errors::wrong_shard());
    }
    Ok(resp)
}

/// The revision a forwarded part of a cross-shard read asks to be read at, if it is one.
pub fn read_at<T>(request: &Request<T>) -> Option<i64> {
    if !crate::forward::was_forwarded(request) {
        return None;
    }
    request.metadata().get(READ_AT_HEADER)?.to_str().ok()?.parse().ok()
}

/// Whether the answer is in key order (no sort, or sorted by key).
fn by_key(req: &RangeRequest) -> bool {
    req.sort_order() == SortOrder::None || req.sort_target() == SortTarget::Key
}

/// The parts' answers (in shard order) as one: etcd's order, cut at `limit`.
fn merge(req: &RangeRequest, parts: Vec<RangeResponse>) -> RangeResponse {
    let count = parts.iter().map(|p| p.count).sum();
    let more_in_parts = parts.iter().any(|p| p.more);
    let mut kvs: Vec<KeyValue> = if req.sort_order() == SortOrder::Descend && req.sort_target() == SortTarget::Key {
        parts.into_iter().rev().flat_map(|p| p.kvs).collect()
    } else {
        parts.into_iter().flat_map(|p| p.kvs).collect()
    };
    if !by_key(req) {
        let target = req.sort_target();
        kvs.sort_by(|a, b| compare(a, b, target));
        if req.sort_order() == SortOrder::Descend {
            kvs.reverse();
        }
    }
    let limit = usize::try_from(req.limit).unwrap_or(0);
    let mut more = more_in_parts;
    if limit > 0 && kvs.len() > limit {
        kvs.truncate(limit);
        more = true;
    }
    RangeResponse {
        header: None,
        kvs,
        more,
        count,
    }
}

/// Orders two keys by `target`, then by key.
fn compare(a: &KeyValue, b: &KeyValue, target: SortTarget) -> Ordering {
    let by_target = match target {
        SortTarget::Key => Ordering::Equal,
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    by_target.then_with(|| a.key.cmp(&b.key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, mod_revision: i64) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            mod_revision,
            ..Default::default()
        }
    }

    fn part(kvs: Vec<KeyValue>, count: i64, more: bool) -> RangeResponse {
        RangeResponse {
            header: None,
            kvs,
            more,
            count,
        }
    }

    fn keys(resp: &RangeResponse) -> Vec<&[u8]> {
        resp.kvs.iter().map(|kv| kv.key.as_slice()).collect()
    }

    #[test]
    fn parts_merge_in_key_order_and_are_cut_at_the_limit() {
        let req = RangeRequest {
            limit: 3,
            ..Default::default()
        };
        let parts = vec![
            part(vec![kv("a", 5), kv("b", 2)], 2, false),
            part(vec![kv("m", 9), kv("n", 1), kv("o", 3)], 4, true),
        ];
        let merged = merge(&req, parts);
        assert_eq!(keys(&merged), vec![&b"a"[..], b"b", b"m"]);
        assert_eq!((merged.count, merged.more), (6, true));

        let descending = RangeRequest {
            sort_order: SortOrder::Descend as i32,
            ..Default::default()
        };
        let parts = vec![
            part(vec![kv("b", 2), kv("a", 5)], 2, false),
            part(vec![kv("n", 1), kv("m", 9)], 2, false),
        ];
        let merged = merge(&descending, parts);
        assert_eq!(keys(&merged), vec![&b"n"[..], b"m", b"b", b"a"]);
        assert!(!merged.more);
    }

    #[test]
    fn other_orders_sort_every_part_together() {
        let req = RangeRequest {
            sort_order: SortOrder::Ascend as i32,
            sort_target: SortTarget::Mod as i32,
            limit: 2,
            ..Default::default()
        };
        let parts = vec![
            part(vec![kv("a", 5), kv("b", 2)], 2, false),
            part(vec![kv("m", 9), kv("n", 1)], 2, false),
        ];
        let merged = merge(&req, parts);
        assert_eq!(keys(&merged), vec![&b"n"[..], b"b"]);
        assert_eq!((merged.count, merged.more), (4, true));
    }
}
