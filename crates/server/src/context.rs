//! What every service of a member shares: its identity, its groups, its store and its limits.

use std::path::PathBuf;
use std::sync::Arc;

use concord_proto::concordpb::{raft_command::Op, RaftCommand};
use concord_proto::etcdserverpb::ResponseHeader;
use concord_storage::{KvError, MvccStore, WriteResult};
use prost::Message as _;
use tonic::Status;

use crate::apply::Applied;
use crate::auth::Sender;
use crate::errors;
use crate::live_router::LiveRouter;
use crate::membership::Membership;
use crate::router::GroupHandle;
use crate::shard_groups::ShardGroups;

/// Request limits, with etcd's defaults.
#[derive(Clone, Debug)]
pub struct Limits {
    /// etcd's `--max-request-bytes`: the largest write that is proposed.
    pub max_request_bytes: usize,
    /// etcd's `--max-txn-ops`: the most compares or operations in a txn branch.
    pub max_txn_ops: usize,
    /// etcd's `--quota-backend-bytes`: past this store size, writes are
    /// refused and a NOSPACE alarm is raised until space is reclaimed.
    pub quota_backend_bytes: u64,
    /// How long a snapshot download may go without its client taking data before it is
    /// cancelled and its file removed (see [`crate::maintenance::SNAPSHOT_STALL_TIMEOUT`]).
    pub snapshot_stall_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            quota_backend_bytes: 2 * 1024 * 1024 * 1024,
            snapshot_stall_timeout: crate::maintenance::SNAPSHOT_STALL_TIMEOUT,
        }
    }
}

/// Shared state of one member's client-facing services.
pub struct MemberContext {
    /// Cluster membership and this member's id.
    pub membership: Arc<Membership>,
    /// Key-to-group routing.
    pub router: Arc<LiveRouter>,
    /// Global revisions from the oracle (multi-shard mode), for reads across shards.
    pub revisions: Arc<dyn concord_raft::RevisionSource>,
    /// The shard groups this member runs, and the map of every shard.
    pub shards: Arc<ShardGroups>,
    /// The peer transport, which knows which members answer.
    pub transport: std::sync::Arc<concord_raft::PeerTransport>,
    /// The MVCC store group 1 applies into: the cluster's metadata (leases, auth, alarms) and
    /// the first shard's keys. Each shard's own store is in the router.
    pub store: Arc<MvccStore>,
    /// Where snapshots for clients are written before they are streamed.
    pub snapshot_dir: PathBuf,
    /// Request limits.
    pub limits: Limits,
    /// How long a request may wait on Raft (etcd: 5 s + 2 election timeouts).
    pub request_timeout: std::time::Duration,
    /// A deliberate fault for the chaos rig's known-bad check; `None` in every real deployment.
    pub sabotage: Option<crate::config::Sabotage>,
    /// How this member reaches other members' client URLs (calls forwarded to the leader):
    /// with the client TLS configuration when those URLs are `https://`.
    pub client_dialer: concord_tls::Dialer,
    /// Authentication and authorization: tokens, identities, permission checks.
    pub auth: Arc<crate::auth::AuthState>,
    /// The bound on snapshot downloads in progress and their copies.
    pub snapshot_downloads: crate::snapshot_downloads::SnapshotDownloads,
    /// The client port's grpc.health.v1 answer, which defragmentation may turn NOT_SERVING.
    pub grpc_health: crate::grpc_health::GrpcHealth,
    /// Channels to the client URLs of members holding shards this member does not.
    pub shard_channels: crate::forward::LeaderChannels,
}

impl MemberContext {
    /// Whether a KV read must pass a ReadIndex barrier before it reads local state: every read
    /// the client did not ask to be serializable, unless the member was started sabotaged.
    pub fn needs_read_barrier(&self, serializable: bool) -> bool {
        !serializable && self.sabotage != Some(crate::config::Sabotage::StaleReads)
    }

    /// How deeply a client's txns may nest: [`crate::validate::MAX_TXN_DEPTH`], unless the
    /// member was started sabotaged to let deeper ones into the log.
    pub fn max_txn_depth(&self) -> usize {
        match self.sabotage {
            Some(crate::config::Sabotage::UncheckedTxnDepth) => usize::MAX,
            _ => crate::validate::MAX_TXN_DEPTH,
        }
    }

    /// Refuses `request` unless it comes from root while auth is enabled: what etcd asks of
    /// maintenance and membership changes.
    pub async fn require_admin<T>(&self, request: &tonic::Request<T>) -> Result<(), Status> {
        let creds = crate::auth::Credentials::of(request);
        self.auth.require_admin(&creds, self.router.default_group()).await?;
        Ok(())
    }

    /// Waits until a read of `group` may be served from this member's store (linearizably,
    /// unless `serializable`) and returns the least revision the read reports.
    ///
    /// With one shard: a ReadIndex barrier, and the store's revision is the answer's. With
    /// several, the store's revision counts only its shard's writes, so the read takes its place
    /// in the shard's log instead: a stamped barrier command (`Op::ReadBarrier`), whose stamp is
    /// above every write that completed before the read began, whatever its shard, and once it
    /// is applied here every write of this shard stamped below it is too. The read reports that
    /// stamp (or the store's revision if higher). It costs a Raft round where ReadIndex costs a
    /// heartbeat one, until shards publish resolved revisions.
    pub async fn read_point(&self, group: &GroupHandle, serializable: bool) -> Result<i64, Status> {
        if !self.needs_read_barrier(serializable) {
            return Ok(0);
        }
        if !self.router.is_sharded() {
            group.read_barrier().await.map_err(errors::from_raft)?;
            return Ok(0);
        }
        self.stamped_barrier(group).await
    }

    /// Passes a read barrier through `group`'s log stamped with a global revision, which it
    /// returns: once it is applied here, so is every write of the group at or below that
    /// revision (the group's log is in stamp order), which is above every revision handed out
    /// before the call. For a group whose writes are not stamped, the revision is its own.
    pub async fn stamped_barrier(&self, group: &GroupHandle) -> Result<i64, Status> {
        let barrier = RaftCommand {
            op: Some(Op::ReadBarrier(concord_proto::concordpb::ReadBarrier {})),
        };
        let mut pause = RetryPause::new(self.request_timeout);
        loop {
            match self.propose_once(group, barrier.encode_to_vec()).await? {
                Ok(applied) => return Ok(applied.revision()),
                // The shard holds a write across shards that a read past it must wait for.
                Err(KvError::ShardHeld) if pause.wait().await => {}
                Err(refused) => return Err(errors::from_kv(refused)),
            }
        }
    }

    /// etcd's response header: who answered, at which revision and term.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.membership.cluster_id(),
            member_id: self.membership.local_id(),
            revision,
            raft_term: self.router.default_group().term(),
        }
    }

    /// Proposes a KV or lease write on behalf of `sender` and answers with the response `pick`
    /// takes from its result, carrying etcd's header at the write's revision.
    pub async fn write<R: WithHeader>(
        &self,
        group: &GroupHandle,
        sender: &Sender,
        op: Op,
        pick: impl FnOnce(WriteResult) -> Option<R>,
    ) -> Result<tonic::Response<R>, Status> {
        let result = self.propose_write(group, sender, op).await?;
        let revision = result.revision();
        let mut resp = pick(result).ok_or_else(errors::unexpected_apply_result)?;
        resp.set_header(self.header(revision));
        Ok(tonic::Response::new(resp))
    }

    /// Proposes a membership command (publish, update) and waits for it to apply here.
    pub async fn propose_membership(&self, group: &GroupHandle, op: Op) -> Result<(), Status> {
        let data = RaftCommand { op: Some(op) }.encode_to_vec();
        group.propose(data).await.map_err(errors::from_raft)?;
        Ok(())
    }

    /// Proposes a KV write through `group` on behalf of `sender` (apply checks that the sender
    /// may make it) and waits for this member to apply it.
    pub async fn propose_write(&self, group: &GroupHandle, sender: &Sender, op: Op) -> Result<WriteResult, Status> {
        let command = RaftCommand {
            op: Some(sender.envelope(op)),
        };
        let mut pause = RetryPause::new(self.request_timeout);
        loop {
            match self.propose_once(group, command.encode_to_vec()).await? {
                // Refused alike by every replica, with nothing applied: the shard holds a write
                // across shards for a moment, or another leader's write won the stamp race.
                Err(refused @ (KvError::ShardHeld | KvError::StaleStamp { .. })) => {
                    if !pause.wait().await {
                        return Err(errors::from_kv(refused));
                    }
                }
                result => return result.map_err(errors::from_kv),
            }
        }
    }

    /// Proposes an encoded command once and returns what the store answered.
    pub async fn propose_once(
        &self,
        group: &GroupHandle,
        data: Vec<u8>,
    ) -> Result<Result<WriteResult, KvError>, Status> {
        if data.len() > self.limits.max_request_bytes {
            return Err(errors::request_too_large());
        }
        let applied = group.propose(data).await.map_err(|e| {
            crate::metrics::PROPOSALS_FAILED.inc();
            errors::from_raft(e)
        })?;
        match applied {
            Applied::Kv(result) => Ok(result),
            Applied::Membership => Err(errors::unexpected_apply_result()),
        }
    }
}

/// etcd responses that carry a `ResponseHeader`.
pub trait WithHeader {
    /// Sets the response's header.
    fn set_header(&mut self, header: ResponseHeader);
}

macro_rules! with_header {
    ($($response:ty),* $(,)?) => {
        $(impl WithHeader for $response {
            fn set_header(&mut self, header: ResponseHeader) {
                self.header = Some(header);
            }
        })*
    };
}

with_header!(
    concord_proto::etcdserverpb::PutResponse,
    concord_proto::etcdserverpb::DeleteRangeResponse,
    concord_proto::etcdserverpb::TxnResponse,
    concord_proto::etcdserverpb::CompactionResponse,
    concord_proto::etcdserverpb::LeaseGrantResponse,
    concord_proto::etcdserverpb::LeaseRevokeResponse,
    concord_proto::etcdserverpb::AlarmResponse,
);

/// Backs off between attempts of a command a shard refused for now, up to a deadline.
pub struct RetryPause {
    deadline: tokio::time::Instant,
    next: std::time::Duration,
}

impl RetryPause {
    /// Pauses for attempts made within `timeout` from now.
    pub fn new(timeout: std::time::Duration) -> RetryPause {
        RetryPause {
            deadline: tokio::time::Instant::now() + timeout,
            next: std::time::Duration::from_millis(1),
        }
    }

    /// Waits before the next attempt (doubling, up to 50 ms); `false`, without waiting, when the
    /// deadline would pass first.
    pub async fn wait(&mut self) -> bool {
        let until = tokio::time::Instant::now() + self.next;
        if until >= self.deadline {
            return false;
        }
        tokio::time::sleep_until(until).await;
        self.next = (self.next * 2).min(std::time::Duration::from_millis(50));
        true
    }
}
