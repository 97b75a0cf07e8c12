//! Every error the member answers a client with, as gRPC statuses, built in this one module.
//!
//! Clients match on etcd's strings (its `rpctypes`, and the plain Go errors its lock, election
//! and watch servers pass on), so the messages are etcd's exactly and the codes the ones etcd's
//! server attaches; each constructor names the etcd error it copies. Code that recognizes an
//! error by its message compares it with the message built here (or with [`KvError`]'s and
//! [`AuthError`]'s, the store's errors, which [`from_kv`] and [`from_auth`] send), never with a
//! copy of the text.
//!
//! - `request.rs`: a KV or lease request refused for what it asks (etcd's request checks, its
//!   space quota and its request limits).
//! - `cluster.rs`: consensus, leadership and membership (etcd's `ErrGRPCNoLeader`,
//!   `ErrGRPCNotLeader`, the member errors).
//! - `concurrency.rs`: the plain errors of the Lock and Election services and of the auth
//!   token signer.
//! - `watch.rs`: the reasons a watch stream gives for a watch it refuses.
//! - `concord.rs`: Concord's own errors, where etcd has none (shards, refusals of what Concord
//!   does not do, a member's internal failures).
//! - `transport.rs`: gRPC's own errors, as tonic and grpc-go word them, for the hand-written KV
//!   path and the JSON gateway.

mod cluster;
mod concord;
mod concurrency;
mod request;
mod transport;
mod watch;

pub use cluster::*;
pub use concord::*;
pub use concurrency::*;
pub use request::*;
pub use transport::*;
pub use watch::*;

use concord_raft::RaftError;
use concord_storage::{AuthError, ErrorCode, KvError};
use tonic::{Code, Status};

/// Maps a failure of the consensus layer to etcd's error for it.
pub fn from_raft(err: RaftError) -> Status {
    match err {
        RaftError::NoLeader => no_leader(),
        RaftError::Timeout => timeout(),
        RaftError::ProposalDropped => timeout(),
        RaftError::Stopped => stopped(),
        RaftError::TooManyRequests => overloaded(),
        // The store's message for an entry that does not decode, but Internal: the proposal's
        // own entry was damaged, not a request the store refused.
        RaftError::Malformed => Status::internal(KvError::Undecodable.to_string()),
        RaftError::Raft(msg) | RaftError::Io(msg) | RaftError::Encryption(msg) => internal(msg),
        RaftError::NotLeader(leader) => not_stamping_leader(leader),
        RaftError::Revisions(reason) => no_revisions(&reason),
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
        ErrorCode::Unavailable => Code::Unavailable,
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

/// "etcdserver: <detail>", Internal: the member itself failed (I/O, a task that died), worded as
/// the store words its own internal failures ([`KvError::Internal`]).
pub fn internal(detail: impl std::fmt::Display) -> Status {
    from_kv(KvError::Internal(detail.to_string()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;

    use super::*;

    /// Every fixed error, with the code and message clients get (etcd's, where etcd has one).
    #[test]
    fn every_fixed_error_keeps_its_code_and_message() {
        let cases: Vec<(Status, Code, &str)> = vec![
            (empty_key(), Code::InvalidArgument, "etcdserver: key is not provided"),
            (value_provided(), Code::InvalidArgument, "etcdserver: value is provided"),
            (lease_provided(), Code::InvalidArgument, "etcdserver: lease is provided"),
            (
                too_many_ops(),
                Code::InvalidArgument,
                "etcdserver: too many operations in txn request",
            ),
            (
                duplicate_key(),
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
            ),
            (
                request_too_large(),
                Code::InvalidArgument,
                "etcdserver: request is too large",
            ),
            (
                invalid_sort_option(),
                Code::InvalidArgument,
                "etcdserver: invalid sort option",
            ),
            (
                lease_ttl_too_large(),
                Code::OutOfRange,
                "etcdserver: too large lease TTL",
            ),
            (
                no_space(),
                Code::ResourceExhausted,
                "etcdserver: mvcc: database space exceeded",
            ),
            (no_leader(), Code::Unavailable, "etcdserver: no leader"),
            (timeout(), Code::Unavailable, "etcdserver: request timed out"),
            (stopped(), Code::Unavailable, "etcdserver: server stopped"),
            (unhealthy(), Code::Unavailable, "etcdserver: unhealthy cluster"),
            (not_leader(), Code::FailedPrecondition, "etcdserver: not leader"),
            (
                bad_leader_transferee(),
                Code::FailedPrecondition,
                "etcdserver: bad leader transferee",
            ),
            (
                timeout_leader_transfer(),
                Code::DeadlineExceeded,
                "etcdserver: request timed out, leader transfer took too long",
            ),
            (member_not_found(), Code::NotFound, "etcdserver: member not found"),
            (
                member_bad_urls(),
                Code::InvalidArgument,
                "etcdserver: given member URLs are invalid",
            ),
            (
                peer_url_exist(),
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
            ),
            (
                too_many_learners(),
                Code::FailedPrecondition,
                "etcdserver: too many learner members in cluster",
            ),
            (
                member_not_learner(),
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
            ),
            (
                learner_not_ready(),
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
            ),
            (election_not_leader(), Code::Unknown, "election: not leader"),
            (election_no_leader(), Code::Unknown, "election: no leader"),
            (missing_leader_key(), Code::Unknown, "\"leader\" field must be provided"),
            (session_expired(), Code::Unknown, "mutex: session is expired"),
            (plain_empty_key(), Code::Unknown, "etcdserver: key is not provided"),
            (
                password_too_long(),
                Code::Unknown,
                "bcrypt: password length exceeds 72 bytes",
            ),
            (
                from_raft(RaftError::ProposalDropped),
                Code::Unavailable,
                "etcdserver: request timed out",
            ),
            (
                from_raft(RaftError::Malformed),
                Code::Internal,
                "etcdserver: request cannot be applied: its log entry does not decode",
            ),
            (
                from_raft(RaftError::Io("disk".into())),
                Code::Internal,
                "etcdserver: disk",
            ),
            (
                too_many_requests(format_args!("{} snapshot downloads are in progress on this member", 2)),
                Code::ResourceExhausted,
                "etcdserver: too many requests: 2 snapshot downloads are in progress on this member",
            ),
            (
                unexpected_apply_result_at(7),
                Code::Internal,
                "etcdserver: unexpected apply result at revision 7",
            ),
            (
                snapshot_download_stalled(Duration::from_secs(60)),
                Code::DeadlineExceeded,
                "concord: snapshot download cancelled: the client took no data for 60s",
            ),
            (
                invalid_compression_flag(2),
                Code::Internal,
                "protocol error: received message with invalid compression flag: 2 (valid flags are 0 and 1), \
                 while sending request",
            ),
        ];
        for (status, code, message) in cases {
            assert_eq!((status.code(), status.message()), (code, message));
        }
        assert_eq!(VERIFY_ONLY, "auth: token signing attempted with verify-only key");
        assert_eq!(WATCHER_RANGE_EMPTY, "mvcc: watcher range is empty");
        assert_eq!(
            WATCHER_DUPLICATE_ID,
            "mvcc: duplicate watch ID provided on the WatchStream"
        );
        assert_eq!(
            as_cancel_reason(&from_auth(AuthError::PermissionDenied)),
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
        );
    }
}
