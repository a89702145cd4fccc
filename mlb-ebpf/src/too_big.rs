//! Packets too big for their next hop: answered like a router, with IPv4 "fragmentation
//! needed" (when the packet says don't fragment) or IPv6 "packet too big", carrying the next
//! hop's MTU, so the sender's path-MTU discovery works when the load balancer itself is the
//! bottleneck (its interface towards the backends, or the clients, has the smaller MTU).
//!
//! Left to the kernel instead, such a packet would be delivered to the VIP or SNAT address it
//! is addressed to, where no socket has its connection: a TCP reset. The answer comes from the
//! address the packet was sent to (the VIP for a client, the SNAT address for a backend),
//! quotes the packet as it arrived (the sender knows no other addresses), and goes back out of
//! the interface it came in on, MACs swapped. No ICMP error answers an ICMP packet.
//!
//! Back out through the devmap (`XDP_REDIRECT` to the ingress interface) when the interface is
//! in it, `XDP_TX` otherwise. On a veth the two differ: veth flushes `XDP_TX` frames to its
//! peer only when the peer runs an XDP program itself (`veth_xdp_flush`), so behind a peer
//! without one (a container's, a client's) the answer waits in the peer's ring until some
//! redirected packet flushes it; seconds, by which time the sender's TCP has timed out. A
//! redirect's flush needs only the peer's NAPI, which every veth mlb can forward into has.
//!
//! In place: the frame's head grows by the new IP and ICMP headers, its tail is cut after the
//! quote, the Ethernet header (and VLAN tag) moves to the new start. Checksums are computed
//! whole, over fixed-size headers and quote.
use aya_ebpf::{
    bindings::xdp_md,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len},
    programs::XdpContext,
};
use mlb_common::{
    net::{IPPROTO_ICMP, IPPROTO_ICMPV6, eth, icmp, ipv4, ipv6, vlan},
    stats::Counter,
    verdict::Verdict,
};

use crate::{
    exit::Exit,
    maps::TX_PORTS,
    parse::{Family, PacketMeta, ptr_at},
    rewrite::{load16, store16},
};

/// Bytes of the offending packet quoted, from its IP header on: the header (with IPv4
/// options up to 44 bytes) and the start of its TCP/UDP header, ports included. A packet too
/// big for any link has more.
const QUOTE: usize = 64;
/// Bytes summed for the ICMP checksum: its header and the quote.
const ICMP_LEN: usize = icmp::HLEN + QUOTE;
/// TTL / hop limit of the answer; precedence "internetwork control", as Linux sends errors.
const ANSWER_TTL: u8 = 64;
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

/// What [`answer`] did, as the subprogram's plain number.
const UNTOUCHED: u32 = 0;
const SENT: u32 = 1;
const BROKEN: u32 = 2;

/// Answers `meta`'s packet, too big for a next hop of MTU `mtu`, and says how it leaves: sent
/// back (`XDP_TX`), or passed untouched when it cannot be answered (no DF, ICMP, too short to
/// quote, no headroom).
#[inline(always)]
pub fn answer(ctx: &XdpContext, meta: &PacketMeta, mtu: u16) -> Exit {
    let untouched = Exit::Pass(Counter::PassFibFailed);
    if meta.is_icmp() {
        return untouched;
    }
    match send(ctx.ctx, meta, mtu) {
        SENT => Exit::Answered(Counter::IcmpTooBigSent, back_out(ctx)),
        UNTOUCHED => untouched,
        // A helper that cannot fail after the checks did.
        _ => Exit::Aborted,
    }
}

/// How an answer leaves by its ingress interface: redirected through the devmap when it is
/// there (flushed to a veth's peer like any redirect), else `XDP_TX`.
#[inline(always)]
fn back_out(ctx: &XdpContext) -> Verdict {
    if TX_PORTS.redirect(ctx.ingress_ifindex() as u32, 0).is_ok() {
        Verdict::Redirect
    } else {
        Verdict::Tx
    }
}

/// A BPF subprogram of its own (its stack frame is not live with the rest of the path); it
/// takes the context, never a packet pointer, and returns a plain number.
#[inline(never)]
fn send(ctx: *mut xdp_md, meta: &PacketMeta, mtu: u16) -> u32 {
    let ctx = XdpContext::new(ctx);
    match meta.family {
        Family::V4 => send_family::<{ ipv4::HLEN_MIN }>(&ctx, meta, u32::from(mtu)),
        Family::V6 => send_family::<{ ipv6::HLEN }>(&ctx, meta, u32::from(mtu)),
    }
}

/// The one's-complement sum of the `N` raw 16-bit words at `base`, folded.
///
/// # Safety
/// `base .. base + 2 * N` must be inside a checked range, at an even offset.
#[inline(always)]
unsafe fn sum_words<const N: usize>(base: *mut u8, mut sum: u32) -> u32 {
    for i in 0..N {
        // SAFETY: the caller's contract.
        sum += u32::from(unsafe { load16(base, i * 2) });
    }
    fold(sum)
}

#[inline(always)]
fn fold(mut sum: u32) -> u32 {
    sum = (sum & 0xFFFF) + (sum >> 16);
    (sum & 0xFFFF) + (sum >> 16)
}

/// The answer for one family; `IPH` is the new IP header's length (and the growth of the
/// frame's head, with the ICMP header).
#[inline(always)]
fn send_family<const IPH: usize>(ctx: &XdpContext, meta: &PacketMeta, mtu: u32) -> u32 {
    let v4 = meta.family == Family::V4;
    let l3 = meta.l3_off;
    let Some(ip) = ptr_at::<[u8; QUOTE]>(ctx, l3) else {
        return UNTOUCHED;
    };
    if v4 {
        // SAFETY: inside the checked quote.
        let frag = u16::from_be(unsafe { load16(ip.cast(), ipv4::FRAG_OFF) });
        if frag & ipv4::DF == 0 {
            // The kernel would fragment it; the program does not.
            return UNTOUCHED;
        }
    }
    let grow = IPH + icmp::HLEN;
    // SAFETY: the context is the program's; a failed call changes nothing.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return UNTOUCHED;
    }
    // The helper's answer, not `data_end - data`: the verifier allows no arithmetic on the
    // packet's end pointer, which is what the compiler would make of the difference.
    // SAFETY: as above.
    let len = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as i32;
    let keep = l3 + grow + QUOTE;
    // SAFETY: as above; `keep` is inside the frame (the quote was checked).
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep as i32 - len) } != 0 {
        return BROKEN;
    }
    if !move_l2(ctx, l3, grow) {
        return BROKEN;
    }
    let Some(hdr) = ptr_at::<[u8; IPH]>(ctx, l3) else {
        return BROKEN;
    };
    let Some(msg) = ptr_at::<[u8; ICMP_LEN]>(ctx, l3 + IPH) else {
        return BROKEN;
    };
    let (hdr, msg) = (hdr.cast::<u8>(), msg.cast::<u8>());
    // SAFETY: `hdr` and `msg` were checked for their whole lengths, at even offsets.
    unsafe {
        let pseudo = if v4 {
            write_ipv4(hdr, meta);
            0
        } else {
            write_ipv6(hdr, meta)
        };
        *msg.add(icmp::TYPE) = if v4 {
            icmp::V4_DEST_UNREACH
        } else {
            icmp::V6_PACKET_TOO_BIG
        };
        *msg.add(icmp::CODE) = if v4 { icmp::V4_FRAG_NEEDED } else { 0 };
        store16(msg, icmp::CSUM, 0);
        // IPv4: 16 unused bits and the next-hop MTU; IPv6: the MTU in 32 bits.
        let rest = if v4 { mtu & 0xFFFF } else { mtu };
        let rest = rest.to_be();
        store16(msg, 4, rest as u16);
        store16(msg, 6, (rest >> 16) as u16);
        let sum = sum_words::<{ ICMP_LEN / 2 }>(msg, pseudo);
        store16(msg, icmp::CSUM, !(sum as u16));
    }
    SENT
}

/// Moves the Ethernet header (and VLAN tag) `grow` bytes forward to the new start of the
/// frame, source and destination MACs swapped: the answer goes back where the packet came
/// from.
#[inline(always)]
fn move_l2(ctx: &XdpContext, l3: usize, grow: usize) -> bool {
    let (Some(old), Some(new)) = (
        ptr_at::<[u8; eth::HLEN + vlan::HLEN]>(ctx, grow),
        ptr_at::<[u8; eth::HLEN + vlan::HLEN]>(ctx, 0),
    ) else {
        return false;
    };
    // SAFETY: both ranges were checked; a copy through the stack, as they may overlap.
    let mut l2 = unsafe { core::ptr::read_unaligned(old) };
    for i in 0..eth::ALEN {
        l2.swap(eth::DST + i, eth::SRC + i);
    }
    let (new, l2) = (new.cast::<u8>(), l2.as_ptr());
    // SAFETY: as above; `l3` is the length of the Ethernet header with its tag, if any.
    unsafe {
        if l3 == eth::HLEN {
            core::ptr::copy_nonoverlapping(l2, new, eth::HLEN);
        } else {
            core::ptr::copy_nonoverlapping(l2, new, eth::HLEN + vlan::HLEN);
        }
    }
    true
}

/// Writes the answer's IPv4 header at `hdr`: from the packet's destination to its source.
///
/// # Safety
/// `hdr` must point to 20 checked bytes at an even offset.
#[inline(always)]
unsafe fn write_ipv4(hdr: *mut u8, meta: &PacketMeta) {
    let total = ((ipv4::HLEN_MIN + ICMP_LEN) as u16).to_be();
    // SAFETY: the caller's contract.
    unsafe {
        *hdr.add(ipv4::VER_IHL) = 0x45;
        *hdr.add(1) = TOS_INTERNETWORK_CONTROL;
        store16(hdr, ipv4::TOT_LEN, total);
        store16(hdr, ipv4::ID, 0);
        store16(hdr, ipv4::FRAG_OFF, 0);
        *hdr.add(ipv4::TTL) = ANSWER_TTL;
        *hdr.add(ipv4::PROTO) = IPPROTO_ICMP;
        store16(hdr, ipv4::CSUM, 0);
        store_addr::<1>(hdr, ipv4::SRC, &meta.dst);
        store_addr::<1>(hdr, ipv4::DST, &meta.src);
        let sum = sum_words::<{ ipv4::HLEN_MIN / 2 }>(hdr, 0);
        store16(hdr, ipv4::CSUM, !(sum as u16));
    }
}

/// Writes the answer's IPv6 header at `hdr`; returns the ICMPv6 pseudo-header's sum.
///
/// # Safety
/// `hdr` must point to 40 checked bytes at an even offset.
#[inline(always)]
unsafe fn write_ipv6(hdr: *mut u8, meta: &PacketMeta) -> u32 {
    let payload = (ICMP_LEN as u16).to_be();
    // SAFETY: the caller's contract.
    unsafe {
        // Version 6, traffic class and flow label 0.
        *hdr.add(ipv6::VER_TC_FLOW) = 0x60;
        *hdr.add(1) = 0;
        store16(hdr, 2, 0);
        store16(hdr, ipv6::PAYLOAD_LEN, payload);
        *hdr.add(ipv6::NEXT_HEADER) = IPPROTO_ICMPV6;
        *hdr.add(ipv6::HOP_LIMIT) = ANSWER_TTL;
        store_addr::<4>(hdr, ipv6::SRC, &meta.dst);
        store_addr::<4>(hdr, ipv6::DST, &meta.src);
        // Addresses, upper-layer length, next header.
        let addrs = sum_words::<{ 2 * ipv6::ADDR_LEN / 2 }>(hdr.add(ipv6::SRC), 0);
        fold(addrs + u32::from(payload) + u32::from(u16::from(IPPROTO_ICMPV6).to_be()))
    }
}

/// Writes the `N`-word address `addr` (raw words, as loaded) at `base + off`.
///
/// # Safety
/// `base + off .. base + off + 4 * N` must be checked, at an even offset.
#[inline(always)]
unsafe fn store_addr<const N: usize>(base: *mut u8, off: usize, addr: &[u32; 4]) {
    for (i, word) in addr.iter().take(N).enumerate() {
        // SAFETY: the caller's contract.
        unsafe {
            store16(base, off + i * 4, *word as u16);
            store16(base, off + i * 4 + 2, (*word >> 16) as u16);
        }
    }
}
