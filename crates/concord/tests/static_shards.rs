//! A keyspace split into shards at start (`--experimental-initial-shards`), on three real
//! members: each shard is its own Raft group with its own store, `concord shard list` shows them,
//! writes through any member go to the key's shard and take one global revision in real time
//! across shards, a shard's leader can be killed without losing an acknowledged write, reads,
//! read-only txns, watches, deletes and compaction span shards (through etcd's own client too),
//! and a txn that writes over several shards at once is refused with a message naming them.

mod common;

use std::time::Instant;

use common::puts::{assert_real_time_order, assert_serves_every_put, put_through, Put};
use common::{concord, eventually, grpc_status, Cluster};
use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use tonic::Code;

const SPLIT: &str = "--experimental-initial-shards=m";

/// The `n`-th key member `i` writes in part `tag` of a test: in the first shard ("a/…") and the
/// second ("z/…") in turn.
fn both_shards(tag: &str, i: usize, n: usize) -> String {
    let shard = if n.is_multiple_of(2) { "a" } else { "z" };
    format!("{shard}/{tag}/m{i}/{n}")
}

/// The shards as `concord shard list -w json` shows them through member `i`.
fn listed_shards(cluster: &Cluster, i: usize) -> Vec<serde_json::Value> {
    let endpoint = format!("--endpoints={}", cluster.endpoints()[i]);
    let listed = concord(&["shard", "list", "-w", "json", &endpoint]);
    assert!(listed.status.success(), "{listed:?}");
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    json["shards"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn shards_take_writes_at_one_global_revision_and_survive_a_leader_kill() {
    let mut cluster = Cluster::start_with(3, &[SPLIT]).await;

    // Two shards, split at "m" ("bQ==" in base64), each replicated on all three members.
    let shards = eventually("both shards have a leader", || {
        let shards = listed_shards(&cluster, 0);
        async move {
            match shards.iter().all(|s| s["leader"] != "0" && s["leader"] != "") {
                true => Ok(shards),
                false => Err(shards),
            }
        }
    })
    .await;
    let ranges: Vec<(u64, &str, &str)> = shards
        .iter()
        .map(|s| {
            (
                s["id"].as_u64().unwrap(),
                s["start"].as_str().unwrap(),
                s["end"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(ranges, vec![(1, "", "bQ=="), (2, "bQ==", "")], "{shards:?}");
    assert!(
        shards.iter().all(|s| s["replicas"].as_array().unwrap().len() == 3),
        "{shards:?}"
    );

    let writers = (0..3).map(|i| put_through(&cluster, i, 20, move |n| both_shards("before", i, n)));
    let mut acknowledged: Vec<Put> = futures::future::join_all(writers).await.concat();
    assert_real_time_order(&acknowledged);

    // A linearizable read reports at least the revision of every write answered before it,
    // whichever shard took the write.
    let highest = acknowledged.iter().map(|p| p.revision).max().unwrap();
    let mut client = cluster.client(1).await;
    for key in ["a/before/m0/0", "z/before/m0/1"] {
        let got = client.get(key, None).await.unwrap();
        assert_eq!(got.kvs()[0].value(), b"v", "{key}");
        assert!(
            got.header().unwrap().revision() >= highest,
            "{key}: {got:?} after {highest}"
        );
    }

    // A txn within one shard is one Raft entry; its writes share a revision.
    let within = Txn::new()
        .when([Compare::value("z/before/m0/1", CompareOp::Equal, "v")])
        .and_then([TxnOp::put("z/txn/1", "x", None), TxnOp::put("z/txn/2", "x", None)]);
    let done = client.txn(within).await.unwrap();
    assert!(done.succeeded());
    let revision = done.header().unwrap().revision();
    assert!(revision > highest);
    for key in ["z/txn/1", "z/txn/2"] {
        assert_eq!(client.get(key, None).await.unwrap().kvs()[0].mod_revision(), revision);
    }

    // A range over both shards is read at one revision, at least that of every write answered
    // before it, in key order, cut at its limit; sorted otherwise on request; and as it was at
    // an older revision.
    let everything = client.get("", Some(GetOptions::new().with_from_key())).await.unwrap();
    let at = everything.header().unwrap().revision();
    assert!(at >= revision, "{at} after {revision}");
    let keys: Vec<&[u8]> = everything.kvs().iter().map(|kv| kv.key()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert_eq!(everything.count() as usize, acknowledged.len() + 2);
    assert!(keys.contains(&&b"a/before/m0/0"[..]) && keys.contains(&&b"z/txn/2"[..]));
    let first_five = client
        .get("a", Some(GetOptions::new().with_range("zz").with_limit(5)))
        .await
        .unwrap();
    assert_eq!(first_five.kvs().len(), 5);
    assert!(first_five.more());
    assert_eq!(first_five.count(), everything.count());
    let newest = GetOptions::new()
        .with_from_key()
        .with_sort(etcd_client::SortTarget::Mod, etcd_client::SortOrder::Descend)
        .with_limit(1);
    let newest = client.get("", Some(newest)).await.unwrap();
    assert_eq!(newest.kvs()[0].mod_revision(), revision);
    let earlier = highest;
    let then = client
        .get("", Some(GetOptions::new().with_from_key().with_revision(earlier)))
        .await
        .unwrap();
    assert_eq!(then.header().unwrap().revision(), earlier);
    assert!(then.kvs().iter().all(|kv| kv.mod_revision() <= earlier));
    assert_eq!(then.kvs().len(), acknowledged.len());

    // A txn that only reads may span shards: its compares and reads are answered at one
    // revision, as etcd answers them.
    let reading = Txn::new()
        .when([
            Compare::value("a/before/m0/0", CompareOp::Equal, "v"),
            Compare::mod_revision("z/txn/1", CompareOp::Equal, revision),
        ])
        .and_then([
            TxnOp::get("a/before/m0/0", None),
            TxnOp::get("a", Some(GetOptions::new().with_range("zz").with_count_only())),
            TxnOp::get("z/txn/2", Some(GetOptions::new().with_revision(revision - 1))),
        ])
        .or_else([TxnOp::get("z/txn/1", None)]);
    let read = client.txn(reading).await.unwrap();
    assert!(read.succeeded(), "{read:?}");
    let answers: Vec<etcd_client::GetResponse> = read
        .op_responses()
        .into_iter()
        .map(|op| match op {
            etcd_client::TxnOpResponse::Get(got) => got,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(answers[0].kvs()[0].value(), b"v");
    assert_eq!(answers[1].count(), everything.count());
    assert!(
        answers[2].kvs().is_empty(),
        "z/txn/2 did not exist before the txn that made it"
    );
    let missing = Txn::new()
        .when([Compare::version("a/none", CompareOp::Greater, 0)])
        .and_then([TxnOp::get("z/txn/1", None)])
        .or_else([TxnOp::get("a/before/m0/0", None), TxnOp::get("z/txn/2", None)]);
    let read = client.txn(missing).await.unwrap();
    assert!(!read.succeeded(), "{read:?}");
    assert_eq!(read.op_responses().len(), 2);

    // A write over both shards at once is refused, naming them.
    let spanning = Txn::new().and_then([TxnOp::put("a/x", "1", None), TxnOp::put("z/x", "1", None)]);
    let status = grpc_status(client.txn(spanning).await.unwrap_err());
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("shards 1, 2"), "{status:?}");
    let lease = client.lease_grant(60, None).await.unwrap().id();
    for key in ["a/leased", "z/leased"] {
        client
            .put(key, "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("keys of every shard take leases");
    }
    let mut watch = client
        .watch("z/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let created = watch.message().await.unwrap().unwrap();
    assert!(created.created() && !created.canceled(), "{created:?}");
    let watched = client.put("z/watched", "v", None).await.unwrap();
    let event = tokio::time::timeout(common::WAIT, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.events()[0].kv().unwrap().key(), b"z/watched", "{event:?}");
    assert_eq!(
        event.events()[0].kv().unwrap().mod_revision(),
        watched.header().unwrap().revision()
    );

    // kill -9 the leader of the second shard's group: its writes resume on the survivors.
    let shards = listed_shards(&cluster, 0);
    let leader_hex = shards[1]["leader"].as_str().unwrap().to_string();
    let leader = cluster
        .index_of_member_id(u64::from_str_radix(&leader_hex, 16).unwrap())
        .await
        .unwrap();
    cluster.kill(leader);
    let survivor = (leader + 1) % 3;
    let client = cluster.client(survivor).await;
    let resumed = eventually("the second shard takes writes again", || {
        let mut client = client.clone();
        async move {
            let answer = client.put("z/after-kill", "v", None).await?;
            Ok::<i64, etcd_client::Error>(answer.header().unwrap().revision())
        }
    })
    .await;
    assert!(resumed > revision, "{resumed} after {revision}");
    let after = (0..3)
        .filter(|&i| i != leader)
        .map(|i| put_through(&cluster, i, 10, move |n| both_shards("after", i, n)));
    let after: Vec<Put> = futures::future::join_all(after).await.concat();
    assert!(after.iter().all(|p| p.revision > resumed));
    acknowledged.extend(after);
    assert_real_time_order(&acknowledged);

    // The killed member comes back with every acknowledged write of both shards.
    cluster.restart(leader);
    let back = cluster.client(leader).await;
    assert_serves_every_put(&back, &acknowledged).await;

    // The split is recorded: every member still has two shards after its restart.
    assert_eq!(listed_shards(&cluster, leader).len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn members_without_a_replica_forward_to_one_that_has_it() {
    // Four members, three shards: the first on all four (with the cluster's metadata), the
    // others on three each, so every member lacks one of them.
    let cluster = Cluster::start_with(4, &["--experimental-initial-shards=h,q"]).await;
    // Every member lists every shard with its leader, asking a member that holds it for the
    // shards it does not hold itself.
    let views = eventually("every member lists a leader for every shard", || {
        let views: Vec<Vec<serde_json::Value>> = (0..4).map(|i| listed_shards(&cluster, i)).collect();
        async move {
            let led = |view: &Vec<serde_json::Value>| view.iter().all(|s| s["leader"] != "0" && s["leader"] != "");
            match views.iter().all(led) {
                true => Ok(views),
                false => Err(views),
            }
        }
    })
    .await;
    let shards = &views[0];
    // Each member is healthy once every shard it holds has a leader.
    for member in &cluster.members {
        let url = format!("{}/health", member.client_url);
        eventually("the member reports itself healthy", || {
            let url = url.clone();
            async move {
                let answer = common::http::get(&url).map_err(|e| e.to_string())?;
                match answer.status {
                    200 => Ok(()),
                    _ => Err(answer.body),
                }
            }
        })
        .await;
    }
    let replicas: Vec<usize> = shards.iter().map(|s| s["replicas"].as_array().unwrap().len()).collect();
    assert_eq!(replicas, vec![4, 3, 3], "{shards:?}");

    // Writes and reads of every shard through every member, whether it holds the shard or not.
    let mut acknowledged = Vec::new();
    for i in 0..4 {
        let mut client = cluster.client(i).await;
        for key in ["a", "k", "z"] {
            let key = format!("{key}/through-m{i}");
            let invoked = Instant::now();
            let revision = client
                .put(key.as_str(), "v", None)
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision();
            acknowledged.push(Put {
                key,
                revision,
                invoked,
                completed: Instant::now(),
            });
        }
    }
    assert_real_time_order(&acknowledged);
    for i in 0..4 {
        let mut client = cluster.client(i).await;
        for put in &acknowledged {
            let got = client.get(put.key.as_str(), None).await.unwrap();
            assert_eq!(got.kvs()[0].mod_revision(), put.revision, "{put:?} through member {i}");
        }
        // A range over every shard, one of them held elsewhere, is one read at one revision.
        let all = client.get("", Some(GetOptions::new().with_from_key())).await.unwrap();
        let listed: Vec<(String, i64)> = all
            .kvs()
            .iter()
            .filter(|kv| kv.key_str().unwrap().contains("/through-m"))
            .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
            .collect();
        let mut expected: Vec<(String, i64)> = acknowledged.iter().map(|p| (p.key.clone(), p.revision)).collect();
        expected.sort();
        assert_eq!(listed, expected, "through member {i}");
        // A txn on a shard held elsewhere is forwarded whole.
        let txn = Txn::new()
            .when([Compare::version("z/through-m0", CompareOp::Greater, 0)])
            .and_then([TxnOp::put(format!("z/txn-m{i}"), "x", None)]);
        assert!(client.txn(txn).await.unwrap().succeeded(), "through member {i}");
    }

    // Compaction is global: etcdctl compacts every shard at one revision, through a member that
    // lacks one of them, and every shard then refuses reads and watches below it, as etcd does.
    let mut client = cluster.client(0).await;
    let mut old = Vec::new();
    for key in ["a/old", "k/old", "z/old"] {
        old.push(client.put(key, "1", None).await.unwrap().header().unwrap().revision());
        client.put(key, "2", None).await.unwrap();
    }
    let at = client
        .put("k/compact-here", "v", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let endpoints = cluster.endpoints();
    let mut lacking = None;
    for i in 0..4 {
        let id = format!("{:x}", cluster.status(i).await.unwrap().header().unwrap().member_id());
        let holds = |s: &serde_json::Value| s["replicas"].as_array().unwrap().iter().any(|r| *r == id.as_str());
        if !shards.iter().all(holds) {
            lacking = Some(i);
            break;
        }
    }
    let lacking = lacking.expect("a member holds no replica of some shard");
    let compacted = cluster.etcdctl(&endpoints[lacking..=lacking], &["compaction", &at.to_string()]);
    assert!(compacted.status.success(), "{compacted:?}");
    assert_eq!(
        common::text(&compacted.stdout).trim(),
        format!("compacted revision {at}")
    );
    for i in 0..4 {
        let mut client = cluster.client(i).await;
        for (key, revision) in ["a/old", "k/old", "z/old"].iter().zip(&old) {
            let refused = client.get(*key, Some(GetOptions::new().with_revision(*revision))).await;
            let status = grpc_status(refused.unwrap_err());
            assert_eq!(status.code(), Code::OutOfRange, "{key} through member {i}");
            assert_eq!(
                status.message(),
                "etcdserver: mvcc: required revision has been compacted"
            );
            let now = client
                .get(*key, Some(GetOptions::new().with_revision(at)))
                .await
                .unwrap();
            assert_eq!(now.kvs()[0].value(), b"2", "{key} through member {i}");
        }
    }
    let mut watch = client
        .watch(
            "a",
            Some(WatchOptions::new().with_range("zz").with_start_revision(old[0])),
        )
        .await
        .unwrap();
    let canceled = loop {
        let message = watch.message().await.unwrap().unwrap();
        if message.canceled() {
            break message;
        }
    };
    assert_eq!(canceled.compact_revision(), at, "{canceled:?}");
    let again = cluster.etcdctl(&endpoints, &["compaction", &at.to_string()]);
    assert!(
        common::text(&again.stderr).contains("required revision has been compacted"),
        "{again:?}"
    );
    let future = cluster.etcdctl(&endpoints, &["compaction", &(at + 1_000_000).to_string()]);
    assert!(
        common::text(&future.stderr).contains("required revision is a future revision"),
        "{future:?}"
    );

    // A delete over every shard, through the member that lacks one of them, takes one revision.
    let mut client = cluster.client(lacking).await;
    let everything = || Some(DeleteOptions::new().with_from_key());
    let before = client
        .get("\0", Some(GetOptions::new().with_from_key().with_count_only()))
        .await
        .unwrap();
    let deleted = client.delete("\0", everything()).await.unwrap();
    assert_eq!(deleted.deleted(), before.count());
    let revision = deleted.header().unwrap().revision();
    let at = |revision| {
        Some(
            GetOptions::new()
                .with_from_key()
                .with_count_only()
                .with_revision(revision),
        )
    };
    assert_eq!(
        client.get("\0", at(revision - 1)).await.unwrap().count(),
        before.count()
    );
    assert_eq!(client.get("\0", at(revision)).await.unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_reads_writes_and_watches_across_shards() {
    let cluster = Cluster::start_with(3, &[SPLIT]).await;
    let endpoints = cluster.endpoints();
    let etcdctl = |args: &[&str]| {
        let out = cluster.etcdctl(&endpoints, args);
        (
            out.status.success(),
            common::text(&out.stdout),
            common::text(&out.stderr),
        )
    };
    eventually("both shards take writes", || {
        let (put, _, err) = etcdctl(&["put", "z/1", "y"]);
        async move {
            if put {
                Ok(())
            } else {
                Err(err)
            }
        }
    })
    .await;
    let (ok, out, err) = etcdctl(&["put", "a/1", "x", "-w", "json"]);
    assert!(ok, "{err}");
    let first: serde_json::Value = serde_json::from_str(&out).unwrap();
    let first = first["header"]["revision"].as_i64().unwrap();

    // One range over both shards, in key order.
    let (ok, out, err) = etcdctl(&["get", "", "--from-key"]);
    assert!(ok, "{err}");
    assert_eq!(out, "a/1\nx\nz/1\ny\n");

    // A watch over both shards replays their history in revision order.
    let mut watcher = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints[2].trim_start_matches("http://")))
        .args(["watch", "a", "zz", &format!("--rev={first}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("etcdctl is installed");
    let stdout = watcher.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .take(5)
            .map(|l| l.unwrap())
            .collect::<Vec<_>>()
    });
    let (ok, _, err) = etcdctl(&["del", "z/1"]);
    assert!(ok, "{err}");
    let lines = tokio::task::spawn_blocking(move || lines.join().unwrap())
        .await
        .unwrap();
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert_eq!(
        lines,
        ["PUT", "a/1", "x", "DELETE", "z/1"].map(String::from),
        "{lines:?}"
    );

    // A delete over both shards deletes the keys of both.
    etcdctl(&["put", "z/2", "y"]);
    let (ok, out, err) = etcdctl(&["del", "", "--from-key", "--prev-kv"]);
    assert!(ok, "{err}");
    assert_eq!(out, "2\na/1\nx\nz/2\ny\n");
    let (_, out, _) = etcdctl(&["get", "", "--from-key"]);
    assert_eq!(out, "");
}
