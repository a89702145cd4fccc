//! `mlb explain`: for every app and service port, what is exposed where, or exactly why not.
//!
//! The explanation is produced by the same pass that computes the [`DesiredState`], so it can
//! never disagree with what the dataplanes were given.
use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    time::SystemTime,
};

use serde::Serialize;

use crate::{
    marathon::types::AppList,
    model::{
        BackendId, BackendState, DesiredState, Protocol,
        backends::TaskRejection,
        build::{ModelOptions, evaluate},
        directives::DirectiveOutcome,
        health::{HealthCache, HealthVerdict},
        ports::{NetworkingMode, PortSource},
    },
};

/// Which dataplane serves a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    /// Plain TCP/UDP forwarding (XDP or the userspace L4 proxy).
    L4,
    /// The HTTP/TLS proxy.
    Http,
}

/// One app (or merged deployment group).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AppExplanation {
    /// The id mlb uses (`/<group>` for a merged deployment group).
    pub app_id: String,
    /// The Marathon apps it comes from (several for a deployment group, oldest first).
    pub marathon_app_ids: Vec<String>,
    /// `None` when the app was not examined that far.
    pub networking: Option<NetworkingMode>,
    /// Whether at least one port is exposed.
    pub exposed: bool,
    /// Why nothing of the app is considered at all (invalid JSON, mlb itself, no service port).
    pub problem: Option<String>,
    /// Ignored labels and options.
    pub warnings: Vec<String>,
    pub ports: Vec<PortExplanation>,
}

/// One service port of an app.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PortExplanation {
    /// `{n}` in `HAPROXY_{n}_*`.
    pub index: usize,
    /// After `HAPROXY_{n}_PORT`; `None` when none could be found or assigned.
    pub service_port: Option<u16>,
    /// Where the port came from (`portMappings`, `portDefinitions`, `ports`, auto-assigned).
    pub source: PortSource,
    pub protocols: Vec<Protocol>,
    pub groups: Vec<String>,
    pub exposed: bool,
    pub dataplane: Option<Dataplane>,
    pub vhosts: Vec<String>,
    pub paths: Vec<String>,
    pub bind_addr: Option<IpAddr>,
    /// What each HAProxy directive of the port's template labels did.
    pub directives: Vec<DirectiveOutcome>,
    /// Why the port is not exposed; `None` when it is.
    pub reason: Option<String>,
    /// Tasks routed to (active or draining).
    pub backends: Vec<BackendExplanation>,
    /// Tasks not routed to, with the reason.
    pub excluded_tasks: Vec<TaskExclusion>,
}

impl PortExplanation {
    /// Gives back the room its lists were grown with: an explanation is kept for as long as
    /// its app does (at 10,000 apps, a list grown to 4 for 1 entry is megabytes).
    pub(crate) fn shrink_to_fit(&mut self) {
        self.groups.shrink_to_fit();
        self.vhosts.shrink_to_fit();
        self.paths.shrink_to_fit();
        self.directives.shrink_to_fit();
        self.backends.shrink_to_fit();
        self.excluded_tasks.shrink_to_fit();
    }
}

/// A task that takes part in a service.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendExplanation {
    pub id: BackendId,
    pub addr: SocketAddr,
    pub state: BackendState,
    pub health: HealthVerdict,
}

/// A task that does not take part in a service, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskExclusion {
    pub task_id: String,
    pub reason: TaskRejection,
}

/// Explains every app of `apps` (including the ones that did not parse), in app-id order. Takes
/// the same inputs as [`super::desired_state`]; passing the health cache that call returned
/// gives the same verdicts it used.
pub fn explain(
    apps: &AppList,
    opts: &ModelOptions,
    health: &HealthCache,
    now: SystemTime,
) -> Vec<AppExplanation> {
    evaluate(&apps.refs(), opts, health, now).explanations
}

/// Checks an explanation list against a state: every port explained as exposed is in the state.
/// For the admin API's self-check and the tests.
pub fn consistent_with(explanations: &[AppExplanation], state: &DesiredState) -> bool {
    explanations.iter().all(|app| {
        app.ports.iter().filter(|p| p.exposed).all(|p| {
            let Some(port) = p.service_port else {
                return false;
            };
            match p.dataplane {
                Some(Dataplane::Http) => state
                    .http
                    .values()
                    .any(|s| s.key.app_id == app.app_id && s.key.port_index == p.index),
                Some(Dataplane::L4) => p.protocols.iter().all(|proto| {
                    state.l4.values().any(|s| {
                        s.key.port == port && s.key.protocol == *proto && s.app_id == app.app_id
                    })
                }),
                None => false,
            }
        })
    })
}

/// Human-readable rendering for `mlb explain`.
pub fn render_text<'a>(apps: impl IntoIterator<Item = &'a AppExplanation>) -> String {
    let mut out = String::new();
    for app in apps {
        let from = if app.marathon_app_ids.len() > 1 || app.marathon_app_ids != [app.app_id.clone()]
        {
            format!(" (from {})", app.marathon_app_ids.join(", "))
        } else {
            String::new()
        };
        let status = match (&app.problem, app.exposed) {
            (Some(p), _) => format!("NOT EXPOSED: {p}"),
            (None, true) => "exposed".to_owned(),
            (None, false) => "NOT EXPOSED".to_owned(),
        };
        let _ = writeln!(out, "{}{from}: {status}", app.app_id);
        for w in &app.warnings {
            let _ = writeln!(out, "  warning: {w}");
        }
        for p in &app.ports {
            let port = p
                .service_port
                .map_or_else(|| "?".to_owned(), |p| p.to_string());
            let protocols: Vec<String> = p.protocols.iter().map(ToString::to_string).collect();
            let _ = write!(out, "  port {} ({port}/{})", p.index, protocols.join(","));
            if let Some(dp) = p.dataplane {
                let _ = write!(
                    out,
                    " {}",
                    if dp == Dataplane::Http { "http" } else { "l4" }
                );
            }
            if !p.vhosts.is_empty() {
                let _ = write!(out, " vhosts {}", p.vhosts.join(","));
            }
            if !p.paths.is_empty() {
                let _ = write!(out, " paths {}", p.paths.join(" "));
            }
            if let Some(addr) = p.bind_addr {
                let _ = write!(out, " bind {addr}");
            }
            if !p.groups.is_empty() {
                let _ = write!(out, " group {}", p.groups.join(","));
            }
            match &p.reason {
                None => {
                    let _ = writeln!(out, ": exposed");
                }
                Some(r) => {
                    let _ = writeln!(out, ": NOT EXPOSED: {r}");
                }
            }
            for b in &p.backends {
                let state = match b.state {
                    BackendState::Active => "active",
                    BackendState::Draining => "draining",
                };
                let health = serde_json::to_value(b.health)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let _ = writeln!(out, "    backend {} {} {state} {health}", b.id, b.addr);
            }
            for t in &p.excluded_tasks {
                let _ = writeln!(out, "    excluded task {}: {}", t.task_id, t.reason);
            }
            for d in &p.directives {
                let _ = writeln!(out, "    template {d}");
            }
        }
    }
    out
}
