//! One request must never take a member's memory (or its disk): a unary call that keeps
//! sending, watch streams whose clients never read, snapshot downloads whose clients stall.
//!
//! These speak HTTP/2 directly (the `h2` crate), as a misbehaving client would: the etcd client
//! cannot send a body longer than its message, nor stop reading a stream it opened.

mod common;

use std::future::poll_fn;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, WAIT};
use concord_proto::etcdserverpb::watch_request::RequestUnion;
use concord_proto::etcdserverpb::{PutRequest, SnapshotRequest, WatchCreateRequest, WatchRequest};
use h2::client::{ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};
use prost::Message as _;
use tokio::task::JoinHandle;

/// etcd's default `--max-request-bytes` plus the gRPC allowance: the largest message a member
/// started with default flags accepts.
const MAX_MESSAGE: usize = 1536 * 1024 + 512 * 1024;

/// gRPC status codes the tests expect.
const INTERNAL: &str = "13";
const OUT_OF_RANGE: &str = "11";
const DEADLINE_EXCEEDED: &str = "4";
const RESOURCE_EXHAUSTED: &str = "8";

/// One HTTP/2 connection to a member, closed when dropped.
struct Connection {
    client: SendRequest<Bytes>,
    task: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to `url` with h2's default settings (a 64 KiB receive window, as grpc-go starts
/// with).
async fn connect(url: &str) -> Connection {
    let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("http://"))
        .await
        .expect("connect to the member");
    let (client, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    Connection { client, task }
}

/// Starts a POST to `path` with `content_type`; its body is sent on the returned stream.
async fn start(conn: &Connection, url: &str, path: &str, content_type: &str) -> (ResponseFuture, SendStream<Bytes>) {
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("{url}{path}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(())
        .expect("request");
    let mut client = conn.client.clone().ready().await.expect("connection ready");
    client.send_request(request, false).expect("send the request")
}

/// Starts a gRPC call of `path`.
async fn start_grpc(conn: &Connection, url: &str, path: &str) -> (ResponseFuture, SendStream<Bytes>) {
    start(conn, url, path, "application/grpc").await
}

/// `message` in gRPC's framing: no compression, its length, itself.
fn framed(message: &[u8]) -> Bytes {
    let mut data = vec![0];
    data.extend_from_slice(&(message.len() as u32).to_be_bytes());
    data.extend_from_slice(message);
    data.into()
}

/// Sends `first`, then zeros, until `total` bytes have gone (ending the stream with the last)
/// or the server ends the stream; only as fast as the server's flow control lets it. Returns
/// the bytes sent.
async fn keep_sending(mut stream: SendStream<Bytes>, first: Bytes, total: usize) -> usize {
    let zeros = Bytes::from(vec![0u8; 64 * 1024]);
    let mut pending = first;
    let mut sent = 0;
    while sent < total {
        if pending.is_empty() {
            pending = zeros.slice(..zeros.len().min(total - sent));
        }
        stream.reserve_capacity(pending.len());
        while stream.capacity() == 0 {
            match poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                _ => return sent,
            }
        }
        let data = pending.split_to(stream.capacity().min(pending.len()));
        sent += data.len();
        if stream.send_data(data, sent == total).is_err() {
            return sent;
        }
    }
    sent
}

/// What a call was answered: the HTTP status, and the gRPC status and message (from the
/// headers of a trailers-only answer, else from the trailers).
async fn answer(response: ResponseFuture) -> (u16, Option<String>, String) {
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("an answer in time")
        .expect("an answer, not a reset");
    let status = response.status().as_u16();
    let (head, mut body) = response.into_parts();
    let mut fields = head.headers;
    if !fields.contains_key("grpc-status") {
        while let Some(data) = tokio::time::timeout(WAIT, body.data()).await.expect("the body in time") {
            if data.is_err() {
                break;
            }
        }
        if let Ok(Ok(Some(trailers))) = tokio::time::timeout(WAIT, body.trailers()).await {
            fields = trailers;
        }
    }
    let field = |name: &str| {
        fields
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let message = field("grpc-message").map(|m| percent_decoded(&m)).unwrap_or_default();
    (status, field("grpc-status"), message)
}

/// A `grpc-message` as it was before gRPC percent-encoded it.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (bytes[i], escaped) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Starts a call of `path` whose body is `first` followed by zeros up to `total` bytes, and
/// returns its answer and how many bytes the client had sent when the server stopped taking
/// them.
async fn call_sending(
    url: &str,
    path: &str,
    content_type: &str,
    first: Bytes,
    total: usize,
) -> ((u16, Option<String>, String), usize) {
    let conn = connect(url).await;
    let (response, body) = start(&conn, url, path, content_type).await;
    let sender = tokio::spawn(keep_sending(body, first, total));
    let answer = answer(response).await;
    let sent = tokio::time::timeout(WAIT, sender)
        .await
        .expect("the sender stops once the server stops reading")
        .expect("the sender does not panic");
    (answer, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_that_keeps_sending_after_its_message_is_refused_before_it_ends() {
    let cluster = Cluster::start(1).await;
    let url = &cluster.members[0].client_url;
    let put = PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    let total = 64 << 20;
    let ((_, code, message), sent) = call_sending(
        url,
        "/etcdserverpb.KV/Put",
        "application/grpc",
        framed(&put.encode_to_vec()),
        total,
    )
    .await;
    assert_eq!(code.as_deref(), Some(INTERNAL), "{message}");
    assert!(message.contains("multiple request messages"), "{message}");
    assert!(
        sent < total,
        "the member read the whole body ({sent} bytes) before answering"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_announced_past_the_limit_is_refused_before_it_is_sent() {
    let cluster = Cluster::start(1).await;
    let url = &cluster.members[0].client_url;

    // The KV calls, answered without tonic.
    let announced = MAX_MESSAGE + 1;
    let mut prefix = vec![0];
    prefix.extend_from_slice(&(announced as u32).to_be_bytes());
    let total = 5 + announced;
    let ((_, code, message), sent) =
        call_sending(url, "/etcdserverpb.KV/Put", "application/grpc", prefix.into(), total).await;
    assert_eq!(code.as_deref(), Some(OUT_OF_RANGE), "{message}");
    assert!(
        sent < total,
        "the member read the whole message ({sent} bytes) before refusing it"
    );

    // The other services, through tonic, whose own default limit is 4 MiB: a well-formed
    // LeaseGrantRequest of 3.5 MiB (an unknown field the decoder would skip) is refused too.
    let padding = 3 << 20 | 512 << 10;
    let mut grant = vec![0xa2, 0x06]; // field 100, length-delimited
    prost::encoding::encode_varint(padding as u64, &mut grant);
    grant.resize(grant.len() + padding, 0);
    let first = framed(&grant);
    let total = first.len();
    let ((_, code, message), sent) =
        call_sending(url, "/etcdserverpb.Lease/LeaseGrant", "application/grpc", first, total).await;
    assert_eq!(code.as_deref(), Some(OUT_OF_RANGE), "{message}");
    assert!(
        sent < total,
        "the member read the whole message ({sent} bytes) before refusing it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_body_is_read_only_up_to_its_limit() {
    let cluster = Cluster::start(1).await;
    let url = &cluster.members[0].client_url;
    let total = 64 << 20;
    let ((status, _, _), sent) = call_sending(
        url,
        "/ui/api/login",
        "application/json",
        Bytes::from_static(b"{\"name\":\""),
        total,
    )
    .await;
    assert_eq!(status, 413);
    assert!(
        sent < total,
        "the member read the whole body ({sent} bytes) before refusing it"
    );
}

/// Member `i`'s resident memory in MiB.
fn rss_mib(cluster: &Cluster, i: usize) -> u64 {
    cluster.rss_kib(i).expect("the member runs") / 1024
}

/// Puts `count` keys `{prefix}{n}` of `value` on member 0, four at a time; returns the highest
/// RSS (MiB) seen along the way.
async fn put_values(cluster: &Cluster, prefix: &str, count: usize, value: &[u8]) -> u64 {
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(cluster.client(0).await);
    }
    let mut highest = 0;
    for round in 0..count.div_ceil(clients.len()) {
        let puts = clients.iter_mut().enumerate().map(|(i, c)| {
            let key = format!("{prefix}{}", round * 4 + i);
            async move { c.put(key, value.to_vec(), None).await }
        });
        for put in futures::future::join_all(puts).await {
            put.expect("put");
        }
        highest = highest.max(rss_mib(cluster, 0));
    }
    highest
}

/// A watch stream whose client reads its first response and nothing more.
struct StalledWatch {
    _conn: Connection,
    _requests: SendStream<Bytes>,
    _responses: RecvStream,
}

/// Opens a watch of every key with previous values, waits until the member has created it,
/// then never reads again: the stream's receive window fills and stays full.
async fn stalled_watch(url: &str) -> StalledWatch {
    let conn = connect(url).await;
    let (response, mut requests) = start_grpc(&conn, url, "/etcdserverpb.Watch/Watch").await;
    let create = WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: vec![0],
            range_end: vec![0],
            prev_kv: true,
            ..Default::default()
        })),
    };
    requests
        .send_data(framed(&create.encode_to_vec()), false)
        .expect("send the watch request");
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("watch answered in time")
        .expect("watch answered");
    let mut responses = response.into_body();
    let created = tokio::time::timeout(WAIT, responses.data())
        .await
        .expect("created in time");
    assert!(matches!(created, Some(Ok(_))), "the watch was created");
    StalledWatch {
        _conn: conn,
        _requests: requests,
        _responses: responses,
    }
}

/// Reads `watch` until it has seen `count` events.
async fn read_events(watch: &mut etcd_client::WatchStream, count: usize) {
    let mut seen = 0;
    while seen < count {
        let resp = tokio::time::timeout(WAIT, watch.message())
            .await
            .expect("events in time")
            .expect("watch stream")
            .expect("watch open");
        seen += resp.events().len();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_that_never_read_hold_bounded_memory() {
    let cluster = Cluster::start(1).await;
    let url = cluster.members[0].client_url.clone();
    let value = vec![b'v'; 100 * 1024];
    // A watcher that reads everything, throughout: the member reads and sends every write's
    // events in both phases, so only the stalled streams tell them apart.
    let mut reader = cluster.client(0).await;
    let mut healthy = reader
        .watch("", Some(etcd_client::WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let created = tokio::time::timeout(WAIT, healthy.message())
        .await
        .expect("created in time");
    assert!(created.expect("watch").expect("watch open").created());
    // The same writes first without stalled streams, so the baseline has the store's caches,
    // the Raft log's tail and the allocator's working set in it.
    put_values(&cluster, "warm/", 300, &value).await;
    read_events(&mut healthy, 300).await;
    let baseline = rss_mib(&cluster, 0);

    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(stalled_watch(&url).await);
    }
    let highest = put_values(&cluster, "load/", 300, &value).await;
    // Once the reading watcher has every write, the hub has broadcast them all. It read nothing
    // while the writes went on, so it also went through falling behind and catching up.
    read_events(&mut healthy, 300).await;
    let highest = highest.max(rss_mib(&cluster, 0));
    let growth = highest.saturating_sub(baseline);
    eprintln!("20 stalled watch streams, 300 puts of 100 KiB: RSS {baseline} MiB -> {highest} MiB (+{growth} MiB)");
    // Each stalled stream may hold its queue, the events in hand and HTTP/2's buffers (about
    // 1 MiB each here), where each is sent 60 MiB. Before the bound, the growth was 600 MiB.
    assert!(growth < 64, "20 stalled watch streams grew the member by {growth} MiB");
    drop(stalled);
}

/// The snapshot files of clients' downloads in member 0's data directory.
fn download_files(cluster: &Cluster) -> Vec<String> {
    let dir = cluster.members[0].data_dir.join("member").join("snap");
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("client-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (within [`WAIT`]) until member 0 has no download file left.
async fn wait_for_no_download_files(cluster: &Cluster, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let files = download_files(cluster);
        if files.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still on disk after {WAIT:?}: {files:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A snapshot download whose client takes the answer's headers and nothing more.
struct StalledDownload {
    conn: Connection,
    responses: RecvStream,
}

/// Starts a snapshot download and waits for the member to answer it (once its copy of the store
/// is written), without reading any of it.
async fn stalled_download(url: &str) -> StalledDownload {
    match try_download(url).await {
        Ok(download) => download,
        Err(refusal) => panic!("the download was refused: {refusal}"),
    }
}

/// Starts a snapshot download as [`stalled_download`] does; the member's refusal (its
/// grpc-status and message) if it refuses at once.
async fn try_download(url: &str) -> Result<StalledDownload, String> {
    let conn = connect(url).await;
    let (response, mut request) = start_grpc(&conn, url, "/etcdserverpb.Maintenance/Snapshot").await;
    request
        .send_data(framed(&SnapshotRequest {}.encode_to_vec()), true)
        .expect("send the snapshot request");
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("snapshot answered in time")
        .expect("snapshot answered");
    if let Some(status) = response.headers().get("grpc-status") {
        let message = response
            .headers()
            .get("grpc-message")
            .map(|m| m.to_str().unwrap_or("?").to_string());
        return Err(format!(
            "{} {}",
            status.to_str().unwrap_or("?"),
            percent_decoded(&message.unwrap_or_default())
        ));
    }
    Ok(StalledDownload {
        conn,
        responses: response.into_body(),
    })
}

/// Writes about 4 MiB, so that a snapshot is far larger than what HTTP/2 windows and buffers
/// let through to a client that does not read.
async fn fill_store(cluster: &Cluster) {
    put_values(cluster, "fill/", 40, &vec![b'f'; 100 * 1024]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_snapshot_downloads_are_cancelled_and_their_files_removed() {
    let cluster = Cluster::start_with(1, &["--experimental-snapshot-stall-timeout", "2s"]).await;
    fill_store(&cluster).await;
    let url = cluster.members[0].client_url.clone();
    let baseline = rss_mib(&cluster, 0);
    let mut downloads = Vec::new();
    let mut highest = baseline;
    // Two downloads at a time (each holds a copy of the store on disk); a third is refused.
    for _ in 0..2 {
        downloads.push(stalled_download(&url).await);
        highest = highest.max(rss_mib(&cluster, 0));
    }
    let refusal = try_download(&url).await.err().expect("a third download is refused");
    assert!(
        refusal.starts_with(&format!("{RESOURCE_EXHAUSTED} etcdserver: too many requests")),
        "{refusal}"
    );
    assert_eq!(download_files(&cluster).len(), 2, "one copy per download in progress");
    wait_for_no_download_files(&cluster, "the files of stalled downloads").await;
    let after = rss_mib(&cluster, 0);
    eprintln!("2 stalled snapshot downloads (a third refused): RSS {baseline} MiB -> highest {highest} MiB, {after} MiB once cancelled");
    let growth = after.saturating_sub(baseline);
    assert!(growth < 32, "stalled downloads grew the member by {growth} MiB");
    // Their places are free again once they are cancelled.
    drop(
        try_download(&url)
            .await
            .expect("a download once the stalled ones are cancelled"),
    );

    // A client that reads again gets what was already on its way, then an error: never an OK
    // that would pass the partial copy off as whole.
    let mut download = downloads.pop().expect("a download");
    let mut received = 0;
    while let Some(data) = tokio::time::timeout(WAIT, download.responses.data())
        .await
        .expect("data in time")
    {
        let data = data.expect("data");
        received += data.len();
        let _ = download.responses.flow_control().release_capacity(data.len());
    }
    let trailers = tokio::time::timeout(WAIT, download.responses.trailers())
        .await
        .expect("trailers in time")
        .expect("trailers")
        .expect("trailers, after the data");
    assert_eq!(
        trailers.get("grpc-status").map(|v| v.as_bytes()),
        Some(DEADLINE_EXCEEDED.as_bytes()),
        "after {received} bytes: {trailers:?}"
    );
    drop(download.conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_file_goes_when_its_download_ends_or_its_client_leaves() {
    // The default stall timeout (a minute) is longer than any wait here.
    let cluster = Cluster::start(1).await;
    fill_store(&cluster).await;
    let url = cluster.members[0].client_url.clone();

    let mut client = cluster.client(0).await;
    let mut snapshot = client.snapshot().await.expect("snapshot");
    let mut remaining = u64::MAX;
    while remaining > 0 {
        let message = tokio::time::timeout(WAIT, snapshot.message())
            .await
            .expect("snapshot data in time")
            .expect("snapshot stream")
            .expect("the snapshot ends with its checksum");
        remaining = message.remaining_bytes();
    }
    wait_for_no_download_files(&cluster, "the file of a finished download").await;

    let download = stalled_download(&url).await;
    assert_eq!(download_files(&cluster).len(), 1, "the download has its file");
    drop(download);
    wait_for_no_download_files(&cluster, "the file of a download whose client left").await;
}

/// Back-pressure: past `--max-pending-proposal-bytes` of writes waiting for consensus, a member
/// answers new writes with etcd's ResourceExhausted "etcdserver: too many requests" instead of
/// queueing them; every write it acknowledged is there afterwards, and it keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_bytes_in_flight_get_too_many_requests() {
    let cluster = Cluster::start_with(1, &["--max-pending-proposal-bytes=2097152"]).await;
    let value = vec![b'v'; 1024 * 1024];
    let mut tasks = Vec::new();
    for c in 0..8 {
        let client = cluster.client(0).await;
        for i in 0..8 {
            let (mut client, value) = (client.clone(), value.clone());
            tasks.push(tokio::spawn(async move {
                let key = format!("bp/{c}/{i}");
                (key.clone(), client.put(key, value, None).await)
            }));
        }
    }
    let (mut acknowledged, mut refused) = (Vec::new(), 0);
    for task in tasks {
        let (key, outcome) = tokio::time::timeout(WAIT, task)
            .await
            .expect("every put answers")
            .unwrap();
        match outcome {
            Ok(_) => acknowledged.push(key),
            Err(e) => {
                let status = common::grpc_status(e);
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert_eq!(status.message(), "etcdserver: too many requests");
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0,
        "64 MiB of puts at once against a 2 MiB bound: some must be refused"
    );
    assert!(!acknowledged.is_empty(), "and some taken");
    let mut client = cluster.client(0).await;
    for key in &acknowledged {
        let got = client.get(key.as_str(), None).await.unwrap();
        assert_eq!(got.kvs().len(), 1, "acknowledged {key} is there");
    }
    client
        .put("after", "overload", None)
        .await
        .expect("the member serves on");
}
