//! The cluster view: every member, which one leads, and each member's health, Raft and store
//! numbers.
//!
//! This member's numbers come from its own state; every other member is asked for its
//! Maintenance.Status over gRPC at its advertised client URL, all at once, each with a short
//! timeout. A member that does not answer shows as unreachable; the view itself never fails.
//! Views are shared by every open page and taken at most about once a second.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::Json;
use concord_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use concord_proto::etcdserverpb::{Member, StatusRequest, StatusResponse};
use serde::Serialize;

use super::{hex_id, ApiError, Dashboard};
use crate::maintenance::{alarm_errors, alarm_name, ETCD_API_VERSION};

/// How long another member has to answer its Status.
const PEER_TIMEOUT: Duration = Duration::from_secs(1);
/// A view this recent is served again rather than taken anew.
pub const FRESH_ENOUGH: Duration = Duration::from_millis(800);

/// The whole cluster, as this member sees it.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterView {
    /// When the view was taken, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The cluster id, in hex.
    pub cluster_id: String,
    /// The member serving the dashboard, in hex.
    pub served_by: String,
    /// The leader with the highest term any answering member reports; `None` when none knows one.
    pub leader: Option<String>,
    /// That leader's term.
    pub term: u64,
    /// This member's store revision.
    pub revision: i64,
    /// This member's store file size in bytes.
    pub db_size: u64,
    /// Whether auth is enabled (the page then asks for a login before reading keys).
    pub auth_enabled: bool,
    /// Every member, in membership order.
    pub members: Vec<MemberView>,
    /// The raised alarms.
    pub alarms: Vec<AlarmView>,
    /// The shards, ascending by start key, as this member sees them.
    pub shards: Vec<ShardView>,
}

/// One shard (see `crate::shards`).
#[derive(Clone, Debug, Serialize)]
pub struct ShardView {
    /// Its id.
    pub id: u64,
    /// Its first key, as text (lossy UTF-8).
    pub start: String,
    /// The first key past it, as text; empty for the end of the keyspace.
    pub end: String,
    /// Its epoch, `version.conf_ver`.
    pub epoch: String,
    /// The members holding a replica, in hex.
    pub replicas: Vec<String>,
    /// Those that are learners, in hex.
    pub learners: Vec<String>,
    /// Its leader, in hex; `None` when none is known.
    pub leader: Option<String>,
    /// Its store's size on this member, in bytes.
    pub db_size: i64,
    /// The last index this member applied to it.
    pub applied_index: u64,
}

fn shard_view(shard: &concord_proto::concordpb::Shard) -> ShardView {
    let epoch = shard.epoch.unwrap_or_default();
    ShardView {
        id: shard.id,
        start: String::from_utf8_lossy(&shard.start).into_owned(),
        end: String::from_utf8_lossy(&shard.end).into_owned(),
        epoch: format!("{}.{}", epoch.version, epoch.conf_ver),
        replicas: shard.replicas.iter().map(|&id| hex_id(id)).collect(),
        learners: shard.learners.iter().map(|&id| hex_id(id)).collect(),
        leader: (shard.leader != 0).then(|| hex_id(shard.leader)),
        db_size: shard.db_size,
        applied_index: shard.applied_index,
    }
}

/// One member.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    /// Its id, in hex.
    pub id: String,
    /// Its name (empty until it has published itself).
    pub name: String,
    /// Its advertised client URLs.
    pub client_urls: Vec<String>,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
    /// Whether it is a learner (a non-voting member).
    pub is_learner: bool,
    /// Whether it is the view's leader.
    pub is_leader: bool,
    /// Whether it is the member serving the dashboard.
    pub is_self: bool,
    /// Whether it answered, knows a leader and has no alarm.
    pub healthy: bool,
    /// Why it is or is not healthy: `healthy`, `no leader`, `alarm`, or why it did not answer.
    pub health: String,
    /// The leader's commit index minus this member's applied index, when both are known.
    pub lag: Option<u64>,
    /// What it reported, if it answered.
    pub status: Option<MemberStatus>,
}

/// A member's own report of itself: what its Maintenance.Status says.
#[derive(Clone, Debug, Serialize)]
pub struct MemberStatus {
    /// Who it thinks leads, in hex; `None` when it knows no leader.
    pub leader: Option<String>,
    /// Its Raft term.
    pub term: u64,
    /// Its Raft commit index.
    pub commit_index: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// Its store revision.
    pub revision: i64,
    /// Its store file size in bytes.
    pub db_size: i64,
    /// The etcd API version it implements.
    pub version: String,
    /// Its errors: the alarms it reports, as etcd's Status lists them.
    pub errors: Vec<String>,
}

/// One raised alarm.
#[derive(Clone, Debug, Serialize)]
pub struct AlarmView {
    /// The member it was raised for, in hex.
    pub member_id: String,
    /// That member's name, when known.
    pub member_name: String,
    /// `NOSPACE` or `CORRUPT`.
    pub alarm: &'static str,
}

/// `GET /ui/api/cluster`.
pub async fn get_cluster(State(dashboard): State<Arc<Dashboard>>) -> Json<ClusterView> {
    Json((*dashboard.cluster(FRESH_ENOUGH).await).clone())
}

/// `GET /ui/api/alarms`.
pub async fn get_alarms(State(dashboard): State<Arc<Dashboard>>) -> Result<Json<Vec<AlarmView>>, ApiError> {
    let ctx = &dashboard.http.ctx;
    let alarms = ctx.store.alarms().map_err(crate::errors::from_kv)?;
    Ok(Json(alarm_views(&alarms, &ctx.membership.members())))
}

impl Dashboard {
    /// A view no older than `max_age`: the shared one, or a new one.
    pub(super) async fn cluster(&self, max_age: Duration) -> Arc<ClusterView> {
        let mut cached = self.view.lock().await;
        if let Some((taken, view)) = cached.as_ref() {
            if taken.elapsed() <= max_age {
                return view.clone();
            }
        }
        let view = Arc::new(self.take_view().await);
        *cached = Some((Instant::now(), view.clone()));
        view
    }

    async fn take_view(&self) -> ClusterView {
        let ctx = &self.http.ctx;
        let me = ctx.membership.local_id();
        let members = ctx.membership.members();
        let reports = futures::future::join_all(members.iter().map(|m| async move {
            if m.id == me {
                Ok(self.local_status())
            } else {
                self.remote_status(m).await
            }
        }))
        .await;

        // The leader with the highest term among the reports: after a failover, members that
        // have not heard of the election yet still name the old one at an older term.
        let (term, leader_id) = reports
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter(|s| s.leader != 0)
            .map(|s| (s.raft_term, s.leader))
            .max()
            .unwrap_or((ctx.router.default_group().term(), 0));
        let leader_commit = members
            .iter()
            .zip(&reports)
            .find(|(m, _)| m.id == leader_id)
            .and_then(|(_, r)| r.as_ref().ok())
            .map(|s| s.raft_index);

        let views = members
            .iter()
            .zip(reports)
            .map(|(m, report)| member_view(m, report, me, leader_id, leader_commit))
            .collect();
        let alarms = ctx
            .store
            .alarms()
            .map(|a| alarm_views(&a, &members))
            .unwrap_or_default();
        ClusterView {
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            cluster_id: hex_id(ctx.membership.cluster_id()),
            served_by: hex_id(me),
            leader: (leader_id != 0).then(|| hex_id(leader_id)),
            term,
            revision: ctx.store.current_revision(),
            db_size: ctx.store.db_size(),
            auth_enabled: ctx.auth.enabled(),
            members: views,
            alarms,
            shards: crate::shards::describe_all(ctx).iter().map(shard_view).collect(),
        }
    }

    /// This member's numbers, from its own state, shaped as its Status would answer.
    fn local_status(&self) -> StatusResponse {
        let ctx = &self.http.ctx;
        let group = ctx.router.default_group().status();
        StatusResponse {
            header: Some(ctx.header(ctx.store.current_revision())),
            version: ETCD_API_VERSION.to_string(),
            db_size: ctx.store.db_size() as i64,
            leader: group.leader_id,
            raft_index: group.commit_index,
            raft_term: group.term,
            raft_applied_index: group.applied_index,
            errors: ctx.store.alarms().map(|a| alarm_errors(&a)).unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Another member's Status, or why it could not be had.
    async fn remote_status(&self, member: &Member) -> Result<StatusResponse, String> {
        let ctx = &self.http.ctx;
        let url = member.client_ur_ls.first().ok_or("no client URL known yet")?;
        let channel = self
            .peers
            .channel(url, &ctx.client_dialer)
            .map_err(|e| e.message().to_string())?;
        let mut client = MaintenanceClient::new(channel);
        let call = client.status(StatusRequest {});
        match tokio::time::timeout(PEER_TIMEOUT, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(format!("unreachable: {}", status.message())),
            Err(_) => Err(format!("unreachable: no answer within {PEER_TIMEOUT:?}")),
        }
    }
}

fn member_view(
    member: &Member,
    report: Result<StatusResponse, String>,
    me: u64,
    leader_id: u64,
    leader_commit: Option<u64>,
) -> MemberView {
    let (healthy, health, lag, status) = match report {
        Err(why) => (false, why, None, None),
        Ok(s) => {
            let health = if s.leader == 0 {
                "no leader"
            } else if !s.errors.is_empty() {
                "alarm"
            } else {
                "healthy"
            };
            let lag = leader_commit.map(|commit| commit.saturating_sub(s.raft_applied_index));
            let status = MemberStatus {
                leader: (s.leader != 0).then(|| hex_id(s.leader)),
                term: s.raft_term,
                commit_index: s.raft_index,
                applied_index: s.raft_applied_index,
                revision: s.header.as_ref().map_or(0, |h| h.revision),
                db_size: s.db_size,
                version: s.version,
                errors: s.errors,
            };
            (health == "healthy", health.to_string(), lag, Some(status))
        }
    };
    MemberView {
        id: hex_id(member.id),
        name: member.name.clone(),
        client_urls: member.client_ur_ls.clone(),
        peer_urls: member.peer_ur_ls.clone(),
        is_learner: member.is_learner,
        is_leader: leader_id != 0 && member.id == leader_id,
        is_self: member.id == me,
        healthy,
        health,
        lag,
        status,
    }
}

fn alarm_views(alarms: &[concord_proto::etcdserverpb::AlarmMember], members: &[Member]) -> Vec<AlarmView> {
    alarms
        .iter()
        .map(|a| AlarmView {
            member_id: hex_id(a.member_id),
            member_name: members
                .iter()
                .find(|m| m.id == a.member_id)
                .map(|m| m.name.clone())
                .unwrap_or_default(),
            alarm: alarm_name(a.alarm),
        })
        .collect()
}
