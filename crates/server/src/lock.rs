//! etcd's v3lock service (Lock, Unlock), on top of KV, leases and watch.
//!
//! A lock named `N` is etcd's `concurrency.Mutex` on the prefix `N/` (see
//! [`crate::concurrency`] for the key layout), run inside the member as etcd's
//! `v3lock` server runs it: queue a key `N/<lease hex>` attached to the lease,
//! and hold the lock once every key queued before it is gone. etcdctl's
//! `lock` command runs the same recipe client-side over KV, Watch and Lease,
//! so both kinds of lockers exclude each other. As in etcd, the empty name is
//! a name like any other (prefix `/`), but the empty key cannot be unlocked.

use std::sync::Arc;

use concord_proto::etcdserverpb::TxnRequest;
use concord_proto::v3lockpb::lock_server::Lock;
use concord_proto::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::auth::{Credentials, Sender};
use crate::concurrency::{self, Waited};
use crate::context::MemberContext;
use crate::errors;
use crate::watch::WatchHub;

/// The Lock service of one member.
pub struct LockService {
    ctx: Arc<MemberContext>,
    hub: Arc<WatchHub>,
}

impl LockService {
    /// A Lock service over the member's context and watch hub.
    pub fn new(ctx: Arc<MemberContext>, hub: Arc<WatchHub>) -> Self {
        LockService { ctx, hub }
    }
}

type Answer = oneshot::Sender<Result<LockResponse, Status>>;

/// Deletes the key a Lock call queued, for a call whose caller is gone or
/// that failed while waiting. Best effort, as in etcd: if this fails, the key
/// goes with its lease.
async fn withdraw(ctx: &MemberContext, key: &[u8]) {
    // The member removes the key this very call queued, whoever the caller is now.
    if let Err(status) = concurrency::delete(ctx, &Sender::Member, key).await {
        tracing::debug!(
            "lock: cannot withdraw {:?}: {}",
            String::from_utf8_lossy(key),
            status.message()
        );
    }
}

/// One Lock call, on its own task (see [`concurrency::detach`]).
async fn lock_task(
    ctx: Arc<MemberContext>,
    hub: Arc<WatchHub>,
    creds: Credentials,
    req: LockRequest,
    mut answer: Answer,
) {
    let result = acquire(&ctx, &hub, &creds, req, &mut answer).await;
    match result {
        Acquired::Answer(result) => {
            let _ = answer.send(result);
        }
        Acquired::Locked(resp) => {
            if let Err(Ok(resp)) = answer.send(Ok(resp)) {
                // The caller left just as the lock became ours: nobody will
                // ever unlock it, so give it up now rather than at lease expiry.
                withdraw(&ctx, &resp.key).await;
            }
        }
        Acquired::CallerGone => {}
    }
}

enum Acquired {
    /// What to tell the caller.
    Answer(Result<LockResponse, Status>),
    /// The lock, taken with a key this call queued (withdrawn if the caller
    /// is gone by the time it would be told).
    Locked(LockResponse),
    /// The caller went away; the queued key has been withdrawn.
    CallerGone,
}

async fn acquire(
    ctx: &Arc<MemberContext>,
    hub: &Arc<WatchHub>,
    creds: &Credentials,
    req: LockRequest,
    answer: &mut Answer,
) -> Acquired {
    let sender = match concurrency::sender(ctx, creds).await {
        Ok(sender) => sender,
        Err(status) => return Acquired::Answer(Err(status)),
    };
    let lease = match concurrency::session_lease(ctx, &sender, req.lease).await {
        Ok(lease) => lease,
        Err(status) => return Acquired::Answer(Err(status)),
    };
    let prefix = concurrency::prefix(&req.name);
    let my_key = concurrency::participant_key(&prefix, lease);

    // etcd's tryAcquire: queue my key unless this lease already has one, and
    // learn who holds the lock, in one txn.
    let acquire = TxnRequest {
        compare: vec![concurrency::created_at(&my_key, 0)],
        success: vec![
            concurrency::put_op(&my_key, b"", lease),
            concurrency::range_op(concurrency::first_created(&prefix)),
        ],
        failure: vec![
            concurrency::range_op(concurrency::get(&my_key)),
            concurrency::range_op(concurrency::first_created(&prefix)),
        ],
    };
    let resp = match concurrency::txn(ctx, &sender, acquire).await {
        Ok(resp) => resp,
        Err(status) => return Acquired::Answer(Err(status)),
    };
    let header = resp.header;
    let created = resp.succeeded;
    let my_rev = if created {
        header.as_ref().map_or(0, |h| h.revision)
    } else {
        match concurrency::first_kv(&resp, 0) {
            Some(kv) => kv.create_revision,
            // Deleted between the compare and the get cannot happen within one
            // txn; treat it as a lost session all the same.
            None => return Acquired::Answer(Err(errors::session_expired())),
        }
    };
    let owner_rev = concurrency::first_kv(&resp, 1).map(|kv| kv.create_revision);
    if owner_rev.is_none() || owner_rev == Some(my_rev) {
        let resp = LockResponse { header, key: my_key };
        // A key this call did not create was queued by an earlier call with
        // the same lease, which holds the lock: leave it alone.
        return if created {
            Acquired::Locked(resp)
        } else {
            Acquired::Answer(Ok(resp))
        };
    }

    // Wait for every earlier waiter to go; give up (and leave the queue) if
    // the caller does.
    let waited = tokio::select! {
        waited = concurrency::wait_deletes(hub, &prefix, &my_key, my_rev) => waited,
        _ = answer.closed() => {
            withdraw(ctx, &my_key).await;
            return Acquired::CallerGone;
        }
    };
    match waited {
        Ok(Waited::Clear) => {}
        Ok(Waited::OwnKeyGone) => return Acquired::Answer(Err(errors::session_expired())),
        Err(status) => {
            withdraw(ctx, &my_key).await;
            return Acquired::Answer(Err(status));
        }
    }

    // As etcd does: make sure the key (and so the session) is still there,
    // with a linearizable read whose header the answer carries.
    match concurrency::linearizable_range(ctx, &concurrency::get(&my_key)).await {
        Ok((range, _)) if range.kvs.is_empty() => Acquired::Answer(Err(errors::session_expired())),
        Ok((_, revision)) => {
            let resp = LockResponse {
                header: Some(ctx.header(revision)),
                key: my_key,
            };
            if created {
                Acquired::Locked(resp)
            } else {
                Acquired::Answer(Ok(resp))
            }
        }
        Err(status) => {
            withdraw(ctx, &my_key).await;
            Acquired::Answer(Err(status))
        }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, request: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        // The caller's key goes under the name's prefix, whose keys it must also read.
        concurrency::authorize_prefix(&self.ctx, &creds, &concurrency::prefix(&req.name), true).await?;
        let hub = concurrency::hub_for(&self.ctx, &concurrency::prefix(&req.name), &self.hub);
        let ctx = self.ctx.clone();
        let resp = concurrency::detach(move |answer| lock_task(ctx, hub, creds, req, answer)).await?;
        Ok(Response::new(resp))
    }

    async fn unlock(&self, request: Request<UnlockRequest>) -> Result<Response<UnlockResponse>, Status> {
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        // etcd's lock server deletes the key through its in-process client, which hands the KV
        // server's refusal of the empty key back as a plain error.
        if req.key.is_empty() {
            return Err(errors::plain_empty_key());
        }
        let sender = concurrency::sender(&self.ctx, &creds).await?;
        let revision = concurrency::delete(&self.ctx, &sender, &req.key).await?;
        Ok(Response::new(UnlockResponse {
            header: Some(self.ctx.header(revision)),
        }))
    }
}
