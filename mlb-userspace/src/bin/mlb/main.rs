//! The `mlb` binary: parse flags, set up logging, run the chosen command.
mod explain;
mod l4;
mod run;
mod zdd;

use anyhow::Result;
use clap::Parser as _;
use mlb::options::{Cli, Command};

fn main() -> Result<()> {
    let cli = Cli::parse();
    mlb::logging::init(cli.log_format);
    match cli.command {
        Command::Version => {
            println!("mlb {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Run(opts) => run::run(&opts),
        Command::Explain(opts) => explain::explain(&opts),
        Command::Zdd(opts) => zdd::zdd(&opts),
    }
}
