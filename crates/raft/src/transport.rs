//! Member-to-member delivery of Raft messages over gRPC.
//!
//! Each peer gets one long-lived client stream and one task that feeds it.
//! The driver thread never blocks on the network: it drops messages into a
//! bounded queue per peer, and the task drains whatever has piled up into one
//! batch per group before writing it to the stream. Raft tolerates lost
//! messages, so a full queue or a broken stream drops messages and reports
//! the peer unreachable instead of applying back-pressure to consensus.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use concord_proto::concordpb::raft_peer_client::RaftPeerClient;
use concord_proto::concordpb::raft_peer_server::{RaftPeer, RaftPeerServer};
use concord_proto::concordpb::{RaftMessageBatch, RaftStreamDone, SnapshotChunk, SnapshotDescriptor};
use concord_tls::Dialer;
use prost::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::log_store::{decode_message, decode_shared_message, encode_message};
use crate::node::RaftHandle;

/// Messages waiting for one peer before new ones are dropped.
const PEER_QUEUE_LEN: usize = 8192;
/// Most messages folded into one write to a peer's stream.
const MAX_MESSAGES_PER_WRITE: usize = 512;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Bytes of snapshot file per chunk: memory per snapshot in flight stays small.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;

/// Where a group's driver hands its outgoing messages.
pub trait MessageSink: Send + Sync {
    /// Queues messages for their recipients; never blocks.
    fn send(&self, group_id: u64, msgs: Vec<Message>);

    /// Whether anything came from `member` within the last `within`: how a hibernating
    /// follower learns that its leader's member is gone ([`crate::hibernation`]).
    fn heard_from(&self, _member: u64, _within: Duration) -> bool {
        true
    }
}

/// How often a member sends every peer a beacon (a batch for no group), so that peers hear from
/// it even while none of their groups exchange anything.
const BEACON_EVERY: Duration = Duration::from_millis(200);

/// Where the transport hands incoming messages for one group.
pub trait RaftInbox: Send + Sync {
    /// Delivers a message that arrived from a peer.
    fn deliver(&self, msg: Message);
    /// Says that a peer could not be reached.
    fn report_unreachable(&self, member_id: u64);
    /// Says whether a snapshot reached a peer.
    fn report_snapshot(&self, member_id: u64, ok: bool);
    /// Says that nothing came from a peer for a while ([`crate::hibernation`]).
    fn report_silent(&self, _member_id: u64) {}
}

impl<O: Send + 'static> RaftInbox for RaftHandle<O> {
    fn deliver(&self, msg: Message) {
        self.step(msg);
    }

    fn report_unreachable(&self, member_id: u64) {
        RaftHandle::report_unreachable(self, member_id);
    }

    fn report_snapshot(&self, member_id: u64, ok: bool) {
        RaftHandle::report_snapshot(self, member_id, ok);
    }

    fn report_silent(&self, member_id: u64) {
        RaftHandle::report_silent(self, member_id);
    }
}

struct PeerLink {
    url: String,
    queue: mpsc::Sender<(u64, Message)>,
}

/// The peer transport of one member: outgoing links to every other member,
/// and the gRPC service that receives their messages.
pub struct PeerTransport {
    member_id: u64,
    runtime: tokio::runtime::Handle,
    /// How outgoing peer connections are made: TLS for `https://` peer URLs, and the address
    /// they leave from (see [`source_address`]).
    dialer: Dialer,
    /// Where received snapshot files are written.
    snapshot_dir: PathBuf,
    peers: RwLock<HashMap<u64, PeerLink>>,
    groups: RwLock<HashMap<u64, Arc<dyn RaftInbox>>>,
    /// Peers whose last contact failed (a refused connection, a broken stream).
    unreachable: RwLock<std::collections::HashSet<u64>>,
    /// When each peer was last heard from, in milliseconds since `started`.
    heard: RwLock<HashMap<u64, Arc<AtomicU64>>>,
    started: std::time::Instant,
    /// How long a peer may say nothing before the groups are told it fell silent, in
    /// milliseconds: the election timeout.
    silent_after_ms: AtomicU64,
}

impl PeerTransport {
    /// Creates a transport whose link tasks run on `runtime`, which stores
    /// received snapshots in `snapshot_dir`, and whose outgoing connections
    /// are made by `dialer` (peer TLS, and the source address from [`source_address`]).
    pub fn new(member_id: u64, runtime: tokio::runtime::Handle, snapshot_dir: PathBuf, dialer: Dialer) -> Arc<Self> {
        let transport = Arc::new(PeerTransport {
            member_id,
            runtime: runtime.clone(),
            dialer,
            snapshot_dir,
            peers: RwLock::new(HashMap::new()),
            groups: RwLock::new(HashMap::new()),
            unreachable: RwLock::new(std::collections::HashSet::new()),
            heard: RwLock::new(HashMap::new()),
            started: std::time::Instant::now(),
            silent_after_ms: AtomicU64::new(DEFAULT_SILENT_AFTER.as_millis() as u64),
        });
        runtime.spawn(send_beacons(Arc::downgrade(&transport)));
        transport
    }

    /// Tells the groups that a peer fell silent once it said nothing for `after` (the election
    /// timeout; [`DEFAULT_SILENT_AFTER`] until set).
    pub fn set_silent_after(&self, after: Duration) {
        self.silent_after_ms.store(after.as_millis() as u64, Ordering::Relaxed);
    }

    /// The peers heard from once but not within the silence threshold.
    fn silent_peers(&self) -> Vec<u64> {
        let now = self.started.elapsed().as_millis() as u64;
        let after = self.silent_after_ms.load(Ordering::Relaxed);
        self.heard
            .read()
            .expect("heard lock poisoned")
            .iter()
            .filter(|(_, at)| now.saturating_sub(at.load(Ordering::Relaxed)) > after)
            .map(|(peer, _)| *peer)
            .collect()
    }

    /// Notes that `peer` was heard from now.
    fn heard_now(&self, peer: u64) {
        let now = self.started.elapsed().as_millis() as u64;
        if let Some(at) = self.heard.read().expect("heard lock poisoned").get(&peer) {
            at.store(now, Ordering::Relaxed);
            return;
        }
        self.heard
            .write()
            .expect("heard lock poisoned")
            .insert(peer, Arc::new(AtomicU64::new(now)));
    }

    /// Adds a peer, or points an existing one at a new URL.
    pub fn set_peer(self: &Arc<Self>, member_id: u64, url: &str) {
        if member_id == self.member_id {
            return;
        }
        let mut peers = self.peers.write().expect("peers lock poisoned");
        if peers.get(&member_id).is_some_and(|p| p.url == url) {
            return;
        }
        let (queue, rx) = mpsc::channel(PEER_QUEUE_LEN);
        let url = url.to_string();
        self.runtime
            .spawn(run_link(Arc::downgrade(self), member_id, url.clone(), rx));
        // Replacing the link drops the old queue, which ends the old task.
        peers.insert(member_id, PeerLink { url, queue });
    }

    /// Forgets a peer; its link task ends.
    pub fn remove_peer(&self, member_id: u64) {
        self.peers.write().expect("peers lock poisoned").remove(&member_id);
    }

    /// Routes incoming messages for `group_id` to `inbox`.
    pub fn register_group(&self, group_id: u64, inbox: Arc<dyn RaftInbox>) {
        self.groups
            .write()
            .expect("groups lock poisoned")
            .insert(group_id, inbox);
    }

    /// Stops delivering messages to group `group_id` (this member dropped its replica).
    pub fn unregister_group(&self, group_id: u64) {
        self.groups.write().expect("groups lock poisoned").remove(&group_id);
    }

    /// The gRPC service peers send to; mount it on the peer listener.
    pub fn service(self: &Arc<Self>) -> RaftPeerServer<PeerService> {
        RaftPeerServer::new(PeerService {
            transport: self.clone(),
        })
        .max_decoding_message_size(64 * 1024 * 1024)
    }

    fn group(&self, group_id: u64) -> Option<Arc<dyn RaftInbox>> {
        self.groups
            .read()
            .expect("groups lock poisoned")
            .get(&group_id)
            .cloned()
    }

    /// Whether the last contact with `peer` worked, either way round. Raft's
    /// own activity flag lags by up to an election timeout; this does not.
    pub fn is_reachable(&self, peer: u64) -> bool {
        !self
            .unreachable
            .read()
            .expect("reachability lock poisoned")
            .contains(&peer)
    }

    fn mark_reachable(&self, peer: u64) {
        if !self.is_reachable(peer) {
            self.unreachable
                .write()
                .expect("reachability lock poisoned")
                .remove(&peer);
        }
    }

    fn report_unreachable(&self, groups: impl IntoIterator<Item = u64>, peer: u64) {
        self.unreachable
            .write()
            .expect("reachability lock poisoned")
            .insert(peer);
        for group_id in groups {
            if let Some(inbox) = self.group(group_id) {
                inbox.report_unreachable(peer);
            }
        }
    }
}

impl MessageSink for PeerTransport {
    fn heard_from(&self, member: u64, within: Duration) -> bool {
        let now = self.started.elapsed().as_millis() as u64;
        self.heard
            .read()
            .expect("heard lock poisoned")
            .get(&member)
            .is_some_and(|at| now.saturating_sub(at.load(Ordering::Relaxed)) <= within.as_millis() as u64)
    }

    fn send(&self, group_id: u64, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let peers = self.peers.read().expect("peers lock poisoned");
        let mut unreachable = Vec::new();
        for msg in msgs {
            let to = msg.to;
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                match peers.get(&to) {
                    Some(peer) => {
                        let (url, me, dialer) = (peer.url.clone(), self.member_id, self.dialer.clone());
                        let groups = self
                            .groups
                            .read()
                            .expect("groups lock poisoned")
                            .get(&group_id)
                            .cloned();
                        self.runtime.spawn(async move {
                            let result = send_snapshot(me, group_id, &url, &dialer, msg).await;
                            if let Err(e) = &result {
                                tracing::warn!(peer = to, "sending a snapshot failed: {e}");
                            }
                            if let Some(inbox) = groups {
                                inbox.report_snapshot(to, result.is_ok());
                            }
                        });
                    }
                    None => unreachable.push(to),
                }
                continue;
            }
            let queued = peers
                .get(&to)
                .is_some_and(|p| p.queue.try_send((group_id, msg)).is_ok());
            if !queued {
                unreachable.push(to);
            }
        }
        drop(peers);
        unreachable.dedup();
        for peer in unreachable {
            self.report_unreachable([group_id], peer);
        }
    }
}

/// Sends every peer a beacon every [`BEACON_EVERY`], and tells the groups of each peer that
/// falls silent, until the transport is gone.
async fn send_beacons(transport: Weak<PeerTransport>) {
    let mut every = tokio::time::interval(BEACON_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silent = std::collections::HashSet::new();
    loop {
        every.tick().await;
        let Some(transport) = transport.upgrade() else {
            return;
        };
        let now_silent: std::collections::HashSet<u64> = transport.silent_peers().into_iter().collect();
        for peer in now_silent.difference(&silent) {
            let groups: Vec<_> = transport
                .groups
                .read()
                .expect("groups lock poisoned")
                .values()
                .cloned()
                .collect();
            for inbox in groups {
                inbox.report_silent(*peer);
            }
        }
        silent = now_silent;
        for (peer, link) in transport.peers.read().expect("peers lock poisoned").iter() {
            let beacon = Message {
                to: *peer,
                ..Default::default()
            };
            // A full queue already carries messages that say as much.
            let _ = link.queue.try_send((NO_GROUP, beacon));
        }
    }
}

/// The silence threshold until [`PeerTransport::set_silent_after`] is called: etcd's default
/// election timeout.
const DEFAULT_SILENT_AFTER: Duration = Duration::from_millis(1000);

/// The group of a beacon: none.
const NO_GROUP: u64 = 0;

/// Keeps one stream open to a peer and feeds it batches from the queue.
async fn run_link(transport: Weak<PeerTransport>, peer: u64, url: String, mut queue: mpsc::Receiver<(u64, Message)>) {
    let Some((me, dialer)) = transport.upgrade().map(|t| (t.member_id, t.dialer.clone())) else {
        return;
    };
    let mut first = None;
    loop {
        // Connect lazily, when there is something to send.
        if first.is_none() {
            first = match queue.recv().await {
                Some(m) => Some(m),
                None => return,
            };
        }
        let client = match connect(&url, &dialer).await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(peer, %url, "cannot reach peer: {e}");
                let lost = first.take().map(|(g, _)| g);
                drain_and_report(&transport, &mut queue, lost, peer);
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        if let Some(t) = transport.upgrade() {
            t.mark_reachable(peer);
        }
        let (stream_tx, stream_rx) = mpsc::channel::<RaftMessageBatch>(64);
        let mut client = client;
        let call = tokio::spawn(async move { client.stream(ReceiverStream::new(stream_rx)).await });
        let sent_bytes = crate::metrics::PEER_SENT_BYTES.with_label_values(&[&format!("{peer:x}")]);
        loop {
            let mut pending: Vec<(u64, Message)> = Vec::with_capacity(16);
            if let Some(m) = first.take() {
                pending.push(m);
            }
            while pending.len() < MAX_MESSAGES_PER_WRITE {
                match queue.try_recv() {
                    Ok(m) => pending.push(m),
                    Err(_) => break,
                }
            }
            let mut broken = false;
            let mut groups = Vec::new();
            for batch in into_batches(me, peer, pending) {
                groups.push(batch.group_id);
                sent_bytes.inc_by(batch.messages.iter().map(|m| m.len() as u64).sum());
                if stream_tx.send(batch).await.is_err() {
                    broken = true;
                }
            }
            if broken {
                tracing::debug!(peer, %url, "stream to peer broke");
                if let Some(t) = transport.upgrade() {
                    t.report_unreachable(groups, peer);
                }
                break;
            }
            match queue.recv().await {
                Some(m) => first = Some(m),
                None => {
                    call.abort();
                    return;
                }
            }
        }
        call.abort();
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// The address a member's outgoing peer connections should leave from, given
/// the URLs it listens for peers on: their host when they all name one
/// specific IP address, `None` (the kernel picks) for a wildcard address, a
/// hostname or several addresses. On a multi-homed host this keeps peer
/// traffic on the interface the member was told to use, and it lets whoever
/// sits between members (a firewall, the chaos rig's loopback proxy) tell
/// which member a connection comes from.
pub fn source_address(listen_peer_urls: &[String]) -> Option<IpAddr> {
    let mut hosts = listen_peer_urls.iter().map(|url| {
        let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        rest.trim_end_matches('/').parse::<SocketAddr>().ok().map(|a| a.ip())
    });
    let first = hosts.next()??;
    let same = hosts.all(|ip| ip == Some(first));
    (same && !first.is_unspecified()).then_some(first)
}

async fn connect(url: &str, dialer: &Dialer) -> Result<RaftPeerClient<tonic::transport::Channel>, String> {
    let channel = dialer
        .connect(url, |endpoint| {
            endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
        })
        .await?;
    Ok(RaftPeerClient::new(channel).max_encoding_message_size(64 * 1024 * 1024))
}

/// Drops what is queued for an unreachable peer, telling each group once.
fn drain_and_report(
    transport: &Weak<PeerTransport>,
    queue: &mut mpsc::Receiver<(u64, Message)>,
    lost: Option<u64>,
    peer: u64,
) {
    let mut groups: Vec<u64> = lost.into_iter().collect();
    while let Ok((g, _)) = queue.try_recv() {
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    if let Some(t) = transport.upgrade() {
        t.report_unreachable(groups, peer);
    }
}

/// Streams the snapshot a `MsgSnapshot` announces: the message first, then
/// the file in chunks.
async fn send_snapshot(from: u64, group_id: u64, url: &str, dialer: &Dialer, msg: Message) -> Result<(), String> {
    let to = msg.to;
    let descriptor = SnapshotDescriptor::decode(msg.get_snapshot().get_data()).map_err(|e| e.to_string())?;
    let mut file = tokio::fs::File::open(&descriptor.path)
        .await
        .map_err(|e| format!("{}: {e}", descriptor.path))?;
    let mut client = connect(url, dialer).await?;
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
    let call = tokio::spawn(async move { client.snapshot(ReceiverStream::new(rx)).await });
    let head = SnapshotChunk {
        group_id,
        from_member: from,
        to_member: to,
        message: encode_message(&msg),
        data: Vec::new(),
    };
    let mut sent = tx.send(head).await.is_ok();
    while sent {
        let mut buf = vec![0u8; SNAPSHOT_CHUNK];
        let n = file.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        sent = tx
            .send(SnapshotChunk {
                group_id,
                data: buf,
                ..Default::default()
            })
            .await
            .is_ok();
    }
    drop(tx);
    match call.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(status.message().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn into_batches(from: u64, to: u64, msgs: Vec<(u64, Message)>) -> Vec<RaftMessageBatch> {
    let mut batches: Vec<RaftMessageBatch> = Vec::new();
    for (group_id, msg) in msgs {
        let encoded = prost::bytes::Bytes::from(encode_message(&msg));
        match batches.iter_mut().find(|b| b.group_id == group_id) {
            Some(b) => b.messages.push(encoded),
            None => batches.push(RaftMessageBatch {
                group_id,
                from_member: from,
                to_member: to,
                messages: vec![encoded],
            }),
        }
    }
    batches
}

/// The receiving side: decodes batches and hands messages to their groups.
pub struct PeerService {
    transport: Arc<PeerTransport>,
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn stream(&self, request: Request<Streaming<RaftMessageBatch>>) -> Result<Response<RaftStreamDone>, Status> {
        let mut stream = request.into_inner();
        let mut received_bytes: Option<(u64, prometheus::IntCounter)> = None;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let from = batch.from_member;
            let counter = match &received_bytes {
                Some((peer, counter)) if *peer == from => counter,
                _ => {
                    let counter = crate::metrics::PEER_RECEIVED_BYTES.with_label_values(&[&format!("{from:x}")]);
                    &received_bytes.insert((from, counter)).1
                }
            };
            counter.inc_by(batch.messages.iter().map(|m| m.len() as u64).sum());
            if batch.to_member != self.transport.member_id {
                return Err(Status::failed_precondition(format!(
                    "this member is {:x}, not {:x}",
                    self.transport.member_id, batch.to_member
                )));
            }
            self.transport.mark_reachable(batch.from_member);
            self.transport.heard_now(batch.from_member);
            let Some(inbox) = self.transport.group(batch.group_id) else {
                continue;
            };
            for bytes in &batch.messages {
                match decode_shared_message(bytes) {
                    Ok(msg) => inbox.deliver(msg),
                    Err(e) => tracing::warn!(from = batch.from_member, "undecodable raft message: {e}"),
                }
            }
        }
        Ok(Response::new(RaftStreamDone {}))
    }

    async fn snapshot(&self, request: Request<Streaming<SnapshotChunk>>) -> Result<Response<RaftStreamDone>, Status> {
        let mut stream = request.into_inner();
        let head = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        if head.to_member != self.transport.member_id {
            return Err(Status::failed_precondition("snapshot sent to the wrong member"));
        }
        let mut msg = decode_message(&head.message).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut descriptor = SnapshotDescriptor::decode(msg.get_snapshot().get_data())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let index = msg.get_snapshot().get_metadata().index;
        let dir = &self.transport.snapshot_dir;
        let path = dir.join(format!("recv-{:x}-{index}-{:x}.snap", head.group_id, head.from_member));
        let io = |e: std::io::Error| Status::internal(format!("{}: {e}", path.display()));
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
        let mut file = tokio::fs::File::create(&path).await.map_err(io)?;
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            received += chunk.data.len() as u64;
            file.write_all(&chunk.data).await.map_err(io)?;
        }
        file.sync_all().await.map_err(io)?;
        if received != descriptor.size {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(Status::data_loss(format!(
                "snapshot truncated: {received} of {} bytes",
                descriptor.size
            )));
        }
        descriptor.path = path.to_string_lossy().into_owned();
        msg.mut_snapshot().set_data(descriptor.encode_to_vec().into());
        match self.transport.group(head.group_id) {
            Some(inbox) => inbox.deliver(msg),
            None => return Err(Status::not_found(format!("no group {}", head.group_id))),
        }
        Ok(Response::new(RaftStreamDone {}))
    }
}

#[cfg(test)]
mod tests {
    use super::source_address;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|u| u.to_string()).collect()
    }

    #[test]
    fn outgoing_connections_leave_from_the_one_specific_listen_address() {
        let ip = |s: &str| Some(s.parse().unwrap());
        assert_eq!(source_address(&urls(&["http://127.0.0.10:2380"])), ip("127.0.0.10"));
        assert_eq!(source_address(&urls(&["http://[::1]:2380/"])), ip("::1"));
        assert_eq!(
            source_address(&urls(&["http://10.0.0.1:2380", "http://10.0.0.1:2381"])),
            ip("10.0.0.1")
        );
        assert_eq!(source_address(&urls(&["http://0.0.0.0:2380"])), None);
        assert_eq!(source_address(&urls(&["http://[::]:2380"])), None);
        assert_eq!(source_address(&urls(&["http://localhost:2380"])), None);
        assert_eq!(
            source_address(&urls(&["http://10.0.0.1:2380", "http://10.0.0.2:2380"])),
            None
        );
        assert_eq!(source_address(&[]), None);
    }
}
