//! What the Raft layer reports to Prometheus, under etcd's names where etcd has them, so that
//! dashboards and alerts written for etcd read Concord unchanged.
//!
//! The metrics live in the process-wide default registry; the server's `/metrics` handler
//! gathers that registry.

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
    Histogram, IntCounter, IntCounterVec, IntGauge,
};

/// etcd's `etcd_disk_wal_fsync_duration_seconds`: how long a synced write of the Raft log
/// took. Every group's batch goes through one engine write, so this is one sample per fsync.
pub static WAL_FSYNC_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
        exponential_buckets(0.001, 2.0, 14).expect("valid buckets")
    )
    .expect("metric registered once")
});

/// Groups on this member that are not ticking now, being idle (see `hibernation.rs`).
pub static HIBERNATING_GROUPS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "concord_raft_hibernating_groups",
        "Raft groups on this member that stopped ticking while idle."
    )
    .expect("metric registered once")
});

/// etcd's `etcd_disk_wal_write_bytes_total`: bytes handed to the Raft log.
pub static WAL_WRITE_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "etcd_disk_wal_write_bytes_total",
        "Total number of bytes written in WAL."
    )
    .expect("metric registered once")
});

/// etcd's `etcd_server_snapshot_apply_in_progress_total` has no counterpart here; this counts
/// snapshots a member received and installed, a sign of a member that fell behind.
pub static SNAPSHOTS_INSTALLED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "concord_raft_snapshots_installed_total",
        "Snapshots received from a leader and installed by this member."
    )
    .expect("metric registered once")
});

/// etcd's `etcd_network_peer_sent_bytes_total`, labelled `To` with the peer's id in hex: Raft
/// message bytes streamed to each peer.
pub static PEER_SENT_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "etcd_network_peer_sent_bytes_total",
        "The total number of bytes sent to peers.",
        &["To"]
    )
    .expect("metric registered once")
});

/// etcd's `etcd_network_peer_received_bytes_total`, labelled `From` with the peer's id in hex.
pub static PEER_RECEIVED_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "etcd_network_peer_received_bytes_total",
        "The total number of bytes received from peers.",
        &["From"]
    )
    .expect("metric registered once")
});
