//! One shard's changes to a key range, read for a watch whose keys may lie in several shards
//! ([`super::sharded`]): from this member's replica when it holds one, else from a member that
//! does, over the `Shards.Events` call.
//!
//! An answer says how far it is complete: `resolved` is a revision up to which the shard has no
//! other change in the range. Read as the store stands, that is the store's revision (a shard's
//! log is in revision order). After the shard's stamped read barrier it is at least the
//! barrier's stamp, which is above every revision handed out before the call: that is how a
//! watch over several shards learns that a quiet shard has nothing to put before another's
//! event.

use std::sync::Arc;
use std::time::Duration;

use concord_proto::concordpb::shards_client::ShardsClient;
use concord_proto::concordpb::{ShardEventsRequest, ShardEventsResponse};
use concord_proto::mvccpb::Event;
use concord_storage::KvError;
use prost::Message as _;
use tokio::sync::broadcast;
use tonic::{Request, Status};

use super::hub::{event_revision, EventBatch};
use crate::auth::Credentials;
use crate::context::MemberContext;
use crate::errors;
use crate::router::{RemoteShard, Route, Shard};

/// Most events one answer carries (it ends with a whole revision).
const MOST_EVENTS: usize = 1000;
/// Bytes of events past which an answer ends, at the end of a revision.
const MOST_BYTES: usize = 1024 * 1024;

/// What one shard holds of a range from a revision on.
#[derive(Debug, Default)]
pub struct PartEvents {
    /// The changes, in revision order.
    pub events: Vec<Event>,
    /// No other change in the range up to this revision.
    pub resolved: i64,
    /// Non-zero when the history asked for is compacted: this is the compaction revision.
    pub compact_revision: i64,
}

/// Reads `request`'s range from `shard`, held here: waits up to `wait_ms` for the shard to reach
/// the start revision, passes its read barrier if asked, and answers what its store holds.
/// `WrongShard` when the shard does not hold every key of the range (a split moved some).
pub async fn read_local(
    ctx: &MemberContext,
    shard: &Shard,
    request: &ShardEventsRequest,
) -> Result<PartEvents, Status> {
    let mut applied = shard.hub.applied();
    let wait = Duration::from_millis(request.wait_ms.into());
    let reached = applied.wait_for(|revision| *revision >= request.start_revision);
    // Not reached within the wait: answered as it stands, with no event.
    let _ = tokio::time::timeout(wait, reached).await;
    let floor = match request.barrier {
        true => ctx.stamped_barrier(&shard.group).await?,
        false => 0,
    };
    let store = &shard.store;
    let (events, read_at) = match store.events(request.start_revision, MOST_EVENTS, request.prev_kv) {
        Ok(read) => read,
        Err(KvError::Compacted) => {
            return Ok(PartEvents {
                compact_revision: store.compact_revision(),
                ..Default::default()
            })
        }
        Err(refused) => return Err(errors::from_kv(refused)),
    };
    if !store.covers(&request.key, &request.range_end) {
        return Err(errors::wrong_shard());
    }
    let complete = events.len() < MOST_EVENTS;
    let (events, last_whole) = within(events, &request.key, &request.range_end);
    let resolved = match (complete, last_whole) {
        (true, None) => read_at.max(floor),
        (_, Some(last)) => last,
        (false, None) => read_at,
    };
    Ok(PartEvents {
        events,
        resolved: resolved.max(request.start_revision - 1),
        compact_revision: 0,
    })
}

/// A part of a watch on a shard held here, fed by the shard's hub, which reads each stretch of
/// the store's history once for every watcher (as for the member's own streams). What the store
/// holds that the broadcast has not brought the part (it just began, fell behind, read only part
/// of a long stretch, or the hub skipped a stretch while nobody listened) it reads from the
/// store; it waits on the broadcast only once it has read everything the store holds.
#[derive(Default)]
pub struct HubFeed {
    batches: Option<broadcast::Receiver<Arc<EventBatch>>>,
}

impl HubFeed {
    /// The part's next events from `request.start_revision` on, as soon as the shard has any.
    pub async fn next(
        &mut self,
        ctx: &MemberContext,
        shard: &Shard,
        request: &ShardEventsRequest,
    ) -> Result<PartEvents, Status> {
        use broadcast::error::{RecvError, TryRecvError};
        loop {
            let batches = self.batches.get_or_insert_with(|| shard.hub.subscribe());
            let received = match batches.try_recv() {
                Ok(batch) => Ok(batch),
                Err(TryRecvError::Lagged(_)) => Err(RecvError::Lagged(0)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
                // Nothing queued: what the store holds from the start revision on may have been
                // broadcast before the subscription, so it is read from the store.
                Err(TryRecvError::Empty) if request.start_revision <= shard.store.current_revision() => {
                    let now = ShardEventsRequest {
                        wait_ms: 0,
                        barrier: false,
                        ..request.clone()
                    };
                    return read_local(ctx, shard, &now).await;
                }
                Err(TryRecvError::Empty) => batches.recv().await,
            };
            let batch = match received {
                Ok(batch) => batch,
                Err(RecvError::Lagged(_)) => {
                    self.batches = None;
                    continue;
                }
                Err(RecvError::Closed) => return Err(errors::stopped()),
            };
            if batch.to_rev < request.start_revision {
                continue;
            }
            if batch.from_rev > request.start_revision {
                self.batches = None;
                continue;
            }
            let events = batch
                .events
                .iter()
                .filter(|e| event_revision(e) >= request.start_revision)
                .filter(|e| {
                    e.kv.as_ref()
                        .is_some_and(|kv| in_range(&kv.key, &request.key, &request.range_end))
                })
                .map(|e| Event {
                    prev_kv: e.prev_kv.clone().filter(|_| request.prev_kv),
                    ..e.clone()
                })
                .collect();
            // The hub read the batch before this check: a split committed by then shows here.
            if !shard.store.covers(&request.key, &request.range_end) {
                return Err(errors::wrong_shard());
            }
            return Ok(PartEvents {
                events,
                resolved: batch.to_rev,
                compact_revision: 0,
            });
        }
    }
}

/// The events of `[key, range_end)` out of `events`, cut at the end of the revision that
/// passes [`MOST_BYTES`] or ends the read when it was cut at [`MOST_EVENTS`]; and the last
/// revision taken whole when the cut came early (`None`: all of them were taken).
fn within(events: Vec<Event>, key: &[u8], range_end: &[u8]) -> (Vec<Event>, Option<i64>) {
    let read_all = events.len() < MOST_EVENTS;
    let last_read = events.last().map(event_revision);
    let mut taken: Vec<Event> = Vec::new();
    let mut bytes = 0;
    for event in events {
        let revision = event_revision(&event);
        let starts_revision = taken.last().is_some_and(|last| event_revision(last) != revision);
        if bytes > MOST_BYTES && starts_revision {
            return (taken, Some(revision - 1));
        }
        let in_range = event.kv.as_ref().is_some_and(|kv| in_range(&kv.key, key, range_end));
        if in_range {
            bytes += event.encoded_len();
            taken.push(event);
        }
    }
    match read_all {
        true => (taken, None),
        // The read stopped at the end of a revision: what follows it is unknown yet.
        false => (taken, last_read),
    }
}

/// Whether `candidate` lies in etcd's `key`/`range_end` pair.
fn in_range(candidate: &[u8], key: &[u8], range_end: &[u8]) -> bool {
    match range_end {
        [] => candidate == key,
        [0] => candidate >= key,
        end => candidate >= key && candidate < end,
    }
}

/// Reads `request`'s range from `shard`, held elsewhere, from a member holding a replica.
pub async fn read_remote(
    ctx: &MemberContext,
    shard: &RemoteShard,
    request: ShardEventsRequest,
    creds: &Credentials,
) -> Result<PartEvents, Status> {
    let timeout = Duration::from_millis(request.wait_ms.into()) + ctx.request_timeout;
    let request = Request::new(request);
    let answer = crate::shards::forward_to_shard(
        ctx,
        shard,
        request,
        creds,
        timeout,
        |mut client: ShardsClient<_>, r| async move { client.events(r).await },
    )
    .await?
    .into_inner();
    Ok(PartEvents {
        events: answer.events,
        resolved: answer.resolved,
        compact_revision: answer.compact_revision,
    })
}

/// Answers `Shards.Events` for a range this member holds.
pub async fn serve(ctx: &MemberContext, request: Request<ShardEventsRequest>) -> Result<ShardEventsResponse, Status> {
    let creds = Credentials::of(&request);
    let request = request.into_inner();
    let needs = [concord_storage::auth::perms::Need::new(
        concord_storage::auth::perms::Access::Read,
        &request.key,
        &request.range_end,
    )];
    ctx.auth
        .authorize_read(&creds, ctx.router.default_group(), &needs)
        .await?;
    let router = ctx.router.current();
    let shard = match router.route_for_range(&request.key, &request.range_end) {
        Ok(Route::Local(shard)) => shard.clone(),
        Ok(Route::Remote(remote)) => return Err(errors::misrouted_shard(remote.group_id)),
        Err(_) => return Err(errors::wrong_shard()),
    };
    drop(router);
    let part = read_local(ctx, &shard, &request).await?;
    Ok(ShardEventsResponse {
        header: Some(ctx.header(part.resolved)),
        events: part.events,
        resolved: part.resolved,
        compact_revision: part.compact_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::mvccpb::KeyValue;

    fn put(key: &str, revision: i64, bytes: usize) -> Event {
        Event {
            kv: Some(KeyValue {
                key: key.into(),
                mod_revision: revision,
                value: vec![b'v'; bytes],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_the_range_is_taken_and_a_large_read_ends_with_a_whole_revision() {
        let events = vec![put("a", 3, 1), put("m", 4, 1), put("b", 5, 1)];
        let (taken, last) = within(events, b"a", b"c");
        assert_eq!(taken.len(), 2);
        assert_eq!(last, None);

        let events = vec![
            put("a", 3, MOST_BYTES / 2),
            put("b", 4, MOST_BYTES / 2),
            put("b", 4, 10),
            put("a", 5, 1),
        ];
        let (taken, last) = within(events, b"a", &[0]);
        assert_eq!(taken.len(), 3);
        assert_eq!(last, Some(4));
    }

    #[test]
    fn a_read_cut_at_the_event_bound_resolves_only_what_it_read() {
        let events: Vec<Event> = (0..MOST_EVENTS as i64).map(|i| put("z", 10 + i, 1)).collect();
        let (taken, last) = within(events, b"a", b"b");
        assert!(taken.is_empty());
        assert_eq!(last, Some(10 + MOST_EVENTS as i64 - 1));
    }
}
