//! Consensus, leadership and membership: a request the group cannot serve now, and a member
//! change etcd's Cluster or Maintenance service refuses.

use tonic::Status;

// Consensus.

/// etcd's `ErrGRPCNoLeader`: the group knows no leader, so nothing can be committed or read
/// linearizably.
pub fn no_leader() -> Status {
    Status::unavailable("etcdserver: no leader")
}

/// etcd's `ErrGRPCTimeout`: a proposal or read barrier not done within the request timeout
/// (Concord also answers it for a proposal raft-rs dropped, where etcd passes raft's error on).
pub fn timeout() -> Status {
    Status::unavailable("etcdserver: request timed out")
}

/// etcd's `ErrGRPCStopped`: the member is shutting down.
pub fn stopped() -> Status {
    Status::unavailable("etcdserver: server stopped")
}

/// etcd's `ErrGRPCUnhealthy`: a member change (or the leader's handover before removing itself)
/// that would leave too few active voters for a quorum.
pub fn unhealthy() -> Status {
    Status::unavailable("etcdserver: unhealthy cluster")
}

// Leadership.

/// etcd's `ErrGRPCNotLeader`: a call only the leader serves (MoveLeader, and a Cluster or Lease
/// call another member forwarded) reached a member that does not lead.
pub fn not_leader() -> Status {
    Status::failed_precondition("etcdserver: not leader")
}

/// etcd's `ErrGRPCBadLeaderTransferee`: MoveLeader (or `concord shard transfer-leader`) to a
/// member that is not a voter of the group.
pub fn bad_leader_transferee() -> Status {
    Status::failed_precondition("etcdserver: bad leader transferee")
}

/// etcd's `ErrTimeoutLeaderTransfer` (a server error with no `ErrGRPC*` twin): the new leader did
/// not take over in time. Concord answers it with DeadlineExceeded, etcd with Unknown.
pub fn timeout_leader_transfer() -> Status {
    Status::deadline_exceeded("etcdserver: request timed out, leader transfer took too long")
}

// Membership.

/// etcd's `ErrGRPCMemberNotFound`: a MemberUpdate, MemberRemove or MemberPromote of an id that is
/// no member.
pub fn member_not_found() -> Status {
    Status::not_found("etcdserver: member not found")
}

/// etcd's `ErrGRPCMemberBadURLs`: MemberAdd or MemberUpdate peer URLs that are malformed or that
/// no member could be reached at (see `crate::peer_urls`).
pub fn member_bad_urls() -> Status {
    Status::invalid_argument("etcdserver: given member URLs are invalid")
}

/// etcd's `ErrGRPCPeerURLExist`: a MemberAdd or MemberUpdate with a peer URL another member has.
pub fn peer_url_exist() -> Status {
    Status::failed_precondition("etcdserver: Peer URLs already exists")
}

/// etcd's `ErrGRPCTooManyLearners`: a MemberAdd of a learner when the cluster has as many as
/// etcd allows.
pub fn too_many_learners() -> Status {
    Status::failed_precondition("etcdserver: too many learner members in cluster")
}

/// etcd's `ErrGRPCMemberNotLearner`: a MemberPromote of a member that is a voter already.
pub fn member_not_learner() -> Status {
    Status::failed_precondition("etcdserver: can only promote a learner member")
}

/// etcd's `ErrGRPCLearnerNotReady`: a MemberPromote of a learner whose log is still too far
/// behind the leader's.
pub fn learner_not_ready() -> Status {
    Status::failed_precondition("etcdserver: can only promote a learner member which is in sync with leader")
}
