//! Keep-alive connections from the proxy to its backends: reused across requests whatever the
//! response framing, never reused after the backend closed them or after a response that was
//! abandoned halfway. The backend is a raw HTTP/1.1 server that counts its connections.
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

/// Serves bodyless requests one after the other on one connection.
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
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        if answer(&mut stream, &path).await.is_err() || close_after_each {
            return;
        }
    }
}

async fn answer(stream: &mut TcpStream, path: &str) -> std::io::Result<()> {
    match path {
        "/chunked" => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
                .await?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            stream.write_all(b"3\r\ndef\r\n0\r\n\r\n").await
        }
        "/empty" => stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await,
        "/slow" => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345")
                .await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            stream.write_all(b"67890").await
        }
        _ => {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                .await
        }
    }
}

const HOST: &str = "pool.example.com";

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
        for (path, status, body) in [
            ("/", 200, "hello"),
            ("/chunked", 200, "abcdef"),
            ("/empty", 204, ""),
            ("/", 200, "hello"),
        ] {
            let got = get(&c, http, HOST, path, &[]).await;
            assert_eq!(got.status, status, "round {round} {path}");
            assert_eq!(got.body, body, "round {round} {path}");
        }
    }
    assert_eq!(
        backend.accepted(),
        1,
        "one backend connection for 12 requests"
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
