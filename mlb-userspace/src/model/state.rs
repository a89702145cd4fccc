//! The desired state: what mlb should expose, whatever produced it (Marathon or a static file).
//!
//! Collections are `BTreeMap`s and sorted `Vec`s so that equal states compare equal and iterate
//! the same way on every instance (several mlb instances behind ECMP must agree).
use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::model::Tuning;

/// Transport protocol of an L4 service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Stable identity of a backend: the Marathon task id and port index (`"<task-id>:<index>"`), or
/// a name from a static config. Health, counters and drain state are keyed by it and survive
/// every recomputation of the desired state.
///
/// Shared text: the model, the explanations, the proxy's routes and counters each hold the id of
/// every backend (100,000 at 10,000 apps), as one string.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendId(pub Arc<str>);

impl BackendId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for BackendId {
    fn from(id: String) -> Self {
        BackendId(id.into())
    }
}

impl From<&str> for BackendId {
    fn from(id: &str) -> Self {
        BackendId(id.into())
    }
}

impl Serialize for BackendId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for BackendId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(BackendId::from)
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a backend takes new connections.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Takes new connections.
    #[default]
    Active,
    /// Being removed (zero-downtime deployment, scale-down): keeps its established connections,
    /// takes no new ones.
    Draining,
}

/// One backend (a Marathon task's host:port).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Backend {
    pub id: BackendId,
    pub addr: SocketAddr,
    /// Relative weight for load balancing (≥ 1; Maglev gives it a proportional share).
    pub weight: u32,
    pub state: BackendState,
}

/// Identity of an L4 service: one service port and protocol. The addresses it is exposed on are
/// the dataplane's VIPs (`--vip`), or [`L4Service::bind_addr`] when the app sets one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct L4ServiceKey {
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for L4ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// A plain TCP or UDP service, forwarded by the XDP or the userspace TCP/UDP dataplane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct L4Service {
    pub key: L4ServiceKey,
    /// Marathon app id (or static service name) this service comes from.
    pub app_id: String,
    /// `HAPROXY_{n}_BIND_ADDR`: expose on this address only instead of every VIP.
    pub bind_addr: Option<IpAddr>,
    /// Backends sorted by id (deterministic order).
    pub backends: Vec<Backend>,
    /// Active health check to run against the backends, if the app defines one.
    pub health_check: Option<HealthCheck>,
    /// Timeouts, limits, PROXY protocol (`MLB_{n}_*` and template labels over the global flags).
    /// Boxed: most services set none, and [`crate::dataplane::L4Change`] stays small.
    #[serde(default)]
    pub tuning: Box<Tuning>,
    /// `HAPROXY_{n}_BALANCE`: [`Balance::Source`] keeps each client on one backend (Maglev on
    /// the client address); anything else spreads flows by Maglev on the whole 5-tuple.
    #[serde(default)]
    pub balance: Balance,
    /// `HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL`; empty: everyone. Others are dropped.
    #[serde(default)]
    pub allowed_networks: Vec<IpNet>,
}

impl L4Service {
    /// The service of `app_id` on `key`, with marathon-lb's defaults: no backend, bind address,
    /// health check or tuning, round robin, open to everyone.
    pub fn new(key: L4ServiceKey, app_id: impl Into<String>) -> Self {
        L4Service {
            key,
            app_id: app_id.into(),
            bind_addr: None,
            backends: Vec::new(),
            health_check: None,
            tuning: Box::default(),
            balance: Balance::default(),
            allowed_networks: Vec::new(),
        }
    }

    /// Whether a client at `ip` may use the service (its allow-list is empty or contains it).
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allowed_networks.is_empty() || self.allowed_networks.iter().any(|n| n.contains(ip))
    }
}

/// Load-balancing algorithm of a service (`HAPROXY_{n}_BALANCE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
    /// Hash of the client address.
    Source,
}

/// HTTP basic auth from `HAPROXY_{n}_AUTH=realm:user:hash` (crypt(3) hash).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicAuth {
    pub realm: String,
    pub user: String,
    /// crypt(3) hash as HAProxy userlists take it (`$6$…`, `$5$…`, `$2y$…`). A hash can be
    /// cracked offline: it is never shown, neither serialized (admin API) nor in `Debug` (logs).
    #[serde(serialize_with = "redacted")]
    pub password_hash: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("realm", &self.realm)
            .field("user", &self.user)
            .field("password_hash", &"<redacted>")
            .finish()
    }
}

fn redacted<S: serde::Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}

/// An address block for `HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl IpNet {
    /// Whether `ip` is inside this block (an IPv4 block never contains an IPv6 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = u32::from(self.prefix_len.min(32));
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = u32::from(self.prefix_len.min(128));
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An address block that does not parse (the text is the whole block as written).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    #[error("{0:?} is not an address")]
    NotAnAddress(String),
    #[error("{text:?}: prefix length must be 0..={max}")]
    PrefixLength { text: String, max: u8 },
}

impl std::str::FromStr for IpNet {
    type Err = IpNetError;
    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (a /32 or /128).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| IpNetError::NotAnAddress(s.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                IpNetError::PrefixLength {
                    text: s.to_owned(),
                    max,
                }
            })?,
            None => max,
        };
        Ok(IpNet { addr, prefix_len })
    }
}

/// Active health check, from the app's Marathon `healthChecks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    /// Which of the task's ports to check (`portIndex`, or `HAPROXY_{n}_BACKEND_HEALTHCHECK_PORT_INDEX`).
    pub port_index: usize,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures before a backend leaves rotation.
    pub max_consecutive_failures: u32,
}

/// What a health check does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthCheckKind {
    /// TCP connect succeeds.
    Tcp,
    /// `GET path` answers 2xx or 3xx.
    Http { path: String },
}

/// Identity of an HTTP service: app id and service-port index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HttpServiceKey {
    pub app_id: String,
    pub port_index: usize,
}

/// An HTTP (`HAPROXY_{n}_MODE=http`) service: served by the L7 proxy on its own service port,
/// and on :80/:443 for its vhosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpService {
    pub key: HttpServiceKey,
    /// The service port (a frontend of its own, as marathon-lb's `frontend <app>_<port>`).
    pub service_port: u16,
    /// `HAPROXY_{n}_VHOST`, lowercased; empty: reachable on the service port only.
    pub vhosts: Vec<String>,
    /// `HAPROXY_{n}_PATH` prefixes (`path_beg`); empty: every path.
    pub paths: Vec<String>,
    /// Backends sorted by id.
    pub backends: Vec<Backend>,
    pub balance: Balance,
    pub sticky: bool,
    pub redirect_to_https: bool,
    pub use_hsts: bool,
    /// `HAPROXY_{n}_SSL_CERT`: certificate files for this service's vhosts / TLS service port.
    pub ssl_certs: Vec<PathBuf>,
    pub bind_addr: Option<IpAddr>,
    pub auth: Option<BasicAuth>,
    /// `HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL`; empty: everyone.
    pub allowed_networks: Vec<IpNet>,
    /// `HAPROXY_{n}_HTTP_BACKEND_PROXYPASS_PATH`: prefix stripped before forwarding.
    pub proxypass_path: Option<String>,
    /// `HAPROXY_{n}_HTTP_BACKEND_REVPROXY_PATH`: prefix added to `Location` in responses.
    pub revproxy_path: Option<String>,
    /// `HAPROXY_{n}_HTTP_BACKEND_REDIR`: requests for `/` are redirected here.
    pub redirect_root_to: Option<String>,
    /// `HAPROXY_{n}_BACKEND_WEIGHT`: higher is matched first among overlapping routes.
    pub weight: i32,
    pub health_check: Option<HealthCheck>,
    /// `MLB_{n}_TLS_PASSTHROUGH=true`: on :443, forward TLS by SNI to the backends without
    /// terminating it.
    pub tls_passthrough: bool,
    /// The TLS-relevant part of `HAPROXY_{n}_BIND_OPTIONS` (ALPN, protocol versions, client
    /// certificates) for this service's TLS listeners.
    pub tls: TlsOptions,
    /// Timeouts, header edits, limits, backend TLS (`MLB_{n}_*` and template labels over the
    /// global flags).
    #[serde(default, with = "crate::model::tuning::shared_serde")]
    pub tuning: Arc<Tuning>,
    /// tcp mode with `HAPROXY_{n}_SSL_CERT`: the service port terminates TLS and forwards the
    /// plain bytes to a backend (no HTTP parsing).
    #[serde(default)]
    pub tcp_tls: bool,
}

impl HttpService {
    /// Whether a client at `ip` may use the service (its allow-list is empty or contains it).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allowed_networks.is_empty() || self.allowed_networks.iter().any(|n| n.contains(ip))
    }

    /// The service of `app_id`'s service port `port_index` on `service_port`, with
    /// marathon-lb's defaults: no vhost, path or backend, round robin, no TLS, auth or ACL.
    pub fn new(app_id: impl Into<String>, port_index: usize, service_port: u16) -> Self {
        HttpService {
            key: HttpServiceKey {
                app_id: app_id.into(),
                port_index,
            },
            service_port,
            vhosts: Vec::new(),
            paths: Vec::new(),
            backends: Vec::new(),
            balance: Balance::default(),
            sticky: false,
            redirect_to_https: false,
            use_hsts: false,
            ssl_certs: Vec::new(),
            bind_addr: None,
            auth: None,
            allowed_networks: Vec::new(),
            proxypass_path: None,
            revproxy_path: None,
            redirect_root_to: None,
            weight: 0,
            health_check: None,
            tls_passthrough: false,
            tls: TlsOptions::default(),
            tuning: Tuning::shared(Tuning::default()),
            tcp_tls: false,
        }
    }
}

/// A TLS protocol version bound (`ssl-min-ver` / `ssl-max-ver`). rustls speaks 1.2 and 1.3 only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "TLSv1.2")]
    Tls12,
    #[serde(rename = "TLSv1.3")]
    Tls13,
}

/// Client-certificate verification (`verify optional|required` + `ca-file`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAuth {
    /// PEM bundle of the CAs that sign client certificates.
    pub ca_file: PathBuf,
    /// `verify required`: reject a handshake without a valid client certificate;
    /// `verify optional`: ask for one, accept without.
    pub required: bool,
}

/// TLS settings of a service's listener, from `HAPROXY_{n}_BIND_OPTIONS`. The default (no
/// ALPN list, no version bounds, no client auth) means the proxy's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsOptions {
    /// `alpn h2,http/1.1`: protocols to offer, in order; empty: the proxy's default.
    pub alpn: Vec<String>,
    pub min_version: Option<TlsVersion>,
    pub max_version: Option<TlsVersion>,
    pub client_auth: Option<ClientAuth>,
}

/// Something in an app that mlb ignored but the user should know about (e.g. raw HAProxy
/// template labels, which have no meaning without HAProxy). Unlike [`Rejected`], the app is
/// still exposed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    pub app_id: String,
    /// Service-port index, when the warning concerns one port only.
    pub port_index: Option<usize>,
    pub message: String,
}

/// Why an app (or one of its ports) is not exposed; for `mlb explain` and the logs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub app_id: String,
    /// Service-port index, when the reason concerns one port only.
    pub port_index: Option<usize>,
    pub reason: String,
}

/// Everything mlb should expose.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub l4: BTreeMap<L4ServiceKey, L4Service>,
    /// Shared with the HTTP proxy, which routes with the very same services (at 10,000 apps a
    /// copy for each would hold every backend twice).
    #[serde(with = "shared_services")]
    pub http: BTreeMap<HttpServiceKey, Arc<HttpService>>,
    pub rejected: Vec<Rejected>,
    /// Ignored labels and options, at most one entry per app and kind.
    #[serde(default)]
    pub warnings: Vec<Warning>,
}

/// (De)serializes the shared HTTP services as plain ones (serde's `Arc` support would need its
/// `rc` feature for the whole build).
mod shared_services {
    use std::{collections::BTreeMap, sync::Arc};

    use serde::{Deserialize, Deserializer, Serializer};

    use super::{HttpService, HttpServiceKey};

    pub fn serialize<S: Serializer>(
        services: &BTreeMap<HttpServiceKey, Arc<HttpService>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(services.iter().map(|(k, v)| (k, &**v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<HttpServiceKey, Arc<HttpService>>, D::Error> {
        let plain = BTreeMap::<HttpServiceKey, HttpService>::deserialize(deserializer)?;
        Ok(plain.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
    }
}
