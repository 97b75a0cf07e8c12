//! Accepts the HTTP/2 `:authority` that etcdctl 3.4 sends for `http://` and `https://` endpoints.
//!
//! etcdctl 3.4 (and clientv3 of that line) dials each endpoint with the whole URL as the gRPC
//! target, so grpc-go sends `:authority: http://127.0.0.1:2379`. grpc-go's server ignores the
//! field; the `h2` crate under hyper checks it as an RFC 3986 authority and resets the stream with
//! `PROTOCOL_ERROR`. That broke every per-endpoint etcdctl command given `http://` endpoints, and
//! `--cluster` (which always uses the members' advertised URLs): `endpoint status --cluster`,
//! `endpoint hashkv --cluster`, `defrag --cluster`.
//!
//! [`SchemeAuthority`] sits between the connection and hyper and mends the one field on the way
//! in: in a HEADERS frame whose header block is complete, an `:authority` literal whose value
//! starts with `http://` or `https://` gets that scheme prefix replaced by one of the same length
//! that reads as user information (`http:x@`, `https:x@`), so the value parses, names the same
//! host and port, and takes the same room in the HPACK dynamic table as the client's copy (the
//! two tables must stay in step, or later indexed fields would name other headers). Nothing reads
//! the user information. Everything else passes through untouched, byte for byte: HTTP/1.1
//! connections, other frames, other fields, and any header block it cannot parse (h2 then answers
//! it as before).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface of HTTP/2.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_BYTES: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// HEADERS frames up to this size (HTTP/2's default SETTINGS_MAX_FRAME_SIZE, which the server
/// keeps) are looked at; a larger one is passed on for h2 to refuse.
const MAX_MENDED_FRAME: usize = 16 * 1024;
/// `:authority` in HPACK's static table.
const AUTHORITY_INDEX: usize = 1;
/// Scheme prefixes and the user information of the same length that replaces each.
const MENDS: [(&[u8], &[u8]); 2] = [(b"http://", b"http:x@"), (b"https://", b"https:x@")];

/// Where the rewriter stands in the client's byte stream.
#[derive(Debug)]
enum State {
    /// Matching the first bytes against the HTTP/2 preface.
    Preface { matched: usize },
    /// Not HTTP/2 (HTTP/1.1 shares the port): everything passes.
    PassThrough,
    /// Gathering a frame header.
    FrameHeader {
        header: [u8; FRAME_HEADER_BYTES],
        have: usize,
    },
    /// Gathering a HEADERS frame's payload, to look at it whole.
    Headers {
        header: [u8; FRAME_HEADER_BYTES],
        payload: Vec<u8>,
        need: usize,
    },
    /// Passing the rest of another frame's payload.
    Payload { remaining: usize },
}

/// The byte-stream transformation, apart from I/O so it can be tested on bytes.
#[derive(Debug)]
pub struct AuthorityMender {
    state: State,
}

impl Default for AuthorityMender {
    fn default() -> Self {
        AuthorityMender {
            state: State::Preface { matched: 0 },
        }
    }
}

impl AuthorityMender {
    /// Takes the next bytes the client sent and appends to `out` what h2 should read.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match &mut self.state {
                State::PassThrough => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Preface { matched } => {
                    let take = input.len().min(PREFACE.len() - *matched);
                    let (head, rest) = input.split_at(take);
                    out.extend_from_slice(head);
                    input = rest;
                    if head != &PREFACE[*matched..*matched + take] {
                        self.state = State::PassThrough;
                    } else if *matched + take == PREFACE.len() {
                        self.state = State::FrameHeader {
                            header: [0; FRAME_HEADER_BYTES],
                            have: 0,
                        };
                    } else {
                        *matched += take;
                    }
                }
                State::FrameHeader { header, have } => {
                    let take = input.len().min(FRAME_HEADER_BYTES - *have);
                    header[*have..*have + take].copy_from_slice(&input[..take]);
                    input = &input[take..];
                    *have += take;
                    if *have == FRAME_HEADER_BYTES {
                        let header = *header;
                        self.state = start_frame(header, out);
                    }
                }
                State::Payload { remaining } => {
                    let take = input.len().min(*remaining);
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    *remaining -= take;
                    if *remaining == 0 {
                        self.state = State::FrameHeader {
                            header: [0; FRAME_HEADER_BYTES],
                            have: 0,
                        };
                    }
                }
                State::Headers { header, payload, need } => {
                    let take = input.len().min(*need);
                    payload.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    *need -= take;
                    if *need == 0 {
                        emit_headers(*header, payload, out);
                        self.state = State::FrameHeader {
                            header: [0; FRAME_HEADER_BYTES],
                            have: 0,
                        };
                    }
                }
            }
        }
    }
}

/// What follows a frame header: a HEADERS frame with a whole header block is gathered; any
/// other frame's header goes out at once and its payload passes.
fn start_frame(header: [u8; FRAME_HEADER_BYTES], out: &mut Vec<u8>) -> State {
    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    let (kind, flags) = (header[3], header[4]);
    if kind == FRAME_HEADERS && flags & FLAG_END_HEADERS != 0 && len > 0 && len <= MAX_MENDED_FRAME {
        return State::Headers {
            header,
            payload: Vec::with_capacity(len),
            need: len,
        };
    }
    out.extend_from_slice(&header);
    if len == 0 {
        State::FrameHeader {
            header: [0; FRAME_HEADER_BYTES],
            have: 0,
        }
    } else {
        State::Payload { remaining: len }
    }
}

/// Writes a gathered HEADERS frame, mended if its block holds a scheme in `:authority`.
fn emit_headers(mut header: [u8; FRAME_HEADER_BYTES], payload: &[u8], out: &mut Vec<u8>) {
    if let Some(mended) = mend_payload(header[4], payload) {
        if mended.len() <= MAX_MENDED_FRAME {
            let len = mended.len();
            header[0] = (len >> 16) as u8;
            header[1] = (len >> 8) as u8;
            header[2] = len as u8;
            out.extend_from_slice(&header);
            out.extend_from_slice(&mended);
            return;
        }
    }
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

/// The frame's payload with its header block mended, or `None` when nothing needs mending or the
/// payload does not parse.
fn mend_payload(flags: u8, payload: &[u8]) -> Option<Vec<u8>> {
    let mut start = 0;
    let mut padding = 0;
    if flags & FLAG_PADDED != 0 {
        padding = usize::from(*payload.first()?);
        start = 1;
    }
    if flags & FLAG_PRIORITY != 0 {
        start += 5;
    }
    let end = payload.len().checked_sub(padding)?;
    let block = payload.get(start..end)?;
    let mended = mend_block(block)?;
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&payload[..start]);
    out.extend_from_slice(&mended);
    out.extend_from_slice(&payload[end..]);
    Some(out)
}

/// The header block with each `:authority` literal's scheme prefix replaced, or `None` when there
/// is none to replace or the block does not parse.
fn mend_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len() + 8);
    let mut changed = false;
    let mut at = 0;
    while at < block.len() {
        let first = block[at];
        let name_prefix_bits = if first & 0x80 != 0 {
            // Indexed field: an index only.
            let (_, next) = read_int(block, at, 7)?;
            out.extend_from_slice(&block[at..next]);
            at = next;
            continue;
        } else if first & 0xc0 == 0x40 {
            6 // literal with incremental indexing
        } else if first & 0xe0 == 0x20 {
            // Dynamic table size update.
            let (_, next) = read_int(block, at, 5)?;
            out.extend_from_slice(&block[at..next]);
            at = next;
            continue;
        } else {
            4 // literal without indexing, or never indexed
        };
        let (name_index, mut next) = read_int(block, at, name_prefix_bits)?;
        let is_authority = if name_index == 0 {
            let (name, after_name) = read_string(block, next)?;
            next = after_name;
            name == b":authority"
        } else {
            name_index == AUTHORITY_INDEX
        };
        let (value, after_value) = read_string(block, next)?;
        let mended = if is_authority { mend_value(&value) } else { None };
        match mended {
            Some(value) => {
                out.extend_from_slice(&block[at..next]);
                write_raw_string(&value, &mut out);
                changed = true;
            }
            None => out.extend_from_slice(&block[at..after_value]),
        }
        at = after_value;
    }
    changed.then_some(out)
}

/// The value with its scheme prefix replaced by user information of the same length.
fn mend_value(value: &[u8]) -> Option<Vec<u8>> {
    let (scheme, replacement) = MENDS.iter().find(|(scheme, _)| value.starts_with(scheme))?;
    let mut mended = replacement.to_vec();
    mended.extend_from_slice(&value[scheme.len()..]);
    Some(mended)
}

/// Reads an HPACK integer with an `prefix_bits`-bit prefix at `at`: its value and where the
/// next byte is.
fn read_int(block: &[u8], at: usize, prefix_bits: u32) -> Option<(usize, usize)> {
    let max_prefix = (1usize << prefix_bits) - 1;
    let mut value = usize::from(*block.get(at)?) & max_prefix;
    let mut next = at + 1;
    if value < max_prefix {
        return Some((value, next));
    }
    let mut shift = 0u32;
    loop {
        let byte = *block.get(next)?;
        next += 1;
        value = value.checked_add(usize::from(byte & 0x7f).checked_shl(shift)?)?;
        if byte & 0x80 == 0 {
            return Some((value, next));
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

/// Reads an HPACK string literal at `at` (Huffman-coded or not): its bytes and where the next
/// byte is.
fn read_string(block: &[u8], at: usize) -> Option<(Vec<u8>, usize)> {
    let huffman = *block.get(at)? & 0x80 != 0;
    let (len, start) = read_int(block, at, 7)?;
    let end = start.checked_add(len)?;
    let raw = block.get(start..end)?;
    if !huffman {
        return Some((raw.to_vec(), end));
    }
    let mut decoded = Vec::with_capacity(len * 2);
    httlib_huffman::decode(raw, &mut decoded, httlib_huffman::DecoderSpeed::FourBits).ok()?;
    Some((decoded, end))
}

/// Writes `value` as a plain (not Huffman-coded) HPACK string literal.
fn write_raw_string(value: &[u8], out: &mut Vec<u8>) {
    let mut len = value.len();
    if len < 0x7f {
        out.push(len as u8);
    } else {
        out.push(0x7f);
        len -= 0x7f;
        while len >= 0x80 {
            out.push((len & 0x7f) as u8 | 0x80);
            len >>= 7;
        }
        out.push(len as u8);
    }
    out.extend_from_slice(value);
}

/// A client connection whose incoming bytes pass through an [`AuthorityMender`].
#[derive(Debug)]
pub struct SchemeAuthority<T> {
    inner: T,
    mender: AuthorityMender,
    /// Mended bytes not yet handed to the reader.
    ready: Vec<u8>,
    /// How many of `ready` were handed already.
    taken: usize,
    /// Bytes read from `inner`, before mending.
    scratch: Box<[u8]>,
}

impl<T> SchemeAuthority<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        SchemeAuthority {
            inner,
            mender: AuthorityMender::default(),
            ready: Vec::new(),
            taken: 0,
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SchemeAuthority<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.taken == this.ready.len() {
            this.ready.clear();
            this.taken = 0;
            let mut read = ReadBuf::new(&mut this.scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
            let filled = read.filled();
            if filled.is_empty() {
                return Poll::Ready(Ok(())); // end of stream
            }
            this.mender.feed(filled, &mut this.ready);
        }
        let take = buf.remaining().min(this.ready.len() - this.taken);
        buf.put_slice(&this.ready[this.taken..this.taken + take]);
        this.taken += take;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SchemeAuthority<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags, 0, 0, 0, 1];
        out.extend_from_slice(payload);
        out
    }

    fn huffman(text: &[u8]) -> Vec<u8> {
        let mut coded = Vec::new();
        httlib_huffman::encode(text, &mut coded).unwrap();
        let mut out = Vec::new();
        assert!(coded.len() < 0x7f);
        out.push(0x80 | coded.len() as u8);
        out.extend_from_slice(&coded);
        out
    }

    /// Feeds `input` one byte at a time (the worst split) and all at once; both must agree.
    fn mend(input: &[u8]) -> Vec<u8> {
        let mut whole = Vec::new();
        AuthorityMender::default().feed(input, &mut whole);
        let mut bytewise = Vec::new();
        let mut mender = AuthorityMender::default();
        for b in input {
            mender.feed(std::slice::from_ref(b), &mut bytewise);
        }
        assert_eq!(whole, bytewise);
        whole
    }

    fn block_with_authority(value: &[u8]) -> Vec<u8> {
        // :method POST (indexed 3), :scheme http (indexed 6), :path literal, :authority literal
        // with incremental indexing and static name index 1, Huffman-coded, as grpc-go sends.
        let mut block = vec![0x83, 0x86, 0x44, 4];
        block.extend_from_slice(b"/x/y");
        block.push(0x41);
        block.extend_from_slice(&huffman(value));
        block
    }

    #[test]
    fn a_scheme_in_authority_becomes_user_information_of_the_same_length() {
        let data = frame(0x0, 0x1, b"body");
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, &[])); // SETTINGS
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            &block_with_authority(b"http://127.0.0.1:2379"),
        ));
        input.extend(&data);
        let out = mend(&input);

        let mut expected_block = vec![0x83, 0x86, 0x44, 4];
        expected_block.extend_from_slice(b"/x/y");
        expected_block.push(0x41);
        expected_block.push(b"http:x@127.0.0.1:2379".len() as u8);
        expected_block.extend_from_slice(b"http:x@127.0.0.1:2379");
        let mut expected = PREFACE.to_vec();
        expected.extend(frame(0x4, 0, &[]));
        expected.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, &expected_block));
        expected.extend(&data);
        assert_eq!(out, expected);
        assert!("http:x@127.0.0.1:2379".parse::<http::uri::Authority>().is_ok());
        assert!("https:x@[::1]:2379".parse::<http::uri::Authority>().is_ok());
    }

    #[test]
    fn padding_and_priority_are_kept_around_the_mended_block() {
        let block = block_with_authority(b"https://localhost:2379");
        let mut payload = vec![2]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 3, 15]); // priority
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY,
            &payload,
        ));
        let out = mend(&input);
        let payload = &out[PREFACE.len() + FRAME_HEADER_BYTES..];
        assert_eq!(&payload[..6], &[2, 0, 0, 0, 3, 15]);
        assert!(payload.ends_with(b"https:x@localhost:2379\0\0"));
        let len = usize::from(out[PREFACE.len() + 2]);
        assert_eq!(len, payload.len());
    }

    #[test]
    fn everything_else_passes_byte_for_byte() {
        let cases: Vec<Vec<u8>> = vec![
            b"GET /health HTTP/1.1\r\nHost: http://x\r\n\r\n".to_vec(),
            [
                PREFACE,
                &frame(
                    FRAME_HEADERS,
                    FLAG_END_HEADERS,
                    &block_with_authority(b"127.0.0.1:2379"),
                ),
            ]
            .concat(),
            // A header block split over CONTINUATION frames is left alone.
            [
                PREFACE,
                &frame(FRAME_HEADERS, 0, &block_with_authority(b"http://a:1")),
                &frame(0x9, 0x4, &[]),
            ]
            .concat(),
            // A block that does not parse (a string longer than the frame).
            [PREFACE, &frame(FRAME_HEADERS, FLAG_END_HEADERS, &[0x41, 0x7f, 0x10])].concat(),
            // `:authority` named by a literal with another value, and another header with a scheme.
            [
                PREFACE,
                &frame(
                    FRAME_HEADERS,
                    FLAG_END_HEADERS,
                    &[0x40, 4, b'h', b'o', b's', b't', 3, b'a', b':', b'1'],
                ),
            ]
            .concat(),
        ];
        for input in cases {
            assert_eq!(mend(&input), input);
        }
    }

    #[test]
    fn hpack_integers_read_past_their_prefix() {
        assert_eq!(read_int(&[0x1f, 0x9a, 0x0a], 0, 5), Some((1337, 3)));
        assert_eq!(read_int(&[0x0a], 0, 5), Some((10, 1)));
        assert_eq!(read_int(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], 0, 7), None);
        let mut out = Vec::new();
        write_raw_string(&[b'a'; 300], &mut out);
        assert_eq!(read_string(&out, 0).map(|(s, n)| (s.len(), n)), Some((300, out.len())));
    }
}
