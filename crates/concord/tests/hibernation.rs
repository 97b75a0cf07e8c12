//! Idle shards stop ticking, on three real members with four shards: once nothing is written,
//! every shard's group but the first (which keeps the cluster's metadata) hibernates on every
//! member; a write or a read wakes its shard and is served; and when the member leading a
//! hibernating shard is killed, the shard elects another leader and takes writes again.

mod common;

use common::{eventually, Cluster};

const FOUR_SHARDS: &str = "--experimental-initial-shards=g,m,t";

/// How many groups member `i` reports hibernating.
fn hibernating(cluster: &Cluster, i: usize) -> Result<i64, String> {
    let url = format!("{}/metrics", cluster.members[i].client_url);
    let metrics = common::http::get(&url).map_err(|e| e.to_string())?.body;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("concord_raft_hibernating_groups "))
        .ok_or_else(|| "no hibernation gauge".to_string())?
        .trim()
        .parse()
        .map_err(|e| format!("{e}"))
}

async fn all_hibernate(cluster: &Cluster, members: &[usize]) {
    for &i in members {
        eventually("the three data shards hibernate", || {
            let count = hibernating(cluster, i);
            async move {
                match count {
                    Ok(3) => Ok(()),
                    other => Err(other),
                }
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_shards_hibernate_wake_for_requests_and_fail_over() {
    let mut cluster = Cluster::start_with(3, &[FOUR_SHARDS]).await;
    let client = cluster.client(0).await;
    eventually("every shard takes writes", || {
        let mut client = client.clone();
        async move {
            for key in ["a", "h", "n", "u"] {
                client.put(key, "1", None).await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        }
    })
    .await;
    all_hibernate(&cluster, &[0, 1, 2]).await;

    // A write and a linearizable read through a member that only follows: both wake the shard.
    let mut follower_side = cluster.client(2).await;
    let written = follower_side.put("n", "2", None).await.unwrap();
    let read = follower_side.get("n", None).await.unwrap();
    assert_eq!(read.kvs()[0].value(), b"2");
    assert!(read.header().unwrap().revision() >= written.header().unwrap().revision());
    all_hibernate(&cluster, &[0, 1, 2]).await;

    // kill -9 the member leading shard "u" (group 4) while it hibernates: the others notice its
    // silence, elect a leader and take writes.
    let listed = common::concord(&[
        "shard",
        "list",
        "-w",
        "json",
        &format!("--endpoints={}", cluster.endpoints()[0]),
    ]);
    let shards: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let leader_hex = shards["shards"][3]["leader"].as_str().unwrap().to_string();
    let leader = cluster
        .index_of_member_id(u64::from_str_radix(&leader_hex, 16).unwrap())
        .await
        .unwrap();
    cluster.kill(leader);
    let survivor = (0..3).find(|i| *i != leader).unwrap();
    let mut client = cluster.client(survivor).await;
    eventually("the shard of a killed hibernating leader takes writes", || {
        let mut client = client.clone();
        async move { client.put("u", "after the kill", None).await.map_err(|e| e.to_string()) }
    })
    .await;
    assert_eq!(client.get("u", None).await.unwrap().kvs()[0].value(), b"after the kill");
    assert_eq!(client.get("h", None).await.unwrap().kvs()[0].value(), b"1");
}
