//! `concord endpoint status|health`: how each member is doing, as
//! `etcdctl endpoint` shows it.
//!
//! `status` asks each endpoint for its Maintenance status (member id,
//! version, store size, leader, Raft term and indexes); `health` commits a
//! linearizable read through each endpoint and checks for alarms. Both ask
//! the endpoints given, or with `--cluster` every member's client URLs from
//! the member list. Either exits non-zero when an endpoint fails.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use concord_proto::etcdserverpb::cluster_client::ClusterClient;
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use concord_proto::etcdserverpb::{
    alarm_request, AlarmRequest, AlarmType, MemberListRequest, RangeRequest, StatusRequest, StatusResponse,
};
use serde::Serialize;

use crate::client::{ClusterArgs, Session};
use crate::output::{is_zero, print_json, si_bytes, Align, Format, HeaderJson, OutputArgs, Table};

/// Flags of `concord endpoint`.
#[derive(Args, Debug)]
pub struct EndpointArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Ask every member's client URLs (from the member list) instead of --endpoints.
    #[arg(long = "cluster", global = true)]
    pub cluster_wide: bool,
    #[command(subcommand)]
    pub command: EndpointCommand,
}

/// What to ask the endpoints.
#[derive(Subcommand, Debug)]
pub enum EndpointCommand {
    /// Each endpoint's member id, version, store size, leadership and Raft progress.
    Status,
    /// Whether each endpoint commits a linearizable read, and how long that took.
    Health,
}

/// Runs one `endpoint` subcommand.
pub async fn run(args: EndpointArgs) -> Result<(), String> {
    let endpoints = if args.cluster_wide {
        cluster_endpoints(&args.cluster).await?
    } else {
        given(&args.cluster.endpoints)?
    };
    match args.command {
        EndpointCommand::Status => status(&args.cluster, &endpoints, args.output.write_out).await,
        EndpointCommand::Health => health(&args.cluster, &endpoints, args.output.write_out).await,
    }
}

fn given(endpoints: &[String]) -> Result<Vec<String>, String> {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err("--endpoints: give at least one endpoint".into());
    }
    Ok(endpoints)
}

/// Every member's client URLs, from the member list of the first endpoint that answers.
async fn cluster_endpoints(args: &ClusterArgs) -> Result<Vec<String>, String> {
    let session = Session::connect(args).await?;
    let mut cluster = ClusterClient::new(session.channel.clone());
    let resp = session
        .call(cluster.member_list(session.request(MemberListRequest { linearizable: false })))
        .await?;
    let mut endpoints: Vec<String> = Vec::new();
    for url in resp.members.iter().flat_map(|m| m.client_ur_ls.iter()) {
        if !endpoints.contains(url) {
            endpoints.push(url.clone());
        }
    }
    if endpoints.is_empty() {
        return Err(format!("{}: no member has published client URLs yet", session.endpoint));
    }
    Ok(endpoints)
}

/// etcd's `StatusResponse` in JSON (every field `omitempty`, as in etcd's Go struct).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusJson {
    header: HeaderJson,
    #[serde(skip_serializing_if = "String::is_empty")]
    version: String,
    #[serde(skip_serializing_if = "is_zero")]
    db_size: i64,
    #[serde(skip_serializing_if = "is_zero")]
    leader: u64,
    #[serde(skip_serializing_if = "is_zero")]
    raft_index: u64,
    #[serde(skip_serializing_if = "is_zero")]
    raft_term: u64,
    #[serde(skip_serializing_if = "is_zero")]
    raft_applied_index: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<String>,
    #[serde(skip_serializing_if = "is_zero")]
    db_size_in_use: i64,
    #[serde(skip_serializing_if = "is_zero")]
    is_learner: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    storage_version: String,
    #[serde(skip_serializing_if = "is_zero")]
    db_size_quota: i64,
}

/// One entry of `etcdctl endpoint status -w json`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct EndpointStatusJson {
    endpoint: String,
    status: StatusJson,
}

impl EndpointStatusJson {
    fn of(endpoint: &str, s: &StatusResponse) -> EndpointStatusJson {
        EndpointStatusJson {
            endpoint: endpoint.to_string(),
            status: StatusJson {
                header: HeaderJson::of(&s.header),
                version: s.version.clone(),
                db_size: s.db_size,
                leader: s.leader,
                raft_index: s.raft_index,
                raft_term: s.raft_term,
                raft_applied_index: s.raft_applied_index,
                errors: s.errors.clone(),
                db_size_in_use: s.db_size_in_use,
                is_learner: s.is_learner,
                storage_version: s.storage_version.clone(),
                db_size_quota: s.db_size_quota,
            },
        }
    }
}

/// The columns of etcdctl's `endpoint status` (3.5), for the simple and table formats.
pub fn status_row(endpoint: &str, s: &StatusResponse) -> Vec<String> {
    let member_id = s.header.as_ref().map_or(0, |h| h.member_id);
    vec![
        endpoint.to_string(),
        format!("{member_id:x}"),
        s.version.clone(),
        si_bytes(s.db_size.max(0) as u64),
        (s.leader != 0 && s.leader == member_id).to_string(),
        s.is_learner.to_string(),
        s.raft_term.to_string(),
        s.raft_index.to_string(),
        s.raft_applied_index.to_string(),
        s.errors.join(", "),
    ]
}

/// The header of etcdctl's `endpoint status -w table`.
pub const STATUS_HEADER: [&str; 10] = [
    "endpoint",
    "id",
    "version",
    "db size",
    "is leader",
    "is learner",
    "raft term",
    "raft index",
    "raft applied index",
    "errors",
];

async fn status_of(args: &ClusterArgs, endpoint: &str) -> Result<StatusResponse, String> {
    let session = Session::connect_to(args, endpoint).await?;
    let mut maintenance = MaintenanceClient::new(session.channel.clone());
    session
        .call(maintenance.status(session.request(StatusRequest {})))
        .await
}

async fn status(args: &ClusterArgs, endpoints: &[String], format: Format) -> Result<(), String> {
    let asked = endpoints
        .iter()
        .map(|ep| async move { (ep.clone(), status_of(args, ep).await) });
    let results = futures::future::join_all(asked).await;
    let mut answered = Vec::new();
    let mut failed = 0;
    for (endpoint, result) in results {
        match result {
            Ok(s) => answered.push((endpoint, s)),
            Err(e) => {
                failed += 1;
                eprintln!(
                    "Failed to get the status of endpoint {endpoint} ({})",
                    without_endpoint(&e, &endpoint)
                );
            }
        }
    }
    match format {
        Format::Simple => {
            for (endpoint, s) in &answered {
                println!("{}", status_row(endpoint, s).join(", "));
            }
        }
        Format::Table => {
            let mut table = Table::new(&STATUS_HEADER, Align::Right);
            for (endpoint, s) in &answered {
                table.row(status_row(endpoint, s));
            }
            print!("{}", table.render());
        }
        Format::Json => {
            let list: Vec<EndpointStatusJson> = answered.iter().map(|(e, s)| EndpointStatusJson::of(e, s)).collect();
            print_json(&list)?;
        }
    }
    if failed > 0 {
        return Err(format!(
            "{failed} of {} endpoints did not report their status",
            endpoints.len()
        ));
    }
    Ok(())
}

/// One endpoint's health, as `etcdctl endpoint health -w json` prints it.
#[derive(Serialize, Debug, Clone)]
pub struct Health {
    /// The endpoint asked.
    pub endpoint: String,
    /// Whether it committed the read and has no alarm.
    pub health: bool,
    /// How long the check took (Go's duration format, e.g. `2.345ms`).
    pub took: String,
    /// Why it is unhealthy.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// Checks one endpoint as etcdctl does: a linearizable get of `health` (permission denied
/// counts as healthy: the read went through Raft), then no active alarm.
async fn health_of(args: &ClusterArgs, endpoint: &str) -> Health {
    let started = Instant::now();
    let result = async {
        let session = Session::connect_to(args, endpoint).await?;
        let mut kv = KvClient::new(session.channel.clone());
        let read = RangeRequest {
            key: b"health".to_vec(),
            ..Default::default()
        };
        match session.call(kv.range(session.request(read))).await {
            Ok(_) => {}
            Err(e) if e.contains("permission denied") => {}
            Err(e) => return Err(e),
        }
        let took = started.elapsed();
        let mut maintenance = MaintenanceClient::new(session.channel.clone());
        let get = AlarmRequest {
            action: alarm_request::AlarmAction::Get as i32,
            member_id: 0,
            alarm: AlarmType::None as i32,
        };
        let alarms = session
            .call(maintenance.alarm(session.request(get)))
            .await
            .map_err(|e| format!("Unable to fetch the alarm list ({e})"))?;
        if !alarms.alarms.is_empty() {
            let names: Vec<&str> = alarms
                .alarms
                .iter()
                .map(|a| match AlarmType::try_from(a.alarm) {
                    Ok(AlarmType::Nospace) => "NOSPACE",
                    Ok(AlarmType::Corrupt) => "CORRUPT",
                    _ => "UNKNOWN",
                })
                .collect();
            return Err(format!("Active Alarm(s): {}", names.join(" ")));
        }
        Ok(took)
    }
    .await;
    match result {
        Ok(took) => Health {
            endpoint: endpoint.to_string(),
            health: true,
            took: go_duration(took),
            error: String::new(),
        },
        Err(error) => Health {
            endpoint: endpoint.to_string(),
            health: false,
            took: go_duration(started.elapsed()),
            error: without_endpoint(&error, endpoint).to_string(),
        },
    }
}

/// An error without the endpoint it starts with, where the line names the endpoint already.
fn without_endpoint<'e>(error: &'e str, endpoint: &str) -> &'e str {
    error
        .strip_prefix(endpoint)
        .and_then(|rest| rest.strip_prefix(": "))
        .unwrap_or(error)
}

/// A duration as Go prints one (`2.345678ms`), which etcdctl's `took` uses.
pub fn go_duration(d: Duration) -> String {
    format!("{d:?}")
}

/// The line etcdctl prints for one endpoint's health.
pub fn health_line(h: &Health) -> String {
    if h.health {
        format!(
            "{} is healthy: successfully committed proposal: took = {}",
            h.endpoint, h.took
        )
    } else {
        format!("{} is unhealthy: failed to commit proposal: {}", h.endpoint, h.error)
    }
}

async fn health(args: &ClusterArgs, endpoints: &[String], format: Format) -> Result<(), String> {
    let checks = endpoints.iter().map(|ep| health_of(args, ep));
    let results = futures::future::join_all(checks).await;
    match format {
        Format::Simple => {
            for h in &results {
                if h.health {
                    println!("{}", health_line(h));
                } else {
                    eprintln!("{}", health_line(h));
                }
            }
        }
        Format::Table => {
            let mut table = Table::new(&["endpoint", "health", "took", "error"], Align::Right);
            for h in &results {
                table.row([
                    h.endpoint.clone(),
                    h.health.to_string(),
                    h.took.clone(),
                    h.error.clone(),
                ]);
            }
            print!("{}", table.render());
        }
        Format::Json => print_json(&results)?,
    }
    if results.iter().any(|h| !h.health) {
        return Err("unhealthy cluster".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_proto::etcdserverpb::ResponseHeader;

    #[test]
    fn status_rows_match_etcdctl() {
        let s = StatusResponse {
            header: Some(ResponseHeader {
                cluster_id: 1,
                member_id: 0x8e9e05c52164694d,
                revision: 5,
                raft_term: 2,
            }),
            version: "3.5.0".into(),
            db_size: 20480,
            leader: 0x8e9e05c52164694d,
            raft_index: 4,
            raft_term: 2,
            raft_applied_index: 4,
            ..Default::default()
        };
        assert_eq!(
            status_row("127.0.0.1:2379", &s).join(", "),
            "127.0.0.1:2379, 8e9e05c52164694d, 3.5.0, 20 kB, true, false, 2, 4, 4, "
        );
        let json = crate::output::to_json(&vec![EndpointStatusJson::of("a:1", &s)]).unwrap();
        assert!(
            json.starts_with(r#"[{"Endpoint":"a:1","Status":{"header":{"cluster_id":1,"#),
            "{json}"
        );
        assert!(
            json.contains(
                r#""dbSize":20480,"leader":10276657743932975437,"raftIndex":4,"raftTerm":2,"raftAppliedIndex":4}"#
            ),
            "{json}"
        );
    }

    #[test]
    fn health_lines_match_etcdctl() {
        let ok = Health {
            endpoint: "a:1".into(),
            health: true,
            took: go_duration(Duration::from_micros(2345)),
            error: String::new(),
        };
        assert_eq!(
            health_line(&ok),
            "a:1 is healthy: successfully committed proposal: took = 2.345ms"
        );
        let bad = Health {
            endpoint: "a:1".into(),
            health: false,
            took: "1s".into(),
            error: "boom".into(),
        };
        assert_eq!(health_line(&bad), "a:1 is unhealthy: failed to commit proposal: boom");
        assert_eq!(
            crate::output::to_json(&ok).unwrap(),
            r#"{"endpoint":"a:1","health":true,"took":"2.345ms"}"#
        );
    }
}
