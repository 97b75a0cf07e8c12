//! Patroni on Concord: two PostgreSQL nodes under Patroni, with Patroni's `etcd3` DCS (which
//! speaks etcd's JSON gateway: base64 keys, txns, leases, a watch on the cluster prefix) pointed
//! at a 3-member Concord cluster. They must elect one leader, stream a row to the replica, and
//! fail over when the leader's Patroni and its postgres are killed with SIGKILL, keeping the row.
//!
//! Real processes throughout: Debian's `patroni` and the PostgreSQL server under
//! `/usr/lib/postgresql/*/bin` (`scripts/setup.sh` installs both). Skipped, with a message, where
//! either cannot be found. PostgreSQL refuses to run as root, so as root Patroni (and the
//! postgres it starts) runs as the `postgres` user, which Debian's package creates.

mod common;

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, free_port, http, Cluster};

/// Patroni's scope: its keys live under `/service/<SCOPE>/` in the DCS.
const SCOPE: &str = "concord-test";

/// The leader lease's TTL (seconds). Short, so that failover (which waits for the dead
/// leader's lease to expire) is quick; Patroni needs `loop_wait + 2 * retry_timeout <= ttl`.
const TTL: u64 = 10;

/// How long a node may take to bootstrap (initdb, or a base backup of the leader) and start.
const BOOTSTRAP_WAIT: Duration = Duration::from_secs(180);

/// How long failover may take after the leader is killed: its lease's TTL, then Patroni's
/// loop noticing the leader key is gone and promoting the replica, with room for a loaded machine.
const FAILOVER_WAIT: Duration = Duration::from_secs(90);

/// What the test needs installed.
struct Tools {
    patroni: PathBuf,
    /// PostgreSQL's server binaries (`postgres`, `initdb`, `pg_ctl`, `psql`), for Patroni's `bin_dir`.
    pg_bin: PathBuf,
}

/// Finds `patroni` on the PATH and the newest PostgreSQL under `/usr/lib/postgresql`, or says
/// what is missing.
fn find_tools() -> Result<Tools, String> {
    let patroni = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("patroni"))
        .find(|p| p.is_file())
        .ok_or("no `patroni` on the PATH (Debian package patroni)")?;
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no /usr/lib/postgresql (Debian package postgresql): {e}"))?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            ["postgres", "initdb", "pg_ctl", "psql"]
                .iter()
                .all(|b| bin.join(b).is_file())
                .then_some((version, bin))
        })
        .collect();
    versions.sort();
    let (_, pg_bin) = versions
        .pop()
        .ok_or("no PostgreSQL server under /usr/lib/postgresql/*/bin (Debian package postgresql)")?;
    Ok(Tools { patroni, pg_bin })
}

/// The uid and gid to run PostgreSQL as: the `postgres` user's when this test runs as root
/// (postgres refuses root), else none (run as ourselves).
fn postgres_user() -> Option<(u32, u32)> {
    let id = |args: &[&str]| -> String {
        let out = Command::new("id").args(args).output().expect("run id");
        assert!(
            out.status.success(),
            "id {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    if id(&["-u"]) != "0" {
        return None;
    }
    let uid = id(&["-u", "postgres"]).parse().expect("uid of postgres");
    let gid = id(&["-g", "postgres"]).parse().expect("gid of postgres");
    Some((uid, gid))
}

/// One Patroni node: its config, its Patroni process and the postgres it manages.
struct Node {
    name: String,
    dir: PathBuf,
    rest_port: u16,
    pg_port: u16,
    pg_bin: PathBuf,
    patroni: Option<Child>,
}

impl Node {
    /// Writes node `name`'s Patroni config (DCS: the Concord `endpoints`) and starts Patroni.
    fn start(name: &str, root: &Path, tools: &Tools, endpoints: &[String], user: Option<(u32, u32)>) -> Node {
        let dir = root.join(name);
        std::fs::create_dir(&dir).expect("node dir");
        let (rest_port, pg_port) = (free_port(), free_port());
        let hosts: Vec<&str> = endpoints.iter().map(|e| e.trim_start_matches("http://")).collect();
        // Trust on loopback, so that neither the replica's base backup and streaming nor this
        // test's psql need passwords.
        let config = format!(
            "scope: {SCOPE}
namespace: /service/
name: {name}
log:
  level: DEBUG
restapi:
  listen: 127.0.0.1:{rest_port}
  connect_address: 127.0.0.1:{rest_port}
etcd3:
  hosts: {hosts}
bootstrap:
  dcs:
    ttl: {TTL}
    loop_wait: 1
    retry_timeout: 3
    postgresql:
      use_pg_rewind: false
  initdb:
    - encoding: UTF8
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {data}
  bin_dir: {bin}
  pgpass: {pgpass}
  authentication:
    superuser:
      username: postgres
    replication:
      username: replicator
  parameters:
    unix_socket_directories: {dir}
",
            hosts = hosts.join(","),
            data = dir.join("data").display(),
            bin = tools.pg_bin.display(),
            pgpass = dir.join("pgpass").display(),
            dir = dir.display(),
        );
        let config_path = dir.join("patroni.yml");
        std::fs::write(&config_path, config).expect("write patroni.yml");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown node dir");
            std::os::unix::fs::chown(&config_path, Some(uid), Some(gid)).expect("chown patroni.yml");
        }
        let log = File::create(dir.join("patroni.log")).expect("patroni.log");
        let mut command = Command::new(&tools.patroni);
        command
            .arg(&config_path)
            .env("HOME", &dir)
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("patroni.log"))
            .stderr(log);
        if let Some((uid, gid)) = user {
            // Set in the child before exec, so the Child is Patroni itself and kill -9 reaches it.
            command.uid(uid).gid(gid);
        }
        let patroni = command.spawn().expect("spawn patroni");
        Node {
            name: name.to_string(),
            dir,
            rest_port,
            pg_port,
            pg_bin: tools.pg_bin.clone(),
            patroni: Some(patroni),
        }
    }

    /// The status code of Patroni's REST API for `path` (`/leader`, `/replica`), if it answers.
    fn rest_status(&self, path: &str) -> Option<u16> {
        http::get(&format!("http://127.0.0.1:{}{path}", self.rest_port))
            .ok()
            .map(|r| r.status)
    }

    /// Runs `sql` with psql on this node's postgres; its unaligned output, or why it failed.
    fn psql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new(self.pg_bin.join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.pg_port.to_string(), "-d", "postgres", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// The postmaster's pid, from the data directory's `postmaster.pid`, while it has one.
    fn postmaster_pid(&self) -> Option<u32> {
        let pid_file = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).ok()?;
        pid_file.lines().next()?.trim().parse().ok()
    }

    /// Kills Patroni with SIGKILL, then its postgres with `signal` (KILL for a crash, QUIT for
    /// postgres's immediate shutdown, which also stops its backends at once).
    fn kill(&mut self, signal: &str) {
        if let Some(mut child) = self.patroni.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = self.postmaster_pid() {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Whether a line of Patroni's log contains every one of `parts`.
    fn log_has_line(&self, parts: &[&str]) -> bool {
        let text = std::fs::read_to_string(self.dir.join("patroni.log")).unwrap_or_default();
        text.lines().any(|line| parts.iter().all(|p| line.contains(p)))
    }

    /// The end of Patroni's log (which also holds postgres's own output), for failure messages.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("patroni.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        format!(
            "--- patroni {} ---\n{}",
            self.name,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
        self.kill("QUIT");
    }
}

/// Polls `check` every 200 ms until it gives a value, for at most `limit`; panics naming `what`
/// and the last thing `check` reported otherwise.
async fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => assert!(Instant::now() < deadline, "{what}: not within {limit:?}; last: {last}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Which of `nodes` answer 200 on Patroni's `/leader`, with every node's status code.
fn leaders(nodes: &[Node]) -> (Vec<usize>, String) {
    let codes: Vec<Option<u16>> = nodes.iter().map(|n| n.rest_status("/leader")).collect();
    let leaders = (0..nodes.len()).filter(|&i| codes[i] == Some(200)).collect();
    (leaders, format!("GET /leader: {codes:?}"))
}

/// The node name in Patroni's leader key on the Concord cluster, if there is one.
async fn leader_key(cluster: &Cluster) -> Result<String, String> {
    let mut client = cluster.client(0).await;
    let resp = client
        .get(format!("/service/{SCOPE}/leader"), None)
        .await
        .map_err(|e| e.to_string())?;
    let kv = resp.kvs().first().ok_or("no leader key")?;
    Ok(kv.value_str().map_err(|e| e.to_string())?.to_string())
}

/// Standard base64 with padding, as etcd's JSON gateway writes keys.
fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_elects_replicates_and_fails_over() {
    let tools = match find_tools() {
        Ok(tools) => tools,
        Err(reason) => {
            eprintln!("SKIPPED patroni_elects_replicates_and_fails_over: {reason}");
            return;
        }
    };
    let user = postgres_user();
    let cluster = Cluster::start(3).await;
    let root = tempfile::tempdir().expect("tempdir");
    if let Some((uid, gid)) = user {
        // The tempdir is root's and 0700: postgres must get into it.
        std::os::unix::fs::chown(root.path(), Some(uid), Some(gid)).expect("chown tempdir");
    }
    let endpoints = cluster.endpoints();

    // The first node bootstraps the cluster (initdb) and takes the leader key; only then does
    // the second start, so it joins as a replica with a base backup of the first.
    let mut nodes = vec![Node::start("node0", root.path(), &tools, &endpoints, user)];
    wait_for("node0 becomes the leader", BOOTSTRAP_WAIT, || match leaders(&nodes) {
        (l, _) if l == [0] => Ok(()),
        (_, codes) => Err(codes),
    })
    .await;
    nodes.push(Node::start("node1", root.path(), &tools, &endpoints, user));
    wait_for("node1 runs as a streaming replica", BOOTSTRAP_WAIT, || {
        match nodes[1].rest_status("/replica") {
            Some(200) => Ok(()),
            other => Err(format!("GET /replica on node1: {other:?}")),
        }
    })
    .await;
    let (leader_nodes, codes) = leaders(&nodes);
    assert_eq!(leader_nodes, [0], "exactly one leader, node0: {codes}");
    assert_eq!(
        eventually("read the leader key", || leader_key(&cluster)).await,
        "node0"
    );

    // A row written on the primary is streamed to the replica.
    nodes[0]
        .psql("CREATE TABLE drop_in (v text); INSERT INTO drop_in VALUES ('written on node0')")
        .expect("write on the primary");
    let on_replica = wait_for("the row reaches the replica", BOOTSTRAP_WAIT, || {
        nodes[1].psql("SELECT v FROM drop_in")
    })
    .await;
    assert_eq!(on_replica, "written on node0");
    assert_eq!(
        nodes[1].psql("SELECT pg_is_in_recovery()").as_deref(),
        Ok("t"),
        "node1 is a standby"
    );

    // The leader crashes: Patroni and postgres both killed, nothing released. node1 may take
    // over only once the leader's lease expires on Concord and the leader key goes with it.
    let killed = Instant::now();
    nodes[0].kill("KILL");
    assert_eq!(nodes[0].rest_status("/leader"), None, "node0's Patroni is gone");
    wait_for("node1 takes over", FAILOVER_WAIT, || match leaders(&nodes) {
        (l, _) if l == [1] => Ok(()),
        (_, codes) => Err(codes),
    })
    .await;
    eprintln!("failover took {:?} (lease TTL {TTL}s)", killed.elapsed());
    assert_eq!(
        eventually("read the new leader key", || leader_key(&cluster)).await,
        "node1"
    );
    // Patroni reads the cluster's state from a cache that only its watch on Concord updates
    // (Patroni logs each message at DEBUG): node1 must have seen the old leader key's deletion
    // (the expired lease's revoke) arrive on that watch, not by a reread after the watch failed.
    let leader_key_b64 = base64(&format!("/service/{SCOPE}/leader"));
    assert!(
        nodes[1].log_has_line(&["Received message", "DELETE", &leader_key_b64]),
        "node1's watch delivered the deletion of the leader key ({leader_key_b64})"
    );

    // The promoted node has the row and takes writes.
    let promoted = wait_for("node1 is promoted", FAILOVER_WAIT, || {
        nodes[1]
            .psql("SELECT pg_is_in_recovery()")
            .and_then(|r| match r.as_str() {
                "f" => Ok(r),
                _ => Err(format!("pg_is_in_recovery: {r}")),
            })
    })
    .await;
    assert_eq!(promoted, "f");
    assert_eq!(
        nodes[1].psql("SELECT v FROM drop_in").as_deref(),
        Ok("written on node0")
    );
    nodes[1]
        .psql("INSERT INTO drop_in VALUES ('written on node1')")
        .expect("write on the new primary");
    assert_eq!(
        nodes[1].psql("SELECT count(*) FROM drop_in").as_deref(),
        Ok("2"),
        "both rows on the new primary"
    );
}
