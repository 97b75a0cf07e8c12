//! Leases in a keyspace split into shards. Deadlines and keep-alives stay with group 1 (the
//! lessor), but every shard's store keeps a copy of each lease, so that a put on any shard can
//! attach its key to one and apply checks the lease there, in that shard's log order:
//!
//! - a grant goes to group 1, then is copied to every other shard before it is answered (a
//!   split copies the leases to its new shard too), so a put after the grant finds the lease;
//! - a revoke is one write across every shard (`cross_shard_write.rs`), group 1 the primary: on
//!   each shard it deletes the lease's keys there and forgets the lease, all at one revision, so
//!   a put racing it is either deleted with the others or refused, as on one shard;
//! - TimeToLive's keys are gathered from every shard.

use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::shards_client::ShardsClient;
use concord_proto::concordpb::{shard_propose_response, PrepareCrossShard, ShardLeaseKeysRequest};
use concord_proto::etcdserverpb::{LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse};
use concord_storage::{KvError, WriteResult};
use tonic::{Request, Status};

use crate::auth::{Credentials, Sender};
use crate::context::MemberContext;
use crate::cross_shard_write::{self, Part};
use crate::errors;
use crate::router::{GroupHandle, Route, Shard};

/// Copies a lease granted in group 1 to every other shard. A shard that has it already (a split
/// copied it, or an earlier attempt) counts as done; shards made by a split while it ran are
/// copied to as well.
pub async fn copy_grant(ctx: &MemberContext, grant: &LeaseGrantRequest) -> Result<(), Status> {
    let first = ctx.router.default_group().group_id();
    let mut done = vec![first];
    loop {
        let version = ctx.router.version();
        let router = ctx.router.current();
        for route in router.routes() {
            if done.contains(&route.group_id()) {
                continue;
            }
            match route {
                Route::Local(shard) => {
                    grant_on_shard(ctx, &shard.group, *grant).await?;
                }
                Route::Remote(remote) => {
                    let op = Op::LeaseGrant(*grant);
                    let answer = cross_shard_write::propose_elsewhere(ctx, &Credentials::default(), remote, op).await?;
                    if !matches!(answer.result, Some(shard_propose_response::Result::LeaseGrant(_))) {
                        return Err(errors::unexpected_apply_result());
                    }
                }
            }
            done.push(route.group_id());
        }
        if ctx.router.version() == version {
            return Ok(());
        }
    }
}

/// Grants `grant` in `group`'s store, held here; done already when it is there.
pub async fn grant_on_shard(
    ctx: &MemberContext,
    group: &GroupHandle,
    grant: LeaseGrantRequest,
) -> Result<LeaseGrantResponse, Status> {
    let (id, ttl) = (grant.id, grant.ttl);
    match ctx.propose_write(group, &Sender::Member, Op::LeaseGrant(grant)).await {
        Ok(WriteResult::LeaseGrant(granted)) => Ok(granted),
        Ok(_) => Err(errors::unexpected_apply_result()),
        Err(status) if status.message() == KvError::LeaseExists.to_string() => Ok(LeaseGrantResponse {
            header: None,
            id,
            ttl,
            error: String::new(),
        }),
        Err(status) => Err(status),
    }
}

/// Revokes lease `id` on every shard at one revision, on behalf of `creds`.
pub async fn revoke(ctx: &MemberContext, creds: &Credentials, id: i64) -> Result<LeaseRevokeResponse, Status> {
    let plan = |ctx: &MemberContext| {
        let router = ctx.router.current();
        let first = ctx.router.default_group().group_id();
        // Group 1, which keeps the lease's deadline, decides.
        let mut groups: Vec<u64> = router.routes().map(|r| r.group_id()).filter(|g| *g != first).collect();
        groups.insert(0, first);
        groups
            .into_iter()
            .map(|group| Part {
                group,
                prepare: PrepareCrossShard {
                    lease_revoke: Some(LeaseRevokeRequest { id }),
                    ..Default::default()
                },
            })
            .collect()
    };
    let (_, revision) = cross_shard_write::write(ctx, creds, plan).await?;
    Ok(LeaseRevokeResponse {
        header: Some(ctx.header(revision)),
    })
}

/// The keys of `shard`, held here, attached to `lease`, read linearizably.
pub async fn shard_lease_keys(ctx: &MemberContext, shard: &Shard, lease: i64) -> Result<Vec<Vec<u8>>, Status> {
    ctx.read_point(&shard.group, false).await?;
    shard.store.lease_keys(lease).map_err(errors::from_kv)
}

/// The keys attached to `lease` on every shard, in key order.
pub async fn lease_keys_everywhere(ctx: &MemberContext, lease: i64) -> Result<Vec<Vec<u8>>, Status> {
    let router = ctx.router.current();
    let mut keys = Vec::new();
    for route in router.routes() {
        match route {
            Route::Local(shard) => keys.extend(shard_lease_keys(ctx, shard, lease).await?),
            Route::Remote(remote) => {
                let request = Request::new(ShardLeaseKeysRequest {
                    shard: remote.group_id,
                    lease,
                });
                let call = |mut client: ShardsClient<_>, r| async move { client.lease_keys(r).await };
                let member = Credentials::default();
                let answer =
                    crate::shards::forward_to_shard(ctx, remote, request, &member, ctx.request_timeout, call).await?;
                keys.extend(answer.into_inner().keys);
            }
        }
    }
    Ok(keys)
}
