//! `mlb explain`: from Marathon directly with `--marathon`, else from the running mlb. Prints
//! only the answer on stdout: one line per app, the details with `-v`, JSON with `--json`.
use std::fmt::Write as _;

use anyhow::{Context as _, Result, bail};
use mlb::{
    controller::{self, Controller},
    dataplane::{Dataplane, DataplaneError, L4Change},
    marathon::{client::MarathonClient, config::MarathonConfig, watch::MarathonUpdate},
    model::explain::{AppExplanation, render_text},
    options::{ExplainOptions, ForwardingKind},
};

pub fn explain(opts: &ExplainOptions) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let out = runtime.block_on(async {
        if opts.run.marathon.is_empty() {
            from_admin(opts, opts.json).await
        } else {
            from_marathon(opts, opts.json).await
        }
    })?;
    print!("{out}");
    if opts.run.forwarding == ForwardingKind::Dsr && !opts.json {
        // The section reads the document as JSON: ask again in that form.
        let json = runtime.block_on(async {
            if opts.run.marathon.is_empty() {
                from_admin(opts, true).await
            } else {
                from_marathon(opts, true).await
            }
        })?;
        let apps: serde_json::Value = serde_json::from_str(&json)?;
        print!(
            "\n{}",
            mlb::backend_setup::dsr_section(&apps, &opts.run.vip)
        );
    }
    Ok(())
}

/// Asks the running mlb's admin API.
async fn from_admin(opts: &ExplainOptions, json: bool) -> Result<String> {
    let mut addr = opts.run.admin_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let path = match &opts.app_id {
        Some(id) => format!("/_mlb/explain/{}", id.trim_start_matches('/')),
        None => "/_mlb/explain".to_owned(),
    };
    let query = if opts.verbose && !json {
        "?format=text"
    } else {
        ""
    };
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
    if json || opts.verbose {
        return Ok(body);
    }
    let apps: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("{url}: not JSON"))?;
    Ok(summary(&apps))
}

/// Reads Marathon once and evaluates it with the model, serving nothing.
async fn from_marathon(opts: &ExplainOptions, json: bool) -> Result<String> {
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
    if json {
        Ok(serde_json::to_string_pretty(&apps)? + "\n")
    } else if opts.verbose {
        Ok(render_text(&apps))
    } else {
        Ok(summary(&serde_json::to_value(&apps)?))
    }
}

/// One line per app of an explain document (`/_mlb/explain`'s JSON): where it is exposed, or
/// why not (the reasons name the label or field).
fn summary(apps: &serde_json::Value) -> String {
    let mut out = String::new();
    for app in apps.as_array().into_iter().flatten() {
        let id = app["app_id"].as_str().unwrap_or("?");
        let ports = app["ports"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let (exposed, refused): (Vec<_>, Vec<_>) = ports.iter().partition(|p| p["exposed"] == true);
        let mut line = match app["problem"].as_str() {
            Some(problem) => format!("{id}: NOT EXPOSED: {problem}"),
            None if exposed.is_empty() => format!("{id}: NOT EXPOSED"),
            None => {
                let list: Vec<String> = exposed.iter().map(|p| exposed_port(p)).collect();
                format!("{id}: exposed: {}", list.join("; "))
            }
        };
        for p in refused {
            let reason = p["reason"].as_str().unwrap_or("not exposed");
            let _ = write!(line, "; port {}: {reason}", p["index"]);
        }
        let warnings = app["warnings"].as_array().map_or(0, Vec::len);
        if warnings > 0 {
            let _ = write!(line, " ({warnings} warning(s): -v)");
        }
        let _ = writeln!(out, "{line}");
    }
    out
}

/// `10101/tcp http vhosts a.example,b.example, 2 backends`.
fn exposed_port(p: &serde_json::Value) -> String {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        let items = v.as_array().map(Vec::as_slice).unwrap_or_default();
        items
            .iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let mut s = format!(
        "{}/{} {}",
        p["service_port"],
        strings(&p["protocols"]).join(","),
        p["dataplane"].as_str().unwrap_or("?")
    );
    let vhosts = strings(&p["vhosts"]);
    if !vhosts.is_empty() {
        let _ = write!(s, " vhosts {}", vhosts.join(","));
    }
    let backends = p["backends"].as_array().map_or(0, Vec::len);
    let _ = write!(s, ", {backends} backend(s)");
    s
}

/// `mlb explain` evaluates without serving anything.
struct NoDataplane;

impl Dataplane for NoDataplane {
    type Change = L4Change;

    fn apply(&mut self, _: &[L4Change]) -> Result<(), Vec<DataplaneError>> {
        Ok(())
    }
}
