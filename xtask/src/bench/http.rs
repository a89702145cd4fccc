//! `cargo xtask bench http`: the L7 proxy against HAProxy `mode http` (marathon-lb's vhost
//! frontend shape) and against no load balancer at all, in the lab of every namespace bench
//! ([`super::lab`]: the topology and CPU placement; cases interleaved per round, each load
//! balancer started afresh every round; medians of the rounds):
//!
//! - HTTP/1.1 ([`super::wrk`]): keep-alive req/s with p50/p99, new connections/s
//!   (`Connection: close`), LB CPU busy %; ratios to "direct" (kernel routing through lb);
//! - for HAProxy and mlb (direct has no TLS), on `:443` with an ECDSA P-256 certificate made
//!   here with rcgen (chain + key in one PEM: HAProxy's `crt`, mlb's `--ssl-certs`), ratios to
//!   HAProxy:
//!   - new TLS handshakes/s: [`super::tls_client`] (the release build of xtask), 32 blocking
//!     connections on cpu0, every one a full handshake and one `GET` with `Connection: close`.
//!     HAProxy's stats socket confirms it: its session reuse % is in the report;
//!   - HTTP/2 req/s and p99: `h2load -c32 -m10 -D<secs>` (ALPN h2; p99 from its request log);
//!   - TLS keep-alive req/s: `h2load --h1 -c32 -D<secs>` (HTTP/1.1 over TLS, one handshake per
//!     connection);
//! - two cores for the load balancer (HAProxy `nbthread 2`, mlb `--threads 2`), HTTP/1.1 only:
//!   ratios to HAProxy with as many threads and to the same load balancer's one-core run. The
//!   client and backends then share those cores: on a 2-core machine the figures say how well
//!   the load balancer shares, not how far it scales;
//! - with `--lb-cpu-quota <PERCENT>`, every load balancer is capped at that share of a CPU per
//!   thread ([`super::cpu_quota`]): once a load balancer needs less than its core, cpu0 (client
//!   and backends) sets the rate for all of them alike, and the cap makes the load balancer the
//!   limit again;
//! - with more than one round, each round's ratios to HAProxy beside the medians' (how far a
//!   ratio moves between rounds on this machine).
//!
//! - beside each one-core case, what a request costs ([`super::cost`]): LB CPU µs, context
//!   switches (syscalls with `--profile`), packets on lb's client and backend legs, both CPUs'
//!   busy share (`--h1-only`: only these cases, without TLS), and the same per request of the
//!   h2 and TLS keep-alive runs;
//!   `--profile` adds each LB's hottest symbols in each of those runs and writes their
//!   flamegraphs ([`super::flamegraph`]) to `bench-results/`, `--baseline <binary>`
//!   runs another build of the proxy as one more case (before/after in one run).
//!
//! Any failed measurement fails the run. No bulk (iperf3) case: it says nothing about an HTTP
//! proxy.
use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use super::{
    Artifact, CONNECTIONS, HttpArgs, build_release,
    cost::{Cost, Probe},
    cpu,
    cpu_quota::CpuQuota,
    lab::{self, BACKEND_IPS, Lab, NS_CLI, NS_LB, VIP},
    nginx, probe,
    profile::Profile,
    stats::{median, percentile},
    wrk::{WrkLoad, wrk},
};

/// The virtual host both load balancers route (`Host` header and SNI).
pub const VHOST: &str = "app.example.com";
/// The load balancers' HTTPS port on the VIP (HTTP is on the backends' port).
const TLS_PORT: u16 = 443;
/// HTTP/2 streams in flight per connection (`h2load -m`).
const H2_STREAMS: u32 = 10;

/// Runs the benchmark, prints the table and writes it to `bench-results/http-<time>.md`.
pub fn run(args: &HttpArgs) -> Result<()> {
    let tools = [
        "wrk", "h2load", "haproxy", "nginx", "curl", "taskset", "ethtool",
    ];
    super::prepare("bench http", &tools)?;
    let bins = Binaries::build()?;
    let (rounds, secs) = if args.quick {
        (1, 3)
    } else {
        (args.rounds.max(1) as usize, 10)
    };
    let mut lab = Lab::create()?;
    // What lb sends is the network's and the receivers' work, not the LB's (as in `bench tcp`).
    lab.network_off_lb_cpu()?;
    let setup = Setup::write(&lab, bins, secs, args)?;
    let www = lab.path("www");
    fs::create_dir_all(&www)?;
    fs::write(www.join("index.html"), "hello from the bench backend\n")?;
    nginx::start(&mut lab, &www, "")?;
    if args.slow_reader {
        let body = super::slow_reader::write_body(&www)?;
        let report = slow_reader_report(&mut lab, &setup, body)?;
        drop(lab);
        println!("{report}");
        return super::write_report("http-slow-reader", &report).map(drop);
    }
    if let Some(conns) = args.memory {
        let report = memory_report(&mut lab, &setup, conns)?;
        drop(lab);
        println!("{report}");
        return super::write_report("http-memory", &report).map(drop);
    }
    let results = run_rounds(&mut lab, &setup, rounds, args.h1_only)?;
    drop(lab);
    let quota = setup.quota.as_ref().map(|(_, percent)| *percent);
    let report = report(&results, rounds, secs, quota)?;
    println!("{report}");
    super::write_report("http", &report).map(drop)
}

/// The release binaries the benchmark runs.
struct Binaries {
    /// The HTTP proxy alone (the `l7_bench_proxy` example).
    proxy: PathBuf,
    /// This program, for the TLS handshake client.
    xtask: PathBuf,
}

impl Binaries {
    fn build() -> Result<Binaries> {
        Ok(Binaries {
            proxy: build_release("mlb-userspace", Artifact::Example, "l7_bench_proxy")?,
            // The TLS handshake client runs from the release build (rustls and ring's C at
            // -O0 would make the client, not the load balancer, the limit).
            xtask: build_release("xtask", Artifact::Bin, "xtask")?,
        })
    }
}

/// What every case's measurement needs.
struct Setup {
    bins: Binaries,
    /// Chain and key in one PEM.
    cert: PathBuf,
    haproxy_cfg: PathBuf,
    /// The same with `nbthread 2`.
    haproxy2_cfg: PathBuf,
    /// The lab's work directory (HAProxy's stats socket, h2load's request log).
    dir: PathBuf,
    secs: u32,
    /// Another build of the bench proxy, run as one more case (`--baseline`).
    baseline: Option<PathBuf>,
    /// Profile the load balancers during the keep-alive runs (`--profile`): where their
    /// flamegraphs go.
    flamegraphs: Option<PathBuf>,
    /// The cgroup every load balancer runs in and its % of a CPU per thread
    /// (`--lb-cpu-quota`).
    quota: Option<(CpuQuota, u32)>,
}

impl Setup {
    fn write(lab: &Lab, bins: Binaries, secs: u32, args: &HttpArgs) -> Result<Setup> {
        let cert = write_cert(&lab.dir)?;
        let haproxy_cfg = write_haproxy_config(&lab.dir, &cert, 1, HAPROXY_MAXCONN)?;
        let haproxy2_cfg = write_haproxy_config(&lab.dir, &cert, 2, HAPROXY_MAXCONN)?;
        Ok(Setup {
            bins,
            cert,
            haproxy_cfg,
            haproxy2_cfg,
            dir: lab.dir.clone(),
            secs,
            baseline: args.baseline.clone(),
            flamegraphs: args.profile.then(flamegraph_dir).transpose()?,
            quota: args
                .lb_cpu_quota
                .map(|percent| CpuQuota::create("mlb-bench-lb").map(|q| (q, percent)))
                .transpose()?,
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    Direct,
    Haproxy,
    Mlb,
    /// The `--baseline` build of the bench proxy, like [`Case::Mlb`].
    MlbBaseline,
    /// HAProxy `nbthread 2` on both CPUs.
    Haproxy2,
    /// mlb `--threads 2` on both CPUs.
    Mlb2,
    /// mlb without `--threads` (its default) on both CPUs: the proxy shares the multi-thread
    /// runtime, a worker per CPU (`bench http --memory` only).
    MlbShared,
}

/// The cases in the order they run in every round and appear in the table.
const CASES: [Case; 6] = [
    Case::Direct,
    Case::Haproxy,
    Case::Mlb,
    Case::MlbBaseline,
    Case::Haproxy2,
    Case::Mlb2,
];

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Direct => "direct (routing only)",
            Case::Haproxy => "HAProxy mode http + Host",
            Case::Mlb => "mlb L7 proxy",
            Case::MlbBaseline => "mlb L7 proxy, --baseline build",
            Case::Haproxy2 => "HAProxy, 2 cores (nbthread 2)",
            Case::Mlb2 => "mlb L7 proxy, 2 cores (--threads 2)",
            Case::MlbShared => "mlb L7 proxy, default threads (shared runtime, 2 cores)",
        }
    }

    /// The CPUs of its load balancer (`taskset -c`) and its thread count.
    fn cpus(self) -> (&'static str, &'static str) {
        match self {
            Case::Haproxy2 | Case::Mlb2 => ("0-1", "2"),
            Case::MlbShared => ("0-1", "0"),
            _ => ("1", "1"),
        }
    }

    /// A file-name-safe name (profile data, flamegraphs).
    fn slug(self) -> &'static str {
        match self {
            Case::Direct => "direct",
            Case::Haproxy => "haproxy",
            Case::Mlb => "mlb",
            Case::MlbBaseline => "mlb-baseline",
            Case::Haproxy2 => "haproxy2",
            Case::Mlb2 => "mlb2",
            Case::MlbShared => "mlb-shared",
        }
    }

    /// What its figures are compared with: HAProxy with the same cores.
    fn reference(self) -> Case {
        match self {
            Case::Haproxy2 | Case::Mlb2 | Case::MlbShared => Case::Haproxy2,
            _ => Case::Haproxy,
        }
    }
}

/// One round of one case.
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
    /// HTTP/1.1 over TLS, keep-alive.
    tls_ka_rps: Option<f64>,
    haproxy_reuse_pct: Option<f64>,
    /// Per request of the keep-alive run, and per connection of the `Connection: close` run.
    keep_alive_cost: Cost,
    close_cost: Cost,
    /// Where the LB's time went in the keep-alive run (`--profile`).
    hot: Hot,
    /// Per request of the h2 and the TLS keep-alive runs (TLS cases only).
    h2_cost: Option<Cost>,
    tls_ka_cost: Option<Cost>,
    /// Where the LB's time went in the h2 and TLS keep-alive runs (`--profile`).
    hot_h2: Hot,
    hot_tls_ka: Hot,
}

impl Sample {
    /// The median of every metric over the rounds (`None` for no rounds); a TLS metric only
    /// when every round has it.
    fn median_of(samples: &[Sample]) -> Option<Sample> {
        let of =
            |metric: fn(&Sample) -> f64| median(&samples.iter().map(metric).collect::<Vec<_>>());
        let of_tls = |metric: fn(&Sample) -> Option<f64>| {
            let values: Option<Vec<f64>> = samples.iter().map(metric).collect();
            median(&values?)
        };
        Some(Sample {
            rps: of(|s| s.rps)?,
            p50_ms: of(|s| s.p50_ms)?,
            p99_ms: of(|s| s.p99_ms)?,
            conn_rps: of(|s| s.conn_rps)?,
            cpu_pct: of(|s| s.cpu_pct)?,
            tls_hs_rps: of_tls(|s| s.tls_hs_rps),
            tls_cpu_pct: of_tls(|s| s.tls_cpu_pct),
            tls_suite: None,
            h2_rps: of_tls(|s| s.h2_rps),
            h2_p99_ms: of_tls(|s| s.h2_p99_ms),
            tls_ka_rps: of_tls(|s| s.tls_ka_rps),
            haproxy_reuse_pct: None,
            keep_alive_cost: Cost::median_of(
                &samples
                    .iter()
                    .map(|s| s.keep_alive_cost)
                    .collect::<Vec<_>>(),
            ),
            close_cost: Cost::median_of(&samples.iter().map(|s| s.close_cost).collect::<Vec<_>>()),
            hot: samples.last().map(|s| s.hot.clone()).unwrap_or_default(),
            h2_cost: tls_cost_median(samples, |s| s.h2_cost),
            tls_ka_cost: tls_cost_median(samples, |s| s.tls_ka_cost),
            hot_h2: samples.last().map(|s| s.hot_h2.clone()).unwrap_or_default(),
            hot_tls_ka: samples
                .last()
                .map(|s| s.hot_tls_ka.clone())
                .unwrap_or_default(),
        })
    }
}

/// The median of a TLS run's cost over rounds, when every round has it.
fn tls_cost_median(samples: &[Sample], cost: fn(&Sample) -> Option<Cost>) -> Option<Cost> {
    let costs: Option<Vec<Cost>> = samples.iter().map(cost).collect();
    costs.filter(|c| !c.is_empty()).map(|c| Cost::median_of(&c))
}

/// Every round runs every case once; the samples of each case, in [`CASES`] order.
/// With `h1_only`, only the one-core cases, without TLS (their other cases stay empty).
fn run_rounds(
    lab: &mut Lab,
    setup: &Setup,
    rounds: usize,
    h1_only: bool,
) -> Result<Vec<Vec<Sample>>> {
    let mut results = vec![Vec::new(); CASES.len()];
    for round in 1..=rounds {
        for (case, samples) in CASES.iter().zip(&mut results) {
            let skipped = (h1_only && case.cpus().1 != "1")
                || (*case == Case::MlbBaseline && setup.baseline.is_none());
            if skipped {
                continue;
            }
            eprintln!("bench http: round {round}/{rounds}: {}", case.name());
            samples.push(measure(lab, *case, setup, !h1_only)?);
        }
    }
    Ok(results)
}

/// Starts the case's load balancer, measures through it and stops it.
fn measure(lab: &mut Lab, case: Case, setup: &Setup, tls: bool) -> Result<Sample> {
    lab.set_forwarding(case == Case::Direct)?;
    let lb = start_lb(lab, case, setup)?;
    let sample = measure_started(lab, case, lb, setup, tls);
    if let Some(pid) = lb {
        lab.stop(pid);
    }
    sample
}

/// Starts the case's load balancer in lb on cpu1; its PID (none for direct).
fn start_lb(lab: &mut Lab, case: Case, setup: &Setup) -> Result<Option<u32>> {
    let haproxy_cfg = setup.haproxy_cfg.to_string_lossy();
    let proxy = setup.bins.proxy.to_string_lossy();
    let cert = setup.cert.to_string_lossy();
    let listen = format!("{VIP}:{}", nginx::PORT);
    let [be1, be2] = BACKEND_IPS.map(|ip| format!("{ip}:{}", nginx::PORT));
    let haproxy2_cfg = setup.haproxy2_cfg.to_string_lossy();
    let (cpus, threads) = case.cpus();
    let (name, args) = match case {
        Case::Direct => return Ok(None),
        Case::Haproxy => ("haproxy", vec!["haproxy", "-db", "-f", &haproxy_cfg]),
        Case::Haproxy2 => ("haproxy", vec!["haproxy", "-db", "-f", &haproxy2_cfg]),
        Case::Mlb | Case::Mlb2 | Case::MlbBaseline | Case::MlbShared => (
            "mlb-l7",
            // As many proxy threads as HAProxy's `nbthread`.
            vec![
                match (case, &setup.baseline) {
                    (Case::MlbBaseline, Some(path)) => path.to_str().context("baseline path")?,
                    _ => &proxy,
                },
                "--ssl-certs",
                &cert,
                &listen,
                VHOST,
                threads,
                &be1,
                &be2,
            ],
        ),
    };
    let pid = lab.spawn_on_cpus(name, NS_LB, cpus, &args)?;
    if let Some((quota, percent)) = &setup.quota {
        // The same share of a CPU per core it may use.
        let cores = if cpus.contains('-') { 2 } else { 1 };
        quota.set_percent(percent * cores)?;
        quota.add(pid)?;
    }
    Ok(Some(pid))
}

/// Measures a started case: HTTP/1.1, then TLS and h2 when there is a load balancer.
fn measure_started(
    lab: &mut Lab,
    case: Case,
    lb: Option<u32>,
    setup: &Setup,
    tls: bool,
) -> Result<Sample> {
    let host = if lb.is_some() { VIP } else { BACKEND_IPS[0] };
    let url = format!("http://{host}:{}/", nginx::PORT);
    let host_header = format!("Host: {VHOST}");
    probe::wait_for_200(lab, lb, NS_CLI, &["-H", &host_header, &url])
        .with_context(|| format!("{}: no answer from {url}", case.name()))?;
    let mut sample = measure_http1(&url, lb, setup, case)?;
    if let Some(pid) = lb
        && case.cpus().1 == "1"
        && tls
    {
        measure_tls(lab, case, pid, setup, &mut sample)?;
    }
    Ok(sample)
}

/// wrk keep-alive and `Connection: close`, with the LB's CPU during the keep-alive run and
/// what a request costs in each; with `--profile`, where the LB's time went in the keep-alive
/// run.
fn measure_http1(url: &str, lb: Option<u32>, setup: &Setup, case: Case) -> Result<Sample> {
    let secs = setup.secs;
    let profiling = setup.flamegraphs.is_some();
    let load = |close| WrkLoad {
        host: Some(VHOST),
        strict: true,
        ..WrkLoad::standard(url, secs, close)
    };
    let run = ProfiledRun::new(case, "keep-alive");
    let profiler = lb.map(|pid| run.start(pid, setup)).transpose()?.flatten();
    let probe = Probe::start(lb, secs, profiling)?;
    let keep_alive = wrk(&load(false))?;
    let keep_alive_cost = probe.finish(keep_alive.requests)?;
    let hot = run.finish(profiler, setup)?;
    let probe = Probe::start(lb, secs, profiling)?;
    let close = wrk(&load(true))?;
    let close_cost = probe.finish(close.requests)?;
    let cpu_pct = keep_alive_cost
        .cpu_us
        .map_or(0.0, |us| us * keep_alive.rps / 1e4);
    Ok(Sample {
        rps: keep_alive.rps,
        p50_ms: keep_alive
            .p50_ms
            .context("no 50% latency in wrk's output")?,
        p99_ms: keep_alive
            .p99_ms
            .context("no 99% latency in wrk's output")?,
        conn_rps: close.rps,
        cpu_pct,
        keep_alive_cost,
        close_cost,
        hot,
        ..Sample::default()
    })
}

/// New TLS handshakes/s with the LB's CPU (and HAProxy's session reuse), then h2 over TLS.
fn measure_tls(
    lab: &mut Lab,
    case: Case,
    pid: u32,
    setup: &Setup,
    sample: &mut Sample,
) -> Result<()> {
    let target = format!("{VIP}:{TLS_PORT}");
    let connect_to = format!("{VHOST}:{TLS_PORT}:{target}");
    let url = format!("https://{VHOST}/");
    probe::wait_for_200(
        lab,
        Some(pid),
        NS_CLI,
        &["-k", "--connect-to", &connect_to, &url],
    )
    .with_context(|| format!("{}: no HTTPS answer from {target}", case.name()))?;
    let before = cpu::process_secs(pid)?;
    let start = Instant::now();
    let (hs_rps, suite) = tls_handshakes(&setup.bins.xtask, &target, setup.secs)?;
    let after = cpu::process_secs(pid)?;
    sample.tls_cpu_pct = Some(busy_pct(before, after, start.elapsed().as_secs_f64()));
    sample.tls_hs_rps = Some(hs_rps);
    sample.tls_suite = Some(suite);
    if case == Case::Haproxy {
        sample.haproxy_reuse_pct = Some(haproxy_reuse_pct(&setup.dir)?);
    }
    let h2 = h2load_probed(&target, pid, setup, case, H2load::H2)?;
    sample.h2_rps = Some(h2.rps);
    sample.h2_p99_ms = Some(h2.p99_ms);
    sample.h2_cost = Some(h2.cost);
    sample.hot_h2 = h2.hot;
    let ka = h2load_probed(&target, pid, setup, case, H2load::Http1)?;
    sample.tls_ka_rps = Some(ka.rps);
    sample.tls_ka_cost = Some(ka.cost);
    sample.hot_tls_ka = ka.hot;
    Ok(())
}

/// One h2load run with what it cost the LB.
struct H2loadRun {
    rps: f64,
    p99_ms: f64,
    cost: Cost,
    hot: Hot,
}

/// [`h2load`] with the LB's cost per request and, with `--profile`, where its time went.
fn h2load_probed(
    target: &str,
    pid: u32,
    setup: &Setup,
    case: Case,
    protocol: H2load,
) -> Result<H2loadRun> {
    let run = ProfiledRun::new(case, protocol.slug());
    let profiler = run.start(pid, setup)?;
    let probe = Probe::start(Some(pid), setup.secs, setup.flamegraphs.is_some())?;
    let (rps, p99_ms, requests) = h2load(target, setup.secs, &setup.dir, protocol)?;
    let cost = probe.finish(requests)?;
    let hot = run.finish(profiler, setup)?;
    Ok(H2loadRun {
        rps,
        p99_ms,
        cost,
        hot,
    })
}

/// Where a load balancer's time went in one run (`--profile`): its hottest symbols by self
/// time, and the flamegraph of the run.
#[derive(Clone, Debug, Default)]
struct Hot {
    symbols: Vec<String>,
    flamegraph: Option<PathBuf>,
}

impl Hot {
    /// The report's section for it, headed `heading`; empty without a profile.
    fn section(&self, heading: &str) -> String {
        let mut o = String::new();
        if !self.symbols.is_empty() {
            o += &format!(
                "\n{heading}, hottest symbols (`perf record`, last round):\n\n```\n{}\n```\n",
                self.symbols.join("\n")
            );
        }
        if let Some(svg) = &self.flamegraph {
            o += &format!(
                "\n{heading}, flamegraph (last round): `{}`\n",
                svg.display()
            );
        }
        o
    }
}

/// One load run of one case that `--profile` profiles, by its names.
struct ProfiledRun {
    case: Case,
    /// `keep-alive`, `h2`, `tls-keep-alive`.
    run: &'static str,
}

impl ProfiledRun {
    fn new(case: Case, run: &'static str) -> ProfiledRun {
        ProfiledRun { case, run }
    }

    fn file_name(&self) -> String {
        format!("{}-{}", self.case.slug(), self.run)
    }

    /// With `--profile`, `perf record` of the LB `pid`, with call graphs for the flamegraph.
    fn start(&self, pid: u32, setup: &Setup) -> Result<Option<Profile>> {
        if setup.flamegraphs.is_none() {
            return Ok(None);
        }
        Profile::start(pid, &setup.dir, &self.file_name(), true).map(Some)
    }

    /// Stops `profiler`: the hottest symbols, and the flamegraph in the flamegraph directory.
    fn finish(&self, profiler: Option<Profile>, setup: &Setup) -> Result<Hot> {
        let (Some(profiler), Some(dir)) = (profiler, &setup.flamegraphs) else {
            return Ok(Hot::default());
        };
        let svg = dir.join(format!("{}.svg", self.file_name()));
        let title = format!("{}, {}", self.case.name(), self.run);
        let (symbols, flamegraph) = profiler.finish_with_flamegraph(&svg, &title)?;
        Ok(Hot {
            symbols,
            flamegraph,
        })
    }
}

/// `bench-results/http-<UTC time>-flamegraphs`, created.
fn flamegraph_dir() -> Result<PathBuf> {
    let stamp = lab::run(&["date", "-u", "+%Y%m%d-%H%M%S"])?;
    let dir = super::workspace_root()
        .join("bench-results")
        .join(format!("http-{}-flamegraphs", stamp.trim()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A process's CPU busy % from its CPU seconds before and after `secs` of wall time.
fn busy_pct(before: f64, after: f64, secs: f64) -> f64 {
    100.0 * (after - before) / secs
}

/// `(handshakes/s, negotiated suite)` from [`super::tls_client`] run in cli on cpu0.
fn tls_handshakes(xtask: &Path, target: &str, secs: u32) -> Result<(f64, String)> {
    let out = Command::new("ip")
        .args(["netns", "exec", NS_CLI, "taskset", "-c", "0"])
        .args(["timeout", &(secs + 20).to_string()])
        .arg(xtask)
        .args(["bench", "tls-client", "--addr", target, "--secs"])
        .arg(secs.to_string())
        .args(["--conns", &CONNECTIONS.to_string()])
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

/// What `h2load` speaks over TLS.
#[derive(Clone, Copy, PartialEq, Eq)]
enum H2load {
    /// HTTP/2 (ALPN h2), [`H2_STREAMS`] streams in flight per connection.
    H2,
    /// HTTP/1.1 keep-alive (`--h1`), one request in flight per connection.
    Http1,
}

impl H2load {
    fn slug(self) -> &'static str {
        match self {
            H2load::H2 => "h2",
            H2load::Http1 => "tls-keep-alive",
        }
    }
}

/// `(req/s, p99 ms, requests)` of `h2load -c32 -D<secs>` over TLS (`-m10` for h2), in cli on
/// cpu0.
fn h2load(target: &str, secs: u32, dir: &Path, protocol: H2load) -> Result<(f64, f64, u64)> {
    let log = dir.join("h2load.log");
    let _ = fs::remove_file(&log);
    let (protocol_args, streams, alpn): (&[&str], u32, &str) = match protocol {
        H2load::H2 => (&[], H2_STREAMS, "h2"),
        H2load::Http1 => (&["--h1"], 1, "http/1.1"),
    };
    let out = Command::new("ip")
        .args(["netns", "exec", NS_CLI, "taskset", "-c", "0"])
        .args(["timeout", &(secs + 20).to_string(), "h2load"])
        .args(["-t1", &format!("-c{CONNECTIONS}"), &format!("-m{streams}")])
        .args(protocol_args)
        .args(["-D", &secs.to_string(), "--connect-to", target])
        .arg("--log-file")
        .arg(&log)
        .arg(format!("https://{VHOST}/"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let status_ok = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .is_some_and(|l| l.contains(" 0 3xx, 0 4xx, 0 5xx"));
    let protocol_ok = text.contains(&format!("Application protocol: {alpn}"));
    if !out.status.success() || !protocol_ok || !status_ok {
        bail!("h2load against {target} failed or saw errors:\n{text}");
    }
    let durations = h2load_durations_us(&log)?;
    let p99_us = percentile(&durations, 99.0).context("h2load wrote no request log")?;
    Ok((h2load_rps(&text)?, p99_us / 1000.0, durations.len() as u64))
}

/// req/s from h2load's `finished in 10.00s, 12345.67 req/s, ...`.
fn h2load_rps(text: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|v| v.strip_suffix(" req/s"))
        .context("no req/s in h2load output")?
        .parse()
        .context("h2load's req/s")
}

/// The durations (µs) in h2load's request log: one line per request, start (µs since the
/// epoch), status, duration (µs).
fn h2load_durations_us(log: &Path) -> Result<Vec<f64>> {
    Ok(fs::read_to_string(log)?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok())
        .collect())
}

/// HAProxy's `SslFrontendSessionReuse_pct` from its stats socket.
fn haproxy_reuse_pct(dir: &Path) -> Result<f64> {
    let mut sock = UnixStream::connect(dir.join("haproxy.sock"))?;
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

/// An ECDSA P-256 self-signed certificate for the vhost, chain + key in one PEM.
fn write_cert(dir: &Path) -> Result<PathBuf> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = rcgen::CertificateParams::new(vec![VHOST.to_owned()])?.self_signed(&key)?;
    let path = dir.join("cert.pem");
    fs::write(&path, format!("{}{}", cert.pem(), key.serialize_pem()))?;
    Ok(path)
}

/// HAProxy as marathon-lb configures it for one vhost app: `marathon_http_in` with a Host ACL,
/// `marathon_https_in` with an SNI ACL, and the app's backend with marathon-lb's
/// `BACKEND_HTTP_OPTIONS` (the `X-Forwarded-*` headers mlb adds too, so both do the same work
/// per request). Servers are kept alive: marathon-lb's default `option http-server-close` is
/// left out, as it would make HAProxy connect to a backend per request.
/// HAProxy's `maxconn` in the speed cases (far above their 32 connections).
const HAPROXY_MAXCONN: usize = 4096;

fn write_haproxy_config(dir: &Path, cert: &Path, threads: u32, maxconn: usize) -> Result<PathBuf> {
    let path = dir.join(format!("haproxy-{threads}.cfg"));
    let port = nginx::PORT;
    let servers: String = BACKEND_IPS
        .iter()
        .enumerate()
        .map(|(i, b)| format!("  server be{i} {b}:{port}\n"))
        .collect();
    fs::write(
        &path,
        format!(
            "global\n  nbthread {threads}\n  maxconn {maxconn}\n  stats socket {sock} level admin\n\
             defaults\n  mode http\n  timeout connect 3s\n  timeout client 30s\n  timeout server 30s\n\
             frontend marathon_http_in\n  bind {VIP}:{port}\n  acl host_app hdr(host) -i {VHOST}\n  use_backend app_10000 if host_app\n\
             frontend marathon_https_in\n  bind {VIP}:{TLS_PORT} ssl crt {cert} alpn h2,http/1.1\n  mode http\n\
             \x20 use_backend app_10000 if {{ ssl_fc_sni {VHOST} }}\n\
             backend app_10000\n  balance roundrobin\n  option forwardfor\n\
             \x20 http-request set-header X-Forwarded-Port %[dst_port]\n\
             \x20 http-request add-header X-Forwarded-Proto https if {{ ssl_fc }}\n{servers}",
            sock = dir.join("haproxy.sock").display(),
            cert = cert.display(),
        ),
    )?;
    Ok(path)
}

/// Resident memory per idle keep-alive connection, plain HTTP and TLS, of mlb and of HAProxy,
/// each started afresh.
fn memory_report(lab: &mut Lab, setup: &Setup, conns: usize) -> Result<String> {
    // HAProxy wants two descriptors per connection it admits (`maxconn`) and does not start
    // when the process may not have them: it gets as many connections as the limit allows.
    let haproxy_conns = conns.min(haproxy_maxconn_limit()?.saturating_sub(HAPROXY_SPARE_CONNS));
    write_haproxy_config(
        &lab.dir,
        &setup.cert,
        1,
        haproxy_conns + HAPROXY_SPARE_CONNS,
    )?;
    let mut o = String::new();
    writeln!(o, "# mlb bench http --memory\n")?;
    writeln!(
        o,
        "mlb (one thread, cpu1; and with its default threads, the proxy on the shared \
         runtime with a worker per CPU, cpu0-1) and HAProxy (`nbthread 1`, cpu1); that many \
         client connections from cli, each one keep-alive `GET /` answered, then all held \
         idle; the load balancer's VmRSS before they open and 2 s after the last answer. \
         HAProxy holds as many as its descriptor limit lets it admit (`maxconn`).\n"
    )?;
    writeln!(
        o,
        "| case | connections | RSS before MiB | RSS held MiB | per connection KiB | all connections MiB |"
    )?;
    writeln!(o, "|---|---|---|---|---|---|")?;
    for (case, name, port, tls) in [
        (Case::Mlb, "mlb, plain HTTP/1.1", nginx::PORT, false),
        (Case::Haproxy, "HAProxy, plain HTTP/1.1", nginx::PORT, false),
        (Case::Mlb, "mlb, HTTP/1.1 over TLS", TLS_PORT, true),
        (Case::Haproxy, "HAProxy, HTTP/1.1 over TLS", TLS_PORT, true),
        (
            Case::MlbShared,
            "mlb, plain HTTP/1.1, default threads",
            nginx::PORT,
            false,
        ),
    ] {
        eprintln!("bench http: memory: {name}");
        let n = if case == Case::Haproxy {
            haproxy_conns
        } else {
            conns
        };
        let pid = start_lb(lab, case, setup)?.context("the load balancer has a PID")?;
        let url = format!("http://{VIP}:{}/", nginx::PORT);
        let host_header = format!("Host: {VHOST}");
        probe::wait_for_200(lab, Some(pid), NS_CLI, &["-H", &host_header, &url])?;
        let target = format!("{VIP}:{port}");
        let held = super::idle::rss_with_idle_conns(&setup.bins.xtask, pid, &target, n, tls);
        lab.stop(pid);
        let (before, held) = held?;
        let delta = held.saturating_sub(before) as f64;
        let row = format!(
            "| {name} | {n} | {:.1} | {:.1} | {:.1} | {:.1} |",
            before as f64 / 1024.0,
            held as f64 / 1024.0,
            delta / n as f64,
            delta / 1024.0,
        );
        eprintln!("bench http: {row}");
        writeln!(o, "{row}")?;
    }
    Ok(o)
}

/// Connections HAProxy may have beyond the idle ones measured (the probe's, its backends').
const HAPROXY_SPARE_CONNS: usize = 64;

/// The most connections HAProxy admits under this process's hard descriptor limit (which it
/// inherits): two descriptors each, and 26 of its own (what HAProxy 2.6 adds).
fn haproxy_maxconn_limit() -> Result<usize> {
    let limits = fs::read_to_string("/proc/self/limits")?;
    let hard: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .context("no open-files limit in /proc/self/limits")?
        .parse()
        .unwrap_or(usize::MAX / 4);
    Ok(hard.saturating_sub(26) / 2)
}

/// mlb's resident memory while a slow client reads a large response through it.
fn slow_reader_report(lab: &mut Lab, setup: &Setup, body: &str) -> Result<String> {
    let pid = start_lb(lab, Case::Mlb, setup)?.context("mlb has a PID")?;
    let url = format!("http://{VIP}:{}/", nginx::PORT);
    let host_header = format!("Host: {VHOST}");
    probe::wait_for_200(lab, Some(pid), NS_CLI, &["-H", &host_header, &url])?;
    let row = super::slow_reader::measure(pid, &format!("{url}{body}"), VHOST);
    lab.stop(pid);
    let row = row?;
    let mut o = String::new();
    writeln!(o, "# mlb bench http --slow-reader\n")?;
    writeln!(
        o,
        "mlb (one thread, cpu1); one curl in cli reads a 1 GiB response from an nginx backend \
         through mlb at 64 MiB/s (`--limit-rate`); mlb's VmRSS before and its peak, sampled \
         every 100 ms while the client reads.\n"
    )?;
    writeln!(
        o,
        "| RSS before MiB | peak RSS MiB | growth MiB | client read MiB/s | seconds |"
    )?;
    writeln!(o, "|---|---|---|---|---|")?;
    writeln!(o, "{row}")?;
    Ok(o)
}

/// The report: how it was measured, the table of medians, HAProxy's session reuse.
fn report(results: &[Vec<Sample>], rounds: usize, secs: u32, quota: Option<u32>) -> Result<String> {
    let medians: Vec<Option<Sample>> = results.iter().map(|s| Sample::median_of(s)).collect();
    let mut o = String::new();
    writeln!(o, "# mlb bench http\n")?;
    writeln!(o, "{}", method(rounds, secs)?)?;
    if let Some(percent) = quota {
        writeln!(
            o,
            "**Load balancers capped at {percent} % of a CPU per thread** (`--lb-cpu-quota`: \
             a cgroup CPU quota in 10-ms periods, the same for each): the load balancer, not \
             cpu0, sets the rate, so the ratios compare what each one serves per CPU second \
             (cpu0 below 100 % in the cost table shows it). Latencies include the waits for \
             the next period.\n"
        )?;
    }
    writeln!(
        o,
        "| case | keep-alive req/s (× direct) | p50 ms | p99 ms (× direct) | new conn/s (× direct) \
         | LB CPU % keep-alive | new TLS handshakes/s (× HAProxy) | LB CPU % TLS | TLS suite \
         | h2 req/s (× HAProxy) | h2 p99 ms (× HAProxy) |"
    )?;
    writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    let one_core = |case| {
        medians[slot(case)]
            .as_ref()
            .context("a case without a round")
    };
    let (direct, haproxy) = (one_core(Case::Direct)?, one_core(Case::Haproxy)?);
    for (i, case) in CASES.iter().enumerate() {
        let suite = results[i].last().and_then(|s| s.tls_suite.as_deref());
        if let Some(m) = &medians[i] {
            writeln!(o, "{}", row(*case, m, direct, haproxy, suite))?;
        }
    }
    writeln!(o, "\n{}", cost_table(&medians)?)?;
    let reuse: Vec<String> = results[slot(Case::Haproxy)]
        .iter()
        .filter_map(|s| s.haproxy_reuse_pct.map(|p| format!("{p:.0} %")))
        .collect();
    if !reuse.is_empty() {
        writeln!(
            o,
            "\nHAProxy's TLS session reuse during the handshake runs (stats socket \
         `SslFrontendSessionReuse_pct`, per round): {} (0 %: every handshake was full).",
            reuse.join(", ")
        )?;
    }
    writeln!(o, "\n{}", vs_haproxy_table(&medians, quota)?)?;
    if rounds > 1 {
        writeln!(o, "{}", round_ratios_table(results)?)?;
    }
    // Other work on the machine skews every figure: say how much there was.
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    writeln!(
        o,
        "Load average at the end of the run (1, 5, 15 min): {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    Ok(o)
}

/// The targets' view: each load balancer against HAProxy with as many cores, and each one's
/// two-core figure against its own one-core figure. A capped two-core figure whose load
/// balancer stayed under 95 % of its quota was set by the client side (cpu0), not by the load
/// balancer: the scaling it shows is the machine's, and it says so.
fn vs_haproxy_table(medians: &[Option<Sample>], quota: Option<u32>) -> Result<String> {
    let mut o = String::new();
    writeln!(
        o,
        "| case | keep-alive req/s × HAProxy | p99 × HAProxy | new conn/s × HAProxy \
         | TLS keep-alive req/s (× HAProxy) | keep-alive req/s × own 1-core |"
    )?;
    writeln!(o, "|---|---|---|---|---|---|")?;
    for (case, one_core) in [
        (Case::Mlb, None),
        (Case::MlbBaseline, None),
        (Case::Haproxy2, Some(Case::Haproxy)),
        (Case::Mlb2, Some(Case::Mlb)),
    ] {
        let (Some(m), Some(h)) = (&medians[slot(case)], &medians[slot(case.reference())]) else {
            continue;
        };
        let tls_ka = match (m.tls_ka_rps, h.tls_ka_rps) {
            (Some(v), Some(r)) => format!("{v:.0} ({:.2})", v / r),
            _ => "n/a".to_owned(),
        };
        let scaling = match one_core.and_then(|c| medians[slot(c)].as_ref()) {
            Some(own) => format!("{:.2}{}", m.rps / own.rps, client_limited(m, quota, 2)),
            None => "n/a".to_owned(),
        };
        writeln!(
            o,
            "| {} | {:.2} | {:.2} | {:.2} | {tls_ka} | {scaling} |",
            case.name(),
            m.rps / h.rps,
            m.p99_ms / h.p99_ms,
            m.conn_rps / h.conn_rps,
        )?;
    }
    Ok(o)
}

/// A note for a capped figure whose load balancer used less than 95 % of its quota (`cores`
/// threads' worth): the load balancer did not set that rate.
fn client_limited(m: &Sample, quota: Option<u32>, cores: u32) -> String {
    match quota {
        Some(percent) if m.cpu_pct < 0.95 * f64::from(percent * cores) => format!(
            " (client-limited: LB at {:.0} % of its {} % quota)",
            m.cpu_pct,
            percent * cores
        ),
        _ => String::new(),
    }
}

/// One figure of a sample, if the sample has it.
type Metric = fn(&Sample) -> Option<f64>;

/// Each round's ratio to HAProxy with as many cores, in round order: the rounds are
/// interleaved, so this is how much a ratio moves from one round to the next on this machine
/// (the medians above can hide a ratio that crosses a target in one round only).
fn round_ratios_table(results: &[Vec<Sample>]) -> Result<String> {
    let metrics: [(&str, Metric); 7] = [
        ("keep-alive req/s", |s| Some(s.rps)),
        ("keep-alive p99", |s| Some(s.p99_ms)),
        ("new conn/s", |s| Some(s.conn_rps)),
        ("new TLS handshakes/s", |s| s.tls_hs_rps),
        ("TLS keep-alive req/s", |s| s.tls_ka_rps),
        ("h2 req/s", |s| s.h2_rps),
        ("h2 p99", |s| s.h2_p99_ms),
    ];
    let mut o = String::new();
    let names: Vec<&str> = metrics.iter().map(|(name, _)| *name).collect();
    writeln!(
        o,
        "Per round, × HAProxy (round 1, 2, …):\n\n| case | {} |",
        names.join(" | ")
    )?;
    writeln!(o, "|---|{}", "---|".repeat(metrics.len()))?;
    for case in [Case::Mlb, Case::MlbBaseline, Case::Mlb2] {
        let (rounds, reference) = (&results[slot(case)], &results[slot(case.reference())]);
        if rounds.is_empty() {
            continue;
        }
        let cells: Vec<String> = metrics
            .iter()
            .map(|(_, metric)| {
                let ratios: Option<Vec<String>> = rounds
                    .iter()
                    .zip(reference)
                    .map(|(m, h)| Some(format!("{:.2}", metric(m)? / metric(h)?)))
                    .collect();
                ratios.map_or("n/a".to_owned(), |r| r.join(", "))
            })
            .collect();
        writeln!(o, "| {} | {} |", case.name(), cells.join(" | "))?;
    }
    Ok(o)
}

/// What a request costs in each one-core case: the LB's share, and what it adds on the legs.
fn cost_table(medians: &[Option<Sample>]) -> Result<String> {
    let mut o = String::new();
    writeln!(
        o,
        "Per request (keep-alive) and per connection (`Connection: close`): LB CPU µs / LB \
         syscalls / LB context switches / packets on lb's client leg / on its backend leg \
         (rx + tx; `/proc` of the LB and `/proc/net/dev` of lb; syscalls only with `--profile`, \
         counted by `perf stat`, whose syscall tracepoint slows every process's syscalls) / busy \
         % of cpu0 (client, backends) / of cpu1 (the LB, lb's receive work) over the run: a \
         CPU near 100 % set the rate.\n"
    )?;
    writeln!(
        o,
        "| case | keep-alive, per request | close, per connection |"
    )?;
    writeln!(o, "|---|---|---|")?;
    let one_core = [Case::Direct, Case::Haproxy, Case::Mlb, Case::MlbBaseline];
    for case in one_core {
        if let Some(m) = &medians[slot(case)] {
            let (ka, close) = (m.keep_alive_cost.cell(), m.close_cost.cell());
            writeln!(o, "| {} | {ka} | {close} |", case.name())?;
        }
    }
    writeln!(o, "\n{}", tls_cost_table(medians)?)?;
    for case in one_core {
        if let Some(m) = &medians[slot(case)] {
            o += &m.hot.section(&format!("{} keep-alive", case.name()));
        }
    }
    Ok(o)
}

/// What a request costs the LB over TLS (h2 and HTTP/1.1 keep-alive), and with `--profile`
/// where that time goes.
fn tls_cost_table(medians: &[Option<Sample>]) -> Result<String> {
    let mut o = String::new();
    writeln!(
        o,
        "Per request over TLS (same columns): h2 (`h2load -m{H2_STREAMS}`) and HTTP/1.1 \
         keep-alive (`h2load --h1`).\n"
    )?;
    writeln!(
        o,
        "| case | h2, per request | TLS keep-alive, per request |"
    )?;
    writeln!(o, "|---|---|---|")?;
    let cases = [Case::Haproxy, Case::Mlb, Case::MlbBaseline];
    let cell = |c: Option<Cost>| c.map_or("n/a".to_owned(), |c| c.cell());
    for case in cases {
        if let Some(m) = &medians[slot(case)] {
            let (h2, ka) = (cell(m.h2_cost), cell(m.tls_ka_cost));
            writeln!(o, "| {} | {h2} | {ka} |", case.name())?;
        }
    }
    for case in cases {
        let Some(m) = &medians[slot(case)] else {
            continue;
        };
        for (run, hot) in [("h2", &m.hot_h2), ("TLS keep-alive", &m.hot_tls_ka)] {
            o += &hot.section(&format!("{} {run}", case.name()));
        }
    }
    Ok(o)
}

/// Where a case's samples are in the results.
fn slot(case: Case) -> usize {
    CASES
        .iter()
        .position(|&c| c == case)
        .expect("CASES holds every case")
}

/// How the figures were measured.
fn method(rounds: usize, secs: u32) -> Result<String> {
    let kernel = lab::run(&["uname", "-r"])?;
    Ok(format!(
        "Kernel {}; {rounds} round(s), cases interleaved, each load balancer started afresh \
         per round; medians. Client tools and nginx backends (one process each) on cpu0, the \
         load balancer (one thread) and lb's receive path on cpu1; what lb sends is received \
         (bridge, backends, client) on cpu0 (threaded NAPI of lb's veth peers), as a NIC would \
         hand it to the wire. HTTP/1.1: `wrk -t1 -c{CONNECTIONS} \
         -d{secs}s --latency` keep-alive, then with `Connection: close` (new TCP connections/s). \
         TLS (`:443`, ECDSA P-256 certificate, TLS 1.2/1.3 defaults of each side, ALPN \
         h2,http/1.1): new TLS handshakes/s = {CONNECTIONS} client connections for {secs} s, each a \
         fresh rustls client with session resumption disabled (a full handshake every time; the \
         client does not check the server's signature, to stay cheaper than the server), one `GET` + `Connection: close` per connection; h2 = `h2load -c{CONNECTIONS} -m{H2_STREAMS} \
         -D{secs}` (p99 from h2load's request log); TLS keep-alive = `h2load --h1 -c{CONNECTIONS} -D{secs}`. \
         2-core cases: the load balancer with 2 threads on cpu0-1, shared with the client and \
         backends, HTTP/1.1 only. HAProxy: `nbthread 1`, `mode http`, `:80` \
         Host ACL and `:443` `ssl_fc_sni` ACL (marathon-lb's `marathon_http_in` / \
         `marathon_https_in`), `alpn h2,http/1.1`, the backend with marathon-lb's \
         `option forwardfor` and `X-Forwarded-Port`/`-Proto` lines (mlb adds the same headers) \
         and servers kept alive (no `http-server-close`). \"direct\" is kernel routing to be1 (no \
         LB, no TLS: n/a). LB CPU % = the LB process's CPU time over the run. Compare ratios \
         from the same run, not absolute numbers across runs.\n",
        kernel.trim()
    ))
}

/// One row of the table: HTTP/1.1 against direct, TLS and h2 against HAProxy.
fn row(case: Case, m: &Sample, direct: &Sample, haproxy: &Sample, suite: Option<&str>) -> String {
    let vs_haproxy =
        |metric: fn(&Sample) -> Option<f64>, digits: usize| match (metric(m), metric(haproxy)) {
            (Some(v), Some(h)) => format!("{v:.digits$} ({:.2})", v / h),
            (Some(v), None) => format!("{v:.digits$}"),
            (None, _) => "n/a".to_owned(),
        };
    format!(
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
        vs_haproxy(|s| s.tls_hs_rps, 0),
        m.tls_cpu_pct
            .map_or("n/a".to_owned(), |v| format!("{v:.0}")),
        suite.unwrap_or("n/a"),
        vs_haproxy(|s| s.h2_rps, 0),
        vs_haproxy(|s| s.h2_p99_ms, 3),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rps: f64, tls_hs_rps: Option<f64>) -> Sample {
        Sample {
            rps,
            tls_hs_rps,
            ..Sample::default()
        }
    }

    #[test]
    fn a_capped_figure_under_its_quota_is_marked_client_limited() {
        let at = |cpu_pct| Sample {
            cpu_pct,
            ..Sample::default()
        };
        assert_eq!(
            client_limited(&at(36.0), Some(20), 2),
            " (client-limited: LB at 36 % of its 40 % quota)"
        );
        assert_eq!(client_limited(&at(39.0), Some(20), 2), "");
        assert_eq!(client_limited(&at(36.0), None, 2), "");
    }

    #[test]
    fn medians_of_rounds() {
        let two = [sample(100.0, Some(10.0)), sample(200.0, Some(30.0))];
        let m = Sample::median_of(&two).unwrap();
        assert_eq!(m.rps, 150.0);
        assert_eq!(m.tls_hs_rps, Some(20.0));
        let one_without_tls = [sample(100.0, Some(10.0)), sample(300.0, None)];
        assert_eq!(
            Sample::median_of(&one_without_tls).unwrap().tls_hs_rps,
            None
        );
        assert!(Sample::median_of(&[]).is_none());
    }

    #[test]
    fn ratios_to_haproxy_with_the_same_cores() {
        let m = |rps: f64, p99_ms: f64, conn_rps: f64, tls_ka_rps: Option<f64>| Sample {
            rps,
            p99_ms,
            conn_rps,
            tls_ka_rps,
            ..Sample::default()
        };
        let medians = [
            m(30.0, 1.0, 30.0, None),
            m(10.0, 2.0, 4.0, Some(8.0)),
            m(13.0, 1.0, 6.0, Some(10.0)),
            m(11.0, 1.0, 6.0, None),
            m(18.0, 2.0, 8.0, None),
            m(26.0, 1.0, 8.0, None),
        ]
        .map(Some);
        let table = vs_haproxy_table(&medians, None).unwrap();
        let row = |case: Case| {
            table
                .lines()
                .find(|l| l.starts_with(&format!("| {} |", case.name())))
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            row(Case::Mlb),
            "| mlb L7 proxy | 1.30 | 0.50 | 1.50 | 10 (1.25) | n/a |"
        );
        assert!(row(Case::Haproxy2).ends_with("| 1.00 | 1.00 | 1.00 | n/a | 1.80 |"));
        assert!(row(Case::Mlb2).ends_with("| 1.44 | 0.50 | 1.00 | n/a | 2.00 |"));
    }

    #[test]
    fn ratios_to_haproxy_round_by_round() {
        let s = |rps: f64, tls_hs_rps: Option<f64>| Sample {
            rps,
            p99_ms: 2.0,
            conn_rps: rps,
            tls_hs_rps,
            ..Sample::default()
        };
        let mut results = vec![Vec::new(); CASES.len()];
        results[slot(Case::Haproxy)] = vec![s(10.0, Some(5.0)), s(20.0, Some(5.0))];
        results[slot(Case::Mlb)] = vec![s(12.0, Some(10.0)), s(18.0, Some(15.0))];
        let table = round_ratios_table(&results).unwrap();
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| mlb")).collect();
        // Only the cases that ran; each round against the same round of HAProxy.
        assert_eq!(
            rows,
            [
                "| mlb L7 proxy | 1.20, 0.90 | 1.00, 1.00 | 1.20, 0.90 | 2.00, 3.00 | n/a | n/a | n/a |"
            ]
        );
    }

    #[test]
    fn reads_h2load_rate() {
        let out = "finished in 3.00s, 12345.67 req/s, 1.23MB/s\nrequests: 37037 total";
        assert_eq!(h2load_rps(out).unwrap(), 12345.67);
        assert!(h2load_rps("finished in 3.00s").is_err());
    }
}
