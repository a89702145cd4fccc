//! The userspace TCP/UDP dataplane: a tokio proxy implementing the L4 [`Dataplane`], used with
//! `--dataplane userspace` or when the XDP program cannot be attached.
//!
//! - Each service listens on every VIP (`--vip`; all IPv4 addresses when none is given) at its
//!   port, or on its `bind_addr` only.
//! - A new flow picks its backend from the service's Maglev table with a stable hash of the
//!   client's address and port (as the XDP dataplane does in the kernel). Draining backends are
//!   not in the table: they take no new flows. The table is sized to the service's backends
//!   ([`maglev::fitted_table_size`]: 1,031 slots for up to 10 equal backends, at most
//!   [`UserspaceL4Config::maglev_table_size`]) and holds `u16` entries: it only spreads new
//!   flows, so it needs no more than keeps every backend within 1% of its share.
//! - The routes of a service live in an [`ArcSwap`]: `apply` swaps them atomically, listeners stay
//!   open across changes, and only the listeners of removed services (or of addresses a service
//!   no longer uses) are closed.
//! - An established TCP connection keeps its backend until it ends, whatever happens to the
//!   service afterwards (the backend is removed, the service is removed): drain, never cut.
//! - TCP: connect timeout, then redispatch to the next backend (as HAProxy's `option
//!   redispatch`); bytes are copied both ways with half-close (a FIN is forwarded, the other
//!   direction keeps flowing).
//! - UDP: one session per client address, with its own upstream socket connected to the chosen
//!   backend; replies go back to the client from the service socket; a session idle for
//!   [`UserspaceL4Config::udp_idle_timeout`] is closed. Sessions are capped per service and take
//!   a slot of the process's connection budget each: when either is full, the least recently
//!   used session of the service makes room, so a flood of source ports cannot exhaust the
//!   descriptors. A session's slot may be shed like a silent TCP connection's: a TCP or HTTP
//!   connection arriving at the budget's cap closes the oldest session (the client's next
//!   datagram opens a new one), so a UDP flood cannot keep HTTP clients out.
//! - TCP connections take a slot of the same budget ([`ConnGate`]: queued briefly, then refused
//!   at the cap), are closed after [`UserspaceL4Config::tcp_idle_timeout`] without a byte either
//!   way, and a client that does not read stalls its copy for at most the send timeout.
//! - Counters per service and backend ([`L4Stats`]) for the admin API.
//! - With `--access-log`, one line per TCP connection once it ends (HAProxy's tcplog fields:
//!   client, service, server, connect time, duration, bytes, termination state), through the
//!   same never-blocking queue as the HTTP proxy's lines.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream, UdpSocket},
    runtime::Handle,
    task::JoinHandle,
};
use tracing::{debug, info, warn};

use super::{
    Dataplane, DataplaneError, L4Change, apply_each,
    maglev::{self, MaglevBackend, MaglevError, TableEntry},
};
use crate::{
    model::{BackendId, BackendState, Balance, IpNet, L4Service, L4ServiceKey, Protocol},
    overload::{
        AcceptErrors, Admission, ConnGate, ConnLimits, Guarded, ListenerGate, Slot, supervise,
    },
    proxy::access_log::{AccessLog, AccessLogConfig, AccessLogError, L4Entry},
};

/// Why the userspace dataplane could not start.
#[derive(Debug, thiserror::Error)]
pub enum UserspaceL4Error {
    #[error(transparent)]
    Table(#[from] MaglevError),
    #[error(transparent)]
    AccessLog(#[from] AccessLogError),
}

/// Why a service could not be set up (the controller retries it at the next full pass).
#[derive(Debug, thiserror::Error)]
enum ServiceError {
    /// Its Maglev table could not be built.
    #[error("app {app_id}: {source}")]
    Table { app_id: String, source: MaglevError },
    /// One of its addresses could not be bound; the service stays as it was.
    #[error("app {app_id}: cannot listen on {addr}/{protocol}: {source}")]
    Listen {
        app_id: String,
        addr: SocketAddr,
        protocol: Protocol,
        source: io::Error,
    },
}

/// How many backends a new TCP connection tries before giving up (the chosen one, then the next
/// ones in id order).
const MAX_CONNECT_ATTEMPTS: usize = 3;
/// Listen backlog of the TCP listeners.
const LISTEN_BACKLOG: i32 = 1024;
/// Buffer per direction of a proxied TCP connection: 32 KiB of memory per connection however
/// much the peers send (the kernel's socket buffers hold the rest).
const COPY_BUFFER: usize = 16 * 1024;
/// Largest UDP datagram relayed.
const UDP_BUFFER: usize = 65_536;

/// Settings of the userspace dataplane.
#[derive(Clone, Debug)]
pub struct UserspaceL4Config {
    /// Addresses every service listens on (unless it has a `bind_addr`). Empty: `0.0.0.0`.
    pub vips: Vec<IpAddr>,
    /// Largest Maglev table a service gets (prime); each is sized to its backends below that.
    pub maglev_table_size: u32,
    /// How long a connect to one backend may take before the next one is tried.
    pub connect_timeout: Duration,
    /// A UDP session with no datagram either way for this long is closed.
    pub udp_idle_timeout: Duration,
    /// Most UDP sessions per service socket; beyond it the least recently used one is closed.
    pub max_udp_sessions: usize,
    /// A TCP connection with no byte either way for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// The connection budget TCP connections and UDP sessions take from (shared with the HTTP
    /// proxy), with its queue and send timeouts.
    pub conn_gate: Arc<ConnGate>,
    /// `--access-log*`: one line per TCP connection (off by default).
    pub access_log: AccessLogConfig,
}

impl UserspaceL4Config {
    /// Defaults (Maglev tables of at most 65,537 slots, 3 s connect timeout, 30 s UDP idle
    /// timeout) for these VIPs.
    pub fn new(vips: Vec<IpAddr>) -> Self {
        Self {
            vips,
            maglev_table_size: maglev::DEFAULT_TABLE_SIZE,
            connect_timeout: Duration::from_secs(3),
            udp_idle_timeout: Duration::from_secs(30),
            max_udp_sessions: 4_096,
            tcp_idle_timeout: Duration::from_secs(300),
            conn_gate: ConnGate::new(ConnLimits::default()),
            access_log: AccessLogConfig::default(),
        }
    }
}

/// Live counters of one backend (atomics updated by the connections).
#[derive(Debug, Default)]
struct BackendCounters {
    connections: AtomicU64,
    active: AtomicU64,
    bytes_to_backend: AtomicU64,
    bytes_from_backend: AtomicU64,
    connect_failures: AtomicU64,
}

/// Live counters of one service.
#[derive(Debug, Default)]
struct ServiceCounters {
    no_backend: AtomicU64,
    denied: AtomicU64,
    backends: Mutex<BTreeMap<BackendId, Arc<BackendCounters>>>,
}

/// What one backend of a service has seen (a snapshot).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BackendStats {
    /// TCP connections (UDP sessions) opened to this backend.
    pub connections_total: u64,
    /// Those still open.
    pub connections_active: u64,
    /// Bytes received from clients and sent on to the backend.
    pub bytes_to_backend: u64,
    /// Bytes received from the backend and sent back to clients.
    pub bytes_from_backend: u64,
    /// TCP connects to this backend that failed or timed out (the flow was redispatched).
    pub connect_failures: u64,
}

/// What one service has seen (a snapshot).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServiceStats {
    /// Flows refused because no backend was available (none, all draining, all unreachable).
    pub no_backend: u64,
    /// Flows refused because the client is not in the service's allow-list.
    pub denied: u64,
    /// Per backend currently in the service.
    pub backends: BTreeMap<BackendId, BackendStats>,
}

/// Handle on the counters of a [`UserspaceL4`]; cheap to clone, readable from any thread (the
/// admin API keeps one).
#[derive(Clone, Debug, Default)]
pub struct L4Stats {
    services: Arc<Mutex<BTreeMap<L4ServiceKey, Arc<ServiceCounters>>>>,
}

impl L4Stats {
    /// Current counters of every service.
    pub fn snapshot(&self) -> BTreeMap<L4ServiceKey, ServiceStats> {
        let services = self
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        services
            .iter()
            .map(|(key, svc)| {
                let backends = svc
                    .backends
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let backends = backends
                    .iter()
                    .map(|(id, c)| {
                        let stats = BackendStats {
                            connections_total: c.connections.load(Relaxed),
                            connections_active: c.active.load(Relaxed),
                            bytes_to_backend: c.bytes_to_backend.load(Relaxed),
                            bytes_from_backend: c.bytes_from_backend.load(Relaxed),
                            connect_failures: c.connect_failures.load(Relaxed),
                        };
                        (id.clone(), stats)
                    })
                    .collect();
                let stats = ServiceStats {
                    no_backend: svc.no_backend.load(Relaxed),
                    denied: svc.denied.load(Relaxed),
                    backends,
                };
                (*key, stats)
            })
            .collect()
    }

    fn service(&self, key: L4ServiceKey) -> Arc<ServiceCounters> {
        let mut services = self
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        services.entry(key).or_default().clone()
    }

    fn remove(&self, key: L4ServiceKey) {
        let mut services = self
            .services
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        services.remove(&key);
    }
}

/// A backend new flows may go to.
struct RouteBackend {
    id: BackendId,
    addr: SocketAddr,
    counters: Arc<BackendCounters>,
}

/// Where a service's new flows go: swapped as a whole on every change.
struct Routes {
    /// Active backends, sorted by id.
    backends: Vec<RouteBackend>,
    /// Maglev table over `backends`.
    table: Table,
    counters: Arc<ServiceCounters>,
    /// Counters of every backend of the service, draining ones included.
    by_id: BTreeMap<BackendId, Arc<BackendCounters>>,
    /// `BALANCE=source`: the client's address alone picks the backend.
    by_source: bool,
    /// Clients allowed to open flows (`BACKEND_NETWORK_ALLOWED_ACL`); empty: everyone.
    allowed: Vec<IpNet>,
    /// The service's name in stats and access logs (`<app>_<port>`).
    name: Arc<str>,
}

impl Routes {
    fn build(
        service: &L4Service,
        counters: Arc<ServiceCounters>,
        table_size: u32,
    ) -> Result<Self, MaglevError> {
        // Counters follow the backend id across changes (draining backends included).
        let by_id = {
            let current = counters
                .backends
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            service
                .backends
                .iter()
                .map(|b| {
                    (
                        b.id.clone(),
                        current.get(&b.id).cloned().unwrap_or_default(),
                    )
                })
                .collect::<BTreeMap<_, _>>()
        };
        let mut active: Vec<_> = service
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Active)
            .collect();
        active.sort_by(|a, b| a.id.cmp(&b.id));
        let maglev: Vec<MaglevBackend> = active
            .iter()
            .map(|b| MaglevBackend {
                key: b.id.as_str(),
                weight: b.weight,
            })
            .collect();
        let table = Table::build(&maglev, table_size)?;
        let backends = active
            .iter()
            .map(|b| RouteBackend {
                id: b.id.clone(),
                addr: b.addr,
                counters: by_id[&b.id].clone(),
            })
            .collect();
        Ok(Self {
            backends,
            table,
            counters,
            by_id,
            by_source: service.balance == Balance::Source,
            allowed: service.allowed_networks.clone(),
            name: crate::stats::proxy_name(&service.app_id, service.key.port).into(),
        })
    }

    /// Whether `client` may open a flow (the XDP program's ACL step, in user space); a refusal
    /// is counted.
    fn admits(&self, client: SocketAddr) -> bool {
        let ip = client.ip().to_canonical();
        let ok = self.allowed.is_empty() || self.allowed.iter().any(|n| n.contains(ip));
        if !ok {
            self.counters.denied.fetch_add(1, Relaxed);
        }
        ok
    }

    /// Makes this table's backends the ones the counters report (called once it is in use;
    /// removed backends' counters go, their open connections keep their own handle).
    fn publish_counters(&self) {
        let mut current = self
            .counters
            .backends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = self.by_id.clone();
    }

    /// Index of the backend the Maglev table gives this client, if any.
    fn pick(&self, client: SocketAddr) -> Option<usize> {
        if self.backends.is_empty() {
            return None;
        }
        // Port 0 for every flow of a client: the same hash, the same backend.
        let port = if self.by_source { 0 } else { client.port() };
        self.table
            .get(flow_hash(SocketAddr::new(client.ip().to_canonical(), port)))
    }

    /// The backends a TCP connection tries: the chosen one, then the next ones in id order.
    fn candidates(&self, first: usize) -> impl Iterator<Item = &RouteBackend> {
        let n = self.backends.len();
        (0..n.min(MAX_CONNECT_ATTEMPTS)).map(move |k| &self.backends[(first + k) % n])
    }
}

/// A service's Maglev table, sized to its backends, in the narrowest entries that fit.
enum Table {
    /// Up to 65,535 backends (always, in practice).
    Narrow(Vec<u16>),
    Wide(Vec<u32>),
}

impl Table {
    /// The table of `backends` (no more than `max_size` slots).
    fn build(backends: &[MaglevBackend<'_>], max_size: u32) -> Result<Self, MaglevError> {
        let size = maglev::fitted_table_size(backends, max_size);
        if backends.len() <= u16::MAX_BACKENDS {
            maglev::build_table_of(backends, size).map(Self::Narrow)
        } else {
            maglev::build_table_of(backends, size).map(Self::Wide)
        }
    }

    /// The backend index the flow `hash` selects, if any.
    fn get(&self, hash: u64) -> Option<usize> {
        match self {
            Self::Narrow(t) => t[maglev::slot_of(hash, t.len())].index(),
            Self::Wide(t) => t[maglev::slot_of(hash, t.len())].index(),
        }
    }
}

/// Stable hash of the client's address and port (the part of the 5-tuple that varies per flow
/// for one service).
fn flow_hash(client: SocketAddr) -> u64 {
    let mut bytes = [0u8; 18];
    match client.ip() {
        IpAddr::V4(ip) => bytes[..4].copy_from_slice(&ip.octets()),
        IpAddr::V6(ip) => bytes[..16].copy_from_slice(&ip.octets()),
    }
    bytes[16..].copy_from_slice(&client.port().to_be_bytes());
    maglev::stable_hash(b"mlb-flow\0", &bytes)
}

/// One bound socket of a service and the task serving it. Dropping it closes the socket.
struct Listener {
    /// A second handle on a TCP listening socket, to shut it down at once on drop (aborting
    /// the task alone closes the socket only when the runtime next polls it).
    shutdown_handle: Option<std::net::TcpListener>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(l) = &self.shutdown_handle {
            // On Linux, shutting down a listening socket unhashes it: new connects are refused
            // from now on, and the port can be bound again.
            let _ = socket2::SockRef::from(l).shutdown(std::net::Shutdown::Both);
        }
        self.task.abort();
    }
}

/// A service this dataplane serves.
struct ServiceRuntime {
    spec: L4Service,
    routes: Arc<ArcSwap<Routes>>,
    listeners: BTreeMap<SocketAddr, Listener>,
}

/// The userspace TCP/UDP dataplane. `apply` is synchronous (binds happen in it, so their errors
/// are returned); the proxying runs on the tokio runtime given at construction.
pub struct UserspaceL4 {
    handle: Handle,
    config: UserspaceL4Config,
    services: BTreeMap<L4ServiceKey, ServiceRuntime>,
    stats: L4Stats,
    access_log: Option<Arc<AccessLog>>,
}

impl UserspaceL4 {
    /// A dataplane with no service yet, proxying on `handle`'s runtime. Fails when the Maglev
    /// table size is not usable or the access log cannot be opened.
    pub fn new(handle: Handle, config: UserspaceL4Config) -> Result<Self, UserspaceL4Error> {
        maglev::validate_table_size(config.maglev_table_size)?;
        let access_log = AccessLog::start(&config.access_log, &handle)?.map(Arc::new);
        Ok(Self {
            handle,
            config,
            services: BTreeMap::new(),
            stats: L4Stats::default(),
            access_log,
        })
    }

    /// The counters, for the admin API.
    pub fn stats(&self) -> L4Stats {
        self.stats.clone()
    }

    /// The addresses a service is currently listening on.
    pub fn listening(&self, key: L4ServiceKey) -> Vec<SocketAddr> {
        self.services
            .get(&key)
            .map(|s| s.listeners.keys().copied().collect())
            .unwrap_or_default()
    }

    fn addresses(&self, service: &L4Service) -> BTreeSet<SocketAddr> {
        let port = service.key.port;
        match service.bind_addr {
            Some(ip) => [SocketAddr::new(ip, port)].into(),
            None if self.config.vips.is_empty() => {
                [SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)].into()
            }
            None => self
                .config
                .vips
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect(),
        }
    }

    fn upsert(&mut self, service: &L4Service) -> Result<(), DataplaneError> {
        let key = service.key;
        let app_id = || service.app_id.clone();
        let error = |e: ServiceError| DataplaneError::l4(key, e);
        let exists = self.services.contains_key(&key);
        let counters = self.stats.service(key);
        let routes =
            Routes::build(service, counters, self.config.maglev_table_size).map_err(|source| {
                error(ServiceError::Table {
                    app_id: app_id(),
                    source,
                })
            });
        let routes = match routes {
            Ok(r) => Arc::new(r),
            Err(e) => {
                if !exists {
                    self.stats.remove(key);
                }
                return Err(e);
            }
        };
        let wanted = self.addresses(service);
        let (shared, have) = match self.services.get(&key) {
            Some(rt) => (rt.routes.clone(), rt.listeners.keys().copied().collect()),
            None => (
                Arc::new(ArcSwap::new(routes.clone())),
                BTreeSet::<SocketAddr>::new(),
            ),
        };
        // Bind every new address first: if one fails, the service stays exactly as it was.
        let mut opened = BTreeMap::new();
        for addr in wanted.difference(&have) {
            match self.listen(*addr, key.protocol, shared.clone()) {
                Ok(listener) => {
                    opened.insert(*addr, listener);
                }
                Err(e) => {
                    drop(opened);
                    if !exists {
                        self.stats.remove(key);
                    }
                    return Err(error(ServiceError::Listen {
                        app_id: app_id(),
                        addr: *addr,
                        protocol: key.protocol,
                        source: e,
                    }));
                }
            }
        }
        routes.publish_counters();
        if let Some(rt) = self.services.get_mut(&key) {
            rt.routes.store(routes);
            rt.listeners.retain(|addr, _| wanted.contains(addr));
            rt.listeners.extend(opened);
            rt.spec = service.clone();
            debug!(service = %key, "L4 service updated");
        } else {
            // Debug: at 10,000 services one line each at start-up cost more than the binds;
            // "dataplanes updated" counts them.
            debug!(service = %key, app = %service.app_id, addrs = ?wanted, "L4 service listening");
            self.services.insert(
                key,
                ServiceRuntime {
                    spec: service.clone(),
                    routes: shared,
                    listeners: opened,
                },
            );
        }
        Ok(())
    }

    fn remove(&mut self, key: L4ServiceKey) {
        if let Some(rt) = self.services.remove(&key) {
            info!(service = %key, app = %rt.spec.app_id, "L4 service removed; open connections drain");
            drop(rt);
            self.stats.remove(key);
        }
    }

    fn listen(
        &self,
        addr: SocketAddr,
        protocol: Protocol,
        routes: Arc<ArcSwap<Routes>>,
    ) -> io::Result<Listener> {
        use socket2::{Domain, Socket, Type};
        let _runtime = self.handle.enter();
        let domain = Domain::for_address(addr);
        match protocol {
            Protocol::Tcp => {
                let socket = Socket::new(domain, Type::STREAM, Some(socket2::Protocol::TCP))?;
                if addr.is_ipv6() {
                    socket.set_only_v6(true)?;
                }
                socket.set_reuse_address(true)?;
                socket.set_nonblocking(true)?;
                socket.bind(&addr.into())?;
                socket.listen(LISTEN_BACKLOG)?;
                let std_listener: std::net::TcpListener = socket.into();
                let shutdown_handle = std_listener.try_clone()?;
                let listener = TcpListener::from_std(std_listener)?;
                let task = self.handle.spawn(tcp_accept_loop(
                    listener,
                    addr,
                    routes,
                    self.config.clone(),
                    self.access_log.clone(),
                ));
                Ok(Listener {
                    shutdown_handle: Some(shutdown_handle),
                    task,
                })
            }
            Protocol::Udp => {
                let socket = Socket::new(domain, Type::DGRAM, Some(socket2::Protocol::UDP))?;
                if addr.is_ipv6() {
                    socket.set_only_v6(true)?;
                }
                socket.set_nonblocking(true)?;
                socket.bind(&addr.into())?;
                let std_socket: std::net::UdpSocket = socket.into();
                let socket = Arc::new(UdpSocket::from_std(std_socket)?);
                let task = self
                    .handle
                    .spawn(udp_service_loop(socket, routes, self.config.clone()));
                Ok(Listener {
                    shutdown_handle: None,
                    task,
                })
            }
        }
    }
}

impl Dataplane for UserspaceL4 {
    type Change = L4Change;

    fn apply(&mut self, changes: &[L4Change]) -> Result<(), Vec<DataplaneError>> {
        apply_each(changes, |change| match change {
            L4Change::Upsert(service) => self.upsert(service),
            L4Change::Remove(key) => {
                self.remove(*key);
                Ok(())
            }
        })
    }
}

async fn tcp_accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    routes: Arc<ArcSwap<Routes>>,
    config: UserspaceL4Config,
    access_log: Option<Arc<AccessLog>>,
) {
    let mut gate = config.conn_gate.listener();
    let limits = ConnLimits {
        idle_timeout: config.tcp_idle_timeout,
        ..gate.limits().clone()
    };
    let mut errors = AcceptErrors::default();
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                let slot = gate.reserve().await;
                // Over the limit: closed at once (a TCP service has no overload answer).
                let Some(slot) = slot else {
                    debug!(%addr, %peer, "connection limit reached; refused");
                    continue;
                };
                // Not sheddable: with server-first protocols a silent client is normal.
                let client = Guarded::new(client, slot.admit(false));
                let routes = routes.load_full();
                let state = client.state();
                let timeout = config.connect_timeout;
                let limits = limits.clone();
                let log = access_log
                    .as_ref()
                    .map(|log| ConnLog::new(log.clone(), peer, routes.name.clone()));
                tokio::spawn(async move {
                    let proxied = std::pin::pin!(proxy_tcp(client, peer, routes, timeout, log));
                    supervise(state, &limits, proxied).await;
                });
            }
            // The listener was shut down (service removed).
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => return,
            // The client gave up before we accepted: nothing to do.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                errors.report(&addr, &e);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Decrements a backend's active-connection count when the connection (or session) ends, however
/// it ends (including its task being aborted).
struct ActiveGuard(Arc<BackendCounters>);

impl ActiveGuard {
    fn new(counters: &Arc<BackendCounters>) -> Self {
        counters.connections.fetch_add(1, Relaxed);
        counters.active.fetch_add(1, Relaxed);
        Self(counters.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

async fn proxy_tcp(
    client: Guarded<TcpStream>,
    peer: SocketAddr,
    routes: Arc<Routes>,
    connect_timeout: Duration,
    mut log: Option<ConnLog>,
) {
    if !routes.admits(peer) {
        debug!(%peer, "client not in the service's allowed networks; closed");
        return;
    }
    let no_server = |log: &mut Option<ConnLog>| {
        if let Some(l) = log {
            l.termination = "SC";
        }
    };
    let Some(first) = routes.pick(peer) else {
        routes.counters.no_backend.fetch_add(1, Relaxed);
        debug!(%peer, "no backend available; closing");
        no_server(&mut log);
        return;
    };
    let mut upstream = None;
    for backend in routes.candidates(first) {
        match tokio::time::timeout(connect_timeout, TcpStream::connect(backend.addr)).await {
            Ok(Ok(stream)) => {
                upstream = Some((backend, stream));
                break;
            }
            Ok(Err(e)) => {
                backend.counters.connect_failures.fetch_add(1, Relaxed);
                debug!(%peer, backend = %backend.id, "connect failed: {e}; redispatching");
            }
            Err(_) => {
                backend.counters.connect_failures.fetch_add(1, Relaxed);
                debug!(%peer, backend = %backend.id, "connect timed out; redispatching");
            }
        }
    }
    let Some((backend, stream)) = upstream else {
        routes.counters.no_backend.fetch_add(1, Relaxed);
        warn!(%peer, "no backend reachable; closing");
        no_server(&mut log);
        return;
    };
    let counters = backend.counters.clone();
    let id = backend.id.clone();
    let tally = log.as_mut().map(|l| l.connected(backend.addr));
    drop(routes);
    let _active = ActiveGuard::new(&counters);
    let _ = client.get_ref().set_nodelay(true);
    let _ = stream.set_nodelay(true);
    let mut client = Counted {
        inner: client,
        counters: counters.clone(),
        from_client: true,
        tally: tally.clone(),
    };
    let mut stream = Counted {
        inner: stream,
        counters,
        from_client: false,
        tally,
    };
    // 16 KiB per direction (tokio's default is 8 KiB): fewer syscalls for bulk transfers.
    let copied = tokio::io::copy_bidirectional_with_sizes(
        &mut client,
        &mut stream,
        COPY_BUFFER,
        COPY_BUFFER,
    )
    .await;
    if let Err(e) = &copied {
        debug!(%peer, backend = %id, "connection ended: {e}");
    }
    if let Some(l) = &mut log {
        l.termination = if copied.is_ok() { "--" } else { "SD" };
    }
}

/// One connection's bytes each way and which side failed, for its access-log line.
#[derive(Debug, Default)]
struct Tally {
    from_client: AtomicU64,
    to_client: AtomicU64,
    /// 0: no error; 1: the client's side; 2: the backend's side.
    failed: AtomicU8,
}

/// The access-log line of one TCP connection, written when it is dropped: however the
/// connection ends, including an idle timeout that drops its future (the line then says `cD`).
struct ConnLog {
    log: Arc<AccessLog>,
    client: SocketAddr,
    accepted: SystemTime,
    started: Instant,
    service: Arc<str>,
    /// The backend that took it, and how long the connect took.
    server: Option<(String, Duration)>,
    tally: Arc<Tally>,
    /// Unless a side failed (that wins).
    termination: &'static str,
}

impl ConnLog {
    fn new(log: Arc<AccessLog>, client: SocketAddr, service: Arc<str>) -> Self {
        Self {
            log,
            client,
            accepted: SystemTime::now(),
            started: Instant::now(),
            service,
            server: None,
            tally: Arc::default(),
            termination: "cD",
        }
    }

    /// Records the backend that took the connection; returns the tally its streams count into.
    fn connected(&mut self, backend: SocketAddr) -> Arc<Tally> {
        let server = crate::stats::server_name(backend);
        self.server = Some((server, self.started.elapsed()));
        self.tally.clone()
    }
}

impl Drop for ConnLog {
    fn drop(&mut self) {
        let termination = match self.tally.failed.load(Relaxed) {
            1 => "CD",
            2 => "SD",
            _ => self.termination,
        };
        self.log.record(&L4Entry {
            client: self.client,
            accepted: self.accepted,
            service: &self.service,
            server: self.server.as_ref().map_or("<NOSRV>", |s| &s.0),
            connect: self.server.as_ref().map(|s| s.1),
            duration: self.started.elapsed(),
            bytes_in: self.tally.from_client.load(Relaxed),
            bytes_out: self.tally.to_client.load(Relaxed),
            termination,
        });
    }
}

/// A TCP stream that counts the bytes read from it into its backend's counters.
struct Counted<S> {
    inner: S,
    counters: Arc<BackendCounters>,
    /// Reads from the client count as "to backend", reads from the backend as "from backend".
    from_client: bool,
    /// The connection's own counts, when it is logged.
    tally: Option<Arc<Tally>>,
}

impl<S> Counted<S> {
    /// Notes an I/O error on this side for the access log.
    fn failed<T>(&self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let (Some(t), Poll::Ready(Err(_))) = (&self.tally, &poll) {
            t.failed
                .store(if self.from_client { 1 } else { 2 }, Relaxed);
        }
        poll
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            let counter = if self.from_client {
                &self.counters.bytes_to_backend
            } else {
                &self.counters.bytes_from_backend
            };
            counter.fetch_add(n, Relaxed);
            if let Some(t) = &self.tally {
                let mine = if self.from_client {
                    &t.from_client
                } else {
                    &t.to_client
                };
                mine.fetch_add(n, Relaxed);
            }
        }
        self.failed(poll)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.failed(poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Shared between a UDP session's two directions.
struct SessionClock {
    start: Instant,
    /// Milliseconds after `start` of the last datagram either way.
    last: AtomicU64,
    closed: AtomicBool,
}

impl SessionClock {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// One client's UDP session. Dropping it stops its reply relay and frees its slot.
struct UdpSession {
    upstream: Arc<UdpSocket>,
    clock: Arc<SessionClock>,
    counters: Arc<BackendCounters>,
    /// Owns the session's slot: the slot is freed the moment the relay ends (idle, or shed).
    relay: JoinHandle<()>,
}

impl Drop for UdpSession {
    fn drop(&mut self) {
        self.relay.abort();
    }
}

async fn udp_service_loop(
    socket: Arc<UdpSocket>,
    routes: Arc<ArcSwap<Routes>>,
    config: UserspaceL4Config,
) {
    let gate = config.conn_gate.listener();
    let mut sessions: HashMap<SocketAddr, UdpSession> = HashMap::new();
    let mut buf = vec![0u8; UDP_BUFFER];
    let sweep_every = (config.udp_idle_timeout / 2).max(Duration::from_millis(100));
    let mut sweep = tokio::time::interval(sweep_every);
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let (len, client) = match received {
                    Ok(v) => v,
                    Err(e) => {
                        debug!("UDP receive: {e}");
                        continue;
                    }
                };
                let live = sessions.get(&client).is_some_and(|s| !s.clock.closed.load(Relaxed));
                if !live {
                    let Some(slot) = make_room(&mut sessions, &gate, config.max_udp_sessions) else {
                        debug!(%client, "no room for a UDP session; datagram dropped");
                        continue;
                    };
                    match open_udp_session(&socket, client, &routes.load(), &config, slot.admit(true)).await {
                        Some(s) => {
                            sessions.insert(client, s);
                        }
                        None => continue,
                    }
                }
                let Some(session) = sessions.get(&client) else { continue };
                session.clock.touch();
                match session.upstream.send(&buf[..len]).await {
                    Ok(n) => {
                        session.counters.bytes_to_backend.fetch_add(n as u64, Relaxed);
                    }
                    Err(e) => debug!(%client, "UDP send to backend: {e}"),
                }
            }
            _ = sweep.tick() => sessions.retain(|_, s| !s.clock.closed.load(Relaxed)),
        }
    }
}

/// A slot for a new session. At the service's session cap, or when the process's connection
/// budget is spent, the least recently used session of this service is closed to make room
/// (once: if the budget is still spent by other listeners, the datagram is dropped).
fn make_room(
    sessions: &mut HashMap<SocketAddr, UdpSession>,
    gate: &ListenerGate,
    max_sessions: usize,
) -> Option<Slot> {
    for _ in 0..2 {
        if sessions.len() < max_sessions
            && let Some(slot) = gate.try_reserve()
        {
            return Some(slot);
        }
        sessions.retain(|_, s| !s.clock.closed.load(Relaxed));
        if sessions.len() < max_sessions
            && let Some(slot) = gate.try_reserve()
        {
            return Some(slot);
        }
        let lru = sessions
            .iter()
            .max_by_key(|(_, s)| s.clock.idle_for())
            .map(|(client, _)| *client)?;
        debug!(client = %lru, "UDP session table full; least recently used session closed");
        sessions.remove(&lru);
    }
    None
}

async fn open_udp_session(
    service: &Arc<UdpSocket>,
    client: SocketAddr,
    routes: &Routes,
    config: &UserspaceL4Config,
    slot: Admission,
) -> Option<UdpSession> {
    if !routes.admits(client) {
        return None;
    }
    let Some(index) = routes.pick(client) else {
        routes.counters.no_backend.fetch_add(1, Relaxed);
        return None;
    };
    let backend = &routes.backends[index];
    let local: SocketAddr = match backend.addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let upstream = match UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => {
            warn!(%client, "UDP upstream socket: {e}");
            return None;
        }
    };
    if let Err(e) = upstream.connect(backend.addr).await {
        backend.counters.connect_failures.fetch_add(1, Relaxed);
        debug!(%client, backend = %backend.id, "UDP connect: {e}");
        return None;
    }
    let upstream = Arc::new(upstream);
    let clock = Arc::new(SessionClock {
        start: Instant::now(),
        last: AtomicU64::new(0),
        closed: AtomicBool::new(false),
    });
    let active = ActiveGuard::new(&backend.counters);
    let relay = tokio::spawn(udp_reply_relay(
        upstream.clone(),
        service.clone(),
        client,
        clock.clone(),
        config.udp_idle_timeout,
        active,
        slot,
    ));
    debug!(%client, backend = %backend.id, "UDP session opened");
    Some(UdpSession {
        upstream,
        clock,
        counters: backend.counters.clone(),
        relay,
    })
}

thread_local! {
    /// The receive buffer of the reply relays on this thread: used only between two awaits, so
    /// a session costs no buffer of its own.
    static RELAY_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; UDP_BUFFER]);
}

/// Relays a session's replies to its client until the session has been idle long enough or
/// its slot is shed; the slot is freed as it returns.
async fn udp_reply_relay(
    upstream: Arc<UdpSocket>,
    service: Arc<UdpSocket>,
    client: SocketAddr,
    clock: Arc<SessionClock>,
    idle_timeout: Duration,
    active: ActiveGuard,
    slot: Admission,
) {
    let why = loop {
        let left = idle_timeout.saturating_sub(clock.idle_for());
        if left.is_zero() {
            break "idle";
        }
        tokio::select! {
            () = slot.shed() => break "shed: the connection limit is reached",
            ready = tokio::time::timeout(left, upstream.readable()) => match ready {
                // Re-check: the client may have sent something meanwhile.
                Err(_) => {}
                Ok(Ok(())) => relay_ready(&upstream, &service, client, &clock, &active),
                Ok(Err(e)) => debug!(%client, "UDP backend socket: {e}"),
            },
        }
    };
    clock.closed.store(true, Relaxed);
    debug!(%client, why, "UDP session closed");
}

/// Forwards the replies waiting on `upstream` (at most 64, then yields) to the client. A reply
/// the service socket cannot take at once is dropped, as a full network would.
fn relay_ready(
    upstream: &UdpSocket,
    service: &UdpSocket,
    client: SocketAddr,
    clock: &SessionClock,
    active: &ActiveGuard,
) {
    RELAY_BUFFER.with_borrow_mut(|buf| {
        for _ in 0..64 {
            let n = match upstream.try_recv(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP port unreachable from the backend surfaces here, once per datagram sent.
                Err(e) => {
                    debug!(%client, "UDP receive from backend: {e}");
                    return;
                }
            };
            clock.touch();
            match service.try_send_to(&buf[..n], client) {
                Ok(sent) => {
                    active.0.bytes_from_backend.fetch_add(sent as u64, Relaxed);
                }
                Err(e) => debug!(%client, "UDP send to client: {e}"),
            }
        }
    });
}
