//! The events of several shards' parts of one watch, put back in revision order.
//!
//! Each part's events come in revision order with a resolved revision: that part has no other
//! change up to it. An event is released once every part is resolved at or past its revision,
//! so nothing a slower part may still bring can come before it. A write lies in one shard, so
//! the events of one revision come from one part, in the order that part gave them.

use std::collections::VecDeque;

use concord_proto::mvccpb::Event;

use super::hub::event_revision;

/// The parts of one watch, merged.
#[derive(Debug)]
pub struct Merge {
    parts: Vec<Part>,
    /// Every event up to this revision has been released.
    released: i64,
}

#[derive(Debug, Default)]
struct Part {
    waiting: VecDeque<Event>,
    resolved: i64,
}

impl Merge {
    /// `parts` parts, every event up to `released` already released.
    pub fn new(parts: usize, released: i64) -> Self {
        let parts = (0..parts)
            .map(|_| Part {
                waiting: VecDeque::new(),
                resolved: released,
            })
            .collect();
        Merge { parts, released }
    }

    /// Takes part `part`'s next events, in revision order, and how far the part is resolved.
    pub fn push(&mut self, part: usize, events: Vec<Event>, resolved: i64) {
        let state = &mut self.parts[part];
        state
            .waiting
            .extend(events.into_iter().filter(|e| event_revision(e) > self.released));
        state.resolved = state.resolved.max(resolved);
    }

    /// The events every part is resolved past, in revision order; after it, everything up to
    /// [`released`](Self::released) is out.
    pub fn release(&mut self) -> Vec<Event> {
        let upto = self.parts.iter().map(|p| p.resolved).min().unwrap_or(self.released);
        if upto <= self.released {
            return Vec::new();
        }
        let mut out: Vec<Event> = Vec::new();
        loop {
            let next = self
                .parts
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.waiting.front().map(|e| (event_revision(e), i)))
                .filter(|(revision, _)| *revision <= upto)
                .min();
            let Some((revision, i)) = next else { break };
            let waiting = &mut self.parts[i].waiting;
            while waiting.front().is_some_and(|e| event_revision(e) == revision) {
                out.extend(waiting.pop_front());
            }
        }
        self.released = upto;
        out
    }

    /// Every event up to this revision has been released.
    pub fn released(&self) -> i64 {
        self.released
    }

    /// The revision of the first event held back, which the parts resolved below it must reach.
    pub fn held_back(&self) -> Option<i64> {
        self.parts
            .iter()
            .filter_map(|p| p.waiting.front().map(event_revision))
            .min()
    }

    /// How far part `part` is resolved.
    pub fn resolved(&self, part: usize) -> i64 {
        self.parts[part].resolved
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::mvccpb::KeyValue;

    fn put(key: &str, revision: i64) -> Event {
        Event {
            kv: Some(KeyValue {
                key: key.into(),
                mod_revision: revision,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn revisions(events: &[Event]) -> Vec<(String, i64)> {
        events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().unwrap();
                (String::from_utf8_lossy(&kv.key).into_owned(), kv.mod_revision)
            })
            .collect()
    }

    #[test]
    fn events_wait_for_every_part_and_come_out_in_revision_order() {
        let mut merge = Merge::new(2, 10);
        merge.push(0, vec![put("a", 12), put("a", 15)], 15);
        assert!(merge.release().is_empty(), "part 1 may still bring revision 11");
        assert_eq!(merge.held_back(), Some(12));
        merge.push(1, vec![put("m", 11), put("n", 13), put("n", 13)], 14);
        let out = merge.release();
        assert_eq!(
            revisions(&out),
            vec![("m".into(), 11), ("a".into(), 12), ("n".into(), 13), ("n".into(), 13)]
        );
        assert_eq!(merge.released(), 14);
        assert_eq!(merge.held_back(), Some(15));
        merge.push(1, vec![], 20);
        assert_eq!(revisions(&merge.release()), vec![("a".into(), 15)]);
        assert_eq!((merge.released(), merge.held_back()), (15, None));
    }

    #[test]
    fn what_was_released_before_is_never_released_again() {
        let mut merge = Merge::new(1, 7);
        merge.push(0, vec![put("a", 6), put("a", 8)], 9);
        assert_eq!(revisions(&merge.release()), vec![("a".into(), 8)]);
        merge.push(0, vec![], 5);
        assert_eq!(merge.resolved(0), 9);
        assert!(merge.release().is_empty());
    }
}
