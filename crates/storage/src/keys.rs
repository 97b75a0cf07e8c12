//! On-disk layout: table definitions, the record encoding shared by `kv` and `latest`, the
//! encoding of `changes` rows, and the translation of etcd's `key`/`range_end` pair into a span.
//!
//! Revisions are `i64` in etcd's API but always positive in the store, so tables key them as
//! `u64` (redb orders `u64` numerically).

use concord_proto::mvccpb::KeyValue;
use redb::TableDefinition;

use crate::error::StorageError;

/// Every version of every key: `(user key, main revision, sub revision)` → record, or an empty
/// value for a deletion (tombstone). redb compares tuples element by element and byte slices
/// lexicographically, so all versions of one key are contiguous and ordered by revision, and a key
/// that is a prefix of another still sorts before it.
pub(crate) const KV: TableDefinition<(&[u8], u64, u64), &[u8]> = TableDefinition::new("kv");

/// The newest live version of each key: user key → record. A deleted key has no row. This is
/// what reads at the current revision, compares, and the write path consult.
pub(crate) const LATEST: TableDefinition<&[u8], &[u8]> = TableDefinition::new("latest");

/// One row per change in revision order: `(main, sub)` → change kind byte followed by user key.
pub(crate) const CHANGES: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("changes");

/// Every granted lease: lease id → the TTL (seconds) it was granted with. A row exists from the
/// grant until the revoke; expiry is the server's business (it proposes the revoke).
pub(crate) const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");

/// The keys attached to each lease: `(lease id, user key)` → nothing. redb orders the tuple
/// element by element, so a lease's keys are contiguous and in ascending key order.
pub(crate) const LEASE_KEYS: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("lease_keys");

/// Raised alarms: `(member id, alarm type)` → nothing. An alarm is raised from its ACTIVATE until
/// its DEACTIVATE; the alarm type is etcd's `AlarmType` number, stored as given.
pub(crate) const ALARMS: TableDefinition<(u64, i32), ()> = TableDefinition::new("alarms");

/// Store-wide counters, see the `META_*` keys.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The Raft log index of the last applied entry.
pub(crate) const META_APPLIED_INDEX: &str = "applied_index";
/// The store revision (etcd's `currentRev`); absent means 1, the revision of an empty store.
pub(crate) const META_REVISION: &str = "revision";
/// The revision of the last compaction; absent means never compacted (-1, as etcd).
pub(crate) const META_COMPACT_REVISION: &str = "compact_revision";

/// `changes` value prefix of a put.
pub(crate) const CHANGE_PUT: u8 = 0;
/// `changes` value prefix of a deletion.
pub(crate) const CHANGE_DELETE: u8 = 1;

/// A `kv` value that marks a deletion.
pub(crate) const TOMBSTONE: &[u8] = &[];

/// Length of the fixed record header that precedes the value bytes.
pub(crate) const HEADER_LEN: usize = 32;

/// The fixed-size metadata of a stored version (everything of a `KeyValue` but key and value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RecordHeader {
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// Encodes a record into `buf` (cleared first): the header as four little-endian `i64`s, then the
/// value bytes. The key is not stored: it is already part of the table key.
pub(crate) fn encode_record(buf: &mut Vec<u8>, header: &RecordHeader, value: &[u8]) {
    buf.clear();
    buf.reserve(HEADER_LEN + value.len());
    buf.extend_from_slice(&header.create_revision.to_le_bytes());
    buf.extend_from_slice(&header.mod_revision.to_le_bytes());
    buf.extend_from_slice(&header.version.to_le_bytes());
    buf.extend_from_slice(&header.lease.to_le_bytes());
    buf.extend_from_slice(value);
}

/// A borrowed, validated record (never a tombstone).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    pub header: RecordHeader,
    pub value: &'a [u8],
}

impl<'a> Record<'a> {
    /// Decodes a record written by [`encode_record`].
    pub fn decode(bytes: &'a [u8]) -> Result<Record<'a>, StorageError> {
        if bytes.len() < HEADER_LEN {
            return Err(StorageError::Corrupt(format!(
                "record of {} bytes is shorter than its header",
                bytes.len()
            )));
        }
        let field = |i: usize| i64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap());
        Ok(Record {
            header: RecordHeader {
                create_revision: field(0),
                mod_revision: field(1),
                version: field(2),
                lease: field(3),
            },
            value: &bytes[HEADER_LEN..],
        })
    }

    /// Builds the wire `KeyValue`; `with_value` false leaves the value empty (keys-only reads
    /// skip the copy).
    pub fn to_key_value(self, key: &[u8], with_value: bool) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            create_revision: self.header.create_revision,
            mod_revision: self.header.mod_revision,
            version: self.header.version,
            value: if with_value {
                self.value.to_vec()
            } else {
                Vec::new()
            },
            lease: self.header.lease,
        }
    }
}

/// Encodes a `changes` value.
pub(crate) fn encode_change(buf: &mut Vec<u8>, kind: u8, key: &[u8]) {
    buf.clear();
    buf.reserve(1 + key.len());
    buf.push(kind);
    buf.extend_from_slice(key);
}

/// Decodes a `changes` value into (kind, user key).
pub(crate) fn decode_change(bytes: &[u8]) -> Result<(u8, &[u8]), StorageError> {
    match bytes.split_first() {
        Some((&kind, key)) if kind == CHANGE_PUT || kind == CHANGE_DELETE => Ok((kind, key)),
        _ => Err(StorageError::Corrupt("malformed change row".into())),
    }
}

/// The set of user keys an etcd request addresses with its `key` and `range_end` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeySpan<'a> {
    /// Exactly one key (`range_end` empty).
    Single(&'a [u8]),
    /// Keys in `[start, end)`; `end: None` means no upper bound (`range_end` = `[0]`).
    Range {
        start: &'a [u8],
        end: Option<&'a [u8]>,
    },
    /// No key at all (`range_end` at or before `key`).
    Empty,
}

impl<'a> KeySpan<'a> {
    /// Interprets etcd's `key` / `range_end` pair.
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> KeySpan<'a> {
        if range_end.is_empty() {
            KeySpan::Single(key)
        } else if range_end == [0] {
            KeySpan::Range {
                start: key,
                end: None,
            }
        } else if range_end <= key {
            KeySpan::Empty
        } else {
            KeySpan::Range {
                start: key,
                end: Some(range_end),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let header = RecordHeader {
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            lease: -7,
        };
        let mut buf = Vec::new();
        encode_record(&mut buf, &header, b"value");
        let rec = Record::decode(&buf).unwrap();
        assert_eq!(rec.header, header);
        assert_eq!(rec.value, b"value");
        let kv = rec.to_key_value(b"k", false);
        assert!(kv.value.is_empty());
        assert_eq!(kv.mod_revision, 5);
        assert!(Record::decode(&buf[..10]).is_err());
    }

    #[test]
    fn change_round_trip() {
        let mut buf = Vec::new();
        encode_change(&mut buf, CHANGE_DELETE, b"abc");
        assert_eq!(decode_change(&buf).unwrap(), (CHANGE_DELETE, &b"abc"[..]));
        assert!(decode_change(&[]).is_err());
        assert!(decode_change(&[9, 1]).is_err());
    }

    #[test]
    fn spans() {
        assert_eq!(KeySpan::new(b"a", b""), KeySpan::Single(b"a"));
        assert_eq!(
            KeySpan::new(b"a", b"\0"),
            KeySpan::Range {
                start: b"a",
                end: None
            }
        );
        assert_eq!(
            KeySpan::new(b"a", b"b"),
            KeySpan::Range {
                start: b"a",
                end: Some(b"b")
            }
        );
        assert_eq!(KeySpan::new(b"b", b"a"), KeySpan::Empty);
        assert_eq!(KeySpan::new(b"a", b"a"), KeySpan::Empty);
    }
}
