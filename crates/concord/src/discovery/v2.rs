//! `--discovery`: etcd's v2 discovery protocol (etcd 3.4 and 3.5,
//! `etcdserver/api/v2discovery/discovery.go` over the `client/v2` keys API), against any etcd
//! v2 keys API: a public discovery service, or an etcd run with `--enable-v2`.
//!
//! The discovery URL is a directory of the keys API (`http://host:2379/v2/keys/discovery/<token>`)
//! whose `_config/size` holds the number of members to wait for. A new member:
//!
//! 1. reads the size and the directory; if `size` members registered before it and it is not
//!    among them, the cluster is full (`discovery: cluster is full`; see `--discovery-fallback`);
//! 2. registers itself, creating (`prevExist=false`) the key named by its member id in hex with
//!    the value `name=peerURL,...`, and waits to see its own key (a registered id means this
//!    member registered before, without keeping its data: `discovery: found duplicate id`);
//! 3. reads the directory again and watches it until `size` members are registered, oldest
//!    first (`createdIndex`), and takes the first `size` as the initial cluster
//!    (`discovery: found duplicate name` when two used one name).
//!
//! The member id is etcd's, computed from the advertised peer URLs with the discovery URL in
//! place of `--initial-cluster-token`; so are every other member's id and the cluster id, as
//! etcd's `PeerURLsMapAndToken` makes the discovery URL the cluster token.
//!
//! Failures are etcd's: an unreachable service, or a 5xx answer (etcd's client takes both for
//! "cluster unavailable"), is retried after 2, 4, ... 256 s and then every 256 s, without end; a
//! request (but not the wait for members) that takes more than 5 s fails the member; any other
//! answer is final. A missing `_config/size` is reported as the keys API's `100: Key not found`
//! error, not as `discovery: size key not found`: etcd's own check for that case never matches
//! (it looks for `*client.Error`, the client returns `client.Error`), so this is what etcd prints.

use std::time::Duration;

use concord_server::ServerConfig;
use serde::Deserialize;

use super::http::HttpClient;
use super::Fallback;

/// etcd's `client.DefaultRequestTimeout`: the limit of each discovery request but the watch.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Backoff doubles up to 2^8 s and stays there (etcd's `maxExpoentialRetries`).
const MAX_EXPONENTIAL_RETRIES: u32 = 8;

/// The v2 keys API error code for an existing key (`ErrorCodeNodeExist`).
const NODE_EXIST: u64 = 105;

/// What etcd's `client/v2` keys API reports, worded as it words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// No endpoint answered (unreachable, or a 5xx): `client.ClusterError`, which discovery
    /// retries.
    Unavailable(Vec<String>),
    /// An error answer of the keys API (`client.Error`).
    Etcd {
        /// The v2 error code (100: key not found, 105: key exists, ...).
        code: u64,
        /// Its message.
        message: String,
        /// What it is about.
        cause: String,
        /// The store index at the time.
        index: u64,
    },
    /// An answer that is not the keys API's JSON.
    InvalidJson,
    /// A successful answer without a body.
    EmptyBody,
    /// The request took longer than [`REQUEST_TIMEOUT`].
    Timeout,
    /// Anything else, as text.
    Other(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unavailable(errors) => {
                write!(f, "client: etcd cluster is unavailable or misconfigured")?;
                for (i, e) in errors.iter().enumerate() {
                    writeln!(f, "; error #{i}: {e}")?;
                }
                Ok(())
            }
            ClientError::Etcd {
                code,
                message,
                cause,
                index,
            } => write!(f, "{code}: {message} ({cause}) [{index}]"),
            ClientError::InvalidJson => write!(
                f,
                "client: response is invalid json. The endpoint is probably not valid etcd cluster endpoint"
            ),
            ClientError::EmptyBody => write!(f, "client: response body is empty"),
            ClientError::Timeout => write!(f, "context deadline exceeded"),
            ClientError::Other(e) => write!(f, "{e}"),
        }
    }
}

/// etcd's v2discovery errors (`ErrFullCluster` and its kind), or the client's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryError {
    /// `size` members registered before this one.
    FullCluster,
    /// This member's id is registered already.
    DuplicateId,
    /// Two of the first `size` members share a name.
    DuplicateName,
    /// A registered value is not `name=URL,...`.
    InvalidUrl,
    /// `_config/size` is not a number.
    BadSizeKey,
    /// The discovery URL answers, but not as a keys API.
    BadDiscoveryEndpoint,
    /// The keys API failed otherwise.
    Client(ClientError),
}

impl std::fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            DiscoveryError::FullCluster => "discovery: cluster is full",
            DiscoveryError::DuplicateId => "discovery: found duplicate id",
            DiscoveryError::DuplicateName => "discovery: found duplicate name",
            DiscoveryError::InvalidUrl => "discovery: invalid URL",
            DiscoveryError::BadSizeKey => "discovery: size key is bad",
            DiscoveryError::BadDiscoveryEndpoint => "discovery: bad discovery endpoint",
            DiscoveryError::Client(e) => return write!(f, "{e}"),
        };
        f.write_str(text)
    }
}

/// A keys API answer (`client.Response`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Response {
    /// The node it is about.
    pub node: Node,
    /// `X-Etcd-Index`: the store index when it was answered.
    #[serde(skip)]
    pub index: u64,
}

/// A node of the keys API (`client.Node`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Node {
    /// Its full key.
    pub key: String,
    /// Its value (a registration: `name=peerURL,...`).
    #[serde(default)]
    pub value: String,
    /// A directory's children.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// The index that created it: registrations are ordered by it.
    #[serde(rename = "createdIndex", default)]
    pub created_index: u64,
    /// The index of its last change: a watch goes on after it.
    #[serde(rename = "modifiedIndex", default)]
    pub modified_index: u64,
}

/// The error body of the keys API.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(rename = "errorCode")]
    code: u64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    cause: String,
    #[serde(default)]
    index: u64,
}

/// The keys API at one endpoint, as `client/v2`'s `httpKeysAPI` calls it.
struct KeysClient {
    http: HttpClient,
}

impl KeysClient {
    /// One exchange; `timeout` bounds it when given.
    async fn call(
        &self,
        method: http::Method,
        path_and_query: String,
        form: Option<String>,
        timeout: Option<Duration>,
    ) -> Result<Response, ClientError> {
        let exchange = self.http.send(method, &path_and_query, form);
        let reply = match timeout {
            Some(limit) => tokio::time::timeout(limit, exchange)
                .await
                .map_err(|_| ClientError::Timeout)?,
            None => exchange.await,
        }
        .map_err(|e| ClientError::Unavailable(vec![e]))?;
        if reply.status / 100 == 5 {
            let endpoint = self.http.base();
            let why = match reply.status {
                500 | 503 => format!("client: etcd member {endpoint} has no leader"),
                code => format!(
                    "client: etcd member {endpoint} returns server error [{}]",
                    http::StatusCode::from_u16(code)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("")
                ),
            };
            return Err(ClientError::Unavailable(vec![why]));
        }
        unmarshal(reply.status, reply.etcd_index.as_deref(), &reply.body)
    }

    /// `GET key` (not recursive, not sorted, not quorum).
    async fn get(&self, key: &str) -> Result<Response, ClientError> {
        let query = "quorum=false&recursive=false&sorted=false";
        self.call(http::Method::GET, format!("{key}?{query}"), None, Some(REQUEST_TIMEOUT))
            .await
    }

    /// `PUT key?prevExist=false` with `value`: creates the key, or fails with 105.
    async fn create(&self, key: &str, value: &str) -> Result<Response, ClientError> {
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("value", value)
            .finish();
        self.call(
            http::Method::PUT,
            format!("{key}?prevExist=false"),
            Some(form),
            Some(REQUEST_TIMEOUT),
        )
        .await
    }

    /// The next change under `key` from index `wait_index` on (0: the next one to happen), as
    /// `httpWatcher.Next` waits for it: without a time limit, asking again after an empty answer.
    async fn watch(&self, key: &str, wait_index: u64, recursive: bool) -> Result<Response, ClientError> {
        loop {
            let query = format!("recursive={recursive}&wait=true&waitIndex={wait_index}");
            match self.call(http::Method::GET, format!("{key}?{query}"), None, None).await {
                Err(ClientError::EmptyBody) => continue,
                other => return other,
            }
        }
    }
}

/// `client/v2`'s `unmarshalHTTPResponse`.
fn unmarshal(status: u16, etcd_index: Option<&str>, body: &[u8]) -> Result<Response, ClientError> {
    match status {
        200 | 201 => {
            if body.is_empty() {
                return Err(ClientError::EmptyBody);
            }
            let mut response: Response = serde_json::from_slice(body).map_err(|_| ClientError::InvalidJson)?;
            if let Some(index) = etcd_index.filter(|i| !i.is_empty()) {
                response.index = index
                    .parse()
                    .map_err(|e| ClientError::Other(format!("strconv.ParseUint: parsing {index:?}: {e}")))?;
            }
            Ok(response)
        }
        _ => {
            let error: ErrorBody = serde_json::from_slice(body).map_err(|_| ClientError::InvalidJson)?;
            Err(ClientError::Etcd {
                code: error.code,
                message: error.message,
                cause: error.cause,
                index: error.index,
            })
        }
    }
}

/// Go's `path.Join` of a key and one more element: one slash between, `.` and `..` resolved.
fn join(base: &str, element: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in base.split('/').chain(element.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The last element of a key (Go's `path.Base`).
fn base_name(key: &str) -> &str {
    key.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// A watch's `waitIndex` after index `after` (`WatcherOptions.AfterIndex`; 0: none).
fn wait_after(after: u64) -> u64 {
    if after > 0 {
        after + 1
    } else {
        0
    }
}

/// The registrations of a directory listing, oldest first, without `_config`; and whether
/// the cluster is full for `self_name`: `size` others registered before it (etcd's
/// `checkCluster`, which then keeps the first `size`).
fn registrations(dir: &Node, self_name: &str, size: u64) -> (Vec<Node>, bool) {
    let mut nodes: Vec<Node> = dir
        .nodes
        .iter()
        .filter(|n| base_name(&n.key) != "_config")
        .cloned()
        .collect();
    nodes.sort_by_key(|n| n.created_index);
    for (i, node) in nodes.iter().enumerate() {
        if base_name(&node.key) == self_name {
            break;
        }
        // Go's `uint64(i) >= size-1`, which never holds for a size of 0 (it wraps).
        if size.checked_sub(1).is_some_and(|last| i as u64 >= last) {
            nodes.truncate(size as usize);
            return (nodes, true);
        }
    }
    (nodes, false)
}

/// Parses `name=url,...` as etcd's `types.NewURLsMap`: names with their URLs (a name may
/// repeat), each URL `http(s)://host:port` without a path, or `unix(s)://...`.
fn urls_map(text: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut map: Vec<(String, Vec<String>)> = Vec::new();
    for entry in text.split(',').filter(|e| !e.is_empty()) {
        let (name, url) = entry.split_once('=').unwrap_or((entry, ""));
        let url = url.trim();
        let parsed = url::Url::parse(url).map_err(|e| format!("parse {url:?}: {e}"))?;
        match parsed.scheme() {
            "http" | "https" => {
                // Go's net.SplitHostPort on the URL's host (url drops a default port, so look
                // at the text).
                let authority = url.split_once("://").map_or("", |(_, rest)| rest);
                let authority = authority.split(['/', '?', '#']).next().unwrap_or("");
                let has_port = authority
                    .rsplit_once(':')
                    .is_some_and(|(host, _)| !host.ends_with(['[']))
                    && !authority.ends_with(']');
                if !has_port {
                    return Err(format!("URL address does not have the form \"host:port\": {url}"));
                }
                if !matches!(parsed.path(), "" | "/") || url.trim_end_matches('/') != url {
                    return Err(format!("URL must not contain a path: {url}"));
                }
            }
            "unix" | "unixs" => {}
            _ => return Err(format!("URL scheme must be http, https, unix, or unixs: {url}")),
        }
        match map.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => map.push((name.to_string(), vec![url.to_string()])),
        }
    }
    Ok(map)
}

/// etcd's `types.URLsMap.String`: `name=url` pairs, sorted.
fn urls_map_string(map: &[(String, Vec<String>)]) -> String {
    let mut pairs: Vec<String> = map
        .iter()
        .flat_map(|(name, urls)| urls.iter().map(move |u| format!("{name}={u}")))
        .collect();
    pairs.sort();
    pairs.join(",")
}

/// etcd's `nodesToCluster`: the registrations as one initial cluster, which must hold `size`
/// distinct names.
fn nodes_to_cluster(nodes: &[Node], size: u64) -> Result<String, DiscoveryError> {
    let cluster = nodes.iter().map(|n| n.value.as_str()).collect::<Vec<_>>().join(",");
    let map = urls_map(&cluster).map_err(|_| DiscoveryError::InvalidUrl)?;
    if map.len() as u64 != size {
        return Err(DiscoveryError::DuplicateName);
    }
    Ok(cluster)
}

/// One member's run of the protocol against one discovery URL.
struct Discovery {
    client: KeysClient,
    /// The token directory: the discovery URL's path.
    cluster: String,
    /// This member's id.
    id: u64,
    retries: u32,
}

impl Discovery {
    fn self_key(&self) -> String {
        join(&self.cluster, &format!("{:x}", self.id))
    }

    /// etcd's `joinCluster`.
    async fn join_cluster(&mut self, config: &str) -> Result<String, DiscoveryError> {
        // Fast path: a full cluster is refused before registering.
        self.check_cluster().await?;
        self.create_self(config).await?;
        let (nodes, size, index) = self.check_cluster().await?;
        let all = self.wait_nodes(nodes, size, index).await?;
        nodes_to_cluster(&all, size)
    }

    async fn create_self(&self, contents: &str) -> Result<(), DiscoveryError> {
        let key = self.self_key();
        let created = match self.client.create(&key, contents).await {
            Ok(r) => r,
            Err(ClientError::Etcd { code: NODE_EXIST, .. }) => return Err(DiscoveryError::DuplicateId),
            Err(e) => return Err(DiscoveryError::Client(e)),
        };
        // Ensure the registration is visible on the server answering.
        self.client
            .watch(&key, wait_after(created.node.created_index.saturating_sub(1)), false)
            .await
            .map_err(DiscoveryError::Client)?;
        Ok(())
    }

    /// etcd's `checkCluster` with its retries: the registrations, the size and the index the
    /// listing was read at; [`DiscoveryError::FullCluster`] if this member is not among the
    /// first `size`.
    async fn check_cluster(&mut self) -> Result<(Vec<Node>, u64, u64), DiscoveryError> {
        loop {
            let size_key = join(&join(&self.cluster, "_config"), "size");
            let size = match self.client.get(&size_key).await {
                Ok(r) => r.node.value,
                Err(ClientError::InvalidJson) => return Err(DiscoveryError::BadDiscoveryEndpoint),
                Err(ClientError::Unavailable(errors)) => {
                    self.retry_after_failure(&size_key, &errors, "cluster status check")
                        .await;
                    continue;
                }
                Err(e) => return Err(DiscoveryError::Client(e)),
            };
            let size: u64 = size.parse().map_err(|_| DiscoveryError::BadSizeKey)?;
            let listing = match self.client.get(&self.cluster).await {
                Ok(r) => r,
                Err(ClientError::Unavailable(errors)) => {
                    let path = self.cluster.clone();
                    self.retry_after_failure(&path, &errors, "cluster status check").await;
                    continue;
                }
                Err(e) => return Err(DiscoveryError::Client(e)),
            };
            let me = format!("{:x}", self.id);
            let (nodes, full) = registrations(&listing.node, &me, size);
            if full {
                return Err(DiscoveryError::FullCluster);
            }
            return Ok((nodes, size, listing.index));
        }
    }

    async fn retry_after_failure(&mut self, path: &str, errors: &[String], step: &str) {
        tracing::warn!(
            discovery_url = %self.client.http.base(),
            path = %path,
            err_detail = %errors.join("; "),
            "failed to get from discovery server"
        );
        self.backoff(step).await;
    }

    /// etcd's `logAndBackoffForRetry`: 2^retries seconds, at most 2^8.
    async fn backoff(&mut self, step: &str) {
        self.retries += 1;
        let wait = Duration::from_secs(1 << self.retries.min(MAX_EXPONENTIAL_RETRIES));
        tracing::info!(
            url = %self.client.http.base(),
            reason = %step,
            backoff = ?wait,
            "retry connecting to discovery service"
        );
        tokio::time::sleep(wait).await;
    }

    /// etcd's `waitNodes`: watches the directory from `index` on until `size` are registered.
    async fn wait_nodes(
        &mut self,
        mut nodes: Vec<Node>,
        mut size: u64,
        mut index: u64,
    ) -> Result<Vec<Node>, DiscoveryError> {
        let me = format!("{:x}", self.id);
        'retry: loop {
            nodes.truncate(size as usize);
            let mut wait_index = wait_after(index);
            for node in &nodes {
                if base_name(&node.key) == me {
                    tracing::info!(discovery_url = %self.client.http.base(), self = %me, "found self from discovery server");
                } else {
                    tracing::info!(discovery_url = %self.client.http.base(), peer = %base_name(&node.key),
                        "found peer from discovery server");
                }
            }
            let mut all = nodes.clone();
            while (all.len() as u64) < size {
                tracing::info!(
                    discovery_url = %self.client.http.base(),
                    found_peers = all.len(),
                    needed_peers = size - all.len() as u64,
                    "found peers from discovery server; waiting for more"
                );
                match self.client.watch(&self.cluster, wait_index, true).await {
                    Ok(event) => {
                        tracing::info!(discovery_url = %self.client.http.base(), peer = %base_name(&event.node.key),
                            "found peer from discovery server");
                        wait_index = event.node.modified_index + 1;
                        all.push(event.node);
                    }
                    Err(ClientError::Unavailable(errors)) => {
                        tracing::warn!(discovery_url = %self.client.http.base(), err_detail = %errors.join("; "),
                            "error while waiting for peers");
                        self.backoff("waiting for other nodes").await;
                        (nodes, size, index) = self.check_cluster().await?;
                        continue 'retry;
                    }
                    Err(e) => return Err(DiscoveryError::Client(e)),
                }
            }
            tracing::info!(discovery_url = %self.client.http.base(), found_peers = all.len(),
                "found all needed peers from discovery server");
            return Ok(all);
        }
    }
}

/// etcd's `newProxyFunc`: the proxy URL, with `http://` put in front of an address without a
/// scheme.
fn proxy_url(proxy: &str) -> Result<Option<url::Url>, String> {
    if proxy.is_empty() {
        return Ok(None);
    }
    let parsed = url::Url::parse(proxy)
        .ok()
        .filter(|u| u.scheme().starts_with("http") && u.host_str().is_some());
    let parsed = match parsed {
        Some(u) => u,
        None => {
            url::Url::parse(&format!("http://{proxy}")).map_err(|e| format!("invalid proxy address {proxy:?}: {e}"))?
        }
    };
    tracing::info!(proxy_url = %parsed, "running proxy with discovery");
    Ok(Some(parsed))
}

/// Runs `--discovery` for a new member with `cfg`'s name and advertised peer URLs, and
/// returns its initial cluster; on failure, logs etcd's advice and returns etcd's error
/// (`failed to join discovery cluster (...)`), or explains that the `proxy` fallback of a full
/// cluster is not available.
pub async fn bootstrap(
    durl: &str,
    proxy: Option<&str>,
    fallback: Fallback,
    cfg: &ServerConfig,
) -> Result<String, String> {
    let id = concord_server::membership::compute_member_id(&cfg.initial_advertise_peer_urls, durl);
    let mut advertised = cfg.initial_advertise_peer_urls.clone();
    advertised.sort();
    let config = urls_map_string(&[(cfg.name.clone(), advertised)]);
    let endpoint = url::Url::parse(durl).map_err(|e| format!("failed to join discovery cluster ({e})"))?;
    let proxy_given = proxy.filter(|p| !p.is_empty());
    let proxy = proxy_url(proxy_given.unwrap_or("")).map_err(|e| format!("failed to join discovery cluster ({e})"))?;
    let mut discovery = Discovery {
        client: KeysClient {
            http: HttpClient::new(&endpoint, proxy.as_ref())
                .map_err(|e| format!("failed to join discovery cluster ({e})"))?,
        },
        cluster: endpoint.path().to_string(),
        id,
        retries: 0,
    };
    match discovery.join_cluster(&config).await {
        Ok(cluster) => {
            let map = urls_map(&cluster)?;
            let mut urls: Vec<&String> = map.iter().flat_map(|(_, u)| u).collect();
            let count = urls.len();
            urls.sort();
            urls.dedup();
            if urls.len() != count {
                return Err(format!("discovery cluster {} has duplicate url", urls_map_string(&map)));
            }
            Ok(cluster)
        }
        Err(e) => Err(explain(e, fallback, durl, &cfg.name)),
    }
}

/// What etcdmain prints for a failed discovery, and the error to exit with.
fn explain(error: DiscoveryError, fallback: Fallback, durl: &str, name: &str) -> String {
    let message = format!("failed to join discovery cluster ({error})");
    match error {
        DiscoveryError::FullCluster if fallback == Fallback::Proxy => {
            tracing::warn!(fallback_proxy = "proxy", error = %message, "discovery cluster is full, falling back to proxy");
            return format!(
                "{message}: --discovery-fallback=proxy (etcd's default) would run etcd's v2 proxy, which Concord \
                 does not have; use --discovery-fallback=exit, or a new discovery token"
            );
        }
        DiscoveryError::DuplicateId => {
            tracing::warn!(name = %name, discovery_token = %durl, "member has been registered with discovery service");
            tracing::warn!("but could not find valid cluster configuration");
            tracing::warn!("check data dir if previous bootstrap succeeded");
            tracing::warn!("or use a new discovery token if previous bootstrap failed");
        }
        DiscoveryError::DuplicateName => {
            tracing::warn!(discovery_token = %durl, "member with duplicated name has already been registered");
            tracing::warn!("cURL the discovery token URL for details");
            tracing::warn!("do not reuse discovery token; generate a new one to bootstrap a cluster");
        }
        _ => {
            tracing::warn!(discovery_token = %durl, error = %message, "failed to bootstrap; discovery token was already used");
            tracing::warn!("do not reuse discovery token; generate a new one to bootstrap a cluster");
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(key: &str, value: &str, created: u64) -> Node {
        Node {
            key: key.into(),
            value: value.into(),
            created_index: created,
            modified_index: created,
            ..Node::default()
        }
    }

    fn listing(nodes: Vec<Node>) -> Node {
        Node {
            key: "/discovery/t".into(),
            nodes,
            ..Node::default()
        }
    }

    #[test]
    fn a_cluster_is_full_once_size_others_registered_first() {
        let dir = listing(vec![
            node("/discovery/t/c", "c=http://c:1", 9),
            node("/discovery/t/_config", "", 2),
            node("/discovery/t/a", "a=http://a:1", 5),
            node("/discovery/t/b", "b=http://b:1", 7),
        ]);
        // Oldest first, without _config.
        let (nodes, full) = registrations(&dir, "b", 3);
        assert!(!full);
        let keys: Vec<&str> = nodes.iter().map(|n| base_name(&n.key)).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        // A newcomer when 3 of 3 registered; and when 2 of 2 did, the first 2 are kept.
        assert!(registrations(&dir, "d", 3).1);
        let (first, full) = registrations(&dir, "d", 2);
        assert!(full);
        assert_eq!(first.len(), 2);
        // One of the first `size` is not refused, a later one is.
        assert!(!registrations(&dir, "a", 1).1);
        assert!(registrations(&dir, "b", 1).1);
        // Room left, and Go's size 0 (which wraps).
        assert!(!registrations(&dir, "d", 4).1);
        assert!(!registrations(&dir, "d", 0).1);
    }

    #[test]
    fn registrations_become_the_initial_cluster() {
        let nodes = [
            node("/d/t/1", "a=http://a:1", 5),
            node("/d/t/2", "b=http://b:1,b=http://b2:1", 6),
        ];
        assert_eq!(
            nodes_to_cluster(&nodes, 2).unwrap(),
            "a=http://a:1,b=http://b:1,b=http://b2:1"
        );
        let twice = [node("/d/t/1", "a=http://a:1", 5), node("/d/t/2", "a=http://b:1", 6)];
        assert_eq!(nodes_to_cluster(&twice, 2), Err(DiscoveryError::DuplicateName));
        let bad = [node("/d/t/1", "a=ftp://a:1", 5)];
        assert_eq!(nodes_to_cluster(&bad, 1), Err(DiscoveryError::InvalidUrl));
        assert!(urls_map("a=http://a").is_err(), "no port");
        assert!(urls_map("a=http://[::1]").is_err(), "no port");
        assert!(urls_map("a=http://a:80,b=http://[::1]:2380").is_ok());
        assert!(urls_map("a=http://a:1/x").is_err(), "a path");
        assert_eq!(
            urls_map_string(&[("n".into(), vec!["http://b:2".into(), "http://a:1".into()])]),
            "n=http://a:1,n=http://b:2"
        );
    }

    #[test]
    fn keys_api_answers_and_errors_read_as_etcds_client_reads_them() {
        let ok =
            br#"{"action":"get","node":{"key":"/d/t/_config/size","value":"3","modifiedIndex":4,"createdIndex":4}}"#;
        let r = unmarshal(200, Some("12"), ok).unwrap();
        assert_eq!((r.node.value.as_str(), r.index), ("3", 12));
        let missing = br#"{"errorCode":100,"message":"Key not found","cause":"/d/t/_config","index":4}"#;
        let err = unmarshal(404, None, missing).unwrap_err();
        assert_eq!(err.to_string(), "100: Key not found (/d/t/_config) [4]");
        assert_eq!(
            unmarshal(404, None, b"404 page not found"),
            Err(ClientError::InvalidJson)
        );
        assert_eq!(unmarshal(200, None, b""), Err(ClientError::EmptyBody));
        assert_eq!(
            ClientError::Unavailable(vec!["dial tcp 1.2.3.4:1: refused".into()]).to_string(),
            "client: etcd cluster is unavailable or misconfigured; error #0: dial tcp 1.2.3.4:1: refused\n"
        );
    }

    #[test]
    fn keys_and_proxies_as_go_writes_them() {
        assert_eq!(join("/v2/keys/discovery/t", "_config"), "/v2/keys/discovery/t/_config");
        assert_eq!(join("/v2/keys/discovery/t/", "abc"), "/v2/keys/discovery/t/abc");
        assert_eq!(base_name("/discovery/t/_config"), "_config");
        assert_eq!(wait_after(0), 0);
        assert_eq!(wait_after(7), 8);
        assert_eq!(proxy_url("").unwrap(), None);
        assert_eq!(
            proxy_url("127.0.0.1:3128").unwrap().unwrap().as_str(),
            "http://127.0.0.1:3128/"
        );
        assert_eq!(
            proxy_url("http://proxy.example.com:8080").unwrap().unwrap().as_str(),
            "http://proxy.example.com:8080/"
        );
    }
}
