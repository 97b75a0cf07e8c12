//! The auth store applied through the log: etcd's management semantics and errors, the checks
//! made at apply time, and the auth state's place in hashes and snapshots.

use base64::Engine as _;
use concord_proto::authpb::permission::Type as PermType;
use concord_proto::authpb::{Permission, UserAddOptions};
use concord_proto::concordpb::auth_command::Op as AuthOp;
use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::{AuthCommand, AuthenticateCommand, Authorized, RaftCommand, Requester};
use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcdserverpb::request_op::Request;
use concord_proto::etcdserverpb::*;

use super::{AuthEffect, AuthError, AuthStatus};
use crate::{ApplyEntry, KvError, MvccStore, WriteResult};

struct Store {
    _dir: tempfile::TempDir,
    store: MvccStore,
    index: u64,
}

fn user(name: &str, revision: u64) -> Requester {
    Requester {
        username: name.into(),
        auth_revision: revision,
        member: false,
    }
}

fn member() -> Requester {
    Requester {
        member: true,
        ..Default::default()
    }
}

impl Store {
    fn new() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let store = MvccStore::open(&dir.path().join("kv.redb")).unwrap();
        Store {
            _dir: dir,
            store,
            index: 0,
        }
    }

    fn apply_command(&mut self, cmd: RaftCommand) -> Result<WriteResult, KvError> {
        self.index += 1;
        let mut results = self
            .store
            .apply(&[ApplyEntry {
                index: self.index,
                command: Some(&cmd),
                stamp: None,
            }])
            .unwrap();
        results.pop().expect("a result").1
    }

    /// Applies `op` sent by `sender` (`None`: no envelope).
    fn apply_as(&mut self, sender: Option<Requester>, op: Op) -> Result<WriteResult, KvError> {
        let cmd = RaftCommand { op: Some(op) };
        let cmd = match sender {
            None => cmd,
            Some(requester) => RaftCommand {
                op: Some(Op::Authorized(Box::new(Authorized {
                    requester: Some(requester),
                    command: Some(Box::new(cmd)),
                }))),
            },
        };
        self.apply_command(cmd)
    }

    fn auth_as(&mut self, sender: Option<Requester>, op: AuthOp) -> Result<AuthEffect, KvError> {
        match self.apply_as(sender, Op::Auth(AuthCommand { op: Some(op) }))? {
            WriteResult::Auth(applied) => Ok(applied.effect),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn auth(&mut self, op: AuthOp) -> Result<AuthEffect, KvError> {
        self.auth_as(None, op)
    }

    fn status(&self) -> AuthStatus {
        self.store.auth_status().unwrap()
    }

    fn revision(&self) -> u64 {
        self.status().revision
    }

    fn add_user(&mut self, name: &str) {
        let hash = base64::engine::general_purpose::STANDARD.encode(b"$2b$04$not-a-real-hash");
        self.auth(AuthOp::UserAdd(AuthUserAddRequest {
            name: name.into(),
            hashed_password: hash,
            ..Default::default()
        }))
        .unwrap();
    }

    fn grant_role(&mut self, user: &str, role: &str) {
        self.auth(AuthOp::UserGrantRole(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        }))
        .unwrap();
    }

    fn add_role_with(&mut self, role: &str, kind: PermType, key: &str, end: &[u8]) {
        let _ = self.auth(AuthOp::RoleAdd(AuthRoleAddRequest { name: role.into() }));
        self.auth(AuthOp::RoleGrantPermission(AuthRoleGrantPermissionRequest {
            name: role.into(),
            perm: Some(Permission {
                perm_type: kind as i32,
                key: key.as_bytes().to_vec(),
                range_end: end.to_vec(),
            }),
        }))
        .unwrap();
    }

    /// root with the root role, alice with readwrite on the prefix `a/`, then auth on.
    fn with_auth_enabled() -> Store {
        let mut s = Store::new();
        s.add_user("root");
        s.grant_role("root", "root");
        s.add_user("alice");
        s.add_role_with("a-rw", PermType::Readwrite, "a/", b"a0");
        s.grant_role("alice", "a-rw");
        s.auth(AuthOp::Enable(AuthEnableRequest {})).unwrap();
        s
    }
}

fn put(key: &str) -> Op {
    Op::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    })
}

fn refused(result: Result<impl std::fmt::Debug, KvError>) -> AuthError {
    match result {
        Err(KvError::Auth(err)) => err,
        other => panic!("expected an auth refusal, got {other:?}"),
    }
}

#[test]
fn enabling_needs_root_with_the_root_role() {
    let mut s = Store::new();
    assert_eq!(
        s.status(),
        AuthStatus {
            enabled: false,
            revision: 1
        }
    );
    let enable = || AuthOp::Enable(AuthEnableRequest {});
    assert_eq!(refused(s.auth(enable())), AuthError::RootUserNotExist);
    s.add_user("root");
    assert_eq!(s.revision(), 2);
    assert_eq!(refused(s.auth(enable())), AuthError::RootRoleNotExist);
    // The root role may be granted before it exists, as in etcd.
    s.grant_role("root", "root");
    assert_eq!(s.auth(enable()).unwrap(), AuthEffect::Enabled);
    assert_eq!(
        s.status(),
        AuthStatus {
            enabled: true,
            revision: 3
        }
    );
    // Enabling twice is fine and changes nothing.
    assert_eq!(s.auth_as(Some(user("root", 3)), enable()).unwrap(), AuthEffect::Enabled);
    // Disabling bumps the revision.
    assert_eq!(
        s.auth_as(Some(user("root", 3)), AuthOp::Disable(AuthDisableRequest {}))
            .unwrap(),
        AuthEffect::Disabled
    );
    assert_eq!(
        s.status(),
        AuthStatus {
            enabled: false,
            revision: 4
        }
    );
}

#[test]
fn user_and_role_management_errors_are_etcds() {
    let mut s = Store::new();
    s.add_user("bob");
    let add = |name: &str| {
        AuthOp::UserAdd(AuthUserAddRequest {
            name: name.into(),
            hashed_password: "aGFzaA==".into(),
            ..Default::default()
        })
    };
    assert_eq!(refused(s.auth(add("bob"))), AuthError::UserAlreadyExist);
    assert_eq!(refused(s.auth(add(""))), AuthError::UserEmpty);
    // A user must come with a hash unless it has no password.
    let no_hash = AuthOp::UserAdd(AuthUserAddRequest {
        name: "carol".into(),
        ..Default::default()
    });
    assert_eq!(refused(s.auth(no_hash)), AuthError::NoPasswordUser);
    let no_password = AuthOp::UserAdd(AuthUserAddRequest {
        name: "carol".into(),
        options: Some(UserAddOptions { no_password: true }),
        ..Default::default()
    });
    s.auth(no_password).unwrap();
    assert!(s.store.auth_user("carol").unwrap().unwrap().password.is_empty());

    let grant = |user: &str, role: &str| {
        AuthOp::UserGrantRole(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
    };
    assert_eq!(refused(s.auth(grant("nobody", "r"))), AuthError::UserNotFound);
    assert_eq!(refused(s.auth(grant("bob", "r"))), AuthError::RoleNotFound);
    assert_eq!(
        refused(s.auth(AuthOp::RoleAdd(AuthRoleAddRequest { name: "".into() }))),
        AuthError::RoleEmpty
    );
    s.auth(AuthOp::RoleAdd(AuthRoleAddRequest { name: "r".into() }))
        .unwrap();
    assert_eq!(
        refused(s.auth(AuthOp::RoleAdd(AuthRoleAddRequest { name: "r".into() }))),
        AuthError::RoleAlreadyExist
    );
    s.auth(grant("bob", "r")).unwrap();
    let rev = s.revision();
    s.auth(grant("bob", "r")).unwrap();
    assert_eq!(s.revision(), rev, "granting a role twice changes nothing");

    let revoke_role = |role: &str| {
        AuthOp::UserRevokeRole(AuthUserRevokeRoleRequest {
            name: "bob".into(),
            role: role.into(),
        })
    };
    assert_eq!(refused(s.auth(revoke_role("other"))), AuthError::RoleNotGranted);
    let grant_perm = AuthOp::RoleGrantPermission(AuthRoleGrantPermissionRequest {
        name: "r".into(),
        perm: None,
    });
    assert_eq!(refused(s.auth(grant_perm)), AuthError::PermissionNotGiven);
    let revoke_perm = |key: &str| {
        AuthOp::RoleRevokePermission(AuthRoleRevokePermissionRequest {
            role: "r".into(),
            key: key.into(),
            range_end: vec![],
        })
    };
    assert_eq!(refused(s.auth(revoke_perm("k"))), AuthError::PermissionNotGranted);
    s.add_role_with("r", PermType::Read, "k", b"");
    // Granting the same key and range again only changes the type.
    s.add_role_with("r", PermType::Write, "k", b"");
    s.add_role_with("r", PermType::Read, "a", b"b");
    let role = s.store.auth_role("r").unwrap().unwrap();
    let perms: Vec<(Vec<u8>, i32)> = role
        .key_permission
        .iter()
        .map(|p| (p.key.clone(), p.perm_type))
        .collect();
    assert_eq!(
        perms,
        vec![
            (b"a".to_vec(), PermType::Read as i32),
            (b"k".to_vec(), PermType::Write as i32)
        ]
    );
    s.auth(revoke_perm("k")).unwrap();

    // Deleting a role takes it from every user.
    s.auth(AuthOp::RoleDelete(AuthRoleDeleteRequest { role: "r".into() }))
        .unwrap();
    assert!(s.store.auth_user("bob").unwrap().unwrap().roles.is_empty());
    assert_eq!(
        refused(s.auth(AuthOp::RoleDelete(AuthRoleDeleteRequest { role: "r".into() }))),
        AuthError::RoleNotFound
    );
    assert_eq!(
        s.store.auth_users().unwrap(),
        vec!["bob".to_string(), "carol".to_string()]
    );
    assert_eq!(
        s.auth(AuthOp::UserDelete(AuthUserDeleteRequest { name: "bob".into() }))
            .unwrap(),
        AuthEffect::UserInvalidated("bob".into())
    );
    assert_eq!(
        refused(s.auth(AuthOp::UserDelete(AuthUserDeleteRequest { name: "bob".into() }))),
        AuthError::UserNotFound
    );
}

#[test]
fn root_cannot_be_locked_out_while_auth_is_on() {
    let mut s = Store::with_auth_enabled();
    let root = Some(user("root", s.revision()));
    let del_user = AuthOp::UserDelete(AuthUserDeleteRequest { name: "root".into() });
    assert_eq!(refused(s.auth_as(root.clone(), del_user)), AuthError::InvalidAuthMgmt);
    s.auth_as(
        root.clone(),
        AuthOp::RoleAdd(AuthRoleAddRequest { name: "root".into() }),
    )
    .unwrap();
    let del_role = AuthOp::RoleDelete(AuthRoleDeleteRequest { role: "root".into() });
    assert_eq!(refused(s.auth_as(root.clone(), del_role)), AuthError::InvalidAuthMgmt);
    let revoke = AuthOp::UserRevokeRole(AuthUserRevokeRoleRequest {
        name: "root".into(),
        role: "root".into(),
    });
    assert_eq!(refused(s.auth_as(root, revoke)), AuthError::InvalidAuthMgmt);
}

#[test]
fn auth_changes_need_root_once_enabled() {
    let mut s = Store::with_auth_enabled();
    let rev = s.revision();
    let add_role = || AuthOp::RoleAdd(AuthRoleAddRequest { name: "x".into() });
    assert_eq!(refused(s.auth(add_role())), AuthError::UserEmpty);
    assert_eq!(
        refused(s.auth_as(Some(user("alice", rev)), add_role())),
        AuthError::PermissionDenied
    );
    assert_eq!(
        refused(s.auth_as(Some(user("ghost", rev)), add_role())),
        AuthError::UserNotFound
    );
    s.auth_as(Some(user("root", rev)), add_role()).unwrap();
    // The admin check ignores the auth revision, as etcd's.
    s.auth_as(
        Some(user("root", 1)),
        AuthOp::RoleAdd(AuthRoleAddRequest { name: "y".into() }),
    )
    .unwrap();
}

#[test]
fn writes_are_checked_against_the_auth_state_at_their_log_position() {
    let mut s = Store::with_auth_enabled();
    let rev = s.revision();
    let alice = || Some(user("alice", rev));
    s.apply_as(alice(), put("a/1")).unwrap();
    assert_eq!(refused(s.apply_as(alice(), put("b/1"))), AuthError::PermissionDenied);
    assert_eq!(refused(s.apply_as(None, put("a/1"))), AuthError::UserEmpty);
    assert_eq!(refused(s.apply_as(Some(user("", 0)), put("a/1"))), AuthError::UserEmpty);
    assert_eq!(
        refused(s.apply_as(Some(user("ghost", rev)), put("a/1"))),
        AuthError::PermissionDenied
    );
    s.apply_as(Some(user("root", rev)), put("b/1")).unwrap();
    s.apply_as(Some(member()), put("b/2")).unwrap();

    // A delete over a range wider than the permission is refused, one inside it is not.
    let delete = |key: &str, end: &str| {
        Op::DeleteRange(DeleteRangeRequest {
            key: key.into(),
            range_end: end.into(),
            prev_kv: false,
        })
    };
    assert_eq!(
        refused(s.apply_as(alice(), delete("a/", "b"))),
        AuthError::PermissionDenied
    );
    s.apply_as(alice(), delete("a/", "a0")).unwrap();

    // A txn is refused if any compare or any op of either branch is outside the permission.
    let txn = |compare_key: &str, failure_put: &str| {
        Op::Txn(TxnRequest {
            compare: vec![Compare {
                key: compare_key.into(),
                result: CompareResult::Equal as i32,
                target: CompareTarget::Version as i32,
                target_union: Some(TargetUnion::Version(0)),
                range_end: vec![],
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b"a/t".to_vec(),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: failure_put.into(),
                    ..Default::default()
                })),
            }],
        })
    };
    s.apply_as(alice(), txn("a/c", "a/f")).unwrap();
    assert_eq!(
        refused(s.apply_as(alice(), txn("b/c", "a/f"))),
        AuthError::PermissionDenied
    );
    assert_eq!(
        refused(s.apply_as(alice(), txn("a/c", "b/f"))),
        AuthError::PermissionDenied
    );

    // Revoking the permission takes effect for the very next entry; tokens resolved before the
    // change are stale.
    s.auth_as(
        Some(user("root", rev)),
        AuthOp::RoleRevokePermission(AuthRoleRevokePermissionRequest {
            role: "a-rw".into(),
            key: b"a/".to_vec(),
            range_end: b"a0".to_vec(),
        }),
    )
    .unwrap();
    assert_eq!(refused(s.apply_as(alice(), put("a/1"))), AuthError::AuthOldRevision);
    let now = s.revision();
    assert_eq!(
        refused(s.apply_as(Some(user("alice", now)), put("a/1"))),
        AuthError::PermissionDenied
    );
}

#[test]
fn compaction_and_alarms_need_root() {
    let mut s = Store::with_auth_enabled();
    let rev = s.revision();
    let compact = || {
        Op::Compaction(CompactionRequest {
            revision: 1,
            physical: false,
        })
    };
    assert_eq!(
        refused(s.apply_as(Some(user("alice", rev)), compact())),
        AuthError::PermissionDenied
    );
    s.apply_as(Some(user("root", rev)), compact()).unwrap();
    let alarm = || {
        Op::Alarm(AlarmRequest {
            action: 1,
            member_id: 1,
            alarm: 1,
        })
    };
    assert_eq!(
        refused(s.apply_as(Some(user("alice", rev)), alarm())),
        AuthError::PermissionDenied
    );
    s.apply_as(Some(member()), alarm()).unwrap();
}

#[test]
fn leases_whose_keys_the_user_cannot_write_can_be_neither_revoked_nor_joined() {
    let mut s = Store::with_auth_enabled();
    let rev = s.revision();
    let alice = || Some(user("alice", rev));
    s.apply_as(alice(), Op::LeaseGrant(LeaseGrantRequest { id: 7, ttl: 60 }))
        .unwrap();
    s.apply_as(
        Some(user("root", rev)),
        Op::Put(PutRequest {
            key: b"b/x".to_vec(),
            lease: 7,
            ..Default::default()
        }),
    )
    .unwrap();
    let own = Op::Put(PutRequest {
        key: b"a/x".to_vec(),
        lease: 7,
        ..Default::default()
    });
    assert_eq!(refused(s.apply_as(alice(), own)), AuthError::PermissionDenied);
    assert_eq!(
        refused(s.apply_as(alice(), Op::LeaseRevoke(LeaseRevokeRequest { id: 7 }))),
        AuthError::PermissionDenied
    );
    // A lease with only alice's keys is hers to revoke.
    s.apply_as(alice(), Op::LeaseGrant(LeaseGrantRequest { id: 8, ttl: 60 }))
        .unwrap();
    s.apply_as(
        alice(),
        Op::Put(PutRequest {
            key: b"a/y".to_vec(),
            lease: 8,
            ..Default::default()
        }),
    )
    .unwrap();
    s.apply_as(alice(), Op::LeaseRevoke(LeaseRevokeRequest { id: 8 }))
        .unwrap();
    // The member itself revokes expired leases whatever they hold.
    s.apply_as(Some(member()), Op::LeaseRevoke(LeaseRevokeRequest { id: 7 }))
        .unwrap();
}

#[test]
fn authenticate_issues_a_token_only_if_nothing_changed_since_the_check() {
    let mut s = Store::new();
    let authenticate = |name: &str, checked_revision: u64| {
        AuthOp::Authenticate(AuthenticateCommand {
            name: name.into(),
            token_digest: vec![1; 32],
            checked_revision,
        })
    };
    assert_eq!(refused(s.auth(authenticate("root", 1))), AuthError::AuthNotEnabled);
    let mut s = Store::with_auth_enabled();
    let rev = s.revision();
    assert_eq!(
        s.auth(authenticate("alice", rev)).unwrap(),
        AuthEffect::Authenticated {
            name: "alice".into(),
            token_digest: vec![1; 32]
        }
    );
    assert_eq!(s.auth(authenticate("alice", rev - 1)).unwrap(), AuthEffect::Stale);
    assert_eq!(refused(s.auth(authenticate("ghost", rev))), AuthError::AuthFailed);
    // No token is stored: the auth state (and the hash) does not move.
    let hash = s.store.hash().unwrap();
    s.auth(authenticate("alice", rev)).unwrap();
    assert_eq!(s.store.hash().unwrap(), hash);
    assert_eq!(s.revision(), rev);
}

#[test]
fn the_auth_store_is_hashed_and_travels_in_snapshots() {
    let mut a = Store::with_auth_enabled();
    let mut b = Store::with_auth_enabled();
    assert_eq!(a.store.hash().unwrap(), b.store.hash().unwrap());
    let root = Some(user("root", a.revision()));
    b.auth_as(
        root.clone(),
        AuthOp::RoleAdd(AuthRoleAddRequest { name: "extra".into() }),
    )
    .unwrap();
    assert_ne!(a.store.hash().unwrap(), b.store.hash().unwrap());
    a.auth_as(root, AuthOp::RoleAdd(AuthRoleAddRequest { name: "extra".into() }))
        .unwrap();
    assert_eq!(a.store.hash().unwrap(), b.store.hash().unwrap());

    let snap = a._dir.path().join("snap.redb");
    a.store.write_snapshot(&snap).unwrap();
    let fresh = Store::new();
    fresh.store.install_snapshot(&snap).unwrap();
    assert_eq!(fresh.status(), a.status());
    assert_eq!(
        fresh.store.auth_roles().unwrap(),
        vec!["a-rw".to_string(), "extra".to_string()]
    );
    assert_eq!(fresh.store.hash().unwrap(), a.store.hash().unwrap());
    let (status, perms) = fresh.store.auth_perms("alice").unwrap();
    assert!(status.enabled);
    assert!(perms
        .unwrap()
        .permits(&super::perms::Need::new(super::perms::Access::Write, b"a/k", b"")));
}

#[test]
fn auth_state_survives_reopening_the_file() {
    let s = Store::with_auth_enabled();
    let status = s.status();
    let Store { _dir: dir, store, .. } = s;
    drop(store);
    let store = MvccStore::open(&dir.path().join("kv.redb")).unwrap();
    assert_eq!(store.auth_status().unwrap(), status);
    assert_eq!(
        store.auth_user("alice").unwrap().unwrap().roles,
        vec!["a-rw".to_string()]
    );
}
