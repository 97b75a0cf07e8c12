//! `concord shard move` on four real members, the second shard on three of them: the fourth is
//! added (learner, catch-up, joint consensus) and one replica removed, online. Every member then
//! sees the new replicas, nothing acknowledged is lost, the new replica serves the shard after a
//! kill -9 and restart, and the removed one forwards to the others and has dropped its copy. And
//! a split puts its new shard on the members holding the fewest replicas.

mod common;

use common::puts::{as_watched, assert_serves_every_put, put_through, watch_responses, Put};
use common::{concord, eventually, text, Cluster};
use etcd_client::WatchOptions;
use futures::FutureExt;

/// `(id, replicas)` of every shard as member `i` lists them (replicas as hex ids, sorted).
fn shard_replicas(cluster: &Cluster, i: usize) -> Result<Vec<(u64, Vec<String>)>, String> {
    let endpoint = format!("--endpoints={}", cluster.endpoints()[i]);
    let listed = concord(&["shard", "list", "-w", "json", &endpoint]);
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).map_err(|e| format!("{e}: {listed:?}"))?;
    let shards = json["shards"].as_array().ok_or("no shards")?;
    Ok(shards
        .iter()
        .map(|s| {
            let mut replicas: Vec<String> = s["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_string())
                .collect();
            replicas.sort();
            (s["id"].as_u64().unwrap(), replicas)
        })
        .collect())
}

/// Every member's id in hex, as `shard list` prints replicas.
async fn member_ids(cluster: &Cluster) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..cluster.members.len() {
        ids.push(format!(
            "{:x}",
            cluster.status(i).await.unwrap().header().unwrap().member_id()
        ));
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_moves_to_a_member_that_did_not_hold_it() {
    let mut cluster = Cluster::start_with(4, &["--experimental-initial-shards=m"]).await;
    cluster.wait_for_leader().await;
    let before = eventually("the second shard has a leader", || async {
        let mut client = cluster.client(0).await;
        client.put("x/probe", "v", None).await.map(|_| ())
    });
    before.await;
    let written: Vec<Put> = put_through(&cluster, 0, 40, |n| format!("x/before/{n}")).await;

    let ids = member_ids(&cluster).await;
    let held = shard_replicas(&cluster, 0).unwrap()[1].1.clone();
    assert_eq!(held.len(), 3, "{held:?}");
    let newcomer = ids.iter().position(|id| !held.contains(id)).unwrap();
    let leaving = ids
        .iter()
        .position(|id| held.contains(id) && *id != ids[newcomer])
        .unwrap();

    // Watches of the shard from its first write: one on the member that holds no replica of it
    // yet, one on the member about to lose its replica. Both follow the shard through the move.
    let from = WatchOptions::new()
        .with_prefix()
        .with_start_revision(written[0].revision);
    let mut watches = Vec::new();
    for i in [newcomer, leaving] {
        let mut client = cluster.client(i).await;
        watches.push(client.watch("x/", Some(from.clone())).await.unwrap());
    }

    let moved = concord(&[
        "shard",
        "move",
        "2",
        "--add",
        &ids[newcomer],
        "--remove",
        &ids[leaving],
        &format!("--endpoints={}", cluster.endpoints()[newcomer]),
    ]);
    assert!(moved.status.success(), "{moved:?}");
    let mut expected: Vec<String> = held.iter().filter(|id| **id != ids[leaving]).cloned().collect();
    expected.push(ids[newcomer].clone());
    expected.sort();
    for i in 0..4 {
        eventually("every member knows the shard's new replicas", || {
            let listed = shard_replicas(&cluster, i);
            let expected = expected.clone();
            async move {
                match listed?.get(1) {
                    Some((2, replicas)) if *replicas == expected => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
    }

    // Every member serves every acknowledged write, the removed one by forwarding.
    let after: Vec<Put> = put_through(&cluster, leaving, 20, |n| format!("x/after/{n}")).await;
    for i in 0..4 {
        let client = cluster.client(i).await;
        assert_serves_every_put(&client, &written).await;
        assert_serves_every_put(&client, &after).await;
    }
    let everything: Vec<Put> = written.iter().chain(&after).cloned().collect();
    for mut watch in watches {
        let seen: Vec<(i64, String)> = watch_responses(&mut watch, everything.len()).await.concat();
        assert_eq!(seen, as_watched(&everything));
    }
    let store = cluster.members[leaving].data_dir.join("member/shard-2.redb");
    eventually("the removed member drops its copy", || {
        let exists = store.exists();
        async move {
            if exists {
                Err("still there")
            } else {
                Ok(())
            }
        }
    })
    .await;

    // ...and closes it: no file of the member's process still points at it.
    let pid = cluster.pid(leaving).expect("the removed member runs");
    eventually("the removed member closes its copy", || {
        let open: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
            .map(|target| target.display().to_string())
            .filter(|target| target.contains("shard-2.redb"))
            .collect();
        async move {
            match open.is_empty() {
                true => Ok(()),
                false => Err(open),
            }
        }
    })
    .await;

    // The new replica keeps the shard across a kill -9 and a restart.
    cluster.kill(newcomer);
    cluster.restart(newcomer);
    let client = cluster.client(newcomer).await;
    assert_serves_every_put(&client, &written).await;

    // Moves that cannot be made say why.
    let endpoint = format!("--endpoints={}", cluster.endpoints()[0]);
    let again = concord(&["shard", "move", "2", "--add", &ids[newcomer], &endpoint]);
    assert!(text(&again.stderr).contains("holds the shard already"), "{again:?}");
    let first = concord(&["shard", "move", "1", "--remove", &ids[0], &endpoint]);
    assert!(
        text(&first.stderr).contains("the first shard has a replica on every member"),
        "{first:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_split_places_its_new_shard_where_replicas_are_fewest() {
    let cluster = Cluster::start_with(4, &["--experimental-initial-shards=m"]).await;
    cluster.wait_for_leader().await;
    let written: Vec<Put> = eventually("the second shard takes writes", || async {
        let mut client = cluster.client(0).await;
        client.put("x/probe", "v", None).await.map(|_| ())
    })
    .then(|()| {
        put_through(&cluster, 1, 30, |n| {
            format!("{}/{n}", if n % 2 == 0 { "p" } else { "x" })
        })
    })
    .await;
    let ids = member_ids(&cluster).await;
    let held = shard_replicas(&cluster, 0).unwrap()[1].1.clone();
    let outsider = ids.iter().find(|id| !held.contains(id)).unwrap().clone();

    // The member holding only the first shard gets a replica of the new one.
    let split = concord(&[
        "shard",
        "split",
        "t",
        &format!("--endpoints={}", cluster.endpoints()[0]),
    ]);
    assert!(split.status.success(), "{split:?}");
    let shards = eventually("the new shard is placed", || {
        let listed = shard_replicas(&cluster, 2);
        let outsider = outsider.clone();
        async move {
            let shards = listed?;
            match shards.get(2) {
                Some((_, replicas)) if replicas.len() == 3 && replicas.contains(&outsider) => Ok(shards),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert_eq!(shards.len(), 3, "{shards:?}");
    for i in 0..4 {
        let client = cluster.client(i).await;
        assert_serves_every_put(&client, &written).await;
    }
}
