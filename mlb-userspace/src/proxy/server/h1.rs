//! The fast path's connection loop: read a head into the connection's buffer, serve it, write
//! the response, next — until the client goes quiet (the connection parks, holding no buffer),
//! leaves, or sends a request the fast path leaves to hyper.
use std::{future::Future as _, pin::Pin, sync::Arc, task::Poll, time::Duration};

use bytes::{Buf as _, Bytes, BytesMut};
use http::{Method, Request, Response};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    time::{Instant, Sleep, sleep_until},
};
use tracing::debug;

use super::{
    request::{self, Parsed},
    response::{self, Asked},
};
use crate::proxy::{
    Shared,
    body::{ClientBody, ProxyBody},
    handler,
    last_segment::LastSegment,
    listeners::ConnInfo,
    park::PARK_AFTER,
    send_turn::end_of_turn,
};

/// Smallest room left in the read buffer before reading into it.
const MIN_READ: usize = 4096;
/// What the read buffer grows by (hyper's first read buffer).
const READ_BUFFER: usize = 8192;

/// How the fast path left a connection.
#[derive(Debug)]
pub(crate) enum Next {
    /// The connection is done (closed, failed, timed out, or closed after a response).
    Done,
    /// The client has been quiet for [`PARK_AFTER`] between requests: park it.
    Park,
    /// A request for hyper's session, which starts with these bytes.
    Hyper(Bytes),
}

/// A connection in the fast path, with buffers that exist only while it is not parked.
pub(super) struct Conn<'a, I> {
    pub(super) io: &'a mut I,
    read: BytesMut,
    /// The response being gathered for one write.
    pub(super) write: Vec<u8>,
    /// Most bytes of a head (hyper's `max_buf_size`: beyond, hyper's 431).
    max_head: usize,
    /// The deadline of the wait for the next head, one timer for every request: moved later
    /// for each, it only has its expiry extended, where a timer per wait would be put into and
    /// taken out of the runtime's timer wheel for every request.
    head_deadline: Pin<Box<Sleep>>,
}

impl<I: AsyncRead + AsyncWrite + LastSegment + Unpin> Conn<'_, I> {
    /// Writes and flushes what is gathered, after the other tasks woken in this turn
    /// ([`end_of_turn`]).
    pub(super) async fn send(&mut self) -> std::io::Result<()> {
        if !self.write.is_empty() {
            end_of_turn().await;
            self.io.write_all(&self.write).await?;
            self.write.clear();
        }
        self.io.flush().await
    }

    /// Awaits `work` unless the client closes its side first (`None`), as hyper's server
    /// does (no half-close): the request's work, and its backend connection, are dropped.
    /// Bytes a client pipelines meanwhile are kept for the next request.
    pub(super) async fn unless_gone<F: Future>(&mut self, work: F) -> Option<F::Output> {
        let mut work = std::pin::pin!(work);
        loop {
            let room = self.read.len() < self.max_head;
            if room && self.read.capacity() - self.read.len() < MIN_READ {
                self.read.reserve(READ_BUFFER);
            }
            tokio::select! {
                biased;
                done = &mut work => return Some(done),
                read = self.io.read_buf(&mut self.read), if room => match read {
                    Ok(n) if n > 0 => {}
                    _ => return None,
                },
            }
        }
    }
}

/// Serves requests on `io`, fed `unread` first, while they are for the fast path.
pub(crate) async fn serve<I>(
    shared: &Arc<Shared>,
    info: &Arc<ConnInfo>,
    io: &mut I,
    unread: Bytes,
    client_timeout: Duration,
) -> Next
where
    I: AsyncRead + AsyncWrite + LastSegment + Unpin,
{
    let deadline = || Instant::now() + client_timeout.saturating_sub(info.conn.idle_for());
    let mut conn = Conn {
        io,
        read: BytesMut::from(&unread[..]),
        write: Vec::new(),
        max_head: shared.config.max_header_bytes.max(8192),
        head_deadline: Box::pin(sleep_until(deadline())),
    };
    loop {
        conn.head_deadline.as_mut().reset(deadline());
        let (req, keep_alive) = loop {
            match request::parse(&conn.read) {
                // A head hyper's buffer would not hold: its 431, as always.
                Parsed::Request { len, .. } if len > conn.max_head => {
                    return Next::Hyper(conn.read.freeze());
                }
                Parsed::Request {
                    req,
                    len,
                    keep_alive,
                } => {
                    conn.read.advance(len);
                    break (req, keep_alive);
                }
                Parsed::Partial if conn.read.len() < conn.max_head => {}
                // Too big for a head: hyper refuses it as it always has.
                Parsed::Partial | Parsed::Other => return Next::Hyper(conn.read.freeze()),
            }
            let Conn {
                io,
                read,
                head_deadline,
                ..
            } = &mut conn;
            if let Err(next) = read_more(&mut **io, read, head_deadline.as_mut(), shared).await {
                return next;
            }
        };
        let mut asked = Asked {
            head: req.method() == Method::HEAD,
            version: req.version(),
            keep_alive,
        };
        let busy = info.conn.request();
        let Some(response) = conn.unless_gone(respond(shared, info, req)).await else {
            return Next::Done;
        };
        drop(busy);
        // A stopping mlb closes the connection after this response.
        asked.keep_alive &= !shared.is_stopping();
        match response::write(&mut conn, &asked, response).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = conn.io.shutdown().await;
                return Next::Done;
            }
            Err(e) => {
                debug!(error = %e, "writing a response failed");
                return Next::Done;
            }
        }
    }
}

/// Reads more of a head into `buf` before `deadline` (hyper's header read timeout, which
/// covers the wait for a head as well). Between requests (`buf` empty) a client quiet for
/// [`PARK_AFTER`] has its connection parked: checked whenever the read is polled, which the
/// connection's supervisor does at each tick, as for a hyper session. No timer of its own:
/// a 100-ms timer per wait would often be the runtime's earliest, and registering an earliest
/// timer wakes the runtime's driver (an eventfd write) even from its own thread. Once mlb is
/// stopping, a connection quiet between requests is closed at such a check.
async fn read_more<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    mut deadline: Pin<&mut Sleep>,
    shared: &Shared,
) -> Result<(), Next> {
    let park_at = buf.is_empty().then(|| Instant::now() + PARK_AFTER);
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(READ_BUFFER);
    }
    let mut read = std::pin::pin!(io.read_buf(buf));
    let waited = std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
        Poll::Ready(Ok(n)) if n > 0 => Poll::Ready(Ok(())),
        Poll::Ready(_) => Poll::Ready(Err(Next::Done)),
        Poll::Pending if park_at.is_some() && shared.is_stopping() => Poll::Ready(Err(Next::Done)),
        Poll::Pending if park_at.is_some_and(|at| Instant::now() >= at) => {
            Poll::Ready(Err(Next::Park))
        }
        Poll::Pending => deadline.as_mut().poll(cx).map(|()| Err(Next::Done)),
    });
    waited.await
}

/// The handler's response to a request without a body.
async fn respond(
    shared: &Arc<Shared>,
    info: &Arc<ConnInfo>,
    req: Request<()>,
) -> Response<ProxyBody> {
    let req = req.map(|()| ClientBody::empty());
    let (shared, info) = (shared.clone(), info.clone());
    // Boxed, and made in the box: the handler's state (several KiB) exists only while a
    // request is in flight, not in every connection's task.
    let handled = Box::pin(async move { handler::handle(shared, info, req).await });
    let Ok(response) = handled.await;
    response
}
