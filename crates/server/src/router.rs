//! Which Raft group owns a key. This is the one place that knows how the keyspace is split into
//! shards: one group owns every key until the cluster is started with several shards
//! (`--experimental-initial-shards`), each a key range with its own group, store and watch hub.

use std::sync::Arc;

use concord_proto::etcdserverpb::request_op::Request as TxnOp;
use concord_proto::etcdserverpb::TxnRequest;
use concord_raft::RaftHandle;
use concord_storage::MvccStore;

use crate::apply::Applied;
use crate::watch::WatchHub;

/// The group that serves a request, and how to reach it.
pub type GroupHandle = RaftHandle<Applied>;

/// One shard: `[start, end)` (an empty end is the end of the keyspace), the group replicating it,
/// and this member's replica of its state.
#[derive(Clone)]
pub struct Shard {
    /// The first key the shard holds.
    pub start: Vec<u8>,
    /// The first key past it; empty for the end of the keyspace.
    pub end: Vec<u8>,
    /// The group replicating it.
    pub group: GroupHandle,
    /// The store its group applies into on this member.
    pub store: Arc<MvccStore>,
    /// The changes of its store, for watchers.
    pub hub: Arc<WatchHub>,
}

/// A request that spans shards, which one group cannot serve on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpansShards {
    /// The ids of the groups of the shards it touches, ascending.
    pub groups: Vec<u64>,
}

/// Maps keys and key ranges to the shards that own them.
#[derive(Clone)]
pub struct KeyRouter {
    /// Ascending by start key, covering the whole keyspace; the first is group 1's.
    shards: Vec<Shard>,
}

impl KeyRouter {
    /// A router over `shards`: ascending, contiguous, from the empty key to the end of the
    /// keyspace, the first one group 1's.
    pub fn new(shards: Vec<Shard>) -> Self {
        assert!(!shards.is_empty(), "a keyspace has at least one shard");
        KeyRouter { shards }
    }

    /// Whether the keyspace is split into several shards.
    pub fn is_sharded(&self) -> bool {
        self.shards.len() > 1
    }

    /// The shard owning `key`.
    pub fn shard_for_key(&self, key: &[u8]) -> &Shard {
        &self.shards[index_for_key(&self.bounds(), key)]
    }

    /// The group owning `key`.
    pub fn group_for_key(&self, key: &[u8]) -> &GroupHandle {
        &self.shard_for_key(key).group
    }

    /// The shard owning every key in `[key, range_end)`, or the shards it spans.
    pub fn shard_for_range(&self, key: &[u8], range_end: &[u8]) -> Result<&Shard, SpansShards> {
        self.one_shard(&[(key.to_vec(), range_end.to_vec())])
    }

    /// The group owning every key in `[key, range_end)`, or the shards it spans.
    pub fn group_for_range(&self, key: &[u8], range_end: &[u8]) -> Result<&GroupHandle, SpansShards> {
        self.shard_for_range(key, range_end).map(|s| &s.group)
    }

    /// The shard that evaluates a txn: the one holding every key its compares and operations
    /// (nested ones too) name, or the shards it spans.
    pub fn shard_for_txn(&self, txn: &TxnRequest) -> Result<&Shard, SpansShards> {
        let mut ranges = Vec::new();
        txn_ranges(txn, &mut ranges);
        self.one_shard(&ranges)
    }

    /// The group that evaluates a txn, or the shards it spans.
    pub fn group_for_txn(&self, txn: &TxnRequest) -> Result<&GroupHandle, SpansShards> {
        self.shard_for_txn(txn).map(|s| &s.group)
    }

    /// The one shard holding every key of `ranges` (group 1's when there are none), or the
    /// shards they span.
    fn one_shard(&self, ranges: &[(Vec<u8>, Vec<u8>)]) -> Result<&Shard, SpansShards> {
        let bounds = self.bounds();
        let mut touched: Vec<usize> = ranges
            .iter()
            .flat_map(|(key, range_end)| shards_of_range(&bounds, key, range_end))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        match touched.as_slice() {
            [] => Ok(&self.shards[0]),
            [one] => Ok(&self.shards[*one]),
            many => Err(SpansShards {
                groups: many.iter().map(|&i| self.shards[i].group.group_id()).collect(),
            }),
        }
    }

    /// Each shard's `(start, end)`.
    fn bounds(&self) -> Vec<(&[u8], &[u8])> {
        self.shards
            .iter()
            .map(|s| (s.start.as_slice(), s.end.as_slice()))
            .collect()
    }

    /// Group 1: it holds the cluster's metadata (membership, leases, auth, alarms) besides the
    /// first shard's keys, and its state answers cluster-wide questions (revision, term).
    pub fn default_group(&self) -> &GroupHandle {
        &self.shards[0].group
    }

    /// Every group this member serves.
    pub fn groups(&self) -> impl Iterator<Item = &GroupHandle> {
        self.shards.iter().map(|s| &s.group)
    }

    /// The shards, ascending by start key.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// The shard whose group has id `group_id`, if this member serves it.
    pub fn shard(&self, group_id: u64) -> Option<&Shard> {
        self.shards.iter().find(|s| s.group.group_id() == group_id)
    }
}

/// The position in `bounds` (ascending, contiguous from the empty key) of the shard holding `key`.
fn index_for_key(bounds: &[(&[u8], &[u8])], key: &[u8]) -> usize {
    bounds.iter().rposition(|(start, _)| key >= *start).unwrap_or(0)
}

/// The positions in `bounds` of the shards `[key, range_end)` touches, in etcd's range forms: one
/// key when `range_end` is empty, every key from `key` on when it is `\0`.
fn shards_of_range(bounds: &[(&[u8], &[u8])], key: &[u8], range_end: &[u8]) -> Vec<usize> {
    let first = index_for_key(bounds, key);
    let last = match range_end {
        [] => first,
        [0] => bounds.len() - 1,
        // The range ends before `range_end`: its last key is in the shard where a key just below
        // `range_end` is, the one whose start is below `range_end`.
        end => bounds.iter().rposition(|(start, _)| *start < end).unwrap_or(0),
    };
    (first..=last.max(first)).collect()
}

/// Every key range a txn's compares and operations name, nested txns included.
fn txn_ranges(txn: &TxnRequest, out: &mut Vec<(Vec<u8>, Vec<u8>)>) {
    for compare in &txn.compare {
        out.push((compare.key.clone(), compare.range_end.clone()));
    }
    for op in txn.success.iter().chain(&txn.failure) {
        match &op.request {
            Some(TxnOp::RequestRange(r)) => out.push((r.key.clone(), r.range_end.clone())),
            Some(TxnOp::RequestPut(p)) => out.push((p.key.clone(), Vec::new())),
            Some(TxnOp::RequestDeleteRange(d)) => out.push((d.key.clone(), d.range_end.clone())),
            Some(TxnOp::RequestTxn(t)) => txn_ranges(t, out),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three shards: `[, g)`, `[g, p)`, `[p, ∞)`.
    fn three() -> Vec<(&'static [u8], &'static [u8])> {
        vec![(b"", b"g"), (b"g", b"p"), (b"p", b"")]
    }

    #[test]
    fn keys_go_to_the_shard_whose_range_holds_them() {
        let bounds = three();
        assert_eq!(index_for_key(&bounds, b""), 0);
        assert_eq!(index_for_key(&bounds, b"a"), 0);
        assert_eq!(index_for_key(&bounds, b"fzzz"), 0);
        assert_eq!(index_for_key(&bounds, b"g"), 1);
        assert_eq!(index_for_key(&bounds, b"o\xff"), 1);
        assert_eq!(index_for_key(&bounds, b"p"), 2);
        assert_eq!(index_for_key(&bounds, b"\xff\xff"), 2);
        assert_eq!(index_for_key(&[(b"", b"")], b"anything"), 0);
    }

    #[test]
    fn ranges_touch_every_shard_they_reach() {
        let bounds = three();
        assert_eq!(shards_of_range(&bounds, b"a", b""), vec![0]);
        assert_eq!(shards_of_range(&bounds, b"a", b"b"), vec![0]);
        // `[a, g)` ends just before the second shard starts.
        assert_eq!(shards_of_range(&bounds, b"a", b"g"), vec![0]);
        assert_eq!(shards_of_range(&bounds, b"a", b"g\0"), vec![0, 1]);
        assert_eq!(shards_of_range(&bounds, b"h", b"z"), vec![1, 2]);
        assert_eq!(shards_of_range(&bounds, b"h", b"\0"), vec![1, 2]);
        assert_eq!(shards_of_range(&bounds, b"\0", b"\0"), vec![0, 1, 2]);
        assert_eq!(shards_of_range(&bounds, b"q", b"\0"), vec![2]);
        // A prefix whose end sorts below its start (etcd's from-key on "\xff") stays in its shard.
        assert_eq!(shards_of_range(&bounds, b"q", b"a"), vec![2]);
    }
}
