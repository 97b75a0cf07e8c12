//! The chaos rig's short form, as CI runs it: a few seeds of `concord chaos` against real
//! clusters (in network namespaces when the tests run as root, on loopback otherwise), and a
//! deliberately broken cluster that the checker must catch.
//!
//! `CHAOS_SEEDS=1,2,3` and `CHAOS_TIME=20s` choose other seeds and lengths; the long form is
//! `concord chaos --time 10m`.

use std::process::Command;
use std::sync::Mutex;

/// One cluster at a time: the runs are heavy for a 2-core machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `concord chaos` with `args`; returns whether it passed, and what it printed.
fn chaos(args: &[&str]) -> (bool, String) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg("chaos")
        .args(args)
        .output()
        .expect("run concord chaos");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn seeds() -> Vec<String> {
    std::env::var("CHAOS_SEEDS")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn run_length() -> String {
    std::env::var("CHAOS_TIME").unwrap_or_else(|_| "20s".into())
}

#[test]
fn every_fault_kind_keeps_the_guarantees() {
    let time = run_length();
    for (i, seed) in seeds().iter().enumerate() {
        // Every third seed runs 5 members, so bridge partitions and 2-member minorities occur.
        let members = if i % 3 == 2 { "5" } else { "3" };
        let (passed, text) = chaos(&["--seed", seed, "--members", members, "--time", &time]);
        println!("{text}");
        assert!(passed, "seed {seed} failed:\n{text}");
        assert!(text.contains("verdict: Valid"), "{text}");
        assert!(text.contains("HashKV agrees on every member"), "{text}");
        assert!(text.contains(" 0 not linearizable"), "{text}");
    }
}

#[test]
fn a_split_keyspace_keeps_the_guarantees() {
    // Two shards on five members (`--shards`): registers in one, lists in the other, watches over
    // both; every write stamped with the oracle's revision, calls forwarded between members, and the
    // checker's real-time order across keys of both shards.
    let (passed, text) = chaos(&["--shards", "--members", "5", "--seed", "4", "--time", &run_length()]);
    println!("{text}");
    assert!(passed, "{text}");
    assert!(text.contains("verdict: Valid"), "{text}");
    assert!(text.contains(" 0 not linearizable"), "{text}");
    assert!(text.contains("other checks: 0 anomalies"), "{text}");
}

#[test]
fn a_shard_split_under_faults_keeps_the_guarantees() {
    // The registers' shard split online while members are killed and leaders move: the seed's
    // schedule has the split 16 s in.
    let faults = "--faults=split-shard,kill,partition-minority,move-leader";
    let (passed, text) = chaos(&["--shards", "--members", "5", "--seed", "11", "--time", "20s", faults]);
    println!("{text}");
    assert!(passed, "{text}");
    assert!(text.contains("split the shard holding chaos/11/r/"), "{text}");
    assert!(text.contains("verdict: Valid"), "{text}");
    assert!(text.contains("other checks: 0 anomalies"), "{text}");
}

#[test]
fn the_loopback_proxy_injects_network_faults() {
    // Without namespaces (not root, or --loopback) partitions and lossy links go through the
    // peer proxy; this runs that path even where the other tests get namespaces.
    let (passed, text) = chaos(&[
        "--loopback",
        "--seed",
        "5",
        "--time",
        &run_length(),
        "--faults",
        "partition-leader,partition-minority,partition-bridge,lossy,kill",
    ]);
    println!("{text}");
    assert!(passed, "{text}");
    assert!(text.contains("fault-injecting peer proxy"), "{text}");
    assert!(text.contains("verdict: Valid"), "{text}");
    assert!(!text.contains("skipped"), "a fault could not be injected:\n{text}");
}

#[test]
fn a_cluster_serving_stale_reads_is_caught() {
    // Members that answer linearizable reads from local state without a ReadIndex barrier. Any
    // follower that lags, or a member cut off from the leader, then returns old values.
    let (passed, text) = chaos(&[
        "--seed",
        "11",
        "--time",
        "15s",
        "--faults",
        "pause,partition-leader,partition-minority",
        "--sabotage",
        "stale-reads",
    ]);
    println!("{text}");
    assert!(!passed, "the checker missed stale reads:\n{text}");
    assert!(text.contains("verdict: Invalid"), "{text}");
    // Which check trips first depends on timing: a per-key counterexample, or a pair of ops
    // whose revisions went backwards across keys. Either is printed with the ops involved.
    assert!(
        text.contains("not linearizable; these") || text.contains("revision went backwards"),
        "no counterexample printed:\n{text}"
    );
}
