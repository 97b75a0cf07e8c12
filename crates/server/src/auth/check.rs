//! The checks made outside apply: what a read, a watch or an admin-only RPC needs, checked
//! against this member's applied auth state (with the same rules as apply, from
//! `concord_storage::auth`).
//!
//! Linearizable reads are checked after their ReadIndex barrier, so a permission revoked (or a user
//! deleted) anywhere in the cluster before the read began is in force here too, as in etcd.
//! Admin-only RPCs that never reach apply (member changes, defragment, snapshots, hashes,
//! MoveLeader, auth reads) pass a barrier before their check for the same reason
//! ([`AuthState::require_admin`]).
//!
//! Which RPC needs what:
//! * Range, read-only Txn: read on every key range they name (a txn's compares and both
//!   branches, as etcd's `CheckTxnAuth`); writes are checked at apply.
//! * Watch: read on the watched range, at creation.
//! * LeaseTimeToLive with keys: read on every attached key (etcd 3.5).
//! * Lock and Election: read and write on the name's prefix, at the start; each write they make
//!   is checked again at apply.
//! * Cluster member changes, Defragment, Snapshot, Hash, HashKV, MoveLeader, auth management:
//!   the root role. Status, MemberList, Alarm GET, LeaseGrant and keep-alives: nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use concord_proto::concordpb::Requester;
use concord_storage::auth::perms::{Need, UserPerms};
use concord_storage::{auth, AuthError};
use tonic::Status;

use super::{AuthState, Credentials, Identity};
use crate::errors;
use crate::router::GroupHandle;

/// The permissions of users recently checked, valid for one auth revision.
#[derive(Default)]
pub struct PermCache {
    inner: Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    revision: u64,
    users: HashMap<String, Option<Arc<UserPerms>>>,
}

/// Users whose permissions are kept at once; beyond that the cache starts over.
const CACHE_USERS: usize = 4096;

fn sender_of(id: Option<&Identity>) -> Requester {
    match id {
        Some(id) => Requester {
            username: id.username.clone(),
            auth_revision: id.revision,
            member: false,
        },
        None => Requester::default(),
    }
}

impl AuthState {
    /// The current permissions of `user` (`None`: no such user), from the cache when it holds
    /// the current revision's.
    fn perms_of_identity(&self, id: Option<&Identity>) -> Result<Option<Arc<UserPerms>>, Status> {
        Ok(match id {
            Some(id) => self.perms_of(&id.username)?,
            None => None,
        })
    }

    fn perms_of(&self, user: &str) -> Result<Option<Arc<UserPerms>>, Status> {
        if user.is_empty() {
            return Ok(None);
        }
        let revision = self.status().revision;
        {
            let cache = self.perms.inner.lock().unwrap_or_else(|e| e.into_inner());
            if cache.revision == revision {
                if let Some(perms) = cache.users.get(user) {
                    return Ok(perms.clone());
                }
            }
        }
        let (status, perms) = self.store.auth_perms(user).map_err(errors::from_kv)?;
        let perms = perms.map(Arc::new);
        // Only permissions read at the revision the member reports are cached; anything newer is
        // used once and read again until the reported revision catches up.
        if status.revision == revision {
            let mut cache = self.perms.inner.lock().unwrap_or_else(|e| e.into_inner());
            if cache.revision != revision || cache.users.len() >= CACHE_USERS {
                cache.revision = revision;
                cache.users.clear();
            }
            cache.users.insert(user.to_string(), perms.clone());
        }
        Ok(perms)
    }

    /// etcd's `isOpPermitted` for every need of a request from `id`, against this member's
    /// applied state. Always passes while auth is disabled.
    pub fn check_needs(&self, id: Option<&Identity>, needs: &[Need<'_>]) -> Result<(), Status> {
        let status = self.status();
        if !status.enabled {
            return Ok(());
        }
        let perms = self.perms_of_identity(id)?;
        auth::check_needs(status, &sender_of(id), perms.as_deref(), needs).map_err(errors::from_auth)
    }

    /// etcd's `IsAdminPermitted` for `id` against this member's applied state.
    pub fn check_admin(&self, id: Option<&Identity>) -> Result<(), Status> {
        let status = self.status();
        if !status.enabled {
            return Ok(());
        }
        let perms = self.perms_of_identity(id)?;
        auth::check_admin(status, &sender_of(id), perms.as_deref()).map_err(errors::from_auth)
    }

    /// etcd's last step of a checked read: if the auth store moved while the read was served,
    /// the answer may have been computed for permissions that are gone ("revision of auth
    /// store is old"; the client authenticates again and retries).
    pub fn check_unchanged(&self, id: Option<&Identity>) -> Result<(), Status> {
        match id {
            Some(id) if self.enabled() && id.revision != self.status().revision => {
                Err(errors::from_auth(AuthError::AuthOldRevision))
            }
            _ => Ok(()),
        }
    }

    /// Resolves `creds` and checks `needs` for a read that has already passed its ReadIndex
    /// barrier (or asked to be serializable); returns the identity for [`check_unchanged`].
    ///
    /// [`check_unchanged`]: Self::check_unchanged
    pub async fn authorize_read(
        &self,
        creds: &Credentials,
        group: &GroupHandle,
        needs: &[Need<'_>],
    ) -> Result<Option<Identity>, Status> {
        if !self.enabled() {
            return Ok(None);
        }
        let id = self.identity(creds, group).await?;
        self.check_needs(id.as_ref(), needs)?;
        Ok(id)
    }

    /// For RPCs only root may call that never go through apply: a ReadIndex barrier (so every
    /// auth change committed before the call is in force), then etcd's admin check.
    pub async fn require_admin(&self, creds: &Credentials, group: &GroupHandle) -> Result<Option<Identity>, Status> {
        if !self.enabled() {
            return Ok(None);
        }
        group.read_barrier().await.map_err(errors::from_raft)?;
        let id = self.identity(creds, group).await?;
        self.check_admin(id.as_ref())?;
        Ok(id)
    }
}

/// etcd's Lock and Election servers run on an in-process client, which turns every server error
/// into a plain error: gRPC code Unknown with the same message. Auth refusals from those services
/// are answered that way too, so clients see what etcd sends.
pub fn as_plain_error(status: Status) -> Status {
    /// The auth refusals with other codes answered as plain errors too: those about the
    /// requesting user, and a stale auth revision (matched by the store's own messages).
    const PLAIN_AUTH_ERRORS: [AuthError; 4] = [
        AuthError::UserAlreadyExist,
        AuthError::UserEmpty,
        AuthError::UserNotFound,
        AuthError::AuthOldRevision,
    ];
    match status.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => Status::unknown(status.message()),
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
            if PLAIN_AUTH_ERRORS.iter().any(|e| status.message() == e.to_string()) =>
        {
            Status::unknown(status.message())
        }
        _ => status,
    }
}
