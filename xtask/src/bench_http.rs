//! `cargo xtask bench http`: the L7 proxy against HAProxy `mode http` (marathon-lb's vhost
//! frontend shape) and against no load balancer at all, following
//! `shared/reference/benchmark-method.md`:
//!
//! - namespaces `cli` — `lb` — bridge `sw` — `be1`, `be2` on 198.18.0.0/15, no route out;
//! - client (wrk) and backends (nginx, one worker each) on cpu0; the load balancer and lb's
//!   receive path (RPS) on cpu1, one thread;
//! - cases interleaved per round, each load balancer started afresh every round, medians of the
//!   rounds, ratios to "direct" (kernel routing through lb, no load balancer);
//! - keep-alive req/s with p50/p99, new connections/s (`Connection: close`), LB CPU busy %.
//!
//! What differs from the method: no threaded-NAPI pinning (plain veths without XDP have no NAPI
//! kthreads to pin), and no bulk (iperf3) case, which says nothing about an HTTP proxy.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

const NS: [&str; 5] = ["mlbb-cli", "mlbb-lb", "mlbb-sw", "mlbb-be1", "mlbb-be2"];
const VIP: &str = "198.18.1.2";
const BACKENDS: [&str; 2] = ["198.18.2.11", "198.18.2.12"];
const VHOST: &str = "app.example.com";
const ROUNDS: usize = 3;
const DURATION_S: u32 = 10;

/// Runs the benchmark and prints the table.
pub fn run(proxy_bin: &Path) -> Result<()> {
    if !crate::setup::is_root() {
        bail!("bench http needs root (network namespaces)");
    }
    let work = std::env::temp_dir().join("mlb-bench-http");
    fs::create_dir_all(&work)?;
    let _net = Topology::create()?;
    let _backends = [
        nginx(&work, "mlbb-be1", BACKENDS[0])?,
        nginx(&work, "mlbb-be2", BACKENDS[1])?,
    ];
    for backend in BACKENDS {
        wait_http("mlbb-lb", &format!("{backend}:80"))?;
    }
    let haproxy_cfg = write_haproxy_config(&work)?;

    let cases = [Case::Direct, Case::Haproxy, Case::Mlb];
    let mut results: Vec<Vec<Sample>> = vec![Vec::new(); cases.len()];
    for round in 1..=ROUNDS {
        for (i, case) in cases.iter().enumerate() {
            eprintln!("bench http: round {round}/{ROUNDS}: {}", case.name());
            results[i].push(measure(*case, proxy_bin, &haproxy_cfg)?);
        }
    }

    let direct = median_sample(&results[0]);
    println!(
        "\n{:<26} {:>12} {:>9} {:>9} {:>12} {:>8} | ratios to direct: req/s, p99, conn/s",
        "case (medians of 3)", "req/s", "p50 ms", "p99 ms", "new conn/s", "LB CPU%"
    );
    for (case, samples) in cases.iter().zip(&results) {
        let m = median_sample(samples);
        println!(
            "{:<26} {:>12.0} {:>9.3} {:>9.3} {:>12.0} {:>8.0} | {:.2} {:.2} {:.2}",
            case.name(),
            m.rps,
            m.p50_ms,
            m.p99_ms,
            m.conn_rps,
            m.cpu_pct,
            m.rps / direct.rps,
            m.p99_ms / direct.p99_ms,
            m.conn_rps / direct.conn_rps,
        );
    }
    Ok(())
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

#[derive(Clone, Copy, Default)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    conn_rps: f64,
    cpu_pct: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn median_sample(s: &[Sample]) -> Sample {
    Sample {
        rps: median(s.iter().map(|x| x.rps).collect()),
        p50_ms: median(s.iter().map(|x| x.p50_ms).collect()),
        p99_ms: median(s.iter().map(|x| x.p99_ms).collect()),
        conn_rps: median(s.iter().map(|x| x.conn_rps).collect()),
        cpu_pct: median(s.iter().map(|x| x.cpu_pct).collect()),
    }
}

fn measure(case: Case, proxy_bin: &Path, haproxy_cfg: &Path) -> Result<Sample> {
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
                &["haproxy", "-db", "-f", &haproxy_cfg.to_string_lossy()],
            )?;
            (format!("{VIP}:80"), Some(child))
        }
        Case::Mlb => {
            let mut args = vec![
                proxy_bin.to_string_lossy().into_owned(),
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
    let keep_alive = wrk(&target, false)?;
    let cpu_after = lb.as_ref().map(|c| cpu_ticks(c.0.id())).transpose()?;
    let close = wrk(&target, true)?;
    let cpu_pct = match (cpu_before, cpu_after) {
        // Clock ticks are 1/100 s on Linux.
        (Some(b), Some(a)) => (a - b) as f64 / f64::from(DURATION_S),
        _ => 0.0,
    };
    Ok(Sample {
        rps: keep_alive.0,
        p50_ms: keep_alive.1,
        p99_ms: keep_alive.2,
        conn_rps: close.0,
        cpu_pct,
    })
}

/// `(req/s, p50 ms, p99 ms)` from `wrk -t1 -c32 --latency` run in cli on cpu0.
fn wrk(target: &str, close: bool) -> Result<(f64, f64, f64)> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", "mlbb-cli", "taskset", "-c", "0", "wrk"])
        .args(["-t1", "-c32", &format!("-d{DURATION_S}s"), "--latency"])
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

fn write_haproxy_config(work: &Path) -> Result<PathBuf> {
    let path = work.join("haproxy.cfg");
    let servers: String = BACKENDS
        .iter()
        .enumerate()
        .map(|(i, b)| format!("  server be{i} {b}:80\n"))
        .collect();
    fs::write(
        &path,
        format!(
            "global\n  nbthread 1\n  maxconn 4096\n\
             defaults\n  mode http\n  timeout connect 3s\n  timeout client 30s\n  timeout server 30s\n\
             frontend marathon_http_in\n  bind {VIP}:80\n  acl host_app hdr(host) -i {VHOST}\n  use_backend app_10000 if host_app\n\
             backend app_10000\n  balance roundrobin\n{servers}"
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
