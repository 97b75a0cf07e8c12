//! systemd's readiness protocol (`sd_notify`): `READY=1` once the member serves, `STOPPING=1`
//! when it begins to stop, sent to `$NOTIFY_SOCKET` when it is set.
//!
//! Units written for etcd (Debian's own, upstream's examples) are `Type=notify`: systemd waits
//! for `READY=1` and kills a service that never sends it. etcd notifies once its server is ready
//! (`ReadyNotify`: it has published itself to its cluster, so it serves clients); the member
//! calls [`ready`] at the same point. The protocol is one datagram on a Unix socket (a path, or
//! an abstract name written `@name`), a few lines that need no library.

use std::os::unix::net::UnixDatagram;

/// Tells the service manager the member is ready to serve clients.
pub fn ready() {
    send("READY=1");
}

/// Tells the service manager the member is stopping.
pub fn stopping() {
    send("STOPPING=1");
}

/// Sends `state` to `$NOTIFY_SOCKET`; nothing when it is unset. A failure is logged, never
/// fatal: the member runs the same whether or not anyone listens.
fn send(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&socket, state) {
        tracing::warn!(socket = ?socket, "cannot notify the service manager ({state}): {e}");
    }
}

fn send_to(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let sender = UnixDatagram::unbound()?;
    let bytes = socket.as_bytes();
    match bytes.split_first() {
        #[cfg(target_os = "linux")]
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sender.send_to_addr(state.as_bytes(), &addr)?;
        }
        Some(_) => {
            sender.send_to(state.as_bytes(), std::path::Path::new(socket))?;
        }
        None => return Err(std::io::Error::other("NOTIFY_SOCKET is empty")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
