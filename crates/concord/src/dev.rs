//! `concord dev`: three members in one process on localhost, for trying Concord out.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use concord_server::{InitialClusterState, Limits, ServerConfig};
use tokio::sync::watch;

/// Flags of `concord dev`.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the members keep their data (one folder per member).
    #[arg(long, default_value = "concord-dev.data")]
    pub data_dir: PathBuf,
    /// Client port of the first member; member i uses base + 10000*i (2379, 12379, 22379),
    /// and the port after each for peers.
    #[arg(long, default_value_t = 2379)]
    pub base_port: u16,
}

/// Runs the three members until Ctrl-C.
pub async fn run(args: DevArgs) -> Result<(), String> {
    let names = ["dev1", "dev2", "dev3"];
    let ports: Vec<(u16, u16)> = (0..3u16)
        .map(|i| {
            let client = args.base_port.checked_add(10000 * i).ok_or("--base-port is too high")?;
            Ok((client, client + 1))
        })
        .collect::<Result<_, String>>()?;
    let initial_cluster = names
        .iter()
        .zip(&ports)
        .map(|(n, (_, peer))| format!("{n}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut members = tokio::task::JoinSet::new();
    for (name, (client, peer)) in names.iter().zip(&ports) {
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let cfg = ServerConfig {
            name: name.to_string(),
            data_dir: args.data_dir.join(name),
            listen_client_urls: vec![client_url.clone()],
            listen_metrics_urls: vec![],
            listen_dashboard_urls: vec![],
            advertise_client_urls: vec![client_url],
            listen_peer_urls: vec![peer_url.clone()],
            initial_advertise_peer_urls: vec![peer_url],
            initial_cluster: initial_cluster.clone(),
            wal_dir: None,
            client_connections: Default::default(),
            initial_cluster_state: InitialClusterState::New,
            initial_cluster_token: "concord-dev".into(),
            force_new_cluster: false,
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            limits: Limits::default(),
            watch_progress_notify_interval: Duration::from_secs(600),
            snapshot_count: 100_000,
            snapshot_catchup_entries: 5000,
            sabotage: None,
            stamped_revisions: false,
            initial_shards: Vec::new(),
            client_tls: None,
            peer_tls: None,
            auth: Default::default(),
            encryption_key_file: None,
            auto_compaction: None,
            corrupt_check: Default::default(),
            listen_client_http_urls: vec![],
            socket_options: Default::default(),
            // etcd's default --experimental-warning-apply-duration.
            warning_apply_duration: Duration::from_millis(100),
            stop_grpc_service_on_defrag: false,
            lease_checkpoint_interval: None,
            max_pending_proposal_bytes: concord_server::config::DEFAULT_MAX_PENDING_PROPOSAL_BYTES,
            http_access: Default::default(),
        };
        let mut stop = stop_rx.clone();
        members.spawn(async move {
            concord_server::serve(cfg, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        });
    }
    // host:port rather than URLs: etcdctl 3.4 turns a URL into an HTTP/2
    // authority that Rust's HTTP/2 server refuses for per-endpoint commands.
    let endpoints = ports
        .iter()
        .map(|(c, _)| format!("127.0.0.1:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    println!("concord dev: 3 members running; data in {}", args.data_dir.display());
    println!("endpoints: {endpoints}");
    println!("try: etcdctl --endpoints={endpoints} put hello world");
    println!(
        "dashboard: http://127.0.0.1:{}/ui/   metrics: http://127.0.0.1:{}/metrics",
        ports[0].0, ports[0].0
    );
    println!("press Ctrl-C to stop");

    let mut failure = None;
    tokio::select! {
        _ = crate::stop_signal() => {}
        Some(result) = members.join_next() => {
            failure = match result {
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
                Ok(Ok(())) => None,
            };
        }
    }
    let _ = stop_tx.send(true);
    while let Some(result) = members.join_next().await {
        if let Ok(Err(e)) = result {
            failure.get_or_insert(e.to_string());
        }
    }
    println!("concord dev: stopped");
    failure.map_or(Ok(()), Err)
}
