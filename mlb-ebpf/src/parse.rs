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
/// Addresses are kept as the raw bytes of the packet (network order); ports likewise.
pub struct PacketMeta {
    pub family: Family,
    /// L4 protocol number (TCP or UDP).
    pub proto: u8,
    /// Offset of the IP header from the start of the frame.
    pub l3_off: usize,
    /// Offset of the TCP/UDP header from the start of the frame.
    pub l4_off: usize,
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
    let (family, proto, l4_off) = match ether_type {
        ETH_P_IP => parse_ipv4(ctx, l3_off)?,
        ETH_P_IPV6 => parse_ipv6(ctx, l3_off)?,
        _ => return Err(Counter::PassNotIp),
    };
    match proto {
        IPPROTO_TCP => {
            // Data offset in 32-bit words, high nibble of byte 12.
            let doff = read_u8(ctx, l4_off + 12).ok_or(Counter::PassBadL4)? >> 4;
            let hlen = usize::from(doff) * 4;
            if hlen < TCP_HLEN_MIN || ptr_at::<[u8; TCP_HLEN_MIN]>(ctx, l4_off).is_none() {
                return Err(Counter::PassBadL4);
            }
        }
        _ => {
            if ptr_at::<[u8; UDP_HLEN]>(ctx, l4_off).is_none() {
                return Err(Counter::PassBadL4);
            }
        }
    }
    Ok(PacketMeta {
        family,
        proto,
        l3_off,
        l4_off,
    })
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3_off: usize) -> Result<(Family, u8, usize), Counter> {
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
    Ok((Family::V4, proto, l3_off + ihl))
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3_off: usize) -> Result<(Family, u8, usize), Counter> {
    if ptr_at::<[u8; IPV6_HLEN]>(ctx, l3_off).is_none() {
        return Err(Counter::PassBadL3);
    }
    let version = read_u8(ctx, l3_off).ok_or(Counter::PassBadL3)? >> 4;
    if version != 6 {
        return Err(Counter::PassBadL3);
    }
    let next = read_u8(ctx, l3_off + 6).ok_or(Counter::PassBadL3)?;
    match next {
        IPPROTO_TCP | IPPROTO_UDP => Ok((Family::V6, next, l3_off + IPV6_HLEN)),
        // Hop-by-hop, routing, fragment, AH, destination options, mobility, HIP, shim6.
        0 | 43 | 44 | 51 | 60 | 135 | 139 | 140 => Err(Counter::PassIpv6ExtHeader),
        _ => Err(Counter::PassNotTcpUdp),
    }
}
