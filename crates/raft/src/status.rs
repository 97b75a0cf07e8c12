//! A snapshot of a group's Raft state, for status RPCs and routing.

/// This member's role in a group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Follows a leader, or waits for one.
    #[default]
    Follower,
    /// Campaigning (pre-vote or vote).
    Candidate,
    /// Leads the group.
    Leader,
}

/// What the driver last saw of its group; refreshed on every loop.
#[derive(Clone, Debug, Default)]
pub struct GroupStatus {
    /// The group.
    pub group_id: u64,
    /// This member.
    pub member_id: u64,
    /// The known leader, 0 when there is none.
    pub leader_id: u64,
    /// The current term.
    pub term: u64,
    /// This member's role.
    pub role: Role,
    /// The highest log index known committed.
    pub commit_index: u64,
    /// The highest log index applied to the state machine.
    pub applied_index: u64,
    /// The last index in this member's log.
    pub last_index: u64,
    /// The voting members.
    pub voters: Vec<u64>,
    /// The learners.
    pub learners: Vec<u64>,
    /// On the leader: how far each member's log matches, and whether it
    /// answered recently. Empty elsewhere.
    pub progress: Vec<PeerProgress>,
}

/// The leader's view of one member's replication.
#[derive(Clone, Debug, Default)]
pub struct PeerProgress {
    /// The member.
    pub member_id: u64,
    /// The highest log index known to match the leader's.
    pub matched: u64,
    /// Whether it communicated within the last election timeout.
    pub recent_active: bool,
}
