//! `concord shard` against a real cluster: the one shard a cluster starts with, listed in every
//! form, its leadership transferred, and a split (on a cluster with etcd's dense revisions) and a
//! move of the first shard (held by every member) refused with a message.

mod common;

use common::{concord, eventually, text, Cluster};

/// `--endpoints=...` for member `i`.
fn endpoint_flag(cluster: &Cluster, i: usize) -> String {
    format!("--endpoints={}", cluster.endpoints()[i])
}

async fn member_ids(cluster: &Cluster) -> Vec<u64> {
    let mut ids = Vec::new();
    for i in 0..cluster.members.len() {
        ids.push(cluster.status(i).await.unwrap().header().unwrap().member_id());
    }
    ids
}

#[tokio::test]
async fn a_new_cluster_has_one_shard_holding_every_key_on_every_member() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let ids = member_ids(&cluster).await;
    let mut client = cluster.client(0).await;
    client.put("k", "v", None).await.unwrap();

    let follower = (leader + 1) % 3;
    let listed = concord(&["shard", "list", "-w", "json", &endpoint_flag(&cluster, follower)]);
    assert!(listed.status.success(), "{listed:?}");
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let shards = json["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 1, "{json}");
    let shard = &shards[0];
    assert_eq!(shard["id"], 1);
    assert_eq!(shard["start"], "");
    assert_eq!(shard["end"], "", "the end of the keyspace");
    assert_eq!(shard["epoch"], serde_json::json!({"version": 1, "conf_ver": 1}));
    let mut hex: Vec<String> = ids.iter().map(|id| format!("{id:x}")).collect();
    hex.sort_by_key(|h| u64::from_str_radix(h, 16).unwrap());
    assert_eq!(shard["replicas"], serde_json::json!(hex), "{json}");
    assert_eq!(shard["leader"], format!("{:x}", ids[leader]));
    assert!(shard["db_size"].as_i64().unwrap() > 0, "{json}");
    assert!(shard["applied_index"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(json["header"]["member_id"].as_u64(), Some(ids[follower]), "{json}");

    let simple = concord(&["shard", "list", &endpoint_flag(&cluster, 0)]);
    let line = text(&simple.stdout);
    assert!(line.starts_with("1, \"\", ∞, 1.1, "), "{line}");
    let table = concord(&["shard", "list", "-w", "table", &endpoint_flag(&cluster, 0)]);
    assert!(text(&table.stdout).contains("| APPLIED INDEX |"), "{table:?}");

    // Leadership moves on request, asked of any member.
    let target = (leader + 2) % 3;
    let moved = concord(&[
        "shard",
        "transfer-leader",
        "1",
        &format!("{:x}", ids[target]),
        &endpoint_flag(&cluster, follower),
    ]);
    assert!(moved.status.success(), "{moved:?}");
    assert_eq!(
        text(&moved.stdout).trim(),
        format!("Leadership of shard 1 transferred to member {:x}", ids[target])
    );
    assert_eq!(cluster.wait_for_leader().await, target);
    let bad = concord(&["shard", "transfer-leader", "1", "abc", &endpoint_flag(&cluster, 0)]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("etcdserver: bad leader transferee"),
        "{bad:?}"
    );
    let unknown = concord(&[
        "shard",
        "transfer-leader",
        "7",
        &format!("{:x}", ids[0]),
        &endpoint_flag(&cluster, 0),
    ]);
    assert!(text(&unknown.stderr).contains("shard 7 does not exist"), "{unknown:?}");

    // A cluster with etcd's dense revisions cannot be split; what needs a split keyspace says
    // so, and changes nothing.
    let split = concord(&["shard", "split", "m", &endpoint_flag(&cluster, 0)]);
    assert!(!split.status.success());
    assert!(
        text(&split.stderr).contains("shards can be split only in a cluster started with"),
        "{split:?}"
    );
    let moved = concord(&["shard", "move", "1", "--add", "abc", &endpoint_flag(&cluster, 0)]);
    assert!(!moved.status.success());
    assert!(
        text(&moved.stderr).contains("the first shard has a replica on every member"),
        "{moved:?}"
    );
    let after = eventually("the shard is listed under its new leader", || async {
        let out = concord(&["shard", "list", "-w", "json", &endpoint_flag(&cluster, 0)]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())?;
        if json["shards"][0]["leader"] == format!("{:x}", ids[target]) {
            Ok(json)
        } else {
            Err(json.to_string())
        }
    })
    .await;
    assert_eq!(after["shards"].as_array().unwrap().len(), 1);
}
