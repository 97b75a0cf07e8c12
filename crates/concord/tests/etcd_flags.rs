//! etcd's own command lines, units and options start `concord serve`: kubeadm's static pod
//! command line (Go's flag forms, etcd-only flags, mTLS, a metrics URL), a systemd
//! `Type=notify` unit, auto compaction in both modes, and JWT auth configured with `priv-key`
//! alone.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, free_port, grpc_status, pki::TestCa, WAIT};
use etcd_client::{Client, ConnectOptions, GetOptions, TlsOptions};

/// One `concord serve` process started with a command line given whole, as a unit or a pod
/// manifest would start it.
struct Member {
    child: Option<Child>,
    log: PathBuf,
    client_url: String,
}

impl Member {
    /// Starts `concord serve` with `args` and only `env` of the `ETCD_*` and `NOTIFY_SOCKET`
    /// variables (the test's own are not inherited).
    fn start(dir: &Path, args: &[String], env: &[(&str, &str)], client_url: &str) -> Member {
        let log = dir.join("member.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_concord"));
        command.arg("serve").args(args);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") || key == "NOTIFY_SOCKET" {
                command.env_remove(key);
            }
        }
        let child = command
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("spawn concord serve");
        Member {
            child: Some(child),
            log,
            client_url: client_url.to_string(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits (bounded) for the process to exit on its own and returns its status.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "member did not exit\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A plain-HTTP client of this member.
    async fn client(&self) -> Client {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(10));
        Client::connect([self.client_url.as_str()], Some(opts))
            .await
            .expect("connect")
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("member log at the failure:\n{}", self.log());
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Flags for a one-member plain-HTTP cluster in `dir`, in Go's single-dash form.
fn one_member(dir: &Path) -> (Vec<String>, String) {
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let args = [
        "-name=solo".to_string(),
        format!("-data-dir={}", dir.join("solo.etcd").display()),
        format!("-listen-client-urls={client}"),
        format!("-advertise-client-urls={client}"),
        format!("-listen-peer-urls={peer}"),
        format!("-initial-advertise-peer-urls={peer}"),
        format!("-initial-cluster=solo={peer}"),
    ];
    (args.to_vec(), client)
}

/// Starts a cluster of two members on `https://` client and peer URLs, named `<prefix>0` and
/// `<prefix>1`, each with its folder in `dir` (data in `data`), and `tls_args` for their
/// certificates. Returns them with their (client, peer) ports.
fn start_https_pair(dir: &Path, prefix: &str, tls_args: &[String]) -> (Vec<Member>, Vec<(u16, u16)>) {
    let ports: Vec<(u16, u16)> = (0..2).map(|_| (free_port(), free_port())).collect();
    let cluster: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("{prefix}{i}=https://127.0.0.1:{peer}"))
        .collect();
    let mut members = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let member_dir = dir.join(format!("{prefix}{i}"));
        std::fs::create_dir_all(&member_dir).unwrap();
        let client_url = format!("https://127.0.0.1:{client}");
        let mut args = vec![
            format!("--name={prefix}{i}"),
            format!("--data-dir={}", member_dir.join("data").display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls=https://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=https://127.0.0.1:{peer}"),
            format!("--initial-cluster={}", cluster.join(",")),
        ];
        args.extend_from_slice(tls_args);
        members.push(Member::start(&member_dir, &args, &[], &client_url));
    }
    (members, ports)
}

/// A client of `url` presenting `cert`, trusting `ca`.
async fn mtls_client(ca: &TestCa, cert: &common::pki::Issued, url: &str) -> Client {
    let tls = TlsOptions::new()
        .ca_certificate(ca.certificate())
        .identity(cert.identity());
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10))
        .with_tls(tls);
    Client::connect([url], Some(opts)).await.expect("connect over mTLS")
}

/// kubeadm's etcd static pod command line (flags in its order and forms), with mTLS on both
/// ports: the member serves a put and a get over mTLS, and the probes kubeadm configures on its
/// plain-HTTP metrics URL.
#[tokio::test]
async fn kubeadm_command_line_serves_over_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "etcd");
    let server = ca.issue("server", "m1");
    let client_cert = ca.issue("client", "kube-apiserver-etcd-client");
    let (client_port, peer_port, metrics_port) = (free_port(), free_port(), free_port());
    let client_url = format!("https://127.0.0.1:{client_port}");
    let peer_url = format!("https://127.0.0.1:{peer_port}");
    let path = |p: &Path| p.display().to_string();
    let args = vec![
        format!("--advertise-client-urls={client_url}"),
        format!("--cert-file={}", path(&server.cert_file)),
        "--client-cert-auth=true".to_string(),
        format!("--data-dir={}", path(&dir.path().join("etcd"))),
        "--experimental-initial-corrupt-check=true".to_string(),
        "--experimental-watch-progress-notify-interval=5s".to_string(),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=m1={peer_url}"),
        format!("--key-file={}", path(&server.key_file)),
        format!("--listen-client-urls={client_url}"),
        format!("--listen-metrics-urls=http://127.0.0.1:{metrics_port}"),
        format!("--listen-peer-urls={peer_url}"),
        "--name=m1".to_string(),
        format!("--peer-cert-file={}", path(&server.cert_file)),
        "--peer-client-cert-auth=true".to_string(),
        format!("--peer-key-file={}", path(&server.key_file)),
        format!("--peer-trusted-ca-file={}", path(&ca.ca_file())),
        "--snapshot-count=10000".to_string(),
        format!("--trusted-ca-file={}", path(&ca.ca_file())),
    ];
    let member = Member::start(dir.path(), &args, &[], &client_url);

    let metrics = format!("http://127.0.0.1:{metrics_port}");
    for probe in [
        "/health?exclude=NOSPACE&serializable=true",
        "/health",
        "/livez",
        "/readyz",
    ] {
        let url = format!("{metrics}{probe}");
        let response = eventually(probe, || async {
            match common::http::get(&url) {
                Ok(r) if r.status == 200 => Ok(r),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        if probe.starts_with("/health") {
            assert!(
                response.body.contains(r#""health":"true""#),
                "{probe}: {}",
                response.body
            );
        }
    }

    let mut client = mtls_client(&ca, &client_cert, &client_url).await;
    eventually("put over mTLS", || {
        let mut client = client.clone();
        async move { client.put("/registry/pods/default/p", "spec", None).await }
    })
    .await;
    let got = client.get("/registry/pods/default/p", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"spec");

    // A client without a certificate is turned away, as --client-cert-auth=true asks.
    let bare = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        .with_tls(TlsOptions::new().ca_certificate(ca.certificate()));
    let refused = match Client::connect([client_url.as_str()], Some(bare)).await {
        Ok(mut c) => c.get("/registry/pods/default/p", None).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate was served");
    let log = member.log();
    // The corruption check is taken as etcd takes it: no warning, and a member that founds its
    // cluster has no data to compare yet, so it skips the check, as etcd does.
    assert!(
        !log.contains("flag --experimental-initial-corrupt-check"),
        "the flag is implemented, not warned about:\n{log}"
    );
    assert!(
        !log.contains("starting initial corruption check"),
        "a new member has nothing to compare:\n{log}"
    );
}

/// A `Type=notify` unit: systemd's socket hears `READY=1` once the member serves (a put then
/// succeeds at once) and `STOPPING=1` on SIGTERM.
#[tokio::test]
async fn systemd_notify_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let (args, client_url) = one_member(dir.path());
    let notify = socket_path.display().to_string();
    // The settings of Debian's /etc/default/etcd style: environment variables, Go's booleans.
    let env = [
        ("NOTIFY_SOCKET", notify.as_str()),
        ("ETCD_SNAPSHOT_COUNT", "5000"),
        ("ETCD_PRE_VOTE", "true"),
    ];
    let mut member = Member::start(dir.path(), &args, &env, &client_url);

    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(WAIT, socket.recv(&mut buf))
        .await
        .expect("READY=1 within WAIT")
        .unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    let mut client = member.client().await;
    client
        .put("ready", "yes", None)
        .await
        .expect("a ready member serves at once");

    let _ = Command::new("kill").args(["-TERM", &member.pid().to_string()]).status();
    let n = tokio::time::timeout(WAIT, socket.recv(&mut buf))
        .await
        .expect("STOPPING=1 within WAIT")
        .unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(member.wait_exit().success());
}

/// `--wal-dir` puts the Raft log in `<wal-dir>/raft` (replayed from there after a restart), and
/// `ETCD_MAX_CONCURRENT_STREAMS` is what the client port's HTTP/2 settings announce.
#[tokio::test]
async fn wal_dir_and_connection_flags() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    let (mut args, client_url) = one_member(dir.path());
    args.push(format!("-wal-dir={}", wal_dir.display()));
    args.extend([
        "--grpc-keepalive-interval=1s".to_string(),
        "--grpc-keepalive-timeout".to_string(),
        "5s".to_string(),
    ]);
    let env = [("ETCD_MAX_CONCURRENT_STREAMS", "3")];
    let mut member = Member::start(dir.path(), &args, &env, &client_url);
    let client = member.client().await;
    eventually("first put", || {
        let mut c = client.clone();
        async move { c.put("logged", "in the wal dir", None).await }
    })
    .await;
    let raft = wal_dir.join("raft");
    assert!(
        std::fs::read_dir(&raft).map(|d| d.count() > 0).unwrap_or(false),
        "{} holds the log",
        raft.display()
    );
    assert!(
        !dir.path().join("solo.etcd/member/raft").exists(),
        "no log in the data dir"
    );

    // What the server announces in its SETTINGS frame, as an HTTP/2 client sees it.
    let tcp = tokio::net::TcpStream::connect(client_url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(format!("{client_url}/health")).body(()).unwrap();
    send = send.ready().await.unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    assert_eq!(send.current_max_send_streams(), 3);

    // The log in the wal dir is what a restarted member replays.
    drop(client);
    let _ = Command::new("kill").args(["-KILL", &member.pid().to_string()]).status();
    member.wait_exit();
    let member = Member::start(dir.path(), &args, &env, &client_url);
    let client = member.client().await;
    let got = eventually("read after restart", || {
        let mut c = client.clone();
        async move { c.get("logged", None).await }
    })
    .await;
    assert_eq!(got.kvs()[0].value(), b"in the wal dir");
}

/// `--config-file`: etcd's YAML (flag names as keys, TLS in nested maps, lists, integer
/// nanoseconds, empty values) stands for the whole command line; other flags and `ETCD_*`
/// variables are ignored, as etcd ignores them.
#[tokio::test]
async fn config_file_stands_for_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "etcd");
    let server = ca.issue("server", "m1");
    let client_cert = ca.issue("client", "root");
    let client_url = format!("https://127.0.0.1:{}", free_port());
    let peer_url = format!("http://127.0.0.1:{}", free_port());
    let path = |p: &Path| p.display().to_string();
    let config = format!(
        "# written as etcd's own etcd.conf.yml
name: 'from-file'
data-dir: {data}
listen-client-urls: {client_url}
advertise-client-urls: {client_url}
listen-peer-urls: {peer_url}
initial-advertise-peer-urls: {peer_url}
initial-cluster: from-file={peer_url}
initial-cluster-token: 'etcd-cluster'
initial-cluster-state: 'new'
heartbeat-interval: 100
election-timeout: 1000
enable-v2: false
cors:
client-transport-security:
  cert-file: {cert}
  key-file: {key}
  client-cert-auth: true
  trusted-ca-file: {ca}
  auto-tls: false
log-outputs: [stderr]
experimental-watch-progress-notify-interval: 5000000000
auto-compaction-mode: periodic
auto-compaction-retention: \"1\"
not-an-etcd-setting: true
",
        data = path(&dir.path().join("from-file.etcd")),
        cert = path(&server.cert_file),
        key = path(&server.key_file),
        ca = path(&ca.ca_file()),
    );
    let file = dir.path().join("etcd.conf.yml");
    std::fs::write(&file, config).unwrap();
    let args = [format!("--config-file={}", path(&file)), "--name=from-flag".to_string()];
    let member = Member::start(dir.path(), &args, &[("ETCD_NAME", "from-env")], &client_url);

    let client = mtls_client(&ca, &client_cert, &client_url).await;
    let members = eventually("the member serves over mTLS", || {
        let mut client = client.clone();
        async move { client.member_list().await }
    })
    .await;
    let names: Vec<&str> = members.members().iter().map(|m| m.name()).collect();
    assert_eq!(
        names,
        ["from-file"],
        "the file's name, not the flag's or the variable's"
    );
    let log = member.log();
    assert!(log.contains("loaded server configuration"), "{log}");
    assert!(log.contains("not-an-etcd-setting"), "an unknown key is named: {log}");
}

/// `--auto-tls` and `--peer-auto-tls`: two members with `https://` client and peer URLs and no
/// certificate files make their own (kept under `<data-dir>/fixtures`, private to the owner,
/// valid for the listen hosts), replicate over the encrypted peer link, and serve etcdctl with
/// `--insecure-skip-tls-verify` while refusing plaintext.
#[tokio::test]
async fn auto_tls_on_both_links() {
    let dir = tempfile::tempdir().unwrap();
    let (members, ports) = start_https_pair(
        dir.path(),
        "a",
        &["--auto-tls".to_string(), "--peer-auto-tls=true".to_string()],
    );
    let etcdctl = |member: usize, args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints=127.0.0.1:{}", ports[member].0))
            .args([
                "--insecure-transport=false",
                "--insecure-skip-tls-verify",
                "--command-timeout=5s",
            ])
            .args(args)
            .output()
            .expect("etcdctl is installed")
    };
    eventually("a put over TLS", || {
        let out = etcdctl(0, &["put", "secret", "over-tls"]);
        async move {
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).to_string())
            }
        }
    })
    .await;
    // The other member has it: the peer link carried it.
    eventually("the put reached the other member", || {
        let out = etcdctl(1, &["get", "secret", "--print-value-only", "--consistency=s"]);
        let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
        async move {
            if value == "over-tls" {
                Ok(())
            } else {
                Err(value)
            }
        }
    })
    .await;
    let plaintext = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            format!("--endpoints=127.0.0.1:{}", ports[0].0),
            "--dial-timeout=2s".into(),
            "get".into(),
            "secret".into(),
        ])
        .output()
        .unwrap();
    assert!(!plaintext.status.success(), "a plaintext client was served");
    for (i, member) in members.iter().enumerate() {
        for side in ["client", "peer"] {
            let fixtures = dir.path().join(format!("a{i}/data/fixtures/{side}"));
            let key = std::fs::metadata(fixtures.join("key.pem")).expect("a generated key");
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
                0o600
            );
            let text = Command::new("openssl")
                .args(["x509", "-noout", "-text", "-in"])
                .arg(fixtures.join("cert.pem"))
                .output()
                .expect("openssl");
            let text = String::from_utf8_lossy(&text.stdout);
            assert!(
                text.contains("IP Address:127.0.0.1") && text.contains("O = etcd"),
                "{text}"
            );
        }
        assert!(!member.log().contains("ignoring"), "{}", member.log());
    }
}

/// Revision mode: every interval the leader compacts to the current revision minus the
/// retention; a read at an older revision is then refused as etcd refuses it.
#[tokio::test]
async fn auto_compaction_by_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (mut args, client_url) = one_member(dir.path());
    args.extend(
        ["--auto-compaction-mode", "revision", "--auto-compaction-retention", "3"]
            .iter()
            .map(|a| a.to_string()),
    );
    // etcd looks every 5 minutes; the test cannot wait that long.
    args.push("--experimental-revision-compaction-interval=200ms".into());
    let member = Member::start(dir.path(), &args, &[], &client_url);
    let mut client = member.client().await;
    let first = eventually("first put", || {
        let mut c = client.clone();
        async move { c.put("k", "0", None).await }
    })
    .await;
    let old = first.header().expect("header").revision();
    for i in 1..10 {
        client.put("k", i.to_string(), None).await.unwrap();
    }
    wait_compacted(&mut client, old, false).await;
    assert!(
        member.log().contains("completed auto revision compaction"),
        "{}",
        member.log()
    );
}

/// Periodic mode with a short retention (etcd allows any duration): the leader compacts to the
/// revision it saw one retention ago. Set through `ETCD_*` variables, as a unit's environment.
#[tokio::test]
async fn auto_compaction_periodic() {
    let dir = tempfile::tempdir().unwrap();
    let (args, client_url) = one_member(dir.path());
    let env = [
        ("ETCD_AUTO_COMPACTION_MODE", "periodic"),
        ("ETCD_AUTO_COMPACTION_RETENTION", "2s"),
    ];
    let member = Member::start(dir.path(), &args, &env, &client_url);
    let mut client = member.client().await;
    let first = eventually("first put", || {
        let mut c = client.clone();
        async move { c.put("k", "0", None).await }
    })
    .await;
    let old = first.header().expect("header").revision();
    wait_compacted(&mut client, old, true).await;
    assert!(
        member.log().contains("completed auto periodic compaction"),
        "{}",
        member.log()
    );
}

/// Waits (bounded) until a read at `revision` is refused as compacted; with `keep_writing`, puts
/// a key before each look, as the periodic compactor needs newer revisions to move on to.
async fn wait_compacted(client: &mut Client, revision: i64, keep_writing: bool) {
    eventually("a read at an old revision is refused as compacted", || {
        let mut c = client.clone();
        async move {
            if keep_writing {
                c.put("tick", "x", None).await.map_err(|e| format!("{e}"))?;
            }
            match c.get("k", Some(GetOptions::new().with_revision(revision))).await {
                Ok(_) => Err("still readable".to_string()),
                Err(e) => {
                    let status = grpc_status(e);
                    if status.message() == "etcdserver: mvcc: required revision has been compacted" {
                        Ok(())
                    } else {
                        Err(status.message().to_string())
                    }
                }
            }
        }
    })
    .await;
}

/// Makes a private key with openssl; `None` (the test is skipped) where openssl is missing.
fn openssl_key(dir: &Path, name: &str, args: &[&str]) -> Option<PathBuf> {
    let path = dir.join(name);
    let (command, options) = args.split_first()?;
    // Options before positional ones (`genrsa -out FILE 2048`).
    let out = Command::new("openssl")
        .arg(command)
        .arg("-out")
        .arg(&path)
        .args(options)
        .output()
        .ok()?;
    out.status.success().then_some(path)
}

/// An RSA key as PKCS#1 (`RSA PRIVATE KEY`), as `openssl genrsa` wrote it before OpenSSL 3.
fn rsa_pkcs1_key(dir: &Path) -> Option<PathBuf> {
    openssl_key(dir, "jwt-rsa.pem", &["genrsa", "-traditional", "2048"])
        .or_else(|| openssl_key(dir, "jwt-rsa.pem", &["genrsa", "2048"]))
}

/// `--auth-token jwt,priv-key=...,sign-method=RS256,ttl=10m` without `pub-key`, as the Bitnami
/// chart passes it: tokens are issued, and a put with one succeeds.
#[tokio::test]
async fn jwt_with_only_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let Some(key) = rsa_pkcs1_key(dir.path()) else {
        eprintln!("skipped: openssl is not installed to make an RSA key");
        return;
    };
    let (mut args, client_url) = one_member(dir.path());
    args.push(format!(
        "--auth-token=jwt,priv-key={},sign-method=RS256,ttl=10m",
        key.display()
    ));
    let member = Member::start(dir.path(), &args, &[], &client_url);
    let mut client = member.client().await;
    eventually("user add", || {
        let mut c = client.clone();
        async move { c.user_add("root", "secret", None).await }
    })
    .await;
    client.role_add("root").await.unwrap();
    client.user_grant_role("root", "root").await.unwrap();
    client.auth_enable().await.unwrap();

    let token = client
        .auth_client()
        .authenticate("root".into(), "secret".into())
        .await
        .expect("authenticate")
        .token()
        .to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let opts = ConnectOptions::new()
        .with_user("root", "secret")
        .with_timeout(Duration::from_secs(10));
    let mut authed = Client::connect([client_url.as_str()], Some(opts))
        .await
        .expect("connect as root");
    authed.put("jwt", "works", None).await.expect("a put with the token");
    assert_eq!(authed.get("jwt", None).await.unwrap().kvs()[0].value(), b"works");
    let anonymous = client.put("jwt", "anonymous", None).await.unwrap_err();
    assert_eq!(grpc_status(anonymous).message(), "etcdserver: user name is empty");
}

/// The key forms operators make with openssl, each alone in `priv-key`: RSA PKCS#1 and PKCS#8,
/// ECDSA P-256 as SEC1 after its EC PARAMETERS block (`openssl ecparam -genkey`) and as PKCS#8,
/// P-384, Ed25519.
#[test]
fn openssl_private_keys_alone_verify_their_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(rsa1) = rsa_pkcs1_key(d) else {
        eprintln!("skipped: openssl is not installed");
        return;
    };
    let keys = [
        ("RS256", Some(rsa1)),
        (
            "PS256",
            openssl_key(
                d,
                "rsa8.pem",
                &["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            ),
        ),
        (
            "ES256",
            openssl_key(d, "p256-sec1.pem", &["ecparam", "-name", "prime256v1", "-genkey"]),
        ),
        (
            "ES256",
            openssl_key(
                d,
                "p256-pkcs8.pem",
                &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            ),
        ),
        (
            "ES384",
            openssl_key(
                d,
                "p384-sec1.pem",
                &["ecparam", "-name", "secp384r1", "-genkey", "-noout"],
            ),
        ),
        (
            "EdDSA",
            openssl_key(d, "ed25519.pem", &["genpkey", "-algorithm", "ED25519"]),
        ),
    ];
    for (method, key) in keys {
        let key = key.unwrap_or_else(|| panic!("openssl made no {method} key"));
        let options = HashMap::from([
            ("sign-method".to_string(), method.to_string()),
            ("priv-key".to_string(), key.display().to_string()),
        ]);
        let jwt = concord_server::auth::jwt::JwtKeys::from_options(&options)
            .unwrap_or_else(|e| panic!("{method} {}: {e}", key.display()));
        let token = jwt.sign("root", 1).unwrap();
        assert_eq!(
            jwt.verify(&token),
            Some(("root".to_string(), 1)),
            "{method} {}",
            key.display()
        );
    }
}

/// What etcd refuses or reports, Concord refuses or reports the same way: a bool given a
/// separate value, an `ETCD_*` variable shadowed by a flag, a flag whose absence would weaken
/// TLS. None of them starts a member.
#[test]
fn refused_command_lines_exit_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (args, _) = one_member(dir.path());
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_concord"));
        command.arg("serve").args(&args).args(extra).stdin(Stdio::null());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run concord serve");
        // A member that starts would run for good: bounded, and killed if it does.
        let deadline = Instant::now() + WAIT;
        while child.try_wait().expect("wait").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{extra:?} {env:?} started");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("its output");
        assert!(!out.status.success(), "{extra:?} {env:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run(&["--client-cert-auth", "true"], &[]).contains("unexpected argument 'true'"));
    assert!(run(&[], &[("ETCD_NAME", "other")])
        .contains("conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag"));
    assert!(run(&["--proxy=on"], &[]).contains("refusing to start"));
    assert!(run(&[], &[("ETCD_CIPHER_SUITES", "TLS_RSA_WITH_AES_128_CBC_SHA")])
        .contains("unsupported cipher suite \"TLS_RSA_WITH_AES_128_CBC_SHA\""));
    assert!(run(&["--tls-min-version=TLS1.1"], &[]).contains("unexpected TLS version"));
    assert!(run(&["--auto-compaction-retention=1.5"], &[]).contains("error parsing CompactionRetention"));
    assert!(!dir.path().join("solo.etcd").exists(), "nothing was written");
}

/// etcd 3.5's `--listen-client-http-urls`: the JSON gateway and `/metrics` answer there, gRPC
/// keeps working on the client URL, and the client URL no longer serves the HTTP routes.
#[tokio::test]
async fn client_http_urls_take_the_http_routes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut args, client_url) = one_member(dir.path());
    let http_url = format!("http://127.0.0.1:{}", free_port());
    args.push(format!("--listen-client-http-urls={http_url}"));
    let member = Member::start(dir.path(), &args, &[], &client_url);
    let client = member.client().await;
    eventually("a gRPC put on the client URL", || {
        let mut c = client.clone();
        async move { c.put("greeting", "hello", None).await }
    })
    .await;

    // {"key": base64("greeting")}; the answer carries base64("hello").
    let range = common::http::post_json(&format!("{http_url}/v3/kv/range"), r#"{"key":"Z3JlZXRpbmc="}"#)
        .expect("the gateway answers on the HTTP URL");
    assert_eq!(range.status, 200, "{range:?}");
    assert!(range.body.contains("aGVsbG8="), "{}", range.body);
    let metrics = common::http::get(&format!("{http_url}/metrics")).expect("metrics on the HTTP URL");
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("etcd_server_has_leader"), "{}", metrics.body);

    let on_client = common::http::get(&format!("{client_url}/metrics")).expect("the client URL answers HTTP/1.1");
    assert_eq!(on_client.status, 404, "{on_client:?}");
    assert!(!on_client.body.contains("etcd_server_has_leader"));
    assert!(
        !member.log().contains("flag --listen-client-http-urls"),
        "the flag is implemented, not warned about:\n{}",
        member.log()
    );
}

/// `--client-cert-file` and `--peer-client-cert-file`: members whose `--cert-file` and
/// `--peer-cert-file` may only serve (server authentication alone) present a client certificate
/// when they connect out, so a cluster with certificate authentication on both links forms,
/// replicates, and forwards lease calls to its leader's client URL.
#[tokio::test]
async fn client_certificates_for_outgoing_links() {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "etcd");
    let server_only = ca.issue_for("server-only", "member", &[ServerAuth]);
    let client_only = ca.issue_for("client-only", "member-client", &[ClientAuth]);
    let user = ca.issue_for("user", "root", &[ClientAuth]);
    let path = |p: &Path| p.display().to_string();
    let tls = [
        format!("--cert-file={}", path(&server_only.cert_file)),
        format!("--key-file={}", path(&server_only.key_file)),
        format!("--client-cert-file={}", path(&client_only.cert_file)),
        format!("--client-key-file={}", path(&client_only.key_file)),
        format!("--trusted-ca-file={}", path(&ca.ca_file())),
        "--client-cert-auth".to_string(),
        format!("--peer-cert-file={}", path(&server_only.cert_file)),
        format!("--peer-key-file={}", path(&server_only.key_file)),
        format!("--peer-client-cert-file={}", path(&client_only.cert_file)),
        format!("--peer-client-key-file={}", path(&client_only.key_file)),
        format!("--peer-trusted-ca-file={}", path(&ca.ca_file())),
        "--peer-client-cert-auth".to_string(),
    ];
    let (members, _) = start_https_pair(dir.path(), "c", &tls);
    let mut clients = Vec::new();
    for member in &members {
        clients.push(mtls_client(&ca, &user, &member.client_url).await);
    }
    eventually("a put over mTLS", || {
        let mut c = clients[0].clone();
        async move { c.put("k", "v", None).await }
    })
    .await;
    // The peer link (each member presenting its client-only certificate) carried it.
    eventually("the put reached the other member", || {
        let mut c = clients[1].clone();
        async move {
            let got = c.get("k", Some(GetOptions::new().with_serializable())).await?;
            match got.kvs().first() {
                Some(kv) if kv.value() == b"v" => Ok(()),
                _ => Err(etcd_client::Error::InvalidArgs("not replicated yet".into())),
            }
        }
    })
    .await;
    // One of the two is a follower, which forwards TimeToLive to the leader's client URL, where
    // --client-cert-auth wants the follower's client certificate.
    let lease = clients[0].lease_grant(60, None).await.expect("lease grant").id();
    for (i, client) in clients.iter_mut().enumerate() {
        let ttl = client
            .lease_time_to_live(lease, None)
            .await
            .unwrap_or_else(|e| panic!("TimeToLive on member {i}: {e}"));
        assert!(ttl.ttl() > 0, "member {i}: {ttl:?}");
    }
}

/// `--socket-reuse-port`: while the member listens, another socket that sets SO_REUSEPORT binds
/// its client port; without the flag that bind is refused.
#[tokio::test]
async fn socket_reuse_port_shares_the_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let mut started = Vec::new();
    for reuse in [true, false] {
        let member_dir = dir.path().join(format!("reuse-{reuse}"));
        std::fs::create_dir_all(&member_dir).unwrap();
        let (mut args, client_url) = one_member(&member_dir);
        args.push(format!("--socket-reuse-port={reuse}"));
        started.push((reuse, Member::start(&member_dir, &args, &[], &client_url)));
    }
    for (reuse, member) in &started {
        let client = member.client().await;
        eventually("the member serves", || {
            let mut c = client.clone();
            async move { c.put("up", "yes", None).await }
        })
        .await;
        let addr: std::net::SocketAddr = member.client_url.trim_start_matches("http://").parse().unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseport(true).unwrap();
        let bound = socket.bind(addr);
        assert_eq!(
            bound.is_ok(),
            *reuse,
            "--socket-reuse-port={reuse}: a second SO_REUSEPORT bind of {addr}: {bound:?}"
        );
    }
}
