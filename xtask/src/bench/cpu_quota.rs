//! A CPU quota for the load balancer under test (`bench http --lb-cpu-quota`).
//!
//! On a two-core lab the client and the backends share one core, and once a load balancer
//! needs less than its own core, that shared core sets the rate for every load balancer alike.
//! Capping each load balancer at the same share of a CPU makes the load balancer the limit
//! again, so the rates compare what each one serves per CPU second. The cap is the kernel's
//! CFS bandwidth control (a cgroup's CPU quota) in short periods, so a capped load balancer
//! runs in slices of a few milliseconds rather than pausing for long.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// The quota's period: short, so that throttling shows as milliseconds of latency, not tens.
const PERIOD_US: u32 = 10_000;

/// A cgroup of its own with a CPU quota; removed when dropped (its processes stopped first).
pub struct CpuQuota {
    dir: PathBuf,
    v2: bool,
}

impl CpuQuota {
    /// A new cgroup `name` under the CPU controller's root (cgroup v2, else v1).
    pub fn create(name: &str) -> Result<CpuQuota> {
        let v2_root = Path::new("/sys/fs/cgroup");
        let v2 = fs::read_to_string(v2_root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"));
        let root = if v2 {
            // Children get the cpu controller only when their parent hands it down.
            fs::write(v2_root.join("cgroup.subtree_control"), "+cpu")
                .context("enabling the cgroup v2 cpu controller for children of the root")?;
            v2_root.to_path_buf()
        } else if Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists() {
            PathBuf::from("/sys/fs/cgroup/cpu")
        } else {
            bail!(
                "--lb-cpu-quota needs the cgroup CPU controller (v2, or v1 at /sys/fs/cgroup/cpu)"
            );
        };
        let dir = root.join(name);
        // A run that was killed leaves its (empty) cgroup behind.
        let _ = fs::remove_dir(&dir);
        fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        Ok(CpuQuota { dir, v2 })
    }

    /// Allows `percent` % of one CPU (over 100: more than one CPU's worth).
    pub fn set_percent(&self, percent: u32) -> Result<()> {
        let quota_us = PERIOD_US / 100 * percent;
        if self.v2 {
            self.write("cpu.max", &format!("{quota_us} {PERIOD_US}"))
        } else {
            // v1 checks the quota against the current period: set the period first.
            self.write("cpu.cfs_period_us", &PERIOD_US.to_string())?;
            self.write("cpu.cfs_quota_us", &quota_us.to_string())
        }
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        fs::write(&path, value).with_context(|| format!("writing {value} to {}", path.display()))
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use std::{process::Command, thread, time::Duration};

    use super::*;

    /// CPU seconds `pid` has used (user + system, from `/proc/<pid>/stat`).
    fn cpu_secs(pid: u32) -> f64 {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        // In USER_HZ, 100 on every Linux architecture that matters here.
        ticks / 100.0
    }

    #[test]
    fn a_busy_process_in_the_cgroup_gets_its_quota_and_no_more() {
        if !crate::setup::is_root() {
            eprintln!("skipped: creating a cgroup needs root");
            return;
        }
        let quota = CpuQuota::create(&format!("mlb-xtask-test-{}", std::process::id())).unwrap();
        quota.set_percent(20).unwrap();
        let mut busy = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let pid = busy.id();
        quota.add(pid).unwrap();
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let before = cpu_secs(pid);
        thread::sleep(Duration::from_secs(1));
        let used = cpu_secs(pid) - before;
        busy.kill().unwrap();
        busy.wait().unwrap();
        assert!(cgroup.contains("mlb-xtask-test-"), "{cgroup}");
        // 0.2 s of CPU per second, with a tick's rounding and a period's slack either way.
        assert!((0.1..0.35).contains(&used), "{used:.2} CPU seconds in 1 s");
    }
}
