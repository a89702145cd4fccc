//! Packet fixtures through the real XDP program with BPF_PROG_TEST_RUN (Katran's approach).
//!
//! The program is loaded inside a namespace that has the load balancer's interfaces, routes and
//! permanent neighbour entries, and its services are programmed through the real agent code
//! ([`XdpL4`]). Each fixture feeds one hand-built frame with a given ingress interface and
//! compares the verdict and the output frame byte for byte with a frame built independently
//! (its checksums computed from scratch), then checks the counter that names what happened.
//! Fixtures run in order: later ones use flows earlier ones created.
use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use aya::programs::{TestRun, TestRunOptions};
use mlb::{
    dataplane::{
        Dataplane, L4Change,
        xdp::{Counters, XdpProgram},
        xdp_l4::{FlowTimeouts, XdpL4, XdpL4Config},
    },
    model::{Backend, BackendId, BackendState, L4Service, L4ServiceKey, Protocol},
};
use mlb_common::{consts::xdp_action::*, stats::Counter};
use mlb_tests::{
    netns::{Netns, VethEnd, veth},
    packet::{
        self, MAC_CLIENT, MAC_LB, PacketBuilder, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
    },
    privileges::require_netns_and_bpf,
};

const MAC_LB_SW: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
const MAC_BE1: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x11];
const MAC_BE2: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x12];
const MAC_LOCAL_BE: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x50];

const CLIENT: &str = "198.18.1.1";
const VIP: &str = "198.18.1.2";
const SNAT: &str = "198.18.2.1";
const BE1: &str = "198.18.2.11";
const BE2: &str = "198.18.2.12";
const CLIENT6: &str = "fd00:198:18:1::1";
const VIP6: &str = "fd00:198:18:1::2";
const SNAT6: &str = "fd00:198:18:2::1";
const BE1_6: &str = "fd00:198:18:2::11";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn service(port: u16, protocol: Protocol, backends: &[&str]) -> L4Service {
    L4Service {
        key: L4ServiceKey { port, protocol },
        app_id: format!("/fixture-{port}"),
        bind_addr: None,
        backends: backends
            .iter()
            .map(|a| Backend {
                id: BackendId((*a).to_owned()),
                addr: a.parse::<SocketAddr>().unwrap(),
                weight: 1,
                state: BackendState::Active,
            })
            .collect(),
        health_check: None,
    }
}

/// The fixture namespace: `lb-cli` (client side) and `lb-sw` (backend side) with addresses,
/// routes and permanent neighbours, so `bpf_fib_lookup` answers as on a real load balancer.
struct Lab {
    lb: Netns,
    _peer: Netns,
    cli_ifindex: u32,
    sw_ifindex: u32,
}

fn lab() -> Lab {
    let lb = Netns::new("fx").unwrap();
    let peer = Netns::new("fxp").unwrap();
    veth(
        &VethEnd {
            ns: &lb,
            name: "lb-cli",
            addrs: &["198.18.1.2/24", "fd00:198:18:1::2/64"],
        },
        &VethEnd {
            ns: &peer,
            name: "p-cli",
            addrs: &[],
        },
    )
    .unwrap();
    veth(
        &VethEnd {
            ns: &lb,
            name: "lb-sw",
            addrs: &["198.18.2.1/24", "fd00:198:18:2::1/64"],
        },
        &VethEnd {
            ns: &peer,
            name: "p-sw",
            addrs: &[],
        },
    )
    .unwrap();
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    lb.exec(&["ip", "link", "set", "lb-cli", "address", &mac(MAC_LB)])
        .unwrap();
    lb.exec(&["ip", "link", "set", "lb-sw", "address", &mac(MAC_LB_SW)])
        .unwrap();
    for (addr, m, dev) in [
        (CLIENT, MAC_CLIENT, "lb-cli"),
        (CLIENT6, MAC_CLIENT, "lb-cli"),
        ("198.18.1.50", MAC_LOCAL_BE, "lb-cli"),
        (BE1, MAC_BE1, "lb-sw"),
        (BE2, MAC_BE2, "lb-sw"),
        (BE1_6, MAC_BE1, "lb-sw"),
    ] {
        lb.exec(&[
            "ip",
            "neigh",
            "replace",
            addr,
            "lladdr",
            &mac(m),
            "dev",
            dev,
            "nud",
            "permanent",
        ])
        .unwrap();
    }
    lb.exec(&[
        "sysctl",
        "-qw",
        "net.ipv4.conf.all.forwarding=1",
        "net.ipv6.conf.all.forwarding=1",
    ])
    .unwrap();
    let ifindex = |dev: &str| -> u32 {
        let out = lb
            .exec(&["cat", &format!("/sys/class/net/{dev}/ifindex")])
            .unwrap();
        out.trim().parse().unwrap()
    };
    let (cli_ifindex, sw_ifindex) = (ifindex("lb-cli"), ifindex("lb-sw"));
    Lab {
        lb,
        _peer: peer,
        cli_ifindex,
        sw_ifindex,
    }
}

fn config(snat_ports: (u16, u16)) -> XdpL4Config {
    XdpL4Config {
        vips: vec![ip(VIP), ip(VIP6)],
        snat_v4: Some(SNAT.parse().unwrap()),
        snat_v6: Some(SNAT6.parse().unwrap()),
        snat_ports,
        ring_size: 65537,
        drain_timeout: Duration::ZERO,
        timeouts: FlowTimeouts::default(),
    }
}

/// Runs one frame through the program as if received on `ingress`.
fn run(program: &XdpProgram, ingress: u32, frame: &[u8]) -> (u32, Vec<u8>) {
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let mut ctx = Vec::with_capacity(24);
    for v in [0u32, u32::try_from(frame.len()).unwrap(), 0, ingress, 0, 0] {
        ctx.extend_from_slice(&v.to_ne_bytes());
    }
    let mut out = vec![0u8; frame.len() + 64];
    let r = program
        .program()
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

/// Fixture bookkeeping: runs, compares, counts.
struct Fixtures<'a> {
    dp: &'a mut XdpL4,
    lab: &'a Lab,
    ran: usize,
}

impl Fixtures<'_> {
    fn counters(&self) -> Counters {
        self.dp.program().counters().unwrap()
    }

    /// Feeds `input`; asserts the verdict, that `counter` moved by one, and that the output is
    /// exactly `expected(&output)` (a function, so an expectation can take the SNAT port the
    /// program chose from the output). Returns the output.
    fn check(
        &mut self,
        name: &str,
        from_client: bool,
        input: &[u8],
        verdict: u32,
        counter: Counter,
        expected: impl FnOnce(&packet::Parsed) -> Vec<u8>,
    ) -> packet::Parsed {
        let ingress = if from_client {
            self.lab.cli_ifindex
        } else {
            self.lab.sw_ifindex
        };
        let before = self.counters();
        let (got, out) = run(self.dp.program(), ingress, input);
        assert_eq!(got, verdict, "{name}: verdict");
        let delta = self.counters().since(&before);
        assert_eq!(
            delta.get(counter),
            1,
            "{name}: {counter:?} did not move: {delta:?}"
        );
        let parsed = packet::parse(&out).unwrap_or_else(|| panic!("{name}: output does not parse"));
        assert!(parsed.checksums_ok, "{name}: bad checksums in {parsed:?}");
        let want = expected(&parsed);
        assert_eq!(
            out,
            want,
            "{name}: output differs\n got {parsed:?}\nwant {:?}",
            packet::parse(&want)
        );
        self.ran += 1;
        parsed
    }

    /// Feeds `input` and asserts it is passed to the kernel untouched, counting `counter`.
    fn passes_untouched(&mut self, name: &str, from_client: bool, input: &[u8], counter: Counter) {
        let ingress = if from_client {
            self.lab.cli_ifindex
        } else {
            self.lab.sw_ifindex
        };
        let before = self.counters();
        let (got, out) = run(self.dp.program(), ingress, input);
        assert_eq!(got, XDP_PASS, "{name}: verdict");
        assert_eq!(out, input, "{name}: packet modified");
        let delta = self.counters().since(&before);
        assert_eq!(
            delta.get(counter),
            1,
            "{name}: {counter:?} did not move: {delta:?}"
        );
        self.ran += 1;
    }
}

fn snat_port_ok(p: &packet::Parsed) -> u16 {
    assert!(
        (40000..=59999).contains(&p.sport),
        "SNAT port {} outside 40000-59999",
        p.sport
    );
    p.sport
}

#[test]
fn packet_fixtures() {
    if !require_netns_and_bpf("packet_fixtures") {
        return;
    }
    let lab = lab();
    let total = lab
        .lb
        .enter(|| {
            let program = XdpProgram::load().expect("load");
            // Before the agent writes its configuration, everything passes.
            let syn = PacketBuilder::new()
                .ip(ip(CLIENT), ip(VIP))
                .tcp(40001, 81, TCP_SYN)
                .build();
            let before = program.counters().unwrap();
            let (v, out) = run(&program, lab.cli_ifindex, &syn);
            assert_eq!((v, &out), (XDP_PASS, &syn), "not ready: untouched pass");
            assert_eq!(
                program
                    .counters()
                    .unwrap()
                    .since(&before)
                    .get(Counter::PassNotReady),
                1
            );

            let mut dp = XdpL4::new(program, config((40000, 59999))).expect("configure");
            dp.add_tx_port(lab.cli_ifindex).unwrap();
            dp.add_tx_port(lab.sw_ifindex).unwrap();
            dp.apply(&[
                L4Change::Upsert(service(
                    81,
                    Protocol::Tcp,
                    &["198.18.2.11:8081", "[fd00:198:18:2::11]:8081"],
                )),
                L4Change::Upsert(service(
                    80,
                    Protocol::Tcp,
                    &["198.18.2.11:8080", "198.18.2.12:8080"],
                )),
                L4Change::Upsert(service(
                    53,
                    Protocol::Udp,
                    &["198.18.2.11:5353", "[fd00:198:18:2::11]:5353"],
                )),
                L4Change::Upsert(service(82, Protocol::Tcp, &[])),
                L4Change::Upsert(service(83, Protocol::Tcp, &["198.18.2.13:8083"])),
                L4Change::Upsert(service(84, Protocol::Tcp, &["198.19.99.1:8084"])),
                L4Change::Upsert(service(85, Protocol::Tcp, &["198.18.1.50:8085"])),
            ])
            .expect("apply services");
            let mut fx = Fixtures {
                dp: &mut dp,
                lab: &lab,
                ran: 1,
            };
            tcp_v4_forward_and_reply(&mut fx);
            tcp_v4_spread_and_backend_change(&mut fx);
            udp_fixtures(&mut fx);
            ipv6_fixtures(&mut fx);
            header_variants(&mut fx);
            forwarding_variants(&mut fx);
            passed_untouched(&mut fx);
            fx.ran
        })
        .unwrap();
    snat_exhaustion(&lab);
    assert!(total >= 40, "only {total} fixtures ran");
    eprintln!("{} packet fixtures passed", total + 2);
}

/// A TCP connection to a one-backend service, both directions, byte for byte.
fn tcp_v4_forward_and_reply(fx: &mut Fixtures<'_>) {
    // The client's packets of this flow, as the backend must receive them.
    let to_backend = |_client_port: u16, flags: u8, payload: &'static [u8]| {
        move |p: &packet::Parsed| {
            PacketBuilder::new()
                .eth(MAC_LB_SW, MAC_BE1)
                .ip(ip(SNAT), ip(BE1))
                .tcp(snat_port_ok(p), 8081, flags)
                .payload(payload)
                .build()
        }
    };
    let syn = PacketBuilder::new()
        .ip(ip(CLIENT), ip(VIP))
        .tcp(40001, 81, TCP_SYN)
        .build();
    let first = fx.check(
        "v4 SYN to a service is NATed to its backend",
        true,
        &syn,
        XDP_REDIRECT,
        Counter::FlowNew,
        to_backend(40001, TCP_SYN, b""),
    );
    let snat = first.sport;

    let again = fx.check(
        "v4 retransmitted SYN keeps its flow",
        true,
        &syn,
        XDP_REDIRECT,
        Counter::FlowToBackend,
        to_backend(40001, TCP_SYN, b""),
    );
    assert_eq!(again.sport, snat);

    let synack = PacketBuilder::new()
        .eth(MAC_BE1, MAC_LB_SW)
        .ip(ip(BE1), ip(SNAT))
        .tcp(8081, snat, TCP_SYN | TCP_ACK)
        .build();
    fx.check(
        "v4 backend SYN-ACK is NATed back to the client",
        false,
        &synack,
        XDP_REDIRECT,
        Counter::FlowToClient,
        |_| {
            PacketBuilder::new()
                .eth(MAC_LB, MAC_CLIENT)
                .ip(ip(VIP), ip(CLIENT))
                .tcp(81, 40001, TCP_SYN | TCP_ACK)
                .build()
        },
    );

    let ack = PacketBuilder::new()
        .ip(ip(CLIENT), ip(VIP))
        .tcp(40001, 81, TCP_ACK)
        .build();
    let p = fx.check(
        "v4 client ACK",
        true,
        &ack,
        XDP_REDIRECT,
        Counter::FlowToBackend,
        to_backend(40001, TCP_ACK, b""),
    );
    assert_eq!(p.sport, snat);

    let data = PacketBuilder::new()
        .ip(ip(CLIENT), ip(VIP))
        .tcp(40001, 81, TCP_ACK | TCP_PSH)
        .payload(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .build();
    fx.check(
        "v4 client data (odd length payload kept)",
        true,
        &data,
        XDP_REDIRECT,
        Counter::FlowToBackend,
        to_backend(
            40001,
            TCP_ACK | TCP_PSH,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
    );

    let reply = PacketBuilder::new()
        .eth(MAC_BE1, MAC_LB_SW)
        .ip(ip(BE1), ip(SNAT))
        .tcp(8081, snat, TCP_ACK | TCP_PSH)
        .payload(b"HTTP/1.1 200 OK\r\n\r\n")
        .build();
    fx.check(
        "v4 backend data back to the client",
        false,
        &reply,
        XDP_REDIRECT,
        Counter::FlowToClient,
        |_| {
            PacketBuilder::new()
                .eth(MAC_LB, MAC_CLIENT)
                .ip(ip(VIP), ip(CLIENT))
                .tcp(81, 40001, TCP_ACK | TCP_PSH)
                .payload(b"HTTP/1.1 200 OK\r\n\r\n")
                .build()
        },
    );

    let fin = PacketBuilder::new()
        .ip(ip(CLIENT), ip(VIP))
        .tcp(40001, 81, TCP_FIN | TCP_ACK)
        .build();
    fx.check(
        "v4 client FIN",
        true,
        &fin,
        XDP_REDIRECT,
        Counter::FlowToBackend,
        to_backend(40001, TCP_FIN | TCP_ACK, b""),
    );

    let rst = PacketBuilder::new()
        .eth(MAC_BE1, MAC_LB_SW)
        .ip(ip(BE1), ip(SNAT))
        .tcp(8081, snat, TCP_RST)
        .build();
    fx.check(
        "v4 backend RST back to the client",
        false,
        &rst,
        XDP_REDIRECT,
        Counter::FlowToClient,
        |_| {
            PacketBuilder::new()
                .eth(MAC_LB, MAC_CLIENT)
                .ip(ip(VIP), ip(CLIENT))
                .tcp(81, 40001, TCP_RST)
                .build()
        },
    );

    let ttl = PacketBuilder::new()
        .ip(ip(CLIENT), ip(VIP))
        .ttl(3)
        .tcp(40002, 81, TCP_SYN)
        .build();
    let p = fx.check(
        "v4 TTL is kept (full NAT terminates the path, like a proxy)",
        true,
        &ttl,
        XDP_REDIRECT,
        Counter::FlowNew,
        |p| {
            PacketBuilder::new()
                .eth(MAC_LB_SW, MAC_BE1)
                .ip(ip(SNAT), ip(BE1))
                .ttl(3)
                .tcp(p.sport, 8081, TCP_SYN)
                .build()
        },
    );
    assert_ne!(p.sport, snat, "two flows to one backend share a SNAT port");

    let stray = PacketBuilder::new()
        .eth(MAC_BE1, MAC_LB_SW)
        .ip(ip(BE1), ip(SNAT))
        .tcp(8081, 39999, TCP_ACK)
        .build();
    fx.passes_untouched(
        "v4 packet to the SNAT address without a flow goes to the kernel",
        false,
        &stray,
        Counter::PassNoService,
    );
}

/// Maglev spreads flows; an established flow keeps its backend when the set changes; a dead
/// backend's flows are re-balanced.
fn tcp_v4_spread_and_backend_change(fx: &mut Fixtures<'_>) {
    let mut seen = BTreeSet::new();
    let mut first_flow_backend = None;
    for i in 0..24u16 {
        let syn = PacketBuilder::new()
            .ip(ip(CLIENT), ip(VIP))
            .tcp(41000 + i, 80, TCP_SYN)
            .build();
        let p = fx.check(
            "v4 SYN to a two-backend service",
            true,
            &syn,
            XDP_REDIRECT,
            Counter::FlowNew,
            |p| {
                let mac = if p.dst == ip(BE1) { MAC_BE1 } else { MAC_BE2 };
                PacketBuilder::new()
                    .eth(MAC_LB_SW, mac)
                    .ip(ip(SNAT), p.dst)
                    .tcp(p.sport, 8080, TCP_SYN)
                    .build()
            },
        );
        seen.insert(p.dst);
        first_flow_backend.get_or_insert(p.dst);
    }
    assert_eq!(seen.len(), 2, "24 flows all went to {seen:?}");
    let kept = first_flow_backend.unwrap();
    let other = if kept == ip(BE1) { BE2 } else { BE1 };

    // Remove the first flow's backend: it drains (established flows stay), new flows avoid it.
    fx.dp
        .apply(&[L4Change::Upsert(service(
            80,
            Protocol::Tcp,
            &[&format!("{other}:8080")],
        ))])
        .unwrap();
    let ack = PacketBuilder::new()
        .ip(ip(CLIENT), ip(VIP))
        .tcp(41000, 80, TCP_ACK)
        .build();
    let p = fx.check(
        "established flow keeps its removed (draining) backend",
        true,
        &ack,
        XDP_REDIRECT,
        Counter::FlowToBackend,
        |p| {
            let mac = if p.dst == ip(BE1) { MAC_BE1 } else { MAC_BE2 };
            PacketBuilder::new()
                .eth(MAC_LB_SW, mac)
                .ip(ip(SNAT), p.dst)
                .tcp(p.sport, 8080, TCP_ACK)
                .build()
        },
    );
    assert_eq!(p.dst, kept);
    for i in 0..8u16 {
        let syn = PacketBuilder::new()
            .ip(ip(CLIENT), ip(VIP))
            .tcp(42000 + i, 80, TCP_SYN)
            .build();
        let p = fx.check(
            "new flow after the change uses the new set only",
            true,
            &syn,
            XDP_REDIRECT,
            Counter::FlowNew,
            |p| {
                let mac = if p.dst == ip(BE1) { MAC_BE1 } else { MAC_BE2 };
                PacketBuilder::new()
                    .eth(MAC_LB_SW, mac)
                    .ip(ip(SNAT), p.dst)
                    .tcp(p.sport, 8080, TCP_SYN)
                    .build()
            },
        );
        assert_eq!(p.dst, ip(other));
    }

    // Drain timeout (0 here) over: the backend is dead; its flow is re-balanced to the live one,
    // which answers the stray segment with a RST.
    fx.dp.expire_drained_backends().unwrap();
    let p = fx.check(
        "flow of a dead backend is re-balanced",
        true,
        &ack,
        XDP_REDIRECT,
        Counter::FlowBackendDead,
        |p| {
            PacketBuilder::new()
                .eth(MAC_LB_SW, if other == BE1 { MAC_BE1 } else { MAC_BE2 })
                .ip(ip(SNAT), ip(other))
                .tcp(p.sport, 8080, TCP_ACK)
                .build()
        },
    );
    assert_eq!(p.dst, ip(other));
}

fn udp_fixtures(fx: &mut Fixtures<'_>) {
    let q = PacketBuilder::new()
        .ip(ip(CLIENT), ip(VIP))
        .udp(5000, 53)
        .payload(b"query")
        .build();
    let p = fx.check(
        "v4 UDP to a service",
        true,
        &q,
        XDP_REDIRECT,
        Counter::FlowNew,
        |p| {
            PacketBuilder::new()
                .eth(MAC_LB_SW, MAC_BE1)
                .ip(ip(SNAT), ip(BE1))
                .udp(snat_port_ok(p), 5353)
                .payload(b"query")
                .build()
        },
    );
    let r = PacketBuilder::new()
        .eth(MAC_BE1, MAC_LB_SW)
        .ip(ip(BE1), ip(SNAT))
        .udp(5353, p.sport)
        .payload(b"answer!")
        .build();
    fx.check(
        "v4 UDP reply back to the client",
        false,
        &r,
        XDP_REDIRECT,
        Counter::FlowToClient,
        |_| {
            PacketBuilder::new()
                .eth(MAC_LB, MAC_CLIENT)
                .ip(ip(VIP), ip(CLIENT))
                .udp(53, 5000)
                .payload(b"answer!")
                .build()
        },
    );
    fx.check(
        "v4 UDP second datagram of the flow",
        true,
        &q,
        XDP_REDIRECT,
        Counter::FlowToBackend,
        |_| {
            PacketBuilder::new()
                .eth(MAC_LB_SW, MAC_BE1)
                .ip(ip(SNAT), ip(BE1))
                .udp(p.sport, 5353)
                .payload(b"query")
                .build()
        },
    );
    // A zero UDP checksum means "none" in IPv4 and must stay zero.
    let mut zero = PacketBuilder::new()
        .ip(ip(CLIENT), ip(VIP))
        .udp(5001, 53)
        .payload(b"q0")
        .build();
    zero[14 + 20 + 6] = 0;
    zero[14 + 20 + 7] = 0;
    let before = fx.counters();
    let (v, out) = run(fx.dp.program(), fx.lab.cli_ifindex, &zero);
    assert_eq!(v, XDP_REDIRECT);
    assert_eq!(fx.counters().since(&before).get(Counter::FlowNew), 1);
    assert_eq!(
        &out[14 + 20 + 6..14 + 20 + 8],
        &[0, 0],
        "zero UDP checksum rewritten"
    );
    let p = packet::parse(&out).unwrap();
    let mut want = PacketBuilder::new()
        .eth(MAC_LB_SW, MAC_BE1)
        .ip(ip(SNAT), ip(BE1))
        .udp(p.sport, 5353)
        .payload(b"q0")
        .build();
    want[14 + 20 + 6] = 0;
    want[14 + 20 + 7] = 0;
    assert_eq!(out, want, "v4 UDP without checksum");
    fx.ran += 1;
}

fn ipv6_fixtures(fx: &mut Fixtures<'_>) {
    let syn = PacketBuilder::new()
        .ip(ip(CLIENT6), ip(VIP6))
        .tcp(40001, 81, TCP_SYN)
        .build();
    let p = fx.check(
        "v6 SYN to a service is NATed to its v6 backend",
        true,
        &syn,
        XDP_REDIRECT,
        Counter::FlowNew,
        |p| {
            PacketBuilder::new()
                .eth(MAC_LB_SW, MAC_BE1)
                .ip(ip(SNAT6), ip(BE1_6))
                .tcp(snat_port_ok(p), 8081, TCP_SYN)
                .build()
        },
    );
    let synack = PacketBuilder::new()
        .eth(MAC_BE1, MAC_LB_SW)
        .ip(ip(BE1_6), ip(SNAT6))
        .tcp(8081, p.sport, TCP_SYN | TCP_ACK)
        .build();
    fx.check(
        "v6 SYN-ACK back to the client",
        false,
        &synack,
        XDP_REDIRECT,
        Counter::FlowToClient,
        |_| {
            PacketBuilder::new()
                .eth(MAC_LB, MAC_CLIENT)
                .ip(ip(VIP6), ip(CLIENT6))
                .tcp(81, 40001, TCP_SYN | TCP_ACK)
                .build()
        },
    );
    let data = PacketBuilder::new()
        .ip(ip(CLIENT6), ip(VIP6))
        .tcp(40001, 81, TCP_ACK | TCP_PSH)
        .payload(b"ping")
        .build();
    fx.check(
        "v6 client data",
        true,
        &data,
        XDP_REDIRECT,
        Counter::FlowToBackend,
        |_| {
            PacketBuilder::new()
                .eth(MAC_LB_SW, MAC_BE1)
                .ip(ip(SNAT6), ip(BE1_6))
                .tcp(p.sport, 8081, TCP_ACK | TCP_PSH)
                .payload(b"ping")
                .build()
        },
    );
    let fin = PacketBuilder::new()
        .eth(MAC_BE1, MAC_LB_SW)
        .ip(ip(BE1_6), ip(SNAT6))
        .tcp(8081, p.sport, TCP_FIN | TCP_ACK)
        .build();
    fx.check(
        "v6 backend FIN back to the client",
        false,
        &fin,
        XDP_REDIRECT,
        Counter::FlowToClient,
        |_| {
            PacketBuilder::new()
                .eth(MAC_LB, MAC_CLIENT)
                .ip(ip(VIP6), ip(CLIENT6))
                .tcp(81, 40001, TCP_FIN | TCP_ACK)
                .build()
        },
    );
    let q = PacketBuilder::new()
        .ip(ip(CLIENT6), ip(VIP6))
        .udp(6000, 53)
        .payload(b"q6")
        .build();
    let u = fx.check(
        "v6 UDP to a service",
        true,
        &q,
        XDP_REDIRECT,
        Counter::FlowNew,
        |p| {
            PacketBuilder::new()
                .eth(MAC_LB_SW, MAC_BE1)
                .ip(ip(SNAT6), ip(BE1_6))
                .udp(snat_port_ok(p), 5353)
                .payload(b"q6")
                .build()
        },
    );
    let r = PacketBuilder::new()
        .eth(MAC_BE1, MAC_LB_SW)
        .ip(ip(BE1_6), ip(SNAT6))
        .udp(5353, u.sport)
        .payload(b"a6")
        .build();
    fx.check(
        "v6 UDP reply",
        false,
        &r,
        XDP_REDIRECT,
        Counter::FlowToClient,
        |_| {
            PacketBuilder::new()
                .eth(MAC_LB, MAC_CLIENT)
                .ip(ip(VIP6), ip(CLIENT6))
                .udp(53, 6000)
                .payload(b"a6")
                .build()
        },
    );
    let ext = PacketBuilder::new()
        .ip(ip(CLIENT6), ip(VIP6))
        .ipv6_next_header(60)
        .payload(&[6, 0, 0, 0, 0, 0, 0, 0])
        .build();
    fx.passes_untouched(
        "v6 with an extension header is left to the kernel",
        true,
        &ext,
        Counter::PassIpv6ExtHeader,
    );
    let nosvc = PacketBuilder::new()
        .ip(ip(CLIENT6), ip(VIP6))
        .tcp(40001, 9999, TCP_SYN)
        .build();
    fx.passes_untouched(
        "v6 to a port with no service",
        true,
        &nosvc,
        Counter::PassNoService,
    );
}

fn header_variants(fx: &mut Fixtures<'_>) {
    let opts = [0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00];
    let syn = PacketBuilder::new()
        .ip(ip(CLIENT), ip(VIP))
        .ipv4_options(&opts)
        .tcp(43000, 81, TCP_SYN)
        .build();
    fx.check(
        "v4 with IP options: the TCP header is found after them",
        true,
        &syn,
        XDP_REDIRECT,
        Counter::FlowNew,
        |p| {
            PacketBuilder::new()
                .eth(MAC_LB_SW, MAC_BE1)
                .ip(ip(SNAT), ip(BE1))
                .ipv4_options(&opts)
                .tcp(snat_port_ok(p), 8081, TCP_SYN)
                .build()
        },
    );
    let frag = PacketBuilder::new()
        .ip(ip(CLIENT), ip(VIP))
        .ipv4_fragment(true, 0)
        .tcp(43001, 81, TCP_SYN)
        .build();
    fx.passes_untouched(
        "v4 fragment to a service",
        true,
        &frag,
        Counter::PassFragment,
    );
    let mut short = PacketBuilder::new()
        .ip(ip(CLIENT), ip(VIP))
        .tcp(43002, 81, TCP_SYN)
        .build();
    short.truncate(14 + 20 + 10);
    fx.passes_untouched(
        "v4 truncated TCP header to a service",
        true,
        &short,
        Counter::PassBadL4,
    );
    let icmp = PacketBuilder::new()
        .ip(ip(CLIENT), ip(VIP))
        .l4_proto(1)
        .payload(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0])
        .build();
    fx.passes_untouched(
        "ICMP echo to the VIP goes to the kernel",
        true,
        &icmp,
        Counter::PassNotTcpUdp,
    );
    let arp = PacketBuilder::new().payload(&[0; 28]).build();
    fx.passes_untouched("ARP", true, &arp, Counter::PassNotIp);
}

fn forwarding_variants(fx: &mut Fixtures<'_>) {
    let syn = PacketBuilder::new()
        .ip(ip(CLIENT), ip(VIP))
        .tcp(44000, 85, TCP_SYN)
        .build();
    fx.check(
        "backend behind the ingress interface: XDP_TX",
        true,
        &syn,
        XDP_TX,
        Counter::VerdictTx,
        |p| {
            PacketBuilder::new()
                .eth(MAC_LB, MAC_LOCAL_BE)
                .ip(ip(SNAT), ip("198.18.1.50"))
                .tcp(snat_port_ok(p), 8085, TCP_SYN)
                .build()
        },
    );
    // No neighbour entry for 198.18.2.13: the rewritten packet goes to the kernel (which
    // resolves ARP and forwards it); MACs are not touched.
    let syn = PacketBuilder::new()
        .ip(ip(CLIENT), ip(VIP))
        .tcp(44001, 83, TCP_SYN)
        .build();
    fx.check(
        "unresolved neighbour: rewritten packet passed to the kernel",
        true,
        &syn,
        XDP_PASS,
        Counter::PassNoNeighbour,
        |p| {
            PacketBuilder::new()
                .ip(ip(SNAT), ip("198.18.2.13"))
                .tcp(snat_port_ok(p), 8083, TCP_SYN)
                .build()
        },
    );
    let syn = PacketBuilder::new()
        .ip(ip(CLIENT), ip(VIP))
        .tcp(44002, 84, TCP_SYN)
        .build();
    fx.check(
        "no route to the backend: rewritten packet passed to the kernel",
        true,
        &syn,
        XDP_PASS,
        Counter::PassFibFailed,
        |p| {
            PacketBuilder::new()
                .ip(ip(SNAT), ip("198.19.99.1"))
                .tcp(snat_port_ok(p), 8084, TCP_SYN)
                .build()
        },
    );
}

fn passed_untouched(fx: &mut Fixtures<'_>) {
    let cases: [(&str, Vec<u8>, Counter); 5] = [
        (
            "v4 to the VIP on a port with no service",
            PacketBuilder::new()
                .ip(ip(CLIENT), ip(VIP))
                .tcp(45000, 9999, TCP_SYN)
                .build(),
            Counter::PassNoService,
        ),
        (
            "v4 to another address on the same port",
            PacketBuilder::new()
                .ip(ip(CLIENT), ip("198.18.1.3"))
                .tcp(45001, 81, TCP_SYN)
                .build(),
            Counter::PassNoService,
        ),
        (
            "v4 UDP to a TCP-only service port",
            PacketBuilder::new()
                .ip(ip(CLIENT), ip(VIP))
                .udp(45002, 81)
                .build(),
            Counter::PassNoService,
        ),
        (
            "v4 to a service without backends",
            PacketBuilder::new()
                .ip(ip(CLIENT), ip(VIP))
                .tcp(45003, 82, TCP_SYN)
                .build(),
            Counter::PassNoBackend,
        ),
        (
            "v6 to a TCP service whose only backends are v4",
            PacketBuilder::new()
                .ip(ip(CLIENT6), ip(VIP6))
                .tcp(45004, 80, TCP_SYN)
                .build(),
            Counter::PassNoBackend,
        ),
    ];
    for (name, frame, counter) in cases {
        fx.passes_untouched(name, true, &frame, counter);
    }
}

/// With one SNAT port, a second flow to the same backend has nowhere to go: dropped, counted.
fn snat_exhaustion(lab: &Lab) {
    lab.lb
        .enter(|| {
            let program = XdpProgram::load().expect("load");
            let mut dp = XdpL4::new(program, config((40000, 40000))).unwrap();
            dp.add_tx_port(lab.cli_ifindex).unwrap();
            dp.add_tx_port(lab.sw_ifindex).unwrap();
            dp.apply(&[L4Change::Upsert(service(
                81,
                Protocol::Tcp,
                &["198.18.2.11:8081"],
            ))])
            .unwrap();
            let a = PacketBuilder::new()
                .ip(ip(CLIENT), ip(VIP))
                .tcp(46000, 81, TCP_SYN)
                .build();
            let (v, out) = run(dp.program(), lab.cli_ifindex, &a);
            assert_eq!(v, XDP_REDIRECT);
            assert_eq!(packet::parse(&out).unwrap().sport, 40000);
            let before = dp.program().counters().unwrap();
            let b = PacketBuilder::new()
                .ip(ip(CLIENT), ip(VIP))
                .tcp(46001, 81, TCP_SYN)
                .build();
            let (v, _) = run(dp.program(), lab.cli_ifindex, &b);
            assert_eq!(v, XDP_DROP, "second flow with an exhausted SNAT range");
            let d = dp.program().counters().unwrap().since(&before);
            assert_eq!(d.get(Counter::DropSnatExhausted), 1);
            assert_eq!(d.get(Counter::SnatPortCollision), 8, "every try collided");
            // The first flow still works.
            let (v, _) = run(
                dp.program(),
                lab.cli_ifindex,
                &PacketBuilder::new()
                    .ip(ip(CLIENT), ip(VIP))
                    .tcp(46000, 81, TCP_ACK)
                    .build(),
            );
            assert_eq!(v, XDP_REDIRECT);
        })
        .unwrap();
}

/// Average cost of one program run per packet kind, from BPF_PROG_TEST_RUN with `repeat`
/// (Katran's perf mode). A benchmark, not a test: `cargo xtask bench xdp` runs it and prints the
/// table; nothing here asserts a time.
#[test]
#[ignore = "benchmark: run by `cargo xtask bench xdp`"]
fn program_cost_per_packet() {
    if !require_netns_and_bpf("program_cost_per_packet") {
        return;
    }
    const REPEAT: u32 = 1_000_000;
    let lab = lab();
    let rows = lab
        .lb
        .enter(|| {
            let mut dp = XdpL4::new(XdpProgram::load().unwrap(), config((40000, 59999))).unwrap();
            dp.add_tx_port(lab.cli_ifindex).unwrap();
            dp.add_tx_port(lab.sw_ifindex).unwrap();
            dp.apply(&[L4Change::Upsert(service(
                81,
                Protocol::Tcp,
                &["198.18.2.11:8081"],
            ))])
            .unwrap();
            // Create the flow once so the timed runs measure the established path.
            let syn = PacketBuilder::new()
                .ip(ip(CLIENT), ip(VIP))
                .tcp(47000, 81, TCP_SYN)
                .build();
            let (_, out) = run(dp.program(), lab.cli_ifindex, &syn);
            let snat = packet::parse(&out).unwrap().sport;
            let cases: Vec<(&str, u32, Vec<u8>)> = vec![
                (
                    "ARP (parse, count, pass): harness floor",
                    lab.cli_ifindex,
                    PacketBuilder::new().payload(&[0; 28]).build(),
                ),
                (
                    "TCP to a port with no service (lookup, pass)",
                    lab.cli_ifindex,
                    PacketBuilder::new()
                        .ip(ip(CLIENT), ip(VIP))
                        .tcp(47001, 9999, TCP_ACK)
                        .build(),
                ),
                (
                    "established TCP client -> backend (conntrack hit, NAT, FIB, redirect)",
                    lab.cli_ifindex,
                    PacketBuilder::new()
                        .ip(ip(CLIENT), ip(VIP))
                        .tcp(47000, 81, TCP_ACK)
                        .payload(&[0; 64])
                        .build(),
                ),
                (
                    "established TCP backend -> client (reply NAT, FIB, redirect)",
                    lab.sw_ifindex,
                    PacketBuilder::new()
                        .eth(MAC_BE1, MAC_LB_SW)
                        .ip(ip(BE1), ip(SNAT))
                        .tcp(8081, snat, TCP_ACK)
                        .payload(&[0; 64])
                        .build(),
                ),
            ];
            let mut rows = Vec::new();
            for (name, ingress, frame) in cases {
                let mut ctx = Vec::with_capacity(24);
                for v in [0u32, u32::try_from(frame.len()).unwrap(), 0, ingress, 0, 0] {
                    ctx.extend_from_slice(&v.to_ne_bytes());
                }
                let mut out = vec![0u8; frame.len() + 64];
                let r = dp
                    .program()
                    .program()
                    .unwrap()
                    .test_run(TestRunOptions {
                        data_in: Some(&frame),
                        data_out: Some(&mut out),
                        ctx_in: Some(&ctx),
                        repeat: REPEAT,
                        ..TestRunOptions::default()
                    })
                    .unwrap();
                rows.push((name, r.duration.as_nanos()));
            }
            rows
        })
        .unwrap();
    println!("| packet | ns per packet (BPF_PROG_TEST_RUN, {REPEAT} runs) |");
    println!("|---|---|");
    for (name, ns) in rows {
        println!("| {name} | {ns} |");
    }
}
