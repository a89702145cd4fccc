//! The simulated cluster state: apps (Marathon app definitions), their tasks and the running
//! deployments, and how Marathon renders them as JSON.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use serde_json::{Map, Value, json};

use super::{SimError, backend::BoundPort, backend::TaskBackend, events::TaskRef};

/// First service port Marathon assigns for `port: 0` / `servicePort: 0` (its default range).
const SERVICE_PORT_MIN: u16 = 10_000;
const SERVICE_PORT_MAX: u16 = 20_000;

/// How an app's tasks are networked, with marathon-lb's precedence rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NetworkMode {
    Host,
    Bridge,
    Container,
}

pub(crate) fn network_mode(def: &Value) -> NetworkMode {
    if def.get("ipAddress").is_some_and(|v| !v.is_null()) {
        return NetworkMode::Container;
    }
    if let Some(net) = def
        .pointer("/container/docker/network")
        .and_then(Value::as_str)
    {
        return match net {
            "BRIDGE" => NetworkMode::Bridge,
            "USER" => NetworkMode::Container,
            _ => NetworkMode::Host,
        };
    }
    if let Some(last) = def
        .get("networks")
        .and_then(Value::as_array)
        .and_then(|n| n.last())
    {
        return match last.get("mode").and_then(Value::as_str) {
            Some("host") => NetworkMode::Host,
            Some("container/bridge") => NetworkMode::Bridge,
            _ => NetworkMode::Container,
        };
    }
    NetworkMode::Host
}

/// One port a task exposes, derived from a port definition or mapping.
#[derive(Clone, Debug)]
pub(crate) struct PortSpec {
    pub(crate) tcp: bool,
    pub(crate) udp: bool,
    /// Bind exactly this port (required host port, or the container port of an IP-per-task
    /// app, where the agent address stands in for the container's own IP).
    pub(crate) fixed_port: Option<u16>,
    pub(crate) service_port: u16,
    /// Whether Marathon reports the bound port in `task.ports` (not for IP-per-task).
    pub(crate) reported: bool,
}

fn port_mappings(def: &Value) -> Option<&Vec<Value>> {
    def.pointer("/container/docker/portMappings")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .or_else(|| {
            def.pointer("/container/portMappings")
                .and_then(Value::as_array)
        })
}

fn protocols(entry: &Value) -> (bool, bool) {
    let proto = entry
        .get("protocol")
        .and_then(Value::as_str)
        .unwrap_or("tcp");
    let tcp = proto.split(',').any(|p| p.trim() == "tcp");
    let udp = proto.split(',').any(|p| p.trim() == "udp");
    (tcp || !udp, udp)
}

fn as_port(v: Option<&Value>) -> u16 {
    v.and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(0)
}

/// The ports each task of a (normalized) app exposes.
pub(crate) fn port_specs(def: &Value) -> Vec<PortSpec> {
    let mode = network_mode(def);
    if mode != NetworkMode::Host {
        return port_mappings(def)
            .map(|mappings| {
                mappings
                    .iter()
                    .map(|m| {
                        let (tcp, udp) = protocols(m);
                        let host_port = as_port(m.get("hostPort"));
                        let container_port = as_port(m.get("containerPort"));
                        let (fixed_port, reported) = match mode {
                            NetworkMode::Container => {
                                (Some(container_port).filter(|p| *p != 0), false)
                            }
                            _ => (Some(host_port).filter(|p| *p != 0), true),
                        };
                        PortSpec {
                            tcp,
                            udp,
                            fixed_port,
                            service_port: as_port(m.get("servicePort")),
                            reported,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
    }
    let require = def.get("requirePorts").and_then(Value::as_bool) == Some(true);
    def.get("portDefinitions")
        .and_then(Value::as_array)
        .map(|defs| {
            defs.iter()
                .map(|d| {
                    let (tcp, udp) = protocols(d);
                    let port = as_port(d.get("port"));
                    PortSpec {
                        tcp,
                        udp,
                        fixed_port: Some(port).filter(|p| require && *p != 0),
                        service_port: port,
                        reported: true,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A Marathon health check with its documented defaults filled in.
fn normalize_health_check(id: &str, index: usize, hc: &Value) -> Result<Value, SimError> {
    let mut hc = hc
        .as_object()
        .cloned()
        .ok_or_else(|| SimError::InvalidApp {
            id: id.into(),
            reason: format!("healthChecks[{index}] must be an object"),
        })?;
    let protocol = hc
        .get("protocol")
        .and_then(Value::as_str)
        .unwrap_or("HTTP")
        .to_string();
    let defaults = [
        ("protocol", json!(protocol)),
        ("gracePeriodSeconds", json!(300)),
        ("intervalSeconds", json!(60)),
        ("timeoutSeconds", json!(20)),
        ("maxConsecutiveFailures", json!(3)),
        ("delaySeconds", json!(15)),
    ];
    for (k, v) in defaults {
        hc.entry(k).or_insert(v);
    }
    if protocol.contains("HTTP") {
        hc.entry("path").or_insert(json!("/"));
        hc.entry("ignoreHttp1xx").or_insert(json!(false));
    }
    if protocol != "COMMAND" && !hc.contains_key("port") {
        hc.entry("portIndex").or_insert(json!(0));
    }
    Ok(Value::Object(hc))
}

/// Validates an app id and writes it the way Marathon stores it: absolute, no trailing slash.
pub(crate) fn normalize_app_id(raw: &str) -> Result<String, SimError> {
    let trimmed = raw.trim_matches('/');
    let valid_segment = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !s.starts_with(['-', '.'])
            && !s.ends_with(['-', '.'])
    };
    if trimmed.is_empty() || !trimmed.split('/').all(valid_segment) {
        return Err(SimError::InvalidApp {
            id: raw.into(),
            reason: "id: path segments must be lowercase letters, digits, '-' and '.'".into(),
        });
    }
    Ok(format!("/{trimmed}"))
}

/// The cluster state.
#[derive(Default)]
pub(crate) struct World {
    pub(crate) apps: BTreeMap<String, App>,
    pub(crate) deployments: BTreeMap<String, Deployment>,
    /// Round-robin cursor over agents.
    pub(crate) next_agent: usize,
}

/// One app: its stored definition plus the fields Marathon adds.
pub(crate) struct App {
    /// The normalized definition, without runtime fields (version, tasks, counts).
    pub(crate) definition: Value,
    pub(crate) version: String,
    pub(crate) last_scaling_at: String,
    pub(crate) last_config_change_at: String,
    pub(crate) tasks: Vec<Task>,
    /// Being deleted: hidden from the API, its tasks are being killed.
    pub(crate) deleting: bool,
}

impl App {
    pub(crate) fn id(&self) -> &str {
        self.definition["id"].as_str().unwrap_or_default()
    }

    pub(crate) fn instances(&self) -> usize {
        self.definition["instances"].as_u64().unwrap_or(0) as usize
    }

    pub(crate) fn health_checks(&self) -> Vec<Value> {
        self.definition
            .get("healthChecks")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }
}

/// Mesos task states the simulator moves tasks through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TaskState {
    Staging,
    Running,
    Killing,
}

impl TaskState {
    pub(crate) fn as_mesos(self) -> &'static str {
        match self {
            TaskState::Staging => "TASK_STAGING",
            TaskState::Running => "TASK_RUNNING",
            TaskState::Killing => "TASK_KILLING",
        }
    }
}

/// Marathon's per-check health record for a task.
#[derive(Clone, Debug, Default)]
pub(crate) struct HealthRecord {
    pub(crate) first_success: Option<String>,
    pub(crate) last_success: Option<String>,
    pub(crate) last_failure: Option<String>,
    pub(crate) consecutive_failures: u32,
}

/// One task (Marathon instance with one task).
pub(crate) struct Task {
    pub(crate) id: String,
    pub(crate) instance_id: String,
    pub(crate) app_id: String,
    pub(crate) slave_id: String,
    pub(crate) host: String,
    pub(crate) address: IpAddr,
    pub(crate) ports: Vec<u16>,
    pub(crate) bound_ports: Vec<u16>,
    pub(crate) service_ports: Vec<u16>,
    pub(crate) state: TaskState,
    pub(crate) staged_at: String,
    pub(crate) started_at: Option<String>,
    /// App version at launch.
    pub(crate) version: String,
    /// `lastConfigChangeAt` at launch: tasks of an older config are replaced on restart.
    pub(crate) config_version: String,
    /// What the backend answers; shared with its listeners.
    pub(crate) healthy: Arc<AtomicBool>,
    /// Marathon's health verdict, once a check has run (apps with `healthChecks` only).
    pub(crate) health: Option<HealthRecord>,
    /// Sockets bound at staging, served once the task runs.
    pub(crate) pending: Option<Vec<BoundPort>>,
    pub(crate) backend: Option<TaskBackend>,
}

impl Task {
    pub(crate) fn event_ref(&self) -> TaskRef<'_> {
        TaskRef {
            app_id: &self.app_id,
            task_id: &self.id,
            instance_id: &self.instance_id,
            slave_id: &self.slave_id,
            host: &self.host,
            ip: self.address.to_string(),
            ports: &self.ports,
            version: &self.version,
        }
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// The task as `/v2/apps?embed=apps.tasks` and `/v2/tasks` show it.
    pub(crate) fn to_json(&self, health_checks: usize, with_service_ports: bool) -> Value {
        let mut t = json!({
            "id": self.id,
            "appId": self.app_id,
            "host": self.host,
            "slaveId": self.slave_id,
            "state": self.state.as_mesos(),
            "stagedAt": self.staged_at,
            "version": self.version,
            "ports": self.ports,
            "ipAddresses": [{
                "ipAddress": self.address.to_string(),
                "protocol": if self.address.is_ipv4() { "IPv4" } else { "IPv6" },
            }],
            "localVolumes": [],
        });
        if let Some(started) = &self.started_at {
            t["startedAt"] = json!(started);
        }
        if with_service_ports {
            t["servicePorts"] = json!(self.service_ports);
        }
        if let Some(h) = &self.health {
            let alive = self.is_alive();
            let result = json!({
                "alive": alive,
                "consecutiveFailures": h.consecutive_failures,
                "firstSuccess": h.first_success,
                "lastSuccess": h.last_success,
                "lastFailure": h.last_failure,
                "lastFailureCause": if alive { Value::Null } else { json!("simulated failure") },
                "instanceId": self.instance_id,
            });
            t["healthCheckResults"] = Value::Array(vec![result; health_checks]);
        }
        t
    }
}

/// One action of a deployment step.
#[derive(Clone, Debug)]
pub(crate) enum Action {
    Start,
    Scale,
    Restart,
    Stop,
    /// Kill these tasks (`/v2/tasks/delete?scale=true`); shown as `ScaleApplication`.
    KillTasks(Vec<String>),
}

impl Action {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Action::Start => "StartApplication",
            Action::Scale | Action::KillTasks(_) => "ScaleApplication",
            Action::Restart => "RestartApplication",
            Action::Stop => "StopApplication",
        }
    }
}

/// A deployment in progress.
#[derive(Clone, Debug)]
pub(crate) struct Deployment {
    pub(crate) id: String,
    pub(crate) version: String,
    pub(crate) steps: Vec<Vec<(Action, String)>>,
    /// 1-based, as Marathon counts; 0 before the first step starts.
    pub(crate) current_step: usize,
    /// The root group before and after, for the heavy plan format.
    pub(crate) original: Value,
    pub(crate) target: Value,
}

impl Deployment {
    pub(crate) fn affected_apps(&self) -> BTreeSet<String> {
        self.steps
            .iter()
            .flatten()
            .map(|(_, app)| app.clone())
            .collect()
    }

    fn step_json(step: &[(Action, String)]) -> Value {
        json!({"actions": step.iter().map(|(a, app)| json!({"action": a.name(), "app": app})).collect::<Vec<_>>()})
    }

    /// The plan in events (heavy form; light streams strip `original` and `target`).
    pub(crate) fn plan_json(&self) -> Value {
        json!({
            "id": self.id,
            "version": self.version,
            "original": self.original,
            "target": self.target,
            "steps": self.steps.iter().map(|s| Self::step_json(s)).collect::<Vec<_>>(),
        })
    }

    /// The step at `index` (0-based) in events.
    pub(crate) fn current_step_json(&self, index: usize) -> Value {
        self.steps
            .get(index)
            .map_or_else(|| json!({"actions": []}), |s| Self::step_json(s))
    }

    /// The deployment as `GET /v2/deployments` lists it.
    pub(crate) fn to_json(&self) -> Value {
        let index = self.current_step.saturating_sub(1);
        let current = self
            .steps
            .get(index)
            .map(|s| {
                s.iter()
                    .map(|(a, app)| json!({"action": a.name(), "app": app, "readinessCheckResults": []}))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        json!({
            "id": self.id,
            "version": self.version,
            "affectedApps": self.affected_apps(),
            "affectedPods": [],
            "steps": self.steps.iter().map(|s| Self::step_json(s)).collect::<Vec<_>>(),
            "currentActions": current,
            "currentStep": self.current_step.max(1),
            "totalSteps": self.steps.len(),
        })
    }
}

/// Which optional parts of an app to render (`embed=apps.*` / `app.*`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Embed {
    pub(crate) tasks: bool,
    pub(crate) counts: bool,
    pub(crate) deployments: bool,
    pub(crate) readiness: bool,
    pub(crate) last_task_failure: bool,
}

impl Embed {
    /// Parses `embed` values with the given prefix (`apps.` or `app.`); with none given,
    /// Marathon's defaults apply.
    pub(crate) fn parse<'a>(
        values: impl Iterator<Item = &'a str>,
        prefix: &str,
        single: bool,
    ) -> Self {
        let mut e = Embed::default();
        let mut any = false;
        for v in values {
            any = true;
            match v.strip_prefix(prefix) {
                Some("tasks") => {
                    e.tasks = true;
                    // Marathon: "apps.tasks currently also implies apps.deployments".
                    e.deployments = true;
                }
                Some("counts") => e.counts = true,
                Some("deployments") => e.deployments = true,
                Some("readiness") => e.readiness = true,
                Some("lastTaskFailure") => e.last_task_failure = true,
                _ => {}
            }
        }
        if !any {
            e.counts = true;
            e.deployments = true;
            // The single-app endpoint has always embedded tasks by default.
            e.tasks = single;
        }
        e
    }
}

impl World {
    /// The app as the API renders it.
    pub(crate) fn app_json(&self, app: &App, embed: Embed) -> Value {
        let mut a = app.definition.clone();
        a["version"] = json!(app.version);
        a["versionInfo"] = json!({
            "lastScalingAt": app.last_scaling_at,
            "lastConfigChangeAt": app.last_config_change_at,
        });
        let checks = app.health_checks().len();
        if embed.counts {
            let running = || app.tasks.iter().filter(|t| t.state == TaskState::Running);
            a["tasksStaged"] = json!(
                app.tasks
                    .iter()
                    .filter(|t| t.state == TaskState::Staging)
                    .count()
            );
            a["tasksRunning"] = json!(running().count());
            a["tasksHealthy"] = json!(
                running()
                    .filter(|t| t.health.is_some() && t.is_alive())
                    .count()
            );
            a["tasksUnhealthy"] = json!(
                running()
                    .filter(|t| t.health.is_some() && !t.is_alive())
                    .count()
            );
        }
        if embed.deployments {
            let deps: Vec<Value> = self
                .deployments
                .values()
                .filter(|d| d.affected_apps().contains(app.id()))
                .map(|d| json!({"id": d.id}))
                .collect();
            a["deployments"] = Value::Array(deps);
        }
        if embed.readiness {
            a["readinessCheckResults"] = json!([]);
        }
        if embed.tasks {
            a["tasks"] = app.tasks.iter().map(|t| t.to_json(checks, false)).collect();
        }
        a
    }

    /// The root group (`original`/`target` of heavy plans): every app definition.
    pub(crate) fn root_group(&self, version: &str) -> Value {
        let apps: Vec<Value> = self
            .apps
            .values()
            .filter(|a| !a.deleting)
            .map(|a| {
                let mut d = a.definition.clone();
                d["version"] = json!(a.version);
                d
            })
            .collect();
        json!({"id": "/", "apps": apps, "groups": [], "pods": [], "dependencies": [], "version": version})
    }

    pub(crate) fn service_ports_in_use(&self, except: &str) -> BTreeSet<u16> {
        self.apps
            .values()
            .filter(|a| a.id() != except && !a.deleting)
            .flat_map(|a| port_specs(&a.definition))
            .map(|p| p.service_port)
            .filter(|p| *p != 0)
            .collect()
    }

    /// Fills Marathon's defaults into a submitted app definition and assigns service ports
    /// for `0` entries, as Marathon does on create and update.
    pub(crate) fn normalize(&self, submitted: Value) -> Result<Value, SimError> {
        self.normalize_using(submitted, None)
    }

    /// [`World::normalize`], taking the service ports in use from `used` (and adding the app's)
    /// instead of collecting them from every app: for placing many apps at once.
    pub(crate) fn normalize_using(
        &self,
        submitted: Value,
        used: Option<&mut BTreeSet<u16>>,
    ) -> Result<Value, SimError> {
        let Value::Object(mut d) = submitted else {
            return Err(SimError::InvalidApp {
                id: "?".into(),
                reason: "an app definition must be a JSON object".into(),
            });
        };
        let raw_id = d
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| SimError::InvalidApp {
                id: "?".into(),
                reason: "id: a string is required".into(),
            })?;
        let id = normalize_app_id(raw_id)?;
        d.insert("id".into(), json!(id));
        let invalid = |reason: String| SimError::InvalidApp {
            id: id.clone(),
            reason,
        };
        // Marathon accepts null for optional fields and treats it as absent.
        d.retain(|_, v| !v.is_null());
        match d.get("instances") {
            None => {
                d.insert("instances".into(), json!(1));
            }
            Some(v) if v.as_u64().is_some() => {}
            Some(v) => {
                return Err(invalid(format!(
                    "instances: expected a non-negative integer, got {v}"
                )));
            }
        }
        if let Some(labels) = d.get("labels") {
            let Some(map) = labels.as_object() else {
                return Err(invalid("labels: expected an object of strings".into()));
            };
            if let Some((k, _)) = map.iter().find(|(_, v)| !v.is_string()) {
                return Err(invalid(format!("labels.{k}: label values must be strings")));
            }
        }
        let defaults = [
            ("cmd", Value::Null),
            ("cpus", json!(1.0)),
            ("mem", json!(128.0)),
            ("disk", json!(0)),
            ("gpus", json!(0)),
            ("executor", json!("")),
            ("labels", json!({})),
            ("env", json!({})),
            ("constraints", json!([])),
            ("fetch", json!([])),
            ("dependencies", json!([])),
            ("backoffSeconds", json!(1)),
            ("backoffFactor", json!(1.15)),
            ("maxLaunchDelaySeconds", json!(3600)),
            ("requirePorts", json!(false)),
            (
                "upgradeStrategy",
                json!({"minimumHealthCapacity": 1, "maximumOverCapacity": 1}),
            ),
            (
                "unreachableStrategy",
                json!({"inactiveAfterSeconds": 300, "expungeAfterSeconds": 600}),
            ),
            ("killSelection", json!("YOUNGEST_FIRST")),
            ("healthChecks", json!([])),
            ("readinessChecks", json!([])),
        ];
        for (k, v) in defaults {
            if !v.is_null() {
                d.entry(k).or_insert(v);
            }
        }
        let checks = d["healthChecks"]
            .as_array()
            .cloned()
            .ok_or_else(|| invalid("healthChecks: expected an array".into()))?;
        let checks = checks
            .iter()
            .enumerate()
            .map(|(i, hc)| normalize_health_check(&id, i, hc))
            .collect::<Result<Vec<_>, _>>()?;
        d.insert("healthChecks".into(), Value::Array(checks));

        let mut def = Value::Object(d);
        let mode = network_mode(&def);
        let obj = def.as_object_mut().expect("object");
        if mode == NetworkMode::Host {
            obj.entry("networks").or_insert(json!([{"mode": "host"}]));
            if !obj.contains_key("portDefinitions") {
                // Legacy `ports: [..]`, else Marathon's default of one dynamic port.
                let ports: Vec<Value> = match obj.remove("ports") {
                    Some(Value::Array(ports)) => ports,
                    _ => vec![json!(0)],
                };
                let defs = ports.into_iter().map(|p| json!({"port": p})).collect();
                obj.insert("portDefinitions".into(), Value::Array(defs));
            }
            let Some(defs) = obj.get_mut("portDefinitions").and_then(Value::as_array_mut) else {
                return Err(invalid("portDefinitions: expected an array".into()));
            };
            for (i, pd) in defs.iter_mut().enumerate() {
                let Some(pd) = pd.as_object_mut() else {
                    return Err(invalid(format!("portDefinitions[{i}]: expected an object")));
                };
                if pd
                    .get("port")
                    .and_then(Value::as_u64)
                    .is_none_or(|p| p > 65_535)
                {
                    return Err(invalid(format!(
                        "portDefinitions[{i}].port: expected a port number"
                    )));
                }
                pd.entry("protocol").or_insert(json!("tcp"));
                pd.entry("labels").or_insert(json!({}));
            }
        } else {
            obj.remove("portDefinitions");
            obj.remove("ports");
        }
        match used {
            Some(used) => Self::assign_service_ports(&mut def, &id, used)?,
            None => Self::assign_service_ports(&mut def, &id, &mut self.service_ports_in_use(&id))?,
        }
        Ok(def)
    }

    /// Assigns service ports not in `used` to the `0` entries; adds every port of the app to
    /// `used`.
    fn assign_service_ports(
        def: &mut Value,
        id: &str,
        used: &mut BTreeSet<u16>,
    ) -> Result<(), SimError> {
        let mut next = SERVICE_PORT_MIN;
        let mut assign = |slot: &mut Value| -> Result<(), SimError> {
            if slot.as_u64().unwrap_or(0) != 0 {
                used.insert(as_port(Some(slot)));
                return Ok(());
            }
            while used.contains(&next) {
                next += 1;
            }
            if next > SERVICE_PORT_MAX {
                return Err(SimError::InvalidApp {
                    id: id.into(),
                    reason: "no free service port left in 10000-20000".into(),
                });
            }
            *slot = json!(next);
            used.insert(next);
            Ok(())
        };
        let mode = network_mode(def);
        if mode == NetworkMode::Host {
            for pd in def["portDefinitions"].as_array_mut().into_iter().flatten() {
                assign(&mut pd["port"])?;
            }
        } else {
            let pointer = if def
                .pointer("/container/docker/portMappings")
                .and_then(Value::as_array)
                .is_some_and(|m| !m.is_empty())
            {
                "/container/docker/portMappings"
            } else {
                "/container/portMappings"
            };
            if let Some(mappings) = def.pointer_mut(pointer).and_then(Value::as_array_mut) {
                for m in mappings.iter_mut().filter_map(Value::as_object_mut) {
                    // Mappings without a service port keep none unless it is 0 (Marathon assigns
                    // for 0 and for a missing one in bridge mode).
                    let slot = m.entry("servicePort").or_insert(json!(0));
                    assign(slot)?;
                }
            }
        }
        Ok(())
    }
}

/// Merges a `PUT /v2/apps/{id}` body into the current definition (Marathon's `AppUpdate`:
/// present fields replace).
pub(crate) fn merge_update(current: &Value, update: &Value) -> Result<Value, SimError> {
    let Some(update) = update.as_object() else {
        return Err(SimError::InvalidApp {
            id: current["id"].as_str().unwrap_or("?").into(),
            reason: "an app update must be a JSON object".into(),
        });
    };
    let mut merged: Map<String, Value> = current.as_object().cloned().unwrap_or_default();
    for (k, v) in update {
        if k != "id" {
            merged.insert(k.clone(), v.clone());
        }
    }
    // Switching to container networking drops host port definitions, like Marathon.
    if update.contains_key("container") || update.contains_key("networks") {
        if !update.contains_key("portDefinitions") {
            merged.remove("portDefinitions");
        }
        if !update.contains_key("networks") {
            merged.remove("networks");
        }
    }
    Ok(Value::Object(merged))
}

/// Whether two normalized definitions differ in anything but `instances` (a restart).
pub(crate) fn config_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("instances");
        }
        v
    };
    strip(old) != strip(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_follow_marathon_lb_precedence() {
        assert_eq!(network_mode(&json!({})), NetworkMode::Host);
        assert_eq!(
            network_mode(&json!({"networks": [{"mode": "container/bridge"}]})),
            NetworkMode::Bridge
        );
        assert_eq!(
            network_mode(&json!({"networks": [{"mode": "host"}, {"name": "dcos"}]})),
            NetworkMode::Container
        );
        assert_eq!(
            network_mode(&json!({"container": {"docker": {"network": "BRIDGE"}}})),
            NetworkMode::Bridge
        );
    }

    #[test]
    fn normalize_fills_defaults_and_assigns_service_ports() {
        let w = World::default();
        let d = w.normalize(json!({"id": "group/app/", "portDefinitions": [{"port": 0}, {"port": 10005, "protocol": "udp"}]})).unwrap();
        assert_eq!(d["id"], "/group/app");
        assert_eq!(d["instances"], 1);
        assert_eq!(d["portDefinitions"][0]["port"], 10000);
        assert_eq!(d["portDefinitions"][0]["protocol"], "tcp");
        let specs = port_specs(&d);
        assert!(specs[1].udp && !specs[1].tcp);
        assert_eq!(specs[1].service_port, 10005);
        let err = w.normalize(json!({"id": "/Bad_Id"})).unwrap_err();
        assert!(err.to_string().contains("/Bad_Id"), "{err}");
        let err = w
            .normalize(json!({"id": "/a", "labels": {"X": 1}}))
            .unwrap_err();
        assert!(err.to_string().contains("labels.X"), "{err}");
    }
}
