//! Per-service tuning: what operators set in HAProxy templates (timeouts, header edits, limits,
//! backend TLS, PROXY protocol, check timing), as typed settings. Every field is optional: `None`
//! means "not set here", so layers combine with [`Tuning::overlay`] (global flags, then the
//! app's template labels, then its `MLB_{n}_*` labels) and the dataplane applies its own default
//! for what no layer sets.
use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::model::Balance;

/// HAProxy's `timeout <kind>` values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutSettings {
    /// `timeout client`: client inactivity.
    pub client: Option<Duration>,
    /// `timeout server`: waiting for the backend's response.
    pub server: Option<Duration>,
    /// `timeout connect`: connecting to a backend.
    pub connect: Option<Duration>,
    /// `timeout tunnel`: idle upgraded (WebSocket) or passthrough connections.
    pub tunnel: Option<Duration>,
    /// `timeout http-request`: receiving a whole request head.
    pub http_request: Option<Duration>,
    /// `timeout http-keep-alive`: idle time between requests on a kept-alive connection.
    pub http_keep_alive: Option<Duration>,
}

/// One header edit, applied in order (`http-request set-header` and friends).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeaderEdit {
    /// Replace every value of the header by this one.
    Set { name: String, value: String },
    /// Append a value.
    Add { name: String, value: String },
    /// Remove the header.
    Del { name: String },
}

/// How mlb talks TLS to the backends (`server … ssl verify none ca-file … sni …`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BackendTls {
    /// Verify the backend's certificate (`verify required`); `verify none` turns it off.
    pub verify: bool,
    /// PEM bundle of the CAs that sign backend certificates; `None`: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Server name sent in the ClientHello and checked in the certificate; `None`: no name is
    /// sent and only the chain is verified (HAProxy's `verify required` without `sni`).
    pub sni: Option<String>,
    /// `sni req.hdr(host)`: the request's host name is the server name (wins over `sni`).
    #[serde(default)]
    pub sni_from_host: bool,
}

/// PROXY protocol header sent to backends (`send-proxy`, `send-proxy-v2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    V1,
    V2,
}

/// Health-check timing (`check inter 2s fall 3 rise 2`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckTiming {
    pub inter: Option<Duration>,
    /// Consecutive failures before a backend leaves rotation.
    pub fall: Option<u32>,
    /// Consecutive successes before it comes back.
    pub rise: Option<u32>,
}

/// Typed per-service tuning. See the module documentation for how layers combine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tuning {
    pub timeouts: TimeoutSettings,
    /// Edits of the request forwarded to the backend, in order.
    pub request_headers: Vec<HeaderEdit>,
    /// Edits of the response returned to the client, in order.
    pub response_headers: Vec<HeaderEdit>,
    /// `maxconn` on each `server` line: concurrent connections per backend.
    pub maxconn_server: Option<u32>,
    /// `maxconn` of the frontend: concurrent client connections of the service.
    pub maxconn_frontend: Option<u32>,
    /// `balance` (overrides `HAPROXY_{n}_BALANCE`).
    pub balance: Option<Balance>,
    /// `option forwardfor`: add `X-Forwarded-For` (on by default in mlb).
    pub forwardfor: Option<bool>,
    /// `option http-keep-alive` (true) / `option httpclose` (false): keep client connections
    /// open between requests.
    pub keep_alive: Option<bool>,
    pub backend_tls: Option<BackendTls>,
    pub send_proxy: Option<ProxyProtocol>,
    pub check: CheckTiming,
}

impl Tuning {
    /// `tuning` to keep in a service: most services set nothing, and they all share one
    /// default block (at 10,000 apps, 256 bytes each in every version of every service).
    pub fn shared(tuning: Tuning) -> Arc<Tuning> {
        static DEFAULT: OnceLock<Arc<Tuning>> = OnceLock::new();
        let default = DEFAULT.get_or_init(Arc::default);
        if tuning == **default {
            default.clone()
        } else {
            Arc::new(tuning)
        }
    }

    /// `self` with every setting `top` sets replaced by `top`'s; header edits of `top` run after
    /// `self`'s.
    pub fn overlay(mut self, top: &Tuning) -> Tuning {
        fn pick<T: Clone>(base: &mut Option<T>, top: &Option<T>) {
            if top.is_some() {
                base.clone_from(top);
            }
        }
        let (t, b) = (&top.timeouts, &mut self.timeouts);
        pick(&mut b.client, &t.client);
        pick(&mut b.server, &t.server);
        pick(&mut b.connect, &t.connect);
        pick(&mut b.tunnel, &t.tunnel);
        pick(&mut b.http_request, &t.http_request);
        pick(&mut b.http_keep_alive, &t.http_keep_alive);
        self.request_headers
            .extend(top.request_headers.iter().cloned());
        self.response_headers
            .extend(top.response_headers.iter().cloned());
        pick(&mut self.maxconn_server, &top.maxconn_server);
        pick(&mut self.maxconn_frontend, &top.maxconn_frontend);
        pick(&mut self.balance, &top.balance);
        pick(&mut self.forwardfor, &top.forwardfor);
        pick(&mut self.keep_alive, &top.keep_alive);
        pick(&mut self.backend_tls, &top.backend_tls);
        pick(&mut self.send_proxy, &top.send_proxy);
        pick(&mut self.check.inter, &top.check.inter);
        pick(&mut self.check.fall, &top.check.fall);
        pick(&mut self.check.rise, &top.check.rise);
        self
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Tuning::default()
    }
}

/// A duration as HAProxy writes it: a number with an optional unit (`us`, `ms`, `s`, `m`, `h`,
/// `d`); a bare number is milliseconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "us" => Duration::from_micros(n),
        "" | "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        "d" => Duration::from_secs(n.checked_mul(86_400)?),
        _ => return None,
    })
}

/// (De)serializes a service's shared tuning as a plain one (serde's `Arc` support would need
/// its `rc` feature for the whole build).
pub(crate) mod shared_serde {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Tuning;

    pub fn serialize<S: Serializer>(
        tuning: &Arc<Tuning>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        (**tuning).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Arc<Tuning>, D::Error> {
        Tuning::deserialize(deserializer).map(Tuning::shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Services that set no tuning share one block; one that sets some keeps its own, and
    /// either reads (and serializes, as in `/_mlb/state`) as the plain settings.
    #[test]
    fn default_tuning_is_shared_and_reads_as_plain_settings() {
        let a = Tuning::shared(Tuning::default());
        let b = Tuning::shared(Tuning::default());
        assert!(Arc::ptr_eq(&a, &b));
        let set = Tuning {
            keep_alive: Some(false),
            ..Tuning::default()
        };
        let own = Tuning::shared(set.clone());
        assert!(!Arc::ptr_eq(&own, &a));
        assert_eq!(*own, set);

        #[derive(Serialize, Deserialize)]
        struct Holder(#[serde(with = "shared_serde")] Arc<Tuning>);
        let json = serde_json::to_value(Holder(own)).unwrap();
        assert_eq!(json, serde_json::to_value(&set).unwrap());
        let back: Holder =
            serde_json::from_value(serde_json::to_value(Tuning::default()).unwrap()).unwrap();
        assert!(
            Arc::ptr_eq(&back.0, &a),
            "a default read back is the shared one"
        );
    }

    #[test]
    fn durations_use_haproxy_units_and_default_to_milliseconds() {
        assert_eq!(parse_duration("120s"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("500"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_duration("s"), None);
    }

    #[test]
    fn overlay_replaces_what_the_top_sets_and_appends_header_edits() {
        let base = Tuning {
            timeouts: TimeoutSettings {
                server: Some(Duration::from_secs(30)),
                client: Some(Duration::from_secs(10)),
                ..TimeoutSettings::default()
            },
            request_headers: vec![HeaderEdit::Del { name: "a".into() }],
            ..Tuning::default()
        };
        let top = Tuning {
            timeouts: TimeoutSettings {
                server: Some(Duration::from_secs(120)),
                ..TimeoutSettings::default()
            },
            request_headers: vec![HeaderEdit::Del { name: "b".into() }],
            keep_alive: Some(false),
            ..Tuning::default()
        };
        let t = base.overlay(&top);
        assert_eq!(t.timeouts.server, Some(Duration::from_secs(120)));
        assert_eq!(t.timeouts.client, Some(Duration::from_secs(10)));
        assert_eq!(t.request_headers.len(), 2);
        assert_eq!(t.keep_alive, Some(false));
    }
}
