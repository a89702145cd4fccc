//! `cargo xtask bench http`: the L7 proxy against HAProxy `mode http` (marathon-lb's vhost
//! frontend shape) and against no load balancer at all, following
//! `shared/reference/benchmark-method.md`:
//!
//! - namespaces `cli` — `lb` — bridge `sw` — `be1`, `be2` on 198.18.0.0/15, no route out;
//! - client (wrk) and backends (nginx, one worker each) on cpu0; the load balancer and lb's
//!   receive path (RPS) on cpu1, one thread;
//! - cases interleaved per round, each load balancer started afresh every round, medians of the
//!   rounds, ratios to "direct" (kernel routing through lb, no load balancer);
//! - keep-alive req/s with p50/p99, new connections/s (`Connection: close`), LB CPU busy %;
//! - for HAProxy and mlb (direct has no TLS), on `:443` with an ECDSA P-256 certificate made
//!   here with rcgen (chain + key in one PEM: HAProxy's `crt`, mlb's `--ssl-certs`):
//!   - new TLS handshakes/s: [`tls_client`] (the release build of xtask), 32 blocking
//!     connections on cpu0, each a fresh rustls client with resumption disabled, so every
//!     connection is a full handshake (the client skips verifying the server's signature, which
//!     would cost it more than the server's signing)
//!     (neither `wrk` nor `h2load --h1` with `Connection: close` is: both resume the session on
//!     reconnect; HAProxy's counters showed 100 % reuse). One `GET` with `Connection: close` per
//!     connection. HAProxy's stats socket confirms it: its session reuse % is in the report;
//!   - HTTP/2 req/s and p99: `h2load -c32 -m10 -D<secs>` (ALPN h2; p99 from its request log).
//!
//! What differs from the method: no threaded-NAPI pinning (plain veths without XDP have no NAPI
//! kthreads to pin), and no bulk (iperf3) case, which says nothing about an HTTP proxy.
use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::bench::HttpArgs;

const NS: [&str; 5] = ["mlbb-cli", "mlbb-lb", "mlbb-sw", "mlbb-be1", "mlbb-be2"];
const VIP: &str = "198.18.1.2";
const BACKENDS: [&str; 2] = ["198.18.2.11", "198.18.2.12"];
const VHOST: &str = "app.example.com";
/// Concurrent connections of every load generator.
const CONNS: u32 = 32;
/// HTTP/2 streams in flight per connection (`h2load -m`).
const H2_STREAMS: u32 = 10;

/// Runs the benchmark, prints the table and writes it to `bench-results/http-<time>.md`.
pub fn run(proxy_bin: &Path, xtask: &Path, args: &HttpArgs) -> Result<()> {
    if !crate::setup::is_root() {
        bail!("bench http needs root (network namespaces)");
    }
    let (rounds, secs) = if args.quick {
        (1, 3)
    } else {
        (args.rounds.max(1) as usize, 10)
    };
    let work = std::env::temp_dir().join("mlb-bench-http");
    fs::create_dir_all(&work)?;
    let cert = write_cert(&work)?;
    let _net = Topology::create()?;
    let _backends = [
        nginx(&work, "mlbb-be1", BACKENDS[0])?,
        nginx(&work, "mlbb-be2", BACKENDS[1])?,
    ];
    for backend in BACKENDS {
        wait_http("mlbb-lb", &format!("{backend}:80"))?;
    }
    let haproxy_cfg = write_haproxy_config(&work, &cert)?;
    let setup = Setup {
        proxy_bin,
        xtask,
        haproxy_cfg: &haproxy_cfg,
        cert: &cert,
        work: &work,
        secs,
    };

    let cases = [Case::Direct, Case::Haproxy, Case::Mlb];
    let mut results: Vec<Vec<Sample>> = vec![Vec::new(); cases.len()];
    for round in 1..=rounds {
        for (i, case) in cases.iter().enumerate() {
            eprintln!("bench http: round {round}/{rounds}: {}", case.name());
            results[i].push(measure(*case, &setup)?);
        }
    }

    let report = report(&cases, &results, rounds, secs)?;
    println!("{report}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("bench-results");
    fs::create_dir_all(&dir)?;
    let stamp = Command::new("date")
        .args(["-u", "+%Y%m%d-%H%M%S"])
        .output()?;
    let path = dir.join(format!(
        "http-{}.md",
        String::from_utf8_lossy(&stamp.stdout).trim()
    ));
    fs::write(&path, &report)?;
    eprintln!("bench http: written to {}", path.display());
    Ok(())
}

/// What every case's measurement needs.
struct Setup<'a> {
    proxy_bin: &'a Path,
    xtask: &'a Path,
    haproxy_cfg: &'a Path,
    cert: &'a Path,
    work: &'a Path,
    secs: u32,
}

fn report(cases: &[Case], results: &[Vec<Sample>], rounds: usize, secs: u32) -> Result<String> {
    let kernel = Command::new("uname").arg("-r").output()?;
    let mut o = String::new();
    writeln!(o, "# mlb bench http\n")?;
    writeln!(
        o,
        "Kernel {}; {rounds} round(s), cases interleaved, each load balancer started afresh \
         per round; medians. Client tools and nginx backends (one process each) on cpu0, the \
         load balancer (one thread) and lb's receive path on cpu1. HTTP/1.1: `wrk -t1 -c{CONNS} \
         -d{secs}s --latency` keep-alive, then with `Connection: close` (new TCP connections/s). \
         TLS (`:443`, ECDSA P-256 certificate, TLS 1.2/1.3 defaults of each side, ALPN \
         h2,http/1.1): new TLS handshakes/s = {CONNS} client connections for {secs} s, each a \
         fresh rustls client with session resumption disabled (a full handshake every time; the \
         client does not check the server's signature, to stay cheaper than the server), one `GET` + `Connection: close` per connection; h2 = `h2load -c{CONNS} -m{H2_STREAMS} \
         -D{secs}` (p99 from h2load's request log). HAProxy: `nbthread 1`, `mode http`, `:80` \
         Host ACL and `:443` `ssl_fc_sni` ACL (marathon-lb's `marathon_http_in` / \
         `marathon_https_in`), `alpn h2,http/1.1`. \"direct\" is kernel routing to be1 (no \
         LB, no TLS: n/a). LB CPU % = the LB process's CPU time over the run. Compare ratios \
         from the same run, not absolute numbers across runs.\n",
        String::from_utf8_lossy(&kernel.stdout).trim()
    )?;
    writeln!(
        o,
        "| case | keep-alive req/s (× direct) | p50 ms | p99 ms (× direct) | new conn/s (× direct) \
         | LB CPU % keep-alive | new TLS handshakes/s (× HAProxy) | LB CPU % TLS | TLS suite \
         | h2 req/s (× HAProxy) | h2 p99 ms (× HAProxy) |"
    )?;
    writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    let direct = median_sample(&results[0]);
    let haproxy = cases
        .iter()
        .position(|c| matches!(c, Case::Haproxy))
        .map(|i| median_sample(&results[i]));
    for (case, samples) in cases.iter().zip(results) {
        let m = median_sample(samples);
        let vs = |v: Option<f64>, of: fn(&Sample) -> Option<f64>, digits: usize| match (
            v,
            haproxy.as_ref().and_then(of),
        ) {
            (Some(v), Some(h)) => format!("{v:.digits$} ({:.2})", v / h),
            (Some(v), None) => format!("{v:.digits$}"),
            (None, _) => "n/a".to_owned(),
        };
        writeln!(
            o,
            "| {} | {:.0} ({:.2}) | {:.3} | {:.3} ({:.2}) | {:.0} ({:.2}) | {:.0} | {} | {} | {} | {} | {} |",
            case.name(),
            m.rps,
            m.rps / direct.rps,
            m.p50_ms,
            m.p99_ms,
            m.p99_ms / direct.p99_ms,
            m.conn_rps,
            m.conn_rps / direct.conn_rps,
            m.cpu_pct,
            vs(m.tls_hs_rps, |s| s.tls_hs_rps, 0),
            m.tls_cpu_pct
                .map_or("n/a".to_owned(), |v| format!("{v:.0}")),
            samples
                .last()
                .and_then(|s| s.tls_suite.clone())
                .unwrap_or_else(|| "n/a".to_owned()),
            vs(m.h2_rps, |s| s.h2_rps, 0),
            vs(m.h2_p99_ms, |s| s.h2_p99_ms, 3),
        )?;
    }
    let reuse: Vec<String> = results[1]
        .iter()
        .filter_map(|s| s.haproxy_reuse_pct.map(|p| format!("{p:.0} %")))
        .collect();
    writeln!(
        o,
        "\nHAProxy's TLS session reuse during the handshake runs (stats socket \
         `SslFrontendSessionReuse_pct`, per round): {} (0 %: every handshake was full).",
        reuse.join(", ")
    )?;
    Ok(o)
}

#[derive(Clone, Copy)]
enum Case {
    Direct,
    Haproxy,
    Mlb,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Direct => "direct (routing only)",
            Case::Haproxy => "HAProxy mode http + Host",
            Case::Mlb => "mlb L7 proxy",
        }
    }
}

#[derive(Clone, Default)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    conn_rps: f64,
    cpu_pct: f64,
    /// The TLS cases (`None` for direct).
    tls_hs_rps: Option<f64>,
    tls_cpu_pct: Option<f64>,
    tls_suite: Option<String>,
    h2_rps: Option<f64>,
    h2_p99_ms: Option<f64>,
    haproxy_reuse_pct: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_opt(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Option<Vec<f64>> = v.collect();
    v.filter(|v| !v.is_empty()).map(median)
}

fn median_sample(s: &[Sample]) -> Sample {
    Sample {
        rps: median(s.iter().map(|x| x.rps).collect()),
        p50_ms: median(s.iter().map(|x| x.p50_ms).collect()),
        p99_ms: median(s.iter().map(|x| x.p99_ms).collect()),
        conn_rps: median(s.iter().map(|x| x.conn_rps).collect()),
        cpu_pct: median(s.iter().map(|x| x.cpu_pct).collect()),
        tls_hs_rps: median_opt(s.iter().map(|x| x.tls_hs_rps)),
        tls_cpu_pct: median_opt(s.iter().map(|x| x.tls_cpu_pct)),
        tls_suite: None,
        h2_rps: median_opt(s.iter().map(|x| x.h2_rps)),
        h2_p99_ms: median_opt(s.iter().map(|x| x.h2_p99_ms)),
        haproxy_reuse_pct: None,
    }
}

fn measure(case: Case, setup: &Setup) -> Result<Sample> {
    let secs = setup.secs;
    let cert = setup.cert.to_string_lossy().into_owned();
    let forward = matches!(case, Case::Direct);
    sh(&format!(
        "ip netns exec mlbb-lb sysctl -qw net.ipv4.ip_forward={}",
        u8::from(forward)
    ))?;
    let (target, lb) = match case {
        Case::Direct => (format!("{}:80", BACKENDS[0]), None),
        Case::Haproxy => {
            let child = spawn_in(
                "mlbb-lb",
                1,
                &["haproxy", "-db", "-f", &setup.haproxy_cfg.to_string_lossy()],
            )?;
            (format!("{VIP}:80"), Some(child))
        }
        Case::Mlb => {
            let mut args = vec![
                setup.proxy_bin.to_string_lossy().into_owned(),
                "--ssl-certs".to_owned(),
                cert.clone(),
                format!("{VIP}:80"),
                VHOST.to_owned(),
                "1".to_owned(),
            ];
            args.extend(BACKENDS.iter().map(|b| format!("{b}:80")));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            (format!("{VIP}:80"), Some(spawn_in("mlbb-lb", 1, &args)?))
        }
    };
    let lb = lb.map(ChildGuard);
    wait_http("mlbb-cli", &target)?;
    let cpu_before = lb.as_ref().map(|c| cpu_ticks(c.0.id())).transpose()?;
    let keep_alive = wrk(&target, false, secs)?;
    let cpu_after = lb.as_ref().map(|c| cpu_ticks(c.0.id())).transpose()?;
    let close = wrk(&target, true, secs)?;
    // Clock ticks are 1/100 s on Linux.
    let busy = |b: u64, a: u64, s: f64| (a - b) as f64 / s;
    let cpu_pct = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => busy(b, a, f64::from(secs)),
        _ => 0.0,
    };
    let mut sample = Sample {
        rps: keep_alive.0,
        p50_ms: keep_alive.1,
        p99_ms: keep_alive.2,
        conn_rps: close.0,
        cpu_pct,
        ..Sample::default()
    };
    if let Some(lb) = &lb {
        let tls_target = format!("{VIP}:443");
        wait_https(&tls_target)?;
        let before = cpu_ticks(lb.0.id())?;
        let start = Instant::now();
        let (hs_rps, suite) = tls_handshakes(setup.xtask, &tls_target, secs)?;
        sample.tls_cpu_pct = Some(busy(
            before,
            cpu_ticks(lb.0.id())?,
            start.elapsed().as_secs_f64(),
        ));
        sample.tls_hs_rps = Some(hs_rps);
        sample.tls_suite = Some(suite);
        if matches!(case, Case::Haproxy) {
            sample.haproxy_reuse_pct = Some(haproxy_reuse_pct(setup.work)?);
        }
        let (h2_rps, h2_p99) = h2load(&tls_target, secs, setup.work)?;
        sample.h2_rps = Some(h2_rps);
        sample.h2_p99_ms = Some(h2_p99);
    }
    Ok(sample)
}

/// `(req/s, p50 ms, p99 ms)` from `wrk -t1 -c32 --latency` run in cli on cpu0.
fn wrk(target: &str, close: bool, secs: u32) -> Result<(f64, f64, f64)> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", "mlbb-cli", "taskset", "-c", "0"])
        .args(["timeout", &(secs + 20).to_string(), "wrk"])
        .args([
            "-t1",
            &format!("-c{CONNS}"),
            &format!("-d{secs}s"),
            "--latency",
        ])
        .args(["-H", &format!("Host: {VHOST}")]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd.arg(format!("http://{target}/")).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk against {target} failed or saw errors:\n{text}");
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .context("no Requests/sec in wrk output")?
        .trim()
        .parse()?;
    Ok((rps, latency(&text, "50%")?, latency(&text, "99%")?))
}

/// `(handshakes/s, negotiated suite)` from [`tls_client`] run in cli on cpu0.
fn tls_handshakes(xtask: &Path, target: &str, secs: u32) -> Result<(f64, String)> {
    let out = Command::new("ip")
        .args(["netns", "exec", "mlbb-cli", "taskset", "-c", "0"])
        .args(["timeout", &(secs + 20).to_string()])
        .arg(xtask)
        .args(["bench", "tls-client", "--addr", target, "--secs"])
        .arg(secs.to_string())
        .args(["--conns", &CONNS.to_string()])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the TLS client against {target} failed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .with_context(|| format!("no {name} in the TLS client's output: {text}"))
    };
    Ok((field("rate=")?.parse()?, field("suite=")?.to_owned()))
}

/// `(req/s, p99 ms)` of `h2load -c32 -m10 -D<secs>` over TLS (ALPN h2), in cli on cpu0.
fn h2load(target: &str, secs: u32, work: &Path) -> Result<(f64, f64)> {
    let log = work.join("h2load.log");
    let _ = fs::remove_file(&log);
    let out = Command::new("ip")
        .args(["netns", "exec", "mlbb-cli", "taskset", "-c", "0"])
        .args(["timeout", &(secs + 20).to_string(), "h2load"])
        .args(["-t1", &format!("-c{CONNS}"), &format!("-m{H2_STREAMS}")])
        .args([
            "-D",
            &secs.to_string(),
            "--connect-to",
            target,
            "--log-file",
        ])
        .arg(&log)
        .arg(format!("https://{VHOST}/"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let status_ok = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .is_some_and(|l| l.contains(" 0 3xx, 0 4xx, 0 5xx"));
    if !out.status.success() || !text.contains("Application protocol: h2") || !status_ok {
        bail!("h2load against {target} failed or saw errors:\n{text}");
    }
    // "finished in 10.00s, 12345.67 req/s, ..."
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.strip_suffix(" req/s"))
        .context("no req/s in h2load output")?
        .parse()?;
    // One line per request: start (µs since epoch), status, duration (µs).
    let mut durations: Vec<f64> = fs::read_to_string(&log)?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .collect();
    if durations.is_empty() {
        bail!("h2load wrote no request log");
    }
    durations.sort_by(f64::total_cmp);
    let p99 = durations[(durations.len() * 99 / 100).min(durations.len() - 1)] / 1000.0;
    Ok((rps, p99))
}

/// HAProxy's `SslFrontendSessionReuse_pct` from its stats socket.
fn haproxy_reuse_pct(work: &Path) -> Result<f64> {
    let mut sock = std::os::unix::net::UnixStream::connect(work.join("haproxy.sock"))?;
    sock.write_all(b"show info\n")?;
    let mut info = String::new();
    sock.read_to_string(&mut info)?;
    info.lines()
        .find_map(|l| l.strip_prefix("SslFrontendSessionReuse_pct:"))
        .context("no SslFrontendSessionReuse_pct in HAProxy's show info")?
        .trim()
        .parse()
        .context("SslFrontendSessionReuse_pct")
}

/// Flags of the hidden `cargo xtask bench tls-client`.
#[derive(Args)]
pub struct TlsClientArgs {
    /// Server address (`ip:port`).
    #[arg(long)]
    addr: SocketAddr,
    /// How long to run.
    #[arg(long)]
    secs: u64,
    /// Concurrent connections (one thread each).
    #[arg(long, default_value_t = 32)]
    conns: u32,
}

/// The handshake load generator: `conns` threads, each connecting again and again until the
/// time is up, every connection a new rustls client without resumption (a full handshake),
/// sending one `GET` with `Connection: close` and reading the response to the end. Prints
/// `handshakes=N secs=S rate=R errors=E suite=…`. Fails on any error (a refused or broken
/// connection, a status other than 200).
pub fn tls_client(args: &TlsClientArgs) -> Result<()> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let config = Arc::new(config);
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let suite = Arc::new(std::sync::Mutex::new(String::new()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.secs);
    let threads: Vec<_> = (0..args.conns)
        .map(|_| {
            let (config, done, errors, suite) =
                (config.clone(), done.clone(), errors.clone(), suite.clone());
            let addr = args.addr;
            std::thread::spawn(move || {
                while Instant::now() < deadline {
                    match one_tls_request(&config, addr) {
                        Ok(s) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            let mut suite = suite.lock().expect("suite");
                            if suite.is_empty() {
                                *suite = s;
                            }
                        }
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                                eprintln!("tls-client: {e:#}");
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let secs = start.elapsed().as_secs_f64();
    let (n, e) = (done.load(Ordering::Relaxed), errors.load(Ordering::Relaxed));
    println!(
        "handshakes={n} secs={secs:.2} rate={:.1} errors={e} suite={}",
        n as f64 / secs,
        suite.lock().expect("suite")
    );
    if e > 0 || n == 0 {
        bail!("{e} failed connections, {n} good");
    }
    Ok(())
}

/// One connection: full handshake, `GET /`, the whole response; returns the negotiated
/// version and suite.
fn one_tls_request(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Result<String> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    let name = rustls::pki_types::ServerName::try_from(VHOST)?;
    let conn = rustls::ClientConnection::new(config.clone(), name)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(
        format!("GET / HTTP/1.1\r\nHost: {VHOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        Ok(_) => {}
        // A peer that closes without close_notify after a complete response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
        Err(e) => return Err(e.into()),
    }
    if !response.starts_with(b"HTTP/1.1 200") {
        bail!(
            "response: {:?}",
            String::from_utf8_lossy(&response[..response.len().min(80)])
        );
    }
    let suite = tls
        .conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}/{:?}", s.version().version, s.suite()))
        .unwrap_or_default();
    let group = tls
        .conn
        .negotiated_key_exchange_group()
        .map(|g| format!("/{:?}", g.name()))
        .unwrap_or_default();
    Ok(format!("{suite}{group}"))
}

/// Accepts any certificate (the bench's own self-signed one) and skips checking the server's
/// handshake signature: the server still does all of a full handshake's work (ECDHE, ECDSA
/// signature), and the client on cpu0 spends less than the server, so that the load balancer
/// on cpu1, not the client, runs out of CPU first.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.verify_tls12_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An ECDSA P-256 self-signed certificate for the vhost, chain + key in one PEM.
fn write_cert(work: &Path) -> Result<PathBuf> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = rcgen::CertificateParams::new(vec![VHOST.to_owned()])?.self_signed(&key)?;
    let path = work.join("cert.pem");
    fs::write(&path, format!("{}{}", cert.pem(), key.serialize_pem()))?;
    Ok(path)
}

/// Waits until `addr` answers HTTPS (SNI and Host: the vhost) with 2xx, from cli.
fn wait_https(addr: &str) -> Result<()> {
    for _ in 0..100 {
        let ok = Command::new("ip")
            .args([
                "netns",
                "exec",
                "mlbb-cli",
                "curl",
                "-skf",
                "-o",
                "/dev/null",
            ])
            .args([
                "--max-time",
                "1",
                "--connect-to",
                &format!("{VHOST}:443:{addr}"),
            ])
            .arg(format!("https://{VHOST}/"))
            .status()?
            .success();
        if ok {
            return Ok(());
        }
        sleep(Duration::from_millis(100));
    }
    bail!("{addr} does not answer HTTPS")
}

fn latency(text: &str, pct: &str) -> Result<f64> {
    let value = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix(pct))
        .with_context(|| format!("no {pct} latency in wrk output"))?
        .trim();
    let (num, factor) = if let Some(v) = value.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = value.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = value.strip_suffix('s') {
        (v, 1000.0)
    } else {
        bail!("latency {value:?}")
    };
    Ok(num.parse::<f64>()? * factor)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = &stat[stat.rfind(')').context("stat")? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// Waits until `addr` answers HTTP with 2xx for the bench vhost, asking from namespace `ns`.
fn wait_http(ns: &str, addr: &str) -> Result<()> {
    for _ in 0..100 {
        let ok = Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-sf", "-o", "/dev/null"])
            .args(["--max-time", "1", "-H", &format!("Host: {VHOST}")])
            .arg(format!("http://{addr}/"))
            .status()?
            .success();
        if ok {
            return Ok(());
        }
        sleep(Duration::from_millis(100));
    }
    bail!("{addr} does not answer")
}

fn spawn_in(ns: &str, cpu: u32, argv: &[&str]) -> Result<Child> {
    Command::new("ip")
        .args(["netns", "exec", ns, "taskset", "-c", &cpu.to_string()])
        .args(argv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {argv:?} in {ns}"))
}

/// Kills (SIGTERM, then waits) the process it holds.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx(work: &Path, ns: &str, ip: &str) -> Result<ChildGuard> {
    let dir = work.join(ns);
    fs::create_dir_all(dir.join("logs"))?;
    fs::write(dir.join("index.html"), "hello from the bench backend\n")?;
    let conf = dir.join("nginx.conf");
    fs::write(
        &conf,
        format!(
            "daemon off; master_process off; worker_processes 1; pid {pid};\n\
             error_log {dir}/logs/error.log crit;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n\
               server {{ listen {ip}:80 reuseport; root {dir}; }} }}\n",
            pid = dir.join("nginx.pid").display(),
            dir = dir.display()
        ),
    )?;
    let conf = conf.to_string_lossy().into_owned();
    Ok(ChildGuard(spawn_in(
        ns,
        0,
        &["nginx", "-c", &conf, "-p", &dir.to_string_lossy()],
    )?))
}

fn write_haproxy_config(work: &Path, cert: &Path) -> Result<PathBuf> {
    let path = work.join("haproxy.cfg");
    let servers: String = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, b)| format!("  server be{i} {b}:80\n"))
        .collect();
    fs::write(
        &path,
        format!(
            "global\n  nbthread 1\n  maxconn 4096\n  stats socket {sock} level admin\n\
             defaults\n  mode http\n  timeout connect 3s\n  timeout client 30s\n  timeout server 30s\n\
             frontend marathon_http_in\n  bind {VIP}:80\n  acl host_app hdr(host) -i {VHOST}\n  use_backend app_10000 if host_app\n\
             frontend marathon_https_in\n  bind {VIP}:443 ssl crt {cert} alpn h2,http/1.1\n  mode http\n\
             \x20 use_backend app_10000 if {{ ssl_fc_sni {VHOST} }}\n\
             backend app_10000\n  balance roundrobin\n{servers}",
            sock = work.join("haproxy.sock").display(),
            cert = cert.display(),
        ),
    )?;
    Ok(path)
}

/// The namespaces and links; deleted on drop.
struct Topology;

impl Topology {
    fn create() -> Result<Topology> {
        let _ = Topology.delete();
        let t = Topology;
        for ns in NS {
            sh(&format!("ip netns add {ns}"))?;
            sh(&format!("ip -n {ns} link set lo up"))?;
        }
        let script = format!(
            "ip link add cli-lb netns mlbb-cli type veth peer name lb-cli netns mlbb-lb
             ip link add lb-sw netns mlbb-lb type veth peer name sw-lb netns mlbb-sw
             ip -n mlbb-sw link add br0 type bridge
             ip -n mlbb-sw link set sw-lb master br0
             ip -n mlbb-cli addr add 198.18.1.1/24 dev cli-lb
             ip -n mlbb-lb addr add {VIP}/24 dev lb-cli
             ip -n mlbb-lb addr add 198.18.2.1/24 dev lb-sw
             ip -n mlbb-cli link set cli-lb up
             ip -n mlbb-lb link set lb-cli up
             ip -n mlbb-lb link set lb-sw up
             ip -n mlbb-sw link set sw-lb up
             ip -n mlbb-sw link set br0 up
             ip -n mlbb-cli route add 198.18.2.0/24 via {VIP}
             ip netns exec mlbb-lb sh -c 'echo 2 > /sys/class/net/lb-cli/queues/rx-0/rps_cpus; echo 2 > /sys/class/net/lb-sw/queues/rx-0/rps_cpus'"
        );
        for line in script.lines() {
            sh(line.trim())?;
        }
        for (i, ip) in BACKENDS.iter().enumerate() {
            let n = i + 1;
            sh(&format!(
                "ip link add sw-be{n} netns mlbb-sw type veth peer name be netns mlbb-be{n}"
            ))?;
            sh(&format!("ip -n mlbb-sw link set sw-be{n} master br0"))?;
            sh(&format!("ip -n mlbb-sw link set sw-be{n} up"))?;
            sh(&format!("ip -n mlbb-be{n} addr add {ip}/24 dev be"))?;
            sh(&format!("ip -n mlbb-be{n} link set be up"))?;
            sh(&format!(
                "ip -n mlbb-be{n} route add 198.18.1.0/24 via 198.18.2.1"
            ))?;
        }
        Ok(t)
    }

    fn delete(&self) -> Result<()> {
        for ns in NS {
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stderr(Stdio::null())
                .status();
        }
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = self.delete();
    }
}

fn sh(cmd: &str) -> Result<()> {
    let status = Command::new("sh")
        .args(["-c", cmd])
        .status()
        .with_context(|| cmd.to_owned())?;
    if !status.success() {
        bail!("`{cmd}` failed");
    }
    Ok(())
}
