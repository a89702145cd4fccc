//! The zdd driver: reads the app file, talks to Marathon and to every load balancer, and follows
//! [`super::plan`]'s decisions until the old colour is gone (or a hybrid split is reached).
use std::{
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use reqwest::{Client, Method, Url};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{
    ZddError,
    plan::{self, Drain, DrainInput, Finish, Resume, Sizing},
};
use crate::stats::csv::{self, Record};

/// Every request's limit: a stuck Marathon or load balancer never hangs the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What `mlb zdd` was asked to do (its flags, parsed).
#[derive(Clone, Debug)]
pub struct ZddConfig {
    pub json: PathBuf,
    pub marathon: Url,
    /// Load balancers' admin base URLs; each name stands for all its addresses.
    pub marathon_lb: Vec<Url>,
    pub dry_run: bool,
    pub force: bool,
    pub step_delay: Duration,
    pub sizing: Sizing,
    pub linear_increase: u64,
    pub resume: Resume,
    /// `--complete-cur` or `--complete-prev` (as opposed to `--resume`).
    pub complete: bool,
    pub max_wait: Duration,
    pub pre_kill_hook: Option<PathBuf>,
    /// Load balancers that must answer before anything is killed (default: all of them).
    pub listening_instances: Option<usize>,
}

/// Runs a deployment to its end.
pub async fn run(cfg: &ZddConfig) -> Result<(), ZddError> {
    let text = std::fs::read_to_string(&cfg.json).map_err(|e| ZddError::Input {
        path: cfg.json.display().to_string(),
        reason: e.to_string(),
    })?;
    let app: Value = serde_json::from_str(&text).map_err(|e| ZddError::Input {
        path: cfg.json.display().to_string(),
        reason: e.to_string(),
    })?;
    plan::validate(&app)?;
    let marathon = Marathon::new(cfg.marathon.clone())?;
    let group = plan::label(&app, plan::GROUP).to_owned();
    let existing = marathon.group_apps(&group).await?;
    if existing.len() > 1 {
        let (old, new) = plan::resume_roles(existing, cfg.resume)?;
        info!("resuming: {} -> {}", plan::id(&old), plan::id(&new));
        return Swap::new(cfg, &marathon).await?.run(old, new).await;
    }
    if cfg.complete {
        return Err(ZddError::InvalidArg(format!(
            "no deployment of group {group} in progress to complete"
        )));
    }
    let previous = existing.into_iter().next();
    let new = plan::prepare(&app, previous.as_ref(), cfg.sizing, &now_iso())?;
    println!("{}", serde_json::to_string_pretty(&new).unwrap_or_default());
    if cfg.dry_run {
        return Ok(());
    }
    confirm(cfg, &format!("Create {}?", plan::id(&new))).await?;
    marathon.create(&new).await?;
    match previous {
        Some(old) => Swap::new(cfg, &marathon).await?.run(old, new).await,
        None => Ok(()),
    }
}

/// The swap loop of one deployment.
struct Swap<'a> {
    cfg: &'a ZddConfig,
    marathon: &'a Marathon,
    lbs: Vec<Url>,
}

impl<'a> Swap<'a> {
    async fn new(cfg: &'a ZddConfig, marathon: &'a Marathon) -> Result<Swap<'a>, ZddError> {
        Ok(Swap {
            cfg,
            marathon,
            lbs: expand_lbs(&cfg.marathon_lb).await?,
        })
    }

    async fn run(&self, old: Value, new: Value) -> Result<(), ZddError> {
        let (old_id, new_id) = (plan::id(&old).to_owned(), plan::id(&new).to_owned());
        loop {
            let old = self.marathon.app(&old_id).await?;
            let mut new = self.marathon.app(&new_id).await?;
            if self.cfg.complete {
                // Completing a hybrid deployment: all the way to the target.
                new["labels"][plan::NEW_INSTANCES] = json!("0");
            }
            if new["deployments"].as_array().is_some_and(|d| !d.is_empty()) {
                info!("{new_id}: waiting for its deployment to finish");
                tokio::time::sleep(self.cfg.step_delay).await;
                continue;
            }
            // A hybrid split reached needs no drained task: both colours stay.
            if plan::finish(&old, &new, 0)? == Finish::Hybrid {
                info!("hybrid split reached: {old_id} and {new_id} both serve");
                return Ok(());
            }
            let drained = if !plan::may_drain(&old, &new)? {
                Vec::new()
            } else {
                self.tasks_to_kill(&old, &new).await?
            };
            match plan::finish(&old, &new, drained.len())? {
                Finish::DeleteOld => {
                    confirm(self.cfg, &format!("Delete {old_id}?")).await?;
                    info!("deleting {old_id}: every task of it drained");
                    return self.marathon.delete(&old_id).await;
                }
                Finish::Hybrid | Finish::No => {}
            }
            if !drained.is_empty() {
                self.kill(&old, &new, &drained).await?;
            }
            let (n, goal) = (plan::instances(&new), plan::goal(&new)?);
            if n < goal {
                let next =
                    plan::next_instances(n, plan::instances(&old), goal, self.cfg.linear_increase);
                info!("scaling {new_id} from {n} to {next} instances");
                self.marathon.scale(&new_id, next).await?;
            }
        }
    }

    async fn kill(&self, old: &Value, new: &Value, tasks: &[String]) -> Result<(), ZddError> {
        if let Some(hook) = &self.cfg.pre_kill_hook {
            run_hook(hook, old, tasks, new).await?;
        }
        confirm(
            self.cfg,
            &format!("Kill {} drained task(s) of {}?", tasks.len(), plan::id(old)),
        )
        .await?;
        info!("killing drained tasks {tasks:?}");
        self.marathon.kill_and_scale(tasks).await
    }

    /// zdd's `find_tasks_to_kill`: polls the load balancers until some old tasks are drained on
    /// all of them, for at most `--max-wait`; then takes those out of rotation even with
    /// sessions left.
    async fn tasks_to_kill(&self, old: &Value, new: &Value) -> Result<Vec<String>, ZddError> {
        let deadline = Instant::now() + self.cfg.max_wait;
        let pxname = plan::proxy_name(new);
        let want_lbs = self.cfg.listening_instances.unwrap_or(self.lbs.len());
        let old_tasks = old["tasks"].as_array().cloned().unwrap_or_default();
        let new_tasks = new["tasks"].as_array().cloned().unwrap_or_default();
        let expected = (plan::instances(old) + plan::instances(new)) as usize;
        let target = plan::label_num(new, plan::TARGET)?;
        loop {
            let stats = self.stats().await;
            let timed_out = Instant::now() >= deadline;
            if stats.len() >= want_lbs {
                let input = DrainInput {
                    stats: &stats,
                    pxname: &pxname,
                    old_tasks: &old_tasks,
                    new_tasks: &new_tasks,
                    expected_listeners: expected,
                    target,
                };
                match plan::drained(&input, timed_out) {
                    Drain::Drained(tasks) => return Ok(tasks),
                    // Waiting would last until --max-wait: growing the new app ends it.
                    Drain::Inverted => {
                        info!("{pxname}: the load balancers drain the new colour; growing it");
                        tokio::time::sleep(self.cfg.step_delay).await;
                        return Ok(Vec::new());
                    }
                    Drain::Wait(why) if timed_out => {
                        warn!(
                            "gave up waiting for drained tasks after {:?}: {why}",
                            self.cfg.max_wait
                        );
                        return Ok(Vec::new());
                    }
                    Drain::Wait(why) => info!("{pxname}: waiting: {why}"),
                }
            } else if timed_out {
                return Err(ZddError::MarathonLb {
                    url: self
                        .lbs
                        .iter()
                        .map(Url::as_str)
                        .collect::<Vec<_>>()
                        .join(" "),
                    reason: format!("only {} of {want_lbs} answered", stats.len()),
                });
            }
            tokio::time::sleep(self.cfg.step_delay).await;
        }
    }

    /// The stats of every load balancer that answers and is not reloading (more than two PIDs,
    /// as zdd reads `/_haproxy_getpids`).
    async fn stats(&self) -> Vec<Vec<Record>> {
        let mut all = Vec::with_capacity(self.lbs.len());
        for lb in &self.lbs {
            match self.lb_stats(lb).await {
                Ok(rows) => all.push(rows),
                Err(e) => warn!("{e}"),
            }
        }
        all
    }

    async fn lb_stats(&self, lb: &Url) -> Result<Vec<Record>, ZddError> {
        let err = |reason: String| ZddError::MarathonLb {
            url: lb.to_string(),
            reason,
        };
        let get = |path: &str| {
            let url = lb.join(path).map_err(|e| err(e.to_string()));
            async {
                let resp = self.marathon.http.get(url?).send().await;
                let resp = resp
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| err(e.to_string()))?;
                resp.text().await.map_err(|e| err(e.to_string()))
            }
        };
        let pids = get("/_haproxy_getpids").await?;
        if pids.split_whitespace().count() > 2 {
            return Err(err("reloading (more than two PIDs)".into()));
        }
        let text = get("/haproxy?stats;csv").await?;
        csv::parse(&text).map_err(|e| err(e.to_string()))
    }
}

/// Each load balancer URL once per address its host resolves to.
async fn expand_lbs(urls: &[Url]) -> Result<Vec<Url>, ZddError> {
    if urls.is_empty() {
        return Err(ZddError::InvalidArg(
            "at least one --marathon-lb is needed".into(),
        ));
    }
    let mut out = Vec::new();
    for url in urls {
        let err = |reason: String| ZddError::MarathonLb {
            url: url.to_string(),
            reason,
        };
        let host = url.host_str().ok_or_else(|| err("no host".into()))?;
        let port = url.port_or_known_default().unwrap_or(9090);
        let addrs = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| err(format!("resolving {host}: {e}")))?;
        for addr in addrs {
            let mut one = url.clone();
            one.set_ip_host(addr.ip())
                .map_err(|()| err("cannot set its address".into()))?;
            if !out.contains(&one) {
                out.push(one);
            }
        }
    }
    Ok(out)
}

/// `hook '<old app json>' '<task ids json>' '<new app json>'`; a failure stops the run.
async fn run_hook(
    hook: &PathBuf,
    old: &Value,
    tasks: &[String],
    new: &Value,
) -> Result<(), ZddError> {
    let status = tokio::process::Command::new(hook)
        .arg(old.to_string())
        .arg(json!(tasks).to_string())
        .arg(new.to_string())
        .status()
        .await
        .map_err(|e| ZddError::PreKillHook(format!("{}: {e}", hook.display())))?;
    if status.success() {
        Ok(())
    } else {
        Err(ZddError::PreKillHook(format!(
            "{} exited with {status}",
            hook.display()
        )))
    }
}

/// Asks on the terminal unless `--force`; anything but yes stops the run (exit 1).
async fn confirm(cfg: &ZddConfig, question: &str) -> Result<(), ZddError> {
    if cfg.force {
        return Ok(());
    }
    let question = question.to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        eprint!("{question} [y/N] ");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await;
    match answer {
        Ok(Ok(line)) if matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes") => Ok(()),
        _ => Err(ZddError::Declined),
    }
}

/// Now as a naive ISO-8601 timestamp in UTC (`2026-12-06T08:30:00.123456`): zdd compares these
/// as strings, so they must all have the same shape.
pub fn now_iso() -> String {
    crate::timefmt::Civil::of(SystemTime::now()).iso()
}

/// The Marathon calls zdd makes.
struct Marathon {
    base: Url,
    http: Client,
}

impl Marathon {
    fn new(base: Url) -> Result<Marathon, ZddError> {
        let http = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| ZddError::Marathon(e.to_string()))?;
        Ok(Marathon { base, http })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let url = self.base.join(path).map_err(|e| e.to_string())?;
        let mut req = self.http.request(method, url.clone());
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| format!("{url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("{url}: HTTP {status}: {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The apps of deployment group `group`.
    async fn group_apps(&self, group: &str) -> Result<Vec<Value>, ZddError> {
        let list = self
            .call(Method::GET, "/v2/apps?embed=apps.tasks", None)
            .await
            .map_err(ZddError::Marathon)?;
        let apps = list["apps"].as_array().cloned().unwrap_or_default();
        Ok(apps
            .into_iter()
            .filter(|a| plan::label(a, plan::GROUP) == group)
            .collect())
    }

    async fn app(&self, id: &str) -> Result<Value, ZddError> {
        let path = format!("/v2/apps{id}?embed=app.tasks&embed=app.deployments");
        let mut v = self
            .call(Method::GET, &path, None)
            .await
            .map_err(ZddError::Marathon)?;
        Ok(v["app"].take())
    }

    async fn create(&self, app: &Value) -> Result<(), ZddError> {
        self.call(Method::POST, "/v2/apps", Some(app))
            .await
            .map(drop)
            .map_err(ZddError::AppCreate)
    }

    async fn delete(&self, id: &str) -> Result<(), ZddError> {
        self.call(Method::DELETE, &format!("/v2/apps{id}"), None)
            .await
            .map(drop)
            .map_err(ZddError::AppDelete)
    }

    async fn scale(&self, id: &str, instances: u64) -> Result<(), ZddError> {
        let body = json!({ "instances": instances });
        self.call(Method::PUT, &format!("/v2/apps{id}"), Some(&body))
            .await
            .map(drop)
            .map_err(ZddError::AppScale)
    }

    async fn kill_and_scale(&self, tasks: &[String]) -> Result<(), ZddError> {
        let body = json!({ "ids": tasks });
        self.call(Method::POST, "/v2/tasks/delete?scale=true", Some(&body))
            .await
            .map(drop)
            .map_err(ZddError::AppScale)
    }
}
