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
//! Nothing is ever reloaded: [`HttpProxy::apply_changes`] (the [`Dataplane`] of [`HttpChange`]s) makes a new
//! immutable [`router::RouteTable`] and swaps it in atomically. Only what changed is rebuilt: the
//! compiled route objects of unchanged services, and the table entries no change touches, are
//! shared with the previous table. Connections and requests already running keep the table (and the
//! backends) they started with, so a removed backend is drained, not cut. Listeners are opened once;
//! only the listener of a removed service port is closed (its open connections keep running).
use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{runtime::Handle, task::JoinHandle};
use tracing::warn;

use crate::{
    dataplane::{Dataplane, DataplaneError, HttpChange},
    health::{self, HealthChecker},
    model::BackendId,
    overload::{ConnGate, ConnLimits},
};

pub mod access_log;
mod apply;
pub mod auth;
pub mod backend_tls;
pub mod balance;
mod body;
mod cert_files;
mod handler;
mod head;
mod headers;
mod last_segment;
mod listeners;
mod maxconn;
mod park;
pub mod proxy_protocol;
mod raw_head;
pub mod router;
mod send_turn;
mod serve;
mod server;
pub mod sni;
pub mod tls;
pub mod tls_policy;
mod tunnel;
mod upstream;
mod workers;

use apply::Current;
use balance::StatsRegistry;
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
    /// `--ssl-certs-dir`: when not empty, `HAPROXY_{n}_SSL_CERT` files must be inside these.
    pub ssl_certs_dirs: Vec<PathBuf>,
    /// Timeouts (marathon-lb defaults).
    pub timeouts: Timeouts,
    /// Every frontend expects a PROXY protocol v1/v2 header first (HAProxy's `accept-proxy`:
    /// mlb behind a load balancer that sends one); the client address is taken from it.
    pub accept_proxy: bool,
    /// TLS versions, cipher suites and curves of every frontend.
    pub tls_policy: tls_policy::TlsPolicy,
    /// How often certificate files are checked for changes.
    pub cert_poll_interval: Duration,
    /// Largest request head (request line + headers) accepted; larger gets 431.
    pub max_header_bytes: usize,
    /// The connection budget the listeners take from (shared with the userspace TCP/UDP
    /// dataplane), and the request, idle and send timeouts.
    pub conn_gate: Arc<ConnGate>,
    /// `--access-log*` (off by default).
    pub access_log: access_log::AccessLogConfig,
    /// Threads serving connections, each with its own runtime, listening sockets
    /// (`SO_REUSEPORT`) and backend connection pool; 0: connections are served on the runtime
    /// the proxy is started on.
    pub threads: usize,
    /// Run on every serving thread as it goes idle, at most once a second
    /// ([`crate::stats::memory::TRIM_EVERY`]; on the caller's runtime, every second) to give
    /// the memory it freed back to the OS (e.g. [`crate::stats::memory::release_freed`]):
    /// without it the buffers of connections that went idle stay resident while the thread is
    /// quiet. `None`: nothing.
    pub trim_memory: Option<fn()>,
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
            ssl_certs_dirs: Vec::new(),
            timeouts: Timeouts::default(),
            accept_proxy: false,
            tls_policy: tls_policy::TlsPolicy::default(),
            cert_poll_interval: Duration::from_secs(5),
            max_header_bytes: 64 * 1024,
            conn_gate: ConnGate::new(ConnLimits::default()),
            access_log: access_log::AccessLogConfig::default(),
            threads: 0,
            trim_memory: None,
        }
    }
}

/// What went wrong in the proxy; each names the listener, file or app concerned.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The access log's sink could not be opened.
    #[error(transparent)]
    AccessLog(#[from] access_log::AccessLogError),
    /// The proxy's threads could not be started.
    #[error("starting the proxy's threads: {0}")]
    Threads(io::Error),
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
    /// A certificate file named by an app's `HAPROXY_{n}_SSL_CERT` could not be used.
    #[error("app {app_id}: HAPROXY_{port_index}_SSL_CERT {path}: {reason}")]
    LabelCert {
        /// The app.
        app_id: String,
        /// Its service-port index.
        port_index: usize,
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
    /// One pool of backend connections per worker ([`Shared::upstream`]).
    upstream: Vec<upstream::Upstream>,
    /// The runtimes connections are served on (one per proxy thread); listeners run an accept
    /// loop on each.
    pub(crate) workers: Vec<Handle>,
    pub(crate) health: tokio::sync::watch::Receiver<Arc<health::UnhealthySet>>,
    /// Port the `:443` frontend actually listens on (for redirects; known once bound).
    pub(crate) https_port: std::sync::OnceLock<u16>,
    /// `None`: access logging is off.
    pub(crate) access_log: Option<access_log::AccessLog>,
    /// HTTP/1 connections parked now (idle, without HTTP state).
    pub(crate) parked: std::sync::atomic::AtomicUsize,
    /// Client connections serving HTTP now (TLS ones once their handshake is done).
    pub(crate) connections: std::sync::atomic::AtomicUsize,
    /// mlb is stopping (its listeners are closed): kept-alive client connections end at their
    /// next quiet moment, as HAProxy's soft stop ends them. An HTTP/1.1 response says
    /// `Connection: close`, an idle connection is closed (within a supervisor tick), and an
    /// HTTP/2 connection gets GOAWAY and finishes the streams it has.
    pub(crate) stopping: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Whether mlb is stopping ([`Shared::stopping`]).
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The backend connection pool of the calling worker thread.
    pub(crate) fn upstream(&self) -> &upstream::Upstream {
        &self.upstream[workers::current() % self.upstream.len()]
    }
}

/// The running HTTP/TLS proxy. Dropping it closes every listener; open connections finish when
/// they run on the runtime the proxy was started on, and end with the proxy's own threads
/// ([`ProxyConfig::threads`]).
pub struct HttpProxy {
    shared: Arc<Shared>,
    handle: Handle,
    listeners: Mutex<ListenerSet>,
    registry: StatsRegistry,
    health: Mutex<HealthChecker>,
    current: Mutex<Current>,
    cert_watcher: JoinHandle<()>,
    /// Last: the listeners' tasks are aborted before the threads stop.
    _workers: workers::Workers,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl HttpProxy {
    /// Opens the `:80`, `:443` and `:9091` listeners `config` asks for, loads the certificates and
    /// starts serving (with no services: every request gets 503 until [`HttpProxy::apply`]).
    /// Tasks are spawned on `handle`. Fails only when a fixed listener cannot be bound.
    pub fn start(config: ProxyConfig, handle: Handle) -> Result<HttpProxy, ProxyError> {
        let _guard = handle.enter();
        let certs = CertManager::with_policy(
            &config.ssl_certs,
            &config.ssl_certs_dirs,
            config.tls_policy.clone(),
        );
        for e in certs.reload() {
            warn!(error = %e, "certificate not loaded");
        }
        let (health, health_rx) = HealthChecker::new(handle.clone());
        let access_log = access_log::AccessLog::start(&config.access_log, &handle)?;
        let workers = workers::Workers::start(config.threads, &handle, config.trim_memory)
            .map_err(ProxyError::Threads)?;
        let server_limits = Arc::new(maxconn::Limits::new());
        let shared = Arc::new(Shared {
            access_log,
            upstream: (0..workers.len())
                .map(|_| upstream::Upstream::new(&config.timeouts, server_limits.clone()))
                .collect(),
            workers: workers.handles().to_vec(),
            table: ArcSwap::from_pointee(RouteTable::default()),
            certs,
            health: health_rx,
            https_port: std::sync::OnceLock::new(),
            parked: std::sync::atomic::AtomicUsize::new(0),
            connections: std::sync::atomic::AtomicUsize::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
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
            registry: StatsRegistry::default(),
            health: Mutex::new(health),
            current: Mutex::new(Current::default()),
            cert_watcher,
            _workers: workers,
        })
    }

    /// Applies `changes` (in order; an `Upsert` puts the service given in place of the one with
    /// its key, if any; `Remove` of an unknown key does nothing): recompiles only the services
    /// changed, makes a new routing table sharing everything else with the current one and swaps
    /// it in atomically, opens and closes the listeners of the service ports concerned, updates
    /// their certificates and the health checks of the services changed. Cheap whatever the
    /// number of services, and synchronous.
    ///
    /// Returns the problems in effect afterwards, each naming its app: every service not routed
    /// for a bad auth label, every service port that cannot be bound (retried at each call), and
    /// the certificate problems met while applying these changes. They concern only the app
    /// they name, everything else is applied.
    pub fn apply_changes(&self, changes: &[HttpChange]) -> Vec<ProxyError> {
        let mut current = lock(&self.current);
        self.apply_locked(&mut current, changes)
    }

    /// The compiled route object of `key` in the current table (to check that a change to
    /// another service did not rebuild it).
    #[cfg(test)]
    pub(crate) fn compiled_service(
        &self,
        key: &crate::model::HttpServiceKey,
    ) -> Option<Arc<router::Service>> {
        lock(&self.current).routes.service(key).cloned()
    }

    /// The current routing table.
    #[cfg(test)]
    pub(crate) fn route_table(&self) -> Arc<RouteTable> {
        self.shared.table.load_full()
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
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fixed_addr(frontend)
    }

    /// Addresses of the open service-port listeners.
    pub fn service_listeners(&self) -> Vec<SocketAddr> {
        self.listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .service_addrs()
    }

    /// Requests (and tunnels) in flight to a backend, including backends no longer in the table
    /// that are still draining; `None` when mlb has never routed to it or it has drained.
    pub fn backend_in_flight(&self, id: &BackendId) -> Option<usize> {
        self.registry.in_flight(id)
    }

    /// Every backend's counters (requests, bytes, responses by class), draining ones included.
    pub fn backend_counters(&self) -> Vec<(BackendId, balance::BackendCounters)> {
        self.registry.counters()
    }

    /// HTTP/1 client connections parked now: idle between requests, held as their bare socket
    /// (and TLS state) without HTTP buffers.
    pub fn parked_connections(&self) -> usize {
        self.shared
            .parked
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Client connections serving HTTP now (TLS ones once their handshake is done): after
    /// [`HttpProxy::close_listeners`], they fall to none as their requests end.
    pub fn client_connections(&self) -> usize {
        self.shared
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Requests (and tunnels) in flight to any backend.
    pub fn in_flight(&self) -> usize {
        self.registry.total_in_flight()
    }

    /// Closes every listener for good (graceful stop): no new connection is accepted, later
    /// changes open none. Connections already accepted finish the requests they have, then
    /// close: an HTTP/1.1 response says `Connection: close`, an idle connection is closed
    /// within a tick of its supervisor, an HTTP/2 connection gets GOAWAY.
    pub fn close_listeners(&self) {
        lock(&self.listeners).close_all();
        self.shared
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Backends the active health checks currently keep out of rotation.
    pub fn unhealthy_backends(&self) -> Vec<BackendId> {
        let set = self.shared.health.borrow().clone();
        let mut ids: Vec<BackendId> = set.iter().cloned().collect();
        ids.sort();
        ids
    }
}

/// The proxy is the dataplane of HTTP services: the controller hands it [`HttpChange`]s.
impl Dataplane for Arc<HttpProxy> {
    type Change = HttpChange;

    fn apply(&mut self, changes: &[HttpChange]) -> Result<(), Vec<DataplaneError>> {
        let problems = self.apply_changes(changes);
        if problems.is_empty() {
            return Ok(());
        }
        Err(problems
            .into_iter()
            .map(|e| DataplaneError::Http(Box::new(e)))
            .collect())
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

    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        model::{HttpService, HttpServiceKey},
        options::{Cli, Command},
    };

    fn config_for(args: &[&str]) -> ProxyConfig {
        let cli = Cli::try_parse_from(["mlb", "run"].iter().chain(args)).unwrap();
        let Command::Run(opts) = cli.command else {
            panic!("not run")
        };
        opts.proxy_config(ConnGate::new(ConnLimits::default()))
    }

    fn numbered(i: usize) -> HttpService {
        // Distinct ports: the OS may hand a just-released port out again, and two services on
        // one port would share one listener.
        static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
        let port = loop {
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = free.local_addr().unwrap().port();
            let mut taken = TAKEN.lock().unwrap();
            if !taken.contains(&port) {
                taken.push(port);
                break port;
            }
        };
        let host = format!("app{i}.example.com");
        let mut svc = router::tests::svc(&format!("/app{i}"), port, &[&host], &[], 0);
        svc.backends = (0..3)
            .map(|t| crate::model::Backend {
                id: BackendId::from(format!("app{i}.task{t}:0")),
                addr: SocketAddr::from(([127, 0, 0, 1], 1 + t)),
                weight: 1,
                state: crate::model::BackendState::Active,
            })
            .collect();
        svc
    }

    /// A proxy on 127.0.0.1's ephemeral ports (HTTP frontend and service ports) with `threads`
    /// threads of its own.
    fn on_loopback(threads: usize) -> ProxyConfig {
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        ProxyConfig {
            http_addr: Some(lo),
            https_addr: None,
            appid_addr: None,
            service_bind_ip: lo.ip(),
            threads,
            ..ProxyConfig::default()
        }
    }

    /// One service of many changes (and one goes, one comes): only it is recompiled, the others'
    /// route objects are the very ones the previous table had, and routing is right for both.
    #[tokio::test]
    async fn a_change_rebuilds_only_the_service_it_concerns() {
        let config = ProxyConfig {
            appid_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            ..on_loopback(0)
        };
        let proxy = HttpProxy::start(config, Handle::current()).unwrap();
        let all: BTreeMap<HttpServiceKey, HttpService> =
            (0..50).map(numbered).map(|s| (s.key.clone(), s)).collect();
        let upserts = all
            .values()
            .cloned()
            .map(|s| HttpChange::Upsert(Arc::new(s)));
        assert!(proxy.apply_changes(&upserts.collect::<Vec<_>>()).is_empty());
        let key = numbered_key;
        let unchanged = proxy.compiled_service(&key(8)).unwrap();
        let before = proxy.compiled_service(&key(7)).unwrap();
        let gone_port = all[&key(9)].service_port;

        let mut changed = all[&key(7)].clone();
        changed.vhosts = vec!["new7.example.com".into()];
        changed.backends[1].state = crate::model::BackendState::Draining;
        let added = numbered(50);
        let errors = proxy.apply_changes(&[
            HttpChange::Upsert(Arc::new(changed.clone())),
            HttpChange::Remove(key(9)),
            HttpChange::Upsert(Arc::new(added.clone())),
        ]);
        assert!(errors.is_empty(), "{errors:?}");

        let table = proxy.route_table();
        let now = proxy.compiled_service(&key(7)).unwrap();
        assert!(
            !Arc::ptr_eq(&now, &before),
            "the changed service is recompiled"
        );
        assert_eq!(*now.spec, changed);
        assert!(
            Arc::ptr_eq(&now.selector.backends[0], &before.selector.backends[0]),
            "its unchanged backends are kept as they were"
        );
        let routed = table.lookup_vhost("new7.example.com", "/").unwrap();
        assert!(Arc::ptr_eq(routed, &now));
        assert!(table.lookup_vhost("app7.example.com", "/").is_none());
        assert!(Arc::ptr_eq(table.lookup_app_id("/APP7").unwrap(), &now));

        assert!(Arc::ptr_eq(
            &proxy.compiled_service(&key(8)).unwrap(),
            &unchanged
        ));
        let routed = table.lookup_vhost("app8.example.com", "/x").unwrap();
        assert!(Arc::ptr_eq(routed, &unchanged), "not rebuilt");
        let port8 = all[&key(8)].service_port;
        assert!(Arc::ptr_eq(table.lookup_port(port8).unwrap(), &unchanged));

        assert!(table.lookup_vhost("app9.example.com", "/").is_none());
        assert!(table.lookup_port(gone_port).is_none());
        assert!(table.lookup_vhost("app50.example.com", "/").is_some());
        let listening = proxy.service_listeners();
        assert!(!listening.iter().any(|a| a.port() == gone_port));
        assert!(listening.iter().any(|a| a.port() == added.service_port));
        assert_eq!(listening.len(), 50);

        // The same changes again change nothing: no table is swapped.
        assert!(
            proxy
                .apply_changes(&[HttpChange::Upsert(Arc::new(changed.clone()))])
                .is_empty()
        );
        assert!(Arc::ptr_eq(&proxy.route_table(), &table), "nothing to swap");
        assert!(
            proxy
                .apply_changes(&[HttpChange::Remove(key(8))])
                .is_empty()
        );
        assert!(proxy.route_table().lookup_port(port8).is_none());
        assert!(Arc::ptr_eq(&proxy.compiled_service(&key(7)).unwrap(), &now));
    }

    /// A caller driving a current-thread runtime of its own (mlb's control thread) applies
    /// changes to a proxy serving on a multi-thread runtime: the new port listens (the
    /// certificate step runs on the caller's thread instead of trying to leave the proxy's
    /// runtime, which only a worker of it can).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_on_a_current_thread_runtime_of_its_own_applies_changes() {
        let proxy = Arc::new(HttpProxy::start(on_loopback(0), Handle::current()).unwrap());
        let svc = numbered(70);
        let port = svc.service_port;
        let caller = proxy.clone();
        let errors = tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async { caller.apply_changes(&[HttpChange::Upsert(Arc::new(svc))]) })
        })
        .await
        .expect("applied without a panic");
        assert!(errors.is_empty(), "{errors:?}");
        assert!(
            proxy.service_listeners().iter().any(|a| a.port() == port),
            "{:?}",
            proxy.service_listeners()
        );
    }

    /// A backend answering every request with `200 ok` (keep-alive), on an ephemeral port.
    async fn ok_backend() -> SocketAddr {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    // One request per read is enough for these small GETs.
                    while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if conn.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    /// `GET /` with `Host: host` on a new connection to `addr`: the status line.
    async fn get(addr: SocketAddr, host: &str) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await?;
        Ok(answer.lines().next().unwrap_or_default().to_owned())
    }

    /// With several threads every listening address has a socket per thread: all of them
    /// serve, and all of them close when the service port goes.
    #[tokio::test]
    async fn every_proxy_thread_serves_and_a_removed_port_closes_on_all() {
        let proxy = HttpProxy::start(on_loopback(3), Handle::current()).unwrap();
        let mut svc = numbered(0);
        svc.backends.truncate(1);
        svc.backends[0].addr = ok_backend().await;
        let port = svc.service_port;
        assert!(
            proxy
                .apply_changes(&[HttpChange::Upsert(Arc::new(svc))])
                .is_empty()
        );
        let http = proxy.local_addr("http").unwrap();
        let service = SocketAddr::from(([127, 0, 0, 1], port));
        // The kernel spreads connections over the sockets by their addresses' hash: many
        // connections reach every one of the three.
        for _ in 0..30 {
            assert_eq!(
                get(http, "app0.example.com").await.unwrap(),
                "HTTP/1.1 200 OK"
            );
            assert_eq!(get(service, "x").await.unwrap(), "HTTP/1.1 200 OK");
        }
        assert!(
            proxy
                .apply_changes(&[HttpChange::Remove(numbered_key(0))])
                .is_empty()
        );
        // Aborted accept loops drop their sockets as their threads get to it.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        for _ in 0..30 {
            let refused = tokio::net::TcpStream::connect(service).await;
            assert!(
                refused.is_err(),
                "a socket of the removed port still listens"
            );
        }
    }

    #[test]
    fn threads_are_opt_in() {
        assert_eq!(config_for(&[]).threads, 0, "mlb's runtime");
        assert_eq!(config_for(&["--threads", "3"]).threads, 3);
        let cli = Cli::try_parse_from(["mlb", "run", "--threads", "0"]);
        assert!(cli.is_err(), "0 threads is refused");
    }

    fn numbered_key(i: usize) -> HttpServiceKey {
        HttpServiceKey {
            app_id: format!("/app{i}"),
            port_index: 0,
        }
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

    #[test]
    fn timeout_flags_take_haproxy_durations() {
        let c = config_for(&["--timeout-server", "2m", "--timeout-client", "1500"]);
        assert_eq!(c.timeouts.server, Duration::from_secs(120));
        assert_eq!(c.timeouts.client, Duration::from_millis(1500));
        assert_eq!(c.timeouts.connect, Duration::from_secs(3));
        let err = Cli::try_parse_from(["mlb", "run", "--timeout-server", "2 minutes"]).unwrap_err();
        assert!(err.to_string().contains("expected a duration"), "{err}");
    }

    #[test]
    fn tls_policy_and_accept_proxy_flags() {
        let c = config_for(&[
            "--tls-min-version",
            "TLSv1.3",
            "--tls-ciphers",
            "ECDHE-ECDSA-AES256-GCM-SHA384:AES256-SHA",
            "--tls-curves",
            "X25519",
            "--accept-proxy",
        ]);
        assert!(c.accept_proxy);
        assert_eq!(c.tls_policy.min_version, crate::model::TlsVersion::Tls13);
        assert_eq!(c.tls_policy.ciphers.len(), 2);
        assert_eq!(c.tls_policy.curves, ["X25519"]);
        let err = Cli::try_parse_from(["mlb", "run", "--tls-ciphers", "RC4-MD5"]).unwrap_err();
        assert!(err.to_string().contains("none is supported"), "{err}");
        let err = Cli::try_parse_from(["mlb", "run", "--tls-min-version", "1.1"]).unwrap_err();
        assert!(err.to_string().contains("TLS 1.2 and 1.3"), "{err}");
    }
}
