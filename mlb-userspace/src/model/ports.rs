//! Service ports and task endpoints for host, bridge and container (IP-per-task) networking, in
//! both Marathon shapes (≤1.4 `ipAddress` / `container.docker.*`, ≥1.5 `networks` /
//! `container.portMappings`), following marathon-lb's `utils.py` rules.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::IpAddr,
};

use ring::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};

use crate::{
    marathon::types::{App, PortMapping, Task},
    model::Protocol,
};

/// How the app's tasks are reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkingMode {
    /// Agent address + host ports.
    Host,
    /// Agent address + host ports mapped to container ports (`container/bridge`).
    Bridge,
    /// IP-per-task: the task's own address + container ports.
    Container,
}

/// The app's networking mode: `host` by default; a (non-empty) `ipAddress` means container;
/// `container.docker.network` `USER`/`BRIDGE`; then the mode of the **last** `networks[]` entry
/// (absent mode = container) wins.
pub fn networking_mode(app: &App) -> NetworkingMode {
    let mut mode = NetworkingMode::Host;
    if app.ip_address.is_some() {
        mode = NetworkingMode::Container;
    }
    let docker_network = app
        .container
        .as_ref()
        .and_then(|c| c.docker.as_ref())
        .and_then(|d| d.network.as_deref());
    match docker_network {
        Some("USER") => mode = NetworkingMode::Container,
        Some("BRIDGE") => mode = NetworkingMode::Bridge,
        _ => {}
    }
    if let Some(last) = app.networks.last() {
        mode = match last.mode.as_deref() {
            Some("host") => NetworkingMode::Host,
            Some("container/bridge") => NetworkingMode::Bridge,
            _ => NetworkingMode::Container,
        };
    }
    mode
}

/// Port mappings: `container.docker.portMappings` (≤1.4), else `container.portMappings` (≥1.5).
fn port_mappings(app: &App) -> &[PortMapping] {
    let Some(container) = &app.container else {
        return &[];
    };
    match &container.docker {
        Some(docker) if !docker.port_mappings.is_empty() => &docker.port_mappings,
        _ => &container.port_mappings,
    }
}

/// Where a service port came from, for `mlb explain` (and the incremental model: auto-assigned
/// ports depend on every other app).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortSource {
    /// `container.portMappings[].servicePort` (or `container.docker.portMappings`).
    PortMappings,
    /// `portDefinitions[].port`.
    PortDefinitions,
    /// The legacy `ports` list.
    Ports,
    /// `--min/max-serv-port-ip-per-task` auto-assignment.
    AutoAssigned,
}

impl fmt::Display for PortSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortSource::PortMappings => "portMappings",
            PortSource::PortDefinitions => "portDefinitions",
            PortSource::Ports => "ports",
            PortSource::AutoAssigned => "auto-assigned (IP-per-task)",
        })
    }
}

/// As its text, so explain's JSON reads the same as the text output.
impl serde::Serialize for PortSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A port `protocol` mlb cannot forward.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}.protocol {protocol:?}: mlb forwards tcp and udp only")]
pub struct ProtocolError {
    /// The port entry, e.g. `portDefinitions[1]`.
    pub field: String,
    /// The whole `protocol` value.
    pub protocol: String,
}

/// One entry of the app's service-port list; its position is the `{n}` of `HAPROXY_{n}_*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortSpec {
    /// `{n}`.
    pub index: usize,
    /// `None`: auto-assignment ran out of ports.
    pub port: Option<u16>,
    /// From the port's `protocol` (`tcp`, `udp`, `tcp,udp`), or why it is unusable.
    pub protocols: Result<Vec<Protocol>, ProtocolError>,
    /// Where the port came from.
    pub source: PortSource,
    /// Position of the port in its source list (`portMappings`, `portDefinitions`, …), which is
    /// also the position of its port in each task's port list and Marathon's `portIndex`. Differs
    /// from `index` when a mapping without a service port was skipped.
    pub task_port_index: usize,
}

/// Parses a Marathon port `protocol` (`tcp`, `udp`, `tcp,udp`; absent = tcp).
pub fn parse_protocols(
    field: &str,
    protocol: Option<&str>,
) -> Result<Vec<Protocol>, ProtocolError> {
    let Some(text) = protocol else {
        return Ok(vec![Protocol::Tcp]);
    };
    let mut out = Vec::new();
    for part in text.split(',') {
        let p = match part.trim().to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => {
                return Err(ProtocolError {
                    field: field.to_owned(),
                    protocol: text.to_owned(),
                });
            }
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// marathon-lb's deterministic service-port auto-assignment for IP-per-task apps that have no
/// service ports (`--min/max-serv-port-ip-per-task`). Feed it the apps in API order, once per
/// computation: like marathon-lb's, the result depends on that order when hashes clash.
#[derive(Clone, Debug)]
pub struct ServicePortAssigner {
    range: Option<(u16, u16)>,
    by_app_port: HashMap<(String, u16), Option<u16>>,
    used: HashSet<u16>,
}

/// Hash attempts before the linear scan (marathon-lb's `MAX_CLASHES`).
const MAX_CLASHES: u32 = 50;

impl ServicePortAssigner {
    /// `range`: `(min, max)` inclusive; `None` disables auto-assignment.
    pub fn new(range: Option<(u16, u16)>) -> Self {
        ServicePortAssigner {
            range,
            by_app_port: HashMap::new(),
            used: HashSet::new(),
        }
    }

    fn assign(&mut self, app_id: &str, task_port: u16) -> Option<u16> {
        let key = (app_id.to_owned(), task_port);
        if let Some(Some(port)) = self.by_app_port.get(&key) {
            return Some(*port);
        }
        let (min, max) = self.range?;
        let span = u32::from(max) - u32::from(min) + 1;
        let port = if self.by_app_port.len() >= span as usize {
            None
        } else {
            // sha1("<appId>-<taskPort>-<i>"), first 8 hex digits, mod the range size.
            let hashed = (0..MAX_CLASHES).find_map(|i| {
                let h = digest(
                    &SHA1_FOR_LEGACY_USE_ONLY,
                    format!("{app_id}-{task_port}-{i}").as_bytes(),
                );
                let v = u32::from_be_bytes(h.as_ref()[..4].try_into().expect("sha1 is 20 bytes"));
                let trial = u16::try_from(u32::from(min) + v % span).expect("within range");
                (!self.used.contains(&trial)).then_some(trial)
            });
            hashed.or_else(|| (min..=max).find(|p| !self.used.contains(p)))
        };
        if let Some(p) = port {
            self.used.insert(p);
        }
        self.by_app_port.insert(key, port);
        port
    }

    /// The app's service-port list (marathon-lb's `get_service_ports`):
    /// 1. bridge/container: port mappings' `servicePort`s (mappings without one are skipped, so
    ///    later indices shift, as in marathon-lb);
    /// 2. else `portDefinitions[].port` when the key exists, else legacy `ports`;
    /// 3. else, for container networking with at least one task, auto-assigned ports, one per
    ///    task port of the first task.
    pub fn service_ports(&mut self, app: &App) -> Vec<ServicePortSpec> {
        let mode = networking_mode(app);
        if mode != NetworkingMode::Host {
            let specs: Vec<ServicePortSpec> = port_mappings(app)
                .iter()
                .enumerate()
                .filter(|(_, m)| m.service_port.is_some_and(|p| p != 0))
                .enumerate()
                .map(|(index, (i, m))| ServicePortSpec {
                    index,
                    port: m.service_port,
                    protocols: parse_protocols(
                        &format!("portMappings[{i}]"),
                        m.protocol.as_deref(),
                    ),
                    source: PortSource::PortMappings,
                    task_port_index: i,
                })
                .collect();
            if !specs.is_empty() {
                return specs;
            }
        }
        let declared: Vec<ServicePortSpec> = match &app.port_definitions {
            Some(defs) => defs
                .iter()
                .enumerate()
                .filter(|(_, d)| d.port.is_some_and(|p| p != 0))
                .enumerate()
                .map(|(index, (i, d))| ServicePortSpec {
                    index,
                    port: d.port,
                    protocols: parse_protocols(
                        &format!("portDefinitions[{i}]"),
                        d.protocol.as_deref(),
                    ),
                    source: PortSource::PortDefinitions,
                    task_port_index: i,
                })
                .collect(),
            None => app
                .ports
                .iter()
                .enumerate()
                .filter(|(_, p)| **p != 0)
                .enumerate()
                .map(|(index, (i, p))| ServicePortSpec {
                    index,
                    port: Some(*p),
                    protocols: Ok(vec![Protocol::Tcp]),
                    source: PortSource::Ports,
                    task_port_index: i,
                })
                .collect(),
        };
        if !declared.is_empty() || mode != NetworkingMode::Container || self.range.is_none() {
            return declared;
        }
        let Some(first_task) = app.tasks.first() else {
            return declared;
        };
        let protocol_of = |i: usize| -> Result<Vec<Protocol>, ProtocolError> {
            let discovery = app
                .ip_address
                .as_ref()
                .and_then(|ip| ip.discovery.as_ref())
                .and_then(|d| d.ports.get(i));
            match discovery {
                Some(d) => parse_protocols(
                    &format!("ipAddress.discovery.ports[{i}]"),
                    d.protocol.as_deref(),
                ),
                None => match port_mappings(app).get(i) {
                    Some(m) => {
                        parse_protocols(&format!("portMappings[{i}]"), m.protocol.as_deref())
                    }
                    None => Ok(vec![Protocol::Tcp]),
                },
            }
        };
        task_ports(app, first_task, mode)
            .into_iter()
            .enumerate()
            .map(|(index, task_port)| ServicePortSpec {
                index,
                port: self.assign(&app.id, task_port),
                protocols: protocol_of(index),
                source: PortSource::AutoAssigned,
                task_port_index: index,
            })
            .collect()
    }
}

/// The ports a task serves on, by service-port index (marathon-lb's `get_app_task_ports`):
/// - host: `task.ports`, else `portDefinitions[].port`;
/// - bridge: `task.ports` (host ports), else `portDefinitions`, else mappings' `containerPort`;
/// - container: `ipAddress.discovery.ports[].number`, else mappings' `containerPort`.
pub fn task_ports(app: &App, task: &Task, mode: NetworkingMode) -> Vec<u16> {
    let definitions = || -> Vec<u16> {
        app.port_definitions
            .iter()
            .flatten()
            .filter_map(|d| d.port)
            .collect()
    };
    let container_ports = || -> Vec<u16> {
        port_mappings(app)
            .iter()
            .filter_map(|m| m.container_port)
            .collect()
    };
    match mode {
        NetworkingMode::Host => {
            if task.ports.is_empty() {
                definitions()
            } else {
                task.ports.to_vec()
            }
        }
        NetworkingMode::Bridge => {
            if !task.ports.is_empty() {
                return task.ports.to_vec();
            }
            let defs = definitions();
            if defs.is_empty() {
                container_ports()
            } else {
                defs
            }
        }
        NetworkingMode::Container => {
            let discovery: Vec<u16> = app
                .ip_address
                .iter()
                .filter_map(|ip| ip.discovery.as_ref())
                .flat_map(|d| d.ports.iter().filter_map(|p| p.number))
                .collect();
            if discovery.is_empty() {
                container_ports()
            } else {
                discovery
            }
        }
    }
}

/// Why a task has no address to route to (yet).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaskAddressError {
    #[error("no IP address allocated yet (IP-per-task)")]
    NotAllocated,
    #[error("ipAddresses[0] {0:?} is not an IP address")]
    NotAnAddress(String),
    #[error("no agent host yet")]
    NoAgentHost,
    /// The caller did not resolve this host name (see [`super::hosts_to_resolve`]).
    #[error("agent host {0:?} is not resolved")]
    Unresolved(String),
}

/// The address a task is reached at: its first `ipAddresses` entry for container networking,
/// else its agent `host`, which must be an address or resolved by the caller (`host_addrs`; the
/// model does no DNS).
pub fn task_ip(
    task: &Task,
    mode: NetworkingMode,
    host_addrs: &BTreeMap<String, IpAddr>,
) -> Result<IpAddr, TaskAddressError> {
    if mode == NetworkingMode::Container {
        let Some(text) = task
            .ip_addresses
            .first()
            .and_then(|a| a.ip_address.as_deref())
        else {
            return Err(TaskAddressError::NotAllocated);
        };
        return text
            .parse()
            .map_err(|_| TaskAddressError::NotAnAddress(text.to_owned()));
    }
    if task.host.is_empty() {
        return Err(TaskAddressError::NoAgentHost);
    }
    if let Ok(ip) = task.host.parse() {
        return Ok(ip);
    }
    host_addrs
        .get(&*task.host)
        .copied()
        .ok_or_else(|| TaskAddressError::Unresolved(task.host.to_string()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::marathon::types::parse_app;

    fn app(v: serde_json::Value) -> App {
        parse_app(&v).unwrap()
    }

    fn ports(specs: &[ServicePortSpec]) -> Vec<Option<u16>> {
        specs.iter().map(|s| s.port).collect()
    }

    #[test]
    fn networking_mode_in_both_shapes() {
        let cases = [
            (json!({"id": "/a"}), NetworkingMode::Host),
            (
                json!({"id": "/a", "ipAddress": {"networkName": "dcos"}}),
                NetworkingMode::Container,
            ),
            (
                json!({"id": "/a", "container": {"docker": {"network": "BRIDGE"}}}),
                NetworkingMode::Bridge,
            ),
            (
                json!({"id": "/a", "container": {"docker": {"network": "USER"}}}),
                NetworkingMode::Container,
            ),
            (
                json!({"id": "/a", "networks": [{"mode": "container/bridge"}]}),
                NetworkingMode::Bridge,
            ),
            (
                json!({"id": "/a", "networks": [{"name": "dcos"}]}),
                NetworkingMode::Container,
            ),
            (
                json!({"id": "/a", "networks": [{"mode": "host"}]}),
                NetworkingMode::Host,
            ),
        ];
        for (v, want) in cases {
            assert_eq!(networking_mode(&app(v.clone())), want, "{v}");
        }
    }

    /// marathon-lb `test_utils.py`: IP-per-task with discovery ports.
    #[test]
    fn ip_per_task_discovery_ports_and_task_ip() {
        let a = app(json!({"id": "/a", "ipAddress": {"discovery": {"ports": [
            {"number": 123, "name": "x", "protocol": "tcp"}, {"number": 234, "protocol": "udp"}]}},
            "tasks": [{"id": "t", "host": "agent1", "ipAddresses": [{"ipAddress": "1.2.3.4"}]}]}));
        let mode = networking_mode(&a);
        assert_eq!(task_ports(&a, &a.tasks[0], mode), [123, 234]);
        assert_eq!(
            task_ip(&a.tasks[0], mode, &BTreeMap::new()).unwrap(),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
    }

    /// marathon-lb `test_utils.py`: Marathon 1.3 USER network and 1.5 `networks: container`
    /// both give task ports 80/81 and service ports 10000/10001.
    #[test]
    fn user_network_14_and_container_network_15_agree() {
        let mappings = json!([
            {"containerPort": 80, "servicePort": 10000},
            {"containerPort": 81, "servicePort": 10001, "protocol": "udp"}]);
        let old = app(
            json!({"id": "/a", "container": {"docker": {"network": "USER",
            "portMappings": mappings}}, "tasks": [{"id": "t", "host": "h"}]}),
        );
        let new = app(json!({"id": "/a", "container": {"portMappings": mappings},
            "networks": [{"mode": "container", "name": "dcos"}], "tasks": [{"id": "t", "host": "h"}]}));
        for a in [old, new] {
            let mode = networking_mode(&a);
            assert_eq!(task_ports(&a, &a.tasks[0], mode), [80, 81]);
            let specs = ServicePortAssigner::new(Some((10050, 10100))).service_ports(&a);
            assert_eq!(ports(&specs), [Some(10000), Some(10001)]);
            assert_eq!(specs[1].protocols, Ok(vec![Protocol::Udp]));
        }
    }

    #[test]
    fn null_port_mappings_fall_back_to_port_definitions() {
        let a = app(
            json!({"id": "/a", "container": {"docker": {"network": "BRIDGE",
            "portMappings": null}}, "portDefinitions": [{"port": 10000}, {"port": 10001,
            "protocol": "tcp,udp"}]}),
        );
        let specs = ServicePortAssigner::new(None).service_ports(&a);
        assert_eq!(ports(&specs), [Some(10000), Some(10001)]);
        assert_eq!(specs[1].protocols, Ok(vec![Protocol::Tcp, Protocol::Udp]));
        assert_eq!(specs[1].source, PortSource::PortDefinitions);
        assert_eq!(specs[1].source.to_string(), "portDefinitions");
    }

    #[test]
    fn mapping_without_service_port_shifts_indices() {
        let a = app(
            json!({"id": "/a", "networks": [{"mode": "container/bridge"}],
            "container": {"portMappings": [{"containerPort": 80}, {"containerPort": 81,
            "servicePort": 10001}]}}),
        );
        let specs = ServicePortAssigner::new(None).service_ports(&a);
        assert_eq!(specs.len(), 1);
        assert_eq!((specs[0].index, specs[0].port), (0, Some(10001)));
        assert_eq!(
            specs[0].task_port_index, 1,
            "the task's port is still the second one"
        );
    }

    #[test]
    fn legacy_ports_and_bad_protocol() {
        let a = app(json!({"id": "/a", "ports": [10005]}));
        assert_eq!(
            ports(&ServicePortAssigner::new(None).service_ports(&a)),
            [Some(10005)]
        );
        let b = app(json!({"id": "/b", "portDefinitions": [{"port": 1, "protocol": "sctp"}]}));
        let e = ServicePortAssigner::new(None).service_ports(&b)[0]
            .protocols
            .clone()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "portDefinitions[0].protocol \"sctp\": mlb forwards tcp and udp only"
        );
    }

    fn ippt(id: &str, task_ports: &[u16]) -> App {
        let discovery: Vec<_> = task_ports.iter().map(|p| json!({"number": p})).collect();
        app(
            json!({"id": id, "ipAddress": {"discovery": {"ports": discovery}},
            "tasks": [{"id": "t", "host": "h", "ipAddresses": [{"ipAddress": "198.18.1.1"}]}]}),
        )
    }

    /// Auto-assignment is deterministic, in range, order-independent without clashes, and
    /// `None` once the range is exhausted (marathon-lb `TestServicePortAssigner`).
    #[test]
    fn auto_assignment_is_deterministic_and_bounded() {
        let (a, b) = (ippt("/app-a", &[80, 81]), ippt("/app-b", &[8080]));
        let mut first = ServicePortAssigner::new(Some((10000, 10020)));
        let pa = ports(&first.service_ports(&a));
        let pb = ports(&first.service_ports(&b));
        let mut reversed = ServicePortAssigner::new(Some((10000, 10020)));
        assert_eq!(ports(&reversed.service_ports(&b)), pb);
        assert_eq!(ports(&reversed.service_ports(&a)), pa);
        for p in pa.iter().chain(&pb) {
            assert!((10000..=10020).contains(&p.unwrap()), "{p:?}");
        }
        // The same (app, task port) always maps to the same port within one computation.
        assert_eq!(ports(&first.service_ports(&a)), pa);
        // 24 ports into a range of 21: the last 3 get none.
        let many: Vec<u16> = (1000..1024).collect();
        let got = ports(
            &ServicePortAssigner::new(Some((10000, 10020))).service_ports(&ippt("/m", &many)),
        );
        assert_eq!(got.iter().filter(|p| p.is_none()).count(), 3);
        let mut assigned: Vec<u16> = got.iter().flatten().copied().collect();
        assigned.sort_unstable();
        assigned.dedup();
        assert_eq!(assigned.len(), 21);
        // Disabled range: nothing assigned.
        assert!(ServicePortAssigner::new(None).service_ports(&a).is_empty());
    }

    /// The hash is marathon-lb's (sha1 of "<appId>-<taskPort>-<i>"), so mlb and marathon-lb
    /// instances agree on auto-assigned ports during a migration.
    #[test]
    fn auto_assignment_matches_marathon_lb_hash() {
        // Python: hashlib.sha1(b"/app-80-0").hexdigest()[:8] == "b9b6800c";
        // 10050 + 0xb9b6800c % 51 == 10098.
        let want = 10098;
        let got =
            ServicePortAssigner::new(Some((10050, 10100))).service_ports(&ippt("/app", &[80]));
        assert_eq!(got[0].port, Some(want));
    }

    #[test]
    fn task_ip_needs_an_address_or_a_resolved_host() {
        let t = |host: &str| Task {
            id: "t".into(),
            host: host.into(),
            ..Default::default()
        };
        let resolved = BTreeMap::from([("agent1".to_owned(), "198.18.0.7".parse().unwrap())]);
        assert_eq!(
            task_ip(&t("agent1"), NetworkingMode::Host, &resolved).unwrap(),
            "198.18.0.7".parse::<IpAddr>().unwrap()
        );
        let e = task_ip(&t("agent2"), NetworkingMode::Host, &resolved).unwrap_err();
        assert_eq!(e.to_string(), "agent host \"agent2\" is not resolved");
        assert_eq!(
            task_ip(&t(""), NetworkingMode::Bridge, &resolved),
            Err(TaskAddressError::NoAgentHost)
        );
        let e = task_ip(&t("agent1"), NetworkingMode::Container, &resolved).unwrap_err();
        assert_eq!(e, TaskAddressError::NotAllocated);
    }
}
