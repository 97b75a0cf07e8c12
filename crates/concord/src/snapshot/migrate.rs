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
//! etcd commits its backend only every `--backend-batch-interval` (100 ms by default), and a
//! member that was killed rather than stopped has acknowledged writes in its WAL alone: the
//! import then applies every entry etcd committed after the backend's consistent index, read
//! from `member/wal/` (`MvccStore::replay_etcd_wal`), as etcd itself would at its next start.
//! When the WAL holds a committed request that cannot be replayed faithfully, the migration
//! refuses, puts etcd's `member/` back, and asks for etcd to be started once and stopped cleanly.
//!
//! The new directory is built beside the old one (`member.migrating/`) and renamed into place, so a
//! migration that fails (a full disk, a damaged backend) leaves etcd's files as they were and is
//! tried again at the next start.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use concord_server::config::ServerConfig;
use concord_storage::{MvccStore, ReplayError, ReplayRules, WalReplay};

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
    /// What was replayed from etcd's WAL (`None`: the member had no WAL).
    pub wal: Option<WalReplay>,
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
    let mut wal = None;
    let mut refused = false;
    let fill = |store: &Path| -> Result<(), String> {
        let bytes = std::fs::read(&backend).map_err(|e| io(&backend, e))?;
        MvccStore::import_etcd_snapshot(bytes, store)
            .map_err(|e| format!("{source}: not a usable etcd backend: {e}"))?;
        let store = MvccStore::open(store).map_err(|e| format!("{}: {e}", store.display()))?;
        let hash = |password: &str| hash_password(password, cfg.auth.bcrypt_cost);
        let rules = ReplayRules {
            min_lease_ttl: min_lease_ttl(cfg),
            hash_password: &hash,
        };
        match store.replay_etcd_wal(&original, &rules) {
            Ok(replayed) => wal = replayed,
            Err(ReplayError::Refused(why)) => {
                refused = true;
                return Err(why);
            }
            Err(e) => return Err(format!("{}: {e}", original.display())),
        }
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
            if refused {
                // Nothing Concord can do makes this work: etcd must run once, on its own files.
                std::fs::rename(&original, &member).map_err(|e| io(&original, e))?;
                sync_parent(&member).map_err(|e| io(&member, e))?;
                return Err(format!("{e} (etcd's files are back in {})", member.display()));
            }
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
        wal,
    }))
}

/// etcd's minimum lease TTL, which its lessor gives a lease granted for less: 3/2 of the
/// election timeout in whole heartbeat ticks, in seconds rounded up (etcd's `minTTL`).
fn min_lease_ttl(cfg: &ServerConfig) -> i64 {
    let tick = cfg.heartbeat_interval.as_millis().max(1);
    let ticks = cfg.election_timeout.as_millis() / tick;
    ((3 * ticks / 2) * tick).div_ceil(1000) as i64
}

/// A password etcd 3.4 logged in the clear, hashed as its apply does (bcrypt; Go's bcrypt of
/// etcd 3.4 uses the first 72 bytes of a longer one) in etcd's `hashedPassword` form.
fn hash_password(password: &str, cost: u32) -> Result<String, String> {
    let cost = if (4..=31).contains(&cost) {
        cost
    } else {
        concord_server::auth::DEFAULT_BCRYPT_COST
    };
    let hashed = bcrypt::hash(password, cost).map_err(|e| format!("cannot hash a password: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(hashed))
}

impl std::fmt::Display for Migrated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "imported etcd's backend {} ({})",
            self.backend.display(),
            human_bytes(self.size)
        )?;
        if let Some(wal) = self.wal.as_ref().filter(|w| w.commit > w.after) {
            write!(
                f,
                " and the entries {}..={} etcd had committed after it, from its WAL ({} requests applied, {} \
                 refused as etcd refused them, {} without user data)",
                wal.after + 1,
                wal.commit,
                wal.applied,
                wal.refused,
                wal.skipped
            )?;
        }
        if let Some(torn) = self.wal.as_ref().and_then(|w| w.torn_tail.as_ref()) {
            write!(
                f,
                "; the torn last record of {} (from byte {}, never acknowledged) was left out",
                torn.file.display(),
                torn.offset
            )?;
        }
        write!(
            f,
            "; revision {}; etcd's files are kept unchanged in {}",
            self.revision,
            self.original.display()
        )
    }
}
