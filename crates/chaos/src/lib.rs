//! Checkers for Concord's fault-injection rig: given what concurrent etcd clients did while
//! faults were injected, decide whether the cluster kept etcd's guarantees.
//!
//! The rig records a [`History`] with a [`Recorder`] (every op a client invoked, with its
//! invocation and completion instants on one shared clock, and its result, which may be unknown),
//! reads the final state once the faults have healed ([`FinalState`]), optionally records what
//! watchers received ([`WatchStream`]), and hands all of it to [`check_all`]. The checks:
//!
//! - [`linearizability`]: every key's history is linearizable (Wing–Gong–Lowe search with
//!   memoisation, keys checked independently), with a shrunk counterexample when it is not and
//!   an "unknown" verdict rather than a hang when the search is too large;
//! - [`checks`]: revisions (unique per write, monotonic in real time, consistent with what gets
//!   returned), no acknowledged write lost by the end, watch streams in order, without
//!   duplicates or gaps;
//! - [`append`]: the list-append workload (duplicates, lost appends, lists that only grow).
//!
//! Everything here is pure logic on recorded data; the checks never contact a cluster.
//!
//! # Recording, in short
//!
//! - One [`Recorder`] per run, shared by every client task; `invoke` right before sending,
//!   `complete` right after the answer. A [`ClientId`] only labels ops in reports: no check
//!   assumes a client's ops are sequential.
//! - Gets must be linearizable (not serializable). Every write is its own request on one key; the
//!   rig's keys are fresh (absent at the start) and written only by recorded ops; values (and
//!   append elements) are unique.
//! - Outcomes: [`Outcome::Ok`] with the response; [`Outcome::Unknown`] for timeouts, dropped
//!   connections and any error after which the write may still apply; [`Outcome::Failed`] only
//!   when it certainly did not apply.
//! - After healing, read every key once more ([`FinalState`]) and give watchers time to catch up.
//!
//! ```
//! use concord_chaos::*;
//! let rec = Recorder::new();
//! let put = rec.invoke(1, Call::Put { key: b"k".to_vec(), value: b"c1-1".to_vec() });
//! rec.complete(put, Outcome::Ok(Ret::Put { revision: 2 }));
//! let get = rec.invoke(2, Call::Get { key: b"k".to_vec() });
//! let ret = Ret::Get { value: Some(b"c1-1".to_vec()), mod_revision: 2, revision: 2 };
//! rec.complete(get, Outcome::Ok(ret));
//! let history = rec.into_history().expect("well-formed");
//! let mut final_state = FinalState::new();
//! final_state.insert(b"k".to_vec(), FinalRead { value: b"c1-1".to_vec(), mod_revision: 2 });
//! let report = check_all(&history, Some(&final_state), &[], &Options::default());
//! assert!(report.is_valid(), "{report}");
//! ```

pub mod anomaly;
pub mod append;
pub mod checks;
pub mod history;
pub mod linearizability;
#[cfg(test)]
mod testutil;

use std::fmt;

pub use anomaly::{Anomaly, ListSource};
pub use append::check_appends;
pub use checks::{
    check_final_state, check_revisions, check_watch, check_watches, EventKind, FinalRead, FinalState, KeyRange,
    WatchEvent, WatchStream,
};
pub use history::{Call, ClientId, History, HistoryError, Invocation, Op, Outcome, Recorder, Ret, Revision, Timestamp};
pub use linearizability::{
    check_linearizability, Counterexample, CounterexampleOp, Inconclusive, LinOptions, LinReport, UnknownKey,
};

/// An overall verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Validity {
    /// Every check passed.
    Valid,
    /// Some check found a violation.
    Invalid,
    /// No violation was found, but the linearizability search gave up on some key.
    Unknown,
}

/// Options of [`check_all`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Limits of the linearizability search.
    pub linearizability: LinOptions,
}

/// Everything [`check_all`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The linearizability verdicts.
    pub linearizability: LinReport,
    /// The anomalies of the other checks ([`check_revisions`], [`check_final_state`],
    /// [`check_watches`], [`check_appends`]), in that order.
    pub anomalies: Vec<Anomaly>,
}

impl Report {
    /// Invalid if any check found a violation; else unknown if the linearizability search gave up
    /// on a key; else valid.
    pub fn validity(&self) -> Validity {
        match self.linearizability.validity() {
            _ if !self.anomalies.is_empty() => Validity::Invalid,
            v => v,
        }
    }

    /// Whether every check passed.
    pub fn is_valid(&self) -> bool {
        self.validity() == Validity::Valid
    }
}

impl fmt::Display for Report {
    /// The verdict, the linearizability report, then up to 50 anomalies with a count per kind.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 50;
        writeln!(f, "verdict: {:?}", self.validity())?;
        self.linearizability.fmt(f)?;
        let mut counts: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for a in &self.anomalies {
            *counts.entry(a.name()).or_default() += 1;
        }
        write!(f, "other checks: {} anomalies", self.anomalies.len())?;
        for (name, n) in &counts {
            write!(f, ", {n} {name}")?;
        }
        writeln!(f)?;
        for a in self.anomalies.iter().take(SHOWN) {
            writeln!(f, "- {a}")?;
        }
        if self.anomalies.len() > SHOWN {
            writeln!(f, "... and {} more", self.anomalies.len() - SHOWN)?;
        }
        Ok(())
    }
}

/// Runs every check: linearizability, revisions, the final state (when given), every watch stream
/// and the list-append keys.
pub fn check_all(
    history: &History,
    final_state: Option<&FinalState>,
    watches: &[WatchStream],
    options: &Options,
) -> Report {
    let linearizability = check_linearizability(history, &options.linearizability);
    let mut anomalies = check_revisions(history);
    if let Some(state) = final_state {
        anomalies.extend(check_final_state(history, state));
    }
    anomalies.extend(check_watches(history, watches));
    anomalies.extend(check_appends(history, final_state));
    Report {
        linearizability,
        anomalies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn check(ops: Vec<Op>, final_state: Option<&FinalState>, watches: &[WatchStream]) -> Report {
        check_all(&history(ops), final_state, watches, &Options::default())
    }

    // Each known-bad history below must make the whole checker fail.

    #[test]
    fn stale_read_fails() {
        let r = check(
            vec![
                put(1, (0, 10), "k", "1", 2),
                put(1, (20, 30), "k", "2", 3),
                get(2, (40, 50), "k", Some("1"), 2, 3),
            ],
            None,
            &[],
        );
        assert_eq!(r.validity(), Validity::Invalid);
        assert_eq!(r.linearizability.violations.len(), 1);
        assert_eq!(
            r.anomalies.iter().map(Anomaly::name).collect::<Vec<_>>(),
            ["stale_read"]
        );
        let text = r.to_string();
        assert!(
            text.contains("verdict: Invalid") && text.contains("1 stale_read"),
            "{text}"
        );
    }

    #[test]
    fn lost_acknowledged_write_fails() {
        let ops = vec![put(1, (0, 10), "k", "1", 2), put(1, (20, 30), "k", "2", 3)];
        let r = check(ops, Some(&fin(&[("k", "1", 2)])), &[]);
        assert_eq!(r.validity(), Validity::Invalid);
        assert_eq!(
            r.anomalies.iter().map(Anomaly::name).collect::<Vec<_>>(),
            ["lost_write"]
        );
    }

    #[test]
    fn duplicated_append_fails() {
        let ops = vec![append(1, (0, 10), "l", "a", 2), append(1, (20, 30), "l", "b", 3)];
        let r = check(ops, Some(&fin(&[("l", "a,b,b", 4)])), &[]);
        assert_eq!(r.validity(), Validity::Invalid);
        assert!(r.anomalies.iter().any(|a| a.name() == "append_duplicate"), "{r}");
    }

    #[test]
    fn watch_gap_fails() {
        let ops = vec![
            put(1, (0, 10), "k", "1", 2),
            put(1, (20, 30), "k", "2", 3),
            put(1, (40, 50), "k", "3", 4),
        ];
        let ev = |revision, v: &str| WatchEvent {
            revision,
            key: b("k"),
            kind: EventKind::Put,
            value: b(v),
        };
        let w = WatchStream {
            watcher: 1,
            range: KeyRange::single(b"k"),
            start_revision: 2,
            events: vec![ev(2, "1"), ev(4, "3")],
            complete_through: Some(4),
        };
        let r = check(ops, None, &[w]);
        assert_eq!(r.validity(), Validity::Invalid);
        assert_eq!(r.anomalies.iter().map(Anomaly::name).collect::<Vec<_>>(), ["watch_gap"]);
    }

    #[test]
    fn non_monotonic_revision_fails() {
        let r = check(
            vec![put(1, (0, 10), "a", "1", 5), get(1, (20, 30), "b", None, 0, 4)],
            None,
            &[],
        );
        assert_eq!(r.validity(), Validity::Invalid);
        assert_eq!(r.linearizability.validity(), Validity::Valid);
        assert_eq!(
            r.anomalies.iter().map(Anomaly::name).collect::<Vec<_>>(),
            ["revision_went_backwards"]
        );
    }

    #[test]
    fn overlapping_ops_with_timeouts_pass() {
        let ops = vec![
            put(1, (0, 10), "k", "1", 2),
            unknown(put(2, (5, 15), "k", "2", 0)),
            get(3, (8, 20), "k", Some("1"), 2, 2),
            cas(1, (20, 40), "k", Some("2"), "3", true, 4),
            get(3, (25, 30), "k", Some("2"), 3, 3),
            unknown(cas(2, (30, 35), "k", Some("1"), "x", false, 0)),
            append(4, (0, 30), "l", "a", 5),
            unknown(append(5, (10, 20), "l", "b", 0)),
            get(4, (50, 60), "l", Some("a"), 5, 5),
            unknown(append(5, (60, 70), "l", "c", 0)),
        ];
        let state = fin(&[("k", "3", 4), ("l", "a,c", 6)]);
        let ev = |revision, k: &str, v: &str| WatchEvent {
            revision,
            key: b(k),
            kind: EventKind::Put,
            value: b(v),
        };
        let w = WatchStream {
            watcher: 1,
            range: KeyRange {
                start: vec![0],
                end: vec![0],
            },
            start_revision: 1,
            events: vec![
                ev(2, "k", "1"),
                ev(3, "k", "2"),
                ev(4, "k", "3"),
                ev(5, "l", "a"),
                ev(6, "l", "a,c"),
            ],
            complete_through: Some(6),
        };
        let r = check(ops, Some(&state), &[w]);
        assert_eq!(r.validity(), Validity::Valid, "{r}");
        assert!(r.is_valid());
    }
}
