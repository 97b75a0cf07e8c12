//! The newest entries of a group's log, kept in memory beside raft-engine.
//!
//! raft-rs asks its `Storage` for the term of an entry each time a follower acknowledges an
//! append (to decide the commit index) or an append arrives (to check the previous entry), and
//! for entries each time the leader sends more of its log to a follower. raft-engine keeps only
//! the file position of an entry in memory, so each of those asks costs a read from the log
//! file and a decode. Nearly all of them are for the last few entries, which is what this cache
//! holds: the log's tail, in order and without gaps, up to a byte budget. Asks for older entries
//! (a follower far behind) go on to raft-engine.
//!
//! The cache holds what was staged, which raft-rs only reads back once it has been written:
//! raft-rs serves the entries it has not yet persisted from its own unstable buffer.

use std::collections::VecDeque;

use raft::eraftpb::Entry;
use raft::util::entry_approximate_size;

/// How many bytes of entries the cache keeps at most. A few MiB cover the entries in flight to
/// followers under any load the benchmark drives, at little cost to a member's memory.
pub const CACHE_BUDGET_BYTES: usize = 4 << 20;

/// A contiguous run of the log's newest entries (see the module docs).
#[derive(Default)]
pub struct EntryCache {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl EntryCache {
    /// Takes in newly staged entries. Entries at or after the first new index are replaced, as
    /// raft-engine replaces a conflicting suffix; a gap before the new entries empties the
    /// cache, so that what it holds stays contiguous.
    pub fn append(&mut self, new: &[Entry]) {
        let Some(first_new) = new.first().map(|e| e.index) else {
            return;
        };
        match self.entries.front().map(|e| e.index) {
            Some(first) if first < first_new && first_new <= self.next_index() => self.truncate_from(first_new),
            _ => self.clear(),
        }
        for entry in new {
            self.bytes += entry_approximate_size(entry);
            self.entries.push_back(entry.clone());
        }
        while self.bytes > CACHE_BUDGET_BYTES && self.entries.len() > 1 {
            self.pop_front();
        }
    }

    /// The term of entry `index`, when the cache holds it.
    pub fn term(&self, index: u64) -> Option<u64> {
        self.get(index).map(|e| e.term)
    }

    /// Entries `low..high`, when the cache holds `low` (the end may be cut short by the cache's
    /// end or by `max_size`, always giving at least one entry, as raft-rs expects of storage).
    pub fn fetch(&self, low: u64, high: u64, max_size: Option<u64>) -> Option<Vec<Entry>> {
        let start = self.position(low)?;
        let count = (high.min(self.next_index()) - low) as usize;
        let mut out = Vec::with_capacity(count);
        let mut size = 0u64;
        for entry in self.entries.range(start..start + count) {
            size += entry_approximate_size(entry) as u64;
            if !out.is_empty() && max_size.is_some_and(|max| size > max) {
                break;
            }
            out.push(entry.clone());
        }
        Some(out)
    }

    /// Forgets the entries at or below `index` (the log was truncated up to there).
    pub fn drop_through(&mut self, index: u64) {
        while self.entries.front().is_some_and(|e| e.index <= index) {
            self.pop_front();
        }
    }

    /// Forgets everything (the log was replaced by a snapshot).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn get(&self, index: u64) -> Option<&Entry> {
        self.position(index).map(|i| &self.entries[i])
    }

    fn position(&self, index: u64) -> Option<usize> {
        let first = self.entries.front()?.index;
        (index >= first && index < self.next_index()).then(|| (index - first) as usize)
    }

    /// The index after the newest cached entry (0 when empty).
    fn next_index(&self) -> u64 {
        self.entries.back().map_or(0, |e| e.index + 1)
    }

    fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|e| e.index >= index) {
            let entry = self.entries.pop_back().expect("checked non-empty");
            self.bytes -= entry_approximate_size(&entry);
        }
    }

    fn pop_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.bytes -= entry_approximate_size(&entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, len: usize) -> Entry {
        Entry {
            index,
            term,
            data: vec![7u8; len].into(),
            ..Default::default()
        }
    }

    fn indexes(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn serves_the_tail_and_misses_outside_it() {
        let mut cache = EntryCache::default();
        cache.append(&[entry(5, 1, 10), entry(6, 1, 10)]);
        cache.append(&[entry(7, 2, 10)]);
        assert_eq!(cache.term(4), None);
        assert_eq!(cache.term(6), Some(1));
        assert_eq!(cache.term(7), Some(2));
        assert_eq!(cache.term(8), None);
        assert_eq!(indexes(&cache.fetch(6, 8, None).unwrap()), vec![(6, 1), (7, 2)]);
        assert_eq!(indexes(&cache.fetch(6, 100, None).unwrap()), vec![(6, 1), (7, 2)]);
        assert!(cache.fetch(4, 7, None).is_none());
    }

    #[test]
    fn a_conflicting_append_replaces_the_suffix() {
        let mut cache = EntryCache::default();
        cache.append(&[entry(1, 1, 1), entry(2, 1, 1), entry(3, 1, 1)]);
        cache.append(&[entry(2, 3, 1)]);
        assert_eq!(indexes(&cache.fetch(1, 10, None).unwrap()), vec![(1, 1), (2, 3)]);
        assert_eq!(cache.term(3), None);
    }

    #[test]
    fn a_gap_or_an_append_before_the_front_starts_over() {
        let mut cache = EntryCache::default();
        cache.append(&[entry(5, 1, 1), entry(6, 1, 1)]);
        cache.append(&[entry(9, 2, 1)]);
        assert_eq!(cache.term(6), None);
        assert_eq!(cache.term(9), Some(2));
        cache.append(&[entry(3, 3, 1)]);
        assert_eq!(cache.term(9), None);
        assert_eq!(cache.term(3), Some(3));
    }

    #[test]
    fn max_size_cuts_the_fetch_but_gives_at_least_one_entry() {
        let mut cache = EntryCache::default();
        cache.append(&[entry(1, 1, 100), entry(2, 1, 100), entry(3, 1, 100)]);
        let one = entry_approximate_size(&entry(1, 1, 100)) as u64;
        assert_eq!(cache.fetch(1, 4, Some(0)).unwrap().len(), 1);
        assert_eq!(cache.fetch(1, 4, Some(2 * one)).unwrap().len(), 2);
    }

    #[test]
    fn the_budget_evicts_the_oldest_entries_and_truncation_drops_them() {
        let mut cache = EntryCache::default();
        let big = CACHE_BUDGET_BYTES / 3;
        cache.append(&[entry(1, 1, big), entry(2, 1, big), entry(3, 1, big), entry(4, 1, big)]);
        assert_eq!(cache.term(1), None);
        assert_eq!(cache.term(4), Some(1));
        assert!(cache.bytes <= CACHE_BUDGET_BYTES);
        cache.drop_through(3);
        assert_eq!(cache.term(3), None);
        assert_eq!(cache.term(4), Some(1));
        cache.clear();
        assert_eq!(cache.term(4), None);
        assert_eq!(cache.bytes, 0);
    }
}
