//! Waiting for a process in the lab to serve: bounded polling and a one-second curl probe.
use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use super::lab::{self, Lab};

/// How long a load balancer or backend may take to answer after it is started.
pub const START_LIMIT: Duration = Duration::from_secs(10);

/// Polls `ready` (which may fail fast) every 100 ms until it says yes or `limit` passes.
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
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

/// Waits until `curl CURL_ARGS` from namespace `ns` gets a 200, failing at once (with the end
/// of its log) if the process `pid` of the lab exits meanwhile.
pub fn wait_for_200(lab: &mut Lab, pid: Option<u32>, ns: &str, curl_args: &[&str]) -> Result<()> {
    wait_until(START_LIMIT, || {
        if let Some(pid) = pid {
            lab.check_alive(pid).map_err(anyhow::Error::msg)?;
        }
        Ok(answers_200(ns, curl_args))
    })
}

/// Whether `curl CURL_ARGS` run in namespace `ns` gets a 200 within a second.
pub fn answers_200(ns: &str, curl_args: &[&str]) -> bool {
    let mut args = vec![
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-m",
        "1",
        "-w",
        "%{http_code}",
    ];
    args.extend(curl_args);
    lab::ns_run(ns, &args).is_ok_and(|code| code.trim() == "200")
}
