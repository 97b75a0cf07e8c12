//! The driver of one Raft group: a dedicated thread that owns the raft-rs
//! `RawNode`, turns client calls into proposals and read requests, persists
//! and applies what raft-rs hands back, and ships messages to peers.
//!
//! Everything that touches the `RawNode` happens on this thread, so raft-rs
//! needs no locks. Callers talk to it through a [`RaftHandle`], which only
//! sends messages into the thread's mailbox and awaits replies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::path::PathBuf;

use concord_proto::concordpb::SnapshotDescriptor;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, SnapshotStatus, StateRole};
use raft_engine::{Engine, LogBatch};
use tokio::sync::{oneshot, watch};

use crate::error::RaftError;
use crate::hibernation::{Hibernation, Hint, Progress, IDLE_TICKS_BEFORE};
use crate::log_store::LogStore;
use crate::proposal_batch::Stamped;
use crate::proposal_batch::{self, Proposer};
use crate::read_loop::{self, ReadQueue};
use crate::snapshot::{BuiltSnapshot, SnapshotSlot};
use crate::stamping::{Origin, RevisionSource, StampItem, StampQueue};
use crate::state_machine::{Committed, ConfChangeApplied, MemberChangeKind, StateMachine};
use crate::status::{GroupStatus, PeerProgress, Role};
use crate::transport::MessageSink;

/// How a group is set up on this member.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// Which group this is; today group 1 owns every key.
    pub group_id: u64,
    /// This member's id, also its Raft id.
    pub member_id: u64,
    /// The voters the group starts with when its log is empty.
    pub initial_voters: Vec<u64>,
    /// Length of one Raft tick (etcd's `--heartbeat-interval`).
    pub tick_interval: Duration,
    /// Ticks without a leader before an election (etcd's `--election-timeout` / heartbeat).
    pub election_ticks: usize,
    /// How long a proposal or read may wait before it fails with a timeout.
    pub request_timeout: Duration,
    /// Where snapshot files are built and received.
    pub snapshot_dir: PathBuf,
    /// Applied entries kept in the log before its front is dropped (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept behind the applied index when the log is truncated, so
    /// slightly lagging followers catch up from the log, not a snapshot.
    pub catch_up_entries: u64,
    /// Seals the data of log entries (encryption at rest); `None` writes them plain.
    pub sealer: Option<Arc<concord_crypt::Sealer>>,
    /// An apply batch that takes this long or longer is logged (etcd's
    /// `--experimental-warning-apply-duration`; [`DEFAULT_WARNING_APPLY_DURATION`] by default).
    pub warning_apply_duration: Duration,
    /// The most proposal bytes this member may have in flight in the group before new ones are
    /// refused ([`crate::admission`]).
    pub max_pending_proposal_bytes: usize,
    /// Whether the group stops ticking while idle ([`crate::hibernation`]): a shard's group
    /// does, group 1 never.
    pub hibernate: bool,
}

/// How long a quiet group's driver sleeps when nothing arrives, before it checks by itself that
/// its leader's member is still heard from: anything that needs the group (a proposal, a read, a
/// Raft message, the transport's word that the leader's member fell silent) wakes it first.
const QUIET_WAIT: Duration = Duration::from_secs(10);

/// Where the answer to one proposal goes.
type Reply<O> = oneshot::Sender<Result<O, RaftError>>;

/// A proposal waiting for the driver's next flush: its data and where its answer goes.
type QueuedProposal<O> = (Vec<u8>, Reply<O>);

/// Work sent to a group's thread.
pub(crate) enum GroupMsg<O> {
    Propose {
        data: Vec<u8>,
        reply: Reply<O>,
        /// Whether the group's leader stamps it, once the group stamps its writes; false for
        /// commands that write no revision and must not wait for the oracle (its own ceiling).
        stamp: bool,
    },
    /// Proposals stamped with the revisions from `first_stamp` on, taken while this member led
    /// in `term` (0: it did not lead, and nothing was taken) ([`crate::stamping`]).
    ProposeStamped {
        batch: Vec<StampItem<O>>,
        first_stamp: i64,
        term: u64,
    },
    ProposeConfChange {
        change: ConfChangeV2,
        reply: Reply<O>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<u64, RaftError>>,
    },
    SnapshotSent {
        to: u64,
        ok: bool,
    },
    Step(Message),
    Unreachable(u64),
    /// Nothing came from this member for a while ([`crate::hibernation`]).
    PeerSilent(u64),
    TransferLeader(u64),
    Campaign,
    Stop,
}

/// etcd's default `--experimental-warning-apply-duration`: apply batches this slow are logged.
pub const DEFAULT_WARNING_APPLY_DURATION: Duration = Duration::from_millis(100);
/// A Raft log write slower than this is logged (etcd warns at 1 s).
const SLOW_LOG_WRITE: Duration = Duration::from_secs(1);
/// Bytes of entries the log may gather before its front is dropped, whatever `snapshot_count`
/// says: 100,000 entries of 1.5 MiB (etcd's defaults) would be 150 GiB, and a client allowed
/// to write, compact and defragment could fill the disk with them. Past this, the log is
/// truncated at the applied (and durable) index without catch-up entries: a lagging follower
/// then catches up from a snapshot.
const MAX_LOG_BYTES: u64 = 1 << 30;

/// What the driver publishes for callers after every loop. The leader and
/// term sit in atomics because every request reads them.
pub(crate) struct SharedStatus {
    full: RwLock<GroupStatus>,
    pub leader_id: AtomicU64,
    term: AtomicU64,
    /// What the group takes in ([`crate::admission`]).
    admission: Arc<crate::admission::Admission>,
    /// This member's role and the term it holds it in; changes wake watchers.
    pub role: watch::Sender<(Role, u64)>,
    /// The leader this member knows of (0: none); changes wake watchers.
    leader: watch::Sender<u64>,
    /// Why the driver stopped on a local fault; `None` while it runs (see [`Fault`]).
    fault: watch::Sender<Option<String>>,
}

/// The caller's side of a group: cheap to clone, usable from async code.
pub struct RaftHandle<O> {
    group_id: u64,
    member_id: u64,
    mailbox: Sender<GroupMsg<O>>,
    applied: watch::Receiver<u64>,
    status: Arc<SharedStatus>,
    request_timeout: Duration,
    /// The queue of the group's read task ([`crate::read_loop`]), shared by every clone.
    reads: Arc<ReadQueue>,
    /// The group's stamping task, once its writes are stamped with global revisions.
    stamps: Arc<StampQueue<O>>,
}

impl<O> Clone for RaftHandle<O> {
    fn clone(&self) -> Self {
        RaftHandle {
            group_id: self.group_id,
            member_id: self.member_id,
            mailbox: self.mailbox.clone(),
            applied: self.applied.clone(),
            status: self.status.clone(),
            request_timeout: self.request_timeout,
            reads: self.reads.clone(),
            stamps: self.stamps.clone(),
        }
    }
}

impl<O: Send + 'static> RaftHandle<O> {
    /// The group this handle drives.
    pub fn group_id(&self) -> u64 {
        self.group_id
    }

    /// A copy of the group's state as of the driver's last loop.
    pub fn status(&self) -> GroupStatus {
        self.status.full.read().expect("status lock poisoned").clone()
    }

    /// The leader this member knows of, 0 when none.
    pub fn leader_id(&self) -> u64 {
        self.status.leader_id.load(Ordering::Relaxed)
    }

    /// The current Raft term as this member sees it.
    pub fn term(&self) -> u64 {
        self.status.term.load(Ordering::Relaxed)
    }

    /// Follows this member's role (and the term it holds it in), for work
    /// that only the leader does, such as expiring leases.
    pub fn watch_role(&self) -> watch::Receiver<(Role, u64)> {
        self.status.role.subscribe()
    }

    /// Follows the leader this member knows of (0 while it knows none), for
    /// callers that wait for leadership to move, such as a leader transfer.
    pub fn watch_leader(&self) -> watch::Receiver<u64> {
        self.status.leader.subscribe()
    }

    /// Resolves, with the reason, once the group's driver has stopped on a fault of this member's
    /// own storage. The member then stops too: the library reports the fault, and what to do
    /// about the process (etcd exits) is the binary's choice.
    pub async fn failed(&self) -> String {
        let mut fault = self.status.fault.subscribe();
        let waited = fault
            .wait_for(Option::is_some)
            .await
            .map(|reason| reason.clone().unwrap_or_default());
        match waited {
            Ok(reason) => reason,
            // The sender lives in the status this handle holds, so it outlives the wait.
            Err(_) => std::future::pending().await,
        }
    }

    /// Replicates `data` through the group and returns what the state machine
    /// answered once this member has applied it. Once the group stamps its writes
    /// ([`RaftHandle::stamp_with`]), its leader stamps it.
    pub async fn propose(&self, data: Vec<u8>) -> Result<O, RaftError> {
        self.propose_stamped_or_not(data, true).await
    }

    /// Replicates `data`, which writes no revision (the revision oracle's own ceiling), without a
    /// stamp even once the group stamps its writes.
    pub async fn propose_unstamped(&self, data: Vec<u8>) -> Result<O, RaftError> {
        self.propose_stamped_or_not(data, false).await
    }

    async fn propose_stamped_or_not(&self, data: Vec<u8>, stamp: bool) -> Result<O, RaftError> {
        if self.leader_id() == 0 {
            return Err(RaftError::NoLeader);
        }
        // Held until the answer comes or the caller gives up: the bytes count as in flight.
        let _admitted = self.status.admission.admit(data.len())?;
        let (reply, rx) = oneshot::channel();
        self.send(GroupMsg::Propose { data, reply, stamp })?;
        self.await_reply(rx).await
    }

    /// From now on, the group's leader stamps every proposal with global revisions taken from
    /// `source` (multi-shard mode; see [`crate::stamping`]). Set once; later calls are ignored.
    /// Call it from inside the tokio runtime, before the group takes client writes.
    pub fn stamp_with(&self, source: Arc<dyn RevisionSource>) {
        let role = self.status.role.subscribe();
        self.stamps
            .get_or_init(|| crate::stamping::start(source, self.mailbox.clone(), role));
    }

    /// Whether the group's writes are stamped with global revisions ([`stamp_with`](Self::stamp_with)).
    pub fn is_stamped(&self) -> bool {
        self.stamps.get().is_some()
    }

    async fn await_reply(&self, rx: oneshot::Receiver<Result<O, RaftError>>) -> Result<O, RaftError> {
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RaftError::Stopped),
            Err(_) => Err(RaftError::Timeout),
        }
    }

    /// Replicates a configuration change (adding, promoting or removing
    /// members) and returns the state machine's answer once it is applied here.
    pub async fn propose_conf_change(&self, change: ConfChangeV2) -> Result<O, RaftError> {
        if self.leader_id() == 0 {
            return Err(RaftError::NoLeader);
        }
        let (reply, rx) = oneshot::channel();
        self.send(GroupMsg::ProposeConfChange { change, reply })?;
        self.await_reply(rx).await
    }

    /// Tells the group whether a snapshot reached `to`.
    pub fn report_snapshot(&self, to: u64, ok: bool) {
        let _ = self.mailbox.send(GroupMsg::SnapshotSent { to, ok });
    }

    /// A linearizable read barrier (Raft's ReadIndex): returns once this
    /// member has applied everything the leader had committed when the call
    /// began, so a local read afterwards sees every acknowledged write. Reads
    /// reach the driver in batches ([`crate::read_loop`]).
    pub async fn read_barrier(&self) -> Result<(), RaftError> {
        if self.leader_id() == 0 {
            return Err(RaftError::NoLeader);
        }
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let queue = self
            .reads
            .get_or_init(|| read_loop::start(self.mailbox.clone(), self.applied.clone(), self.request_timeout));
        let (waiter, answer) = oneshot::channel();
        queue.send(waiter).map_err(|_| RaftError::Stopped)?;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RaftError::Stopped),
            Err(_) => Err(RaftError::Timeout),
        }
    }

    /// Starts an election (a pre-vote first) unless the group knows a leader: a shard's group
    /// born of a split elects one at once this way, instead of after an election timeout.
    pub fn campaign(&self) -> Result<(), RaftError> {
        self.send(GroupMsg::Campaign)
    }

    /// Whether the group never had a leader that this member knows of: it was just made (by a
    /// split, or at a cluster's start) and has not finished its first election.
    pub fn is_newborn(&self) -> bool {
        self.leader_id() == 0 && self.term() <= crate::log_store::INITIAL_TERM + 1
    }

    /// Asks the leader to hand leadership to `member_id`.
    pub fn transfer_leader(&self, member_id: u64) -> Result<(), RaftError> {
        self.send(GroupMsg::TransferLeader(member_id))
    }

    /// Hands a message that arrived from a peer to the group.
    pub fn step(&self, msg: Message) {
        let _ = self.mailbox.send(GroupMsg::Step(msg));
    }

    /// Tells the group that a peer could not be reached, so the leader probes
    /// it gently instead of streaming entries into the void.
    pub fn report_unreachable(&self, member_id: u64) {
        let _ = self.mailbox.send(GroupMsg::Unreachable(member_id));
    }

    /// Tells the group that nothing came from `member_id` for a while: a quiet group led by it
    /// wakes ([`crate::hibernation`]).
    pub fn report_silent(&self, member_id: u64) {
        let _ = self.mailbox.send(GroupMsg::PeerSilent(member_id));
    }

    /// Stops the driver thread after it finishes the loop it is in.
    pub fn stop(&self) {
        let _ = self.mailbox.send(GroupMsg::Stop);
    }

    fn send(&self, msg: GroupMsg<O>) -> Result<(), RaftError> {
        self.mailbox.send(msg).map_err(|_| RaftError::Stopped)
    }
}

/// Starts a group's driver thread and returns its handle and join handle.
pub fn start_group<S: StateMachine>(
    cfg: GroupConfig,
    engine: Arc<Engine>,
    state_machine: S,
    sink: Arc<dyn MessageSink>,
) -> Result<(RaftHandle<S::Output>, JoinHandle<()>), RaftError> {
    std::fs::create_dir_all(&cfg.snapshot_dir).map_err(|e| RaftError::Io(e.to_string()))?;
    let snapshots = Arc::new(SnapshotSlot::default());
    let mut store = LogStore::open(engine, cfg.group_id, snapshots.clone()).map_err(RaftError::log)?;
    store.prepare_encryption(cfg.sealer.clone())?;
    // A founding member starts the group; a joining member starts empty and
    // learns everything from the leader's snapshot.
    if !store.is_initialized() && !cfg.initial_voters.is_empty() && store.truncated_index() == 0 {
        let mut batch = LogBatch::default();
        store.stage_bootstrap(&mut batch, cfg.initial_voters.clone());
        store.write(&mut batch, true).map_err(RaftError::log)?;
    }
    let applied = state_machine.applied_index();
    let applied = applied.max(store.truncated_index());
    if applied > store.hard_state().commit {
        // Applied entries were committed; the commit index in the hard state
        // is only written lazily, so it may lag behind after a crash.
        let mut batch = LogBatch::default();
        store.stage_commit(&mut batch, applied);
        store.write(&mut batch, true).map_err(RaftError::log)?;
    }
    let raft_cfg = raft::Config {
        id: cfg.member_id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: 1,
        applied,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        ..Default::default()
    };
    raft_cfg.validate().map_err(RaftError::raft)?;
    let logger = crate::logging::raft_logger(cfg.group_id, cfg.member_id);
    let raw = RawNode::new(&raft_cfg, store, &logger).map_err(RaftError::raft)?;

    let (mailbox, inbox) = crossbeam_channel::unbounded();
    let (applied_tx, applied_rx) = watch::channel(applied);
    let status = Arc::new(SharedStatus {
        full: RwLock::new(GroupStatus {
            group_id: cfg.group_id,
            member_id: cfg.member_id,
            applied_index: applied,
            ..Default::default()
        }),
        leader_id: AtomicU64::new(0),
        term: AtomicU64::new(0),
        admission: crate::admission::Admission::new(cfg.max_pending_proposal_bytes),
        role: watch::channel((Role::Follower, 0)).0,
        leader: watch::channel(0).0,
        fault: watch::channel(None).0,
    });
    let stamps: Arc<StampQueue<S::Output>> = Arc::default();
    let handle = RaftHandle {
        group_id: cfg.group_id,
        member_id: cfg.member_id,
        mailbox,
        applied: applied_rx,
        status: status.clone(),
        request_timeout: cfg.request_timeout,
        reads: Arc::default(),
        stamps: stamps.clone(),
    };
    let mut driver = Driver {
        snapshots,
        building: None,
        last_conf_change: 0,
        log_bytes: 0,
        next_request_id: initial_request_id(),
        next_read_ctx: 1,
        pending_proposals: HashMap::new(),
        queued_proposals: Vec::new(),
        queued_stamped: Vec::new(),
        stamps,
        queued_reads: Vec::new(),
        inflight_reads: HashMap::new(),
        raw,
        sm: state_machine,
        sink,
        applied_tx,
        status,
        hibernation: Hibernation::new(cfg.hibernate),
        cfg,
    };
    let join = std::thread::Builder::new()
        .name(format!("raft-group-{}", driver.cfg.group_id))
        .spawn(move || driver.run(inbox))
        .map_err(|e| RaftError::Io(e.to_string()))?;
    Ok((handle, join))
}

/// Request ids start at the wall clock in nanoseconds so that ids issued
/// before a restart are not reused for new requests after it.
fn initial_request_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// Reads that share one ReadIndex round trip.
struct ReadBatch {
    waiters: Vec<oneshot::Sender<Result<u64, RaftError>>>,
    started: Instant,
    last_sent: Instant,
}

type BuildResult = Result<BuiltSnapshot, Box<dyn std::error::Error + Send + Sync>>;

struct Driver<S: StateMachine> {
    snapshots: Arc<SnapshotSlot>,
    /// A snapshot build in progress.
    building: Option<JoinHandle<BuildResult>>,
    /// The index of the last configuration change applied.
    last_conf_change: u64,
    /// Bytes of entry data appended since the log was last truncated (see [`MAX_LOG_BYTES`]).
    log_bytes: u64,
    cfg: GroupConfig,
    raw: RawNode<LogStore>,
    sm: S,
    sink: Arc<dyn MessageSink>,
    next_request_id: u64,
    next_read_ctx: u64,
    pending_proposals: HashMap<u64, Reply<S::Output>>,
    /// Proposals received since the last Ready, proposed together by [`Driver::flush_proposals`].
    queued_proposals: Vec<QueuedProposal<S::Output>>,
    /// Proposals received since the last Ready that the leader stamps, once the group stamps.
    queued_stamped: Vec<QueuedProposal<S::Output>>,
    /// The group's stamping task, once its writes are stamped ([`crate::stamping`]).
    stamps: Arc<StampQueue<S::Output>>,
    queued_reads: Vec<oneshot::Sender<Result<u64, RaftError>>>,
    inflight_reads: HashMap<u64, ReadBatch>,
    applied_tx: watch::Sender<u64>,
    status: Arc<SharedStatus>,
    /// Whether the group ticks now ([`crate::hibernation`]).
    hibernation: Hibernation,
}

impl<S: StateMachine> Driver<S> {
    fn run(&mut self, inbox: Receiver<GroupMsg<S::Output>>) {
        if let Err(Fault(reason)) = self.serve(&inbox) {
            tracing::error!(group = self.cfg.group_id, "{reason}; the group stops");
            self.status.fault.send_replace(Some(reason));
        }
        self.shutdown();
    }

    /// The driver's loop: returns when the group is asked to stop, or with the local fault that
    /// stopped it.
    fn serve(&mut self, inbox: &Receiver<GroupMsg<S::Output>>) -> Result<(), Fault> {
        let mut next_tick = Instant::now() + self.cfg.tick_interval;
        let election_timeout = self.cfg.tick_interval * self.cfg.election_ticks as u32;
        loop {
            let wait = match self.hibernation.is_quiet() {
                // Whatever needs a quiet group sends it something, the transport included when
                // its leader's member falls silent.
                true => QUIET_WAIT,
                false => next_tick.saturating_duration_since(Instant::now()),
            };
            match inbox.recv_timeout(wait) {
                Ok(msg) => {
                    if !self.receive(msg) {
                        return Ok(());
                    }
                    // Drain whatever else is queued so that one Ready (and
                    // one fsync) covers all of it: this is the group commit.
                    while let Ok(msg) = inbox.try_recv() {
                        if !self.receive(msg) {
                            self.flush_proposals();
                            return self.on_ready();
                        }
                    }
                    self.flush_proposals();
                }
                Err(RecvTimeoutError::Timeout) if self.hibernation.is_quiet() => {
                    if self.leader_heard_within(election_timeout) {
                        // Still quiet: nothing happened, so there is nothing to do.
                        continue;
                    }
                    self.wake_up();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if self.hibernation.is_quiet() {
                // Waking starts a fresh tick.
                next_tick = Instant::now() + self.cfg.tick_interval;
            } else if Instant::now() >= next_tick {
                self.raw.tick();
                self.on_tick();
                self.maybe_hibernate();
                next_tick = Instant::now() + self.cfg.tick_interval;
            }
            self.issue_reads();
            self.on_ready()?;
            // Reads that waited for a round this Ready finished go out now, not at the next
            // message or tick.
            if self.issue_reads() {
                self.on_ready()?;
            }
            self.manage_snapshots()?;
            self.publish_status();
        }
    }

    /// Takes a hibernation hint out, or wakes a quiet group for anything else and handles it.
    /// Returns false when the group must stop.
    fn receive(&mut self, msg: GroupMsg<S::Output>) -> bool {
        if let GroupMsg::Step(m) = &msg {
            if let Some(hint) = Hint::of(m) {
                self.on_hint(hint, m.from);
                return true;
            }
        }
        if let GroupMsg::PeerSilent(member) = msg {
            if self.hibernation.is_quiet() && self.raw.raft.leader_id == member {
                self.wake_up();
            }
            return true;
        }
        if self.hibernation.is_quiet() && !self.keeps_quiet(&msg) {
            self.wake_up();
        }
        self.handle(msg)
    }

    /// Whether `msg` leaves a quiet group quiet: a heartbeat of its leader, or the answer to
    /// one (the leader's last tick sent them, or it woke to confirm a read), which raft-rs
    /// handles as usual.
    fn keeps_quiet(&self, msg: &GroupMsg<S::Output>) -> bool {
        let GroupMsg::Step(m) = msg else {
            return false;
        };
        let raft = &self.raw.raft;
        match m.get_msg_type() {
            MessageType::MsgHeartbeat => m.term == raft.term && m.from == raft.leader_id,
            MessageType::MsgHeartbeatResponse => m.term == raft.term && raft.state == StateRole::Leader,
            _ => false,
        }
    }

    fn on_hint(&mut self, hint: Hint, from: u64) {
        let raft = &self.raw.raft;
        match hint {
            Hint::Hibernate {
                term,
                last_index,
                commit,
            } => {
                let agrees = raft.state == StateRole::Follower
                    && raft.leader_id == from
                    && raft.term == term
                    && raft.raft_log.last_index() == last_index
                    && raft.raft_log.committed == commit;
                if agrees && self.hibernation.sleep() {
                    crate::metrics::HIBERNATING_GROUPS.inc();
                }
            }
            Hint::Wake => {
                if self.hibernation.is_quiet() {
                    self.wake_up();
                }
            }
        }
    }

    /// Ticks again; a follower tells its leader to do the same.
    fn wake_up(&mut self) {
        if !self.hibernation.wake() {
            return;
        }
        crate::metrics::HIBERNATING_GROUPS.dec();
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader && raft.leader_id != 0 && raft.leader_id != raft.id {
            let wake = Hint::Wake.to_message(raft.id, raft.leader_id, raft.term);
            self.sink.send(self.cfg.group_id, vec![wake]);
        }
    }

    /// Whether a quiet follower's leader is still heard from (its member sends something at
    /// least every `within`).
    fn leader_heard_within(&self, within: Duration) -> bool {
        let leader = self.raw.raft.leader_id;
        leader != 0 && (leader == self.raw.raft.id || self.sink.heard_from(leader, within))
    }

    /// After a tick: a leader whose group has been idle long enough, and whose followers all
    /// hold its whole log, tells them and stops ticking ([`crate::hibernation`]).
    fn maybe_hibernate(&mut self) {
        let raft = &self.raw.raft;
        let now = Progress {
            term: raft.term,
            last_index: raft.raft_log.last_index(),
            commit: raft.raft_log.committed,
            applied: raft.raft_log.applied,
        };
        let busy = !self.pending_proposals.is_empty()
            || !self.queued_proposals.is_empty()
            || !self.queued_stamped.is_empty()
            || !self.queued_reads.is_empty()
            || !self.inflight_reads.is_empty();
        let after = IDLE_TICKS_BEFORE * self.cfg.election_ticks;
        if !self.hibernation.on_tick(now, busy, after) {
            return;
        }
        let settled = raft.state == StateRole::Leader
            && raft.lead_transferee.is_none()
            && !raft.has_pending_conf()
            && now.commit == now.last_index
            && now.applied == now.commit;
        let caught_up = raft
            .prs()
            .iter()
            .all(|(id, pr)| *id == raft.id || pr.matched == now.last_index);
        if !settled || !caught_up {
            return;
        }
        let hint = Hint::Hibernate {
            term: now.term,
            last_index: now.last_index,
            commit: now.commit,
        };
        let hints: Vec<_> = raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != raft.id)
            .map(|(id, _)| hint.to_message(raft.id, *id, now.term))
            .collect();
        self.sink.send(self.cfg.group_id, hints);
        if self.hibernation.sleep() {
            crate::metrics::HIBERNATING_GROUPS.inc();
        }
    }

    /// Returns false when the group must stop.
    fn handle(&mut self, msg: GroupMsg<S::Output>) -> bool {
        match msg {
            GroupMsg::Propose { data, reply, stamp } => match stamp && self.stamps.get().is_some() {
                true => self.queued_stamped.push((data, reply)),
                false => self.queued_proposals.push((data, reply)),
            },
            GroupMsg::ProposeStamped {
                batch,
                first_stamp,
                term,
            } => self.propose_stamped(batch, first_stamp, term),
            GroupMsg::ProposeConfChange { change, reply } => self.propose_conf_change(change, reply),
            GroupMsg::ReadIndex { reply } => self.queued_reads.push(reply),
            GroupMsg::SnapshotSent { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            GroupMsg::Step(m) if self.stamps_forwarded(&m) => self.stamp_forwarded(m),
            GroupMsg::Step(m) => {
                if let Err(e) = self.raw.step(m) {
                    tracing::debug!(group = self.cfg.group_id, "dropping raft message: {e}");
                }
            }
            GroupMsg::Unreachable(peer) => self.raw.report_unreachable(peer),
            // Taken care of in `receive`.
            GroupMsg::PeerSilent(_) => {}
            GroupMsg::TransferLeader(to) => self.raw.transfer_leader(to),
            GroupMsg::Campaign => {
                if self.raw.raft.leader_id == 0 {
                    let _ = self.raw.campaign();
                }
            }
            GroupMsg::Stop => return false,
        }
        true
    }

    /// Proposes everything queued since the last call: a lone proposal as its own entry, more
    /// in batch entries (see [`crate::proposal_batch`]).
    fn flush_proposals(&mut self) {
        if !self.queued_stamped.is_empty() {
            let stamped = std::mem::take(&mut self.queued_stamped);
            if self.raw.raft.state == StateRole::Leader {
                for (data, reply) in stamped {
                    self.route_for_stamping(StampItem {
                        data,
                        origin: Origin::Local(reply),
                    });
                }
            } else {
                // A follower proposes as usual: raft-rs forwards to the leader, which stamps.
                self.queued_proposals.extend(stamped);
            }
        }
        let mut queued = std::mem::take(&mut self.queued_proposals).into_iter().peekable();
        while let Some((data, reply)) = queued.next() {
            let mut bytes = data.len();
            let mut batch = vec![(data, reply)];
            while let Some((next, _)) = queued.peek() {
                if batch.len() >= proposal_batch::MAX_COMMANDS || bytes + next.len() > proposal_batch::MAX_BYTES {
                    break;
                }
                bytes += next.len();
                batch.extend(queued.next());
            }
            if batch.len() == 1 {
                let (data, reply) = batch.pop().expect("one proposal");
                self.submit(reply, |raw, ctx| raw.propose(ctx, data));
            } else {
                self.submit_batch(batch, bytes);
            }
        }
    }

    /// Proposes `batch` (with `bytes` of data in all) as one entry.
    fn submit_batch(&mut self, batch: Vec<QueuedProposal<S::Output>>, bytes: usize) {
        let refuse = |batch: Vec<QueuedProposal<S::Output>>, err: RaftError| {
            for (_, reply) in batch {
                let _ = reply.send(Err(err.clone()));
            }
        };
        if self.raw.raft.leader_id == 0 {
            return refuse(batch, RaftError::NoLeader);
        }
        let first_request = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(batch.len() as u64);
        let proposer = Proposer {
            member: self.cfg.member_id,
            first_request,
            count: batch.len() as u32,
        };
        let data = proposal_batch::encode(batch.iter().map(|(data, _)| data.as_slice()), bytes + 4 * batch.len());
        match self.raw.propose(proposer.encode(), data) {
            Ok(()) => {
                for (i, (_, reply)) in batch.into_iter().enumerate() {
                    self.pending_proposals
                        .insert(first_request.wrapping_add(i as u64), reply);
                }
            }
            Err(raft::Error::ProposalDropped) => refuse(batch, RaftError::ProposalDropped),
            Err(e) => refuse(batch, RaftError::raft(e)),
        }
    }

    /// Proposes a stamped batch as one entry if this member still leads in the term the stamps
    /// were taken in: in a later term another leader may have handed out higher revisions, and
    /// the entry must not land after its writes. Otherwise each proposal goes round again.
    fn propose_stamped(&mut self, batch: Vec<StampItem<S::Output>>, first_stamp: i64, term: u64) {
        if term == 0 || self.raw.raft.state != StateRole::Leader || self.raw.raft.term != term {
            for item in batch {
                self.route_for_stamping(item);
            }
            return;
        }
        let mut origins = Vec::with_capacity(batch.len());
        let mut locals = Vec::new();
        let mut datas = Vec::with_capacity(batch.len());
        for item in batch {
            match item.origin {
                Origin::Local(reply) => {
                    let request = self.next_request_id;
                    self.next_request_id = self.next_request_id.wrapping_add(1);
                    origins.push((self.cfg.member_id, request));
                    locals.push((request, reply));
                }
                Origin::Remote { member, request } => origins.push((member, request)),
            }
            datas.push(item.data);
        }
        let data = match datas.as_mut_slice() {
            [one] => std::mem::take(one),
            _ => {
                let bytes = datas.iter().map(|data| data.len() + 4).sum();
                proposal_batch::encode(datas.iter().map(Vec::as_slice), bytes)
            }
        };
        let context = Stamped { first_stamp, origins }.encode();
        let err = match self.raw.propose(context, data) {
            Ok(()) => {
                self.pending_proposals.extend(locals);
                return;
            }
            Err(raft::Error::ProposalDropped) => RaftError::ProposalDropped,
            Err(e) => RaftError::raft(e),
        };
        for (_, reply) in locals {
            let _ = reply.send(Err(err.clone()));
        }
    }

    /// Sends a proposal of a stamping group where it can be stamped: to the stamping task while
    /// this member leads; else a local one is proposed as a follower proposes (raft-rs forwards
    /// it to the leader), and a remote one is forwarded on under its proposer's request id.
    fn route_for_stamping(&mut self, item: StampItem<S::Output>) {
        let leads = self.raw.raft.state == StateRole::Leader;
        match (leads, self.stamps.get()) {
            (true, Some(queue)) => {
                if let Err(undelivered) = queue.send(item) {
                    undelivered.0.refuse(RaftError::Stopped);
                }
            }
            _ => match item.origin {
                Origin::Local(reply) => self.queued_proposals.push((item.data, reply)),
                Origin::Remote { member, request } => {
                    let context = Proposer {
                        member,
                        first_request: request,
                        count: 1,
                    }
                    .encode();
                    if let Err(e) = self.raw.propose(context, item.data) {
                        tracing::debug!(group = self.cfg.group_id, "dropping a forwarded proposal: {e}");
                    }
                }
            },
        }
    }

    /// Whether `m` carries proposals a follower forwarded that this member must stamp before
    /// they enter the log: it leads a stamping group, and they are all normal entries.
    fn stamps_forwarded(&self, m: &Message) -> bool {
        m.get_msg_type() == MessageType::MsgPropose
            && self.stamps.get().is_some()
            && self.raw.raft.state == StateRole::Leader
            && m.entries.iter().all(|e| e.get_entry_type() == EntryType::EntryNormal)
    }

    /// Hands the proposals a follower forwarded to the stamping task, each under the member and
    /// request id that wait for it.
    fn stamp_forwarded(&mut self, m: Message) {
        for entry in m.entries {
            let Some(proposer) = Proposer::decode(&entry.context) else {
                if let Some(stamped) = Stamped::decode(&entry.context) {
                    // Stamped by a leader that lost its term, forwarded on: stamped again here.
                    let count = stamped.origins.len() as u32;
                    let proposals = match count {
                        1 => Some(vec![&entry.data[..]]),
                        _ => proposal_batch::decode(&entry.data, count),
                    };
                    for (data, (member, request)) in proposals.unwrap_or_default().into_iter().zip(stamped.origins) {
                        self.route_for_stamping(StampItem {
                            data: data.to_vec(),
                            origin: Origin::Remote { member, request },
                        });
                    }
                }
                continue;
            };
            let proposals = match proposer.is_batch() {
                true => proposal_batch::decode(&entry.data, proposer.count).unwrap_or_default(),
                false => vec![&entry.data[..]],
            };
            for (i, data) in proposals.into_iter().enumerate() {
                self.route_for_stamping(StampItem {
                    data: data.to_vec(),
                    origin: Origin::Remote {
                        member: proposer.member,
                        request: proposer.first_request.wrapping_add(i as u64),
                    },
                });
            }
        }
    }

    fn propose_conf_change(&mut self, change: ConfChangeV2, reply: Reply<S::Output>) {
        self.submit(reply, |raw, ctx| raw.propose_conf_change(ctx, change));
    }

    /// Hands a proposal to raft-rs under a fresh request id, and remembers
    /// who waits for it.
    fn submit(
        &mut self,
        reply: Reply<S::Output>,
        propose: impl FnOnce(&mut RawNode<LogStore>, Vec<u8>) -> raft::Result<()>,
    ) {
        if self.raw.raft.leader_id == 0 {
            let _ = reply.send(Err(RaftError::NoLeader));
            return;
        }
        let request_id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        let ctx = Proposer {
            member: self.cfg.member_id,
            first_request: request_id,
            count: 1,
        }
        .encode();
        match propose(&mut self.raw, ctx) {
            Ok(()) => {
                self.pending_proposals.insert(request_id, reply);
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(RaftError::ProposalDropped));
            }
            Err(e) => {
                let _ = reply.send(Err(RaftError::raft(e)));
            }
        }
    }

    fn on_tick(&mut self) {
        // Callers that gave up (timed out or went away) no longer need an answer.
        self.pending_proposals.retain(|_, reply| !reply.is_closed());
        let now = Instant::now();
        let resend_after = self.cfg.tick_interval * 3;
        let leaderless = self.raw.raft.leader_id == 0;
        let mut expired = Vec::new();
        for (ctx, batch) in self.inflight_reads.iter_mut() {
            if leaderless || now.duration_since(batch.started) >= self.cfg.request_timeout {
                expired.push(*ctx);
            } else if now.duration_since(batch.last_sent) >= resend_after {
                // raft-rs drops a ReadIndex silently when, say, the leader has
                // not yet committed in its term; asking again is safe.
                batch.last_sent = now;
                self.raw.read_index(ctx.to_be_bytes().to_vec());
            }
        }
        for ctx in expired {
            if let Some(batch) = self.inflight_reads.remove(&ctx) {
                let err = if leaderless {
                    RaftError::NoLeader
                } else {
                    RaftError::Timeout
                };
                for w in batch.waiters {
                    let _ = w.send(Err(err.clone()));
                }
            }
        }
    }

    /// Sends all reads queued since the last round as one ReadIndex request; returns whether
    /// it sent one.
    fn issue_reads(&mut self) -> bool {
        if self.queued_reads.is_empty() {
            return false;
        }
        // One round out at a time, as etcd's read loop does: reads that arrive meanwhile wait
        // for the next round, so under load each round serves many reads. A round out for
        // longer than a tick (raft-rs may have dropped it; `on_tick` asks again) does not hold
        // the next one back.
        let now = Instant::now();
        if self
            .inflight_reads
            .values()
            .any(|b| now.duration_since(b.started) < self.cfg.tick_interval)
        {
            return false;
        }
        let waiters = std::mem::take(&mut self.queued_reads);
        if self.raw.raft.leader_id == 0 {
            for w in waiters {
                let _ = w.send(Err(RaftError::NoLeader));
            }
            return false;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.inflight_reads.insert(
            ctx,
            ReadBatch {
                waiters,
                started: now,
                last_sent: now,
            },
        );
        self.raw.read_index(ctx.to_be_bytes().to_vec());
        true
    }

    fn on_ready(&mut self) -> Result<(), Fault> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        // A leader may send before persisting (Raft thesis 10.2.1); the
        // entries are durable locally before it counts itself in a quorum.
        self.sink.send(self.cfg.group_id, rd.take_messages());
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            self.install_snapshot(&snap)?;
        }
        self.apply(rd.take_committed_entries())?;

        let mut batch = LogBatch::default();
        self.log_bytes += rd.entries().iter().map(|e| e.data.len() as u64).sum::<u64>();
        let store = self.raw.mut_store();
        store.stage_entries(&mut batch, rd.entries());
        if let Some(hs) = rd.hs() {
            store.stage_hard_state(&mut batch, hs.clone());
        }
        let started = Instant::now();
        store
            .write(&mut batch, rd.must_sync())
            .map_err(|e| Fault(format!("cannot persist the raft log: {e}")))?;
        let took = started.elapsed();
        if took >= SLOW_LOG_WRITE {
            // etcd's "slow fdatasync": the disk holds up every write of the group.
            tracing::warn!(group = self.cfg.group_id, ?took, "slow raft log fsync");
        }
        self.sink.send(self.cfg.group_id, rd.take_persisted_messages());
        self.answer_reads(rd.take_read_states());

        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            let mut batch = LogBatch::default();
            let store = self.raw.mut_store();
            store.stage_commit(&mut batch, commit);
            store
                .write(&mut batch, false)
                .map_err(|e| Fault(format!("cannot persist the commit index: {e}")))?;
        }
        self.sink.send(self.cfg.group_id, light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        Ok(())
    }

    fn answer_reads(&mut self, states: Vec<raft::ReadState>) {
        for rs in states {
            let Ok(bytes) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            if let Some(batch) = self.inflight_reads.remove(&u64::from_be_bytes(bytes)) {
                for w in batch.waiters {
                    let _ = w.send(Ok(rs.index));
                }
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Fault> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(());
        };
        let mut commands = Vec::with_capacity(entries.len());
        // Which of `commands` this member proposed, and as which request.
        let mut waiting: HashMap<usize, u64> = HashMap::new();
        for entry in &entries {
            if entry.get_entry_type() == EntryType::EntryNormal {
                if let Some(stamped) = Stamped::decode(&entry.context) {
                    self.collect_stamped(entry, stamped, &mut commands, &mut waiting);
                    continue;
                }
            }
            let proposer = Proposer::decode(&entry.context);
            let mine = proposer.filter(|p| p.member == self.cfg.member_id);
            match entry.get_entry_type() {
                EntryType::EntryNormal => match proposer.filter(|p| p.is_batch()) {
                    Some(batch) => {
                        let Some(proposals) = proposal_batch::decode(&entry.data, batch.count) else {
                            // Every member reads the same bytes: each applies the entry as
                            // nothing, and the proposer's callers get an error.
                            tracing::warn!(
                                group = self.cfg.group_id,
                                index = entry.index,
                                "malformed batch of proposals; applied as nothing"
                            );
                            if let Some(p) = mine {
                                self.refuse_malformed_batch(p);
                            }
                            commands.push(Committed {
                                index: entry.index,
                                data: &[],
                                conf_change: None,
                                stamp: None,
                            });
                            continue;
                        };
                        for (i, data) in proposals.into_iter().enumerate() {
                            if let Some(p) = mine {
                                waiting.insert(commands.len(), p.first_request.wrapping_add(i as u64));
                            }
                            commands.push(Committed {
                                index: entry.index,
                                data,
                                conf_change: None,
                                stamp: None,
                            });
                        }
                    }
                    None => {
                        if let Some(p) = mine {
                            waiting.insert(commands.len(), p.first_request);
                        }
                        commands.push(Committed {
                            index: entry.index,
                            data: &entry.data,
                            conf_change: None,
                            stamp: None,
                        });
                    }
                },
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    if let Some(p) = mine {
                        waiting.insert(commands.len(), p.first_request);
                    }
                    let conf_change = self.apply_conf_change(entry)?;
                    commands.push(Committed {
                        index: entry.index,
                        data: &[],
                        conf_change,
                        stamp: None,
                    });
                }
            }
        }
        let started = Instant::now();
        let outputs = self
            .sm
            .apply(&commands)
            .map_err(|e| Fault(format!("cannot apply committed entries: {e}")))?;
        let took = started.elapsed();
        if took >= self.cfg.warning_apply_duration {
            // etcd's "apply request took too long": every request behind this batch waited.
            tracing::warn!(
                group = self.cfg.group_id,
                entries = commands.len(),
                ?took,
                "apply took too long"
            );
        }
        for (position, output) in outputs {
            if let Some(request) = waiting.remove(&position) {
                if let Some(reply) = self.pending_proposals.remove(&request) {
                    let _ = reply.send(Ok(output));
                }
            }
        }
        self.applied_tx.send_replace(last);
        Ok(())
    }

    /// Adds the proposals of a stamped entry to `commands`, each with its revision, noting in
    /// `waiting` those this member proposed. A batch that does not decode is applied as nothing
    /// (every member reads the same bytes), and this member's callers get an error.
    fn collect_stamped<'e>(
        &mut self,
        entry: &'e Entry,
        stamped: Stamped,
        commands: &mut Vec<Committed<'e>>,
        waiting: &mut HashMap<usize, u64>,
    ) {
        let count = stamped.origins.len() as u32;
        let proposals = match count {
            1 => Some(vec![&entry.data[..]]),
            _ => proposal_batch::decode(&entry.data, count),
        };
        let Some(proposals) = proposals else {
            tracing::warn!(
                group = self.cfg.group_id,
                index = entry.index,
                "malformed batch of stamped proposals; applied as nothing"
            );
            for (member, request) in &stamped.origins {
                if *member == self.cfg.member_id {
                    if let Some(reply) = self.pending_proposals.remove(request) {
                        let _ = reply.send(Err(RaftError::Malformed));
                    }
                }
            }
            commands.push(Committed {
                index: entry.index,
                data: &[],
                conf_change: None,
                stamp: None,
            });
            return;
        };
        for (i, (data, (member, request))) in proposals.into_iter().zip(&stamped.origins).enumerate() {
            if *member == self.cfg.member_id {
                waiting.insert(commands.len(), *request);
            }
            commands.push(Committed {
                index: entry.index,
                data,
                conf_change: None,
                stamp: Some(stamped.first_stamp + i as i64),
            });
        }
    }

    /// Answers this member's proposals in a batch entry that does not decode.
    fn refuse_malformed_batch(&mut self, batch: Proposer) {
        // The count comes from the damaged entry; this member never proposes more than this.
        let count = (batch.count as usize).min(proposal_batch::MAX_COMMANDS);
        for i in 0..count {
            let request = batch.first_request.wrapping_add(i as u64);
            if let Some(reply) = self.pending_proposals.remove(&request) {
                let _ = reply.send(Err(RaftError::Malformed));
            }
        }
    }

    /// Applies a configuration change to raft-rs and the log store, and
    /// returns what changed, for the state machine.
    fn apply_conf_change(&mut self, entry: &Entry) -> Result<Option<ConfChangeApplied>, Fault> {
        let decoded = if entry.get_entry_type() == EntryType::EntryConfChange {
            let mut cc = ConfChange::default();
            cc.merge_from_bytes(&entry.data).map(|_| {
                let change = (member_change(cc.get_change_type()), cc.node_id);
                let applied = self.raw.apply_conf_change(&cc);
                (vec![change], cc.take_context().to_vec(), applied)
            })
        } else {
            let mut cc = ConfChangeV2::default();
            cc.merge_from_bytes(&entry.data).map(|_| {
                let changes = cc
                    .get_changes()
                    .iter()
                    .map(|c| (member_change(c.get_change_type()), c.node_id))
                    .collect();
                let applied = self.raw.apply_conf_change(&cc);
                (changes, cc.take_context().to_vec(), applied)
            })
        };
        let (changes, context, applied) = match decoded {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(group = self.cfg.group_id, "undecodable conf change: {e}");
                return Ok(None);
            }
        };
        match applied {
            Ok(cs) => {
                let mut batch = LogBatch::default();
                let store = self.raw.mut_store();
                store.stage_conf_state(&mut batch, cs);
                store
                    .write(&mut batch, true)
                    .map_err(|e| Fault(format!("cannot persist the configuration: {e}")))?;
                self.last_conf_change = entry.index;
                // A snapshot carries the configuration it was taken under;
                // one from before this change would mislead a new member.
                if let Some(stale) = self.snapshots.invalidate() {
                    remove_snapshot_file(&stale);
                }
                Ok(Some(ConfChangeApplied { changes, context }))
            }
            Err(e) => {
                tracing::warn!(group = self.cfg.group_id, "rejected conf change: {e}");
                Ok(None)
            }
        }
    }

    /// Replaces the state machine and the log with a snapshot from the leader.
    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), Fault> {
        let meta = snap.get_metadata();
        let descriptor = SnapshotDescriptor::decode(snap.get_data())
            .map_err(|e| Fault(format!("undecodable snapshot descriptor: {e}")))?;
        tracing::info!(
            group = self.cfg.group_id,
            index = meta.index,
            term = meta.term,
            "installing snapshot"
        );
        crate::metrics::SNAPSHOTS_INSTALLED.inc();
        self.sm
            .install_snapshot(std::path::Path::new(&descriptor.path), &descriptor.app_data)
            .map_err(|e| Fault(format!("cannot install snapshot at index {}: {e}", meta.index)))?;
        let mut batch = LogBatch::default();
        let store = self.raw.mut_store();
        store.stage_snapshot(&mut batch, meta);
        store
            .write(&mut batch, true)
            .map_err(|e| Fault(format!("cannot persist the snapshot point: {e}")))?;
        self.last_conf_change = self.last_conf_change.max(meta.index);
        self.applied_tx.send_replace(meta.index);
        Ok(())
    }

    /// Builds snapshots when raft-rs wants one, and drops the front of the
    /// log once enough of it is applied and durable.
    fn manage_snapshots(&mut self) -> Result<(), Fault> {
        if self.building.as_ref().is_some_and(|b| b.is_finished()) {
            let result = self.building.take().expect("checked").join();
            match result {
                Ok(Ok(built)) => self.offer_snapshot(built),
                Ok(Err(e)) => tracing::error!(group = self.cfg.group_id, "snapshot build failed: {e}"),
                Err(_) => tracing::error!(group = self.cfg.group_id, "snapshot builder panicked"),
            }
        }
        if self.building.is_none() && self.snapshots.is_wanted() {
            let job = self.sm.snapshot_job();
            let nanos = initial_request_id();
            let path = self
                .cfg
                .snapshot_dir
                .join(format!("{:016x}-{nanos:x}.snap", self.cfg.group_id));
            let spawned = std::thread::Builder::new()
                .name(format!("snapshot-{}", self.cfg.group_id))
                .spawn(move || job(&path));
            match spawned {
                Ok(handle) => self.building = Some(handle),
                Err(e) => tracing::error!("cannot start the snapshot builder: {e}"),
            }
        }
        self.compact_log()
    }

    fn offer_snapshot(&mut self, built: BuiltSnapshot) {
        let store = self.raw.store();
        let term = store_term(store, built.applied_index);
        if built.applied_index < self.last_conf_change || term.is_none() {
            // The configuration changed after the state was copied (or the
            // point left the log): the snapshot would not be self-consistent.
            let _ = std::fs::remove_file(&built.path);
            return;
        }
        let size = std::fs::metadata(&built.path).map(|m| m.len()).unwrap_or(0);
        let descriptor = SnapshotDescriptor {
            path: built.path.to_string_lossy().into_owned(),
            size,
            app_data: built.app_data,
        };
        let mut snap = Snapshot::default();
        snap.set_data(descriptor.encode_to_vec().into());
        let meta = snap.mut_metadata();
        meta.index = built.applied_index;
        meta.term = term.unwrap_or(0);
        meta.set_conf_state(store.conf_state().clone());
        tracing::info!(
            group = self.cfg.group_id,
            index = built.applied_index,
            size,
            "snapshot ready"
        );
        if let Some(old) = self.snapshots.set_ready(snap) {
            remove_snapshot_file(&old);
        }
    }

    fn compact_log(&mut self) -> Result<(), Fault> {
        let applied = self.raw.raft.raft_log.applied;
        let truncated = self.raw.store().truncated_index();
        let too_big = self.log_bytes > MAX_LOG_BYTES;
        if applied.saturating_sub(truncated) <= self.cfg.snapshot_count && !too_big {
            return Ok(());
        }
        let catch_up = if too_big { 0 } else { self.cfg.catch_up_entries };
        let keep_from = applied.min(self.sm.durable_index()).saturating_sub(catch_up);
        let mut batch = LogBatch::default();
        if self.raw.mut_store().stage_compact(&mut batch, keep_from) {
            self.raw
                .store()
                .write(&mut batch, false)
                .map_err(|e| Fault(format!("cannot truncate the raft log: {e}")))?;
            tracing::debug!(group = self.cfg.group_id, keep_from, too_big, "raft log truncated");
            self.raw.store().purge_in_background();
            self.log_bytes = 0;
        }
        Ok(())
    }

    fn publish_status(&self) {
        let raft = &self.raw.raft;
        self.status.leader_id.store(raft.leader_id, Ordering::Relaxed);
        self.status.term.store(raft.term, Ordering::Relaxed);
        self.status
            .admission
            .publish(raft.raft_log.committed, raft.raft_log.applied);
        let role = match raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower => Role::Follower,
        };
        self.status.leader.send_if_modified(|current| {
            let changed = *current != raft.leader_id;
            *current = raft.leader_id;
            changed
        });
        self.status.role.send_if_modified(|current| {
            let changed = *current != (role, raft.term);
            *current = (role, raft.term);
            changed
        });
        let mut status = self.status.full.write().expect("status lock poisoned");
        status.leader_id = raft.leader_id;
        status.term = raft.term;
        status.role = role;
        status.commit_index = raft.raft_log.committed;
        status.applied_index = raft.raft_log.applied;
        status.last_index = raft.raft_log.last_index();
        status.voters = raft.prs().conf().voters().ids().iter().collect();
        status.learners = raft.prs().conf().learners().iter().copied().collect();
        status.progress = if role == Role::Leader {
            raft.prs()
                .iter()
                .map(|(id, pr)| PeerProgress {
                    member_id: *id,
                    matched: pr.matched,
                    // The leader's own entry is never marked; it is active by definition.
                    recent_active: pr.recent_active || *id == raft.id,
                })
                .collect()
        } else {
            Vec::new()
        };
    }

    fn shutdown(&mut self) {
        if self.hibernation.wake() {
            crate::metrics::HIBERNATING_GROUPS.dec();
        }
        for (_, reply) in self.pending_proposals.drain() {
            let _ = reply.send(Err(RaftError::Stopped));
        }
        for (_, batch) in self.inflight_reads.drain() {
            for w in batch.waiters {
                let _ = w.send(Err(RaftError::Stopped));
            }
        }
        if let Err(e) = self.sm.sync() {
            tracing::error!(group = self.cfg.group_id, "flushing the state machine failed: {e}");
        }
        tracing::info!(group = self.cfg.group_id, "raft group stopped");
    }
}

fn member_change(kind: ConfChangeType) -> MemberChangeKind {
    match kind {
        ConfChangeType::AddNode => MemberChangeKind::AddVoter,
        ConfChangeType::AddLearnerNode => MemberChangeKind::AddLearner,
        ConfChangeType::RemoveNode => MemberChangeKind::Remove,
    }
}

fn remove_snapshot_file(snap: &Snapshot) {
    if let Ok(d) = SnapshotDescriptor::decode(snap.get_data()) {
        let _ = std::fs::remove_file(d.path);
    }
}

fn store_term(store: &LogStore, index: u64) -> Option<u64> {
    use raft::Storage;
    store.term(index).ok()
}

/// A failure of this member's own storage (the log engine, the state machine's file): the group
/// can no longer keep its promises, so its driver stops rather than serve from a state it cannot
/// vouch for, and [`RaftHandle::failed`] tells the member why. Never raised for what a committed
/// entry holds: that is the same on every member, and apply answers it deterministically.
struct Fault(String);
