//! Connection hygiene of the proxy's listeners: connections that send nothing (or trickle, or
//! stop at an HTTP/2 preface or before a TLS handshake) are closed at the request timeout, idle
//! ones at the idle timeout, clients that do not read at the send timeout; at the connection
//! limit the oldest silent connections are shed, so a real client is still served.
mod l7_common;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use l7_common::*;
use mlb::{
    overload::{ConnGate, ConnLimits},
    proxy::{HttpProxy, ProxyConfig},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

const REQUEST_TIMEOUT: Duration = Duration::from_millis(400);

fn limits(max_connections: usize) -> ConnLimits {
    ConnLimits {
        max_connections,
        max_per_listener: max_connections,
        queue_timeout: Duration::from_millis(300),
        request_timeout: REQUEST_TIMEOUT,
        idle_timeout: Duration::from_millis(600),
        send_timeout: Duration::from_millis(500),
    }
}

async fn proxy_with(max_connections: usize) -> (HttpProxy, Arc<ConnGate>, TestBackend) {
    let a = TestBackend::start("a").await;
    let gate = ConnGate::new(limits(max_connections));
    let g = gate.clone();
    let proxy = start_proxy(vec![], move |c: &mut ProxyConfig| c.conn_gate = g);
    let mut s = service("/a", &[&a]);
    s.vhosts = vec!["a.example.com".into()];
    apply(&proxy, vec![s]);
    (proxy, gate, a)
}

/// How long until the proxy closes `s` (reading and dropping what it sends), at most `limit`.
async fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + limit).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A complete request on a new connection; its status line.
async fn get_status(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn connections_without_a_complete_request_are_closed_at_the_request_timeout() {
    let (proxy, _gate, _a) = proxy_with(100).await;
    let http = proxy.local_addr("http").unwrap();
    let https = proxy.local_addr("https").unwrap();
    let cases: Vec<(&str, SocketAddr, &[u8])> = vec![
        ("silent on :80", http, b""),
        ("silent on :443 (no ClientHello)", https, b""),
        (
            "HTTP/2 preface only",
            http,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ),
        (
            "half a request head",
            http,
            b"GET / HTTP/1.1\r\nHost: a.exa",
        ),
    ];
    for (what, addr, sent) in cases {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(sent).await.unwrap();
        let closed = closed_after(&mut s, Duration::from_secs(3)).await;
        let closed = closed.unwrap_or_else(|| panic!("{what}: still open after 3 s"));
        assert!(
            closed >= REQUEST_TIMEOUT / 2,
            "{what}: closed after {closed:?}"
        );
    }

    // Trickling a byte every 100 ms does not extend the deadline.
    let mut s = TcpStream::connect(http).await.unwrap();
    let start = Instant::now();
    for b in b"GET / HTTP/1.1\r\nHost: a.example.com\r\n".iter().cycle() {
        if s.write_all(&[*b]).await.is_err() || start.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "trickler kept for {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_close_but_slow_requests_do_not() {
    let (proxy, _gate, _a) = proxy_with(100).await;
    let http = proxy.local_addr("http").unwrap();
    let mut s = TcpStream::connect(http).await.unwrap();
    // A request slower than the idle timeout is answered: a request in flight is not idle.
    s.write_all(b"GET /slow?ms=1000 HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Then, idle: closed after the idle timeout.
    let closed = closed_after(&mut s, Duration::from_secs(3)).await;
    assert!(closed.is_some(), "idle keep-alive connection still open");
}

#[tokio::test]
async fn a_client_that_does_not_read_is_dropped_at_the_send_timeout() {
    let (proxy, _gate, _a) = proxy_with(100).await;
    let http = proxy.local_addr("http").unwrap();
    let mut s = TcpStream::connect(http).await.unwrap();
    s.write_all(b"GET /source?mb=256 HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .await
        .unwrap();
    // Not reading: socket buffers fill, then the proxy's writes stall.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
            Err(_) => panic!("still streaming after 5 s: {total} bytes read"),
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => total += n,
        }
    }
    assert!(
        total < 256 << 20,
        "the whole body came: the stalled writer was kept"
    );
}

/// More silent connections than the limit: the oldest are shed, the proxy never holds more than
/// the limit, and a real client is served at once.
#[tokio::test]
async fn silent_connections_are_shed_so_real_clients_get_in() {
    let max = 40;
    let (proxy, gate, _a) = proxy_with(max).await;
    let http = proxy.local_addr("http").unwrap();
    let mut silent = Vec::new();
    for _ in 0..max * 3 {
        silent.push(TcpStream::connect(http).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        gate.open_connections() <= max,
        "{}",
        gate.open_connections()
    );
    let start = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(2), get_status(http))
        .await
        .expect("a real client waited more than 2 s")
        .unwrap();
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    // The oldest were shed first: the first silent connection is closed, the last is not.
    let mut buf = [0u8; 1];
    let first = tokio::time::timeout(Duration::from_millis(100), silent[0].read(&mut buf)).await;
    assert!(
        matches!(first, Ok(Ok(0) | Err(_))),
        "oldest silent connection still open"
    );
    let last = silent.last_mut().unwrap();
    let last = tokio::time::timeout(Duration::from_millis(100), last.read(&mut buf)).await;
    assert!(
        last.is_err(),
        "the newest silent connection was shed before older ones"
    );
}

/// Over the limit with every connection busy: a new one waits the queue timeout, then gets 503.
#[tokio::test]
async fn over_the_limit_with_busy_connections_new_ones_get_503() {
    let (proxy, _gate, _a) = proxy_with(2).await;
    let http = proxy.local_addr("http").unwrap();
    let busy = |_| async move {
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
            .await
            .unwrap();
        s
    };
    let _held = futures_util::future::join_all((0..2).map(busy)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let status = get_status(http).await.unwrap();
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "not queued: {:?}",
        start.elapsed()
    );
}

/// One HTTP/1.1 response read from `r`: its head and its `Content-Length` body (the stream
/// stays at the next response, for pipelined requests).
async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> (String, String) {
    use tokio::io::AsyncBufReadExt as _;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
            .await
            .expect("a response within 5 s")
            .expect("reading the response");
        assert!(n > 0, "connection closed after {head:?}");
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        })
        .map_or(0, |(_, v)| v.trim().parse().expect("a numeric length"));
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).await.expect("the whole body");
    let body = String::from_utf8(body).expect("a text body");
    (head.to_ascii_lowercase(), body)
}

/// An idle keep-alive connection is parked (held without its HTTP state, the proxy counts it)
/// and still serves the client's next requests: pipelined ones, one with a body, one waiting
/// for `100 Continue`, none answered with `Connection: close`. Parked and idle, it is closed at
/// the idle timeout.
#[tokio::test]
async fn parked_connections_serve_their_next_requests_and_close_when_idle() {
    let a = TestBackend::start("a").await;
    let idle_timeout = Duration::from_millis(1500);
    let gate = ConnGate::new(ConnLimits {
        idle_timeout,
        ..limits(100)
    });
    let proxy = start_proxy(vec![], move |c: &mut ProxyConfig| c.conn_gate = gate);
    let mut s = service("/a", &[&a]);
    s.vhosts = vec!["a.example.com".into()];
    apply(&proxy, vec![s]);
    let conn = TcpStream::connect(proxy.local_addr("http").unwrap())
        .await
        .unwrap();
    let mut conn = tokio::io::BufReader::new(conn);
    let host = "Host: a.example.com\r\n";

    conn.get_mut()
        .write_all(format!("GET /first HTTP/1.1\r\n{host}\r\n").as_bytes())
        .await
        .unwrap();
    let (head, body) = read_response(&mut conn).await;
    assert!(
        head.starts_with("http/1.1 200") && body == "a",
        "{head}{body}"
    );
    wait_until("the idle connection is parked", || {
        proxy.parked_connections() == 1
    })
    .await;

    // Woken by two pipelined requests, the second with a body.
    let pipelined = format!(
        "GET /second HTTP/1.1\r\n{host}\r\nPOST /sink HTTP/1.1\r\n{host}content-length: 5\r\n\r\nhello"
    );
    conn.get_mut()
        .write_all(pipelined.as_bytes())
        .await
        .unwrap();
    let (first, body) = read_response(&mut conn).await;
    assert!(
        first.contains("x-seen-path: /second") && body == "a",
        "{first}{body}"
    );
    let (second, body) = read_response(&mut conn).await;
    assert!(
        second.starts_with("http/1.1 200") && body == "received=5",
        "{second}{body}"
    );
    for head in [first, second] {
        assert!(!head.contains("connection: close"), "{head}");
    }
    wait_until("parked again", || proxy.parked_connections() == 1).await;

    // A body sent only after `100 Continue`.
    let expecting =
        format!("POST /sink HTTP/1.1\r\n{host}expect: 100-continue\r\ncontent-length: 3\r\n\r\n");
    conn.get_mut()
        .write_all(expecting.as_bytes())
        .await
        .unwrap();
    let (head, _) = read_response(&mut conn).await;
    assert!(head.starts_with("http/1.1 100"), "{head}");
    conn.get_mut().write_all(b"abc").await.unwrap();
    let (head, body) = read_response(&mut conn).await;
    assert!(
        head.starts_with("http/1.1 200") && body == "received=3",
        "{head}{body}"
    );
    assert!(!head.contains("connection: close"), "{head}");

    wait_until("parked again", || proxy.parked_connections() == 1).await;
    let parked = Instant::now();
    let closed = closed_after(conn.get_mut(), Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "a parked connection outlived the idle timeout"
    );
    assert!(parked.elapsed() < idle_timeout + Duration::from_secs(1));
    wait_until("no connection parked", || proxy.parked_connections() == 0).await;
    assert_eq!(a.count(), 4, "every request reached the backend once");
}
