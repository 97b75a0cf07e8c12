//! The revision oracle of multi-shard mode, on real members' peer URLs: only group 1's leader
//! hands out revisions; each call's are above every revision handed out before it began, also
//! across a window of the committed ceiling, concurrent calls, and a kill -9 of the leader; and
//! allocating leaves the dense revisions of a one-shard cluster as they were.

mod common;

use common::{eventually, Cluster};
use concord_proto::concordpb::revision_oracle_client::RevisionOracleClient;
use concord_proto::concordpb::AllocateRevisionsRequest;
use tonic::Code;

/// `count` revisions from the oracle as member `peer_url` answers: the first of them.
async fn allocate(peer_url: &str, count: u32) -> Result<i64, tonic::Status> {
    let mut oracle = RevisionOracleClient::connect(peer_url.to_string())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let answer = oracle.allocate(AllocateRevisionsRequest { count }).await?.into_inner();
    assert_eq!(answer.count, count);
    Ok(answer.first)
}

#[tokio::test(flavor = "multi_thread")]
async fn revisions_rise_in_real_time_across_calls_windows_and_a_leader_kill() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let peer_urls: Vec<String> = cluster.members.iter().map(|m| m.peer_url.clone()).collect();
    let peer = |i: usize| peer_urls[i].clone();
    let mut client = cluster.client(leader).await;
    let put_revision = client.put("k", "v", None).await.unwrap().header().unwrap().revision();

    for i in (0..3).filter(|&i| i != leader) {
        let refused = allocate(&peer(i), 1).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(
            refused.message().contains("does not lead the revision oracle"),
            "{refused:?}"
        );
    }
    for count in [0, 1_000_001] {
        let refused = allocate(&peer(leader), count).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    }

    // One after another, each call's revisions are above the last call's, and above the store's
    // revision; 20,000 at once needs the ceiling raised past a window.
    let mut highest = put_revision;
    for count in [1, 5, 20_000, 3] {
        let first = allocate(&peer(leader), count).await.unwrap();
        assert!(first > highest, "{first} after {highest}");
        highest = first + i64::from(count) - 1;
    }

    // Concurrent calls get disjoint ranges, all above what was handed out before they began.
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let url = peer(leader);
        calls.spawn(async move { allocate(&url, 7).await.unwrap() });
    }
    let mut firsts = calls.join_all().await;
    firsts.sort_unstable();
    assert!(firsts[0] > highest, "{firsts:?} after {highest}");
    assert!(
        firsts.windows(2).all(|w| w[1] >= w[0] + 7),
        "overlapping ranges: {firsts:?}"
    );
    highest = firsts.last().unwrap() + 6;

    // A one-shard cluster keeps etcd's dense revisions whatever the oracle handed out.
    let next_put = client.put("k", "w", None).await.unwrap().header().unwrap().revision();
    assert_eq!(next_put, put_revision + 1);

    // The new leader starts at the committed ceiling, above everything the killed one handed out.
    cluster.kill(leader);
    let survivors: Vec<String> = (0..3).filter(|&i| i != leader).map(peer).collect();
    let first = eventually("a new leader hands out revisions", || {
        let survivors = survivors.clone();
        async move {
            let mut refusals = Vec::new();
            for url in &survivors {
                match allocate(url, 1).await {
                    Ok(first) => return Ok(first),
                    Err(refused) => refusals.push(refused),
                }
            }
            Err(refusals)
        }
    })
    .await;
    assert!(first > highest, "{first} after {highest}");
}
