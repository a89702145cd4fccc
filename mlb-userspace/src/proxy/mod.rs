//! The L7 dataplane: a hyper + rustls HTTP/TLS reverse proxy for `HAPROXY_{n}_MODE=http`
//! services, with marathon-lb's routing semantics.
//!
//! Frontends, as marathon-lb's HAProxy config had them:
//! - `:80` (`--http-port`): routes on the Host header (vhosts, path prefixes, weights).
//! - `:443` (`--https-port`): TLS terminated with SNI certificate selection, then the same Host
//!   routing; or, for `MLB_{n}_TLS_PASSTHROUGH` services, raw TCP spliced by the ClientHello SNI.
//! - `:9091` (`--appid-port`): routes on the `X-Marathon-App-Id` header.
//! - one listener per service port (TLS on it when the service has `HAPROXY_{n}_SSL_CERT`).
//!
//! Nothing is ever reloaded: [`HttpProxy::apply`] builds a new immutable [`router::RouteTable`]
//! and swaps it in atomically. Connections and requests already running keep the table (and the
//! backends) they started with, so a removed backend is drained, not cut. Listeners are opened once;
//! only the listener of a removed service port is closed (its open connections keep running).
use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{runtime::Handle, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    model::{BackendId, HttpService, HttpServiceKey},
    options::RunOptions,
};

pub mod auth;
pub mod balance;
mod body;
mod handler;
pub mod health;
mod listeners;
pub mod router;
pub mod sni;
pub mod tls;
mod tunnel;
mod upstream;

use balance::StatsRegistry;
use health::HealthChecker;
use listeners::{Frontend, ListenerSet};
use router::RouteTable;
use tls::CertManager;

/// Timeouts, with marathon-lb's defaults (its HAProxy `defaults` section).
#[derive(Clone, Debug)]
pub struct Timeouts {
    /// Connecting to a backend (`timeout connect`, 3 s); on expiry the request is retried on
    /// another backend.
    pub connect: Duration,
    /// Waiting for a client's request headers, including between keep-alive requests
    /// (`timeout client`, 30 s).
    pub client: Duration,
    /// Waiting for a backend's response headers (`timeout server`, 30 s); on expiry: 504.
    pub server: Duration,
    /// Idle time after which an upgraded (WebSocket) or passthrough tunnel is closed
    /// (`timeout tunnel`, 3600 s).
    pub tunnel: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            client: Duration::from_secs(30),
            server: Duration::from_secs(30),
            tunnel: Duration::from_secs(3600),
        }
    }
}

/// How the proxy is set up; fixed for the life of the process.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// The `:80` vhost frontend; `None`: not bound (`--dont-bind-http-https`).
    pub http_addr: Option<SocketAddr>,
    /// The `:443` TLS vhost frontend; `None`: not bound.
    pub https_addr: Option<SocketAddr>,
    /// The `X-Marathon-App-Id` frontend (`:9091`); `None`: not bound.
    pub appid_addr: Option<SocketAddr>,
    /// Address service-port listeners bind to when the service sets no `HAPROXY_{n}_BIND_ADDR`.
    pub service_bind_ip: IpAddr,
    /// `--ssl-certs`: PEM files (chain + key) or directories of them, served on `:443`. Empty: a
    /// self-signed certificate is generated at start.
    pub ssl_certs: Vec<PathBuf>,
    /// Timeouts (marathon-lb defaults).
    pub timeouts: Timeouts,
    /// How often certificate files are checked for changes.
    pub cert_poll_interval: Duration,
    /// Largest request head (request line + headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        ProxyConfig {
            http_addr: Some(SocketAddr::new(any, 80)),
            https_addr: Some(SocketAddr::new(any, 443)),
            appid_addr: Some(SocketAddr::new(any, 9091)),
            service_bind_ip: any,
            ssl_certs: Vec::new(),
            timeouts: Timeouts::default(),
            cert_poll_interval: Duration::from_secs(5),
            max_header_bytes: 64 * 1024,
        }
    }
}

impl ProxyConfig {
    /// The proxy configuration `mlb run` flags ask for.
    pub fn from_run_options(opts: &RunOptions) -> Self {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let bind_vhost = !opts.dont_bind_http_https;
        ProxyConfig {
            http_addr: bind_vhost.then(|| SocketAddr::new(any, opts.http_port)),
            https_addr: bind_vhost.then(|| SocketAddr::new(any, opts.https_port)),
            appid_addr: Some(SocketAddr::new(any, opts.appid_port)),
            ssl_certs: opts.ssl_certs.clone(),
            ..ProxyConfig::default()
        }
    }
}

/// What went wrong in the proxy; each names the listener, file or app concerned.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A listener could not be opened.
    #[error("{frontend} listener on {addr}: {source}")]
    Bind {
        /// The frontend (and app, for a service port).
        frontend: String,
        /// The address that could not be bound.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// A certificate file could not be used (the previous version of it, if any, stays in use).
    #[error("certificate {path}: {reason}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
    /// An app's `HAPROXY_{n}_AUTH` is not `realm:user:hash` with a supported hash.
    #[error("app {app_id} port index {port_index}: HAPROXY_{port_index}_AUTH: {reason}")]
    Auth {
        /// The app.
        app_id: String,
        /// Its service-port index.
        port_index: usize,
        /// What is wrong with the label.
        reason: String,
    },
}

/// State every connection handler reads; swapped pieces are behind `ArcSwap`s.
pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    pub(crate) table: ArcSwap<RouteTable>,
    pub(crate) certs: CertManager,
    pub(crate) upstream: upstream::Upstream,
    pub(crate) health: tokio::sync::watch::Receiver<Arc<health::UnhealthySet>>,
    /// Port the `:443` frontend actually listens on (for redirects; known once bound).
    pub(crate) https_port: std::sync::OnceLock<u16>,
}

/// The running HTTP/TLS proxy. Dropping it closes every listener (open connections finish).
pub struct HttpProxy {
    shared: Arc<Shared>,
    handle: Handle,
    listeners: Mutex<ListenerSet>,
    registry: Mutex<StatsRegistry>,
    health: Mutex<HealthChecker>,
    cert_watcher: JoinHandle<()>,
}

impl HttpProxy {
    /// Opens the `:80`, `:443` and `:9091` listeners `config` asks for, loads the certificates and
    /// starts serving (with no services: every request gets 503 until [`HttpProxy::apply`]).
    /// Tasks are spawned on `handle`. Fails only when a fixed listener cannot be bound.
    pub fn start(config: ProxyConfig, handle: Handle) -> Result<HttpProxy, ProxyError> {
        let _guard = handle.enter();
        let certs = CertManager::new(&config.ssl_certs);
        for e in certs.reload() {
            warn!(error = %e, "certificate not loaded");
        }
        let (health, health_rx) = HealthChecker::new(handle.clone());
        let shared = Arc::new(Shared {
            upstream: upstream::Upstream::new(&config.timeouts),
            table: ArcSwap::from_pointee(RouteTable::default()),
            certs,
            health: health_rx,
            https_port: std::sync::OnceLock::new(),
            config,
        });
        let mut listeners = ListenerSet::default();
        let fixed = [
            (shared.config.http_addr, Frontend::Http),
            (shared.config.https_addr, Frontend::Https),
            (shared.config.appid_addr, Frontend::AppId),
        ];
        for (addr, frontend) in fixed {
            if let Some(addr) = addr {
                listeners.open_fixed(&shared, addr, frontend)?;
            }
        }
        if let Some(addr) = listeners.fixed_addr(Frontend::Https) {
            let _ = shared.https_port.set(addr.port());
        }
        let cert_watcher = handle.spawn(tls::watch_certs(Arc::downgrade(&shared)));
        Ok(HttpProxy {
            shared,
            handle,
            listeners: Mutex::new(listeners),
            registry: Mutex::new(StatsRegistry::default()),
            health: Mutex::new(health),
            cert_watcher,
        })
    }

    /// Makes `services` the routed set: builds a new routing table and swaps it in atomically,
    /// opens listeners for new service ports and closes those of removed ones, updates the
    /// certificates and the health checks. Cheap and synchronous. Problems (a port that cannot be
    /// bound, a bad auth label, an unreadable certificate) are returned and logged; they concern
    /// only the app they name, everything else is applied.
    pub fn apply(&self, services: &BTreeMap<HttpServiceKey, HttpService>) -> Vec<ProxyError> {
        let _guard = self.handle.enter();
        let mut errors = Vec::new();
        let table = {
            let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            let (table, auth_errors) = RouteTable::build(services, &mut registry);
            errors.extend(auth_errors);
            table
        };
        let port_certs: HashMap<u16, Vec<PathBuf>> = table
            .port_services()
            .filter(|svc| !svc.spec.ssl_certs.is_empty())
            .map(|svc| (svc.spec.service_port, svc.spec.ssl_certs.clone()))
            .collect();
        errors.extend(self.shared.certs.set_service_certs(port_certs));
        let port_tls: HashMap<u16, crate::model::TlsOptions> = table
            .port_services()
            .filter(|svc| !svc.spec.ssl_certs.is_empty())
            .map(|svc| (svc.spec.service_port, svc.spec.tls.clone()))
            .collect();
        errors.extend(self.shared.certs.set_port_options(port_tls));
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_targets(health::targets_of_http(services.values()));
        let wanted: Vec<(SocketAddr, String)> = table
            .port_services()
            .map(|svc| {
                let ip = svc
                    .spec
                    .bind_addr
                    .unwrap_or(self.shared.config.service_bind_ip);
                let addr = SocketAddr::new(ip, svc.spec.service_port);
                (addr, svc.spec.key.app_id.clone())
            })
            .collect();
        self.shared.table.store(Arc::new(table));
        errors.extend(
            self.listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .set_service_ports(&self.shared, &wanted),
        );
        for e in &errors {
            warn!(error = %e, "HTTP proxy configuration problem");
        }
        info!(services = services.len(), "HTTP routing table swapped");
        errors
    }

    /// Re-reads every certificate file now (the admin API's `/_mlb_signal/usr1`). New TLS
    /// handshakes use the new certificates; established connections are untouched. Files that
    /// fail to load keep their previous version and are returned.
    pub fn reload_certs(&self) -> Vec<ProxyError> {
        self.shared.certs.reload()
    }

    /// The address a fixed frontend listens on (useful with port 0): `"http"`, `"https"` or
    /// `"appid"`.
    pub fn local_addr(&self, frontend: &str) -> Option<SocketAddr> {
        let frontend = match frontend {
            "http" => Frontend::Http,
            "https" => Frontend::Https,
            "appid" => Frontend::AppId,
            _ => return None,
        };
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fixed_addr(frontend)
    }

    /// Addresses of the open service-port listeners.
    pub fn service_listeners(&self) -> Vec<SocketAddr> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .service_addrs()
    }

    /// Requests (and tunnels) in flight to a backend, including backends no longer in the table
    /// that are still draining; `None` when mlb has never routed to it or it has drained.
    pub fn backend_in_flight(&self, id: &BackendId) -> Option<usize> {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .in_flight(id)
    }

    /// Backends the active health checks currently keep out of rotation.
    pub fn unhealthy_backends(&self) -> Vec<BackendId> {
        let set = self.shared.health.borrow().clone();
        let mut ids: Vec<BackendId> = set.iter().cloned().collect();
        ids.sort();
        ids
    }
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.cert_watcher.abort();
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::options::{Cli, Command};

    fn config_for(args: &[&str]) -> ProxyConfig {
        let cli = Cli::try_parse_from(["mlb", "run"].iter().chain(args)).unwrap();
        let Command::Run(opts) = cli.command else {
            panic!("not run")
        };
        ProxyConfig::from_run_options(&opts)
    }

    #[test]
    fn flags_choose_the_frontend_ports() {
        let c = config_for(&[]);
        assert_eq!(c.http_addr.unwrap().port(), 80);
        assert_eq!(c.https_addr.unwrap().port(), 443);
        assert_eq!(c.appid_addr.unwrap().port(), 9091);
        let c = config_for(&[
            "--http-port",
            "8080",
            "--https-port",
            "8443",
            "--appid-port",
            "9999",
        ]);
        assert_eq!(c.http_addr.unwrap().port(), 8080);
        assert_eq!(c.https_addr.unwrap().port(), 8443);
        assert_eq!(c.appid_addr.unwrap().port(), 9999);
        let c = config_for(&["--dont-bind-http-https", "--ssl-certs", "/a.pem,/certs"]);
        assert!(c.http_addr.is_none() && c.https_addr.is_none());
        assert!(c.appid_addr.is_some(), "the app-id frontend stays");
        assert_eq!(
            c.ssl_certs,
            [PathBuf::from("/a.pem"), PathBuf::from("/certs")]
        );
        assert_eq!(c.timeouts.connect, Duration::from_secs(3));
        assert_eq!(c.timeouts.tunnel, Duration::from_secs(3600));
    }
}
