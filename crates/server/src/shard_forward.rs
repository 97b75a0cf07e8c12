//! Requests for a shard this member holds no replica of: sent on to a member that holds one,
//! over its client URL, and answered with that member's answer. Members are tried in turn from a
//! rotating start, so the load spreads over the shard's replicas (a follower proposes through
//! raft-rs to its leader, which stamps the write, as for any client of that follower). A request
//! goes on to the next replica only when the previous one could not be reached, so a write is
//! never applied twice; a request that was already forwarded is refused rather than forwarded
//! again, since members agree on where every shard is.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use concord_proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::context::MemberContext;
use crate::errors;
use crate::forward::{mark_forwarded, was_forwarded};
use crate::router::RemoteShard;

/// Sends `request` for `shard` to a member holding a replica, by `call` on a KV client of its
/// client URL, and returns its answer.
pub async fn forward<Req, Resp, F, Fut>(
    ctx: &MemberContext,
    shard: &RemoteShard,
    request: Request<Req>,
    call: F,
) -> Result<Response<Resp>, Status>
where
    Req: Clone,
    F: Fn(KvClient<Channel>, Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    if was_forwarded(&request) {
        return Err(errors::misrouted_shard(shard.group_id));
    }
    crate::metrics::SHARD_FORWARDS.inc();
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let start = NEXT.fetch_add(1, Ordering::Relaxed);
    // A part of a cross-shard read keeps the revision it is read at.
    let read_at = request.metadata().get(crate::cross_shard_read::READ_AT_HEADER).cloned();
    let message = request.into_inner();
    let mut unreachable = None;
    for k in 0..shard.replicas.len() {
        let member = shard.replicas[(start + k) % shard.replicas.len()];
        if member == ctx.membership.local_id() {
            // A replica this member is about to hold (it has not applied the split yet).
            continue;
        }
        let Some(url) = ctx
            .membership
            .member(member)
            .and_then(|m| m.client_ur_ls.first().cloned())
        else {
            continue;
        };
        let channel = ctx.shard_channels.channel(&url, &ctx.client_dialer)?;
        let mut request = Request::new(message.clone());
        mark_forwarded(&mut request);
        if let Some(at) = &read_at {
            request
                .metadata_mut()
                .insert(crate::cross_shard_read::READ_AT_HEADER, at.clone());
        }
        request.set_timeout(ctx.request_timeout);
        match call(KvClient::new(channel), request).await {
            Err(status) if never_arrived(&status) => unreachable = Some(status),
            answer => return answer,
        }
    }
    Err(unreachable.unwrap_or_else(|| errors::no_replica_reachable(shard.group_id)))
}

/// Whether a call failed before the member could have acted on it: its connection failed.
fn never_arrived(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && (status.message().contains("error trying to connect") || status.message().contains("tcp connect"))
}
