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
//! - 28 bytes, the 20 above and a first revision `r` (multi-shard mode): the proposals were
//!   stamped by the group's leader with the global revisions `r, r+1, …` in order. With a count
//!   of 1 the data is the one proposal's, as proposed.

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
    /// The global revision stamped on the first proposal, the next ones following it.
    pub first_stamp: Option<i64>,
}

impl Proposer {
    /// The context of an entry holding `count` proposals from `member`, the first of them
    /// `first_request`.
    pub fn encode(self) -> Vec<u8> {
        let mut ctx = Vec::with_capacity(28);
        ctx.extend_from_slice(&self.member.to_be_bytes());
        ctx.extend_from_slice(&self.first_request.to_be_bytes());
        if self.count != 1 || self.first_stamp.is_some() {
            ctx.extend_from_slice(&self.count.to_be_bytes());
        }
        if let Some(stamp) = self.first_stamp {
            ctx.extend_from_slice(&stamp.to_be_bytes());
        }
        ctx
    }

    /// Reads an entry's context; `None` for entries no member proposed (a new leader's empty
    /// entry).
    pub fn decode(ctx: &[u8]) -> Option<Proposer> {
        let count = match ctx.len() {
            16 => 1,
            20 | 28 => u32::from_be_bytes(ctx[16..20].try_into().ok()?),
            _ => return None,
        };
        let first_stamp = match ctx.len() {
            28 => Some(i64::from_be_bytes(ctx[20..28].try_into().ok()?)),
            _ => None,
        };
        Some(Proposer {
            member: u64::from_be_bytes(ctx[..8].try_into().ok()?),
            first_request: u64::from_be_bytes(ctx[8..16].try_into().ok()?),
            count,
            first_stamp,
        })
    }

    /// Whether the entry holds a batch rather than one proposal's data as proposed.
    pub fn is_batch(self) -> bool {
        self.count != 1
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
            first_stamp: None,
        };
        assert_eq!(one.encode().len(), 16);
        assert_eq!(Proposer::decode(&one.encode()), Some(one));
        assert!(!one.is_batch());
        let many = Proposer {
            member: 7,
            first_request: 42,
            count: 3,
            first_stamp: None,
        };
        assert_eq!(many.encode().len(), 20);
        assert_eq!(Proposer::decode(&many.encode()), Some(many));
        assert!(many.is_batch());
        assert_eq!(Proposer::decode(&[]), None);
        assert_eq!(Proposer::decode(&[0; 17]), None);
        for count in [1, 3] {
            let stamped = Proposer {
                member: 7,
                first_request: 42,
                count,
                first_stamp: Some(1_000_000_007),
            };
            assert_eq!(stamped.encode().len(), 28);
            assert_eq!(Proposer::decode(&stamped.encode()), Some(stamped));
            assert_eq!(stamped.is_batch(), count != 1);
        }
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
