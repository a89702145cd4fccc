//! ICMP errors about NATed flows: translated back like the rest of the flow, so that path-MTU
//! discovery (IPv4 fragmentation needed, IPv6 packet too big), unreachables and time exceeded
//! reach the end that sent the packet.
//!
//! An error quotes the packet that caused it, as that packet left the load balancer: rewritten.
//! The quoted packet, its addresses and ports reversed, is the wire 5-tuple of its flow's other
//! direction; that direction's entry says how to rewrite the error: the outer header goes to
//! `new_src → new_dst` like the packets of that direction (Linux NAT also sets the outer source,
//! so the client sees the error from the VIP, never from a backend network), and the quoted
//! packet goes back to what its sender sent (`new_dst → new_src`, ports likewise). An error
//! from a backend (or a router before it) thus reaches the client about its packet to the VIP,
//! and one from the client side reaches the backend about its packet to the SNAT address.
//!
//! Checksums are updated incrementally: the outer IPv4 header; the quoted IPv4 header and
//! TCP/UDP checksum (the TCP one only when the quote holds it: RFC 792 promises 8 bytes of
//! L4); the ICMP checksum, which covers the quote (and, for ICMPv6, the outer addresses).
//!
//! Fragmentation needed / packet too big keep their MTU: full NAT adds no header, so the path
//! MTU behind the load balancer is the client's too.
//!
//! Reads and the conntrack lookup first, then the forwarding decision, then the writes, as for
//! TCP/UDP; a quote the fixed offsets cannot describe (IPv4 options, IPv6 extension headers) is
//! left to the kernel, counted.
use aya_ebpf::{bindings::xdp_md, helpers::bpf_ktime_get_ns, programs::XdpContext};
use mlb_common::{
    maps::{Config, NatEntry},
    net::{IPPROTO_TCP, IPPROTO_UDP, eth, icmp, ipv4, ipv6, tcp, udp},
    stats::Counter,
    verdict::Verdict,
};

use crate::{
    csum::Delta,
    exit::Exit,
    flow::{is_partner, set_peer_key},
    forward::{self, Macs},
    lookup,
    maps::{self, CONNTRACK, Scratch},
    parse::{BAD_L3, Family, PacketMeta, ptr_at},
    rewrite::{decrement_hop_limit, decrement_ttl, get16, load16, store16},
    stats::count,
};

const UNSUPPORTED: Exit = Exit::Pass(Counter::PassIcmpUnsupported);
const NO_FLOW: Exit = Exit::Pass(Counter::PassIcmpNoFlow);
const NOT_AN_ERROR: Exit = Exit::Pass(Counter::PassNotTcpUdp);

/// Where the quoted IP header starts, from the ICMP header.
const QUOTED_IP: usize = icmp::HLEN;
/// Where the quoted TCP/UDP header starts, from the ICMP header.
const V4_QUOTED_L4: usize = QUOTED_IP + ipv4::HLEN_MIN;
const V6_QUOTED_L4: usize = QUOTED_IP + ipv6::HLEN;
/// The bytes read through one checked pointer: ICMP header, quoted IP header, the 8 bytes of
/// quoted TCP/UDP header every error carries (ports, and the UDP checksum).
const V4_BLOCK: usize = V4_QUOTED_L4 + udp::HLEN;
const V6_BLOCK: usize = V6_QUOTED_L4 + udp::HLEN;

/// [`route`]'s answer in one number (a subprogram returns a scalar): the verdict in the low
/// byte, and these flags.
const REWRITE: u32 = 1 << 8;
/// The program sends the packet itself: next-hop MACs in `scratch.fib`, TTL decremented.
const SEND: u32 = 1 << 9;
/// The quoted packet is TCP (else UDP).
const QUOTED_TCP: u32 = 1 << 10;

/// Translates an ICMP/ICMPv6 error about a tracked flow and forwards it; other ICMP goes to
/// the kernel. Early exits are counted here.
///
/// Two BPF subprograms, one after the other: the decision ([`route`]) and the rewrite
/// ([`rewrite`]). Their stack frames are never live at once, nor with the TCP/UDP path's,
/// which keeps every path under the 512-byte limit. They take the context (never a packet
/// pointer, which the verifier could not follow across the call) and return plain numbers;
/// what the rewrite needs is in the per-CPU scratch (the flow key, the FIB answer).
#[inline(always)]
pub fn translate_error(ctx: &XdpContext, meta: &PacketMeta) -> Verdict {
    let decision = route(ctx.ctx, meta);
    let verdict = verdict_of(decision);
    if decision & REWRITE == 0 {
        return verdict;
    }
    if rewrite(ctx.ctx, meta, decision) {
        count(Counter::IcmpErrorTranslated);
        verdict
    } else {
        // The flow went between the decision and the rewrite; nothing was written.
        NO_FLOW.into_verdict()
    }
}

/// The verdict in a [`route`] answer.
#[inline(always)]
fn verdict_of(decision: u32) -> Verdict {
    match decision & 0xFF {
        1 => Verdict::Drop,
        2 => Verdict::Pass,
        3 => Verdict::Tx,
        4 => Verdict::Redirect,
        _ => Verdict::Aborted,
    }
}

/// Finds the tracked flow the error is about (its key left in `scratch.key`) and where the
/// translated error goes. An exit is counted here and answered without [`REWRITE`].
#[inline(never)]
fn route(ctx: *mut xdp_md, meta: &PacketMeta) -> u32 {
    match try_route(&XdpContext::new(ctx), meta) {
        Ok(decision) => decision,
        Err(exit) => exit.into_verdict() as u32,
    }
}

#[inline(always)]
fn try_route(ctx: &XdpContext, meta: &PacketMeta) -> Result<u32, Exit> {
    let scratch = maps::scratch()?;
    // Before the configuration: other ICMP is no business of the program, configured or not.
    let proto = quoted_flow(ctx, meta, scratch)?;
    let cfg = lookup::config()?;
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let nat = tracked_entry(scratch, cfg, now)?;
    let hop = forward::next_hop(ctx, meta, nat, meta.ip_len, &mut scratch.fib)?;
    let mut decision = hop.verdict() as u32 | REWRITE;
    if hop.macs().is_some() {
        decision |= SEND;
    }
    if proto == IPPROTO_TCP {
        decision |= QUOTED_TCP;
    }
    Ok(decision)
}

/// Rewrites the error as [`route`] decided; false (nothing written) if the flow is gone.
#[inline(never)]
fn rewrite(ctx: *mut xdp_md, meta: &PacketMeta, decision: u32) -> bool {
    let ctx = XdpContext::new(ctx);
    let Ok(scratch) = maps::scratch() else {
        return false;
    };
    // SAFETY: a map value, valid for this program run.
    let Some(nat) = (unsafe { CONNTRACK.get(&scratch.key) }) else {
        return false;
    };
    let macs = (decision & SEND != 0).then(|| Macs::of(&scratch.fib));
    let proto = if decision & QUOTED_TCP != 0 {
        IPPROTO_TCP
    } else {
        IPPROTO_UDP
    };
    let macs = macs.as_ref();
    match meta.family {
        Family::V4 => rewrite_v4(&ctx, meta, proto, nat, macs).is_ok(),
        Family::V6 => rewrite_v6(&ctx, meta, proto, nat, macs).is_ok(),
    }
}

/// Reads the raw `u32` at `base + off`.
///
/// # Safety
/// `base + off .. base + off + 4` must be inside a range checked against the packet end.
#[inline(always)]
unsafe fn get32(base: *mut u8, off: usize) -> u32 {
    unsafe { core::ptr::read_unaligned(base.add(off).cast::<u32>()) }
}

/// Writes into `scratch.key` the 5-tuple of the flow direction the error's quoted packet
/// answers (the quote reversed); returns the quoted L4 protocol.
#[inline(always)]
fn quoted_flow(ctx: &XdpContext, meta: &PacketMeta, scratch: &mut Scratch) -> Result<u8, Exit> {
    let hdr = ptr_at::<[u8; icmp::HLEN]>(ctx, meta.l4_off).ok_or(NOT_AN_ERROR)?;
    let v6 = meta.family == Family::V6;
    // SAFETY: `ptr_at` checked the ICMP header is inside the packet.
    if !icmp::is_translated_error(v6, unsafe { (*hdr)[icmp::TYPE] }) {
        return Err(NOT_AN_ERROR);
    }
    let key = &mut scratch.key;
    let (proto, l4) = if v6 {
        let q = ptr_at::<[u8; V6_BLOCK]>(ctx, meta.l4_off).ok_or(UNSUPPORTED)?;
        let q = q.cast::<u8>();
        // SAFETY: `q` was checked for the whole block; every offset below is inside it.
        unsafe {
            let proto = *q.add(QUOTED_IP + ipv6::NEXT_HEADER);
            if *q.add(QUOTED_IP + ipv6::VER_TC_FLOW) >> 4 != 6 {
                return Err(UNSUPPORTED);
            }
            for i in 0..4 {
                key.src[i] = get32(q, QUOTED_IP + ipv6::DST + i * 4);
                key.dst[i] = get32(q, QUOTED_IP + ipv6::SRC + i * 4);
            }
            (proto, q.add(V6_QUOTED_L4))
        }
    } else {
        let q = ptr_at::<[u8; V4_BLOCK]>(ctx, meta.l4_off).ok_or(UNSUPPORTED)?;
        let q = q.cast::<u8>();
        // SAFETY: as above.
        unsafe {
            let frag = u16::from_be(get16(q, QUOTED_IP + ipv4::FRAG_OFF));
            // Options would move the L4 header; a later fragment has no ports.
            if *q.add(QUOTED_IP + ipv4::VER_IHL) != 0x45 || frag & ipv4::OFFSET_MASK != 0 {
                return Err(UNSUPPORTED);
            }
            key.src = [get32(q, QUOTED_IP + ipv4::DST), 0, 0, 0];
            key.dst = [get32(q, QUOTED_IP + ipv4::SRC), 0, 0, 0];
            (*q.add(QUOTED_IP + ipv4::PROTO), q.add(V4_QUOTED_L4))
        }
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(UNSUPPORTED);
    }
    // SAFETY: `l4` points to the quoted L4 header's first 8 bytes, inside the checked block.
    unsafe {
        key.sport = get16(l4, tcp::DPORT);
        key.dport = get16(l4, tcp::SPORT);
    }
    key.proto = proto;
    key.family = meta.family.code();
    key._pad = [0; 2];
    Ok(proto)
}

/// The live entry of `scratch.key`: present, its partner too, not idle past its timeout. An
/// error changes no state and no last-seen time: it is no sign the flow is alive.
#[inline(always)]
fn tracked_entry(scratch: &mut Scratch, cfg: &Config, now: u64) -> Result<&'static NatEntry, Exit> {
    // SAFETY: a map value, valid for this program run.
    let nat = unsafe { CONNTRACK.get(&scratch.key) }.ok_or(NO_FLOW)?;
    set_peer_key(&mut scratch.peer_key, &scratch.key, nat);
    // SAFETY: as above.
    let paired =
        unsafe { CONNTRACK.get(&scratch.peer_key) }.is_some_and(|p| is_partner(&scratch.key, p));
    let key = &scratch.key;
    if !paired
        || cfg
            .timeouts
            .expired(key.proto, nat.state, nat.last_seen_ns, now)
    {
        return Err(NO_FLOW);
    }
    Ok(nat)
}

/// Writes the `N`-word address `new` (`N` 32-bit words: 1 for IPv4, 4 for IPv6) at
/// `base + off`, recording the change in `delta`. Same contract as [`load16`], for the whole
/// address.
#[inline(always)]
unsafe fn set_addr<const N: usize>(base: *mut u8, off: usize, new: &[u32; 4], delta: &mut Delta) {
    for (i, word) in new.iter().take(N).enumerate() {
        // Read where it is used: the same address is written twice (outer header and quote),
        // and values kept from the first time would be spilled to the stack until the second.
        // SAFETY: a plain read of a valid reference.
        let word = unsafe { core::ptr::read_volatile(word) };
        // Raw words as loaded (little-endian target): the low half is the first in memory.
        let at = off + i * 4;
        let (lo, hi) = (word as u16, (word >> 16) as u16);
        // SAFETY: the caller's contract.
        unsafe {
            delta.word2(load16(base, at), lo);
            delta.word2(load16(base, at + 2), hi);
            store16(base, at, lo);
            store16(base, at + 2, hi);
        }
    }
}

/// The changes to the quoted TCP/UDP header: its ports become those its sender used, its
/// checksum follows (`addrs`: the quoted addresses' change, in its pseudo-header). `l4` points
/// to the quoted header's first 8 bytes; `tcp_csum` to the quoted TCP checksum when the quote
/// holds it. Returns the change of the quoted bytes, for the ICMP checksum.
///
/// # Safety
/// `l4 .. l4 + 8` and, if given, `tcp_csum .. tcp_csum + 2` must be inside checked ranges, at
/// even offsets.
#[inline(always)]
unsafe fn rewrite_quoted_l4(
    l4: *mut u8,
    proto: u8,
    tcp_csum: Option<*mut u8>,
    nat: &NatEntry,
    addrs: Delta,
) -> Delta {
    let mut ports = Delta::new();
    // SAFETY: the caller's contract.
    unsafe {
        ports.word2(load16(l4, tcp::SPORT), nat.new_dport);
        ports.word2(load16(l4, tcp::DPORT), nat.new_sport);
        store16(l4, tcp::SPORT, nat.new_dport);
        store16(l4, tcp::DPORT, nat.new_sport);
        let csum_at = if proto == IPPROTO_TCP {
            tcp_csum
        } else {
            Some(l4.add(udp::CSUM))
        };
        let mut quoted = ports;
        if let Some(at) = csum_at {
            let old = load16(at, 0);
            // A zero UDP checksum means "none" (IPv4): it stays so.
            if proto == IPPROTO_TCP || old != 0 {
                let mut new = ports.apply(addrs.apply(old));
                if proto == IPPROTO_UDP && new == 0 {
                    new = 0xFFFF;
                }
                store16(at, 0, new);
                quoted.word2(old, new);
            }
        }
        quoted
    }
}

/// The quoted TCP checksum, if the quote (which ends with the outer IP packet, `meta.ip_len`)
/// holds the whole fixed TCP header at `l4_off`.
#[inline(always)]
fn quoted_tcp_csum(
    ctx: &XdpContext,
    meta: &PacketMeta,
    proto: u8,
    l4_off: usize,
) -> Option<*mut u8> {
    if proto != IPPROTO_TCP || l4_off + tcp::HLEN_MIN > meta.l3_off + usize::from(meta.ip_len) {
        return None;
    }
    let p = ptr_at::<[u8; tcp::HLEN_MIN]>(ctx, l4_off)?;
    // SAFETY: in bounds: the whole fixed TCP header was checked.
    Some(unsafe { p.cast::<u8>().add(tcp::CSUM) })
}

/// The headers the rewrite of an error writes, every one checked before the first write: the
/// MACs, the outer IP header (`IP_HLEN` bytes), the ICMP header with the quoted IP header and
/// 8 bytes of quoted L4 (`BLOCK` bytes), and the quoted TCP checksum if the quote holds it.
struct Headers {
    eth: *mut Macs,
    ip: *mut u8,
    icmp: *mut u8,
    tcp_csum: Option<*mut u8>,
}

#[inline(always)]
fn headers<const IP_HLEN: usize, const BLOCK: usize>(
    ctx: &XdpContext,
    meta: &PacketMeta,
    proto: u8,
) -> Result<Headers, Exit> {
    let eth = ptr_at::<Macs>(ctx, eth::DST).ok_or(Exit::Pass(Counter::PassTruncatedEth))?;
    let ip = ptr_at::<[u8; IP_HLEN]>(ctx, meta.l3_off).ok_or(BAD_L3)?;
    let icmp = ptr_at::<[u8; BLOCK]>(ctx, meta.l4_off).ok_or(UNSUPPORTED)?;
    let quoted_l4 = meta.l4_off + BLOCK - udp::HLEN;
    Ok(Headers {
        eth,
        ip: ip.cast(),
        icmp: icmp.cast(),
        tcp_csum: quoted_tcp_csum(ctx, meta, proto, quoted_l4),
    })
}

/// Writes the next hop's MACs, when the program sends the packet itself.
#[inline(always)]
fn write_macs(h: &Headers, macs: Option<&Macs>) {
    if let Some(macs) = macs {
        // SAFETY: `headers` checked both MAC addresses are inside the packet.
        unsafe { core::ptr::write_unaligned(h.eth, *macs) };
    }
}

#[inline(always)]
fn rewrite_v4(
    ctx: &XdpContext,
    meta: &PacketMeta,
    proto: u8,
    nat: &NatEntry,
    macs: Option<&Macs>,
) -> Result<(), Exit> {
    let h = headers::<{ ipv4::HLEN_MIN }, V4_BLOCK>(ctx, meta, proto)?;
    let (ip, q) = (h.ip, h.icmp);
    // SAFETY: `headers` checked every header written below; all are at even offsets.
    unsafe {
        let mut outer = Delta::new();
        set_addr::<1>(ip, ipv4::SRC, &nat.new_src, &mut outer);
        set_addr::<1>(ip, ipv4::DST, &nat.new_dst, &mut outer);
        let mut ip_csum = outer.apply(load16(ip, ipv4::CSUM));
        if macs.is_some() {
            ip_csum = decrement_ttl(ip, ip_csum);
        }
        store16(ip, ipv4::CSUM, ip_csum);

        // The quote goes back to what its sender sent.
        let quoted_ip = q.add(QUOTED_IP);
        let mut addrs = Delta::new();
        set_addr::<1>(quoted_ip, ipv4::SRC, &nat.new_dst, &mut addrs);
        set_addr::<1>(quoted_ip, ipv4::DST, &nat.new_src, &mut addrs);
        let old_csum = load16(quoted_ip, ipv4::CSUM);
        let new_csum = addrs.apply(old_csum);
        store16(quoted_ip, ipv4::CSUM, new_csum);
        let l4 = rewrite_quoted_l4(q.add(V4_QUOTED_L4), proto, h.tcp_csum, nat, addrs);

        // ICMPv4's checksum covers the message only: the quote's changes.
        let mut quote = addrs;
        quote.word2(old_csum, new_csum);
        store16(q, icmp::CSUM, l4.apply(quote.apply(load16(q, icmp::CSUM))));
    }
    write_macs(&h, macs);
    Ok(())
}

#[inline(always)]
fn rewrite_v6(
    ctx: &XdpContext,
    meta: &PacketMeta,
    proto: u8,
    nat: &NatEntry,
    macs: Option<&Macs>,
) -> Result<(), Exit> {
    let h = headers::<{ ipv6::HLEN }, V6_BLOCK>(ctx, meta, proto)?;
    let (ip, q) = (h.ip, h.icmp);
    // SAFETY: as in `rewrite_v4`.
    unsafe {
        // ICMPv6's checksum covers the outer addresses too (its pseudo-header).
        let mut outer = Delta::new();
        set_addr::<4>(ip, ipv6::SRC, &nat.new_src, &mut outer);
        set_addr::<4>(ip, ipv6::DST, &nat.new_dst, &mut outer);
        if macs.is_some() {
            decrement_hop_limit(ip);
        }
        let quoted_ip = q.add(QUOTED_IP);
        let mut addrs = Delta::new();
        set_addr::<4>(quoted_ip, ipv6::SRC, &nat.new_dst, &mut addrs);
        set_addr::<4>(quoted_ip, ipv6::DST, &nat.new_src, &mut addrs);
        let l4 = rewrite_quoted_l4(q.add(V6_QUOTED_L4), proto, h.tcp_csum, nat, addrs);
        let icmp_csum = l4.apply(addrs.apply(outer.apply(load16(q, icmp::CSUM))));
        store16(q, icmp::CSUM, icmp_csum);
    }
    write_macs(&h, macs);
    Ok(())
}
