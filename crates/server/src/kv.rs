//! etcd's KV service: Range, Put, DeleteRange, Txn and Compact.
//!
//! Writes are validated, proposed to the owning group and answered once this
//! member has applied them. Reads are served from the local store, after a
//! ReadIndex barrier unless the client asked for a serializable read.

use std::sync::Arc;

use concord_proto::concordpb::raft_command::Op;
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::kv_server::Kv;
use concord_proto::etcdserverpb::request_op::Request as TxnOp;
use concord_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use concord_storage::auth::perms;
use concord_storage::WriteResult;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::auth::Credentials;
use crate::context::MemberContext;
use crate::router::Route;
use crate::shard_forward::forward;
use crate::{cross_shard_read, errors, validate};

/// The KV service of one member.
pub struct KvService {
    ctx: Arc<MemberContext>,
}

impl KvService {
    /// A KV service over the member's shared context.
    pub fn new(ctx: Arc<MemberContext>) -> Self {
        KvService { ctx }
    }
}

/// True when every range in the txn, nested ones included, asked for a serializable read.
fn all_reads_serializable(txn: &TxnRequest) -> bool {
    txn.success.iter().chain(&txn.failure).all(|op| match &op.request {
        Some(TxnOp::RequestRange(r)) => r.serializable,
        Some(TxnOp::RequestTxn(t)) => all_reads_serializable(t),
        _ => true,
    })
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        validate::check_range(request.get_ref())?;
        rerouting(&self.ctx, request, |r| self.range_once(r)).await
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        validate::check_put(request.get_ref())?;
        rerouting(&self.ctx, request, |r| self.put_once(r)).await
    }

    async fn delete_range(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        validate::check_delete(request.get_ref())?;
        rerouting(&self.ctx, request, |r| self.delete_range_once(r)).await
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        validate::check_txn(request.get_ref(), self.ctx.limits.max_txn_ops, self.ctx.max_txn_depth())?;
        rerouting(&self.ctx, request, |r| self.txn_once(r)).await
    }

    async fn compact(&self, request: Request<CompactionRequest>) -> Result<Response<CompactionResponse>, Status> {
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        if self.ctx.router.is_sharded() {
            let compacted = crate::global_compaction::compact_all(&self.ctx, Some(&creds), req.revision).await?;
            return Ok(Response::new(compacted));
        }
        let group = self.ctx.router.default_group();
        let sender = self.ctx.auth.sender(&creds, group).await?;
        self.ctx
            .write(group, &sender, Op::Compaction(req), |r| match r {
                WriteResult::Compaction(resp) => Some(resp),
                _ => None,
            })
            .await
    }
}

/// Serves `request` by `attempt`, again each time the shard it was routed to no longer held its
/// keys (a split moved them since: see `live_router.rs`), once the router has changed, until the
/// request timeout.
async fn rerouting<T: Clone, R, F, Fut>(
    ctx: &MemberContext,
    request: Request<T>,
    attempt: F,
) -> Result<Response<R>, Status>
where
    F: Fn(Request<T>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<R>, Status>>,
{
    // Only a cluster with global revisions can be split: elsewhere nothing is kept for a retry.
    if !ctx.router.default_group().is_stamped() {
        return attempt(request).await;
    }
    let deadline = tokio::time::Instant::now() + ctx.request_timeout;
    let mut request = request;
    loop {
        let version = ctx.router.version();
        let again = Request::from_parts(
            request.metadata().clone(),
            request.extensions().clone(),
            request.get_ref().clone(),
        );
        match attempt(request).await {
            Err(status) if errors::is_wrong_shard(&status) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if !ctx.router.changed_since(version, left).await {
                    return Err(status);
                }
                request = again;
            }
            // The shard was just split off and is electing its first leader.
            Err(status) if errors::is_no_leader(&status) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if !ctx.router.first_leaders_elected(left).await {
                    return Err(status);
                }
                request = again;
            }
            answer => return answer,
        }
    }
}

impl KvService {
    async fn range_once(&self, request: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let router = self.ctx.router.current();
        let route = router.route_for_range(&request.get_ref().key, &request.get_ref().range_end);
        if let Some(at) = cross_shard_read::read_at(&request) {
            // A part of another member's cross-shard read, at its revision. A part this member
            // no longer sees as one shard held here (a split or move it learned of first) is
            // refused as a stale route: the reader routes again once its router catches up,
            // rather than read it here at a revision of its own.
            let Ok(Route::Local(shard)) = route else {
                return Err(errors::wrong_shard());
            };
            let mut resp = cross_shard_read::read_part(&self.ctx, shard, request.into_inner(), at).await?;
            resp.header = Some(self.ctx.header(at));
            return Ok(Response::new(resp));
        }
        let Ok(route) = route else {
            return cross_shard_read::range(&self.ctx, request).await;
        };
        let shard = match route {
            Route::Local(shard) => shard,
            Route::Remote(remote) => {
                return forward(&self.ctx, remote, request, |mut kv, r| async move { kv.range(r).await }).await;
            }
        };
        let creds = Credentials::of(&request);
        let mut req = request.into_inner();
        let group = &shard.group;
        let floor = self.ctx.read_point(group, req.serializable).await?;
        // A global revision the shard's own has not reached, but its barrier has: nothing of the
        // shard lies between, so it reads as the shard stands.
        let current = shard.store.current_revision();
        if req.revision > current && req.revision <= floor {
            req.revision = current;
        }
        // As etcd: the caller's permissions as of the barrier, then the read, then a check that
        // no auth change slipped in between.
        let id = self
            .ctx
            .auth
            .authorize_read(&creds, group, &perms::range_needs(&req))
            .await?;
        let (mut resp, revision) = shard.store.range(&req).map_err(errors::from_kv)?;
        if !shard.store.covers(&req.key, &req.range_end) {
            return Err(errors::wrong_shard());
        }
        crate::metrics::MVCC_RANGES.inc();
        self.ctx.auth.check_unchanged(id.as_ref())?;
        resp.header = Some(self.ctx.header(revision.max(floor)));
        Ok(Response::new(resp))
    }

    async fn put_once(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let router = self.ctx.router.current();
        let group = match router.route_for_key(&request.get_ref().key) {
            Route::Local(shard) => &shard.group,
            Route::Remote(remote) => {
                return forward(&self.ctx, remote, request, |mut kv, r| async move { kv.put(r).await }).await;
            }
        };
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        crate::quota::check(&self.ctx, req.key.len() + req.value.len()).await?;
        let sender = self.ctx.auth.sender(&creds, group).await?;
        self.ctx
            .write(group, &sender, Op::Put(req), |r| match r {
                WriteResult::Put(resp) => Some(resp),
                _ => None,
            })
            .await
    }

    async fn delete_range_once(
        &self,
        request: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let router = self.ctx.router.current();
        let Ok(route) = router.route_for_range(&request.get_ref().key, &request.get_ref().range_end) else {
            return crate::cross_shard_delete::delete_range(&self.ctx, request).await;
        };
        let group = match route {
            Route::Local(shard) => &shard.group,
            Route::Remote(remote) => {
                let delete = |mut kv: KvClient<Channel>, r| async move { kv.delete_range(r).await };
                return forward(&self.ctx, remote, request, delete).await;
            }
        };
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        let sender = self.ctx.auth.sender(&creds, group).await?;
        self.ctx
            .write(group, &sender, Op::DeleteRange(req), |r| match r {
                WriteResult::DeleteRange(resp) => Some(resp),
                _ => None,
            })
            .await
    }

    async fn txn_once(&self, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let read_only = concord_storage::is_txn_read_only(request.get_ref());
        let router = self.ctx.router.current();
        let route = match router.route_for_txn(request.get_ref()) {
            Ok(route) => route,
            Err(_) if read_only => return crate::cross_shard_txn::read(&self.ctx, request).await,
            Err(spans) => return Err(errors::write_spans_shards(&spans.groups)),
        };
        let shard = match route {
            Route::Local(shard) => shard,
            Route::Remote(remote) => {
                return forward(&self.ctx, remote, request, |mut kv, r| async move { kv.txn(r).await }).await;
            }
        };
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        let group = &shard.group;
        if read_only {
            // Like etcd, a txn that only reads needs no Raft round: a ReadIndex
            // barrier (unless every read is serializable), then a local snapshot.
            let serializable = all_reads_serializable(&req);
            let floor = self.ctx.read_point(group, serializable).await?;
            let id = self
                .ctx
                .auth
                .authorize_read(&creds, group, &perms::txn_needs(&req))
                .await?;
            let (mut resp, revision) = shard.store.txn_read(&req).map_err(errors::from_kv)?;
            if !shard.store.key_range().admits_txn(&req) {
                return Err(errors::wrong_shard());
            }
            self.ctx.auth.check_unchanged(id.as_ref())?;
            resp.header = Some(self.ctx.header(revision.max(floor)));
            return Ok(Response::new(resp));
        }
        crate::quota::check(&self.ctx, prost::Message::encoded_len(&req)).await?;
        let sender = self.ctx.auth.sender(&creds, group).await?;
        self.ctx
            .write(group, &sender, Op::Txn(req), |r| match r {
                WriteResult::Txn(resp) => Some(resp),
                _ => None,
            })
            .await
    }
}
