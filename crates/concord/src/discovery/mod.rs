//! Cluster bootstrap by discovery, as etcd 3.4 and 3.5 do it: `--discovery-srv` (DNS SRV
//! records, [`srv`]) or `--discovery` (etcd's v2 discovery protocol on a v2 keys API, [`v2`]).
//!
//! Both only stand in for `--initial-cluster` on a member that has no cluster yet: they run
//! before the member starts and leave [`ServerConfig::initial_cluster`] (and, for `--discovery`,
//! [`ServerConfig::initial_cluster_token`]) as etcd would have derived them, so the member ids
//! and the cluster id come out as etcd's would. A member whose data directory already holds
//! its cluster looks nothing up, as etcd does (`embed.StartEtcd` asks for the initial cluster
//! only when `!isMemberInitialized`; `etcdserver.NewServer` warns about an ignored discovery URL).
//!
//! Flags, checks and messages follow etcd's `etcdmain/config.go` (the flags; a discovery flag
//! clears the default `--initial-cluster`), `embed/config.go` (`Validate`:
//! `ErrConflictBootstrapFlags`; `PeerURLsMapAndToken`; `GetDNSClusterNames`),
//! `config.ServerConfig.VerifyJoinExisting` and `etcdmain/etcd.go` (what a failed discovery
//! prints, and `--discovery-fallback`).

pub mod http;
pub mod srv;
pub mod v2;

use clap::{Args, ValueEnum};
use concord_server::{InitialClusterState, ServerConfig};

/// etcd's `ErrConflictBootstrapFlags`, word for word.
pub const CONFLICTING_BOOTSTRAP_FLAGS: &str = "multiple discovery or bootstrap flags are set. \
     Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\"";

/// What a member whose `--discovery` cluster is full does (etcd's `--discovery-fallback`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Fallback {
    /// Exit with an error.
    Exit,
    /// Run as etcd's v2 proxy instead (etcd's default). Concord has no v2 proxy, so it exits
    /// with an error that says so.
    Proxy,
}

/// etcd's discovery flags of `concord serve`, with etcd's names and `ETCD_*` variables.
#[derive(Args, Clone, Debug)]
pub struct DiscoveryArgs {
    /// Discovery URL used to bootstrap the cluster: a directory of etcd's v2 keys API, e.g.
    /// http://host:2379/v2/keys/discovery/<token>, whose _config/size holds the cluster size.
    #[arg(long, env = "ETCD_DISCOVERY")]
    pub discovery: Option<String>,
    /// Expected behavior ('exit' or 'proxy') when discovery services fails ('proxy': Concord
    /// has no v2 proxy and exits with an error).
    #[arg(long, value_enum, default_value = "proxy", env = "ETCD_DISCOVERY_FALLBACK")]
    pub discovery_fallback: Fallback,
    /// HTTP proxy to use for traffic to discovery service.
    #[arg(long, env = "ETCD_DISCOVERY_PROXY")]
    pub discovery_proxy: Option<String>,
    /// DNS domain used to bootstrap initial cluster (SRV records _etcd-server-ssl._tcp.<domain>
    /// and _etcd-server._tcp.<domain>).
    #[arg(long, env = "ETCD_DISCOVERY_SRV")]
    pub discovery_srv: Option<String>,
    /// Service name to query when using DNS discovery (_etcd-server-<name>._tcp.<domain>).
    #[arg(long, env = "ETCD_DISCOVERY_SRV_NAME")]
    pub discovery_srv_name: Option<String>,
}

/// Go's flags treat an empty value as unset.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

impl DiscoveryArgs {
    /// The discovery URL, if one is given.
    pub fn url(&self) -> Option<&str> {
        given(&self.discovery)
    }

    /// The SRV domain, if one is given.
    pub fn srv_domain(&self) -> Option<&str> {
        given(&self.discovery_srv)
    }

    /// Whether the default `--initial-cluster` (this member alone) is dropped, as etcdmain drops
    /// it when any of `--discovery`, `--discovery-srv` or `--discovery-srv-name` is given and
    /// `--initial-cluster` is not.
    fn clears_default_cluster(&self) -> bool {
        self.url().is_some() || self.srv_domain().is_some() || given(&self.discovery_srv_name).is_some()
    }

    /// etcd's check of the bootstrap flags, made at start whether or not the member has its
    /// cluster already: at most one of an explicit `--initial-cluster` (flag or
    /// `ETCD_INITIAL_CLUSTER`), `--discovery` and `--discovery-srv`.
    pub fn check(&self, initial_cluster_given: bool) -> Result<(), String> {
        let set = [initial_cluster_given, self.url().is_some(), self.srv_domain().is_some()];
        if set.iter().filter(|s| **s).count() > 1 {
            return Err(CONFLICTING_BOOTSTRAP_FLAGS.to_string());
        }
        Ok(())
    }

    /// Fills in `cfg`'s initial cluster from discovery, for a member that has no cluster yet;
    /// does nothing when no discovery flag is given or the member already belongs to a cluster.
    /// `initial_cluster_given` says whether `--initial-cluster` was given (checked by
    /// [`DiscoveryArgs::check`]).
    pub async fn bootstrap(&self, cfg: &mut ServerConfig, initial_cluster_given: bool) -> Result<(), String> {
        if initial_cluster_given || !self.clears_default_cluster() {
            return Ok(());
        }
        let member_dir = cfg.data_dir.join("member");
        // A membership file that cannot be read is the member's to report when it starts;
        // registering it anew would be wrong either way.
        if !matches!(concord_server::membership::Membership::load(&member_dir), Ok(None)) {
            if self.url().is_some() {
                tracing::warn!(
                    data_dir = %cfg.data_dir.display(),
                    "discovery token is ignored since cluster already initialized; valid logs are found"
                );
            }
            return Ok(());
        }
        if let Some(domain) = self.srv_domain() {
            let dns = srv::SystemDns::new()?;
            let suffix = given(&self.discovery_srv_name).unwrap_or("");
            let nodes = srv::initial_cluster(&dns, domain, suffix, &cfg.name, &cfg.initial_advertise_peer_urls)
                .await
                .map_err(|e| format!("error setting up initial cluster: {e}"))?;
            cfg.initial_cluster = nodes.join(",");
            return Ok(());
        }
        let Some(url) = self.url() else {
            // Only --discovery-srv-name: etcd drops the default cluster and finds no member.
            return Err(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                cfg.name
            ));
        };
        if cfg.initial_cluster_state == InitialClusterState::Existing {
            return Err("discovery URL should not be set when joining existing initial cluster".into());
        }
        let cluster = v2::bootstrap(url, self.discovery_proxy.as_deref(), self.discovery_fallback, cfg).await?;
        cfg.initial_cluster = cluster;
        // etcd derives the member ids from the discovery URL instead of --initial-cluster-token.
        cfg.initial_cluster_token = url.to_string();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(discovery: Option<&str>, srv: Option<&str>, srv_name: Option<&str>) -> DiscoveryArgs {
        DiscoveryArgs {
            discovery: discovery.map(String::from),
            discovery_fallback: Fallback::Proxy,
            discovery_proxy: None,
            discovery_srv: srv.map(String::from),
            discovery_srv_name: srv_name.map(String::from),
        }
    }

    #[test]
    fn bootstrap_flags_conflict_as_in_etcd() {
        let url = Some("http://d/v2/keys/t");
        assert_eq!(
            args(url, None, None).check(true).unwrap_err(),
            CONFLICTING_BOOTSTRAP_FLAGS
        );
        assert_eq!(
            args(url, Some("example.com"), None).check(false).unwrap_err(),
            CONFLICTING_BOOTSTRAP_FLAGS
        );
        assert!(args(None, Some("example.com"), None).check(true).is_err());
        assert!(args(url, None, None).check(false).is_ok());
        // Empty values are unset, as Go's flags leave them.
        assert!(args(Some(""), Some(""), None).check(true).is_ok());
        // The service name alone is no bootstrap source (but still clears the default cluster).
        let name_only = args(None, None, Some("foo"));
        assert!(name_only.check(true).is_ok());
        assert!(name_only.clears_default_cluster());
        assert!(!args(Some(""), None, Some("")).clears_default_cluster());
    }
}
