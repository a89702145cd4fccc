//! An app's tuning labels for one service port: the template labels marathon-lb users already
//! have (read through [`super::directives`]), then mlb's own `MLB_{n}_*` tuning labels, which
//! win. A bad `MLB_{n}_*` value is a [`LabelError`] (the port is rejected, as for every other
//! label); a template directive mlb cannot map is only reported, as marathon-lb users never had
//! to write these for mlb.
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use crate::model::{
    directives::{DirectiveOutcome, apply_template, header_edit_line},
    labels::{LabelError, PrefixedLabels},
    tuning::{BackendTls, ProxyProtocol, Tuning, parse_duration},
};

/// Template labels whose directives map onto tuning, in the order they are applied (a later
/// one wins). `HAPROXY_HEAD` (no index) applies to every port of the app.
const TEMPLATE_SUFFIXES: &[&str] = &[
    "FRONTEND_HEAD",
    "HTTP_FRONTEND_ACL",
    "HTTP_FRONTEND_ACL_ONLY",
    "HTTP_FRONTEND_ACL_WITH_PATH",
    "HTTP_FRONTEND_ACL_ONLY_WITH_PATH",
    "HTTP_FRONTEND_ACL_WITH_AUTH",
    "HTTP_FRONTEND_ACL_WITH_AUTH_AND_PATH",
    "BACKEND_HEAD",
    "BACKEND_HTTP_OPTIONS",
    "BACKEND_SERVER_OPTIONS",
];

/// Whether `label` is a template label mlb reads directives from.
pub fn is_read_template(label: &str) -> bool {
    label == "HAPROXY_HEAD"
        || label
            .strip_prefix("HAPROXY_")
            .and_then(|r| r.split_once('_'))
            .is_some_and(|(n, suffix)| {
                n.bytes().all(|b| b.is_ascii_digit()) && TEMPLATE_SUFFIXES.contains(&suffix)
            })
}

/// The tuning of port `index` from its template and `MLB_{n}_*` labels, with what each template
/// directive did.
pub fn port_tuning(
    labels: &BTreeMap<String, String>,
    index: usize,
) -> Result<(Tuning, Vec<DirectiveOutcome>), LabelError> {
    let mut tuning = Tuning::default();
    let mut outcomes = Vec::new();
    let head = labels.get_key_value("HAPROXY_HEAD");
    let head = head.map(|(k, v)| (k.clone(), v.as_str()));
    let port = PrefixedLabels::new(labels, format!("HAPROXY_{index}_"));
    let own = TEMPLATE_SUFFIXES.iter().filter_map(|s| port.get(s));
    for (name, text) in head.into_iter().chain(own) {
        outcomes.extend(apply_template(&name, text, &mut tuning));
    }
    let own = mlb_labels(labels, index)?;
    Ok((tuning.overlay(&own), outcomes))
}

/// `MLB_{n}_*` tuning labels (documented in the README's label table).
fn mlb_labels(labels: &BTreeMap<String, String>, n: usize) -> Result<Tuning, LabelError> {
    let own = PrefixedLabels::new(labels, format!("MLB_{n}_"));
    let get = |name: &str| own.get(name).map(trimmed);
    let mut t = Tuning::default();
    let to = &mut t.timeouts;
    for (name, slot) in [
        ("TIMEOUT_CLIENT", &mut to.client),
        ("TIMEOUT_SERVER", &mut to.server),
        ("TIMEOUT_CONNECT", &mut to.connect),
        ("TIMEOUT_TUNNEL", &mut to.tunnel),
        ("TIMEOUT_HTTP_REQUEST", &mut to.http_request),
        ("TIMEOUT_HTTP_KEEP_ALIVE", &mut to.http_keep_alive),
        ("CHECK_INTER", &mut t.check.inter),
    ] {
        if let Some((k, v)) = get(name) {
            *slot = Some(duration(&k, v)?);
        }
    }
    for (name, slot) in [
        ("MAXCONN", &mut t.maxconn_frontend),
        ("MAXCONN_SERVER", &mut t.maxconn_server),
        ("CHECK_FALL", &mut t.check.fall),
        ("CHECK_RISE", &mut t.check.rise),
    ] {
        if let Some((k, v)) = get(name) {
            *slot = Some(v.parse().map_err(|_| err(&k, v, "expected a number"))?);
        }
    }
    for (name, slot) in [
        ("FORWARDFOR", &mut t.forwardfor),
        ("KEEP_ALIVE", &mut t.keep_alive),
    ] {
        if let Some((k, v)) = get(name) {
            *slot = Some(boolean(&k, v)?);
        }
    }
    for (name, edits) in [
        ("REQUEST_HEADERS", &mut t.request_headers),
        ("RESPONSE_HEADERS", &mut t.response_headers),
    ] {
        if let Some((k, v)) = get(name) {
            for line in v.lines().map(str::trim).filter(|l| !l.is_empty()) {
                edits.push(header_edit_line(line).map_err(|why| err(&k, v, why))?);
            }
        }
    }
    if let Some((k, v)) = get("SEND_PROXY") {
        t.send_proxy = Some(match v {
            "v1" => ProxyProtocol::V1,
            "v2" => ProxyProtocol::V2,
            _ => return Err(err(&k, v, "expected v1 or v2")),
        });
    }
    t.backend_tls = backend_tls(labels, n)?;
    Ok(t)
}

/// A label's name and its value, trimmed.
fn trimmed((key, value): (String, &str)) -> (String, &str) {
    (key, value.trim())
}

/// `MLB_{n}_BACKEND_TLS=true`, `…_BACKEND_TLS_VERIFY`, `…_BACKEND_TLS_CA`, `…_BACKEND_TLS_SNI`.
fn backend_tls(
    labels: &BTreeMap<String, String>,
    n: usize,
) -> Result<Option<BackendTls>, LabelError> {
    let own = PrefixedLabels::new(labels, format!("MLB_{n}_"));
    let get = |name: &str| own.get(name).map(trimmed);
    let on = match get("BACKEND_TLS") {
        Some((k, v)) => boolean(&k, v)?,
        None => false,
    };
    let verify = get("BACKEND_TLS_VERIFY")
        .map(|(k, v)| boolean(&k, v))
        .transpose()?;
    let ca_file = get("BACKEND_TLS_CA").map(|(_, v)| PathBuf::from(v));
    let sni = get("BACKEND_TLS_SNI").map(|(_, v)| v.to_owned());
    if !on {
        if let Some((k, v)) = ["BACKEND_TLS_VERIFY", "BACKEND_TLS_CA", "BACKEND_TLS_SNI"]
            .iter()
            .find_map(|n| get(n))
        {
            return Err(err(&k, v, format!("needs MLB_{n}_BACKEND_TLS=true")));
        }
        return Ok(None);
    }
    Ok(Some(BackendTls {
        verify: verify.unwrap_or(true),
        ca_file,
        sni,
        sni_from_host: false,
    }))
}

fn duration(k: &str, v: &str) -> Result<Duration, LabelError> {
    parse_duration(v).ok_or_else(|| err(k, v, "expected a duration such as 500ms, 30s, 5m, 1h"))
}

fn boolean(k: &str, v: &str) -> Result<bool, LabelError> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(err(k, v, "expected true or false")),
    }
}

fn err(label: &str, value: &str, reason: impl Into<String>) -> LabelError {
    LabelError {
        label: label.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{directives::Effect, labels::tests::labels, tuning::HeaderEdit};

    #[test]
    fn mlb_labels_win_over_template_labels() {
        let l = labels(&[
            (
                "HAPROXY_HEAD",
                "defaults\n  timeout client 5m\n  timeout server 50s",
            ),
            (
                "HAPROXY_0_BACKEND_HEAD",
                "backend {backend}\n  timeout server 120s",
            ),
            ("MLB_0_TIMEOUT_CONNECT", "2s"),
            (
                "MLB_0_REQUEST_HEADERS",
                "set-header X-Env prod\ndel-header X-Debug",
            ),
            ("MLB_0_BACKEND_TLS", "true"),
            ("MLB_0_BACKEND_TLS_VERIFY", "false"),
            ("MLB_0_SEND_PROXY", "v1"),
            ("MLB_0_MAXCONN", "500"),
            ("HAPROXY_1_BACKEND_HEAD", "  timeout server 1s"),
        ]);
        let (t, outcomes) = port_tuning(&l, 0).unwrap();
        assert_eq!(t.timeouts.client, Some(Duration::from_secs(300)));
        assert_eq!(t.timeouts.server, Some(Duration::from_secs(120)));
        assert_eq!(t.timeouts.connect, Some(Duration::from_secs(2)));
        assert_eq!(t.request_headers.len(), 2);
        assert!(matches!(&t.request_headers[1], HeaderEdit::Del { name } if name == "X-Debug"));
        assert!(!t.backend_tls.unwrap().verify);
        assert_eq!(t.send_proxy, Some(ProxyProtocol::V1));
        assert_eq!(t.maxconn_frontend, Some(500));
        assert_eq!(
            outcomes.len(),
            5,
            "HEAD (3 lines) and port 0's BACKEND_HEAD (2)"
        );
        assert!(
            outcomes
                .iter()
                .all(|o| o.effect != Effect::NotApplied(String::new()))
        );
    }

    #[test]
    fn bad_mlb_values_name_the_label() {
        for (k, v, reason) in [
            ("MLB_0_TIMEOUT_SERVER", "2 minutes", "expected a duration"),
            ("MLB_0_MAXCONN", "-1", "expected a number"),
            ("MLB_0_KEEP_ALIVE", "maybe", "expected true or false"),
            ("MLB_0_SEND_PROXY", "v3", "expected v1 or v2"),
            ("MLB_0_REQUEST_HEADERS", "replace-header X a", "set-header"),
            (
                "MLB_0_BACKEND_TLS_CA",
                "/ca.pem",
                "needs MLB_0_BACKEND_TLS=true",
            ),
        ] {
            let e = port_tuning(&labels(&[(k, v)]), 0).unwrap_err();
            assert_eq!(e.label, k);
            assert!(e.reason.contains(reason), "{k}: {}", e.reason);
        }
    }
}
