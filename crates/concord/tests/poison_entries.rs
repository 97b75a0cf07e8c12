//! One request must never stop the cluster: txns nested past what the Raft log can decode are
//! refused before they are proposed, and an entry that no member can decode (one an older build
//! let into the log) is applied as an error on every member, which then goes on, including a
//! member that meets it later while catching up.

mod common;

use common::{eventually, grpc_status, Cluster};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use tonic::Code;

/// The key the innermost txn writes: it must never appear.
const DEEP_KEY: &str = "/deep";

/// A txn nested `depth` levels deep (the outermost counts as 1) whose innermost level puts
/// [`DEEP_KEY`], as in the report.
fn nested_txn(depth: usize) -> Txn {
    let mut txn = Txn::new()
        .when([Compare::version("known/0", CompareOp::Greater, 0)])
        .and_then([TxnOp::put(DEEP_KEY, "x", None)]);
    for _ in 1..depth {
        txn = Txn::new().and_then([TxnOp::txn(txn)]);
    }
    txn
}

/// Writes the data set every test checks afterwards.
async fn write_known(client: &mut Client) {
    for i in 0..20 {
        client.put(format!("known/{i}"), format!("v{i}"), None).await.unwrap();
    }
}

/// Every member runs, answers a linearizable read of the known data set unchanged, and has no
/// [`DEEP_KEY`]; their HashKV agree at one revision.
async fn assert_cluster_intact(cluster: &Cluster) {
    let mut revision = 0;
    for i in 0..cluster.members.len() {
        assert!(cluster.pid(i).is_some(), "member {i} is not running");
        let mut client = cluster.client(i).await;
        let got = eventually(&format!("a linearizable read on member {i}"), || {
            let mut client = client.clone();
            async move { client.get("known/", Some(GetOptions::new().with_prefix())).await }
        })
        .await;
        assert_eq!(got.kvs().len(), 20, "member {i} lost keys");
        for kv in got.kvs() {
            let n = kv.key_str().unwrap().trim_start_matches("known/");
            assert_eq!(kv.value_str().unwrap(), format!("v{n}"), "member {i}");
        }
        let deep = client.get(DEEP_KEY, None).await.unwrap();
        assert!(deep.kvs().is_empty(), "member {i} applied the refused txn");
        revision = revision.max(got.header().unwrap().revision());
    }
    let mut hashes = Vec::new();
    for i in 0..cluster.members.len() {
        let client = cluster.client(i).await;
        let hash = eventually(&format!("HashKV at {revision} on member {i}"), || {
            let mut client = client.clone();
            async move { client.hash_kv(revision).await }
        })
        .await;
        hashes.push(hash.hash());
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "members disagree: {hashes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txns_nested_at_any_depth_get_an_answer_and_every_member_stays_up() {
    let cluster = Cluster::start(3).await;
    cluster.wait_for_leader().await;
    let mut client = cluster.client(0).await;
    write_known(&mut client).await;

    // Within the limit the txn runs; its put is undone at once so the intact check holds.
    let ran = client.txn(nested_txn(32)).await.unwrap();
    assert!(ran.succeeded());
    assert_eq!(client.get(DEEP_KEY, None).await.unwrap().kvs()[0].value(), b"x");
    client.delete(DEEP_KEY, None).await.unwrap();

    for depth in [33, 48, 49, 50, 51, 60, 120, 200] {
        for member in 0..3 {
            let mut client = cluster.client(member).await;
            let status = grpc_status(client.txn(nested_txn(depth)).await.unwrap_err());
            // Deeper than the edge's decoder reads (about 50 levels), the request is refused as
            // undecodable, as gRPC servers do; below that, by the depth check, with its message.
            if depth <= 50 {
                assert_eq!(status.code(), Code::InvalidArgument, "depth {depth}: {status:?}");
                assert!(
                    status.message().contains("nested too deeply"),
                    "depth {depth}: {status:?}"
                );
            } else {
                assert!(
                    matches!(status.code(), Code::InvalidArgument | Code::Internal),
                    "depth {depth}: {status:?}"
                );
            }
        }
    }
    assert_cluster_intact(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_no_member_can_decode_is_applied_as_an_error_and_the_log_goes_on() {
    // Every member is started as builds before the depth check behaved: a txn too deep for the
    // log's decoder is proposed and committed.
    let mut cluster = Cluster::start_with(3, &["--unsafe-sabotage", "unchecked-txn-depth"]).await;
    let leader = cluster.wait_for_leader().await;
    let mut client = cluster.client(leader).await;
    write_known(&mut client).await;

    // One member is down while the entry is committed: it meets the entry later, from the log.
    let late = (leader + 1) % 3;
    cluster.terminate(late);

    let before = client.get("known/0", None).await.unwrap().header().unwrap().revision();
    let status = grpc_status(client.txn(nested_txn(50)).await.unwrap_err());
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        "etcdserver: request cannot be applied: its log entry does not decode"
    );

    // The log goes on: later writes apply, and the entry took no revision.
    let after = client.put("known/after", "1", None).await.unwrap();
    assert_eq!(after.header().unwrap().revision(), before + 1);
    client.delete("known/after", None).await.unwrap();

    // The member that was down comes back (as an upgraded build would: no sabotage) and applies
    // the entry from the log like the others did.
    cluster.set_extra_args(&[]);
    cluster.restart(late);
    let mut late_client = cluster.client(late).await;
    let caught_up = eventually("the returning member catches up", || {
        let mut c = late_client.clone();
        async move {
            let r = c
                .get("known/0", Some(GetOptions::new().with_serializable()))
                .await
                .map_err(|e| e.to_string())?;
            let revision = r.header().map_or(0, |h| h.revision());
            if revision >= before + 2 {
                Ok(revision)
            } else {
                Err(format!("at revision {revision}"))
            }
        }
    })
    .await;
    assert!(caught_up >= before + 2);
    assert!(late_client.get(DEEP_KEY, None).await.unwrap().kvs().is_empty());

    // Every member restarts and replays whatever of its log its store had not made durable.
    for i in 0..3 {
        cluster.terminate(i);
        cluster.restart(i);
    }
    cluster.wait_for_leader().await;
    assert_cluster_intact(&cluster).await;
    for i in 0..3 {
        assert!(!cluster.log_contains(i, "fatal"), "member {i} logged a fatal error");
        assert!(!cluster.log_contains(i, "panicked"), "member {i} panicked");
    }
}
