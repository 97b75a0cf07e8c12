//! A Txn that only reads, over keys of several shards, answered at one revision.
//!
//! As a cross-shard Range ([`crate::cross_shard_read`]): one revision `R` from the oracle, above
//! every write that completed before the txn began; every compare reads its keys at `R`
//! (whatever shards they lie in) and the branch it picks reads at `R` too (or at the revision a
//! range asks for), so the answer is the one etcd would give at `R`. A txn that writes across
//! shards is refused until cross-shard transactions exist.

use concord_proto::etcdserverpb::request_op::Request as TxnOp;
use concord_proto::etcdserverpb::response_op::Response as TxnAnswer;
use concord_proto::etcdserverpb::{RangeRequest, ResponseHeader, ResponseOp, TxnRequest, TxnResponse};
use concord_storage::auth::perms;
use concord_storage::{compare_holds_over, KvError};
use futures::future::BoxFuture;
use futures::FutureExt;
use tonic::{Request, Response, Status};

use crate::auth::Credentials;
use crate::context::MemberContext;
use crate::cross_shard_read::range_at;
use crate::errors;

/// Serves `request`, a txn that only reads and whose keys span shards.
pub async fn read(ctx: &MemberContext, request: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
    let creds = Credentials::of(&request);
    let req = request.into_inner();
    let first = ctx.router.default_group();
    let id = ctx.auth.authorize_read(&creds, first, &perms::txn_needs(&req)).await?;
    let at = ctx
        .revisions
        .allocate(1)
        .await
        .map_err(|reason| errors::no_revisions(&reason))?;
    let mut resp = evaluate(ctx, &req, at).await?;
    ctx.auth.check_unchanged(id.as_ref())?;
    resp.header = Some(ctx.header(at));
    Ok(Response::new(resp))
}

/// Evaluates `txn` at `at`: its compares, then the ranges (and nested txns) of the branch they
/// pick. Range answers carry etcd's header with the revision read; a nested txn's an empty one.
fn evaluate<'a>(ctx: &'a MemberContext, txn: &'a TxnRequest, at: i64) -> BoxFuture<'a, Result<TxnResponse, Status>> {
    async move {
        let mut succeeded = true;
        for compare in &txn.compare {
            let keys = RangeRequest {
                key: compare.key.clone(),
                range_end: compare.range_end.clone(),
                ..Default::default()
            };
            let found = range_at(ctx, &keys, at).await?;
            if !compare_holds_over(compare, &found.kvs) {
                succeeded = false;
                break;
            }
        }
        let branch = if succeeded { &txn.success } else { &txn.failure };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            let response = match &op.request {
                Some(TxnOp::RequestRange(range)) => {
                    if range.revision > at {
                        return Err(errors::from_kv(KvError::FutureRevision));
                    }
                    let read_at = if range.revision > 0 { range.revision } else { at };
                    let mut answer = range_at(ctx, range, read_at).await?;
                    answer.header = Some(ResponseHeader {
                        revision: read_at,
                        ..Default::default()
                    });
                    Some(TxnAnswer::ResponseRange(answer))
                }
                Some(TxnOp::RequestTxn(nested)) => Some(TxnAnswer::ResponseTxn(evaluate(ctx, nested, at).await?)),
                Some(TxnOp::RequestPut(_) | TxnOp::RequestDeleteRange(_)) => {
                    return Err(errors::internal("a txn that writes reached the read-only path"));
                }
                None => None,
            };
            responses.push(ResponseOp { response });
        }
        Ok(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded,
            responses,
        })
    }
    .boxed()
}
