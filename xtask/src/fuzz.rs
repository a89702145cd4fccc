//! `cargo xtask fuzz [TARGET] [--iterations N | --seconds S] [--seed X]`: runs fuzz targets
//! longer than CI does. Each target is a test that reads its budget from the environment
//! (`MLB_FUZZ_ITERATIONS`, `MLB_FUZZ_SECONDS`, `MLB_FUZZ_SEED`) and runs a bounded default in
//! `cargo xtask test`.
use anyhow::Result;
use clap::{Args, ValueEnum};

/// What `cargo xtask fuzz` runs.
#[derive(Args)]
pub struct FuzzArgs {
    /// The fuzz target (default: every target).
    target: Option<Target>,
    /// Cases per target (the CI run does a few thousand).
    #[arg(long, conflicts_with = "seconds")]
    iterations: Option<u64>,
    /// Run each target for this many seconds instead of a number of cases.
    #[arg(long)]
    seconds: Option<u64>,
    /// Seed of the case generator (a failure prints the seed it ran with).
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    /// Random and mutated frames through the XDP program (BPF_PROG_TEST_RUN; root).
    Xdp,
}

impl Target {
    const ALL: [Target; 1] = [Target::Xdp];

    /// The `cargo test` arguments of the target's test.
    fn test_args(self) -> &'static [&'static str] {
        match self {
            Target::Xdp => &[
                "--package",
                "tests",
                "--test",
                "xdp_fixtures",
                "--",
                "fuzz::packet_fuzz",
                "--exact",
                "--nocapture",
            ],
        }
    }
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    crate::setup::run(crate::setup::TEST_PACKAGES)?;
    let targets = args.target.map_or(Target::ALL.to_vec(), |t| vec![t]);
    for target in targets {
        let mut env = Vec::new();
        if let Some(n) = args.iterations {
            env.push(("MLB_FUZZ_ITERATIONS", n.to_string()));
        }
        if let Some(s) = args.seconds {
            env.push(("MLB_FUZZ_SECONDS", s.to_string()));
        }
        if let Some(seed) = args.seed {
            env.push(("MLB_FUZZ_SEED", seed.to_string()));
        }
        let mut test = vec!["test"];
        test.extend(target.test_args());
        crate::cargo_env(&test, &env)?;
    }
    Ok(())
}
