//! etcd's Cluster service. Listing members works; changing them arrives with
//! Raft configuration changes (#4) and until then answers `Unimplemented`.

use std::sync::Arc;

use concord_proto::etcdserverpb::cluster_server::Cluster;
use concord_proto::etcdserverpb::{
    MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use crate::context::MemberContext;
use crate::errors;

/// The Cluster service of one member.
pub struct ClusterService {
    ctx: Arc<MemberContext>,
}

impl ClusterService {
    /// A Cluster service over the member's shared context.
    pub fn new(ctx: Arc<MemberContext>) -> Self {
        ClusterService { ctx }
    }
}

fn membership_changes_unsupported(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "concord: Cluster.{rpc} is not supported yet; membership is fixed by --initial-cluster"
    ))
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _request: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(membership_changes_unsupported("MemberAdd"))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        if self.ctx.membership.member(request.get_ref().id).is_none() {
            return Err(errors::member_not_found());
        }
        Err(membership_changes_unsupported("MemberRemove"))
    }

    async fn member_update(
        &self,
        request: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        if self.ctx.membership.member(request.get_ref().id).is_none() {
            return Err(errors::member_not_found());
        }
        Err(membership_changes_unsupported("MemberUpdate"))
    }

    async fn member_list(
        &self,
        request: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let group = self.ctx.router.default_group();
        if request.get_ref().linearizable {
            group.read_barrier().await.map_err(errors::from_raft)?;
        }
        Ok(Response::new(MemberListResponse {
            header: Some(self.ctx.header(self.ctx.store.current_revision())),
            members: self.ctx.membership.members(),
        }))
    }

    async fn member_promote(
        &self,
        request: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        if self.ctx.membership.member(request.get_ref().id).is_none() {
            return Err(errors::member_not_found());
        }
        Err(membership_changes_unsupported("MemberPromote"))
    }
}
