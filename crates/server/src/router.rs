//! Which Raft group owns a key. This is the one place that knows how the
//! keyspace is split: today one group owns every key; when the keyspace is
//! split across many groups, only this module changes.

use concord_raft::RaftHandle;

use crate::apply::Applied;

/// The group that serves a request, and how to reach it.
pub type GroupHandle = RaftHandle<Applied>;

/// Maps keys and key ranges to the groups that own them.
#[derive(Clone)]
pub struct KeyRouter {
    /// Today the whole keyspace, `[b"", ∞)`, belongs to this group.
    whole_keyspace: GroupHandle,
}

impl KeyRouter {
    /// A router for a cluster with one group owning every key.
    pub fn single(group: GroupHandle) -> Self {
        KeyRouter { whole_keyspace: group }
    }

    /// The group owning `key`.
    pub fn group_for_key(&self, _key: &[u8]) -> &GroupHandle {
        &self.whole_keyspace
    }

    /// The group owning every key in `[key, range_end)`. Requests that span
    /// groups will need splitting here once there is more than one.
    pub fn group_for_range(&self, _key: &[u8], _range_end: &[u8]) -> &GroupHandle {
        &self.whole_keyspace
    }

    /// The group that evaluates a txn. A txn must stay within one group;
    /// with one group, every txn does.
    pub fn group_for_txn(&self, _txn: &concord_proto::etcdserverpb::TxnRequest) -> &GroupHandle {
        &self.whole_keyspace
    }

    /// The group whose state answers cluster-wide questions (revision, term).
    pub fn default_group(&self) -> &GroupHandle {
        &self.whole_keyspace
    }

    /// Every group this member serves.
    pub fn groups(&self) -> impl Iterator<Item = &GroupHandle> {
        std::iter::once(&self.whole_keyspace)
    }

    /// The shards, ascending by start key: each group with the key range it owns.
    pub fn shards(&self) -> Vec<ShardRange<'_>> {
        vec![ShardRange {
            start: Vec::new(),
            end: Vec::new(),
            group: &self.whole_keyspace,
        }]
    }

    /// The shard whose group has id `group_id`, if this member serves it.
    pub fn shard(&self, group_id: u64) -> Option<ShardRange<'_>> {
        self.shards().into_iter().find(|s| s.group.group_id() == group_id)
    }
}

/// One shard as the router knows it: `[start, end)` (an empty end is the end of the keyspace)
/// and the group that owns it.
pub struct ShardRange<'a> {
    /// The first key the shard holds.
    pub start: Vec<u8>,
    /// The first key past it; empty for the end of the keyspace.
    pub end: Vec<u8>,
    /// The group replicating it.
    pub group: &'a GroupHandle,
}
