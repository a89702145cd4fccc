//! A stopping proxy (its listeners closed, as on SIGTERM after `--drain-delay`) ends its
//! clients' kept-alive HTTP/1.1 connections without cutting a request: the response to a
//! request in flight says `Connection: close`, then the connection closes; an idle connection
//! is closed; and the proxy counts none left open. (HTTP/2's GOAWAY: `l7_http2`.)
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
mod l7_common;

use std::time::Duration;

use l7_common::*;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// Sends `request` on `io` and reads the response (a `content-length` body): its head, lower
/// case.
async fn exchange(io: &mut TcpStream, request: &str) -> String {
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
    head
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
    let (proxy, _www) = www_proxy(|_| {}).await;
    let addr = proxy.local_addr("http").unwrap();
    // An idle kept-alive connection; one with a request without a body in flight (mlb's own
    // HTTP/1.1 server); one with a request with a body in flight (hyper's session).
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let first = exchange(&mut idle, &get("/")).await;
    assert!(first.starts_with("http/1.1 200"), "{first}");
    assert!(
        !closes_within(&mut idle, Duration::from_millis(300)).await,
        "kept alive while mlb runs"
    );
    let mut busy = TcpStream::connect(addr).await.unwrap();
    let in_flight = tokio::spawn(async move {
        let head = exchange(&mut busy, &get("/slow?ms=700")).await;
        (head, closes_within(&mut busy, Duration::from_secs(5)).await)
    });
    let mut posting = TcpStream::connect(addr).await.unwrap();
    let posted = tokio::spawn(async move {
        let post = "POST /slow?ms=700 HTTP/1.1\r\nHost: www.example.com\r\n\
                    Content-Length: 5\r\n\r\nhello";
        let head = exchange(&mut posting, post).await;
        (
            head,
            closes_within(&mut posting, Duration::from_secs(5)).await,
        )
    });
    wait_until("both requests in flight", || proxy.in_flight() == 2).await;

    proxy.close_listeners();
    // Within a tick of its supervisor (at most 1 s).
    assert!(
        closes_within(&mut idle, Duration::from_secs(3)).await,
        "the idle connection is closed"
    );
    for (what, answer) in [("no body", in_flight), ("a body", posted)] {
        let (head, closed_after) = answer.await.unwrap();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(
            head.contains("connection: close"),
            "the request with {what} is answered with Connection: close: {head}"
        );
        assert!(closed_after, "then its connection closes");
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
