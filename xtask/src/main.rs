//! Developer commands for mlb: `cargo xtask <setup|test|lint|demo|bench|image|fuzz>`.
//!
//! Every command that builds mlb runs `setup` first, so a fresh machine needs nothing but rustup's
//! stable and nightly toolchains (and root for the packages and the namespace tests).
mod bench;
mod fuzz;
mod image;
mod lint;
mod setup;

use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "mlb developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing mlb needs (idempotent; instant when all is present).
    Setup,
    /// Run every test: unit tests, BPF_PROG_TEST_RUN fixtures, namespace end-to-end tests.
    Test {
        /// Extra arguments passed to `cargo test` after `--` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// `cargo fmt --check` and `cargo clippy -D warnings` on the host crates and the eBPF crate.
    Lint,
    /// Benchmarks in network namespaces; each prints its table and writes it to bench-results/.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Run the demo: the Marathon simulator's sample apps routed by mlb (XDP in namespaces when
    /// root, else userspace on loopback), scaled live (see README).
    Demo {
        /// Arguments passed to mlb-demo (`--duration SECS`, `--dataplane`, `--scale-every SECS`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Fuzzing campaigns longer than the test run's: `xdp` (frames through the XDP program)
    /// and, under libFuzzer, `sse`, `apps`, `labels`, `http`; crashes are kept as regression
    /// inputs that `cargo test` replays. E.g. `cargo xtask fuzz xdp --seconds 300`.
    Fuzz(fuzz::FuzzArgs),
    /// Build the container image `mlb:<version>` with podman, offline (`FROM scratch` and a root
    /// file system made here; no base image is pulled).
    Image {
        /// Use the debug build (quicker to build; the image is larger and slower).
        #[arg(long)]
        dev: bool,
        /// Then run the image test: the image, host networking in a test namespace, only the
        /// documented capabilities, routing the simulator's apps (root).
        #[arg(long)]
        test: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::run(setup::TEST_PACKAGES),
        Cmd::Test { args } => {
            setup::run(setup::TEST_PACKAGES)?;
            if !setup::is_root() {
                eprintln!(
                    "xtask test: not root: tests that need network namespaces or BPF will report \
                     themselves skipped"
                );
            }
            // Build the `mlb` binary first: end-to-end tests spawn it.
            cargo(&["build", "--package", "mlb-userspace", "--bin", "mlb"])?;
            let mut test = vec![
                "test",
                "--workspace",
                "--exclude",
                "mlb-ebpf",
                "--no-fail-fast",
            ];
            if !args.is_empty() {
                test.push("--");
                test.extend(args.iter().map(String::as_str));
            }
            cargo(&test)
        }
        Cmd::Lint => lint::run(),
        Cmd::Fuzz(args) => fuzz::run(&args),
        Cmd::Bench(cmd) => bench::run(cmd),
        Cmd::Image { dev, test } => image::run(dev, test),
        Cmd::Demo { args } => {
            setup::run(setup::DEMO_PACKAGES)?;
            // Debug builds: `cargo xtask test` builds the same ones (a warm target dir), a release
            // build of the whole tree takes minutes, and the demo's traffic is tiny. The XDP
            // program is optimized either way (aya-build always builds it in release).
            cargo(&["build", "--package", "mlb-userspace", "--bin", "mlb"])?;
            // `cargo run` builds mlb-demo and replaces itself with it, and so does this process:
            // Ctrl-C reaches mlb-demo, which stops mlb and deletes its namespaces before it exits.
            // mlb-demo finds `mlb` next to itself in target/debug.
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let err = Command::new(&cargo)
                .args([
                    "run",
                    "--quiet",
                    "--package",
                    "tests",
                    "--bin",
                    "mlb-demo",
                    "--",
                ])
                .args(&args)
                .exec();
            Err(err).with_context(|| format!("running {cargo} run --bin mlb-demo"))
        }
    }
}

/// Runs cargo (the same toolchain that runs xtask) and fails if it does.
pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    cargo_env(args, &[])
}

/// [`cargo`] with extra environment variables.
pub(crate) fn cargo_env(args: &[&str], env: &[(&str, String)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}
