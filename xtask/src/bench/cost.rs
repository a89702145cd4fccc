//! What one request costs, beside each HTTP case's rate: the load balancer's CPU time, its
//! syscalls and context switches (wakeups), and the packets on lb's two legs (client side
//! `lb-cli`, backend side `lb-sw`). The rate of this lab is decided as much by the segments and
//! wakeups the LB puts on cpu0 (client and backends) as by the LB's own CPU, so both are shown.
//!
//! Counters are read before and after a load run: `/proc` times and context switches of the
//! LB, `/proc/net/dev` of lb's namespace, and with `--profile` `perf stat` (counting only) of
//! the LB's syscalls. Syscalls are not counted by default: while the `raw_syscalls` tracepoint
//! is on, every process on the machine (wrk and nginx on the busy cpu0 too) takes the kernel's
//! slow syscall path, which cut the rates of one run by a third. Without them they are `n/a`.
use std::{
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};

use super::{cpu, lab};

/// The interface of lb towards the client and towards the backends.
const CLIENT_LEG: &str = "lb-cli";
const BACKEND_LEG: &str = "lb-sw";

/// Per-request figures of one load run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// LB CPU microseconds (none without a load balancer).
    pub cpu_us: Option<f64>,
    pub syscalls: Option<f64>,
    pub ctx_switches: Option<f64>,
    /// Packets received + sent by lb on its client leg and on its backend leg.
    pub client_pkts: f64,
    pub backend_pkts: f64,
    /// Busy share (%) of cpu0 (client, backends, what lb sends) and of cpu1 (the LB and lb's
    /// receive work) over the run: which side set the rate.
    pub cpu_busy: [Option<f64>; 2],
}

/// Counter readings at the start of a run, and the `perf stat` counting over it.
pub struct Probe {
    lb: Option<u32>,
    cpu_secs: Option<f64>,
    ctx_switches: Option<u64>,
    packets: (u64, u64),
    cpus: [Option<(u64, u64)>; 2],
    perf: Option<Child>,
}

impl Probe {
    /// Reads the counters and, with `count_syscalls`, starts counting `lb`'s syscalls for
    /// `secs` (the load's length).
    pub fn start(lb: Option<u32>, secs: u32, count_syscalls: bool) -> Result<Probe> {
        let perf = lb
            .filter(|_| count_syscalls)
            .and_then(|pid| perf_stat(pid, secs));
        // perf attaches before the load starts (it is counted from its first syscall on).
        thread::sleep(Duration::from_millis(200));
        Ok(Probe {
            lb,
            cpu_secs: lb.map(cpu::process_secs).transpose()?,
            ctx_switches: lb.and_then(ctx_switches),
            packets: leg_packets()?,
            cpus: [cpu::cpu_jiffies(0), cpu::cpu_jiffies(1)],
            perf,
        })
    }

    /// The per-request cost of `requests` answered since [`Probe::start`].
    pub fn finish(self, requests: u64) -> Result<Cost> {
        let cpu_after = self.lb.map(cpu::process_secs).transpose()?;
        let (cli, be) = leg_packets()?;
        let perf = self.perf.and_then(|p| perf_counts(p).ok());
        let switched = self.lb.and_then(ctx_switches);
        let n = requests.max(1) as f64;
        let per = |v: u64| v as f64 / n;
        Ok(Cost {
            cpu_us: self.cpu_secs.zip(cpu_after).map(|(b, a)| (a - b) * 1e6 / n),
            syscalls: perf.map(per),
            ctx_switches: self
                .ctx_switches
                .zip(switched)
                .map(|(b, a)| per(a.saturating_sub(b))),
            client_pkts: per(cli.saturating_sub(self.packets.0)),
            backend_pkts: per(be.saturating_sub(self.packets.1)),
            cpu_busy: [0, 1].map(|i| cpu::busy_pct(self.cpus[i as usize], cpu::cpu_jiffies(i))),
        })
    }
}

impl Cost {
    /// `cpu µs / syscalls / ctx switches / client pkts / backend pkts`, per request, then
    /// `cpu0 % / cpu1 %` busy over the run.
    pub fn cell(&self) -> String {
        let opt = |v: Option<f64>, d: usize| v.map_or("n/a".to_owned(), |v| format!("{v:.d$}"));
        format!(
            "{} / {} / {} / {:.1} / {:.1} / {} / {}",
            opt(self.cpu_us, 1),
            opt(self.syscalls, 1),
            opt(self.ctx_switches, 2),
            self.client_pkts,
            self.backend_pkts,
            opt(self.cpu_busy[0], 0),
            opt(self.cpu_busy[1], 0)
        )
    }

    /// The median of each figure over rounds.
    pub fn median_of(costs: &[Cost]) -> Cost {
        let of = |f: fn(&Cost) -> f64| {
            super::stats::median(&costs.iter().map(f).collect::<Vec<_>>()).unwrap_or_default()
        };
        let of_opt = |f: fn(&Cost) -> Option<f64>| {
            let v: Option<Vec<f64>> = costs.iter().map(f).collect();
            super::stats::median(&v?)
        };
        Cost {
            cpu_us: of_opt(|c| c.cpu_us),
            syscalls: of_opt(|c| c.syscalls),
            ctx_switches: of_opt(|c| c.ctx_switches),
            client_pkts: of(|c| c.client_pkts),
            backend_pkts: of(|c| c.backend_pkts),
            cpu_busy: [of_opt(|c| c.cpu_busy[0]), of_opt(|c| c.cpu_busy[1])],
        }
    }
}

/// Voluntary and involuntary context switches of all of `pid`'s threads so far
/// (`/proc/<pid>/task/*/status`); `None` when they cannot be read.
fn ctx_switches(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0;
    for task in tasks {
        let status = std::fs::read_to_string(task.ok()?.path().join("status")).ok()?;
        total += switches_in_status(&status);
    }
    Some(total)
}

/// The sum of a `/proc/.../status` text's `voluntary_ctxt_switches` and
/// `nonvoluntary_ctxt_switches`.
fn switches_in_status(status: &str) -> u64 {
    status
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// `perf stat` counting `pid`'s syscalls for `secs` (+1 s of margin, so
/// the whole load is inside); `None` when perf cannot start.
fn perf_stat(pid: u32, secs: u32) -> Option<Child> {
    Command::new("perf")
        .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter"])
        .args([
            "-p",
            &pid.to_string(),
            "--",
            "sleep",
            &(secs + 1).to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()
}

/// The syscalls counted by a finished `perf stat -x,`.
fn perf_counts(perf: Child) -> Result<u64> {
    let out = perf.wait_with_output()?;
    parse_perf(&String::from_utf8_lossy(&out.stderr))
}

fn parse_perf(text: &str) -> Result<u64> {
    let event = "raw_syscalls:sys_enter";
    text.lines()
        .find(|l| l.split(',').nth(2) == Some(event))
        .and_then(|l| l.split(',').next()?.parse::<u64>().ok())
        .with_context(|| format!("no {event} count in perf stat's output: {text}"))
}

/// Packets (rx + tx) on lb's client leg and backend leg so far.
fn leg_packets() -> Result<(u64, u64)> {
    let dev = lab::ns_run(lab::NS_LB, &["cat", "/proc/net/dev"])?;
    let of = |name| packets(&dev, name).with_context(|| format!("no {name} in {dev}"));
    Ok((of(CLIENT_LEG)?, of(BACKEND_LEG)?))
}

/// rx + tx packets of `iface` in a `/proc/net/dev` text (fields 2 and 10 after the name).
fn packets(dev: &str, iface: &str) -> Option<u64> {
    let line = dev
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(iface)?.strip_prefix(':'))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    Some(v.get(1)? + v.get(9)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_packets_of_one_interface() {
        let dev = "Inter-|   Receive |  Transmit\n face |bytes packets errs\n\
                   lb-cli: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n\
                   lb-sw: 5 7 0 0 0 0 0 0 9 3 0 0 0 0 0 0\n";
        assert_eq!(packets(dev, "lb-cli"), Some(30));
        assert_eq!(packets(dev, "lb-sw"), Some(10));
        assert_eq!(packets(dev, "lb"), None);
    }

    #[test]
    fn reads_perf_counts() {
        let text = "\n1234,,raw_syscalls:sys_enter,10000,100.00,,\n";
        assert_eq!(parse_perf(text).unwrap(), 1234);
        assert!(parse_perf("<not counted>,,raw_syscalls:sys_enter,0,100.00,,").is_err());
    }

    #[test]
    fn sums_both_kinds_of_context_switch() {
        let status = "Name:\tmlb\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(switches_in_status(status), 127);
        assert_eq!(switches_in_status("Name:\tmlb\n"), 0);
    }

    #[test]
    fn per_request_cell_and_median() {
        let c = |cpu: f64, cli: f64| Cost {
            cpu_us: Some(cpu),
            syscalls: None,
            ctx_switches: Some(0.5),
            client_pkts: cli,
            backend_pkts: 2.0,
            cpu_busy: [Some(cpu + 50.0), None],
        };
        let m = Cost::median_of(&[c(40.0, 2.0), c(30.0, 3.0), c(50.0, 4.0)]);
        assert_eq!(m.cell(), "40.0 / n/a / 0.50 / 3.0 / 2.0 / 90 / n/a");
    }
}
