//! Body types: every body is streamed frame by frame, never collected.
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::{
    balance::InFlightGuard,
    park::{BodyOpen, Open},
    server::h2::RecvBody,
    upstream::H1Body,
};

/// Error type of proxied bodies.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body of every response the proxy sends.
pub(crate) type ProxyBody = BoxBody<Bytes, BoxError>;

/// A small fixed body (error pages, redirects).
pub(crate) fn full(data: impl Into<Bytes>) -> ProxyBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A client's request body; on an HTTP/1 connection it tells the connection's session when it
/// has been read to its end (until then the connection cannot be parked).
/// `inner` is `None` for a request without a body (mlb's own HTTP/1 server only takes those).
pub(crate) struct ClientBody {
    inner: Option<Source>,
    open: Option<BodyOpen>,
}

/// Where a request body comes from: hyper's HTTP/1 session, or mlb's HTTP/2 server.
enum Source {
    Hyper(Incoming),
    H2(RecvBody),
}

impl ClientBody {
    pub(crate) fn new(inner: Incoming, open: Option<BodyOpen>) -> Self {
        ClientBody {
            inner: Some(Source::Hyper(inner)),
            open,
        }
    }

    /// The body of a request on mlb's HTTP/2 server.
    pub(crate) fn h2(inner: RecvBody) -> Self {
        ClientBody {
            inner: Some(Source::H2(inner)),
            open: None,
        }
    }

    /// The body of a request that has none.
    pub(crate) fn empty() -> Self {
        ClientBody {
            inner: None,
            open: None,
        }
    }
}

impl Body for Source {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Source::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Source::H2(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Hyper(b) => b.is_end_stream(),
            Source::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Hyper(b) => b.size_hint(),
            Source::H2(b) => b.size_hint(),
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(inner) = &mut self.inner else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => inner.is_end_stream(),
            _ => false,
        };
        if ended && let Some(mut open) = self.open.take() {
            open.ended();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Source::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Source::size_hint)
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        // Read to its end without a last poll (its length reached).
        if self.is_end_stream()
            && let Some(open) = &mut self.open
        {
            open.ended();
        }
    }
}

/// A response body of a hyper HTTP/1 session: it keeps the response counted as unfinished in the
/// session until hyper drops it (written whole, or the connection failed).
pub(crate) struct SessionBody {
    inner: ProxyBody,
    _open: Open,
}

impl SessionBody {
    pub(crate) fn new(inner: ProxyBody, open: Open) -> Self {
        SessionBody { inner, _open: open }
    }
}

impl Body for SessionBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that can be handed to a second backend when connecting to the first failed.
///
/// The incoming body sits in a shared slot and is taken only when the upstream connection first
/// polls it, which happens after the connection is established. If connecting fails the slot
/// still holds the untouched body and [`RetryBody::retry`] makes a new request body from it; once
/// any byte has been sent, no retry is possible (the slot is empty). A request without a body
/// (most of them) needs no slot: it can always be sent again, and saves the slot and the idle
/// timer an allocation each.
pub(crate) struct RetryBody {
    /// `None`: the request has no body.
    slot: Option<Arc<Mutex<Option<IdleTimeout<ClientBody>>>>>,
    taken: Option<IdleTimeout<ClientBody>>,
    hint: SizeHint,
    end: bool,
}

impl RetryBody {
    /// Wraps a client's request body, failing it when the client sends nothing for `idle`.
    pub(crate) fn new(body: ClientBody, idle: std::time::Duration) -> RetryBody {
        let end = body.is_end_stream();
        RetryBody {
            hint: body.size_hint(),
            end,
            slot: (!end).then(|| Arc::new(Mutex::new(Some(IdleTimeout::new(body, idle))))),
            taken: None,
        }
    }

    /// A fresh body over the same untouched incoming body, or `None` if it was already read.
    pub(crate) fn retry(&self) -> Option<RetryBody> {
        let untouched = self.slot.as_ref().is_none_or(|slot| {
            slot.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .is_some()
        });
        untouched.then(|| RetryBody {
            slot: self.slot.clone(),
            taken: None,
            hint: self.hint,
            end: self.end,
        })
    }
}

impl Body for RetryBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.taken.is_none() {
            let body = self.slot.as_ref().and_then(|slot| {
                slot.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
            });
            match body {
                Some(b) => self.taken = Some(b),
                None => return Poll::Ready(None),
            }
        }
        match self.taken.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(b) => b.is_end_stream(),
            None => self.end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}

/// A backend's response body: from hyper's client (`Left`), or from our own HTTP/1.1 client
/// (`Right`). http-body-util's `Either` does the dispatch, errors boxed as [`BoxError`].
pub(crate) type BackendBody = http_body_util::Either<Incoming, H1Body>;

/// A response body that keeps its backend counted as in flight until the body ends or is
/// dropped (so leastconn and draining see streaming responses).
pub(crate) struct GuardedBody {
    inner: BackendBody,
    guard: Option<InFlightGuard>,
}

impl GuardedBody {
    pub(crate) fn new(inner: BackendBody, guard: InFlightGuard) -> GuardedBody {
        GuardedBody {
            inner,
            guard: Some(guard),
        }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(guard)) = (&polled, &self.guard)
            && let Some(data) = frame.data_ref()
        {
            guard.stats().record_bytes_out(data.len() as u64);
        }
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Fails a body that makes its reader wait longer than `idle` for the next frame (HAProxy's
/// `timeout server` / `timeout client` during a body). Only time spent waiting on this body
/// counts: a reader that is slow to ask for more does not trip it. The timer is made at the
/// first wait: a small body that is already read with its headers never arms one.
pub(crate) struct IdleTimeout<B> {
    inner: B,
    idle: std::time::Duration,
    /// `None` until the body first makes its reader wait.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    waiting: bool,
}

impl<B> IdleTimeout<B> {
    pub(crate) fn new(inner: B, idle: std::time::Duration) -> Self {
        IdleTimeout {
            inner,
            idle,
            sleep: None,
            waiting: false,
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        // The wait starts now (the first poll of it): arm the timer for this wait.
        if !this.waiting {
            this.waiting = true;
            let deadline = tokio::time::Instant::now() + this.idle;
            match &mut this.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        match this.sleep.as_mut().map(|s| s.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => {
                Poll::Ready(Some(
                    Err(format!("no body data for {:?}", this.idle).into()),
                ))
            }
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::{BodyExt as _, Empty};

    use super::*;

    /// A body whose next frame never comes.
    struct Stalled;

    impl Body for Stalled {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_idle_time() {
        let started = tokio::time::Instant::now();
        let err = IdleTimeout::new(Stalled, Duration::from_secs(5))
            .frame()
            .await
            .expect("an error frame")
            .expect_err("the body stalled");
        assert!(err.to_string().contains("no body data"), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_body_arms_no_timer() {
        let mut body = IdleTimeout::new(Full::new(Bytes::from_static(b"hi")), Duration::ZERO);
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().unwrap(), "hi");
        assert!(body.sleep.is_none());
        assert!(body.frame().await.is_none());
    }

    #[test]
    fn an_empty_request_body_can_always_be_sent_again() {
        let body = RetryBody {
            slot: None,
            taken: None,
            hint: Empty::<Bytes>::new().size_hint(),
            end: true,
        };
        let again = body.retry().expect("retryable");
        assert!(again.is_end_stream());
        assert!(again.retry().is_some());
    }
}
