//! A request body arriving in DATA frames: the connection puts the frames in the stream's
//! inbox, the handler reads them out, and what it has read is given back to the client as
//! flow-control credit. The client can never have more bytes in flight than its windows
//! allow, so the inbox holds at most a stream window's worth.
use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

use crate::proxy::body::BoxError;

/// Why a request body ended before its end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the client reset the HTTP/2 stream")]
    Reset,
    #[error("the request body did not match its content-length")]
    Length,
    #[error("the HTTP/2 connection closed")]
    Closed,
}

/// What the connection and the reader share.
#[derive(Default)]
struct State {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// The client sent END_STREAM.
    ended: bool,
    failed: Option<fn() -> BodyError>,
    /// Bytes the reader took since the connection last looked.
    consumed: usize,
    /// Bytes queued and not yet read.
    queued: usize,
    /// The reader is gone: what arrives from now on is dropped.
    dropped: bool,
    reader: Option<Waker>,
    conn: Option<Waker>,
    /// The connection is woken (to give credit back) once this much is read.
    wake_at: usize,
    /// The request's `content-length`, if it had one.
    length: Option<u64>,
    /// Bytes read so far (for the size hint).
    read: u64,
    /// The reader saw the end (or the failure).
    done: bool,
}

/// The connection's end of a stream's inbox.
pub(super) struct Inbox {
    state: Arc<Mutex<State>>,
}

/// The handler's end: the request's body. One pointer: a request and its body are moved
/// several times on their way through the handler, HTTP/1 ones too.
pub(crate) struct RecvBody {
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A new inbox and its body.
pub(super) fn channel(length: Option<u64>, wake_at: usize) -> (Inbox, RecvBody) {
    let state = Arc::new(Mutex::new(State {
        wake_at,
        length,
        ..State::default()
    }));
    let body = RecvBody {
        state: state.clone(),
    };
    (Inbox { state }, body)
}

impl Inbox {
    /// Queues a DATA frame's bytes; `false` if the reader is gone (the caller gives the credit
    /// back itself).
    pub(super) fn push(&self, data: Bytes, conn: &Waker) -> bool {
        let mut s = lock(&self.state);
        if s.dropped {
            return false;
        }
        if !s.conn.as_ref().is_some_and(|w| w.will_wake(conn)) {
            s.conn = Some(conn.clone());
        }
        s.queued += data.len();
        s.chunks.push_back(data);
        if let Some(w) = s.reader.take() {
            w.wake();
        }
        true
    }

    /// The client's END_STREAM, with its trailers if it sent any.
    pub(super) fn end(&self, trailers: Option<HeaderMap>) {
        let mut s = lock(&self.state);
        s.ended = true;
        s.trailers = trailers;
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }

    /// The body fails (the stream was reset, its length was wrong, the connection closed).
    pub(super) fn fail(&self, why: fn() -> BodyError) {
        let mut s = lock(&self.state);
        if !s.ended {
            s.failed = Some(why);
        }
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }

    /// The bytes read since the last call (to give back as credit), and whether the reader is
    /// gone; a gone reader's unread bytes count as read.
    pub(super) fn take_consumed(&self) -> (usize, bool) {
        let mut s = lock(&self.state);
        let mut n = std::mem::take(&mut s.consumed);
        if s.dropped {
            n += std::mem::take(&mut s.queued);
            s.chunks.clear();
        }
        (n, s.dropped)
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        s.dropped = true;
        if let Some(w) = s.conn.take() {
            w.wake();
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut s = lock(&self.state);
        if s.done {
            return Poll::Ready(None);
        }
        if let Some(chunk) = s.chunks.pop_front() {
            s.queued -= chunk.len();
            let before = s.consumed;
            s.consumed += chunk.len();
            s.read += chunk.len() as u64;
            // Credit goes back in batches: the connection is woken once half a window is read.
            if before < s.wake_at
                && s.consumed >= s.wake_at
                && let Some(w) = s.conn.take()
            {
                w.wake();
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(why) = s.failed {
            s.done = true;
            return Poll::Ready(Some(Err(why().into())));
        }
        if s.ended {
            s.done = true;
            return Poll::Ready(s.trailers.take().map(|t| Ok(Frame::trailers(t))));
        }
        if !s.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.reader = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let s = lock(&self.state);
        s.done || s.length == Some(s.read) && s.ended && s.chunks.is_empty() && s.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let s = lock(&self.state);
        match s.length {
            Some(len) => SizeHint::with_exact(len.saturating_sub(s.read)),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use http_body_util::BodyExt as _;

    use super::*;

    #[tokio::test]
    async fn the_reader_gets_the_frames_then_the_trailers_and_gives_back_what_it_read() {
        let (inbox, mut body) = channel(Some(5), 4);
        let conn = Waker::noop();
        assert!(inbox.push(Bytes::from_static(b"ab"), conn));
        assert!(inbox.push(Bytes::from_static(b"cde"), conn));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        inbox.end(Some(trailers));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"ab");
        assert_eq!(inbox.take_consumed(), (2, false));
        let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&second[..], b"cde");
        let t = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(t["grpc-status"], "0");
        assert!(body.frame().await.is_none());
        assert_eq!(inbox.take_consumed(), (3, false));
    }

    #[tokio::test]
    async fn a_reset_fails_the_body_and_a_dropped_reader_gives_back_everything() {
        let (inbox, mut body) = channel(None, 4);
        inbox.fail(|| BodyError::Reset);
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("reset"), "{err}");

        let (inbox, body) = channel(None, 4);
        assert!(inbox.push(Bytes::from_static(b"abcdef"), Waker::noop()));
        drop(body);
        assert_eq!(inbox.take_consumed(), (6, true));
        assert!(!inbox.push(Bytes::from_static(b"more"), Waker::noop()));
    }
}
