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
    fn busy_share_between_two_readings() {
        assert_eq!(busy_pct(Some((1000, 200)), Some((1400, 500))), Some(75.0));
        // No time passed, or a reading missing: no figure.
        assert_eq!(busy_pct(Some((1000, 200)), Some((1000, 200))), None);
        assert_eq!(busy_pct(None, Some((1000, 200))), None);
    }
}
