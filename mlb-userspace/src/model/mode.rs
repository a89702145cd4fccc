//! A service port's mode (tcp or http) and the active health check mlb runs for it, from the
//! app's Marathon health checks and its labels, as marathon-lb decides them.
use std::time::Duration;

use crate::{
    marathon::types::{App, HealthCheckDef, HealthCheckProtocol},
    model::{
        HealthCheck, HealthCheckKind,
        labels::{Mode, PortLabels},
        ports::ServicePortSpec,
    },
};

/// What [`resolve_mode`] decided for one service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ModeDecision {
    pub mode: Mode,
    pub check: Option<HealthCheck>,
    /// `BACKEND_HEALTHCHECK_PORT_INDEX` named a port the app does not have.
    pub warning: Option<String>,
}

/// Mode, as marathon-lb: an HTTP check makes it http, the MODE label overrides that, a
/// `BACKEND_HEALTHCHECK_PORT_INDEX` check of an HTTP kind forces http, else a vhost makes it
/// http and everything else is tcp. `specs` is the app's whole service-port list.
pub(crate) fn resolve_mode(
    app: &App,
    spec: &ServicePortSpec,
    specs: &[ServicePortSpec],
    labels: &PortLabels,
) -> ModeDecision {
    let n = spec.index;
    let own_check = check_for_index(app, spec.task_port_index);
    let mut mode = own_check
        .filter(|c| c.protocol == HealthCheckProtocol::Http)
        .map(|_| Mode::Http);
    if let Some(m) = labels.mode {
        mode = Some(m);
    }
    let mut check = own_check.map(|c| active_check(c, spec.task_port_index));
    let mut warning = None;
    if let Some(k) = labels.healthcheck_port_index {
        match specs.get(k) {
            None => {
                warning = Some(format!(
                    "label HAPROXY_{n}_BACKEND_HEALTHCHECK_PORT_INDEX={k}: the app has {} service port(s); checking port {n} itself",
                    specs.len()
                ));
            }
            // The port's own check, run against the other port.
            Some(other) if own_check.is_some() => {
                check = own_check.map(|c| active_check(c, other.task_port_index));
            }
            Some(other) => {
                if let Some(c) = check_for_index(app, other.task_port_index) {
                    check = Some(active_check(c, other.task_port_index));
                    if is_http_like(c.protocol) {
                        mode = Some(Mode::Http);
                    }
                }
            }
        }
    }
    let mode = mode.unwrap_or(if labels.vhosts.is_empty() {
        Mode::Tcp
    } else {
        Mode::Http
    });
    ModeDecision {
        mode,
        check,
        warning,
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        marathon::types::parse_app,
        model::{labels::port_labels, ports::ServicePortAssigner},
    };

    /// Resolves port `n` of an app given as Marathon JSON (host networking).
    fn decide(app: serde_json::Value, n: usize) -> ModeDecision {
        let app = parse_app(&app).unwrap();
        let specs = ServicePortAssigner::new(None).service_ports(&app);
        let labels = port_labels(&app.labels, n).0.unwrap();
        resolve_mode(&app, &specs[n], &specs, &labels)
    }

    fn two_ports(checks: serde_json::Value, labels: serde_json::Value) -> serde_json::Value {
        json!({"id": "/a", "portDefinitions": [{"port": 10000}, {"port": 10001}],
               "healthChecks": checks, "labels": labels})
    }

    #[test]
    fn http_check_label_and_vhost_decide_in_that_order() {
        let http_check = json!([{"protocol": "HTTP", "path": "/h"}]);
        let d = decide(two_ports(http_check.clone(), json!({})), 0);
        assert_eq!(d.mode, Mode::Http);
        assert_eq!(
            d.check.unwrap().kind,
            HealthCheckKind::Http { path: "/h".into() }
        );
        let forced = decide(two_ports(http_check, json!({"HAPROXY_0_MODE": "tcp"})), 0);
        assert_eq!(forced.mode, Mode::Tcp, "MODE beats the HTTP check");
        assert!(forced.check.is_some(), "the check still runs");
        let vhost = decide(
            two_ports(json!([]), json!({"HAPROXY_0_VHOST": "a.example"})),
            0,
        );
        assert_eq!((vhost.mode, vhost.check), (Mode::Http, None));
        assert_eq!(decide(two_ports(json!([]), json!({})), 0).mode, Mode::Tcp);
    }

    #[test]
    fn healthcheck_port_index_borrows_the_other_ports_check() {
        // Port 0 has no check of its own: it takes port 1's, and its HTTP kind forces http
        // even over MODE=tcp.
        let d = decide(
            two_ports(
                json!([{"protocol": "MESOS_HTTP", "portIndex": 1}]),
                json!({"HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX": "1", "HAPROXY_0_MODE": "tcp"}),
            ),
            0,
        );
        assert_eq!(d.mode, Mode::Http);
        assert_eq!(d.check.unwrap().port_index, 1);
        // Port 1 has a TCP check of its own: that check, run against port 0's task port.
        let d = decide(
            two_ports(
                json!([{"protocol": "TCP", "portIndex": 1}, {"protocol": "HTTPS", "portIndex": 0}]),
                json!({"HAPROXY_1_BACKEND_HEALTHCHECK_PORT_INDEX": "0"}),
            ),
            1,
        );
        let check = d.check.unwrap();
        assert_eq!((check.kind, check.port_index), (HealthCheckKind::Tcp, 0));
        assert_eq!(d.mode, Mode::Tcp);
    }

    #[test]
    fn healthcheck_port_index_out_of_range_warns_and_checks_the_port_itself() {
        let d = decide(
            two_ports(
                json!([{"protocol": "TCP", "portIndex": 1}]),
                json!({"HAPROXY_1_BACKEND_HEALTHCHECK_PORT_INDEX": "5"}),
            ),
            1,
        );
        assert_eq!(d.check.unwrap().port_index, 1);
        assert_eq!(
            d.warning.as_deref(),
            Some(
                "label HAPROXY_1_BACKEND_HEALTHCHECK_PORT_INDEX=5: the app has 2 service port(s); checking port 1 itself"
            )
        );
    }

    #[test]
    fn command_checks_and_checks_with_a_port_belong_to_no_service_port() {
        let d = decide(
            two_ports(
                json!([{"protocol": "COMMAND"}, {"protocol": "HTTP", "port": 8080}]),
                json!({}),
            ),
            0,
        );
        assert_eq!((d.mode, d.check), (Mode::Tcp, None));
    }
}
