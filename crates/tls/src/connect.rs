//! Connectors for tonic channels: TLS, and plain TCP with batched writes.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use crate::coalesce::CoalescedWrites;
use crate::reload::Reloadable;

/// Opens TLS connections for a tonic `Endpoint` (`connect_with_connector`), with the current
/// configuration of a [`Reloadable`] client config, optionally leaving from a given local
/// address (members send peer traffic from their listen address).
///
/// The server's certificate must name the host of the URI: an IP address for `https://10.0.0.1`,
/// a DNS name otherwise. The URI's scheme is not looked at (see [`crate::Dialer`]).
#[derive(Clone)]
pub struct TlsConnector {
    tls: Arc<Reloadable<ClientConfig>>,
    source: Option<IpAddr>,
    timeout: Duration,
}

impl TlsConnector {
    /// A connector that uses `tls` for every new connection.
    pub fn new(tls: Arc<Reloadable<ClientConfig>>, source: Option<IpAddr>, timeout: Duration) -> TlsConnector {
        TlsConnector { tls, source, timeout }
    }

    async fn connect(self, uri: Uri) -> std::io::Result<TokioIo<CoalescedWrites<TlsStream<TcpStream>>>> {
        let host = host_of(&uri)?;
        let name = ServerName::try_from(host.clone()).map_err(|e| invalid(format!("{host}: {e}")))?;
        let work = async {
            let stream = tcp_to(&host, uri.port_u16().unwrap_or(443), self.source).await?;
            let connector = tokio_rustls::TlsConnector::from(self.tls.current());
            let tls = connector.connect(name, stream).await?;
            Ok(TokioIo::new(CoalescedWrites::new(tls)))
        };
        tokio::time::timeout(self.timeout, work).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{uri}: no TLS connection within {:?}", self.timeout),
            )
        })?
    }
}

/// Opens plain TCP connections for a tonic `Endpoint` (`connect_with_connector`), with Nagle's
/// algorithm off and h2's writes batched ([`CoalescedWrites`]), optionally leaving from a given
/// local address. Tonic's own connector would hand h2 the bare socket.
#[derive(Clone)]
pub struct TcpConnector {
    source: Option<IpAddr>,
    timeout: Duration,
}

impl TcpConnector {
    /// A connector whose connections leave from `source` (any address when `None`) and give
    /// up after `timeout`.
    pub fn new(source: Option<IpAddr>, timeout: Duration) -> TcpConnector {
        TcpConnector { source, timeout }
    }

    async fn connect(self, uri: Uri) -> std::io::Result<TokioIo<CoalescedWrites<TcpStream>>> {
        let host = host_of(&uri)?;
        let work = tcp_to(&host, uri.port_u16().unwrap_or(80), self.source);
        let stream = tokio::time::timeout(self.timeout, work).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{uri}: no connection within {:?}", self.timeout),
            )
        })??;
        Ok(TokioIo::new(CoalescedWrites::new(stream)))
    }
}

impl tower_service::Service<Uri> for TcpConnector {
    type Response = TokioIo<CoalescedWrites<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

/// The host of `uri`, without the brackets of an IPv6 literal.
fn host_of(uri: &Uri) -> std::io::Result<String> {
    let host = uri.host().ok_or_else(|| invalid(format!("{uri}: no host")))?;
    Ok(host.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// A TCP connection to the first address of `host` that accepts one.
async fn tcp_to(host: &str, port: u16, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let mut last = invalid(format!("{host}: no address"));
    for addr in tokio::net::lookup_host((host, port)).await? {
        match tcp(addr, source).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn tcp(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message)
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<CoalescedWrites<TlsStream<TcpStream>>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}
