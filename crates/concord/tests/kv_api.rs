//! etcd's KV API on a real 3-member cluster, checked field by field against
//! what etcd documents, through the `etcd-client` crate and etcdctl.

mod common;

use common::{eventually, grpc_status, Cluster};
use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_range_txn_compact_round_trip() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;

    // Put: revisions start at 1 on an empty store; the first write makes 2.
    let put = c.put("foo", "bar", None).await.unwrap();
    let h = put.header().unwrap();
    assert_eq!(h.revision(), 2);
    assert_ne!(h.cluster_id(), 0);
    assert_ne!(h.member_id(), 0);
    assert!(h.raft_term() >= 1);
    assert!(put.prev_key().is_none());

    let put = c
        .put("foo", "baz", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    let prev = put.prev_key().expect("prev_kv requested");
    assert_eq!(prev.value(), b"bar");
    assert_eq!(prev.mod_revision(), 2);

    let got = c.get("foo", None).await.unwrap();
    assert_eq!(got.count(), 1);
    let kv = &got.kvs()[0];
    assert_eq!((kv.key(), kv.value()), (&b"foo"[..], &b"baz"[..]));
    assert_eq!(kv.create_revision(), 2);
    assert_eq!(kv.mod_revision(), 3);
    assert_eq!(kv.version(), 2);
    assert_eq!(kv.lease(), 0);
    assert_eq!(got.header().unwrap().revision(), 3);

    // Ranges: prefix, from-key, all keys, limit/more/count, sort, keys-only, count-only.
    for k in ["a1", "a2", "a3", "b1"] {
        c.put(k, format!("v-{k}"), None).await.unwrap();
    }
    let prefix = c.get("a", Some(GetOptions::new().with_prefix())).await.unwrap();
    assert_eq!(
        prefix.kvs().iter().map(|kv| kv.key()).collect::<Vec<_>>(),
        vec![&b"a1"[..], b"a2", b"a3"]
    );
    let limited = c
        .get("a", Some(GetOptions::new().with_prefix().with_limit(2)))
        .await
        .unwrap();
    assert_eq!(limited.kvs().len(), 2);
    assert!(limited.more());
    assert_eq!(limited.count(), 3);
    let from = c.get("b", Some(GetOptions::new().with_from_key())).await.unwrap();
    assert_eq!(
        from.kvs().iter().map(|kv| kv.key()).collect::<Vec<_>>(),
        vec![&b"b1"[..], b"foo"]
    );
    let all = c.get("", Some(GetOptions::new().with_all_keys())).await.unwrap();
    assert_eq!(all.count(), 5);
    let desc = c
        .get(
            "a",
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend),
            ),
        )
        .await
        .unwrap();
    assert_eq!(desc.kvs()[0].key(), b"a3");
    let keys_only = c.get("a1", Some(GetOptions::new().with_keys_only())).await.unwrap();
    assert!(keys_only.kvs()[0].value().is_empty());
    let count_only = c
        .get("a", Some(GetOptions::new().with_prefix().with_count_only()))
        .await
        .unwrap();
    assert!(count_only.kvs().is_empty());
    assert_eq!(count_only.count(), 3);

    // Historical read.
    let old = c.get("foo", Some(GetOptions::new().with_revision(2))).await.unwrap();
    assert_eq!(old.kvs()[0].value(), b"bar");

    // Txn: compare on value, success branch with a put and a get.
    let txn = Txn::new()
        .when([Compare::value("foo", CompareOp::Equal, "baz")])
        .and_then([TxnOp::put("foo", "qux", None), TxnOp::get("foo", None)])
        .or_else([TxnOp::get("a1", None)]);
    let resp = c.txn(txn).await.unwrap();
    assert!(resp.succeeded());
    let ops = resp.op_responses();
    assert_eq!(ops.len(), 2);
    match &ops[1] {
        TxnOpResponse::Get(g) => assert_eq!(g.kvs()[0].value(), b"qux"),
        _ => panic!("expected a range response"),
    }
    let rev_after_txn = resp.header().unwrap().revision();

    // Failing compare takes the failure branch and does not bump the revision.
    let txn = Txn::new()
        .when([Compare::version("foo", CompareOp::Greater, 100)])
        .and_then([TxnOp::put("foo", "never", None)])
        .or_else([TxnOp::get("foo", None)]);
    let resp = c.txn(txn).await.unwrap();
    assert!(!resp.succeeded());
    assert_eq!(resp.header().unwrap().revision(), rev_after_txn);

    // Delete with prev_kv.
    let del = c
        .delete("a", Some(DeleteOptions::new().with_prefix().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(del.deleted(), 3);
    assert_eq!(del.prev_kvs().len(), 3);

    // Compaction: reads below it fail with etcd's error.
    let current = c.get("foo", None).await.unwrap().header().unwrap().revision();
    c.compact(current - 1, None).await.unwrap();
    let err = grpc_status(
        c.get("foo", Some(GetOptions::new().with_revision(2)))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(err.message(), "etcdserver: mvcc: required revision has been compacted");
    let err = grpc_status(
        c.get("foo", Some(GetOptions::new().with_revision(current + 100)))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code(), Code::OutOfRange);
    assert_eq!(
        err.message(),
        "etcdserver: mvcc: required revision is a future revision"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_etcds_errors() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(1).await;

    let err = grpc_status(c.put("", "v", None).await.unwrap_err());
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "etcdserver: key is not provided")
    );

    let err = grpc_status(c.get("", None).await.unwrap_err());
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "etcdserver: key is not provided")
    );

    // A value just over --max-request-bytes (1.5 MiB) is refused by the server's check.
    let big = vec![b'x'; 1536 * 1024 + 1];
    let err = grpc_status(c.put("big", big, None).await.unwrap_err());
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "etcdserver: request is too large")
    );

    // Far past the limit (plus etcd's 512 KiB of gRPC overhead), the message is
    // refused before it is decoded. grpc-go says ResourceExhausted; tonic says OutOfRange.
    let huge = vec![b'x'; 4 * 1024 * 1024];
    let err = grpc_status(c.put("huge", huge, None).await.unwrap_err());
    assert_eq!(err.code(), Code::OutOfRange, "{}", err.message());
    assert!(err.message().contains("message length too large"), "{}", err.message());

    let too_many: Vec<TxnOp> = (0..129).map(|i| TxnOp::put(format!("k{i}"), "v", None)).collect();
    let err = grpc_status(c.txn(Txn::new().and_then(too_many)).await.unwrap_err());
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "etcdserver: too many operations in txn request")
    );

    let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    let err = grpc_status(c.txn(dup).await.unwrap_err());
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "etcdserver: duplicate key given in txn request")
    );

    let err = grpc_status(
        c.put("leased", "v", Some(PutOptions::new().with_lease(12345)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (err.code(), err.message()),
        (Code::NotFound, "etcdserver: requested lease not found")
    );

    let err = grpc_status(
        c.put("missing", "", Some(PutOptions::new().with_ignore_value()))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "etcdserver: key not found")
    );

    // Nothing above changed the store.
    let all = c.get("", Some(GetOptions::new().with_all_keys())).await.unwrap();
    assert_eq!(all.count(), 0);
    assert_eq!(all.header().unwrap().revision(), 1);

    // Auth is served (tests/auth.rs): with auth off, anyone may list the (no) roles.
    assert!(c.role_list().await.unwrap().roles().is_empty());

    // An RPC Concord does not serve says so.
    let channel = tonic::transport::Channel::from_shared(cluster.members[0].client_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut maintenance = concord_proto::etcdserverpb::maintenance_client::MaintenanceClient::new(channel);
    let err = maintenance
        .downgrade(concord_proto::etcdserverpb::DowngradeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("Downgrade"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_works_against_concord() {
    let cluster = Cluster::start(3).await;
    let eps = cluster.endpoints();

    let out = cluster.etcdctl(&eps, &["put", "greeting", "hello"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");

    let out = cluster.etcdctl(&eps[2..], &["get", "greeting"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "greeting\nhello\n");

    let out = cluster.etcdctl(&eps, &["get", "greeting", "-w", "json"]);
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(json.contains("\"revision\":2"), "{json}");

    let out = cluster.etcdctl(&eps, &["member", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.lines().count(), 3, "{text}");
    for m in &cluster.members {
        assert!(text.contains(&m.name) && text.contains(&m.peer_url), "{text}");
    }

    let out = cluster.etcdctl(&eps, &["endpoint", "health"]);
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("is healthy").count(), 3, "{text}");

    let out = cluster.etcdctl(&eps, &["endpoint", "status", "-w", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("\"leader\":").count(), 3, "{text}");

    let out = cluster.etcdctl(&eps, &["del", "greeting"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
}

/// etcdctl 3.4 with `http://` endpoints, and its `--cluster` commands (which dial every member's
/// advertised `http://` URL): it sends the URL as the HTTP/2 `:authority`, which the member accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_per_endpoint_commands_take_urls_and_cluster() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;
    c.put("k", "v", None).await.unwrap();
    // `--cluster` dials the client URLs the members list: wait until every member published its.
    eventually("every member publishes its client URLs", || {
        let mut c = c.clone();
        async move {
            let members = c.member_list().await.map_err(|e| e.to_string())?;
            match members.members().iter().filter(|m| !m.client_urls().is_empty()).count() {
                3 => Ok(()),
                n => Err(format!("{n} of 3")),
            }
        }
    })
    .await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", cluster.endpoints()[0]))
            .arg("--command-timeout=10s")
            .args(args)
            .output()
            .expect("etcdctl is installed");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let status: serde_json::Value =
        serde_json::from_str(&run(&["endpoint", "status", "--cluster", "-w", "json"])).expect("status JSON");
    let endpoints: Vec<&str> = status
        .as_array()
        .expect("one per member")
        .iter()
        .map(|s| s["Endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(endpoints.len(), 3, "{status}");
    for m in &cluster.members {
        assert!(
            endpoints.contains(&m.client_url.as_str()),
            "{endpoints:?} lacks {}",
            m.client_url
        );
    }
    // All members applied the put before they agree on one hash at its revision.
    let revision = c.get("k", None).await.unwrap().header().unwrap().revision().to_string();
    common::eventually("the members' HashKV agree", || {
        let hashes: serde_json::Value = serde_json::from_str(&run(&[
            "endpoint",
            "hashkv",
            "--cluster",
            "--rev",
            &revision,
            "-w",
            "json",
        ]))
        .expect("hashkv JSON");
        async move {
            let mut seen: Vec<u64> = hashes
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["HashKV"]["hash"].as_u64().unwrap_or(0))
                .collect();
            seen.dedup();
            if seen.len() == 1 && hashes.as_array().unwrap().len() == 3 {
                Ok(())
            } else {
                Err(hashes)
            }
        }
    })
    .await;
    let defrag = run(&["defrag", "--cluster"]);
    assert_eq!(
        defrag.matches("Finished defragmenting etcd member").count(),
        3,
        "{defrag}"
    );
    let table = run(&["endpoint", "status", "-w", "table"]);
    assert!(table.contains(&cluster.endpoints()[0]), "{table}");
}
