//! The two kinds of failure this crate reports.
//!
//! [`KvError`] is a *semantic* outcome of one request (a compacted revision, a missing key). It is
//! deterministic: every member applying the same command reaches the same error, so it is part of
//! the replicated result and is sent back to the client with etcd's exact message.
//!
//! [`StorageError`] means the store itself failed (I/O, corruption). It is never part of a
//! command's result: the batch that hit it is abandoned and nothing of it is visible.

/// A gRPC status code, named as etcd's server reports it for each [`KvError`].
///
/// Kept here as a plain enum so this crate does not depend on tonic; the server maps each variant
/// to the `tonic::Code` of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed or refers to something that must exist (e.g. `ignore_value` on a
    /// missing key).
    InvalidArgument,
    /// The requested revision is outside the range the store can serve.
    OutOfRange,
    /// A referenced object (such as a lease) does not exist.
    NotFound,
    /// The system is not in a state required for the operation.
    FailedPrecondition,
    /// The store failed internally while serving a read.
    Internal,
    /// A resource (here: the cluster's storage quota) is exhausted.
    ResourceExhausted,
    /// The user may not do this (auth).
    PermissionDenied,
    /// The request's credentials are not valid (auth).
    Unauthenticated,
    /// Data was lost or corrupted (here: a member's data differ from its peers').
    DataLoss,
    /// The request may succeed if sent again (here: it raced a change of its shard's leader).
    Unavailable,
    /// No code: etcd returns the error as a plain Go error.
    Unknown,
}

/// A deterministic, per-request error whose `Display` is exactly etcd's client-visible message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The requested revision is older than the compaction point, so its data is gone.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is newer than the store's current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// `ignore_value` / `ignore_lease` was set on a put whose key does not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A put or a lease revoke named a lease that does not exist (or a grant named lease id 0,
    /// which etcd reports the same way).
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A lease grant named an id that is already granted.
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    /// A Raft command carried no operation. etcd has no such case (its proposals are always
    /// populated); Concord answers it so a waiting caller is never left hanging.
    #[error("etcdserver: request is empty")]
    EmptyCommand,
    /// A committed entry holds bytes that do not decode as a command: a request an older
    /// build let through that its log decoder cannot read back (a txn nested past the decoder's
    /// depth limit), or a damaged proposal. Every member decodes the same bytes the same way, so
    /// each applies the entry as this error (changing nothing) and the log goes on.
    #[error("etcdserver: request cannot be applied: its log entry does not decode")]
    Undecodable,
    /// A NOSPACE alarm is raised, so the store refuses writes that would add data: puts, txns
    /// containing a put, and lease grants (deletes, compactions and revokes still apply).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A CORRUPT alarm is raised: some member's data differ from its peers', so the cluster
    /// refuses every change to keys and leases until an operator has looked (etcd's applier does
    /// the same). Reads, auth changes and alarms still apply.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// A command stamped (multi-shard mode) with a global revision at or below the store's (or,
    /// for a write, at or below the highest stamp the store applied, a read barrier's or a
    /// cross-shard commit's): a leader's stamp that lost a race with a newer leader's writes.
    /// Applying it would put writes under history already served, so every replica refuses it
    /// alike and the client retries.
    #[error("concord: the write's revision {stamp} is not above its shard's revision {revision}; retry it")]
    StaleStamp {
        /// The revision the command was stamped with.
        stamp: i64,
        /// The store's revision when it came to apply.
        revision: i64,
    },
    /// A write that names a key outside its shard's range: a split moved the key to another
    /// shard after the write was routed. Every replica refuses it alike; its member sends it
    /// again to the shard that now holds the key.
    #[error("concord: the shard this request was sent to no longer holds its keys; retry it")]
    WrongShard,
    /// A command that the shard cannot apply while it holds its part of a write that spans
    /// shards (see `cross_shard.rs`): a write or read barrier stamped above that write's
    /// revision, a split, or the prepare of another such write. Every replica refuses it alike;
    /// its member sends it again once the held write is done.
    #[error("concord: the shard is held by a write across shards in progress; retry it")]
    ShardHeld,
    /// The commit of a write across shards that its primary shard has aborted (its coordinator
    /// went quiet, and a held shard asked), or the prepare of one that was aborted already.
    #[error("concord: the write across shards was aborted; retry it")]
    CrossShardAborted,
    /// A split at a key that is not strictly inside its shard: the shard's first key, or a key
    /// the shard does not hold.
    #[error("concord: the split key must lie strictly inside the shard that holds it")]
    SplitOutsideShard,
    /// A split this build cannot make yet, with the reason.
    #[error("concord: the shard cannot be split: {0}")]
    SplitRefused(&'static str),
    /// The store failed while serving a read (never produced by `apply`, whose storage failures
    /// are [`StorageError`]s that abort the batch).
    #[error("etcdserver: {0}")]
    Internal(String),
    /// Refused by the auth store: the sender may not do this, or an auth change is invalid (see
    /// [`AuthError`](crate::AuthError)).
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

impl KvError {
    /// The gRPC status code etcd attaches to this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            KvError::Compacted | KvError::FutureRevision => ErrorCode::OutOfRange,
            KvError::KeyNotFound | KvError::EmptyCommand | KvError::Undecodable => ErrorCode::InvalidArgument,
            KvError::LeaseNotFound => ErrorCode::NotFound,
            KvError::LeaseExists => ErrorCode::FailedPrecondition,
            KvError::Internal(_) => ErrorCode::Internal,
            KvError::NoSpace => ErrorCode::ResourceExhausted,
            KvError::Corrupt => ErrorCode::DataLoss,
            KvError::StaleStamp { .. } | KvError::WrongShard | KvError::ShardHeld | KvError::CrossShardAborted => {
                ErrorCode::Unavailable
            }
            KvError::SplitOutsideShard => ErrorCode::InvalidArgument,
            KvError::SplitRefused(_) => ErrorCode::FailedPrecondition,
            KvError::Auth(err) => err.code(),
        }
    }
}

impl From<StorageError> for KvError {
    fn from(err: StorageError) -> Self {
        KvError::Internal(err.to_string())
    }
}

/// The store could not read or write its file, or found it inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An error reported by redb (I/O, corruption detected by redb, transaction failures).
    #[error("storage: {0}")]
    Redb(#[from] redb::Error),
    /// Creating the store's directory failed.
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    /// The file holds data that violates this crate's invariants (e.g. an undecodable record).
    #[error("storage: corrupt store: {0}")]
    Corrupt(String),
    /// Encryption at rest: a sealed value cannot be opened (its key is missing, or it was
    /// altered), or the store holds values sealed with keys the member was not given.
    #[error("storage: encryption at rest: {0}")]
    Encryption(String),
}

impl From<concord_crypt::CryptError> for StorageError {
    fn from(err: concord_crypt::CryptError) -> Self {
        StorageError::Encryption(err.to_string())
    }
}

macro_rules! from_redb {
    ($($ty:ty),*) => {
        $(impl From<$ty> for StorageError {
            fn from(err: $ty) -> Self {
                StorageError::Redb(err.into())
            }
        })*
    };
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    redb::CompactionError
);

macro_rules! kv_from_redb {
    ($($ty:ty),*) => {
        $(impl From<$ty> for KvError {
            fn from(err: $ty) -> Self {
                KvError::from(StorageError::from(err))
            }
        })*
    };
}

kv_from_redb!(redb::TransactionError, redb::TableError, redb::StorageError);

/// What an operation inside the store can fail with: a request-level error, or a storage failure
/// that must abort the whole apply batch (or fail the read).
#[derive(Debug)]
pub(crate) enum OpError {
    Kv(KvError),
    Storage(StorageError),
}

impl From<KvError> for OpError {
    fn from(err: KvError) -> Self {
        OpError::Kv(err)
    }
}

macro_rules! op_from_storage {
    ($($ty:ty),*) => {
        $(impl From<$ty> for OpError {
            fn from(err: $ty) -> Self {
                OpError::Storage(err.into())
            }
        })*
    };
}

op_from_storage!(StorageError, redb::StorageError, redb::TableError);

impl From<OpError> for KvError {
    fn from(err: OpError) -> Self {
        match err {
            OpError::Kv(err) => err,
            OpError::Storage(err) => err.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_codes_match_etcd() {
        assert_eq!(
            KvError::Compacted.to_string(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        assert_eq!(
            KvError::FutureRevision.to_string(),
            "etcdserver: mvcc: required revision is a future revision"
        );
        assert_eq!(KvError::KeyNotFound.to_string(), "etcdserver: key not found");
        assert_eq!(
            KvError::LeaseNotFound.to_string(),
            "etcdserver: requested lease not found"
        );
        assert_eq!(KvError::Compacted.code(), ErrorCode::OutOfRange);
        assert_eq!(KvError::FutureRevision.code(), ErrorCode::OutOfRange);
        assert_eq!(KvError::KeyNotFound.code(), ErrorCode::InvalidArgument);
        assert_eq!(KvError::LeaseNotFound.code(), ErrorCode::NotFound);
        assert_eq!(KvError::LeaseExists.to_string(), "etcdserver: lease already exists");
        assert_eq!(KvError::LeaseExists.code(), ErrorCode::FailedPrecondition);
        assert_eq!(
            KvError::NoSpace.to_string(),
            "etcdserver: mvcc: database space exceeded"
        );
        assert_eq!(KvError::NoSpace.code(), ErrorCode::ResourceExhausted);
    }
}
