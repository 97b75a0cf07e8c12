//! Compaction: dropping history that no read can ask for any more.
//!
//! After compacting at `c`, reads at revisions `>= c` must still answer exactly as before. For
//! each key that means keeping its newest version `<= c` (unless that version is a tombstone, in
//! which case the key did not exist at `c` and nothing of it is needed) and everything newer;
//! every older version goes (see [`survives_compaction`]).
//!
//! `revisions` is also the change log, and a watcher may start at the compaction revision itself
//! and expects every change made at it (etcd allows such watches). So rows at exactly `c` are
//! kept whatever they are (a deletion, or a version replaced later within the same revision);
//! the next compaction drops them.
//!
//! Only keys that changed since the previous compaction can have anything to drop: a key untouched
//! since then already holds just its single newest version `<= previous compaction`, which is
//! live. Those keys are exactly the ones with rows from the previous compaction point to `c`, so
//! the work is proportional to the history being compacted, not to the size of the store. Each
//! such key is handled once, at its newest version `<= c`; the key index lists its older
//! versions, wherever they lie in the table.

use concord_proto::etcdserverpb::{CompactionRequest, CompactionResponse};
use redb::ReadableTable;

use crate::error::{KvError, OpError, StorageError};
use crate::index::{survives_compaction, IndexRead, PendingIndex, Rev};
use crate::keys::{main_revisions, row_id, split_row_id, Row, RowId};
use crate::write::{header_at, Writer};

impl Writer<'_, '_> {
    /// etcd's Compact. Fails with `Compacted` when `req.revision` is not above the previous
    /// compaction point and with `FutureRevision` when it is above the current revision; the
    /// store revision does not change.
    ///
    /// A stamped compaction (multi-shard mode: every shard is compacted at one global revision)
    /// may ask for a revision above the shard's own, when the shard's last write came earlier:
    /// its stamp, above the asked revision, says the shard has no write up to it (its log is in
    /// stamp order), so the shard's revision rises to the asked one and it is compacted there.
    pub fn compact(&mut self, req: &CompactionRequest) -> Result<CompactionResponse, OpError> {
        let c = req.revision;
        if c <= self.compact_revision {
            return Err(KvError::Compacted.into());
        }
        if c > self.revision {
            match self.stamp {
                Some(stamp) if c < stamp => self.revision = c,
                _ => return Err(KvError::FutureRevision.into()),
            }
        }
        let from = self.compact_revision.max(0);
        let Writer { revisions, index, .. } = self;
        let mut sweep = Sweep {
            index,
            c,
            from,
            older: Vec::new(),
            keys: Vec::new(),
            removed: 0,
            error: None,
        };
        // Rows from the previous compaction point up to (not including) c are removed in one
        // pass as they are examined...
        if from < c {
            let below_c = row_id(from as u64, 0)..row_id(c as u64, 0);
            revisions.retain_in(below_c, |id, value| sweep.keeps(id, value))?;
        }
        // ...rows at c all stay, but they may be some keys' newest versions...
        for row in revisions.range(main_revisions(c, c))? {
            let (id, value) = row?;
            sweep.keeps(id.value(), value.value());
        }
        if let Some(err) = sweep.error {
            return Err(err.into());
        }
        // ...and those keys' versions below the previous compaction point go one by one.
        sweep.older.sort_unstable();
        for id in &sweep.older {
            revisions.remove(*id)?;
        }
        let removed = sweep.removed + sweep.older.len();
        index.record_compaction(c, sweep.keys);
        self.forget_cross_shard_outcomes(c)?;

        self.compact_revision = c;
        tracing::debug!(revision = c, versions = removed, "compacted");
        Ok(CompactionResponse {
            header: Some(header_at(self.revision)),
        })
    }
}

/// One compaction's walk over the rows from the previous compaction point `from` to `c`.
struct Sweep<'a, 'i> {
    index: &'a PendingIndex<'i>,
    c: i64,
    from: i64,
    /// Doomed versions below `from`, which the walk does not reach.
    older: Vec<RowId>,
    /// The keys that lose versions, for the index.
    keys: Vec<Box<[u8]>>,
    /// Rows the walk itself removed.
    removed: usize,
    /// The first row that could not be read; the walk keeps everything after it.
    error: Option<StorageError>,
}

impl Sweep<'_, '_> {
    /// Examines one row of the walk: whether it survives the compaction, and, when it is its
    /// key's newest version at or below `c` (each key touched since `from` has exactly one such
    /// row in the walk), what else of the key goes.
    fn keeps(&mut self, id: RowId, value: &[u8]) -> bool {
        if self.error.is_some() {
            return true;
        }
        let row = match Row::decode(value) {
            Ok(row) => row,
            Err(err) => {
                self.error = Some(err);
                return true;
            }
        };
        let (main, sub) = split_row_id(id);
        let version = Rev {
            main: main as i64,
            sub: sub as u32,
            tombstone: row.record.is_none(),
        };
        let newest = self.index.version_at(row.key, self.c);
        if newest == Some(version) {
            let mut loses = false;
            for older in self.index.versions(row.key).take_while(|v| v.main < self.c) {
                if !survives_compaction(older, self.c, newest) {
                    loses = true;
                    if older.main < self.from {
                        self.older.push(older.id());
                    }
                }
            }
            if loses {
                self.keys.push(row.key.into());
            }
        }
        let keep = survives_compaction(version, self.c, newest);
        self.removed += usize::from(!keep);
        keep
    }
}
