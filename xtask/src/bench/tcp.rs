//! `cargo xtask bench tcp`: the plain-TCP comparison.
//!
//! Backends: nginx (one process each, serving a 512-byte file) on be1 and be2, and an iperf3
//! server on be1, all on cpu0 with the client. The load balancer under test runs in lb on cpu1.
//! For every round, every case is started, measured and stopped in turn (interleaved):
//! - `wrk -t1 -c32 --latency` keep-alive: req/s and p99;
//! - the same with `Connection: close`: new connections per second;
//! - `iperf3` through the service port 5201: Gbit/s;
//! - cpu1 busy % (the LB's CPU, softirqs included) during the two wrk runs.
//!
//! A case that fails to start (or a metric that fails) is reported as `failed: <reason>`; the
//! other cases still run.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{
    Case, TcpArgs,
    lab::{self, BACKEND_IPS, LB_BACKEND_SIDE_IP, Lab, NS_BE, NS_CLI, NS_LB, VIP},
    median,
};

/// Port of the HTTP service (on the VIP and on the backends).
const HTTP_PORT: u16 = 80;
/// Port of the iperf3 service (on the VIP and on be1).
const IPERF_PORT: u16 = 5201;

/// How long each measurement runs.
struct Durations {
    wrk_secs: u32,
    iperf_secs: u32,
    /// Windows of the sustained churn case instead of the standard metrics (`--churn`).
    churn_windows: Option<u32>,
}

/// One round of one case.
#[derive(Default)]
struct Measurement {
    keepalive_rps: Option<f64>,
    keepalive_p99_ms: Option<f64>,
    close_rps: Option<f64>,
    iperf_gbps: Option<f64>,
    cpu1_busy_pct: Option<f64>,
    /// The sustained churn case's windows (`--churn` only).
    churn: Vec<super::churn::Window>,
    /// Metrics that failed, with why.
    problems: Vec<String>,
}

/// All rounds of one case.
#[derive(Default)]
struct CaseResults {
    rounds: Vec<Measurement>,
    failures: Vec<String>,
}

pub fn run(args: &TcpArgs) -> Result<()> {
    if !crate::setup::is_root() {
        bail!("bench tcp needs root (network namespaces, XDP)");
    }
    crate::setup::run(crate::setup::BENCH_PACKAGES)?;
    for tool in [
        "wrk", "iperf3", "haproxy", "nginx", "taskset", "ethtool", "curl",
    ] {
        if which(tool).is_none() {
            bail!("{tool} is not installed (cargo xtask setup installs the bench packages)");
        }
    }
    let mut cases = args.cases.clone();
    cases.sort();
    cases.dedup();
    let mlb = if cases
        .iter()
        .any(|c| matches!(c, Case::Xdp | Case::Userspace))
    {
        crate::cargo(&[
            "build",
            "--release",
            "--package",
            "mlb-userspace",
            "--bin",
            "mlb",
        ])?;
        Some(target_dir().join("release/mlb"))
    } else {
        None
    };
    let (rounds, durations) = if args.quick {
        (
            1,
            Durations {
                wrk_secs: 3,
                iperf_secs: 3,
                churn_windows: args.churn,
            },
        )
    } else {
        (
            if args.churn.is_some() {
                1
            } else {
                args.rounds.max(1)
            },
            Durations {
                wrk_secs: 10,
                iperf_secs: 5,
                churn_windows: args.churn,
            },
        )
    };

    let mut lab = Lab::create()?;
    let files = write_configs(&lab, args.single_backend)?;
    start_backends(&mut lab, &files)?;
    if args.churn.is_some() {
        super::churn::widen_client_ports()?;
    }

    let mut results: BTreeMap<Case, CaseResults> = BTreeMap::new();
    for round in 1..=rounds {
        for &case in &cases {
            eprintln!("bench tcp: round {round}/{rounds}: {}", case.label());
            let outcome = run_case(&mut lab, case, mlb.as_deref(), &files, &durations);
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
    drop(lab);

    let report = if args.churn.is_some() {
        let windows: Vec<_> = cases
            .iter()
            .map(|c| {
                let rounds = results.remove(c).map(|r| r.rounds).unwrap_or_default();
                (*c, rounds.into_iter().flat_map(|m| m.churn).collect())
            })
            .collect();
        format!(
            "# mlb bench tcp --churn\n\nKernel {}.{}",
            lab::run(&["uname", "-r"]).unwrap_or_default().trim(),
            super::churn::report(&windows)
        )
    } else {
        report(&cases, &results, rounds, &durations, args)
    };
    println!("{report}");
    let dir = workspace_root().join("bench-results");
    fs::create_dir_all(&dir)?;
    let stamp = lab::run(&["date", "-u", "+%Y%m%d-%H%M%S"])?;
    let path = dir.join(format!("tcp-{}.md", stamp.trim()));
    fs::write(&path, &report)?;
    eprintln!("bench tcp: written to {}", path.display());
    Ok(())
}

/// Config files of one run.
struct Files {
    nginx: [PathBuf; 2],
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
    fs::write(www.join("small.html"), "x".repeat(511) + "\n")?;
    let nginx = [0, 1].map(|i| lab.path(&format!("nginx-be{}.conf", i + 1)));
    for (i, path) in nginx.iter().enumerate() {
        let tmp = lab.path(&format!("nginx-be{}-tmp", i + 1));
        fs::create_dir_all(&tmp)?;
        let tmp = tmp.display();
        let conf = format!(
            "# One process (no master) so the harness can stop it by PID.\n\
             master_process off;\ndaemon off;\nworker_processes 1;\n\
             pid {dir}/nginx-be{n}.pid;\nerror_log {dir}/nginx-be{n}-error.log warn;\n\
             events {{ worker_connections 16384; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 100000000;\n\
             client_body_temp_path {tmp}/body;\n  proxy_temp_path {tmp}/proxy;\n\
             fastcgi_temp_path {tmp}/fastcgi;\n  uwsgi_temp_path {tmp}/uwsgi;\n\
             scgi_temp_path {tmp}/scgi;\n\
             server {{\n    listen {ip}:{HTTP_PORT} backlog=4096;\n    root {www};\n  }}\n}}\n",
            dir = lab.dir.display(),
            n = i + 1,
            ip = BACKEND_IPS[i],
            www = www.display(),
        );
        fs::write(path, conf)?;
    }
    let haproxy = lab.path("haproxy.cfg");
    fs::write(
        &haproxy,
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
        ),
    )?;
    let mlb = lab.path("mlb.toml");
    fs::write(
        &mlb,
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
        ),
    )?;
    Ok(Files {
        nginx,
        haproxy,
        mlb,
    })
}

fn start_backends(lab: &mut Lab, files: &Files) -> Result<()> {
    for (i, conf) in files.nginx.iter().enumerate() {
        let conf = conf.display().to_string();
        let name = format!("nginx-be{}", i + 1);
        let pid = lab.spawn(&name, NS_BE[i], 0, &["nginx", "-c", &conf])?;
        let url = format!("http://{}:{HTTP_PORT}/small.html", BACKEND_IPS[i]);
        // Checked from lb, which has an address on the backend subnet.
        wait_until(Duration::from_secs(10), || {
            lab.check_alive(pid).map_err(|e| anyhow!(e))?;
            Ok(http_ok(NS_LB, &url))
        })
        .with_context(|| format!("{name} does not serve {url}"))?;
    }
    Ok(())
}

/// Polls `ready` (which may fail fast) every 100 ms until it says yes or `limit` passes.
fn wait_until(limit: Duration, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not ready within {} s", limit.as_secs());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn http_ok(ns: &str, url: &str) -> bool {
    lab::ns_run(
        ns,
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "1",
            "-w",
            "%{http_code}",
            url,
        ],
    )
    .is_ok_and(|code| code.trim() == "200")
}

fn run_case(
    lab: &mut Lab,
    case: Case,
    mlb: Option<&Path>,
    files: &Files,
    durations: &Durations,
) -> Result<Measurement> {
    // Direct routes in the kernel. XDP needs forwarding on its ingress interfaces too: the
    // kernel's FIB lookup answers only for forwarding interfaces (it forwards nothing itself:
    // every packet sent here is service traffic the program handles).
    lab.set_forwarding(matches!(case, Case::Direct | Case::Xdp))?;
    let started = start_lb(lab, case, mlb, files);
    let started_pid = started.as_ref().ok().and_then(|(pid, _)| *pid);
    let result = started.and_then(|(pid, target)| {
        let ready = wait_until(Duration::from_secs(10), || {
            if let Some(pid) = pid {
                lab.check_alive(pid).map_err(|e| anyhow!(e))?;
            }
            Ok(http_ok(
                NS_CLI,
                &format!("http://{target}:{HTTP_PORT}/small.html"),
            ))
        });
        if let Err(e) = ready {
            // An exited LB's error already carries its log; a running one's is added.
            let log = match pid {
                Some(p) if lab.check_alive(p).is_ok() => format!("; log: {}", lab.log_tail(p)),
                _ => String::new(),
            };
            bail!("no HTTP answer through {target}:{HTTP_PORT}: {e}{log}");
        }
        // Attaching XDP can re-create the NAPI threads: pin them to cpu1 again.
        lab::pin_napi_threads();
        let m = match durations.churn_windows {
            Some(windows) => {
                let mut m = Measurement::default();
                let url = format!("http://{target}:{HTTP_PORT}/small.html");
                m.churn = super::churn::measure(&url, windows, &mut m.problems);
                m
            }
            None => measure(lab, target, durations),
        };
        Ok((pid, m))
    });
    let outcome = match result {
        Ok((pid, m)) => {
            if let Some(pid) = pid {
                lab.stop(pid);
            }
            m
        }
        Err(e) => {
            // Stop a LB that started but does not answer, so the next case can bind its ports.
            if let Some(pid) = started_pid {
                lab.stop(pid);
            }
            lab.set_forwarding(false)?;
            return Err(e);
        }
    };
    lab.set_forwarding(false)?;
    if outcome.keepalive_rps.is_none()
        && outcome.close_rps.is_none()
        && outcome.iperf_gbps.is_none()
        && outcome.churn.iter().all(|w| w.conn_per_s().is_none())
    {
        bail!("every metric failed: {}", outcome.problems.join("; "));
    }
    Ok(outcome)
}

/// Starts the case's load balancer; returns its PID (none for direct) and the address clients
/// use.
fn start_lb(
    lab: &mut Lab,
    case: Case,
    mlb: Option<&Path>,
    files: &Files,
) -> Result<(Option<u32>, &'static str)> {
    let mlb_args = |dataplane: &'static str| -> Result<Vec<String>> {
        let mlb = mlb.ok_or_else(|| anyhow!("mlb was not built"))?;
        let mut args: Vec<String> = [
            mlb.to_str().unwrap_or_default(),
            "run",
            "--static-config",
            files.mlb.to_str().unwrap_or_default(),
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
            args.extend(
                [
                    "--xdp-iface",
                    "lb-cli",
                    "--xdp-iface",
                    "lb-sw",
                    "--snat-addr",
                    LB_BACKEND_SIDE_IP,
                ]
                .map(str::to_owned),
            );
        }
        Ok(args)
    };
    let spawn = |lab: &mut Lab, name: &str, args: Vec<String>| -> Result<u32> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        lab.spawn(name, NS_LB, 1, &args)
    };
    match case {
        Case::Direct => Ok((None, BACKEND_IPS[0])),
        Case::Xdp => Ok((Some(spawn(lab, "mlb-xdp", mlb_args("xdp")?)?), VIP)),
        Case::Userspace => Ok((
            Some(spawn(lab, "mlb-userspace", mlb_args("userspace")?)?),
            VIP,
        )),
        Case::Haproxy => {
            let cfg = files.haproxy.display().to_string();
            let args = ["haproxy", "-db", "-f", &cfg].map(str::to_owned).into();
            Ok((Some(spawn(lab, "haproxy", args)?), VIP))
        }
    }
}

fn measure(lab: &mut Lab, target: &str, d: &Durations) -> Measurement {
    let mut m = Measurement::default();
    let url = format!("http://{target}:{HTTP_PORT}/small.html");
    let cpu_before = cpu_times(1);
    match wrk(&url, d.wrk_secs, 32, false) {
        Ok(r) => {
            m.keepalive_rps = Some(r.rps);
            m.keepalive_p99_ms = r.p99_ms;
        }
        Err(e) => m.problems.push(format!("wrk keep-alive: {e:#}")),
    }
    match wrk(&url, d.wrk_secs, 32, true) {
        Ok(r) => m.close_rps = Some(r.rps),
        Err(e) => m.problems.push(format!("wrk Connection: close: {e:#}")),
    }
    if let (Some(a), Some(b)) = (cpu_before, cpu_times(1)) {
        let total = b.0.saturating_sub(a.0);
        if total > 0 {
            m.cpu1_busy_pct = Some(100.0 * b.1.saturating_sub(a.1) as f64 / total as f64);
        }
    }
    match iperf(lab, target, d.iperf_secs) {
        Ok(g) => m.iperf_gbps = Some(g),
        Err(e) => m.problems.push(format!("iperf3: {e:#}")),
    }
    m
}

pub(super) struct WrkResult {
    pub(super) rps: f64,
    p99_ms: Option<f64>,
}

/// `wrk -t1` with `conns` connections for `secs`, `Connection: close` when `close`.
pub(super) fn wrk(url: &str, secs: u32, conns: u32, close: bool) -> Result<WrkResult> {
    let limit = (secs + 20).to_string();
    let duration = format!("{secs}s");
    let conns = format!("-c{conns}");
    let mut args = vec![
        "timeout",
        &limit,
        "taskset",
        "-c",
        "0",
        "wrk",
        "-t1",
        &conns,
        "-d",
        &duration,
        "--latency",
    ];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(url);
    let out = lab::ns_run(NS_CLI, &args)?;
    parse_wrk(&out)
}

pub(super) fn parse_wrk(out: &str) -> Result<WrkResult> {
    let mut rps = None;
    let mut p99_ms = None;
    let mut requests = None;
    let mut bad_responses = 0u64;
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => rps = v.parse::<f64>().ok(),
            ["99%", v] => p99_ms = parse_duration_ms(v),
            [n, "requests", "in", ..] => requests = n.parse::<u64>().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => bad_responses = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    let (Some(rps), Some(requests)) = (rps, requests) else {
        bail!("unexpected wrk output: {}", out.trim());
    };
    if requests == 0 {
        bail!("no request completed");
    }
    if bad_responses * 100 > requests {
        bail!("{bad_responses} of {requests} responses were not 2xx/3xx");
    }
    Ok(WrkResult { rps, p99_ms })
}

/// `123.45us`, `1.23ms`, `2.00s` → milliseconds.
fn parse_duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// One iperf3 run through `target`; a one-off server on be1 for each run, so a failed run
/// never leaves a busy server behind.
fn iperf(lab: &mut Lab, target: &str, secs: u32) -> Result<f64> {
    let port = IPERF_PORT.to_string();
    let server = lab.spawn(
        "iperf3-server",
        NS_BE[0],
        0,
        &["iperf3", "-s", "-1", "-B", BACKEND_IPS[0], "-p", &port],
    )?;
    let listening = wait_until(Duration::from_secs(5), || {
        lab.check_alive(server).map_err(|e| anyhow!(e))?;
        let ss = lab::ns_run(NS_BE[0], &["ss", "-ltnH", &format!("sport = :{port}")])?;
        Ok(!ss.trim().is_empty())
    });
    let result = listening.and_then(|()| {
        let limit = (secs + 20).to_string();
        let t = secs.to_string();
        let out = Command::new("ip")
            .args(["netns", "exec", NS_CLI, "timeout", &limit])
            .args(["taskset", "-c", "0", "iperf3", "-c", target, "-p", &port])
            .args(["-t", &t, "-J"])
            .output()?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr)))?;
        if let Some(e) = json.get("error").and_then(|e| e.as_str()) {
            bail!("{e}");
        }
        json.pointer("/end/sum_received/bits_per_second")
            .and_then(|v| v.as_f64())
            .map(|bps| bps / 1e9)
            .ok_or_else(|| anyhow!("no end.sum_received in the iperf3 output"))
    });
    lab.stop(server);
    result
}

/// (total, busy) jiffies of one CPU from /proc/stat.
pub(super) fn cpu_times(cpu: u32) -> Option<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&name))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total, total - idle))
}

fn report(
    cases: &[Case],
    results: &BTreeMap<Case, CaseResults>,
    rounds: u32,
    d: &Durations,
    args: &TcpArgs,
) -> String {
    let kernel = lab::run(&["uname", "-r"]).unwrap_or_default();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# mlb bench tcp{}\n\n\
         Kernel {}; {rounds} round(s), cases interleaved; medians. wrk -t1 -c32 -d{}s --latency \
         (keep-alive, then `Connection: close`), iperf3 -t {} on port {IPERF_PORT}. Client and \
         nginx backends (one process each, 512-byte file) on cpu0, the load balancer and lb's \
         receive path on cpu1. \"direct\" is kernel routing in lb to be1 only (no LB); the load \
         balancers spread the HTTP service over {}. Ratios are \
         to direct in the same run; compare ratios, not absolute numbers across runs. cpu1 busy % is \
         the whole CPU during the wrk runs (anything else running on it included).\n",
        if args.quick {
            " (--quick: smoke test, not a measurement)"
        } else {
            ""
        },
        kernel.trim(),
        d.wrk_secs,
        d.iperf_secs,
        if args.single_backend {
            "be1 only (--single-backend: same backend work as direct)"
        } else {
            "be1 and be2 (two nginx processes: on a loaded machine they may get more CPU than \
             direct's one; --single-backend compares like with like)"
        },
    );
    let _ = writeln!(
        s,
        "| case | keep-alive req/s (× direct) | p99 ms (× direct) | new conn/s (× direct) | iperf3 Gbit/s (× direct) | cpu1 busy % |\n\
         |---|---|---|---|---|---|"
    );
    let med = |case: Case, f: &dyn Fn(&Measurement) -> Option<f64>| -> Option<f64> {
        let values: Vec<f64> = results.get(&case)?.rounds.iter().filter_map(f).collect();
        median(&values)
    };
    type Metric = fn(&Measurement) -> Option<f64>;
    let metrics: [(Metric, usize); 4] = [
        (|m| m.keepalive_rps, 0),
        (|m| m.keepalive_p99_ms, 2),
        (|m| m.close_rps, 0),
        (|m| m.iperf_gbps, 2),
    ];
    for &case in cases {
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
            let _ = writeln!(s, "| {} | failed: {why} | | | | |", case.label());
            continue;
        }
        let mut row = format!("| {} |", case.label());
        for (metric, decimals) in metrics {
            let value = med(case, &metric);
            let direct = med(Case::Direct, &metric);
            let cell = match (value, direct) {
                (Some(v), Some(dv)) if dv > 0.0 => {
                    format!(" {v:.decimals$} ({:.2}) |", v / dv)
                }
                (Some(v), _) => format!(" {v:.decimals$} |"),
                (None, _) => " failed |".to_owned(),
            };
            row.push_str(&cell);
        }
        let cpu = med(case, &|m| m.cpu1_busy_pct).map_or("—".to_owned(), |c| format!("{c:.0}"));
        let _ = writeln!(s, "{row} {cpu} |");
    }
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
                notes.push(format!(
                    "- {} (a successful round {}): {p}",
                    case.label(),
                    i + 1
                ));
            }
        }
    }
    if !notes.is_empty() {
        let _ = writeln!(s, "\nProblems:\n{}", notes.join("\n"));
    }
    s
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}

pub(super) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_owned)
}

pub(super) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 3s test @ http://198.18.1.2:80/small.html\n\
          1 threads and 32 connections\n\
          Latency Distribution\n     50%  312.00us\n     75%  400.00us\n     90%    1.10ms\n     99%    2.50ms\n\
          30000 requests in 3.00s, 20.00MB read\n\
        Requests/sec:  10000.50\nTransfer/sec:      6.67MB\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.rps, 10000.5);
        assert_eq!(r.p99_ms, Some(2.5));
        let bad = format!("{out}  Non-2xx or 3xx responses: 30000\n");
        assert!(parse_wrk(&bad).is_err());
        assert!(parse_wrk("unable to connect").is_err());
        assert_eq!(parse_duration_ms("500.00us"), Some(0.5));
        assert_eq!(parse_duration_ms("1.50s"), Some(1500.0));
    }
}
