//! `HAPROXY_*` (and mlb's own `MLB_*`) app labels → typed settings.
//!
//! Keys match exactly and are case-sensitive, as in marathon-lb. `{n}` in `HAPROXY_{n}_…` is the
//! index into the service-port list the model computes (see [`super::ports`]), not the port
//! number. A value mlb cannot use becomes a [`LabelError`] that names the label and the value;
//! the caller rejects that one service port, never anything else.
use std::{collections::BTreeMap, net::IpAddr, ops::Bound, path::PathBuf};

use crate::model::{Balance, BasicAuth, ClientAuth, IpNet, TlsOptions, TlsVersion};

/// A label whose value mlb cannot use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("label {label}={value:?}: {reason}")]
pub struct LabelError {
    pub label: String,
    pub value: String,
    pub reason: String,
}

/// `HAPROXY_{n}_MODE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Tcp,
    Http,
}

/// The settings of one service port, from its `HAPROXY_{n}_*` / `MLB_{n}_*` labels. `None` and
/// empty mean "label absent".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PortLabels {
    /// `HAPROXY_{n}_ENABLED`.
    pub enabled: Option<bool>,
    /// `HAPROXY_{n}_GROUP`: replaces the app's `HAPROXY_GROUP` for this port.
    pub groups: Option<Vec<String>>,
    /// `HAPROXY_{n}_VHOST`, lower-cased.
    pub vhosts: Vec<String>,
    /// `HAPROXY_{n}_PATH` prefixes.
    pub paths: Vec<String>,
    pub mode: Option<Mode>,
    pub balance: Balance,
    pub sticky: bool,
    pub redirect_to_https: bool,
    pub use_hsts: bool,
    /// `HAPROXY_{n}_SSL_CERT` plus any `crt` in `BIND_OPTIONS`.
    pub ssl_certs: Vec<PathBuf>,
    pub bind_addr: Option<IpAddr>,
    pub tls: TlsOptions,
    /// `HAPROXY_{n}_PORT`: overrides the service port.
    pub port: Option<u16>,
    pub auth: Option<BasicAuth>,
    pub allowed_networks: Vec<IpNet>,
    pub proxypass_path: Option<String>,
    pub revproxy_path: Option<String>,
    pub redirect_root_to: Option<String>,
    /// `HAPROXY_{n}_BACKEND_WEIGHT` (a `PATH` turns 0 into 1, as marathon-lb).
    pub weight: i32,
    pub healthcheck_port_index: Option<usize>,
    /// `MLB_{n}_TLS_PASSTHROUGH`.
    pub tls_passthrough: bool,
    /// Labels set but meaningless in the mode this port ends up in, etc. (full label names).
    pub http_only_labels: Vec<&'static str>,
}

/// Per-app labels (`HAPROXY_GROUP` and the zero-downtime-deployment ones).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppLabels {
    /// `HAPROXY_GROUP`, split on commas and trimmed.
    pub groups: Vec<String>,
    pub deployment_group: Option<String>,
    pub deployment_started_at: Option<String>,
    pub deployment_target_instances: Option<u32>,
    pub deployment_new_instances: Option<u32>,
}

/// Parses the per-app labels. Deployment counters that are not numbers are errors.
pub fn app_labels(labels: &BTreeMap<String, String>) -> Result<AppLabels, LabelError> {
    let count = |key: &str| -> Result<Option<u32>, LabelError> {
        labels
            .get(key)
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .map_err(|_| err(key, v, "not a non-negative integer"))
            })
            .transpose()
    };
    Ok(AppLabels {
        groups: labels
            .get("HAPROXY_GROUP")
            .map(|v| split_list(v))
            .unwrap_or_default(),
        deployment_group: labels
            .get("HAPROXY_DEPLOYMENT_GROUP")
            .map(|v| v.trim().trim_start_matches('/').to_owned())
            .filter(|v| !v.is_empty()),
        deployment_started_at: labels.get("HAPROXY_DEPLOYMENT_STARTED_AT").cloned(),
        deployment_target_instances: count("HAPROXY_DEPLOYMENT_TARGET_INSTANCES")?,
        deployment_new_instances: count("HAPROXY_DEPLOYMENT_NEW_INSTANCES")?,
    })
}

fn err(label: &str, value: &str, reason: impl Into<String>) -> LabelError {
    LabelError {
        label: label.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// The crypt(3) schemes the proxy verifies: SHA-512, SHA-256, bcrypt. Others (MD5 `$1$`, DES,
/// a plain password) are refused here, so `mlb explain` says so and the proxy never gets them.
/// The reason never quotes the hash.
fn check_hash_scheme(hash: &str) -> Result<(), &'static str> {
    const SUPPORTED: [&str; 6] = ["$6$", "$5$", "$2a$", "$2b$", "$2x$", "$2y$"];
    if SUPPORTED.iter().any(|p| hash.starts_with(p)) {
        Ok(())
    } else {
        Err(
            "unsupported password hash: use a crypt(3) SHA-512 ($6$), SHA-256 ($5$) or bcrypt ($2y$) hash (MD5 $1$, DES and plain passwords are not accepted)",
        )
    }
}

/// Comma list, trimmed, empties dropped. (marathon-lb does not trim: `"a, b"` gave the group
/// `" b"`. mlb trims; see docs/compatibility.md.)
fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// marathon-lb's boolean: `true`, `t`, `yes`, `y` (any case) are true. mlb also reads
/// `false/f/no/n/0/1` and the empty string without comment; anything else is false, as in
/// marathon-lb, with a warning so a typo like `ture` is visible.
fn parse_bool(label: &str, v: &str, warnings: &mut Vec<String>) -> bool {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => true,
        "false" | "f" | "no" | "n" | "0" | "" => false,
        _ => {
            warnings.push(format!(
                "label {label}={v:?} is not a boolean; treated as false"
            ));
            false
        }
    }
}

/// HAProxy `balance` algorithms that mlb does not implement: accepted with a warning, balanced
/// round-robin (a label valid for marathon-lb must not take an app down).
const OTHER_HAPROXY_BALANCE: &[&str] = &[
    "static-rr",
    "first",
    "uri",
    "url_param",
    "hdr",
    "random",
    "rdp-cookie",
    "hash",
];

/// Parses the labels of service port `index`. Returns the settings (or the first label mlb
/// cannot use) and warnings about values it ignored.
pub fn port_labels(
    labels: &BTreeMap<String, String>,
    index: usize,
) -> (Result<PortLabels, LabelError>, Vec<String>) {
    let mut r = PortLabelReader {
        haproxy: PrefixedLabels::new(labels, format!("HAPROXY_{index}_")),
        mlb: PrefixedLabels::new(labels, format!("MLB_{index}_")),
        warnings: Vec::new(),
    };
    let result = parse_port_labels(&mut r);
    (result, r.warnings)
}

/// The labels under one prefix (`HAPROXY_{n}_`, `MLB_{n}_`), looked up by the rest of their
/// name. The model asks about dozens of label names per service port, and most apps set a few:
/// at 10,000 apps, formatting each full name to look it up cost more than the lookups. Here the
/// prefix is formatted once and a lookup walks only the app's labels that have it.
pub(crate) struct PrefixedLabels<'a> {
    labels: &'a BTreeMap<String, String>,
    prefix: String,
}

impl<'a> PrefixedLabels<'a> {
    pub(crate) fn new(labels: &'a BTreeMap<String, String>, prefix: String) -> Self {
        PrefixedLabels { labels, prefix }
    }

    /// `<prefix><name>`: the full label name and its value.
    pub(crate) fn get(&self, name: &str) -> Option<(String, &'a str)> {
        let from = (Bound::Included(self.prefix.as_str()), Bound::Unbounded);
        self.labels
            .range::<str, _>(from)
            .map_while(|(k, v)| Some((k, k.strip_prefix(self.prefix.as_str())?, v)))
            .find(|(_, rest, _)| *rest == name)
            .map(|(k, _, v)| (k.clone(), v.as_str()))
    }
}

/// The labels of one service port, and the warnings reading them gave.
struct PortLabelReader<'a> {
    haproxy: PrefixedLabels<'a>,
    mlb: PrefixedLabels<'a>,
    warnings: Vec<String>,
}

impl<'a> PortLabelReader<'a> {
    /// `HAPROXY_{n}_<name>`: the full label name and its value.
    fn get(&self, name: &str) -> Option<(String, &'a str)> {
        self.haproxy.get(name)
    }

    /// `MLB_{n}_<name>` (mlb's own labels).
    fn get_mlb(&self, name: &str) -> Option<(String, &'a str)> {
        self.mlb.get(name)
    }

    fn bool(&mut self, label: Option<(String, &str)>) -> Option<bool> {
        label.map(|(k, v)| parse_bool(&k, v, &mut self.warnings))
    }
}

/// The concerns are read in a fixed order, which users see: the first bad label in that order
/// is the one reported, and only the labels read before it give warnings.
fn parse_port_labels(r: &mut PortLabelReader<'_>) -> Result<PortLabels, LabelError> {
    let mut out = PortLabels::default();
    read_selection(r, &mut out);
    read_http_flags(r, &mut out);
    read_routing(r, &mut out)?;
    read_balance(r, &mut out)?;
    read_listener(r, &mut out)?;
    read_access(r, &mut out)?;
    read_backend_paths(r, &mut out)?;
    read_backend(r, &mut out)?;
    out.http_only_labels = HTTP_ONLY
        .iter()
        .copied()
        .filter(|name| r.get(name).is_some())
        .collect();
    Ok(out)
}

/// Whether this instance exposes the port: `ENABLED`, `GROUP`.
fn read_selection(r: &mut PortLabelReader<'_>, out: &mut PortLabels) {
    out.enabled = r.bool(r.get("ENABLED"));
    out.groups = r.get("GROUP").map(|(_, v)| split_list(v));
}

/// HTTP behaviour switches: `STICKY`, `REDIRECT_TO_HTTPS`, `USE_HSTS`.
fn read_http_flags(r: &mut PortLabelReader<'_>, out: &mut PortLabels) {
    for (name, field) in [
        ("STICKY", &mut out.sticky),
        ("REDIRECT_TO_HTTPS", &mut out.redirect_to_https),
        ("USE_HSTS", &mut out.use_hsts),
    ] {
        if let Some(b) = r.bool(r.get(name)) {
            *field = b;
        }
    }
}

/// How requests reach the port: `MLB_{n}_TLS_PASSTHROUGH`, `VHOST`, `PATH`, `MODE`.
fn read_routing(r: &mut PortLabelReader<'_>, out: &mut PortLabels) -> Result<(), LabelError> {
    if let Some(b) = r.bool(r.get_mlb("TLS_PASSTHROUGH")) {
        out.tls_passthrough = b;
    }
    if let Some((k, v)) = r.get("VHOST") {
        out.vhosts = parse_vhosts(&k, v)?;
    }
    if let Some((k, v)) = r.get("PATH") {
        out.paths = parse_paths(&k, v, &mut r.warnings)?;
    }
    if let Some((k, v)) = r.get("MODE") {
        out.mode = Some(match v.trim().to_ascii_lowercase().as_str() {
            "tcp" => Mode::Tcp,
            "http" => Mode::Http,
            _ => return Err(err(&k, v, "mode must be tcp or http")),
        });
    }
    Ok(())
}

/// `VHOST`: host names, lower-cased.
fn parse_vhosts(k: &str, v: &str) -> Result<Vec<String>, LabelError> {
    split_list(v)
        .into_iter()
        .map(|host| {
            let host = host.to_ascii_lowercase();
            let valid = host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '*'));
            if valid {
                Ok(host)
            } else {
                Err(err(
                    k,
                    v,
                    format!("{host:?} is not a host name (letters, digits, '.', '-', '*')"),
                ))
            }
        })
        .collect()
}

/// `PATH`: prefixes; HAProxy flags (`-i`…) are ignored with a warning.
fn parse_paths(k: &str, v: &str, warnings: &mut Vec<String>) -> Result<Vec<String>, LabelError> {
    let mut paths = Vec::new();
    for token in v.split_whitespace() {
        if token.starts_with('/') {
            paths.push(token.to_owned());
        } else if token.starts_with('-') {
            warnings.push(format!(
                "label {k}: HAProxy flag {token:?} is ignored (paths match case-sensitively by prefix)"
            ));
        } else {
            return Err(err(
                k,
                v,
                format!("{token:?} is not a path (must start with '/')"),
            ));
        }
    }
    Ok(paths)
}

/// `BALANCE`: HAProxy algorithms mlb does not implement are balanced round-robin, with a
/// warning; unknown names are errors.
fn read_balance(r: &mut PortLabelReader<'_>, out: &mut PortLabels) -> Result<(), LabelError> {
    let Some((k, v)) = r.get("BALANCE") else {
        return Ok(());
    };
    let lower = v.trim().to_ascii_lowercase();
    let algo = lower.split(['(', ' ']).next().unwrap_or_default();
    out.balance = match algo {
        "roundrobin" => Balance::RoundRobin,
        "leastconn" => Balance::LeastConn,
        "source" => Balance::Source,
        other if OTHER_HAPROXY_BALANCE.contains(&other) => {
            r.warnings.push(format!(
                "label {k}={v:?}: not supported by mlb; balancing round-robin"
            ));
            Balance::RoundRobin
        }
        _ => {
            return Err(err(
                &k,
                v,
                "unknown balance algorithm (roundrobin, leastconn or source)",
            ));
        }
    };
    Ok(())
}

/// Where and how the port listens: `SSL_CERT`, `BIND_ADDR`, `BIND_OPTIONS`, `PORT`.
fn read_listener(r: &mut PortLabelReader<'_>, out: &mut PortLabels) -> Result<(), LabelError> {
    if let Some((_, v)) = r.get("SSL_CERT") {
        out.ssl_certs
            .extend(split_list(v).into_iter().map(PathBuf::from));
    }
    if let Some((k, v)) = r.get("BIND_ADDR") {
        let t = v.trim();
        if !t.is_empty() && t != "*" {
            out.bind_addr = Some(
                t.parse()
                    .map_err(|_| err(&k, v, "not an IP address (or *)"))?,
            );
        }
    }
    if let Some((k, v)) = r.get("BIND_OPTIONS") {
        parse_bind_options(&k, v, out, &mut r.warnings)?;
    }
    if let Some((k, v)) = r.get("PORT") {
        out.port = Some(
            v.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| err(&k, v, "not a port number"))?,
        );
    }
    Ok(())
}

/// Who may use the port: `AUTH` (basic auth), `BACKEND_NETWORK_ALLOWED_ACL`.
fn read_access(r: &PortLabelReader<'_>, out: &mut PortLabels) -> Result<(), LabelError> {
    if let Some((k, v)) = r.get("AUTH") {
        let parts: Vec<&str> = v.split(':').collect();
        match parts.as_slice() {
            [realm, user, hash] if !realm.is_empty() && !user.is_empty() && !hash.is_empty() => {
                check_hash_scheme(hash).map_err(|reason| err(&k, "<redacted>", reason))?;
                out.auth = Some(BasicAuth {
                    realm: (*realm).to_owned(),
                    user: (*user).to_owned(),
                    password_hash: (*hash).to_owned(),
                });
            }
            _ => return Err(err(&k, "<redacted>", "expected realm:user:crypt-hash")),
        }
    }
    if let Some((k, v)) = r.get("BACKEND_NETWORK_ALLOWED_ACL") {
        for net in v.split_whitespace() {
            out.allowed_networks.push(
                net.parse::<IpNet>()
                    .map_err(|e| err(&k, v, e.to_string()))?,
            );
        }
    }
    Ok(())
}

/// Request and response rewriting: `HTTP_BACKEND_PROXYPASS_PATH`, `…_REVPROXY_PATH`,
/// `…_REDIR`.
fn read_backend_paths(r: &PortLabelReader<'_>, out: &mut PortLabels) -> Result<(), LabelError> {
    for (name, field) in [
        ("HTTP_BACKEND_PROXYPASS_PATH", &mut out.proxypass_path),
        ("HTTP_BACKEND_REVPROXY_PATH", &mut out.revproxy_path),
    ] {
        if let Some((k, v)) = r.get(name) {
            let t = v.trim();
            if !t.starts_with('/') || t.contains(char::is_whitespace) {
                return Err(err(&k, v, "must be a path starting with '/'"));
            }
            *field = Some(t.to_owned());
        }
    }
    if let Some((k, v)) = r.get("HTTP_BACKEND_REDIR") {
        let t = v.trim();
        if t.is_empty() || t.contains(char::is_whitespace) {
            return Err(err(&k, v, "must be a path or URL without spaces"));
        }
        out.redirect_root_to = Some(t.to_owned());
    }
    Ok(())
}

/// The backend as a whole: `BACKEND_WEIGHT` (a `PATH` turns 0 into 1, as marathon-lb),
/// `BACKEND_HEALTHCHECK_PORT_INDEX`.
fn read_backend(r: &PortLabelReader<'_>, out: &mut PortLabels) -> Result<(), LabelError> {
    if let Some((k, v)) = r.get("BACKEND_WEIGHT") {
        out.weight = v
            .trim()
            .parse::<i32>()
            .map_err(|_| err(&k, v, "not an integer"))?;
    }
    if !out.paths.is_empty() && out.weight == 0 {
        out.weight = 1;
    }
    if let Some((k, v)) = r.get("BACKEND_HEALTHCHECK_PORT_INDEX") {
        out.healthcheck_port_index = Some(
            v.trim()
                .parse::<usize>()
                .map_err(|_| err(&k, v, "not a port index"))?,
        );
    }
    Ok(())
}

/// Labels that only mean something for an HTTP service (ignored, with a warning, in tcp mode).
const HTTP_ONLY: &[&str] = &[
    "VHOST",
    "PATH",
    "STICKY",
    "REDIRECT_TO_HTTPS",
    "USE_HSTS",
    "AUTH",
    "HTTP_BACKEND_PROXYPASS_PATH",
    "HTTP_BACKEND_REVPROXY_PATH",
    "HTTP_BACKEND_REDIR",
    "BACKEND_WEIGHT",
];

/// Bind options that take one argument (so the argument is not read as an option).
const BIND_OPTIONS_WITH_ARG: &[&str] = &[
    "alpn",
    "ca-file",
    "crt",
    "ssl-min-ver",
    "ssl-max-ver",
    "verify",
    "ciphers",
    "ciphersuites",
    "curves",
    "ecdhe",
    "crl-file",
    "crt-list",
    "ca-ignore-err",
    "crt-ignore-err",
    "ca-verify-file",
    "ca-sign-file",
    "ca-sign-pass",
    "sigalgs",
    "client-sigalgs",
    "npn",
    "maxconn",
    "backlog",
    "mss",
    "name",
    "id",
    "nice",
    "process",
    "interface",
    "user",
    "group",
    "uid",
    "gid",
    "mode",
    "level",
    "namespace",
    "tcp-ut",
    "severity-output",
    "thread",
];

/// Bind options that rustls already implies (TLS ≥ 1.2, no tickets with stateless resumption
/// handled by rustls): accepted silently.
const BIND_OPTIONS_IMPLIED: &[&str] = &[
    "ssl",
    "no-sslv3",
    "no-tlsv10",
    "no-tlsv11",
    "no-tls-tickets",
    "prefer-client-ciphers",
    "strict-sni",
];

/// `HAPROXY_{n}_BIND_OPTIONS`: keeps the TLS-relevant subset: `alpn`, `ssl-min-ver`,
/// `ssl-max-ver`, `force-tlsv12`/`force-tlsv13`, `verify none|optional|required` with `ca-file`
/// (client certificates), and `crt` (one more certificate). Options rustls implies (`ssl`,
/// `no-sslv3`, `no-tlsv10`, …) are accepted silently; everything else (`ciphers`, `curves`,
/// `accept-proxy`, `maxconn`, …) is ignored with one warning naming the options.
fn parse_bind_options(
    key: &str,
    value: &str,
    out: &mut PortLabels,
    warnings: &mut Vec<String>,
) -> Result<(), LabelError> {
    let mut tokens = value.split_whitespace();
    let mut verify: Option<String> = None;
    let mut ca_file: Option<PathBuf> = None;
    let mut ignored: Vec<String> = Vec::new();
    let version = |arg: &str| match arg.to_ascii_uppercase().as_str() {
        "TLSV1.2" => Ok(TlsVersion::Tls12),
        "TLSV1.3" => Ok(TlsVersion::Tls13),
        _ => Err(err(
            key,
            value,
            format!("TLS version {arg:?}: mlb supports TLSv1.2 and TLSv1.3"),
        )),
    };
    while let Some(opt) = tokens.next() {
        let mut arg = || {
            tokens
                .next()
                .ok_or_else(|| err(key, value, format!("option {opt:?} needs a value")))
        };
        match opt {
            "alpn" => {
                out.tls.alpn = arg()?.split(',').map(str::to_owned).collect();
            }
            "ssl-min-ver" => out.tls.min_version = Some(version(arg()?)?),
            "ssl-max-ver" => out.tls.max_version = Some(version(arg()?)?),
            "force-tlsv12" => {
                out.tls.min_version = Some(TlsVersion::Tls12);
                out.tls.max_version = Some(TlsVersion::Tls12);
            }
            "force-tlsv13" => {
                out.tls.min_version = Some(TlsVersion::Tls13);
                out.tls.max_version = Some(TlsVersion::Tls13);
            }
            "verify" => verify = Some(arg()?.to_ascii_lowercase()),
            "ca-file" => ca_file = Some(PathBuf::from(arg()?)),
            "crt" => out.ssl_certs.push(PathBuf::from(arg()?)),
            o if BIND_OPTIONS_IMPLIED.contains(&o) => {}
            o if BIND_OPTIONS_WITH_ARG.contains(&o) => {
                let a = arg()?;
                ignored.push(format!("{o} {a}"));
            }
            o => ignored.push(o.to_owned()),
        }
    }
    out.tls.client_auth = match verify.as_deref() {
        None | Some("none") => None,
        Some(mode @ ("optional" | "required")) => Some(ClientAuth {
            ca_file: ca_file
                .take()
                .ok_or_else(|| err(key, value, format!("verify {mode} needs ca-file")))?,
            required: mode == "required",
        }),
        Some(other) => {
            return Err(err(
                key,
                value,
                format!("verify {other:?}: expected none, optional or required"),
            ));
        }
    };
    if !ignored.is_empty() {
        warnings.push(format!(
            "label {key}: options ignored by mlb: {}",
            ignored.join(", ")
        ));
    }
    Ok(())
}

/// marathon-lb's HAProxy template names. As labels (`HAPROXY_{n}_<NAME>` or `HAPROXY_<NAME>`)
/// they carry raw HAProxy configuration text, which means nothing to mlb.
const TEMPLATES: &[&str] = &[
    "HEAD",
    "HTTP_FRONTEND_HEAD",
    "HTTP_FRONTEND_APPID_HEAD",
    "HTTPS_FRONTEND_HEAD",
    "HTTPS_GROUPED_FRONTEND_HEAD",
    "HTTPS_GROUPED_VHOST_FRONTEND_HEAD",
    "HTTPS_GROUPED_VHOST_BACKEND_HEAD",
    "HTTPS_GROUPED_VHOST_FRONTEND_ACL",
    "HTTP_BACKEND_ACL_ALLOW_DENY",
    "TCP_BACKEND_ACL_ALLOW_DENY",
    "FRONTEND_HEAD",
    "FRONTEND_BACKEND_GLUE",
    "BACKEND_HEAD",
    "USERLIST_HEAD",
    "BACKEND_HTTP_OPTIONS",
    "BACKEND_HSTS_OPTIONS",
    "BACKEND_STICKY_OPTIONS",
    "BACKEND_SERVER_OPTIONS",
    "BACKEND_HTTP_HEALTHCHECK_OPTIONS",
    "BACKEND_TCP_HEALTHCHECK_OPTIONS",
    "BACKEND_SERVER_HTTP_HEALTHCHECK_OPTIONS",
    "BACKEND_SERVER_TCP_HEALTHCHECK_OPTIONS",
    "BACKEND_REDIRECT_HTTP_TO_HTTPS",
    "BACKEND_REDIRECT_HTTP_TO_HTTPS_WITH_PATH",
    "HTTP_FRONTEND_ACL",
    "HTTP_FRONTEND_ACL_ONLY",
    "HTTP_FRONTEND_ROUTING_ONLY",
    "HTTP_FRONTEND_ACL_WITH_AUTH",
    "HTTP_FRONTEND_ROUTING_ONLY_WITH_AUTH",
    "HTTP_FRONTEND_ACL_WITH_PATH",
    "HTTP_FRONTEND_ACL_WITH_AUTH_AND_PATH",
    "HTTP_FRONTEND_ACL_ONLY_WITH_PATH",
    "HTTP_FRONTEND_ACL_ONLY_WITH_PATH_AND_AUTH",
    "HTTP_FRONTEND_ROUTING_ONLY_WITH_PATH",
    "HTTP_FRONTEND_ROUTING_ONLY_WITH_PATH_AND_AUTH",
    "HTTP_FRONTEND_APPID_ACL",
    "HTTPS_FRONTEND_ACL",
    "HTTPS_FRONTEND_ACL_WITH_AUTH",
    "HTTPS_FRONTEND_ACL_WITH_PATH",
    "HTTPS_FRONTEND_ACL_WITH_AUTH_AND_PATH",
    "HTTPS_FRONTEND_ACL_ONLY_WITH_PATH",
    "HTTPS_FRONTEND_ROUTING_ONLY_WITH_PATH_AND_AUTH",
    "HTTPS_FRONTEND_AUTH_ACL_ONLY",
    "HTTPS_FRONTEND_AUTH_REQUEST_ONLY",
    "MAP_HTTP_FRONTEND_ACL",
    "MAP_HTTP_FRONTEND_ACL_ONLY",
    "MAP_HTTPS_FRONTEND_ACL",
    "MAP_HTTP_FRONTEND_APPID_ACL",
    "HTTP_BACKEND_PROXYPASS_GLUE",
    "HTTP_BACKEND_REVPROXY_GLUE",
    "HTTP_BACKEND_NETWORK_ALLOWED_ACL",
    "TCP_BACKEND_NETWORK_ALLOWED_ACL",
];

/// The app's raw-template labels (`HAPROXY_0_BACKEND_SERVER_OPTIONS`, `HAPROXY_HEAD`, …), sorted.
pub fn template_labels(labels: &BTreeMap<String, String>) -> Vec<&str> {
    labels
        .keys()
        .filter(|k| {
            let Some(rest) = k.strip_prefix("HAPROXY_") else {
                return false;
            };
            let name = match rest.split_once('_') {
                Some((n, name)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => rest,
            };
            TEMPLATES.contains(&name)
        })
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A label map from pairs (also used by the tuning label tests).
    pub(in crate::model) fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<PortLabels, LabelError> {
        port_labels(&labels(pairs), 0).0
    }

    #[test]
    fn each_behavioural_label_is_read() {
        let l = parse(&[
            ("HAPROXY_0_ENABLED", "Yes"),
            ("HAPROXY_0_GROUP", "external, internal"),
            ("HAPROXY_0_VHOST", "A.example.com, b.example.com"),
            ("HAPROXY_0_PATH", "-i /api /v2"),
            ("HAPROXY_0_MODE", "HTTP"),
            ("HAPROXY_0_BALANCE", "leastconn"),
            ("HAPROXY_0_STICKY", "true"),
            ("HAPROXY_0_REDIRECT_TO_HTTPS", "y"),
            ("HAPROXY_0_USE_HSTS", "t"),
            ("HAPROXY_0_SSL_CERT", "/etc/ssl/a.pem"),
            ("HAPROXY_0_BIND_ADDR", "198.18.0.10"),
            (
                "HAPROXY_0_BIND_OPTIONS",
                "alpn h2,http/1.1 ssl-min-ver TLSv1.3 verify required ca-file /etc/ca.pem crt /etc/ssl/b.pem",
            ),
            ("HAPROXY_0_PORT", "10100"),
            ("HAPROXY_0_AUTH", "realm:admin:$6$salt$hash"),
            ("HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL", "10.0.0.0/8 198.18.0.1"),
            ("HAPROXY_0_HTTP_BACKEND_PROXYPASS_PATH", "/proxy"),
            ("HAPROXY_0_HTTP_BACKEND_REVPROXY_PATH", "/rev"),
            ("HAPROXY_0_HTTP_BACKEND_REDIR", "/landing"),
            ("HAPROXY_0_BACKEND_WEIGHT", "5"),
            ("HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX", "1"),
            ("MLB_0_TLS_PASSTHROUGH", "false"),
        ])
        .unwrap();
        assert_eq!(l.enabled, Some(true));
        assert_eq!(
            l.groups.as_deref(),
            Some(&["external".into(), "internal".into()][..])
        );
        assert_eq!(l.vhosts, ["a.example.com", "b.example.com"]);
        assert_eq!(l.paths, ["/api", "/v2"]);
        assert_eq!(l.mode, Some(Mode::Http));
        assert_eq!(l.balance, Balance::LeastConn);
        assert!(l.sticky && l.redirect_to_https && l.use_hsts && !l.tls_passthrough);
        assert_eq!(
            l.ssl_certs,
            [
                PathBuf::from("/etc/ssl/a.pem"),
                PathBuf::from("/etc/ssl/b.pem")
            ]
        );
        assert_eq!(l.bind_addr, Some("198.18.0.10".parse().unwrap()));
        assert_eq!(l.tls.alpn, ["h2", "http/1.1"]);
        assert_eq!(l.tls.min_version, Some(TlsVersion::Tls13));
        assert_eq!(
            l.tls.client_auth,
            Some(ClientAuth {
                ca_file: "/etc/ca.pem".into(),
                required: true
            })
        );
        assert_eq!(l.port, Some(10100));
        let auth = l.auth.unwrap();
        assert_eq!(
            (auth.realm.as_str(), auth.user.as_str()),
            ("realm", "admin")
        );
        assert_eq!(auth.password_hash, "$6$salt$hash");
        assert_eq!(l.allowed_networks.len(), 2);
        assert!(l.allowed_networks[0].contains("10.1.2.3".parse().unwrap()));
        assert_eq!(l.proxypass_path.as_deref(), Some("/proxy"));
        assert_eq!(l.revproxy_path.as_deref(), Some("/rev"));
        assert_eq!(l.redirect_root_to.as_deref(), Some("/landing"));
        assert_eq!(l.weight, 5);
        assert_eq!(l.healthcheck_port_index, Some(1));
    }

    #[test]
    fn labels_of_other_port_indices_do_not_leak() {
        let l = parse(&[("HAPROXY_1_VHOST", "b.example"), ("HAPROXY_10_PORT", "x")]).unwrap();
        assert!(l.vhosts.is_empty());
        assert_eq!(l.port, None);
    }

    #[test]
    fn path_without_weight_gets_weight_one() {
        assert_eq!(parse(&[("HAPROXY_0_PATH", "/a")]).unwrap().weight, 1);
        assert_eq!(
            parse(&[("HAPROXY_0_PATH", "/a"), ("HAPROXY_0_BACKEND_WEIGHT", "0")])
                .unwrap()
                .weight,
            1
        );
        assert_eq!(parse(&[]).unwrap().weight, 0);
    }

    #[test]
    fn bad_values_name_label_and_value() {
        let cases = [
            (
                ("HAPROXY_0_PORT", "abc"),
                "label HAPROXY_0_PORT=\"abc\": not a port number",
            ),
            (("HAPROXY_0_PORT", "70000"), "not a port number"),
            (("HAPROXY_0_MODE", "udp"), "mode must be tcp or http"),
            (
                ("HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL", "10.0.0.0/33"),
                "prefix length",
            ),
            (("HAPROXY_0_BIND_ADDR", "eth0"), "not an IP address"),
            (("HAPROXY_0_BACKEND_WEIGHT", "heavy"), "not an integer"),
            (
                ("HAPROXY_0_BALANCE", "fastest"),
                "unknown balance algorithm",
            ),
            (("HAPROXY_0_VHOST", "a b.com"), "is not a host name"),
            (("HAPROXY_0_PATH", "api"), "is not a path"),
            (
                ("HAPROXY_0_HTTP_BACKEND_PROXYPASS_PATH", "x"),
                "must be a path",
            ),
            (
                ("HAPROXY_0_BIND_OPTIONS", "verify required"),
                "needs ca-file",
            ),
            (
                ("HAPROXY_0_BIND_OPTIONS", "ssl-min-ver SSLv3"),
                "TLS version",
            ),
            (
                ("HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX", "-1"),
                "not a port index",
            ),
        ];
        for ((k, v), want) in cases {
            let e = parse(&[(k, v)]).unwrap_err();
            assert_eq!(e.label, k);
            assert_eq!(e.value, v);
            assert!(e.to_string().contains(want), "{k}={v}: {e}");
        }
    }

    /// Auth labels the proxy cannot check are refused here, so explain and the proxy agree, and
    /// the error never quotes the secret.
    #[test]
    fn auth_labels_with_unusable_hashes_are_refused_without_quoting_them() {
        for (v, want) in [
            ("realm:user", "expected realm:user:crypt-hash"),
            (
                "realm:user:$1$saltsalt$md5md5md5",
                "unsupported password hash",
            ),
            ("realm:user:plainsecret", "unsupported password hash"),
        ] {
            let e = parse(&[("HAPROXY_0_AUTH", v)]).unwrap_err();
            let shown = e.to_string();
            assert!(
                shown.contains(want) && shown.contains("HAPROXY_0_AUTH"),
                "{shown}"
            );
            assert!(
                !shown.contains("saltsalt") && !shown.contains("plainsecret"),
                "{shown}"
            );
        }
        assert!(parse(&[("HAPROXY_0_AUTH", "r:u:$2y$05$abcdefghijklmnopqrstuv")]).is_ok());
    }

    #[test]
    fn unusable_but_harmless_values_warn() {
        let (res, warnings) = port_labels(
            &labels(&[
                ("HAPROXY_0_STICKY", "ture"),
                ("HAPROXY_0_BALANCE", "uri"),
                (
                    "HAPROXY_0_BIND_OPTIONS",
                    "ssl ciphers ECDHE accept-proxy no-sslv3",
                ),
            ]),
            0,
        );
        let l = res.unwrap();
        assert!(!l.sticky);
        assert_eq!(l.balance, Balance::RoundRobin);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("HAPROXY_0_STICKY"));
        assert!(
            warnings[2].contains("ciphers ECDHE, accept-proxy"),
            "{warnings:?}"
        );
    }

    /// The concerns are read in a fixed order: of two bad labels the one read first is reported,
    /// with the warnings of the labels read before it.
    #[test]
    fn first_bad_label_in_reading_order_wins() {
        let (res, warnings) = port_labels(
            &labels(&[
                ("HAPROXY_0_PORT", "x"),
                ("HAPROXY_0_MODE", "udp"),
                ("HAPROXY_0_STICKY", "maybe"),
                ("HAPROXY_0_BACKEND_WEIGHT", "heavy"),
            ]),
            0,
        );
        assert_eq!(res.unwrap_err().label, "HAPROXY_0_MODE");
        assert_eq!(
            warnings,
            ["label HAPROXY_0_STICKY=\"maybe\" is not a boolean; treated as false"]
        );
        let (res, warnings) = port_labels(
            &labels(&[("HAPROXY_0_PORT", "x"), ("HAPROXY_0_BALANCE", "uri")]),
            0,
        );
        assert_eq!(res.unwrap_err().label, "HAPROXY_0_PORT");
        assert_eq!(warnings.len(), 1, "balance is read before the listener");
    }

    #[test]
    fn template_labels_are_found_by_name() {
        let l = labels(&[
            ("HAPROXY_0_BACKEND_SERVER_OPTIONS", "x"),
            ("HAPROXY_HEAD", "x"),
            ("HAPROXY_1_FRONTEND_HEAD", "x"),
            ("HAPROXY_0_VHOST", "x"),
            ("HAPROXY_0_HTTP_BACKEND_REDIR", "/x"),
            ("HAPROXY_GROUP", "x"),
        ]);
        assert_eq!(
            template_labels(&l),
            [
                "HAPROXY_0_BACKEND_SERVER_OPTIONS",
                "HAPROXY_1_FRONTEND_HEAD",
                "HAPROXY_HEAD"
            ]
        );
    }

    #[test]
    fn app_labels_trim_groups_and_check_counters() {
        let a = app_labels(&labels(&[
            ("HAPROXY_GROUP", "a, b,,"),
            ("HAPROXY_DEPLOYMENT_GROUP", "/nginx"),
            ("HAPROXY_DEPLOYMENT_TARGET_INSTANCES", "20"),
        ]))
        .unwrap();
        assert_eq!(a.groups, ["a", "b"]);
        assert_eq!(a.deployment_group.as_deref(), Some("nginx"));
        assert_eq!(a.deployment_target_instances, Some(20));
        let e =
            app_labels(&labels(&[("HAPROXY_DEPLOYMENT_TARGET_INSTANCES", "many")])).unwrap_err();
        assert_eq!(e.label, "HAPROXY_DEPLOYMENT_TARGET_INSTANCES");
    }
}
