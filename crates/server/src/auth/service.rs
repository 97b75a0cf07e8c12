//! etcd's Auth service: enabling auth, authenticating, and managing users and roles.
//!
//! Changes go through Raft as `AuthCommand`s sent by the caller, so apply checks the caller is
//! root (once auth is on) against the auth state at that log position, on every member alike.
//! Reads of the auth store (AuthStatus, UserGet/List, RoleGet/List) pass a ReadIndex barrier and
//! are checked against the member's state then, with the same rules (etcd runs them through Raft
//! instead; the outcome is the same, without a log entry).
//!
//! Passwords are hashed here, with bcrypt at `--bcrypt-cost`, before anything is proposed; the
//! hash travels base64-encoded in `hashedPassword` (etcd's field) and the plaintext is wiped from
//! memory once hashed or checked. Password checks for Authenticate also happen here, limited per
//! user name ([`super::rate`]) and to a few at a time (bcrypt is deliberately slow).

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use concord_proto::authpb::Permission;
use concord_proto::concordpb::auth_command::Op as AuthOp;
use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::{AuthCommand, AuthenticateCommand};
use concord_proto::etcdserverpb::auth_server::Auth;
use concord_proto::etcdserverpb::*;
use concord_storage::{auth, AuthEffect, AuthError, WriteResult};
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::{tokens, Credentials, Identity, Sender};
use crate::context::MemberContext;
use crate::errors;

/// How often Authenticate checks a password again when the auth store changed meanwhile.
const AUTHENTICATE_ATTEMPTS: usize = 5;

/// The Auth service of one member.
pub struct AuthService {
    ctx: Arc<MemberContext>,
    /// Bounds the bcrypt work running at once to the number of cores.
    bcrypt_slots: Arc<Semaphore>,
}

impl AuthService {
    /// An Auth service over the member's shared context.
    pub fn new(ctx: Arc<MemberContext>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        AuthService {
            ctx,
            bcrypt_slots: Arc::new(Semaphore::new(cores)),
        }
    }

    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(self.ctx.header(revision))
    }

    fn current_header(&self) -> Option<ResponseHeader> {
        self.header(self.ctx.store.current_revision())
    }

    /// Proposes an auth change as the caller and answers with the header of its revision.
    async fn change(&self, creds: &Credentials, op: AuthOp) -> Result<(Option<ResponseHeader>, AuthEffect), Status> {
        let group = self.ctx.router.default_group();
        let sender = self.ctx.auth.sender(creds, group).await?;
        self.propose(&sender, op).await
    }

    async fn propose(&self, sender: &Sender, op: AuthOp) -> Result<(Option<ResponseHeader>, AuthEffect), Status> {
        let group = self.ctx.router.default_group();
        let command = Op::Auth(AuthCommand { op: Some(op) });
        match self.ctx.propose_write(group, sender, command).await? {
            WriteResult::Auth(applied) => {
                let revision = applied.header.as_ref().map_or(0, |h| h.revision);
                Ok((self.header(revision), applied.effect))
            }
            other => Err(errors::unexpected_apply_result_at(other.revision())),
        }
    }

    /// A caller that may not change the auth store is refused before its password is hashed
    /// (bcrypt is costly); apply checks again.
    async fn admin_first(&self, creds: &Credentials) -> Result<(), Status> {
        self.ctx
            .auth
            .require_admin(creds, self.ctx.router.default_group())
            .await?;
        Ok(())
    }

    /// The caller of an auth read, after a ReadIndex barrier.
    async fn reader(&self, creds: &Credentials) -> Result<Option<Identity>, Status> {
        let group = self.ctx.router.default_group();
        group.read_barrier().await.map_err(errors::from_raft)?;
        self.ctx.auth.identity(creds, group).await
    }

    /// bcrypt of `password` at the member's cost, base64-encoded as etcd's `hashedPassword`.
    async fn hash(&self, password: Zeroizing<String>) -> Result<String, Status> {
        let _slot = self.bcrypt_slots.acquire().await.map_err(|_| errors::stopped())?;
        let cost = self.ctx.auth.bcrypt_cost;
        let hashed = tokio::task::spawn_blocking(move || bcrypt::non_truncating_hash(password.as_bytes(), cost))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| match e {
                // Go's bcrypt refuses the same, and etcd passes its error on as is.
                bcrypt::BcryptError::Truncation(_) => errors::password_too_long(),
                other => errors::password_hash_failed(other),
            })?;
        Ok(base64::engine::general_purpose::STANDARD.encode(hashed))
    }

    /// Whether `password` matches the stored bcrypt `hash`.
    async fn verify(&self, password: Zeroizing<String>, hash: Vec<u8>) -> Result<bool, Status> {
        let _slot = self.bcrypt_slots.acquire().await.map_err(|_| errors::stopped())?;
        tokio::task::spawn_blocking(move || {
            let hash = String::from_utf8(hash).unwrap_or_default();
            bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))
    }

    /// Checks a password as etcd's `CheckPassword`, with the failed-login limiter around it.
    async fn check_password(&self, name: &str, password: Zeroizing<String>) -> Result<(), AuthError> {
        let limiter = &self.ctx.auth.failed_logins;
        let now = Instant::now();
        if let Err(left) = limiter.check(name, now) {
            tracing::warn!(user = loggable(name), locked_for = ?left, "authentication refused: too many failed attempts for this user");
            return Err(AuthError::AuthFailed);
        }
        let verdict = match self.ctx.store.auth_user(name).map_err(|_| AuthError::AuthFailed)? {
            None => Err(AuthError::AuthFailed),
            Some(user) if user.options.as_ref().is_some_and(|o| o.no_password) => Err(AuthError::NoPasswordUser),
            Some(user) => match self.verify(password, user.password).await {
                Ok(true) => Ok(()),
                _ => Err(AuthError::AuthFailed),
            },
        };
        match verdict {
            Ok(()) => limiter.succeeded(name),
            Err(err) => {
                tracing::warn!(user = loggable(name), "invalid authentication was requested: {err}");
                if let Some(lock) = limiter.failed(name, now) {
                    tracing::warn!(
                        user = loggable(name),
                        ?lock,
                        "too many failed authentications: refusing this user for a while"
                    );
                }
            }
        }
        verdict
    }
}

/// The password of a request, taken out of it so it is wiped when dropped.
fn take_password(password: &mut String) -> Zeroizing<String> {
    Zeroizing::new(std::mem::take(password))
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(&self, request: Request<AuthEnableRequest>) -> Result<Response<AuthEnableResponse>, Status> {
        // The shards' stores apply writes without the auth state, which lives in group 1's.
        if self.ctx.router.is_sharded() {
            return Err(errors::unsharded_only("authentication"));
        }
        let creds = Credentials::of(&request);
        let (header, _) = self.change(&creds, AuthOp::Enable(request.into_inner())).await?;
        tracing::info!("authentication enabled");
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let creds = Credentials::of(&request);
        let (header, _) = self.change(&creds, AuthOp::Disable(request.into_inner())).await?;
        tracing::info!("authentication disabled");
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(&self, request: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
        let creds = Credentials::of(&request);
        let id = self.reader(&creds).await?;
        self.ctx.auth.check_admin(id.as_ref())?;
        let status = self.ctx.auth.status();
        Ok(Response::new(AuthStatusResponse {
            header: self.current_header(),
            enabled: status.enabled,
            auth_revision: status.revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let mut req = request.into_inner();
        let password = take_password(&mut req.password);
        let group = self.ctx.router.default_group();
        // Like etcd, check against everything committed before the call.
        group.read_barrier().await.map_err(errors::from_raft)?;
        let auth = &self.ctx.auth;
        for _ in 0..AUTHENTICATE_ATTEMPTS {
            let status = auth.status();
            if !status.enabled {
                return Err(errors::from_auth(AuthError::AuthNotEnabled));
            }
            self.check_password(&req.name, password.clone())
                .await
                .map_err(errors::from_auth)?;
            if let Some(jwt) = auth.tokens.jwt() {
                let token = jwt.sign(&req.name, status.revision).map_err(Status::unknown)?;
                return Ok(Response::new(AuthenticateResponse {
                    header: self.current_header(),
                    token,
                }));
            }
            let token = tokens::new_simple_token().map_err(Status::internal)?;
            let op = AuthOp::Authenticate(AuthenticateCommand {
                name: req.name.clone(),
                token_digest: tokens::digest(&token).to_vec(),
                checked_revision: status.revision,
            });
            match self.propose(&Sender::Client(None), op).await? {
                (header, AuthEffect::Authenticated { .. }) => {
                    return Ok(Response::new(AuthenticateResponse { header, token }));
                }
                // The auth store changed after the check: check again, as etcd does.
                _ => tracing::debug!(user = %req.name, "auth store changed during authentication; checking again"),
            }
        }
        Err(errors::from_raft(concord_raft::RaftError::Timeout))
    }

    async fn user_add(&self, request: Request<AuthUserAddRequest>) -> Result<Response<AuthUserAddResponse>, Status> {
        let creds = Credentials::of(&request);
        let mut req = request.into_inner();
        let password = take_password(&mut req.password);
        req.hashed_password.clear();
        self.admin_first(&creds).await?;
        if !req.options.as_ref().is_some_and(|o| o.no_password) {
            req.hashed_password = self.hash(password).await?;
        }
        let (header, _) = self.change(&creds, AuthOp::UserAdd(req)).await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(&self, request: Request<AuthUserGetRequest>) -> Result<Response<AuthUserGetResponse>, Status> {
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        let id = self.reader(&creds).await?;
        // Users may look themselves up.
        if let Err(refused) = self.ctx.auth.check_admin(id.as_ref()) {
            if id.as_ref().map(|i| i.username.as_str()) != Some(req.name.as_str()) {
                return Err(refused);
            }
        }
        let user = self.ctx.store.auth_user(&req.name).map_err(errors::from_kv)?;
        let user = user.ok_or_else(|| errors::from_auth(AuthError::UserNotFound))?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.current_header(),
            roles: user.roles,
        }))
    }

    async fn user_list(&self, request: Request<AuthUserListRequest>) -> Result<Response<AuthUserListResponse>, Status> {
        let creds = Credentials::of(&request);
        let id = self.reader(&creds).await?;
        self.ctx.auth.check_admin(id.as_ref())?;
        let users = self.ctx.store.auth_users().map_err(errors::from_kv)?;
        Ok(Response::new(AuthUserListResponse {
            header: self.current_header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let creds = Credentials::of(&request);
        let (header, _) = self.change(&creds, AuthOp::UserDelete(request.into_inner())).await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let creds = Credentials::of(&request);
        let mut req = request.into_inner();
        let password = take_password(&mut req.password);
        self.admin_first(&creds).await?;
        req.hashed_password = self.hash(password).await?;
        let (header, _) = self.change(&creds, AuthOp::UserChangePassword(req)).await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let creds = Credentials::of(&request);
        let (header, _) = self.change(&creds, AuthOp::UserGrantRole(request.into_inner())).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let creds = Credentials::of(&request);
        let (header, _) = self
            .change(&creds, AuthOp::UserRevokeRole(request.into_inner()))
            .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(&self, request: Request<AuthRoleAddRequest>) -> Result<Response<AuthRoleAddResponse>, Status> {
        let creds = Credentials::of(&request);
        let (header, _) = self.change(&creds, AuthOp::RoleAdd(request.into_inner())).await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(&self, request: Request<AuthRoleGetRequest>) -> Result<Response<AuthRoleGetResponse>, Status> {
        let creds = Credentials::of(&request);
        let req = request.into_inner();
        let id = self.reader(&creds).await?;
        // Users may look up the roles they hold.
        if let Err(refused) = self.ctx.auth.check_admin(id.as_ref()) {
            let holder = match &id {
                Some(id) => self.ctx.store.auth_user(&id.username).map_err(errors::from_kv)?,
                None => None,
            };
            if !auth::has_role(holder.as_ref(), &req.role) {
                return Err(refused);
            }
        }
        let role = self.ctx.store.auth_role(&req.role).map_err(errors::from_kv)?;
        let role = role.ok_or_else(|| errors::from_auth(AuthError::RoleNotFound))?;
        let perm: Vec<Permission> = if req.role == auth::ROOT_NAME {
            vec![auth::root_permission()]
        } else {
            role.key_permission
        };
        Ok(Response::new(AuthRoleGetResponse {
            header: self.current_header(),
            perm,
        }))
    }

    async fn role_list(&self, request: Request<AuthRoleListRequest>) -> Result<Response<AuthRoleListResponse>, Status> {
        let creds = Credentials::of(&request);
        let id = self.reader(&creds).await?;
        self.ctx.auth.check_admin(id.as_ref())?;
        let roles = self.ctx.store.auth_roles().map_err(errors::from_kv)?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.current_header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let creds = Credentials::of(&request);
        let (header, _) = self.change(&creds, AuthOp::RoleDelete(request.into_inner())).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let creds = Credentials::of(&request);
        let (header, _) = self
            .change(&creds, AuthOp::RoleGrantPermission(request.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let creds = Credentials::of(&request);
        let (header, _) = self
            .change(&creds, AuthOp::RoleRevokePermission(request.into_inner()))
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}

/// A user name as it goes into a log line: whole when short, else its first 64 characters and
/// its length, since an unauthenticated client chooses it and may make it as long as a request.
fn loggable(name: &str) -> String {
    const SHOWN: usize = 64;
    match name.char_indices().nth(SHOWN) {
        None => name.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes)", &name[..cut], name.len()),
    }
}
