//! etcd's leases as the store records them: grant, revoke (which deletes every attached key in
//! one revision), and the bookkeeping of which keys are attached to which lease.
//!
//! The store keeps no clock. A lease is a row in `leases` from its grant until its revoke; the
//! server's lessor tracks expiry (rebuilding its deadlines from [`MvccStore::leases`]) and
//! proposes the revoke when a lease runs out. Lease ids are chosen by the proposing server, never
//! here, so applying a grant is deterministic.
//!
//! A key is attached to the lease named in its newest live record: `lease_keys` holds
//! `(lease, key)` exactly for those keys. Puts move the attachment (see `Writer::put`), deletes
//! drop it (see `Writer::delete_range`).
//!
//! [`MvccStore::leases`]: crate::MvccStore::leases

use concord_proto::etcdserverpb::{
    DeleteRangeRequest, LeaseCheckpointRequest, LeaseCheckpointResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse,
};
use redb::{ReadableTable, Table};

use crate::error::{KvError, OpError, StorageError};
use crate::write::{header_at, Writer};

/// `leases` opened for writing.
pub(crate) type LeasesMut<'t> = Table<'t, i64, i64>;
/// `lease_keys` opened for writing.
pub(crate) type LeaseKeysMut<'t> = Table<'t, (i64, &'static [u8]), ()>;

/// The id meaning "no lease", as in etcd.
pub(crate) const NO_LEASE: i64 = 0;

impl Writer<'_, '_> {
    /// etcd's lease grant. Fails with `LeaseNotFound` for id 0 (etcd's answer to a grant of "no
    /// lease") and with `LeaseExists` when the id is taken. The TTL is stored as given: clamping
    /// it to a minimum is the server's job, before it proposes. The revision does not change.
    pub fn lease_grant(&mut self, req: &LeaseGrantRequest) -> Result<LeaseGrantResponse, OpError> {
        if req.id == NO_LEASE {
            return Err(KvError::LeaseNotFound.into());
        }
        if self.lease_exists(req.id)? {
            return Err(KvError::LeaseExists.into());
        }
        self.leases.insert(req.id, req.ttl)?;
        Ok(LeaseGrantResponse {
            header: Some(header_at(self.revision)),
            id: req.id,
            ttl: req.ttl,
            error: String::new(),
        })
    }

    /// etcd's lease revoke: deletes every key attached to the lease, in ascending key order and
    /// all in one revision (as one DeleteRange per key would inside a txn), then forgets the
    /// lease. A lease without keys leaves the revision alone. Fails with `LeaseNotFound`, before
    /// changing anything, when the lease does not exist.
    pub fn lease_revoke(&mut self, req: &LeaseRevokeRequest) -> Result<LeaseRevokeResponse, OpError> {
        if !self.lease_exists(req.id)? {
            return Err(KvError::LeaseNotFound.into());
        }
        let keys = attached_keys(&self.lease_keys, req.id)?;
        for key in keys {
            let delete = DeleteRangeRequest {
                key,
                ..Default::default()
            };
            // Deleting the key also detaches it from the lease.
            self.delete_range(&delete)?;
            // Should the attachment be stale (the key's record names another lease, or the key
            // is gone), drop it anyway so the lease leaves nothing behind.
            self.lease_keys.remove((req.id, delete.key.as_slice()))?;
        }
        self.leases.remove(req.id)?;
        self.lease_remaining.remove(req.id)?;
        Ok(LeaseRevokeResponse {
            header: Some(header_at(self.view_revision())),
        })
    }

    /// etcd's lease checkpoint: records, for each granted lease named, the seconds it had left
    /// when the leader proposed it (0 or less, or the full TTL: forgets the record, as a renewal
    /// does). Leases that are gone are skipped. Changes no revision and never fails on its own.
    pub fn lease_checkpoint(&mut self, req: &LeaseCheckpointRequest) -> Result<LeaseCheckpointResponse, OpError> {
        for checkpoint in &req.checkpoints {
            let Some(ttl) = self.leases.get(checkpoint.id)?.map(|g| g.value()) else {
                continue;
            };
            if checkpoint.remaining_ttl > 0 && checkpoint.remaining_ttl < ttl {
                self.lease_remaining.insert(checkpoint.id, checkpoint.remaining_ttl)?;
            } else {
                self.lease_remaining.remove(checkpoint.id)?;
            }
        }
        Ok(LeaseCheckpointResponse {
            header: Some(header_at(self.revision)),
        })
    }

    /// Whether lease `id` is granted (and not yet revoked).
    pub fn lease_exists(&self, id: i64) -> Result<bool, StorageError> {
        Ok(self.leases.get(id)?.is_some())
    }
}

/// Records that `key`, whose newest record named lease `old`, now names lease `new` (either may
/// be [`NO_LEASE`]).
pub(crate) fn reattach(lease_keys: &mut LeaseKeysMut<'_>, key: &[u8], old: i64, new: i64) -> Result<(), StorageError> {
    if old == new {
        return Ok(());
    }
    detach(lease_keys, key, old)?;
    if new != NO_LEASE {
        lease_keys.insert((new, key), ())?;
    }
    Ok(())
}

/// Records that `key`, whose newest record named lease `lease`, is attached to it no more (it was
/// deleted or moved to another lease).
pub(crate) fn detach(lease_keys: &mut LeaseKeysMut<'_>, key: &[u8], lease: i64) -> Result<(), StorageError> {
    if lease != NO_LEASE {
        lease_keys.remove((lease, key))?;
    }
    Ok(())
}

/// The keys attached to lease `id`, ascending.
pub(crate) fn attached_keys<T>(lease_keys: &T, id: i64) -> Result<Vec<Vec<u8>>, StorageError>
where
    T: ReadableTable<(i64, &'static [u8]), ()>,
{
    let mut keys = Vec::new();
    for row in lease_keys.range((id, &[][..])..)? {
        let row = row?;
        let (lease, key) = row.0.value();
        if lease != id {
            break;
        }
        keys.push(key.to_vec());
    }
    Ok(keys)
}

/// Every lease with its granted TTL, ascending by id.
pub(crate) fn all_leases<T>(leases: &T) -> Result<Vec<(i64, i64)>, StorageError>
where
    T: ReadableTable<i64, i64>,
{
    let mut all = Vec::new();
    for row in leases.iter()? {
        let (id, ttl) = row?;
        all.push((id.value(), ttl.value()));
    }
    Ok(all)
}
