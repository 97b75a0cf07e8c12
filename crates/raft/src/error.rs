//! Why a proposal or a read could not be served.

/// Failures a caller of a group can see. The server maps them to etcd's errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RaftError {
    /// No leader is known, so nothing can be committed or read linearizably.
    #[error("no leader")]
    NoLeader,
    /// The request waited longer than the request timeout.
    #[error("request timed out")]
    Timeout,
    /// raft-rs refused the proposal (for example during a leader transfer).
    #[error("raft proposal dropped")]
    ProposalDropped,
    /// The proposal was committed inside a batch entry that does not decode, so it was applied
    /// as nothing (on every member alike).
    #[error("the log entry holding the proposal does not decode")]
    Malformed,
    /// The group is shutting down.
    #[error("raft group stopped")]
    Stopped,
    /// The member is overloaded: apply trails commit too far, or too many proposal bytes are in
    /// flight (see `admission`). etcd's `ErrTooManyRequests`.
    #[error("too many requests")]
    TooManyRequests,
    /// A proposal to a group whose writes are stamped (multi-shard mode) reached a member that
    /// does not lead it: only the leader stamps. Carries the leader this member knows (0: none).
    #[error("this member does not lead the group (its leader is {0:x})")]
    NotLeader(u64),
    /// The revision oracle did not hand out revisions for a stamped proposal.
    #[error("no revisions for the proposal: {0}")]
    Revisions(String),
    /// raft-rs reported an error.
    #[error("raft: {0}")]
    Raft(String),
    /// The log engine or the file system failed.
    #[error("io: {0}")]
    Io(String),
    /// The log holds sealed entries this member has no key for (or no key file at all).
    #[error("encryption at rest: {0}")]
    Encryption(String),
}

impl RaftError {
    pub(crate) fn log(e: raft_engine::Error) -> RaftError {
        RaftError::Io(e.to_string())
    }

    pub(crate) fn raft(e: raft::Error) -> RaftError {
        RaftError::Raft(e.to_string())
    }
}
