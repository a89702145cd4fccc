//! Marathon apps → [`DesiredState`] (and, in the same pass, the `mlb explain` records).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime},
};

use crate::{
    marathon::types::{App, AppList, HealthCheckDef, HealthCheckProtocol},
    model::{
        Backend, BackendId, BackendState, DesiredState, HealthCheck, HealthCheckKind, HttpService,
        HttpServiceKey, L4Service, L4ServiceKey, Protocol, Rejected, Warning,
        deployment::{EffectiveApp, merge_deployment_groups},
        explain::{AppExplanation, Dataplane, PortExplanation, TaskExclusion},
        groups::{group_matches, mismatch_reason, port_groups},
        health::{HealthCache, task_health, task_readiness, task_state, update_cache},
        labels::{AppLabels, Mode, app_labels, port_labels, template_labels},
        ports::{
            NetworkingMode, ServicePortAssigner, ServicePortSpec, networking_mode, task_ip,
            task_ports,
        },
    },
};

/// Options of the model (from `mlb run` flags; see [`ModelOptions::new`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelOptions {
    /// `--group` (repeatable): expose services in these groups; `*` exposes everything. Empty
    /// exposes nothing.
    pub groups: Vec<String>,
    /// `--strict-mode`: only ports labelled `HAPROXY_{n}_ENABLED=true` are exposed.
    pub strict_mode: bool,
    /// `--health-check`: apps with Marathon health checks only get tasks Marathon says are
    /// healthy (last known health when Marathon has no result, e.g. after a failover).
    pub health_check: bool,
    /// `--min/max-serv-port-ip-per-task` (default 10050–10100): range for auto-assigned service
    /// ports of IP-per-task apps without any; `None` disables auto-assignment.
    pub ip_per_task_port_range: Option<(u16, u16)>,
    /// `FRAMEWORK_NAME`: the app whose id (without the leading `/`) equals it is mlb itself and
    /// is never load-balanced.
    pub framework_name: Option<String>,
    /// Agent host names resolved by the caller (the model does no DNS). A task whose `host` is
    /// neither an address nor in this map is not routed. See [`super::hosts_to_resolve`].
    pub host_addrs: BTreeMap<String, IpAddr>,
    /// Ports mlb itself listens on (80, 443, the admin port…): a service port among them is
    /// rejected instead of fighting for the socket.
    pub reserved_ports: BTreeSet<u16>,
    /// How long the health cache remembers a task that no snapshot contains (default 10 min).
    pub health_cache_ttl: Duration,
    /// Most tasks the health cache remembers (marathon-lb's `--lru-cache-capacity`, 1000).
    pub health_cache_capacity: usize,
}

/// Options that cannot work together.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Both bounds 0 (off), or both set with min ≤ max.
    #[error(
        "--min-serv-port-ip-per-task {min} / --max-serv-port-ip-per-task {max}: set both to 0 (off) or both with min <= max"
    )]
    PortRange { min: u16, max: u16 },
}

impl ModelOptions {
    /// marathon-lb's defaults with these groups: not strict, no health gating, auto-assignment
    /// range 10050–10100, no self id, health cache 1000 tasks / 10 minutes.
    pub fn new(groups: Vec<String>) -> Self {
        ModelOptions {
            groups,
            strict_mode: false,
            health_check: false,
            ip_per_task_port_range: Some((10050, 10100)),
            framework_name: None,
            host_addrs: BTreeMap::new(),
            reserved_ports: BTreeSet::new(),
            health_cache_ttl: Duration::from_secs(600),
            health_cache_capacity: 1000,
        }
    }

    /// Sets the auto-assignment range (`0, 0` disables it), checked like marathon-lb.
    pub fn with_ip_per_task_port_range(mut self, min: u16, max: u16) -> Result<Self, ModelError> {
        self.ip_per_task_port_range = match (min, max) {
            (0, 0) => None,
            (min, max) if min != 0 && max != 0 && min <= max => Some((min, max)),
            _ => return Err(ModelError::PortRange { min, max }),
        };
        Ok(self)
    }
}

/// Everything one pass produces.
pub(crate) struct Evaluation {
    pub state: DesiredState,
    pub health: HealthCache,
    pub explanations: Vec<AppExplanation>,
    pub claims: Claims,
}

fn blank_app_explanation(app_id: &str, problem: String) -> AppExplanation {
    AppExplanation {
        app_id: app_id.to_owned(),
        marathon_app_ids: vec![app_id.to_owned()],
        networking: None,
        exposed: false,
        problem: Some(problem),
        warnings: vec![],
        ports: vec![],
    }
}

pub(crate) fn evaluate(
    list: &AppList,
    opts: &ModelOptions,
    health: &HealthCache,
    now: SystemTime,
) -> Evaluation {
    let mut state = DesiredState::default();
    let mut explanations = Vec::new();
    for e in &list.invalid {
        let reason = format!("invalid app JSON: field {}: {}", e.field, e.reason);
        state.rejected.push(Rejected {
            app_id: e.app_id.clone(),
            port_index: None,
            reason: reason.clone(),
        });
        explanations.push(blank_app_explanation(&e.app_id, reason));
    }
    let (me, apps): (Vec<&App>, Vec<&App>) = list.apps.iter().partition(|a| {
        opts.framework_name
            .as_deref()
            .is_some_and(|name| a.id.trim_start_matches('/') == name.trim_start_matches('/'))
    });
    for app in me {
        explanations.push(blank_app_explanation(
            &app.id,
            format!(
                "this is mlb itself (FRAMEWORK_NAME={}); it never load-balances itself",
                opts.framework_name.as_deref().unwrap_or_default()
            ),
        ));
    }
    let cache = update_cache(
        health,
        apps.iter().copied(),
        now,
        opts.health_cache_ttl,
        opts.health_cache_capacity,
    );
    let (effective, merge_rejected, merge_warnings) =
        merge_deployment_groups(&apps, |app, task| {
            task_state(task) == Ok(BackendState::Active) && task_health(app, task, &cache).passes()
        });
    for r in merge_rejected {
        explanations.push(blank_app_explanation(&r.app_id, r.reason.clone()));
        state.rejected.push(r);
    }
    // Auto-assignment follows the API order (as marathon-lb), everything else the id order.
    let mut assigner = ServicePortAssigner::new(opts.ip_per_task_port_range);
    let mut work: Vec<(EffectiveApp, Vec<ServicePortSpec>)> = effective
        .into_iter()
        .map(|e| {
            let specs = assigner.service_ports(&e.app);
            (e, specs)
        })
        .collect();
    work.sort_by(|a, b| a.0.app.id.cmp(&b.0.app.id));
    let mut claims = Claims::default();
    for (eff, specs) in &work {
        let mut ctx = AppContext {
            eff,
            mode: networking_mode(&eff.app),
            labels: app_labels(&eff.app.labels).unwrap_or_default(),
            opts,
            cache: &cache,
            warnings: Vec::new(),
        };
        for (source, message) in &merge_warnings {
            if eff.source_ids.contains(source) {
                ctx.warnings.push((None, format!("{source}: {message}")));
            }
        }
        let mut expl = ctx.evaluate_app(specs, &mut state, &mut claims);
        for (port_index, message) in ctx.warnings {
            state.warnings.push(Warning {
                app_id: eff.app.id.clone(),
                port_index,
                message: message.clone(),
            });
            expl.warnings.push(message);
        }
        explanations.push(expl);
    }
    explanations.sort_by(|a, b| a.app_id.cmp(&b.app_id));
    state
        .rejected
        .sort_by(|a, b| (&a.app_id, a.port_index).cmp(&(&b.app_id, b.port_index)));
    Evaluation {
        state,
        health: cache,
        explanations,
        claims,
    }
}

/// Which Marathon check belongs to service-port index `i`: the first with `portIndex == i`
/// (absent = 0, Marathon's default). Checks with an explicit `port` and COMMAND checks belong
/// to no service port (see docs/compatibility.md, quirk 3).
fn check_for_index(app: &App, i: usize) -> Option<&HealthCheckDef> {
    app.health_checks.iter().find(|c| {
        c.port.is_none()
            && !matches!(
                c.protocol,
                HealthCheckProtocol::Command | HealthCheckProtocol::Other
            )
            && c.port_index.unwrap_or(0) == i
    })
}

fn is_http_like(p: HealthCheckProtocol) -> bool {
    matches!(
        p,
        HealthCheckProtocol::Http
            | HealthCheckProtocol::Https
            | HealthCheckProtocol::MesosHttp
            | HealthCheckProtocol::MesosHttps
    )
}

/// The active check mlb runs for a Marathon check. HTTPS checks become TCP connect checks: mlb
/// does not probe TLS backends over plain HTTP (marathon-lb did, and they always failed).
fn active_check(def: &HealthCheckDef, port_index: usize) -> HealthCheck {
    let kind = match def.protocol {
        HealthCheckProtocol::Http | HealthCheckProtocol::MesosHttp => HealthCheckKind::Http {
            path: def.path.clone().unwrap_or_else(|| "/".to_owned()),
        },
        _ => HealthCheckKind::Tcp,
    };
    HealthCheck {
        kind,
        port_index,
        interval: Duration::from_secs(def.interval_seconds.unwrap_or(60)),
        timeout: Duration::from_secs(def.timeout_seconds.unwrap_or(20)),
        // marathon-lb renders `fall maxConsecutiveFailures + 1`.
        max_consecutive_failures: def.max_consecutive_failures.unwrap_or(3) + 1,
    }
}

struct AppContext<'a> {
    eff: &'a EffectiveApp<'a>,
    mode: NetworkingMode,
    labels: AppLabels,
    opts: &'a ModelOptions,
    cache: &'a HealthCache,
    warnings: Vec<(Option<usize>, String)>,
}

/// Which app took each exposed (port, protocol), first in app-id order, and which ports more
/// than one app wanted (the incremental model re-evaluates everything when one of those moves).
#[derive(Clone, Debug, Default)]
pub(crate) struct Claims {
    /// (port, protocol) → (app id, service-port index).
    pub owners: BTreeMap<(u16, Protocol), (String, usize)>,
    /// Ports an app was refused because another app had them.
    pub contested: BTreeSet<(u16, Protocol)>,
}

impl AppContext<'_> {
    fn evaluate_app(
        &mut self,
        specs: &[ServicePortSpec],
        state: &mut DesiredState,
        claims: &mut Claims,
    ) -> AppExplanation {
        let app = &self.eff.app;
        let templates = template_labels(&app.labels);
        if !templates.is_empty() {
            self.warnings.push((
                None,
                format!(
                    "raw HAProxy template labels have no effect in mlb (it generates no HAProxy config): {}",
                    templates.join(", ")
                ),
            ));
        }
        let mut expl = AppExplanation {
            app_id: app.id.clone(),
            marathon_app_ids: self.eff.source_ids.clone(),
            networking: Some(self.mode),
            exposed: false,
            problem: None,
            warnings: vec![],
            ports: vec![],
        };
        if specs.is_empty() {
            expl.problem = Some(
                "no service ports: the app declares none (portDefinitions, portMappings servicePort, ports) and none was auto-assigned".into(),
            );
        }
        for spec in specs {
            let mut pe = PortExplanation {
                index: spec.index,
                service_port: spec.port,
                source: spec.source.to_owned(),
                // Known before the labels are read, so a port with a bad label still shows it.
                protocols: spec.protocols.clone().unwrap_or_default(),
                groups: vec![],
                exposed: false,
                dataplane: None,
                vhosts: vec![],
                paths: vec![],
                bind_addr: None,
                reason: None,
                backends: vec![],
                excluded_tasks: vec![],
            };
            if let Err(reason) = self.evaluate_port(spec, specs, &mut pe, state, claims) {
                state.rejected.push(Rejected {
                    app_id: app.id.clone(),
                    port_index: Some(spec.index),
                    reason: reason.clone(),
                });
                pe.reason = Some(reason);
                pe.exposed = false;
                pe.dataplane = None;
            }
            expl.ports.push(pe);
        }
        expl.exposed = expl.ports.iter().any(|p| p.exposed);
        expl
    }

    /// Fills `pe`; `Err` is a rejection (bad label, conflict, unsupported combination). A port
    /// that is simply not exposed (group, disabled, no task) returns `Ok` with `pe.reason` set.
    fn evaluate_port(
        &mut self,
        spec: &ServicePortSpec,
        specs: &[ServicePortSpec],
        pe: &mut PortExplanation,
        state: &mut DesiredState,
        claims: &mut Claims,
    ) -> Result<(), String> {
        let app = &self.eff.app;
        let n = spec.index;
        let (labels, label_warnings) = port_labels(&app.labels, n);
        self.warnings
            .extend(label_warnings.into_iter().map(|w| (Some(n), w)));
        let labels = labels.map_err(|e| e.to_string())?;
        pe.groups = port_groups(&self.labels.groups, labels.groups.as_deref()).to_vec();
        pe.vhosts.clone_from(&labels.vhosts);
        pe.bind_addr = labels.bind_addr;
        pe.protocols = spec.protocols.clone()?;
        if labels.port.is_some() {
            pe.service_port = labels.port;
        }
        let Some(service_port) = pe.service_port else {
            let (min, max) = self.opts.ip_per_task_port_range.unwrap_or_default();
            return Err(format!(
                "no service port: the auto-assignment range {min}-{max} is exhausted (set HAPROXY_{n}_PORT or widen --min/--max-serv-port-ip-per-task)"
            ));
        };

        if !group_matches(&self.opts.groups, &pe.groups) {
            pe.reason = Some(mismatch_reason(&self.opts.groups, &pe.groups));
            return Ok(());
        }
        let enabled = if self.opts.strict_mode {
            labels.enabled == Some(true)
        } else {
            labels.enabled != Some(false)
        };
        if !enabled {
            pe.reason = Some(if self.opts.strict_mode {
                format!("not enabled: --strict-mode is on and HAPROXY_{n}_ENABLED is not true")
            } else {
                format!("disabled by HAPROXY_{n}_ENABLED")
            });
            return Ok(());
        }
        if self.opts.reserved_ports.contains(&service_port) {
            return Err(format!(
                "service port {service_port} is one of mlb's own listeners"
            ));
        }

        // Mode, as marathon-lb: an HTTP check makes it http, the MODE label overrides that,
        // a BACKEND_HEALTHCHECK_PORT_INDEX check of an HTTP kind forces http, else a vhost
        // makes it http and everything else is tcp.
        let own_check = check_for_index(app, spec.task_port_index);
        let mut mode = own_check
            .filter(|c| c.protocol == HealthCheckProtocol::Http)
            .map(|_| Mode::Http);
        if let Some(m) = labels.mode {
            mode = Some(m);
        }
        let n_specs = specs.len();
        let mut check = own_check.map(|c| active_check(c, spec.task_port_index));
        if let Some(k) = labels.healthcheck_port_index {
            if k >= n_specs {
                self.warnings.push((
                    Some(n),
                    format!(
                        "label HAPROXY_{n}_BACKEND_HEALTHCHECK_PORT_INDEX={k}: the app has {n_specs} service port(s); checking port {n} itself"
                    ),
                ));
            } else if let Some(c) = own_check {
                check = Some(active_check(c, specs[k].task_port_index));
            } else if let Some(c) = check_for_index(app, specs[k].task_port_index) {
                check = Some(active_check(c, specs[k].task_port_index));
                if is_http_like(c.protocol) {
                    mode = Some(Mode::Http);
                }
            }
        }
        let mode = mode.unwrap_or(if labels.vhosts.is_empty() {
            Mode::Tcp
        } else {
            Mode::Http
        });
        let http = mode == Mode::Http || labels.tls_passthrough;
        if http {
            if !pe.protocols.contains(&Protocol::Tcp) {
                return Err(format!(
                    "HTTP service on a {} port: HTTP needs tcp",
                    pe.protocols
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
            if labels.tls_passthrough && labels.vhosts.is_empty() {
                return Err(format!(
                    "label MLB_{n}_TLS_PASSTHROUGH=true needs HAPROXY_{n}_VHOST (passthrough routes by SNI)"
                ));
            }
            if !labels.paths.is_empty() && labels.vhosts.is_empty() {
                self.warnings.push((
                    Some(n),
                    format!("label HAPROXY_{n}_PATH has no effect without HAPROXY_{n}_VHOST"),
                ));
            }
        } else {
            if !labels.ssl_certs.is_empty() {
                return Err(format!(
                    "label HAPROXY_{n}_SSL_CERT on a tcp-mode port: mlb terminates TLS only for HTTP services (set HAPROXY_{n}_MODE=http) or passes it through by SNI (MLB_{n}_TLS_PASSTHROUGH=true)"
                ));
            }
            if !labels.allowed_networks.is_empty() {
                return Err(format!(
                    "label HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL is not supported on tcp-mode ports yet; refusing to expose the port without its access list"
                ));
            }
            if !labels.http_only_labels.is_empty() {
                let names: Vec<String> = labels
                    .http_only_labels
                    .iter()
                    .map(|l| format!("HAPROXY_{n}_{l}"))
                    .collect();
                self.warnings.push((
                    Some(n),
                    format!("labels {} have no effect in tcp mode", names.join(", ")),
                ));
            }
        }
        pe.dataplane = Some(if http { Dataplane::Http } else { Dataplane::L4 });
        if http && !labels.vhosts.is_empty() {
            pe.paths.clone_from(&labels.paths);
        }

        let backends = self.backends(spec, pe);
        if backends.is_empty() {
            let health_excluded = pe
                .excluded_tasks
                .iter()
                .any(|t| t.reason.starts_with("not healthy"));
            pe.reason = Some(if app.tasks.is_empty() {
                "no tasks".to_owned()
            } else if health_excluded {
                "no healthy task (--health-check)".to_owned()
            } else {
                "no routable task (see the excluded tasks)".to_owned()
            });
            pe.dataplane = None;
            return Ok(());
        }

        let mut wanted: Vec<(u16, Protocol)> = Vec::new();
        if http {
            wanted.push((service_port, Protocol::Tcp));
        }
        for p in &pe.protocols {
            if !(http && *p == Protocol::Tcp) {
                wanted.push((service_port, *p));
            }
        }
        for w in &wanted {
            if let Some((owner, index)) = claims.owners.get(w) {
                claims.contested.insert(*w);
                return Err(format!(
                    "service port {}/{} is already used by {owner} port {index}",
                    w.0, w.1
                ));
            }
        }
        for w in wanted {
            claims.owners.insert(w, (app.id.clone(), n));
        }

        if http {
            let svc = HttpService {
                key: HttpServiceKey {
                    app_id: app.id.clone(),
                    port_index: n,
                },
                service_port,
                vhosts: labels.vhosts.clone(),
                paths: pe.paths.clone(),
                backends: backends.clone(),
                balance: labels.balance,
                sticky: labels.sticky,
                redirect_to_https: labels.redirect_to_https,
                use_hsts: labels.use_hsts,
                ssl_certs: labels.ssl_certs.clone(),
                bind_addr: labels.bind_addr,
                auth: labels.auth.clone(),
                allowed_networks: labels.allowed_networks.clone(),
                proxypass_path: labels.proxypass_path.clone(),
                revproxy_path: labels.revproxy_path.clone(),
                redirect_root_to: labels.redirect_root_to.clone(),
                weight: labels.weight,
                health_check: check.clone(),
                tls_passthrough: labels.tls_passthrough,
                tls: labels.tls.clone(),
            };
            state.http.insert(svc.key.clone(), svc);
        }
        for p in &pe.protocols {
            if http && *p == Protocol::Tcp {
                continue;
            }
            let key = L4ServiceKey {
                port: service_port,
                protocol: *p,
            };
            state.l4.insert(
                key,
                L4Service {
                    key,
                    app_id: app.id.clone(),
                    bind_addr: labels.bind_addr,
                    backends: backends.clone(),
                    // A TCP connect or HTTP check says nothing about a UDP service.
                    health_check: check.clone().filter(|_| *p == Protocol::Tcp),
                },
            );
        }
        pe.exposed = true;
        Ok(())
    }

    /// The backends of one service port, recording excluded tasks in `pe`. The task port is the
    /// one at the same position as the service port's own entry (`task_port_index`).
    fn backends(&self, spec: &ServicePortSpec, pe: &mut PortExplanation) -> Vec<Backend> {
        let app = &self.eff.app;
        let n = spec.index;
        let mut out = Vec::new();
        for task in &app.tasks {
            let mut exclude = |reason: String| {
                pe.excluded_tasks.push(TaskExclusion {
                    task_id: task.id.clone(),
                    reason,
                });
            };
            let task_state = match task_state(task) {
                Ok(s) => s,
                Err(r) => {
                    exclude(r);
                    continue;
                }
            };
            if let Err(r) = task_readiness(app, task) {
                exclude(r);
                continue;
            }
            let verdict = task_health(app, task, self.cache);
            if self.opts.health_check && !verdict.passes() {
                exclude(format!("not healthy in Marathon: {verdict}"));
                continue;
            }
            let ip = match task_ip(task, self.mode, &self.opts.host_addrs) {
                Ok(ip) => ip,
                Err(r) => {
                    exclude(r);
                    continue;
                }
            };
            let ports = task_ports(app, task, self.mode);
            let at = spec.task_port_index;
            let Some(&port) = ports.get(at).filter(|p| **p != 0) else {
                exclude(format!("task has no port at index {at} (ports {ports:?})"));
                continue;
            };
            let state = if self.eff.draining.contains(&task.id) {
                BackendState::Draining
            } else {
                task_state
            };
            let backend = Backend {
                id: BackendId(format!("{}:{n}", task.id)),
                addr: SocketAddr::new(ip, port),
                weight: 1,
                state,
            };
            pe.backends.push(crate::model::explain::BackendExplanation {
                id: backend.id.clone(),
                addr: backend.addr,
                state,
                health: verdict,
            });
            out.push(backend);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        pe.backends.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}
