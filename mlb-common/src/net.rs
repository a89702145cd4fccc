//! The wire format of the frames the XDP program parses and rewrites: header lengths, field
//! offsets (from the start of their own header), EtherTypes and protocol numbers.
//!
//! The program reads packets with these, and the tests build and inspect frames with the same
//! ones, so a fixture can never agree with the program on a wrong offset by accident of two
//! copies. Names follow Linux (`ETH_P_IP`, `IPPROTO_TCP`) where Linux has one.

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
/// EtherType of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad (QinQ outer) VLAN tag.
pub const ETH_P_8021AD: u16 = 0x88A8;

/// IPv6 hop-by-hop options (an extension header).
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IPv6 fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// Authentication header.
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 destination options.
pub const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 mobility header.
pub const IPPROTO_MH: u8 = 135;
/// Host identity protocol.
pub const IPPROTO_HIP: u8 = 139;
/// Shim6.
pub const IPPROTO_SHIM6: u8 = 140;

/// Whether an IPv6 next-header value is an extension header (which the program does not walk).
#[inline(always)]
pub const fn is_ipv6_ext_header(next_header: u8) -> bool {
    matches!(
        next_header,
        IPPROTO_HOPOPTS
            | IPPROTO_ROUTING
            | IPPROTO_FRAGMENT
            | IPPROTO_AH
            | IPPROTO_DSTOPTS
            | IPPROTO_MH
            | IPPROTO_HIP
            | IPPROTO_SHIM6
    )
}

/// Ethernet II header.
pub mod eth {
    pub const HLEN: usize = 14;
    /// Length of a MAC address.
    pub const ALEN: usize = 6;
    pub const DST: usize = 0;
    pub const SRC: usize = 6;
    pub const TYPE: usize = 12;
}

/// One 802.1Q/802.1ad tag, between the MAC addresses' EtherType and the payload.
pub mod vlan {
    pub const HLEN: usize = 4;
    /// Tag control information (priority, VLAN id).
    pub const TCI: usize = 0;
    /// The EtherType of what follows the tag.
    pub const TYPE: usize = 2;
}

/// IPv4 header.
pub mod ipv4 {
    /// Without options (IHL 5).
    pub const HLEN_MIN: usize = 20;
    /// Version (high nibble) and IHL in 32-bit words (low nibble).
    pub const VER_IHL: usize = 0;
    pub const TOT_LEN: usize = 2;
    pub const ID: usize = 4;
    /// Flags and fragment offset.
    pub const FRAG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
    /// "Don't fragment" flag in the host-order `FRAG_OFF` field.
    pub const DF: u16 = 0x4000;
    /// "More fragments" flag in the host-order `FRAG_OFF` field.
    pub const MF: u16 = 0x2000;
    /// Fragment offset (8-byte units) in the host-order `FRAG_OFF` field.
    pub const OFFSET_MASK: u16 = 0x1FFF;
}

/// IPv6 fixed header.
pub mod ipv6 {
    pub const HLEN: usize = 40;
    /// Version (high nibble of byte 0), traffic class, flow label.
    pub const VER_TC_FLOW: usize = 0;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
    /// Length of an address.
    pub const ADDR_LEN: usize = 16;
}

/// TCP header.
pub mod tcp {
    /// Without options (data offset 5).
    pub const HLEN_MIN: usize = 20;
    pub const SPORT: usize = 0;
    pub const DPORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK_SEQ: usize = 8;
    /// Data offset in 32-bit words (high nibble).
    pub const DOFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CSUM: usize = 16;
    pub const URG_PTR: usize = 18;

    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// ICMP and ICMPv6 header (the same layout): type, code, checksum, then four bytes whose
/// meaning depends on the type; an error message quotes the packet that caused it after them.
pub mod icmp {
    pub const HLEN: usize = 8;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CSUM: usize = 2;
    /// ICMPv4 destination unreachable (code 4: fragmentation needed, next-hop MTU at 6).
    pub const V4_DEST_UNREACH: u8 = 3;
    pub const V4_FRAG_NEEDED: u8 = 4;
    pub const V4_TIME_EXCEEDED: u8 = 11;
    pub const V6_DEST_UNREACH: u8 = 1;
    /// ICMPv6 packet too big (MTU, 32 bits, at 4).
    pub const V6_PACKET_TOO_BIG: u8 = 2;
    pub const V6_TIME_EXCEEDED: u8 = 3;

    /// Whether an ICMP (`v6` false) or ICMPv6 message type is an error quoting a packet that
    /// the program translates.
    #[inline(always)]
    pub const fn is_translated_error(v6: bool, icmp_type: u8) -> bool {
        if v6 {
            matches!(
                icmp_type,
                V6_DEST_UNREACH | V6_PACKET_TOO_BIG | V6_TIME_EXCEEDED
            )
        } else {
            matches!(icmp_type, V4_DEST_UNREACH | V4_TIME_EXCEEDED)
        }
    }
}

/// UDP header.
pub mod udp {
    pub const HLEN: usize = 8;
    pub const SPORT: usize = 0;
    pub const DPORT: usize = 2;
    pub const LEN: usize = 4;
    pub const CSUM: usize = 6;
}

// The program reads and rewrites the ports of either protocol at one offset.
const _: () = assert!(tcp::SPORT == udp::SPORT && tcp::DPORT == udp::DPORT);
