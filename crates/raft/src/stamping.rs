//! Stamping a group's proposals with global revisions (multi-shard mode).
//!
//! When many groups write at one revision counter, each write must take a revision that is
//! above every write that finished before it began, whatever its group, and a group's log order
//! must be its revision order. So the group's leader, and only it, stamps: its driver hands what
//! it would propose to the group's stamping task, which takes revisions for the whole batch from
//! the revision oracle and hands the batch back with the term it was stamped in; the driver
//! proposes it only if it still leads in that term (`Driver::propose_stamped`). Every entry an
//! older leader stamped was stamped before the new leader took any revision, so the log stays in
//! revision order across failovers; the store refuses, on every replica alike, a stamp that is
//! not above its revision.
//!
//! Followers propose as they always do: raft-rs forwards their proposals to the leader, whose
//! driver stamps them like its own, keeping the proposing member and request id of each in the
//! entry, so the follower answers its caller once it applies the entry, as with any forwarded
//! proposal.
//!
//! One batch is out at a time: proposals that arrive while the oracle answers wait for the next
//! batch, so a loaded group asks the oracle once for many writes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use crossbeam_channel::Sender;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::RaftError;
use crate::node::GroupMsg;
use crate::proposal_batch;
use crate::status::Role;

/// Where a group's leader takes global revisions from: the revision oracle.
pub trait RevisionSource: Send + Sync + 'static {
    /// `count` consecutive revisions, above every revision handed out before the call began;
    /// returns the first.
    fn allocate(&self, count: u32) -> Pin<Box<dyn Future<Output = Result<i64, String>> + Send + '_>>;
}

/// Who waits for a stamped proposal's answer.
pub(crate) enum Origin<O> {
    /// A caller on this member.
    Local(oneshot::Sender<Result<O, RaftError>>),
    /// A caller on the member that proposed it, which raft-rs forwarded here, under that
    /// member's request id.
    Remote { member: u64, request: u64 },
}

/// One proposal on its way to be stamped.
pub(crate) struct StampItem<O> {
    pub data: Vec<u8>,
    pub origin: Origin<O>,
}

impl<O> StampItem<O> {
    /// Gives up on the proposal: a local caller hears `err`; a remote one hears nothing from
    /// here and gives up at its own request timeout, as with a forwarded proposal a leader drops.
    pub fn refuse(self, err: RaftError) {
        if let Origin::Local(reply) = self.origin {
            let _ = reply.send(Err(err));
        }
    }
}

/// The queue of a group's stamping task, once the group stamps.
pub(crate) type StampQueue<O> = OnceLock<mpsc::UnboundedSender<StampItem<O>>>;

/// Starts the stamping task of a group on the current tokio runtime and returns its queue.
pub(crate) fn start<O: Send + 'static>(
    source: Arc<dyn RevisionSource>,
    mailbox: Sender<GroupMsg<O>>,
    role: watch::Receiver<(Role, u64)>,
) -> mpsc::UnboundedSender<StampItem<O>> {
    let (queue, waiting) = mpsc::unbounded_channel();
    tokio::spawn(run(source, mailbox, role, waiting));
    queue
}

/// Stamps batches until the driver is gone.
async fn run<O: Send + 'static>(
    source: Arc<dyn RevisionSource>,
    mailbox: Sender<GroupMsg<O>>,
    role: watch::Receiver<(Role, u64)>,
    mut waiting: mpsc::UnboundedReceiver<StampItem<O>>,
) {
    // A proposal taken off the queue that did not fit in the last batch.
    let mut carried: Option<StampItem<O>> = None;
    loop {
        let first = match carried.take() {
            Some(item) => item,
            None => match waiting.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let mut bytes = first.data.len();
        let mut batch = vec![first];
        while batch.len() < proposal_batch::MAX_COMMANDS {
            let Ok(next) = waiting.try_recv() else { break };
            if bytes + next.data.len() > proposal_batch::MAX_BYTES {
                carried = Some(next);
                break;
            }
            bytes += next.data.len();
            batch.push(next);
        }
        // The term is read before the revisions are taken: a batch proposed in it, and only in
        // it, comes after every entry an earlier leader stamped. Whether the member still leads
        // in it is the driver's to decide when the batch comes back (term 0 never matches);
        // revisions taken for a batch it may no longer propose are simply never used.
        let term = match *role.borrow() {
            (Role::Leader, term) => term,
            _ => 0,
        };
        let stamped = match term {
            0 => Ok(0),
            _ => source.allocate(batch.len() as u32).await,
        };
        match stamped {
            Ok(first_stamp) => {
                let message = GroupMsg::ProposeStamped {
                    batch,
                    first_stamp,
                    term,
                };
                if let Err(undelivered) = mailbox.send(message) {
                    if let GroupMsg::ProposeStamped { batch, .. } = undelivered.0 {
                        batch.into_iter().for_each(|item| item.refuse(RaftError::Stopped));
                    }
                    return;
                }
            }
            Err(reason) => batch
                .into_iter()
                .for_each(|item| item.refuse(RaftError::Revisions(reason.clone()))),
        }
    }
}
