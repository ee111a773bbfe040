//! Transport, between an accepted Unix-socket connection and h2: mends the HTTP/2 `:authority`
//! that many gRPC clients send over a Unix socket (grpcio >= 1.57, grpc-java, grpcurl,
//! grpc-swift: the socket's path, raw or percent-encoded), which h2 refuses as malformed
//! (PROTOCOL_ERROR on the stream). The gateway routes nothing by authority, so such a value is
//! treated as absent (docs/design.md §1).
//!
//! The first header block of a connection decides. If its `:authority` is one h2 takes (or there
//! is none), every byte of the connection passes through as it came. If not, every header block
//! of the connection is decoded (HPACK, with the client's dynamic table) and re-encoded without
//! the bad `:authority`, as literals that never touch h2's dynamic table, so that h2's decoder
//! needs nothing of the client's: padding is dropped, priority kept, a block larger than a
//! frame split over CONTINUATION frames. Every other frame passes through. A connection whose
//! bytes cannot be read as HTTP/2 (no preface, a header block that does not decode, a broken
//! frame sequence) is passed through from there on, for h2 to refuse as it would.
//!
//! Knows HTTP/2 framing and HPACK; nothing of gRPC or Chime.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, BufMut, BytesMut};
use loona_hpack::{Decoder, encoder::encode_integer_into};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts, and so the largest frame written here.
const FRAME_MAX: usize = 16_384;
/// The largest header block (all its frames) mended; a larger one passes through.
const BLOCK_MAX: usize = 256 * 1024;
/// h2's SETTINGS_HEADER_TABLE_SIZE (its default, which the gateway keeps): the most the client's
/// encoder may use.
const TABLE_SIZE: usize = 4096;

/// Whether h2 takes `value` as an `:authority`.
pub fn acceptable(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Reading the preface; this many bytes of it seen.
    Preface(usize),
    /// No header block seen yet: the first decides.
    Undecided,
    /// Header blocks are re-encoded.
    Mending,
    /// Every byte passes through as it came.
    Through,
}

/// A header block being gathered over HEADERS and CONTINUATION frames.
#[derive(Debug)]
struct Block {
    /// The frames as they came, for when the block passes through.
    raw: BytesMut,
    fragment: BytesMut,
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    /// A frame with END_HEADERS has come.
    complete: bool,
}

/// The byte-level mender of one connection's client-to-server bytes: fed what the client sent,
/// it gives what h2 reads. No I/O, so it is tested and fuzzed on its own.
pub struct Mender {
    mode: Mode,
    input: BytesMut,
    /// Bytes of a frame passing through still to come.
    passing: usize,
    block: Option<Block>,
    decoder: Decoder<'static>,
    /// A header block has been re-encoded on this connection.
    mended: bool,
}

impl Default for Mender {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            mode: Mode::Preface(0),
            input: BytesMut::new(),
            passing: 0,
            block: None,
            decoder,
            mended: false,
        }
    }
}

impl std::fmt::Debug for Mender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mender")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Mender {
    /// Takes `bytes` from the client and appends to `out` what h2 may read now.
    pub fn feed(&mut self, bytes: &[u8], out: &mut BytesMut) {
        self.input.extend_from_slice(bytes);
        while self.step(out) {}
    }

    /// The client closed its side: whatever is held passes through as it came.
    pub fn finish(&mut self, out: &mut BytesMut) {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        out.extend_from_slice(&self.input.split());
    }

    /// Whether the connection's header blocks are being re-encoded.
    pub fn mending(&self) -> bool {
        self.mode == Mode::Mending
    }

    /// Whether a header block of the connection has been re-encoded.
    pub fn mended(&self) -> bool {
        self.mended
    }

    /// Moves what it can from the input to `out`; false when it needs more input.
    fn step(&mut self, out: &mut BytesMut) -> bool {
        if self.input.is_empty() {
            return false;
        }
        match self.mode {
            Mode::Through => {
                out.extend_from_slice(&self.input.split());
                false
            }
            Mode::Preface(seen) => {
                let n = (PREFACE.len() - seen).min(self.input.len());
                if self.input[..n] != PREFACE[seen..seen + n] {
                    self.mode = Mode::Through;
                    return true;
                }
                out.extend_from_slice(&self.input.split_to(n));
                self.mode = if seen + n == PREFACE.len() {
                    Mode::Undecided
                } else {
                    Mode::Preface(seen + n)
                };
                true
            }
            Mode::Undecided | Mode::Mending if self.passing > 0 => {
                let n = self.passing.min(self.input.len());
                out.extend_from_slice(&self.input.split_to(n));
                self.passing -= n;
                true
            }
            Mode::Undecided | Mode::Mending => self.frame(out),
        }
    }

    /// Handles the frame at the head of the input, if its header (and, for a header block, its
    /// payload) is there.
    fn frame(&mut self, out: &mut BytesMut) -> bool {
        if self.input.len() < HEADER_LEN {
            return false;
        }
        let len =
            usize::from(self.input[0]) << 16 | usize::from(self.input[1]) << 8 | usize::from(self.input[2]);
        let kind = self.input[3];
        if kind != HEADERS && kind != CONTINUATION {
            if self.block.is_some() {
                // Only CONTINUATION may follow an unfinished block: h2 will say so.
                self.pass_through(out);
                return true;
            }
            out.extend_from_slice(&self.input.split_to(HEADER_LEN));
            self.passing = len;
            return true;
        }
        let pending = self.block.as_ref().map_or(0, |b| b.raw.len());
        if pending + HEADER_LEN + len > BLOCK_MAX {
            self.pass_through(out);
            return true;
        }
        if self.input.len() < HEADER_LEN + len {
            return false;
        }
        let frame = self.input.split_to(HEADER_LEN + len);
        if self.gather(&frame).is_none() {
            self.pass_through(out);
            out.extend_from_slice(&frame);
            return true;
        }
        if let Some(block) = self.block.take_if(|b| b.complete) {
            self.block_done(block, out);
        }
        true
    }

    /// Adds a HEADERS or CONTINUATION frame to the block; `None` when the sequence is broken.
    fn gather(&mut self, frame: &[u8]) -> Option<()> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let mut payload = &frame[HEADER_LEN..];
        match (kind, self.block.as_mut()) {
            (HEADERS, None) => {
                let pad = if flags & PADDED != 0 {
                    let (&pad, rest) = payload.split_first()?;
                    payload = rest;
                    usize::from(pad)
                } else {
                    0
                };
                let priority = if flags & PRIORITY != 0 {
                    let (head, rest) = payload.split_first_chunk::<5>()?;
                    payload = rest;
                    Some(*head)
                } else {
                    None
                };
                let fragment = payload.get(..payload.len().checked_sub(pad)?)?;
                self.block = Some(Block {
                    raw: BytesMut::new(),
                    fragment: BytesMut::from(fragment),
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    complete: false,
                });
            }
            (CONTINUATION, Some(block)) if block.stream == stream => {
                block.fragment.extend_from_slice(payload);
            }
            _ => return None,
        }
        let block = self.block.as_mut().expect("set above");
        block.raw.extend_from_slice(frame);
        block.complete = flags & END_HEADERS != 0;
        Some(())
    }

    /// A whole header block: decided, mended or passed through.
    fn block_done(&mut self, block: Block, out: &mut BytesMut) {
        let mut headers = Vec::new();
        let decoded = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            headers.push((name.into_owned(), value.into_owned()));
        });
        if decoded.is_err() {
            out.extend_from_slice(&block.raw);
            self.mode = Mode::Through;
            return;
        }
        let bad = |(name, value): &(Vec<u8>, Vec<u8>)| name == b":authority" && !acceptable(value);
        if self.mode == Mode::Undecided {
            if !headers.iter().any(bad) {
                out.extend_from_slice(&block.raw);
                self.mode = Mode::Through;
                return;
            }
            self.mode = Mode::Mending;
        }
        headers.retain(|h| !bad(h));
        write_block(&block, &headers, out);
        self.mended = true;
    }

    /// Passes what is held, and everything after, through as it came.
    fn pass_through(&mut self, out: &mut BytesMut) {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        self.mode = Mode::Through;
    }
}

/// Encodes `headers` as literals without indexing (RFC 7541 section 6.2.2) in HEADERS and
/// CONTINUATION frames of at most `FRAME_MAX` bytes.
fn write_block(block: &Block, headers: &[(Vec<u8>, Vec<u8>)], out: &mut BytesMut) {
    let mut fragment = Vec::new();
    for (name, value) in headers {
        fragment.push(0);
        literal(name, &mut fragment);
        literal(value, &mut fragment);
    }
    let mut rest = &fragment[..];
    let room = FRAME_MAX - if block.priority.is_some() { 5 } else { 0 };
    let (first, after) = rest.split_at(room.min(rest.len()));
    rest = after;
    let mut flags = if block.end_stream { END_STREAM } else { 0 };
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
    frame_header(priority.len() + first.len(), HEADERS, flags, block.stream, out);
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(FRAME_MAX.min(rest.len()));
        rest = after;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        frame_header(chunk.len(), CONTINUATION, flags, block.stream, out);
        out.extend_from_slice(chunk);
    }
}

/// A string literal, not Huffman-coded.
fn literal(bytes: &[u8], out: &mut Vec<u8>) {
    encode_integer_into(bytes.len(), 7, 0, out).expect("writing to a Vec cannot fail");
    out.extend_from_slice(bytes);
}

fn frame_header(len: usize, kind: u8, flags: u8, stream: u32, out: &mut BytesMut) {
    let len = u32::try_from(len).expect("at most FRAME_MAX");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// A Unix-socket connection whose client-to-server bytes pass through a [`Mender`].
#[derive(Debug)]
pub struct Mended<S> {
    inner: S,
    mender: Mender,
    ready: BytesMut,
    eof: bool,
}

impl<S> Mended<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            mender: Mender::default(),
            ready: BytesMut::new(),
            eof: false,
        }
    }

    /// The connection inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Mended<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    this.eof = true;
                    this.mender.finish(&mut this.ready);
                }
                Poll::Ready(Ok(())) => this.mender.feed(read.filled(), &mut this.ready),
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Mended<S> {
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

impl tonic::transport::server::Connected for Mended<tokio::net::UnixStream> {
    type ConnectInfo = tonic::transport::server::UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
#[path = "authority_tests.rs"]
mod tests;
