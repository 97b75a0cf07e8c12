//! etcd's authentication and role-based authorization on a member.
//!
//! The auth store itself (users, roles, permissions, the enabled flag, the auth revision) is
//! replicated state in the MVCC store (`concord_storage::auth`); writes are checked there, at
//! apply time, against the auth state at their log position. This module is the member's side:
//!
//! - [`AuthState`]: what the member keeps in memory: the enabled flag and revision as of the last
//!   applied entry, the tokens it accepts, a permission cache, the failed-login limiter.
//! - Identity ([`AuthState::identity`]): who sent a request, from the gRPC metadata key `token`
//!   (as etcd clients send it), else from the client certificate ([`user_from_client_cert`],
//!   the TLS hook). [`Sender`] is what a proposed command carries.
//! - [`tokens`]: etcd's `simple` tokens (random, replicated as a digest, expiring after
//!   `--auth-token-ttl` of disuse) and [`jwt`] tokens (signed, with an expiry, verifiable anywhere).
//! - [`check`]: the checks made outside apply: reads after their ReadIndex barrier, watches,
//!   admin-only RPCs. [`rate`]: the failed-authentication limiter. [`service`]: the Auth service.
//!
//! Secrets never reach a log: passwords are hashed (bcrypt) on the member that receives them and
//! only the hash is proposed; tokens are logged nowhere and replicated only as SHA-256 digests;
//! the protobuf messages that hold them print `<redacted>` (see `concord_proto`).

pub mod check;
pub mod jwt;
pub mod rate;
pub mod service;
pub mod tokens;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::{Authorized, RaftCommand, Requester};
use concord_storage::{AuthEffect, AuthError, AuthStatus, MvccStore};
use tonic::Status;

use crate::errors;
use crate::router::GroupHandle;
use check::PermCache;
use rate::FailedLogins;
use tokens::{TokenKind, Tokens};

/// The gRPC metadata key etcd clients send their token in.
pub const TOKEN_METADATA_KEY: &str = "token";

/// The key etcd also accepts a token in (its gRPC gateway's `Authorization` header).
pub const GATEWAY_TOKEN_METADATA_KEY: &str = "authorization";

/// etcd's default bcrypt cost (`--bcrypt-cost`).
pub const DEFAULT_BCRYPT_COST: u32 = 10;

/// etcd's default `--auth-token-ttl`: how long a simple token lives without use.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// The auth flags of a member (etcd's `--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`).
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// `--auth-token`: `simple`, or `jwt,pub-key=<path>,priv-key=<path>,sign-method=<alg>[,ttl=<d>]`.
    pub token: String,
    /// `--auth-token-ttl`: how long a simple token stays valid without use.
    pub token_ttl: Duration,
    /// `--bcrypt-cost`: the work factor of password hashes (4 to 31).
    pub bcrypt_cost: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token: "simple".into(),
            token_ttl: DEFAULT_TOKEN_TTL,
            bcrypt_cost: DEFAULT_BCRYPT_COST,
        }
    }
}

/// Who sent a request, once its credentials have been checked.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub username: String,
    /// The auth revision the identity holds for: for simple tokens and certificates the
    /// member's revision when it resolved them, for JWTs the revision they were signed at.
    pub revision: u64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.username, self.revision)
    }
}

/// On whose behalf a command is proposed: apply checks it (see `concord_storage::auth`).
#[derive(Clone, Debug)]
pub enum Sender {
    /// A client; `None` when it sent no credentials (or auth was off when it was resolved).
    Client(Option<Identity>),
    /// The member itself (lease expiry, alarms it raises): allowed everything.
    Member,
}

impl Sender {
    /// `op` as proposed on this sender's behalf: wrapped in an `Authorized` envelope naming the
    /// sender, or left bare for a client without identity (which apply treats as nobody).
    pub fn envelope(&self, op: Op) -> Op {
        let requester = match self {
            Sender::Client(None) => return op,
            Sender::Client(Some(id)) => Requester {
                username: id.username.clone(),
                auth_revision: id.revision,
                member: false,
            },
            Sender::Member => Requester {
                member: true,
                ..Default::default()
            },
        };
        Op::Authorized(Box::new(Authorized {
            requester: Some(requester),
            command: Some(Box::new(RaftCommand { op: Some(op) })),
        }))
    }
}

/// The credentials a request came with, taken from its metadata and extensions before the
/// request is consumed. Its `Debug` never shows the token.
#[derive(Clone, Default)]
pub struct Credentials {
    token: Option<String>,
    cert_user: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cert_user", &self.cert_user)
            .finish()
    }
}

impl Credentials {
    /// The credentials of `request`: its `token` metadata (etcd's `TokenFieldNameGRPC`, else
    /// `authorization`, which etcd's gRPC gateway uses) and the user its client certificate
    /// names, if any.
    pub fn of<T>(request: &tonic::Request<T>) -> Credentials {
        let metadata = request.metadata();
        let token = metadata
            .get(TOKEN_METADATA_KEY)
            .or_else(|| metadata.get(GATEWAY_TOKEN_METADATA_KEY))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Credentials {
            token,
            cert_user: user_from_client_cert(request.extensions()),
        }
    }

    /// Whether the request carried a token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Copies the token onto a request this member forwards (to the leader) for the same
    /// client, so the member answering it sees the same identity. A certificate-based identity
    /// does not travel this way (the forwarded call uses the member's own connection).
    pub fn attach<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(value) = self.token.as_deref().and_then(|t| t.parse().ok()) {
            request.metadata_mut().insert(TOKEN_METADATA_KEY, value);
        }
    }
}

/// The user named by the verified client certificate of the connection a request came on (its
/// subject common name), when the member runs with `--client-cert-auth`, as etcd's
/// `AuthInfoFromTLS`. A token, when present, takes precedence (see [`AuthState::identity`]).
/// Without `--client-cert-auth` no certificate is asked for, so there is none to read.
pub fn user_from_client_cert(extensions: &tonic::Extensions) -> Option<String> {
    crate::tls::certificate_user(extensions)
}

/// What a member knows of auth beyond the store: see the module docs.
pub struct AuthState {
    store: Arc<MvccStore>,
    enabled: AtomicBool,
    revision: AtomicU64,
    tokens: Tokens,
    perms: PermCache,
    failed_logins: FailedLogins,
    bcrypt_cost: u32,
}

impl AuthState {
    /// The auth state of a member whose store is `store`, with its flags. Fails on flags etcd
    /// would refuse (an unknown token kind, unreadable keys, a bcrypt cost out of range).
    pub fn new(store: Arc<MvccStore>, config: &AuthConfig) -> Result<Arc<AuthState>, String> {
        let mut bcrypt_cost = config.bcrypt_cost;
        if !(4..=31).contains(&bcrypt_cost) {
            // As etcd: an invalid cost falls back to the default, with a warning.
            tracing::warn!(
                given = bcrypt_cost,
                default = DEFAULT_BCRYPT_COST,
                "--bcrypt-cost must be between 4 and 31; using the default"
            );
            bcrypt_cost = DEFAULT_BCRYPT_COST;
        }
        let kind = TokenKind::parse(&config.token)?;
        let status = store.auth_status().map_err(|e| e.to_string())?;
        Ok(Arc::new(AuthState {
            store,
            enabled: AtomicBool::new(status.enabled),
            revision: AtomicU64::new(status.revision),
            tokens: Tokens::new(kind, config.token_ttl),
            perms: PermCache::default(),
            failed_logins: FailedLogins::default(),
            bcrypt_cost,
        }))
    }

    /// Whether auth is enabled and the auth revision, as of the last entry this member applied.
    pub fn status(&self) -> AuthStatus {
        AuthStatus {
            enabled: self.enabled.load(Ordering::Acquire),
            revision: self.revision.load(Ordering::Acquire),
        }
    }

    /// Whether auth is enabled, as of the last applied entry.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The store this state belongs to.
    pub fn store(&self) -> &Arc<MvccStore> {
        &self.store
    }

    /// Re-reads the enabled flag and revision from the store. The state machine calls it after
    /// applying auth changes and before the Raft driver reports them applied, so a read that
    /// passed a ReadIndex barrier always sees them.
    pub fn refresh(&self) {
        match self.store.auth_status() {
            Ok(status) => {
                self.revision.store(status.revision, Ordering::Release);
                self.enabled.store(status.enabled, Ordering::Release);
            }
            Err(err) => tracing::error!("cannot read the auth status: {err}"),
        }
    }

    /// Takes in what an applied auth command means for the member's memory (tokens).
    pub fn on_applied(&self, effect: &AuthEffect) {
        match effect {
            AuthEffect::Authenticated { name, token_digest } => self.tokens.remember(token_digest, name),
            AuthEffect::UserInvalidated(name) => self.tokens.forget_user(name),
            AuthEffect::Disabled => self.tokens.forget_all(),
            AuthEffect::Enabled | AuthEffect::Changed | AuthEffect::Stale => {}
        }
    }

    /// After a snapshot replaced the store: reloads the status and drops the tokens the new
    /// state no longer backs (all of them if auth is now off, else those of vanished users).
    pub fn on_snapshot_installed(&self) {
        self.refresh();
        if !self.enabled() {
            self.tokens.forget_all();
            return;
        }
        let store = self.store.clone();
        self.tokens
            .retain_users(|user| store.auth_user(user).map(|u| u.is_some()).unwrap_or(true));
    }

    /// etcd's `AuthInfoFromCtx`: who sent a request. `None` while auth is disabled, or when the
    /// request carries neither a token nor a client certificate naming a user. A token that is
    /// unknown, expired or badly signed is refused with "invalid auth token".
    ///
    /// A simple token may be fresh from another member that has applied the authentication
    /// before this one: a token this member does not know is looked up once more after a
    /// ReadIndex barrier on `group` (etcd waits for the index in the token instead). Likewise a
    /// token sent while auth looks disabled here: the AuthEnable may not be applied yet.
    pub async fn identity(&self, creds: &Credentials, group: &GroupHandle) -> Result<Option<Identity>, Status> {
        if !self.enabled() {
            if creds.token.is_none() {
                return Ok(None);
            }
            // A client with a token believes auth is on: this member may not have applied the
            // AuthEnable yet (etcd then proposes without a user, and apply refuses the request).
            group.read_barrier().await.map_err(errors::from_raft)?;
            if !self.enabled() {
                return Ok(None);
            }
        }
        if let Some(token) = &creds.token {
            if let Some(id) = self.tokens.resolve(token, self.status().revision) {
                return Ok(Some(id));
            }
            if self.tokens.may_be_unapplied() {
                group.read_barrier().await.map_err(errors::from_raft)?;
                if let Some(id) = self.tokens.resolve(token, self.status().revision) {
                    return Ok(Some(id));
                }
            }
            return Err(errors::from_auth(AuthError::InvalidAuthToken));
        }
        Ok(creds.cert_user.as_ref().map(|user| Identity {
            username: user.clone(),
            revision: self.status().revision,
        }))
    }

    /// The sender to propose a client's command as: its identity, as [`identity`](Self::identity).
    pub async fn sender(&self, creds: &Credentials, group: &GroupHandle) -> Result<Sender, Status> {
        Ok(Sender::Client(self.identity(creds, group).await?))
    }
}
