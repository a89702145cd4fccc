//! `cargo xtask fuzz [TARGET…] [--seconds S] [--iterations N] [--seed X]`: fuzzing campaigns
//! longer than `cargo xtask test` runs.
//!
//! `xdp` feeds random and mutated frames through the XDP program (BPF_PROG_TEST_RUN, root): its
//! test in `tests/tests/xdp_fixtures.rs` reads its budget from `MLB_FUZZ_SECONDS`,
//! `MLB_FUZZ_ITERATIONS` and `MLB_FUZZ_SEED` (a failure prints the seed it ran with).
//!
//! The userspace targets are the bolero harnesses of `mlb-userspace/tests/fuzz_inputs.rs`; `cargo
//! test` runs them briefly with generated inputs. Here the same test binary is built with
//! sanitizer-coverage instrumentation and bolero's libFuzzer engine (`--cfg fuzzing_libfuzzer`,
//! what `cargo bolero` does, without needing it installed), in `target/fuzz` so the ordinary
//! build stays warm, and each target runs for `--seconds`. The corpus grows in
//! `tests/__fuzz__/<target>/corpus` (not committed); a crash lands in `…/crashes`, which every
//! `cargo test` replays from then on: commit it with the fix.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// A fuzz target: a bolero harness in an integration test of a workspace package.
struct Target {
    name: &'static str,
    package: &'static str,
    /// Integration test (file stem) holding the harness.
    test: &'static str,
    /// Directory of that file, relative to the workspace root.
    dir: &'static str,
}

const TARGETS: &[Target] = &[
    bolero("sse"),
    bolero("apps"),
    bolero("labels"),
    bolero("http"),
];

const fn bolero(name: &'static str) -> Target {
    Target {
        name,
        package: "mlb-userspace",
        test: "fuzz_inputs",
        dir: "mlb-userspace/tests",
    }
}

/// What `cargo bolero`/`cargo fuzz` pass to rustc for libFuzzer: edge coverage with inline
/// counters, the PC table, and comparison tracing (how libFuzzer gets past magic values).
/// Building a package's integration test also links its binaries (`mlb`), which have no
/// libFuzzer to define the coverage hooks: they link with those left unresolved, and are never
/// run from this build.
const LIBFUZZER_RUSTFLAGS: &str = "--cfg fuzzing --cfg fuzzing_libfuzzer \
    -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    -Cdebug-assertions -Coverflow-checks \
    -Clink-arg=-Wl,--unresolved-symbols=ignore-in-object-files";
const HOST: &str = "x86_64-unknown-linux-gnu";

/// What `cargo xtask fuzz` runs.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Targets to run: xdp, sse, apps, labels, http (all when none is named).
    targets: Vec<String>,
    /// How long each target runs.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// `xdp` only: run this many cases instead of for `--seconds`.
    #[arg(long)]
    iterations: Option<u64>,
    /// `xdp` only: seed of the case generator.
    #[arg(long)]
    seed: Option<u64>,
}

/// The packet fuzzer's name.
const XDP: &str = "xdp";

/// Runs the chosen targets (all when none is named), one after the other.
pub fn run(args: &FuzzArgs) -> Result<()> {
    let all = args.targets.is_empty();
    let wants = |name: &str| all || args.targets.iter().any(|t| t == name);
    if wants(XDP) {
        crate::setup::run(crate::setup::TEST_PACKAGES)?;
        xdp(args)?;
    }
    let chosen: Vec<&Target> = if all {
        TARGETS.iter().collect()
    } else {
        let bolero = args.targets.iter().filter(|t| *t != XDP);
        bolero.map(|n| find(n)).collect::<Result<_>>()?
    };
    let seconds = args.seconds;
    let root = workspace_root()?;
    let mut failed = Vec::new();
    for target in chosen {
        let exe = build(&root, target)?;
        println!("fuzz {}: {seconds} s", target.name);
        if !campaign(&root, target, &exe, seconds)? {
            failed.push(target.name);
        }
    }
    if !failed.is_empty() {
        bail!(
            "crashes found in {failed:?}: see the crashes/ directories above; \
             `cargo test -p mlb-userspace --test fuzz_inputs` now replays them"
        );
    }
    Ok(())
}

/// The packet fuzzer: its test, with the budget in the environment.
fn xdp(args: &FuzzArgs) -> Result<()> {
    let mut env = vec![match args.iterations {
        Some(n) => ("MLB_FUZZ_ITERATIONS", n.to_string()),
        None => ("MLB_FUZZ_SECONDS", args.seconds.to_string()),
    }];
    if let Some(seed) = args.seed {
        env.push(("MLB_FUZZ_SEED", seed.to_string()));
    }
    let test = [
        "test",
        "--package",
        "tests",
        "--test",
        "xdp_fixtures",
        "--",
        "fuzz::packet_fuzz",
        "--exact",
        "--nocapture",
    ];
    crate::cargo_env(&test, &env)
}

fn find(name: &str) -> Result<&'static Target> {
    TARGETS.iter().find(|t| t.name == name).with_context(|| {
        let known: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
        format!(
            "no fuzz target {name:?}; known: {XDP}, {}",
            known.join(", ")
        )
    })
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").context("run through `cargo xtask`")?;
    Ok(Path::new(&manifest)
        .parent()
        .context("xtask has a parent directory")?
        .to_owned())
}

/// Builds the instrumented test binary holding `target` and returns its path. The flags go to
/// the host target only (`--target` given), not to build scripts or the eBPF program.
fn build(root: &Path, target: &Target) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(root)
        .env(
            format!(
                "CARGO_TARGET_{}_RUSTFLAGS",
                HOST.to_uppercase().replace('-', "_")
            ),
            LIBFUZZER_RUSTFLAGS,
        )
        .env("CARGO_TARGET_DIR", root.join("target/fuzz"))
        .args(["test", "--no-run", "--release", "--message-format=json"])
        .args(["--target", HOST, "--package", target.package])
        .args(["--test", target.test])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    let messages: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if !out.status.success() {
        for rendered in messages
            .iter()
            .filter_map(|m| m["message"]["rendered"].as_str())
        {
            eprint!("{rendered}");
        }
        bail!("building the fuzz target {} failed", target.name);
    }
    messages
        .iter()
        .filter(|m| m["target"]["name"] == target.test)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo built no executable for test {}", target.test))
}

/// One libFuzzer run; `false` when it found a crash (left in the target's `crashes/`).
fn campaign(root: &Path, target: &Target, exe: &Path, seconds: u64) -> Result<bool> {
    let dir = root.join(target.dir).join("__fuzz__").join(target.name);
    let (corpus, crashes) = (dir.join("corpus"), dir.join("crashes"));
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&crashes)?;
    // bolero splits these at spaces; libFuzzer takes its options, then the corpus directory.
    let args = format!(
        "-max_total_time={seconds} -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
         -artifact_prefix={}/ {}",
        crashes.display(),
        corpus.display()
    );
    let status = Command::new(exe)
        .current_dir(root.join(target.package))
        .env("BOLERO_LIBFUZZER_ARGS", args)
        .args([target.name, "--exact", "--nocapture", "--test-threads", "1"])
        .status()
        .with_context(|| format!("running {}", exe.display()))?;
    Ok(status.success())
}
