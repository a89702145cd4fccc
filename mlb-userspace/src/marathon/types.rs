//! Marathon's app JSON, as returned by `GET /v2/apps?embed=apps.tasks&embed=apps.deployments&embed=apps.readiness`
//! (`{"apps": [...]}`) and `GET /v2/apps/{id}?embed=app.tasks` (`{"app": {...}}`).
//!
//! Lenient by design: unknown fields are ignored, every field the model can do without is
//! optional, and `null` counts as absent (marathon-lb's `cleanup_json` drops null keys, and the
//! model relies on the same: `"portMappings": null` means "no port mappings"). Both Marathon ≤1.4
//! shapes (`ipAddress.discovery`, `container.docker.network`, `container.docker.portMappings`,
//! legacy `ports`) and ≥1.5 shapes (`networks`, `container.portMappings`) are accepted.
//!
//! Apps are parsed **one by one**: a malformed app becomes an [`AppParseError`] naming the app
//! and the field, and every other app still parses. A full read ([`parse_app_list_json`]) never
//! builds the whole body as [`Value`]s (about 8× the body's size): each app is deserialized
//! straight from its slice of the body, and only an app that fails that is parsed again through
//! a `Value` of its own, for the null stripping and the field path of the error.
use std::{collections::BTreeMap, sync::Arc};

use serde::Deserialize;
use serde_json::{Value, value::RawValue};

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
///
/// Only the fields the model reads are kept (`appId`, `servicePorts`, `stagedAt`, `startedAt`,
/// `version`, `slaveId` are skipped): with 100,000 tasks, each unused string costs megabytes.
/// For the same reason the host, the addresses and the state, which repeat across tasks, are
/// shared text ([`super::intern`]), and lists are boxed slices (no spare capacity).
pub struct Task {
    pub id: String,
    /// Agent host name or address; empty when Marathon has none yet.
    #[serde(deserialize_with = "super::intern::string")]
    pub host: Arc<str>,
    /// Host ports (host and bridge networking).
    pub ports: Box<[u16]>,
    pub ip_addresses: Box<[TaskIpAddress]>,
    /// Mesos task state (`TASK_RUNNING`, ...).
    #[serde(deserialize_with = "super::intern::optional")]
    pub state: Option<Arc<str>>,
    /// `None` when absent (e.g. right after a Marathon leader failover); see the model's
    /// health cache.
    pub health_check_results: Option<Box<[HealthCheckResult]>>,
}

/// `ipAddresses[]` of a task.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TaskIpAddress {
    /// Kept as text: a bad address skips the task (with a reason), it does not reject the app.
    /// (`protocol` is not kept: the model takes the family from the address.)
    #[serde(deserialize_with = "super::intern::optional")]
    pub ip_address: Option<Arc<str>>,
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

/// Why a `GET /v2/apps` body was refused as a whole (the last good state is then kept).
#[derive(Debug, thiserror::Error)]
pub enum AppListError {
    /// Not JSON at all (an HTML error page, a truncated body).
    #[error("body is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// JSON, but not `{"apps": [...]}`.
    #[error("no \"apps\" array: {0}")]
    NoApps(String),
}

/// Apps of an [`AppList`], borrowed: what the model evaluates, without a copy of each app (a
/// burst of task events re-evaluates a thousand apps of tens of tasks each).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppRefs<'a> {
    /// Apps that parsed, in API order.
    pub apps: Vec<&'a App>,
    /// Apps that did not parse.
    pub invalid: Vec<&'a AppParseError>,
}

impl AppList {
    /// Every app, borrowed.
    pub fn refs(&self) -> AppRefs<'_> {
        AppRefs {
            apps: self.apps.iter().collect(),
            invalid: self.invalid.iter().collect(),
        }
    }

    /// The apps named in `ids`, in the same order, by a scan of every app (the app store finds
    /// them through its index: [`super::store::AppStore::subset`]).
    pub fn subset(&self, ids: &std::collections::BTreeSet<String>) -> AppRefs<'_> {
        AppRefs {
            apps: self.apps.iter().filter(|a| ids.contains(&a.id)).collect(),
            invalid: self
                .invalid
                .iter()
                .filter(|e| ids.contains(&e.app_id))
                .collect(),
        }
    }

    /// Parses app objects one by one (tests, and bodies already held as `Value`s).
    pub fn from_values(values: Vec<Value>) -> AppList {
        let mut list = AppList::default();
        for (i, v) in values.into_iter().enumerate() {
            list.push(parse_app_owned(v, Some(i)));
        }
        list
    }

    /// Parses apps re-read one by one (`GET /v2/apps/{id}`): each names itself, so an error
    /// names the app without a position.
    pub fn from_rereads(values: Vec<Value>) -> AppList {
        AppList::from_parsed(values.into_iter().map(parse_reread))
    }

    /// The list of apps already parsed one by one (e.g. with [`parse_reread`]), in order.
    pub fn from_parsed(apps: impl IntoIterator<Item = Result<App, AppParseError>>) -> AppList {
        let mut list = AppList::default();
        for app in apps {
            list.push(app);
        }
        list
    }

    /// Ids of every app, parsed or not, in order (parsed ones first).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        let parsed = self.apps.iter().map(|a| a.id.as_str());
        parsed.chain(self.invalid.iter().map(|e| e.app_id.as_str()))
    }

    /// Whether the list holds no app at all.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty() && self.invalid.is_empty()
    }

    fn push(&mut self, parsed: Result<App, AppParseError>) {
        match parsed {
            Ok(app) => self.apps.push(app),
            Err(e) => self.invalid.push(e),
        }
    }
}

/// Parses one app object. Nulls count as absent; unknown fields are ignored.
pub fn parse_app(v: &Value) -> Result<App, AppParseError> {
    parse_app_at(v, None)
}

pub(crate) fn parse_app_at(v: &Value, index: Option<usize>) -> Result<App, AppParseError> {
    parse_app_owned(v.clone(), index)
}

/// Parses one re-read app (the `app` of `GET /v2/apps/ID`), consuming its value.
pub fn parse_reread(v: Value) -> Result<App, AppParseError> {
    parse_app_owned(v, None)
}

/// [`parse_app_at`] on an owned value (no copy).
fn parse_app_owned(mut v: Value, index: Option<usize>) -> Result<App, AppParseError> {
    let app_id = v.get("id").and_then(Value::as_str).map_or_else(
        || match index {
            Some(i) => format!("<app #{i}>"),
            None => "<app>".to_owned(),
        },
        str::to_owned,
    );
    let err = |field: String, reason: String| AppParseError {
        app_id: app_id.clone(),
        field,
        reason,
    };
    if !v.is_object() {
        return Err(err(
            ".".into(),
            format!("expected an object, got {}", kind(&v)),
        ));
    }
    if !matches!(v.get("id"), Some(Value::String(s)) if !s.is_empty()) {
        return Err(err("id".into(), "missing or not a non-empty string".into()));
    }
    strip_nulls(&mut v);
    let app: App = serde_path_to_error::deserialize(v).map_err(|e| {
        let field = e.path().to_string();
        err(field, e.into_inner().to_string())
    })?;
    if let Some(i) = app.tasks.iter().position(|t| t.id.is_empty()) {
        return Err(err(format!("tasks[{i}].id"), "missing or empty".into()));
    }
    Ok(compact(app))
}

/// Drops the spare capacity serde leaves in lists (they grow by doubling as they are read: 10
/// tasks take room for 16, one IP address for 4), about a quarter of the parsed apps' memory.
fn compact(mut app: App) -> App {
    fn shrink<T>(v: &mut Vec<T>) {
        if v.capacity() > v.len() {
            v.shrink_to_fit();
        }
    }
    shrink(&mut app.ports);
    if let Some(defs) = &mut app.port_definitions {
        shrink(defs);
    }
    if let Some(c) = &mut app.container {
        shrink(&mut c.port_mappings);
        if let Some(d) = &mut c.docker {
            shrink(&mut d.port_mappings);
        }
    }
    if let Some(d) = app.ip_address.as_mut().and_then(|a| a.discovery.as_mut()) {
        shrink(&mut d.ports);
    }
    shrink(&mut app.networks);
    shrink(&mut app.health_checks);
    shrink(&mut app.readiness_check_results);
    shrink(&mut app.deployments);
    shrink(&mut app.tasks);
    app
}

/// Parses one app from its JSON text, as [`parse_app_at`] would from its `Value`.
///
/// Fast path: straight from the text into [`App`]. Where that succeeds the result is the one
/// the `Value` path gives: a null is accepted only by an `Option` field, as `None`, which is
/// also what an absent key gives (every struct is `#[serde(default)]` with derived defaults).
/// Anything the fast path refuses (a null where a list or string is expected, a duplicate key,
/// a bad field) or an app without an id goes through the `Value` path, which gives the error
/// (or the lenient result) exactly as before.
fn parse_app_raw(raw: &RawValue, index: usize) -> Result<App, AppParseError> {
    if let Ok(app) = serde_json::from_str::<App>(raw.get())
        && !app.id.is_empty()
        && app.tasks.iter().all(|t| !t.id.is_empty())
    {
        return Ok(compact(app));
    }
    match serde_json::from_str::<Value>(raw.get()) {
        Ok(v) => parse_app_owned(v, Some(index)),
        // Not reached: this text was read as JSON already, as part of the body.
        Err(e) => Err(AppParseError {
            app_id: format!("<app #{index}>"),
            field: ".".into(),
            reason: e.to_string(),
        }),
    }
}

/// Parses a `GET /v2/apps` body (`{"apps": [...]}`) app by app, from its bytes: the apps are
/// borrowed from the body as raw JSON text, then each is parsed on its own, so at most one
/// app's `Value` exists at a time. Fails only when the body is not JSON or has no `apps` array.
pub fn parse_app_list_json(body: &[u8]) -> Result<AppList, AppListError> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        apps: Vec<&'a RawValue>,
    }
    let parsed: Body<'_> = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => AppListError::NoApps(e.to_string()),
        _ => AppListError::NotJson(e),
    })?;
    // A derived struct also takes a sequence (`[[...]]`); the body must be an object.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(AppListError::NoApps("the body is not an object".into()));
    }
    let mut list = AppList {
        apps: Vec::with_capacity(parsed.apps.len()),
        invalid: Vec::new(),
    };
    for app in parse_apps_raw(&parsed.apps) {
        list.push(app);
    }
    Ok(list)
}

/// Apps from this many on are parsed on several threads.
const PARALLEL_PARSE: usize = 512;

/// Parses each app of `raw` (in order): on up to 4 threads, each taking a contiguous share,
/// when there are many (10,000 apps take a few hundred milliseconds on one core).
fn parse_apps_raw(raw: &[&RawValue]) -> Vec<Result<App, AppParseError>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    if threads < 2 || raw.len() < PARALLEL_PARSE {
        return (raw.iter().enumerate())
            .map(|(i, r)| parse_app_raw(r, i))
            .collect();
    }
    let share = raw.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = (raw.chunks(share).enumerate())
            .map(|(part, apps)| {
                scope.spawn(move || {
                    let first = part * share;
                    (apps.iter().enumerate())
                        .map(|(i, r)| parse_app_raw(r, first + i))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
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
        list.push(parse_app_at(v, Some(i)));
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

    /// The fixtures, and apps with nulls, bad fields and duplicate keys: a full read from the
    /// body's bytes gives what parsing each app's `Value` gives.
    #[test]
    fn full_read_from_bytes_matches_the_value_path() {
        let mut bodies: Vec<String> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src/model/fixtures"))
                .unwrap()
                .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
                .collect();
        assert!(bodies.len() >= 5);
        bodies.push(
            r#"{"apps": [
            {"id": "/good", "portDefinitions": [{"port": 10000}], "tasks": []},
            {"id": "/bad", "portDefinitions": [{"port": "abc"}]},
            {"id": "/bad-task", "tasks": [{"id": "t1", "host": "h", "ports": [70000]}]},
            {"noid": true}, {"id": ""}, {"id": 7}, "not an object", null, [],
            {"id": "/nulls", "labels": null, "portDefinitions": null, "ports": null, "tasks": [
                {"id": "t", "host": null, "ports": null, "healthCheckResults": null,
                 "ipAddresses": [{"ipAddress": null}]}],
             "container": {"type": null, "portMappings": [{"containerPort": 80, "labels": null}]},
             "healthChecks": [{"protocol": null, "path": null}], "versionInfo": null},
            {"id": "/null-label", "labels": {"a": null, "b": "x"}},
            {"id": "/dup", "instances": 1, "instances": 2, "labels": {"k": "1", "k": "2"}},
            {"id": "/dup-id", "id": "/dup-id-2"},
            {"id": "/empty-task-id", "tasks": [{"id": "a"}, {"host": "h"}]},
            {"id": "/float", "instances": 1.0},
            {"id": "/future", "x": {"y": [null, {"z": 1}]}, "healthChecks": [{"protocol": "GRPC"}]}
            ], "other": 1}"#
                .to_owned(),
        );
        for body in &bodies {
            let by_value = parse_app_list(&serde_json::from_str(body).unwrap()).unwrap();
            let by_bytes = parse_app_list_json(body.as_bytes()).unwrap();
            assert_eq!(by_bytes, by_value);
        }
        let last = parse_app_list_json(bodies.last().unwrap().as_bytes()).unwrap();
        let ids: Vec<_> = last.apps.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "/good",
                "/nulls",
                "/null-label",
                "/dup",
                "/dup-id-2",
                "/future"
            ]
        );
        assert_eq!(last.apps[2].labels.len(), 1);
        assert_eq!(last.apps[3].instances, Some(2));
        let invalid: Vec<_> = last
            .invalid
            .iter()
            .map(|e| (e.app_id.as_str(), e.field.as_str()))
            .collect();
        assert_eq!(
            invalid,
            [
                ("/bad", "portDefinitions[0].port"),
                ("/bad-task", "tasks[0].ports[0]"),
                ("<app #3>", "id"),
                ("", "id"),
                ("<app #5>", "id"),
                ("<app #6>", "."),
                ("<app #7>", "."),
                ("<app #8>", "."),
                ("/empty-task-id", "tasks[1].id"),
                ("/float", "instances"),
            ]
        );
    }

    #[test]
    fn a_body_that_is_not_an_apps_array_is_refused_whole() {
        for (body, not_json) in [
            ("<html>proxy error</html>", true),
            (r#"{"apps": [{"id": "/a"}"#, true),
            (r#"{"apps": [{"id": "/a"}]} trailing"#, true),
            (r#"{"message": "not the leader"}"#, false),
            (r#"{"apps": null}"#, false),
            (r#"{"apps": {"id": "/a"}}"#, false),
            (r#"[{"id": "/a"}]"#, false),
            (r#"[[{"id": "/a"}]]"#, false),
        ] {
            let e = parse_app_list_json(body.as_bytes()).unwrap_err();
            assert_eq!(
                matches!(e, AppListError::NotJson(_)),
                not_json,
                "{body}: {e}"
            );
        }
        let list = parse_app_list_json(br#"{"apps": []}"#).unwrap();
        assert_eq!(list, AppList::default());
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
