//! The controller: Marathon updates → model → diffs → dataplanes, and the status the admin API
//! shows.
//!
//! One task owns it and handles one thing at a time, in order: a [`MarathonUpdate`] (the
//! watcher has already coalesced event bursts), a change of the L4 active health checks, or a
//! control message (SIGHUP re-read of `--static-config`). After each, the model recomputes the
//! whole [`DesiredState`] (pure and fast), and each dataplane receives only what changed:
//! [`L4Change`]s for the TCP/UDP dataplane, a new route set for the HTTP proxy only when an HTTP
//! service changed. A failed Marathon read changes nothing: the last good state stays.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::{
    dataplane::{L4Change, L4Dataplane},
    diff::HttpChange,
    marathon::watch::MarathonUpdate,
    model::{
        self, BackendId, DesiredState, L4Service, L4ServiceKey, ModelOptions,
        explain::AppExplanation,
        incremental::{Changed, ModelState},
    },
    proxy::{
        HttpProxy,
        health::{HealthChecker, UnhealthySet, targets_of_l4},
    },
};

pub mod apps;

use apps::AppStore;

/// The HTTP dataplane as the controller sees it (the proxy, or a recorder in tests).
pub trait HttpDataplane: Send {
    /// Applies `changes` (an `Update` of an unknown service adds it; one equal to what the
    /// dataplane has changes nothing). Returns the problems still in effect, each naming its
    /// app.
    fn apply(&mut self, changes: &[HttpChange]) -> Vec<String>;
}

impl HttpDataplane for Arc<HttpProxy> {
    fn apply(&mut self, changes: &[HttpChange]) -> Vec<String> {
        HttpProxy::apply_changes(self, changes)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }
}

/// What the admin API shows; replaced whole after every change.
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// Bumped every time a dataplane was given changes.
    pub generation: u64,
    /// Whether Marathon has been read successfully at least once.
    pub synced: bool,
    /// The last failed Marathon read, until the next good one.
    pub last_error: Option<String>,
    /// Apps known (parsed or not).
    pub apps: usize,
    /// Services and rejections in the desired state (the state itself: [`StateQueries`]).
    pub l4_services: usize,
    pub http_services: usize,
    pub rejected: usize,
    /// Full model passes since start (the rest were incremental).
    pub full_passes: u64,
    /// Why each app is or is not exposed, by app id.
    pub explanations: Arc<BTreeMap<String, Arc<AppExplanation>>>,
    /// L4 backends mlb's active health checks keep out of rotation.
    pub l4_unhealthy: Vec<BackendId>,
    /// L4 services a dataplane refused, with the reason.
    pub l4_errors: BTreeMap<String, String>,
    /// HTTP configuration problems of the last apply.
    pub http_errors: Vec<String>,
}

/// Asks the controller for a copy of the desired state (for the admin API's rare state
/// endpoints: copying 10,000 services at every change would cost more than the change).
#[derive(Clone, Debug)]
pub struct StateQueries(mpsc::Sender<StateReply>);

/// Where the controller sends the copy of the state asked for.
type StateReply = oneshot::Sender<Arc<DesiredState>>;

impl StateQueries {
    /// The current desired state; `None` when the controller is gone.
    pub async fn get(&self) -> Option<Arc<DesiredState>> {
        let (tx, rx) = oneshot::channel();
        self.0.send(tx).await.ok()?;
        rx.await.ok()
    }
}

/// Messages to the controller besides Marathon updates.
#[derive(Debug)]
pub enum Control {
    /// `--static-config` was re-read: these static services replace the previous ones.
    StaticL4(BTreeMap<L4ServiceKey, L4Service>),
}

/// Where the controller's input comes from.
pub struct Inputs {
    /// Marathon updates (none when mlb runs on a static config only).
    pub marathon: Option<mpsc::Receiver<MarathonUpdate>>,
    /// Control messages.
    pub control: mpsc::Receiver<Control>,
    /// Becomes true at shutdown.
    pub shutdown: watch::Receiver<bool>,
}

/// The controller; see the module documentation.
pub struct Controller {
    store: AppStore,
    model: ModelOptions,
    static_l4: BTreeMap<L4ServiceKey, L4Service>,
    /// The model's reserved ports before static services were added.
    base_reserved: BTreeSet<u16>,
    state: ModelState,
    /// Apps changed since the last recompute, and whether a full pass is due instead.
    dirty: BTreeSet<String>,
    full_due: bool,
    /// A copy of the state for [`StateQueries`], made on demand, dropped at every change.
    state_copy: Option<Arc<DesiredState>>,
    queries: (mpsc::Sender<StateReply>, mpsc::Receiver<StateReply>),
    l4_health: Option<(HealthChecker, watch::Receiver<Arc<UnhealthySet>>)>,
    l4_unhealthy: Arc<UnhealthySet>,
    l4_applied: BTreeMap<L4ServiceKey, L4Service>,
    l4: Box<dyn L4Dataplane + Send>,
    http: Option<Box<dyn HttpDataplane>>,
    /// Problem lines already logged, by app id.
    logged: BTreeMap<String, BTreeSet<String>>,
    status: Arc<ArcSwap<Status>>,
    generation: u64,
    synced: bool,
    last_error: Option<String>,
    l4_errors: BTreeMap<String, String>,
    http_errors: Vec<String>,
}

impl Controller {
    /// A controller feeding `l4` and (when HTTP services are served) `http`.
    pub fn new(
        model: ModelOptions,
        l4: Box<dyn L4Dataplane + Send>,
        http: Option<Box<dyn HttpDataplane>>,
    ) -> Self {
        Controller {
            store: AppStore::default(),
            base_reserved: model.reserved_ports.clone(),
            model,
            static_l4: BTreeMap::new(),
            state: ModelState::default(),
            dirty: BTreeSet::new(),
            full_due: true,
            state_copy: None,
            queries: mpsc::channel(16),
            l4_health: None,
            l4_unhealthy: Arc::default(),
            l4_applied: BTreeMap::new(),
            l4,
            http,
            logged: BTreeMap::new(),
            status: Arc::default(),
            generation: 0,
            synced: false,
            last_error: None,
            l4_errors: BTreeMap::new(),
            http_errors: Vec::new(),
        }
    }

    /// Runs mlb's own active health checks against L4 backends (on `handle`'s runtime); a
    /// backend failing them leaves the Maglev table until it passes again.
    pub fn with_l4_health_checks(mut self, handle: tokio::runtime::Handle) -> Self {
        self.l4_health = Some(HealthChecker::new(handle));
        self
    }

    /// Static services served besides Marathon's (a Marathon service on the same port and
    /// protocol is refused, with a reason in `mlb explain`).
    pub fn set_static_l4(&mut self, services: BTreeMap<L4ServiceKey, L4Service>) {
        self.model.reserved_ports = self
            .base_reserved
            .iter()
            .copied()
            .chain(services.keys().map(|k| k.port))
            .collect();
        self.static_l4 = services;
        // The reserved ports changed: every app may be affected.
        self.full_due = true;
    }

    /// The status the admin API reads (updated after every change).
    pub fn status(&self) -> Arc<ArcSwap<Status>> {
        self.status.clone()
    }

    /// A handle to ask the running controller for the desired state.
    pub fn state_queries(&self) -> StateQueries {
        StateQueries(self.queries.0.clone())
    }

    /// The desired state the model computed (Marathon's services; static ones are merged when
    /// applied).
    pub fn state(&self) -> &DesiredState {
        self.state.state()
    }

    /// Takes one Marathon update into the app store. Returns whether the apps changed (a
    /// failed read changes nothing and is only recorded).
    pub fn take_update(&mut self, update: MarathonUpdate) -> bool {
        match update {
            MarathonUpdate::Snapshot(apps) => {
                self.store.replace_all(apps);
                self.full_due = true;
                self.synced = true;
                self.last_error = None;
                true
            }
            MarathonUpdate::Apps { changed, removed } => {
                self.dirty.extend(
                    changed
                        .iter()
                        .filter_map(|v| v.get("id").and_then(|id| id.as_str()))
                        .map(str::to_owned),
                );
                self.dirty.extend(removed.iter().cloned());
                self.store.update(&changed, &removed);
                self.last_error = None;
                true
            }
            MarathonUpdate::SyncFailed { error } => {
                warn!(%error, "Marathon read failed; keeping the last good state");
                self.last_error = Some(error);
                self.publish();
                false
            }
        }
    }

    /// Agent host names that need a DNS answer before the next [`Controller::recompute`]:
    /// of every app before a full pass, else of the changed apps only (parsing every task's
    /// host at each event would cost more than the event).
    pub fn unresolved_hosts(&self) -> Vec<String> {
        let apps = &self.store.list().apps;
        let hosts = if self.full_due {
            model::hosts_to_resolve(apps)
        } else {
            model::hosts_to_resolve(apps.iter().filter(|a| self.dirty.contains(&a.id)))
        };
        hosts
            .into_iter()
            .filter(|h| !self.model.host_addrs.contains_key(h))
            .collect()
    }

    /// Records DNS answers for agent host names.
    pub fn add_host_addrs(&mut self, addrs: impl IntoIterator<Item = (String, IpAddr)>) {
        let before = self.model.host_addrs.len();
        self.model.host_addrs.extend(addrs);
        if self.model.host_addrs.len() != before {
            self.full_due = true;
        }
    }

    /// Brings the desired state up to date with the apps (incrementally when only some apps
    /// changed) and applies what changed.
    pub fn recompute(&mut self, now: SystemTime) {
        let dirty = std::mem::take(&mut self.dirty);
        let changed = if self.full_due {
            self.full_due = false;
            self.state.full(self.store.list(), &self.model, now)
        } else {
            self.state
                .update(self.store.list(), &dirty, &self.model, now)
        };
        // After an incremental step only the changed apps' problems can have moved.
        self.log_problems((!changed.full).then_some(&dirty));
        if !changed.full && changed.l4.is_empty() && changed.http.is_empty() {
            // Only explanations or rejections may have moved.
            self.publish();
            return;
        }
        self.state_copy = None;
        // The targets are rebuilt only when an L4 service with a health check may have moved:
        // walking every backend of every service at each task event would cost more than the
        // event.
        let l4 = &self.state.state().l4;
        let checks_moved = changed.full
            || changed.l4.iter().any(|k| {
                l4.get(k).is_some_and(|s| s.health_check.is_some())
                    || self
                        .l4_applied
                        .get(k)
                        .is_some_and(|s| s.health_check.is_some())
            });
        if checks_moved && let Some((checker, _)) = &mut self.l4_health {
            checker.set_targets(targets_of_l4(l4.values().chain(self.static_l4.values())));
        }
        self.apply(&changed);
    }

    /// The L4 active health checks changed: applies the new rotation.
    pub fn set_l4_unhealthy(&mut self, unhealthy: Arc<UnhealthySet>) {
        self.l4_unhealthy = unhealthy;
        self.apply(&Changed {
            full: true,
            ..Changed::default()
        });
    }

    /// Hands each dataplane what changed.
    fn apply(&mut self, changed: &Changed) {
        let state = self.state.state();
        let l4_keys: BTreeSet<L4ServiceKey> = if changed.full {
            self.l4_applied
                .keys()
                .chain(state.l4.keys())
                .chain(self.static_l4.keys())
                .copied()
                .collect()
        } else {
            changed.l4.clone()
        };
        let mut l4_changes = Vec::new();
        for key in l4_keys {
            match (self.l4_wanted(&key), self.l4_applied.get(&key)) {
                (Some(wanted), applied) if applied != Some(&wanted) => {
                    l4_changes.push(L4Change::Upsert(wanted));
                }
                (None, Some(_)) => l4_changes.push(L4Change::Remove(key)),
                _ => {}
            }
        }
        // The proxy keeps what it serves: it gets the changed keys, as the model saw them.
        let http_changes: Vec<HttpChange> = if self.http.is_some() {
            changed
                .http
                .iter()
                .map(|key| match state.http.get(key) {
                    Some(svc) => HttpChange::Update(Box::new(svc.clone())),
                    None => HttpChange::Remove(key.clone()),
                })
                .collect()
        } else {
            Vec::new()
        };
        if !l4_changes.is_empty() {
            self.apply_l4(&l4_changes);
        }
        if !http_changes.is_empty()
            && let Some(http) = &mut self.http
        {
            self.http_errors = http.apply(&http_changes);
        }
        if !l4_changes.is_empty() || !http_changes.is_empty() {
            self.generation += 1;
            info!(
                generation = self.generation,
                l4_changes = l4_changes.len(),
                http_changes = http_changes.len(),
                l4_services = self.l4_applied.len(),
                http_services = self.state.state().http.len(),
                "dataplanes updated"
            );
        }
        self.publish();
    }

    /// The service the L4 dataplane should have under `key`: a static one, else Marathon's with
    /// the backends mlb's own health checks fail left out.
    fn l4_wanted(&self, key: &L4ServiceKey) -> Option<L4Service> {
        if let Some(svc) = self.static_l4.get(key) {
            return Some(svc.clone());
        }
        let mut svc = self.state.state().l4.get(key)?.clone();
        if !self.l4_unhealthy.is_empty() {
            svc.backends.retain(|b| !self.l4_unhealthy.contains(&b.id));
        }
        Some(svc)
    }

    /// Applies L4 changes one service at a time so a service the dataplane refuses (e.g. a port
    /// it cannot bind) is retried at the next full pass and never blocks the others.
    fn apply_l4(&mut self, changes: &[L4Change]) {
        for change in changes {
            let key = match change {
                L4Change::Upsert(s) => s.key,
                L4Change::Remove(k) => *k,
            };
            match self.l4.apply(std::slice::from_ref(change)) {
                Ok(()) => {
                    self.l4_errors.remove(&key.to_string());
                    match change {
                        L4Change::Upsert(svc) => self.l4_applied.insert(key, svc.clone()),
                        L4Change::Remove(_) => self.l4_applied.remove(&key),
                    };
                }
                Err(e) => {
                    error!("{e}");
                    self.l4_errors.insert(key.to_string(), e.reason);
                    // Not recorded as applied: the next full pass tries again.
                    self.full_due = true;
                }
            }
        }
    }

    /// Logs each rejection and warning once (again only after it went away and came back),
    /// looking at the apps in `scope` only, or at every app.
    fn log_problems(&mut self, scope: Option<&BTreeSet<String>>) {
        let state = self.state.state();
        let in_scope = |app_id: &str| scope.is_none_or(|ids| ids.contains(app_id));
        let rejected = state
            .rejected
            .iter()
            .filter(|r| in_scope(&r.app_id))
            .map(|r| {
                let line = problem_line(&r.app_id, r.port_index, " not exposed: ", &r.reason);
                (&r.app_id, line, true)
            });
        let warnings = state
            .warnings
            .iter()
            .filter(|w| in_scope(&w.app_id))
            .map(|w| {
                let line = problem_line(&w.app_id, w.port_index, ": ", &w.message);
                (&w.app_id, line, false)
            });
        let mut now: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (app_id, line, is_error) in rejected.chain(warnings) {
            if !self.logged.get(app_id).is_some_and(|l| l.contains(&line)) {
                if is_error {
                    error!("{line}");
                } else {
                    warn!("{line}");
                }
            }
            now.entry(app_id.clone()).or_default().insert(line);
        }
        match scope {
            None => self.logged = now,
            Some(ids) => {
                for id in ids {
                    match now.remove(id) {
                        Some(lines) => self.logged.insert(id.clone(), lines),
                        None => self.logged.remove(id),
                    };
                }
            }
        }
    }

    fn publish(&self) {
        let mut l4_unhealthy: Vec<BackendId> = self.l4_unhealthy.iter().cloned().collect();
        l4_unhealthy.sort();
        let list = self.store.list();
        let state = self.state.state();
        self.status.store(Arc::new(Status {
            generation: self.generation,
            synced: self.synced,
            last_error: self.last_error.clone(),
            apps: list.apps.len() + list.invalid.len(),
            l4_services: state.l4.len() + self.static_l4.len(),
            http_services: state.http.len(),
            rejected: state.rejected.len(),
            full_passes: self.state.full_passes(),
            explanations: Arc::new(self.state.explanations().clone()),
            l4_unhealthy,
            l4_errors: self.l4_errors.clone(),
            http_errors: self.http_errors.clone(),
        }));
    }

    /// A copy of the desired state with the static services merged in.
    fn state_copy(&mut self) -> Arc<DesiredState> {
        if let Some(copy) = &self.state_copy {
            return copy.clone();
        }
        let mut state = self.state.state().clone();
        for (key, svc) in &self.static_l4 {
            state.l4.insert(*key, svc.clone());
        }
        let copy = Arc::new(state);
        self.state_copy = Some(copy.clone());
        copy
    }

    /// Runs until shutdown: takes Marathon updates, health changes and control messages, one
    /// at a time.
    pub async fn run(mut self, mut inputs: Inputs) {
        // Static services are served at once, before Marathon answers.
        self.recompute(SystemTime::now());
        let mut health_rx = self.l4_health.as_ref().map(|(_, rx)| rx.clone());
        loop {
            tokio::select! {
                update = recv_marathon(&mut inputs.marathon) => {
                    let Some(update) = update else {
                        inputs.marathon = None;
                        continue;
                    };
                    let mut changed = self.take_update(update);
                    // Updates that queued while the last one was applied are taken together.
                    while let Some(Ok(more)) = inputs.marathon.as_mut().map(|rx| rx.try_recv()) {
                        changed |= self.take_update(more);
                    }
                    if changed {
                        self.resolve_hosts().await;
                        self.recompute(SystemTime::now());
                    }
                }
                Some(msg) = inputs.control.recv() => match msg {
                    Control::StaticL4(services) => {
                        self.set_static_l4(services);
                        self.recompute(SystemTime::now());
                    }
                },
                Some(reply) = self.queries.1.recv() => {
                    let _ = reply.send(self.state_copy());
                }
                changed = health_changed(&mut health_rx) => {
                    match changed {
                        Some(set) => {
                            debug!(unhealthy = set.len(), "L4 health checks changed");
                            self.set_l4_unhealthy(set);
                        }
                        None => health_rx = None,
                    }
                }
                _ = inputs.shutdown.changed() => break,
            }
            if *inputs.shutdown.borrow() {
                break;
            }
        }
    }

    async fn resolve_hosts(&mut self) {
        let names = self.unresolved_hosts();
        if !names.is_empty() {
            self.add_host_addrs(resolve_hosts(names).await);
        }
    }
}

/// `app /x port index 1<infix><message>`: one log line per problem of an app (or one port).
fn problem_line(app_id: &str, port_index: Option<usize>, infix: &str, message: &str) -> String {
    let port = port_index
        .map(|i| format!(" port index {i}"))
        .unwrap_or_default();
    format!("app {app_id}{port}{infix}{message}")
}

/// Resolves agent host names (marathon-lb does the same with `socket.gethostbyname`), IPv4
/// first. A name that does not resolve is left out: its tasks stay unrouted, with that reason
/// in explain, and it is tried again at the next update.
pub async fn resolve_hosts(names: Vec<String>) -> Vec<(String, IpAddr)> {
    let mut found = Vec::new();
    for name in names {
        let lookup = tokio::net::lookup_host((name.clone(), 0));
        match tokio::time::timeout(Duration::from_secs(2), lookup).await {
            Ok(Ok(addrs)) => {
                let addrs: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                if let Some(ip) = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()) {
                    found.push((name, *ip));
                }
            }
            Ok(Err(e)) => warn!(host = %name, "agent host name does not resolve: {e}"),
            Err(_) => warn!(host = %name, "agent host name: DNS timed out"),
        }
    }
    found
}

async fn recv_marathon(rx: &mut Option<mpsc::Receiver<MarathonUpdate>>) -> Option<MarathonUpdate> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn health_changed(
    rx: &mut Option<watch::Receiver<Arc<UnhealthySet>>>,
) -> Option<Arc<UnhealthySet>> {
    match rx {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(rx.borrow_and_update().clone()),
            Err(_) => None,
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
