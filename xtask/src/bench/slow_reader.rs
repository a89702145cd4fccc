//! A slow client reading a large response through the proxy (`bench http --slow-reader`): one
//! `curl` in the client namespace reads 1 GiB from a backend through mlb at a throttled rate;
//! mlb's resident memory is sampled all along. A proxy that buffered what the backend sends
//! faster than the client reads would grow towards the body's size; one that applies
//! backpressure stays near its idle size.
use std::{
    fmt::Write as _,
    fs,
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::lab::{ChildGuard, NS_CLI};

/// The response's size.
pub const BODY_BYTES: u64 = 1 << 30;
/// The client's read rate (curl's `--limit-rate`, bytes/s): far below what the backend and the
/// proxy can send, so the proxy's side is ahead of the client the whole time.
const RATE: &str = "64M";
/// The run's bound: 1 GiB at 64 MiB/s takes 16 s.
const MAX_SECS: &str = "60";

/// Writes the response: a sparse file (no disk used; the backend reads zeros).
pub fn write_body(www: &Path) -> Result<&'static str> {
    const NAME: &str = "big.bin";
    fs::File::create(www.join(NAME))?.set_len(BODY_BYTES)?;
    Ok(NAME)
}

/// Reads `url` (with `host` as Host header) from the client namespace at [`RATE`] while
/// sampling `pid`'s resident memory; the report's table row.
pub fn measure(pid: u32, url: &str, host: &str) -> Result<String> {
    let before = super::idle::rss_kib(pid)?;
    let host_header = format!("Host: {host}");
    let mut curl = Command::new("ip");
    curl.args(["netns", "exec", NS_CLI, "curl", "-sS", "-o", "/dev/null"])
        .args(["--limit-rate", RATE, "--max-time", MAX_SECS])
        .args(["-w", "%{http_code} %{size_download} %{time_total}"])
        .args(["-H", &host_header, url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut curl = ChildGuard::new(curl.spawn().context("curl")?);
    let started = Instant::now();
    let mut peak = before;
    while curl.try_wait()?.is_none() {
        peak = peak.max(super::idle::rss_kib(pid)?);
        thread::sleep(Duration::from_millis(100));
    }
    let mut out = String::new();
    curl.stdout
        .take()
        .context("curl's stdout")?
        .read_to_string(&mut out)?;
    let fields: Vec<&str> = out.split_whitespace().collect();
    let [status, bytes, secs] = fields[..] else {
        bail!("curl said {out:?} after {:?}", started.elapsed());
    };
    let (bytes, secs): (u64, f64) = (bytes.parse()?, secs.parse()?);
    if status != "200" || bytes != BODY_BYTES {
        bail!("the slow read got {status} and {bytes} of {BODY_BYTES} bytes in {secs:.1} s");
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut row = String::new();
    write!(
        row,
        "| {:.1} | {:.1} | {:.1} | {:.0} | {:.1} |",
        mib(before),
        mib(peak),
        mib(peak.saturating_sub(before)),
        bytes as f64 / secs / f64::from(1 << 20),
        secs
    )?;
    Ok(row)
}
