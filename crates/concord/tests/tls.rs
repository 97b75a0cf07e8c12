//! TLS on every link: a 3-member cluster whose client and peer ports both require certificates
//! signed by the cluster's CA, reached with etcd-client and etcdctl; clients that do not belong
//! are refused; certificates rotate without a restart.

mod common;

use std::time::Duration;

use common::pki::{write_atomically, TestCa};
use common::{eventually, Cluster};
use etcd_client::{Client, ConnectOptions, TlsOptions};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Connects to `url` with `opts` and makes one request, returning its error text if anything
/// failed (connecting or the request).
async fn try_get(url: &str, opts: ConnectOptions) -> Result<(), String> {
    let mut client = Client::connect([url], Some(opts)).await.map_err(|e| e.to_string())?;
    client.get("probe", None).await.map(|_| ()).map_err(|e| e.to_string())
}

fn quick() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_tls_on_every_link_serves_clients_and_etcdctl() {
    let dir = tempdir();
    let ca = TestCa::new(dir.path(), "cluster");
    let member = ca.issue("member", "member");
    let client_cert = ca.issue("client", "client");
    let mut cluster = Cluster::start_secure(3, ca.secure(&member, &client_cert)).await;
    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;

    // Writes through a follower reach the leader over peer TLS and come back to every member.
    let mut c = cluster.client(follower).await;
    c.put("tls/key", "over tls", None).await.unwrap();
    for i in 0..3 {
        let mut ci = cluster.client(i).await;
        let got = ci.get("tls/key", None).await.unwrap();
        assert_eq!(got.kvs()[0].value_str().unwrap(), "over tls", "member {i}");
    }

    // A keep-alive through a follower is forwarded to the leader's https client URL.
    let lease = c.lease_grant(30, None).await.unwrap();
    let (mut keeper, mut stream) = c.lease_keep_alive(lease.id()).await.unwrap();
    keeper.keep_alive().await.unwrap();
    let answer = stream.message().await.unwrap().expect("a keep-alive answer");
    assert_eq!(answer.id(), lease.id());
    assert!(answer.ttl() > 0, "the forwarded keep-alive found the lease: {answer:?}");

    // etcdctl with --cacert/--cert/--key.
    let tls_args = [
        format!("--cacert={}", ca.ca_file().display()),
        format!("--cert={}", client_cert.cert_file.display()),
        format!("--key={}", client_cert.key_file.display()),
    ];
    let with_tls = |extra: &[&str]| -> Vec<String> {
        tls_args
            .iter()
            .cloned()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect()
    };
    let put = cluster.etcdctl(&cluster.endpoints(), &refs(&with_tls(&["put", "tls/etcdctl", "hello"])));
    assert!(
        put.status.success(),
        "etcdctl put: {}",
        String::from_utf8_lossy(&put.stderr)
    );
    let get = cluster.etcdctl(
        &cluster.endpoints()[follower..=follower],
        &refs(&with_tls(&["get", "tls/etcdctl", "--print-value-only"])),
    );
    assert!(
        get.status.success(),
        "etcdctl get: {}",
        String::from_utf8_lossy(&get.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "hello");

    // The concord CLI takes etcdctl's TLS flags; host:port endpoints become https.
    let endpoint = cluster.members[follower]
        .client_url
        .trim_start_matches("https://")
        .to_string();
    let concord_kv = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
            .args(["kv", "--endpoints", &endpoint])
            .args(refs(&tls_args))
            .args(args)
            .output()
            .expect("run concord kv")
    };
    let put = concord_kv(&["put", "tls/cli", "from the cli"]);
    assert!(
        put.status.success(),
        "concord kv put: {}",
        String::from_utf8_lossy(&put.stderr)
    );
    let got = concord_kv(&["get", "tls/cli"]);
    assert!(
        String::from_utf8_lossy(&got.stdout).contains("from the cli"),
        "concord kv get: {got:?}"
    );

    // A killed member comes back and catches up over peer TLS.
    cluster.kill(follower);
    c = cluster.client(leader).await;
    c.put("tls/while-down", "1", None).await.unwrap();
    cluster.restart(follower);
    let mut back = cluster.client(follower).await;
    wait_until_local(&back, "tls/while-down", "the restarted member catches up over peer TLS").await;
    back.put("tls/after", "1", None).await.unwrap();
}

/// Waits until the member behind `client` holds `key` in its own state (a serializable read).
async fn wait_until_local(client: &Client, key: &str, what: &str) {
    eventually(what, || {
        let mut client = client.clone();
        async move {
            let got = client
                .get(key, Some(etcd_client::GetOptions::new().with_serializable()))
                .await
                .map_err(|e| e.to_string())?;
            if got.kvs().is_empty() {
                Err("not yet".to_string())
            } else {
                Ok(())
            }
        }
    })
    .await;
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_belong_are_refused() {
    let dir = tempdir();
    let ca = TestCa::new(dir.path(), "cluster");
    let member = ca.issue("member", "member");
    let client_cert = ca.issue("client", "client");
    let cluster = Cluster::start_secure(1, ca.secure(&member, &client_cert)).await;
    let url = cluster.members[0].client_url.clone();
    let plain_url = url.replace("https://", "http://");

    // The right client gets in.
    let right = TlsOptions::new()
        .ca_certificate(ca.certificate())
        .identity(client_cert.identity());
    try_get(&url, quick().with_tls(right))
        .await
        .expect("a client with the cluster's certificates is served");

    // Plaintext against the TLS port.
    let plaintext = try_get(&plain_url, quick()).await;
    assert!(plaintext.is_err(), "a plaintext client was served by a TLS port");

    // A client that trusts another CA refuses the member's certificate.
    let other = TestCa::new(dir.path(), "other");
    let stranger = other.issue("stranger", "stranger");
    let wrong_trust = TlsOptions::new()
        .ca_certificate(other.certificate())
        .identity(client_cert.identity());
    assert!(
        try_get(&url, quick().with_tls(wrong_trust)).await.is_err(),
        "a client accepted an untrusted server"
    );

    // A client whose certificate another CA signed is refused by the member...
    let untrusted_client = TlsOptions::new()
        .ca_certificate(ca.certificate())
        .identity(stranger.identity());
    assert!(
        try_get(&url, quick().with_tls(untrusted_client)).await.is_err(),
        "an untrusted client certificate was accepted"
    );
    // ...and so is a client with no certificate at all, under --client-cert-auth.
    let anonymous = TlsOptions::new().ca_certificate(ca.certificate());
    assert!(
        try_get(&url, quick().with_tls(anonymous)).await.is_err(),
        "a client without a certificate was accepted"
    );

    assert!(
        cluster.log_contains(0, "rejected a TLS connection"),
        "the member says why it refused connections:\n{}",
        cluster.logs()
    );
    // The member is still serving after all that.
    let mut c = cluster.client(0).await;
    c.put("still", "serving", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_certificates_for_an_https_url_says_so() {
    let dir = tempdir();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
        .args(["serve", "--name", "lonely"])
        .arg(format!("--data-dir={}", dir.path().join("d").display()))
        .args([
            "--listen-client-urls",
            "https://127.0.0.1:0",
            "--advertise-client-urls",
            "https://127.0.0.1:0",
        ])
        .output()
        .expect("run concord serve");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--cert-file"),
        "the error names the missing flag: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_a_restart() {
    let dir = tempdir();
    let old_ca = TestCa::new(dir.path(), "old");
    let member = old_ca.issue("member", "member");
    let client_cert = old_ca.issue("client", "client");
    let mut cluster = Cluster::start_secure(1, old_ca.secure(&member, &client_cert)).await;
    let url = cluster.members[0].client_url.clone();
    let pid = cluster.pid(0).unwrap();

    // The operator moves the member to a new CA: a new certificate and key in the same files, a
    // new CA in the trusted CA file, then SIGHUP.
    let new_ca = TestCa::new(dir.path(), "new");
    let renewed = new_ca.issue("renewed", "member");
    let new_client = new_ca.issue("new-client", "client");
    write_atomically(&member.cert_file, &std::fs::read_to_string(&renewed.cert_file).unwrap());
    write_atomically(&member.key_file, &std::fs::read_to_string(&renewed.key_file).unwrap());
    write_atomically(&old_ca.ca_file(), &std::fs::read_to_string(new_ca.ca_file()).unwrap());
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());

    let new_options = TlsOptions::new()
        .ca_certificate(new_ca.certificate())
        .identity(new_client.identity());
    eventually("the member presents and trusts the new CA", || {
        let opts = quick().with_tls(new_options.clone());
        let url = url.clone();
        async move { try_get(&url, opts).await }
    })
    .await;
    let old_options = TlsOptions::new()
        .ca_certificate(old_ca.certificate())
        .identity(client_cert.identity());
    assert!(
        try_get(&url, quick().with_tls(old_options)).await.is_err(),
        "the old certificates are still accepted"
    );
    assert_eq!(cluster.pid(0), Some(pid), "the member was not restarted");
    assert!(
        cluster.log_contains(0, "reloaded TLS certificates"),
        "{}",
        cluster.logs()
    );
    cluster.kill(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_a_tls_cluster_over_peer_tls() {
    let dir = tempdir();
    let ca = TestCa::new(dir.path(), "cluster");
    let member = ca.issue("member", "member");
    let client_cert = ca.issue("client", "client");
    let mut cluster = Cluster::start_secure(1, ca.secure(&member, &client_cert)).await;
    let mut c = cluster.client(0).await;
    c.put("before-join", "1", None).await.unwrap();

    let peer_url = cluster.new_peer_url();
    assert!(peer_url.starts_with("https://"));
    c.member_add([peer_url.as_str()], None).await.unwrap();
    // The newcomer asks the cluster for its membership, then receives the log, over peer TLS.
    let joined = cluster.spawn_joining(&peer_url);
    let newcomer = cluster.client(joined).await;
    wait_until_local(&newcomer, "before-join", "the new member has the data").await;
    c.put("after-join", "2", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_a_client_certificate_names_the_user() {
    let dir = tempdir();
    let ca = TestCa::new(dir.path(), "cluster");
    let member = ca.issue("member", "member");
    let root_cert = ca.issue("root-client", "root");
    let alice_cert = ca.issue("alice-client", "alice");
    let cluster = Cluster::start_secure(1, ca.secure(&member, &root_cert)).await;

    let mut root = cluster.client(0).await;
    root.role_add("root").await.unwrap();
    root.user_add("root", "root-password", None).await.unwrap();
    root.user_grant_role("root", "root").await.unwrap();
    root.role_add("alice-role").await.unwrap();
    root.role_grant_permission(
        "alice-role",
        etcd_client::Permission::read_write("alice/").with_prefix(),
    )
    .await
    .unwrap();
    root.user_add("alice", "alice-password", None).await.unwrap();
    root.user_grant_role("alice", "alice-role").await.unwrap();
    root.auth_enable().await.unwrap();

    // No token anywhere from here on: the certificates say who is asking.
    root.put("anywhere", "root may", None)
        .await
        .expect("the root certificate acts as root");
    let url = cluster.members[0].client_url.clone();
    let alice_tls = TlsOptions::new()
        .ca_certificate(ca.certificate())
        .identity(alice_cert.identity());
    let mut alice = Client::connect([url.as_str()], Some(quick().with_tls(alice_tls)))
        .await
        .unwrap();
    alice
        .put("alice/x", "mine", None)
        .await
        .expect("alice writes under her prefix");
    let denied = alice.put("bob/x", "not mine", None).await.unwrap_err();
    let status = common::grpc_status(denied);
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(status.message(), "etcdserver: permission denied");

    // etcdctl over TLS with --user: the password's token names the user, not the certificate.
    let etcdctl = |user: &str, args: &[&str]| {
        let mut all = vec![
            format!("--cacert={}", ca.ca_file().display()),
            format!("--cert={}", root_cert.cert_file.display()),
            format!("--key={}", root_cert.key_file.display()),
            format!("--user={user}"),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        cluster.etcdctl(&cluster.endpoints(), &refs(&all))
    };
    let got = etcdctl("alice:alice-password", &["get", "alice/x", "--print-value-only"]);
    assert!(
        got.status.success(),
        "etcdctl --user alice: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "mine");
    let refused = etcdctl("alice:alice-password", &["put", "bob/y", "no"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("permission denied"),
        "{refused:?}"
    );
}

/// One TLS handshake with `openssl s_client` (presenting `client`, trusting the CA): the
/// negotiated protocol and cipher suite, or `None` if the handshake failed.
fn handshake(host: &str, ca: &TestCa, client: &common::pki::Issued, options: &[&str]) -> Option<String> {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", host, "-brief", "-verify_return_error"])
        .arg("-CAfile")
        .arg(ca.ca_file())
        .arg("-cert")
        .arg(&client.cert_file)
        .arg("-key")
        .arg(&client.key_file)
        .args(options)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed");
    let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    match (field("Protocol version:"), field("Ciphersuite:")) {
        (Some(protocol), Some(suite)) if out.status.success() => Some(format!("{protocol} {suite}")),
        _ => None,
    }
}

/// etcd's TLS policy flags: `--client-crl-file` refuses the client certificates its list names
/// (others pass), `--cipher-suites` limits TLS 1.2 to the suites named, and
/// `--tls-min-version=TLS1.3` refuses TLS 1.2 handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_lists_cipher_suites_and_versions() {
    let dir = tempdir();
    let ca = TestCa::new(dir.path(), "cluster");
    let member = ca.issue("member", "member");
    let good = ca.issue("good", "good");
    let revoked = ca.issue("revoked", "revoked");
    let crl = dir.path().join("clients.crl.pem");
    ca.revoke(&[&revoked], &crl);
    let mut secure = ca.secure(&member, &good);
    secure.member_args.extend([
        format!("--client-crl-file={}", crl.display()),
        "--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384".to_string(),
    ]);
    let cluster = Cluster::start_secure(1, secure).await;
    let url = cluster.members[0].client_url.clone();
    let with = |cert: &common::pki::Issued| {
        quick().with_tls(
            TlsOptions::new()
                .ca_certificate(ca.certificate())
                .identity(cert.identity()),
        )
    };
    try_get(&url, with(&good))
        .await
        .expect("a certificate the list does not name is served");
    assert!(
        try_get(&url, with(&revoked)).await.is_err(),
        "a revoked certificate was served"
    );

    let host = url.trim_start_matches("https://");
    let tls12 = |cipher: &str| handshake(host, &ca, &good, &["-tls1_2", "-cipher", cipher]);
    assert_eq!(
        tls12("ECDHE-ECDSA-AES256-GCM-SHA384").as_deref(),
        Some("TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384")
    );
    assert_eq!(
        tls12("ECDHE-ECDSA-AES128-GCM-SHA256"),
        None,
        "a suite not named was agreed"
    );
    let tls13 = handshake(host, &ca, &good, &["-tls1_3"]);
    assert!(
        tls13.as_deref().is_some_and(|t| t.starts_with("TLSv1.3")),
        "TLS 1.3 stays: {tls13:?}"
    );
    drop(cluster);

    let mut secure = ca.secure(&member, &good);
    secure.member_args.push("--tls-min-version=TLS1.3".to_string());
    let cluster = Cluster::start_secure(1, secure).await;
    let url = cluster.members[0].client_url.clone();
    let host = url.trim_start_matches("https://");
    assert_eq!(handshake(host, &ca, &good, &["-tls1_2"]), None, "TLS 1.2 was agreed");
    assert!(handshake(host, &ca, &good, &["-tls1_3"]).is_some_and(|t| t.starts_with("TLSv1.3")));
    try_get(&url, with(&good)).await.expect("clients speak TLS 1.3");
}

/// etcd requires a client certificate whenever `--trusted-ca-file` is set, with or without
/// `--client-cert-auth`; only `--client-cert-auth` makes the certificate's common name the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_ca_alone_requires_certificates_but_names_no_user() {
    let dir = tempdir();
    let ca = TestCa::new(dir.path(), "cluster");
    let member = ca.issue("member", "member");
    let root_cert = ca.issue("root-client", "root");
    let mut secure = ca.secure(&member, &root_cert);
    secure
        .member_args
        .retain(|a| a != "--client-cert-auth" && a != "--peer-client-cert-auth");
    let cluster = Cluster::start_secure(1, secure).await;
    let url = cluster.members[0].client_url.clone();

    let anonymous = TlsOptions::new().ca_certificate(ca.certificate());
    assert!(
        try_get(&url, quick().with_tls(anonymous)).await.is_err(),
        "a client without a certificate was accepted beside a trusted CA file"
    );

    let mut root = cluster.client(0).await;
    root.user_add("root", "root-password", None).await.unwrap();
    root.user_grant_role("root", "root").await.unwrap();
    root.auth_enable().await.unwrap();
    // The certificate says "root", but without --client-cert-auth it names nobody.
    let refused = root.put("k", "v", None).await.expect_err("a put without a user");
    assert_eq!(common::grpc_status(refused).message(), "etcdserver: user name is empty");
    let with_password = TlsOptions::new()
        .ca_certificate(ca.certificate())
        .identity(root_cert.identity());
    let mut by_password = Client::connect(
        [url.as_str()],
        Some(quick().with_tls(with_password).with_user("root", "root-password")),
    )
    .await
    .unwrap();
    by_password.put("k", "v", None).await.expect("the password names root");
}
