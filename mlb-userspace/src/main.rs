//! The `mlb` binary: parse flags, set up logging, run the chosen command.
use anyhow::{Context as _, Result, bail};
use clap::Parser as _;
use mlb::{
    dataplane::{
        L4Dataplane as _, diff_l4, host,
        userspace_l4::{UserspaceL4, UserspaceL4Config},
        xdp::{LoadOptions, XdpProgram},
        xdp_l4::{FlowTimeouts, XdpL4, XdpL4Config},
    },
    model::{L4Service, L4ServiceKey},
    options::{Cli, Command, DataplaneKind, RunOptions},
    static_config,
};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tracing::{debug, error, info, warn};

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
        // Kept alive until shutdown: dropping the userspace dataplane closes its listeners,
        // dropping the XDP one detaches the program.
        let mut plane = match xdp {
            Some(program) => L4Plane::Xdp(Arc::new(Mutex::new(start_xdp_l4(opts, program)?))),
            None => L4Plane::Userspace(start_userspace_l4(opts)?),
        };
        let mut applied = BTreeMap::new();
        if let Some(config) = &config {
            plane.apply_services(&mut applied, &config.l4);
        }
        let sweeper = match &plane {
            L4Plane::Xdp(dp) => Some(tokio::spawn(sweep_conntrack(dp.clone()))),
            L4Plane::Userspace(_) => None,
        };
        // SIGHUP re-reads --static-config and applies what changed; a bad file keeps the last
        // good services.
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let shutdown = wait_for_shutdown();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                r = &mut shutdown => { r?; break; }
                _ = hup.recv() => {
                    let Some(path) = &opts.static_config else { continue };
                    match static_config::load(path) {
                        Ok(config) => {
                            info!(path = %path.display(), "SIGHUP: static config reloaded");
                            plane.apply_services(&mut applied, &config.l4);
                        }
                        Err(e) => error!("SIGHUP: keeping the last good services: {e:#}"),
                    }
                }
            }
        }
        if let Some(s) = sweeper {
            s.abort();
            // Wait until the task is gone: it holds a reference to the XDP dataplane.
            let _ = s.await;
        }
        if let L4Plane::Xdp(dp) = plane {
            let dp = Arc::try_unwrap(dp)
                .map_err(|_| anyhow::anyhow!("XDP dataplane still shared at shutdown"))?
                .into_inner()
                .map_err(|_| anyhow::anyhow!("XDP dataplane lock poisoned"))?;
            let program = dp.into_program();
            let ifaces: Vec<_> = program.interfaces().map(str::to_owned).collect();
            drop(program);
            info!(interfaces = ?ifaces, "XDP program detached");
        }
        Ok(())
    })
}

/// The TCP/UDP dataplane in use.
enum L4Plane {
    /// Shared with the conntrack sweeper.
    Xdp(Arc<Mutex<XdpL4>>),
    Userspace(UserspaceL4),
}

impl L4Plane {
    /// Applies what changed from `applied` to `wanted`, and records `wanted` as applied. A
    /// service that cannot be applied is logged and left out; the others are served.
    fn apply_services(
        &mut self,
        applied: &mut BTreeMap<L4ServiceKey, L4Service>,
        wanted: &BTreeMap<L4ServiceKey, L4Service>,
    ) {
        let changes = diff_l4(applied, wanted);
        if changes.is_empty() {
            return;
        }
        let result = match self {
            L4Plane::Xdp(dp) => match dp.lock() {
                Ok(mut dp) => dp.apply(&changes),
                Err(_) => return error!("XDP dataplane lock poisoned"),
            },
            L4Plane::Userspace(dp) => dp.apply(&changes),
        };
        if let Err(e) = result {
            error!("{e}");
        }
        info!(
            changes = changes.len(),
            services = wanted.len(),
            "TCP/UDP services applied"
        );
        applied.clone_from(wanted);
    }
}

/// Starts the userspace TCP/UDP dataplane (on the current runtime).
fn start_userspace_l4(opts: &RunOptions) -> Result<UserspaceL4> {
    let mut settings = UserspaceL4Config::new(opts.vip.clone());
    settings.maglev_table_size = opts.maglev_table_size;
    let dataplane = UserspaceL4::new(tokio::runtime::Handle::current(), settings)?;
    info!(vips = ?opts.vip, "userspace TCP/UDP dataplane running");
    Ok(dataplane)
}

/// Programs the attached XDP program: VIPs (default: the XDP interfaces' addresses), SNAT
/// addresses (default: the VIPs), redirect targets, reserved SNAT ports.
fn start_xdp_l4(opts: &RunOptions, program: XdpProgram) -> Result<XdpL4> {
    let mut vips = opts.vip.clone();
    if vips.is_empty() {
        for iface in &opts.xdp_iface {
            vips.extend(host::addresses(iface)?);
        }
        info!(
            ?vips,
            "no --vip: exposing services on the XDP interfaces' addresses"
        );
    }
    let snat_from = if opts.snat_addr.is_empty() {
        &vips
    } else {
        &opts.snat_addr
    };
    let snat_v4 = snat_from.iter().find_map(|a| match a {
        std::net::IpAddr::V4(v4) => Some(*v4),
        std::net::IpAddr::V6(_) => None,
    });
    let snat_v6 = snat_from.iter().find_map(|a| match a {
        std::net::IpAddr::V6(v6) => Some(*v6),
        std::net::IpAddr::V4(_) => None,
    });
    host::reserve_ports(opts.snat_ports.first, opts.snat_ports.last)
        .context("reserving the SNAT ports (ip_local_reserved_ports)")?;
    host::check_forwarding(&opts.xdp_iface, snat_v4.is_some(), snat_v6.is_some());
    host::accept_local_sources(&opts.xdp_iface)
        .context("allowing local source addresses on the XDP interfaces (accept_local)")?;
    let config = XdpL4Config {
        vips,
        snat_v4,
        snat_v6,
        snat_ports: (opts.snat_ports.first, opts.snat_ports.last),
        ring_size: opts.maglev_table_size,
        drain_timeout: Duration::from_secs(opts.drain_timeout),
        timeouts: FlowTimeouts::default(),
    };
    info!(?config, "XDP TCP/UDP dataplane configured");
    let mut dataplane = XdpL4::new(program, config)?;
    for iface in &opts.xdp_iface {
        dataplane.add_tx_port(host::ifindex(iface)?)?;
    }
    Ok(dataplane)
}

/// Expires idle tracked flows and drained backends every few seconds.
async fn sweep_conntrack(dataplane: Arc<Mutex<XdpL4>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let result = match dataplane.lock() {
            Ok(mut dp) => dp.sweep(),
            Err(_) => return,
        };
        match result {
            Ok(0) => {}
            Ok(n) => debug!(entries = n, "expired connection-tracking entries"),
            Err(e) => warn!("sweeping connection tracking: {e}"),
        }
    }
}

fn attach_xdp(opts: &RunOptions) -> Result<XdpProgram> {
    let mut program = XdpProgram::load_with(LoadOptions {
        ring_size: opts.maglev_table_size,
        conntrack_size: opts.conntrack_size,
    })
    .context("loading the XDP program")?;
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
