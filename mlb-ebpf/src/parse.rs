//! Bounds-checked packet parsing. Only [`ptr_at`] touches `ctx.data()`: every header access goes
//! through it, so every access carries the check the verifier needs right next to it.
use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use mlb_common::stats::Counter;

pub const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV4_HLEN_MIN: usize = 20;
const IPV6_HLEN: usize = 40;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const TCP_HLEN_MIN: usize = 20;
const UDP_HLEN: usize = 8;
/// IPv4 "more fragments" flag and fragment offset mask (host order of the 16-bit field).
const IP_MF: u16 = 0x2000;
const IP_OFFSET: u16 = 0x1FFF;

/// Returns a pointer to a `T` at `offset` bytes into the packet, or `None` when the packet is too
/// short to hold it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Reads a big-endian `u16` at `offset`.
#[inline(always)]
fn read_be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    let p = ptr_at::<[u8; 2]>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that two bytes are inside the packet.
    Some(u16::from_be_bytes(unsafe { *p }))
}

/// Reads a `u32` at `offset` as stored (network order kept).
#[inline(always)]
pub fn read_raw32(ctx: &XdpContext, offset: usize) -> Option<u32> {
    let p = ptr_at::<u32>(ctx, offset)?;
    // SAFETY: in bounds; packet data is only 2-byte aligned, hence the unaligned read.
    Some(unsafe { core::ptr::read_unaligned(p) })
}

/// Reads one byte at `offset`.
#[inline(always)]
fn read_u8(ctx: &XdpContext, offset: usize) -> Option<u8> {
    let p = ptr_at::<u8>(ctx, offset)?;
    // SAFETY: `ptr_at` checked the byte is inside the packet.
    Some(unsafe { *p })
}

/// IP version of a parsed packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Everything later steps need from one packet, parsed once.
///
/// Addresses and ports are kept as loaded from the packet (network order), the layout of the
/// map keys.
pub struct PacketMeta {
    pub family: Family,
    /// L4 protocol number (TCP or UDP).
    pub proto: u8,
    /// Offset of the IP header from the start of the frame.
    pub l3_off: usize,
    /// Offset of the TCP/UDP header from the start of the frame.
    pub l4_off: usize,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// Bytes from the IP header on (for statistics and the FIB MTU check).
    pub ip_len: u16,
}

impl PacketMeta {
    /// The counter that records a successful parse of this kind of packet.
    #[inline(always)]
    pub fn parsed_counter(&self) -> Counter {
        match (self.family, self.proto) {
            (Family::V4, IPPROTO_TCP) => Counter::ParsedTcp4,
            (Family::V4, _) => Counter::ParsedUdp4,
            (Family::V6, IPPROTO_TCP) => Counter::ParsedTcp6,
            (Family::V6, _) => Counter::ParsedUdp6,
        }
    }
}

/// Parses Ethernet (at most one 802.1Q/802.1ad tag), IPv4 or IPv6, and TCP or UDP.
///
/// On anything else it returns the counter that names why the packet is left to the kernel.
#[inline(always)]
pub fn parse_packet(ctx: &XdpContext) -> Result<PacketMeta, Counter> {
    let mut ether_type = read_be16(ctx, 12).ok_or(Counter::PassTruncatedEth)?;
    let mut l3_off = ETH_HLEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        ether_type = read_be16(ctx, 16).ok_or(Counter::PassTruncatedEth)?;
        l3_off += VLAN_HLEN;
    }
    let mut meta = match ether_type {
        ETH_P_IP => parse_ipv4(ctx, l3_off)?,
        ETH_P_IPV6 => parse_ipv6(ctx, l3_off)?,
        _ => return Err(Counter::PassNotIp),
    };
    // One checked pointer per header, every field read through it: the verifier then knows
    // each access is inside the range checked for that pointer.
    let l4_off = meta.l4_off;
    if meta.proto == IPPROTO_TCP {
        let tcp = ptr_at::<[u8; TCP_HLEN_MIN]>(ctx, l4_off).ok_or(Counter::PassBadL4)?;
        // SAFETY: `ptr_at` checked the whole fixed TCP header is inside the packet.
        let hdr = unsafe { core::ptr::read_unaligned(tcp) };
        // Data offset in 32-bit words, high nibble of byte 12.
        if usize::from(hdr[12] >> 4) * 4 < TCP_HLEN_MIN {
            return Err(Counter::PassBadL4);
        }
        meta.tcp_flags = hdr[13];
        meta.sport = u16::from_ne_bytes([hdr[0], hdr[1]]);
        meta.dport = u16::from_ne_bytes([hdr[2], hdr[3]]);
    } else {
        let udp = ptr_at::<[u8; UDP_HLEN]>(ctx, l4_off).ok_or(Counter::PassBadL4)?;
        // SAFETY: `ptr_at` checked the UDP header is inside the packet.
        let hdr = unsafe { core::ptr::read_unaligned(udp) };
        meta.sport = u16::from_ne_bytes([hdr[0], hdr[1]]);
        meta.dport = u16::from_ne_bytes([hdr[2], hdr[3]]);
    }
    Ok(meta)
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3_off: usize) -> Result<PacketMeta, Counter> {
    if ptr_at::<[u8; IPV4_HLEN_MIN]>(ctx, l3_off).is_none() {
        return Err(Counter::PassBadL3);
    }
    let vihl = read_u8(ctx, l3_off).ok_or(Counter::PassBadL3)?;
    let ihl = usize::from(vihl & 0x0F) * 4;
    if vihl >> 4 != 4 || ihl < IPV4_HLEN_MIN {
        return Err(Counter::PassBadL3);
    }
    let frag = read_be16(ctx, l3_off + 6).ok_or(Counter::PassBadL3)?;
    if frag & (IP_MF | IP_OFFSET) != 0 {
        return Err(Counter::PassFragment);
    }
    let proto = read_u8(ctx, l3_off + 9).ok_or(Counter::PassBadL3)?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(Counter::PassNotTcpUdp);
    }
    let src = read_raw32(ctx, l3_off + 12).ok_or(Counter::PassBadL3)?;
    let dst = read_raw32(ctx, l3_off + 16).ok_or(Counter::PassBadL3)?;
    let ip_len = read_be16(ctx, l3_off + 2).ok_or(Counter::PassBadL3)?;
    Ok(PacketMeta {
        family: Family::V4,
        proto,
        l3_off,
        l4_off: l3_off + ihl,
        src: [src, 0, 0, 0],
        dst: [dst, 0, 0, 0],
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        ip_len,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3_off: usize) -> Result<PacketMeta, Counter> {
    if ptr_at::<[u8; IPV6_HLEN]>(ctx, l3_off).is_none() {
        return Err(Counter::PassBadL3);
    }
    let version = read_u8(ctx, l3_off).ok_or(Counter::PassBadL3)? >> 4;
    if version != 6 {
        return Err(Counter::PassBadL3);
    }
    let next = read_u8(ctx, l3_off + 6).ok_or(Counter::PassBadL3)?;
    match next {
        IPPROTO_TCP | IPPROTO_UDP => {
            let addr = |off: usize| -> Result<[u32; 4], Counter> {
                let w = |i: usize| read_raw32(ctx, l3_off + off + i * 4).ok_or(Counter::PassBadL3);
                Ok([w(0)?, w(1)?, w(2)?, w(3)?])
            };
            let payload_len = read_be16(ctx, l3_off + 4).ok_or(Counter::PassBadL3)?;
            Ok(PacketMeta {
                family: Family::V6,
                proto: next,
                l3_off,
                l4_off: l3_off + IPV6_HLEN,
                src: addr(8)?,
                dst: addr(24)?,
                sport: 0,
                dport: 0,
                tcp_flags: 0,
                ip_len: payload_len.wrapping_add(IPV6_HLEN as u16),
            })
        }
        // Hop-by-hop, routing, fragment, AH, destination options, mobility, HIP, shim6.
        0 | 43 | 44 | 51 | 60 | 135 | 139 | 140 => Err(Counter::PassIpv6ExtHeader),
        _ => Err(Counter::PassNotTcpUdp),
    }
}
