//! etcd's DeleteRange over the keys of several shards: one part per shard, written at one
//! revision (`cross_shard_write.rs`), the parts' answers merged as etcd answers one delete.

use concord_proto::concordpb::PrepareCrossShard;
use concord_proto::etcdserverpb::{DeleteRangeRequest, DeleteRangeResponse};
use tonic::{Request, Response, Status};

use crate::auth::Credentials;
use crate::context::MemberContext;
use crate::cross_shard_write::{self, Part};

/// Deletes `request`'s range, which spans shards, at one revision.
pub async fn delete_range(
    ctx: &MemberContext,
    request: Request<DeleteRangeRequest>,
) -> Result<Response<DeleteRangeResponse>, Status> {
    let creds = Credentials::of(&request);
    let req = request.into_inner();
    let plan = |ctx: &MemberContext| {
        ctx.router
            .current()
            .parts_of_range(&req.key, &req.range_end)
            .into_iter()
            .map(|(route, key, range_end)| Part {
                group: route.group_id(),
                prepare: PrepareCrossShard {
                    delete_range: Some(DeleteRangeRequest {
                        key,
                        range_end,
                        prev_kv: req.prev_kv,
                    }),
                    ..Default::default()
                },
            })
            .collect()
    };
    let (outcomes, revision) = cross_shard_write::write(ctx, &creds, plan).await?;
    // The parts come in key order, so their previous values do too.
    let mut resp = DeleteRangeResponse {
        header: Some(ctx.header(revision)),
        ..Default::default()
    };
    for outcome in outcomes {
        let part = outcome.delete_range.unwrap_or_default();
        resp.deleted += part.deleted;
        resp.prev_kvs.extend(part.prev_kvs);
    }
    Ok(Response::new(resp))
}
