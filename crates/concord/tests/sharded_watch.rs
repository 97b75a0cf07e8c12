//! Watches in a cluster with global revisions, on three real members: a watch over keys on both
//! sides of a split made while it runs delivers every acknowledged write exactly once, in
//! revision order, a txn's events in one response; a watch from an old revision replays the
//! history of both shards in order; and filters and prev_kv hold across shards.

mod common;

use common::puts::{as_watched, split_under_writers, watch_responses, Put};
use common::Cluster;
use etcd_client::{Compare, CompareOp, EventType, Txn, TxnOp, WatchFilterType, WatchOptions};

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_across_a_split_loses_and_repeats_nothing() {
    let cluster = Cluster::start_with(3, &["--experimental-stamped-revisions"]).await;
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    let first = client
        .put("a/first", "v", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    // Watching every key from a to y, on two members, before the split.
    let mut watches = Vec::new();
    for i in [0, 2] {
        let mut client = cluster.client(i).await;
        let mut stream = client
            .watch("a", Some(WatchOptions::new().with_range("y")))
            .await
            .unwrap();
        // The watch runs once it is created: what is written after that, it delivers.
        let created = stream.message().await.unwrap().unwrap();
        assert!(created.created(), "{created:?}");
        watches.push(stream);
    }

    let (mut puts, split) = split_under_writers(&cluster, 20, &[]).await;
    assert!(split.status.success(), "{split:?}");

    // A txn on the new shard: its two events share a revision and come in one response.
    let txn = Txn::new()
        .when([Compare::version("x/txn/1", CompareOp::Equal, 0)])
        .and_then([TxnOp::put("x/txn/1", "1", None), TxnOp::put("x/txn/2", "2", None)]);
    let txn_revision = client.txn(txn).await.unwrap().header().unwrap().revision();
    let deleted = client
        .delete("a/first", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();

    let mut wanted = as_watched(&puts);
    wanted.push((txn_revision, "x/txn/1".into()));
    wanted.push((txn_revision, "x/txn/2".into()));
    wanted.push((deleted, "a/first".into()));
    wanted.sort();
    for watch in &mut watches {
        let responses = watch_responses(watch, wanted.len()).await;
        let txn_events = |r: &&Vec<(i64, String)>| r.iter().filter(|(revision, _)| *revision == txn_revision).count();
        assert!(
            responses.iter().any(|r| txn_events(&r) == 2),
            "the txn's events come in one response: {responses:?}"
        );
        assert_eq!(responses.concat(), wanted);
    }

    // A watch from the first write replays both shards' history in revision order, with the
    // versions each change replaced, and only deletes when asked.
    puts.push(Put {
        key: "a/first".into(),
        revision: first,
        invoked: std::time::Instant::now(),
        completed: std::time::Instant::now(),
    });
    let mut replayed = as_watched(&puts);
    replayed.push((txn_revision, "x/txn/1".into()));
    replayed.push((txn_revision, "x/txn/2".into()));
    replayed.push((deleted, "a/first".into()));
    replayed.sort();
    let mut member_1 = cluster.client(1).await;
    let from_first = WatchOptions::new()
        .with_all_keys()
        .with_start_revision(first)
        .with_prev_key();
    let mut history = member_1.watch("", Some(from_first)).await.unwrap();
    assert_eq!(watch_responses(&mut history, replayed.len()).await.concat(), replayed);
    let only_deletes = WatchOptions::new()
        .with_start_revision(first)
        .with_range("y")
        .with_filters([WatchFilterType::NoPut])
        .with_prev_key();
    let mut deletes = member_1.watch("a", Some(only_deletes)).await.unwrap();
    let message = loop {
        let message = tokio::time::timeout(common::WAIT, deletes.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if !message.events().is_empty() {
            break message;
        }
    };
    assert_eq!(message.events().len(), 1, "{message:?}");
    let event = &message.events()[0];
    assert_eq!(event.event_type(), EventType::Delete);
    assert_eq!(event.prev_kv().unwrap().mod_revision(), first);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_replays_more_history_than_one_read_after_the_writes_stop() {
    // More events than a part reads at once (1,000), all written before the watch begins and
    // none after: the watch must read on from the store, with no new write to wake it.
    let cluster = Cluster::start_with(3, &["--experimental-stamped-revisions"]).await;
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    let mut wanted = Vec::new();
    for t in 0..10 {
        let puts: Vec<TxnOp> = (0..128)
            .map(|i| TxnOp::put(format!("bulk/{t:02}/{i:03}"), "v", None))
            .collect();
        let revision = client
            .txn(Txn::new().and_then(puts))
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        wanted.extend((0..128).map(|i| (revision, format!("bulk/{t:02}/{i:03}"))));
    }
    let from = WatchOptions::new().with_prefix().with_start_revision(wanted[0].0);
    for i in 0..3 {
        let mut stream = cluster
            .client(i)
            .await
            .watch("bulk/", Some(from.clone()))
            .await
            .unwrap();
        let seen = watch_responses(&mut stream, wanted.len()).await.concat();
        assert_eq!(seen, wanted, "through member {i}");
    }
}
