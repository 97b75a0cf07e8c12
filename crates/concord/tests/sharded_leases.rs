//! Leases in a keyspace split into shards, on three real members: keys of every shard attach to
//! a lease; a revoke, or the lease running out, deletes them all at one revision; TimeToLive lists
//! them all; a split carries leased keys and the leases to the new shard; Lock works on a name
//! in any shard.

mod common;

use common::puts::watch_responses;
use common::{eventually, grpc_status, Cluster};
use etcd_client::{GetOptions, LeaseTimeToLiveOptions, LockOptions, PutOptions, WatchOptions};

const SPLIT: &str = "--experimental-initial-shards=m";

async fn started(args: &[&str]) -> Cluster {
    let cluster = Cluster::start_with(3, args).await;
    let client = cluster.client(0).await;
    eventually("both shards take writes", || {
        let mut client = client.clone();
        async move {
            for key in ["a/ready", "z/ready"] {
                client.put(key, "v", None).await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        }
    })
    .await;
    cluster
}

/// The revision the keys `[key, range_end)` were all deleted at, or a panic.
async fn gone_at(client: &mut etcd_client::Client, keys: &[&str]) -> i64 {
    let mut at = Vec::new();
    for key in keys {
        let got = client.get(*key, None).await.unwrap();
        assert!(got.kvs().is_empty(), "{key} is gone");
        // The newest version before its deletion, then the deletion's revision from a watch.
        let mut watch = client
            .watch(*key, Some(WatchOptions::new().with_start_revision(1)))
            .await
            .unwrap();
        let responses = watch_responses(&mut watch, 2).await;
        at.push(responses.concat()[1].0);
    }
    assert!(at.windows(2).all(|w| w[0] == w[1]), "deleted at one revision: {at:?}");
    at[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_of_every_shard_go_with_their_lease_at_one_revision() {
    let cluster = started(&[SPLIT]).await;
    let mut client = cluster.client(1).await;
    let lease = client.lease_grant(60, None).await.unwrap().id();
    for key in ["a/1", "z/1", "z/2"] {
        client
            .put(key, "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
    }
    let ttl = client
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    let mut keys: Vec<String> = ttl
        .keys()
        .iter()
        .map(|k| String::from_utf8(k.clone()).unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["a/1", "z/1", "z/2"]);

    let revoked = client.lease_revoke(lease).await.unwrap();
    let revision = revoked.header().unwrap().revision();
    assert_eq!(gone_at(&mut client, &["a/1", "z/1", "z/2"]).await, revision);
    let count = |revision| {
        Some(
            GetOptions::new()
                .with_range("zz")
                .with_count_only()
                .with_revision(revision),
        )
    };
    assert_eq!(client.get("a/1", count(revision - 1)).await.unwrap().count(), 5);
    // Gone everywhere: the lease cannot take keys any more, on either shard.
    for key in ["a/2", "z/3"] {
        let refused = client.put(key, "v", Some(PutOptions::new().with_lease(lease))).await;
        assert_eq!(grpc_status(refused.unwrap_err()).code(), tonic::Code::NotFound, "{key}");
    }
    let again = grpc_status(client.lease_revoke(lease).await.unwrap_err());
    assert_eq!(again.code(), tonic::Code::NotFound, "{again:?}");

    // A lease that runs out takes its keys on every shard with it, at one revision.
    let short = client.lease_grant(2, None).await.unwrap().id();
    for key in ["a/short", "z/short"] {
        client
            .put(key, "v", Some(PutOptions::new().with_lease(short)))
            .await
            .unwrap();
    }
    eventually("the expired lease's keys are gone", || {
        let mut client = client.clone();
        async move {
            let left = client
                .get("a/short", Some(GetOptions::new().with_range("zz").with_count_only()))
                .await
                .unwrap()
                .count();
            let short_left = client.get("z/short", None).await.unwrap().kvs().len() as i64
                + client.get("a/short", None).await.unwrap().kvs().len() as i64;
            match short_left {
                0 => Ok(()),
                _ => Err(left),
            }
        }
    })
    .await;
    gone_at(&mut client, &["a/short", "z/short"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_split_carries_leased_keys_and_the_leases() {
    let cluster = started(&["--experimental-stamped-revisions"]).await;
    let mut client = cluster.client(0).await;
    let lease = client.lease_grant(60, None).await.unwrap().id();
    for key in ["a/leased", "x/leased"] {
        client
            .put(key, "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
    }
    let endpoint = format!("--endpoints={}", cluster.endpoints()[0]);
    let split = common::concord(&["shard", "split", "m", &endpoint]);
    assert!(split.status.success(), "{split:?}");

    // The new shard knows the lease: its keys attach to it.
    client
        .put("y/leased", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("the new shard knows the lease");
    let revision = client.lease_revoke(lease).await.unwrap().header().unwrap().revision();
    assert_eq!(
        gone_at(&mut client, &["a/leased", "x/leased", "y/leased"]).await,
        revision
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn locks_on_names_in_any_shard() {
    let cluster = started(&[SPLIT]).await;
    let mut first = cluster.client(0).await;
    let mut second = cluster.client(2).await;
    for name in ["a/lock", "z/lock"] {
        let lease = first.lease_grant(30, None).await.unwrap().id();
        let held = first
            .lock(name, Some(LockOptions::new().with_lease(lease)))
            .await
            .unwrap();
        let other = second.lease_grant(30, None).await.unwrap().id();
        let mut waiter = second.clone();
        let name_owned = name.to_string();
        let waiting = tokio::spawn(async move {
            waiter
                .lock(name_owned, Some(LockOptions::new().with_lease(other)))
                .await
        });
        // The second waits while the first holds it, and gets it once the first lets go.
        let queued = format!("{name}/{other:x}");
        eventually("the second caller queues", || {
            let mut client = first.clone();
            let queued = queued.clone();
            async move {
                match client.get(queued.as_str(), None).await.unwrap().kvs().len() {
                    1 => Ok(()),
                    n => Err(n),
                }
            }
        })
        .await;
        let unlocked = first.unlock(held.key()).await.unwrap().header().unwrap().revision();
        let got = tokio::time::timeout(common::WAIT, waiting)
            .await
            .expect("the lock passes on")
            .unwrap()
            .unwrap();
        assert_eq!(got.key(), queued.as_bytes(), "{name}");
        assert!(
            got.header().unwrap().revision() >= unlocked,
            "{name}: the second got the lock only once the first let go ({got:?}, unlocked at {unlocked})"
        );
    }
}
