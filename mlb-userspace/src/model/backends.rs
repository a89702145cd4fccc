//! The backends of one service port: the app's tasks that are running, ready, healthy enough
//! (`--health-check`), addressable and serve the port. Every other task is kept with a typed
//! [`TaskRejection`] for `mlb explain`.
use std::net::SocketAddr;

use serde::Serialize;

use crate::{
    marathon::types::Task,
    model::{
        Backend, BackendId, BackendState, ModelOptions,
        deployment::EffectiveApp,
        explain::{BackendExplanation, TaskExclusion},
        health::{
            HealthCache, HealthVerdict, NotReady, TaskStateError, task_health, task_readiness,
            task_state,
        },
        port_steps::NotExposed,
        ports::{NetworkingMode, ServicePortSpec, TaskAddressError, task_ip, task_ports},
    },
};

/// Why a task takes no part in a service port. Shown (as its text) by `mlb explain` and the
/// admin API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaskRejection {
    #[error(transparent)]
    State(#[from] TaskStateError),
    #[error(transparent)]
    NotReady(#[from] NotReady),
    /// `--health-check` is on and Marathon does not (or no longer) say the task is healthy.
    #[error("not healthy in Marathon: {0}")]
    Unhealthy(HealthVerdict),
    #[error(transparent)]
    Address(#[from] TaskAddressError),
    /// The task's port list has nothing (or 0) at the service port's position.
    #[error("task has no port at index {index} (ports {ports:?})")]
    NoPort { index: usize, ports: Vec<u16> },
}

/// As its text: the explain JSON carries the same sentence as the text output.
impl Serialize for TaskRejection {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The tasks of one service port, sorted out.
#[derive(Debug)]
pub(crate) struct Selection {
    /// Sorted by id.
    pub backends: Vec<Backend>,
    /// The same backends as explain shows them, sorted by id.
    pub explained: Vec<BackendExplanation>,
    /// The other tasks, in the app's task order.
    pub excluded: Vec<TaskExclusion>,
}

/// Routes the tasks of one service port.
pub(crate) struct TaskRouter<'a> {
    pub eff: &'a EffectiveApp<'a>,
    pub mode: NetworkingMode,
    pub spec: &'a ServicePortSpec,
    pub opts: &'a ModelOptions,
    pub cache: &'a HealthCache,
}

impl TaskRouter<'_> {
    /// Every task of the app, routed or excluded. The task port is the one at the same position
    /// as the service port's own entry (`task_port_index`).
    pub fn select(&self) -> Selection {
        // Sized for every task routed (the usual case): grown by doubling, the 100,000
        // backends of 10,000 apps held 60 % more room than they used.
        let tasks = self.eff.app.tasks.len();
        let mut out = Selection {
            backends: Vec::with_capacity(tasks),
            explained: Vec::with_capacity(tasks),
            excluded: Vec::new(),
        };
        for task in &self.eff.app.tasks {
            match self.route(task) {
                Ok((backend, health)) => {
                    out.explained.push(BackendExplanation {
                        id: backend.id.clone(),
                        addr: backend.addr,
                        state: backend.state,
                        health,
                    });
                    out.backends.push(backend);
                }
                Err(reason) => out.excluded.push(TaskExclusion {
                    task_id: task.id.clone(),
                    reason,
                }),
            }
        }
        out.backends.sort_by(|a, b| a.id.cmp(&b.id));
        out.explained.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The task as a backend (with the health verdict explain shows), or why it is not one.
    /// The checks run in a fixed order: the first that fails is the reason given.
    fn route(&self, task: &Task) -> Result<(Backend, HealthVerdict), TaskRejection> {
        let app = &self.eff.app;
        let task_state = task_state(task)?;
        task_readiness(app, task)?;
        let verdict = task_health(app, task, self.cache);
        if self.opts.health_check && !verdict.passes() {
            return Err(TaskRejection::Unhealthy(verdict));
        }
        let ip = task_ip(task, self.mode, &self.opts.host_addrs)?;
        let ports = task_ports(app, task, self.mode);
        let index = self.spec.task_port_index;
        let port = match ports.get(index) {
            Some(&port) if port != 0 => port,
            _ => return Err(TaskRejection::NoPort { index, ports }),
        };
        let state = if self.eff.draining.contains(&task.id) {
            BackendState::Draining
        } else {
            task_state
        };
        let backend = Backend {
            id: BackendId::from(format!("{}:{}", task.id, self.spec.index)),
            addr: SocketAddr::new(ip, port),
            weight: 1,
            state,
        };
        Ok((backend, verdict))
    }
}

/// Why a port with tasks has no backend: no task at all, some excluded by `--health-check`,
/// or none routable for other reasons.
pub(crate) fn no_backend_reason(tasks: &[Task], excluded: &[TaskExclusion]) -> NotExposed {
    if tasks.is_empty() {
        NotExposed::NoTasks
    } else if excluded
        .iter()
        .any(|t| matches!(t.reason, TaskRejection::Unhealthy(_)))
    {
        NotExposed::NoHealthyTask
    } else {
        NotExposed::NoRoutableTask
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use serde_json::json;

    use super::*;
    use crate::marathon::types::parse_app;

    fn select(app: serde_json::Value, opts: &ModelOptions, draining: &[&str]) -> Selection {
        let app = parse_app(&app).unwrap();
        let specs = crate::model::ports::ServicePortAssigner::new(None).service_ports(&app);
        let eff = EffectiveApp {
            app: Cow::Borrowed(&app),
            source_ids: vec![app.id.clone()],
            draining: draining.iter().map(|t| (*t).to_owned()).collect(),
            order: 0,
        };
        TaskRouter {
            eff: &eff,
            mode: NetworkingMode::Host,
            spec: &specs[0],
            opts,
            cache: &HealthCache::new(),
        }
        .select()
    }

    fn task(id: &str, state: &str, ports: serde_json::Value) -> serde_json::Value {
        json!({"id": id, "host": "198.18.4.1", "state": state, "ports": ports})
    }

    #[test]
    fn each_task_is_routed_or_excluded_with_its_first_failing_check() {
        let app = json!({"id": "/a", "portDefinitions": [{"port": 10000}],
            "readinessCheckResults": [{"name": "warm", "taskId": "b-ready", "ready": false}],
            "tasks": [task("z-run", "TASK_RUNNING", json!([31000])),
                      task("a-run", "TASK_RUNNING", json!([31001])),
                      task("b-ready", "TASK_RUNNING", json!([31002])),
                      task("b-stage", "TASK_STAGING", json!([31002])),
                      task("c-noport", "TASK_RUNNING", json!([0])),
                      {"id": "d-nohost", "host": "", "state": "TASK_RUNNING", "ports": [31003]},
                      task("e-kill", "TASK_KILLING", json!([31004]))]});
        let s = select(app, &ModelOptions::new(vec![]), &["z-run"]);
        let routed: Vec<_> = s
            .backends
            .iter()
            .map(|b| (b.id.as_str(), b.addr.port(), b.state))
            .collect();
        assert_eq!(
            routed,
            [
                ("a-run:0", 31001, BackendState::Active),
                ("e-kill:0", 31004, BackendState::Draining),
                ("z-run:0", 31000, BackendState::Draining),
            ]
        );
        assert_eq!(
            s.explained.iter().map(|b| &b.id).collect::<Vec<_>>(),
            s.backends.iter().map(|b| &b.id).collect::<Vec<_>>()
        );
        let excluded: Vec<_> = s
            .excluded
            .iter()
            .map(|t| (t.task_id.as_str(), t.reason.to_string()))
            .collect();
        assert_eq!(
            excluded,
            [
                (
                    "b-ready",
                    "readiness check warm not ready yet (deployment in progress)".to_owned()
                ),
                ("b-stage", "state TASK_STAGING".to_owned()),
                (
                    "c-noport",
                    "task has no port at index 0 (ports [0])".to_owned()
                ),
                ("d-nohost", "no agent host yet".to_owned()),
            ]
        );
        assert_eq!(
            serde_json::to_value(&s.excluded[1]).unwrap()["reason"],
            "state TASK_STAGING"
        );
    }

    #[test]
    fn health_gating_is_named_when_it_leaves_no_backend() {
        let app = json!({"id": "/a", "portDefinitions": [{"port": 10000}],
            "healthChecks": [{"protocol": "TCP"}],
            "tasks": [{"id": "t1", "host": "198.18.4.1", "state": "TASK_RUNNING", "ports": [31000],
                       "healthCheckResults": [{"alive": false}]},
                      {"id": "t2", "host": "", "state": "TASK_RUNNING", "ports": [31001]}]});
        let mut opts = ModelOptions::new(vec![]);
        let tasks = parse_app(&app).unwrap().tasks;
        let ungated = select(app.clone(), &opts, &[]);
        assert_eq!(
            ungated.backends.len(),
            1,
            "health is not checked by default"
        );
        opts.health_check = true;
        let gated = select(app, &opts, &[]);
        assert!(gated.backends.is_empty());
        assert_eq!(
            gated.excluded[0].reason,
            TaskRejection::Unhealthy(HealthVerdict::Unhealthy)
        );
        assert_eq!(
            no_backend_reason(&tasks, &gated.excluded),
            NotExposed::NoHealthyTask
        );
        // Excluded for another reason only (no agent host).
        assert_eq!(
            no_backend_reason(&tasks, &ungated.excluded),
            NotExposed::NoRoutableTask
        );
        assert_eq!(no_backend_reason(&[], &[]), NotExposed::NoTasks);
    }
}
