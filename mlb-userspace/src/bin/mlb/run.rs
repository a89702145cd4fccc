//! `mlb run`: start the dataplanes, the Marathon watcher, the controller and the admin API;
//! handle signals; shut down in order.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result};
use mlb::{
    admin::{self, AdminContext},
    controller::{Control, Controller, HttpDataplane, Inputs, L4Dataplane},
    dataplane::xdp_l4::XdpL4,
    marathon::{
        config::MarathonConfig,
        watch::{MarathonWatcher, ResyncTrigger},
    },
    model::{L4Service, L4ServiceKey},
    options::RunOptions,
    proxy::HttpProxy,
    static_config,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{Instrument as _, error, info, info_span, warn};

use crate::l4::{self, SharedXdp};

pub fn run(opts: &RunOptions) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let agent = Agent::start(opts).await?;
        let result = agent.handle_signals(opts).await;
        agent.stop().await?;
        result
    })
}

/// The running agent: its tasks and what they share, kept until shutdown (dropping the
/// userspace dataplane closes its listeners, dropping the XDP one detaches the program).
struct Agent {
    proxy: Option<Arc<HttpProxy>>,
    xdp: Option<Arc<Mutex<XdpL4>>>,
    resync: Option<ResyncTrigger>,
    control: mpsc::Sender<Control>,
    shutdown: watch::Sender<bool>,
    controller: JoinHandle<()>,
    admin: JoinHandle<()>,
    sweeper: Option<JoinHandle<()>>,
}

impl Agent {
    async fn start(opts: &RunOptions) -> Result<Agent> {
        let model = opts.model_options(std::env::var("FRAMEWORK_NAME").ok())?;
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
            Some(_) => Some(start_proxy(opts)?),
            None => None,
        };
        let admin_listener = admin::bind(opts.admin_addr)
            .await
            .with_context(|| format!("admin listener on {} (--admin-addr)", opts.admin_addr))?;
        info!(addr = %admin_listener.local_addr()?, "admin listener ready");

        let (l4, xdp): (L4Dataplane, _) = match xdp_program {
            Some(program) => {
                let dp = Arc::new(Mutex::new(l4::start_xdp_l4(opts, program)?));
                (Box::new(SharedXdp(dp.clone())), Some(dp))
            }
            None => (Box::new(l4::start_userspace_l4(opts)?), None),
        };
        let http = proxy.clone().map(|p| Box::new(p) as HttpDataplane);
        let mut controller = Controller::new(model, l4, http)
            .with_l4_health_checks(tokio::runtime::Handle::current());
        controller.set_static_l4(static_l4);

        let (shutdown, shutdown_rx) = watch::channel(false);
        let (control, control_rx) = mpsc::channel(4);
        let resync = watcher.as_ref().map(MarathonWatcher::resync_trigger);
        let marathon_rx = watcher.map(|w| {
            let (tx, rx) = mpsc::channel(16);
            let watching = w.run(tx, shutdown_rx.clone());
            tokio::spawn(watching.instrument(info_span!("marathon")));
            rx
        });
        let admin_context = AdminContext {
            status: controller.status(),
            state: Some(controller.state_queries()),
            resync: resync.clone(),
            proxy: proxy.clone(),
            xdp: xdp.clone(),
        };
        let admin = tokio::spawn(
            admin::serve(admin_listener, admin_context).instrument(info_span!("admin")),
        );
        let inputs = Inputs {
            marathon: marathon_rx,
            control: control_rx,
            shutdown: shutdown_rx,
        };
        let controller = tokio::spawn(controller.run(inputs).instrument(info_span!("controller")));
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
            admin,
            sweeper,
        })
    }

    /// Until SIGTERM or Ctrl-C. SIGHUP: re-read `--static-config` (a bad file keeps the last
    /// good services) and resync Marathon, as marathon-lb's SIGHUP regenerates everything.
    /// SIGUSR1: reload certificates.
    async fn handle_signals(&self, opts: &RunOptions) -> Result<()> {
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let mut term = signal(SignalKind::terminate())?;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => { r?; break; }
                _ = term.recv() => break,
                _ = hup.recv() => self.on_hup(opts).await,
                _ = usr1.recv() => self.on_usr1(),
            }
        }
        info!("shutting down");
        Ok(())
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

    /// Stops the controller (it owns the dataplanes), the admin API and the sweeper, then
    /// detaches the XDP program.
    async fn stop(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        let _ = self.controller.await;
        self.admin.abort();
        let _ = self.admin.await;
        if let Some(s) = self.sweeper {
            s.abort();
            // Wait until the task is gone: it holds a reference to the XDP dataplane.
            let _ = s.await;
        }
        if let Some(dp) = self.xdp {
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

fn start_proxy(opts: &RunOptions) -> Result<Arc<HttpProxy>> {
    let handle = tokio::runtime::Handle::current();
    let proxy = HttpProxy::start(opts.proxy_config(), handle).context("starting the HTTP proxy")?;
    info!(
        http = ?proxy.local_addr("http"),
        https = ?proxy.local_addr("https"),
        appid = ?proxy.local_addr("appid"),
        "HTTP proxy listening"
    );
    Ok(Arc::new(proxy))
}
