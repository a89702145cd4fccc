//! CPU time from `/proc`: of one process (the load balancer), of one CPU (the LB's CPU).
use std::fs;

use anyhow::{Context as _, Result};

/// Clock ticks per second of `/proc` times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU seconds a process has used so far.
pub fn process_secs(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = utime_plus_stime(&stat).with_context(|| format!("/proc/{pid}/stat: {stat}"))?;
    Ok(ticks as f64 / TICKS_PER_SEC)
}

/// utime + stime, fields 14 and 15 of `stat`, i.e. 11 and 12 after the command (which may
/// hold spaces and parentheses, so it ends at the last `)`).
fn utime_plus_stime(stat: &str) -> Option<u64> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(field(11)? + field(12)?)
}

/// Total and busy (not idle, not iowait) jiffies of CPU `cpu` so far, from `/proc/stat`.
pub fn cpu_jiffies(cpu: u32) -> Option<(u64, u64)> {
    CpuTimes::read(cpu).map(|t| (t.total, t.total - t.idle))
}

/// Jiffies of one CPU so far by kind, from `/proc/stat`: where its busy time went.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    total: u64,
    /// idle + iowait.
    idle: u64,
    /// user + nice: the processes' own work (iperf3, the LB's userspace).
    user: u64,
    /// system: syscalls, including the senders' segmentation and copies.
    system: u64,
    /// irq + softirq: receive processing (NAPI, GRO, forwarding, XDP), wherever it ran.
    softirq: u64,
}

/// Shares (%) of a CPU's time between two [`CpuTimes`] readings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuSplit {
    pub user: f64,
    pub system: f64,
    pub softirq: f64,
}

impl CpuTimes {
    /// CPU `cpu`'s times so far; `None` when `/proc/stat` has no such CPU.
    pub fn read(cpu: u32) -> Option<CpuTimes> {
        Self::parse(&fs::read_to_string("/proc/stat").ok()?, cpu)
    }

    fn parse(stat: &str, cpu: u32) -> Option<CpuTimes> {
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
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        Some(CpuTimes {
            total: v.iter().take(8).sum(),
            idle: at(3) + at(4),
            user: at(0) + at(1),
            system: at(2),
            softirq: at(5) + at(6),
        })
    }

    /// The shares of the time since `before`; `None` if no time passed.
    pub fn since(self, before: CpuTimes) -> Option<CpuSplit> {
        let total = self.total.checked_sub(before.total).filter(|&t| t > 0)? as f64;
        let pct = |a: u64, b: u64| 100.0 * a.saturating_sub(b) as f64 / total;
        Some(CpuSplit {
            user: pct(self.user, before.user),
            system: pct(self.system, before.system),
            softirq: pct(self.softirq, before.softirq),
        })
    }
}

/// The busy share (%) of a CPU between two [`cpu_jiffies`] readings.
pub fn busy_pct(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((t0, b0), (t1, b1)) = (before?, after?);
    let total = t1.saturating_sub(t0);
    (total > 0).then(|| 100.0 * b1.saturating_sub(b0) as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_process_times_after_an_odd_command_name() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 1 0 5";
        assert_eq!(utime_plus_stime(stat), Some(280));
        assert_eq!(utime_plus_stime("42 (short) S 1"), None);
    }

    #[test]
    fn splits_a_cpus_time_by_kind() {
        let stat = |user, sys, idle, softirq| {
            format!(
                "cpu  1 2 3 4 5 6 7 0 0 0\ncpu0 9 9 9 9 0 0 0 0 0 0\n\
                 cpu1 {user} 10 {sys} {idle} 0 5 {softirq} 0 0 0\n"
            )
        };
        let before = CpuTimes::parse(&stat(100, 100, 100, 100), 1).unwrap();
        let after = CpuTimes::parse(&stat(120, 150, 115, 215), 1).unwrap();
        // 200 jiffies passed: 20 user, 50 system, 115 softirq, 15 idle.
        assert_eq!(
            after.since(before),
            Some(CpuSplit {
                user: 10.0,
                system: 25.0,
                softirq: 57.5
            })
        );
        assert_eq!(after.since(after), None);
        assert_eq!(CpuTimes::parse(&stat(1, 1, 1, 1), 2), None);
    }

    #[test]
    fn busy_share_between_two_readings() {
        assert_eq!(busy_pct(Some((1000, 200)), Some((1400, 500))), Some(75.0));
        // No time passed, or a reading missing: no figure.
        assert_eq!(busy_pct(Some((1000, 200)), Some((1000, 200))), None);
        assert_eq!(busy_pct(None, Some((1000, 200))), None);
    }
}
