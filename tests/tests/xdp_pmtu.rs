//! Path-MTU discovery through the XDP dataplane, end to end with real kernels' TCP: a router
//! behind the load balancer (sw, see [`L4Lab::routed_backend`]) has a 1280-byte link towards
//! the backend and answers the client's full-size segments, NATed by mlb, with "fragmentation
//! needed" / "packet too big" addressed to the SNAT address. mlb translates the error back to
//! the client (from the VIP, quoting the client's own segment), the client's kernel lowers its
//! path MTU to the VIP, and the upload completes. Without the translation the error dies at the
//! load balancer, the client keeps sending segments the router drops, and the upload stalls
//! (Linux does no black-hole probing by default): bounded here by the socket timeouts.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use mlb_common::stats::Counter;
use mlb_tests::{
    l4_lab::{Dataplane, L4Lab, ROUTED_BACKEND_V4, ROUTED_BACKEND_V6, VIP_V4, VIP_V6},
    privileges::require_netns_and_bpf,
};

/// The MTU of the router's link towards the backend (IPv6's minimum).
const PATH_MTU: u32 = 1280;
/// Bytes uploaded: many full-size segments.
const UPLOAD: usize = 2 << 20;
const PORT: u16 = 9300;
/// Bound of each socket operation: a stalled upload fails within it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn path_mtu_discovery_through_xdp_v4() {
    run(
        "path_mtu_discovery_through_xdp_v4",
        VIP_V4,
        ROUTED_BACKEND_V4,
    );
}

#[test]
fn path_mtu_discovery_through_xdp_v6() {
    run(
        "path_mtu_discovery_through_xdp_v6",
        VIP_V6,
        ROUTED_BACKEND_V6,
    );
}

fn run(test: &str, vip: &str, backend: &str) {
    if !require_netns_and_bpf(test) {
        return;
    }
    if let Err(e) = upload_through_smaller_mtu(vip, backend) {
        panic!("{test}: {e:#}");
    }
}

fn upload_through_smaller_mtu(vip: &str, backend: &str) -> Result<()> {
    let vip: IpAddr = vip.parse()?;
    let backend = SocketAddr::new(backend.parse()?, PORT);
    let lab = L4Lab::new()?;
    let be = lab.routed_backend(PATH_MTU)?;
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
    let translated = lab.xdp_counter(Counter::IcmpErrorTranslated)?;
    ensure!(translated > 0, "no ICMP error was translated");
    // The client learnt the path's MTU for the VIP.
    let route = lab.cli.exec(&["ip", "route", "get", &vip.to_string()])?;
    ensure!(
        route.contains(&format!("mtu {PATH_MTU}")),
        "the client's route to the VIP has no cached MTU {PATH_MTU}: {route}"
    );
    eprintln!(
        "{UPLOAD} bytes to {backend} through a {PATH_MTU}-byte hop in {took:?}, \
         {translated} ICMP errors translated"
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
