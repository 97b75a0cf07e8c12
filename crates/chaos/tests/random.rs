//! Randomized tests: histories generated from a sequential simulation of an etcd-like store, with
//! random concurrency (a real-time window around each op's linearization point), timeouts and
//! definite failures, must pass every check; corrupting one read detectably must fail; and on
//! small histories the linearizability checker must agree with a brute-force oracle.

use std::collections::BTreeMap;

use concord_chaos::history::{append_to_list, decode_list};
use concord_chaos::*;

/// splitmix64: small, deterministic, good enough for tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

struct Sim {
    ops: Vec<Op>,
    final_state: FinalState,
    /// Every applied write: (revision, key, value after).
    log: Vec<(Revision, Vec<u8>, Vec<u8>)>,
}

struct Params {
    ops: usize,
    register_keys: usize,
    list_keys: usize,
    clients: u64,
    /// Half-width of the real-time window around each linearization point.
    window: u64,
    p_unknown: f64,
    p_failed: f64,
    /// Draw values from this many per key (repeats allowed) instead of unique ones.
    value_pool: Option<u64>,
}

/// Runs `p.ops` ops one after the other on a simulated store; each op's linearization point is
/// `1000 * (i + 1)` and its recorded window is random around it.
fn simulate(rng: &mut Rng, p: &Params) -> Sim {
    let mut state: BTreeMap<Vec<u8>, (Vec<u8>, Revision)> = BTreeMap::new();
    let mut written: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    let mut revision: Revision = 1;
    let mut ops = Vec::new();
    let mut log = Vec::new();
    for i in 0..p.ops {
        let t = 1000 * (i as u64 + 1) + 100_000;
        let invoke = t - rng.below(p.window + 1);
        let complete = t + rng.below(p.window + 1);
        let client = rng.below(p.clients);
        let list = p.list_keys > 0 && (p.register_keys == 0 || rng.chance(0.25));
        let key = if list {
            format!("l{}", rng.below(p.list_keys as u64)).into_bytes()
        } else {
            format!("r{}", rng.below(p.register_keys as u64)).into_bytes()
        };
        let fresh = match p.value_pool {
            Some(n) => format!("v{}", rng.below(n)).into_bytes(),
            None => format!("v{i}").into_bytes(),
        };
        let current = state.get(&key).cloned();
        let roll = rng.below(100);
        let call = if roll < 40 {
            Call::Get { key: key.clone() }
        } else if list {
            Call::Append {
                key: key.clone(),
                elem: format!("e{i}").into_bytes(),
            }
        } else if roll < 70 {
            Call::Put {
                key: key.clone(),
                value: fresh,
            }
        } else {
            let expect = match rng.below(10) {
                0..=4 => current.as_ref().map(|c| c.0.clone()),
                5..=6 => None,
                _ => written.get(&key).map(|w| rng.pick(w).clone()),
            };
            Call::Cas {
                key: key.clone(),
                expect,
                new: fresh,
            }
        };
        let failed = !matches!(call, Call::Get { .. }) && rng.chance(p.p_failed);
        let unknown = !failed && rng.chance(p.p_unknown);
        // An op that timed out took effect half of the time.
        let lost = unknown && rng.chance(0.5);
        let applies = !failed && !lost;
        let mut write = |value: Vec<u8>, revision: &mut Revision| {
            *revision += 1;
            state.insert(key.clone(), (value.clone(), *revision));
            written.entry(key.clone()).or_default().push(value.clone());
            log.push((*revision, key.clone(), value));
            *revision
        };
        let ret = match &call {
            Call::Get { .. } => Ret::Get {
                value: current.as_ref().map(|c| c.0.clone()),
                mod_revision: current.as_ref().map_or(0, |c| c.1),
                revision,
            },
            Call::Put { value, .. } => {
                let r = if applies {
                    write(value.clone(), &mut revision)
                } else {
                    0
                };
                Ret::Put { revision: r }
            }
            Call::Cas { expect, new, .. } => {
                let holds = current.as_ref().map(|c| &c.0) == expect.as_ref();
                if applies && holds {
                    Ret::Cas {
                        succeeded: true,
                        revision: write(new.clone(), &mut revision),
                    }
                } else {
                    Ret::Cas {
                        succeeded: false,
                        revision,
                    }
                }
            }
            Call::Append { elem, .. } => {
                let r = if applies {
                    write(
                        append_to_list(current.as_ref().map(|c| c.0.as_slice()), elem),
                        &mut revision,
                    )
                } else {
                    0
                };
                Ret::Append { revision: r }
            }
        };
        let outcome = if failed {
            Outcome::Failed
        } else if unknown {
            Outcome::Unknown
        } else {
            Outcome::Ok(ret)
        };
        ops.push(Op {
            client,
            invoke,
            complete,
            call,
            outcome,
        });
    }
    let final_state = state
        .into_iter()
        .map(|(k, (value, mod_revision))| (k, FinalRead { value, mod_revision }))
        .collect();
    Sim { ops, final_state, log }
}

fn watches(rng: &mut Rng, sim: &Sim) -> Vec<WatchStream> {
    let event = |(revision, key, value): &(Revision, Vec<u8>, Vec<u8>)| WatchEvent {
        revision: *revision,
        key: key.clone(),
        kind: EventKind::Put,
        value: value.clone(),
    };
    let last = sim.log.last().map_or(1, |e| e.0);
    let everything = WatchStream {
        watcher: 1,
        range: KeyRange {
            start: vec![0],
            end: vec![0],
        },
        start_revision: 2,
        events: sim.log.iter().map(event).collect(),
        complete_through: Some(last),
    };
    // Joined late on the register keys, and cut off early.
    let from = 2 + rng.below(last as u64) as Revision;
    let until = from + rng.below(last as u64) as Revision;
    let partial = WatchStream {
        watcher: 2,
        range: KeyRange::prefix(b"r"),
        start_revision: from,
        events: sim
            .log
            .iter()
            .filter(|e| e.0 >= from && e.0 <= until && e.1.starts_with(b"r"))
            .map(event)
            .collect(),
        complete_through: None,
    };
    vec![everything, partial]
}

fn params(rng: &mut Rng, ops: usize) -> Params {
    Params {
        ops,
        register_keys: 1 + rng.below(4) as usize,
        list_keys: rng.below(3) as usize,
        clients: 2 + rng.below(8),
        window: *rng.pick(&[0, 300, 1500, 4000]),
        p_unknown: *rng.pick(&[0.0, 0.05, 0.15]),
        p_failed: *rng.pick(&[0.0, 0.05]),
        value_pool: None,
    }
}

#[test]
fn simulated_histories_pass_every_check() {
    let mut rng = Rng(1);
    for round in 0..150 {
        let n = 150 + rng.below(150) as usize;
        let p = params(&mut rng, n);
        let sim = simulate(&mut rng, &p);
        let streams = watches(&mut rng, &sim);
        let history = History::new(sim.ops.clone()).unwrap();
        let report = check_all(&history, Some(&sim.final_state), &streams, &Options::default());
        assert!(report.is_valid(), "round {round}: {report}");
    }
}

/// A read of register `key` made stale: it returns the value of a write that another write
/// followed, both completed before the read was invoked. Returns the read's index.
fn make_register_read_stale(rng: &mut Rng, ops: &mut [Op]) -> Option<usize> {
    let mut candidates = Vec::new();
    for (r, read) in ops.iter().enumerate() {
        let Outcome::Ok(Ret::Get { value, revision, .. }) = &read.outcome else {
            continue;
        };
        let key = read.call.key();
        if key[0] != b'r' {
            continue;
        }
        let definite_writes = ops
            .iter()
            .filter(|w| w.call.key() == key && w.write_revision().is_some());
        for w1 in definite_writes.clone() {
            let v1 = match &w1.call {
                Call::Put { value, .. } => value,
                Call::Cas { new, .. } => new,
                _ => continue,
            };
            let followed = definite_writes.clone().any(|w2| w1.precedes(w2) && w2.precedes(read));
            if followed && value.as_ref() != Some(v1) {
                candidates.push((r, v1.clone(), w1.write_revision().unwrap(), *revision));
            }
        }
    }
    if candidates.is_empty() {
        return None;
    }
    let (r, value, mod_revision, revision) = rng.pick(&candidates).clone();
    ops[r].outcome = Outcome::Ok(Ret::Get {
        value: Some(value),
        mod_revision,
        revision,
    });
    Some(r)
}

/// A read of a list that misses an acknowledged append completed before the read was invoked.
fn make_list_read_stale(rng: &mut Rng, ops: &mut [Op]) -> Option<usize> {
    let mut candidates = Vec::new();
    for (r, read) in ops.iter().enumerate() {
        let Outcome::Ok(Ret::Get { value: Some(value), .. }) = &read.outcome else {
            continue;
        };
        for elem in decode_list(value) {
            let acked_before = ops.iter().any(|a| {
                matches!(&a.call, Call::Append { elem: e, .. } if e.as_slice() == elem)
                    && a.ret().is_some()
                    && a.precedes(read)
            });
            if acked_before {
                candidates.push((r, elem.to_vec()));
            }
        }
    }
    if candidates.is_empty() {
        return None;
    }
    let (r, elem) = rng.pick(&candidates).clone();
    let Outcome::Ok(Ret::Get {
        value: Some(value),
        mod_revision,
        revision,
    }) = &ops[r].outcome
    else {
        unreachable!()
    };
    let kept: Vec<&[u8]> = decode_list(value)
        .into_iter()
        .filter(|e| *e != elem.as_slice())
        .collect();
    let value = kept.join(&b','); // Some(""): an empty list written by nobody
    ops[r].outcome = Outcome::Ok(Ret::Get {
        value: Some(value),
        mod_revision: *mod_revision,
        revision: *revision,
    });
    Some(r)
}

#[test]
fn corrupted_reads_are_rejected() {
    let mut rng = Rng(2);
    let (mut registers, mut lists) = (0, 0);
    for round in 0..150 {
        let n = 100 + rng.below(100) as usize;
        let p = params(&mut rng, n);
        let mut ops = simulate(&mut rng, &p).ops;
        let list = round % 2 == 1;
        let corrupted = if list {
            make_list_read_stale(&mut rng, &mut ops)
        } else {
            make_register_read_stale(&mut rng, &mut ops)
        };
        let Some(r) = corrupted else { continue };
        let history = History::new(ops.clone()).unwrap();
        let report = check_linearizability(&history, &LinOptions::default());
        assert_eq!(
            report.validity(),
            Validity::Invalid,
            "round {round}: corrupted {}\n{report}",
            ops[r]
        );
        let c = &report.violations[0];
        assert_eq!(c.key, ops[r].call.key());
        assert!(
            c.ops.iter().any(|o| o.op == ops[r]),
            "round {round}: the corrupted read is needed\n{c}"
        );
        // The other checks see it too: a stale read by revisions, or a lost/incompatible append.
        let anomalies = if list {
            check_appends(&history, None)
        } else {
            check_revisions(&history)
        };
        let expected = if list { "append_lost" } else { "stale_read" };
        assert!(
            anomalies.iter().any(|a| a.name() == expected),
            "round {round}: {anomalies:?}"
        );
        if list {
            lists += 1;
        } else {
            registers += 1;
        }
    }
    assert!(
        registers > 40 && lists > 40,
        "too few detectable corruptions: {registers} {lists}"
    );
}

/// Brute force: is there an order of the ops (those with unknown outcomes optional) that respects
/// real time and replays to the recorded results? Exhaustive over (set of ops done, state), with
/// the failures remembered; only for a few ops on one key.
fn oracle(ops: &[Op]) -> bool {
    use std::collections::HashSet;
    let ops: Vec<&Op> = ops
        .iter()
        .filter(|op| {
            op.outcome != Outcome::Failed && !(op.outcome == Outcome::Unknown && matches!(op.call, Call::Get { .. }))
        })
        .collect();
    assert!(ops.len() <= 20);
    let definite: u32 = (0..ops.len())
        .filter(|&i| ops[i].outcome != Outcome::Unknown)
        .map(|i| 1 << i)
        .sum();
    fn dfs(
        ops: &[&Op],
        definite: u32,
        done: u32,
        state: Option<Vec<u8>>,
        failed: &mut HashSet<(u32, Option<Vec<u8>>)>,
    ) -> bool {
        if definite & !done == 0 {
            return true;
        }
        if failed.contains(&(done, state.clone())) {
            return false;
        }
        for x in 0..ops.len() {
            if done & (1 << x) != 0 {
                continue;
            }
            // Every op not done yet that completed before x was invoked would have to precede x.
            if (0..ops.len()).any(|y| y != x && done & (1 << y) == 0 && ops[y].precedes(ops[x])) {
                continue;
            }
            let next = match (&ops[x].call, ops[x].ret()) {
                (Call::Get { .. }, Some(Ret::Get { value, .. })) => {
                    if *value != state {
                        continue;
                    }
                    state.clone()
                }
                (Call::Put { value, .. }, _) => Some(value.clone()),
                (Call::Cas { expect, new, .. }, ret) => {
                    let holds = state == *expect;
                    if let Some(Ret::Cas { succeeded, .. }) = ret {
                        if *succeeded != holds {
                            continue;
                        }
                    }
                    if holds {
                        Some(new.clone())
                    } else {
                        state.clone()
                    }
                }
                (Call::Append { elem, .. }, _) => Some(append_to_list(state.as_deref(), elem)),
                _ => unreachable!(),
            };
            if dfs(ops, definite, done | (1 << x), next, failed) {
                return true;
            }
        }
        failed.insert((done, state));
        false
    }
    dfs(&ops, definite, 0, None, &mut HashSet::new())
}

/// Changes one op's result at random (a possibly undetectable corruption).
fn perturb(rng: &mut Rng, ops: &mut [Op], values: u64) {
    let i = rng.below(ops.len() as u64) as usize;
    let random_value = |rng: &mut Rng| format!("v{}", rng.below(values)).into_bytes();
    ops[i].outcome = match (&ops[i].call, &ops[i].outcome) {
        (Call::Get { .. }, Outcome::Ok(Ret::Get { revision, .. })) => {
            if rng.chance(0.3) {
                Outcome::Ok(Ret::Get {
                    value: None,
                    mod_revision: 0,
                    revision: *revision,
                })
            } else {
                Outcome::Ok(Ret::Get {
                    value: Some(random_value(rng)),
                    mod_revision: 1,
                    revision: (*revision).max(1),
                })
            }
        }
        (Call::Cas { .. }, Outcome::Ok(Ret::Cas { succeeded, revision })) => Outcome::Ok(Ret::Cas {
            succeeded: !succeeded,
            revision: (*revision).max(1),
        }),
        (Call::Put { .. }, _) => Outcome::Ok(Ret::Put { revision: 1 }),
        (_, Outcome::Unknown) => Outcome::Ok(match &ops[i].call {
            Call::Put { .. } => Ret::Put { revision: 1 },
            Call::Append { .. } => Ret::Append { revision: 1 },
            _ => return,
        }),
        _ => return,
    };
    // Move the op's window somewhere else now and then.
    if rng.chance(0.3) {
        let shift = rng.below(3000);
        ops[i].invoke = ops[i].invoke.saturating_sub(shift);
    }
}

#[test]
fn agrees_with_brute_force_on_small_histories() {
    let mut rng = Rng(3);
    let (mut linearizable, mut not) = (0, 0);
    for round in 0..3000 {
        let list = round % 4 == 3;
        let values = 1 + rng.below(4);
        let p = Params {
            ops: 2 + rng.below(9) as usize,
            register_keys: usize::from(!list),
            list_keys: usize::from(list),
            clients: 3,
            window: *rng.pick(&[300, 1500, 4000]),
            p_unknown: 0.2,
            p_failed: 0.05,
            value_pool: Some(values),
        };
        let mut ops = simulate(&mut rng, &p).ops;
        assert!(oracle(&ops), "round {round}: the simulation is linearizable");
        if rng.chance(0.7) {
            perturb(&mut rng, &mut ops, values);
        }
        if rng.chance(0.3) {
            perturb(&mut rng, &mut ops, values);
        }
        let Ok(history) = History::new(ops.clone()) else {
            continue;
        };
        let report = check_linearizability(&history, &LinOptions::default());
        let expected = oracle(history.ops());
        let shown: Vec<String> = history.ops().iter().map(|o| o.to_string()).collect();
        assert_eq!(
            report.validity() == Validity::Valid,
            expected,
            "round {round}:\n{}\n{report}",
            shown.join("\n")
        );
        if expected {
            linearizable += 1;
            continue;
        }
        not += 1;
        // The counterexample fails on its own (with cut ops' results dropped)...
        let c = &report.violations[0];
        let mut excerpt: Vec<Op> = c.ops.iter().map(|o| o.op.clone()).collect();
        for (op, e) in c.ops.iter().zip(&mut excerpt) {
            if op.cut {
                e.outcome = Outcome::Unknown;
            }
        }
        assert!(!oracle(&excerpt), "round {round}: counterexample passes:\n{c}");
        // ... and is 1-minimal: dropping any get leaves a linearizable set.
        assert!(c.minimal, "round {round}: {c}");
        for i in 0..excerpt.len() {
            if matches!(excerpt[i].call, Call::Get { .. }) {
                let mut fewer = excerpt.clone();
                fewer.remove(i);
                assert!(oracle(&fewer), "round {round}: get {i} is not needed:\n{c}");
            }
        }
    }
    assert!(
        linearizable > 300 && not > 300,
        "{linearizable} linearizable, {not} not"
    );
}

#[test]
fn large_histories_finish_quickly() {
    // Many keys, heavy concurrency and timeouts; then one hot key with about 60 ops in flight at
    // any time and 30% timeouts. The search must stay tractable (well within its step budget).
    let mut rng = Rng(4);
    let many_keys = Params {
        ops: 20_000,
        register_keys: 50,
        list_keys: 10,
        clients: 30,
        window: 8000,
        p_unknown: 0.15,
        p_failed: 0.02,
        value_pool: None,
    };
    let hot_key = Params {
        ops: 5000,
        register_keys: 1,
        list_keys: 0,
        window: 30_000,
        p_unknown: 0.3,
        ..many_keys
    };
    let hot_list = Params {
        ops: 2000,
        register_keys: 0,
        list_keys: 1,
        ..hot_key
    };
    for p in [many_keys, hot_key, hot_list] {
        let sim = simulate(&mut rng, &p);
        let streams = watches(&mut rng, &sim);
        let history = History::new(sim.ops).unwrap();
        let start = std::time::Instant::now();
        let report = check_all(&history, Some(&sim.final_state), &streams, &Options::default());
        assert!(report.is_valid(), "{report}");
        assert!(start.elapsed().as_secs() < 60, "took {:?}", start.elapsed());
    }
}
