//! etcd's Maintenance service: status, alarms, hashes (the replica
//! consistency check), defragmentation, snapshots and leader transfer.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::concordpb::raft_command::Op;
use concord_proto::etcdserverpb::maintenance_server::Maintenance;
use concord_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, DowngradeRequest,
    DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use concord_raft::Role;
use concord_storage::WriteResult;
use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

use crate::auth::Credentials;
use crate::context::MemberContext;
use crate::errors;

/// The etcd API version Concord implements. Clients gate features on it.
pub const ETCD_API_VERSION: &str = "3.5.0";

/// How long MoveLeader waits for the new leader to take over.
const LEADER_TRANSFER_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes per snapshot message (etcd sends 32 KiB).
const SNAPSHOT_CHUNK: usize = 32 * 1024;
/// Snapshot messages read ahead of the client, besides what HTTP/2 buffers for it.
const SNAPSHOT_READ_AHEAD: usize = 4;
/// How long a snapshot download may go without the client taking a message before it is
/// cancelled and its file removed. A client that reads at all takes a 32 KiB message in well
/// under a second, even on a slow link; a minute covers a paused process, a long GC or a
/// congested network, while a client that has stopped reading without closing its connection
/// (which HTTP/2 keep-alive does not notice when its connection still answers pings) no longer
/// keeps a copy of the store on disk for good.
pub const SNAPSHOT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The Maintenance service of one member.
pub struct MaintenanceService {
    ctx: Arc<MemberContext>,
}

impl MaintenanceService {
    /// A Maintenance service over the member's shared context.
    pub fn new(ctx: Arc<MemberContext>) -> Self {
        MaintenanceService { ctx }
    }

    fn header(&self) -> Option<concord_proto::etcdserverpb::ResponseHeader> {
        Some(self.ctx.header(self.ctx.store.current_revision()))
    }

    /// With auth enabled, only root may defragment, take snapshots, read hashes (as etcd) and
    /// move the leader (which etcd 3.5 leaves open).
    async fn require_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.ctx.require_admin(request).await
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, request: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        if AlarmAction::try_from(req.action) == Ok(AlarmAction::Get) {
            let mut alarms = self.ctx.store.alarms().map_err(errors::from_kv)?;
            if req.alarm != 0 {
                alarms.retain(|a| a.alarm == req.alarm);
            }
            return Ok(Response::new(AlarmResponse {
                header: self.header(),
                alarms,
            }));
        }
        let group = self.ctx.router.default_group();
        // Raising or clearing an alarm needs root (checked at apply).
        let sender = self.ctx.auth.sender(&creds, group).await?;
        self.ctx
            .write(group, &sender, Op::Alarm(req), |r| match r {
                WriteResult::Alarm(resp) => Some(resp),
                _ => None,
            })
            .await
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let group = self.ctx.router.default_group().status();
        let me = self.ctx.membership.local_id();
        let errors = self
            .ctx
            .store
            .alarms()
            .map(|alarms| alarm_errors(&alarms))
            .unwrap_or_default();
        let store = self.ctx.store.clone();
        // Measuring the space in use walks every page: keep it off the async workers.
        let in_use = tokio::task::spawn_blocking(move || store.db_size_in_use())
            .await
            .unwrap_or(0);
        Ok(Response::new(StatusResponse {
            header: self.header(),
            version: ETCD_API_VERSION.to_string(),
            db_size: self.ctx.store.db_size() as i64,
            leader: group.leader_id,
            raft_index: group.commit_index,
            raft_term: group.term,
            raft_applied_index: group.applied_index,
            errors,
            db_size_in_use: in_use as i64,
            is_learner: group.learners.contains(&me),
            db_size_quota: self.ctx.limits.quota_backend_bytes as i64,
            ..Default::default()
        }))
    }

    async fn defragment(&self, request: Request<DefragmentRequest>) -> Result<Response<DefragmentResponse>, Status> {
        self.require_admin(&request).await?;
        let store = self.ctx.store.clone();
        // Defragmenting writes a compacted copy of the store beside it.
        crate::snapshot_downloads::ensure_free(&self.ctx.snapshot_dir, store.db_size_in_use(), "defragmenting")?;
        self.ctx.grpc_health.defrag_started().await;
        let defragmented = tokio::task::spawn_blocking(move || store.defragment()).await;
        self.ctx.grpc_health.defrag_finished().await;
        defragmented
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(errors::internal)?;
        Ok(Response::new(DefragmentResponse { header: self.header() }))
    }

    async fn hash(&self, request: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.require_admin(&request).await?;
        let store = self.ctx.store.clone();
        // Hashing reads the whole store: keep it off the async workers.
        let hash = tokio::task::spawn_blocking(move || store.hash())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(errors::from_kv)?;
        Ok(Response::new(HashResponse {
            header: self.header(),
            hash,
        }))
    }

    async fn hash_kv(&self, request: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        self.require_admin(&request).await?;
        let (store, revision) = (self.ctx.store.clone(), request.get_ref().revision);
        let (hash, compact_revision, hash_revision) = tokio::task::spawn_blocking(move || store.hash_kv(revision))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(errors::from_kv)?;
        Ok(Response::new(HashKvResponse {
            header: self.header(),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

    /// Streams a consistent copy of the store in etcd's backend format (a bbolt file, so that
    /// `etcdctl snapshot status|restore` take it), followed (as etcd does) by the SHA-256 of
    /// the copy, so a restore can check what it got. The copy is a file in the
    /// member's snapshot directory, removed once the download ends, fails, is abandoned by its
    /// client, or stalls (see [`SNAPSHOT_STALL_TIMEOUT`]).
    async fn snapshot(&self, request: Request<SnapshotRequest>) -> Result<Response<Self::SnapshotStream>, Status> {
        self.require_admin(&request).await?;
        if self.ctx.router.is_sharded() {
            return Err(errors::unsharded_only("a snapshot of the whole keyspace"));
        }
        let file = SnapshotFile(self.ctx.snapshot_dir.join(format!("client-{:x}.snap", rand_suffix())));
        let store = self.ctx.store.clone();
        let members = self.ctx.membership.members();
        let downloads = &self.ctx.snapshot_downloads;
        let slot = downloads.start()?;
        let turn = downloads.copy_turn(&self.ctx.snapshot_dir, store.db_size()).await?;
        // The file, the download's slot and the copying turn travel with the copying: if the
        // client leaves meanwhile, the turn passes and the file and slot go when the copy is done.
        let (file, slot) = tokio::task::spawn_blocking(move || {
            let copied = store.write_etcd_snapshot(&file.0, &members).map(|_| (file, slot));
            drop(turn);
            copied
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(errors::internal)?;
        let (tx, rx) = mpsc::channel(SNAPSHOT_READ_AHEAD);
        let (failed_tx, failed_rx) = oneshot::channel();
        let (header, stall_timeout) = (self.header(), self.ctx.limits.snapshot_stall_timeout);
        tokio::spawn(async move {
            let result = stream_file(&file.0, header, &tx, stall_timeout).await;
            drop(file);
            drop(slot);
            if let Err(status) = result {
                tracing::info!("snapshot download ended early: {}", status.message());
                let _ = failed_tx.send(status);
            }
        });
        // A download that failed ends with its error, after what was already read: never with
        // an OK that would pass a partial copy off as whole.
        let failure = futures::stream::once(failed_rx).filter_map(|failed| failed.ok().map(Err));
        let chunks = ReceiverStream::new(rx).map(Ok::<_, Status>);
        Ok(Response::new(Box::pin(chunks.chain(failure))))
    }

    async fn move_leader(&self, request: Request<MoveLeaderRequest>) -> Result<Response<MoveLeaderResponse>, Status> {
        self.require_admin(&request).await?;
        let target = request.get_ref().target_id;
        let group = self.ctx.router.default_group();
        let status = group.status();
        if status.role != Role::Leader {
            return Err(errors::not_leader());
        }
        if !status.voters.contains(&target) {
            return Err(errors::bad_leader_transferee());
        }
        if target != status.member_id {
            group.transfer_leader(target).map_err(errors::from_raft)?;
            let mut leader = group.watch_leader();
            let moved = tokio::time::timeout(LEADER_TRANSFER_TIMEOUT, leader.wait_for(|l| *l == target)).await;
            if !matches!(moved, Ok(Ok(_))) {
                return Err(errors::timeout_leader_transfer());
            }
        }
        Ok(Response::new(MoveLeaderResponse { header: self.header() }))
    }

    async fn downgrade(&self, _request: Request<DowngradeRequest>) -> Result<Response<DowngradeResponse>, Status> {
        Err(errors::downgrade_unsupported())
    }
}

/// Raised alarms as etcd's Status lists them in `errors`.
pub(crate) fn alarm_errors(alarms: &[concord_proto::etcdserverpb::AlarmMember]) -> Vec<String> {
    alarms
        .iter()
        .map(|a| format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm)))
        .collect()
}

pub(crate) fn alarm_name(alarm: i32) -> &'static str {
    match alarm {
        1 => "NOSPACE",
        2 => "CORRUPT",
        _ => "NONE",
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A snapshot file made for one client, removed when dropped.
struct SnapshotFile(std::path::PathBuf);

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove {}: {e}", self.0.display()),
        }
    }
}

/// Hands `resp` to the download's client; false if the client has gone. An error if the client
/// took nothing for `stall_timeout`.
async fn send_chunk(
    tx: &mpsc::Sender<SnapshotResponse>,
    resp: SnapshotResponse,
    stall_timeout: Duration,
) -> Result<bool, Status> {
    match tokio::time::timeout(stall_timeout, tx.send(resp)).await {
        Ok(sent) => Ok(sent.is_ok()),
        Err(_) => Err(errors::snapshot_download_stalled(stall_timeout)),
    }
}

/// Sends the file at `path` in [`SNAPSHOT_CHUNK`] messages, then its SHA-256; stops early,
/// without an error, if the client goes away.
async fn stream_file(
    path: &std::path::Path,
    header: Option<concord_proto::etcdserverpb::ResponseHeader>,
    tx: &mpsc::Sender<SnapshotResponse>,
    stall_timeout: Duration,
) -> Result<(), Status> {
    let io = errors::snapshot_read_failed;
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let size = file.metadata().await.map_err(io)?.len();
    let mut remaining = size + 32;
    let mut hasher = Sha256::new();
    let mut first = true;
    loop {
        let mut blob = vec![0u8; SNAPSHOT_CHUNK];
        let n = file.read(&mut blob).await.map_err(io)?;
        if n == 0 {
            break;
        }
        blob.truncate(n);
        hasher.update(&blob);
        remaining -= n as u64;
        let resp = SnapshotResponse {
            header: if first { header } else { None },
            remaining_bytes: remaining,
            blob,
            version: ETCD_API_VERSION.to_string(),
        };
        first = false;
        if !send_chunk(tx, resp, stall_timeout).await? {
            return Ok(());
        }
    }
    let digest = SnapshotResponse {
        header: if first { header } else { None },
        remaining_bytes: 0,
        blob: hasher.finalize().to_vec(),
        version: ETCD_API_VERSION.to_string(),
    };
    send_chunk(tx, digest, stall_timeout).await.map(|_| ())
}
