//! What operators look at: Prometheus metrics under etcd's names, etcd's health endpoints, the
//! dedicated metrics listener and JSON logs, checked on real `concord serve` processes.

mod common;

use std::collections::HashMap;

use common::{eventually, http, Cluster};

/// One scrape, parsed: every sample line as (series with labels, value). Panics on a line that
/// is not valid Prometheus text, so the format itself is checked.
fn scrape(client_url: &str) -> HashMap<String, f64> {
    let response = http::get(&format!("{client_url}/metrics")).expect("GET /metrics");
    assert_eq!(response.status, 200, "{}", response.body);
    let mut samples = HashMap::new();
    for line in response.body.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad metrics line {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        samples.insert(series.to_string(), value);
    }
    samples
}

/// The sum of every series of `name` whose labels include all of `labels` (`k="v"` pairs).
fn sum(samples: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            let bare = series.split('{').next() == Some(name);
            bare && labels.iter().all(|l| series.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

fn has(samples: &HashMap<String, f64>, name: &str) -> bool {
    samples.keys().any(|s| s.split('{').next() == Some(name))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_use_etcds_names_and_count_what_happened() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut client = cluster.client(follower).await;
    for i in 0..20 {
        client.put(format!("metrics/{i}"), "v", None).await.expect("put");
    }
    client
        .get("metrics/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("get");
    let missing = client.lease_revoke(0x1234).await.expect_err("unknown lease");
    assert_eq!(common::grpc_status(missing).code(), tonic::Code::NotFound);

    let samples = scrape(&cluster.members[follower].client_url);
    for name in [
        "etcd_server_has_leader",
        "etcd_server_is_leader",
        "etcd_server_leader_changes_seen_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        "etcd_disk_wal_fsync_duration_seconds_bucket",
        "etcd_disk_wal_fsync_duration_seconds_count",
        "etcd_disk_backend_commit_duration_seconds_count",
        "etcd_mvcc_db_total_size_in_bytes",
        "grpc_server_started_total",
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "concord_raft_group_state",
        "process_resident_memory_bytes",
        "etcd_network_client_grpc_received_bytes_total",
        "etcd_network_client_grpc_sent_bytes_total",
        "etcd_network_peer_sent_bytes_total",
        "etcd_network_peer_received_bytes_total",
        "etcd_server_quota_backend_bytes",
    ] {
        assert!(has(&samples, name), "/metrics lacks {name}");
    }
    assert_eq!(sum(&samples, "etcd_server_has_leader", &[]), 1.0);
    assert_eq!(
        sum(&samples, "etcd_server_is_leader", &[]),
        0.0,
        "a follower says it leads"
    );
    assert!(sum(&samples, "etcd_server_leader_changes_seen_total", &[]) >= 1.0);
    assert!(sum(&samples, "etcd_disk_wal_fsync_duration_seconds_count", &[]) > 0.0);
    assert!(sum(&samples, "etcd_mvcc_db_total_size_in_bytes", &[]) > 0.0);
    assert!(
        sum(&samples, "etcd_mvcc_put_total", &[]) >= 20.0,
        "every member applies every put"
    );
    let put_ok = [
        "grpc_method=\"Put\"",
        "grpc_service=\"etcdserverpb.KV\"",
        "grpc_type=\"unary\"",
        "grpc_code=\"OK\"",
    ];
    assert_eq!(sum(&samples, "grpc_server_handled_total", &put_ok), 20.0);
    assert_eq!(
        sum(&samples, "grpc_server_started_total", &["grpc_method=\"Put\""]),
        20.0
    );
    let revoke_missing = ["grpc_method=\"LeaseRevoke\"", "grpc_code=\"NotFound\""];
    assert_eq!(sum(&samples, "grpc_server_handled_total", &revoke_missing), 1.0);
    assert_eq!(
        sum(&samples, "grpc_server_handling_seconds_count", &["grpc_method=\"Put\""]),
        20.0
    );
    assert!(sum(&samples, "concord_raft_group_state", &["group=\"1\"", "field=\"term\""]) >= 1.0);
    assert!(
        sum(&samples, "etcd_network_client_grpc_received_bytes_total", &[]) >= 200.0,
        "20 puts of 10 bytes or more"
    );
    assert!(sum(&samples, "etcd_network_client_grpc_sent_bytes_total", &[]) > 0.0);
    assert!(
        sum(&samples, "etcd_network_peer_received_bytes_total", &[]) > 0.0,
        "a follower hears from its leader"
    );

    // Every member counts exactly one leader among them.
    let mut leaders = 0.0;
    for m in &cluster.members {
        leaders += sum(&scrape(&m.client_url), "etcd_server_is_leader", &[]);
    }
    assert_eq!(leaders, 1.0);

    // The leader reports each follower's replication, and every member times its peers.
    let on_leader = scrape(&cluster.members[leader].client_url);
    assert!(
        has(&on_leader, "concord_raft_group_follower"),
        "the leader reports its followers"
    );
    let url = cluster.members[follower].client_url.clone();
    eventually("peer round trips are measured", || {
        let url = url.clone();
        async move {
            let samples = scrape(&url);
            match sum(&samples, "etcd_network_peer_round_trip_time_seconds_count", &[]) {
                n if n >= 2.0 => Ok(()),
                n => Err(format!("{n} round trips so far")),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_follows_the_quorum() {
    let mut cluster = Cluster::start(3).await;
    let survivor = cluster.wait_for_leader().await;
    let url = cluster.members[survivor].client_url.clone();

    let health = http::get(&format!("{url}/health")).expect("GET /health");
    assert_eq!(health.status, 200);
    // Go's net/http gives etcd's JSON body the sniffed type, text.
    assert_eq!(health.header("content-type"), Some("text/plain; charset=utf-8"));
    let json: serde_json::Value = serde_json::from_str(&health.body).expect("JSON health");
    assert_eq!(json, serde_json::json!({"health": "true", "reason": ""}));
    let ready = http::get(&format!("{url}/readyz?verbose")).expect("GET /readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(ready.body.contains("[+]linearizable_read ok"), "{}", ready.body);
    assert_eq!(http::get(&format!("{url}/livez")).expect("GET /livez").body, "ok");
    let version: serde_json::Value =
        serde_json::from_str(&http::get(&format!("{url}/version")).expect("GET /version").body).expect("JSON version");
    assert!(
        version["etcdserver"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{version}"
    );

    // Without a quorum the survivor loses its leader: /health and /readyz say so; it still lives.
    for i in (0..3).filter(|&i| i != survivor) {
        cluster.kill(i);
    }
    let unhealthy = eventually("/health reports the lost quorum", || {
        let url = url.clone();
        async move {
            let health = http::get(&format!("{url}/health")).map_err(|e| e.to_string())?;
            if health.status == 503 {
                assert_eq!(health.header("x-content-type-options"), Some("nosniff"));
                assert!(health.body.ends_with("}\n"), "http.Error's newline: {:?}", health.body);
                Ok(health.body)
            } else {
                Err(health.body)
            }
        }
    })
    .await;
    let json: serde_json::Value = serde_json::from_str(&unhealthy).expect("JSON health");
    assert_eq!(json["health"], "false");
    let reason = json["reason"].as_str().unwrap_or_default();
    assert!(
        reason == "RAFT NO LEADER" || reason.starts_with("RANGE ERROR"),
        "reason: {reason}"
    );
    let ready = http::get(&format!("{url}/readyz?verbose")).expect("GET /readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("[-]linearizable_read failed"), "{}", ready.body);
    assert!(ready.body.contains("[+]serializable_read ok"), "{}", ready.body);
    let live = http::get(&format!("{url}/livez")).expect("GET /livez");
    assert_eq!((live.status, live.body.as_str()), (200, "ok"));
    eventually("the has-leader gauge drops", || {
        let url = url.clone();
        async move {
            match sum(&scrape(&url), "etcd_server_has_leader", &[]) {
                0.0 => Ok(()),
                n => Err(n),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_listener_and_json_logs() {
    let metrics_port = common::free_port();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let cluster = Cluster::start_with(1, &["--listen-metrics-urls", &metrics_url, "--log-format", "json"]).await;
    let mut client = cluster.client(0).await;
    client.put("k", "v", None).await.expect("put");

    let samples = scrape(&metrics_url);
    assert_eq!(sum(&samples, "etcd_server_is_leader", &[]), 1.0);
    assert_eq!(
        sum(
            &samples,
            "grpc_server_handled_total",
            &["grpc_method=\"Put\"", "grpc_code=\"OK\""]
        ),
        1.0
    );
    assert_eq!(
        http::get(&format!("{metrics_url}/health")).expect("GET /health").status,
        200
    );
    // The metrics listener is not a client port: no dashboard there.
    assert_eq!(http::get(&format!("{metrics_url}/ui/")).expect("GET /ui/").status, 404);

    let log = std::fs::read_to_string(&cluster.members[0].log).expect("member log");
    let mut events = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(event["level"].is_string() && event["timestamp"].is_string(), "{line}");
        events += 1;
    }
    assert!(events > 0, "no log lines");
    assert!(log.contains("\"message\":\"starting member\""), "{log}");
}
