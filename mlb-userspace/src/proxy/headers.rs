//! A service's header edits (`MLB_{n}_REQUEST_HEADERS`, `http-request set-header …` from its
//! template labels), applied in order, with HAProxy's `%[…]` sample fetches that the model
//! accepts ([`crate::model::directives::FETCHES`]) expanded per request.
use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::{model::tuning::HeaderEdit, proxy::listeners::ConnInfo};

/// Applies `edits` to `headers`. The model checked names and values; an edit whose expanded
/// value is not a valid header value (a Host with odd bytes) is skipped.
pub(crate) fn apply(headers: &mut HeaderMap, edits: &[HeaderEdit], info: &ConnInfo) {
    for edit in edits {
        match edit {
            HeaderEdit::Set { name, value } | HeaderEdit::Add { name, value } => {
                let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                    continue;
                };
                let Ok(value) = HeaderValue::from_str(&expand(value, headers, info)) else {
                    continue;
                };
                if matches!(edit, HeaderEdit::Set { .. }) {
                    headers.insert(name, value);
                } else {
                    headers.append(name, value);
                }
            }
            HeaderEdit::Del { name } => {
                if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                    headers.remove(name);
                }
            }
        }
    }
}

/// `value` with each `%[fetch]` replaced by its value for this request.
fn expand(value: &str, headers: &HeaderMap, info: &ConnInfo) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("%[") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find(']') else {
            rest = &rest[start..];
            break;
        };
        out.push_str(&fetch(&after[..end], headers, info));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

fn fetch(name: &str, headers: &HeaderMap, info: &ConnInfo) -> String {
    match name {
        "src" => info.peer.ip().to_canonical().to_string(),
        "src_port" => info.peer.port().to_string(),
        "dst" => info.local.ip().to_canonical().to_string(),
        "dst_port" => info.local.port().to_string(),
        "ssl_fc" => u8::from(info.tls).to_string(),
        "req.hdr(host)" => headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

/// Whether a comma-separated header value (`Connection`, `Upgrade`, `TE`…) lists `token`,
/// in any case.
pub(crate) fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// What `HeaderValue::to_str` accepts: visible ASCII, spaces and tabs.
pub(crate) fn visible_ascii(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_apply_in_order_with_fetches_expanded() {
        let info = ConnInfo::new(
            crate::proxy::listeners::Frontend::ServicePort(10001),
            "198.18.0.7:40000".parse().unwrap(),
            "198.18.0.1:10001".parse().unwrap(),
            std::sync::Arc::new(crate::overload::ConnState::new(0)),
        );
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("app.example"));
        h.insert("x-debug", HeaderValue::from_static("1"));
        let edits = [
            HeaderEdit::Set {
                name: "X-Forwarded-Port".into(),
                value: "%[dst_port]".into(),
            },
            HeaderEdit::Add {
                name: "X-Via".into(),
                value: "mlb %[src] for %[req.hdr(host)] tls=%[ssl_fc]".into(),
            },
            HeaderEdit::Del {
                name: "X-Debug".into(),
            },
        ];
        apply(&mut h, &edits, &info);
        assert_eq!(h.get("x-forwarded-port").unwrap(), "10001");
        assert_eq!(
            h.get("x-via").unwrap(),
            "mlb 198.18.0.7 for app.example tls=0"
        );
        assert!(!h.contains_key("x-debug"));
    }
}
