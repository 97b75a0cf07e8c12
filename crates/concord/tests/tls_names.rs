//! etcd's checks of the names in the other side's certificate: `--client-cert-allowed-hostname`
//! (a client certificate must be valid for the hostname), `--peer-cert-allowed-cn` (a peer's
//! certificate must have that common name) and `--peer-cert-allowed-hostname`, on real members.
//! Handshakes are also made with curl (OpenSSL), which names the alert a refused certificate
//! gets: Go's `bad certificate`, compared with a real etcd where one is installed.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::etcd::Etcd;
use common::pki::{Issued, TestCa};
use common::{eventually, Cluster};
use etcd_client::{Client, ConnectOptions, TlsOptions};

/// The alert Go's TLS stack (etcd's) and Concord's send for a certificate they refuse, as
/// OpenSSL reports it.
const BAD_CERTIFICATE: &str = "alert bad certificate";

/// An HTTPS GET of `url` with curl over TLS 1.2, presenting `client` and trusting `ca`: the HTTP
/// status, or what curl reports when the connection fails. In TLS 1.2 the server checks the
/// client's certificate within the handshake, so curl reads the alert of a refusal (in TLS 1.3
/// it may be writing the request when the server hangs up); etcd 3.4's listeners speak no more
/// than TLS 1.2.
fn curl(url: &str, ca: &TestCa, client: &Issued) -> Result<String, String> {
    curl_with(url, ca, client, &["--tls-max", "1.2"])
}

/// [`curl`] with other curl options (`--tlsv1.3`).
fn curl_with(url: &str, ca: &TestCa, client: &Issued, options: &[&str]) -> Result<String, String> {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(options)
        .arg("--cacert")
        .arg(ca.ca_file())
        .arg("--cert")
        .arg(&client.cert_file)
        .arg("--key")
        .arg(&client.key_file)
        .arg(url)
        .output()
        .expect("curl is installed");
    if output.status.success() {
        Ok(common::text(&output.stdout))
    } else {
        Err(common::text(&output.stderr))
    }
}

/// A put and a get through etcd-client on `url`, presenting `client`.
async fn put_and_get(url: &str, ca: &TestCa, client: &Issued) -> Result<(), etcd_client::Error> {
    let tls = TlsOptions::new()
        .ca_certificate(ca.certificate())
        .identity(client.identity());
    let options = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5));
    let mut c = Client::connect([url], Some(options)).await?;
    c.put("names", "checked", None).await?;
    c.get("names", None).await.map(|_| ())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_must_be_valid_for_an_allowed_hostname() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "names");
    let member = ca.issue("member", "member");
    let by_name = ca.issue_named("by-name", "someone", &["client.example.com"]);
    let by_ip = ca.issue_named("by-ip", "someone", &["10.9.8.7"]);
    // Valid for neither: Go's VerifyHostname ignores the common name.
    let by_common_name = ca.issue_named("by-cn", "client.example.com", &["other.example.com"]);
    let mut secure = ca.secure(&member, &by_name);
    secure
        .member_args
        .push("--client-cert-allowed-hostname=client.example.com,10.9.8.7".into());
    // The harness's own calls present `by_name`: the member serving them is the first proof.
    let cluster = Cluster::start_secure(1, secure).await;
    let url = cluster.members[0].client_url.clone();

    let health = format!("{url}/health");
    assert_eq!(curl(&health, &ca, &by_name).as_deref(), Ok("200"));
    assert_eq!(curl(&health, &ca, &by_ip).as_deref(), Ok("200"), "any name of the list");
    let refused = curl(&health, &ca, &by_common_name).unwrap_err();
    assert!(refused.contains(BAD_CERTIFICATE), "{refused}");
    assert!(
        curl_with(&health, &ca, &by_common_name, &["--tlsv1.3"]).is_err(),
        "refused in TLS 1.3 too"
    );
    assert_eq!(curl_with(&health, &ca, &by_ip, &["--tlsv1.3"]).as_deref(), Ok("200"));

    put_and_get(&url, &ca, &by_ip)
        .await
        .expect("an allowed client over gRPC");
    assert!(
        put_and_get(&url, &ca, &by_common_name).await.is_err(),
        "a client certificate for another hostname is refused over gRPC too"
    );
    assert!(cluster.log_contains(0, "client certificate authentication failed"));

    // etcd 3.4 takes one hostname; the same certificates get the same answers.
    let etcd_args: Vec<String> = [
        format!("--cert-file={}", path(&member.cert_file)),
        format!("--key-file={}", path(&member.key_file)),
        format!("--trusted-ca-file={}", path(&ca.ca_file())),
        "--client-cert-auth".to_string(),
        "--client-cert-allowed-hostname=client.example.com".to_string(),
    ]
    .into();
    let Some(etcd) = Etcd::start("https", &etcd_args) else {
        return;
    };
    let health = format!("{}/health", etcd.client_url);
    eventually("etcd serves an allowed client", || async {
        match curl(&health, &ca, &by_name) {
            Ok(status) if status == "200" => Ok(()),
            other => Err(format!("{other:?}\n{}", etcd.log())),
        }
    })
    .await;
    let refused = curl(&health, &ca, &by_common_name).unwrap_err();
    assert!(refused.contains(BAD_CERTIFICATE), "etcd: {refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn peers_must_present_an_allowed_common_name_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "peers");
    let member = ca.issue("member", "etcd peer");
    let client = ca.issue("client", "client");
    let intruder = ca.issue("intruder", "intruder");
    let mut secure = ca.secure(&member, &client);
    let base_args = secure.member_args.clone();
    secure.member_args.push("--peer-cert-allowed-cn=etcd peer".into());
    // Two members with the allowed name agree on a leader: the check lets them talk.
    let mut cluster = Cluster::start_secure(2, secure).await;

    // A connection to a peer port presenting another name (same CA, right hostname) is refused.
    let peer = cluster.members[0].peer_url.clone();
    assert_eq!(
        curl(&peer, &ca, &member).map(|_| ()),
        Ok(()),
        "an allowed peer connects"
    );
    let refused = curl(&peer, &ca, &intruder).unwrap_err();
    assert!(refused.contains(BAD_CERTIFICATE), "{refused}");
    assert!(cluster.log_contains(0, "client certificate authentication failed"));

    // The other way: a member allowing only another name refuses the servers it dials, so it
    // cannot even ask the cluster to join it.
    let mut joiner_args = base_args;
    joiner_args.push("--peer-cert-allowed-cn=someone else".into());
    let joiner_args: Vec<&str> = joiner_args.iter().map(String::as_str).collect();
    cluster.set_extra_args(&joiner_args);
    let peer_url = cluster.new_peer_url();
    let joiner = cluster.spawn_joining(&peer_url);
    assert!(cluster.wait_exit(joiner), "the joiner stops on its own");
    assert!(
        cluster.log_contains(joiner, "client certificate authentication failed"),
        "{}",
        cluster.logs()
    );
    assert!(cluster.log_contains(joiner, "cannot reach the cluster to join"));
}

#[tokio::test(flavor = "multi_thread")]
async fn peers_must_present_a_certificate_valid_for_an_allowed_hostname() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "peer-hosts");
    let member = ca.issue("member", "member");
    let client = ca.issue("client", "client");
    let named = ca.issue_named("named", "member", &["peer.example.com"]);
    let mut secure = ca.secure(&member, &client);
    secure
        .member_args
        .push("--peer-cert-allowed-hostname=peer.example.com".into());
    let cluster = Cluster::start_secure(1, secure).await;
    let peer = cluster.members[0].peer_url.clone();
    assert_eq!(curl(&peer, &ca, &named).map(|_| ()), Ok(()));
    let refused = curl(&peer, &ca, &member).unwrap_err();
    assert!(refused.contains(BAD_CERTIFICATE), "{refused}");
    assert!(
        curl_with(&peer, &ca, &member, &["--tlsv1.3"]).is_err(),
        "refused in TLS 1.3 too"
    );
    // The client side has no such check: the member's own certificate is fine there.
    let health = format!("{}/health", cluster.members[0].client_url);
    assert_eq!(curl(&health, &ca, &member).as_deref(), Ok("200"));
}

#[test]
fn common_names_and_hostnames_together_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "both");
    let member = ca.issue("member", "member");
    let peer_tls = [
        format!("--peer-cert-file={}", path(&member.cert_file)),
        format!("--peer-key-file={}", path(&member.key_file)),
        format!("--peer-trusted-ca-file={}", path(&ca.ca_file())),
        "--peer-cert-allowed-cn=a".to_string(),
    ];
    let args: Vec<&str> = peer_tls.iter().map(String::as_str).collect();
    // The etcd variable of the other flag is read as etcd reads it.
    let output = common::serve_refused(&args, &[("ETCD_PEER_CERT_ALLOWED_HOSTNAME", "b")]);
    let stderr = common::text(&output.stderr);
    // etcd 3.5's words (client/pkg/transport/listener.go).
    assert!(
        stderr.contains(r#"AllowedCNs and AllowedHostnames are mutually exclusive (cns=["a"], hostnames=["b"])"#),
        "{stderr}"
    );
}
