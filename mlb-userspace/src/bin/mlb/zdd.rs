//! `mlb zdd`: runs the deployment and exits with zdd.py's exit code.
use anyhow::Result;
use mlb::options::ZddOptions;

pub fn zdd(opts: &ZddOptions) -> Result<()> {
    let outcome = match opts.config() {
        Ok(cfg) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(mlb::zdd::run::run(&cfg)),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(e) => {
            eprintln!("mlb zdd: {e}");
            std::process::exit(e.exit_code());
        }
    }
}
