//! etcd's backend encodings (etcd 3.4/3.5: `mvcc/revision.go`, `mvcc/kvstore.go`,
//! `etcdserver/cindex`, `lease/lessor.go`, `auth/store.go`, `etcdserver/api/membership`): bucket
//! and key names, and how each value is laid out.

use concord_proto::etcdserverpb::Member;

/// The user keys' history: revision → `mvccpb.KeyValue`.
pub(crate) const KEY: &[u8] = b"key";
/// `consistent_index`, `term`, and the compaction marks.
pub(crate) const META: &[u8] = b"meta";
/// Lease id (8 bytes, big endian) → `leasepb.Lease`.
pub(crate) const LEASE: &[u8] = b"lease";
/// `authEnabled` (one byte) and `authRevision` (8 bytes, big endian).
pub(crate) const AUTH: &[u8] = b"auth";
/// User name → `authpb.User`.
pub(crate) const AUTH_USERS: &[u8] = b"authUsers";
/// Role name → `authpb.Role`.
pub(crate) const AUTH_ROLES: &[u8] = b"authRoles";
/// Member id in hex → the member as JSON.
pub(crate) const MEMBERS: &[u8] = b"members";
/// Removed member ids in hex → `removed`.
pub(crate) const MEMBERS_REMOVED: &[u8] = b"members_removed";
/// `clusterVersion`.
pub(crate) const CLUSTER: &[u8] = b"cluster";
/// `AlarmMember` protobuf → nothing.
pub(crate) const ALARM: &[u8] = b"alarm";

pub(crate) const CONSISTENT_INDEX: &[u8] = b"consistent_index";
pub(crate) const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
pub(crate) const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
pub(crate) const AUTH_ENABLED: &[u8] = b"authEnabled";
pub(crate) const AUTH_REVISION: &[u8] = b"authRevision";
pub(crate) const CLUSTER_VERSION: &[u8] = b"clusterVersion";
/// The cluster version written into exported files: what etcd 3.4 members record.
pub(crate) const EXPORTED_CLUSTER_VERSION: &[u8] = b"3.4.0";

/// Length of an encoded revision: `main (8, big endian) '_' sub (8, big endian)`.
pub(crate) const REV_LEN: usize = 17;
/// The suffix of a tombstone's revision key.
pub(crate) const TOMBSTONE: u8 = b't';

/// etcd's `revToBytes`, with the tombstone mark when `tombstone`.
pub(crate) fn revision_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(REV_LEN + 1);
    out.extend_from_slice(&main.to_be_bytes());
    out.push(b'_');
    out.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        out.push(TOMBSTONE);
    }
    out
}

/// A decoded revision key: `(main, sub, tombstone)`, or `None` if it is not one.
pub(crate) fn parse_revision_key(key: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match key.len() {
        REV_LEN => false,
        n if n == REV_LEN + 1 && key[REV_LEN] == TOMBSTONE => true,
        _ => return None,
    };
    if key[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(key[0..8].try_into().ok()?);
    let sub = i64::from_be_bytes(key[9..17].try_into().ok()?);
    Some((main, sub, tombstone))
}

/// etcd's `leasepb.Lease` (not in Concord's protos: it never travels on the wire).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LeaseRecord {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// A JSON string literal (Go's `encoding/json` escapes, enough for names and URLs).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '<' | '>' | '&' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_strings(list: &[String]) -> String {
    format!(
        "[{}]",
        list.iter().map(|s| json_string(s)).collect::<Vec<_>>().join(",")
    )
}

/// A member as etcd's membership store writes it: `json.Marshal(Member)` (the id as a number,
/// `omitempty` on the name, client URLs and learner flag).
pub(crate) fn member_json(m: &Member) -> String {
    let mut out = format!("{{\"id\":{},\"peerURLs\":{}", m.id, json_strings(&m.peer_ur_ls));
    if m.is_learner {
        out.push_str(",\"isLearner\":true");
    }
    if !m.name.is_empty() {
        out.push_str(&format!(",\"name\":{}", json_string(&m.name)));
    }
    if !m.client_ur_ls.is_empty() {
        out.push_str(&format!(",\"clientURLs\":{}", json_strings(&m.client_ur_ls)));
    }
    out.push('}');
    out
}

/// A member's key in `members`: its id in lower-case hex, as etcd's `types.ID.String()`.
pub(crate) fn member_key(id: u64) -> Vec<u8> {
    format!("{id:x}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_round_trip_and_sort_by_revision() {
        let a = revision_key(5, 0, false);
        assert_eq!(a.len(), REV_LEN);
        assert_eq!(parse_revision_key(&a), Some((5, 0, false)));
        let t = revision_key(5, 1, true);
        assert_eq!(parse_revision_key(&t), Some((5, 1, true)));
        assert!(a < t && t < revision_key(6, 0, false));
        assert!(revision_key(255, 0, false) < revision_key(256, 0, false));
        assert_eq!(parse_revision_key(b"short"), None);
        assert_eq!(parse_revision_key(&[0u8; 18]), None);
    }

    #[test]
    fn member_json_matches_go() {
        let m = Member {
            id: 10276657743932975437,
            name: "default".into(),
            peer_ur_ls: vec!["http://localhost:2380".into()],
            client_ur_ls: vec![],
            is_learner: false,
        };
        assert_eq!(
            member_json(&m),
            r#"{"id":10276657743932975437,"peerURLs":["http://localhost:2380"],"name":"default"}"#
        );
        assert_eq!(member_key(m.id), b"8e9e05c52164694d".to_vec());
    }
}
