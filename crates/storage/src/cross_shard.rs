//! A shard's side of a write that spans shards (multi-shard mode): prepare, commit, abort.
//!
//! A DeleteRange over the keys of several shards must take one revision on all of them, and a
//! read or watch at any revision must see all of its parts or none. Each shard's part is first
//! *prepared* ([`PrepareCrossShard`]), stamped like any write at `p`: the store records it as
//! held, and from then on, until the part commits or aborts, applies nothing stamped above `p`
//! (no write, no read barrier: a read past `p` waits) and no split. Writes stamped below `p` (in
//! flight before it) still apply. The write's revision `r` is the highest of its prepares'
//! stamps, so it is above every revision handed out before it began, and when a part commits at
//! `r`, nothing of its shard lies above `p <= r`: the part applies at `r` as any stamped write
//! would, and the shard's stamp floor rises to `r`, so a write stamped below it that comes later
//! is refused as stale and retried, as for any write.
//!
//! The *primary* shard's commit is the write's decision: a shard left holding a part by a
//! coordinator that went quiet asks the primary to abort it ([`AbortCrossShard`]), which answers
//! the committed outcome if it had committed, and otherwise records the write as aborted for
//! good, so that a prepare arriving late is refused. Every shard records the outcome of its
//! parts (`cross_shard_outcomes`), so asking again answers the same; outcomes older than the
//! compaction point are dropped by compaction.

use concord_proto::concordpb::{AbortCrossShard, CommitCrossShard, CrossShardOutcome, PrepareCrossShard};
use prost::Message;
use redb::{ReadableTable, Table, TableDefinition};

use crate::error::{KvError, OpError, StorageError};
use crate::write::Writer;

/// The part this store holds for a write in progress, under [`HELD_KEY`]: an encoded
/// [`PrepareCrossShard`]. At most one at a time.
pub(crate) const HELD: TableDefinition<&str, &[u8]> = TableDefinition::new("cross_shard_held");
pub(crate) const HELD_KEY: &str = "held";

/// What became of each part this store prepared (or, on a primary, was asked to abort): the
/// write's id → an encoded [`CrossShardOutcome`].
pub(crate) const OUTCOMES: TableDefinition<u64, &[u8]> = TableDefinition::new("cross_shard_outcomes");

/// The answer to a prepare: held at `revision`, not committed yet.
fn pending(revision: i64) -> CrossShardOutcome {
    CrossShardOutcome {
        header: None,
        committed: false,
        revision,
        delete_range: None,
        revoked_lease: 0,
    }
}

/// The held part recorded in `table`, if any.
pub(crate) fn read_held<T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
) -> Result<Option<PrepareCrossShard>, StorageError> {
    match table.get(HELD_KEY)? {
        Some(bytes) => PrepareCrossShard::decode(bytes.value())
            .map(Some)
            .map_err(|e| StorageError::Corrupt(format!("held cross-shard write: {e}"))),
        None => Ok(None),
    }
}

fn read_outcome(table: &Table<'_, u64, &'static [u8]>, id: u64) -> Result<Option<CrossShardOutcome>, StorageError> {
    match table.get(id)? {
        Some(bytes) => CrossShardOutcome::decode(bytes.value())
            .map(Some)
            .map_err(|e| StorageError::Corrupt(format!("cross-shard outcome: {e}"))),
        None => Ok(None),
    }
}

impl Writer<'_, '_> {
    /// Why the held part refuses a command stamped `stamp` (`None`: unstamped) that is not one
    /// of the phases: a split, or anything stamped above the held write's revision.
    pub(crate) fn refused_while_held(&self, stamp: Option<i64>, splits: bool) -> Option<KvError> {
        let held = self.held.as_ref()?;
        let above = stamp.is_some_and(|stamp| stamp > held.revision);
        (splits || above).then_some(KvError::ShardHeld)
    }

    /// Prepares this store's part of a write that spans shards (see the module docs): held at
    /// the prepare's stamp (unstamped, as in tests: just above everything applied).
    pub(crate) fn prepare_cross_shard(&mut self, req: &PrepareCrossShard) -> Result<CrossShardOutcome, OpError> {
        if let Some(held) = &self.held {
            return match held.id == req.id {
                true => Ok(pending(held.revision)),
                false => Err(KvError::ShardHeld.into()),
            };
        }
        if read_outcome(&self.cross_shard_outcomes, req.id)?.is_some() {
            return Err(KvError::CrossShardAborted.into());
        }
        match (&req.delete_range, &req.lease_revoke) {
            (Some(part), _) if !self.key_range.covers(&part.key, &part.range_end) => {
                return Err(KvError::WrongShard.into());
            }
            (Some(_), _) => {}
            (None, Some(revoke)) if req.primary && !self.lease_exists(revoke.id)? => {
                return Err(KvError::LeaseNotFound.into());
            }
            (None, Some(_)) => {}
            (None, None) => return Err(KvError::EmptyCommand.into()),
        }
        let revision = self.stamp.unwrap_or_else(|| self.revision.max(self.stamp_floor) + 1);
        let held = PrepareCrossShard {
            revision,
            ..req.clone()
        };
        self.cross_shard_held
            .insert(HELD_KEY, held.encode_to_vec().as_slice())?;
        self.held = Some(held);
        self.stamp_floor = self.stamp_floor.max(revision);
        Ok(pending(revision))
    }

    /// Commits this store's part: applies it at the write's revision and releases the store.
    /// A part no longer held answers its recorded outcome (refused as aborted if it aborted).
    pub(crate) fn commit_cross_shard(&mut self, req: &CommitCrossShard) -> Result<CrossShardOutcome, OpError> {
        let held = match &self.held {
            Some(held) if held.id == req.id => held.clone(),
            _ => {
                return match read_outcome(&self.cross_shard_outcomes, req.id)? {
                    Some(outcome) if outcome.committed => Ok(outcome),
                    _ => Err(KvError::CrossShardAborted.into()),
                };
            }
        };
        // Nothing stamped above the prepare applied since, and the write's revision is at least
        // the prepare's stamp, so the part applies there like any stamped write.
        if req.revision < held.revision {
            return Err(KvError::StaleStamp {
                stamp: req.revision,
                revision: held.revision,
            }
            .into());
        }
        self.begin_command(Some(req.revision))?;
        let mut outcome = CrossShardOutcome {
            header: None,
            committed: true,
            revision: req.revision,
            delete_range: None,
            revoked_lease: 0,
        };
        if let Some(part) = &held.delete_range {
            outcome.delete_range = Some(self.delete_range(part)?);
        } else if let Some(revoke) = &held.lease_revoke {
            // A shard that never learned of the lease holds none of its keys.
            if self.lease_exists(revoke.id)? {
                self.lease_revoke(revoke)?;
            }
            outcome.revoked_lease = revoke.id;
        }
        self.held = None;
        self.stamp_floor = self.stamp_floor.max(req.revision);
        self.cross_shard_held.remove(HELD_KEY)?;
        self.cross_shard_outcomes
            .insert(held.id, outcome.encode_to_vec().as_slice())?;
        Ok(outcome)
    }

    /// Aborts this store's part, or, when it committed already, answers that. On the primary,
    /// the write is then aborted for good: it is recorded so, and a later prepare is refused.
    pub(crate) fn abort_cross_shard(&mut self, req: &AbortCrossShard) -> Result<CrossShardOutcome, OpError> {
        if let Some(outcome) = read_outcome(&self.cross_shard_outcomes, req.id)? {
            return Ok(outcome);
        }
        let revision = match self.held.take() {
            Some(held) if held.id == req.id => {
                self.cross_shard_held.remove(HELD_KEY)?;
                held.revision
            }
            other => {
                self.held = other;
                self.revision
            }
        };
        let outcome = CrossShardOutcome {
            header: None,
            committed: false,
            revision,
            delete_range: None,
            revoked_lease: 0,
        };
        self.cross_shard_outcomes
            .insert(req.id, outcome.encode_to_vec().as_slice())?;
        Ok(outcome)
    }

    /// Drops the outcomes of writes below the compaction point `c`: no coordinator still waits
    /// on those.
    pub(crate) fn forget_cross_shard_outcomes(&mut self, c: i64) -> Result<(), StorageError> {
        self.cross_shard_outcomes
            .retain(|_, bytes| CrossShardOutcome::decode(bytes).map_or(true, |outcome| outcome.revision >= c))?;
        Ok(())
    }
}

/// The part a store holds for a write in progress, read in `txn`.
pub(crate) fn held_in(txn: &redb::ReadTransaction) -> Result<Option<PrepareCrossShard>, StorageError> {
    match txn.open_table(HELD) {
        Ok(table) => read_held(&table),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
