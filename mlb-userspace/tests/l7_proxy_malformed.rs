//! Malformed and hostile requests get a 4xx or a timeout, never a crash, and never reach a
//! backend; the proxy keeps serving good requests afterwards.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
mod l7_common;

use std::{net::SocketAddr, time::Duration};

use l7_common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Sends `raw` and returns what came back until the proxy closed or 5 s passed.
async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                // One response is enough once its head and short body are in.
                if out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"</html>\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> Option<u16> {
    response.split(' ').nth(1)?.parse().ok()
}

#[tokio::test]
async fn malformed_requests_get_4xx_and_never_reach_a_backend() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |c| c.max_header_bytes = 16 * 1024);
    let mut s = service("/a", &[&a]);
    s.vhosts = vec!["a.example.com".into()];
    apply(&proxy, vec![s]);
    let http = proxy.local_addr("http").unwrap();
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: a.example.com\r\nX-Big: {}\r\n\r\n",
        "x".repeat(64 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("no Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), &[400]),
        ("bad Host", b"GET / HTTP/1.1\r\nHost: a b.example.com\r\n\r\n".to_vec(), &[400]),
        (
            "two Hosts",
            b"GET / HTTP/1.1\r\nHost: a.example.com\r\nHost: b.example.com\r\n\r\n".to_vec(),
            &[400],
        ),
        (
            "conflicting Content-Lengths",
            b"POST /sink HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!".to_vec(),
            &[400],
        ),
        ("oversized headers", huge.into_bytes(), &[431]),
        ("not HTTP", b"\x16\x03\x01\x02\x00garbage\r\n\r\n".to_vec(), &[400]),
        ("bad request line", b"GET\r\n\r\n".to_vec(), &[400]),
    ];
    for (what, raw, want) in cases {
        let response = raw_exchange(http, &raw).await;
        let status = status_of(&response);
        assert!(
            status.is_some_and(|s| want.contains(&s)),
            "{what}: got {response:?}"
        );
    }
    assert_eq!(a.count(), 0, "no malformed request was forwarded");
    let c = http_client();
    assert_eq!(
        get(&c, http, "a.example.com", "/", &[]).await.status,
        200,
        "still serving"
    );
}

/// RFC 9112 §6.1: a request with both Content-Length and Transfer-Encoding is framed by
/// Transfer-Encoding alone and the connection is closed after the response, so bytes hidden
/// behind a lying Content-Length can never become a second (smuggled) request.
#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |_| {});
    let mut s = service("/a", &[&a]);
    s.vhosts = vec!["a.example.com".into()];
    apply(&proxy, vec![s]);
    let http = proxy.local_addr("http").unwrap();
    let raw = b"POST /sink HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 48\r\n\
        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.example.com\r\n\r\n";
    let mut conn = tokio::net::TcpStream::connect(http).await.unwrap();
    conn.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out))
        .await
        .expect("proxy closes the connection")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "one response only: {text}"
    );
    assert!(text.contains("connection: close"), "{text}");
    assert!(text.ends_with("received=0"), "chunked framing won: {text}");
    assert_eq!(
        a.count(),
        1,
        "the smuggled request never reached the backend"
    );
}

#[tokio::test]
async fn slow_clients_are_timed_out() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |c| c.timeouts.client = Duration::from_millis(500));
    let mut s = service("/a", &[&a]);
    s.vhosts = vec!["a.example.com".into()];
    apply(&proxy, vec![s]);
    let http = proxy.local_addr("http").unwrap();
    let https = proxy.local_addr("https").unwrap();
    // Half a request head (plain), or no ClientHello at all (TLS), then nothing: the proxy
    // gives up (408 or close) by itself.
    for (addr, sent) in [
        (http, &b"GET / HTTP/1.1\r\nHost: a.exa"[..]),
        (https, &b""[..]),
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(sent).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "{addr}: connection closed by the proxy in time"
        );
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.is_empty() || status_of(&text) == Some(408),
            "{addr}: {text:?}"
        );
    }
    assert_eq!(a.count(), 0);
    let c = http_client();
    assert_eq!(get(&c, http, "a.example.com", "/", &[]).await.status, 200);
}

/// Only WebSocket upgrades are tunneled: `Upgrade: h2c` is not passed on, and a backend that
/// switches protocols anyway gets a 502 instead of a tunnel whose bytes bypass routing.
#[tokio::test]
async fn only_websocket_upgrades_are_tunneled() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |_| {});
    let mut s = service("/a", &[&a]);
    s.vhosts = vec!["a.example.com".into()];
    apply(&proxy, vec![s]);
    let http = proxy.local_addr("http").unwrap();
    // The test backend's /ws answers 101 whatever it is asked.
    let h2c = b"GET /ws HTTP/1.1\r\nHost: a.example.com\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    assert_eq!(status_of(&raw_exchange(http, h2c).await), Some(502));
    let ws = b"GET /ws HTTP/1.1\r\nHost: a.example.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    assert_eq!(status_of(&raw_exchange(http, ws).await), Some(101));
}

/// An absolute-form request is routed on its URI's host: the backend sees that host as Host,
/// never a different Host header the client added (which a backend could route on).
#[tokio::test]
async fn forwarded_host_is_the_routed_authority() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |_| {});
    let mut s = service("/a", &[&a]);
    s.vhosts = vec!["a.example.com".into()];
    apply(&proxy, vec![s]);
    let http = proxy.local_addr("http").unwrap();
    let req = b"GET http://a.example.com/x HTTP/1.1\r\nHost: internal.example.com\r\nConnection: close\r\n\r\n";
    let answer = raw_exchange(http, req).await;
    assert_eq!(status_of(&answer), Some(200), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-seen-host: a.example.com\r\n"),
        "{answer}"
    );
}
