//! Hand-built Ethernet frames for BPF_PROG_TEST_RUN fixtures, and from-scratch checksum checks
//! for the frames the program writes back. Every field is written and read at the offset
//! `mlb_common::net` names, the table the XDP program parses with.
//!
//! ```
//! use mlb_common::net::{eth, ipv4, tcp};
//! use mlb_tests::packet::{PacketBuilder, TCP_SYN};
//! let frame = PacketBuilder::new()
//!     .ipv4("198.18.1.1".parse().unwrap(), "198.18.1.2".parse().unwrap())
//!     .tcp(40000, 80, TCP_SYN)
//!     .build();
//! assert_eq!(frame.len(), eth::HLEN + ipv4::HLEN_MIN + tcp::HLEN_MIN);
//! ```
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use mlb_common::net::tcp::{
    ACK as TCP_ACK, FIN as TCP_FIN, PSH as TCP_PSH, RST as TCP_RST, SYN as TCP_SYN,
};
use mlb_common::net::{
    ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP, eth, icmp, ipv4, ipv6, tcp, udp, vlan,
};

/// Default MACs of fixtures: the client side, and the load balancer's interface.
pub const MAC_CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
pub const MAC_LB: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];

enum L3 {
    None,
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        options: Vec<u8>,
        frag: u16,
        ttl: u8,
        id: u16,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        next_header: Option<u8>,
        hop_limit: u8,
    },
}

enum L4 {
    None,
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// A raw protocol number with the payload as its body.
    Raw {
        proto: u8,
    },
    /// ICMP or ICMPv6 (by the IP header's family), its checksum computed.
    Icmp {
        icmp_type: u8,
        code: u8,
        rest: [u8; 4],
    },
}

/// Builds one frame: Ethernet, optional VLAN tag, IPv4/IPv6, TCP/UDP, payload. Lengths and
/// checksums are computed in [`PacketBuilder::build`] unless overridden.
pub struct PacketBuilder {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    ether_type: Option<u16>,
    l3: L3,
    l4: L4,
    /// TCP options (a multiple of 4 bytes), after the fixed TCP header.
    tcp_options: Vec<u8>,
    payload: Vec<u8>,
}

impl Default for PacketBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketBuilder {
    /// A frame from [`MAC_CLIENT`] to [`MAC_LB`] with nothing above Ethernet yet.
    pub fn new() -> Self {
        PacketBuilder {
            src_mac: MAC_CLIENT,
            dst_mac: MAC_LB,
            vlan: None,
            ether_type: None,
            l3: L3::None,
            l4: L4::None,
            tcp_options: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// Sets source and destination MACs.
    pub fn eth(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// Adds one 802.1Q tag with this VLAN id.
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }

    /// Forces the (inner) EtherType, e.g. 0x0806 for ARP.
    pub fn ether_type(mut self, t: u16) -> Self {
        self.ether_type = Some(t);
        self
    }

    /// IPv4 header (TTL 64, no options, not fragmented).
    pub fn ipv4(mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        self.l3 = L3::V4 {
            src,
            dst,
            options: Vec::new(),
            frag: 0,
            ttl: 64,
            id: 0x1234,
        };
        self
    }

    /// IPv6 header (hop limit 64).
    pub fn ipv6(mut self, src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        self.l3 = L3::V6 {
            src,
            dst,
            next_header: None,
            hop_limit: 64,
        };
        self
    }

    /// IPv4 or IPv6 header, by the addresses' family.
    pub fn ip(self, src: IpAddr, dst: IpAddr) -> Self {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.ipv4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.ipv6(s, d),
            _ => panic!("mixed address families {src} {dst}"),
        }
    }

    /// IPv4 options (padded to a multiple of 4 bytes); IHL grows accordingly.
    pub fn ipv4_options(mut self, opts: &[u8]) -> Self {
        if let L3::V4 { options, .. } = &mut self.l3 {
            options.extend_from_slice(opts);
            while options.len() % 4 != 0 {
                options.push(0);
            }
        }
        self
    }

    /// IPv4 fragment: more-fragments flag and offset (in 8-byte units).
    pub fn ipv4_fragment(mut self, more_fragments: bool, offset: u16) -> Self {
        if let L3::V4 { frag, .. } = &mut self.l3 {
            *frag = (if more_fragments { ipv4::MF } else { 0 }) | (offset & ipv4::OFFSET_MASK);
        }
        self
    }

    /// Sets the IPv4 "don't fragment" flag.
    pub fn dont_fragment(mut self) -> Self {
        if let L3::V4 { frag, .. } = &mut self.l3 {
            *frag |= ipv4::DF;
        }
        self
    }

    /// Sets the IPv4 TTL or IPv6 hop limit.
    pub fn ttl(mut self, value: u8) -> Self {
        match &mut self.l3 {
            L3::V4 { ttl, .. } => *ttl = value,
            L3::V6 { hop_limit, .. } => *hop_limit = value,
            L3::None => {}
        }
        self
    }

    /// IPv6 next-header override (e.g. an extension header number); the payload follows as is.
    pub fn ipv6_next_header(mut self, nh: u8) -> Self {
        if let L3::V6 { next_header, .. } = &mut self.l3 {
            *next_header = Some(nh);
        }
        self
    }

    /// TCP header with these ports and flags (seq 1000, ack 0 unless ACK is set).
    pub fn tcp(mut self, sport: u16, dport: u16, flags: u8) -> Self {
        let ack = if flags & TCP_ACK != 0 { 2000 } else { 0 };
        self.l4 = L4::Tcp {
            sport,
            dport,
            flags,
            seq: 1000,
            ack,
        };
        self
    }

    /// TCP with explicit sequence and acknowledgement numbers.
    pub fn tcp_seq(mut self, sport: u16, dport: u16, flags: u8, seq: u32, ack: u32) -> Self {
        self.l4 = L4::Tcp {
            sport,
            dport,
            flags,
            seq,
            ack,
        };
        self
    }

    /// TCP options (padded with NOPs to a multiple of 4 bytes).
    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        self.tcp_options = options.to_vec();
        while !self.tcp_options.len().is_multiple_of(4) {
            self.tcp_options.push(1);
        }
        self
    }

    /// A TCP timestamp option (`NOP NOP TS`) with this TSval.
    pub fn tcp_timestamp(self, tsval: u32) -> Self {
        let mut o = vec![1, 1, 8, 10];
        o.extend_from_slice(&tsval.to_be_bytes());
        o.extend_from_slice(&[0; 4]);
        self.tcp_options(&o)
    }

    /// UDP header with these ports.
    pub fn udp(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = L4::Udp { sport, dport };
        self
    }

    /// Another L4 protocol number (ICMP = 1, GRE = 47, …); the payload is its body.
    pub fn l4_proto(mut self, proto: u8) -> Self {
        self.l4 = L4::Raw { proto };
        self
    }

    /// An ICMP (IPv4) or ICMPv6 (IPv6) message: type, code, the four bytes after the checksum
    /// (e.g. a next-hop MTU); the payload is its body (the quoted packet of an error).
    pub fn icmp(mut self, icmp_type: u8, code: u8, rest: [u8; 4]) -> Self {
        self.l4 = L4::Icmp {
            icmp_type,
            code,
            rest,
        };
        self
    }

    /// An ICMP error quoting `quoted` (a frame from this module: its IP packet on is quoted).
    pub fn icmp_error(self, icmp_type: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Self {
        self.icmp(icmp_type, code, rest)
            .payload(quoted.get(eth::HLEN..).expect("a quoted frame"))
    }

    /// Application payload.
    pub fn payload(mut self, data: &[u8]) -> Self {
        self.payload = data.to_vec();
        self
    }

    /// Assembles the frame with correct lengths and checksums.
    pub fn build(self) -> Vec<u8> {
        let (proto, mut l4) = match &self.l4 {
            L4::None => (0u8, Vec::new()),
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
            } => {
                let mut h = vec![0; tcp::HLEN_MIN];
                put(&mut h, tcp::SPORT, &sport.to_be_bytes());
                put(&mut h, tcp::DPORT, &dport.to_be_bytes());
                put(&mut h, tcp::SEQ, &seq.to_be_bytes());
                put(&mut h, tcp::ACK_SEQ, &ack.to_be_bytes());
                h.extend_from_slice(&self.tcp_options);
                h[tcp::DOFF] = words(h.len()) << 4;
                h[tcp::FLAGS] = *flags;
                put(&mut h, tcp::WINDOW, &64240u16.to_be_bytes());
                (IPPROTO_TCP, h)
            }
            L4::Udp { sport, dport } => {
                let mut h = vec![0; udp::HLEN];
                put(&mut h, udp::SPORT, &sport.to_be_bytes());
                put(&mut h, udp::DPORT, &dport.to_be_bytes());
                let len = u16::try_from(udp::HLEN + self.payload.len()).expect("UDP length");
                put(&mut h, udp::LEN, &len.to_be_bytes());
                (IPPROTO_UDP, h)
            }
            L4::Raw { proto } => (*proto, Vec::new()),
            L4::Icmp {
                icmp_type,
                code,
                rest,
            } => {
                let mut h = vec![*icmp_type, *code, 0, 0];
                h.extend_from_slice(rest);
                let proto = match self.l3 {
                    L3::V6 { .. } => IPPROTO_ICMPV6,
                    _ => IPPROTO_ICMP,
                };
                (proto, h)
            }
        };
        l4.extend_from_slice(&self.payload);

        let mut frame = vec![0; eth::HLEN];
        put(&mut frame, eth::DST, &self.dst_mac);
        put(&mut frame, eth::SRC, &self.src_mac);
        let inner_type = self.ether_type.unwrap_or(match self.l3 {
            L3::V4 { .. } => ETH_P_IP,
            L3::V6 { .. } => ETH_P_IPV6,
            L3::None => ETH_P_ARP,
        });
        match self.vlan {
            Some(vid) => {
                put(&mut frame, eth::TYPE, &ETH_P_8021Q.to_be_bytes());
                let mut tag = [0; vlan::HLEN];
                put(&mut tag, vlan::TCI, &(vid & 0x0FFF).to_be_bytes());
                put(&mut tag, vlan::TYPE, &inner_type.to_be_bytes());
                frame.extend_from_slice(&tag);
            }
            None => put(&mut frame, eth::TYPE, &inner_type.to_be_bytes()),
        }
        match &self.l3 {
            L3::None => {}
            L3::V4 {
                src,
                dst,
                options,
                frag,
                ttl,
                id,
            } => {
                let mut h = vec![0; ipv4::HLEN_MIN];
                h.extend_from_slice(options);
                let total = u16::try_from(h.len() + l4.len()).expect("IPv4 length");
                h[ipv4::VER_IHL] = 0x40 | words(h.len());
                put(&mut h, ipv4::TOT_LEN, &total.to_be_bytes());
                put(&mut h, ipv4::ID, &id.to_be_bytes());
                put(&mut h, ipv4::FRAG_OFF, &frag.to_be_bytes());
                h[ipv4::TTL] = *ttl;
                h[ipv4::PROTO] = proto;
                put(&mut h, ipv4::SRC, &src.octets());
                put(&mut h, ipv4::DST, &dst.octets());
                let c = checksum(&[&h]);
                put(&mut h, ipv4::CSUM, &c.to_be_bytes());
                let pseudo = pseudo_v4(*src, *dst, proto, l4.len());
                fill_l4_checksum(&mut l4, proto, &pseudo);
                frame.extend_from_slice(&h);
            }
            L3::V6 {
                src,
                dst,
                next_header,
                hop_limit,
            } => {
                let mut h = vec![0; ipv6::HLEN];
                h[ipv6::VER_TC_FLOW] = 0x60;
                let len = u16::try_from(l4.len()).expect("IPv6 length");
                put(&mut h, ipv6::PAYLOAD_LEN, &len.to_be_bytes());
                h[ipv6::NEXT_HEADER] = next_header.unwrap_or(proto);
                h[ipv6::HOP_LIMIT] = *hop_limit;
                put(&mut h, ipv6::SRC, &src.octets());
                put(&mut h, ipv6::DST, &dst.octets());
                if next_header.is_none() {
                    let pseudo = pseudo_v6(*src, *dst, proto, l4.len());
                    fill_l4_checksum(&mut l4, proto, &pseudo);
                }
                frame.extend_from_slice(&h);
            }
        }
        frame.extend_from_slice(&l4);
        frame
    }
}

/// Writes `bytes` at `offset` of a header.
fn put(header: &mut [u8], offset: usize, bytes: &[u8]) {
    header[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// A header length in the 32-bit words IHL and the TCP data offset count in.
fn words(len: usize) -> u8 {
    u8::try_from(len / 4).expect("header length in words")
}

fn fill_l4_checksum(l4: &mut [u8], proto: u8, pseudo: &[u8]) {
    let (at, pseudo) = match proto {
        IPPROTO_TCP if l4.len() >= tcp::HLEN_MIN => (tcp::CSUM, pseudo),
        IPPROTO_UDP if l4.len() >= udp::HLEN => (udp::CSUM, pseudo),
        // ICMPv4's checksum covers the message only.
        IPPROTO_ICMP if l4.len() >= icmp::HLEN => (icmp::CSUM, &[][..]),
        IPPROTO_ICMPV6 if l4.len() >= icmp::HLEN => (icmp::CSUM, pseudo),
        _ => return,
    };
    l4[at] = 0;
    l4[at + 1] = 0;
    let mut c = checksum(&[pseudo, l4]);
    if proto == IPPROTO_UDP && c == 0 {
        c = 0xFFFF; // UDP: a computed 0 is sent as all ones
    }
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.push(0);
    p.push(proto);
    p.extend_from_slice(&u16::try_from(len).expect("L4 length").to_be_bytes());
    p
}

fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&u32::try_from(len).expect("L4 length").to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto]);
    p
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`.
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(u16::try_from(sum).expect("folded"))
}

/// What a test needs to know about a frame the program wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// TTL / hop limit.
    pub ttl: u8,
    /// IPv4 header checksum and L4 checksum verified from scratch.
    pub checksums_ok: bool,
    pub payload: Vec<u8>,
}

/// Parses an untagged Ethernet + IPv4/IPv6 + TCP/UDP (or ICMP) frame and verifies its
/// checksums from scratch (independently of how the program updated them). For ICMP, the
/// ports are 0 and the payload is the message body (an error's quoted packet: see
/// [`parse_quoted`]).
pub fn parse(frame: &[u8]) -> Option<Parsed> {
    let dst_mac = array_at(frame, eth::DST)?;
    let src_mac = array_at(frame, eth::SRC)?;
    let ether_type = u16_at(frame, eth::TYPE)?;
    let mut parsed = parse_ip(ether_type, frame.get(eth::HLEN..)?)?;
    parsed.dst_mac = dst_mac;
    parsed.src_mac = src_mac;
    Some(parsed)
}

/// The packet an ICMP error quotes (`error`, parsed), parsed with its checksums verified: the
/// test quotes whole packets. No MACs (zero).
pub fn parse_quoted(error: &Parsed) -> Option<Parsed> {
    let ether_type = match error.proto {
        IPPROTO_ICMP => ETH_P_IP,
        IPPROTO_ICMPV6 => ETH_P_IPV6,
        _ => return None,
    };
    parse_ip(ether_type, &error.payload)
}

/// [`parse`] from the IP header on.
fn parse_ip(ether_type: u16, ip: &[u8]) -> Option<Parsed> {
    let (src, dst, proto, ttl, l4, ip_ok, pseudo): (IpAddr, IpAddr, u8, u8, &[u8], bool, Vec<u8>) =
        match ether_type {
            ETH_P_IP => {
                let ihl = usize::from(ip.get(ipv4::VER_IHL)? & 0x0F) * 4;
                let total = usize::from(u16_at(ip, ipv4::TOT_LEN)?);
                let src = Ipv4Addr::from(array_at::<4>(ip, ipv4::SRC)?);
                let dst = Ipv4Addr::from(array_at::<4>(ip, ipv4::DST)?);
                let proto = *ip.get(ipv4::PROTO)?;
                let l4 = ip.get(ihl..total)?;
                let ok = checksum(&[ip.get(..ihl)?]) == 0;
                (
                    src.into(),
                    dst.into(),
                    proto,
                    ip[ipv4::TTL],
                    l4,
                    ok,
                    pseudo_v4(src, dst, proto, l4.len()),
                )
            }
            ETH_P_IPV6 => {
                let plen = usize::from(u16_at(ip, ipv6::PAYLOAD_LEN)?);
                let src = Ipv6Addr::from(array_at::<16>(ip, ipv6::SRC)?);
                let dst = Ipv6Addr::from(array_at::<16>(ip, ipv6::DST)?);
                let proto = *ip.get(ipv6::NEXT_HEADER)?;
                let l4 = ip.get(ipv6::HLEN..ipv6::HLEN + plen)?;
                (
                    src.into(),
                    dst.into(),
                    proto,
                    ip[ipv6::HOP_LIMIT],
                    l4,
                    true,
                    pseudo_v6(src, dst, proto, l4.len()),
                )
            }
            _ => return None,
        };
    let is_icmp = proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6;
    let (sport, dport) = if is_icmp {
        (0, 0)
    } else {
        (u16_at(l4, tcp::SPORT)?, u16_at(l4, tcp::DPORT)?)
    };
    let hlen = match proto {
        IPPROTO_TCP => usize::from(l4.get(tcp::DOFF)? >> 4) * 4,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => icmp::HLEN,
        _ => udp::HLEN,
    };
    let pseudo: &[u8] = if proto == IPPROTO_ICMP { &[] } else { &pseudo };
    let l4_ok = checksum(&[pseudo, l4]) == 0;
    Some(Parsed {
        dst_mac: [0; 6],
        src_mac: [0; 6],
        src,
        dst,
        proto,
        sport,
        dport,
        ttl,
        checksums_ok: ip_ok && l4_ok,
        payload: l4.get(hlen..)?.to_vec(),
    })
}

/// The `N` bytes at `offset`, if the slice holds them.
fn array_at<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    bytes.get(offset..offset + N)?.try_into().ok()
}

/// The big-endian `u16` at `offset`.
fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    array_at(bytes, offset).map(u16::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_have_valid_checksums() {
        for frame in [
            PacketBuilder::new()
                .ipv4("198.18.1.1".parse().unwrap(), "198.18.1.2".parse().unwrap())
                .tcp(40000, 80, TCP_SYN)
                .payload(b"odd")
                .build(),
            PacketBuilder::new()
                .ipv6("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
                .udp(5000, 53)
                .payload(b"hello")
                .build(),
            PacketBuilder::new()
                .ipv4("198.18.1.1".parse().unwrap(), "198.18.1.2".parse().unwrap())
                .ipv4_options(&[0x94, 0x04, 0, 0])
                .udp(5000, 53)
                .build(),
        ] {
            let p = parse(&frame).expect("parses");
            assert!(p.checksums_ok, "{p:?}");
        }
    }

    #[test]
    fn a_corrupted_frame_fails_the_checksum_check() {
        let mut frame = PacketBuilder::new()
            .ipv4("198.18.1.1".parse().unwrap(), "198.18.1.2".parse().unwrap())
            .tcp(40000, 80, TCP_SYN)
            .build();
        let last = frame.len() - 1;
        frame[last] ^= 0x40; // flips a bit of the TCP urgent pointer
        assert!(!parse(&frame).unwrap().checksums_ok);
    }
}
