//! Memory per idle keep-alive connection (`bench http --memory`): the hidden `cargo xtask
//! bench idle-client`, run in the client namespace, opens many connections, sends one
//! keep-alive `GET` on each and reads its answer, then holds them all open and idle; the load
//! balancer's resident memory is read before and while it holds them.
use std::{
    fs,
    io::{BufRead as _, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use rustls::{ClientConnection, StreamOwned, pki_types::ServerName};

use super::{
    http::VHOST,
    lab::{ChildGuard, NS_CLI},
    tls_client,
};

/// Flags of the hidden `cargo xtask bench idle-client`.
#[derive(Args)]
pub struct IdleClientArgs {
    /// Server address (`ip:port`).
    #[arg(long)]
    addr: SocketAddr,
    /// Connections to open and hold.
    #[arg(long)]
    conns: usize,
    /// TLS (HTTP/1.1 over TLS) instead of plain HTTP.
    #[arg(long)]
    tls: bool,
    /// How long to hold them at most (the bench stops the client once it has measured).
    #[arg(long, default_value_t = 60)]
    hold_secs: u64,
}

/// Threads opening the connections (each opens its share one after the other).
const THREADS: usize = 8;

/// The load balancer `pid`'s resident memory: before `conns` idle connections to `target`
/// (after one request each, HTTP/1.1 over TLS with `tls`), and while they are held; KiB.
pub fn rss_with_idle_conns(
    xtask: &Path,
    pid: u32,
    target: &str,
    conns: usize,
    tls: bool,
) -> Result<(u64, u64)> {
    let before = rss_kib(pid)?;
    let mut client = Command::new("ip");
    client
        .args(["netns", "exec", NS_CLI, "taskset", "-c", "0"])
        .arg(xtask)
        .args(["bench", "idle-client", "--addr", target, "--conns"])
        .arg(conns.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if tls {
        client.arg("--tls");
    }
    let mut client = ChildGuard::new(client.spawn()?);
    let stdout = client.stdout.take().context("the idle client's stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != format!("ready {conns}") {
        bail!("the idle client against {target} failed (it said {line:?})");
    }
    // Whatever the last answers left to free or grow settles first; mlb parks an idle HTTP/1
    // connection (frees its HTTP state) within about a second of its last answer.
    thread::sleep(Duration::from_secs(2));
    let held = rss_kib(pid)?;
    drop(client);
    Ok((before, held))
}

/// `VmRSS` of a process, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS for process {pid}"))
}

/// Opens the connections, prints `ready N` once every one has had its answer, then holds them
/// for `hold_secs`. Fails on any refused connection or answer other than 200.
pub fn run(args: &IdleClientArgs) -> Result<()> {
    let config = tls_client::client_config()?;
    let per_thread = args.conns.div_ceil(THREADS);
    let workers: Vec<_> = (0..THREADS)
        .map(|i| {
            let n = per_thread.min(args.conns.saturating_sub(i * per_thread));
            let (config, addr, tls) = (config.clone(), args.addr, args.tls);
            thread::spawn(move || -> Result<Vec<Box<dyn Read + Send>>> {
                (0..n)
                    .map(|k| {
                        open(addr, tls.then_some(&config))
                            .with_context(|| format!("connection {k} of thread {i}"))
                    })
                    .collect()
            })
        })
        .collect();
    let mut held = Vec::with_capacity(args.conns);
    for worker in workers {
        held.extend(
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??,
        );
    }
    println!("ready {}", held.len());
    std::io::stdout().flush()?;
    thread::sleep(Duration::from_secs(args.hold_secs));
    Ok(())
}

/// One connection with one keep-alive request answered, left open.
fn open(addr: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Box<dyn Read + Send>> {
    // Generous: a load balancer busy with thousands of handshakes answers late, not never.
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).context("connect")?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    let request = format!("GET / HTTP/1.1\r\nHost: {VHOST}\r\n\r\n");
    let Some(config) = tls else {
        let mut tcp = tcp;
        tcp.write_all(request.as_bytes())?;
        read_response(&mut tcp)?;
        return Ok(Box::new(tcp));
    };
    let conn = ClientConnection::new(config.clone(), ServerName::try_from(VHOST)?)?;
    let mut stream = StreamOwned::new(conn, tcp);
    stream.write_all(request.as_bytes())?;
    read_response(&mut stream)?;
    Ok(Box::new(stream))
}

/// Reads one `200` response with a `Content-Length` body, and nothing more.
fn read_response(stream: &mut impl Read) -> Result<()> {
    let mut reader = BufReader::with_capacity(1, stream);
    let mut line = String::new();
    reader.read_line(&mut line).context("reading the answer")?;
    if !line.starts_with("HTTP/1.1 200") {
        bail!("response: {line:?}");
    }
    let mut length = None;
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = Some(value.trim().parse::<u64>()?);
        }
    }
    let length = length.context("no Content-Length in the answer")?;
    std::io::copy(&mut reader.take(length), &mut std::io::sink())?;
    Ok(())
}
