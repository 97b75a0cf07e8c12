//! etcd's `--force-new-cluster`: the recovery path after a cluster loses its quorum for good.
//! The one member left restarts with the flag on its data directory and serves alone, with every
//! acknowledged write, its leases and its compaction; new members join it with `member add`.

mod common;

use std::collections::BTreeMap;

use common::{eventually, Cluster};
use etcd_client::{GetOptions, LeaseTimeToLiveOptions, PutOptions};

/// Key → (value, mod revision), and the revision, as member `i` holds them after a linearizable
/// read (so only once it serves).
async fn read_all(cluster: &Cluster, i: usize) -> Result<(i64, BTreeMap<String, (String, i64)>), String> {
    common::all_keys(cluster, i, false).await
}

/// Member `i`'s members as (id, name), once it answers.
async fn members(cluster: &Cluster, i: usize) -> Vec<(u64, String)> {
    let c = cluster.client(i).await;
    let list = eventually("member list", || {
        let mut c = c.clone();
        async move { c.member_list().await }
    })
    .await;
    list.members().iter().map(|m| (m.id(), m.name().to_string())).collect()
}

/// Waits until member `i` leads alone: its status names itself as the leader.
async fn wait_leads(cluster: &Cluster, i: usize, member_id: u64) {
    eventually("the forced member leads", || async move {
        match cluster.status(i).await {
            Some(s) if s.leader() == member_id => Ok(()),
            other => Err(format!("leader {:?}", other.map(|s| s.leader()))),
        }
    })
    .await;
}

/// What the survivor must still hold after every restart.
struct Expected {
    revision: i64,
    data: BTreeMap<String, (String, i64)>,
    compacted_at: i64,
    lease: i64,
    cluster_id: u64,
    member_id: u64,
}

/// The survivor `i` serves everything it held before, alone: same revision, keys, values and
/// mod revisions, the compaction, the lease with its key, the cluster and member ids, and a
/// membership of itself only.
async fn check_survivor(cluster: &Cluster, i: usize, want: &Expected) {
    wait_leads(cluster, i, want.member_id).await;
    let (revision, data) = eventually("linearizable read on the survivor", || read_all(cluster, i)).await;
    assert_eq!(revision, want.revision, "revision after the forced restart");
    assert_eq!(data, want.data, "data after the forced restart");
    let mut c = cluster.client(i).await;
    let compacted = c
        .get("k00", Some(GetOptions::new().with_revision(want.compacted_at - 1)))
        .await
        .expect_err("a read below the compaction must be refused");
    assert!(compacted.to_string().contains("compacted"), "{compacted}");
    let old = c
        .get("k00", Some(GetOptions::new().with_revision(want.compacted_at)))
        .await
        .unwrap();
    assert_eq!(old.kvs().len(), 1, "history from the compaction point on stays");
    let ttl = c
        .lease_time_to_live(want.lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert!(ttl.ttl() > 0, "the lease lives on: ttl {}", ttl.ttl());
    assert_eq!(ttl.keys(), [b"leased".to_vec()]);
    let status = cluster.status(i).await.expect("status");
    let header = status.header().unwrap();
    assert_eq!(header.cluster_id(), want.cluster_id, "same cluster id");
    assert_eq!(header.member_id(), want.member_id, "same member id");
    let name = cluster.members[i].name.clone();
    assert_eq!(members(cluster, i).await, vec![(want.member_id, name)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_member_forms_a_new_cluster_with_all_its_data() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    // A follower survives: its log may hold entries it never learned were committed.
    let survivor = (leader + 1) % 3;
    let mut c = cluster.client(leader).await;
    for i in 0..40 {
        c.put(format!("k{i:02}"), format!("v{i}"), None).await.unwrap();
    }
    for i in 0..10 {
        c.put(format!("k{i:02}"), format!("second-{i}"), None).await.unwrap();
    }
    let compacted_at = c.get("k00", None).await.unwrap().header().unwrap().revision();
    c.compact(compacted_at, None).await.unwrap();
    let lease = c.lease_grant(3600, None).await.unwrap().id();
    c.put("leased", "held", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let last = c.put("last", "write", None).await.unwrap().header().unwrap().revision();
    let (revision, data) = read_all(&cluster, leader).await.unwrap();
    assert_eq!(revision, last);
    assert_eq!(data.len(), 42);
    let before = cluster.status(survivor).await.expect("survivor status");
    let (cluster_id, member_id) = (
        before.header().unwrap().cluster_id(),
        before.header().unwrap().member_id(),
    );
    // Every acknowledged write reached the survivor before the others are lost.
    eventually("the survivor applied the last write", || async {
        let mut s = cluster.client(survivor).await;
        let got = s
            .get("last", Some(GetOptions::new().with_serializable()))
            .await
            .map_err(|e| e.to_string())?;
        match got.header().map(|h| h.revision()) {
            Some(r) if r == last => Ok(()),
            other => Err(format!("survivor at {other:?}, want {last}")),
        }
    })
    .await;

    // The quorum is lost for good: two members and their data are gone.
    for i in 0..3 {
        if i != survivor {
            cluster.kill(i);
            std::fs::remove_dir_all(&cluster.members[i].data_dir).unwrap();
        }
    }
    cluster.kill(survivor);
    let want = Expected {
        revision,
        data,
        compacted_at,
        lease,
        cluster_id,
        member_id,
    };

    cluster.set_extra_args(&["--force-new-cluster"]);
    cluster.restart(survivor);
    check_survivor(&cluster, survivor, &want).await;
    assert!(
        cluster.log_contains(survivor, "forcing restart member"),
        "{}",
        cluster.logs()
    );
    assert!(
        cluster.log_contains(survivor, "restart it without the flag"),
        "the flag left on is warned about\n{}",
        cluster.logs()
    );

    // The flag left on for another start changes nothing.
    cluster.kill(survivor);
    cluster.restart(survivor);
    check_survivor(&cluster, survivor, &want).await;

    // Without it, the one-member configuration stays.
    cluster.terminate(survivor);
    cluster.set_extra_args(&[]);
    cluster.restart(survivor);
    check_survivor(&cluster, survivor, &want).await;

    let mut c = cluster.client(survivor).await;
    let after = c
        .put("after", "forced", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert_eq!(after, revision + 1);

    // The new cluster grows as any other.
    let peer_url = cluster.new_peer_url();
    let added = c.member_add([peer_url.as_str()], None).await.unwrap();
    let new_id = added.member().unwrap().id();
    let joined = cluster.spawn_joining(&peer_url);
    eventually("the new member catches up (HashKV)", || async {
        let (rev_a, data_a) = read_all(&cluster, survivor).await?;
        let mut a = cluster.client(survivor).await;
        let mut b = cluster.client(joined).await;
        let local = b
            .get("after", Some(GetOptions::new().with_serializable()))
            .await
            .map_err(|e| e.to_string())?;
        if local.header().map(|h| h.revision()) != Some(rev_a) {
            return Err(format!(
                "joined member at {:?}, want {rev_a}",
                local.header().map(|h| h.revision())
            ));
        }
        let (ha, hb) = (
            a.hash_kv(rev_a).await.map_err(|e| e.to_string())?,
            b.hash_kv(rev_a).await.map_err(|e| e.to_string())?,
        );
        if (ha.hash(), ha.compact_version()) != (hb.hash(), hb.compact_version()) {
            return Err(format!("HashKV differs at {rev_a}"));
        }
        Ok(data_a)
    })
    .await;
    let ids: Vec<u64> = members(&cluster, joined).await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&member_id) && ids.contains(&new_id), "{ids:?}");
    let mut j = cluster.client(joined).await;
    j.put("through", "the new member", None).await.unwrap();
    let got = c.get("through", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"the new member");
}
