//! etcd's Compact in a keyspace split into shards: one compaction revision for them all.
//!
//! The revision is checked against the oracle (a revision not handed out yet is etcd's "future
//! revision"), then each shard's group compacts its history at it, through its log as any
//! compaction: the shards this member holds here, the others through a member holding them
//! (`Shards.Compact`). A shard whose own revision is below the asked one (its last write came
//! earlier) has nothing between, and its revision rises to the asked one as it compacts (the
//! command's stamp vouches for it: `Writer::compact`), so every shard refuses reads and watches
//! below the same revision, and reports it. A shard already
//! compacted that far counts as done, so a compaction that failed partway is finished by asking
//! again. Group 1 goes first: its compaction revision is the one that refuses an old revision
//! with etcd's "required revision has been compacted".

use concord_proto::concordpb::raft_command::Op;
use concord_proto::concordpb::shards_client::ShardsClient;
use concord_proto::concordpb::ShardCompactRequest;
use concord_proto::etcdserverpb::{CompactionRequest, CompactionResponse};
use concord_storage::KvError;
use tonic::{Request, Status};

use crate::auth::{Credentials, Sender};
use crate::context::MemberContext;
use crate::errors;
use crate::router::{Route, Shard};

/// Compacts every shard at `revision` on behalf of `creds` (`None`: the member itself, for auto
/// compaction).
pub async fn compact_all(
    ctx: &MemberContext,
    creds: Option<&Credentials>,
    revision: i64,
) -> Result<CompactionResponse, Status> {
    let now = ctx
        .revisions
        .allocate(1)
        .await
        .map_err(|reason| errors::no_revisions(&reason))?;
    if revision > now {
        return Err(errors::from_kv(KvError::FutureRevision));
    }
    let already = ctx.store.compact_revision();
    let router = ctx.router.current();
    for route in router.routes() {
        match route {
            Route::Local(shard) => compact_shard(ctx, creds, shard, revision).await?,
            Route::Remote(remote) => {
                let request = Request::new(ShardCompactRequest {
                    shard: remote.group_id,
                    revision,
                });
                let member = Credentials::default();
                let creds = creds.unwrap_or(&member);
                let compact = |mut client: ShardsClient<_>, r| async move { client.compact(r).await };
                crate::shards::forward_to_shard(ctx, remote, request, creds, ctx.request_timeout, compact).await?;
            }
        }
    }
    if revision <= already {
        return Err(errors::from_kv(KvError::Compacted));
    }
    Ok(CompactionResponse {
        header: Some(ctx.header(now)),
    })
}

/// Compacts `shard`, held here, at `revision`; done already when it was compacted that far.
pub async fn compact_shard(
    ctx: &MemberContext,
    creds: Option<&Credentials>,
    shard: &Shard,
    revision: i64,
) -> Result<(), Status> {
    if revision <= shard.store.compact_revision() {
        return Ok(());
    }
    let sender = match creds {
        Some(creds) => ctx.auth.sender(creds, &shard.group).await?,
        None => Sender::Member,
    };
    let op = Op::Compaction(CompactionRequest {
        revision,
        physical: false,
    });
    match ctx.propose_write(&shard.group, &sender, op).await {
        Ok(_) => Ok(()),
        Err(status) if status.message() == KvError::Compacted.to_string() => Ok(()),
        Err(status) => Err(status),
    }
}
