//! etcd's Lease API on a real cluster: expiry deletes attached keys, keep-alive
//! holds a lease, failover never expires a lease early, and unknown leases get
//! etcd's answers.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, grpc_status, Cluster, WAIT};
use etcd_client::{GetOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_deletes_its_keys_in_one_revision() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(1).await;
    // etcd's shortest TTL is 1.5 election timeouts (1 s here), rounded up: 2 s.
    let lease = c.lease_grant(1, None).await.unwrap();
    assert_eq!(lease.ttl(), 2);
    let id = lease.id();
    c.put("eph/a", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    c.put("eph/b", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    c.put("stay", "1", None).await.unwrap();

    let ttl = c
        .lease_time_to_live(id, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 2);
    assert_eq!(ttl.keys(), &[b"eph/a".to_vec(), b"eph/b".to_vec()]);

    let mut stream = c.watch("eph/", Some(WatchOptions::new().with_prefix())).await.unwrap();
    let mut deletes = Vec::new();
    while deletes.len() < 2 {
        let resp = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("lease never expired")
            .unwrap()
            .unwrap();
        for e in resp.events() {
            deletes.push(e.kv().unwrap().mod_revision());
        }
    }
    assert_eq!(deletes[0], deletes[1], "both keys go in one revision");
    let left = c.get("", Some(GetOptions::new().with_all_keys())).await.unwrap();
    assert_eq!(left.kvs().len(), 1);
    assert_eq!(left.kvs()[0].key(), b"stay");
    let ttl = c.lease_time_to_live(id, None).await.unwrap();
    assert_eq!(ttl.ttl(), -1);
    assert!(c.leases().await.unwrap().leases().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_through_a_follower_holds_a_lease() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut c = cluster.client(follower).await;
    let id = c.lease_grant(2, None).await.unwrap().id();
    c.put("held", "1", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    let (mut keeper, mut responses) = c.lease_keep_alive(id).await.unwrap();
    // Keep it alive for several TTLs; the key must survive all of them.
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        keeper.keep_alive().await.unwrap();
        let resp = tokio::time::timeout(WAIT, responses.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(resp.ttl(), 2);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(c.get("held", None).await.unwrap().kvs().len(), 1);
    // Once keep-alives stop, the lease expires.
    drop(keeper);
    eventually("lease expires after keep-alives stop", || {
        let mut c = c.clone();
        async move {
            let n = c.get("held", None).await.map_err(|e| e.to_string())?.kvs().len();
            if n == 0 {
                Ok(())
            } else {
                Err("still there".to_string())
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_does_not_expire_early_across_a_leader_kill() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let survivor = (leader + 1) % 3;
    let mut c = cluster.client(survivor).await;
    let ttl = 6;
    let granted_at = Instant::now();
    let id = c.lease_grant(ttl, None).await.unwrap().id();
    c.put("session", "alive", Some(PutOptions::new().with_lease(id)))
        .await
        .unwrap();
    cluster.kill(leader);
    cluster.wait_for_leader().await;
    // Until the TTL has passed since the grant, the key must still be there.
    while granted_at.elapsed() < Duration::from_secs(ttl as u64 - 1) {
        let got = eventually("read after failover", || {
            let mut c = c.clone();
            async move { c.get("session", None).await }
        })
        .await;
        assert_eq!(got.kvs().len(), 1, "lease expired early after failover");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // It does expire eventually, on the new leader's clock.
    eventually("lease expires on the new leader", || {
        let mut c = c.clone();
        async move {
            let n = c.get("session", None).await.map_err(|e| e.to_string())?.kvs().len();
            if n == 0 {
                Ok(())
            } else {
                Err("still there".to_string())
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_leases_get_etcds_answers() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;
    let err = grpc_status(
        c.put("k", "v", Some(PutOptions::new().with_lease(0x1234)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    let err = grpc_status(c.lease_revoke(0x1234).await.unwrap_err());
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );
    // A keep-alive of an unknown lease answers TTL 0, as etcd does; the
    // client library turns that into "lease not found".
    match c.lease_keep_alive(0x1234).await {
        Err(etcd_client::Error::LeaseKeepAliveError(msg)) => assert_eq!(msg, "lease not found"),
        other => panic!("expected a TTL-0 answer, got {other:?}"),
    }
    // Granting an id twice fails; revoking works and deletes the key.
    let id = c
        .lease_grant(30, Some(etcd_client::LeaseGrantOptions::new().with_id(77)))
        .await
        .unwrap()
        .id();
    assert_eq!(id, 77);
    let err = grpc_status(
        c.lease_grant(30, Some(etcd_client::LeaseGrantOptions::new().with_id(77)))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.message(), "etcdserver: lease already exists");
    c.put("k", "v", Some(PutOptions::new().with_lease(77))).await.unwrap();
    c.lease_revoke(77).await.unwrap();
    assert!(c.get("k", None).await.unwrap().kvs().is_empty());
    // etcdctl sees the same.
    let out = cluster.etcdctl(&cluster.endpoints(), &["lease", "grant", "100"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("granted with TTL(100s)"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_right_after_a_grant_through_a_follower_finds_the_lease() {
    // The grant is answered once the follower applied it; the keep-alive it forwards may reach
    // a leader that has committed the grant but not applied it yet. It must still find it.
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let mut c = cluster.client(follower).await;
    for _ in 0..50 {
        let lease = c.lease_grant(30, None).await.unwrap();
        let (mut keeper, mut responses) = c.lease_keep_alive(lease.id()).await.unwrap();
        keeper.keep_alive().await.unwrap();
        let answer = tokio::time::timeout(WAIT, responses.message())
            .await
            .expect("no keep-alive answer");
        let answer = answer.unwrap().expect("keep-alive stream ended");
        assert!(
            answer.ttl() > 0,
            "lease {:x} not found right after its grant",
            lease.id()
        );
        c.lease_revoke(lease.id()).await.unwrap();
    }
}

/// How many lease checkpoints member `i` has had applied, from its log.
fn checkpoints_applied(cluster: &Cluster, i: usize) -> usize {
    std::fs::read_to_string(&cluster.members[i].log).map_or(0, |log| log.matches("lease checkpoint applied").count())
}

/// The lease's remaining seconds as member `i` (which must lead) answers them.
async fn ttl_at(cluster: &Cluster, i: usize, id: i64) -> i64 {
    let c = cluster.client(i).await;
    eventually("the leader answers TimeToLive", || {
        let mut c = c.clone();
        async move { c.lease_time_to_live(id, None).await.map(|r| r.ttl()) }
    })
    .await
}

/// `--experimental-enable-lease-checkpoint`: the leader records how long a lease has left, so a
/// new leader starts it there (plus an election timeout) instead of at its full TTL; a renewal
/// starts it at its full TTL again on the next leader too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpointed_lease_keeps_its_remaining_time_across_a_leader_change() {
    let cluster = Cluster::start_with(
        3,
        &[
            "--experimental-enable-lease-checkpoint",
            "--experimental-lease-checkpoint-interval=1s",
        ],
    )
    .await;
    let leader = cluster.wait_for_leader().await;
    let mut c = cluster.client(leader).await;
    let id = c.lease_grant(60, None).await.unwrap().id();
    eventually("the lease ages five seconds", || async {
        match ttl_at(&cluster, leader, id).await {
            ttl if ttl <= 55 => Ok(()),
            ttl => Err(ttl),
        }
    })
    .await;
    let seen = checkpoints_applied(&cluster, leader);
    eventually("a checkpoint after that", || async {
        if checkpoints_applied(&cluster, leader) > seen {
            Ok(())
        } else {
            Err("not yet")
        }
    })
    .await;

    let next = (leader + 1) % 3;
    let next_id = cluster.status(next).await.unwrap().header().unwrap().member_id();
    c.move_leader(next_id).await.expect("move leader");
    assert_eq!(cluster.wait_for_leader().await, next);
    // Without the checkpoint the new leader would say 61 (a full TTL plus the grace).
    let ttl = ttl_at(&cluster, next, id).await;
    assert!(ttl <= 57, "the new leader starts from the checkpoint: {ttl}");
    assert!(ttl > 0);

    let mut c = cluster.client(next).await;
    let (mut keeper, mut responses) = c.lease_keep_alive(id).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let renewed = tokio::time::timeout(WAIT, responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(renewed.ttl(), 60);
    // The renewal clears the recorded remainder through Raft; the next leader must see that.
    eventually("the renewal's clearing is applied", || async {
        let log = std::fs::read_to_string(&cluster.members[next].log).unwrap_or_default();
        if log.contains("0 recorded, 1 cleared") {
            Ok(())
        } else {
            Err("not yet")
        }
    })
    .await;
    let last_id = cluster
        .status((next + 1) % 3)
        .await
        .unwrap()
        .header()
        .unwrap()
        .member_id();
    c.move_leader(last_id).await.expect("move leader");
    assert_eq!(cluster.wait_for_leader().await, (next + 1) % 3);
    let ttl = ttl_at(&cluster, (next + 1) % 3, id).await;
    assert!(
        ttl >= 56,
        "renewed on the previous leader, so (nearly) a full TTL: {ttl}"
    );
}
