//! etcd's alarms as the store records them, and the one alarm that changes what apply accepts.
//!
//! An alarm is a `(member id, alarm type)` row in `alarms` from its ACTIVATE until its
//! DEACTIVATE. Alarms travel through Raft like any other command, so every member holds the same
//! set and refuses the same writes. They never change the revision.
//!
//! The semantics are etcd's apply-side ones:
//! * GET returns every raised alarm of the requested type (all types for `NONE`); the member id
//!   of the request plays no part.
//! * ACTIVATE of `NONE` does nothing. Otherwise the alarm is raised (if it was not already) and
//!   the response lists it either way.
//! * DEACTIVATE lowers exactly `(member id, type)` and lists it if it was raised; there is no
//!   wildcard (etcd's clients disarm "everything" by listing the alarms and lowering each).
//! * An unknown action changes nothing and lists nothing.
//!
//! While any member has CORRUPT raised, apply refuses every change to keys and leases (see
//! [`refused_while_corrupt`]); CORRUPT is checked before NOSPACE, as etcd's corrupt applier wraps
//! its capped one.
//!
//! While any member has NOSPACE raised, apply refuses the commands that would grow the store:
//! puts, txns with a put, lease grants (see [`needs_space`]). Deletes, compactions, revokes and
//! alarms still apply, so an operator can free space and disarm.

use concord_proto::concordpb::raft_command::Op;
use concord_proto::etcdserverpb::alarm_request::AlarmAction;
use concord_proto::etcdserverpb::request_op::Request;
use concord_proto::etcdserverpb::{AlarmMember, AlarmRequest, AlarmResponse, AlarmType, TxnRequest};
use redb::{ReadableTable, Table};

use crate::error::{OpError, StorageError};
use crate::write::{header_at, Writer};

/// `alarms` opened for writing.
pub(crate) type AlarmsMut<'t> = Table<'t, (u64, i32), ()>;

impl Writer<'_, '_> {
    /// etcd's alarm request, applied (see the module docs). Never fails with a `KvError` and
    /// never changes the revision.
    pub fn alarm(&mut self, req: &AlarmRequest) -> Result<AlarmResponse, OpError> {
        let none = AlarmType::None as i32;
        let alarms = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => {
                let kind = (req.alarm != none).then_some(req.alarm);
                raised_alarms(&self.alarms, kind)?
            }
            Ok(AlarmAction::Activate) if req.alarm != none => {
                self.alarms.insert((req.member_id, req.alarm), ())?;
                vec![member(req.member_id, req.alarm)]
            }
            Ok(AlarmAction::Activate) => Vec::new(),
            Ok(AlarmAction::Deactivate) => match self.alarms.remove((req.member_id, req.alarm))? {
                Some(_) => vec![member(req.member_id, req.alarm)],
                None => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        self.no_space = no_space_raised(&self.alarms)?;
        self.corrupt = corrupt_raised(&self.alarms)?;
        Ok(AlarmResponse {
            header: Some(header_at(self.revision)),
            alarms,
        })
    }
}

fn member(member_id: u64, alarm: i32) -> AlarmMember {
    AlarmMember { member_id, alarm }
}

/// The raised alarms, ascending by (member id, type); only those of type `kind` when given.
pub(crate) fn raised_alarms<T>(alarms: &T, kind: Option<i32>) -> Result<Vec<AlarmMember>, StorageError>
where
    T: ReadableTable<(u64, i32), ()>,
{
    let mut raised = Vec::new();
    for row in alarms.iter()? {
        let (member_id, alarm) = row?.0.value();
        if kind.is_none_or(|kind| kind == alarm) {
            raised.push(member(member_id, alarm));
        }
    }
    Ok(raised)
}

/// Whether some member has NOSPACE raised.
pub(crate) fn no_space_raised<T>(alarms: &T) -> Result<bool, StorageError>
where
    T: ReadableTable<(u64, i32), ()>,
{
    Ok(!raised_alarms(alarms, Some(AlarmType::Nospace as i32))?.is_empty())
}

/// Whether some member has CORRUPT raised.
pub(crate) fn corrupt_raised<T>(alarms: &T) -> Result<bool, StorageError>
where
    T: ReadableTable<(u64, i32), ()>,
{
    Ok(!raised_alarms(alarms, Some(AlarmType::Corrupt as i32))?.is_empty())
}

/// Whether `op` is refused while CORRUPT is raised: every change to keys and leases, as etcd's
/// corrupt applier refuses them. Alarms (so an operator can disarm), auth and membership apply.
pub(crate) fn refused_while_corrupt(op: &Op) -> bool {
    match op {
        Op::Put(_)
        | Op::DeleteRange(_)
        | Op::Txn(_)
        | Op::Compaction(_)
        | Op::LeaseGrant(_)
        | Op::LeaseRevoke(_)
        | Op::PrepareCrossShard(_)
        | Op::SplitShard(_) => true,
        Op::Alarm(_)
        | Op::CommitCrossShard(_)
        | Op::AbortCrossShard(_)
        | Op::AllocateShardId(_)
        | Op::RecordShard(_)
        | Op::PublishMember(_)
        | Op::UpdateMember(_)
        | Op::Auth(_)
        | Op::Authorized(_)
        | Op::LeaseCheckpoint(_)
        | Op::RaiseRevisionCeiling(_)
        | Op::ReadBarrier(_) => false,
    }
}

/// Whether `op` is refused while NOSPACE is raised: a put, a lease grant, or a txn with a put in
/// either branch at any depth, whichever branch its compares would pick (etcd looks only at the
/// top level of a txn; a nested put grows the store just the same).
pub(crate) fn needs_space(op: &Op) -> bool {
    match op {
        Op::Put(_) | Op::LeaseGrant(_) => true,
        Op::Txn(txn) => txn_has_put(txn),
        Op::DeleteRange(_)
        | Op::Compaction(_)
        | Op::LeaseRevoke(_)
        | Op::LeaseCheckpoint(_)
        | Op::RaiseRevisionCeiling(_)
        | Op::ReadBarrier(_)
        | Op::PrepareCrossShard(_)
        | Op::CommitCrossShard(_)
        | Op::AbortCrossShard(_)
        | Op::SplitShard(_)
        | Op::AllocateShardId(_)
        | Op::RecordShard(_)
        | Op::Alarm(_)
        | Op::PublishMember(_)
        | Op::UpdateMember(_)
        | Op::Auth(_) => false,
        // Envelopes are opened before this check (see `auth::open_envelope`).
        Op::Authorized(_) => false,
    }
}

fn txn_has_put(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(txn.failure.iter())
        .any(|op| match &op.request {
            Some(Request::RequestPut(_)) => true,
            Some(Request::RequestTxn(inner)) => txn_has_put(inner),
            Some(Request::RequestRange(_)) | Some(Request::RequestDeleteRange(_)) | None => false,
        })
}
