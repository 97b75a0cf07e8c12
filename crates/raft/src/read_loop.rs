//! Linearizable reads handed to the driver thread in batches.
//!
//! Every read needs a read index from the driver thread. Sending each read there on its own
//! costs a wake-up of that thread per read, and an answer from a thread outside the runtime per
//! read. Instead, reads queue for one task per group. It lets the runtime run once (so the
//! reads decoded alongside can join), sends everything queued as one request, and answers the
//! whole batch when that request returns and this member has applied up to its index. It does
//! not wait for one batch to finish before sending the next: the driver itself keeps one round
//! out at a time and folds the batches that wait into the next round.

use std::sync::OnceLock;
use std::time::Duration;

use crossbeam_channel::Sender;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::RaftError;
use crate::node::GroupMsg;

/// One read waiting for its batch.
pub(crate) type ReadWaiter = oneshot::Sender<Result<(), RaftError>>;

/// The queue of a group's read task, started by the first read.
pub(crate) type ReadQueue = OnceLock<mpsc::UnboundedSender<ReadWaiter>>;

/// Starts the read task of a group on the current tokio runtime and returns its queue.
pub(crate) fn start<O: Send + 'static>(
    mailbox: Sender<GroupMsg<O>>,
    applied: watch::Receiver<u64>,
    request_timeout: Duration,
) -> mpsc::UnboundedSender<ReadWaiter> {
    let (queue, requests) = mpsc::unbounded_channel();
    tokio::spawn(run(mailbox, applied, request_timeout, requests));
    queue
}

/// Sends batches until every handle is gone.
async fn run<O: Send + 'static>(
    mailbox: Sender<GroupMsg<O>>,
    applied: watch::Receiver<u64>,
    request_timeout: Duration,
    mut requests: mpsc::UnboundedReceiver<ReadWaiter>,
) {
    loop {
        let Some(first) = requests.recv().await else {
            return;
        };
        tokio::task::yield_now().await;
        let mut batch = vec![first];
        while let Ok(more) = requests.try_recv() {
            batch.push(more);
        }
        let (reply, index) = oneshot::channel();
        if mailbox.send(GroupMsg::ReadIndex { reply }).is_err() {
            answer(batch, Err(RaftError::Stopped));
            continue;
        }
        let applied = applied.clone();
        tokio::spawn(async move {
            let result = wait_applied(index, applied, request_timeout).await;
            answer(batch, result);
        });
    }
}

/// Waits for the read index, then for this member's apply to reach it.
async fn wait_applied(
    index: oneshot::Receiver<Result<u64, RaftError>>,
    mut applied: watch::Receiver<u64>,
    request_timeout: Duration,
) -> Result<(), RaftError> {
    let deadline = tokio::time::Instant::now() + request_timeout;
    let index = match tokio::time::timeout_at(deadline, index).await {
        Ok(Ok(result)) => result?,
        Ok(Err(_)) => return Err(RaftError::Stopped),
        Err(_) => return Err(RaftError::Timeout),
    };
    match tokio::time::timeout_at(deadline, applied.wait_for(|a| *a >= index)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(RaftError::Stopped),
        Err(_) => Err(RaftError::Timeout),
    }
}

fn answer(batch: Vec<ReadWaiter>, result: Result<(), RaftError>) {
    for waiter in batch {
        let _ = waiter.send(result.clone());
    }
}
