//! The `mlb` binary: parse flags, set up logging, run the chosen command.
use anyhow::{Context as _, Result, bail};
use clap::Parser as _;
use mlb::{
    dataplane::{
        L4Dataplane as _, diff_l4,
        userspace_l4::{UserspaceL4, UserspaceL4Config},
        xdp::XdpProgram,
    },
    options::{Cli, Command, DataplaneKind, RunOptions},
    static_config::{self, StaticConfig},
};
use tracing::{error, info, warn};

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
        let config = match &opts.static_config {
            Some(path) => Some(
                static_config::load(path)
                    .with_context(|| format!("loading --static-config {}", path.display()))?,
            ),
            None => None,
        };
        // Kept alive until shutdown: dropping it closes the listeners.
        let _userspace_l4 = match (&xdp, &config) {
            (None, Some(config)) => Some(start_userspace_l4(opts, config)?),
            (Some(_), Some(_)) => {
                warn!("this build cannot program services into the XDP dataplane yet");
                None
            }
            _ => None,
        };
        wait_for_shutdown().await?;
        if let Some(p) = xdp {
            let ifaces: Vec<_> = p.interfaces().map(str::to_owned).collect();
            drop(p);
            info!(interfaces = ?ifaces, "XDP program detached");
        }
        Ok(())
    })
}

/// Starts the userspace TCP/UDP dataplane with the static services (on the current runtime).
fn start_userspace_l4(opts: &RunOptions, config: &StaticConfig) -> Result<UserspaceL4> {
    let mut settings = UserspaceL4Config::new(opts.vip.clone());
    settings.maglev_table_size = opts.maglev_table_size;
    let mut dataplane = UserspaceL4::new(tokio::runtime::Handle::current(), settings)?;
    // A service that cannot be applied is logged and left out; the others are served.
    if let Err(e) = dataplane.apply(&diff_l4(&Default::default(), &config.l4)) {
        error!("{e}");
    }
    info!(
        services = config.l4.len(),
        vips = ?opts.vip,
        "userspace TCP/UDP dataplane running"
    );
    Ok(dataplane)
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
