//! The XDP program attached in native mode to a veth inside a network namespace sees real TCP
//! connections made by the kernel of another namespace, and counts them.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use mlb::dataplane::xdp::{AttachMode, XdpProgram};
use mlb_common::stats::Counter;
use mlb_tests::{
    netns::{Netns, VethEnd, veth},
    privileges::require_netns_and_bpf,
};

/// Client namespace ⇄ load-balancer namespace over one veth, with a TCP echo server in lb.
struct Pair {
    cli: Netns,
    lb: Netns,
}

fn pair() -> Pair {
    let cli = Netns::new("cli").unwrap();
    let lb = Netns::new("lb").unwrap();
    veth(
        &VethEnd {
            ns: &cli,
            name: "cli-lb",
            addrs: &["198.18.1.1/24", "fd00:198:18:1::1/64"],
        },
        &VethEnd {
            ns: &lb,
            name: "lb-cli",
            addrs: &["198.18.1.2/24", "fd00:198:18:1::2/64"],
        },
    )
    .unwrap();
    Pair { cli, lb }
}

/// Starts an echo server in `ns` on `addr`, serving `conns` connections, on its own thread.
fn echo_server(ns: &Netns, addr: SocketAddr, conns: usize) -> std::thread::JoinHandle<()> {
    let listener = ns.enter(move || TcpListener::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        for _ in 0..conns {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap();
            s.write_all(&buf[..n]).unwrap();
        }
    })
}

/// Makes `conns` connections from `ns` to `addr`, each echoing one message.
fn connect_many(ns: &Netns, addr: SocketAddr, conns: usize) {
    ns.enter(move || {
        for i in 0..conns {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let msg = format!("hello {i}");
            s.write_all(msg.as_bytes()).unwrap();
            let mut buf = vec![0u8; msg.len()];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(buf, msg.as_bytes());
        }
    })
    .unwrap();
}

fn attach(p: &Pair) -> XdpProgram {
    p.lb.enter(|| {
        let mut program = XdpProgram::load().expect("load");
        program
            .attach("lb-cli", AttachMode::Native)
            .expect("native XDP attach on veth");
        program
    })
    .unwrap()
}

#[test]
fn attached_program_counts_real_tcp_connections() {
    if !require_netns_and_bpf("attached_program_counts_real_tcp_connections") {
        return;
    }
    const CONNS: usize = 50;
    let p = pair();
    let program = attach(&p);
    let before = program.counters().unwrap();
    let v4: SocketAddr = "198.18.1.2:8080".parse().unwrap();
    let server = echo_server(&p.lb, v4, CONNS);
    connect_many(&p.cli, v4, CONNS);
    server.join().unwrap();
    let v6: SocketAddr = "[fd00:198:18:1::2]:8080".parse().unwrap();
    let server = echo_server(&p.lb, v6, CONNS);
    connect_many(&p.cli, v6, CONNS);
    server.join().unwrap();

    let d = program.counters().unwrap().since(&before);
    // Each connection sends at least SYN, ACK, data, FIN/ACK towards lb: ≥ 4 packets.
    let min = u64::try_from(CONNS * 4).unwrap();
    assert!(
        d.get(Counter::ParsedTcp4) >= min,
        "IPv4 TCP packets seen: {d:?}"
    );
    assert!(
        d.get(Counter::ParsedTcp6) >= min,
        "IPv6 TCP packets seen: {d:?}"
    );
    assert_eq!(
        d.get(Counter::Total),
        d.get(Counter::VerdictPass),
        "every packet passed: {d:?}"
    );
    assert_eq!(d.get(Counter::VerdictAborted), 0);
}

/// The same traffic with the program detached moves no counter: the test above really
/// depends on the program being attached.
#[test]
fn detached_program_sees_nothing() {
    if !require_netns_and_bpf("detached_program_sees_nothing") {
        return;
    }
    let p = pair();
    let mut program = attach(&p);
    let addr: SocketAddr = "198.18.1.2:8081".parse().unwrap();
    let server = echo_server(&p.lb, addr, 10);
    connect_many(&p.cli, addr, 10);
    server.join().unwrap();
    assert!(program.counters().unwrap().get(Counter::ParsedTcp4) > 0);

    program.detach("lb-cli").unwrap();
    let before = program.counters().unwrap();
    let server = echo_server(&p.lb, addr, 10);
    connect_many(&p.cli, addr, 10);
    server.join().unwrap();
    assert_eq!(
        program
            .counters()
            .unwrap()
            .since(&before)
            .get(Counter::Total),
        0
    );
}
