//! The cluster under test: real `concord serve` processes, and the process-level faults the
//! nemesis injects into them (kill -9, pause, wipe and rejoin, leader transfer).

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use concord_proto::etcdserverpb::cluster_client::ClusterClient;
use concord_proto::etcdserverpb::kv_client::KvClient;
use concord_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use concord_proto::etcdserverpb::{
    HashKvRequest, MemberAddRequest, MemberRemoveRequest, MoveLeaderRequest, RangeRequest, StatusRequest,
    StatusResponse,
};
use tonic::transport::{Channel, Endpoint};

use super::net::Network;

/// How long one administrative call to a member may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// One member process and what the rig knows of it.
struct Member {
    name: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Its Raft member id, learned from its first status answer (0 until then).
    id: u64,
}

/// How the members are started.
pub struct ClusterOptions {
    /// The `concord` executable.
    pub binary: PathBuf,
    /// Where data directories and logs go.
    pub dir: PathBuf,
    /// How many members.
    pub members: usize,
    /// Run each member in its own network namespace when possible.
    pub namespaces: bool,
    /// `--unsafe-sabotage` for every member (the known-bad check).
    pub sabotage: Option<String>,
    /// `--experimental-stamped-revisions` for every member.
    pub stamped_revisions: bool,
    /// `--experimental-initial-shards` for every member.
    pub initial_shards: Option<String>,
    /// How many register keys the run has (`<initial_shards>N`, N from 0).
    pub register_keys: u64,
}

/// A running cluster of `concord serve` processes.
pub struct ChaosCluster {
    net: Network,
    members: Vec<Member>,
    options: ClusterOptions,
    /// One channel per member, for the rig's own administrative calls.
    admin: Vec<Channel>,
}

/// A lazily connected channel to `url` (it reconnects by itself after a member restarts).
pub fn lazy_channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("member URLs are valid")
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy()
}

impl ChaosCluster {
    /// Starts the members and waits (bounded) until they agree on a leader.
    pub async fn start(options: ClusterOptions) -> Result<ChaosCluster, String> {
        let net = Network::create(options.members, options.namespaces)?;
        let members = (0..options.members)
            .map(|i| Member {
                name: format!("m{i}"),
                data_dir: options.dir.join(format!("m{i}")),
                log: options.dir.join(format!("m{i}.log")),
                child: None,
                paused: false,
                id: 0,
            })
            .collect();
        let admin = (0..options.members).map(|i| lazy_channel(&net.client_url(i))).collect();
        let mut cluster = ChaosCluster {
            net,
            members,
            options,
            admin,
        };
        for i in 0..cluster.members.len() {
            cluster.spawn(i, "new")?;
        }
        cluster
            .wait_healthy(Duration::from_secs(60))
            .await
            .map_err(|e| format!("the cluster did not start: {e}\n{}", cluster.log_tails(20)))?;
        Ok(cluster)
    }

    /// The network, for partitions.
    pub fn net(&mut self) -> &mut Network {
        &mut self.net
    }

    /// The network, read-only.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Member `i`'s name.
    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// Every member's client URL.
    pub fn client_urls(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.net.client_url(i)).collect()
    }

    fn initial_cluster(&self) -> String {
        (0..self.members.len())
            .map(|i| format!("{}={}", self.members[i].name, self.net.peer_url(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<(), String> {
        let initial_cluster = self.initial_cluster();
        let (client_url, peer_url) = (self.net.client_url(i), self.net.peer_url(i));
        let m = &self.members[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| format!("{}: {e}", m.log.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = self.net.command(i, &self.options.binary);
        command
            .arg("serve")
            .args(["--name", &m.name])
            .arg(format!("--data-dir={}", m.data_dir.display()))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &self.net.listen_peer_url(i)])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "concord-chaos"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            // Small enough that restarted and rejoining members catch up through snapshots.
            .args([
                "--snapshot-count",
                "2000",
                "--experimental-snapshot-catchup-entries",
                "500",
            ]);
        if let Some(sabotage) = &self.options.sabotage {
            command.args(["--unsafe-sabotage", sabotage]);
        }
        if self.options.stamped_revisions {
            command.arg("--experimental-stamped-revisions");
        }
        if let Some(keys) = &self.options.initial_shards {
            command.arg(format!("--experimental-initial-shards={keys}"));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.options.binary.display()))?;
        let m = &mut self.members[i];
        m.child = Some(child);
        m.paused = false;
        Ok(())
    }

    /// Whether member `i` runs (paused or not).
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// Whether member `i` runs and is not paused.
    pub fn is_serving(&self, i: usize) -> bool {
        self.is_running(i) && !self.members[i].paused
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members[i].paused = false;
    }

    /// Starts a killed member again on its data directory.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        if self.is_running(i) {
            return Ok(());
        }
        self.spawn(i, "new")
    }

    fn signal(&self, i: usize, signal: &str) -> Result<(), String> {
        let Some(child) = &self.members[i].child else {
            return Err(format!("{} is not running", self.members[i].name));
        };
        let out = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .output()
            .map_err(|e| format!("kill: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// SIGSTOP.
    pub fn pause(&mut self, i: usize) -> Result<(), String> {
        self.signal(i, "-STOP")?;
        self.members[i].paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, i: usize) -> Result<(), String> {
        if self.members[i].paused {
            self.signal(i, "-CONT")?;
            self.members[i].paused = false;
        }
        Ok(())
    }

    /// Member `i`'s status, if it answers within the admin timeout.
    pub async fn status(&self, i: usize) -> Option<StatusResponse> {
        if !self.is_serving(i) {
            return None;
        }
        let mut client = MaintenanceClient::new(self.admin[i].clone());
        match tokio::time::timeout(ADMIN_TIMEOUT, client.status(StatusRequest {})).await {
            Ok(Ok(r)) => Some(r.into_inner()),
            _ => None,
        }
    }

    /// The index of the member that the serving members agree leads, if a majority of all
    /// members name the same live one.
    pub async fn leader(&mut self) -> Option<usize> {
        let mut votes: Vec<u64> = Vec::new();
        for i in 0..self.members.len() {
            if let Some(s) = self.status(i).await {
                if let Some(h) = &s.header {
                    self.members[i].id = h.member_id;
                }
                if s.leader != 0 {
                    votes.push(s.leader);
                }
            }
        }
        let quorum = self.members.len() / 2 + 1;
        let leader = votes
            .iter()
            .copied()
            .find(|l| votes.iter().filter(|v| *v == l).count() >= quorum)?;
        self.members.iter().position(|m| m.id == leader)
    }

    /// Waits (up to `timeout`) until every member serves, they agree on a leader, and a
    /// linearizable read succeeds on each of them.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.check_healthy().await {
                Ok(leader) => return Ok(leader),
                Err(e) if Instant::now() > deadline => return Err(format!("not healthy after {timeout:?}: {e}")),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    async fn check_healthy(&mut self) -> Result<usize, String> {
        let mut leaders = Vec::new();
        for i in 0..self.members.len() {
            let s = self
                .status(i)
                .await
                .ok_or_else(|| format!("{} does not answer Status", self.members[i].name))?;
            if let Some(h) = &s.header {
                self.members[i].id = h.member_id;
            }
            leaders.push(s.leader);
        }
        if leaders[0] == 0 || leaders.iter().any(|l| *l != leaders[0]) {
            return Err(format!("members name leaders {leaders:x?}"));
        }
        for i in 0..self.members.len() {
            self.linearizable_read(i).await?;
        }
        self.members
            .iter()
            .position(|m| m.id == leaders[0])
            .ok_or_else(|| format!("leader {:x} is not one of the rig's members", leaders[0]))
    }

    async fn linearizable_read(&self, i: usize) -> Result<i64, String> {
        let mut kv = KvClient::new(self.admin[i].clone());
        let request = RangeRequest {
            key: b"chaos-health".to_vec(),
            ..Default::default()
        };
        match tokio::time::timeout(ADMIN_TIMEOUT, kv.range(request)).await {
            Ok(Ok(r)) => Ok(r.into_inner().header.map_or(0, |h| h.revision)),
            Ok(Err(e)) => Err(format!("{}: {}", self.members[i].name, e.message())),
            Err(_) => Err(format!("{}: linearizable read timed out", self.members[i].name)),
        }
    }

    /// Splits the shard holding the register keys (a sharded run's) at a register key other than
    /// the first, through a serving member; the key. Splitting where a shard already starts is
    /// refused by the cluster, and reported so.
    pub async fn split_register_shard(&mut self, rng: &mut crate::bench::SplitMix64) -> Result<String, String> {
        let prefix = self.options.initial_shards.clone().ok_or("not a sharded run")?;
        let key = format!("{prefix}{}", 1 + rng.below(self.options.register_keys.max(2) - 1));
        let serving: Vec<usize> = (0..self.len()).filter(|i| self.is_serving(*i)).collect();
        let i = *serving
            .get(rng.below(serving.len().max(1) as u64) as usize)
            .ok_or("no member is serving")?;
        let mut client = concord_proto::concordpb::shards_client::ShardsClient::new(self.admin[i].clone());
        let call = client.split(concord_proto::concordpb::ShardSplitRequest {
            key: key.clone().into_bytes(),
        });
        match tokio::time::timeout(Duration::from_secs(100), call).await {
            Ok(Ok(_)) => Ok(key),
            Ok(Err(e)) => Err(format!("{key}: {}", e.message())),
            Err(_) => Err(format!("{key}: timed out")),
        }
    }

    /// Moves one replica of a shard holding register keys (not the first shard, which every
    /// member holds) from a member holding it to one that does not, through a serving member;
    /// the shard and the two members' positions.
    pub async fn move_register_shard(
        &mut self,
        rng: &mut crate::bench::SplitMix64,
    ) -> Result<(u64, usize, usize), String> {
        use concord_proto::concordpb::shards_client::ShardsClient;
        let serving: Vec<usize> = (0..self.len()).filter(|i| self.is_serving(*i)).collect();
        let via = *serving
            .get(rng.below(serving.len().max(1) as u64) as usize)
            .ok_or("no member is serving")?;
        let mut client = ShardsClient::new(self.admin[via].clone());
        let listed = tokio::time::timeout(
            Duration::from_secs(10),
            client.list(concord_proto::concordpb::ShardListRequest {}),
        )
        .await
        .map_err(|_| "listing the shards timed out".to_string())?
        .map_err(|e| e.message().to_string())?
        .into_inner();
        let movable: Vec<_> = listed.shards.iter().filter(|s| s.id != 1).collect();
        let shard = *movable
            .get(rng.below(movable.len().max(1) as u64) as usize)
            .ok_or("no shard to move")?;
        let position = |id: u64| self.members.iter().position(|m| m.id == id);
        let holders: Vec<usize> = shard.replicas.iter().filter_map(|id| position(*id)).collect();
        let others: Vec<usize> = (0..self.len())
            .filter(|i| !holders.contains(i) && self.is_serving(*i))
            .collect();
        let from = *holders
            .get(rng.below(holders.len().max(1) as u64) as usize)
            .ok_or("no replica")?;
        let to = *others
            .get(rng.below(others.len().max(1) as u64) as usize)
            .ok_or("no member to move to")?;
        let call = client.r#move(concord_proto::concordpb::ShardMoveRequest {
            shard: shard.id,
            add: vec![self.members[to].id],
            remove: vec![self.members[from].id],
        });
        match tokio::time::timeout(Duration::from_secs(100), call).await {
            Ok(Ok(_)) => Ok((shard.id, from, to)),
            Ok(Err(e)) => Err(format!("shard {}: {}", shard.id, e.message())),
            Err(_) => Err(format!("shard {}: timed out", shard.id)),
        }
    }

    /// Asks the leader to hand leadership to member `to`.
    pub async fn move_leader(&mut self, to: usize) -> Result<(), String> {
        let leader = self.leader().await.ok_or("no leader")?;
        let target = self.members[to].id;
        let mut client = MaintenanceClient::new(self.admin[leader].clone());
        let call = client.move_leader(MoveLeaderRequest { target_id: target });
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.message().to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Takes member `i` out of the cluster for good: kill -9, MemberRemove through the leader,
    /// and its data directory deleted. [`ChaosCluster::rejoin`] brings a new member back in its
    /// place.
    pub async fn wipe(&mut self, i: usize) -> Result<(), String> {
        let id = self.members[i].id;
        self.kill(i);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let result = match self.leader().await {
                Some(leader) => {
                    let mut client = ClusterClient::new(self.admin[leader].clone());
                    let call = client.member_remove(MemberRemoveRequest { id });
                    match tokio::time::timeout(Duration::from_secs(10), call).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) if e.message().contains("member not found") => Ok(()),
                        Ok(Err(e)) => Err(e.message().to_string()),
                        Err(_) => Err("member remove timed out".into()),
                    }
                }
                None => Err("no leader".into()),
            };
            match result {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    let _ = self.restart(i);
                    return Err(format!("could not remove {}: {e}", self.members[i].name));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
        let dir = &self.members[i].data_dir;
        std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(())
    }

    /// Adds a fresh member in wiped member `i`'s place (same name, address and peer URL, a new
    /// id) and starts it with `--initial-cluster-state existing`.
    pub async fn rejoin(&mut self, i: usize) -> Result<(), String> {
        let peer_url = self.net.peer_url(i);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let result = match self.leader().await {
                Some(leader) => {
                    let mut client = ClusterClient::new(self.admin[leader].clone());
                    let call = client.member_add(MemberAddRequest {
                        peer_ur_ls: vec![peer_url.clone()],
                        is_learner: false,
                    });
                    match tokio::time::timeout(Duration::from_secs(10), call).await {
                        Ok(Ok(r)) => Ok(r.into_inner().member.map_or(0, |m| m.id)),
                        Ok(Err(e)) => Err(e.message().to_string()),
                        Err(_) => Err("member add timed out".into()),
                    }
                }
                None => Err("no leader".into()),
            };
            match result {
                Ok(id) => {
                    self.members[i].id = id;
                    break;
                }
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("could not add {} back: {e}", self.members[i].name));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
        self.spawn(i, "existing")
    }

    /// Ends every fault: mends the network, resumes paused members, restarts killed ones, and
    /// adds wiped ones back.
    pub async fn heal_all(&mut self) -> Result<(), String> {
        self.net.heal()?;
        for i in 0..self.members.len() {
            self.resume(i)?;
            if !self.is_running(i) {
                if self.members[i].data_dir.exists() {
                    self.restart(i)?;
                } else {
                    self.rejoin(i).await?;
                }
            }
        }
        Ok(())
    }

    /// Waits until every member has applied the same revision, then compares their HashKV at
    /// it. Returns the revision and hash they agree on.
    pub async fn hash_kv_agreement(&self, timeout: Duration) -> Result<(i64, u32), String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.hash_kv_once().await {
                Ok(agreed) => return Ok(agreed),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(last)
    }

    async fn hash_kv_once(&self) -> Result<(i64, u32), String> {
        let mut revisions = Vec::new();
        for i in 0..self.members.len() {
            let s = self.status(i).await.ok_or_else(|| format!("{} silent", self.name(i)))?;
            revisions.push(s.header.map_or(0, |h| h.revision));
        }
        let revision = revisions[0];
        if revisions.iter().any(|r| *r != revision) {
            return Err(format!("members are at revisions {revisions:?}"));
        }
        let mut hashes = Vec::new();
        for i in 0..self.members.len() {
            let mut client = MaintenanceClient::new(self.admin[i].clone());
            let call = client.hash_kv(HashKvRequest { revision });
            // Hashing reads the whole history: far slower than a status call on a big store.
            match tokio::time::timeout(Duration::from_secs(60), call).await {
                Ok(Ok(r)) => hashes.push(r.into_inner().hash),
                Ok(Err(e)) => return Err(format!("{}: {}", self.name(i), e.message())),
                Err(_) => return Err(format!("{}: HashKV timed out", self.name(i))),
            }
        }
        if hashes.iter().any(|h| *h != hashes[0]) {
            return Err(format!("HashKV at revision {revision} differs: {hashes:x?}"));
        }
        Ok((revision, hashes[0]))
    }

    /// Compares the replicas of every shard but the first (which HashKV covers): once every
    /// replica of a shard has applied the same log index, their hashes must agree. Returns how
    /// many shards agree.
    pub async fn shard_hash_agreement(&self, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.shard_hashes_once().await {
                Ok(agreed) => return Ok(agreed),
                Err(ShardHashes::Differ(e)) => return Err(e),
                Err(ShardHashes::NotYet(e)) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Err(format!("the shards' replicas did not settle: {last}"))
    }

    async fn shard_hashes_once(&self) -> Result<usize, ShardHashes> {
        use concord_proto::concordpb::shards_client::ShardsClient;
        use concord_proto::concordpb::{ShardHashRequest, ShardListRequest};
        let not_yet = |e: String| ShardHashes::NotYet(e);
        let listed = ShardsClient::new(self.admin[0].clone())
            .list(ShardListRequest {})
            .await
            .map_err(|e| not_yet(e.message().to_string()))?
            .into_inner();
        let mut agreed = 0;
        for shard in listed.shards.iter().filter(|s| s.id != 1) {
            let mut seen = Vec::new();
            for member in &shard.replicas {
                let i = self
                    .members
                    .iter()
                    .position(|m| m.id == *member)
                    .ok_or_else(|| not_yet(format!("shard {}: replica {member:x} is no member", shard.id)))?;
                let mut client = ShardsClient::new(self.admin[i].clone());
                let call = client.hash(ShardHashRequest { shard: shard.id });
                let answer = match tokio::time::timeout(Duration::from_secs(60), call).await {
                    Ok(Ok(answer)) => answer.into_inner(),
                    Ok(Err(e)) => return Err(not_yet(format!("{}: {}", self.name(i), e.message()))),
                    Err(_) => {
                        return Err(not_yet(format!(
                            "{}: hashing shard {} timed out",
                            self.name(i),
                            shard.id
                        )))
                    }
                };
                seen.push((
                    self.name(i).to_string(),
                    answer.applied_index,
                    answer.revision,
                    answer.hash,
                ));
            }
            let index = seen[0].1;
            if index == 0 || seen.iter().any(|s| s.1 != index) {
                return Err(not_yet(format!("shard {}: replicas at indexes {seen:?}", shard.id)));
            }
            if seen.iter().any(|s| s.3 != seen[0].3) {
                return Err(ShardHashes::Differ(format!(
                    "shard {}: replicas at log index {index} differ (member, index, revision, hash): {seen:x?}",
                    shard.id
                )));
            }
            agreed += 1;
        }
        Ok(agreed)
    }

    /// The last `lines` lines of every member's log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for m in &self.members {
            let text = std::fs::read_to_string(&m.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out.push_str(&format!("--- {} ({}) ---\n", m.name, m.log.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Why the shards' replicas were not found agreeing.
enum ShardHashes {
    /// Not settled yet (a replica behind, a member not answering): ask again.
    NotYet(String),
    /// Replicas at the same log index hold different data.
    Differ(String),
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
