//! Concord's `Shards` service (`concord shard ...`): the shards the keyspace is split into, each
//! a key range replicated by its own Raft group, and their placement.
//!
//! Today one shard (group 1) holds every key on every member, so `List` answers that shard and
//! `TransferLeader` moves its leadership; `Split` and `Move` answer `Unimplemented` until the
//! keyspace can be split (see `../shared/design/scaleout.md`). The epoch is TiKV's: its version
//! counts splits and merges, its conf_ver the replica changes made by `Move`; both are 1 until
//! those exist. Membership changes made with etcd's `member add/remove` change the one shard's
//! replicas without a `Move`, as they change every member's.

use std::sync::Arc;
use std::time::Duration;

use concord_proto::concordpb::shards_server::{Shards, ShardsServer};
use concord_proto::concordpb::{
    Shard, ShardEpoch, ShardListRequest, ShardListResponse, ShardMoveRequest, ShardMoveResponse, ShardSplitRequest,
    ShardSplitResponse, ShardTransferLeaderRequest, ShardTransferLeaderResponse,
};
use tonic::{Request, Response, Status};

use crate::context::MemberContext;
use crate::errors;
use crate::router::{Route, Shard as ShardRange};

/// How long TransferLeader waits for the new leader to take over (as MoveLeader).
const LEADER_TRANSFER_TIMEOUT: Duration = Duration::from_secs(5);

/// The `Shards` service of one member.
pub struct ShardService {
    ctx: Arc<MemberContext>,
}

impl ShardService {
    /// The service, ready to mount on the client port.
    pub fn server(ctx: Arc<MemberContext>) -> ShardsServer<Self> {
        ShardsServer::new(ShardService { ctx })
    }

    fn header(&self) -> Option<concord_proto::etcdserverpb::ResponseHeader> {
        Some(self.ctx.header(self.ctx.store.current_revision()))
    }

    /// A shard as this member sees it.
    fn describe(&self, range: &ShardRange) -> Shard {
        describe(&self.ctx, range)
    }

    /// The shard with group id `id`, which this member must hold.
    fn shard(&self, id: u64) -> Result<&ShardRange, Status> {
        match self.ctx.router.route(id) {
            Some(Route::Local(shard)) => Ok(shard),
            Some(Route::Remote(_)) => Err(errors::misrouted_shard(id)),
            None => Err(errors::shard_not_found(id)),
        }
    }

    async fn require_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.ctx.require_admin(request).await
    }
}

/// Every shard, as this member sees it: what `List` answers and the dashboard shows. Of a shard
/// held elsewhere it knows the range and the replicas only (leader 0, size and index 0).
pub fn describe_all(ctx: &MemberContext) -> Vec<Shard> {
    ctx.router
        .routes()
        .map(|route| match route {
            Route::Local(shard) => describe(ctx, shard),
            Route::Remote(remote) => Shard {
                id: remote.group_id,
                start: remote.start.clone(),
                end: remote.end.clone(),
                epoch: Some(ShardEpoch {
                    version: 1,
                    conf_ver: 1,
                }),
                replicas: remote.replicas.clone(),
                ..Default::default()
            },
        })
        .collect()
}

fn describe(_ctx: &MemberContext, range: &ShardRange) -> Shard {
    let status = range.group.status();
    let mut replicas: Vec<u64> = status.voters.iter().chain(&status.learners).copied().collect();
    replicas.sort_unstable();
    let mut learners = status.learners.clone();
    learners.sort_unstable();
    Shard {
        id: status.group_id,
        start: range.start.clone(),
        end: range.end.clone(),
        epoch: Some(ShardEpoch {
            version: 1,
            conf_ver: 1,
        }),
        replicas,
        leader: status.leader_id,
        db_size: i64::try_from(range.store.db_size()).unwrap_or(i64::MAX),
        applied_index: status.applied_index,
        learners,
    }
}

#[tonic::async_trait]
impl Shards for ShardService {
    /// Open to every client, as etcd's MemberList is.
    async fn list(&self, _request: Request<ShardListRequest>) -> Result<Response<ShardListResponse>, Status> {
        let shards = describe_all(&self.ctx);
        Ok(Response::new(ShardListResponse {
            header: self.header(),
            shards,
        }))
    }

    async fn split(&self, request: Request<ShardSplitRequest>) -> Result<Response<ShardSplitResponse>, Status> {
        self.require_admin(&request).await?;
        if request.get_ref().key.is_empty() {
            return Err(errors::split_needs_key());
        }
        Err(errors::split_unimplemented())
    }

    async fn r#move(&self, request: Request<ShardMoveRequest>) -> Result<Response<ShardMoveResponse>, Status> {
        self.require_admin(&request).await?;
        self.shard(request.get_ref().shard)?;
        Err(errors::move_unimplemented())
    }

    async fn transfer_leader(
        &self,
        request: Request<ShardTransferLeaderRequest>,
    ) -> Result<Response<ShardTransferLeaderResponse>, Status> {
        self.require_admin(&request).await?;
        let req = request.into_inner();
        let shard = self.shard(req.shard)?;
        let status = shard.group.status();
        if !status.voters.contains(&req.member) {
            return Err(errors::bad_leader_transferee());
        }
        if status.leader_id == 0 {
            return Err(errors::from_raft(concord_raft::RaftError::NoLeader));
        }
        if status.leader_id != req.member {
            // raft-rs forwards the request to the leader when this member follows.
            shard.group.transfer_leader(req.member).map_err(errors::from_raft)?;
            let mut leader = shard.group.watch_leader();
            let moved = tokio::time::timeout(LEADER_TRANSFER_TIMEOUT, leader.wait_for(|l| *l == req.member)).await;
            if !matches!(moved, Ok(Ok(_))) {
                return Err(errors::timeout_leader_transfer());
            }
        }
        Ok(Response::new(ShardTransferLeaderResponse {
            header: self.header(),
            shard: Some(self.describe(shard)),
        }))
    }
}
