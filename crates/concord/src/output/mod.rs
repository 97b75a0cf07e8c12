//! How the CLI prints what a cluster answered: etcdctl's `-w/--write-out`
//! formats, shared by `kv`, `lease`, `member`, `endpoint` and `snapshot`.
//!
//! - `simple` (the default) is etcdctl's plain text, so scripts written
//!   against etcdctl keep working;
//! - `table` draws etcdctl's bordered tables ([`table`]);
//! - `json` prints etcd's JSON shapes: the field names of etcd's Go structs,
//!   zero fields left out where Go's `omitempty` leaves them out, and keys
//!   and values in base64 (Go's encoding of `[]byte`).

pub mod table;

use base64::Engine as _;
use clap::{Args, ValueEnum};
use concord_proto::etcdserverpb::ResponseHeader;
use concord_proto::mvccpb::KeyValue;
use serde::Serialize;

pub use table::{Align, Table};

/// The output formats of etcdctl's `-w/--write-out` flag that Concord prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// etcdctl's default plain lines.
    #[default]
    Simple,
    /// Bordered, aligned columns.
    Table,
    /// etcd's JSON shapes, one document per answer.
    Json,
}

/// The `-w/--write-out` flag, for every command that prints an answer.
#[derive(Args, Debug, Clone, Copy)]
pub struct OutputArgs {
    /// Output format: simple, table or json (etcdctl's -w).
    #[arg(short = 'w', long, value_enum, default_value = "simple", global = true)]
    pub write_out: Format,
}

/// Prints `value` as one line of JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> Result<(), String> {
    println!("{}", to_json(value)?);
    Ok(())
}

/// `value` as compact JSON.
pub fn to_json<T: Serialize>(value: &T) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| format!("cannot print the answer as JSON: {e}"))
}

/// Go's `omitempty` for numbers and flags.
pub fn is_zero<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// etcd's `ResponseHeader` in JSON (every field `omitempty`).
#[derive(Serialize, Debug, Default, Clone, PartialEq)]
pub struct HeaderJson {
    /// The cluster's id.
    #[serde(skip_serializing_if = "is_zero")]
    pub cluster_id: u64,
    /// The id of the member that answered.
    #[serde(skip_serializing_if = "is_zero")]
    pub member_id: u64,
    /// The store's revision when it answered.
    #[serde(skip_serializing_if = "is_zero")]
    pub revision: i64,
    /// The Raft term when it answered.
    #[serde(skip_serializing_if = "is_zero")]
    pub raft_term: u64,
}

impl HeaderJson {
    /// The JSON form of a (possibly missing) header.
    pub fn of(header: &Option<ResponseHeader>) -> HeaderJson {
        header.as_ref().map_or_else(HeaderJson::default, |h| HeaderJson {
            cluster_id: h.cluster_id,
            member_id: h.member_id,
            revision: h.revision,
            raft_term: h.raft_term,
        })
    }
}

/// A response that carries only its header (a put, a lease revoke), as etcd prints it in JSON.
#[derive(Serialize, Debug)]
pub struct HeaderOnly {
    /// The response header.
    pub header: HeaderJson,
}

/// etcd's `mvccpb.KeyValue` in JSON: key and value in base64, zero fields left out.
#[derive(Serialize, Debug, Default, Clone, PartialEq)]
pub struct KeyValueJson {
    /// The key, base64.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// The revision of the key's creation.
    #[serde(skip_serializing_if = "is_zero")]
    pub create_revision: i64,
    /// The revision of the key's last change.
    #[serde(skip_serializing_if = "is_zero")]
    pub mod_revision: i64,
    /// Changes since its creation.
    #[serde(skip_serializing_if = "is_zero")]
    pub version: i64,
    /// The value, base64.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// The lease the key is attached to.
    #[serde(skip_serializing_if = "is_zero")]
    pub lease: i64,
}

impl KeyValueJson {
    /// The JSON form of a stored key-value.
    pub fn of(kv: &KeyValue) -> KeyValueJson {
        KeyValueJson {
            key: base64(&kv.key),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            value: base64(&kv.value),
            lease: kv.lease,
        }
    }
}

/// Bytes as Go's JSON encodes a `[]byte`: standard base64, padded.
pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Bytes as text for people (keys and values are usually UTF-8; anything else is shown lossily).
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A byte count as etcdctl's tables show it (go-humanize's SI units): `8 B`, `20 kB`, `2.1 MB`.
pub fn si_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 10 {
        return format!("{n} B");
    }
    let exponent = ((n as f64).log10() / 3.0).floor() as usize;
    let exponent = exponent.min(UNITS.len() - 1);
    let value = ((n as f64 / 1000f64.powi(exponent as i32)) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exponent])
    } else {
        format!("{value:.0} {}", UNITS[exponent])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_follows_etcds_shapes() {
        let kv = KeyValue {
            key: b"foo".to_vec(),
            value: b"bar".to_vec(),
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            lease: 0,
        };
        assert_eq!(
            to_json(&KeyValueJson::of(&kv)).unwrap(),
            r#"{"key":"Zm9v","create_revision":2,"mod_revision":3,"version":2,"value":"YmFy"}"#
        );
        let header = Some(ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 0,
            raft_term: 4,
        });
        assert_eq!(
            to_json(&HeaderJson::of(&header)).unwrap(),
            r#"{"cluster_id":1,"member_id":2,"raft_term":4}"#
        );
        assert_eq!(to_json(&HeaderJson::of(&None)).unwrap(), "{}");
    }

    #[test]
    fn sizes_read_like_etcdctls() {
        assert_eq!(si_bytes(0), "0 B");
        assert_eq!(si_bytes(9), "9 B");
        assert_eq!(si_bytes(999), "999 B");
        assert_eq!(si_bytes(20480), "20 kB");
        assert_eq!(si_bytes(2_109_440), "2.1 MB");
        assert_eq!(si_bytes(u64::MAX), "18 EB");
    }
}
