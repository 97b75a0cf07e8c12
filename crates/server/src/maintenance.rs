//! etcd's Maintenance service: Status, MoveLeader and the alarm list work;
//! hashing, defragmentation and snapshots arrive with #4 and until then
//! answer `Unimplemented`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcdserverpb::maintenance_server::Maintenance;
use concord_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmResponse, DefragmentRequest,
    DefragmentResponse, DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse,
    HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse, SnapshotRequest,
    SnapshotResponse, StatusRequest, StatusResponse,
};
use concord_raft::Role;
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::context::MemberContext;

/// The etcd API version Concord implements. Clients gate features on it.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// How long MoveLeader waits for the new leader to take over.
const LEADER_TRANSFER_TIMEOUT: Duration = Duration::from_secs(5);

/// The Maintenance service of one member.
pub struct MaintenanceService {
    ctx: Arc<MemberContext>,
}

impl MaintenanceService {
    /// A Maintenance service over the member's shared context.
    pub fn new(ctx: Arc<MemberContext>) -> Self {
        MaintenanceService { ctx }
    }
}

fn not_yet(rpc: &str) -> Status {
    Status::unimplemented(format!("concord: Maintenance.{rpc} is not supported yet"))
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        // No alarm can be raised yet (the space quota arrives with #4), so the list is empty.
        match AlarmAction::try_from(request.get_ref().action) {
            Ok(AlarmAction::Get) => Ok(Response::new(AlarmResponse {
                header: Some(self.ctx.header(self.ctx.store.current_revision())),
                alarms: vec![],
            })),
            _ => Err(not_yet("Alarm (activate/deactivate)")),
        }
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let group = self.ctx.router.default_group().status();
        let db_size = std::fs::metadata(&self.ctx.store_path)
            .map(|m| m.len() as i64)
            .unwrap_or(0);
        let me = self.ctx.membership.local_id();
        Ok(Response::new(StatusResponse {
            header: Some(self.ctx.header(self.ctx.store.current_revision())),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            leader: group.leader_id,
            raft_index: group.commit_index,
            raft_term: group.term,
            raft_applied_index: group.applied_index,
            errors: vec![],
            db_size_in_use: db_size,
            is_learner: group.learners.contains(&me),
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _request: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(not_yet("Defragment"))
    }

    async fn hash(&self, _request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(not_yet("Hash"))
    }

    async fn hash_kv(&self, _request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        Err(not_yet("HashKV"))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        _request: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(not_yet("Snapshot"))
    }

    async fn move_leader(
        &self,
        request: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = request.get_ref().target_id;
        let group = self.ctx.router.default_group();
        let status = group.status();
        if status.role != Role::Leader {
            return Err(Status::failed_precondition("etcdserver: not leader"));
        }
        if !status.voters.contains(&target) {
            return Err(Status::not_found("etcdserver: bad leader transferee"));
        }
        if target != status.member_id {
            group.transfer_leader(target).map_err(crate::errors::from_raft)?;
            let deadline = tokio::time::Instant::now() + LEADER_TRANSFER_TIMEOUT;
            while group.status().leader_id != target {
                if tokio::time::Instant::now() >= deadline {
                    return Err(Status::deadline_exceeded(
                        "etcdserver: request timed out, leader transfer took too long",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(Response::new(MoveLeaderResponse {
            header: Some(self.ctx.header(self.ctx.store.current_revision())),
        }))
    }

    async fn downgrade(
        &self,
        _request: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(not_yet("Downgrade"))
    }
}
