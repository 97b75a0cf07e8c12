//! Concord's MVCC key-value state machine: etcd's v3 KV semantics (revisions, history, Range,
//! Put, DeleteRange, Txn, Compaction), etcd's leases (grant, revoke, keys attached to a lease) and
//! alarms on top of a single redb file, plus what operating a cluster needs of it: consistency
//! hashes, sizes, snapshots (write, install, restore) and defragmentation.
//!
//! # Tables
//!
//! | table        | key                                             | value                                       |
//! |--------------|-------------------------------------------------|---------------------------------------------|
//! | `revisions`  | `(main rev, sub rev)` as one `u128`             | user key, then record (none for a deletion) |
//! | `leases`     | lease id (`i64`)                                | granted TTL in seconds (`i64`)              |
//! | `lease_keys` | `(lease id, user key)`                          | nothing: the row itself is the attachment   |
//! | `alarms`     | `(member id, alarm type)`                       | nothing: the row itself is the raised alarm |
//! | `auth_*`     | users, roles, auth flags (see [`auth`])         | etcd's auth store                           |
//! | `meta`       | `applied_index`, `revision`, `compact_revision` | `u64`                                       |
//!
//! A *record* is `create_revision, mod_revision, version, lease` as four little-endian `i64`s
//! followed by the value bytes. A `revisions` row is the user key's length (`u32`, little
//! endian), the key, then the record, or nothing for a deletion (tombstone); see `keys.rs`.
//!
//! `revisions` is etcd's layout: one row per change, keyed by revision, so every write appends
//! at the tail of one B-tree (a batch of puts dirties a few pages, not two random leaves per
//! key). It is both the data and the change log: watchers catching up
//! ([`MvccStore::events`]) walk it in order. `lease_keys` lets a revoke find its keys without a
//! scan.
//!
//! # The key index
//!
//! Reads by key go through an in-memory index (etcd's `treeIndex`, see `index.rs`): an ordered
//! map from each user key with rows in `revisions` to those rows' revisions (each marked put or
//! deletion), plus the create revision, version and lease of the key's newest version. A read at
//! any revision finds there the one version per key it wants and fetches that row by revision;
//! the write path reads nothing from redb unless a put asks for the previous value. Values are
//! never held in memory.
//!
//! The index is not persisted: it is built by one scan of `revisions` when the store is opened
//! and whenever its file is replaced (snapshot install, defragmentation). A batch's changes are
//! merged into it only after the batch's redb transaction has committed. Readers pair it with
//! redb read snapshots under one lock; `store.rs` explains why that pairing never gives a wrong
//! answer.
//!
//! Every table but `meta`'s applied index is replicated state: members that applied the same
//! log hold the same rows, which [`MvccStore::hash`] and [`MvccStore::hash_kv`] check.
//!
//! # Invariants
//!
//! * `meta.revision` is etcd's current revision: 1 for an empty store, +1 for each applied
//!   command that changed at least one key. All changes of one command share that main revision
//!   and get sub revisions 0, 1, 2, … in execution order, each one row of `revisions`.
//! * The key index holds, for each key, exactly the revisions of its `revisions` rows, and
//!   nothing else (tests check it against a rebuild after every applied command). Its head of a
//!   key is that of the newest row when that row is a put.
//! * Every row with main revision at or above `compact_revision` is present. After compaction at
//!   `c`, rows below `c` are only each key's newest version `<= c` when that version is live, so
//!   every read at a revision `>= c` is unchanged; rows at exactly `c` all stay, so watchers may
//!   start there (see `compact.rs`).
//! * `lease_keys` holds `(l, key)` exactly when `key` is live and its newest record names lease
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
//! Files written in the earlier layout (`kv`, `latest` and `changes` tables) are moved to this
//! one the first time they are opened (see `legacy.rs`).
//!
//! # Durability
//!
//! Each [`MvccStore::apply`] batch is one redb write transaction. Most commit with
//! `redb::Durability::None`: visible to readers at once, not fsync'd. Every 4096th batch, or the
//! first one 250 ms after the previous durable commit, commits with `Durability::Immediate`
//! (fsync), as does [`MvccStore::sync`]. redb guarantees (design.md, "Non-durable commits") that
//! a crash rolls the file back to a consistent earlier commit, the last durable one at worst: a
//! non-durable commit only flips an in-memory pointer to its new roots and never frees pages the
//! last durable commit references. The Raft log, fsync'd separately, holds every entry above
//! [`MvccStore::durable_applied_index`], so replaying it restores the rest.
//!
//! [`MvccStore::install_snapshot`] and [`MvccStore::defragment`] replace the whole file: the new
//! file is fsync'd, renamed over the store's path, and the directory fsync'd, so after a crash the
//! path holds either the old store or the new one, each consistent with its own applied index.
//!
//! # Encryption at rest
//!
//! A store opened with a sealer ([`MvccStore::open_with`], concord-crypt) seals the value of each
//! new record; keys, revisions, versions and leases stay plain, so ordering, compares on them and
//! keys-only reads never decrypt. See `keys.rs` for the record format and `sealing.rs` for
//! which keys a file needs, the checks at open and snapshot install, and re-sealing on
//! defragment. In a `revisions` row only the record's value is sealed (the user key stays plain,
//! as it was in the old layout's table keys), bound to the record's 32 header bytes. A sealed
//! record flags itself in its stored `version`; decoding clears the flag, so the key index and
//! every reader see the real version. Both hashes feed records in their plain form.

mod alarm;
pub mod auth;
mod compact;
mod cross_shard;
mod error;
mod etcd_format;
mod events;
mod hash;
mod index;
mod index_key;
mod keys;
mod lease;
mod legacy;
mod range;
mod sealing;
mod snapshot;
mod split;
mod store;
mod txn;
mod view;
mod write;

pub use auth::{open_envelope, AuthApplied, AuthEffect, AuthError, AuthStatus};
pub use error::{ErrorCode, KvError, StorageError};
pub use etcd_format::{
    etcd_snapshot_status, is_etcd_backend, read_etcd_wal, EtcdSnapshotInfo, EtcdSnapshotStatus, EtcdWal, ReplayError,
    ReplayRules, TornTail, WalEntry, WalError, WalReplay,
};
pub use snapshot::SnapshotInfo;
pub use split::{shard_store_path, KeyRange, SplitChild};
pub use store::{ApplyEntry, MvccStore, WriteResult};
pub use txn::{compare_holds_over, is_txn_read_only};

#[cfg(test)]
mod tests;
