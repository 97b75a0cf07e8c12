//! A DeleteRange over the keys of several shards, on three real members split into four shards
//! at start: it deletes every key of its range at one revision, on every shard (a read at the
//! revision before sees them all, at its revision none, a watch gets every delete in one
//! response), also with writers busy on the same shards and through etcdctl; and a write whose
//! coordinator stops between its two phases leaves no shard held: each held part ends the way
//! the write's primary shard ended it.

mod common;

use common::puts::watch_responses;
use common::{eventually, Cluster};
use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::shards_client::ShardsClient;
use concord_proto::concordpb::{
    shard_propose_response, CommitCrossShard, CrossShardOutcome, PrepareCrossShard, RaftCommand, ShardProposeRequest,
};
use concord_proto::etcdserverpb::DeleteRangeRequest;
use etcd_client::{DeleteOptions, GetOptions, WatchOptions};

/// Shards "" to "g" (group 1), "g" to "m" (2), "m" to "t" (3) and "t" on (4).
const FOUR_SHARDS: &str = "--experimental-initial-shards=g,m,t";

/// One key prefix in each shard, in shard order.
const PREFIXES: [&str; 4] = ["a", "h", "n", "u"];

async fn start() -> Cluster {
    let cluster = Cluster::start_with(3, &[FOUR_SHARDS]).await;
    let mut client = cluster.client(0).await;
    eventually("every shard takes writes", || {
        let mut client = client.clone();
        async move {
            for prefix in PREFIXES {
                client
                    .put(format!("{prefix}/ready"), "v", None)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        }
    })
    .await;
    for prefix in PREFIXES {
        client.delete(format!("{prefix}/ready"), None).await.unwrap();
    }
    cluster
}

/// How many keys `[key, range_end)` held at `revision` (0: now), read through `client`.
async fn count_at(client: &mut etcd_client::Client, key: &str, range_end: &str, revision: i64) -> i64 {
    let options = GetOptions::new()
        .with_range(range_end)
        .with_count_only()
        .with_revision(revision);
    client.get(key, Some(options)).await.unwrap().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_delete_across_shards_takes_one_revision_on_all_of_them() {
    let cluster = start().await;
    let mut client = cluster.client(0).await;
    for prefix in PREFIXES {
        for i in 0..3 {
            client.put(format!("{prefix}/{i}"), "v", None).await.unwrap();
        }
    }
    let mut watcher = cluster.client(2).await;
    let mut watch = watcher
        .watch("", Some(WatchOptions::new().with_from_key()))
        .await
        .unwrap();
    let created = watch.message().await.unwrap().unwrap();
    assert!(created.created(), "{created:?}");

    // "b" to "v": the keys of three shards, not those of the first.
    let deleted = client
        .delete("b", Some(DeleteOptions::new().with_range("v").with_prev_key()))
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), 9, "{deleted:?}");
    let keys: Vec<&str> = deleted.prev_kvs().iter().map(|kv| kv.key_str().unwrap()).collect();
    assert_eq!(
        keys,
        ["h/0", "h/1", "h/2", "n/0", "n/1", "n/2", "u/0", "u/1", "u/2"],
        "the previous values come in key order"
    );
    let revision = deleted.header().unwrap().revision();

    // At the revision before, every key was there; at the delete's, none: no shard took it at
    // another revision.
    let mut reader = cluster.client(1).await;
    assert_eq!(count_at(&mut reader, "b", "v", revision - 1).await, 9);
    assert_eq!(count_at(&mut reader, "b", "v", revision).await, 0);
    assert_eq!(count_at(&mut reader, "a", "b", 0).await, 3);

    let responses = watch_responses(&mut watch, 9).await;
    assert_eq!(responses.len(), 1, "one revision, one response: {responses:?}");
    assert!(responses[0].iter().all(|(at, _)| *at == revision), "{responses:?}");

    // etcdctl's del over every shard.
    let out = cluster.etcdctl(&cluster.endpoints(), &["del", "", "--from-key"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(common::text(&out.stdout), "3\n");
    assert_eq!(count_at(&mut reader, "\0", "\0", 0).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn deletes_across_shards_stay_whole_under_writers() {
    let cluster = start().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let mut client = cluster.client(w).await;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("{}/w{w}/{n}", PREFIXES[n % 4]);
                let put = client
                    .put(key.clone(), "v", None)
                    .await
                    .expect("a write beside deletes");
                acknowledged.push((key, put.header().unwrap().revision()));
                n += 1;
            }
            acknowledged
        }));
    }

    let mut deleter = cluster.client(1).await;
    let mut reader = cluster.client(2).await;
    let mut deletes = Vec::new();
    for round in 0..10 {
        // Every other round from the first shard on, else from the second.
        let from = if round % 2 == 0 { "0" } else { "h" };
        let options = DeleteOptions::new().with_range("z");
        let deleted = deleter
            .delete(from, Some(options))
            .await
            .expect("a delete across shards");
        let revision = deleted.header().unwrap().revision();
        // Whatever the writers did meanwhile, nothing of the range lived at the delete's revision.
        assert_eq!(count_at(&mut reader, from, "z", revision).await, 0, "round {round}");
        deletes.push((from, revision));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    assert!(!acknowledged.is_empty());

    // Every acknowledged write is there unless a later delete covered it.
    for (key, revision) in acknowledged {
        let deleted_after = deletes
            .iter()
            .any(|(from, at)| *at > revision && key.as_str() >= *from && key.as_str() < "z");
        let got = reader.get(key.as_str(), None).await.unwrap();
        assert_eq!(
            got.kvs().is_empty(),
            deleted_after,
            "{key} at {revision}, deletes {deletes:?}"
        );
    }
}

/// Proposes one phase of a write across shards to `group` through member 0's `Shards.Propose`,
/// as a coordinator would.
async fn phase(cluster: &Cluster, group: u64, op: Op) -> Result<CrossShardOutcome, tonic::Status> {
    let channel = tonic::transport::Channel::from_shared(cluster.endpoints()[0].clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let request = ShardProposeRequest {
        shard: group,
        command: Some(RaftCommand { op: Some(op) }),
    };
    let answer = ShardsClient::new(channel).propose(request).await?.into_inner();
    match answer.result {
        Some(shard_propose_response::Result::CrossShard(outcome)) => Ok(outcome),
        other => panic!("{other:?}"),
    }
}

fn prepare(id: u64, group: u64, key: &str, range_end: &str) -> Op {
    Op::PrepareCrossShard(PrepareCrossShard {
        id,
        revision: 0,
        delete_range: Some(DeleteRangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            prev_kv: false,
        }),
        primary_group: 2,
        primary: group == 2,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn held_shards_of_a_quiet_coordinator_end_as_the_primary_did() {
    let cluster = start().await;
    let mut client = cluster.client(1).await;
    for key in ["h/1", "n/1"] {
        client.put(key, "v", None).await.unwrap();
    }

    // A coordinator holds the second and third shards and is never heard of again: both are
    // released, the write aborted, and writes to them go on.
    phase(&cluster, 2, prepare(77, 2, "h", "i")).await.unwrap();
    phase(&cluster, 3, prepare(77, 3, "n", "o")).await.unwrap();
    client
        .put("n/2", "v", None)
        .await
        .expect("a write to a held shard waits for it, then applies");
    assert_eq!(count_at(&mut client, "h", "o", 0).await, 3, "the write aborted");
    let late = phase(
        &cluster,
        2,
        Op::CommitCrossShard(CommitCrossShard {
            id: 77,
            revision: i64::MAX,
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(late.code(), tonic::Code::Unavailable, "{late:?}");
    assert!(late.message().contains("aborted"), "{late:?}");

    // This one stops after its primary committed: the other part commits too, at the same
    // revision.
    let one = phase(&cluster, 2, prepare(88, 2, "h", "i")).await.unwrap();
    let other = phase(&cluster, 3, prepare(88, 3, "n", "o")).await.unwrap();
    let revision = one.revision.max(other.revision);
    let committed = phase(&cluster, 2, Op::CommitCrossShard(CommitCrossShard { id: 88, revision }))
        .await
        .unwrap();
    assert!(committed.committed);
    eventually("the held part commits as its primary did", || {
        let mut client = client.clone();
        async move {
            match count_at(&mut client, "n", "o", 0).await {
                0 => Ok(()),
                n => Err(n),
            }
        }
    })
    .await;
    assert_eq!(count_at(&mut client, "h", "o", revision - 1).await, 3);
    assert_eq!(count_at(&mut client, "h", "o", revision).await, 0);
    client.put("n/3", "v", None).await.unwrap();
}
