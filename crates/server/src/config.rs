//! A member's settings, named after etcd's flags, with etcd's defaults.

use std::path::PathBuf;
use std::time::Duration;

use concord_tls::TlsFiles;

use crate::context::Limits;

/// Whether a member founds a new cluster or joins a running one (etcd's `--initial-cluster-state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitialClusterState {
    /// All members in `--initial-cluster` start together.
    New,
    /// The member joins a cluster that already added it.
    Existing,
}

/// A deliberate fault a member can be started with, so that the chaos rig can prove its checker
/// catches a broken system (a checker that cannot fail proves nothing). Never for production.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// Serve linearizable reads from local state without a ReadIndex barrier, so a member cut off
    /// from the leader answers with stale data.
    StaleReads,
    /// Let txns nested deeper than the log can decode be proposed, as builds before the depth
    /// check did, so a test can show that apply survives an entry no member can decode.
    UncheckedTxnDepth,
}

/// Everything `concord serve` needs to run one member.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// `--name`
    pub name: String,
    /// `--data-dir`
    pub data_dir: PathBuf,
    /// `--listen-client-urls`
    pub listen_client_urls: Vec<String>,
    /// `--advertise-client-urls`
    pub advertise_client_urls: Vec<String>,
    /// `--listen-metrics-urls`: extra listeners serving only `/metrics` and the health endpoints
    /// (the client URLs serve them too).
    pub listen_metrics_urls: Vec<String>,
    /// `--listen-dashboard-urls`: extra listeners serving only the web dashboard (the client
    /// URLs serve it too, under `/ui`).
    pub listen_dashboard_urls: Vec<String>,
    /// `--listen-peer-urls`
    pub listen_peer_urls: Vec<String>,
    /// `--initial-advertise-peer-urls`
    pub initial_advertise_peer_urls: Vec<String>,
    /// `--initial-cluster`
    pub initial_cluster: String,
    /// `--wal-dir`: the Raft log goes to `<wal-dir>/raft` instead of `<data-dir>/member/raft`
    /// (a dedicated disk for the log, as with etcd's WAL).
    pub wal_dir: Option<PathBuf>,
    /// `--grpc-keepalive-interval`, `--grpc-keepalive-timeout`, `--max-concurrent-streams`.
    pub client_connections: crate::client_port::ConnectionSettings,
    /// `--initial-cluster-state`
    pub initial_cluster_state: InitialClusterState,
    /// `--initial-cluster-token`
    pub initial_cluster_token: String,
    /// `--force-new-cluster`: a member with data restarts as the only voter of its cluster
    /// (same cluster and member ids, every entry of its log committed); see
    /// `concord_raft::force_new_cluster`. Meant for one start after a quorum is lost for good.
    pub force_new_cluster: bool,
    /// `--heartbeat-interval`: one Raft tick.
    pub heartbeat_interval: Duration,
    /// `--election-timeout`
    pub election_timeout: Duration,
    /// `--max-request-bytes` and `--max-txn-ops`.
    pub limits: Limits,
    /// `--snapshot-count`: applied entries the Raft log holds before its
    /// front is dropped (lagging members then catch up from a snapshot).
    pub snapshot_count: u64,
    /// `--experimental-snapshot-catchup-entries`: entries kept behind the
    /// applied index when the log is truncated.
    pub snapshot_catchup_entries: u64,
    /// `--experimental-watch-progress-notify-interval`: how often idle
    /// watchers that asked for it hear how far they are (etcd: 10 minutes).
    pub watch_progress_notify_interval: Duration,
    /// A deliberate fault for the chaos rig's known-bad check; `None` in every real deployment.
    pub sabotage: Option<Sabotage>,
    /// Whether group 1's leader stamps its writes with revisions from the revision oracle, as
    /// every shard's leader will in multi-shard mode: a development switch that runs the
    /// multi-shard write path on today's one group, until the keyspace can be split.
    pub stamped_revisions: bool,
    /// `--experimental-initial-shards`: the keys a new cluster's keyspace is split at, each
    /// starting a shard with its own Raft group on every initial member (read only when the
    /// member bootstraps; empty: one shard).
    pub initial_shards: Vec<Vec<u8>>,
    /// Client TLS: `--cert-file`, `--key-file`, `--trusted-ca-file`, `--client-cert-auth`.
    /// Needed by `https://` client URLs; `None` serves plaintext only.
    pub client_tls: Option<TlsFiles>,
    /// Peer TLS: `--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`,
    /// `--peer-client-cert-auth`. Needed by `https://` peer URLs.
    pub peer_tls: Option<TlsFiles>,
    /// `--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`.
    pub auth: crate::auth::AuthConfig,
    /// `--encryption-key-file`: encryption at rest of values and Raft log entries (see the
    /// concord-crypt crate for the file format and rotation); `None` writes them plain.
    pub encryption_key_file: Option<PathBuf>,
    /// `--auto-compaction-mode` and `--auto-compaction-retention`: `None` keeps all history
    /// (etcd's default, retention 0).
    pub auto_compaction: Option<crate::compactor::AutoCompaction>,
    /// `--experimental-initial-corrupt-check` and `--experimental-corrupt-check-time`: etcd's
    /// comparisons of the members' HashKV (off by default, as in etcd).
    pub corrupt_check: crate::corrupt_check::CorruptCheck,
    /// `--listen-client-http-urls`: listeners for the HTTP routes (the JSON gateway, `/metrics`,
    /// health, `/version`, the dashboard). When any is given, the client URLs serve gRPC only,
    /// as etcd 3.5's do.
    pub listen_client_http_urls: Vec<String>,
    /// `--socket-reuse-port` and `--socket-reuse-address`, for every listener.
    pub socket_options: crate::listen::SocketOptions,
    /// `--experimental-warning-apply-duration`: an apply batch slower than this is logged
    /// (etcd: 100 ms).
    pub warning_apply_duration: Duration,
    /// `--max-pending-proposal-bytes`: proposal bytes a member may have in flight before new
    /// writes get "etcdserver: too many requests" (see `concord_raft::admission`).
    pub max_pending_proposal_bytes: usize,
    /// `--experimental-stop-grpc-service-on-defrag`: the gRPC health service answers
    /// NOT_SERVING while the member defragments.
    pub stop_grpc_service_on_defrag: bool,
    /// `--experimental-enable-lease-checkpoint`: how often the leader records each long lease's
    /// remaining time (etcd: 5 minutes); `None` when off.
    pub lease_checkpoint_interval: Option<Duration>,
    /// `--host-whitelist` and `--cors`: etcd's checks of the HTTP requests on client URLs
    /// (the default allows every host and origin, as etcd's does).
    pub http_access: crate::http::access::AccessControl,
}

/// The default of `--max-pending-proposal-bytes` (see `concord_raft::admission`).
pub const DEFAULT_MAX_PENDING_PROPOSAL_BYTES: usize = concord_raft::admission::DEFAULT_MAX_PENDING_PROPOSAL_BYTES;

impl ServerConfig {
    /// How long a request may wait for Raft, as etcd computes it:
    /// five seconds plus two election timeouts.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + self.election_timeout * 2
    }

    /// The election timeout in ticks.
    pub fn election_ticks(&self) -> usize {
        let ticks = self.election_timeout.as_millis() / self.heartbeat_interval.as_millis().max(1);
        (ticks as usize).max(2)
    }
}
