//! `concord bench`: a load generator for any etcd-v3 endpoint.
//!
//! It exists so that Concord can be measured against etcd with one and the
//! same client: it speaks only the public v3 API, so it runs unchanged
//! against either. It is modelled on etcd's `benchmark` tool
//! (`tools/benchmark` in etcd's repository): the same flags with the same
//! meanings, the same key encoding (a zigzag varint of the key's index,
//! zero-padded to `--key-size` bytes), and the same summary (requests/s,
//! latency percentiles and a response time histogram), so numbers from the
//! two tools can be compared.
//!
//! Workloads: `put`, `range`, `txn-put`, `txn-mixed` and `lease-keepalive`
//! are request/response loads ([`workloads`]): `--clients` tasks each send one
//! request at a time over `--conns` gRPC connections (client `c` uses
//! connection `c % conns`; connection `i` goes to endpoint `i % endpoints`).
//! `watch` and `watch-fanout` ([`watch`]) measure how long a put takes to
//! reach watchers. Every workload draws its requests from one shared
//! [`pace::Schedule`]: `--total` requests in all, or as many as fit in
//! `--duration`, at most `--rate` per second. A failed request is counted
//! under its error and the run goes on.
//!
//! The read workloads (`range`, the reads of `txn-mixed`) read single keys
//! from the same key space as `put` writes; loading them first is the
//! caller's job, e.g. with
//! `concord bench --sequential-keys --key-space N --total N put`.
//!
//! Module layout: [`keys`] (key encoding, randomness), [`pace`] (totals,
//! deadlines, rate), [`report`] (histograms, text and JSON summaries),
//! [`progress`] (the terminal progress bar), [`workloads`] and [`watch`].

mod channel;
mod keys;
mod pace;
mod progress;
mod report;
mod standard_client;
mod watch;
mod workloads;

/// Kept at `crate::bench::SplitMix64`: the chaos tester draws its randomness from it too.
pub use keys::SplitMix64;

use keys::min_key_size;

use std::fmt::Write as _;
use std::time::Duration;

use channel::{BenchChannel, H2Channel};
use clap::{Args, Subcommand, ValueEnum};

use pace::Goal;
use report::Summary;

/// Flags of `concord bench`; names and defaults follow etcd's `benchmark` tool.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Endpoints to load (comma-separated; host:port or http://host:port).
    #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',', global = true)]
    pub endpoints: Vec<String>,
    #[command(flatten)]
    pub tls: crate::client_tls::ClientTlsArgs,
    /// Concurrent requesters; each has one request in flight at a time.
    #[arg(long, default_value_t = 1, global = true)]
    pub clients: usize,
    /// gRPC connections, shared round-robin by the clients (and watch streams).
    #[arg(long, default_value_t = 1, global = true)]
    pub conns: usize,
    /// Number of requests to send, in all (puts, for the watch workloads).
    #[arg(long, default_value_t = 10000, global = true)]
    pub total: u64,
    /// Run for this long instead of for --total requests (e.g. 30s, 1m30s, 500ms).
    #[arg(long, value_parser = pace::parse_duration, global = true)]
    pub duration: Option<Duration>,
    /// Cap on requests per second across all clients (0: no cap).
    #[arg(long, default_value_t = 0.0, global = true)]
    pub rate: f64,
    /// Size of each key in bytes.
    #[arg(long, default_value_t = 8, global = true)]
    pub key_size: usize,
    /// Size of each value in bytes (puts; at least 8 for the watch workloads,
    /// whose values carry their send time).
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
    /// Which client sends the requests: `concord bench`'s own h2 driver, or the `etcd-client`
    /// crate as applications use it (one client per connection, each balanced over every
    /// endpoint; the KV workloads only).
    #[arg(long, value_enum, default_value = "h2", global = true)]
    pub client: Driver,
    /// What to send.
    #[command(subcommand)]
    pub workload: Workload,
}

impl BenchArgs {
    /// When the run ends: `--duration` wins over `--total`.
    fn goal(&self) -> Goal {
        match self.duration {
            Some(d) => Goal::Duration(d),
            None => Goal::Total(self.total),
        }
    }

    /// How long one request may take.
    fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout.max(1))
    }
}

/// The kinds of load `concord bench` can generate (etcd benchmark's names).
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
    /// Write keys inside transactions (one Txn of --txn-ops Puts per request).
    TxnPut {
        /// Puts per transaction, on consecutive keys.
        #[arg(long, default_value_t = 1)]
        txn_ops: u64,
    },
    /// Transactions that read or write one key (a Txn with one Range, or one Put).
    TxnMixed {
        /// Reads per write (1: as many reads as writes; 9: 90% reads).
        #[arg(long, default_value_t = 1.0)]
        rw_ratio: f64,
        /// Consistency of the reads: l (linearizable) or s (serializable).
        #[arg(long, value_enum, default_value = "l")]
        consistency: Consistency,
    },
    /// Put-to-event latency of watchers spread over the key space.
    ///
    /// --streams watch streams of --watchers-per-stream watchers each (watcher
    /// w watches key w % key-space), while --clients putters write the keys;
    /// each event's latency is from its put's send to its arrival.
    Watch {
        /// Watch streams, spread over the connections.
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Watchers on each stream.
        #[arg(long, visible_alias = "watch-per-stream", default_value_t = 10)]
        watchers_per_stream: usize,
    },
    /// Fan-out latency: one put until every watcher of its key has the event.
    ///
    /// Every watcher watches one key; one put at a time (--clients is not
    /// used), and each put's latency is from its send until every watcher has
    /// its event. The per-watcher latencies are reported as a part.
    WatchFanout {
        /// Watch streams, spread over the connections.
        #[arg(long, default_value_t = 10)]
        streams: usize,
        /// Watchers on each stream.
        #[arg(long, visible_alias = "watch-per-stream", default_value_t = 10)]
        watchers_per_stream: usize,
    },
    /// Lease keep-alive round trips, on keep-alive streams.
    ///
    /// Each client grants a lease, then sends LeaseKeepAlive requests for it
    /// on its own stream, one at a time; the leases are revoked at the end.
    LeaseKeepalive,
}

impl Workload {
    /// The workload's name as it appears in the summary.
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Range {
                consistency: Consistency::L,
            } => "range-l",
            Workload::Range {
                consistency: Consistency::S,
            } => "range-s",
            Workload::TxnPut { .. } => "txn-put",
            Workload::TxnMixed { .. } => "txn-mixed",
            Workload::Watch { .. } => "watch",
            Workload::WatchFanout { .. } => "watch-fanout",
            Workload::LeaseKeepalive => "lease-keepalive",
        }
    }
}

/// Who sends a benchmark's requests.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// `concord bench`'s own driver: gRPC straight over h2 (tonic for TLS endpoints).
    H2,
    /// The `etcd-client` crate.
    EtcdClient,
}

/// The consistency of a `range` read, as etcd's benchmark spells it.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable.
    L,
    /// Serializable.
    S,
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

/// A gRPC status as an error kind for the summary: its code and message.
fn status_kind(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// How long opening one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens `conns` connections, spread over the endpoints round-robin.
async fn connect(args: &BenchArgs) -> Result<Vec<BenchChannel>, String> {
    let mut channels = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let endpoint = args.endpoints[i % args.endpoints.len()].trim();
        let url = args.tls.url(endpoint);
        let channel = if url.starts_with("https://") {
            // The timeout covers a unary call, or a streaming call until its
            // response headers arrive; the stream itself may live on.
            let target = args
                .tls
                .endpoint(endpoint)?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(args.request_timeout())
                .tcp_nodelay(true);
            BenchChannel::Tonic(
                crate::client::open(&target, CONNECT_TIMEOUT)
                    .await
                    .map_err(|e| format!("cannot connect to {endpoint}: {}", error_chain(&e)))?,
            )
        } else {
            BenchChannel::H2(
                H2Channel::connect(&url, CONNECT_TIMEOUT, args.request_timeout())
                    .await
                    .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?,
            )
        };
        channels.push(channel);
    }
    Ok(channels)
}

/// Rejects flag combinations that cannot run.
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
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        return Err("--rate must be a number, 0 or more (0: no cap)".into());
    }
    if args.duration.is_some_and(|d| d.is_zero()) {
        return Err("--duration must be more than 0".into());
    }
    let need = min_key_size(args.key_space);
    if args.key_size < need {
        return Err(format!(
            "--key-size {} is too small for --key-space {}: need at least {need}",
            args.key_size, args.key_space
        ));
    }
    match args.workload {
        Workload::TxnPut { txn_ops } => {
            if txn_ops == 0 {
                return Err("--txn-ops must be at least 1".into());
            }
            if txn_ops > args.key_space {
                // A Txn may not put the same key twice.
                return Err(format!("--txn-ops {txn_ops} needs a --key-space of at least {txn_ops}"));
            }
        }
        Workload::TxnMixed { rw_ratio, .. } if !(rw_ratio >= 0.0 && rw_ratio.is_finite()) => {
            return Err("--rw-ratio must be a number, 0 or more".into());
        }
        Workload::Watch {
            streams,
            watchers_per_stream,
        }
        | Workload::WatchFanout {
            streams,
            watchers_per_stream,
        } if streams == 0 || watchers_per_stream == 0 => {
            return Err("--streams and --watchers-per-stream must be at least 1".into());
        }
        _ => {}
    }
    let kv_only = !matches!(
        args.workload,
        Workload::Watch { .. } | Workload::WatchFanout { .. } | Workload::LeaseKeepalive
    );
    if args.client == Driver::EtcdClient && !kv_only {
        return Err(format!(
            "--client etcd-client drives the KV workloads only, not {}",
            args.workload.name()
        ));
    }
    Ok(())
}

/// A seed for this run's randomness: the clock.
fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x5eed)
}

/// Runs one benchmark and prints its summary.
pub async fn run(args: BenchArgs) -> Result<(), String> {
    check(&args)?;
    if args.client == Driver::EtcdClient {
        let clients = standard_client::connect(&args).await?;
        let targets: Vec<workloads::KvTarget> = clients
            .into_iter()
            .map(|c| workloads::KvTarget::EtcdClient(Box::new(c)))
            .collect();
        let summary = workloads::run(&args, &targets).await?;
        return print_summary(&args, &summary);
    }
    let channels = connect(&args).await?;
    let summary: Summary = match args.workload {
        Workload::Watch {
            streams,
            watchers_per_stream,
        } => watch::run_watch(&args, &channels, streams, watchers_per_stream).await?,
        Workload::WatchFanout {
            streams,
            watchers_per_stream,
        } => watch::run_fanout(&args, &channels, streams, watchers_per_stream).await?,
        _ => {
            let targets: Vec<workloads::KvTarget> = channels.iter().cloned().map(workloads::KvTarget::Own).collect();
            workloads::run(&args, &targets).await?
        }
    };
    print_summary(&args, &summary)
}

/// Prints `summary` as text or JSON, with a hint when reads found no key.
fn print_summary(args: &BenchArgs, summary: &Summary) -> Result<(), String> {
    if args.json {
        println!("{}", summary.to_json());
    } else {
        print!("{}", summary.to_text());
        let not_found = summary.not_found.unwrap_or(0) + summary.parts.iter().filter_map(|p| p.not_found).sum::<u64>();
        if not_found > 0 {
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
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[test]
    fn workload_flags_parse_like_etcds_benchmark() {
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
        assert_eq!(
            (cli.bench.clients, cli.bench.conns, cli.bench.total, cli.bench.key_space),
            (64, 1, 5, 9)
        );
        assert!(matches!(
            cli.bench.workload,
            Workload::Range {
                consistency: Consistency::S
            }
        ));
        assert_eq!(cli.bench.goal(), Goal::Total(5));
        let cli = Cli::try_parse_from(["bench", "put"]).unwrap();
        assert_eq!(
            (
                cli.bench.total,
                cli.bench.key_size,
                cli.bench.val_size,
                cli.bench.key_space
            ),
            (10000, 8, 8, 1)
        );
        assert_eq!((cli.bench.duration, cli.bench.rate), (None, 0.0));
        assert_eq!(cli.bench.workload.name(), "put");
    }

    #[test]
    fn new_workloads_and_flags_parse() {
        let cli = Cli::try_parse_from([
            "bench",
            "--total",
            "7",
            "--duration",
            "1m30s",
            "--rate",
            "250",
            "txn-mixed",
            "--rw-ratio",
            "4",
            "--consistency",
            "s",
        ])
        .unwrap();
        // --duration wins over --total.
        assert_eq!(cli.bench.goal(), Goal::Duration(Duration::from_secs(90)));
        assert_eq!(cli.bench.rate, 250.0);
        assert!(matches!(
            cli.bench.workload,
            Workload::TxnMixed { rw_ratio, consistency: Consistency::S } if rw_ratio == 4.0
        ));
        let cli = Cli::try_parse_from(["bench", "watch", "--streams", "3", "--watch-per-stream", "4"]).unwrap();
        assert!(matches!(
            cli.bench.workload,
            Workload::Watch {
                streams: 3,
                watchers_per_stream: 4
            }
        ));
        let cli = Cli::try_parse_from(["bench", "watch-fanout"]).unwrap();
        assert!(matches!(
            cli.bench.workload,
            Workload::WatchFanout {
                streams: 10,
                watchers_per_stream: 10
            }
        ));
        let cli = Cli::try_parse_from(["bench", "txn-put"]).unwrap();
        assert!(matches!(cli.bench.workload, Workload::TxnPut { txn_ops: 1 }));
        let cli = Cli::try_parse_from(["bench", "--client", "etcd-client", "put"]).unwrap();
        assert_eq!(cli.bench.client, Driver::EtcdClient);
        let cli = Cli::try_parse_from(["bench", "lease-keepalive", "--clients", "2"]).unwrap();
        assert_eq!(cli.bench.workload.name(), "lease-keepalive");
        assert!(Cli::try_parse_from(["bench", "--duration", "5x", "put"]).is_err());
    }

    #[test]
    fn impossible_flags_are_refused() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied()).unwrap().bench;
        assert!(check(&parse(&["bench", "put"])).is_ok());
        assert!(check(&parse(&["bench", "--rate=-1", "put"])).is_err());
        assert!(check(&parse(&["bench", "--duration", "0s", "put"])).is_err());
        assert!(check(&parse(&["bench", "--clients", "0", "put"])).is_err());
        assert!(check(&parse(&["bench", "--key-space", "1000", "--key-size", "1", "put"])).is_err());
        assert!(check(&parse(&["bench", "txn-put", "--txn-ops", "3"])).is_err());
        assert!(check(&parse(&["bench", "--key-space", "3", "txn-put", "--txn-ops", "3"])).is_ok());
        assert!(check(&parse(&["bench", "txn-mixed", "--rw-ratio=-2"])).is_err());
        assert!(check(&parse(&["bench", "watch", "--streams", "0"])).is_err());
        assert!(check(&parse(&["bench", "watch-fanout", "--watchers-per-stream", "0"])).is_err());
        assert!(check(&parse(&["bench", "--client", "etcd-client", "txn-mixed"])).is_ok());
        assert!(check(&parse(&["bench", "--client", "etcd-client", "watch"])).is_err());
    }
}
