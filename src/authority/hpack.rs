//! The HPACK side of the `:authority` mender: decoding a header block while counting its fields
//! as HTTP/2 counts them, without copying them out, and writing what is kept as literals that
//! leave h2's dynamic table alone (a never-indexed field stays never-indexed).

use loona_hpack::{Decoder, encoder::encode_integer_into};

use super::{Limits, acceptable};

/// What HTTP/2 adds to each field's name and value when it counts a header list (RFC 9113
/// section 6.5.2).
const FIELD_OVERHEAD: usize = 32;

/// An HPACK decoder in the state of a new connection whose server advertised `limits`.
pub(super) fn decoder(limits: Limits) -> Decoder<'static> {
    let mut decoder = Decoder::new();
    decoder.set_max_allowed_table_size(limits.header_table_size);
    decoder.set_max_table_size(limits.header_table_size);
    decoder
}

/// A header block that h2, with its own empty table, counts at the cap and so refuses (431 and
/// REFUSED_STREAM), as it refuses over TCP the client's block it stands for: one-byte references
/// to a static-table field.
pub(super) fn oversize(limits: Limits) -> Vec<u8> {
    /// `accept-encoding: gzip, deflate` (RFC 7541 appendix A), which counts 60 bytes.
    const FIELD: (u8, usize) = (0x80 | 16, 15 + 13 + FIELD_OVERHEAD);
    vec![FIELD.0; limits.max_header_list_size.div_ceil(FIELD.1)]
}

/// What decoding a header block found.
#[derive(Debug, Default)]
pub(super) struct Fields {
    /// The header list's size as HTTP/2 counts it.
    pub(super) size: usize,
    /// It has an `:authority` h2 refuses.
    pub(super) bad_authority: bool,
}

impl Fields {
    /// Decodes `fragment` and counts its fields, copying none; `None` when it does not decode.
    pub(super) fn count(decoder: &mut Decoder<'static>, fragment: &[u8], limits: Limits) -> Option<Self> {
        Self::mend(decoder, fragment, limits, &mut Vec::new())
    }

    /// Decodes `fragment`, counting its fields, and appends to `encoded` each field but a bad
    /// `:authority` as a literal that leaves h2's table alone, while the list stays under the cap
    /// (past it, nothing more is written). `None` when the block does not decode.
    pub(super) fn mend(
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

/// A string literal, not Huffman-coded.
pub(super) fn literal(bytes: &[u8], out: &mut Vec<u8>) {
    encode_integer_into(bytes.len(), 7, 0, out).expect("writing to a Vec cannot fail");
    out.extend_from_slice(bytes);
}
