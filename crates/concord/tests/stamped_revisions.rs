//! The multi-shard write path on today's one group (`--experimental-stamped-revisions`), on
//! three real members: the leader stamps every write, its own and those its followers forward,
//! with revisions from the revision oracle. Writes take their stamp, a txn's writes share one,
//! revisions follow real time whichever member a client writes through, and across a kill -9 of
//! the leader the new term starts past the committed ceiling: revisions skip numbers but never
//! go back, and nothing acknowledged is lost.

mod common;

use std::time::Duration;

use common::puts::{assert_real_time_order, assert_serves_every_put, put_through, Put};
use common::{eventually, Cluster};
use etcd_client::{Compare, CompareOp, EventType, Txn, TxnOp, WatchOptions};

const STAMPED: &str = "--experimental-stamped-revisions";

#[tokio::test(flavor = "multi_thread")]
async fn stamped_writes_follow_real_time_through_every_member_and_a_leader_kill() {
    let mut cluster = Cluster::start_with(3, &[STAMPED]).await;

    let mut writers = Vec::new();
    for i in 0..3 {
        writers.push(put_through(&cluster, i, 20, move |n| format!("before/m{i}/{n}")));
    }
    let mut acknowledged: Vec<Put> = futures::future::join_all(writers).await.concat();
    assert_real_time_order(&acknowledged);

    // A txn's writes share one revision; a txn that writes nothing leaves the store's revision
    // as it was and reports its stamp, above every revision handed out before it. Both through
    // a follower.
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut client = cluster.client(follower).await;
    let both = Txn::new().and_then([TxnOp::put("t1", "x", None), TxnOp::put("t2", "x", None)]);
    let txn_revision = client.txn(both).await.unwrap().header().unwrap().revision();
    for key in ["t1", "t2"] {
        let got = client.get(key, None).await.unwrap();
        assert_eq!(got.kvs()[0].mod_revision(), txn_revision, "{key}");
    }
    let nothing = Txn::new()
        .when([Compare::value("t1", CompareOp::Equal, "not x")])
        .and_then([TxnOp::put("t1", "y", None)]);
    let failed = client.txn(nothing).await.unwrap();
    assert!(!failed.succeeded());
    let failed_revision = failed.header().unwrap().revision();
    assert!(failed_revision > txn_revision, "{failed_revision} after {txn_revision}");
    assert_eq!(
        client.get("t1", None).await.unwrap().kvs()[0].mod_revision(),
        txn_revision
    );
    let highest = acknowledged
        .iter()
        .map(|p| p.revision)
        .max()
        .unwrap()
        .max(failed_revision);

    // kill -9 the leader: the survivors take writes again, above everything acknowledged.
    cluster.kill(leader);
    let survivor = (0..3).find(|&i| i != leader).unwrap();
    let client = cluster.client(survivor).await;
    let first_after = eventually("the survivors take writes", || {
        let mut client = client.clone();
        async move {
            let answer = client.put("after-kill", "v", None).await?;
            Ok::<i64, etcd_client::Error>(answer.header().unwrap().revision())
        }
    })
    .await;
    assert!(first_after > highest, "{first_after} after {highest}");
    assert!(
        first_after > 10_000,
        "the new term starts at the committed ceiling, a window past the stamps: {first_after}"
    );
    let mut after = Vec::new();
    for i in (0..3).filter(|&i| i != leader) {
        after.push(put_through(&cluster, i, 10, move |n| format!("after/m{i}/{n}")));
    }
    let after: Vec<Put> = futures::future::join_all(after).await.concat();
    assert!(after.iter().all(|p| p.revision > first_after));
    acknowledged.extend(after);
    assert_real_time_order(&acknowledged);

    // The killed member comes back and holds every acknowledged write at its revision.
    cluster.restart(leader);
    let mut back = cluster.client(leader).await;
    assert_serves_every_put(&back, &acknowledged).await;

    // A watch from the start, on the restarted member, replays every write in revision order.
    let mut stream = back
        .watch("", Some(WatchOptions::new().with_all_keys().with_start_revision(1)))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let expected = acknowledged.len() + 3;
    while seen.len() < expected {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the watch delivers the history")
            .unwrap()
            .expect("the stream stays open");
        for event in message.events() {
            assert_eq!(event.event_type(), EventType::Put);
            let kv = event.kv().unwrap();
            seen.push((kv.mod_revision(), kv.key_str().unwrap().to_string()));
        }
    }
    let mut wanted: Vec<(i64, String)> = acknowledged.iter().map(|p| (p.revision, p.key.clone())).collect();
    wanted.push((txn_revision, "t1".into()));
    wanted.push((txn_revision, "t2".into()));
    wanted.push((first_after, "after-kill".into()));
    wanted.sort();
    assert_eq!(seen, wanted);
}
