//! Connection admission and hygiene, shared by every listener (HTTP, TLS, admin, userspace
//! TCP/UDP): what keeps one client from exhausting the process.
//!
//! - A [`ConnGate`] is a budget of connections (HAProxy's global `maxconn`); each listener takes
//!   from it through a [`ListenerGate`] with a cap of its own (a frontend's `maxconn`). At a cap a
//!   new connection waits up to the queue timeout for a slot, then is refused.
//! - At a cap, the oldest connection that has not yet sent a complete request is shed first
//!   (Envoy's overload manager): a flood of silent connections cannot keep a real client out.
//! - [`supervise`] closes a connection that sends no complete request within the request timeout,
//!   or stays idle (no request in flight, no byte either way) for the idle timeout.
//! - [`Guarded`] owns the slot for as long as the socket lives (also when it is handed over to a
//!   tunnel) and fails writes stalled longer than the send timeout (slow readers).
//! - [`raise_fd_limit`] and [`AcceptErrors`]: the descriptor limit raised at start, accept errors
//!   logged at most once a second.
use std::{
    collections::BTreeMap,
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{
            AtomicBool, AtomicU64, AtomicUsize,
            Ordering::{AcqRel, Relaxed, Release},
        },
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tracing::{debug, warn};

/// Limits and timeouts of connections, one set for the whole process.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// Connections open at once over every listener sharing a gate (HAProxy's global `maxconn`).
    pub max_connections: usize,
    /// Connections open at once on one listener (a frontend's `maxconn`).
    pub max_per_listener: usize,
    /// How long a connection over a cap waits for a slot before it is refused.
    pub queue_timeout: Duration,
    /// From accept to the first complete request head (TLS handshake included); HAProxy's
    /// `timeout http-request`.
    pub request_timeout: Duration,
    /// No request in flight and no byte either way for this long: closed (`timeout
    /// http-keep-alive`, or `timeout client` of a TCP service).
    pub idle_timeout: Duration,
    /// A write to the client that makes no progress for this long fails (a slow reader).
    pub send_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 10_000,
            max_per_listener: 10_000,
            queue_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
        }
    }
}

/// One connection's facts the gate and the supervisor read.
#[derive(Debug)]
pub struct ConnState {
    listener: u64,
    accepted: Instant,
    /// A complete request head arrived (or, for a tunnel, the connection was dispatched).
    requested: AtomicBool,
    in_flight: AtomicUsize,
    /// Milliseconds after `accepted` of the last byte either way.
    last_io: AtomicU64,
    shed: Notify,
}

impl ConnState {
    pub(crate) fn new(listener: u64) -> Self {
        ConnState {
            listener,
            accepted: Instant::now(),
            requested: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_io: AtomicU64::new(0),
            shed: Notify::new(),
        }
    }

    /// A request starts: the connection is no longer sheddable, nor idle until the guard drops.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.requested.store(true, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
        RequestGuard(self.clone())
    }

    fn touch(&self) {
        self.last_io
            .store(self.accepted.elapsed().as_millis() as u64, Relaxed);
    }

    /// Time since the last byte either way.
    pub(crate) fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_io.load(Relaxed));
        self.accepted.elapsed().saturating_sub(last)
    }

    /// Why the connection should be closed now, if it should.
    fn expired(&self, limits: &ConnLimits) -> Option<&'static str> {
        if !self.requested.load(Relaxed) {
            return (self.accepted.elapsed() >= limits.request_timeout)
                .then_some("no complete request within the request timeout");
        }
        let idle = self.in_flight.load(Relaxed) == 0 && self.idle_for() >= limits.idle_timeout;
        idle.then_some("idle timeout")
    }
}

/// A request in flight on a connection; dropped when it ends.
pub struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// The process's connection budget and the connections that may be shed.
#[derive(Debug)]
pub struct ConnGate {
    limits: ConnLimits,
    global: Arc<Semaphore>,
    /// Sheddable connections by age (admission order); entries of connections that have since
    /// sent a request are dropped lazily.
    waiting: Mutex<BTreeMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
}

impl ConnGate {
    /// A gate with these limits.
    pub fn new(limits: ConnLimits) -> Arc<Self> {
        Arc::new(ConnGate {
            global: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            waiting: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// The limits.
    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Connections open now through this gate.
    pub fn open_connections(&self) -> usize {
        self.limits.max_connections.max(1) - self.global.available_permits()
    }

    /// A gate for one listener, with the per-listener cap.
    pub fn listener(self: &Arc<Self>) -> ListenerGate {
        ListenerGate {
            gate: self.clone(),
            id: self.next_id.fetch_add(1, Relaxed),
            local: Arc::new(Semaphore::new(self.limits.max_per_listener.max(1))),
            refusing: false,
        }
    }

    /// Asks the oldest sheddable connection (of `listener`, or of any listener) to close.
    fn shed_oldest(&self, listener: Option<u64>) -> bool {
        let mut waiting = self
            .waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        waiting.retain(|_, c| !c.requested.load(Relaxed));
        let oldest = waiting
            .iter()
            .find(|(_, c)| listener.is_none_or(|l| c.listener == l))
            .map(|(id, _)| *id);
        let Some(state) = oldest.and_then(|id| waiting.remove(&id)) else {
            return false;
        };
        state.shed.notify_one();
        true
    }

    async fn acquire(
        &self,
        sem: &Arc<Semaphore>,
        listener: Option<u64>,
        wait: bool,
    ) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = sem.clone().try_acquire_owned() {
            return Some(permit);
        }
        if !self.shed_oldest(listener) && !wait {
            return None;
        }
        tokio::time::timeout(self.limits.queue_timeout, sem.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

/// One listener's share of a [`ConnGate`], owned by its accept loop; clones share the cap
/// (the accept loops of one address, one per proxy thread).
#[derive(Clone, Debug)]
pub struct ListenerGate {
    gate: Arc<ConnGate>,
    id: u64,
    local: Arc<Semaphore>,
    /// The last wait for a slot timed out: until one frees, connections are refused at once.
    refusing: bool,
}

impl ListenerGate {
    /// A slot for a connection just accepted. At a cap the oldest connection that has sent no
    /// request is shed, and the slot waited for up to the queue timeout (meanwhile the accept
    /// loop waits, and new connections wait in the kernel's backlog, as with HAProxy's
    /// `maxconn`); `None` when it did not come: the caller refuses the connection. Until a slot
    /// is free again there is no wait, so a saturated listener answers its backlog quickly.
    pub async fn reserve(&mut self) -> Option<Slot> {
        let wait = !self.refusing;
        let local = self.gate.acquire(&self.local, Some(self.id), wait).await;
        let slot = match local {
            Some(local) => self
                .gate
                .acquire(&self.gate.global, None, wait)
                .await
                .map(|global| Slot {
                    gate: self.gate.clone(),
                    listener: self.id,
                    permits: (local, global),
                }),
            None => None,
        };
        self.refusing = slot.is_none();
        slot
    }

    /// A slot now if one is free, without shedding or waiting (for UDP sessions, which make
    /// room themselves).
    pub fn try_reserve(&self) -> Option<Slot> {
        let local = self.local.clone().try_acquire_owned().ok()?;
        let global = self.gate.global.clone().try_acquire_owned().ok()?;
        Some(Slot {
            gate: self.gate.clone(),
            listener: self.id,
            permits: (local, global),
        })
    }

    /// The gate's limits.
    pub fn limits(&self) -> &ConnLimits {
        &self.gate.limits
    }
}

/// A reserved slot, before the connection is accepted.
#[derive(Debug)]
pub struct Slot {
    gate: Arc<ConnGate>,
    listener: u64,
    permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

impl Slot {
    /// Gives the slot to an accepted connection. `sheddable`: the connection may be shed until
    /// it sends a request (not for protocols where the server speaks first).
    pub fn admit(self, sheddable: bool) -> Admission {
        let state = Arc::new(ConnState::new(self.listener));
        let key = self.gate.next_id.fetch_add(1, Relaxed);
        if sheddable {
            let mut waiting = self
                .gate
                .waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            waiting.insert(key, state.clone());
        } else {
            state.requested.store(true, Relaxed);
        }
        Admission {
            state,
            gate: self.gate,
            key,
            _permits: self.permits,
        }
    }
}

/// An admitted connection's slot; freed when dropped.
#[derive(Debug)]
pub struct Admission {
    state: Arc<ConnState>,
    gate: Arc<ConnGate>,
    key: u64,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

impl Admission {
    /// The connection's state (for [`supervise`] and [`ConnState::request`]).
    pub fn state(&self) -> Arc<ConnState> {
        self.state.clone()
    }

    /// Resolves when the gate asks this connection to close to make room (only a sheddable
    /// one is ever asked); for holders of a slot that [`supervise`] does not watch.
    pub async fn shed(&self) {
        self.state.shed.notified().await;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if !self.state.requested.load(Relaxed) {
            let mut waiting = self
                .gate
                .waiting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            waiting.remove(&self.key);
        }
    }
}

/// Runs a connection's future until it ends, it is shed, or [`ConnLimits`]' request or idle
/// timeout expires (then the future, and with it the connection, is dropped). Each tick polls
/// the connection's future too (an idle HTTP/1 connection is parked then).
///
/// `conn` is pinned by the caller (`std::pin::pin!`): an async function that pinned it itself
/// would hold it twice, as its argument and as its pinned local, doubling every connection's
/// task.
pub async fn supervise(
    state: Arc<ConnState>,
    limits: &ConnLimits,
    mut conn: impl Future<Output = ()> + Unpin,
) {
    let tick = (limits.request_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shed = std::pin::pin!(state.shed.notified());
    let (watch, watch_waker) = Watch::new();
    let ended = std::future::poll_fn(|cx| {
        if Pin::new(&mut conn).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        if !watch.woke(cx) {
            return Poll::Pending;
        }
        let mut watch_cx = Context::from_waker(&watch_waker);
        if shed.as_mut().poll(&mut watch_cx).is_ready() {
            return Poll::Ready(Some(
                "shed: no request yet and the connection limit is reached",
            ));
        }
        // Polled until pending, so that the next tick wakes the watch.
        while ticks.poll_tick(&mut watch_cx).is_ready() {
            if let Some(why) = state.expired(limits) {
                return Poll::Ready(Some(why));
            }
        }
        Poll::Pending
    })
    .await;
    if let Some(why) = ended {
        debug!("connection closed: {why}");
    }
}

/// The waker the supervisor gives its tick and its shed notice, apart from the connection's:
/// a connection's task wakes several times per request (its socket, its backend's), and
/// polling the tick and the notice at each of those wakes cost about a twentieth of a
/// keep-alive request's user-space instructions. They are polled only after they woke it.
struct Watch {
    /// The tick or the notice woke the task since they were last polled (set at first, so
    /// that the first poll registers them).
    fired: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl Watch {
    fn new() -> (Arc<Watch>, std::task::Waker) {
        let watch = Arc::new(Watch {
            fired: AtomicBool::new(true),
            task: futures_util::task::AtomicWaker::new(),
        });
        let waker = std::task::Waker::from(watch.clone());
        (watch, waker)
    }

    /// Whether the tick or the notice woke the task since the last call; `cx`'s task is the
    /// one woken next time (registered before the flag is read: no wake is lost between).
    fn woke(&self, cx: &Context<'_>) -> bool {
        self.task.register(cx.waker());
        self.fired.swap(false, AcqRel)
    }
}

impl std::task::Wake for Watch {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Release);
        self.task.wake();
    }
}

/// A socket holding its [`Admission`]: records activity for the idle timeout and fails writes
/// that make no progress for the send timeout.
pub struct Guarded<S> {
    inner: S,
    admission: Admission,
    send_timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> Guarded<S> {
    /// Wraps `inner`, the socket `admission` was given for.
    pub fn new(inner: S, admission: Admission) -> Self {
        let send_timeout = admission.gate.limits.send_timeout;
        Guarded {
            inner,
            admission,
            send_timeout,
            stalled: None,
        }
    }

    /// The socket.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The connection's state.
    pub fn state(&self) -> Arc<ConnState> {
        self.admission.state()
    }

    /// After a write made no progress: fails once the stall lasted the send timeout.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let timeout = self.send_timeout;
        let stall = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "send timeout: the client does not read",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.admission.state.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Pending => self.check_stall(cx),
            ready => {
                self.stalled = None;
                self.admission.state.touch();
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.check_stall(cx),
            ready => {
                self.stalled = None;
                self.admission.state.touch();
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Raises the soft limit of open files to the hard limit; returns the limit now in effect.
pub fn raise_fd_limit() -> io::Result<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).map_err(io::Error::from)?;
    }
    Ok(getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX))
}

/// Connections the descriptor limit `nofile` allows: two descriptors each (client and backend),
/// after a reserve for listeners, health checks, Marathon and the admin API.
pub fn connections_for_fd_limit(nofile: u64) -> usize {
    const RESERVE: u64 = 256;
    (nofile.saturating_sub(RESERVE) / 2).clamp(16, 1_000_000) as usize
}

/// Rate limit of one listener's accept-error warnings: at most one a second, with the count of
/// those left out.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    last: Option<Instant>,
    suppressed: u64,
}

impl AcceptErrors {
    /// Logs `error` of `listener` unless one was logged less than a second ago.
    pub fn report(&mut self, listener: &dyn std::fmt::Display, error: &io::Error) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now - t < Duration::from_secs(1)) {
            self.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        warn!(%listener, %error, suppressed, "accept failed (same errors in the last second: suppressed)");
        self.last = Some(now);
    }
}
