//! A real cluster for tests: `concord serve` processes on loopback ports,
//! started with etcd's flags, reached with the `etcd-client` crate and etcdctl.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

pub mod etcd;
pub mod http;
pub mod pki;
pub mod puts;
pub mod webdriver;

/// How long any wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// One member's fixed identity, so it can be restarted with the same flags.
pub struct MemberSpec {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// A running (or partly stopped) cluster of `concord serve` processes.
pub struct Cluster {
    pub members: Vec<MemberSpec>,
    processes: Vec<Option<Child>>,
    /// Per member: the `--initial-cluster` and `--initial-cluster-state` it starts with.
    bootstrap: Vec<(String, &'static str)>,
    extra_args: Vec<String>,
    /// `http` or `https`, for every client and peer URL.
    scheme: &'static str,
    /// What clients (and the harness's own status calls) connect with, on an `https` cluster.
    client_tls: Option<etcd_client::TlsOptions>,
    dir: tempfile::TempDir,
}

/// How to run a cluster with TLS: the members' extra flags (certificates) and the TLS settings
/// of the harness's clients.
pub struct Secure {
    /// Flags added to every member's command line, besides `https` URLs.
    pub member_args: Vec<String>,
    /// What `client()` and the harness's status calls present and trust.
    pub client_tls: etcd_client::TlsOptions,
}

/// A loopback port nothing listens on now and that this test process has not handed out
/// before. Ports come from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`), so that no client connection (an etcd client's, or a
/// member's own, in another test running beside this one) takes the port as its local end
/// before the member binds it; the kernel may also offer a just-released ephemeral port
/// again, and a member given a taken port fails with "Address already in use".
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = fixed_port_range();
    let span = u32::from(high - low);
    if NEXT.load(Ordering::Relaxed) == 0 {
        // Start at a point that differs between runs, so leftovers of an earlier run are skipped.
        let seed = std::process::id().wrapping_mul(2_654_435_761) % span;
        let _ = NEXT.compare_exchange(0, seed + 1, Ordering::Relaxed, Ordering::Relaxed);
    }
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..span {
        let port = low + (NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// Ports that the kernel never picks for outgoing connections: from 10000 up to the start of
/// its ephemeral range (32768 by default on Linux).
fn fixed_port_range() -> (u16, u16) {
    let ephemeral: Vec<u16> = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .map(|r| r.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default();
    match ephemeral[..] {
        [low, _] if low > 12000 => (10000, low),
        [_, high] if high < 63000 => (high + 1, 65535),
        _ => (10000, 32768),
    }
}

impl Cluster {
    /// Starts `n` members and waits until they agree on a leader.
    pub async fn start(n: usize) -> Cluster {
        Self::start_with(n, &[]).await
    }

    /// Starts `n` members with extra `concord serve` flags.
    pub async fn start_with(n: usize, extra_args: &[&str]) -> Cluster {
        let extra_args: Vec<String> = extra_args.iter().map(|a| a.to_string()).collect();
        Self::start_inner(n, "http", extra_args, None).await
    }

    /// Starts `n` members with `https` client and peer URLs and the certificates of `secure`.
    pub async fn start_secure(n: usize, secure: Secure) -> Cluster {
        Self::start_inner(n, "https", secure.member_args, Some(secure.client_tls)).await
    }

    async fn start_inner(
        n: usize,
        scheme: &'static str,
        extra_args: Vec<String>,
        client_tls: Option<etcd_client::TlsOptions>,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let members: Vec<MemberSpec> = (0..n)
            .map(|i| MemberSpec {
                name: format!("m{i}"),
                client_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                peer_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            processes: (0..n).map(|_| None).collect(),
            members,
            bootstrap: (0..n).map(|_| (initial_cluster.clone(), "new")).collect(),
            extra_args,
            scheme,
            client_tls,
            dir,
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_for_leader().await;
        cluster
    }

    /// Starts a new member that joins the running cluster (after it was added
    /// with MemberAdd) with `--initial-cluster-state existing`; returns its index.
    pub fn spawn_joining(&mut self, peer_url: &str) -> usize {
        let i = self.members.len();
        let spec = MemberSpec {
            name: format!("m{i}"),
            client_url: format!("{}://127.0.0.1:{}", self.scheme, free_port()),
            peer_url: peer_url.to_string(),
            data_dir: self.dir.path().join(format!("m{i}.etcd")),
            log: self.dir.path().join(format!("m{i}.log")),
        };
        self.members.push(spec);
        let initial_cluster = self
            .members
            .iter()
            .enumerate()
            .filter(|(j, _)| *j == i || self.processes.get(*j).is_some_and(|p| p.is_some()))
            .map(|(_, m)| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        self.bootstrap.push((initial_cluster, "existing"));
        self.processes.push(None);
        self.spawn(i);
        i
    }

    /// A loopback peer URL nobody uses yet, for a member about to be added.
    pub fn new_peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, free_port())
    }

    /// Connection options for this cluster's clients (TLS on an `https` cluster).
    pub fn connect_options(&self, connect_timeout: Duration, timeout: Duration) -> ConnectOptions {
        let opts = ConnectOptions::new()
            .with_connect_timeout(connect_timeout)
            .with_timeout(timeout);
        match &self.client_tls {
            Some(tls) => opts.with_tls(tls.clone()),
            None => opts,
        }
    }

    /// Waits for member `i`'s process to exit on its own; returns whether it did in time.
    pub fn wait_exit(&mut self, i: usize) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some(child) = self.processes[i].as_mut() {
                if child.try_wait().expect("wait").is_some() {
                    self.processes[i] = None;
                    return true;
                }
            } else {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Whether member `i`'s log mentions `text`.
    pub fn log_contains(&self, i: usize, text: &str) -> bool {
        std::fs::read_to_string(&self.members[i].log).is_ok_and(|l| l.contains(text))
    }

    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let (initial_cluster, state) = &self.bootstrap[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_concord"))
            .arg("serve")
            .args(["--name", &m.name])
            .arg(format!("--data-dir={}", m.data_dir.display()))
            .args(["--listen-client-urls", &m.client_url])
            .args(["--advertise-client-urls", &m.client_url])
            .args(["--listen-peer-urls", &m.peer_url])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster", initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "concord-test"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn concord serve");
        self.processes[i] = Some(child);
    }

    /// The client URLs of the members that are running.
    pub fn live_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .zip(&self.processes)
            .filter(|(_, p)| p.is_some())
            .map(|(m, _)| m.client_url.clone())
            .collect()
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// A client bound to member `i` only.
    pub async fn client(&self, i: usize) -> Client {
        let opts = self.connect_options(Duration::from_secs(2), Duration::from_secs(15));
        let deadline = Instant::now() + WAIT;
        loop {
            match Client::connect([self.members[i].client_url.as_str()], Some(opts.clone())).await {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot connect to member {i}: {e}"),
            }
        }
    }

    /// The process id of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.processes[i].as_ref().map(|c| c.id())
    }

    /// Member `i`'s resident memory in KiB (VmRSS), while it runs.
    pub fn rss_kib(&self, i: usize) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid(i)?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Kills member `i` with SIGKILL (kill -9) and waits for it to exit.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.processes[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops member `i` with SIGTERM and returns its exit status.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        let mut child = self.processes[i].take().expect("member is running");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "member {i} did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the extra `concord serve` flags that members started from now on get (say, a
    /// member restarted as another build would run).
    pub fn set_extra_args(&mut self, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
    }

    /// Starts member `i` again with the same flags and data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(self.processes[i].is_none(), "member {i} is still running");
        self.spawn(i);
    }

    /// Member `i`'s status as it reports it, if it answers.
    pub async fn status(&self, i: usize) -> Option<etcd_client::StatusResponse> {
        let opts = self.connect_options(Duration::from_millis(500), Duration::from_secs(2));
        let mut c = Client::connect([self.members[i].client_url.as_str()], Some(opts))
            .await
            .ok()?;
        c.status().await.ok()
    }

    /// Waits until every running member reports the same leader, and returns
    /// the leader's index in `members`.
    pub async fn wait_for_leader(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut leaders = Vec::new();
            for (i, p) in self.processes.iter().enumerate() {
                if p.is_some() {
                    leaders.push(self.status(i).await.map(|s| s.leader()).unwrap_or(0));
                }
            }
            if let Some(&first) = leaders.first() {
                if first != 0 && leaders.iter().all(|&l| l == first) {
                    if let Some(i) = self.index_of_member_id(first).await {
                        if self.processes[i].is_some() {
                            return i;
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {WAIT:?}: {leaders:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Maps a member id to its index, asking any running member.
    pub async fn index_of_member_id(&self, id: u64) -> Option<usize> {
        for (i, p) in self.processes.iter().enumerate() {
            if p.is_none() {
                continue;
            }
            if let Some(status) = self.status(i).await {
                if status.header().map(|h| h.member_id()) == Some(id) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// All member logs, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let text = std::fs::read_to_string(&m.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                format!(
                    "--- {} ---\n{}",
                    m.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs etcdctl (API v3) against the given endpoints.
    ///
    /// Endpoints are passed as host:port: etcdctl 3.4 sends a URL endpoint as
    /// the HTTP/2 `:authority` of its per-endpoint calls (`endpoint status`),
    /// which Rust's HTTP/2 server rejects as malformed.
    pub fn etcdctl(&self, endpoints: &[String], args: &[&str]) -> std::process::Output {
        let endpoints: Vec<&str> = endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://").trim_start_matches("https://"))
            .collect();
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("--command-timeout=10s")
            .args(args)
            .output()
            .expect("etcdctl is installed (Debian package etcd-client)")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("member logs at the failure:\n{}", self.logs());
        }
        for i in 0..self.processes.len() {
            self.kill(i);
        }
    }
}

/// Retries `op` until it succeeds or [`WAIT`] passes.
pub async fn eventually<T, E: std::fmt::Debug, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(Instant::now() < deadline, "{what}: still failing after {WAIT:?}: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs the `concord` binary with `args`, as a person would, and collects what it printed.
pub fn concord(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run concord")
}

/// `concord serve` with `args` and the environment `env` (and loopback URLs and a data
/// directory of its own), which must refuse to start: what it printed. A member that starts
/// after all is killed after [`WAIT`] and fails the test.
pub fn serve_refused(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_concord"))
        .arg("serve")
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("default={peer}")])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run concord");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("concord serve {args:?} did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    assert!(!output.status.success(), "{output:?}");
    output
}

/// Bytes a command printed, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The gRPC status inside an etcd-client error.
pub fn grpc_status(err: etcd_client::Error) -> tonic::Status {
    match err {
        etcd_client::Error::GRpcStatus(s) => s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// Every key member `i` holds, as key → (value, mod revision), with the revision it was read at;
/// `serializable` reads the member's own state without a ReadIndex barrier.
pub async fn all_keys(
    cluster: &Cluster,
    i: usize,
    serializable: bool,
) -> Result<(i64, std::collections::BTreeMap<String, (String, i64)>), String> {
    let mut c = cluster.client(i).await;
    let mut options = etcd_client::GetOptions::new().with_all_keys();
    if serializable {
        options = options.with_serializable();
    }
    let resp = c.get("", Some(options)).await.map_err(|e| e.to_string())?;
    let data = resp
        .kvs()
        .iter()
        .map(|kv| {
            let k = String::from_utf8_lossy(kv.key()).into_owned();
            (k, (String::from_utf8_lossy(kv.value()).into_owned(), kv.mod_revision()))
        })
        .collect();
    Ok((resp.header().map_or(0, |h| h.revision()), data))
}

/// Asserts that a command succeeded, showing what it said otherwise.
pub fn assert_ok(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A client of `url` (logged in as `user`, if given) once it serves with a leader.
pub async fn connect_with_leader(url: &str, user: Option<(&str, &str)>, what: &str) -> etcd_client::Client {
    let user = user.map(|(u, p)| (u.to_string(), p.to_string()));
    eventually(what, || {
        let (url, user) = (url.to_string(), user.clone());
        async move {
            let mut opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(Duration::from_secs(10));
            if let Some((u, p)) = user {
                opts = opts.with_user(u, p);
            }
            let mut c = etcd_client::Client::connect([url], Some(opts))
                .await
                .map_err(|e| e.to_string())?;
            let status = c.status().await.map_err(|e| e.to_string())?;
            if status.leader() == 0 {
                return Err("no leader yet".to_string());
            }
            Ok::<_, String>(c)
        }
    })
    .await
}

/// The command that starts one member with `program`'s flags: `etcd` (or another binary on the
/// PATH) as it is, `concord` as `concord serve`.
pub fn member_command(program: &str) -> Command {
    match program {
        "concord" => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_concord"));
            c.arg("serve");
            c
        }
        other => Command::new(other),
    }
}
