//! `cargo xtask bench`: load balancer benchmarks.
//!
//! `tcp` and `http` share one method and one harness ([`lab`]: network namespaces, processes;
//! [`wrk`]; [`stats`]): the client and the backends share cpu0 and the load balancer has cpu1
//! to itself (with its host's receive path), so that "direct", kernel routing through the LB
//! host with no load balancer, is the physical reference; every round runs each case once
//! (interleaved), starting its load balancer afresh; the tables show the medians of the rounds
//! and their ratios to a reference case of the same run. `sync` measures mlb alone against the
//! Marathon simulator on loopback.
mod churn;
mod cost;
mod cpu;
mod cpu_quota;
mod flamegraph;
mod http;
mod idle;
mod lab;
mod nginx;
mod offload;
mod probe;
mod profile;
mod slow_reader;
mod stats;
mod sync;
mod sync_front;
mod tcp;
mod tls_client;
mod wrk;

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};

/// Concurrent connections of every load generator.
const CONNECTIONS: u32 = 32;

/// Which benchmark to run.
#[derive(Subcommand)]
pub enum BenchCmd {
    /// Plain TCP: direct routing vs mlb XDP (full NAT, and direct server return) vs mlb
    /// userspace vs HAProxy mode tcp.
    Tcp(TcpArgs),
    /// HTTP: the mlb L7 proxy vs HAProxy `mode http` (Host ACL) vs direct routing; plain
    /// HTTP/1.1, new TLS handshakes/s (ECDSA P-256) and HTTP/2 over TLS.
    Http(HttpArgs),
    /// Internal: the TLS handshake load generator `bench http` runs in the client namespace.
    #[command(hide = true)]
    TlsClient(tls_client::TlsClientArgs),
    /// Internal: the idle keep-alive client of `bench http --memory`, run in the client
    /// namespace.
    #[command(hide = true)]
    IdleClient(idle::IdleClientArgs),
    /// Marathon sync at scale: full sync time and RSS, event → dataplane latency, a burst.
    Sync(SyncArgs),
    /// A fleet behind an ECMP router: new connections per second through 1 and through 2 mlb
    /// instances, interleaved (the `ecmp_bench` test of `tests/tests/fleet.rs`; needs root).
    Fleet,
}

/// Flags of `cargo xtask bench sync`.
#[derive(Args)]
pub struct SyncArgs {
    /// Smoke test: 1,000 apps, 50 events, a burst of 100.
    #[arg(long)]
    pub quick: bool,
    /// Apps in Marathon (one service port each, 10000 upwards).
    #[arg(long, default_value_t = 10_000)]
    pub apps: usize,
    /// Tasks per app.
    #[arg(long, default_value_t = 10)]
    pub tasks: usize,
    /// Every n-th app is plain TCP (an L4 service); the others are HTTP vhosts. 0: none.
    #[arg(long, default_value_t = 10)]
    pub tcp_every: usize,
    /// Single task events measured one after the other.
    #[arg(long, default_value_t = 200)]
    pub events: usize,
    /// Tasks killed at once in the burst (0: no burst).
    #[arg(long, default_value_t = 1_000)]
    pub burst: usize,
    /// The simulator's pause between task state changes (killing → killed, staging → running).
    #[arg(long, default_value_t = 20)]
    pub step_delay_ms: u64,
    /// No `perf record` of mlb during the full sync.
    #[arg(long)]
    pub no_perf: bool,
    /// Record call graphs too (`perf record --call-graph dwarf`; big data, slow report).
    #[arg(long)]
    pub call_graph: bool,
    /// Keep mlb's and the simulator's logs and the perf data after a successful run.
    #[arg(long)]
    pub keep: bool,
    /// Extra flag for `mlb run` (repeatable), e.g. `--mlb-arg=--maglev-table-size=1009`.
    #[arg(long, allow_hyphen_values = true)]
    pub mlb_arg: Vec<String>,
    /// Run the release `mlb` and `marathon-sim` already built instead of building them first
    /// (each build compiles mlb's library, with different features, which takes minutes).
    #[arg(long)]
    pub prebuilt: bool,
}

/// Flags of `cargo xtask bench http`.
#[derive(Args)]
pub struct HttpArgs {
    /// Smoke test of the harness: 1 round of 3 s runs.
    #[arg(long)]
    pub quick: bool,
    /// Rounds (each runs every case once, interleaved); the table shows medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Instead of the speed cases: mlb's memory per idle keep-alive connection, this many
    /// connections (one request each, then idle), plain HTTP and TLS.
    #[arg(long, value_name = "CONNS")]
    pub memory: Option<usize>,
    /// Instead of the speed cases: mlb's resident memory while one client reads a 1 GiB
    /// response through it at 64 MiB/s (a slow reader: the backend sends faster).
    #[arg(long, conflicts_with = "memory")]
    pub slow_reader: bool,
    /// Only the one-core plain HTTP/1.1 cases (direct, HAProxy, mlb): no TLS, no 2-core runs.
    #[arg(long)]
    pub h1_only: bool,
    /// Another build of the bench proxy (`l7_bench_proxy`, e.g. a copy made before a change),
    /// run as one more case beside mlb in every round: a before/after from one run.
    #[arg(long, value_name = "PATH")]
    pub baseline: Option<PathBuf>,
    /// Profile each load balancer during its keep-alive, h2 and TLS keep-alive runs (`perf
    /// record` with DWARF call graphs): its hottest symbols go into the report, a flamegraph
    /// of each run into `bench-results/http-<time>-flamegraphs/`. Adds perf's overhead to
    /// those runs.
    #[arg(long)]
    pub profile: bool,
    /// Cap each load balancer at this % of one CPU (per thread; a cgroup CPU quota), so that
    /// the load balancer, not the core the client and backends share, sets the rate: the
    /// ratios then compare what each load balancer serves per CPU second.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=100),
          conflicts_with_all = ["memory", "slow_reader"])]
    pub lb_cpu_quota: Option<u32>,
}

/// Flags of `cargo xtask bench tcp`.
#[derive(Args)]
pub struct TcpArgs {
    /// Smoke test of the harness: 1 round of 3 s runs.
    #[arg(long)]
    pub quick: bool,
    /// Rounds (each runs every case once, interleaved); the table shows medians. With
    /// `--churn`, each round runs every shape and case for the given windows. Default: 5 with
    /// `--only iperf` (bulk throughput spreads more between rounds than the gaps it shows), else 3.
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Seconds of each iperf3 run, after 2 s it omits (TCP's ramp-up).
    #[arg(long, default_value_t = 20)]
    pub iperf_secs: u32,
    /// The HTTP service of the load balancers uses be1 only (as direct does) instead of be1
    /// and be2.
    #[arg(long)]
    pub single_backend: bool,
    /// Sustained churn instead of the standard metrics: this many 10-s windows of
    /// `Connection: close` per load shape (32, then 1,000 connections), from two client
    /// addresses with wide port ranges; per window new conn/s, the LB's CPU, the client's SYN
    /// retransmissions and the XDP counters (e.g. `--churn 6 --cases direct,xdp,haproxy`).
    #[arg(long, value_name = "WINDOWS")]
    pub churn: Option<u32>,
    /// Cases to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Case::Direct, Case::Xdp, Case::XdpDsr, Case::Userspace, Case::Haproxy])]
    pub cases: Vec<Case>,
    /// Metrics to measure (comma-separated), e.g. `--only iperf` while working on bulk
    /// throughput.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [TcpMetric::KeepAlive, TcpMetric::Close, TcpMetric::Iperf])]
    pub only: Vec<TcpMetric>,
    /// Profile cpu0 and cpu1 (`perf record -a`, flat, kernel included) during every iperf3 run;
    /// the report lists each CPU's hottest symbols per case.
    #[arg(long)]
    pub profile: bool,
}

/// A metric of `bench tcp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TcpMetric {
    /// wrk keep-alive: req/s and p99.
    KeepAlive,
    /// wrk `Connection: close`: new connections per second.
    Close,
    /// iperf3: Gbit/s, with both CPUs' busy share.
    Iperf,
}

/// One way of getting the client's traffic to the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Case {
    /// Kernel routing in lb, no load balancer: the reference.
    Direct,
    /// mlb with the XDP dataplane (full NAT).
    Xdp,
    /// mlb with the XDP dataplane, `--forwarding dsr`: backends set up by `mlb backend-setup
    /// --decap xdp`, their answers routed back by lb's kernel (lb is the only way to the
    /// client in this lab) instead of translated by mlb.
    XdpDsr,
    /// mlb with the userspace (tokio) dataplane.
    Userspace,
    /// HAProxy 2.6 `mode tcp`, `nbthread 1`, `balance roundrobin`.
    Haproxy,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::Direct => "direct (routing only)",
            Case::Xdp => "mlb XDP",
            Case::XdpDsr => "mlb XDP, DSR",
            Case::Userspace => "mlb userspace",
            Case::Haproxy => "HAProxy mode tcp",
        }
    }
}

/// Runs a benchmark.
pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Tcp(args) => tcp::run(&args),
        BenchCmd::Http(args) => http::run(&args),
        BenchCmd::Sync(args) => sync::run(&args),
        BenchCmd::TlsClient(args) => tls_client::run(&args),
        BenchCmd::Fleet => {
            // The test finds `mlb` next to its own binary (target/release).
            build_release("mlb-userspace", Artifact::Bin, "mlb")?;
            let fleet = [
                "--test",
                "fleet",
                "--",
                "--ignored",
                "--nocapture",
                "ecmp_bench",
            ];
            let mut argv = vec!["test", "--release", "-p", "tests"];
            argv.extend(fleet);
            crate::cargo(&argv)
        }
        BenchCmd::IdleClient(args) => idle::run(&args),
    }
}

/// What a namespace benchmark needs before it starts: root, the bench packages, and `tools`
/// on the PATH.
fn prepare(bench: &str, tools: &[&str]) -> Result<()> {
    if !crate::setup::is_root() {
        bail!("{bench} needs root (network namespaces)");
    }
    crate::setup::run(crate::setup::BENCH_PACKAGES)?;
    for tool in tools {
        if which(tool).is_none() {
            bail!("{tool} is not installed (cargo xtask setup installs the bench packages)");
        }
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

/// What [`build_release`] builds.
#[derive(Clone, Copy)]
enum Artifact {
    Bin,
    Example,
}

/// Builds a binary or an example of `package` with the release profile (the benchmarks measure
/// optimized code); its path.
fn build_release(package: &str, artifact: Artifact, name: &str) -> Result<PathBuf> {
    let (flag, dir) = match artifact {
        Artifact::Bin => ("--bin", "release"),
        Artifact::Example => ("--example", "release/examples"),
    };
    crate::cargo(&["build", "--release", "--package", package, flag, name])?;
    Ok(target_dir().join(dir).join(name))
}

/// Writes a report to `bench-results/<bench>-<UTC time>.md` and says where.
fn write_report(bench: &str, report: &str) -> Result<PathBuf> {
    let dir = workspace_root().join("bench-results");
    fs::create_dir_all(&dir)?;
    let stamp = lab::run(&["date", "-u", "+%Y%m%d-%H%M%S"])?;
    let path = dir.join(format!("{bench}-{}.md", stamp.trim()));
    fs::write(&path, report)?;
    eprintln!("bench {bench}: written to {}", path.display());
    Ok(path)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

/// Where cargo puts what it builds (the release binaries the benchmarks run).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}
