//! The anomalies that [`checks`](crate::checks) and [`append`](crate::append) report. Every one
//! of them proves a violation of etcd's guarantees (given a well-recorded history); none is a
//! heuristic.

use std::fmt;

use crate::checks::{FinalRead, WatchEvent};
use crate::history::{Bytes, Op};

/// Where a list value of the list-append workload was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListSource {
    /// By this get.
    Get(Op),
    /// By the final read after healing (`None`: the key was absent).
    Final(Option<FinalRead>),
}

impl fmt::Display for ListSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListSource::Get(op) => op.fmt(f),
            ListSource::Final(Some(r)) => write!(f, "final read: {r}"),
            ListSource::Final(None) => f.write_str("final read: absent"),
        }
    }
}

/// A violation found by the non-linearizability checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anomaly {
    /// Two acknowledged writes got the same revision.
    DuplicateWriteRevision {
        /// One write.
        first: Op,
        /// The other.
        second: Op,
    },
    /// `later` was invoked after `earlier` completed, yet saw a lower revision (or, being a
    /// write, did not get a higher one).
    RevisionWentBackwards {
        /// The op that completed first.
        earlier: Op,
        /// The op invoked after it.
        later: Op,
    },
    /// A get served at revision `r` returned a version older than an acknowledged write to the
    /// same key with a revision at or below `r`.
    StaleRead {
        /// The get.
        read: Op,
        /// The write it should have seen.
        write: Op,
    },
    /// A get's `mod_revision` is the revision of an acknowledged write, but the write is to
    /// another key or wrote another value.
    WrongVersion {
        /// The get.
        read: Op,
        /// The write that owns the revision.
        write: Op,
    },
    /// A get returned the version written by an op invoked only after the get completed.
    ReadFromFuture {
        /// The get.
        read: Op,
        /// The write.
        write: Op,
    },
    /// An acknowledged write is neither the final value of its key nor overwritten by a later
    /// revision.
    LostWrite {
        /// The write.
        write: Op,
        /// What the final read found for its key.
        final_read: Option<FinalRead>,
    },
    /// The final `mod_revision` of a key is an acknowledged write's revision, but that write is
    /// to another key or wrote another value.
    WrongFinalVersion {
        /// The key.
        key: Vec<u8>,
        /// What the final read found.
        final_read: FinalRead,
        /// The write that owns the revision.
        write: Op,
    },
    /// A key's final value was written by no op that may have taken effect.
    UnexplainedFinalValue {
        /// The key.
        key: Vec<u8>,
        /// What the final read found.
        final_read: FinalRead,
    },
    /// A watch event arrived at a lower revision than the one before it.
    WatchOutOfOrder {
        /// The watcher.
        watcher: u64,
        /// The event before.
        previous: WatchEvent,
        /// The event.
        event: WatchEvent,
    },
    /// A watch delivered the same (revision, key) twice.
    WatchDuplicate {
        /// The watcher.
        watcher: u64,
        /// The repeated event.
        event: WatchEvent,
    },
    /// A watch delivered an event outside its key range or before its start revision.
    WatchOutOfRange {
        /// The watcher.
        watcher: u64,
        /// The event.
        event: WatchEvent,
    },
    /// A watch skipped an acknowledged write within its range and the revisions it covered.
    WatchGap {
        /// The watcher.
        watcher: u64,
        /// The write it never delivered.
        missing: Op,
    },
    /// A watch event at an acknowledged write's revision does not match that write.
    WatchWrongEvent {
        /// The watcher.
        watcher: u64,
        /// The event.
        event: WatchEvent,
        /// The write that owns the revision.
        write: Op,
    },
    /// A watch event that no op that may have taken effect explains.
    WatchUnexplainedEvent {
        /// The watcher.
        watcher: u64,
        /// The event.
        event: WatchEvent,
    },
    /// Two watchers saw different events for the same revision and key.
    WatchDiverged {
        /// One watcher.
        watcher: u64,
        /// Its event.
        event: WatchEvent,
        /// The other watcher.
        other_watcher: u64,
        /// Its event.
        other_event: WatchEvent,
    },
    /// An element appears more than once in one list (a write applied twice).
    AppendDuplicate {
        /// The element.
        elem: Vec<u8>,
        /// The first read that shows it twice.
        read: ListSource,
    },
    /// An element that was never appended, or whose append failed definitely, is in a list.
    AppendUnexplained {
        /// The element.
        elem: Vec<u8>,
        /// The first read that shows it.
        read: ListSource,
        /// The failed append of it, if there was one.
        failed: Option<Op>,
    },
    /// An acknowledged append is missing from a read invoked after it completed (from the final
    /// read: a lost write).
    AppendLost {
        /// The append.
        append: Op,
        /// The read that misses it (the first such get, or the final read).
        read: ListSource,
    },
    /// A read shows an element whose append was invoked only after the read completed.
    AppendFromFuture {
        /// The append.
        append: Op,
        /// The read.
        read: ListSource,
    },
    /// Two reads of one list where neither is a prefix of the other: the list did not only grow.
    AppendIncompatibleReads {
        /// One read.
        read: ListSource,
        /// The longest read of the key.
        longest: ListSource,
    },
    /// A read returned a shorter list than a read that completed before it was invoked.
    AppendShrank {
        /// The earlier, longer read.
        earlier: ListSource,
        /// The later, shorter read.
        later: ListSource,
    },
    /// Two appends are in the wrong order in the list: `first` completed before `second` was
    /// invoked, or got a lower revision, yet comes after it.
    AppendOrder {
        /// The append that must come first.
        first: Op,
        /// The append that must come second.
        second: Op,
        /// The read that orders them wrongly (the longest read of the key).
        read: ListSource,
    },
}

impl Anomaly {
    /// The variant's name in snake case, e.g. `stale_read`, for grouping and counting.
    pub fn name(&self) -> &'static str {
        match self {
            Anomaly::DuplicateWriteRevision { .. } => "duplicate_write_revision",
            Anomaly::RevisionWentBackwards { .. } => "revision_went_backwards",
            Anomaly::StaleRead { .. } => "stale_read",
            Anomaly::WrongVersion { .. } => "wrong_version",
            Anomaly::ReadFromFuture { .. } => "read_from_future",
            Anomaly::LostWrite { .. } => "lost_write",
            Anomaly::WrongFinalVersion { .. } => "wrong_final_version",
            Anomaly::UnexplainedFinalValue { .. } => "unexplained_final_value",
            Anomaly::WatchOutOfOrder { .. } => "watch_out_of_order",
            Anomaly::WatchDuplicate { .. } => "watch_duplicate",
            Anomaly::WatchOutOfRange { .. } => "watch_out_of_range",
            Anomaly::WatchGap { .. } => "watch_gap",
            Anomaly::WatchWrongEvent { .. } => "watch_wrong_event",
            Anomaly::WatchUnexplainedEvent { .. } => "watch_unexplained_event",
            Anomaly::WatchDiverged { .. } => "watch_diverged",
            Anomaly::AppendDuplicate { .. } => "append_duplicate",
            Anomaly::AppendUnexplained { .. } => "append_unexplained",
            Anomaly::AppendLost { .. } => "append_lost",
            Anomaly::AppendFromFuture { .. } => "append_from_future",
            Anomaly::AppendIncompatibleReads { .. } => "append_incompatible_reads",
            Anomaly::AppendShrank { .. } => "append_shrank",
            Anomaly::AppendOrder { .. } => "append_order",
        }
    }
}

impl fmt::Display for Anomaly {
    /// A one-line summary, then the ops and events involved, indented.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Anomaly::DuplicateWriteRevision { first, second } => {
                write!(f, "two acknowledged writes share a revision:\n    {first}\n    {second}")
            }
            Anomaly::RevisionWentBackwards { earlier, later } => {
                let who = if earlier.client == later.client { "the same client" } else { "another client" };
                write!(
                    f,
                    "revision went backwards: an op invoked after {who}'s op completed saw an older (or, for a write, not a newer) revision:\n    earlier: {earlier}\n    later:   {later}"
                )
            }
            Anomaly::StaleRead { read, write } => write!(
                f,
                "stale read: the read was served at a revision that includes this acknowledged write, but returned an older version:\n    read:  {read}\n    write: {write}"
            ),
            Anomaly::WrongVersion { read, write } => write!(
                f,
                "wrong version: the read's mod_revision belongs to a write of another key or value:\n    read:  {read}\n    write: {write}"
            ),
            Anomaly::ReadFromFuture { read, write } => write!(
                f,
                "read from the future: the read returned the version of a write invoked after the read completed:\n    read:  {read}\n    write: {write}"
            ),
            Anomaly::LostWrite { write, final_read } => {
                write!(f, "lost write: acknowledged, yet the final read finds ")?;
                match final_read {
                    Some(r) => write!(f, "{r}")?,
                    None => f.write_str("the key absent")?,
                }
                write!(f, ":\n    write: {write}")
            }
            Anomaly::WrongFinalVersion { key, final_read, write } => write!(
                f,
                "wrong final version of {}: {final_read}, but that revision belongs to:\n    write: {write}",
                Bytes(key)
            ),
            Anomaly::UnexplainedFinalValue { key, final_read } => {
                write!(f, "unexplained final value of {}: {final_read}: no op that may have taken effect wrote it", Bytes(key))
            }
            Anomaly::WatchOutOfOrder { watcher, previous, event } => {
                write!(f, "watcher {watcher}: events out of order:\n    {previous}\n    then {event}")
            }
            Anomaly::WatchDuplicate { watcher, event } => write!(f, "watcher {watcher}: duplicate event {event}"),
            Anomaly::WatchOutOfRange { watcher, event } => {
                write!(f, "watcher {watcher}: event outside its key range or before its start revision: {event}")
            }
            Anomaly::WatchGap { watcher, missing } => {
                write!(f, "watcher {watcher}: gap: never delivered this acknowledged write within its range:\n    {missing}")
            }
            Anomaly::WatchWrongEvent { watcher, event, write } => write!(
                f,
                "watcher {watcher}: event does not match the write at its revision:\n    event: {event}\n    write: {write}"
            ),
            Anomaly::WatchUnexplainedEvent { watcher, event } => {
                write!(f, "watcher {watcher}: no op that may have taken effect explains {event}")
            }
            Anomaly::WatchDiverged { watcher, event, other_watcher, other_event } => write!(
                f,
                "watchers disagree:\n    watcher {watcher}: {event}\n    watcher {other_watcher}: {other_event}"
            ),
            Anomaly::AppendDuplicate { elem, read } => {
                write!(f, "duplicate element {} (an append applied twice):\n    {read}", Bytes(elem))
            }
            Anomaly::AppendUnexplained { elem, read, failed } => {
                match failed {
                    Some(op) => write!(f, "element {} of a definitely failed append:\n    append: {op}", Bytes(elem))?,
                    None => write!(f, "element {} was never appended:", Bytes(elem))?,
                }
                write!(f, "\n    read:   {read}")
            }
            Anomaly::AppendLost { append, read } => {
                let what = match read {
                    ListSource::Final(_) => "lost append: the final list misses an acknowledged append",
                    ListSource::Get(_) => "stale read: a list read invoked after an acknowledged append completed misses it",
                };
                write!(f, "{what}:\n    append: {append}\n    read:   {read}")
            }
            Anomaly::AppendFromFuture { append, read } => write!(
                f,
                "read from the future: the list holds an element appended only after the read completed:\n    append: {append}\n    read:   {read}"
            ),
            Anomaly::AppendIncompatibleReads { read, longest } => write!(
                f,
                "list reads disagree (neither is a prefix of the other):\n    read:    {read}\n    longest: {longest}"
            ),
            Anomaly::AppendShrank { earlier, later } => {
                write!(f, "list shrank between reads ordered in real time:\n    earlier: {earlier}\n    later:   {later}")
            }
            Anomaly::AppendOrder { first, second, read } => write!(
                f,
                "appends out of order (the first completed before the second was invoked, or has a lower revision):\n    first:  {first}\n    second: {second}\n    read:   {read}"
            ),
        }
    }
}
