//! etcd's Cluster service: listing and changing the members.
//!
//! Changes are decided by the leader, which alone knows how far each member's
//! log has come and which members answer: other members forward them there.
//! Adding, promoting and removing members are Raft configuration changes;
//! moving a member's peer URLs is an ordinary replicated command.

use std::sync::Arc;
use std::time::Duration;

use concord_proto::concordpb::raft_command::Op;
use concord_proto::etcdserverpb::cluster_client::ClusterClient;
use concord_proto::etcdserverpb::cluster_server::Cluster;
use concord_proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse, MemberPromoteRequest,
    MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse,
};
use concord_raft::{GroupStatus, Role};
use prost::Message as _;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use tonic::{Request, Response, Status};

use crate::auth::Credentials;
use crate::context::MemberContext;
use crate::errors;
use crate::forward::{mark_forwarded, wait_for_leader, was_forwarded, LeaderChannels};
use crate::membership::compute_member_id;
use crate::peer_urls;

/// etcd's limit on learners in a cluster.
pub const MAX_LEARNERS: usize = 1;
/// A learner may be promoted once its log matches this share of the leader's.
const LEARNER_READY_SHARE: f64 = 0.9;
/// How long removing the leader waits for leadership to move first.
const LEADER_HANDOVER: Duration = Duration::from_secs(5);
/// How long a member waits to apply a change it forwarded to the leader.
const CATCH_UP_AFTER_FORWARD: Duration = Duration::from_secs(2);

/// The Cluster service of one member.
pub struct ClusterService {
    ctx: Arc<MemberContext>,
    leader: LeaderChannels,
}

impl ClusterService {
    /// A Cluster service over the member's shared context.
    pub fn new(ctx: Arc<MemberContext>) -> Self {
        ClusterService {
            ctx,
            leader: LeaderChannels::default(),
        }
    }

    /// Membership changes reconfigure group 1 only: the shards' groups would keep their old
    /// replicas, so they are refused while the keyspace is split.
    fn refuse_when_sharded(&self) -> Result<(), Status> {
        match self.ctx.router.is_sharded() {
            true => Err(errors::unsharded_only("changing members")),
            false => Ok(()),
        }
    }

    /// The leader's status when this member leads; otherwise a client to the
    /// leader for forwarding (or an error if the request was forwarded already).
    async fn leader_or_forward<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Result<GroupStatus, ClusterClient<tonic::transport::Channel>>, Status> {
        // Member changes need root once auth is on, as in etcd (the leader checks again).
        self.ctx
            .auth
            .require_admin(&Credentials::of(request), self.ctx.router.default_group())
            .await?;
        let leader_id = wait_for_leader(&self.ctx).await?;
        let status = self.ctx.router.default_group().status();
        if status.role == Role::Leader {
            return Ok(Ok(status));
        }
        if was_forwarded(request) {
            return Err(errors::not_leader());
        }
        Ok(Err(ClusterClient::new(self.leader.to_leader(&self.ctx, leader_id)?)))
    }

    /// The leader's answer to a forwarded change, once this member has applied
    /// the change too, so the client's next call here sees it (read-your-writes).
    /// A member that cannot catch up in time (it may have just been removed) still
    /// passes the leader's answer on: the change itself is committed.
    async fn after_forwarded<R>(&self, answer: Result<Response<R>, Status>) -> Result<Response<R>, Status> {
        if answer.is_ok() {
            let barrier = self.ctx.router.default_group().read_barrier();
            let _ = tokio::time::timeout(CATCH_UP_AFTER_FORWARD, barrier).await;
        }
        answer
    }

    fn header(&self) -> Option<concord_proto::etcdserverpb::ResponseHeader> {
        Some(self.ctx.header(self.ctx.store.current_revision()))
    }

    async fn change(&self, changes: Vec<(ConfChangeType, u64)>, context: Vec<u8>) -> Result<(), Status> {
        let cc = conf_change(changes, context);
        let group = self.ctx.router.default_group();
        group.propose_conf_change(cc).await.map_err(errors::from_raft)?;
        Ok(())
    }
}

/// One configuration change made of `changes` (joint consensus when there are several), with
/// `context` for the members applying it.
pub fn conf_change(changes: Vec<(ConfChangeType, u64)>, context: Vec<u8>) -> ConfChangeV2 {
    let mut cc = ConfChangeV2::default();
    for (kind, id) in changes {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(kind);
        single.node_id = id;
        cc.mut_changes().push(single);
    }
    cc.set_context(context.into());
    cc
}

/// `inner` as a call forwarded to the leader with the client's credentials.
fn forwarded<T>(inner: T, creds: &Credentials) -> Request<T> {
    let mut request = Request::new(inner);
    mark_forwarded(&mut request);
    creds.attach(&mut request);
    request
}

/// Voters that answered the leader recently and whose link works, counting the leader.
fn active_voters(ctx: &MemberContext, status: &GroupStatus, excluding: Option<u64>) -> usize {
    status
        .progress
        .iter()
        .filter(|p| {
            let reachable = p.member_id == status.member_id || ctx.transport.is_reachable(p.member_id);
            p.recent_active && reachable && status.voters.contains(&p.member_id) && Some(p.member_id) != excluding
        })
        .count()
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, mut request: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        // Checked first, as etcd does, so a bad request costs nothing and is not forwarded.
        request.get_mut().peer_ur_ls = peer_urls::validate(&request.get_ref().peer_ur_ls)?;
        self.refuse_when_sharded()?;
        let status = match self.leader_or_forward(&request).await? {
            Ok(status) => status,
            Err(mut leader) => {
                let creds = Credentials::of(&request);
                let answer = leader.member_add(forwarded(request.into_inner(), &creds)).await;
                return self.after_forwarded(answer).await;
            }
        };
        let req = request.into_inner();
        let members = self.ctx.membership.members();
        if members
            .iter()
            .any(|m| m.peer_ur_ls.iter().any(|u| req.peer_ur_ls.contains(u)))
        {
            return Err(errors::peer_url_exist());
        }
        if req.is_learner {
            if members.iter().filter(|m| m.is_learner).count() >= MAX_LEARNERS {
                return Err(errors::too_many_learners());
            }
        } else {
            // After the change, the active voters must still be a quorum. As in etcd, a
            // one-member cluster may always grow to two (the way to restore from a snapshot).
            let voters_after = status.voters.len() + 1;
            let active = active_voters(&self.ctx, &status, None);
            if active < voters_after / 2 + 1 && voters_after != 2 {
                return Err(errors::unhealthy());
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let id = compute_member_id(&req.peer_ur_ls, &format!("{:x}{now}", self.ctx.membership.cluster_id()));
        let member = Member {
            id,
            name: String::new(),
            peer_ur_ls: req.peer_ur_ls.clone(),
            client_ur_ls: Vec::new(),
            is_learner: req.is_learner,
        };
        let kind = if req.is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        self.change(vec![(kind, id)], member.encode_to_vec()).await?;
        Ok(Response::new(MemberAddResponse {
            header: self.header(),
            member: Some(member),
            members: self.ctx.membership.members(),
        }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        self.refuse_when_sharded()?;
        let status = match self.leader_or_forward(&request).await? {
            Ok(status) => status,
            Err(mut leader) => {
                let creds = Credentials::of(&request);
                let answer = leader.member_remove(forwarded(request.into_inner(), &creds)).await;
                return self.after_forwarded(answer).await;
            }
        };
        let id = request.get_ref().id;
        let Some(member) = self.ctx.membership.member(id) else {
            return Err(errors::member_not_found());
        };
        if !member.is_learner {
            let voters_after = status.voters.len().saturating_sub(1);
            if voters_after == 0 || active_voters(&self.ctx, &status, Some(id)) < voters_after / 2 + 1 {
                return Err(errors::unhealthy());
            }
        }
        if id == status.member_id {
            // Removing the leader: hand leadership to the most caught-up
            // active voter first, so the cluster does not wait for an election.
            let successor = status
                .progress
                .iter()
                .filter(|p| {
                    p.member_id != id
                        && p.recent_active
                        && self.ctx.transport.is_reachable(p.member_id)
                        && status.voters.contains(&p.member_id)
                })
                .max_by_key(|p| p.matched)
                .map(|p| p.member_id)
                .ok_or_else(errors::unhealthy)?;
            let group = self.ctx.router.default_group();
            group.transfer_leader(successor).map_err(errors::from_raft)?;
            let mut leader = group.watch_leader();
            let moved = tokio::time::timeout(LEADER_HANDOVER, leader.wait_for(|l| *l != id && *l != 0)).await;
            if !matches!(moved, Ok(Ok(_))) {
                return Err(errors::timeout_leader_transfer());
            }
        }
        self.change(vec![(ConfChangeType::RemoveNode, id)], Vec::new()).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: self.header(),
            members: self.ctx.membership.members(),
        }))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        // etcd checks no URL here, and its members panic applying a bad one; Concord checks
        // them as MemberAdd's, before anything else.
        let peer_urls = peer_urls::validate(&request.get_ref().peer_ur_ls)?;
        self.ctx.require_admin(&request).await?;
        let req = MemberUpdateRequest {
            peer_ur_ls: peer_urls,
            ..request.into_inner()
        };
        let members = self.ctx.membership.members();
        if !members.iter().any(|m| m.id == req.id) {
            return Err(errors::member_not_found());
        }
        if members
            .iter()
            .any(|m| m.id != req.id && m.peer_ur_ls.iter().any(|u| req.peer_ur_ls.contains(u)))
        {
            return Err(errors::peer_url_exist());
        }
        let update = Member {
            id: req.id,
            peer_ur_ls: req.peer_ur_ls,
            ..Default::default()
        };
        let group = self.ctx.router.default_group();
        self.ctx.propose_membership(group, Op::UpdateMember(update)).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: self.header(),
            members: self.ctx.membership.members(),
        }))
    }

    async fn member_list(&self, request: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        let group = self.ctx.router.default_group();
        if request.get_ref().linearizable {
            group.read_barrier().await.map_err(errors::from_raft)?;
        }
        Ok(Response::new(MemberListResponse {
            header: self.header(),
            members: self.ctx.membership.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        self.refuse_when_sharded()?;
        let status = match self.leader_or_forward(&request).await? {
            Ok(status) => status,
            Err(mut leader) => {
                let creds = Credentials::of(&request);
                let answer = leader.member_promote(forwarded(request.into_inner(), &creds)).await;
                return self.after_forwarded(answer).await;
            }
        };
        let id = request.get_ref().id;
        let Some(member) = self.ctx.membership.member(id) else {
            return Err(errors::member_not_found());
        };
        if !member.is_learner {
            return Err(errors::member_not_learner());
        }
        let leader_match = status
            .progress
            .iter()
            .find(|p| p.member_id == status.member_id)
            .map_or(0, |p| p.matched);
        let learner_match = status
            .progress
            .iter()
            .find(|p| p.member_id == id)
            .map_or(0, |p| p.matched);
        if (learner_match as f64) < leader_match as f64 * LEARNER_READY_SHARE {
            return Err(errors::learner_not_ready());
        }
        let voters_after = status.voters.len() + 1;
        if active_voters(&self.ctx, &status, None) + 1 < voters_after / 2 + 1 {
            return Err(errors::unhealthy());
        }
        let mut promoted = member.clone();
        promoted.is_learner = false;
        self.change(vec![(ConfChangeType::AddNode, id)], promoted.encode_to_vec())
            .await?;
        Ok(Response::new(MemberPromoteResponse {
            header: self.header(),
            members: self.ctx.membership.members(),
        }))
    }
}
