//! On-disk layout: table definitions, the encoding of `revisions` rows and of the records in
//! them, and the translation of etcd's `key`/`range_end` pair into a span.
//!
//! Revisions are `i64` in etcd's API but always positive in the store, so tables key them as
//! `u64` (redb orders `u64` numerically).

use concord_proto::mvccpb::KeyValue;
use redb::TableDefinition;

use crate::error::StorageError;

/// Every change ever made and not yet compacted away, in revision order: [`RowId`] `(main
/// revision, sub revision)` → row (see [`encode_row`]): the user key, then the version's record,
/// or nothing for a deletion (tombstone). Writes only ever append at the end of this table. It is
/// both the store's data (reads find the row of the version they want through the in-memory key
/// index) and its change log (watchers catching up walk it in order).
pub(crate) const REVISIONS: TableDefinition<RowId, &[u8]> = TableDefinition::new("revisions");

/// The key of a `revisions` row: the main revision in the high 64 bits and the sub revision in
/// the low 64, so numeric order is revision order. One integer rather than a `(u64, u64)` tuple
/// because redb encodes tuple keys through a fresh heap buffer on every lookup.
pub(crate) type RowId = u128;

/// The row key of `(main, sub)`.
pub(crate) fn row_id(main: u64, sub: u64) -> RowId {
    (RowId::from(main) << 64) | RowId::from(sub)
}

/// The `(main, sub)` of a row key.
pub(crate) fn split_row_id(id: RowId) -> (u64, u64) {
    ((id >> 64) as u64, id as u64)
}

/// The row keys of every change of main revisions `from..=to`; `0 <= from <= to`.
pub(crate) fn main_revisions(from: i64, to: i64) -> std::ops::RangeInclusive<RowId> {
    debug_assert!(0 <= from && from <= to);
    row_id(from as u64, 0)..=row_id(to as u64, u64::MAX)
}

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

/// Encodes a record into `buf` (cleared first), as [`push_record`] does; for tests that
/// rebuild hashes by hand.
#[cfg(test)]
pub(crate) fn encode_record(buf: &mut Vec<u8>, header: &RecordHeader, value: &[u8]) {
    buf.clear();
    push_record(buf, header, value);
}

/// Appends a record's encoding to `buf`: the header as four little-endian `i64`s, then the
/// value bytes. This is the tail of a put's `revisions` row and what `hash_kv` feeds.
fn push_record(buf: &mut Vec<u8>, header: &RecordHeader, value: &[u8]) {
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
    /// Decodes a record written by [`push_record`].
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

/// Length of the key length field that starts every `revisions` row.
const KEY_LEN_LEN: usize = 4;

/// Encodes a `revisions` row into `buf` (cleared first): the key's length as a little-endian
/// `u32`, the key, then, for a put, the record (see [`push_record`]); a deletion ends after the
/// key. A record is never empty (its header alone is [`HEADER_LEN`] bytes), so the two cannot be
/// confused.
pub(crate) fn encode_row(
    buf: &mut Vec<u8>,
    key: &[u8],
    record: Option<(&RecordHeader, &[u8])>,
) -> Result<(), StorageError> {
    let key_len = u32::try_from(key.len())
        .map_err(|_| StorageError::Corrupt(format!("key of {} bytes is too long", key.len())))?;
    buf.clear();
    let record_len = record.map_or(0, |(_, value)| HEADER_LEN + value.len());
    buf.reserve(KEY_LEN_LEN + key.len() + record_len);
    buf.extend_from_slice(&key_len.to_le_bytes());
    buf.extend_from_slice(key);
    if let Some((header, value)) = record {
        push_record(buf, header, value);
    }
    Ok(())
}

/// A decoded `revisions` row, borrowed from the stored bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row<'a> {
    pub key: &'a [u8],
    /// The version's record; `None` for a deletion.
    pub record: Option<Record<'a>>,
    /// The record's encoding as stored (empty for a deletion), for hashing.
    pub record_bytes: &'a [u8],
}

impl<'a> Row<'a> {
    /// Decodes a row written by [`encode_row`].
    pub fn decode(bytes: &'a [u8]) -> Result<Row<'a>, StorageError> {
        let malformed = || StorageError::Corrupt(format!("malformed row of {} bytes", bytes.len()));
        let len_bytes = bytes.get(..KEY_LEN_LEN).ok_or_else(malformed)?;
        let key_len = u32::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let key_end = KEY_LEN_LEN.checked_add(key_len).ok_or_else(malformed)?;
        let key = bytes.get(KEY_LEN_LEN..key_end).ok_or_else(malformed)?;
        let rest = &bytes[key_end..];
        let record = if rest.is_empty() {
            None
        } else {
            Some(Record::decode(rest)?)
        };
        Ok(Row {
            key,
            record,
            record_bytes: rest,
        })
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
    fn row_round_trip() {
        let header = RecordHeader {
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            lease: 0,
        };
        let mut buf = Vec::new();
        encode_row(&mut buf, b"key", Some((&header, b"value"))).unwrap();
        let row = Row::decode(&buf).unwrap();
        assert_eq!(row.key, b"key");
        let rec = row.record.unwrap();
        assert_eq!((rec.header, rec.value), (header, &b"value"[..]));

        // A deletion, and a put of an empty value to an empty key.
        encode_row(&mut buf, b"gone", None).unwrap();
        let row = Row::decode(&buf).unwrap();
        assert_eq!((row.key, row.record.is_none()), (&b"gone"[..], true));
        encode_row(&mut buf, b"", Some((&header, b""))).unwrap();
        let row = Row::decode(&buf).unwrap();
        assert_eq!((row.key, row.record.unwrap().value), (&b""[..], &b""[..]));

        // Truncated rows are refused.
        encode_row(&mut buf, b"key", Some((&header, b"value"))).unwrap();
        assert!(Row::decode(&buf[..3]).is_err());
        assert!(Row::decode(&buf[..6]).is_err());
        assert!(Row::decode(&buf[..20]).is_err());
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
