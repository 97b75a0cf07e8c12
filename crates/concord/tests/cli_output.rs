//! The `concord` CLI against a real cluster: etcdctl's `-w json|table`
//! output for `kv`, `member` and `endpoint`, the `lease` commands, and
//! etcdctl's errors (`Error: <etcd's message>`, exit code 1).

mod common;

use std::process::Output;

use base64::Engine as _;
use common::{concord, eventually, text, Cluster};
use serde_json::Value;

/// The stdout of a command that must succeed; its output otherwise.
fn stdout_of(what: &str, out: &Output) -> Result<String, String> {
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        ))
    }
}

/// Runs `concord` and returns its stdout, failing the test if it failed.
fn ok(args: &[&str]) -> String {
    let out = concord(args);
    stdout_of(&args.join(" "), &out).unwrap_or_else(|e| panic!("{e}"))
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn unbase64(value: &Value) -> Vec<u8> {
    let text = value.as_str().unwrap_or_else(|| panic!("not a string: {value}"));
    base64::engine::general_purpose::STANDARD.decode(text).expect("base64")
}

/// The cells of one table line (`| a | b |` → `["a", "b"]`).
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_member_and_endpoint_print_etcdctls_formats() {
    let cluster = Cluster::start(3).await;
    let endpoints = cluster.endpoints();
    let ep = format!("--endpoints={}", endpoints[1]);
    let all = format!("--endpoints={}", endpoints.join(","));

    // kv get -w json: etcd's shape, keys and values in base64 that decode to what was put.
    let (key, value) = ("cli/grüße", "line one\nline \"two\"");
    assert_eq!(ok(&["kv", "put", key, value, &ep]).trim(), "OK");
    let got = json(&ok(&["kv", "get", key, "-w", "json", &ep]));
    assert!(got["header"]["revision"].as_i64().unwrap() >= 2, "{got}");
    assert!(got["header"]["cluster_id"].as_u64().unwrap() != 0, "{got}");
    assert_eq!(got["count"], 1, "{got}");
    let kv = &got["kvs"][0];
    assert_eq!(unbase64(&kv["key"]), key.as_bytes());
    assert_eq!(unbase64(&kv["value"]), value.as_bytes());
    assert_eq!(kv["version"], 1, "{got}");
    assert_eq!(kv["create_revision"], kv["mod_revision"], "{got}");
    // The default output is etcdctl's: key, then value.
    assert_eq!(ok(&["kv", "get", key, &ep]), format!("{key}\n{value}\n"));

    // member list -w table: a header row and one row per member, once every
    // member has published its client URLs (through Raft, after the first election).
    let table = eventually("every member is listed with its client URLs", || {
        let ep = ep.clone();
        async move {
            let table = stdout_of(
                "member list -w table",
                &concord(&["member", "list", "-w", "table", &ep]),
            )?;
            let rows: Vec<Vec<String>> = table
                .lines()
                .filter(|l| l.starts_with('|'))
                .skip(1)
                .map(cells)
                .collect();
            if rows.len() == 3 && rows.iter().all(|r| r.len() == 6 && !r[4].is_empty()) {
                Ok(table)
            } else {
                Err(table)
            }
        }
    })
    .await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 7, "border, header, border, 3 rows, border:\n{table}");
    for border in [lines[0], lines[2], lines[6]] {
        assert!(border.starts_with("+-") && border.ends_with("-+"), "{table}");
    }
    assert_eq!(
        cells(lines[1]),
        ["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER"],
        "{table}"
    );
    assert!(
        lines.iter().all(|l| l.chars().count() == lines[0].chars().count()),
        "aligned columns:\n{table}"
    );
    for m in &cluster.members {
        let row = lines[3..6]
            .iter()
            .map(|l| cells(l))
            .find(|r| r[2] == m.name)
            .unwrap_or_else(|| panic!("{} missing:\n{table}", m.name));
        assert_eq!(
            row[1..],
            [
                "started",
                m.name.as_str(),
                m.peer_url.as_str(),
                m.client_url.as_str(),
                "false"
            ],
            "{table}"
        );
    }

    // endpoint status -w json: one entry per endpoint, and exactly one leader, the same for
    // all (waited for: a slow machine may hold an election meanwhile).
    let statuses = eventually("the endpoints agree on one leader", || {
        let all = all.clone();
        async move {
            let out = stdout_of(
                "endpoint status -w json",
                &concord(&["endpoint", "status", "-w", "json", &all]),
            )?;
            let list = json(&out);
            let entries = list.as_array().ok_or_else(|| out.clone())?.clone();
            let leaders: Vec<&Value> = entries.iter().map(|e| &e["Status"]["leader"]).collect();
            let leading = entries
                .iter()
                .filter(|e| e["Status"]["leader"] == e["Status"]["header"]["member_id"])
                .count();
            if entries.len() == 3 && leading == 1 && leaders.iter().all(|l| *l == leaders[0]) {
                Ok(entries)
            } else {
                Err(out)
            }
        }
    })
    .await;
    let listed: Vec<&str> = statuses.iter().map(|e| e["Endpoint"].as_str().unwrap()).collect();
    assert_eq!(listed, endpoints.iter().map(String::as_str).collect::<Vec<_>>());
    for e in &statuses {
        assert!(e["Status"]["raftTerm"].as_u64().unwrap() >= 1, "{e}");
        assert!(e["Status"]["dbSize"].as_i64().unwrap() > 0, "{e}");
        assert!(!e["Status"]["version"].as_str().unwrap().is_empty(), "{e}");
    }
    let table = ok(&["endpoint", "status", "-w", "table", &all]);
    assert!(
        table.contains("| RAFT APPLIED INDEX |") && table.lines().count() == 7,
        "{table}"
    );

    // endpoint health --cluster: every member's client URL, found through the member list.
    let healthy = eventually("the cluster is healthy", || {
        let ep = ep.clone();
        async move {
            stdout_of(
                "endpoint health --cluster",
                &concord(&["endpoint", "health", "--cluster", &ep]),
            )
        }
    })
    .await;
    for m in &cluster.members {
        let line = format!("{} is healthy: successfully committed proposal: took = ", m.client_url);
        assert!(healthy.contains(&line), "{healthy}");
    }
    assert_eq!(healthy.lines().count(), 3, "{healthy}");
    let health = json(&ok(&["endpoint", "health", "-w", "json", &ep]));
    assert_eq!(health[0]["health"], true, "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_errors_read_like_etcdctl() {
    let cluster = Cluster::start(3).await;
    let ep = format!("--endpoints={}", cluster.endpoints()[0]);

    let granted = ok(&["lease", "grant", "60", &ep]);
    let words: Vec<&str> = granted.split_whitespace().collect();
    assert!(
        granted.ends_with(" granted with TTL(60s)\n") && words[0] == "lease",
        "{granted}"
    );
    let id = words[1].to_string();
    assert_eq!(id.len(), 16, "lease ids print as 16 hex digits: {granted}");
    assert_eq!(ok(&["kv", "put", "leased/key", "v", "--lease", &id, &ep]).trim(), "OK");

    let ttl = json(&ok(&["lease", "timetolive", &id, "--keys", "-w", "json", &ep]));
    assert_eq!(
        ttl["id"].as_i64().unwrap(),
        i64::from_str_radix(&id, 16).unwrap(),
        "{ttl}"
    );
    assert_eq!(ttl["granted-ttl"], 60, "{ttl}");
    assert!((1..=60).contains(&ttl["ttl"].as_i64().unwrap()), "{ttl}");
    let keys: Vec<Vec<u8>> = ttl["keys"].as_array().unwrap().iter().map(unbase64).collect();
    assert_eq!(keys, [b"leased/key".to_vec()], "{ttl}");
    let line = ok(&["lease", "timetolive", &id, "--keys", &ep]);
    assert!(
        line.starts_with(&format!("lease {id} granted with TTL(60s), remaining(")),
        "{line}"
    );
    assert!(line.ends_with(", attached keys([leased/key])\n"), "{line}");
    let listed = ok(&["lease", "list", &ep]);
    assert!(
        listed.starts_with("found 1 leases\n") && listed.contains(&format!("\n{id}\n")),
        "{listed}"
    );
    let kept = ok(&["lease", "keep-alive", &id, "--once", &ep]);
    assert_eq!(kept, format!("lease {id} keepalived with TTL(60)\n"));

    assert_eq!(ok(&["lease", "revoke", &id, &ep]), format!("lease {id} revoked\n"));
    // etcd answers TTL -1 for a lease it does not have, which etcdctl prints as "already expired".
    assert_eq!(
        ok(&["lease", "timetolive", &id, &ep]),
        format!("lease {id} already expired\n")
    );
    assert_eq!(json(&ok(&["lease", "timetolive", &id, "-w", "json", &ep]))["ttl"], -1);
    assert_eq!(
        ok(&["kv", "get", "leased/key", &ep]),
        "",
        "revoking the lease deleted its key"
    );

    // A lease that does not exist: etcd's message, exit code 1.
    for args in [["lease", "revoke", &id, &ep], ["lease", "keep-alive", &id, "--once"]] {
        let mut args = args.to_vec();
        args.push(&ep);
        let out = concord(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        assert_eq!(
            text(&out.stderr).trim(),
            "Error: etcdserver: requested lease not found",
            "{args:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
    }

    // No endpoint answers: the error names it.
    let dead = format!("127.0.0.1:{}", common::free_port());
    let out = concord(&["kv", "get", "x", "--endpoints", &dead, "--dial-timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("Error: cannot reach any endpoint") && stderr.contains(&dead),
        "{stderr}"
    );
    let out = concord(&[
        "endpoint",
        "health",
        &format!("--endpoints={},{dead}", cluster.endpoints()[0]),
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "one unhealthy endpoint fails the check: {out:?}"
    );
    assert!(
        text(&out.stderr).contains(&format!("{dead} is unhealthy: failed to commit proposal: ")),
        "{out:?}"
    );
    assert!(text(&out.stderr).contains("Error: unhealthy cluster"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_flag_authenticates_like_etcdctl() {
    let cluster = Cluster::start(1).await;
    let ep = format!("--endpoints={}", cluster.endpoints()[0]);
    let mut c = cluster.client(0).await;
    c.user_add("root", "pw", None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();

    let out = concord(&["kv", "put", "k", "v", &ep]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(text(&out.stderr).trim(), "Error: etcdserver: user name is empty");
    assert_eq!(ok(&["kv", "put", "k", "v", "--user", "root:pw", &ep]).trim(), "OK");
    assert_eq!(
        ok(&["kv", "get", "k", "--user", "root", "--password", "pw", &ep]),
        "k\nv\n"
    );
    let out = concord(&["kv", "get", "k", "--user", "root:wrong", &ep]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        text(&out.stderr).contains("etcdserver: authentication failed"),
        "{out:?}"
    );
    let out = concord(&["lease", "list", "--user", "root", &ep]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("has no password"), "{out:?}");
}
