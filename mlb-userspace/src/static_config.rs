//! `mlb run --static-config FILE`: services declared in a file instead of (or before) Marathon.
//!
//! The file is TOML (`.toml`) or JSON (`.json`); with another extension both are tried. Each
//! `[[service]]` is one plain TCP or UDP service:
//!
//! ```toml
//! [[service]]
//! name = "web"                # optional: shown in logs and errors (default "static:8080/tcp")
//! port = 8080                 # service port, required
//! protocol = "tcp"            # "tcp" (default) or "udp"
//! bind_addr = "198.18.1.2"    # optional: listen on this address only instead of every --vip
//! balance = "source"          # optional: keep each client on one backend (default: per flow)
//! allowed = ["198.18.1.0/24", "fd00::/8"]  # optional: only these clients (default: everyone)
//! backends = [
//!     "198.18.2.11:80",                                  # weight 1, id = the address
//!     { addr = "198.18.2.12:80", weight = 2 },           # twice the share of the others
//!     { addr = "198.18.2.13:80", id = "be3", state = "draining" },  # no new connections
//! ]
//!
//! [[service]]
//! port = 5353
//! protocol = "udp"
//! backends = ["198.18.2.11:53"]
//! ```
//!
//! The same in JSON: `{"service": [{"port": 8080, "backends": ["198.18.2.11:80",
//! {"addr": "198.18.2.12:80", "weight": 2}]}]}`.
//!
//! Every error names the service (its position, name and port) and the field. Backend ids must
//! be unique within a service; two services may not share a port and protocol.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde_json::{Map, Value};

use crate::model::{
    Backend, BackendId, BackendState, Balance, IpNet, L4Service, L4ServiceKey, Protocol,
};

/// What a static config file declares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaticConfig {
    /// Plain TCP/UDP services.
    pub l4: BTreeMap<L4ServiceKey, L4Service>,
}

/// File formats of a static config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Toml,
}

/// Why a static config was refused.
#[derive(Debug, thiserror::Error)]
pub enum StaticConfigError {
    #[error("reading static config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("static config is not valid {format:?}: {message}")]
    Syntax { format: Format, message: String },
    #[error("static config is neither valid JSON ({json}) nor valid TOML ({toml})")]
    UnknownFormat { json: String, toml: String },
    #[error("static config: {0}")]
    Structure(String),
    #[error("static config: service {service}: field `{field}`: {reason}")]
    Service {
        /// Position, name and port of the service, e.g. `#2 "web" (8080/tcp)`.
        service: String,
        field: String,
        reason: String,
    },
}

/// Reads and checks a static config file (format from the extension, else JSON then TOML).
pub fn load(path: &Path) -> Result<StaticConfig, StaticConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| StaticConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("json") => parse(&text, Format::Json),
        Some("toml") => parse(&text, Format::Toml),
        _ => match to_value(&text, Format::Json) {
            Ok(v) => from_value(v),
            Err(json) => match to_value(&text, Format::Toml) {
                Ok(v) => from_value(v),
                Err(toml) => Err(StaticConfigError::UnknownFormat {
                    json: message(json),
                    toml: message(toml),
                }),
            },
        },
    }
}

/// Parses and checks a static config given as text.
pub fn parse(text: &str, format: Format) -> Result<StaticConfig, StaticConfigError> {
    from_value(to_value(text, format)?)
}

fn message(e: StaticConfigError) -> String {
    match e {
        StaticConfigError::Syntax { message, .. } => message,
        other => other.to_string(),
    }
}

fn to_value(text: &str, format: Format) -> Result<Value, StaticConfigError> {
    let syntax = |message: String| StaticConfigError::Syntax { format, message };
    match format {
        Format::Json => serde_json::from_str(text).map_err(|e| syntax(e.to_string())),
        Format::Toml => {
            let v: toml::Value = toml::from_str(text).map_err(|e| syntax(e.to_string()))?;
            serde_json::to_value(v).map_err(|e| syntax(e.to_string()))
        }
    }
}

fn from_value(root: Value) -> Result<StaticConfig, StaticConfigError> {
    let Value::Object(root) = root else {
        return Err(StaticConfigError::Structure(
            "the top level must be a table/object with a `service` list".into(),
        ));
    };
    for key in root.keys() {
        if key != "service" {
            return Err(StaticConfigError::Structure(format!(
                "unknown top-level key `{key}` (expected `service`)"
            )));
        }
    }
    let services = match root.get("service") {
        None => return Ok(StaticConfig::default()),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(StaticConfigError::Structure(
                "`service` must be a list ([[service]] in TOML)".into(),
            ));
        }
    };
    let mut l4 = BTreeMap::new();
    let mut where_defined: BTreeMap<L4ServiceKey, String> = BTreeMap::new();
    for (i, value) in services.iter().enumerate() {
        let service = parse_service(i, value)?;
        let label = label(i, Some(&service.app_id), Some(service.key));
        if let Some(first) = where_defined.get(&service.key) {
            return Err(StaticConfigError::Service {
                service: label,
                field: "port".into(),
                reason: format!("{} is already declared by service {first}", service.key),
            });
        }
        where_defined.insert(service.key, label);
        l4.insert(service.key, service);
    }
    Ok(StaticConfig { l4 })
}

fn label(index: usize, name: Option<&str>, key: Option<L4ServiceKey>) -> String {
    let mut s = format!("#{}", index + 1);
    if let Some(name) = name {
        s.push_str(&format!(" {name:?}"));
    }
    if let Some(key) = key {
        s.push_str(&format!(" ({key})"));
    }
    s
}

/// The fields of a `[[service]]`.
const FIELDS: &[&str] = &[
    "name",
    "port",
    "protocol",
    "bind_addr",
    "balance",
    "allowed",
    "backends",
];

fn parse_service(index: usize, value: &Value) -> Result<L4Service, StaticConfigError> {
    let mut name: Option<String> = None;
    let mut key: Option<L4ServiceKey> = None;
    // Errors name whatever is known about the service so far.
    let fail = |name: &Option<String>, key: Option<L4ServiceKey>, field: &str, reason: String| {
        StaticConfigError::Service {
            service: label(index, name.as_deref(), key),
            field: field.to_owned(),
            reason,
        }
    };
    let Value::Object(obj) = value else {
        return Err(fail(&name, key, "service", "must be a table/object".into()));
    };
    if let Some(v) = obj.get("name") {
        match v.as_str() {
            Some(s) if !s.trim().is_empty() => name = Some(s.to_owned()),
            _ => {
                return Err(fail(
                    &name,
                    key,
                    "name",
                    "must be a non-empty string".into(),
                ));
            }
        }
    }
    for field in obj.keys() {
        if !FIELDS.contains(&field.as_str()) {
            return Err(fail(
                &name,
                key,
                field,
                format!("unknown field (expected {})", FIELDS.join(", ")),
            ));
        }
    }
    let port = match obj.get("port") {
        None => return Err(fail(&name, key, "port", "missing".into())),
        Some(v) => v
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| fail(&name, key, "port", format!("{v} is not a port (1-65535)")))?,
    };
    let protocol = match obj.get("protocol") {
        None => Protocol::Tcp,
        Some(Value::String(s)) if s == "tcp" => Protocol::Tcp,
        Some(Value::String(s)) if s == "udp" => Protocol::Udp,
        Some(v) => {
            return Err(fail(
                &name,
                key,
                "protocol",
                format!("{v} is not \"tcp\" or \"udp\""),
            ));
        }
    };
    key = Some(L4ServiceKey { port, protocol });
    let bind_addr = match obj.get("bind_addr") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|s| s.parse::<IpAddr>().ok())
                .ok_or_else(|| {
                    fail(&name, key, "bind_addr", format!("{v} is not an IP address"))
                })?,
        ),
    };
    let balance = match obj.get("balance").map(|v| (v, v.as_str())) {
        None => Balance::default(),
        Some((_, Some("source"))) => Balance::Source,
        Some((_, Some("roundrobin"))) => Balance::RoundRobin,
        Some((v, _)) => {
            let reason = format!("{v} is not \"roundrobin\" or \"source\"");
            return Err(fail(&name, key, "balance", reason));
        }
    };
    let allowed_networks = match obj.get("allowed") {
        None => Vec::new(),
        Some(v) => parse_networks(v).map_err(|reason| fail(&name, key, "allowed", reason))?,
    };
    let list = match obj.get("backends") {
        None => return Err(fail(&name, key, "backends", "missing".into())),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(fail(&name, key, "backends", "must be a list".into())),
    };
    let mut backends = Vec::with_capacity(list.len());
    let mut ids = BTreeSet::new();
    for (j, v) in list.iter().enumerate() {
        let backend = parse_backend(v).map_err(|(field, reason)| {
            let field = match field {
                Some(f) => format!("backends[{j}].{f}"),
                None => format!("backends[{j}]"),
            };
            fail(&name, key, &field, reason)
        })?;
        if !ids.insert(backend.id.clone()) {
            return Err(fail(
                &name,
                key,
                &format!("backends[{j}]"),
                format!("backend id {:?} appears twice", backend.id.as_str()),
            ));
        }
        backends.push(backend);
    }
    backends.sort_by(|a, b| a.id.cmp(&b.id));
    let app_id = name.unwrap_or_else(|| format!("static:{port}/{protocol}"));
    Ok(L4Service {
        key: L4ServiceKey { port, protocol },
        app_id,
        bind_addr,
        backends,
        health_check: None,
        tuning: Default::default(),
        balance,
        allowed_networks,
    })
}

/// A list of address blocks (`"198.18.1.0/24"`, `"fd00::1"`).
fn parse_networks(value: &Value) -> Result<Vec<IpNet>, String> {
    let Value::Array(list) = value else {
        return Err("must be a list of addresses or CIDR blocks".into());
    };
    list.iter()
        .map(|v| match v.as_str() {
            Some(s) => s.parse::<IpNet>().map_err(|e| e.to_string()),
            None => Err(format!("{v} is not a string")),
        })
        .collect()
}

/// One backend: `"ip:port"` or `{addr, weight?, id?, state?}`. Errors: (sub-field, reason).
fn parse_backend(value: &Value) -> Result<Backend, (Option<&'static str>, String)> {
    let addr_of = |v: &Value, field| {
        v.as_str()
            .and_then(|s| s.parse::<SocketAddr>().ok())
            .ok_or_else(|| {
                (
                    field,
                    format!(
                        "{v} is not an address with a port (\"198.18.2.11:80\", \"[fd00::1]:80\")"
                    ),
                )
            })
    };
    match value {
        Value::String(_) => {
            let addr = addr_of(value, None)?;
            Ok(Backend {
                id: BackendId::from(addr.to_string()),
                addr,
                weight: 1,
                state: BackendState::Active,
            })
        }
        Value::Object(obj) => backend_from_object(obj, addr_of),
        other => Err((
            None,
            format!("{other} must be \"ip:port\" or a table {{ addr = \"ip:port\", weight = 2 }}"),
        )),
    }
}

fn backend_from_object(
    obj: &Map<String, Value>,
    addr_of: impl Fn(&Value, Option<&'static str>) -> Result<SocketAddr, (Option<&'static str>, String)>,
) -> Result<Backend, (Option<&'static str>, String)> {
    for field in obj.keys() {
        if !["addr", "weight", "id", "state"].contains(&field.as_str()) {
            return Err((
                None,
                format!("unknown field `{field}` (expected addr, weight, id, state)"),
            ));
        }
    }
    let addr = match obj.get("addr") {
        Some(v) => addr_of(v, Some("addr"))?,
        None => return Err((Some("addr"), "missing".into())),
    };
    let weight = match obj.get("weight") {
        None => 1,
        Some(v) => v
            .as_u64()
            .and_then(|w| u32::try_from(w).ok())
            .filter(|w| *w >= 1)
            .ok_or_else(|| (Some("weight"), format!("{v} is not a weight (1 or more)")))?,
    };
    let id = match obj.get("id") {
        None => addr.to_string(),
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(v) => return Err((Some("id"), format!("{v} is not a non-empty string"))),
    };
    let state = match obj.get("state") {
        None => BackendState::Active,
        Some(Value::String(s)) if s == "active" => BackendState::Active,
        Some(Value::String(s)) if s == "draining" => BackendState::Draining,
        Some(v) => {
            return Err((
                Some("state"),
                format!("{v} is not \"active\" or \"draining\""),
            ));
        }
    };
    Ok(Backend {
        id: BackendId::from(id),
        addr,
        weight,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[service]]
name = "web"
port = 8080
protocol = "tcp"
bind_addr = "198.18.1.2"
backends = [
    "198.18.2.11:80",
    { addr = "198.18.2.12:80", weight = 2 },
    { addr = "198.18.2.13:80", id = "be3", state = "draining" },
]

[[service]]
port = 5353
protocol = "udp"
backends = ["198.18.2.11:53"]
"#;

    fn err(text: &str, format: Format) -> String {
        parse(text, format).unwrap_err().to_string()
    }

    #[test]
    fn static_config_toml_example() {
        let config = parse(EXAMPLE, Format::Toml).unwrap();
        assert_eq!(config.l4.len(), 2);
        let web = &config.l4[&L4ServiceKey {
            port: 8080,
            protocol: Protocol::Tcp,
        }];
        assert_eq!(web.app_id, "web");
        assert_eq!(web.bind_addr, Some("198.18.1.2".parse().unwrap()));
        let ids: Vec<&str> = web.backends.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["198.18.2.11:80", "198.18.2.12:80", "be3"]);
        assert_eq!(web.backends[1].weight, 2);
        assert_eq!(web.backends[2].state, BackendState::Draining);
        assert_eq!(web.backends[2].addr, "198.18.2.13:80".parse().unwrap());
        let dns = &config.l4[&L4ServiceKey {
            port: 5353,
            protocol: Protocol::Udp,
        }];
        assert_eq!(dns.app_id, "static:5353/udp");
        assert_eq!(dns.bind_addr, None);
    }

    #[test]
    fn static_config_json_equals_toml() {
        let json = r#"{"service": [
            {"name": "web", "port": 8080, "protocol": "tcp", "bind_addr": "198.18.1.2",
             "backends": ["198.18.2.11:80", {"addr": "198.18.2.12:80", "weight": 2},
                          {"addr": "198.18.2.13:80", "id": "be3", "state": "draining"}]},
            {"port": 5353, "protocol": "udp", "backends": ["198.18.2.11:53"]}
        ]}"#;
        assert_eq!(
            parse(json, Format::Json).unwrap(),
            parse(EXAMPLE, Format::Toml).unwrap()
        );
        let ipv6 = r#"{"service": [{"port": 80, "backends": ["[fd00:198:18:2::11]:80"]}]}"#;
        assert!(parse(ipv6, Format::Json).is_ok());
    }

    #[test]
    fn static_config_load_by_extension_or_by_trying() {
        let dir = std::env::temp_dir().join(format!("mlb-static-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml_path = dir.join("services.toml");
        std::fs::write(&toml_path, EXAMPLE).unwrap();
        let conf_path = dir.join("services.conf");
        std::fs::write(&conf_path, EXAMPLE).unwrap();
        let from_toml = load(&toml_path).unwrap();
        assert_eq!(load(&conf_path).unwrap(), from_toml);
        let bad = dir.join("bad.conf");
        std::fs::write(&bad, "[[[").unwrap();
        let e = load(&bad).unwrap_err().to_string();
        assert!(e.contains("neither valid JSON"), "{e}");
        let e = load(&dir.join("missing.toml")).unwrap_err().to_string();
        assert!(e.contains("missing.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn static_config_errors_name_the_service_and_field() {
        let cases: &[(&str, &[&str])] = &[
            (
                "[[service]]\nname = \"web\"\nport = 70000\nbackends = []",
                &["#1 \"web\"", "`port`", "70000"],
            ),
            (
                "[[service]]\nport = 80\nprotocol = \"sctp\"\nbackends = []",
                &["#1", "`protocol`", "sctp"],
            ),
            (
                "[[service]]\nport = 80\nbackends = [\"198.18.2.11\"]",
                &["#1 (80/tcp)", "`backends[0]`", "198.18.2.11"],
            ),
            (
                "[[service]]\nport = 80\nbackends = [{ addr = \"198.18.2.11:80\", weight = 0 }]",
                &["`backends[0].weight`", "0"],
            ),
            (
                "[[service]]\nport = 80\nbackends = [{ address = \"198.18.2.11:80\" }]",
                &["`backends[0]`", "address"],
            ),
            (
                "[[service]]\nport = 80\nbackends = [\"198.18.2.11:80\", \"198.18.2.11:80\"]",
                &["`backends[1]`", "twice"],
            ),
            (
                "[[service]]\nport = 80\nbind_addr = \"here\"\nbackends = []",
                &["`bind_addr`", "here"],
            ),
            (
                "[[service]]\nport = 80\nbalance = \"leastconn\"\nbackends = []",
                &["`balance`", "leastconn"],
            ),
            (
                "[[service]]\nport = 80\nallowed = [\"198.18.1.0/33\"]\nbackends = []",
                &["`allowed`", "198.18.1.0/33"],
            ),
            ("[[service]]\nport = 80", &["`backends`", "missing"]),
            (
                "[[service]]\nport = 80\nprotcol = \"udp\"\nbackends = []",
                &["`protcol`", "unknown field"],
            ),
            (
                "[[service]]\nname = \"a\"\nport = 80\nbackends = []\n\
                 [[service]]\nname = \"b\"\nport = 80\nbackends = []",
                &["#2 \"b\" (80/tcp)", "already declared", "#1 \"a\""],
            ),
            (
                "[[services]]\nport = 80",
                &["unknown top-level key `services`"],
            ),
        ];
        for (text, wanted) in cases {
            let e = err(text, Format::Toml);
            for w in *wanted {
                assert!(
                    e.contains(w),
                    "error for {text:?} should contain {w:?}: {e}"
                );
            }
        }
        let e = err(
            "{\"service\": [{\"port\": 80, \"backends\": 3}]}",
            Format::Json,
        );
        assert!(e.contains("`backends`: must be a list"), "{e}");
        let e = err("{\"service\": [", Format::Json);
        assert!(e.contains("not valid Json"), "{e}");
    }

    #[test]
    fn static_config_udp_and_tcp_may_share_a_port() {
        let text = "[[service]]\nport = 53\nbackends = []\n\
                    [[service]]\nport = 53\nprotocol = \"udp\"\nbackends = []";
        assert_eq!(parse(text, Format::Toml).unwrap().l4.len(), 2);
        assert!(parse("", Format::Toml).unwrap().l4.is_empty());
    }
}
