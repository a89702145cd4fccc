//! The backend's half of direct server return: an XDP program (`mlb backend-setup --decap
//! xdp`) that strips the outer header mlb's load balancers put in front of a client's packet
//! (IPv4 in IPv4, IPv6 in IPv6) and hands the inner packet, addressed to the VIP, to the
//! kernel as if the client had sent it here. For hosts whose kernel has no `ipip` /
//! `ip6_tunnel` module; Katran ships such a decapsulation program for the same reason.
//!
//! Every other packet passes untouched. Uses no map: loaded on its own, nothing else of the
//! object is needed.
use aya_ebpf::{
    bindings::xdp_action::XDP_PASS, helpers::bpf_xdp_adjust_head, macros::xdp, programs::XdpContext,
};
use mlb_common::{
    encap::{IPPROTO_IPIP, IPPROTO_IPV6},
    net::{ETH_P_IP, ETH_P_IPV6, eth, ipv4, ipv6},
};

use crate::parse::ptr_at;

/// Entry point on a DSR backend's interfaces.
#[xdp]
pub fn mlb_decap(ctx: XdpContext) -> u32 {
    if let Some(strip) = outer_header_len(&ctx) {
        decapsulate(&ctx, strip);
    }
    XDP_PASS
}

/// The length of the outer header to strip, if the frame is one of ours: an untagged IPv4
/// packet without options or fragmentation carrying IPv4, or an IPv6 packet carrying IPv6.
#[inline(always)]
fn outer_header_len(ctx: &XdpContext) -> Option<usize> {
    let l2 = ptr_at::<[u8; eth::HLEN]>(ctx, 0)?;
    // SAFETY: `ptr_at` checked the Ethernet header is inside the packet.
    let ether_type = unsafe { u16::from_be_bytes([(*l2)[eth::TYPE], (*l2)[eth::TYPE + 1]]) };
    if ether_type == ETH_P_IP {
        let ip = ptr_at::<[u8; ipv4::HLEN_MIN + 1]>(ctx, eth::HLEN)?;
        // SAFETY: checked for the outer header and the inner version byte.
        let h = unsafe { &*ip };
        let frag = u16::from_be_bytes([h[ipv4::FRAG_OFF], h[ipv4::FRAG_OFF + 1]]);
        let ours = h[ipv4::VER_IHL] == 0x45
            && h[ipv4::PROTO] == IPPROTO_IPIP
            && frag & (ipv4::MF | ipv4::OFFSET_MASK) == 0
            && h[ipv4::HLEN_MIN] >> 4 == 4;
        ours.then_some(ipv4::HLEN_MIN)
    } else if ether_type == ETH_P_IPV6 {
        let ip = ptr_at::<[u8; ipv6::HLEN + 1]>(ctx, eth::HLEN)?;
        // SAFETY: as above.
        let h = unsafe { &*ip };
        let ours = h[ipv6::VER_TC_FLOW] >> 4 == 6
            && h[ipv6::NEXT_HEADER] == IPPROTO_IPV6
            && h[ipv6::HLEN] >> 4 == 6;
        ours.then_some(ipv6::HLEN)
    } else {
        None
    }
}

/// Moves the Ethernet header over the outer header's last bytes and the packet's start past
/// it. The head always moves: the frame is longer than the outer header plus an Ethernet
/// header (`outer_header_len` saw the inner version byte).
#[inline(always)]
fn decapsulate(ctx: &XdpContext, strip: usize) {
    let (Some(src), Some(dst)) = (
        ptr_at::<[u8; eth::HLEN]>(ctx, 0),
        ptr_at::<[u8; eth::HLEN]>(ctx, strip),
    ) else {
        return;
    };
    // SAFETY: both were checked against the packet end; they do not overlap (strip >= 20 >
    // 14). The Ethernet header is copied before the head moves.
    unsafe {
        let l2 = core::ptr::read_unaligned(src);
        core::ptr::write_unaligned(dst, l2);
        bpf_xdp_adjust_head(ctx.ctx, strip as i32);
    }
}
