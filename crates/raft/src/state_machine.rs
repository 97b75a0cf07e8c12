//! What a Raft group replicates into: the contract between the driver and
//! the store that applies committed entries.

use std::path::Path;

use crate::snapshot::SnapshotJob;

/// One committed proposal, handed to the state machine in log order. An entry that holds a
/// batch of proposals comes as one of these per proposal, all with the entry's index.
pub struct Committed<'a> {
    /// The entry's Raft log index; the state machine records the last one it applied.
    pub index: u64,
    /// The proposed bytes; empty for Raft's own entries (a new leader's
    /// no-op, a configuration change), which only advance the applied index.
    pub data: &'a [u8],
    /// For a configuration change that took effect: what changed.
    pub conf_change: Option<ConfChangeApplied>,
    /// The global revision the group's leader stamped on the proposal (multi-shard mode; see
    /// [`crate::stamping`]), which its writes take; `None` for unstamped proposals.
    pub stamp: Option<i64>,
}

/// What a membership change does to one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberChangeKind {
    /// Becomes (or is promoted to) a voter.
    AddVoter,
    /// Becomes a learner: it receives the log but does not vote.
    AddLearner,
    /// Leaves the group.
    Remove,
}

/// A configuration change that raft-rs has applied.
pub struct ConfChangeApplied {
    /// Each member changed, and how.
    pub changes: Vec<(MemberChangeKind, u64)>,
    /// The context the proposer attached (Concord: the new member's details).
    pub context: Vec<u8>,
}

/// A failure of the state machine's own storage; it stops the group (see [`StateMachine::apply`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A deterministic state machine: every member applies the same entries in
/// the same order and must reach the same state and the same answers.
pub trait StateMachine: Send + 'static {
    /// The answer for a proposal, handed back to the caller that proposed it.
    type Output: Send + 'static;

    /// The index of the last entry applied; entries up to it are skipped on restart.
    fn applied_index(&self) -> u64;

    /// Applies a run of committed proposals and returns an output for each one applied that
    /// has an answer, keyed by its position in `entries`. Proposals of an index at or below
    /// [`StateMachine::applied_index`] are skipped. An error here is a storage failure, not a
    /// rejected request, and stops the member.
    fn apply(&mut self, entries: &[Committed<'_>]) -> Result<Vec<(usize, Self::Output)>, BoxError>;

    /// Makes everything applied so far durable; called on shutdown.
    fn sync(&mut self) -> Result<(), BoxError>;

    /// The highest applied index that is durable in the state machine; the
    /// log is never truncated past it.
    fn durable_index(&self) -> u64;

    /// A job that writes a consistent snapshot of the current state to a file.
    fn snapshot_job(&self) -> SnapshotJob;

    /// Replaces the whole state with a snapshot received from the leader.
    fn install_snapshot(&mut self, path: &Path, app_data: &[u8]) -> Result<(), BoxError>;
}
