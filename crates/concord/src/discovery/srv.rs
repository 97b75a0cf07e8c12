//! `--discovery-srv`: the initial cluster from DNS SRV records, as etcd 3.5 builds it
//! (`embed.Config.GetDNSClusterNames` over `client/pkg/srv.GetCluster`).
//!
//! Two services are looked up in the domain, `etcd-server-ssl` (peer URLs `https://`) and
//! `etcd-server` (`http://`), each with `--discovery-srv-name` appended after a dash
//! (`_etcd-server-ssl-<name>._tcp.<domain>`); the entries of both are combined, and discovery
//! fails only when neither gave any. Each SRV target is resolved (A/AAAA, IPv4 first, as Go's
//! `net.ResolveTCPAddr`) and compared with this member's resolved `--initial-advertise-peer-urls`:
//! a match is this member and takes its `--name`; any other target is a member named by a
//! counter ("0", "1", ... per service, as etcd names them until they publish their own names).
//! A match whose scheme differs from the service's is refused; targets that do not resolve are
//! skipped. The URLs keep the SRV target's host name (its trailing dot dropped), so every
//! member derives the same member ids from the same records.
//!
//! etcd 3.4 differs only by a bug: it drops the `etcd-server` entries whenever that look-up
//! succeeds and fails whenever `etcd-server-ssl` has none, so 3.4 bootstraps from
//! `_etcd-server-ssl` alone; 3.5 (followed here) combines both. `_etcd-client(-ssl)._tcp` records
//! are not read by an etcd member, only by etcdctl, `etcd gateway` and `etcd grpc-proxy`.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;

use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

/// One SRV record: where a service runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvTarget {
    /// The target host name, as the record has it (with its trailing dot).
    pub target: String,
    /// The port.
    pub port: u16,
}

/// The DNS look-ups SRV discovery needs, so that its rules can be tested without a server.
pub trait Dns {
    /// The records of `name` (`_service._tcp.domain`), in RFC 2782 order.
    fn srv(&self, name: &str) -> impl Future<Output = Result<Vec<SrvTarget>, String>>;
    /// `host:port` resolved to one address, IPv4 first, as Go's `net.ResolveTCPAddr("tcp", _)`.
    fn resolve(&self, host_port: &str) -> impl Future<Output = Result<SocketAddr, String>>;
}

/// The system's resolvers: SRV records through hickory with `/etc/resolv.conf`'s name servers
/// and options, addresses through `getaddrinfo` (so `/etc/hosts` counts, and a name resolves
/// here as it will when the member dials its peers).
pub struct SystemDns {
    resolver: TokioResolver,
}

impl SystemDns {
    /// A resolver configured from `/etc/resolv.conf`.
    pub fn new() -> Result<SystemDns, String> {
        let resolver = TokioResolver::builder_tokio()
            .and_then(|b| b.build())
            .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?;
        Ok(SystemDns { resolver })
    }
}

impl Dns for SystemDns {
    async fn srv(&self, name: &str) -> Result<Vec<SrvTarget>, String> {
        let lookup = match self.resolver.srv_lookup(name).await {
            Ok(lookup) => lookup,
            // Go's resolver says "no such host" for NXDOMAIN and for a name without records.
            Err(e) if e.is_no_records_found() => return Err(format!("lookup {name}: no such host")),
            Err(e) => return Err(format!("lookup {name}: {e}")),
        };
        let mut records: Vec<(u16, u16, SrvTarget)> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some((
                    srv.priority,
                    srv.weight,
                    SrvTarget {
                        target: srv.target.to_string(),
                        port: srv.port,
                    },
                )),
                _ => None,
            })
            .collect();
        // Lowest priority first; within one, heavier first. Go shuffles by weight instead; the
        // order only decides which placeholder name another member gets until it publishes.
        records.sort_by_key(|(priority, weight, _)| (*priority, std::cmp::Reverse(*weight)));
        Ok(records.into_iter().map(|(_, _, t)| t).collect())
    }

    async fn resolve(&self, host_port: &str) -> Result<SocketAddr, String> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(host_port)
            .await
            .map_err(|e| format!("lookup {host_port}: {e}"))?
            .collect();
        pick_address(host_port, &addrs).ok_or_else(|| format!("lookup {host_port}: no such host"))
    }
}

/// Go's choice among a name's addresses for `"tcp"`: the first IPv6 one when the address was
/// written in brackets, else the first IPv4 one; else the first.
fn pick_address(host_port: &str, addrs: &[SocketAddr]) -> Option<SocketAddr> {
    let want_v6 = host_port.contains('[');
    addrs
        .iter()
        .find(|a| a.is_ipv6() == want_v6)
        .or_else(|| addrs.first())
        .copied()
}

/// The SRV service name etcd queries: `base`, then `-suffix` when a service name is given.
pub fn service(base: &str, suffix: &str) -> String {
    if suffix.is_empty() {
        base.to_string()
    } else {
        format!("{base}-{suffix}")
    }
}

/// etcd's `PeerURLsMapAndToken` for `--discovery-srv`: the `name=url` entries of the initial
/// cluster from both services of `domain`, which must include this member (`name`, advertising
/// `advertised`).
pub async fn initial_cluster(
    dns: &impl Dns,
    domain: &str,
    suffix: &str,
    name: &str,
    advertised: &[String],
) -> Result<Vec<String>, String> {
    let ssl = service("etcd-server-ssl", suffix);
    let plain = service("etcd-server", suffix);
    let (mut nodes, ssl_err) = match get_cluster(dns, "https", &ssl, name, domain, advertised).await {
        Ok(nodes) => (nodes, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    tracing::info!(service = %ssl, discovery_srv = %domain, found_cluster = ?nodes, error = ?ssl_err,
        "get cluster for etcd-server-ssl SRV");
    let plain_err = match get_cluster(dns, "http", &plain, name, domain, advertised).await {
        Ok(found) => {
            nodes.extend(found);
            None
        }
        Err(e) => Some(e),
    };
    tracing::info!(service = %plain, discovery_srv = %domain, found_cluster = ?nodes, error = ?plain_err,
        "get cluster for etcd-server SRV");
    let errors: Vec<String> = ssl_err.into_iter().chain(plain_err).collect();
    if !errors.is_empty() {
        tracing::warn!(error = %errors.join("; "), "failed to resolve during SRV discovery");
    }
    if nodes.is_empty() {
        return Err(if errors.is_empty() {
            format!("couldn't find local name {name:?} in the initial cluster configuration")
        } else {
            errors.join("; ")
        });
    }
    for node in &nodes {
        tracing::info!(node = %node, "got bootstrap from DNS for etcd-server");
    }
    if !nodes.iter().any(|n| n.split_once('=').is_some_and(|(n, _)| n == name)) {
        return Err(format!("cannot find local etcd member {name:?} in SRV records"));
    }
    Ok(nodes)
}

/// etcd's `srv.GetCluster`: the entries of one service (`_service._tcp.domain`), its URLs
/// with `scheme`.
async fn get_cluster(
    dns: &impl Dns,
    scheme: &str,
    service: &str,
    name: &str,
    domain: &str,
    advertised: &[String],
) -> Result<Vec<String>, String> {
    let fail = |e: String| format!("error querying DNS SRV records for _{service} {e}");
    // This member's advertised peer URLs, by resolved address.
    let mut mine: HashMap<SocketAddr, &str> = HashMap::new();
    for url in advertised {
        let host_port = host_port(url).map_err(fail)?;
        mine.insert(dns.resolve(&host_port).await.map_err(fail)?, url);
    }
    let records = dns.srv(&format!("_{service}._tcp.{domain}")).await.map_err(fail)?;
    let mut nodes = Vec::new();
    let mut last_err = None;
    let mut placeholder = 0;
    for record in records {
        let port = record.port;
        let resolved = match dns.resolve(&join_host_port(&record.target, port)).await {
            Ok(addr) => addr,
            Err(e) => {
                last_err = Some(e);
                continue;
            }
        };
        let url_host = join_host_port(record.target.trim_end_matches('.'), port);
        let url = format!("{scheme}://{url_host}");
        match mine.get(&resolved) {
            Some(own) if !own.starts_with(&format!("{scheme}://")) => {
                last_err = Some(format!(
                    "bootstrap at {url} from DNS for {service} has scheme mismatch with expected peer {own}"
                ));
            }
            Some(_) => nodes.push(format!("{name}={url}")),
            None => {
                nodes.push(format!("{placeholder}={url}"));
                placeholder += 1;
            }
        }
    }
    match (nodes.is_empty(), last_err) {
        (true, Some(e)) => Err(fail(e)),
        _ => Ok(nodes),
    }
}

/// The `host:port` of a URL, as Go's `url.URL.Host` has it.
fn host_port(url: &str) -> Result<String, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("parse {url:?}: {e}"))?;
    let host = parsed.host_str().ok_or_else(|| format!("{url:?} has no host"))?;
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| format!("{url:?} has no port"))?;
    // host_str keeps an IPv6 address in brackets.
    Ok(format!("{host}:{port}"))
}

/// Go's `net.JoinHostPort`: brackets around a host with a colon.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DNS from tables: SRV names to targets, `host:port` to addresses.
    struct FakeDns {
        srv: Vec<(&'static str, Vec<(&'static str, u16)>)>,
        hosts: Vec<(&'static str, &'static str)>,
    }

    impl Dns for FakeDns {
        async fn srv(&self, name: &str) -> Result<Vec<SrvTarget>, String> {
            self.srv
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, targets)| {
                    targets
                        .iter()
                        .map(|(t, port)| SrvTarget {
                            target: t.to_string(),
                            port: *port,
                        })
                        .collect()
                })
                .ok_or_else(|| format!("lookup {name}: no such host"))
        }

        async fn resolve(&self, host_port: &str) -> Result<SocketAddr, String> {
            let (host, port) = host_port.rsplit_once(':').unwrap();
            let host = host.trim_end_matches('.');
            if let Ok(ip) = host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
                return Ok(SocketAddr::new(ip, port.parse().unwrap()));
            }
            self.hosts
                .iter()
                .find(|(h, _)| *h == host)
                .map(|(_, ip)| SocketAddr::new(ip.parse().unwrap(), port.parse().unwrap()))
                .ok_or_else(|| format!("lookup {host}: no such host"))
        }
    }

    fn hosts() -> Vec<(&'static str, &'static str)> {
        vec![
            ("infra0.example.com", "10.0.1.10"),
            ("infra1.example.com", "10.0.1.11"),
            ("infra2.example.com", "10.0.1.12"),
        ]
    }

    fn three(service: &'static str) -> (&'static str, Vec<(&'static str, u16)>) {
        (
            service,
            vec![
                ("infra0.example.com.", 2380),
                ("infra1.example.com.", 2380),
                ("infra2.example.com.", 2380),
            ],
        )
    }

    async fn run(dns: &FakeDns, suffix: &str, name: &str, advertised: &str) -> Result<Vec<String>, String> {
        initial_cluster(dns, "example.com", suffix, name, &[advertised.to_string()]).await
    }

    #[tokio::test]
    async fn the_member_is_found_by_resolved_address() {
        let dns = FakeDns {
            srv: vec![three("_etcd-server._tcp.example.com")],
            hosts: hosts(),
        };
        // The documented forms: advertising the SRV target's name, or its address.
        for advertised in ["http://infra1.example.com:2380", "http://10.0.1.11:2380"] {
            assert_eq!(
                run(&dns, "", "infra1", advertised).await.unwrap(),
                [
                    "0=http://infra0.example.com:2380",
                    "infra1=http://infra1.example.com:2380",
                    "1=http://infra2.example.com:2380",
                ]
            );
        }
        // Same address, another port: not this member.
        assert_eq!(
            run(&dns, "", "infra1", "http://10.0.1.11:2381").await.unwrap_err(),
            "cannot find local etcd member \"infra1\" in SRV records"
        );
    }

    #[tokio::test]
    async fn both_services_combine_and_https_comes_from_the_ssl_one() {
        let dns = FakeDns {
            srv: vec![
                (
                    "_etcd-server-ssl-prod._tcp.example.com",
                    vec![("infra0.example.com.", 2380)],
                ),
                (
                    "_etcd-server-prod._tcp.example.com",
                    vec![("infra1.example.com.", 2380)],
                ),
            ],
            hosts: hosts(),
        };
        assert_eq!(
            run(&dns, "prod", "infra0", "https://10.0.1.10:2380").await.unwrap(),
            [
                "infra0=https://infra0.example.com:2380",
                "0=http://infra1.example.com:2380"
            ]
        );
        // Without the suffix, the records of the named service are not read.
        assert!(run(&dns, "", "infra0", "https://10.0.1.10:2380").await.is_err());
    }

    #[tokio::test]
    async fn scheme_mismatch_and_unresolvable_targets() {
        let dns = FakeDns {
            srv: vec![three("_etcd-server-ssl._tcp.example.com")],
            hosts: hosts(),
        };
        // This member advertises http but is found in the https service: its entry is refused,
        // the others stay, and it is then missing.
        assert_eq!(
            run(&dns, "", "infra0", "http://10.0.1.10:2380").await.unwrap_err(),
            "cannot find local etcd member \"infra0\" in SRV records"
        );
        let only_me = FakeDns {
            srv: vec![("_etcd-server-ssl._tcp.example.com", vec![("infra0.example.com.", 2380)])],
            hosts: hosts(),
        };
        assert_eq!(
            run(&only_me, "", "infra0", "http://10.0.1.10:2380").await.unwrap_err(),
            "error querying DNS SRV records for _etcd-server-ssl bootstrap at https://infra0.example.com:2380 \
             from DNS for etcd-server-ssl has scheme mismatch with expected peer http://10.0.1.10:2380; \
             error querying DNS SRV records for _etcd-server lookup _etcd-server._tcp.example.com: no such host"
        );
        let dangling = FakeDns {
            srv: vec![(
                "_etcd-server._tcp.example.com",
                vec![("gone.example.com.", 2380), ("infra0.example.com.", 2380)],
            )],
            hosts: hosts(),
        };
        assert_eq!(
            run(&dangling, "", "infra0", "http://infra0.example.com:2380")
                .await
                .unwrap(),
            ["infra0=http://infra0.example.com:2380"]
        );
    }

    #[tokio::test]
    async fn no_records_at_all() {
        let dns = FakeDns {
            srv: vec![],
            hosts: hosts(),
        };
        assert_eq!(
            run(&dns, "", "infra0", "http://10.0.1.10:2380").await.unwrap_err(),
            "error querying DNS SRV records for _etcd-server-ssl lookup _etcd-server-ssl._tcp.example.com: \
             no such host; error querying DNS SRV records for _etcd-server lookup \
             _etcd-server._tcp.example.com: no such host"
        );
        // An advertised URL that does not resolve fails both services.
        let err = run(&dns, "", "infra0", "http://nowhere.example.com:2380")
            .await
            .unwrap_err();
        assert!(
            err.starts_with("error querying DNS SRV records for _etcd-server-ssl lookup nowhere"),
            "{err}"
        );
    }

    #[test]
    fn names_and_addresses_as_go_writes_them() {
        assert_eq!(service("etcd-server-ssl", ""), "etcd-server-ssl");
        assert_eq!(service("etcd-server", "foo"), "etcd-server-foo");
        assert_eq!(join_host_port("::1", 2380), "[::1]:2380");
        assert_eq!(join_host_port("a.example.com", 2380), "a.example.com:2380");
        assert_eq!(host_port("http://[::1]:2380").unwrap(), "[::1]:2380");
        assert_eq!(host_port("https://a.example.com").unwrap(), "a.example.com:443");
        let v4: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        assert_eq!(pick_address("a:1", &[v6, v4]), Some(v4));
        assert_eq!(pick_address("[::1]:1", &[v4, v6]), Some(v6));
        assert_eq!(pick_address("a:1", &[v6]), Some(v6));
    }
}
