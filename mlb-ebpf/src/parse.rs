//! Bounds-checked packet parsing. Only [`ptr_at`] touches `ctx.data()`: every header access goes
//! through it, so every access carries the check the verifier needs right next to it.
use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use mlb_common::{
    maps::{FAMILY_V4, FAMILY_V6},
    net::{
        ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP, eth, ipv4, ipv6, is_ipv6_ext_header, tcp, udp, vlan,
    },
    stats::Counter,
};

use crate::exit::Exit;

const TRUNCATED_ETH: Exit = Exit::Pass(Counter::PassTruncatedEth);
/// An IP header the packet is too short for, or a malformed one.
pub const BAD_L3: Exit = Exit::Pass(Counter::PassBadL3);
/// A TCP/UDP header the packet is too short for, or a malformed one.
pub const BAD_L4: Exit = Exit::Pass(Counter::PassBadL4);

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
fn read_raw32(ctx: &XdpContext, offset: usize) -> Option<u32> {
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

impl Family {
    /// The `family` value of map keys.
    #[inline(always)]
    pub fn code(self) -> u8 {
        match self {
            Family::V4 => FAMILY_V4,
            Family::V6 => FAMILY_V6,
        }
    }
}

/// Everything later steps need from one packet, parsed once.
///
/// Addresses and ports are kept as loaded from the packet (network order), the layout of the
/// map keys.
pub struct PacketMeta {
    pub family: Family,
    /// L4 protocol number: TCP or UDP, or ICMP of the family (see [`PacketMeta::is_icmp`]).
    pub proto: u8,
    /// Offset of the IP header from the start of the frame.
    pub l3_off: usize,
    /// Offset of the TCP/UDP (or ICMP) header from the start of the frame.
    pub l4_off: usize,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// Bytes from the IP header on (for statistics and the FIB MTU check).
    pub ip_len: u16,
    /// TTL or hop limit, as it arrived.
    pub ttl: u8,
}

impl PacketMeta {
    /// An ICMP (IPv4) or ICMPv6 (IPv6) packet: no ports; `icmp.rs` looks at it.
    #[inline(always)]
    pub fn is_icmp(&self) -> bool {
        self.proto == IPPROTO_ICMP || self.proto == IPPROTO_ICMPV6
    }

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

/// Parses Ethernet (at most one 802.1Q/802.1ad tag), IPv4 or IPv6, and TCP or UDP; ICMP (of
/// the packet's family) is parsed up to its IP header, for `icmp.rs`.
///
/// Anything else is left to the kernel, with the counter that names why.
#[inline(always)]
pub fn parse_packet(ctx: &XdpContext) -> Result<PacketMeta, Exit> {
    let mut ether_type = read_be16(ctx, eth::TYPE).ok_or(TRUNCATED_ETH)?;
    let mut l3_off = eth::HLEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        ether_type = read_be16(ctx, eth::HLEN + vlan::TYPE).ok_or(TRUNCATED_ETH)?;
        l3_off += vlan::HLEN;
    }
    let mut meta = match ether_type {
        ETH_P_IP => parse_ipv4(ctx, l3_off)?,
        ETH_P_IPV6 => parse_ipv6(ctx, l3_off)?,
        _ => return Err(Exit::Pass(Counter::PassNotIp)),
    };
    // One checked pointer per header, every field read through it: the verifier then knows
    // each access is inside the range checked for that pointer.
    let l4_off = meta.l4_off;
    if meta.is_icmp() {
        return Ok(meta);
    }
    if meta.proto == IPPROTO_TCP {
        let p = ptr_at::<[u8; tcp::HLEN_MIN]>(ctx, l4_off).ok_or(BAD_L4)?;
        // SAFETY: `ptr_at` checked the whole fixed TCP header is inside the packet.
        let hdr = unsafe { core::ptr::read_unaligned(p) };
        // Data offset in 32-bit words, high nibble.
        if usize::from(hdr[tcp::DOFF] >> 4) * 4 < tcp::HLEN_MIN {
            return Err(BAD_L4);
        }
        meta.tcp_flags = hdr[tcp::FLAGS];
        meta.sport = u16::from_ne_bytes([hdr[tcp::SPORT], hdr[tcp::SPORT + 1]]);
        meta.dport = u16::from_ne_bytes([hdr[tcp::DPORT], hdr[tcp::DPORT + 1]]);
    } else {
        let p = ptr_at::<[u8; udp::HLEN]>(ctx, l4_off).ok_or(BAD_L4)?;
        // SAFETY: `ptr_at` checked the UDP header is inside the packet.
        let hdr = unsafe { core::ptr::read_unaligned(p) };
        meta.sport = u16::from_ne_bytes([hdr[udp::SPORT], hdr[udp::SPORT + 1]]);
        meta.dport = u16::from_ne_bytes([hdr[udp::DPORT], hdr[udp::DPORT + 1]]);
    }
    Ok(meta)
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3_off: usize) -> Result<PacketMeta, Exit> {
    if ptr_at::<[u8; ipv4::HLEN_MIN]>(ctx, l3_off).is_none() {
        return Err(BAD_L3);
    }
    let vihl = read_u8(ctx, l3_off + ipv4::VER_IHL).ok_or(BAD_L3)?;
    let ihl = usize::from(vihl & 0x0F) * 4;
    if vihl >> 4 != 4 || ihl < ipv4::HLEN_MIN {
        return Err(BAD_L3);
    }
    let frag = read_be16(ctx, l3_off + ipv4::FRAG_OFF).ok_or(BAD_L3)?;
    if frag & (ipv4::MF | ipv4::OFFSET_MASK) != 0 {
        return Err(Exit::Pass(Counter::PassFragment));
    }
    let proto = read_u8(ctx, l3_off + ipv4::PROTO).ok_or(BAD_L3)?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_ICMP {
        return Err(Exit::Pass(Counter::PassNotTcpUdp));
    }
    let src = read_raw32(ctx, l3_off + ipv4::SRC).ok_or(BAD_L3)?;
    let dst = read_raw32(ctx, l3_off + ipv4::DST).ok_or(BAD_L3)?;
    let ip_len = read_be16(ctx, l3_off + ipv4::TOT_LEN).ok_or(BAD_L3)?;
    let ttl = read_u8(ctx, l3_off + ipv4::TTL).ok_or(BAD_L3)?;
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
        ttl,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3_off: usize) -> Result<PacketMeta, Exit> {
    if ptr_at::<[u8; ipv6::HLEN]>(ctx, l3_off).is_none() {
        return Err(BAD_L3);
    }
    let version = read_u8(ctx, l3_off + ipv6::VER_TC_FLOW).ok_or(BAD_L3)? >> 4;
    if version != 6 {
        return Err(BAD_L3);
    }
    let next = read_u8(ctx, l3_off + ipv6::NEXT_HEADER).ok_or(BAD_L3)?;
    if next != IPPROTO_TCP && next != IPPROTO_UDP && next != IPPROTO_ICMPV6 {
        return Err(Exit::Pass(if is_ipv6_ext_header(next) {
            Counter::PassIpv6ExtHeader
        } else {
            Counter::PassNotTcpUdp
        }));
    }
    let addr = |off: usize| -> Result<[u32; 4], Exit> {
        let w = |i: usize| read_raw32(ctx, l3_off + off + i * 4).ok_or(BAD_L3);
        Ok([w(0)?, w(1)?, w(2)?, w(3)?])
    };
    let payload_len = read_be16(ctx, l3_off + ipv6::PAYLOAD_LEN).ok_or(BAD_L3)?;
    let ttl = read_u8(ctx, l3_off + ipv6::HOP_LIMIT).ok_or(BAD_L3)?;
    Ok(PacketMeta {
        family: Family::V6,
        proto: next,
        l3_off,
        l4_off: l3_off + ipv6::HLEN,
        src: addr(ipv6::SRC)?,
        dst: addr(ipv6::DST)?,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        ip_len: payload_len.wrapping_add(ipv6::HLEN as u16),
        ttl,
    })
}
