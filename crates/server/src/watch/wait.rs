//! Waiting on history from inside the server, for Lock and Election:
//! the same watcher logic as client streams, without a client.

use std::sync::Arc;

use concord_proto::mvccpb::Event;
use concord_storage::KvError;
use tokio::sync::broadcast::error::RecvError;

use super::hub::WatchHub;
use super::watcher::{Delivery, Watcher};

/// Reads the store until the watcher has caught up; returns its first events, if any.
fn catch_up(hub: &WatchHub, watcher: &mut Watcher) -> Result<Option<Vec<Event>>, KvError> {
    loop {
        let (events, _, done) = watcher.catch_up_step(hub.store())?;
        if !events.is_empty() {
            return Ok(Some(events));
        }
        if done {
            return Ok(None);
        }
    }
}

/// Returns the first events `watcher` sees, waiting for them if needed.
pub async fn next_events(hub: &Arc<WatchHub>, watcher: &mut Watcher) -> Result<Vec<Event>, KvError> {
    // Subscribe before reading the store, so nothing applied in between is missed.
    let mut batches = hub.subscribe();
    if let Some(events) = catch_up(hub, watcher)? {
        return Ok(events);
    }
    loop {
        let found = match batches.recv().await {
            Ok(batch) => match watcher.deliver(&batch) {
                Delivery::Events(events) if !events.is_empty() => Some(events),
                Delivery::Events(_) | Delivery::Nothing => None,
                Delivery::CatchUp => catch_up(hub, watcher)?,
            },
            Err(RecvError::Lagged(_)) => catch_up(hub, watcher)?,
            Err(RecvError::Closed) => return Err(KvError::Internal("watch hub stopped".into())),
        };
        if let Some(events) = found {
            return Ok(events);
        }
    }
}
