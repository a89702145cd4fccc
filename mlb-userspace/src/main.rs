//! The `mlb` binary: parse flags, set up logging, run the chosen command.
use anyhow::{Context as _, Result, bail};
use clap::Parser as _;
use mlb::{
    dataplane::xdp::XdpProgram,
    options::{Cli, Command, DataplaneKind, RunOptions},
};
use tracing::{info, warn};

fn main() -> Result<()> {
    let cli = Cli::parse();
    mlb::logging::init(cli.log_format);
    match cli.command {
        Command::Version => {
            println!("mlb {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Run(opts) => run(&opts),
    }
}

fn run(opts: &RunOptions) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let mut xdp = None;
        if opts.dataplane != DataplaneKind::Userspace && !opts.xdp_iface.is_empty() {
            match attach_xdp(opts) {
                Ok(p) => xdp = Some(p),
                Err(e) if opts.dataplane == DataplaneKind::Auto => {
                    warn!("XDP dataplane unavailable, using the userspace dataplane: {e:#}");
                }
                Err(e) => return Err(e),
            }
        }
        if opts.marathon.is_empty() && opts.static_config.is_none() {
            warn!("no --marathon and no --static-config: nothing to route; waiting for Ctrl-C");
        }
        wait_for_shutdown().await?;
        if let Some(p) = xdp {
            let ifaces: Vec<_> = p.interfaces().map(str::to_owned).collect();
            drop(p);
            info!(interfaces = ?ifaces, "XDP program detached");
        }
        Ok(())
    })
}

fn attach_xdp(opts: &RunOptions) -> Result<XdpProgram> {
    let mut program = XdpProgram::load().context("loading the XDP program")?;
    for iface in &opts.xdp_iface {
        program
            .attach(iface, opts.xdp_mode)
            .with_context(|| format!("attaching XDP to {iface}"))?;
        info!(iface, mode = ?opts.xdp_mode, "XDP program attached");
    }
    if opts.xdp_iface.is_empty() {
        bail!("no --xdp-iface given");
    }
    Ok(program)
}

async fn wait_for_shutdown() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    info!("shutting down");
    Ok(())
}
