//! mlb's own HTTP/1 server (the fast path for requests without a body) as a raw client sees
//! it: keep-alive, pipelining, HTTP/1.0, `Connection: close`, HEAD, chunked and
//! close-delimited responses, requests it hands to hyper (a body, an upgrade) on the same
//! connection, and its timeouts and limits.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
mod l7_common;

use std::{net::SocketAddr, time::Duration};

use l7_common::*;
use mlb::proxy::HttpProxy;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::timeout,
};

const HOST: &str = "fast.example.com";

/// A response as it came on the wire.
#[derive(Debug)]
struct Wire {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        let first = found.next().map(|(_, v)| v.as_str());
        assert!(found.next().is_none(), "one {name} line: {self:?}");
        first
    }

    fn body(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

/// A client connection that keeps what it read beyond a response for the next one.
struct Client {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        Client {
            tcp,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, raw: &str) {
        self.tcp.write_all(raw.as_bytes()).await.unwrap();
    }

    /// Reads more; false at the end of the connection.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = timeout(Duration::from_secs(5), self.tcp.read(&mut chunk))
            .await
            .expect("an answer within 5 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next response (`head_only`: to a HEAD request).
    async fn response(&mut self, head_only: bool) -> Wire {
        let (status_line, headers, len) = loop {
            let mut lines = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut lines);
            if let httparse::Status::Complete(len) = parsed.parse(&self.buf).unwrap() {
                let status_line = format!(
                    "HTTP/1.{} {} {}",
                    parsed.version.unwrap(),
                    parsed.code.unwrap(),
                    parsed.reason.unwrap()
                );
                let headers = (parsed.headers.iter())
                    .map(|h| {
                        let value = String::from_utf8(h.value.to_vec()).unwrap();
                        (h.name.to_owned(), value)
                    })
                    .collect::<Vec<_>>();
                break (status_line, headers, len);
            }
            assert!(self.fill().await, "the proxy closed mid-head");
        };
        self.buf.drain(..len);
        let mut wire = Wire {
            status_line,
            headers,
            body: Vec::new(),
        };
        if !head_only {
            wire.body = self.body(&wire).await;
        }
        wire
    }

    async fn body(&mut self, head: &Wire) -> Vec<u8> {
        if let Some(len) = head.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.fill().await, "the proxy closed mid-body");
            }
            return self.buf.drain(..len).collect();
        }
        if head.header("transfer-encoding") == Some("chunked") {
            return self.chunked().await;
        }
        // Until the connection ends.
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    async fn chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                assert!(self.fill().await, "the proxy closed mid-chunk");
            };
            let size = std::str::from_utf8(&self.buf[..line_end]).unwrap();
            let size = usize::from_str_radix(size, 16).unwrap();
            while self.buf.len() < line_end + 2 + size + 2 {
                assert!(self.fill().await, "the proxy closed mid-chunk");
            }
            body.extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
            self.buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                return body;
            }
        }
    }

    /// Whether the proxy closes the connection (with nothing more to read) within `within`.
    async fn closed_within(&mut self, within: Duration) -> bool {
        let mut rest = Vec::new();
        match timeout(within, self.tcp.read_to_end(&mut rest)).await {
            Ok(Ok(_)) => rest.is_empty() && self.buf.is_empty(),
            Ok(Err(_)) => self.buf.is_empty(),
            Err(_) => false,
        }
    }
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n")
}

async fn proxied(tweak: impl FnOnce(&mut mlb::proxy::ProxyConfig)) -> (TestBackend, HttpProxy) {
    let backend = TestBackend::start("fast").await;
    let proxy = start_proxy(vec![], tweak);
    let mut s = service("/fast", &[&backend]);
    s.vhosts = vec![HOST.into()];
    apply(&proxy, vec![s]);
    (backend, proxy)
}

#[tokio::test]
async fn pipelined_requests_and_head_share_one_kept_alive_connection() {
    let (backend, proxy) = proxied(|_| {}).await;
    let mut c = Client::connect(proxy.local_addr("http").unwrap()).await;
    // Three requests in one write: answered in order, each whole.
    let head = get("/", "").replacen("GET", "HEAD", 1);
    c.send(&format!("{}{head}{}", get("/a?x=1", ""), get("/b", "")))
        .await;
    let a = c.response(false).await;
    assert_eq!(a.status_line, "HTTP/1.1 200 OK");
    assert_eq!(
        (a.header("x-seen-path"), a.body()),
        (Some("/a?x=1"), "fast")
    );
    assert_eq!(a.header("content-length"), Some("4"));
    assert!(a.header("connection").is_none(), "{a:?}");
    let date = a.header("date").expect("a date");
    httpdate::parse_http_date(date).expect("an HTTP date");
    let h = c.response(true).await;
    assert_eq!(h.status_line, "HTTP/1.1 200 OK");
    assert_eq!(
        h.header("content-length"),
        Some("4"),
        "HEAD keeps the length"
    );
    let b = c.response(false).await;
    assert_eq!((b.header("x-seen-path"), b.body()), (Some("/b"), "fast"));
    // Quiet: the connection parks (no buffer held), and serves the next request.
    wait_until("the connection parks", || proxy.parked_connections() == 1).await;
    c.send(&get("/c", "")).await;
    assert_eq!(c.response(false).await.header("x-seen-path"), Some("/c"));
    assert_eq!(backend.count(), 4);
    assert!(
        c.buf.is_empty(),
        "nothing beyond the responses: {:?}",
        c.buf
    );
}

#[tokio::test]
async fn http10_closes_unless_kept_alive_and_connection_close_closes() {
    let (_backend, proxy) = proxied(|_| {}).await;
    let http = proxy.local_addr("http").unwrap();
    let mut c = Client::connect(http).await;
    c.send(&format!("GET /ten HTTP/1.0\r\nHost: {HOST}\r\n\r\n"))
        .await;
    let r = c.response(false).await;
    assert_eq!(
        (r.status_line.as_str(), r.body()),
        ("HTTP/1.0 200 OK", "fast")
    );
    assert!(r.header("connection").is_none(), "{r:?}");
    assert!(c.closed_within(Duration::from_secs(2)).await);

    let mut c = Client::connect(http).await;
    let keep = format!("GET /ten HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n");
    for _ in 0..2 {
        c.send(&keep).await;
        let r = c.response(false).await;
        assert_eq!(r.status_line, "HTTP/1.0 200 OK");
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }

    let mut c = Client::connect(http).await;
    c.send(&get("/", "Connection: close\r\n")).await;
    let r = c.response(false).await;
    assert_eq!((r.header("connection"), r.body()), (Some("close"), "fast"));
    assert!(c.closed_within(Duration::from_secs(2)).await);
}

/// Segments the kernel has received on `tcp` so far (`tcpi_segs_in` of `TCP_INFO`, which
/// follows `tcpi_segs_out`, the last field the libc crate declares).
fn segments_received(tcp: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd as _;
    let mut info = [0u32; 64];
    let mut len = size_of_val(&info) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes of `struct tcp_info` into `info`.
    let rc = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    let segs_in = std::mem::offset_of!(libc::tcp_info, tcpi_segs_out) + 4;
    assert!(len as usize >= segs_in + 4, "a kernel without tcpi_segs_in");
    info[segs_in / 4]
}

/// A closing exchange as short as TCP allows: the proxy does not acknowledge the request on
/// its own (the response does), and the last response, the connection's FIN with it, comes
/// in one segment. The client then receives two segments in all: the SYN-ACK and that one.
#[tokio::test]
async fn a_last_response_comes_with_the_fin_and_acknowledges_the_request() {
    let (_backend, proxy) = proxied(|_| {}).await;
    let http = proxy.local_addr("http").unwrap();
    let mut seen = Vec::new();
    // A delayed ACK is due after 40 ms: a machine that busy may see one, so best of three.
    for _ in 0..3 {
        let mut c = Client::connect(http).await;
        c.send(&get("/", "Connection: close\r\n")).await;
        let r = c.response(false).await;
        assert_eq!((r.header("connection"), r.body()), (Some("close"), "fast"));
        assert!(c.closed_within(Duration::from_secs(2)).await);
        seen.push(segments_received(&c.tcp));
    }
    assert!(
        seen.contains(&2),
        "segments received per connection: {seen:?}"
    );
}

#[tokio::test]
async fn unknown_lengths_are_chunked_for_http11_and_close_delimited_for_http10() {
    let (_backend, proxy) = proxied(|_| {}).await;
    let http = proxy.local_addr("http").unwrap();
    let mut c = Client::connect(http).await;
    c.send(&get("/source?mb=1", "")).await;
    let r = c.response(false).await;
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body.len(), 1024 * 1024);
    assert!(r.body.iter().all(|b| *b == b'x'));
    c.send(&get("/after", "")).await;
    assert_eq!(c.response(false).await.body(), "fast", "still kept alive");

    let mut c = Client::connect(http).await;
    let ten =
        format!("GET /source?mb=1 HTTP/1.0\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n");
    c.send(&ten).await;
    let r = c.response(false).await;
    assert_eq!(r.status_line, "HTTP/1.0 200 OK");
    assert!(r.header("transfer-encoding").is_none() && r.header("content-length").is_none());
    assert_eq!(r.body.len(), 1024 * 1024, "read to the connection's end");
}

#[tokio::test]
async fn requests_with_a_body_or_an_upgrade_are_served_by_hyper_on_the_same_connection() {
    let (backend, proxy) = proxied(|_| {}).await;
    let mut c = Client::connect(proxy.local_addr("http").unwrap()).await;
    // A fast request, a request with a body behind it in the same write, a fast one again.
    let post = format!("POST /sink HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\n\r\nhello");
    c.send(&format!("{}{post}{}", get("/1", ""), get("/2", "")))
        .await;
    assert_eq!(c.response(false).await.header("x-seen-path"), Some("/1"));
    assert_eq!(c.response(false).await.body(), "received=5");
    assert_eq!(c.response(false).await.header("x-seen-path"), Some("/2"));
    // Parked after hyper's session, back to the fast path, then a WebSocket upgrade.
    wait_until("the connection parks", || proxy.parked_connections() == 1).await;
    c.send(&get("/3", "")).await;
    assert_eq!(c.response(false).await.header("x-seen-path"), Some("/3"));
    let ws = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    c.send(&get("/ws", ws)).await;
    let r = c.response(true).await;
    assert_eq!(r.status_line, "HTTP/1.1 101 Switching Protocols");
    c.send("ping through the tunnel").await;
    while c.buf.len() < "ping through the tunnel".len() {
        assert!(c.fill().await, "the tunnel closed");
    }
    assert_eq!(c.buf, b"ping through the tunnel");
    assert_eq!(backend.count(), 5);
}

#[tokio::test]
async fn slow_heads_and_idle_connections_are_closed_after_timeout_client() {
    let (backend, proxy) = proxied(|c| c.timeouts.client = Duration::from_millis(600)).await;
    let http = proxy.local_addr("http").unwrap();
    // Idle after a request: closed once `timeout client` has passed, not before.
    let mut c = Client::connect(http).await;
    c.send(&get("/", "")).await;
    assert_eq!(c.response(false).await.body(), "fast");
    let idle = std::time::Instant::now();
    assert!(c.closed_within(Duration::from_secs(3)).await);
    assert!(
        idle.elapsed() >= Duration::from_millis(500),
        "{:?}",
        idle.elapsed()
    );
    // A head trickled a byte every 50 ms: each byte is in time, the head is not.
    let mut c = Client::connect(http).await;
    c.send(&get("/", "")).await;
    assert_eq!(c.response(false).await.body(), "fast");
    let started = std::time::Instant::now();
    let mut cut = false;
    for byte in get(
        "/never",
        "X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
    )
    .bytes()
    {
        if started.elapsed() > Duration::from_secs(4) || c.tcp.write_all(&[byte]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut probe = [0u8; 1];
        if let Ok(Ok(0)) = timeout(Duration::ZERO, c.tcp.read(&mut probe)).await {
            cut = true;
            break;
        }
    }
    assert!(cut, "the trickled head was cut");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(backend.count(), 2, "/never was not forwarded");
}

#[tokio::test]
async fn an_over_long_head_gets_hypers_431_after_a_fast_request() {
    let (backend, proxy) = proxied(|c| c.max_header_bytes = 16 * 1024).await;
    let mut c = Client::connect(proxy.local_addr("http").unwrap()).await;
    c.send(&get("/", "")).await;
    assert_eq!(c.response(false).await.body(), "fast");
    let big = format!("X-Big: {}\r\n", "x".repeat(20 * 1024));
    c.send(&get("/big", &big)).await;
    let r = c.response(false).await;
    assert_eq!(
        r.status_line,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_eq!(backend.count(), 1);
}
