//! Linearizability of a KV history, key by key.
//!
//! # Model
//!
//! Each key is a register holding `Option<bytes>` (absent at first): a get returns it, a put sets
//! it, a Cas sets it when it equals `expect` and reports whether it did, and an append sets it to
//! `old + "," + elem` (or `elem` when absent or empty). A history is *linearizable* when every op
//! with a known outcome can be given one instant within `[invoke, complete]`, and every op with an
//! unknown outcome either an instant after its invocation or none at all, so that replaying the
//! ops in that order through the model gives exactly the results the clients saw.
//!
//! # Algorithm
//!
//! Linearizability is *local*: a history is linearizable exactly when each key's sub-history is,
//! so keys are checked independently (in parallel). Per key, the search is Wing and Gong's
//! backtracking with Lowe's and Porcupine's refinements, plus reductions that each provably keep
//! the verdict:
//!
//! - Invocations and completions form one doubly linked list in time order. At each
//!   configuration, the candidates to linearize next are the ops invoked before the earliest
//!   completion still in the list (the op completing there must be linearized first). A
//!   candidate is taken when the model accepts its result; its two events are unlinked. When no
//!   candidate is left, the search backtracks to the previous configuration.
//! - Configurations already explored, as (bitset of linearized ops, model state), are
//!   remembered; reaching one again cannot lead anywhere new.
//! - Ops with an unknown outcome have no completion event and never need to be linearized: the
//!   search succeeds once every op with a known outcome is linearized. Taking one where it would
//!   change nothing is never needed.
//! - Candidates are tried earliest deadline first, unknown outcomes last (most recent first).
//! - A get (or a Cas known to have failed) whose result matches the current state changes
//!   nothing, so if any linearization exists from here, one taking it next does: it becomes the
//!   only candidate.
//! - Leaving a value while an unlinearized op still needs it (a get returning it, a Cas known to
//!   have succeeded expecting it) and no unlinearized op can write it again is cut at once.
//! - Written values that nothing observes are indistinguishable and are merged into one state;
//!   pending ops that would write such a value now are interchangeable, so only one is tried.
//! - Before the search, unknown writes whose value no op observes are dropped, and an unknown
//!   write that alone produces a value (or list element) a definite op needs is made definite,
//!   with the earliest completion among the ops needing it as its deadline.
//! - For a list key (appends), lists are hash-consed (an append is O(1)), and a state that is
//!   neither a prefix nor an extension of the longest list read is cut: lists only grow, so every
//!   state of a linearization is a prefix of its last one.
//! - The search is bounded by a step budget per key and a global deadline; past either, the key's
//!   key is reported unknown ([`UnknownKey`]) instead of hanging.
//!
//! # Counterexamples
//!
//! A key that fails is shrunk to a small set of its ops that still has no linearization, within a
//! time budget. Every shrinking step is chosen so that the smaller set failing *implies* the
//! original failing (so the counterexample is evidence, not an artefact of dropping ops):
//!
//! - cut at an invocation: keep the ops invoked before the cut, and treat those still running at
//!   the cut as having unknown outcomes (they are flagged [`CounterexampleOp::cut`]);
//! - drop a get, or a Cas whose compare is known to have failed (neither changes the state);
//! - drop a write whose written value (element, for appends) no remaining op observes, provided
//!   every remaining Cas known to have failed completed before the write was invoked.
//!
//! Cuts are found by bisection, then ops are dropped delta-debugging style (halves, quarters, ...,
//! single ops). The result is *1-minimal* when no single op can be dropped by those rules while the
//! set stays non-linearizable.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::history::{decode_list, Bytes, Call, History, Op, Outcome, Ret, Timestamp};

/// Limits of the linearizability search.
#[derive(Clone, Debug)]
pub struct LinOptions {
    /// The most search steps spent on one key (and on each check while shrinking one); past it
    /// the key is reported unknown ([`UnknownKey`]). Memory grows with steps (one cached
    /// configuration per step at most: a bitset of the key's ops and a state).
    pub max_steps_per_key: u64,
    /// Wall-clock limit of the search, shrinking excluded; keys not done by then are reported
    /// unknown.
    pub time_limit: Option<Duration>,
    /// Wall-clock budget for shrinking each failing key's counterexample; past it, the
    /// counterexample is reported as far as it got (not flagged minimal). Shrinking also stops
    /// at `time_limit + shrink_time` after the check started, so that many failing keys cannot
    /// hold it up.
    pub shrink_time: Duration,
    /// Worker threads (keys are checked in parallel); 0 means the machine's parallelism.
    pub threads: usize,
}

impl Default for LinOptions {
    /// 5 million steps per key, 120 s in all, 10 s of shrinking per failing key, all cores.
    fn default() -> Self {
        LinOptions {
            max_steps_per_key: 5_000_000,
            time_limit: Some(Duration::from_secs(120)),
            shrink_time: Duration::from_secs(10),
            threads: 0,
        }
    }
}

/// Why a key's verdict is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inconclusive {
    /// The step budget ([`LinOptions::max_steps_per_key`]) ran out.
    StepBudget,
    /// The time limit ([`LinOptions::time_limit`]) passed.
    TimeLimit,
}

impl fmt::Display for Inconclusive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Inconclusive::StepBudget => "step budget exhausted",
            Inconclusive::TimeLimit => "time limit reached",
        })
    }
}

/// One op of a counterexample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterexampleOp {
    /// Its index in [`History::ops`].
    pub index: usize,
    /// The op as recorded.
    pub op: Op,
    /// The op was still running where the counterexample was cut, so its outcome is treated as
    /// unknown (its recorded result and completion are not used).
    pub cut: bool,
}

/// A set of ops on one key that has no linearization, and whose failing proves that the whole
/// history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counterexample {
    /// The key.
    pub key: Vec<u8>,
    /// How many ops the history has on this key (definite failures and unknown gets excluded).
    pub key_ops: usize,
    /// The ops, by invocation time.
    pub ops: Vec<CounterexampleOp>,
    /// Whether shrinking finished: no single op can be dropped (by the sound rules in the module
    /// docs) with the rest still failing.
    pub minimal: bool,
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {}: not linearizable; these {} of its {} ops have no linearization ({}):",
            Bytes(&self.key),
            self.ops.len(),
            self.key_ops,
            if self.minimal {
                "1-minimal"
            } else {
                "shrinking stopped early, may not be minimal"
            }
        )?;
        const SHOWN: usize = 100;
        if self.ops.len() > SHOWN {
            writeln!(f, "  (the first {SHOWN} of them)")?;
        }
        for op in self.ops.iter().take(SHOWN) {
            write!(f, "  #{:<6} {}", op.index, op.op)?;
            if op.cut {
                f.write_str("  [still running at the cut: result not used]")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// The verdict on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum KeyVerdict {
    /// The key's sub-history is linearizable.
    Linearizable,
    /// It is not; here is why.
    NotLinearizable(Counterexample),
    /// The search gave up.
    Unknown(Inconclusive),
}

/// A key whose search gave up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownKey {
    /// The key.
    pub key: Vec<u8>,
    /// Its number of ops.
    pub ops: usize,
    /// Why the search gave up.
    pub reason: Inconclusive,
}

/// The result of [`check_linearizability`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinReport {
    /// Keys checked.
    pub keys: usize,
    /// Ops checked (definite failures and unknown gets excluded).
    pub ops: usize,
    /// One counterexample per failing key, by key.
    pub violations: Vec<Counterexample>,
    /// Keys whose search gave up, by key.
    pub unknown: Vec<UnknownKey>,
    /// Search steps spent, shrinking excluded.
    pub steps: u64,
}

impl LinReport {
    /// [`Validity::Invalid`](crate::Validity::Invalid) when some key failed, else
    /// [`Validity::Unknown`](crate::Validity::Unknown) when some key gave up, else valid.
    pub fn validity(&self) -> crate::Validity {
        if !self.violations.is_empty() {
            crate::Validity::Invalid
        } else if !self.unknown.is_empty() {
            crate::Validity::Unknown
        } else {
            crate::Validity::Valid
        }
    }
}

impl fmt::Display for LinReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "linearizability: {} keys, {} ops, {} steps: {} not linearizable, {} unknown",
            self.keys,
            self.ops,
            self.steps,
            self.violations.len(),
            self.unknown.len()
        )?;
        for v in &self.violations {
            v.fmt(f)?;
        }
        for u in &self.unknown {
            writeln!(f, "key {} ({} ops): unknown, {}", Bytes(&u.key), u.ops, u.reason)?;
        }
        Ok(())
    }
}

/// Checks every key of `history` for linearizability (see the module docs).
pub fn check_linearizability(history: &History, options: &LinOptions) -> LinReport {
    let start = Instant::now();
    let deadline = options.time_limit.map(|d| start + d);
    let shrink_deadline = deadline.map(|d| d + options.shrink_time);
    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (i, op) in history.ops().iter().enumerate() {
        by_key.entry(op.call.key()).or_default().push(i);
    }
    let keys: Vec<(&[u8], Vec<usize>)> = by_key.into_iter().collect();
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, keys.len().max(1));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, usize, KeyVerdict, u64)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some((key, indices)) = keys.get(k) else {
                    break;
                };
                let (ops, verdict, steps) = check_key(history, key, indices, options, deadline, shrink_deadline);
                results
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((k, ops, verdict, steps));
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|r| r.0);
    let mut report = LinReport {
        keys: keys.len(),
        ..LinReport::default()
    };
    for (k, ops, verdict, steps) in results {
        report.ops += ops;
        report.steps += steps;
        match verdict {
            KeyVerdict::Linearizable => {}
            KeyVerdict::NotLinearizable(c) => report.violations.push(c),
            KeyVerdict::Unknown(reason) => report.unknown.push(UnknownKey {
                key: keys[k].0.to_vec(),
                ops,
                reason,
            }),
        }
    }
    report
}

/// Checks the ops of one key: (ops considered, verdict, steps).
fn check_key(
    history: &History,
    key: &[u8],
    indices: &[usize],
    options: &LinOptions,
    deadline: Option<Instant>,
    shrink_deadline: Option<Instant>,
) -> (usize, KeyVerdict, u64) {
    let (mut model, ops) = Model::prepare(history, indices);
    let considered = ops.len();
    let reduced = model.drop_unobserved_pending_writes(&ops);
    let budget = Budget {
        max_steps: options.max_steps_per_key,
        deadline,
    };
    let (result, steps) = model.search(&reduced, &budget);
    let verdict = match result {
        Search::Linearizable => KeyVerdict::Linearizable,
        Search::Inconclusive(reason) => KeyVerdict::Unknown(reason),
        Search::NotLinearizable => {
            let own = Instant::now() + options.shrink_time;
            let shrink_budget = Budget {
                max_steps: options.max_steps_per_key,
                deadline: Some(shrink_deadline.map_or(own, |d| own.min(d))),
            };
            let (ops, minimal) = model.shrink(reduced, &shrink_budget);
            let ops = ops
                .iter()
                .map(|m| CounterexampleOp {
                    index: m.src,
                    op: history.ops()[m.src].clone(),
                    cut: m.cut,
                })
                .collect();
            KeyVerdict::NotLinearizable(Counterexample {
                key: key.to_vec(),
                key_ops: considered,
                ops,
                minimal,
            })
        }
    };
    (considered, verdict, steps)
}

/// A value id: 0 is "absent", others index [`Model::values`].
type ValueId = u32;
const ABSENT: ValueId = 0;

/// An op in the model's terms.
#[derive(Clone, Copy, Debug)]
struct MOp {
    invoke: Timestamp,
    /// `Timestamp::MAX` when the outcome is unknown (or cut).
    complete: Timestamp,
    kind: Kind,
    /// Index in the history.
    src: usize,
    /// Made pending by a cut.
    cut: bool,
}

impl MOp {
    fn pending(&self) -> bool {
        self.complete == Timestamp::MAX
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Read(ValueId),
    Write(ValueId),
    Cas {
        expect: ValueId,
        new: ValueId,
        succeeded: Option<bool>,
    },
    /// The element's id in [`Model::elems`].
    Append(u32),
}

/// One key's interned values and the model's transition function.
///
/// A register key's values are interned byte strings (`values`). A list key (one with appends;
/// History::new keeps puts and Cas off them) has hash-consed lists instead: a list is a node
/// (parent list, last element), so equal lists have equal ids and an append costs O(1).
#[derive(Default)]
struct Model {
    /// Whether this is a list key.
    list: bool,
    /// Register values by id (index 0, absent, unused).
    values: Vec<Vec<u8>>,
    value_ids: HashMap<Vec<u8>, ValueId>,
    /// List nodes by id: (parent, element, length); index 0 is the absent list.
    nodes: Vec<(ValueId, u32, u32)>,
    /// (list, element) -> list with the element appended.
    appended: HashMap<(ValueId, u32), ValueId>,
    elem_ids: HashMap<Vec<u8>, u32>,
    elems: Vec<Vec<u8>>,
    /// Element ids of each list (computed on demand).
    list_elems: HashMap<ValueId, Vec<u32>>,
    /// In a list search: the prefixes of the longest list read, by length. A list only grows, so
    /// in any linearization every state is a prefix of the last one, and so is comparable with
    /// this read; states that are not can be cut (see [`Model::comparable`]).
    reference: Vec<ValueId>,
}

/// The element of the node standing for an empty but present list value, which no append makes.
const NO_ELEM: u32 = u32::MAX;

enum Search {
    Linearizable,
    NotLinearizable,
    Inconclusive(Inconclusive),
}

/// A configuration on the search path: its candidates are `arena[start..]` up to the next
/// frame's `start`; `next` is the next to try; `chosen` is the op taken from here and the state
/// before it.
struct Frame {
    start: usize,
    next: usize,
    chosen: Option<(usize, ValueId)>,
}

struct Budget {
    max_steps: u64,
    deadline: Option<Instant>,
}

impl Model {
    /// The model ops of the key's ops at `indices` (definite failures and unknown gets dropped).
    fn prepare(history: &History, indices: &[usize]) -> (Model, Vec<MOp>) {
        let list = indices
            .iter()
            .any(|&i| matches!(history.ops()[i].call, Call::Append { .. }));
        let mut model = Model {
            list,
            values: vec![Vec::new()],
            nodes: vec![(ABSENT, NO_ELEM, 0)],
            ..Model::default()
        };
        let mut ops = Vec::with_capacity(indices.len());
        for &i in indices {
            let op = &history.ops()[i];
            let ret = match &op.outcome {
                Outcome::Failed => continue,
                Outcome::Unknown if matches!(op.call, Call::Get { .. }) => continue,
                Outcome::Unknown => None,
                Outcome::Ok(ret) => Some(ret),
            };
            let kind = match (&op.call, ret) {
                (Call::Get { .. }, Some(Ret::Get { value, .. })) => Kind::Read(model.intern(value.as_deref())),
                (Call::Put { value, .. }, _) => Kind::Write(model.intern(Some(value))),
                (Call::Cas { expect, new, .. }, ret) => Kind::Cas {
                    expect: model.intern(expect.as_deref()),
                    new: model.intern(Some(new)),
                    succeeded: match ret {
                        Some(Ret::Cas { succeeded, .. }) => Some(*succeeded),
                        _ => None,
                    },
                },
                (Call::Append { elem, .. }, _) => Kind::Append(model.elem(elem)),
                // History::new guarantees the result matches the call.
                (Call::Get { .. }, _) => {
                    unreachable!("a get with a known outcome returns Ret::Get")
                }
            };
            let complete = if ret.is_some() { op.complete } else { Timestamp::MAX };
            ops.push(MOp {
                invoke: op.invoke,
                complete,
                kind,
                src: i,
                cut: false,
            });
        }
        (model, ops)
    }

    /// The id of a value: an interned byte string, or for a list key, its list node.
    fn intern(&mut self, value: Option<&[u8]>) -> ValueId {
        let Some(value) = value else { return ABSENT };
        if self.list {
            if value.is_empty() {
                // Present but empty: no sequence of appends makes it.
                return self.node(ABSENT, NO_ELEM);
            }
            let mut id = ABSENT;
            for elem in decode_list(value) {
                let e = self.elem(elem);
                id = self.node(id, e);
            }
            return id;
        }
        if let Some(&id) = self.value_ids.get(value) {
            return id;
        }
        let id = self.values.len() as ValueId;
        self.values.push(value.to_vec());
        self.value_ids.insert(value.to_vec(), id);
        id
    }

    /// The list `parent` with `elem` appended.
    fn node(&mut self, parent: ValueId, elem: u32) -> ValueId {
        if let Some(&id) = self.appended.get(&(parent, elem)) {
            return id;
        }
        let id = self.nodes.len() as ValueId;
        let len = self.nodes[parent as usize].2 + 1;
        self.nodes.push((parent, elem, len));
        self.appended.insert((parent, elem), id);
        id
    }

    fn elem(&mut self, elem: &[u8]) -> u32 {
        if let Some(&id) = self.elem_ids.get(elem) {
            return id;
        }
        let id = self.elems.len() as u32;
        self.elems.push(elem.to_vec());
        self.elem_ids.insert(elem.to_vec(), id);
        id
    }

    /// Whether list `id` is a prefix of the reference read or extends it.
    fn comparable(&self, mut id: ValueId) -> bool {
        let Some(&last) = self.reference.last() else {
            return true;
        };
        let top = self.reference.len() - 1;
        let len = self.nodes[id as usize].2 as usize;
        if len <= top {
            return self.reference[len] == id;
        }
        for _ in top..len {
            id = self.nodes[id as usize].0;
        }
        id == last
    }

    /// Sets [`Model::reference`] to the longest list read among `ops` (list keys only).
    fn set_reference(&mut self, ops: &[MOp]) {
        self.reference.clear();
        if !self.list {
            return;
        }
        let longest = ops
            .iter()
            .filter_map(|op| match op.kind {
                Kind::Read(v) => Some(v),
                _ => None,
            })
            .max_by_key(|&v| self.nodes[v as usize].2);
        let mut id = longest.unwrap_or(ABSENT);
        self.reference = vec![ABSENT; self.nodes[id as usize].2 as usize + 1];
        while id != ABSENT {
            let (parent, _, len) = self.nodes[id as usize];
            self.reference[len as usize] = id;
            id = parent;
        }
    }

    /// The state after `kind` runs in `state`, or `None` when its result contradicts the model
    /// (or, for a list, leads to a state no linearization can contain).
    fn step(&mut self, state: ValueId, kind: Kind) -> Option<ValueId> {
        match kind {
            Kind::Read(v) => (v == state).then_some(state),
            Kind::Write(v) => Some(v),
            Kind::Cas { expect, new, succeeded } => {
                let holds = state == expect;
                match succeeded {
                    Some(s) if s != holds => None,
                    _ => Some(if holds { new } else { state }),
                }
            }
            Kind::Append(e) => {
                let next = self.node(state, e);
                self.comparable(next).then_some(next)
            }
        }
    }

    /// The element ids in the list `v` (none for register values).
    fn elems_of(&mut self, v: ValueId) -> &[u32] {
        if !self.list_elems.contains_key(&v) {
            let mut ids = Vec::new();
            if self.list {
                let mut id = v;
                while id != ABSENT {
                    let (parent, e, _) = self.nodes[id as usize];
                    if e != NO_ELEM {
                        ids.push(e);
                    }
                    id = parent;
                }
            }
            self.list_elems.insert(v, ids);
        }
        &self.list_elems[&v]
    }

    /// Drops pending writes that [`Observers::removable`] allows to drop: this changes no
    /// verdict (a pending op may never take effect, and the argument in the module docs shows
    /// that a linearization of the rest never needs them). Dropping writes only lowers the
    /// counts, so deciding on the counts of the whole set is safe.
    fn drop_unobserved_pending_writes(&mut self, ops: &[MOp]) -> Vec<MOp> {
        let obs = Observers::of(self, ops);
        ops.iter()
            .filter(|op| !(op.pending() && !matches!(op.kind, Kind::Read(_)) && obs.removable(op)))
            .copied()
            .collect()
    }

    /// `ops` with each op of unknown outcome that must have happened made definite: a pending
    /// put or Cas that alone writes a value that a definite op needs (a get returns it, a
    /// successful Cas expects it), or a pending append whose element a get shows. It must precede
    /// every op needing it, so it completes, at the latest, when the first of them completes
    /// (and a Cas succeeds). Repeated until nothing changes, as a promoted Cas needs its own
    /// expected value. This changes no verdict and gives such ops deadlines.
    fn required_promoted(&mut self, ops: &[MOp]) -> Vec<MOp> {
        let mut ops = ops.to_vec();
        let mut writers: HashMap<ValueId, usize> = HashMap::new();
        for op in &ops {
            if let Kind::Write(v)
            | Kind::Cas {
                new: v,
                succeeded: None | Some(true),
                ..
            } = op.kind
            {
                *writers.entry(v).or_default() += 1;
            }
        }
        let mut elem_needed_by: HashMap<u32, Timestamp> = HashMap::new();
        for op in ops.iter().filter(|op| !op.pending()) {
            if let Kind::Read(v) = op.kind {
                for &e in self.elems_of(v) {
                    let t = elem_needed_by.entry(e).or_insert(Timestamp::MAX);
                    *t = (*t).min(op.complete);
                }
            }
        }
        loop {
            let mut needed_by: HashMap<ValueId, Timestamp> = HashMap::new();
            for op in ops.iter().filter(|op| !op.pending()) {
                if let Kind::Read(v)
                | Kind::Cas {
                    expect: v,
                    succeeded: Some(true),
                    ..
                } = op.kind
                {
                    let t = needed_by.entry(v).or_insert(Timestamp::MAX);
                    *t = (*t).min(op.complete);
                }
            }
            let mut changed = false;
            for op in ops.iter_mut().filter(|op| op.pending()) {
                let deadline = match op.kind {
                    Kind::Write(v) | Kind::Cas { new: v, .. } if v != ABSENT && writers.get(&v) == Some(&1) => {
                        needed_by.get(&v).copied()
                    }
                    Kind::Append(e) => elem_needed_by.get(&e).copied(),
                    _ => None,
                };
                if let Some(t) = deadline.filter(|&t| t >= op.invoke) {
                    op.complete = t;
                    if let Kind::Cas { succeeded, .. } = &mut op.kind {
                        *succeeded = Some(true);
                    }
                    changed = true;
                }
            }
            if !changed {
                return ops;
            }
        }
    }

    /// The search over `ops` (see the module docs). Returns the verdict and the steps.
    fn search(&mut self, ops: &[MOp], budget: &Budget) -> (Search, u64) {
        self.set_reference(ops);
        let ops = &unobserved_collapsed(&self.required_promoted(ops))[..];
        const NIL: usize = usize::MAX;
        const HEAD: usize = 0;
        let n = ops.len();
        let call_node = |i: usize| 2 * i + 1;
        let ret_node = |i: usize| 2 * i + 2;
        let op_of = |node: usize| (node - 1) / 2;
        let is_call = |node: usize| node % 2 == 1;

        let mut events: Vec<(Timestamp, u8, usize)> = Vec::with_capacity(2 * n);
        let mut definite = 0usize;
        for (i, op) in ops.iter().enumerate() {
            events.push((op.invoke, 0, call_node(i)));
            if !op.pending() {
                events.push((op.complete, 1, ret_node(i)));
                definite += 1;
            }
        }
        if definite == 0 {
            return (Search::Linearizable, 0);
        }
        // Invocations before completions at equal times: such ops count as concurrent.
        events.sort_unstable();
        let mut next = vec![NIL; 2 * n + 1];
        let mut prev = vec![NIL; 2 * n + 1];
        let mut last = HEAD;
        for &(_, _, node) in &events {
            next[last] = node;
            prev[node] = last;
            last = node;
        }

        fn unlink(next: &mut [usize], prev: &mut [usize], x: usize) {
            let (p, n) = (prev[x], next[x]);
            next[p] = n;
            if n != NIL {
                prev[n] = p;
            }
        }
        fn relink(next: &mut [usize], prev: &mut [usize], x: usize) {
            let (p, n) = (prev[x], next[x]);
            next[p] = x;
            if n != NIL {
                prev[n] = x;
            }
        }

        // Per value: the ops not yet linearized that need the state to be it (gets, Cas known to
        // have succeeded), and those that may write it. Leaving a value that someone still needs
        // and nobody can write again dooms the branch, so such steps are cut at once.
        let observes = |op: &MOp| match op.kind {
            Kind::Read(v)
            | Kind::Cas {
                expect: v,
                succeeded: Some(true),
                ..
            } => Some(v as usize),
            _ => None,
        };
        let writes = |op: &MOp| match op.kind {
            Kind::Write(v) if v != UNOBSERVED => Some(v as usize),
            Kind::Cas {
                new,
                succeeded: None | Some(true),
                ..
            } if new != UNOBSERVED => Some(new as usize),
            _ => None,
        };
        let ids = if self.list { self.nodes.len() } else { self.values.len() };
        let mut observers = vec![0u32; ids];
        let mut writers = vec![0u32; ids];
        for op in ops {
            if let Some(v) = observes(op) {
                observers[v] += 1;
            }
            if let Some(v) = writes(op) {
                writers[v] += 1;
            }
        }

        let mut bits = vec![0u64; n.div_ceil(64)];
        let mut cache = Cache::new(bits.len());
        let mut state = ABSENT;
        let mut remaining = definite;
        let mut steps = 0u64;
        // One frame per configuration on the current path; their candidates live in `arena`.
        let mut stack: Vec<Frame> = Vec::new();
        let mut arena: Vec<usize> = Vec::new();
        let mut new_frame = true;
        loop {
            if new_frame {
                new_frame = false;
                // The ops that can go next: those invoked before the earliest deadline among the
                // ops not yet linearized, i.e. the calls ahead of the first completion in the
                // list.
                // Ops of unknown outcome that would set an unobserved value now (puts, and Cas
                // whose compare holds now) are interchangeable here: if a linearization takes
                // one of them here and another later (or never), swapping the two keeps it
                // valid, as neither has a deadline, both were invoked by now and the later one
                // sets the same value where it goes (a Cas only goes where its compare holds; a
                // put goes anywhere). So only one is a candidate, a Cas if there is one.
                let start = arena.len();
                let mut node = next[HEAD];
                let mut spare: Option<(usize, bool)> = None;
                while node != NIL && is_call(node) {
                    let i = op_of(node);
                    node = next[node];
                    if ops[i].pending() && state != UNOBSERVED {
                        let cas = match ops[i].kind {
                            Kind::Write(UNOBSERVED) => Some(false),
                            Kind::Cas {
                                expect,
                                new: UNOBSERVED,
                                ..
                            } if expect == state => Some(true),
                            _ => None,
                        };
                        if let Some(cas) = cas {
                            if spare.is_none_or(|(_, c)| cas && !c) {
                                spare = Some((i, cas));
                            }
                            continue;
                        }
                    }
                    arena.push(i);
                }
                arena.extend(spare.map(|s| s.0));
                // A neutral op (a get, a Cas known to have failed) whose result matches the
                // state leaves it unchanged, so if any linearization from here exists, one that
                // takes it next exists: make it the only candidate.
                let neutral = arena[start..].iter().copied().find(|&i| {
                    matches!(
                        ops[i].kind,
                        Kind::Read(_)
                            | Kind::Cas {
                                succeeded: Some(false),
                                ..
                            }
                    ) && self.step(state, ops[i].kind).is_some()
                });
                if let Some(i) = neutral {
                    arena.truncate(start);
                    arena.push(i);
                } else {
                    // Earliest deadline first; then ops with unknown outcomes, the most recently
                    // invoked first (one that nothing needed so far is likely never needed).
                    arena[start..].sort_unstable_by_key(|&i| (ops[i].complete, std::cmp::Reverse(ops[i].invoke), i));
                }
                stack.push(Frame {
                    start,
                    next: start,
                    chosen: None,
                });
            }
            steps += 1;
            if steps > budget.max_steps {
                return (Search::Inconclusive(Inconclusive::StepBudget), steps);
            }
            if steps.is_multiple_of(4096) && budget.deadline.is_some_and(|d| Instant::now() >= d) {
                return (Search::Inconclusive(Inconclusive::TimeLimit), steps);
            }
            let frame = stack.last_mut().expect("a frame is on the stack");
            // The top frame's candidates run to the end of the arena.
            if frame.next < arena.len() {
                let i = arena[frame.next];
                frame.next += 1;
                if let Some(after) = self.step(state, ops[i].kind) {
                    // An op with an unknown outcome that would change nothing here need not
                    // happen here: it may as well never happen.
                    if after == state && ops[i].pending() {
                        continue;
                    }
                    let s = state as usize;
                    if after != state && s < ids {
                        let own = |f: &dyn Fn(&MOp) -> Option<usize>| u32::from(f(&ops[i]) == Some(s));
                        if observers[s] > own(&observes) && writers[s] == own(&writes) {
                            continue;
                        }
                    }
                    bits[i / 64] |= 1 << (i % 64);
                    if cache.insert(&bits, after) {
                        if let Some(v) = observes(&ops[i]) {
                            observers[v] -= 1;
                        }
                        if let Some(v) = writes(&ops[i]) {
                            writers[v] -= 1;
                        }
                        frame.chosen = Some((i, state));
                        state = after;
                        unlink(&mut next, &mut prev, call_node(i));
                        if !ops[i].pending() {
                            unlink(&mut next, &mut prev, ret_node(i));
                            remaining -= 1;
                            if remaining == 0 {
                                return (Search::Linearizable, steps);
                            }
                        }
                        new_frame = true;
                    } else {
                        // Seen before: it led nowhere (ancestors have fewer ops linearized).
                        bits[i / 64] &= !(1 << (i % 64));
                    }
                }
                continue;
            }
            // Every candidate failed: undo the choice that led here.
            let done = stack.pop().expect("a frame is on the stack");
            arena.truncate(done.start);
            let Some(parent) = stack.last_mut() else {
                return (Search::NotLinearizable, steps);
            };
            let (i, before) = parent.chosen.take().expect("the parent chose an op");
            if let Some(v) = observes(&ops[i]) {
                observers[v] += 1;
            }
            if let Some(v) = writes(&ops[i]) {
                writers[v] += 1;
            }
            bits[i / 64] &= !(1 << (i % 64));
            state = before;
            if !ops[i].pending() {
                relink(&mut next, &mut prev, ret_node(i));
                remaining += 1;
            }
            relink(&mut next, &mut prev, call_node(i));
        }
    }

    /// Shrinks the failing `ops` (see the module docs). Returns the ops by invocation time and
    /// whether the result is 1-minimal.
    fn shrink(&mut self, ops: Vec<MOp>, budget: &Budget) -> (Vec<MOp>, bool) {
        let fails = |model: &mut Model, ops: &[MOp], uncertain: &mut bool| match model.search(ops, budget).0 {
            Search::NotLinearizable => true,
            Search::Linearizable => false,
            Search::Inconclusive(_) => {
                *uncertain = true;
                false
            }
        };
        // Bisect for a failing cut: the prefix found fails, the one just shorter does not (or
        // could not be decided).
        let (mut lo, mut hi) = (0, ops.len());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fails(self, &cut(&ops, mid), &mut false) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        let mut cur = cut(&ops, hi);
        // Delta debugging: in chunks of halving size, down to single ops until a pass over single
        // ops drops nothing, drop whatever part of the chunk the rules allow, if the rest fails.
        let mut chunk = (cur.len() / 2).max(1);
        loop {
            let mut dropped = false;
            let mut pass_uncertain = false;
            let mut start = 0;
            while start < cur.len() {
                if budget.deadline.is_some_and(|d| Instant::now() >= d) {
                    return (cur, false);
                }
                let end = (start + chunk).min(cur.len());
                let drop = Observers::droppable(self, &cur, start..end);
                let kept = drop.iter().filter(|d| !**d).count();
                let rest: Vec<MOp> = cur[..start]
                    .iter()
                    .chain(
                        cur[start..end]
                            .iter()
                            .zip(&drop)
                            .filter(|(_, d)| !**d)
                            .map(|(op, _)| op),
                    )
                    .chain(&cur[end..])
                    .copied()
                    .collect();
                if rest.len() < cur.len() && fails(self, &rest, &mut pass_uncertain) {
                    cur = rest;
                    dropped = true;
                    start += kept;
                } else {
                    start = end;
                }
            }
            if chunk == 1 {
                if !dropped {
                    return (cur, !pass_uncertain);
                }
            } else {
                chunk = (chunk / 2).max(1);
            }
        }
    }
}

/// The id standing for every value that no op observes (no get returns it, no Cas expects it).
const UNOBSERVED: ValueId = ValueId::MAX;

/// `ops` with every written value that no op observes replaced by [`UNOBSERVED`]. Nothing can
/// tell such values apart, so this changes no verdict, and it lets the explored configurations
/// merge.
fn unobserved_collapsed(ops: &[MOp]) -> Vec<MOp> {
    let mut observed = std::collections::HashSet::new();
    for op in ops {
        match op.kind {
            Kind::Read(v) | Kind::Cas { expect: v, .. } => {
                observed.insert(v);
            }
            Kind::Write(_) | Kind::Append(_) => {}
        }
    }
    let collapse = |v: ValueId| if observed.contains(&v) { v } else { UNOBSERVED };
    ops.iter()
        .map(|op| {
            let mut op = *op;
            match &mut op.kind {
                Kind::Write(v) => *v = collapse(*v),
                Kind::Cas { new, .. } => *new = collapse(*new),
                Kind::Read(_) | Kind::Append(_) => {}
            }
            op
        })
        .collect()
}

/// The first `k` ops (by invocation), with those still running at the `k`-th op's invocation
/// made pending (reads among them dropped, as a pending read constrains nothing).
fn cut(ops: &[MOp], k: usize) -> Vec<MOp> {
    let Some(at) = ops.get(k).map(|op| op.invoke) else {
        return ops.to_vec();
    };
    let mut out = Vec::with_capacity(k);
    for op in &ops[..k] {
        if op.complete < at {
            out.push(*op);
            continue;
        }
        let mut op = *op;
        match &mut op.kind {
            Kind::Read(_) => continue,
            Kind::Cas { succeeded, .. } => *succeeded = None,
            Kind::Write(_) | Kind::Append(_) => {}
        }
        if !op.pending() {
            op.cut = true;
            op.complete = Timestamp::MAX;
        }
        out.push(op);
    }
    out
}

/// Who observes what in a set of ops: the counts behind the sound dropping rules.
#[derive(Default)]
struct Observers {
    /// Completion times of the Cas ops known to have failed their compare (with multiplicity).
    failed_cas: BTreeMap<Timestamp, usize>,
    /// Gets and Cas compares per value id (absent excluded).
    values: HashMap<ValueId, usize>,
    /// Reads containing each append element.
    elems: HashMap<u32, usize>,
}

impl Observers {
    fn of(model: &mut Model, ops: &[MOp]) -> Observers {
        let mut obs = Observers::default();
        for op in ops {
            obs.add(model, op, 1);
        }
        obs
    }

    fn add(&mut self, model: &mut Model, op: &MOp, sign: isize) {
        let bump = |count: &mut usize| {
            *count = count
                .checked_add_signed(sign)
                .expect("observer counts stay non-negative")
        };
        match op.kind {
            Kind::Read(v) => {
                if v != ABSENT {
                    bump(self.values.entry(v).or_default());
                }
                for &e in model.elems_of(v) {
                    bump(self.elems.entry(e).or_default());
                }
            }
            Kind::Cas { expect, succeeded, .. } => {
                if expect != ABSENT {
                    bump(self.values.entry(expect).or_default());
                }
                if succeeded == Some(false) {
                    let count = self.failed_cas.entry(op.complete).or_default();
                    bump(count);
                    if *count == 0 {
                        self.failed_cas.remove(&op.complete);
                    }
                }
            }
            Kind::Write(_) | Kind::Append(_) => {}
        }
    }

    /// Whether `op` may be dropped from the set these counts describe (which includes `op`)
    /// such that the rest failing implies the set failing: a get or a failed Cas always; a write
    /// when nothing in the set observes the value it writes and no failed Cas of the set could
    /// come after it (every one completed before the write was invoked).
    fn removable(&self, op: &MOp) -> bool {
        let observed = |v: ValueId, own: usize| self.values.get(&v).copied().unwrap_or(0) > own;
        let no_failed_cas_after = || self.failed_cas.range(op.invoke..).next().is_none();
        match op.kind {
            Kind::Read(_)
            | Kind::Cas {
                succeeded: Some(false), ..
            } => true,
            Kind::Write(v) => !observed(v, 0) && no_failed_cas_after(),
            Kind::Cas { expect, new, .. } => !observed(new, usize::from(expect == new)) && no_failed_cas_after(),
            Kind::Append(e) => self.elems.get(&e).copied().unwrap_or(0) == 0 && no_failed_cas_after(),
        }
    }

    /// Which ops of `set[range]` can be dropped from `set`, one at a time, each drop allowed by
    /// [`Observers::removable`] on what remains.
    fn droppable(model: &mut Model, set: &[MOp], range: std::ops::Range<usize>) -> Vec<bool> {
        let mut obs = Observers::of(model, set);
        let mut dropped = vec![false; range.len()];
        loop {
            let mut progress = false;
            for (i, op) in set[range.clone()].iter().enumerate() {
                if !dropped[i] && obs.removable(op) {
                    obs.add(model, op, -1);
                    dropped[i] = true;
                    progress = true;
                }
            }
            if !progress {
                return dropped;
            }
        }
    }
}

/// The explored configurations: (bitset of linearized ops, state), stored flat.
struct Cache {
    words: usize,
    bits: Vec<u64>,
    states: Vec<ValueId>,
    /// Next entry with the same hash, or `u32::MAX`.
    chain: Vec<u32>,
    table: HashMap<u64, u32, BuildHasherDefault<Prehashed>>,
}

impl Cache {
    fn new(words: usize) -> Cache {
        Cache {
            words,
            bits: Vec::new(),
            states: Vec::new(),
            chain: Vec::new(),
            table: HashMap::default(),
        }
    }

    /// Adds the configuration; false when it was there already.
    fn insert(&mut self, bits: &[u64], state: ValueId) -> bool {
        let mut h = (state as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for &w in bits {
            h = (h.rotate_left(23) ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
        h ^= h >> 29;
        let id = self.states.len() as u32;
        match self.table.entry(h) {
            Entry::Occupied(mut e) => {
                let mut at = *e.get();
                while at != u32::MAX {
                    let a = at as usize;
                    if self.states[a] == state && self.bits[a * self.words..(a + 1) * self.words] == *bits {
                        return false;
                    }
                    at = self.chain[a];
                }
                self.chain.push(*e.get());
                e.insert(id);
            }
            Entry::Vacant(e) => {
                self.chain.push(u32::MAX);
                e.insert(id);
            }
        }
        self.states.push(state);
        self.bits.extend_from_slice(bits);
        true
    }
}

/// A hasher for keys that are already well-mixed `u64`s.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;

    fn check(ops: Vec<Op>) -> LinReport {
        check_linearizability(&history(ops), &LinOptions::default())
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let r = check(vec![
            get(1, (0, 1), "k", None, 0, 1),
            put(1, (2, 3), "k", "a", 2),
            get(2, (4, 5), "k", Some("a"), 2, 2),
            cas(2, (6, 7), "k", Some("a"), "b", true, 3),
            cas(1, (8, 9), "k", Some("a"), "c", false, 3),
            get(1, (10, 11), "k", Some("b"), 3, 3),
        ]);
        assert_eq!(r.validity(), crate::Validity::Valid, "{r}");
        assert_eq!((r.keys, r.ops), (1, 6));
    }

    #[test]
    fn stale_read_is_rejected_with_a_minimal_counterexample() {
        // Noise on other keys and on the same key, then: put a (done), put b (done), get a.
        let mut ops = vec![];
        for i in 0..20u64 {
            ops.push(put(
                9,
                (i * 10, i * 10 + 5),
                &format!("other{}", i % 3),
                &format!("o{i}"),
                100 + i as i64,
            ));
        }
        ops.push(put(1, (0, 10), "k", "a", 2));
        ops.push(get(2, (5, 15), "k", Some("a"), 2, 2));
        ops.push(get(3, (3, 8), "k", None, 0, 1));
        ops.push(put(1, (20, 30), "k", "b", 3));
        ops.push(get(2, (40, 50), "k", Some("a"), 2, 3));
        ops.push(put(3, (60, 70), "k", "c", 4));
        ops.push(get(1, (75, 80), "k", Some("c"), 4, 4));
        let r = check(ops);
        assert_eq!(r.validity(), crate::Validity::Invalid);
        assert_eq!(r.violations.len(), 1, "{r}");
        let c = &r.violations[0];
        assert_eq!(c.key, b"k");
        assert!(c.minimal);
        let calls: Vec<String> = c.ops.iter().map(|o| o.op.to_string()).collect();
        // Only the read after "b" is stale (the absent read at [3, 8] may precede the put).
        assert_eq!(c.ops.len(), 3, "{c}");
        assert!(calls[0].contains("put \"k\" = \"a\""), "{c}");
        assert!(calls[1].contains("put \"k\" = \"b\""), "{c}");
        assert!(calls[2].contains("get \"k\" -> \"a\""), "{c}");
        let text = r.to_string();
        assert!(text.contains("not linearizable"), "{text}");
    }

    #[test]
    fn concurrent_ops_with_timeouts_are_linearizable() {
        let r = check(vec![
            // A put that timed out: it happened, between the two reads.
            unknown(put(1, (0, 50), "k", "1", 0)),
            get(2, (10, 20), "k", None, 0, 1),
            get(3, (60, 70), "k", Some("1"), 2, 2),
            // Two overlapping puts, seen in the opposite order of their invocations.
            put(1, (80, 100), "k", "2", 4),
            put(2, (85, 95), "k", "3", 3),
            get(3, (101, 102), "k", Some("2"), 4, 4),
            // Timed out and never happened, as far as anyone saw.
            unknown(put(2, (110, 120), "k", "never", 0)),
            unknown(cas(1, (110, 130), "k", Some("2"), "4", false, 0)),
            get(3, (140, 150), "k", Some("4"), 5, 5),
            // Failed definitely: ignored.
            failed(put(2, (150, 160), "k", "nope", 0)),
            get(3, (170, 180), "k", Some("4"), 5, 5),
            // A Cas concurrent with a read that saw its effect.
            cas(1, (190, 220), "k", Some("4"), "5", true, 6),
            get(2, (200, 210), "k", Some("5"), 6, 6),
        ]);
        assert_eq!(r.validity(), crate::Validity::Valid, "{r}");
    }

    #[test]
    fn a_timed_out_put_may_take_effect_long_after_the_client_gave_up() {
        let r = check(vec![
            unknown(put(1, (0, 10), "k", "late", 0)),
            get(2, (20, 30), "k", None, 0, 1),
            put(2, (40, 50), "k", "x", 2),
            get(2, (60, 70), "k", Some("late"), 3, 3),
        ]);
        assert_eq!(r.validity(), crate::Validity::Valid, "{r}");
    }

    #[test]
    fn a_read_of_a_value_never_written_is_rejected() {
        let r = check(vec![
            put(1, (0, 10), "k", "a", 2),
            get(2, (20, 30), "k", Some("z"), 2, 2),
        ]);
        assert_eq!(r.violations.len(), 1);
        // Nobody observes "a", so the put may be dropped: the read alone fails.
        assert_eq!(r.violations[0].ops.len(), 1, "{}", r.violations[0]);
    }

    #[test]
    fn a_cas_result_that_contradicts_the_state_is_rejected() {
        // The compare must have held: the key held "a" throughout.
        let r = check(vec![
            put(1, (0, 10), "k", "a", 2),
            cas(2, (20, 30), "k", Some("a"), "b", false, 2),
            get(1, (40, 50), "k", Some("a"), 2, 2),
        ]);
        assert_eq!(r.violations.len(), 1, "{r}");
        let c = &r.violations[0];
        // The get can go; the failed cas and the put must stay.
        assert_eq!(c.ops.len(), 2, "{c}");
        // Without a time limit, shrinking is bounded by its own budget only.
        let ops: Vec<Op> = c
            .ops
            .iter()
            .map(|o| o.op.clone())
            .chain([get(1, (40, 50), "k", Some("a"), 2, 2)])
            .collect();
        let options = LinOptions {
            time_limit: None,
            ..LinOptions::default()
        };
        let r = check_linearizability(&history(ops), &options);
        assert!(r.violations[0].minimal && r.violations[0].ops.len() == 2, "{r}");
    }

    #[test]
    fn keeps_writes_that_a_failed_compare_depends_on() {
        // The compare failed because "x" (never read) came first; with a stale read added, the
        // counterexample must keep the put of "x", or it would blame the Cas instead.
        let ops = vec![
            put(1, (0, 10), "k", "a", 2),
            put(2, (20, 40), "k", "x", 3),
            cas(3, (20, 40), "k", Some("a"), "b", false, 3),
        ];
        assert_eq!(check(ops.clone()).validity(), crate::Validity::Valid);
        let mut ops = ops;
        ops.push(get(4, (50, 60), "k", Some("a"), 2, 3));
        let r = check(ops);
        let c = &r.violations[0];
        assert!(c.ops.iter().any(|o| o.op.to_string().contains("\"x\"")), "{c}");
    }

    #[test]
    fn append_model() {
        let ok = check(vec![
            append(1, (0, 10), "l", "a", 2),
            append(2, (5, 20), "l", "b", 3),
            get(3, (6, 7), "l", Some("a"), 2, 2),
            get(3, (30, 40), "l", Some("a,b"), 3, 3),
            unknown(append(1, (50, 60), "l", "c", 0)),
            get(3, (70, 80), "l", Some("a,b,c"), 4, 4),
        ]);
        assert_eq!(ok.validity(), crate::Validity::Valid, "{ok}");
        let bad = check(vec![
            append(1, (0, 10), "l", "a", 2),
            append(2, (20, 30), "l", "b", 3),
            get(3, (40, 50), "l", Some("b,a"), 3, 3),
        ]);
        assert_eq!(bad.validity(), crate::Validity::Invalid, "{bad}");
    }

    #[test]
    fn gives_up_rather_than_hang() {
        // Many concurrent puts and a read of a value never written: every order is tried.
        let mut ops: Vec<Op> = (0..40)
            .map(|i| put(i, (0, 100), "k", &format!("v{i}"), 2 + i as i64))
            .collect();
        ops.push(get(99, (50, 150), "k", Some("never"), 2, 50));
        let options = LinOptions {
            max_steps_per_key: 1000,
            ..LinOptions::default()
        };
        let r = check_linearizability(&history(ops.clone()), &options);
        assert_eq!(r.validity(), crate::Validity::Unknown, "{r}");
        assert_eq!(r.unknown[0].reason, Inconclusive::StepBudget);
        let options = LinOptions {
            time_limit: Some(Duration::ZERO),
            max_steps_per_key: u64::MAX,
            ..LinOptions::default()
        };
        let r = check_linearizability(&history(ops), &options);
        assert_eq!(r.validity(), crate::Validity::Unknown, "{r}");
        assert_eq!(r.unknown[0].reason, Inconclusive::TimeLimit);
    }

    #[test]
    fn keys_are_independent() {
        // Each key alone is linearizable; together they would not be under a single register.
        let r = check(vec![
            put(1, (0, 10), "a", "1", 2),
            put(1, (20, 30), "b", "1", 3),
            get(2, (40, 50), "a", Some("1"), 2, 3),
            get(2, (40, 50), "b", Some("1"), 3, 3),
        ]);
        assert_eq!((r.validity(), r.keys), (crate::Validity::Valid, 2));
    }

    #[test]
    fn cut_marks_ops_running_at_the_cut() {
        // The put of "x" runs past the cut (the first op after the stale read); its result is not
        // needed to show the violation, only that "x" was read before "y" was written.
        let mut ops = vec![
            put(1, (0, 1000), "k", "x", 2),
            get(2, (10, 20), "k", Some("x"), 2, 2),
            put(3, (30, 40), "k", "y", 3),
            get(2, (50, 60), "k", Some("x"), 2, 3),
        ];
        for i in 0..30u64 {
            ops.push(get(5, (100 + i * 10, 105 + i * 10), "k", Some("y"), 3, 3));
        }
        let r = check(ops);
        let c = &r.violations[0];
        assert!(c.minimal, "{c}");
        assert_eq!(c.ops.len(), 4, "{c}");
        assert!(c.ops[0].cut && c.ops[1..].iter().all(|o| !o.cut), "{c}");
        assert!(c.to_string().contains("still running at the cut"), "{c}");
    }
}
