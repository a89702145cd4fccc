//! A flat CPU profile of one process with `perf record`, while the bench measures something.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::lab::ChildGuard;

/// Samples per second: enough for a second-long phase, little overhead.
const FREQ: &str = "999";
/// Lines of the report kept (the hottest symbols).
const TOP: usize = 15;

/// A running `perf record -p PID`; [`Profile::finish`] stops it and reports.
pub struct Profile {
    perf: ChildGuard,
    data: PathBuf,
}

impl Profile {
    /// Starts sampling `pid` (all its threads) into `dir/NAME.perf.data`, with call graphs
    /// (DWARF unwinding: release builds keep no frame pointers) when `call_graph`.
    pub fn start(pid: u32, dir: &Path, name: &str, call_graph: bool) -> Result<Profile> {
        let data = dir.join(format!("{name}.perf.data"));
        let child = Command::new("perf")
            .args(["record", "-F", FREQ, "-p", &pid.to_string(), "-o"])
            .arg(&data)
            .args(if call_graph {
                &["--call-graph", "dwarf,32768"][..]
            } else {
                &[]
            })
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
        let pid = self.perf.id().to_string();
        Command::new("kill").args(["-INT", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.perf.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("perf record did not stop within 20 s");
            }
            thread::sleep(Duration::from_millis(50));
        }
        let out = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "-q",
                "--sort",
                "dso,symbol",
            ])
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
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .map(|l| l.chars().take(160).collect())
            .collect())
    }
}
