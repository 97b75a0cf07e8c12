//! The revision oracle (TSO) of multi-shard mode: the leader of the metadata group (group 1)
//! hands out global revisions, which shard leaders stamp on their writes, so that one revision
//! orders the writes of every shard in real time, as etcd's single revision does.
//!
//! The leader counts in memory, below a ceiling committed in group 1's log (the store's
//! `revision_ceiling`), which it raises a window ([`CEILING_WINDOW`]) at a time: one log entry
//! per window, not per revision. A new leader starts at the committed ceiling, above anything
//! an earlier leader could hand out, so failover skips at most a window of numbers (PD's TSO
//! does the same with a time-based counter). Each round of allocations is confirmed by a
//! ReadIndex round that starts after the allocation: a deposed leader that still believes it
//! leads cannot hand out a revision below one its successor already handed out. Requests that
//! arrive during a round wait for the next one, so a loaded oracle pays one confirmation for
//! many allocations.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;

use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::revision_oracle_server::{RevisionOracle as RevisionOracleRpc, RevisionOracleServer};
use concord_proto::concordpb::{AllocateRevisionsRequest, AllocateRevisionsResponse, RaftCommand, RevisionCeiling};
use concord_raft::{RevisionSource, Role};
use concord_storage::{MvccStore, WriteResult};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::apply::Applied;
use crate::errors;
use crate::router::GroupHandle;

/// How far each committed raise of the ceiling reaches past what is needed now.
pub const CEILING_WINDOW: i64 = 10_000;

/// The most revisions one call may take.
pub const MOST_PER_CALL: u32 = 1_000_000;

/// One caller waiting for `count` revisions.
struct Waiter {
    count: u32,
    reply: oneshot::Sender<Result<i64, Status>>,
}

/// A member's handle on the oracle; only the member leading group 1 answers with revisions.
pub struct RevisionOracle {
    waiters: mpsc::UnboundedSender<Waiter>,
}

impl RevisionOracle {
    /// Starts the oracle of the group `meta` (group 1) whose state is `store`.
    pub fn start(meta: GroupHandle, store: Arc<MvccStore>) -> Arc<RevisionOracle> {
        let (waiters, queue) = mpsc::unbounded_channel();
        tokio::spawn(serve(meta, store, queue));
        Arc::new(RevisionOracle { waiters })
    }

    /// `count` consecutive revisions, each above every revision handed out before this call
    /// began; refused on a member that does not lead group 1.
    pub async fn allocate(&self, count: u32) -> Result<Range<i64>, Status> {
        if count == 0 || count > MOST_PER_CALL {
            return Err(errors::revision_count_out_of_range(count, MOST_PER_CALL));
        }
        let (reply, answer) = oneshot::channel();
        self.waiters
            .send(Waiter { count, reply })
            .map_err(|_| errors::stopped())?;
        let first = answer.await.map_err(|_| errors::stopped())??;
        Ok(first..first + i64::from(count))
    }

    /// The oracle's peer service.
    pub fn server(self: &Arc<Self>) -> RevisionOracleServer<OracleService> {
        RevisionOracleServer::new(OracleService { oracle: self.clone() })
    }
}

impl RevisionSource for RevisionOracle {
    fn allocate(&self, count: u32) -> Pin<Box<dyn Future<Output = Result<i64, String>> + Send + '_>> {
        Box::pin(async move {
            let revisions = RevisionOracle::allocate(self, count)
                .await
                .map_err(|refused| refused.message().to_string())?;
            Ok(revisions.start)
        })
    }
}

/// The leader's count in the term it leads in.
struct Lead {
    term: u64,
    /// The next revision to hand out.
    next: i64,
    /// The committed ceiling: revisions are handed out only below it.
    ceiling: i64,
}

/// Answers waiters in rounds: everything queued when a round begins is allocated together.
async fn serve(meta: GroupHandle, store: Arc<MvccStore>, mut queue: mpsc::UnboundedReceiver<Waiter>) {
    let mut lead: Option<Lead> = None;
    while let Some(first) = queue.recv().await {
        let mut round = vec![first];
        while let Ok(waiter) = queue.try_recv() {
            round.push(waiter);
        }
        let total: i64 = round.iter().map(|w| i64::from(w.count)).sum();
        match allocate_round(&meta, &store, &mut lead, total).await {
            Ok(mut next) => {
                crate::metrics::ORACLE_ROUNDS.inc();
                crate::metrics::ORACLE_CALLS.inc_by(round.len() as u64);
                crate::metrics::ORACLE_REVISIONS.inc_by(total as u64);
                for waiter in round {
                    let _ = waiter.reply.send(Ok(next));
                    next += i64::from(waiter.count);
                }
            }
            Err(refused) => {
                // Whatever was counted is burnt: the next round, or the next leader, starts past it.
                for waiter in round {
                    let _ = waiter.reply.send(Err(refused.clone()));
                }
            }
        }
    }
}

/// Allocates `total` revisions for one round and returns the first, once a ReadIndex round
/// begun after the allocation has confirmed that this member still leads.
async fn allocate_round(
    meta: &GroupHandle,
    store: &MvccStore,
    lead: &mut Option<Lead>,
    total: i64,
) -> Result<i64, Status> {
    let term = leading_term(meta)?;
    if lead.as_ref().is_none_or(|l| l.term != term) {
        *lead = None;
        // Everything committed before this term (the last ceiling among it) is applied here
        // once a read barrier of this term passes.
        meta.read_barrier().await.map_err(errors::from_raft)?;
        let ceiling = store.revision_ceiling().map_err(errors::internal)?;
        *lead = Some(Lead {
            term,
            next: ceiling.max(store.current_revision() + 1),
            ceiling,
        });
    }
    let state = lead.as_mut().expect("set above");
    if state.next + total > state.ceiling {
        state.ceiling = raise_ceiling(meta, state.next + total + CEILING_WINDOW).await?;
    }
    let first = state.next;
    state.next += total;
    meta.read_barrier().await.map_err(errors::from_raft)?;
    if leading_term(meta)? != term {
        *lead = None;
        return Err(errors::revision_oracle_deposed());
    }
    Ok(first)
}

/// The term this member leads group 1 in, or the refusal naming the leader.
fn leading_term(meta: &GroupHandle) -> Result<u64, Status> {
    let (role, term) = *meta.watch_role().borrow();
    match role {
        Role::Leader => Ok(term),
        _ => Err(errors::revision_oracle_not_leader(meta.leader_id())),
    }
}

/// Commits a ceiling of at least `ceiling` through group 1 and returns the one committed.
async fn raise_ceiling(meta: &GroupHandle, ceiling: i64) -> Result<i64, Status> {
    let command = RaftCommand {
        op: Some(Op::RaiseRevisionCeiling(RevisionCeiling { ceiling })),
    };
    match meta
        .propose_unstamped(command.encode_to_vec())
        .await
        .map_err(errors::from_raft)?
    {
        Applied::Kv(Ok(WriteResult::RevisionCeiling(raised))) => Ok(raised.ceiling),
        Applied::Kv(Err(refused)) => Err(errors::from_kv(refused)),
        _ => Err(errors::unexpected_apply_result()),
    }
}

/// `RevisionOracle` on peer URLs.
pub struct OracleService {
    oracle: Arc<RevisionOracle>,
}

#[tonic::async_trait]
impl RevisionOracleRpc for OracleService {
    async fn allocate(
        &self,
        request: Request<AllocateRevisionsRequest>,
    ) -> Result<Response<AllocateRevisionsResponse>, Status> {
        let count = request.into_inner().count;
        let revisions = self.oracle.allocate(count).await?;
        Ok(Response::new(AllocateRevisionsResponse {
            first: revisions.start,
            count,
        }))
    }
}

/// Where a shard's leader takes revisions from: the oracle of this member while it leads group
/// 1, else the oracle of group 1's leader over its peer URL.
pub struct OracleClient {
    local: Arc<RevisionOracle>,
    meta: GroupHandle,
    membership: Arc<crate::membership::Membership>,
    dialer: concord_tls::Dialer,
    channels: crate::forward::LeaderChannels,
    timeout: std::time::Duration,
}

impl OracleClient {
    /// A client of the oracle of group `meta`, this member's being `local`; remote oracles are
    /// reached with `dialer` and given up on after `timeout`.
    pub fn new(
        local: Arc<RevisionOracle>,
        meta: GroupHandle,
        membership: Arc<crate::membership::Membership>,
        dialer: concord_tls::Dialer,
        timeout: std::time::Duration,
    ) -> Arc<OracleClient> {
        Arc::new(OracleClient {
            local,
            meta,
            membership,
            dialer,
            channels: Default::default(),
            timeout,
        })
    }

    async fn allocate_remote(&self, leader: u64, count: u32) -> Result<i64, String> {
        let url = self
            .membership
            .member(leader)
            .and_then(|m| m.peer_ur_ls.first().cloned())
            .ok_or_else(|| format!("no peer URL for group 1's leader {leader:x}"))?;
        let channel = self
            .channels
            .channel(&url, &self.dialer)
            .map_err(|refused| refused.message().to_string())?;
        let mut oracle = concord_proto::concordpb::revision_oracle_client::RevisionOracleClient::new(channel);
        let call = oracle.allocate(AllocateRevisionsRequest { count });
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(answer)) => Ok(answer.into_inner().first),
            Ok(Err(refused)) => Err(refused.message().to_string()),
            Err(_) => Err(format!(
                "the revision oracle at {url} did not answer within {:?}",
                self.timeout
            )),
        }
    }
}

impl RevisionSource for OracleClient {
    fn allocate(&self, count: u32) -> Pin<Box<dyn Future<Output = Result<i64, String>> + Send + '_>> {
        Box::pin(async move {
            match self.meta.leader_id() {
                0 => Err("group 1 has no leader".to_string()),
                leader if leader == self.membership.local_id() => RevisionSource::allocate(&*self.local, count).await,
                leader => self.allocate_remote(leader, count).await,
            }
        })
    }
}
