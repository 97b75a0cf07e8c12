//! Prometheus metrics of a member, under etcd's names where etcd has them, so that the
//! dashboards and alerts people already run against etcd read Concord unchanged.
//!
//! - This module: the member-level gauges and counters, and [`render`], which refreshes the
//!   gauges from the member's state and encodes every registered metric in the text format.
//! - [`grpc`]: `grpc_server_*` counters and latencies, recorded by a layer around the client
//!   services.
//! - [`probe`]: background work that feeds metrics: leader changes, peer round trips.
//! - [`process`]: `process_*` metrics read from `/proc`.
//! - [`rates`]: a short history of request rates and latencies for the dashboard.
//!
//! Metrics live in the process-wide default registry (the Raft layer and raft-engine register
//! theirs there too). One `concord serve` is one member, so that is one member's metrics;
//! `concord dev`, which runs three members in one process, reports the sum for counters.

pub mod grpc;
pub mod probe;
mod process;
pub mod rates;

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, register_histogram, register_histogram_vec, register_int_counter, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, TextEncoder,
};

use crate::context::MemberContext;

macro_rules! gauge {
    ($name:ident, $metric:literal, $help:literal) => {
        #[doc = $help]
        pub static $name: LazyLock<IntGauge> =
            LazyLock::new(|| register_int_gauge!($metric, $help).expect("metric registered once"));
    };
}

macro_rules! counter {
    ($name:ident, $metric:literal, $help:literal) => {
        #[doc = $help]
        pub static $name: LazyLock<IntCounter> =
            LazyLock::new(|| register_int_counter!($metric, $help).expect("metric registered once"));
    };
}

gauge!(
    HAS_LEADER,
    "etcd_server_has_leader",
    "Whether or not a leader exists. 1 is existence, 0 is not."
);
gauge!(
    IS_LEADER,
    "etcd_server_is_leader",
    "Whether or not this member is a leader. 1 if is, 0 otherwise."
);
gauge!(
    IS_LEARNER,
    "etcd_server_is_learner",
    "Whether or not this member is a learner. 1 if is, 0 otherwise."
);
counter!(
    LEADER_CHANGES,
    "etcd_server_leader_changes_seen_total",
    "The number of leader changes seen."
);
gauge!(
    PROPOSALS_COMMITTED,
    "etcd_server_proposals_committed_total",
    "The total number of consensus proposals committed."
);
gauge!(
    PROPOSALS_APPLIED,
    "etcd_server_proposals_applied_total",
    "The total number of consensus proposals applied."
);
gauge!(
    PROPOSALS_PENDING,
    "etcd_server_proposals_pending",
    "The current number of pending proposals to commit."
);
counter!(
    ORACLE_ROUNDS,
    "concord_revision_oracle_rounds_total",
    "Rounds of allocations the revision oracle confirmed (one ReadIndex round each), on its leader."
);
counter!(
    ORACLE_CALLS,
    "concord_revision_oracle_calls_total",
    "Calls for revisions the revision oracle answered, on its leader."
);
counter!(
    ORACLE_REVISIONS,
    "concord_revision_oracle_revisions_total",
    "Revisions the revision oracle handed out, on its leader."
);
counter!(
    SHARD_FORWARDS,
    "concord_shard_forwarded_requests_total",
    "KV calls this member sent on to a member holding their shard."
);
counter!(
    PROPOSALS_FAILED,
    "etcd_server_proposals_failed_total",
    "The total number of failed proposals seen."
);
gauge!(
    DB_TOTAL_SIZE,
    "etcd_mvcc_db_total_size_in_bytes",
    "Total size of the underlying database physically allocated in bytes."
);
gauge!(DB_TOTAL_SIZE_DEBUGGING, "etcd_debugging_mvcc_db_total_size_in_bytes", "Total size of the underlying database physically allocated in bytes (etcd 3.4's name, which older dashboards use).");
gauge!(
    QUOTA_BACKEND_BYTES,
    "etcd_server_quota_backend_bytes",
    "Current backend storage quota size in bytes."
);
gauge!(
    CURRENT_REVISION,
    "etcd_debugging_mvcc_current_revision",
    "The current revision of store."
);
gauge!(
    COMPACT_REVISION,
    "etcd_debugging_mvcc_compact_revision",
    "The revision of the last compaction in store."
);
counter!(
    MVCC_PUTS,
    "etcd_mvcc_put_total",
    "Total number of puts seen by this member."
);
counter!(
    MVCC_DELETES,
    "etcd_mvcc_delete_total",
    "Total number of deletes seen by this member."
);
counter!(
    MVCC_TXNS,
    "etcd_mvcc_txn_total",
    "Total number of txns seen by this member."
);
counter!(
    MVCC_RANGES,
    "etcd_mvcc_range_total",
    "Total number of ranges seen by this member."
);

/// etcd's `etcd_server_id`: a constant 1 labelled with this member's id in hex.
pub static SERVER_ID: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "etcd_server_id",
        "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
        &["server_id"]
    )
    .expect("metric registered once")
});

/// etcd's `etcd_server_version`: a constant 1 labelled with the etcd API version served.
pub static SERVER_VERSION: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "etcd_server_version",
        "Which version is running. 1 for 'server_version' label with current version.",
        &["server_version"]
    )
    .expect("metric registered once")
});

/// etcd's `etcd_disk_backend_commit_duration_seconds`: one sample per batch of entries
/// applied to the MVCC store (one redb commit).
pub static BACKEND_COMMIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
        exponential_buckets(0.001, 2.0, 14).expect("valid buckets")
    )
    .expect("metric registered once")
});

/// etcd's `etcd_network_peer_round_trip_time_seconds`, labelled `To` with the peer's id in hex.
pub static PEER_ROUND_TRIP_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "etcd_network_peer_round_trip_time_seconds",
        "Round-Trip-Time histogram between peers",
        &["To"],
        exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")
    )
    .expect("metric registered once")
});

/// etcd's `etcd_network_peer_sent_failures_total`, labelled `To`: probes that got no answer.
pub static PEER_PROBE_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "etcd_network_peer_sent_failures_total",
        "The total number of send failures from peers.",
        &["To"]
    )
    .expect("metric registered once")
});

/// Concord's per-group Raft state, labelled by group: term, log positions, role. With many
/// groups per member, one series per group.
pub static GROUP_STATE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "concord_raft_group_state",
        "Raft state of each group on this member: term, commit_index, applied_index, last_index, is_leader, voters, learners.",
        &["group", "field"]
    )
    .expect("metric registered once")
});

/// On a group's leader: how far each member's log matches the leader's, and how far it lags.
pub static GROUP_FOLLOWER: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "concord_raft_group_follower",
        "On a group's leader, each member's replication: match_index, lag (leader's last index minus match), active (1 if heard from recently).",
        &["group", "member", "field"]
    )
    .expect("metric registered once")
});

/// Refreshes the gauges that mirror the member's state, then encodes every metric in the
/// process's registry in Prometheus's text format.
pub fn render(ctx: &MemberContext) -> String {
    refresh(ctx);
    process::refresh();
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&prometheus::gather(), &mut out) {
        tracing::warn!("cannot encode metrics: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn refresh(ctx: &MemberContext) {
    let me = ctx.membership.local_id();
    SERVER_ID.reset();
    SERVER_ID.with_label_values(&[&format!("{me:x}")]).set(1);
    SERVER_VERSION
        .with_label_values(&[crate::maintenance::ETCD_API_VERSION])
        .set(1);
    let main = ctx.router.default_group().status();
    HAS_LEADER.set((main.leader_id != 0) as i64);
    IS_LEADER.set((main.leader_id == me) as i64);
    IS_LEARNER.set(main.learners.contains(&me) as i64);
    PROPOSALS_COMMITTED.set(main.commit_index as i64);
    PROPOSALS_APPLIED.set(main.applied_index as i64);
    PROPOSALS_PENDING.set(main.commit_index.saturating_sub(main.applied_index) as i64);
    DB_TOTAL_SIZE.set(ctx.store.db_size() as i64);
    DB_TOTAL_SIZE_DEBUGGING.set(ctx.store.db_size() as i64);
    QUOTA_BACKEND_BYTES.set(ctx.limits.quota_backend_bytes as i64);
    CURRENT_REVISION.set(ctx.store.current_revision());
    COMPACT_REVISION.set(ctx.store.compact_revision().max(0));

    GROUP_STATE.reset();
    GROUP_FOLLOWER.reset();
    for group in ctx.router.groups() {
        let s = group.status();
        let id = s.group_id.to_string();
        let fields = [
            ("term", s.term),
            ("commit_index", s.commit_index),
            ("applied_index", s.applied_index),
            ("last_index", s.last_index),
            ("is_leader", (s.leader_id == me) as u64),
            ("voters", s.voters.len() as u64),
            ("learners", s.learners.len() as u64),
        ];
        for (field, value) in fields {
            GROUP_STATE.with_label_values(&[&id, field]).set(value as i64);
        }
        for p in &s.progress {
            let member = format!("{:x}", p.member_id);
            let lag = s.last_index.saturating_sub(p.matched);
            for (field, value) in [
                ("match_index", p.matched),
                ("lag", lag),
                ("active", p.recent_active as u64),
            ] {
                GROUP_FOLLOWER
                    .with_label_values(&[&id, &member, field])
                    .set(value as i64);
            }
        }
    }
}
