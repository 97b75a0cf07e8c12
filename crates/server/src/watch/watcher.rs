//! One watcher's position in history and its filter, independent of how its
//! events reach the client: the gRPC stream and internal waiters (locks,
//! elections) share it.

use std::sync::Arc;

use concord_proto::etcdserverpb::watch_create_request::FilterType;
use concord_proto::mvccpb::event::EventType;
use concord_proto::mvccpb::Event;
use concord_storage::{KvError, MvccStore};

use super::hub::{event_revision, EventBatch};

/// Events read from the store per catch-up step.
const CATCH_UP_EVENTS: usize = 1000;

/// What a watcher watches and where it stands.
#[derive(Clone, Debug)]
pub struct Watcher {
    key: Vec<u8>,
    /// Empty: only `key`; `[0]`: every key from `key` on; else `[key, range_end)`.
    range_end: Vec<u8>,
    skip_puts: bool,
    skip_deletes: bool,
    prev_kv: bool,
    /// The next revision this watcher has not seen yet.
    pub next_rev: i64,
}

/// What a batch meant for a watcher.
pub enum Delivery {
    /// The watcher is at or past the batch.
    Nothing,
    /// These events (possibly none) advance it past the batch.
    Events(Vec<Event>),
    /// The watcher is behind the batch and must catch up from the store first.
    CatchUp,
}

impl Watcher {
    /// A watcher over `[key, range_end)` from `next_rev` on.
    pub fn new(key: Vec<u8>, range_end: Vec<u8>, filters: &[i32], prev_kv: bool, next_rev: i64) -> Self {
        Watcher {
            key,
            range_end,
            skip_puts: filters.contains(&(FilterType::Noput as i32)),
            skip_deletes: filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv,
            next_rev,
        }
    }

    fn covers(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            key == self.key.as_slice()
        } else if self.range_end.as_slice() == [0] {
            key >= self.key.as_slice()
        } else {
            key >= self.key.as_slice() && key < self.range_end.as_slice()
        }
    }

    /// Whether this watcher wants `event`, and in what form.
    fn select(&self, event: &Event) -> Option<Event> {
        let kv = event.kv.as_ref()?;
        if !self.covers(&kv.key) {
            return None;
        }
        let is_delete = event.r#type == EventType::Delete as i32;
        if (is_delete && self.skip_deletes) || (!is_delete && self.skip_puts) {
            return None;
        }
        let mut out = event.clone();
        if !self.prev_kv {
            out.prev_kv = None;
        }
        Some(out)
    }

    /// Takes what this watcher needs from a broadcast batch.
    pub fn deliver(&mut self, batch: &EventBatch) -> Delivery {
        if self.next_rev > batch.to_rev {
            return Delivery::Nothing;
        }
        if self.next_rev < batch.from_rev {
            return Delivery::CatchUp;
        }
        let events = batch
            .events
            .iter()
            .filter(|e| event_revision(e) >= self.next_rev)
            .filter_map(|e| self.select(e))
            .collect();
        self.next_rev = batch.to_rev + 1;
        Delivery::Events(events)
    }

    /// Reads the next stretch of history from the store. Returns the events
    /// for this watcher, the store revision read at, and whether the watcher
    /// has now caught up with that revision.
    pub fn catch_up_step(&mut self, store: &Arc<MvccStore>) -> Result<(Vec<Event>, i64, bool), KvError> {
        let (events, snapshot_rev) = store.events(self.next_rev, CATCH_UP_EVENTS, true)?;
        let done = events.len() < CATCH_UP_EVENTS;
        let reached = if done {
            snapshot_rev
        } else {
            events.last().map_or(snapshot_rev, event_revision)
        };
        let selected = events.iter().filter_map(|e| self.select(e)).collect();
        self.next_rev = self.next_rev.max(reached + 1);
        Ok((selected, snapshot_rev, done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::mvccpb::KeyValue;

    fn put(key: &str, rev: i64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue { key: key.into(), mod_revision: rev, ..Default::default() }),
            prev_kv: Some(KeyValue::default()),
        }
    }

    #[test]
    fn batches_are_filtered_by_range_revision_and_type() {
        let batch = EventBatch { from_rev: 5, to_rev: 7, events: vec![put("a", 5), put("b", 6), put("c", 7)] };
        let mut w = Watcher::new(b"a".to_vec(), b"c".to_vec(), &[], false, 6);
        let Delivery::Events(got) = w.deliver(&batch) else { panic!("expected events") };
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kv.as_ref().unwrap().key, b"b");
        assert!(got[0].prev_kv.is_none());
        assert_eq!(w.next_rev, 8);
        assert!(matches!(w.deliver(&batch), Delivery::Nothing));

        let mut behind = Watcher::new(b"a".to_vec(), vec![0], &[], true, 2);
        assert!(matches!(behind.deliver(&batch), Delivery::CatchUp));

        let mut no_puts = Watcher::new(b"a".to_vec(), vec![0], &[FilterType::Noput as i32], false, 5);
        let Delivery::Events(got) = no_puts.deliver(&batch) else { panic!("expected events") };
        assert!(got.is_empty());
    }
}
