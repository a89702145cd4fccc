//! A stopping proxy (its listeners closed, as on SIGTERM after `--drain-delay`) ends its
//! clients' kept-alive connections without cutting a request: the response to a request in
//! flight says `Connection: close` (HTTP/1.1) or comes after a GOAWAY (HTTP/2), then the
//! connection closes; an idle connection is closed; and the proxy counts none left open.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
mod l7_common;

use std::{net::SocketAddr, time::Duration};

use l7_common::*;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// A proxy routing `www.example.com` to backend `www`.
async fn setup() -> (mlb::proxy::HttpProxy, TestBackend) {
    let proxy = start_proxy(Vec::new(), |_| {});
    let www = TestBackend::start("www").await;
    let mut svc = service("/www", &[&www]);
    svc.vhosts = vec!["www.example.com".into()];
    apply(&proxy, vec![svc]);
    (proxy, www)
}

/// One HTTP/1.1 response read off a raw connection: its head, and whether the connection then
/// closed (EOF within 5 s of the body's end).
struct RawResponse {
    head: String,
    closed_after: bool,
}

/// Sends `request` on `io` and reads the response (a `content-length` body).
async fn exchange(io: &mut TcpStream, request: &str) -> RawResponse {
    io.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut chunk))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(n > 0, "the connection closed before a response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a content-length");
    while buf.len() < head_end + length {
        let n = io.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed inside the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    RawResponse {
        head,
        closed_after: closes_within(io, Duration::from_secs(5)).await,
    }
}

/// Whether the peer closes `io` (EOF, or a reset) within `limit`, reading nothing else.
async fn closes_within(io: &mut TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(limit, io.read(&mut byte)).await {
        Ok(Ok(0) | Err(_)) => true,
        Ok(Ok(n)) => panic!("{n} unexpected byte(s) after the response"),
        Err(_) => false,
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
}

#[tokio::test]
async fn http1_connections_close_after_their_last_response_and_idle_ones_at_once() {
    let (proxy, _www) = setup().await;
    let addr = proxy.local_addr("http").unwrap();
    // An idle kept-alive connection; one with a request without a body in flight (mlb's own
    // HTTP/1.1 server); one with a request with a body in flight (hyper's session).
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let first = exchange(&mut idle, &get("/")).await;
    assert!(first.head.starts_with("http/1.1 200"), "{}", first.head);
    assert!(!first.closed_after, "kept alive while mlb runs");
    let mut busy = TcpStream::connect(addr).await.unwrap();
    let in_flight = tokio::spawn(async move { exchange(&mut busy, &get("/slow?ms=700")).await });
    let mut posting = TcpStream::connect(addr).await.unwrap();
    let posted = tokio::spawn(async move {
        let post = "POST /slow?ms=700 HTTP/1.1\r\nHost: www.example.com\r\n\
                    Content-Length: 5\r\n\r\nhello";
        exchange(&mut posting, post).await
    });
    wait_until("both requests in flight", || proxy.in_flight() == 2).await;

    proxy.close_listeners();
    // Within a tick of its supervisor (at most 1 s).
    assert!(
        closes_within(&mut idle, Duration::from_secs(3)).await,
        "the idle connection is closed"
    );
    for (what, answer) in [("no body", in_flight), ("a body", posted)] {
        let answer = answer.await.unwrap();
        assert!(answer.head.starts_with("http/1.1 200"), "{}", answer.head);
        assert!(
            answer.head.contains("connection: close"),
            "the request with {what} is answered with Connection: close: {}",
            answer.head
        );
        assert!(answer.closed_after, "then its connection closes");
    }
    wait_until("no client connection left", || {
        proxy.client_connections() == 0
    })
    .await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connection is accepted"
    );
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A GET of `path` on `stream`, HPACK-encoded.
fn h2_get(stream: u32, path: &str) -> Vec<u8> {
    let fields = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "www.example.com"),
        (":path", path),
    ];
    let block = loona_hpack::Encoder::new()
        .encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    frame(HEADERS, END_HEADERS | END_STREAM, stream, &block)
}

/// The frames that arrive on `io` until it closes: kind, flags, stream, payload. Fails the
/// test if it is still open after 10 s.
async fn frames_until_closed(io: &mut TcpStream) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut bytes = Vec::new();
    // An error (a reset) ends it as well: the bytes read before it are kept.
    let _ = tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut bytes))
        .await
        .expect("the connection closes");
    let mut frames = Vec::new();
    let mut at = 0;
    while bytes.len() >= at + 9 {
        let len = usize::from(bytes[at]) << 16
            | usize::from(bytes[at + 1]) << 8
            | usize::from(bytes[at + 2]);
        let stream = u32::from_be_bytes(bytes[at + 5..at + 9].try_into().unwrap());
        let end = (at + 9 + len).min(bytes.len());
        frames.push((
            bytes[at + 3],
            bytes[at + 4],
            stream,
            bytes[at + 9..end].to_vec(),
        ));
        at += 9 + len;
    }
    frames
}

#[tokio::test]
async fn an_http2_connection_gets_goaway_and_finishes_its_streams() {
    let (proxy, www) = setup().await;
    let addr: SocketAddr = proxy.local_addr("http").unwrap();
    let mut io = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(h2_get(1, "/slow?ms=700"));
    io.write_all(&hello).await.unwrap();
    wait_until("the stream in flight", || proxy.in_flight() == 1).await;

    proxy.close_listeners();
    // A stream the client opens once it may have seen the GOAWAY is not served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    io.write_all(&h2_get(3, "/")).await.unwrap();
    let frames = frames_until_closed(&mut io).await;

    let goaway = frames.iter().position(|f| f.0 == GOAWAY).expect("a GOAWAY");
    let payload = &frames[goaway].3;
    let last_stream = u32::from_be_bytes(payload[0..4].try_into().unwrap());
    let code = u32::from_be_bytes(payload[4..8].try_into().unwrap());
    assert_eq!((last_stream, code), (1, 0), "last stream 1, NO_ERROR");
    let end = frames
        .iter()
        .position(|f| f.0 == DATA && f.2 == 1 && f.1 & END_STREAM != 0)
        .expect("stream 1 is answered to its end");
    assert!(end > goaway, "stream 1 ends after the GOAWAY");
    assert!(
        frames.iter().all(|f| f.2 != 3),
        "stream 3, opened after the GOAWAY, is not answered"
    );
    assert_eq!(www.count(), 1, "nor does it reach the backend");
    wait_until("no client connection left", || {
        proxy.client_connections() == 0
    })
    .await;
}
