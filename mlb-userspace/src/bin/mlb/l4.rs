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
        userspace_l4::UserspaceL4,
        xdp::{LoadOptions, XdpError, XdpProgram},
        xdp_l4::{ConntrackSweeper, Forwarding, HashSecret, XdpL4, XdpL4Config},
        xdp_pin::PinDir,
    },
    options::{DataplaneKind, ForwardingKind, RunOptions},
    overload::ConnGate,
};
use mlb_common::maps::{FAMILY_V4, FAMILY_V6};
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
    let pins = PinDir::open(&opts.bpffs_dir)?;
    if pins.adopting() {
        info!(dir = %opts.bpffs_dir.display(), "adopting the XDP datapath a previous agent left forwarding");
    }
    // Interfaces the previous agent served and this one is not told to.
    let dropped: Vec<String> = pins
        .pinned_links()?
        .into_iter()
        .filter(|i| !opts.xdp_iface.contains(i))
        .collect();
    let options = LoadOptions {
        ring_size: opts.maglev_table_size,
        conntrack_size: opts.conntrack_size,
    };
    let mut program = XdpProgram::load_pinned(options, pins).context("loading the XDP program")?;
    let mode = opts.xdp_mode.attach_mode();
    for iface in &opts.xdp_iface {
        program
            .attach(iface, mode)
            .with_context(|| format!("attaching XDP to {iface}"))?;
        info!(iface, ?mode, "XDP program attached");
    }
    for iface in dropped {
        program.unpin_link(&iface)?;
        info!(
            iface,
            "XDP program detached (no --xdp-iface names it any more)"
        );
    }
    Ok(program)
}

/// Starts the userspace TCP/UDP dataplane (on the current runtime).
pub fn start_userspace_l4(opts: &RunOptions, conn_gate: Arc<ConnGate>) -> Result<UserspaceL4> {
    let settings = opts.userspace_l4_config(conn_gate);
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
    let forwarding = forwarding(opts, &vips)?;
    let config = XdpL4Config {
        vips,
        snat_v4,
        snat_v6,
        snat_ports: (opts.snat_ports.first, opts.snat_ports.last),
        ring_size: opts.maglev_table_size,
        drain_timeout: Duration::from_secs(opts.drain_timeout),
        timeouts: opts.flow_timeouts(),
        hash_secret: opts.hash_secret.unwrap_or_else(HashSecret::random),
        forwarding,
    };
    info!(?config, "XDP TCP/UDP dataplane configured");
    let adopting = program.pins().is_some_and(PinDir::adopting);
    let mut dataplane = if adopting {
        XdpL4::adopt(program, config)?
    } else {
        XdpL4::new(program, config)?
    };
    for iface in &opts.xdp_iface {
        dataplane.add_tx_port(host::ifindex(iface)?)?;
    }
    Ok(dataplane)
}

/// `--forwarding` and its outer sources: `--dsr-source`, else for each family the first address
/// of the XDP interfaces that is no VIP (the VIP is the client's destination, not a source
/// the backends' network routes back).
fn forwarding(opts: &RunOptions, vips: &[IpAddr]) -> Result<Forwarding> {
    if opts.forwarding == ForwardingKind::Nat {
        return Ok(Forwarding::Nat);
    }
    let v4 = opts.dsr_source.iter().filter(|a| a.is_ipv4()).count();
    if v4 > 1 || opts.dsr_source.len() - v4 > 1 {
        bail!("--dsr-source: at most one address per family");
    }
    let mut sources = opts.dsr_source.clone();
    for iface in &opts.xdp_iface {
        sources.extend(
            host::addresses(iface)?
                .into_iter()
                .filter(|a| !vips.contains(a)),
        );
    }
    let forwarding = Forwarding::dsr_from(&sources);
    info!(
        ?forwarding,
        "direct server return: backends need `mlb backend-setup`"
    );
    for family in [FAMILY_V4, FAMILY_V6] {
        let served = vips.iter().any(|v| v.is_ipv4() == (family == FAMILY_V4));
        if served && forwarding.dsr_reaches(family) == Some(false) {
            warn!(
                family,
                "--forwarding dsr: no outer source address of this family (--dsr-source, or an \
                 address on the --xdp-iface interfaces): its services get no backends"
            );
        }
    }
    Ok(forwarding)
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

/// Once the agent has resynced (`synced`), removes the adopted services it was not told about
/// and switches the adopted links to this agent's program. Until then the previous agent's
/// program keeps forwarding with the tables it left.
pub async fn finish_adoption(dataplane: Arc<Mutex<XdpL4>>, mut synced: impl FnMut() -> bool) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    while !synced() {
        tick.tick().await;
    }
    let Ok(mut dp) = dataplane.lock() else {
        return;
    };
    match dp.finish_adoption() {
        Ok(stale) if stale.is_empty() => {}
        Ok(stale) => info!(services = ?stale, "adopted services no longer wanted: removed"),
        Err(e) => warn!("removing adopted services no longer wanted: {e}"),
    }
    match dp.program_mut().replace_adopted() {
        Ok(ifaces) => {
            info!(interfaces = ?ifaces, "resynced: the adopted XDP links now run this agent's program");
        }
        Err(e) => error!("switching the adopted XDP links to this agent's program: {e}"),
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
