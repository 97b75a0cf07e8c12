//! Consensus for Concord: each key range is owned by a Raft group driven by
//! raft-rs, with its log on raft-engine and its messages on a gRPC transport.
//!
//! - [`log_store`]: the durable log of a group (raft-engine), raft-rs's `Storage`, with the
//!   log's tail cached in memory (`entry_cache`).
//! - [`node`]: the driver thread of a group and the async [`RaftHandle`] callers use.
//! - [`admission`]: back-pressure, etcd's "too many requests" when apply lags or too many
//!   proposal bytes are in flight.
//! - `read_loop`: linearizable reads handed to the driver in batches.
//! - [`state_machine`]: the contract for what committed entries are applied to.
//! - [`snapshot`]: snapshots built off the driver thread and shipped as files.
//! - [`transport`]: batched, streaming peer-to-peer delivery of Raft messages.
//! - [`force_new_cluster`]: etcd's `--force-new-cluster`, a log rewritten to one voter.
//!
//! Invariants: a proposal is answered only after its entry is committed (durable
//! on a quorum) and applied on the answering member; a linearizable read is
//! served only after the local apply has reached the leader's commit index
//! obtained through ReadIndex.

pub mod admission;
mod entry_cache;
pub mod error;
pub mod force_new_cluster;
pub mod hibernation;
pub mod log_store;
mod logging;
pub mod metrics;
pub mod node;
mod proposal_batch;
mod read_loop;
pub mod snapshot;
pub mod stamping;
pub mod state_machine;
pub mod status;
pub mod transport;

pub use error::RaftError;
pub use node::{start_group, GroupConfig, RaftHandle, DEFAULT_WARNING_APPLY_DURATION};
/// The log engine every group of a member shares (see [`log_store::open_engine`]).
pub use raft_engine::Engine as LogEngine;
pub use snapshot::{BuiltSnapshot, SnapshotJob};
pub use stamping::RevisionSource;
pub use state_machine::{Committed, ConfChangeApplied, MemberChangeKind, StateMachine};
pub use status::{GroupStatus, PeerProgress, Role};
pub use transport::{MessageSink, PeerTransport, RaftInbox};
