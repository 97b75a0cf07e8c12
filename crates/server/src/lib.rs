//! The member process of Concord: etcd's v3 gRPC services on top of Raft groups.
//!
//! - [`member`]: starts and stops a member (storage, Raft group, listeners).
//! - [`router`]: which group owns a key; the only module that knows the split.
//! - [`kv`], [`watch`], [`cluster`], [`maintenance`], [`lease`], [`lock`], [`election`]: etcd's services.
//! - [`apply`]: the state machine a group's log is applied to.
//! - [`auth`]: authentication (tokens, identities) and authorization checks; etcd's Auth service.
//! - [`membership`]: member and cluster ids, names and URLs.
//! - [`validate`]: etcd's request checks.
//! - [`errors`]: every error a client gets, with etcd's messages and codes, built in one place.
//! - [`metrics`], [`http`]: Prometheus metrics, health endpoints and the web dashboard.
//! - [`corrupt_check`]: etcd's data corruption checks (at start, and periodically on the leader).
//! - [`compact_hash_check`]: the leader compares every member at its latest compaction point.
//! - [`gateway`]: etcd's JSON gRPC gateway (`/v3/...` over HTTP with JSON bodies).

pub mod apply;
pub mod auth;
pub mod client_port;
pub mod cluster;
pub mod compact_hash_check;
pub mod compactor;
pub mod concurrency;
pub mod config;
pub mod context;
pub mod corrupt_check;
pub mod cross_shard_delete;
pub mod cross_shard_read;
mod cross_shard_recovery;
pub mod cross_shard_txn;
pub mod cross_shard_write;
pub mod election;
pub mod errors;
mod fallback;
pub mod forward;
pub mod gateway;
pub mod global_compaction;
pub mod go_duration;
pub mod grpc_health;
mod heap;
pub mod http;
pub mod kv;
pub mod kv_unary;
pub mod lease;
pub mod listen;
pub mod live_router;
pub mod lock;
pub mod maintenance;
pub mod member;
pub mod membership;
pub mod metrics;
pub mod notify;
pub mod peer;
pub mod peer_urls;
pub mod ping_policy;
pub mod quota;
pub mod revision_oracle;
pub mod router;
mod scheme_authority;
pub mod shard_forward;
pub mod shard_groups;
pub mod shard_map;
pub mod shard_move;
pub mod shards;
pub mod snapshot_downloads;
pub mod tls;
pub mod validate;
pub mod watch;

pub use auth::AuthConfig;
pub use compactor::AutoCompaction;
pub use config::{InitialClusterState, Sabotage, ServerConfig};
pub use context::Limits;
pub use corrupt_check::CorruptCheck;
pub use listen::SocketOptions;
pub use member::{serve, ServeError};
