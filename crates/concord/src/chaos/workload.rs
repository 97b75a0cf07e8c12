//! The clients of a chaos run. Each has its own connections (one lazy channel per member), sends
//! one request at a time, moves to the next member when its member fails it, and records every
//! op it invokes in the shared [`Recorder`]:
//!
//! - registers: puts, linearizable gets and compare-and-set Txns on a few keys, and ranges over
//!   all of them (across shards when the keyspace is split), each key of which counts as a get;
//! - list append: read-modify-write Txns that append a unique element to a list;
//! - watchers: a prefix watch over all of the above from the first revision of the run, resumed
//!   on another member (from the next revision) whenever its stream breaks;
//! - locks: v3lock holders that prove mutual exclusion with guarded writes (see [`lock_client`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_chaos::{
    history::append_to_list, Call, ClientId, EventKind, KeyRange, Outcome, Recorder, Ret, WatchEvent, WatchStream,
};
use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::request_op::Request as TxnOp;
use concord_proto::etcdserverpb::response_op::Response as TxnResult;
use concord_proto::etcdserverpb::watch_client::WatchClient;
use concord_proto::etcdserverpb::watch_request::RequestUnion;
use concord_proto::etcdserverpb::{
    Compare, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest,
};
use concord_proto::v3lockpb::lock_client::LockClient;
use concord_proto::v3lockpb::{LockRequest, UnlockRequest};
use tokio::sync::watch;
use tonic::transport::Channel;

use super::cluster::lazy_channel;
use crate::bench::SplitMix64;

/// How long one KV request may take before its outcome is unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the append clients use one set of list keys before moving to fresh ones.
const LIST_GENERATION: Duration = Duration::from_secs(15);
/// How long a client waits after its member failed it, before it tries the next one.
const BACKOFF: Duration = Duration::from_millis(100);

/// What every client of a run shares.
pub struct Shared {
    /// The history every client records into.
    pub recorder: Recorder,
    /// Every member's client URL.
    pub urls: Vec<String>,
    /// The run's key prefix: register keys are `<prefix>r/N`, list keys `<prefix>a/G/N` (G: the
    /// generation).
    pub prefix: String,
    /// The keys of each kind.
    pub keys: u64,
    /// The run's seed, from which every client's choices derive.
    pub seed: u64,
    /// Becomes true when the clients should finish their current op and stop.
    pub stop: watch::Receiver<bool>,
    /// Counts ops per outcome: ok, unknown, failed.
    pub counts: [AtomicU64; 3],
    /// What the lock clients saw.
    pub locks: LockStats,
    /// When the clients started; list keys change with the time since.
    pub started: std::time::Instant,
}

/// Counts and violations of the lock workload.
#[derive(Default)]
pub struct LockStats {
    /// Times a client held the lock and completed its guarded write and read.
    pub holds: AtomicU64,
    /// Times a client found its lock gone before it could use it (its lease expired).
    pub lost: AtomicU64,
    /// Mutual-exclusion violations, described.
    pub violations: Mutex<Vec<String>>,
}

impl Shared {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    fn count(&self, outcome: &Outcome) {
        let i = match outcome {
            Outcome::Ok(_) => 0,
            Outcome::Unknown => 1,
            Outcome::Failed => 2,
        };
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    fn record(&self, invocation: concord_chaos::Invocation, outcome: Outcome) {
        self.count(&outcome);
        self.recorder.complete(invocation, outcome);
    }

    fn register_key(&self, i: u64) -> Vec<u8> {
        format!("{}r/{i}", self.prefix).into_bytes()
    }

    /// List key `i` of the current generation. Every append rewrites the whole list, so the
    /// clients move to fresh lists every [`LIST_GENERATION`] to keep values, and the store's
    /// history, from growing without bound in long runs.
    fn list_key(&self, i: u64) -> Vec<u8> {
        self.list_key_of(self.generation(), i)
    }

    fn list_key_of(&self, generation: u64, i: u64) -> Vec<u8> {
        format!("{}a/{generation}/{i}", self.prefix).into_bytes()
    }

    fn generation(&self) -> u64 {
        self.started.elapsed().as_secs() / LIST_GENERATION.as_secs()
    }

    /// Every key the register and append clients may have written so far.
    pub fn all_keys(&self) -> Vec<Vec<u8>> {
        let registers = (0..self.keys).map(|i| self.register_key(i));
        let lists = (0..=self.generation()).flat_map(|g| (0..self.keys).map(move |i| (g, i)));
        registers.chain(lists.map(|(g, i)| self.list_key_of(g, i))).collect()
    }

    /// The range the watchers watch: every register and list key (in every shard, when the
    /// keyspace is split between them).
    pub fn watched_range(&self) -> KeyRange {
        KeyRange::prefix(self.prefix.as_bytes())
    }
}

/// A client's own connections, and which member it currently talks to.
struct Conn {
    channels: Vec<Channel>,
    current: usize,
}

impl Conn {
    fn new(shared: &Shared, first: usize) -> Conn {
        Conn {
            channels: shared.urls.iter().map(|u| lazy_channel(u)).collect(),
            current: first % shared.urls.len(),
        }
    }

    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channels[self.current].clone())
    }

    fn next_member(&mut self) {
        self.current = (self.current + 1) % self.channels.len();
    }
}

/// Awaits a gRPC call for at most the op timeout; a timeout becomes `DeadlineExceeded`.
async fn timed<T>(
    f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(tonic::Status::deadline_exceeded("chaos client timeout")),
    }
}

/// The outcome of a failed write: certainly not applied only when the connection was refused
/// (nothing was sent); anything else may have applied.
fn failed_write(status: &tonic::Status) -> Outcome {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.contains("Connection refused") {
        Outcome::Failed
    } else {
        Outcome::Unknown
    }
}

fn compare_value(key: &[u8], expect: &Option<Vec<u8>>) -> Compare {
    match expect {
        Some(value) => Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.to_vec(),
            target_union: Some(TargetUnion::Value(value.clone())),
            ..Default::default()
        },
        None => Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: key.to_vec(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..Default::default()
        },
    }
}

fn put_op(key: &[u8], value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(TxnOp::RequestPut(PutRequest {
            key: key.to_vec(),
            value,
            ..Default::default()
        })),
    }
}

/// Puts, linearizable gets, ranges over them all ([`read_across`]) and compare-and-sets on the
/// register keys.
pub async fn register_client(shared: Arc<Shared>, client: ClientId) {
    let mut rng = SplitMix64::new(shared.seed ^ client.wrapping_mul(0x9e37_79b9));
    let mut conn = Conn::new(&shared, client as usize);
    let mut seen: std::collections::HashMap<Vec<u8>, Option<Vec<u8>>> = Default::default();
    let mut seq = 0u64;
    while !shared.stopped() {
        let key = shared.register_key(rng.below(shared.keys));
        seq += 1;
        let value = format!("c{client}-{seq}").into_bytes();
        let ok = match rng.below(10) {
            3 => {
                let read = read_across(&shared, &mut conn, client).await;
                for (key, value) in &read {
                    seen.insert(key.clone(), value.clone());
                }
                !read.is_empty()
            }
            0..=2 => {
                let inv = shared.recorder.invoke(client, Call::Get { key: key.clone() });
                let request = RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                };
                match timed(conn.kv().range(request)).await {
                    Ok(r) => {
                        let kv = r.kvs.first();
                        let ret = Ret::Get {
                            value: kv.map(|kv| kv.value.clone()),
                            mod_revision: kv.map_or(0, |kv| kv.mod_revision),
                            revision: r.header.map_or(0, |h| h.revision),
                        };
                        seen.insert(key, kv.map(|kv| kv.value.clone()));
                        shared.record(inv, Outcome::Ok(ret));
                        true
                    }
                    Err(_) => {
                        shared.record(inv, Outcome::Failed);
                        false
                    }
                }
            }
            4..=7 => {
                let call = Call::Put {
                    key: key.clone(),
                    value: value.clone(),
                };
                let inv = shared.recorder.invoke(client, call);
                let request = PutRequest {
                    key,
                    value,
                    ..Default::default()
                };
                match timed(conn.kv().put(request)).await {
                    Ok(r) => {
                        let revision = r.header.map_or(0, |h| h.revision);
                        shared.record(inv, Outcome::Ok(Ret::Put { revision }));
                        true
                    }
                    Err(e) => {
                        shared.record(inv, failed_write(&e));
                        false
                    }
                }
            }
            _ => {
                let expect = seen.get(&key).cloned().unwrap_or(None);
                let call = Call::Cas {
                    key: key.clone(),
                    expect: expect.clone(),
                    new: value.clone(),
                };
                let inv = shared.recorder.invoke(client, call);
                let request = TxnRequest {
                    compare: vec![compare_value(&key, &expect)],
                    success: vec![put_op(&key, value)],
                    failure: vec![],
                };
                match timed(conn.kv().txn(request)).await {
                    Ok(r) => {
                        let ret = Ret::Cas {
                            succeeded: r.succeeded,
                            revision: r.header.map_or(0, |h| h.revision),
                        };
                        shared.record(inv, Outcome::Ok(ret));
                        true
                    }
                    Err(e) => {
                        shared.record(inv, failed_write(&e));
                        false
                    }
                }
            }
        };
        if !ok {
            conn.next_member();
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

/// A linearizable Range over every register key, reaching down into the list keys before them,
/// so across shards when the keyspace is split. Each register in its span counts as a Get at the
/// range's revision, so the checks hold every key of it to that one revision (a register missing
/// a write acknowledged at or below it is a stale read). Returns what it read of each register;
/// nothing when the read failed.
async fn read_across(shared: &Shared, conn: &mut Conn, client: ClientId) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let keys: Vec<Vec<u8>> = (0..shared.keys).map(|i| shared.register_key(i)).collect();
    let reads: Vec<_> = keys
        .iter()
        .map(|key| shared.recorder.invoke(client, Call::Get { key: key.clone() }))
        .collect();
    let request = RangeRequest {
        key: shared.list_key(shared.keys.saturating_sub(1)),
        range_end: format!("{}r0", shared.prefix).into_bytes(),
        ..Default::default()
    };
    let answer = match timed(conn.kv().range(request)).await {
        Ok(answer) => answer,
        Err(_) => {
            for read in reads {
                shared.record(read, Outcome::Failed);
            }
            return Vec::new();
        }
    };
    let revision = answer.header.map_or(0, |h| h.revision);
    let mut found = Vec::new();
    for (read, key) in reads.into_iter().zip(keys) {
        let kv = answer.kvs.iter().find(|kv| kv.key == key);
        let ret = Ret::Get {
            value: kv.map(|kv| kv.value.clone()),
            mod_revision: kv.map_or(0, |kv| kv.mod_revision),
            revision,
        };
        shared.record(read, Outcome::Ok(ret));
        found.push((key, kv.map(|kv| kv.value.clone())));
    }
    found
}

/// Appends unique elements to the list keys, each by a read and a Txn that only applies if the
/// key's mod revision is still the one read; retried while the compare fails.
pub async fn append_client(shared: Arc<Shared>, client: ClientId) {
    const ATTEMPTS: usize = 20;
    let mut rng = SplitMix64::new(shared.seed ^ client.wrapping_mul(0x85eb_ca6b));
    let mut conn = Conn::new(&shared, client as usize);
    let mut seq = 0u64;
    while !shared.stopped() {
        let key = shared.list_key(rng.below(shared.keys));
        seq += 1;
        let elem = format!("c{client}-{seq}").into_bytes();
        let call = Call::Append {
            key: key.clone(),
            elem: elem.clone(),
        };
        let inv = shared.recorder.invoke(client, call);
        let mut outcome = Outcome::Failed;
        for _ in 0..ATTEMPTS {
            let read = RangeRequest {
                key: key.clone(),
                ..Default::default()
            };
            let (old, mod_revision) = match timed(conn.kv().range(read)).await {
                Ok(r) => match r.kvs.first() {
                    Some(kv) => (Some(kv.value.clone()), kv.mod_revision),
                    None => (None, 0),
                },
                Err(_) => {
                    conn.next_member();
                    tokio::time::sleep(BACKOFF).await;
                    continue;
                }
            };
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: key.clone(),
                    target_union: Some(TargetUnion::ModRevision(mod_revision)),
                    ..Default::default()
                }],
                success: vec![put_op(&key, append_to_list(old.as_deref(), &elem))],
                failure: vec![],
            };
            match timed(conn.kv().txn(txn)).await {
                Ok(r) if r.succeeded => {
                    let revision = r.header.map_or(0, |h| h.revision);
                    outcome = Outcome::Ok(Ret::Append { revision });
                    break;
                }
                Ok(_) => continue,
                Err(e) => {
                    outcome = failed_write(&e);
                    conn.next_member();
                    if outcome == Outcome::Unknown {
                        break;
                    }
                    tokio::time::sleep(BACKOFF).await;
                }
            }
            if shared.stopped() {
                break;
            }
        }
        shared.record(inv, outcome);
    }
}

/// Watches every register and list key from the stream's start revision, resuming on the next
/// member from the revision after the last event whenever the stream breaks, until `until` names
/// a revision the watcher has passed. Events go into `stream` as they arrive, so whoever gives
/// up on a stalled watcher still has what it received.
pub async fn watch_client(
    shared: Arc<Shared>,
    stream: Arc<Mutex<WatchStream>>,
    mut until: watch::Receiver<Option<i64>>,
) {
    let (watcher, range, mut next) = {
        let s = stream.lock().unwrap();
        (s.watcher, s.range.clone(), s.start_revision)
    };
    let mut conn = Conn::new(&shared, watcher as usize + 1);
    let reached = |next: i64, until: &Option<i64>| until.is_some_and(|u| next > u);
    loop {
        if reached(next, &until.borrow()) {
            stream.lock().unwrap().complete_through = Some(next - 1);
            return;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: range.start.clone(),
                range_end: range.end.clone(),
                start_revision: next,
                ..Default::default()
            })),
        };
        let _ = tx.send(create).await;
        let mut client = WatchClient::new(conn.channels[conn.current].clone());
        let responses = tokio::time::timeout(
            OP_TIMEOUT,
            client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await;
        let mut responses = match responses {
            Ok(Ok(r)) => r.into_inner(),
            _ => {
                conn.next_member();
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                message = responses.message() => match message {
                    Ok(Some(response)) if !response.canceled => {
                        let mut s = stream.lock().unwrap();
                        for event in response.events {
                            let Some(kv) = event.kv else { continue };
                            next = kv.mod_revision + 1;
                            s.events.push(WatchEvent {
                                revision: kv.mod_revision,
                                key: kv.key,
                                kind: if event.r#type == 1 { EventKind::Delete } else { EventKind::Put },
                                value: kv.value,
                            });
                        }
                        drop(s);
                        if reached(next, &until.borrow()) {
                            break;
                        }
                    }
                    _ => break,
                },
                changed = until.changed() => {
                    if changed.is_err() || reached(next, &until.borrow()) {
                        break;
                    }
                }
            }
        }
        drop(tx);
        if !reached(next, &until.borrow()) {
            conn.next_member();
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

/// Contends for one v3lock lock. A holder proves it holds the lock by writing the shared data
/// key, and reading it back, each in a Txn guarded by "my lock key still exists". If the guarded
/// read returns someone else's value, two clients held the lock at once: the other writer's key
/// existed at its write, between my guarded write and read, while mine existed throughout,
/// which the lock's protocol (the oldest key holds it; keys are never re-created) forbids.
pub async fn lock_client(shared: Arc<Shared>, client: ClientId, lock_name: Vec<u8>, data_key: Vec<u8>) {
    let mut rng = SplitMix64::new(shared.seed ^ client.wrapping_mul(0xc2b2_ae35));
    let mut conn = Conn::new(&shared, client as usize);
    let mut seq = 0u64;
    while !shared.stopped() {
        seq += 1;
        let channel = conn.channels[conn.current].clone();
        let mut lease = LeaseClient::new(channel.clone());
        let mut lock = LockClient::new(channel.clone());
        let mut kv = KvClient::new(channel);
        let grant = LeaseGrantRequest { ttl: 5, id: 0 };
        let lease_id = match timed(lease.lease_grant(grant)).await {
            Ok(r) if r.error.is_empty() => r.id,
            _ => {
                conn.next_member();
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        let request = LockRequest {
            name: lock_name.clone(),
            lease: lease_id,
        };
        let key = match tokio::time::timeout(Duration::from_secs(8), lock.lock(request)).await {
            Ok(Ok(r)) => r.into_inner().key,
            _ => {
                let _ = timed(lease.lease_revoke(LeaseRevokeRequest { id: lease_id })).await;
                conn.next_member();
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        let mine = format!("c{client}-{seq}").into_bytes();
        let held = Compare {
            result: CompareResult::Greater as i32,
            target: CompareTarget::Create as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..Default::default()
        };
        let write = TxnRequest {
            compare: vec![held.clone()],
            success: vec![put_op(&data_key, mine.clone())],
            failure: vec![],
        };
        match timed(kv.txn(write)).await {
            Ok(r) if r.succeeded => {
                tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
                let read = TxnRequest {
                    compare: vec![held],
                    success: vec![RequestOp {
                        request: Some(TxnOp::RequestRange(RangeRequest {
                            key: data_key.clone(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![],
                };
                match timed(kv.txn(read)).await {
                    Ok(r) if r.succeeded => {
                        let value = r.responses.into_iter().find_map(|op| match op.response {
                            Some(TxnResult::ResponseRange(range)) => range.kvs.into_iter().next().map(|kv| kv.value),
                            _ => None,
                        });
                        if value.as_deref() == Some(mine.as_slice()) {
                            shared.locks.holds.fetch_add(1, Ordering::Relaxed);
                        } else {
                            let revision = r.header.map_or(0, |h| h.revision);
                            let found = value.map(|v| String::from_utf8_lossy(&v).into_owned());
                            shared.locks.violations.lock().unwrap().push(format!(
                                "client {client} holding {} wrote {} but read {found:?} at revision {revision} while still holding the lock",
                                String::from_utf8_lossy(&key),
                                String::from_utf8_lossy(&mine),
                            ));
                        }
                    }
                    Ok(_) => {
                        shared.locks.lost.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => conn.next_member(),
                }
            }
            Ok(_) => {
                shared.locks.lost.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => conn.next_member(),
        }
        let _ = timed(lock.unlock(UnlockRequest { key })).await;
        let _ = timed(lease.lease_revoke(LeaseRevokeRequest { id: lease_id })).await;
    }
}
