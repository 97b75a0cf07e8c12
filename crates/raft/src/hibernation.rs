//! Idle groups that stop ticking (TiKV's hibernate regions, CockroachDB's quiescence), so a
//! member can hold many shards that take no writes at almost no cost: a ticking group wakes its
//! driver ten times a second and its leader sends a heartbeat to every follower each time.
//!
//! - A group that may hibernate ([`crate::RaftConfig::hibernate`]; never group 1, whose leader
//!   also hands out revisions and whose ticks keep members in touch) counts the ticks in which
//!   nothing moved: no new entry, no commit, no apply, nothing waiting.
//! - After [`IDLE_TICKS_BEFORE`] election timeouts of that, a leader whose followers all hold
//!   its whole log tells them so ([`Hint::Hibernate`], carrying its term, last index and
//!   commit) and stops ticking. A follower that agrees (same leader and term, same last index
//!   and commit) stops too; one that does not keeps ticking, and its election timeout wakes the
//!   leader soon enough (below).
//! - Any message for a quiet group wakes it: a proposal, a read, a Raft message. A follower that
//!   wakes tells its leader ([`Hint::Wake`]), so the leader's heartbeats resume and a campaign
//!   by another follower that cannot hear it is refused, as when nobody slept.
//! - The peer transport notes when each member was last heard from (any batch counts, and
//!   members send each other a beacon five times a second). When a member falls silent for an
//!   election timeout, the transport tells every group; a quiet one led by that member wakes,
//!   ticks, and campaigns after an election timeout. A quiet group also checks by itself every
//!   few seconds, should that word be lost.
//!
//! The hints travel as raft-rs messages of a type raft-rs only ever builds for itself and never
//! sends (`MsgCheckQuorum`), in order with the group's other messages on the same streams; the
//! receiving driver takes them out before raft-rs sees them.

use raft::eraftpb::{Message, MessageType};

/// Election timeouts of idleness after which a leader lets its group hibernate.
pub const IDLE_TICKS_BEFORE: usize = 2;

/// The message type the hints ride on: local to raft-rs, never sent between members by it.
const HINT_TYPE: MessageType = MessageType::MsgCheckQuorum;
const HIBERNATE: &[u8] = b"hibernate";
const WAKE: &[u8] = b"wake";

/// What one member of a group tells another about ticking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// From the leader: nothing moved for a while and you hold my whole log; stop ticking.
    Hibernate { term: u64, last_index: u64, commit: u64 },
    /// From a follower: I woke up; tick again.
    Wake,
}

impl Hint {
    /// The hint as a message from `from` to `to` in `term`.
    pub fn to_message(self, from: u64, to: u64, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(HINT_TYPE);
        m.from = from;
        m.to = to;
        m.term = term;
        match self {
            Hint::Hibernate {
                term: t,
                last_index,
                commit,
            } => {
                m.term = t;
                m.index = last_index;
                m.commit = commit;
                m.context = HIBERNATE.to_vec().into();
            }
            Hint::Wake => m.context = WAKE.to_vec().into(),
        }
        m
    }

    /// The hint `m` carries, if it is one.
    pub fn of(m: &Message) -> Option<Hint> {
        if m.get_msg_type() != HINT_TYPE {
            return None;
        }
        match &m.context[..] {
            HIBERNATE => Some(Hint::Hibernate {
                term: m.term,
                last_index: m.index,
                commit: m.commit,
            }),
            WAKE => Some(Hint::Wake),
            _ => None,
        }
    }
}

/// Where a group's log stands: if this does not change from one tick to the next, and nothing
/// waits, the tick was idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub term: u64,
    pub last_index: u64,
    pub commit: u64,
    pub applied: u64,
}

/// One group's hibernation state, kept by its driver.
#[derive(Debug, Default)]
pub struct Hibernation {
    enabled: bool,
    quiet: bool,
    idle_ticks: usize,
    last: Progress,
}

impl Hibernation {
    /// The state of a group that may hibernate (`enabled`) or never does.
    pub fn new(enabled: bool) -> Hibernation {
        Hibernation {
            enabled,
            ..Default::default()
        }
    }

    /// Whether the group is not ticking now.
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// Counts a tick at `now`, with `busy` when something waits (proposals, reads). Returns
    /// whether the group has been idle long enough (`after` ticks) to hibernate.
    pub fn on_tick(&mut self, now: Progress, busy: bool, after: usize) -> bool {
        if !self.enabled {
            return false;
        }
        if busy || now != self.last {
            self.last = now;
            self.idle_ticks = 0;
            return false;
        }
        self.idle_ticks += 1;
        self.idle_ticks >= after
    }

    /// Stops ticking; returns whether the group was ticking.
    pub fn sleep(&mut self) -> bool {
        let fell_asleep = self.enabled && !self.quiet;
        self.quiet |= self.enabled;
        fell_asleep
    }

    /// Ticks again; returns whether the group was quiet.
    pub fn wake(&mut self) -> bool {
        self.idle_ticks = 0;
        std::mem::replace(&mut self.quiet, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_round_trip_and_other_messages_are_not_hints() {
        for hint in [
            Hint::Hibernate {
                term: 7,
                last_index: 42,
                commit: 42,
            },
            Hint::Wake,
        ] {
            let m = hint.to_message(1, 2, 7);
            assert_eq!((m.from, m.to), (1, 2));
            assert_eq!(Hint::of(&m), Some(hint));
        }
        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        assert_eq!(Hint::of(&heartbeat), None);
    }

    #[test]
    fn only_idle_ticks_count_and_a_disabled_group_never_sleeps() {
        let mut h = Hibernation::new(true);
        let at = |index| Progress {
            term: 1,
            last_index: index,
            commit: index,
            applied: index,
        };
        assert!(!h.on_tick(at(5), false, 3));
        assert!(!h.on_tick(at(5), false, 3));
        assert!(!h.on_tick(at(5), true, 3), "something waiting is not idle");
        assert!(!h.on_tick(at(5), false, 3));
        assert!(!h.on_tick(at(6), false, 3), "a new entry is not idle");
        assert!(!h.on_tick(at(6), false, 3));
        assert!(!h.on_tick(at(6), false, 3));
        assert!(h.on_tick(at(6), false, 3));
        assert!(h.sleep());
        assert!(!h.sleep(), "asleep already");
        assert!(h.is_quiet());
        assert!(h.wake());
        assert!(!h.is_quiet());

        let mut never = Hibernation::new(false);
        for _ in 0..10 {
            assert!(!never.on_tick(at(1), false, 1));
        }
        assert!(!never.sleep());
        assert!(!never.is_quiet());
    }
}
