//! Stamping a group's proposals with global revisions (multi-shard mode).
//!
//! When many groups write at one revision counter, each write must take a revision that is
//! above every write that finished before it began, whatever its group, and a group's log order
//! must be its revision order. So the group's leader, and only it, takes revisions from the
//! revision oracle for each batch of proposals, in the order they are proposed, and hands the
//! batch to the driver with the term it led in; the driver proposes it only if it still leads in
//! that term (see `Driver::propose_stamped`). Every entry an older leader stamped was stamped
//! before the new leader took any revision, so the log stays in revision order across
//! failovers; the store refuses, on every replica alike, a stamp that is not above its revision.
//!
//! One batch is out at a time: proposals that arrive while the oracle answers wait for the next
//! batch, so a loaded group asks the oracle once for many writes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use crossbeam_channel::Sender;
use tokio::sync::{mpsc, oneshot};

use crate::error::RaftError;
use crate::node::{GroupMsg, SharedStatus};
use crate::proposal_batch;
use crate::status::Role;

/// Where a group's leader takes global revisions from: the revision oracle.
pub trait RevisionSource: Send + Sync + 'static {
    /// `count` consecutive revisions, above every revision handed out before the call began;
    /// returns the first.
    fn allocate(&self, count: u32) -> Pin<Box<dyn Future<Output = Result<i64, String>> + Send + '_>>;
}

/// One proposal waiting for its stamp, with where its answer goes.
pub(crate) type StampWaiter<O> = (Vec<u8>, oneshot::Sender<Result<O, RaftError>>);

/// How a group stamps: its revision source once set, and the queue of its stamping task,
/// started by the first stamped proposal.
pub(crate) struct Stamping<O> {
    pub source: OnceLock<Arc<dyn RevisionSource>>,
    pub queue: OnceLock<mpsc::UnboundedSender<StampWaiter<O>>>,
}

impl<O> Default for Stamping<O> {
    fn default() -> Self {
        Stamping {
            source: OnceLock::new(),
            queue: OnceLock::new(),
        }
    }
}

/// Starts the stamping task of a group on the current tokio runtime and returns its queue.
pub(crate) fn start<O: Send + 'static>(
    source: Arc<dyn RevisionSource>,
    mailbox: Sender<GroupMsg<O>>,
    status: Arc<SharedStatus>,
) -> mpsc::UnboundedSender<StampWaiter<O>> {
    let (queue, waiting) = mpsc::unbounded_channel();
    tokio::spawn(run(source, mailbox, status, waiting));
    queue
}

/// Stamps batches until every handle is gone.
async fn run<O: Send + 'static>(
    source: Arc<dyn RevisionSource>,
    mailbox: Sender<GroupMsg<O>>,
    status: Arc<SharedStatus>,
    mut waiting: mpsc::UnboundedReceiver<StampWaiter<O>>,
) {
    // A proposal taken off the queue that did not fit in the last batch.
    let mut carried: Option<StampWaiter<O>> = None;
    loop {
        let first = match carried.take() {
            Some(proposal) => proposal,
            None => match waiting.recv().await {
                Some(proposal) => proposal,
                None => return,
            },
        };
        let mut bytes = first.0.len();
        let mut batch = vec![first];
        while batch.len() < proposal_batch::MAX_COMMANDS {
            let Ok(next) = waiting.try_recv() else { break };
            if bytes + next.0.len() > proposal_batch::MAX_BYTES {
                carried = Some(next);
                break;
            }
            bytes += next.0.len();
            batch.push(next);
        }
        let (role, term) = *status.role.borrow();
        if role != Role::Leader {
            refuse(batch, RaftError::NotLeader(status.leader_id.load(Ordering::Relaxed)));
            continue;
        }
        match source.allocate(batch.len() as u32).await {
            Ok(first_stamp) => {
                let message = GroupMsg::ProposeStamped {
                    batch,
                    first_stamp,
                    term,
                };
                if let Err(undelivered) = mailbox.send(message) {
                    if let GroupMsg::ProposeStamped { batch, .. } = undelivered.0 {
                        refuse(batch, RaftError::Stopped);
                    }
                }
            }
            Err(reason) => refuse(batch, RaftError::Revisions(reason)),
        }
    }
}

fn refuse<O>(batch: Vec<StampWaiter<O>>, err: RaftError) {
    for (_, reply) in batch {
        let _ = reply.send(Err(err.clone()));
    }
}
