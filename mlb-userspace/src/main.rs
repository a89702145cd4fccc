//! The `mlb` binary: parse flags, set up logging, run the chosen command.
use anyhow::{Context as _, Result, bail};
use clap::Parser as _;
use mlb::{
    admin::{self, AdminContext},
    controller::{self, Control, Controller, Inputs},
    dataplane::{
        L4Change, L4Dataplane, L4Error, host,
        userspace_l4::{UserspaceL4, UserspaceL4Config},
        xdp::{LoadOptions, XdpError, XdpProgram},
        xdp_l4::{ConntrackSweeper, FlowTimeouts, XdpL4, XdpL4Config},
    },
    marathon::{client::MarathonClient, config::MarathonConfig, watch::MarathonWatcher},
    model::ModelOptions,
    options::{Cli, Command, DataplaneKind, ExplainOptions, RunOptions},
    proxy::{HttpProxy, ProxyConfig},
    static_config,
};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{Instrument as _, debug, error, info, info_span, warn};

fn main() -> Result<()> {
    let cli = Cli::parse();
    mlb::logging::init(cli.log_format);
    match cli.command {
        Command::Version => {
            println!("mlb {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Run(opts) => run(&opts),
        Command::Explain(opts) => explain(&opts),
    }
}

/// The model's options from `mlb run` flags: marathon-lb's defaults, the ports mlb listens on
/// itself reserved, `FRAMEWORK_NAME` from the environment.
fn model_options(opts: &RunOptions) -> Result<ModelOptions> {
    let mut model = ModelOptions::from_run_options(opts, std::env::var("FRAMEWORK_NAME").ok())
        .with_ip_per_task_port_range(
            opts.min_serv_port_ip_per_task,
            opts.max_serv_port_ip_per_task,
        )?;
    model.reserved_ports.insert(opts.admin_addr.port());
    model.reserved_ports.insert(opts.appid_port);
    if !opts.dont_bind_http_https {
        model.reserved_ports.insert(opts.http_port);
        model.reserved_ports.insert(opts.https_port);
    }
    model.reserved_ports.remove(&0);
    Ok(model)
}

fn run(opts: &RunOptions) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let model = model_options(opts)?;
        let mut xdp = None;
        // `auto` without interfaces is the userspace dataplane; `xdp` without them is an error.
        let want_xdp = match opts.dataplane {
            DataplaneKind::Xdp => true,
            DataplaneKind::Auto => !opts.xdp_iface.is_empty(),
            DataplaneKind::Userspace => false,
        };
        if want_xdp {
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
        let static_l4 = match &opts.static_config {
            Some(path) => {
                static_config::load(path)
                    .with_context(|| format!("loading --static-config {}", path.display()))?
                    .l4
            }
            None => BTreeMap::new(),
        };
        let watcher = if opts.marathon.is_empty() {
            None
        } else {
            let cfg = MarathonConfig::from_options(opts).context("Marathon flags")?;
            Some(MarathonWatcher::new(cfg).context("Marathon client")?)
        };
        // The HTTP proxy serves Marathon's http-mode apps; a static config has none.
        let proxy = if watcher.is_some() {
            let proxy = HttpProxy::start(
                ProxyConfig::from_run_options(opts),
                tokio::runtime::Handle::current(),
            )
            .context("starting the HTTP proxy")?;
            info!(
                http = ?proxy.local_addr("http"),
                https = ?proxy.local_addr("https"),
                appid = ?proxy.local_addr("appid"),
                "HTTP proxy listening"
            );
            Some(Arc::new(proxy))
        } else {
            None
        };
        let admin = admin::bind(opts.admin_addr)
            .await
            .with_context(|| format!("admin listener on {} (--admin-addr)", opts.admin_addr))?;
        info!(addr = %admin.local_addr()?, "admin listener ready");

        // Kept until shutdown: dropping the userspace dataplane closes its listeners,
        // dropping the XDP one detaches the program.
        let (l4, xdp_shared): (Box<dyn L4Dataplane + Send>, _) = match xdp {
            Some(program) => {
                let dp = Arc::new(Mutex::new(start_xdp_l4(opts, program)?));
                (Box::new(SharedXdp(dp.clone())), Some(dp))
            }
            None => (Box::new(start_userspace_l4(opts)?), None),
        };
        let http = proxy
            .clone()
            .map(|p| Box::new(p) as Box<dyn controller::HttpDataplane>);
        let mut controller = Controller::new(model, l4, http)
            .with_l4_health_checks(tokio::runtime::Handle::current());
        controller.set_static_l4(static_l4);
        let status = controller.status();
        let state_queries = controller.state_queries();

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (control_tx, control_rx) = mpsc::channel(4);
        let resync = watcher.as_ref().map(MarathonWatcher::resync_trigger);
        let marathon_rx = watcher.map(|w| {
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(
                w.run(tx, shutdown_rx.clone())
                    .instrument(info_span!("marathon")),
            );
            rx
        });
        let admin_task = tokio::spawn(admin::serve(
            admin,
            AdminContext {
                status,
                state: Some(state_queries),
                resync: resync.clone(),
                proxy: proxy.clone(),
            },
        ));
        let control = tokio::spawn(controller.run(Inputs {
            marathon: marathon_rx,
            control: control_rx,
            shutdown: shutdown_rx.clone(),
        }));
        let sweeper = xdp_shared
            .as_ref()
            .map(|dp| tokio::spawn(sweep_conntrack(dp.clone())));

        // SIGHUP: re-read --static-config (a bad file keeps the last good services) and resync
        // Marathon, as marathon-lb's SIGHUP regenerates everything. SIGUSR1: reload certificates.
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let shutdown = wait_for_shutdown();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                r = &mut shutdown => { r?; break; }
                _ = hup.recv() => {
                    if let Some(resync) = &resync {
                        info!("SIGHUP: full resync from Marathon");
                        resync.request();
                    }
                    let Some(path) = &opts.static_config else { continue };
                    match static_config::load(path) {
                        Ok(config) => {
                            info!(path = %path.display(), "SIGHUP: static config reloaded");
                            let _ = control_tx.send(Control::StaticL4(config.l4)).await;
                        }
                        Err(e) => error!("SIGHUP: keeping the last good services: {e:#}"),
                    }
                }
                _ = usr1.recv() => {
                    if let Some(proxy) = &proxy {
                        info!("SIGUSR1: reloading certificates");
                        for e in proxy.reload_certs() {
                            warn!("certificate kept its previous version: {e}");
                        }
                    }
                }
            }
        }
        let _ = shutdown_tx.send(true);
        // The controller owns the dataplanes: wait until it is gone.
        let _ = control.await;
        admin_task.abort();
        let _ = admin_task.await;
        if let Some(s) = sweeper {
            s.abort();
            // Wait until the task is gone: it holds a reference to the XDP dataplane.
            let _ = s.await;
        }
        if let Some(dp) = xdp_shared {
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

/// `mlb explain`: from Marathon directly with `--marathon`, else from the running mlb.
fn explain(opts: &ExplainOptions) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let out = runtime.block_on(async {
        if opts.run.marathon.is_empty() {
            explain_from_admin(opts).await
        } else {
            explain_from_marathon(opts).await
        }
    })?;
    print!("{out}");
    Ok(())
}

async fn explain_from_admin(opts: &ExplainOptions) -> Result<String> {
    let mut addr = opts.run.admin_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let path = match &opts.app_id {
        Some(id) => format!("/_mlb/explain/{}", id.trim_start_matches('/')),
        None => "/_mlb/explain".to_owned(),
    };
    let query = if opts.json { "" } else { "?format=text" };
    let url = format!("http://{addr}{path}{query}");
    let resp = reqwest::get(&url).await.with_context(|| {
        format!("asking the mlb admin API at {addr} (is `mlb run` running? --admin-addr, or --marathon to read Marathon directly)")
    })?;
    let status = resp.status();
    let body = resp
        .text()
        .await
        .with_context(|| format!("reading {url}"))?;
    if !status.is_success() {
        bail!("{url}: HTTP {status}: {}", body.trim());
    }
    Ok(body)
}

async fn explain_from_marathon(opts: &ExplainOptions) -> Result<String> {
    let model = model_options(&opts.run)?;
    let cfg = MarathonConfig::from_options(&opts.run).context("Marathon flags")?;
    let client = MarathonClient::new(&cfg).context("Marathon client")?;
    let apps = client
        .list_apps()
        .await
        .context("reading Marathon's apps")?;
    let mut controller = Controller::new(model, Box::new(NoDataplane), None);
    controller.take_update(mlb::marathon::watch::MarathonUpdate::Snapshot(apps));
    let names = controller.unresolved_hosts();
    controller.add_host_addrs(controller::resolve_hosts(names).await);
    controller.recompute(std::time::SystemTime::now());
    let status = controller.status().load_full();
    let mut apps: Vec<_> = status
        .explanations
        .values()
        .map(|a| (**a).clone())
        .collect();
    if let Some(id) = &opts.app_id {
        let id = format!("/{}", id.trim_start_matches('/'));
        apps.retain(|a| a.app_id == id || a.marathon_app_ids.contains(&id));
        if apps.is_empty() {
            bail!("{id}: no such app in Marathon's answer");
        }
    }
    if opts.json {
        Ok(serde_json::to_string_pretty(&apps)? + "\n")
    } else {
        Ok(mlb::model::explain::render_text(&apps))
    }
}

/// `mlb explain` evaluates without serving anything.
struct NoDataplane;

impl L4Dataplane for NoDataplane {
    fn apply(&mut self, _: &[L4Change]) -> Result<(), L4Error> {
        Ok(())
    }
}

/// The XDP dataplane, shared between the controller and the conntrack sweeper.
struct SharedXdp(Arc<Mutex<XdpL4>>);

impl L4Dataplane for SharedXdp {
    fn apply(&mut self, changes: &[L4Change]) -> Result<(), L4Error> {
        match self.0.lock() {
            Ok(mut dp) => dp.apply(changes),
            Err(_) => Err(L4Error {
                service: match changes.first() {
                    Some(L4Change::Upsert(s)) => s.key,
                    Some(L4Change::Remove(k)) => *k,
                    None => return Ok(()),
                },
                reason: "XDP dataplane lock poisoned".into(),
            }),
        }
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

fn attach_xdp(opts: &RunOptions) -> Result<XdpProgram> {
    if opts.xdp_iface.is_empty() {
        bail!("--dataplane xdp needs at least one --xdp-iface");
    }
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
    Ok(program)
}

async fn wait_for_shutdown() -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    info!("shutting down");
    Ok(())
}
