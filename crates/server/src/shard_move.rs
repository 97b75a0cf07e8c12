//! `Shards.Move`: changes which members hold a shard's replicas, online, the way the design note
//! and TiKV's placement driver do it. The new members first learn through group 1 that they
//! hold the shard and start its group empty; they join as learners, catch up from the leader's
//! snapshot and log, and then one joint configuration change (raft-rs `ConfChangeV2`) makes them
//! voters and removes the old replicas, so a quorum of the old and of the new configuration agree
//! on every step. Group 1 then tells every member the shard's new replicas: the removed ones drop
//! their copy, and the others route its requests to the new ones.

use std::time::Duration;

use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::RecordShard;
use raft::eraftpb::ConfChangeType;
use tonic::Status;

use crate::context::MemberContext;
use crate::errors;
use crate::router::Shard;

/// How long the new replicas have to catch up before the move gives up (they stay learners).
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a member forwarding a move waits for the member making it.
pub const MOVE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often their progress is looked at meanwhile.
const CATCH_UP_POLL: Duration = Duration::from_millis(100);

/// Moves `shard`'s replicas: `add` join it, `remove` leave it. Answers once group 1 has recorded
/// the new replicas.
pub async fn move_replicas(ctx: &MemberContext, shard: &Shard, add: &[u64], remove: &[u64]) -> Result<(), Status> {
    let status = shard.group.status();
    let voters = status.voters.clone();
    check(ctx, &voters, add, remove)?;
    let mut with_new: Vec<u64> = voters.iter().chain(add).copied().collect();
    with_new.sort_unstable();
    with_new.dedup();
    record(ctx, shard, with_new.clone(), add.to_vec()).await?;

    if !add.is_empty() {
        let learners = add.iter().map(|id| (ConfChangeType::AddLearnerNode, *id));
        change(shard, learners.collect()).await?;
        let caught_up_to = shard.group.status().commit_index;
        for member in add {
            wait_caught_up(ctx, shard, *member, caught_up_to).await?;
        }
    }
    let leader = shard.group.leader_id();
    if remove.contains(&leader) {
        let to = with_new
            .iter()
            .copied()
            .find(|m| !remove.contains(m) && !add.contains(m))
            .or_else(|| add.first().copied())
            .ok_or_else(errors::shard_move_empty)?;
        hand_leadership(shard, to).await?;
    }
    let promote = add.iter().map(|id| (ConfChangeType::AddNode, *id));
    let demote = remove.iter().map(|id| (ConfChangeType::RemoveNode, *id));
    change(shard, promote.chain(demote).collect()).await?;

    let remaining: Vec<u64> = with_new.into_iter().filter(|m| !remove.contains(m)).collect();
    record(ctx, shard, remaining, Vec::new()).await?;
    tracing::info!(
        group = shard.group.group_id(),
        ?add,
        ?remove,
        "moved a shard's replicas"
    );
    Ok(())
}

/// Places a shard a split just made (on its parent's members): on the [`REPLICAS`] members
/// holding the fewest replicas of other shards, keeping those it is on where that ties, so that
/// splits spread shards over the cluster. Waits for the shard's first leader first.
///
/// [`REPLICAS`]: crate::shard_map::REPLICAS
pub async fn place_new_shard(ctx: &MemberContext, shard: &Shard) -> Result<(), Status> {
    let group = shard.group.group_id();
    let placements = ctx.shards.placements();
    let Some(current) = placements.iter().find(|p| p.group == group).map(|p| p.replicas.clone()) else {
        return Ok(());
    };
    let mut members = ctx.membership.voter_ids();
    let held = |member: u64| {
        placements
            .iter()
            .filter(|p| p.group != group && p.replicas.contains(&member))
            .count()
    };
    members.sort_by_key(|m| (held(*m), !current.contains(m), *m));
    members.truncate(crate::shard_map::REPLICAS);
    let add: Vec<u64> = members.iter().filter(|m| !current.contains(m)).copied().collect();
    let remove: Vec<u64> = current.iter().filter(|m| !members.contains(m)).copied().collect();
    if add.is_empty() && remove.is_empty() {
        return Ok(());
    }
    let mut leader = shard.group.watch_leader();
    let elected = tokio::time::timeout(Duration::from_secs(10), leader.wait_for(|l| *l != 0))
        .await
        .is_ok_and(|r| r.is_ok());
    if !elected {
        return Err(errors::from_raft(concord_raft::RaftError::NoLeader));
    }
    move_replicas(ctx, shard, &add, &remove).await
}

/// Refuses a move that names no change, members that are not in the cluster, members added that
/// already hold the shard or removed that do not, or that would leave it no replica.
fn check(ctx: &MemberContext, voters: &[u64], add: &[u64], remove: &[u64]) -> Result<(), Status> {
    if add.is_empty() && remove.is_empty() {
        return Err(errors::shard_move_nothing());
    }
    for id in add {
        if ctx.membership.member(*id).is_none() {
            return Err(errors::member_not_found_for_move(*id));
        }
        if voters.contains(id) || remove.contains(id) {
            return Err(errors::shard_move_already_holds(*id));
        }
    }
    if let Some(id) = remove.iter().find(|id| !voters.contains(id)) {
        return Err(errors::shard_move_not_holding(*id));
    }
    let left = voters.iter().filter(|v| !remove.contains(v)).count() + add.len();
    if left == 0 {
        return Err(errors::shard_move_empty());
    }
    Ok(())
}

/// Has group 1 tell every member that `shard` is held by `replicas`, `joining` starting theirs.
async fn record(ctx: &MemberContext, shard: &Shard, replicas: Vec<u64>, joining: Vec<u64>) -> Result<(), Status> {
    let record = Op::RecordShard(RecordShard {
        start: shard.start.clone(),
        group: shard.group.group_id(),
        replicas,
        joining,
    });
    ctx.propose_membership(ctx.router.default_group(), record).await
}

/// Replicates one configuration change of `shard`'s group: the changes together, in joint
/// consensus when there are several.
async fn change(shard: &Shard, changes: Vec<(ConfChangeType, u64)>) -> Result<(), Status> {
    let cc = crate::cluster::conf_change(changes, Vec::new());
    shard.group.propose_conf_change(cc).await.map_err(errors::from_raft)?;
    Ok(())
}

/// Waits until `member`'s replica of `shard` has applied up to `index`, as it reports itself.
async fn wait_caught_up(ctx: &MemberContext, shard: &Shard, member: u64, index: u64) -> Result<(), Status> {
    let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
    let group = shard.group.group_id();
    loop {
        if let Some(shards) = crate::shards::list_of(ctx, member).await {
            if shards.iter().any(|s| s.id == group && s.applied_index >= index) {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(errors::shard_move_catch_up_timeout(member));
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
    }
}

/// Hands `shard`'s leadership to `to` before its leader is removed.
async fn hand_leadership(shard: &Shard, to: u64) -> Result<(), Status> {
    shard.group.transfer_leader(to).map_err(errors::from_raft)?;
    let mut leader = shard.group.watch_leader();
    let moved = tokio::time::timeout(Duration::from_secs(5), leader.wait_for(|l| *l == to))
        .await
        .is_ok_and(|r| r.is_ok());
    match moved {
        true => Ok(()),
        false => Err(errors::timeout_leader_transfer()),
    }
}
