//! `concord shard split` on three real members with global revisions: the split is made online
//! while every member takes writes on both sides of the split key, no acknowledged write is lost
//! or answered with an error, the new shard is a Raft group of its own that survives a kill -9
//! and restart, and a member that was down during the split catches up on it, from the log or
//! from a snapshot.

mod common;

use common::puts::{assert_real_time_order, assert_serves_every_put, split_under_writers, Put};
use common::{concord, eventually, text, Cluster};

const STAMPED: &str = "--experimental-stamped-revisions";

fn endpoint_flag(cluster: &Cluster, i: usize) -> String {
    format!("--endpoints={}", cluster.endpoints()[i])
}

/// `(id, start, end)` of every shard as member `i` lists them (start and end in base64).
fn shard_ranges(cluster: &Cluster, i: usize) -> Vec<(u64, String, String)> {
    let listed = concord(&["shard", "list", "-w", "json", &endpoint_flag(cluster, i)]);
    assert!(listed.status.success(), "{listed:?}");
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    json["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_u64().unwrap(),
                s["start"].as_str().unwrap().to_string(),
                s["end"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_split_under_load_loses_nothing_and_its_shard_survives_a_kill() {
    let mut cluster = Cluster::start_with(3, &[STAMPED]).await;
    cluster.wait_for_leader().await;

    // Writers on every member, on both sides of the split key, before, during and after it.
    let (puts, split) = split_under_writers(&cluster, 50, &["-w", "json"]).await;
    assert!(split.status.success(), "{split:?}");
    let (below, above) = puts.iter().partition::<Vec<&Put>, _>(|p| p.key.starts_with("a/"));
    assert_real_time_order(&puts);

    // Two shards, seen alike from every member: [, m) in group 1 and [m, ∞) in a new group.
    for i in 0..3 {
        let ranges = shard_ranges(&cluster, i);
        assert_eq!(ranges.len(), 2, "{ranges:?}");
        assert_eq!(
            (ranges[0].0, ranges[0].1.as_str(), ranges[0].2.as_str()),
            (1, "", "bQ==")
        );
        assert_eq!((ranges[1].1.as_str(), ranges[1].2.as_str()), ("bQ==", ""));
    }

    // Every member serves every acknowledged write at the revision it was answered with.
    for i in 0..3 {
        let client = cluster.client(i).await;
        assert_serves_every_put(&client, &puts).await;
    }

    // Each side is served whole, and both at once, at one revision.
    let mut client = cluster.client(0).await;
    let listed = client
        .get("a/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(listed.kvs().len(), below.len());
    let listed = client
        .get("x/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(listed.kvs().len(), above.len());
    let across = client
        .get("a", Some(etcd_client::GetOptions::new().with_range("y")))
        .await
        .unwrap();
    assert_eq!(across.kvs().len(), below.len() + above.len());

    // The new shard's group survives a kill -9 of a member and its restart, with its keys.
    // Writes sent while its groups elect new leaders may fail, and are sent again.
    cluster.kill(2);
    let client = cluster.client(0).await;
    let mut after = Vec::new();
    for n in 0..20 {
        let key = format!("{}/after/{n}", if n % 2 == 0 { "a" } else { "x" });
        let revision = eventually("a write after the kill", || {
            let (mut client, key) = (client.clone(), key.clone());
            async move { Ok::<i64, etcd_client::Error>(client.put(key, "v", None).await?.header().unwrap().revision()) }
        })
        .await;
        after.push(Put {
            key,
            revision,
            invoked: std::time::Instant::now(),
            completed: std::time::Instant::now(),
        });
    }
    cluster.restart(2);
    let restarted = cluster.client(2).await;
    assert_serves_every_put(&restarted, &puts).await;
    assert_serves_every_put(&restarted, &after).await;
    assert_eq!(shard_ranges(&cluster, 2).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_down_during_a_split_catches_up_through_a_snapshot() {
    // Snapshots every few entries, and a short log behind them: the member that was down gets
    // group 1's state as a snapshot taken after the split, not the split itself.
    let flags = [
        STAMPED,
        "--snapshot-count=20",
        "--experimental-snapshot-catchup-entries=5",
    ];
    let mut cluster = Cluster::start_with(3, &flags).await;
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    for n in 0..10 {
        client.put(format!("x/early/{n}"), "v", None).await.unwrap();
    }
    let lagging = (cluster.wait_for_leader().await + 1) % 3;
    let live = (lagging + 1) % 3;
    cluster.terminate(lagging);

    let split = concord(&["shard", "split", "m", &endpoint_flag(&cluster, live)]);
    assert!(split.status.success(), "{split:?}");
    let mut client = cluster.client(live).await;
    let mut later = Vec::new();
    for n in 0..60 {
        let key = format!("{}/late/{n}", if n % 2 == 0 { "a" } else { "x" });
        let answer = client.put(key.as_str(), "v", None).await.unwrap();
        later.push(Put {
            key,
            revision: answer.header().unwrap().revision(),
            invoked: std::time::Instant::now(),
            completed: std::time::Instant::now(),
        });
    }

    cluster.restart(lagging);
    let caught_up = cluster.client(lagging).await;
    assert_serves_every_put(&caught_up, &later).await;
    let early = caught_up
        .clone()
        .get("x/early/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(early.kvs().len(), 10);
    assert_eq!(shard_ranges(&cluster, lagging).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn splits_that_cannot_be_made_are_refused_and_change_nothing() {
    let cluster = Cluster::start_with(3, &[STAMPED]).await;
    cluster.wait_for_leader().await;
    // The split is made, and the new shard led by another member than the first (which leads
    // one shard already); the same key again is where a shard starts.
    let split = concord(&["shard", "split", "u", &endpoint_flag(&cluster, 0)]);
    assert!(split.status.success(), "{split:?}");
    eventually("the two shards have different leaders", || {
        let listed = concord(&["shard", "list", "-w", "json", &endpoint_flag(&cluster, 0)]);
        async move {
            let json: serde_json::Value = serde_json::from_slice(&listed.stdout).map_err(|e| e.to_string())?;
            let leaders: Vec<String> = json["shards"]
                .as_array()
                .ok_or("no shards")?
                .iter()
                .map(|s| s["leader"].as_str().unwrap_or_default().to_string())
                .collect();
            match leaders.as_slice() {
                [a, b] if a != "0" && b != "0" && !a.is_empty() && a != b => Ok(()),
                _ => Err(format!("{leaders:?}")),
            }
        }
    })
    .await;
    let again = concord(&["shard", "split", "u", &endpoint_flag(&cluster, 1)]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("a shard already starts at that key"),
        "{again:?}"
    );
    assert_eq!(shard_ranges(&cluster, 2).len(), 2);
}
