//! The check loops and the unhealthy set they publish.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{runtime::Handle, sync::watch, task::JoinHandle};
use tracing::{info, warn};

use super::{HealthTarget, UnhealthySet, probe::probe};
use crate::model::BackendId;

/// Runs one check loop per target; publishes the unhealthy set on a `watch` channel.
pub struct HealthChecker {
    handle: Handle,
    running: HashMap<BackendId, (HealthTarget, JoinHandle<()>)>,
    state: Arc<Mutex<UnhealthySet>>,
    tx: Arc<watch::Sender<Arc<UnhealthySet>>>,
}

impl HealthChecker {
    /// A checker with no targets, spawning its checks on `handle`, and the receiver of the
    /// unhealthy set (empty at first).
    pub fn new(handle: Handle) -> (HealthChecker, watch::Receiver<Arc<UnhealthySet>>) {
        let (tx, rx) = watch::channel(Arc::new(UnhealthySet::new()));
        (
            HealthChecker {
                handle,
                running: HashMap::new(),
                state: Arc::default(),
                tx: Arc::new(tx),
            },
            rx,
        )
    }

    /// A new receiver of the unhealthy set.
    pub fn subscribe(&self) -> watch::Receiver<Arc<UnhealthySet>> {
        self.tx.subscribe()
    }

    /// Checks exactly `targets` from now on: new targets start (healthy), removed ones stop and
    /// leave the unhealthy set, changed ones (address or check) restart. Unchanged targets keep
    /// their state and schedule.
    pub fn set_targets(&mut self, targets: impl IntoIterator<Item = HealthTarget>) {
        let wanted = first_by_id(targets);
        let gone: Vec<BackendId> = self
            .running
            .keys()
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect();
        self.update(gone, wanted);
    }

    /// The targeted form of [`HealthChecker::set_targets`], for a dataplane that knows what
    /// changed: stops checking `removed` (unless `added` has them again) and checks `added` from
    /// now on (an `added` target already checked as it is keeps its state and schedule; one
    /// whose address or check changed restarts). Costs only what is named, whatever the number
    /// of targets checked.
    pub fn update_targets(
        &mut self,
        removed: impl IntoIterator<Item = BackendId>,
        added: impl IntoIterator<Item = HealthTarget>,
    ) {
        let added = first_by_id(added);
        let removed: Vec<BackendId> = removed
            .into_iter()
            .filter(|id| !added.contains_key(id))
            .collect();
        self.update(removed, added);
    }

    fn update(&mut self, removed: Vec<BackendId>, added: HashMap<BackendId, HealthTarget>) {
        let mut forget = Vec::new();
        for id in removed {
            if let Some((_, task)) = self.running.remove(&id) {
                task.abort();
                forget.push(id);
            }
        }
        let mut start = Vec::new();
        for (id, target) in added {
            match self.running.get(&id) {
                Some((running, _)) if *running == target => {}
                Some(_) => {
                    if let Some((_, task)) = self.running.remove(&id) {
                        task.abort();
                    }
                    forget.push(id);
                    start.push(target);
                }
                None => start.push(target),
            }
        }
        if !forget.is_empty() {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let before = state.len();
            for id in &forget {
                state.remove(id);
            }
            if state.len() != before {
                self.tx.send_replace(Arc::new(state.clone()));
            }
        }
        for target in start {
            let task = self.handle.spawn(check_loop(
                target.clone(),
                self.state.clone(),
                self.tx.clone(),
            ));
            self.running.insert(target.id.clone(), (target, task));
        }
    }
}

/// `targets` by id; the first of the same id wins.
fn first_by_id(
    targets: impl IntoIterator<Item = HealthTarget>,
) -> HashMap<BackendId, HealthTarget> {
    let mut by_id: HashMap<BackendId, HealthTarget> = HashMap::new();
    for t in targets {
        by_id.entry(t.id.clone()).or_insert(t);
    }
    by_id
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        for (_, task) in self.running.values() {
            task.abort();
        }
    }
}

async fn check_loop(
    target: HealthTarget,
    state: Arc<Mutex<UnhealthySet>>,
    tx: Arc<watch::Sender<Arc<UnhealthySet>>>,
) {
    let fall = target.check.max_consecutive_failures.max(1);
    let interval = target.check.interval.max(Duration::from_millis(50));
    let mut failures = 0u32;
    let mut down = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = probe(&target).await;
        let change = match result {
            Ok(()) => {
                failures = 0;
                down.then_some(false)
            }
            Err(why) => {
                crate::stats::live::live()
                    .health_check_failed(crate::stats::server_name(target.addr));
                failures = failures.saturating_add(1);
                (!down && failures >= fall).then(|| {
                    warn!(backend = %target.id, addr = %target.addr, %why, failures, "backend failed its health check; out of rotation");
                    true
                })
            }
        };
        if let Some(now_down) = change {
            down = now_down;
            if !now_down {
                info!(backend = %target.id, "backend passes its health check again; back in rotation");
            }
            let mut set = state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if now_down {
                set.insert(target.id.clone());
            } else {
                set.remove(&target.id);
            }
            tx.send_replace(Arc::new(set.clone()));
        }
    }
}
