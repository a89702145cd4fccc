//! Starting the TCP/UDP dataplane `mlb run` asked for: XDP (loaded, attached, programmed) or
//! the userspace proxy.
use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use mlb::{
    dataplane::{
        Dataplane, DataplaneError, L4Change, host,
        userspace_l4::{UserspaceL4, UserspaceL4Config},
        xdp::{LoadOptions, XdpError, XdpProgram},
        xdp_l4::{ConntrackSweeper, HashSecret, XdpL4, XdpL4Config},
    },
    options::{DataplaneKind, RunOptions},
};
use tracing::{debug, error, info, warn};

/// The XDP program, when `--dataplane` and `--xdp-iface` ask for it and it could be attached.
/// `auto` without interfaces is the userspace dataplane; `xdp` without them is an error, and so
/// is an `xdp` that cannot be attached (`auto` falls back with a warning).
pub fn xdp_if_wanted(opts: &RunOptions) -> Result<Option<XdpProgram>> {
    let want_xdp = match opts.dataplane {
        DataplaneKind::Xdp => true,
        DataplaneKind::Auto => !opts.xdp_iface.is_empty(),
        DataplaneKind::Userspace => false,
    };
    if !want_xdp {
        return Ok(None);
    }
    match attach_xdp(opts) {
        Ok(p) => Ok(Some(p)),
        Err(e) if opts.dataplane == DataplaneKind::Auto => {
            warn!("XDP dataplane unavailable, using the userspace dataplane: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn attach_xdp(opts: &RunOptions) -> Result<XdpProgram> {
    if opts.xdp_iface.is_empty() {
        bail!("--dataplane xdp needs at least one --xdp-iface");
    }
    let mut program = XdpProgram::load_with(LoadOptions {
        ring_size: opts.maglev_table_size,
        conntrack_size: opts.conntrack_size,
    })
    .context("loading the XDP program")?;
    let mode = opts.xdp_mode.attach_mode();
    for iface in &opts.xdp_iface {
        program
            .attach(iface, mode)
            .with_context(|| format!("attaching XDP to {iface}"))?;
        info!(iface, ?mode, "XDP program attached");
    }
    Ok(program)
}

/// Starts the userspace TCP/UDP dataplane (on the current runtime).
pub fn start_userspace_l4(opts: &RunOptions) -> Result<UserspaceL4> {
    let mut settings = UserspaceL4Config::new(opts.vip.clone());
    settings.maglev_table_size = opts.maglev_table_size;
    let dataplane = UserspaceL4::new(tokio::runtime::Handle::current(), settings)?;
    info!(vips = ?opts.vip, "userspace TCP/UDP dataplane running");
    Ok(dataplane)
}

/// Programs the attached XDP program: VIPs (default: the XDP interfaces' addresses), SNAT
/// addresses (default: the VIPs), redirect targets, reserved SNAT ports.
pub fn start_xdp_l4(opts: &RunOptions, program: XdpProgram) -> Result<XdpL4> {
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
    let snat_v4: Vec<_> = snat_from
        .iter()
        .filter_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
        .collect();
    let snat_v6: Vec<_> = snat_from
        .iter()
        .filter_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        })
        .collect();
    host::reserve_ports(opts.snat_ports.first, opts.snat_ports.last)
        .context("reserving the SNAT ports (ip_local_reserved_ports)")?;
    host::check_forwarding(&opts.xdp_iface, !snat_v4.is_empty(), !snat_v6.is_empty());
    host::accept_local_sources(&opts.xdp_iface)
        .context("allowing local source addresses on the XDP interfaces (accept_local)")?;
    let config = XdpL4Config {
        vips,
        snat_v4,
        snat_v6,
        snat_ports: (opts.snat_ports.first, opts.snat_ports.last),
        ring_size: opts.maglev_table_size,
        drain_timeout: Duration::from_secs(opts.drain_timeout),
        timeouts: opts.flow_timeouts(),
        hash_secret: opts.hash_secret.unwrap_or_else(HashSecret::random),
    };
    info!(?config, "XDP TCP/UDP dataplane configured");
    let mut dataplane = XdpL4::new(program, config)?;
    for iface in &opts.xdp_iface {
        dataplane.add_tx_port(host::ifindex(iface)?)?;
    }
    Ok(dataplane)
}

/// The XDP dataplane, shared between the controller and the conntrack sweeper.
pub struct SharedXdp(pub Arc<Mutex<XdpL4>>);

impl Dataplane for SharedXdp {
    type Change = L4Change;

    fn apply(&mut self, changes: &[L4Change]) -> Result<(), Vec<DataplaneError>> {
        match self.0.lock() {
            Ok(mut dp) => dp.apply(changes),
            Err(_) => Err(changes
                .iter()
                .map(|c| DataplaneError::l4(c.key(), "XDP dataplane lock poisoned"))
                .collect()),
        }
    }
}

/// Expires idle tracked flows and drained backends every few seconds (the sweeper walks the
/// conntrack map without holding the dataplane's lock).
pub async fn sweep_conntrack(dataplane: Arc<Mutex<XdpL4>>) {
    let mut sweeper = match ConntrackSweeper::new(dataplane) {
        Ok(sweeper) => sweeper,
        Err(e) => {
            error!("connection tracking will not be swept: {e}");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        match sweeper.sweep() {
            Ok(0) => {}
            Ok(n) => debug!(entries = n, "expired connection-tracking entries"),
            Err(XdpError::Poisoned) => return,
            Err(e) => warn!("sweeping connection tracking: {e}"),
        }
    }
}
