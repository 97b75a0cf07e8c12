//! The multi-shard write path on one real member (`--experimental-stamped-revisions`): the
//! leader stamps every write with revisions from the revision oracle, writes take their stamp,
//! a txn's writes share one, and across a kill -9 the new term starts past the committed
//! ceiling, so revisions skip numbers but never go back, and nothing acknowledged is lost.

mod common;

use std::process::{Command, Stdio};

use common::{free_port, text, Cluster};
use etcd_client::{Compare, CompareOp, EventType, Txn, TxnOp, WatchOptions};

const STAMPED: &str = "--experimental-stamped-revisions";

#[tokio::test(flavor = "multi_thread")]
async fn stamped_writes_keep_revisions_rising_across_a_kill() {
    let mut cluster = Cluster::start_with(1, &[STAMPED]).await;
    let mut client = cluster.client(0).await;

    let mut acknowledged = Vec::new();
    let mut last = 1;
    for i in 0..5 {
        let key = format!("k{i}");
        let revision = client
            .put(key.as_str(), "v", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        assert!(revision > last, "{revision} after {last}");
        last = revision;
        acknowledged.push((key, revision));
    }

    // A txn's writes share one revision.
    let both = Txn::new().and_then([TxnOp::put("t1", "x", None), TxnOp::put("t2", "x", None)]);
    let txn_revision = client.txn(both).await.unwrap().header().unwrap().revision();
    assert!(txn_revision > last);
    last = txn_revision;
    for key in ["t1", "t2"] {
        let got = client.get(key, None).await.unwrap();
        assert_eq!(got.kvs()[0].mod_revision(), txn_revision, "{key}");
    }

    // A txn that writes nothing leaves the revision where it was; its stamp goes unused.
    let nothing = Txn::new()
        .when([Compare::value("t1", CompareOp::Equal, "not x")])
        .and_then([TxnOp::put("t1", "y", None)]);
    let failed = client.txn(nothing).await.unwrap();
    assert!(!failed.succeeded());
    assert_eq!(failed.header().unwrap().revision(), last);

    // kill -9: the member comes back in a new term, which starts at the committed ceiling.
    cluster.kill(0);
    cluster.restart(0);
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    for (key, revision) in &acknowledged {
        let got = client.get(key.as_str(), None).await.unwrap();
        assert_eq!(got.kvs()[0].mod_revision(), *revision, "{key} survives the kill");
    }
    let after = client
        .put("after", "v", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    assert!(after > last, "{after} after {last}");
    assert!(
        after > 10_000,
        "a new term starts past the committed ceiling (a window above the last stamp): {after}"
    );

    // A watch from the start replays every write in revision order, gaps and all.
    let mut stream = client
        .watch("", Some(WatchOptions::new().with_all_keys().with_start_revision(1)))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < acknowledged.len() + 3 {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("the watch delivers the history")
            .unwrap()
            .expect("the stream stays open");
        for event in message.events() {
            assert_eq!(event.event_type(), EventType::Put);
            let kv = event.kv().unwrap();
            seen.push((kv.key_str().unwrap().to_string(), kv.mod_revision()));
        }
    }
    let mut expected = acknowledged.clone();
    expected.push(("t1".into(), txn_revision));
    expected.push(("t2".into(), txn_revision));
    expected.push(("after".into(), after));
    assert_eq!(seen, expected);
}

#[test]
fn stamped_revisions_need_a_one_member_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let peer = format!("http://127.0.0.1:{}", free_port());
    let other = format!("http://127.0.0.1:{}", free_port());
    let output = Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg("serve")
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("default={peer},other={other}")])
        .arg(STAMPED)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success(), "{output:?}");
    assert!(
        text(&output.stderr).contains("--experimental-stamped-revisions needs a one-member cluster"),
        "{output:?}"
    );
}
