//! The HTTP/1.1 client `--discovery` talks to the discovery service with: one request per
//! connection, over TCP or TLS, directly or through `--discovery-proxy`, as etcd's
//! `client/v2` over Go's `http.Transport` would send it.
//!
//! The proxy is Go's `http.ProxyURL`: a plain `http://` request is sent to the proxy in
//! absolute form, an `https://` one through a `CONNECT` tunnel. etcd's discovery transport
//! has no client certificate and trusts the system's roots ([`system_roots`]); it ignores the
//! `HTTP_PROXY` variables, so this client does too. Connections give up after 30 s, as etcd's
//! discovery transport's dialer does.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// How long a connection may take to open (etcd's discovery transport: 30 s).
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// An answer: its status, etcd's `X-Etcd-Index` header and the whole body.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status code.
    pub status: u16,
    /// The `X-Etcd-Index` header, if any.
    pub etcd_index: Option<String>,
    /// The body, read to its end.
    pub body: Bytes,
}

/// A byte stream a request can be sent over (TCP, TLS, a proxy tunnel).
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A client of one HTTP endpoint (the discovery URL without its path).
pub struct HttpClient {
    /// `scheme://host[:port]`, for messages and absolute-form requests.
    base: String,
    /// `host[:port]` as the URL writes it, for the Host header.
    host_header: String,
    https: bool,
    host: String,
    port: u16,
    /// The proxy's `host:port`, if one is used.
    proxy: Option<String>,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl HttpClient {
    /// A client of `endpoint`'s scheme, host and port, through the HTTP proxy `proxy` if given.
    pub fn new(endpoint: &url::Url, proxy: Option<&url::Url>) -> Result<HttpClient, String> {
        let https = match endpoint.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(format!("unsupported protocol scheme {other:?}")),
        };
        let host = endpoint
            .host_str()
            .ok_or_else(|| format!("{endpoint}: no host"))?
            .to_string();
        let port = endpoint
            .port_or_known_default()
            .ok_or_else(|| format!("{endpoint}: no port"))?;
        let proxy = match proxy {
            None => None,
            Some(p) if p.scheme() == "http" => Some(format!(
                "{}:{}",
                p.host_str().ok_or_else(|| format!("proxy {p}: no host"))?,
                p.port_or_known_default().unwrap_or(80)
            )),
            Some(p) => return Err(format!("proxy {p}: only http:// proxies are supported")),
        };
        let tls = if https {
            let config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(system_roots()?)
                    .with_no_client_auth();
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        // As Go writes the endpoint and the Host header: the port only when the URL has one.
        // (`host_str` keeps an IPv6 address in brackets.)
        let written = match endpoint.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        Ok(HttpClient {
            base: format!("{}://{written}", endpoint.scheme()),
            host_header: written,
            https,
            host,
            port,
            proxy,
            tls,
        })
    }

    /// The endpoint, `scheme://host[:port]`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method` to `path_and_query` with `form` as an url-encoded body, and reads the
    /// whole answer. An error is a failure to exchange at all, written as Go's `url.Error`.
    pub async fn send(
        &self,
        method: http::Method,
        path_and_query: &str,
        form: Option<String>,
    ) -> Result<Reply, String> {
        let url = format!("{}{path_and_query}", self.base);
        let op = go_method(&method);
        self.exchange(method, path_and_query, form)
            .await
            .map_err(|e| format!("{op} {url:?}: {e}"))
    }

    async fn exchange(
        &self,
        method: http::Method,
        path_and_query: &str,
        form: Option<String>,
    ) -> Result<Reply, String> {
        let target_authority = authority(&self.host, self.port);
        let stream: Box<dyn Stream> = match (&self.proxy, self.https) {
            (None, _) => Box::new(dial(&target_authority).await?),
            (Some(proxy), false) => Box::new(dial(proxy).await?),
            (Some(proxy), true) => tunnel(dial(proxy).await?, &target_authority).await?,
        };
        let stream: Box<dyn Stream> = match &self.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.trim_matches(['[', ']']).to_string())
                    .map_err(|e| format!("{}: {e}", self.host))?;
                Box::new(tls.connect(name, stream).await.map_err(|e| e.to_string())?)
            }
            None => stream,
        };
        // A plain request through a proxy names the whole URL (absolute form).
        let uri = match (&self.proxy, self.https) {
            (Some(_), false) => format!("{}{path_and_query}", self.base),
            _ => path_and_query.to_string(),
        };
        let mut request = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, &self.host_header);
        if form.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let request = request
            .body(Full::new(Bytes::from(form.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let etcd_index = response
            .headers()
            .get("X-Etcd-Index")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            etcd_index,
            body,
        })
    }
}

/// `host:port` of a host as `url` writes it (an IPv6 address already in brackets).
fn authority(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

/// Go's `url.Error` names the method this way: `Get`, `Put`.
fn go_method(method: &http::Method) -> String {
    let upper = method.as_str();
    let mut chars = upper.chars();
    chars
        .next()
        .map(|first| first.to_string() + &chars.as_str().to_ascii_lowercase())
        .unwrap_or_default()
}

/// A TCP connection to `authority`, within [`DIAL_TIMEOUT`].
async fn dial(authority: &str) -> Result<TcpStream, String> {
    let stream = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(authority))
        .await
        .map_err(|_| format!("dial tcp {authority}: i/o timeout"))?
        .map_err(|e| format!("dial tcp {authority}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A `CONNECT` tunnel to `target` through the proxy connection `proxy`.
async fn tunnel(proxy: TcpStream, target: &str) -> Result<Box<dyn Stream>, String> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(proxy))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection.with_upgrades());
    let request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(target)
        .header(http::header::HOST, target)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("proxyconnect tcp: {}", response.status()));
    }
    let upgraded = hyper::upgrade::on(response).await.map_err(|e| e.to_string())?;
    Ok(Box::new(TokioIo::new(upgraded)))
}

/// Go's root certificates on Linux: the file `SSL_CERT_FILE` names, else the first of the
/// distributions' bundles that exists.
pub fn system_roots() -> Result<rustls::RootCertStore, String> {
    use rustls_pki_types::pem::PemObject as _;
    const BUNDLES: &[&str] = &[
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/pki/tls/cacert.pem",
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ];
    let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    let file = from_env
        .into_iter()
        .chain(BUNDLES.iter().map(std::path::PathBuf::from))
        .find(|p| p.is_file())
        .ok_or("no root certificates found for the https:// discovery service (set SSL_CERT_FILE)")?;
    let mut roots = rustls::RootCertStore::empty();
    let certs =
        rustls::pki_types::CertificateDer::pem_file_iter(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", file.display()))?;
        // A bundle may hold certificates rustls cannot use; Go skips those too.
        let _ = roots.add(cert);
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_and_authorities_as_go_writes_them() {
        assert_eq!(go_method(&http::Method::GET), "Get");
        assert_eq!(go_method(&http::Method::PUT), "Put");
        let client = HttpClient::new(&url::Url::parse("http://d.example.com/v2/keys/x").unwrap(), None).unwrap();
        assert_eq!(client.base(), "http://d.example.com");
        let client = HttpClient::new(&url::Url::parse("http://[::1]:2379/v2").unwrap(), None).unwrap();
        assert_eq!(client.base(), "http://[::1]:2379");
        let proxy = url::Url::parse("socks5://p:1080").unwrap();
        assert!(HttpClient::new(&url::Url::parse("http://d/").unwrap(), Some(&proxy)).is_err());
    }
}
