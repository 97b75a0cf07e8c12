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

    /// Fills in the shards of `shards` this member does not hold from the lists of members that
    /// hold them.
    async fn describe_remote(&self, shards: &mut [Shard]) {
        let mut asked = std::collections::HashSet::new();
        for i in 0..shards.len() {
            let Some(Route::Remote(remote)) = self.ctx.router.route(shards[i].id) else {
                continue;
            };
            if shards[i].leader != 0 {
                continue;
            }
            for member in &remote.replicas {
                if !asked.insert(*member) {
                    continue;
                }
                let Some(theirs) = self.list_of(*member).await else {
                    continue;
                };
                for shard in shards.iter_mut().filter(|s| s.leader == 0) {
                    if let Some(seen) = theirs.iter().find(|t| t.id == shard.id && t.leader != 0) {
                        *shard = seen.clone();
                    }
                }
                break;
            }
        }
    }

    /// The shards as member `member` sees them, if it answers within the request timeout.
    async fn list_of(&self, member: u64) -> Option<Vec<Shard>> {
        let url = self.ctx.membership.member(member)?.client_ur_ls.first()?.clone();
        let channel = self.ctx.shard_channels.channel(&url, &self.ctx.client_dialer).ok()?;
        let mut request = Request::new(ShardListRequest {});
        crate::forward::mark_forwarded(&mut request);
        request.set_timeout(self.ctx.request_timeout);
        let mut client = concord_proto::concordpb::shards_client::ShardsClient::new(channel);
        Some(client.list(request).await.ok()?.into_inner().shards)
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
    /// A shard this member does not hold is described as a member holding it sees it (asked
    /// once per such member; the shard stays with its range and replicas only when none answers).
    async fn list(&self, request: Request<ShardListRequest>) -> Result<Response<ShardListResponse>, Status> {
        let mut shards = describe_all(&self.ctx);
        if !crate::forward::was_forwarded(&request) {
            self.describe_remote(&mut shards).await;
        }
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
