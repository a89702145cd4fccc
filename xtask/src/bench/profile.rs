//! A flat CPU profile with `perf record`, of one process or of whole CPUs, while the bench
//! measures something.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    flamegraph,
    lab::{self, ChildGuard},
};

/// Samples per second: enough for a second-long phase, little overhead.
const FREQ: &str = "999";
/// Lines of the report kept (the hottest symbols).
const TOP: usize = 15;

/// A running `perf record`; [`Profile::finish`] or [`Profile::finish_per_cpu`] stops it and
/// reports.
pub struct Profile {
    perf: ChildGuard,
    data: PathBuf,
}

impl Profile {
    /// Starts sampling `pid` (all its threads) into `dir/NAME.perf.data`, with call graphs
    /// (DWARF unwinding: release builds keep no frame pointers) when `call_graph`.
    pub fn start(pid: u32, dir: &Path, name: &str, call_graph: bool) -> Result<Profile> {
        let call_graph: &[&str] = if call_graph {
            &["--call-graph", "dwarf,32768"]
        } else {
            &[]
        };
        Profile::record(&["-p", &pid.to_string()], call_graph, dir, name)
    }

    /// Starts sampling everything that runs on `cpus` (a `perf` CPU list, `"0,1"`), kernel and
    /// softirqs included, into `dir/NAME.perf.data`.
    pub fn start_cpus(cpus: &str, dir: &Path, name: &str) -> Result<Profile> {
        Profile::record(&["-a", "-C", cpus], &[], dir, name)
    }

    fn record(scope: &[&str], extra: &[&str], dir: &Path, name: &str) -> Result<Profile> {
        let data = dir.join(format!("{name}.perf.data"));
        let child = Command::new("perf")
            .args(["record", "-F", FREQ])
            .args(scope)
            .args(extra)
            .arg("-o")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record (is perf installed?)")?;
        Ok(Profile {
            perf: ChildGuard::new(child),
            data,
        })
    }

    /// Stops sampling (SIGINT: perf writes its data and exits) and returns the hottest symbols
    /// by self time, one per line: `share  binary  symbol`.
    pub fn finish(mut self) -> Result<Vec<String>> {
        self.stop()?;
        self.report(&[])
    }

    /// [`Profile::finish`], and the flamegraph of the profile (started with call graphs)
    /// written to `svg` under `title`: its path, or `None` when it could not be drawn (said on
    /// stderr; the hottest symbols stand without it).
    pub fn finish_with_flamegraph(
        self,
        svg: &Path,
        title: &str,
    ) -> Result<(Vec<String>, Option<PathBuf>)> {
        let data = self.data.clone();
        let hot = self.finish()?;
        match flamegraph::write(&data, svg, title) {
            Ok(()) => Ok((hot, Some(svg.to_owned()))),
            Err(e) => {
                eprintln!("bench: no flamegraph for {title}: {e:#}");
                Ok((hot, None))
            }
        }
    }

    /// Stops sampling and returns, for each of `cpus`, its hottest symbols by self time (shares
    /// of that CPU's samples).
    pub fn finish_per_cpu(mut self, cpus: &[u32]) -> Result<Vec<(u32, Vec<String>)>> {
        self.stop()?;
        cpus.iter()
            .map(|&cpu| Ok((cpu, self.report(&["--cpu", &cpu.to_string()])?)))
            .collect()
    }

    fn stop(&mut self) -> Result<()> {
        let pid = self.perf.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.perf.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("perf record did not stop within 20 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn report(&self, filter: &[&str]) -> Result<Vec<String>> {
        let out = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "-q",
                "--sort",
                "dso,symbol",
                // Self time per symbol only, also when call graphs were recorded (for a
                // flamegraph): perf would print each symbol's call chains under it.
                "-g",
                "none",
            ])
            .args(filter)
            // Shares of what the filter kept (one CPU's samples), not of all samples.
            .args(["--percentage", "relative"])
            .args(["--percent-limit", "0.5", "-i"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()
            .context("perf report")?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .take(TOP)
            // Trailing `-` columns (empty parent / call-chain fields) say nothing.
            .map(|l| {
                l.trim_end_matches([' ', '-'])
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .map(|l| l.chars().take(160).collect())
            .collect())
    }
}

/// The kernel's switch for BPF run-time statistics (global: it costs every program two clock
/// reads per run while on).
const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// BPF run-time statistics turned on while this lives; the switch goes back to what it was
/// when dropped.
pub struct BpfStatsOn {
    before: Option<String>,
}

impl BpfStatsOn {
    pub fn new() -> BpfStatsOn {
        let before = fs::read_to_string(BPF_STATS).ok();
        let _ = fs::write(BPF_STATS, "1");
        BpfStatsOn { before }
    }
}

impl Drop for BpfStatsOn {
    fn drop(&mut self) {
        if let Some(before) = &self.before {
            let _ = fs::write(BPF_STATS, before.trim());
        }
    }
}

/// Run time and run count of the XDP program attached to `dev` in namespace `ns` (the kernel
/// counts them while `kernel.bpf_stats_enabled` is 1); `None` when there is none or no stats.
pub fn xdp_run_stats(ns: &str, dev: &str) -> Option<XdpRunStats> {
    let net = lab::ns_run(ns, &["bpftool", "-j", "net", "show", "dev", dev]).ok()?;
    let net: serde_json::Value = serde_json::from_str(&net).ok()?;
    let id = net.pointer("/0/xdp/0/id")?.as_u64()?;
    let prog = lab::run(&["bpftool", "-j", "prog", "show", "id", &id.to_string()]).ok()?;
    run_stats_of(&serde_json::from_str(&prog).ok()?)
}

/// The run statistics in `bpftool -j prog show` output for one program. bpftool leaves both
/// fields out while the run time is 0 (no run since stats were enabled): that reads as 0, not
/// as none, or the first round of a run would report no figure.
fn run_stats_of(prog: &serde_json::Value) -> Option<XdpRunStats> {
    let field = |name| prog.get(name).map_or(Some(0), serde_json::Value::as_u64);
    Some(XdpRunStats {
        run_time_ns: field("run_time_ns")?,
        run_cnt: field("run_cnt")?,
    })
}

/// The kernel's run-time statistics of one BPF program.
#[derive(Clone, Copy)]
pub struct XdpRunStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl XdpRunStats {
    /// Runs and mean ns per run since `before`.
    pub fn since(self, before: XdpRunStats) -> Option<(u64, f64)> {
        let runs = self.run_cnt.checked_sub(before.run_cnt)?;
        let ns = self.run_time_ns.checked_sub(before.run_time_ns)?;
        (runs > 0).then(|| (runs, ns as f64 / runs as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_run_time_since_an_earlier_reading() {
        let before = XdpRunStats {
            run_time_ns: 1_000,
            run_cnt: 10,
        };
        let after = XdpRunStats {
            run_time_ns: 41_000,
            run_cnt: 110,
        };
        assert_eq!(after.since(before), Some((100, 400.0)));
        // No run in between, or a program replaced (its counters restarted): no figure.
        assert_eq!(after.since(after), None);
        assert_eq!(before.since(after), None);
    }

    #[test]
    fn a_program_that_has_not_run_yet_reads_as_zero_runs() {
        let fresh = serde_json::json!({"id": 7, "type": "xdp"});
        let stats = run_stats_of(&fresh).unwrap();
        assert_eq!((stats.run_time_ns, stats.run_cnt), (0, 0));
        let ran = serde_json::json!({"id": 7, "run_time_ns": 40_000, "run_cnt": 100});
        assert_eq!(run_stats_of(&ran).unwrap().since(stats), Some((100, 400.0)));
    }
}
