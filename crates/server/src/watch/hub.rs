//! The member's source of change events: one task reads each newly applied
//! stretch of history from the store once and broadcasts it to every watch
//! stream, so the cost of reading history does not grow with the number of
//! watchers.
//!
//! The broadcast is bounded. A stream that falls behind it (a slow client)
//! loses its place in the broadcast and catches up from the store on its own,
//! as etcd's unsynced watchers do; writers never wait for watchers.

use std::sync::Arc;

use concord_proto::mvccpb::Event;
use concord_storage::{KvError, MvccStore};
use tokio::sync::{broadcast, watch};

/// Batches the broadcast holds for streams that have not read them yet.
const BROADCAST_BATCHES: usize = 1024;
/// The same for a shard split off the first (see [`WatchHub::for_shard`]).
const SHARD_BROADCAST_BATCHES: usize = 64;
/// Most events the hub reads from the store at once.
const HUB_READ_EVENTS: usize = 4096;

/// Every change in the store revisions `from_rev..=to_rev`, in order.
#[derive(Debug)]
pub struct EventBatch {
    /// The first revision the batch covers.
    pub from_rev: i64,
    /// The last revision the batch covers.
    pub to_rev: i64,
    /// The changes, with `prev_kv` filled where history still holds it.
    pub events: Vec<Event>,
}

/// Publishes applied changes to the member's watch streams.
pub struct WatchHub {
    store: Arc<MvccStore>,
    batches: broadcast::Sender<Arc<EventBatch>>,
    applied_revision: watch::Sender<i64>,
    /// What the member's Watch streams may queue for their clients together.
    outbound_budget: Arc<tokio::sync::Semaphore>,
    /// Told when the hub's shard leaves the member: [`WatchHub::run`] then returns and lets the
    /// store go.
    stopped: tokio::sync::Notify,
}

impl WatchHub {
    /// A hub over `store`; call [`WatchHub::run`] on a task to start publishing.
    pub fn new(store: Arc<MvccStore>) -> Arc<Self> {
        Self::with_capacity(store, BROADCAST_BATCHES)
    }

    /// A hub over the store of a shard split off the first. A member may hold a thousand of
    /// them, and a broadcast's slots are allocated up front, so they keep fewer batches; a
    /// stream that falls behind reads the rest from the store, as from any hub.
    pub fn for_shard(store: Arc<MvccStore>) -> Arc<Self> {
        Self::with_capacity(store, SHARD_BROADCAST_BATCHES)
    }

    fn with_capacity(store: Arc<MvccStore>, batches: usize) -> Arc<Self> {
        let (batches, _) = broadcast::channel(batches);
        let (applied_revision, _) = watch::channel(store.current_revision());
        Arc::new(WatchHub {
            store,
            batches,
            applied_revision,
            outbound_budget: super::outbound::member_budget(),
            stopped: tokio::sync::Notify::new(),
        })
    }

    /// The member-wide budget of the Watch streams' outbound queues (see
    /// [`super::outbound::MEMBER_OUTBOUND_BYTES`]).
    pub fn outbound_budget(&self) -> Arc<tokio::sync::Semaphore> {
        self.outbound_budget.clone()
    }

    /// The store the hub reads from.
    pub fn store(&self) -> &Arc<MvccStore> {
        &self.store
    }

    /// Called after each apply: the store now stands at `revision`.
    pub fn notify_applied(&self, revision: i64) {
        self.applied_revision.send_if_modified(|r| {
            let changed = *r != revision;
            *r = revision;
            changed
        });
    }

    /// The store's revision after each apply, for waiters that read the store themselves.
    pub fn applied(&self) -> watch::Receiver<i64> {
        self.applied_revision.subscribe()
    }

    /// Subscribes to batches published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventBatch>> {
        self.batches.subscribe()
    }

    /// Stops [`WatchHub::run`]: the hub's shard left this member.
    pub fn stop(&self) {
        self.stopped.notify_one();
    }

    /// Publishes history as it is applied, until [`WatchHub::stop`].
    pub async fn run(self: Arc<Self>) {
        let mut applied = self.applied_revision.subscribe();
        let mut published = self.store.current_revision();
        loop {
            let go_on = tokio::select! {
                changed = applied.changed() => changed.is_ok(),
                () = self.stopped.notified() => false,
            };
            if !go_on {
                return;
            }
            let target = *applied.borrow_and_update();
            if self.batches.receiver_count() == 0 {
                // Nobody is watching: skip reading the history. A stream that subscribes
                // later starts from the store on its own, and one that subscribes between
                // this check and the next batch sees that batch begin past the revision it
                // expects, and catches up from the store.
                published = target;
                continue;
            }
            while published < target {
                match self.store.events(published + 1, HUB_READ_EVENTS, true) {
                    Ok((events, snapshot_rev)) => {
                        let to_rev = if events.len() >= HUB_READ_EVENTS {
                            events.last().map_or(snapshot_rev, event_revision)
                        } else {
                            snapshot_rev
                        };
                        let batch = EventBatch {
                            from_rev: published + 1,
                            to_rev,
                            events,
                        };
                        published = to_rev;
                        // No receiver is fine: nobody is watching.
                        let _ = self.batches.send(Arc::new(batch));
                    }
                    Err(KvError::Compacted) => {
                        // History was compacted before the hub read it: skip
                        // ahead; streams see the gap and catch up on their own
                        // (and learn of the compaction there).
                        published = self.store.current_revision();
                    }
                    Err(e) => {
                        tracing::error!("watch hub cannot read history: {e}");
                        break;
                    }
                }
            }
        }
    }
}

/// The revision at which an event happened.
pub fn event_revision(event: &Event) -> i64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}
