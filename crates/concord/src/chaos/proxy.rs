//! The fault-injecting peer proxy of loopback runs, where there are no namespaces to cut.
//!
//! Member `i` owns the loopback address `127.0.0.(10+i)` (Linux routes all of 127/8 to `lo`). It
//! listens for peers on one port of it and advertises another, where this proxy listens and
//! forwards to the first; members send their peer traffic from their own address (the Raft
//! transport binds outgoing connections to the host of `--listen-peer-urls`), so the source of a
//! connection tells the proxy which member it comes from. Clients reach members directly, as they
//! do in namespace runs. TCP hides packets, so the faults are the closest visible effects:
//!
//! - a cut pair's connections are closed, and new ones between the pair are accepted but relay
//!   nothing (a link that swallows everything, as a blackhole route does) until the pair is
//!   mended, when they are closed so that the members reconnect;
//! - a degraded member's connections carry every chunk 50ms±30ms late, and each chunk resets the
//!   connection with a 2% chance, which is what losing packets looks like from above TCP.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::bench::SplitMix64;

/// Chance, in 1/`RESET_ONE_IN`, that a chunk on a degraded link resets its connection.
const RESET_ONE_IN: u64 = 50;
/// Least and most extra delay of a chunk on a degraded link, in milliseconds.
const DELAY_MS: (u64, u64) = (20, 80);

/// Member `i`'s own loopback address, which its peer traffic leaves from.
pub fn member_address(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, u8::try_from(10 + i).expect("at most 245 loopback members"))
}

/// The faults in force, which every proxied connection watches.
#[derive(Clone, Debug, Default)]
struct Faults {
    /// Member pairs `(a, b)` with `a < b` whose peer traffic is dropped.
    cut: BTreeSet<(usize, usize)>,
    /// Members whose links are slow and lossy.
    degraded: BTreeSet<usize>,
}

/// One direction's view of the faults: which members a connection joins.
#[derive(Clone, Copy)]
struct Link {
    /// The member the connection comes from, when its source address is a member's.
    from: Option<usize>,
    /// The member whose peer port it was made to.
    to: usize,
}

impl Link {
    fn is_cut(self, faults: &Faults) -> bool {
        self.from
            .is_some_and(|i| faults.cut.contains(&(i.min(self.to), i.max(self.to))))
    }

    fn is_degraded(self, faults: &Faults) -> bool {
        faults.degraded.contains(&self.to) || self.from.is_some_and(|i| faults.degraded.contains(&i))
    }
}

/// The proxy in front of every member's peer port; it stops (listeners and connections) when
/// dropped.
pub struct PeerProxy {
    faults: watch::Sender<Faults>,
    /// One accept loop per member; dropping the set aborts them.
    _listeners: JoinSet<()>,
}

impl PeerProxy {
    /// Starts forwarding `listeners[j]` (member `j`'s advertised peer address) to `targets[j]`
    /// (where member `j` listens for peers). Needs a tokio runtime.
    pub fn start(listeners: Vec<std::net::TcpListener>, targets: Vec<SocketAddr>) -> Result<PeerProxy, String> {
        tokio::runtime::Handle::try_current().map_err(|_| "the peer proxy needs a tokio runtime")?;
        let (faults, _) = watch::channel(Faults::default());
        let members = listeners.len();
        let mut tasks = JoinSet::new();
        for (to, (listener, target)) in listeners.into_iter().zip(targets).enumerate() {
            listener.set_nonblocking(true).map_err(|e| format!("peer proxy: {e}"))?;
            let listener = TcpListener::from_std(listener).map_err(|e| format!("peer proxy: {e}"))?;
            tasks.spawn(accept_loop(listener, members, to, target, faults.subscribe()));
        }
        Ok(PeerProxy {
            faults,
            _listeners: tasks,
        })
    }

    /// Drops every byte between `a` and `b` until they are mended.
    pub fn cut(&self, a: usize, b: usize) {
        if a != b {
            self.faults.send_if_modified(|f| f.cut.insert((a.min(b), a.max(b))));
        }
    }

    /// Lets `a` and `b` talk again.
    pub fn mend(&self, a: usize, b: usize) {
        self.faults.send_if_modified(|f| f.cut.remove(&(a.min(b), a.max(b))));
    }

    /// The pairs currently cut, as `(a, b)` with `a < b`.
    pub fn cut_pairs(&self) -> Vec<(usize, usize)> {
        self.faults.borrow().cut.iter().copied().collect()
    }

    /// Makes member `i`'s links slow and lossy.
    pub fn degrade(&self, i: usize) {
        self.faults.send_if_modified(|f| f.degraded.insert(i));
    }

    /// Ends every partition and degraded link.
    pub fn heal(&self) {
        self.faults.send_if_modified(|f| {
            let faulty = !f.cut.is_empty() || !f.degraded.is_empty();
            *f = Faults::default();
            faulty
        });
    }
}

/// The member whose loopback address `ip` is, among `members`.
fn member_of(ip: IpAddr, members: usize) -> Option<usize> {
    let IpAddr::V4(v4) = ip else { return None };
    (0..members).find(|i| member_address(*i) == v4)
}

/// Accepts connections to member `to`'s advertised peer port and forwards each to `target`.
async fn accept_loop(
    listener: TcpListener,
    members: usize,
    to: usize,
    target: SocketAddr,
    faults: watch::Receiver<Faults>,
) {
    static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
    loop {
        let Ok((inbound, source)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let link = Link {
            from: member_of(source.ip(), members),
            to,
        };
        let seed = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(forward(inbound, link, target, faults.clone(), seed));
    }
}

/// How a forwarded connection ended.
enum End {
    /// Either side closed it or failed.
    Closed,
    /// The link was cut or the proxy stopped.
    Cut,
    /// A degraded link lost a "packet".
    Reset,
}

/// Relays one connection until either side closes it, its link is cut, or the proxy stops.
async fn forward(
    mut inbound: TcpStream,
    link: Link,
    target: SocketAddr,
    mut faults: watch::Receiver<Faults>,
    seed: u64,
) {
    if link.is_cut(&faults.borrow()) {
        // Swallow everything until the pair is mended (or the proxy stops), then close.
        let _ = faults.wait_for(|f| !link.is_cut(f)).await;
        return;
    }
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (up, down) = (faults.clone(), faults.clone());
    let end = {
        let (in_read, in_write) = inbound.split();
        let (out_read, out_write) = outbound.split();
        tokio::select! {
            end = relay(in_read, out_write, link, up, seed) => end,
            end = relay(out_read, in_write, link, down, !seed) => end,
            _ = faults.wait_for(|f| link.is_cut(f)) => End::Cut,
        }
    };
    if let End::Reset = end {
        let _ = inbound.set_zero_linger();
        let _ = outbound.set_zero_linger();
    }
}

/// Copies `from` to `to`, delaying and resetting while the link is degraded.
async fn relay(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    link: Link,
    faults: watch::Receiver<Faults>,
    seed: u64,
) -> End {
    let mut rng = SplitMix64::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return End::Closed,
            Ok(n) => n,
        };
        if link.is_degraded(&faults.borrow()) {
            if rng.below(RESET_ONE_IN) == 0 {
                return End::Reset;
            }
            let delay = DELAY_MS.0 + rng.below(DELAY_MS.1 - DELAY_MS.0 + 1);
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return End::Closed;
        }
    }
}
