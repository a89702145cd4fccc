//! Marathon apps → [`DesiredState`] (and, in the same pass, the `mlb explain` records).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, SystemTime},
};

use crate::{
    marathon::types::{App, AppRefs},
    model::{
        BackendState, DesiredState, Rejected, Tuning, Warning,
        backends::{TaskRouter, no_backend_reason},
        deployment::{EffectiveApp, merge_deployment_groups},
        directives::Effect,
        explain::{AppExplanation, Dataplane, PortExplanation},
        groups::port_groups,
        health::{HealthCache, task_health, task_state, update_cache},
        labels::{AppLabels, Mode, PortLabels, app_labels, port_labels, template_labels},
        mode::resolve_mode,
        port_steps::{
            Claims, ExposedPort, PortRejection, Stop, check_not_reserved, check_selected,
            routed_paths, service_port, validate,
        },
        ports::{NetworkingMode, ServicePortAssigner, ServicePortSpec, networking_mode},
        tuning_labels::{is_read_template, port_tuning},
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
    /// Tuning from the global flags and `HAPROXY_GLOBAL_DEFAULT_OPTIONS`; each port's labels
    /// override it.
    pub tuning: Tuning,
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
            tuning: Tuning::default(),
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
    list: &AppRefs<'_>,
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

struct AppContext<'a> {
    eff: &'a EffectiveApp<'a>,
    mode: NetworkingMode,
    labels: AppLabels,
    opts: &'a ModelOptions,
    cache: &'a HealthCache,
    warnings: Vec<(Option<usize>, String)>,
}

impl AppContext<'_> {
    fn evaluate_app(
        &mut self,
        specs: &[ServicePortSpec],
        state: &mut DesiredState,
        claims: &mut Claims,
    ) -> AppExplanation {
        let app = &self.eff.app;
        let mut templates = template_labels(&app.labels);
        // The ones mlb reads are explained directive by directive on their port.
        templates.retain(|t| !is_read_template(t));
        if !templates.is_empty() {
            self.warnings.push((
                None,
                format!(
                    "these HAProxy template labels have no effect in mlb (it generates no HAProxy config): {}",
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
            // Sized: a list grown from empty holds 4 (each hundreds of bytes) for 1 port.
            ports: Vec::with_capacity(specs.len()),
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
                source: spec.source,
                // Known before the labels are read, so a port with a bad label still shows it.
                protocols: spec.protocols.clone().unwrap_or_default(),
                groups: vec![],
                exposed: false,
                dataplane: None,
                vhosts: vec![],
                paths: vec![],
                bind_addr: None,
                directives: vec![],
                reason: None,
                backends: vec![],
                excluded_tasks: vec![],
            };
            if let Err(stop) = self.evaluate_port(spec, specs, &mut pe, state, claims) {
                let reason = match stop {
                    Stop::NotExposed(why) => why.to_string(),
                    Stop::Rejected(rejection) => {
                        let reason = rejection.to_string();
                        state.rejected.push(Rejected {
                            app_id: app.id.clone(),
                            port_index: Some(spec.index),
                            reason: reason.clone(),
                        });
                        reason
                    }
                };
                pe.reason = Some(reason);
                pe.dataplane = None;
            }
            pe.shrink_to_fit();
            expl.ports.push(pe);
        }
        expl.exposed = expl.ports.iter().any(|p| p.exposed);
        expl
    }

    /// Runs the steps of one service port (see [`super::port_steps`]), filling `pe` as it
    /// goes: a port stopped by a late step still shows what the earlier ones found.
    fn evaluate_port(
        &mut self,
        spec: &ServicePortSpec,
        specs: &[ServicePortSpec],
        pe: &mut PortExplanation,
        state: &mut DesiredState,
        claims: &mut Claims,
    ) -> Result<(), Stop> {
        let eff = self.eff;
        let n = spec.index;
        let (labels, tuning) = self.read_port_labels(spec, pe)?;
        let port = service_port(pe.service_port, n, self.opts.ip_per_task_port_range)?;
        check_selected(self.opts, &pe.groups, labels.enabled, n)?;
        check_not_reserved(&self.opts.reserved_ports, port)?;
        let decision = resolve_mode(&eff.app, spec, specs, &labels);
        self.warn(n, decision.warning);
        let http_mode = decision.mode == Mode::Http || labels.tls_passthrough;
        for warning in validate(n, http_mode, &labels, &pe.protocols)? {
            self.warn(n, Some(warning));
        }
        // A tcp-mode port with a certificate: the proxy terminates TLS and forwards plain TCP,
        // as marathon-lb's HAProxy did (the XDP dataplane cannot terminate TLS).
        let tcp_tls = !http_mode && !labels.ssl_certs.is_empty();
        let http = http_mode || tcp_tls;
        pe.dataplane = Some(if http { Dataplane::Http } else { Dataplane::L4 });
        pe.paths = routed_paths(http_mode, &labels);

        let selection = TaskRouter {
            eff,
            mode: self.mode,
            spec,
            opts: self.opts,
            cache: self.cache,
        }
        .select();
        pe.backends = selection.explained;
        pe.excluded_tasks = selection.excluded;
        if selection.backends.is_empty() {
            return Err(no_backend_reason(&eff.app.tasks, &pe.excluded_tasks).into());
        }
        let exposed = ExposedPort {
            app_id: &eff.app.id,
            index: n,
            service_port: port,
            http,
            tcp_tls,
            protocols: &pe.protocols,
            labels: &labels,
            paths: &pe.paths,
            backends: selection.backends,
            check: decision.check,
            tuning,
        };
        claims.claim(&exposed.wanted(), &eff.app.id, n)?;
        exposed.insert_into(state);
        pe.exposed = true;
        Ok(())
    }

    /// The port's labels, and what explain shows of them (and of the port's protocols) even
    /// when a later step stops the port.
    fn read_port_labels(
        &mut self,
        spec: &ServicePortSpec,
        pe: &mut PortExplanation,
    ) -> Result<(PortLabels, Tuning), PortRejection> {
        let (labels, warnings) = port_labels(&self.eff.app.labels, spec.index);
        for w in warnings {
            self.warn(spec.index, Some(w));
        }
        let labels = labels?;
        pe.groups = port_groups(&self.labels.groups, labels.groups.as_deref()).to_vec();
        pe.vhosts.clone_from(&labels.vhosts);
        pe.bind_addr = labels.bind_addr;
        pe.protocols = spec.protocols.clone()?;
        pe.service_port = labels.port.or(spec.port);
        let (tuning, directives) = port_tuning(&self.eff.app.labels, spec.index)?;
        let not_applied: Vec<String> = directives
            .iter()
            .filter(|d| matches!(d.effect, Effect::NotApplied(_)))
            .map(|d| format!("{}: {}", d.label, d.directive))
            .collect();
        if !not_applied.is_empty() {
            self.warn(
                spec.index,
                Some(format!(
                    "template directives not applied (see mlb explain -v): {}",
                    not_applied.join("; ")
                )),
            );
        }
        pe.directives = directives;
        Ok((labels, self.opts.tuning.clone().overlay(&tuning)))
    }

    fn warn(&mut self, port_index: usize, warning: Option<String>) {
        self.warnings.extend(warning.map(|w| (Some(port_index), w)));
    }
}
