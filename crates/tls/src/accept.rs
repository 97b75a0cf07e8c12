//! A TLS listener for tonic servers.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::coalesce::CoalescedWrites;
use crate::reload::Reloadable;

/// How long a connecting client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted connections waiting for the server to take them.
const BACKLOG: usize = 64;

/// Accepts TCP connections on `listener` and hands the server those that complete a TLS
/// handshake with the current configuration of `tls`.
///
/// Handshakes run concurrently, so one slow or silent client holds up no one. A failed
/// handshake (a plaintext client, an untrusted certificate) closes that connection and is logged;
/// the listener goes on. Accepting stops when the server drops the stream.
pub fn accept(
    listener: TcpListener,
    tls: Arc<Reloadable<ServerConfig>>,
) -> ReceiverStream<std::io::Result<CoalescedWrites<TlsStream<TcpStream>>>> {
    let (tx, rx) = mpsc::channel(BACKLOG);
    tokio::spawn(async move {
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::debug!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(CoalescedWrites::new(stream))).await;
                    }
                    Ok(Err(e)) => tracing::info!(%remote, "rejected a TLS connection: {e}"),
                    Err(_) => {
                        tracing::info!(%remote, "rejected a TLS connection: no handshake within {HANDSHAKE_TIMEOUT:?}")
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
