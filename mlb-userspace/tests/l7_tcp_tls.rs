//! TLS on a tcp-mode service port (`HAPROXY_{n}_MODE=tcp` with `HAPROXY_{n}_SSL_CERT`): the
//! proxy terminates TLS and forwards the plain bytes to a backend, as marathon-lb's HAProxy did.
//! Clients: rustls and `openssl s_client`.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
mod l7_common;

use std::{net::SocketAddr, process::Stdio, time::Duration};

use l7_common::*;
use mlb::model::{Backend, BackendId, BackendState, HttpService};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

/// A plain TCP backend that answers each line with `<name>: <line>`.
async fn line_backend(name: &'static str) -> (Backend, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = tcp.read(&mut buf).await {
                    let line = String::from_utf8_lossy(&buf[..n]).to_string();
                    let answer = format!("{name}: {line}");
                    if tcp.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let backend = Backend {
        id: BackendId::from(format!("{name}:0")),
        addr,
        weight: 1,
        state: BackendState::Active,
    };
    (backend, task)
}

fn tcp_tls_service(cert: std::path::PathBuf, backend: Backend) -> HttpService {
    let mut svc = service("/db", &[]);
    svc.tcp_tls = true;
    svc.ssl_certs = vec![cert];
    svc.backends = vec![backend];
    svc
}

#[tokio::test]
async fn tls_is_terminated_and_plain_tcp_reaches_the_backend() {
    let ca = TestCa::new("tcptls");
    let (cert, leaf) = ca.leaf("db.pem", &["db.example"]);
    let (backend, _task) = line_backend("db").await;
    let proxy = start_proxy(vec![], |_| {});
    let svc = tcp_tls_service(cert, backend);
    let addr: SocketAddr = ([127, 0, 0, 1], svc.service_port).into();
    apply(&proxy, vec![svc]);
    let mut tls = tls_connect(addr, "db.example", ca.client_config(&[b"h2"]))
        .await
        .unwrap();
    assert_eq!(peer_leaf(&tls), leaf, "the label's certificate");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        None,
        "no HTTP protocol negotiated"
    );
    for line in ["PING\n", "not http at all\n"] {
        tls.write_all(line.as_bytes()).await.unwrap();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            format!("db: {line}")
        );
    }
}

#[tokio::test]
async fn openssl_s_client_talks_through_it() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        eprintln!("SKIP: openssl is not installed (cargo xtask setup installs it)");
        return;
    }
    let ca = TestCa::new("tcptls-openssl");
    let (cert, _) = ca.leaf("db.pem", &["db.example"]);
    let (backend, _task) = line_backend("db").await;
    let proxy = start_proxy(vec![], |_| {});
    let svc = tcp_tls_service(cert, backend);
    let port = svc.service_port;
    apply(&proxy, vec![svc]);
    let ca_file = ca.ca_pem_path();
    let mut child = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-servername",
            "db.example",
        ])
        .args(["-connect", &format!("127.0.0.1:{port}"), "-CAfile"])
        .arg(&ca_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello from openssl\n").await.unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !got.ends_with(b"\n") {
        let n = tokio::time::timeout_at(deadline, stdout.read(&mut buf))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(n > 0, "s_client ended: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got), "db: hello from openssl\n");
    drop(stdin);
    let _ = child.kill().await;
}
