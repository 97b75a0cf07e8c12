//! Operating a cluster: backing it up and founding a new cluster from the
//! backup (`etcdctl snapshot save` / `concord snapshot save|restore`), the
//! space quota's NOSPACE alarm and its recovery (compact, defragment,
//! disarm), and `concord member`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{concord, eventually, free_port, grpc_status, text, Cluster};
use etcd_client::{
    Client, CompactionOptions, ConnectOptions, DeleteOptions, GetOptions, LeaseTimeToLiveOptions, PutOptions,
};
use tonic::Code;

/// Asserts that a command failed and that its stderr mentions `expected`.
fn assert_fails_with(what: &str, out: &Output, expected: &str) {
    assert!(
        !out.status.success(),
        "{what} should fail; stdout: {}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains(expected),
        "{what}: expected {expected:?} in stderr: {}",
        text(&out.stderr)
    );
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// One key as the store holds it: key, value, create revision, mod revision, version, lease.
type Row = (String, String, i64, i64, i64, i64);

/// Every key (linearizable read through member `client`) and the revision it was read at.
async fn all_rows(client: &mut Client) -> Result<(i64, Vec<Row>), String> {
    let resp = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .map_err(|e| e.to_string())?;
    let rows = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    Ok((resp.header().map_or(0, |h| h.revision()), rows))
}

async fn connect(url: &str) -> Result<Client, String> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    Client::connect([url], Some(opts)).await.map_err(|e| e.to_string())
}

/// Members started from restored data directories, killed when dropped.
struct Restored {
    names: Vec<String>,
    client_urls: Vec<String>,
    logs: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Restored {
    /// Restores `snapshot` into one data directory per member under `dir` with
    /// `concord snapshot restore` (new names, ports and token), then starts the
    /// members with `concord serve --initial-cluster-state new` and waits for a leader.
    async fn start(dir: &Path, snapshot: &Path, prefix: &str, n: usize) -> Restored {
        let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        let peers: Vec<String> = (0..n).map(|_| format!("http://127.0.0.1:{}", free_port())).collect();
        let client_urls: Vec<String> = (0..n).map(|_| format!("http://127.0.0.1:{}", free_port())).collect();
        let initial_cluster = names
            .iter()
            .zip(&peers)
            .map(|(name, peer)| format!("{name}={peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("{prefix}-token");
        let mut restored = Restored {
            names: names.clone(),
            client_urls: client_urls.clone(),
            logs: Vec::new(),
            children: Vec::new(),
        };
        for i in 0..n {
            let data_dir = dir.join(format!("{}.etcd", names[i]));
            let out = concord(&[
                "snapshot",
                "restore",
                snapshot.to_str().unwrap(),
                "--name",
                &names[i],
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--initial-cluster",
                &initial_cluster,
                "--initial-cluster-token",
                &token,
                "--initial-advertise-peer-urls",
                &peers[i],
            ]);
            common::assert_ok("concord snapshot restore", &out);
            assert!(data_dir.join("member/kv.redb").is_file() && data_dir.join("member/cluster.pb").is_file());
        }
        for i in 0..n {
            let log_path = dir.join(format!("{}.log", names[i]));
            let log = std::fs::File::create(&log_path).expect("log file");
            let child = Command::new(env!("CARGO_BIN_EXE_concord"))
                .arg("serve")
                .args(["--name", &names[i]])
                .arg(format!(
                    "--data-dir={}",
                    dir.join(format!("{}.etcd", names[i])).display()
                ))
                .args(["--listen-client-urls", &client_urls[i]])
                .args(["--advertise-client-urls", &client_urls[i]])
                .args(["--listen-peer-urls", &peers[i]])
                .args(["--initial-advertise-peer-urls", &peers[i]])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                .spawn()
                .expect("spawn concord serve");
            restored.logs.push(log_path);
            restored.children.push(child);
        }
        restored.wait_ready().await;
        restored
    }

    /// Waits until the members agree on a leader and each knows every
    /// member's client URLs (published through Raft after the election):
    /// followers need the leader's to forward lease calls.
    async fn wait_ready(&self) {
        let urls = self.client_urls.clone();
        eventually(
            "the restored members agree on a leader and know each other's client URLs",
            || {
                let urls = urls.clone();
                async move {
                    let mut leaders = Vec::new();
                    for url in &urls {
                        let mut c = connect(url).await?;
                        leaders.push(c.status().await.map_err(|e| e.to_string())?.leader());
                        let members = c.member_list().await.map_err(|e| e.to_string())?;
                        if members.members().iter().any(|m| m.client_urls().is_empty()) {
                            return Err(format!("{url} does not know every client URL yet"));
                        }
                    }
                    if leaders[0] != 0 && leaders.iter().all(|&l| l == leaders[0]) {
                        Ok(())
                    } else {
                        Err(format!("leaders {leaders:?}"))
                    }
                }
            },
        )
        .await;
    }

    async fn client(&self, i: usize) -> Client {
        let url = self.client_urls[i].clone();
        eventually("connect to a restored member", || connect(&url)).await
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, log) in self.names.iter().zip(&self.logs) {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!(
                    "--- restored {name} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A backup taken with etcdctl 3.4 and one taken with `concord snapshot save`
/// both restore into new clusters holding exactly the original data: the same
/// keys with the same revisions and leases, the same compaction, and the same
/// HashKV as the original cluster at the same revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_restore_into_identical_new_clusters() {
    let cluster = Cluster::start(3).await;
    let mut c = cluster.client(0).await;
    for i in 0..100 {
        c.put(format!("key/{i:03}"), format!("value-{i}"), None).await.unwrap();
    }
    for i in 0..20 {
        c.put(format!("key/{i:03}"), format!("second-{i}"), None).await.unwrap();
    }
    c.delete("key/09", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    let lease = c.lease_grant(600, None).await.unwrap().id();
    c.put("leased/a", "a", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.put("leased/b", "b", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let compact_at = c.get("key/000", None).await.unwrap().header().unwrap().revision();
    c.compact(compact_at, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    for i in 0..10 {
        c.put(format!("after/{i}"), "x".repeat(100 * i), None).await.unwrap();
    }
    let (revision, original) = all_rows(&mut c).await.unwrap();
    assert_eq!(original.len(), 90 + 2 + 10);

    // The original cluster's consistency hash at that revision, agreed by every member.
    let original_hash = eventually("the original members agree on HashKV", || {
        let cluster = &cluster;
        async move {
            let mut hashes = Vec::new();
            for i in 0..3 {
                let h = cluster
                    .client(i)
                    .await
                    .hash_kv(revision)
                    .await
                    .map_err(|e| e.to_string())?;
                hashes.push((h.hash(), h.compact_version()));
            }
            if hashes.iter().all(|h| *h == hashes[0]) {
                Ok(hashes[0])
            } else {
                Err(format!("{hashes:?}"))
            }
        }
    })
    .await;
    assert_eq!(original_hash.1, compact_at);
    let original_members: Vec<u64> = c
        .member_list()
        .await
        .unwrap()
        .members()
        .iter()
        .map(|m| m.id())
        .collect();
    let original_cluster_id = c.status().await.unwrap().header().unwrap().cluster_id();

    let dir = tempfile::tempdir().unwrap();
    let ep0 = cluster.endpoints()[0].clone();
    let etcdctl_file = dir.path().join("etcdctl.db");
    let out = cluster.etcdctl(
        std::slice::from_ref(&ep0),
        &["snapshot", "save", etcdctl_file.to_str().unwrap()],
    );
    common::assert_ok("etcdctl snapshot save", &out);

    let concord_file = dir.path().join("concord.db");
    let started = Instant::now();
    // The first endpoint is down: save goes on to the next one.
    let dead = format!("127.0.0.1:{}", free_port());
    let out = concord(&[
        "snapshot",
        "save",
        concord_file.to_str().unwrap(),
        "--endpoints",
        &format!("{dead},{}", host_port(&ep0)),
    ]);
    let save_time = started.elapsed();
    common::assert_ok("concord snapshot save", &out);
    assert!(text(&out.stdout).contains("Snapshot saved at"), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("snapshot: received"),
        "progress summary: {}",
        text(&out.stderr)
    );
    assert!(!dir.path().join("concord.db.part").exists());
    let etcdctl_bytes = std::fs::read(&etcdctl_file).unwrap();
    let concord_bytes = std::fs::read(&concord_file).unwrap();
    assert_eq!(
        etcdctl_bytes.len(),
        concord_bytes.len(),
        "both tools save the same stream"
    );
    eprintln!(
        "snapshot: {} bytes for {} keys, saved by concord in {save_time:?}; byte-identical to etcdctl's: {}",
        concord_bytes.len(),
        original.len(),
        etcdctl_bytes == concord_bytes
    );

    // Nothing to save from: a clear error, and no file left behind.
    let out = concord(&[
        "snapshot",
        "save",
        dir.path().join("none.db").to_str().unwrap(),
        "--endpoints",
        &dead,
    ]);
    assert_fails_with("save from a dead endpoint", &out, "cannot reach any endpoint");
    assert!(!dir.path().join("none.db").exists() && !dir.path().join("none.db.part").exists());

    // A damaged or truncated snapshot is refused, and leaves no data directory.
    let mut damaged = etcdctl_bytes.clone();
    damaged[etcdctl_bytes.len() / 2] ^= 0x55;
    let damaged_file = dir.path().join("damaged.db");
    std::fs::write(&damaged_file, &damaged).unwrap();
    let truncated_file = dir.path().join("truncated.db");
    std::fs::write(&truncated_file, &etcdctl_bytes[..etcdctl_bytes.len() - 1]).unwrap();
    for bad in [&damaged_file, &truncated_file] {
        let target = dir.path().join("bad.etcd");
        let out = concord(&[
            "snapshot",
            "restore",
            bad.to_str().unwrap(),
            "--name",
            "x",
            "--data-dir",
            target.to_str().unwrap(),
            "--initial-cluster",
            "x=http://127.0.0.1:1",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:1",
        ]);
        assert_fails_with("restore of a damaged snapshot", &out, "SHA-256 trailer does not match");
        assert!(!target.exists(), "a refused restore leaves nothing behind");
    }
    // A data directory that holds something is never overwritten.
    let busy = dir.path().join("busy.etcd");
    std::fs::create_dir_all(busy.join("member")).unwrap();
    let out = concord(&[
        "snapshot",
        "restore",
        etcdctl_file.to_str().unwrap(),
        "--name",
        "x",
        "--data-dir",
        busy.to_str().unwrap(),
        "--initial-cluster",
        "x=http://127.0.0.1:1",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:1",
    ]);
    assert_fails_with("restore into a used data dir", &out, "not empty");

    // etcdctl's backup, restored into a new 3-member cluster.
    let restored = Restored::start(dir.path(), &etcdctl_file, "r", 3).await;
    let mut new_ids = Vec::new();
    for i in 0..3 {
        let mut rc = restored.client(i).await;
        let (rev, rows) = all_rows(&mut rc).await.unwrap();
        assert_eq!(rev, revision, "restored member {i} is at the original revision");
        assert_eq!(rows, original, "restored member {i} holds the original data");
        let h = rc.hash_kv(revision).await.unwrap();
        assert_eq!(
            (h.hash(), h.compact_version()),
            original_hash,
            "restored member {i}'s HashKV"
        );
        let status = rc.status().await.unwrap();
        assert_ne!(
            status.header().unwrap().cluster_id(),
            original_cluster_id,
            "a restored cluster has a new id"
        );
        new_ids.push(status.header().unwrap().member_id());
    }
    let mut rc = restored.client(1).await;
    let members = rc.member_list().await.unwrap();
    let names: Vec<&str> = members.members().iter().map(|m| m.name()).collect();
    assert_eq!(names, ["r0", "r1", "r2"]);
    assert!(
        new_ids.iter().all(|id| !original_members.contains(id)),
        "new member ids from the new flags"
    );
    // The compaction and the lease came along.
    let err = rc
        .get("key/000", Some(GetOptions::new().with_revision(compact_at - 1)))
        .await
        .unwrap_err();
    assert!(grpc_status(err).message().contains("compacted"));
    let ttl = rc
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert!(ttl.ttl() > 0, "the lease lives on: {ttl:?}");
    let mut keys: Vec<&[u8]> = ttl.keys().iter().map(|k| k.as_slice()).collect();
    keys.sort();
    assert_eq!(keys, [b"leased/a".as_slice(), b"leased/b".as_slice()]);
    // The new cluster takes writes, on top of the restored revision.
    let put = rc.put("new/key", "v", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), revision + 1);
    drop(restored);

    // concord's own backup restores the same way (into one member).
    let solo = Restored::start(dir.path(), &concord_file, "solo", 1).await;
    let mut sc = solo.client(0).await;
    assert_eq!(all_rows(&mut sc).await.unwrap(), (revision, original));
    let h = sc.hash_kv(revision).await.unwrap();
    assert_eq!((h.hash(), h.compact_version()), original_hash);
}

/// etcd's space quota: writes past `--quota-backend-bytes` fail with
/// "database space exceeded" and raise NOSPACE on every member; deletes still
/// work; compacting, defragmenting every member and disarming the alarm lets
/// writes in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nospace_alarm_trips_and_is_cleared() {
    // An empty store takes 72 KiB (a snapshot of it too), and the file grows
    // by doubling: 1 MiB leaves room for a few big values, no more.
    const QUOTA: i64 = 1 << 20;
    let cluster = Cluster::start_with(3, &["--quota-backend-bytes", &QUOTA.to_string()]).await;
    for i in 0..3 {
        let status = cluster.status(i).await.expect("status");
        assert!(
            status.db_size() < QUOTA / 4,
            "member {i} starts at {} bytes, too close to the quota",
            status.db_size()
        );
    }
    let endpoints = cluster.endpoints();
    let cl = &cluster;
    let mut c = cluster.client(0).await;
    let value = "v".repeat(60 * 1024);
    let mut written = 0;
    let err = loop {
        assert!(written < 200, "200 puts of 60 KiB never exceeded a {QUOTA}-byte quota");
        match c.put(format!("big/{written:04}"), value.clone(), None).await {
            Ok(_) => written += 1,
            Err(e) => break grpc_status(e),
        }
    };
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(err.message(), "etcdserver: mvcc: database space exceeded");
    assert!(written > 0, "the quota should allow some writes");

    // Every member lists the alarm, and refuses even small writes.
    for (i, endpoint) in endpoints.iter().enumerate() {
        eventually(&format!("member {i} lists NOSPACE"), || async move {
            let out = cl.etcdctl(std::slice::from_ref(endpoint), &["alarm", "list"]);
            let listed = text(&out.stdout);
            if out.status.success() && listed.contains("alarm:NOSPACE") {
                Ok(())
            } else {
                Err(format!("{listed} {}", text(&out.stderr)))
            }
        })
        .await;
        let err = cluster.client(i).await.put("small", "x", None).await.unwrap_err();
        assert_eq!(
            grpc_status(err).code(),
            Code::ResourceExhausted,
            "member {i} refuses writes"
        );
    }

    // Deletes still work; then compact, defragment every member, and disarm.
    let deleted = c
        .delete("big/", Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), written);
    let revision = deleted.header().unwrap().revision();
    c.compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    for i in 0..3 {
        let before = cluster.status(i).await.expect("status").db_size();
        cluster.client(i).await.defragment().await.unwrap();
        let after = cluster.status(i).await.expect("status").db_size();
        assert!(
            after < QUOTA / 4,
            "member {i}: defragment left {after} bytes (before: {before})"
        );
    }
    // Still armed: writes wait for the operator.
    let err = c.put("small", "x", None).await.unwrap_err();
    assert_eq!(grpc_status(err).code(), Code::ResourceExhausted);
    let out = cluster.etcdctl(&endpoints, &["alarm", "disarm"]);
    common::assert_ok("etcdctl alarm disarm", &out);
    assert!(
        text(&out.stdout).contains("alarm:NOSPACE"),
        "disarm lists what it cleared: {}",
        text(&out.stdout)
    );
    for (i, endpoint) in endpoints.iter().enumerate() {
        eventually(&format!("member {i} lists no alarm"), || async move {
            let out = cl.etcdctl(std::slice::from_ref(endpoint), &["alarm", "list"]);
            if out.status.success() && text(&out.stdout).trim().is_empty() {
                Ok(())
            } else {
                Err(format!("{} {}", text(&out.stdout), text(&out.stderr)))
            }
        })
        .await;
    }
    for i in 0..3 {
        cluster
            .client(i)
            .await
            .put(format!("again/{i}"), value.clone(), None)
            .await
            .unwrap();
    }
}

/// `concord member` prints what `etcdctl member` prints, and adds, updates
/// and removes a learner that is never started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_commands_work_like_etcdctl() {
    let cluster = Cluster::start(3).await;
    let endpoints = cluster.endpoints();
    let ep = host_port(&endpoints[1]);
    let list_members = |endpoint: &str| {
        let out = concord(&["member", "list", "--endpoints", endpoint]);
        common::assert_ok("concord member list", &out);
        text(&out.stdout)
    };
    let list = &list_members;
    // Names come from --initial-cluster, client URLs once each member has
    // published them (through Raft, after the first election). etcdctl 3.4
    // asks for a serializable list, which any member answers from what it has
    // applied: wait until every member has applied all three publications.
    for endpoint in &endpoints {
        let endpoint = host_port(endpoint);
        let endpoint = &endpoint;
        eventually("every member has published its client URLs", || async move {
            let listed = list(endpoint);
            let published = |line: &str| line.split(", ").nth(4).is_some_and(|urls| !urls.is_empty());
            if listed.lines().count() == 3 && listed.lines().all(published) {
                Ok(())
            } else {
                Err(listed)
            }
        })
        .await;
    }
    let listed = list(&ep);
    let etcdctl = cluster.etcdctl(&endpoints, &["member", "list"]);
    common::assert_ok("etcdctl member list", &etcdctl);
    assert_eq!(listed, text(&etcdctl.stdout), "the same lines as etcdctl");
    for (line, m) in listed.lines().zip(&cluster.members) {
        let fields: Vec<&str> = line.split(", ").collect();
        assert_eq!(fields.len(), 6, "{line}");
        assert_eq!(
            &fields[1..],
            [
                "started",
                m.name.as_str(),
                m.peer_url.as_str(),
                m.client_url.as_str(),
                "false"
            ]
        );
    }
    let json = concord(&["member", "list", "-w", "json", "--endpoints", &ep]);
    common::assert_ok("concord member list -w json", &json);
    let json = text(&json.stdout);
    assert!(
        json.starts_with("{\"header\":{\"cluster_id\":") && json.matches("\"ID\":").count() == 3,
        "{json}"
    );

    // Add a learner that never starts, move its peer URL, fail to promote it, remove it.
    let peer = cluster.new_peer_url();
    let out = concord(&[
        "member",
        "add",
        "learner",
        "--peer-urls",
        &peer,
        "--learner",
        "--endpoints",
        &ep,
    ]);
    common::assert_ok("concord member add", &out);
    let added = text(&out.stdout);
    let first = added.lines().next().unwrap();
    assert!(
        first.starts_with("Member ") && first.contains(" added as learner to cluster "),
        "{added}"
    );
    let id = first.split_whitespace().nth(1).unwrap().to_string();
    assert!(added.contains("\nETCD_NAME=\"learner\"\n"), "{added}");
    assert!(added.contains(&format!(",learner={peer}\"\n")), "{added}");
    assert!(
        added.contains(&format!("ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{peer}\"\n")),
        "{added}"
    );
    assert!(added.ends_with("ETCD_INITIAL_CLUSTER_STATE=\"existing\"\n"), "{added}");
    let listed = list(&ep);
    assert_eq!(listed.lines().count(), 4, "{listed}");
    assert!(
        listed.contains(&format!("{id}, unstarted, , {peer}, , true\n")),
        "{listed}"
    );

    let moved = cluster.new_peer_url();
    let out = concord(&["member", "update", &id, "--peer-urls", &moved, "--endpoints", &ep]);
    common::assert_ok("concord member update", &out);
    assert!(
        text(&out.stdout).contains(&format!("Member {id:>16} updated in cluster")),
        "{}",
        text(&out.stdout)
    );
    let (moved_url, id_ref, ep_ref) = (&moved, &id, &ep);
    eventually("the update is listed", || async move {
        let listed = list(ep_ref);
        if listed.contains(&format!("{id_ref}, unstarted, , {moved_url}, , true\n")) {
            Ok(())
        } else {
            Err(listed)
        }
    })
    .await;

    let out = concord(&["member", "promote", &id, "--endpoints", &ep]);
    assert_fails_with("promoting a learner that never started", &out, "in sync with leader");

    let out = concord(&["member", "remove", &id, "--endpoints", &ep]);
    common::assert_ok("concord member remove", &out);
    assert!(
        text(&out.stdout).starts_with(&format!("Member {id:>16} removed from cluster ")),
        "{}",
        text(&out.stdout)
    );
    let listed = list(&ep);
    assert_eq!(listed.lines().count(), 3, "{listed}");
    assert!(!listed.contains(&id));

    let out = concord(&["member", "remove", &id, "--endpoints", &ep]);
    assert_fails_with("removing it again", &out, "member not found");
    let out = concord(&["member", "remove", "not-hex", "--endpoints", &ep]);
    assert_fails_with("a bad id", &out, "expecting ID in hex");
}

/// MoveLeader to a member that is not a voter of the cluster fails as etcd's does: its
/// ErrGRPCBadLeaderTransferee is FailedPrecondition, the code etcd also gives "not leader".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_leader_to_an_unknown_member_is_a_failed_precondition() {
    let cluster = Cluster::start(1).await;
    cluster.wait_for_leader().await;
    let mut c = cluster.client(0).await;
    let status = grpc_status(
        c.move_leader(0x777)
            .await
            .expect_err("moved the leadership to no member"),
    );
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), "etcdserver: bad leader transferee");
}

/// The member's grpc.health.v1 answer for the whole server ("").
async fn grpc_health(endpoint: &str) -> tonic_health::pb::health_check_response::ServingStatus {
    let endpoint = endpoint.trim_start_matches("http://");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let resp = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("health check")
        .into_inner();
    resp.status()
}

/// etcd serves grpc.health.v1 on the client port; with
/// `--experimental-stop-grpc-service-on-defrag` it answers NOT_SERVING while it defragments
/// and SERVING again after; without the flag a defragmentation leaves it SERVING.
#[tokio::test]
async fn grpc_health_stops_serving_during_defrag_only_when_asked() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut cluster = Cluster::start_with(1, &["--experimental-stop-grpc-service-on-defrag"]).await;
    let endpoint = cluster.endpoints()[0].clone();
    assert_eq!(grpc_health(&endpoint).await, ServingStatus::Serving);
    let mut client = cluster.client(0).await;
    client.put("k", "v", None).await.expect("put");
    client.defragment().await.expect("defragment");
    assert!(
        cluster.log_contains(0, "defrag is active"),
        "NOT_SERVING logged: {}",
        cluster.logs()
    );
    assert_eq!(grpc_health(&endpoint).await, ServingStatus::Serving);

    cluster.set_extra_args(&[]);
    assert!(cluster.terminate(0).success());
    cluster.restart(0);
    let client = cluster.client(0).await;
    eventually("the restarted member defragments", || {
        let mut client = client.clone();
        async move { client.defragment().await }
    })
    .await;
    assert_eq!(grpc_health(&cluster.endpoints()[0]).await, ServingStatus::Serving);
    let logs = cluster.logs();
    assert_eq!(
        logs.matches("defrag is active").count(),
        1,
        "only the first run stopped serving: {logs}"
    );
}
