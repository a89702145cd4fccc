//! HTTP on an accepted (and decrypted) connection: HTTP/2 when it opens with the HTTP/2
//! preface, else HTTP/1.1: mlb's own server for requests without a body, hyper's sessions for
//! the others, the connection parked between them ([`super::park`]).
use std::{
    cell::RefCell,
    convert::Infallible,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use hyper::{Request, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use super::{
    Shared,
    body::{ClientBody, SessionBody},
    handler,
    last_segment::LastSegment,
    listeners::{ConnInfo, client_timeout},
    park::{ParkedGauge, Session, SessionIo},
    raw_head,
    server::{
        h1::{self, Next},
        h2,
    },
};

/// What an HTTP/2 connection starts with.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request being handled. Boxed: hyper keeps a slot for the service's future in every
/// connection, and the handler's state is several KiB; boxed, the slot is a pointer and those
/// KiB exist only while a request is in flight.
type InFlight =
    Pin<Box<dyn Future<Output = Result<http::Response<SessionBody>, Infallible>> + Send>>;

/// Serves HTTP on `io` until the client leaves, the connection fails or times out (the
/// connection's supervisor closes it when it sends no request in time or stays idle). `info`
/// comes boxed (see `serve_connection`).
pub(crate) async fn serve_http<I>(shared: Arc<Shared>, mut io: I, info: Box<ConnInfo>)
where
    I: AsyncRead + AsyncWrite + Unpin + LastSegment + Send + 'static,
{
    let client_timeout = client_timeout(&shared, info.frontend);
    let _open = OpenConnection::new(shared.clone());
    let info = Arc::<ConnInfo>::from(info);
    // Nothing is built for the connection before its first bytes.
    let Some(first) = first_bytes(&mut io).await else {
        return;
    };
    if first.starts_with(H2_PREFACE) {
        // Boxed, and awaited from a local (a temporary of the awaited expression would keep its
        // room): an HTTP/1 connection's task does not carry an HTTP/2 connection's.
        let h2 =
            Box::pin(async move { h2::serve(&shared, &info, io, first, client_timeout).await });
        h2.await;
    } else {
        serve_h1(shared, io, first, info, client_timeout).await;
    }
}

/// One in [`Shared::connections`] while it lives.
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    fn new(shared: Arc<Shared>) -> Self {
        shared.connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(shared)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Room for a connection's first read: a whole typical request head, so the fast path does not
/// read again for it.
const FIRST_READ: usize = 8192;

thread_local! {
    /// The first read's buffer on this thread: filled and copied out within one poll, so a new
    /// or parked connection waiting for its next bytes holds no buffer.
    static FIRST_READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; FIRST_READ].into());
}

/// The first bytes of a request (as many as have arrived, up to [`FIRST_READ`] a read): at
/// least enough to tell the HTTP/2 preface from anything else. `None`: the client closed (or
/// the connection failed) first.
async fn first_bytes<I: AsyncRead + Unpin>(io: &mut I) -> Option<Bytes> {
    let mut first = BytesMut::new();
    loop {
        let n = std::future::poll_fn(|cx| read_into_scratch(io, cx, &mut first)).await;
        if n == 0 {
            return None;
        }
        let seen = first.len().min(H2_PREFACE.len());
        if seen == H2_PREFACE.len() || first[..seen] != H2_PREFACE[..seen] {
            return Some(first.freeze());
        }
    }
}

/// One read into this thread's [`FIRST_READ_BUFFER`], whose bytes are appended to `out`; 0 at
/// the end of the stream or on an error. Also the read of an idle HTTP/2 connection, which
/// holds no buffer while it waits.
pub(super) fn read_into_scratch<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    out: &mut BytesMut,
) -> Poll<usize> {
    FIRST_READ_BUFFER.with_borrow_mut(|scratch| {
        let mut buf = ReadBuf::new(scratch);
        match Pin::new(&mut *io).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(0),
            Poll::Ready(Ok(())) => {
                out.extend_from_slice(buf.filled());
                Poll::Ready(buf.filled().len())
            }
        }
    })
}

/// HTTP/1.1 on one connection until it ends: mlb's own server for requests without a body
/// ([`super::server`]), hyper's sessions for the others, parked while the client is quiet.
async fn serve_h1<I>(
    shared: Arc<Shared>,
    mut io: I,
    mut unread: Bytes,
    info: Arc<ConnInfo>,
    client_timeout: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + LastSegment + Send + 'static,
{
    loop {
        // Boxed, and awaited from a local: the fast path's buffers and request state exist
        // only while the connection is not parked.
        let fast = Box::pin(h1::serve(&shared, &info, &mut io, unread, client_timeout));
        unread = match fast.await {
            Next::Done => return,
            Next::Park => Bytes::new(),
            Next::Hyper(bytes) => {
                let session = Box::pin(session(&shared, &info, io, bytes, client_timeout));
                let Some(parked) = session.await else {
                    return;
                };
                (io, unread) = parked;
                unread
            }
        };
        if unread.is_empty() {
            match park(&shared, &info, &mut io, client_timeout).await {
                Some(bytes) => unread = bytes,
                None => return,
            }
        }
    }
}

/// Waits for the next bytes of a parked connection, holding no buffer. `None`: the client
/// left, or sent nothing for `timeout client` (as hyper closes an idle keep-alive connection
/// without a request head after its header read timeout).
async fn park<I: AsyncRead + Unpin>(
    shared: &Shared,
    info: &ConnInfo,
    io: &mut I,
    client_timeout: Duration,
) -> Option<Bytes> {
    let _parked = ParkedGauge::new(&shared.parked);
    let quiet = client_timeout.saturating_sub(info.conn.idle_for());
    let mut next = std::pin::pin!(tokio::time::timeout(quiet, first_bytes(io)));
    // Polled at each of the supervisor's ticks too: a parked connection of a stopping mlb
    // closes within one.
    std::future::poll_fn(|cx| match next.as_mut().poll(cx) {
        Poll::Ready(bytes) => Poll::Ready(bytes.ok().flatten()),
        Poll::Pending if shared.is_stopping() => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    })
    .await
}

/// One HTTP/1.1 session on `io`, fed `unread` first. `Some`: it ended to park the connection,
/// with the socket and the bytes hyper read but did not use; `None`: the connection is done
/// (closed, failed, or upgraded: the socket is the tunnel's now).
async fn session<I>(
    shared: &Arc<Shared>,
    info: &Arc<ConnInfo>,
    io: I,
    unread: Bytes,
    client_timeout: Duration,
) -> Option<(I, Bytes)>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let session = Arc::new(Session::default());
    let service = service(shared, info, session.clone());
    let io = SessionIo::new(io, unread, session, info.conn.clone());
    let mut conn = h1_builder(shared, client_timeout)
        .serve_connection(TokioIo::new(io), service_fn(service))
        .with_upgrades();
    let ended = (&mut conn).await;
    let parts = conn.into_parts()?;
    let Some(parked) = parts.io.into_inner().into_parked() else {
        if let Err(e) = ended {
            debug!(error = %e, "connection ended with an error");
        }
        return None;
    };
    // A copy: the bytes hyper read but did not use share its read buffer's allocation.
    Some((parked, Bytes::copy_from_slice(&parts.read_buf)))
}

/// The HTTP/1.1 server settings of a session.
fn h1_builder(shared: &Shared, client_timeout: Duration) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(client_timeout)
        .max_buf_size(shared.config.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
}

/// The request handler of one hyper HTTP/1 session (`session`).
fn service(
    shared: &Arc<Shared>,
    info: &Arc<ConnInfo>,
    session: Arc<Session>,
) -> impl Fn(Request<Incoming>) -> InFlight + Send + 'static {
    let (shared, info) = (shared.clone(), info.clone());
    move |req| -> InFlight {
        let busy = info.conn.request();
        let has_body = !hyper::body::Body::is_end_stream(req.body());
        let (response_open, body_open) = session.request(has_body);
        let req = req.map(|body| ClientBody::new(body, body_open));
        let (shared, info) = (shared.clone(), info.clone());
        // The handler's future is made inside the boxed one, in its place on the heap: made
        // here and moved in, its KiBs of state would be copied (twice) for every request.
        Box::pin(async move {
            let Ok(mut response) = handler::handle(shared.clone(), info, req).await;
            // hyper writes the headers of a map only.
            raw_head::materialize(&mut response);
            if shared.is_stopping() && response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                // hyper closes the connection after a response that says so.
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            drop(busy);
            Ok(response.map(|body| SessionBody::new(body, response_open)))
        })
    }
}
