//! Marathon's app JSON, as returned by `GET /v2/apps?embed=apps.tasks&embed=apps.deployments&embed=apps.readiness`
//! (`{"apps": [...]}`) and `GET /v2/apps/{id}?embed=app.tasks` (`{"app": {...}}`).
//!
//! Lenient by design: unknown fields are ignored, every field the model can do without is
//! optional, and `null` counts as absent (marathon-lb's `cleanup_json` drops null keys, and the
//! model relies on the same: `"portMappings": null` means "no port mappings"). Both Marathon ≤1.4
//! shapes (`ipAddress.discovery`, `container.docker.network`, `container.docker.portMappings`,
//! legacy `ports`) and ≥1.5 shapes (`networks`, `container.portMappings`) are accepted.
//!
//! Apps are parsed **one by one** from [`serde_json::Value`]: a malformed app becomes an
//! [`AppParseError`] naming the app and the field, and every other app still parses.
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

/// A Marathon app with the embedded tasks, deployments and readiness results.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct App {
    /// Absolute app id, e.g. `/group/web`.
    pub id: String,
    /// Desired instance count; `None` when Marathon omitted it.
    pub instances: Option<u32>,
    /// App labels (`HAPROXY_*`, `MLB_*`, anything else).
    pub labels: BTreeMap<String, String>,
    /// Legacy (pre-`portDefinitions`) service ports.
    pub ports: Vec<u16>,
    /// `portDefinitions`; `None` when the key is absent (which differs from an empty list: the
    /// model then falls back to the legacy `ports`, as marathon-lb does).
    pub port_definitions: Option<Vec<PortDefinition>>,
    pub container: Option<Container>,
    /// Marathon ≤1.4 IP-per-task (`ipAddress: {networkName, discovery: {ports}}`).
    pub ip_address: Option<IpAddressSpec>,
    /// Marathon ≥1.5 networks; the mode of the last entry is the app's networking mode.
    pub networks: Vec<Network>,
    pub health_checks: Vec<HealthCheckDef>,
    /// `embed=apps.readiness`: readiness results of the tasks of a deployment in progress.
    pub readiness_check_results: Vec<ReadinessCheckResult>,
    /// `embed=apps.deployments`: deployments in progress (empty when none).
    pub deployments: Vec<DeploymentRef>,
    pub tasks: Vec<Task>,
    pub version: Option<String>,
    pub version_info: Option<VersionInfo>,
}

/// One entry of `portDefinitions` (host networking service ports).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PortDefinition {
    /// The service port (0 asks Marathon to assign one; Marathon returns the assigned value).
    pub port: Option<u16>,
    /// `tcp`, `udp` or `tcp,udp`; `None` means tcp.
    pub protocol: Option<String>,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// The app's container.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Container {
    /// `DOCKER` or `MESOS`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub docker: Option<Docker>,
    /// Marathon ≥1.5 port mappings (container level).
    pub port_mappings: Vec<PortMapping>,
}

/// `container.docker`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Docker {
    pub image: Option<String>,
    /// Marathon ≤1.4: `HOST`, `BRIDGE` or `USER`.
    pub network: Option<String>,
    /// Marathon ≤1.4 port mappings.
    pub port_mappings: Vec<PortMapping>,
}

/// One port mapping (bridge or container networking).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PortMapping {
    pub container_port: Option<u16>,
    pub host_port: Option<u16>,
    /// `None` (or 0): no service port, and marathon-lb then skips the mapping when numbering
    /// service ports.
    pub service_port: Option<u16>,
    /// `tcp`, `udp` or `tcp,udp`; `None` means tcp.
    pub protocol: Option<String>,
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// Marathon ≤1.4 `ipAddress`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct IpAddressSpec {
    pub network_name: Option<String>,
    pub discovery: Option<Discovery>,
}

/// `ipAddress.discovery`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Discovery {
    pub ports: Vec<DiscoveryPort>,
}

/// `ipAddress.discovery.ports[]`: a port the task listens on inside its own IP.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DiscoveryPort {
    pub number: Option<u16>,
    pub name: Option<String>,
    pub protocol: Option<String>,
}

/// Marathon ≥1.5 `networks[]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Network {
    /// `host`, `container/bridge` or `container`; absent means `container`.
    pub mode: Option<String>,
    pub name: Option<String>,
}

/// Protocol of a Marathon health check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthCheckProtocol {
    /// Marathon's default.
    #[default]
    Http,
    Https,
    Tcp,
    Command,
    MesosHttp,
    MesosHttps,
    MesosTcp,
    /// Anything newer or unknown: treated as "no active check".
    #[serde(other)]
    Other,
}

/// An app's `healthChecks[]` entry.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HealthCheckDef {
    pub protocol: HealthCheckProtocol,
    pub path: Option<String>,
    pub port_index: Option<usize>,
    /// An explicit port instead of `portIndex`.
    pub port: Option<u16>,
    pub interval_seconds: Option<u64>,
    pub timeout_seconds: Option<u64>,
    pub max_consecutive_failures: Option<u32>,
    pub grace_period_seconds: Option<u64>,
}

/// `readinessCheckResults[]` (only present while a deployment runs).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ReadinessCheckResult {
    pub name: Option<String>,
    pub task_id: String,
    pub ready: bool,
}

/// `deployments[]`: a deployment in progress.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DeploymentRef {
    pub id: String,
}

/// `versionInfo`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VersionInfo {
    pub last_scaling_at: Option<String>,
    pub last_config_change_at: Option<String>,
}

/// An embedded task (`EnrichedTask`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Task {
    pub id: String,
    pub app_id: Option<String>,
    /// Agent host name or address; empty when Marathon has none yet.
    pub host: String,
    /// Host ports (host and bridge networking).
    pub ports: Vec<u16>,
    pub service_ports: Vec<u16>,
    pub ip_addresses: Vec<TaskIpAddress>,
    /// Mesos task state (`TASK_RUNNING`, ...).
    pub state: Option<String>,
    /// `None` when absent (e.g. right after a Marathon leader failover); see the model's
    /// health cache.
    pub health_check_results: Option<Vec<HealthCheckResult>>,
    pub staged_at: Option<String>,
    pub started_at: Option<String>,
    pub version: Option<String>,
    pub slave_id: Option<String>,
}

/// `ipAddresses[]` of a task.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TaskIpAddress {
    /// Kept as text: a bad address skips the task (with a reason), it does not reject the app.
    pub ip_address: Option<String>,
    pub protocol: Option<String>,
}

/// `healthCheckResults[]` of a task (RAML `Health`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HealthCheckResult {
    pub alive: bool,
    pub consecutive_failures: Option<u32>,
    /// Marathon < 1.4.
    pub task_id: Option<String>,
    /// Marathon ≥ 1.4.
    pub instance_id: Option<String>,
    pub first_success: Option<String>,
    pub last_success: Option<String>,
    pub last_failure: Option<String>,
}

/// Marathon's app list, parsed app by app.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppList {
    /// Apps that parsed, in API order (service-port auto-assignment depends on it).
    pub apps: Vec<App>,
    /// Apps that did not parse, each naming the app and the field.
    pub invalid: Vec<AppParseError>,
}

/// An app (or a whole response) that could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("app {app_id}: field {field}: {reason}")]
pub struct AppParseError {
    /// The app's `id` when it has one, else `<app #index>`.
    pub app_id: String,
    /// JSON path inside the app (`tasks[1].ports[0]`), or `.` for the app itself.
    pub field: String,
    pub reason: String,
}

/// Parses one app object. Nulls count as absent; unknown fields are ignored.
pub fn parse_app(v: &Value) -> Result<App, AppParseError> {
    parse_app_at(v, None)
}

pub(crate) fn parse_app_at(v: &Value, index: Option<usize>) -> Result<App, AppParseError> {
    let app_id = v
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| match index {
            Some(i) => format!("<app #{i}>"),
            None => "<app>".to_owned(),
        });
    let err = |field: String, reason: String| AppParseError {
        app_id: app_id.clone(),
        field,
        reason,
    };
    if !v.is_object() {
        return Err(err(
            ".".into(),
            format!("expected an object, got {}", kind(v)),
        ));
    }
    if !matches!(v.get("id"), Some(Value::String(s)) if !s.is_empty()) {
        return Err(err("id".into(), "missing or not a non-empty string".into()));
    }
    let mut v = v.clone();
    strip_nulls(&mut v);
    let app: App = serde_path_to_error::deserialize(v).map_err(|e| {
        let field = e.path().to_string();
        err(field, e.into_inner().to_string())
    })?;
    if let Some(i) = app.tasks.iter().position(|t| t.id.is_empty()) {
        return Err(err(format!("tasks[{i}].id"), "missing or empty".into()));
    }
    Ok(app)
}

/// Parses a `GET /v2/apps` body (`{"apps": [...]}`) app by app. Fails only when the body has no
/// `apps` array at all.
pub fn parse_app_list(body: &Value) -> Result<AppList, AppParseError> {
    let Some(apps) = body.get("apps").and_then(Value::as_array) else {
        return Err(AppParseError {
            app_id: "<response>".into(),
            field: "apps".into(),
            reason: format!(
                "expected an array of apps, got {}",
                kind_of(body.get("apps"))
            ),
        });
    };
    let mut list = AppList::default();
    for (i, v) in apps.iter().enumerate() {
        match parse_app_at(v, Some(i)) {
            Ok(app) => list.apps.push(app),
            Err(e) => list.invalid.push(e),
        }
    }
    Ok(list)
}

/// Parses a `GET /v2/apps/{id}` body (`{"app": {...}}`).
pub fn parse_single_app(body: &Value) -> Result<App, AppParseError> {
    match body.get("app") {
        Some(app) => parse_app(app),
        None => Err(AppParseError {
            app_id: "<response>".into(),
            field: "app".into(),
            reason: "missing".into(),
        }),
    }
}

/// Drops every object key whose value is null, recursively (marathon-lb's `cleanup_json`).
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn kind_of(v: Option<&Value>) -> &'static str {
    v.map_or("nothing", kind)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn one_malformed_app_is_rejected_alone_naming_the_field() {
        let body = json!({"apps": [
            {"id": "/good", "portDefinitions": [{"port": 10000}], "tasks": []},
            {"id": "/bad", "portDefinitions": [{"port": "abc"}]},
            {"id": "/bad-task", "tasks": [{"id": "t1", "host": "h", "ports": [70000]}]},
            {"noid": true},
            "not an object",
        ]});
        let list = parse_app_list(&body).unwrap();
        assert_eq!(list.apps.len(), 1);
        assert_eq!(list.apps[0].id, "/good");
        assert_eq!(list.invalid.len(), 4, "{:?}", list.invalid);
        assert_eq!(list.invalid[0].app_id, "/bad");
        assert_eq!(list.invalid[0].field, "portDefinitions[0].port");
        assert_eq!(list.invalid[1].app_id, "/bad-task");
        assert_eq!(list.invalid[1].field, "tasks[0].ports[0]");
        assert_eq!(list.invalid[2].app_id, "<app #3>");
        assert_eq!(list.invalid[2].field, "id");
        assert_eq!(list.invalid[3].field, ".");
        let msg = list.invalid[0].to_string();
        assert!(
            msg.starts_with("app /bad: field portDefinitions[0].port:"),
            "{msg}"
        );
    }

    #[test]
    fn nulls_count_as_absent_and_unknown_fields_are_ignored() {
        let app = parse_app(&json!({
            "id": "/a", "portDefinitions": null, "container": {"portMappings": null,
            "docker": {"image": "x", "futureField": 1}}, "someNewField": {"x": [1]},
            "tasks": [{"id": "t", "host": "10.0.0.1", "healthCheckResults": null, "ports": [1]}]
        }))
        .unwrap();
        assert_eq!(app.port_definitions, None);
        assert!(app.container.unwrap().port_mappings.is_empty());
        assert_eq!(app.tasks[0].health_check_results, None);
    }

    #[test]
    fn response_without_apps_array_is_an_error() {
        let e = parse_app_list(&json!({"message": "not the leader"})).unwrap_err();
        assert_eq!(e.field, "apps");
        assert!(parse_single_app(&json!({"app": {"id": "/x"}})).is_ok());
        assert!(parse_single_app(&json!({"apps": []})).is_err());
    }

    #[test]
    fn unknown_health_check_protocol_is_other_not_an_error() {
        let app = parse_app(&json!({"id": "/a", "healthChecks": [
            {"protocol": "MESOS_HTTPS"}, {"protocol": "GRPC"}, {}]}))
        .unwrap();
        let protocols: Vec<_> = app.health_checks.iter().map(|h| h.protocol).collect();
        assert_eq!(
            protocols,
            [
                HealthCheckProtocol::MesosHttps,
                HealthCheckProtocol::Other,
                HealthCheckProtocol::Http
            ]
        );
    }
}
