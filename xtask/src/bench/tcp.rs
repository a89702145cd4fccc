//! `cargo xtask bench tcp`: the plain-TCP comparison.
//!
//! Backends: nginx (one process each, serving a 512-byte file) on be1 and be2, and an iperf3
//! server on be1, all on cpu0 with the client. The load balancer under test runs in lb on cpu1.
//! For every round, every case is started, measured and stopped in turn (interleaved):
//! - `wrk -t1 -c32 --latency` keep-alive: req/s and p99;
//! - the same with `Connection: close`: new connections per second;
//! - `iperf3` through the service port 5201 (20 s after 2 s omitted, `--iperf-secs`): Gbit/s,
//!   both CPUs' user / system / softirq shares meanwhile (which one is saturated, and by what),
//!   the XDP program's verdicts and next-hop lookups, with `--profile` their hottest symbols;
//! - cpu1 busy % (the LB's CPU, softirqs included) during the two wrk runs.
//!
//! `--only` picks some of these metrics.
//!
//! A case that fails to start (or a metric that fails) is reported as `failed: <reason>`; the
//! other cases still run.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{
    Artifact, CONNECTIONS, Case, TcpArgs, TcpMetric, build_release, churn, cpu,
    cpu::{CpuSplit, CpuTimes},
    lab::{self, BACKEND_IPS, LB_BACKEND_SIDE_IP, Lab, NS_BE, NS_CLI, NS_LB, VIP},
    nginx,
    offload::{self, Offloads},
    probe,
    profile::{self, Profile},
    stats::{mean, median},
    wrk::{WrkLoad, wrk},
};

/// Port of the HTTP service (on the VIP and on the backends).
pub(super) const HTTP_PORT: u16 = nginx::PORT;
/// The page the backends serve (512 bytes).
pub(super) const PAGE: &str = "small.html";
/// Port of the iperf3 service (on the VIP and on be1).
const IPERF_PORT: u16 = 5201;

/// How long each measurement runs.
pub(super) struct Durations {
    wrk_secs: u32,
    iperf_secs: u32,
}

impl Durations {
    /// `--quick`: a smoke test of the harness.
    const QUICK: Durations = Durations {
        wrk_secs: 3,
        iperf_secs: 3,
    };

    fn full(iperf_secs: u32) -> Durations {
        Durations {
            wrk_secs: 10,
            iperf_secs: iperf_secs.max(1),
        }
    }

    /// Seconds iperf3 leaves out of its figure: TCP's ramp-up, when the run is long enough to
    /// spare them.
    fn iperf_omit(&self) -> u32 {
        if self.iperf_secs >= 10 { 2 } else { 0 }
    }
}

/// XDP counters shown beside each iperf3 round (deltas): where the packets went, and how
/// often the cached next hop was refreshed.
const IPERF_COUNTERS: [(&str, &[&str]); 4] = [
    ("redirect", &["verdict_redirect"]),
    ("pass", &["verdict_pass"]),
    ("drop", &["verdict_drop", "verdict_aborted"]),
    ("hop lookups", &["hop_looked_up"]),
];

/// One round of one case.
#[derive(Default)]
struct Measurement {
    keepalive_rps: Option<f64>,
    keepalive_p99_ms: Option<f64>,
    close_rps: Option<f64>,
    iperf_gbps: Option<f64>,
    cpu1_busy_pct: Option<f64>,
    /// cpu0 and cpu1 busy % during iperf3.
    iperf_busy_pct: Option<(f64, f64)>,
    /// cpu0's and cpu1's time by kind during iperf3.
    iperf_cpus: Option<[CpuSplit; 2]>,
    /// [`IPERF_COUNTERS`] during iperf3 (an XDP case's).
    iperf_xdp: Vec<(&'static str, u64)>,
    /// The 1-minute load average when iperf3 ended.
    iperf_load1: Option<f64>,
    /// The path's veths' offload settings during iperf3.
    iperf_offloads: Offloads,
    /// Packets the path's veths dropped during iperf3.
    iperf_veth_drops: Option<u64>,
    /// Per CPU, its hottest symbols during iperf3 (`--profile`).
    iperf_profile: Vec<(u32, Vec<String>)>,
    /// Per interface of lb with an XDP program: its runs and mean ns per run during iperf3
    /// (`--profile`).
    xdp_runs: Vec<(&'static str, u64, f64)>,
    /// Metrics that failed, with why.
    problems: Vec<String>,
}

impl Measurement {
    /// cpu1's kernel time (system + softirq, %) per Gbit/s of iperf3: what the LB CPU's
    /// receive path spent per byte. Other processes' user time on cpu1 (a build elsewhere on
    /// a shared machine) is left out, so this compares cases more steadily than Gbit/s does;
    /// with the kernel's cache and scheduling still shared.
    fn kernel_pct_per_gbit(&self) -> Option<f64> {
        let cpu1 = self.iperf_cpus?[1];
        let gbps = self.iperf_gbps.filter(|g| *g > 0.0)?;
        Some((cpu1.system + cpu1.softirq) / gbps)
    }
}

/// All rounds of one case.
#[derive(Default)]
struct CaseResults {
    rounds: Vec<Measurement>,
    failures: Vec<String>,
}

pub fn run(args: &TcpArgs) -> Result<()> {
    let tools = [
        "wrk", "iperf3", "haproxy", "nginx", "taskset", "ethtool", "curl",
    ];
    super::prepare("bench tcp", &tools)?;
    let mut cases = args.cases.clone();
    cases.sort();
    cases.dedup();
    let mlb = build_mlb(&cases)?;
    let (rounds, durations) = if args.quick {
        (1, Durations::QUICK)
    } else {
        (
            default_rounds(args).max(1),
            Durations::full(args.iperf_secs),
        )
    };
    let mut lab = Lab::create()?;
    lab.network_off_lb_cpu()?;
    lab.like_a_wire()?;
    let files = write_configs(&lab, args.single_backend)?;
    nginx::start(&mut lab, &files.www, PAGE)?;
    let setup = Setup {
        mlb: mlb.as_deref(),
        files: &files,
        durations: &durations,
        metrics: &args.only,
        profile: args.profile,
    };
    if let Some(windows) = args.churn {
        let windows = if args.quick { 1 } else { windows.max(1) };
        let report = churn::run(&mut lab, &cases, &setup, windows, rounds)?;
        drop(lab);
        println!("{report}");
        return super::write_report("tcp-churn", &report).map(drop);
    }
    let results = run_rounds(&mut lab, &cases, rounds, &setup);
    drop(lab);
    let report = report(&cases, &results, rounds, &durations, args);
    println!("{report}");
    super::write_report("tcp", &report).map(drop)
}

/// `--rounds`, or 5 for bulk throughput alone (its rounds spread more), 3 otherwise.
fn default_rounds(args: &TcpArgs) -> u32 {
    let bulk_only = args.churn.is_none() && args.only == [TcpMetric::Iperf];
    args.rounds.unwrap_or(if bulk_only { 5 } else { 3 })
}

/// The release build of mlb, when a case runs it.
fn build_mlb(cases: &[Case]) -> Result<Option<PathBuf>> {
    if !cases
        .iter()
        .any(|c| matches!(c, Case::Xdp | Case::XdpDsr | Case::Userspace))
    {
        return Ok(None);
    }
    build_release("mlb-userspace", Artifact::Bin, "mlb").map(Some)
}

/// What every case's measurement needs.
pub(super) struct Setup<'a> {
    mlb: Option<&'a Path>,
    files: &'a Files,
    durations: &'a Durations,
    metrics: &'a [TcpMetric],
    /// Profile both CPUs during iperf3.
    profile: bool,
}

/// Every round runs every case once; a case that fails is recorded and the others go on.
fn run_rounds(
    lab: &mut Lab,
    cases: &[Case],
    rounds: u32,
    setup: &Setup,
) -> BTreeMap<Case, CaseResults> {
    let mut results: BTreeMap<Case, CaseResults> = BTreeMap::new();
    for round in 1..=rounds {
        for &case in cases {
            eprintln!("bench tcp: round {round}/{rounds}: {}", case.label());
            let outcome = run_case(lab, case, setup);
            let entry = results.entry(case).or_default();
            match outcome {
                Ok(m) => {
                    for p in &m.problems {
                        eprintln!("bench tcp:   {}: {p}", case.label());
                    }
                    entry.rounds.push(m);
                }
                Err(e) => {
                    eprintln!("bench tcp:   {} failed: {e:#}", case.label());
                    entry.failures.push(format!("round {round}: {e:#}"));
                }
            }
        }
    }
    results
}

/// Config files of one run.
pub(super) struct Files {
    /// What the backends serve.
    www: PathBuf,
    haproxy: PathBuf,
    mlb: PathBuf,
}

fn write_configs(lab: &Lab, single_backend: bool) -> Result<Files> {
    let http_backends: &[&str] = if single_backend {
        &BACKEND_IPS[..1]
    } else {
        &BACKEND_IPS
    };
    let www = lab.path("www");
    fs::create_dir_all(&www)?;
    // A small static file (512 bytes): per-request cost dominates, as for API traffic.
    fs::write(www.join(PAGE), "x".repeat(511) + "\n")?;
    let haproxy = lab.path("haproxy.cfg");
    fs::write(&haproxy, haproxy_config(http_backends))?;
    let mlb = lab.path("mlb.toml");
    fs::write(&mlb, mlb_config(http_backends))?;
    Ok(Files { www, haproxy, mlb })
}

/// HAProxy `mode tcp` with the HTTP and the iperf3 service.
fn haproxy_config(http_backends: &[&str]) -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 8000\n\
         defaults\n  mode tcp\n  timeout connect 3s\n  timeout client 60s\n  timeout server 60s\n\
         listen http\n  bind {VIP}:{HTTP_PORT}\n  balance roundrobin\n{servers}\
         listen iperf\n  bind {VIP}:{IPERF_PORT}\n  server be1 {b1}:{IPERF_PORT}\n",
        servers = http_backends
            .iter()
            .enumerate()
            .map(|(i, ip)| format!("  server be{} {ip}:{HTTP_PORT}\n", i + 1))
            .collect::<String>(),
        b1 = BACKEND_IPS[0],
    )
}

/// mlb's static config with the same two services.
fn mlb_config(http_backends: &[&str]) -> String {
    format!(
        "[[service]]\nname = \"bench-http\"\nport = {HTTP_PORT}\n\
         backends = [{http}]\n\n\
         [[service]]\nname = \"bench-iperf\"\nport = {IPERF_PORT}\n\
         backends = [\"{b1}:{IPERF_PORT}\"]\n",
        http = http_backends
            .iter()
            .map(|ip| format!("\"{ip}:{HTTP_PORT}\""))
            .collect::<Vec<_>>()
            .join(", "),
        b1 = BACKEND_IPS[0],
    )
}

fn run_case(lab: &mut Lab, case: Case, setup: &Setup) -> Result<Measurement> {
    let m = with_case(lab, case, setup, |lab, target| measure(lab, target, setup))?;
    if m.keepalive_rps.is_none() && m.close_rps.is_none() && m.iperf_gbps.is_none() {
        bail!("every metric failed: {}", m.problems.join("; "));
    }
    Ok(m)
}

/// Starts `case`, waits until it answers, runs `work` against the address clients use (the
/// VIP, or be1 for direct), and stops it again.
pub(super) fn with_case<T>(
    lab: &mut Lab,
    case: Case,
    setup: &Setup,
    work: impl FnOnce(&mut Lab, &str) -> T,
) -> Result<T> {
    // Direct routes in the kernel. XDP needs forwarding on its ingress interfaces too: the
    // kernel's FIB lookup answers only for forwarding interfaces (it forwards nothing itself:
    // every packet sent here is service traffic the program handles).
    // DSR: the backends' answers are routed by lb's kernel (lb is their way to the client).
    lab.set_forwarding(matches!(case, Case::Direct | Case::Xdp | Case::XdpDsr))?;
    if case == Case::XdpDsr {
        dsr_backends(lab, setup, true)?;
    }
    let outcome = start_lb(lab, case, setup).and_then(|(pid, target)| {
        let done = wait_ready(lab, pid, target).map(|()| work(lab, target));
        // Also when it does not answer, so that the next case can bind its ports.
        if let Some(pid) = pid {
            lab.stop(pid);
        }
        done
    });
    lab.set_forwarding(false)?;
    if case == Case::XdpDsr {
        dsr_backends(lab, setup, false)?;
    }
    outcome
}

/// Sets up (`mlb backend-setup --decap xdp`, its links pinned in a bpf filesystem of the run)
/// or takes down (unmounted: the links go; the VIP off `lo`) the backends of direct server
/// return, so that the other cases run on plain backends.
fn dsr_backends(lab: &Lab, setup: &Setup, up: bool) -> Result<()> {
    let mlb = setup.mlb.ok_or_else(|| anyhow!("mlb was not built"))?;
    let bpffs = lab.path("bpf");
    let bpffs = bpffs.to_str().unwrap_or_default();
    if !up {
        for be in NS_BE {
            let vip = format!("{VIP}/32");
            let _ = lab::ns_run(be, &["ip", "addr", "del", &vip, "dev", "lo"]);
        }
        return lab::run(&["umount", bpffs]).map(drop);
    }
    fs::create_dir_all(bpffs)?;
    lab::run(&["mount", "-t", "bpf", "bpf", bpffs])?;
    for (i, be) in NS_BE.iter().enumerate() {
        let iface = format!("be{}-sw", i + 1);
        let mlb = mlb.to_str().unwrap_or_default();
        let argv = [
            mlb,
            "backend-setup",
            "--vip",
            VIP,
            "--decap",
            "xdp",
            "--iface",
            &iface,
            "--bpffs-dir",
            bpffs,
        ];
        lab::ns_run(be, &argv)?;
    }
    Ok(())
}

/// Waits until the started case answers.
fn wait_ready(lab: &mut Lab, pid: Option<u32>, target: &str) -> Result<()> {
    let url = format!("http://{target}:{HTTP_PORT}/{PAGE}");
    if let Err(e) = probe::wait_for_200(lab, pid, NS_CLI, &[&url]) {
        // An exited LB's error already carries its log; a running one's is added.
        let log = match pid {
            Some(p) if lab.check_alive(p).is_ok() => format!("; log: {}", lab.log_tail(p)),
            _ => String::new(),
        };
        bail!("no HTTP answer through {target}:{HTTP_PORT}: {e}{log}");
    }
    // Attaching XDP can re-create the NAPI threads: pin them to cpu1 again.
    lab::pin_napi_threads();
    Ok(())
}

/// Starts the case's load balancer in lb on cpu1; returns its PID (none for direct) and the
/// address clients use.
fn start_lb(lab: &mut Lab, case: Case, setup: &Setup) -> Result<(Option<u32>, &'static str)> {
    let haproxy_cfg = setup.files.haproxy.display().to_string();
    let (name, args) = match case {
        Case::Direct => return Ok((None, BACKEND_IPS[0])),
        Case::Xdp => ("mlb-xdp", mlb_args(setup, "xdp")?),
        Case::XdpDsr => {
            let mut args = mlb_args(setup, "xdp")?;
            let dsr = ["--forwarding", "dsr", "--dsr-source", LB_BACKEND_SIDE_IP];
            args.extend(dsr.map(str::to_owned));
            ("mlb-xdp-dsr", args)
        }
        Case::Userspace => ("mlb-userspace", mlb_args(setup, "userspace")?),
        Case::Haproxy => (
            "haproxy",
            ["haproxy", "-db", "-f", &haproxy_cfg]
                .map(str::to_owned)
                .into(),
        ),
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok((Some(lab.spawn(name, NS_LB, 1, &args)?), VIP))
}

/// `mlb run` with the bench's static config and `dataplane`.
fn mlb_args(setup: &Setup, dataplane: &str) -> Result<Vec<String>> {
    let mlb = setup.mlb.ok_or_else(|| anyhow!("mlb was not built"))?;
    let mut args: Vec<String> = [
        mlb.to_str().unwrap_or_default(),
        "run",
        "--static-config",
        setup.files.mlb.to_str().unwrap_or_default(),
        "--dataplane",
        dataplane,
        "--vip",
        VIP,
        "--admin-addr",
        "127.0.0.1:19090",
    ]
    .map(str::to_owned)
    .into();
    if dataplane == "xdp" {
        let xdp = [
            "--xdp-iface",
            "lb-cli",
            "--xdp-iface",
            "lb-sw",
            "--snat-addr",
            LB_BACKEND_SIDE_IP,
        ];
        args.extend(xdp.map(str::to_owned));
    }
    Ok(args)
}

/// Every metric of one round that `setup` asks for; a metric that fails is noted in `problems`.
fn measure(lab: &mut Lab, target: &str, setup: &Setup) -> Measurement {
    let mut m = Measurement::default();
    let d = setup.durations;
    let url = format!("http://{target}:{HTTP_PORT}/{PAGE}");
    let load = |close| WrkLoad::standard(&url, d.wrk_secs, close);
    let wants = |metric| setup.metrics.contains(&metric);
    let cpu_before = cpu::cpu_jiffies(1);
    if wants(TcpMetric::KeepAlive) {
        match wrk(&load(false)) {
            Ok(r) => {
                m.keepalive_rps = Some(r.rps);
                m.keepalive_p99_ms = r.p99_ms;
            }
            Err(e) => m.problems.push(format!("wrk keep-alive: {e:#}")),
        }
    }
    if wants(TcpMetric::Close) {
        match wrk(&load(true)) {
            Ok(r) => m.close_rps = Some(r.rps),
            Err(e) => m.problems.push(format!("wrk Connection: close: {e:#}")),
        }
    }
    if wants(TcpMetric::KeepAlive) || wants(TcpMetric::Close) {
        m.cpu1_busy_pct = cpu::busy_pct(cpu_before, cpu::cpu_jiffies(1));
    }
    if wants(TcpMetric::Iperf) {
        measure_iperf(lab, target, setup, &mut m);
    }
    m
}

/// lb's interfaces (where the XDP cases attach their program).
const LB_DEVICES: [&str; 2] = ["lb-cli", "lb-sw"];

/// iperf3's throughput, both CPUs' busy share meanwhile, and (`--profile`) their hottest
/// symbols.
fn measure_iperf(lab: &mut Lab, target: &str, setup: &Setup, m: &mut Measurement) {
    let profile = if setup.profile {
        Profile::start_cpus("0,1", &lab.dir, "iperf3-cpus")
            .inspect_err(|e| m.problems.push(format!("perf record: {e:#}")))
            .ok()
    } else {
        None
    };
    let stats_on = setup.profile.then(profile::BpfStatsOn::new);
    let before = [cpu::cpu_jiffies(0), cpu::cpu_jiffies(1)];
    let times_before = [CpuTimes::read(0), CpuTimes::read(1)];
    let counters_before = churn::xdp_snapshot().map(|(c, _)| c);
    let xdp_before = LB_DEVICES.map(|dev| profile::xdp_run_stats(NS_LB, dev));
    let drops_before = offload::drops();
    m.iperf_offloads = offload::read();
    match iperf(lab, target, setup.durations) {
        Ok(g) => m.iperf_gbps = Some(g),
        Err(e) => m.problems.push(format!("iperf3: {e:#}")),
    }
    let cpu0 = cpu::busy_pct(before[0], cpu::cpu_jiffies(0));
    let cpu1 = cpu::busy_pct(before[1], cpu::cpu_jiffies(1));
    m.iperf_busy_pct = cpu0.zip(cpu1);
    let split = |cpu: u32| CpuTimes::read(cpu)?.since(times_before[cpu as usize]?);
    m.iperf_cpus = split(0).zip(split(1)).map(|(a, b)| [a, b]);
    if let Some((before, after)) = counters_before.zip(churn::xdp_snapshot().map(|(c, _)| c)) {
        m.iperf_xdp = counter_deltas(&before, &after);
    }
    m.iperf_load1 = super::churn::load_average();
    m.iperf_veth_drops = drops_before
        .zip(offload::drops())
        .map(|(b, a)| a.saturating_sub(b));
    for (dev, before) in LB_DEVICES.into_iter().zip(xdp_before) {
        let after = profile::xdp_run_stats(NS_LB, dev);
        if let Some((runs, ns)) = before.zip(after).and_then(|(b, a)| a.since(b)) {
            m.xdp_runs.push((dev, runs, ns));
        }
    }
    drop(stats_on);
    if let Some(p) = profile {
        match p.finish_per_cpu(&[0, 1]) {
            Ok(p) => m.iperf_profile = p,
            Err(e) => m.problems.push(format!("perf report: {e:#}")),
        }
    }
}

/// [`IPERF_COUNTERS`] between two snapshots of the XDP program's counters.
fn counter_deltas(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> Vec<(&'static str, u64)> {
    let of = |name: &str| {
        let at = |m: &BTreeMap<String, u64>| m.get(name).copied().unwrap_or(0);
        at(after).saturating_sub(at(before))
    };
    IPERF_COUNTERS
        .iter()
        .map(|&(label, names)| (label, names.iter().map(|n| of(n)).sum()))
        .collect()
}

/// One iperf3 run through `target`; a one-off server on be1 for each run, so a failed run
/// never leaves a busy server behind.
fn iperf(lab: &mut Lab, target: &str, d: &Durations) -> Result<f64> {
    let (secs, omit) = (d.iperf_secs, d.iperf_omit());
    let port = IPERF_PORT.to_string();
    let server = lab.spawn(
        "iperf3-server",
        NS_BE[0],
        0,
        // Every address: with DSR the VIP is be1's too.
        &["iperf3", "-s", "-1", "-p", &port],
    )?;
    let listening = probe::wait_until(Duration::from_secs(5), || {
        lab.check_alive(server).map_err(|e| anyhow!(e))?;
        let ss = lab::ns_run(NS_BE[0], &["ss", "-ltnH", &format!("sport = :{port}")])?;
        Ok(!ss.trim().is_empty())
    });
    let result = listening.and_then(|()| {
        let limit = (secs + omit + 20).to_string();
        let (t, omit) = (secs.to_string(), omit.to_string());
        let out = Command::new("ip")
            .args(["netns", "exec", NS_CLI, "timeout", &limit])
            .args(["taskset", "-c", "0", "iperf3", "-c", target, "-p", &port])
            .args(["-t", &t, "-O", &omit, "-J"])
            .output()?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
        if let Some(e) = json.get("error").and_then(|e| e.as_str()) {
            bail!("{e}");
        }
        json.pointer("/end/sum_received/bits_per_second")
            .and_then(serde_json::Value::as_f64)
            .map(|bps| bps / 1e9)
            .ok_or_else(|| anyhow!("no end.sum_received in the iperf3 output"))
    });
    lab.stop(server);
    result
}

/// The report: how it was measured, the table of medians, what failed.
fn report(
    cases: &[Case],
    results: &BTreeMap<Case, CaseResults>,
    rounds: u32,
    d: &Durations,
    args: &TcpArgs,
) -> String {
    let mut s = method(rounds, d, args);
    let _ = writeln!(
        s,
        "| case | keep-alive req/s (× direct) | p99 ms (× direct) | new conn/s (× direct) | iperf3 Gbit/s (× direct) | cpu1 busy % (wrk) | cpu0 / cpu1 busy % (iperf3) |\n\
         |---|---|---|---|---|---|---|"
    );
    for &case in cases {
        let _ = writeln!(s, "{}", row(case, results, &args.only));
    }
    s.push_str(&iperf_rounds(cases, results));
    s.push_str(&offloads(cases, results));
    s.push_str(&profiles(cases, results));
    let notes = problems(cases, results);
    if !notes.is_empty() {
        let _ = writeln!(s, "\nProblems:\n{}", notes.join("\n"));
    }
    s
}

/// The title and how the figures were measured.
fn method(rounds: u32, d: &Durations, args: &TcpArgs) -> String {
    let kernel = lab::run(&["uname", "-r"]).unwrap_or_default();
    format!(
        "# mlb bench tcp{}\n\n\
         Kernel {}; {rounds} round(s), cases interleaved; medians. wrk -t1 -c{CONNECTIONS} -d{}s --latency \
         (keep-alive, then `Connection: close`), iperf3 -t {} -O {} on port {IPERF_PORT}. Client and \
         nginx backends (one process each, 512-byte file) on cpu0, the load balancer and lb's \
         receive path on cpu1; what lb sends is received (bridge, backends, client) on cpu0 \
         (threaded NAPI of lb's veth peers), as a NIC would hand it to the wire; lb receives \
         frames of the link's MTU in every case (TSO off on the senders' veths, as the kernel \
         forces while lb runs XDP) and the receivers check checksums in every case (RX \
         checksumming off there: a veth vouches for skbs, not for frames XDP redirected). \"direct\" is kernel routing in lb to be1 only (no LB); the load \
         balancers spread the HTTP service over {}. \"mlb XDP, DSR\" encapsulates to the \
         backends (`mlb backend-setup --decap xdp` on them), which answer through lb's kernel \
         routing (lb is their only way to the client here), not through mlb. Ratios are \
         to direct in the same run; compare ratios, not absolute numbers across runs. cpu1 busy % is \
         the whole CPU during the wrk runs (anything else running on it included).\n\n",
        if args.quick {
            " (--quick: smoke test, not a measurement)"
        } else {
            ""
        },
        kernel.trim(),
        d.wrk_secs,
        d.iperf_secs,
        d.iperf_omit(),
        if args.single_backend {
            "be1 only (--single-backend: same backend work as direct)"
        } else {
            "be1 and be2 (two nginx processes: on a loaded machine they may get more CPU than \
             direct's one; --single-backend compares like with like)"
        },
    )
}

/// A case's row: the medians of its successful rounds with their ratios to direct, or why it
/// has none.
fn row(case: Case, results: &BTreeMap<Case, CaseResults>, measured: &[TcpMetric]) -> String {
    let r = results.get(&case);
    if r.is_none_or(|r| r.rounds.is_empty()) {
        let why = r
            .and_then(|r| r.failures.first())
            .map_or("not run".to_owned(), |f| {
                let f = f.replace('|', "/");
                match f.char_indices().nth(160) {
                    Some((cut, _)) => format!("{}… (see Problems)", &f[..cut]),
                    None => f,
                }
            });
        return format!("| {} | failed: {why} | | | | | |", case.label());
    }
    let med = |case: Case, metric: Metric| -> Option<f64> {
        let values: Vec<f64> = results
            .get(&case)?
            .rounds
            .iter()
            .filter_map(metric)
            .collect();
        median(&values)
    };
    let metrics: [(Metric, usize, TcpMetric); 4] = [
        (|m| m.keepalive_rps, 0, TcpMetric::KeepAlive),
        (|m| m.keepalive_p99_ms, 2, TcpMetric::KeepAlive),
        (|m| m.close_rps, 0, TcpMetric::Close),
        (|m| m.iperf_gbps, 2, TcpMetric::Iperf),
    ];
    let mut row = format!("| {} |", case.label());
    for (metric, decimals, of) in metrics {
        let cell = match (med(case, metric), med(Case::Direct, metric)) {
            (Some(v), Some(dv)) if dv > 0.0 => format!(" {v:.decimals$} ({:.2}) |", v / dv),
            (Some(v), _) => format!(" {v:.decimals$} |"),
            (None, _) if !measured.contains(&of) => " — |".to_owned(),
            (None, _) => " failed |".to_owned(),
        };
        row.push_str(&cell);
    }
    let pct = |c: Option<f64>| c.map_or("—".to_owned(), |c| format!("{c:.0}"));
    let cpu = pct(med(case, |m| m.cpu1_busy_pct));
    let cpu0 = pct(med(case, |m| m.iperf_busy_pct.map(|b| b.0)));
    let cpu1 = pct(med(case, |m| m.iperf_busy_pct.map(|b| b.1)));
    format!("{row} {cpu} | {cpu0} / {cpu1} |")
}

/// Every round's iperf3 figure, × direct in the same round, with the load average, both CPUs'
/// time by kind and the XDP program's counters (and ns per run) beside it: the spread the
/// medians hide; then each case's median and mean over the rounds.
fn iperf_rounds(cases: &[Case], results: &BTreeMap<Case, CaseResults>) -> String {
    let rounds = |case| results.get(&case).map_or(&[][..], |r| r.rounds.as_slice());
    let direct = rounds(Case::Direct);
    if !cases
        .iter()
        .flat_map(|&c| rounds(c))
        .any(|m| m.iperf_gbps.is_some())
    {
        return String::new();
    }
    let mut s = "\niperf3 per round (Gbit/s, × direct in the same round; load1; per CPU \
                 user/system/softirq %; XDP counters):\n"
        .to_owned();
    for &case in cases {
        for (i, m) in rounds(case).iter().enumerate() {
            let Some(g) = m.iperf_gbps else { continue };
            let ratio = direct
                .get(i)
                .and_then(|d| d.iperf_gbps)
                .filter(|_| case != Case::Direct)
                .map_or(String::new(), |d| format!(" ({:.2})", g / d));
            let label = case.label();
            let _ = writeln!(
                s,
                "- round {}, {label}: {g:.2}{ratio}; {}",
                i + 1,
                beside(m)
            );
        }
    }
    s.push_str("\niperf3 over the rounds (Gbit/s, × direct's):\n");
    for &case in cases {
        let _ = writeln!(s, "{}", iperf_summary(case, rounds(case), direct));
    }
    s
}

/// What a round measured beside its throughput.
fn beside(m: &Measurement) -> String {
    let load = m.iperf_load1.map_or("—".to_owned(), |l| format!("{l:.1}"));
    let cpus = m.iperf_cpus.map_or("—".to_owned(), |cpus| {
        let one = |c: &CpuSplit| format!("{:.0}/{:.0}/{:.0}", c.user, c.system, c.softirq);
        format!("cpu0 {}, cpu1 {}", one(&cpus[0]), one(&cpus[1]))
    });
    let mut s = format!("load {load}; {cpus}");
    if let Some(k) = m.kernel_pct_per_gbit() {
        let _ = write!(s, " (cpu1 kernel {k:.1} % per Gbit/s)");
    }
    if !m.iperf_xdp.is_empty() {
        let counters: Vec<String> = m
            .iperf_xdp
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        let _ = write!(s, "; {}", counters.join(", "));
    }
    if let Some((_, _, ns)) = m.xdp_runs.first() {
        let _ = write!(s, "; {ns:.0} ns per XDP run");
    }
    if let Some(drops) = m.iperf_veth_drops {
        let _ = write!(s, "; veth drops {drops}");
    }
    s
}

/// The path's offload settings in direct's first round, and where each other case's differ.
fn offloads(cases: &[Case], results: &BTreeMap<Case, CaseResults>) -> String {
    let first = |case| {
        results
            .get(&case)?
            .rounds
            .iter()
            .map(|m| &m.iperf_offloads)
            .find(|o| !o.is_empty())
    };
    let Some(direct) = first(Case::Direct) else {
        return String::new();
    };
    let mut s = format!(
        "
Offloads on the path (ethtool -k) under direct: {}
",
        offload::describe(direct)
    );
    for &case in cases.iter().filter(|&&c| c != Case::Direct) {
        let Some(o) = first(case) else { continue };
        let diff = offload::differences(direct, o);
        let diff = if diff.is_empty() {
            "the same".to_owned()
        } else {
            diff.join("; ")
        };
        let _ = writeln!(s, "- {}: {diff}", case.label());
    }
    s
}

/// A case's median and mean iperf3 figure over its rounds, each × direct's, and the spread
/// of its per-round ratios.
fn iperf_summary(case: Case, rounds: &[Measurement], direct: &[Measurement]) -> String {
    let gbps = |rounds: &[Measurement]| -> Vec<f64> {
        rounds.iter().filter_map(|m| m.iperf_gbps).collect()
    };
    let (values, direct_values) = (gbps(rounds), gbps(direct));
    let (Some(med), Some(avg)) = (median(&values), mean(&values)) else {
        return format!("- {}: no round measured", case.label());
    };
    let times = |v: f64, of: Option<f64>| {
        of.filter(|d| *d > 0.0 && case != Case::Direct)
            .map_or(String::new(), |d| format!(" ({:.2}×)", v / d))
    };
    let mut s = format!(
        "- {}: median {med:.2}{}, mean {avg:.2}{} over {} round(s)",
        case.label(),
        times(med, median(&direct_values)),
        times(avg, mean(&direct_values)),
        values.len()
    );
    let ratios: Vec<f64> = rounds
        .iter()
        .zip(direct)
        .filter_map(|(m, d)| Some(m.iperf_gbps? / d.iperf_gbps.filter(|d| *d > 0.0)?))
        .collect();
    if case != Case::Direct && !ratios.is_empty() {
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
        let mid = median(&ratios).unwrap_or_default();
        let _ = write!(s, "; per-round ratios median {mid:.2}, {lo:.2}–{hi:.2}");
    }
    let kernel = |rounds: &[Measurement]| {
        median(
            &rounds
                .iter()
                .filter_map(Measurement::kernel_pct_per_gbit)
                .collect::<Vec<_>>(),
        )
    };
    if let Some(k) = kernel(rounds) {
        let _ = write!(
            s,
            "; cpu1 kernel {k:.1} % per Gbit/s{}",
            times(k, kernel(direct))
        );
    }
    s
}

/// With `--profile`: each case's hottest symbols per CPU during its first profiled iperf3 run.
fn profiles(cases: &[Case], results: &BTreeMap<Case, CaseResults>) -> String {
    let mut s = String::new();
    for &case in cases {
        let Some(m) = results
            .get(&case)
            .and_then(|r| r.rounds.iter().find(|m| !m.iperf_profile.is_empty()))
        else {
            continue;
        };
        let _ = writeln!(
            s,
            "\n{} during iperf3 (self time, share of the CPU's samples):",
            case.label()
        );
        for (dev, runs, ns) in &m.xdp_runs {
            let _ = writeln!(s, "- XDP program on {dev}: {runs} runs, {ns:.0} ns per run");
        }
        for (cpu, lines) in &m.iperf_profile {
            let _ = writeln!(s, "- cpu{cpu}:");
            for l in lines {
                let _ = writeln!(s, "  - {l}");
            }
        }
    }
    s
}

/// One metric of a round.
type Metric = fn(&Measurement) -> Option<f64>;

/// Failed rounds and failed metrics of successful rounds, one line each.
fn problems(cases: &[Case], results: &BTreeMap<Case, CaseResults>) -> Vec<String> {
    let mut notes = Vec::new();
    for &case in cases {
        let Some(r) = results.get(&case) else {
            continue;
        };
        for f in &r.failures {
            notes.push(format!("- {}: failed: {f}", case.label()));
        }
        for (i, m) in r.rounds.iter().enumerate() {
            for p in &m.problems {
                let label = case.label();
                notes.push(format!("- {label} (a successful round {}): {p}", i + 1));
            }
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(gbps: f64, cpu1_system: f64, cpu1_softirq: f64) -> Measurement {
        let idle = CpuSplit {
            user: 0.0,
            system: 0.0,
            softirq: 0.0,
        };
        let cpu1 = CpuSplit {
            user: 5.0,
            system: cpu1_system,
            softirq: cpu1_softirq,
        };
        Measurement {
            iperf_gbps: Some(gbps),
            iperf_cpus: Some([idle, cpu1]),
            ..Measurement::default()
        }
    }

    #[test]
    fn summary_compares_medians_means_rounds_and_kernel_cost_with_direct() {
        let direct = [round(2.0, 20.0, 60.0), round(3.0, 30.0, 60.0)];
        let xdp = [round(1.8, 40.0, 50.0), round(3.0, 40.0, 50.0)];
        assert_eq!(
            iperf_summary(Case::Xdp, &xdp, &direct),
            "- mlb XDP: median 2.40 (0.96×), mean 2.40 (0.96×) over 2 round(s); per-round \
             ratios median 0.95, 0.90–1.00; cpu1 kernel 40.0 % per Gbit/s (1.14×)"
        );
        assert_eq!(
            iperf_summary(Case::Direct, &direct, &direct),
            "- direct (routing only): median 2.50, mean 2.50 over 2 round(s); cpu1 kernel \
             35.0 % per Gbit/s"
        );
        assert_eq!(
            iperf_summary(Case::Xdp, &[], &direct),
            "- mlb XDP: no round measured"
        );
    }
}
