//! Keep-alive connections from the proxy to its backends: reused across requests whatever the
//! response framing, never reused after the backend closed them, after a response delimited by
//! the connection's end or after a response that was abandoned halfway; a response head past
//! the limit is a 502; HTTP/2 clients with hundreds of streams in flight do not churn backend
//! connections. The backend is a raw HTTP/1.1 server that counts its connections.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
mod l7_common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use l7_common::*;
use mlb::model::{Backend, BackendId, BackendState, HttpService};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

/// A backend answering by path, counting the connections it accepted.
struct RawBackend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawBackend {
    /// With `close_after_each`, the backend closes every connection after one response without
    /// announcing it (as a backend whose keep-alive timeout is shorter than the proxy's).
    async fn start(close_after_each: bool) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, close_after_each));
            }
        });
        RawBackend {
            addr,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn service(&self) -> HttpService {
        let mut svc = HttpService::new("/pool", 0, free_port());
        svc.vhosts = vec![HOST.into()];
        svc.backends = vec![Backend {
            id: BackendId::from("pool:0".to_owned()),
            addr: self.addr,
            weight: 1,
            state: BackendState::Active,
        }];
        svc
    }
}

/// Serves requests one after the other on one connection (bodies with a content-length).
async fn serve(mut stream: TcpStream, close_after_each: bool) {
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
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        buf.drain(..end + 4);
        let mut words = head.split_whitespace();
        let (method, path) = (words.next().unwrap_or("get"), words.next().unwrap_or("/"));
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..length).collect();
        let answered = match (method, path) {
            ("head", _) => stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nserver: raw\r\ncontent-length: 5\r\nx-after: 1\r\n\r\n",
                )
                .await,
            ("post", p) if p != HOP_PATH => {
                let got = format!("got {}", String::from_utf8_lossy(&body));
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", got.len());
                stream.write_all(format!("{head}{got}").as_bytes()).await
            }
            _ => answer(&mut stream, path).await,
        };
        if answered.is_err() || close_after_each || path == "/eof" {
            return;
        }
    }
}

async fn answer(stream: &mut TcpStream, path: &str) -> std::io::Result<()> {
    match path {
        "/chunked" => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-after: 1\r\n\r\n3\r\nabc\r\n")
                .await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            stream.write_all(b"3\r\ndef\r\n0\r\n\r\n").await
        }
        "/empty" => stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await,
        // Answered late: requests sent together are all in flight at once.
        "/wait" => {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                .await
        }
        HOP_PATH => stream.write_all(HOP_RESPONSE).await,
        // An obsolete line folding, and a control character in a value: not HTTP/1.1.
        "/fold" => {
            stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\nx-folded: a\r\n b\r\ncontent-length: 5\r\n\r\nhello",
                )
                .await
        }
        "/control" => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nx-bad: a\x01b\r\ncontent-length: 5\r\n\r\nhello")
                .await
        }
        // No length: the body ends with the connection.
        "/eof" => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
                .await
        }
        "/huge" => {
            // A head longer than any limit a proxy keeps (hyper's is 408 KiB).
            let head = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(600_000));
            stream.write_all(head.as_bytes()).await
        }
        "/slow" => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345")
                .await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            stream.write_all(b"67890").await
        }
        _ => stream
            .write_all(
                b"HTTP/1.1 200 OK\r\nserver: raw\r\ncontent-length: 5\r\nx-after: 1\r\n\r\nhello",
            )
            .await,
    }
}

const HOST: &str = "pool.example.com";

/// A response with hop-by-hop headers (some named in `Connection`), a name in mixed case, and a
/// header repeated around another.
const HOP_PATH: &str = "/hop";
const HOP_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: raw\r\nConnection: keep-alive, X-Hop\r\n\
    Set-Cookie: a=1\r\nX-Hop: private\r\nKeep-Alive: timeout=5\r\nX-Mixed-Case: kept\r\n\
    Set-Cookie: b=2\r\nProxy-Connection: keep-alive\r\nContent-Length: 5\r\n\r\nhello";

/// A backend and a proxy routing [`HOST`] to it; the proxy's HTTP address.
async fn proxied(close_after_each: bool) -> (RawBackend, mlb::proxy::HttpProxy, SocketAddr) {
    let backend = RawBackend::start(close_after_each).await;
    let proxy = start_proxy(vec![], |_| {});
    apply(&proxy, vec![backend.service()]);
    let http = proxy.local_addr("http").unwrap();
    (backend, proxy, http)
}

#[tokio::test]
async fn requests_one_after_the_other_share_one_backend_connection() {
    let (backend, _proxy, http) = proxied(false).await;
    for round in 0..3 {
        // A new client each round: the backend connection outlives client connections.
        let c = http_client();
        for (method, path, status, body) in [
            ("GET", "/", 200, "hello"),
            ("GET", "/chunked", 200, "abcdef"),
            ("GET", "/empty", 204, ""),
            ("HEAD", "/", 200, ""),
            ("POST", "/form", 200, "got a=1"),
            ("GET", "/", 200, "hello"),
        ] {
            let req = Request::builder()
                .method(method)
                .uri(format!("http://{http}{path}"))
                .header("host", HOST);
            let req = req.body(Full::new(Bytes::from(if method == "POST" {
                "a=1"
            } else {
                ""
            })));
            let got = read(c.request(req.unwrap()).await.unwrap()).await;
            assert_eq!(got.status, status, "round {round} {method} {path}");
            assert_eq!(got.body, body, "round {round} {method} {path}");
        }
    }
    assert_eq!(
        backend.accepted(),
        1,
        "one backend connection for 18 requests"
    );
}

#[tokio::test]
async fn a_connection_the_backend_closed_while_idle_is_not_used() {
    let (backend, _proxy, http) = proxied(true).await;
    let c = http_client();
    for i in 0..4 {
        let got = get(&c, http, HOST, "/", &[]).await;
        assert_eq!(
            (got.status.as_u16(), got.body.as_str()),
            (200, "hello"),
            "{i}"
        );
        // The backend's close reaches the proxy while the connection is idle.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(backend.accepted(), 4);
}

#[tokio::test]
async fn a_response_abandoned_halfway_closes_its_backend_connection() {
    let (backend, _proxy, http) = proxied(false).await;
    {
        let mut tcp = TcpStream::connect(http).await.unwrap();
        tcp.write_all(b"GET /slow HTTP/1.1\r\nhost: pool.example.com\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 64];
        let n = tcp.read(&mut first).await.unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200"));
        // The client leaves with half the body unread.
    }
    // Long enough for the backend to have sent the rest of the abandoned body.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = http_client();
    for i in 0..3 {
        let got = get(&c, http, HOST, "/", &[]).await;
        assert_eq!(
            (got.status.as_u16(), got.body.as_str()),
            (200, "hello"),
            "{i}"
        );
    }
    assert_eq!(
        backend.accepted(),
        2,
        "the abandoned connection is closed; the next one is reused"
    );
}

#[tokio::test]
async fn a_response_delimited_by_the_connections_end_is_read_whole_and_not_reused() {
    let (backend, _proxy, http) = proxied(false).await;
    let c = http_client();
    for i in 0..2 {
        let got = get(&c, http, HOST, "/eof", &[]).await;
        assert_eq!(
            (got.status.as_u16(), got.body.as_str()),
            (200, "until the end"),
            "{i}"
        );
    }
    let got = get(&c, http, HOST, "/", &[]).await;
    assert_eq!(got.body, "hello");
    assert_eq!(
        backend.accepted(),
        3,
        "a connection for each, none reused after its end"
    );
}

#[tokio::test]
async fn an_over_long_response_head_is_a_502() {
    let (backend, _proxy, http) = proxied(false).await;
    let c = http_client();
    let got = get(&c, http, HOST, "/huge", &[]).await;
    assert_eq!(got.status.as_u16(), 502);
    // The connection that sent it is not reused.
    let got = get(&c, http, HOST, "/", &[]).await;
    assert_eq!(got.body, "hello");
    assert_eq!(backend.accepted(), 2);
}

/// Two HTTP/2 clients with 150 streams in flight each, wave after wave: every stream in flight
/// holds a backend connection, and the 300 opened for the first wave serve all the others (an
/// idle pool bounded to 256 per backend reconnected 44 of them every wave).
#[tokio::test]
async fn http2_streams_in_flight_beyond_256_reuse_their_backend_connections() {
    const STREAMS: usize = 150;
    let (backend, _proxy, http) = proxied(false).await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(h2_over(TcpStream::connect(http).await.unwrap()).await);
    }
    for wave in 0..4 {
        let mut pending = Vec::new();
        for client in &mut clients {
            for _ in 0..STREAMS {
                let req = Request::get(format!("http://{HOST}/wait"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                pending.push(client.send_request(req));
            }
        }
        for (i, resp) in futures_util::future::join_all(pending)
            .await
            .into_iter()
            .enumerate()
        {
            let got = read(resp.unwrap()).await;
            assert_eq!(
                (got.status.as_u16(), got.body.as_str()),
                (200, "hello"),
                "wave {wave} stream {i}"
            );
        }
    }
    let accepted = backend.accepted();
    assert!(
        accepted <= 2 * STREAMS,
        "{accepted} backend connections for {} streams in flight",
        2 * STREAMS
    );
}

/// The header lines and body of the one response to `request`, sent on a new connection.
async fn exchange(http: SocketAddr, request: &[u8]) -> (Vec<String>, String) {
    let mut tcp = TcpStream::connect(http).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let read_all = async {
        while !got.ends_with(b"\r\n\r\nhello") {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("response in time");
    let text = String::from_utf8(got).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().map(str::to_owned).collect(), body.to_owned())
}

/// The values of `name` in header lines, in order.
fn values<'a>(lines: &'a [String], name: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_repeated_ones_kept_in_order() {
    let (_backend, _proxy, http) = proxied(false).await;
    let get = format!("GET {HOP_PATH} HTTP/1.1\r\nhost: {HOST}\r\n\r\n");
    // Without a body (mlb's own HTTP/1.1 server) and with one (hyper's).
    let post = format!("POST {HOP_PATH} HTTP/1.1\r\nhost: {HOST}\r\ncontent-length: 3\r\n\r\na=1");
    for request in [get, post] {
        let (lines, body) = exchange(http, request.as_bytes()).await;
        assert_eq!(lines[0], "HTTP/1.1 200 OK", "{request}");
        assert_eq!(body, "hello");
        for hop in ["x-hop", "keep-alive", "proxy-connection", "connection"] {
            assert_eq!(values(&lines, hop), Vec::<&str>::new(), "{hop}: {lines:?}");
        }
        assert_eq!(values(&lines, "set-cookie"), ["a=1", "b=2"], "{lines:?}");
        assert!(lines.iter().any(|l| l == "x-mixed-case: kept"), "{lines:?}");
        assert_eq!(values(&lines, "server"), ["raw"]);
        assert_eq!(values(&lines, "content-length"), ["5"]);
        assert_eq!(values(&lines, "date").len(), 1, "{lines:?}");
    }
    // And over HTTP/2 (hyper's server as well).
    let mut h2 = h2_over(TcpStream::connect(http).await.unwrap()).await;
    let req = Request::get(format!("http://{HOST}{HOP_PATH}")).body(Full::new(Bytes::new()));
    let got = read(h2.send_request(req.unwrap()).await.unwrap()).await;
    assert_eq!((got.status.as_u16(), got.body.as_str()), (200, "hello"));
    let cookies: Vec<_> = got.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert!(got.headers.get("x-hop").is_none() && got.headers.get("keep-alive").is_none());
    assert_eq!(got.header("x-mixed-case"), Some("kept"));
}

#[tokio::test]
async fn a_folded_or_control_character_response_header_is_a_502() {
    let (_backend, _proxy, http) = proxied(false).await;
    let c = http_client();
    for path in ["/fold", "/control"] {
        let got = get(&c, http, HOST, path, &[]).await;
        assert_eq!(got.status.as_u16(), 502, "{path}");
    }
    assert_eq!(get(&c, http, HOST, "/", &[]).await.body, "hello");
}

/// The whole response to `request` (which ends the connection), read until the proxy closes.
async fn until_closed(http: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(http).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got))
        .await
        .expect("response in time")
        .unwrap();
    String::from_utf8(got).unwrap()
}

#[tokio::test]
async fn responses_nothing_edits_go_out_as_those_an_edit_rule_touches() {
    // The same backend behind a service without response rules (its heads are passed on as
    // they came) and one with a rule (its heads are made into a map, edited and written).
    let backend = RawBackend::start(false).await;
    let proxy = start_proxy(vec![], |_| {});
    let mut edited = backend.service();
    edited.key.app_id = "/pool-edited".into();
    edited.vhosts = vec!["edited.example.com".into()];
    std::sync::Arc::make_mut(&mut edited.tuning).response_headers =
        vec![mlb::model::tuning::HeaderEdit::Set {
            name: "x-edited".into(),
            value: "1".into(),
        }];
    apply(&proxy, vec![backend.service(), edited]);
    let http = proxy.local_addr("http").unwrap();
    for (method, path, version) in [
        ("GET", "/", "1.1"),
        ("GET", "/", "1.0"),
        ("HEAD", "/", "1.1"),
        ("GET", "/chunked", "1.1"),
        ("GET", "/chunked", "1.0"),
        ("GET", "/empty", "1.1"),
        ("GET", "/eof", "1.1"),
    ] {
        let ask = |host: &str| {
            format!("{method} {path} HTTP/{version}\r\nhost: {host}\r\nconnection: close\r\n\r\n")
        };
        let plain = until_closed(http, &ask(HOST)).await;
        let edited = until_closed(http, &ask("edited.example.com")).await;
        let without = |response: &str| {
            response
                .split("\r\n")
                .filter(|l| !l.starts_with("date: ") && !l.starts_with("x-edited: "))
                .collect::<Vec<_>>()
                .join("\r\n")
        };
        assert!(edited.contains("\r\nx-edited: 1\r\n"), "{edited}");
        assert_eq!(
            without(&plain),
            without(&edited),
            "{method} {path} HTTP/{version}"
        );
    }
}
