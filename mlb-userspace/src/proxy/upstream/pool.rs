//! Idle keep-alive connections to plain-HTTP/1.1 backends, one pool per worker thread.
//!
//! Reuse is LIFO: the connection used last is the warmest and the least likely to have hit the
//! backend's own keep-alive timeout. The pool is bounded per backend and in total, and a
//! connection idle for [`IDLE_TIMEOUT`] is closed by a reaper that runs only while the pool
//! holds connections. Past [`KEPT_PER_BACKEND`], a backend's connections are a burst's surplus
//! (HTTP/2 clients multiplex hundreds of streams, each holding a backend connection while in
//! flight): kept while used, purged soon after they stop being used, as HAProxy's
//! `pool-purge-delay` does. A connection the backend closed while idle is found before reuse: its
//! socket reads as ready (end of stream or stray data) without a system call.
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
    time::Duration,
};

use bytes::BytesMut;
use tokio::{net::TcpStream, time::Instant};

/// How long a backend connection may wait in the pool (hyper's pool had the same).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections per backend address kept until [`IDLE_TIMEOUT`] whether used or not.
const KEPT_PER_BACKEND: usize = 256;
/// Idle connections per backend address at most: past it the oldest is closed. Room for the
/// streams in flight of HTTP/2 clients on one worker (`h2load -c32 -m10`: 320); with the old
/// bound of 256 such a load reconnected to its backend for 4 % of its requests.
const MAX_IDLE_PER_BACKEND: usize = 1024;
/// How long a backend's connections past [`KEPT_PER_BACKEND`] may go unused before the reaper
/// closes half of them, and every [`PURGE_DELAY`] half of the rest (HAProxy's
/// `pool-purge-delay`, its default too): halving, so that a burst that comes back soon finds
/// some of its connections.
const PURGE_DELAY: Duration = Duration::from_secs(5);
/// Idle connections kept by one pool (one worker) over all backends.
const MAX_IDLE: usize = 4096;
/// Idle connections that keep their read buffer (8 KiB each, about 2 MiB per worker at
/// most); past them, a connection's next response gets a new buffer.
const KEPT_BUFFERS: usize = 256;

/// One worker's idle backend connections.
pub(crate) struct Pool {
    inner: Mutex<Inner>,
    idle_timeout: Duration,
}

#[derive(Default)]
struct Inner {
    /// Per backend address, oldest first. foldhash, not SipHash: two look-ups per request,
    /// keyed by backend addresses from Marathon, never by clients.
    idle: HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>,
    total: usize,
    /// Whether a reaper task is running for this pool.
    reaping: bool,
}

struct Idle {
    stream: TcpStream,
    /// The read buffer of the last response, its unread part empty: reused, it saves the
    /// largest allocation of a keep-alive request (and its free). Empty (unallocated) past
    /// [`KEPT_BUFFERS`].
    buf: BytesMut,
    since: Instant,
}

impl Pool {
    pub(crate) fn new(idle_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            inner: Mutex::new(Inner::default()),
            idle_timeout,
        })
    }

    /// The most recently returned connection to `addr` that is still open, if any.
    /// An idle connection to `addr`, with its read buffer (empty, maybe unallocated).
    pub(crate) fn checkout(&self, addr: SocketAddr) -> Option<(TcpStream, BytesMut)> {
        let mut inner = self.lock();
        let list = inner.idle.get_mut(&addr)?;
        let mut found = None;
        let mut taken = 0;
        while let Some(idle) = list.pop() {
            taken += 1;
            if idle.since.elapsed() < self.idle_timeout && open(&idle.stream) {
                found = Some((idle.stream, idle.buf));
                break;
            }
        }
        if list.is_empty() {
            inner.idle.remove(&addr);
        }
        inner.total -= taken;
        found
    }

    /// Puts a connection whose last response was read to its end back for reuse.
    /// Keeps `stream` for the next request to `addr`, and `buf` (its read buffer, nothing
    /// unread in it) with it while few connections are idle.
    pub(crate) fn checkin(self: &Arc<Self>, addr: SocketAddr, stream: TcpStream, buf: BytesMut) {
        // The reaper runs on the worker's runtime; without one, nothing would close the
        // connection after its idle time, so it is not kept.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut inner = self.lock();
        if inner.total >= MAX_IDLE {
            return;
        }
        let buf = if inner.total < KEPT_BUFFERS {
            buf
        } else {
            BytesMut::new()
        };
        let list = inner.idle.entry(addr).or_default();
        let evicted = if list.len() >= MAX_IDLE_PER_BACKEND {
            list.remove(0);
            1
        } else {
            0
        };
        list.push(Idle {
            stream,
            buf,
            since: Instant::now(),
        });
        inner.total = inner.total + 1 - evicted;
        if !inner.reaping {
            inner.reaping = true;
            let every = (self.idle_timeout / 2).min(PURGE_DELAY);
            runtime.spawn(reap_every(Arc::downgrade(self), every));
        }
    }

    /// Idle connections held, over all backends.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.lock().total
    }

    /// Closes connections idle for too long or closed by their backend, and purges surplus
    /// ones unused for [`PURGE_DELAY`]; `false` when none is left (the reaper then stops, and
    /// the next checkin starts another).
    fn reap(&self) -> bool {
        let mut inner = self.lock();
        let timeout = self.idle_timeout;
        inner.idle.retain(|_, list| {
            list.drain(..purged(list));
            list.retain(|idle| idle.since.elapsed() < timeout && open(&idle.stream));
            !list.is_empty()
        });
        inner.total = inner.idle.values().map(Vec::len).sum();
        inner.reaping = inner.total > 0;
        inner.reaping
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn reap_every(pool: Weak<Pool>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        match pool.upgrade() {
            Some(pool) if pool.reap() => {}
            _ => return,
        }
    }
}

/// How many of a backend's idle connections (oldest first) the reaper purges: half, rounded
/// up, of those past [`KEPT_PER_BACKEND`] unused for [`PURGE_DELAY`]. The oldest are at the
/// front (LIFO reuse), so they are the ones unused longest.
fn purged(list: &[Idle]) -> usize {
    let surplus = list.len().saturating_sub(KEPT_PER_BACKEND);
    let unused = list
        .iter()
        .take(surplus)
        .take_while(|idle| idle.since.elapsed() >= PURGE_DELAY)
        .count();
    unused.div_ceil(2)
}

/// Whether an idle connection is still open: an idle HTTP/1.1 connection has nothing to read,
/// so readable means the backend closed it (or sent bytes no request asked for: unusable too).
fn open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use tokio::{io::AsyncWriteExt as _, net::TcpListener};

    use super::*;

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    #[tokio::test]
    async fn the_last_connection_returned_is_reused_first() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::new(IDLE_TIMEOUT);
        let (a, _sa) = pair(&listener).await;
        let (b, _sb) = pair(&listener).await;
        let b_port = b.local_addr().unwrap();
        pool.checkin(addr, a, BytesMut::new());
        pool.checkin(addr, b, BytesMut::new());
        let (got, _) = pool.checkout(addr).expect("an idle connection");
        assert_eq!(got.local_addr().unwrap(), b_port);
        assert_eq!(pool.idle(), 1);
        let other: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert!(pool.checkout(other).is_none());
    }

    #[tokio::test]
    async fn a_connection_closed_or_written_to_while_idle_is_not_handed_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::new(IDLE_TIMEOUT);
        let (a, sa) = pair(&listener).await;
        let (b, mut sb) = pair(&listener).await;
        pool.checkin(addr, a, BytesMut::new());
        pool.checkin(addr, b, BytesMut::new());
        drop(sa);
        sb.write_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
            .await
            .unwrap();
        // Both readiness events reach the worker's reactor.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.checkout(addr).is_none());
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::new(Duration::from_secs(30));
        let (a, _sa) = pair(&listener).await;
        pool.checkin(addr, a, BytesMut::new());
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(pool.idle(), 1);
        tokio::time::sleep(Duration::from_secs(17)).await;
        assert_eq!(pool.idle(), 0, "reaped");
        assert!(!pool.lock().reaping, "the reaper stopped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bursts_surplus_is_kept_while_used_then_purged_by_halves() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::new(IDLE_TIMEOUT);
        let burst = KEPT_PER_BACKEND + 8;
        let mut peers = Vec::new();
        for _ in 0..burst {
            let (c, s) = pair(&listener).await;
            pool.checkin(addr, c, BytesMut::new());
            peers.push(s);
        }
        assert_eq!(
            pool.idle(),
            burst,
            "a burst past the old bound of 256 is kept"
        );
        // Reused within the purge delay: the whole burst stays.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let used: Vec<_> = (0..burst)
            .filter_map(|_| pool.checkout(addr).map(|(c, _)| c))
            .collect();
        assert_eq!(used.len(), burst);
        for c in used {
            pool.checkin(addr, c, BytesMut::new());
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(pool.idle(), burst, "used 4 s ago: nothing purged");
        // Unused since: half of the 8 surplus, then half of the rest, down to the kept ones.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(pool.idle(), KEPT_PER_BACKEND + 4);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(pool.idle(), KEPT_PER_BACKEND + 2);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            pool.idle(),
            KEPT_PER_BACKEND,
            "the kept ones wait for the idle timeout"
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(pool.idle(), 0, "closed after the idle timeout");
    }
}
