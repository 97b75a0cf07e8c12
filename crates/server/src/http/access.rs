//! etcd's access control of the HTTP requests on client URLs: `--host-whitelist` and `--cors`.
//!
//! etcd runs every HTTP request of a client listener (its JSON gateway, `/health`, `/metrics`,
//! `/version`, anything else) through one check before its handlers (`accessController` in its
//! `embed/serve.go`), and Concord does the same in [`guard`]:
//!
//! 1. On a plaintext listener, a request whose host (the `Host` header, or the URL's authority,
//!    without the port) is not in `--host-whitelist` is answered `421 Misdirected Request` with
//!    etcd's explanation, and logged. This stops DNS rebinding (CVE-2018-5702): a web page whose
//!    name resolves to 127.0.0.1 reaching a member through the browser. Over TLS any host is
//!    accepted, as with etcd.
//! 2. Every other answer gets etcd's CORS headers: `Access-Control-Allow-Origin: *` when `--cors`
//!    allows every origin (its default), else the request's `Origin` when the list names it.
//! 3. An `OPTIONS` request (a browser's preflight) is answered `200` with no body.
//!
//! gRPC calls are not HTTP requests in this sense and pass untouched: etcd hands HTTP/2 to its
//! gRPC server before the check on plaintext listeners (where a whitelist applies), and gRPC
//! clients ignore CORS headers.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;

/// What the HTTP requests of client URLs are checked against.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessControl {
    /// `--host-whitelist`: the hosts plaintext HTTP requests may name.
    pub host_whitelist: Allowed,
    /// `--cors`: the origins answers name in `Access-Control-Allow-Origin`.
    pub cors: Allowed,
}

/// A list of accepted values, where `*` accepts all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Allowed {
    /// Every value (`*`, and etcd's defaults for both flags).
    #[default]
    Any,
    /// Only these, compared exactly.
    Only(BTreeSet<String>),
}

impl Allowed {
    /// Whether `value` is accepted.
    pub fn allows(&self, value: &str) -> bool {
        match self {
            Allowed::Any => true,
            Allowed::Only(values) => values.contains(value),
        }
    }

    /// A list holding `*` accepts everything, as etcd's `AccessController` reads it.
    fn of(values: BTreeSet<String>) -> Allowed {
        if values.contains("*") {
            Allowed::Any
        } else {
            Allowed::Only(values)
        }
    }
}

impl AccessControl {
    /// `--host-whitelist`: comma-separated hosts, each compared exactly (case included) with a
    /// request's host; `*` or an empty value allows every host (as etcd's help says).
    pub fn parse_host_whitelist(flag: &str) -> Allowed {
        if flag.is_empty() {
            return Allowed::Any;
        }
        Allowed::of(flag.split(',').map(str::to_string).collect())
    }

    /// `--cors`: `*`, or comma-separated origins that etcd's flag parser takes as URLs: a scheme
    /// (http, https, unix or unixs), a `host:port` and no path. An origin is kept as etcd keeps
    /// it (the scheme in lower case), and a request's `Origin` must equal it. Empty allows every
    /// origin, as etcd's help says.
    pub fn parse_cors(flag: &str) -> Result<Allowed, String> {
        if flag.is_empty() || flag == "*" {
            return Ok(Allowed::Any);
        }
        let origins = flag
            .split(',')
            .map(origin)
            .collect::<Result<BTreeSet<String>, String>>()
            .map_err(|e| format!("invalid value {flag:?} for flag -cors: {e}"))?;
        Ok(Allowed::Only(origins))
    }
}

/// One `--cors` entry checked as etcd's `types.NewURLs` checks it, in the form etcd compares.
fn origin(entry: &str) -> Result<String, String> {
    let entry = entry.trim();
    let (scheme, rest) = entry
        .split_once("://")
        .filter(|(scheme, _)| ["http", "https", "unix", "unixs"].contains(&scheme.to_ascii_lowercase().as_str()))
        .ok_or_else(|| format!("URL scheme must be http, https, unix, or unixs: {entry}"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if split_host_port(host_port).is_none() {
        return Err(format!("URL address does not have the form \"host:port\": {entry}"));
    }
    if rest[end..].starts_with('/') {
        return Err(format!("URL must not contain a path: {entry}"));
    }
    Ok(format!("{}://{rest}", scheme.to_ascii_lowercase()))
}

/// Go's `net.SplitHostPort`: the host of `host:port` (`[v6]:port`), or `None` where Go fails
/// (no port, stray brackets or colons).
fn split_host_port(text: &str) -> Option<&str> {
    let colon = text.rfind(':')?;
    // `[`/`]` may appear only around the host, from `j` and up to `k`.
    let (host, j, k) = if text.starts_with('[') {
        let close = text.find(']')?;
        // The port's colon must follow the closing bracket.
        if close + 1 != colon {
            return None;
        }
        (&text[1..close], 1, close + 1)
    } else {
        let host = &text[..colon];
        if host.contains(':') {
            return None;
        }
        (host, 0, 0)
    };
    if text[j..].contains('[') || text[k..].contains(']') {
        return None;
    }
    Some(host)
}

/// A request's host as etcd's `httputil.GetHostname` reads it: the port removed when there is
/// one, the text as it is otherwise.
fn hostname(request: &Request) -> &str {
    let host = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
    };
    split_host_port(host).unwrap_or(host)
}

/// `router` with etcd's access control in front of its HTTP requests, for a listener that is
/// plaintext (`tls` false: the host whitelist applies) or TLS.
pub fn guard(router: Router, access: Arc<AccessControl>, tls: bool) -> Router {
    // Around the whole router, not each of its routes: a preflight answered here must not pass
    // through axum's method routing, which would add an `Allow` header etcd does not send.
    Router::new()
        .fallback_service(router)
        .layer(axum::middleware::from_fn_with_state((access, tls), check))
}

async fn check(State((access, tls)): State<(Arc<AccessControl>, bool)>, request: Request, next: Next) -> Response {
    if crate::fallback::is_grpc(request.headers()) {
        return next.run(request).await;
    }
    if !tls {
        let host = hostname(&request);
        if !access.host_whitelist.allows(host) {
            tracing::warn!(%host, "rejecting HTTP request to prevent DNS rebinding attacks");
            let answer = misdirected(host);
            discard_body(request).await;
            return answer;
        }
    }
    let origin = match &access.cors {
        Allowed::Any => Some(HeaderValue::from_static("*")),
        Allowed::Only(origins) => request
            .headers()
            .get(header::ORIGIN)
            .filter(|o| o.to_str().is_ok_and(|o| origins.contains(o)))
            .cloned(),
    };
    let mut response = if request.method() == Method::OPTIONS {
        discard_body(request).await;
        StatusCode::OK.into_response()
    } else {
        next.run(request).await
    };
    if let Some(origin) = origin {
        add_cors_headers(response.headers_mut(), origin);
    }
    response
}

/// How much of a body nobody reads is taken off the connection before answering (Go's server
/// discards up to 256 KiB the same way).
const DISCARDED_BODY_BYTES: usize = 256 * 1024;

/// How long the answer waits for such a body: a client that keeps its body open gets the answer
/// anyway.
const DISCARD_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and drops the body of a request answered without it, up to [`DISCARDED_BODY_BYTES`] and
/// for at most [`DISCARD_WAIT`]: a connection closed with request bytes still unread is reset, and
/// the reset can reach the client before the answer does.
async fn discard_body(request: Request) {
    let body = axum::body::to_bytes(request.into_body(), DISCARDED_BODY_BYTES);
    let _ = tokio::time::timeout(DISCARD_WAIT, body).await;
}

/// etcd's CORS headers, allowing `origin`.
fn add_cors_headers(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.append(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    headers.append(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
}

/// etcd's answer to a request for a host not in the whitelist: its explanation, as Go's
/// `http.Error` writes it, under 421.
fn misdirected(host: &str) -> Response {
    let text = format!(
        "\netcd received your request, but the Host header was unrecognized.\n\n\
         To fix this, choose one of the following options:\n\
         - Enable TLS, then any HTTPS request will be allowed.\n\
         - Add the hostname you want to use to the whitelist in settings.\n  \
         - e.g. etcd --host-whitelist {host:?}\n\n\
         This requirement has been added to help prevent \"DNS Rebinding\" attacks (CVE-2018-5702).\n\n"
    );
    (
        StatusCode::MISDIRECTED_REQUEST,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_split_as_go_splits_them() {
        assert_eq!(split_host_port("example.com:2379"), Some("example.com"));
        assert_eq!(split_host_port("[::1]:2379"), Some("::1"));
        assert_eq!(split_host_port("example.com:"), Some("example.com"));
        assert_eq!(split_host_port("example.com"), None);
        assert_eq!(split_host_port("[::1]"), None);
        assert_eq!(split_host_port("::1"), None);
        assert_eq!(split_host_port("a:b:1"), None);
        assert_eq!(split_host_port("[::1]x:1"), None);
        assert_eq!(split_host_port("a]:1"), None);
    }

    #[test]
    fn whitelists_allow_exact_hosts_or_everything() {
        assert_eq!(AccessControl::parse_host_whitelist("*"), Allowed::Any);
        assert_eq!(AccessControl::parse_host_whitelist(""), Allowed::Any);
        assert_eq!(AccessControl::parse_host_whitelist("a,*"), Allowed::Any);
        let list = AccessControl::parse_host_whitelist("example.com,10.0.0.1");
        assert!(list.allows("example.com") && list.allows("10.0.0.1"));
        assert!(!list.allows("EXAMPLE.com") && !list.allows("127.0.0.1") && !list.allows(""));
    }

    #[test]
    fn cors_origins_are_checked_as_etcds_flag_parser_checks_them() {
        assert_eq!(AccessControl::parse_cors("*"), Ok(Allowed::Any));
        assert_eq!(AccessControl::parse_cors(""), Ok(Allowed::Any));
        let list = AccessControl::parse_cors("http://a.example:8080, HTTPS://B.example:443").unwrap();
        assert_eq!(
            list,
            Allowed::Only(["http://a.example:8080".to_string(), "https://B.example:443".to_string()].into())
        );
        assert_eq!(
            AccessControl::parse_cors("http://example.com").unwrap_err(),
            "invalid value \"http://example.com\" for flag -cors: URL address does not have the form \"host:port\": http://example.com"
        );
        assert_eq!(
            AccessControl::parse_cors("example.com:80").unwrap_err(),
            "invalid value \"example.com:80\" for flag -cors: URL scheme must be http, https, unix, or unixs: example.com:80"
        );
        assert!(AccessControl::parse_cors("http://a:1/path")
            .unwrap_err()
            .ends_with("URL must not contain a path: http://a:1/path"));
        assert!(
            AccessControl::parse_cors("*,http://a:1").is_err(),
            "as etcd: * only alone"
        );
    }
}
