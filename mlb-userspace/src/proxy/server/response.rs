//! Writing a response as hyper's HTTP/1 server does (same status line, header order, framing,
//! `date`, `connection` fix-ups), with the head and the body's first bytes in one write. A
//! backend's raw head ([`RawHead`]) is written as its lines: a header repeated around others
//! keeps the backend's order, where a map groups its values.
use std::{future::poll_fn, io, io::Write as _, pin::Pin, task::Poll};

use http::{HeaderMap, HeaderValue, Response, StatusCode, Version, header, response::Parts};
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tracing::debug;

use super::{date, h1::Conn};
use crate::proxy::{
    body::ProxyBody, headers::has_token, last_segment::LastSegment, raw_head::RawHead,
};

/// Body bytes gathered behind the head (or each other) before they are written.
const GATHER: usize = 64 * 1024;

/// What a response answers.
pub(super) struct Asked {
    /// A HEAD request: the response has no body.
    pub(super) head: bool,
    pub(super) version: Version,
    /// The client keeps the connection open after the response.
    pub(super) keep_alive: bool,
}

/// How a response body goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoder {
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0, length unknown).
    Close,
}

/// A body's length as known before it is read (`None` where used: the body is empty).
#[derive(Clone, Copy, Debug)]
enum BodyLength {
    Known(u64),
    Unknown,
}

/// A response hyper would not have written (conflicting lengths): the connection is closed.
#[derive(Debug)]
struct BadHead;

/// Writes `response` to the client. `Ok(true)`: the connection may serve another request.
pub(super) async fn write<I: AsyncRead + AsyncWrite + LastSegment + Unpin>(
    conn: &mut Conn<'_, I>,
    asked: &Asked,
    response: Response<ProxyBody>,
) -> io::Result<bool> {
    let (mut parts, mut body) = response.into_parts();
    let length = (!body.is_end_stream()).then(|| {
        body.size_hint()
            .exact()
            .map_or(BodyLength::Unknown, BodyLength::Known)
    });
    let Ok((encoder, last)) = encode_head(&mut parts, length, asked, &mut conn.write) else {
        conn.write.clear();
        return Ok(false);
    };
    let last = last || encoder == Encoder::Close;
    if encoder == Encoder::Length(0) {
        // A body not sent (HEAD, 204, 304, empty) is dropped, as hyper does.
        drop(body);
        if last {
            conn.io.hold_until_shutdown();
        }
        conn.send().await?;
        return Ok(!last);
    }
    let whole = write_body(conn, &mut body, encoder, last).await?;
    Ok(whole && !last)
}

/// Writes the body behind the head gathered in `conn.write`; the `last` response's final
/// bytes wait for the connection's FIN. `Ok(false)`: it failed, did not match its announced
/// length (the client cannot tell where the next response starts), or the client left.
async fn write_body<I: AsyncRead + AsyncWrite + LastSegment + Unpin>(
    conn: &mut Conn<'_, I>,
    body: &mut ProxyBody,
    encoder: Encoder,
    last: bool,
) -> io::Result<bool> {
    let mut left = match encoder {
        Encoder::Length(n) => Some(n),
        _ => None,
    };
    loop {
        // A frame ready now joins what is gathered; otherwise what is gathered goes first.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                conn.send().await?;
                let next = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
                match conn.unless_gone(next).await {
                    Some(frame) => frame,
                    None => return Ok(false),
                }
            }
        };
        let mut data = match frame {
            None => break,
            Some(Err(e)) => {
                debug!(error = %e, "response body failed");
                conn.send().await?;
                return Ok(false);
            }
            // Trailers are not forwarded to HTTP/1 clients.
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        if let Some(left) = &mut left {
            if data.len() as u64 > *left {
                // More than announced: cut at the length, and close.
                data.truncate(*left as usize);
                conn.write.extend_from_slice(&data);
                conn.send().await?;
                return Ok(false);
            }
            *left -= data.len() as u64;
        }
        let chunked = encoder == Encoder::Chunked;
        if chunked {
            // Into the gathered bytes directly: no string made per chunk.
            let _ = write!(conn.write, "{:x}\r\n", data.len());
        }
        if conn.write.len() + data.len() > GATHER {
            conn.send().await?;
            conn.io.write_all(&data).await?;
        } else {
            conn.write.extend_from_slice(&data);
        }
        if chunked {
            conn.write.extend_from_slice(b"\r\n");
        }
    }
    if encoder == Encoder::Chunked {
        conn.write.extend_from_slice(b"0\r\n\r\n");
    }
    if last {
        conn.io.hold_until_shutdown();
    }
    conn.send().await?;
    Ok(left.is_none_or(|left| left == 0))
}

/// Encodes the status line and headers into `dst`: the body's encoder, and whether the
/// connection ends after this response.
fn encode_head(
    parts: &mut Parts,
    mut length: Option<BodyLength>,
    asked: &Asked,
    dst: &mut Vec<u8>,
) -> Result<(Encoder, bool), BadHead> {
    let mut keep_alive = asked.keep_alive;
    let version = enforce_version(parts, asked, &mut keep_alive);
    if parts.status.is_informational() {
        // hyper sends no 1xx as a response: a 500 without headers instead.
        parts.status = StatusCode::INTERNAL_SERVER_ERROR;
        parts.headers.clear();
        parts.extensions.remove::<RawHead>();
        (length, keep_alive) = (None, false);
    }
    let status = parts.status;
    if version == Version::HTTP_11 && status == StatusCode::OK {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(match version {
            Version::HTTP_10 => b"HTTP/1.0 ",
            _ => b"HTTP/1.1 ",
        });
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    let no_content = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let can_chunk = version != Version::HTTP_10 && !asked.head && !no_content;
    let head = Head {
        length,
        can_chunk,
        head: asked.head,
    };
    // The backend's own lines first (then nothing else has a `content-length`): as a map's
    // headers are written, its `content-length` only where the map's would be.
    let (raw_date, raw_length) = match parts.extensions.get::<RawHead>() {
        Some(raw) => raw.write(dst, asked.head || head.length.is_some()),
        None => (false, None),
    };
    let (encoder, wrote_date, close) = head.headers(&parts.headers, dst)?;
    let raw_encoder = raw_length.map(|len| Encoder::Length(head.announced(len)));
    let (encoder, wrote_date) = (encoder.or(raw_encoder), wrote_date || raw_date);
    let encoder = match encoder {
        Some(encoder) => encoder,
        None => head.implicit_length(no_content, dst),
    };
    let encoder = if asked.head || no_content {
        Encoder::Length(0)
    } else {
        encoder
    };
    if !wrote_date {
        dst.extend_from_slice(b"date: ");
        date::extend(dst);
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    Ok((encoder, close || !keep_alive))
}

/// hyper's fix-ups of the response to the client's version: the version of the status line.
fn enforce_version(parts: &mut Parts, asked: &Asked, keep_alive: &mut bool) -> Version {
    let connection = parts.headers.get_all(header::CONNECTION);
    if asked.version != Version::HTTP_10 {
        if !*keep_alive && !connection.iter().any(|v| has_token(v, "close")) {
            let close = HeaderValue::from_static("close");
            parts.headers.append(header::CONNECTION, close);
        }
        return parts.version;
    }
    if !connection.iter().any(|v| has_token(v, "keep-alive")) {
        match parts.version {
            Version::HTTP_10 => *keep_alive = false,
            Version::HTTP_11 if *keep_alive => {
                let keep = HeaderValue::from_static("keep-alive");
                parts.headers.append(header::CONNECTION, keep);
            }
            _ => {}
        }
    }
    Version::HTTP_10
}

/// What the headers' encoding depends on.
struct Head {
    length: Option<BodyLength>,
    can_chunk: bool,
    head: bool,
}

impl Head {
    /// Writes every header line (values of `connection`, `transfer-encoding`, `trailer`
    /// joined on one): the encoder the headers set, whether a `date` was among them, and
    /// whether `connection` asks to close.
    fn headers(
        &self,
        headers: &HeaderMap,
        dst: &mut Vec<u8>,
    ) -> Result<(Option<Encoder>, bool, bool), BadHead> {
        let (mut encoder, mut wrote_date, mut close) = (None, false, false);
        for name in headers.keys() {
            let all = headers.get_all(name);
            let values = all.iter();
            match *name {
                header::CONTENT_LENGTH => {
                    if encoder.is_some() {
                        return Err(BadHead);
                    }
                    let Some(len) = self.content_length(values, dst)? else {
                        continue;
                    };
                    encoder = Some(Encoder::Length(len));
                }
                header::TRANSFER_ENCODING => {
                    if encoder.is_some() {
                        return Err(BadHead);
                    }
                    if !self.can_chunk {
                        continue;
                    }
                    let last = all.iter().next_back();
                    joined(dst, name.as_str(), values);
                    if !last.is_some_and(|v| has_token(v, "chunked")) {
                        // hyper ends the line with `, chunked` then: remove the `\r\n`.
                        dst.truncate(dst.len() - 2);
                        dst.extend_from_slice(b", chunked\r\n");
                    }
                    encoder = Some(Encoder::Chunked);
                }
                header::CONNECTION => {
                    close = all.iter().any(|v| has_token(v, "close"));
                    joined(dst, name.as_str(), values);
                }
                header::TRAILER if !self.can_chunk => {}
                header::TRAILER => joined(dst, name.as_str(), values),
                _ => {
                    wrote_date |= *name == header::DATE;
                    for value in values {
                        line(dst, name.as_str(), value.as_bytes());
                    }
                }
            }
        }
        Ok((encoder, wrote_date, close))
    }

    /// Writes the response's `content-length` where hyper does: the length it sets, if any.
    fn content_length<'a>(
        &self,
        mut values: impl Iterator<Item = &'a HeaderValue>,
        dst: &mut Vec<u8>,
    ) -> Result<Option<u64>, BadHead> {
        let Some(first) = values.next() else {
            return Ok(None);
        };
        let len = match self.length {
            Some(BodyLength::Unknown) => {
                let parse = |v: &HeaderValue| v.to_str().ok().and_then(|s| s.parse::<u64>().ok());
                let len = parse(first).ok_or(BadHead)?;
                if values.any(|v| parse(v) != Some(len)) {
                    return Err(BadHead);
                }
                len
            }
            // An empty body: the header stays on a HEAD response only.
            None if !self.head => return Ok(None),
            _ => self.announced(0),
        };
        line(dst, "content-length", first.as_bytes());
        Ok(Some(len))
    }

    /// The length a kept `content-length` header sets: the body's if known, else `header`'s
    /// (the value of the header, parsed), 0 for no body (a HEAD response).
    fn announced(&self, header: u64) -> u64 {
        match self.length {
            Some(BodyLength::Known(n)) => n,
            Some(BodyLength::Unknown) => header,
            None => 0,
        }
    }

    /// The framing of a response whose headers set none (and its header).
    fn implicit_length(&self, no_content: bool, dst: &mut Vec<u8>) -> Encoder {
        match self.length {
            Some(BodyLength::Unknown) if self.can_chunk => {
                dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Encoder::Chunked
            }
            // HTTP/1.0 (a HEAD or 204/304 response sends no body anyway).
            Some(BodyLength::Unknown) => Encoder::Close,
            None | Some(BodyLength::Known(0)) => {
                if !no_content && !self.head {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
                Encoder::Length(0)
            }
            Some(BodyLength::Known(len)) => {
                if !no_content {
                    line(dst, "content-length", len.to_string().as_bytes());
                }
                Encoder::Length(len)
            }
        }
    }
}

fn line(dst: &mut Vec<u8>, name: &str, value: &[u8]) {
    dst.extend_from_slice(name.as_bytes());
    dst.extend_from_slice(b": ");
    dst.extend_from_slice(value);
    dst.extend_from_slice(b"\r\n");
}

/// One header line of every value of a header, comma-separated.
fn joined<'a>(dst: &mut Vec<u8>, name: &str, values: impl Iterator<Item = &'a HeaderValue>) {
    dst.extend_from_slice(name.as_bytes());
    dst.extend_from_slice(b": ");
    for (i, value) in values.enumerate() {
        if i > 0 {
            dst.extend_from_slice(b", ");
        }
        dst.extend_from_slice(value.as_bytes());
    }
    dst.extend_from_slice(b"\r\n");
}
