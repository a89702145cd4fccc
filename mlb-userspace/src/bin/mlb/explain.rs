//! `mlb explain`: from Marathon directly with `--marathon`, else from the running mlb.
use anyhow::{Context as _, Result, bail};
use mlb::{
    controller::{self, Controller},
    dataplane::{Dataplane, DataplaneError, L4Change},
    marathon::{client::MarathonClient, config::MarathonConfig, watch::MarathonUpdate},
    model::explain::{AppExplanation, render_text},
    options::ExplainOptions,
};

pub fn explain(opts: &ExplainOptions) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let out = runtime.block_on(async {
        if opts.run.marathon.is_empty() {
            from_admin(opts).await
        } else {
            from_marathon(opts).await
        }
    })?;
    print!("{out}");
    Ok(())
}

/// Asks the running mlb's admin API.
async fn from_admin(opts: &ExplainOptions) -> Result<String> {
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

/// Reads Marathon once and evaluates it with the model, serving nothing.
async fn from_marathon(opts: &ExplainOptions) -> Result<String> {
    let model = opts
        .run
        .model_options(std::env::var("FRAMEWORK_NAME").ok())?;
    let cfg = MarathonConfig::from_flags(&opts.run.marathon_flags()).context("Marathon flags")?;
    let client = MarathonClient::new(&cfg).context("Marathon client")?;
    let apps = client
        .list_apps()
        .await
        .context("reading Marathon's apps")?;
    let mut controller = Controller::new(model, Box::new(NoDataplane), None);
    controller.take_update(MarathonUpdate::Snapshot(apps));
    let names = controller.unresolved_hosts();
    controller.add_host_addrs(controller::resolve_hosts(names).await);
    controller.recompute(std::time::SystemTime::now());
    let status = controller.status().load_full();
    let mut apps: Vec<AppExplanation> = status
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
        Ok(render_text(&apps))
    }
}

/// `mlb explain` evaluates without serving anything.
struct NoDataplane;

impl Dataplane for NoDataplane {
    type Change = L4Change;

    fn apply(&mut self, _: &[L4Change]) -> Result<(), Vec<DataplaneError>> {
        Ok(())
    }
}
