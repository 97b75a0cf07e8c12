//! Crashes and restarts of real members: nothing acknowledged is lost,
//! followers serve writes, and a leaderless cluster says so instead of hanging.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, grpc_status, Cluster, WAIT};
use etcd_client::{Client, ConnectOptions, GetOptions};
use tonic::Code;

/// Reads every key under `prefix` from member `i`, serializably (its local state).
async fn local_keys(cluster: &Cluster, i: usize, prefix: &str) -> Result<BTreeMap<String, String>, etcd_client::Error> {
    let mut c = cluster.client(i).await;
    let resp = c
        .get(prefix, Some(GetOptions::new().with_prefix().with_serializable()))
        .await?;
    Ok(resp
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string()))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_serve_writes_and_linearizable_reads() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    let mut via_follower = cluster.client(followers[0]).await;
    let put = via_follower.put("through-follower", "yes", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 2);

    // A linearizable read on the other follower must see the write at once.
    let mut other = cluster.client(followers[1]).await;
    let got = other.get("through-follower", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"yes");
    let mut on_leader = cluster.client(leader).await;
    let got = on_leader.get("through-follower", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;

    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let acked_count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let endpoints = cluster.endpoints();
        let (acked, acked_count, stop) = (acked.clone(), acked_count.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let opts = ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_secs(3));
            let mut target = w % endpoints.len();
            let mut seq = 0u64;
            // Bounded: the test stops the writers, and each stops after 20k attempts regardless.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut c) = Client::connect([endpoints[target].as_str()], Some(opts.clone())).await else {
                    target = (target + 1) % endpoints.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("load/{w}/{seq:06}");
                    let value = format!("value-{w}-{seq}");
                    seq += 1;
                    match c.put(key.clone(), value.clone(), None).await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(key, value);
                            acked_count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            target = (target + 1) % endpoints.len();
                            break;
                        }
                    }
                }
            }
        }));
    }

    let wait_for_acks = |n: usize| {
        let acked_count = acked_count.clone();
        async move {
            eventually("writes acknowledged", || {
                let got = acked_count.load(Ordering::Relaxed);
                async move {
                    if got >= n {
                        Ok(())
                    } else {
                        Err(got)
                    }
                }
            })
            .await
        }
    };
    wait_for_acks(200).await;
    cluster.kill(leader);
    let at_kill = acked_count.load(Ordering::Relaxed);
    // New writes resume once the survivors elect a leader.
    wait_for_acks(at_kill + 200).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, leader);
    let mut c = cluster.client(new_leader).await;
    let stored = c.get("load/", Some(GetOptions::new().with_prefix())).await.unwrap();
    let stored: BTreeMap<String, String> = stored
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string()))
        .collect();
    let lost: Vec<&String> = acked.keys().filter(|k| stored.get(*k) != acked.get(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );

    // The killed member comes back and catches up with everything.
    cluster.restart(leader);
    let expected = stored.clone();
    eventually("restarted member catches up", || {
        let expected = expected.clone();
        let cluster = &cluster;
        async move {
            let local = local_keys(cluster, leader, "load/").await.map_err(|e| e.to_string())?;
            if local == expected {
                Ok(())
            } else {
                Err(format!("{} of {} keys", local.len(), expected.len()))
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_member_survives_kill_and_restart_in_turn() {
    let mut cluster = Cluster::start(3).await;
    let mut expected = BTreeMap::new();
    for round in 0..3 {
        let survivor = (round + 1) % 3;
        let mut c = cluster.client(survivor).await;
        for k in 0..20 {
            let key = format!("round/{round}/before/{k}");
            c.put(key.clone(), "v", None).await.unwrap();
            expected.insert(key, "v".to_string());
        }
        cluster.kill(round);
        let c = cluster.client(survivor).await;
        for k in 0..20 {
            let key = format!("round/{round}/during/{k}");
            eventually("write with one member down", || {
                let (mut c, key) = (c.clone(), key.clone());
                async move { c.put(key, "v", None).await }
            })
            .await;
            expected.insert(key, "v".to_string());
        }
        drop(c);
        cluster.restart(round);
        eventually("restarted member has every key", || {
            let cluster = &cluster;
            let expected = expected.clone();
            async move {
                let local = local_keys(cluster, round, "round/").await.map_err(|e| e.to_string())?;
                if local == expected {
                    Ok(())
                } else {
                    Err(format!("{} of {} keys", local.len(), expected.len()))
                }
            }
        })
        .await;
        cluster.wait_for_leader().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaderless_member_answers_no_leader() {
    let mut cluster = Cluster::start(3).await;
    cluster.client(0).await.put("k", "v", None).await.unwrap();
    cluster.kill(1);
    cluster.kill(2);
    let mut c = cluster.client(0).await;
    let err = eventually("member notices it has no leader", || {
        let mut c = c.clone();
        async move {
            match c.put("k", "v2", None).await {
                Err(e) => {
                    let s = grpc_status(e);
                    if s.message() == "etcdserver: no leader" {
                        Ok(s)
                    } else {
                        Err(s.message().to_string())
                    }
                }
                Ok(_) => Err("write succeeded without a quorum".to_string()),
            }
        }
    })
    .await;
    assert_eq!(err.code(), Code::Unavailable);
    let err = grpc_status(c.get("k", None).await.unwrap_err());
    assert_eq!(err.message(), "etcdserver: no leader");
    // Serializable reads still work from the member's own state.
    let got = c.get("k", Some(GetOptions::new().with_serializable())).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"v");
    let _ = WAIT;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_member_cleanly_and_it_restarts() {
    let mut cluster = Cluster::start(3).await;
    cluster.client(2).await.put("before-stop", "1", None).await.unwrap();
    let status = cluster.terminate(2);
    assert!(status.success(), "exit status {status:?}\n{}", cluster.logs());
    cluster.restart(2);
    eventually("member back with its data", || {
        let cluster = &cluster;
        async move {
            let local = local_keys(cluster, 2, "before-stop").await.map_err(|e| e.to_string())?;
            if local.len() == 1 {
                Ok(())
            } else {
                Err("missing".to_string())
            }
        }
    })
    .await;
}
