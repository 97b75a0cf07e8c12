//! One client Watch stream: many watchers multiplexed over one gRPC stream.
//!
//! The stream's task owns its watchers. It reacts to three things: requests
//! from the client (create, cancel, progress), batches from the hub, and the
//! progress-notify clock. Sends to the client wait for room in a queue bounded
//! in bytes ([`super::outbound`]). A task that has to wait first leaves the
//! hub's broadcast and drops the batch in hand, so a slow client pins none of
//! the member's shared history; once there is room again it subscribes anew and
//! its watchers catch up from the store, a bounded step at a time. Nothing
//! upstream waits for it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::etcdserverpb::watch_request::RequestUnion;
use concord_proto::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use concord_proto::mvccpb::Event;
use concord_storage::KvError;
use prost::Message as _;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Streaming;

use super::hub::{event_revision, EventBatch, WatchHub};
use super::outbound::{OutboundSender, TrySendError};
use super::sharded::{ShardedOut, ShardedWatcher};
use super::watcher::{Delivery, Watcher};
use crate::auth::Credentials;
use crate::context::MemberContext;
use crate::errors;
use concord_storage::auth::perms::{Access, Need};

/// etcd's id for responses that belong to no single watcher (progress replies).
const NO_WATCH_ID: i64 = -1;

struct StreamWatcher {
    watcher: Watcher,
    progress_notify: bool,
    fragment: bool,
    /// Set when the watcher follows the shards itself instead of this member's hub (a cluster
    /// with global revisions, whose keys may lie in several shards: see [`super::sharded`]).
    sharded: Option<ShardedWatcher>,
}

/// Messages from a stream's sharded watchers that may wait for the stream.
const SHARDED_BACKLOG: usize = 16;

/// The task behind one Watch stream.
pub struct WatchStreamTask {
    ctx: Arc<MemberContext>,
    hub: Arc<WatchHub>,
    out: OutboundSender,
    /// The hub's broadcast, while the stream keeps up with it; `None` after the client made
    /// the task wait, until the watchers catch up from the store.
    live: Option<broadcast::Receiver<Arc<EventBatch>>>,
    /// The batch being handed to the watchers; dropped if the client makes the task wait.
    batch: Option<Arc<EventBatch>>,
    watchers: BTreeMap<i64, StreamWatcher>,
    next_auto_id: i64,
    progress_interval: Duration,
    /// The credentials the stream was opened with: each new watcher is checked against them.
    creds: Credentials,
    /// What the stream's sharded watchers send it.
    sharded_tx: mpsc::Sender<ShardedOut>,
    sharded_rx: mpsc::Receiver<ShardedOut>,
}

impl WatchStreamTask {
    /// A task that answers on `out`.
    pub fn new(ctx: Arc<MemberContext>, hub: Arc<WatchHub>, out: OutboundSender, progress_interval: Duration) -> Self {
        let (sharded_tx, sharded_rx) = mpsc::channel(SHARDED_BACKLOG);
        WatchStreamTask {
            sharded_tx,
            sharded_rx,
            ctx,
            hub,
            out,
            live: None,
            batch: None,
            watchers: BTreeMap::new(),
            next_auto_id: 0,
            progress_interval,
            creds: Credentials::default(),
        }
    }

    /// The task of a stream opened with `creds`.
    pub fn with_credentials(mut self, creds: Credentials) -> Self {
        self.creds = creds;
        self
    }

    /// Whether the stream's caller may watch `[key, range_end)` (etcd's `isWatchPermitted`): read
    /// permission on the whole range, checked after a ReadIndex barrier (etcd checks its local
    /// state as is; the barrier keeps a lagging member from starting a watch for a user whose
    /// permission is already revoked). A refusal is answered
    /// as etcd does: a response that is created and canceled at once, with watch id -1 and the
    /// formatted gRPC error as the cancel reason.
    async fn permitted(&self, key: &[u8], range_end: &[u8]) -> Result<(), String> {
        if !self.ctx.auth.enabled() {
            return Ok(());
        }
        // etcd watches from "\0" when no key is given.
        let key = if key.is_empty() { &[0u8][..] } else { key };
        let needs = [Need::new(Access::Read, key, range_end)];
        let group = self.ctx.router.default_group();
        let checked = match group.read_barrier().await {
            Ok(()) => self.ctx.auth.authorize_read(&self.creds, group, &needs).await,
            Err(err) => Err(errors::from_raft(err)),
        };
        match checked {
            Ok(_) => Ok(()),
            Err(status) => {
                let status = match status.code() {
                    tonic::Code::Unauthenticated | tonic::Code::InvalidArgument | tonic::Code::Unavailable => status,
                    _ => errors::from_auth(concord_storage::AuthError::PermissionDenied),
                };
                Err(errors::as_cancel_reason(&status))
            }
        }
    }

    /// Serves the stream until the client goes away.
    pub async fn run(mut self, mut inbound: Streaming<WatchRequest>) {
        let mut progress = tokio::time::interval(self.progress_interval);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        progress.tick().await;
        loop {
            // Catching up can make the task wait for the client again, and leave again.
            while self.live.is_none() {
                if !self.rejoin().await {
                    return;
                }
            }
            let keep_going = tokio::select! {
                request = inbound.next() => match request {
                    Some(Ok(request)) => self.on_request(request).await,
                    _ => false,
                },
                batch = next_batch(&mut self.live) => match batch {
                    Ok(batch) => self.on_batch(batch).await,
                    // Batches were dropped for this stream: every watcher
                    // that missed some reads them from the store instead.
                    Err(RecvError::Lagged(_)) => self.catch_up_all().await,
                    Err(RecvError::Closed) => false,
                },
                _ = progress.tick() => self.notify_progress().await,
                Some(message) = self.sharded_rx.recv() => self.on_sharded(message).await,
            };
            if !keep_going {
                break;
            }
        }
    }

    /// Subscribes to the hub's broadcast and catches every watcher up with the store, which
    /// holds everything broadcast while the stream was away.
    async fn rejoin(&mut self) -> bool {
        self.live = Some(self.hub.subscribe());
        self.catch_up_all().await
    }

    /// Queues `resp` for the client; false once the client has gone. If the client is behind,
    /// the stream leaves the broadcast before it waits for room (see [`Self::rejoin`]).
    async fn send(&mut self, resp: WatchResponse) -> bool {
        let resp = match self.out.try_send(resp) {
            Ok(()) => return true,
            Err(TrySendError::Closed) => return false,
            Err(TrySendError::Full(resp)) => resp,
        };
        self.live = None;
        self.batch = None;
        self.out.send(resp).await
    }

    fn response(&self, watch_id: i64, revision: i64) -> WatchResponse {
        WatchResponse {
            header: Some(self.ctx.header(revision)),
            watch_id,
            ..Default::default()
        }
    }

    async fn on_request(&mut self, request: WatchRequest) -> bool {
        match request.request_union {
            Some(RequestUnion::CreateRequest(create)) => self.create(create).await,
            Some(RequestUnion::CancelRequest(cancel)) => {
                if self.watchers.remove(&cancel.watch_id).is_some() {
                    let mut resp = self.response(cancel.watch_id, self.hub.store().current_revision());
                    resp.canceled = true;
                    return self.send(resp).await;
                }
                true
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                let current = self.hub.store().current_revision();
                // Everything up to the slowest watcher's position has been sent.
                let revision = self
                    .watchers
                    .values()
                    .map(|w| w.watcher.next_rev - 1)
                    .min()
                    .unwrap_or(current)
                    .min(current);
                self.send(self.response(NO_WATCH_ID, revision)).await
            }
            None => true,
        }
    }

    /// Answers a create request that makes no watcher as etcd does: created and canceled at
    /// once, with no watch id (-1) and the reason.
    async fn refuse_create(&mut self, reason: String) -> bool {
        let mut resp = self.response(NO_WATCH_ID, self.hub.store().current_revision());
        resp.created = true;
        resp.canceled = true;
        resp.cancel_reason = reason;
        self.send(resp).await
    }

    /// Whether the stream's hub (group 1's) sees every change of `[key, range_end)`: it does
    /// unless the keyspace is split and the range reaches past the first shard (a keyspace is only
    /// split with global revisions, whose watchers follow the shards themselves).
    fn in_hub_shard(&self, key: &[u8], range_end: &[u8]) -> Result<(), tonic::Status> {
        let router = self.ctx.router.current();
        match router.route_for_range(key, range_end) {
            Ok(route) if route.group_id() == self.ctx.router.default_group().group_id() => Ok(()),
            Ok(_) => Err(errors::unsharded_only("watching keys outside the first shard")),
            Err(spans) => Err(errors::read_spans_shards(&spans.groups)),
        }
    }

    async fn create(&mut self, create: WatchCreateRequest) -> bool {
        if let Err(reason) = self.permitted(&create.key, &create.range_end).await {
            return self.refuse_create(reason).await;
        }
        let sharded = self.ctx.router.default_group().is_stamped();
        if !sharded {
            if let Err(refused) = self.in_hub_shard(&create.key, &create.range_end) {
                return self.refuse_create(errors::as_cancel_reason(&refused)).await;
            }
        }
        // A range that holds no key (`key` at or past `range_end`; "\0" means every key from
        // `key` on) is refused by etcd's mvcc when the watch is made, not watched forever.
        if !create.range_end.is_empty() && create.range_end != [0] && create.key >= create.range_end {
            return self.refuse_create(errors::WATCHER_RANGE_EMPTY.into()).await;
        }
        let current = match sharded {
            // Above every write that completed before the watch was asked for, whatever its shard.
            true => match self.ctx.revisions.allocate(1).await {
                Ok(revision) => revision,
                Err(reason) => {
                    return self
                        .refuse_create(errors::as_cancel_reason(&errors::no_revisions(&reason)))
                        .await
                }
            },
            false => self.hub.store().current_revision(),
        };
        let id = if create.watch_id != 0 {
            create.watch_id
        } else {
            while self.watchers.contains_key(&self.next_auto_id) {
                self.next_auto_id += 1;
            }
            self.next_auto_id
        };
        if self.watchers.contains_key(&id) || id < 0 {
            return self.refuse_create(errors::WATCHER_DUPLICATE_ID.into()).await;
        }
        if create.watch_id == 0 {
            self.next_auto_id += 1;
        }
        let next_rev = if create.start_revision > 0 {
            create.start_revision
        } else {
            current + 1
        };
        let watcher = Watcher::new(create.key, create.range_end, &create.filters, create.prev_kv, next_rev);
        let mut created = self.response(id, current);
        created.created = true;
        if !self.send(created).await {
            return false;
        }
        let follower = sharded.then(|| {
            let (ctx, creds, tx) = (self.ctx.clone(), self.creds.clone(), self.sharded_tx.clone());
            super::sharded::start(ctx, id, watcher.clone(), creds, tx)
        });
        self.watchers.insert(
            id,
            StreamWatcher {
                watcher,
                progress_notify: create.progress_notify,
                fragment: create.fragment,
                sharded: follower,
            },
        );
        if !sharded && next_rev <= current {
            return self.catch_up(id).await;
        }
        true
    }

    /// Hands `batch` to every watcher, until the client makes the task wait: the watchers
    /// not served by then catch up from the store when the stream rejoins the broadcast.
    async fn on_batch(&mut self, batch: Arc<EventBatch>) -> bool {
        let to_rev = batch.to_rev;
        self.batch = Some(batch);
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            let delivery = {
                let Some(batch) = self.batch.as_deref() else { break };
                let Some(w) = self.watchers.get_mut(&id).filter(|w| w.sharded.is_none()) else {
                    continue;
                };
                w.watcher.deliver(batch)
            };
            match delivery {
                Delivery::Nothing => {}
                Delivery::Events(events) => {
                    if !events.is_empty() && !self.send_events(id, events, to_rev).await {
                        return false;
                    }
                }
                Delivery::CatchUp => {
                    if !self.catch_up(id).await {
                        return false;
                    }
                }
            }
        }
        self.batch = None;
        true
    }

    /// Takes what a sharded watcher sends, unless the watcher it came from was canceled since.
    async fn on_sharded(&mut self, message: ShardedOut) -> bool {
        let (id, serial) = match &message {
            ShardedOut::Events { id, serial, .. } | ShardedOut::Ended { id, serial, .. } => (*id, *serial),
        };
        let Some(w) = self.watchers.get_mut(&id) else {
            return true;
        };
        if w.sharded.as_ref().is_none_or(|s| s.serial != serial) {
            return true;
        }
        match message {
            ShardedOut::Events { events, revision, .. } => {
                w.watcher.next_rev = revision + 1;
                events.is_empty() || self.send_events(id, events, revision).await
            }
            ShardedOut::Ended {
                compact_revision,
                reason,
                ..
            } => {
                let position = w.watcher.next_rev - 1;
                self.watchers.remove(&id);
                let mut resp = self.response(id, position);
                resp.canceled = true;
                resp.compact_revision = compact_revision;
                resp.cancel_reason = reason;
                self.send(resp).await
            }
        }
    }

    async fn catch_up_all(&mut self) -> bool {
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.sharded.is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if !self.catch_up(id).await {
                return false;
            }
        }
        true
    }

    /// Reads watcher `id`'s missing history from the store and sends it.
    async fn catch_up(&mut self, id: i64) -> bool {
        loop {
            let store = self.hub.store().clone();
            let Some(w) = self.watchers.get_mut(&id) else {
                return true;
            };
            match w.watcher.catch_up_step(&store) {
                Ok((events, revision, done)) => {
                    if !events.is_empty() && !self.send_events(id, events, revision).await {
                        return false;
                    }
                    if done {
                        return true;
                    }
                }
                Err(err) => {
                    self.watchers.remove(&id);
                    let mut resp = self.response(id, store.current_revision());
                    resp.canceled = true;
                    if err == KvError::Compacted {
                        // etcd says only compact_revision here, with no cancel_reason: clients
                        // (clientv3, etcdctl) derive "required revision has been compacted".
                        resp.compact_revision = store.compact_revision();
                    } else {
                        resp.cancel_reason = err.to_string();
                    }
                    return self.send(resp).await;
                }
            }
        }
    }

    /// Sends events for one watcher in responses of at most the request size
    /// limit. Without `fragment`, responses break only between revisions (a
    /// revision larger than the limit goes whole); with it, a response may
    /// break anywhere and all but the last part carry `fragment`, as in etcd.
    async fn send_events(&mut self, id: i64, events: Vec<Event>, revision: i64) -> bool {
        let fragment = self.watchers.get(&id).is_some_and(|w| w.fragment);
        let limit = self.ctx.limits.max_request_bytes;
        let template = self.response(id, revision);
        let total = events.len();
        let mut part = Vec::new();
        let mut size = 0;
        for (i, event) in events.into_iter().enumerate() {
            let starts_revision = part
                .last()
                .is_none_or(|last: &Event| event_revision(last) != event_revision(&event));
            if !part.is_empty() && size + event.encoded_len() > limit && (fragment || starts_revision) {
                let mut resp = template.clone();
                resp.events = std::mem::take(&mut part);
                resp.fragment = fragment && !starts_revision;
                if !self.send(resp).await {
                    return false;
                }
                size = 0;
            }
            size += event.encoded_len();
            part.push(event);
            if i + 1 == total {
                let mut resp = template.clone();
                resp.events = std::mem::take(&mut part);
                return self.send(resp).await;
            }
        }
        true
    }

    /// Tells watchers that asked for progress notifications how far they are.
    async fn notify_progress(&mut self) -> bool {
        let current = self.hub.store().current_revision();
        let due: Vec<(i64, i64)> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && (w.sharded.is_some() || w.watcher.next_rev > current))
            .map(|(id, w)| (*id, w.watcher.next_rev - 1))
            .collect();
        for (id, revision) in due {
            if !self.send(self.response(id, revision)).await {
                return false;
            }
        }
        true
    }
}

/// The next batch of the hub's broadcast; never, while the stream is not subscribed.
async fn next_batch(live: &mut Option<broadcast::Receiver<Arc<EventBatch>>>) -> Result<Arc<EventBatch>, RecvError> {
    match live {
        Some(batches) => batches.recv().await,
        None => std::future::pending().await,
    }
}
