//! `concord chaos`: runs a real cluster under a seeded schedule of faults while concurrent clients
//! record what they did, then checks the record (linearizability, revisions, lost writes, watch
//! streams, list appends, lock exclusion) and that the members' HashKV agree once the faults
//! have healed.
//!
//! - [`net`]: where members run (a network namespace each, or loopback) and how links are cut;
//! - [`proxy`]: the peer proxy that cuts and degrades links on loopback;
//! - [`cluster`]: the member processes and the process faults;
//! - [`nemesis`]: the seeded fault schedule, injected and healed one fault at a time;
//! - [`workload`]: the recording clients.
//!
//! The checkers themselves live in the `concord-chaos` crate.

pub mod cluster;
pub mod nemesis;
pub mod net;
pub mod proxy;
pub mod workload;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use concord_chaos::{check_all, FinalRead, FinalState, Options, Recorder, Validity, WatchStream};
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::RangeRequest;
use tokio::sync::watch;

use cluster::{lazy_channel, ChaosCluster, ClusterOptions};
use nemesis::FaultKind;
use workload::{LockStats, Shared};

/// `concord chaos`: what to run, for how long, and with which faults.
#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// Members in the cluster (3 or more).
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// How long faults are injected (e.g. 30s, 5m).
    #[arg(long, default_value = "30s", value_parser = crate::serve::parse_duration)]
    pub time: Duration,
    /// Seed of the fault schedule and of every client's choices; a random one when absent.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fault kinds to draw from (comma-separated); all of them by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<FaultKind>,
    /// Register clients (puts, gets, compare-and-sets).
    #[arg(long, default_value_t = 4)]
    pub registers: u64,
    /// List-append clients.
    #[arg(long, default_value_t = 2)]
    pub appenders: u64,
    /// Watchers that must see every revision of the register and list keys.
    #[arg(long, default_value_t = 2)]
    pub watchers: u64,
    /// Clients contending for one lock.
    #[arg(long, default_value_t = 2)]
    pub lockers: u64,
    /// Register keys and list keys (each).
    #[arg(long, default_value_t = 4)]
    pub keys: u64,
    /// Keep members on loopback even when network namespaces are possible.
    #[arg(long)]
    pub loopback: bool,
    /// Where data directories and logs go (a fresh temporary directory by default; kept when
    /// the run fails).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Start every member deliberately broken, to prove the checker catches it.
    #[arg(long, value_enum)]
    pub sabotage: Option<crate::serve::SabotageArg>,
    /// Run the members with the multi-shard write path (`--experimental-stamped-revisions`):
    /// every write stamped by the leader with a revision from the revision oracle.
    #[arg(long)]
    pub stamped_revisions: bool,
    /// Split the keyspace into two shards (`--experimental-initial-shards`) at the register
    /// keys: the lists and the lock in the first shard (with the metadata), the registers in
    /// the second, on three of the members; the watchers watch both. Membership changes are
    /// refused in multi-shard mode, so wipe-rejoin is left out.
    #[arg(long)]
    pub shards: bool,
}

/// What a run found, for the summary line.
struct Totals {
    ops: [u64; 3],
    faults: usize,
    events: usize,
}

/// The prefix of every register and list key of the run with `seed`.
fn run_prefix(seed: u64) -> String {
    format!("chaos/{seed}/")
}

/// Where the register keys start: the second shard's first key with `--shards`.
fn register_prefix(seed: u64) -> String {
    format!("{}r/", run_prefix(seed))
}

fn seed_from_clock() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos % 1_000_000
}

/// Runs one chaos run; `Err` when a check failed or the run could not be carried out.
pub async fn run(args: ChaosArgs) -> Result<(), String> {
    if args.members < 3 {
        return Err("--members: a chaos run needs at least 3 members".into());
    }
    let seed = args.seed.unwrap_or_else(seed_from_clock);
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("concord-chaos-{}-{seed}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let binary = std::env::current_exe().map_err(|e| format!("cannot find the concord binary: {e}"))?;
    let sabotage = args
        .sabotage
        .map(|s| s.to_possible_value().expect("named").get_name().to_string());
    println!(
        "chaos: seed {seed}, {} members, {:?} of faults; replay with: {}",
        args.members,
        args.time,
        replay_command(seed),
    );
    let mut cluster = ChaosCluster::start(ClusterOptions {
        binary,
        dir: dir.clone(),
        members: args.members,
        namespaces: !args.loopback,
        sabotage,
        stamped_revisions: args.stamped_revisions,
        initial_shards: args.shards.then(|| register_prefix(seed)),
        register_keys: args.keys.max(1),
    })
    .await?;
    println!("chaos: {}", cluster.network().describe());
    println!("chaos: data and logs in {}", dir.display());
    // Ctrl-C ends the run through the same path as a failure, so the members are killed and
    // the namespaces removed rather than left behind.
    let outcome = tokio::select! {
        outcome = run_on(&mut cluster, &args, seed) => outcome,
        _ = tokio::signal::ctrl_c() => Err(format!("seed {seed} interrupted")),
    };
    match &outcome {
        Ok(_) if args.dir.is_none() => {
            drop(cluster);
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(_) => {}
        Err(_) => println!("chaos: member logs (last lines):\n{}", cluster.log_tails(15)),
    }
    outcome.map(|totals| {
        println!(
            "chaos: seed {seed}: {} ops ({} ok, {} unknown, {} failed), {} faults, {} watch events: valid",
            totals.ops.iter().sum::<u64>(),
            totals.ops[0],
            totals.ops[1],
            totals.ops[2],
            totals.faults,
            totals.events,
        );
    })
}

async fn run_on(cluster: &mut ChaosCluster, args: &ChaosArgs, seed: u64) -> Result<Totals, String> {
    let mut kinds = if args.faults.is_empty() {
        FaultKind::all()
    } else {
        args.faults.clone()
    };
    if args.shards {
        if kinds == [FaultKind::WipeRejoin] {
            return Err("--shards: wipe-rejoin changes members, which multi-shard mode refuses".into());
        }
        kinds.retain(|k| *k != FaultKind::WipeRejoin);
    } else {
        let sharded_only = [FaultKind::SplitShard, FaultKind::MoveShard];
        if !kinds.is_empty() && kinds.iter().all(|k| sharded_only.contains(k)) {
            return Err("split-shard and move-shard need --shards".into());
        }
        kinds.retain(|k| !sharded_only.contains(k));
    }
    let steps = nemesis::schedule(seed, args.time, &kinds);
    print!("chaos: schedule:\n{}", nemesis::describe(&steps));

    let prefix = run_prefix(seed);
    let start_revision = current_revision(cluster).await? + 1;
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        recorder: Recorder::new(),
        urls: cluster.client_urls(),
        prefix: prefix.clone(),
        keys: args.keys.max(1),
        seed,
        stop: stop_rx.clone(),
        counts: Default::default(),
        locks: LockStats::default(),
        started: Instant::now(),
    });

    let mut clients = tokio::task::JoinSet::new();
    for c in 0..args.registers {
        clients.spawn(workload::register_client(shared.clone(), 1 + c));
    }
    for c in 0..args.appenders {
        clients.spawn(workload::append_client(shared.clone(), 1001 + c));
    }
    let lock_name = format!("chaos-lock/{seed}").into_bytes();
    let lock_data = format!("chaos-lock-data/{seed}").into_bytes();
    for c in 0..args.lockers {
        let s = shared.clone();
        clients.spawn(workload::lock_client(s, 2001 + c, lock_name.clone(), lock_data.clone()));
    }
    let (until_tx, until_rx) = watch::channel(None);
    let mut watchers = Vec::new();
    for w in 0..args.watchers {
        let stream = Arc::new(Mutex::new(WatchStream {
            watcher: w,
            range: shared.watched_range(),
            start_revision,
            events: Vec::new(),
            complete_through: None,
        }));
        let task = tokio::spawn(workload::watch_client(shared.clone(), stream.clone(), until_rx.clone()));
        watchers.push((stream, task));
    }
    let progress = tokio::spawn(report_progress(shared.clone(), stop_rx.clone()));

    let start = Instant::now();
    let (_never_stopped_early, nemesis_stop) = watch::channel(false);
    let faults = nemesis::run(cluster, &steps, start, nemesis_stop).await;
    tokio::time::sleep(args.time.saturating_sub(start.elapsed())).await;

    let _ = stop_tx.send(true);
    progress.abort();
    let drain = async { while clients.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(30), drain).await.is_err() {
        return Err("clients did not finish their last op within 30s".into());
    }
    println!("chaos: {:>6.1}s  faults over; healing", start.elapsed().as_secs_f64());
    cluster.heal_all().await?;
    cluster
        .wait_healthy(Duration::from_secs(60))
        .await
        .map_err(|e| format!("the cluster did not recover after healing: {e}"))?;

    let final_state = read_final_state(cluster, &shared).await?;
    // The watchers see only their range (the lists alone when the keyspace is split), so they
    // are waited for up to the last write in it.
    let watched = shared.watched_range();
    let last_write = final_state
        .iter()
        .filter(|(key, _)| watched.contains(key))
        .map(|(_, r)| r.mod_revision)
        .max()
        .unwrap_or(0);
    let _ = until_tx.send(Some(last_write));
    let mut stalled = Vec::new();
    let mut streams = Vec::new();
    for (stream, mut task) in watchers {
        if tokio::time::timeout(Duration::from_secs(30), &mut task).await.is_err() {
            task.abort();
            let s = stream.lock().unwrap();
            let last = s.events.last().map_or(0, |e| e.revision);
            stalled.push(format!(
                "watcher {} stalled at revision {last}, wanted {last_write}",
                s.watcher
            ));
        }
        streams.push(stream.lock().unwrap().clone());
    }
    let hash = cluster.hash_kv_agreement(Duration::from_secs(30)).await;
    let shard_hashes = match args.shards {
        true => Some(cluster.shard_hash_agreement(Duration::from_secs(30)).await),
        false => None,
    };

    let history = shared
        .recorder
        .snapshot()
        .map_err(|e| format!("malformed history: {e}"))?;
    let report = check_all(&history, Some(&final_state), &streams, &Options::default());
    let violations = shared.locks.violations.lock().unwrap().clone();
    println!(
        "chaos: {} ops checked on {} keys; {} lock holds, {} locks lost to lease expiry",
        history.len(),
        final_state.len(),
        shared.locks.holds.load(Ordering::Relaxed),
        shared.locks.lost.load(Ordering::Relaxed),
    );
    print!("{report}");
    let mut problems = Vec::new();
    match report.validity() {
        Validity::Valid => {}
        Validity::Invalid => problems.push("the history violates etcd's guarantees (above)".to_string()),
        Validity::Unknown => println!("chaos: warning: the linearizability search gave up on some keys"),
    }
    problems.extend(violations.iter().map(|v| format!("lock exclusion violated: {v}")));
    problems.extend(stalled);
    match hash {
        Ok((revision, hash)) => println!("chaos: HashKV agrees on every member at revision {revision}: {hash:08x}"),
        Err(e) => problems.push(format!("HashKV does not agree: {e}")),
    }
    match shard_hashes {
        Some(Ok(shards)) => println!("chaos: every replica of the {shards} other shards agrees"),
        Some(Err(e)) => problems.push(format!("a shard's replicas do not agree: {e}")),
        None => {}
    }
    if !problems.is_empty() {
        return Err(format!("seed {seed} failed:\n- {}", problems.join("\n- ")));
    }
    let ops = [0, 1, 2].map(|i| shared.counts[i].load(Ordering::Relaxed));
    Ok(Totals {
        ops,
        faults,
        events: streams.iter().map(|s| s.events.len()).sum(),
    })
}

/// This command line with `--seed` set to `seed`, to replay the run.
fn replay_command(seed: u64) -> String {
    let mut words = vec!["concord".to_string()];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--seed" {
            args.next();
        } else if !arg.starts_with("--seed=") {
            words.push(arg);
        }
    }
    words.push(format!("--seed {seed}"));
    words.join(" ")
}

/// The store's revision, read linearizably from any member.
async fn current_revision(cluster: &ChaosCluster) -> Result<i64, String> {
    for url in cluster.client_urls() {
        let mut kv = KvClient::new(lazy_channel(&url));
        let request = RangeRequest {
            key: b"chaos-start".to_vec(),
            ..Default::default()
        };
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(3), kv.range(request)).await {
            return Ok(r.into_inner().header.map_or(0, |h| h.revision));
        }
    }
    Err("no member answers a linearizable read".into())
}

/// Reads every key the clients may have written, linearizably, once the faults have healed.
async fn read_final_state(cluster: &ChaosCluster, shared: &Shared) -> Result<FinalState, String> {
    let mut state = FinalState::new();
    let urls = cluster.client_urls();
    for key in shared.all_keys() {
        let mut answer = None;
        for attempt in 0..20 {
            let mut kv = KvClient::new(lazy_channel(&urls[attempt % urls.len()]));
            let request = RangeRequest {
                key: key.clone(),
                ..Default::default()
            };
            if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(3), kv.range(request)).await {
                answer = Some(r.into_inner());
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let answer = answer.ok_or_else(|| format!("cannot read {} after healing", String::from_utf8_lossy(&key)))?;
        if let Some(kv) = answer.kvs.into_iter().next() {
            state.insert(
                key,
                FinalRead {
                    value: kv.value,
                    mod_revision: kv.mod_revision,
                },
            );
        }
    }
    Ok(state)
}

/// Prints the op counts every ten seconds while the clients run.
async fn report_progress(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let start = Instant::now();
    let counts = |s: &Shared| [0, 1, 2].map(|i| s.counts[i].load(Ordering::Relaxed));
    let mut last = counts(&shared);
    while tokio::time::timeout(Duration::from_secs(10), stop.wait_for(|s| *s))
        .await
        .is_err()
    {
        let now = counts(&shared);
        println!(
            "chaos: {:>6.1}s  last 10s: {} ok, {} unknown, {} failed",
            start.elapsed().as_secs_f64(),
            now[0] - last[0],
            now[1] - last[1],
            now[2] - last[2],
        );
        last = now;
    }
}
