//! Fewer, larger socket writes for HTTP/2 connections.
//!
//! The h2 crate buffers the frames it sends and writes them out when it has nothing more to
//! send, so responses that are ready together share one `write`. Two things keep that from
//! happening under load, and [`CoalescedWrites`] undoes both:
//!
//! * **Large DATA frames.** h2 keeps the payload of a DATA frame at or above a threshold aside
//!   instead of copying it into its buffer, and must write the buffer out before it takes the
//!   next frame. With vectored I/O the threshold is 256 bytes, which a gRPC message holding one
//!   256-byte value already crosses. Without vectored I/O it is 1 KiB. The wrapper says it has
//!   no vectored writes, so small messages are copied and batched.
//! * **Writing as soon as one response is ready.** The connection's task is woken by each
//!   request's task as it finishes, and tokio runs a task woken this way next. So the
//!   connection writes after every response, though other requests' tasks are about to finish
//!   too. The wrapper defers the first write after each flush by one turn of the scheduler (the
//!   task reschedules itself behind the tasks already queued). When h2 tries again, it has
//!   buffered what those tasks answered meanwhile, and writes it all at once. With nothing else
//!   queued, the turn costs microseconds.
//!
//! On loopback each write is also a TCP segment that the kernel delivers and the reader must
//! wake for, so the savings show on both ends.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A connection whose writes h2 batches: see the module documentation.
#[derive(Debug)]
pub struct CoalescedWrites<T> {
    inner: T,
    /// Whether the write now being asked for has already waited its turn.
    waited: bool,
}

impl<T> CoalescedWrites<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        CoalescedWrites { inner, waited: false }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescedWrites<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if flushed.is_ready() {
            self.waited = false;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl<T: Connected> Connected for CoalescedWrites<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    use tokio::io::AsyncReadExt as _;

    use super::*;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_first_write_after_each_flush_waits_one_turn_then_everything_passes_through() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut io = CoalescedWrites::new(near);
        assert!(
            !io.is_write_vectored(),
            "h2 must see no vectored writes, or it keeps its 256-byte threshold"
        );
        let wakes = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);

        for round in 1..=2 {
            // The first write yields, and asks to be polled again.
            assert!(Pin::new(&mut io).poll_write(&mut cx, b"abc").is_pending());
            assert_eq!(wakes.0.load(Ordering::SeqCst), round);
            // The retry, and every write until the flush, goes straight through.
            assert!(matches!(
                Pin::new(&mut io).poll_write(&mut cx, b"abc"),
                Poll::Ready(Ok(3))
            ));
            assert!(matches!(
                Pin::new(&mut io).poll_write(&mut cx, b"de"),
                Poll::Ready(Ok(2))
            ));
            assert!(matches!(Pin::new(&mut io).poll_flush(&mut cx), Poll::Ready(Ok(()))));
            let mut got = [0u8; 5];
            far.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"abcde");
        }
    }
}
