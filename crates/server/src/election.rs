//! etcd's v3election service (Campaign, Proclaim, Leader, Observe, Resign),
//! on top of KV, leases and watch.
//!
//! An election named `N` is etcd's `concurrency.Election` on the prefix `N/`
//! (see [`crate::concurrency`] for the key layout): each candidate keeps the
//! key `N/<lease hex>` holding its proclaimed value; the candidate whose key
//! was created first leads. etcdctl's `elect` runs the same recipe
//! client-side, so both kinds of candidates take part in one election.
//! As in etcd, the empty name is a name like any other (prefix `/`), but an
//! empty leader key is refused: it names no candidacy.

use std::pin::Pin;
use std::sync::Arc;

use concord_proto::etcdserverpb::TxnRequest;
use concord_proto::mvccpb::event::EventType;
use concord_proto::mvccpb::KeyValue;
use concord_proto::v3electionpb::election_server::Election;
use concord_proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ProclaimResponse,
    ResignRequest, ResignResponse,
};
use concord_storage::KvError;
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{Credentials, Sender};
use crate::concurrency::{self, Waited};
use crate::context::MemberContext;
use crate::errors;
use crate::watch::wait::next_events;
use crate::watch::watcher::Watcher;
use crate::watch::WatchHub;

/// Leader responses queued for one Observe stream before its task waits.
const OBSERVE_QUEUE: usize = 16;

/// The leader key of a Proclaim or Resign: there, and not empty (the empty key is no key, and
/// etcd's KV server refuses to write or delete it).
fn leader_key(leader: Option<LeaderKey>) -> Result<LeaderKey, Status> {
    let leader = leader.ok_or_else(errors::missing_leader_key)?;
    if leader.key.is_empty() {
        return Err(errors::plain_empty_key());
    }
    Ok(leader)
}

/// The Election service of one member.
pub struct ElectionService {
    ctx: Arc<MemberContext>,
    hub: Arc<WatchHub>,
}

impl ElectionService {
    /// An Election service over the member's context and watch hub.
    pub fn new(ctx: Arc<MemberContext>, hub: Arc<WatchHub>) -> Self {
        ElectionService { ctx, hub }
    }
}

/// etcd's `Election.Resign`: deletes the leader key if it is still the one
/// created at `rev`. Answers with the txn's header revision.
async fn resign(ctx: &MemberContext, sender: &Sender, key: &[u8], rev: i64) -> Result<i64, Status> {
    let req = TxnRequest {
        compare: vec![concurrency::created_at(key, rev)],
        success: vec![concurrency::delete_op(key)],
        failure: vec![],
    };
    let resp = concurrency::txn(ctx, sender, req).await?;
    Ok(resp.header.map_or(0, |h| h.revision))
}

/// Resign for a campaign that is being abandoned. Best effort, as in etcd.
async fn withdraw(ctx: &MemberContext, key: &[u8], rev: i64) {
    // The member withdraws the candidacy this very call made, whoever the caller is now.
    if let Err(status) = resign(ctx, &Sender::Member, key, rev).await {
        tracing::debug!(
            "election: cannot withdraw {:?}: {}",
            String::from_utf8_lossy(key),
            status.message()
        );
    }
}

/// etcd's `Election.Proclaim`: sets the leader key's value (attaching it to
/// `lease`) if it is still the one created at `rev`.
async fn proclaim(
    ctx: &MemberContext,
    sender: &Sender,
    key: &[u8],
    rev: i64,
    value: &[u8],
    lease: i64,
) -> Result<ProclaimResponse, Status> {
    let req = TxnRequest {
        compare: vec![concurrency::created_at(key, rev)],
        success: vec![concurrency::put_op(key, value, lease)],
        failure: vec![],
    };
    let resp = concurrency::txn(ctx, sender, req).await?;
    if !resp.succeeded {
        return Err(errors::election_not_leader());
    }
    Ok(ProclaimResponse { header: resp.header })
}

type Answer = oneshot::Sender<Result<CampaignResponse, Status>>;

enum Campaigned {
    /// What to tell the caller.
    Answer(Result<CampaignResponse, Status>),
    /// Leadership won by a candidacy this call created: resigned again if
    /// the caller is gone by the time it would be told.
    Elected(CampaignResponse),
    /// The caller went away; the candidacy has been withdrawn.
    CallerGone,
}

/// One Campaign call, on its own task (see [`concurrency::detach`]).
async fn campaign_task(
    ctx: Arc<MemberContext>,
    hub: Arc<WatchHub>,
    creds: Credentials,
    req: CampaignRequest,
    mut answer: Answer,
) {
    match campaign(&ctx, &hub, &creds, req, &mut answer).await {
        Campaigned::Answer(result) => {
            let _ = answer.send(result);
        }
        Campaigned::Elected(resp) => {
            if let Err(Ok(resp)) = answer.send(Ok(resp)) {
                // Nobody will ever learn of this leadership, nor resign it.
                if let Some(leader) = resp.leader {
                    withdraw(&ctx, &leader.key, leader.rev).await;
                }
            }
        }
        Campaigned::CallerGone => {}
    }
}

async fn campaign(
    ctx: &Arc<MemberContext>,
    hub: &Arc<WatchHub>,
    creds: &Credentials,
    req: CampaignRequest,
    answer: &mut Answer,
) -> Campaigned {
    let sender = match concurrency::sender(ctx, creds).await {
        Ok(sender) => sender,
        Err(status) => return Campaigned::Answer(Err(status)),
    };
    let lease = match concurrency::session_lease(ctx, &sender, req.lease).await {
        Ok(lease) => lease,
        Err(status) => return Campaigned::Answer(Err(status)),
    };
    let prefix = concurrency::prefix(&req.name);
    let key = concurrency::participant_key(&prefix, lease);

    // Stand with my value, unless this lease already stands.
    let stand = TxnRequest {
        compare: vec![concurrency::created_at(&key, 0)],
        success: vec![concurrency::put_op(&key, &req.value, lease)],
        failure: vec![concurrency::range_op(concurrency::get(&key))],
    };
    let resp = match concurrency::txn(ctx, &sender, stand).await {
        Ok(resp) => resp,
        Err(status) => return Campaigned::Answer(Err(status)),
    };
    let header = resp.header;
    let created = resp.succeeded;
    let rev = if created {
        header.as_ref().map_or(0, |h| h.revision)
    } else {
        let Some(kv) = concurrency::first_kv(&resp, 0) else {
            return Campaigned::Answer(Err(errors::election_not_leader()));
        };
        if kv.value != req.value {
            // etcd proclaims the new value for a candidacy it resumes, and
            // resigns it when that fails.
            let rev = kv.create_revision;
            if let Err(status) = proclaim(ctx, &sender, &key, rev, &req.value, lease).await {
                withdraw(ctx, &key, rev).await;
                return Campaigned::Answer(Err(status));
            }
        }
        kv.create_revision
    };

    let waited = tokio::select! {
        waited = concurrency::wait_deletes(hub, &prefix, &key, rev) => waited,
        _ = answer.closed() => {
            withdraw(ctx, &key, rev).await;
            return Campaigned::CallerGone;
        }
    };
    match waited {
        Ok(Waited::Clear) => {}
        // etcd's client would go on waiting and then report a leadership
        // whose key is gone; say so at once instead.
        Ok(Waited::OwnKeyGone) => return Campaigned::Answer(Err(errors::election_not_leader())),
        Err(status) => return Campaigned::Answer(Err(status)),
    }
    let resp = CampaignResponse {
        // etcd answers with the header of the txn that made the candidacy.
        header,
        leader: Some(LeaderKey {
            name: req.name,
            key,
            rev,
            lease,
        }),
    };
    if created {
        Campaigned::Elected(resp)
    } else {
        Campaigned::Answer(Ok(resp))
    }
}

/// The current leader of the election under `prefix`, linearizably, with
/// the revision it was read at.
async fn current_leader(ctx: &MemberContext, prefix: &[u8]) -> Result<(Option<KeyValue>, i64), Status> {
    let (resp, revision) = concurrency::linearizable_range(ctx, &concurrency::first_created(prefix)).await?;
    Ok((resp.kvs.into_iter().next(), revision))
}

/// Waits for the first put under `prefix` after `revision`: the new leader
/// of an election that had none. Among puts in one batch, the one created
/// first wins (as in etcd's Observe).
async fn next_leader(hub: &Arc<WatchHub>, prefix: &[u8], revision: i64) -> Result<KeyValue, KvError> {
    let mut watcher = Watcher::new(
        prefix.to_vec(),
        concurrency::prefix_end(prefix),
        &[],
        false,
        revision + 1,
    );
    loop {
        let events = next_events(hub, &mut watcher).await?;
        let leader = events
            .into_iter()
            .filter(|e| e.r#type == EventType::Put as i32)
            .filter_map(|e| e.kv)
            .min_by_key(|kv| kv.create_revision);
        if let Some(kv) = leader {
            return Ok(kv);
        }
    }
}

type ObserveSender = mpsc::Sender<Result<LeaderResponse, Status>>;

/// etcd's `Election.Observe`: sends the current leader, then every new value
/// it proclaims, and when its key goes, the next leader (waiting for one if
/// the election is empty). Ends when the client goes away.
async fn observe_task(ctx: Arc<MemberContext>, hub: Arc<WatchHub>, prefix: Vec<u8>, out: ObserveSender) {
    let result: Result<(), Status> = async {
        loop {
            let (leader, revision) = tokio::select! {
                r = current_leader(&ctx, &prefix) => r?,
                _ = out.closed() => return Ok(()),
            };
            let leader = match leader {
                Some(kv) => kv,
                None => tokio::select! {
                    kv = next_leader(&hub, &prefix, revision) => kv.map_err(errors::from_kv)?,
                    _ = out.closed() => return Ok(()),
                },
            };
            let key = leader.key.clone();
            let from = leader.mod_revision.max(revision) + 1;
            let resp = LeaderResponse {
                header: Some(ctx.header(leader.mod_revision.max(revision))),
                kv: Some(leader),
            };
            if out.send(Ok(resp)).await.is_err() {
                return Ok(());
            }
            // Follow the leader key until it is deleted.
            let mut watcher = Watcher::new(key, Vec::new(), &[], false, from);
            'leading: loop {
                let events = tokio::select! {
                    events = next_events(&hub, &mut watcher) => events.map_err(errors::from_kv)?,
                    _ = out.closed() => return Ok(()),
                };
                for event in events {
                    if event.r#type == EventType::Delete as i32 {
                        break 'leading;
                    }
                    let Some(kv) = event.kv else { continue };
                    let resp = LeaderResponse {
                        header: Some(ctx.header(kv.mod_revision)),
                        kv: Some(kv),
                    };
                    if out.send(Ok(resp)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    if let Err(status) = result {
        let _ = out.send(Err(status)).await;
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, request: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        // The candidate's key goes under the election's prefix, whose keys it must also read.
        concurrency::authorize_prefix(&self.ctx, &creds, &concurrency::prefix(&req.name), true).await?;
        let hub = concurrency::hub_for(&self.ctx, &concurrency::prefix(&req.name), &self.hub);
        let ctx = self.ctx.clone();
        let resp = concurrency::detach(move |answer| campaign_task(ctx, hub, creds, req, answer)).await?;
        Ok(Response::new(resp))
    }

    async fn proclaim(&self, request: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        let leader = leader_key(req.leader)?;
        let sender = concurrency::sender(&self.ctx, &creds).await?;
        let lease = concurrency::session_lease(&self.ctx, &sender, leader.lease).await?;
        let resp = proclaim(&self.ctx, &sender, &leader.key, leader.rev, &req.value, lease).await?;
        Ok(Response::new(resp))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        let prefix = concurrency::prefix(&req.name);
        concurrency::authorize_prefix(&self.ctx, &creds, &prefix, false).await?;
        let (leader, revision) = current_leader(&self.ctx, &prefix).await?;
        let kv = leader.ok_or_else(errors::election_no_leader)?;
        Ok(Response::new(LeaderResponse {
            header: Some(self.ctx.header(revision)),
            kv: Some(kv),
        }))
    }

    type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send + 'static>>;

    async fn observe(&self, request: Request<LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        let prefix = concurrency::prefix(&req.name);
        concurrency::authorize_prefix(&self.ctx, &creds, &prefix, false).await?;
        let (out, rx) = mpsc::channel(OBSERVE_QUEUE);
        let hub = concurrency::hub_for(&self.ctx, &prefix, &self.hub);
        tokio::spawn(observe_task(self.ctx.clone(), hub, prefix, out));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        let leader = leader_key(req.leader)?;
        let sender = concurrency::sender(&self.ctx, &creds).await?;
        let revision = resign(&self.ctx, &sender, &leader.key, leader.rev).await?;
        Ok(Response::new(ResignResponse {
            header: Some(self.ctx.header(revision)),
        }))
    }
}
