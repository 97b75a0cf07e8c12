//! The history model: what concurrent clients did, as the checkers see it.
//!
//! A [`History`] is a list of [`Op`]s. Each op was issued by one client, *invoked* at one instant
//! and *completed* at a later one, both read from one shared monotonic clock (nanoseconds, see
//! [`Recorder`]). An op is a [`Call`] (what the client asked) and an [`Outcome`]:
//!
//! - [`Outcome::Ok`] carries the [`Ret`]urn value: the op took effect exactly once, at some
//!   instant between its invocation and its completion.
//! - [`Outcome::Unknown`] (a timeout, a dropped connection, `Unavailable` after the request may
//!   have been proposed): the op may have taken effect at any instant after its invocation, even
//!   long after the client gave up, or never. The checkers treat it as completing at +infinity
//!   with a result that nobody saw. `complete` still records when the client gave up (for
//!   printing only).
//! - [`Outcome::Failed`]: the cluster guarantees the op did not take effect (etcd errors such as
//!   `InvalidArgument`, or a `Txn` whose compare was rejected before proposal). Checkers ignore
//!   these ops, except that an element of a failed [`Call::Append`] must never show up in a list.
//!   When in doubt, record `Unknown`: recording `Failed` for an op that did take effect makes the
//!   checkers report a violation that is not there.
//!
//! Two ops are ordered in real time only when one *completed strictly before* the other was
//! invoked; equal timestamps count as concurrent. Every key starts absent, and the history must
//! hold every write to its keys (the rig uses fresh keys). Values should be unique per write (for
//! example `"c3-17"`): the checkers stay sound with repeated values but catch less.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

/// Identifies the client (one logical sequential actor) that issued an op.
pub type ClientId = u64;

/// An etcd revision, as etcd's API carries it.
pub type Revision = i64;

/// Nanoseconds on the clock shared by every client of one history ([`Recorder::now`]).
pub type Timestamp = u64;

/// The separator between the elements of a list-append value.
pub const LIST_SEPARATOR: u8 = b',';

/// What a client asked for. Every call names exactly one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// A linearizable (not serializable) single-key `Range`.
    Get {
        /// The key read.
        key: Vec<u8>,
    },
    /// A `Put` of `value` at `key`.
    Put {
        /// The key written.
        key: Vec<u8>,
        /// The value written.
        value: Vec<u8>,
    },
    /// A compare-and-set `Txn`: if the key's value equals `expect` (`None`: the key is absent,
    /// e.g. `create_revision == 0`), put `new`; otherwise do nothing.
    Cas {
        /// The key compared and written.
        key: Vec<u8>,
        /// The value the key must hold for the put to happen; `None` means absent.
        expect: Option<Vec<u8>>,
        /// The value put when the compare holds.
        new: Vec<u8>,
    },
    /// Appends `elem` to the list at `key` (list-append workload): a read-modify-write loop of
    /// `Get` and `Txn(compare mod_revision == read mod_revision, put old + "," + elem)`, retried
    /// until the compare holds. The op spans the whole loop: invoked before the first read,
    /// completed when a Txn succeeded. `elem` must be non-empty, must not contain
    /// [`LIST_SEPARATOR`], and must be unique among the appends to its key.
    Append {
        /// The key holding the list.
        key: Vec<u8>,
        /// The element appended.
        elem: Vec<u8>,
    },
}

impl Call {
    /// The key the call reads or writes.
    pub fn key(&self) -> &[u8] {
        match self {
            Call::Get { key } | Call::Put { key, .. } | Call::Cas { key, .. } | Call::Append { key, .. } => key,
        }
    }

    /// A short lower-case name of the call's kind: `get`, `put`, `cas` or `append`.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Get { .. } => "get",
            Call::Put { .. } => "put",
            Call::Cas { .. } => "cas",
            Call::Append { .. } => "append",
        }
    }
}

/// What a successful op returned. The variant must match the [`Call`]'s.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    /// The result of [`Call::Get`].
    Get {
        /// The value read; `None` when the key is absent.
        value: Option<Vec<u8>>,
        /// The key's `mod_revision`; 0 when the key is absent.
        mod_revision: Revision,
        /// The response header's revision: the store revision the read was served at.
        revision: Revision,
    },
    /// The result of [`Call::Put`].
    Put {
        /// The response header's revision: the put's own revision.
        revision: Revision,
    },
    /// The result of [`Call::Cas`].
    Cas {
        /// Whether the compare held and the put happened.
        succeeded: bool,
        /// The response header's revision: the put's revision when `succeeded`, otherwise the
        /// store revision the compare was evaluated at.
        revision: Revision,
    },
    /// The result of [`Call::Append`].
    Append {
        /// The header revision of the Txn that succeeded: the append's own revision.
        revision: Revision,
    },
}

impl Ret {
    /// The response header's revision.
    pub fn revision(&self) -> Revision {
        match self {
            Ret::Get { revision, .. }
            | Ret::Put { revision }
            | Ret::Cas { revision, .. }
            | Ret::Append { revision } => *revision,
        }
    }
}

/// How an op ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It succeeded and returned this.
    Ok(Ret),
    /// Nobody knows: it may take effect at any point after its invocation, or never.
    Unknown,
    /// It certainly did not take effect.
    Failed,
}

/// One operation of one client.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Op {
    /// The client that issued it.
    pub client: ClientId,
    /// When the request was about to be sent.
    pub invoke: Timestamp,
    /// When the response arrived (or, for [`Outcome::Unknown`], when the client gave up).
    pub complete: Timestamp,
    /// What was asked.
    pub call: Call,
    /// How it ended.
    pub outcome: Outcome,
}

impl Op {
    /// The returned value, when the op succeeded.
    pub fn ret(&self) -> Option<&Ret> {
        match &self.outcome {
            Outcome::Ok(ret) => Some(ret),
            _ => None,
        }
    }

    /// The revision this op *wrote* at, when it is known to have written: a successful put or
    /// append, or a Cas that succeeded.
    pub fn write_revision(&self) -> Option<Revision> {
        match self.ret()? {
            Ret::Put { revision } | Ret::Append { revision } => Some(*revision),
            Ret::Cas {
                succeeded: true,
                revision,
            } => Some(*revision),
            _ => None,
        }
    }

    /// Whether this op, as a write, leaves `value` as its key's value: a put of `value`, a Cas
    /// whose new value is `value`, or an append whose element is the last element of the list
    /// `value`. Says nothing about whether the write happened.
    pub fn writes_value(&self, value: &[u8]) -> bool {
        match &self.call {
            Call::Get { .. } => false,
            Call::Put { value: v, .. } => v == value,
            Call::Cas { new, .. } => new == value,
            Call::Append { elem, .. } => value.rsplit(|b| *b == LIST_SEPARATOR).next() == Some(elem.as_slice()),
        }
    }

    /// The completion instant as the checkers use it: `complete`, or `u64::MAX` (+infinity)
    /// when the outcome is unknown.
    pub fn effective_complete(&self) -> Timestamp {
        match self.outcome {
            Outcome::Unknown => Timestamp::MAX,
            _ => self.complete,
        }
    }

    /// Whether this op completed (with a known outcome) strictly before `other` was invoked.
    pub fn precedes(&self, other: &Op) -> bool {
        self.outcome != Outcome::Unknown && self.complete < other.invoke
    }
}

/// Writes `bytes` as a quoted string: printable ASCII as is, anything else as `\xNN`; long values
/// are cut after 60 bytes, with the full length noted.
pub(crate) fn show_bytes(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    const MAX: usize = 60;
    f.write_str("\"")?;
    for &b in bytes.iter().take(MAX) {
        match b {
            b'"' => f.write_str("\\\"")?,
            b'\\' => f.write_str("\\\\")?,
            0x20..=0x7e => write!(f, "{}", b as char)?,
            _ => write!(f, "\\x{b:02x}")?,
        }
    }
    f.write_str("\"")?;
    if bytes.len() > MAX {
        write!(f, "...({} bytes)", bytes.len())?;
    }
    Ok(())
}

/// Displays bytes the way [`show_bytes`] writes them.
pub(crate) struct Bytes<'a>(pub &'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        show_bytes(self.0, f)
    }
}

/// Displays a timestamp as seconds, to the nanosecond.
pub(crate) struct Time(pub Timestamp);

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}s", self.0 / 1_000_000_000, self.0 % 1_000_000_000)
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Get { key } => write!(f, "get {}", Bytes(key)),
            Call::Put { key, value } => write!(f, "put {} = {}", Bytes(key), Bytes(value)),
            Call::Cas { key, expect, new } => {
                write!(f, "cas {} if ", Bytes(key))?;
                match expect {
                    Some(e) => write!(f, "{}", Bytes(e))?,
                    None => f.write_str("absent")?,
                }
                write!(f, " then {}", Bytes(new))
            }
            Call::Append { key, elem } => write!(f, "append {} += {}", Bytes(key), Bytes(elem)),
        }
    }
}

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ret::Get {
                value: Some(v),
                mod_revision,
                revision,
            } => {
                write!(f, "{} (mod_revision {mod_revision}, revision {revision})", Bytes(v))
            }
            Ret::Get {
                value: None, revision, ..
            } => write!(f, "absent (revision {revision})"),
            Ret::Put { revision } | Ret::Append { revision } => {
                write!(f, "ok (revision {revision})")
            }
            Ret::Cas { succeeded, revision } => {
                let what = if *succeeded { "succeeded" } else { "compare failed" };
                write!(f, "{what} (revision {revision})")
            }
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(ret) => ret.fmt(f),
            Outcome::Unknown => f.write_str("unknown (may take effect later, or never)"),
            Outcome::Failed => f.write_str("failed (did not take effect)"),
        }
    }
}

impl fmt::Display for Op {
    /// `client 3 [1.000200000s, 1.000900000s] put "k" = "v" -> ok (revision 5)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} [{}, ", self.client, Time(self.invoke))?;
        if self.outcome == Outcome::Unknown {
            write!(f, "gave up {}]", Time(self.complete))?;
        } else {
            write!(f, "{}]", Time(self.complete))?;
        }
        write!(f, " {} -> {}", self.call, self.outcome)
    }
}

/// Why a list of ops is not a well-formed [`History`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryError {
    /// The offending op.
    pub op: Box<Op>,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed history: {}: {}", self.reason, self.op)
    }
}

impl std::error::Error for HistoryError {}

/// A well-formed, immutable list of ops, sorted by invocation time (ties keep their order).
/// Indices into [`History::ops`] identify ops in the checkers' reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Op>,
}

impl History {
    /// Checks and sorts `ops`. Rejected: an op completing before its invocation; a return value
    /// of another kind than the call; a Get result with `value: None` but a non-zero
    /// `mod_revision`, or with a value but `mod_revision` outside `1..=revision`; a negative
    /// revision, or a write revision below 1; an append element that is empty, contains
    /// [`LIST_SEPARATOR`], or repeats another append's element on the same key; a key that
    /// gets both appends and puts or Cas (a list key is written only by appends).
    pub fn new(mut ops: Vec<Op>) -> Result<History, HistoryError> {
        ops.sort_by_key(|op| op.invoke);
        let err = |op: &Op, reason: &str| {
            Err(HistoryError {
                op: Box::new(op.clone()),
                reason: reason.to_string(),
            })
        };
        let mut elems: HashSet<(&[u8], &[u8])> = HashSet::new();
        // Per key: (has appends, has puts or Cas), and one op of each kind for the message.
        let mut writers: HashMap<&[u8], (Option<&Op>, Option<&Op>)> = HashMap::new();
        for op in &ops {
            if op.complete < op.invoke {
                return err(op, "completes before it is invoked");
            }
            if let Outcome::Ok(ret) = &op.outcome {
                let matches = matches!(
                    (&op.call, ret),
                    (Call::Get { .. }, Ret::Get { .. })
                        | (Call::Put { .. }, Ret::Put { .. })
                        | (Call::Cas { .. }, Ret::Cas { .. })
                        | (Call::Append { .. }, Ret::Append { .. })
                );
                if !matches {
                    return err(op, "the result's kind differs from the call's");
                }
                if ret.revision() < 0 {
                    return err(op, "negative revision");
                }
                if op.write_revision().is_some_and(|r| r < 1) {
                    return err(op, "a write's revision must be at least 1");
                }
                if let Ret::Get {
                    value,
                    mod_revision,
                    revision,
                } = ret
                {
                    let ok = match value {
                        None => *mod_revision == 0,
                        Some(_) => (1..=*revision).contains(mod_revision),
                    };
                    if !ok {
                        return err(op, "mod_revision must be 0 for an absent key, else within 1..=revision");
                    }
                }
            }
            let entry = writers.entry(op.call.key()).or_default();
            match &op.call {
                Call::Append { key, elem } => {
                    if elem.is_empty() || elem.contains(&LIST_SEPARATOR) {
                        return err(op, "an append element must be non-empty and free of ','");
                    }
                    if !elems.insert((key, elem)) {
                        return err(op, "this element is appended to this key twice");
                    }
                    entry.0.get_or_insert(op);
                }
                Call::Put { .. } | Call::Cas { .. } => {
                    entry.1.get_or_insert(op);
                }
                Call::Get { .. } => {}
            }
            if let (Some(_), Some(other)) = *entry {
                return err(other, "a key written by appends must not be written by puts or Cas");
            }
        }
        Ok(History { ops })
    }

    /// The ops, sorted by invocation time.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no ops.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The keys written by at least one [`Call::Append`].
    pub fn append_keys(&self) -> HashSet<&[u8]> {
        self.ops
            .iter()
            .filter(|op| matches!(op.call, Call::Append { .. }))
            .map(|op| op.call.key())
            .collect()
    }
}

/// An op that has been invoked and not yet completed: hand it back to [`Recorder::complete`].
#[derive(Debug)]
#[must_use = "complete it with Recorder::complete, with Outcome::Unknown if the result is not known"]
pub struct Invocation {
    /// The client that issued it.
    pub client: ClientId,
    /// When it was invoked.
    pub invoke: Timestamp,
    /// What was asked.
    pub call: Call,
}

/// Records a history from concurrent clients: one shared monotonic clock and a locked list of
/// ops. Share it with `Arc`; it is `Sync`.
///
/// ```
/// use concord_chaos::history::{Call, Outcome, Recorder, Ret};
/// let rec = Recorder::new();
/// let inv = rec.invoke(1, Call::Put { key: b"k".to_vec(), value: b"v1".to_vec() });
/// // ... send the request ...
/// rec.complete(inv, Outcome::Ok(Ret::Put { revision: 2 }));
/// let history = rec.into_history().unwrap();
/// assert_eq!(history.len(), 1);
/// ```
#[derive(Debug)]
pub struct Recorder {
    epoch: Instant,
    ops: Mutex<Vec<Op>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Recorder {
        Recorder {
            epoch: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the recorder was created.
    pub fn now(&self) -> Timestamp {
        self.epoch.elapsed().as_nanos() as Timestamp
    }

    /// Notes that `client` is about to send `call`: call it immediately before sending.
    pub fn invoke(&self, client: ClientId, call: Call) -> Invocation {
        Invocation {
            client,
            invoke: self.now(),
            call,
        }
    }

    /// Records the op with its outcome, completed now: call it immediately after the response
    /// (or the give-up decision).
    pub fn complete(&self, invocation: Invocation, outcome: Outcome) {
        let complete = self.now();
        let Invocation { client, invoke, call } = invocation;
        self.record(Op {
            client,
            invoke,
            complete,
            call,
            outcome,
        });
    }

    /// Records an op whose timestamps the caller took (from [`Recorder::now`]).
    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).push(op);
    }

    /// The ops recorded so far, as a history.
    pub fn snapshot(&self) -> Result<History, HistoryError> {
        History::new(self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Every op recorded, as a history.
    pub fn into_history(self) -> Result<History, HistoryError> {
        History::new(self.ops.into_inner().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Splits a list-append value into its elements; an empty value is the empty list.
pub fn decode_list(value: &[u8]) -> Vec<&[u8]> {
    if value.is_empty() {
        Vec::new()
    } else {
        value.split(|b| *b == LIST_SEPARATOR).collect()
    }
}

/// The list value after appending `elem` to `value` (`None`: the key is absent).
pub fn append_to_list(value: Option<&[u8]>, elem: &[u8]) -> Vec<u8> {
    match value {
        Some(v) if !v.is_empty() => {
            let mut out = Vec::with_capacity(v.len() + 1 + elem.len());
            out.extend_from_slice(v);
            out.push(LIST_SEPARATOR);
            out.extend_from_slice(elem);
            out
        }
        _ => elem.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use std::sync::Arc;

    #[test]
    fn malformed_histories_are_rejected() {
        let bad = |ops: Vec<Op>, reason: &str| {
            let e = History::new(ops).unwrap_err();
            assert!(e.reason.contains(reason), "{e}");
        };
        bad(vec![put(1, (10, 5), "k", "v", 2)], "completes before");
        let mut wrong_kind = put(1, (0, 5), "k", "v", 2);
        wrong_kind.outcome = Outcome::Ok(Ret::Append { revision: 2 });
        bad(vec![wrong_kind], "kind");
        bad(vec![get(1, (0, 5), "k", None, 3, 3)], "mod_revision");
        bad(vec![get(1, (0, 5), "k", Some("v"), 4, 3)], "mod_revision");
        bad(vec![put(1, (0, 5), "k", "v", 0)], "at least 1");
        bad(vec![append(1, (0, 5), "k", "a,b", 2)], "free of ','");
        bad(
            vec![append(1, (0, 5), "k", "a", 2), unknown(append(2, (0, 5), "k", "a", 0))],
            "twice",
        );
        bad(
            vec![append(1, (0, 5), "k", "a", 2), put(2, (6, 7), "k", "v", 3)],
            "must not be written by puts",
        );
        // Unknown and failed writes carry no revision.
        assert!(History::new(vec![
            unknown(put(1, (0, 5), "k", "v", 0)),
            failed(put(1, (0, 5), "k", "w", 0))
        ])
        .is_ok());
    }

    #[test]
    fn history_is_sorted_by_invocation() {
        let h = history(vec![put(1, (30, 40), "k", "b", 3), put(1, (0, 10), "k", "a", 2)]);
        assert_eq!(h.ops()[0].invoke, 0);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn recorder_collects_ops_from_threads() {
        let rec = Arc::new(Recorder::new());
        let handles: Vec<_> = (0..4u64)
            .map(|c| {
                let rec = rec.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let inv = rec.invoke(
                            c,
                            Call::Put {
                                key: b("k"),
                                value: format!("{c}-{i}").into_bytes(),
                            },
                        );
                        rec.complete(inv, Outcome::Unknown);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(rec.snapshot().unwrap().len(), 40);
        let h = Arc::into_inner(rec).unwrap().into_history().unwrap();
        assert!(h.ops().windows(2).all(|w| w[0].invoke <= w[1].invoke));
        assert!(h.ops().iter().all(|op| op.invoke <= op.complete));
    }

    #[test]
    fn ops_display_readably() {
        let op = get(3, (1_000_200_000, 1_000_900_000), "k", Some("v\n"), 4, 5);
        assert_eq!(
            op.to_string(),
            "client 3 [1.000200000s, 1.000900000s] get \"k\" -> \"v\\x0a\" (mod_revision 4, revision 5)"
        );
        let op = unknown(cas(1, (0, 7), "k", None, "n", false, 0));
        assert_eq!(
            op.to_string(),
            "client 1 [0.000000000s, gave up 0.000000007s] cas \"k\" if absent then \"n\" -> unknown (may take effect later, or never)"
        );
        let long = "x".repeat(100);
        assert!(put(1, (0, 1), "k", &long, 2).to_string().contains("...(100 bytes)"));
    }

    #[test]
    fn lists_encode_and_decode() {
        assert_eq!(decode_list(b""), Vec::<&[u8]>::new());
        assert_eq!(decode_list(b"a,b"), vec![&b"a"[..], b"b"]);
        assert_eq!(append_to_list(None, b"a"), b"a");
        assert_eq!(append_to_list(Some(b""), b"a"), b"a");
        assert_eq!(append_to_list(Some(b"a"), b"b"), b"a,b");
        let op = append(1, (0, 1), "l", "b", 2);
        assert!(op.writes_value(b"a,b") && !op.writes_value(b"b,a"));
    }
}
