//! The list-append workload check.
//!
//! A list key holds its elements joined by `,`; clients append with read-modify-write Txns that
//! compare `mod_revision` (see [`Call::Append`]) and read the whole
//! list with gets. Since a list only ever grows, every read (and the final read after healing) is
//! a prefix of the next longer one, which makes many anomalies directly visible. Per list key,
//! over every get and the final read:
//!
//! - no element appears twice in one read (an append applied twice: a retry that went through
//!   again);
//! - every element was appended by an op that may have taken effect (not never attempted, not
//!   failed definitely), and not by one invoked after the read completed;
//! - every acknowledged append that completed before a read was invoked is in that read, and
//!   every acknowledged append is in the final list;
//! - all reads are prefixes of the longest one, and a read never returns fewer elements than a
//!   read that completed before it was invoked;
//! - in the longest read, acknowledged appends are in revision order, and an append that
//!   completed before another was invoked comes before it.
//!
//! Each duplicate, unexplained element and lost append is reported once (at the first read that
//! shows it, plus the final read for lost appends).

use std::collections::{HashMap, HashSet};

use crate::anomaly::{Anomaly, ListSource};
use crate::checks::FinalState;
use crate::history::{decode_list, Call, History, Op, Outcome, Ret, Timestamp};

/// One read of a list.
struct ListRead<'a> {
    source: ListSource,
    invoke: Timestamp,
    complete: Timestamp,
    list: Vec<&'a [u8]>,
}

/// Checks the list-append keys of `history` (the keys with at least one append), with the state
/// read after healing if there is one (see the module docs).
pub fn check_appends(history: &History, final_state: Option<&FinalState>) -> Vec<Anomaly> {
    let mut keys: Vec<&[u8]> = history.append_keys().into_iter().collect();
    keys.sort_unstable();
    let mut out = Vec::new();
    for key in keys {
        check_key(history, key, final_state, &mut out);
    }
    out
}

fn check_key(history: &History, key: &[u8], final_state: Option<&FinalState>, out: &mut Vec<Anomaly>) {
    let ops: Vec<&Op> = history.ops().iter().filter(|op| op.call.key() == key).collect();
    let mut appends: HashMap<&[u8], &Op> = HashMap::new();
    for op in &ops {
        if let Call::Append { elem, .. } = &op.call {
            appends.insert(elem, op);
        }
    }
    let mut reads: Vec<ListRead<'_>> = Vec::new();
    for op in &ops {
        if let Some(Ret::Get { value, .. }) = op.ret() {
            reads.push(ListRead {
                source: ListSource::Get((*op).clone()),
                invoke: op.invoke,
                complete: op.complete,
                list: value.as_deref().map(decode_list).unwrap_or_default(),
            });
        }
    }
    if let Some(state) = final_state {
        let read = state.get(key);
        reads.push(ListRead {
            source: ListSource::Final(read.cloned()),
            invoke: Timestamp::MAX,
            complete: Timestamp::MAX,
            list: read.map(|r| decode_list(&r.value)).unwrap_or_default(),
        });
    }
    // Acknowledged appends by completion.
    let mut acked: Vec<&Op> = appends.values().copied().filter(|op| op.ret().is_some()).collect();
    acked.sort_by_key(|op| op.complete);

    let mut reported_duplicate: HashSet<&[u8]> = HashSet::new();
    let mut reported_unexplained: HashSet<&[u8]> = HashSet::new();
    let mut reported_future: HashSet<&[u8]> = HashSet::new();
    let mut reported_stale: HashSet<&[u8]> = HashSet::new();
    for read in &reads {
        let is_final = matches!(read.source, ListSource::Final(_));
        let mut members: HashSet<&[u8]> = HashSet::new();
        let mut must_present = 0;
        for &elem in &read.list {
            if !members.insert(elem) {
                if reported_duplicate.insert(elem) {
                    out.push(Anomaly::AppendDuplicate {
                        elem: elem.to_vec(),
                        read: read.source.clone(),
                    });
                }
                continue;
            }
            match appends.get(elem) {
                None => {
                    if reported_unexplained.insert(elem) {
                        out.push(Anomaly::AppendUnexplained {
                            elem: elem.to_vec(),
                            read: read.source.clone(),
                            failed: None,
                        });
                    }
                }
                Some(op) if op.outcome == Outcome::Failed => {
                    if reported_unexplained.insert(elem) {
                        out.push(Anomaly::AppendUnexplained {
                            elem: elem.to_vec(),
                            read: read.source.clone(),
                            failed: Some((*op).clone()),
                        });
                    }
                }
                Some(op) => {
                    if read.complete < op.invoke && reported_future.insert(elem) {
                        out.push(Anomaly::AppendFromFuture {
                            append: (*op).clone(),
                            read: read.source.clone(),
                        });
                    }
                    if op.ret().is_some() && op.complete < read.invoke {
                        must_present += 1;
                    }
                }
            }
        }
        // Acknowledged appends completed before the read: all must be members.
        let due = acked.partition_point(|op| op.complete < read.invoke);
        if must_present < due {
            for op in &acked[..due] {
                let Call::Append { elem, .. } = &op.call else {
                    continue;
                };
                if !members.contains(elem.as_slice()) && (is_final || reported_stale.insert(elem)) {
                    out.push(Anomaly::AppendLost {
                        append: (*op).clone(),
                        read: read.source.clone(),
                    });
                }
            }
        }
    }

    // Lists only grow: every read is a prefix of the longest.
    let Some(longest) = reads.iter().max_by_key(|r| r.list.len()) else {
        return;
    };
    if let Some(bad) = reads.iter().find(|r| !longest.list.starts_with(&r.list)) {
        out.push(Anomaly::AppendIncompatibleReads {
            read: bad.source.clone(),
            longest: longest.source.clone(),
        });
    }
    // ... and never shrink in real time. `reads` is in invocation order (the final read last).
    let mut by_complete: Vec<&ListRead<'_>> = reads.iter().collect();
    by_complete.sort_by_key(|r| r.complete);
    let mut j = 0;
    let mut longest_before: Option<&ListRead<'_>> = None;
    for later in &reads {
        while j < by_complete.len() && by_complete[j].complete < later.invoke {
            if longest_before.is_none_or(|l| by_complete[j].list.len() > l.list.len()) {
                longest_before = Some(by_complete[j]);
            }
            j += 1;
        }
        if let Some(earlier) = longest_before {
            if later.list.len() < earlier.list.len() {
                out.push(Anomaly::AppendShrank {
                    earlier: earlier.source.clone(),
                    later: later.source.clone(),
                });
            }
        }
    }

    // Order within the longest list.
    let mut position: HashMap<&[u8], usize> = HashMap::new();
    for (i, &elem) in longest.list.iter().enumerate() {
        position.entry(elem).or_insert(i);
    }
    let pos = |op: &Op| match &op.call {
        Call::Append { elem, .. } => position.get(elem.as_slice()).copied(),
        _ => None,
    };
    let mut by_revision: Vec<(i64, usize, &Op)> = acked
        .iter()
        .filter_map(|op| Some((op.write_revision()?, pos(op)?, *op)))
        .collect();
    by_revision.sort_by_key(|w| w.0);
    for pair in by_revision.windows(2) {
        if pair[1].1 < pair[0].1 {
            out.push(Anomaly::AppendOrder {
                first: pair[0].2.clone(),
                second: pair[1].2.clone(),
                read: longest.source.clone(),
            });
        }
    }
    // Real time: sweep appends present in the list (any outcome but failed) by invocation,
    // folding in acknowledged ones completed strictly before.
    let mut present: Vec<(&Op, usize)> = appends
        .values()
        .filter(|op| op.outcome != Outcome::Failed)
        .filter_map(|op| Some((*op, pos(op)?)))
        .collect();
    present.sort_by_key(|p| p.0.invoke);
    let mut done: Vec<(&Op, usize)> = present.iter().copied().filter(|p| p.0.ret().is_some()).collect();
    done.sort_by_key(|p| p.0.complete);
    let mut j = 0;
    let mut furthest: Option<(&Op, usize)> = None;
    for &(second, p) in &present {
        while j < done.len() && done[j].0.complete < second.invoke {
            if furthest.is_none_or(|f| done[j].1 > f.1) {
                furthest = Some(done[j]);
            }
            j += 1;
        }
        if let Some((first, q)) = furthest {
            if q > p {
                out.push(Anomaly::AppendOrder {
                    first: first.clone(),
                    second: second.clone(),
                    read: longest.source.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::FinalRead;
    use crate::testutil::*;

    fn names(anomalies: &[Anomaly]) -> Vec<&'static str> {
        anomalies.iter().map(Anomaly::name).collect()
    }

    fn fin(value: &str, mod_revision: i64) -> FinalState {
        [(
            b("l"),
            FinalRead {
                value: b(value),
                mod_revision,
            },
        )]
        .into_iter()
        .collect()
    }

    fn appends() -> Vec<Op> {
        vec![
            append(1, (0, 10), "l", "x", 2),
            append(2, (5, 25), "l", "y", 3),
            unknown(append(3, (30, 40), "l", "z", 0)),
            failed(append(3, (50, 60), "l", "f", 0)),
            get(4, (12, 14), "l", Some("x"), 2, 2),
            get(4, (26, 28), "l", Some("x,y"), 3, 3),
        ]
    }

    #[test]
    fn consistent_lists_pass() {
        let h = history(appends());
        assert_eq!(check_appends(&h, Some(&fin("x,y", 3))), vec![]);
        // The timed-out append went through.
        assert_eq!(check_appends(&h, Some(&fin("x,y,z", 4))), vec![]);
        assert_eq!(check_appends(&h, None), vec![]);
    }

    #[test]
    fn duplicated_append_is_rejected() {
        let h = history(appends());
        let found = check_appends(&h, Some(&fin("x,y,x", 4)));
        assert_eq!(names(&found), ["append_duplicate"]);
        assert!(found[0].to_string().contains("\"x\""), "{}", found[0]);
    }

    #[test]
    fn lost_append_is_rejected() {
        let h = history(appends());
        assert_eq!(
            names(&check_appends(&h, Some(&fin("x", 2)))),
            ["append_lost", "append_shrank"]
        );
        assert_eq!(
            names(&check_appends(&h, Some(&fin("x,z", 4)))),
            ["append_lost", "append_incompatible_reads"]
        );
    }

    #[test]
    fn stale_list_read_is_rejected() {
        let mut ops = appends();
        ops.push(get(5, (30, 35), "l", Some("x"), 2, 2));
        let found = check_appends(&history(ops), None);
        assert_eq!(names(&found), ["append_lost", "append_shrank"]);
    }

    #[test]
    fn unexplained_elements_are_rejected() {
        let h = history(appends());
        let found = check_appends(&h, Some(&fin("x,y,f,w", 5)));
        assert_eq!(names(&found), ["append_unexplained", "append_unexplained"]);
        assert!(found[0].to_string().contains("failed"), "{}", found[0]);
        assert!(found[1].to_string().contains("never appended"), "{}", found[1]);
    }

    #[test]
    fn read_from_the_future_is_rejected() {
        let mut ops = appends();
        ops.push(get(5, (20, 22), "l", Some("x,y,z"), 4, 4));
        let found = check_appends(&history(ops), None);
        assert_eq!(names(&found), ["append_from_future", "append_shrank"]);
    }

    #[test]
    fn reordered_appends_are_rejected() {
        let ops = vec![
            append(1, (0, 10), "l", "x", 2),
            append(2, (20, 30), "l", "y", 3),
            get(4, (40, 50), "l", Some("y,x"), 3, 3),
        ];
        let found = check_appends(&history(ops), None);
        assert_eq!(names(&found), ["append_order", "append_order"]);
        // Concurrent appends may land in either order, but revisions still tell.
        let ops = vec![
            append(1, (0, 30), "l", "x", 3),
            append(2, (0, 30), "l", "y", 2),
            get(4, (40, 50), "l", Some("y,x"), 3, 3),
        ];
        assert_eq!(check_appends(&history(ops), None), vec![]);
    }
}
