//! `concord bench` against a real 3-member cluster: every workload runs briefly through all
//! members and reports requests without errors, through its own driver and, for the KV loads,
//! through the etcd-client crate. Throughput is not asserted (speed belongs in
//! bench/compare.sh); that the tool works, and that the cluster serves each pattern cleanly, is.

mod common;

use std::process::Command;

use common::Cluster;

/// Runs `concord bench --json` with `args` against `endpoints` and returns the summary's
/// `(ok, errors)` counts.
fn bench(endpoints: &[String], args: &[&str]) -> (u64, u64) {
    let out = Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg("bench")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(["--clients", "8", "--conns", "3", "--json"])
        .args(args)
        .output()
        .expect("run concord bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "concord bench {args:?} failed:\n{stdout}\n{stderr}"
    );
    let field = |name: &str| -> u64 {
        let start = stdout
            .find(&format!("\"{name}\":"))
            .unwrap_or_else(|| panic!("no {name} in {stdout}"))
            + name.len()
            + 3;
        let digits: String = stdout[start..].chars().take_while(|c| c.is_ascii_digit()).collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not a count in {stdout}"))
    };
    (field("ok"), field("errors"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_cleanly_through_all_members() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let endpoints = cluster.endpoints();
    let workloads: &[&[&str]] = &[
        &["--total", "500", "--key-space", "100", "--sequential-keys", "put"],
        &["--total", "500", "--key-space", "100", "range", "--consistency", "l"],
        &["--total", "500", "--key-space", "100", "range", "--consistency", "s"],
        &["--total", "300", "--key-space", "100", "txn-put"],
        &["--total", "300", "--key-space", "100", "txn-mixed"],
        &[
            "--total",
            "100",
            "--key-space",
            "16",
            "--val-size",
            "16",
            "watch",
            "--streams",
            "2",
            "--watchers-per-stream",
            "4",
        ],
        &[
            "--total",
            "50",
            "--val-size",
            "16",
            "watch-fanout",
            "--streams",
            "2",
            "--watchers-per-stream",
            "8",
        ],
        &["--total", "300", "lease-keepalive"],
    ];
    // The KV loads (the first five) again through the etcd-client crate, each client over every
    // member.
    let through_etcd_client = workloads[..5]
        .iter()
        .map(|args| [&["--client", "etcd-client"][..], args].concat());
    let runs: Vec<Vec<&str>> = workloads
        .iter()
        .map(|args| args.to_vec())
        .chain(through_etcd_client)
        .collect();
    for args in &runs {
        let (ok, errors) = bench(&endpoints, args);
        assert!(ok > 0, "{args:?}: nothing succeeded");
        assert_eq!(errors, 0, "{args:?}: {errors} requests failed");
    }
}
