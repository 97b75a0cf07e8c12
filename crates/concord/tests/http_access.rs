//! etcd's access control of HTTP requests on client URLs (`--host-whitelist`, `--cors`) and the
//! headers of its JSON gateway, on real members: each request goes to a Concord member and, where
//! an `etcd` binary is installed, to an etcd 3.4 started with the same flags, and the answers'
//! statuses, headers and bodies are compared. The values etcd answered with are also written
//! out here, so that the tests check them where no etcd is installed.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::etcd::Etcd;
use common::pki::TestCa;
use common::{eventually, Cluster};

/// etcd's CORS headers when every origin is allowed (its default).
const CORS_METHODS: &str = "POST, GET, OPTIONS, PUT, DELETE";
const CORS_HEADERS: &str = "accept, content-type, authorization";

/// One HTTP/1.1 exchange, as sent and as answered.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    /// Header names in lower case, in the order sent.
    headers: Vec<(String, String)>,
    body: String,
    /// Trailer fields of a chunked body, names in lower case.
    trailers: Vec<(String, String)>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The headers to compare with another server's: all but `date`, and `content-length`
    /// without its value (bodies carry ids that differ).
    fn comparable_headers(&self) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(n, _)| n != "date")
            .map(|(n, v)| match n.as_str() {
                "content-length" => (n.clone(), "…".to_string()),
                _ => (n.clone(), v.clone()),
            })
            .collect();
        headers.sort();
        headers
    }
}

/// Sends `method path` to `address` (`host:port`) with the `Host` header `host` (the address
/// when `None`), `extra` header lines and `body`, and reads the whole answer; a streaming answer
/// is read until its first line (`stop_after_line`).
fn exchange(
    address: &str,
    method: &str,
    path: &str,
    host: Option<&str>,
    extra: &[&str],
    body: &str,
    stop_after_line: bool,
) -> Answer {
    try_exchange(address, method, path, host, extra, body, stop_after_line)
        .unwrap_or_else(|e| panic!("{method} {path} to {address}: {e}"))
}

/// [`exchange`] with the reference etcd, asked again when it resets the connection: etcd answers
/// some requests (421, preflights) without reading their body, and on a connection the client
/// asked to close, Go then resets it 500 ms after the answer, which a client on a busy machine
/// may not have read by then. Concord reads such bodies off first, so its answers are not retried.
fn exchange_with_etcd(
    address: &str,
    method: &str,
    path: &str,
    host: Option<&str>,
    extra: &[&str],
    body: &str,
    stop_after_line: bool,
) -> Answer {
    for _ in 0..4 {
        match try_exchange(address, method, path, host, extra, body, stop_after_line) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
            answer => return answer.unwrap_or_else(|e| panic!("{method} {path} to etcd: {e}")),
        }
    }
    panic!("{method} {path}: etcd reset the connection 4 times")
}

/// [`exchange`], failing with the reason instead of panicking.
fn try_exchange(
    address: &str,
    method: &str,
    path: &str,
    host: Option<&str>,
    extra: &[&str],
    body: &str,
    stop_after_line: bool,
) -> std::io::Result<Answer> {
    let bad = |what: &str| std::io::Error::other(what.to_string());
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        host.unwrap_or(address),
        body.len()
    );
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    write!(stream, "{head}\r\n{body}")?;
    let mut input = BufReader::new(stream);
    let mut line = String::new();
    input.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("no status in {line:?}")))?;
    let headers = read_fields(&mut input)?;
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let mut answer = Answer {
        status,
        headers,
        body: String::new(),
        trailers: Vec::new(),
    };
    if !chunked {
        let mut body = Vec::new();
        input.read_to_end(&mut body)?;
        answer.body = String::from_utf8_lossy(&body).into_owned();
        return Ok(answer);
    }
    loop {
        let mut size = String::new();
        input.read_line(&mut size)?;
        let size = usize::from_str_radix(size.trim(), 16).map_err(|_| bad(&format!("chunk size {size:?}")))?;
        if size == 0 {
            answer.trailers = read_fields(&mut input)?;
            return Ok(answer);
        }
        let mut chunk = vec![0; size + 2];
        input.read_exact(&mut chunk)?;
        answer.body.push_str(&String::from_utf8_lossy(&chunk[..size]));
        if stop_after_line && answer.body.contains('\n') {
            return Ok(answer);
        }
    }
}

/// Header (or trailer) lines up to the empty one.
fn read_fields(input: &mut impl BufRead) -> std::io::Result<Vec<(String, String)>> {
    let mut fields = Vec::new();
    loop {
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("the answer ended in its header"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            return Ok(fields);
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| std::io::Error::other(format!("not a header: {line:?}")))?;
        fields.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
}

/// A simple request: `method path` with the address as its host.
fn ask(address: &str, method: &str, path: &str, body: &str) -> Answer {
    exchange(address, method, path, None, &[], body, false)
}

/// The `host:port` of member 0.
fn address(cluster: &Cluster) -> String {
    cluster.members[0].client_url.trim_start_matches("http://").to_string()
}

/// Waits until `address` answers HTTP requests (etcd answers none before it is ready), with
/// whatever status (a whitelist may refuse the probe's host).
async fn wait_for_http(address: &str) {
    let address = address.to_string();
    eventually("HTTP answers", || {
        let address = address.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                try_exchange(&address, "POST", "/v3/kv/range", None, &[], "{}", false).map(|_| ())
            })
            .await
            .unwrap()
        }
    })
    .await;
}

/// An etcd started with `args`, once it answers HTTP; `None` when etcd is not installed.
async fn etcd(args: &[&str]) -> Option<Etcd> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let etcd = Etcd::start("http", &args)?;
    wait_for_http(etcd.address()).await;
    Some(etcd)
}

fn assert_cors(answer: &Answer, origin: &str) {
    assert_eq!(answer.header("access-control-allow-origin"), Some(origin), "{answer:?}");
    assert_eq!(
        answer.header("access-control-allow-methods"),
        Some(CORS_METHODS),
        "{answer:?}"
    );
    assert_eq!(
        answer.header("access-control-allow-headers"),
        Some(CORS_HEADERS),
        "{answer:?}"
    );
}

fn assert_no_cors(answer: &Answer) {
    assert!(
        !answer.headers.iter().any(|(n, _)| n.starts_with("access-control-")),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_http_answer_allows_any_origin_by_default_as_etcds() {
    let cluster = Cluster::start(1).await;
    let concord = address(&cluster);
    let etcd = etcd(&[]).await;
    let requests = [
        ("GET", "/health", ""),
        ("GET", "/version", ""),
        ("GET", "/metrics", ""),
        ("POST", "/v3/kv/range", r#"{"key":"YQ=="}"#),
        ("GET", "/v3/kv/range", ""),
        ("POST", "/v3/no/such/rpc", "{}"),
        ("GET", "/no/such/page", ""),
    ];
    for (method, path, body) in requests {
        let answer = ask(&concord, method, path, body);
        assert_cors(&answer, "*");
        if let Some(etcd) = &etcd {
            let theirs = exchange_with_etcd(etcd.address(), method, path, None, &[], body, false);
            assert_cors(&theirs, "*");
            assert_eq!(answer.status, theirs.status, "{method} {path}");
        }
    }
    // A browser's preflight: 200, no body, the CORS headers, whatever the path.
    for path in ["/v3/kv/put", "/health", "/nowhere"] {
        let answer = exchange(
            &concord,
            "OPTIONS",
            path,
            None,
            &[
                "Origin: http://page.example:8000",
                "Access-Control-Request-Method: POST",
            ],
            "",
            false,
        );
        assert_eq!((answer.status, answer.body.as_str()), (200, ""), "{answer:?}");
        assert_eq!(answer.header("content-length"), Some("0"));
        assert_cors(&answer, "*");
        if let Some(etcd) = &etcd {
            let theirs = exchange_with_etcd(etcd.address(), "OPTIONS", path, None, &[], "", false);
            assert_eq!(
                answer.comparable_headers(),
                theirs.comparable_headers(),
                "OPTIONS {path}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_names_only_listed_origins_as_etcd() {
    let flag = "--cors=http://a.example:8080,https://b.example:443";
    let cluster = Cluster::start_with(1, &[flag]).await;
    let concord = address(&cluster);
    let etcd = etcd(&[flag]).await;
    let with_origin = |address: &str, method: &str, origin: Option<&str>| {
        let line = origin.map(|o| format!("Origin: {o}"));
        let extra: Vec<&str> = line.iter().map(String::as_str).collect();
        // A browser's preflight has no body. etcd leaves the body of an OPTIONS unread, and Go
        // resets such a connection 500 ms after answering, before a busy client reads the answer.
        let body = if method == "OPTIONS" { "" } else { r#"{"key":"YQ=="}"# };
        exchange(address, method, "/v3/kv/range", None, &extra, body, false)
    };
    let cases = [
        ("POST", Some("http://a.example:8080"), Some("http://a.example:8080")),
        ("OPTIONS", Some("https://b.example:443"), Some("https://b.example:443")),
        // A browser leaves the default port out; etcd's list then does not match.
        ("OPTIONS", Some("https://b.example"), None),
        ("POST", Some("http://evil.example:8080"), None),
        ("POST", None, None),
    ];
    for (method, origin, allowed) in cases {
        let answer = with_origin(&concord, method, origin);
        assert_eq!(answer.status, 200, "{answer:?}");
        match allowed {
            Some(allowed) => assert_cors(&answer, allowed),
            None => assert_no_cors(&answer),
        }
        if let Some(etcd) = &etcd {
            let theirs = with_origin(etcd.address(), method, origin);
            let cors = |a: &Answer| {
                a.headers
                    .iter()
                    .filter(|(n, _)| n.starts_with("access-control-"))
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let (mut ours, mut theirs) = (cors(&answer), cors(&theirs));
            ours.sort();
            theirs.sort();
            assert_eq!(ours, theirs, "{method} {origin:?}");
        }
    }

    // A list entry that is no host:port URL stops the member, as it stops etcd.
    let output = common::serve_refused(&["--cors=http://example.com"], &[]);
    let expected = r#"invalid value "http://example.com" for flag -cors: URL address does not have the form "host:port": http://example.com"#;
    assert!(common::text(&output.stderr).contains(expected), "{output:?}");
    if let Some(etcd) = Etcd::start("http", &["--cors=http://example.com".to_string()]) {
        eventually("etcd refuses the flag", || async {
            match etcd.log().contains(expected) {
                true => Ok(()),
                false => Err(etcd.log()),
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_requests_for_unlisted_hosts_are_refused_as_etcd() {
    let flag = "--host-whitelist=example.com,10.0.0.1";
    let cluster = Cluster::start_with(1, &[flag]).await;
    let concord = address(&cluster);
    let etcd = etcd(&[flag]).await;
    let port = concord.rsplit_once(':').unwrap().1.to_string();

    let refused = exchange(&concord, "GET", "/health", None, &[], "", false);
    assert_eq!(refused.status, 421, "{refused:?}");
    assert_eq!(refused.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(refused.header("x-content-type-options"), Some("nosniff"));
    assert_no_cors(&refused);
    assert_eq!(
        refused.body,
        "\netcd received your request, but the Host header was unrecognized.\n\n\
         To fix this, choose one of the following options:\n\
         - Enable TLS, then any HTTPS request will be allowed.\n\
         - Add the hostname you want to use to the whitelist in settings.\n  \
         - e.g. etcd --host-whitelist \"127.0.0.1\"\n\n\
         This requirement has been added to help prevent \"DNS Rebinding\" attacks (CVE-2018-5702).\n\n"
    );
    assert!(cluster.log_contains(0, "rejecting HTTP request to prevent DNS rebinding attacks"));

    let host_example = format!("example.com:{port}");
    let cases: [(&str, &str, Option<&str>, u16); 6] = [
        ("GET", "/health", Some(host_example.as_str()), 200),
        ("OPTIONS", "/v3/kv/range", Some("10.0.0.1"), 200),
        ("POST", "/v3/kv/range", Some("10.0.0.1"), 200),
        // Hosts compare exactly, case included.
        ("GET", "/version", Some("EXAMPLE.com"), 421),
        ("POST", "/v3/kv/put", None, 421),
        ("GET", "/no/such/page", Some("evil.example"), 421),
    ];
    for (method, path, host, status) in cases {
        let body = if method == "POST" {
            r#"{"key":"aG9zdA==","value":"eA=="}"#
        } else {
            ""
        };
        let answer = exchange(&concord, method, path, host, &[], body, false);
        assert_eq!(answer.status, status, "{method} {path} {host:?}: {answer:?}");
        if let Some(etcd) = &etcd {
            let host = host.map(|h| h.replace(&port, etcd.address().rsplit_once(':').unwrap().1));
            let theirs = exchange_with_etcd(etcd.address(), method, path, host.as_deref(), &[], body, false);
            assert_eq!(answer.status, theirs.status, "{method} {path} {host:?}");
            if status == 421 {
                let ours = answer.body.replace(&concord, "ADDRESS");
                assert_eq!(ours, theirs.body.replace(etcd.address(), "ADDRESS"));
                assert_eq!(answer.comparable_headers(), theirs.comparable_headers());
            }
        }
    }

    // gRPC is no HTTP request in etcd's sense: the refused put above went nowhere, this one works.
    let mut client = cluster.client(0).await;
    assert_eq!(
        client.get("host", None).await.unwrap().count(),
        0,
        "the refused put wrote nothing"
    );
    client.put("host", "grpc", None).await.expect("gRPC is not checked");

    // --listen-client-http-urls are client URLs too.
    let http_url = format!("http://127.0.0.1:{}", common::free_port());
    let split = Cluster::start_with(1, &[flag, &format!("--listen-client-http-urls={http_url}")]).await;
    let http_address = http_url.trim_start_matches("http://").to_string();
    wait_for_http(&http_address).await;
    let answer = exchange(&http_address, "GET", "/health", None, &[], "", false);
    assert_eq!(answer.status, 421, "{answer:?}");
    let allowed = exchange(&http_address, "GET", "/health", Some("example.com"), &[], "", false);
    assert_eq!(allowed.status, 200, "{allowed:?}");
    drop(split);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_whitelist_does_not_apply_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "access");
    let member = ca.issue("member", "member");
    let client = ca.issue("client", "client");
    let mut secure = ca.secure(&member, &client);
    secure.member_args.push("--host-whitelist=example.com".into());
    let cluster = Cluster::start_secure(1, secure).await;
    let output = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "-", "-o", "/dev/null"])
        .arg("--cacert")
        .arg(ca.ca_file())
        .arg("--cert")
        .arg(&client.cert_file)
        .arg("--key")
        .arg(&client.key_file)
        .arg(format!("{}/health", cluster.members[0].client_url))
        .output()
        .expect("curl is installed");
    let head = common::text(&output.stdout).to_ascii_lowercase();
    assert!(
        head.starts_with("http/2 200"),
        "{head}\n{}",
        common::text(&output.stderr)
    );
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_answers_carry_etcds_headers() {
    let cluster = Cluster::start(1).await;
    let concord = address(&cluster);
    let etcd = etcd(&[]).await;
    let te = ["TE: trailers"];
    // (what, path, body, the gRPC metadata header expected, the trailer expected)
    let requests: [(&str, &str, &str, bool, bool); 5] = [
        ("a call that succeeds", "/v3/kv/range", r#"{"key":"YQ=="}"#, true, false),
        ("a call the server fails", "/v3/kv/put", "{}", false, true),
        (
            "a call for a missing lease",
            "/v3/lease/revoke",
            r#"{"ID":12345}"#,
            false,
            true,
        ),
        ("a body that is no JSON", "/v3/kv/put", "{bad", false, false),
        (
            "a stream",
            "/v3/watch",
            r#"{"create_request":{"key":"YQ=="}}"#,
            true,
            false,
        ),
    ];
    for (what, path, body, metadata, trailer) in requests {
        let stream = path == "/v3/watch";
        let ours = exchange(&concord, "POST", path, None, &te, body, stream);
        assert_eq!(
            ours.header("content-type"),
            Some("application/json"),
            "{what}: {ours:?}"
        );
        assert_eq!(
            ours.header("grpc-metadata-content-type"),
            metadata.then_some("application/grpc"),
            "{what}: {ours:?}"
        );
        assert_eq!(
            ours.header("trailer"),
            trailer.then_some("Grpc-Trailer-Content-Type"),
            "{what}: {ours:?}"
        );
        let expected_trailers = match trailer {
            true => vec![("grpc-trailer-content-type".to_string(), "application/grpc".to_string())],
            false => vec![],
        };
        assert_eq!(ours.trailers, expected_trailers, "{what}");
        if let Some(etcd) = &etcd {
            let theirs = exchange_with_etcd(etcd.address(), "POST", path, None, &te, body, stream);
            assert_eq!(ours.status, theirs.status, "{what}");
            assert_eq!(ours.comparable_headers(), theirs.comparable_headers(), "{what}");
            assert_eq!(ours.trailers, theirs.trailers, "{what}");
        }
    }
    // Other methods and paths: Go's plain-text answers, with no `Allow` header.
    for (method, path, status) in [("GET", "/v3/kv/range", 405), ("POST", "/v3/kv/nothing", 404)] {
        let ours = ask(&concord, method, path, "");
        assert_eq!(ours.status, status);
        assert_eq!(ours.header("allow"), None, "{ours:?}");
        assert_eq!(ours.header("content-type"), Some("text/plain; charset=utf-8"));
        if let Some(etcd) = &etcd {
            let theirs = exchange_with_etcd(etcd.address(), method, path, None, &[], "", false);
            assert_eq!(
                ours.comparable_headers(),
                theirs.comparable_headers(),
                "{method} {path}"
            );
            assert_eq!(ours.body, theirs.body, "{method} {path}");
        }
    }
}
