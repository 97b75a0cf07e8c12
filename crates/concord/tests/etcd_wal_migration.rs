//! `concord serve` on the data directory of an etcd member that was killed (kill -9), not
//! stopped: the writes etcd acknowledged after its backend's last commit are only in its WAL, and
//! the migration must replay them. A real etcd 3.4 (Debian's `etcd`, installed by
//! scripts/setup.sh) runs with `--backend-batch-interval=10m`, so its backend lags far behind its
//! WAL; the writes it answered are then compared with what Concord serves on the same data
//! directory, revisions included. Also: a WAL whose last record was torn (the file cut inside it)
//! migrates what is complete. Skipped, with a message, where etcd or etcdctl is missing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, text};
use etcd_client::{Client, Compare, CompareOp, GetOptions, LeaseTimeToLiveOptions, Permission, PutOptions, Txn, TxnOp};

const ROOT_PW: &str = "root-secret";
const ALICE_PW: &str = "alice-secret";
const BOB_PW: &str = "bob-secret";

/// One member of a one-member cluster (etcd's or Concord's), with the same flags either way;
/// killed when dropped.
struct Member {
    child: Child,
    url: String,
    log: PathBuf,
}

/// The flags both programs run with: the same name, URLs and token, so Concord takes over
/// etcd's member and cluster ids.
struct Flags {
    data_dir: PathBuf,
    client_url: String,
    peer_url: String,
}

impl Flags {
    fn new(data_dir: PathBuf) -> Flags {
        Flags {
            data_dir,
            client_url: format!("http://127.0.0.1:{}", free_port()),
            peer_url: format!("http://127.0.0.1:{}", free_port()),
        }
    }

    /// Starts `program` (`etcd`, or `concord` for `concord serve`) with these flags and `extra`.
    fn start(&self, program: &str, log: PathBuf, extra: &[&str]) -> Member {
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = common::member_command(program);
        let child = command
            .args(["--name", "m0"])
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .args(["--listen-client-urls", &self.client_url])
            .args(["--advertise-client-urls", &self.client_url])
            .args(["--listen-peer-urls", &self.peer_url])
            .args(["--initial-advertise-peer-urls", &self.peer_url])
            .args(["--initial-cluster", &format!("m0={}", self.peer_url)])
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", "wal-test"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        Member {
            child,
            url: self.client_url.clone(),
            log,
        }
    }

    /// etcd, committing its backend only every ten minutes (or after 10,000 writes): everything
    /// written in a test stays in its WAL alone, but for the commits etcd forces (enabling auth,
    /// a compaction).
    fn start_etcd(&self, log: PathBuf) -> Member {
        self.start("etcd", log, &["--backend-batch-interval", "10m"])
    }

    fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("member").join("wal")
    }

    /// The revision etcd's backend file holds (as `etcdctl snapshot status` reads it).
    fn backend_revision(&self) -> i64 {
        let db = self.data_dir.join("member").join("snap").join("db");
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "status", db.to_str().unwrap(), "-w", "json"])
            .output()
            .expect("run etcdctl");
        common::assert_ok("etcdctl snapshot status", &out);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        status["revision"].as_i64().expect("a revision")
    }
}

impl Member {
    /// Waits for the process to exit on its own.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + common::WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "{} did not exit", self.url);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash: nothing is flushed or committed on the way out.
    fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
    }

    /// A client (logged in as `user`, if given) once the member serves with a leader.
    async fn client(&self, user: Option<(&str, &str)>) -> Client {
        let what = format!("{} serves (log {})", self.url, self.log.display());
        common::connect_with_leader(&self.url, user, &what).await
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("log of {}:\n{}", self.url, self.log_text());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every live key as (key, value, create revision, mod revision, version, lease), and the
/// revision it was read at.
async fn rows(c: &mut Client) -> (i64, Vec<(String, String, i64, i64, i64, i64)>) {
    let resp = c
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("get every key");
    let rows = resp
        .kvs()
        .iter()
        .map(|kv| {
            (
                text(kv.key()),
                text(kv.value()),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    (resp.header().expect("header").revision(), rows)
}

/// The revision a write's response reports.
fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.expect("header").revision()
}

/// Every write etcd acknowledged lives on, with etcd's revisions, though its backend had
/// committed only part of them when it was killed: puts, a lease with a key, a txn, deletes, a
/// lease revoke, a compaction, users and roles, and a write etcd refused stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_only_in_etcds_wal_survive_migration() {
    if !common::etcd::tools_present("acknowledged_writes_only_in_etcds_wal_survive_migration") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flags = Flags::new(dir.path().join("m0.etcd"));
    let mut etcd = flags.start_etcd(dir.path().join("etcd.log"));

    // Users, a role and auth on: enabling auth commits the backend once.
    let mut e = etcd.client(None).await;
    e.put("a", "1", None).await.unwrap();
    e.user_add("root", ROOT_PW, None).await.unwrap();
    e.user_grant_role("root", "root").await.unwrap();
    e.role_add("rw").await.unwrap();
    e.role_grant_permission("rw", Permission::read_write("alice/").with_prefix())
        .await
        .unwrap();
    e.user_add("alice", ALICE_PW, None).await.unwrap();
    e.user_grant_role("alice", "rw").await.unwrap();
    e.auth_enable().await.unwrap();
    drop(e);

    let mut e = etcd.client(Some(("root", ROOT_PW))).await;
    let b = revision_of(e.put("b", "2", None).await.unwrap().header());
    e.put("a", "history", None).await.unwrap();
    // A compaction commits the backend too; everything after it is in the WAL only.
    e.compact(b, None).await.unwrap();
    let lease = e.lease_grant(600, None).await.unwrap().id();
    e.put("leased", "x", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let txn = Txn::new()
        .when([Compare::value("a", CompareOp::Equal, "history")])
        .and_then([TxnOp::put("a", "from-txn", None), TxnOp::delete("b", None)]);
    let txn = e.txn(txn).await.unwrap();
    assert!(txn.succeeded(), "the txn's compare held");
    e.put("gone/1", "x", None).await.unwrap();
    e.put("gone/2", "x", None).await.unwrap();
    let deleted = e
        .delete("gone/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), 2);
    let short = e.lease_grant(600, None).await.unwrap().id();
    e.put("short", "x", Some(PutOptions::new().with_lease(short)))
        .await
        .unwrap();
    e.lease_revoke(short).await.unwrap();
    // etcd 3.4 logs the password in the clear; apply hashes it.
    e.user_add("bob", BOB_PW, None).await.unwrap();
    e.user_grant_role("bob", "rw").await.unwrap();

    let mut alice = etcd.client(Some(("alice", ALICE_PW))).await;
    alice.put("alice/x", "mine", None).await.unwrap();
    let refused = alice.put("not-alice", "x", None).await.unwrap_err().to_string();
    assert!(refused.contains("permission denied"), "{refused}");
    drop(alice);

    let (revision, etcd_rows) = rows(&mut e).await;
    let granted = e
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(granted.granted_ttl(), 600);
    drop(e);
    etcd.kill();

    // The test means something only if the backend lags: it was committed at the compaction.
    let backend = flags.backend_revision();
    assert!(
        backend < revision,
        "etcd's backend holds revision {backend}, etcd answered up to {revision}"
    );

    let member = flags.start("concord", dir.path().join("concord.log"), &[]);
    let mut c = member.client(Some(("root", ROOT_PW))).await;
    assert_eq!(
        rows(&mut c).await,
        (revision, etcd_rows.clone()),
        "every acknowledged write"
    );
    assert!(
        etcd_rows.iter().any(|r| r.0 == "leased" && r.5 == lease),
        "{etcd_rows:?}"
    );
    let compacted = c
        .get("a", Some(GetOptions::new().with_revision(b - 1)))
        .await
        .unwrap_err()
        .to_string();
    assert!(compacted.contains("compacted"), "{compacted}");
    let migrated = c
        .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .unwrap();
    assert_eq!(migrated.granted_ttl(), 600);
    assert_eq!(migrated.keys(), granted.keys());
    let leases: Vec<i64> = c.leases().await.unwrap().leases().iter().map(|l| l.id()).collect();
    assert_eq!(leases, vec![lease], "the revoked lease stays revoked");
    drop(c);

    // Users and roles from the WAL: bob logs in with his password, and holds alice's role.
    let mut bob = member.client(Some(("bob", BOB_PW))).await;
    let put = bob.put("alice/bob", "yes", None).await.unwrap();
    assert_eq!(revision_of(put.header()), revision + 1);
    let refused = bob.put("not-bob", "x", None).await.unwrap_err().to_string();
    assert!(refused.contains("permission denied"), "{refused}");

    // The replay says what it did; alice's refused put was refused again.
    let log = member.log_text();
    assert!(log.contains("etcd had committed after it, from its WAL"), "{log}");
    assert!(
        log.contains("refused as etcd refused them") && !log.contains(", 0 refused"),
        "{log}"
    );
}

/// The frames of a WAL file's records, as (offset, bytes with the length frame and padding).
fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let frame = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        if frame == 0 {
            break;
        }
        let len = (frame & !(0xff << 56)) as usize;
        let pad = if frame >> 63 == 1 {
            ((frame >> 56) & 7) as usize
        } else {
            0
        };
        out.push((at, 8 + len + pad));
        at += 8 + len + pad;
    }
    out
}

/// The one WAL file etcd wrote.
fn last_wal_file(dir: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    files.pop().expect("a WAL file")
}

/// A WAL whose last record was only partly written (the file ends inside it, as after a crash
/// in the middle of a write) migrates everything before it; the write in that record was never
/// complete on disk, so it is not there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_wal_tail_migrates_what_is_complete() {
    if !common::etcd::tools_present("a_torn_wal_tail_migrates_what_is_complete") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flags = Flags::new(dir.path().join("m0.etcd"));
    let mut etcd = flags.start_etcd(dir.path().join("etcd.log"));
    let mut e = etcd.client(None).await;
    let mut revisions = Vec::new();
    for i in 0..5 {
        let put = e.put(format!("t{i}"), format!("torn-value-{i}"), None).await.unwrap();
        revisions.push(revision_of(put.header()));
    }
    drop(e);
    etcd.kill();
    assert!(
        flags.backend_revision() < revisions[0],
        "the backend has none of the puts"
    );

    // Cut the file in the middle of the last put's record.
    let wal = last_wal_file(&flags.wal_dir());
    let bytes = std::fs::read(&wal).unwrap();
    let marker = b"torn-value-4";
    let (at, len) = frames(&bytes)
        .into_iter()
        .find(|(at, len)| bytes[*at..at + len].windows(marker.len()).any(|w| w == marker))
        .expect("the last put's record");
    let cut = at + 8 + (len - 8) / 2;
    assert!(at < cut && cut < at + len, "the cut falls inside the record");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(cut as u64)
        .unwrap();

    let member = flags.start("concord", dir.path().join("concord.log"), &[]);
    let mut c = member.client(None).await;
    let (revision, got) = rows(&mut c).await;
    let expected: Vec<_> = (0..4)
        .map(|i| {
            let rev = revisions[i];
            (format!("t{i}"), format!("torn-value-{i}"), rev, rev, 1, 0)
        })
        .collect();
    assert_eq!((revision, got), (revisions[3], expected));
    let log = member.log_text();
    assert!(log.contains("torn last record"), "{log}");
}

/// Appends a committed entry that no etcd request this Concord knows fits to the end of etcd's
/// last WAL file, with its CRC chained as etcd's encoder would.
fn append_unknown_entry(wal: &Path) {
    use concord_proto::raftpb::{Entry, HardState};
    use concord_proto::walpb::Record;
    use prost::Message as _;

    let mut bytes = std::fs::read(wal).unwrap();
    let (mut crc, mut last, mut end) = (0u32, Entry::default(), 0);
    for (at, len) in frames(&bytes) {
        let frame = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        let record = Record::decode(&bytes[at + 8..at + 8 + (frame & !(0xff << 56)) as usize]).unwrap();
        let data = record.data.clone().unwrap_or_default();
        match record.r#type() {
            4 => crc = record.crc(),
            kind => {
                crc = crc32c::crc32c_append(crc, &data);
                assert_eq!(record.crc(), crc, "the chain is etcd's");
                if kind == 2 {
                    last = Entry::decode(data.as_slice()).unwrap();
                }
            }
        }
        end = at + len;
    }
    let mut tail = Vec::new();
    let mut append = |kind: i64, data: Vec<u8>| {
        crc = crc32c::crc32c_append(crc, &data);
        let record = Record {
            r#type: Some(kind),
            crc: Some(crc),
            data: Some(data),
        }
        .encode_to_vec();
        let pad = (8 - record.len() % 8) % 8;
        let frame = record.len() as u64 | if pad == 0 { 0 } else { (0x80 | pad as u64) << 56 };
        tail.extend_from_slice(&frame.to_le_bytes());
        tail.extend_from_slice(&record);
        tail.extend(std::iter::repeat_n(0u8, pad));
    };
    let index = last.index() + 1;
    // An InternalRaftRequest with only a field of a number etcd 3.4/3.5 does not use.
    let entry = Entry {
        term: last.term,
        index: Some(index),
        r#type: Some(0),
        data: Some(vec![0x82, 0x7d, 0x00]),
    };
    append(2, entry.encode_to_vec());
    let state = HardState {
        term: last.term,
        vote: Some(0),
        commit: Some(index),
    };
    append(3, state.encode_to_vec());
    bytes.splice(end..end + tail.len(), tail);
    std::fs::write(wal, bytes).unwrap();
}

/// A committed request Concord cannot replay faithfully stops the migration: `concord serve`
/// exits with a message that says what to do, and etcd's files are back where etcd reads them,
/// unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_cannot_be_replayed_refuses_and_gives_etcd_its_files_back() {
    if !common::etcd::tools_present("an_entry_that_cannot_be_replayed_refuses_and_gives_etcd_its_files_back") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let flags = Flags::new(dir.path().join("m0.etcd"));
    let mut etcd = flags.start_etcd(dir.path().join("etcd.log"));
    let mut e = etcd.client(None).await;
    e.put("k", "v", None).await.unwrap();
    drop(e);
    etcd.kill();
    let wal = last_wal_file(&flags.wal_dir());
    append_unknown_entry(&wal);
    let member_dir = flags.data_dir.join("member");
    let before = (
        std::fs::read(&wal).unwrap(),
        std::fs::read(member_dir.join("snap").join("db")).unwrap(),
    );

    let mut member = flags.start("concord", dir.path().join("concord.log"), &[]);
    let status = member.wait_exit();
    assert!(!status.success(), "concord serve refused to start");
    let log = member.log_text();
    assert!(
        log.contains("cannot be replayed") && log.contains("restart etcd once and stop it cleanly, then start Concord"),
        "{log}"
    );
    let after = (
        std::fs::read(&wal).unwrap(),
        std::fs::read(member_dir.join("snap").join("db")).unwrap(),
    );
    assert!(before == after, "etcd's WAL and backend are back, unchanged");
    for left in ["member.etcd-original", "member.migrating"] {
        assert!(!flags.data_dir.join(left).exists(), "{left} is gone");
    }
    assert!(!member_dir.join("kv.redb").exists(), "no Concord store");
}
