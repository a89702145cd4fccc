//! `mlb-demo` (run by `cargo xtask demo`): the Marathon simulator with the sample apps (TCP echo,
//! UDP, two HTTP vhosts, one TLS vhost), routed by a real `mlb run`, with the best dataplane this
//! machine allows:
//!
//! - **root**: three network namespaces (client, lb, backends; 198.18.0.0/15, no route out), the
//!   simulator's tasks in the backend namespace, mlb in the lb namespace with its XDP program on
//!   both of lb's interfaces (`--dataplane auto` falls back to the userspace proxy, and says why);
//! - **otherwise** (or `--dataplane userspace`): everything on loopback, unprivileged ports.
//!
//! It prints what it started and what to try, checks every app once through mlb, then every
//! `--scale-every` seconds scales `/demo/web` and `/demo/tcp-echo` up or down in the simulator,
//! prints the backends mlb then reports (admin API) and which tasks answered real requests.
//! Runs until Ctrl-C / SIGTERM or `--duration`; then stops mlb (SIGTERM by PID), the simulator,
//! and deletes the namespaces (guards, also on panic). Exits non-zero if any check failed.
use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead as _, BufReader, ErrorKind, Read, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, ValueEnum};
use mlb_tests::{
    marathon_sim::{Agent, MarathonSim, SAMPLE_APPS_JSON, SimConfig},
    netns::{Child, Netns, VethEnd, veth},
    privileges::can_use_netns_and_bpf,
};
use serde_json::Value;

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "mlb-demo",
    about = "mlb routing the Marathon simulator's sample apps, scaled live"
)]
struct Args {
    /// The `mlb` binary (default: `mlb` next to this program).
    #[arg(long, env = "MLB_BIN")]
    mlb: Option<PathBuf>,
    /// Stop after this many seconds of demo (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// `auto`: XDP in namespaces when root, else userspace on loopback; `xdp`: namespaces and
    /// XDP or fail; `userspace`: loopback, no privileges needed.
    #[arg(long, value_enum, default_value_t = DemoDataplane::Auto)]
    dataplane: DemoDataplane,
    /// Seconds between scale changes.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    scale_every: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DemoDataplane {
    Auto,
    Xdp,
    Userspace,
}

/// Set by SIGINT / SIGTERM; every wait of the demo checks it.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let handler: extern "C" fn(libc::c_int) = on_signal;
        unsafe { libc::signal(sig, handler as libc::sighandler_t) };
    }
}

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Sleeps until `deadline`, in short slices; false if a stop was requested.
fn sleep_until(deadline: Instant) -> bool {
    while !stopping() {
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(100)));
    }
    false
}

const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// The apps the demo scales, with the instance counts it alternates between.
const SCALED: [(&str, [usize; 2]); 2] = [("/demo/web", [1, 4]), ("/demo/tcp-echo", [4, 1])];

fn main() -> ExitCode {
    install_signal_handlers();
    let args = Args::parse();
    match run(&args) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("mlb-demo: {failed} check(s) failed (see FAILED above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("mlb-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn mlb_path(args: &Args) -> Result<PathBuf> {
    let path = match &args.mlb {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("mlb-demo has no parent directory")?
            .join("mlb"),
    };
    ensure!(
        path.is_file(),
        "{} not found: build it (`cargo build -p mlb-userspace --bin mlb`, done by \
         `cargo xtask demo`) or pass --mlb",
        path.display()
    );
    Ok(path)
}

/// A work directory (certificate, mlb's log), removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("mlb-demo-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A demo CA and a certificate for the sample vhosts it signed.
struct Certs {
    /// The CA certificate (PEM), for `curl --cacert`.
    ca_file: PathBuf,
    /// Certificate chain and key in one PEM file, for `mlb --ssl-certs`.
    chain_file: PathBuf,
    ca_der: rustls_pki_types::CertificateDer<'static>,
}

fn make_certs(dir: &Path) -> Result<Certs> {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "mlb demo CA");
    ca_params.distinguished_name = dn;
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf_key = KeyPair::generate()?;
    let names = [
        "web.example.test",
        "api.example.test",
        "secure.example.test",
    ];
    let leaf = CertificateParams::new(names.map(String::from).to_vec())?
        .signed_by(&leaf_key, &ca, &ca_key)?;
    let ca_file = dir.join("demo-ca.pem");
    let chain_file = dir.join("secure.example.test.pem");
    fs::write(&ca_file, ca.pem())?;
    fs::write(
        &chain_file,
        format!("{}{}", leaf.pem(), leaf_key.serialize_pem()),
    )?;
    Ok(Certs {
        ca_file,
        chain_file,
        ca_der: ca.der().clone(),
    })
}

/// The namespaces of the XDP layout (dropped = deleted).
struct Namespaces {
    cli: Netns,
    lb: Netns,
    // Never read, only owned: deleting it on drop is its job.
    _be: Netns,
}

const CLIENT_ADDR: &str = "198.18.1.1";
const VIP: &str = "198.18.1.2";
const SNAT: &str = "198.18.2.1";
const AGENTS: [&str; 2] = ["198.18.2.11", "198.18.2.12"];

impl Namespaces {
    /// ```text
    ///  client ns            lb ns (mlb, simulator API)              backend ns (tasks)
    ///  cli-lb ========== lb-cli              lb-be =========== be-lb
    ///  198.18.1.1        198.18.1.2 (VIP)    198.18.2.1 (SNAT) 198.18.2.11, 198.18.2.12
    /// ```
    /// Every address is on-link: no route is needed, and none leads out.
    fn build() -> Result<Self> {
        let ns = Namespaces {
            cli: Netns::new("cli")?,
            lb: Netns::new("lb")?,
            _be: Netns::new("be")?,
        };
        let be = &ns._be;
        veth(
            &VethEnd {
                ns: &ns.cli,
                name: "cli-lb",
                addrs: &["198.18.1.1/24"],
            },
            &VethEnd {
                ns: &ns.lb,
                name: "lb-cli",
                addrs: &["198.18.1.2/24"],
            },
        )?;
        veth(
            &VethEnd {
                ns: &ns.lb,
                name: "lb-be",
                addrs: &["198.18.2.1/24"],
            },
            &VethEnd {
                ns: be,
                name: "be-lb",
                addrs: &["198.18.2.11/24", "198.18.2.12/24"],
            },
        )?;
        // bpf_fib_lookup answers only for interfaces that forward.
        for key in [
            "net.ipv4.conf.all.forwarding=1",
            "net.ipv6.conf.all.forwarding=1",
        ] {
            ns.lb.exec(&["sysctl", "-q", "-w", key])?;
        }
        // XDP_TX / XDP_REDIRECT into a veth are delivered only when its peer has GRO on.
        for (n, dev) in [
            (&ns.cli, "cli-lb"),
            (&ns.lb, "lb-cli"),
            (&ns.lb, "lb-be"),
            (be, "be-lb"),
        ] {
            n.exec(&["ethtool", "-K", dev, "gro", "on"])?;
        }
        Ok(ns)
    }
}

/// Moves this thread (the main thread, before any other starts) into `ns` for good: the
/// simulator's API and the admin client then live in the lb namespace next to mlb.
fn enter_for_good(ns: &Netns) -> Result<()> {
    let path = format!("/var/run/netns/{}", ns.name());
    let file = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a namespace fd; only this thread's network namespace changes.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(
        rc == 0,
        "setns({path}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Where everything runs and listens.
struct Layout {
    /// `None`: loopback.
    ns: Option<Namespaces>,
    vip: IpAddr,
    http_port: u16,
    https_port: u16,
    appid_port: u16,
    admin: SocketAddr,
    sim_listen: SocketAddr,
    agents: Vec<Agent>,
}

const SERVICE_PORTS: [(u16, &str); 5] = [
    (10001, "tcp"),
    (10002, "udp"),
    (10003, "tcp"),
    (10004, "tcp"),
    (10005, "tcp"),
];

/// `preferred` when it is free (on every address), else any free port.
fn free_port(preferred: u16) -> Result<u16> {
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    if TcpListener::bind(SocketAddr::new(any, preferred)).is_ok() {
        return Ok(preferred);
    }
    Ok(TcpListener::bind(SocketAddr::new(any, 0))?
        .local_addr()?
        .port())
}

impl Layout {
    fn loopback() -> Result<Self> {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for (port, proto) in SERVICE_PORTS {
            let free = match proto {
                "udp" => UdpSocket::bind(SocketAddr::new(lo, port)).is_ok(),
                _ => TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
                    .is_ok(),
            };
            ensure!(
                free,
                "{proto} port {port} is in use (another mlb demo?): the sample apps' service \
                 ports 10001-10005 must be free"
            );
        }
        Ok(Layout {
            ns: None,
            vip: lo,
            http_port: free_port(18081)?,
            https_port: free_port(18443)?,
            appid_port: free_port(19091)?,
            admin: SocketAddr::new(lo, free_port(19090)?),
            sim_listen: SocketAddr::new(lo, 0),
            agents: vec![Agent::local(lo)],
        })
    }

    fn namespaces() -> Result<Self> {
        let ns = Namespaces::build().context("building the demo's namespaces")?;
        let be = ns._be.name().to_owned();
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Ok(Layout {
            vip: VIP.parse()?,
            http_port: 80,
            https_port: 443,
            appid_port: 9091,
            admin: SocketAddr::new(lo, 9090),
            sim_listen: SocketAddr::new(lo, 8080),
            agents: AGENTS
                .iter()
                .map(|a| Ok(Agent::in_netns(a.parse()?, be.clone())))
                .collect::<Result<_>>()?,
            ns: Some(ns),
        })
    }

    /// `ip netns exec <client ns> ` (or nothing on loopback), for printed commands.
    fn client_prefix(&self) -> String {
        self.ns
            .as_ref()
            .map(|n| format!("ip netns exec {} ", n.cli.name()))
            .unwrap_or_default()
    }

    fn lb_prefix(&self) -> String {
        self.ns
            .as_ref()
            .map(|n| format!("ip netns exec {} ", n.lb.name()))
            .unwrap_or_default()
    }

    /// Runs `f` where the demo's clients are (the client namespace, or here).
    fn as_client<R: Send>(&self, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
        match &self.ns {
            Some(ns) => ns.cli.enter(f)?,
            None => f(),
        }
    }

    fn url(&self, port: u16, default: u16) -> String {
        if port == default {
            format!("{}", self.vip)
        } else {
            format!("{}:{port}", self.vip)
        }
    }
}

/// The running `mlb run`: SIGTERM on [`Mlb::stop`], killed by PID if dropped first.
struct Mlb {
    child: Child,
    log: PathBuf,
}

impl Mlb {
    fn start(
        bin: &Path,
        layout: &Layout,
        sim_url: &str,
        mode: &str,
        certs: &Certs,
        dir: &Path,
    ) -> Result<Self> {
        let log = dir.join("mlb.log");
        let log_file = fs::File::create(&log)?;
        let mut args: Vec<String> = [
            "run",
            "-m",
            sim_url,
            "--group",
            "external",
            "--dataplane",
            mode,
        ]
        .map(String::from)
        .to_vec();
        args.extend([
            "--vip".into(),
            layout.vip.to_string(),
            "--http-port".into(),
            layout.http_port.to_string(),
            "--https-port".into(),
            layout.https_port.to_string(),
            "--appid-port".into(),
            layout.appid_port.to_string(),
            "--admin-addr".into(),
            layout.admin.to_string(),
            "--ssl-certs".into(),
            certs.chain_file.display().to_string(),
        ]);
        if layout.ns.is_some() {
            args.extend(
                [
                    "--xdp-iface",
                    "lb-cli",
                    "--xdp-iface",
                    "lb-be",
                    "--snat-addr",
                    SNAT,
                ]
                .map(String::from),
            );
        }
        let configure = |c: &mut Command| {
            c.args(&args)
                .env("NO_COLOR", "1")
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                // Its own process group: Ctrl-C reaches the demo, which stops mlb in order.
                .process_group(0);
        };
        let bin_str = bin.to_str().context("mlb path is not UTF-8")?;
        let child = if let Some(ns) = &layout.ns {
            ns.lb.spawn_command(bin_str, configure)?
        } else {
            let mut cmd = Command::new(bin);
            configure(&mut cmd);
            Child(
                cmd.spawn()
                    .with_context(|| format!("starting {}", bin.display()))?,
            )
        };
        Ok(Mlb { child, log })
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.0.try_wait()?)
    }

    /// Waits (≤ 30 s) until mlb has read Marathon and serves the sample apps' services.
    /// `Ok(false)`: a stop was requested meanwhile.
    fn wait_ready(&mut self, layout: &Layout) -> Result<bool> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if stopping() {
                return Ok(false);
            }
            if let Some(status) = self.exited()? {
                bail!(
                    "mlb exited ({status}) before it was ready:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(status) = admin_json(layout, "/_mlb/status") {
                let count = |k: &str| status[k].as_u64().unwrap_or(0);
                if status["synced"] == Value::Bool(true)
                    && count("l4_services") >= 2
                    && count("http_services") >= 3
                {
                    return Ok(true);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "mlb did not serve the sample apps within 30 s:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, wait ≤ 10 s (then the guard kills it).
    fn stop(mut self) -> Result<()> {
        let status = self.child.terminate(Duration::from_secs(10))?;
        ensure!(
            status.success(),
            "mlb exited with {status}:\n{}",
            self.log_tail()
        );
        Ok(())
    }
}

/// The dataplane mlb ended up with, and why, from how it was asked and what it logged.
fn dataplane_used(layout: &Layout, requested: DemoDataplane, log: &str) -> (String, String) {
    match &layout.ns {
        None if requested == DemoDataplane::Userspace => (
            "userspace".into(),
            "--dataplane userspace: the tokio TCP/UDP proxy, everything on loopback".into(),
        ),
        None => (
            "userspace".into(),
            "not root (XDP and namespaces need CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF): the tokio \
             TCP/UDP proxy, everything on loopback"
                .into(),
        ),
        Some(ns) => {
            if log.contains("XDP program attached") {
                (
                    "xdp".into(),
                    format!(
                        "root: XDP program attached to lb-cli and lb-be in {}; TCP/UDP is \
                         forwarded in the kernel (full NAT, Maglev)",
                        ns.lb.name()
                    ),
                )
            } else {
                let why = log
                    .lines()
                    .find_map(|l| l.split_once("using the userspace dataplane: "))
                    .map_or("see mlb's log", |(_, why)| why.trim());
                (
                    "userspace".into(),
                    format!(
                        "XDP could not be attached ({why}): the tokio TCP/UDP proxy, in the namespaces"
                    ),
                )
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients: tiny, blocking, bounded (every socket has timeouts).

/// A parsed HTTP response.
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads until EOF; a TLS peer that closes without close_notify also ends the response.
fn read_all(r: &mut impl Read) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof && !out.is_empty() => return Ok(out),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no complete HTTP response")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

/// HTTP/1.0 (so no chunked bodies, the server closes) GET from the current namespace.
fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<HttpResponse> {
    let mut s = connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: mlb-demo\r\n\r\n"
    )?;
    parse_response(&read_all(&mut s).with_context(|| format!("reading from {addr}"))?)
}

fn https_get(
    addr: SocketAddr,
    host: &str,
    ca: &rustls_pki_types::CertificateDer<'static>,
) -> Result<HttpResponse> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let mut tls = rustls::StreamOwned::new(conn, connect(addr)?);
    write!(
        tls,
        "GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: mlb-demo\r\n\r\n"
    )?;
    parse_response(&read_all(&mut tls).with_context(|| format!("TLS to {addr}"))?)
}

/// The task id a backend answered with (its HTTP body), after checking the status.
fn task_id(r: &HttpResponse) -> Result<String> {
    ensure!(r.status == 200, "HTTP {} ({})", r.status, r.body.trim());
    Ok(r.body.trim().to_owned())
}

fn tcp_echo(addr: SocketAddr) -> Result<()> {
    let s = connect(addr)?;
    let mut reader = BufReader::new(s.try_clone()?);
    (&s).write_all(b"hello mlb\n")?;
    let mut line = String::new();
    reader.read_line(&mut line).context("reading the echo")?;
    ensure!(line == "hello mlb\n", "echoed {line:?}");
    Ok(())
}

fn udp_request(addr: SocketAddr) -> Result<String> {
    let local = SocketAddr::new(
        match addr.ip() {
            IpAddr::V4(a) if a.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        },
        0,
    );
    let socket = UdpSocket::bind(local)?;
    socket.set_read_timeout(Some(IO_TIMEOUT))?;
    socket.send_to(b"ping", addr)?;
    let mut buf = [0u8; 1500];
    let (n, _) = socket
        .recv_from(&mut buf)
        .with_context(|| format!("no UDP answer from {addr}"))?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

/// A GET to mlb's admin listener (from the lb namespace, where this thread lives).
fn admin_json(layout: &Layout, path: &str) -> Result<Value> {
    let r = http_get(layout.admin, "localhost", path)?;
    ensure!(
        r.status == 200,
        "admin {path}: HTTP {} {}",
        r.status,
        r.body.trim()
    );
    Ok(serde_json::from_str(&r.body)?)
}

/// The backends mlb routes an app's first service port to: `(task id, address, state)`.
fn mlb_backends(layout: &Layout, app: &str) -> Result<Vec<(String, String, String)>> {
    let apps = admin_json(layout, &format!("/_mlb/explain{app}"))?;
    let backends = apps[0]["ports"][0]["backends"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(backends
        .iter()
        .map(|b| {
            let id = b["id"].as_str().unwrap_or("?");
            // Backend ids are `<task id>:<port index>`.
            let task = id.rsplit_once(':').map_or(id, |(t, _)| t);
            (
                task.to_owned(),
                b["addr"].as_str().unwrap_or("?").to_owned(),
                b["state"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------

struct Demo<'a> {
    layout: &'a Layout,
    certs: &'a Certs,
    start: Instant,
    failed: usize,
}

impl Demo<'_> {
    fn ts(&self) -> String {
        format!("[{:6.1}s]", self.start.elapsed().as_secs_f64())
    }

    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.layout.vip, port)
    }

    fn report(&mut self, what: &str, result: Result<String>) {
        match result {
            Ok(msg) => println!("  ok      {what}: {msg}"),
            Err(e) => {
                self.failed += 1;
                println!("  FAILED  {what}: {e:#}");
            }
        }
    }

    /// One request to `app` through mlb; the task id that answered.
    fn probe(&self, app: &str) -> Result<String> {
        let l = self.layout;
        match app {
            "/demo/web" => {
                let a = self.addr(l.http_port);
                l.as_client(|| task_id(&http_get(a, "web.example.test", "/")?))
            }
            // The sample tasks answer HTTP on every TCP port, the echo app's too: through the
            // TCP service the answer names the task.
            "/demo/tcp-echo" => {
                let a = self.addr(10001);
                l.as_client(|| task_id(&http_get(a, "tcp-echo", "/")?))
            }
            other => bail!("no probe for {other}"),
        }
    }

    /// Every app once, through mlb, from the client side.
    fn check_all(&mut self) {
        let l = self.layout;
        println!("Checking every app through mlb (from the client side):");
        let (tcp, udp, http, https) = (
            self.addr(10001),
            self.addr(10002),
            self.addr(l.http_port),
            self.addr(l.https_port),
        );
        let r = l.as_client(|| tcp_echo(tcp)).map(|()| {
            let who = self
                .probe("/demo/tcp-echo")
                .unwrap_or_else(|e| format!("? ({e:#})"));
            format!("echoed \"hello mlb\"; an HTTP request on it was answered by {who}")
        });
        self.report(&format!("tcp  {tcp} /demo/tcp-echo"), r);
        let r = l
            .as_client(|| udp_request(udp))
            .map(|id| format!("answered by {id}"));
        self.report(&format!("udp  {udp} /demo/udp-echo"), r);
        for host in ["web.example.test", "api.example.test"] {
            let r = l
                .as_client(|| task_id(&http_get(http, host, "/")?))
                .map(|id| format!("answered by {id}"));
            self.report(&format!("http {http} Host: {host}"), r);
        }
        let ca = &self.certs.ca_der;
        let r = l
            .as_client(|| task_id(&https_get(https, "secure.example.test", ca)?))
            .map(|id| format!("answered by {id} (certificate verified with the demo CA)"));
        self.report(&format!("tls  {https} secure.example.test"), r);
        let r = l.as_client(|| {
            let resp = http_get(http, "secure.example.test", "/")?;
            ensure!(
                resp.status == 301,
                "HTTP {} instead of a redirect",
                resp.status
            );
            Ok(format!(
                "{} → {}",
                resp.status,
                resp.header("location").unwrap_or("?")
            ))
        });
        self.report(&format!("http {http} Host: secure.example.test"), r);
    }

    /// Scales the demo apps to their next counts, waits until mlb routes the new tasks, prints
    /// them, and checks with real requests that only those tasks answer.
    fn scale_step(
        &mut self,
        rt: &tokio::runtime::Runtime,
        sim: &MarathonSim,
        step: usize,
    ) -> Result<()> {
        let mut changes = Vec::new();
        for (app, counts) in SCALED {
            let from = sim.running_tasks(app).len();
            let to = counts[step % counts.len()];
            changes.push((app, from, to));
        }
        let summary: Vec<String> = changes
            .iter()
            .map(|(app, from, to)| format!("{app} {from} → {to}"))
            .collect();
        println!(
            "{} scaling {} (Marathon API of the simulator)",
            self.ts(),
            summary.join(", ")
        );
        let t0 = Instant::now();
        rt.block_on(async {
            for (app, _, to) in &changes {
                tokio::time::timeout(Duration::from_secs(15), sim.scale(app, *to))
                    .await
                    .with_context(|| format!("scaling {app}: deployment not done in 15 s"))?
                    .with_context(|| format!("scaling {app}"))?;
            }
            anyhow::Ok(())
        })?;
        let deployed = t0.elapsed();
        for (app, _, to) in changes {
            let want: BTreeSet<String> = sim.running_tasks(app).into_iter().map(|t| t.id).collect();
            // Wait (≤ 10 s) until mlb's active backends are exactly the running tasks.
            let deadline = Instant::now() + Duration::from_secs(10);
            let backends = loop {
                let backends = mlb_backends(self.layout, app)?;
                let active: BTreeSet<String> = backends
                    .iter()
                    .filter(|b| b.2 == "active")
                    .map(|b| b.0.clone())
                    .collect();
                if active == want {
                    break backends;
                }
                if Instant::now() > deadline || stopping() {
                    self.failed += 1;
                    println!(
                        "  FAILED  {app}: mlb still routes to {active:?} 10 s after the deployment \
                         (running tasks: {want:?})"
                    );
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            let generation = admin_json(self.layout, "/_mlb/status")
                .map_or_else(|_| "?".into(), |s| s["generation"].to_string());
            let active: Vec<_> = backends.iter().filter(|b| b.2 == "active").collect();
            let others = backends.len() - active.len();
            println!(
                "  mlb routes {app} to {} backend{} (generation {generation}, {:.0} ms after \
                 the deployment){}:",
                active.len(),
                if active.len() == 1 { "" } else { "s" },
                (t0.elapsed() - deployed).as_secs_f64() * 1000.0,
                if others > 0 {
                    format!(", {others} draining")
                } else {
                    String::new()
                }
            );
            for (id, addr, _) in &active {
                println!("      {id} at {addr}");
            }
            // Real requests: each must be answered by one of the routed tasks.
            let mut answered = BTreeSet::new();
            let mut ok = 0;
            let tries = (2 * to).clamp(2, 8);
            for _ in 0..tries {
                match self.probe(app) {
                    Ok(id) if want.contains(&id) => {
                        ok += 1;
                        answered.insert(id);
                    }
                    Ok(id) => {
                        self.failed += 1;
                        println!("  FAILED  {app}: answered by {id}, which is not running");
                    }
                    Err(e) => {
                        self.failed += 1;
                        println!("  FAILED  {app}: request: {e:#}");
                    }
                }
            }
            println!(
                "  {ok}/{tries} requests to {app} answered, by {}",
                answered.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        Ok(())
    }
}

fn banner(
    layout: &Layout,
    mlb_bin: &Path,
    mlb: &Mlb,
    sim_url: &str,
    used: &(String, String),
    certs: &Certs,
) {
    let cli = layout.client_prefix();
    let lbx = layout.lb_prefix();
    let vip = layout.vip;
    let http = layout.url(layout.http_port, 80);
    let tls_port = layout.https_port;
    let tls_url = if tls_port == 443 {
        "https://secure.example.test/".to_owned()
    } else {
        format!("https://secure.example.test:{tls_port}/")
    };
    println!("================================ mlb demo ================================");
    println!("dataplane:  {} ({})", used.0, used.1);
    match &layout.ns {
        Some(ns) => println!(
            "namespaces: client {} ({CLIENT_ADDR}), lb {} (VIP {VIP}, SNAT {SNAT}), backends {} \
             (agents {})",
            ns.cli.name(),
            ns.lb.name(),
            ns._be.name(),
            AGENTS.join(", ")
        ),
        None => println!("network:    loopback (VIP {vip}), task listeners on 127.0.0.1"),
    }
    println!(
        "Marathon:   {sim_url} (simulator{}), apps /demo/tcp-echo /demo/udp-echo /demo/web \
         /demo/api /demo/secure in HAPROXY_GROUP=external",
        if layout.ns.is_some() {
            " in the lb namespace"
        } else {
            ""
        }
    );
    println!(
        "mlb:        pid {}, log {}",
        mlb.child.pid(),
        mlb.log.display()
    );
    println!("admin:      {lbx}curl http://{}/_mlb/status", layout.admin);
    println!(
        "explain:    {lbx}{} explain --admin-addr {} [/demo/web]",
        mlb_bin.display(),
        layout.admin
    );
    println!();
    println!("Try, from another terminal:");
    println!("  {cli}curl -H 'Host: web.example.test' http://{http}/");
    println!("  {cli}curl -H 'Host: api.example.test' http://{http}/");
    println!(
        "  {cli}curl --cacert {} --resolve secure.example.test:{tls_port}:{vip} {tls_url}",
        certs.ca_file.display()
    );
    println!(
        "  {cli}curl -i -H 'Host: secure.example.test' http://{http}/     # redirect to https"
    );
    println!("  {cli}nc {vip} 10001                      # TCP echo: type a line, get it back");
    println!("  {cli}curl http://{vip}:10001/            # the same TCP service; the task answers");
    println!("  echo hi | {cli}nc -u -w1 {vip} 10002     # UDP: answered with the task id");
    println!("==========================================================================");
}

/// The demo; returns how many checks failed.
fn run(args: &Args) -> Result<usize> {
    ensure!(
        args.scale_every >= 0.5,
        "--scale-every must be at least 0.5 s"
    );
    let mlb_bin = mlb_path(args)?;
    let root = can_use_netns_and_bpf();
    let use_ns = match args.dataplane {
        DemoDataplane::Userspace => false,
        DemoDataplane::Auto => root,
        DemoDataplane::Xdp => {
            ensure!(
                root,
                "--dataplane xdp needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF) for namespaces \
                 and XDP; without, use --dataplane userspace"
            );
            true
        }
    };
    // Drop order (reverse of declaration): mlb, simulator, runtime, namespaces, work directory.
    let work = WorkDir::new()?;
    let certs = make_certs(&work.0).context("making the demo certificates")?;
    let layout = if use_ns {
        Layout::namespaces()?
    } else {
        Layout::loopback()?
    };
    if let Some(ns) = &layout.ns {
        // Before the runtime starts its threads: they inherit the namespace.
        enter_for_good(&ns.lb)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let apps: Vec<Value> = serde_json::from_str(SAMPLE_APPS_JSON)?;
    let sim = rt
        .block_on(MarathonSim::start(SimConfig {
            listen: layout.sim_listen,
            agents: layout.agents.clone(),
            apps,
            ..SimConfig::default()
        }))
        .context("starting the Marathon simulator")?;
    let sim_url = sim.url();
    let mode = match args.dataplane {
        DemoDataplane::Xdp => "xdp",
        DemoDataplane::Auto if use_ns => "auto",
        _ => "userspace",
    };
    let mut mlb = Mlb::start(&mlb_bin, &layout, &sim_url, mode, &certs, &work.0)?;
    if !mlb.wait_ready(&layout)? {
        println!("stopping (signal during start-up)");
        mlb.stop()?;
        rt.block_on(sim.shutdown());
        return Ok(0);
    }
    let used = dataplane_used(&layout, args.dataplane, &mlb.log());
    banner(&layout, &mlb_bin, &mlb, &sim_url, &used, &certs);
    let mut demo = Demo {
        layout: &layout,
        certs: &certs,
        start: Instant::now(),
        failed: 0,
    };
    demo.check_all();
    let end = args
        .duration
        .map(|d| demo.start + Duration::from_secs_f64(d.max(0.0)));
    match end {
        Some(_) => println!(
            "Scaling /demo/web and /demo/tcp-echo every {} s for {} s (Ctrl-C stops):",
            args.scale_every,
            args.duration.unwrap_or_default()
        ),
        None => println!(
            "Scaling /demo/web and /demo/tcp-echo every {} s; Ctrl-C stops the demo:",
            args.scale_every
        ),
    }
    let every = Duration::from_secs_f64(args.scale_every);
    let mut next = Instant::now() + every;
    let mut step = 0;
    loop {
        let wake = end.map_or(next, |e| e.min(next));
        if !sleep_until(wake) || end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
        if let Some(status) = mlb.exited()? {
            bail!("mlb exited ({status}):\n{}", mlb.log_tail());
        }
        if let Err(e) = demo.scale_step(&rt, &sim, step) {
            demo.failed += 1;
            println!("  FAILED  scale change: {e:#}");
        }
        step += 1;
        next = Instant::now() + every;
    }
    let failed = demo.failed;
    println!(
        "{} stopping: {step} scale change(s), mlb pid {} ran throughout without a reload",
        demo.ts(),
        mlb.child.pid()
    );
    mlb.stop()?;
    rt.block_on(sim.shutdown());
    drop(layout);
    println!(
        "stopped mlb and the simulator{}",
        if use_ns {
            ", deleted the namespaces"
        } else {
            ""
        }
    );
    Ok(failed)
}
