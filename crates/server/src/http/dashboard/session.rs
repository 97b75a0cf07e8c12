//! Logging in, and carrying the page's token into the services' calls.
//!
//! With auth enabled the page logs in through `/ui/api/login` (etcd's Authenticate, with its
//! password checks and failed-login limits) and sends the token it gets back as
//! `Authorization: Bearer <token>`. Calls made on the page's behalf carry that token as the
//! `token` metadata a gRPC client would send, so the services check them exactly as theirs.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use concord_proto::etcdserverpb::auth_server::Auth as _;
use concord_proto::etcdserverpb::AuthenticateRequest;
use serde::{Deserialize, Serialize};

use super::{ApiError, Dashboard};
use crate::auth::Credentials;

/// What `/ui/api/login` takes.
#[derive(Deserialize)]
pub struct Login {
    name: String,
    password: String,
}

/// What `/ui/api/login` answers.
#[derive(Serialize)]
pub struct Session {
    /// The token to send as `Authorization: Bearer <token>`.
    token: String,
}

/// `POST /ui/api/login`: a token for a user name and password.
pub async fn login(
    State(dashboard): State<Arc<Dashboard>>,
    Json(login): Json<Login>,
) -> Result<Json<Session>, ApiError> {
    if !dashboard.http.ctx.auth.enabled() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "authentication is not enabled"));
    }
    let request = tonic::Request::new(AuthenticateRequest {
        name: login.name,
        password: login.password,
    });
    let token = dashboard.auth.authenticate(request).await?.into_inner().token;
    Ok(Json(Session { token }))
}

/// The token the page sent, from `Authorization: Bearer <token>` (or a bare token there, as
/// etcd's gateway takes it).
pub fn token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let token = value.strip_prefix("Bearer ").unwrap_or(value).trim();
    (!token.is_empty()).then(|| token.to_string())
}

/// `message` as a gRPC request carrying the page's token, if it sent one.
pub fn request<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = token(headers).and_then(|t| t.parse().ok()) {
        request.metadata_mut().insert(crate::auth::TOKEN_METADATA_KEY, value);
    }
    request
}

/// With auth enabled, the page must name a valid user (checked after a read barrier, as the
/// services check theirs); without auth, anyone may read.
pub async fn require_user(dashboard: &Dashboard, headers: &HeaderMap) -> Result<(), ApiError> {
    let ctx = &dashboard.http.ctx;
    if !ctx.auth.enabled() {
        return Ok(());
    }
    let creds = Credentials::of(&request(headers, ()));
    if !creds.has_token() {
        return Err(ApiError::unauthorized());
    }
    let group = ctx.router.default_group();
    group.read_barrier().await.map_err(crate::errors::from_raft)?;
    match ctx.auth.identity(&creds, group).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::unauthorized()),
    }
}
