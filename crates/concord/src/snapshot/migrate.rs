//! Migration in place: `concord serve` started on an etcd member's data directory.
//!
//! etcd keeps its state in `<data-dir>/member/snap/db` (the bbolt backend) beside its WAL in
//! `member/wal/`; Concord keeps `member/kv.redb`, `member/raft/` and `member/cluster.pb`. When
//! `serve` finds etcd's backend and no Concord store, it moves etcd's `member/` aside, untouched,
//! to `member.etcd-original/`, imports the backend (every key revision, the compaction, leases,
//! users, roles and the auth switch) into a new Concord store, and writes a new membership from
//! the member's own flags, exactly as `concord snapshot restore` does with a snapshot: the member
//! then starts a new Raft log, as a member of a new cluster. Because Concord computes member and
//! cluster ids as etcd does, the same `--name`, `--initial-cluster` and `--initial-cluster-token`
//! give the same ids etcd had.
//!
//! The new directory is built beside the old one (`member.migrating/`) and renamed into place, so a
//! migration that fails (a full disk, a damaged backend) leaves etcd's files as they were and is
//! tried again at the next start.

use std::path::{Path, PathBuf};

use concord_server::config::ServerConfig;
use concord_storage::MvccStore;

use super::{human_bytes, make_member, sync_parent, NewMember};

/// Where etcd's member directory is kept once Concord has imported it.
pub const ORIGINAL_DIR: &str = "member.etcd-original";
/// Where the new member directory is built before it is renamed to `member`.
const BUILDING_DIR: &str = "member.migrating";

/// What a migration did, for the member's log.
#[derive(Debug)]
pub struct Migrated {
    /// The etcd backend that was imported.
    pub backend: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// The store revision it held.
    pub revision: i64,
    /// Where etcd's member directory now is.
    pub original: PathBuf,
}

/// Imports an etcd member's data directory at `cfg.data_dir` into Concord's layout, if it is
/// one; `None` when it holds a Concord member already or nothing of etcd's.
pub fn etcd_data_dir(cfg: &ServerConfig) -> Result<Option<Migrated>, String> {
    let data_dir = &cfg.data_dir;
    let member = data_dir.join("member");
    let original = data_dir.join(ORIGINAL_DIR);
    let io = |path: &Path, e: std::io::Error| format!("migrating etcd's data: {}: {e}", path.display());
    if member.join("kv.redb").exists() {
        return Ok(None);
    }
    if member.join("snap").join("db").is_file() {
        if original.exists() {
            return Err(format!(
                "{} holds etcd's data, and {} exists too: move one of them away",
                member.display(),
                original.display()
            ));
        }
        std::fs::rename(&member, &original).map_err(|e| io(&member, e))?;
        sync_parent(&original).map_err(|e| io(&original, e))?;
    } else if member.exists() || !original.join("snap").join("db").is_file() {
        // A Concord member that has not written its store yet, or a new data directory.
        return Ok(None);
    }
    // etcd's files are aside and `member/` is absent: (re)build it.
    let backend = original.join("snap").join("db");
    let building = data_dir.join(BUILDING_DIR);
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(|e| io(&building, e))?;
    }
    let source = backend.display().to_string();
    let fill = |store: &Path| -> Result<(), String> {
        let bytes = std::fs::read(&backend).map_err(|e| io(&backend, e))?;
        MvccStore::import_etcd_snapshot(bytes, store)
            .map_err(|e| format!("{source}: not a usable etcd backend: {e}"))?;
        Ok(())
    };
    let new = NewMember {
        name: &cfg.name,
        initial_cluster: &cfg.initial_cluster,
        token: &cfg.initial_cluster_token,
        client_urls: &cfg.advertise_client_urls,
    };
    let made = match make_member(&building, &new, &source, fill) {
        Ok(made) => made,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&building);
            return Err(e);
        }
    };
    std::fs::rename(&building, &member).map_err(|e| io(&building, e))?;
    sync_parent(&member).map_err(|e| io(&member, e))?;
    let size = std::fs::metadata(&backend).map(|m| m.len()).unwrap_or(0);
    Ok(Some(Migrated {
        backend,
        size,
        revision: made.revision,
        original,
    }))
}

impl std::fmt::Display for Migrated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "imported etcd's backend {} ({}, revision {}); etcd's files are kept unchanged in {}",
            self.backend.display(),
            human_bytes(self.size),
            self.revision,
            self.original.display()
        )
    }
}
