//! Path-MTU discovery through the XDP dataplane, end to end with real kernels' TCP, with the
//! bottleneck (1280 bytes) in two places:
//!
//! - behind the load balancer: a router (sw, see [`L4Lab::routed_backend`]) has a 1280-byte
//!   link towards the backend and answers the client's full-size segments, NATed by mlb, with
//!   "fragmentation needed" / "packet too big" addressed to the SNAT address. mlb translates the
//!   error back to the client (from the VIP, quoting the client's own segment). Without the
//!   translation the error dies at the load balancer, the client keeps sending segments the
//!   router drops, and the upload stalls (Linux does no black-hole probing by default);
//! - at the load balancer: its backend-side link has MTU 1280, and mlb answers the too-big
//!   segment itself, as a router does. Left to the kernel, the segment would reach the VIP's
//!   local stack, which has no such connection: a reset.
//!
//! Either way the client's kernel caches MTU 1280 for the VIP and the upload completes;
//! failures are bounded by the socket timeouts.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use mlb_common::stats::Counter;
use mlb_tests::{
    l4_lab::{
        Dataplane, L4Lab, ROUTED_BACKEND_V4, ROUTED_BACKEND_V6, VIP_V4, VIP_V6, backend_v4,
        backend_v6,
    },
    privileges::require_netns_and_bpf,
};

/// The MTU of the router's link towards the backend (IPv6's minimum).
const PATH_MTU: u32 = 1280;
/// Bytes uploaded: many full-size segments.
const UPLOAD: usize = 2 << 20;
const PORT: u16 = 9300;
/// Bound of each socket operation: a stalled upload fails within it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the smaller MTU is.
#[derive(Clone, Copy, Debug)]
enum Bottleneck {
    /// A router between the load balancer and the backend: mlb translates its errors.
    Router,
    /// The load balancer's own backend-side link: mlb answers.
    LoadBalancer,
}

/// Every case in turn, in one test. The load-balancer cases used to stall under load (and when
/// run side by side): mlb's answers left with `XDP_TX`, which a veth flushes to its peer only
/// when the peer runs XDP itself; the client's veth does not, so they waited in its ring until
/// a redirected packet (the backend's FIN, 10 s later) flushed them. mlb now sends them back
/// through the devmap (`too_big.rs`).
#[test]
fn path_mtu_discovery() {
    if !require_netns_and_bpf("path_mtu_discovery") {
        return;
    }
    for bottleneck in [Bottleneck::Router, Bottleneck::LoadBalancer] {
        for vip in [VIP_V4, VIP_V6] {
            if let Err(e) = upload_through_smaller_mtu(vip, bottleneck) {
                panic!("{bottleneck:?}, VIP {vip}: {e:#}");
            }
        }
    }
}

fn upload_through_smaller_mtu(vip: &str, bottleneck: Bottleneck) -> Result<()> {
    let vip: IpAddr = vip.parse()?;
    let v4 = vip.is_ipv4();
    let lab = L4Lab::new()?;
    let (backend, routed, counter) = match bottleneck {
        Bottleneck::Router => {
            let ip = if v4 {
                ROUTED_BACKEND_V4
            } else {
                ROUTED_BACKEND_V6
            };
            let be = lab.routed_backend(PATH_MTU)?;
            (ip.parse()?, Some(be), Counter::IcmpErrorTranslated)
        }
        Bottleneck::LoadBalancer => {
            let mtu = PATH_MTU.to_string();
            lab.lb.exec(&["ip", "link", "set", "lb-sw", "mtu", &mtu])?;
            let ip = if v4 { backend_v4(1) } else { backend_v6(1) };
            (ip, None, Counter::IcmpTooBigSent)
        }
    };
    let backend = SocketAddr::new(backend, PORT);
    let be = routed.as_ref().unwrap_or_else(|| lab.backend_ns(1));
    let listener = be.enter(move || TcpListener::bind(backend))??;
    let sink = thread::spawn(move || sink_one(&listener));
    let toml = format!(
        "[[service]]\nname = \"bulk\"\nport = {PORT}\nprotocol = \"tcp\"\nbackends = [\"{backend}\"]\n"
    );
    let _agent = lab.start_agent(Dataplane::Xdp, &toml, &[])?;

    let target = SocketAddr::new(vip, PORT);
    let started = Instant::now();
    let echoed = lab.cli.enter(move || upload(target))??;
    let took = started.elapsed();
    let received = sink.join().expect("sink thread")?;
    ensure!(
        (received, echoed) == (UPLOAD, UPLOAD),
        "backend received {received} bytes, acknowledged {echoed}, of {UPLOAD}"
    );
    let answered = lab.xdp_counter(counter)?;
    ensure!(answered > 0, "no ICMP error counted as {counter:?}");
    // The client learnt the path's MTU for the VIP.
    let route = lab.cli.exec(&["ip", "route", "get", &vip.to_string()])?;
    ensure!(
        route.contains(&format!("mtu {PATH_MTU}")),
        "the client's route to the VIP has no cached MTU {PATH_MTU}: {route}"
    );
    eprintln!(
        "{UPLOAD} bytes to {backend} through a {PATH_MTU}-byte hop ({bottleneck:?}) in \
         {took:?}, {counter:?} {answered}"
    );
    Ok(())
}

/// Sends [`UPLOAD`] bytes to `target`, closes its side, and returns the byte count the
/// backend acknowledges.
fn upload(target: SocketAddr) -> Result<usize> {
    let mut conn = TcpStream::connect_timeout(&target, IO_TIMEOUT)
        .with_context(|| format!("connecting to {target}"))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    let chunk = vec![0x5a; 64 << 10];
    let mut sent = 0;
    while sent < UPLOAD {
        conn.write_all(&chunk)
            .with_context(|| format!("upload stalled after {sent} bytes"))?;
        sent += chunk.len();
    }
    conn.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)
        .context("waiting for the backend's byte count")?;
    reply
        .trim()
        .parse()
        .with_context(|| format!("backend answered {reply:?}"))
}

/// Accepts one connection (within [`IO_TIMEOUT`]), reads it to the end, answers the byte
/// count; returns it.
fn sink_one(listener: &TcpListener) -> Result<usize> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + 3 * IO_TIMEOUT;
    let mut conn = loop {
        match listener.accept() {
            Ok((conn, _)) => break conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("no connection reached the backend");
                }
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0; 64 << 10];
    let mut received = 0;
    loop {
        match conn.read(&mut buf).context("backend reading the upload")? {
            0 => break,
            n => received += n,
        }
    }
    conn.write_all(received.to_string().as_bytes())?;
    Ok(received)
}
