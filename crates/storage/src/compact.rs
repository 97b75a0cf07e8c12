//! Compaction: dropping history that no read can ask for any more.
//!
//! After compacting at `rev`, reads at revisions `>= rev` must still answer exactly as before.
//! For each key that means keeping its newest version `<= rev` (unless that version is a
//! tombstone, in which case the key did not exist at `rev` and nothing of it is needed) and
//! everything newer; every older version goes.
//!
//! Only keys that changed since the previous compaction can have anything to drop: a key untouched
//! since then already holds just its single newest version `<= previous compaction`, which is
//! live. Those keys are exactly the ones named by the remaining `changes` rows up to `rev`, so the
//! work is proportional to the history being compacted, not to the size of the store.
//!
//! `changes` rows with main revision `< rev` are removed. The rows at exactly `rev` are kept so a
//! watcher may still start at the compaction revision and see every change made at it (etcd
//! allows such watches); they are dropped by the next compaction.

use std::collections::BTreeSet;

use concord_proto::etcdserverpb::{CompactionRequest, CompactionResponse};
use redb::ReadableTable;

use crate::error::{KvError, OpError};
use crate::keys::decode_change;
use crate::write::{header_at, Writer};

impl Writer<'_> {
    /// etcd's Compact. Fails with `Compacted` when `req.revision` is not above the previous
    /// compaction point and with `FutureRevision` when it is above the current revision; the
    /// store revision does not change.
    pub fn compact(&mut self, req: &CompactionRequest) -> Result<CompactionResponse, OpError> {
        let rev = req.revision;
        if rev <= self.compact_revision {
            return Err(KvError::Compacted.into());
        }
        if rev > self.revision {
            return Err(KvError::FutureRevision.into());
        }
        let urev = rev.max(0) as u64;

        let mut touched: BTreeSet<Vec<u8>> = BTreeSet::new();
        for row in self.changes.range((0u64, 0u64)..=(urev, u64::MAX))? {
            let (_, value) = row?;
            touched.insert(decode_change(value.value())?.1.to_vec());
        }
        self.changes
            .retain_in((0u64, 0u64)..(urev, 0u64), |_, _| false)?;

        for key in &touched {
            let key = key.as_slice();
            let newest = {
                let found = self
                    .kv
                    .range((key, 0u64, 0u64)..=(key, urev, u64::MAX))?
                    .next_back();
                match found {
                    Some(row) => {
                        let (row_key, row_value) = row?;
                        let (_, main, sub) = row_key.value();
                        Some((main, sub, row_value.value().is_empty()))
                    }
                    None => None,
                }
            };
            let Some((main, sub, is_tombstone)) = newest else {
                continue;
            };
            if is_tombstone {
                self.kv
                    .retain_in((key, 0u64, 0u64)..=(key, main, sub), |_, _| false)?;
            } else {
                self.kv
                    .retain_in((key, 0u64, 0u64)..(key, main, sub), |_, _| false)?;
            }
        }

        self.compact_revision = rev;
        tracing::debug!(revision = rev, keys = touched.len(), "compacted");
        Ok(CompactionResponse {
            header: Some(header_at(self.revision)),
        })
    }
}
