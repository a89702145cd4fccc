//! Packet fixtures through the real XDP program with BPF_PROG_TEST_RUN (Katran's approach).
//!
//! The program is loaded inside a namespace that has the load balancer's interfaces, routes and
//! permanent neighbour entries, and its services are programmed through the real agent code
//! ([`XdpL4`]). Each fixture feeds one hand-built frame with a given ingress interface and
//! compares the verdict and the output frame byte for byte with a frame built independently
//! (its checksums computed from scratch), then checks the counter that names what happened.
//! Fixtures that are the same for IPv4 and IPv6 are tables (Katran's `PacketAttributes`) run
//! once per [`Family`]. Fixtures run in order: later ones use flows earlier ones created.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::programs::{TestRun, TestRunOptions};
use mlb::{
    dataplane::{
        Dataplane, L4Change,
        xdp::{Counters, XdpProgram},
        xdp_l4::{ConntrackSweeper, FlowTimeouts, Forwarding, XdpL4, XdpL4Config},
    },
    model::{Backend, BackendId, BackendState, L4Service, L4ServiceKey, Protocol},
};
use mlb_common::{
    consts::xdp_action::*,
    net::{IPPROTO_ICMP, IPPROTO_ICMPV6, eth, ipv4, tcp, udp},
    stats::Counter,
};
use mlb_tests::{
    netns::{Netns, VethEnd, veth},
    packet::{
        self, MAC_CLIENT, MAC_LB, PacketBuilder, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
    },
    privileges::require_netns_and_bpf,
};

#[path = "xdp_fixtures/fuzz.rs"]
mod fuzz;
#[path = "xdp_fixtures/hop_cache.rs"]
mod hop_cache;
#[path = "xdp_fixtures/icmp_errors.rs"]
mod icmp_errors;
#[path = "xdp_fixtures/labels.rs"]
mod labels;

const MAC_LB_SW: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
const MAC_BE1: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x11];
const MAC_BE2: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x12];
const MAC_LOCAL_BE: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x50];

/// The lab's addresses of one IP family.
struct Family {
    name: &'static str,
    client: IpAddr,
    vip: IpAddr,
    /// An address of the client-side network that is no VIP.
    not_vip: IpAddr,
    /// A backend on the client-side network: behind the ingress interface.
    local_backend: IpAddr,
    /// The load balancer's address on the backend network, the source of forwarded flows.
    snat: IpAddr,
    be1: IpAddr,
    /// A backend on the backend network without a neighbour entry.
    unresolved_backend: IpAddr,
    /// A backend no route leads to.
    unrouted_backend: IpAddr,
    /// A TCP service whose backends are all of the other family.
    other_family_port: u16,
    /// The ICMP protocol number and an echo request.
    icmp: (u8, [u8; 8]),
}

const fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// `fd00:<a>:<b>:<c>::<host>`
const fn v6(a: u16, b: u16, c: u16, host: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, a, b, c, 0, 0, 0, host))
}

const V4: Family = Family {
    name: "v4",
    client: v4(198, 18, 1, 1),
    vip: v4(198, 18, 1, 2),
    not_vip: v4(198, 18, 1, 3),
    local_backend: v4(198, 18, 1, 50),
    snat: v4(198, 18, 2, 1),
    be1: v4(198, 18, 2, 11),
    unresolved_backend: v4(198, 18, 2, 13),
    unrouted_backend: v4(198, 19, 99, 1),
    other_family_port: SVC_V6_ONLY,
    icmp: (IPPROTO_ICMP, [8, 0, 0xf7, 0xff, 0, 0, 0, 0]),
};

const V6: Family = Family {
    name: "v6",
    client: v6(0x198, 0x18, 1, 1),
    vip: v6(0x198, 0x18, 1, 2),
    not_vip: v6(0x198, 0x18, 1, 3),
    local_backend: v6(0x198, 0x18, 1, 0x50),
    snat: v6(0x198, 0x18, 2, 1),
    be1: v6(0x198, 0x18, 2, 0x11),
    unresolved_backend: v6(0x198, 0x18, 2, 0x13),
    unrouted_backend: v6(0x198, 0x19, 0x99, 1),
    other_family_port: SVC_V4_PAIR,
    icmp: (IPPROTO_ICMPV6, [128, 0, 0, 0, 0, 0, 0, 0]),
};

const FAMILIES: [&Family; 2] = [&V4, &V6];

/// The second backend of [`SVC_V4_PAIR`].
const BE2: IpAddr = v4(198, 18, 2, 12);

/// Service ports; a backend's port is the service port + 8000.
/// TCP to `be1` (both families).
const SVC_TCP: u16 = 81;
/// UDP to `be1` (both families).
const SVC_UDP: u16 = 53;
/// TCP to `be1` and [`BE2`] (IPv4 only).
const SVC_V4_PAIR: u16 = 80;
/// TCP without backends.
const SVC_EMPTY: u16 = 82;
/// TCP to `unresolved_backend`.
const SVC_UNRESOLVED: u16 = 83;
/// TCP to `unrouted_backend`.
const SVC_UNROUTED: u16 = 84;
/// TCP to `local_backend`.
const SVC_LOCAL: u16 = 85;
/// TCP to the IPv6 `be1` only.
const SVC_V6_ONLY: u16 = 86;

const fn backend_port(service_port: u16) -> u16 {
    service_port + 8000
}

fn service(port: u16, protocol: Protocol, backends: &[IpAddr]) -> L4Service {
    L4Service {
        key: L4ServiceKey { port, protocol },
        app_id: format!("/fixture-{port}"),
        bind_addr: None,
        backends: backends
            .iter()
            .map(|ip| {
                let addr = SocketAddr::new(*ip, backend_port(port));
                Backend {
                    id: BackendId::from(addr.to_string()),
                    addr,
                    weight: 1,
                    state: BackendState::Active,
                }
            })
            .collect(),
        health_check: None,
        tuning: Default::default(),
        balance: Default::default(),
        allowed_networks: Vec::new(),
    }
}

/// Every service of the fixtures.
fn services() -> Vec<L4Change> {
    let both = |f: fn(&Family) -> IpAddr| [f(&V4), f(&V6)];
    [
        service(SVC_TCP, Protocol::Tcp, &both(|f| f.be1)),
        service(SVC_V4_PAIR, Protocol::Tcp, &[V4.be1, BE2]),
        service(SVC_UDP, Protocol::Udp, &both(|f| f.be1)),
        service(SVC_EMPTY, Protocol::Tcp, &[]),
        service(
            SVC_UNRESOLVED,
            Protocol::Tcp,
            &both(|f| f.unresolved_backend),
        ),
        service(SVC_UNROUTED, Protocol::Tcp, &both(|f| f.unrouted_backend)),
        service(SVC_LOCAL, Protocol::Tcp, &both(|f| f.local_backend)),
        service(SVC_V6_ONLY, Protocol::Tcp, &[V6.be1]),
    ]
    .into_iter()
    .map(L4Change::Upsert)
    .collect()
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
    let cli_addrs = [format!("{}/24", V4.vip), format!("{}/64", V6.vip)];
    let sw_addrs = [format!("{}/24", V4.snat), format!("{}/64", V6.snat)];
    for (name, addrs, peer_name) in [
        ("lb-cli", &cli_addrs, "p-cli"),
        ("lb-sw", &sw_addrs, "p-sw"),
    ] {
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        veth(
            &VethEnd {
                ns: &lb,
                name,
                addrs: &addrs,
            },
            &VethEnd {
                ns: &peer,
                name: peer_name,
                addrs: &[],
            },
        )
        .unwrap();
    }
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
    let mut neighbours = vec![(BE2, MAC_BE2, "lb-sw")];
    for f in FAMILIES {
        neighbours.extend([
            (f.client, MAC_CLIENT, "lb-cli"),
            (f.local_backend, MAC_LOCAL_BE, "lb-cli"),
            (f.be1, MAC_BE1, "lb-sw"),
        ]);
    }
    for (addr, m, dev) in neighbours {
        lb.exec(&[
            "ip",
            "neigh",
            "replace",
            &addr.to_string(),
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
        vips: vec![V4.vip, V6.vip],
        snat_v4: match V4.snat {
            IpAddr::V4(a) => vec![a],
            IpAddr::V6(_) => vec![],
        },
        snat_v6: match V6.snat {
            IpAddr::V6(a) => vec![a],
            IpAddr::V4(_) => vec![],
        },
        snat_ports,
        ring_size: 65537,
        drain_timeout: Duration::ZERO,
        timeouts: FlowTimeouts::default(),
        hash_secret: "0123456789abcdef".parse().unwrap(),
        forwarding: Forwarding::Nat,
    }
}

/// Which interface a frame arrives on.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Backend,
}

impl Lab {
    fn ifindex(&self, side: Side) -> u32 {
        match side {
            Side::Client => self.cli_ifindex,
            Side::Backend => self.sw_ifindex,
        }
    }

    /// A program configured with every fixture service, allowed to redirect to both interfaces.
    fn dataplane(&self, config: XdpL4Config, changes: &[L4Change]) -> XdpL4 {
        let mut dp = XdpL4::new(XdpProgram::load().expect("load"), config).expect("configure");
        dp.add_tx_port(self.cli_ifindex).unwrap();
        dp.add_tx_port(self.sw_ifindex).unwrap();
        dp.apply(changes).expect("apply services");
        dp
    }
}

/// Runs one frame through the program as if received on `ingress`.
fn run(program: &XdpProgram, ingress: u32, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 64];
    let r = program
        .program()
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&xdp_md(frame, ingress)),
            ..TestRunOptions::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, out)
}

/// `struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }`
/// for `frame` arriving on `ingress`.
fn xdp_md(frame: &[u8], ingress: u32) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(24);
    for v in [0u32, u32::try_from(frame.len()).unwrap(), 0, ingress, 0, 0] {
        ctx.extend_from_slice(&v.to_ne_bytes());
    }
    ctx
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
        from: Side,
        input: &[u8],
        verdict: u32,
        counter: Counter,
        expected: impl FnOnce(&packet::Parsed) -> Vec<u8>,
    ) -> packet::Parsed {
        let before = self.counters();
        let (got, out) = run(self.dp.program(), self.lab.ifindex(from), input);
        let delta = self.counters().since(&before);
        assert_eq!(got, verdict, "{name}: verdict ({delta:?})");
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
    fn passes_untouched(&mut self, name: &str, from: Side, input: &[u8], counter: Counter) {
        let before = self.counters();
        let (got, out) = run(self.dp.program(), self.lab.ifindex(from), input);
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

    /// Runs the packets of one flow in order (both directions); returns the SNAT port the
    /// program chose, which every packet of the flow must carry.
    fn run_flow(&mut self, f: &Family, flow: &Flow, steps: &[Step]) -> u16 {
        let mut snat_port = None;
        for step in steps {
            let name = format!("{} {}", f.name, step.description);
            let flags = step.tcp_flags;
            match step.dir {
                Dir::ToBackend => {
                    let input = flow
                        .l4(
                            PacketBuilder::new().ip(f.client, f.vip).ttl(flow.ttl),
                            flow.client_port,
                            flow.service_port,
                            flags,
                        )
                        .payload(step.payload)
                        .build();
                    let (verdict, src_mac, dst_mac) = flow.egress;
                    // The kernel decrements what it forwards itself.
                    let ttl = if verdict == XDP_PASS {
                        flow.ttl
                    } else {
                        flow.ttl - 1
                    };
                    self.check(&name, Side::Client, &input, verdict, step.counter, |p| {
                        let port = *snat_port.get_or_insert_with(|| snat_port_ok(p));
                        flow.l4(
                            PacketBuilder::new()
                                .eth(src_mac, dst_mac)
                                .ip(f.snat, flow.backend)
                                .ttl(ttl),
                            port,
                            backend_port(flow.service_port),
                            flags,
                        )
                        .payload(step.payload)
                        .build()
                    });
                }
                Dir::ToClient => {
                    let port = snat_port.expect("a reply follows a packet towards the backend");
                    let input = flow
                        .l4(
                            PacketBuilder::new()
                                .eth(MAC_BE1, MAC_LB_SW)
                                .ip(flow.backend, f.snat),
                            backend_port(flow.service_port),
                            port,
                            flags,
                        )
                        .payload(step.payload)
                        .build();
                    self.check(
                        &name,
                        Side::Backend,
                        &input,
                        XDP_REDIRECT,
                        step.counter,
                        |_| {
                            flow.l4(
                                PacketBuilder::new()
                                    .eth(MAC_LB, MAC_CLIENT)
                                    .ip(f.vip, f.client)
                                    .ttl(63),
                                flow.service_port,
                                flow.client_port,
                                flags,
                            )
                            .payload(step.payload)
                            .build()
                        },
                    );
                }
            }
        }
        snat_port.expect("the flow has a packet towards the backend")
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

/// A flow to a service: its client port, and the backend and egress the program must choose.
struct Flow {
    proto: Protocol,
    client_port: u16,
    service_port: u16,
    backend: IpAddr,
    /// How packets towards the backend leave: verdict, source and destination MACs.
    egress: (u32, [u8; 6], [u8; 6]),
    /// TTL or hop limit of the client's packets, which the program decrements like a router
    /// when it sends them on itself.
    ttl: u8,
}

impl Flow {
    /// A flow redirected out of the backend-side interface, TTL 64.
    fn new(proto: Protocol, client_port: u16, service_port: u16, backend: IpAddr) -> Flow {
        Flow {
            proto,
            client_port,
            service_port,
            backend,
            egress: (XDP_REDIRECT, MAC_LB_SW, MAC_BE1),
            ttl: 64,
        }
    }

    /// A flow to a service of `be1`.
    fn to_be1(f: &Family, proto: Protocol, client_port: u16, service_port: u16) -> Flow {
        Flow::new(proto, client_port, service_port, f.be1)
    }

    /// The same flow, leaving with another verdict and MACs.
    fn egress(self, verdict: u32, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Flow {
        Flow {
            egress: (verdict, src_mac, dst_mac),
            ..self
        }
    }

    /// `builder` with this flow's L4 header.
    fn l4(&self, builder: PacketBuilder, sport: u16, dport: u16, flags: u8) -> PacketBuilder {
        match self.proto {
            Protocol::Tcp => builder.tcp(sport, dport, flags),
            Protocol::Udp => builder.udp(sport, dport),
        }
    }
}

/// One packet of a flow (Katran's `PacketAttributes`, the frames built from the family's
/// addresses and the flow): its direction, TCP flags, payload, and the counter it must move.
struct Step {
    description: &'static str,
    dir: Dir,
    /// Ignored for UDP.
    tcp_flags: u8,
    payload: &'static [u8],
    counter: Counter,
}

enum Dir {
    /// Client → VIP, rewritten towards the backend.
    ToBackend,
    /// Backend → SNAT address, rewritten back towards the client.
    ToClient,
}

const fn step(
    description: &'static str,
    dir: Dir,
    tcp_flags: u8,
    payload: &'static [u8],
    counter: Counter,
) -> Step {
    Step {
        description,
        dir,
        tcp_flags,
        payload,
        counter,
    }
}

/// A whole TCP connection through the load balancer, both directions.
const TCP_CONNECTION: &[Step] = &[
    step(
        "SYN to a service is NATed to its backend",
        Dir::ToBackend,
        TCP_SYN,
        b"",
        Counter::FlowNew,
    ),
    step(
        "retransmitted SYN keeps its flow and SNAT port",
        Dir::ToBackend,
        TCP_SYN,
        b"",
        Counter::FlowToBackend,
    ),
    step(
        "backend SYN-ACK is NATed back to the client",
        Dir::ToClient,
        TCP_SYN | TCP_ACK,
        b"",
        Counter::FlowToClient,
    ),
    step(
        "client ACK",
        Dir::ToBackend,
        TCP_ACK,
        b"",
        Counter::FlowToBackend,
    ),
    step(
        "client data (odd length payload kept)",
        Dir::ToBackend,
        TCP_ACK | TCP_PSH,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Counter::FlowToBackend,
    ),
    step(
        "backend data back to the client",
        Dir::ToClient,
        TCP_ACK | TCP_PSH,
        b"HTTP/1.1 200 OK\r\n\r\n",
        Counter::FlowToClient,
    ),
    step(
        "client FIN",
        Dir::ToBackend,
        TCP_FIN | TCP_ACK,
        b"",
        Counter::FlowToBackend,
    ),
    step(
        "backend FIN back to the client",
        Dir::ToClient,
        TCP_FIN | TCP_ACK,
        b"",
        Counter::FlowToClient,
    ),
    step(
        "backend RST back to the client",
        Dir::ToClient,
        TCP_RST,
        b"",
        Counter::FlowToClient,
    ),
];

/// A UDP exchange: query, answer, another query.
const UDP_EXCHANGE: &[Step] = &[
    step(
        "UDP to a service",
        Dir::ToBackend,
        0,
        b"query",
        Counter::FlowNew,
    ),
    step(
        "UDP reply back to the client",
        Dir::ToClient,
        0,
        b"answer!",
        Counter::FlowToClient,
    ),
    step(
        "UDP second datagram of the flow",
        Dir::ToBackend,
        0,
        b"query",
        Counter::FlowToBackend,
    ),
];

#[test]
fn packet_fixtures() {
    if !require_netns_and_bpf("packet_fixtures") {
        return;
    }
    let lab = lab();
    let total = lab
        .lb
        .enter(|| {
            not_ready_passes(&lab);
            let mut dp = lab.dataplane(config((40000, 59999)), &services());
            let mut fx = Fixtures {
                dp: &mut dp,
                lab: &lab,
                ran: 1,
            };
            for f in FAMILIES {
                flows(&mut fx, f);
                forwarding(&mut fx, f);
                icmp_errors::errors(&mut fx, f);
                for (description, from, frame, counter) in passed_untouched(f) {
                    fx.passes_untouched(
                        &format!("{} {description}", f.name),
                        from,
                        &frame,
                        counter,
                    );
                }
            }
            v4_spread_and_backend_change(&mut fx);
            v4_only(&mut fx);
            v6_only(&mut fx);
            let arp = PacketBuilder::new().payload(&[0; 28]).build();
            fx.passes_untouched("ARP", Side::Client, &arp, Counter::PassNotIp);
            fx.ran
        })
        .unwrap();
    snat_exhaustion(&lab);
    assert!(total >= 60, "only {total} fixtures ran");
    eprintln!("{} packet fixtures passed", total + 2);
}

/// Before the agent writes its configuration, everything passes.
fn not_ready_passes(lab: &Lab) {
    let program = XdpProgram::load().expect("load");
    let syn = PacketBuilder::new()
        .ip(V4.client, V4.vip)
        .tcp(40001, SVC_TCP, TCP_SYN)
        .build();
    let before = program.counters().unwrap();
    let (v, out) = run(&program, lab.cli_ifindex, &syn);
    assert_eq!((v, &out), (XDP_PASS, &syn), "not ready: untouched pass");
    let delta = program.counters().unwrap().since(&before);
    assert_eq!(delta.get(Counter::PassNotReady), 1);
}

/// A TCP connection and a UDP exchange, byte for byte; a second flow to the same backend gets
/// another SNAT port.
fn flows(fx: &mut Fixtures<'_>, f: &Family) {
    let tcp = Flow::to_be1(f, Protocol::Tcp, 40001, SVC_TCP);
    let snat = fx.run_flow(f, &tcp, TCP_CONNECTION);
    let second = Flow {
        ttl: 3,
        ..Flow::to_be1(f, Protocol::Tcp, 40002, SVC_TCP)
    };
    let second_snat = fx.run_flow(
        f,
        &second,
        &[step(
            "second flow to the same backend, TTL 3 decremented",
            Dir::ToBackend,
            TCP_SYN,
            b"",
            Counter::FlowNew,
        )],
    );
    assert_ne!(
        second_snat, snat,
        "{}: two flows to one backend share a SNAT port",
        f.name
    );
    fx.run_flow(
        f,
        &Flow::to_be1(f, Protocol::Udp, 5000, SVC_UDP),
        UDP_EXCHANGE,
    );
}

/// Where rewritten packets go: out of the ingress interface, to the kernel when the neighbour is
/// unknown; and with no route at all, the packet goes to the kernel as it arrived (the program
/// decides before it writes).
fn forwarding(fx: &mut Fixtures<'_>, f: &Family) {
    let cases = [
        (
            "backend behind the ingress interface: XDP_TX",
            Flow::new(Protocol::Tcp, 44000, SVC_LOCAL, f.local_backend).egress(
                XDP_TX,
                MAC_LB,
                MAC_LOCAL_BE,
            ),
            Counter::VerdictTx,
        ),
        // The kernel resolves ARP/ND and forwards the rewritten packet; the MACs stay as they
        // came.
        (
            "unresolved neighbour: rewritten packet passed to the kernel",
            Flow::new(Protocol::Tcp, 44001, SVC_UNRESOLVED, f.unresolved_backend)
                .egress(XDP_PASS, MAC_CLIENT, MAC_LB),
            Counter::PassNoNeighbour,
        ),
    ];
    for (description, flow, counter) in cases {
        let syn = step(description, Dir::ToBackend, TCP_SYN, b"", counter);
        fx.run_flow(f, &flow, &[syn]);
    }
    for (packet, flags) in [("new flow", TCP_SYN), ("tracked flow", TCP_ACK)] {
        let unrouted = PacketBuilder::new()
            .ip(f.client, f.vip)
            .tcp(44002, SVC_UNROUTED, flags)
            .payload(b"data")
            .build();
        fx.passes_untouched(
            &format!(
                "{} no route to the backend ({packet}): passed as it arrived",
                f.name
            ),
            Side::Client,
            &unrouted,
            Counter::PassFibFailed,
        );
    }
}

/// Frames the program leaves to the kernel untouched, with the counter that says why.
fn passed_untouched(f: &Family) -> Vec<(&'static str, Side, Vec<u8>, Counter)> {
    let to = |dst: IpAddr| PacketBuilder::new().ip(f.client, dst);
    let mut truncated = to(f.vip).tcp(43002, SVC_TCP, TCP_SYN).build();
    truncated.truncate(truncated.len() - tcp::HLEN_MIN / 2);
    let (icmp, echo) = f.icmp;
    vec![
        (
            "to the VIP on a port with no service",
            Side::Client,
            to(f.vip).tcp(45000, 9999, TCP_SYN).build(),
            Counter::PassNoService,
        ),
        (
            "to another address on a service port",
            Side::Client,
            to(f.not_vip).tcp(45001, SVC_TCP, TCP_SYN).build(),
            Counter::PassNoService,
        ),
        (
            "UDP to a TCP-only service port",
            Side::Client,
            to(f.vip).udp(45002, SVC_TCP).build(),
            Counter::PassNoService,
        ),
        (
            "to a service without backends",
            Side::Client,
            to(f.vip).tcp(45003, SVC_EMPTY, TCP_SYN).build(),
            Counter::PassNoBackend,
        ),
        (
            "to a TCP service whose backends are all of the other family",
            Side::Client,
            to(f.vip).tcp(45004, f.other_family_port, TCP_SYN).build(),
            Counter::PassNoBackend,
        ),
        (
            "truncated TCP header to a service",
            Side::Client,
            truncated,
            Counter::PassBadL4,
        ),
        (
            "ICMP echo to the VIP goes to the kernel",
            Side::Client,
            to(f.vip).l4_proto(icmp).payload(&echo).build(),
            Counter::PassNotTcpUdp,
        ),
        (
            "packet to the SNAT address without a flow goes to the kernel",
            Side::Backend,
            PacketBuilder::new()
                .eth(MAC_BE1, MAC_LB_SW)
                .ip(f.be1, f.snat)
                .tcp(backend_port(SVC_TCP), 39999, TCP_ACK)
                .build(),
            Counter::PassNoService,
        ),
    ]
}

/// Maglev spreads flows; an established flow keeps its backend when the set changes; a dead
/// backend's flows are re-balanced.
fn v4_spread_and_backend_change(fx: &mut Fixtures<'_>) {
    let port = backend_port(SVC_V4_PAIR);
    let mac_of = |ip: IpAddr| if ip == V4.be1 { MAC_BE1 } else { MAC_BE2 };
    // A packet of the client port's flow reaches one of the pair, as the pair's MAC.
    let send = |fx: &mut Fixtures<'_>, name: &str, client_port: u16, flags: u8, counter| {
        let input = PacketBuilder::new()
            .ip(V4.client, V4.vip)
            .tcp(client_port, SVC_V4_PAIR, flags)
            .build();
        let p = fx.check(name, Side::Client, &input, XDP_REDIRECT, counter, |p| {
            PacketBuilder::new()
                .eth(MAC_LB_SW, mac_of(p.dst))
                .ip(V4.snat, p.dst)
                .ttl(63)
                .tcp(snat_port_ok(p), port, flags)
                .build()
        });
        p.dst
    };
    let mut seen = BTreeSet::new();
    for i in 0..24u16 {
        seen.insert(send(
            fx,
            "v4 SYN to a two-backend service",
            41000 + i,
            TCP_SYN,
            Counter::FlowNew,
        ));
    }
    assert_eq!(seen.len(), 2, "24 flows all went to {seen:?}");
    let kept = send(
        fx,
        "v4 first flow, established",
        41000,
        TCP_ACK,
        Counter::FlowToBackend,
    );
    let other = if kept == V4.be1 { BE2 } else { V4.be1 };

    // Remove the first flow's backend: it drains (established flows stay), new flows avoid it.
    fx.dp
        .apply(&[L4Change::Upsert(service(
            SVC_V4_PAIR,
            Protocol::Tcp,
            &[other],
        ))])
        .unwrap();
    let draining = send(
        fx,
        "established flow keeps its removed (draining) backend",
        41000,
        TCP_ACK,
        Counter::FlowToBackend,
    );
    assert_eq!(draining, kept);
    for i in 0..8u16 {
        let to = send(
            fx,
            "new flow after the change uses the new set only",
            42000 + i,
            TCP_SYN,
            Counter::FlowNew,
        );
        assert_eq!(to, other);
    }

    // Drain timeout (0 here) over: the backend is dead; its flow is forgotten. A stray segment
    // of it opens nothing (only a SYN does): the kernel answers it with a RST; the client's
    // next SYN on that port goes to the live backend.
    fx.dp.expire_drained_backends().unwrap();
    let ack = PacketBuilder::new()
        .ip(V4.client, V4.vip)
        .tcp(41000, SVC_V4_PAIR, TCP_ACK)
        .build();
    fx.passes_untouched(
        "segment of a dead backend's flow: forgotten, left to the kernel",
        Side::Client,
        &ack,
        Counter::FlowBackendDead,
    );
    let rebalanced = send(
        fx,
        "new SYN on a dead backend's flow goes to a live backend",
        41000,
        TCP_SYN,
        Counter::FlowNew,
    );
    assert_eq!(rebalanced, other);
}

/// IPv4 header variants: options, fragments, and a UDP datagram without a checksum.
fn v4_only(fx: &mut Fixtures<'_>) {
    let opts = [0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00];
    let syn = PacketBuilder::new()
        .ip(V4.client, V4.vip)
        .ipv4_options(&opts)
        .tcp(43000, SVC_TCP, TCP_SYN)
        .build();
    fx.check(
        "v4 with IP options: the TCP header is found after them",
        Side::Client,
        &syn,
        XDP_REDIRECT,
        Counter::FlowNew,
        |p| {
            PacketBuilder::new()
                .eth(MAC_LB_SW, MAC_BE1)
                .ip(V4.snat, V4.be1)
                .ttl(63)
                .ipv4_options(&opts)
                .tcp(snat_port_ok(p), backend_port(SVC_TCP), TCP_SYN)
                .build()
        },
    );
    let frag = PacketBuilder::new()
        .ip(V4.client, V4.vip)
        .ipv4_fragment(true, 0)
        .tcp(43001, SVC_TCP, TCP_SYN)
        .build();
    fx.passes_untouched(
        "v4 fragment to a service",
        Side::Client,
        &frag,
        Counter::PassFragment,
    );

    // A zero UDP checksum means "none" in IPv4 and must stay zero.
    let csum = eth::HLEN + ipv4::HLEN_MIN + udp::CSUM;
    let without_checksum = |mut frame: Vec<u8>| {
        frame[csum..csum + 2].fill(0);
        frame
    };
    let zero = without_checksum(
        PacketBuilder::new()
            .ip(V4.client, V4.vip)
            .udp(5001, SVC_UDP)
            .payload(b"q0")
            .build(),
    );
    let before = fx.counters();
    let (v, out) = run(fx.dp.program(), fx.lab.cli_ifindex, &zero);
    assert_eq!(v, XDP_REDIRECT);
    assert_eq!(fx.counters().since(&before).get(Counter::FlowNew), 1);
    let p = packet::parse(&out).unwrap();
    let want = without_checksum(
        PacketBuilder::new()
            .eth(MAC_LB_SW, MAC_BE1)
            .ip(V4.snat, V4.be1)
            .ttl(63)
            .udp(p.sport, backend_port(SVC_UDP))
            .payload(b"q0")
            .build(),
    );
    assert_eq!(out, want, "v4 UDP without checksum");
    fx.ran += 1;
}

fn v6_only(fx: &mut Fixtures<'_>) {
    let ext = PacketBuilder::new()
        .ip(V6.client, V6.vip)
        .ipv6_next_header(60)
        .payload(&[6, 0, 0, 0, 0, 0, 0, 0])
        .build();
    fx.passes_untouched(
        "v6 with an extension header is left to the kernel",
        Side::Client,
        &ext,
        Counter::PassIpv6ExtHeader,
    );
}

/// With one SNAT port, a second flow to the same backend has nowhere to go: dropped, counted.
fn snat_exhaustion(lab: &Lab) {
    lab.lb
        .enter(|| {
            let dp = lab.dataplane(config((40000, 40000)), &tcp_service_on_be1());
            let syn = |client_port| {
                PacketBuilder::new()
                    .ip(V4.client, V4.vip)
                    .tcp(client_port, SVC_TCP, TCP_SYN)
                    .build()
            };
            let (v, out) = run(dp.program(), lab.cli_ifindex, &syn(46000));
            assert_eq!(v, XDP_REDIRECT);
            assert_eq!(packet::parse(&out).unwrap().sport, 40000);
            let before = dp.program().counters().unwrap();
            let (v, _) = run(dp.program(), lab.cli_ifindex, &syn(46001));
            assert_eq!(v, XDP_DROP, "second flow with an exhausted SNAT range");
            let d = dp.program().counters().unwrap().since(&before);
            assert_eq!(d.get(Counter::DropSnatExhausted), 1);
            assert_eq!(
                d.get(Counter::SnatPortCollision),
                1,
                "the one port was tried once"
            );
            // The first flow still works.
            let ack = PacketBuilder::new()
                .ip(V4.client, V4.vip)
                .tcp(46000, SVC_TCP, TCP_ACK)
                .build();
            let (v, _) = run(dp.program(), lab.cli_ifindex, &ack);
            assert_eq!(v, XDP_REDIRECT);
        })
        .unwrap();
}

/// The sweeper forgets idle flows and the flows of dead backends, and frees the ids of dead
/// backends; the program then treats their packets as new.
#[test]
fn conntrack_sweeper() {
    if !require_netns_and_bpf("conntrack_sweeper") {
        return;
    }
    let lab = lab();
    lab.lb
        .enter(|| {
            let config = XdpL4Config {
                timeouts: FlowTimeouts {
                    udp: Duration::ZERO,
                    ..FlowTimeouts::default()
                },
                ..config((40000, 59999))
            };
            let tcp_service = service(SVC_TCP, Protocol::Tcp, &[V4.be1]);
            let udp_service = service(SVC_UDP, Protocol::Udp, &[V4.be1]);
            let dp = lab.dataplane(
                config,
                &[
                    L4Change::Upsert(tcp_service.clone()),
                    L4Change::Upsert(udp_service),
                ],
            );
            let shared = Arc::new(Mutex::new(dp));
            let mut sweeper = ConntrackSweeper::new(shared.clone()).unwrap();
            let send = |frame: &[u8]| {
                let dp = shared.lock().unwrap();
                let before = dp.program().counters().unwrap();
                let (verdict, _) = run(dp.program(), lab.cli_ifindex, frame);
                (verdict, dp.program().counters().unwrap().since(&before))
            };
            let entries = || shared.lock().unwrap().conntrack_entries().unwrap();
            let tcp = |flags| {
                PacketBuilder::new()
                    .ip(V4.client, V4.vip)
                    .tcp(40001, SVC_TCP, flags)
                    .build()
            };
            let udp = PacketBuilder::new()
                .ip(V4.client, V4.vip)
                .udp(5000, SVC_UDP)
                .build();
            assert_eq!(send(&tcp(TCP_SYN)).1.get(Counter::FlowNew), 1);
            assert_eq!(send(&udp).1.get(Counter::FlowNew), 1);
            assert_eq!(entries(), 4, "two flows, two directions each");
            // Each flow holds one SNAT port towards its backend, of one address × 20,000.
            let occupancy = shared.lock().unwrap().snat_occupancy().unwrap();
            for svc in [SVC_TCP, SVC_UDP] {
                let be = SocketAddr::new(V4.be1, backend_port(svc));
                let o = occupancy.iter().find(|o| o.backend == be);
                assert_eq!(
                    o.map(|o| (o.used, o.capacity)),
                    Some((1, 20_000)),
                    "{occupancy:?}"
                );
            }

            // UDP flows time out at once here; the TCP flow is far from its timeout.
            assert_eq!(sweeper.sweep().unwrap(), 2);
            assert_eq!(entries(), 2);
            // What the admin API shows: flows by state as the sweep found them, counters.
            let snapshot = shared.lock().unwrap().snapshot().unwrap();
            assert_eq!(snapshot.conntrack.syn_sent, 1, "{:?}", snapshot.conntrack);
            assert_eq!(snapshot.conntrack.total(), 1);
            let occupancy = (snapshot.conntrack_entries, snapshot.conntrack_capacity);
            assert_eq!(occupancy, (2, mlb_common::consts::CT_MAX_ENTRIES));
            assert_eq!(snapshot.counters["flow_new"], 2);
            assert_eq!(
                snapshot.backends[&SocketAddr::new(V4.be1, backend_port(SVC_TCP))].new_flows,
                1
            );
            assert_eq!(send(&udp).1.get(Counter::FlowNew), 1, "UDP flow forgotten");
            assert_eq!(send(&tcp(TCP_ACK)).1.get(Counter::FlowToBackend), 1);

            // The TCP backend leaves; the drain timeout is 0: the next sweep declares it dead,
            // forgets its flow, and frees its id (the UDP service still uses the address's
            // other port).
            let backend = SocketAddr::new(V4.be1, backend_port(SVC_TCP));
            shared
                .lock()
                .unwrap()
                .apply(&[L4Change::Upsert(L4Service {
                    backends: Vec::new(),
                    ..tcp_service
                })])
                .unwrap();
            assert_eq!(
                sweeper.sweep().unwrap(),
                4,
                "the TCP flow and the new UDP flow"
            );
            assert_eq!(entries(), 0);
            let stats = shared.lock().unwrap().backend_stats().unwrap();
            assert!(
                !stats.contains_key(&backend),
                "dead backend still holds an id"
            );
            assert!(stats.contains_key(&SocketAddr::new(V4.be1, backend_port(SVC_UDP))));
            let (verdict, delta) = send(&tcp(TCP_ACK));
            assert_eq!(verdict, XDP_PASS);
            assert_eq!(delta.get(Counter::PassTcpNotSyn), 1, "flow forgotten");
            assert_eq!(delta.get(Counter::FlowBackendDead), 0);
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
            let dp = lab.dataplane(config((40000, 59999)), &tcp_service_on_be1());
            // Create the flow once so the timed runs measure the established path.
            let syn = PacketBuilder::new()
                .ip(V4.client, V4.vip)
                .tcp(47000, SVC_TCP, TCP_SYN)
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
                        .ip(V4.client, V4.vip)
                        .tcp(47001, 9999, TCP_ACK)
                        .build(),
                ),
                (
                    "established TCP client -> backend (conntrack hit, NAT, FIB, redirect)",
                    lab.cli_ifindex,
                    PacketBuilder::new()
                        .ip(V4.client, V4.vip)
                        .tcp(47000, SVC_TCP, TCP_ACK)
                        .payload(&[0; 64])
                        .build(),
                ),
                (
                    "established TCP backend -> client (reply NAT, FIB, redirect)",
                    lab.sw_ifindex,
                    PacketBuilder::new()
                        .eth(MAC_BE1, MAC_LB_SW)
                        .ip(V4.be1, V4.snat)
                        .tcp(backend_port(SVC_TCP), snat, TCP_ACK)
                        .payload(&[0; 64])
                        .build(),
                ),
            ];
            let mut rows = Vec::new();
            for (name, ingress, frame) in cases {
                let ctx = xdp_md(&frame, ingress);
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

/// One frame through a dataplane: verdict, output, counter deltas.
fn send(dp: &XdpL4, lab: &Lab, from: Side, frame: &[u8]) -> (u32, Vec<u8>, Counters) {
    let before = dp.program().counters().unwrap();
    let (verdict, out) = run(dp.program(), lab.ifindex(from), frame);
    (
        verdict,
        out,
        dp.program().counters().unwrap().since(&before),
    )
}

/// Connection churn: the TCP state machine, a closed flow's SNAT port serving the next flow at
/// once, a SYN reopening a closed 5-tuple, half flows never used, only SYNs opening flows,
/// several SNAT addresses multiplying the port space, exhaustion counted per backend.
#[test]
fn churn() {
    if !require_netns_and_bpf("churn") {
        return;
    }
    let lab = lab();
    lab.lb
        .enter(|| {
            let snat2 = Ipv4Addr::new(198, 18, 2, 2);
            let mut config = config((40000, 40000));
            // TIME_WAIT over at once; CLOSED (after a RST) lasts its default 2 s.
            config.timeouts.tcp_time_wait = Duration::ZERO;
            config.snat_v4.push(snat2);
            let dp = lab.dataplane(config, &tcp_service_on_be1());
            let client = |port: u16, flags: u8| {
                PacketBuilder::new()
                    .ip(V4.client, V4.vip)
                    .tcp(port, SVC_TCP, flags)
                    .build()
            };
            let backend = |snat: IpAddr, port: u16, flags: u8| {
                PacketBuilder::new()
                    .eth(MAC_BE1, MAC_LB_SW)
                    .ip(V4.be1, snat)
                    .tcp(backend_port(SVC_TCP), port, flags)
                    .build()
            };
            let send = |from, frame: &[u8]| send(&dp, &lab, from, frame);

            // Only a SYN opens a flow.
            let (v, out, d) = send(Side::Client, &client(46000, TCP_ACK));
            assert_eq!((v, d.get(Counter::PassTcpNotSyn)), (XDP_PASS, 1));
            assert_eq!(out, client(46000, TCP_ACK), "passed untouched");

            // Two SNAT addresses with one port each: two flows, the third is dropped.
            let mut sources = Vec::new();
            for port in [46001, 46002] {
                let (v, out, d) = send(Side::Client, &client(port, TCP_SYN));
                assert_eq!((v, d.get(Counter::FlowNew)), (XDP_REDIRECT, 1), "{port}");
                let p = packet::parse(&out).unwrap();
                assert!(p.checksums_ok);
                sources.push((p.src, p.sport));
            }
            sources.sort();
            assert_eq!(sources, [(V4.snat, 40000), (IpAddr::V4(snat2), 40000)]);
            let (v, _, d) = send(Side::Client, &client(46003, TCP_SYN));
            assert_eq!((v, d.get(Counter::DropSnatExhausted)), (XDP_DROP, 1));
            let stats = dp.backend_stats().unwrap();
            let be = SocketAddr::new(V4.be1, backend_port(SVC_TCP));
            assert_eq!(stats[&be].snat_exhausted, 1, "exhaustion named per backend");

            // The first flow goes through its states and closes with FINs from both sides.
            let (snat, port) = sources[0];
            // (The last ACK is translated while TIME_WAIT lasts: zero here, see TCP_CONNECTION.)
            let steps: [(Side, Vec<u8>, Counter); 4] = [
                (
                    Side::Backend,
                    backend(snat, port, TCP_SYN | TCP_ACK),
                    Counter::CtSynRecv,
                ),
                (Side::Client, client(46001, TCP_ACK), Counter::CtEstablished),
                (
                    Side::Backend,
                    backend(snat, port, TCP_FIN | TCP_ACK),
                    Counter::CtCloseWait,
                ),
                (
                    Side::Client,
                    client(46001, TCP_FIN | TCP_ACK),
                    Counter::CtTimeWait,
                ),
            ];
            // Which client port got the first source depends on the cursor; find it.
            let (v, out, _) = send(Side::Backend, &steps[0].1);
            assert_eq!(v, XDP_REDIRECT);
            let owner = packet::parse(&out).unwrap().dport;
            let mut steps = steps;
            if owner != 46001 {
                for step in &mut steps {
                    if matches!(step.0, Side::Client) {
                        let flags = step.1[eth::HLEN + ipv4::HLEN_MIN + tcp::FLAGS];
                        step.1 = client(owner, flags);
                    }
                }
            }
            for (i, (from, frame, counter)) in steps.iter().enumerate().skip(1) {
                let (v, out, d) = send(*from, frame);
                assert_ne!(v, XDP_DROP, "step {i}");
                assert_ne!(v, XDP_PASS, "step {i}");
                assert!(packet::parse(&out).unwrap().checksums_ok, "step {i}");
                assert_eq!(d.get(*counter), 1, "step {i}: {counter:?}: {d:?}");
            }

            // TIME_WAIT is over at once here: a new client takes the closed flow's port...
            let (v, out, d) = send(Side::Client, &client(46004, TCP_SYN));
            assert_eq!(v, XDP_REDIRECT, "{d:?}");
            assert_eq!(d.get(Counter::SnatPortReclaimed), 1);
            let p = packet::parse(&out).unwrap();
            assert_eq!((p.src, p.sport), (snat, port), "the closed flow's port");
            // ...and the old flow went whole: its client half opens nothing any more.
            let (v, _, d) = send(Side::Client, &client(owner, TCP_ACK));
            assert_eq!(v, XDP_PASS);
            assert_eq!(d.get(Counter::PassTcpNotSyn), 1, "{d:?}");
            // Replies on that port now reach the new client only.
            let (v, out, _) = send(Side::Backend, &backend(snat, port, TCP_SYN | TCP_ACK));
            assert_eq!(v, XDP_REDIRECT);
            assert_eq!(packet::parse(&out).unwrap().dport, 46004);

            // A RST closes; a new SYN on the same 5-tuple replaces the closed flow.
            let (_, _, d) = send(Side::Client, &client(46004, TCP_RST));
            assert_eq!(d.get(Counter::CtClosed), 1);
            let (v, _, d) = send(Side::Client, &client(46004, TCP_SYN));
            assert_eq!(v, XDP_REDIRECT);
            assert_eq!(
                (d.get(Counter::FlowReopened), d.get(Counter::FlowNew)),
                (1, 1),
                "{d:?}"
            );
        })
        .unwrap();
}

/// The flow hash is keyed: the same flows land on the same backends under one secret, on
/// others under another.
#[test]
fn hash_secret_decides_backends() {
    if !require_netns_and_bpf("hash_secret_decides_backends") {
        return;
    }
    let lab = lab();
    lab.lb
        .enter(|| {
            let backends_under = |secret: &str| -> Vec<IpAddr> {
                let mut config = config((40000, 59999));
                config.hash_secret = secret.parse().unwrap();
                let dp = lab.dataplane(
                    config,
                    &[L4Change::Upsert(service(
                        SVC_V4_PAIR,
                        Protocol::Tcp,
                        &[V4.be1, BE2],
                    ))],
                );
                (0..32u16)
                    .map(|i| {
                        let syn = PacketBuilder::new()
                            .ip(V4.client, V4.vip)
                            .tcp(47000 + i, SVC_V4_PAIR, TCP_SYN)
                            .build();
                        let (v, out, _) = send(&dp, &lab, Side::Client, &syn);
                        assert_eq!(v, XDP_REDIRECT);
                        packet::parse(&out).unwrap().dst
                    })
                    .collect()
            };
            let a = backends_under("0123456789abcdef");
            assert_eq!(a, backends_under("0123456789abcdef"), "same secret");
            assert_ne!(a, backends_under("fedcba9876543210"), "another secret");
        })
        .unwrap();
}

/// The conntrack map of a loaded program, through a handle of the test's own (found among the
/// program's maps by name), so that a fixture can do what LRU eviction does: drop one entry.
fn conntrack_of(
    dp: &XdpL4,
) -> aya::maps::HashMap<aya::maps::MapData, mlb_common::maps::FlowKey, mlb_common::maps::NatEntry> {
    let info = dp.program().program().unwrap().info().unwrap();
    let id = info
        .map_ids()
        .unwrap()
        .unwrap()
        .into_iter()
        .find(|id| {
            let info = aya::maps::MapInfo::from_id(*id).unwrap();
            info.name_as_str() == Some(mlb_common::maps::CONNTRACK)
        })
        .unwrap();
    let data = aya::maps::MapData::from_id(id).unwrap();
    aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(data)).unwrap()
}

/// The conntrack key of an IPv4 TCP frame: its flow direction as the program keys it.
fn v4_tcp_key(frame: &[u8]) -> mlb_common::maps::FlowKey {
    let p = packet::parse(frame).unwrap();
    let addr = |ip: IpAddr| match ip {
        IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
        IpAddr::V6(_) => unreachable!(),
    };
    mlb_common::maps::FlowKey {
        src: addr(p.src),
        dst: addr(p.dst),
        sport: p.sport.to_be(),
        dport: p.dport.to_be(),
        proto: mlb_common::net::IPPROTO_TCP,
        family: mlb_common::maps::FAMILY_V4,
        _pad: [0; 2],
    }
}

/// A client segment of `SVC_TCP` from `port` with a sequence number and a TCP timestamp.
fn client_seg(port: u16, flags: u8, seq: u32, tsval: u32) -> Vec<u8> {
    PacketBuilder::new()
        .ip(V4.client, V4.vip)
        .tcp_seq(
            port,
            SVC_TCP,
            flags,
            seq,
            if flags & TCP_ACK != 0 { 1 } else { 0 },
        )
        .tcp_timestamp(tsval)
        .build()
}

/// A backend segment of `SVC_TCP` to SNAT port `port`.
fn backend_seg(port: u16, flags: u8) -> Vec<u8> {
    PacketBuilder::new()
        .eth(MAC_BE1, MAC_LB_SW)
        .ip(V4.be1, V4.snat)
        .tcp(backend_port(SVC_TCP), port, flags)
        .build()
}

/// The SNAT port a forwarded client packet left with.
fn snat_port_of(out: &[u8]) -> u16 {
    packet::parse(out).unwrap().sport
}

/// Under churn a SNAT port is reused for another client while the backend, which closed
/// first, still holds the old 4-tuple in TIME_WAIT: a SYN whose timestamp is older than the
/// one TIME_WAIT saw last would be refused (PAWS) and cost the client a retransmission. The
/// search passes such a port over and takes it for a SYN the backend accepts; when only
/// refused ports are left, the first serves anyway (no drop).
#[test]
fn snat_reuse_respects_the_backends_time_wait() {
    if !require_netns_and_bpf("snat_reuse_respects_the_backends_time_wait") {
        return;
    }
    let lab = lab();
    lab.lb
        .enter(|| {
            let config = forgetting_closed_flows((40000, 40001));
            let dp = lab.dataplane(config, &tcp_service_on_be1());
            let send = |from, frame: &[u8]| send(&dp, &lab, from, frame);
            let open = |port: u16, seq: u32, tsval: u32| {
                let (v, out, d) = send(Side::Client, &client_seg(port, TCP_SYN, seq, tsval));
                assert_eq!(v, XDP_REDIRECT, "{d:?}");
                (snat_port_of(&out), d)
            };

            // Flow A (port 40000) is closed by the backend first: TIME_WAIT there, expecting
            // sequence 5001 and a timestamp newer than 600.
            let (a, _) = open(46001, 1000, 500);
            assert_eq!(a, 40000);
            send(Side::Backend, &backend_seg(a, TCP_SYN | TCP_ACK));
            send(Side::Client, &client_seg(46001, TCP_ACK, 1001, 510));
            send(Side::Backend, &backend_seg(a, TCP_FIN | TCP_ACK));
            let (_, _, d) = send(
                Side::Client,
                &client_seg(46001, TCP_FIN | TCP_ACK, 5000, 600),
            );
            assert_eq!(d.get(Counter::CtTimeWait), 1);
            // Flow B (port 40001) ends with a RST: no TIME_WAIT at the backend.
            let (b, _) = open(46002, 1000, 500);
            assert_eq!(b, 40001);
            send(Side::Client, &client_seg(46002, TCP_RST, 1001, 0));

            // C's timestamp is older than A's last: A's port is passed over, B's serves.
            let (c, d) = open(46003, 9000, 550);
            assert_eq!(c, 40001, "{d:?}");
            assert_eq!(d.get(Counter::SnatPortTimeWait), 1);
            // D's is newer: A's port serves.
            send(Side::Client, &client_seg(46003, TCP_RST, 9001, 0));
            let (d_port, d) = open(46004, 10, 700);
            assert_eq!(d_port, 40000, "{d:?}");
            assert_eq!(d.get(Counter::SnatPortTimeWait), 0);

            // Only refused ports left: the first serves anyway, nothing dropped. D closes like A.
            send(Side::Backend, &backend_seg(d_port, TCP_SYN | TCP_ACK));
            send(Side::Client, &client_seg(46004, TCP_ACK, 11, 710));
            send(Side::Backend, &backend_seg(d_port, TCP_FIN | TCP_ACK));
            send(Side::Client, &client_seg(46004, TCP_FIN | TCP_ACK, 12, 720));
            // (40001: C's flow, reset above; 40000: D's, now in the backend's TIME_WAIT.)
            let (e, d) = open(46005, 0, 100);
            assert_eq!(d.get(Counter::DropSnatExhausted), 0);
            assert_eq!(e, 40001, "a port without TIME_WAIT first: {d:?}");
            let (f, d) = open(46006, 0, 100);
            assert_eq!((f, d.get(Counter::SnatPortTimeWait)), (40000, 1), "{d:?}");
        })
        .unwrap();
}

/// With the default timeouts (a closed flow is translated for 2 s), a new flow's SYN takes a
/// closed flow's SNAT port after a short grace instead of waiting those 2 s: under churn the
/// ports of a busy backend come round sooner than that. A live flow's port is never taken.
#[test]
fn a_closed_flows_port_serves_a_new_flow_after_a_grace() {
    if !require_netns_and_bpf("a_closed_flows_port_serves_a_new_flow_after_a_grace") {
        return;
    }
    let lab = lab();
    lab.lb
        .enter(|| {
            let dp = lab.dataplane(config((40000, 40000)), &tcp_service_on_be1());
            let send = |from, frame: &[u8]| send(&dp, &lab, from, frame);
            let open = |client_port: u16| {
                let (v, out, d) = send(Side::Client, &client_seg(client_port, TCP_SYN, 1000, 500));
                assert_eq!((v, snat_port_of(&out)), (XDP_REDIRECT, 40000), "{d:?}");
                send(Side::Backend, &backend_seg(40000, TCP_SYN | TCP_ACK));
                send(Side::Client, &client_seg(client_port, TCP_ACK, 1001, 510));
            };
            let grace = Duration::from_nanos(mlb_common::ct::CLOSED_PORT_GRACE_NS);

            // Established on the only port: a second client finds none.
            open(46001);
            let (v, _, d) = send(Side::Client, &client_seg(46002, TCP_SYN, 1000, 500));
            assert_eq!(
                (v, d.get(Counter::DropSnatExhausted)),
                (XDP_DROP, 1),
                "{d:?}"
            );

            // Closed by a RST: after the grace (well within the 2-s timeout) the port serves.
            send(Side::Client, &client_seg(46001, TCP_RST, 1001, 0));
            std::thread::sleep(grace + Duration::from_millis(50));
            open(46002);

            // Closed by FINs, the client first and acknowledged (no TIME_WAIT at the backend).
            send(
                Side::Client,
                &client_seg(46002, TCP_FIN | TCP_ACK, 5000, 600),
            );
            let (_, _, d) = send(Side::Backend, &backend_fin(40000, 5001));
            assert_eq!(d.get(Counter::CtTimeWait), 1, "{d:?}");
            std::thread::sleep(grace + Duration::from_millis(50));
            let (v, out, d) = send(Side::Client, &client_seg(46003, TCP_SYN, 1000, 500));
            assert_eq!((v, snat_port_of(&out)), (XDP_REDIRECT, 40000), "{d:?}");
            assert_eq!(d.get(Counter::SnatPortReclaimed), 1, "{d:?}");
        })
        .unwrap();
}

/// The one service most fixtures use: `SVC_TCP` on be1.
fn tcp_service_on_be1() -> [L4Change; 1] {
    [L4Change::Upsert(service(SVC_TCP, Protocol::Tcp, &[V4.be1]))]
}

/// `config(snat_ports)` for a load balancer that forgets closed flows at once: only the
/// backend's TIME_WAIT (as the program recorded it) is left to decide a port's reuse.
fn forgetting_closed_flows(snat_ports: (u16, u16)) -> XdpL4Config {
    let mut config = config(snat_ports);
    config.timeouts.tcp_time_wait = Duration::ZERO;
    config.timeouts.tcp_closed = Duration::ZERO;
    config
}

/// A backend FIN acknowledging `ack` (SNAT port `port`).
fn backend_fin(port: u16, ack: u32) -> Vec<u8> {
    PacketBuilder::new()
        .eth(MAC_BE1, MAC_LB_SW)
        .ip(V4.be1, V4.snat)
        .tcp_seq(backend_port(SVC_TCP), port, TCP_FIN | TCP_ACK, 77, ack)
        .build()
}

/// FINs that cross (the client closes as soon as it has read the response, while the server
/// closes too: the backend's FIN does not acknowledge the client's) leave the backend in
/// TIME_WAIT (through CLOSING) as surely as a backend that closed first: the SNAT search must
/// pass that port over for an older SYN. A client that closed first and cleanly (the backend's
/// FIN acknowledges it) leaves no TIME_WAIT at the backend: its port serves any SYN.
#[test]
fn crossing_fins_leave_the_backend_in_time_wait() {
    if !require_netns_and_bpf("crossing_fins_leave_the_backend_in_time_wait") {
        return;
    }
    let lab = lab();
    lab.lb
        .enter(|| {
            let config = forgetting_closed_flows((40000, 40000));
            let dp = lab.dataplane(config, &tcp_service_on_be1());
            let send = |from, frame: &[u8]| send(&dp, &lab, from, frame);
            // One flow on the only port, closed by the client first (FIN seq 5000, timestamp
            // 600), then the backend's FIN acknowledging `backend_ack`; then a SYN with an
            // older timestamp: how many ports the search refused for the backend's TIME_WAIT.
            let refused_after_close = |client_port: u16, backend_ack: u32| {
                let (v, out, d) = send(Side::Client, &client_seg(client_port, TCP_SYN, 1000, 500));
                assert_eq!(v, XDP_REDIRECT, "{d:?}");
                let port = snat_port_of(&out);
                send(Side::Backend, &backend_seg(port, TCP_SYN | TCP_ACK));
                send(Side::Client, &client_seg(client_port, TCP_ACK, 1001, 510));
                send(
                    Side::Client,
                    &client_seg(client_port, TCP_FIN | TCP_ACK, 5000, 600),
                );
                let (_, _, d) = send(Side::Backend, &backend_fin(port, backend_ack));
                assert_eq!(d.get(Counter::CtTimeWait), 1, "{d:?}");
                let (v, _, d) = send(
                    Side::Client,
                    &client_seg(client_port + 1, TCP_SYN, 9000, 550),
                );
                assert_eq!(v, XDP_REDIRECT, "the only port serves anyway: {d:?}");
                d.get(Counter::SnatPortTimeWait)
            };
            // Crossed: the backend's FIN acknowledges only up to the client's data (1).
            assert_eq!(refused_after_close(46001, 1), 1);
            // Clean: it acknowledges the client's FIN (5001).
            send(Side::Client, &client_seg(46002, TCP_RST, 9001, 0));
            assert_eq!(refused_after_close(46010, 5001), 0);
        })
        .unwrap();
}

/// Both halves of a flow live and die together: when one is gone (as after an LRU eviction),
/// the other forwards nothing and is forgotten. And a SYN flood holds SNAT ports no longer
/// than the SYN timeout.
#[test]
fn a_half_flow_is_never_used_and_syn_floods_release_ports() {
    if !require_netns_and_bpf("a_half_flow_is_never_used_and_syn_floods_release_ports") {
        return;
    }
    let lab = lab();
    lab.lb
        .enter(|| {
            let mut config = config((40000, 40000));
            config.timeouts.tcp_syn = Duration::ZERO;
            let dp = lab.dataplane(config, &tcp_service_on_be1());
            let mut ct = conntrack_of(&dp);
            let send = |from, frame: &[u8]| send(&dp, &lab, from, frame);
            let client = |port: u16, flags: u8| client_seg(port, flags, 1, 1);
            let key_of = v4_tcp_key;

            // A SYN flood: each SYN takes the only port, and the next SYN (the SYN timeout is
            // zero here) finds it dead and takes it over: no drop.
            for port in [47001, 47002, 47003] {
                let (v, out, d) = send(Side::Client, &client(port, TCP_SYN));
                assert_eq!((v, snat_port_of(&out)), (XDP_REDIRECT, 40000), "{d:?}");
                assert_eq!(d.get(Counter::DropSnatExhausted), 0);
            }

            // A flow whose reply half is gone: its client packets are not forwarded.
            let (_, fwd, _) = send(Side::Client, &client(47010, TCP_SYN));
            let reply_key = key_of(&backend_seg(snat_port_of(&fwd), TCP_ACK));
            ct.remove(&reply_key).unwrap();
            let (v, _, d) = send(Side::Client, &client(47010, TCP_ACK));
            assert_eq!(v, XDP_PASS, "{d:?}");
            assert_eq!(d.get(Counter::FlowOrphan), 1, "{d:?}");
            assert!(
                ct.get(&key_of(&client(47010, TCP_ACK)), 0).is_err(),
                "half forgotten"
            );

            // A flow whose client half is gone: the backend's packets reach nobody.
            let (_, fwd, _) = send(Side::Client, &client(47011, TCP_SYN));
            let snat = snat_port_of(&fwd);
            ct.remove(&key_of(&client(47011, TCP_SYN))).unwrap();
            let (v, _, d) = send(Side::Backend, &backend_seg(snat, TCP_SYN | TCP_ACK));
            assert_eq!(v, XDP_PASS, "{d:?}");
            assert_eq!(d.get(Counter::FlowOrphan), 1, "{d:?}");
            let reply_key = key_of(&backend_seg(snat, TCP_ACK));
            assert!(ct.get(&reply_key, 0).is_err(), "half forgotten");
        })
        .unwrap();
}

/// A direct-server-return service: its backends listen on the service port itself (DSR leaves
/// the client's packet as it is).
fn dsr_service(port: u16, protocol: Protocol, backends: &[IpAddr]) -> L4Change {
    let mut svc = service(port, protocol, backends);
    for b in &mut svc.backends {
        b.addr.set_port(port);
        b.id = BackendId::from(b.addr.to_string());
    }
    L4Change::Upsert(svc)
}

/// The frame DSR must send for `input` (a client's frame, untagged) to `backend` behind
/// `lb-sw`: the backend's MAC, an outer header from the DSR source built here from scratch
/// (IPIP with its own checksum, or ip6ip6 with `flow_label`), then `input`'s IP packet as is.
fn encapsulated(
    input: &[u8],
    f: &Family,
    backend: IpAddr,
    backend_mac: [u8; 6],
    flow_label: u32,
) -> Vec<u8> {
    let inner = &input[eth::HLEN..];
    let len = u16::try_from(inner.len()).unwrap();
    let (ether_type, outer) = match (f.snat, backend) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let total = (len + 20).to_be_bytes();
            let mut h = vec![0x45, 0, total[0], total[1], 0, 0, 0, 0, 64, 4, 0, 0];
            h.extend(src.octets());
            h.extend(dst.octets());
            let sum = packet::checksum(&[&h]).to_be_bytes();
            h[ipv4::CSUM..ipv4::CSUM + 2].copy_from_slice(&sum);
            (0x0800u16, h)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut h = ((6u32 << 28) | flow_label).to_be_bytes().to_vec();
            h.extend(len.to_be_bytes());
            h.extend([41, 64]);
            h.extend(src.octets());
            h.extend(dst.octets());
            (0x86DD, h)
        }
        _ => panic!("{backend} is not of the family of {}", f.snat),
    };
    [
        &backend_mac[..],
        &MAC_LB_SW,
        &ether_type.to_be_bytes(),
        &outer,
        inner,
    ]
    .concat()
}

/// The backend (outer destination) of an encapsulated frame.
fn outer_dst(out: &[u8]) -> IpAddr {
    match out[eth::HLEN] >> 4 {
        4 => IpAddr::from(<[u8; 4]>::try_from(&out[eth::HLEN + 16..eth::HLEN + 20]).unwrap()),
        _ => IpAddr::from(<[u8; 16]>::try_from(&out[eth::HLEN + 24..eth::HLEN + 40]).unwrap()),
    }
}

fn backend_mac(backend: IpAddr) -> [u8; 6] {
    if backend == BE2 { MAC_BE2 } else { MAC_BE1 }
}

/// Direct server return: every packet to a service, SYN or not, leaves encapsulated to the
/// backend Maglev gives its 5-tuple (valid outer header, inner packet untouched, nothing
/// tracked), so a second program that never saw a flow's SYN (another instance of a fleet, fed
/// the flows' packets in another order) sends each flow to the same backend.
#[test]
fn dsr_encapsulates_to_the_maglev_backend() {
    if !require_netns_and_bpf("dsr_encapsulates_to_the_maglev_backend") {
        return;
    }
    let lab = lab();
    lab.lb
        .enter(|| {
            let dsr = XdpL4Config {
                forwarding: Forwarding::dsr_from(&[V4.snat, V6.snat]),
                ..config((40000, 59999))
            };
            let changes = [
                dsr_service(SVC_V4_PAIR, Protocol::Tcp, &[V4.be1, BE2]),
                dsr_service(SVC_TCP, Protocol::Tcp, &[V6.be1]),
                dsr_service(SVC_UDP, Protocol::Udp, &[V4.be1]),
                // A backend on another port than the service's cannot be reached by DSR.
                L4Change::Upsert(service(SVC_LOCAL, Protocol::Tcp, &[V4.be1])),
            ];
            let a = lab.dataplane(dsr.clone(), &changes);
            let flow = |i: u16, flags: u8| {
                PacketBuilder::new()
                    .ip(V4.client, V4.vip)
                    .tcp(47000 + i, SVC_V4_PAIR, flags)
                    .payload(if flags == TCP_SYN { b"" } else { b"data" })
                    .build()
            };
            let mut chosen = Vec::new();
            for i in 0..32 {
                let syn = flow(i, TCP_SYN);
                let (v, out, delta) = send(&a, &lab, Side::Client, &syn);
                assert_eq!(v, XDP_REDIRECT, "SYN #{i}: {delta:?}");
                assert_eq!(delta.get(Counter::DsrEncapsulated), 1, "{delta:?}");
                assert_eq!(
                    delta.get(Counter::FlowNew),
                    0,
                    "DSR tracks nothing: {delta:?}"
                );
                let backend = outer_dst(&out);
                assert_eq!(
                    out,
                    encapsulated(&syn, &V4, backend, backend_mac(backend), 0),
                    "SYN #{i}"
                );
                chosen.push(backend);
            }
            let spread: BTreeSet<IpAddr> = chosen.iter().copied().collect();
            assert_eq!(spread.len(), 2, "32 flows over both backends: {chosen:?}");

            // Another instance, the same tables: mid-flow segments, last flow first.
            let b = lab.dataplane(dsr.clone(), &changes);
            for i in (0..32u16).rev() {
                let ack = flow(i, TCP_ACK | TCP_PSH);
                let (v, out, _) = send(&b, &lab, Side::Client, &ack);
                assert_eq!(v, XDP_REDIRECT);
                let want = chosen[usize::from(i)];
                assert_eq!(
                    out,
                    encapsulated(&ack, &V4, want, backend_mac(want), 0),
                    "flow #{i} on the other instance"
                );
            }

            let udp = PacketBuilder::new()
                .ip(V4.client, V4.vip)
                .udp(5353, SVC_UDP)
                .payload(b"q")
                .build();
            let (v, out, _) = send(&a, &lab, Side::Client, &udp);
            assert_eq!(
                (v, out),
                (XDP_REDIRECT, encapsulated(&udp, &V4, V4.be1, MAC_BE1, 0)),
                "UDP"
            );

            let syn6 = PacketBuilder::new()
                .ip(V6.client, V6.vip)
                .tcp(47000, SVC_TCP, TCP_SYN)
                .build();
            let (v, out, _) = send(&a, &lab, Side::Client, &syn6);
            assert_eq!(v, XDP_REDIRECT, "IPv6");
            let label =
                u32::from_be_bytes(out[eth::HLEN..eth::HLEN + 4].try_into().unwrap()) & 0xF_FFFF;
            assert_eq!(
                out,
                encapsulated(&syn6, &V6, V6.be1, MAC_BE1, label),
                "ip6ip6"
            );

            let off_port = PacketBuilder::new()
                .ip(V4.client, V4.vip)
                .tcp(47000, SVC_LOCAL, TCP_SYN)
                .build();
            let (v, out, delta) = send(&a, &lab, Side::Client, &off_port);
            assert_eq!(
                (v, &out),
                (XDP_PASS, &off_port),
                "backend off the service port"
            );
            assert_eq!(delta.get(Counter::PassNoBackend), 1, "{delta:?}");
        })
        .unwrap();
}

/// The backend's half: `mlb_decap` (what `mlb backend-setup --decap xdp` attaches) gives back
/// exactly the client's packet from what DSR sent, IPv4 and IPv6, and passes anything else
/// untouched.
#[test]
fn decap_returns_the_clients_packet() {
    if !require_netns_and_bpf("decap_returns_the_clients_packet") {
        return;
    }
    let ebpf = mlb::backend_setup::xdp_decap::load().unwrap();
    let decap: &aya::programs::Xdp = ebpf
        .program(mlb::backend_setup::xdp_decap::DECAP_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    let through = |frame: &[u8]| -> (u32, Vec<u8>) {
        let mut out = vec![0u8; frame.len() + 64];
        let r = decap
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&xdp_md(frame, 1)),
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    };
    for f in FAMILIES {
        let client = PacketBuilder::new()
            .ip(f.client, f.vip)
            .tcp(47000, SVC_TCP, TCP_ACK)
            .payload(b"data")
            .build();
        let sent = encapsulated(&client, f, f.be1, MAC_BE1, 0x12345);
        let (v, out) = through(&sent);
        let mut want = client.clone();
        want[..2 * eth::ALEN].copy_from_slice(&sent[..2 * eth::ALEN]);
        assert_eq!((v, out), (XDP_PASS, want), "{}: decapsulated", f.name);
        assert_eq!(
            through(&client),
            (XDP_PASS, client.clone()),
            "{}: not ours",
            f.name
        );
    }
}
