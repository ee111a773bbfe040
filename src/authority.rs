//! Transport, between an accepted Unix-socket connection and h2: mends the HTTP/2 `:authority`
//! that many gRPC clients send over a Unix socket (grpcio >= 1.57, grpc-java, grpcurl,
//! grpc-swift: the socket's path, raw or percent-encoded), which h2 refuses as malformed
//! (PROTOCOL_ERROR on the stream). The gateway routes nothing by authority, so such a value is
//! treated as absent (docs/design.md §1).
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
//! This file reads the frames and decides; `hpack` decodes, counts and re-encodes a block;
//! `stream` puts the mender on a connection. Knows HTTP/2 framing and HPACK; nothing of gRPC or
//! Chime.

use std::{borrow::Cow, ops::Range};

use bytes::{BufMut, BytesMut};
use loona_hpack::Decoder;

use hpack::{Fields, decoder, oversize};
pub use stream::Mended;

mod hpack;
mod stream;

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

fn frame_header(len: usize, kind: u8, flags: u8, stream: u32, out: &mut BytesMut) {
    let len = u32::try_from(len).expect("at most FRAME_MAX");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

#[cfg(test)]
#[path = "authority_tests.rs"]
mod tests;
