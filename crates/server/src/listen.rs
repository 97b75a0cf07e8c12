//! Binding a member's listeners, with etcd's `--socket-reuse-port` and `--socket-reuse-address`.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

use crate::member::ServeError;

/// Connections the kernel queues for a listener before the member accepts them (tokio's and
/// Rust's own default for `TcpListener::bind`).
const BACKLOG: u32 = 1024;

/// The socket options of every listener a member binds (client, client HTTP, peer, metrics and
/// dashboard URLs), as etcd applies its `SocketOpts` to all of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketOptions {
    /// `--socket-reuse-port`: SO_REUSEPORT, so another socket that also sets it (a second member
    /// process during an upgrade, say) can bind the same address while this one listens.
    pub reuse_port: bool,
    /// `--socket-reuse-address`: SO_REUSEADDR, so the address binds while connections of a
    /// previous listener linger in TIME_WAIT. On Unix, Rust's and Go's listeners set it anyway,
    /// so the flag changes nothing there; it is applied as asked everywhere.
    pub reuse_address: bool,
}

/// Binds a listener on `addr` with `options`.
pub fn bind(addr: SocketAddr, options: SocketOptions) -> Result<TcpListener, ServeError> {
    let failed = |e: std::io::Error| ServeError::Network(format!("cannot listen on {addr}: {e}"));
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(failed)?;
    // Without the flag, SO_REUSEADDR stays on where the platform's listeners have it on by
    // default (Unix), so a restarted member is not kept off its port by TIME_WAIT.
    socket
        .set_reuseaddr(options.reuse_address || cfg!(unix))
        .map_err(failed)?;
    #[cfg(unix)]
    if options.reuse_port {
        socket.set_reuseport(true).map_err(failed)?;
    }
    #[cfg(not(unix))]
    if options.reuse_port {
        return Err(ServeError::Config(
            "--socket-reuse-port needs SO_REUSEPORT, which this platform lacks".into(),
        ));
    }
    socket.bind(addr).map_err(failed)?;
    socket.listen(BACKLOG).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::{bind, SocketOptions};

    fn reusing() -> SocketOptions {
        SocketOptions {
            reuse_port: true,
            reuse_address: false,
        }
    }

    #[tokio::test]
    async fn reuse_port_lets_a_second_listener_share_the_address() {
        let first = bind("127.0.0.1:0".parse().unwrap(), reusing()).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind(addr, reusing()).expect("both sockets set SO_REUSEPORT");
        assert_eq!(second.local_addr().unwrap(), addr);
    }

    #[tokio::test]
    async fn without_reuse_port_the_address_is_taken() {
        let first = bind("127.0.0.1:0".parse().unwrap(), SocketOptions::default()).unwrap();
        let addr = first.local_addr().unwrap();
        let refused = bind(addr, reusing()).expect_err("the first listener did not set SO_REUSEPORT");
        assert!(refused.to_string().contains("cannot listen on"), "{refused}");
    }
}
