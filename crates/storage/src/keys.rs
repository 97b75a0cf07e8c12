//! On-disk layout: table definitions, the encoding of `revisions` rows and of the records in
//! them, and the translation of etcd's `key`/`range_end` pair into a span.
//!
//! Revisions are `i64` in etcd's API but always positive in the store, so tables key them as
//! `u64` (redb orders `u64` numerically).

use std::borrow::Cow;

use concord_crypt::Sealer;
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

/// What the leader last recorded of each lease's remaining time (etcd's lease checkpoint):
/// lease id → seconds left then. A row exists only while the lease is granted and its last
/// checkpoint said less than its full TTL; a new leader starts the lease at that much.
pub(crate) const LEASE_REMAINING: TableDefinition<i64, i64> = TableDefinition::new("lease_remaining");

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

/// The revision oracle's committed ceiling (multi-shard mode); absent means 0, never raised.
pub(crate) const META_REVISION_CEILING: &str = "revision_ceiling";

/// The highest stamp a store has applied, read barriers and cross-shard commits included
/// (multi-shard mode); absent means 0.
pub(crate) const META_STAMP_FLOOR: &str = "stamp_floor";

/// The next id group 1 hands out for a new shard's group (see `AllocateShardId`); absent means
/// none was handed out yet.
pub(crate) const META_NEXT_SHARD_ID: &str = "next_shard_id";

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

// --- Encryption at rest (concord-crypt): the only code that seals or opens values. -----------
//
// A sealed record sets the top bit of its stored `version` (a count from 1, so never negative
// otherwise) and stores the value in concord-crypt's sealed form, bound to the 32 header bytes as
// stored. Plain and sealed records can sit side by side (encryption turned on over an existing
// store). Sealing: `encode_row` / `encode_record` with a sealer. Opening: `Record::value`
// (lazily, so keys-only and count-only reads never decrypt), `plain_record` (hashes),
// `reseal_row` (defragment). `Record::decode` clears the flag, so every reader (the key index
// included) sees the real version.

/// Set in the stored `version` of a record whose value is sealed.
const SEALED_FLAG: i64 = i64::MIN;

/// Encodes a record into `buf` (cleared first), as [`push_record`] does.
pub(crate) fn encode_record(buf: &mut Vec<u8>, header: &RecordHeader, value: &[u8], sealer: Option<&Sealer>) {
    buf.clear();
    push_record(buf, header, value, sealer);
}

/// Appends a record's encoding to `buf`: the header as four little-endian `i64`s, then the
/// value bytes, sealed when `sealer` is given (bound to the 32 header bytes as stored). This is
/// the tail of a put's `revisions` row; its plain form is what `hash_kv` feeds.
fn push_record(buf: &mut Vec<u8>, header: &RecordHeader, value: &[u8], sealer: Option<&Sealer>) {
    let sealed_len = if sealer.is_some() { concord_crypt::OVERHEAD } else { 0 };
    buf.reserve(HEADER_LEN + value.len() + sealed_len);
    let version = match sealer {
        Some(_) => header.version | SEALED_FLAG,
        None => header.version,
    };
    let start = buf.len();
    buf.extend_from_slice(&header.create_revision.to_le_bytes());
    buf.extend_from_slice(&header.mod_revision.to_le_bytes());
    buf.extend_from_slice(&version.to_le_bytes());
    buf.extend_from_slice(&header.lease.to_le_bytes());
    match sealer {
        None => buf.extend_from_slice(value),
        Some(sealer) => {
            let aad: [u8; HEADER_LEN] = buf[start..start + HEADER_LEN].try_into().unwrap();
            sealer.seal_into(buf, value, &aad);
        }
    }
}

/// A stored record (never a tombstone) in its plain form: the header with the sealed flag
/// cleared and the value opened, for hashes that must agree between members whatever their keys
/// (or none). A plain record comes back as it is, without a copy.
pub(crate) fn plain_record(bytes: &[u8]) -> Result<Cow<'_, [u8]>, StorageError> {
    if bytes.len() < HEADER_LEN {
        return Ok(Cow::Borrowed(bytes));
    }
    let rec = Record::decode(bytes)?;
    if !rec.sealed {
        return Ok(Cow::Borrowed(bytes));
    }
    let mut out = Vec::new();
    encode_record(&mut out, &rec.header, &rec.value()?, None);
    Ok(Cow::Owned(out))
}

/// A stored `revisions` row in its plain form: its record as [`plain_record`] gives it. A row
/// without a sealed value comes back as it is, without a copy.
pub(crate) fn plain_row(bytes: &[u8]) -> Result<Cow<'_, [u8]>, StorageError> {
    let row = Row::decode(bytes)?;
    match plain_record(row.record_bytes)? {
        Cow::Borrowed(_) => Ok(Cow::Borrowed(bytes)),
        Cow::Owned(record) => {
            let mut out = Vec::new();
            push_key(&mut out, row.key, record.len())?;
            out.extend_from_slice(&record);
            Ok(Cow::Owned(out))
        }
    }
}

/// Re-encodes a stored record into `buf` with its value sealed under `sealer`'s first key, or
/// plain without a sealer. Tombstones stay empty. A defragment's copy uses [`reseal_row`].
#[cfg(test)]
pub(crate) fn reseal_record(bytes: &[u8], sealer: Option<&Sealer>, buf: &mut Vec<u8>) -> Result<(), StorageError> {
    if bytes.is_empty() {
        buf.clear();
        return Ok(());
    }
    let rec = Record::decode(bytes)?;
    encode_record(buf, &rec.header, &rec.value()?, sealer);
    Ok(())
}

/// A borrowed, validated record (never a tombstone). Its value is opened only when asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record<'a> {
    pub header: RecordHeader,
    /// The header bytes as stored: what a sealed value is bound to.
    stored_header: &'a [u8],
    /// The value bytes as stored: the value, or its sealed form.
    stored_value: &'a [u8],
    sealed: bool,
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
        let version = field(2);
        Ok(Record {
            header: RecordHeader {
                create_revision: field(0),
                mod_revision: field(1),
                version: version & !SEALED_FLAG,
                lease: field(3),
            },
            stored_header: &bytes[..HEADER_LEN],
            stored_value: &bytes[HEADER_LEN..],
            sealed: version & SEALED_FLAG != 0,
        })
    }

    /// The value: borrowed from the stored bytes, or opened (with the keys registered in this
    /// process) when it is sealed.
    pub fn value(&self) -> Result<Cow<'a, [u8]>, StorageError> {
        if !self.sealed {
            return Ok(Cow::Borrowed(self.stored_value));
        }
        Ok(Cow::Owned(concord_crypt::open_registered(
            self.stored_value,
            self.stored_header,
        )?))
    }

    /// Builds the wire `KeyValue`; `with_value` false leaves the value empty (keys-only reads
    /// skip the copy, and the opening of a sealed value).
    pub fn to_key_value(self, key: &[u8], with_value: bool) -> Result<KeyValue, StorageError> {
        Ok(KeyValue {
            key: key.to_vec(),
            create_revision: self.header.create_revision,
            mod_revision: self.header.mod_revision,
            version: self.header.version,
            value: if with_value {
                self.value()?.into_owned()
            } else {
                Vec::new()
            },
            lease: self.header.lease,
        })
    }
}

/// Length of the key length field that starts every `revisions` row.
const KEY_LEN_LEN: usize = 4;

/// Encodes a `revisions` row into `buf` (cleared first): the key's length as a little-endian
/// `u32`, the key, then, for a put, the record (see [`push_record`]); a deletion ends after the
/// key. A record is never empty (its header alone is [`HEADER_LEN`] bytes), so the two cannot be
/// confused.
/// The value is sealed when `sealer` is given.
pub(crate) fn encode_row(
    buf: &mut Vec<u8>,
    key: &[u8],
    record: Option<(&RecordHeader, &[u8])>,
    sealer: Option<&Sealer>,
) -> Result<(), StorageError> {
    let record_len = record.map_or(0, |(_, value)| HEADER_LEN + value.len());
    push_key(buf, key, record_len)?;
    if let Some((header, value)) = record {
        push_record(buf, header, value, sealer);
    }
    Ok(())
}

/// Encodes a `revisions` row into `buf` (cleared first) from a record as stored (sealed or
/// not), copied verbatim; empty for a deletion. For moving rows between layouts.
pub(crate) fn encode_row_stored(buf: &mut Vec<u8>, key: &[u8], record_bytes: &[u8]) -> Result<(), StorageError> {
    push_key(buf, key, record_bytes.len())?;
    buf.extend_from_slice(record_bytes);
    Ok(())
}

/// Re-encodes a stored `revisions` row into `buf` (cleared first) with its value sealed under
/// `sealer`'s first key, or plain without a sealer (a defragment's copy). Deletions stay as
/// they are.
pub(crate) fn reseal_row(bytes: &[u8], sealer: Option<&Sealer>, buf: &mut Vec<u8>) -> Result<(), StorageError> {
    let row = Row::decode(bytes)?;
    match row.record {
        None => encode_row(buf, row.key, None, None),
        Some(rec) => encode_row(buf, row.key, Some((&rec.header, &rec.value()?)), sealer),
    }
}

/// Clears `buf` and writes a row's key part, reserving room for `record_len` more bytes.
fn push_key(buf: &mut Vec<u8>, key: &[u8], record_len: usize) -> Result<(), StorageError> {
    let key_len = u32::try_from(key.len())
        .map_err(|_| StorageError::Corrupt(format!("key of {} bytes is too long", key.len())))?;
    buf.clear();
    buf.reserve(KEY_LEN_LEN + key.len() + record_len);
    buf.extend_from_slice(&key_len.to_le_bytes());
    buf.extend_from_slice(key);
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
    Range { start: &'a [u8], end: Option<&'a [u8]> },
    /// No key at all (`range_end` at or before `key`).
    Empty,
}

impl<'a> KeySpan<'a> {
    /// Interprets etcd's `key` / `range_end` pair.
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> KeySpan<'a> {
        if range_end.is_empty() {
            KeySpan::Single(key)
        } else if range_end == [0] {
            KeySpan::Range { start: key, end: None }
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
        encode_record(&mut buf, &header, b"value", None);
        let rec = Record::decode(&buf).unwrap();
        assert_eq!(rec.header, header);
        assert_eq!(&rec.value().unwrap()[..], b"value");
        assert!(matches!(rec.value().unwrap(), Cow::Borrowed(_)));
        let kv = rec.to_key_value(b"k", false).unwrap();
        assert!(kv.value.is_empty());
        assert_eq!(kv.mod_revision, 5);
        assert!(Record::decode(&buf[..10]).is_err());
        assert!(matches!(plain_record(&buf).unwrap(), Cow::Borrowed(b) if b == &buf[..]));
    }

    #[test]
    fn sealed_record_round_trip() {
        let keyring = std::sync::Arc::new(
            concord_crypt::Keyring::parse(
                "rec:5151515151515151515151515151515151515151515151515151515151515151",
                "test",
            )
            .unwrap(),
        );
        let sealer = Sealer::new(keyring.clone()).unwrap();
        let header = RecordHeader {
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            lease: 7,
        };
        let mut sealed = Vec::new();
        encode_record(&mut sealed, &header, b"secret value", Some(&sealer));
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(sealed.len(), HEADER_LEN + 12 + concord_crypt::OVERHEAD);
        // The header reads without any key; the value needs it.
        let rec = Record::decode(&sealed).unwrap();
        assert_eq!(rec.header, header);
        assert!(rec.to_key_value(b"k", false).is_ok());
        let before = rec.value().unwrap_err().to_string();
        assert!(before.contains("not in the encryption key file"), "{before}");
        concord_crypt::register(&keyring);
        assert_eq!(&rec.value().unwrap()[..], b"secret value");
        assert_eq!(rec.to_key_value(b"k", true).unwrap().value, b"secret value");
        // Its plain form is exactly the record written without a sealer.
        let mut plain = Vec::new();
        encode_record(&mut plain, &header, b"secret value", None);
        assert_eq!(plain_record(&sealed).unwrap(), &plain[..]);
        // Re-sealing opens and seals again (another nonce); without a sealer it writes plain.
        let mut resealed = Vec::new();
        reseal_record(&sealed, Some(&sealer), &mut resealed).unwrap();
        assert_ne!(resealed, sealed);
        assert_eq!(plain_record(&resealed).unwrap(), &plain[..]);
        reseal_record(&sealed, None, &mut resealed).unwrap();
        assert_eq!(resealed, plain);
        // The same inside a `revisions` row: sealed, the row decodes to the real version and
        // re-sealing a row without a sealer gives the plain row.
        let mut row = Vec::new();
        encode_row(&mut row, b"k", Some((&header, b"secret value")), Some(&sealer)).unwrap();
        let decoded = Row::decode(&row).unwrap();
        assert_eq!(decoded.record.unwrap().header, header);
        assert_eq!(plain_record(decoded.record_bytes).unwrap(), &plain[..]);
        let (mut plain_row, mut resealed_row) = (Vec::new(), Vec::new());
        encode_row(&mut plain_row, b"k", Some((&header, b"secret value")), None).unwrap();
        reseal_row(&row, None, &mut resealed_row).unwrap();
        assert_eq!(resealed_row, plain_row);
        encode_row_stored(&mut resealed_row, b"k", decoded.record_bytes).unwrap();
        assert_eq!(resealed_row, row);
        // A header altered on disk (here the lease) no longer opens the value.
        let mut altered = sealed.clone();
        altered[24] ^= 1;
        assert!(Record::decode(&altered).unwrap().value().is_err());
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
        encode_row(&mut buf, b"key", Some((&header, b"value")), None).unwrap();
        let row = Row::decode(&buf).unwrap();
        assert_eq!(row.key, b"key");
        let rec = row.record.unwrap();
        assert_eq!((rec.header, &rec.value().unwrap()[..]), (header, &b"value"[..]));

        // A deletion, and a put of an empty value to an empty key.
        encode_row(&mut buf, b"gone", None, None).unwrap();
        let row = Row::decode(&buf).unwrap();
        assert_eq!((row.key, row.record.is_none()), (&b"gone"[..], true));
        encode_row(&mut buf, b"", Some((&header, b"")), None).unwrap();
        let row = Row::decode(&buf).unwrap();
        assert_eq!(
            (row.key, &row.record.unwrap().value().unwrap()[..]),
            (&b""[..], &b""[..])
        );

        // Truncated rows are refused.
        encode_row(&mut buf, b"key", Some((&header, b"value")), None).unwrap();
        assert!(Row::decode(&buf[..3]).is_err());
        assert!(Row::decode(&buf[..6]).is_err());
        assert!(Row::decode(&buf[..20]).is_err());
    }

    #[test]
    fn spans() {
        assert_eq!(KeySpan::new(b"a", b""), KeySpan::Single(b"a"));
        assert_eq!(KeySpan::new(b"a", b"\0"), KeySpan::Range { start: b"a", end: None });
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
