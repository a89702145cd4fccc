//! A small HTTP/1.1 client for plain backends, driven by the request's own task (Pingora's
//! shape): check a pooled connection out, write the request with one write, read and parse the
//! response head, and hand the response back with a body ([`H1Body`]) read straight from the
//! connection by whoever polls it. No task per connection, no channel between the request and
//! its connection.
//!
//! Used for the common case only (see `Upstream::send`): HTTP/1.1 without TLS, `send-proxy` or
//! an upgrade, and a request body of known, small size, which is sent with the head and can be
//! sent again. A reused connection that fails before any response byte (the backend closed it
//! as it was reused) is retried once on a new connection for idempotent methods.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Buf as _, Bytes, BytesMut};
use http::{Method, Response, StatusCode, Version, header};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tracing::debug;

use super::{Attempt, Outgoing, pool::Pool};
use crate::proxy::upstream::framing::{Framing, H1Body};
use crate::proxy::{
    head::{SharedHead, header_slots},
    headers::has_token,
    raw_head::{Fields, Length, RawHead},
    send_turn::end_of_turn,
};

/// Largest request body sent this way (read whole before sending, and kept for a retry).
pub(crate) const MAX_BUFFERED_BODY: u64 = 64 * 1024;
/// First read buffer of a response (hyper's too).
const INIT_BUFFER: usize = 8192;
/// Largest response head: hyper's default read buffer limit.
pub(crate) const MAX_HEAD: usize = 8192 + 4096 * 100;

/// One worker's HTTP/1.1 client.
pub(crate) struct H1Client {
    pool: Arc<Pool>,
    connect: Duration,
}

/// Why an exchange failed: before any response byte on a reused connection it may be retried.
enum Failure {
    BeforeResponse(String),
    Other(String),
}

impl H1Client {
    pub(crate) fn new(pool: Arc<Pool>, connect: Duration) -> H1Client {
        H1Client { pool, connect }
    }

    /// Sends `out` with `body` to `addr` (whose authority is the Host of a request without one).
    pub(crate) async fn send(
        &self,
        out: &Outgoing,
        authority: &str,
        addr: SocketAddr,
        body: &Bytes,
    ) -> Result<Response<H1Body>, Attempt> {
        let request = encode(out, authority, body);
        let head_only = out.method == Method::HEAD;
        let wanted = Wanted {
            head_only,
            raw: out.raw_response,
        };
        if let Some((stream, buf)) = self.pool.checkout(addr) {
            match self.exchange(stream, buf, addr, &request, wanted).await {
                Ok(response) => return Ok(response),
                Err(Failure::BeforeResponse(e)) if out.method.is_idempotent() => {
                    debug!(%addr, error = %e, "reused backend connection failed; retrying on a new one");
                }
                Err(Failure::BeforeResponse(e) | Failure::Other(e)) => {
                    return Err(Attempt::Failed(e));
                }
            }
        }
        let stream = self.connect(addr).await?;
        let buf = BytesMut::with_capacity(INIT_BUFFER);
        self.exchange(stream, buf, addr, &request, wanted)
            .await
            .map_err(|(Failure::BeforeResponse(e) | Failure::Other(e))| Attempt::Failed(e))
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, Attempt> {
        let stream = tokio::time::timeout(self.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| Attempt::Connect("connect timeout".into()))?
            .map_err(|e| Attempt::Connect(e.to_string()))?;
        // Heads and small bodies go out at once, not after the peer's delayed ACK.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn exchange(
        &self,
        mut stream: TcpStream,
        mut buf: BytesMut,
        addr: SocketAddr,
        request: &[u8],
        wanted: Wanted,
    ) -> Result<Response<H1Body>, Failure> {
        end_of_turn().await;
        if let Err(e) = stream.write_all(request).await {
            return Err(Failure::BeforeResponse(format!("sending the request: {e}")));
        }
        loop {
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(INIT_BUFFER);
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) if buf.is_empty() => {
                    return Err(Failure::BeforeResponse("closed before responding".into()));
                }
                Ok(0) => return Err(Failure::Other("closed in the response head".into())),
                Ok(_) => {}
                Err(e) if buf.is_empty() => {
                    return Err(Failure::BeforeResponse(format!(
                        "reading the response: {e}"
                    )));
                }
                Err(e) => return Err(Failure::Other(format!("reading the response: {e}"))),
            }
            // Interim (1xx) responses are skipped: the final one follows on the connection. A
            // head is looked for in the first MAX_HEAD bytes only.
            loop {
                let window = buf.len().min(MAX_HEAD);
                let Some(head) = parse_head(&buf[..window], wanted).map_err(Failure::Other)? else {
                    break;
                };
                buf.advance(head.len);
                if head.response.status().is_informational() {
                    continue;
                }
                let conn = (stream, buf, addr, self.pool.clone());
                return Ok(H1Body::response(
                    head.response,
                    head.framing,
                    head.reuse,
                    conn,
                ));
            }
            if buf.len() >= MAX_HEAD {
                return Err(Failure::Other(format!(
                    "response head longer than {MAX_HEAD} bytes"
                )));
            }
        }
    }
}

/// The request as one buffer: request line, headers (a `Host` from the backend's authority if
/// the client sent none, a `Content-Length` for a body without one), body.
fn encode(out: &Outgoing, authority: &str, body: &Bytes) -> Vec<u8> {
    let headers_len: usize = out
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    let target = out.path_and_query.as_str();
    let mut buf = Vec::with_capacity(
        out.method.as_str().len() + target.len() + headers_len + 64 + body.len(),
    );
    for part in [out.method.as_str(), " ", target, " HTTP/1.1\r\n"] {
        buf.extend_from_slice(part.as_bytes());
    }
    if !out.headers.contains_key(header::HOST) {
        line(&mut buf, b"host", authority.as_bytes());
    }
    for (name, value) in &out.headers {
        line(&mut buf, name.as_str().as_bytes(), value.as_bytes());
    }
    if !body.is_empty() && !out.headers.contains_key(header::CONTENT_LENGTH) {
        line(
            &mut buf,
            b"content-length",
            body.len().to_string().as_bytes(),
        );
    }
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(body);
    buf
}

fn line(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    buf.extend_from_slice(name);
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value);
    buf.extend_from_slice(b"\r\n");
}

/// What the response answers, and how its head is wanted.
#[derive(Clone, Copy)]
struct Wanted {
    /// A HEAD request: the response has no body.
    head_only: bool,
    /// Its header lines as they came ([`RawHead`]) rather than a map, if they allow it.
    raw: bool,
}

/// A parsed response head.
struct Head {
    response: Response<()>,
    framing: Framing,
    /// The connection may carry another request after this response's body.
    reuse: bool,
    /// Bytes of the head.
    len: usize,
}

/// The response head at the start of `buf`; `None` if it is not complete yet. Not async: the
/// header array lives on the stack only while parsing.
fn parse_head(buf: &[u8], wanted: Wanted) -> Result<Option<Head>, String> {
    let mut slots = header_slots();
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    let status = StatusCode::from_u16(parsed.code.unwrap_or(0))
        .map_err(|e| format!("bad response status: {e}"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err("protocol switch to a request without an upgrade".into());
    }
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    let headers = &*parsed.headers;
    let (framing, reuse) = if let Some(fields) = Fields::of(headers) {
        let (framing, length) = framing_of(status, wanted, &fields)?;
        if wanted.raw {
            let raw = RawHead::of(&buf[..len], headers, &fields, &length);
            response.extensions_mut().insert(raw);
        } else {
            let head = SharedHead::copy(buf, len);
            *response.headers_mut() = fields.forwarded_map(&head, headers, &length)?;
        }
        (framing, keep_alive(version, |t| fields.lists(t.as_bytes())))
    } else {
        // Out of the common case: every header into a map, the hop-by-hop ones stripped by
        // the handler.
        let mut map = SharedHead::copy(buf, len).map(headers, |_| true)?;
        let framing = Framing::of(status, wanted.head_only, &mut map)?;
        let keep_alive = keep_alive(version, |token| {
            map.get_all(header::CONNECTION)
                .iter()
                .any(|v| has_token(v, token))
        });
        *response.headers_mut() = map;
        (framing, keep_alive)
    };
    Ok(Some(Head {
        response,
        framing,
        reuse: reuse && framing != Framing::Close,
        len,
    }))
}

/// A response's framing from the `fields` of its head, and what it decided of its
/// `Content-Length`.
fn framing_of(
    status: StatusCode,
    wanted: Wanted,
    fields: &Fields<'_>,
) -> Result<(Framing, Length), String> {
    let te = fields.transfer_encoding;
    let lengths = fields.content_length.into_iter();
    let (framing, dropped) = Framing::decide(status, wanted.head_only, te, lengths)?;
    let value = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    Ok((framing, Length { value, dropped }))
}

/// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 only when told `keep-alive`.
/// `has` tells whether the `Connection` header lists a token.
fn keep_alive(version: Version, has: impl Fn(&str) -> bool) -> bool {
    match version {
        Version::HTTP_11 => !has("close"),
        _ => has("keep-alive"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{HeaderMap, HeaderValue};
    use http_body_util::BodyExt as _;
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::upstream::{Profile, pool::IDLE_TIMEOUT};

    /// What the test backend does with a request: answer in pieces (a short pause between
    /// them, so the proxy reads them separately), or close the connection unanswered.
    type Script = fn(conn: usize, path: &str) -> Option<Vec<&'static [u8]>>;

    /// A raw HTTP/1.1 backend following `script`; its address and accepted-connection count.
    async fn backend(script: Script) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, conn, script));
            }
        });
        (addr, accepted)
    }

    async fn serve(mut stream: TcpStream, conn: usize, script: Script) {
        let mut buf = Vec::new();
        loop {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let Some(pieces) = script(conn, &path) else {
                return;
            };
            for piece in pieces {
                if stream.write_all(piece).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if path == "/eof" {
                return;
            }
        }
    }

    fn request(method: Method, path: &str) -> Outgoing {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("app.example"));
        Outgoing {
            method,
            path_and_query: path.parse().unwrap(),
            headers,
            h2: false,
            upgrade: false,
            server_timeout: Duration::from_secs(5),
            profile: Profile {
                connect: Duration::from_secs(1),
                tls: None,
                sni: None,
            },
            send_proxy: None,
            maxconn: None,
            raw_response: false,
        }
    }

    fn client() -> H1Client {
        H1Client::new(Pool::new(IDLE_TIMEOUT), Duration::from_secs(1))
    }

    /// Status and whole body of a request (`Err`: the attempt failed).
    async fn fetch(
        c: &H1Client,
        addr: SocketAddr,
        method: Method,
        path: &str,
    ) -> Result<(u16, String), String> {
        let response = c
            .send(&request(method, path), "backend:1", addr, &Bytes::new())
            .await
            .map_err(|e| match e {
                Attempt::Connect(e) | Attempt::Failed(e) => e,
            })?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    }

    fn by_path(_conn: usize, path: &str) -> Option<Vec<&'static [u8]>> {
        Some(match path {
            "/chunked" => vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nab",
                b"c\r\n3\r\ndef\r",
                b"\n0\r\nx-trailer: dropped\r\n\r\n",
            ],
            "/empty" => vec![b"HTTP/1.1 204 No Content\r\n\r\n"],
            "/continue" => vec![
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            ],
            "/head" => vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"],
            "/slow" => vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345"],
            "/eof" => vec![b"HTTP/1.1 200 OK\r\n\r\nuntil", b" the end"],
            "/huge" => vec![
                b"HTTP/1.1 200 OK\r\nx-big: ",
                &[b'a'; MAX_HEAD],
                b"\r\n\r\n",
            ],
            _ => vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhel", b"lo"],
        })
    }

    #[tokio::test]
    async fn every_framing_is_decoded_and_the_connection_reused() {
        let (addr, accepted) = backend(by_path).await;
        let c = client();
        for (method, path, want) in [
            (Method::GET, "/", (200, "hello")),
            (Method::GET, "/chunked", (200, "abcdef")),
            (Method::GET, "/empty", (204, "")),
            (Method::HEAD, "/head", (200, "")),
            (Method::GET, "/continue", (200, "ok")),
            (Method::GET, "/", (200, "hello")),
        ] {
            let got = fetch(&c, addr, method, path).await.unwrap();
            assert_eq!((got.0, got.1.as_str()), want, "{path}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(c.pool.idle(), 1);
    }

    #[tokio::test]
    async fn a_close_delimited_body_ends_with_its_connection() {
        let (addr, accepted) = backend(by_path).await;
        let c = client();
        let got = fetch(&c, addr, Method::GET, "/eof").await.unwrap();
        assert_eq!(got, (200, "until the end".to_owned()));
        assert_eq!(c.pool.idle(), 0, "not reusable");
        assert_eq!(fetch(&c, addr, Method::GET, "/").await.unwrap().1, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_reused_connection_that_fails_before_answering_is_retried_once() {
        // The first connection answers once, then closes on the next request unanswered (a
        // backend whose keep-alive timeout fired as the request arrived).
        fn script(conn: usize, path: &str) -> Option<Vec<&'static [u8]>> {
            (conn > 0 || path == "/first").then(|| by_path(conn, "/").unwrap_or_default())
        }
        let (addr, accepted) = backend(script).await;
        let c = client();
        assert_eq!(
            fetch(&c, addr, Method::GET, "/first").await.unwrap().1,
            "hello"
        );
        assert_eq!(
            fetch(&c, addr, Method::GET, "/again").await.unwrap().1,
            "hello"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // Not for a method that must not run twice: a POST on a failing reused connection fails.
        let (addr, _) = backend(script).await;
        assert!(fetch(&c, addr, Method::GET, "/first").await.is_ok());
        assert!(fetch(&c, addr, Method::POST, "/again").await.is_err());
    }

    #[tokio::test]
    async fn a_body_dropped_midway_closes_its_connection() {
        let (addr, accepted) = backend(by_path).await;
        let c = client();
        let response = c
            .send(&request(Method::GET, "/slow"), "b", addr, &Bytes::new())
            .await
            .map_err(|_| "failed")
            .unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "12345");
        drop(body);
        assert_eq!(c.pool.idle(), 0);
        assert_eq!(fetch(&c, addr, Method::GET, "/").await.unwrap().1, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_over_long_response_head_fails() {
        let (addr, _) = backend(by_path).await;
        let err = fetch(&client(), addr, Method::GET, "/huge")
            .await
            .unwrap_err();
        assert!(err.contains("response head longer"), "{err}");
    }

    #[test]
    fn requests_carry_a_host_and_the_length_of_their_body() {
        let mut out = request(Method::POST, "/p?q=1");
        out.headers.remove(header::HOST);
        let wire = encode(&out, "10.0.0.1:80", &Bytes::from_static(b"data"));
        assert_eq!(
            wire,
            b"POST /p?q=1 HTTP/1.1\r\nhost: 10.0.0.1:80\r\ncontent-length: 4\r\n\r\ndata"
        );
    }
}
