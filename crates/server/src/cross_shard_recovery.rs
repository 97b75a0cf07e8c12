//! Settles the held parts of writes across shards whose coordinator went quiet (it crashed, or
//! lost its connection between the two phases: see `cross_shard_delete.rs`).
//!
//! On every shard this member leads, a part held for longer than [`QUIET_FOR`] is settled with
//! the write's primary shard: asked to abort the write, the primary either answers that it
//! committed (then this part commits at the write's revision) or records it aborted for good
//! (then this part aborts, and a late commit from the coordinator is refused). Either way every
//! part ends as the primary did, and the shard takes writes again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::{AbortCrossShard, CommitCrossShard, PrepareCrossShard};
use tokio::sync::watch;

use crate::auth::Credentials;
use crate::context::MemberContext;
use crate::cross_shard_write::run_phase;
use crate::router::Route;

/// How long a part may stay held before its shard's leader settles it. A coordinator takes a
/// few Raft rounds between the phases; writes to the held shard wait meanwhile.
const QUIET_FOR: Duration = Duration::from_secs(2);

/// How often the shards led here are looked at.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Runs until `stop` turns true.
pub async fn run(ctx: Arc<MemberContext>, mut stop: watch::Receiver<bool>) {
    // When each held part (by group and write id) was first seen here.
    let mut seen: HashMap<(u64, u64), Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.changed() => return,
        }
        let mut held_now = HashMap::new();
        for (group, held) in held_parts_led_here(&ctx) {
            let key = (group, held.id);
            let since = seen.get(&key).copied().unwrap_or_else(Instant::now);
            held_now.insert(key, since);
            if since.elapsed() >= QUIET_FOR {
                settle(&ctx, group, &held).await;
            }
        }
        seen = held_now;
    }
}

/// The held part of each shard this member leads, with its group.
fn held_parts_led_here(ctx: &MemberContext) -> Vec<(u64, PrepareCrossShard)> {
    let me = ctx.membership.local_id();
    let router = ctx.router.current();
    router
        .routes()
        .filter_map(Route::local)
        .filter(|shard| shard.group.leader_id() == me)
        .filter_map(|shard| match shard.store.held_cross_shard() {
            Ok(held) => held.map(|held| (shard.group.group_id(), held)),
            Err(e) => {
                tracing::warn!(
                    group = shard.group.group_id(),
                    "reading a held write across shards: {e}"
                );
                None
            }
        })
        .collect()
}

/// Ends `group`'s held part the way the write's primary ended it.
async fn settle(ctx: &MemberContext, group: u64, held: &PrepareCrossShard) {
    let member = Credentials::default();
    let id = held.id;
    let decision = match run_phase(
        ctx,
        &member,
        held.primary_group,
        Op::AbortCrossShard(AbortCrossShard { id }),
    )
    .await
    {
        Ok(decision) => decision,
        Err(status) => {
            tracing::warn!(
                group,
                id,
                "asking the primary shard {} about a held write: {}",
                held.primary_group,
                status.message()
            );
            return;
        }
    };
    let end = match decision.committed {
        true => Op::CommitCrossShard(CommitCrossShard {
            id,
            revision: decision.revision,
        }),
        false => Op::AbortCrossShard(AbortCrossShard { id }),
    };
    match run_phase(ctx, &member, group, end).await {
        Ok(_) => tracing::info!(
            group,
            id,
            committed = decision.committed,
            "settled a write across shards whose coordinator went quiet"
        ),
        Err(status) => tracing::warn!(group, id, "settling a held write across shards: {}", status.message()),
    }
}
