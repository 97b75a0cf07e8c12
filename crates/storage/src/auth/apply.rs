//! The auth store inside one apply batch: applying auth commands, and checking every other
//! command's sender before it runs (etcd's `authApplierV3`).
//!
//! What each command needs, as etcd:
//! * Put: write on its key (read too with `prev_kv`); attaching it to a lease also needs write on
//!   every key already attached to that lease, since whoever may attach may revoke.
//! * DeleteRange: write on its range (read too with `prev_kv`).
//! * Txn: read on every compare; every operation of both branches as above, nested txns included.
//! * LeaseRevoke: write on every key attached to the lease (nothing for a lease without keys).
//! * Compaction, Alarm (activate/deactivate), every auth change but Authenticate: the `root`
//!   role. etcd 3.5 checks neither compaction nor alarms; both change the cluster for every user
//!   (compaction erases history, a NOSPACE alarm stops all writes), so Concord asks for root.
//! * LeaseGrant, Authenticate, membership: nothing.
//!
//! A holder of the `root` role passes every check; so does the member itself (lease expiry,
//! alarms it raises). Checks change nothing, so a refused command leaves the store as it was.

use std::collections::HashMap;

use base64::Engine as _;
use concord_proto::authpb::{Permission, Role, User, UserAddOptions};
use concord_proto::concordpb::auth_command::Op as AuthOp;
use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::{AuthCommand, RaftCommand, Requester};
use concord_proto::etcdserverpb::alarm_request::AlarmAction;
use prost::Message as _;
use redb::{ReadableTable, Table, WriteTransaction};

use super::perms::{self, Access, Need, UserPerms, ROOT};
use super::{
    check_admin, check_needs, load_perms, read_role, read_status, read_user, AuthApplied, AuthEffect, AuthError,
    AuthStatus, META, META_ENABLED, META_REVISION, ROLES, USERS,
};
use crate::error::{KvError, OpError, StorageError};
use crate::lease::attached_keys;
use crate::write::{header_at, Writer};

/// The auth tables opened in an apply batch's write transaction, with the status cached for the
/// batch (so that a batch with auth disabled costs one read) and the permissions of the senders
/// seen in it (until an auth command changes them).
pub(crate) struct AuthTables<'t> {
    users: Table<'t, &'static str, &'static [u8]>,
    roles: Table<'t, &'static str, &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
    status: AuthStatus,
    perms: HashMap<String, Option<UserPerms>>,
}

impl<'t> AuthTables<'t> {
    /// Opens the auth tables in `txn`.
    pub fn open(txn: &'t WriteTransaction) -> Result<AuthTables<'t>, StorageError> {
        let meta = txn.open_table(META)?;
        let status = read_status(&meta)?;
        Ok(AuthTables {
            users: txn.open_table(USERS)?,
            roles: txn.open_table(ROLES)?,
            meta,
            status,
            perms: HashMap::new(),
        })
    }

    /// Whether auth is enabled at this point of the batch.
    pub fn enabled(&self) -> bool {
        self.status.enabled
    }

    fn perms(&mut self, name: &str) -> Result<Option<UserPerms>, StorageError> {
        if name.is_empty() {
            return Ok(None);
        }
        if let Some(perms) = self.perms.get(name) {
            return Ok(perms.clone());
        }
        let perms = load_perms(&self.users, &self.roles, name)?;
        self.perms.insert(name.to_string(), perms.clone());
        Ok(perms)
    }

    /// Checks that `sender` (`None`: a command without an envelope) may run `command`, against
    /// the auth state as of this point of the log. `Ok(Err(_))` is the refusal to report.
    pub fn authorize(
        &mut self,
        writer: &Writer<'_, '_>,
        sender: Option<&Requester>,
        command: &RaftCommand,
    ) -> Result<Result<(), KvError>, StorageError> {
        if !self.status.enabled {
            return Ok(Ok(()));
        }
        // A command without an envelope has no sender: nobody.
        let nobody = Requester::default();
        let sender = sender.unwrap_or(&nobody);
        if sender.member {
            return Ok(Ok(()));
        }
        let Some(op) = &command.op else {
            return Ok(Ok(()));
        };
        let perms = self.perms(&sender.username)?;
        let admin = || check_admin(self.status, sender, perms.as_ref()).map_err(LeaseCheck::Refused);
        let needs =
            |needs: &[Need<'_>]| check_needs(self.status, sender, perms.as_ref(), needs).map_err(LeaseCheck::Refused);
        let verdict = match op {
            Op::Put(put) => needs(&perms::put_needs(put))
                .and_then(|()| self.lease_keys_writable(writer, sender, perms.as_ref(), &[put.lease])),
            Op::DeleteRange(delete) => needs(&perms::delete_needs(delete)),
            Op::PrepareCrossShard(prepare) => needs(&perms::delete_needs(
                prepare.delete_range.as_ref().unwrap_or(&Default::default()),
            )),
            Op::Txn(txn) => needs(&perms::txn_needs(txn))
                .and_then(|()| self.lease_keys_writable(writer, sender, perms.as_ref(), &perms::txn_leases(txn))),
            Op::LeaseRevoke(revoke) => self.lease_keys_writable(writer, sender, perms.as_ref(), &[revoke.id]),
            Op::Compaction(_) | Op::SplitShard(_) => admin(),
            Op::Alarm(alarm) => match AlarmAction::try_from(alarm.action) {
                Ok(AlarmAction::Get) => Ok(()),
                _ => admin(),
            },
            Op::Auth(auth) => match &auth.op {
                Some(AuthOp::Authenticate(_)) => Ok(()),
                _ => admin(),
            },
            Op::LeaseGrant(_)
            | Op::CommitCrossShard(_)
            | Op::AbortCrossShard(_)
            | Op::AllocateShardId(_)
            | Op::RecordShard(_)
            | Op::LeaseCheckpoint(_)
            | Op::RaiseRevisionCeiling(_)
            | Op::ReadBarrier(_)
            | Op::PublishMember(_)
            | Op::UpdateMember(_)
            | Op::Authorized(_) => Ok(()),
        };
        // A lease whose keys cannot be read back is an internal failure, not a refusal.
        Ok(match verdict {
            Ok(()) => Ok(()),
            Err(LeaseCheck::Refused(err)) => Err(KvError::Auth(err)),
            Err(LeaseCheck::Storage(err)) => return Err(err),
        })
    }

    /// etcd's `checkLeasePuts`: every key attached to each of `leases` must be writable by the
    /// sender (root skips the walk).
    fn lease_keys_writable(
        &self,
        writer: &Writer<'_, '_>,
        sender: &Requester,
        perms: Option<&UserPerms>,
        leases: &[i64],
    ) -> Result<(), LeaseCheck> {
        let leases: Vec<i64> = leases.iter().copied().filter(|l| *l != 0).collect();
        if leases.is_empty() || check_admin(self.status, sender, perms).is_ok() {
            return Ok(());
        }
        for lease in leases {
            let keys = attached_keys(&writer.lease_keys, lease).map_err(LeaseCheck::Storage)?;
            let needs: Vec<Need<'_>> = keys.iter().map(|k| Need::new(Access::Write, k, &[])).collect();
            check_needs(self.status, sender, perms, &needs)?;
        }
        Ok(())
    }

    /// Applies an auth store change (already authorized). `kv_revision` is the KV store's
    /// revision, which the response header carries.
    pub fn apply(&mut self, cmd: &AuthCommand, kv_revision: i64) -> Result<AuthApplied, OpError> {
        self.perms.clear();
        let effect = match &cmd.op {
            None => return Err(KvError::EmptyCommand.into()),
            Some(AuthOp::Enable(_)) => self.enable()?,
            Some(AuthOp::Disable(_)) => self.disable()?,
            Some(AuthOp::UserAdd(r)) => self.user_add(&r.name, &r.hashed_password, r.options.unwrap_or_default())?,
            Some(AuthOp::UserDelete(r)) => self.user_delete(&r.name)?,
            Some(AuthOp::UserChangePassword(r)) => self.user_change_password(&r.name, &r.hashed_password)?,
            Some(AuthOp::UserGrantRole(r)) => self.user_grant_role(&r.user, &r.role)?,
            Some(AuthOp::UserRevokeRole(r)) => self.user_revoke_role(&r.name, &r.role)?,
            Some(AuthOp::RoleAdd(r)) => self.role_add(&r.name)?,
            Some(AuthOp::RoleDelete(r)) => self.role_delete(&r.role)?,
            Some(AuthOp::RoleGrantPermission(r)) => {
                let perm = r.perm.clone().ok_or(refuse(AuthError::PermissionNotGiven))?;
                self.role_grant_permission(&r.name, perm)?
            }
            Some(AuthOp::RoleRevokePermission(r)) => self.role_revoke_permission(&r.role, &r.key, &r.range_end)?,
            Some(AuthOp::Authenticate(r)) => self.authenticate(&r.name, &r.token_digest, r.checked_revision)?,
        };
        Ok(AuthApplied {
            header: Some(header_at(kv_revision)),
            effect,
        })
    }

    fn bump_revision(&mut self) -> Result<(), StorageError> {
        self.status.revision += 1;
        self.meta.insert(META_REVISION, self.status.revision)?;
        Ok(())
    }

    fn user(&self, name: &str) -> Result<Option<User>, StorageError> {
        read_user(&self.users, name)
    }

    fn put_user(&mut self, user: &User) -> Result<(), StorageError> {
        let name = String::from_utf8_lossy(&user.name).into_owned();
        self.users.insert(name.as_str(), user.encode_to_vec().as_slice())?;
        Ok(())
    }

    fn put_role(&mut self, role: &Role) -> Result<(), StorageError> {
        let name = String::from_utf8_lossy(&role.name).into_owned();
        self.roles.insert(name.as_str(), role.encode_to_vec().as_slice())?;
        Ok(())
    }

    fn enable(&mut self) -> Result<AuthEffect, OpError> {
        if self.status.enabled {
            return Ok(AuthEffect::Enabled);
        }
        let root = self.user(ROOT)?.ok_or(refuse(AuthError::RootUserNotExist))?;
        if !root.roles.iter().any(|r| r == ROOT) {
            return Err(refuse(AuthError::RootRoleNotExist));
        }
        self.meta.insert(META_ENABLED, 1)?;
        self.status.enabled = true;
        // etcd does not move the revision on enable; the row is written so that the hash covers
        // a value every member agrees on.
        self.meta.insert(META_REVISION, self.status.revision)?;
        Ok(AuthEffect::Enabled)
    }

    fn disable(&mut self) -> Result<AuthEffect, OpError> {
        if !self.status.enabled {
            return Ok(AuthEffect::Disabled);
        }
        self.meta.insert(META_ENABLED, 0)?;
        self.status.enabled = false;
        self.bump_revision()?;
        Ok(AuthEffect::Disabled)
    }

    fn user_add(&mut self, name: &str, hashed_password: &str, options: UserAddOptions) -> Result<AuthEffect, OpError> {
        if name.is_empty() {
            return Err(refuse(AuthError::UserEmpty));
        }
        if self.user(name)?.is_some() {
            return Err(refuse(AuthError::UserAlreadyExist));
        }
        let password = if options.no_password {
            Vec::new()
        } else {
            // The proposing member hashed the password; a command without a decodable hash would
            // leave a user nobody can log in as (etcd answers the same error).
            match base64::engine::general_purpose::STANDARD.decode(hashed_password) {
                Ok(hash) if !hash.is_empty() => hash,
                _ => return Err(refuse(AuthError::NoPasswordUser)),
            }
        };
        self.put_user(&User {
            name: name.as_bytes().to_vec(),
            password,
            roles: Vec::new(),
            options: Some(options),
        })?;
        self.bump_revision()?;
        Ok(AuthEffect::Changed)
    }

    fn user_delete(&mut self, name: &str) -> Result<AuthEffect, OpError> {
        if self.status.enabled && name == ROOT {
            return Err(refuse(AuthError::InvalidAuthMgmt));
        }
        if self.users.remove(name)?.is_none() {
            return Err(refuse(AuthError::UserNotFound));
        }
        self.bump_revision()?;
        Ok(AuthEffect::UserInvalidated(name.to_string()))
    }

    fn user_change_password(&mut self, name: &str, hashed_password: &str) -> Result<AuthEffect, OpError> {
        let mut user = self.user(name)?.ok_or(refuse(AuthError::UserNotFound))?;
        let no_password = user.options.as_ref().is_some_and(|o| o.no_password);
        if !no_password {
            user.password = match base64::engine::general_purpose::STANDARD.decode(hashed_password) {
                Ok(hash) if !hash.is_empty() => hash,
                _ => return Err(refuse(AuthError::NoPasswordUser)),
            };
        }
        self.put_user(&user)?;
        self.bump_revision()?;
        Ok(AuthEffect::UserInvalidated(name.to_string()))
    }

    fn user_grant_role(&mut self, name: &str, role: &str) -> Result<AuthEffect, OpError> {
        let mut user = self.user(name)?.ok_or(refuse(AuthError::UserNotFound))?;
        // Like etcd, the root role may be granted before it is created.
        if role != ROOT && read_role(&self.roles, role)?.is_none() {
            return Err(refuse(AuthError::RoleNotFound));
        }
        match user.roles.binary_search_by(|r| r.as_str().cmp(role)) {
            Ok(_) => Ok(AuthEffect::Changed),
            Err(at) => {
                user.roles.insert(at, role.to_string());
                self.put_user(&user)?;
                self.bump_revision()?;
                Ok(AuthEffect::Changed)
            }
        }
    }

    fn user_revoke_role(&mut self, name: &str, role: &str) -> Result<AuthEffect, OpError> {
        if self.status.enabled && name == ROOT && role == ROOT {
            return Err(refuse(AuthError::InvalidAuthMgmt));
        }
        let mut user = self.user(name)?.ok_or(refuse(AuthError::UserNotFound))?;
        let before = user.roles.len();
        user.roles.retain(|r| r != role);
        if user.roles.len() == before {
            return Err(refuse(AuthError::RoleNotGranted));
        }
        self.put_user(&user)?;
        self.bump_revision()?;
        Ok(AuthEffect::Changed)
    }

    fn role_add(&mut self, name: &str) -> Result<AuthEffect, OpError> {
        if name.is_empty() {
            return Err(refuse(AuthError::RoleEmpty));
        }
        if read_role(&self.roles, name)?.is_some() {
            return Err(refuse(AuthError::RoleAlreadyExist));
        }
        self.put_role(&Role {
            name: name.as_bytes().to_vec(),
            key_permission: Vec::new(),
        })?;
        self.bump_revision()?;
        Ok(AuthEffect::Changed)
    }

    fn role_delete(&mut self, name: &str) -> Result<AuthEffect, OpError> {
        if self.status.enabled && name == ROOT {
            return Err(refuse(AuthError::InvalidAuthMgmt));
        }
        if self.roles.remove(name)?.is_none() {
            return Err(refuse(AuthError::RoleNotFound));
        }
        // Every user loses the role, as in etcd.
        let mut holders = Vec::new();
        for row in self.users.iter()? {
            let (_, value) = row?;
            let user = User::decode(value.value()).map_err(|e| super::corrupt("user", e))?;
            if user.roles.iter().any(|r| r == name) {
                holders.push(user);
            }
        }
        for mut user in holders {
            user.roles.retain(|r| r != name);
            self.put_user(&user)?;
        }
        self.bump_revision()?;
        Ok(AuthEffect::Changed)
    }

    fn role_grant_permission(&mut self, name: &str, perm: Permission) -> Result<AuthEffect, OpError> {
        let mut role = read_role(&self.roles, name)?.ok_or(refuse(AuthError::RoleNotFound))?;
        match role
            .key_permission
            .iter_mut()
            .find(|p| p.key == perm.key && p.range_end == perm.range_end)
        {
            Some(existing) => existing.perm_type = perm.perm_type,
            None => {
                role.key_permission.push(perm);
                // Sorted by key as etcd; by range end among equal keys, so that every member
                // stores the same bytes.
                role.key_permission
                    .sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
            }
        }
        self.put_role(&role)?;
        self.bump_revision()?;
        Ok(AuthEffect::Changed)
    }

    fn role_revoke_permission(&mut self, name: &str, key: &[u8], range_end: &[u8]) -> Result<AuthEffect, OpError> {
        let mut role = read_role(&self.roles, name)?.ok_or(refuse(AuthError::RoleNotFound))?;
        let before = role.key_permission.len();
        role.key_permission.retain(|p| p.key != key || p.range_end != range_end);
        if role.key_permission.len() == before {
            return Err(refuse(AuthError::PermissionNotGranted));
        }
        self.put_role(&role)?;
        self.bump_revision()?;
        Ok(AuthEffect::Changed)
    }

    fn authenticate(&mut self, name: &str, token_digest: &[u8], checked_revision: u64) -> Result<AuthEffect, OpError> {
        if !self.status.enabled {
            return Err(refuse(AuthError::AuthNotEnabled));
        }
        let user = self.user(name)?.ok_or(refuse(AuthError::AuthFailed))?;
        if user.options.as_ref().is_some_and(|o| o.no_password) {
            return Err(refuse(AuthError::AuthFailed));
        }
        if checked_revision != self.status.revision {
            return Ok(AuthEffect::Stale);
        }
        Ok(AuthEffect::Authenticated {
            name: name.to_string(),
            token_digest: token_digest.to_vec(),
        })
    }
}

/// Why a lease check did not pass.
enum LeaseCheck {
    Refused(AuthError),
    Storage(StorageError),
}

impl From<AuthError> for LeaseCheck {
    fn from(err: AuthError) -> Self {
        LeaseCheck::Refused(err)
    }
}

fn refuse(err: AuthError) -> OpError {
    OpError::Kv(KvError::Auth(err))
}
