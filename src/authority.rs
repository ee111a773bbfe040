//! Transport, between an accepted Unix-socket connection and h2: mends the HTTP/2 `:authority`
//! that many gRPC clients send over a Unix socket (grpcio >= 1.57, grpc-java, grpcurl,
//! grpc-swift: the socket's path, raw or percent-encoded), which h2 refuses as malformed
//! (PROTOCOL_ERROR on the stream). The gateway routes nothing by authority, so such a value is
//! treated as absent (docs/design.md).
//!
//! The first header block of a connection decides. If its `:authority` is one h2 takes (or there
//! is none), every byte of the connection passes through as it came. If not, every header block
//! of the connection is decoded (HPACK, with the client's dynamic table) and re-encoded without
//! the bad `:authority`, as literals that never touch h2's dynamic table (a never-indexed field
//! stays never-indexed), so that h2's decoder needs nothing of the client's: padding is
//! dropped, priority kept, a block larger than a frame split over CONTINUATION frames. Every
//! other frame passes through. A connection whose bytes cannot be read as HTTP/2 (no preface, a
//! header block that does not decode, a broken frame sequence) is passed through from there on,
//! for h2 to refuse as it would.
//!
//! It stays within the limits the server gives h2 ([`Limits`]), so that a client's bytes cost
//! no more here than h2 lets them cost over TCP: a header block is held only up to the header
//! list cap (encoded), its fields are counted as HTTP/2 counts them (`name + value + 32`) while
//! it is decoded, never copied out, and a block at or over the cap is refused by h2 as over TCP:
//! the first block goes to h2 as it came; a later one on a mended connection, which could name
//! entries of the client's table that h2 never saw, is written as a block that h2 counts at the
//! cap. A block written is never larger than the cap.
//!
//! Knows HTTP/2 framing and HPACK; nothing of gRPC or Chime.

use std::{
    borrow::Cow,
    io,
    ops::Range,
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
/// The frame size every HTTP/2 peer accepts (RFC 9113 section 4.2), and so the largest frame
/// written here.
const FRAME_MAX: usize = 16_384;
/// What HTTP/2 adds to each field's name and value when it counts a header list (RFC 9113
/// section 6.5.2).
const FIELD_OVERHEAD: usize = 32;

/// The limits h2 is given where the server is built (`server.rs`); the mender reads these, never
/// its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// SETTINGS_MAX_HEADER_LIST_SIZE: the largest header list h2 takes, counted as HTTP/2 counts
    /// it. No block is held or written larger, encoded or decoded.
    pub max_header_list_size: usize,
    /// SETTINGS_HEADER_TABLE_SIZE: the most the client's HPACK encoder may use for its dynamic
    /// table.
    pub header_table_size: usize,
}

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
    /// The frames as they came: what passes through when the block is not mended.
    raw: BytesMut,
    /// Where each frame's piece of the HPACK block lies in `raw`.
    pieces: Vec<Range<usize>>,
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    /// A frame with END_HEADERS has come.
    complete: bool,
}

impl Block {
    /// The HPACK block: borrowed from `raw` when it came in one frame, as nearly all do.
    fn fragment(&self) -> Cow<'_, [u8]> {
        match &self.pieces[..] {
            [one] => Cow::Borrowed(&self.raw[one.clone()]),
            pieces => Cow::Owned(
                pieces
                    .iter()
                    .flat_map(|r| &self.raw[r.clone()])
                    .copied()
                    .collect(),
            ),
        }
    }
}

/// The byte-level mender of one connection's client-to-server bytes: fed what the client sent,
/// it gives what h2 reads. No I/O, so it is tested and fuzzed on its own.
pub struct Mender {
    limits: Limits,
    mode: Mode,
    input: BytesMut,
    /// Bytes of a frame passing through still to come.
    passing: usize,
    block: Option<Block>,
    decoder: Decoder<'static>,
    /// A header block has been re-encoded on this connection.
    mended: bool,
}

impl std::fmt::Debug for Mender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mender")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// An HPACK decoder in the state of a new connection whose server advertised `limits`.
fn decoder(limits: Limits) -> Decoder<'static> {
    let mut decoder = Decoder::new();
    decoder.set_max_allowed_table_size(limits.header_table_size);
    decoder.set_max_table_size(limits.header_table_size);
    decoder
}

impl Mender {
    /// A mender for a new connection to a server that gives h2 `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            mode: Mode::Preface(0),
            input: BytesMut::new(),
            passing: 0,
            block: None,
            decoder: decoder(limits),
            mended: false,
        }
    }

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

    /// Whether every byte from now on passes through as it comes, and none is held.
    pub fn through(&self) -> bool {
        self.mode == Mode::Through && self.input.is_empty()
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
        let held = self.block.as_ref().map_or(0, |b| b.raw.len());
        if held + HEADER_LEN + len > self.limits.max_header_list_size {
            // No block within the cap is this long: h2 applies its own limits to the rest.
            self.pass_through(out);
            return true;
        }
        if self.input.len() < HEADER_LEN + len {
            return false;
        }
        let frame = self.input.split_to(HEADER_LEN + len);
        if let Err(frame) = self.gather(frame) {
            self.pass_through(out);
            out.extend_from_slice(&frame);
            return true;
        }
        if let Some(block) = self.block.take_if(|b| b.complete) {
            self.block_done(block, out);
        }
        true
    }

    /// Adds a HEADERS or CONTINUATION frame to the block; gives the frame back when the sequence
    /// is broken.
    fn gather(&mut self, frame: BytesMut) -> Result<(), BytesMut> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let piece = match (kind, &self.block) {
            (HEADERS, None) => {
                let Some((priority, piece)) = headers_payload(flags, &frame[HEADER_LEN..]) else {
                    return Err(frame);
                };
                self.block = Some(Block {
                    raw: BytesMut::new(),
                    pieces: Vec::new(),
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    complete: false,
                });
                HEADER_LEN + piece.start..HEADER_LEN + piece.end
            }
            (CONTINUATION, Some(block)) if block.stream == stream => HEADER_LEN..frame.len(),
            _ => return Err(frame),
        };
        let block = self.block.as_mut().expect("set above");
        let at = block.raw.len();
        block.pieces.push(at + piece.start..at + piece.end);
        if at == 0 {
            block.raw = frame;
        } else {
            block.raw.extend_from_slice(&frame);
        }
        block.complete = flags & END_HEADERS != 0;
        Ok(())
    }

    /// A whole header block: decided, mended or passed through.
    fn block_done(&mut self, block: Block, out: &mut BytesMut) {
        let fragment = block.fragment();
        if self.mode == Mode::Undecided {
            // The first block: the client's table is still empty, so a fresh decoder reads it as
            // the client meant it, and `self.decoder` stays ready to mend it.
            match Fields::count(&mut decoder(self.limits), &fragment, self.limits) {
                Some(fields) if fields.bad_authority && fields.size < self.limits.max_header_list_size => {
                    self.mode = Mode::Mending;
                }
                _ => {
                    out.extend_from_slice(&block.raw);
                    self.mode = Mode::Through;
                    return;
                }
            }
        }
        let mut encoded = Vec::new();
        match Fields::mend(&mut self.decoder, &fragment, self.limits, &mut encoded) {
            None => {
                out.extend_from_slice(&block.raw);
                self.mode = Mode::Through;
            }
            Some(fields) if fields.size >= self.limits.max_header_list_size => {
                // As it came, it could name entries of the client's table that h2 never saw.
                write_block(&block, &oversize(self.limits), out);
            }
            Some(_) => {
                write_block(&block, &encoded, out);
                self.mended = true;
            }
        }
    }

    /// Passes what is held, and everything after, through as it came.
    fn pass_through(&mut self, out: &mut BytesMut) {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        self.mode = Mode::Through;
    }
}

/// A header block that h2, with its own empty table, counts at the cap and so refuses (431 and
/// REFUSED_STREAM), as it refuses over TCP the client's block it stands for: one-byte references
/// to a static-table field.
fn oversize(limits: Limits) -> Vec<u8> {
    /// `accept-encoding: gzip, deflate` (RFC 7541 appendix A), which counts 60 bytes.
    const FIELD: (u8, usize) = (0x80 | 16, 15 + 13 + FIELD_OVERHEAD);
    vec![FIELD.0; limits.max_header_list_size.div_ceil(FIELD.1)]
}

/// The priority and where the HPACK piece lies in a HEADERS frame's payload; `None` when its
/// padding or priority does not fit.
fn headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, Range<usize>)> {
    let (pad, mut start) = if flags & PADDED != 0 {
        (usize::from(*payload.first()?), 1)
    } else {
        (0, 0)
    };
    let priority = if flags & PRIORITY != 0 {
        let head = payload.get(start..start + 5)?;
        start += 5;
        Some(head.try_into().expect("five bytes"))
    } else {
        None
    };
    let end = payload.len().checked_sub(pad)?;
    (start <= end).then_some((priority, start..end))
}

/// What decoding a header block found.
#[derive(Debug, Default)]
struct Fields {
    /// The header list's size as HTTP/2 counts it.
    size: usize,
    /// It has an `:authority` h2 refuses.
    bad_authority: bool,
}

impl Fields {
    /// Decodes `fragment` and counts its fields, copying none; `None` when it does not decode.
    fn count(decoder: &mut Decoder<'static>, fragment: &[u8], limits: Limits) -> Option<Self> {
        Self::mend(decoder, fragment, limits, &mut Vec::new())
    }

    /// Decodes `fragment`, counting its fields, and appends to `encoded` each field but a bad
    /// `:authority` as a literal that leaves h2's table alone, while the list stays under the cap
    /// (past it, nothing more is written). `None` when the block does not decode.
    fn mend(
        decoder: &mut Decoder<'static>,
        fragment: &[u8],
        limits: Limits,
        encoded: &mut Vec<u8>,
    ) -> Option<Self> {
        let mut never_indexed = NeverIndexed::new(fragment);
        let mut fields = Self::default();
        decoder
            .decode_with_cb(fragment, |name, value| {
                let never = never_indexed.next().unwrap_or(true);
                fields.size += name.len() + value.len() + FIELD_OVERHEAD;
                let bad = &*name == b":authority" && !acceptable(&value);
                fields.bad_authority |= bad;
                if !bad && fields.size < limits.max_header_list_size {
                    encoded.push(if never { 0x10 } else { 0 });
                    literal(&name, encoded);
                    literal(&value, encoded);
                }
            })
            .ok()?;
        never_indexed.valid.then_some(fields)
    }
}

/// Which fields of an HPACK block, in order, are never-indexed (RFC 7541 section 6.2.3): what
/// the decoder's callback does not say. It walks the representations without decoding them.
struct NeverIndexed<'a> {
    rest: &'a [u8],
    /// A field has been seen: a table size update may no longer come (RFC 7541 section 4.2).
    field_seen: bool,
    /// Nothing h2 would refuse has been found.
    valid: bool,
}

impl<'a> NeverIndexed<'a> {
    fn new(block: &'a [u8]) -> Self {
        Self {
            rest: block,
            field_seen: false,
            valid: true,
        }
    }

    /// An HPACK integer with a prefix of `bits` bits (RFC 7541 section 5.1).
    fn integer(&mut self, bits: u32) -> Option<usize> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        let max = (1usize << bits) - 1;
        let mut value = usize::from(first) & max;
        if value < max {
            return Some(value);
        }
        for shift in (0..28).step_by(7) {
            let (&byte, rest) = self.rest.split_first()?;
            self.rest = rest;
            value += usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// Skips a string literal (RFC 7541 section 5.2).
    fn string(&mut self) -> Option<()> {
        let len = self.integer(7)?;
        self.rest = self.rest.get(len..)?;
        Some(())
    }

    fn field(&mut self) -> Option<bool> {
        loop {
            let first = *self.rest.first()?;
            if first & 0x80 != 0 {
                self.integer(7)?;
            } else if first & 0xe0 == 0x20 {
                self.integer(5)?;
                if self.field_seen {
                    return None;
                }
                continue;
            } else {
                let index = self.integer(if first & 0x40 != 0 { 6 } else { 4 })?;
                if index == 0 {
                    self.string()?;
                }
                self.string()?;
            }
            self.field_seen = true;
            return Some(first & 0xf0 == 0x10);
        }
    }
}

impl Iterator for NeverIndexed<'_> {
    type Item = bool;

    fn next(&mut self) -> Option<bool> {
        let field = self.field();
        self.valid &= field.is_some();
        field
    }
}

/// Writes the re-encoded `fragment` of `block` in HEADERS and CONTINUATION frames of at most
/// `FRAME_MAX` bytes.
fn write_block(block: &Block, fragment: &[u8], out: &mut BytesMut) {
    let mut rest = fragment;
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
    /// Wraps an accepted connection to a server that gives h2 `limits`.
    pub fn new(inner: S, limits: Limits) -> Self {
        Self {
            inner,
            mender: Mender::new(limits),
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
            if this.mender.through() {
                // Nothing more to mend: the bytes go straight to h2's buffer.
                return Pin::new(&mut this.inner).poll_read(cx, buf);
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
