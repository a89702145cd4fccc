//! Plain HTTP/1.1 keep-alive connections to backends, driven by the task of the request that
//! uses them.
//!
//! hyper's pooled client runs every backend connection in a task of its own: a request goes over
//! a channel to that task, and its response head and each body chunk come back over channels,
//! every crossing a wakeup and a scheduler pass. Here the client connection's task polls the
//! backend connection itself, while it waits for the response head and while it reads the body,
//! and gives it back to this worker's idle list when the body ends (HAProxy and Pingora likewise
//! run both sides of a request in one place). Upgrades, HTTP/2, TLS and tuned connect timeouts
//! keep using hyper's client.
//!
//! An idle connection is polled by nobody. At checkout it is polled once: a backend that closed
//! it is seen then (end of file) and it is dropped; a request that a reused connection could not
//! take (it was not sent) goes out on a new connection. A sweeper task drops connections idle
//! for [`IDLE_TIMEOUT`] or closed by their backend, so idle sockets never pile up.
use std::{
    collections::{HashMap, VecDeque},
    future::{Future as _, poll_fn},
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, header};
use hyper::body::{Body, Frame, SizeHint};
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Attempt, RetryBody, error_chain};

/// How long a backend connection may wait idle for its next request (as the pooled client).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per backend and worker; more are closed when their request ends.
const MAX_IDLE_PER_BACKEND: usize = 256;
/// How often the sweeper looks at the idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

type Sender = http1::SendRequest<RetryBody>;
type Driver = http1::Connection<TokioIo<TcpStream>, RetryBody>;

/// One worker's idle backend connections, by backend address.
pub(super) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    idle: Mutex<HashMap<SocketAddr, VecDeque<Idle>>>,
    /// A sweeper task is running (one at most; it ends when nothing is idle).
    sweeping: AtomicBool,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// A backend connection: the handle requests are sent on and the state machine doing its I/O.
/// Boxed from its opening to its end (the state machine is most of a KiB): moving it between
/// the idle list and a response body moves a pointer.
struct Conn {
    sender: Sender,
    driver: Driver,
}

impl Conn {
    /// Does the connection's pending I/O; `false` once it is over (closed by the backend,
    /// failed, or finished after `Connection: close`). It must not be polled after that.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        self.driver.poll_without_shutdown(cx).is_pending()
    }

    /// Whether it can take a request now: still open and waiting for one.
    fn ready_for_next(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop())) && self.sender.is_ready()
    }
}

/// A request's outcome on one connection.
enum Exchange {
    Answered(Response<BackendBody>),
    /// Not sent (the connection could not take it): it may go out on another connection.
    NotSent(Request<RetryBody>),
    Failed(String),
}

impl Pool {
    pub(super) fn new() -> Pool {
        Pool {
            inner: Arc::new(Inner {
                idle: Mutex::new(HashMap::new()),
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// Sends `req` (its URI in origin form) to `addr` on an idle connection, or on a new one
    /// made within `connect`.
    pub(super) async fn send(
        &self,
        addr: SocketAddr,
        connect: Duration,
        mut req: Request<RetryBody>,
    ) -> Result<Response<BackendBody>, Attempt> {
        while let Some(conn) = self.inner.checkout(addr) {
            match self.exchange(addr, conn, req).await {
                Exchange::Answered(response) => return Ok(response),
                Exchange::NotSent(back) => req = back,
                Exchange::Failed(e) => return Err(Attempt::Failed(e)),
            }
        }
        let conn = open(addr, connect).await?;
        match self.exchange(addr, conn, req).await {
            Exchange::Answered(response) => Ok(response),
            Exchange::NotSent(_) => Err(Attempt::Failed(
                "a new connection refused the request".into(),
            )),
            Exchange::Failed(e) => Err(Attempt::Failed(e)),
        }
    }

    /// Sends the request and drives the connection until the response head is in.
    async fn exchange(
        &self,
        addr: SocketAddr,
        mut conn: Box<Conn>,
        req: Request<RetryBody>,
    ) -> Exchange {
        let mut sent = pin!(conn.sender.try_send_request(req));
        let mut driving = true;
        let answer = poll_fn(|cx| {
            if driving {
                driving = conn.drive(cx);
            }
            sent.as_mut().poll(cx)
        })
        .await;
        match answer {
            Ok(response) => {
                let lease = Lease {
                    conn,
                    driving,
                    pool: Arc::downgrade(&self.inner),
                    addr,
                };
                Exchange::Answered(response.map(|incoming| BackendBody {
                    incoming,
                    lease: Some(lease),
                }))
            }
            Err(mut e) => match e.take_message() {
                Some(req) => Exchange::NotSent(req),
                None => Exchange::Failed(error_chain(e.error())),
            },
        }
    }
}

/// A new connection to `addr` (a failure here is a connect failure: redispatched).
async fn open(addr: SocketAddr, connect: Duration) -> Result<Box<Conn>, Attempt> {
    let failed = |e: &dyn std::fmt::Display| Attempt::Connect(e.to_string());
    let tcp = tokio::time::timeout(connect, TcpStream::connect(addr))
        .await
        .map_err(|_| failed(&"connect timeout"))?
        .map_err(|e| failed(&e))?;
    let _ = tcp.set_nodelay(true);
    let (sender, driver) = http1::Builder::new()
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| Attempt::Connect(error_chain(&e)))?;
    Ok(Box::new(Conn { sender, driver }))
}

impl Inner {
    /// The most recently used idle connection to `addr` that can take a request.
    fn checkout(&self, addr: SocketAddr) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(&addr)?;
        while let Some(mut entry) = list.pop_back() {
            if entry.since.elapsed() >= IDLE_TIMEOUT {
                // The rest are older still.
                list.clear();
            } else if entry.conn.ready_for_next() {
                return Some(entry.conn);
            }
        }
        None
    }

    fn checkin(self: &Arc<Self>, addr: SocketAddr, conn: Box<Conn>) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.entry(addr).or_default();
        if list.len() >= MAX_IDLE_PER_BACKEND {
            return;
        }
        list.push_back(Idle {
            conn,
            since: Instant::now(),
        });
        drop(idle);
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            self.start_sweeper();
        }
    }

    fn start_sweeper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sweeping.store(false, Ordering::Release);
            return;
        };
        let pool = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let Some(pool) = pool.upgrade() else { return };
                if pool.sweep() == 0 {
                    pool.sweeping.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }

    /// Drops expired and closed idle connections; how many stay.
    fn sweep(&self) -> usize {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|_, list| {
            list.retain_mut(|e| e.since.elapsed() < IDLE_TIMEOUT && e.conn.ready_for_next());
            !list.is_empty()
        });
        idle.values().map(VecDeque::len).sum()
    }
}

/// A checked-out connection, held by the response body it is reading.
struct Lease {
    conn: Box<Conn>,
    /// The connection is not over yet.
    driving: bool,
    pool: Weak<Inner>,
    addr: SocketAddr,
}

/// A backend response body. On a driven connection, reading it drives the connection, and
/// the connection goes back to the idle list once the body has been read to its end.
pub(crate) struct BackendBody {
    incoming: Incoming,
    lease: Option<Lease>,
}

impl BackendBody {
    /// A body whose connection runs in a task of its own (hyper's client).
    pub(crate) fn spawned(incoming: Incoming) -> BackendBody {
        BackendBody {
            incoming,
            lease: None,
        }
    }

    fn release(&mut self) {
        let Some(mut lease) = self.lease.take() else {
            return;
        };
        if lease.driving
            && lease.conn.ready_for_next()
            && let Some(pool) = lease.pool.upgrade()
        {
            pool.checkin(lease.addr, lease.conn);
        }
    }
}

impl Body for BackendBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let mut polled = Pin::new(&mut this.incoming).poll_frame(cx);
        // The connection is driven when the body waits on it, right after the body asked for
        // more: the frame it then reads is taken in this same poll, not after another pass.
        if polled.is_pending()
            && let Some(lease) = &mut this.lease
            && lease.driving
        {
            lease.driving = lease.conn.drive(cx);
            polled = Pin::new(&mut this.incoming).poll_frame(cx);
        }
        match &polled {
            Poll::Ready(None) => this.release(),
            // A broken body leaves the connection in no state to reuse.
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

/// A body read to its end (or empty, never polled) gives its connection back; one dropped
/// halfway closes it (the rest of the body would be in the way of the next response).
impl Drop for BackendBody {
    fn drop(&mut self) {
        if self.incoming.is_end_stream() {
            self.release();
        }
    }
}

/// Puts a request into the shape a bare HTTP/1.1 connection sends: a `Host` header (an HTTP/1.0
/// client may have sent none: the backend's authority then) and the origin-form target.
pub(super) fn origin_form(req: &mut Request<RetryBody>) -> Result<(), Attempt> {
    if !req.headers().contains_key(header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(host) = authority.as_str().parse()
    {
        req.headers_mut().insert(header::HOST, host);
    }
    let origin = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    *req.uri_mut() = origin
        .parse()
        .map_err(|e| Attempt::Failed(format!("request target: {e}")))?;
    Ok(())
}
