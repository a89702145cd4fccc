//! Packet fuzzing (Katran and Cilium run their datapaths against malformed input the same way):
//! seeded random and mutated frames — truncated at every offset, random TCP flags, IPv4
//! options, IPv6 extension headers, VLAN tags, fragments, flipped bytes, pure noise — through
//! BPF_PROG_TEST_RUN against a program with services, backends and live flows, from both
//! interfaces. For every frame:
//!
//! - the verdict is PASS, DROP, TX or REDIRECT, never ABORTED;
//! - a passed frame reaches the kernel exactly as it arrived, or rewritten whole (a flow whose
//!   next hop the kernel must resolve), like a forwarded one;
//! - a forwarded frame keeps its length, its checksums are valid when the input's were, and its
//!   5-tuple is the one the conntrack entry of the input's 5-tuple rewrites to;
//! - a forwarded ICMP error (the generator quotes real flows in some) goes where the entry of
//!   the flow its quote answers rewrites to, its quote is what that flow's sender sent, and
//!   its checksums (outer, ICMP, quote) are valid when the input's were.
//!
//! CI runs a bounded number (`MLB_FUZZ_ITERATIONS`, default 3,000, a few seconds);
//! `cargo xtask fuzz xdp --iterations N | --seconds S [--seed X]` runs more.
use std::{collections::BTreeMap, time::Instant};

use mlb::dataplane::xdp_l4::addr_words;
use mlb_common::{
    maps::{FAMILY_V4, FAMILY_V6, FlowKey},
    net::{
        ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS,
        IPPROTO_ROUTING, IPPROTO_TCP, icmp, ipv6, vlan,
    },
};

use super::{
    labels::{SVC_ACL, acl_service},
    *,
};

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// How long the fuzzer runs: `MLB_FUZZ_ITERATIONS` frames (default 3,000), or as many as fit
/// in `MLB_FUZZ_SECONDS`; seed `MLB_FUZZ_SEED`.
struct Budget {
    iterations: usize,
    deadline: Option<Instant>,
    seed: u64,
}

impl Budget {
    fn from_env() -> Budget {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        Budget {
            iterations: var("MLB_FUZZ_ITERATIONS").map_or(3_000, |n| n as usize),
            deadline: var("MLB_FUZZ_SECONDS").map(|s| Instant::now() + Duration::from_secs(s)),
            seed: var("MLB_FUZZ_SEED").unwrap_or(0x6d6c_625f_6675_7a7a),
        }
    }

    fn more(&self, done: usize) -> bool {
        match self.deadline {
            Some(d) => Instant::now() < d,
            None => done < self.iterations,
        }
    }
}

/// A reply direction the fuzzer has seen opened: backend → SNAT address and port.
#[derive(Clone, Copy)]
struct Reply {
    backend: SocketAddr,
    snat: SocketAddr,
    proto: u8,
}

/// Builds the frames: well-formed ones towards services and back, then decorated and mutated.
struct Generator {
    rng: Rng,
    replies: Vec<Reply>,
}

const SERVICE_PORTS: [u16; 8] = [
    SVC_TCP,
    SVC_ACL,
    SVC_UDP,
    SVC_V4_PAIR,
    SVC_EMPTY,
    SVC_LOCAL,
    SVC_V6_ONLY,
    9,
];

/// Flags seen in real traffic, and a few that are not.
const FLAGS: [u8; 9] = [
    TCP_SYN,
    TCP_SYN | TCP_ACK,
    TCP_ACK,
    TCP_ACK | TCP_PSH,
    TCP_FIN | TCP_ACK,
    TCP_RST,
    TCP_RST | TCP_ACK,
    TCP_SYN | TCP_FIN,
    0,
];

impl Generator {
    /// A well-formed frame and the side it arrives on.
    fn base(&mut self) -> (Side, Vec<u8>) {
        let f = self.rng.pick(&FAMILIES);
        let tcp = self.rng.percent(70);
        let flags = if self.rng.percent(85) {
            self.rng.pick(&FLAGS)
        } else {
            self.rng.next() as u8
        };
        let payload_len = self.rng.pick(&[0, 0, 1, 7, 64, 300]);
        let payload = self.rng.bytes(payload_len);
        let ttl = self.rng.pick(&[64, 64, 1, 0, 255]);
        let known = self
            .replies
            .iter()
            .copied()
            .filter(|r| r.backend.is_ipv4() == f.client.is_ipv4())
            .nth(self.rng.below(self.replies.len().max(1)));
        if let Some(r) = known
            && self.rng.percent(12)
        {
            let error = self.icmp_error(r, ttl, flags, &payload);
            return (Side::Backend, self.decorate(error, f));
        }
        let (side, builder, sport, dport, proto_tcp) = match known {
            Some(r) if self.rng.percent(35) => (
                Side::Backend,
                PacketBuilder::new()
                    .eth(MAC_BE1, MAC_LB_SW)
                    .ip(r.backend.ip(), r.snat.ip()),
                r.backend.port(),
                r.snat.port(),
                r.proto == IPPROTO_TCP,
            ),
            _ => {
                let client = if self.rng.percent(80) {
                    f.client
                } else {
                    f.not_vip
                };
                let dst = if self.rng.percent(90) { f.vip } else { f.snat };
                let sport = 40_000 + self.rng.below(48) as u16;
                let dport = self.rng.pick(&SERVICE_PORTS);
                (
                    Side::Client,
                    PacketBuilder::new().ip(client, dst),
                    sport,
                    dport,
                    tcp,
                )
            }
        };
        let builder = builder.ttl(ttl);
        let builder = if proto_tcp {
            builder.tcp_seq(
                sport,
                dport,
                flags,
                self.rng.next() as u32,
                self.rng.next() as u32,
            )
        } else {
            builder.udp(sport, dport)
        };
        (side, self.decorate(builder.payload(&payload), f))
    }

    /// An ICMP error (or, now and then, another ICMP message) from the backend side quoting a
    /// packet of the reply direction `r` (the load balancer's packet to the backend), whole or
    /// cut to the 8 bytes of L4 RFC 792 promises, or of no flow at all (another SNAT port).
    fn icmp_error(&mut self, r: Reply, ttl: u8, flags: u8, payload: &[u8]) -> PacketBuilder {
        let snat_port = if self.rng.percent(85) {
            r.snat.port()
        } else {
            self.rng.next() as u16
        };
        let quoted = PacketBuilder::new().ip(r.snat.ip(), r.backend.ip()).ttl(63);
        let quoted = if r.proto == IPPROTO_TCP {
            quoted.tcp_seq(snat_port, r.backend.port(), flags, 1, 2)
        } else {
            quoted.udp(snat_port, r.backend.port())
        };
        let mut quoted = quoted.payload(payload).build();
        let v4 = r.backend.is_ipv4();
        if self.rng.percent(30) {
            let ip = if v4 { ipv4::HLEN_MIN } else { ipv6::HLEN };
            quoted.truncate(eth::HLEN + ip + udp::HLEN);
        }
        let (icmp_type, code) = if v4 {
            self.rng.pick(&[
                (icmp::V4_DEST_UNREACH, icmp::V4_FRAG_NEEDED),
                (icmp::V4_DEST_UNREACH, 3),
                (icmp::V4_TIME_EXCEEDED, 0),
                (8, 0),
                (12, 0),
            ])
        } else {
            self.rng.pick(&[
                (icmp::V6_PACKET_TOO_BIG, 0),
                (icmp::V6_DEST_UNREACH, 4),
                (icmp::V6_TIME_EXCEEDED, 0),
                (128, 0),
                (4, 0),
            ])
        };
        PacketBuilder::new()
            .eth(MAC_BE1, MAC_LB_SW)
            .ip(r.backend.ip(), r.snat.ip())
            .ttl(ttl)
            .icmp_error(icmp_type, code, [0, 0, 0x05, 0x00], &quoted)
    }

    /// IPv4 options, fragments, VLAN tags, IPv6 extension headers, on some frames.
    fn decorate(&mut self, mut builder: PacketBuilder, f: &Family) -> Vec<u8> {
        let v4 = f.client.is_ipv4();
        if v4 && self.rng.percent(15) {
            let len = 4 * (1 + self.rng.below(10));
            builder = builder.ipv4_options(&self.rng.bytes(len));
        }
        if v4 && self.rng.percent(8) {
            let offset = self.rng.pick(&[0, 1, 185]);
            builder = builder.ipv4_fragment(self.rng.percent(50), offset);
        }
        if self.rng.percent(10) {
            builder = builder.vlan(self.rng.below(4095) as u16);
        }
        let mut frame = builder.build();
        if !v4 && self.rng.percent(10) {
            let ext = self.rng.pick(&[
                IPPROTO_HOPOPTS,
                IPPROTO_ROUTING,
                IPPROTO_FRAGMENT,
                IPPROTO_DSTOPTS,
            ]);
            insert_ipv6_ext_header(&mut frame, ext);
        }
        frame
    }

    /// A base frame, mutated on most iterations; sometimes pure noise.
    fn frame(&mut self) -> (Side, Vec<u8>) {
        let side = if self.rng.percent(50) {
            Side::Client
        } else {
            Side::Backend
        };
        if self.rng.percent(5) {
            let len = self.rng.below(128);
            return (side, self.rng.bytes(len));
        }
        let (side, mut frame) = self.base();
        if self.rng.percent(25) {
            let len = self.rng.below(frame.len() + 1);
            frame.truncate(len);
        }
        if self.rng.percent(20) && !frame.is_empty() {
            for _ in 0..1 + self.rng.below(4) {
                let at = self.rng.below(frame.len());
                frame[at] ^= 1 << self.rng.below(8);
            }
        }
        if self.rng.percent(10) && !frame.is_empty() {
            let at = self.rng.below(frame.len().min(80));
            frame[at] = self.rng.next() as u8;
        }
        (side, frame)
    }
}

/// Puts an 8-byte IPv6 extension header of type `ext` before the upper-layer header.
fn insert_ipv6_ext_header(frame: &mut Vec<u8>, ext: u8) {
    let l3 = l3_offset(frame).unwrap();
    let nh_at = l3 + ipv6::NEXT_HEADER;
    let upper = frame[nh_at];
    frame[nh_at] = ext;
    let at = l3 + ipv6::HLEN;
    frame.splice(at..at, [upper, 0, 0, 0, 0, 0, 0, 0]);
    let len_at = l3 + ipv6::PAYLOAD_LEN;
    let len = u16::from_be_bytes([frame[len_at], frame[len_at + 1]]) + 8;
    frame[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
}

/// Offset of the IP header (after one optional VLAN tag) and the EtherType, as the program
/// reads them.
fn l3_offset(frame: &[u8]) -> Option<usize> {
    let t = u16::from_be_bytes(frame.get(eth::TYPE..eth::TYPE + 2)?.try_into().ok()?);
    Some(if t == ETH_P_8021Q || t == mlb_common::net::ETH_P_8021AD {
        eth::HLEN + vlan::HLEN
    } else {
        eth::HLEN
    })
}

/// The wire 5-tuple of a frame the program forwarded, read independently of its parser.
fn tuple(frame: &[u8]) -> Option<FlowKey> {
    let l3 = l3_offset(frame)?;
    let ether_type = u16::from_be_bytes(frame.get(l3 - 2..l3)?.try_into().ok()?);
    let ip = frame.get(l3..)?;
    let (src, dst, proto, l4, family): (IpAddr, IpAddr, u8, usize, u8) = match ether_type {
        ETH_P_IP => {
            let a = |o: usize| -> Option<IpAddr> {
                Some(Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(o..o + 4)?).ok()?).into())
            };
            let ihl = usize::from(ip.first()? & 0x0F) * 4;
            (
                a(ipv4::SRC)?,
                a(ipv4::DST)?,
                *ip.get(ipv4::PROTO)?,
                ihl,
                FAMILY_V4,
            )
        }
        ETH_P_IPV6 => {
            let a = |o: usize| -> Option<IpAddr> {
                Some(Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(o..o + 16)?).ok()?).into())
            };
            let nh = *ip.get(ipv6::NEXT_HEADER)?;
            (a(ipv6::SRC)?, a(ipv6::DST)?, nh, ipv6::HLEN, FAMILY_V6)
        }
        _ => return None,
    };
    let port = |o: usize| -> Option<u16> {
        Some(u16::from_ne_bytes(
            ip.get(l4 + o..l4 + o + 2)?.try_into().ok()?,
        ))
    };
    Some(FlowKey {
        src: addr_words(src),
        dst: addr_words(dst),
        sport: port(tcp::SPORT)?,
        dport: port(tcp::DPORT)?,
        proto,
        family,
        _pad: [0; 2],
    })
}

/// The frame without its VLAN tag (the checksum checker parses untagged frames).
fn untagged(frame: &[u8]) -> Vec<u8> {
    if l3_offset(frame) == Some(eth::HLEN) {
        return frame.to_vec();
    }
    let mut out = frame[..eth::TYPE].to_vec();
    out.extend_from_slice(&frame[eth::HLEN + vlan::TYPE..]);
    out
}

fn hex(frame: &[u8]) -> String {
    frame.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs one frame and checks every property; returns the verdict. The kernel refuses to test
/// frames shorter than an Ethernet header (no driver delivers one): those are not run.
fn check_frame(
    dp: &XdpL4,
    lab: &Lab,
    side: Side,
    frame: &[u8],
    replies: &mut Vec<Reply>,
) -> Option<u32> {
    if frame.len() < eth::HLEN {
        return None;
    }
    let (verdict, out) = run(dp.program(), lab.ifindex(side), frame);
    let what = || format!("frame {} from {}", hex(frame), side_name(side));
    match verdict {
        // Untouched, or rewritten whole and left to the kernel to forward (next hop without a
        // neighbour entry yet: `pass_no_neighbour`, `pass_redirect_failed`).
        XDP_PASS if out == frame => {}
        XDP_PASS => check_forwarded(dp, frame, &out, &what, replies),
        XDP_DROP => {}
        XDP_TX | XDP_REDIRECT => check_forwarded(dp, frame, &out, &what, replies),
        other => panic!("verdict {other} (ABORTED is 0): {}", what()),
    }
    Some(verdict)
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Client => "client side",
        Side::Backend => "backend side",
    }
}

fn check_forwarded(
    dp: &XdpL4,
    frame: &[u8],
    out: &[u8],
    what: &dyn Fn() -> String,
    replies: &mut Vec<Reply>,
) {
    assert_eq!(out.len(), frame.len(), "length changed: {}", what());
    if is_icmp(frame) {
        return check_translated_error(dp, frame, out, what);
    }
    let input_ok = packet::parse(&untagged(frame)).is_some_and(|p| p.checksums_ok);
    if input_ok {
        let parsed = packet::parse(&untagged(out));
        assert!(
            parsed.as_ref().is_some_and(|p| p.checksums_ok),
            "bad checksums after rewrite: {} -> {}",
            what(),
            hex(out)
        );
    }
    let key = tuple(frame).unwrap_or_else(|| panic!("forwarded without a 5-tuple: {}", what()));
    let got = tuple(out).unwrap_or_else(|| panic!("output without a 5-tuple: {}", what()));
    let entry = dp
        .conntrack_entry(&key)
        .unwrap()
        .unwrap_or_else(|| panic!("forwarded without a conntrack entry: {}", what()));
    let want = (
        entry.new_src,
        entry.new_dst,
        entry.new_sport,
        entry.new_dport,
    );
    assert_eq!(
        (got.src, got.dst, got.sport, got.dport, got.proto),
        (want.0, want.1, want.2, want.3, key.proto),
        "output 5-tuple is not what conntrack says: {}",
        what()
    );
    if entry.direction == mlb_common::maps::DIR_TO_BACKEND && replies.len() < 256 {
        let fam = got.family;
        let addr = |w: [u32; 4], port: u16| {
            SocketAddr::new(
                mlb::dataplane::xdp_l4::words_addr(w, fam),
                u16::from_be(port),
            )
        };
        replies.push(Reply {
            backend: addr(got.dst, got.dport),
            snat: addr(got.src, got.sport),
            proto: key.proto,
        });
    }
}

/// Whether a frame is ICMP or ICMPv6 (of its IP header's family).
fn is_icmp(frame: &[u8]) -> bool {
    tuple(frame).is_some_and(|t| {
        (t.family, t.proto) == (FAMILY_V4, IPPROTO_ICMP)
            || (t.family, t.proto) == (FAMILY_V6, IPPROTO_ICMPV6)
    })
}

/// The packet an ICMP error quotes, as a frame of its own (the error's Ethernet header).
fn quote_of(frame: &[u8]) -> Option<Vec<u8>> {
    let l3 = l3_offset(frame)?;
    let ip_hlen = match tuple(frame)?.family {
        FAMILY_V4 => usize::from(frame.get(l3)? & 0x0F) * 4,
        _ => ipv6::HLEN,
    };
    let mut quote = frame[..l3].to_vec();
    quote.extend_from_slice(frame.get(l3 + ip_hlen + icmp::HLEN..)?);
    Some(quote)
}

/// A translated ICMP error: sent where the flow its quote answers goes, its quote what that
/// flow's sender sent, its checksums (outer, ICMP, quote) valid when the input's were.
fn check_translated_error(dp: &XdpL4, frame: &[u8], out: &[u8], what: &dyn Fn() -> String) {
    let quoted = tuple(&quote_of(frame).unwrap()).unwrap();
    // The quote reversed: the 5-tuple of the flow direction the error travels with.
    let key = FlowKey {
        src: quoted.dst,
        dst: quoted.src,
        sport: quoted.dport,
        dport: quoted.sport,
        ..quoted
    };
    let entry = dp
        .conntrack_entry(&key)
        .unwrap()
        .unwrap_or_else(|| panic!("error translated without a conntrack entry: {}", what()));
    let outer = tuple(out).unwrap();
    let quote_out = tuple(&quote_of(out).unwrap()).unwrap();
    assert_eq!(
        (outer.src, outer.dst),
        (entry.new_src, entry.new_dst),
        "error not sent like its flow: {}",
        what()
    );
    assert_eq!(
        (
            quote_out.src,
            quote_out.dst,
            quote_out.sport,
            quote_out.dport
        ),
        (
            entry.new_dst,
            entry.new_src,
            entry.new_dport,
            entry.new_sport
        ),
        "quote is not what the flow's sender sent: {}",
        what()
    );
    let parse = |f: &[u8]| packet::parse(&untagged(f)).filter(|p| p.checksums_ok);
    if let Some(input) = parse(frame) {
        let output = parse(out).unwrap_or_else(|| panic!("bad checksums: {}", what()));
        let quote_ok = |p: &packet::Parsed| packet::parse_quoted(p).is_some_and(|q| q.checksums_ok);
        if quote_ok(&input) {
            assert!(quote_ok(&output), "bad quoted checksums: {}", what());
        }
    }
}

/// Every prefix of a few well-formed frames (SYN with IPv4 options, IPv6 UDP, VLAN-tagged
/// TCP), from both sides.
fn truncations() -> Vec<Vec<u8>> {
    vec![
        PacketBuilder::new()
            .ip(V4.client, V4.vip)
            .ipv4_options(&[0x94, 0x04, 0, 0])
            .tcp(40100, SVC_TCP, TCP_SYN)
            .payload(b"x")
            .build(),
        PacketBuilder::new()
            .ip(V6.client, V6.vip)
            .udp(40101, SVC_UDP)
            .payload(b"query")
            .build(),
        PacketBuilder::new()
            .vlan(7)
            .ip(V4.client, V4.vip)
            .tcp(40102, SVC_V4_PAIR, TCP_SYN)
            .build(),
    ]
}

#[test]
fn packet_fuzz() {
    if !require_netns_and_bpf("packet_fuzz") {
        return;
    }
    let budget = Budget::from_env();
    // First, so a failure's output names the seed that reproduces it.
    eprintln!("packet fuzz: seed {} (MLB_FUZZ_SEED)", budget.seed);
    let lab = lab();
    let (done, verdicts, translated) = lab
        .lb
        .enter(|| {
            let mut changes = services();
            changes.push(acl_service(&["198.18.1.1", "fd00:198:18:1::1"]));
            let dp = lab.dataplane(config((40000, 59999)), &changes);
            let mut replies = Vec::new();
            let mut verdicts = BTreeMap::<u32, usize>::new();
            let mut done = 0;
            for frame in truncations() {
                for len in 0..=frame.len() {
                    for side in [Side::Client, Side::Backend] {
                        if let Some(v) = check_frame(&dp, &lab, side, &frame[..len], &mut replies) {
                            *verdicts.entry(v).or_default() += 1;
                            done += 1;
                        }
                    }
                }
            }
            let mut generator = Generator {
                rng: Rng(budget.seed | 1),
                replies: Vec::new(),
            };
            let mut fuzzed = 0;
            while budget.more(fuzzed) {
                let (side, frame) = generator.frame();
                if let Some(v) = check_frame(&dp, &lab, side, &frame, &mut generator.replies) {
                    *verdicts.entry(v).or_default() += 1;
                    fuzzed += 1;
                }
            }
            let translated = dp.program().counters().unwrap();
            (
                done + fuzzed,
                verdicts,
                translated.get(Counter::IcmpErrorTranslated),
            )
        })
        .unwrap();
    eprintln!(
        "packet fuzz: {done} frames, seed {:#x}, verdicts {verdicts:?}, \
         {translated} ICMP errors translated",
        budget.seed
    );
    assert!(
        translated > 0,
        "no ICMP error quoting a real flow was translated"
    );
    // The mix reached the fast path, not only the parser's exits.
    for v in [XDP_PASS, XDP_DROP, XDP_REDIRECT] {
        assert!(
            verdicts.get(&v).copied().unwrap_or(0) > 0,
            "no verdict {v}: {verdicts:?}"
        );
    }
}
