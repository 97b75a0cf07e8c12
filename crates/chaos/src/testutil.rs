//! Terse constructors for hand-written histories in unit tests. Times are plain integers.

use crate::history::{Call, History, Op, Outcome, Ret};

pub fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn op(client: u64, invoke: u64, complete: u64, call: Call, ret: Ret) -> Op {
    Op {
        client,
        invoke,
        complete,
        call,
        outcome: Outcome::Ok(ret),
    }
}

/// A get returning `value` (`None`: absent) with its mod_revision and header revision.
pub fn get(client: u64, t: (u64, u64), key: &str, value: Option<&str>, mod_revision: i64, revision: i64) -> Op {
    op(
        client,
        t.0,
        t.1,
        Call::Get { key: b(key) },
        Ret::Get {
            value: value.map(b),
            mod_revision,
            revision,
        },
    )
}

pub fn put(client: u64, t: (u64, u64), key: &str, value: &str, revision: i64) -> Op {
    op(
        client,
        t.0,
        t.1,
        Call::Put {
            key: b(key),
            value: b(value),
        },
        Ret::Put { revision },
    )
}

pub fn cas(
    client: u64,
    t: (u64, u64),
    key: &str,
    expect: Option<&str>,
    new: &str,
    succeeded: bool,
    revision: i64,
) -> Op {
    op(
        client,
        t.0,
        t.1,
        Call::Cas {
            key: b(key),
            expect: expect.map(b),
            new: b(new),
        },
        Ret::Cas { succeeded, revision },
    )
}

pub fn append(client: u64, t: (u64, u64), key: &str, elem: &str, revision: i64) -> Op {
    op(
        client,
        t.0,
        t.1,
        Call::Append {
            key: b(key),
            elem: b(elem),
        },
        Ret::Append { revision },
    )
}

/// The same op with an unknown outcome.
pub fn unknown(mut op: Op) -> Op {
    op.outcome = Outcome::Unknown;
    op
}

/// The same op, failed definitely.
pub fn failed(mut op: Op) -> Op {
    op.outcome = Outcome::Failed;
    op
}

pub fn history(ops: Vec<Op>) -> History {
    History::new(ops).expect("well-formed test history")
}

/// A final state read after healing, from (key, value, mod revision) triples.
pub fn fin(entries: &[(&str, &str, i64)]) -> crate::checks::FinalState {
    entries
        .iter()
        .map(|(k, v, r)| {
            let read = crate::checks::FinalRead {
                value: b(v),
                mod_revision: *r,
            };
            (b(k), read)
        })
        .collect()
}
