//! Builds the XDP program (`mlb-ebpf`) for `bpfel-unknown-none` with the nightly toolchain and
//! `bpf-linker`, and leaves the object in `OUT_DIR/mlb-ebpf` for `include_bytes_aligned!`.
//!
//! `cargo xtask setup` installs what this needs (nightly `rust-src`, `bpf-linker` built against
//! nightly's LLVM); the error below says so when something is missing.
//!
//! The eBPF build's own output (aya-build relays every compiler line as a cargo warning) is shown
//! only when it fails or with `MLB_BUILD_VERBOSE=1`: this script runs itself as a child to build
//! and keeps the child's warnings. It also records the git commit for `mlb version`.
use std::process::Command;

use anyhow::{Context as _, anyhow};

/// Set in the child run of this script that does the eBPF build.
const CHILD: &str = "MLB_EBPF_BUILD_CHILD";
const VERBOSE: &str = "MLB_BUILD_VERBOSE";

fn main() -> anyhow::Result<()> {
    if std::env::var_os(CHILD).is_some() {
        return build_ebpf();
    }
    git_commit();
    println!("cargo:rerun-if-env-changed={VERBOSE}");
    let out = Command::new(std::env::current_exe()?)
        .env(CHILD, "1")
        .output()
        .context("running the eBPF build")?;
    let verbose = std::env::var_os(VERBOSE).is_some_and(|v| v != "0");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        // On failure cargo shows this script's whole output: keep every line then.
        if verbose || !out.status.success() || !line.starts_with("cargo:warning=") {
            println!("{line}");
        }
    }
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        return Err(anyhow!(
            "the eBPF build failed ({}); its output is above",
            out.status
        ));
    }
    Ok(())
}

/// `MLB_GIT_COMMIT` for `mlb version`: the environment's (image builds without `.git`), else
/// `git rev-parse HEAD`, else `unknown`.
fn git_commit() {
    println!("cargo:rerun-if-env-changed=MLB_GIT_COMMIT");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = std::env::var("MLB_GIT_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=MLB_GIT_COMMIT={commit}");
    // Re-run when HEAD moves: HEAD itself and the branch it points to.
    for path in [git(&["rev-parse", "--git-path", "HEAD"]), {
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r]))
    }]
    .into_iter()
    .flatten()
    {
        println!("cargo:rerun-if-changed={path}");
    }
}

fn build_ebpf() -> anyhow::Result<()> {
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        // Lint/doc builds that never run the program: embed an empty object.
        let out = std::env::var("OUT_DIR")?;
        std::fs::write(format!("{out}/mlb-ebpf"), [])?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    which::which("bpf-linker").map_err(|_| {
        anyhow!(
            "bpf-linker is not on PATH: the XDP program cannot be linked. \
             Run `cargo xtask setup` (it installs bpf-linker against the nightly toolchain's LLVM)."
        )
    })?;
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "mlb-ebpf")
        .ok_or_else(|| anyhow!("mlb-ebpf package not found in the workspace"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let root_dir = manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?;
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], aya_build::Toolchain::default())
        .context("building the XDP program (mlb-ebpf); `cargo xtask setup` installs its toolchain")
}
