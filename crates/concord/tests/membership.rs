//! Changing the members of a running cluster: growing, shrinking, learners
//! that catch up through snapshots, and etcd's safety checks.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, grpc_status, Cluster};
use etcd_client::{Client, ConnectOptions, MemberAddOptions};
use tonic::Code;

/// Everything member `i` holds, read locally: key → (value, mod revision).
async fn local_data(cluster: &Cluster, i: usize) -> Result<(i64, BTreeMap<String, (String, i64)>), String> {
    common::all_keys(cluster, i, true).await
}

/// Waits until every listed member holds exactly the same data at the same
/// revision, and their HashKV (etcd's replica consistency check) agrees.
async fn wait_converged(cluster: &Cluster, members: &[usize]) -> BTreeMap<String, (String, i64)> {
    eventually("members converge", || async move {
        let first = local_data(cluster, members[0]).await?;
        let mut hashes = Vec::new();
        for &i in members {
            let other = local_data(cluster, i).await?;
            if other != first {
                return Err(format!(
                    "member {i} differs: rev {} vs {}, {} vs {} keys",
                    other.0,
                    first.0,
                    other.1.len(),
                    first.1.len()
                ));
            }
            let mut c = cluster.client(i).await;
            let hash = c.hash_kv(first.0).await.map_err(|e| e.to_string())?;
            hashes.push((hash.hash(), hash.compact_version()));
        }
        if hashes.windows(2).any(|w| w[0] != w[1]) {
            return Err(format!("HashKV differs at revision {}: {hashes:?}", first.0));
        }
        Ok(first.1)
    })
    .await
}

/// Writes `load/NNNNNN` keys until stopped, recording what was acknowledged.
fn start_writer(
    endpoints: Vec<String>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(3));
        let mut target = 0;
        let mut client: Option<Client> = None;
        for seq in 0..100_000u64 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if client.is_none() {
                let endpoint = endpoints[target % endpoints.len()].as_str();
                client = Client::connect([endpoint], Some(opts.clone())).await.ok();
            }
            let Some(c) = client.as_mut() else {
                target += 1;
                continue;
            };
            let (key, value) = (format!("load/{seq:06}"), format!("v{seq}"));
            match c.put(key.clone(), value.clone(), None).await {
                Ok(_) => {
                    acked.lock().unwrap().insert(key, value);
                }
                Err(_) => {
                    client = None;
                    target += 1;
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_and_shrink_back_to_three_under_load() {
    let mut cluster = Cluster::start(3).await;
    let acked = Arc::<Mutex<BTreeMap<String, String>>>::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(cluster.endpoints(), acked.clone(), stop.clone());

    // Grow: add two voters, one at a time, each joining with --initial-cluster-state existing.
    let mut c = cluster.client(0).await;
    for _ in 0..2 {
        let peer_url = cluster.new_peer_url();
        let added = c.member_add([peer_url.as_str()], None).await.unwrap();
        assert!(!added.member().unwrap().is_learner());
        let i = cluster.spawn_joining(&peer_url);
        cluster.wait_for_leader().await;
        // The new member catches up (through a snapshot: its log starts empty).
        eventually("new member catches up", || {
            let cluster = &cluster;
            async move {
                let (rev, _) = local_data(cluster, i).await?;
                if rev > 1 {
                    Ok(())
                } else {
                    Err("still empty".to_string())
                }
            }
        })
        .await;
    }
    // The load goes on through the changes: wait (bounded) for it to make progress rather than
    // count on a throughput, which a loaded machine may not give.
    let writes_flow = |at_least: usize| {
        let acked = acked.clone();
        async move {
            eventually("writes are acknowledged", || {
                let n = acked.lock().unwrap().len();
                async move {
                    if n >= at_least {
                        Ok(())
                    } else {
                        Err(n)
                    }
                }
            })
            .await
        }
    };
    writes_flow(50).await;
    let list = c.member_list().await.unwrap();
    assert_eq!(list.members().len(), 5);
    assert!(list
        .members()
        .iter()
        .all(|m| !m.client_urls().is_empty() || m.name().is_empty()));

    // Shrink: remove the first two original members, whoever leads.
    for victim in 0..2 {
        let id = cluster.status(victim).await.unwrap().header().unwrap().member_id();
        let survivor = 4;
        let mut s = cluster.client(survivor).await;
        eventually("member removed", || {
            let mut s = s.clone();
            async move { s.member_remove(id).await }
        })
        .await;
        assert!(
            cluster.wait_exit(victim),
            "a removed member must stop by itself\n{}",
            cluster.logs()
        );
        let _ = &mut s;
    }
    let after_shrink = acked.lock().unwrap().len();
    writes_flow(after_shrink + 50).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    cluster.wait_for_leader().await;

    let remaining = [2, 3, 4];
    let mut s = cluster.client(2).await;
    assert_eq!(s.member_list().await.unwrap().members().len(), 3);
    // A write after all that, then every member holds the same data.
    s.put("after", "shrink", None).await.unwrap();
    let data = wait_converged(&cluster, &remaining).await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "too few writes acknowledged: {}", acked.len());
    let lost: Vec<_> = acked
        .iter()
        .filter(|(k, v)| data.get(*k).map(|d| &d.0) != Some(*v))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(3)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_catches_up_through_a_snapshot_then_is_promoted() {
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--snapshot-count",
            "500",
            "--experimental-snapshot-catchup-entries",
            "50",
        ],
    )
    .await;
    let mut c = cluster.client(0).await;
    for i in 0..1500 {
        c.put(format!("k{i:05}"), "v", None).await.unwrap();
    }
    let peer_url = cluster.new_peer_url();
    let added = c
        .member_add([peer_url.as_str()], Some(MemberAddOptions::new().with_is_learner()))
        .await
        .unwrap();
    let learner_id = added.member().unwrap().id();
    assert!(added.member().unwrap().is_learner());

    // At most one learner, as in etcd.
    let err = grpc_status(
        c.member_add(
            [cluster.new_peer_url().as_str()],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(err.message(), "etcdserver: too many learner members in cluster");

    // Not started yet, so not caught up: promotion is refused.
    let err = grpc_status(c.member_promote(learner_id).await.unwrap_err());
    assert_eq!(
        err.message(),
        "etcdserver: can only promote a learner member which is in sync with leader"
    );

    let learner = cluster.spawn_joining(&peer_url);
    wait_converged(&cluster, &[0, learner]).await;
    assert!(
        cluster.log_contains(learner, "installing snapshot"),
        "the learner should have caught up from a snapshot\n{}",
        cluster.logs()
    );

    eventually("promote the caught-up learner", || {
        let mut c = c.clone();
        async move { c.member_promote(learner_id).await }
    })
    .await;
    let list = c.member_list().await.unwrap();
    assert!(list.members().iter().all(|m| !m.is_learner()));
    assert_eq!(list.members().len(), 4);
    c.put("after-promotion", "1", None).await.unwrap();
    wait_converged(&cluster, &[0, 1, 2, learner]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_would_lose_quorum_are_refused() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let down = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let other_id = cluster.status(other).await.unwrap().header().unwrap().member_id();
    cluster.kill(down);
    let mut c = cluster.client(leader).await;
    // With one of three down, a fourth voter would need 3 of 4 active: refused.
    // The leader's heartbeats find the member gone; until then the check may pass.
    c.put("notice", "1", None).await.unwrap();
    let err = match c.member_add([cluster.new_peer_url().as_str()], None).await {
        Err(e) => grpc_status(e),
        Ok(_) => panic!("a voter was added without a healthy quorum"),
    };
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unavailable, "etcdserver: unhealthy cluster")
    );
    // Removing a live member would leave one active voter of two: refused.
    let err = grpc_status(c.member_remove(other_id).await.unwrap_err());
    assert_eq!(err.message(), "etcdserver: unhealthy cluster");
    let err = grpc_status(c.member_remove(0xdead).await.unwrap_err());
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "etcdserver: member not found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_down_for_many_writes_comes_back_through_a_snapshot() {
    // Concurrent puts share log entries (one entry per driver flush), so 100,000 puts
    // from 32 writers may make as few as ~3,000 entries: the thresholds sit well below that.
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--snapshot-count",
            "1000",
            "--experimental-snapshot-catchup-entries",
            "100",
        ],
    )
    .await;
    let leader = cluster.wait_for_leader().await;
    let down = (leader + 1) % 3;
    cluster.kill(down);
    let total: usize = std::env::var("CONCORD_SNAPSHOT_TEST_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let writers = 32;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut c = cluster.client(leader).await;
        tasks.push(tokio::spawn(async move {
            for i in (w..total).step_by(writers) {
                c.put(format!("bulk/{i:06}"), "v", None).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    cluster.restart(down);
    let data = wait_converged(&cluster, &[leader, down]).await;
    assert_eq!(data.len(), total);
    assert!(cluster.log_contains(down, "installing snapshot"), "{}", cluster.logs());
}
