//! Cluster bootstrap by discovery, as etcd does it: `--discovery` against a real etcd 3.4's v2
//! keys API (`etcd --enable-v2`, the discovery service), and `--discovery-srv` against SRV and A
//! records served by dnsmasq inside a network namespace whose `/etc/resolv.conf` points at it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, free_port, text, WAIT};
use concord_server::membership::{compute_cluster_id, compute_member_id};
use etcd_client::{Client, ConnectOptions};

/// A process the test started, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Waits (bounded) for the process to exit on its own.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "process {} did not exit", self.0.id());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Starts `program args`, its output into `log`, without the test's `ETCD_*` variables.
fn spawn(program: &str, args: &[String], log: &Path) -> Proc {
    spawn_with(program, args, log, &[])
}

/// [`spawn`] with the variables `env` set.
fn spawn_with(program: &str, args: &[String], log: &Path, env: &[(&str, &str)]) -> Proc {
    let file = std::fs::File::create(log).expect("log file");
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCD_") {
            command.env_remove(key);
        }
    }
    let child = command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    Proc(child)
}

fn read(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// A real etcd 3.4 with the v2 API on, serving as the discovery service.
struct DiscoveryService {
    _proc: Proc,
    client_url: String,
    log: PathBuf,
    /// curl's options for its TLS, if it serves https.
    curl_tls: Vec<String>,
}

impl DiscoveryService {
    fn start(dir: &Path) -> DiscoveryService {
        Self::start_with(dir, None)
    }

    /// `tls`: the service's certificate and its CA (then it serves https).
    fn start_with(dir: &Path, tls: Option<(&common::pki::Issued, &Path)>) -> DiscoveryService {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{}", free_port());
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let log = dir.join("etcd.log");
        let mut args: Vec<String> = [
            "--name=discovery",
            &format!("--data-dir={}", dir.join("etcd-data").display()),
            &format!("--listen-client-urls={client_url}"),
            &format!("--advertise-client-urls={client_url}"),
            &format!("--listen-peer-urls={peer_url}"),
            &format!("--initial-advertise-peer-urls={peer_url}"),
            &format!("--initial-cluster=discovery={peer_url}"),
            "--enable-v2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut curl_tls = Vec::new();
        if let Some((issued, ca)) = tls {
            args.push(format!("--cert-file={}", issued.cert_file.display()));
            args.push(format!("--key-file={}", issued.key_file.display()));
            curl_tls = vec!["--cacert".to_string(), ca.display().to_string()];
        }
        let service = DiscoveryService {
            _proc: spawn("etcd", &args, &log),
            client_url,
            log,
            curl_tls,
        };
        let deadline = Instant::now() + WAIT;
        while !service
            .curl(&["-sf", &format!("{}/v2/keys/", service.client_url)])
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "etcd did not serve v2:\n{}",
                read(&service.log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        service
    }

    /// A new discovery token expecting `size` members: its URL.
    fn token(&self, token: &str, size: usize) -> String {
        let url = format!("{}/v2/keys/discovery/{token}", self.client_url);
        let out = self.curl(&[
            "-sf",
            "-XPUT",
            &format!("{url}/_config/size"),
            "-d",
            &format!("value={size}"),
        ]);
        assert!(out.status.success(), "cannot create {url}: {}", text(&out.stderr));
        url
    }

    /// The registrations under a token: member id (hex) to value.
    fn registrations(&self, url: &str) -> BTreeMap<String, String> {
        let out = self.curl(&["-sf", url]);
        assert!(out.status.success(), "GET {url}: {}", text(&out.stderr));
        let listing: serde_json::Value = serde_json::from_slice(&out.stdout).expect("v2 JSON");
        listing["node"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["dir"].as_bool() != Some(true))
            .map(|n| {
                let key = n["key"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
                (key, n["value"].as_str().unwrap().to_string())
            })
            .collect()
    }

    /// curl with this service's TLS settings.
    fn curl(&self, args: &[&str]) -> Output {
        Command::new("curl")
            .args(["--max-time", "10"])
            .args(&self.curl_tls)
            .args(args)
            .output()
            .expect("curl is installed")
    }
}

/// One loopback member's identity and flags.
struct Spec {
    name: String,
    client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Spec {
    fn new(dir: &Path, name: &str) -> Spec {
        Spec {
            name: name.to_string(),
            client_url: format!("http://127.0.0.1:{}", free_port()),
            peer_url: format!("http://127.0.0.1:{}", free_port()),
            data_dir: dir.join(format!("{name}.etcd")),
            log: dir.join(format!("{name}.log")),
        }
    }

    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "serve".into(),
            format!("--name={}", self.name),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--listen-client-urls={}", self.client_url),
            format!("--advertise-client-urls={}", self.client_url),
            format!("--listen-peer-urls={}", self.peer_url),
            format!("--initial-advertise-peer-urls={}", self.peer_url),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn start(&self, extra: &[&str]) -> Proc {
        spawn(env!("CARGO_BIN_EXE_concord"), &self.args(extra), &self.log)
    }
}

async fn client(url: &str) -> Client {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    eventually(&format!("connect to {url}"), || {
        Client::connect([url], Some(opts.clone()))
    })
    .await
}

/// Waits until every member reports one leader; returns it and the cluster id.
async fn wait_for_leader(urls: &[&str], logs: &[&Path]) -> (u64, u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut seen = Vec::new();
        for url in urls {
            let opts = ConnectOptions::new()
                .with_connect_timeout(Duration::from_millis(500))
                .with_timeout(Duration::from_secs(2));
            let status = match Client::connect([*url], Some(opts)).await {
                Ok(mut c) => c.status().await.ok(),
                Err(_) => None,
            };
            seen.push(status.map(|s| (s.leader(), s.header().map_or(0, |h| h.cluster_id()))));
        }
        if let Some(Some(first)) = seen.first() {
            if first.0 != 0 && seen.iter().all(|s| s.as_ref() == Some(first)) {
                return *first;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader: {seen:?}\n{}",
            logs.iter().map(|l| read(l)).collect::<Vec<_>>().join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three members found each other through a real etcd's v2 discovery directory: the ids are
/// etcd's (peer URLs hashed with the discovery URL as the token), registered under their hex
/// id with `name=peerURL`; a fourth member finds the cluster full; a restarted member ignores
/// discovery (the service is gone by then) and rejoins.
#[tokio::test(flavor = "multi_thread")]
async fn discovery_url_founds_one_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let service = DiscoveryService::start(dir.path());
    let durl = service.token("cluster3", 3);
    let specs: Vec<Spec> = (0..3).map(|i| Spec::new(dir.path(), &format!("m{i}"))).collect();
    let discovery = format!("--discovery={durl}");
    // The token is replaced by the discovery URL, as etcd replaces it.
    let mut procs: Vec<Option<Proc>> = specs
        .iter()
        .map(|s| Some(s.start(&[&discovery, "--initial-cluster-token=not-used"])))
        .collect();
    let urls: Vec<&str> = specs.iter().map(|s| s.client_url.as_str()).collect();
    let logs: Vec<&Path> = specs.iter().map(|s| s.log.as_path()).collect();
    let (_, cluster_id) = wait_for_leader(&urls, &logs).await;

    let ids: Vec<u64> = specs
        .iter()
        .map(|s| compute_member_id(std::slice::from_ref(&s.peer_url), &durl))
        .collect();
    assert_eq!(cluster_id, compute_cluster_id(&ids), "etcd's cluster id");
    let expected: BTreeMap<String, String> = specs
        .iter()
        .zip(&ids)
        .map(|(s, id)| (format!("{id:x}"), format!("{}={}", s.name, s.peer_url)))
        .collect();
    assert_eq!(service.registrations(&durl), expected);

    let mut c0 = client(&specs[0].client_url).await;
    let members = c0.member_list().await.unwrap();
    let listed: BTreeSet<(u64, Vec<String>)> = members
        .members()
        .iter()
        .map(|m| (m.id(), m.peer_urls().to_vec()))
        .collect();
    let wanted: BTreeSet<(u64, Vec<String>)> = specs
        .iter()
        .zip(&ids)
        .map(|(s, id)| (*id, vec![s.peer_url.clone()]))
        .collect();
    assert_eq!(listed, wanted);
    c0.put("founded", "by discovery", None).await.unwrap();
    let mut c2 = client(&specs[2].client_url).await;
    let got = c2.get("founded", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"by discovery");

    // A fourth member: the cluster is full, it exits without registering.
    let late = Spec::new(dir.path(), "m3");
    let mut exit_fallback = late.start(&[&discovery, "--discovery-fallback=exit"]);
    assert_eq!(exit_fallback.wait_exit().code(), Some(1));
    let log = read(&late.log);
    assert!(
        log.contains("failed to join discovery cluster (discovery: cluster is full)"),
        "{log}"
    );
    let mut proxy_fallback = late.start(&[&discovery]);
    assert_eq!(proxy_fallback.wait_exit().code(), Some(1));
    let log = read(&late.log);
    assert!(
        log.contains("--discovery-fallback=proxy (etcd's default) would run etcd's v2 proxy"),
        "{log}"
    );
    assert_eq!(service.registrations(&durl).len(), 3);

    // A token without a size: the keys API's error, as etcd reports it.
    let bare = Spec::new(dir.path(), "bare");
    let mut no_size = bare.start(&[&format!("--discovery={}/v2/keys/discovery/nosize", service.client_url)]);
    assert_eq!(no_size.wait_exit().code(), Some(1));
    let log = read(&bare.log);
    assert!(
        log.contains("failed to join discovery cluster (100: Key not found"),
        "{log}"
    );

    // With the discovery service gone, a member with data still restarts: discovery is
    // ignored once the member has its cluster.
    drop(service);
    drop(procs[1].take());
    procs[1] = Some(specs[1].start(&[&discovery]));
    let (_, again) = wait_for_leader(&urls, &logs).await;
    assert_eq!(again, cluster_id);
    assert!(
        read(&specs[1].log).contains("discovery token is ignored since cluster already initialized"),
        "{}",
        read(&specs[1].log)
    );
    let mut c1 = client(&specs[1].client_url).await;
    let got = c1.get("founded", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"by discovery");
}

/// An etcd 3.4 member and a Concord member with the same name, peer URL and discovery URL
/// register the same key (member id in hex) with the same value, and report the same member
/// and cluster ids.
#[tokio::test(flavor = "multi_thread")]
async fn concord_registers_as_etcd_registers() {
    let dir = tempfile::tempdir().unwrap();
    let service = DiscoveryService::start(dir.path());
    let durl = service.token("same", 1);
    let spec = Spec::new(dir.path(), "twin");
    let etcd_args: Vec<String> = spec
        .args(&[&format!("--discovery={durl}")])
        .into_iter()
        .skip(1)
        .collect();
    let etcd_log = dir.path().join("twin-etcd.log");
    let etcd = spawn("etcd", &etcd_args, &etcd_log);
    let (etcd_leader, etcd_cluster) = wait_for_leader(&[&spec.client_url], &[&etcd_log]).await;
    drop(etcd);
    let by_etcd = service.registrations(&durl);
    assert_eq!(by_etcd.len(), 1);
    let (key, value) = by_etcd.iter().next().unwrap();
    assert_eq!(key, &format!("{etcd_leader:x}"));
    // Free the token for Concord, and the data directory's name.
    let out = service.curl(&["-sf", "-XDELETE", &format!("{durl}/{key}")]);
    assert!(out.status.success());
    std::fs::remove_dir_all(&spec.data_dir).unwrap();

    let _member = spec.start(&[&format!("--discovery={durl}")]);
    let (leader, cluster) = wait_for_leader(&[&spec.client_url], &[&spec.log]).await;
    assert_eq!((leader, cluster), (etcd_leader, etcd_cluster));
    assert_eq!(&service.registrations(&durl), &by_etcd, "{value}");
}

/// A TCP forwarder standing in for an HTTP proxy: etcd's HTTP server takes the absolute-form
/// requests a client sends to a proxy. Counts the connections it forwarded.
fn forward(listener: TcpListener, to: String, connections: Arc<AtomicUsize>) {
    std::thread::spawn(move || {
        for inbound in listener.incoming() {
            let Ok(inbound) = inbound else { return };
            let Ok(outbound) = TcpStream::connect(&to) else {
                continue;
            };
            connections.fetch_add(1, Ordering::SeqCst);
            let pipe = |mut from: TcpStream, mut into: TcpStream| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || into.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            };
            pipe(inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
            pipe(outbound, inbound);
        }
    });
}

/// `--discovery-proxy` carries every request (the discovery host does not even resolve), and
/// an unreachable service is retried until it answers, as etcd retries it.
#[tokio::test(flavor = "multi_thread")]
async fn discovery_goes_through_its_proxy_and_waits_for_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let service = DiscoveryService::start(dir.path());
    let real = service.token("alone", 1);
    let port = service.client_url.rsplit(':').next().unwrap();
    // Only the proxy knows where this is.
    let durl = real.replace("127.0.0.1", "discovery.invalid");
    assert!(durl.contains(&format!("discovery.invalid:{port}")));
    let proxy_port = free_port();
    let spec = Spec::new(dir.path(), "solo");
    let _member = spec.start(&[
        &format!("--discovery={durl}"),
        &format!("--discovery-proxy=127.0.0.1:{proxy_port}"),
    ]);
    // The proxy is not up yet: the member backs off and retries.
    let deadline = Instant::now() + WAIT;
    while !read(&spec.log).contains("retry connecting to discovery service") {
        assert!(Instant::now() < deadline, "no retry:\n{}", read(&spec.log));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connections = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind(("127.0.0.1", proxy_port)).unwrap();
    forward(
        listener,
        service.client_url.trim_start_matches("http://").to_string(),
        connections.clone(),
    );
    let (leader, cluster_id) = wait_for_leader(&[&spec.client_url], &[&spec.log]).await;
    let id = compute_member_id(std::slice::from_ref(&spec.peer_url), &durl);
    assert_eq!(leader, id);
    assert_eq!(cluster_id, compute_cluster_id(&[id]));
    assert!(connections.load(Ordering::SeqCst) >= 4, "size, listing, create, watch");
    assert_eq!(
        service.registrations(&real),
        BTreeMap::from([(format!("{id:x}"), format!("solo={}", spec.peer_url))])
    );
}

/// etcd's checks of the bootstrap flags: one source of the initial cluster, no discovery URL
/// for a member joining a running cluster, and the service name alone drops the default cluster.
#[test]
fn bootstrap_flags_conflict_as_in_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec::new(dir.path(), "m0");
    let durl = "--discovery=http://127.0.0.1:9/v2/keys/discovery/t";
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_concord"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(key);
            }
        }
        let out = command
            .args(spec.args(extra))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let conflict = "multiple discovery or bootstrap flags are set. \
                    Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\"";
    let initial = format!("--initial-cluster=m0={}", spec.peer_url);
    assert!(run(&[durl, &initial], &[]).contains(conflict));
    assert!(run(&[durl, "--discovery-srv=example.test"], &[]).contains(conflict));
    let from_env = format!("m0={}", spec.peer_url);
    assert!(run(
        &["--discovery-srv=example.test"],
        &[("ETCD_INITIAL_CLUSTER", &from_env)]
    )
    .contains(conflict));
    assert!(run(&[durl, "--initial-cluster-state=existing"], &[])
        .contains("discovery URL should not be set when joining existing initial cluster"));
    assert!(run(&["--discovery-srv-name=foo"], &[])
        .contains("couldn't find local name \"m0\" in the initial cluster configuration"));
    assert!(!spec.data_dir.join("member").join("cluster.pb").exists());
}

/// A network namespace with dnsmasq answering for `example.test`: its own `/etc/resolv.conf`
/// (`ip netns exec` mounts `/etc/netns/<name>/resolv.conf` over it), so every process started
/// in it, and only those, resolve through dnsmasq. Removed when dropped.
struct DnsNamespace {
    name: String,
    procs: Vec<Proc>,
}

impl Drop for DnsNamespace {
    fn drop(&mut self) {
        self.procs.clear();
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
    }
}

impl DnsNamespace {
    /// Sets the namespace up with dnsmasq serving `records` (dnsmasq options); `None`, with
    /// the reason printed, where namespaces or dnsmasq are not available.
    fn start(dir: &Path, records: &[String]) -> Option<DnsNamespace> {
        let dnsmasq = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(dnsmasq) = dnsmasq else {
            eprintln!("SKIPPED: dnsmasq is not installed (Debian package dnsmasq-base)");
            return None;
        };
        let name = format!("concord-srv-{}", std::process::id());
        // A leftover of an earlier run with this process id, if any.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let added = Command::new("ip").args(["netns", "add", &name]).output();
        if !added.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!(
                "SKIPPED: cannot create a network namespace (needs root and iproute2): {:?}",
                added.map(|o| text(&o.stderr))
            );
            return None;
        }
        let mut ns = DnsNamespace {
            name,
            procs: Vec::new(),
        };
        let etc = Path::new("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        let up = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", "up"])
            .status();
        assert!(up.is_ok_and(|s| s.success()), "ip link set lo up");
        let mut args: Vec<String> = [
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--pid-file=",
            "--user=root",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--port=53",
            "--local=/example.test/",
            "--log-queries",
            "--log-facility=-",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(records.iter().cloned());
        let log = dir.join("dnsmasq.log");
        ns.procs.push(ns.spawn(dnsmasq, &args, &log));
        // Ready once a name resolves through it, the way the members will resolve it.
        let deadline = Instant::now() + WAIT;
        while !ns.run("getent", &["hosts", "m0.example.test"]).status.success() {
            assert!(Instant::now() < deadline, "dnsmasq does not answer:\n{}", read(&log));
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(ns)
    }

    fn command(&self, program: &str, args: &[String]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]).args(args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(key);
            }
        }
        command
    }

    /// Starts `program` in the namespace (`ip netns exec` execs it: the child is the program).
    fn spawn(&self, program: &str, args: &[String], log: &Path) -> Proc {
        let file = std::fs::File::create(log).expect("log file");
        let child = self
            .command(program, args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("ip netns exec");
        Proc(child)
    }

    /// Runs `program` in the namespace to its end.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.command(program, &args)
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec")
    }

    /// etcdctl (v3) in the namespace.
    fn etcdctl(&self, endpoints: &str, args: &[&str]) -> Output {
        let mut all = vec!["--endpoints", endpoints, "--command-timeout=5s"];
        all.extend_from_slice(args);
        let args: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        self.command("etcdctl", &args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .output()
            .expect("etcdctl is installed")
    }
}

/// Three members found their cluster from SRV records, as etcd's DNS discovery documents it:
/// `_etcd-server._tcp.example.test` names them by host name, two advertise their IP address and
/// one its name; each finds itself by resolved address. The ids are etcd's, from the SRV host
/// names. A member the records do not name, and a scheme that differs from its service's, are
/// refused with etcd's messages.
#[test]
fn discovery_srv_founds_one_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let ip = |i: usize| format!("127.0.0.{}", 10 + i);
    let mut records = Vec::new();
    for i in 0..3 {
        records.push(format!("--host-record=m{i}.example.test,{}", ip(i)));
        records.push(format!(
            "--srv-host=_etcd-server._tcp.example.test,m{i}.example.test,2380,0,10"
        ));
    }
    records.push("--srv-host=_etcd-server-ssl-tls._tcp.example.test,m0.example.test,2380,0,10".to_string());
    let Some(ns) = DnsNamespace::start(dir.path(), &records) else {
        return;
    };
    let concord = env!("CARGO_BIN_EXE_concord");
    let member_args = |name: &str, address: &str, advertised: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec![
            "serve".into(),
            format!("--name={name}"),
            format!("--data-dir={}", dir.path().join(format!("{name}.etcd")).display()),
            format!("--listen-client-urls=http://{address}:2379"),
            format!("--advertise-client-urls=http://{address}:2379"),
            format!("--listen-peer-urls=http://{address}:2380"),
            format!("--initial-advertise-peer-urls={advertised}"),
            "--initial-cluster-token=srv-test".into(),
            "--discovery-srv=example.test".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let mut members = Vec::new();
    for i in 0..3 {
        let advertised = if i == 1 {
            "http://m1.example.test:2380".to_string()
        } else {
            format!("http://{}:2380", ip(i))
        };
        let args = member_args(&format!("m{i}"), &ip(i), &advertised, &[]);
        members.push(ns.spawn(concord, &args, &dir.path().join(format!("m{i}.log"))));
    }
    let logs = || {
        (0..3)
            .map(|i| read(&dir.path().join(format!("m{i}.log"))))
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let endpoints = (0..3).map(|i| format!("{}:2379", ip(i))).collect::<Vec<_>>().join(",");

    // One leader, the same for all three.
    let deadline = Instant::now() + WAIT;
    loop {
        let out = ns.etcdctl(&endpoints, &["endpoint", "status", "-w", "json"]);
        let statuses: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let leaders: BTreeSet<u64> = statuses.iter().filter_map(|s| s["Status"]["leader"].as_u64()).collect();
        if statuses.len() == 3 && leaders.len() == 1 && !leaders.contains(&0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader: {}\n{}",
            text(&out.stdout),
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // etcd's ids, from the SRV targets' names, whatever each member advertised.
    let srv_urls: Vec<String> = (0..3).map(|i| format!("http://m{i}.example.test:2380")).collect();
    let ids: Vec<u64> = srv_urls
        .iter()
        .map(|u| compute_member_id(std::slice::from_ref(u), "srv-test"))
        .collect();
    let out = ns.etcdctl(&endpoints, &["member", "list", "-w", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("member list JSON");
    assert_eq!(list["header"]["cluster_id"].as_u64(), Some(compute_cluster_id(&ids)));
    let listed: BTreeSet<(u64, String)> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["ID"].as_u64().unwrap(),
                m["peerURLs"][0].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let wanted: BTreeSet<(u64, String)> = ids.iter().copied().zip(srv_urls.iter().cloned()).collect();
    assert_eq!(listed, wanted);

    let put = ns.etcdctl(&format!("{}:2379", ip(0)), &["put", "found", "by-srv"]);
    assert!(put.status.success(), "{}", text(&put.stderr));
    let got = ns.etcdctl(&format!("{}:2379", ip(2)), &["get", "found", "--print-value-only"]);
    assert_eq!(text(&got.stdout).trim(), "by-srv", "{}", text(&got.stderr));

    // Not named by the records.
    let stranger = member_args("stranger", "127.0.0.20", "http://127.0.0.20:2380", &[]);
    let out = ns.command(concord, &stranger).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("error setting up initial cluster: cannot find local etcd member \"stranger\" in SRV records"),
        "{}",
        text(&out.stderr)
    );
    // Named by `_etcd-server-ssl-tls` (https) while advertising http.
    let args = member_args(
        "m0",
        &ip(0),
        &format!("http://{}:2380", ip(0)),
        &["--discovery-srv-name=tls"],
    );
    let mut args = args;
    args[2] = format!("--data-dir={}", dir.path().join("mismatch.etcd").display());
    let out = ns.command(concord, &args).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "bootstrap at https://m0.example.test:2380 from DNS for etcd-server-ssl-tls has scheme mismatch \
             with expected peer http://127.0.0.10:2380"
        ),
        "{err}"
    );
    drop(members);
}

/// An `https://` discovery URL: the service's certificate is checked against the system's
/// roots, which `SSL_CERT_FILE` replaces as it does for Go programs.
#[tokio::test(flavor = "multi_thread")]
async fn discovery_over_https_trusts_the_system_roots() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::pki::TestCa::new(dir.path(), "discovery");
    let issued = ca.issue("discovery", "discovery");
    let ca_file = ca.ca_file();
    let service = DiscoveryService::start_with(dir.path(), Some((&issued, &ca_file)));
    assert!(service.client_url.starts_with("https://"));
    let durl = service.token("secure", 1);
    let spec = Spec::new(dir.path(), "sealed");
    let ca_path = ca_file.display().to_string();
    let _member = spawn_with(
        env!("CARGO_BIN_EXE_concord"),
        &spec.args(&[&format!("--discovery={durl}")]),
        &spec.log,
        &[("SSL_CERT_FILE", &ca_path)],
    );
    let (leader, _) = wait_for_leader(&[&spec.client_url], &[&spec.log]).await;
    assert_eq!(leader, compute_member_id(std::slice::from_ref(&spec.peer_url), &durl));
    assert_eq!(
        service.registrations(&durl),
        BTreeMap::from([(format!("{leader:x}"), format!("sealed={}", spec.peer_url))])
    );
}
