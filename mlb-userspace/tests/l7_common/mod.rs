//! Shared pieces of the L7 proxy tests: real backends (hyper servers on 127.0.0.1), a real
//! proxy on ephemeral ports, real clients, and certificates from a CA generated per test.
#![allow(dead_code, reason = "each test binary uses a different subset")]
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use mlb::{
    dataplane::HttpChange,
    model::{Backend, BackendId, BackendState, HttpService, HttpServiceKey},
    proxy::{HttpProxy, ProxyConfig},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

pub type TestBody = BoxBody<Bytes, Infallible>;

/// A backend server: answers with its name and echoes what it saw in `x-seen-*` headers.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestBackend {
    pub async fn start(name: &str) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let (name2, requests2) = (name.to_owned(), requests.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (name, requests) = (name2.clone(), requests2.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        requests.fetch_add(1, Ordering::SeqCst);
                        backend_answer(name.clone(), req)
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        TestBackend {
            name: name.to_owned(),
            addr,
            requests,
            task,
        }
    }

    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// This backend as a model backend (id `<name>:0`).
    pub fn backend(&self) -> Backend {
        Backend {
            id: BackendId::from(format!("{}:0", self.name)),
            addr: self.addr,
            weight: 1,
            state: BackendState::Active,
        }
    }
}

fn query_param<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

async fn backend_answer(
    name: String,
    mut req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let mut resp = Response::builder().header("x-backend", &name);
    for (seen, header) in [
        ("x-seen-host", "host"),
        ("x-seen-xff", "x-forwarded-for"),
        ("x-seen-xfp", "x-forwarded-proto"),
        ("x-seen-xfport", "x-forwarded-port"),
        ("x-seen-cookie", "cookie"),
        ("x-seen-authorization", "authorization"),
    ] {
        if let Some(v) = req.headers().get(header) {
            resp = resp.header(seen, v);
        }
    }
    if let Some(authority) = req.uri().authority() {
        resp = resp.header("x-seen-authority", authority.as_str());
    }
    resp = resp.header(
        "x-seen-path",
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
    );
    resp = resp.header("x-seen-version", format!("{:?}", req.version()));
    let body: TestBody = match path.as_str() {
        "/ws" => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 4096];
                    loop {
                        match io.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if io.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            });
            return Ok(resp
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("upgrade", "websocket")
                .header("connection", "upgrade")
                .body(empty())
                .unwrap());
        }
        "/slow" => {
            let ms: u64 = query_param(&req, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(500);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text(&name)
        }
        "/redirect" => {
            let to = query_param(&req, "to").unwrap_or("/").to_owned();
            return Ok(resp
                .status(StatusCode::FOUND)
                .header("location", to)
                .body(empty())
                .unwrap());
        }
        "/sink" => {
            let mut total = 0usize;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    total += data.len();
                }
            }
            text(&format!("received={total}"))
        }
        "/source" => {
            let mb: usize = query_param(&req, "mb")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let chunks = mb * 16;
            let stream = futures_util::stream::iter(
                (0..chunks).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone()))),
            );
            StreamBody::new(stream).boxed()
        }
        "/stall" => {
            // One chunk, then nothing, ever.
            let first = futures_util::stream::iter([Ok::<_, Infallible>(Frame::data(
                Bytes::from_static(b"partial"),
            ))]);
            StreamBody::new(futures_util::StreamExt::chain(
                first,
                futures_util::stream::pending(),
            ))
            .boxed()
        }
        "/grpc" => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("grpc-message", "ok-from-backend".parse().unwrap());
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\x02hi"))),
                Ok(Frame::trailers(trailers)),
            ];
            resp = resp.header("content-type", "application/grpc");
            StreamBody::new(futures_util::stream::iter(frames)).boxed()
        }
        _ => text(&name),
    };
    Ok(resp.status(StatusCode::OK).body(body).unwrap())
}

pub fn text(s: &str) -> TestBody {
    Full::new(Bytes::from(s.to_owned()))
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> TestBody {
    text("")
}

/// A proxy on 127.0.0.1 with every fixed frontend on an ephemeral port.
pub fn start_proxy(certs: Vec<PathBuf>, tweak: impl FnOnce(&mut ProxyConfig)) -> HttpProxy {
    let lo = "127.0.0.1:0".parse::<SocketAddr>().unwrap();
    let mut config = ProxyConfig {
        http_addr: Some(lo),
        https_addr: Some(lo),
        appid_addr: Some(lo),
        service_bind_ip: "127.0.0.1".parse().unwrap(),
        ssl_certs: certs,
        cert_poll_interval: Duration::from_millis(200),
        ..ProxyConfig::default()
    };
    tweak(&mut config);
    HttpProxy::start(config, tokio::runtime::Handle::current()).unwrap()
}

/// A proxy (its config tweaked by `tweak`) routing the vhost `www.example.com` to a backend
/// `www`.
pub async fn www_proxy(tweak: impl FnOnce(&mut ProxyConfig)) -> (HttpProxy, TestBackend) {
    let proxy = start_proxy(Vec::new(), tweak);
    let www = TestBackend::start("www").await;
    let mut svc = service("/www", &[&www]);
    svc.vhosts = vec!["www.example.com".into()];
    apply(&proxy, vec![svc]);
    (proxy, www)
}

/// A port free on 127.0.0.1 right now (for service ports).
/// Never the same port twice in a test binary: the OS may hand a just-released port out again,
/// and two services on one port would share one listener.
pub fn free_port() -> u16 {
    static TAKEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut taken = TAKEN.lock().unwrap();
        if !taken.contains(&port) {
            taken.push(port);
            return port;
        }
    }
}

/// An HTTP service with marathon-lb's defaults.
pub fn service(app: &str, backends: &[&TestBackend]) -> HttpService {
    HttpService {
        backends: backends.iter().map(|b| b.backend()).collect(),
        ..HttpService::new(app, 0, free_port())
    }
}

/// The changes the controller sends for services that appeared or changed.
pub fn upserts(list: Vec<HttpService>) -> Vec<HttpChange> {
    list.into_iter()
        .map(|s| HttpChange::Upsert(Arc::new(s)))
        .collect()
}

/// Upserts `list` and fails the test on any reported problem.
pub fn apply(proxy: &HttpProxy, list: Vec<HttpService>) {
    let errors = proxy.apply_changes(&upserts(list));
    assert!(errors.is_empty(), "{errors:?}");
}

/// Removes the services of `keys` and fails the test on any reported problem.
pub fn remove(proxy: &HttpProxy, keys: &[&HttpServiceKey]) {
    let changes: Vec<HttpChange> = keys
        .iter()
        .map(|k| HttpChange::Remove((*k).clone()))
        .collect();
    let errors = proxy.apply_changes(&changes);
    assert!(errors.is_empty(), "{errors:?}");
}

/// A response read whole.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn backend(&self) -> Option<&str> {
        self.header("x-backend")
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `GET http://addr{path}` with `Host: host` and extra headers, bounded in time.
pub async fn get(
    client: &HttpClient,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Got {
    let mut req = Request::get(format!("http://{addr}{path}")).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req))
        .await
        .expect("response in time")
        .expect("response");
    read(resp).await
}

pub async fn read(resp: Response<Incoming>) -> Got {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// A CA generated for one test, signing leaf certificates written as PEM (chain + key) files.
pub struct TestCa {
    pub cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pub dir: PathBuf,
}

impl TestCa {
    pub fn new(tag: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("mlb test CA {tag}"));
        let cert = params.self_signed(&key).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "mlb-l7-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TestCa { cert, key, dir }
    }

    /// Writes `<file>` with a leaf for `names` (+ the CA in the chain) and its key; returns the
    /// path and the leaf's DER.
    pub fn leaf(&self, file: &str, names: &[&str]) -> (PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(
            names
                .iter()
                .map(std::string::ToString::to_string)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        let leaf = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let path = self.dir.join(file);
        let pem = format!("{}{}{}", leaf.pem(), self.cert.pem(), key.serialize_pem());
        write_atomically(&path, pem.as_bytes());
        (path, leaf.der().to_vec())
    }

    /// A rustls client config trusting only this CA.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    pub fn ca_pem_path(&self) -> PathBuf {
        let p = self.dir.join("ca.crt");
        std::fs::write(&p, self.cert.pem()).unwrap();
        p
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// Replaces a file in one rename, as certificate tooling does.
pub fn write_atomically(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Connects with TLS to `addr` sending SNI `sni`, trusting `config`'s roots.
pub async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("TLS handshake in time")
}

/// DER of the certificate the server presented.
pub fn peer_leaf(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// An HTTP/1.1 connection over any stream.
pub async fn h1_over<S>(io: S) -> hyper::client::conn::http1::SendRequest<Full<Bytes>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    sender
}

/// An HTTP/2 connection over any stream.
pub async fn h2_over<S>(io: S) -> hyper::client::conn::http2::SendRequest<Full<Bytes>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// A request with a Host header (HTTP/1.1) or an authority (HTTP/2, `absolute` true).
pub fn request(host: &str, path: &str, absolute: bool) -> Request<Full<Bytes>> {
    let builder = if absolute {
        Request::get(format!("https://{host}{path}"))
    } else {
        Request::get(path).header("host", host)
    };
    builder.body(Full::new(Bytes::new())).unwrap()
}

/// Waits (at most 10 s) until `cond` holds; fails the test with `what` otherwise.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
