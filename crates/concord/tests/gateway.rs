//! etcd's JSON gRPC gateway (`/v3/...` over HTTP with JSON bodies), compared with etcd's own:
//! a Concord member and a real etcd 3.4 process get the same requests, in the same order, and
//! their answers are compared field for field (the cluster and member ids, terms and remaining
//! TTLs, which must differ, normalised). Skipped, with a message, where no `etcd` binary is
//! installed (`scripts/setup.sh` installs Debian's etcd-server).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use common::{eventually, free_port, Cluster};

/// How long one read from a member may block.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// An etcd process on loopback ports, stopped when dropped.
struct Etcd {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start(binary: &PathBuf) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log file");
        let child = Command::new(binary)
            .args(["--name", "e0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("e0={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        Etcd { child, url, _dir: dir }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `etcd` binary, if installed.
fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
}

/// An HTTP response: status, and the body (de-chunked).
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// An open HTTP/1.1 response, read line by line (streams answer one JSON object a line).
struct Reader {
    status: u16,
    input: BufReader<TcpStream>,
    chunked: bool,
    length: Option<usize>,
    buffered: Vec<u8>,
    done: bool,
}

impl Reader {
    /// Sends `method path` with `body` (and a token in `Authorization`) and reads the head.
    fn open(base: &str, method: &str, path: &str, body: &str, token: Option<&str>) -> Reader {
        let host = base.strip_prefix("http://").expect("http URL");
        let mut stream = TcpStream::connect(host).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
        let auth = token.map(|t| format!("Authorization: {t}\r\n")).unwrap_or_default();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        Reader::read_head(stream, &format!("{method} {base}{path} {body}"))
    }

    /// Reads the status line and headers of the answer.
    fn read_head(stream: TcpStream, what: &str) -> Reader {
        let mut input = BufReader::new(stream);
        let mut status: u16 = 100;
        while status == 100 {
            // `100 Continue` (an answer to `Expect`) comes before the real head: skip it.
            let mut status_line = String::new();
            input
                .read_line(&mut status_line)
                .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
            status = status_line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .expect("status");
            if status == 100 {
                let mut blank = String::new();
                input.read_line(&mut blank).expect("end of the 100 answer");
            }
        }
        let (mut chunked, mut length) = (false, None);
        loop {
            let mut line = String::new();
            input.read_line(&mut line).expect("header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if lower == "transfer-encoding: chunked" {
                chunked = true;
            }
            if let Some(n) = lower.strip_prefix("content-length:") {
                length = n.trim().parse().ok();
            }
        }
        Reader {
            status,
            input,
            chunked,
            length,
            buffered: Vec::new(),
            done: false,
        }
    }

    /// Sends `POST path` with a chunked body that stays open: `first` is its first chunk, and
    /// the returned writer sends more ([`send_chunk`]).
    fn open_chunked(base: &str, path: &str, first: &str) -> (Reader, TcpStream) {
        let host = base.strip_prefix("http://").expect("http URL");
        let mut stream = TcpStream::connect(host).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
        // etcd 3.4 answers a chunked body that stays open only after `Expect: 100-continue`
        // (as curl sends it); without it the answer waits for the end of the body.
        write!(stream, "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect("send");
        let mut writer = stream.try_clone().expect("clone");
        send_chunk(&mut writer, first);
        let reader = Reader::read_head(stream, &format!("POST {base}{path}"));
        (reader, writer)
    }

    /// Reads more of the body; false at its end.
    fn fill(&mut self) -> bool {
        if self.done {
            return false;
        }
        if !self.chunked {
            self.done = true;
            match self.length {
                Some(n) => {
                    let mut data = vec![0; n];
                    self.input.read_exact(&mut data).expect("body");
                    self.buffered.extend(data);
                }
                None => {
                    self.input.read_to_end(&mut self.buffered).expect("body");
                }
            }
            return true;
        }
        let mut size = String::new();
        self.input.read_line(&mut size).expect("chunk size (stream stalled?)");
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            self.done = true;
            return false;
        }
        let mut data = vec![0; n + 2];
        self.input.read_exact(&mut data).expect("chunk");
        self.buffered.extend_from_slice(&data[..n]);
        true
    }

    /// The next line of the body, or `None` at its end.
    fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buffered.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffered.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            if !self.fill() {
                if self.buffered.is_empty() {
                    return None;
                }
                let rest = std::mem::take(&mut self.buffered);
                return Some(String::from_utf8_lossy(&rest).into_owned());
            }
        }
    }

    /// The next line as JSON.
    fn json_line(&mut self) -> Value {
        let line = self.line().expect("another line in the stream");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }

    /// The whole (rest of the) body.
    fn rest(mut self) -> Answer {
        while self.fill() {}
        Answer {
            status: self.status,
            body: String::from_utf8_lossy(&self.buffered).into_owned(),
        }
    }
}

/// Sends one chunk of a chunked request body.
fn send_chunk(writer: &mut TcpStream, data: &str) {
    write!(writer, "{:x}\r\n{data}\r\n", data.len()).expect("send chunk");
}

fn request(base: &str, method: &str, path: &str, body: &str, token: Option<&str>) -> Answer {
    Reader::open(base, method, path, body, token).rest()
}

/// Values that must differ between two clusters, replaced by a marker.
const DIFFERENT: &[&str] = &["cluster_id", "member_id", "raft_term", "token"];

/// The answer with what must differ normalised: ids and terms, a remaining TTL (it counts down
/// between the two calls), and anything named in `also`.
fn normalise(mut value: Value, also: &[&str]) -> Value {
    fn walk(value: &mut Value, also: &[&str]) {
        match value {
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    if DIFFERENT.contains(&key.as_str()) || also.contains(&key.as_str()) {
                        *v = json!("<differs>");
                    } else {
                        walk(v, also);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, also)),
            _ => {}
        }
    }
    walk(&mut value, also);
    value
}

/// Both servers under test.
struct Pair {
    etcd: String,
    concord: String,
}

impl Pair {
    /// POSTs `body` to `path` on both; asserts equal statuses and equal JSON (normalised).
    fn same(&self, path: &str, body: Value) -> Value {
        self.same_with(path, &body.to_string(), (None, None), &[])
    }

    fn same_with(&self, path: &str, body: &str, token: (Option<&str>, Option<&str>), also: &[&str]) -> Value {
        let e = request(&self.etcd, "POST", path, body, token.0);
        let c = request(&self.concord, "POST", path, body, token.1);
        assert_eq!(e.status, c.status, "{path} {body}: etcd {e:?}, concord {c:?}");
        let (ev, cv) = (normalise(e.json(), also), normalise(c.json(), also));
        assert_eq!(ev, cv, "{path} {body}: etcd and concord differ");
        c.json()
    }
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn gateway_answers_as_etcd_does() {
    let Some(binary) = etcd_binary() else {
        eprintln!(
            "SKIPPED gateway_answers_as_etcd_does: no `etcd` binary on PATH (scripts/setup.sh installs etcd-server)"
        );
        return;
    };
    let etcd = Etcd::start(&binary);
    let cluster = Cluster::start(1).await;
    let pair = Pair {
        etcd: etcd.url.clone(),
        concord: cluster.members[0].client_url.clone(),
    };
    eprintln!("etcd at {}, concord at {}", pair.etcd, pair.concord);
    for base in [&pair.etcd, &pair.concord] {
        eventually("the gateway answers", || {
            let base = base.clone();
            async move {
                let a = request(&base, "POST", "/v3/kv/range", r#"{"key":"eA=="}"#, None);
                if a.status == 200 {
                    Ok(())
                } else {
                    Err(a)
                }
            }
        })
        .await;
    }

    kv(&pair);
    errors(&pair);
    leases(&pair);
    watches(&pair);
    cluster_and_maintenance(&pair);
    lock_and_election(&pair);
    auth(&pair);
}

/// Put, Range (with options), DeleteRange, Txn, Compact, on both prefixes.
fn kv(pair: &Pair) {
    pair.same("/v3/kv/put", json!({"key": b64("foo"), "value": b64("bar")}));
    let put = pair.same(
        "/v3/kv/put",
        json!({"key": b64("foo"), "value": b64("baz"), "prev_kv": true}),
    );
    assert_eq!(put["prev_kv"]["value"], b64("bar"));
    pair.same("/v3/kv/put", json!({"key": b64("fop"), "value": b64("1")}));
    let range = pair.same("/v3/kv/range", json!({"key": b64("foo")}));
    assert_eq!(range["kvs"][0]["version"], "2", "64-bit integers are strings");
    pair.same(
        "/v3beta/kv/range",
        json!({"key": b64("fo"), "range_end": b64("fp"), "sort_order": "DESCEND", "keys_only": true}),
    );
    pair.same(
        "/v3/kv/range",
        json!({"key": b64("fo"), "range_end": b64("fp"), "count_only": true}),
    );
    pair.same(
        "/v3/kv/range",
        json!({"key": b64("fo"), "range_end": b64("fp"), "limit": "1", "unknown_field": 1}),
    );
    pair.same("/v3/kv/range", json!({"key": b64("nothing")}));
    pair.same("/v3/kv/deleterange", json!({"key": b64("fop"), "prev_kv": true}));
    let txn = json!({
        "compare": [{"key": b64("foo"), "target": "VALUE", "result": "EQUAL", "value": b64("baz")}],
        "success": [{"request_put": {"key": b64("t"), "value": b64("yes")}}, {"request_range": {"key": b64("foo")}}],
        "failure": [{"request_put": {"key": b64("t"), "value": b64("no")}}],
    });
    let answer = pair.same("/v3/kv/txn", txn.clone());
    assert_eq!(answer["succeeded"], true);
    let answer = pair.same(
        "/v3/kv/txn",
        json!({
            "compare": [{"key": b64("foo"), "target": "VERSION", "result": "GREATER", "version": "5"}],
            "failure": [{"request_delete_range": {"key": b64("t")}}],
        }),
    );
    assert!(answer.get("succeeded").is_none(), "false is left out: {answer}");
    pair.same("/v3/kv/compaction", json!({"revision": "3"}));
    // A revision before the compaction: etcd's error.
    pair.same("/v3/kv/range", json!({"key": b64("foo"), "revision": "2"}));
}

/// etcd's error answers.
fn errors(pair: &Pair) {
    // Over --max-request-bytes (1.5 MiB by default), under gRPC's margin: etcd's own error.
    let big = "x".repeat(1_600_000);
    pair.same("/v3/kv/put", json!({"key": b64("big"), "value": b64(&big)}));
    let empty = pair.same("/v3/kv/range", json!({"key": ""}));
    assert_eq!(
        empty,
        json!({"error": "etcdserver: key is not provided", "message": "etcdserver: key is not provided", "code": 3})
    );
    // Malformed JSON: the same status and code (the message is each parser's own).
    for body in ["not json", r#"{"key": 5}"#] {
        let e = request(&pair.etcd, "POST", "/v3/kv/range", body, None);
        let c = request(&pair.concord, "POST", "/v3/kv/range", body, None);
        assert_eq!(
            (e.status, e.json()["code"].clone()),
            (c.status, c.json()["code"].clone()),
            "{body}: {e:?} {c:?}"
        );
        assert!(c.json()["error"].as_str().is_some_and(|m| !m.is_empty()), "{c:?}");
    }
    // Unknown paths and methods.
    for (method, path) in [
        ("POST", "/v3/nope"),
        ("POST", "/nope"),
        ("GET", "/v3/kv/range"),
        ("POST", "/v3alpha/kv/range"),
    ] {
        let e = request(&pair.etcd, method, path, "{}", None);
        let c = request(&pair.concord, method, path, "{}", None);
        assert_eq!((e.status, e.body.trim()), (c.status, c.body.trim()), "{method} {path}");
    }
}

/// Grant, TimeToLive, Leases, KeepAlive (a stream), Revoke, and the `/v3/kv/lease/...` aliases.
fn leases(pair: &Pair) {
    pair.same("/v3/lease/grant", json!({"TTL": "60", "ID": "4660"}));
    pair.same("/v3/lease/grant", json!({"TTL": 60, "ID": "4661"}));
    pair.same(
        "/v3/kv/put",
        json!({"key": b64("leased"), "value": b64("v"), "lease": "4660"}),
    );
    let ttl = pair.same_with(
        "/v3/lease/timetolive",
        r#"{"ID":"4660","keys":true}"#,
        (None, None),
        &["TTL"],
    );
    assert_eq!(ttl["keys"][0], b64("leased"));
    pair.same_with("/v3/kv/lease/timetolive", r#"{"ID":"4661"}"#, (None, None), &["TTL"]);
    let mut listed = Vec::new();
    for base in [&pair.etcd, &pair.concord] {
        let mut ids: Vec<String> = request(base, "POST", "/v3/lease/leases", "{}", None).json()["leases"]
            .as_array()
            .expect("leases")
            .iter()
            .map(|l| l["ID"].as_str().expect("ID").to_string())
            .collect();
        ids.sort();
        listed.push(ids);
    }
    assert_eq!(listed[0], listed[1]);
    assert_eq!(listed[0], ["4660", "4661"]);
    // KeepAlive: one answer per request in the body, then the stream ends.
    let mut streams = Vec::new();
    for base in [&pair.etcd, &pair.concord] {
        let mut reader = Reader::open(
            base,
            "POST",
            "/v3/lease/keepalive",
            r#"{"ID":"4660"} {"ID":"4661"}"#,
            None,
        );
        assert_eq!(reader.status, 200);
        let lines = [reader.json_line(), reader.json_line()];
        assert_eq!(reader.line(), None, "the stream ends with the requests");
        streams.push(lines.map(|l| normalise(l, &[])));
    }
    assert_eq!(streams[0], streams[1]);
    assert_eq!(streams[1][0]["result"]["TTL"], "60");
    pair.same("/v3/lease/revoke", json!({"ID": "4661"}));
    let gone = pair.same("/v3/kv/lease/revoke", json!({"ID": "4661"}));
    assert_eq!(gone["code"], 5);
    pair.same("/v3/kv/lease/revoke", json!({"ID": "4660"}));
}

/// Watch streams: created, history from a revision, live events, cancel.
fn watches(pair: &Pair) {
    pair.same("/v3/kv/put", json!({"key": b64("w"), "value": b64("1")}));
    let start = pair.same("/v3/kv/range", json!({"key": b64("w")}))["kvs"][0]["mod_revision"].clone();
    let mut seen = Vec::new();
    let mut readers = Vec::new();
    for base in [&pair.etcd, &pair.concord] {
        let body = json!({"create_request": {"key": b64("w"), "start_revision": start, "prev_kv": true}}).to_string();
        let mut reader = Reader::open(base, "POST", "/v3/watch", &body, None);
        assert_eq!(reader.status, 200);
        seen.push(vec![
            normalise(reader.json_line(), &[]),
            normalise(reader.json_line(), &[]),
        ]);
        readers.push(reader);
    }
    pair.same("/v3/kv/put", json!({"key": b64("w"), "value": b64("2")}));
    for (i, reader) in readers.iter_mut().enumerate() {
        seen[i].push(normalise(reader.json_line(), &[]));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1][0]["result"]["created"], true);
    assert_eq!(seen[1][2]["result"]["events"][0]["prev_kv"]["value"], b64("1"));
    drop(readers);

    let mut cancelled = Vec::new();
    for base in [&pair.etcd, &pair.concord] {
        let body = r#"{"create_request":{"key":"dw=="}} {"cancel_request":{"watch_id":"0"}}"#;
        let mut reader = Reader::open(base, "POST", "/v3/watch", body, None);
        cancelled.push([normalise(reader.json_line(), &[]), normalise(reader.json_line(), &[])]);
    }
    assert_eq!(cancelled[0], cancelled[1]);
    assert_eq!(cancelled[1][1]["result"]["canceled"], true);

    // A body kept open: a later request (the cancel) is read when it arrives.
    let mut later = Vec::new();
    for base in [&pair.etcd, &pair.concord] {
        let (mut reader, mut writer) = Reader::open_chunked(base, "/v3/watch", r#"{"create_request":{"key":"dw=="}}"#);
        let created = normalise(reader.json_line(), &[]);
        send_chunk(&mut writer, r#"{"cancel_request":{"watch_id":"0"}}"#);
        later.push([created, normalise(reader.json_line(), &[])]);
    }
    assert_eq!(later[0], later[1]);
    assert_eq!(later[1][1]["result"]["canceled"], true);

    // A malformed stream: etcd's error answer.
    let e = request(&pair.etcd, "POST", "/v3/watch", "xx", None);
    let c = request(&pair.concord, "POST", "/v3/watch", "xx", None);
    assert_eq!(
        (e.status, e.json()["code"].clone()),
        (c.status, c.json()["code"].clone())
    );
}

/// MemberList and Status: the same fields (their values name different clusters).
fn cluster_and_maintenance(pair: &Pair) {
    let keys = |v: &Value| -> Vec<String> { v.as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default() };
    let e = request(&pair.etcd, "POST", "/v3/cluster/member/list", "{}", None).json();
    let c = request(&pair.concord, "POST", "/v3/cluster/member/list", "{}", None).json();
    assert_eq!(keys(&e["members"][0]), keys(&c["members"][0]), "{e} {c}");
    assert_eq!(c["members"].as_array().map(Vec::len), Some(1));
    let e = request(&pair.etcd, "POST", "/v3/maintenance/status", "{}", None).json();
    let c = request(&pair.concord, "POST", "/v3/maintenance/status", "{}", None).json();
    for key in keys(&e) {
        assert!(c.get(&key).is_some(), "status lacks {key}: {c}");
    }
    assert_eq!(keys(&e["header"]), keys(&c["header"]));
    let e = request(&pair.etcd, "POST", "/v3/maintenance/hash", "{}", None).json();
    let c = request(&pair.concord, "POST", "/v3/maintenance/hash", "{}", None).json();
    assert!(e["hash"].is_u64() && c["hash"].is_u64(), "uint32 is a number: {e} {c}");
    // Snapshot streams the store in chunks (of different formats: compare the shape).
    for base in [&pair.etcd, &pair.concord] {
        let mut reader = Reader::open(base, "POST", "/v3/maintenance/snapshot", "{}", None);
        assert_eq!(reader.status, 200);
        let first = reader.json_line();
        assert!(first["result"]["blob"].is_string(), "{base}: {first}");
    }
    // etcd 3.4 answers Alarm without a header (Concord's gRPC service sets one): compare alarms.
    let e = request(&pair.etcd, "POST", "/v3/maintenance/alarm", "{}", None).json();
    let c = request(&pair.concord, "POST", "/v3/maintenance/alarm", "{}", None).json();
    assert_eq!(e.get("alarms"), c.get("alarms"));
}

/// Lock and Unlock; Campaign, Leader, Resign.
fn lock_and_election(pair: &Pair) {
    pair.same("/v3/lease/grant", json!({"TTL": "60", "ID": "4662"}));
    let locked = pair.same("/v3/lock/lock", json!({"name": b64("lk"), "lease": "4662"}));
    assert_eq!(locked["key"], b64("lk/1236"));
    pair.same("/v3/lock/unlock", json!({"key": locked["key"]}));
    let campaign = pair.same(
        "/v3/election/campaign",
        json!({"name": b64("el"), "lease": "4662", "value": b64("v1")}),
    );
    let leader = campaign["leader"].clone();
    assert_eq!(leader["key"], b64("el/1236"));
    // Observe streams the leader: its first answer is the current one.
    let mut observed = Vec::new();
    for base in [&pair.etcd, &pair.concord] {
        let mut reader = Reader::open(
            base,
            "POST",
            "/v3/election/observe",
            &json!({"name": b64("el")}).to_string(),
            None,
        );
        assert_eq!(reader.status, 200);
        observed.push(normalise(reader.json_line(), &[]));
    }
    assert_eq!(observed[0], observed[1]);
    assert_eq!(observed[1]["result"]["kv"]["value"], b64("v1"));
    let current = pair.same("/v3/election/leader", json!({"name": b64("el")}));
    assert_eq!(current["kv"]["value"], b64("v1"));
    pair.same("/v3/election/proclaim", json!({"leader": leader, "value": b64("v2")}));
    pair.same("/v3/election/resign", json!({"leader": leader}));
    pair.same("/v3/election/leader", json!({"name": b64("el")}));
}

/// The auth enable flow, with the token in the `Authorization` header.
fn auth(pair: &Pair) {
    pair.same("/v3/auth/enable", json!({}));
    pair.same("/v3/auth/user/add", json!({"name": "root", "password": "pw"}));
    pair.same("/v3/auth/user/grant", json!({"user": "root", "role": "root"}));
    pair.same("/v3/auth/enable", json!({}));
    pair.same("/v3/kv/range", json!({"key": b64("foo")}));
    pair.same("/v3/auth/authenticate", json!({"name": "root", "password": "wrong"}));
    let token_of = |base: &str| -> String {
        let answer = request(
            base,
            "POST",
            "/v3/auth/authenticate",
            r#"{"name":"root","password":"pw"}"#,
            None,
        )
        .json();
        answer["token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {answer}"))
            .to_string()
    };
    let (et, ct) = (token_of(&pair.etcd), token_of(&pair.concord));
    let body = json!({"key": b64("foo")}).to_string();
    let read = pair.same_with("/v3/kv/range", &body, (Some(&et), Some(&ct)), &[]);
    assert_eq!(read["kvs"][0]["value"], b64("baz"));
    pair.same_with("/v3/auth/user/list", "{}", (Some(&et), Some(&ct)), &[]);
    pair.same_with("/v3/auth/disable", "{}", (Some(&et), Some(&ct)), &[]);
    pair.same("/v3/kv/range", json!({"key": b64("foo")}));
}
