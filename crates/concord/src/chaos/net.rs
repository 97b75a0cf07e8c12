//! The network the chaos rig's members live on, and the network faults it can inject.
//!
//! As root, with iproute2 installed, every member runs in its own network namespace with one
//! address on a private /24, joined to the host by a veth pair on a bridge that also carries the
//! rig's clients (the host end of the bridge holds `.254`). Faults are then real:
//!
//! - a partition between two members is a pair of blackhole routes, one in each member's
//!   namespace, so packets between them are dropped and neither side can tell that from a dead
//!   link; clients on the host still reach both sides, as clients of a split cluster do;
//! - a slow, lossy link is `tc netem` on the members' interfaces where the kernel has netem;
//!   where it has not, the nemesis makes links flap instead (short partitions between random
//!   pairs, switched on and off every few hundred milliseconds).
//!
//! Without root or iproute2 (or with `--loopback`) every member gets its own loopback address,
//! `127.0.0.(10+i)`, and the members' peer traffic goes through a TCP proxy in this process that
//! cuts and degrades connections instead ([`super::proxy`]); clients still reach the members
//! directly.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Command;

use super::proxy::{member_address, PeerProxy};

/// Where the members run and how their links are cut.
pub enum Network {
    /// One namespace per member on a private bridge.
    Namespaces(Namespaces),
    /// One loopback address per member, peer traffic through a fault-injecting proxy.
    Loopback(Loopback),
}

/// The loopback addresses, ports and peer proxy of one run; the proxy stops on drop.
pub struct Loopback {
    /// Per member: its client port, the port it listens for peers on, and the port the proxy
    /// listens on for it (its advertised peer port).
    ports: Vec<Ports>,
    proxy: PeerProxy,
}

/// One loopback member's ports, all on its own address.
struct Ports {
    client: u16,
    listen_peer: u16,
    advertised_peer: u16,
}

/// The namespaces, bridge and routes of one run; all removed on drop.
pub struct Namespaces {
    /// Short per-run tag that every name created here carries.
    tag: String,
    /// The first three octets of the run's /24.
    subnet: [u8; 3],
    /// How many member namespaces exist.
    members: usize,
    /// Member pairs `(a, b)` with `a < b` whose packets are dropped.
    blocked: BTreeSet<(usize, usize)>,
    /// Members whose interface has a netem qdisc.
    degraded: BTreeSet<usize>,
}

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

/// Runs `ip`/`tc` with `args`, returning stderr on failure.
fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process may create namespaces: root, with `ip` on the path.
fn namespaces_possible() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false);
    root && Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success())
}

/// A listener on a free port of `ip`.
fn listen(ip: Ipv4Addr) -> Result<TcpListener, String> {
    TcpListener::bind((ip, 0)).map_err(|e| format!("cannot listen on {ip} (is 127/8 routed to lo?): {e}"))
}

fn port(listener: &TcpListener) -> Result<u16, String> {
    listener.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// A port of `ip` that is free now.
fn free_port(ip: Ipv4Addr) -> Result<u16, String> {
    port(&listen(ip)?)
}

impl Network {
    /// Sets up room for `members` members (and as many rejoins as needed, which reuse a slot):
    /// namespaces when `namespaces` is asked for and possible, loopback otherwise. Loopback
    /// starts the peer proxy, so it must be called inside a tokio runtime.
    pub fn create(members: usize, namespaces: bool) -> Result<Network, String> {
        if namespaces && namespaces_possible() {
            match Namespaces::create(members) {
                Ok(ns) => return Ok(Network::Namespaces(ns)),
                Err(e) => println!("chaos: cannot set up network namespaces ({e}); using loopback"),
            }
        }
        let (mut ports, mut listeners, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..members {
            let ip = member_address(i);
            let listener = listen(ip)?;
            let member = Ports {
                client: free_port(ip)?,
                listen_peer: free_port(ip)?,
                advertised_peer: port(&listener)?,
            };
            targets.push(SocketAddr::from((ip, member.listen_peer)));
            listeners.push(listener);
            ports.push(member);
        }
        let proxy = PeerProxy::start(listeners, targets)?;
        Ok(Network::Loopback(Loopback { ports, proxy }))
    }

    /// One line saying where the members run.
    pub fn describe(&self) -> String {
        match self {
            Network::Namespaces(ns) => format!(
                "members in network namespaces concord-{}-N on 10.{}.{}.0/24; netem {}",
                ns.tag,
                ns.subnet[1],
                ns.subnet[2],
                if netem_available() {
                    "available"
                } else {
                    "unavailable (lossy links flap instead)"
                }
            ),
            Network::Loopback(lo) => format!(
                "members on loopback behind a fault-injecting peer proxy ({}-{})",
                member_address(0),
                member_address(lo.ports.len().saturating_sub(1)),
            ),
        }
    }

    /// Member `i`'s client URL, as the rig's clients reach it.
    pub fn client_url(&self, i: usize) -> String {
        match self {
            Network::Namespaces(ns) => format!("http://{}:{CLIENT_PORT}", ns.address(i)),
            Network::Loopback(lo) => format!("http://{}:{}", member_address(i), lo.ports[i].client),
        }
    }

    /// Member `i`'s peer URL, as the other members reach it (and as it advertises it).
    pub fn peer_url(&self, i: usize) -> String {
        match self {
            Network::Namespaces(ns) => format!("http://{}:{PEER_PORT}", ns.address(i)),
            Network::Loopback(lo) => format!("http://{}:{}", member_address(i), lo.ports[i].advertised_peer),
        }
    }

    /// Where member `i` listens for peers: its peer URL, except on loopback, where the proxy
    /// holds the peer URL and forwards to this one. Its host is also where the member's own peer
    /// connections leave from, which is how the proxy tells members apart.
    pub fn listen_peer_url(&self, i: usize) -> String {
        match self {
            Network::Namespaces(_) => self.peer_url(i),
            Network::Loopback(lo) => format!("http://{}:{}", member_address(i), lo.ports[i].listen_peer),
        }
    }

    /// A command that runs `program` in member `i`'s network.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        match self {
            Network::Namespaces(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.netns(i)]).arg(program);
                c
            }
            Network::Loopback(_) => Command::new(program),
        }
    }

    /// Drops every packet between the members of each pair (in addition to what is already cut).
    pub fn cut(&mut self, pairs: &[(usize, usize)]) -> Result<(), String> {
        for &(a, b) in pairs {
            match self {
                Network::Namespaces(ns) => ns.cut(a, b)?,
                Network::Loopback(lo) => lo.proxy.cut(a, b),
            }
        }
        Ok(())
    }

    /// Restores the link between `a` and `b`.
    pub fn mend(&mut self, a: usize, b: usize) -> Result<(), String> {
        match self {
            Network::Namespaces(ns) => ns.mend(a, b),
            Network::Loopback(lo) => {
                lo.proxy.mend(a, b);
                Ok(())
            }
        }
    }

    /// The pairs currently cut.
    pub fn cut_pairs(&self) -> Vec<(usize, usize)> {
        match self {
            Network::Namespaces(ns) => ns.blocked.iter().copied().collect(),
            Network::Loopback(lo) => lo.proxy.cut_pairs(),
        }
    }

    /// How [`Network::degrade`] makes a link slow and lossy here, for the nemesis's log.
    pub fn degradation(&self) -> &'static str {
        match self {
            Network::Namespaces(_) => "netem delay 50ms±30ms, loss 5%",
            Network::Loopback(_) => "proxy delay 50ms±30ms, 2% of chunks reset the connection",
        }
    }

    /// Makes member `i`'s link slow and lossy: netem in namespaces (`false` when the kernel
    /// lacks it), the proxy's delays and resets on loopback.
    pub fn degrade(&mut self, i: usize) -> Result<bool, String> {
        let ns = match self {
            Network::Namespaces(ns) => ns,
            Network::Loopback(lo) => {
                lo.proxy.degrade(i);
                return Ok(true);
            }
        };
        if !netem_available() {
            return Ok(false);
        }
        sh(
            "ip",
            &[
                "netns",
                "exec",
                &ns.netns(i),
                "tc",
                "qdisc",
                "add",
                "dev",
                "eth0",
                "root",
                "netem",
                "delay",
                "50ms",
                "30ms",
                "loss",
                "5%",
            ],
        )?;
        ns.degraded.insert(i);
        Ok(true)
    }

    /// Removes every partition and slow link.
    pub fn heal(&mut self) -> Result<(), String> {
        let ns = match self {
            Network::Namespaces(ns) => ns,
            Network::Loopback(lo) => {
                lo.proxy.heal();
                return Ok(());
            }
        };
        for (a, b) in ns.blocked.clone() {
            ns.mend(a, b)?;
        }
        for i in std::mem::take(&mut ns.degraded) {
            sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    &ns.netns(i),
                    "tc",
                    "qdisc",
                    "del",
                    "dev",
                    "eth0",
                    "root",
                ],
            )?;
        }
        Ok(())
    }
}

/// Whether the kernel has the netem qdisc, probed once in a throwaway namespace.
fn netem_available() -> bool {
    static PROBE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBE.get_or_init(|| {
        let name = format!("concord-probe-{}", std::process::id());
        if sh("ip", &["netns", "add", &name]).is_err() {
            return false;
        }
        let ok = sh(
            "ip",
            &[
                "netns", "exec", &name, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
            ],
        )
        .is_ok();
        let _ = sh("ip", &["netns", "del", &name]);
        ok
    })
}

impl Namespaces {
    fn create(members: usize) -> Result<Namespaces, String> {
        let pid = std::process::id();
        let ns = Namespaces {
            tag: format!("{pid:x}"),
            subnet: [10, 200 + ((pid >> 8) % 50) as u8, (pid & 0xff) as u8],
            members: 0,
            blocked: BTreeSet::new(),
            degraded: BTreeSet::new(),
        };
        let mut ns = ns;
        let bridge = ns.bridge();
        let _ = sh("ip", &["link", "del", &bridge]);
        sh("ip", &["link", "add", &bridge, "type", "bridge"])?;
        let host = format!("{}.254/24", ns.prefix());
        sh("ip", &["addr", "add", &host, "dev", &bridge])?;
        sh("ip", &["link", "set", &bridge, "up"])?;
        for i in 0..members {
            ns.add_member()
                .map_err(|e| format!("setting up member {i}'s namespace: {e}"))?;
        }
        Ok(ns)
    }

    fn prefix(&self) -> String {
        format!("{}.{}.{}", self.subnet[0], self.subnet[1], self.subnet[2])
    }

    fn address(&self, i: usize) -> String {
        format!("{}.{}", self.prefix(), i + 1)
    }

    fn bridge(&self) -> String {
        format!("ccb{}", self.tag)
    }

    fn netns(&self, i: usize) -> String {
        format!("concord-{}-{i}", self.tag)
    }

    fn add_member(&mut self) -> Result<(), String> {
        let i = self.members;
        let netns = self.netns(i);
        let host_end = format!("cc{}v{i}", self.tag);
        let _ = sh("ip", &["netns", "del", &netns]);
        sh("ip", &["netns", "add", &netns])?;
        self.members += 1;
        sh(
            "ip",
            &[
                "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        )?;
        sh("ip", &["link", "set", &host_end, "master", &self.bridge(), "up"])?;
        let address = format!("{}/24", self.address(i));
        sh("ip", &["-n", &netns, "addr", "add", &address, "dev", "eth0"])?;
        sh("ip", &["-n", &netns, "link", "set", "eth0", "up"])?;
        sh("ip", &["-n", &netns, "link", "set", "lo", "up"])
    }

    fn route(&self, verb: &str, from: usize, to: usize) -> Result<(), String> {
        let target = format!("{}/32", self.address(to));
        sh("ip", &["-n", &self.netns(from), "route", verb, "blackhole", &target])
    }

    fn cut(&mut self, a: usize, b: usize) -> Result<(), String> {
        let pair = (a.min(b), a.max(b));
        if a == b || self.blocked.contains(&pair) {
            return Ok(());
        }
        self.route("add", a, b)?;
        self.route("add", b, a)?;
        self.blocked.insert(pair);
        Ok(())
    }

    fn mend(&mut self, a: usize, b: usize) -> Result<(), String> {
        let pair = (a.min(b), a.max(b));
        if !self.blocked.remove(&pair) {
            return Ok(());
        }
        self.route("del", a, b)?;
        self.route("del", b, a)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for i in 0..self.members {
            let _ = sh("ip", &["netns", "del", &self.netns(i)]);
        }
        let _ = sh("ip", &["link", "del", &self.bridge()]);
    }
}
