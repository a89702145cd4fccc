//! The last step: rewriting a packet for its next hop. Addresses and ports become those of the
//! flow's NAT entry, with incremental IPv4 header and TCP/UDP checksum updates (addresses are
//! part of the L4 pseudo-header), and the MACs those of the next hop and the TTL (hop limit) one
//! less when the program sends the packet itself, as a router does; or, for direct server return,
//! an outer header put in front ([`encapsulate`]). The only module that writes packet memory,
//! with `icmp.rs` for the ICMP errors it translates (through these helpers).
use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use mlb_common::{
    encap::{OUTER_MAX, outer_len},
    maps::NatEntry,
    net::{IPPROTO_TCP, eth, ipv4, ipv6, tcp, udp, vlan},
    stats::Counter,
};

use crate::{
    csum,
    exit::Exit,
    forward::Macs,
    parse::{BAD_L3, BAD_L4, Family, PacketMeta, ptr_at},
};

/// Reads the raw (network-order) `u16` at `base + off`.
///
/// # Safety
/// `base + off .. base + off + 2` must be inside a range checked against the packet end.
#[inline(always)]
pub unsafe fn get16(base: *mut u8, off: usize) -> u16 {
    unsafe { core::ptr::read_unaligned(base.add(off).cast::<u16>()) }
}

/// Writes a raw `u16`; same contract as [`get16`].
#[inline(always)]
pub unsafe fn put16(base: *mut u8, off: usize, v: u16) {
    unsafe { core::ptr::write_unaligned(base.add(off).cast::<u16>(), v) }
}

/// Writes a raw `u32`; same contract as [`get16`].
#[inline(always)]
pub unsafe fn put32(base: *mut u8, off: usize, v: u32) {
    unsafe { core::ptr::write_unaligned(base.add(off).cast::<u32>(), v) }
}

/// Reads the raw 16-bit word at `base + off`, in one load.
///
/// For code that touches many words (ICMP errors): byte-wise unaligned accesses ([`get16`])
/// would cost more registers than the BPF stack holds spills for. Packet data
/// starts 2-byte aligned (the kernel's frames, and `BPF_PROG_TEST_RUN`'s), and every header
/// starts at an even offset (Ethernet 14, a VLAN tag 4, IPv4 headers in 4-byte words, IPv6
/// 40): every field written here is at an even offset, so 2-byte aligned.
///
/// # Safety
/// `base + off .. base + off + 2` must be inside a range checked against the packet end, and
/// at an even offset from the packet start.
#[inline(always)]
pub unsafe fn load16(base: *mut u8, off: usize) -> u16 {
    unsafe { base.add(off).cast::<u16>().read() }
}

/// Writes a raw 16-bit word; same contract as [`load16`].
#[inline(always)]
pub unsafe fn store16(base: *mut u8, off: usize, v: u16) {
    unsafe { base.add(off).cast::<u16>().write(v) }
}

/// Decrements the TTL of the IPv4 header at `ip`; returns its checksum `csum` updated.
///
/// # Safety
/// `ip` must point to a fixed IPv4 header checked against the packet end.
#[inline(always)]
pub unsafe fn decrement_ttl(ip: *mut u8, csum: u16) -> u16 {
    // TTL and protocol form one 16-bit word of the checksum.
    let old = unsafe { get16(ip, ipv4::TTL) };
    let [ttl, proto] = old.to_ne_bytes();
    let new = u16::from_ne_bytes([ttl.wrapping_sub(1), proto]);
    unsafe { put16(ip, ipv4::TTL, new) };
    csum::replace2(csum, old, new)
}

/// Decrements the hop limit of the IPv6 header at `ip` (no checksum covers it).
///
/// # Safety
/// `ip` must point to a fixed IPv6 header checked against the packet end.
#[inline(always)]
pub unsafe fn decrement_hop_limit(ip: *mut u8) {
    unsafe {
        let p = ip.add(ipv6::HOP_LIMIT);
        *p = (*p).wrapping_sub(1);
    }
}

/// Rewrites the packet as `nat` says, and its MACs to `macs` when given.
///
/// Only a packet the program sends itself (`macs` given) has its TTL decremented here: one
/// passed to the kernel is decremented by the kernel's forwarding.
///
/// Every header pointer is checked before the first byte is written, so an error (which cannot
/// happen after a successful parse) leaves the packet as it arrived. Each header is accessed
/// through one pointer checked for the header's whole length. Inlined: a subprogram would receive
/// packet pointers, which the verifier cannot follow.
#[inline(always)]
pub fn rewrite_packet(
    ctx: &XdpContext,
    meta: &PacketMeta,
    nat: &NatEntry,
    macs: Option<&Macs>,
) -> Result<(), Exit> {
    let eth_hdr = ptr_at::<Macs>(ctx, eth::DST).ok_or(Exit::Pass(Counter::PassTruncatedEth))?;
    let (l4, csum_at) = if meta.proto == IPPROTO_TCP {
        let p = ptr_at::<[u8; tcp::HLEN_MIN]>(ctx, meta.l4_off).ok_or(BAD_L4)?;
        (p.cast::<u8>(), tcp::CSUM)
    } else {
        let p = ptr_at::<[u8; udp::HLEN]>(ctx, meta.l4_off).ok_or(BAD_L4)?;
        (p.cast::<u8>(), udp::CSUM)
    };
    // SAFETY: `l4` was checked for the whole fixed TCP or UDP header.
    let mut l4_csum = unsafe { get16(l4, csum_at) };
    // An IPv4 UDP checksum of 0 means "none": keep it so.
    let l4_csum_used = meta.proto == IPPROTO_TCP || meta.family == Family::V6 || l4_csum != 0;

    match meta.family {
        Family::V4 => {
            let ip = ptr_at::<[u8; ipv4::HLEN_MIN]>(ctx, meta.l3_off).ok_or(BAD_L3)?;
            let ip = ip.cast::<u8>();
            // SAFETY: `ip` was checked for the fixed IPv4 header.
            unsafe {
                let mut ip_csum = get16(ip, ipv4::CSUM);
                ip_csum = csum::replace4(ip_csum, meta.src[0], nat.new_src[0]);
                ip_csum = csum::replace4(ip_csum, meta.dst[0], nat.new_dst[0]);
                put32(ip, ipv4::SRC, nat.new_src[0]);
                put32(ip, ipv4::DST, nat.new_dst[0]);
                if macs.is_some() {
                    ip_csum = decrement_ttl(ip, ip_csum);
                }
                put16(ip, ipv4::CSUM, ip_csum);
            }
            l4_csum = csum::replace4(l4_csum, meta.src[0], nat.new_src[0]);
            l4_csum = csum::replace4(l4_csum, meta.dst[0], nat.new_dst[0]);
        }
        Family::V6 => {
            let ip = ptr_at::<[u8; ipv6::HLEN]>(ctx, meta.l3_off).ok_or(BAD_L3)?;
            let ip = ip.cast::<u8>();
            for i in 0..4 {
                l4_csum = csum::replace4(l4_csum, meta.src[i], nat.new_src[i]);
                l4_csum = csum::replace4(l4_csum, meta.dst[i], nat.new_dst[i]);
                // SAFETY: `ip` was checked for the 40-byte IPv6 header; DST + 12 + 4 <= 40.
                unsafe {
                    put32(ip, ipv6::SRC + i * 4, nat.new_src[i]);
                    put32(ip, ipv6::DST + i * 4, nat.new_dst[i]);
                }
            }
            if macs.is_some() {
                // SAFETY: as above.
                unsafe { decrement_hop_limit(ip) };
            }
        }
    }
    l4_csum = csum::replace2(l4_csum, meta.sport, nat.new_sport);
    l4_csum = csum::replace2(l4_csum, meta.dport, nat.new_dport);
    // SAFETY: the ports and the checksum are inside the checked L4 header (the ports are at the
    // same offsets in TCP and UDP).
    unsafe {
        put16(l4, tcp::SPORT, nat.new_sport);
        put16(l4, tcp::DPORT, nat.new_dport);
        if l4_csum_used {
            if meta.proto != IPPROTO_TCP && l4_csum == 0 {
                // UDP sends a computed zero as all ones.
                l4_csum = 0xFFFF;
            }
            put16(l4, csum_at, l4_csum);
        }
    }
    if let Some(macs) = macs {
        // SAFETY: `ptr_at` checked both MAC addresses are inside the packet.
        unsafe { core::ptr::write_unaligned(eth_hdr, *macs) };
    }
    Ok(())
}

/// Moves the `N`-byte Ethernet (+VLAN) header from `from` to the start of the packet.
///
/// # Safety
/// Only after `bpf_xdp_adjust_head` made room: the bytes before the moved header are the
/// program's to write.
#[inline(always)]
fn move_l2<const N: usize>(ctx: &XdpContext, from: usize) -> Result<(), Exit> {
    let src = ptr_at::<[u8; N]>(ctx, from).ok_or(Exit::Aborted)?;
    let dst = ptr_at::<[u8; N]>(ctx, 0).ok_or(Exit::Aborted)?;
    // SAFETY: both ranges were checked against the packet end; they do not overlap (the outer
    // header is at least 20 bytes, the L2 header at most 18).
    unsafe { core::ptr::write_unaligned(dst, core::ptr::read_unaligned(src)) };
    Ok(())
}

/// Encapsulation, the rewrite of direct server return: puts `outer` (an IPv4 or IPv6 header, by
/// the packet's family, built by `encap.rs`) between the Ethernet (+VLAN) header and the
/// packet's own IP header, and writes the MACs of `macs` when given. The inner packet stays as
/// it arrived; the EtherType too (the outer header is of the inner's family).
///
/// Once the head has moved, the packet is no longer what arrived: an error there is a bug
/// (`Aborted`), since the room just made is known to be there.
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    meta: &PacketMeta,
    outer: &[u8; OUTER_MAX],
    macs: Option<&Macs>,
) -> Result<(), Exit> {
    let grow = outer_len(meta.family.code());
    // SAFETY: `ctx.ctx` is this program run's context; the helper checks the headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return Err(Exit::Drop(Counter::DropEncapFailed));
    }
    if meta.l3_off == eth::HLEN {
        move_l2::<{ eth::HLEN }>(ctx, grow)?;
    } else {
        move_l2::<{ eth::HLEN + vlan::HLEN }>(ctx, grow)?;
    }
    match meta.family {
        Family::V4 => {
            let p = ptr_at::<[u8; ipv4::HLEN_MIN]>(ctx, meta.l3_off).ok_or(Exit::Aborted)?;
            // SAFETY: `p` was checked for the 20 bytes written; `outer` holds 40.
            unsafe {
                core::ptr::copy_nonoverlapping(outer.as_ptr(), p.cast::<u8>(), ipv4::HLEN_MIN);
            }
        }
        Family::V6 => {
            let p = ptr_at::<[u8; ipv6::HLEN]>(ctx, meta.l3_off).ok_or(Exit::Aborted)?;
            // SAFETY: `p` was checked for the whole 40-byte header.
            unsafe { core::ptr::copy_nonoverlapping(outer.as_ptr(), p.cast::<u8>(), ipv6::HLEN) };
        }
    }
    if let Some(macs) = macs {
        let eth_hdr = ptr_at::<Macs>(ctx, eth::DST).ok_or(Exit::Aborted)?;
        // SAFETY: `ptr_at` checked both MAC addresses are inside the packet.
        unsafe { core::ptr::write_unaligned(eth_hdr, *macs) };
    }
    Ok(())
}
