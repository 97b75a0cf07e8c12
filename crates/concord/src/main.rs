//! `concord`: run a member (`serve`), a local 3-member cluster (`dev`),
//! talk to any etcd-v3 endpoint (`kv`, `lease`), load one (`bench`), back a
//! cluster up and start a new one from the backup (`snapshot`), change its
//! members (`member`), or see how its members are doing (`endpoint`).
//!
//! The commands that talk to a cluster share their connection flags
//! ([`client`]) and etcdctl's `-w simple|table|json` output ([`output`]).
//! Errors print as `Error: <message>` with exit code 1, as etcdctl's do.

mod auto_tls;
mod bench;
mod chaos;
mod client;
mod client_tls;
mod config_file;
mod dev;
mod discovery;
mod endpoint;
mod etcd_flags;
mod goflags;
mod kv;
mod lease;
mod member;
mod output;
mod serve;
mod shard;
mod snapshot;
mod text;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: a member allocates and frees many small buffers per
/// request (h2 frames, protobuf messages, Raft entries), across threads, and glibc's bins
/// spent about a sixth of a member's CPU under a put load. Built without transparent huge pages
/// (`no_thp`): with them a member's peak resident memory was half as large again, and the kernel
/// spent the difference zeroing 2 MiB pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Concord: a distributed, strongly consistent key-value store that speaks etcd's v3 API.
#[derive(Parser)]
#[command(name = "concord", version, about)]
struct Cli {
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "info", env = "ETCD_LOG_LEVEL")]
    log_level: String,
    /// Log format: text (human-readable lines) or json (one object per line, for log pipelines).
    #[arg(long, global = true, value_enum, default_value = "text", env = "ETCD_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one member; takes etcd's flags with etcd's meaning.
    Serve(Box<serve::ServeArgs>),
    /// Run a 3-member cluster on localhost, for trying Concord out.
    Dev(dev::DevArgs),
    /// Read, write and watch keys on any etcd-v3 endpoint.
    Kv(kv::KvArgs),
    /// Grant, revoke, inspect, list and keep alive leases (like `etcdctl lease`).
    Lease(lease::LeaseArgs),
    /// Load any etcd-v3 endpoint and report throughput and latency (like etcd's benchmark).
    Bench(bench::BenchArgs),
    /// Save a snapshot of a running cluster, restore one into a new member's data directory, or show what one holds.
    Snapshot(snapshot::SnapshotArgs),
    /// List, add, remove, update and promote the members of a cluster (like `etcdctl member`).
    Member(member::MemberArgs),
    /// Each endpoint's status, or whether it is healthy (like `etcdctl endpoint`).
    Endpoint(endpoint::EndpointArgs),
    /// List the shards the keyspace is split into; split them, move them, transfer their leadership.
    Shard(shard::ShardArgs),
    /// Run a cluster under a seeded schedule of faults while clients record a history, then check
    /// it: linearizability, lost writes, watch gaps, lock exclusion, members' hashes.
    Chaos(chaos::ChaosArgs),
}

/// How `serve` and `dev` write their logs.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event: timestamp, level, target, message and fields.
    Json,
}

fn init_logging(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

fn main() -> std::process::ExitCode {
    let env = |k: &str| std::env::var(k).ok();
    // etcd's `--config-file`: the file stands for the whole command line and environment.
    let from_file = match config_file::expand(&std::env::args_os().collect::<Vec<_>>(), &env) {
        Ok(from_file) => from_file,
        Err(e) => {
            eprintln!("Error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let command_line = match &from_file {
        Some(file) => {
            // As etcd ignores them then. No other thread runs yet.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("ETCD_") {
                    std::env::remove_var(key);
                }
            }
            file.args.clone()
        }
        None => std::env::args_os().collect(),
    };
    // `serve` takes etcd's command lines in Go's flag syntax: rewritten for clap first.
    let cli = Cli::parse_from(goflags::rewrite(command_line.clone(), &env));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => {
            init_logging(&cli.log_level, cli.log_format);
            if let Some(file) = &from_file {
                tracing::info!(
                    path = %file.path,
                    "loaded server configuration, other configuration command line flags and environment variables will be ignored if provided"
                );
                for key in &file.unknown {
                    tracing::warn!(path = %file.path, "unknown setting {key:?} in the config file is ignored");
                }
            }
            runtime.block_on(serve::run(*args, &command_line))
        }
        Command::Dev(args) => {
            init_logging(&cli.log_level, cli.log_format);
            runtime.block_on(dev::run(args))
        }
        Command::Kv(args) => runtime.block_on(kv::run(args)),
        Command::Lease(args) => runtime.block_on(lease::run(args)),
        Command::Endpoint(args) => runtime.block_on(endpoint::run(args)),
        Command::Bench(args) => runtime.block_on(bench::run(args)),
        Command::Snapshot(args) => runtime.block_on(snapshot::run(args)),
        Command::Member(args) => runtime.block_on(member::run(args)),
        Command::Shard(args) => runtime.block_on(shard::run(args)),
        Command::Chaos(args) => runtime.block_on(chaos::run(args)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
pub async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks the whole command tree (no clashing flags, e.g. the global `-w` and `--key`).
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
