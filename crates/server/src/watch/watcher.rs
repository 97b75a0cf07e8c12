//! One watcher's position in history and its filter, independent of how its
//! events reach the client: the gRPC stream and internal waiters (locks,
//! elections) share it.

use std::sync::Arc;

use concord_proto::etcdserverpb::watch_create_request::FilterType;
use concord_proto::mvccpb::event::EventType;
use concord_proto::mvccpb::Event;
use concord_storage::{KvError, MvccStore};
use prost::Message as _;

use super::hub::{event_revision, EventBatch};

/// Events read from the store per catch-up step.
const CATCH_UP_EVENTS: usize = 1000;
/// Bytes of events a watcher takes at once, from a broadcast batch or a catch-up step, so that
/// a stream waiting for a slow client holds at most this much (and the rest of one revision).
pub const DELIVERY_BYTES: usize = 1024 * 1024;

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

    /// The first key watched.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// etcd's end of the watched range.
    pub fn range_end(&self) -> &[u8] {
        &self.range_end
    }

    /// Whether the watcher's events carry the versions they replaced.
    pub fn wants_prev_kv(&self) -> bool {
        self.prev_kv
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
    pub fn select(&self, event: &Event) -> Option<Event> {
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

    /// Takes what this watcher needs from a broadcast batch. More than [`DELIVERY_BYTES`] of
    /// events is left to a catch-up from the store, which takes them a bounded step at a time.
    pub fn deliver(&mut self, batch: &EventBatch) -> Delivery {
        if self.next_rev > batch.to_rev {
            return Delivery::Nothing;
        }
        if self.next_rev < batch.from_rev {
            return Delivery::CatchUp;
        }
        let mut events = Vec::new();
        let mut bytes = 0;
        for event in batch.events.iter().filter(|e| event_revision(e) >= self.next_rev) {
            let Some(event) = self.select(event) else { continue };
            bytes += event.encoded_len();
            if bytes > DELIVERY_BYTES {
                return Delivery::CatchUp;
            }
            events.push(event);
        }
        self.next_rev = batch.to_rev + 1;
        Delivery::Events(events)
    }

    /// Reads the next stretch of history from the store. Returns the events
    /// for this watcher, the store revision read at, and whether the watcher
    /// has now caught up with that revision.
    pub fn catch_up_step(&mut self, store: &Arc<MvccStore>) -> Result<(Vec<Event>, i64, bool), KvError> {
        let (events, snapshot_rev) = store.events(self.next_rev, CATCH_UP_EVENTS, true)?;
        let read_all = events.len() < CATCH_UP_EVENTS;
        let read_to = if read_all {
            snapshot_rev
        } else {
            events.last().map_or(snapshot_rev, event_revision)
        };
        let (selected, reached) = self.select_up_to(&events, read_to);
        self.next_rev = self.next_rev.max(reached + 1);
        Ok((selected, snapshot_rev, read_all && reached == read_to))
    }

    /// The events this watcher wants out of `events` (which cover the revisions up to
    /// `read_to`), stopping at the first revision that starts past [`DELIVERY_BYTES`]; and the
    /// last revision wholly taken.
    fn select_up_to(&self, events: &[Event], read_to: i64) -> (Vec<Event>, i64) {
        let mut selected: Vec<Event> = Vec::new();
        let mut bytes = 0;
        for event in events {
            let revision = event_revision(event);
            let starts_revision = selected.last().is_some_and(|last| event_revision(last) != revision);
            if bytes > DELIVERY_BYTES && starts_revision {
                return (selected, revision - 1);
            }
            if let Some(event) = self.select(event) {
                bytes += event.encoded_len();
                selected.push(event);
            }
        }
        (selected, read_to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::mvccpb::KeyValue;

    fn put(key: &str, rev: i64) -> Event {
        Event {
            r#type: EventType::Put as i32,
            kv: Some(KeyValue {
                key: key.into(),
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: Some(KeyValue::default()),
        }
    }

    #[test]
    fn batches_are_filtered_by_range_revision_and_type() {
        let batch = EventBatch {
            from_rev: 5,
            to_rev: 7,
            events: vec![put("a", 5), put("b", 6), put("c", 7)],
        };
        let mut w = Watcher::new(b"a".to_vec(), b"c".to_vec(), &[], false, 6);
        let Delivery::Events(got) = w.deliver(&batch) else {
            panic!("expected events")
        };
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].kv.as_ref().unwrap().key, b"b");
        assert!(got[0].prev_kv.is_none());
        assert_eq!(w.next_rev, 8);
        assert!(matches!(w.deliver(&batch), Delivery::Nothing));

        let mut behind = Watcher::new(b"a".to_vec(), vec![0], &[], true, 2);
        assert!(matches!(behind.deliver(&batch), Delivery::CatchUp));

        let mut no_puts = Watcher::new(b"a".to_vec(), vec![0], &[FilterType::Noput as i32], false, 5);
        let Delivery::Events(got) = no_puts.deliver(&batch) else {
            panic!("expected events")
        };
        assert!(got.is_empty());
    }

    fn big_put(key: &str, rev: i64) -> Event {
        let mut event = put(key, rev);
        if let Some(kv) = event.kv.as_mut() {
            kv.value = vec![b'v'; DELIVERY_BYTES / 3];
        }
        event
    }

    #[test]
    fn a_batch_past_the_byte_bound_is_left_to_a_catch_up() {
        let events = (5..10).map(|rev| big_put("a", rev)).collect();
        let batch = EventBatch {
            from_rev: 5,
            to_rev: 9,
            events,
        };
        let mut w = Watcher::new(b"a".to_vec(), vec![], &[], false, 5);
        assert!(matches!(w.deliver(&batch), Delivery::CatchUp));
        assert_eq!(w.next_rev, 5);
    }

    #[test]
    fn a_catch_up_step_stops_between_revisions_past_the_byte_bound() {
        // Revision 6 holds two events: it is taken whole or not at all.
        let events = vec![
            big_put("a", 5),
            big_put("b", 6),
            big_put("c", 6),
            big_put("d", 7),
            put("e", 8),
        ];
        let w = Watcher::new(b"a".to_vec(), vec![0], &[], false, 5);
        let (selected, reached) = w.select_up_to(&events, 9);
        assert_eq!(selected.len(), 3);
        assert_eq!(reached, 6);
        let small: Vec<Event> = (5..9).map(|rev| put("a", rev)).collect();
        let (selected, reached) = w.select_up_to(&small, 9);
        assert_eq!((selected.len(), reached), (4, 9));
    }
}
