//! App changes and the deployments that carry them out: the write side of the API and the
//! task lifecycle (staging → running → healthy; killing → killed) with Marathon's events.
use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{
    DeploymentTicket, Sim, SimError,
    backend::{self, BoundPort, TaskBackend},
    clock,
    events::{self},
    model::{self, Action, App, Deployment, Embed, HealthRecord, PortSpec, Task, TaskState},
};

/// Task ids by the id of the app they belong to.
pub(crate) type TasksOfApps = BTreeMap<String, Vec<String>>;

/// The apps `task_ids` may belong to, by id: a task id is its app's id in task-id form
/// (`clock::app_id_in_task_id`), a dot, and a UUID. Such a prefix without `_` is the app's id
/// without its leading `/`, looked up as such; one with `_` (which may stand for a group's
/// `/`) is compared with every app's id, without building each app's form. Runs under the world
/// lock, which every API read waits for.
fn apps_named_by_tasks<'w>(
    apps: &'w BTreeMap<String, App>,
    task_ids: &[String],
) -> BTreeMap<&'w str, &'w App> {
    let prefixes: HashSet<&str> = task_ids
        .iter()
        .filter_map(|id| id.rsplit_once('.').map(|(prefix, _)| prefix))
        .collect();
    let mut named = BTreeMap::new();
    for prefix in prefixes {
        if prefix.contains('_') {
            let matching = apps.iter().filter(|(id, _)| in_task_id_form(id, prefix));
            named.extend(matching.map(|(id, app)| (id.as_str(), app)));
        } else if let Some((id, app)) = apps.get_key_value(&format!("/{prefix}")) {
            named.insert(id.as_str(), app);
        }
    }
    named
}

/// Whether `prefix` is `app_id` in task-id form (`clock::app_id_in_task_id`).
fn in_task_id_form(app_id: &str, prefix: &str) -> bool {
    let id = app_id.trim_start_matches('/');
    id.len() == prefix.len()
        && id
            .bytes()
            .zip(prefix.bytes())
            .all(|(a, p)| p == if a == b'/' { b'_' } else { a })
}

impl Sim {
    /// `POST /v2/apps`: stores the app and starts its deployment.
    pub(crate) fn create_app(
        self: &Arc<Self>,
        submitted: Value,
        client_ip: &str,
        uri: &str,
    ) -> Result<(String, DeploymentTicket), SimError> {
        let mut w = self.lock();
        let def = w.normalize(submitted)?;
        let id = def["id"].as_str().unwrap_or_default().to_string();
        if let Some(existing) = w.apps.get(&id) {
            return Err(if existing.deleting {
                SimError::AppLocked { id }
            } else {
                SimError::AppExists { id }
            });
        }
        let version = clock::now();
        let original = w.root_group(&version);
        w.apps.insert(
            id.clone(),
            App {
                definition: def,
                version: version.clone(),
                last_scaling_at: version.clone(),
                last_config_change_at: version.clone(),
                tasks: Vec::new(),
                deleting: false,
            },
        );
        self.publish_api_post(&w, &id, client_ip, uri);
        let steps = vec![
            vec![(Action::Start, id.clone())],
            vec![(Action::Scale, id.clone())],
        ];
        let ticket = self.submit(&mut w, version, steps, original);
        Ok((id, ticket))
    }

    /// `PUT /v2/apps/{id}`: a scale when only `instances` changes, else a restart onto the new
    /// config. Creates the app when it does not exist (returns `true` then).
    pub(crate) fn update_app(
        self: &Arc<Self>,
        raw_id: &str,
        update: Value,
        client_ip: &str,
    ) -> Result<(bool, DeploymentTicket), SimError> {
        let id = model::normalize_app_id(raw_id)?;
        let uri = format!("/v2/apps{id}");
        let mut w = self.lock();
        let Some(app) = w.apps.get(&id) else {
            drop(w);
            let mut def = update;
            if let Some(o) = def.as_object_mut() {
                o.insert("id".into(), json!(id));
            }
            let (_, ticket) = self.create_app(def, client_ip, &uri)?;
            return Ok((true, ticket));
        };
        if app.deleting {
            return Err(SimError::AppLocked { id });
        }
        let merged = model::merge_update(&app.definition, &update)?;
        let def = w.normalize(merged)?;
        let version = clock::now();
        let original = w.root_group(&version);
        let app = w.apps.get_mut(&id).expect("checked above");
        let action = if model::config_changed(&app.definition, &def) {
            app.last_config_change_at.clone_from(&version);
            Action::Restart
        } else {
            app.last_scaling_at.clone_from(&version);
            Action::Scale
        };
        app.definition = def;
        app.version.clone_from(&version);
        self.publish_api_post(&w, &id, client_ip, &uri);
        let ticket = self.submit(&mut w, version, vec![vec![(action, id)]], original);
        Ok((false, ticket))
    }

    /// `DELETE /v2/apps/{id}`: hides the app at once; the deployment kills its tasks.
    pub(crate) fn delete_app(
        self: &Arc<Self>,
        raw_id: &str,
        client_ip: &str,
    ) -> Result<DeploymentTicket, SimError> {
        let id = model::normalize_app_id(raw_id)?;
        let mut w = self.lock();
        let version = clock::now();
        let original = w.root_group(&version);
        match w.apps.get(&id) {
            Some(app) if !app.deleting => {}
            _ => return Err(SimError::UnknownApp { id }),
        }
        self.publish_api_post(&w, &id, client_ip, &format!("/v2/apps{id}"));
        let app = w.apps.get_mut(&id).expect("checked above");
        app.deleting = true;
        app.version.clone_from(&version);
        Ok(self.submit(&mut w, version, vec![vec![(Action::Stop, id)]], original))
    }

    /// `POST /v2/tasks/delete`: with `scale`, the apps shrink and a deployment kills the tasks;
    /// without, the tasks die and Marathon launches replacements. Returns the killed tasks'
    /// JSON and a ticket that resolves when the kill (and any replacement) is done.
    pub(crate) fn kill_tasks(
        self: &Arc<Self>,
        task_ids: &[String],
        scale: bool,
    ) -> Result<(Vec<Value>, DeploymentTicket), SimError> {
        let mut w = self.lock();
        let mut per_app = TasksOfApps::new();
        let mut killed = Vec::new();
        let wanted: HashSet<&str> = task_ids.iter().map(String::as_str).collect();
        let named = apps_named_by_tasks(&w.apps, task_ids);
        for app in named.into_values().filter(|a| !a.deleting) {
            let checks = app.health_checks().len();
            for t in app.tasks.iter().filter(|t| wanted.contains(t.id.as_str())) {
                per_app
                    .entry(app.id().to_string())
                    .or_default()
                    .push(t.id.clone());
                killed.push(t.to_json(checks, false));
            }
        }
        if per_app.is_empty() {
            return Err(SimError::UnknownTask {
                id: task_ids.join(","),
            });
        }
        let version = clock::now();
        if scale {
            let original = w.root_group(&version);
            for (app_id, ids) in &per_app {
                let app = w.apps.get_mut(app_id).expect("collected above");
                let n = app.instances().saturating_sub(ids.len());
                app.definition["instances"] = json!(n);
                app.version.clone_from(&version);
                app.last_scaling_at.clone_from(&version);
            }
            let step = per_app
                .into_iter()
                .map(|(app, ids)| (Action::KillTasks(ids), app))
                .collect();
            let ticket = self.submit(&mut w, version, vec![step], original);
            return Ok((killed, ticket));
        }
        drop(w);
        // A kill without scaling is no deployment: the tasks die and the scheduler relaunches.
        let (tx, rx) = oneshot::channel();
        let sim = self.clone();
        self.spawn(async move {
            let _turn = sim.deploy_lock.lock().await;
            sim.kill(&per_app).await;
            let mut result = Ok(());
            for app_id in per_app.keys() {
                if let Err(e) = sim.converge(app_id).await {
                    tracing::warn!(app = %app_id, error = %e, "marathon-sim: relaunch failed");
                    result = Err(e);
                }
            }
            let _ = tx.send(result);
        });
        Ok((
            killed,
            DeploymentTicket {
                id: String::new(),
                version,
                done: rx,
            },
        ))
    }

    /// Flips what a task's backends answer and, for apps with health checks, Marathon's
    /// verdict, with `health_status_changed_event` and `instance_health_changed_event`.
    pub(crate) fn set_task_health(&self, task_id: &str, healthy: bool) -> Result<(), SimError> {
        let mut w = self.lock();
        let app = w
            .apps
            .values_mut()
            .find(|a| a.tasks.iter().any(|t| t.id == task_id))
            .ok_or_else(|| SimError::UnknownTask { id: task_id.into() })?;
        let checks = app.health_checks();
        let task = app
            .tasks
            .iter_mut()
            .find(|t| t.id == task_id)
            .expect("found above");
        let was = task.healthy.swap(healthy, Ordering::Relaxed);
        if checks.is_empty() || task.state != TaskState::Running {
            return Ok(());
        }
        let now = clock::now();
        let record = task.health.get_or_insert_with(HealthRecord::default);
        if healthy {
            record.first_success.get_or_insert_with(|| now.clone());
            record.last_success = Some(now);
            record.consecutive_failures = 0;
        } else {
            record.last_failure = Some(now);
            record.consecutive_failures += 1;
        }
        if was != healthy {
            let r = task.event_ref();
            if !healthy {
                self.events.publish(
                    "failed_health_check_event",
                    events::failed_health_check(&r, &checks[0]),
                );
            }
            self.events.publish(
                "health_status_changed_event",
                events::health_status_changed(&r, healthy),
            );
            self.events.publish(
                "instance_health_changed_event",
                events::instance_health_changed(&r, healthy),
            );
        }
        Ok(())
    }

    fn publish_api_post(&self, w: &model::World, id: &str, client_ip: &str, uri: &str) {
        if let Some(app) = w.apps.get(id) {
            let def = w.app_json(app, Embed::default());
            self.events.publish(
                "api_post_event",
                json!({"clientIp": client_ip, "uri": uri, "appDefinition": def}),
            );
        }
    }

    /// Registers a deployment (visible at once in `/v2/deployments` and the apps'
    /// `deployments`) and runs it in the background after those before it.
    fn submit(
        self: &Arc<Self>,
        w: &mut model::World,
        version: String,
        steps: Vec<Vec<(Action, String)>>,
        original: Value,
    ) -> DeploymentTicket {
        let id = clock::uuid();
        let target = w.root_group(&version);
        w.deployments.insert(
            id.clone(),
            Deployment {
                id: id.clone(),
                version: version.clone(),
                steps,
                current_step: 0,
                original,
                target,
            },
        );
        let (tx, rx) = oneshot::channel();
        let sim = self.clone();
        let dep_id = id.clone();
        self.spawn(async move {
            let result = sim.clone().run_deployment(&dep_id).await;
            let _ = tx.send(result);
        });
        DeploymentTicket {
            id,
            version,
            done: rx,
        }
    }

    async fn run_deployment(self: Arc<Self>, dep_id: &str) -> Result<(), SimError> {
        let _turn = self.deploy_lock.lock().await;
        let Some(dep) = self.lock().deployments.get(dep_id).cloned() else {
            return Err(SimError::ShutDown);
        };
        for (index, step) in dep.steps.iter().enumerate() {
            let plan = {
                let mut w = self.lock();
                if let Some(d) = w.deployments.get_mut(dep_id) {
                    d.current_step = index + 1;
                }
                dep.plan_json()
            };
            self.events.publish(
                "deployment_info",
                json!({"plan": plan, "currentStep": dep.current_step_json(index)}),
            );
            let mut outcome = Ok(());
            if self.faults.current().fail_deployments {
                outcome = Err("the fail_deployments fault is on".to_string());
            }
            for (action, app_id) in step {
                if outcome.is_err() {
                    break;
                }
                outcome = self.apply(action, app_id).await.map_err(|e| e.to_string());
            }
            if let Err(reason) = outcome {
                tracing::warn!(deployment = dep_id, %reason, "marathon-sim: deployment failed");
                self.lock().deployments.remove(dep_id);
                self.events.publish(
                    "deployment_failed",
                    json!({"id": dep_id, "plan": plan, "reason": reason}),
                );
                return Err(SimError::DeploymentFailed {
                    id: dep_id.into(),
                    reason,
                });
            }
            self.events.publish(
                "deployment_step_success",
                json!({"plan": plan, "currentStep": dep.current_step_json(index)}),
            );
        }
        self.lock().deployments.remove(dep_id);
        self.events.publish(
            "deployment_success",
            json!({"id": dep_id, "plan": dep.plan_json()}),
        );
        Ok(())
    }

    async fn apply(&self, action: &Action, app_id: &str) -> Result<(), SimError> {
        match action {
            Action::Start | Action::Scale => self.converge(app_id).await,
            Action::Restart => self.restart(app_id).await,
            Action::Stop => {
                let ids: Vec<String> = {
                    let w = self.lock();
                    w.apps
                        .get(app_id)
                        .map(|a| a.tasks.iter().map(|t| t.id.clone()).collect())
                        .unwrap_or_default()
                };
                self.kill_of(app_id, &ids).await;
                self.lock().apps.remove(app_id);
                self.events
                    .publish("app_terminated_event", json!({"appId": app_id}));
                Ok(())
            }
            Action::KillTasks(ids) => {
                self.kill_of(app_id, ids).await;
                Ok(())
            }
        }
    }

    /// Launches or kills (youngest first) tasks until the app has `instances` live tasks.
    pub(crate) async fn converge(&self, app_id: &str) -> Result<(), SimError> {
        let (target, live) = {
            let w = self.lock();
            let Some(app) = w.apps.get(app_id) else {
                return Ok(());
            };
            let live: Vec<String> = app
                .tasks
                .iter()
                .filter(|t| t.state != TaskState::Killing)
                .map(|t| t.id.clone())
                .collect();
            (app.instances(), live)
        };
        if live.len() < target {
            self.launch(app_id, target - live.len()).await?;
        } else if live.len() > target {
            self.kill_of(app_id, &live[target..]).await;
        }
        Ok(())
    }

    /// Replaces tasks of an older config: new tasks first (they run and pass health checks),
    /// then the old ones are killed, like Marathon's default upgrade strategy.
    async fn restart(&self, app_id: &str) -> Result<(), SimError> {
        let (missing, old) = {
            let w = self.lock();
            let Some(app) = w.apps.get(app_id) else {
                return Ok(());
            };
            let live = app.tasks.iter().filter(|t| t.state != TaskState::Killing);
            let current = live
                .clone()
                .filter(|t| t.config_version == app.last_config_change_at)
                .count();
            let old: Vec<String> = live
                .filter(|t| t.config_version != app.last_config_change_at)
                .map(|t| t.id.clone())
                .collect();
            (app.instances().saturating_sub(current), old)
        };
        self.launch(app_id, missing).await?;
        self.kill_of(app_id, &old).await;
        self.converge(app_id).await
    }

    /// Launches `n` tasks: bind their ports, stage, run, and report health.
    async fn launch(&self, app_id: &str, n: usize) -> Result<(), SimError> {
        if n == 0 {
            return Ok(());
        }
        let (specs, agents) = {
            let mut w = self.lock();
            let Some(app) = w.apps.get(app_id) else {
                return Ok(());
            };
            let specs = model::port_specs(&app.definition);
            let agents: Vec<usize> = (0..n)
                .map(|i| (w.next_agent + i) % self.config.agents.len())
                .collect();
            w.next_agent += n;
            (specs, agents)
        };
        let mut bound = Vec::with_capacity(n);
        for &agent in &agents {
            bound.push((agent, self.task_ports(agent, &specs, app_id).await?));
        }

        // Staging.
        let mut ids = Vec::with_capacity(n);
        {
            let mut w = self.lock();
            let Some(app) = w.apps.get_mut(app_id) else {
                return Ok(());
            };
            for (agent_index, ports) in bound {
                let task = self.new_task(app, app_id, agent_index, ports, &specs);
                let r = task.event_ref();
                self.events.publish(
                    "instance_changed_event",
                    events::instance_changed(&r, "Created"),
                );
                self.events.publish(
                    "status_update_event",
                    events::status_update(&r, "TASK_STAGING"),
                );
                ids.push(task.id.clone());
                app.tasks.push(task);
            }
        }
        tokio::time::sleep(self.config.step_delay).await;

        // Running: the listeners start serving.
        let has_checks =
            {
                let mut w = self.lock();
                let Some(app) = w.apps.get_mut(app_id) else {
                    return Ok(());
                };
                for task in app.tasks.iter_mut().filter(|t| ids.contains(&t.id)) {
                    let Some(ports) = task.pending.take() else {
                        continue;
                    };
                    let backend = TaskBackend::start(&task.id, ports, task.healthy.clone())
                        .map_err(|e| SimError::DeploymentFailed {
                            id: app_id.into(),
                            reason: format!("task {}: cannot serve its ports: {e}", task.id),
                        })?;
                    task.backend = Some(backend);
                    task.state = TaskState::Running;
                    task.started_at = Some(clock::now());
                    let r = task.event_ref();
                    self.events
                        .publish_task_state(&r, "TASK_RUNNING", "Running");
                }
                !app.health_checks().is_empty()
            };
        if !has_checks {
            return Ok(());
        }
        tokio::time::sleep(self.config.step_delay).await;

        // First health check result.
        let mut w = self.lock();
        let Some(app) = w.apps.get_mut(app_id) else {
            return Ok(());
        };
        for task in app
            .tasks
            .iter_mut()
            .filter(|t| ids.contains(&t.id) && t.state == TaskState::Running && t.health.is_none())
        {
            let alive = task.is_alive();
            let now = clock::now();
            task.health = Some(HealthRecord {
                first_success: alive.then(|| now.clone()),
                last_success: alive.then(|| now.clone()),
                last_failure: (!alive).then(|| now.clone()),
                consecutive_failures: u32::from(!alive),
            });
            let r = task.event_ref();
            self.events.publish(
                "health_status_changed_event",
                events::health_status_changed(&r, alive),
            );
            self.events.publish(
                "instance_health_changed_event",
                events::instance_health_changed(&r, alive),
            );
        }
        Ok(())
    }

    /// Binds the ports of one task on `agent`, or only allocates them without `bind_tasks`.
    async fn task_ports(
        &self,
        agent: usize,
        specs: &[PortSpec],
        app_id: &str,
    ) -> Result<Vec<BoundPort>, SimError> {
        let agent = &self.config.agents[agent];
        let ports = if self.config.bind_tasks {
            backend::bind_task_ports(agent, specs.to_vec(), self.ports.clone()).await
        } else {
            backend::reserve_task_ports(agent, specs, &self.ports)
        };
        ports.map_err(|e| SimError::DeploymentFailed {
            id: app_id.into(),
            reason: e.to_string(),
        })
    }

    /// A new task of `app` in `TASK_STAGING` on `ports` (served once it runs).
    fn new_task(
        &self,
        app: &App,
        app_id: &str,
        agent_index: usize,
        ports: Vec<BoundPort>,
        specs: &[PortSpec],
    ) -> Task {
        let agent = &self.config.agents[agent_index];
        let prefix = clock::app_id_in_task_id(app_id);
        let uuid = clock::uuid();
        let bound_ports: Vec<u16> = ports.iter().map(|p| p.port).collect();
        Task {
            id: format!("{prefix}.{uuid}"),
            instance_id: format!("{prefix}.marathon-{uuid}"),
            app_id: app_id.to_string(),
            slave_id: format!("sim-agent-S{agent_index}"),
            host: agent.host(),
            address: agent.address,
            ports: bound_ports
                .iter()
                .zip(specs)
                .filter(|(_, s)| s.reported)
                .map(|(p, _)| *p)
                .collect(),
            bound_ports,
            service_ports: specs.iter().map(|s| s.service_port).collect(),
            state: TaskState::Staging,
            staged_at: clock::now(),
            started_at: None,
            version: app.version.clone(),
            config_version: app.last_config_change_at.clone(),
            healthy: Arc::new(AtomicBool::new(true)),
            health: None,
            pending: Some(ports),
            backend: None,
        }
    }

    /// Places apps that already run (`SimConfig::running_apps`): every task in `TASK_RUNNING`
    /// at once, healthy for apps with health checks, without deployments or events.
    pub(crate) async fn preload(&self, defs: Vec<Value>) -> Result<(), SimError> {
        if defs.is_empty() {
            return Ok(());
        }
        let mut used = self.lock().service_ports_in_use("");
        for submitted in defs {
            let def = self.lock().normalize_using(submitted, Some(&mut used))?;
            let id = def["id"].as_str().unwrap_or_default().to_string();
            if self.lock().apps.contains_key(&id) {
                return Err(SimError::AppExists { id });
            }
            let version = clock::now();
            let specs = model::port_specs(&def);
            let mut app = App {
                definition: def,
                version: version.clone(),
                last_scaling_at: version.clone(),
                last_config_change_at: version,
                tasks: Vec::new(),
                deleting: false,
            };
            let has_checks = !app.health_checks().is_empty();
            for _ in 0..app.instances() {
                let agent = {
                    let mut w = self.lock();
                    w.next_agent += 1;
                    (w.next_agent - 1) % self.config.agents.len()
                };
                let ports = self.task_ports(agent, &specs, &id).await?;
                let mut task = self.new_task(&app, &id, agent, ports, &specs);
                let ports = task.pending.take().unwrap_or_default();
                task.backend = Some(
                    TaskBackend::start(&task.id, ports, task.healthy.clone()).map_err(|e| {
                        SimError::DeploymentFailed {
                            id: id.clone(),
                            reason: format!("task {}: cannot serve its ports: {e}", task.id),
                        }
                    })?,
                );
                task.state = TaskState::Running;
                task.started_at = Some(task.staged_at.clone());
                if has_checks {
                    task.health = Some(HealthRecord {
                        first_success: task.started_at.clone(),
                        last_success: task.started_at.clone(),
                        last_failure: None,
                        consecutive_failures: 0,
                    });
                }
                app.tasks.push(task);
            }
            self.lock().apps.insert(id, app);
        }
        Ok(())
    }

    /// Kills tasks, named with the app each belongs to: `TASK_KILLING`, then `TASK_KILLED`
    /// when their listeners close. Only those apps' tasks are looked at, as Marathon finds a
    /// task through its instance: a walk of every task under the world lock (100,000 in bench
    /// sync) kept the event subscribers' tasks from running for tens of milliseconds after
    /// `TASK_KILLING` was published, and not for all subscribers alike.
    pub(crate) async fn kill(&self, tasks: &TasksOfApps) {
        if tasks.values().all(Vec::is_empty) {
            return;
        }
        // Each app's named tasks as a set, for both steps.
        let named: Vec<(&String, HashSet<&str>)> = tasks
            .iter()
            .map(|(app_id, ids)| (app_id, ids.iter().map(String::as_str).collect()))
            .collect();
        {
            let mut w = self.lock();
            for (app_id, ids) in &named {
                let Some(app) = w.apps.get_mut(*app_id) else {
                    continue;
                };
                for task in app.tasks.iter_mut().filter(|t| ids.contains(t.id.as_str())) {
                    task.state = TaskState::Killing;
                    let r = task.event_ref();
                    self.events
                        .publish_task_state(&r, "TASK_KILLING", "Killing");
                }
            }
        }
        tokio::time::sleep(self.config.step_delay).await;
        let gone: Vec<Task> = {
            let mut w = self.lock();
            let mut gone = Vec::new();
            for (app_id, ids) in &named {
                let Some(app) = w.apps.get_mut(*app_id) else {
                    continue;
                };
                let (dead, kept): (Vec<Task>, Vec<Task>) = std::mem::take(&mut app.tasks)
                    .into_iter()
                    .partition(|t| ids.contains(t.id.as_str()));
                app.tasks = kept;
                gone.extend(dead);
            }
            gone
        };
        for mut task in gone {
            // The process is gone before Mesos reports it: listeners are closed by now.
            if let Some(backend) = task.backend.take() {
                backend.stop().await;
            }
            let r = task.event_ref();
            self.events.publish_task_state(&r, "TASK_KILLED", "Killed");
        }
    }

    /// Kills tasks of one app (see [`Sim::kill`]).
    async fn kill_of(&self, app_id: &str, ids: &[String]) {
        self.kill(&BTreeMap::from([(app_id.to_string(), ids.to_vec())]))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_id_prefix_names_its_app_only() {
        for id in ["/web", "/shop/svc", "/a/b/c", "/my_app", "/g/my_app"] {
            assert!(in_task_id_form(id, &clock::app_id_in_task_id(id)), "{id}");
        }
        for (id, prefix) in [
            ("/a/b", "a-b"),
            ("/a/b", "ab"),
            ("/a/b", "a_bc"),
            ("/ab", "a_b"),
        ] {
            assert!(!in_task_id_form(id, prefix), "{id} {prefix}");
        }
    }
}
