//! The request/response workloads: `put`, `range`, `txn-put`, `txn-mixed`
//! and `lease-keepalive`. Each client sends one request at a time, times it
//! from send to answer, and takes its next request from the shared schedule.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::channel::BenchChannel;
use concord_proto::etcdserverpb::lease_client::LeaseClient;
use concord_proto::etcdserverpb::{
    request_op, response_op, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseRevokeRequest,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::keys::{encode_key, KeyChooser, SplitMix64};
use super::pace::Schedule;
use super::progress::{self, ProgressBar};
use super::report::{Summary, Tally};
use super::standard_client;
use super::{seed, status_kind, BenchArgs, Consistency, Workload};

/// TTL of the leases that `lease-keepalive` grants (etcd's benchmark uses
/// 100 s too): long enough that none expires during a run. They are revoked
/// at the end.
const LEASE_TTL_SECS: i64 = 100;

/// Pause between tries of a lease's first (untimed) keep-alive.
const FIRST_KEEPALIVE_RETRY: Duration = Duration::from_millis(20);

/// The gRPC paths of the KV calls the workloads make.
const PUT: &str = "/etcdserverpb.KV/Put";
const RANGE: &str = "/etcdserverpb.KV/Range";
const TXN: &str = "/etcdserverpb.KV/Txn";

/// What a request/response client sends: the Kv operations, and what the
/// operation needs besides a key.
#[derive(Debug, Clone, Copy)]
enum KvOp {
    Put,
    Range {
        serializable: bool,
    },
    TxnPut {
        ops: u64,
    },
    /// A Txn with one Range (with probability `read_fraction`) or one Put.
    TxnMixed {
        read_fraction: f64,
        serializable: bool,
    },
}

/// txn-mixed's parts, in the order of the summary's parts.
const READ: usize = 0;
const WRITE: usize = 1;

/// How one request went.
struct Outcome {
    /// The part of the run it belongs to (txn-mixed: [`READ`] or [`WRITE`]).
    part: Option<usize>,
    /// `Ok(found)`: it succeeded, and (for reads) found a key or not; `Err(kind)`: it failed.
    result: Result<bool, String>,
}

impl Outcome {
    fn whole(result: Result<bool, String>) -> Self {
        Outcome { part: None, result }
    }
}

/// Where a client's KV requests go: a connection of `concord bench`'s own driver, or a client
/// of the `etcd-client` crate over every endpoint (`--client etcd-client`).
#[derive(Clone)]
pub enum KvTarget {
    /// `concord bench`'s driver (h2 straight, or tonic for TLS).
    Own(BenchChannel),
    /// The `etcd-client` crate, as applications use it.
    EtcdClient(Box<etcd_client::KvClient>),
}

impl KvTarget {
    async fn put(&mut self, put: PutRequest) -> Result<bool, String> {
        match self {
            KvTarget::Own(kv) => kv
                .unary::<_, PutResponse>(PUT, put)
                .await
                .map(|_| true)
                .map_err(|s| status_kind(&s)),
            KvTarget::EtcdClient(kv) => standard_client::put(kv, put).await.map(|()| true),
        }
    }

    /// Whether the range found a key.
    async fn range(&mut self, range: RangeRequest) -> Result<bool, String> {
        match self {
            KvTarget::Own(kv) => kv
                .unary::<_, RangeResponse>(RANGE, range)
                .await
                .map(|r| !r.kvs.is_empty())
                .map_err(|s| status_kind(&s)),
            KvTarget::EtcdClient(kv) => standard_client::range(kv, range).await,
        }
    }

    /// Whether the txn's first operation was a range that found a key.
    async fn txn(&mut self, txn: TxnRequest) -> Result<bool, String> {
        match self {
            KvTarget::Own(kv) => kv
                .unary::<_, TxnResponse>(TXN, txn)
                .await
                .map(|r| txn_found_key(&r))
                .map_err(|s| status_kind(&s)),
            KvTarget::EtcdClient(kv) => standard_client::txn(kv, txn).await,
        }
    }
}

/// One client's state for the Kv workloads.
struct KvRequester {
    kv: KvTarget,
    op: KvOp,
    keys: KeyChooser,
    key_size: usize,
    value: Arc<Vec<u8>>,
    rng: SplitMix64,
}

impl KvRequester {
    fn put(&self, index: u64) -> PutRequest {
        PutRequest {
            key: encode_key(index, self.key_size),
            value: self.value.as_ref().clone(),
            ..Default::default()
        }
    }

    fn range(&self, index: u64, serializable: bool) -> RangeRequest {
        RangeRequest {
            key: encode_key(index, self.key_size),
            serializable,
            ..Default::default()
        }
    }

    /// Sends the `request`-th request of the run and waits for its answer.
    async fn send(&mut self, request: u64) -> Outcome {
        match self.op {
            KvOp::Put => {
                let index = self.keys.index(request);
                let put = self.put(index);
                Outcome::whole(self.kv.put(put).await)
            }
            KvOp::Range { serializable } => {
                let index = self.keys.index(request);
                let range = self.range(index, serializable);
                Outcome::whole(self.kv.range(range).await)
            }
            KvOp::TxnPut { ops } => {
                // Like etcd's txn-put: consecutive keys from the chosen one, so
                // no key appears twice in one Txn.
                let first = self.keys.index(request.wrapping_mul(ops));
                let space = self.keys.key_space();
                let success = (0..ops)
                    .map(|j| request_op::Request::RequestPut(self.put((first + j) % space)))
                    .map(|op| RequestOp { request: Some(op) })
                    .collect();
                let txn = TxnRequest {
                    compare: Vec::new(),
                    success,
                    failure: Vec::new(),
                };
                Outcome::whole(self.kv.txn(txn).await.map(|_| true))
            }
            KvOp::TxnMixed {
                read_fraction,
                serializable,
            } => {
                let read = self.rng.unit_f64() < read_fraction;
                let index = self.keys.index(request);
                let op = if read {
                    request_op::Request::RequestRange(self.range(index, serializable))
                } else {
                    request_op::Request::RequestPut(self.put(index))
                };
                let success = vec![RequestOp { request: Some(op) }];
                let txn = TxnRequest {
                    compare: Vec::new(),
                    success,
                    failure: Vec::new(),
                };
                let result = self.kv.txn(txn).await;
                Outcome {
                    part: Some(if read { READ } else { WRITE }),
                    result: result.map(|found| !read || found),
                }
            }
        }
    }
}

/// Whether a Txn's first operation was a Range that found a key.
fn txn_found_key(response: &TxnResponse) -> bool {
    matches!(
        response.responses.first().and_then(|r| r.response.as_ref()),
        Some(response_op::Response::ResponseRange(range)) if !range.kvs.is_empty()
    )
}

/// An open LeaseKeepAlive stream: requests go in through `tx`, answers come back on `responses`.
struct KeepAliveStream {
    tx: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: Streaming<LeaseKeepAliveResponse>,
}

/// One client's state for `lease-keepalive`: its lease and its keep-alive stream.
struct KeepAliver {
    lease: LeaseClient<BenchChannel>,
    id: i64,
    /// `None` after a failure: the next request opens a new stream.
    stream: Option<KeepAliveStream>,
    timeout: Duration,
}

impl KeepAliver {
    /// Grants a lease and opens its keep-alive stream with a first keep-alive
    /// (not timed), so that the timed requests are round trips on an open
    /// stream. Returns it with the number of times the first keep-alive had to
    /// be retried: a member may answer "not found" for a lease that another
    /// member has just granted until it has applied the grant.
    async fn new(channel: BenchChannel, timeout: Duration) -> Result<(Self, u64), String> {
        let mut lease = LeaseClient::new(channel);
        let granted = lease
            .lease_grant(LeaseGrantRequest {
                ttl: LEASE_TTL_SECS,
                id: 0,
            })
            .await
            .map_err(|s| format!("cannot grant a lease: {}", status_kind(&s)))?
            .into_inner();
        if !granted.error.is_empty() {
            return Err(format!("cannot grant a lease: {}", granted.error));
        }
        let mut keep_aliver = KeepAliver {
            lease,
            id: granted.id,
            stream: None,
            timeout,
        };
        let give_up = Instant::now() + timeout;
        let mut retries = 0;
        loop {
            match keep_aliver.keep_alive().await {
                Ok(_) => return Ok((keep_aliver, retries)),
                Err(_) if Instant::now() + FIRST_KEEPALIVE_RETRY < give_up => {
                    retries += 1;
                    tokio::time::sleep(FIRST_KEEPALIVE_RETRY).await;
                }
                Err(e) => {
                    keep_aliver.revoke().await;
                    return Err(format!("the first lease keep-alive failed ({retries} retries): {e}"));
                }
            }
        }
    }

    /// One keep-alive round trip, bounded by the request timeout.
    async fn keep_alive(&mut self) -> Result<bool, String> {
        let result = match tokio::time::timeout(self.timeout, self.round_trip()).await {
            Ok(result) => result,
            Err(_) => Err("DeadlineExceeded: no keep-alive answer in time".into()),
        };
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn round_trip(&mut self) -> Result<bool, String> {
        let request = LeaseKeepAliveRequest { id: self.id };
        match &self.stream {
            Some(stream) => stream
                .tx
                .send(request)
                .await
                .map_err(|_| "keep-alive stream closed".to_string())?,
            None => {
                // The request goes in before the call: a server may send the
                // call's response headers only with its first answer.
                let (tx, rx) = mpsc::channel(1);
                tx.send(request)
                    .await
                    .map_err(|_| "keep-alive stream closed".to_string())?;
                let call = self.lease.lease_keep_alive(ReceiverStream::new(rx)).await;
                let responses = call.map_err(|s| status_kind(&s))?.into_inner();
                self.stream = Some(KeepAliveStream { tx, responses });
            }
        }
        let stream = self.stream.as_mut().expect("the stream was opened above");
        match stream.responses.message().await {
            Ok(Some(answer)) if answer.ttl > 0 => Ok(true),
            Ok(Some(_)) => Err("lease not found (keep-alive answered TTL <= 0)".into()),
            Ok(None) => Err("keep-alive stream ended".into()),
            Err(s) => Err(status_kind(&s)),
        }
    }

    /// Revokes the lease (best effort), so a run leaves nothing behind.
    async fn revoke(mut self) {
        self.stream = None;
        let _ = tokio::time::timeout(
            self.timeout,
            self.lease.lease_revoke(LeaseRevokeRequest { id: self.id }),
        )
        .await;
    }
}

/// What one client sends, with the client-side state it needs.
enum Requester {
    Kv(KvRequester),
    /// Boxed: a keep-alive stream's state is several times the size of a KV requester's.
    KeepAlive(Box<KeepAliver>),
}

impl Requester {
    async fn send(&mut self, request: u64) -> Outcome {
        match self {
            Requester::Kv(kv) => kv.send(request).await,
            Requester::KeepAlive(k) => Outcome::whole(k.keep_alive().await),
        }
    }
}

/// What one client saw: the whole run, and each part of it.
struct ClientResult {
    all: Tally,
    parts: Vec<Tally>,
    /// Handed back so its lease (if any) can be revoked.
    requester: Requester,
}

/// One client: sends requests from `schedule` until the run is over.
async fn client_loop(mut requester: Requester, schedule: Arc<Schedule>, parts: usize) -> ClientResult {
    let mut all = Tally::default();
    let mut part_tallies = vec![Tally::default(); parts];
    while let Some(request) = schedule.take().await {
        let started = Instant::now();
        let outcome = requester.send(request).await;
        let elapsed = started.elapsed();
        let part = outcome.part.and_then(|p| part_tallies.get_mut(p));
        for tally in std::iter::once(&mut all).chain(part) {
            match &outcome.result {
                Ok(found) => {
                    tally.latencies.record(elapsed);
                    if !found {
                        tally.not_found += 1;
                    }
                }
                Err(kind) => tally.error(kind.clone()),
            }
        }
        schedule.complete();
    }
    ClientResult {
        all,
        parts: part_tallies,
        requester,
    }
}

/// The Kv operation of a workload, and the names of its parts.
fn kv_op(workload: Workload) -> (KvOp, &'static [&'static str]) {
    match workload {
        Workload::Range { consistency } => (
            KvOp::Range {
                serializable: consistency == Consistency::S,
            },
            &[],
        ),
        Workload::TxnPut { txn_ops } => (KvOp::TxnPut { ops: txn_ops }, &[]),
        Workload::TxnMixed { rw_ratio, consistency } => (
            KvOp::TxnMixed {
                read_fraction: read_fraction(rw_ratio),
                serializable: consistency == Consistency::S,
            },
            &["read", "write"],
        ),
        _ => (KvOp::Put, &[]),
    }
}

/// The share of txn-mixed's requests that read, for `rw_ratio` reads per write
/// (etcd benchmark's `--rw-ratio`).
pub fn read_fraction(rw_ratio: f64) -> f64 {
    rw_ratio / (1.0 + rw_ratio)
}

/// Sets up `--clients` clients (granting their leases, for `lease-keepalive`),
/// then runs them until the schedule ends, and sums up what they saw.
pub async fn run(args: &BenchArgs, targets: &[KvTarget]) -> Result<Summary, String> {
    let workload = args.workload;
    let (op, part_names) = kv_op(workload);
    let mut rng = SplitMix64::new(seed());
    let value: Arc<Vec<u8>> = Arc::new((0..args.val_size).map(|_| rng.next_u64() as u8).collect());

    let mut requesters = Vec::with_capacity(args.clients);
    let mut first_keepalive_retries = 0;
    for c in 0..args.clients {
        let target = targets[c % targets.len()].clone();
        let requester = if matches!(workload, Workload::LeaseKeepalive) {
            let KvTarget::Own(channel) = target else {
                return Err("lease-keepalive runs on concord bench's own driver only".into());
            };
            match KeepAliver::new(channel, args.request_timeout()).await {
                Ok((k, retries)) => {
                    first_keepalive_retries += retries;
                    Requester::KeepAlive(Box::new(k))
                }
                Err(e) => {
                    revoke_all(requesters).await;
                    return Err(format!("lease-keepalive: client {c}: {e}"));
                }
            }
        } else {
            Requester::Kv(KvRequester {
                kv: target,
                op,
                keys: KeyChooser::new(args.key_space, args.sequential_keys, rng.next_u64()),
                key_size: args.key_size,
                value: value.clone(),
                rng: SplitMix64::new(rng.next_u64()),
            })
        };
        requesters.push(requester);
    }

    let schedule = Arc::new(Schedule::new(args.goal(), args.rate));
    let bar = ProgressBar::start(schedule.clone(), args.goal(), "req");
    let tasks: Vec<_> = requesters
        .into_iter()
        .map(|r| tokio::spawn(client_loop(r, schedule.clone(), part_names.len())))
        .collect();
    let mut all = Tally::default();
    let mut parts = vec![Tally::default(); part_names.len()];
    let mut requesters = Vec::with_capacity(tasks.len());
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(r) => {
                all.merge(&r.all);
                for (sum, part) in parts.iter_mut().zip(&r.parts) {
                    sum.merge(part);
                }
                requesters.push(r.requester);
            }
            Err(e) => failure = Some(format!("a client task failed: {e}")),
        }
    }
    let duration = schedule.start().elapsed();
    progress::finish(bar).await;
    revoke_all(requesters).await;
    if let Some(e) = failure {
        return Err(e);
    }

    let mut summary = all.summary(workload.name(), duration);
    match workload {
        Workload::Range { .. } => summary.not_found = Some(all.not_found),
        Workload::LeaseKeepalive => {
            summary = summary.with_unit("keepalives");
            // Non-zero: a member did not yet know a lease that had just been granted.
            summary
                .counters
                .push(("first_keepalive_retries", first_keepalive_retries));
        }
        _ => {}
    }
    summary.parts = part_names
        .iter()
        .zip(&parts)
        .map(|(&name, tally)| {
            let mut part = tally.summary(name, duration);
            if name == "read" {
                part.not_found = Some(tally.not_found);
            }
            part
        })
        .collect();
    Ok(summary)
}

/// Revokes the leases of the `lease-keepalive` clients among `requesters`.
async fn revoke_all(requesters: Vec<Requester>) {
    for requester in requesters {
        if let Requester::KeepAlive(k) = requester {
            k.revoke().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rw_ratio_is_reads_per_write() {
        assert_eq!(read_fraction(1.0), 0.5);
        assert_eq!(read_fraction(0.0), 0.0);
        assert_eq!(read_fraction(9.0), 0.9);
        assert_eq!(read_fraction(0.25), 0.2);
    }

    #[test]
    fn txn_mixed_has_read_and_write_parts() {
        let (op, parts) = kv_op(Workload::TxnMixed {
            rw_ratio: 3.0,
            consistency: Consistency::S,
        });
        assert!(matches!(op, KvOp::TxnMixed { read_fraction, serializable: true } if read_fraction == 0.75));
        assert_eq!(parts, ["read", "write"]);
        assert_eq!((parts[READ], parts[WRITE]), ("read", "write"));
        assert!(kv_op(Workload::Put).1.is_empty());
        assert!(matches!(
            kv_op(Workload::TxnPut { txn_ops: 4 }).0,
            KvOp::TxnPut { ops: 4 }
        ));
    }

    #[test]
    fn only_a_range_that_found_a_key_counts_as_found() {
        use concord_proto::etcdserverpb::{PutResponse, RangeResponse, ResponseOp};
        use concord_proto::mvccpb::KeyValue;
        let answer = |response| TxnResponse {
            responses: vec![ResponseOp {
                response: Some(response),
            }],
            ..Default::default()
        };
        let hit = RangeResponse {
            kvs: vec![KeyValue::default()],
            ..Default::default()
        };
        assert!(txn_found_key(&answer(response_op::Response::ResponseRange(hit))));
        assert!(!txn_found_key(&answer(response_op::Response::ResponseRange(
            RangeResponse::default()
        ))));
        assert!(!txn_found_key(&answer(response_op::Response::ResponsePut(
            PutResponse::default()
        ))));
        assert!(!txn_found_key(&TxnResponse::default()));
    }
}
