//! `concord bench`: a load generator for any etcd-v3 endpoint.
//!
//! It exists so that Concord can be measured against etcd with one and the
//! same client: it speaks only the public v3 KV API, so it runs unchanged
//! against either. It is modelled on etcd's `benchmark` tool
//! (`tools/benchmark` in etcd's repository): the same flags with the same
//! meanings, the same key encoding (a zigzag varint of the key's index,
//! zero-padded to `--key-size` bytes), and the same summary (requests/s and
//! latency percentiles), so numbers from the two tools can be compared.
//!
//! `--clients` tasks each send one request at a time over `--conns` gRPC
//! connections (client `c` uses connection `c % conns`; connection `i` goes to
//! endpoint `i % endpoints`). Together they send exactly `--total` requests.
//! A failed request is counted under its error and the run goes on.
//!
//! The `range` workload reads single keys from the same key space as `put`
//! writes; loading them first is the caller's job, e.g. with
//! `concord bench --sequential-keys --key-space N --total N put`.

use crate::text::json_string;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::{PutRequest, RangeRequest};
use tonic::transport::{Channel, Endpoint};

/// Flags of `concord bench`; names and defaults follow etcd's `benchmark` tool.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Endpoints to load (comma-separated; host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',', global = true)]
    pub endpoints: Vec<String>,
    /// Concurrent requesters; each has one request in flight at a time.
    #[arg(long, default_value_t = 1, global = true)]
    pub clients: usize,
    /// gRPC connections, shared round-robin by the clients.
    #[arg(long, default_value_t = 1, global = true)]
    pub conns: usize,
    /// Number of requests to send, in all.
    #[arg(long, default_value_t = 10000, global = true)]
    pub total: u64,
    /// Size of each key in bytes.
    #[arg(long, default_value_t = 8, global = true)]
    pub key_size: usize,
    /// Size of each value in bytes (put).
    #[arg(long, default_value_t = 8, global = true)]
    pub val_size: usize,
    /// Number of distinct keys the requests are spread over.
    #[arg(long, visible_alias = "key-space-size", default_value_t = 1, global = true)]
    pub key_space: u64,
    /// Take keys in order (request i uses key i % key-space) instead of at random.
    #[arg(long, global = true)]
    pub sequential_keys: bool,
    /// Give up on one request after this many seconds (it then counts as an error).
    #[arg(long, default_value_t = 10, global = true)]
    pub request_timeout: u64,
    /// Print the summary as one JSON object.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to send.
    #[command(subcommand)]
    pub workload: Workload,
}

/// The kinds of load `concord bench` can generate.
#[derive(Subcommand, Debug, Clone, Copy)]
pub enum Workload {
    /// Write keys (one Put per request).
    Put,
    /// Read single keys (one Range per request); load the keys first.
    Range {
        /// l: linearizable (ReadIndex through the leader); s: serializable (local).
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
    },
}

impl Workload {
    /// The workload's name as it appears in the summary.
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range { consistency: Consistency::L } => "range-l",
            Workload::Range { consistency: Consistency::S } => "range-s",
        }
    }
}

/// The consistency of a `range` read, as etcd's benchmark spells it.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

/// A small, fast, seedable pseudo-random generator (SplitMix64).
///
/// Load generation needs speed and independence between clients, not
/// cryptographic quality, so this avoids a dependency.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator that starts from `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`), by multiply-and-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Picks the key index of each request: in order, or uniformly at random.
#[derive(Debug, Clone)]
pub struct KeyChooser {
    key_space: u64,
    sequential: bool,
    rng: SplitMix64,
}

impl KeyChooser {
    /// A chooser over `key_space` keys (at least 1); `seed` drives the random choice.
    pub fn new(key_space: u64, sequential: bool, seed: u64) -> Self {
        KeyChooser { key_space: key_space.max(1), sequential, rng: SplitMix64::new(seed) }
    }

    /// The key index for the `request`-th request of the run (counted from 0).
    pub fn index(&mut self, request: u64) -> u64 {
        if self.sequential {
            request % self.key_space
        } else {
            self.rng.below(self.key_space)
        }
    }
}

/// Bytes that Go's `binary.PutVarint` writes for `index` (zigzag, then LEB128).
fn varint(index: u64) -> Vec<u8> {
    // Zigzag of a non-negative i64 is 2*x; indexes above i64::MAX do not occur
    // (the key space is a u64 but bounded far below that in practice).
    let mut v = index << 1;
    let mut out = Vec::with_capacity(10);
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

/// The smallest `--key-size` that can hold every key of a `key_space`-key space.
pub fn min_key_size(key_space: u64) -> usize {
    varint(key_space.saturating_sub(1)).len()
}

/// The key for `index`, as etcd's benchmark makes it: the zigzag varint of the
/// index at the front of `key_size` zero bytes (longer if it does not fit).
pub fn encode_key(index: u64, key_size: usize) -> Vec<u8> {
    let mut key = varint(index);
    if key.len() < key_size {
        key.resize(key_size, 0);
    }
    key
}

/// The result of a run: counts, duration, throughput and latency percentiles.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The workload's name (`put`, `range-l`, `range-s`).
    pub workload: String,
    /// Requests sent.
    pub total: u64,
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Wall time from the first request to the last answer.
    pub duration: Duration,
    /// Successful requests per second of `duration`.
    pub requests_per_sec: f64,
    /// Median latency of the successful requests.
    pub p50: Duration,
    /// 90th percentile latency.
    pub p90: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// 99.9th percentile latency.
    pub p999: Duration,
    /// Slowest successful request.
    pub max: Duration,
    /// Failed requests by error (gRPC code and message), most frequent first.
    pub error_kinds: Vec<(String, u64)>,
    /// For ranges: successful reads that found no key (the key space was not loaded).
    pub not_found: Option<u64>,
}

/// The `p`-th percentile (0 < p <= 100) of `sorted` by nearest rank; zero if empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // The small epsilon keeps float error from bumping an exact rank
    // (0.999 * 1000 is 999.0000000000001) up by one.
    let rank = ((p * sorted.len() as f64) / 100.0 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Summary {
    /// Summarises a run from the latencies of its successful requests, its
    /// failures counted by error, and its wall time.
    pub fn new(
        workload: &str,
        mut latencies: Vec<Duration>,
        errors: BTreeMap<String, u64>,
        duration: Duration,
    ) -> Self {
        latencies.sort_unstable();
        let ok = latencies.len() as u64;
        let error_count: u64 = errors.values().sum();
        let mut error_kinds: Vec<(String, u64)> = errors.into_iter().collect();
        error_kinds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let secs = duration.as_secs_f64();
        Summary {
            workload: workload.to_string(),
            total: ok + error_count,
            ok,
            errors: error_count,
            duration,
            requests_per_sec: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            p50: percentile(&latencies, 50.0),
            p90: percentile(&latencies, 90.0),
            p99: percentile(&latencies, 99.0),
            p999: percentile(&latencies, 99.9),
            max: latencies.last().copied().unwrap_or(Duration::ZERO),
            error_kinds,
            not_found: None,
        }
    }

    /// The summary for people, in the spirit of etcd's benchmark report.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Summary ({}):", self.workload);
        let _ =
            writeln!(s, "  Total:        {} requests ({} ok, {} errors)", self.total, self.ok, self.errors);
        let _ = writeln!(s, "  Duration:     {:.4} s", self.duration.as_secs_f64());
        let _ = writeln!(s, "  Requests/sec: {:.1}", self.requests_per_sec);
        let _ = writeln!(
            s,
            "  Latency (ms): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max)
        );
        if let Some(n) = self.not_found {
            let _ = writeln!(s, "  Not found:    {n} reads found no key");
        }
        if !self.error_kinds.is_empty() {
            let _ = writeln!(s, "  Errors:");
            for (kind, count) in self.error_kinds.iter().take(10) {
                let _ = writeln!(s, "    {count:>8}  {kind}");
            }
            if self.error_kinds.len() > 10 {
                let _ = writeln!(s, "    ... and {} more kinds", self.error_kinds.len() - 10);
            }
        }
        s
    }

    /// The summary as one JSON object (one line), with the same fields.
    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        let _ = write!(
            s,
            "\"workload\":{},\"total\":{},\"ok\":{},\"errors\":{},\"duration_s\":{:.6},\
             \"requests_per_sec\":{:.3},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\
             \"p999_ms\":{:.3},\"max_ms\":{:.3}",
            json_string(&self.workload),
            self.total,
            self.ok,
            self.errors,
            self.duration.as_secs_f64(),
            self.requests_per_sec,
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p999),
            ms(self.max)
        );
        if let Some(n) = self.not_found {
            let _ = write!(s, ",\"not_found\":{n}");
        }
        s.push_str(",\"error_kinds\":{");
        for (i, (kind, count)) in self.error_kinds.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{}:{count}", json_string(kind));
        }
        s.push_str("}}");
        s
    }
}

/// What one client task saw.
#[derive(Default)]
struct ClientResult {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    not_found: u64,
}

/// An error and its causes, joined (tonic's transport errors say little on their own).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let _ = write!(s, ": {cause}");
        source = cause.source();
    }
    s
}

/// Opens `conns` connections, spread over the endpoints round-robin.
async fn connect(args: &BenchArgs) -> Result<Vec<Channel>, String> {
    let mut channels = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let endpoint = args.endpoints[i % args.endpoints.len()].trim();
        let url = crate::text::endpoint_url(endpoint);
        let channel = Endpoint::from_shared(url)
            .map_err(|e| format!("bad endpoint {endpoint:?}: {}", error_chain(&e)))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(args.request_timeout.max(1)))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {endpoint}: {}", error_chain(&e)))?;
        channels.push(channel);
    }
    Ok(channels)
}

fn check(args: &BenchArgs) -> Result<(), String> {
    if args.endpoints.iter().all(|e| e.trim().is_empty()) {
        return Err("--endpoints: give at least one endpoint".into());
    }
    if args.clients == 0 || args.conns == 0 {
        return Err("--clients and --conns must be at least 1".into());
    }
    if args.key_space == 0 {
        return Err("--key-space must be at least 1".into());
    }
    let need = min_key_size(args.key_space);
    if args.key_size < need {
        return Err(format!(
            "--key-size {} is too small for --key-space {}: need at least {need}",
            args.key_size, args.key_space
        ));
    }
    Ok(())
}

/// Everything one client task needs.
struct Client {
    kv: KvClient<Channel>,
    workload: Workload,
    keys: KeyChooser,
    key_size: usize,
    value: Arc<Vec<u8>>,
    /// The next request number to take, shared by all clients.
    next: Arc<AtomicU64>,
    total: u64,
    /// Latencies to make room for up front.
    expected: usize,
}

/// One client: takes request numbers from `next` until `total` are taken.
async fn client_loop(client: Client) -> ClientResult {
    let Client { mut kv, workload, mut keys, key_size, value, next, total, expected } = client;
    let mut result = ClientResult { latencies: Vec::with_capacity(expected), ..Default::default() };
    loop {
        let request = next.fetch_add(1, Ordering::Relaxed);
        if request >= total {
            break;
        }
        let key = encode_key(keys.index(request), key_size);
        let started = Instant::now();
        let outcome = match workload {
            Workload::Put => kv
                .put(PutRequest { key, value: value.as_ref().clone(), ..Default::default() })
                .await
                .map(|_| true),
            Workload::Range { consistency } => kv
                .range(RangeRequest {
                    key,
                    serializable: consistency == Consistency::S,
                    ..Default::default()
                })
                .await
                .map(|r| !r.into_inner().kvs.is_empty()),
        };
        let elapsed = started.elapsed();
        match outcome {
            Ok(found) => {
                result.latencies.push(elapsed);
                if !found {
                    result.not_found += 1;
                }
            }
            Err(status) => {
                *result.errors.entry(format!("{:?}: {}", status.code(), status.message())).or_default() += 1;
            }
        }
    }
    result
}

/// Runs one benchmark and prints its summary.
pub async fn run(args: BenchArgs) -> Result<(), String> {
    check(&args)?;
    let channels = connect(&args).await?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed);
    let mut rng = SplitMix64::new(seed);
    let value: Arc<Vec<u8>> = Arc::new((0..args.val_size).map(|_| rng.next_u64() as u8).collect());
    let next = Arc::new(AtomicU64::new(0));
    let expected = (args.total / args.clients as u64 + 1).min(1 << 20) as usize;

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        let kv = KvClient::new(channels[c % channels.len()].clone()).max_decoding_message_size(usize::MAX);
        let keys = KeyChooser::new(args.key_space, args.sequential_keys, rng.next_u64());
        tasks.push(tokio::spawn(client_loop(Client {
            kv,
            workload: args.workload,
            keys,
            key_size: args.key_size,
            value: value.clone(),
            next: next.clone(),
            total: args.total,
            expected,
        })));
    }
    let mut latencies = Vec::with_capacity(args.total.min(1 << 24) as usize);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut not_found = 0;
    for task in tasks {
        let r = task.await.map_err(|e| format!("a client task failed: {e}"))?;
        latencies.extend(r.latencies);
        for (kind, n) in r.errors {
            *errors.entry(kind).or_default() += n;
        }
        not_found += r.not_found;
    }
    let duration = started.elapsed();

    let mut summary = Summary::new(args.workload.name(), latencies, errors, duration);
    if matches!(args.workload, Workload::Range { .. }) {
        summary.not_found = Some(not_found);
    }
    if args.json {
        println!("{}", summary.to_json());
    } else {
        print!("{}", summary.to_text());
        if summary.not_found.unwrap_or(0) > 0 {
            println!(
                "  note: load the keys first, e.g. concord bench --sequential-keys --key-space {0} --total {0} --key-size {1} put",
                args.key_space, args.key_size
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_etcd_benchmark_keys() {
        // Go: k := make([]byte, 8); binary.PutVarint(k, 0|1|64|300)
        assert_eq!(encode_key(0, 8), vec![0; 8]);
        assert_eq!(encode_key(1, 8), vec![2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_key(64, 8), vec![0x80, 0x01, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_key(300, 4), vec![0xd8, 0x04, 0, 0]);
        // Too small a key size grows the key rather than truncate it.
        assert_eq!(encode_key(300, 1), vec![0xd8, 0x04]);
    }

    #[test]
    fn min_key_size_fits_the_largest_index() {
        assert_eq!(min_key_size(1), 1);
        assert_eq!(min_key_size(64), 1);
        assert_eq!(min_key_size(65), 2);
        assert_eq!(min_key_size(100_000), 3);
        for space in [1u64, 2, 63, 64, 65, 8192, 8193, 100_000] {
            assert_eq!(encode_key(space - 1, min_key_size(space)).len(), min_key_size(space));
        }
    }

    #[test]
    fn distinct_indexes_give_distinct_keys() {
        let keys: std::collections::HashSet<_> = (0..10_000).map(|i| encode_key(i, 8)).collect();
        assert_eq!(keys.len(), 10_000);
    }

    #[test]
    fn sequential_keys_wrap_around_the_key_space() {
        let mut chooser = KeyChooser::new(3, true, 42);
        let picked: Vec<u64> = (0..7).map(|i| chooser.index(i)).collect();
        assert_eq!(picked, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn random_keys_stay_in_the_key_space_and_cover_it() {
        let mut chooser = KeyChooser::new(10, false, 7);
        let mut seen = [0u32; 10];
        for i in 0..10_000 {
            let k = chooser.index(i);
            assert!(k < 10);
            seen[k as usize] += 1;
        }
        // Roughly uniform: each of 10 keys gets about 1000 of 10000 picks.
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        let mut one = KeyChooser::new(1, false, 7);
        assert!((0..100).all(|i| one.index(i) == 0));
    }

    #[test]
    fn random_keys_differ_between_seeds() {
        let a: Vec<u64> = {
            let mut c = KeyChooser::new(1 << 40, false, 1);
            (0..8).map(|i| c.index(i)).collect()
        };
        let b: Vec<u64> = {
            let mut c = KeyChooser::new(1 << 40, false, 2);
            (0..8).map(|i| c.index(i)).collect()
        };
        assert_ne!(a, b);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let lat: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        assert_eq!(percentile(&lat, 50.0), Duration::from_millis(500));
        assert_eq!(percentile(&lat, 90.0), Duration::from_millis(900));
        assert_eq!(percentile(&lat, 99.0), Duration::from_millis(990));
        assert_eq!(percentile(&lat, 99.9), Duration::from_millis(999));
        assert_eq!(percentile(&lat, 100.0), Duration::from_millis(1000));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
        let one = [Duration::from_millis(3)];
        assert_eq!(percentile(&one, 50.0), one[0]);
        assert_eq!(percentile(&one, 99.9), one[0]);
    }

    #[test]
    fn summary_sorts_counts_and_rates() {
        // Out of order on purpose: the summary sorts.
        let lat: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let mut errors = BTreeMap::new();
        errors.insert("Unavailable: no leader".to_string(), 3);
        errors.insert("DeadlineExceeded: timeout".to_string(), 7);
        let s = Summary::new("put", lat, errors, Duration::from_secs(2));
        assert_eq!((s.total, s.ok, s.errors), (110, 100, 10));
        assert_eq!(s.requests_per_sec, 50.0);
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.p999, Duration::from_millis(100));
        assert_eq!(s.max, Duration::from_millis(100));
        assert_eq!(s.error_kinds[0], ("DeadlineExceeded: timeout".to_string(), 7));
        let text = s.to_text();
        assert!(text.contains("110 requests (100 ok, 10 errors)"), "{text}");
        assert!(text.contains("p99 99.000"), "{text}");
    }

    #[test]
    fn summary_of_nothing_is_zeroes() {
        let s = Summary::new("put", vec![], BTreeMap::new(), Duration::ZERO);
        assert_eq!((s.total, s.requests_per_sec, s.max), (0, 0.0, Duration::ZERO));
    }

    #[test]
    fn json_has_every_field_and_escapes() {
        let mut errors = BTreeMap::new();
        errors.insert("Unknown: say \"hi\"\n".to_string(), 1);
        let mut s =
            Summary::new("range-l", vec![Duration::from_micros(1500)], errors, Duration::from_secs(1));
        s.not_found = Some(0);
        let json = s.to_json();
        assert_eq!(
            json,
            "{\"workload\":\"range-l\",\"total\":2,\"ok\":1,\"errors\":1,\"duration_s\":1.000000,\
             \"requests_per_sec\":1.000,\"p50_ms\":1.500,\"p90_ms\":1.500,\"p99_ms\":1.500,\
             \"p999_ms\":1.500,\"max_ms\":1.500,\"not_found\":0,\
             \"error_kinds\":{\"Unknown: say \\\"hi\\\"\\n\":1}}"
        );
    }

    #[test]
    fn workload_flags_parse_like_etcds_benchmark() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let cli = Cli::try_parse_from([
            "bench",
            "--endpoints",
            "a:1,http://b:2",
            "--clients",
            "64",
            "range",
            "--consistency",
            "s",
            "--total",
            "5",
            "--key-space-size",
            "9",
        ])
        .unwrap();
        assert_eq!(cli.bench.endpoints, vec!["a:1", "http://b:2"]);
        assert_eq!((cli.bench.clients, cli.bench.conns, cli.bench.total, cli.bench.key_space), (64, 1, 5, 9));
        assert!(matches!(cli.bench.workload, Workload::Range { consistency: Consistency::S }));
        let cli = Cli::try_parse_from(["bench", "put"]).unwrap();
        assert_eq!(
            (cli.bench.total, cli.bench.key_size, cli.bench.val_size, cli.bench.key_space),
            (10000, 8, 8, 1)
        );
        assert_eq!(cli.bench.workload.name(), "put");
    }
}
