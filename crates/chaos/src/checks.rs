//! Checks that use etcd's revisions, the state after healing and watch streams.
//!
//! They are sound for histories of linearizable (not serializable) gets and single-key writes,
//! each write in its own Txn, so that a revision belongs to exactly one write:
//!
//! - **Revisions** ([`check_revisions`]): no two acknowledged writes share a revision; when an op
//!   completes before another is invoked (the same client's next op, or any other client's),
//!   the later op's header revision is at least the earlier's, and strictly greater when the
//!   later op writes; a get served at revision `r` with `mod_revision` `m` has no acknowledged
//!   write to its key with a revision in `(m, r]` (it would have seen it), and if `m` is an
//!   acknowledged write's revision, that write is to the same key, wrote the value read and was
//!   invoked before the get completed.
//! - **Final state** ([`check_final_state`]): for every acknowledged write at revision `w`, the
//!   final read (after healing) of its key has `mod_revision >= w` (else the write is lost), with
//!   the write's value when equal; a final value must come from a write that may have happened.
//! - **Watches** ([`check_watch`], [`check_watches`]): within a stream, revisions never decrease
//!   and no (revision, key) repeats; events are within the watched range and start revision;
//!   an event at an acknowledged write's revision matches it, and any other event matches a write
//!   with an unknown outcome; no acknowledged write within the range and the covered revisions is
//!   missing; and two streams agree on every (revision, key) both saw.
//!
//! Ops with an unknown outcome carry no revision, so they only ever *explain* things (a final
//! value, an event); they are never required to appear.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use crate::anomaly::Anomaly;
use crate::history::{Bytes, History, Op, Outcome, Ret, Revision};

/// A key's value and `mod_revision`, as read after the faults healed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FinalRead {
    /// The value.
    pub value: Vec<u8>,
    /// Its `mod_revision`.
    pub mod_revision: Revision,
}

impl fmt::Display for FinalRead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (mod_revision {})", Bytes(&self.value), self.mod_revision)
    }
}

/// The state after healing: every key the history touches that exists, with its value (read
/// linearizably, e.g. one prefix range, once the cluster has healed and settled). A key missing
/// from the map is absent.
pub type FinalState = BTreeMap<Vec<u8>, FinalRead>;

/// A key range with etcd's conventions: `end` empty means the single key `start`; `end == [0]`
/// means every key from `start` on; otherwise `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyRange {
    /// The first key.
    pub start: Vec<u8>,
    /// The end, as etcd's `range_end`.
    pub end: Vec<u8>,
}

impl KeyRange {
    /// Exactly `key`.
    pub fn single(key: &[u8]) -> KeyRange {
        KeyRange {
            start: key.to_vec(),
            end: Vec::new(),
        }
    }

    /// Every key starting with `prefix` (etcd's `with_prefix`).
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        let mut end = prefix.to_vec();
        while let Some(last) = end.pop() {
            if last < 0xff {
                end.push(last + 1);
                return KeyRange {
                    start: prefix.to_vec(),
                    end,
                };
            }
        }
        KeyRange {
            start: prefix.to_vec(),
            end: vec![0],
        }
    }

    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self.end.as_slice() {
            [] => key == self.start.as_slice(),
            [0] => key >= self.start.as_slice(),
            end => key >= self.start.as_slice() && key < end,
        }
    }
}

/// The type of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A put.
    Put,
    /// A delete (no op of the history deletes, so these are always unexplained).
    Delete,
}

/// One event as a watcher received it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WatchEvent {
    /// The event's `kv.mod_revision`.
    pub revision: Revision,
    /// The key.
    pub key: Vec<u8>,
    /// Put or delete.
    pub kind: EventKind,
    /// The value (empty for deletes).
    pub value: Vec<u8>,
}

impl fmt::Display for WatchEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            EventKind::Put => write!(
                f,
                "put {} = {} at revision {}",
                Bytes(&self.key),
                Bytes(&self.value),
                self.revision
            ),
            EventKind::Delete => write!(f, "delete {} at revision {}", Bytes(&self.key), self.revision),
        }
    }
}

/// Everything one watch saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchStream {
    /// Names the watcher in reports.
    pub watcher: u64,
    /// The watched range.
    pub range: KeyRange,
    /// The first revision the watch covers: its `start_revision`, or, for a watch created without
    /// one, the header revision of its `created` response plus 1.
    pub start_revision: Revision,
    /// The events, in the order received.
    pub events: Vec<WatchEvent>,
    /// A revision through which the stream is known to be complete, if the rig learned one (e.g.
    /// the header revision of a progress notification received after the last event). Events
    /// arrive in revision order, so the stream is also complete below its last event's revision.
    pub complete_through: Option<Revision>,
}

/// Acknowledged writes, indexed.
struct Writes<'a> {
    /// By revision (the first write seen with each revision).
    by_revision: HashMap<Revision, &'a Op>,
    /// Per key, sorted by revision.
    by_key: HashMap<&'a [u8], Vec<(Revision, &'a Op)>>,
    /// Every write with its revision, sorted by revision.
    all: Vec<(Revision, &'a Op)>,
}

impl<'a> Writes<'a> {
    fn of(history: &'a History) -> Writes<'a> {
        let mut all: Vec<(Revision, &Op)> = history
            .ops()
            .iter()
            .filter_map(|op| Some((op.write_revision()?, op)))
            .collect();
        all.sort_by_key(|w| w.0);
        let mut by_revision = HashMap::new();
        let mut by_key: HashMap<&[u8], Vec<(Revision, &Op)>> = HashMap::new();
        for &(r, op) in &all {
            by_revision.entry(r).or_insert(op);
            by_key.entry(op.call.key()).or_default().push((r, op));
        }
        Writes {
            by_revision,
            by_key,
            all,
        }
    }

    /// The first acknowledged write to `key` with a revision above `after`.
    fn first_after(&self, key: &[u8], after: Revision) -> Option<(Revision, &'a Op)> {
        let writes = self.by_key.get(key)?;
        let i = writes.partition_point(|w| w.0 <= after);
        writes.get(i).copied()
    }
}

/// Whether a write with an unknown outcome to `key` would leave `value` there.
fn unknown_write_explains(history: &History, key: &[u8], value: &[u8]) -> bool {
    history
        .ops()
        .iter()
        .any(|op| op.outcome == Outcome::Unknown && op.call.key() == key && op.writes_value(value))
}

/// Revision checks (see the module docs): duplicate write revisions, revisions going backwards in
/// real time (per client and across clients), and gets that contradict the revisions of
/// acknowledged writes.
pub fn check_revisions(history: &History) -> Vec<Anomaly> {
    let mut out = Vec::new();
    let writes = Writes::of(history);
    for pair in writes.all.windows(2) {
        if pair[0].0 == pair[1].0 {
            out.push(Anomaly::DuplicateWriteRevision {
                first: pair[0].1.clone(),
                second: pair[1].1.clone(),
            });
        }
    }

    // Real-time order: sweep ops by invocation, folding in every op completed strictly before.
    let done: Vec<&Op> = history.ops().iter().filter(|op| op.ret().is_some()).collect();
    let mut by_complete = done.clone();
    by_complete.sort_by_key(|op| op.complete);
    let mut j = 0;
    let mut highest: Option<(Revision, &Op)> = None;
    for &later in &done {
        while j < by_complete.len() && by_complete[j].complete < later.invoke {
            let op = by_complete[j];
            let r = op.ret().map_or(0, Ret::revision);
            if highest.is_none_or(|(h, _)| r > h) {
                highest = Some((r, op));
            }
            j += 1;
        }
        let Some((h, earlier)) = highest else {
            continue;
        };
        let r = later.ret().map_or(0, Ret::revision);
        if r < h || (later.write_revision().is_some() && r == h) {
            out.push(Anomaly::RevisionWentBackwards {
                earlier: earlier.clone(),
                later: later.clone(),
            });
        }
    }

    // Gets against the acknowledged writes.
    for read in &done {
        let Some(Ret::Get {
            value,
            mod_revision,
            revision,
        }) = read.ret()
        else {
            continue;
        };
        let key = read.call.key();
        if let Some((w, write)) = writes.first_after(key, *mod_revision) {
            if w <= *revision {
                out.push(Anomaly::StaleRead {
                    read: (*read).clone(),
                    write: write.clone(),
                });
            }
        }
        if *mod_revision > 0 {
            if let Some(write) = writes.by_revision.get(mod_revision) {
                let value = value.as_deref().unwrap_or_default();
                if write.call.key() != key || !write.writes_value(value) {
                    out.push(Anomaly::WrongVersion {
                        read: (*read).clone(),
                        write: (*write).clone(),
                    });
                } else if read.precedes(write) {
                    out.push(Anomaly::ReadFromFuture {
                        read: (*read).clone(),
                        write: (*write).clone(),
                    });
                }
            }
        }
    }
    out
}

/// Lost-write check against the state read after healing (see the module docs). Every key the
/// history touches is considered; a key missing from `final_state` is absent.
pub fn check_final_state(history: &History, final_state: &FinalState) -> Vec<Anomaly> {
    let mut out = Vec::new();
    let writes = Writes::of(history);
    let mut keys: Vec<&[u8]> = writes.by_key.keys().copied().collect();
    keys.sort_unstable();
    for key in keys {
        let final_read = final_state.get(key);
        let seen = final_read.map_or(0, |r| r.mod_revision);
        for &(w, write) in &writes.by_key[key] {
            if w > seen {
                out.push(Anomaly::LostWrite {
                    write: write.clone(),
                    final_read: final_read.cloned(),
                });
            }
        }
    }
    for (key, final_read) in final_state {
        match writes.by_revision.get(&final_read.mod_revision) {
            Some(write) => {
                if write.call.key() != key.as_slice() || !write.writes_value(&final_read.value) {
                    out.push(Anomaly::WrongFinalVersion {
                        key: key.clone(),
                        final_read: final_read.clone(),
                        write: (*write).clone(),
                    });
                }
            }
            None => {
                if !unknown_write_explains(history, key, &final_read.value) {
                    out.push(Anomaly::UnexplainedFinalValue {
                        key: key.clone(),
                        final_read: final_read.clone(),
                    });
                }
            }
        }
    }
    out
}

/// Checks one watch stream against the history (see the module docs).
pub fn check_watch(history: &History, stream: &WatchStream) -> Vec<Anomaly> {
    check_watch_with(history, &Writes::of(history), stream)
}

fn check_watch_with(history: &History, writes: &Writes<'_>, stream: &WatchStream) -> Vec<Anomaly> {
    let watcher = stream.watcher;
    let mut out = Vec::new();
    let mut seen: HashSet<(Revision, &[u8])> = HashSet::new();
    let mut previous: Option<&WatchEvent> = None;
    let mut last = Revision::MIN;
    for event in &stream.events {
        if !stream.range.contains(&event.key) || event.revision < stream.start_revision {
            out.push(Anomaly::WatchOutOfRange {
                watcher,
                event: event.clone(),
            });
        }
        if let Some(prev) = previous {
            if event.revision < prev.revision {
                out.push(Anomaly::WatchOutOfOrder {
                    watcher,
                    previous: prev.clone(),
                    event: event.clone(),
                });
            }
        }
        if !seen.insert((event.revision, &event.key)) {
            out.push(Anomaly::WatchDuplicate {
                watcher,
                event: event.clone(),
            });
        }
        match writes.by_revision.get(&event.revision) {
            Some(write) => {
                if write.call.key() != event.key.as_slice()
                    || event.kind != EventKind::Put
                    || !write.writes_value(&event.value)
                {
                    out.push(Anomaly::WatchWrongEvent {
                        watcher,
                        event: event.clone(),
                        write: (*write).clone(),
                    });
                }
            }
            None => {
                if event.kind != EventKind::Put || !unknown_write_explains(history, &event.key, &event.value) {
                    out.push(Anomaly::WatchUnexplainedEvent {
                        watcher,
                        event: event.clone(),
                    });
                }
            }
        }
        previous = Some(event);
        last = last.max(event.revision);
    }
    // Complete below the last event's revision (events arrive in revision order), and through
    // `complete_through`.
    let through = stream
        .complete_through
        .unwrap_or(Revision::MIN)
        .max(last.saturating_sub(1));
    for &(w, write) in &writes.all {
        if w > through {
            break;
        }
        let key = write.call.key();
        if w >= stream.start_revision && stream.range.contains(key) && !seen.contains(&(w, key)) {
            out.push(Anomaly::WatchGap {
                watcher,
                missing: write.clone(),
            });
        }
    }
    out
}

/// Checks every stream ([`check_watch`]) and that streams agree on every (revision, key) that
/// more than one of them saw.
pub fn check_watches(history: &History, streams: &[WatchStream]) -> Vec<Anomaly> {
    let writes = Writes::of(history);
    let mut out = Vec::new();
    for stream in streams {
        out.extend(check_watch_with(history, &writes, stream));
    }
    let mut first: HashMap<(Revision, &[u8]), (u64, &WatchEvent)> = HashMap::new();
    for stream in streams {
        for event in &stream.events {
            match first.get(&(event.revision, event.key.as_slice())) {
                None => {
                    first.insert((event.revision, &event.key), (stream.watcher, event));
                }
                Some(&(other_watcher, other)) => {
                    if other_watcher != stream.watcher && other != event {
                        out.push(Anomaly::WatchDiverged {
                            watcher: stream.watcher,
                            event: event.clone(),
                            other_watcher,
                            other_event: other.clone(),
                        });
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn names(anomalies: &[Anomaly]) -> Vec<&'static str> {
        anomalies.iter().map(Anomaly::name).collect()
    }

    fn good_history() -> History {
        history(vec![
            put(1, (0, 10), "a", "1", 2),
            put(2, (5, 15), "b", "1", 3),
            get(3, (6, 8), "a", None, 0, 1),
            get(1, (20, 30), "a", Some("1"), 2, 3),
            cas(2, (20, 40), "a", Some("1"), "2", true, 4),
            cas(3, (25, 35), "b", Some("x"), "2", false, 3),
            unknown(put(1, (50, 60), "b", "late", 0)),
            failed(put(1, (70, 80), "a", "no", 0)),
            get(2, (90, 95), "a", Some("2"), 4, 5),
        ])
    }

    #[test]
    fn consistent_revisions_pass() {
        let h = good_history();
        assert_eq!(check_revisions(&h), vec![]);
        // The timed-out put took effect at revision 5.
        let state = fin(&[("a", "2", 4), ("b", "late", 5)]);
        assert_eq!(check_final_state(&h, &state), vec![]);
        let events = vec![
            WatchEvent {
                revision: 2,
                key: b("a"),
                kind: EventKind::Put,
                value: b("1"),
            },
            WatchEvent {
                revision: 3,
                key: b("b"),
                kind: EventKind::Put,
                value: b("1"),
            },
            WatchEvent {
                revision: 4,
                key: b("a"),
                kind: EventKind::Put,
                value: b("2"),
            },
            WatchEvent {
                revision: 5,
                key: b("b"),
                kind: EventKind::Put,
                value: b("late"),
            },
        ];
        let all = WatchStream {
            watcher: 1,
            range: KeyRange {
                start: vec![0],
                end: vec![0],
            },
            start_revision: 2,
            events: events.clone(),
            complete_through: Some(5),
        };
        // Joined late, on one key.
        let late = WatchStream {
            watcher: 2,
            range: KeyRange::single(b"a"),
            start_revision: 3,
            events: vec![events[2].clone()],
            complete_through: None,
        };
        assert_eq!(check_watches(&h, &[all, late]), vec![]);
    }

    #[test]
    fn non_monotonic_revision_is_rejected() {
        // The same client: a write at 5, then a read served at 4.
        let h = history(vec![put(1, (0, 10), "a", "1", 5), get(1, (20, 30), "b", None, 0, 4)]);
        let found = check_revisions(&h);
        assert_eq!(names(&found), ["revision_went_backwards"]);
        assert!(found[0].to_string().contains("the same client"), "{}", found[0]);
        // Another client's later write that does not get a higher revision; and a shared one.
        let h = history(vec![put(1, (0, 10), "a", "1", 5), put(2, (20, 30), "b", "1", 5)]);
        assert_eq!(
            names(&check_revisions(&h)),
            ["duplicate_write_revision", "revision_went_backwards"]
        );
        // Overlapping ops may see any order.
        let h = history(vec![put(1, (0, 10), "a", "1", 5), get(2, (10, 30), "b", None, 0, 4)]);
        assert_eq!(check_revisions(&h), vec![]);
    }

    #[test]
    fn stale_read_is_rejected() {
        let h = history(vec![
            put(1, (0, 10), "a", "1", 2),
            put(1, (20, 30), "a", "2", 3),
            get(2, (40, 50), "a", Some("1"), 2, 3),
        ]);
        assert_eq!(names(&check_revisions(&h)), ["stale_read"]);
        // Served at an old revision instead: caught by real-time order.
        let h = history(vec![
            put(1, (0, 10), "a", "1", 2),
            put(1, (20, 30), "a", "2", 3),
            get(2, (40, 50), "a", Some("1"), 2, 2),
        ]);
        assert_eq!(names(&check_revisions(&h)), ["revision_went_backwards"]);
        // An absent key at a revision that includes a write to it.
        let h = history(vec![put(1, (0, 10), "a", "1", 2), get(2, (5, 50), "a", None, 0, 2)]);
        assert_eq!(names(&check_revisions(&h)), ["stale_read"]);
    }

    #[test]
    fn wrong_version_and_read_from_future_are_rejected() {
        let h = history(vec![
            put(1, (0, 10), "a", "1", 2),
            get(2, (20, 30), "a", Some("9"), 2, 2),
        ]);
        assert_eq!(names(&check_revisions(&h)), ["wrong_version"]);
        let h = history(vec![
            put(1, (0, 10), "b", "1", 2),
            get(2, (20, 30), "a", Some("1"), 2, 2),
        ]);
        assert_eq!(names(&check_revisions(&h)), ["wrong_version"]);
        let h = history(vec![
            get(2, (0, 10), "a", Some("1"), 2, 2),
            put(1, (20, 30), "a", "1", 2),
        ]);
        assert!(names(&check_revisions(&h)).contains(&"read_from_future"));
    }

    #[test]
    fn lost_acknowledged_write_is_rejected() {
        let h = history(vec![
            put(1, (0, 10), "a", "1", 2),
            put(1, (20, 30), "a", "2", 3),
            put(2, (20, 30), "b", "1", 4),
        ]);
        // "a" rolled back to revision 2; "b" vanished.
        let found = check_final_state(&h, &fin(&[("a", "1", 2)]));
        assert_eq!(names(&found), ["lost_write", "lost_write"]);
        assert!(found[0].to_string().contains("\"2\""), "{}", found[0]);
        // The right revision with the wrong value, and a value nobody wrote.
        let found = check_final_state(&h, &fin(&[("a", "x", 3), ("b", "1", 4), ("c", "1", 9)]));
        assert_eq!(names(&found), ["wrong_final_version", "unexplained_final_value"]);
        // Overwritten by a write whose outcome is unknown: fine.
        let h = history(vec![
            put(1, (0, 10), "a", "1", 2),
            unknown(put(1, (20, 30), "a", "2", 0)),
        ]);
        assert_eq!(check_final_state(&h, &fin(&[("a", "2", 7)])), vec![]);
        // But not by one that failed definitely.
        let h = history(vec![
            put(1, (0, 10), "a", "1", 2),
            failed(put(1, (20, 30), "a", "2", 0)),
        ]);
        assert_eq!(
            names(&check_final_state(&h, &fin(&[("a", "2", 7)]))),
            ["unexplained_final_value"]
        );
    }

    fn event(revision: i64, key: &str, value: &str) -> WatchEvent {
        WatchEvent {
            revision,
            key: b(key),
            kind: EventKind::Put,
            value: b(value),
        }
    }

    fn stream(events: Vec<WatchEvent>) -> WatchStream {
        WatchStream {
            watcher: 7,
            range: KeyRange::prefix(b"k"),
            start_revision: 2,
            events,
            complete_through: None,
        }
    }

    fn three_writes() -> History {
        history(vec![
            put(1, (0, 10), "k1", "a", 2),
            put(1, (20, 30), "k2", "b", 3),
            put(1, (40, 50), "k1", "c", 4),
            put(1, (60, 70), "other", "d", 5),
        ])
    }

    #[test]
    fn watch_gap_is_rejected() {
        let h = three_writes();
        let found = check_watch(&h, &stream(vec![event(2, "k1", "a"), event(4, "k1", "c")]));
        assert_eq!(names(&found), ["watch_gap"]);
        assert!(found[0].to_string().contains("\"k2\""), "{}", found[0]);
        // Nothing after the last event is required, unless the stream is known complete.
        assert_eq!(check_watch(&h, &stream(vec![event(2, "k1", "a")])), vec![]);
        let mut s = stream(vec![event(2, "k1", "a")]);
        s.complete_through = Some(5);
        assert_eq!(names(&check_watch(&h, &s)), ["watch_gap", "watch_gap"]);
    }

    #[test]
    fn watch_order_duplicates_and_range_are_checked() {
        let h = three_writes();
        let found = check_watch(
            &h,
            &stream(vec![event(3, "k2", "b"), event(2, "k1", "a"), event(4, "k1", "c")]),
        );
        assert_eq!(names(&found), ["watch_out_of_order"]);
        let found = check_watch(
            &h,
            &stream(vec![
                event(2, "k1", "a"),
                event(3, "k2", "b"),
                event(3, "k2", "b"),
                event(4, "k1", "c"),
            ]),
        );
        assert_eq!(names(&found), ["watch_duplicate"]);
        let found = check_watch(
            &h,
            &stream(vec![event(2, "k1", "a"), event(3, "k2", "b"), event(5, "other", "d")]),
        );
        assert_eq!(names(&found), ["watch_out_of_range", "watch_gap"]);
    }

    #[test]
    fn watch_events_must_match_writes() {
        let h = three_writes();
        let found = check_watch(&h, &stream(vec![event(2, "k1", "zzz")]));
        assert_eq!(names(&found), ["watch_wrong_event"]);
        let found = check_watch(
            &h,
            &stream(vec![event(2, "k1", "a"), event(3, "k2", "b"), event(9, "k9", "?")]),
        );
        assert_eq!(names(&found), ["watch_unexplained_event", "watch_gap"]);
        let mut delete = event(2, "k1", "");
        delete.kind = EventKind::Delete;
        assert_eq!(names(&check_watch(&h, &stream(vec![delete]))), ["watch_wrong_event"]);
    }

    #[test]
    fn watchers_must_agree() {
        let h = history(vec![
            unknown(put(1, (0, 10), "k1", "a", 0)),
            unknown(put(2, (0, 10), "k1", "b", 0)),
        ]);
        let one = stream(vec![event(2, "k1", "a")]);
        let mut two = stream(vec![event(2, "k1", "b")]);
        two.watcher = 8;
        assert_eq!(check_watches(&h, std::slice::from_ref(&one)), vec![]);
        assert_eq!(names(&check_watches(&h, &[one, two])), ["watch_diverged"]);
    }

    #[test]
    fn key_ranges_follow_etcd() {
        assert!(KeyRange::single(b"a").contains(b"a") && !KeyRange::single(b"a").contains(b"ab"));
        let p = KeyRange::prefix(b"a\xff");
        assert_eq!(p.end, b"b");
        assert!(p.contains(b"a\xff\x00") && !p.contains(b"b"));
        assert_eq!(KeyRange::prefix(b"\xff").end, vec![0]);
        let from = KeyRange {
            start: b("m"),
            end: vec![0],
        };
        assert!(from.contains(b"z") && !from.contains(b"a"));
    }
}
