//! Concord's `Shards` service (`concord shard ...`): the shards the keyspace is split into, each
//! a key range replicated by its own Raft group, and their placement.
//!
//! `List` answers every shard; in multi-shard mode `Split` splits one online (the new shard on
//! the same members, then placed where replicas are fewest) and `Move` moves a shard's replicas
//! (`shard_move.rs`; not the first shard's, refused with a message: its replicas are the
//! cluster's members); `TransferLeader` moves a shard's leadership. The epoch is TiKV's: its
//! version counts the shard's splits; its conf_ver stays 1 (moves do not count yet).
//! Membership changes made with etcd's `member add/remove` change group 1's replicas without a
//! `Move`, as they change every member's.

use std::sync::Arc;
use std::time::Duration;

use concord_proto::concordpb::shards_client::ShardsClient;
use concord_proto::concordpb::shards_server::{Shards, ShardsServer};
use concord_proto::concordpb::{
    Shard, ShardCompactRequest, ShardCompactResponse, ShardEpoch, ShardEventsRequest, ShardEventsResponse,
    ShardListRequest, ShardListResponse, ShardMoveRequest, ShardMoveResponse, ShardSplitRequest, ShardSplitResponse,
    ShardTransferLeaderRequest, ShardTransferLeaderResponse,
};
use tonic::{Request, Response, Status};

use crate::context::MemberContext;
use crate::errors;
use crate::router::{RemoteShard, Route, Shard as ShardRange};
use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::{
    shard_propose_response, AllocateShardId, RecordShard, ShardHashRequest, ShardHashResponse, ShardLeaseKeysRequest,
    ShardLeaseKeysResponse, ShardProposeRequest, ShardProposeResponse, SplitShard,
};
use concord_storage::WriteResult;

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
    fn shard(&self, id: u64) -> Result<ShardRange, Status> {
        match self.ctx.router.current().route(id) {
            Some(Route::Local(shard)) => Ok(shard.clone()),
            Some(Route::Remote(_)) => Err(errors::misrouted_shard(id)),
            None => Err(errors::shard_not_found(id)),
        }
    }

    async fn require_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.ctx.require_admin(request).await
    }

    /// The replica of `shard` that leads the fewest shards, as far as this member can tell,
    /// preferring any other over `shard`'s own leader: the split's new shard is led by it.
    async fn least_leading(&self, shard: &ShardRange) -> u64 {
        let mut shards = describe_all(&self.ctx);
        self.describe_remote(&mut shards).await;
        let led = |member: u64| shards.iter().filter(|s| s.leader == member).count();
        let current = shard.group.leader_id();
        let status = shard.group.status();
        status
            .voters
            .into_iter()
            .min_by_key(|m| (led(*m), *m == current, *m))
            .unwrap_or(0)
    }

    /// Fills in the shards of `shards` this member does not hold from the lists of members that
    /// hold them.
    async fn describe_remote(&self, shards: &mut [Shard]) {
        let mut asked = std::collections::HashSet::new();
        for i in 0..shards.len() {
            let router = self.ctx.router.current();
            let Some(Route::Remote(remote)) = router.route(shards[i].id) else {
                continue;
            };
            if shards[i].leader != 0 {
                continue;
            }
            for member in &remote.replicas {
                if !asked.insert(*member) {
                    continue;
                }
                let Some(theirs) = list_of(&self.ctx, *member).await else {
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
}

/// Sends `request` about a shard this member holds no replica of to a member that holds one,
/// with the caller's `creds`, by `call` on a `Shards` client of its client URL, waiting
/// `timeout` for it. Replicas are tried in turn while they cannot be reached.
pub async fn forward_to_shard<Req, Resp, F, Fut>(
    ctx: &MemberContext,
    remote: &RemoteShard,
    request: Request<Req>,
    creds: &crate::auth::Credentials,
    timeout: Duration,
    call: F,
) -> Result<Response<Resp>, Status>
where
    Req: Clone,
    F: Fn(ShardsClient<tonic::transport::Channel>, Request<Req>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
{
    if crate::forward::was_forwarded(&request) {
        return Err(errors::misrouted_shard(remote.group_id));
    }
    let mut unreachable = None;
    for member in &remote.replicas {
        if *member == ctx.membership.local_id() {
            // A replica this member is about to hold (it has not applied the change yet).
            continue;
        }
        let Some(channel) = channel_to(ctx, *member)? else {
            continue;
        };
        let mut forwarded = Request::new(request.get_ref().clone());
        crate::forward::mark_forwarded(&mut forwarded);
        creds.attach(&mut forwarded);
        forwarded.set_timeout(timeout);
        match call(ShardsClient::new(channel), forwarded).await {
            Err(status) if status.code() == tonic::Code::Unavailable => unreachable = Some(status),
            answer => return answer,
        }
    }
    Err(unreachable.unwrap_or_else(|| errors::no_replica_reachable(remote.group_id)))
}

/// A channel to `member`'s client URL; `None` when it has none.
fn channel_to(ctx: &MemberContext, member: u64) -> Result<Option<tonic::transport::Channel>, Status> {
    let Some(url) = ctx
        .membership
        .member(member)
        .and_then(|m| m.client_ur_ls.first().cloned())
    else {
        return Ok(None);
    };
    ctx.shard_channels.channel(&url, &ctx.client_dialer).map(Some)
}

/// The shards `member` lists, as it sees them itself (the call is marked forwarded, so it asks
/// nobody else); `None` when it does not answer.
pub async fn list_of(ctx: &MemberContext, member: u64) -> Option<Vec<Shard>> {
    let channel = channel_to(ctx, member).ok()??;
    let mut request = Request::new(ShardListRequest {});
    crate::forward::mark_forwarded(&mut request);
    request.set_timeout(ctx.request_timeout);
    let mut client = concord_proto::concordpb::shards_client::ShardsClient::new(channel);
    Some(client.list(request).await.ok()?.into_inner().shards)
}

/// Every shard, as this member sees it: what `List` answers and the dashboard shows. Of a shard
/// held elsewhere it knows the range and the replicas only (leader 0, size and index 0).
pub fn describe_all(ctx: &MemberContext) -> Vec<Shard> {
    ctx.router
        .current()
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
            // Each split of the shard adds one, as TiKV's region epoch.
            version: 1 + range.store.split_children().map_or(0, |c| c.len() as u64),
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

    /// Splits the shard holding the key at the key, online: the new shard's group id comes from
    /// group 1, the split is one entry in the shard's log (every replica cuts the same keys at
    /// the same point), and group 1 then tells the members holding no replica.
    async fn split(&self, request: Request<ShardSplitRequest>) -> Result<Response<ShardSplitResponse>, Status> {
        self.require_admin(&request).await?;
        if request.get_ref().key.is_empty() {
            return Err(errors::split_needs_key());
        }
        if !self.ctx.router.default_group().is_stamped() {
            return Err(errors::split_needs_stamped_revisions());
        }
        let router = self.ctx.router.current();
        let parent = match router.route_for_key(&request.get_ref().key) {
            Route::Local(shard) => shard.clone(),
            Route::Remote(remote) => {
                let split = |mut client: ShardsClient<_>, r| async move { client.split(r).await };
                let creds = crate::auth::Credentials::of(&request);
                let timeout = crate::shard_move::MOVE_TIMEOUT;
                return forward_to_shard(&self.ctx, remote, request, &creds, timeout, split).await;
            }
        };
        let creds = crate::auth::Credentials::of(&request);
        let key = request.into_inner().key;
        if parent.start == key {
            return Err(errors::split_at_shard_start());
        }
        let first = self.ctx.router.default_group();
        let floor = router.routes().map(|r| r.group_id()).max().unwrap_or(1) + 1;
        let allocate = Op::AllocateShardId(AllocateShardId { floor });
        let sender = self.ctx.auth.sender(&creds, first).await?;
        let child = match self.ctx.propose_write(first, &sender, allocate).await? {
            WriteResult::ShardId(resp) => resp.group,
            _ => return Err(errors::unexpected_apply_result()),
        };
        let sender = self.ctx.auth.sender(&creds, &parent.group).await?;
        let split = Op::SplitShard(SplitShard {
            key: key.clone(),
            child_group: child,
            first_leader: self.least_leading(&parent).await,
        });
        let done = match self.ctx.propose_write(&parent.group, &sender, split).await? {
            WriteResult::ShardSplit(done) => done,
            _ => return Err(errors::unexpected_apply_result()),
        };
        let router = self.ctx.router.current();
        let (Some(Route::Local(left)), Some(Route::Local(right))) =
            (router.route(parent.group.group_id()), router.route(done.child_group))
        else {
            return Err(errors::unexpected_apply_result());
        };
        let record = Op::RecordShard(RecordShard {
            start: key,
            group: child,
            replicas: self
                .ctx
                .shards
                .placements()
                .into_iter()
                .find(|p| p.group == child)
                .map(|p| p.replicas)
                .ok_or_else(errors::unexpected_apply_result)?,
            joining: Vec::new(),
        });
        self.ctx.propose_membership(first, record).await?;
        tracing::info!(parent = parent.group.group_id(), child, "split a shard");
        // The new shard then goes where replicas are fewest; the split stands whatever happens
        // to that move, which goes on to its end even if the caller stops waiting.
        let ctx = self.ctx.clone();
        let placing = {
            let right = right.clone();
            tokio::spawn(async move { crate::shard_move::place_new_shard(&ctx, &right).await })
        };
        if let Ok(Err(e)) = placing.await {
            tracing::warn!(child, "the new shard stays on its parent's members: {}", e.message());
        }
        Ok(Response::new(ShardSplitResponse {
            header: self.header(),
            left: Some(self.describe(left)),
            right: Some(self.describe(right)),
        }))
    }

    /// Moves a shard's replicas (see `shard_move.rs`), through a member holding it.
    async fn r#move(&self, request: Request<ShardMoveRequest>) -> Result<Response<ShardMoveResponse>, Status> {
        self.require_admin(&request).await?;
        let id = request.get_ref().shard;
        if id == self.ctx.router.default_group().group_id() {
            return Err(errors::move_first_shard());
        }
        let router = self.ctx.router.current();
        let shard = match router.route(id) {
            Some(Route::Local(shard)) => shard.clone(),
            Some(Route::Remote(remote)) => {
                let moved = |mut client: ShardsClient<_>, r| async move { client.r#move(r).await };
                let creds = crate::auth::Credentials::of(&request);
                let timeout = crate::shard_move::MOVE_TIMEOUT;
                return forward_to_shard(&self.ctx, remote, request, &creds, timeout, moved).await;
            }
            None => return Err(errors::shard_not_found(id)),
        };
        let req = request.into_inner();
        // A move goes on to its end even if the caller stops waiting: stopping halfway would
        // leave learners that are never promoted.
        let ctx = self.ctx.clone();
        let moving = {
            let shard = shard.clone();
            tokio::spawn(async move { crate::shard_move::move_replicas(&ctx, &shard, &req.add, &req.remove).await })
        };
        moving
            .await
            .map_err(|e| Status::internal(format!("concord: the move failed: {e}")))??;
        Ok(Response::new(ShardMoveResponse {
            header: self.header(),
            shard: Some(self.describe(&shard)),
        }))
    }

    async fn events(&self, request: Request<ShardEventsRequest>) -> Result<Response<ShardEventsResponse>, Status> {
        crate::watch::shard_events::serve(&self.ctx, request)
            .await
            .map(Response::new)
    }

    async fn compact(&self, request: Request<ShardCompactRequest>) -> Result<Response<ShardCompactResponse>, Status> {
        let creds = crate::auth::Credentials::of(&request);
        let ShardCompactRequest { shard, revision } = request.into_inner();
        let shard = self.shard(shard)?;
        crate::global_compaction::compact_shard(&self.ctx, Some(&creds), &shard, revision).await?;
        Ok(Response::new(ShardCompactResponse { header: self.header() }))
    }

    async fn propose(&self, request: Request<ShardProposeRequest>) -> Result<Response<ShardProposeResponse>, Status> {
        let creds = crate::auth::Credentials::of(&request);
        let ShardProposeRequest { shard, command } = request.into_inner();
        let local = self.shard(shard)?;
        let result = match command.and_then(|c| c.op) {
            Some(op @ (Op::PrepareCrossShard(_) | Op::CommitCrossShard(_) | Op::AbortCrossShard(_))) => {
                let group = local.group.group_id();
                let outcome = crate::cross_shard_write::run_phase(&self.ctx, &creds, group, op).await?;
                shard_propose_response::Result::CrossShard(outcome)
            }
            Some(Op::LeaseGrant(grant)) => {
                let granted = crate::lease::grant_on_shard(&self.ctx, &local.group, grant).await?;
                shard_propose_response::Result::LeaseGrant(granted)
            }
            _ => return Err(errors::not_a_shard_proposal()),
        };
        Ok(Response::new(ShardProposeResponse { result: Some(result) }))
    }

    async fn hash(&self, request: Request<ShardHashRequest>) -> Result<Response<ShardHashResponse>, Status> {
        self.require_admin(&request).await?;
        let local = self.shard(request.get_ref().shard)?;
        let store = local.store.clone();
        let hashed = tokio::task::spawn_blocking(move || {
            // The applied index first: a batch applied while hashing shows as a mismatch of
            // indexes, which the caller asks again about, never as a false disagreement.
            let applied = store.applied_index();
            let (hash, _, revision) = store.hash_kv(0)?;
            let still = store.applied_index() == applied;
            Ok::<_, concord_storage::KvError>((hash, revision, applied, still))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(errors::from_kv)?;
        let (hash, revision, applied_index, still) = hashed;
        Ok(Response::new(ShardHashResponse {
            header: self.header(),
            hash,
            revision,
            // An index nothing else reports, when a batch came in between.
            applied_index: if still { applied_index } else { 0 },
        }))
    }

    async fn lease_keys(
        &self,
        request: Request<ShardLeaseKeysRequest>,
    ) -> Result<Response<ShardLeaseKeysResponse>, Status> {
        let ShardLeaseKeysRequest { shard, lease } = request.into_inner();
        let local = self.shard(shard)?;
        let keys = crate::lease::shard_lease_keys(&self.ctx, &local, lease).await?;
        Ok(Response::new(ShardLeaseKeysResponse { keys }))
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
            shard: Some(self.describe(&shard)),
        }))
    }
}
