//! An HTTP/1 head as `httparse` finds it in a read buffer, for mlb's own server (requests) and
//! its backend client (responses): parsed into uninitialised header slots, and copied out once,
//! the parts a message keeps (target, header values) being slices of that one copy instead of
//! an allocation and a copy each. The read buffer stays its connection's, to be reused.
use std::mem::MaybeUninit;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Most header lines of a head (hyper's limit: more get hyper's 431, or are a bad response).
pub(crate) const MAX_HEADERS: usize = 100;

/// Header slots for `httparse`'s `parse_*_with_uninit_headers`: uninitialised, because it
/// writes the slots it uses, and zeroing all of them (3 KiB) cost more than parsing a typical
/// head.
#[inline]
pub(crate) fn header_slots<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// A complete head at the start of a read buffer, copied out once.
pub(crate) struct SharedHead<'a> {
    buf: &'a [u8],
    head: Bytes,
}

impl<'a> SharedHead<'a> {
    /// The first `len` bytes of `buf` (the head `httparse` parsed in it).
    pub(crate) fn copy(buf: &'a [u8], len: usize) -> Self {
        SharedHead {
            buf,
            head: Bytes::copy_from_slice(&buf[..len]),
        }
    }

    /// `part`, a slice of the head in the read buffer, as the same bytes of the copy.
    pub(crate) fn slice(&self, part: &[u8]) -> Bytes {
        let start = part.as_ptr() as usize - self.buf.as_ptr() as usize;
        self.head.slice(start..start + part.len())
    }

    /// The `headers` `httparse` found in this head that `keep` keeps (by name), as a map
    /// whose values are slices of the copy.
    pub(crate) fn map(
        &self,
        headers: &[httparse::Header<'_>],
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<HeaderMap, String> {
        let mut map = HeaderMap::with_capacity(headers.len());
        for h in headers.iter().filter(|h| keep(h.name.as_bytes())) {
            let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|e| e.to_string())?;
            let value =
                HeaderValue::from_maybe_shared(self.slice(h.value)).map_err(|e| e.to_string())?;
            map.append(name, value);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_of_the_buffer_is_the_same_bytes_of_the_copy() {
        let buf = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nnext request";
        let head = SharedHead::copy(buf, 28);
        assert_eq!(head.slice(&buf[4..6]), "/a");
        assert_eq!(head.slice(&buf[23..24]), "x");
    }
}
