//! The controller: Marathon updates → model → typed changes → dataplanes, and the status the
//! admin API shows.
//!
//! One task owns it and handles one thing at a time, in order: a [`MarathonUpdate`] (the
//! watcher has already parsed the apps and coalesced event bursts), DNS answers for agent host
//! names, a change of the L4 active health checks, or a control message (SIGHUP re-read of
//! `--static-config`). After each, the model brings the [`DesiredState`] up to date —
//! incrementally when only some apps changed, with a full pass otherwise — and reports the keys
//! of the services that changed. The controller turns those keys into [`L4Change`]s and
//! [`HttpChange`]s and hands each [`Dataplane`] only its own. A failed Marathon read changes
//! nothing: the last good state stays.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, info_span, warn};

use crate::stats::live::{ErrorKind, live};
use crate::{
    dataplane::{Dataplane, DataplaneError, HttpChange, L4Change},
    health::{HealthChecker, UnhealthySet, targets_of_l4},
    marathon::{store::AppStore, task_status::TaskStatus, watch::MarathonUpdate},
    model::{
        self, DesiredState, L4Service, L4ServiceKey, ModelOptions,
        incremental::{Changed, ModelState},
    },
};

mod dns;
mod fingerprint;
mod problems;
mod status;

pub use dns::resolve_hosts;
pub use status::{StateQueries, Status};

use dns::{Answers, Resolver};
use fingerprint::Fingerprint;
use problems::ProblemLog;
use status::StateReply;

/// The L4 (TCP/UDP) dataplane as the controller holds it.
pub type L4Dataplane = Box<dyn Dataplane<Change = L4Change>>;
/// The HTTP dataplane (the proxy) as the controller holds it.
pub type HttpDataplane = Box<dyn Dataplane<Change = HttpChange>>;

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

/// What the model reads besides the model's own state.
struct ModelInputs {
    /// Marathon's apps as last read.
    store: AppStore,
    options: ModelOptions,
    /// `--static-config` services, served besides Marathon's.
    static_l4: BTreeMap<L4ServiceKey, L4Service>,
    /// The model's reserved ports before static services were added.
    base_reserved: BTreeSet<u16>,
}

/// What is due at the next recompute.
#[derive(Default)]
struct Pending {
    /// Apps changed since the last recompute.
    dirty: BTreeSet<String>,
    /// A full pass is due instead (a snapshot, new DNS answers, a refused service...).
    full: bool,
    /// What brought the changes, for the log: a task's state from its event applies at once,
    /// a re-read waits for the coalescing window and Marathon's answer.
    cause: &'static str,
    /// When the oldest event the changes reflect was read off the stream.
    since: Option<Instant>,
    /// Of the time since then, how long re-reads waited for Marathon's answers (the longest
    /// wait of the updates taken together).
    marathon: Duration,
}

/// The L4 dataplane and what the controller knows of it.
struct L4Side {
    dataplane: L4Dataplane,
    /// What the dataplane accepted, by service (static services included).
    applied: BTreeMap<L4ServiceKey, L4Service>,
    /// mlb's own active health checks of L4 backends, when enabled.
    health: Option<(HealthChecker, watch::Receiver<Arc<UnhealthySet>>)>,
    unhealthy: Arc<UnhealthySet>,
}

/// Copies of the desired state handed to the admin API on demand.
struct StateCopies {
    tx: mpsc::Sender<StateReply>,
    rx: mpsc::Receiver<StateReply>,
    /// The last copy made, dropped at every change.
    cached: Option<Arc<DesiredState>>,
}

/// The controller; see the module documentation.
pub struct Controller {
    inputs: ModelInputs,
    model: ModelState,
    pending: Pending,
    l4: L4Side,
    http: Option<HttpDataplane>,
    dns: Resolver,
    problems: ProblemLog,
    /// Of what the dataplanes were given, kept up to date per change.
    fingerprint: Fingerprint,
    /// Kept up to date in place, published as a copy by [`Controller::publish`].
    status: Status,
    published: Arc<ArcSwap<Status>>,
    copies: StateCopies,
}

impl Controller {
    /// A controller feeding `l4` and (when HTTP services are served) `http`.
    pub fn new(model: ModelOptions, l4: L4Dataplane, http: Option<HttpDataplane>) -> Self {
        let (tx, rx) = mpsc::channel(16);
        Controller {
            inputs: ModelInputs {
                store: AppStore::default(),
                base_reserved: model.reserved_ports.clone(),
                options: model,
                static_l4: BTreeMap::new(),
            },
            model: ModelState::default(),
            pending: Pending {
                full: true,
                ..Pending::default()
            },
            l4: L4Side {
                dataplane: l4,
                applied: BTreeMap::new(),
                health: None,
                unhealthy: Arc::default(),
            },
            http,
            dns: Resolver::default(),
            problems: ProblemLog::default(),
            fingerprint: Fingerprint::default(),
            status: Status::default(),
            published: Arc::default(),
            copies: StateCopies {
                tx,
                rx,
                cached: None,
            },
        }
    }

    /// Runs mlb's own active health checks against L4 backends (on `handle`'s runtime); a
    /// backend failing them leaves the Maglev table until it passes again.
    pub fn with_l4_health_checks(mut self, handle: tokio::runtime::Handle) -> Self {
        self.l4.health = Some(HealthChecker::new(handle));
        self
    }

    /// The Maglev table size of the L4 dataplane (`--maglev-table-size`), folded into the
    /// status's fingerprint: instances with other sizes build other tables.
    pub fn with_maglev_table_size(mut self, size: u32) -> Self {
        self.fingerprint.set_table_size(size);
        self
    }

    /// Static services served besides Marathon's (a Marathon service on the same port and
    /// protocol is refused, with a reason in `mlb explain`).
    pub fn set_static_l4(&mut self, services: BTreeMap<L4ServiceKey, L4Service>) {
        let inputs = &mut self.inputs;
        inputs.options.reserved_ports = inputs
            .base_reserved
            .iter()
            .copied()
            .chain(services.keys().map(|k| k.port))
            .collect();
        inputs.static_l4 = services;
        // The reserved ports changed: every app may be affected.
        self.pending.full = true;
    }

    /// The status the admin API reads (updated after every change).
    pub fn status(&self) -> Arc<ArcSwap<Status>> {
        self.published.clone()
    }

    /// A handle to ask the running controller for the desired state.
    pub fn state_queries(&self) -> StateQueries {
        StateQueries(self.copies.tx.clone())
    }

    /// The desired state the model computed (Marathon's services; static ones are merged when
    /// applied).
    pub fn state(&self) -> &DesiredState {
        self.model.state()
    }

    /// Takes one Marathon update into the app store. Returns whether the apps changed (a
    /// failed read changes nothing and is only recorded).
    pub fn take_update(&mut self, update: MarathonUpdate) -> bool {
        match update {
            MarathonUpdate::Snapshot(apps) => {
                debug!(apps = apps.apps.len(), "full read of Marathon's apps");
                self.inputs.store.replace_all(apps);
                self.pending.full = true;
                self.status.synced = true;
                self.status.last_error = None;
                true
            }
            MarathonUpdate::Apps {
                changed, removed, ..
            } => {
                debug!(changed = ?changed.ids().collect::<Vec<_>>(), ?removed, "apps re-read");
                let ids = changed.ids().chain(removed.iter().map(String::as_str));
                self.pending.dirty.extend(ids.map(str::to_owned));
                self.inputs.store.update(changed, &removed);
                self.status.last_error = None;
                true
            }
            MarathonUpdate::TaskStatuses { statuses, .. } => {
                let apps = self.inputs.store.apply_task_statuses(&statuses);
                let changed = !apps.is_empty();
                self.pending.dirty.extend(apps);
                changed
            }
            MarathonUpdate::SyncFailed { error } => {
                live().error(ErrorKind::MarathonRead);
                warn!(%error, "Marathon read failed; keeping the last good state");
                self.status.last_error = Some(error);
                self.publish();
                false
            }
        }
    }

    /// Agent host names that need a DNS answer: of every app before a full pass, else of the
    /// changed apps only (parsing every task's host at each event would cost more than the
    /// event).
    pub fn unresolved_hosts(&self) -> Vec<String> {
        let store = &self.inputs.store;
        let hosts = if self.pending.full {
            model::hosts_to_resolve(&store.list().apps)
        } else {
            model::hosts_to_resolve(store.apps_named(&self.pending.dirty))
        };
        let known = &self.inputs.options.host_addrs;
        hosts
            .into_iter()
            .filter(|h| !known.contains_key(h))
            .collect()
    }

    /// Records DNS answers for agent host names (a new one makes the next pass a full one).
    pub fn add_host_addrs(&mut self, addrs: impl IntoIterator<Item = (String, IpAddr)>) {
        let host_addrs = &mut self.inputs.options.host_addrs;
        let before = host_addrs.len();
        host_addrs.extend(addrs);
        if host_addrs.len() != before {
            self.pending.full = true;
        }
    }

    /// Brings the desired state up to date with the apps (incrementally when only some apps
    /// changed) and applies what changed.
    pub fn recompute(&mut self, now: SystemTime) {
        let dirty = std::mem::take(&mut self.pending.dirty);
        let full = std::mem::take(&mut self.pending.full);
        let span = info_span!("recompute", full, dirty = dirty.len());
        let _enter = span.enter();
        let list = self.inputs.store.list();
        let started = Instant::now();
        let changed = if full {
            self.model.full(list, &self.inputs.options, now)
        } else {
            let subset = self.inputs.store.subset(&dirty);
            self.model
                .update(list, subset, &dirty, &self.inputs.options, now)
        };
        let model_time = started.elapsed();
        if full {
            // The pass's scratch (and the previous state) go before the dataplanes are built.
            crate::stats::memory::release_freed();
            info!(
                rss_mb = crate::stats::memory::rss_mb(),
                "full model pass done"
            );
        }
        // After an incremental step only the changed apps' problems can have moved.
        let scope = (!changed.full).then_some(&dirty);
        self.problems.log(self.model.state(), scope);
        if !changed.full && changed.l4.is_empty() && changed.http.is_empty() {
            // Only explanations or rejections may have moved.
            self.publish();
            return;
        }
        self.copies.cached = None;
        self.retarget_l4_health_checks(&changed);
        self.apply(&changed, model_time);
        if full || dirty.len() >= crate::stats::memory::BIG_UPDATE {
            // The previous state and the passes' scratch, freed: resident no longer. After a
            // burst's big step too (hundreds of apps recompiled), not after each small event.
            crate::stats::memory::release_freed();
        }
    }

    /// Gives the L4 health checker the backends of every checked service, when one may have
    /// moved: walking every backend of every service at each task event would cost more than
    /// the event.
    fn retarget_l4_health_checks(&mut self, changed: &Changed) {
        let Some((checker, _)) = &mut self.l4.health else {
            return;
        };
        let l4 = &self.model.state().l4;
        let checked = |k: &L4ServiceKey| {
            l4.get(k).is_some_and(|s| s.health_check.is_some())
                || self
                    .l4
                    .applied
                    .get(k)
                    .is_some_and(|s| s.health_check.is_some())
        };
        if changed.full || changed.l4.iter().any(checked) {
            let services = l4.values().chain(self.inputs.static_l4.values());
            checker.set_targets(targets_of_l4(services));
        }
    }

    /// The L4 active health checks changed: applies the new rotation.
    pub fn set_l4_unhealthy(&mut self, unhealthy: Arc<UnhealthySet>) {
        self.l4.unhealthy = unhealthy;
        let changed = Changed {
            full: true,
            ..Changed::default()
        };
        self.apply(&changed, Duration::ZERO);
    }

    /// Hands each dataplane what changed. `model_time` (what the model took to find the
    /// changes) is logged beside the time of each dataplane's update.
    fn apply(&mut self, changed: &Changed, model_time: Duration) {
        let started = Instant::now();
        let l4_changes = self.l4_changes(changed);
        let http_changes = self.http_changes(changed);
        let model_time = model_time + started.elapsed();
        if l4_changes.is_empty() && http_changes.is_empty() {
            self.publish();
            return;
        }
        self.status.generation += 1;
        let span = info_span!("apply", generation = self.status.generation);
        let _enter = span.enter();
        let applied = self.apply_both(&l4_changes, &http_changes);
        let started = Instant::now();
        self.record_l4(&l4_changes, applied.l4_refused);
        let l4_time = applied.l4_time + started.elapsed();
        let started = Instant::now();
        self.publish();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // mlb's own share of an event's latency: from reading it off the stream to now.
        let event_age = self.pending.since.map(|since| since.elapsed());
        info!(
            generation = self.status.generation,
            l4_changes = l4_changes.len(),
            http_changes = http_changes.len(),
            l4_services = self.l4.applied.len(),
            http_services = self.model.state().http.len(),
            model_ms = ms(model_time),
            l4_ms = ms(l4_time),
            http_ms = ms(applied.http_time),
            fingerprint_ms = ms(applied.fingerprint_time),
            status_ms = ms(started.elapsed()),
            event_ms = event_age.map(ms),
            marathon_ms = (!self.pending.marathon.is_zero()).then(|| ms(self.pending.marathon)),
            cause = std::mem::take(&mut self.pending.cause),
            rss_mb = crate::stats::memory::rss_mb_if_big(l4_changes.len() + http_changes.len()),
            "dataplanes updated"
        );
    }

    /// Applies the L4 and the HTTP changes: the proxy's on this thread, the L4 dataplane's and
    /// the fingerprint of the HTTP changes on a second one when there are many (a full sync of
    /// thousands of services: they share nothing, and each side takes a while).
    fn apply_both(&mut self, l4_changes: &[L4Change], http_changes: &[HttpChange]) -> Applied {
        let l4 = &mut self.l4.dataplane;
        let fingerprint = &mut self.fingerprint;
        let mut side = move || {
            let started = Instant::now();
            let refused = if l4_changes.is_empty() {
                BTreeMap::new()
            } else {
                refused_l4(l4.apply(l4_changes))
            };
            let l4_time = started.elapsed();
            let started = Instant::now();
            for change in http_changes {
                let svc = match change {
                    HttpChange::Upsert(svc) => Some(&**svc),
                    HttpChange::Remove(_) => None,
                };
                fingerprint.http(change.key(), svc);
            }
            (refused, l4_time, started.elapsed())
        };
        let mut http = HttpSide {
            dataplane: self.http.as_mut(),
            errors: &mut self.status.http_errors,
        };
        if l4_changes.len() + http_changes.len() < PARALLEL_APPLY {
            let (l4_refused, l4_time, fingerprint_time) = side();
            let http_time = http.apply(http_changes);
            return Applied {
                l4_refused,
                l4_time,
                fingerprint_time,
                http_time,
            };
        }
        // The second thread gets this one's runtime and span: the L4 dataplane may open
        // listeners, and logs.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let span = tracing::Span::current();
        std::thread::scope(|scope| {
            let side = scope.spawn(move || {
                let _runtime = runtime.as_ref().map(tokio::runtime::Handle::enter);
                span.in_scope(side)
            });
            let http_time = http.apply(http_changes);
            let (l4_refused, l4_time, fingerprint_time) =
                side.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            Applied {
                l4_refused,
                l4_time,
                fingerprint_time,
                http_time,
            }
        })
    }

    /// Records what the L4 dataplane accepted. A service it refused (e.g. a port it cannot
    /// bind) is not recorded as applied and is retried at the next full pass; it never blocks
    /// the others.
    fn record_l4(&mut self, changes: &[L4Change], refused: BTreeMap<L4ServiceKey, DataplaneError>) {
        for change in changes {
            let key = change.key();
            if let Some(e) = refused.get(&key) {
                live().error(ErrorKind::L4Dataplane);
                error!("{e}");
                let reason = e.cause().to_string();
                self.status.l4_errors.insert(key.to_string(), reason);
                self.pending.full = true;
                continue;
            }
            self.status.l4_errors.remove(&key.to_string());
            match change {
                L4Change::Upsert(svc) => self.l4.applied.insert(key, svc.clone()),
                L4Change::Remove(_) => self.l4.applied.remove(&key),
            };
            self.fingerprint.l4(key, self.l4.applied.get(&key));
        }
    }

    /// The L4 changes that bring the dataplane to the wanted services: of the keys the model
    /// changed, or of every key after a full pass (the rotation or static services moved).
    fn l4_changes(&self, changed: &Changed) -> Vec<L4Change> {
        let keys: BTreeSet<L4ServiceKey> = if changed.full {
            let state = self.model.state();
            let applied = self.l4.applied.keys();
            let wanted = state.l4.keys().chain(self.inputs.static_l4.keys());
            applied.chain(wanted).copied().collect()
        } else {
            changed.l4.clone()
        };
        keys.into_iter()
            .filter_map(
                |key| match (self.l4_wanted(&key), self.l4.applied.get(&key)) {
                    (Some(wanted), applied) if applied != Some(&wanted) => {
                        Some(L4Change::Upsert(wanted))
                    }
                    (None, Some(_)) => Some(L4Change::Remove(key)),
                    _ => None,
                },
            )
            .collect()
    }

    /// The HTTP changes: the proxy keeps what it serves, it gets the changed keys as the model
    /// saw them.
    fn http_changes(&self, changed: &Changed) -> Vec<HttpChange> {
        if self.http.is_none() {
            return Vec::new();
        }
        let state = self.model.state();
        let change = |key: &model::HttpServiceKey| match state.http.get(key) {
            Some(svc) => HttpChange::Upsert(svc.clone()),
            None => HttpChange::Remove(key.clone()),
        };
        changed.http.iter().map(change).collect()
    }

    /// The service the L4 dataplane should have under `key`: a static one, else Marathon's with
    /// the backends mlb's own health checks fail left out.
    fn l4_wanted(&self, key: &L4ServiceKey) -> Option<L4Service> {
        if let Some(svc) = self.inputs.static_l4.get(key) {
            return Some(svc.clone());
        }
        let mut svc = self.model.state().l4.get(key)?.clone();
        if !self.l4.unhealthy.is_empty() {
            svc.backends.retain(|b| !self.l4.unhealthy.contains(&b.id));
        }
        Some(svc)
    }

    /// Publishes a copy of the status with the counts of the current state.
    fn publish(&mut self) {
        let mut l4_unhealthy: Vec<_> = self.l4.unhealthy.iter().cloned().collect();
        l4_unhealthy.sort();
        let list = self.inputs.store.list();
        let state = self.model.state();
        let status = &mut self.status;
        status.apps = list.apps.len() + list.invalid.len();
        status.l4_services = state.l4.len() + self.inputs.static_l4.len();
        status.http_services = state.http.len();
        status.rejected = state.rejected.len();
        status.full_passes = self.model.full_passes();
        status.explanations = self.model.explanations().clone();
        status.l4_unhealthy = l4_unhealthy;
        status.fingerprint = self.fingerprint.value();
        self.published.store(Arc::new(status.clone()));
    }

    /// A copy of the desired state with the static services merged in.
    fn state_copy(&mut self) -> Arc<DesiredState> {
        if let Some(copy) = &self.copies.cached {
            return copy.clone();
        }
        let mut state = self.model.state().clone();
        for (key, svc) in &self.inputs.static_l4 {
            state.l4.insert(*key, svc.clone());
        }
        let copy = Arc::new(state);
        self.copies.cached = Some(copy.clone());
        copy
    }

    /// Takes a Marathon update and every one queued behind it, starts DNS lookups for new agent
    /// host names (their answers come later, on their own) and recomputes: the task states
    /// first, in a step of their own, then the rest. In a burst, parts of hundreds of re-read
    /// apps queue beside the task states; a task being killed leaves the rotation without
    /// waiting for them to be recomputed.
    fn on_marathon(&mut self, first: MarathonUpdate, rx: &mut mpsc::Receiver<MarathonUpdate>) {
        // Bounded by the channel's capacity.
        let mut queued = vec![first];
        while let Ok(more) = rx.try_recv() {
            queued.push(more);
        }
        let (statuses, rest): (Vec<_>, Vec<_>) = queued
            .into_iter()
            .partition(|u| matches!(u, MarathonUpdate::TaskStatuses { .. }));
        if statuses.is_empty() || rest.is_empty() {
            self.take_batch(statuses.into_iter().chain(rest), &[]);
            return;
        }
        // A re-read queued ahead of a state may bring the task the state is about (a task
        // launched): the states are applied again on top of the rest (a no-op for the others).
        let again: Vec<TaskStatus> = statuses
            .iter()
            .flat_map(|u| match u {
                MarathonUpdate::TaskStatuses { statuses, .. } => statuses.clone(),
                _ => Vec::new(),
            })
            .collect();
        self.take_batch(statuses, &[]);
        self.take_batch(rest, &again);
    }

    /// Takes `updates` into the app store, then the task states `again`, and recomputes once
    /// for all of them.
    fn take_batch(
        &mut self,
        updates: impl IntoIterator<Item = MarathonUpdate>,
        again: &[TaskStatus],
    ) {
        let mut changed = false;
        let mut cause = None;
        for update in updates {
            cause.get_or_insert(update.cause());
            self.pending.since = earliest(self.pending.since, update.since());
            self.pending.marathon = self.pending.marathon.max(update.marathon_wait());
            changed |= self.take_update(update);
        }
        let patched = self.inputs.store.apply_task_statuses(again);
        changed |= !patched.is_empty();
        self.pending.dirty.extend(patched);
        self.pending.cause = cause.unwrap_or_default();
        if changed {
            self.dns.start(self.unresolved_hosts());
            self.recompute(SystemTime::now());
        }
        if let Some(since) = self.pending.since.take() {
            live().event_applied(since.elapsed());
        }
        self.pending.marathon = Duration::ZERO;
    }

    /// DNS answers arrived: a pass with the new addresses when there are any.
    fn on_dns(&mut self, answers: Answers) {
        self.dns.finish(&answers);
        self.add_host_addrs(answers.found);
        if self.pending.full {
            self.recompute(SystemTime::now());
        }
    }

    /// Runs until shutdown: takes Marathon updates, DNS answers, health changes and control
    /// messages, one at a time.
    pub async fn run(mut self, mut inputs: Inputs) {
        // Static services are served at once, before Marathon answers.
        self.recompute(SystemTime::now());
        let mut health_rx = self.l4.health.as_ref().map(|(_, rx)| rx.clone());
        loop {
            tokio::select! {
                update = recv_marathon(&mut inputs.marathon) => match update {
                    Some(update) => {
                        if let Some(rx) = inputs.marathon.as_mut() {
                            self.on_marathon(update, rx);
                        }
                    }
                    None => inputs.marathon = None,
                },
                Some(answers) = self.dns.rx.recv() => self.on_dns(answers),
                Some(msg) = inputs.control.recv() => match msg {
                    Control::StaticL4(services) => {
                        self.set_static_l4(services);
                        self.recompute(SystemTime::now());
                    }
                },
                Some(reply) = self.copies.rx.recv() => {
                    let _ = reply.send(self.state_copy());
                }
                changed = health_changed(&mut health_rx) => match changed {
                    Some(set) => {
                        debug!(unhealthy = set.len(), "L4 health checks changed");
                        self.set_l4_unhealthy(set);
                    }
                    None => health_rx = None,
                },
                _ = inputs.shutdown.changed() => break,
            }
            if *inputs.shutdown.borrow() {
                break;
            }
        }
    }
}

/// The earlier of two optional instants.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The services named by the L4 dataplane's errors, by key.
fn refused_l4(result: Result<(), Vec<DataplaneError>>) -> BTreeMap<L4ServiceKey, DataplaneError> {
    let errors = result.err().unwrap_or_default().into_iter();
    errors
        .filter_map(|e| e.l4_service().map(|key| (key, e)))
        .collect()
}

/// Changes from this many on are applied on two threads (see [`Controller::apply_both`]):
/// below, a thread costs more than it saves.
const PARALLEL_APPLY: usize = 64;

/// What [`Controller::apply_both`] did.
struct Applied {
    /// The services the L4 dataplane refused.
    l4_refused: BTreeMap<L4ServiceKey, DataplaneError>,
    l4_time: Duration,
    fingerprint_time: Duration,
    http_time: Duration,
}

/// What applying HTTP changes touches: the proxy and the status's errors.
struct HttpSide<'a> {
    dataplane: Option<&'a mut HttpDataplane>,
    errors: &'a mut Vec<String>,
}

impl HttpSide<'_> {
    /// Applies `changes` to the proxy; returns how long it took.
    fn apply(&mut self, changes: &[HttpChange]) -> Duration {
        let started = Instant::now();
        if let Some(http) = self.dataplane.as_mut()
            && !changes.is_empty()
        {
            let problems = http.apply(changes).err().unwrap_or_default();
            if !problems.is_empty() {
                live().error(ErrorKind::HttpDataplane);
            }
            *self.errors = problems.iter().map(ToString::to_string).collect();
        }
        started.elapsed()
    }
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
