//! etcd's health endpoints.
//!
//! - `/health`: `{"health":"true","reason":""}`, or `"false"` with etcd's reason (`RAFT NO
//!   LEADER`, for any shard's group this member serves; `ALARM NOSPACE`, `RANGE ERROR:…`) and
//!   status 503. `?serializable=true` skips the
//!   linearizable read; `?exclude=NOSPACE` ignores that alarm.
//! - `/livez` and `/readyz` (etcd 3.6): plain `ok`, or 503 and the failed checks; `?verbose`
//!   lists every check as `[+]name ok` or `[-]name failed: reason`, and `?exclude=name` skips one.
//!   `/livez` asks only whether the member can read its own store; `/readyz` also asks for a
//!   linearizable read (a leader and a quorum) and the absence of a CORRUPT alarm.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use concord_proto::etcdserverpb::RangeRequest;

use super::HttpState;
use crate::maintenance::alarm_name;

pub async fn health(State(state): State<HttpState>, Query(params): Query<HashMap<String, String>>) -> Response {
    let excluded: Vec<&str> = params
        .get("exclude")
        .map(|e| e.split(',').collect())
        .unwrap_or_default();
    let serializable = params.get("serializable").is_some_and(|v| v == "true");
    let reason = match check_health(&state, &excluded, serializable).await {
        Ok(()) => return health_json(StatusCode::OK, "true", ""),
        Err(reason) => reason,
    };
    tracing::warn!(%reason, "serving /health false");
    health_json(StatusCode::SERVICE_UNAVAILABLE, "false", &reason)
}

async fn check_health(state: &HttpState, excluded: &[&str], serializable: bool) -> Result<(), String> {
    let ctx = &state.ctx;
    let alarms = ctx.store.alarms().map_err(|e| format!("RANGE ERROR:{e}"))?;
    for alarm in alarms {
        let name = alarm_name(alarm.alarm);
        if !excluded.contains(&name) {
            return Err(format!("ALARM {name}"));
        }
    }
    // Every group this member serves: with several shards, one without a leader takes no
    // writes, so the member is not healthy until each of its shards has one.
    if ctx.router.groups().iter().any(|group| group.leader_id() == 0) {
        return Err("RAFT NO LEADER".into());
    }
    let group = ctx.router.default_group();
    if !serializable {
        group
            .read_barrier()
            .await
            .map_err(|e| format!("RANGE ERROR:{}", crate::errors::from_raft(e).message()))?;
    }
    read_locally(state).map_err(|e| format!("RANGE ERROR:{e}"))
}

/// etcd 3.5's answer: the JSON body with the headers Go's `net/http` gives it (etcd sets no
/// content type, so Go's sniffing says text; a failure goes through `http.Error`, which adds
/// `nosniff` and a newline).
fn health_json(status: StatusCode, health: &str, reason: &str) -> Response {
    let body = serde_json::json!({ "health": health, "reason": reason }).to_string();
    let text = (header::CONTENT_TYPE, "text/plain; charset=utf-8");
    if status.is_success() {
        (status, [text], body).into_response()
    } else {
        let nosniff = (header::X_CONTENT_TYPE_OPTIONS, "nosniff");
        (status, [text, nosniff], format!("{body}\n")).into_response()
    }
}

/// A one-key read of the local store, which is what etcd's health check issues.
fn read_locally(state: &HttpState) -> Result<(), String> {
    let probe = RangeRequest {
        key: b"health".to_vec(),
        limit: 1,
        keys_only: true,
        serializable: true,
        ..Default::default()
    };
    state.ctx.store.range(&probe).map(|_| ()).map_err(|e| e.to_string())
}

/// One named check of `/livez` or `/readyz`.
type Check = (&'static str, Result<(), String>);

pub async fn livez(State(state): State<HttpState>, Query(params): Query<HashMap<String, String>>) -> Response {
    let checks = vec![("serializable_read", read_locally(&state))];
    report("livez", checks, &params)
}

pub async fn readyz(State(state): State<HttpState>, Query(params): Query<HashMap<String, String>>) -> Response {
    let corrupt = match state.ctx.store.alarms() {
        Ok(alarms) if alarms.iter().any(|a| alarm_name(a.alarm) == "CORRUPT") => {
            Err("alarm CORRUPT is raised".to_string())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    let linearizable = state
        .ctx
        .router
        .default_group()
        .read_barrier()
        .await
        .map_err(|e| crate::errors::from_raft(e).message().to_string())
        .and_then(|()| read_locally(&state));
    let checks = vec![
        ("data_corruption", corrupt),
        ("serializable_read", read_locally(&state)),
        ("linearizable_read", linearizable),
    ];
    report("readyz", checks, &params)
}

fn report(endpoint: &str, checks: Vec<Check>, params: &HashMap<String, String>) -> Response {
    let excluded: Vec<&str> = params
        .get("exclude")
        .map(|e| e.split(',').collect())
        .unwrap_or_default();
    let verbose = params.contains_key("verbose");
    let mut lines = String::new();
    let mut failed = false;
    for (name, result) in &checks {
        if excluded.contains(name) {
            lines.push_str(&format!("[+]{name} excluded: ok\n"));
            continue;
        }
        match result {
            Ok(()) => lines.push_str(&format!("[+]{name} ok\n")),
            Err(reason) => {
                failed = true;
                lines.push_str(&format!("[-]{name} failed: {reason}\n"));
            }
        }
    }
    let (status, body) = match (failed, verbose) {
        (false, false) => (StatusCode::OK, "ok".to_string()),
        (false, true) => (StatusCode::OK, format!("{lines}{endpoint} check passed\n")),
        (true, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{lines}{endpoint} check failed\n"),
        ),
    };
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}
