//! etcd's `--grpc-keepalive-min-time`: a client that pings too often is sent away.
//!
//! etcd's gRPC server (grpc-go) enforces a keep-alive policy on every client connection. A PING
//! from the client that comes sooner than the minimum time after its previous one is a strike
//! (with no call in progress, etcd tolerates only one ping per two hours, as it does not let
//! clients ping idle connections); a ping after the server has sent response headers or data
//! clears the strikes. On the third strike the server sends GOAWAY with `ENHANCE_YOUR_CALM` and
//! the debug data `too_many_pings`, and closes the connection; grpc-go clients then double their
//! keep-alive time.
//!
//! hyper has no such policy, so [`PingPolicy`] watches the frames of a connection in both
//! directions (only the 9-byte frame headers; payloads are skipped, never copied) between the
//! socket and hyper. It counts the calls in progress (client HEADERS open a stream; END_STREAM
//! from the server or a RST_STREAM either way closes it), applies grpc-go's rule, and when the
//! client is out of strikes writes the GOAWAY at the next frame boundary of the server's output,
//! then ends the connection.

use std::collections::HashSet;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface of HTTP/2.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_BYTES: usize = 9;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_STREAM: u8 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;
/// Strikes a client may have; one more and it is sent away (grpc-go's `maxPingStrikes`).
const MAX_PING_STRIKES: u32 = 2;
/// How often a client may ping a connection with no call in progress (grpc-go's
/// `defaultPingTimeout`, which applies because etcd does not permit pings without streams).
const IDLE_PING_INTERVAL: Duration = Duration::from_secs(2 * 60 * 60);
/// grpc-go's minimum when etcd is given `--grpc-keepalive-min-time=0` (it then sets no policy).
const DEFAULT_MIN_TIME: Duration = Duration::from_secs(5 * 60);

/// One frame header, as far as the policy cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Finds the frame headers in one direction of an HTTP/2 byte stream.
#[derive(Debug)]
struct FrameScanner {
    /// Preface bytes still to skip (the client's direction only).
    preface_left: usize,
    header: [u8; FRAME_HEADER_BYTES],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    payload_left: usize,
    /// Not HTTP/2 (HTTP/1.1 shares the port): nothing more is looked at.
    off: bool,
}

impl FrameScanner {
    fn new(preface: bool) -> Self {
        FrameScanner {
            preface_left: if preface { PREFACE.len() } else { 0 },
            header: [0; FRAME_HEADER_BYTES],
            have: 0,
            payload_left: 0,
            off: false,
        }
    }

    /// Whether the bytes so far end exactly at a frame boundary.
    fn at_boundary(&self) -> bool {
        self.off || (self.preface_left == 0 && self.have == 0 && self.payload_left == 0)
    }

    /// How many more bytes may pass before the current frame ends (`usize::MAX` at a boundary).
    fn to_boundary(&self) -> usize {
        if self.at_boundary() {
            usize::MAX
        } else if self.payload_left > 0 {
            self.payload_left
        } else if self.preface_left > 0 {
            self.preface_left
        } else {
            // Inside a header: it and its payload are unknown yet; pass the header only.
            FRAME_HEADER_BYTES - self.have
        }
    }

    /// Scans `bytes`, calling `seen` for each complete frame header.
    fn scan(&mut self, mut bytes: &[u8], mut seen: impl FnMut(Frame)) {
        while !bytes.is_empty() && !self.off {
            if self.preface_left > 0 {
                let at = PREFACE.len() - self.preface_left;
                let take = bytes.len().min(self.preface_left);
                if bytes[..take] != PREFACE[at..at + take] {
                    self.off = true;
                    return;
                }
                self.preface_left -= take;
                bytes = &bytes[take..];
            } else if self.payload_left > 0 {
                let take = bytes.len().min(self.payload_left);
                self.payload_left -= take;
                bytes = &bytes[take..];
            } else {
                let take = bytes.len().min(FRAME_HEADER_BYTES - self.have);
                self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                self.have += take;
                bytes = &bytes[take..];
                if self.have == FRAME_HEADER_BYTES {
                    self.have = 0;
                    let h = self.header;
                    self.payload_left = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    seen(Frame {
                        kind: h[3],
                        flags: h[4],
                        stream,
                    });
                }
            }
        }
    }
}

/// grpc-go's keep-alive enforcement for one connection, apart from I/O.
#[derive(Debug)]
pub struct PingEnforcer {
    min_time: Duration,
    last_ping: Option<Instant>,
    strikes: u32,
    /// The server sent headers or data since the last ping.
    reset_strikes: bool,
    open_streams: HashSet<u32>,
    max_stream: u32,
}

impl PingEnforcer {
    /// Enforces `min_time` (etcd's `--grpc-keepalive-min-time`; zero: grpc-go's 5 minutes).
    pub fn new(min_time: Duration) -> Self {
        PingEnforcer {
            min_time: if min_time.is_zero() { DEFAULT_MIN_TIME } else { min_time },
            last_ping: None,
            strikes: 0,
            reset_strikes: false,
            open_streams: HashSet::new(),
            max_stream: 0,
        }
    }

    /// A frame from the client, at `now`; true when the client must be sent away.
    fn on_client_frame(&mut self, frame: Frame, now: Instant) -> bool {
        match frame.kind {
            HEADERS => {
                if frame.stream > self.max_stream {
                    self.max_stream = frame.stream;
                    self.open_streams.insert(frame.stream);
                }
                false
            }
            RST_STREAM => {
                self.open_streams.remove(&frame.stream);
                false
            }
            PING if frame.flags & FLAG_ACK == 0 => self.ping(now),
            _ => false,
        }
    }

    /// A frame from the server.
    fn on_server_frame(&mut self, frame: Frame) {
        match frame.kind {
            DATA | HEADERS => {
                self.reset_strikes = true;
                if frame.flags & FLAG_END_STREAM != 0 {
                    self.open_streams.remove(&frame.stream);
                }
            }
            RST_STREAM => {
                self.open_streams.remove(&frame.stream);
            }
            _ => {}
        }
    }

    /// A ping from the client: true when it is one strike too many.
    fn ping(&mut self, now: Instant) -> bool {
        let last = self.last_ping.replace(now);
        if std::mem::take(&mut self.reset_strikes) {
            self.strikes = 0;
            return false;
        }
        let allowed = if self.open_streams.is_empty() {
            IDLE_PING_INTERVAL
        } else {
            self.min_time
        };
        if last.is_some_and(|last| now.duration_since(last) < allowed) {
            self.strikes += 1;
        }
        self.strikes > MAX_PING_STRIKES
    }

    /// The GOAWAY that sends the client away.
    fn goaway(&self) -> Vec<u8> {
        let debug = b"too_many_pings";
        let len = 8 + debug.len();
        let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, GOAWAY, 0, 0, 0, 0, 0];
        frame.extend_from_slice(&self.max_stream.to_be_bytes());
        frame.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        frame.extend_from_slice(debug);
        frame
    }
}

/// Where the GOAWAY stands.
#[derive(Debug)]
enum Away {
    /// The client keeps to the policy.
    No,
    /// Out of strikes: the GOAWAY goes out at the server's next frame boundary.
    Due,
    /// Being written: the frame and how much of it went.
    Writing(Vec<u8>, usize),
    /// Written: the connection ends.
    Sent,
}

/// A client connection whose PINGs are held to the policy (see the module docs).
#[derive(Debug)]
pub struct PingPolicy<T> {
    inner: T,
    enforcer: PingEnforcer,
    inbound: FrameScanner,
    outbound: FrameScanner,
    away: Away,
}

impl<T> PingPolicy<T> {
    /// Wraps `inner`, enforcing `min_time` between the client's pings.
    pub fn new(inner: T, min_time: Duration) -> Self {
        PingPolicy {
            inner,
            enforcer: PingEnforcer::new(min_time),
            inbound: FrameScanner::new(true),
            outbound: FrameScanner::new(false),
            away: Away::No,
        }
    }
}

fn sent_away() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "client sent too many pings")
}

impl<T: AsyncWrite + Unpin> PingPolicy<T> {
    /// Writes the GOAWAY once due and at a boundary; `Ready(Err)` once it is out, `Pending` while
    /// the socket takes it, `Ready(Ok)` when there is nothing to do yet.
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.away {
                Away::No => return Poll::Ready(Ok(())),
                Away::Due if !self.outbound.at_boundary() => return Poll::Ready(Ok(())),
                Away::Due => {
                    tracing::warn!("a client sent too many pings: sending GOAWAY (ENHANCE_YOUR_CALM, too_many_pings)");
                    self.away = Away::Writing(self.enforcer.goaway(), 0);
                }
                Away::Writing(frame, written) => {
                    while *written < frame.len() {
                        match Pin::new(&mut self.inner).poll_write(cx, &frame[*written..]) {
                            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                            Poll::Ready(Ok(n)) => *written += n,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    match Pin::new(&mut self.inner).poll_flush(cx) {
                        Poll::Ready(_) => self.away = Away::Sent,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Away::Sent => return Poll::Ready(Err(sent_away())),
            }
        }
    }

    fn note_written(&mut self, bytes: &[u8]) {
        let enforcer = &mut self.enforcer;
        self.outbound.scan(bytes, |frame| enforcer.on_server_frame(frame));
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PingPolicy<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if matches!(this.away, Away::Sent) {
            return Poll::Ready(Ok(())); // the connection is over: end of stream
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let now = Instant::now();
            let (enforcer, away) = (&mut this.enforcer, &mut this.away);
            this.inbound.scan(&buf.filled()[before..], |frame| {
                if enforcer.on_client_frame(frame, now) && matches!(away, Away::No) {
                    *away = Away::Due;
                }
            });
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PingPolicy<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Poll::Ready(Err(e)) = this.poll_goaway(cx) {
            return Poll::Ready(Err(e));
        }
        if !matches!(this.away, Away::No | Away::Due) {
            return Poll::Pending; // the GOAWAY is still going out; it wakes the task
        }
        // With a GOAWAY due, pass only the rest of the current frame, so it can follow.
        let limit = match this.away {
            Away::Due => buf.len().min(this.outbound.to_boundary()),
            _ => buf.len(),
        };
        let written = Pin::new(&mut this.inner).poll_write(cx, &buf[..limit]);
        if let Poll::Ready(Ok(n)) = written {
            this.note_written(&buf[..n]);
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if !matches!(self.away, Away::No) {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            return self.poll_write(cx, first);
        }
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = written {
            for buf in bufs {
                let take = n.min(buf.len());
                this.note_written(&buf[..take]);
                n -= take;
                if n == 0 {
                    break;
                }
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Poll::Ready(Err(e)) = self.poll_goaway(cx) {
            return Poll::Ready(Err(e));
        }
        if matches!(self.away, Away::Writing(..)) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: u8, flags: u8, stream: u32, len: usize) -> Vec<u8> {
        let mut h = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        h.extend_from_slice(&stream.to_be_bytes());
        h
    }

    fn frames(bytes: &[u8], preface: bool, split: usize) -> Vec<Frame> {
        let mut scanner = FrameScanner::new(preface);
        let mut seen = Vec::new();
        for chunk in bytes.chunks(split) {
            scanner.scan(chunk, |f| seen.push(f));
        }
        assert!(scanner.at_boundary());
        seen
    }

    #[test]
    fn frame_headers_are_found_however_the_bytes_are_split() {
        let mut bytes = PREFACE.to_vec();
        bytes.extend(header(HEADERS, 0x4, 1, 3));
        bytes.extend([1, 2, 3]);
        bytes.extend(header(PING, 0, 0, 8));
        bytes.extend([0; 8]);
        bytes.extend(header(RST_STREAM, 0, 1, 4));
        bytes.extend([0; 4]);
        let expected = vec![
            Frame {
                kind: HEADERS,
                flags: 0x4,
                stream: 1,
            },
            Frame {
                kind: PING,
                flags: 0,
                stream: 0,
            },
            Frame {
                kind: RST_STREAM,
                flags: 0,
                stream: 1,
            },
        ];
        for split in [1, 2, 7, 9, 10, 64] {
            assert_eq!(frames(&bytes, true, split), expected, "split {split}");
        }
        let mut http1 = FrameScanner::new(true);
        http1.scan(b"GET /health HTTP/1.1\r\n", |_| panic!("no frames in HTTP/1.1"));
        assert!(http1.at_boundary());
    }

    fn ping() -> Frame {
        Frame {
            kind: PING,
            flags: 0,
            stream: 0,
        }
    }

    #[test]
    fn the_third_early_ping_is_one_too_many_unless_the_server_spoke() {
        let min = Duration::from_secs(5);
        let t0 = Instant::now();
        let mut e = PingEnforcer::new(min);
        let open = Frame {
            kind: HEADERS,
            flags: 0x4,
            stream: 1,
        };
        assert!(!e.on_client_frame(open, t0));
        // Pings at least the minimum apart never strike.
        for i in 0..10 {
            assert!(!e.on_client_frame(ping(), t0 + min * i));
        }
        let t1 = t0 + min * 20;
        assert!(!e.on_client_frame(ping(), t1));
        assert!(!e.on_client_frame(ping(), t1 + Duration::from_secs(1)));
        assert!(!e.on_client_frame(ping(), t1 + Duration::from_secs(2)));
        // The server's data clears the strikes.
        e.on_server_frame(Frame {
            kind: DATA,
            flags: 0,
            stream: 1,
        });
        assert!(!e.on_client_frame(ping(), t1 + Duration::from_secs(3)));
        assert!(!e.on_client_frame(ping(), t1 + Duration::from_secs(4)));
        assert!(!e.on_client_frame(ping(), t1 + Duration::from_secs(5)));
        assert!(e.on_client_frame(ping(), t1 + Duration::from_secs(6)), "third strike");
        assert_eq!(&e.goaway()[9..17], &[0, 0, 0, 1, 0, 0, 0, ENHANCE_YOUR_CALM as u8]);
    }

    #[test]
    fn without_a_call_in_progress_pings_must_be_hours_apart() {
        let t0 = Instant::now();
        let mut e = PingEnforcer::new(Duration::from_secs(5));
        let mut sent_away = false;
        for i in 0..4 {
            sent_away = e.on_client_frame(ping(), t0 + Duration::from_secs(60 * i));
        }
        assert!(sent_away, "four pings a minute apart on an idle connection");
        // A call that ended (END_STREAM from the server) leaves the connection idle again.
        let mut e = PingEnforcer::new(Duration::from_secs(5));
        e.on_client_frame(
            Frame {
                kind: HEADERS,
                flags: 0x4,
                stream: 3,
            },
            t0,
        );
        e.on_server_frame(Frame {
            kind: HEADERS,
            flags: FLAG_END_STREAM | 0x4,
            stream: 3,
        });
        assert!(e.open_streams.is_empty());
    }
}
