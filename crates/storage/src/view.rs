//! A consistent view of the store at one revision: a key index (the committed one, or a batch's
//! [`PendingIndex`](crate::index::PendingIndex)) that says which version of each key to read,
//! and the `revisions` table (a read snapshot or the write transaction being applied) that holds
//! those versions' rows.

use redb::{AccessGuard, ReadableTable};

use crate::error::StorageError;
use crate::index::{IndexRead, Rev};
use crate::keys::{KeySpan, Record, Row, RowId};

/// A table shaped like `revisions` (row id → row), read-only or writable.
pub(crate) trait RowTable: ReadableTable<RowId, &'static [u8]> {}
impl<T: ReadableTable<RowId, &'static [u8]>> RowTable for T {}

/// The stored row of `version`, which the index says exists. Its absence means the index and
/// the table disagree, which the read protocol (see `store.rs`) rules out.
pub(crate) fn fetch_row<T: RowTable>(rows: &T, version: Rev) -> Result<AccessGuard<'_, &'static [u8]>, StorageError> {
    rows.get(version.id())?.ok_or_else(|| {
        StorageError::Corrupt(format!(
            "the key index names revision {}/{} but no row holds it",
            version.main, version.sub
        ))
    })
}

/// How far [`for_each_row`] steps an open table iterator towards the next wanted row (in rows,
/// and in main revisions for deciding to step at all) before it looks the row up afresh. A step
/// costs a fraction of a lookup, which walks the B-tree from its root.
const MAX_STEPS: usize = 8;

/// Reads the rows of `versions` (which the index says exist; any order) and calls `f(i, row)`
/// for each, `i` being its position in `versions`. Rows are visited in table order, and a run of
/// rows close together (versions written together, such as keys loaded in one go) is read by
/// stepping one iterator instead of a lookup per row.
pub(crate) fn for_each_row<T, F>(rows: &T, versions: &[Rev], mut f: F) -> Result<(), StorageError>
where
    T: RowTable,
    F: FnMut(usize, &[u8]) -> Result<(), StorageError>,
{
    let near = |a: Rev, b: Rev| b.main - a.main <= MAX_STEPS as i64;
    let mut order: Vec<usize> = (0..versions.len()).collect();
    order.sort_unstable_by_key(|&i| versions[i].id());
    let mut cursor: Option<(redb::Range<'_, RowId, &'static [u8]>, Rev)> = None;
    for (k, &i) in order.iter().enumerate() {
        let want = versions[i];
        let mut found = None;
        if let Some((it, last)) = cursor.as_mut() {
            if near(*last, want) {
                for row in it.by_ref().take(MAX_STEPS) {
                    let (id, value) = row?;
                    if id.value() >= want.id() {
                        found = (id.value() == want.id()).then_some(value);
                        break;
                    }
                }
            }
        }
        if found.is_none() {
            cursor = None;
            let next_is_near = order.get(k + 1).is_some_and(|&j| near(want, versions[j]));
            if next_is_near {
                let mut it = rows.range(want.id()..)?;
                found = match it.next() {
                    Some(row) => {
                        let (id, value) = row?;
                        (id.value() == want.id()).then_some(value)
                    }
                    None => None,
                };
                cursor = Some((it, want));
            } else {
                found = Some(fetch_row(rows, want)?);
            }
        }
        let Some(guard) = found else {
            return Err(fetch_row(rows, want)
                .err()
                .unwrap_or_else(|| StorageError::Corrupt("a row vanished while reading it".into())));
        };
        if let Some((_, last)) = cursor.as_mut() {
            *last = want;
        }
        f(i, guard.value())?;
    }
    Ok(())
}

/// Decodes the row of a live version into its key and record.
pub(crate) fn live_record(bytes: &[u8]) -> Result<(&[u8], Record<'_>), StorageError> {
    let row = Row::decode(bytes)?;
    match row.record {
        Some(record) => Ok((row.key, record)),
        None => Err(StorageError::Corrupt(
            "the key index names a put where a deletion is stored".into(),
        )),
    }
}

/// The state of the store as of `rev`, with `compact_rev` telling which older revisions are gone.
pub(crate) struct View<'v, I, T> {
    pub index: &'v I,
    pub rows: &'v T,
    /// The revision the view stands at: the index holds nothing above it.
    pub rev: i64,
    /// The last compaction point (-1 when never compacted).
    pub compact_rev: i64,
}

impl<I: IndexRead, T: RowTable> View<'_, I, T> {
    /// Calls `f(key, record)` for every key in `span` that is live at `at_rev`, in ascending key
    /// order, until `f` returns `Ok(false)`. `at_rev` must be `<= self.rev`.
    pub fn scan<F>(&self, span: KeySpan<'_>, at_rev: i64, mut f: F) -> Result<(), StorageError>
    where
        F: FnMut(&[u8], Record<'_>) -> Result<bool, StorageError>,
    {
        debug_assert!(at_rev <= self.rev);
        self.index.scan_live(span, at_rev, |_, version| {
            let guard = fetch_row(self.rows, version)?;
            let (key, record) = live_record(guard.value())?;
            f(key, record)
        })
    }

    /// Whether `key` is live at the view's revision.
    pub fn exists(&self, key: &[u8]) -> bool {
        self.index.version_at(key, self.rev).is_some_and(|v| v.is_live())
    }
}
