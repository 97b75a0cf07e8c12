//! Many proposals in one log entry.
//!
//! Every log entry costs each member the same fixed work however small it is: raft-rs tracks
//! it, the log engine indexes and encodes it, the transport encodes and decodes it once per
//! follower, and each step allocates. Under load the driver finds many proposals waiting at
//! once, and puts them into one entry instead, so that work is paid once per batch.
//!
//! An entry's context says what it holds (the state machine never sees the context):
//! - 16 bytes, the proposing member's id and the request id: one proposal, its data as proposed.
//!   Every entry written before batching existed has this form.
//! - 20 bytes, the member's id, the first request id and a count `n`: `n` proposals with
//!   consecutive request ids, the data holding each one's bytes behind a 4-byte little-endian
//!   length, in order.
//! - A stamped entry (multi-shard mode, see [`crate::stamping`]): the tag byte `S`, the global
//!   revision `r` stamped on the first proposal (the next ones take `r+1`, `r+2`, …), a count
//!   `n`, then for each proposal the member that proposed it and its request id there (a leader
//!   stamps its followers' proposals too). 13 + 16·`n` bytes, never 16 or 20. With `n` = 1 the
//!   data is the one proposal's, as proposed; otherwise a batch as above.

/// Proposals in one entry at most.
pub(crate) const MAX_COMMANDS: usize = 256;

/// Bytes of proposals in one entry at most (a larger proposal still goes alone).
pub(crate) const MAX_BYTES: usize = 256 * 1024;

/// Who proposed an entry, and as which request ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proposer {
    pub member: u64,
    pub first_request: u64,
    /// How many proposals the entry holds; 1 for an entry that is not a batch.
    pub count: u32,
}

impl Proposer {
    /// The context of an entry holding `count` proposals from `member`, the first of them
    /// `first_request`.
    pub fn encode(self) -> Vec<u8> {
        let mut ctx = Vec::with_capacity(20);
        ctx.extend_from_slice(&self.member.to_be_bytes());
        ctx.extend_from_slice(&self.first_request.to_be_bytes());
        if self.count != 1 {
            ctx.extend_from_slice(&self.count.to_be_bytes());
        }
        ctx
    }

    /// Reads an entry's context; `None` for entries no member proposed (a new leader's empty
    /// entry).
    pub fn decode(ctx: &[u8]) -> Option<Proposer> {
        let count = match ctx.len() {
            16 => 1,
            20 => u32::from_be_bytes(ctx[16..20].try_into().ok()?),
            _ => return None,
        };
        Some(Proposer {
            member: u64::from_be_bytes(ctx[..8].try_into().ok()?),
            first_request: u64::from_be_bytes(ctx[8..16].try_into().ok()?),
            count,
        })
    }

    /// Whether the entry holds a batch rather than one proposal's data as proposed.
    pub fn is_batch(self) -> bool {
        self.count != 1
    }
}

/// The tag that opens a stamped entry's context.
const STAMPED_TAG: u8 = b'S';

/// The context of a stamped entry: its first stamp, and who proposed each of its proposals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamped {
    pub first_stamp: i64,
    /// `(member, request id)` of each proposal, in order.
    pub origins: Vec<(u64, u64)>,
}

impl Stamped {
    pub fn encode(&self) -> Vec<u8> {
        let mut ctx = Vec::with_capacity(13 + 16 * self.origins.len());
        ctx.push(STAMPED_TAG);
        ctx.extend_from_slice(&self.first_stamp.to_be_bytes());
        ctx.extend_from_slice(&(self.origins.len() as u32).to_be_bytes());
        for (member, request) in &self.origins {
            ctx.extend_from_slice(&member.to_be_bytes());
            ctx.extend_from_slice(&request.to_be_bytes());
        }
        ctx
    }

    /// Reads a stamped entry's context; `None` for any other (or a malformed) context.
    pub fn decode(ctx: &[u8]) -> Option<Stamped> {
        let (&tag, rest) = ctx.split_first()?;
        if tag != STAMPED_TAG || rest.len() < 12 {
            return None;
        }
        let first_stamp = i64::from_be_bytes(rest[..8].try_into().ok()?);
        let count = u32::from_be_bytes(rest[8..12].try_into().ok()?) as usize;
        let list = &rest[12..];
        if count == 0 || list.len() != count.checked_mul(16)? {
            return None;
        }
        let origins = list
            .chunks_exact(16)
            .map(|pair| {
                let member = u64::from_be_bytes(pair[..8].try_into().expect("16-byte chunk"));
                let request = u64::from_be_bytes(pair[8..].try_into().expect("16-byte chunk"));
                (member, request)
            })
            .collect();
        Some(Stamped { first_stamp, origins })
    }
}

/// The data of an entry holding `proposals`.
pub(crate) fn encode<'a>(proposals: impl Iterator<Item = &'a [u8]>, total_bytes: usize) -> Vec<u8> {
    let mut data = Vec::with_capacity(total_bytes);
    for proposal in proposals {
        data.extend_from_slice(&(proposal.len() as u32).to_le_bytes());
        data.extend_from_slice(proposal);
    }
    data
}

/// The proposals in a batch entry's `data`, in order; `None` when it is not a well-formed batch
/// of exactly `count` of them.
pub(crate) fn decode(data: &[u8], count: u32) -> Option<Vec<&[u8]>> {
    // The count comes from the entry's context; each proposal takes at least its 4-byte length.
    let mut proposals = Vec::with_capacity((count as usize).min(data.len() / 4));
    let mut rest = data;
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return None;
        }
        let (proposal, tail) = tail.split_at(len);
        proposals.push(proposal);
        rest = tail;
    }
    (proposals.len() == count as usize).then_some(proposals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_round_trip() {
        let one = Proposer {
            member: 7,
            first_request: 42,
            count: 1,
        };
        assert_eq!(one.encode().len(), 16);
        assert_eq!(Proposer::decode(&one.encode()), Some(one));
        assert!(!one.is_batch());
        let many = Proposer {
            member: 7,
            first_request: 42,
            count: 3,
        };
        assert_eq!(many.encode().len(), 20);
        assert_eq!(Proposer::decode(&many.encode()), Some(many));
        assert!(many.is_batch());
        assert_eq!(Proposer::decode(&[]), None);
        assert_eq!(Proposer::decode(&[0; 17]), None);
    }

    #[test]
    fn stamped_contexts_round_trip_and_differ_from_the_others() {
        for origins in [vec![(7, 42)], vec![(7, 42), (9, 1), (7, 43)]] {
            let stamped = Stamped {
                first_stamp: 1_000_000_007,
                origins,
            };
            let ctx = stamped.encode();
            assert_eq!(Stamped::decode(&ctx), Some(stamped));
            assert_eq!(Proposer::decode(&ctx), None);
        }
        let plain = Proposer {
            member: u64::from(STAMPED_TAG) << 56,
            first_request: 1,
            count: 2,
        };
        assert_eq!(Stamped::decode(&plain.encode()), None);
        let short = Stamped {
            first_stamp: 5,
            origins: vec![(1, 2)],
        }
        .encode();
        assert_eq!(Stamped::decode(&short[..short.len() - 1]), None, "truncated");
        let mut none = short.clone();
        none[12] = 0;
        none.truncate(13);
        assert_eq!(Stamped::decode(&none), None, "a count of 0");
    }

    #[test]
    fn batches_round_trip() {
        let proposals: Vec<&[u8]> = vec![b"put a", b"", b"put c"];
        let data = encode(proposals.iter().copied(), 32);
        assert_eq!(decode(&data, 3), Some(proposals));
    }

    #[test]
    fn malformed_batches_are_refused() {
        let data = encode([&b"abc"[..], b"de"].into_iter(), 16);
        assert_eq!(decode(&data, 3), None, "wrong count");
        assert_eq!(decode(&data[..data.len() - 1], 2), None, "truncated");
        assert_eq!(decode(&[1, 0], 1), None, "short length");
        assert_eq!(decode(&data, u32::MAX), None, "a count no entry could hold");
    }
}
