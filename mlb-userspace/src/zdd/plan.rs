//! zdd's decisions, pure: which app is old and which new, the new app's definition, how far to
//! scale, which old tasks are drained on every load balancer, and when the deployment is done.
//! Everything here takes values (app JSON, parsed stats rows) and returns values; the driver
//! ([`super::run`]) does the talking.
use std::collections::{BTreeSet, HashMap};

use serde_json::{Value, json};

use super::ZddError;
use crate::stats::{self, csv::Record};

pub const GROUP: &str = "HAPROXY_DEPLOYMENT_GROUP";
pub const ALT_PORT: &str = "HAPROXY_DEPLOYMENT_ALT_PORT";
pub const COLOUR: &str = "HAPROXY_DEPLOYMENT_COLOUR";
pub const STARTED_AT: &str = "HAPROXY_DEPLOYMENT_STARTED_AT";
pub const TARGET: &str = "HAPROXY_DEPLOYMENT_TARGET_INSTANCES";
pub const NEW_INSTANCES: &str = "HAPROXY_DEPLOYMENT_NEW_INSTANCES";
pub const APP_ID: &str = "HAPROXY_APP_ID";
pub const PORT0: &str = "HAPROXY_0_PORT";

/// A label of `app` (empty when absent).
pub fn label<'a>(app: &'a Value, name: &str) -> &'a str {
    app["labels"][name].as_str().unwrap_or("")
}

/// A label of `app` read as a number.
pub fn label_num(app: &Value, name: &str) -> Result<u64, ZddError> {
    label(app, name)
        .parse()
        .map_err(|_| ZddError::MissingField(format!("{name} label of {} is not a number", id(app))))
}

pub fn id(app: &Value) -> &str {
    app["id"].as_str().unwrap_or("")
}

pub fn instances(app: &Value) -> u64 {
    app["instances"].as_u64().unwrap_or(0)
}

/// Checks what zdd needs of the app definition: an id, labels, the deployment group and the
/// alternate port.
pub fn validate(app: &Value) -> Result<(), ZddError> {
    if id(app).is_empty() {
        return Err(ZddError::MissingField("app definition has no id".into()));
    }
    if !app["labels"].is_object() {
        return Err(ZddError::MissingField(
            "app definition has no labels".into(),
        ));
    }
    for name in [GROUP, ALT_PORT] {
        if label(app, name).is_empty() {
            return Err(ZddError::MissingField(format!("no {name} label")));
        }
    }
    label_num(app, ALT_PORT).map(|_| ())
}

/// The JSON pointers of the first service port, in the order zdd looks: Docker port mappings
/// (Marathon ≤ 1.4), container port mappings (1.5+), `portDefinitions`, legacy `ports`.
const PORT_PLACES: [&str; 4] = [
    "/container/docker/portMappings/0/servicePort",
    "/container/portMappings/0/servicePort",
    "/portDefinitions/0/port",
    "/ports/0",
];

/// The app's first service port, whichever shape declares it (zdd.py reads only `ports` of the
/// previous app, and crashes on apps that declare only `portDefinitions`).
pub fn service_port(app: &Value) -> Option<u64> {
    PORT_PLACES
        .iter()
        .find_map(|p| app.pointer(p).and_then(Value::as_u64))
}

/// Sets the first service port wherever the app declares it (first place found).
fn set_service_port(app: &mut Value, port: u64) {
    for p in PORT_PLACES {
        if let Some(v) = app.pointer_mut(p) {
            *v = json!(port);
            return;
        }
    }
    app["portDefinitions"] = json!([{ "port": port, "protocol": "tcp" }]);
}

/// How the run was asked to treat a deployment already in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Fail: a deployment is in progress.
    No,
    /// Carry on towards the newest colour (`--resume`, `--complete-cur`).
    Current,
    /// Roll back towards the previous colour (`--complete-prev`).
    Previous,
}

/// With two apps of the group live, which is the old one and which the new one.
pub fn resume_roles(mut apps: Vec<Value>, resume: Resume) -> Result<(Value, Value), ZddError> {
    if apps.len() < 2 {
        return Err(ZddError::InvalidArg(
            "--resume/--complete-cur/--complete-prev need a deployment in progress (two apps of the group)".into(),
        ));
    }
    apps.sort_by(|a, b| label(b, STARTED_AT).cmp(label(a, STARTED_AT)));
    let (newest, previous) = (apps.remove(0), apps.remove(0));
    match resume {
        Resume::No => Err(ZddError::InProgress(format!(
            "{} and {} are both live: use --resume, --complete-cur or --complete-prev",
            id(&previous),
            id(&newest)
        ))),
        Resume::Current => Ok((previous, newest)),
        Resume::Previous => Ok((newest, previous)),
    }
}

/// The flags that shape the new app.
#[derive(Clone, Copy, Debug)]
pub struct Sizing {
    pub initial_instances: u64,
    pub new_instances: u64,
}

/// The new app's definition: the other colour, the alternate port, `-<colour>` id, zdd's labels.
/// `previous` is the newest live app of the group, if any; `now` the start timestamp.
pub fn prepare(
    app: &Value,
    previous: Option<&Value>,
    sizing: Sizing,
    now: &str,
) -> Result<Value, ZddError> {
    validate(app)?;
    let mut new = app.clone();
    let original_port = service_port(app)
        .ok_or_else(|| ZddError::MissingField(format!("{} declares no service port", id(app))))?;
    let alt_port = label_num(app, ALT_PORT)?;
    let (colour, port, target, new_instances) = match previous {
        Some(prev) => {
            let colour = if label(prev, COLOUR) == "blue" {
                "green"
            } else {
                "blue"
            };
            let port = if service_port(prev) == Some(alt_port) {
                label_num(prev, PORT0).unwrap_or(original_port)
            } else {
                alt_port
            };
            let target = instances(prev);
            let new_instances = sizing.new_instances.min(target);
            let first = if new_instances > 0 {
                new_instances
            } else {
                target
            };
            new["instances"] = json!(sizing.initial_instances.min(first));
            (colour, port, target, new_instances)
        }
        None => ("blue", original_port, instances(app), 0),
    };
    let labels = &mut new["labels"];
    labels[APP_ID] = json!(id(app));
    labels[PORT0] = json!(original_port.to_string());
    labels[NEW_INSTANCES] = json!(new_instances.to_string());
    labels[TARGET] = json!(target.to_string());
    labels[COLOUR] = json!(colour);
    labels[STARTED_AT] = json!(now);
    new["id"] = json!(format!("/{}-{colour}", id(app).trim_start_matches('/')));
    set_service_port(&mut new, port);
    Ok(new)
}

/// The stats proxy both colours are merged into: `<group>_<original port>`.
pub fn proxy_name(new_app: &Value) -> String {
    let port = label(new_app, PORT0).parse().unwrap_or(0);
    stats::proxy_name(label(new_app, GROUP), port)
}

/// The names a task's server may have in a stats CSV: mlb's (`<ip>_<port>`) and HAProxy's
/// (`<host>_<port>`, or `<host>_<ip>_<port>` when the host is a name).
pub fn server_names(task: &Value) -> Vec<String> {
    let host = task["host"].as_str().unwrap_or("");
    let Some(port) = task["ports"][0].as_u64() else {
        return Vec::new();
    };
    let clean = |s: &str| s.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_");
    let mut names = vec![format!("{}_{port}", clean(host))];
    let ips = task["ipAddresses"].as_array().into_iter().flatten();
    for ip in ips.filter_map(|a| a["ipAddress"].as_str()) {
        names.push(format!("{}_{}_{port}", clean(host), clean(ip)));
        names.push(format!("{}_{port}", clean(ip)));
    }
    names
}

/// What the load balancers' stats say about the old tasks.
#[derive(Debug, PartialEq, Eq)]
pub enum Drain {
    /// Not yet: why.
    Wait(String),
    /// These old tasks are out of rotation with no session left on every load balancer.
    Drained(Vec<String>),
    /// The load balancers drain new tasks instead: they take the old app for the new one (it
    /// was scaled last, as when rolling back), so no old task drains until the new app grows.
    Inverted,
}

/// The facts a drain check needs besides the stats.
pub struct DrainInput<'a> {
    /// One parsed stats CSV per load balancer.
    pub stats: &'a [Vec<Record>],
    pub pxname: &'a str,
    pub old_tasks: &'a [Value],
    pub new_tasks: &'a [Value],
    /// `new.instances + old.instances`: every task must be listed before anything is killed.
    pub expected_listeners: usize,
    pub target: u64,
}

/// zdd's `find_tasks_to_kill` for one round: every load balancer lists every task, enough are
/// UP, and the old tasks that are MAINT with no current or queued session everywhere. With
/// `timed_out`, old tasks MAINT everywhere count even with sessions left.
pub fn drained(input: &DrainInput<'_>, timed_out: bool) -> Drain {
    let lbs = input.stats.len().max(1);
    let listeners: Vec<&Record> = input
        .stats
        .iter()
        .flatten()
        .filter(|r| r.get("pxname") == input.pxname && r.is_server())
        .collect();
    if listeners.len() / lbs != input.expected_listeners {
        return Drain::Wait(format!(
            "{} servers listed per load balancer, want {}",
            listeners.len() / lbs,
            input.expected_listeners
        ));
    }
    let up = listeners
        .iter()
        .filter(|r| r.get("status") == "UP" || r.get("status") == "no check");
    if ((up.count() / lbs) as u64) < input.target {
        return Drain::Wait(format!("fewer than {} servers up", input.target));
    }
    let mut per_name: HashMap<&str, (usize, usize)> = HashMap::new();
    for r in &listeners {
        let maint = r.get("status") == "MAINT";
        let idle = r.int("scur") == Ok(0) && r.int("qcur") == Ok(0);
        let e = per_name.entry(r.get("svname")).or_default();
        e.0 += usize::from(maint);
        e.1 += usize::from(maint && (idle || timed_out));
    }
    let ready: BTreeSet<String> = input
        .old_tasks
        .iter()
        .filter(|t| {
            server_names(t)
                .iter()
                .any(|n| per_name.get(n.as_str()).is_some_and(|&(_, ok)| ok == lbs))
        })
        .filter_map(|t| t["id"].as_str().map(str::to_owned))
        .collect();
    if ready.is_empty() {
        let maint = |t: &&Value| {
            server_names(t)
                .iter()
                .any(|n| per_name.get(n.as_str()).is_some_and(|&(m, _)| m > 0))
        };
        if input.new_tasks.iter().any(|t| maint(&t)) {
            return Drain::Inverted;
        }
        return Drain::Wait("no old server drained yet".into());
    }
    Drain::Drained(ready.into_iter().collect())
}

/// Whether the load balancers can have drained an old task: they drain at most
/// `healthy new + old − target` of them (marathon-lb's rule, which mlb follows), so none while
/// both colours together are at most the target (completing a hybrid deployment starts there:
/// the new app must grow first).
pub fn may_drain(old: &Value, new: &Value) -> Result<bool, ZddError> {
    let target = label_num(new, TARGET)?;
    Ok(instances(old) > 0 && instances(old) + instances(new) > target)
}

/// How far to scale the new app next: +`linear` per step, else about ×1.5, straight to `goal`
/// once it reaches the old app's size; never beyond `goal`.
pub fn next_instances(current: u64, old_instances: u64, goal: u64, linear: u64) -> u64 {
    let next = if linear > 0 {
        current + linear
    } else {
        let grown = current + current.div_ceil(2);
        if grown >= old_instances { goal } else { grown }
    };
    next.min(goal)
}

/// Whether the deployment has reached its end.
#[derive(Debug, PartialEq, Eq)]
pub enum Finish {
    /// Not yet.
    No,
    /// The new app is at its target and every old task drained: delete the old app.
    DeleteOld,
    /// A hybrid deployment reached its split: leave both colours live.
    Hybrid,
}

pub fn finish(old: &Value, new: &Value, drained: usize) -> Result<Finish, ZddError> {
    let target = label_num(new, TARGET)?;
    let hybrid = label(new, NEW_INSTANCES).parse::<u64>().unwrap_or(0);
    let (n, o) = (instances(new), instances(old));
    Ok(if hybrid > 0 {
        if n == hybrid && o == target.saturating_sub(hybrid) {
            Finish::Hybrid
        } else {
            Finish::No
        }
    } else if n == target && drained as u64 == o {
        Finish::DeleteOld
    } else {
        Finish::No
    })
}

/// The new app's goal: the target, or the hybrid split.
pub fn goal(new: &Value) -> Result<u64, ZddError> {
    let target = label_num(new, TARGET)?;
    let hybrid = label(new, NEW_INSTANCES).parse::<u64>().unwrap_or(0);
    Ok(if hybrid > 0 {
        hybrid.min(target)
    } else {
        target
    })
}
