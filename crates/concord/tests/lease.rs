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
