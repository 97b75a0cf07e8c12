//! etcd's space quota: once the store outgrows `--quota-backend-bytes`, a
//! write is refused and the cluster raises a NOSPACE alarm, which keeps
//! refusing writes on every member until an operator compacts, defragments
//! and disarms it.

use concord_proto::concordpb::raft_command::Op;
use concord_proto::etcdserverpb::alarm_request::AlarmAction;
use concord_proto::etcdserverpb::{AlarmRequest, AlarmType};
use tonic::Status;

use crate::context::MemberContext;
use crate::errors;

/// Refuses a write of about `cost` bytes when it would take the store past
/// the quota, raising the NOSPACE alarm first.
pub async fn check(ctx: &MemberContext, cost: usize) -> Result<(), Status> {
    let quota = ctx.limits.quota_backend_bytes;
    let fits = |size: u64| size.saturating_add(cost as u64) <= quota;
    // The hint is a batch old at most; a stale one (say, from before a defragmentation) is
    // only ever trusted to let a write through, never to refuse one.
    if fits(ctx.store.db_size_hint()) || fits(ctx.store.db_size()) {
        return Ok(());
    }
    let raise = AlarmRequest {
        action: AlarmAction::Activate as i32,
        member_id: ctx.membership.local_id(),
        alarm: AlarmType::Nospace as i32,
    };
    let group = ctx.router.default_group();
    // The member raises the alarm itself, whoever's write ran out of space.
    if let Err(status) = ctx
        .propose_write(group, &crate::auth::Sender::Member, Op::Alarm(raise))
        .await
    {
        tracing::warn!("raising the NOSPACE alarm failed: {}", status.message());
    }
    Err(errors::no_space())
}
