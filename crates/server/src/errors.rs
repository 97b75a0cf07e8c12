//! etcd's client-visible errors, as gRPC statuses.
//!
//! Clients match on these strings (etcd's `rpctypes`), so the messages are
//! etcd's exactly; the codes are the ones etcd's server attaches.

use concord_raft::RaftError;
use concord_storage::{AuthError, ErrorCode, KvError};
use tonic::{Code, Status};

/// "etcdserver: key is not provided"
pub fn empty_key() -> Status {
    Status::invalid_argument("etcdserver: key is not provided")
}

/// "etcdserver: value is provided" (a put with `ignore_value` and a value)
pub fn value_provided() -> Status {
    Status::invalid_argument("etcdserver: value is provided")
}

/// "etcdserver: lease is provided" (a put with `ignore_lease` and a lease)
pub fn lease_provided() -> Status {
    Status::invalid_argument("etcdserver: lease is provided")
}

/// "etcdserver: too many operations in txn request"
pub fn too_many_ops() -> Status {
    Status::invalid_argument("etcdserver: too many operations in txn request")
}

/// "etcdserver: duplicate key given in txn request"
pub fn duplicate_key() -> Status {
    Status::invalid_argument("etcdserver: duplicate key given in txn request")
}

/// A txn nested deeper than [`crate::validate::MAX_TXN_DEPTH`]; etcd has no such limit, so
/// no etcd string either.
pub fn txn_too_deep() -> Status {
    Status::invalid_argument(format!(
        "etcdserver: txn nested too deeply (at most {} levels)",
        crate::validate::MAX_TXN_DEPTH
    ))
}

/// "etcdserver: request is too large"
pub fn request_too_large() -> Status {
    Status::invalid_argument("etcdserver: request is too large")
}

/// "etcdserver: invalid sort option"
pub fn invalid_sort_option() -> Status {
    Status::invalid_argument("etcdserver: invalid sort option")
}

/// "etcdserver: given member URLs are invalid" (etcd's `ErrGRPCMemberBadURLs`, code
/// InvalidArgument): MemberAdd or MemberUpdate peer URLs that are malformed or that no member
/// could be reached at (see `crate::peer_urls`).
pub const MEMBER_BAD_URLS: &str = "etcdserver: given member URLs are invalid";

/// "etcdserver: member not found"
pub fn member_not_found() -> Status {
    Status::not_found("etcdserver: member not found")
}

/// Maps a failure of the consensus layer to etcd's error for it.
pub fn from_raft(err: RaftError) -> Status {
    match err {
        RaftError::NoLeader => Status::unavailable("etcdserver: no leader"),
        RaftError::Timeout => Status::unavailable("etcdserver: request timed out"),
        RaftError::ProposalDropped => Status::unavailable("etcdserver: request timed out"),
        RaftError::Stopped => Status::unavailable("etcdserver: server stopped"),
        RaftError::Malformed => {
            Status::internal("etcdserver: request cannot be applied: its log entry does not decode")
        }
        RaftError::Raft(msg) | RaftError::Io(msg) | RaftError::Encryption(msg) => {
            Status::internal(format!("etcdserver: {msg}"))
        }
    }
}

/// Maps a store's per-request error to etcd's status.
pub fn from_kv(err: KvError) -> Status {
    let code = match err.code() {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::OutOfRange => Code::OutOfRange,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::Internal => Code::Internal,
        ErrorCode::ResourceExhausted => Code::ResourceExhausted,
        ErrorCode::DataLoss => Code::DataLoss,
        ErrorCode::PermissionDenied => Code::PermissionDenied,
        ErrorCode::Unauthenticated => Code::Unauthenticated,
        ErrorCode::Unknown => Code::Unknown,
    };
    Status::new(code, err.to_string())
}

/// An auth refusal as etcd's status (e.g. "etcdserver: permission denied", PermissionDenied).
pub fn from_auth(err: AuthError) -> Status {
    from_kv(KvError::Auth(err))
}
