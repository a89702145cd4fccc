//! HAProxy directives inside marathon-lb template labels (`HAPROXY_{n}_BACKEND_HEAD`,
//! `HAPROXY_HEAD`, …) mapped onto [`Tuning`]. mlb generates no HAProxy config, but users tuned
//! marathon-lb through these labels; every directive that has a typed equivalent is applied and
//! every other one is reported with the reason, so `mlb explain` shows exactly what happened.
//!
//! marathon-lb's templates contain `{backend}`, `{sslCert}`, … placeholders: lines made of the
//! template's own skeleton (`backend {backend}`, `bind {bindAddr}:{servicePort}…`) are what mlb
//! builds from the other labels, and placeholders inside a `server` line are dropped before its
//! options are read.
use std::{fmt, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::{
    Balance,
    tuning::{BackendTls, HeaderEdit, ProxyProtocol, Tuning, parse_duration},
};

/// What mlb did with one directive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "effect", content = "reason")]
pub enum Effect {
    /// Mapped onto a typed setting.
    Applied,
    /// Already what mlb does; nothing to change.
    Builtin(String),
    /// Part of the template's skeleton (section, bind, mode…), which mlb builds from the labels.
    Skeleton,
    /// Not applied, and why.
    NotApplied(String),
}

/// One directive of a template label and its effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectiveOutcome {
    /// The label it comes from (`HAPROXY_0_BACKEND_HEAD`).
    pub label: String,
    /// The directive, trimmed.
    pub directive: String,
    #[serde(flatten)]
    pub effect: Effect,
}

impl fmt::Display for DirectiveOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (l, d) = (&self.label, &self.directive);
        match &self.effect {
            Effect::Applied => write!(f, "{l}: applied: {d}"),
            Effect::Builtin(why) => write!(f, "{l}: already mlb's behaviour: {d} ({why})"),
            Effect::Skeleton => write!(f, "{l}: template structure, built by mlb: {d}"),
            Effect::NotApplied(why) => write!(f, "{l}: not applied: {d}: {why}"),
        }
    }
}

/// The HAProxy section a directive is in: it decides what `maxconn` means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Global,
    Defaults,
    Frontend,
    Backend,
}

/// Reads the directives of template label `label` (its text `text`) into `tuning`.
pub fn apply_template(label: &str, text: &str, tuning: &mut Tuning) -> Vec<DirectiveOutcome> {
    let mut section = initial_section(label);
    let mut out = Vec::new();
    // Labels set through JSON often carry `\n` escapes literally.
    for line in text.replace("\\n", "\n").lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let effect = match words.first().copied().and_then(section_of) {
            Some(s) => {
                section = s;
                Effect::Skeleton
            }
            None => directive(section, &words, tuning),
        };
        out.push(DirectiveOutcome {
            label: label.to_owned(),
            directive: line.to_owned(),
            effect,
        });
    }
    out
}

/// `HAPROXY_GLOBAL_DEFAULT_OPTIONS`: a comma list of `option` names for the `defaults` section.
pub fn apply_default_options(text: &str, tuning: &mut Tuning) -> Vec<DirectiveOutcome> {
    text.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| DirectiveOutcome {
            label: "HAPROXY_GLOBAL_DEFAULT_OPTIONS".to_owned(),
            directive: format!("option {o}"),
            effect: option(&[o], tuning, false),
        })
        .collect()
}

fn initial_section(label: &str) -> Section {
    if label.contains("BACKEND") {
        Section::Backend
    } else if label.contains("FRONTEND") {
        Section::Frontend
    } else {
        Section::Defaults
    }
}

fn section_of(word: &str) -> Option<Section> {
    Some(match word {
        "global" => Section::Global,
        "defaults" => Section::Defaults,
        "frontend" | "listen" => Section::Frontend,
        "backend" => Section::Backend,
        _ => return None,
    })
}

fn not(reason: &str) -> Effect {
    Effect::NotApplied(reason.to_owned())
}

fn directive(section: Section, words: &[&str], t: &mut Tuning) -> Effect {
    match words {
        ["timeout", kind, value] => timeout(kind, value, t),
        ["http-request", rest @ ..] => header_edit(rest, &mut t.request_headers),
        ["http-response", rest @ ..] => header_edit(rest, &mut t.response_headers),
        ["option", rest @ ..] => option(rest, t, false),
        ["no", "option", rest @ ..] => option(rest, t, true),
        ["maxconn", n] => maxconn(section, n, t),
        ["balance", algo, ..] => balance(algo, t),
        ["server", _, _, opts @ ..] => server_options(opts, t),
        ["default-server", opts @ ..] => server_options(opts, t),
        // BACKEND_SERVER_OPTIONS overrides often hold only the options.
        [first, ..] if first.starts_with('{') || SERVER_WORDS.contains(first) => {
            server_options(words, t)
        }
        ["mode" | "bind" | "use_backend" | "default_backend", ..] => Effect::Skeleton,
        ["reqadd", rest @ ..] => legacy_add(rest, &mut t.request_headers),
        ["rspadd", rest @ ..] => legacy_add(rest, &mut t.response_headers),
        ["acl" | "http-request-deny" | "redirect", ..] => not(
            "routing and ACLs come from HAPROXY_{n}_VHOST, _PATH and _BACKEND_NETWORK_ALLOWED_ACL",
        ),
        ["log" | "log-format" | "capture", ..] => not("logging is set with mlb's --log-* flags"),
        ["retries" | "retry-on", ..] => {
            Effect::Builtin("a failed connect is retried once on another backend".to_owned())
        }
        ["stats" | "errorfile" | "errorloc", ..] => {
            not("mlb serves stats and error pages itself (admin listener)")
        }
        _ if section == Section::Global => not("HAProxy process setting; mlb has no equivalent"),
        _ => not("no typed mlb setting for this directive"),
    }
}

/// HAProxy 1.x `reqadd Name:\ value` / `rspadd`: an added header, spaces escaped.
fn legacy_add(words: &[&str], edits: &mut Vec<HeaderEdit>) -> Effect {
    if words.iter().any(|w| *w == "if" || *w == "unless") {
        return not("conditional rules (if/unless) are not supported");
    }
    let line = words.join(" ").replace("\\ ", " ");
    match line.split_once(':') {
        Some((name, value)) if !name.is_empty() && !name.contains(' ') => {
            edits.push(HeaderEdit::Add {
                name: name.to_owned(),
                value: value.trim().to_owned(),
            });
            Effect::Applied
        }
        _ => not("expected Name:\\ value"),
    }
}

fn timeout(kind: &str, value: &str, t: &mut Tuning) -> Effect {
    let Some(d) = parse_duration(value) else {
        return not("not an HAProxy duration");
    };
    let to = &mut t.timeouts;
    let slot = match kind {
        "client" => &mut to.client,
        "server" => &mut to.server,
        "connect" => &mut to.connect,
        "tunnel" => &mut to.tunnel,
        "http-request" => &mut to.http_request,
        "http-keep-alive" => &mut to.http_keep_alive,
        _ => return not("mlb has no such timeout (it queues nothing and checks on its own timer)"),
    };
    *slot = Some(d);
    Effect::Applied
}

fn header_edit(words: &[&str], edits: &mut Vec<HeaderEdit>) -> Effect {
    if words.iter().any(|w| *w == "if" || *w == "unless") {
        return not("conditional rules (if/unless) are not supported");
    }
    match parse_header_edit(words) {
        Ok(edit) => {
            edits.push(edit);
            Effect::Applied
        }
        Err(why) => Effect::NotApplied(why),
    }
}

/// `set-header NAME VALUE`, `add-header NAME VALUE` or `del-header NAME` (the syntax of
/// HAProxy's `http-request` rules, and of the `MLB_{n}_REQUEST_HEADERS` label lines).
pub fn header_edit_line(line: &str) -> Result<HeaderEdit, String> {
    parse_header_edit(&line.split_whitespace().collect::<Vec<_>>())
}

fn parse_header_edit(words: &[&str]) -> Result<HeaderEdit, String> {
    let edit = match words {
        ["set-header", name, value @ ..] if !value.is_empty() => HeaderEdit::Set {
            name: (*name).to_owned(),
            value: value.join(" "),
        },
        ["add-header", name, value @ ..] if !value.is_empty() => HeaderEdit::Add {
            name: (*name).to_owned(),
            value: value.join(" "),
        },
        ["del-header", name] => HeaderEdit::Del {
            name: (*name).to_owned(),
        },
        _ => return Err("only set-header, add-header and del-header are mapped".to_owned()),
    };
    let name = match &edit {
        HeaderEdit::Set { name, .. } | HeaderEdit::Add { name, .. } | HeaderEdit::Del { name } => {
            name
        }
    };
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("{name:?} is not a header name"));
    }
    if let HeaderEdit::Set { value, .. } | HeaderEdit::Add { value, .. } = &edit {
        if let Some(fetch) = unsupported_fetch(value) {
            return Err(format!("sample fetch %[{fetch}] is not supported"));
        }
        if http::HeaderValue::from_str(value).is_err() {
            return Err(format!("{value:?} is not a header value"));
        }
    }
    Ok(edit)
}

/// Sample fetches the proxy expands in header values.
pub const FETCHES: &[&str] = &[
    "src",
    "src_port",
    "dst",
    "dst_port",
    "ssl_fc",
    "req.hdr(host)",
];

fn unsupported_fetch(value: &str) -> Option<&str> {
    let mut rest = value;
    while let Some(start) = rest.find("%[") {
        let after = &rest[start + 2..];
        let end = after.find(']').unwrap_or(after.len());
        let fetch = &after[..end];
        if !FETCHES.contains(&fetch) {
            return Some(fetch);
        }
        rest = &after[end..];
    }
    None
}

fn option(words: &[&str], t: &mut Tuning, negated: bool) -> Effect {
    match words {
        ["forwardfor"] => t.forwardfor = Some(!negated),
        ["forwardfor", ..] => return not("forwardfor with except/header arguments"),
        ["http-keep-alive"] => t.keep_alive = Some(!negated),
        ["httpclose" | "forceclose"] => t.keep_alive = Some(negated),
        ["http-server-close"] => {
            return Effect::Builtin(
                "clients keep their connections; backend connections are pooled".to_owned(),
            );
        }
        ["redispatch"] => {
            return Effect::Builtin("a failed connect goes to another backend".to_owned());
        }
        ["dontlognull" | "httplog" | "tcplog" | "dontlog-normal" | "log-separate-errors"] => {
            return not("logging is set with mlb's --log-* flags");
        }
        ["httpchk" | "tcp-check" | "ssl-hello-chk", ..] => {
            return not("health checks come from the app's Marathon healthChecks");
        }
        _ => return not("no typed mlb setting for this option"),
    }
    Effect::Applied
}

fn maxconn(section: Section, n: &str, t: &mut Tuning) -> Effect {
    let Ok(n) = n.parse::<u32>() else {
        return not("maxconn needs a number");
    };
    match section {
        Section::Frontend | Section::Defaults => t.maxconn_frontend = Some(n),
        Section::Backend => t.maxconn_server = Some(n),
        Section::Global => return not("process-wide maxconn: mlb's limits are per listener"),
    }
    Effect::Applied
}

fn balance(algo: &str, t: &mut Tuning) -> Effect {
    t.balance = Some(match algo {
        "roundrobin" => Balance::RoundRobin,
        "leastconn" => Balance::LeastConn,
        "source" => Balance::Source,
        // `{balance}` is the template's own placeholder for HAPROXY_{n}_BALANCE.
        b if b.starts_with('{') => return Effect::Skeleton,
        _ => return not("mlb balances roundrobin, leastconn or source"),
    });
    Effect::Applied
}

/// Options of a `server` line mlb reads; the rest are reported.
const SERVER_WORDS: &[&str] = &[
    "ssl",
    "verify",
    "ca-file",
    "sni",
    "check",
    "inter",
    "fall",
    "rise",
    "maxconn",
    "send-proxy",
    "send-proxy-v2",
];

/// `server` options: `ssl verify none ca-file … sni …`, `check inter … fall … rise …`,
/// `maxconn`, `send-proxy[-v2]`. All or nothing: one unknown option leaves the line unapplied.
fn server_options(words: &[&str], t: &mut Tuning) -> Effect {
    // `{cookieOptions}{healthCheckOptions}{otherOptions}` are the template's generated parts.
    let words: Vec<String> = words.iter().map(|w| strip_placeholders(w)).collect();
    let mut it = words.iter().map(String::as_str).filter(|w| !w.is_empty());
    let mut next = t.clone();
    let mut tls: Option<BackendTls> = None;
    while let Some(w) = it.next() {
        if let Err(why) = server_option(w, &mut it, &mut next, &mut tls) {
            return Effect::NotApplied(why);
        }
    }
    if tls.is_some() {
        next.backend_tls = tls;
    }
    *t = next;
    Effect::Applied
}

/// One `server` option `w` (its value, if any, taken from `it`) into `next` / `tls`.
fn server_option<'a>(
    w: &str,
    it: &mut impl Iterator<Item = &'a str>,
    next: &mut Tuning,
    tls: &mut Option<BackendTls>,
) -> Result<(), String> {
    let bad = || format!("server option {w:?} is missing or has a bad value");
    let mut value = || it.next().ok_or_else(bad);
    let number = |v: &str| v.parse::<u32>().map_err(|_| bad());
    match w {
        "ssl" => {
            tls.get_or_insert_with(default_tls);
        }
        // Health checks come from Marathon; `check` alone changes nothing, its timing does.
        "check" => {}
        "verify" => {
            tls.get_or_insert_with(default_tls).verify = match value()? {
                "none" => false,
                "required" => true,
                _ => return Err(bad()),
            };
        }
        "ca-file" => tls.get_or_insert_with(default_tls).ca_file = Some(PathBuf::from(value()?)),
        "sni" => {
            if !set_sni(value()?, tls) {
                return Err(bad());
            }
        }
        "inter" => next.check.inter = Some(parse_duration(value()?).ok_or_else(bad)?),
        "fall" => next.check.fall = Some(number(value()?)?),
        "rise" => next.check.rise = Some(number(value()?)?),
        "maxconn" => next.maxconn_server = Some(number(value()?)?),
        "send-proxy" => next.send_proxy = Some(ProxyProtocol::V1),
        "send-proxy-v2" => next.send_proxy = Some(ProxyProtocol::V2),
        _ => {
            return Err(format!(
                "server option {w:?} has no mlb equivalent; line not applied"
            ));
        }
    }
    Ok(())
}

fn default_tls() -> BackendTls {
    BackendTls {
        verify: true,
        ca_file: None,
        sni: None,
        sni_from_host: false,
    }
}

/// `sni str(name)` sets a fixed name; `sni req.hdr(host)` sends the client's Host.
fn set_sni(expr: &str, tls: &mut Option<BackendTls>) -> bool {
    let t = tls.get_or_insert_with(default_tls);
    if let Some(name) = expr.strip_prefix("str(").and_then(|s| s.strip_suffix(')')) {
        t.sni = Some(name.to_owned());
        true
    } else {
        t.sni_from_host = expr == "req.hdr(host)";
        t.sni_from_host
    }
}

fn strip_placeholders(word: &str) -> String {
    let mut out = String::new();
    let mut depth = 0u32;
    for c in word.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            c if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
