//! One request must never take the cluster down (issue 16): peer URLs that are malformed, or
//! that no member could be reached at, are refused on MemberAdd and MemberUpdate with etcd's
//! `ErrGRPCMemberBadURLs` and leave every member as it was; a valid MemberUpdate still moves a
//! member; and empty election and lock keys are refused as etcd refuses them, writing nothing.

mod common;

use common::{eventually, grpc_status, Cluster};
use etcd_client::{Client, GetOptions, LeaderKey, ProclaimOptions, ResignOptions};
use tonic::Code;

/// etcd's `ErrGRPCMemberBadURLs` (gRPC code InvalidArgument).
const BAD_URLS: &str = "etcdserver: given member URLs are invalid";

/// etcd's `ErrGRPCEmptyKey`, which its lock and election servers pass on as a plain error.
const EMPTY_KEY: &str = "etcdserver: key is not provided";

/// Each class of bad peer URLs, named for failure messages.
fn bad_url_lists() -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("no URL", vec![]),
        ("an empty URL", vec![String::new()]),
        ("no port", vec!["http://127.0.0.1".into()]),
        ("a port past 65535", vec!["http://127.0.0.1:99999".into()]),
        ("port 0", vec!["http://127.0.0.1:0".into()]),
        ("an empty port", vec!["http://127.0.0.1:".into()]),
        ("a path", vec!["http://127.0.0.1:2380/x".into()]),
        ("an unclosed IPv6 bracket", vec!["http://[::1".into()]),
        ("a NUL byte", vec!["http://127.0.0.1:2380\0".into()]),
        ("a 1 MiB URL", vec![format!("http://{}:2380", "a".repeat(1 << 20))]),
        (
            "1,000 URLs",
            (0..1000).map(|i| format!("http://127.0.0.1:{}", 40000 + i)).collect(),
        ),
        ("no scheme", vec!["127.0.0.1:2380".into()]),
        ("a unix scheme", vec!["unix://m1:2380".into()]),
        (
            "a bad URL after a good one",
            vec!["http://127.0.0.1:2380".into(), "http://127.0.0.1".into()],
        ),
    ]
}

/// Every member as member `i` lists it, without asking the leader: (id, peer URLs, learner).
async fn local_members(cluster: &Cluster, i: usize) -> Vec<(u64, Vec<String>, bool)> {
    let mut c = cluster.client(i).await;
    let resp = c
        .member_list()
        .await
        .unwrap_or_else(|e| panic!("member {i} lists no members: {e}"));
    let mut members: Vec<_> = resp
        .members()
        .iter()
        .map(|m| (m.id(), m.peer_urls().to_vec(), m.is_learner()))
        .collect();
    members.sort();
    members
}

/// The peer URLs member `i` lists for member `id`.
async fn listed_urls(cluster: &Cluster, i: usize, id: u64) -> Option<Vec<String>> {
    local_members(cluster, i)
        .await
        .into_iter()
        .find(|m| m.0 == id)
        .map(|m| m.1)
}

/// Whether each member in `on` lists `url` as member `id`'s only peer URL.
async fn lists(cluster: &Cluster, on: Vec<usize>, id: u64, url: &str) -> Result<(), String> {
    for i in on {
        let urls = listed_urls(cluster, i, id).await;
        if urls != Some(vec![url.to_string()]) {
            return Err(format!("member {i} lists {urls:?}"));
        }
    }
    Ok(())
}

/// Member `i`'s id, as it reports it.
async fn member_id(cluster: &Cluster, i: usize) -> u64 {
    let status = cluster
        .status(i)
        .await
        .unwrap_or_else(|| panic!("member {i} does not answer"));
    status.header().map(|h| h.member_id()).unwrap_or_default()
}

/// Asserts that a call failed with etcd's bad-URLs error.
fn assert_bad_urls<T: std::fmt::Debug>(what: &str, result: Result<T, etcd_client::Error>) {
    let status = grpc_status(result.expect_err(what));
    assert_eq!(
        (status.code(), status.message()),
        (Code::InvalidArgument, BAD_URLS),
        "{what}"
    );
}

/// Asserts that a lock or election call failed as etcd's does for an empty key.
fn assert_empty_key<T: std::fmt::Debug>(what: &str, result: Result<T, etcd_client::Error>) {
    let status = grpc_status(result.expect_err(what));
    assert_eq!((status.code(), status.message()), (Code::Unknown, EMPTY_KEY), "{what}");
}

/// A write through member `i`, then a linearizable read of it through member `i`.
async fn write_and_read(cluster: &Cluster, i: usize, key: &str) -> Result<(), String> {
    let mut c = cluster.client(i).await;
    let value = format!("through member {i}");
    c.put(key, value.as_str(), None)
        .await
        .map_err(|e| format!("put: {e}"))?;
    let got = c.get(key, None).await.map_err(|e| format!("get: {e}"))?;
    match got.kvs().first().map(|kv| kv.value()) {
        Some(v) if v == value.as_bytes() => Ok(()),
        other => Err(format!("read {other:?}")),
    }
}

/// Every member has the same leader, and takes a write and a linearizable read.
async fn assert_every_member_serves(cluster: &Cluster, tag: &str) {
    cluster.wait_for_leader().await;
    for i in 0..cluster.members.len() {
        let key = format!("{tag}/{i}");
        eventually(&format!("write and read through member {i}"), || {
            write_and_read(cluster, i, &key)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_peer_urls_are_refused_and_change_nothing() {
    let cluster = Cluster::start(3).await;
    let before = local_members(&cluster, 0).await;
    let ids = [
        member_id(&cluster, 0).await,
        member_id(&cluster, 1).await,
        member_id(&cluster, 2).await,
    ];
    let mut clients: Vec<Client> = Vec::new();
    for i in 0..3 {
        clients.push(cluster.client(i).await);
    }

    // Each class goes to every member (so also to followers, which forward MemberAdd to the
    // leader), and MemberUpdate aims at every member in turn, the leader among them.
    for (n, (what, urls)) in bad_url_lists().into_iter().enumerate() {
        for (i, c) in clients.iter_mut().enumerate() {
            let add = c.cluster_client().member_add(urls.clone(), None).await;
            assert_bad_urls(&format!("MemberAdd with {what} through member {i}"), add);
            let target = ids[(n + i) % ids.len()];
            let update = c.cluster_client().member_update(target, urls.clone()).await;
            assert_bad_urls(
                &format!("MemberUpdate of {target:x} with {what} through member {i}"),
                update,
            );
        }
    }

    for i in 0..3 {
        assert_eq!(
            local_members(&cluster, i).await,
            before,
            "member {i}'s membership changed"
        );
    }
    assert_every_member_serves(&cluster, "after-bad-urls").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_member_update_still_moves_a_member() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let (moved, via) = ((leader + 1) % 3, (leader + 2) % 3);
    let id = member_id(&cluster, moved).await;
    let original = cluster.members[moved].peer_url.clone();
    let elsewhere = cluster.new_peer_url();
    let mut c = cluster.client(via).await;

    // Somewhere the member does not listen: taken (as etcd takes it), and kept as etcd keeps
    // it, trimmed and with its scheme in lower case.
    let spelled = format!("  {}  ", elsewhere.replacen("http", "HTTP", 1));
    c.member_update(id, vec![spelled])
        .await
        .expect("MemberUpdate to another URL");
    let answered = listed_urls(&cluster, via, id).await;
    assert_eq!(
        answered,
        Some(vec![elsewhere.clone()]),
        "the answering member applied the update"
    );
    eventually("the leader lists the new URL", || {
        lists(&cluster, vec![leader], id, &elsewhere)
    })
    .await;

    // And back: the member is reached again and serves.
    c.member_update(id, vec![original.clone()])
        .await
        .expect("MemberUpdate back");
    eventually("every member lists the original URL again", || {
        lists(&cluster, vec![0, 1, 2], id, &original)
    })
    .await;
    assert_every_member_serves(&cluster, "after-update").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_election_and_lock_keys_are_refused_and_write_nothing() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(1).await;
    let put = c.put("marker", "m", None).await.expect("put");
    let revision = put.header().map(|h| h.revision()).unwrap_or_default();

    let empty = || LeaderKey::new().with_name("e").with_key("");
    let proclaim = c.proclaim("v", Some(ProclaimOptions::new().with_leader(empty()))).await;
    assert_empty_key("Proclaim with an empty leader key", proclaim);
    let proclaim = c
        .proclaim(
            "v",
            Some(ProclaimOptions::new().with_leader(empty().with_rev(revision))),
        )
        .await;
    assert_empty_key("Proclaim with an empty leader key at a revision", proclaim);
    assert_empty_key(
        "Resign with an empty leader key",
        c.resign(Some(ResignOptions::new().with_leader(empty()))).await,
    );
    assert_empty_key("Unlock of the empty key", c.unlock("").await);

    // Nothing was written (the revision stands, the marker is the only key) and no session
    // lease was granted. etcd's KV API cannot even ask for the empty key.
    let all = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("range of every key");
    assert_eq!(all.header().map(|h| h.revision()), Some(revision), "the revision moved");
    let keys: Vec<&[u8]> = all.kvs().iter().map(|kv| kv.key()).collect();
    assert_eq!(keys, vec![b"marker".as_slice()]);
    assert!(
        c.leases().await.expect("lease list").leases().is_empty(),
        "a lease was granted"
    );
    let status = grpc_status(c.get("", None).await.expect_err("range of the empty key"));
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, EMPTY_KEY));

    // An empty name is a name like any other, as in etcd: its keys go under "/".
    let campaign = c.campaign("", "v", 0).await.expect("Campaign with an empty name");
    let leader = campaign.leader().expect("a leader key").clone();
    assert!(
        leader.key().starts_with(b"/"),
        "campaign key {:?}",
        String::from_utf8_lossy(leader.key())
    );
    c.resign(Some(ResignOptions::new().with_leader(leader)))
        .await
        .expect("Resign");
    let lock = c.lock("", None).await.expect("Lock with an empty name");
    assert!(
        lock.key().starts_with(b"/"),
        "lock key {:?}",
        String::from_utf8_lossy(lock.key())
    );
    c.unlock(lock.key()).await.expect("Unlock");
    let left = c
        .get("/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("range under /");
    assert!(left.kvs().is_empty(), "keys left under /: {:?}", left.kvs());
}
