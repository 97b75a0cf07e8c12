//! What the Lock and Election services share: etcd's `clientv3/concurrency`
//! recipes (sessions, waiter keys, waiting for earlier waiters to go), run
//! inside the member instead of through a client.
//!
//! # Key layout (etcd's, so etcdctl's client-side `lock`/`elect` interoperate)
//!
//! A lock or election named `N` keeps one key per participant under the
//! prefix `N/`: `N/<lease id in lowercase hex>`, attached to that lease. The
//! participant whose key has the smallest create revision holds the lock (leads
//! the election); every other one waits until each key under the prefix
//! created before its own is deleted (unlocked, resigned, or removed with its
//! lease).
//!
//! # Waiting without leaks
//!
//! A gRPC handler's future is dropped when its client goes away. The services
//! therefore run each blocking call on a task of its own ([`detach`]) that
//! watches its answer channel: when nobody is waiting for the answer any more
//! the task stops waiting, removes the key the call queued (as etcd's client
//! does when its context is cancelled), and ends.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use concord_proto::concordpb::raft_command::Op;
use concord_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use concord_proto::etcdserverpb::request_op::Request as TxnOp;
use concord_proto::etcdserverpb::response_op::Response as TxnResult;
use concord_proto::etcdserverpb::watch_create_request::FilterType;
use concord_proto::etcdserverpb::{
    range_request, Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse, RequestOp,
    TxnRequest, TxnResponse,
};
use concord_proto::mvccpb::event::EventType;
use concord_proto::mvccpb::KeyValue;
use concord_storage::{KvError, WriteResult};
use tokio::sync::oneshot;
use tonic::Status;

use crate::auth::check::as_plain_error;
use crate::auth::{Credentials, Sender};
use crate::context::MemberContext;
use crate::errors;
use crate::router::{Route, Shard};
use crate::watch::wait::next_events;
use crate::watch::watcher::Watcher;
use crate::watch::WatchHub;
use concord_storage::auth::perms::{Access, Need};

/// etcd's `concurrency` default session TTL, in seconds: what a Lock or
/// Campaign without a lease gets (etcd's server grants such a lease and never
/// keeps it alive).
pub const SESSION_TTL: i64 = 60;

/// How many fresh ids a session lease grant tries before giving up.
const GRANT_ATTEMPTS: usize = 8;

/// The prefix under which lock or election `name` keeps its keys: `name/`.
pub fn prefix(name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(name.len() + 1);
    p.extend_from_slice(name);
    p.push(b'/');
    p
}

/// etcd's `GetPrefixRangeEnd`: the end of the range of keys starting with
/// `prefix` (`[0]`, "to the end", when no such key bound exists).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// Go's `fmt.Sprintf("%x", id)` for an `int64`: lowercase hex, with a minus
/// sign (not two's complement) for negative ids.
pub fn go_hex(id: i64) -> String {
    if id < 0 {
        format!("-{:x}", id.unsigned_abs())
    } else {
        format!("{id:x}")
    }
}

/// The key a participant with `lease` keeps under `prefix`: etcd's
/// `fmt.Sprintf("%s%x", pfx, lease)`.
pub fn participant_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(go_hex(lease).as_bytes());
    key
}

/// etcd's `OpGet(prefix, WithFirstCreate()...)`: the key under `prefix`
/// created first.
pub fn first_created(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: range_request::SortOrder::Ascend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

/// etcd's `Get(prefix, WithLastCreate(), WithMaxCreateRev(max))`: the key
/// under `prefix` created last at or before revision `max_create_revision`.
pub fn last_created_before(prefix: &[u8], max_create_revision: i64) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: range_request::SortOrder::Descend as i32,
        sort_target: range_request::SortTarget::Create as i32,
        max_create_revision,
        ..Default::default()
    }
}

/// A single-key range.
pub fn get(key: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }
}

/// A txn operation that reads.
pub fn range_op(req: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(TxnOp::RequestRange(req)),
    }
}

/// A txn operation that puts `value` at `key` attached to `lease`.
pub fn put_op(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(TxnOp::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

/// A txn operation that deletes `key`.
pub fn delete_op(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(TxnOp::RequestDeleteRange(DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// The compare `create_revision(key) == revision` (0: the key does not exist).
pub fn created_at(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
        ..Default::default()
    }
}

/// The range result at `index` of a txn's responses.
pub fn range_result(resp: &TxnResponse, index: usize) -> Option<&RangeResponse> {
    match resp.responses.get(index)?.response.as_ref()? {
        TxnResult::ResponseRange(r) => Some(r),
        _ => None,
    }
}

/// The first key-value a txn's range at `index` returned, if any.
pub fn first_kv(resp: &TxnResponse, index: usize) -> Option<&KeyValue> {
    range_result(resp, index).and_then(|r| r.kvs.first())
}

fn unexpected(result: &WriteResult) -> Status {
    errors::unexpected_apply_result_at(result.revision())
}

/// Replicates a txn on behalf of `sender` and answers with etcd's header filled in.
pub async fn txn(ctx: &MemberContext, sender: &Sender, req: TxnRequest) -> Result<TxnResponse, Status> {
    let router = ctx.router.current();
    let route = router
        .route_for_txn(&req)
        .map_err(|spans| errors::write_spans_shards(&spans.groups))?;
    let group = &held(route)?.group;
    let result = ctx
        .propose_write(group, sender, Op::Txn(req))
        .await
        .map_err(as_plain_error)?;
    let revision = result.revision();
    match result {
        WriteResult::Txn(mut resp) => {
            resp.header = Some(ctx.header(revision));
            Ok(resp)
        }
        other => Err(unexpected(&other)),
    }
}

/// Deletes one key on behalf of `sender`; answers with the revision after the delete.
pub async fn delete(ctx: &MemberContext, sender: &Sender, key: &[u8]) -> Result<i64, Status> {
    let req = DeleteRangeRequest {
        key: key.to_vec(),
        ..Default::default()
    };
    let router = ctx.router.current();
    let group = &held(router.route_for_key(key))?.group;
    let result = ctx
        .propose_write(group, sender, Op::DeleteRange(req))
        .await
        .map_err(as_plain_error)?;
    match result {
        WriteResult::DeleteRange(_) => Ok(result.revision()),
        other => Err(unexpected(&other)),
    }
}

/// The sender of a Lock or Election step: the caller, identified afresh from its credentials
/// (as etcd's in-process client sends the caller's token with every call).
pub async fn sender(ctx: &MemberContext, creds: &Credentials) -> Result<Sender, Status> {
    ctx.auth
        .sender(creds, ctx.router.default_group())
        .await
        .map_err(as_plain_error)
}

/// The check a Lock or Election call passes before anything else (with auth enabled): after a
/// ReadIndex barrier, the caller must be able to read everything under `prefix`, and to write
/// there too when `write` (where its key will go). Refusals are etcd's, as plain errors.
pub async fn authorize_prefix(
    ctx: &MemberContext,
    creds: &Credentials,
    prefix: &[u8],
    write: bool,
) -> Result<(), Status> {
    if !ctx.auth.enabled() {
        return Ok(());
    }
    let group = ctx.router.default_group();
    group.read_barrier().await.map_err(errors::from_raft)?;
    let end = prefix_end(prefix);
    let mut needs = vec![Need::new(Access::Read, prefix, &end)];
    if write {
        needs.push(Need::new(Access::Write, prefix, &end));
    }
    ctx.auth
        .authorize_read(creds, group, &needs)
        .await
        .map_err(as_plain_error)?;
    Ok(())
}

/// A linearizable range (ReadIndex barrier, then the local store), with the
/// revision it was served at.
pub async fn linearizable_range(ctx: &MemberContext, req: &RangeRequest) -> Result<(RangeResponse, i64), Status> {
    let router = ctx.router.current();
    let route = router
        .route_for_range(&req.key, &req.range_end)
        .map_err(|spans| errors::read_spans_shards(&spans.groups))?;
    let shard = held(route)?;
    shard.group.read_barrier().await.map_err(errors::from_raft)?;
    shard.store.range(req).map_err(errors::from_kv)
}

/// The watch hub of the shard holding every key under `prefix`, when this member holds it:
/// Lock and Election wait on their keys' history there. Otherwise `fallback` (the calls that
/// then reach the keys are refused, see [`held`]).
pub fn hub_for(ctx: &MemberContext, prefix: &[u8], fallback: &Arc<WatchHub>) -> Arc<WatchHub> {
    let router = ctx.router.current();
    match router.route_for_range(prefix, &prefix_end(prefix)) {
        Ok(Route::Local(shard)) => shard.hub.clone(),
        _ => fallback.clone(),
    }
}

/// The shard of a Lock or Election key, which must be one this member holds: those calls keep
/// their keys in the first shard, with the leases, when the keyspace is split.
fn held(route: Route<'_>) -> Result<&Shard, Status> {
    route
        .local()
        .ok_or_else(|| errors::unsharded_only("Lock and Election on keys of a shard this member does not hold"))
}

/// The next lease id this member proposes for a session, etcd-style: the
/// member id's low bits on top, then a millisecond clock and a counter, kept
/// positive. A clash with an existing lease is answered "lease already
/// exists" and the caller tries the next id.
fn next_lease_id(member_id: u64) -> i64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let suffix = loop {
        let current = NEXT.load(Ordering::Relaxed);
        let seed = if current == 0 {
            let millis = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64);
            (millis & ((1 << 40) - 1)) << 8
        } else {
            current
        };
        let next = seed.wrapping_add(1);
        if NEXT
            .compare_exchange(current, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            break next;
        }
    };
    let id = (((member_id & 0xffff) << 48) | (suffix & ((1 << 48) - 1))) & (i64::MAX as u64);
    if id == 0 {
        1
    } else {
        id as i64
    }
}

/// The lease a Lock, Campaign or Proclaim runs under, as etcd's server
/// session does: the request's lease, or, for lease 0, a new lease with
/// [`SESSION_TTL`] that nobody keeps alive (so what it holds goes away after
/// a minute unless released earlier).
pub async fn session_lease(ctx: &MemberContext, sender: &Sender, lease: i64) -> Result<i64, Status> {
    if lease != 0 {
        return Ok(lease);
    }
    let group = ctx.router.default_group();
    let mut last_err = None;
    for _ in 0..GRANT_ATTEMPTS {
        let req = LeaseGrantRequest {
            ttl: SESSION_TTL,
            id: next_lease_id(ctx.membership.local_id()),
        };
        match ctx
            .propose_write(group, sender, Op::LeaseGrant(req))
            .await
            .map_err(as_plain_error)
        {
            Ok(WriteResult::LeaseGrant(resp)) => return Ok(resp.id),
            Ok(other) => return Err(unexpected(&other)),
            Err(status) if status.message() == KvError::LeaseExists.to_string() => {
                last_err = Some(status);
            }
            Err(status) => return Err(status),
        }
    }
    Err(last_err.unwrap_or_else(errors::cannot_choose_lease_id))
}

/// How waiting for the earlier participants ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    /// Every key under the prefix created before the participant's is gone.
    Clear,
    /// The participant's own key went first (its lease ran out, or someone
    /// deleted it): it will never hold the lock or lead.
    OwnKeyGone,
}

/// etcd's `waitDeletes`: waits until every key under `prefix` created before
/// revision `my_rev` has been deleted, by repeatedly finding the newest such
/// key and waiting for its deletion. Unlike etcd's client, it also stops as
/// soon as `my_key` itself is deleted (etcd's own TODO, "early termination if
/// the session key is deleted").
///
/// Reads are served from the local store (the hub's) without a barrier: this member has
/// applied `my_rev` (the caller learned it here), so it knows every earlier
/// key, and a stale view only shows keys whose deletion is still to come
/// through the watch hub.
pub async fn wait_deletes(
    hub: &std::sync::Arc<WatchHub>,
    prefix: &[u8],
    my_key: &[u8],
    my_rev: i64,
) -> Result<Waited, Status> {
    // A max create revision of 0 means "no bound": nothing can precede revision 1.
    if my_rev <= 1 {
        return Ok(Waited::Clear);
    }
    let end = prefix_end(prefix);
    loop {
        // Both reads in one snapshot.
        let read = TxnRequest {
            success: vec![range_op(get(my_key)), range_op(last_created_before(prefix, my_rev - 1))],
            ..Default::default()
        };
        let (resp, revision) = hub.store().txn_read(&read).map_err(errors::from_kv)?;
        if first_kv(&resp, 0).is_none() {
            return Ok(Waited::OwnKeyGone);
        }
        let Some(last) = first_kv(&resp, 1) else {
            return Ok(Waited::Clear);
        };
        let last_key = last.key.clone();
        let mut watcher = Watcher::new(
            prefix.to_vec(),
            end.clone(),
            &[FilterType::Noput as i32],
            false,
            revision + 1,
        );
        loop {
            match next_events(hub, &mut watcher).await {
                Ok(events) => {
                    let relevant = events.iter().any(|e| {
                        e.r#type == EventType::Delete as i32
                            && e.kv.as_ref().is_some_and(|kv| kv.key == last_key || kv.key == my_key)
                    });
                    if relevant {
                        break;
                    }
                }
                // History the watcher needed was compacted away: read again.
                Err(KvError::Compacted) => break,
                Err(e) => return Err(errors::from_kv(e)),
            }
        }
    }
}

/// Runs `work` on a task of its own and answers with its result. `work` gets
/// the sending half of the answer channel: it must send its result there, and
/// may watch it (`Sender::closed`, `Sender::is_closed`) to learn that the
/// caller is gone, which happens when the gRPC handler awaiting this is
/// dropped (the client cancelled or disconnected).
pub async fn detach<T, F, Fut>(work: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce(oneshot::Sender<Result<T, Status>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    tokio::spawn(work(tx));
    rx.await.unwrap_or_else(|_| Err(errors::task_ended_without_answer()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use concord_proto::concordpb::RaftCommand;
    use concord_storage::{ApplyEntry, MvccStore};

    /// A store with a running watch hub, written to directly (no Raft).
    struct Fixture {
        hub: Arc<WatchHub>,
        index: u64,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(MvccStore::open(&dir.path().join("kv.redb")).unwrap());
            let hub = WatchHub::new(store);
            tokio::spawn(hub.clone().run());
            Fixture {
                hub,
                index: 0,
                _dir: dir,
            }
        }

        fn apply(&mut self, op: Op) -> i64 {
            self.index += 1;
            let command = RaftCommand { op: Some(op) };
            let entry = ApplyEntry {
                index: self.index,
                command: Some(&command),
                stamp: None,
            };
            let results = self.hub.store().apply(&[entry]).unwrap();
            let revision = results[0].1.as_ref().expect("write applies").revision();
            self.hub.notify_applied(self.hub.store().current_revision());
            revision
        }

        fn put(&mut self, key: &[u8]) -> i64 {
            self.apply(Op::Put(PutRequest {
                key: key.to_vec(),
                ..Default::default()
            }))
        }

        fn delete(&mut self, key: &[u8]) -> i64 {
            self.apply(Op::DeleteRange(DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            }))
        }

        fn wait(&self, my_key: &[u8], my_rev: i64) -> tokio::task::JoinHandle<Result<Waited, Status>> {
            let hub = self.hub.clone();
            let my_key = my_key.to_vec();
            tokio::spawn(async move { wait_deletes(&hub, b"l/", &my_key, my_rev).await })
        }
    }

    /// Gives a waiter that should stay blocked a chance to (wrongly) finish.
    async fn still_waiting(task: &tokio::task::JoinHandle<Result<Waited, Status>>) -> bool {
        tokio::time::sleep(Duration::from_millis(200)).await;
        !task.is_finished()
    }

    async fn outcome(task: tokio::task::JoinHandle<Result<Waited, Status>>) -> Waited {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the wait ends")
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn waits_for_every_earlier_key_in_any_order() {
        let mut f = Fixture::new();
        f.put(b"l/a");
        f.put(b"l/b");
        let mine = f.put(b"l/c");
        f.put(b"l/d"); // later: never waited for
        f.put(b"l0"); // outside the prefix
        let task = f.wait(b"l/c", mine);
        assert!(still_waiting(&task).await);
        f.delete(b"l/a");
        assert!(still_waiting(&task).await, "l/b is still there");
        f.delete(b"l0");
        f.delete(b"l/d");
        assert!(still_waiting(&task).await);
        f.delete(b"l/b");
        assert_eq!(outcome(task).await, Waited::Clear);
    }

    #[tokio::test]
    async fn nothing_earlier_means_no_wait() {
        let mut f = Fixture::new();
        let mine = f.put(b"l/a");
        f.put(b"l/b");
        assert_eq!(outcome(f.wait(b"l/a", mine)).await, Waited::Clear);
        assert_eq!(outcome(f.wait(b"l/a", 1)).await, Waited::Clear);
    }

    #[tokio::test]
    async fn losing_the_own_key_ends_the_wait() {
        let mut f = Fixture::new();
        f.put(b"l/a");
        let mine = f.put(b"l/b");
        let task = f.wait(b"l/b", mine);
        assert!(still_waiting(&task).await);
        f.delete(b"l/b");
        assert_eq!(outcome(task).await, Waited::OwnKeyGone);
        // Already gone before the wait starts.
        assert_eq!(outcome(f.wait(b"l/b", mine)).await, Waited::OwnKeyGone);
    }

    #[tokio::test]
    async fn a_key_recreated_after_mine_does_not_block() {
        let mut f = Fixture::new();
        f.put(b"l/a");
        let mine = f.put(b"l/b");
        let task = f.wait(b"l/b", mine);
        f.delete(b"l/a");
        f.put(b"l/a"); // queued again, now behind me
        assert_eq!(outcome(task).await, Waited::Clear);
    }

    #[test]
    fn keys_follow_etcds_layout() {
        assert_eq!(prefix(b"mylock"), b"mylock/");
        assert_eq!(
            participant_key(b"mylock/", 0x694d77aa9e1f3c05),
            b"mylock/694d77aa9e1f3c05"
        );
        assert_eq!(participant_key(b"e/", 255), b"e/ff");
        assert_eq!(go_hex(0), "0");
        assert_eq!(go_hex(-1), "-1");
        assert_eq!(go_hex(-31), "-1f");
        assert_eq!(go_hex(i64::MIN), "-8000000000000000");
    }

    #[test]
    fn prefix_ends_match_etcd() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn session_lease_ids_are_positive_and_distinct() {
        let a = next_lease_id(0xdead_beef_cafe_f00d);
        let b = next_lease_id(0xdead_beef_cafe_f00d);
        assert!(a > 0 && b > 0);
        assert_ne!(a, b);
        assert_eq!((a as u64) >> 48, 0xf00d & 0x7fff);
    }

    #[test]
    fn reads_sort_by_create_revision() {
        let first = first_created(b"l/");
        assert_eq!(first.range_end, b"l0");
        assert_eq!(first.limit, 1);
        assert_eq!(first.sort_target, range_request::SortTarget::Create as i32);
        assert_eq!(first.sort_order, range_request::SortOrder::Ascend as i32);
        let last = last_created_before(b"l/", 7);
        assert_eq!(last.sort_order, range_request::SortOrder::Descend as i32);
        assert_eq!(last.max_create_revision, 7);
    }
}
