//! How a member dials other members: plaintext for `http://` URLs, TLS for `https://`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use tonic::transport::{Channel, Endpoint};

use crate::connect::{TcpConnector, TlsConnector};
use crate::reload::Reloadable;

/// The way one kind of outgoing link is made (peer links, or forwarded client calls): which TLS
/// configuration `https://` URLs use, and which local address connections leave from.
#[derive(Clone)]
pub struct Dialer {
    tls: Option<Arc<Reloadable<ClientConfig>>>,
    source: Option<IpAddr>,
    connect_timeout: Duration,
}

/// How long a TLS connection (TCP and handshake) may take unless the dialer says otherwise.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for Dialer {
    fn default() -> Dialer {
        Dialer::new(None, None)
    }
}

impl Dialer {
    /// A dialer that uses `tls` for `https://` URLs (none: such URLs are refused) and binds
    /// outgoing connections to `source` when given.
    pub fn new(tls: Option<Arc<Reloadable<ClientConfig>>>, source: Option<IpAddr>) -> Dialer {
        Dialer {
            tls,
            source,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// Bounds TLS connections (TCP and handshake together); plaintext ones follow the endpoint's
    /// own connect timeout.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Dialer {
        self.connect_timeout = timeout;
        self
    }

    /// Connects to `url` now; `configure` sets the endpoint's timeouts and options.
    pub async fn connect(&self, url: &str, configure: impl FnOnce(Endpoint) -> Endpoint) -> Result<Channel, String> {
        let (endpoint, tls) = self.endpoint(url, configure)?;
        match tls {
            Some(tls) => endpoint.connect_with_connector(tls).await,
            None => endpoint.connect_with_connector(self.tcp()).await,
        }
        .map_err(|e| describe(url, e))
    }

    /// A channel to `url` that connects on first use (and reconnects after failures).
    pub fn connect_lazy(&self, url: &str, configure: impl FnOnce(Endpoint) -> Endpoint) -> Result<Channel, String> {
        let (endpoint, tls) = self.endpoint(url, configure)?;
        Ok(match tls {
            Some(tls) => endpoint.connect_with_connector_lazy(tls),
            None => endpoint.connect_with_connector_lazy(self.tcp()),
        })
    }

    /// The endpoint tonic dials, and the connector that wraps it in TLS for `https://` URLs.
    ///
    /// tonic refuses an `https://` endpoint unless it does the TLS itself, with a configuration
    /// fixed when the channel is made. So the TLS is done here, by the connector, with whatever
    /// configuration is current at each (re)connection, and tonic sees the URL as `http://`.
    fn tcp(&self) -> TcpConnector {
        TcpConnector::new(self.source, self.connect_timeout)
    }

    fn endpoint(
        &self,
        url: &str,
        configure: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<(Endpoint, Option<TlsConnector>), String> {
        let (target, tls) = match url.strip_prefix("https://") {
            Some(rest) => {
                let tls = self.tls.clone().ok_or_else(|| {
                    format!(
                        "{url}: an https URL, but this member has no certificate for it (--cert-file/--peer-cert-file)"
                    )
                })?;
                (
                    format!("http://{rest}"),
                    Some(TlsConnector::new(tls, self.source, self.connect_timeout)),
                )
            }
            None => (url.to_string(), None),
        };
        let endpoint = Endpoint::from_shared(target).map_err(|e| format!("{url}: {e}"))?;
        let endpoint = configure(endpoint).local_address(self.source);
        Ok((endpoint, tls))
    }
}

/// tonic's connection errors print as "transport error"; the cause is what helps.
fn describe(url: &str, error: tonic::transport::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    format!("{url}: {text}")
}
