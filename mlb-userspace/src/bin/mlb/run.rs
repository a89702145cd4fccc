//! `mlb run`: start the dataplanes, the Marathon watcher, the controller and the admin API;
//! handle signals; shut down in order.
use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use mlb::{
    admin::{self, AdminContext},
    compat::{self, Mode},
    controller::{Control, Controller, HttpDataplane, Inputs, L4Dataplane},
    dataplane::xdp_l4::XdpL4,
    marathon::{
        config::MarathonConfig,
        watch::{MarathonWatcher, ResyncTrigger},
    },
    model::{L4Service, L4ServiceKey},
    options::{Cli, RunOptions},
    overload::{self, ConnGate},
    proxy::{HttpProxy, ProxyConfig},
    static_config,
    stats::StatsSource,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{Instrument as _, error, info, info_span, warn};

use crate::l4::{self, SharedXdp};

/// Runs the agent; `marathon_lb` is set for `mlb sse`/`mlb poll`, which also read the
/// marathon-lb image's environment.
pub fn run(mut opts: Box<RunOptions>, marathon_lb: Option<Mode>) -> Result<()> {
    if opts.longhelp {
        let mut cli = Cli::command();
        if let Some(run) = cli.find_subcommand_mut("run") {
            run.print_long_help()?;
        }
        return Ok(());
    }
    // Kept until exit: certificates from the environment live there.
    let mut _cert_dir = None;
    if let Some(mode) = marathon_lb {
        let name = match mode {
            Mode::Sse => "sse",
            Mode::Poll => "poll",
        };
        info!("marathon-lb {name} mode: `mlb run` with marathon-lb's flags and image environment");
        let env = |k: &str| std::env::var(k).ok();
        let wrapper = compat::apply_wrapper_env(&mut opts, mode, &env, &std::env::temp_dir())
            .context("marathon-lb image environment")?;
        for notice in &wrapper.notices {
            info!("{notice}");
        }
        _cert_dir = wrapper.cert_dir;
    }
    if let Some(notice) = compat::haproxy_only_notice(&opts) {
        info!("{notice}");
    }
    let opts = &*opts;
    // Every thread of it gives back what it freed as it goes idle: the proxy shares it unless
    // `--threads` gives the proxy threads of its own.
    let runtime = mlb::stats::memory::trimming_runtime().context("starting the tokio runtime")?;
    info!(version = %crate::version::version(), "mlb starting");
    runtime.block_on(async {
        let agent = Agent::start(opts).await?;
        let result = agent.handle_signals(opts).await;
        if let Ok(Stop::Graceful) = result {
            agent.drain(opts).await;
        }
        agent.stop(opts.detach_on_exit).await?;
        result.map(drop)
    })
}

/// The running agent: its tasks and what they share, kept until shutdown (dropping the
/// userspace dataplane closes its listeners; the XDP datapath stays pinned and forwarding unless
/// `--detach-on-exit`).
struct Agent {
    proxy: Option<Arc<HttpProxy>>,
    xdp: Option<Arc<Mutex<XdpL4>>>,
    resync: Option<ResyncTrigger>,
    control: mpsc::Sender<Control>,
    shutdown: watch::Sender<bool>,
    controller: JoinHandle<()>,
    /// Stops the controller's thread (once the controller has ended).
    control_stop: tokio::sync::oneshot::Sender<()>,
    admin: JoinHandle<()>,
    sweeper: Option<JoinHandle<()>>,
    /// Finishes adopting a previous agent's XDP datapath once resynced.
    adoption: Option<JoinHandle<()>>,
    /// Read by the admin health check: 503 once set.
    stopping: Arc<AtomicBool>,
}

/// How the agent was asked to stop.
enum Stop {
    /// SIGTERM (an orchestrator): drain first.
    Graceful,
    /// Ctrl-C (a person at a terminal): at once.
    Now,
}

impl Agent {
    async fn start(opts: &RunOptions) -> Result<Agent> {
        let model = opts.model_options(std::env::var("FRAMEWORK_NAME").ok())?;
        let conn_gate = ConnGate::new(opts.conn_limits(open_files_limit()));
        info!(
            max_connections = conn_gate.limits().max_connections,
            "connection limit (--max-connections)"
        );
        let xdp_program = l4::xdp_if_wanted(opts)?;
        if opts.marathon.is_empty() && opts.static_config.is_none() {
            warn!("no --marathon and no --static-config: nothing to route; waiting for Ctrl-C");
        }
        let static_l4 = load_static_l4(opts)?;
        let watcher = if opts.marathon.is_empty() {
            None
        } else {
            let cfg =
                MarathonConfig::from_flags(&opts.marathon_flags()).context("Marathon flags")?;
            Some(MarathonWatcher::new(cfg).context("Marathon client")?)
        };
        // The HTTP proxy serves Marathon's http-mode apps; a static config has none.
        let proxy = match watcher {
            Some(_) => Some(start_proxy(opts, conn_gate.clone())?),
            None => None,
        };
        let admin_listener = admin::bind(opts.admin_addr)
            .await
            .with_context(|| format!("admin listener on {} (--admin-addr)", opts.admin_addr))?;
        info!(addr = %admin_listener.local_addr()?, "admin listener ready");

        let mut stats: Vec<Arc<dyn StatsSource>> = Vec::new();
        let (l4, xdp): (L4Dataplane, _) = if let Some(program) = xdp_program {
            let dp = Arc::new(Mutex::new(l4::start_xdp_l4(opts, program)?));
            stats.push(dp.clone());
            (Box::new(SharedXdp(dp.clone())), Some(dp))
        } else {
            let dp = l4::start_userspace_l4(opts, conn_gate.clone())?;
            stats.push(Arc::new(dp.stats()));
            (Box::new(dp), None)
        };
        if let Some(proxy) = &proxy {
            stats.push(proxy.clone());
        }
        let http = proxy.clone().map(|p| Box::new(p) as HttpDataplane);
        let mut controller = Controller::new(model, l4, http)
            .with_l4_health_checks(tokio::runtime::Handle::current())
            .with_maglev_table_size(opts.maglev_table_size);
        controller.set_static_l4(static_l4);

        let (shutdown, shutdown_rx) = watch::channel(false);
        let (control, control_rx) = mpsc::channel(4);
        let resync = watcher.as_ref().map(MarathonWatcher::resync_trigger);
        // The control plane (the watcher's reads and parses, the model, the controller's applies)
        // runs on a thread of its own: what it allocates and frees stays on one allocator heap,
        // so a burst's new services reuse the memory of the ones they replace (on the shared
        // runtime they spread over both workers' heaps: 161-162 MB peak after a burst of 1,000
        // kills at 10,000 apps, 150 MB here). Its event reader shares the thread: while the
        // controller applies an update, events wait in the socket (a full sync's apply, the
        // longest, takes about half a second at 10,000 apps).
        let (control_rt, control_stop) = mlb::stats::memory::own_thread_runtime(
            "mlb-control".into(),
            Some(mlb::stats::memory::release_freed),
            || {},
        )
        .context("starting the control thread")?;
        let marathon_rx = watcher.map(|w| {
            let (tx, rx) = mpsc::channel(16);
            let watching = w.run(tx, shutdown_rx.clone());
            control_rt.spawn(watching.instrument(info_span!("marathon")));
            rx
        });
        let stopping = Arc::new(AtomicBool::new(false));
        let admin_context = AdminContext {
            status: controller.status(),
            state: Some(controller.state_queries()),
            resync: resync.clone(),
            proxy: proxy.clone(),
            stats,
            changes: Arc::default(),
            stopping: stopping.clone(),
            token: opts.admin_token.clone(),
            xdp: xdp.clone(),
        };
        let admin_gate = ConnGate::new(opts.admin_conn_limits());
        let admin = tokio::spawn(
            admin::serve(admin_listener, admin_context, admin_gate).instrument(info_span!("admin")),
        );
        let inputs = Inputs {
            marathon: marathon_rx,
            control: control_rx,
            shutdown: shutdown_rx,
        };
        let adoption = xdp.as_ref().map(|dp| {
            // Resynced: the controller has applied a full pass of Marathon's answer (or of the
            // static config alone).
            let status = controller.status();
            let marathon = resync.is_some();
            let synced = move || {
                let s = status.load();
                s.full_passes > 0 && (s.synced || !marathon)
            };
            let finishing = l4::finish_adoption(dp.clone(), synced);
            tokio::spawn(finishing.instrument(info_span!("xdp")))
        });
        let controller =
            control_rt.spawn(controller.run(inputs).instrument(info_span!("controller")));
        let sweeper = xdp
            .as_ref()
            .map(|dp| tokio::spawn(l4::sweep_conntrack(dp.clone()).instrument(info_span!("xdp"))));
        Ok(Agent {
            proxy,
            xdp,
            resync,
            control,
            shutdown,
            controller,
            control_stop,
            admin,
            sweeper,
            stopping,
            adoption,
        })
    }

    /// Until SIGTERM or Ctrl-C. SIGHUP: re-read `--static-config` (a bad file keeps the last
    /// good services) and resync Marathon, as marathon-lb's SIGHUP regenerates everything.
    /// SIGUSR1: reload certificates.
    async fn handle_signals(&self, opts: &RunOptions) -> Result<Stop> {
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let mut term = signal(SignalKind::terminate())?;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => { r?; info!("Ctrl-C: stopping"); return Ok(Stop::Now); }
                _ = term.recv() => return Ok(Stop::Graceful),
                _ = hup.recv() => self.on_hup(opts).await,
                _ = usr1.recv() => self.on_usr1(),
            }
        }
    }

    /// Graceful stop: the health check answers 503 at once, so load balancers in front stop
    /// sending; after `--drain-delay` the HTTP listeners close, and requests in flight get
    /// `--shutdown-timeout` to finish. Ctrl-C cuts the delay short. Routes keep following
    /// Marathon meanwhile.
    async fn drain(&self, opts: &RunOptions) {
        self.stopping.store(true, Ordering::Relaxed);
        info!(
            drain_delay_s = opts.drain_delay,
            "SIGTERM: health check answers 503; listeners close after --drain-delay"
        );
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(opts.drain_delay)) => {}
            _ = tokio::signal::ctrl_c() => info!("Ctrl-C: not waiting for --drain-delay"),
        }
        let Some(proxy) = &self.proxy else {
            return;
        };
        proxy.close_listeners();
        let deadline = Instant::now() + Duration::from_secs(opts.shutdown_timeout);
        loop {
            // Kept-alive connections close themselves once their requests are answered (each
            // last response says so; idle ones within a second): exiting before they do would
            // reset a connection a client is about to send on.
            let (in_flight, connections) = (proxy.in_flight(), proxy.client_connections());
            if in_flight == 0 && connections == 0 {
                info!("listeners closed; no request in flight, no client connection open");
                return;
            }
            if Instant::now() >= deadline {
                warn!(
                    in_flight,
                    connections,
                    "requests or connections still open after --shutdown-timeout; stopping"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn on_hup(&self, opts: &RunOptions) {
        if let Some(resync) = &self.resync {
            info!("SIGHUP: full resync from Marathon");
            resync.request();
        }
        let Some(path) = &opts.static_config else {
            return;
        };
        match static_config::load(path) {
            Ok(config) => {
                info!(path = %path.display(), "SIGHUP: static config reloaded");
                let _ = self.control.send(Control::StaticL4(config.l4)).await;
            }
            Err(e) => error!("SIGHUP: keeping the last good services: {e:#}"),
        }
    }

    fn on_usr1(&self) {
        if let Some(proxy) = &self.proxy {
            info!("SIGUSR1: reloading certificates");
            for e in proxy.reload_certs() {
                warn!("certificate kept its previous version: {e}");
            }
        }
    }

    /// Stops the controller (it owns the dataplanes), the admin API and the sweeper. The XDP
    /// datapath stays pinned and forwarding for the next agent, unless `detach` says to remove
    /// it.
    async fn stop(self, detach: bool) -> Result<()> {
        let _ = self.shutdown.send(true);
        let _ = self.controller.await;
        let _ = self.control_stop.send(());
        self.admin.abort();
        let _ = self.admin.await;
        for task in [self.sweeper, self.adoption].into_iter().flatten() {
            task.abort();
            // Wait until the task is gone: it holds a reference to the XDP dataplane.
            let _ = task.await;
        }
        if let Some(dp) = self.xdp {
            let dp = Arc::try_unwrap(dp)
                .map_err(|_| anyhow::anyhow!("XDP dataplane still shared at shutdown"))?
                .into_inner()
                .map_err(|_| anyhow::anyhow!("XDP dataplane lock poisoned"))?;
            let program = dp.into_program();
            if detach {
                let ifaces = program.detach_all()?;
                info!(interfaces = ?ifaces, "XDP program detached, pins removed (--detach-on-exit)");
            } else {
                let ifaces: Vec<_> = program.interfaces().map(str::to_owned).collect();
                let dir = program.pins().map(|p| p.root().display().to_string());
                info!(interfaces = ?ifaces, pinned_in = ?dir, "XDP datapath left forwarding for the next agent (`mlb stop --detach` removes it)");
            }
        }
        Ok(())
    }
}

fn load_static_l4(opts: &RunOptions) -> Result<BTreeMap<L4ServiceKey, L4Service>> {
    let Some(path) = &opts.static_config else {
        return Ok(BTreeMap::new());
    };
    let config = static_config::load(path)
        .with_context(|| format!("loading --static-config {}", path.display()))?;
    Ok(config.l4)
}

/// Raises the open-files limit to its hard limit (connections are capped by it) and returns it.
fn open_files_limit() -> u64 {
    match overload::raise_fd_limit() {
        Ok(limit) => {
            info!(limit, "open-files limit raised to the hard limit");
            limit
        }
        Err(e) => {
            warn!("cannot raise the open-files limit: {e}; assuming 1024");
            1024
        }
    }
}

fn start_proxy(opts: &RunOptions, conn_gate: Arc<ConnGate>) -> Result<Arc<HttpProxy>> {
    let handle = tokio::runtime::Handle::current();
    let config = opts.proxy_config(conn_gate);
    let config = ProxyConfig {
        // The buffers of connections that went idle go back to the OS. On mlb's own runtime
        // (no `--threads`) each thread already does as it goes idle: a task would trim one of
        // them a second time.
        trim_memory: (config.threads > 0).then_some(mlb::stats::memory::release_freed as fn()),
        ..config
    };
    let proxy = HttpProxy::start(config, handle).context("starting the HTTP proxy")?;
    info!(
        http = ?proxy.local_addr("http"),
        https = ?proxy.local_addr("https"),
        appid = ?proxy.local_addr("appid"),
        "HTTP proxy listening"
    );
    Ok(Arc::new(proxy))
}
