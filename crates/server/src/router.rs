//! Which Raft group owns a key. This is the one place that knows how the keyspace is split into
//! shards: one group owns every key until the cluster is started with several shards
//! (`--experimental-initial-shards`), each a key range with its own group, store and watch hub
//! on the members holding a replica of it; the others forward its requests (`shard_forward.rs`).

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

/// A shard this member holds no replica of: requests for its keys go to a member that does.
#[derive(Clone, Debug)]
pub struct RemoteShard {
    /// The first key the shard holds.
    pub start: Vec<u8>,
    /// The first key past it; empty for the end of the keyspace.
    pub end: Vec<u8>,
    /// Its group's id.
    pub group_id: u64,
    /// The members holding a replica.
    pub replicas: Vec<u64>,
}

/// Where a request goes: a shard this member holds, or one it forwards to.
#[derive(Clone, Copy)]
pub enum Route<'a> {
    /// Served here.
    Local(&'a Shard),
    /// Forwarded to a member holding a replica.
    Remote(&'a RemoteShard),
}

impl<'a> Route<'a> {
    /// The shard, when this member holds it.
    pub fn local(self) -> Option<&'a Shard> {
        match self {
            Route::Local(shard) => Some(shard),
            Route::Remote(_) => None,
        }
    }

    /// The shard's first key and the first past it (empty: the end of the keyspace).
    pub fn bounds(self) -> (&'a [u8], &'a [u8]) {
        match self {
            Route::Local(s) => (&s.start, &s.end),
            Route::Remote(s) => (&s.start, &s.end),
        }
    }

    /// The id of the shard's group.
    pub fn group_id(self) -> u64 {
        match self {
            Route::Local(s) => s.group.group_id(),
            Route::Remote(s) => s.group_id,
        }
    }
}

/// A request that spans shards, which one group cannot serve on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpansShards {
    /// The ids of the groups of the shards it touches, ascending.
    pub groups: Vec<u64>,
}

/// One entry of the router: a shard held here or elsewhere.
#[derive(Clone)]
enum Entry {
    Local(Shard),
    Remote(RemoteShard),
}

impl Entry {
    fn route(&self) -> Route<'_> {
        match self {
            Entry::Local(shard) => Route::Local(shard),
            Entry::Remote(shard) => Route::Remote(shard),
        }
    }
}

/// Maps keys and key ranges to the shards that own them.
#[derive(Clone)]
pub struct KeyRouter {
    /// Ascending by start key, covering the whole keyspace; the first is group 1's, held by
    /// every member.
    entries: Vec<Entry>,
}

impl KeyRouter {
    /// A router over `shards` (held here) and `remote` (held elsewhere): together ascending by
    /// start, contiguous from the empty key to the end of the keyspace, the first one group 1's.
    pub fn new(shards: Vec<Shard>, remote: Vec<RemoteShard>) -> Self {
        let first = shards.first().expect("every member holds group 1's shard").clone();
        let mut entries: Vec<Entry> = shards.into_iter().skip(1).map(Entry::Local).collect();
        entries.extend(remote.into_iter().map(Entry::Remote));
        entries.sort_by(|a, b| a.route().bounds().0.cmp(b.route().bounds().0));
        entries.insert(0, Entry::Local(first));
        KeyRouter { entries }
    }

    /// Whether the keyspace is split into several shards.
    pub fn is_sharded(&self) -> bool {
        self.entries.len() > 1
    }

    /// Where requests for `key` go.
    pub fn route_for_key(&self, key: &[u8]) -> Route<'_> {
        self.entries[index_for_key(&self.bounds(), key)].route()
    }

    /// Where requests for every key in `[key, range_end)` go, or the shards it spans.
    pub fn route_for_range(&self, key: &[u8], range_end: &[u8]) -> Result<Route<'_>, SpansShards> {
        self.one_shard(&[(key.to_vec(), range_end.to_vec())])
    }

    /// Where a txn goes: to the shard holding every key its compares and operations (nested
    /// ones too) name, or the shards it spans.
    pub fn route_for_txn(&self, txn: &TxnRequest) -> Result<Route<'_>, SpansShards> {
        let mut ranges = Vec::new();
        txn_ranges(txn, &mut ranges);
        self.one_shard(&ranges)
    }

    /// Each shard `[key, range_end)` (in etcd's forms, spanning shards) touches, in key order,
    /// with the part of the range it holds in the same forms (`\0` for no end).
    pub fn parts_of_range(&self, key: &[u8], range_end: &[u8]) -> Vec<(Route<'_>, Vec<u8>, Vec<u8>)> {
        let bounds = self.bounds();
        shards_of_range(&bounds, key, range_end)
            .into_iter()
            .map(|i| {
                let (start, end) = bounds[i];
                let part_key = key.max(start).to_vec();
                let part_end = match (range_end, end) {
                    ([0], []) => vec![0],
                    ([0], end) => end.to_vec(),
                    (range_end, []) => range_end.to_vec(),
                    (range_end, end) => range_end.min(end).to_vec(),
                };
                (self.entries[i].route(), part_key, part_end)
            })
            .collect()
    }

    /// The one shard holding every key of `ranges` (group 1's when there are none), or the
    /// shards they span.
    fn one_shard(&self, ranges: &[(Vec<u8>, Vec<u8>)]) -> Result<Route<'_>, SpansShards> {
        let bounds = self.bounds();
        let mut touched: Vec<usize> = ranges
            .iter()
            .flat_map(|(key, range_end)| shards_of_range(&bounds, key, range_end))
            .collect();
        touched.sort_unstable();
        touched.dedup();
        match touched.as_slice() {
            [] => Ok(self.entries[0].route()),
            [one] => Ok(self.entries[*one].route()),
            many => Err(SpansShards {
                groups: many.iter().map(|&i| self.entries[i].route().group_id()).collect(),
            }),
        }
    }

    /// Each shard's `(start, end)`.
    fn bounds(&self) -> Vec<(&[u8], &[u8])> {
        self.entries.iter().map(|e| e.route().bounds()).collect()
    }

    /// Every group this member serves.
    pub fn groups(&self) -> impl Iterator<Item = &GroupHandle> {
        self.entries.iter().filter_map(|e| e.route().local()).map(|s| &s.group)
    }

    /// Every shard, ascending by start key.
    pub fn routes(&self) -> impl Iterator<Item = Route<'_>> {
        self.entries.iter().map(Entry::route)
    }

    /// The shard with group id `group_id`.
    pub fn route(&self, group_id: u64) -> Option<Route<'_>> {
        self.routes().find(|r| r.group_id() == group_id)
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
