//! What a backend's TIME_WAIT will compare a new SYN against: the sequence numbers and TCP
//! timestamp (and acknowledgement) of segments that open or close a flow (SYN, FIN), read into
//! the per-CPU scratch.
//! Other segments skip this step (one flags test).
//!
//! When the backend closed first, its TIME_WAIT for the 4-tuple refuses a SYN with an older
//! timestamp, or without timestamps a lower sequence number
//! (`mlb_common::ct::time_wait_accepts_syn`). Full NAT reuses a SNAT port for other clients,
//! whose ISNs and timestamp offsets are random per 4-tuple: the SNAT search uses these values
//! to pass over ports whose backend would refuse the SYN.
use aya_ebpf::programs::XdpContext;
use mlb_common::net::{IPPROTO_TCP, tcp};

use crate::{
    maps::Scratch,
    parse::{PacketMeta, ptr_at},
};

/// Options a search walks before giving up on finding the timestamp (Linux puts it first in
/// data segments, after MSS and SACK_PERM in a SYN).
const MAX_OPTIONS: usize = 10;
const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_TIMESTAMP: u8 = 8;
const OPT_TIMESTAMP_LEN: u8 = 10;

/// For a TCP SYN or FIN: its sequence number, the one after it (`seg_seq_end`) and its
/// timestamp into `scratch` (`seg_ts_ok` says whether it had one).
#[inline(always)]
pub fn read_segment(ctx: &XdpContext, meta: &PacketMeta, scratch: &mut Scratch) {
    scratch.seg_ts_ok = 0;
    if meta.proto != IPPROTO_TCP || meta.tcp_flags & (tcp::SYN | tcp::FIN) == 0 {
        return;
    }
    let l4 = meta.l4_off;
    let Some(p) = ptr_at::<[u8; tcp::HLEN_MIN]>(ctx, l4) else {
        return;
    };
    // SAFETY: `ptr_at` checked the fixed TCP header is inside the packet.
    let hdr = unsafe { core::ptr::read_unaligned(p) };
    let seq = u32::from_be_bytes([
        hdr[tcp::SEQ],
        hdr[tcp::SEQ + 1],
        hdr[tcp::SEQ + 2],
        hdr[tcp::SEQ + 3],
    ]);
    let hlen = usize::from(hdr[tcp::DOFF] >> 4) * 4;
    let headers = l4 - meta.l3_off + hlen;
    let payload = usize::from(meta.ip_len).saturating_sub(headers) as u32;
    // SYN and FIN each take one sequence number.
    let flags =
        u32::from(meta.tcp_flags & tcp::SYN != 0) + u32::from(meta.tcp_flags & tcp::FIN != 0);
    scratch.seg_seq = seq;
    scratch.seg_ack = if meta.tcp_flags & tcp::ACK != 0 {
        u32::from_be_bytes([
            hdr[tcp::ACK_SEQ],
            hdr[tcp::ACK_SEQ + 1],
            hdr[tcp::ACK_SEQ + 2],
            hdr[tcp::ACK_SEQ + 3],
        ])
    } else {
        0
    };
    scratch.seg_seq_end = seq.wrapping_add(payload).wrapping_add(flags);
    if let Some(ts) = timestamp(ctx, l4 + tcp::HLEN_MIN, l4 + hlen) {
        scratch.seg_ts = ts;
        scratch.seg_ts_ok = 1;
    }
}

/// TSval of the timestamp option among the options from `off` to `end`, if there is one.
#[inline(always)]
fn timestamp(ctx: &XdpContext, mut off: usize, end: usize) -> Option<u32> {
    for _ in 0..MAX_OPTIONS {
        if off >= end {
            return None;
        }
        // Kind and length together: a one-byte bounds check compiles to a form the verifier
        // does not take as proof. (A NOP as the packet's very last byte ends the walk: fine.)
        let p = ptr_at::<[u8; 2]>(ctx, off)?;
        // SAFETY: `ptr_at` checked the two bytes are inside the packet.
        let [kind, len] = unsafe { *p };
        match kind {
            OPT_EOL => return None,
            OPT_NOP => {
                off += 1;
                continue;
            }
            OPT_TIMESTAMP if len == OPT_TIMESTAMP_LEN => {
                let p = ptr_at::<[u8; 4]>(ctx, off + 2)?;
                // SAFETY: `ptr_at` checked the four bytes are inside the packet.
                return Some(u32::from_be_bytes(unsafe { *p }));
            }
            _ if len < 2 => return None,
            _ => off += usize::from(len),
        }
    }
    None
}
