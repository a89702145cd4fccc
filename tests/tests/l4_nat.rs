//! End to end through `mlb run --static-config`: real TCP and UDP clients in one network
//! namespace, the load balancer in another, backends behind a bridge (see [`mlb_tests::l4_lab`]).
//!
//! Each scenario runs against both dataplanes with the same body: `<scenario>::xdp` (the XDP
//! program on lb's two interfaces, full NAT in the kernel) and `<scenario>::userspace` (the tokio
//! proxy bound to the VIPs). Scenarios that only make sense for one dataplane say so.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use mlb_common::stats::Counter;
use mlb_tests::{
    l4_lab::{
        Agent, Conn, Dataplane, IO_TIMEOUT, L4Lab, RELOAD_REFUSED, SNAT_PORTS, SNAT_V4, SNAT_V6,
        VIP_V4, VIP_V6, backend_v4, backend_v6,
    },
    privileges::require_netns_and_bpf,
};

/// Runs `body` for one dataplane, unless the process lacks the privileges (then says SKIPPED).
fn run(test: &str, dataplane: Dataplane, body: fn(Dataplane) -> Result<()>) {
    if !require_netns_and_bpf(test) {
        return;
    }
    if let Err(e) = body(dataplane) {
        panic!("{test} ({dataplane:?}): {e:#}");
    }
}

/// Declares `<scenario>::xdp` and `<scenario>::userspace`, both running the function `scenario`.
macro_rules! on_both_dataplanes {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;
            #[test]
            fn xdp() {
                run(concat!(stringify!($scenario), "::xdp"), Dataplane::Xdp, super::$scenario);
            }
            #[test]
            fn userspace() {
                run(
                    concat!(stringify!($scenario), "::userspace"),
                    Dataplane::Userspace,
                    super::$scenario,
                );
            }
        }
    )*};
}

on_both_dataplanes!(
    tcp_connections_spread_over_backends,
    ipv6_connections_spread_over_backends,
    backend_change_keeps_open_connections,
    udp_requests_answered_from_the_vip,
    bad_reload_keeps_last_good_services,
    first_packets_get_through_without_neighbour_entries,
    balance_source_and_allowed_networks,
);

/// A `[[service]]` of the static config.
fn service(name: &str, port: u16, protocol: &str, backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[[service]]\nname = \"{name}\"\nport = {port}\nprotocol = \"{protocol}\"\nbackends = [{}]\n\n",
        list.join(", ")
    )
}

/// The static config of the TCP scenarios: service "web" on port 8080 with these backends.
fn web(backends: &[SocketAddr]) -> String {
    service("web", 8080, "tcp", backends)
}

/// A lab with TCP backends be1:8080 and be2:8080 and an agent serving them as "web" on the IPv4
/// VIP, port 8080.
fn web_lab(dataplane: Dataplane, extra_args: &[&str]) -> Result<(L4Lab, Agent)> {
    let lab = L4Lab::new()?;
    lab.tcp_backend(1, 8080)?;
    lab.tcp_backend(2, 8080)?;
    let agent = lab.start_agent(dataplane, &web(&[v4(1, 8080), v4(2, 8080)]), extra_args)?;
    Ok((lab, agent))
}

fn v4(n: usize, port: u16) -> SocketAddr {
    SocketAddr::new(backend_v4(n), port)
}

fn v6(n: usize, port: u16) -> SocketAddr {
    SocketAddr::new(backend_v6(n), port)
}

fn vip(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("VIP"), port)
}

/// Connections (or replies) per backend name.
fn per_backend<'a>(names: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for n in names {
        *counts.entry(n.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Every expected backend got its fair share ±35%, and nobody else got anything.
fn assert_even_spread(counts: &BTreeMap<String, usize>, expected: &[&str]) -> Result<()> {
    let total: usize = counts.values().sum();
    let fair = total as f64 / expected.len() as f64;
    for name in counts.keys() {
        ensure!(
            expected.contains(&name.as_str()),
            "unexpected backend {name}: {counts:?}"
        );
    }
    for name in expected {
        let got = counts.get(*name).copied().unwrap_or(0) as f64;
        ensure!(
            (got - fair).abs() <= 0.35 * fair,
            "{name} got {got} of {total}, fair share {fair:.0} ±35%: {counts:?}"
        );
    }
    Ok(())
}

/// The backends saw the load balancer's backend-side address as source; with XDP, with a port
/// from the SNAT range.
fn assert_snat_sources(dataplane: Dataplane, snat: &str, peers: &[SocketAddr]) -> Result<()> {
    let snat: IpAddr = snat.parse()?;
    for peer in peers {
        ensure!(
            peer.ip() == snat,
            "a backend saw source {peer}, not the SNAT address {snat}"
        );
        if dataplane == Dataplane::Xdp {
            ensure!(
                SNAT_PORTS.contains(&peer.port()),
                "a backend saw source port {}, outside the SNAT ports {SNAT_PORTS:?}",
                peer.port()
            );
        }
    }
    Ok(())
}

/// lb's socket table against the connections through `vip`: with XDP the kernel of lb
/// terminates none of them (no socket of any state on the VIP's address and port); the
/// userspace proxy, as a control, holds at least `open` established ones.
fn check_lb_sockets(lab: &L4Lab, dataplane: Dataplane, vip: SocketAddr, open: usize) -> Result<()> {
    let table = lab.lb_tcp_sockets()?;
    let vip_text = vip.to_string();
    let on_vip: Vec<&str> = table.lines().filter(|l| l.contains(&vip_text)).collect();
    match dataplane {
        Dataplane::Xdp => ensure!(
            on_vip.is_empty(),
            "lb's kernel holds sockets of the forwarded connections: {on_vip:#?}"
        ),
        Dataplane::Userspace => {
            let established = on_vip.iter().filter(|l| l.starts_with("ESTAB")).count();
            ensure!(
                established >= open,
                "the userspace proxy should hold {open} established sockets on {vip}, \
                 has {established}"
            );
        }
    }
    Ok(())
}

/// Packets the XDP program redirected so far (0 for the userspace dataplane).
fn xdp_redirects(lab: &L4Lab, dataplane: Dataplane) -> Result<u64> {
    match dataplane {
        Dataplane::Xdp => lab.xdp_counter(Counter::VerdictRedirect),
        Dataplane::Userspace => Ok(0),
    }
}

/// Opens `count` connections through `vip`, checks the spread, the sources the backends saw
/// and lb's socket table while they are open and after they are closed.
fn spread_case(dataplane: Dataplane, ipv6: bool, count: usize) -> Result<()> {
    let lab = L4Lab::new()?;
    lab.tcp_backend(1, 8080)?;
    lab.tcp_backend(2, 8080)?;
    let (backends, vip_ip, snat) = if ipv6 {
        ([v6(1, 8080), v6(2, 8080)], VIP_V6, SNAT_V6)
    } else {
        ([v4(1, 8080), v4(2, 8080)], VIP_V4, SNAT_V4)
    };
    let agent = lab.start_agent(dataplane, &web(&backends), &[])?;
    let target = vip(vip_ip, 8080);

    let redirected_before = xdp_redirects(&lab, dataplane)?;
    let mut conns = lab.connect_many(target, count)?;
    for (i, c) in conns.iter_mut().enumerate() {
        c.echo(&format!("round trip {i}"))?;
    }
    if dataplane == Dataplane::Xdp {
        // Forwarded by the program itself, not handed to lb's kernel: each connection so far
        // is at least SYN, SYN-ACK, ACK, greeting, data and echo redirected between lb's links.
        let redirected = xdp_redirects(&lab, dataplane)? - redirected_before;
        ensure!(
            redirected >= 5 * count as u64,
            "only {redirected} packets were XDP-redirected for {count} connections"
        );
    }
    let counts = per_backend(conns.iter().map(|c| c.backend.as_str()));
    assert_even_spread(&counts, &["be1:8080", "be2:8080"])?;
    let peers: Vec<SocketAddr> = conns.iter().map(|c| c.seen_peer).collect();
    assert_snat_sources(dataplane, snat, &peers)?;
    check_lb_sockets(&lab, dataplane, target, count)?;
    drop(conns);
    // After the clients closed: a local proxy would now hold TIME-WAIT or FIN states.
    if dataplane == Dataplane::Xdp {
        check_lb_sockets(&lab, dataplane, target, 0)?;
    }
    agent.stop(&lab)
}

/// 300 TCP connections through the IPv4 VIP spread evenly over two backends, every one
/// round-trips data; the backends see lb's SNAT address (XDP: a port of the SNAT range), and
/// with XDP lb's own kernel holds no socket of them (forwarded, not proxied).
fn tcp_connections_spread_over_backends(dataplane: Dataplane) -> Result<()> {
    spread_case(dataplane, false, 300)
}

/// The same over IPv6: the IPv6 VIP, IPv6 backends, the IPv6 SNAT address.
fn ipv6_connections_spread_over_backends(dataplane: Dataplane) -> Result<()> {
    spread_case(dataplane, true, 120)
}

/// Echoes on every connection; the error names the backend of the one that failed.
fn echo_all(conns: &mut [Conn], tag: &str) -> Result<()> {
    for (i, c) in conns.iter_mut().enumerate() {
        let backend = c.backend.clone();
        c.echo(&format!("{tag} {i}"))
            .with_context(|| format!("{tag}: connection #{i} to {backend}"))?;
    }
    Ok(())
}

/// Changing the backend set (a backend removed, another added, by rewriting the static config
/// and SIGHUP) while connections are open: every open connection goes on working — also those
/// to the removed backend, which drains — and new connections go only to the new set.
fn backend_change_keeps_open_connections(dataplane: Dataplane) -> Result<()> {
    let (lab, mut agent) = web_lab(dataplane, &[])?;
    lab.tcp_backend(1, 8081)?;
    let target = vip(VIP_V4, 8080);
    let mut long_lived = lab.connect_many(target, 40)?;
    let before = per_backend(long_lived.iter().map(|c| c.backend.as_str()));
    ensure!(
        before.contains_key("be1:8080") && before.contains_key("be2:8080"),
        "both backends should hold long-lived connections: {before:?}"
    );
    echo_all(&mut long_lived, "before")?;

    agent.reload(&lab, &web(&[v4(1, 8080), v4(1, 8081)]))?;
    echo_all(&mut long_lived, "after the change")?;

    let mut fresh = lab.connect_many(target, 80)?;
    let after = per_backend(fresh.iter().map(|c| c.backend.as_str()));
    ensure!(
        !after.contains_key("be2:8080"),
        "a new connection went to the removed backend: {after:?}"
    );
    ensure!(
        after.contains_key("be1:8080") && after.contains_key("be1:8081"),
        "new connections should use both backends of the new set: {after:?}"
    );
    echo_all(&mut fresh, "new")?;
    // Still working after the new ones came and went.
    drop(fresh);
    echo_all(&mut long_lived, "at the end")?;
    drop(long_lived);
    agent.stop(&lab)
}

/// XDP only. A backend removed with `--drain-timeout 0` is declared dead at the next conntrack
/// sweep (every 2 s). The program then re-balances that backend's remaining flows: the next
/// segment of an open connection goes to a live backend, which has no such connection and
/// answers with a RST that the program translates back to the client. So the client of a
/// dead backend learns within seconds (a reset, or an EOF), instead of hanging until its own
/// timeout; connections to the other backends are untouched.
#[test]
fn dead_backend_connections_get_reset_xdp() {
    run(
        "dead_backend_connections_get_reset_xdp",
        Dataplane::Xdp,
        dead_backend_connections_get_reset,
    );
}

fn dead_backend_connections_get_reset(dataplane: Dataplane) -> Result<()> {
    let (lab, mut agent) = web_lab(dataplane, &["--drain-timeout", "0"])?;
    let conns = lab.connect_many(vip(VIP_V4, 8080), 20)?;
    let (mut to_dead, mut to_live): (Vec<Conn>, Vec<Conn>) =
        conns.into_iter().partition(|c| c.backend == "be2:8080");
    ensure!(
        !to_dead.is_empty() && !to_live.is_empty(),
        "20 connections should reach both backends"
    );
    let mut doomed = to_dead.swap_remove(0);
    doomed.echo("before removal")?;

    agent.reload(&lab, &web(&[v4(1, 8080)]))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut round = 0;
    let ended = loop {
        round += 1;
        // Until the sweep declares the backend dead, the connection still drains to it.
        match doomed.echo(&format!("probe {round}")) {
            Ok(()) => {}
            Err(e) => break e,
        }
        if Instant::now() > deadline {
            bail!("the connection to the dead backend still works after 15 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let reset_or_eof =
        ended
            .downcast_ref::<std::io::Error>()
            .map_or(ended.to_string().contains("EOF"), |io| {
                matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                )
            });
    ensure!(
        reset_or_eof,
        "the client should see a reset or EOF, saw: {ended:#}"
    );
    echo_all(&mut to_live, "live backend after the other died")?;
    drop((to_dead, to_live, doomed));
    agent.stop(&lab)
}

/// UDP: many client sockets each send one request to the VIP; every reply comes back from the
/// VIP and service port (the client never sees a backend address), the requests spread evenly
/// over the backends, and the backends see lb's SNAT address.
fn udp_requests_answered_from_the_vip(dataplane: Dataplane) -> Result<()> {
    let lab = L4Lab::new()?;
    lab.udp_backend(1, 5353)?;
    lab.udp_backend(2, 5353)?;
    let agent = lab.start_agent(
        dataplane,
        &service("dns", 5353, "udp", &[v4(1, 5353), v4(2, 5353)]),
        &[],
    )?;
    let target = vip(VIP_V4, 5353);
    let mut replies = Vec::new();
    for i in 0..120 {
        replies.push(
            lab.udp_request(target)
                .with_context(|| format!("request #{i}"))?,
        );
    }
    for r in &replies {
        ensure!(
            r.from == target,
            "a reply came from {}, not {target}",
            r.from
        );
    }
    let counts = per_backend(replies.iter().map(|r| r.backend.as_str()));
    assert_even_spread(&counts, &["be1:5353", "be2:5353"])?;
    let peers: Vec<SocketAddr> = replies.iter().map(|r| r.seen_peer).collect();
    assert_snat_sources(dataplane, SNAT_V4, &peers)?;
    agent.stop(&lab)
}

/// An invalid static config sent with SIGHUP is refused (logged), the services of the last good
/// one go on working (open connections and new ones, on both backends), and a later valid
/// reload is applied.
fn bad_reload_keeps_last_good_services(dataplane: Dataplane) -> Result<()> {
    let (lab, mut agent) = web_lab(dataplane, &[])?;
    let target = vip(VIP_V4, 8080);
    let mut open = lab.connect_many(target, 10)?;

    lab.write_config("[[service]]\nname = \"web\"\nport = \"eighty\"\nbackends = [\"nowhere\"]\n")?;
    agent.sighup()?;
    agent.wait_for_log(RELOAD_REFUSED, 1)?;
    echo_all(&mut open, "after the bad reload")?;
    let fresh = lab.connect_many(target, 40)?;
    let counts = per_backend(fresh.iter().map(|c| c.backend.as_str()));
    ensure!(
        counts.contains_key("be1:8080") && counts.contains_key("be2:8080"),
        "the last good service (both backends) should still be served: {counts:?}"
    );

    agent.reload(&lab, &web(&[v4(1, 8080)]))?;
    let later = lab.connect_many(target, 20)?;
    ensure!(
        later.iter().all(|c| c.backend == "be1:8080"),
        "a valid reload after the bad one should be applied"
    );
    drop((open, fresh, later));
    agent.stop(&lab)
}

/// On a fresh lab lb has no neighbour entry for any backend. The very first packet of a flow
/// still reaches its backend: the XDP program cannot forward it itself (no next-hop MAC), so it
/// hands the rewritten packet to lb's kernel, which resolves ARP/ND and forwards it. Proven with
/// one single UDP datagram per family (UDP does not retry) and with TCP connections that needed
/// no retransmission.
fn first_packets_get_through_without_neighbour_entries(dataplane: Dataplane) -> Result<()> {
    let lab = L4Lab::new()?;
    // One service per family and protocol, each with a single backend address: every check
    // below is the very first packet towards that address.
    lab.udp_backend(1, 5353)?;
    lab.udp_backend(1, 5354)?;
    lab.tcp_backend(2, 8080)?;
    lab.tcp_backend(2, 8081)?;
    let config = service("dns4", 5353, "udp", &[v4(1, 5353)])
        + &service("dns6", 5354, "udp", &[v6(1, 5354)])
        + &service("web4", 8080, "tcp", &[v4(2, 8080)])
        + &service("web6", 8081, "tcp", &[v6(2, 8081)]);
    let agent = lab.start_agent(dataplane, &config, &[])?;
    for addr in [backend_v4(1), backend_v6(1), backend_v4(2), backend_v6(2)] {
        let entry = lab.lb_neighbour(addr)?;
        ensure!(
            !entry.contains("lladdr"),
            "lb already knows {addr} before any traffic: {entry}"
        );
    }

    for (vip_ip, port) in [(VIP_V4, 5353), (VIP_V6, 5354)] {
        let reply = lab
            .udp_request(vip(vip_ip, port))
            .with_context(|| format!("the first datagram to {vip_ip} got no reply"))?;
        ensure!(
            reply.backend == format!("be1:{port}"),
            "answered by {}",
            reply.backend
        );
    }
    let retransmitted = lab.client_tcp_retransmissions()?;
    for (vip_ip, port) in [(VIP_V4, 8080), (VIP_V6, 8081)] {
        let mut conn = lab.connect_many(vip(vip_ip, port), 1)?.remove(0);
        ensure!(
            conn.backend == format!("be2:{port}"),
            "answered by {}",
            conn.backend
        );
        conn.echo("first")?;
    }
    ensure!(
        lab.client_tcp_retransmissions()? == retransmitted,
        "the client had to retransmit: a first packet was lost"
    );
    for addr in [backend_v4(1), backend_v6(1), backend_v4(2), backend_v6(2)] {
        let entry = lab.lb_neighbour(addr)?;
        ensure!(
            entry.contains("lladdr"),
            "lb's kernel should have resolved {addr}: {entry:?}"
        );
    }
    agent.stop(&lab)
}

/// `balance = "source"` (the static config's `HAPROXY_{n}_BALANCE=source`): every connection
/// of one client address goes to one backend, and sixteen client addresses do not all share one
/// (XDP keys its source hash with a secret made afresh per run: with eight, one run in 128
/// would put them all on one of the two backends by chance; with sixteen, one in 32,768);
/// `allowed` (`BACKEND_NETWORK_ALLOWED_ACL`): a client outside the list never reaches a backend
/// (XDP: its SYNs are dropped and counted), the allowed client still does.
fn balance_source_and_allowed_networks(dataplane: Dataplane) -> Result<()> {
    let lab = L4Lab::new()?;
    lab.tcp_backend(1, 8080)?;
    lab.tcp_backend(2, 8080)?;
    let clients: Vec<IpAddr> = (10..26)
        .map(|h| format!("198.18.1.{h}").parse())
        .collect::<Result<_, _>>()?;
    let denied: IpAddr = "198.18.1.40".parse()?;
    for ip in clients.iter().chain([&denied]) {
        lab.cli
            .exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "cli-lb"])?;
    }
    let backends = [v4(1, 8080), v4(2, 8080)];
    let toml = format!(
        "{}{}",
        with_field(
            &service("sticky", 8081, "tcp", &backends),
            "balance = \"source\""
        ),
        with_field(
            &service("guarded", 8082, "tcp", &backends),
            "allowed = [\"198.18.1.0/28\"]"
        ),
    );
    let _agent = lab.start_agent(dataplane, &toml, &[])?;

    let sticky = vip(VIP_V4, 8081);
    let mut chosen = BTreeMap::new();
    for client in &clients {
        let client = *client;
        let seen: Vec<String> = lab.cli.enter(move || {
            (0..4)
                .map(|_| Ok(Conn::open_from(client, sticky, IO_TIMEOUT)?.backend))
                .collect::<Result<Vec<_>>>()
        })??;
        ensure!(
            seen.iter().all(|b| *b == seen[0]),
            "{client} spread over {seen:?}"
        );
        chosen.insert(client, seen[0].clone());
    }
    let distinct: std::collections::BTreeSet<&String> = chosen.values().collect();
    ensure!(
        distinct.len() == 2,
        "sixteen clients, one backend: {chosen:?}"
    );

    let guarded = vip(VIP_V4, 8082);
    let allowed = clients[0];
    lab.cli
        .enter(move || Conn::open_from(allowed, guarded, IO_TIMEOUT))??;
    let refused = lab.cli.enter(move || {
        Conn::open_from(denied, guarded, Duration::from_millis(1500)).map(|c| c.backend)
    })?;
    ensure!(refused.is_err(), "{denied} reached {refused:?}");
    if dataplane == Dataplane::Xdp {
        let dropped = lab.xdp_counter(Counter::DropAclDenied)?;
        ensure!(dropped >= 1, "drop_acl_denied = {dropped}");
    }
    Ok(())
}

/// A `[[service]]` with one more field (before its backends).
fn with_field(service: &str, field: &str) -> String {
    service.replacen("backends =", &format!("{field}\nbackends ="), 1)
}
