//! The in-memory key index (etcd's `treeIndex`): for every user key with rows in `revisions`,
//! the revisions of those rows, ascending, each marked as a put or a deletion, plus the
//! [`Head`] of the key's newest version. Values are never held in memory; a read finds the
//! revision it wants here and fetches that one row.
//!
//! The index holds exactly the rows of `revisions`, no more and no fewer, so it can always be
//! rebuilt by one scan of that table ([`KeyIndex::load`]), which is what opening a store,
//! installing a snapshot and defragmenting do. A batch being applied does not touch it: its
//! changes collect in a [`PendingIndex`] on top of it and are merged in
//! ([`KeyIndex::apply`]) only once the batch's redb transaction has committed, so a failed batch
//! leaves nothing behind.
//!
//! Every key is held twice: in a hash map with its history, which answers the lookups of single
//! keys that every put, delete and point read makes, and in an ordered set, which only range
//! scans walk. With one ordered map, each of those lookups walked a B-tree of all the keys, a
//! cache miss per level, and that walk was the largest single cost of applying a put.
//!
//! Memory: per key, the hash map's slot (an [`IndexKey`], 24 bytes with keys of up to 22 bytes
//! inline, and a [`KeyHistory`], 64 bytes), the set's [`IndexKey`] with its node overhead, the
//! bytes of a longer key twice, and 16 bytes per stored version but the newest (a key with a
//! single version, the usual case after compaction, has no allocation of its own besides the
//! key).

use std::collections::btree_map;
use std::collections::{btree_set, hash_map, BTreeMap, BTreeSet, HashMap};
use std::iter::Peekable;
use std::ops::Bound;

use crate::error::StorageError;
use crate::index_key::IndexKey;
use crate::keys::{row_id, split_row_id, KeySpan, RecordHeader, Row, RowId};
use crate::view::RowTable;

/// One stored version of a key: the revision of its `revisions` row and whether it is a
/// deletion. Ordered by `(main, sub)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rev {
    pub main: i64,
    pub sub: u32,
    pub tombstone: bool,
}

impl Rev {
    /// The `revisions` table key of the version's row.
    pub fn id(self) -> RowId {
        row_id(self.main as u64, u64::from(self.sub))
    }

    /// Whether the version is a put (the key exists at this revision).
    pub fn is_live(self) -> bool {
        !self.tombstone
    }

    fn position(self) -> (i64, u32) {
        (self.main, self.sub)
    }
}

/// What a put needs of a key's newest version (`create_revision` and `version` carry on, the
/// lease attachment moves), kept here so the write path reads nothing from redb. All zero when
/// the newest version is a deletion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Head {
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl Head {
    /// The head of a put with this record.
    pub fn of(header: &RecordHeader) -> Head {
        Head {
            create_revision: header.create_revision,
            version: header.version,
            lease: header.lease,
        }
    }
}

/// One key's entry: its stored versions and the head of the newest one. The newest version is
/// kept apart from the older ones, so reads at the current revision touch nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyHistory {
    newest: Rev,
    head: Head,
    /// The older versions, ascending.
    older: Vec<Rev>,
}

impl KeyHistory {
    fn new(version: Rev, head: Head) -> KeyHistory {
        KeyHistory {
            newest: version,
            head,
            older: Vec::new(),
        }
    }

    /// Adds a version newer than all the others.
    fn push(&mut self, version: Rev, head: Head) {
        self.older.push(self.newest);
        self.newest = version;
        self.head = head;
    }

    /// The newest version at or below main revision `rev`.
    fn at(&self, rev: i64) -> Option<Rev> {
        if self.newest.main <= rev {
            Some(self.newest)
        } else {
            newest_at(&self.older, rev)
        }
    }

    /// The newest version strictly before `(main, sub)`.
    fn before(&self, main: i64, sub: u32) -> Option<Rev> {
        if self.newest.position() < (main, sub) {
            Some(self.newest)
        } else {
            newest_before(&self.older, main, sub)
        }
    }

    /// Every version, ascending.
    fn versions(&self) -> impl Iterator<Item = Rev> + '_ {
        self.older.iter().copied().chain(std::iter::once(self.newest))
    }

    /// Applies the compaction rule at `c`; `false` when nothing of the key is left.
    fn compact(&mut self, c: i64) -> bool {
        let newest_at_c = self.at(c);
        if !survives_compaction(self.newest, c, newest_at_c) {
            // A deletion below `c` is the newest version: everything of the key goes.
            return false;
        }
        self.older
            .retain(|&version| survives_compaction(version, c, newest_at_c));
        // A long history compacted away would otherwise keep its whole buffer.
        if self.older.len() * 2 < self.older.capacity() {
            self.older.shrink_to_fit();
        }
        true
    }
}

/// The newest of the ascending `revs` at or below main revision `rev`.
pub(crate) fn newest_at(revs: &[Rev], rev: i64) -> Option<Rev> {
    match revs.last() {
        // Reads at the current revision, the common case, need no search.
        Some(&last) if last.main <= rev => Some(last),
        _ => {
            let n = revs.partition_point(|r| r.main <= rev);
            n.checked_sub(1).map(|i| revs[i])
        }
    }
}

/// The newest of the ascending `revs` strictly before `(main, sub)`.
fn newest_before(revs: &[Rev], main: i64, sub: u32) -> Option<Rev> {
    let n = revs.partition_point(|r| r.position() < (main, sub));
    n.checked_sub(1).map(|i| revs[i])
}

/// etcd's compaction rule for one key: compacting at `c` keeps every version with main revision
/// `>= c` (those at exactly `c` too, so watchers may start at `c`, see `compact.rs`) and the
/// key's newest version at or below `c` (`newest`) when it is live; every other version goes.
pub(crate) fn survives_compaction(version: Rev, c: i64, newest: Option<Rev>) -> bool {
    version.main >= c || (Some(version) == newest && version.is_live())
}

/// Lookups in a key index, committed ([`KeyIndex`]) or with a batch's changes on top
/// ([`PendingIndex`]).
pub(crate) trait IndexRead {
    /// The newest version of `key` at or below main revision `rev`, deletion or not.
    fn version_at(&self, key: &[u8], rev: i64) -> Option<Rev>;

    /// The newest version of `key` with its head.
    fn newest(&self, key: &[u8]) -> Option<(Rev, Head)>;

    /// Calls `f(key, version)` in ascending key order for every key in `span` whose newest
    /// version at or below `rev` is live, until `f` returns `Ok(false)`.
    fn scan_live<E, F>(&self, span: KeySpan<'_>, rev: i64, f: F) -> Result<(), E>
    where
        F: FnMut(&[u8], Rev) -> Result<bool, E>;
}

/// Bounds of a range of keys in the index's map.
type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The map bounds of a range span; `None` for the other kinds.
fn map_bounds(span: KeySpan<'_>) -> Option<KeyBounds<'_>> {
    match span {
        KeySpan::Range { start, end } => Some((Bound::Included(start), end.map_or(Bound::Unbounded, Bound::Excluded))),
        KeySpan::Single(_) | KeySpan::Empty => None,
    }
}

/// Calls `f` for a single key's version when it is live.
fn visit_single<E, F>(key: &[u8], version: Option<Rev>, mut f: F) -> Result<(), E>
where
    F: FnMut(&[u8], Rev) -> Result<bool, E>,
{
    if let Some(version) = version.filter(|v| v.is_live()) {
        f(key, version)?;
    }
    Ok(())
}

/// The committed key index, with the revision and compaction point it reflects (those of the
/// last batch merged in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyIndex {
    /// Every key's history.
    histories: HashMap<IndexKey, KeyHistory>,
    /// The same keys, in order.
    order: BTreeSet<IndexKey>,
    revision: i64,
    compact_revision: i64,
}

impl KeyIndex {
    /// Builds the index of the rows of `revisions` (one scan, in revision order), for a store
    /// whose counters are `revision` and `compact_revision`.
    ///
    /// The ordered set is built from the keys sorted: that is faster than inserting them one by
    /// one, and a set built in one go has full nodes (inserting keys one by one in order leaves
    /// them half empty), which is most of its memory.
    pub fn load<T: RowTable>(revisions: &T, revision: i64, compact_revision: i64) -> Result<KeyIndex, StorageError> {
        let mut gathered: HashMap<IndexKey, KeyHistory> = HashMap::new();
        for row in revisions.iter()? {
            let (id, value) = row?;
            let (main, sub) = split_row_id(id.value());
            let row = Row::decode(value.value())?;
            let version = Rev {
                main: main as i64,
                sub: u32::try_from(sub).map_err(|_| StorageError::Corrupt(format!("sub revision {sub} too large")))?,
                tombstone: row.record.is_none(),
            };
            let head = row.record.map_or(Head::default(), |r| Head::of(&r.header));
            match gathered.get_mut(row.key) {
                Some(history) => history.push(version, head),
                None => {
                    gathered.insert(row.key.into(), KeyHistory::new(version, head));
                }
            }
        }
        let mut sorted: Vec<IndexKey> = Vec::with_capacity(gathered.len());
        for (key, history) in gathered.iter_mut() {
            history.older.shrink_to_fit();
            sorted.push(key.clone());
        }
        sorted.sort_unstable();
        Ok(KeyIndex {
            histories: gathered,
            order: sorted.into_iter().collect(),
            revision,
            compact_revision,
        })
    }

    /// The store revision the index reflects: it holds every version at or below it and none
    /// above.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The compaction point the index reflects.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// The newest version of `key` strictly before `(main, sub)`: what a change at that revision
    /// replaced, if history still holds it.
    pub fn version_before(&self, key: &[u8], main: i64, sub: u32) -> Option<Rev> {
        self.histories.get(key)?.before(main, sub)
    }

    /// How many keys the index holds (deleted keys whose history is not compacted yet count).
    pub fn len(&self) -> usize {
        self.histories.len()
    }

    /// Merges in the changes of a committed batch, after which the index reflects `revision` and
    /// `compact_revision`.
    ///
    /// New versions go first, then the batch's compactions in order. That gives the same result
    /// as replaying the batch op by op: a compaction at `c` only looks at versions at or below
    /// `c`, which all came before it, and versions added after it are above `c`.
    pub fn apply(&mut self, changes: IndexChanges, revision: i64, compact_revision: i64) {
        for (key, pending) in changes.added {
            let Some((&last, earlier)) = pending.revs.split_last() else {
                continue;
            };
            match self.histories.entry(key) {
                hash_map::Entry::Occupied(mut occupied) => {
                    let history = occupied.get_mut();
                    history.older.push(history.newest);
                    history.older.extend_from_slice(earlier);
                    history.newest = last;
                    history.head = pending.head;
                }
                hash_map::Entry::Vacant(vacant) => {
                    let mut history = KeyHistory::new(last, pending.head);
                    history.older.extend_from_slice(earlier);
                    self.order.insert(vacant.key().clone());
                    vacant.insert(history);
                }
            }
        }
        for (c, keys) in changes.compactions {
            for key in keys {
                self.compact_key(&key, c);
            }
        }
        self.revision = revision;
        self.compact_revision = compact_revision;
    }

    /// Forgets every key at or past `end`: a split moved them, with their history, to another
    /// store.
    pub fn forget_from(&mut self, end: &[u8]) {
        for key in self.order.split_off(end) {
            self.histories.remove(&key);
        }
    }

    /// Applies the compaction rule at `c` to one key, dropping the key once nothing is left.
    fn compact_key(&mut self, key: &[u8], c: i64) {
        let Some(history) = self.histories.get_mut(key) else {
            return;
        };
        if !history.compact(c) {
            self.histories.remove(key);
            self.order.remove(key);
        }
    }

    /// The keys `keys` yields (in order, from [`KeyIndex::order`]), each with its history.
    fn ordered<'a, K>(&'a self, keys: K) -> Ordered<'a, K::IntoIter>
    where
        K: IntoIterator<Item = &'a IndexKey>,
    {
        Ordered {
            keys: keys.into_iter(),
            histories: &self.histories,
        }
    }

    #[cfg(test)]
    /// The live keys at the index's revision, ascending.
    pub fn live_keys(&self) -> Vec<Vec<u8>> {
        self.ordered(&self.order)
            .filter(|(_, h)| h.newest.is_live())
            .map(|(k, _)| k.to_vec())
            .collect()
    }
}

impl IndexRead for KeyIndex {
    fn version_at(&self, key: &[u8], rev: i64) -> Option<Rev> {
        self.histories.get(key)?.at(rev)
    }

    fn newest(&self, key: &[u8]) -> Option<(Rev, Head)> {
        let history = self.histories.get(key)?;
        Some((history.newest, history.head))
    }

    fn scan_live<E, F>(&self, span: KeySpan<'_>, rev: i64, mut f: F) -> Result<(), E>
    where
        F: FnMut(&[u8], Rev) -> Result<bool, E>,
    {
        if let KeySpan::Single(key) = span {
            return visit_single(key, self.version_at(key, rev), f);
        }
        let Some(bounds) = map_bounds(span) else {
            return Ok(());
        };
        for (key, history) in self.ordered(self.order.range::<[u8], _>(bounds)) {
            if let Some(version) = history.at(rev).filter(|v| v.is_live()) {
                if !f(key, version)? {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// Keys from the ordered set, each with its history from the hash map.
struct Ordered<'a, K> {
    keys: K,
    histories: &'a HashMap<IndexKey, KeyHistory>,
}

impl<'a, K: Iterator<Item = &'a IndexKey>> Iterator for Ordered<'a, K> {
    type Item = (&'a IndexKey, &'a KeyHistory);

    fn next(&mut self) -> Option<Self::Item> {
        let key = self.keys.next()?;
        let history = self
            .histories
            .get(&**key)
            .expect("the key index's set and map hold the same keys");
        Some((key, history))
    }
}

/// The versions one batch added to a key, ascending (all above the committed index's
/// revision), and the head after the last of them.
#[derive(Debug)]
struct Pending {
    revs: Vec<Rev>,
    head: Head,
}

/// A batch's view of the key index: the committed index (unchanged while the batch runs) with
/// the batch's own changes on top, so the batch reads its own writes.
///
/// Compactions are recorded, not applied: the batch's later reads are all at or above the
/// compaction point, where compaction changes no answer, and [`KeyIndex::apply`] applies them
/// after the commit.
pub(crate) struct PendingIndex<'i> {
    base: &'i KeyIndex,
    added: BTreeMap<IndexKey, Pending>,
    compactions: Vec<(i64, Vec<Box<[u8]>>)>,
}

/// The index changes of a batch, to merge into the [`KeyIndex`] once the batch has committed.
#[derive(Debug)]
pub(crate) struct IndexChanges {
    added: BTreeMap<IndexKey, Pending>,
    compactions: Vec<(i64, Vec<Box<[u8]>>)>,
}

impl IndexChanges {
    /// Whether the batch changed nothing in the index.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.compactions.is_empty()
    }
}

impl<'i> PendingIndex<'i> {
    /// No changes yet on top of `base`.
    pub fn new(base: &'i KeyIndex) -> PendingIndex<'i> {
        PendingIndex {
            base,
            added: BTreeMap::new(),
            compactions: Vec::new(),
        }
    }

    /// Records a new version of `key`, above every version recorded so far, with the head it
    /// leaves the key with.
    pub fn record(&mut self, key: &[u8], version: Rev, head: Head) {
        match self.added.entry(key.into()) {
            btree_map::Entry::Occupied(mut occupied) => {
                let pending = occupied.get_mut();
                pending.revs.push(version);
                pending.head = head;
            }
            btree_map::Entry::Vacant(vacant) => {
                vacant.insert(Pending {
                    revs: vec![version],
                    head,
                });
            }
        }
    }

    /// Every stored version of `key`, ascending: the committed ones, then the batch's.
    pub fn versions<'a>(&'a self, key: &[u8]) -> impl Iterator<Item = Rev> + 'a {
        let committed = self.base.histories.get(key).into_iter().flat_map(|h| h.versions());
        let added = self.added.get(key).map_or(&[][..], |p| &p.revs[..]);
        committed.chain(added.iter().copied())
    }

    /// Records that the batch compacted `keys` at `c` (and removed their rows).
    pub fn record_compaction(&mut self, c: i64, keys: Vec<Box<[u8]>>) {
        self.compactions.push((c, keys));
    }

    /// The batch's changes, to apply once it has committed.
    pub fn into_changes(self) -> IndexChanges {
        IndexChanges {
            added: self.added,
            compactions: self.compactions,
        }
    }
}

impl IndexRead for PendingIndex<'_> {
    fn version_at(&self, key: &[u8], rev: i64) -> Option<Rev> {
        // The batch's versions are all newer than the committed ones.
        if let Some(pending) = self.added.get(key) {
            if let Some(version) = newest_at(&pending.revs, rev) {
                return Some(version);
            }
        }
        self.base.version_at(key, rev)
    }

    fn newest(&self, key: &[u8]) -> Option<(Rev, Head)> {
        match self.added.get(key) {
            Some(pending) => Some((*pending.revs.last()?, pending.head)),
            None => self.base.newest(key),
        }
    }

    fn scan_live<E, F>(&self, span: KeySpan<'_>, rev: i64, mut f: F) -> Result<(), E>
    where
        F: FnMut(&[u8], Rev) -> Result<bool, E>,
    {
        if let KeySpan::Single(key) = span {
            return visit_single(key, self.version_at(key, rev), f);
        }
        let Some(bounds) = map_bounds(span) else {
            return Ok(());
        };
        let mut merged = Merged {
            base: self.base.ordered(self.base.order.range::<[u8], _>(bounds)).peekable(),
            added: self.added.range::<[u8], _>(bounds).peekable(),
        };
        while let Some((key, version)) = merged.next_at(rev) {
            if let Some(version) = version.filter(|v| v.is_live()) {
                if !f(key, version)? {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// The committed keys and a batch's keys of one span, walked together in key order.
struct Merged<'a> {
    base: Peekable<Ordered<'a, btree_set::Range<'a, IndexKey>>>,
    added: Peekable<btree_map::Range<'a, IndexKey, Pending>>,
}

impl<'a> Merged<'a> {
    /// The next key of either side with its newest version at or below `rev`.
    fn next_at(&mut self, rev: i64) -> Option<(&'a [u8], Option<Rev>)> {
        let order = match (self.base.peek(), self.added.peek()) {
            (None, None) => return None,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((b, _)), Some((a, _))) => b.cmp(a),
        };
        Some(match order {
            std::cmp::Ordering::Less => {
                let (key, history) = self.base.next()?;
                (&**key, history.at(rev))
            }
            std::cmp::Ordering::Greater => {
                let (key, pending) = self.added.next()?;
                (&**key, newest_at(&pending.revs, rev))
            }
            std::cmp::Ordering::Equal => {
                let (_, history) = self.base.next()?;
                let (key, pending) = self.added.next()?;
                let version = newest_at(&pending.revs, rev).or_else(|| history.at(rev));
                (&**key, version)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64, sub: u32, tombstone: bool) -> Rev {
        Rev { main, sub, tombstone }
    }

    #[test]
    fn lookups_by_revision() {
        let revs = [rev(2, 0, false), rev(5, 1, false), rev(5, 2, true), rev(9, 0, false)];
        assert_eq!(newest_at(&revs, 1), None);
        assert_eq!(newest_at(&revs, 4), Some(revs[0]));
        assert_eq!(newest_at(&revs, 5), Some(revs[2]));
        assert_eq!(newest_at(&revs, 100), Some(revs[3]));
        assert_eq!(newest_before(&revs, 2, 0), None);
        assert_eq!(newest_before(&revs, 5, 2), Some(revs[1]));
        assert_eq!(newest_before(&revs, 9, 0), Some(revs[2]));
    }

    #[test]
    fn compaction_rule() {
        let revs = [rev(2, 0, false), rev(4, 0, false), rev(6, 0, true), rev(6, 1, false)];
        let kept = |c: i64| -> Vec<Rev> {
            let newest = newest_at(&revs, c);
            revs.iter()
                .copied()
                .filter(|&v| survives_compaction(v, c, newest))
                .collect()
        };
        assert_eq!(kept(3), vec![revs[0], revs[1], revs[2], revs[3]]);
        assert_eq!(kept(5), vec![revs[1], revs[2], revs[3]]);
        // Everything at exactly the compaction point stays, even what it replaced.
        assert_eq!(kept(6), vec![revs[2], revs[3]]);
        assert_eq!(kept(7), vec![revs[3]]);
        // A key whose newest version is a deletion below the point goes entirely.
        let deleted = [rev(2, 0, false), rev(3, 0, true)];
        let newest = newest_at(&deleted, 4);
        assert!(deleted.iter().all(|&v| !survives_compaction(v, 4, newest)));
    }
}
