//! Listening sockets and connections: accepting, TLS (or passthrough) on the TLS frontends, and
//! serving HTTP/1.1 and HTTP/2 on each connection.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use bytes::{Buf as _, Bytes};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{Notify, OwnedSemaphorePermit},
};
use tracing::{Instrument as _, debug, debug_span, info};

use crate::overload::{AcceptErrors, ConnState, Guarded, ListenerGate, supervise};

use super::{
    ProxyError, Shared,
    balance::InFlightGuard,
    maxconn::Limits,
    proxy_protocol,
    serve::serve_http,
    sni::{Hello, read_client_hello},
    tunnel,
    upstream::Forwarded,
};

/// Which frontend a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Frontend {
    /// `:80`: Host routing.
    Http,
    /// `:443`: TLS (or passthrough), then Host routing.
    Https,
    /// `:9091`: `X-Marathon-App-Id` routing.
    AppId,
    /// A service port.
    ServicePort(u16),
}

impl std::fmt::Display for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Frontend::Http => f.write_str("http"),
            Frontend::Https => f.write_str("https"),
            Frontend::AppId => f.write_str("app-id"),
            Frontend::ServicePort(p) => write!(f, "service port {p}"),
        }
    }
}

/// A connection's facts the request handler needs.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    pub(crate) frontend: Frontend,
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) tls: bool,
    /// SNI of the TLS handshake (lowercase).
    pub(crate) sni: Option<String>,
    /// Activity of the connection (requests in flight), for its supervisor.
    pub(crate) conn: Arc<ConnState>,
    /// Its `X-Forwarded-*` values.
    pub(crate) forwarded: Forwarded,
}

impl ConnInfo {
    pub(crate) fn new(
        frontend: Frontend,
        peer: SocketAddr,
        local: SocketAddr,
        conn: Arc<ConnState>,
    ) -> Self {
        ConnInfo {
            frontend,
            peer,
            local,
            tls: false,
            sni: None,
            conn,
            forwarded: Forwarded::new(peer, false, local.port()),
        }
    }

    /// The client's address, as a PROXY protocol header gave it.
    fn set_peer(&mut self, peer: SocketAddr) {
        self.peer = peer;
        self.forwarded = Forwarded::new(peer, self.tls, self.local.port());
    }

    /// The connection turned out to be TLS, for server name `sni`.
    fn set_tls(&mut self, sni: Option<String>) {
        self.tls = true;
        self.sni = sni;
        self.forwarded = Forwarded::new(self.peer, true, self.local.port());
    }
}

/// One listening address: an accept loop on each worker, all stopped to close it.
pub(crate) struct Listening(Arc<Stop>);

impl Listening {
    fn close(self) {
        self.0.stop();
    }
}

/// Stops the accept loops of a listener, whether they have started yet or not (see [`Pending`]).
#[derive(Default)]
pub(crate) struct Stop {
    stopped: AtomicBool,
    notify: Notify,
}

impl Stop {
    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    async fn stopped(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read: a stop in between is not missed.
        notified.as_mut().enable();
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

/// Runs `work` until `stop` says stop (then drops it, as an abort would).
async fn until_stopped(stop: Arc<Stop>, work: impl Future<Output = ()>) {
    tokio::select! {
        biased;
        () = stop.stopped() => {}
        () = work => {}
    }
}

/// What an accept loop is made of, until it starts on its worker (made there, its future is
/// the task's own state: no second allocation for each listener on each worker).
struct AcceptLoop {
    listener: TcpListener,
    shared: Arc<Shared>,
    frontend: Frontend,
    gate: ListenerGate,
    frontend_limit: Arc<Limits<()>>,
    stop: Arc<Stop>,
}

impl AcceptLoop {
    fn spawn(self) {
        let accept = accept_loop(
            self.listener,
            self.shared,
            self.frontend,
            self.gate,
            self.frontend_limit,
        );
        tokio::spawn(until_stopped(self.stop, accept));
    }
}

/// Accept loops bound but not started yet, by worker. Spawning each on its worker from here
/// wakes that worker's thread each time: at 10,000 service ports that cost more than binding
/// them. So they are handed over together, one task per worker, which spawns them there.
#[derive(Default)]
pub(crate) struct Pending(Vec<Vec<AcceptLoop>>);

impl Pending {
    fn push(&mut self, worker: usize, accept_loop: AcceptLoop) {
        if self.0.len() <= worker {
            self.0.resize_with(worker + 1, Vec::new);
        }
        self.0[worker].push(accept_loop);
    }

    /// Starts every pending accept loop on its worker.
    fn start(&mut self, shared: &Shared) {
        for (worker, loops) in self.0.iter_mut().enumerate() {
            if loops.is_empty() {
                continue;
            }
            let loops = std::mem::take(loops);
            shared.workers[worker].spawn(async move {
                for accept_loop in loops {
                    accept_loop.spawn();
                }
            });
        }
    }
}

/// The open listeners.
#[derive(Default)]
pub(crate) struct ListenerSet {
    fixed: HashMap<Frontend, (SocketAddr, Listening)>,
    services: HashMap<SocketAddr, Listening>,
    /// Service-port addresses wanted but not bound, with the app wanting each.
    failed: BTreeMap<SocketAddr, String>,
    /// Set by [`ListenerSet::close_all`]: nothing is opened any more.
    closed: bool,
    /// Accept loops of listeners opened since the last [`ListenerSet::start_pending`].
    pending: Pending,
}

impl ListenerSet {
    pub(crate) fn open_fixed(
        &mut self,
        shared: &Arc<Shared>,
        addr: SocketAddr,
        frontend: Frontend,
    ) -> Result<(), ProxyError> {
        let (local, listening) =
            listen(shared, addr, frontend, &mut self.pending).map_err(|source| {
                ProxyError::Bind {
                    frontend: frontend.to_string(),
                    addr,
                    source,
                }
            })?;
        self.pending.start(shared);
        info!(%frontend, addr = %local, "listening");
        self.fixed.insert(frontend, (local, listening));
        Ok(())
    }

    pub(crate) fn fixed_addr(&self, frontend: Frontend) -> Option<SocketAddr> {
        self.fixed.get(&frontend).map(|(a, _)| *a)
    }

    pub(crate) fn service_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs: Vec<SocketAddr> = self.services.keys().copied().collect();
        addrs.sort();
        addrs
    }

    /// Moves the listener of one service port: from `old`, the address it was wanted on (if
    /// any), to `new`, the address and app wanting it now (if any). The listener of an address
    /// no longer wanted is closed (its open connections keep running); one newly wanted is
    /// opened, and if that fails, the address is retried by [`ListenerSet::retry_failed`].
    pub(crate) fn update_service_port(
        &mut self,
        shared: &Arc<Shared>,
        old: Option<SocketAddr>,
        new: Option<(SocketAddr, &str)>,
    ) -> Option<ProxyError> {
        if let Some(old) = old
            && new.map(|(addr, _)| addr) != Some(old)
        {
            self.failed.remove(&old);
            if let Some(listening) = self.services.remove(&old) {
                info!(addr = %old, "service port removed; listener closed");
                listening.close();
            }
        }
        let (addr, app_id) = new?;
        if self.services.contains_key(&addr) {
            return None;
        }
        self.open_service(shared, addr, app_id).err()
    }

    /// Tries again to open the service-port listeners that could not be opened, except those
    /// on `skip` ports (just tried); returns the errors of those that still cannot.
    pub(crate) fn retry_failed(
        &mut self,
        shared: &Arc<Shared>,
        skip: &HashSet<u16>,
    ) -> Vec<ProxyError> {
        let retry: Vec<(SocketAddr, String)> = self
            .failed
            .iter()
            .filter(|(addr, _)| !skip.contains(&addr.port()))
            .map(|(addr, app)| (*addr, app.clone()))
            .collect();
        retry
            .into_iter()
            .filter_map(|(addr, app_id)| self.open_service(shared, addr, &app_id).err())
            .collect()
    }

    fn open_service(
        &mut self,
        shared: &Arc<Shared>,
        addr: SocketAddr,
        app_id: &str,
    ) -> Result<(), ProxyError> {
        let frontend = Frontend::ServicePort(addr.port());
        if self.closed {
            return Ok(());
        }
        match listen(shared, addr, frontend, &mut self.pending) {
            Ok((_, listening)) => {
                // Debug: one line per service port costs more than its bind at 10,000 apps.
                debug!(%frontend, %addr, "listening");
                self.services.insert(addr, listening);
                self.failed.remove(&addr);
                Ok(())
            }
            Err(source) => {
                self.failed.insert(addr, app_id.to_owned());
                Err(ProxyError::Bind {
                    frontend: format!("app {app_id} {frontend}"),
                    addr,
                    source,
                })
            }
        }
    }
}

impl ListenerSet {
    /// Starts the accept loops of the listeners opened since the last call: call it after a
    /// batch of [`ListenerSet::update_service_port`] and [`ListenerSet::retry_failed`].
    pub(crate) fn start_pending(&mut self, shared: &Shared) {
        self.pending.start(shared);
    }

    /// Closes every listener and opens none afterwards (mlb is stopping).
    pub(crate) fn close_all(&mut self) {
        self.closed = true;
        self.failed.clear();
        // Never started: dropping them closes their sockets.
        self.pending = Pending::default();
        for (_, (_, listening)) in self.fixed.drain() {
            listening.close();
        }
        for (_, listening) in self.services.drain() {
            listening.close();
        }
    }
}

impl Drop for ListenerSet {
    fn drop(&mut self) {
        self.close_all();
    }
}

/// Listens on `addr` with an accept loop on each worker (left in `pending`), all under one
/// per-listener connection cap; returns the address bound (its port, when `addr` had port 0).
fn listen(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    frontend: Frontend,
    pending: &mut Pending,
) -> std::io::Result<(SocketAddr, Listening)> {
    let reuse_port = shared.workers.len() > 1;
    let mut local = addr;
    let mut listeners = Vec::with_capacity(shared.workers.len());
    for worker in &shared.workers {
        // Registered with the worker's own reactor; the first socket fixes a port 0.
        let _runtime = worker.enter();
        let listener = bind(local, reuse_port)?;
        local = listener.local_addr()?;
        listeners.push(listener);
    }
    let gate = shared.config.conn_gate.listener();
    // The service's own frontend `maxconn` (service ports only), one for all workers' loops.
    let frontend_limit = Arc::new(Limits::<()>::new());
    let stop = Arc::new(Stop::default());
    for (worker, listener) in listeners.into_iter().enumerate() {
        let accept_loop = AcceptLoop {
            listener,
            shared: shared.clone(),
            frontend,
            gate: gate.clone(),
            frontend_limit: frontend_limit.clone(),
            stop: stop.clone(),
        };
        pending.push(worker, accept_loop);
    }
    Ok((local, Listening(stop)))
}

/// A listening socket; with `reuse_port`, one of several on the address (one per worker).
fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    // Accepted sockets inherit both options (one syscall less per connection for no-delay).
    // Every client of these ports speaks first (HTTP, TLS) and is answered at once: the answer
    // carries the ACK of the request, so none is sent on its own (HAProxy's
    // `tcp-smart-accept`, automatic on its HTTP and TLS binds); set after `listen`, which
    // resets it.
    let options = socket2::SockRef::from(&listener);
    options.set_tcp_nodelay(true)?;
    options.set_tcp_quickack(false)?;
    Ok(listener)
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    frontend: Frontend,
    mut gate: ListenerGate,
    frontend_limit: Arc<Limits<()>>,
) {
    let mut errors = AcceptErrors::default();
    // The futures of the waits other than `accept` are boxed, made only while waited on: this
    // loop's state is kept, for every listener on every worker, for as long as it listens (at
    // 10,000 service ports × 2 workers, each byte of it is 20 kB), and inline it is as large
    // as the largest wait it can be in.
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                errors.report(&frontend, &e);
                Box::pin(tokio::time::sleep(std::time::Duration::from_millis(50))).await;
                continue;
            }
        };
        let Some(slot) = Box::pin(gate.reserve()).await else {
            debug!(%frontend, client.addr = %peer, "connection limit reached; refused");
            tokio::spawn(refuse(stream, frontend));
            continue;
        };
        let local = stream.local_addr().unwrap_or_else(|_| {
            listener
                .local_addr()
                .expect("a bound listener has an address")
        });
        let admission = slot.admit(true);
        let conn = admission.state();
        let stream = Guarded::new(stream, admission);
        let span = debug_span!("conn", client.addr = %peer, %frontend);
        let info = Box::new(ConnInfo::new(frontend, peer, local, conn));
        let task = connection(shared.clone(), frontend_limit.clone(), stream, info);
        tokio::spawn(task.instrument(span));
    }
}

/// One accepted connection's task, for its whole life: a slot under its frontend's `maxconn`,
/// then the connection served under its supervisor.
async fn connection(
    shared: Arc<Shared>,
    frontend_limit: Arc<Limits<()>>,
    stream: Guarded<TcpStream>,
    info: Box<ConnInfo>,
) {
    let frontend = info.frontend;
    let Ok(_slot) = frontend_slot(&shared, frontend, &frontend_limit).await else {
        debug!(%frontend, "frontend maxconn reached for the queue timeout; closed");
        return;
    };
    let conn = info.conn.clone();
    let supervisor = shared.clone();
    let served = std::pin::pin!(serve_connection(shared, stream, info));
    supervise(conn, supervisor.config.conn_gate.limits(), served).await;
}

/// A slot under the service's frontend `maxconn`, waiting up to the queue timeout: `Err` when
/// none came free. `Ok(None)`: no limit applies.
async fn frontend_slot(
    shared: &Shared,
    frontend: Frontend,
    limit: &Limits<()>,
) -> Result<Option<OwnedSemaphorePermit>, ()> {
    let Frontend::ServicePort(port) = frontend else {
        return Ok(None);
    };
    let max = shared
        .table
        .load()
        .lookup_port(port)
        .and_then(|svc| svc.spec.tuning.maxconn_frontend)
        .filter(|max| *max > 0);
    let Some(max) = max else { return Ok(None) };
    let wait = shared.config.conn_gate.limits().queue_timeout;
    limit.acquire(&(), max, wait).await.map(Some).ok_or(())
}

/// The overload answer: a 503 on the plain HTTP frontends, a bare close elsewhere (a TLS
/// client would not understand a plain-text answer). The request is drained for a moment
/// after the answer: closing with unread bytes would reset the connection and lose the 503.
async fn refuse(mut stream: TcpStream, frontend: Frontend) {
    if !matches!(frontend, Frontend::Http | Frontend::AppId) {
        return;
    }
    let answer = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\nretry-after: 1\r\n\r\n";
    let exchange = async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(std::time::Duration::from_millis(500), exchange).await;
}

/// `info` is boxed: an async fn keeps room for each of its arguments for its whole life, even
/// once moved out, and the connection's information (224 bytes) went down two levels, each
/// keeping a copy's room in every open connection's task.
async fn serve_connection(
    shared: Arc<Shared>,
    mut stream: Guarded<TcpStream>,
    mut info: Box<ConnInfo>,
) {
    if shared.config.accept_proxy {
        let header = proxy_protocol::read(&mut stream);
        match tokio::time::timeout(shared.config.timeouts.client, header).await {
            Ok(Ok(Some(client))) => info.set_peer(client),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "PROXY protocol header refused; closing");
                return;
            }
            Err(_) => {
                debug!("no PROXY protocol header in time; closing");
                return;
            }
        }
    }
    if let Frontend::ServicePort(port) = info.frontend {
        let table = shared.table.load_full();
        if let Some(svc) = table.lookup_port(port).filter(|s| s.spec.tls_passthrough) {
            // A passthrough service's own port forwards TLS untouched too.
            let tunnel = Box::pin(passthrough(
                &shared,
                svc,
                stream,
                Vec::new(),
                &info,
                "(service port)",
            ));
            tunnel.await;
            return;
        }
    }
    let tcp_tls = tcp_tls_service(&shared, info.frontend);
    let tls_config = match info.frontend {
        Frontend::Https => Some(shared.certs.vhost_config()),
        Frontend::ServicePort(port) => shared.certs.port_config(port),
        Frontend::Http | Frontend::AppId => None,
    };
    match tls_config {
        // A connection task is as large as its largest state for its whole life, idle or
        // not: the handshake's and the tunnels' states are boxed, so that plain connections,
        // the most numerous, do not carry their room, and freed once the handshake is done,
        // so that an idle TLS connection does not keep them either (7 KiB each). The box is
        // awaited from a local: a future made in an awaited expression keeps its room in the
        // task (temporaries live to the end of their statement).
        Some(config) => {
            let accept = Box::pin(accept_tls(&shared, stream, &mut info, config, tcp_tls));
            let Some(tls) = accept.await else {
                return;
            };
            serve_http(shared, tls, info).await;
        }
        // Boxed too: every level of the HTTP serving functions keeps its own room for the
        // stream (144 bytes), a pointer's here; 544 bytes off every connection's task.
        None => serve_http(shared, Box::new(Prefixed::new(Vec::new(), stream)), info).await,
    }
}

/// A TLS stream served as HTTP. Boxed: the TLS stream (rustls' state, about a KiB) is moved
/// down through the serving functions, each of which would otherwise keep a copy's room.
type HttpOverTls = Box<tokio_rustls::server::TlsStream<Prefixed<Guarded<TcpStream>>>>;

/// A connection to a TLS frontend: passthrough by SNI, or the handshake; then the TLS stream
/// to serve as HTTP, or plain TCP to the backend (served here) for a tcp-mode service with a
/// certificate. `None`: nothing left to serve.
async fn accept_tls(
    shared: &Arc<Shared>,
    mut stream: Guarded<TcpStream>,
    info: &mut ConnInfo,
    tls_config: Arc<rustls::ServerConfig>,
    tcp_tls: Option<Arc<super::router::Service>>,
) -> Option<HttpOverTls> {
    // Plain TCP inside: no HTTP version to negotiate.
    let tls_config = if tcp_tls.is_some() && !tls_config.alpn_protocols.is_empty() {
        let mut plain = (*tls_config).clone();
        plain.alpn_protocols.clear();
        Arc::new(plain)
    } else {
        tls_config
    };
    let mut replay = Vec::new();
    if info.frontend == Frontend::Https && shared.table.load().has_passthrough() {
        match read_client_hello(&mut stream, shared.config.timeouts.client).await {
            Ok((Hello::Sni(name), bytes)) => {
                let table = shared.table.load_full();
                if let Some(svc) = table.lookup_passthrough(&name) {
                    passthrough(shared, svc, stream, bytes, info, &name).await;
                    return None;
                }
                replay = bytes;
            }
            Ok((Hello::NoSni, bytes)) => replay = bytes,
            Err(e) => {
                debug!(error = %e, "no ClientHello");
                return None;
            }
        }
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    let handshake = acceptor.accept(Prefixed::new(replay, stream));
    let tls = match tokio::time::timeout(shared.config.timeouts.client, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            return None;
        }
    };
    info.set_tls(tls.get_ref().1.server_name().map(str::to_ascii_lowercase));
    match tcp_tls {
        Some(svc) => {
            splice_to_backend(shared, &svc, tls, info, "(TLS over tcp)").await;
            None
        }
        None => Some(Box::new(tls)),
    }
}

/// The service of a service port in tcp mode with a certificate, if `frontend` is one.
fn tcp_tls_service(shared: &Shared, frontend: Frontend) -> Option<Arc<super::router::Service>> {
    let Frontend::ServicePort(port) = frontend else {
        return None;
    };
    let table = shared.table.load();
    table.lookup_port(port).filter(|s| s.spec.tcp_tls).cloned()
}

/// Splices a TLS connection to a passthrough service's backend, replaying the ClientHello.
async fn passthrough(
    shared: &Arc<Shared>,
    svc: &Arc<super::router::Service>,
    client: Guarded<TcpStream>,
    hello: Vec<u8>,
    info: &ConnInfo,
    sni: &str,
) {
    splice_to_backend(shared, svc, Prefixed::new(hello, client), info, sni).await;
}

/// Splices `client` to one of the service's backends (the next on a connect failure), with
/// the service's connect and tunnel timeouts.
async fn splice_to_backend<S>(
    shared: &Arc<Shared>,
    svc: &Arc<super::router::Service>,
    client: S,
    info: &ConnInfo,
    sni: &str,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !svc.spec.allows(info.peer.ip()) {
        // `BACKEND_NETWORK_ALLOWED_ACL`: closed, as HAProxy's `tcp-request content reject`.
        debug!(client = %info.peer, sni, "client not in the service's allow-list; closed");
        return;
    }
    // Dispatched: no longer sheddable, and never idle for the supervisor (the tunnel has its
    // own idle timeout).
    let _busy = info.conn.request();
    let unhealthy = shared.health.borrow().clone();
    let is_unhealthy = |id: &crate::model::BackendId| unhealthy.contains(id);
    let mut tried = Vec::new();
    while tried.len() <= 3 {
        let Some(backend) = svc.selector.pick(info.peer.ip(), &is_unhealthy, &tried) else {
            break;
        };
        let addr = backend.backend.addr;
        let connect = TcpStream::connect(addr);
        let timeouts = &svc.spec.tuning.timeouts;
        let connect_timeout = timeouts.connect.unwrap_or(shared.config.timeouts.connect);
        match tokio::time::timeout(connect_timeout, connect).await {
            Ok(Ok(upstream)) => {
                let _ = upstream.set_nodelay(true);
                debug!(sni, backend = %backend.backend.id, "TLS passthrough");
                let _guard = InFlightGuard::new(backend.stats().clone());
                let idle = timeouts.tunnel.unwrap_or(shared.config.timeouts.tunnel);
                tunnel::splice(client, upstream, idle).await;
                return;
            }
            _ => tried.push(backend.backend.id.clone()),
        }
    }
    debug!(sni, "TLS passthrough: no backend reachable; closing");
}

/// `timeout client` of the connection: the service's own on its service port, else the
/// global one (a vhost frontend serves many services).
pub(crate) fn client_timeout(shared: &Shared, frontend: Frontend) -> std::time::Duration {
    let own = match frontend {
        Frontend::ServicePort(port) => {
            let table = shared.table.load();
            table
                .lookup_port(port)
                .and_then(|svc| svc.spec.tuning.timeouts.client)
        }
        _ => None,
    };
    own.unwrap_or(shared.config.timeouts.client)
}

/// A stream that first yields bytes already read from it (a peeked ClientHello, an HTTP/2
/// preface, the bytes hyper read but did not use before a connection was parked).
pub(crate) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(crate) fn new(prefix: impl Into<Bytes>, inner: S) -> Self {
        Prefixed {
            prefix: prefix.into(),
            inner,
        }
    }

    /// The stream; bytes of the prefix not yet read are dropped with it.
    pub(crate) fn into_inner(self) -> S {
        self.inner
    }

    pub(crate) fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = buf.remaining().min(self.prefix.len());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Not kept for the connection's life: it may share a whole read buffer.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an `async fn` of five arguments returns, from the fn alone.
    fn state_size<A, B, C, D, E, F: Future>(_: fn(A, B, C, D, E) -> F) -> usize {
        size_of::<F>()
    }

    /// What the listener sets, every accepted connection has, without a syscall of its own:
    /// responses are not held back (no-delay), and a request's ACK waits for the response.
    #[tokio::test]
    async fn accepted_connections_inherit_no_delay_and_delayed_acks() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
        assert!(!socket2::SockRef::from(&accepted).tcp_quickack().unwrap());
    }

    /// Every listener keeps an accept loop per worker for as long as it listens: its state is
    /// resident memory times 20,000 at 10,000 service ports (see `accept_loop`).
    #[test]
    fn an_idle_accept_loop_is_small() {
        let size = state_size(accept_loop);
        println!("accept loop state: {size} bytes");
        assert!(size <= 512, "accept loop state: {size} bytes");
    }

    /// The size of the future an `async fn` of three arguments returns, from the fn alone.
    fn state_size_3<A, B, C, F: Future>(_: fn(A, B, C) -> F) -> usize {
        size_of::<F>()
    }

    /// The size of the future an `async fn` of four arguments returns, from the fn alone.
    fn state_size_4<A, B, C, D, F: Future>(_: fn(A, B, C, D) -> F) -> usize {
        size_of::<F>()
    }

    /// Every open connection keeps its task's state, idle or not: 10,000 connections keep 10,000
    /// of them. The stream goes to the HTTP serving functions boxed (each level would keep its
    /// own room for it), and so does the connection's information (each level keeps room for
    /// its arguments); the TLS states are boxed and gone once the handshake is done.
    #[test]
    fn a_connection_state_is_small() {
        let size = state_size_3(serve_connection);
        println!("connection state: {size} bytes");
        assert!(size <= 960, "connection state: {size} bytes");
        let task = state_size_4(connection);
        println!("connection task state: {task} bytes");
        assert!(task <= 1408, "connection task state: {task} bytes");
    }
}
