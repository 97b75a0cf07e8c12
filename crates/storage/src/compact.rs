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

use crate::error::{KvError, OpError};
use crate::index::{survives_compaction, IndexRead};
use crate::keys::Row;
use crate::write::{header_at, Writer};

impl Writer<'_, '_> {
    /// etcd's Compact. Fails with `Compacted` when `req.revision` is not above the previous
    /// compaction point and with `FutureRevision` when it is above the current revision; the
    /// store revision does not change.
    pub fn compact(&mut self, req: &CompactionRequest) -> Result<CompactionResponse, OpError> {
        let c = req.revision;
        if c <= self.compact_revision {
            return Err(KvError::Compacted.into());
        }
        if c > self.revision {
            return Err(KvError::FutureRevision.into());
        }
        let from = self.compact_revision.max(0) as u64;

        // The rows to delete, and the keys they belong to (for the index, after the commit).
        let mut doomed: Vec<(u64, u64)> = Vec::new();
        let mut keys: Vec<Box<[u8]>> = Vec::new();
        for row in self.revisions.range((from, 0u64)..=(c as u64, u64::MAX))? {
            let (id, value) = row?;
            let key = Row::decode(value.value())?.key;
            let newest = self.index.version_at(key, c);
            if newest.map(|v| v.id()) != Some(id.value()) {
                // The key is handled at its newest version <= c, which is in this range too.
                continue;
            }
            let before = doomed.len();
            for version in self.index.versions(key).take_while(|v| v.main < c) {
                if !survives_compaction(version, c, newest) {
                    doomed.push(version.id());
                }
            }
            if doomed.len() > before {
                keys.push(key.into());
            }
        }
        // In table order, so each page is visited (and copied) once.
        doomed.sort_unstable();
        for id in &doomed {
            self.revisions.remove(*id)?;
        }
        self.index.record_compaction(c, keys);

        self.compact_revision = c;
        tracing::debug!(revision = c, versions = doomed.len(), "compacted");
        Ok(CompactionResponse {
            header: Some(header_at(self.revision)),
        })
    }
}
