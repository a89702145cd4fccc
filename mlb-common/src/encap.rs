//! Direct server return (`--forwarding dsr`): the outer header the program puts in front of a
//! client's packet so that it reaches the backend unchanged (IPv4 in IPv4, IPv6 in IPv6), the
//! backend decapsulates it on its tunnel device and answers the client itself.
//!
//! Built here, as plain bytes, so the program and the tests share one definition of the header
//! (and its checksum) and the agent's unit tests can check it on the host.
use crate::net::{ipv4, ipv6};

/// IP protocol number of IPv4-in-IPv4 (IPIP).
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol (next header) number of IPv6-in-IPv6.
pub const IPPROTO_IPV6: u8 = 41;
/// TTL / hop limit of the outer header: the backend is a few routed hops away at most.
pub const OUTER_TTL: u8 = 64;
/// Room for the longer of the two outer headers.
pub const OUTER_MAX: usize = ipv6::HLEN;

/// Bytes the outer header adds to a packet of family `family` (`maps::FAMILY_*`).
#[inline(always)]
pub const fn outer_len(family: u8) -> usize {
    if family == crate::maps::FAMILY_V4 {
        ipv4::HLEN_MIN
    } else {
        ipv6::HLEN
    }
}

/// Writes into `out[..20]` the IPv4 header carrying an inner IPv4 packet of `inner_len` bytes
/// from `src` to `dst` (raw network-order words, as in the maps), checksum included. `None`
/// when the packet would exceed the 65,535 bytes an IPv4 length can say.
#[inline(always)]
pub fn write_outer_ipv4(
    out: &mut [u8; OUTER_MAX],
    src: u32,
    dst: u32,
    inner_len: u16,
) -> Option<()> {
    let total = inner_len.checked_add(ipv4::HLEN_MIN as u16)?;
    *out = [0; OUTER_MAX];
    out[ipv4::VER_IHL] = 0x45;
    out[ipv4::TOT_LEN..ipv4::TOT_LEN + 2].copy_from_slice(&total.to_be_bytes());
    out[ipv4::TTL] = OUTER_TTL;
    out[ipv4::PROTO] = IPPROTO_IPIP;
    out[ipv4::SRC..ipv4::SRC + 4].copy_from_slice(&src.to_ne_bytes());
    out[ipv4::DST..ipv4::DST + 4].copy_from_slice(&dst.to_ne_bytes());
    let mut sum = 0u32;
    for i in 0..ipv4::HLEN_MIN / 2 {
        sum += u32::from(u16::from_be_bytes([out[2 * i], out[2 * i + 1]]));
    }
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    out[ipv4::CSUM..ipv4::CSUM + 2].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    Some(())
}

/// Writes into `out` the IPv6 header carrying an inner IPv6 packet of `inner_len` bytes (its
/// own 40-byte header included) from `src` to `dst`. `flow_label` (low 20 bits used) gives
/// routers between the load balancer and the backend the flow's entropy, which the outer
/// addresses alone do not have. `None` when the payload length would not fit.
#[inline(always)]
pub fn write_outer_ipv6(
    out: &mut [u8; OUTER_MAX],
    src: &[u32; 4],
    dst: &[u32; 4],
    inner_len: u16,
    flow_label: u32,
) -> Option<()> {
    let word0 = (6u32 << 28) | (flow_label & 0x000F_FFFF);
    out[ipv6::VER_TC_FLOW..ipv6::VER_TC_FLOW + 4].copy_from_slice(&word0.to_be_bytes());
    out[ipv6::PAYLOAD_LEN..ipv6::PAYLOAD_LEN + 2].copy_from_slice(&inner_len.to_be_bytes());
    out[ipv6::NEXT_HEADER] = IPPROTO_IPV6;
    out[ipv6::HOP_LIMIT] = OUTER_TTL;
    for i in 0..4 {
        let (s, d) = (ipv6::SRC + 4 * i, ipv6::DST + 4 * i);
        out[s..s + 4].copy_from_slice(&src[i].to_ne_bytes());
        out[d..d + 4].copy_from_slice(&dst[i].to_ne_bytes());
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Internet checksum of a header with its checksum field in place is zero.
    fn folds_to_zero(h: &[u8]) -> bool {
        let mut sum: u32 = h
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum();
        while sum > 0xFFFF {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        sum == 0xFFFF
    }

    #[test]
    fn outer_ipv4_is_a_valid_ipip_header() {
        let mut out = [0xAA; OUTER_MAX];
        let (src, dst) = ([198, 18, 2, 1], [198, 18, 2, 11]);
        write_outer_ipv4(
            &mut out,
            u32::from_ne_bytes(src),
            u32::from_ne_bytes(dst),
            60,
        )
        .unwrap();
        let h = &out[..20];
        assert_eq!(h[0], 0x45);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 80);
        assert_eq!((h[8], h[9]), (OUTER_TTL, IPPROTO_IPIP));
        assert_eq!((&h[12..16], &h[16..20]), (&src[..], &dst[..]));
        assert!(folds_to_zero(h), "checksum of {h:02x?}");
        assert!(write_outer_ipv4(&mut out, 1, 2, u16::MAX - 10).is_none());
    }

    #[test]
    fn outer_ipv6_is_an_ip6ip6_header() {
        let mut out = [0; OUTER_MAX];
        let (src, dst) = ([1u32.to_be(), 0, 0, 2u32.to_be()], [3u32.to_be(), 0, 0, 4]);
        write_outer_ipv6(&mut out, &src, &dst, 100, 0xFFF1_2345).unwrap();
        assert_eq!(&out[..4], &[0x60, 0x01, 0x23, 0x45]);
        assert_eq!(u16::from_be_bytes([out[4], out[5]]), 100);
        assert_eq!((out[6], out[7]), (IPPROTO_IPV6, OUTER_TTL));
        assert_eq!(&out[8..12], &1u32.to_be_bytes());
        assert_eq!(&out[36..40], &4u32.to_ne_bytes());
    }
}
