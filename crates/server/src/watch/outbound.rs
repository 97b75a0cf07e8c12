//! The responses one Watch stream has ready for its client, bounded in bytes.
//!
//! A queue bounded by a count of responses holds whatever those responses weigh: with large
//! values, a client that stops reading left each stream holding a hundred and more full-sized
//! responses. Here every queued response holds a share of the stream's byte budget until the
//! gRPC encoder takes it, so what waits for a slow client is the budget and one response.
//! Every stream of a member also draws on one member-wide budget ([`MEMBER_OUTBOUND_BYTES`]), so
//! many slow clients together cannot hold more either: once it is spent, streams wait for room
//! as a slow stream does (and catch their watchers up from the store afterwards).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use concord_proto::etcdserverpb::WatchResponse;
use prost::Message as _;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio_stream::Stream;
use tonic::Status;

/// Bytes of responses one stream queues for its client (besides what HTTP/2 buffers for it).
pub const OUTBOUND_BYTES: u32 = 256 * 1024;

/// Bytes of responses all the Watch streams of one member queue together: the budgets of 256
/// streams whose clients all stopped reading.
pub const MEMBER_OUTBOUND_BYTES: usize = 64 * 1024 * 1024;

/// What a queued response costs besides its encoded bytes: the response itself and its events'
/// allocations, so a stream of tiny responses is bounded too.
const RESPONSE_OVERHEAD_BYTES: usize = 256;

/// A response waiting for the client, with its share of the budget.
struct Queued {
    response: WatchResponse,
    _room: OwnedSemaphorePermit,
    _member_room: OwnedSemaphorePermit,
}

/// Why a response was not queued at once.
pub enum TrySendError {
    /// The budget is spent: the response is handed back.
    Full(WatchResponse),
    /// The client went away.
    Closed,
}

/// The member-wide budget every stream's queue draws on as well as its own.
pub fn member_budget() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MEMBER_OUTBOUND_BYTES))
}

/// A queue of `budget` bytes, within the member's `member_room`: the stream's task sends on one
/// end, the gRPC encoder reads the other.
pub fn channel(budget: u32, member_room: Arc<Semaphore>) -> (OutboundSender, Outbound) {
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(budget as usize));
    (
        OutboundSender {
            tx,
            room: room.clone(),
            member_room,
            budget,
        },
        Outbound { rx, room },
    )
}

/// The stream task's end of the queue.
pub struct OutboundSender {
    tx: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
    member_room: Arc<Semaphore>,
    budget: u32,
}

impl OutboundSender {
    /// Queues `response` if both budgets have room for it now.
    pub fn try_send(&self, response: WatchResponse) -> Result<(), TrySendError> {
        let cost = self.cost(&response);
        let room = match self.room.clone().try_acquire_many_owned(cost) {
            Ok(room) => room,
            Err(TryAcquireError::NoPermits) => return Err(TrySendError::Full(response)),
            Err(TryAcquireError::Closed) => return Err(TrySendError::Closed),
        };
        match self.member_room.clone().try_acquire_many_owned(cost) {
            Ok(member_room) => self.queue(response, room, member_room),
            Err(_) => Err(TrySendError::Full(response)),
        }
    }

    /// Queues `response`, waiting for room; false once the client has gone away.
    pub async fn send(&self, response: WatchResponse) -> bool {
        let cost = self.cost(&response);
        let Ok(room) = self.room.clone().acquire_many_owned(cost).await else {
            return false;
        };
        let member_room = tokio::select! {
            member_room = self.member_room.clone().acquire_many_owned(cost) => member_room,
            () = self.tx.closed() => return false,
        };
        match member_room {
            Ok(member_room) => self.queue(response, room, member_room).is_ok(),
            Err(_) => false,
        }
    }

    fn queue(
        &self,
        response: WatchResponse,
        room: OwnedSemaphorePermit,
        member_room: OwnedSemaphorePermit,
    ) -> Result<(), TrySendError> {
        self.tx
            .send(Queued {
                response,
                _room: room,
                _member_room: member_room,
            })
            .map_err(|_| TrySendError::Closed)
    }

    /// A response's share of the budget; one larger than the whole budget takes all of it.
    fn cost(&self, response: &WatchResponse) -> u32 {
        let bytes = response.encoded_len() + RESPONSE_OVERHEAD_BYTES;
        u32::try_from(bytes).unwrap_or(u32::MAX).min(self.budget)
    }
}

/// The encoder's end of the queue: the stream's responses, each giving its share of the budget
/// back as it is taken.
pub struct Outbound {
    rx: mpsc::UnboundedReceiver<Queued>,
    room: Arc<Semaphore>,
}

impl Stream for Outbound {
    type Item = Result<WatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|queued| queued.map(|q| Ok(q.response)))
    }
}

impl Drop for Outbound {
    /// The client has gone: a task waiting for room learns it at once.
    fn drop(&mut self) {
        self.room.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt as _;

    fn response(bytes: usize) -> WatchResponse {
        WatchResponse {
            cancel_reason: "x".repeat(bytes),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_budget_bounds_what_waits_and_comes_back_as_responses_are_taken() {
        let (tx, mut rx) = channel(4096, member_budget());
        assert!(tx.try_send(response(3000)).is_ok());
        let Err(TrySendError::Full(back)) = tx.try_send(response(3000)) else {
            panic!("a second response fits no budget of 4096 bytes");
        };
        assert!(rx.next().await.is_some());
        assert!(tx.try_send(back).is_ok());
        // One response larger than the whole budget still goes, alone.
        assert!(rx.next().await.is_some());
        assert!(tx.send(response(10_000)).await);
        assert!(matches!(tx.try_send(response(1)), Err(TrySendError::Full(_))));
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_learns_that_the_client_went_away() {
        let (tx, rx) = channel(1024, member_budget());
        assert!(tx.try_send(response(1000)).is_ok());
        let waiting = tokio::spawn(async move { tx.send(response(1000)).await });
        drop(rx);
        assert!(!waiting.await.unwrap());
    }

    #[tokio::test]
    async fn streams_share_the_member_budget() {
        let member = Arc::new(Semaphore::new(4096));
        let (slow, never_read) = channel(4096, member.clone());
        let (other, mut rx) = channel(4096, member.clone());
        assert!(slow.try_send(response(3000)).is_ok());
        // The other stream has room of its own, but the member's is spent.
        let Err(TrySendError::Full(back)) = other.try_send(response(3000)) else {
            panic!("the member budget is spent");
        };
        let waiting = tokio::spawn(async move { (other.send(back).await, other) });
        drop(slow);
        drop(never_read);
        let (sent, _other) = waiting.await.unwrap();
        assert!(sent, "room comes back when the slow stream's client goes away");
        assert!(rx.next().await.is_some());
    }
}
