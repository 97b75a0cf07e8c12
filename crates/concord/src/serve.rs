//! `concord serve`: etcd's member flags, mapped onto a [`ServerConfig`].
//!
//! etcd's command lines are accepted as they are: [`crate::goflags`] reads Go's flag syntax
//! (single dashes, `--flag=true`), and [`crate::etcd_flags`] takes the etcd flags that have no
//! clap argument here, warning about those Concord ignores and refusing those it cannot honour
//! safely. Durations are Go's (`1m30s`, see [`concord_server::go_duration`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, ValueEnum};
use concord_server::{AuthConfig, AutoCompaction, InitialClusterState, Limits, Sabotage, ServerConfig};
use concord_tls::{AllowedNames, TlsFiles, TlsPolicy, TlsVersion};

/// etcd's `--initial-cluster-state` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ClusterState {
    /// Found a new cluster with every member in `--initial-cluster`.
    New,
    /// Join a running cluster that has added this member.
    Existing,
}

/// The flags of `concord serve`; names, defaults and environment variables are etcd's.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default", env = "ETCD_NAME")]
    pub name: String,
    /// Path to the data directory (default: <name>.etcd).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Path to a dedicated directory for the Raft log (kept in <wal-dir>/raft; default:
    /// <data-dir>/member/raft).
    #[arg(long, env = "ETCD_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,
    /// Frequency of server-to-client pings that find dead connections (0 disables; etcd's
    /// default is 2h, Concord's 10s).
    #[arg(long, value_parser = parse_duration_or_zero, env = "ETCD_GRPC_KEEPALIVE_INTERVAL")]
    pub grpc_keepalive_interval: Option<Duration>,
    /// How long a keep-alive ping may go unanswered before the connection is closed.
    #[arg(long, default_value = "20s", value_parser = parse_duration, env = "ETCD_GRPC_KEEPALIVE_TIMEOUT")]
    pub grpc_keepalive_timeout: Duration,
    /// How often a client may ping the member while it has calls in progress; a client that
    /// pings more often is sent away with GOAWAY (too_many_pings), as by etcd.
    #[arg(long, default_value = "5s", value_parser = parse_duration_or_zero, env = "ETCD_GRPC_KEEPALIVE_MIN_TIME")]
    pub grpc_keepalive_min_time: Duration,
    /// Maximum concurrent streams each client connection may open (default: no limit).
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// URLs to listen on for client traffic.
    #[arg(
        long,
        default_value = "http://localhost:2379",
        env = "ETCD_LISTEN_CLIENT_URLS",
        value_delimiter = ','
    )]
    pub listen_client_urls: Vec<String>,
    /// This member's client URLs, as announced to the cluster.
    #[arg(
        long,
        default_value = "http://localhost:2379",
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        value_delimiter = ','
    )]
    pub advertise_client_urls: Vec<String>,
    /// Extra URLs to serve /metrics and the health endpoints on (the client URLs serve them too).
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,
    /// Extra URLs to serve the web dashboard on (the client URLs serve it too, under /ui).
    #[arg(long, env = "CONCORD_LISTEN_DASHBOARD_URLS", value_delimiter = ',')]
    pub listen_dashboard_urls: Vec<String>,
    /// URLs to listen on for peer traffic.
    #[arg(
        long,
        default_value = "http://localhost:2380",
        env = "ETCD_LISTEN_PEER_URLS",
        value_delimiter = ','
    )]
    pub listen_peer_urls: Vec<String>,
    /// This member's peer URLs, as announced to the rest of the cluster.
    #[arg(
        long,
        default_value = "http://localhost:2380",
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        value_delimiter = ','
    )]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Initial cluster configuration for bootstrapping (name=peer-url,...); default: <name>=<initial-advertise-peer-urls>.
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state: new or existing.
    #[arg(long, value_enum, default_value = "new", env = "ETCD_INITIAL_CLUSTER_STATE")]
    pub initial_cluster_state: ClusterState,
    /// Initial cluster token, which makes member and cluster ids unique.
    #[arg(long, default_value = "etcd-cluster", env = "ETCD_INITIAL_CLUSTER_TOKEN")]
    pub initial_cluster_token: String,
    /// Force to create a new one-member cluster: a member with data commits its whole log and
    /// removes every other member. For one start, after a quorum is lost for good.
    #[arg(long, env = "ETCD_FORCE_NEW_CLUSTER", action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = crate::goflags::parse_bool)]
    pub force_new_cluster: bool,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, default_value_t = 100, env = "ETCD_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, default_value_t = 1000, env = "ETCD_ELECTION_TIMEOUT")]
    pub election_timeout: u64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, default_value_t = 1536 * 1024, env = "ETCD_MAX_REQUEST_BYTES")]
    pub max_request_bytes: usize,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, default_value_t = 128, env = "ETCD_MAX_TXN_OPS")]
    pub max_txn_ops: usize,
    /// Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB).
    #[arg(long, default_value_t = 0, env = "ETCD_QUOTA_BACKEND_BYTES")]
    pub quota_backend_bytes: u64,
    /// Number of committed transactions to trigger a snapshot to disk (the Raft log is truncated behind it).
    #[arg(long, default_value_t = 100_000, env = "ETCD_SNAPSHOT_COUNT")]
    pub snapshot_count: u64,
    /// Number of entries for a slow follower to catch up after compacting the Raft log.
    #[arg(long, default_value_t = 5000, env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES")]
    pub experimental_snapshot_catchup_entries: u64,
    /// Duration of periodic watch progress notifications (e.g. 10m, 5s, 500ms).
    #[arg(long, default_value = "10m", value_parser = parse_duration, env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL")]
    pub experimental_watch_progress_notify_interval: Duration,
    /// Path to the client server TLS cert file.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA cert file.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Enable client cert authentication.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = crate::goflags::parse_bool)]
    pub client_cert_auth: bool,
    /// Path to the peer server TLS cert file.
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Enable peer client cert authentication.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = crate::goflags::parse_bool)]
    pub peer_client_cert_auth: bool,
    /// Client TLS using generated certificates (when --cert-file and --key-file are not given).
    #[arg(long, env = "ETCD_AUTO_TLS", action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = crate::goflags::parse_bool)]
    pub auto_tls: bool,
    /// Peer TLS using generated certificates (when --peer-cert-file and --peer-key-file are not
    /// given); peers' certificates are then not verified.
    #[arg(long, env = "ETCD_PEER_AUTO_TLS", action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = crate::goflags::parse_bool)]
    pub peer_auto_tls: bool,
    /// The validity period of the client and peer certificates that are automatically
    /// generated, in years.
    #[arg(long, default_value_t = 1, env = "ETCD_SELF_SIGNED_CERT_VALIDITY")]
    pub self_signed_cert_validity: u32,
    /// Path to the client certificate revocation list file (PEM).
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,
    /// Path to the peer certificate revocation list file (PEM).
    #[arg(long, env = "ETCD_PEER_CRL_FILE")]
    pub peer_crl_file: Option<PathBuf>,
    /// Comma-separated list of SAN hostnames (or IP addresses) for client cert authentication:
    /// a client certificate must be valid for one of them.
    #[arg(long, env = "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME", value_delimiter = ',')]
    pub client_cert_allowed_hostname: Vec<String>,
    /// Comma-separated list of allowed CNs for inter-peer TLS authentication: a peer's
    /// certificate must have one of them as its subject's common name.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN", value_delimiter = ',')]
    pub peer_cert_allowed_cn: Vec<String>,
    /// Comma-separated list of allowed SAN hostnames (or IP addresses) for inter-peer TLS
    /// authentication: a peer's certificate must be valid for one of them.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_HOSTNAME", value_delimiter = ',')]
    pub peer_cert_allowed_hostname: Vec<String>,
    /// Comma-separated white list of origins for CORS, or cross-origin resource sharing, each
    /// scheme://host:port (empty or * means allow all).
    #[arg(long, env = "ETCD_CORS", default_value = "")]
    pub cors: String,
    /// Comma-separated acceptable hostnames from HTTP client requests, if server is not secure
    /// (empty or * means allow all).
    #[arg(long, env = "ETCD_HOST_WHITELIST", default_value = "*")]
    pub host_whitelist: String,
    /// Comma-separated list of supported TLS 1.2 cipher suites between client/server and peers
    /// (Go's names; empty will be auto-populated).
    #[arg(long, env = "ETCD_CIPHER_SUITES", value_delimiter = ',', default_value = "")]
    pub cipher_suites: Vec<String>,
    /// Minimum TLS version supported by etcd: TLS1.2 or TLS1.3 (empty: TLS1.2).
    #[arg(long, env = "ETCD_TLS_MIN_VERSION", default_value = "")]
    pub tls_min_version: String,
    /// Maximum TLS version supported by etcd: TLS1.2 or TLS1.3 (empty: TLS1.3).
    #[arg(long, env = "ETCD_TLS_MAX_VERSION", default_value = "")]
    pub tls_max_version: String,
    /// Encrypt values and the Raft log at rest with the keys in this file: lines
    /// `name:64-hex-digits`; the first key seals new data, the others only open older data.
    #[arg(long, env = "CONCORD_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// Starts the member deliberately broken, for the chaos rig's known-bad check. Hidden: no
    /// deployment should ever use it.
    #[arg(long, value_enum, hide = true)]
    pub unsafe_sabotage: Option<SabotageArg>,
    /// Stamps writes with revisions from the revision oracle, as shards' leaders will in
    /// multi-shard mode (revisions may then skip numbers). Hidden: a development switch that
    /// runs the multi-shard write path on today's one group, until the keyspace can be split.
    #[arg(long, hide = true)]
    pub experimental_stamped_revisions: bool,
    /// Splits a new cluster's keyspace at these comma-separated keys, each starting a shard with
    /// its own Raft group on every initial member (read when the member bootstraps). Hidden: a
    /// development switch while multi-shard mode is built; see ARCHITECTURE.md for what it does
    /// not do yet. `\xHH` stands for the byte HH, for keys that are not text.
    #[arg(long, hide = true, value_delimiter = ',', value_parser = parse_escaped_key)]
    pub experimental_initial_shards: Vec<Vec<u8>>,
    /// How long a snapshot download may go without its client taking data before it is
    /// cancelled and its file removed (default 1m). Hidden: for tests that cannot wait that long.
    #[arg(long, value_parser = parse_duration, hide = true)]
    pub experimental_snapshot_stall_timeout: Option<Duration>,
    /// Specify auth token type and options: 'simple' or
    /// 'jwt,pub-key=<path>,priv-key=<path>,sign-method=<alg>[,ttl=<duration>]'.
    #[arg(long, default_value = "simple", env = "ETCD_AUTH_TOKEN")]
    pub auth_token: String,
    /// Time (in seconds) a simple auth token stays valid without use.
    #[arg(long, default_value_t = 300, env = "ETCD_AUTH_TOKEN_TTL")]
    pub auth_token_ttl: u64,
    /// Cost of bcrypt password hashes (4 to 31).
    #[arg(long, default_value_t = 10, env = "ETCD_BCRYPT_COST")]
    pub bcrypt_cost: u32,
    /// Interpret --auto-compaction-retention as 'periodic' (a duration, or a bare number of
    /// hours) or 'revision' (a number of revisions).
    #[arg(long, default_value = "periodic", env = "ETCD_AUTO_COMPACTION_MODE")]
    pub auto_compaction_mode: String,
    /// Auto compaction retention (0 keeps all history), e.g. 1h, 30m, 72 (hours) or 1000
    /// (revisions, in revision mode). Run by the leader, as etcd does.
    #[arg(long, default_value = "0", env = "ETCD_AUTO_COMPACTION_RETENTION")]
    pub auto_compaction_retention: String,
    /// How often revision-mode auto compaction runs (etcd: fixed at 5m). Hidden: for tests that
    /// cannot wait that long.
    #[arg(long, value_parser = parse_duration, hide = true)]
    pub experimental_revision_compaction_interval: Option<Duration>,
    /// Check the member's data against its peers' (HashKV at its revision) before it serves;
    /// a difference at the same compaction point stops it.
    #[arg(long, env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = crate::goflags::parse_bool)]
    pub experimental_initial_corrupt_check: bool,
    /// How often the leader compares every member's HashKV and raises the CORRUPT alarm for one
    /// that differs (0 disables).
    #[arg(long, default_value = "0s", value_parser = parse_duration_or_zero, env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME")]
    pub experimental_corrupt_check_time: Duration,
    /// After each compaction, the leader compares every member's HashKV at the compaction
    /// revision and raises the CORRUPT alarm for one that differs.
    #[arg(long, env = "ETCD_EXPERIMENTAL_COMPACT_HASH_CHECK_ENABLED", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = crate::goflags::parse_bool)]
    pub experimental_compact_hash_check_enabled: bool,
    /// How often the leader runs the compaction hash check.
    #[arg(long, default_value = "1m", value_parser = parse_duration, env = "ETCD_EXPERIMENTAL_COMPACT_HASH_CHECK_TIME")]
    pub experimental_compact_hash_check_time: Duration,
    /// URLs to listen on for HTTP-only client traffic (the JSON gateway, /metrics, health,
    /// /version); when given, --listen-client-urls serves gRPC only.
    #[arg(long, env = "ETCD_LISTEN_CLIENT_HTTP_URLS", value_delimiter = ',')]
    pub listen_client_http_urls: Vec<String>,
    /// Path to the certificate the member presents when it calls other members' client URLs
    /// (default: --cert-file), for a --cert-file issued for server authentication only.
    #[arg(long, env = "ETCD_CLIENT_CERT_FILE")]
    pub client_cert_file: Option<PathBuf>,
    /// Path to the key of --client-cert-file.
    #[arg(long, env = "ETCD_CLIENT_KEY_FILE")]
    pub client_key_file: Option<PathBuf>,
    /// Path to the certificate the member presents to its peers when it connects to them
    /// (default: --peer-cert-file), for a --peer-cert-file issued for server authentication only.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_FILE")]
    pub peer_client_cert_file: Option<PathBuf>,
    /// Path to the key of --peer-client-cert-file.
    #[arg(long, env = "ETCD_PEER_CLIENT_KEY_FILE")]
    pub peer_client_key_file: Option<PathBuf>,
    /// Set SO_REUSEPORT on every listener, so another socket that sets it can bind the same port.
    #[arg(long, env = "ETCD_SOCKET_REUSE_PORT", action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = crate::goflags::parse_bool)]
    pub socket_reuse_port: bool,
    /// Set SO_REUSEADDR on every listener, so an address binds while old connections are in
    /// TIME_WAIT (Concord's listeners, as Go's, set it on Unix anyway).
    #[arg(long, env = "ETCD_SOCKET_REUSE_ADDRESS", action = ArgAction::Set, num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = crate::goflags::parse_bool)]
    pub socket_reuse_address: bool,
    /// Time after which a warning is logged if applying committed entries takes longer.
    #[arg(long, default_value = "100ms", value_parser = parse_duration, env = "ETCD_EXPERIMENTAL_WARNING_APPLY_DURATION")]
    pub experimental_warning_apply_duration: Duration,
    /// etcd's discovery flags: --discovery, --discovery-srv and their options.
    #[command(flatten)]
    pub discovery: crate::discovery::DiscoveryArgs,
    /// The gRPC health service answers NOT_SERVING while the member defragments, so clients
    /// that watch it use other members meanwhile.
    #[arg(long, env = "ETCD_EXPERIMENTAL_STOP_GRPC_SERVICE_ON_DEFRAG", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = crate::goflags::parse_bool)]
    pub experimental_stop_grpc_service_on_defrag: bool,
    /// The leader records each long lease's remaining time through Raft, so a new leader does
    /// not restart it at its full TTL.
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = crate::goflags::parse_bool)]
    pub experimental_enable_lease_checkpoint: bool,
    /// etcd 3.5 keeps checkpointed remainders across restarts only with this; Concord always
    /// keeps them in its store.
    #[arg(long, env = "ETCD_EXPERIMENTAL_ENABLE_LEASE_CHECKPOINT_PERSIST", action = ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_value = "false", default_missing_value = "true",
          value_parser = crate::goflags::parse_bool)]
    pub experimental_enable_lease_checkpoint_persist: bool,
    /// Concord's back-pressure: the most bytes of write requests a member may have waiting for
    /// consensus at once; past it new writes get etcd's "etcdserver: too many requests" (as they
    /// do while apply trails commit by more than 5,000 entries).
    #[arg(long, default_value_t = concord_server::config::DEFAULT_MAX_PENDING_PROPOSAL_BYTES)]
    pub max_pending_proposal_bytes: usize,
    /// How often lease checkpoints are taken (etcd's embed option, fixed at 5m on its command
    /// line). Hidden: for tests that cannot wait that long.
    #[arg(long, default_value = "5m", value_parser = parse_duration, hide = true)]
    pub experimental_lease_checkpoint_interval: Duration,
}

/// A key as typed: its bytes, with `\xHH` standing for the byte HH (and `\\` for a backslash).
pub fn parse_escaped_key(text: &str) -> Result<Vec<u8>, String> {
    let mut key = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        match (byte, tail) {
            (b'\\', [b'\\', tail @ ..]) => {
                key.push(b'\\');
                rest = tail;
            }
            (b'\\', [b'x', hi, lo, tail @ ..]) => {
                let hex = std::str::from_utf8(&[*hi, *lo])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                key.push(hex.ok_or_else(|| format!("bad escape in {text:?}: \\x needs two hex digits"))?);
                rest = tail;
            }
            (b'\\', _) => return Err(format!("bad escape in {text:?}: use \\xHH or \\\\")),
            _ => {
                key.push(byte);
                rest = tail;
            }
        }
    }
    Ok(key)
}

/// The faults `--unsafe-sabotage` can inject (see [`Sabotage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SabotageArg {
    /// Linearizable reads skip the ReadIndex barrier.
    StaleReads,
    /// Txns nested past the depth limit reach the Raft log (as before the limit existed).
    UncheckedTxnDepth,
}

/// Parses a duration in Go's syntax where 0 means "off".
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    concord_server::go_duration::parse(text)
}

/// Parses a positive duration in Go's syntax, as etcd and etcdctl take them: `500ms`, `5s`,
/// `1m30s`, `2.5s`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = concord_server::go_duration::parse(text)?;
    if duration.is_zero() {
        return Err(format!("{text:?} must be positive"));
    }
    Ok(duration)
}

impl ServeArgs {
    /// Checks the flags the way etcd does and fills in the derived defaults.
    pub fn into_config(self) -> Result<ServerConfig, String> {
        if self.heartbeat_interval == 0 || self.election_timeout < 5 * self.heartbeat_interval {
            return Err(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout, self.heartbeat_interval
            ));
        }
        let policy = TlsPolicy {
            min_version: TlsVersion::parse(&self.tls_min_version)?,
            max_version: TlsVersion::parse(&self.tls_max_version)?,
            cipher_suites: self.cipher_suites.into_iter().filter(|s| !s.is_empty()).collect(),
        };
        // Checked whether TLS is on or not, as etcd checks the flags.
        policy.check().map_err(|e| e.to_string())?;
        let data_dir = data_dir(&self.name, self.data_dir.as_deref());
        let validity = self.self_signed_cert_validity;
        let (cert_file, key_file, client_self_signed) = auto_tls_files(
            "client",
            (self.auto_tls, self.cert_file, self.key_file),
            &data_dir.join("fixtures").join("client"),
            &self.listen_client_urls,
            validity,
        )?;
        let (peer_cert_file, peer_key_file, peer_self_signed) = auto_tls_files(
            "peer",
            (self.peer_auto_tls, self.peer_cert_file, self.peer_key_file),
            &data_dir.join("fixtures").join("peer"),
            &self.listen_peer_urls,
            validity,
        )?;
        let mut client_tls = tls_files(
            ("--cert-file", cert_file),
            ("--key-file", key_file),
            ("--trusted-ca-file", self.trusted_ca_file),
            ("--client-cert-auth", self.client_cert_auth),
            self.client_crl_file,
            &policy,
        )?;
        let mut peer_tls = tls_files(
            ("--peer-cert-file", peer_cert_file),
            ("--peer-key-file", peer_key_file),
            ("--peer-trusted-ca-file", self.peer_trusted_ca_file),
            ("--peer-client-cert-auth", self.peer_client_cert_auth),
            self.peer_crl_file,
            &policy,
        )?;
        for (files, self_signed) in [(&mut client_tls, client_self_signed), (&mut peer_tls, peer_self_signed)] {
            if let Some(files) = files.as_mut() {
                files.skip_server_verification = self_signed;
                // etcd's SelfCert replaces the side's whole TLS settings: no CA, no certificate
                // asked of the other side.
                if self_signed && (files.trusted_ca_file.take().is_some() || files.client_cert_auth) {
                    files.client_cert_auth = false;
                    tracing::warn!(
                        "the trusted CA file and client certificate authentication are ignored with generated \
                         certificates, as etcd ignores them"
                    );
                }
            }
        }
        allowed_names(
            "--client-cert-allowed-hostname",
            &mut client_tls,
            (client_self_signed, false),
            (&[], &self.client_cert_allowed_hostname),
        )?;
        allowed_names(
            "--peer-cert-allowed-cn/--peer-cert-allowed-hostname",
            &mut peer_tls,
            (peer_self_signed, true),
            (&self.peer_cert_allowed_cn, &self.peer_cert_allowed_hostname),
        )?;
        let http_access = concord_server::http::access::AccessControl {
            host_whitelist: concord_server::http::access::AccessControl::parse_host_whitelist(&self.host_whitelist),
            cors: concord_server::http::access::AccessControl::parse_cors(&self.cors)?,
        };
        outgoing_identity(
            &mut client_tls,
            ("--client-cert-file", self.client_cert_file),
            ("--client-key-file", self.client_key_file),
            "--cert-file",
        )?;
        outgoing_identity(
            &mut peer_tls,
            ("--peer-client-cert-file", self.peer_client_cert_file),
            ("--peer-client-key-file", self.peer_client_key_file),
            "--peer-cert-file",
        )?;
        let auto_compaction =
            AutoCompaction::parse(&self.auto_compaction_mode, &self.auto_compaction_retention)?.map(|policy| {
                AutoCompaction {
                    revision_interval: self
                        .experimental_revision_compaction_interval
                        .unwrap_or(policy.revision_interval),
                    ..policy
                }
            });
        let initial_cluster = self.initial_cluster.unwrap_or_else(|| {
            self.initial_advertise_peer_urls
                .iter()
                .map(|u| format!("{}={u}", self.name))
                .collect::<Vec<_>>()
                .join(",")
        });
        Ok(ServerConfig {
            data_dir,
            name: self.name,
            listen_client_urls: self.listen_client_urls,
            listen_metrics_urls: self.listen_metrics_urls,
            listen_dashboard_urls: self.listen_dashboard_urls,
            advertise_client_urls: self.advertise_client_urls,
            listen_peer_urls: self.listen_peer_urls,
            initial_advertise_peer_urls: self.initial_advertise_peer_urls,
            initial_cluster,
            wal_dir: self.wal_dir,
            client_connections: concord_server::client_port::ConnectionSettings {
                keepalive_interval: match self.grpc_keepalive_interval {
                    Some(d) if d.is_zero() => None,
                    Some(d) => Some(d),
                    None => concord_server::client_port::ConnectionSettings::default().keepalive_interval,
                },
                keepalive_timeout: self.grpc_keepalive_timeout,
                // etcd's default, math.MaxUint32, is no limit.
                max_concurrent_streams: self.max_concurrent_streams.filter(|&n| n != u32::MAX),
                keepalive_min_time: self.grpc_keepalive_min_time,
            },
            initial_cluster_state: match self.initial_cluster_state {
                ClusterState::New => InitialClusterState::New,
                ClusterState::Existing => InitialClusterState::Existing,
            },
            initial_cluster_token: self.initial_cluster_token,
            force_new_cluster: self.force_new_cluster,
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval),
            election_timeout: Duration::from_millis(self.election_timeout),
            limits: Limits {
                max_request_bytes: self.max_request_bytes,
                max_txn_ops: self.max_txn_ops,
                quota_backend_bytes: if self.quota_backend_bytes == 0 {
                    Limits::default().quota_backend_bytes
                } else {
                    self.quota_backend_bytes
                },
                snapshot_stall_timeout: self
                    .experimental_snapshot_stall_timeout
                    .unwrap_or(concord_server::maintenance::SNAPSHOT_STALL_TIMEOUT),
            },
            watch_progress_notify_interval: self.experimental_watch_progress_notify_interval,
            snapshot_count: self.snapshot_count,
            snapshot_catchup_entries: self.experimental_snapshot_catchup_entries,
            stamped_revisions: self.experimental_stamped_revisions,
            initial_shards: self.experimental_initial_shards,
            sabotage: self.unsafe_sabotage.map(|s| match s {
                SabotageArg::StaleReads => Sabotage::StaleReads,
                SabotageArg::UncheckedTxnDepth => Sabotage::UncheckedTxnDepth,
            }),
            client_tls,
            peer_tls,
            auth: AuthConfig {
                token: self.auth_token,
                token_ttl: Duration::from_secs(self.auth_token_ttl.max(1)),
                bcrypt_cost: self.bcrypt_cost,
            },
            encryption_key_file: self.encryption_key_file,
            auto_compaction,
            corrupt_check: concord_server::CorruptCheck {
                initial: self.experimental_initial_corrupt_check,
                periodic: Some(self.experimental_corrupt_check_time).filter(|d| !d.is_zero()),
                after_compaction: Some(self.experimental_compact_hash_check_time)
                    .filter(|_| self.experimental_compact_hash_check_enabled),
            },
            listen_client_http_urls: self
                .listen_client_http_urls
                .into_iter()
                .filter(|u| !u.is_empty())
                .collect(),
            socket_options: concord_server::SocketOptions {
                reuse_port: self.socket_reuse_port,
                reuse_address: self.socket_reuse_address,
            },
            warning_apply_duration: self.experimental_warning_apply_duration,
            stop_grpc_service_on_defrag: self.experimental_stop_grpc_service_on_defrag,
            max_pending_proposal_bytes: self.max_pending_proposal_bytes,
            lease_checkpoint_interval: Some(self.experimental_lease_checkpoint_interval)
                .filter(|_| self.experimental_enable_lease_checkpoint),
            http_access,
        })
    }
}

/// One side's TLS flags as a [`TlsFiles`]: none when no certificate is given; an error when only
/// half of a pair is, or when certificate authentication has no CA to check against.
fn tls_files(
    cert: (&str, Option<PathBuf>),
    key: (&str, Option<PathBuf>),
    ca: (&str, Option<PathBuf>),
    cert_auth: (&str, bool),
    crl_file: Option<PathBuf>,
    policy: &TlsPolicy,
) -> Result<Option<TlsFiles>, String> {
    let files = match (cert.1, key.1) {
        (None, None) => None,
        (Some(cert_file), Some(key_file)) => Some(TlsFiles {
            cert_file,
            key_file,
            trusted_ca_file: ca.1,
            client_cert_auth: cert_auth.1,
            crl_file,
            policy: policy.clone(),
            skip_server_verification: false,
            allowed: AllowedNames::Any,
            client_cert_file: None,
            client_key_file: None,
        }),
        (Some(_), None) => return Err(format!("{} needs {}", cert.0, key.0)),
        (None, Some(_)) => return Err(format!("{} needs {}", key.0, cert.0)),
    };
    match &files {
        None if cert_auth.1 => Err(format!("{} needs {} and {}", cert_auth.0, cert.0, key.0)),
        Some(f) if f.client_cert_auth && f.trusted_ca_file.is_none() => Err(format!("{} needs {}", cert_auth.0, ca.0)),
        _ => Ok(files),
    }
}

/// Sets which certificates a side accepts from the other by name (etcd's `--*-cert-allowed-*`
/// flags: `(common names, hostnames)`). As in etcd they need that side's certificates, both kinds
/// together are refused, and generated certificates (`--auto-tls`, `--peer-auto-tls`) drop them.
/// `checks_servers`: the names bind the servers the member connects to as well (peer links).
fn allowed_names(
    flags: &str,
    files: &mut Option<TlsFiles>,
    (self_signed, checks_servers): (bool, bool),
    (common_names, hostnames): (&[String], &[String]),
) -> Result<(), String> {
    let given = |names: &[String]| names.iter().any(|n| !n.is_empty());
    if !given(common_names) && !given(hostnames) {
        return Ok(());
    }
    match files.as_mut() {
        None => tracing::warn!("{flags} is ignored without the side's certificate and key files"),
        Some(_) if self_signed => tracing::warn!("{flags} is ignored with generated certificates, as etcd ignores it"),
        Some(files) => {
            if !files.client_cert_auth && files.trusted_ca_file.is_none() && !checks_servers {
                tracing::warn!("{flags} has no effect without a trusted CA file: no client certificate is asked for");
            }
            files.allowed = AllowedNames::from_flags(common_names, hostnames)?;
        }
    }
    Ok(())
}

/// Sets the certificate a side's outgoing connections present (etcd's `--client-cert-file` and
/// `--peer-client-cert-file` with their keys): both or neither must be given, as etcd requires.
/// Without the side's own certificate they have nothing to stand in for in etcd, and are ignored
/// with a warning.
fn outgoing_identity(
    files: &mut Option<TlsFiles>,
    cert: (&str, Option<PathBuf>),
    key: (&str, Option<PathBuf>),
    server_cert_flag: &str,
) -> Result<(), String> {
    // etcd's empty default means "not given".
    let given = |path: Option<PathBuf>| path.filter(|p| !p.as_os_str().is_empty());
    let pair = match (given(cert.1), given(key.1)) {
        (None, None) => return Ok(()),
        (Some(cert_file), Some(key_file)) => (cert_file, key_file),
        (Some(_), None) => return Err(format!("{} needs {}", cert.0, key.0)),
        (None, Some(_)) => return Err(format!("{} needs {}", key.0, cert.0)),
    };
    match files.as_mut() {
        Some(files) => {
            files.client_cert_file = Some(pair.0);
            files.client_key_file = Some(pair.1);
        }
        None => tracing::warn!("{} is ignored without {server_cert_flag}", cert.0),
    }
    Ok(())
}

/// One side's certificate and key: as given, or generated under `dir` (see [`crate::auto_tls`])
/// when `auto` is set and none are given, as etcd does; the flag says whether they were generated.
fn auto_tls_files(
    side: &str,
    (auto, cert_file, key_file): (bool, Option<PathBuf>, Option<PathBuf>),
    dir: &std::path::Path,
    urls: &[String],
    validity_years: u32,
) -> Result<(Option<PathBuf>, Option<PathBuf>, bool), String> {
    if !auto {
        return Ok((cert_file, key_file, false));
    }
    if cert_file.is_some() || key_file.is_some() {
        tracing::warn!("ignoring {side} auto TLS since certs given");
        return Ok((cert_file, key_file, false));
    }
    let made = crate::auto_tls::self_cert(dir, urls, validity_years)?;
    Ok((Some(made.cert_file), Some(made.key_file), true))
}

/// Runs one member until SIGINT or SIGTERM. A fault of the member's own storage ends the
/// process with exit code 2, as etcd's fatal errors do, so a supervisor tells it from bad flags.
pub async fn run(args: ServeArgs, command_line: &[std::ffi::OsString]) -> Result<(), String> {
    check_etcd_flags(command_line)?;
    let discovery = args.discovery.clone();
    // Go's flags leave an empty value unset (etcd's sample config file has `initial-cluster:`).
    let initial_cluster_given = args.initial_cluster.as_deref().is_some_and(|c| !c.is_empty());
    discovery.check(initial_cluster_given)?;
    let mut cfg = args.into_config()?;
    if let Some(migrated) = crate::snapshot::migrate::etcd_data_dir(&cfg)? {
        tracing::info!("{migrated}");
    }
    discovery.bootstrap(&mut cfg, initial_cluster_given).await?;
    match concord_server::serve(cfg, crate::stop_signal()).await {
        Ok(()) => Ok(()),
        Err(concord_server::ServeError::Fault(reason)) => {
            eprintln!("fatal: {reason}");
            std::process::exit(2);
        }
        Err(e) => Err(e.to_string()),
    }
}

/// etcd's checks of the process's command line and `ETCD_*` variables (see
/// [`crate::etcd_flags::review`]): logs a warning line for each flag Concord ignores, and refuses
/// what it cannot run safely without, before anything is opened.
fn check_etcd_flags(command_line: &[std::ffi::OsString]) -> Result<(), String> {
    let line = crate::goflags::scan(command_line);
    let env: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
        .collect();
    let review = crate::etcd_flags::review(&line, &env, &crate::goflags::clap_flags())?;
    for warning in &review.warnings {
        tracing::warn!("{warning}");
    }
    Ok(())
}

/// `--data-dir`, or etcd's default `<name>.etcd`.
fn data_dir(name: &str, data_dir: Option<&std::path::Path>) -> PathBuf {
    data_dir.map_or_else(|| PathBuf::from(format!("{name}.etcd")), std::path::Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::{parse_duration, parse_escaped_key};
    use std::time::Duration;

    #[test]
    fn shard_keys_take_hex_escapes() {
        assert_eq!(parse_escaped_key("m").unwrap(), b"m");
        assert_eq!(parse_escaped_key("\\x80").unwrap(), vec![0x80]);
        assert_eq!(parse_escaped_key("a\\xffb\\\\").unwrap(), b"a\xffb\\".to_vec());
        assert!(parse_escaped_key("\\x8").is_err());
        assert!(parse_escaped_key("\\xzz").is_err());
        assert!(parse_escaped_key("\\n").is_err());
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1d").is_err());
    }

    /// `concord serve` with `args`, as far as its [`concord_server::ServerConfig`].
    fn config(args: &[&str]) -> Result<concord_server::ServerConfig, String> {
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: super::ServeArgs,
        }
        let serve = <Serve as clap::Parser>::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        serve.args.into_config()
    }

    #[test]
    fn etcd_35_listener_and_apply_flags_reach_the_config() {
        let defaults = config(&[]).unwrap();
        assert_eq!(defaults.warning_apply_duration, Duration::from_millis(100));
        assert_eq!(defaults.socket_options, concord_server::SocketOptions::default());
        assert!(defaults.listen_client_http_urls.is_empty());

        let set = config(&[
            "--experimental-warning-apply-duration=250ms",
            "--socket-reuse-port",
            "--socket-reuse-address=true",
            "--listen-client-http-urls=http://127.0.0.1:1,http://127.0.0.1:2",
        ])
        .unwrap();
        assert_eq!(set.warning_apply_duration, Duration::from_millis(250));
        assert!(set.socket_options.reuse_port && set.socket_options.reuse_address);
        assert_eq!(
            set.listen_client_http_urls,
            ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        assert!(config(&["--experimental-warning-apply-duration=0s"]).is_err());
    }

    #[test]
    fn outgoing_certificates_come_in_pairs() {
        let tls = [
            "--cert-file=c.pem",
            "--key-file=k.pem",
            "--peer-cert-file=c.pem",
            "--peer-key-file=k.pem",
        ];
        let with = |extra: &[&str]| config(&[&tls[..], extra].concat());
        let set = with(&["--client-cert-file=cc.pem", "--client-key-file=ck.pem"]).unwrap();
        let client = set.client_tls.unwrap();
        assert_eq!(client.client_cert_file.as_deref(), Some(std::path::Path::new("cc.pem")));
        assert_eq!(client.client_key_file.as_deref(), Some(std::path::Path::new("ck.pem")));
        // The peer side keeps presenting its own certificate.
        assert_eq!(set.peer_tls.unwrap().client_cert_file, None);
        let half = with(&["--peer-client-cert-file=pc.pem"]).unwrap_err();
        assert!(
            half.contains("--peer-client-cert-file needs --peer-client-key-file"),
            "{half}"
        );
    }

    #[test]
    fn generated_certificates_drop_the_ca_and_client_authentication_as_etcds_self_cert() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = format!("--data-dir={}", dir.path().display());
        let set = config(&[
            &data_dir,
            "--auto-tls",
            "--listen-client-urls=https://127.0.0.1:2379",
            "--trusted-ca-file=ca.pem",
            "--client-cert-auth",
        ])
        .unwrap();
        let client = set.client_tls.unwrap();
        assert!(client.skip_server_verification);
        assert_eq!(client.trusted_ca_file, None);
        assert!(!client.client_cert_auth);
        // Given certificates keep them.
        let given = config(&["--cert-file=c.pem", "--key-file=k.pem", "--trusted-ca-file=ca.pem"]).unwrap();
        assert!(given.client_tls.unwrap().trusted_ca_file.is_some());
    }

    #[test]
    fn certificate_names_and_http_access_reach_the_config() {
        use concord_tls::AllowedNames;
        let set = config(&[
            "--cert-file=c.pem",
            "--key-file=k.pem",
            "--trusted-ca-file=ca.pem",
            "--client-cert-auth",
            "--peer-cert-file=c.pem",
            "--peer-key-file=k.pem",
            "--client-cert-allowed-hostname=a.example,10.0.0.1",
            "--peer-cert-allowed-cn=etcd peer",
            "--host-whitelist=example.com",
            "--cors=http://a.example:8080",
        ])
        .unwrap();
        assert_eq!(
            set.client_tls.unwrap().allowed,
            AllowedNames::Hostnames(vec!["a.example".into(), "10.0.0.1".into()])
        );
        assert_eq!(
            set.peer_tls.unwrap().allowed,
            AllowedNames::CommonNames(vec!["etcd peer".into()])
        );
        assert!(set.http_access.host_whitelist.allows("example.com"));
        assert!(!set.http_access.host_whitelist.allows("127.0.0.1"));
        assert!(set.http_access.cors.allows("http://a.example:8080"));
        assert!(!set.http_access.cors.allows("http://b.example:8080"));
        assert_eq!(config(&[]).unwrap().http_access, Default::default());
        // Without that side's certificates etcd never reads them, so neither does Concord.
        assert!(config(&["--peer-cert-allowed-cn=a", "--peer-cert-allowed-hostname=b"]).is_ok());
        assert!(config(&["--cors=localhost"]).is_err());
    }
}
