//! Protocol-level fuzzing of a real cluster (issue 16: no bytes a client sends may reach a panic,
//! an unwrap, a fatal error or an unbounded allocation in a member).
//!
//! A 3-member cluster is started and given a known data set (every key of it sorts before the
//! fuzz prefix `fuzz/`). Then workers drive every method of every client service (KV, Watch,
//! Lease, Cluster, Maintenance, Auth, Lock, Election) straight over HTTP/2 with the `h2` crate,
//! so any bytes can be sent: well-formed messages with extreme fields (empty and 1.5 MiB keys,
//! reversed and `"\0"` ranges, negative and huge revisions, limits, lease ids and TTLs, txns
//! nested 1 to 200 deep and with op counts around `--max-txn-ops`, watches in the past, the
//! future and the compacted past, thousands of watchers on one stream, member URLs without
//! ports or schemes), random and mutated bytes, huge, short and lying gRPC length prefixes,
//! compressed-flag frames, split and doubled frames, odd headers, unknown paths, streams opened
//! and never read, bodies never finished, HTTP/1.1 requests to the HTTP routes with odd queries,
//! and raw HTTP/2 and TCP garbage on the client port. Every call has a timeout; the run is
//! bounded in time and in count.
//!
//! Safety of the run itself: every write the fuzzer can make is confined to keys starting with
//! `fuzz/` (a random or mutated message that would decode to a write elsewhere is rewritten
//! under the prefix before it is sent); members are never removed, and only members the fuzzer
//! added itself (as learners, with peer URLs that point at the cluster's own ports or do not
//! parse) are; no `root` user is ever created, so AuthEnable always fails; raised alarms are
//! lowered again. All traffic goes to the 127.0.0.1 ports of the cluster this test started.
//!
//! Before the random phase every method gets a fixed sweep (a well-formed message, random bytes,
//! a huge length prefix, no body, the compressed flag) and a list of edge cases is sent once; two
//! probes measure memory: a KV request whose length prefix says 16 bytes followed by 32 MiB, and
//! (after the workers) one Watch stream that is never read while 64 MiB of puts go by.
//!
//! While it runs, a monitor watches the member processes and logs (an exit, "panicked" or "fatal"
//! is reported at once with the requests sent just before), and a sentinel watch over the whole
//! keyspace reports any change outside `fuzz/` (it sees what no Range can, such as the empty
//! key). At the end it checks that every member process is alive, answers `/health` with 200 and
//! a linearizable Range, that the known data set is unchanged and no key outside `fuzz/`
//! appeared, that the members' HashKV agree at one revision, and that no member log mentions
//! "panicked" or "fatal". It prints, per method, the gRPC status codes (or other outcomes)
//! received, as a Markdown table.
//!
//! Short form (CI): `cargo test -p concord --test fuzz -- --nocapture` (about 75 s of fuzzing).
//! Longer: `FUZZ_SECONDS=1800 FUZZ_SEED=7 cargo test -p concord --test fuzz -- --nocapture`.
//! Knobs: `FUZZ_SECONDS`, `FUZZ_SEED` (the default is fresh each run and printed),
//! `FUZZ_WORKERS` (4), `FUZZ_MAX_TXN_DEPTH` (200), `FUZZ_MAX_REQUESTS` (2,000,000). A seed fixes
//! what each worker sends; how the workers interleave is not replayed.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use common::Cluster;
use concord_proto::etcdserverpb as pb;
use concord_proto::{authpb, v3electionpb as el, v3lockpb as lk};
use concord_server::concurrency::prefix_end;
use pb::compare::TargetUnion;
use pb::request_op::Request as Op;
use pb::watch_request::RequestUnion;
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Every key the fuzzer may write starts with this; every key of the known data set sorts before it.
const PREFIX: &[u8] = b"fuzz/";
/// The members' `--max-request-bytes` and `--max-txn-ops` (etcd's defaults, which the harness keeps).
const MAX_REQUEST_BYTES: usize = 1536 * 1024;
const MAX_TXN_OPS: usize = 128;
/// How long one call may take before the fuzzer gives up on it.
const CALL_TIMEOUT: Duration = Duration::from_secs(8);
/// Calls that block by design (Lock, Campaign) are abandoned sooner.
const BLOCKING_TIMEOUT: Duration = Duration::from_millis(1500);
/// Streams each worker keeps open without reading (each on a connection of its own).
const HELD_PER_WORKER: usize = 12;
/// Requests remembered for the report when a member dies or logs a panic.
const RECENT: usize = 400;

// ---------------------------------------------------------------------------------------------
// Configuration and randomness
// ---------------------------------------------------------------------------------------------

struct Config {
    seconds: u64,
    seed: u64,
    workers: usize,
    max_depth: usize,
    max_requests: u64,
}

impl Config {
    fn from_env() -> Config {
        let num = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok());
        let fresh = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        Config {
            seconds: num("FUZZ_SECONDS").unwrap_or(75),
            seed: num("FUZZ_SEED").unwrap_or(fresh % 1_000_000),
            workers: num("FUZZ_WORKERS").unwrap_or(4).clamp(1, 64) as usize,
            max_depth: num("FUZZ_MAX_TXN_DEPTH").unwrap_or(200).clamp(1, 1000) as usize,
            max_requests: num("FUZZ_MAX_REQUESTS").unwrap_or(2_000_000),
        }
    }
}

/// xorshift64*, seeded through splitmix64.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 for n = 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// A number in `0..=n`.
    fn upto(&mut self, n: usize) -> usize {
        self.below(n as u64 + 1) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// `min` to `min + extra` random bytes.
    fn some_bytes(&mut self, min: usize, extra: usize) -> Vec<u8> {
        let n = min + self.upto(extra);
        self.bytes(n)
    }

    fn flag(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

// ---------------------------------------------------------------------------------------------
// The methods
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum M {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
    Watch,
    LeaseGrant,
    LeaseRevoke,
    LeaseKeepAlive,
    LeaseTimeToLive,
    LeaseLeases,
    MemberAdd,
    MemberRemove,
    MemberUpdate,
    MemberList,
    MemberPromote,
    Alarm,
    Status,
    Defragment,
    Hash,
    HashKv,
    Snapshot,
    MoveLeader,
    Downgrade,
    AuthEnable,
    AuthDisable,
    AuthStatus,
    Authenticate,
    UserAdd,
    UserGet,
    UserList,
    UserDelete,
    UserChangePassword,
    UserGrantRole,
    UserRevokeRole,
    RoleAdd,
    RoleGet,
    RoleList,
    RoleDelete,
    RoleGrantPermission,
    RoleRevokePermission,
    Lock,
    Unlock,
    Campaign,
    Proclaim,
    Leader,
    Observe,
    Resign,
}

use M::*;

/// Every method, its gRPC path and how often it is picked (relative weight).
const METHODS: &[(M, &str, u64)] = &[
    (Range, "/etcdserverpb.KV/Range", 60),
    (Put, "/etcdserverpb.KV/Put", 60),
    (DeleteRange, "/etcdserverpb.KV/DeleteRange", 30),
    (Txn, "/etcdserverpb.KV/Txn", 70),
    (Compact, "/etcdserverpb.KV/Compact", 8),
    (Watch, "/etcdserverpb.Watch/Watch", 30),
    (LeaseGrant, "/etcdserverpb.Lease/LeaseGrant", 15),
    (LeaseRevoke, "/etcdserverpb.Lease/LeaseRevoke", 10),
    (LeaseKeepAlive, "/etcdserverpb.Lease/LeaseKeepAlive", 12),
    (LeaseTimeToLive, "/etcdserverpb.Lease/LeaseTimeToLive", 10),
    (LeaseLeases, "/etcdserverpb.Lease/LeaseLeases", 4),
    (MemberAdd, "/etcdserverpb.Cluster/MemberAdd", 6),
    (MemberRemove, "/etcdserverpb.Cluster/MemberRemove", 6),
    (MemberUpdate, "/etcdserverpb.Cluster/MemberUpdate", 6),
    (MemberList, "/etcdserverpb.Cluster/MemberList", 4),
    (MemberPromote, "/etcdserverpb.Cluster/MemberPromote", 4),
    (Alarm, "/etcdserverpb.Maintenance/Alarm", 6),
    (Status, "/etcdserverpb.Maintenance/Status", 4),
    (Defragment, "/etcdserverpb.Maintenance/Defragment", 1),
    (Hash, "/etcdserverpb.Maintenance/Hash", 1),
    (HashKv, "/etcdserverpb.Maintenance/HashKV", 4),
    (Snapshot, "/etcdserverpb.Maintenance/Snapshot", 1),
    (MoveLeader, "/etcdserverpb.Maintenance/MoveLeader", 2),
    (Downgrade, "/etcdserverpb.Maintenance/Downgrade", 2),
    (AuthEnable, "/etcdserverpb.Auth/AuthEnable", 2),
    (AuthDisable, "/etcdserverpb.Auth/AuthDisable", 2),
    (AuthStatus, "/etcdserverpb.Auth/AuthStatus", 2),
    (Authenticate, "/etcdserverpb.Auth/Authenticate", 4),
    (UserAdd, "/etcdserverpb.Auth/UserAdd", 3),
    (UserGet, "/etcdserverpb.Auth/UserGet", 3),
    (UserList, "/etcdserverpb.Auth/UserList", 2),
    (UserDelete, "/etcdserverpb.Auth/UserDelete", 3),
    (UserChangePassword, "/etcdserverpb.Auth/UserChangePassword", 2),
    (UserGrantRole, "/etcdserverpb.Auth/UserGrantRole", 3),
    (UserRevokeRole, "/etcdserverpb.Auth/UserRevokeRole", 3),
    (RoleAdd, "/etcdserverpb.Auth/RoleAdd", 3),
    (RoleGet, "/etcdserverpb.Auth/RoleGet", 3),
    (RoleList, "/etcdserverpb.Auth/RoleList", 2),
    (RoleDelete, "/etcdserverpb.Auth/RoleDelete", 3),
    (RoleGrantPermission, "/etcdserverpb.Auth/RoleGrantPermission", 3),
    (RoleRevokePermission, "/etcdserverpb.Auth/RoleRevokePermission", 3),
    (Lock, "/v3lockpb.Lock/Lock", 6),
    (Unlock, "/v3lockpb.Lock/Unlock", 6),
    (Campaign, "/v3electionpb.Election/Campaign", 6),
    (Proclaim, "/v3electionpb.Election/Proclaim", 6),
    (Leader, "/v3electionpb.Election/Leader", 4),
    (Observe, "/v3electionpb.Election/Observe", 4),
    (Resign, "/v3electionpb.Election/Resign", 6),
];

fn path_of(m: M) -> &'static str {
    METHODS
        .iter()
        .find(|(x, _, _)| *x == m)
        .map(|(_, p, _)| *p)
        .unwrap_or("/")
}

/// `KV.Range` for `/etcdserverpb.KV/Range`.
fn label(path: &str) -> String {
    let path = path.trim_start_matches('/');
    match path.split_once('/') {
        Some((service, method)) => format!("{}.{method}", service.rsplit('.').next().unwrap_or(service)),
        None => path.to_string(),
    }
}

/// Whether the answer to `m` is a stream (read for a while, then abandoned).
fn answers_stream(m: M) -> bool {
    matches!(m, Watch | LeaseKeepAlive | Snapshot | Observe)
}

// ---------------------------------------------------------------------------------------------
// What the workers share
// ---------------------------------------------------------------------------------------------

struct Shared {
    cfg: Config,
    /// `127.0.0.1:port` of each member's client URL.
    client_addrs: Vec<String>,
    peer_urls: Vec<String>,
    member_ids: Vec<u64>,
    pids: Vec<u32>,
    logs: Vec<std::path::PathBuf>,
    /// The newest revision seen in an answer, and the newest compaction asked for.
    revision: AtomicI64,
    compacted: AtomicI64,
    leases: Mutex<Vec<i64>>,
    lock_keys: Mutex<Vec<Vec<u8>>>,
    leaders: Mutex<Vec<el::LeaderKey>>,
    /// Members the fuzzer added (learners with bad URLs), to be removed again.
    added: Mutex<Vec<u64>>,
    /// Per method (or other action), how often each outcome was seen.
    stats: Mutex<BTreeMap<String, BTreeMap<String, u64>>>,
    /// The last requests sent: when, to which member, what.
    recent: Mutex<VecDeque<(Duration, usize, String)>>,
    started: Instant,
    stop: AtomicBool,
    sent: AtomicU64,
    /// What the monitor saw: a member gone, a panic or fatal error in a log.
    incidents: Mutex<Vec<String>>,
}

impl Shared {
    fn rev(&self) -> i64 {
        self.revision.load(Relaxed)
    }

    fn record(&self, what: &str, outcome: &str) {
        let mut stats = self.stats.lock().unwrap();
        *stats
            .entry(what.to_string())
            .or_default()
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    fn remember(&self, member: usize, desc: String) {
        let mut recent = self.recent.lock().unwrap();
        if recent.len() >= RECENT {
            recent.pop_front();
        }
        recent.push_back((self.started.elapsed(), member, desc));
    }

    fn lease(&self, r: &mut Rng) -> i64 {
        let leases = self.leases.lock().unwrap();
        if leases.is_empty() || r.chance(30) {
            i64x(r, self)
        } else {
            r.pick(&leases)
        }
    }

    fn push<T>(pool: &Mutex<Vec<T>>, item: T) {
        let mut pool = pool.lock().unwrap();
        if pool.len() >= 64 {
            pool.remove(0);
        }
        pool.push(item);
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 calls
// ---------------------------------------------------------------------------------------------

/// One HTTP/2 connection to a member's client port.
struct Conn {
    send: h2::client::SendRequest<Bytes>,
    addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    async fn open(addr: &str) -> Result<Conn, String> {
        let connecting = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            h2::client::Builder::new()
                .initial_window_size(1 << 20)
                .initial_connection_window_size(4 << 20)
                .handshake::<_, Bytes>(tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))
        };
        let (send, connection) = tokio::time::timeout(Duration::from_secs(3), connecting)
            .await
            .map_err(|_| "connect: timed out".to_string())??;
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn {
            send,
            addr: addr.to_string(),
            task,
        })
    }

    /// Opens a Watch stream and sends `message` on it, leaving the stream open.
    async fn open_watch(
        &mut self,
        message: &pb::WatchRequest,
    ) -> Option<(h2::client::ResponseFuture, h2::SendStream<Bytes>)> {
        std::future::poll_fn(|cx| self.send.poll_ready(cx)).await.ok()?;
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{}", self.addr, path_of(M::Watch)))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .ok()?;
        let (response, mut stream) = self.send.send_request(request, false).ok()?;
        stream.send_data(frame(&message.encode_to_vec()), false).ok()?;
        Some((response, stream))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Read the whole answer.
    Unary,
    /// Read for the given time, then drop the stream (RST_STREAM CANCEL).
    Stream(Duration),
}

/// One request as sent on the wire.
struct Call {
    path: String,
    method: &'static str,
    headers: Vec<(String, String)>,
    /// DATA frames, sent in order.
    frames: Vec<Bytes>,
    /// Whether the last frame (or the headers, without frames) ends the request.
    end: bool,
    shape: Shape,
    timeout: Duration,
}

impl Call {
    fn grpc(path: &str, frames: Vec<Bytes>, shape: Shape, timeout: Duration) -> Call {
        Call {
            path: path.to_string(),
            method: "POST",
            headers: vec![
                ("content-type".into(), "application/grpc".into()),
                ("te".into(), "trailers".into()),
            ],
            frames,
            end: true,
            shape,
            timeout,
        }
    }
}

/// How a call went.
#[derive(Default)]
struct Answer {
    /// The gRPC code's name (`OK`, `InvalidArgument`, ...), or what happened instead.
    outcome: String,
    /// `grpc-message`, when there was one.
    message: String,
    /// The messages of the answer (all of a unary one, the first few of a stream).
    messages: Vec<Bytes>,
    /// How many messages a stream carried before the fuzzer stopped reading.
    count: usize,
    /// Whether the connection is gone (the next call needs a new one).
    broken: bool,
}

fn code_name(code: &[u8]) -> String {
    match std::str::from_utf8(code)
        .ok()
        .and_then(|c| c.trim().parse::<i32>().ok())
    {
        Some(n) if (0..=16).contains(&n) => [
            "OK",
            "Canceled",
            "Unknown",
            "InvalidArgument",
            "DeadlineExceeded",
            "NotFound",
            "AlreadyExists",
            "PermissionDenied",
            "ResourceExhausted",
            "FailedPrecondition",
            "Aborted",
            "OutOfRange",
            "Unimplemented",
            "Internal",
            "Unavailable",
            "DataLoss",
            "Unauthenticated",
        ][n as usize]
            .to_string(),
        Some(n) => format!("grpc-status {n}"),
        None => "grpc-status (not a number)".to_string(),
    }
}

fn h2_reason(code: u32) -> &'static str {
    match code {
        0 => "NO_ERROR",
        1 => "PROTOCOL_ERROR",
        2 => "INTERNAL_ERROR",
        3 => "FLOW_CONTROL_ERROR",
        4 => "SETTINGS_TIMEOUT",
        5 => "STREAM_CLOSED",
        6 => "FRAME_SIZE_ERROR",
        7 => "REFUSED_STREAM",
        8 => "CANCEL",
        9 => "COMPRESSION_ERROR",
        10 => "CONNECT_ERROR",
        11 => "ENHANCE_YOUR_CALM",
        12 => "INADEQUATE_SECURITY",
        13 => "HTTP_1_1_REQUIRED",
        _ => "UNKNOWN_REASON",
    }
}

fn h2_outcome(e: &h2::Error) -> (String, bool) {
    if e.is_io() {
        ("h2: connection lost".into(), true)
    } else if e.is_go_away() {
        (
            format!("h2: GOAWAY {}", e.reason().map_or("?", |r| h2_reason(r.into()))),
            true,
        )
    } else if let Some(r) = e.reason() {
        (format!("h2: RST_STREAM {}", h2_reason(r.into())), false)
    } else {
        (format!("h2: {e}"), true)
    }
}

/// Splits gRPC messages off `buf` as they complete.
fn take_messages(buf: &mut BytesMut, out: &mut Vec<Bytes>, count: &mut usize, keep: usize) {
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            return;
        }
        let mut message = buf.split_to(5 + len);
        message.advance(5);
        *count += 1;
        if out.len() < keep {
            out.push(message.freeze());
        }
    }
}

/// Sends `call` on `conn` and reads its answer (see [`Shape`]); never takes longer than its timeout.
async fn call(conn: &mut Conn, c: Call) -> Answer {
    let timeout = c.timeout;
    let attempt = async {
        let mut answer = Answer::default();
        if let Err(e) = std::future::poll_fn(|cx| conn.send.poll_ready(cx)).await {
            let (outcome, broken) = h2_outcome(&e);
            return Answer {
                outcome,
                broken,
                ..answer
            };
        }
        let mut builder = http::Request::builder()
            .method(c.method)
            .uri(format!("http://{}{}", conn.addr, c.path));
        for (name, value) in &c.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let Ok(request) = builder.body(()) else {
            answer.outcome = "not sent (the h2 client refused the request)".into();
            return answer;
        };
        let end_now = c.end && c.frames.is_empty();
        let (response, mut stream) = match conn.send.send_request(request, end_now) {
            Ok(sent) => sent,
            Err(e) => {
                let (outcome, broken) = h2_outcome(&e);
                return Answer {
                    outcome,
                    broken,
                    ..answer
                };
            }
        };
        let n = c.frames.len();
        for (i, frame) in c.frames.into_iter().enumerate() {
            // The server may answer and close the stream before it has read everything.
            if stream.send_data(frame, c.end && i + 1 == n).is_err() {
                break;
            }
        }
        let (head, mut body) = match response.await {
            Ok(response) => response.into_parts(),
            Err(e) => {
                let (outcome, broken) = h2_outcome(&e);
                return Answer {
                    outcome,
                    broken,
                    ..answer
                };
            }
        };
        if let Some(code) = head.headers.get("grpc-status") {
            // Trailers-only: a call that failed (or ended) without a message.
            answer.outcome = code_name(code.as_bytes());
            answer.message = grpc_message(&head.headers);
            return answer;
        }
        if head.status != http::StatusCode::OK {
            answer.outcome = format!("HTTP {}", head.status.as_u16());
            return answer;
        }
        let listen_until = match c.shape {
            Shape::Unary => None,
            Shape::Stream(d) => Some(tokio::time::Instant::now() + d),
        };
        let keep = if listen_until.is_some() { 4 } else { usize::MAX };
        let mut buf = BytesMut::new();
        loop {
            let next = match listen_until {
                None => body.data().await,
                Some(until) => match tokio::time::timeout_at(until, body.data()).await {
                    Ok(next) => next,
                    Err(_) => {
                        answer.outcome = "OK (stream still open)".into();
                        return answer;
                    }
                },
            };
            match next {
                Some(Ok(chunk)) => {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    buf.extend_from_slice(&chunk);
                    take_messages(&mut buf, &mut answer.messages, &mut answer.count, keep);
                }
                Some(Err(e)) => {
                    let (outcome, broken) = h2_outcome(&e);
                    return Answer {
                        outcome,
                        broken,
                        ..answer
                    };
                }
                None => break,
            }
        }
        match body.trailers().await {
            Ok(Some(trailers)) => {
                answer.outcome = trailers
                    .get("grpc-status")
                    .map_or("no grpc-status".into(), |c| code_name(c.as_bytes()));
                answer.message = grpc_message(&trailers);
            }
            Ok(None) => answer.outcome = "ended without trailers".into(),
            Err(e) => {
                let (outcome, broken) = h2_outcome(&e);
                answer.outcome = outcome;
                answer.broken = broken;
            }
        }
        drop(stream);
        answer
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(answer) => answer,
        Err(_) => Answer {
            outcome: "no answer in time (client timeout)".into(),
            ..Answer::default()
        },
    }
}

/// The outcome, with the gist of the message for the codes that say least by themselves
/// (Internal, Unknown), digits left out so that like answers count together.
fn outcome_with_reason(answer: &Answer) -> String {
    if answer.outcome != "Internal" && answer.outcome != "Unknown" {
        return answer.outcome.clone();
    }
    let mut message = String::new();
    let bytes = answer.message.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&answer.message[i + 1..i + 3], 16) {
                message.push(b as char);
                i += 3;
                continue;
            }
        }
        message.push(bytes[i] as char);
        i += 1;
    }
    // The usual refusals of bytes that are not one well-formed message, in a few buckets; anything
    // else keeps its gist, digits left out.
    let bucket = if message.starts_with("failed to decode Protobuf message") {
        "undecodable message".to_string()
    } else if message.contains("compression flag") || message.contains("compressed-flag") {
        "bad compression flag".to_string()
    } else if message.starts_with("Missing request message") {
        "no message".to_string()
    } else if message.starts_with("Unexpected EOF") {
        "truncated message".to_string()
    } else if message.contains("not exactly one message") || message.contains("cardinality violation") {
        "not exactly one message".to_string()
    } else {
        message
            .split(": ")
            .take(2)
            .collect::<Vec<_>>()
            .join(": ")
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .take(70)
            .collect()
    };
    format!("{} ({})", answer.outcome, bucket.trim())
}

fn grpc_message(headers: &http::HeaderMap) -> String {
    headers
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default()
}

/// A gRPC frame: the uncompressed flag, the length, the message.
fn frame(message: &[u8]) -> Bytes {
    let mut f = BytesMut::with_capacity(5 + message.len());
    f.put_u8(0);
    f.put_u32(message.len() as u32);
    f.put_slice(message);
    f.freeze()
}

/// A typed unary call, for the set-up, the janitor and the final checks.
async fn unary<Q: prost::Message, A: prost::Message + Default>(addr: &str, m: M, request: &Q) -> Result<A, String> {
    let mut conn = Conn::open(addr).await?;
    let answer = call(
        &mut conn,
        Call::grpc(
            path_of(m),
            vec![frame(&request.encode_to_vec())],
            Shape::Unary,
            Duration::from_secs(15),
        ),
    )
    .await;
    if answer.outcome != "OK" {
        return Err(format!("{:?} on {addr}: {} {}", m, answer.outcome, answer.message));
    }
    let message = answer
        .messages
        .into_iter()
        .next()
        .ok_or_else(|| format!("{m:?} on {addr}: no message"))?;
    A::decode(message).map_err(|e| format!("{m:?} on {addr}: undecodable answer: {e}"))
}

/// Only the header of an answer: every etcd, Lock and Election response has it as field 1.
#[derive(Clone, PartialEq, prost::Message)]
struct HeaderOnly {
    #[prost(message, optional, tag = "1")]
    header: Option<pb::ResponseHeader>,
}

// ---------------------------------------------------------------------------------------------
// Extreme values
// ---------------------------------------------------------------------------------------------

fn i64x(r: &mut Rng, sh: &Shared) -> i64 {
    let rev = sh.rev();
    let compacted = sh.compacted.load(Relaxed);
    match r.below(20) {
        0..=2 => 0,
        3 => 1,
        4 => -1,
        5 => i64::MIN,
        6 => i64::MAX,
        7 => i64::MIN + 1,
        8 => i64::MAX - 1,
        9 => rev,
        10 => rev + 1,
        11 => rev - 1,
        12 => rev + 1_000_000,
        13 => compacted,
        14 => compacted - 1,
        15 => 1 << 32,
        16 => -(1 << 40),
        17 => i64::from(u32::MAX),
        _ => r.below(rev.max(1) as u64 + 10) as i64,
    }
}

/// Zero most of the time (a field left out), else an extreme value.
fn mostly_zero(r: &mut Rng, sh: &Shared, percent_zero: u64) -> i64 {
    if r.chance(percent_zero) {
        0
    } else {
        i64x(r, sh)
    }
}

fn u64x(r: &mut Rng, sh: &Shared) -> u64 {
    match r.below(12) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => i64::MAX as u64,
        4 => 1 << 63,
        5 => r.pick(&sh.member_ids),
        6 => sh.added.lock().unwrap().first().copied().unwrap_or(7),
        _ => r.next(),
    }
}

/// An enum field: mostly a known value, sometimes one no enum has.
fn enumx(r: &mut Rng, known: u64) -> i32 {
    match r.below(12) {
        0 => -1,
        1 => i32::MIN,
        2 => i32::MAX,
        3 => known as i32,
        4 => r.next() as i32,
        _ => r.below(known) as i32,
    }
}

/// Sizes around the members' request limit (and gRPC's 4 MiB default for the other services).
fn big_len(r: &mut Rng) -> usize {
    r.pick(&[
        MAX_REQUEST_BYTES - 64,
        MAX_REQUEST_BYTES - 8,
        MAX_REQUEST_BYTES,
        MAX_REQUEST_BYTES + 1,
        2 * MAX_REQUEST_BYTES,
        (4 << 20) + 16,
    ])
}

fn fuzz_key(r: &mut Rng) -> Vec<u8> {
    let mut key = PREFIX.to_vec();
    match r.below(8) {
        0 => key.extend(r.some_bytes(1, 8)),
        1 => {}
        2 => key.extend_from_slice(b"\0"),
        3 => key.extend_from_slice(&[0xff, 0xff]),
        _ => key.extend(format!("k{}", r.below(64)).bytes()),
    }
    key
}

/// A key to read: anything at all.
fn read_key(r: &mut Rng, big: bool) -> Vec<u8> {
    match r.below(18) {
        0 => vec![],
        1 => vec![0],
        2 => vec![0, 0],
        3 => vec![0xff],
        4 => vec![0xff; 3],
        5 => format!("data/{:04}", r.below(220)).into_bytes(),
        6 => b"data/".to_vec(),
        7 => PREFIX.to_vec(),
        8 => r.some_bytes(1, 16),
        9 if big && r.chance(10) => vec![b'k'; big_len(r)],
        10 => "ключ/🔑".as_bytes().to_vec(),
        11 => b"health".to_vec(),
        12 => vec![b'k'; 1 + r.upto(4096)],
        _ => fuzz_key(r),
    }
}

/// A key to write: under the fuzz prefix, or empty (which must be refused).
fn write_key(r: &mut Rng, big: bool) -> Vec<u8> {
    match r.below(20) {
        0 => vec![],
        1 if big && r.chance(15) => {
            let mut key = PREFIX.to_vec();
            key.resize(big_len(r), b'x');
            key
        }
        _ => fuzz_key(r),
    }
}

fn range_end(r: &mut Rng, key: &[u8]) -> Vec<u8> {
    match r.below(11) {
        0..=2 => vec![],
        3 => vec![0],
        4 => prefix_end(key),
        // Reversed: before the key.
        5 => key.iter().take(1).map(|b| b.saturating_sub(1)).collect(),
        6 => key.to_vec(),
        7 => vec![0xff],
        8 => [key, b"\0"].concat(),
        9 => vec![0, 0],
        _ => r.some_bytes(1, 8),
    }
}

fn value(r: &mut Rng, big: bool) -> Vec<u8> {
    match r.below(12) {
        0 => vec![],
        1 if big && r.chance(20) => vec![0xAB; big_len(r)],
        2 => r.some_bytes(0, 4096),
        _ => r.some_bytes(0, 32),
    }
}

fn name(r: &mut Rng) -> String {
    match r.below(12) {
        0 => String::new(),
        1 => "alice".into(),
        2 => "root".into(),
        3 => "not-root".into(),
        4 => "\0".into(),
        5 => "ユーザー/役割".into(),
        6 if r.chance(20) => "n".repeat(big_len(r)),
        7 => "n".repeat(300),
        _ => format!("u{}", r.below(16)),
    }
}

fn password(r: &mut Rng) -> String {
    match r.below(8) {
        0 => String::new(),
        1 => "a".repeat(72),
        2 => "a".repeat(73),
        3 if r.chance(20) => "p".repeat(1 << 20),
        _ => format!("pw{}", r.below(1000)),
    }
}

/// Short, printable: for the report.
fn show(bytes: &[u8]) -> String {
    if bytes.len() > 24 {
        format!("<{} bytes>", bytes.len())
    } else {
        format!("{:?}", bytes.escape_ascii().to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Well-formed messages with extreme fields
// ---------------------------------------------------------------------------------------------

fn range_request(r: &mut Rng, sh: &Shared) -> pb::RangeRequest {
    let key = read_key(r, true);
    pb::RangeRequest {
        range_end: range_end(r, &key),
        key,
        limit: mostly_zero(r, sh, 50),
        revision: mostly_zero(r, sh, 50),
        sort_order: if r.chance(70) { 0 } else { enumx(r, 3) },
        sort_target: if r.chance(70) { 0 } else { enumx(r, 5) },
        serializable: r.flag(),
        keys_only: r.chance(20),
        count_only: r.chance(20),
        min_mod_revision: mostly_zero(r, sh, 80),
        max_mod_revision: mostly_zero(r, sh, 80),
        min_create_revision: mostly_zero(r, sh, 80),
        max_create_revision: mostly_zero(r, sh, 80),
    }
}

fn put_request(r: &mut Rng, sh: &Shared) -> pb::PutRequest {
    pb::PutRequest {
        key: write_key(r, true),
        value: value(r, true),
        lease: if r.chance(60) { 0 } else { sh.lease(r) },
        prev_kv: r.flag(),
        ignore_value: r.chance(10),
        ignore_lease: r.chance(10),
    }
}

fn delete_request(r: &mut Rng) -> pb::DeleteRangeRequest {
    let key = write_key(r, false);
    pb::DeleteRangeRequest {
        range_end: range_end(r, &key),
        key,
        prev_kv: r.flag(),
    }
}

fn compare(r: &mut Rng, sh: &Shared) -> pb::Compare {
    let key = if r.chance(95) { read_key(r, false) } else { vec![] };
    pb::Compare {
        result: enumx(r, 4),
        target: enumx(r, 5),
        range_end: if r.chance(70) { vec![] } else { range_end(r, &key) },
        key,
        target_union: match r.below(6) {
            0 => None,
            1 => Some(TargetUnion::Version(i64x(r, sh))),
            2 => Some(TargetUnion::CreateRevision(i64x(r, sh))),
            3 => Some(TargetUnion::ModRevision(i64x(r, sh))),
            4 => Some(TargetUnion::Value(value(r, false))),
            _ => Some(TargetUnion::Lease(sh.lease(r))),
        },
    }
}

fn request_op(r: &mut Rng, sh: &Shared, depth: usize) -> pb::RequestOp {
    let request = match r.below(if depth > 0 { 9 } else { 8 }) {
        0..=2 => Some(Op::RequestRange(range_request(r, sh))),
        3..=5 => Some(Op::RequestPut(put_request(r, sh))),
        6 => Some(Op::RequestDeleteRange(delete_request(r))),
        7 => None,
        _ => Some(Op::RequestTxn(txn_tree(r, sh, depth - 1))),
    };
    pb::RequestOp { request }
}

fn count(r: &mut Rng) -> usize {
    match r.below(10) {
        0..=2 => 0,
        3..=7 => 1 + r.upto(2),
        _ => r.upto(8),
    }
}

fn txn_tree(r: &mut Rng, sh: &Shared, depth: usize) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: (0..count(r)).map(|_| compare(r, sh)).collect(),
        success: (0..count(r)).map(|_| request_op(r, sh, depth)).collect(),
        failure: (0..count(r)).map(|_| request_op(r, sh, depth)).collect(),
    }
}

fn put_op(key: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestPut(pb::PutRequest {
            key,
            value: b"v".to_vec(),
            ..Default::default()
        })),
    }
}

fn range_op(key: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Op::RequestRange(pb::RangeRequest {
            key,
            ..Default::default()
        })),
    }
}

/// A chain of `depth` txns, each the only success op of the one around it; the innermost puts,
/// reads or deletes.
fn deep_txn(r: &mut Rng, sh: &Shared, depth: usize, inner: u64) -> pb::TxnRequest {
    let key = format!("fuzz/deep/{depth}").into_bytes();
    let innermost = match inner {
        0 => put_op(key),
        1 => range_op(key),
        _ => pb::RequestOp {
            request: Some(Op::RequestDeleteRange(pb::DeleteRangeRequest {
                key,
                ..Default::default()
            })),
        },
    };
    let mut txn = pb::TxnRequest {
        compare: vec![],
        success: vec![innermost],
        failure: vec![],
    };
    for _ in 1..depth {
        txn = pb::TxnRequest {
            compare: if r.chance(20) { vec![compare(r, sh)] } else { vec![] },
            success: vec![pb::RequestOp {
                request: Some(Op::RequestTxn(txn)),
            }],
            failure: if r.chance(20) {
                vec![range_op(b"data/0001".to_vec())]
            } else {
                vec![]
            },
        };
    }
    txn
}

/// Txn branches and compares with counts around `--max-txn-ops`.
fn wide_txn(r: &mut Rng, sh: &Shared) -> (pb::TxnRequest, String) {
    let n = r.pick(&[MAX_TXN_OPS - 1, MAX_TXN_OPS, MAX_TXN_OPS + 1, 2 * MAX_TXN_OPS, 1000]);
    let ops = |r: &mut Rng, tag: &str| -> Vec<pb::RequestOp> {
        (0..n)
            .map(|i| match r.below(4) {
                0 => range_op(format!("fuzz/w/{i}").into_bytes()),
                _ => put_op(format!("fuzz/w/{tag}{i}").into_bytes()),
            })
            .collect()
    };
    let mut txn = pb::TxnRequest::default();
    let which = r.below(4);
    match which {
        0 => txn.compare = (0..n).map(|_| compare(r, sh)).collect(),
        1 => txn.success = ops(r, "s"),
        2 => txn.failure = ops(r, "f"),
        _ => {
            // As wide as allowed, nested: each op of the branch is itself a wide txn (a large
            // message that stays under the request limit).
            let width = n.min(40);
            txn.success = (0..width)
                .map(|i| pb::RequestOp {
                    request: Some(Op::RequestTxn(pb::TxnRequest {
                        compare: vec![],
                        success: (0..width)
                            .map(|j| range_op(format!("fuzz/n/{i}/{j}").into_bytes()))
                            .collect(),
                        failure: (0..width)
                            .map(|j| put_op(format!("fuzz/n/{i}/{j}").into_bytes()))
                            .collect(),
                    })),
                })
                .collect();
        }
    }
    (
        txn,
        format!(
            "wide txn: {n} {}",
            ["compares", "success ops", "failure ops", "nested txns of txns"][which as usize]
        ),
    )
}

fn txn_request(r: &mut Rng, sh: &Shared) -> (pb::TxnRequest, String) {
    match r.below(100) {
        0..=14 => {
            let depths: Vec<usize> = [1, 2, 3, 10, 30, 47, 48, 49, 50, 51, 64, 99, 100, 101, 150, 200]
                .into_iter()
                .filter(|d| *d <= sh.cfg.max_depth)
                .collect();
            let depth = r.pick(&depths);
            let inner = r.below(3);
            let txn = deep_txn(r, sh, depth, inner);
            (
                txn,
                format!(
                    "nested txn, depth {depth}, innermost {}",
                    ["put", "range", "delete"][inner as usize]
                ),
            )
        }
        15..=24 => wide_txn(r, sh),
        _ => {
            let depth = r.upto(3);
            (
                txn_tree(r, sh, depth),
                format!("random txn tree, depth <= {}", depth + 1),
            )
        }
    }
}

fn watch_create(r: &mut Rng, sh: &Shared) -> pb::WatchCreateRequest {
    let rev = sh.rev();
    let key = if r.chance(10) {
        vec![0]
    } else {
        {
            let big = r.chance(5);
            read_key(r, big)
        }
    };
    pb::WatchCreateRequest {
        range_end: if r.chance(10) { vec![0] } else { range_end(r, &key) },
        key,
        start_revision: match r.below(10) {
            0..=2 => 0,
            3 => 1,
            4 => sh.compacted.load(Relaxed) - 1,
            5 => rev + 10,
            6 => i64::MAX,
            7 => -1,
            8 => i64::MIN,
            _ => i64x(r, sh),
        },
        progress_notify: r.flag(),
        filters: match r.below(8) {
            0 | 1 => vec![],
            2 => vec![0],
            3 => vec![1],
            4 => vec![0, 1],
            5 => vec![-1, 99, i32::MIN, i32::MAX],
            6 => vec![0; 10_000],
            _ => (0..r.upto(4)).map(|_| r.next() as i32).collect(),
        },
        prev_kv: r.flag(),
        watch_id: match r.below(10) {
            0..=4 => 0,
            5 => -1,
            6 => i64::MAX,
            7 => i64::MIN,
            _ => r.below(4) as i64,
        },
        fragment: r.flag(),
    }
}

fn watch_request(r: &mut Rng, sh: &Shared) -> pb::WatchRequest {
    let request_union = match r.below(10) {
        0..=5 => Some(RequestUnion::CreateRequest(watch_create(r, sh))),
        6 | 7 => Some(RequestUnion::CancelRequest(pb::WatchCancelRequest {
            watch_id: if r.flag() { r.below(4) as i64 } else { i64x(r, sh) },
        })),
        8 => Some(RequestUnion::ProgressRequest(pb::WatchProgressRequest {})),
        _ => None,
    };
    pb::WatchRequest { request_union }
}

/// Peer URLs: ones a member must refuse (no scheme, no host, no port with a duplicate beside it,
/// ...), and ones it accepts that point at the cluster's own ports with the wrong service or do
/// not parse (see [`accepted_bad_urls`]).
fn peer_urls(r: &mut Rng, sh: &Shared) -> Vec<String> {
    let n = match r.below(10) {
        0 => 0,
        1 => 3,
        _ => 1,
    };
    (0..n)
        .map(|_| match r.below(15) {
            0 => "127.0.0.1:2380".to_string(),
            1 => String::new(),
            2 => "http://".into(),
            3 => "https://".into(),
            4 => "unix:///tmp/concord-fuzz.sock".into(),
            5 => "HTTP://127.0.0.1:2380".into(),
            6 => "http://127.0.0.1".into(),
            7 => "ftp://127.0.0.1:21".into(),
            8 => r.pick(&sh.peer_urls),
            9 => String::from_utf8_lossy(&r.some_bytes(1, 30)).into_owned(),
            10 => format!("http://{}", "a".repeat(70_000)),
            11 => "http://[::1".into(),
            12 => r
                .pick(&[
                    "http://127.0.0.1:99999",
                    "http://127.0.0.1:0",
                    "http://127.0.0.1:2380/a/b?c=d#e",
                    "http:// 127.0.0.1",
                    "http://\u{0}",
                    "http://%31%32%37.0.0.1:2380",
                ])
                .to_string(),
            _ => r.pick(&accepted_bad_urls(sh)),
        })
        .collect()
}

/// URLs that pass a member's peer-URL check but name nothing a member can be reached at, all
/// on the cluster's own ports: the wrong service, or another member's client port.
fn accepted_bad_urls(sh: &Shared) -> Vec<String> {
    let port = |addr: &String| addr.rsplit(':').next().unwrap_or("1").to_string();
    let client = port(&sh.client_addrs[0]);
    let other_client = port(&sh.client_addrs[1 % sh.client_addrs.len()]);
    let candidates = [
        format!("http://127.0.0.1:{client}"),
        format!("https://127.0.0.1:{other_client}"),
        format!("http://user:pw@127.0.0.1:{client}"),
        format!("http://[::ffff:127.0.0.1]:{other_client}"),
        format!("HTTP://127.0.0.1:{client}"),
    ];
    candidates
        .into_iter()
        .filter(|u| urls_pass(std::slice::from_ref(u)))
        .collect()
}

fn structured(m: M, r: &mut Rng, sh: &Shared) -> (Vec<u8>, String) {
    fn enc(m: &impl prost::Message) -> Vec<u8> {
        m.encode_to_vec()
    }
    match m {
        Range => {
            let q = range_request(r, sh);
            let d = format!(
                "key={} end={} rev={} limit={}",
                show(&q.key),
                show(&q.range_end),
                q.revision,
                q.limit
            );
            (enc(&q), d)
        }
        Put => {
            let q = put_request(r, sh);
            let d = format!("key={} value=<{} bytes> lease={}", show(&q.key), q.value.len(), q.lease);
            (enc(&q), d)
        }
        DeleteRange => {
            let q = delete_request(r);
            let d = format!("key={} end={}", show(&q.key), show(&q.range_end));
            (enc(&q), d)
        }
        Txn => {
            let (q, d) = txn_request(r, sh);
            (enc(&q), d)
        }
        Compact => {
            let q = pb::CompactionRequest {
                revision: i64x(r, sh),
                physical: r.flag(),
            };
            let d = format!("revision={}", q.revision);
            (enc(&q), d)
        }
        Watch => {
            let q = watch_request(r, sh);
            let d = match &q.request_union {
                Some(RequestUnion::CreateRequest(c)) => format!(
                    "create key={} end={} from={} id={}",
                    show(&c.key),
                    show(&c.range_end),
                    c.start_revision,
                    c.watch_id
                ),
                Some(RequestUnion::CancelRequest(c)) => format!("cancel {}", c.watch_id),
                Some(RequestUnion::ProgressRequest(_)) => "progress".into(),
                None => "empty".into(),
            };
            (enc(&q), d)
        }
        LeaseGrant => {
            let ttl = r.pick(&[0, 1, -1, 5, 60, 9_000_000_000, 9_000_000_001, i64::MAX, i64::MIN]);
            let id = match r.below(6) {
                0..=2 => 0,
                _ => i64x(r, sh),
            };
            (enc(&pb::LeaseGrantRequest { ttl, id }), format!("ttl={ttl} id={id}"))
        }
        LeaseRevoke => {
            let id = sh.lease(r);
            (enc(&pb::LeaseRevokeRequest { id }), format!("id={id}"))
        }
        LeaseKeepAlive => {
            let id = sh.lease(r);
            (enc(&pb::LeaseKeepAliveRequest { id }), format!("id={id}"))
        }
        LeaseTimeToLive => {
            let q = pb::LeaseTimeToLiveRequest {
                id: sh.lease(r),
                keys: r.flag(),
            };
            let d = format!("id={} keys={}", q.id, q.keys);
            (enc(&q), d)
        }
        LeaseLeases => (enc(&pb::LeaseLeasesRequest {}), String::new()),
        MemberAdd => {
            let q = pb::MemberAddRequest {
                peer_ur_ls: peer_urls(r, sh),
                is_learner: r.chance(60),
            };
            let d = format!(
                "urls={:?} learner={}",
                q.peer_ur_ls.iter().map(|u| show(u.as_bytes())).collect::<Vec<_>>(),
                q.is_learner
            );
            (enc(&q), d)
        }
        MemberRemove => {
            let id = u64x(r, sh);
            (enc(&pb::MemberRemoveRequest { id }), format!("id={id:x}"))
        }
        MemberUpdate => {
            let q = pb::MemberUpdateRequest {
                id: u64x(r, sh),
                peer_ur_ls: peer_urls(r, sh),
            };
            let d = format!(
                "id={:x} urls={:?}",
                q.id,
                q.peer_ur_ls.iter().map(|u| show(u.as_bytes())).collect::<Vec<_>>()
            );
            (enc(&q), d)
        }
        MemberList => (enc(&pb::MemberListRequest { linearizable: r.flag() }), String::new()),
        MemberPromote => {
            let id = u64x(r, sh);
            (enc(&pb::MemberPromoteRequest { id }), format!("id={id:x}"))
        }
        Alarm => {
            let q = pb::AlarmRequest {
                action: enumx(r, 3),
                member_id: u64x(r, sh),
                alarm: enumx(r, 3),
            };
            let d = format!("action={} member={:x} alarm={}", q.action, q.member_id, q.alarm);
            (enc(&q), d)
        }
        Status => (enc(&pb::StatusRequest {}), String::new()),
        Defragment => (enc(&pb::DefragmentRequest {}), String::new()),
        Hash => (enc(&pb::HashRequest {}), String::new()),
        HashKv => {
            let revision = i64x(r, sh);
            (enc(&pb::HashKvRequest { revision }), format!("revision={revision}"))
        }
        Snapshot => (enc(&pb::SnapshotRequest {}), String::new()),
        MoveLeader => {
            let target_id = if r.chance(30) {
                r.pick(&sh.member_ids)
            } else {
                u64x(r, sh)
            };
            (
                enc(&pb::MoveLeaderRequest { target_id }),
                format!("target={target_id:x}"),
            )
        }
        Downgrade => {
            let q = pb::DowngradeRequest {
                action: enumx(r, 3),
                version: r.pick(&["", "3.4.0", "3.5", "999.0.0", "x.y.z"]).to_string(),
            };
            (enc(&q), format!("action={}", q.action))
        }
        AuthEnable => (enc(&pb::AuthEnableRequest {}), String::new()),
        AuthDisable => (enc(&pb::AuthDisableRequest {}), String::new()),
        AuthStatus => (enc(&pb::AuthStatusRequest {}), String::new()),
        Authenticate => {
            let q = pb::AuthenticateRequest {
                name: name(r),
                password: password(r),
            };
            (enc(&q), format!("name={}", show(q.name.as_bytes())))
        }
        UserAdd => {
            let q = pb::AuthUserAddRequest {
                name: name(r),
                password: password(r),
                options: if r.flag() {
                    Some(authpb::UserAddOptions { no_password: r.flag() })
                } else {
                    None
                },
                hashed_password: if r.chance(20) {
                    "JDJhJDEwJGdhcmJhZ2U=".into()
                } else {
                    String::new()
                },
            };
            (
                enc(&q),
                format!("name={} password=<{} bytes>", show(q.name.as_bytes()), q.password.len()),
            )
        }
        UserGet => (enc(&pb::AuthUserGetRequest { name: name(r) }), String::new()),
        UserList => (enc(&pb::AuthUserListRequest {}), String::new()),
        UserDelete => (enc(&pb::AuthUserDeleteRequest { name: name(r) }), String::new()),
        UserChangePassword => {
            let q = pb::AuthUserChangePasswordRequest {
                name: name(r),
                password: password(r),
                hashed_password: String::new(),
            };
            (enc(&q), format!("name={}", show(q.name.as_bytes())))
        }
        UserGrantRole => (
            enc(&pb::AuthUserGrantRoleRequest {
                user: name(r),
                role: name(r),
            }),
            String::new(),
        ),
        UserRevokeRole => (
            enc(&pb::AuthUserRevokeRoleRequest {
                name: name(r),
                role: name(r),
            }),
            String::new(),
        ),
        RoleAdd => (enc(&pb::AuthRoleAddRequest { name: name(r) }), String::new()),
        RoleGet => (enc(&pb::AuthRoleGetRequest { role: name(r) }), String::new()),
        RoleList => (enc(&pb::AuthRoleListRequest {}), String::new()),
        RoleDelete => (enc(&pb::AuthRoleDeleteRequest { role: name(r) }), String::new()),
        RoleGrantPermission => {
            let key = read_key(r, false);
            let perm = authpb::Permission {
                perm_type: enumx(r, 3),
                range_end: range_end(r, &key),
                key,
            };
            let d = format!(
                "type={} key={} end={}",
                perm.perm_type,
                show(&perm.key),
                show(&perm.range_end)
            );
            (
                enc(&pb::AuthRoleGrantPermissionRequest {
                    name: name(r),
                    perm: if r.chance(90) { Some(perm) } else { None },
                }),
                d,
            )
        }
        RoleRevokePermission => {
            let key = read_key(r, false);
            (
                enc(&pb::AuthRoleRevokePermissionRequest {
                    role: name(r),
                    range_end: range_end(r, &key),
                    key,
                }),
                String::new(),
            )
        }
        Lock => {
            let q = lk::LockRequest {
                name: lock_name(r, "lock"),
                lease: if r.chance(40) { 0 } else { sh.lease(r) },
            };
            let d = format!("name={} lease={}", show(&q.name), q.lease);
            (enc(&q), d)
        }
        Unlock => {
            let pool = sh.lock_keys.lock().unwrap().clone();
            let key = if !pool.is_empty() && r.chance(50) {
                r.pick(&pool)
            } else {
                write_key(r, false)
            };
            let d = format!("key={}", show(&key));
            (enc(&lk::UnlockRequest { key }), d)
        }
        Campaign => {
            let q = el::CampaignRequest {
                name: lock_name(r, "election"),
                lease: if r.chance(40) { 0 } else { sh.lease(r) },
                value: value(r, true),
            };
            let d = format!("name={} lease={}", show(&q.name), q.lease);
            (enc(&q), d)
        }
        Proclaim => {
            let leader = leader_key(r, sh);
            let d = format!("key={} rev={} lease={}", show(&leader.key), leader.rev, leader.lease);
            (
                enc(&el::ProclaimRequest {
                    leader: if r.chance(95) { Some(leader) } else { None },
                    value: value(r, true),
                }),
                d,
            )
        }
        Leader | Observe => {
            let name = if r.flag() {
                lock_name(r, "election")
            } else {
                read_key(r, false)
            };
            let d = format!("name={}", show(&name));
            (enc(&el::LeaderRequest { name }), d)
        }
        Resign => {
            let leader = leader_key(r, sh);
            let d = format!("key={} rev={}", show(&leader.key), leader.rev);
            (
                enc(&el::ResignRequest {
                    leader: if r.chance(95) { Some(leader) } else { None },
                }),
                d,
            )
        }
    }
}

fn lock_name(r: &mut Rng, kind: &str) -> Vec<u8> {
    match r.below(10) {
        0 => vec![],
        1 => [PREFIX, &r.some_bytes(1, 8)].concat(),
        2 if r.chance(20) => [PREFIX, &vec![b'n'; big_len(r)]].concat(),
        _ => format!("fuzz/{kind}/{}", r.below(4)).into_bytes(),
    }
}

fn leader_key(r: &mut Rng, sh: &Shared) -> el::LeaderKey {
    let pool = sh.leaders.lock().unwrap().clone();
    if !pool.is_empty() && r.chance(50) {
        let mut leader = r.pick(&pool);
        if r.chance(30) {
            leader.rev = i64x(r, sh);
        }
        return leader;
    }
    el::LeaderKey {
        name: lock_name(r, "election"),
        key: if r.chance(15) { vec![] } else { write_key(r, false) },
        rev: i64x(r, sh),
        lease: if r.chance(40) { 0 } else { sh.lease(r) },
    }
}

/// Random edits of an encoded message.
fn mutate(bytes: &mut Vec<u8>, r: &mut Rng) {
    for _ in 0..1 + r.upto(6) {
        let at = r.upto(bytes.len());
        match r.below(7) {
            0 if at < bytes.len() => bytes[at] = r.next() as u8,
            1 => bytes.insert(at, r.next() as u8),
            2 if at < bytes.len() => {
                bytes.remove(at);
            }
            3 => bytes.truncate(at),
            4 => {
                // A varint as long as they go.
                for (i, b) in [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
                    .into_iter()
                    .enumerate()
                {
                    bytes.insert(at + i, b);
                }
            }
            5 => {
                let end = (at + 1 + r.upto(16)).min(bytes.len());
                let chunk = bytes[at.min(end)..end].to_vec();
                bytes.splice(at..at, chunk);
            }
            _ => bytes.insert(at, r.pick(&[0x08, 0x0a, 0x12, 0x1a, 0x22, 0x7a, 0xff])),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Keeping the run safe: writes under the prefix, real members untouched, no root user
// ---------------------------------------------------------------------------------------------

fn under_prefix(key: &mut Vec<u8>) -> bool {
    if key.is_empty() || key.starts_with(PREFIX) {
        return false;
    }
    let mut fixed = PREFIX.to_vec();
    fixed.extend_from_slice(key);
    *key = fixed;
    true
}

fn name_under_prefix(name: &mut Vec<u8>) -> bool {
    if name.starts_with(PREFIX) {
        return false;
    }
    let mut fixed = PREFIX.to_vec();
    fixed.extend_from_slice(name);
    *name = fixed;
    true
}

fn txn_under_prefix(txn: &mut pb::TxnRequest) -> bool {
    let mut changed = false;
    for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
        changed |= match &mut op.request {
            Some(Op::RequestPut(put)) => under_prefix(&mut put.key),
            Some(Op::RequestDeleteRange(delete)) => under_prefix(&mut delete.key),
            Some(Op::RequestTxn(nested)) => txn_under_prefix(nested),
            _ => false,
        };
    }
    changed
}

/// Whether a member's peer-URL check lets `urls` through: the member's own check.
fn urls_pass(urls: &[String]) -> bool {
    concord_server::peer_urls::check(urls).is_ok()
}

/// Peer URLs a member would accept are replaced by ones that lead nowhere outside the cluster,
/// and a member added with them is a learner (it never counts toward the quorum).
fn member_add_safe(q: &mut pb::MemberAddRequest, sh: &Shared) -> bool {
    if !urls_pass(&q.peer_ur_ls) || q.peer_ur_ls.iter().any(|u| sh.peer_urls.contains(u)) {
        return false;
    }
    let bad = accepted_bad_urls(sh);
    let safe = q.peer_ur_ls.iter().all(|u| bad.contains(u));
    if safe && q.is_learner {
        return false;
    }
    q.is_learner = true;
    if !safe {
        q.peer_ur_ls = vec![bad[q.peer_ur_ls.len() % bad.len()].clone()];
    }
    true
}

fn real_member(id: &mut u64, sh: &Shared) -> bool {
    if sh.member_ids.contains(id) {
        *id ^= 0x5a5a;
        return true;
    }
    false
}

/// Rewrites the message the server will decode from `bytes` when it would write outside the
/// fuzz prefix, remove or re-address a real member, or create a `root` user; otherwise (and when
/// it does not decode at all) leaves the bytes as they are.
fn make_safe(m: M, bytes: Vec<u8>, sh: &Shared) -> Vec<u8> {
    fn fix<T: prost::Message + Default>(bytes: Vec<u8>, f: impl FnOnce(&mut T) -> bool) -> Vec<u8> {
        let Ok(mut message) = T::decode(bytes.as_slice()) else {
            return bytes;
        };
        if f(&mut message) {
            message.encode_to_vec()
        } else {
            bytes
        }
    }
    match m {
        Put => fix::<pb::PutRequest>(bytes, |q| under_prefix(&mut q.key)),
        DeleteRange => fix::<pb::DeleteRangeRequest>(bytes, |q| under_prefix(&mut q.key)),
        Txn => fix::<pb::TxnRequest>(bytes, txn_under_prefix),
        Lock => fix::<lk::LockRequest>(bytes, |q| name_under_prefix(&mut q.name)),
        Unlock => fix::<lk::UnlockRequest>(bytes, |q| under_prefix(&mut q.key)),
        Campaign => fix::<el::CampaignRequest>(bytes, |q| name_under_prefix(&mut q.name)),
        Proclaim => fix::<el::ProclaimRequest>(bytes, |q| q.leader.as_mut().is_some_and(|l| under_prefix(&mut l.key))),
        Resign => fix::<el::ResignRequest>(bytes, |q| q.leader.as_mut().is_some_and(|l| under_prefix(&mut l.key))),
        UserAdd => fix::<pb::AuthUserAddRequest>(bytes, |q| {
            let root = q.name == "root";
            if root {
                q.name = "not-root".into();
            }
            root
        }),
        MemberAdd => fix::<pb::MemberAddRequest>(bytes, |q| member_add_safe(q, sh)),
        MemberRemove => fix::<pb::MemberRemoveRequest>(bytes, |q| real_member(&mut q.id, sh)),
        MemberUpdate => fix::<pb::MemberUpdateRequest>(bytes, |q| {
            let mut changed = real_member(&mut q.id, sh);
            if sh.added.lock().unwrap().contains(&q.id) && urls_pass(&q.peer_ur_ls) {
                let bad = accepted_bad_urls(sh);
                if !q.peer_ur_ls.iter().all(|u| bad.contains(u)) {
                    q.peer_ur_ls = vec![bad[0].clone()];
                    changed = true;
                }
            }
            changed
        }),
        _ => bytes,
    }
}

// ---------------------------------------------------------------------------------------------
// Framing: how the messages are put on the wire
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Framing {
    Normal,
    /// A length prefix far beyond what follows (and beyond every limit).
    HugeLength(u32),
    /// A length prefix shorter than the message: the server decodes a prefix of it, then the
    /// rest as the next frame.
    ShortLength(usize),
    /// The compressed flag (or another flag) without any `grpc-encoding`.
    Flag(u8),
    /// No frame header at all.
    Bare,
    /// No body.
    Empty,
    /// The frame split into DATA frames of a few bytes.
    Split(usize),
    /// The message followed by random bytes.
    Trailing,
    /// The message twice.
    Twice,
    /// Only part of the frame, then the end of the stream.
    Truncated,
}

fn pick_framing(r: &mut Rng) -> Framing {
    match r.below(100) {
        0..=69 => Framing::Normal,
        70..=73 => Framing::HugeLength(r.pick(&[
            u32::MAX,
            0x7fff_ffff,
            (MAX_REQUEST_BYTES + 1024) as u32,
            (4 << 20) + 1,
            64 << 20,
        ])),
        74..=76 => Framing::ShortLength(1 + r.upto(8)),
        77..=79 => Framing::Flag(r.pick(&[1, 2, 0x80, 0xff])),
        80..=81 => Framing::Bare,
        82..=84 => Framing::Empty,
        85..=89 => Framing::Split(1 + r.upto(7)),
        90..=92 => Framing::Trailing,
        93..=96 => Framing::Twice,
        _ => Framing::Truncated,
    }
}

/// The DATA frames for `messages` framed as `framing`; the message the server decodes first is
/// made safe again where the framing changes which bytes it is.
fn frames_for(m: M, messages: &[Vec<u8>], framing: Framing, r: &mut Rng, sh: &Shared) -> Vec<Bytes> {
    let first = messages.first().cloned().unwrap_or_default();
    let all = || -> Vec<Bytes> { messages.iter().map(|m| frame(m)).collect() };
    match framing {
        Framing::Normal => all(),
        Framing::HugeLength(len) => {
            let mut f = BytesMut::new();
            f.put_u8(0);
            f.put_u32(len);
            f.put_slice(&first);
            vec![f.freeze()]
        }
        Framing::ShortLength(cut) => {
            let keep = first.len().saturating_sub(cut);
            let head = make_safe(m, first[..keep].to_vec(), sh);
            let mut f = BytesMut::from(&frame(&head)[..]);
            f.put_slice(&first[keep..]);
            vec![f.freeze()]
        }
        Framing::Flag(flag) => {
            let mut f = BytesMut::from(&frame(&first)[..]);
            f[0] = flag;
            vec![f.freeze()]
        }
        Framing::Bare => vec![Bytes::from(first)],
        Framing::Empty => vec![],
        Framing::Split(size) => {
            let whole: Vec<u8> = all().iter().flat_map(|f| f.to_vec()).collect();
            whole.chunks(size).map(Bytes::copy_from_slice).collect()
        }
        Framing::Trailing => {
            let mut f = BytesMut::from(&frame(&first)[..]);
            f.put_slice(&r.some_bytes(1, 64));
            vec![f.freeze()]
        }
        Framing::Twice => vec![frame(&first), frame(&first)],
        Framing::Truncated => {
            let f = frame(&first);
            let keep = r.upto(f.len().saturating_sub(1));
            vec![f.slice(..keep)]
        }
    }
}

/// Headers besides the usual ones, now and then.
fn odd_headers(r: &mut Rng) -> (Vec<(String, String)>, &'static str) {
    let mut headers: Vec<(String, String)> = vec![
        ("content-type".into(), "application/grpc".into()),
        ("te".into(), "trailers".into()),
    ];
    let what = match r.below(100) {
        0..=84 => "",
        85 => {
            headers.push(("grpc-encoding".into(), "gzip".into()));
            "grpc-encoding: gzip"
        }
        86 => {
            headers.push(("grpc-encoding".into(), "identity".into()));
            "grpc-encoding: identity"
        }
        87 => {
            headers.push((
                "grpc-timeout".into(),
                r.pick(&["1n", "99999999H", "abc", "-5S", "0m"]).into(),
            ));
            "grpc-timeout"
        }
        88 => {
            headers.push(("token".into(), "not-a-token".into()));
            "token"
        }
        89 => {
            headers.push(("authorization".into(), "Bearer x.y.z".into()));
            "authorization"
        }
        90 => {
            headers[0].1 = "application/grpc+json".into();
            "content-type: application/grpc+json"
        }
        91 => {
            headers[0].1 = "text/plain".into();
            "content-type: text/plain"
        }
        92 => {
            headers.remove(0);
            "no content-type"
        }
        93 => {
            headers.pop();
            "no te"
        }
        94 => {
            headers.push(("x-big".into(), "b".repeat(8 * 1024)));
            "8 KiB header"
        }
        95 => {
            headers.push(("x-big".into(), "b".repeat(96 * 1024)));
            "96 KiB header"
        }
        96 => {
            headers.push(("concord-forwarded".into(), "1".into()));
            "concord-forwarded"
        }
        97 => {
            for i in 0..200 {
                headers.push((format!("x-many-{i}"), "v".into()));
            }
            "200 headers"
        }
        _ => {
            headers.push(("grpc-accept-encoding".into(), "zstd, gzip, br".into()));
            "grpc-accept-encoding"
        }
    };
    (headers, what)
}

// ---------------------------------------------------------------------------------------------
// The actions a worker takes
// ---------------------------------------------------------------------------------------------

/// Streams a worker keeps open on purpose, each with its own connection.
struct Held {
    snapshot: bool,
    _conn: Conn,
    _response: h2::client::ResponseFuture,
    _stream: h2::SendStream<Bytes>,
}

struct Worker {
    r: Rng,
    sh: Arc<Shared>,
    conns: Vec<Option<Conn>>,
    held: VecDeque<Held>,
}

impl Worker {
    async fn conn(&mut self, member: usize) -> Option<&mut Conn> {
        if self.conns[member].is_none() {
            match Conn::open(&self.sh.client_addrs[member]).await {
                Ok(conn) => self.conns[member] = Some(conn),
                Err(e) => {
                    self.sh.record("(connect)", &e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return None;
                }
            }
        }
        self.conns[member].as_mut()
    }

    async fn run(mut self, deadline: Instant) {
        let sh = self.sh.clone();
        while Instant::now() < deadline && !sh.stop.load(Relaxed) && sh.sent.fetch_add(1, Relaxed) < sh.cfg.max_requests
        {
            let member = self.r.below(sh.client_addrs.len() as u64) as usize;
            match self.r.below(1000) {
                0..=11 => self.raw_garbage(member).await,
                12..=29 => self.http_route(member).await,
                30..=37 => self.hold_stream(member).await,
                38..=39 => self.many_watchers(member).await,
                40..=45 => self.unknown_path(member).await,
                _ => {
                    let m = self.pick_method();
                    self.grpc(member, m).await;
                }
            }
        }
    }

    fn pick_method(&mut self) -> M {
        let total: u64 = METHODS.iter().map(|(_, _, w)| w).sum();
        let mut at = self.r.below(total);
        for (m, _, w) in METHODS {
            if at < *w {
                return *m;
            }
            at -= w;
        }
        Range
    }

    /// The messages of one request to `m`: well-formed with extreme fields, random, or mutated;
    /// always made safe (see [`make_safe`]).
    fn messages(&mut self, m: M) -> (Vec<Vec<u8>>, String) {
        let sh = self.sh.clone();
        let r = &mut self.r;
        let n = if matches!(m, Watch | LeaseKeepAlive) {
            1 + r.upto(5)
        } else {
            1
        };
        let style = r.below(100);
        let mut messages = Vec::with_capacity(n);
        let mut descs = Vec::with_capacity(n);
        for _ in 0..n {
            let (bytes, desc) = match style {
                0..=69 => structured(m, r, &sh),
                70..=84 => {
                    let most = r.pick(&[8, 64, 1024, 70_000]);
                    let len = r.upto(most);
                    (r.bytes(len), format!("random {len} bytes"))
                }
                _ => {
                    let (mut bytes, desc) = structured(m, r, &sh);
                    mutate(&mut bytes, r);
                    (bytes, format!("mutated ({desc})"))
                }
            };
            messages.push(make_safe(m, bytes, &sh));
            descs.push(desc);
        }
        (messages, descs.join("; "))
    }

    async fn grpc(&mut self, member: usize, m: M) {
        let (messages, desc) = self.messages(m);
        let framing = pick_framing(&mut self.r);
        let (headers, odd) = odd_headers(&mut self.r);
        let frames = frames_for(m, &messages, framing, &mut self.r, &self.sh.clone());
        let shape = if answers_stream(m) {
            Shape::Stream(Duration::from_millis(if m == Snapshot {
                1500
            } else {
                200 + self.r.below(600)
            }))
        } else {
            Shape::Unary
        };
        // A stream's request side is left open now and then, as clients do.
        let end = !(matches!(m, Watch | LeaseKeepAlive) && self.r.flag());
        let timeout = match m {
            Lock | Campaign => BLOCKING_TIMEOUT,
            Defragment | Hash | Snapshot | MoveLeader => Duration::from_secs(20),
            _ => CALL_TIMEOUT,
        };
        let what = format!(
            "{} [{framing:?}{}{}] {desc}",
            label(path_of(m)),
            if odd.is_empty() { "" } else { ", " },
            odd
        );
        self.sh.remember(member, what);
        let mut c = Call::grpc(path_of(m), frames, shape, timeout);
        c.headers = headers;
        c.end = end;
        let Some(conn) = self.conn(member).await else { return };
        let answer = call(conn, c).await;
        if answer.broken {
            self.conns[member] = None;
        }
        self.learn(m, &answer);
        self.sh.record(&label(path_of(m)), &outcome_with_reason(&answer));
    }

    /// Takes what later requests can use from a successful answer: the revision, leases, lock
    /// keys, leader keys, members added.
    fn learn(&mut self, m: M, answer: &Answer) {
        let sh = &self.sh;
        let Some(message) = answer.messages.first() else { return };
        if let Ok(HeaderOnly { header: Some(header) }) = HeaderOnly::decode(message.clone()) {
            sh.revision.fetch_max(header.revision, Relaxed);
        }
        if answer.outcome != "OK" && !answer.outcome.starts_with("OK ") {
            return;
        }
        match m {
            LeaseGrant => {
                if let Ok(resp) = pb::LeaseGrantResponse::decode(message.clone()) {
                    Shared::push(&sh.leases, resp.id);
                }
            }
            Lock => {
                if let Ok(resp) = lk::LockResponse::decode(message.clone()) {
                    Shared::push(&sh.lock_keys, resp.key);
                }
            }
            Campaign => {
                if let Ok(el::CampaignResponse {
                    leader: Some(leader), ..
                }) = el::CampaignResponse::decode(message.clone())
                {
                    Shared::push(&sh.leaders, leader);
                }
            }
            Compact => {
                // The answer's header revision is the store's; the compaction asked for is not
                // in the answer: the next HashKV/Watch learns it.
            }
            MemberAdd => {
                if let Ok(pb::MemberAddResponse {
                    member: Some(member), ..
                }) = pb::MemberAddResponse::decode(message.clone())
                {
                    sh.added.lock().unwrap().push(member.id);
                }
            }
            HashKv => {
                if let Ok(resp) = pb::HashKvResponse::decode(message.clone()) {
                    sh.compacted.fetch_max(resp.compact_revision, Relaxed);
                }
            }
            Watch => {
                for message in &answer.messages {
                    if let Ok(resp) = pb::WatchResponse::decode(message.clone()) {
                        sh.compacted.fetch_max(resp.compact_revision, Relaxed);
                    }
                }
            }
            _ => {}
        }
    }

    /// A path no service has, or one that is not quite a method.
    async fn unknown_path(&mut self, member: usize) {
        let paths = [
            "/etcdserverpb.KV/Nope",
            "/etcdserverpb.KV/",
            "/etcdserverpb.KV",
            "/etcdserverpb.Unknown/Range",
            "/",
            "//",
            "/etcdserverpb.Watch/Range",
            "/concordpb.RaftPeer/Stream",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "/etcdserverpb.KV/Range/extra",
            "/%00/%ff",
        ];
        let mut path = self.r.pick(&paths).to_string();
        if self.r.chance(10) {
            path = format!("/etcdserverpb.KV/{}", "x".repeat(8 * 1024));
        }
        if self.r.chance(20) {
            path = format!("/fuzz.Service{}/Method{}", self.r.below(1000), self.r.below(1000));
        }
        let body = self.r.some_bytes(0, 64);
        self.sh
            .remember(member, format!("unknown path {}", show(path.as_bytes())));
        let Some(conn) = self.conn(member).await else { return };
        let answer = call(conn, Call::grpc(&path, vec![frame(&body)], Shape::Unary, CALL_TIMEOUT)).await;
        if answer.broken {
            self.conns[member] = None;
        }
        self.sh.record("(unknown gRPC path)", &answer.outcome);
    }

    /// Thousands of watchers on one stream: now, in the future, in the past and the compacted
    /// past, with explicit and automatic ids, some cancelled again.
    async fn many_watchers(&mut self, member: usize) {
        let n = self.r.pick(&[1000, 2000, 5000]);
        let rev = self.sh.rev();
        let compacted = self.sh.compacted.load(Relaxed);
        let mut frames = Vec::new();
        let mut batch = BytesMut::new();
        for i in 0..n {
            let start_revision = match self.r.below(100) {
                0..=79 => 0,
                80..=89 => rev + 1 + self.r.below(100) as i64,
                90..=94 => (rev - self.r.below(50) as i64).max(1),
                _ => (compacted - 1).max(1),
            };
            let key = if self.r.chance(20) {
                vec![0]
            } else {
                format!("fuzz/k{}", i % 64).into_bytes()
            };
            let create = pb::WatchCreateRequest {
                range_end: if key == [0] {
                    vec![0]
                } else if self.r.chance(30) {
                    prefix_end(PREFIX)
                } else {
                    vec![]
                },
                key,
                start_revision,
                prev_kv: self.r.chance(30),
                progress_notify: self.r.chance(30),
                watch_id: if self.r.chance(50) { 0 } else { i as i64 + 1 },
                ..Default::default()
            };
            batch.put_slice(&frame(
                &pb::WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(create)),
                }
                .encode_to_vec(),
            ));
            if i % 3 == 0 {
                let cancel = pb::WatchRequest {
                    request_union: Some(RequestUnion::CancelRequest(pb::WatchCancelRequest {
                        watch_id: i as i64 / 2,
                    })),
                };
                batch.put_slice(&frame(&cancel.encode_to_vec()));
            }
            if batch.len() > 16 * 1024 {
                frames.push(batch.split().freeze());
            }
        }
        batch.put_slice(&frame(
            &pb::WatchRequest {
                request_union: Some(RequestUnion::ProgressRequest(pb::WatchProgressRequest {})),
            }
            .encode_to_vec(),
        ));
        frames.push(batch.freeze());
        self.sh.remember(member, format!("Watch: {n} watchers on one stream"));
        // A connection of its own: this stream may carry a lot.
        let Ok(mut conn) = Conn::open(&self.sh.client_addrs[member]).await else {
            return;
        };
        let mut c = Call::grpc(
            path_of(Watch),
            frames,
            Shape::Stream(Duration::from_secs(3)),
            Duration::from_secs(10),
        );
        c.end = false;
        let answer = call(&mut conn, c).await;
        self.sh
            .record(&format!("Watch ({n} watchers, one stream)"), &answer.outcome);
    }

    /// A stream opened and never read, or a request never finished; kept until the worker has
    /// [`HELD_PER_WORKER`] of them, then the oldest goes.
    async fn hold_stream(&mut self, member: usize) {
        let kind = self.r.below(7);
        let rev = self.sh.rev();
        let (path, frames, end, what): (&str, Vec<Bytes>, bool, &str) = match kind {
            0 => {
                let create = pb::WatchCreateRequest {
                    key: vec![0],
                    range_end: vec![0],
                    start_revision: 1,
                    prev_kv: true,
                    ..Default::default()
                };
                let msg = pb::WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(create)),
                };
                (
                    path_of(Watch),
                    vec![frame(&msg.encode_to_vec())],
                    false,
                    "Watch from revision 1, never read",
                )
            }
            1 => {
                let create = pb::WatchCreateRequest {
                    key: PREFIX.to_vec(),
                    range_end: prefix_end(PREFIX),
                    start_revision: rev,
                    progress_notify: true,
                    ..Default::default()
                };
                let msg = pb::WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(create)),
                };
                (
                    path_of(Watch),
                    vec![frame(&msg.encode_to_vec())],
                    false,
                    "Watch on the fuzz prefix, never read",
                )
            }
            2 if self.held_snapshots() < 1 => (path_of(Snapshot), vec![frame(&[])], true, "Snapshot, never read"),
            3 => {
                let name = lock_name(&mut self.r, "election");
                (
                    path_of(Observe),
                    vec![frame(&el::LeaderRequest { name }.encode_to_vec())],
                    true,
                    "Observe, never read",
                )
            }
            4 => {
                let lease = self.sh.lease(&mut self.r);
                let one = frame(&pb::LeaseKeepAliveRequest { id: lease }.encode_to_vec());
                (
                    path_of(LeaseKeepAlive),
                    (0..1000).map(|_| one.clone()).collect(),
                    false,
                    "LeaseKeepAlive x1000, never read",
                )
            }
            5 => {
                // A frame header promising more than ever comes.
                let mut f = BytesMut::new();
                f.put_u8(0);
                f.put_u32(1 << 20);
                f.put_slice(b"\x0a\x05fuzz/");
                (path_of(Range), vec![f.freeze()], false, "Range body never finished")
            }
            _ => {
                let put = pb::PutRequest {
                    key: b"fuzz/half".to_vec(),
                    value: vec![1; 1000],
                    ..Default::default()
                };
                let f = frame(&put.encode_to_vec());
                (
                    path_of(Put),
                    vec![f.slice(..f.len() / 2)],
                    false,
                    "Put body never finished",
                )
            }
        };
        self.sh.remember(member, format!("held stream: {what}"));
        let Ok(mut conn) = Conn::open(&self.sh.client_addrs[member]).await else {
            return;
        };
        let opened = async {
            std::future::poll_fn(|cx| conn.send.poll_ready(cx)).await.ok()?;
            let request = http::Request::builder()
                .method("POST")
                .uri(format!("http://{}{}", conn.addr, path))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .ok()?;
            let (response, mut stream) = conn.send.send_request(request, false).ok()?;
            let n = frames.len();
            for (i, f) in frames.into_iter().enumerate() {
                let _ = stream.send_data(f, end && i + 1 == n);
            }
            Some((response, stream))
        };
        let outcome = match tokio::time::timeout(Duration::from_secs(3), opened).await {
            Ok(Some((response, stream))) => {
                self.held.push_back(Held {
                    snapshot: path == path_of(Snapshot),
                    _conn: conn,
                    _response: response,
                    _stream: stream,
                });
                if self.held.len() > HELD_PER_WORKER {
                    self.held.pop_front();
                }
                "opened, never read"
            }
            _ => "could not open",
        };
        self.sh.record(&format!("(held) {what}"), outcome);
    }

    /// Unread snapshots this worker holds: at most one at a time, as each holds a copy of the store.
    fn held_snapshots(&self) -> usize {
        self.held.iter().filter(|h| h.snapshot).count()
    }

    /// HTTP/1.1 to the HTTP routes, with odd queries and bodies.
    async fn http_route(&mut self, member: usize) {
        let r = &mut self.r;
        let enc = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("%{b:02x}")).collect() };
        let junk = r.some_bytes(0, 40);
        let limit = r.pick(&[
            "-1",
            "0",
            "1",
            "1000",
            "1001",
            "9223372036854775807",
            "-9223372036854775808",
            "99999999999999999999",
            "abc",
            "",
        ]);
        let (route, target, method, body): (&str, String, &str, Vec<u8>) = match r.below(20) {
            0 => (
                "/health",
                format!(
                    "/health?serializable={}&exclude={}",
                    r.pick(&["true", "false", "x"]),
                    enc(&junk)
                ),
                "GET",
                vec![],
            ),
            1 => ("/health", "/health".into(), "GET", vec![]),
            2 => (
                "/livez",
                format!("/livez?verbose&exclude={}", enc(&junk)),
                "GET",
                vec![],
            ),
            3 => (
                "/readyz",
                format!(
                    "/readyz?verbose={}&exclude=linearizable_read,{}",
                    enc(&junk),
                    enc(&junk)
                ),
                "GET",
                vec![],
            ),
            4 => ("/version", "/version".into(), "GET", vec![]),
            5 => ("/metrics", "/metrics".into(), "GET", vec![]),
            6 => (
                "/ui/",
                r.pick(&[
                    "/ui/",
                    "/ui",
                    "/",
                    "/ui/index.html",
                    "/ui/../../etc/passwd",
                    "/ui/%2e%2e/",
                ])
                .into(),
                "GET",
                vec![],
            ),
            7 => ("/ui/api/cluster", "/ui/api/cluster".into(), "GET", vec![]),
            8 => ("/ui/api/rates", "/ui/api/rates".into(), "GET", vec![]),
            9 => ("/ui/api/alarms", "/ui/api/alarms".into(), "GET", vec![]),
            10 | 11 => (
                "/ui/api/keys",
                format!("/ui/api/keys?prefix={}&limit={limit}", enc(&junk)),
                "GET",
                vec![],
            ),
            12 => (
                "/ui/api/keys",
                format!("/ui/api/keys?prefix=data%2F&limit={limit}&limit=2"),
                "GET",
                vec![],
            ),
            13 | 14 => {
                let key = match r.below(5) {
                    0 => "key=data%2F0001".to_string(),
                    1 => format!("key={}", enc(&junk)),
                    2 => format!("key_b64={}", enc(&junk)),
                    3 => "key_b64=ZnV6ei9rMQ%3D%3D".into(),
                    _ => String::new(),
                };
                ("/ui/api/key", format!("/ui/api/key?{key}"), "GET", vec![])
            }
            15 => ("/ui/api/leases", "/ui/api/leases".into(), "GET", vec![]),
            16 => ("/ui/api/events", "/ui/api/events".into(), "GET", vec![]),
            17 => {
                let body = match r.below(5) {
                    0 => br#"{"name":"root","password":"x"}"#.to_vec(),
                    1 => b"{".to_vec(),
                    2 => junk.clone(),
                    3 => format!(r#"{{"name":"{}","password":""}}"#, "n".repeat(100_000)).into_bytes(),
                    _ => b"[]".to_vec(),
                };
                ("/ui/api/login", "/ui/api/login".into(), "POST", body)
            }
            18 => ("/ui/api/login", "/ui/api/login".into(), "GET", vec![]),
            _ => (
                "(other path)",
                format!("/{}", enc(&junk)),
                r.pick(&["GET", "POST", "PUT", "DELETE", "OPTIONS", "BREW"]),
                vec![],
            ),
        };
        let mut request = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        if !body.is_empty() || method == "POST" {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(&body);
        self.sh
            .remember(member, format!("HTTP {method} {}", show(target.as_bytes())));
        let listen = if route == "/ui/api/events" {
            Duration::from_millis(1500)
        } else {
            Duration::from_secs(8)
        };
        let outcome = raw_exchange(&self.sh.client_addrs[member], &bytes, listen).await;
        self.sh.record(&format!("HTTP {method} {route}"), &outcome);
    }

    /// Bytes no well-behaved client sends: garbage, broken HTTP/2 and HTTP/1.1, TLS to a plain port.
    async fn raw_garbage(&mut self, member: usize) {
        let addr = self.sh.client_addrs[member].clone();
        let r = &mut self.r;
        let kind = r.below(16);
        let settings = h2_frame(0x4, 0, 0, &[]);
        let request_headers = hpack_request("/etcdserverpb.KV/Range", &addr);
        let (what, bytes): (&str, Vec<u8>) = match kind {
            0 => ("random bytes", r.some_bytes(1, 4096)),
            1 => ("preface + random bytes", [PREFACE, &r.some_bytes(1, 4096)].concat()),
            2 => {
                // SETTINGS with values the spec forbids, and an unknown one.
                let mut p = Vec::new();
                for (id, value) in [(0x4u16, 0x8000_0000u32), (0x5, 1), (0x2, 2), (0xffff, 7), (0x3, 0), (0x1, u32::MAX)] {
                    p.extend_from_slice(&id.to_be_bytes());
                    p.extend_from_slice(&value.to_be_bytes());
                }
                let chosen = r.upto(5);
                ("SETTINGS with invalid values", [PREFACE, &h2_frame(0x4, 0, 0, &p[chosen * 6..chosen * 6 + 6])].concat())
            }
            3 => {
                // A frame header announcing 16 MiB, then a few bytes.
                let mut f = vec![0xff, 0xff, 0xff, 0x0, 0x0, 0, 0, 0, 1];
                f.extend_from_slice(&r.bytes(64));
                ("frame with a 16 MiB length", [PREFACE, &settings, &f].concat())
            }
            4 => ("HEADERS with a garbage HPACK block", [PREFACE, &settings, &h2_frame(0x1, 0x4 | 0x1, 1, &r.some_bytes(1, 256))].concat()),
            5 => {
                // CONTINUATION flood: a header block that never ends.
                let mut b = [PREFACE, &settings, &h2_frame(0x1, 0, 1, &request_headers)].concat();
                let chunk = vec![0x82u8; 512];
                for _ in 0..2000 {
                    b.extend_from_slice(&h2_frame(0x9, 0, 1, &chunk));
                }
                ("CONTINUATION flood", b)
            }
            6 => {
                let mut b = [PREFACE, &settings].concat();
                let inc = if r.flag() { 0u32 } else { 0x7fff_ffff };
                for _ in 0..2 {
                    b.extend_from_slice(&h2_frame(0x8, 0, 0, &inc.to_be_bytes()));
                }
                ("WINDOW_UPDATE zero or overflowing", b)
            }
            7 => {
                let mut b = [PREFACE, &settings].concat();
                for i in 0..2000u64 {
                    b.extend_from_slice(&h2_frame(0x6, 0, 0, &i.to_be_bytes()));
                }
                ("PING flood", b)
            }
            8 => {
                let frames = [
                    h2_frame(0x3, 0, 1, &8u32.to_be_bytes()),         // RST_STREAM on an idle stream
                    h2_frame(0x0, 0, 0, b"data on stream 0"),           // DATA on stream 0
                    h2_frame(0x2, 0, 3, &[0, 0, 0, 3, 16]),             // PRIORITY on itself
                    h2_frame(0x5, 0x4, 1, &[0, 0, 0, 2]),               // PUSH_PROMISE from a client
                    h2_frame(0x7, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 1]),    // GOAWAY from the client
                    h2_frame(0xee, 0xff, 5, &r.bytes(32)),             // an unknown frame type
                    h2_frame(0x4, 0x1, 0, &[1, 2, 3]),                  // SETTINGS ack with a payload
                ];
                let chosen = r.upto(frames.len() - 1);
                ("frame a client may not send", [PREFACE, &settings, &frames[chosen]].concat())
            }
            9 => {
                // Rapid reset: streams opened and cancelled at once.
                let mut b = [PREFACE, &settings].concat();
                for i in 0..1000u32 {
                    let stream = 2 * i + 1;
                    b.extend_from_slice(&h2_frame(0x1, 0x4, stream, &request_headers));
                    b.extend_from_slice(&h2_frame(0x3, 0, stream, &8u32.to_be_bytes()));
                }
                ("rapid reset x1000", b)
            }
            10 => {
                // A request whose DATA exceeds the stream's flow-control window.
                let mut b = [PREFACE, &settings, &h2_frame(0x1, 0x4, 1, &request_headers)].concat();
                for _ in 0..80 {
                    b.extend_from_slice(&h2_frame(0x0, 0, 1, &[0u8; 16_384]));
                }
                ("DATA beyond the flow-control window", b)
            }
            11 => ("HTTP/1.1 with a 100 KiB header", format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(100 * 1024)).into_bytes()),
            12 => (
                "HTTP/1.1 chunked body with a huge chunk size",
                b"POST /ui/api/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nffffffffffffffff\r\n{}\r\n0\r\n\r\n".to_vec(),
            ),
            13 => (
                "HTTP/1.1 Content-Length and Transfer-Encoding",
                b"POST /ui/api/login HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            ),
            14 => (
                "TLS ClientHello to the plain port",
                vec![0x16, 0x03, 0x01, 0x00, 0x31, 0x01, 0x00, 0x00, 0x2d, 0x03, 0x03].into_iter().chain(r.bytes(45)).collect(),
            ),
            _ => ("HTTP/1.1 request line garbage", [b"G\0T /\xff HTTP/9.9\r\n\r\n".as_slice(), &r.some_bytes(0, 64)].concat()),
        };
        self.sh.remember(member, format!("raw TCP: {what}"));
        let outcome = raw_exchange(&addr, &bytes, Duration::from_secs(2)).await;
        self.sh.record(&format!("(TCP) {what}"), &outcome);
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix, the rest of the first byte being `flags`.
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal header field without indexing, by static-table name index or a new name.
fn hpack_literal(out: &mut Vec<u8>, index: usize, name: &str, value: &str) {
    hpack_int(out, 0, 4, index);
    if index == 0 {
        hpack_int(out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
    }
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// The header block of a gRPC request: POST, http, the path, the authority, content-type, te.
fn hpack_request(path: &str, authority: &str) -> Vec<u8> {
    let mut b = vec![0x83, 0x86];
    hpack_literal(&mut b, 4, "", path);
    hpack_literal(&mut b, 1, "", authority);
    hpack_literal(&mut b, 31, "", "application/grpc");
    hpack_literal(&mut b, 0, "te", "trailers");
    b
}

/// Writes `bytes` to `addr`, reads what comes back for up to `listen`, and says what it was.
async fn raw_exchange(addr: &str, bytes: &[u8], listen: Duration) -> String {
    let exchange = async {
        let mut tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => tcp,
            Err(e) => return format!("connect failed: {}", e.kind()),
        };
        let write_failed = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(bytes))
            .await
            .map_or(true, |r| r.is_err());
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let until = tokio::time::Instant::now() + listen;
        let mut ended = "silent";
        loop {
            match tokio::time::timeout_at(until, tcp.read(&mut buf)).await {
                Ok(Ok(0)) => {
                    ended = "closed";
                    break;
                }
                Ok(Ok(n)) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.len() > (4 << 20) {
                        break;
                    }
                }
                Ok(Err(_)) => {
                    ended = "reset";
                    break;
                }
                Err(_) => break,
            }
        }
        let _ = write_failed;
        classify_raw(&got, ended)
    };
    tokio::time::timeout(listen + Duration::from_secs(6), exchange)
        .await
        .unwrap_or_else(|_| "no answer in time".into())
}

fn classify_raw(got: &[u8], ended: &str) -> String {
    if got.starts_with(b"HTTP/1.") && got.len() >= 12 {
        return format!("HTTP/1.1 {}", String::from_utf8_lossy(&got[9..12]));
    }
    if got.len() >= 9 {
        // HTTP/2 frames: look for a GOAWAY and its error code.
        let mut at = 0;
        let mut kinds = 0;
        while at + 9 <= got.len() {
            let len = (usize::from(got[at]) << 16) | (usize::from(got[at + 1]) << 8) | usize::from(got[at + 2]);
            let kind = got[at + 3];
            if kind == 0x7 && at + 9 + 8 <= got.len() {
                let code = u32::from_be_bytes([got[at + 13], got[at + 14], got[at + 15], got[at + 16]]);
                return format!("h2 GOAWAY {}", h2_reason(code));
            }
            kinds += 1;
            at += 9 + len;
        }
        return format!("h2 frames ({kinds}), then {ended}");
    }
    if got.is_empty() {
        return format!("nothing, {ended}");
    }
    format!("{} bytes, {ended}", got.len())
}

// ---------------------------------------------------------------------------------------------
// Watching the members
// ---------------------------------------------------------------------------------------------

fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name; Z (zombie) and X mean it has exited.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Resident memory of a process now, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// How much memory a member holds for one Watch stream whose client never reads, while another
/// member takes `n` puts of a 1 MiB value (each event carries its previous value too).
async fn unread_watch_probe(sh: &Shared, n: usize) -> String {
    let (watched, writer) = (1 % sh.client_addrs.len(), 0);
    let Ok(mut conn) = Conn::open(&sh.client_addrs[watched]).await else {
        return "no connection".into();
    };
    let create = pb::WatchCreateRequest {
        key: b"fuzz/mem/".to_vec(),
        range_end: prefix_end(b"fuzz/mem/"),
        prev_kv: true,
        ..Default::default()
    };
    let message = pb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    };
    let opened = conn.open_watch(&message);
    let Ok(Some(held)) = tokio::time::timeout(Duration::from_secs(5), opened).await else {
        return "could not open the watch".into();
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = sh.pids[watched];
    let before = rss_kib(pid).unwrap_or(0);
    let value = vec![0x77u8; 1 << 20];
    let mut written = 0;
    for _ in 0..n {
        sh.remember(
            writer,
            "probe: KV.Put of 1 MiB under fuzz/mem/ while a watch on it is never read".into(),
        );
        let put = pb::PutRequest {
            key: b"fuzz/mem/k".to_vec(),
            value: value.clone(),
            ..Default::default()
        };
        if unary::<_, pb::PutResponse>(&sh.client_addrs[writer], Put, &put)
            .await
            .is_ok()
        {
            written += 1;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid).unwrap_or(0);
    drop(held);
    drop(conn);
    let delete = pb::DeleteRangeRequest {
        key: b"fuzz/mem/".to_vec(),
        range_end: prefix_end(b"fuzz/mem/"),
        ..Default::default()
    };
    let _ = unary::<_, pb::DeleteRangeResponse>(&sh.client_addrs[writer], DeleteRange, &delete).await;
    format!(
        "one never-read Watch (prev_kv) on m{watched} while {written} puts of 1 MiB went through m{writer}: m{watched} resident memory {} MiB -> {} MiB",
        before / 1024,
        after / 1024
    )
}

/// Lines of a log that mention a panic or a fatal error.
fn alarming_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("panicked") || l.contains("fatal"))
        .map(|l| l.chars().take(600).collect())
        .collect()
}

/// The last `n` requests sent, newest first, one a line.
fn recent_requests(sh: &Shared, n: usize) -> String {
    sh.recent
        .lock()
        .unwrap()
        .iter()
        .rev()
        .take(n)
        .map(|(t, m, d)| {
            format!(
                "    {:>8.3}s m{m}: {}",
                t.as_secs_f64(),
                d.chars().take(300).collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Watches the members while the workers run: a member that exits or logs a panic or fatal
/// error is an incident, reported with the requests sent just before; the workers stop.
async fn monitor(sh: Arc<Shared>) {
    let mut seen: Vec<usize> = vec![0; sh.logs.len()];
    let mut dead = vec![false; sh.pids.len()];
    while !sh.stop.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for i in 0..sh.pids.len() {
            let log = std::fs::read(&sh.logs[i]).unwrap_or_default();
            let fresh = String::from_utf8_lossy(&log[seen[i].min(log.len())..]).into_owned();
            seen[i] = log.len();
            let lines = alarming_lines(&fresh);
            let gone = !dead[i] && !process_alive(sh.pids[i]);
            if lines.is_empty() && !gone {
                continue;
            }
            dead[i] |= gone;
            let at = sh.started.elapsed();
            let mut incident = format!(
                "at {:.3}s member m{i}{}:\n",
                at.as_secs_f64(),
                if gone { " EXITED" } else { "" }
            );
            for l in lines.iter().take(5) {
                incident.push_str(&format!("  log: {l}\n"));
            }
            incident.push_str("  the last requests sent before (newest first):\n");
            incident.push_str(&recent_requests(&sh, 25));
            eprintln!("FUZZ INCIDENT {incident}");
            sh.incidents.lock().unwrap().push(incident);
            if gone {
                sh.stop.store(true, Relaxed);
            }
        }
    }
}

/// Watches every key (from the empty key to the end of the keyspace) from `from` on, while the
/// workers run, and returns the changes it saw outside the fuzz prefix: none may happen. This sees
/// what a Range cannot (the empty key, which no Range can name, and changes undone later). When
/// its watch is cancelled (compacted past it) it starts again from the current revision, and says
/// so.
async fn sentinel(sh: Arc<Shared>, addr: String, mut from: i64) -> Vec<String> {
    let mut seen = Vec::new();
    while !sh.stop.load(Relaxed) {
        let Ok(mut conn) = Conn::open(&addr).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let create = pb::WatchCreateRequest {
            key: vec![],
            range_end: vec![0],
            start_revision: from,
            ..Default::default()
        };
        let message = pb::WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        };
        let opened = async {
            let (response, stream) = conn.open_watch(&message).await?;
            let response = response.await.ok()?;
            Some((response.into_body(), stream))
        };
        let Ok(Some((mut body, _stream))) = tokio::time::timeout(Duration::from_secs(5), opened).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut buf = BytesMut::new();
        'stream: while !sh.stop.load(Relaxed) {
            let chunk = match tokio::time::timeout(Duration::from_millis(250), body.data()).await {
                Err(_) => continue,
                Ok(Some(Ok(chunk))) => chunk,
                Ok(_) => break,
            };
            let _ = body.flow_control().release_capacity(chunk.len());
            buf.extend_from_slice(&chunk);
            let mut messages = Vec::new();
            let mut n = 0;
            take_messages(&mut buf, &mut messages, &mut n, usize::MAX);
            for message in messages {
                let Ok(resp) = pb::WatchResponse::decode(message) else {
                    continue;
                };
                for event in &resp.events {
                    let Some(kv) = &event.kv else { continue };
                    from = from.max(kv.mod_revision + 1);
                    if !kv.key.starts_with(PREFIX) {
                        let kind = if event.r#type == 1 { "DELETE" } else { "PUT" };
                        let change = format!("{kind} {} at revision {}", show(&kv.key), kv.mod_revision);
                        let mut incident = format!(
                            "at {:.3}s the sentinel saw {change}; the last requests sent before (newest first):\n",
                            sh.started.elapsed().as_secs_f64()
                        );
                        incident.push_str(&recent_requests(&sh, 25));
                        eprintln!("FUZZ INCIDENT {incident}");
                        sh.incidents.lock().unwrap().push(incident);
                        seen.push(change);
                    }
                }
                if resp.canceled {
                    let now = resp.header.map_or(from, |h| h.revision);
                    seen.push(format!(
                        "(not a change: the sentinel watch was cancelled at {from} ({}); it saw nothing of revisions {from}..={now})",
                        resp.cancel_reason
                    ));
                    from = now + 1;
                    break 'stream;
                }
            }
        }
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// Housekeeping between and after the workers' requests
// ---------------------------------------------------------------------------------------------

/// Lowers every raised alarm and removes the members the fuzzer added; returns what it did.
async fn tidy(sh: &Shared) -> Vec<String> {
    let mut done = Vec::new();
    for addr in &sh.client_addrs {
        let Ok(alarms) = unary::<_, pb::AlarmResponse>(
            addr,
            Alarm,
            &pb::AlarmRequest {
                action: 0,
                member_id: 0,
                alarm: 0,
            },
        )
        .await
        else {
            continue;
        };
        for alarm in alarms.alarms {
            let lower = pb::AlarmRequest {
                action: 2,
                member_id: alarm.member_id,
                alarm: alarm.alarm,
            };
            let result = unary::<_, pb::AlarmResponse>(addr, Alarm, &lower).await;
            done.push(format!(
                "lowered alarm {} of {:x}: {}",
                alarm.alarm,
                alarm.member_id,
                if result.is_ok() { "ok" } else { "failed" }
            ));
        }
        break;
    }
    for addr in &sh.client_addrs {
        let Ok(list) =
            unary::<_, pb::MemberListResponse>(addr, MemberList, &pb::MemberListRequest { linearizable: true }).await
        else {
            continue;
        };
        for member in list.members.iter().filter(|m| !sh.member_ids.contains(&m.id)) {
            let result =
                unary::<_, pb::MemberRemoveResponse>(addr, MemberRemove, &pb::MemberRemoveRequest { id: member.id })
                    .await;
            done.push(format!(
                "removed added member {:x} ({:?}): {}",
                member.id,
                member.peer_ur_ls,
                result.err().unwrap_or_else(|| "ok".into())
            ));
        }
        sh.added
            .lock()
            .unwrap()
            .retain(|id| list.members.iter().any(|m| m.id == *id));
        break;
    }
    done
}

async fn janitor(sh: Arc<Shared>) {
    while !sh.stop.load(Relaxed) {
        tokio::time::sleep(Duration::from_secs(4)).await;
        if !sh.stop.load(Relaxed) {
            for what in tidy(&sh).await {
                let kind = if what.starts_with("lowered") {
                    "lowered an alarm"
                } else {
                    "removed a member the fuzzer added"
                };
                sh.record("(janitor)", kind);
            }
        }
    }
}

/// The known data set: every key sorts before the fuzz prefix.
fn known_data() -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut data: Vec<(Vec<u8>, Vec<u8>)> = (0..200)
        .map(|i| (format!("data/{i:04}").into_bytes(), format!("value {i}").into_bytes()))
        .collect();
    data.push((vec![0], b"the NUL key".to_vec()));
    data.push((vec![0, 0xff], vec![0xff, 0, 0xfe]));
    data.push((b"a".to_vec(), b"1".to_vec()));
    data.push((b"b/c".to_vec(), vec![]));
    data.push((b"data/big".to_vec(), vec![0x5a; 100 * 1024]));
    data.push((b"fuzz".to_vec(), b"just before the prefix".to_vec()));
    data.push((b"fuzz.".to_vec(), b"also before the prefix".to_vec()));
    data.push(("ключ".as_bytes().to_vec(), "значение".as_bytes().to_vec()));
    // A write may delete from a key under the prefix to the end of the keyspace, so nothing
    // known may sort after the prefix.
    data.retain(|(k, _)| k.as_slice() < PREFIX);
    data
}

/// Every key outside the fuzz prefix, as a linearizable read on `addr` sees it.
async fn outside_prefix(addr: &str) -> Result<Vec<(Vec<u8>, Vec<u8>, i64, i64, i64, i64)>, String> {
    let mut all = Vec::new();
    for (key, range_end) in [(vec![0u8], PREFIX.to_vec()), (prefix_end(PREFIX), vec![0u8])] {
        let resp: pb::RangeResponse = unary(
            addr,
            Range,
            &pb::RangeRequest {
                key,
                range_end,
                ..Default::default()
            },
        )
        .await?;
        all.extend(resp.kvs.into_iter().map(|kv| {
            (
                kv.key,
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                kv.lease,
            )
        }));
    }
    Ok(all)
}

/// Waits (up to a minute) until every member names the same leader.
async fn agreed_leader(addrs: &[String]) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut leaders = Vec::new();
        for addr in addrs {
            let status = unary::<_, pb::StatusResponse>(addr, Status, &pb::StatusRequest {}).await;
            leaders.push(status.map_or(0, |s| s.leader));
        }
        if leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
            return Ok(leaders[0]);
        }
        if Instant::now() > deadline {
            return Err(format!("the members agree on no leader: {leaders:x?}"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_table(sh: &Shared) {
    let stats = sh.stats.lock().unwrap();
    let total: u64 = stats.values().flat_map(|o| o.values()).sum();
    println!(
        "\n## Fuzz summary: seed {}, {:.0} s, {} workers, {} calls\n",
        sh.cfg.seed,
        sh.started.elapsed().as_secs_f64(),
        sh.cfg.workers,
        total
    );
    println!("| method / action | calls | outcomes |");
    println!("|---|---:|---|");
    for (what, outcomes) in stats.iter() {
        let n: u64 = outcomes.values().sum();
        let mut sorted: Vec<(&String, &u64)> = outcomes.iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(a.1));
        let list = sorted
            .iter()
            .map(|(o, c)| format!("{o} {c}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!("| {what} | {n} | {list} |");
    }
    println!();
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_survive_protocol_fuzzing() {
    let cfg = Config::from_env();
    println!(
        "fuzz: FUZZ_SEED={} FUZZ_SECONDS={} FUZZ_WORKERS={} FUZZ_MAX_TXN_DEPTH={}",
        cfg.seed, cfg.seconds, cfg.workers, cfg.max_depth
    );
    // A smaller quota than etcd's 2 GiB: the fuzzer writes 1.5 MiB values, compacts and
    // defragments, and each member keeps the store, its snapshot copies and its Raft log on this
    // machine's one disk. The quota's alarm path is fuzzed the sooner for it.
    let mut cluster = Cluster::start_with(3, &["--quota-backend-bytes", "536870912"]).await;
    let client_addrs: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.client_url.trim_start_matches("http://").to_string())
        .collect();
    let mut member_ids = Vec::new();
    for addr in &client_addrs {
        let status: pb::StatusResponse = unary(addr, Status, &pb::StatusRequest {}).await.expect("status");
        member_ids.push(status.header.expect("header").member_id);
    }

    // The known data set, written through member 0 and read back as it is stored.
    for (key, value) in known_data() {
        let _: pb::PutResponse = unary(
            &client_addrs[0],
            Put,
            &pb::PutRequest {
                key,
                value,
                ..Default::default()
            },
        )
        .await
        .expect("put known data");
    }
    let known = outside_prefix(&client_addrs[0]).await.expect("read known data");
    assert_eq!(known.len(), known_data().len(), "the known data set reads back whole");
    let start_rev = known.iter().map(|k| k.3).max().unwrap_or(1);

    let sh = Arc::new(Shared {
        client_addrs: client_addrs.clone(),
        peer_urls: cluster.members.iter().map(|m| m.peer_url.clone()).collect(),
        member_ids: member_ids.clone(),
        pids: (0..3).map(|i| cluster.pid(i).expect("running")).collect(),
        logs: cluster.members.iter().map(|m| m.log.clone()).collect(),
        revision: AtomicI64::new(start_rev),
        compacted: AtomicI64::new(0),
        leases: Mutex::new(Vec::new()),
        lock_keys: Mutex::new(Vec::new()),
        leaders: Mutex::new(Vec::new()),
        added: Mutex::new(Vec::new()),
        stats: Mutex::new(BTreeMap::new()),
        recent: Mutex::new(VecDeque::new()),
        started: Instant::now(),
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        incidents: Mutex::new(Vec::new()),
        cfg,
    });
    let monitor_task = tokio::spawn(monitor(sh.clone()));
    let sentinel_task = tokio::spawn(sentinel(sh.clone(), client_addrs[1].clone(), start_rev + 1));

    // Probe: a KV request whose length prefix says 16 bytes, followed by 32 MiB. How much of it
    // does the member hold at once (its peak resident memory before and after)?
    let body_probe = {
        let pid = sh.pids[0];
        let before = peak_rss_kib(pid).unwrap_or(0);
        let mut f = BytesMut::new();
        f.put_u8(0);
        f.put_u32(16);
        let chunk = Bytes::from(vec![0u8; 1 << 20]);
        let mut frames = vec![f.freeze()];
        frames.extend((0..32).map(|_| chunk.clone()));
        sh.remember(0, "probe: KV Put, length prefix 16, then 32 MiB".into());
        let answer = match Conn::open(&client_addrs[0]).await {
            Ok(mut conn) => {
                call(
                    &mut conn,
                    Call::grpc(path_of(Put), frames, Shape::Unary, Duration::from_secs(30)),
                )
                .await
            }
            Err(e) => Answer {
                outcome: e,
                ..Answer::default()
            },
        };
        let after = peak_rss_kib(pid).unwrap_or(0);
        sh.record("(probe) KV.Put: prefix says 16 bytes, body is 32 MiB", &answer.outcome);
        format!(
            "KV.Put with a 16-byte length prefix and a 32 MiB body: {} ({}); m0 peak RSS {} MiB -> {} MiB",
            answer.outcome,
            answer.message,
            before / 1024,
            after / 1024
        )
    };
    println!("probe: {body_probe}");

    // Every method once in each of a few fixed forms, so the table covers all of them whatever
    // the seed: a well-formed message, random bytes, a huge length prefix, no body, a
    // compressed flag.
    {
        let mut w = Worker {
            r: Rng::new(sh.cfg.seed ^ 0xfeed),
            sh: sh.clone(),
            conns: (0..3).map(|_| None).collect(),
            held: VecDeque::new(),
        };
        for (i, (m, path, _)) in METHODS.iter().enumerate() {
            if sh.stop.load(Relaxed) {
                break;
            }
            for (j, framing) in [
                Framing::Normal,
                Framing::Normal,
                Framing::HugeLength(u32::MAX),
                Framing::Empty,
                Framing::Flag(1),
            ]
            .into_iter()
            .enumerate()
            {
                let member = (i + j) % 3;
                let (messages, desc) = if j == 1 {
                    let n = w.r.upto(256);
                    (vec![make_safe(*m, w.r.bytes(n), &sh)], format!("random {n} bytes"))
                } else {
                    let (bytes, desc) = structured(*m, &mut w.r, &sh);
                    (vec![make_safe(*m, bytes, &sh)], desc)
                };
                let frames = frames_for(*m, &messages, framing, &mut w.r, &sh);
                sh.remember(member, format!("sweep {} [{framing:?}] {desc}", label(path)));
                let shape = if answers_stream(*m) {
                    Shape::Stream(Duration::from_millis(300))
                } else {
                    Shape::Unary
                };
                let timeout = if matches!(m, Lock | Campaign) {
                    BLOCKING_TIMEOUT
                } else {
                    Duration::from_secs(20)
                };
                let Some(conn) = w.conn(member).await else { continue };
                let answer = call(conn, Call::grpc(path, frames, shape, timeout)).await;
                if answer.broken {
                    w.conns[member] = None;
                }
                w.learn(*m, &answer);
                sh.record(&label(path), &outcome_with_reason(&answer));
            }
        }
    }

    // Edge cases that random choice reaches only now and then, once each.
    {
        let put_keys = |n: usize, tag: &str| -> Vec<pb::RequestOp> {
            (0..n)
                .map(|i| put_op(format!("fuzz/max/{tag}{i}").into_bytes()))
                .collect()
        };
        let compares = |n: usize| -> Vec<pb::Compare> {
            (0..n)
                .map(|i| pb::Compare {
                    key: format!("fuzz/c{i}").into_bytes(),
                    target_union: Some(TargetUnion::Version(0)),
                    ..Default::default()
                })
                .collect()
        };
        let big_key = [PREFIX, &vec![b'x'; MAX_REQUEST_BYTES - 64][..]].concat();
        let probes: Vec<(M, Vec<u8>, &str)> = vec![
            (
                Proclaim,
                el::ProclaimRequest {
                    leader: Some(el::LeaderKey {
                        name: b"fuzz/election/p".to_vec(),
                        key: vec![],
                        rev: 0,
                        lease: 0,
                    }),
                    value: b"v".to_vec(),
                }
                .encode_to_vec(),
                "Proclaim with an empty leader key at rev 0",
            ),
            (
                Resign,
                el::ResignRequest {
                    leader: Some(el::LeaderKey {
                        name: vec![],
                        key: vec![],
                        rev: 0,
                        lease: 0,
                    }),
                }
                .encode_to_vec(),
                "Resign with an empty leader key at rev 0",
            ),
            (
                Txn,
                pb::TxnRequest {
                    compare: compares(MAX_TXN_OPS),
                    success: put_keys(MAX_TXN_OPS, "s"),
                    failure: put_keys(MAX_TXN_OPS, "f"),
                }
                .encode_to_vec(),
                "Txn with max-txn-ops compares and ops in both branches",
            ),
            (
                Txn,
                pb::TxnRequest {
                    compare: compares(MAX_TXN_OPS + 1),
                    ..Default::default()
                }
                .encode_to_vec(),
                "Txn with max-txn-ops + 1 compares",
            ),
            (
                Range,
                pb::RangeRequest {
                    key: vec![0],
                    range_end: vec![0],
                    limit: i64::MIN,
                    revision: 0,
                    min_mod_revision: i64::MAX,
                    max_create_revision: i64::MIN,
                    ..Default::default()
                }
                .encode_to_vec(),
                "Range of everything with limit i64::MIN",
            ),
            (
                Range,
                pb::RangeRequest {
                    key: vec![0],
                    range_end: vec![0],
                    revision: i64::MAX,
                    ..Default::default()
                }
                .encode_to_vec(),
                "Range at revision i64::MAX",
            ),
            (
                Range,
                pb::RangeRequest {
                    key: vec![0],
                    range_end: vec![0],
                    revision: i64::MIN,
                    ..Default::default()
                }
                .encode_to_vec(),
                "Range at revision i64::MIN",
            ),
            (
                Range,
                pb::RangeRequest {
                    key: big_key.clone(),
                    range_end: vec![0],
                    ..Default::default()
                }
                .encode_to_vec(),
                "Range from a 1.5 MiB key",
            ),
            (
                Put,
                pb::PutRequest {
                    key: big_key.clone(),
                    value: vec![],
                    ..Default::default()
                }
                .encode_to_vec(),
                "Put of a key just under the request limit",
            ),
            (
                DeleteRange,
                pb::DeleteRangeRequest {
                    key: big_key,
                    range_end: vec![0],
                    prev_kv: true,
                }
                .encode_to_vec(),
                "DeleteRange from a 1.5 MiB key to the end",
            ),
            (
                Compact,
                pb::CompactionRequest {
                    revision: i64::MAX,
                    physical: true,
                }
                .encode_to_vec(),
                "Compact to i64::MAX",
            ),
            (
                Compact,
                pb::CompactionRequest {
                    revision: i64::MIN,
                    physical: false,
                }
                .encode_to_vec(),
                "Compact to i64::MIN",
            ),
            (
                HashKv,
                pb::HashKvRequest { revision: i64::MAX }.encode_to_vec(),
                "HashKV at i64::MAX",
            ),
            (
                HashKv,
                pb::HashKvRequest { revision: i64::MIN }.encode_to_vec(),
                "HashKV at i64::MIN",
            ),
            (
                LeaseGrant,
                pb::LeaseGrantRequest {
                    ttl: 9_000_000_000,
                    id: i64::MAX,
                }
                .encode_to_vec(),
                "LeaseGrant TTL 9e9, id i64::MAX",
            ),
            (
                LeaseKeepAlive,
                pb::LeaseKeepAliveRequest { id: i64::MAX }.encode_to_vec(),
                "LeaseKeepAlive of id i64::MAX",
            ),
            (
                LeaseTimeToLive,
                pb::LeaseTimeToLiveRequest {
                    id: i64::MAX,
                    keys: true,
                }
                .encode_to_vec(),
                "LeaseTimeToLive of id i64::MAX",
            ),
            (
                LeaseGrant,
                pb::LeaseGrantRequest { ttl: i64::MIN, id: -1 }.encode_to_vec(),
                "LeaseGrant TTL i64::MIN, id -1",
            ),
            (
                LeaseRevoke,
                pb::LeaseRevokeRequest { id: i64::MIN }.encode_to_vec(),
                "LeaseRevoke of id i64::MIN",
            ),
            (
                Watch,
                pb::WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
                        key: vec![0],
                        range_end: vec![0],
                        start_revision: i64::MAX,
                        progress_notify: true,
                        ..Default::default()
                    })),
                }
                .encode_to_vec(),
                "Watch from revision i64::MAX",
            ),
            (
                Watch,
                pb::WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
                        key: vec![0],
                        range_end: vec![0],
                        start_revision: 1,
                        prev_kv: true,
                        fragment: true,
                        watch_id: i64::MAX,
                        ..Default::default()
                    })),
                }
                .encode_to_vec(),
                "Watch everything from revision 1, id i64::MAX, fragments",
            ),
            (
                MemberAdd,
                pb::MemberAddRequest {
                    peer_ur_ls: vec!["http://127.0.0.1".into(), sh.peer_urls[0].clone()],
                    is_learner: false,
                }
                .encode_to_vec(),
                "MemberAdd: a URL without a port beside an existing one",
            ),
            (
                MemberAdd,
                pb::MemberAddRequest {
                    peer_ur_ls: vec!["127.0.0.1:2380".into()],
                    is_learner: false,
                }
                .encode_to_vec(),
                "MemberAdd: a URL without a scheme",
            ),
            (
                MemberUpdate,
                pb::MemberUpdateRequest {
                    id: 1,
                    peer_ur_ls: vec!["http://127.0.0.1".into()],
                }
                .encode_to_vec(),
                "MemberUpdate of an unknown id to a URL without a port",
            ),
            (
                MoveLeader,
                pb::MoveLeaderRequest { target_id: u64::MAX }.encode_to_vec(),
                "MoveLeader to u64::MAX",
            ),
            (
                Alarm,
                pb::AlarmRequest {
                    action: 1,
                    member_id: u64::MAX,
                    alarm: i32::MAX,
                }
                .encode_to_vec(),
                "Alarm: raise an alarm of type i32::MAX",
            ),
            (
                AuthEnable,
                pb::AuthEnableRequest {}.encode_to_vec(),
                "AuthEnable without a root user",
            ),
        ];
        let mut conn = None;
        for (i, (m, message, desc)) in probes.into_iter().enumerate() {
            if sh.stop.load(Relaxed) {
                break;
            }
            let member = i % 3;
            sh.remember(member, format!("probe {}: {desc}", label(path_of(m))));
            let message = make_safe(m, message, &sh);
            if conn.as_ref().is_none_or(|(at, _): &(usize, Conn)| *at != member) {
                conn = Conn::open(&client_addrs[member]).await.ok().map(|c| (member, c));
            }
            let Some((_, c)) = conn.as_mut() else { continue };
            let shape = if answers_stream(m) {
                Shape::Stream(Duration::from_millis(500))
            } else {
                Shape::Unary
            };
            let answer = call(
                c,
                Call::grpc(path_of(m), vec![frame(&message)], shape, Duration::from_secs(20)),
            )
            .await;
            if answer.broken {
                conn = None;
            }
            println!(
                "probe {}: {desc}: {} {}",
                label(path_of(m)),
                answer.outcome,
                answer.message
            );
            sh.record(&label(path_of(m)), &outcome_with_reason(&answer));
        }
    }

    // The workers, for the configured time.
    let janitor_task = tokio::spawn(janitor(sh.clone()));
    let fuzz_started = Instant::now();
    let deadline = fuzz_started + Duration::from_secs(sh.cfg.seconds);
    let workers: Vec<_> = (0..sh.cfg.workers)
        .map(|id| {
            let worker = Worker {
                r: Rng::new(sh.cfg.seed.wrapping_mul(0x1000_0000_01b3).wrapping_add(id as u64)),
                sh: sh.clone(),
                conns: (0..3).map(|_| None).collect(),
                held: VecDeque::new(),
            };
            tokio::spawn(worker.run(deadline))
        })
        .collect();
    for worker in workers {
        // A worker never runs past its deadline by more than one call's timeout.
        let _ = tokio::time::timeout(Duration::from_secs(sh.cfg.seconds + 120), worker).await;
    }
    let fuzzed_for = fuzz_started.elapsed();
    let crashed_early = sh.stop.swap(true, Relaxed);
    let _ = janitor_task.await;
    let _ = monitor_task.await;
    let outside_changes = sentinel_task.await.unwrap_or_default();
    // With the workers' streams closed: what one never-read watch holds on a member.
    let watch_probe = if sh.pids.iter().all(|pid| process_alive(*pid)) {
        unread_watch_probe(&sh, 64).await
    } else {
        "not run (a member exited)".into()
    };
    let requests = sh.sent.load(Relaxed);

    // ------------------------------------------------------------------- the checks
    let mut failures: Vec<String> = Vec::new();
    let (gaps, changes): (Vec<&String>, Vec<&String>) =
        outside_changes.iter().partition(|c| c.starts_with("(not a change"));
    if !changes.is_empty() {
        failures.push(format!(
            "writes outside the fuzz prefix (seen by the sentinel watch): {}",
            changes
                .iter()
                .take(20)
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    for gap in gaps {
        println!("sentinel: {gap}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alive: Vec<bool> = sh.pids.iter().map(|pid| process_alive(*pid)).collect();
    for (i, ok) in alive.iter().enumerate() {
        if !ok {
            failures.push(format!("member m{i} exited during the run"));
            cluster.wait_exit(i);
        }
    }
    if alive.iter().all(|a| *a) {
        if let Err(e) = agreed_leader(&client_addrs).await {
            failures.push(e);
        }
        for what in tidy(&sh).await {
            println!("cleanup: {what}");
        }
        if let Ok(status) =
            unary::<_, pb::AuthStatusResponse>(&client_addrs[0], AuthStatus, &pb::AuthStatusRequest {}).await
        {
            if status.enabled {
                failures.push("auth ended up enabled".into());
            }
        }
        for (i, m) in cluster.members.iter().enumerate() {
            let url = format!("{}/health", m.client_url);
            let deadline = Instant::now() + Duration::from_secs(30);
            let health = loop {
                let got = tokio::task::spawn_blocking({
                    let url = url.clone();
                    move || common::http::get(&url)
                })
                .await
                .expect("health probe");
                match got {
                    Ok(r) if r.status == 200 => break Ok(()),
                    other if Instant::now() > deadline => break Err(format!("{other:?}")),
                    _ => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            };
            if let Err(e) = health {
                failures.push(format!("m{i} /health: {e}"));
            }
            match outside_prefix(&client_addrs[i]).await {
                Ok(now) if now == known => {}
                Ok(now) => {
                    let changed: Vec<String> = now
                        .iter()
                        .filter(|k| !known.contains(k))
                        .map(|k| format!("{} (mod {})", show(&k.0), k.3))
                        .chain(
                            known
                                .iter()
                                .filter(|k| !now.contains(k))
                                .map(|k| format!("{} gone or changed", show(&k.0))),
                        )
                        .take(20)
                        .collect();
                    failures.push(format!(
                        "m{i}: keys outside the fuzz prefix changed: {}",
                        changed.join(", ")
                    ));
                }
                Err(e) => failures.push(format!("m{i}: linearizable Range failed: {e}")),
            }
        }
        // The members' HashKV at one revision.
        let revision = match unary::<_, pb::RangeResponse>(
            &client_addrs[0],
            Range,
            &pb::RangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            },
        )
        .await
        {
            Ok(resp) => resp.header.map_or(0, |h| h.revision),
            Err(e) => {
                failures.push(format!("no revision for HashKV: {e}"));
                0
            }
        };
        if revision > 0 {
            let mut hashes = Vec::new();
            for addr in &client_addrs {
                let mut last = Err(String::new());
                for _ in 0..20 {
                    last = unary::<_, pb::HashKvResponse>(addr, HashKv, &pb::HashKvRequest { revision }).await;
                    if last.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                match last {
                    Ok(resp) => hashes.push((resp.hash, resp.compact_revision)),
                    Err(e) => failures.push(format!("HashKV at {revision} on {addr}: {e}")),
                }
            }
            if hashes.windows(2).any(|w| w[0].0 != w[1].0) {
                failures.push(format!("members' HashKV at revision {revision} differ: {hashes:?}"));
            }
            println!("HashKV at revision {revision}: {hashes:?}");
        }
    }
    for (i, log) in sh.logs.iter().enumerate() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines = alarming_lines(&text);
        if !lines.is_empty() {
            failures.push(format!(
                "m{i}'s log mentions a panic or fatal error:\n  {}",
                lines.iter().take(10).cloned().collect::<Vec<_>>().join("\n  ")
            ));
        }
    }
    let rss: Vec<String> = sh
        .pids
        .iter()
        .map(|p| format!("{} MiB", peak_rss_kib(*p).unwrap_or(0) / 1024))
        .collect();

    print_table(&sh);
    println!(
        "requests started by the workers: {requests}; they ran {:.1} s{}",
        fuzzed_for.as_secs_f64(),
        if crashed_early {
            " (stopped early: a member exited)"
        } else {
            ""
        }
    );
    println!("peak RSS per member: {}", rss.join(", "));
    println!("probe: {body_probe}");
    println!("probe: {watch_probe}");
    let incidents = sh.incidents.lock().unwrap().clone();
    for incident in &incidents {
        println!("INCIDENT {incident}");
    }
    if !failures.is_empty() {
        println!("FAILED (FUZZ_SEED={}):\n- {}", sh.cfg.seed, failures.join("\n- "));
    }
    assert!(
        failures.is_empty(),
        "protocol fuzzing (FUZZ_SEED={}) found {} problem(s):\n- {}",
        sh.cfg.seed,
        failures.len(),
        failures.join("\n- ")
    );
}
