//! etcd's committed WAL tail, applied to a store imported from the same member's backend.
//!
//! A store made by [`MvccStore::import_etcd_snapshot`] from an etcd member's `member/snap/db`
//! stands at the backend's `consistent_index`; the entries etcd committed after it are only in
//! the WAL (see `wal.rs`). [`MvccStore::replay_etcd_wal`] applies them as etcd's apply would
//! have, so that every write etcd acknowledged is there, with etcd's revisions:
//!
//! - every normal entry with an index above the store's applied index and at most the WAL's
//!   commit index, in log order, in one write transaction through [`MvccStore::apply`] (the same
//!   MVCC, lease and auth code that applies Concord's own log);
//! - each request with its sender (etcd's `RequestHeader`: user and auth revision) in an
//!   `Authorized` envelope, so permissions are checked as etcd's auth applier checks them, and a
//!   request etcd refused is refused again (and changes nothing);
//! - compactions and alarms as the member's own (etcd checks no permission for them), with the
//!   backend's alarms raised first, so that a write etcd refused under NOSPACE or CORRUPT is
//!   refused here too; the alarms are lowered again at the end, as an import leaves them out;
//! - lease grants with the TTL raised to etcd's minimum, as etcd's lessor does when it applies
//!   one; user additions and password changes from etcd 3.4, whose entries carry the password
//!   itself (3.4 hashes it when it applies), hashed by the caller's `hash_password`.
//!
//! Skipped, because they carry no user data or none a migrated member keeps: empty entries,
//! configuration changes, v2 requests (member attributes, the cluster version; the v2 keyspace
//! is not migrated), etcd 3.5's membership and version requests, reads that went through Raft,
//! authentications (tokens do not survive a migration), lease checkpoints.
//!
//! Anything else (a request this code does not know, committed entries the WAL lacks) is
//! refused as [`ReplayError::Refused`]: replaying part of the log would lose the rest.
//!
//! This is what etcd itself does at its next start (it applies every committed entry above the
//! backend's consistent index), down to re-applying the entries that changed no key (lease
//! grants in etcd 3.4) and are in the backend already though the index did not move for them;
//! applying those again finds them done and changes nothing.

use std::path::Path;

use concord_proto::concordpb::auth_command::Op as AuthOp;
use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::{AuthCommand, Authorized, RaftCommand, Requester};
use concord_proto::etcdserverpb::alarm_request::AlarmAction;
use concord_proto::etcdserverpb::{AlarmMember, AlarmRequest, InternalRaftRequest, Request as V2Request};
use prost::Message as _;

use super::bolt_read::BoltFile;
use super::encoding::ALARM;
use super::wal::{read_etcd_wal, EtcdWal, TornTail, WalEntry, WalError};
use crate::error::StorageError;
use crate::store::{ApplyEntry, MvccStore};

/// etcd's `MaxLeaseTTL`: a grant asking for more is refused.
const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// What etcd's apply took from the member's flags and its own code, which the replay must do
/// the same way.
pub struct ReplayRules<'a> {
    /// etcd's minimum lease TTL in seconds (`--election-timeout` × 3/2, in whole ticks, rounded
    /// up): a lease granted for less gets this.
    pub min_lease_ttl: i64,
    /// Hashes a password an etcd 3.4 entry carries in the clear, as etcd's apply would (bcrypt
    /// at `--bcrypt-cost`), returning etcd's `hashedPassword` form (base64 of the bcrypt string).
    pub hash_password: &'a dyn Fn(&str) -> Result<String, String>,
}

/// What a replay did, for the member's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalReplay {
    /// The backend's consistent index: the entries after it were replayed.
    pub after: u64,
    /// The WAL's commit index: the last entry replayed.
    pub commit: u64,
    /// Requests applied that changed or kept the store as etcd's apply did.
    pub applied: usize,
    /// Requests applied with the error etcd answered them with (a permission refused, a
    /// compacted revision...), which changed nothing.
    pub refused: usize,
    /// Entries without user data to replay (see the module docs).
    pub skipped: usize,
    /// The store's revision afterwards.
    pub revision: i64,
    /// A torn last record that was left out (it was never acknowledged).
    pub torn_tail: Option<TornTail>,
}

/// Why the WAL's tail could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The WAL cannot be read (damaged, or not etcd's).
    #[error("etcd's WAL: {0}")]
    Wal(#[from] WalError),
    /// The WAL holds committed entries this code cannot replay faithfully. etcd can: started
    /// once and stopped cleanly, it applies them and commits its backend.
    #[error("{0}")]
    Refused(String),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What to do with one committed entry.
enum Replay {
    /// Apply this command.
    Apply(RaftCommand),
    /// Nothing to replay; the reason, for the log.
    Skip(&'static str),
}

impl MvccStore {
    /// Applies the committed entries of the WAL of the etcd member directory `etcd_member`
    /// (`<data-dir>/member`, holding `wal/` and `snap/db`) that follow the store's applied
    /// index, on a store imported from that member's backend (see the module docs), and makes
    /// them durable. `None` when the member has no WAL.
    pub fn replay_etcd_wal(
        &self,
        etcd_member: &Path,
        rules: &ReplayRules<'_>,
    ) -> Result<Option<WalReplay>, ReplayError> {
        let wal_dir = etcd_member.join("wal");
        if !wal_dir.is_dir() {
            return Ok(None);
        }
        let after = self.applied_index();
        let wal = read_etcd_wal(&wal_dir, after)?;
        let mut done = WalReplay {
            after,
            commit: wal.commit.max(after),
            applied: 0,
            refused: 0,
            skipped: 0,
            revision: self.current_revision(),
            torn_tail: wal.torn_tail.clone(),
        };
        let entries = committed_tail(&wal, after, etcd_member)?;
        let mut commands = Vec::with_capacity(entries.len());
        for entry in entries {
            match replay_of(entry, rules).map_err(|why| ReplayError::Refused(refusal(entry.index, &why)))? {
                Replay::Apply(command) => commands.push((entry.index, command)),
                Replay::Skip(why) => {
                    tracing::debug!(index = entry.index, "etcd's WAL: skipping {why}");
                    done.skipped += 1;
                }
            }
        }
        let Some(&(first, _)) = commands.first() else {
            return Ok(Some(done));
        };

        // The backend's alarms hold while the tail applies, and are lowered after it.
        let raised = backend_alarms(etcd_member)?;
        let mut lowered = raised.clone();
        for (_, command) in &commands {
            if let Some(Op::Alarm(req)) = open_member(command) {
                if req.action == AlarmAction::Activate as i32 {
                    lowered.push(AlarmMember {
                        member_id: req.member_id,
                        alarm: req.alarm,
                    });
                }
            }
        }
        let seeds: Vec<RaftCommand> = raised.iter().map(|a| alarm(a, AlarmAction::Activate)).collect();
        let clears: Vec<RaftCommand> = lowered.iter().map(|a| alarm(a, AlarmAction::Deactivate)).collect();
        let mut batch: Vec<ApplyEntry<'_>> = seeds
            .iter()
            .map(|c| ApplyEntry {
                index: first,
                command: Some(c),
                stamp: None,
            })
            .collect();
        batch.extend(commands.iter().map(|(index, c)| ApplyEntry {
            index: *index,
            command: Some(c),
            stamp: None,
        }));
        batch.extend(clears.iter().map(|c| ApplyEntry {
            index: done.commit,
            command: Some(c),
            stamp: None,
        }));
        batch.push(ApplyEntry {
            index: done.commit,
            command: None,
            stamp: None,
        });
        let results = self.apply(&batch)?;
        // One result per command, in order: the seeds', the tail's, the clears'.
        let replayed = results
            .get(seeds.len()..seeds.len() + commands.len())
            .unwrap_or_default();
        if replayed.len() != commands.len() {
            return Err(StorageError::Corrupt(format!(
                "replaying etcd's WAL: {} results for {} requests",
                replayed.len(),
                commands.len()
            ))
            .into());
        }
        for (index, result) in replayed {
            match result {
                Ok(_) => done.applied += 1,
                Err(err) => {
                    tracing::info!(index, "etcd's WAL: request applied as etcd answered it: {err}");
                    done.refused += 1;
                }
            }
        }
        self.sync()?;
        done.revision = self.current_revision();
        Ok(Some(done))
    }
}

/// The committed entries to replay: those after `after` up to the commit index, checked to be
/// all there. When the WAL's entries start later, a Raft snapshot recorded just before them
/// covers the gap: etcd commits its backend when it makes one, so the backend holds what the
/// purged WAL files held (unless the snapshot came from the leader and still waits in
/// `snap/<index>.snap.db` to replace the backend).
fn committed_tail<'w>(wal: &'w EtcdWal, after: u64, etcd_member: &Path) -> Result<&'w [WalEntry], ReplayError> {
    if wal.commit <= after {
        return Ok(&[]);
    }
    let committed = wal.entries.partition_point(|e| e.index <= wal.commit);
    let entries = &wal.entries[..committed];
    let first = entries.first().map_or(wal.commit + 1, |e| e.index);
    if first != after + 1 {
        let covered = first - 1;
        let pending = etcd_member.join("snap").join(format!("{covered:016x}.snap.db"));
        if !wal.snapshots.contains(&covered) || pending.exists() {
            return Err(ReplayError::Refused(format!(
                "etcd's backend stands at index {after}, but its WAL holds no entries {}..={covered}",
                after + 1
            )));
        }
    }
    let last = entries.last().map_or(first - 1, |e| e.index);
    if last < wal.commit {
        return Err(ReplayError::Refused(format!(
            "etcd's WAL says entries up to {} are committed, but holds them only up to {last}",
            wal.commit
        )));
    }
    Ok(entries)
}

/// The message of a refusal at entry `index`, with the way out.
fn refusal(index: u64, why: &str) -> String {
    format!(
        "etcd's WAL: committed entry {index} cannot be replayed ({why}); restart etcd once and stop it \
         cleanly, then start Concord"
    )
}

/// What to do with one committed entry; `Err` says why it cannot be replayed.
fn replay_of(entry: &WalEntry, rules: &ReplayRules<'_>) -> Result<Replay, String> {
    match entry.entry_type {
        0 => {}
        1 | 2 => return Ok(Replay::Skip("a membership change")),
        other => return Err(format!("an entry of unknown type {other}")),
    }
    if entry.data.is_empty() {
        return Ok(Replay::Skip("a new leader's empty entry"));
    }
    if let Ok(req) = InternalRaftRequest::decode(entry.data.as_slice()) {
        if let Some(replay) = internal_request(req, rules)? {
            return Ok(replay);
        }
    }
    // etcd 3.4 proposes some v2 requests as they are, not in an InternalRaftRequest (etcd's
    // apply tries that first too).
    match V2Request::decode(entry.data.as_slice()) {
        Ok(req) if !req.method().is_empty() => Ok(v2_request(&req)),
        _ => Err("a request this version of Concord does not know".into()),
    }
}

/// A v2 request: the v2 store is not migrated.
fn v2_request(req: &V2Request) -> Replay {
    let path = req.path();
    if path != "/0" && !path.starts_with("/0/") && !matches!(req.method(), "GET" | "QGET" | "HEAD" | "SYNC") {
        tracing::warn!(
            method = req.method(),
            path,
            "etcd's WAL holds a v2 write; etcd's v2 keyspace is not migrated"
        );
    }
    Replay::Skip("a v2 request")
}

/// An etcd v3 request as a command, in etcd's order of precedence (`applierV3backend.Apply`);
/// `None` when it holds none of the requests known here.
fn internal_request(req: InternalRaftRequest, rules: &ReplayRules<'_>) -> Result<Option<Replay>, String> {
    let sender = Requester {
        username: req.header.as_ref().map(|h| h.username.clone()).unwrap_or_default(),
        auth_revision: req.header.as_ref().map_or(0, |h| h.auth_revision),
        member: false,
    };
    let from_sender = |op: Op| {
        Replay::Apply(RaftCommand {
            op: Some(Op::Authorized(Box::new(Authorized {
                requester: Some(sender.clone()),
                command: Some(Box::new(RaftCommand { op: Some(op) })),
            }))),
        })
    };
    let auth = |op: AuthOp| from_sender(Op::Auth(AuthCommand { op: Some(op) }));
    let replay = if req.v2.is_some() {
        Replay::Skip("a v2 request")
    } else if req.range.is_some() {
        Replay::Skip("a read")
    } else if let Some(put) = req.put {
        from_sender(Op::Put(put))
    } else if let Some(delete) = req.delete_range {
        from_sender(Op::DeleteRange(delete))
    } else if let Some(txn) = req.txn {
        from_sender(Op::Txn(txn))
    } else if let Some(compaction) = req.compaction {
        as_member(Op::Compaction(compaction))
    } else if let Some(mut grant) = req.lease_grant {
        if grant.ttl > MAX_LEASE_TTL {
            Replay::Skip("a lease grant etcd refused (TTL too large)")
        } else {
            grant.ttl = grant.ttl.max(rules.min_lease_ttl);
            from_sender(Op::LeaseGrant(grant))
        }
    } else if let Some(revoke) = req.lease_revoke {
        from_sender(Op::LeaseRevoke(revoke))
    } else if req.lease_checkpoint.is_some() {
        Replay::Skip("a lease checkpoint")
    } else if let Some(alarm) = req.alarm {
        as_member(Op::Alarm(alarm))
    } else if req.authenticate.is_some() {
        Replay::Skip("an authentication")
    } else if let Some(enable) = req.auth_enable {
        auth(AuthOp::Enable(enable))
    } else if let Some(disable) = req.auth_disable {
        auth(AuthOp::Disable(disable))
    } else if req.auth_status.is_some() {
        Replay::Skip("a read")
    } else if let Some(mut add) = req.auth_user_add {
        let no_password = add.options.as_ref().is_some_and(|o| o.no_password);
        if !no_password && add.hashed_password.is_empty() {
            add.hashed_password = (rules.hash_password)(&add.password)?;
        }
        add.password.clear();
        auth(AuthOp::UserAdd(add))
    } else if let Some(delete) = req.auth_user_delete {
        auth(AuthOp::UserDelete(delete))
    } else if req.auth_user_get.is_some() {
        Replay::Skip("a read")
    } else if let Some(mut change) = req.auth_user_change_password {
        if change.hashed_password.is_empty() {
            change.hashed_password = (rules.hash_password)(&change.password)?;
        }
        change.password.clear();
        auth(AuthOp::UserChangePassword(change))
    } else if let Some(grant) = req.auth_user_grant_role {
        auth(AuthOp::UserGrantRole(grant))
    } else if let Some(revoke) = req.auth_user_revoke_role {
        auth(AuthOp::UserRevokeRole(revoke))
    } else if req.auth_user_list.is_some() || req.auth_role_list.is_some() || req.auth_role_get.is_some() {
        Replay::Skip("a read")
    } else if let Some(add) = req.auth_role_add {
        auth(AuthOp::RoleAdd(add))
    } else if let Some(delete) = req.auth_role_delete {
        auth(AuthOp::RoleDelete(delete))
    } else if let Some(grant) = req.auth_role_grant_permission {
        auth(AuthOp::RoleGrantPermission(grant))
    } else if let Some(revoke) = req.auth_role_revoke_permission {
        auth(AuthOp::RoleRevokePermission(revoke))
    } else if req.cluster_version_set.is_some()
        || req.cluster_member_attr_set.is_some()
        || req.downgrade_info_set.is_some()
    {
        Replay::Skip("a membership or version change")
    } else {
        return Ok(None);
    };
    Ok(Some(replay))
}

/// A command as the member's own: etcd checks no permission for it.
fn as_member(op: Op) -> Replay {
    Replay::Apply(member_command(op))
}

fn member_command(op: Op) -> RaftCommand {
    RaftCommand {
        op: Some(Op::Authorized(Box::new(Authorized {
            requester: Some(Requester {
                member: true,
                ..Default::default()
            }),
            command: Some(Box::new(RaftCommand { op: Some(op) })),
        }))),
    }
}

/// The operation of a command made by [`member_command`].
fn open_member(command: &RaftCommand) -> Option<&Op> {
    crate::auth::open_envelope(command).0?.op.as_ref()
}

/// Raises or lowers one alarm, as the member.
fn alarm(alarm: &AlarmMember, action: AlarmAction) -> RaftCommand {
    member_command(Op::Alarm(AlarmRequest {
        action: action as i32,
        member_id: alarm.member_id,
        alarm: alarm.alarm,
    }))
}

/// The alarms raised in the member's backend (`snap/db`'s `alarm` bucket).
fn backend_alarms(etcd_member: &Path) -> Result<Vec<AlarmMember>, StorageError> {
    let backend = etcd_member.join("snap").join("db");
    let file = BoltFile::parse(std::fs::read(&backend)?)?;
    let Some(bucket) = file.bucket(ALARM)? else {
        return Ok(Vec::new());
    };
    file.entries(bucket)?
        .into_iter()
        .filter(|e| !e.is_bucket)
        .map(|e| {
            AlarmMember::decode(e.key).map_err(|err| StorageError::Corrupt(format!("etcd's backend: an alarm: {err}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use concord_proto::authpb::{permission::Type as PermType, Permission};
    use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
    use concord_proto::etcdserverpb::request_op::Request as TxnOp;
    use concord_proto::etcdserverpb::*;

    use super::*;
    use crate::etcd_format::wal::tests::WalWriter;

    fn rules() -> ReplayRules<'static> {
        ReplayRules {
            min_lease_ttl: 5,
            hash_password: &|password| Ok(base64_of(&format!("hashed:{password}"))),
        }
    }

    fn base64_of(s: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn user(name: &str, auth_revision: u64) -> Option<RequestHeader> {
        Some(RequestHeader {
            id: 7,
            username: name.into(),
            auth_revision,
        })
    }

    fn put(key: &str, value: &str) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }
    }

    /// An etcd member directory whose WAL holds `requests` at indexes 1.., all committed, and a
    /// store that has applied nothing yet.
    fn member_with(requests: &[Vec<u8>]) -> (tempfile::TempDir, MvccStore) {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::new();
        for (i, data) in requests.iter().enumerate() {
            w.entry(i as u64 + 1, 1, data);
        }
        w.state(requests.len() as u64);
        w.write_to(&dir.path().join("wal"));
        // An empty backend: no alarms.
        let bolt = super::super::bolt_write::encode_file(&Default::default());
        std::fs::create_dir_all(dir.path().join("snap")).unwrap();
        std::fs::write(dir.path().join("snap").join("db"), bolt).unwrap();
        let store = MvccStore::open(&dir.path().join("kv.redb")).unwrap();
        (dir, store)
    }

    fn value_of(store: &MvccStore, key: &str) -> Option<(Vec<u8>, i64, i64)> {
        let (resp, _) = store
            .range(&RangeRequest {
                key: key.into(),
                ..Default::default()
            })
            .unwrap();
        resp.kvs.first().map(|kv| (kv.value.clone(), kv.mod_revision, kv.lease))
    }

    #[test]
    fn replays_writes_leases_and_auth_as_etcd_applied_them() {
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Value as i32,
                key: b"a".to_vec(),
                target_union: Some(TargetUnion::Value(b"1".to_vec())),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(TxnOp::RequestPut(put("b", "from-txn"))),
            }],
            ..Default::default()
        };
        let requests = vec![
            Vec::new(), // a new leader's empty entry
            InternalRaftRequest {
                header: user("", 0),
                put: Some(put("a", "1")),
                ..Default::default()
            }
            .encode_to_vec(),
            // etcd 3.4's publish: a bare v2 request.
            V2Request {
                id: Some(9),
                method: Some("PUT".into()),
                path: Some("/0/members/8e9e05c52164694d/attributes".into()),
                val: Some("{\"name\":\"m0\"}".into()),
                ..Default::default()
            }
            .encode_to_vec(),
            InternalRaftRequest {
                header: user("", 0),
                txn: Some(txn),
                ..Default::default()
            }
            .encode_to_vec(),
            InternalRaftRequest {
                header: user("", 0),
                lease_grant: Some(LeaseGrantRequest { ttl: 1, id: 77 }),
                ..Default::default()
            }
            .encode_to_vec(),
            InternalRaftRequest {
                header: user("", 0),
                put: Some(PutRequest {
                    lease: 77,
                    ..put("leased", "x")
                }),
                ..Default::default()
            }
            .encode_to_vec(),
            // etcd 3.4: the password in the clear.
            InternalRaftRequest {
                header: user("", 0),
                auth_user_add: Some(AuthUserAddRequest {
                    name: "root".into(),
                    password: "pw".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec(),
            InternalRaftRequest {
                header: user("", 0),
                auth_user_grant_role: Some(AuthUserGrantRoleRequest {
                    user: "root".into(),
                    role: "root".into(),
                }),
                ..Default::default()
            }
            .encode_to_vec(),
            InternalRaftRequest {
                header: user("root", 0),
                auth_role_add: Some(AuthRoleAddRequest { name: "rw".into() }),
                ..Default::default()
            }
            .encode_to_vec(),
            InternalRaftRequest {
                header: user("root", 0),
                auth_role_grant_permission: Some(AuthRoleGrantPermissionRequest {
                    name: "rw".into(),
                    perm: Some(Permission {
                        perm_type: PermType::Readwrite as i32,
                        key: b"a".to_vec(),
                        range_end: Vec::new(),
                    }),
                }),
                ..Default::default()
            }
            .encode_to_vec(),
            InternalRaftRequest {
                header: user("root", 0),
                auth_enable: Some(AuthEnableRequest {}),
                ..Default::default()
            }
            .encode_to_vec(),
            // Refused as etcd refused it: no user while auth is enabled.
            InternalRaftRequest {
                header: user("", 0),
                put: Some(put("a", "anonymous")),
                ..Default::default()
            }
            .encode_to_vec(),
            // Compaction checks no permission in etcd.
            InternalRaftRequest {
                header: user("", 0),
                compaction: Some(CompactionRequest {
                    revision: 2,
                    physical: false,
                }),
                ..Default::default()
            }
            .encode_to_vec(),
        ];
        let (dir, store) = member_with(&requests);
        let done = store.replay_etcd_wal(dir.path(), &rules()).unwrap().unwrap();
        assert_eq!((done.after, done.commit), (0, requests.len() as u64));
        assert_eq!((done.applied, done.refused, done.skipped), (10, 1, 2), "{done:?}");
        assert_eq!(store.applied_index(), requests.len() as u64);

        assert_eq!(value_of(&store, "a"), Some((b"1".to_vec(), 2, 0)));
        assert_eq!(value_of(&store, "b"), Some((b"from-txn".to_vec(), 3, 0)));
        assert_eq!(value_of(&store, "leased"), Some((b"x".to_vec(), 4, 77)));
        assert_eq!(done.revision, 4);
        // The lease got etcd's minimum TTL.
        assert_eq!(store.lease_ttl(77).unwrap(), Some(5));
        // The password was hashed by the rule, and auth is on.
        let root = store.auth_user("root").unwrap().unwrap();
        assert_eq!(root.password, b"hashed:pw");
        assert!(store.auth_status().unwrap().enabled);
        assert_eq!(store.compact_revision(), 2);
    }

    #[test]
    fn the_backends_alarms_hold_while_replaying_and_are_lowered_after() {
        let requests = vec![InternalRaftRequest {
            header: user("", 0),
            put: Some(put("k", "v")),
            ..Default::default()
        }
        .encode_to_vec()];
        let (dir, store) = member_with(&requests);
        let mut root = super::super::bolt_write::Bucket::default();
        let nospace = AlarmMember {
            member_id: 3,
            alarm: AlarmType::Nospace as i32,
        };
        root.bucket(ALARM).put(nospace.encode_to_vec(), Vec::new());
        let bolt = super::super::bolt_write::encode_file(&root);
        std::fs::write(dir.path().join("snap").join("db"), bolt).unwrap();

        let done = store.replay_etcd_wal(dir.path(), &rules()).unwrap().unwrap();
        assert_eq!((done.applied, done.refused), (0, 1), "etcd refused the put: no space");
        assert_eq!(value_of(&store, "k"), None);
        assert_eq!(store.alarms().unwrap(), Vec::new());
    }

    #[test]
    fn an_unknown_request_or_a_missing_entry_refuses_the_replay() {
        // An InternalRaftRequest with only a field this code does not know (number 2000).
        let unknown = vec![0x82, 0x7d, 0x00];
        let (dir, store) = member_with(&[put_request("a"), unknown]);
        let err = store.replay_etcd_wal(dir.path(), &rules()).unwrap_err().to_string();
        assert!(
            err.contains("committed entry 2") && err.contains("restart etcd once and stop it cleanly"),
            "{err}"
        );
        assert_eq!(store.applied_index(), 0, "nothing was applied");

        // The WAL starts after a hole that no snapshot covers.
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::new();
        w.entry(5, 1, &put_request("b"));
        w.state(5);
        w.write_to(&dir.path().join("wal"));
        let store = MvccStore::open(&dir.path().join("kv.redb")).unwrap();
        let err = store.replay_etcd_wal(dir.path(), &rules()).unwrap_err().to_string();
        assert!(err.contains("holds no entries 1..=4"), "{err}");

        // …but a snapshot at 4 does (its backend holds them).
        let dir = tempfile::tempdir().unwrap();
        let mut w = WalWriter::new();
        w.snapshot(4);
        w.entry(5, 1, &put_request("b"));
        w.state(5);
        w.write_to(&dir.path().join("wal"));
        let bolt = super::super::bolt_write::encode_file(&Default::default());
        std::fs::create_dir_all(dir.path().join("snap")).unwrap();
        std::fs::write(dir.path().join("snap").join("db"), bolt).unwrap();
        let store = MvccStore::open(&dir.path().join("kv.redb")).unwrap();
        let done = store.replay_etcd_wal(dir.path(), &rules()).unwrap().unwrap();
        assert_eq!((done.applied, store.applied_index()), (1, 5));
    }

    fn put_request(key: &str) -> Vec<u8> {
        InternalRaftRequest {
            header: user("", 0),
            put: Some(put(key, "v")),
            ..Default::default()
        }
        .encode_to_vec()
    }
}
