//! A consistent view of the store at one revision, over either a read snapshot or the write
//! transaction being applied, and the scans that enumerate live keys in it.
//!
//! Reads at the view's own revision walk `latest` (one row per live key). Reads at an older
//! revision walk `kv` and pick, for each key, the newest version at or below that revision.

use std::ops::Bound;

use redb::{AccessGuard, ReadableTable};

use crate::error::StorageError;
use crate::keys::{KeySpan, Record};

/// A table shaped like `latest` (user key → record), read-only or writable.
pub(crate) trait LatestTable: ReadableTable<&'static [u8], &'static [u8]> {}
impl<T: ReadableTable<&'static [u8], &'static [u8]>> LatestTable for T {}

/// A table shaped like `kv` ((user key, main, sub) → record or tombstone).
pub(crate) trait HistoryTable:
    ReadableTable<(&'static [u8], u64, u64), &'static [u8]>
{
}
impl<T: ReadableTable<(&'static [u8], u64, u64), &'static [u8]>> HistoryTable for T {}

/// After this many consecutive versions of one key newer than the read revision, a historical
/// scan re-seeks past the key instead of stepping over the rest one by one.
const SKIP_BEFORE_RESEEK: usize = 8;

/// The state of the store as of `rev`, with `compact_rev` telling which older revisions are gone.
pub(crate) struct View<'v, L, H> {
    pub latest: &'v L,
    pub kv: &'v H,
    /// The revision `latest` reflects.
    pub rev: i64,
    /// The last compaction point (-1 when never compacted).
    pub compact_rev: i64,
}

impl<L: LatestTable, H: HistoryTable> View<'_, L, H> {
    /// Calls `f(key, record)` for every key in `span` that is live at `at_rev`, in ascending key
    /// order, until `f` returns `Ok(false)`. `at_rev` must be `<= self.rev`.
    pub fn scan<F>(&self, span: KeySpan<'_>, at_rev: i64, f: F) -> Result<(), StorageError>
    where
        F: FnMut(&[u8], Record<'_>) -> Result<bool, StorageError>,
    {
        debug_assert!(at_rev <= self.rev);
        if at_rev >= self.rev {
            scan_latest(self.latest, span, f)
        } else {
            scan_history(self.kv, span, at_rev as u64, f)
        }
    }
}

fn scan_latest<L: LatestTable, F>(
    latest: &L,
    span: KeySpan<'_>,
    mut f: F,
) -> Result<(), StorageError>
where
    F: FnMut(&[u8], Record<'_>) -> Result<bool, StorageError>,
{
    match span {
        KeySpan::Empty => Ok(()),
        KeySpan::Single(key) => {
            if let Some(value) = latest.get(key)? {
                f(key, Record::decode(value.value())?)?;
            }
            Ok(())
        }
        KeySpan::Range { start, end } => {
            let upper = match end {
                Some(end) => Bound::Excluded(end),
                None => Bound::Unbounded,
            };
            for row in latest.range::<&[u8]>((Bound::Included(start), upper))? {
                let (key, value) = row?;
                if !f(key.value(), Record::decode(value.value())?)? {
                    break;
                }
            }
            Ok(())
        }
    }
}

type HistoryRow<'a> = (
    AccessGuard<'a, (&'static [u8], u64, u64)>,
    AccessGuard<'a, &'static [u8]>,
);

/// Emits `row` (the newest version of its key at the read revision) unless it is a tombstone.
fn emit_history_row<F>(row: &HistoryRow<'_>, f: &mut F) -> Result<bool, StorageError>
where
    F: FnMut(&[u8], Record<'_>) -> Result<bool, StorageError>,
{
    let bytes = row.1.value();
    if bytes.is_empty() {
        return Ok(true);
    }
    f(row.0.value().0, Record::decode(bytes)?)
}

fn scan_history<H: HistoryTable, F>(
    kv: &H,
    span: KeySpan<'_>,
    rev: u64,
    mut f: F,
) -> Result<(), StorageError>
where
    F: FnMut(&[u8], Record<'_>) -> Result<bool, StorageError>,
{
    let (start, end) = match span {
        KeySpan::Empty => return Ok(()),
        KeySpan::Single(key) => {
            let newest = kv
                .range((key, 0u64, 0u64)..=(key, rev, u64::MAX))?
                .next_back();
            if let Some(row) = newest {
                emit_history_row(&row?, &mut f)?;
            }
            return Ok(());
        }
        KeySpan::Range { start, end } => (start, end),
    };
    let upper = match end {
        Some(end) => Bound::Excluded((end, 0u64, 0u64)),
        None => Bound::Unbounded,
    };
    // The key whose remaining (too new) versions the next range must start after.
    let mut resume_after: Option<Vec<u8>> = None;
    loop {
        let lower = match &resume_after {
            None => Bound::Included((start, 0u64, 0u64)),
            Some(key) => Bound::Excluded((key.as_slice(), u64::MAX, u64::MAX)),
        };
        // Newest version <= rev seen so far of the key being walked.
        let mut candidate: Option<HistoryRow<'_>> = None;
        // Consecutive versions newer than rev skipped since the last version <= rev.
        let mut skipped = 0usize;
        let mut reseek: Option<Vec<u8>> = None;
        for row in kv.range((lower, upper))? {
            let row = row?;
            let (key, main, _) = row.0.value();
            if let Some(prev) = &candidate {
                if prev.0.value().0 != key {
                    if !emit_history_row(prev, &mut f)? {
                        return Ok(());
                    }
                    candidate = None;
                    skipped = 0;
                }
            }
            if main <= rev {
                candidate = Some(row);
                skipped = 0;
                continue;
            }
            // Versions of a key ascend, so `key` has no more versions <= rev: settle it now.
            if let Some(prev) = candidate.take() {
                if !emit_history_row(&prev, &mut f)? {
                    return Ok(());
                }
            }
            // The count may span several keys that only have too-new versions; re-seeking past
            // the current row's key is correct whichever key the run started with.
            skipped += 1;
            if skipped > SKIP_BEFORE_RESEEK {
                reseek = Some(key.to_vec());
                break;
            }
        }
        match reseek {
            Some(key) => resume_after = Some(key),
            None => {
                if let Some(prev) = candidate {
                    emit_history_row(&prev, &mut f)?;
                }
                return Ok(());
            }
        }
    }
}
