//! A write over several shards at one revision (a DeleteRange across shards, a lease revoke
//! when the keyspace is split): two phases over the shards' own logs (the shard's side is
//! `concord_storage`'s `cross_shard.rs`).
//!
//! 1. **Prepare** each shard's part, all at once. Each prepare is stamped in its shard's log like
//!    any write and holds the shard: nothing stamped above it applies there until the part is
//!    done. The write's revision is the highest prepare stamp, above every revision handed out
//!    before the call.
//! 2. **Commit** the primary's part (the first part's shard): from then on the write has
//!    happened. Then the other parts, at once. Each applies at the write's revision, so a read
//!    or watch at any revision sees every part or none.
//!
//! A prepare refused for now (the shard holds another such write, or a split moved the keys)
//! aborts the parts prepared and the whole is tried again after a pause, until the request
//! timeout. A coordinator that dies between the phases leaves its shards held; each held
//! shard's leader then asks the primary to abort (`cross_shard_recovery.rs`), which answers the
//! commit instead if it came first, so every part ends the way the primary did.

use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::shards_client::ShardsClient;
use concord_proto::concordpb::{
    shard_propose_response, AbortCrossShard, CommitCrossShard, CrossShardOutcome, PrepareCrossShard, RaftCommand,
    ShardProposeRequest, ShardProposeResponse,
};
use concord_storage::{KvError, WriteResult};
use futures::future::join_all;
use prost::Message as _;
use tonic::{Request, Status};

use crate::auth::{Credentials, Sender};
use crate::context::{MemberContext, RetryPause};
use crate::errors;
use crate::router::{RemoteShard, Route};

/// One shard's part of a write across shards: a range to delete or a lease to revoke there.
pub struct Part {
    /// The shard's group.
    pub group: u64,
    /// The part, as the prepare carries it (`id`, `primary_group` and `primary` are filled in).
    pub prepare: PrepareCrossShard,
}

/// Writes `parts` (the first is the primary) at one revision on behalf of `creds`, trying again
/// while a shard refuses for now, until the request timeout; `parts` are planned again from the
/// router each time. Answers each part's outcome, in the order of `parts`, and the revision.
pub async fn write(
    ctx: &MemberContext,
    creds: &Credentials,
    plan: impl Fn(&MemberContext) -> Vec<Part>,
) -> Result<(Vec<CrossShardOutcome>, i64), Status> {
    let mut pause = RetryPause::new(ctx.request_timeout);
    loop {
        match attempt(ctx, creds, plan(ctx)).await {
            Ok(done) => return Ok(done),
            Err(Failed::Retry(status)) if pause.wait().await => {
                tracing::debug!("a write across shards is tried again: {}", status.message());
            }
            Err(Failed::Retry(status) | Failed::Fatal(status)) => return Err(status),
        }
    }
}

/// Why an attempt failed: nothing of it happened and it may be made again, or it may not.
enum Failed {
    Retry(Status),
    Fatal(Status),
}

async fn attempt(
    ctx: &MemberContext,
    creds: &Credentials,
    mut parts: Vec<Part>,
) -> Result<(Vec<CrossShardOutcome>, i64), Failed> {
    let primary_group = parts.first().map_or(0, |p| p.group);
    let id = write_id().map_err(Failed::Fatal)?;
    for part in &mut parts {
        part.prepare.id = id;
        part.prepare.primary_group = primary_group;
        part.prepare.primary = part.group == primary_group;
    }

    let prepares = parts
        .iter()
        .map(|part| run_phase(ctx, creds, part.group, Op::PrepareCrossShard(part.prepare.clone())));
    let prepared = join_all(prepares).await;
    let mut revision = 0;
    let mut refused = None;
    for result in prepared {
        match result {
            Ok(outcome) => revision = revision.max(outcome.revision),
            Err(status) => refused = Some(status),
        }
    }
    if let Some(status) = refused {
        // Every part, prepared or not: a prepare whose answer was lost may have held its shard.
        abort_parts(ctx, &parts, id).await;
        return Err(match retryable(&status) {
            true => Failed::Retry(status),
            false => Failed::Fatal(status),
        });
    }

    let primary = match commit_until_answered(ctx, primary_group, id, revision).await {
        Ok(outcome) => outcome,
        Err(status) if is_aborted(&status) => {
            // The primary gave up on the write before it came (a held shard asked): nothing of it
            // happened, so it can be made again.
            abort_parts(ctx, &parts, id).await;
            return Err(Failed::Retry(status));
        }
        // The outcome is unknown: held shards settle it with the primary.
        Err(status) => return Err(Failed::Fatal(status)),
    };
    let others = parts[1..]
        .iter()
        .map(|part| commit_until_answered(ctx, part.group, id, revision));
    let mut outcomes = vec![primary];
    for outcome in join_all(others).await {
        // The write has happened; a part not answered yet is committed by its shard's recovery.
        outcomes.push(outcome.map_err(Failed::Fatal)?);
    }
    Ok((outcomes, revision))
}

/// Commits `group`'s part of write `id` at `revision`. A commit whose answer did not come (a
/// timeout, a leader change) is asked again: asking again answers the outcome the shard
/// recorded.
async fn commit_until_answered(
    ctx: &MemberContext,
    group: u64,
    id: u64,
    revision: i64,
) -> Result<CrossShardOutcome, Status> {
    let member = Credentials::default();
    let mut pause = RetryPause::new(ctx.request_timeout);
    loop {
        let commit = Op::CommitCrossShard(CommitCrossShard { id, revision });
        match run_phase(ctx, &member, group, commit).await {
            Err(status) if !is_aborted(&status) && pause.wait().await => {}
            answer => return answer,
        }
    }
}

/// Releases every part of write `id`, as far as the shards can be reached; a part left held is
/// released by its shard's recovery.
async fn abort_parts(ctx: &MemberContext, parts: &[Part], id: u64) {
    let member = Credentials::default();
    let aborts = parts
        .iter()
        .map(|part| run_phase(ctx, &member, part.group, Op::AbortCrossShard(AbortCrossShard { id })));
    for result in join_all(aborts).await {
        if let Err(status) = result {
            tracing::debug!("aborting a delete across shards: {}", status.message());
        }
    }
}

/// Proposes one phase of a write across shards to `group`'s log: here when this member holds a
/// replica, else through a member that does (`Shards.Propose`).
pub async fn run_phase(
    ctx: &MemberContext,
    creds: &Credentials,
    group: u64,
    op: Op,
) -> Result<CrossShardOutcome, Status> {
    let router = ctx.router.current();
    match router.route(group) {
        Some(Route::Local(shard)) => {
            let sender = match &op {
                Op::PrepareCrossShard(_) => ctx.auth.sender(creds, &shard.group).await?,
                _ => Sender::Member,
            };
            let data = RaftCommand {
                op: Some(sender.envelope(op)),
            }
            .encode_to_vec();
            match ctx.propose_once(&shard.group, data).await? {
                Ok(WriteResult::CrossShard(outcome)) => Ok(outcome),
                Ok(_) => Err(errors::unexpected_apply_result()),
                Err(refused) => Err(errors::from_kv(refused)),
            }
        }
        Some(Route::Remote(remote)) => {
            let answer = propose_elsewhere(ctx, creds, remote, op).await?;
            match answer.result {
                Some(shard_propose_response::Result::CrossShard(outcome)) => Ok(outcome),
                _ => Err(errors::unexpected_apply_result()),
            }
        }
        None => Err(errors::wrong_shard()),
    }
}

/// Proposes `op` to `remote`'s group through a member holding it (`Shards.Propose`).
pub async fn propose_elsewhere(
    ctx: &MemberContext,
    creds: &Credentials,
    remote: &RemoteShard,
    op: Op,
) -> Result<ShardProposeResponse, Status> {
    let request = Request::new(ShardProposeRequest {
        shard: remote.group_id,
        command: Some(RaftCommand { op: Some(op) }),
    });
    let call = |mut client: ShardsClient<_>, r| async move { client.propose(r).await };
    let answer = crate::shards::forward_to_shard(ctx, remote, request, creds, ctx.request_timeout, call).await?;
    Ok(answer.into_inner())
}

/// Whether a failed phase changed nothing and may be tried again.
fn retryable(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable || errors::is_no_leader(status)
}

fn is_aborted(status: &Status) -> bool {
    status.message() == KvError::CrossShardAborted.to_string()
}

/// A fresh id for a write across shards.
fn write_id() -> Result<u64, Status> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| Status::internal(format!("no randomness for a write's id: {e}")))?;
    Ok(u64::from_le_bytes(bytes).max(1))
}
