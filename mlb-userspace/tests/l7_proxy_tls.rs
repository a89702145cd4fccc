//! TLS and newer protocols through the proxy: SNI certificate selection checked by clients that
//! trust only a CA generated in the test, certificate rotation under open connections, 421 on
//! Host/SNI mismatch, passthrough, per-service certificates, HTTP/2 (ALPN and h2c), gRPC
//! trailers, WebSocket tunnels, and curl/h2load as outside clients.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
mod l7_common;

use std::{net::SocketAddr, process::Command, sync::Arc, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use l7_common::*;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A CA, three certificates in one directory (default first by file name), and a proxy serving
/// `www.example.com` (backend `www`) and `api.example.com` (backend `api`).
struct TlsSetup {
    ca: TestCa,
    proxy: mlb::proxy::HttpProxy,
    default_der: Vec<u8>,
    wildcard_der: Vec<u8>,
    exact_der: Vec<u8>,
    www: TestBackend,
    api: TestBackend,
}

impl TlsSetup {
    async fn new(tag: &str) -> TlsSetup {
        let ca = TestCa::new(tag);
        let certs = ca.dir.join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let (_, default_der) = ca.leaf("certs/0-default.pem", &["default.example.net"]);
        let (_, wildcard_der) = ca.leaf("certs/1-wildcard.pem", &["*.example.com"]);
        let (_, exact_der) = ca.leaf("certs/2-exact.pem", &["www.example.com"]);
        let proxy = start_proxy(vec![certs], |_| {});
        let (www, api) = (
            TestBackend::start("www").await,
            TestBackend::start("api").await,
        );
        let mut s_www = service("/www", &[&www]);
        s_www.vhosts = vec!["www.example.com".into()];
        let mut s_api = service("/api", &[&api]);
        s_api.vhosts = vec!["api.example.com".into()];
        apply(&proxy, vec![s_www, s_api]);
        TlsSetup {
            ca,
            proxy,
            default_der,
            wildcard_der,
            exact_der,
            www,
            api,
        }
    }

    fn https(&self) -> SocketAddr {
        self.proxy.local_addr("https").unwrap()
    }
}

#[tokio::test]
async fn sni_picks_exact_then_wildcard_then_default_certificate() {
    let t = TlsSetup::new("sni").await;
    let config = t.ca.client_config(&[b"http/1.1"]);
    for (sni, want_der, backend) in [
        ("www.example.com", &t.exact_der, "www"),
        ("api.example.com", &t.wildcard_der, "api"),
    ] {
        let tls = tls_connect(t.https(), sni, config.clone()).await.unwrap();
        assert_eq!(&peer_leaf(&tls), want_der, "{sni}");
        let mut conn = h1_over(tls).await;
        let got = read(conn.send_request(request(sni, "/", false)).await.unwrap()).await;
        assert_eq!(got.backend(), Some(backend), "{sni}");
        assert_eq!(got.header("x-seen-xfp"), Some("https"));
    }
    // An unknown name gets the default certificate, which a verifying client refuses.
    let err = tls_connect(t.https(), "unknown.example.org", config.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    let tls = tls_connect(t.https(), "default.example.net", config)
        .await
        .unwrap();
    assert_eq!(peer_leaf(&tls), t.default_der);
    let mut conn = h1_over(tls).await;
    let got = read(
        conn.send_request(request("default.example.net", "/", false))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 503, "no app has that vhost");
    let _ = (&t.www, &t.api);
}

#[tokio::test]
async fn host_served_by_another_certificate_than_the_sni_gets_421() {
    let t = TlsSetup::new("misdirected").await;
    let config = t.ca.client_config(&[b"h2"]);
    let tls = tls_connect(t.https(), "www.example.com", config.clone())
        .await
        .unwrap();
    let mut h2 = h2_over(tls).await;
    let got = read(
        h2.send_request(request("api.example.com", "/", true))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 421);
    let got = read(
        h2.send_request(request("www.example.com", "/", true))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.backend(), Some("www"));
    // Same certificate (the wildcard) for both names: the connection may be reused, and the
    // request is routed on its Host.
    let mut s_other = service("/other", &[&t.api]);
    s_other.vhosts = vec!["other.example.com".into()];
    let mut s_www = service("/www", &[&t.www]);
    s_www.vhosts = vec!["www.example.com".into()];
    let mut s_api = service("/api", &[&t.api]);
    s_api.vhosts = vec!["api.example.com".into()];
    apply(&t.proxy, vec![s_www, s_api, s_other]);
    let tls = tls_connect(t.https(), "api.example.com", config)
        .await
        .unwrap();
    let mut h2 = h2_over(tls).await;
    let got = read(
        h2.send_request(request("other.example.com", "/", true))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.header("x-seen-version"),
        Some("HTTP/1.1"),
        "backends get HTTP/1.1"
    );
}

#[tokio::test]
async fn certificate_rotation_keeps_open_connections_and_serves_the_new_one() {
    let t = TlsSetup::new("rotate").await;
    let config = t.ca.client_config(&[b"http/1.1"]);
    let tls = tls_connect(t.https(), "www.example.com", config.clone())
        .await
        .unwrap();
    assert_eq!(peer_leaf(&tls), t.exact_der);
    let mut held = h1_over(tls).await;
    assert_eq!(
        read(
            held.send_request(request("www.example.com", "/", false))
                .await
                .unwrap()
        )
        .await
        .status,
        200
    );

    // The file changes on disk: picked up by the watcher, no call needed.
    let (_, rotated) = t.ca.leaf("certs/2-exact.pem", &["www.example.com"]);
    assert_ne!(rotated, t.exact_der);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tls = tls_connect(t.https(), "www.example.com", config.clone())
            .await
            .unwrap();
        if peer_leaf(&tls) == rotated {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new certificate served in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connection opened before the rotation is still served.
    for _ in 0..3 {
        let got = read(
            held.send_request(request("www.example.com", "/", false))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(got.backend(), Some("www"));
    }

    // An explicit reload (`/_mlb_signal/usr1`) with a broken file keeps the last good one.
    std::fs::write(t.ca.dir.join("certs/2-exact.pem"), b"not a certificate").unwrap();
    let errors = t.proxy.reload_certs();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].to_string().contains("2-exact.pem"),
        "{}",
        errors[0]
    );
    let tls = tls_connect(t.https(), "www.example.com", config)
        .await
        .unwrap();
    assert_eq!(peer_leaf(&tls), rotated);
}

#[tokio::test]
async fn service_port_serves_tls_with_its_own_certificate() {
    let ca = TestCa::new("svcport");
    let (cert, der) = ca.leaf("svc.pem", &["svc.example.com"]);
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |_| {});
    let mut s = service("/svc", &[&a]);
    s.ssl_certs = vec![cert];
    let port = s.service_port;
    apply(&proxy, vec![s]);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let tls = tls_connect(addr, "svc.example.com", ca.client_config(&[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(peer_leaf(&tls), der);
    let mut conn = h1_over(tls).await;
    let got = read(
        conn.send_request(request("svc.example.com", "/", false))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.backend(), Some("a"));
}

/// A TLS backend (its own certificate) answering every request with `tls-backend`.
async fn tls_backend(ca: &TestCa) -> (SocketAddr, Vec<u8>) {
    let (path, der) = ca.leaf("passthrough-backend.pem", &["secure.example.com"]);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&path).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(text("tls-backend")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, der)
}

#[tokio::test]
async fn tls_passthrough_splices_by_sni_without_terminating() {
    let t = TlsSetup::new("passthrough").await;
    let (backend_addr, backend_der) = tls_backend(&t.ca).await;
    let mut pass = service("/secure", &[]);
    pass.backends = vec![mlb::model::Backend {
        id: mlb::model::BackendId::from("secure.1:0"),
        addr: backend_addr,
        weight: 1,
        state: mlb::model::BackendState::Active,
    }];
    pass.vhosts = vec!["secure.example.com".into()];
    pass.tls_passthrough = true;
    let mut s_www = service("/www", &[&t.www]);
    s_www.vhosts = vec!["www.example.com".into()];
    apply(&t.proxy, vec![pass, s_www]);
    let config = t.ca.client_config(&[b"http/1.1"]);
    let tls = tls_connect(t.https(), "secure.example.com", config.clone())
        .await
        .unwrap();
    assert_eq!(
        peer_leaf(&tls),
        backend_der,
        "the backend's own certificate: not terminated"
    );
    let mut conn = h1_over(tls).await;
    let got = read(
        conn.send_request(request("secure.example.com", "/", false))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.body, "tls-backend");
    // Other names on :443 are still terminated by the proxy.
    let tls = tls_connect(t.https(), "www.example.com", config)
        .await
        .unwrap();
    assert_eq!(peer_leaf(&tls), t.exact_der);
    let mut conn = h1_over(tls).await;
    let got = read(
        conn.send_request(request("www.example.com", "/", false))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.backend(), Some("www"));
}

#[tokio::test]
async fn http2_over_tls_alpn_and_h2c_prior_knowledge() {
    let t = TlsSetup::new("h2").await;
    let tls = tls_connect(
        t.https(),
        "www.example.com",
        t.ca.client_config(&[b"h2", b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = h2_over(tls).await;
    let mut pending = Vec::new();
    for _ in 0..20 {
        pending.push(h2.send_request(request("www.example.com", "/", true)));
    }
    for resp in pending {
        let got = read(resp.await.unwrap()).await;
        assert_eq!(got.backend(), Some("www"));
        assert_eq!(got.header("x-seen-host"), Some("www.example.com"));
    }
    // h2c with prior knowledge on the plain :80 frontend.
    let http = t.proxy.local_addr("http").unwrap();
    let mut h2c = h2_over(tokio::net::TcpStream::connect(http).await.unwrap()).await;
    let req = Request::get("http://api.example.com/x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = read(h2c.send_request(req).await.unwrap()).await;
    assert_eq!(got.backend(), Some("api"));
}

/// The streams of one HTTP/2 connection are served side by side: a request waiting for a
/// slow backend holds up neither the requests sent after it nor their answers.
#[tokio::test]
async fn a_slow_http2_stream_holds_up_none_of_its_connections_others() {
    let t = TlsSetup::new("h2-slow").await;
    let tls = tls_connect(t.https(), "www.example.com", t.ca.client_config(&[b"h2"]))
        .await
        .unwrap();
    let mut h2 = h2_over(tls).await;
    let slow = h2.send_request(request("www.example.com", "/slow?ms=3000", true));
    let slow = tokio::spawn(slow);
    let started = std::time::Instant::now();
    let quick: Vec<_> = (0..10)
        .map(|_| h2.send_request(request("www.example.com", "/", true)))
        .collect();
    for resp in quick {
        let got = read(resp.await.unwrap()).await;
        assert_eq!(got.backend(), Some("www"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "quick streams waited for the slow one: {:?}",
        started.elapsed()
    );
    let got = read(slow.await.unwrap().unwrap()).await;
    assert_eq!(
        got.backend(),
        Some("www"),
        "and the slow one is answered too"
    );
}

#[tokio::test]
async fn grpc_over_h2_passes_trailers() {
    let t = TlsSetup::new("grpc").await;
    let tls = tls_connect(t.https(), "api.example.com", t.ca.client_config(&[b"h2"]))
        .await
        .unwrap();
    let mut h2 = h2_over(tls).await;
    let req = Request::post("https://api.example.com/grpc")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x00")))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("x-seen-version").unwrap(),
        "HTTP/2.0",
        "gRPC reaches the backend over HTTP/2"
    );
    let collected = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrived");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("grpc-message").unwrap(), "ok-from-backend");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");
}

#[tokio::test]
async fn websocket_tunnel_echoes_and_outlives_its_backends_removal() {
    let a = TestBackend::start("ws").await;
    let proxy = start_proxy(vec![], |_| {});
    let mut s = service("/ws", &[&a]);
    s.vhosts = vec!["ws.example.com".into()];
    apply(&proxy, vec![s.clone()]);
    let http = proxy.local_addr("http").unwrap();
    let mut conn = h1_over(tokio::net::TcpStream::connect(http).await.unwrap()).await;
    let req = Request::get("/ws")
        .header("host", "ws.example.com")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = conn.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers().get("upgrade").unwrap(), "websocket");
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut io = TokioIo::new(upgraded);
    let mut echo = async |msg: &[u8]| {
        io.write_all(msg).await.unwrap();
        let mut buf = vec![0; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .unwrap();
        buf
    };
    assert_eq!(echo(b"hello").await, b"hello");
    // The backend leaves the configuration: the open tunnel keeps working (drained, not cut).
    let id = a.backend().id;
    assert_eq!(proxy.backend_in_flight(&id), Some(1));
    remove(&proxy, &[&s.key]);
    assert_eq!(echo(b"still there").await, b"still there");
    assert_eq!(proxy.backend_in_flight(&id), Some(1));
}

fn tool(name: &str) -> bool {
    let found = Command::new(name).arg("--version").output().is_ok();
    if !found {
        eprintln!("{name} not installed (cargo xtask setup installs it); skipping that part");
    }
    found
}

#[tokio::test]
async fn curl_http2_and_h2load_through_tls() {
    let t = TlsSetup::new("curl").await;
    let port = t.https().port();
    let ca = t.ca.ca_pem_path();
    if tool("curl") {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--http2", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("www.example.com:{port}:127.0.0.1")])
            .args(["-w", "\n%{http_version} %{http_code}", "-o", "-"])
            .arg(format!("https://www.example.com:{port}/"))
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.ends_with("\n2 200"), "{stdout}");
        assert!(stdout.starts_with("www"), "{stdout}");
    }
    if tool("h2load") {
        let out = tokio::process::Command::new("h2load")
            .args([
                "-n",
                "400",
                "-c",
                "4",
                "-m",
                "8",
                "-H",
                ":authority: api.example.com",
            ])
            .arg(format!("https://127.0.0.1:{port}/"))
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .unwrap()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("400 succeeded, 0 failed, 0 errored"),
            "{stdout}"
        );
        assert!(stdout.contains("400 2xx"), "{stdout}");
        assert!(stdout.contains("h2"), "{stdout}");
    }
}

#[tokio::test]
async fn self_signed_certificate_when_none_is_given() {
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |_| {});
    let mut s = service("/a", &[&a]);
    s.vhosts = vec!["localhost".into()];
    apply(&proxy, vec![s]);
    if !tool("curl") {
        return;
    }
    let port = proxy.local_addr("https").unwrap().port();
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-k", "--max-time", "10", "-w", " %{http_code}"])
        .arg(format!("https://localhost:{port}/"))
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a 200");
}

/// A rustls client trusting `ca`, speaking only `versions`, offering `alpn`, and presenting the
/// client certificate in `client_pem` (chain + key, as `TestCa::leaf` writes it) when given.
fn client_with(
    ca: &TestCa,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
    client_pem: Option<&std::path::Path>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client_pem {
        Some(path) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let key = PrivateKeyDer::from_pem_file(path).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Whether a request over a fresh TLS connection is answered (a refused client certificate
/// shows up at the first read under TLS 1.3, not in the handshake).
async fn answered(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<String, String> {
    let tls = tls_connect(addr, "svc.example.com", config)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let alpn = tls
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    if alpn == "h2" {
        // Accepted and h2 negotiated; this helper speaks HTTP/1.1 only.
        return Ok(alpn);
    }
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("h1: {e}"))?;
    tokio::spawn(conn);
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        sender.send_request(request("svc.example.com", "/", false)),
    )
    .await
    .map_err(|_| "timeout".to_owned())?
    .map_err(|e| format!("request: {e}"))?;
    Ok(format!("{} {alpn}", resp.status().as_u16()))
}

/// `HAPROXY_{n}_BIND_OPTIONS` on a TLS service port: `alpn http/1.1` is what is negotiated even
/// when the client prefers h2; `ssl-min-ver TLSv1.3` refuses TLS 1.2 clients; `verify required
/// ca-file` refuses clients without a certificate from that CA. The options change in place:
/// the same listener then accepts TLS 1.2 again.
#[tokio::test]
async fn service_port_bind_options_set_alpn_versions_and_client_certificates() {
    let ca = TestCa::new("bindopts");
    let (cert, _) = ca.leaf("svc.pem", &["svc.example.com"]);
    let (client_pem, _) = ca.leaf("client.pem", &["client.example.com"]);
    let stranger = TestCa::new("bindopts-stranger");
    let (stranger_pem, _) = stranger.leaf("stranger.pem", &["client.example.com"]);
    let a = TestBackend::start("a").await;
    let proxy = start_proxy(vec![], |_| {});
    let mut s = service("/svc", &[&a]);
    s.ssl_certs = vec![cert];
    s.tls.alpn = vec!["http/1.1".into()];
    s.tls.min_version = Some(mlb::model::TlsVersion::Tls13);
    s.tls.client_auth = Some(mlb::model::ClientAuth {
        ca_file: ca.ca_pem_path(),
        required: true,
    });
    let addr: SocketAddr = format!("127.0.0.1:{}", s.service_port).parse().unwrap();
    apply(&proxy, vec![s.clone()]);
    let v13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let v12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let alpn: &[&[u8]] = &[b"h2", b"http/1.1"];

    let ok = answered(addr, client_with(&ca, v13, alpn, Some(&client_pem))).await;
    assert_eq!(ok.as_deref(), Ok("200 http/1.1"), "ALPN from BIND_OPTIONS");
    let no_cert = answered(addr, client_with(&ca, v13, alpn, None)).await;
    assert!(no_cert.is_err(), "no client certificate: {no_cert:?}");
    let wrong_ca = answered(addr, client_with(&ca, v13, alpn, Some(&stranger_pem))).await;
    assert!(wrong_ca.is_err(), "certificate of another CA: {wrong_ca:?}");
    let old = answered(addr, client_with(&ca, v12, alpn, Some(&client_pem))).await;
    assert!(old.is_err(), "TLS 1.2 below ssl-min-ver: {old:?}");

    // `verify optional`, no version bound, default ALPN: applied without reopening the port.
    s.tls.min_version = None;
    s.tls.alpn = vec![];
    s.tls.client_auth.as_mut().unwrap().required = false;
    apply(&proxy, vec![s]);
    let anon12 = answered(addr, client_with(&ca, v12, alpn, None)).await;
    assert_eq!(
        anon12.as_deref(),
        Ok("h2"),
        "TLS 1.2 without certificate, default ALPN"
    );
}

/// An idle HTTPS keep-alive connection is parked (its HTTP state freed, its TLS session kept)
/// and serves the client's next requests on the same TLS session.
#[tokio::test]
async fn a_parked_tls_connection_serves_its_next_requests() {
    let t = TlsSetup::new("park").await;
    let config = t.ca.client_config(&[b"http/1.1"]);
    let tls = tls_connect(t.https(), "www.example.com", config)
        .await
        .unwrap();
    let mut conn = h1_over(tls).await;
    for round in 0..3 {
        let sent = conn.send_request(request("www.example.com", "/", false));
        let got = read(sent.await.unwrap()).await;
        assert_eq!(got.status, 200, "request {round}");
        assert_eq!(got.backend(), Some("www"), "request {round}");
        wait_until("the idle TLS connection is parked", || {
            t.proxy.parked_connections() == 1
        })
        .await;
    }
    assert_eq!(t.www.count(), 3);
}
