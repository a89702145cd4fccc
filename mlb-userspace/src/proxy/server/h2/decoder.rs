//! HPACK decoding of request heads (RFC 7541): the static and dynamic tables, integers, and
//! Huffman-coded strings decoded a symbol at a time (not a bit at a time).
//!
//! Browsers send most of a request head as literals, many Huffman-coded (paths, cookies, which
//! are never indexed), so the Huffman decoder is on every request's path. The code is
//! canonical (RFC 7541 Appendix B): codes of one length are consecutive and ordered by symbol,
//! so the code lengths alone define it, and a symbol is found by comparing the next 32 bits
//! with one bound per length.
use std::collections::VecDeque;

use bytes::Bytes;

/// Why a header block cannot be decoded: the connection's decoding state is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DecodeError {
    /// The block ends inside a field.
    Truncated,
    /// An integer too large for any index, length or size.
    Integer,
    /// Index 0, or past both tables.
    Index,
    /// A Huffman string with EOS, or bad padding.
    Huffman,
    /// A table size update above the limit this server announced, or after a field.
    SizeUpdate,
}

/// The static table (Appendix A).
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Each symbol's Huffman code length (Appendix B; symbol 256 is EOS).
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

/// The canonical code's decoding bounds, made from [`CODE_LENGTHS`] at compile time.
struct Huffman {
    /// First code of each length.
    first: [u32; 31],
    /// Where each length's symbols start in `symbols`.
    offset: [u16; 31],
    /// One past the last code of each length, left-aligned in 32 bits (so the next 32 bits of
    /// input compare with it directly).
    limit: [u64; 31],
    /// Symbols ordered by (code length, symbol).
    symbols: [u16; 257],
}

const HUFFMAN: Huffman = huffman();

const fn huffman() -> Huffman {
    let mut count = [0u32; 31];
    let mut s = 0;
    while s < 257 {
        count[CODE_LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let mut h = Huffman {
        first: [0; 31],
        offset: [0; 31],
        limit: [0; 31],
        symbols: [0; 257],
    };
    let (mut code, mut at) = (0u32, 0u16);
    let mut len = 1;
    while len < 31 {
        h.first[len] = code;
        h.offset[len] = at;
        h.limit[len] = ((code + count[len]) as u64) << (32 - len);
        let mut s = 0;
        while s < 257 {
            if CODE_LENGTHS[s] as usize == len {
                h.symbols[at as usize] = s as u16;
                at += 1;
            }
            s += 1;
        }
        code = (code + count[len]) << 1;
        len += 1;
    }
    h
}

/// Appends the Huffman-decoded `src` to `out`.
fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    out.reserve(src.len() * 8 / 5);
    // The next input bits, left-aligned; `bits` of them are real.
    let (mut acc, mut bits, mut next) = (0u64, 0u32, 0usize);
    loop {
        while bits <= 56 && next < src.len() {
            acc |= u64::from(src[next]) << (56 - bits);
            bits += 8;
            next += 1;
        }
        if bits == 0 {
            return Ok(());
        }
        let window = acc >> 32;
        let mut len = 5;
        while len < 31 && window >= HUFFMAN.limit[len] {
            len += 1;
        }
        if len as u32 > bits {
            // What is left is padding: fewer than 8 bits, all ones (a prefix of EOS).
            let ones = (1u64 << bits) - 1;
            return match bits < 8 && acc >> (64 - bits) == ones {
                true => Ok(()),
                false => Err(DecodeError::Huffman),
            };
        }
        let code = (window >> (32 - len)) as u32;
        let symbol = HUFFMAN.symbols
            [usize::from(HUFFMAN.offset[len]) + (code - HUFFMAN.first[len]) as usize];
        if symbol == 256 {
            return Err(DecodeError::Huffman);
        }
        out.push(symbol as u8);
        acc <<= len;
        bits -= len as u32;
    }
}

/// An integer with a `prefix`-bit prefix at `*at` (§5.1); at most 2^28, plenty for any
/// index, length or table size.
fn integer(block: &[u8], at: &mut usize, prefix: u32) -> Result<usize, DecodeError> {
    let max = (1usize << prefix) - 1;
    let first = usize::from(*block.get(*at).ok_or(DecodeError::Truncated)?) & max;
    *at += 1;
    if first < max {
        return Ok(first);
    }
    let (mut value, mut shift) = (max, 0);
    loop {
        let b = *block.get(*at).ok_or(DecodeError::Truncated)?;
        *at += 1;
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 21 {
            return Err(DecodeError::Integer);
        }
    }
}

/// Where a decoded string is.
enum Str {
    /// In the block, at this range.
    Raw(std::ops::Range<usize>),
    /// Huffman-decoded into the decoder's scratch buffer, at this range.
    Decoded(std::ops::Range<usize>),
}

/// A request-head decoder: one per connection, its dynamic table following the client's.
pub(super) struct Decoder {
    /// Newest entry first.
    table: VecDeque<(Bytes, Bytes)>,
    /// The table's size (§4.1: each entry's name and value, plus 32).
    size: usize,
    /// The table's current maximum size (the client's last size update).
    max_size: usize,
    /// The most the client may set it to (this server's SETTINGS_HEADER_TABLE_SIZE).
    limit: usize,
    /// Huffman-decoded strings of the field being decoded.
    scratch: Vec<u8>,
}

impl Decoder {
    /// A decoder for the default table size of 4,096 bytes.
    pub(super) fn new() -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: 4096,
            limit: 4096,
            scratch: Vec::new(),
        }
    }

    /// Decodes `block`, giving each field to `field` as (name, value), in order.
    pub(super) fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), DecodeError> {
        let mut at = 0;
        let mut fields_seen = false;
        while at < block.len() {
            let first = block[at];
            if first & 0x80 != 0 {
                let index = integer(block, &mut at, 7)?;
                let (name, value) = self.entry(index)?;
                field(name, value);
            } else if first & 0xe0 == 0x20 {
                // A size update comes before the block's first field (§4.2).
                let size = integer(block, &mut at, 5)?;
                if fields_seen || size > self.limit {
                    return Err(DecodeError::SizeUpdate);
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Literals: with incremental indexing (01), without (0000) or never (0001).
                let (indexing, prefix) = if first & 0x40 != 0 {
                    (true, 6)
                } else {
                    (false, 4)
                };
                self.scratch.clear();
                let index = integer(block, &mut at, prefix)?;
                let name = match index {
                    0 => Some(self.string(block, &mut at)?),
                    _ => None,
                };
                let value = self.string(block, &mut at)?;
                let pick = |s: &Str| -> &[u8] {
                    match s {
                        Str::Raw(r) => &block[r.clone()],
                        Str::Decoded(r) => &self.scratch[r.clone()],
                    }
                };
                let value_bytes = pick(&value);
                let name_bytes: &[u8] = match &name {
                    Some(n) => pick(n),
                    None => self.entry(index)?.0,
                };
                field(name_bytes, value_bytes);
                if indexing {
                    let entry = (
                        Bytes::copy_from_slice(name_bytes),
                        Bytes::copy_from_slice(value_bytes),
                    );
                    self.insert(entry);
                }
            }
            fields_seen = true;
        }
        Ok(())
    }

    /// A string literal at `*at` (§5.2).
    fn string(&mut self, block: &[u8], at: &mut usize) -> Result<Str, DecodeError> {
        let huffman = block.get(*at).ok_or(DecodeError::Truncated)? & 0x80 != 0;
        let len = integer(block, at, 7)?;
        let end = at
            .checked_add(len)
            .filter(|&end| end <= block.len())
            .ok_or(DecodeError::Truncated)?;
        let raw = *at..end;
        *at = end;
        if !huffman {
            return Ok(Str::Raw(raw));
        }
        let start = self.scratch.len();
        huffman_decode(&block[raw], &mut self.scratch)?;
        Ok(Str::Decoded(start..self.scratch.len()))
    }

    /// The entry at `index` of the static then the dynamic table.
    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), DecodeError> {
        match index {
            0 => Err(DecodeError::Index),
            1..=61 => {
                let (name, value) = STATIC[index - 1];
                Ok((name.as_bytes(), value.as_bytes()))
            }
            _ => self
                .table
                .get(index - 62)
                .map(|(name, value)| (&name[..], &value[..]))
                .ok_or(DecodeError::Index),
        }
    }

    /// Adds an entry, evicting the oldest to make room (§4.4); one larger than the table
    /// empties it and is not added.
    fn insert(&mut self, entry: (Bytes, Bytes)) {
        let size = entry.0.len() + entry.1.len() + 32;
        self.evict(size);
        if size <= self.max_size {
            self.size += size;
            self.table.push_front(entry);
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit (or the table is empty).
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            let Some((name, value)) = self.table.pop_back() else {
                break;
            };
            self.size -= name.len() + value.len() + 32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Huffman-codes `s` with the canonical code of [`CODE_LENGTHS`] (what a client sends).
    fn huffman_encode(s: &[u8]) -> Vec<u8> {
        let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
        for &b in s {
            let len = CODE_LENGTHS[usize::from(b)];
            let at = HUFFMAN.symbols[usize::from(HUFFMAN.offset[usize::from(len)])..]
                .iter()
                .position(|&sym| sym == u16::from(b))
                .unwrap();
            let code = u64::from(HUFFMAN.first[usize::from(len)]) + at as u64;
            acc = acc << len | code;
            bits += u32::from(len);
            while bits >= 8 {
                out.push((acc >> (bits - 8)) as u8);
                bits -= 8;
            }
        }
        if bits > 0 {
            // Padded with the most significant bits of EOS (ones).
            out.push(((acc << (8 - bits)) as u8) | ((1u8 << (8 - bits)) - 1));
        }
        out
    }

    fn fields(decoder: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
        let mut out = Vec::new();
        decoder.decode(block, |n, v| {
            out.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ));
        })?;
        Ok(out)
    }

    #[test]
    fn the_huffman_code_is_rfc_7541s() {
        // Appendix C.4.1's example.
        let www = [
            0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
        ];
        assert_eq!(huffman_encode(b"www.example.com"), www);
        let mut out = Vec::new();
        huffman_decode(&www, &mut out).unwrap();
        assert_eq!(out, b"www.example.com");
        // Every byte, through this decoder and through another implementation's.
        let all: Vec<u8> = (0..=255).collect();
        let coded = huffman_encode(&all);
        out.clear();
        huffman_decode(&coded, &mut out).unwrap();
        assert_eq!(out, all);
        let theirs = loona_hpack::huffman::HuffmanDecoder::new()
            .decode(&coded)
            .unwrap();
        assert_eq!(theirs, all);
    }

    #[test]
    fn eos_and_bad_padding_are_refused() {
        let mut out = Vec::new();
        // 'a' (00011) then three zero bits: padding must be ones.
        assert_eq!(
            huffman_decode(&[0b0001_1000], &mut out),
            Err(DecodeError::Huffman)
        );
        // A whole byte of ones after a symbol: padding longer than 7 bits.
        assert_eq!(
            huffman_decode(&[0b0001_1111, 0xff], &mut out),
            Err(DecodeError::Huffman)
        );
        // EOS itself (30 ones), padded.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xff], &mut out),
            Err(DecodeError::Huffman)
        );
    }

    #[test]
    fn rfc_7541_request_examples_decode_with_their_table() {
        // Appendix C.4: three requests on one connection, Huffman-coded, the table carried over.
        let blocks: [&[u8]; 3] = [
            &[
                0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
                0x90, 0xf4, 0xff,
            ],
            &[
                0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
            ],
            &[
                0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f,
                0x89, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
            ],
        ];
        let mut d = Decoder::new();
        let first = fields(&mut d, blocks[0]).unwrap();
        assert_eq!(first[3], (":authority".into(), "www.example.com".into()));
        let second = fields(&mut d, blocks[1]).unwrap();
        assert_eq!(second[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(second[4], ("cache-control".into(), "no-cache".into()));
        let third = fields(&mut d, blocks[2]).unwrap();
        assert_eq!(third[1], (":scheme".into(), "https".into()));
        assert_eq!(third[2], (":path".into(), "/index.html".into()));
        assert_eq!(third[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(third[4], ("custom-key".into(), "custom-value".into()));
        assert_eq!(d.size, 164, "the table's size after C.4.3");
    }

    #[test]
    fn the_table_evicts_the_oldest_and_obeys_size_updates() {
        let mut d = Decoder::new();
        // Size update to 64: room for one 32+26-byte entry.
        let mut block = vec![0x3f, 0x21];
        let encoder_block =
            loona_hpack::Encoder::new().encode([(&b"x-a"[..], &b"0123456789012345678901"[..])]);
        block.extend_from_slice(&encoder_block);
        fields(&mut d, &block).unwrap();
        assert_eq!(d.table.len(), 1);
        let again =
            loona_hpack::Encoder::new().encode([(&b"x-b"[..], &b"0123456789012345678901"[..])]);
        fields(&mut d, &again).unwrap();
        assert_eq!(d.table.len(), 1, "the older entry made room");
        assert_eq!(fields(&mut d, &[0xbe]).unwrap()[0].0, "x-b");
        assert_eq!(fields(&mut d, &[0xbf]), Err(DecodeError::Index));
        // Above the announced limit, or after a field: refused.
        assert_eq!(
            fields(&mut d, &[0x3f, 0xe2, 0x1f]),
            Err(DecodeError::SizeUpdate)
        );
        assert_eq!(fields(&mut d, &[0x82, 0x20]), Err(DecodeError::SizeUpdate));
    }

    #[test]
    fn truncated_blocks_and_huge_integers_are_errors_not_panics() {
        let mut d = Decoder::new();
        assert_eq!(fields(&mut d, &[0x80]), Err(DecodeError::Index));
        assert_eq!(
            fields(&mut d, &[0x41, 0x85, 0xf1]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(fields(&mut d, &[0x00, 0x7f]), Err(DecodeError::Truncated));
        assert_eq!(
            fields(&mut d, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            Err(DecodeError::Integer)
        );
        for block in [&[0x40][..], &[0x10, 0x01], &[0x0f], &[0x3f]] {
            assert!(fields(&mut d, block).is_err(), "{block:?}");
        }
    }
}
