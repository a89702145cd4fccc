//! The body of a response from [`super::h1::H1Client`], read from its connection as it is
//! polled, with the HTTP/1.1 framing decoded (RFC 9112 §6): none (HEAD, 204, 304), a
//! `Content-Length`, chunked (trailers are read and dropped: this path serves no gRPC), or up
//! to the end of the connection. A body read to its end puts a reusable connection back in the
//! pool; a body dropped earlier closes it.
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Buf as _, Bytes, BytesMut};
use http::{HeaderMap, Response, StatusCode, header};
use hyper::body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use super::{h1::MAX_HEAD, pool::Pool};
use crate::proxy::{body::BoxError, headers::visible_ascii};

/// Longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Smallest room left in the read buffer before reading into it.
const MIN_READ: usize = 4096;
/// Read buffer allocated when there is less room than that.
const READ_BUFFER: usize = 16 * 1024;

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes the connection (which then cannot be reused).
    Close,
}

impl Framing {
    /// The framing of a response with `status` to a request (a HEAD one with `head_only`).
    /// A `Content-Length` beside a chunked `Transfer-Encoding` is removed (RFC 9112 §6.3).
    pub(crate) fn of(
        status: StatusCode,
        head_only: bool,
        headers: &mut HeaderMap,
    ) -> Result<Framing, String> {
        let te = headers
            .get(header::TRANSFER_ENCODING)
            .map(http::HeaderValue::as_bytes);
        let lengths = headers.get_all(header::CONTENT_LENGTH);
        let (framing, drop_length) = Framing::decide(
            status,
            head_only,
            te,
            lengths.iter().map(http::HeaderValue::as_bytes),
        )?;
        if drop_length {
            headers.remove(header::CONTENT_LENGTH);
        }
        Ok(framing)
    }

    /// The framing of a response from its first `Transfer-Encoding` value and its
    /// `Content-Length` values, and whether its `Content-Length` is to be removed (it stands
    /// beside a `Transfer-Encoding`, which wins).
    pub(crate) fn decide<'a>(
        status: StatusCode,
        head_only: bool,
        te: Option<&[u8]>,
        mut lengths: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(Framing, bool), String> {
        if head_only
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok((Framing::Empty, false));
        }
        if let Some(te) = te {
            let last = visible_ascii(te).then(|| te.rsplit(|&b| b == b',').next());
            let chunked = last
                .flatten()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            let framing = if chunked {
                Framing::Chunked
            } else {
                Framing::Close
            };
            return Ok((framing, true));
        }
        let Some(first) = lengths.next() else {
            return Ok((Framing::Close, false));
        };
        let parse = |v: &[u8]| {
            (!v.is_empty() && v.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                .flatten()
        };
        let len = parse(first).ok_or("bad content-length")?;
        if lengths.any(|other| parse(other) != Some(len)) {
            return Err("conflicting content-length".into());
        }
        let framing = if len == 0 {
            Framing::Empty
        } else {
            Framing::Length(len)
        };
        Ok((framing, false))
    }
}

/// Where the decoder is in a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    UntilClose,
    Done,
}

/// The backend connection a body is read from, and where it goes back to.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    addr: SocketAddr,
    pool: Arc<Pool>,
}

/// A response body read from its backend connection.
pub(crate) struct H1Body {
    state: State,
    /// `None` once the body ended (the connection went back to the pool or was closed).
    conn: Option<Conn>,
    reuse: bool,
    /// Bytes of trailers read (bounded like a head).
    trailers: usize,
}

impl H1Body {
    /// The response of `head` with its body; a body that is already complete gives its
    /// connection back at once.
    pub(crate) fn response(
        head: Response<()>,
        framing: Framing,
        reuse: bool,
        (stream, buf, addr, pool): (TcpStream, BytesMut, SocketAddr, Arc<Pool>),
    ) -> Response<H1Body> {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::UntilClose,
        };
        let conn = Conn {
            stream,
            buf,
            addr,
            pool,
        };
        let mut body = H1Body {
            state,
            conn: Some(conn),
            reuse,
            trailers: 0,
        };
        if state == State::Done {
            body.finish();
        }
        head.map(|()| body)
    }

    /// The body ended: its connection goes back to the pool if the response allowed it and
    /// the backend sent nothing past the body.
    fn finish(&mut self) {
        self.state = State::Done;
        if let Some(conn) = self.conn.take()
            && self.reuse
            && conn.buf.is_empty()
        {
            conn.pool.checkin(conn.addr, conn.stream, conn.buf);
        }
    }

    /// The next frame's data from what is buffered; `Ok(None)`: more must be read first (or
    /// the body is done).
    fn decode(&mut self) -> Result<Option<Bytes>, String> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let buf = &mut conn.buf;
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Length(n) | State::ChunkData(n) if !buf.is_empty() => {
                    let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    let data = buf.split_to(take).freeze();
                    let left = n - take as u64;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Some(data));
                }
                State::UntilClose if !buf.is_empty() => return Ok(Some(buf.split().freeze())),
                State::ChunkSize => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE, "chunk size")? else {
                        return Ok(None);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("no CRLF after chunk data".into());
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    let room = MAX_HEAD.saturating_sub(self.trailers);
                    let Some(line) = take_line(buf, room, "trailers")? else {
                        return Ok(None);
                    };
                    self.trailers += line.len() + 2;
                    if line.is_empty() {
                        self.state = State::Done;
                    }
                }
                State::Length(_) | State::ChunkData(_) | State::UntilClose => return Ok(None),
            }
        }
    }

    /// Reads more from the connection; `Ok(false)` at its end.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        loop {
            ready!(conn.stream.poll_read_ready(cx))?;
            if conn.buf.capacity() - conn.buf.len() < MIN_READ {
                conn.buf.reserve(READ_BUFFER);
            }
            match conn.stream.try_read_buf(&mut conn.buf) {
                Ok(n) => return Poll::Ready(Ok(n > 0)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Fails the body: its connection is closed.
    fn fail(&mut self, why: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.state = State::Done;
        Poll::Ready(Some(Err(why.into())))
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match this.decode() {
                Ok(Some(data)) => {
                    if this.state == State::Done {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) if this.state == State::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => return this.fail(format!("backend response body: {e}")),
            }
            match ready!(this.poll_read(cx)) {
                Ok(true) => {}
                Ok(false) if this.state == State::UntilClose => {
                    // The end of the connection is the end of the body; nothing to reuse.
                    this.conn = None;
                    this.state = State::Done;
                    return Poll::Ready(None);
                }
                Ok(false) => return this.fail("backend closed before the body's end".into()),
                Err(e) => return this.fail(format!("reading the backend response body: {e}")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// One CRLF-terminated line off the front of `buf` (without its CRLF); `None` if incomplete.
fn take_line(buf: &mut BytesMut, max: usize, what: &str) -> Result<Option<BytesMut>, String> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) if end > max => Err(format!("{what} line too long")),
        Some(end) => {
            let mut line = buf.split_to(end + 1);
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > max => Err(format!("{what} line too long")),
        None => Ok(None),
    }
}

/// The size of a chunk-size line (hex, extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Result<u64, String> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err("bad chunk size".into());
    }
    let text = std::str::from_utf8(digits).map_err(|_| "bad chunk size")?;
    u64::from_str_radix(text, 16).map_err(|_| "bad chunk size".into())
}
