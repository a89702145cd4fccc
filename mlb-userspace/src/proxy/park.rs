//! Idle HTTP/1 connections without their HTTP state ("parking").
//!
//! hyper's HTTP/1 server keeps two 8-KiB buffers and its connection state for as long as a
//! connection lives, and most keep-alive connections are idle most of their life. So a
//! connection is served by a *session*: a hyper connection that lasts while requests come.
//! Once every response is written and flushed, every request body read, and the client has
//! been quiet for [`PARK_AFTER`], [`SessionIo`] tells hyper the client closed; hyper ends the
//! session without shutting the socket down (its state and buffers are freed) and hands the
//! socket back with any bytes it read but did not use. The connection then waits as its bare
//! socket (plus TLS state); its next bytes start a new session, fed those bytes first.
//!
//! A session is only ever ended at a point where hyper is between messages: nothing is lost
//! or cut, and keep-alive is not disabled (the client sees no `Connection: close`).
use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::listeners::Prefixed;
use crate::overload::ConnState;

/// How long a client must be quiet before its connection is parked: a busy keep-alive client
/// stays on its session. Parking itself happens at the connection supervisor's next tick
/// (which polls the session), so a connection is parked within a tick of this.
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(100);

/// What a session's requests and bodies tell its [`SessionIo`].
#[derive(Debug, Default)]
pub(crate) struct Session {
    /// Requests started in the session.
    started: AtomicU64,
    /// Responses not yet finished plus request bodies not yet read to their end.
    open: AtomicUsize,
    /// A request body was dropped before its end: hyper may still be reading (or draining) it,
    /// so the session must not be told the client closed.
    unparkable: AtomicBool,
}

impl Session {
    /// A request starts (`has_body`: its body is not empty). The marks end when its response
    /// body, and its request body, end or are dropped.
    pub(crate) fn request(self: &Arc<Self>, has_body: bool) -> (Open, Option<BodyOpen>) {
        self.started.fetch_add(1, Ordering::AcqRel);
        let opened = if has_body { 2 } else { 1 };
        self.open.fetch_add(opened, Ordering::AcqRel);
        let body = has_body.then(|| BodyOpen {
            open: Open(self.clone()),
            ended: false,
        });
        (Open(self.clone()), body)
    }

    fn idle(&self) -> bool {
        self.open.load(Ordering::Acquire) == 0 && !self.unparkable.load(Ordering::Acquire)
    }
}

/// Something of a session not finished (a response); dropped when it is.
#[derive(Debug)]
pub(crate) struct Open(Arc<Session>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request body not yet read to its end.
#[derive(Debug)]
pub(crate) struct BodyOpen {
    open: Open,
    ended: bool,
}

impl BodyOpen {
    /// The body was read to its end.
    pub(crate) fn ended(&mut self) {
        self.ended = true;
    }
}

impl Drop for BodyOpen {
    fn drop(&mut self) {
        if !self.ended {
            self.open.0.unparkable.store(true, Ordering::Release);
        }
    }
}

/// The client connection as a session's hyper connection sees it: first the bytes read before
/// the session started, then the socket; reads end (EOF) once the connection may be parked.
pub(crate) struct SessionIo<I> {
    /// The socket, fed first the bytes the previous session read but did not use.
    io: Prefixed<I>,
    session: Arc<Session>,
    conn: Arc<ConnState>,
    /// `session.started` when a flush last completed with nothing of the session open and
    /// nothing written since: hyper holds no byte it has not sent.
    flushed_at: Option<u64>,
    /// EOF was reported to hyper: the session ends, the connection is parked.
    parked: bool,
}

impl<I> SessionIo<I> {
    pub(crate) fn new(io: I, unread: Bytes, session: Arc<Session>, conn: Arc<ConnState>) -> Self {
        SessionIo {
            io: Prefixed::new(unread, io),
            session,
            conn,
            flushed_at: None,
            parked: false,
        }
    }

    /// The socket, if the session ended by parking; `None` when it ended for another reason
    /// (the client closed, `Connection: close`, an error): the connection is done.
    pub(crate) fn into_parked(self) -> Option<I> {
        self.parked.then(|| self.io.into_inner())
    }

    /// The session has served a request, everything is answered, flushed and read, and the
    /// client has been quiet long enough.
    fn may_park(&self) -> bool {
        let started = self.session.started.load(Ordering::Acquire);
        started > 0
            && self.flushed_at == Some(started)
            && self.session.idle()
            && self.conn.idle_for() >= PARK_AFTER
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SessionIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.parked {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending if this.may_park() => {
                this.parked = true;
                Poll::Ready(Ok(()))
            }
            polled => polled,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SessionIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.flushed_at = None;
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.flushed_at = None;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let started = this.session.started.load(Ordering::Acquire);
        let flushed = Pin::new(&mut this.io).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) && this.session.idle() {
            this.flushed_at = Some(started);
        }
        flushed
    }

    /// hyper shuts a connection down after the EOF it was told of: a parked one stays open.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parked {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Counts a connection as parked while it lives (the proxy's gauge of parked connections).
pub(crate) struct ParkedGauge<'a>(&'a AtomicUsize);

impl<'a> ParkedGauge<'a> {
    pub(crate) fn new(gauge: &'a AtomicUsize) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        ParkedGauge(gauge)
    }
}

impl Drop for ParkedGauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
