//! etcd's auth store, kept in the MVCC store's redb file: users (with bcrypt hashes), roles with
//! their key-range permissions, the enabled flag and the auth revision.
//!
//! Everything here is replicated state: it changes only through [`AuthCommand`]s applied in log
//! order, rides in snapshots with the rest of the file, and is covered by [`MvccStore::hash`].
//! Tokens are not: they live in each member's memory (the server's business), as in etcd.
//!
//! # Tables
//!
//! | table        | key                    | value                                          |
//! |--------------|------------------------|------------------------------------------------|
//! | `auth_users` | user name              | `authpb.User` (protobuf; password = bcrypt hash)|
//! | `auth_roles` | role name              | `authpb.Role` (protobuf; permissions sorted)   |
//! | `auth_meta`  | `enabled`, `revision`  | `u64` (enabled: 0 or 1)                        |
//!
//! The auth revision starts at 1, as etcd's, and grows by one with every change of users, roles
//! or permissions and with AuthDisable (AuthEnable and changes that change nothing leave it).
//!
//! # Checks at apply time
//!
//! A command proposed for a client travels inside an `Authorized` envelope naming its sender
//! ([`open_envelope`]). While auth is enabled, apply checks the sender against the auth state at
//! that log position before the command runs (see `apply.rs`), exactly as etcd's auth applier
//! does: a revoked permission or a deleted user stops every write ordered after the change, on
//! every member alike.

mod apply;
pub mod perms;
#[cfg(test)]
mod tests;

use concord_proto::authpb::{Role, User};
use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::{RaftCommand, Requester};
use concord_proto::etcdserverpb::ResponseHeader;
use prost::Message as _;
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::error::{ErrorCode, KvError, StorageError};
use crate::store::MvccStore;

pub(crate) use apply::AuthTables;
use perms::{Need, UserPerms, ROOT};

/// `auth_users`: user name → `authpb.User`.
pub(crate) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_users");
/// `auth_roles`: role name → `authpb.Role`.
pub(crate) const ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_roles");
/// `auth_meta`: `enabled` and `revision`.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("auth_meta");
const META_ENABLED: &str = "enabled";
const META_REVISION: &str = "revision";

/// etcd's auth errors, with etcd's client-visible messages (`rpctypes`) and gRPC codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// AuthEnable without a `root` user.
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    /// AuthEnable while `root` lacks the `root` role.
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    /// UserAdd of a name in use.
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    /// No user: a request without credentials where one is required, or a UserAdd without name.
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    /// The named user does not exist (or, for an admin check, the requester no longer does).
    #[error("etcdserver: user name not found")]
    UserNotFound,
    /// RoleAdd of a name in use.
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    /// The named role does not exist.
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    /// RoleAdd without a name.
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    /// Authenticate with an unknown user or a wrong password.
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// Authenticate with a password for a user added with `no_password` (etcd returns it as a
    /// plain error, so with its internal message and gRPC code Unknown).
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// RoleGrantPermission without a permission.
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    /// The user may not do this.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// UserRevokeRole of a role the user does not have.
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    /// RoleRevokePermission of a permission the role does not have.
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    /// Authenticate while auth is disabled.
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    /// A token that is unknown, expired, or fails its signature check.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// A change that would lock everybody out: deleting `root` (user or role), or taking the
    /// `root` role from `root`, while auth is enabled.
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// The request's identity was resolved at an auth revision older than the store's: the
    /// client should authenticate again and retry (etcd's clients do).
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
}

impl AuthError {
    /// The gRPC status code etcd attaches to this error.
    pub fn code(&self) -> ErrorCode {
        use AuthError::*;
        match self {
            RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound | RoleAlreadyExist | RoleNotFound
            | RoleNotGranted | PermissionNotGranted | AuthNotEnabled => ErrorCode::FailedPrecondition,
            UserEmpty | RoleEmpty | AuthFailed | PermissionNotGiven | InvalidAuthMgmt | AuthOldRevision => {
                ErrorCode::InvalidArgument
            }
            PermissionDenied => ErrorCode::PermissionDenied,
            InvalidAuthToken => ErrorCode::Unauthenticated,
            NoPasswordUser => ErrorCode::Unknown,
        }
    }
}

/// Whether auth is on, and the auth revision (etcd's AuthStatus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthStatus {
    /// Whether requests are checked.
    pub enabled: bool,
    /// The auth store's revision: 1 for a fresh store, +1 per change.
    pub revision: u64,
}

/// What an applied [`AuthCommand`](concord_proto::concordpb::AuthCommand) did, beyond the auth
/// store itself: what the server must update in memory (tokens, caches), and the header to answer
/// with.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthApplied {
    /// Carries the KV store revision, as etcd's auth responses do.
    pub header: Option<ResponseHeader>,
    /// What changed.
    pub effect: AuthEffect,
}

/// The part of an auth change that matters outside the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthEffect {
    /// Auth was turned on (or already was).
    Enabled,
    /// Auth was turned off: every token is void.
    Disabled,
    /// Users, roles or permissions changed (or nothing did).
    Changed,
    /// The user was deleted or its password changed: its tokens are void.
    UserInvalidated(String),
    /// A password check done by the proposing member still holds: every member accepts the token
    /// whose SHA-256 is `token_digest` as `name`.
    Authenticated {
        /// The authenticated user.
        name: String,
        /// SHA-256 of the token.
        token_digest: Vec<u8>,
    },
    /// The auth store changed between the password check and this command: the proposing member
    /// must check again (etcd retries the same way). No token was issued.
    Stale,
}

/// A command's sender and the command itself: an `Authorized` envelope is opened; any other
/// command has no sender. An envelope without a command yields `None`.
pub fn open_envelope(command: &RaftCommand) -> (Option<&RaftCommand>, Option<&Requester>) {
    match &command.op {
        Some(Op::Authorized(envelope)) => (envelope.command.as_deref(), envelope.requester.as_ref()),
        _ => (Some(command), None),
    }
}

/// etcd's `isOpPermitted` for every need of one request: with auth enabled, the sender must be
/// named (else `UserEmpty`), its identity must not predate the current auth revision (else
/// `AuthOldRevision`), the user must exist and hold a permission for each need (else
/// `PermissionDenied`). A request that needs nothing is never refused. `perms` are the sender's
/// current permissions, `None` when the user does not exist.
pub fn check_needs(
    status: AuthStatus,
    sender: &Requester,
    perms: Option<&UserPerms>,
    needs: &[Need<'_>],
) -> Result<(), AuthError> {
    if !status.enabled || sender.member || needs.is_empty() {
        return Ok(());
    }
    if sender.auth_revision == 0 {
        return Err(AuthError::UserEmpty);
    }
    if sender.auth_revision < status.revision {
        return Err(AuthError::AuthOldRevision);
    }
    let perms = perms.ok_or(AuthError::PermissionDenied)?;
    if needs.iter().all(|need| perms.permits(need)) {
        Ok(())
    } else {
        Err(AuthError::PermissionDenied)
    }
}

/// etcd's `IsAdminPermitted`: with auth enabled, the sender must be a user (else `UserEmpty`) that
/// exists (else `UserNotFound`) and holds the `root` role (else `PermissionDenied`). `perms` as in
/// [`check_needs`]. The auth revision plays no part, as in etcd.
pub fn check_admin(status: AuthStatus, sender: &Requester, perms: Option<&UserPerms>) -> Result<(), AuthError> {
    if !status.enabled || sender.member {
        return Ok(());
    }
    if sender.username.is_empty() {
        return Err(AuthError::UserEmpty);
    }
    match perms {
        None => Err(AuthError::UserNotFound),
        Some(p) if p.root => Ok(()),
        Some(_) => Err(AuthError::PermissionDenied),
    }
}

/// Creates the auth tables a store file lacks, so read snapshots can always open them.
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<(), StorageError> {
    txn.open_table(USERS)?;
    txn.open_table(ROLES)?;
    txn.open_table(META)?;
    Ok(())
}

fn corrupt(what: &str, err: prost::DecodeError) -> StorageError {
    StorageError::Corrupt(format!("undecodable {what}: {err}"))
}

/// Reads the status from `auth_meta`, with a fresh store's defaults for missing rows.
fn read_status<T: ReadableTable<&'static str, u64>>(meta: &T) -> Result<AuthStatus, StorageError> {
    Ok(AuthStatus {
        enabled: meta.get(META_ENABLED)?.is_some_and(|v| v.value() == 1),
        revision: meta.get(META_REVISION)?.map_or(1, |v| v.value()),
    })
}

fn read_user<T: ReadableTable<&'static str, &'static [u8]>>(
    users: &T,
    name: &str,
) -> Result<Option<User>, StorageError> {
    match users.get(name)? {
        Some(v) => Ok(Some(User::decode(v.value()).map_err(|e| corrupt("user", e))?)),
        None => Ok(None),
    }
}

fn read_role<T: ReadableTable<&'static str, &'static [u8]>>(
    roles: &T,
    name: &str,
) -> Result<Option<Role>, StorageError> {
    match roles.get(name)? {
        Some(v) => Ok(Some(Role::decode(v.value()).map_err(|e| corrupt("role", e))?)),
        None => Ok(None),
    }
}

fn all_names<V: redb::Value + 'static, T: ReadableTable<&'static str, V>>(
    table: &T,
) -> Result<Vec<String>, StorageError> {
    let mut names = Vec::new();
    for row in table.iter()? {
        names.push(row?.0.value().to_string());
    }
    Ok(names)
}

/// The permissions of user `name` (`None` if there is no such user), from the given tables.
fn load_perms<U, R>(users: &U, roles: &R, name: &str) -> Result<Option<UserPerms>, StorageError>
where
    U: ReadableTable<&'static str, &'static [u8]>,
    R: ReadableTable<&'static str, &'static [u8]>,
{
    let Some(user) = read_user(users, name)? else {
        return Ok(None);
    };
    let mut failed = None;
    let perms = UserPerms::of(&user, |role| match read_role(roles, role) {
        Ok(role) => role,
        Err(err) => {
            failed = Some(err);
            None
        }
    });
    match failed {
        Some(err) => Err(err),
        None => Ok(Some(perms)),
    }
}

/// A read snapshot of the auth tables.
struct AuthRead {
    users: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    roles: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    status: AuthStatus,
    _txn: ReadTransaction,
}

impl MvccStore {
    fn auth_read(&self) -> Result<AuthRead, StorageError> {
        let db = self.db();
        let txn = db.begin_read()?;
        Ok(AuthRead {
            users: txn.open_table(USERS)?,
            roles: txn.open_table(ROLES)?,
            status: read_status(&txn.open_table(META)?)?,
            _txn: txn,
        })
    }

    /// Whether auth is enabled, and the auth revision, as of the last applied entry.
    pub fn auth_status(&self) -> Result<AuthStatus, KvError> {
        let db = self.db();
        let txn = db.begin_read()?;
        Ok(read_status(&txn.open_table(META)?)?)
    }

    /// User `name` with its password hash and roles, or `None`.
    pub fn auth_user(&self, name: &str) -> Result<Option<User>, KvError> {
        Ok(read_user(&self.auth_read()?.users, name)?)
    }

    /// Role `name` with its permissions, or `None`.
    pub fn auth_role(&self, name: &str) -> Result<Option<Role>, KvError> {
        Ok(read_role(&self.auth_read()?.roles, name)?)
    }

    /// Every user name, ascending.
    pub fn auth_users(&self) -> Result<Vec<String>, KvError> {
        Ok(all_names(&self.auth_read()?.users)?)
    }

    /// Every role name, ascending.
    pub fn auth_roles(&self) -> Result<Vec<String>, KvError> {
        Ok(all_names(&self.auth_read()?.roles)?)
    }

    /// The permissions of user `name` (`None` if there is no such user) with the auth status they
    /// were read at, from one read snapshot: what the server checks reads and watches against.
    pub fn auth_perms(&self, name: &str) -> Result<(AuthStatus, Option<UserPerms>), KvError> {
        let read = self.auth_read()?;
        let perms = load_perms(&read.users, &read.roles, name)?;
        Ok((read.status, perms))
    }
}

/// Whether `user` holds role `role` (etcd's `HasRole`), for RoleGet by a non-root user.
pub fn has_role(user: Option<&User>, role: &str) -> bool {
    user.is_some_and(|u| u.roles.iter().any(|r| r == role))
}

/// The permission RoleGet reports for the `root` role: read-write on every key, as etcd.
pub fn root_permission() -> concord_proto::authpb::Permission {
    concord_proto::authpb::Permission {
        perm_type: concord_proto::authpb::permission::Type::Readwrite as i32,
        key: Vec::new(),
        range_end: vec![0],
    }
}

/// The name of the role (and user) that may do everything.
pub const ROOT_NAME: &str = ROOT;
