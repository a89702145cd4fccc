//! Rewriting a packet's addresses and ports, with incremental IPv4 header and TCP/UDP checksum
//! updates (addresses are part of the L4 pseudo-header).
use aya_ebpf::programs::XdpContext;
use mlb_common::maps::NatEntry;

use crate::{
    csum,
    parse::{Family, IPPROTO_TCP, PacketMeta, ptr_at},
};

/// Reads the raw (network-order) `u16` at `base + off`.
///
/// # Safety
/// `base + off .. base + off + 2` must be inside a range checked against the packet end.
#[inline(always)]
unsafe fn get16(base: *mut u8, off: usize) -> u16 {
    unsafe { core::ptr::read_unaligned(base.add(off).cast::<u16>()) }
}

/// Writes a raw `u16`; same contract as [`get16`].
#[inline(always)]
unsafe fn put16(base: *mut u8, off: usize, v: u16) {
    unsafe { core::ptr::write_unaligned(base.add(off).cast::<u16>(), v) }
}

/// Writes a raw `u32`; same contract as [`get16`].
#[inline(always)]
unsafe fn put32(base: *mut u8, off: usize, v: u32) {
    unsafe { core::ptr::write_unaligned(base.add(off).cast::<u32>(), v) }
}

/// Rewrites source and destination (addresses and ports) to those of `nat`. Returns 0 when the
/// headers are not all inside the packet (cannot happen after a successful parse).
///
/// Each header is accessed through one pointer checked for the header's whole length. Inlined:
/// a subprogram would receive packet pointers, which the verifier cannot follow.
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, meta: &PacketMeta, nat: &NatEntry) -> u32 {
    let (l4, csum_at) = if meta.proto == IPPROTO_TCP {
        match ptr_at::<[u8; 20]>(ctx, meta.l4_off) {
            Some(p) => (p.cast::<u8>(), 16),
            None => return 0,
        }
    } else {
        match ptr_at::<[u8; 8]>(ctx, meta.l4_off) {
            Some(p) => (p.cast::<u8>(), 6),
            None => return 0,
        }
    };
    // SAFETY: `l4` was checked for the whole fixed TCP (20) or UDP (8) header.
    let mut l4_csum = unsafe { get16(l4, csum_at) };
    // An IPv4 UDP checksum of 0 means "none": keep it so.
    let l4_csum_used = meta.proto == IPPROTO_TCP || meta.family == Family::V6 || l4_csum != 0;

    match meta.family {
        Family::V4 => {
            let Some(ip) = ptr_at::<[u8; 20]>(ctx, meta.l3_off) else {
                return 0;
            };
            let ip = ip.cast::<u8>();
            // SAFETY: `ip` was checked for the 20-byte IPv4 header.
            unsafe {
                let mut ip_csum = get16(ip, 10);
                ip_csum = csum::replace4(ip_csum, meta.src[0], nat.new_src[0]);
                ip_csum = csum::replace4(ip_csum, meta.dst[0], nat.new_dst[0]);
                put32(ip, 12, nat.new_src[0]);
                put32(ip, 16, nat.new_dst[0]);
                put16(ip, 10, ip_csum);
            }
            l4_csum = csum::replace4(l4_csum, meta.src[0], nat.new_src[0]);
            l4_csum = csum::replace4(l4_csum, meta.dst[0], nat.new_dst[0]);
        }
        Family::V6 => {
            let Some(ip) = ptr_at::<[u8; 40]>(ctx, meta.l3_off) else {
                return 0;
            };
            let ip = ip.cast::<u8>();
            for i in 0..4 {
                l4_csum = csum::replace4(l4_csum, meta.src[i], nat.new_src[i]);
                l4_csum = csum::replace4(l4_csum, meta.dst[i], nat.new_dst[i]);
                // SAFETY: `ip` was checked for the 40-byte IPv6 header; 24 + 12 + 4 <= 40.
                unsafe {
                    put32(ip, 8 + i * 4, nat.new_src[i]);
                    put32(ip, 24 + i * 4, nat.new_dst[i]);
                }
            }
        }
    }
    l4_csum = csum::replace2(l4_csum, meta.sport, nat.new_sport);
    l4_csum = csum::replace2(l4_csum, meta.dport, nat.new_dport);
    // SAFETY: offsets 0..4 and the checksum are inside the checked L4 header.
    unsafe {
        put16(l4, 0, nat.new_sport);
        put16(l4, 2, nat.new_dport);
        if l4_csum_used {
            if meta.proto != IPPROTO_TCP && l4_csum == 0 {
                // UDP sends a computed zero as all ones.
                l4_csum = 0xFFFF;
            }
            put16(l4, csum_at, l4_csum);
        }
    }
    1
}
