//! Concord's MVCC key-value state machine: etcd's v3 KV semantics (revisions, history, Range,
//! Put, DeleteRange, Txn, Compaction), etcd's leases (grant, revoke, keys attached to a lease) and
//! alarms on top of a single redb file, plus what operating a cluster needs of it: consistency
//! hashes, sizes, snapshots (write, install, restore) and defragmentation.
//!
//! # Tables
//!
//! | table        | key                                             | value                                       |
//! |--------------|-------------------------------------------------|---------------------------------------------|
//! | `kv`         | `(user key, main rev, sub rev)`                 | record, or empty for a deletion (tombstone) |
//! | `latest`     | user key                                        | record of the newest *live* version         |
//! | `changes`    | `(main rev, sub rev)`                           | change kind byte (put/delete) + user key    |
//! | `leases`     | lease id (`i64`)                                | granted TTL in seconds (`i64`)              |
//! | `lease_keys` | `(lease id, user key)`                          | nothing: the row itself is the attachment   |
//! | `alarms`     | `(member id, alarm type)`                       | nothing: the row itself is the raised alarm |
//! | `meta`       | `applied_index`, `revision`, `compact_revision` | `u64`                                       |
//!
//! A *record* is `create_revision, mod_revision, version, lease` as four little-endian `i64`s
//! followed by the value bytes (the key is already in the table key). redb orders the `kv` tuple
//! element by element with byte slices compared lexicographically, so every version of a key is
//! contiguous and ascending by revision, and a key that is a prefix of another sorts before all of
//! the other's versions.
//!
//! `latest` exists so that the common operations never walk history: reads at the current
//! revision, txn compares, and the write path (which needs the previous version for
//! `create_revision`, `version`, `prev_kv`, `ignore_value`) touch one row per key. Only reads at an
//! older revision use `kv`. `changes` lists every change in revision order, for watchers catching
//! up ([`MvccStore::events`]) and for compaction, which must find the keys whose history it can
//! drop without scanning the whole store. `lease_keys` lets a revoke find its keys without a
//! scan. There is no in-memory index: reads run on redb read snapshots.
//!
//! Every table but `meta`'s applied index is replicated state: members that applied the same
//! log hold the same rows, which [`MvccStore::hash`] and [`MvccStore::hash_kv`] check.
//!
//! # Invariants
//!
//! * `meta.revision` is etcd's current revision: 1 for an empty store, +1 for each applied
//!   command that changed at least one key. All changes of one command share that main revision
//!   and get sub revisions 0, 1, 2, … in execution order.
//! * For each key, `latest` holds exactly the newest `kv` row of the key when that row is not a
//!   tombstone, and nothing otherwise.
//! * Every `kv` row with main revision above `compact_revision` has a `changes` row, and every
//!   `changes` row above it has its `kv` row. `changes` rows at exactly `compact_revision` are
//!   kept too, so watchers may start there (see `compact.rs`).
//! * After compaction at `c`, `kv` holds for each key only versions newer than `c` plus its newest
//!   version `<= c` if that one is live, so every read at a revision `>= c` is unchanged.
//! * `lease_keys` holds `(l, key)` exactly when `key` is live and its `latest` record names lease
//!   `l != 0`; such an `l` always has a `leases` row (a put naming a lease that is not granted
//!   fails, and a revoke deletes the lease's keys in the same command). Grants do not change the
//!   revision; a revoke that deletes keys takes one main revision for all of them. Compaction
//!   does not touch leases.
//! * Alarm requests never change the revision. While some member has NOSPACE raised, puts, txns
//!   containing a put and lease grants fail with `KvError::NoSpace` before writing anything;
//!   every member decides this from its own (identical) `alarms` table (see `alarm.rs`).
//! * `meta.applied_index` is written in the same redb transaction as the effects of the entries
//!   it covers, so the store and its applied index can never disagree, even after a crash.
//!
//! # Durability
//!
//! Each [`MvccStore::apply`] batch is one redb write transaction. Most commit with
//! `redb::Durability::None`: visible to readers at once, not fsync'd. Every 4096th batch, or the
//! first one 5 s after the previous durable commit, commits with `Durability::Immediate`
//! (fsync), as does [`MvccStore::sync`]. redb guarantees (design.md, "Non-durable commits") that
//! a crash rolls the file back to a consistent earlier commit, the last durable one at worst: a
//! non-durable commit only flips an in-memory pointer to its new roots and never frees pages the
//! last durable commit references. The Raft log, fsync'd separately, holds every entry above
//! [`MvccStore::durable_applied_index`], so replaying it restores the rest.
//!
//! [`MvccStore::install_snapshot`] and [`MvccStore::defragment`] replace the whole file: the new
//! file is fsync'd, renamed over the store's path, and the directory fsync'd, so after a crash the
//! path holds either the old store or the new one, each consistent with its own applied index.

mod alarm;
mod compact;
mod error;
mod events;
mod hash;
mod index;
mod keys;
mod lease;
mod range;
mod snapshot;
mod store;
mod txn;
mod view;
mod write;

pub use error::{ErrorCode, KvError, StorageError};
pub use snapshot::SnapshotInfo;
pub use store::{ApplyEntry, MvccStore, WriteResult};
pub use txn::is_txn_read_only;

#[cfg(test)]
mod tests;
