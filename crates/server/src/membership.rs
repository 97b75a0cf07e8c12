//! Who is in the cluster: member ids, names and URLs, and the cluster id.
//!
//! Ids are computed the way etcd computes them (a SHA-1 over the sorted peer
//! URLs and the cluster token, and over the sorted member ids for the cluster
//! id), so the same `--initial-cluster` gives the same ids as etcd would.
//! The state is kept in the data directory; once a member has started, its
//! `--initial-*` flags are ignored, as in etcd.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use concord_proto::concordpb::ClusterState;
use concord_proto::etcdserverpb::Member;
use prost::Message as _;

/// Errors found while building or loading the membership.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The flags do not describe a cluster this member can be part of.
    #[error("{0}")]
    Config(String),
    /// The membership file could not be read or written.
    #[error("membership file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The membership file is damaged.
    #[error("membership file {0} is corrupt")]
    Corrupt(PathBuf),
}

/// etcd's member id: SHA-1 of the sorted peer URLs joined, then the token.
pub fn compute_member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut hasher = sha1_smol::Sha1::new();
    hasher.update(urls.concat().as_bytes());
    hasher.update(token.as_bytes());
    let digest = hasher.digest().bytes();
    u64::from_be_bytes(digest[..8].try_into().expect("sha1 has 20 bytes"))
}

/// etcd's cluster id: SHA-1 of the sorted member ids, big-endian.
pub fn compute_cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut hasher = sha1_smol::Sha1::new();
    for id in ids {
        hasher.update(&id.to_be_bytes());
    }
    let digest = hasher.digest().bytes();
    u64::from_be_bytes(digest[..8].try_into().expect("sha1 has 20 bytes"))
}

/// Parses etcd's `--initial-cluster` (`name=url,name=url`); a name may repeat
/// to give one member several peer URLs.
pub fn parse_initial_cluster(spec: &str) -> Result<Vec<(String, Vec<String>)>, MembershipError> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, url) = part
            .split_once('=')
            .ok_or_else(|| MembershipError::Config(format!("--initial-cluster: {part:?} is not name=url")))?;
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => members.push((name.to_string(), vec![url.to_string()])),
        }
    }
    if members.is_empty() {
        return Err(MembershipError::Config("--initial-cluster is empty".into()));
    }
    Ok(members)
}

/// The live membership of this member's cluster, shared by the services and
/// updated when entries that change it are applied.
pub struct Membership {
    path: PathBuf,
    state: RwLock<ClusterState>,
}

impl Membership {
    /// Loads the membership kept in `dir`, if this member has started before.
    pub fn load(dir: &Path) -> Result<Option<Membership>, MembershipError> {
        let path = dir.join("cluster.pb");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(MembershipError::Io { path, source }),
        };
        let state = ClusterState::decode(bytes.as_slice()).map_err(|_| MembershipError::Corrupt(path.clone()))?;
        Ok(Some(Membership {
            path,
            state: RwLock::new(state),
        }))
    }

    /// Creates the membership of a new cluster from etcd's bootstrap flags and saves it in `dir`.
    pub fn bootstrap(
        dir: &Path,
        name: &str,
        initial_cluster: &str,
        token: &str,
        client_urls: &[String],
    ) -> Result<Membership, MembershipError> {
        let spec = parse_initial_cluster(initial_cluster)?;
        if !spec.iter().any(|(n, _)| n == name) {
            return Err(MembershipError::Config(format!(
                "couldn't find local name {name:?} in the initial cluster configuration"
            )));
        }
        let members: Vec<Member> = spec
            .into_iter()
            .map(|(member_name, peer_urls)| Member {
                id: compute_member_id(&peer_urls, token),
                client_ur_ls: if member_name == name {
                    client_urls.to_vec()
                } else {
                    vec![]
                },
                name: member_name,
                peer_ur_ls: peer_urls,
                is_learner: false,
            })
            .collect();
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        if unique.len() != ids.len() {
            return Err(MembershipError::Config(
                "--initial-cluster has duplicate peer URLs".into(),
            ));
        }
        let local = members.iter().find(|m| m.name == name).expect("checked above");
        let state = ClusterState {
            cluster_id: compute_cluster_id(&ids),
            local_member_id: local.id,
            members,
        };
        let membership = Membership {
            path: dir.join("cluster.pb"),
            state: RwLock::new(state),
        };
        membership.save()?;
        Ok(membership)
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> u64 {
        self.state.read().expect("membership lock").cluster_id
    }

    /// This member's id.
    pub fn local_id(&self) -> u64 {
        self.state.read().expect("membership lock").local_member_id
    }

    /// Every member, in the order they were added.
    pub fn members(&self) -> Vec<Member> {
        self.state.read().expect("membership lock").members.clone()
    }

    /// The ids of the voting members (not learners), ascending.
    pub fn voter_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.members().iter().filter(|m| !m.is_learner).map(|m| m.id).collect();
        ids.sort_unstable();
        ids
    }

    /// One member by id.
    pub fn member(&self, id: u64) -> Option<Member> {
        self.state
            .read()
            .expect("membership lock")
            .members
            .iter()
            .find(|m| m.id == id)
            .cloned()
    }

    /// The membership as it is kept on disk, for shipping in snapshots.
    pub fn state(&self) -> ClusterState {
        self.state.read().expect("membership lock").clone()
    }

    /// Takes over the members of a snapshot; this member's own id stays.
    pub fn replace_members(&self, from: ClusterState) -> Result<(), MembershipError> {
        {
            let mut state = self.state.write().expect("membership lock");
            state.cluster_id = from.cluster_id;
            state.members = from.members;
        }
        self.save()
    }

    /// Adds a member, or updates the one with the same id (a promotion).
    pub fn upsert(&self, member: Member) -> Result<(), MembershipError> {
        {
            let mut state = self.state.write().expect("membership lock");
            match state.members.iter_mut().find(|m| m.id == member.id) {
                Some(existing) => {
                    existing.is_learner = member.is_learner;
                    if !member.peer_ur_ls.is_empty() {
                        existing.peer_ur_ls = member.peer_ur_ls;
                    }
                }
                None => state.members.push(member),
            }
        }
        self.save()
    }

    /// Removes a member; returns whether it was there.
    pub fn remove(&self, id: u64) -> Result<bool, MembershipError> {
        let removed = {
            let mut state = self.state.write().expect("membership lock");
            let before = state.members.len();
            state.members.retain(|m| m.id != id);
            before != state.members.len()
        };
        if removed {
            self.save()?;
        }
        Ok(removed)
    }

    /// Changes a member's peer URLs (etcd's MemberUpdate).
    pub fn update_peer_urls(&self, id: u64, peer_urls: Vec<String>) -> Result<(), MembershipError> {
        {
            let mut state = self.state.write().expect("membership lock");
            if let Some(m) = state.members.iter_mut().find(|m| m.id == id) {
                m.peer_ur_ls = peer_urls;
            }
        }
        self.save()
    }

    /// Adopts the membership fetched from a running cluster when this member
    /// joins it, finding itself by its peer URLs; saves it in `dir`.
    pub fn join(dir: &Path, remote: ClusterState, my_peer_urls: &[String]) -> Result<Membership, MembershipError> {
        let mut mine = my_peer_urls.to_vec();
        mine.sort();
        let me = remote
            .members
            .iter()
            .find(|m| {
                let mut urls = m.peer_ur_ls.clone();
                urls.sort();
                urls == mine
            })
            .ok_or_else(|| {
                MembershipError::Config(format!(
                    "the cluster has no member with peer URLs {my_peer_urls:?}; add it first (etcdctl member add)"
                ))
            })?;
        let state = ClusterState {
            cluster_id: remote.cluster_id,
            local_member_id: me.id,
            members: remote.members.clone(),
        };
        let membership = Membership {
            path: dir.join("cluster.pb"),
            state: RwLock::new(state),
        };
        membership.save()?;
        Ok(membership)
    }

    /// Records a member's name and client URLs, as announced through Raft.
    pub fn publish(&self, announced: &Member) -> Result<(), MembershipError> {
        {
            let mut state = self.state.write().expect("membership lock");
            let Some(member) = state.members.iter_mut().find(|m| m.id == announced.id) else {
                return Ok(());
            };
            if member.name == announced.name && member.client_ur_ls == announced.client_ur_ls {
                return Ok(());
            }
            member.name = announced.name.clone();
            member.client_ur_ls = announced.client_ur_ls.clone();
        }
        self.save()
    }

    /// Writes the membership atomically: a temporary file, fsync, rename.
    fn save(&self) -> Result<(), MembershipError> {
        let bytes = self.state.read().expect("membership lock").encode_to_vec();
        let tmp = self.path.with_extension("pb.tmp");
        let io = |source| MembershipError::Io {
            path: self.path.clone(),
            source,
        };
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_order_independent() {
        let a = compute_member_id(&["http://b:2380".into(), "http://a:2380".into()], "tok");
        let b = compute_member_id(&["http://a:2380".into(), "http://b:2380".into()], "tok");
        assert_eq!(a, b);
        assert_ne!(
            a,
            compute_member_id(&["http://a:2380".into(), "http://b:2380".into()], "other")
        );
        assert_eq!(compute_cluster_id(&[3, 1, 2]), compute_cluster_id(&[1, 2, 3]));
    }

    #[test]
    fn initial_cluster_parses_and_rejects_garbage() {
        let m = parse_initial_cluster("a=http://x:1,b=http://y:2,a=http://z:3").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].1, vec!["http://x:1".to_string(), "http://z:3".to_string()]);
        assert!(parse_initial_cluster("nonsense").is_err());
    }
}
