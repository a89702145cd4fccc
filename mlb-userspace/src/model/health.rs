//! Which tasks are routable: task state, readiness during deployments, Marathon health (with a
//! last-known-health cache), draining.
//!
//! The cache is plain data passed in and returned: Marathon forgets every health result on a
//! leader failover (marathon#3419, #4220), and without the cache every backend of every
//! health-checked app would vanish until the new leader re-checks them (marathon-lb PR #148).
use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::{
    marathon::types::{App, Task},
    model::BackendState,
};

/// Marathon's health verdict on a task, as mlb uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthVerdict {
    /// The app defines no health checks: nothing to gate on.
    NotChecked,
    /// A current result says alive.
    Healthy,
    /// Current results exist, none alive.
    Unhealthy,
    /// No current result (e.g. after a Marathon failover); the last known verdict was healthy.
    CachedHealthy,
    /// No current result; the last known verdict was unhealthy.
    CachedUnhealthy,
    /// No result and nothing cached (a new task not checked yet).
    Unknown,
}

impl std::fmt::Display for HealthVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HealthVerdict::NotChecked => "no health checks",
            HealthVerdict::Healthy => "healthy",
            HealthVerdict::Unhealthy => "unhealthy",
            HealthVerdict::CachedHealthy => "healthy (last known; Marathon reports no result now)",
            HealthVerdict::CachedUnhealthy => {
                "unhealthy (last known; Marathon reports no result now)"
            }
            HealthVerdict::Unknown => "not checked by Marathon yet",
        })
    }
}

impl HealthVerdict {
    /// Whether `--health-check` lets the task take traffic.
    pub fn passes(self) -> bool {
        matches!(
            self,
            HealthVerdict::NotChecked | HealthVerdict::Healthy | HealthVerdict::CachedHealthy
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CachedHealth {
    alive: bool,
    /// Last snapshot that contained the task.
    seen: SystemTime,
}

/// Last known Marathon health per task id. Entries of tasks absent from snapshots for longer
/// than the TTL are dropped; beyond the capacity, the least recently seen go first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthCache {
    entries: BTreeMap<String, CachedHealth>,
}

impl HealthCache {
    /// An empty cache (first start: new tasks are unknown until Marathon reports them).
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of tasks remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The last known verdict for a task (`true`: alive).
    pub fn last_known(&self, task_id: &str) -> Option<bool> {
        self.entries.get(task_id).map(|e| e.alive)
    }
}

/// Current verdict from the task's own results: `Some(alive)` when it has at least one result
/// (alive if **any** result is alive, as marathon-lb), `None` when it has none. An empty
/// `healthCheckResults: []` counts as "no result", like an absent one (see
/// docs/compatibility.md: marathon-lb dropped such tasks even when it knew them healthy).
fn current_verdict(task: &Task) -> Option<bool> {
    match &task.health_check_results {
        Some(results) if !results.is_empty() => Some(results.iter().any(|r| r.alive)),
        _ => None,
    }
}

/// The task's health verdict against the app's checks and the cache.
pub fn task_health(app: &App, task: &Task, cache: &HealthCache) -> HealthVerdict {
    if app.health_checks.is_empty() {
        return HealthVerdict::NotChecked;
    }
    match current_verdict(task) {
        Some(true) => HealthVerdict::Healthy,
        Some(false) => HealthVerdict::Unhealthy,
        None => match cache.last_known(&task.id) {
            Some(true) => HealthVerdict::CachedHealthy,
            Some(false) => HealthVerdict::CachedUnhealthy,
            None => HealthVerdict::Unknown,
        },
    }
}

/// The cache after observing `apps` at `now`: current results are recorded, tasks without
/// results keep their entry (refreshed), and stale or excess entries are dropped.
pub fn update_cache<'a>(
    cache: &HealthCache,
    apps: impl IntoIterator<Item = &'a App>,
    now: SystemTime,
    ttl: Duration,
    capacity: usize,
) -> HealthCache {
    let mut next = cache.clone();
    for app in apps.into_iter().filter(|a| !a.health_checks.is_empty()) {
        for task in &app.tasks {
            match current_verdict(task) {
                Some(alive) => {
                    next.entries
                        .insert(task.id.clone(), CachedHealth { alive, seen: now });
                }
                None => {
                    if let Some(e) = next.entries.get_mut(&task.id) {
                        e.seen = now;
                    }
                }
            }
        }
    }
    next.entries
        .retain(|_, e| now.duration_since(e.seen).map_or(true, |age| age <= ttl));
    if next.entries.len() > capacity {
        let mut by_age: Vec<(SystemTime, String)> = next
            .entries
            .iter()
            .map(|(id, e)| (e.seen, id.clone()))
            .collect();
        by_age.sort();
        let excess = next.entries.len() - capacity;
        for (_, id) in by_age.into_iter().take(excess) {
            next.entries.remove(&id);
        }
    }
    next
}

/// A task state that takes no traffic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaskStateError {
    /// Any Mesos state but `TASK_RUNNING` and `TASK_KILLING` (staging, lost, failed…).
    #[error("state {0}")]
    NotRunning(String),
    #[error("no task state reported")]
    Missing,
}

/// Whether the task's state lets it take traffic: `TASK_RUNNING` is active, `TASK_KILLING`
/// (a kill grace period in progress) keeps its established connections but takes no new ones;
/// everything else is excluded, with the state as the reason.
pub fn task_state(task: &Task) -> Result<BackendState, TaskStateError> {
    match task.state.as_deref() {
        Some("TASK_RUNNING") => Ok(BackendState::Active),
        Some("TASK_KILLING") => Ok(BackendState::Draining),
        Some(other) => Err(TaskStateError::NotRunning(other.to_owned())),
        None => Err(TaskStateError::Missing),
    }
}

/// A task of a deployment in progress whose readiness check does not pass yet.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("readiness check {check} not ready yet (deployment in progress)")]
pub struct NotReady {
    /// The readiness check's name (`?` when Marathon gives none).
    pub check: String,
}

/// During a deployment (`embed=apps.readiness`), a task whose readiness check says not ready
/// takes no traffic yet.
pub fn task_readiness(app: &App, task: &Task) -> Result<(), NotReady> {
    match app
        .readiness_check_results
        .iter()
        .find(|r| r.task_id == task.id && !r.ready)
    {
        Some(r) => Err(NotReady {
            check: r.name.as_deref().unwrap_or("?").to_owned(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::marathon::types::parse_app;

    fn app(tasks: serde_json::Value) -> App {
        parse_app(&json!({"id": "/a", "healthChecks": [{"protocol": "HTTP"}], "tasks": tasks}))
            .unwrap()
    }

    const TTL: Duration = Duration::from_secs(600);

    #[test]
    fn cache_keeps_last_known_health_when_results_vanish() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let before = app(json!([
            {"id": "up", "healthCheckResults": [{"alive": true}]},
            {"id": "down", "healthCheckResults": [{"alive": false}]}]));
        let cache = update_cache(
            &HealthCache::new(),
            std::slice::from_ref(&before),
            t0,
            TTL,
            100,
        );
        assert_eq!(cache.len(), 2);
        // Failover: no results at all (absent or empty list), plus a brand-new task.
        let after = app(json!([
            {"id": "up"}, {"id": "down", "healthCheckResults": []}, {"id": "new"}]));
        let verdicts: Vec<_> = after
            .tasks
            .iter()
            .map(|t| task_health(&after, t, &cache))
            .collect();
        assert_eq!(
            verdicts,
            [
                HealthVerdict::CachedHealthy,
                HealthVerdict::CachedUnhealthy,
                HealthVerdict::Unknown
            ]
        );
        assert!(verdicts[0].passes() && !verdicts[1].passes() && !verdicts[2].passes());
        // Seeing the tasks again refreshes them: they survive past the first TTL.
        let t1 = t0 + TTL / 2;
        let cache = update_cache(&cache, std::slice::from_ref(&after), t1, TTL, 100);
        let cache = update_cache(
            &cache,
            &[after],
            t1 + TTL - Duration::from_secs(1),
            TTL,
            100,
        );
        assert_eq!(cache.last_known("up"), Some(true));
    }

    #[test]
    fn cache_drops_stale_and_excess_entries() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let a = app(json!([{"id": "a", "healthCheckResults": [{"alive": true}]}]));
        let b = app(json!([{"id": "b", "healthCheckResults": [{"alive": true}]}]));
        let cache = update_cache(&HealthCache::new(), &[a], t0, TTL, 1);
        let cache = update_cache(
            &cache,
            std::slice::from_ref(&b),
            t0 + Duration::from_secs(1),
            TTL,
            1,
        );
        assert_eq!(
            (cache.last_known("a"), cache.last_known("b")),
            (None, Some(true))
        );
        let cache = update_cache(&cache, &[], t0 + TTL * 2, TTL, 10);
        assert!(cache.is_empty());
    }

    #[test]
    fn any_alive_result_is_healthy_and_apps_without_checks_are_not_gated() {
        let a =
            app(json!([{"id": "x", "healthCheckResults": [{"alive": false}, {"alive": true}]}]));
        assert_eq!(
            task_health(&a, &a.tasks[0], &HealthCache::new()),
            HealthVerdict::Healthy
        );
        let plain = parse_app(&json!({"id": "/p", "tasks": [{"id": "y"}]})).unwrap();
        assert_eq!(
            task_health(&plain, &plain.tasks[0], &HealthCache::new()),
            HealthVerdict::NotChecked
        );
    }

    #[test]
    fn only_running_and_killing_tasks_take_part() {
        let state = |s: Option<&str>| {
            task_state(&Task {
                id: "t".into(),
                state: s.map(Into::into),
                ..Default::default()
            })
        };
        assert_eq!(state(Some("TASK_RUNNING")), Ok(BackendState::Active));
        assert_eq!(state(Some("TASK_KILLING")), Ok(BackendState::Draining));
        for s in [
            "TASK_STAGING",
            "TASK_STARTING",
            "TASK_LOST",
            "TASK_UNREACHABLE",
            "TASK_FAILED",
        ] {
            assert_eq!(
                state(Some(s)).map_err(|e| e.to_string()),
                Err(format!("state {s}"))
            );
        }
        assert_eq!(state(None), Err(TaskStateError::Missing));
    }

    #[test]
    fn readiness_false_excludes_the_task() {
        let a = parse_app(&json!({"id": "/a", "tasks": [{"id": "t1"}, {"id": "t2"}],
            "readinessCheckResults": [{"name": "ready", "taskId": "t1", "ready": false},
                                      {"name": "ready", "taskId": "t2", "ready": true}]}))
        .unwrap();
        assert_eq!(
            task_readiness(&a, &a.tasks[0]).unwrap_err().to_string(),
            "readiness check ready not ready yet (deployment in progress)"
        );
        assert!(task_readiness(&a, &a.tasks[1]).is_ok());
    }
}
