//! Connection-level tuning through a real proxy on 127.0.0.1, set as marathon-lb users set it
//! (`HAPROXY_{n}_BACKEND_SERVER_OPTIONS`, `…_BACKEND_HEAD`) or by mlb's flags: backend TLS,
//! `send-proxy`, per-service connect and client timeouts, `maxconn`, `accept-proxy`, and the
//! frontends' TLS policy.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
mod l7_common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use l7_common::*;
use mlb::{
    model::{HttpService, tuning_labels::port_tuning},
    proxy::{proxy_protocol, tls_policy::TlsPolicy},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

fn http(proxy: &mlb::proxy::HttpProxy) -> SocketAddr {
    proxy.local_addr("http").unwrap()
}

/// `app` on `vhost` with `backends`, tuned by `labels` as the model reads them for port 0.
fn tuned(
    app: &str,
    vhost: &str,
    backends: Vec<mlb::model::Backend>,
    labels: &[(&str, &str)],
) -> HttpService {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut s = service(app, &[]);
    s.backends = backends;
    s.vhosts = vec![vhost.into()];
    let (tuning, report) = port_tuning(&labels, 0).unwrap();
    assert!(
        report
            .iter()
            .all(|d| !matches!(d.effect, mlb::model::directives::Effect::NotApplied(_))),
        "every directive applies: {report:?}"
    );
    s.tuning = tuning.into();
    s
}

fn backend_at(name: &str, addr: SocketAddr) -> mlb::model::Backend {
    mlb::model::Backend {
        id: mlb::model::BackendId::from(format!("{name}:0")),
        addr,
        weight: 1,
        state: mlb::model::BackendState::Active,
    }
}

/// A TLS backend with a leaf of `ca` for `names`; answers `200 tls` with the SNI it saw.
async fn tls_backend(ca: &TestCa, names: &[&str]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let (path, _) = ca.leaf("backend.pem", names);
    let pem = std::fs::read(&path).unwrap();
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(&pem).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("-").to_owned();
                answer_one(&mut tls, &format!("tls sni={sni}")).await;
            });
        }
    });
    (addr, task)
}

/// Reads one request head and answers it with `body` (then closes).
async fn answer_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    io: &mut S,
    body: &str,
) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && io.read(&mut byte).await.unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = io.write_all(answer.as_bytes()).await;
    let _ = io.shutdown().await;
}

#[tokio::test]
async fn backend_tls_verify_none_required_with_ca_and_sni() {
    let backend_ca = TestCa::new("backend");
    let other_ca = TestCa::new("other");
    let (addr, _task) = tls_backend(&backend_ca, &["backend.example"]).await;
    let ca = backend_ca.ca_pem_path();
    let wrong = other_ca.ca_pem_path();
    let opts = |o: String| vec![("HAPROXY_0_BACKEND_SERVER_OPTIONS".to_owned(), o)];
    let cases = [
        (
            "none.example",
            "  server {serverName} {host_ipv4}:{port} ssl verify none".to_owned(),
        ),
        (
            "ca.example",
            format!(
                "  server {{serverName}} {{host_ipv4}}:{{port}} ssl verify required ca-file {} sni str(backend.example)",
                ca.display()
            ),
        ),
        (
            "chain.example",
            format!(
                "  server {{serverName}} {{host_ipv4}}:{{port}} ssl ca-file {}",
                ca.display()
            ),
        ),
        (
            "wrong.example",
            format!(
                "  server {{serverName}} {{host_ipv4}}:{{port}} ssl verify required ca-file {}",
                wrong.display()
            ),
        ),
        (
            "badname.example",
            format!(
                "  server {{serverName}} {{host_ipv4}}:{{port}} ssl ca-file {} sni str(other.example)",
                ca.display()
            ),
        ),
    ];
    let proxy = start_proxy(vec![], |_| {});
    let services = cases
        .iter()
        .map(|(vhost, o)| {
            let labels = opts(o.clone());
            let labels: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            tuned(
                &format!("/{vhost}"),
                vhost,
                vec![backend_at("tls", addr)],
                &labels,
            )
        })
        .collect();
    apply(&proxy, services);
    let c = http_client();
    let got = get(&c, http(&proxy), "none.example", "/", &[]).await;
    assert_eq!(
        (got.status.as_u16(), got.body.as_str()),
        (200, "tls sni=-"),
        "verify none, no SNI"
    );
    let got = get(&c, http(&proxy), "ca.example", "/", &[]).await;
    assert_eq!(
        (got.status.as_u16(), got.body.as_str()),
        (200, "tls sni=backend.example")
    );
    let got = get(&c, http(&proxy), "chain.example", "/", &[]).await;
    assert_eq!(
        got.status, 200,
        "verify required without sni checks the chain only"
    );
    let got = get(&c, http(&proxy), "wrong.example", "/", &[]).await;
    assert_eq!(got.status, 502, "a certificate from another CA is refused");
    let got = get(&c, http(&proxy), "badname.example", "/", &[]).await;
    assert_eq!(got.status, 502, "with sni, the name must match");
}

/// A plain backend that reads a PROXY header, then answers with the client address it carried.
async fn proxy_protocol_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                tcp.peek(&mut first).await.unwrap();
                let version = if first[0] == b'P' { "v1" } else { "v2" };
                let client = proxy_protocol::read(&mut tcp).await;
                let body = match client {
                    Ok(Some(a)) => format!("{version} {a}"),
                    other => format!("{other:?}"),
                };
                answer_one(&mut tcp, &body).await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn send_proxy_v1_and_v2_carry_the_client_address() {
    let (addr, _task) = proxy_protocol_backend().await;
    let proxy = start_proxy(vec![], |_| {});
    let server = |opt: &str| format!("  server {{serverName}} {{host_ipv4}}:{{port}} {opt}");
    let (v1, v2) = (server("send-proxy"), server("send-proxy-v2"));
    apply(
        &proxy,
        vec![
            tuned(
                "/v1",
                "v1.example",
                vec![backend_at("pp", addr)],
                &[("HAPROXY_0_BACKEND_SERVER_OPTIONS", &v1)],
            ),
            tuned(
                "/v2",
                "v2.example",
                vec![backend_at("pp", addr)],
                &[("HAPROXY_0_BACKEND_SERVER_OPTIONS", &v2)],
            ),
        ],
    );
    for (vhost, version) in [("v1.example", "v1"), ("v2.example", "v2")] {
        let mut tcp = TcpStream::connect(http(&proxy)).await.unwrap();
        let client = tcp.local_addr().unwrap();
        let req = format!("GET / HTTP/1.1\r\nhost: {vhost}\r\nconnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&format!("{version} {client}")), "{answer}");
    }
}

/// A listener whose accept queue is full: further SYNs are dropped, so connecting hangs.
fn black_hole() -> (
    std::net::SocketAddr,
    Vec<std::net::TcpStream>,
    socket2::Socket,
) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    (addr, fillers, socket)
}

#[tokio::test]
async fn a_service_timeout_connect_gives_up_before_the_global_one() {
    let (hole, _fillers, _socket) = black_hole();
    let proxy = start_proxy(vec![], |c| {
        c.timeouts.connect = Duration::from_secs(20);
        c.timeouts.server = Duration::from_millis(1500);
    });
    apply(
        &proxy,
        vec![
            tuned(
                "/fast",
                "fast.example",
                vec![backend_at("hole", hole)],
                &[("HAPROXY_0_BACKEND_HEAD", "  timeout connect 200ms")],
            ),
            tuned(
                "/plain",
                "plain.example",
                vec![backend_at("hole", hole)],
                &[],
            ),
        ],
    );
    let c = http_client();
    let started = Instant::now();
    let got = get(&c, http(&proxy), "fast.example", "/", &[]).await;
    assert_eq!(got.status, 502, "connect failed after the service's 200 ms");
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    let got = get(&c, http(&proxy), "plain.example", "/", &[]).await;
    assert_eq!(
        got.status, 504,
        "the global 20 s connect timeout outlives the server timeout"
    );
}

#[tokio::test]
async fn server_maxconn_queues_briefly_then_refuses() {
    let a = TestBackend::start("a").await;
    let opts = "  server {serverName} {host_ipv4}:{port} maxconn 1";
    let proxy = start_proxy(vec![], |c| {
        c.conn_gate = mlb::overload::ConnGate::new(mlb::overload::ConnLimits {
            queue_timeout: Duration::from_millis(400),
            ..mlb::overload::ConnLimits::default()
        });
    });
    apply(
        &proxy,
        vec![tuned(
            "/m",
            "m.example",
            vec![a.backend()],
            &[("HAPROXY_0_BACKEND_SERVER_OPTIONS", opts)],
        )],
    );
    let c = http_client();
    let addr = http(&proxy);
    // Two at once, each 1 s: the second waits 400 ms for the slot, then gets 503.
    let (x, y) = tokio::join!(
        get(&c, addr, "m.example", "/slow?ms=1000", &[]),
        get(&c, addr, "m.example", "/slow?ms=1000", &[])
    );
    let mut statuses = [x.status.as_u16(), y.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 503]);
    // Two at once, each 100 ms: the second waits in the queue and is served.
    let (x, y) = tokio::join!(
        get(&c, addr, "m.example", "/slow?ms=100", &[]),
        get(&c, addr, "m.example", "/slow?ms=100", &[])
    );
    assert_eq!([x.status.as_u16(), y.status.as_u16()], [200, 200]);
    assert_eq!(a.count(), 3);
}

#[tokio::test]
async fn frontend_maxconn_limits_a_service_ports_connections() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |c| {
        c.conn_gate = mlb::overload::ConnGate::new(mlb::overload::ConnLimits {
            queue_timeout: Duration::from_millis(300),
            ..mlb::overload::ConnLimits::default()
        });
    });
    let svc = tuned(
        "/f",
        "f.example",
        vec![a.backend()],
        &[("MLB_0_MAXCONN", "1")],
    );
    let port = svc.service_port;
    apply(&proxy, vec![svc]);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut first = TcpStream::connect(addr).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nhost: f.example\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // The first connection stays open: a second one is closed after the queue timeout.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nhost: f.example\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(3), second.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "closed without an answer");
    // Once the first closes, a new connection is served.
    drop(first);
    let c = http_client();
    let mut status = 0;
    for _ in 0..20 {
        status = get(&c, addr, "f.example", "/", &[]).await.status.as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_service_timeout_client_closes_a_silent_client_on_its_port() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |c| c.timeouts.client = Duration::from_secs(30));
    let svc = tuned(
        "/c",
        "c.example",
        vec![a.backend()],
        &[("MLB_0_TIMEOUT_CLIENT", "300ms")],
    );
    let port = svc.service_port;
    apply(&proxy, vec![svc]);
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn accept_proxy_takes_the_client_address_from_the_header() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |c| c.accept_proxy = true);
    apply(
        &proxy,
        vec![tuned("/p", "p.example", vec![a.backend()], &[])],
    );
    let client: SocketAddr = "198.18.0.9:41000".parse().unwrap();
    for version in [
        mlb::model::tuning::ProxyProtocol::V1,
        mlb::model::tuning::ProxyProtocol::V2,
    ] {
        let mut tcp = TcpStream::connect(http(&proxy)).await.unwrap();
        let local = tcp.peer_addr().unwrap();
        tcp.write_all(&proxy_protocol::encode(version, client, local))
            .await
            .unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: p.example\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.contains("x-seen-xff: 198.18.0.9"),
            "{version:?}: {answer}"
        );
    }
    // No header: the connection is closed unanswered.
    let mut tcp = TcpStream::connect(http(&proxy)).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: p.example\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    assert!(answer.is_empty());
}

/// A client offering only `versions` and `suites`.
fn narrow_client(
    ca: &TestCa,
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: &[rustls::CipherSuite],
) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| suites.is_empty() || suites.contains(&s.suite()));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

#[tokio::test]
async fn tls_policy_sets_min_version_and_cipher_suites() {
    use rustls::CipherSuite as S;
    let ca = TestCa::new("policy");
    let (cert, _) = ca.leaf("site.pem", &["site.example"]);
    let only13 = start_proxy(vec![cert.clone()], |c| {
        c.tls_policy = TlsPolicy {
            min_version: mlb::model::TlsVersion::Tls13,
            ..TlsPolicy::default()
        };
    });
    let narrow12 = start_proxy(vec![cert], |c| {
        c.tls_policy = TlsPolicy {
            ciphers: vec!["ECDHE-ECDSA-AES256-GCM-SHA384".into()],
            ..TlsPolicy::default()
        };
    });
    let v12 = &[&rustls::version::TLS12];
    let v13 = &[&rustls::version::TLS13];
    let https = |p: &mlb::proxy::HttpProxy| p.local_addr("https").unwrap();
    let ok = |r: std::io::Result<_>| r.is_ok();
    assert!(ok(tls_connect(
        https(&only13),
        "site.example",
        narrow_client(&ca, v13, &[])
    )
    .await));
    assert!(!ok(tls_connect(
        https(&only13),
        "site.example",
        narrow_client(&ca, v12, &[])
    )
    .await));
    let aes128 = [S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256];
    let aes256 = [S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384];
    assert!(!ok(tls_connect(
        https(&narrow12),
        "site.example",
        narrow_client(&ca, v12, &aes128)
    )
    .await));
    assert!(ok(tls_connect(
        https(&narrow12),
        "site.example",
        narrow_client(&ca, v12, &aes256)
    )
    .await));
    // TLS 1.3 suites are another list: untouched.
    assert!(ok(tls_connect(
        https(&narrow12),
        "site.example",
        narrow_client(&ca, v13, &[])
    )
    .await));
}
