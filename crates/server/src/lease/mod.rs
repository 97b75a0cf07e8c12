//! etcd's Lease service.
//!
//! Grant and Revoke go through Raft like writes. Keep-alives and time-to-live
//! questions are answered from the leader's lease clock ([`lessor`]); other
//! members forward them to the leader ([`crate::forward`]).

pub mod lessor;
mod sharded;

pub use sharded::{grant_on_shard, shard_lease_keys};

use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concord_proto::concordpb::raft_command::Op;
use concord_proto::etcdserverpb::lease_server::Lease;
use concord_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use concord_raft::RaftError;
use concord_storage::WriteResult;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Credentials;
use crate::context::MemberContext;
use crate::errors;
use crate::forward::{mark_forwarded, wait_for_leader, was_forwarded, LeaderChannels};
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_storage::auth::perms::{Access, Need};
use lessor::{Lessor, Renewal};

/// etcd's largest lease TTL, in seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// Pause between attempts of a keep-alive while the leader is unknown or changing.
const RETRY_DELAY: Duration = Duration::from_millis(50);

/// The Lease service of one member.
pub struct LeaseService {
    ctx: Arc<MemberContext>,
    lessor: Arc<Lessor>,
    leader: Arc<LeaderChannels>,
    /// The shortest TTL granted: etcd's 1.5 election timeouts, rounded up to seconds.
    min_ttl: i64,
    next_id: AtomicI64,
}

impl LeaseService {
    /// A Lease service using `lessor` as this member's lease clock.
    pub fn new(ctx: Arc<MemberContext>, lessor: Arc<Lessor>, election_timeout: Duration) -> Self {
        let min_ttl = (election_timeout.as_secs_f64() * 1.5).ceil() as i64;
        // Ids: 15 bits of the member id, then the clock, so members and
        // restarts do not pick the same ids; grants of an id in use fail anyway.
        let member_bits = (ctx.membership.local_id() & 0x7fff) as i64;
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let first_id = (member_bits << 48) | ((millis & 0xff_ffff_ffff) << 8);
        LeaseService {
            ctx,
            lessor,
            leader: Arc::new(LeaderChannels::default()),
            min_ttl: min_ttl.max(1),
            next_id: AtomicI64::new(first_id.max(1)),
        }
    }
}

/// Answers one keep-alive: here when this member leads, else at the leader.
/// Like etcd, it keeps trying through leader changes until the request
/// timeout, since a keep-alive that fails can cost the client its lease.
async fn keep_alive_once(
    ctx: &MemberContext,
    lessor: &Lessor,
    leader: &LeaderChannels,
    id: i64,
    forwarded: bool,
) -> Result<i64, Status> {
    let group = ctx.router.default_group();
    let deadline = tokio::time::Instant::now() + ctx.request_timeout;
    loop {
        let leader_id = group.leader_id();
        let attempt = if leader_id == 0 {
            Err(errors::from_raft(RaftError::NoLeader))
        } else if leader_id == ctx.membership.local_id() {
            match lessor.renew(id) {
                Renewal::Renewed(ttl) => return Ok(ttl),
                // Another member may apply and answer a grant before this
                // leader applies it. Like etcd, catch up with the commit
                // index (a ReadIndex here) before saying the lease is unknown.
                Renewal::NotFound => {
                    group.read_barrier().await.map_err(errors::from_raft)?;
                    return match lessor.renew(id) {
                        Renewal::Renewed(ttl) => Ok(ttl),
                        _ => Ok(0),
                    };
                }
                // Just elected; the lease clock takes over in a moment.
                Renewal::NotPrimary => Err(errors::from_raft(RaftError::Timeout)),
            }
        } else if forwarded {
            return Err(errors::not_leader());
        } else {
            forward_keep_alive(ctx, leader, leader_id, id).await
        };
        match attempt {
            Ok(ttl) => return Ok(ttl),
            Err(status) if tokio::time::Instant::now() >= deadline => return Err(status),
            Err(_) => tokio::time::sleep(RETRY_DELAY).await,
        }
    }
}

async fn forward_keep_alive(
    ctx: &MemberContext,
    leader: &LeaderChannels,
    leader_id: u64,
    id: i64,
) -> Result<i64, Status> {
    let mut client = leader_client(ctx, leader, leader_id)?;
    let mut request = Request::new(tokio_stream::once(LeaseKeepAliveRequest { id }));
    mark_forwarded(&mut request);
    let mut responses = client.lease_keep_alive(request).await?.into_inner();
    match responses.next().await {
        Some(Ok(resp)) => Ok(resp.ttl),
        Some(Err(status)) => Err(status),
        None => Err(errors::from_raft(RaftError::Timeout)),
    }
}

fn leader_client(
    ctx: &MemberContext,
    leader: &LeaderChannels,
    leader_id: u64,
) -> Result<LeaseClient<tonic::transport::Channel>, Status> {
    Ok(LeaseClient::new(leader.to_leader(ctx, leader_id)?))
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, request: Request<LeaseGrantRequest>) -> Result<Response<LeaseGrantResponse>, Status> {
        let creds = Credentials::of(&request);
        let mut req = request.into_inner();
        if req.ttl > MAX_LEASE_TTL {
            return Err(errors::lease_ttl_too_large());
        }
        req.ttl = req.ttl.max(self.min_ttl);
        if req.id == 0 {
            req.id = self.next_id.fetch_add(1, Ordering::Relaxed) & i64::MAX;
        }
        crate::quota::check(&self.ctx, 16).await?;
        let group = self.ctx.router.default_group();
        let sender = self.ctx.auth.sender(&creds, group).await?;
        let granted = self
            .ctx
            .write(group, &sender, Op::LeaseGrant(req), |r| match r {
                WriteResult::LeaseGrant(resp) => Some(resp),
                _ => None,
            })
            .await?;
        if self.ctx.router.is_sharded() {
            sharded::copy_grant(&self.ctx, &req).await?;
        }
        Ok(granted)
    }

    async fn lease_revoke(
        &self,
        request: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        if self.ctx.router.is_sharded() {
            return sharded::revoke(&self.ctx, &creds, req.id).await.map(Response::new);
        }
        let group = self.ctx.router.default_group();
        // Apply checks write permission on every key attached to the lease, as etcd.
        let sender = self.ctx.auth.sender(&creds, group).await?;
        self.ctx
            .write(group, &sender, Op::LeaseRevoke(req), |r| match r {
                WriteResult::LeaseRevoke(resp) => Some(resp),
                _ => None,
            })
            .await
    }

    type LeaseKeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let forwarded = was_forwarded(&request);
        let mut inbound = request.into_inner();
        let (out, rx) = mpsc::channel(16);
        let (ctx, lessor, leader) = (self.ctx.clone(), self.lessor.clone(), self.leader.clone());
        tokio::spawn(async move {
            while let Some(Ok(req)) = inbound.next().await {
                let reply = keep_alive_once(&ctx, &lessor, &leader, req.id, forwarded)
                    .await
                    .map(|ttl| LeaseKeepAliveResponse {
                        header: Some(ctx.header(ctx.store.current_revision())),
                        id: req.id,
                        ttl,
                    });
                let failed = reply.is_err();
                if out.send(reply).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        let forwarded = was_forwarded(&request);
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        let group = self.ctx.router.default_group();
        if req.keys && self.ctx.auth.enabled() {
            // etcd 3.5: listing a lease's keys needs read permission on each of them.
            group.read_barrier().await.map_err(errors::from_raft)?;
            let id = self.ctx.auth.identity(&creds, group).await?;
            if id.is_none() {
                return Err(errors::from_auth(concord_storage::AuthError::UserEmpty));
            }
            let keys = self.ctx.store.lease_keys(req.id).map_err(errors::from_kv)?;
            let needs: Vec<Need<'_>> = keys.iter().map(|k| Need::new(Access::Read, k, &[])).collect();
            self.ctx.auth.check_needs(id.as_ref(), &needs)?;
        }
        let leader_id = wait_for_leader(&self.ctx).await?;
        if leader_id != self.ctx.membership.local_id() {
            if forwarded {
                return Err(errors::not_leader());
            }
            let mut client = leader_client(&self.ctx, &self.leader, leader_id)?;
            let mut forward = Request::new(req);
            mark_forwarded(&mut forward);
            creds.attach(&mut forward);
            let mut resp = client.lease_time_to_live(forward).await?.into_inner();
            resp.header = Some(self.ctx.header(self.ctx.store.current_revision()));
            return Ok(resp.into());
        }
        group.read_barrier().await.map_err(errors::from_raft)?;
        let header = Some(self.ctx.header(self.ctx.store.current_revision()));
        let Some((ttl, granted_ttl)) = self.lessor.time_to_live(req.id) else {
            // etcd answers an unknown lease with TTL -1, not an error.
            return Ok(Response::new(LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                ..Default::default()
            }));
        };
        let keys = if req.keys && self.ctx.router.is_sharded() {
            sharded::lease_keys_everywhere(&self.ctx, req.id).await?
        } else if req.keys {
            self.ctx.store.lease_keys(req.id).map_err(errors::from_kv)?
        } else {
            Vec::new()
        };
        Ok(Response::new(LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl,
            granted_ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _request: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        let group = self.ctx.router.default_group();
        group.read_barrier().await.map_err(errors::from_raft)?;
        let leases = self.ctx.store.leases().map_err(errors::from_kv)?;
        Ok(Response::new(LeaseLeasesResponse {
            header: Some(self.ctx.header(self.ctx.store.current_revision())),
            leases: leases.into_iter().map(|(id, _)| LeaseStatus { id }).collect(),
        }))
    }
}
