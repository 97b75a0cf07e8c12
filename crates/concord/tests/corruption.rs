//! etcd's data corruption checks on real members: `--experimental-initial-corrupt-check` (a
//! member whose data differ from its peers' refuses to start) and
//! `--experimental-corrupt-check-time` (the leader raises the CORRUPT alarm for a member that
//! differs).
//!
//! A member's data are made to differ the way a disk rots them: while the member is stopped, the
//! bytes of one value are overwritten in place in its `kv.redb`. Its revision and compaction
//! point stay those of its peers, so only the hash tells.

mod common;

use std::path::Path;

use common::pki::TestCa;
use common::{eventually, Cluster};
use etcd_client::{AlarmAction, AlarmType};

/// The value every test writes, and what it rots into on one member: the same length, so the
/// store's file keeps its layout.
const GOOD: &[u8] = b"value-as-written-4f1c";
const ROTTEN: &[u8] = b"value-ROTTED-on-disk!";

/// Writes a few keys, one of them [`GOOD`], and waits until every member has applied them all;
/// returns the revision they reached.
async fn write_and_settle(cluster: &Cluster) -> i64 {
    let mut client = cluster.client(0).await;
    for i in 0..5 {
        client.put(format!("k{i}"), format!("v{i}"), None).await.expect("put");
    }
    let revision = client
        .put("precious", GOOD, None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    for i in 0..cluster.members.len() {
        eventually(&format!("member {i} applies revision {revision}"), || async move {
            match cluster.status(i).await.and_then(|s| s.header().map(|h| h.revision())) {
                Some(r) if r >= revision => Ok(()),
                other => Err(format!("at {other:?}")),
            }
        })
        .await;
    }
    revision
}

/// Overwrites every copy of [`GOOD`] in the store file of the (stopped) member at `data_dir`
/// with [`ROTTEN`]; returns how many it found, so a test can tell that it changed something.
fn rot_value(data_dir: &Path) -> usize {
    let path = data_dir.join("member").join("kv.redb");
    let mut bytes = std::fs::read(&path).expect("read kv.redb");
    let mut found = 0;
    let mut from = 0;
    while let Some(at) = bytes[from..].windows(GOOD.len()).position(|w| w == GOOD) {
        let start = from + at;
        bytes[start..start + GOOD.len()].copy_from_slice(ROTTEN);
        found += 1;
        from = start + GOOD.len();
    }
    std::fs::write(&path, bytes).expect("write kv.redb");
    found
}

/// The alarms raised, once there are any: (member id, type) pairs.
async fn first_alarms(client: &etcd_client::Client) -> Vec<(u64, AlarmType)> {
    eventually("the leader raises CORRUPT", || {
        let mut client = client.clone();
        async move {
            let resp = client.alarm(AlarmAction::Get, AlarmType::None, None).await?;
            match resp.alarms() {
                [] => Err(etcd_client::Error::InvalidArgs("no alarm yet".into())),
                alarms => Ok(alarms.iter().map(|a| (a.member_id(), a.alarm())).collect::<Vec<_>>()),
            }
        }
    })
    .await
}

/// Member `i`'s id, as it reports it.
async fn member_id(cluster: &Cluster, i: usize) -> u64 {
    let status = cluster.status(i).await.expect("status");
    status.header().expect("header").member_id()
}

/// Stops member `i` cleanly, rots [`GOOD`] in its store file and starts it again.
fn stop_rot_and_restart(cluster: &mut Cluster, i: usize) {
    assert!(cluster.terminate(i).success(), "member {i} stops cleanly");
    assert!(
        rot_value(&cluster.members[i].data_dir) > 0,
        "the value is in the store file"
    );
    cluster.restart(i);
}

/// A member restarted with the initial check on, beside peers that hold the same data, checks
/// them and serves as usual.
#[tokio::test]
async fn initial_check_passes_when_members_agree() {
    let mut cluster = Cluster::start_with(3, &["--experimental-initial-corrupt-check=true"]).await;
    // Founding members have nothing to compare yet, as in etcd.
    assert!(!cluster.log_contains(2, "starting initial corruption check"));
    write_and_settle(&cluster).await;

    assert!(cluster.terminate(2).success(), "member 2 stops cleanly");
    cluster.restart(2);
    let client = cluster.client(2).await;
    let got = eventually("the restarted member serves", || {
        let mut client = client.clone();
        async move { client.get("precious", None).await }
    })
    .await;
    assert_eq!(got.kvs()[0].value(), GOOD);
    assert!(cluster.log_contains(2, "starting initial corruption check"));
    assert!(
        cluster.log_contains(2, "initial corruption checking passed; no corruption"),
        "{}",
        cluster.logs()
    );
    eventually("the cluster takes writes", || {
        let mut client = client.clone();
        async move { client.put("after", "restart", None).await }
    })
    .await;
}

/// A member whose store rotted while it was down refuses to start with the initial check on,
/// with etcd's error, and its log names the peer whose hash differs.
#[tokio::test]
async fn initial_check_stops_a_member_whose_data_differ() {
    let mut cluster = Cluster::start_with(3, &["--experimental-initial-corrupt-check=true"]).await;
    write_and_settle(&cluster).await;
    let member_id = member_id(&cluster, 2).await;
    let earlier_log = std::fs::metadata(&cluster.members[2].log).expect("log").len() as usize;
    stop_rot_and_restart(&mut cluster, 2);
    assert!(
        cluster.wait_exit(2),
        "a member with inconsistent data must not keep running"
    );
    let log = std::fs::read_to_string(&cluster.members[2].log).expect("log");
    let this_run = &log[earlier_log..];
    assert!(
        this_run.contains(&format!("{member_id:x} found data inconsistency with peers")),
        "{this_run}"
    );
    assert!(
        this_run.contains("found different hash values from remote peer"),
        "{this_run}"
    );
    assert!(
        !this_run.contains("serving clients"),
        "it refused before serving anyone: {this_run}"
    );

    // The healthy majority goes on (once it has a leader again, if member 2 led).
    let client = cluster.client(0).await;
    eventually("the others take writes", || {
        let mut client = client.clone();
        async move { client.put("still", "served", None).await }
    })
    .await;
}

/// Over mutual TLS on the peer URLs the rotted member still reaches its peers' hashes (an
/// unreachable peer would be skipped, and the member would start).
#[tokio::test]
async fn initial_check_asks_peers_over_peer_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "cluster");
    let member = ca.issue("member", "member");
    let client_cert = ca.issue("client", "client");
    let mut secure = ca.secure(&member, &client_cert);
    secure
        .member_args
        .push("--experimental-initial-corrupt-check=true".to_string());
    let mut cluster = Cluster::start_secure(3, secure).await;
    write_and_settle(&cluster).await;
    let member_id = member_id(&cluster, 1).await;
    stop_rot_and_restart(&mut cluster, 1);
    assert!(
        cluster.wait_exit(1),
        "a member with inconsistent data must not keep running"
    );
    assert!(
        cluster.log_contains(1, &format!("{member_id:x} found data inconsistency with peers")),
        "{}",
        cluster.logs()
    );
    assert!(!cluster.log_contains(1, "failed hash kv request"), "{}", cluster.logs());
}

/// With the periodic check on, the leader finds a follower whose store rotted and raises the
/// CORRUPT alarm for it, which clients and etcdctl then list.
#[tokio::test]
async fn periodic_check_raises_corrupt_for_the_member_that_differs() {
    let mut cluster = Cluster::start_with(3, &["--experimental-corrupt-check-time=500ms"]).await;
    write_and_settle(&cluster).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    let follower_id = member_id(&cluster, follower).await;
    let leader_client = cluster.client(leader).await;
    // Healthy members raise nothing: wait for a check to finish first.
    eventually("a periodic check completes", || async {
        if cluster.log_contains(leader, "finished peer corruption check") {
            Ok(())
        } else {
            Err("not yet")
        }
    })
    .await;
    let none = leader_client
        .clone()
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    assert!(
        none.alarms().is_empty(),
        "no alarm while members agree: {:?}",
        none.alarms()
            .iter()
            .map(|a| (a.member_id(), a.alarm()))
            .collect::<Vec<_>>()
    );

    stop_rot_and_restart(&mut cluster, follower);

    let alarms = first_alarms(&leader_client).await;
    assert_eq!(alarms, [(follower_id, AlarmType::Corrupt)]);
    assert!(
        cluster.log_contains(leader, "same compact revision then hashes must match"),
        "{}",
        cluster.logs()
    );
    let listed = cluster.etcdctl(&cluster.endpoints()[leader..=leader], &["alarm", "list"]);
    assert!(listed.status.success(), "etcdctl alarm list: {listed:?}");
    assert_eq!(
        common::text(&listed.stdout).trim(),
        format!("memberID:{follower_id} alarm:CORRUPT")
    );

    // As etcd: the cluster refuses changes (DataLoss, "etcdserver: corrupt cluster") and keeps
    // serving reads (lowering the alarm is covered by the store's tests: here the leader's next
    // check would raise it again).
    let mut client = cluster.client(follower).await;
    let refused = client
        .put("after-corrupt", "v", None)
        .await
        .expect_err("a put while CORRUPT");
    let status = common::grpc_status(refused);
    assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    assert_eq!(status.message(), "etcdserver: corrupt cluster");
    let put = cluster.etcdctl(&cluster.endpoints()[leader..=leader], &["put", "after-corrupt", "v"]);
    assert_eq!(
        common::text(&put.stderr).lines().last(),
        Some("Error: etcdserver: corrupt cluster")
    );
    let read = client
        .get("after-corrupt", None)
        .await
        .expect("reads are served while CORRUPT");
    assert!(read.kvs().is_empty());
}

/// `--experimental-compact-hash-check-enabled`: after a compaction the leader compares every
/// member at the compaction revision; once one member's data rot, the next compaction's check
/// raises CORRUPT for it.
#[tokio::test]
async fn compaction_hash_check_raises_corrupt_for_the_member_that_differs() {
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--experimental-compact-hash-check-enabled",
            "--experimental-compact-hash-check-time=300ms",
        ],
    )
    .await;
    let revision = write_and_settle(&cluster).await;
    let leader = cluster.wait_for_leader().await;
    let mut client = cluster.client(leader).await;
    client
        .compact(revision, Some(etcd_client::CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    eventually("the leader checks every member at the compaction", || async {
        if cluster.log_contains(leader, "successfully checked hash on whole cluster") {
            Ok(())
        } else {
            Err("not yet")
        }
    })
    .await;
    let alarms = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarms");
    assert!(alarms.alarms().is_empty(), "no alarm while members agree");

    let follower = (leader + 1) % 3;
    let follower_id = member_id(&cluster, follower).await;
    stop_rot_and_restart(&mut cluster, follower);
    let leader = cluster.wait_for_leader().await;
    let mut client = cluster.client(leader).await;
    let later = client
        .put("later", "v", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    client
        .compact(later, Some(etcd_client::CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    let alarms = first_alarms(&client).await;
    assert_eq!(alarms, [(follower_id, AlarmType::Corrupt)]);
    assert!(
        cluster.log_contains(leader, "failed compaction hash check"),
        "{}",
        cluster.logs()
    );
}
