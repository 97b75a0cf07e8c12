//! One running member: opens its storage, starts its Raft group and peer
//! transport, serves clients, and shuts down cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use concord_proto::concordpb::{raft_command::Op, RaftCommand};
use concord_proto::etcdserverpb::auth_server::AuthServer;
use concord_proto::etcdserverpb::cluster_server::ClusterServer;
use concord_proto::etcdserverpb::maintenance_server::MaintenanceServer;
use concord_proto::etcdserverpb::watch_server::WatchServer;
use concord_proto::etcdserverpb::Member;
use concord_raft::{start_group, GroupConfig, PeerTransport};
use concord_storage::MvccStore;
use prost::Message as _;
use tokio::sync::watch;

use crate::apply::{Effects, KvStateMachine};
use crate::cluster::ClusterService;
use crate::config::{InitialClusterState, ServerConfig};
use crate::context::MemberContext;
use crate::election::ElectionService;
use crate::http::HttpState;
use crate::kv::KvService;
use crate::lease::lessor::{run_lessor, Lessor};
use crate::lease::LeaseService;
use crate::lock::LockService;
use crate::maintenance::MaintenanceService;
use crate::membership::Membership;
use crate::metrics::rates::RateHistory;

use crate::tls::MemberTls;
use crate::watch::{WatchHub, WatchService};
use concord_proto::etcdserverpb::lease_server::LeaseServer;
use concord_proto::v3electionpb::election_server::ElectionServer;
use concord_proto::v3lockpb::lock_server::LockServer;

/// The id of the group that owns the whole keyspace today.
pub const FIRST_GROUP_ID: u64 = 1;

/// gRPC framing and metadata on top of a request, as etcd allows (512 KiB).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// How long a stopping member lets in-flight requests finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A failure to start or run a member.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad flags or an inconsistent data directory.
    #[error("{0}")]
    Config(String),
    /// Storage could not be opened.
    #[error("{0}")]
    Storage(String),
    /// A listener could not be bound or failed.
    #[error("{0}")]
    Network(String),
    /// The member's own storage failed while it ran (see `RaftHandle::failed`): it stopped
    /// rather than serve from a state it cannot vouch for. etcd exits for the same faults.
    #[error("{0}")]
    Fault(String),
}

/// Resolves etcd-style URLs (`http://host:port`, `https://host:port`) into socket addresses to
/// bind, each with whether it serves TLS.
async fn resolve(urls: &[String]) -> Result<Vec<(SocketAddr, bool)>, ServeError> {
    let mut addrs = Vec::new();
    for url in urls {
        let (rest, tls) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => {
                return Err(ServeError::Config(format!(
                    "{url}: URLs must start with http:// or https://"
                )))
            }
        };
        let host_port = rest.trim_end_matches('/');
        let resolved = tokio::net::lookup_host(host_port)
            .await
            .map_err(|e| ServeError::Config(format!("{url}: {e}")))?;
        // Bind one address per URL, preferring IPv4 for "localhost".
        let mut resolved: Vec<SocketAddr> = resolved.collect();
        resolved.sort_by_key(|a| !a.is_ipv4());
        addrs.push((
            *resolved
                .first()
                .ok_or_else(|| ServeError::Config(format!("{url}: no address")))?,
            tls,
        ));
    }
    Ok(addrs)
}

/// etcd's `netutil.URLStringsEqual`: URLs that differ as text are the same when, with each
/// host resolved (IPv4 first, as Go's `net.ResolveTCPAddr`), they are. A cluster found by DNS
/// SRV records names a member by its SRV target, while the member may advertise its address.
async fn same_resolved_urls(a: &[String], b: &[String]) -> bool {
    async fn resolved(urls: &[String]) -> Option<Vec<String>> {
        let mut out = Vec::with_capacity(urls.len());
        for url in urls {
            let uri: http::Uri = url.parse().ok()?;
            let host = uri.host()?.trim_matches(['[', ']']);
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, uri.port_u16()?)).await.ok()?.collect();
            let addr = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first())?;
            out.push(format!("{}://{addr}", uri.scheme_str()?));
        }
        out.sort();
        Some(out)
    }
    if a.len() != b.len() {
        return false;
    }
    match (resolved(a).await, resolved(b).await) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Runs a member until `shutdown` resolves, then stops it gracefully:
/// listeners close, in-flight requests finish, the store is flushed.
pub async fn serve(cfg: ServerConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let sealer = load_sealer(&cfg)?;
    let member_dir = cfg.data_dir.join("member");
    std::fs::create_dir_all(&member_dir).map_err(|e| ServeError::Storage(format!("{}: {e}", member_dir.display())))?;
    let peer_source = concord_raft::transport::source_address(&cfg.listen_peer_urls);
    let tls = MemberTls::load(&cfg, peer_source)?;
    tls.spawn_reloader();
    let loaded = Membership::load(&member_dir).map_err(|e| ServeError::Config(e.to_string()))?;
    // Only a member that already belonged to its cluster has data to compare (etcd checks only
    // an initialized member).
    let initialized = loaded.is_some();
    let membership = match loaded {
        Some(m) => m,
        None if cfg.initial_cluster_state == InitialClusterState::Existing => {
            // Joining a running cluster: ask its members who is in it.
            let spec = crate::membership::parse_initial_cluster(&cfg.initial_cluster)
                .map_err(|e| ServeError::Config(e.to_string()))?;
            let others: Vec<String> = spec
                .into_iter()
                .filter(|(name, _)| *name != cfg.name)
                .flat_map(|(_, urls)| urls)
                .collect();
            let remote = crate::peer::fetch_membership(&others, &tls.peer_dialer)
                .await
                .map_err(|e| ServeError::Config(format!("cannot reach the cluster to join: {e}")))?;
            Membership::join(&member_dir, remote, &cfg.initial_advertise_peer_urls)
                .map_err(|e| ServeError::Config(e.to_string()))?
        }
        None => {
            let spec = crate::membership::parse_initial_cluster(&cfg.initial_cluster)
                .map_err(|e| ServeError::Config(e.to_string()))?;
            if let Some((_, urls)) = spec.iter().find(|(n, _)| *n == cfg.name) {
                let mut mine = urls.clone();
                let mut advertised = cfg.initial_advertise_peer_urls.clone();
                mine.sort();
                advertised.sort();
                if mine != advertised && !same_resolved_urls(&mine, &advertised).await {
                    return Err(ServeError::Config(format!(
                        "--initial-cluster has {}={:?} but --initial-advertise-peer-urls is {:?}",
                        cfg.name, mine, advertised
                    )));
                }
            }
            Membership::bootstrap(
                &member_dir,
                &cfg.name,
                &cfg.initial_cluster,
                &cfg.initial_cluster_token,
                &cfg.advertise_client_urls,
            )
            .map_err(|e| ServeError::Config(e.to_string()))?
        }
    };
    let membership = Arc::new(membership);
    let member_id = membership.local_id();
    tracing::info!(
        name = %cfg.name,
        member_id = %format!("{member_id:x}"),
        cluster_id = %format!("{:x}", membership.cluster_id()),
        "starting member"
    );

    let store_path = member_dir.join("kv.redb");
    let store = Arc::new(
        MvccStore::open_with(&store_path, sealer.clone())
            .map_err(|e| ServeError::Storage(format!("{}: {e}", store_path.display())))?,
    );
    // A forced member's peers are gone for good: there is nobody to compare with.
    if cfg.corrupt_check.initial && initialized && !cfg.force_new_cluster {
        // Before the Raft group starts and anything is served, as etcd does: a member whose data
        // differ from its peers' must not serve them, nor vote.
        crate::corrupt_check::initial_check(&store, &membership, &tls.peer_dialer, cfg.request_timeout())
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "checkInitialHashKV failed");
                ServeError::Config(e)
            })?;
    }
    let raft_dir = cfg
        .wal_dir
        .as_ref()
        .map_or_else(|| member_dir.join("raft"), |dir| dir.join("raft"));
    std::fs::create_dir_all(&raft_dir).map_err(|e| ServeError::Storage(format!("{}: {e}", raft_dir.display())))?;
    let engine =
        concord_raft::log_store::open_engine(&raft_dir).map_err(|e| ServeError::Storage(format!("raft log: {e}")))?;
    if cfg.force_new_cluster {
        force_new_cluster(&cfg, &engine, &membership, initialized, sealer.clone())?;
    }

    let auth = crate::auth::AuthState::new(store.clone(), &cfg.auth).map_err(ServeError::Config)?;
    let hub = WatchHub::new(store.clone());
    tokio::spawn(hub.clone().run());
    crate::heap::start_trimmer();
    let lessor = Lessor::new(
        store.clone(),
        cfg.election_timeout,
        cfg.request_timeout(),
        cfg.lease_checkpoint_interval,
    );

    let snapshot_dir = member_dir.join("snap");
    let runtime = tokio::runtime::Handle::current();
    let transport = PeerTransport::new(member_id, runtime, snapshot_dir.clone(), tls.peer_dialer.clone());
    transport.set_silent_after(cfg.heartbeat_interval * cfg.election_ticks() as u32);
    for m in membership.members() {
        if let Some(url) = m.peer_ur_ls.first() {
            transport.set_peer(m.id, url);
        }
    }
    // A joining member starts with no voters: the leader's snapshot brings them.
    let initial_voters = if cfg.initial_cluster_state == InitialClusterState::New {
        membership
            .members()
            .iter()
            .filter(|m| !m.is_learner)
            .map(|m| m.id)
            .collect()
    } else {
        Vec::new()
    };
    let member_ids: Vec<u64> = membership.members().iter().map(|m| m.id).collect();
    let placements = crate::shard_map::load_or_create(
        &member_dir,
        &cfg.initial_shards,
        &member_ids,
        !initialized && cfg.initial_cluster_state == InitialClusterState::New,
    )
    .map_err(ServeError::Config)?;
    let group_cfg = GroupConfig {
        group_id: FIRST_GROUP_ID,
        member_id,
        initial_voters,
        snapshot_dir,
        snapshot_count: cfg.snapshot_count,
        catch_up_entries: cfg.snapshot_catchup_entries,
        tick_interval: cfg.heartbeat_interval,
        election_ticks: cfg.election_ticks(),
        request_timeout: cfg.request_timeout(),
        sealer: sealer.clone(),
        warning_apply_duration: cfg.warning_apply_duration,
        max_pending_proposal_bytes: cfg.max_pending_proposal_bytes,
        // Group 1 keeps the cluster's metadata and revisions: it always ticks.
        hibernate: false,
    };
    let (removed_tx, mut removed_rx) = watch::channel(false);
    // Before group 1 starts: replaying its log may split its shard.
    let shard_groups =
        crate::shard_groups::ShardGroups::new(member_dir.clone(), placements.clone(), membership.clone());
    let effects = Effects {
        membership: membership.clone(),
        hub: hub.clone(),
        lessor: lessor.clone(),
        transport: transport.clone(),
        removed: removed_tx,
        auth: auth.clone(),
        group_id: FIRST_GROUP_ID,
        shards: Arc::downgrade(&shard_groups),
    };
    let (group, driver_thread) = start_group(
        group_cfg.clone(),
        engine.clone(),
        KvStateMachine::new(store.clone(), effects),
        transport.clone(),
    )
    .map_err(|e| ServeError::Storage(e.to_string()))?;
    transport.register_group(FIRST_GROUP_ID, Arc::new(group.clone()));
    let revision_oracle = crate::revision_oracle::RevisionOracle::start(group.clone(), store.clone());
    // Several shards stamp every write with the oracle's revisions, group 1's too.
    if cfg.stamped_revisions || !placements.is_empty() {
        group.stamp_with(revision_oracle.clone());
    }
    let oracle_client = crate::revision_oracle::OracleClient::new(
        revision_oracle.clone(),
        group.clone(),
        membership.clone(),
        tls.peer_dialer.clone(),
        cfg.request_timeout(),
    );
    let shard_effects = {
        let (membership, lessor, transport, auth) =
            (membership.clone(), lessor.clone(), transport.clone(), auth.clone());
        let shards = Arc::downgrade(&shard_groups);
        move |group_id, hub| Effects {
            membership: membership.clone(),
            hub,
            lessor: lessor.clone(),
            transport: transport.clone(),
            // Only group 1's configuration changes remove a member.
            removed: watch::channel(false).0,
            auth: auth.clone(),
            group_id,
            shards: shards.clone(),
        }
    };
    let router = shard_groups
        .start(crate::shard_groups::GroupStarter {
            first: group_cfg.clone(),
            engine: engine.clone(),
            transport: transport.clone(),
            revisions: oracle_client.clone(),
            effects: Box::new(shard_effects),
            first_shard: crate::router::Shard {
                start: Vec::new(),
                end: Vec::new(),
                group: group.clone(),
                store: store.clone(),
                hub: hub.clone(),
            },
            runtime: tokio::runtime::Handle::current(),
        })
        .map_err(ServeError::Storage)?;

    let (grpc_health, health_service) = crate::grpc_health::GrpcHealth::new(cfg.stop_grpc_service_on_defrag);
    let ctx = Arc::new(MemberContext {
        membership: membership.clone(),
        router,
        revisions: oracle_client,
        shards: shard_groups.clone(),
        transport: transport.clone(),
        store,
        snapshot_dir: member_dir.join("snap"),
        limits: cfg.limits.clone(),
        request_timeout: cfg.request_timeout(),
        sabotage: cfg.sabotage,
        client_dialer: tls.client_dialer.clone(),
        auth,
        snapshot_downloads: Default::default(),
        grpc_health,
        shard_channels: Default::default(),
    });

    let lessor_task = tokio::spawn(run_lessor(lessor.clone(), ctx.clone()));

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();

    let http_state = HttpState {
        ctx: ctx.clone(),
        rates: Arc::new(RateHistory::default()),
        leases: Arc::new(LeaseService::new(ctx.clone(), lessor.clone(), cfg.election_timeout)),
        hub: hub.clone(),
        watch_progress_notify_interval: cfg.watch_progress_notify_interval,
    };
    tokio::spawn(crate::metrics::rates::sample(
        ctx.clone(),
        http_state.rates.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::metrics::probe::count_leader_changes(
        ctx.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::metrics::probe::probe_peers(
        ctx.clone(),
        tls.peer_dialer.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::compactor::run(cfg.auto_compaction, ctx.clone(), stop_rx.clone()));
    tokio::spawn(crate::cross_shard_recovery::run(ctx.clone(), stop_rx.clone()));
    tokio::spawn(crate::corrupt_check::run_periodic(
        cfg.corrupt_check.periodic,
        ctx.clone(),
        tls.peer_dialer.clone(),
        stop_rx.clone(),
    ));
    tokio::spawn(crate::compact_hash_check::run(
        cfg.corrupt_check.after_compaction,
        ctx.clone(),
        tls.peer_dialer.clone(),
        stop_rx.clone(),
    ));
    let extra_listeners = [
        (
            "metrics",
            &cfg.listen_metrics_urls,
            crate::http::operator_routes(http_state.clone()),
        ),
        (
            "dashboard",
            &cfg.listen_dashboard_urls,
            crate::http::dashboard_routes(http_state.clone()),
        ),
        // etcd 3.5's --listen-client-http-urls: every HTTP route, and the client URLs keep gRPC.
        (
            "client HTTP",
            &cfg.listen_client_http_urls,
            crate::http::all_routes(http_state.clone()),
        ),
    ];
    let http_access = Arc::new(cfg.http_access.clone());
    for (what, urls, routes) in extra_listeners {
        for (addr, https) in resolve(urls).await? {
            let listener = crate::listen::bind(addr, cfg.socket_options)?;
            // --listen-client-http-urls are client URLs, under etcd's access control; the
            // metrics (as in etcd) and dashboard listeners are not.
            let routes = match what {
                "client HTTP" => crate::http::access::guard(routes.clone(), http_access.clone(), https),
                _ => routes.clone(),
            };
            let router = tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(tonic::service::Routes::from(routes));
            let tls = if https { tls.client_listener.clone() } else { None };
            servers.spawn(run_listener(what, addr, listener, router, tls, stop_rx.clone()));
            tracing::info!(%addr, tls = https, "serving {what}");
        }
    }

    for (addr, https) in resolve(&cfg.listen_peer_urls).await? {
        let listener = crate::listen::bind(addr, cfg.socket_options)?;
        let router = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(transport.service())
            .add_service(crate::peer::ClusterPeerService::server(membership.clone()))
            .add_service(crate::corrupt_check::PeerHashService::server(ctx.clone()))
            .add_service(revision_oracle.server());
        let tls = if https { tls.peer_listener.clone() } else { None };
        servers.spawn(run_listener("peer", addr, listener, router, tls, stop_rx.clone()));
        tracing::info!(%addr, tls = https, "serving peers");
    }

    let max_message = cfg.limits.max_request_bytes + GRPC_OVERHEAD_BYTES;
    for (addr, https) in resolve(&cfg.listen_client_urls).await? {
        let listener = crate::listen::bind(addr, cfg.socket_options)?;
        // Every service refuses a message announced past the limit before reading it (tonic's
        // own default is 4 MiB), as the KV calls do.
        let maintenance = MaintenanceService::new(ctx.clone());
        let watch = WatchService::new(ctx.clone(), hub.clone(), cfg.watch_progress_notify_interval);
        let lease = LeaseService::new(ctx.clone(), lessor.clone(), cfg.election_timeout);
        let auth = crate::auth::service::AuthService::new(ctx.clone());
        let routes = tonic::service::Routes::new(
            ClusterServer::new(ClusterService::new(ctx.clone())).max_decoding_message_size(max_message),
        )
        .add_service(MaintenanceServer::new(maintenance).max_decoding_message_size(max_message))
        .add_service(WatchServer::new(watch).max_decoding_message_size(max_message))
        .add_service(LeaseServer::new(lease).max_decoding_message_size(max_message))
        .add_service(LockServer::new(LockService::new(ctx.clone(), hub.clone())).max_decoding_message_size(max_message))
        .add_service(
            ElectionServer::new(ElectionService::new(ctx.clone(), hub.clone())).max_decoding_message_size(max_message),
        )
        .add_service(AuthServer::new(auth).max_decoding_message_size(max_message))
        .add_service(health_service.clone())
        .add_service(crate::shards::ShardService::server(ctx.clone()));
        let mut router = routes.into_axum_router();
        if cfg.listen_client_http_urls.is_empty() {
            router = router.merge(crate::http::all_routes(http_state.clone()));
        }
        let mut router = router.fallback(crate::fallback::unimplemented_method);
        if cfg.listen_client_http_urls.is_empty() {
            // etcd's access control covers the HTTP requests of a client URL that serves them.
            router = crate::http::access::guard(router, http_access.clone(), https);
        }
        let calls = crate::client_port::ClientCalls::new(KvService::new(ctx.clone()), max_message, router);
        let tls = if https { tls.client_listener.clone() } else { None };
        let certificate_users = cfg.client_tls.as_ref().is_some_and(|f| f.client_cert_auth);
        servers.spawn(run_client_listener(
            addr,
            listener,
            calls,
            tls,
            certificate_users,
            cfg.client_connections,
            stop_rx.clone(),
        ));
        tracing::info!(%addr, tls = https, "serving clients");
    }

    tokio::spawn(publish_self(
        group.clone(),
        Member {
            id: member_id,
            name: cfg.name.clone(),
            peer_ur_ls: vec![],
            client_ur_ls: cfg.advertise_client_urls.clone(),
            is_learner: false,
        },
        stop_rx.clone(),
    ));

    let mut fault = None;
    let failed = tokio::select! {
        _ = shutdown => None,
        reason = group.failed() => {
            fault = Some(reason);
            None
        }
        reason = shard_groups.failed() => {
            fault = Some(reason);
            None
        }
        _ = removed_rx.wait_for(|removed| *removed) => {
            tracing::warn!("stopping: this member has been permanently removed from the cluster");
            None
        }
        Some(result) = servers.join_next() => Some(result),
    };
    tracing::info!("shutting down");
    crate::notify::stopping();
    let _ = stop_tx.send(true);
    let drain = async {
        while let Some(result) = servers.join_next().await {
            if let Ok(Err(e)) = result {
                tracing::warn!("{e}");
            }
        }
    };
    // Long-lived streams (peer links, and later watches) never finish on
    // their own: give in-flight requests a grace period, then cut the rest.
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        servers.abort_all();
    }
    lessor_task.abort();
    shard_groups.stop().await;
    group.stop();
    let _ = tokio::task::spawn_blocking(move || driver_thread.join()).await;
    if let Some(reason) = fault {
        return Err(ServeError::Fault(reason));
    }
    match failed {
        Some(Ok(Err(e))) => Err(ServeError::Network(e)),
        Some(Err(e)) => Err(ServeError::Network(e.to_string())),
        _ => Ok(()),
    }
}

/// Serves `router` on `listener`, through TLS when `tls` is set, until `stop` turns true.
async fn run_listener(
    what: &'static str,
    addr: SocketAddr,
    listener: tokio::net::TcpListener,
    router: tonic::transport::server::Router,
    tls: Option<Arc<concord_tls::Reloadable<concord_tls::rustls::ServerConfig>>>,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let stop = wait_for_stop(stop);
    match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(concord_tls::accept(listener, tls), stop)
                .await
        }
        None => router.serve_with_incoming_shutdown(incoming(listener), stop).await,
    }
    .map_err(|e| format!("{what} listener {addr}: {e}"))
}

/// Serves the client port on `listener`, through TLS when `tls` is set, until `stop` turns true.
async fn run_client_listener(
    addr: SocketAddr,
    listener: tokio::net::TcpListener,
    calls: crate::client_port::ClientCalls<()>,
    tls: Option<Arc<concord_tls::Reloadable<concord_tls::rustls::ServerConfig>>>,
    certificate_users: bool,
    settings: crate::client_port::ConnectionSettings,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    match tls {
        Some(tls) => {
            let incoming = concord_tls::accept(listener, tls);
            crate::client_port::serve(incoming, calls, certificate_users, settings, stop).await
        }
        None => crate::client_port::serve(incoming(listener), calls, false, settings, stop).await,
    }
    tracing::debug!(%addr, "client listener stopped");
    Ok(())
}

/// etcd's `--force-new-cluster` on this member's log (see `concord_raft::force_new_cluster`): the
/// group restarts with this member as its only voter, the others' removal applied (and recorded
/// in the membership) as the log is applied. A member without data starts as it would without
/// the flag, as etcd's does.
fn force_new_cluster(
    cfg: &ServerConfig,
    engine: &Arc<concord_raft::force_new_cluster::Engine>,
    membership: &Membership,
    initialized: bool,
    sealer: Option<Arc<concord_crypt::Sealer>>,
) -> Result<(), ServeError> {
    let local = membership.local_id();
    let forced = if initialized {
        concord_raft::force_new_cluster::force_new_cluster(engine, FIRST_GROUP_ID, local, sealer)
            .map_err(|e| ServeError::Storage(format!("--force-new-cluster: {e}")))?
    } else {
        None
    };
    let Some(forced) = forced else {
        tracing::warn!("--force-new-cluster has no effect on a member without data; it starts as without it");
        return Ok(());
    };
    let removed: Vec<String> = forced.removed.iter().map(|id| format!("{id:x}")).collect();
    tracing::info!(
        cluster_id = %format!("{:x}", membership.cluster_id()),
        local_member_id = %format!("{local:x}"),
        commit_index = forced.commit,
        removed_members = %removed.join(","),
        newly_committed_entries = forced.newly_committed,
        "forcing restart member"
    );
    // etcd's advice: the flag is for one start; the removals are now in the log, so a later
    // start with it changes nothing, but it hides that the member was forced.
    tracing::warn!(
        name = %cfg.name,
        "--force-new-cluster is set: this member now forms a one-member cluster; restart it without the flag \
         (and without ETCD_FORCE_NEW_CLUSTER), then add members with `member add`"
    );
    Ok(())
}

/// Reads `--encryption-key-file`, before anything is written: a bad file stops the member.
fn load_sealer(cfg: &ServerConfig) -> Result<Option<Arc<concord_crypt::Sealer>>, ServeError> {
    let Some(path) = &cfg.encryption_key_file else {
        return Ok(None);
    };
    let bad = |e: concord_crypt::CryptError| ServeError::Config(format!("--encryption-key-file: {e}"));
    let keyring = concord_crypt::Keyring::load(path).map_err(bad)?;
    tracing::info!(
        seal_with = %format!("{} (id {})", keyring.active_name(), keyring.active_id()),
        keys = %keyring.describe(),
        "encryption at rest is on"
    );
    Ok(Some(Arc::new(
        concord_crypt::Sealer::new(Arc::new(keyring)).map_err(bad)?,
    )))
}

/// Accepted connections with Nagle's algorithm off: small gRPC frames must
/// not wait for delayed ACKs (the builder's `tcp_nodelay` does not apply to
/// listeners handed over like this), and with h2's writes batched ([`concord_tls::CoalescedWrites`]).
fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<concord_tls::CoalescedWrites<tokio::net::TcpStream>>> {
    use tokio_stream::StreamExt as _;
    tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(|accepted| accepted.map(concord_tls::CoalescedWrites::new))
}

async fn wait_for_stop(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Announces this member's name and client URLs through Raft, as etcd's
/// publish does, retrying until it is committed or the member stops.
async fn publish_self(group: crate::router::GroupHandle, me: Member, stop: watch::Receiver<bool>) {
    let data = RaftCommand {
        op: Some(Op::PublishMember(me)),
    }
    .encode_to_vec();
    // Other members need these URLs to forward lease calls here, so retry
    // often until a leader exists to commit the announcement.
    let delay = Duration::from_millis(100);
    while !*stop.borrow() {
        match group.propose(data.clone()).await {
            Ok(_) => {
                tracing::info!("published member attributes");
                // Listeners are bound and the cluster knows this member: as etcd after
                // ReadyNotify, tell systemd it serves.
                crate::notify::ready();
                return;
            }
            Err(e) => tracing::debug!("publish not committed yet: {e}"),
        }
        tokio::time::sleep(delay).await;
    }
}
