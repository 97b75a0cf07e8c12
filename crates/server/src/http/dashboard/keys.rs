//! The key browser: a prefix search, and one key in full with its earlier versions and lease.
//!
//! Every read goes through the KV service in-process, as a client's Range would: a ReadIndex
//! barrier (linearizable), then the caller's read permission checked with the token the page
//! sent. Values that are printable UTF-8 are shown as text, anything else as base64.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use base64::Engine as _;
use concord_proto::etcdserverpb::kv_server::Kv as _;
use concord_proto::etcdserverpb::lease_server::Lease as _;
use concord_proto::etcdserverpb::{RangeRequest, RangeResponse};
use concord_proto::mvccpb::KeyValue;
use serde::{Deserialize, Serialize};

use super::{hex_id, session, ApiError, Dashboard};
use crate::kv::KvService;

/// The most keys one search returns.
const MAX_LIMIT: i64 = 1000;
/// Keys a search returns when it names no limit.
const DEFAULT_LIMIT: i64 = 100;
/// Bytes of each value a search returns; the key's own page shows all of it.
const PREVIEW_BYTES: usize = 1024;
/// Earlier versions shown for one key.
const HISTORY: usize = 10;

/// What `/ui/api/keys` takes.
#[derive(Deserialize)]
pub struct KeysQuery {
    /// Keys starting with this (all keys when empty).
    #[serde(default)]
    prefix: String,
    /// The most keys to return.
    limit: Option<i64>,
}

/// What `/ui/api/key` takes: the key as text, or its bytes in base64.
#[derive(Deserialize)]
pub struct KeyQuery {
    key: Option<String>,
    key_b64: Option<String>,
}

/// Bytes for display: UTF-8 text when printable, else base64.
#[derive(Clone, Debug, Serialize)]
pub struct Encoded {
    /// The text, or the base64 of the bytes.
    pub text: String,
    /// `utf8` or `base64`.
    pub encoding: &'static str,
}

/// One key as a search lists it.
#[derive(Clone, Debug, Serialize)]
pub struct KeyEntry {
    /// The key.
    pub key: Encoded,
    /// The key's bytes in base64, to ask for it again whatever they are.
    pub key_b64: String,
    /// The value, or its first bytes in a search.
    pub value: Encoded,
    /// The value's size in bytes.
    pub value_size: usize,
    /// Whether `value` holds only the first bytes.
    pub truncated: bool,
    /// The revision the key was created at.
    pub create_revision: i64,
    /// The revision of its last change.
    pub mod_revision: i64,
    /// How many times it was written since created.
    pub version: i64,
    /// The lease it is attached to, in hex.
    pub lease: Option<String>,
}

/// What a prefix search found.
#[derive(Debug, Serialize)]
pub struct KeyList {
    /// The revision read at.
    pub revision: i64,
    /// How many keys have the prefix in all.
    pub count: i64,
    /// Whether there are more than listed.
    pub more: bool,
    /// The keys, ascending.
    pub keys: Vec<KeyEntry>,
}

/// One key in full.
#[derive(Debug, Serialize)]
pub struct KeyDetail {
    /// The revision read at.
    pub revision: i64,
    /// The key now.
    pub entry: KeyEntry,
    /// Its earlier versions, newest first, while the store still has them (not compacted).
    pub history: Vec<KeyEntry>,
    /// Its lease's TTL now, when it has a lease: `(ttl, granted_ttl)` seconds; -1 when expired.
    pub lease_ttl: Option<(i64, i64)>,
}

/// `GET /ui/api/keys?prefix=&limit=`.
pub async fn list(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Query(query): Query<KeysQuery>,
) -> Result<Json<KeyList>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let prefix = query.prefix.into_bytes();
    let (key, range_end) = if prefix.is_empty() {
        (vec![0], vec![0])
    } else {
        (prefix.clone(), crate::concurrency::prefix_end(&prefix))
    };
    let resp = range(
        &dashboard,
        &headers,
        RangeRequest {
            key,
            range_end,
            limit,
            ..Default::default()
        },
    )
    .await?;
    Ok(Json(KeyList {
        revision: resp.header.as_ref().map_or(0, |h| h.revision),
        count: resp.count,
        more: resp.more,
        keys: resp.kvs.iter().map(|kv| entry(kv, PREVIEW_BYTES)).collect(),
    }))
}

/// `GET /ui/api/key?key=` or `?key_b64=`.
pub async fn detail(
    State(dashboard): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Query(query): Query<KeyQuery>,
) -> Result<Json<KeyDetail>, ApiError> {
    let key = match (query.key, query.key_b64) {
        (_, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| ApiError::new(axum::http::StatusCode::BAD_REQUEST, format!("key_b64: {e}")))?,
        (Some(text), None) => text.into_bytes(),
        (None, None) => {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "name a key: ?key= or ?key_b64=",
            ))
        }
    };
    let one = |revision: i64| RangeRequest {
        key: key.clone(),
        revision,
        serializable: revision != 0,
        ..Default::default()
    };
    let resp = range(&dashboard, &headers, one(0)).await?;
    let revision = resp.header.as_ref().map_or(0, |h| h.revision);
    let Some(kv) = resp.kvs.first() else {
        return Err(ApiError::new(axum::http::StatusCode::NOT_FOUND, "no such key"));
    };

    // Earlier versions: read the key as of the revision just before each change, until it did
    // not exist then, or the store compacted that far. Past revisions never change, so once
    // the first read has caught up these need no barrier.
    let mut history = Vec::new();
    let mut before = kv.mod_revision - 1;
    while history.len() < HISTORY && before > 0 {
        let Ok(older) = range(&dashboard, &headers, one(before)).await else {
            break;
        };
        let Some(old) = older.kvs.first() else { break };
        history.push(entry(old, PREVIEW_BYTES));
        before = old.mod_revision - 1;
    }

    let lease_ttl = if kv.lease != 0 {
        lease_ttl(&dashboard, &headers, kv.lease).await
    } else {
        None
    };
    Ok(Json(KeyDetail {
        revision,
        entry: entry(kv, usize::MAX),
        history,
        lease_ttl,
    }))
}

/// A Range through the KV service, with the page's token.
async fn range(dashboard: &Dashboard, headers: &HeaderMap, req: RangeRequest) -> Result<RangeResponse, ApiError> {
    if dashboard.http.ctx.auth.enabled() && session::token(headers).is_none() {
        return Err(ApiError::unauthorized());
    }
    let kv = KvService::new(dashboard.http.ctx.clone());
    Ok(kv.range(session::request(headers, req)).await?.into_inner())
}

/// A lease's TTL from the leader's lease clock, through the Lease service.
async fn lease_ttl(dashboard: &Dashboard, headers: &HeaderMap, id: i64) -> Option<(i64, i64)> {
    let req = concord_proto::etcdserverpb::LeaseTimeToLiveRequest { id, keys: false };
    let call = dashboard.http.leases.lease_time_to_live(session::request(headers, req));
    let resp = tokio::time::timeout(std::time::Duration::from_secs(2), call)
        .await
        .ok()?
        .ok()?
        .into_inner();
    Some((resp.ttl, resp.granted_ttl))
}

fn entry(kv: &KeyValue, max_value_bytes: usize) -> KeyEntry {
    let shown = &kv.value[..kv.value.len().min(max_value_bytes)];
    KeyEntry {
        key: encode(&kv.key, false),
        key_b64: base64::engine::general_purpose::STANDARD.encode(&kv.key),
        value: encode(shown, shown.len() < kv.value.len()),
        value_size: kv.value.len(),
        truncated: shown.len() < kv.value.len(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: (kv.lease != 0).then(|| hex_id(kv.lease as u64)),
    }
}

/// Text when `bytes` are UTF-8 without control characters (tabs and newlines aside). When
/// `cut` (a preview of a longer value), a last character cut in two is left out.
pub fn encode(bytes: &[u8], cut: bool) -> Encoded {
    let text = match std::str::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(e) if cut && e.error_len().is_none() => std::str::from_utf8(&bytes[..e.valid_up_to()]).ok(),
        Err(_) => None,
    };
    match text {
        Some(text) if text.chars().all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t')) => Encoded {
            text: text.to_string(),
            encoding: "utf8",
        },
        _ => Encoded {
            text: base64::engine::general_purpose::STANDARD.encode(bytes),
            encoding: "base64",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn printable_utf8_is_text_and_the_rest_base64() {
        assert_eq!(encode("héllo\n".as_bytes(), false).encoding, "utf8");
        assert_eq!(encode(&[0, 1, 2], false).encoding, "base64");
        assert_eq!(encode(&[0, 1, 2], false).text, "AAEC");
        assert_eq!(encode(&[0xff, 0xfe], false).encoding, "base64");
        // A preview cut in the middle of "é" is text; a whole value ending so is not.
        let cut = encode(&"hé".as_bytes()[..2], true);
        assert_eq!((cut.text.as_str(), cut.encoding), ("h", "utf8"));
        assert_eq!(encode(&"hé".as_bytes()[..2], false).encoding, "base64");
    }
}
