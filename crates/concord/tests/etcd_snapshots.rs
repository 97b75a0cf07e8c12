//! etcd's snapshot format, both ways, checked with etcd's own tools (Debian's etcd 3.4:
//! `etcd` and `etcdctl`, installed by scripts/setup.sh):
//!
//! - a Concord cluster's backup (`concord snapshot save`) passes `etcdctl snapshot status`,
//!   restores with `etcdctl snapshot restore`, and a real etcd started on it serves the same
//!   keys, values, revisions, compaction, lease, users and roles;
//! - an etcd backup (`etcdctl snapshot save`) restores with `concord snapshot restore`, and
//!   `concord serve` on it serves the same.
//!
//! Both start with auth enabled, so the enabled flag and password hashes travel too. Skipped,
//! with a message, where etcd or etcdctl is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{concord, free_port, Cluster};
use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions, Permission, PutOptions};

const ROOT_PW: &str = "root-secret";
const ALICE_PW: &str = "alice-secret";

/// etcdctl (API v3), as a person runs it.
fn etcdctl(args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run etcdctl")
}

/// A `serve` process (etcd's or Concord's) with its log, killed when dropped.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Server {
    /// Starts one member of a one-member cluster named `name` on free loopback ports.
    fn start(program: &str, name: &str, data_dir: &Path, peer_url: &str, log: PathBuf) -> Server {
        let url = format!("http://127.0.0.1:{}", free_port());
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = common::member_command(program);
        let child = command
            .args(["--name", name])
            .arg(format!("--data-dir={}", data_dir.display()))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args([
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
            ])
            .args(["--initial-cluster", &format!("{name}={peer_url}")])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "snapshot-test",
            ])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        Server { child, url, log }
    }

    /// Stops the process as systemd does (SIGTERM), and waits for it to exit.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().expect("wait").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not stop on SIGTERM",
                self.url
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A client (logged in as `user`, if given) once the member serves.
    async fn client(&self, user: Option<(&str, &str)>) -> Client {
        common::connect_with_leader(
            &self.url,
            user,
            &format!("{} serves (log {})", self.url, self.log.display()),
        )
        .await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "log of {}:\n{}",
                self.url,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One version of a key, as a client sees it.
type Row = (Vec<u8>, Vec<u8>, i64, i64, i64, i64);

async fn rows(c: &mut Client, revision: i64) -> (i64, Vec<Row>) {
    let opts = GetOptions::new().with_all_keys().with_revision(revision);
    let resp = c.get("", Some(opts)).await.expect("get every key");
    let rev = resp.header().expect("header").revision();
    let rows = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    (rev, rows)
}

/// Writes keys with history, deletes, a compaction, a lease with keys, a user with a role, and
/// turns auth on. Returns the compaction revision and the lease.
async fn populate(c: &mut Client) -> (i64, i64) {
    c.put("a", "1", None).await.unwrap();
    c.put("a", "2", None).await.unwrap();
    c.put("b", "gone soon", None).await.unwrap();
    let compact_at = c.put("c", "kept", None).await.unwrap().header().unwrap().revision();
    c.delete("b", None).await.unwrap();
    c.put("a", "3", None).await.unwrap();
    c.compact(compact_at, None).await.unwrap();
    c.put("d", vec![0u8, 255, 1, 2], None).await.unwrap();
    let lease = c.lease_grant(600, None).await.unwrap().id();
    c.put("leased/1", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.put("leased/2", "y", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.put("b", "back", None).await.unwrap();
    c.role_add("reader").await.unwrap();
    c.role_grant_permission("reader", Permission::read("a").with_prefix())
        .await
        .unwrap();
    c.user_add("alice", ALICE_PW, None).await.unwrap();
    c.user_grant_role("alice", "reader").await.unwrap();
    c.user_add("root", ROOT_PW, None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();
    (compact_at, lease)
}

/// What the tests compare between the original and the restored member.
#[derive(Debug, PartialEq)]
struct Observed {
    revision: i64,
    now: Vec<Row>,
    at_compaction: Vec<Row>,
    lease_keys: Vec<Vec<u8>>,
    alice_roles: Vec<String>,
    reader_perms: String,
    users: Vec<String>,
}

async fn observe(c: &mut Client, compact_at: i64, lease: i64) -> Observed {
    let (revision, now) = rows(c, 0).await;
    let (_, at_compaction) = rows(c, compact_at).await;
    let ttl = c
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("lease lives");
    assert!(ttl.ttl() > 0 && ttl.granted_ttl() == 600, "lease {lease:x}: {ttl:?}");
    let mut lease_keys: Vec<Vec<u8>> = ttl.keys().to_vec();
    lease_keys.sort();
    let mut users = c.user_list().await.unwrap().users().to_vec();
    users.sort();
    Observed {
        revision,
        now,
        at_compaction,
        lease_keys,
        alice_roles: c.user_get("alice").await.unwrap().roles().to_vec(),
        reader_perms: format!("{:?}", c.role_get("reader").await.unwrap().permissions()),
        users,
    }
}

/// Checks, on a restored member, what `observe` cannot: the compaction holds, auth is on, and
/// the users' passwords (bcrypt hashes) and permissions came along.
async fn check_restored(server: &Server, c: &mut Client, compact_at: i64) {
    let err = c
        .get("a", Some(GetOptions::new().with_revision(compact_at - 1)))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("compacted"),
        "reads below the compaction fail: {err}"
    );
    // Auth is on (etcd 3.4 has no AuthStatus): alice is held to her role below.
    let mut alice = server.client(Some(("alice", ALICE_PW))).await;
    let got = alice.get("a", None).await.expect("alice reads under a");
    assert_eq!(got.kvs()[0].value(), b"3");
    let denied = alice.get("c", None).await.unwrap_err();
    assert!(
        denied.to_string().contains("permission denied"),
        "alice may not read c: {denied}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concord_snapshot_restores_into_etcd() {
    if !common::etcd::tools_present("concord_snapshot_restores_into_etcd") {
        return;
    }
    let cluster = Cluster::start(1).await;
    let mut c = cluster.client(0).await;
    let (compact_at, lease) = populate(&mut c).await;
    let mut c = common::connect_with_leader(
        &cluster.endpoints()[0],
        Some(("root", ROOT_PW)),
        "concord serves with auth on",
    )
    .await;
    let original = observe(&mut c, compact_at, lease).await;

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("concord.db");
    let out = concord(&[
        "snapshot",
        "save",
        file.to_str().unwrap(),
        "--endpoints",
        &cluster.endpoints()[0],
        "--user",
        &format!("root:{ROOT_PW}"),
    ]);
    common::assert_ok("concord snapshot save", &out);

    // etcdctl's own save from the member writes the same kind of file (python-etcd3's
    // test_snapshot does this, then `etcdctl snapshot status`).
    let by_etcdctl = dir.path().join("by-etcdctl.db");
    let endpoint = cluster.endpoints()[0].trim_start_matches("http://").to_string();
    let out = etcdctl(&[
        "snapshot",
        "save",
        by_etcdctl.to_str().unwrap(),
        "--endpoints",
        &endpoint,
        "--user",
        &format!("root:{ROOT_PW}"),
    ]);
    common::assert_ok("etcdctl snapshot save from concord", &out);
    let out = etcdctl(&["snapshot", "status", by_etcdctl.to_str().unwrap(), "-w", "json"]);
    common::assert_ok("etcdctl snapshot status of etcdctl's save", &out);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(status["revision"].as_i64(), Some(original.revision), "{status}");

    // etcdctl reads concord's save, with the numbers concord reports.
    let out = etcdctl(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    common::assert_ok("etcdctl snapshot status", &out);
    let etcd_status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(
        etcd_status["revision"].as_i64(),
        Some(original.revision),
        "{etcd_status}"
    );
    let ours = concord(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    common::assert_ok("concord snapshot status", &ours);
    let ours: serde_json::Value = serde_json::from_slice(&ours.stdout).expect("status JSON");
    assert_eq!(ours, etcd_status, "concord's status of the file is etcdctl's");
    // etcdutl counts the entries of every bucket: more than the live keys.
    assert!(
        etcd_status["totalKey"].as_i64().unwrap() > original.now.len() as i64,
        "{etcd_status}"
    );

    // etcdctl restores it, and etcd serves it.
    let data_dir = dir.path().join("e0.etcd");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let out = etcdctl(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--name",
        "e0",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--initial-cluster",
        &format!("e0={peer}"),
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster-token",
        "snapshot-test",
    ]);
    common::assert_ok("etcdctl snapshot restore", &out);
    let etcd = Server::start("etcd", "e0", &data_dir, &peer, dir.path().join("etcd.log"));
    let mut e = etcd.client(Some(("root", ROOT_PW))).await;
    assert_eq!(observe(&mut e, compact_at, lease).await, original);
    check_restored(&etcd, &mut e, compact_at).await;
    // etcd goes on from the restored revision.
    let put = e.put("after", "restore", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), original.revision + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_snapshot_restores_into_concord() {
    if !common::etcd::tools_present("etcd_snapshot_restores_into_concord") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let peer = format!("http://127.0.0.1:{}", free_port());
    let etcd = Server::start(
        "etcd",
        "e0",
        &dir.path().join("e0.etcd"),
        &peer,
        dir.path().join("etcd.log"),
    );
    let mut e = etcd.client(None).await;
    let (compact_at, lease) = populate(&mut e).await;
    let mut e = etcd.client(Some(("root", ROOT_PW))).await;
    let original = observe(&mut e, compact_at, lease).await;

    let file = dir.path().join("etcd.db");
    let endpoint = etcd.url.trim_start_matches("http://").to_string();
    let out = etcdctl(&[
        "snapshot",
        "save",
        file.to_str().unwrap(),
        "--endpoints",
        &endpoint,
        "--user",
        &format!("root:{ROOT_PW}"),
    ]);
    common::assert_ok("etcdctl snapshot save", &out);
    drop(etcd);

    // concord's status of etcd's file is etcdctl's.
    let theirs = etcdctl(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    common::assert_ok("etcdctl snapshot status", &theirs);
    let ours = concord(&["snapshot", "status", file.to_str().unwrap(), "-w", "json"]);
    common::assert_ok("concord snapshot status", &ours);
    let theirs: serde_json::Value = serde_json::from_slice(&theirs.stdout).unwrap();
    let ours: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
    assert_eq!(ours, theirs);

    let data_dir = dir.path().join("c0.etcd");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let out = concord(&[
        "snapshot",
        "restore",
        file.to_str().unwrap(),
        "--name",
        "c0",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--initial-cluster",
        &format!("c0={peer}"),
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster-token",
        "snapshot-test",
    ]);
    common::assert_ok("concord snapshot restore", &out);
    let member = Server::start("concord", "c0", &data_dir, &peer, dir.path().join("concord.log"));
    let mut c = member.client(Some(("root", ROOT_PW))).await;
    assert_eq!(observe(&mut c, compact_at, lease).await, original);
    check_restored(&member, &mut c, compact_at).await;
    let put = c.put("after", "restore", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), original.revision + 1);
}

/// `concord serve` started on an etcd member's data directory, with the flags etcd ran with,
/// imports it: the same keys, revisions, compaction, lease, users and roles, the same member and
/// cluster ids, etcd's files kept aside unchanged, and no second import at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_data_dir_migrates_in_place() {
    if !common::etcd::tools_present("etcd_data_dir_migrates_in_place") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("m0.etcd");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut etcd = Server::start("etcd", "m0", &data_dir, &peer, dir.path().join("etcd.log"));
    let mut e = etcd.client(None).await;
    let (compact_at, lease) = populate(&mut e).await;
    let mut e = etcd.client(Some(("root", ROOT_PW))).await;
    let original = observe(&mut e, compact_at, lease).await;
    let ids = |status: etcd_client::StatusResponse| {
        let header = status.header().expect("header");
        (header.member_id(), header.cluster_id())
    };
    let etcd_ids = ids(e.status().await.unwrap());
    drop(e);
    etcd.stop();

    let mut member = Server::start("concord", "m0", &data_dir, &peer, dir.path().join("concord.log"));
    let mut c = member.client(Some(("root", ROOT_PW))).await;
    assert_eq!(observe(&mut c, compact_at, lease).await, original);
    check_restored(&member, &mut c, compact_at).await;
    assert_eq!(
        ids(c.status().await.unwrap()),
        etcd_ids,
        "etcd's member and cluster ids"
    );
    let kept = data_dir.join("member.etcd-original");
    assert!(
        kept.join("snap").join("db").is_file() && kept.join("wal").is_dir(),
        "etcd's files are kept"
    );
    let put = c.put("after", "migration", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), original.revision + 1);
    drop(c);

    // The next start serves the Concord store, with what was written since.
    member.stop();
    let member = Server::start("concord", "m0", &data_dir, &peer, dir.path().join("concord-2.log"));
    let mut c = member.client(Some(("root", ROOT_PW))).await;
    let got = c.get("after", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"migration");
    assert_eq!(got.header().unwrap().revision(), original.revision + 1);
}
