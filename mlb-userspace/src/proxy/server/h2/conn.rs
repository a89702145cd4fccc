//! The connection: frames in, handlers run, frames out, in one task.
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf as _, Bytes, BytesMut};
use futures_util::{
    StreamExt as _,
    future::{AbortHandle, Abortable},
    stream::FuturesUnordered,
};
use http::{Method, Response};
use hyper::body::Body as _;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite},
    time::Sleep,
};
use tracing::debug;

use super::{
    CONN_WINDOW, GLITCH_ALLOWANCE, MAX_STREAMS, STREAM_WINDOW, WRITE_HIGH,
    decoder::Decoder,
    frame::{
        self, DEFAULT_MAX_FRAME, DEFAULT_WINDOW, HEADER_LEN, Head, MAX_WINDOW, Reason, flag, kind,
        setting,
    },
    recv_body::{self, BodyError, Inbox},
    request::{self, BlockError},
    response,
};
use crate::{
    overload::RequestGuard,
    proxy::{
        Shared,
        body::{ClientBody, ProxyBody, full},
        handler,
        listeners::ConnInfo,
        serve::read_into_scratch,
    },
};

/// The client's connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A handler's response for a stream, run as one future of the connection's set.
type Handling = Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>;

/// A handler's future with the stream it answers.
struct Answer {
    stream: u32,
    handling: Abortable<Handling>,
}

impl Future for Answer {
    type Output = (u32, Option<Response<ProxyBody>>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let stream = self.stream;
        Pin::new(&mut self.handling)
            .poll(cx)
            .map(|done| (stream, done.ok()))
    }
}

/// An error that ends the connection (GOAWAY with its reason).
#[derive(Debug)]
struct ConnError(Reason, &'static str);

/// Where a stream's response is.
enum Out {
    /// The handler is working on it.
    Handling(AbortHandle),
    /// The head is sent; the body is being sent.
    Body {
        body: ProxyBody,
        /// Bytes of the body taken but not yet sent (no credit).
        pending: Bytes,
        /// `pending` is the body's last data.
        last: bool,
    },
    /// The response is sent whole.
    Done,
}

struct Stream {
    id: u32,
    out: Out,
    /// A HEAD request: the response's body is not sent.
    head: bool,
    /// The client has not ended its side (no END_STREAM yet).
    remote_open: bool,
    /// The request body's inbox, while the client sends it.
    inbox: Option<Inbox>,
    /// Bytes the client may still send on the stream.
    recv_credit: i64,
    /// Bytes read by the handler and not yet given back as stream credit.
    recv_unacked: usize,
    /// The request's `content-length`, and the body bytes received.
    declared: Option<u64>,
    received: u64,
    /// Bytes this server may still send on the stream.
    send_credit: i64,
    _busy: RequestGuard,
}

/// What the client's settings say.
struct Peer {
    initial_window: i64,
    max_frame: usize,
}

/// A header block being gathered from HEADERS and CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    bytes: Vec<u8>,
}

struct Conn<'a, I> {
    shared: &'a Arc<Shared>,
    info: &'a Arc<ConnInfo>,
    io: I,
    read: BytesMut,
    write: Vec<u8>,
    /// Bytes of `write` already written.
    written: usize,
    /// A flush is owed after a write.
    unflushed: bool,
    decoder: Decoder,
    /// Header block scratch space (responses).
    block: Vec<u8>,
    streams: Vec<Stream>,
    answers: FuturesUnordered<Answer>,
    /// Highest stream id the client opened.
    last_stream: u32,
    peer: Peer,
    /// The client's SETTINGS came (the first frame must be one).
    settings_seen: bool,
    /// Bytes read with the preface are still to be handled.
    first_frames: bool,
    continuing: Option<Block>,
    /// Bytes this server may still send on the connection.
    send_credit: i64,
    /// Bytes the client may still send on the connection.
    recv_credit: i64,
    /// Bytes received (read by handlers, or dropped) not yet given back as connection credit.
    recv_unacked: usize,
    max_list: usize,
    /// GOAWAY was sent or received: no new stream, closing once the streams are done.
    going_away: bool,
    /// The connection ends once `write` is flushed.
    closing: bool,
    glitches: u64,
    completed: u64,
    /// The frontend's client timeout: how long a response may wait for flow-control credit.
    client_timeout: Duration,
    /// Armed while a response waits for credit the client does not give.
    stalled: Option<Pin<Box<Sleep>>>,
}

/// Serves HTTP/2 on `io`, whose first bytes (`first`) start with the client preface.
pub(crate) async fn serve<I>(
    shared: &Arc<Shared>,
    info: &Arc<ConnInfo>,
    io: I,
    first: Bytes,
    client_timeout: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn {
        shared,
        info,
        io,
        read: BytesMut::from(&first[PREFACE.len().min(first.len())..]),
        write: Vec::with_capacity(4096),
        written: 0,
        unflushed: false,
        decoder: Decoder::new(),
        block: Vec::new(),
        streams: Vec::new(),
        answers: FuturesUnordered::new(),
        last_stream: 0,
        peer: Peer {
            initial_window: DEFAULT_WINDOW,
            max_frame: DEFAULT_MAX_FRAME,
        },
        settings_seen: false,
        first_frames: first.len() > PREFACE.len(),
        continuing: None,
        send_credit: DEFAULT_WINDOW,
        recv_credit: i64::from(CONN_WINDOW),
        recv_unacked: 0,
        max_list: shared.config.max_header_bytes.max(8192),
        going_away: false,
        closing: false,
        glitches: 0,
        completed: 0,
        client_timeout,
        stalled: None,
    };
    frame::settings(
        &mut conn.write,
        &[
            (setting::MAX_CONCURRENT_STREAMS, MAX_STREAMS as u32),
            (setting::INITIAL_WINDOW_SIZE, STREAM_WINDOW),
            (setting::MAX_HEADER_LIST_SIZE, conn.max_list as u32),
        ],
    );
    frame::window_update(&mut conn.write, 0, CONN_WINDOW - DEFAULT_WINDOW as u32);
    std::future::poll_fn(|cx| conn.poll(cx)).await;
    conn.fail_bodies();
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<'_, I> {
    /// Runs the connection until it ends.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut progress = false;
            if !self.going_away && !self.closing && self.shared.is_stopping() {
                // mlb is stopping: the streams opened so far are served, later ones refused
                // (the client may retry them elsewhere: GOAWAY says they were not processed),
                // and the connection closes once they are done.
                frame::goaway(&mut self.write, self.last_stream, Reason::NoError);
                self.going_away = true;
                progress = true;
            }
            if !self.closing && self.write.len() < WRITE_HIGH {
                let fresh = match self.poll_read(cx) {
                    Poll::Ready(Ok(true)) => true,
                    // The client left (or the read failed): nothing more can be answered.
                    Poll::Ready(Ok(false) | Err(())) => return Poll::Ready(()),
                    Poll::Pending => false,
                };
                // The frames that came with the preface are handled at once, not after the
                // next read: a client may have sent its first requests with it.
                if fresh || std::mem::take(&mut self.first_frames) {
                    progress |= fresh;
                    if let Err(ConnError(reason, why)) = self.frames(cx) {
                        debug!(%why, "HTTP/2 connection error");
                        frame::goaway(&mut self.write, self.last_stream, reason);
                        self.closing = true;
                    }
                }
            }
            while let Poll::Ready(Some((id, response))) = self.answers.poll_next_unpin(cx) {
                progress = true;
                if let Some(response) = response {
                    self.respond(id, response);
                }
            }
            if !self.closing {
                progress |= self.send_bodies(cx);
                self.give_credit();
                if self.credit_timed_out(cx) {
                    debug!("HTTP/2 client gave no flow-control credit within the client timeout");
                    frame::goaway(&mut self.write, self.last_stream, Reason::NoError);
                    self.closing = true;
                    progress = true;
                }
            }
            match self.poll_write(cx) {
                Poll::Ready(Err(())) => return Poll::Ready(()),
                Poll::Ready(Ok(())) if self.closing => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    if self.going_away && self.streams.is_empty() {
                        return Poll::Ready(());
                    }
                }
                Poll::Pending => {}
            }
            if !progress {
                return Poll::Pending;
            }
        }
    }

    /// Reads more frames: `Ok(false)` at the end of the stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, ()>> {
        if self.is_idle() {
            // Nothing in flight, nothing half-read or unsent: the buffers are let go, and the
            // wait for the next bytes holds none (the thread's scratch buffer takes the read),
            // as a parked HTTP/1.1 connection does.
            self.read = BytesMut::new();
            self.write = Vec::new();
            return read_into_scratch(&mut self.io, cx, &mut self.read).map(|n| Ok(n > 0));
        }
        if self.read.capacity() - self.read.len() < HEADER_LEN + DEFAULT_MAX_FRAME {
            self.read.reserve(HEADER_LEN + DEFAULT_MAX_FRAME);
        }
        // A read future holds no state between polls: one is made per poll.
        match std::pin::pin!(self.io.read_buf(&mut self.read)).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(Err(())),
            Poll::Ready(Ok(n)) => Poll::Ready(Ok(n > 0)),
        }
    }

    /// No stream, no frame partly read, nothing left to write.
    fn is_idle(&self) -> bool {
        self.streams.is_empty()
            && self.read.is_empty()
            && self.write.is_empty()
            && self.continuing.is_none()
            && !self.unflushed
    }

    /// Writes what is gathered; `Ok` once all is written and flushed.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        while self.written < self.write.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.write[self.written..]) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Err(())),
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    self.unflushed = true;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        self.write.clear();
        self.written = 0;
        if self.unflushed {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Handles every whole frame read.
    fn frames(&mut self, cx: &mut Context<'_>) -> Result<(), ConnError> {
        while self.read.len() >= HEADER_LEN {
            let head = Head::parse(&self.read);
            if head.len > DEFAULT_MAX_FRAME {
                return Err(ConnError(Reason::FrameSize, "a frame over 16 KiB"));
            }
            if self.read.len() < HEADER_LEN + head.len {
                break;
            }
            self.read.advance(HEADER_LEN);
            let payload = self.read.split_to(head.len).freeze();
            self.frame(head, payload, cx)?;
            if self.closing {
                break;
            }
        }
        Ok(())
    }

    fn frame(&mut self, head: Head, payload: Bytes, cx: &mut Context<'_>) -> Result<(), ConnError> {
        if !self.settings_seen {
            if head.kind != kind::SETTINGS || head.has(flag::ACK) {
                return Err(ConnError(
                    Reason::Protocol,
                    "the preface's SETTINGS is missing",
                ));
            }
            self.settings_seen = true;
        }
        if self.continuing.is_some() && head.kind != kind::CONTINUATION {
            return Err(ConnError(Reason::Protocol, "a frame inside a header block"));
        }
        match head.kind {
            kind::DATA => self.data(head, payload, cx),
            kind::HEADERS => self.headers(head, payload),
            kind::CONTINUATION => self.continuation(head, payload),
            kind::PRIORITY => {
                if head.stream == 0 {
                    return Err(ConnError(Reason::Protocol, "PRIORITY on stream 0"));
                }
                if head.len != 5 {
                    frame::rst_stream(&mut self.write, head.stream, Reason::FrameSize);
                }
                Ok(())
            }
            kind::RST_STREAM => self.rst_stream(head),
            kind::SETTINGS => self.settings(head, &payload),
            kind::PUSH_PROMISE => Err(ConnError(Reason::Protocol, "a client's PUSH_PROMISE")),
            kind::PING => {
                if head.stream != 0 || head.len != 8 {
                    return Err(ConnError(Reason::FrameSize, "a bad PING"));
                }
                if !head.has(flag::ACK) {
                    frame::head(&mut self.write, 8, kind::PING, flag::ACK, 0);
                    self.write.extend_from_slice(&payload);
                }
                Ok(())
            }
            kind::GOAWAY => {
                if head.stream != 0 {
                    return Err(ConnError(Reason::Protocol, "GOAWAY on a stream"));
                }
                self.going_away = true;
                Ok(())
            }
            kind::WINDOW_UPDATE => self.window_update(head, &payload),
            // Unknown frame types are ignored (§5.5).
            _ => Ok(()),
        }
    }

    fn stream(&mut self, id: u32) -> Option<&mut Stream> {
        self.streams.iter_mut().find(|s| s.id == id)
    }

    /// A frame for a stream that is not open: a protocol error if the stream was never opened
    /// (idle); on a closed stream it is ignored.
    fn not_open(&mut self, id: u32) -> Result<(), ConnError> {
        if id > self.last_stream {
            return Err(ConnError(Reason::Protocol, "a frame on an idle stream"));
        }
        Ok(())
    }

    fn data(&mut self, head: Head, payload: Bytes, cx: &mut Context<'_>) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError(Reason::Protocol, "DATA on stream 0"));
        }
        let len = head.len;
        self.recv_credit -= len as i64;
        if self.recv_credit < 0 {
            return Err(ConnError(
                Reason::FlowControl,
                "DATA over the connection window",
            ));
        }
        let (start, end) = frame::unpadded(&head, &payload)
            .ok_or(ConnError(Reason::Protocol, "padding longer than the frame"))?;
        let end_stream = head.has(flag::END_STREAM);
        if len == 0 && !end_stream {
            self.glitch()?;
        }
        let Some(s) = self.streams.iter_mut().find(|s| s.id == head.stream) else {
            // On a stream closed (or reset) here, frames the client sent before it knew are
            // dropped (§5.1), their credit given back.
            self.recv_unacked += len;
            return self.not_open(head.stream);
        };
        if !s.remote_open {
            self.recv_unacked += len;
            let id = s.id;
            self.reset(id, Reason::StreamClosed);
            return Ok(());
        }
        s.recv_credit -= len as i64;
        // Padding is never read by the handler: its credit goes back at once.
        let data = payload.slice(start..end);
        self.recv_unacked += len - data.len();
        s.recv_unacked += len - data.len();
        s.received += data.len() as u64;
        if s.recv_credit < 0 {
            let id = s.id;
            self.recv_unacked += data.len();
            self.reset(id, Reason::FlowControl);
            return Ok(());
        }
        let too_long = s.declared.is_some_and(|d| s.received > d);
        let too_short = end_stream && s.declared.is_some_and(|d| s.received != d);
        if too_long || too_short {
            let id = s.id;
            self.recv_unacked += data.len();
            if let Some(inbox) = &s.inbox {
                inbox.fail(|| BodyError::Length);
            }
            self.reset(id, Reason::Protocol);
            return Ok(());
        }
        let taken = match &s.inbox {
            Some(inbox) if !data.is_empty() => inbox.push(data.clone(), cx.waker()),
            _ => false,
        };
        if !taken {
            self.recv_unacked += data.len();
        }
        if end_stream {
            s.remote_open = false;
            if let Some(inbox) = &s.inbox {
                inbox.end(None);
            }
            self.close_if_done(head.stream);
        }
        Ok(())
    }

    fn headers(&mut self, head: Head, payload: Bytes) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError(Reason::Protocol, "HEADERS on stream 0"));
        }
        let (mut start, end) = frame::unpadded(&head, &payload)
            .ok_or(ConnError(Reason::Protocol, "padding longer than the frame"))?;
        if head.has(flag::PRIORITY) {
            start += 5;
            if start > end {
                return Err(ConnError(
                    Reason::FrameSize,
                    "HEADERS too short for its priority",
                ));
            }
        }
        let end_stream = head.has(flag::END_STREAM);
        if head.has(flag::END_HEADERS) {
            return self.block_done(head.stream, end_stream, &payload[start..end]);
        }
        self.continuing = Some(Block {
            stream: head.stream,
            end_stream,
            bytes: payload[start..end].to_vec(),
        });
        Ok(())
    }

    fn continuation(&mut self, head: Head, payload: Bytes) -> Result<(), ConnError> {
        let Some(block) = &mut self.continuing else {
            return Err(ConnError(Reason::Protocol, "CONTINUATION without HEADERS"));
        };
        if block.stream != head.stream {
            return Err(ConnError(
                Reason::Protocol,
                "CONTINUATION of another stream",
            ));
        }
        // A block may not grow past what its decoded list may hold, with room for framing:
        // endless CONTINUATION frames cannot take memory.
        if block.bytes.len() + payload.len() > self.max_list + DEFAULT_MAX_FRAME {
            return Err(ConnError(
                Reason::EnhanceYourCalm,
                "a header block too large",
            ));
        }
        block.bytes.extend_from_slice(&payload);
        if head.has(flag::END_HEADERS) {
            let block = self.continuing.take().expect("a block is being gathered");
            return self.block_done(block.stream, block.end_stream, &block.bytes);
        }
        Ok(())
    }

    /// A whole header block: a new request, or a request's trailers.
    fn block_done(&mut self, id: u32, end_stream: bool, block: &[u8]) -> Result<(), ConnError> {
        if let Some(s) = self.streams.iter_mut().find(|s| s.id == id) {
            let decoded = request::trailers(&mut self.decoder, block, self.max_list);
            let open = s.remote_open;
            return match decoded {
                Err(BlockError::Compression) => Err(ConnError(Reason::Compression, "bad HPACK")),
                Ok(trailers) if open && end_stream => {
                    s.remote_open = false;
                    if let Some(inbox) = &s.inbox {
                        inbox.end(Some(trailers));
                    }
                    self.close_if_done(id);
                    Ok(())
                }
                _ => {
                    let reason = if open {
                        Reason::Protocol
                    } else {
                        Reason::StreamClosed
                    };
                    self.reset(id, reason);
                    Ok(())
                }
            };
        }
        if id.is_multiple_of(2) {
            return Err(ConnError(
                Reason::Protocol,
                "a client stream with an even id",
            ));
        }
        if id <= self.last_stream {
            // A stream closed here (reset, or answered while the client was still sending):
            // trailers the client sent before it knew are decoded, for the table, and dropped.
            return match request::trailers(&mut self.decoder, block, self.max_list) {
                Err(BlockError::Compression) => Err(ConnError(Reason::Compression, "bad HPACK")),
                _ => Ok(()),
            };
        }
        self.last_stream = id;
        // Decoded even when refused: the decoder's table must follow the client's.
        let decoded = request::request(&mut self.decoder, block, self.max_list);
        if let Err(BlockError::Compression) = decoded {
            return Err(ConnError(Reason::Compression, "bad HPACK"));
        }
        if self.going_away {
            return Ok(());
        }
        if self.streams.len() >= MAX_STREAMS {
            frame::rst_stream(&mut self.write, id, Reason::RefusedStream);
            return self.glitch();
        }
        match decoded {
            // A body announced and never sent (§8.1.1): forwarded, the backend would wait for
            // it, and take the connection's next request for it.
            Ok(head) if end_stream && head.length.is_some_and(|n| n > 0) => {
                debug!(
                    stream = id,
                    "HTTP/2 request with a content-length and no body"
                );
                frame::rst_stream(&mut self.write, id, Reason::Protocol);
                self.glitch()?;
            }
            Ok(head) => self.open(id, head, end_stream),
            Err(BlockError::TooLarge) => {
                let mut response = Response::new(full(""));
                *response.status_mut() = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
                self.add_stream(id, Out::Done, end_stream, None, None, false);
                self.respond(id, response);
            }
            Err(BlockError::Malformed(why)) => {
                debug!(stream = id, %why, "malformed HTTP/2 request");
                frame::rst_stream(&mut self.write, id, Reason::Protocol);
                self.glitch()?;
            }
            Err(BlockError::Compression) => unreachable!("returned above"),
        }
        Ok(())
    }

    /// Opens a stream for a request and starts its handler.
    fn open(&mut self, id: u32, head: request::Head, end_stream: bool) {
        let (inbox, body) = if end_stream {
            (None, ClientBody::empty())
        } else {
            let (inbox, body) = recv_body::channel(head.length, CREDIT_BATCH);
            (Some(inbox), ClientBody::h2(body))
        };
        let is_head = head.request.method() == Method::HEAD;
        let req = head.request.map(|()| body);
        let (shared, info) = (self.shared.clone(), self.info.clone());
        // The handler's future is made in its box (its state is several KiB).
        let handling: Handling = Box::pin(async move {
            let Ok(response) = handler::handle(shared, info, req).await;
            response
        });
        let (abort, registration) = AbortHandle::new_pair();
        self.answers.push(Answer {
            stream: id,
            handling: Abortable::new(handling, registration),
        });
        let out = Out::Handling(abort);
        self.add_stream(id, out, end_stream, inbox, head.length, is_head);
    }

    /// A new stream, its response at `out`.
    fn add_stream(
        &mut self,
        id: u32,
        out: Out,
        end_stream: bool,
        inbox: Option<Inbox>,
        declared: Option<u64>,
        head: bool,
    ) {
        self.streams.push(Stream {
            id,
            out,
            head,
            remote_open: !end_stream,
            inbox,
            recv_credit: i64::from(STREAM_WINDOW),
            recv_unacked: 0,
            declared,
            received: 0,
            send_credit: self.peer.initial_window,
            _busy: self.info.conn.request(),
        });
    }

    fn rst_stream(&mut self, head: Head) -> Result<(), ConnError> {
        if head.len != 4 {
            return Err(ConnError(Reason::FrameSize, "a bad RST_STREAM"));
        }
        if head.stream == 0 {
            return Err(ConnError(Reason::Protocol, "RST_STREAM on stream 0"));
        }
        let Some(pos) = self.streams.iter().position(|s| s.id == head.stream) else {
            return self.not_open(head.stream);
        };
        let s = self.streams.swap_remove(pos);
        self.drop_stream(s);
        // A stream reset before its response is done is work thrown away.
        self.glitch()
    }

    fn settings(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream != 0 {
            return Err(ConnError(Reason::Protocol, "SETTINGS on a stream"));
        }
        if head.has(flag::ACK) {
            return match head.len {
                0 => Ok(()),
                _ => Err(ConnError(
                    Reason::FrameSize,
                    "a SETTINGS ACK with a payload",
                )),
            };
        }
        if !head.len.is_multiple_of(6) {
            return Err(ConnError(Reason::FrameSize, "a SETTINGS of a bad length"));
        }
        for pair in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([pair[0], pair[1]]);
            let value = u32::from_be_bytes([pair[2], pair[3], pair[4], pair[5]]);
            match id {
                setting::INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > MAX_WINDOW {
                        return Err(ConnError(
                            Reason::FlowControl,
                            "an initial window too large",
                        ));
                    }
                    let delta = i64::from(value) - self.peer.initial_window;
                    self.peer.initial_window = i64::from(value);
                    for s in &mut self.streams {
                        s.send_credit += delta;
                        if s.send_credit > MAX_WINDOW {
                            return Err(ConnError(Reason::FlowControl, "a window past 2^31-1"));
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    if !(DEFAULT_MAX_FRAME as u32..1 << 24).contains(&value) {
                        return Err(ConnError(Reason::Protocol, "a bad max frame size"));
                    }
                    self.peer.max_frame = value as usize;
                }
                setting::ENABLE_PUSH if value > 1 => {
                    return Err(ConnError(Reason::Protocol, "a bad ENABLE_PUSH"));
                }
                // No dynamic table is used to encode, so its size does not matter; nor do
                // the client's stream and header list limits (no stream is pushed, response
                // heads are the backends').
                setting::HEADER_TABLE_SIZE
                | setting::ENABLE_PUSH
                | setting::MAX_CONCURRENT_STREAMS
                | setting::MAX_HEADER_LIST_SIZE => {}
                _ => {}
            }
        }
        frame::head(&mut self.write, 0, kind::SETTINGS, flag::ACK, 0);
        Ok(())
    }

    fn window_update(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.len != 4 {
            return Err(ConnError(Reason::FrameSize, "a bad WINDOW_UPDATE"));
        }
        let increment = i64::from(frame::u31(payload));
        if head.stream == 0 {
            if increment == 0 {
                return Err(ConnError(
                    Reason::Protocol,
                    "a zero connection window update",
                ));
            }
            self.send_credit += increment;
            if self.send_credit > MAX_WINDOW {
                return Err(ConnError(
                    Reason::FlowControl,
                    "a connection window past 2^31-1",
                ));
            }
            return Ok(());
        }
        let Some(s) = self.stream(head.stream) else {
            return self.not_open(head.stream);
        };
        s.send_credit += increment;
        if increment == 0 || s.send_credit > MAX_WINDOW {
            let reason = if increment == 0 {
                Reason::Protocol
            } else {
                Reason::FlowControl
            };
            self.reset(head.stream, reason);
        }
        Ok(())
    }

    /// Counts a frame that made no progress; too many of them end the connection.
    fn glitch(&mut self) -> Result<(), ConnError> {
        self.glitches += 1;
        if self.glitches > GLITCH_ALLOWANCE && self.glitches > self.completed {
            return Err(ConnError(
                Reason::EnhanceYourCalm,
                "too many resets or empty frames",
            ));
        }
        Ok(())
    }

    /// Resets a stream from this side.
    fn reset(&mut self, id: u32, reason: Reason) {
        frame::rst_stream(&mut self.write, id, reason);
        if let Some(pos) = self.streams.iter().position(|s| s.id == id) {
            let s = self.streams.swap_remove(pos);
            self.drop_stream(s);
        }
    }

    /// Forgets a stream: its handler is stopped, its request body fails if still read, and
    /// what it held of the connection's credit is given back.
    fn drop_stream(&mut self, s: Stream) {
        if let Out::Handling(abort) = &s.out {
            abort.abort();
        }
        if let Some(inbox) = &s.inbox {
            inbox.fail(|| BodyError::Reset);
            let (consumed, _) = inbox.take_consumed();
            self.recv_unacked += consumed;
        }
    }

    /// A stream both sides are done with is forgotten; one whose response is done while the
    /// client still sends is reset with NO_ERROR (§8.1).
    fn close_if_done(&mut self, id: u32) {
        let Some(pos) = self.streams.iter().position(|s| s.id == id) else {
            return;
        };
        let s = &self.streams[pos];
        if matches!(s.out, Out::Handling(_) | Out::Body { .. }) {
            return;
        }
        let s = self.streams.swap_remove(pos);
        if s.remote_open {
            frame::rst_stream(&mut self.write, id, Reason::NoError);
        }
        self.completed += 1;
        self.drop_stream(s);
    }

    /// Sends a handler's response head (and the body's first bytes, if ready).
    fn respond(&mut self, id: u32, response: Response<ProxyBody>) {
        let (parts, body) = response.into_parts();
        let Some(head_request) = self.stream(id).map(|s| s.head) else {
            return;
        };
        let no_body = head_request
            || body.is_end_stream()
            || matches!(parts.status.as_u16(), 204 | 304)
            || parts.status.is_informational();
        let length = body.size_hint().exact().filter(|_| !body.is_end_stream());
        self.block.clear();
        response::head(&parts, length, &mut self.block);
        let end = if no_body { flag::END_STREAM } else { 0 };
        write_block(&mut self.write, id, end, &self.block, self.peer.max_frame);
        if no_body {
            self.finish(id);
        } else if let Some(s) = self.stream(id) {
            s.out = Out::Body {
                body,
                pending: Bytes::new(),
                last: false,
            };
        }
    }

    /// The response of stream `id` is sent whole.
    fn finish(&mut self, id: u32) {
        if let Some(s) = self.stream(id) {
            s.out = Out::Done;
        }
        self.close_if_done(id);
    }

    /// Sends what the response bodies have ready, within the flow-control windows; `true` if
    /// anything was sent or ended.
    fn send_bodies(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        let mut ended = Vec::new();
        let mut out = Outbound {
            write: &mut self.write,
            block: &mut self.block,
            send_credit: &mut self.send_credit,
            max_frame: self.peer.max_frame,
        };
        for s in &mut self.streams {
            if let Out::Body { .. } = s.out {
                let (sent, end) = out.body(s, cx);
                progress |= sent || end.is_some();
                if let Some(end) = end {
                    ended.push((s.id, end));
                }
            }
        }
        for (id, end) in ended {
            match end {
                Ok(()) => self.finish(id),
                Err(reason) => self.reset(id, reason),
            }
        }
        progress
    }

    /// A response has waited for the client's flow-control credit for the client timeout (a
    /// client that stops granting credit would otherwise hold its streams, and their backend
    /// connections, for good: no write is pending, so the send timeout does not see it).
    fn credit_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let conn_blocked = self.send_credit <= 0;
        let waiting = self.streams.iter().any(|s| {
            matches!(&s.out, Out::Body { pending, .. } if !pending.is_empty())
                && (conn_blocked || s.send_credit <= 0)
        });
        if !waiting {
            self.stalled = None;
            return false;
        }
        let timeout = self.client_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        stalled.as_mut().poll(cx).is_ready()
    }

    /// Gives back the credit of what the handlers read (or dropped), in batches.
    fn give_credit(&mut self) {
        for s in &mut self.streams {
            let Some((consumed, gone)) = s.inbox.as_ref().map(Inbox::take_consumed) else {
                continue;
            };
            s.recv_unacked += consumed;
            self.recv_unacked += consumed;
            if gone {
                s.inbox = None;
            }
            if s.remote_open && s.recv_unacked >= CREDIT_BATCH {
                frame::window_update(&mut self.write, s.id, s.recv_unacked as u32);
                s.recv_credit += s.recv_unacked as i64;
                s.recv_unacked = 0;
            }
        }
        if self.recv_unacked >= CONN_WINDOW as usize / 2 {
            frame::window_update(&mut self.write, 0, self.recv_unacked as u32);
            self.recv_credit += self.recv_unacked as i64;
            self.recv_unacked = 0;
        }
    }

    /// The connection ended: bodies still being read fail.
    fn fail_bodies(&mut self) {
        for s in &self.streams {
            if let Some(inbox) = &s.inbox {
                inbox.fail(|| BodyError::Closed);
            }
        }
    }
}

/// Stream credit goes back once half a stream window is read.
const CREDIT_BATCH: usize = STREAM_WINDOW as usize / 2;

/// Where response bodies' frames go: the connection's write buffer and send credit.
struct Outbound<'c> {
    write: &'c mut Vec<u8>,
    block: &'c mut Vec<u8>,
    send_credit: &'c mut i64,
    max_frame: usize,
}

impl Outbound<'_> {
    /// Sends what `s`'s body has ready: whether anything was sent, and how the body ended
    /// (`Some(Ok)`: whole, END_STREAM sent; `Some(Err)`: failed, the stream to reset).
    fn body(&mut self, s: &mut Stream, cx: &mut Context<'_>) -> (bool, Option<Result<(), Reason>>) {
        let Out::Body {
            body,
            pending,
            last,
        } = &mut s.out
        else {
            return (false, None);
        };
        let mut sent = false;
        while self.write.len() < WRITE_HIGH {
            if !pending.is_empty() {
                let n = pending
                    .len()
                    .min(self.max_frame)
                    .min(s.send_credit.max(0) as usize)
                    .min((*self.send_credit).max(0) as usize);
                if n == 0 {
                    break;
                }
                let chunk = pending.split_to(n);
                let fin = *last && pending.is_empty();
                let flags = if fin { flag::END_STREAM } else { 0 };
                frame::head(self.write, n, kind::DATA, flags, s.id);
                self.write.extend_from_slice(&chunk);
                s.send_credit -= n as i64;
                *self.send_credit -= n as i64;
                sent = true;
                if fin {
                    return (true, Some(Ok(())));
                }
                continue;
            }
            let frame = match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => None,
                Poll::Ready(Some(Err(e))) => {
                    debug!(error = %e, stream = s.id, "response body failed");
                    return (sent, Some(Err(Reason::Internal)));
                }
                Poll::Ready(Some(Ok(frame))) => Some(frame),
            };
            match frame.map(hyper::body::Frame::into_data) {
                Some(Ok(data)) => {
                    *last = body.is_end_stream();
                    if !data.is_empty() || !*last {
                        *pending = data;
                        continue;
                    }
                }
                Some(Err(frame)) => {
                    let Ok(trailers) = frame.into_trailers() else {
                        continue;
                    };
                    self.block.clear();
                    response::trailers(&trailers, self.block);
                    write_block(
                        self.write,
                        s.id,
                        flag::END_STREAM,
                        self.block,
                        self.max_frame,
                    );
                    return (true, Some(Ok(())));
                }
                None => {}
            }
            // The end, with no data left: an empty DATA frame ends the stream.
            frame::head(self.write, 0, kind::DATA, flag::END_STREAM, s.id);
            return (true, Some(Ok(())));
        }
        (sent, None)
    }
}

/// Appends a header block as a HEADERS frame, continued in CONTINUATION frames past
/// `max_frame`.
fn write_block(dst: &mut Vec<u8>, id: u32, end_stream: u8, block: &[u8], max_frame: usize) {
    let mut chunks = block.chunks(max_frame).peekable();
    let mut kind = kind::HEADERS;
    let mut flags = end_stream;
    if block.is_empty() {
        frame::head(dst, 0, kind, flags | flag::END_HEADERS, id);
        return;
    }
    while let Some(chunk) = chunks.next() {
        if chunks.peek().is_none() {
            flags |= flag::END_HEADERS;
        }
        frame::head(dst, chunk.len(), kind, flags, id);
        dst.extend_from_slice(chunk);
        kind = kind::CONTINUATION;
        flags = 0;
    }
}
