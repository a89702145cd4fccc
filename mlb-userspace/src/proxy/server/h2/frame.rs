//! HTTP/2 frames (RFC 9113 §4, §6): the 9-byte header, the types, flags, error codes and
//! settings the server reads and writes, in one place.

/// Length of a frame header.
pub(super) const HEADER_LEN: usize = 9;
/// The smallest `SETTINGS_MAX_FRAME_SIZE`, and the largest frame this server accepts.
pub(super) const DEFAULT_MAX_FRAME: usize = 16_384;
/// Every window starts at this size (§6.9.2).
pub(super) const DEFAULT_WINDOW: i64 = 65_535;
/// Largest window a flow-control credit may reach (§6.9.1).
pub(super) const MAX_WINDOW: i64 = (1 << 31) - 1;

/// Frame types (§6).
pub(super) mod kind {
    pub(in super::super) const DATA: u8 = 0x0;
    pub(in super::super) const HEADERS: u8 = 0x1;
    pub(in super::super) const PRIORITY: u8 = 0x2;
    pub(in super::super) const RST_STREAM: u8 = 0x3;
    pub(in super::super) const SETTINGS: u8 = 0x4;
    pub(in super::super) const PUSH_PROMISE: u8 = 0x5;
    pub(in super::super) const PING: u8 = 0x6;
    pub(in super::super) const GOAWAY: u8 = 0x7;
    pub(in super::super) const WINDOW_UPDATE: u8 = 0x8;
    pub(in super::super) const CONTINUATION: u8 = 0x9;
}

/// Frame flags (§6).
pub(super) mod flag {
    pub(in super::super) const END_STREAM: u8 = 0x1;
    pub(in super::super) const ACK: u8 = 0x1;
    pub(in super::super) const END_HEADERS: u8 = 0x4;
    pub(in super::super) const PADDED: u8 = 0x8;
    pub(in super::super) const PRIORITY: u8 = 0x20;
}

/// Error codes (§7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Reason {
    NoError = 0x0,
    Protocol = 0x1,
    Internal = 0x2,
    FlowControl = 0x3,
    StreamClosed = 0x5,
    FrameSize = 0x6,
    RefusedStream = 0x7,
    Compression = 0x9,
    EnhanceYourCalm = 0xb,
}

/// Settings (§6.5.2) this server reads or sends.
pub(super) mod setting {
    pub(in super::super) const HEADER_TABLE_SIZE: u16 = 0x1;
    pub(in super::super) const ENABLE_PUSH: u16 = 0x2;
    pub(in super::super) const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub(in super::super) const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub(in super::super) const MAX_FRAME_SIZE: u16 = 0x5;
    pub(in super::super) const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// A frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) len: usize,
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) stream: u32,
}

impl Head {
    /// The header at the start of `buf` (at least [`HEADER_LEN`] bytes).
    pub(super) fn parse(buf: &[u8]) -> Head {
        Head {
            len: usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]),
            kind: buf[3],
            flags: buf[4],
            // The reserved bit is ignored (§4.1).
            stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
        }
    }

    pub(super) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Appends a frame header.
pub(super) fn head(dst: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len < 1 << 24);
    dst.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    dst.extend_from_slice(&stream.to_be_bytes());
}

/// Appends a SETTINGS frame with `settings`.
pub(super) fn settings(dst: &mut Vec<u8>, settings: &[(u16, u32)]) {
    head(dst, settings.len() * 6, kind::SETTINGS, 0, 0);
    for (id, value) in settings {
        dst.extend_from_slice(&id.to_be_bytes());
        dst.extend_from_slice(&value.to_be_bytes());
    }
}

/// Appends a WINDOW_UPDATE frame.
pub(super) fn window_update(dst: &mut Vec<u8>, stream: u32, increment: u32) {
    head(dst, 4, kind::WINDOW_UPDATE, 0, stream);
    dst.extend_from_slice(&increment.to_be_bytes());
}

/// Appends a RST_STREAM frame.
pub(super) fn rst_stream(dst: &mut Vec<u8>, stream: u32, reason: Reason) {
    head(dst, 4, kind::RST_STREAM, 0, stream);
    dst.extend_from_slice(&(reason as u32).to_be_bytes());
}

/// Appends a GOAWAY frame: the last stream this server will have processed, and why.
pub(super) fn goaway(dst: &mut Vec<u8>, last_stream: u32, reason: Reason) {
    head(dst, 8, kind::GOAWAY, 0, 0);
    dst.extend_from_slice(&last_stream.to_be_bytes());
    dst.extend_from_slice(&(reason as u32).to_be_bytes());
}

/// The payload of a DATA or HEADERS frame without its padding (§6.1): `None` if the padding
/// is longer than the frame.
pub(super) fn unpadded(head: &Head, payload: &[u8]) -> Option<(usize, usize)> {
    if !head.has(flag::PADDED) {
        return Some((0, payload.len()));
    }
    let pad = usize::from(*payload.first()?);
    let end = payload.len().checked_sub(pad)?;
    (end >= 1).then_some((1, end))
}

/// A 31-bit number at the start of `payload` (a window increment, a stream id).
pub(super) fn u31(payload: &[u8]) -> u32 {
    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & 0x7fff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_header_parses_back() {
        let mut buf = Vec::new();
        head(&mut buf, 70_000, kind::HEADERS, flag::END_HEADERS, 7);
        assert_eq!(buf.len(), HEADER_LEN);
        let parsed = Head::parse(&buf);
        assert_eq!(
            parsed,
            Head {
                len: 70_000,
                kind: kind::HEADERS,
                flags: flag::END_HEADERS,
                stream: 7
            }
        );
        assert!(parsed.has(flag::END_HEADERS) && !parsed.has(flag::END_STREAM));
    }

    #[test]
    fn padding_is_cut_and_too_much_of_it_refused() {
        let padded = Head {
            len: 6,
            kind: kind::DATA,
            flags: flag::PADDED,
            stream: 1,
        };
        assert_eq!(
            unpadded(&padded, &[2, b'a', b'b', b'c', 0, 0]),
            Some((1, 4))
        );
        assert_eq!(unpadded(&padded, &[6, 0, 0, 0, 0, 0]), None);
        assert_eq!(unpadded(&padded, &[]), None);
    }
}
