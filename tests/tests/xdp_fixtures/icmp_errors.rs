//! ICMP errors about NATed flows and the TTL, byte for byte: an error quoting a packet of a
//! tracked flow reaches the flow's other end about the packet that end sent (outer and quoted
//! addresses, quoted ports, every checksum: outer IPv4, ICMP, quoted IPv4, quoted TCP/UDP);
//! one quoting no flow, or a quote the program does not read, reaches the kernel untouched; a
//! packet arriving with TTL (hop limit) 1 is not forwarded.
use mlb_common::net::icmp;

use super::*;

/// A payload large enough to be worth a "too big" in a test.
const DATA: &[u8] = b"a segment the next link cannot carry";

/// The family's "fragmentation needed" (IPv4, next-hop MTU 1400) or "packet too big" (IPv6,
/// MTU 1280): type, code, the four bytes after the checksum.
fn too_big(f: &Family) -> (u8, u8, [u8; 4]) {
    match f.client {
        IpAddr::V4(_) => (
            icmp::V4_DEST_UNREACH,
            icmp::V4_FRAG_NEEDED,
            [0, 0, 0x05, 0x78],
        ),
        IpAddr::V6(_) => (icmp::V6_PACKET_TOO_BIG, 0, [0, 0, 0x05, 0x00]),
    }
}

/// The family's "time exceeded in transit".
fn time_exceeded(f: &Family) -> u8 {
    match f.client {
        IpAddr::V4(_) => icmp::V4_TIME_EXCEEDED,
        IpAddr::V6(_) => icmp::V6_TIME_EXCEEDED,
    }
}

/// The family's "port unreachable" (type, code).
fn port_unreachable(f: &Family) -> (u8, u8) {
    match f.client {
        IpAddr::V4(_) => (icmp::V4_DEST_UNREACH, 3),
        IpAddr::V6(_) => (icmp::V6_DEST_UNREACH, 4),
    }
}

/// A TCP data segment between two endpoints, as the load balancer sent it (TTL decremented).
fn segment(from: (IpAddr, u16), to: (IpAddr, u16)) -> Vec<u8> {
    PacketBuilder::new()
        .ip(from.0, to.0)
        .ttl(63)
        .tcp(from.1, to.1, TCP_ACK | TCP_PSH)
        .payload(DATA)
        .build()
}

/// An ICMP error from `from` to `to` arriving from the backend side, quoting `quoted`.
fn error_from_backend(
    f: &Family,
    (icmp_type, code, rest): (u8, u8, [u8; 4]),
    quoted: &[u8],
) -> Vec<u8> {
    PacketBuilder::new()
        .eth(MAC_BE1, MAC_LB_SW)
        .ip(f.be1, f.snat)
        .icmp_error(icmp_type, code, rest, quoted)
        .build()
}

/// The same error as the client must receive it: from the VIP, quoting what the client sent.
fn error_to_client(
    f: &Family,
    (icmp_type, code, rest): (u8, u8, [u8; 4]),
    quoted: &[u8],
) -> Vec<u8> {
    PacketBuilder::new()
        .eth(MAC_LB, MAC_CLIENT)
        .ip(f.vip, f.client)
        .ttl(63)
        .icmp_error(icmp_type, code, rest, quoted)
        .build()
}

/// Only the first `ip_header + 8` bytes of `frame`'s IP packet kept: the quote RFC 792
/// promises, without the TCP checksum.
fn short_quote(frame: &[u8], ip_header: usize) -> Vec<u8> {
    frame[..eth::HLEN + ip_header + udp::HLEN].to_vec()
}

/// The ICMP fixtures of one family, on flows of their own.
pub(super) fn errors(fx: &mut Fixtures<'_>, f: &Family) {
    let client_port = 40100;
    let flow = Flow::to_be1(f, Protocol::Tcp, client_port, SVC_TCP);
    let opening = [
        step(
            "flow for ICMP",
            Dir::ToBackend,
            TCP_SYN,
            b"",
            Counter::FlowNew,
        ),
        step(
            "its SYN-ACK",
            Dir::ToClient,
            TCP_SYN | TCP_ACK,
            b"",
            Counter::FlowToClient,
        ),
    ];
    let snat_port = fx.run_flow(f, &flow, &opening);
    let backend = (f.be1, backend_port(SVC_TCP));
    let client = (f.client, client_port);
    let vip = (f.vip, SVC_TCP);
    let sent = segment((f.snat, snat_port), backend);
    let client_sent = segment(client, vip);
    let name = |what: &str| format!("{} {what}", f.name);

    let out = fx.check(
        &name("too big from the backend reaches the client about its own segment"),
        Side::Backend,
        &error_from_backend(f, too_big(f), &sent),
        XDP_REDIRECT,
        Counter::IcmpErrorTranslated,
        |_| error_to_client(f, too_big(f), &client_sent),
    );
    let quoted = packet::parse_quoted(&out).unwrap();
    assert!(quoted.checksums_ok, "quoted checksums: {quoted:?}");
    // The quote is the 5-tuple of the flow's client half, the one conntrack tracks.
    assert_eq!(
        (quoted.src, quoted.sport, quoted.dst, quoted.dport),
        (client.0, client.1, vip.0, vip.1)
    );

    // A quote of 8 bytes of TCP: no TCP checksum to adjust.
    let ihl = if f.name == "v4" {
        ipv4::HLEN_MIN
    } else {
        mlb_common::net::ipv6::HLEN
    };
    let te = (time_exceeded(f), 0, [0; 4]);
    fx.check(
        &name("time exceeded with a short quote"),
        Side::Backend,
        &error_from_backend(f, te, &short_quote(&sent, ihl)),
        XDP_REDIRECT,
        Counter::IcmpErrorTranslated,
        |_| error_to_client(f, te, &short_quote(&client_sent, ihl)),
    );

    // From the client side, about a reply the load balancer sent: reaches the backend about
    // what it sent, from the SNAT address.
    let (t, c, rest) = too_big(f);
    let reply = segment(vip, client);
    let input = PacketBuilder::new()
        .ip(f.not_vip, f.vip)
        .icmp_error(t, c, rest, &reply)
        .build();
    fx.check(
        &name("too big from the client side reaches the backend about its reply"),
        Side::Client,
        &input,
        XDP_REDIRECT,
        Counter::IcmpErrorTranslated,
        |_| {
            PacketBuilder::new()
                .eth(MAC_LB_SW, MAC_BE1)
                .ip(f.snat, f.be1)
                .ttl(63)
                .icmp_error(t, c, rest, &segment(backend, (f.snat, snat_port)))
                .build()
        },
    );

    udp_port_unreachable(fx, f);
    untranslated(fx, f, &sent);
}

/// A UDP datagram's port unreachable: the quoted UDP checksum follows too.
fn udp_port_unreachable(fx: &mut Fixtures<'_>, f: &Family) {
    let flow = Flow::to_be1(f, Protocol::Udp, 5100, SVC_UDP);
    let first = step(
        "UDP flow for ICMP",
        Dir::ToBackend,
        0,
        b"q",
        Counter::FlowNew,
    );
    let snat_port = fx.run_flow(f, &flow, &[first]);
    let datagram = |from: (IpAddr, u16), to: (IpAddr, u16)| {
        PacketBuilder::new()
            .ip(from.0, to.0)
            .ttl(63)
            .udp(from.1, to.1)
            .payload(b"q")
            .build()
    };
    let (t, c) = port_unreachable(f);
    let sent = datagram((f.snat, snat_port), (f.be1, backend_port(SVC_UDP)));
    let out = fx.check(
        &format!("{} UDP port unreachable reaches the client", f.name),
        Side::Backend,
        &error_from_backend(f, (t, c, [0; 4]), &sent),
        XDP_REDIRECT,
        Counter::IcmpErrorTranslated,
        |_| {
            let client_sent = datagram((f.client, 5100), (f.vip, SVC_UDP));
            error_to_client(f, (t, c, [0; 4]), &client_sent)
        },
    );
    assert!(packet::parse_quoted(&out).unwrap().checksums_ok);
}

/// Errors the program leaves to the kernel as they arrived; and TTL 1.
fn untranslated(fx: &mut Fixtures<'_>, f: &Family, sent: &[u8]) {
    let stray = segment((f.snat, 39_999), (f.be1, backend_port(SVC_TCP)));
    let mut last_hop = error_from_backend(f, too_big(f), sent);
    let ttl_at = eth::HLEN
        + if f.name == "v4" {
            ipv4::TTL
        } else {
            mlb_common::net::ipv6::HOP_LIMIT
        };
    last_hop[ttl_at] = 1;
    // (The IPv4 header checksum is not the program's business here: it passes untouched.)
    let cases = [
        (
            "error quoting a packet of no flow",
            error_from_backend(f, too_big(f), &stray),
            Counter::PassIcmpNoFlow,
        ),
        (
            "error about a flow arriving with TTL 1",
            last_hop,
            Counter::PassTtlExceeded,
        ),
    ];
    for (what, frame, counter) in cases {
        fx.passes_untouched(
            &format!("{} {what}", f.name),
            Side::Backend,
            &frame,
            counter,
        );
    }
    let syn = PacketBuilder::new()
        .ip(f.client, f.vip)
        .ttl(1)
        .tcp(40101, SVC_TCP, TCP_SYN)
        .build();
    fx.passes_untouched(
        &format!("{} SYN arriving with TTL 1 is not forwarded", f.name),
        Side::Client,
        &syn,
        Counter::PassTtlExceeded,
    );
    if f.name == "v4" {
        // A quoted IPv4 header with options: the quoted ports are not at the fixed offset.
        let with_options = PacketBuilder::new()
            .ip(f.snat, f.be1)
            .ipv4_options(&[0x94, 0x04, 0, 0])
            .tcp(40000, backend_port(SVC_TCP), TCP_ACK)
            .build();
        fx.passes_untouched(
            "v4 error quoting a packet with IP options",
            Side::Backend,
            &error_from_backend(f, too_big(f), &with_options),
            Counter::PassIcmpUnsupported,
        );
    }
}

/// A packet too big for the next hop (the backend-side link's MTU lowered to 1280) is answered
/// like a router answers it: fragmentation needed (IPv4, when DF is set) or packet too big
/// (IPv6) with MTU 1280, from the address the packet was sent to, quoting its first 64 bytes,
/// back out of the ingress interface (through the devmap). IPv4 without DF goes to the kernel
/// untouched.
#[test]
fn too_big_for_the_next_hop() {
    if !require_netns_and_bpf("too_big_for_the_next_hop") {
        return;
    }
    let lab = lab();
    lab.lb
        .exec(&["ip", "link", "set", "lb-sw", "mtu", "1280"])
        .unwrap();
    lab.lb
        .enter(|| {
            let dp = lab.dataplane(config((40000, 59999)), &services());
            for f in FAMILIES {
                too_big_answered(&dp, &lab, f);
            }
            let no_df = PacketBuilder::new()
                .ip(V4.client, V4.vip)
                .tcp(40201, SVC_TCP, TCP_SYN)
                .payload(&[7; 1300])
                .build();
            let (v, out, d) = send(&dp, &lab, Side::Client, &no_df);
            assert_eq!((v, &out), (XDP_PASS, &no_df), "v4 without DF: untouched");
            assert_eq!(d.get(Counter::PassFibFailed), 1, "{d:?}");
        })
        .unwrap();
}

fn too_big_answered(dp: &XdpL4, lab: &Lab, f: &Family) {
    let big = PacketBuilder::new()
        .ip(f.client, f.vip)
        .dont_fragment()
        .tcp(40200, SVC_TCP, TCP_SYN)
        .payload(&[7; 1300])
        .build();
    let (v, out, d) = send(dp, lab, Side::Client, &big);
    // Back out of lb-cli through the devmap, which has it: a veth flushes redirected frames
    // to its peer, XDP_TX frames only to a peer running XDP itself.
    assert_eq!(v, XDP_REDIRECT, "{}: {d:?}", f.name);
    assert_eq!(d.get(Counter::IcmpTooBigSent), 1, "{}: {d:?}", f.name);
    let p = packet::parse(&out).unwrap();
    assert!(p.checksums_ok, "{}: {p:?}", f.name);
    assert_eq!(
        (p.src_mac, p.dst_mac, p.src, p.dst, p.ttl),
        (MAC_LB, MAC_CLIENT, f.vip, f.client, 64),
        "{}",
        f.name
    );
    let ip_hlen = out.len() - p.payload.len() - icmp::HLEN - eth::HLEN;
    let msg = &out[eth::HLEN + ip_hlen..];
    let (want_type, want_code, mtu_field) = match f.client {
        IpAddr::V4(_) => (
            icmp::V4_DEST_UNREACH,
            icmp::V4_FRAG_NEEDED,
            [0, 0, 0x05, 0x00],
        ),
        IpAddr::V6(_) => (icmp::V6_PACKET_TOO_BIG, 0, [0, 0, 0x05, 0x00]),
    };
    assert_eq!(
        (msg[icmp::TYPE], msg[icmp::CODE], &msg[4..8]),
        (want_type, want_code, &mtu_field[..]),
        "{}",
        f.name
    );
    assert_eq!(
        p.payload,
        big[eth::HLEN..eth::HLEN + 64],
        "{}: quote is the packet's first 64 bytes",
        f.name
    );
}
