//! Concord's own errors, where etcd has none: the `Shards` service, what Concord does not do,
//! limits etcd does not have, and a member's internal failures. Those an etcd client may meet on
//! etcd's services keep etcd's "etcdserver: " prefix; the rest say "concord: ".

use std::time::Duration;

use tonic::Status;

use crate::errors::internal;

// The Shards service.

/// A `Shards` call naming a shard this member does not know.
pub fn shard_not_found(id: u64) -> Status {
    Status::not_found(format!("concord: shard {id} does not exist"))
}

/// `Shards.Split` without the key to split at.
pub fn split_needs_key() -> Status {
    Status::invalid_argument("concord: a split needs a key")
}

/// `Shards.Split` on a cluster whose revisions are dense (etcd's): shards need global revisions.
pub fn split_needs_stamped_revisions() -> Status {
    Status::failed_precondition(
        "concord: shards can be split only in a cluster started with --experimental-stamped-revisions \
         or --experimental-initial-shards",
    )
}

/// `Shards.Split` at the first key of a shard.
pub fn split_at_shard_start() -> Status {
    Status::invalid_argument("concord: a shard already starts at that key")
}

/// `Shards.Move` of group 1's shard, whose replicas are the cluster's members.
pub fn move_first_shard() -> Status {
    Status::failed_precondition(
        "concord: the first shard has a replica on every member: change members with `concord member add/remove`",
    )
}

/// `Shards.Move` naming no member to add or remove.
pub fn shard_move_nothing() -> Status {
    Status::invalid_argument("concord: a move needs a member to add or to remove")
}

/// `Shards.Move` adding a member that is not in the cluster.
pub fn member_not_found_for_move(id: u64) -> Status {
    Status::not_found(format!("concord: member {id:x} is not in the cluster"))
}

/// `Shards.Move` adding a member that holds the shard already.
pub fn shard_move_already_holds(id: u64) -> Status {
    Status::invalid_argument(format!("concord: member {id:x} holds the shard already"))
}

/// `Shards.Move` removing a member that does not hold the shard.
pub fn shard_move_not_holding(id: u64) -> Status {
    Status::invalid_argument(format!("concord: member {id:x} does not hold the shard"))
}

/// `Shards.Move` that would leave the shard without a replica.
pub fn shard_move_empty() -> Status {
    Status::invalid_argument("concord: a shard needs at least one replica")
}

/// `Shards.Move` whose new replica did not catch up in time; it stays a learner.
pub fn shard_move_catch_up_timeout(id: u64) -> Status {
    Status::deadline_exceeded(format!(
        "concord: member {id:x} did not catch up with the shard in time; it stays a learner"
    ))
}

// Requests that span shards (multi-shard mode).

fn shard_list(groups: &[u64]) -> String {
    groups.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// A write (a delete, a txn that writes) whose keys lie in several shards: one Raft group cannot
/// apply it atomically, and cross-shard transactions are not built yet.
pub fn write_spans_shards(groups: &[u64]) -> Status {
    Status::failed_precondition(format!(
        "concord: the write touches keys of shards {}; a write must stay within one shard until \
         cross-shard transactions are implemented",
        shard_list(groups)
    ))
}

/// A read or watch whose keys lie in several shards, which needs a consistent cut across them.
pub fn read_spans_shards(groups: &[u64]) -> Status {
    Status::unimplemented(format!(
        "concord: reading or watching keys of several shards ({}) is not implemented yet",
        shard_list(groups)
    ))
}

/// A request another member forwarded for a shard this member holds no replica of either.
pub fn misrouted_shard(group: u64) -> Status {
    Status::unavailable(format!(
        "concord: this member holds no replica of shard {group} either; retry"
    ))
}

/// No member holding a replica of the shard could be reached.
pub fn no_replica_reachable(group: u64) -> Status {
    Status::unavailable(format!("concord: no member holding shard {group} can be reached"))
}

/// What multi-shard mode does not do yet: `what` names it.
pub fn unsharded_only(what: &str) -> Status {
    Status::unimplemented(format!(
        "concord: {what} is not implemented yet when the keyspace is split into shards"
    ))
}

// The revision oracle (peer URLs).

/// `RevisionOracle.Allocate` on a member that does not lead the metadata group.
pub fn revision_oracle_not_leader(leader: u64) -> Status {
    match leader {
        0 => Status::unavailable("concord: the revision oracle has no leader"),
        leader => Status::unavailable(format!(
            "concord: this member does not lead the revision oracle; its leader is {leader:x}"
        )),
    }
}

/// `RevisionOracle.Allocate` asked for no revisions, or too many at once.
pub fn revision_count_out_of_range(count: u32, most: u32) -> Status {
    Status::invalid_argument(format!(
        "concord: revisions are allocated 1 to {most} at a time, not {count}"
    ))
}

/// The revision oracle's leader lost its leadership while allocating: nothing it handed out in
/// that round may be used.
pub fn revision_oracle_deposed() -> Status {
    Status::unavailable("concord: the revision oracle's leader changed while allocating; retry")
}

/// A write to a group whose writes are stamped with global revisions, on a member that does not
/// lead it (only the leader stamps).
pub fn not_stamping_leader(leader: u64) -> Status {
    Status::unavailable(format!(
        "concord: this member does not lead the write's shard (its leader is {leader:x}); send the write there"
    ))
}

/// A stamped write for which the revision oracle handed out no revision.
pub fn no_revisions(reason: &str) -> Status {
    Status::unavailable(format!("concord: no revision for the write: {reason}"))
}

// What Concord does not do.

/// A gRPC call to a path no service serves (grpc-go would say "unknown service" or "unknown
/// method").
pub fn unknown_path(path: &str) -> Status {
    Status::unimplemented(format!("concord: {path} is not implemented yet"))
}

/// `Maintenance.Downgrade`: there is no older Concord to downgrade to.
pub fn downgrade_unsupported() -> Status {
    Status::unimplemented("concord: Maintenance.Downgrade is not supported: there is no older Concord to downgrade to")
}

/// A Maintenance call other than HashKV on the peer URLs (members ask each other's hashes there;
/// clients use the client URLs).
pub fn only_hash_kv_on_peer_urls() -> Status {
    Status::unimplemented("concord: only HashKV is served on peer URLs; use a client URL")
}

// Limits etcd does not have.

/// A snapshot download whose client took no message for `stall_timeout`: it is cancelled and its
/// file removed.
pub fn snapshot_download_stalled(stall_timeout: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "concord: snapshot download cancelled: the client took no data for {stall_timeout:?}"
    ))
}

/// A snapshot or defragmentation that would write `needed` bytes where the disk has only `free`
/// (`what` says which).
pub fn not_enough_disk(what: &str, free: u64, needed: u64) -> Status {
    Status::resource_exhausted(format!(
        "etcdserver: not enough free disk for {what}: {free} bytes free, {needed} needed"
    ))
}

// Internal failures.

/// A command applied with a result of another kind than the one proposed (a bug).
pub fn unexpected_apply_result() -> Status {
    internal("unexpected apply result")
}

/// As [`unexpected_apply_result`], naming the revision the command applied at.
pub fn unexpected_apply_result_at(revision: i64) -> Status {
    internal(format_args!("unexpected apply result at revision {revision}"))
}

/// A session lease for Lock or Campaign for which every id tried was taken.
pub fn cannot_choose_lease_id() -> Status {
    internal("cannot choose a lease id")
}

/// bcrypt failed to hash a new password for a reason other than its length.
pub fn password_hash_failed(err: impl std::fmt::Display) -> Status {
    internal(format_args!("cannot hash the password: {err}"))
}

/// Reading a snapshot file to send it failed.
pub fn snapshot_read_failed(err: std::io::Error) -> Status {
    internal(format_args!("snapshot: {err}"))
}

/// The leader's advertised client URL cannot be dialed to forward a call there.
pub fn bad_leader_url(url: &str, err: impl std::fmt::Display) -> Status {
    Status::internal(format!("bad leader URL {url}: {err}"))
}

/// The task serving a Lock or Election call ended without answering it (a bug, or a panic).
pub fn task_ended_without_answer() -> Status {
    Status::internal("concord: the request's task ended without an answer")
}

/// A request that reached a shard which no longer holds its keys: a split moved them after the
/// request was routed. The member routes it again ([`is_wrong_shard`]); a client sees it only
/// when the router did not change in time, and may retry.
pub fn wrong_shard() -> Status {
    super::from_kv(concord_storage::KvError::WrongShard)
}

/// A `Shards.Propose` call whose command is not one a member proposes to another's shard.
pub fn not_a_shard_proposal() -> Status {
    Status::invalid_argument("concord: the command is not a phase of a write across shards nor a lease grant")
}

/// Whether `status` says the group had no leader (etcd's `etcdserver: no leader`).
pub fn is_no_leader(status: &Status) -> bool {
    let no_leader = super::from_raft(concord_raft::RaftError::NoLeader);
    status.code() == no_leader.code() && status.message() == no_leader.message()
}

/// Whether `status` is [`wrong_shard`]'s.
pub fn is_wrong_shard(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.message() == concord_storage::KvError::WrongShard.to_string()
}
