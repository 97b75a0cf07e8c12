//! A watcher in a cluster whose writes carry global revisions, whose keys may lie in several
//! shards, held here or elsewhere.
//!
//! The watched range is cut into the parts the shards hold (`KeyRouter::parts_of_range`). A task
//! per part follows its shard ([`super::shard_events`]): from the shard's hub when the shard is
//! held here (the history is read once for every watcher), else by long polls of a member
//! holding it; it hands the part's events and how far they are resolved to the watcher's task, which merges the parts in revision order ([`super::merge`]). While an event
//! is held back for a part resolved below it, that part passes its shard's stamped read barrier,
//! which resolves it past every revision handed out before, so a quiet shard holds nothing up
//! for long. A watch within one shard never needs a barrier.
//!
//! When the shards change (a split, a move of replicas) or a part fails, the parts are planned
//! again from the router and followed from the last revision released: the shards' stores check
//! after each read that they still hold the part's keys, and a split copies the moved keys'
//! history to the new shard, so nothing is lost or repeated.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concord_proto::concordpb::ShardEventsRequest;
use concord_proto::mvccpb::Event;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tonic::Status;

use super::hub::event_revision;
use super::merge::Merge;
use super::shard_events::{read_local, read_remote, HubFeed, PartEvents};
use super::watcher::Watcher;
use crate::auth::Credentials;
use crate::context::MemberContext;
use crate::router::{RemoteShard, Route, Shard};

/// How long a part's read waits for its shard to change before answering with nothing.
const LONG_POLL_MS: u32 = 5_000;
/// How long a watcher whose part failed waits for the shards to change before it plans again.
const RETRY_AFTER: Duration = Duration::from_millis(200);

/// What a sharded watcher's task tells its stream.
#[derive(Debug)]
pub enum ShardedOut {
    /// The watcher's next events (possibly none): every event up to `revision` is out.
    Events {
        /// The stream's id of the watcher.
        id: i64,
        /// Which watcher of that id (ids are reused after a cancel).
        serial: u64,
        /// The events, in revision order, filtered as the watcher asked.
        events: Vec<Event>,
        /// Where the watcher stands now.
        revision: i64,
    },
    /// The watcher ends: its next revision is compacted (`compact_revision` > 0), or `reason`.
    Ended {
        /// The stream's id of the watcher.
        id: i64,
        /// Which watcher of that id.
        serial: u64,
        /// The compaction revision when the history asked for is gone, else 0.
        compact_revision: i64,
        /// Why the watcher ended otherwise.
        reason: String,
    },
}

/// A running sharded watcher; dropping it stops its task and its parts.
pub struct ShardedWatcher {
    /// Tells this watcher's messages from those of an earlier watcher with the same id.
    pub serial: u64,
    task: tokio::task::AbortHandle,
}

impl Drop for ShardedWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts following `watcher` (under stream id `id`) for a caller with `creds`; its events go
/// to `out`.
pub fn start(
    ctx: Arc<MemberContext>,
    id: i64,
    watcher: Watcher,
    creds: Credentials,
    out: mpsc::Sender<ShardedOut>,
) -> ShardedWatcher {
    static SERIALS: AtomicU64 = AtomicU64::new(1);
    let serial = SERIALS.fetch_add(1, Ordering::Relaxed);
    let follower = Follower {
        ctx,
        id,
        serial,
        watcher,
        creds,
        out,
    };
    let task = tokio::spawn(follower.run()).abort_handle();
    ShardedWatcher { serial, task }
}

/// Where one part of the range is read from.
#[derive(Clone)]
enum Source {
    Local(Shard),
    Remote(RemoteShard),
}

/// One part of the watched range and its shard.
#[derive(Clone)]
struct PlannedPart {
    source: Source,
    key: Vec<u8>,
    range_end: Vec<u8>,
    /// Whether its events carry the versions they replaced.
    prev_kv: bool,
}

/// Why following the parts as planned stopped.
enum Stop {
    /// The shards changed or a part failed: plan again.
    Replan,
    /// The watcher ended, or its stream is gone.
    Ended,
}

struct Follower {
    ctx: Arc<MemberContext>,
    id: i64,
    serial: u64,
    watcher: Watcher,
    creds: Credentials,
    out: mpsc::Sender<ShardedOut>,
}

impl Follower {
    async fn run(mut self) {
        loop {
            let version = self.ctx.router.version();
            let parts = self.plan();
            match self.follow(parts, version).await {
                Stop::Replan => continue,
                Stop::Ended => return,
            }
        }
    }

    /// The parts of the watched range as the router has them now.
    fn plan(&self) -> Vec<PlannedPart> {
        let router = self.ctx.router.current();
        router
            .parts_of_range(self.watcher.key(), self.watcher.range_end())
            .into_iter()
            .map(|(route, key, range_end)| PlannedPart {
                source: match route {
                    Route::Local(shard) => Source::Local(shard.clone()),
                    Route::Remote(remote) => Source::Remote(remote.clone()),
                },
                key,
                range_end,
                prev_kv: self.watcher.wants_prev_kv(),
            })
            .collect()
    }

    /// Follows `parts` from the watcher's position until the router changes from `version`, a
    /// part fails, or the watcher ends.
    async fn follow(&mut self, parts: Vec<PlannedPart>, version: u64) -> Stop {
        let released = self.watcher.next_rev - 1;
        let (tx, mut rx) = mpsc::channel(parts.len().max(1));
        let (held_back, _) = watch::channel(0);
        let (released_to, _) = watch::channel(released);
        let mut tasks = JoinSet::new();
        let count = parts.len();
        for (i, part) in parts.into_iter().enumerate() {
            let follow = follow_part(
                self.ctx.clone(),
                i,
                part,
                released + 1,
                self.creds.clone(),
                Signals {
                    held_back: held_back.subscribe(),
                    released: released_to.subscribe(),
                },
                tx.clone(),
            );
            tasks.spawn(follow);
        }
        drop(tx);
        let mut merge = Merge::new(count, released);
        let mut routes = self.ctx.router.subscribe();
        if *routes.borrow_and_update() != version {
            return Stop::Replan;
        }
        if count == 0 {
            // No shard holds any of the range (never so for a range that holds a key): nothing
            // comes until the shards change.
            return match routes.changed().await {
                Ok(()) => Stop::Replan,
                Err(_) => Stop::Ended,
            };
        }
        loop {
            let got = tokio::select! {
                got = rx.recv() => got,
                changed = routes.changed() => return match changed {
                    Ok(()) => Stop::Replan,
                    Err(_) => Stop::Ended,
                },
            };
            match got {
                Some((_, Ok(part))) if part.compact_revision > 0 => {
                    return self.end(part.compact_revision, String::new()).await;
                }
                Some((i, Ok(part))) => {
                    merge.push(i, part.events, part.resolved);
                    let events: Vec<Event> = merge.release().iter().filter_map(|e| self.watcher.select(e)).collect();
                    if merge.released() >= self.watcher.next_rev {
                        self.watcher.next_rev = merge.released() + 1;
                        let message = ShardedOut::Events {
                            id: self.id,
                            serial: self.serial,
                            events,
                            revision: merge.released(),
                        };
                        if self.out.send(message).await.is_err() {
                            return Stop::Ended;
                        }
                    }
                    held_back.send_replace(merge.held_back().unwrap_or(0));
                    released_to.send_replace(merge.released());
                }
                Some((_, Err(failed))) if is_final(&failed) => {
                    return self.end(0, crate::errors::as_cancel_reason(&failed)).await;
                }
                Some((_, Err(failed))) => {
                    tracing::debug!("a part of watcher {} failed, planning again: {failed}", self.id);
                    tokio::select! {
                        _ = routes.changed() => {}
                        () = tokio::time::sleep(RETRY_AFTER) => {}
                    }
                    return Stop::Replan;
                }
                None => return Stop::Replan,
            }
        }
    }

    async fn end(&self, compact_revision: i64, reason: String) -> Stop {
        let ended = ShardedOut::Ended {
            id: self.id,
            serial: self.serial,
            compact_revision,
            reason,
        };
        let _ = self.out.send(ended).await;
        Stop::Ended
    }
}

/// Whether a part's failure ends the watcher rather than being tried again.
fn is_final(failed: &Status) -> bool {
    matches!(
        failed.code(),
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated | tonic::Code::InvalidArgument
    )
}

/// What a part's task learns from its watcher's.
struct Signals {
    /// The revision of the first event the watcher holds back (0: none).
    held_back: watch::Receiver<i64>,
    /// Every event up to this revision is released.
    released: watch::Receiver<i64>,
}

/// Follows one part from `from` on, handing each read to the watcher as `(i, read)`. It waits
/// for the shard to change, unless the watcher holds back an event above where the part is
/// resolved: then it passes the shard's barrier at once. It reads no further while the watcher
/// still holds back events of its last read, so a part ahead of the others waits for them
/// rather than pile up events.
async fn follow_part(
    ctx: Arc<MemberContext>,
    i: usize,
    part: PlannedPart,
    mut from: i64,
    creds: Credentials,
    signals: Signals,
    tx: mpsc::Sender<(usize, Result<PartEvents, Status>)>,
) {
    let Signals {
        mut held_back,
        mut released,
    } = signals;
    let mut resolved = from - 1;
    let mut feed = HubFeed::default();
    loop {
        let urgent = *held_back.borrow_and_update() > resolved;
        let request = ShardEventsRequest {
            key: part.key.clone(),
            range_end: part.range_end.clone(),
            start_revision: from,
            prev_kv: part.prev_kv,
            wait_ms: if urgent { 0 } else { LONG_POLL_MS },
            barrier: urgent,
        };
        let read = read_part(&ctx, &part.source, request, &creds, &mut feed, urgent);
        let read = match urgent {
            true => read.await,
            false => tokio::select! {
                read = read => read,
                // An event of another part waits for this one: read again, with the barrier.
                _ = held_back.wait_for(|revision| *revision > resolved) => continue,
            },
        };
        let (last, newest) = match &read {
            Ok(part) if part.compact_revision == 0 => {
                resolved = resolved.max(part.resolved);
                from = resolved + 1;
                (false, part.events.last().map(event_revision))
            }
            _ => (true, None),
        };
        if tx.send((i, read)).await.is_err() || last {
            return;
        }
        if let Some(newest) = newest {
            if released.wait_for(|released| *released >= newest).await.is_err() {
                return;
            }
        }
    }
}

/// The part's next read: from its shard's hub while it waits for changes here, from the store
/// after the shard's barrier when `urgent`, from a member holding the shard elsewhere.
async fn read_part(
    ctx: &MemberContext,
    source: &Source,
    request: ShardEventsRequest,
    creds: &Credentials,
    feed: &mut HubFeed,
    urgent: bool,
) -> Result<PartEvents, Status> {
    match source {
        Source::Local(shard) if !urgent => feed.next(ctx, shard, &request).await,
        Source::Local(shard) => read_local(ctx, shard, &request).await,
        Source::Remote(remote) => read_remote(ctx, remote, request, creds).await,
    }
}
