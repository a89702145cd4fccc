//! Headless Chromium (Debian's `chromium`, installed by `cargo xtask setup`), to check pages
//! the way a browser sees them: the DOM after parsing, and a screenshot.
use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

/// Longest a page load may take before the test fails (Chromium's own start included).
const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `chromium --headless <args> <url>` under `timeout`, with a profile in `profile_dir` (so
/// parallel tests never share one), and returns its output.
fn run(profile_dir: &Path, args: &[&str], url: &str) -> Result<Output> {
    let out = Command::new("timeout")
        .arg(TIMEOUT.as_secs().to_string())
        .arg("chromium")
        .args([
            "--headless",
            // Tests run as root, where Chromium's sandbox refuses to start.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile_dir.display()))
        .args(args)
        .arg(url)
        .output()
        .context("running chromium (installed by `cargo xtask setup`)")?;
    ensure!(
        out.status.success(),
        "chromium {args:?} {url}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out)
}

/// The DOM of `url` once loaded, serialized.
pub fn dump_dom(profile_dir: &Path, url: &str) -> Result<String> {
    let out = run(profile_dir, &["--dump-dom"], url)?;
    Ok(String::from_utf8(out.stdout)?)
}

/// A PNG screenshot of `url` at `width`x`height` into `path`.
pub fn screenshot(
    profile_dir: &Path,
    url: &str,
    path: &Path,
    (width, height): (u32, u32),
) -> Result<()> {
    run(
        profile_dir,
        &[
            &format!("--screenshot={}", path.display()),
            &format!("--window-size={width},{height}"),
        ],
        url,
    )?;
    let png = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    Ok(())
}
