//! The `mlb` binary: parse flags, set up logging, run the chosen command.
mod explain;
mod l4;
mod run;
mod stop;

use anyhow::Result;
use clap::Parser as _;
use mlb::options::{Cli, Command};

fn main() -> Result<()> {
    let cli = Cli::parse();
    mlb::logging::init(cli.log_format);
    match cli.command {
        Command::Version => {
            println!("mlb {}", version());
            Ok(())
        }
        Command::Run(opts) => run::run(&opts),
        Command::Explain(opts) => explain::explain(&opts),
        Command::Stop(opts) => stop::stop(&opts),
    }
}

/// The version this binary reports: the crate's, or `MLB_VERSION_OVERRIDE`, read for this
/// string only (the restart test "upgrades" to a binary that reports another version).
pub fn version() -> String {
    std::env::var("MLB_VERSION_OVERRIDE").unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_owned())
}
