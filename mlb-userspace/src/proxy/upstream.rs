//! Requests to backends: pooled keep-alive connections, connect timeout, redispatch to another
//! backend when connecting fails (HAProxy `retries 3` + `option redispatch`), the server timeout,
//! and the header rewriting a reverse proxy owes both sides (hop-by-hop headers,
//! `X-Forwarded-*`). Plain HTTP/1.1 requests go through our own client ([`h1`]), driven by the
//! request's task; HTTP/2 (gRPC), upgrades, large or unsized request bodies, and services with
//! their own `timeout connect` or TLS to the backends go through hyper's pooled clients (a
//! pool per tuning); `send-proxy` connections are not pooled.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, Uri, Version,
    header::{self, HeaderName},
    uri::{PathAndQuery, Scheme},
};
use http_body_util::BodyExt as _;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use rustls_pki_types::ServerName;
use tracing::debug;

use super::{
    Timeouts, backend_tls,
    balance::{BackendSlot, InFlightGuard},
    body::{BackendBody, RetryBody},
    maxconn::Limits,
};
use crate::model::{
    BackendId,
    tuning::{BackendTls, ProxyProtocol},
};
use crate::proxy::headers::has_token;

mod direct;
mod framing;
mod h1;
mod pool;

pub(crate) use framing::H1Body;

/// How many other backends a request is redispatched to after a connect failure.
const RETRIES: usize = 3;
/// Distinct tuned client pools kept (a pool per connect timeout, backend TLS setting and
/// server name); past it they are dropped and rebuilt on demand.
const MAX_TUNED_POOLS: usize = 256;

type TunedClient = Client<HttpsConnector<HttpConnector>, RetryBody>;

/// Pooled clients to backends.
pub(crate) struct Upstream {
    /// HTTP/1.1 keep-alive (what marathon-lb's backends speak).
    h1: Client<HttpConnector, RetryBody>,
    /// HTTP/2 with prior knowledge, for gRPC (which needs HTTP/2 end to end).
    h2: Client<HttpConnector, RetryBody>,
    /// Plain HTTP/1.1 with the default connect timeout: the common case, without hyper's
    /// connection tasks and channels.
    plain: h1::H1Client,
    default_connect: Duration,
    /// Pools of services with their own `timeout connect` or TLS to the backends.
    tuned: Mutex<HashMap<Profile, TunedClient>>,
    /// `maxconn` of `server` lines: one set shared by every worker's pool, so a backend's
    /// limit holds across threads.
    server_limits: Arc<Limits<BackendId>>,
}

/// How to reach a service's backends (from its tuning).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Profile {
    pub(crate) connect: Duration,
    pub(crate) tls: Option<BackendTls>,
    /// Server name of this request (fixed, or its host with `sni req.hdr(host)`).
    pub(crate) sni: Option<String>,
}

/// Why no backend response came back.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// Connecting failed on every backend tried, or the backend broke the connection: 502.
    Failed(String),
    /// No response headers within the server timeout: 504.
    Timeout,
    /// The backend stayed at its `maxconn` for the whole queue timeout: 503.
    Queued,
}

/// One attempt's failure: a connect failure is redispatched to another backend.
enum Attempt {
    Connect(String),
    Failed(String),
}

/// A backend's response, with the backend that gave it and its in-flight guard.
pub(crate) struct Answer {
    pub(crate) response: Response<BackendBody>,
    pub(crate) backend: Arc<BackendSlot>,
    pub(crate) guard: InFlightGuard,
}

/// The parts of a request needed to send it again to another backend.
pub(crate) struct Outgoing {
    pub(crate) method: Method,
    /// Path and query as the backend should see them.
    pub(crate) path_and_query: PathAndQuery,
    pub(crate) headers: HeaderMap,
    /// Send over HTTP/2 (gRPC).
    pub(crate) h2: bool,
    /// A WebSocket upgrade: the backend connection becomes a tunnel.
    pub(crate) upgrade: bool,
    /// The service's `timeout server`: how long to wait for the response headers.
    pub(crate) server_timeout: Duration,
    pub(crate) profile: Profile,
    /// `send-proxy[-v2]`: the header, with the client's and the frontend's addresses. Such a
    /// connection belongs to one client, so it is not pooled (HAProxy marks it private too).
    pub(crate) send_proxy: Option<(ProxyProtocol, SocketAddr, SocketAddr)>,
    /// `server … maxconn N`, and how long a request waits for a slot.
    pub(crate) maxconn: Option<(u32, Duration)>,
    /// No rule edits the response's headers: a plain HTTP/1.1 backend's may come back as its
    /// raw header lines ([`crate::proxy::raw_head`]) instead of a `HeaderMap`.
    pub(crate) raw_response: bool,
}

impl Upstream {
    pub(crate) fn new(timeouts: &Timeouts, server_limits: Arc<Limits<BackendId>>) -> Upstream {
        let connector = connector(timeouts.connect);
        let h1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .build(connector);
        Upstream {
            h1,
            h2,
            plain: h1::H1Client::new(pool::Pool::new(pool::IDLE_TIMEOUT), timeouts.connect),
            default_connect: timeouts.connect,
            tuned: Mutex::new(HashMap::new()),
            server_limits,
        }
    }

    /// Sends the request to `first`, and on a connect failure to up to [`RETRIES`] other
    /// backends `pick` offers (it gets the ids already tried).
    pub(crate) async fn send(
        &self,
        out: &Outgoing,
        body: RetryBody,
        first: Arc<BackendSlot>,
        pick: impl Fn(&[BackendId]) -> Option<Arc<BackendSlot>>,
    ) -> Result<Answer, UpstreamError> {
        let mut backend = first;
        let mut body = if self.takes_plain(out, &body) {
            Payload::Whole(read_whole(body).await?)
        } else {
            Payload::Streamed(body)
        };
        let mut tried: Vec<BackendId> = Vec::new();
        loop {
            let slot = match out.maxconn {
                Some((max, wait)) => {
                    let id = &backend.backend.id;
                    let slot = self.server_limits.acquire(id, max, wait).await;
                    Some(slot.ok_or(UpstreamError::Queued)?)
                }
                None => None,
            };
            let guard = InFlightGuard::new(backend.stats().clone()).holding(slot);
            let next_body = body.retry();
            let attempt = self.attempt(out, &backend, body);
            match tokio::time::timeout(out.server_timeout, attempt).await {
                Ok(Ok(response)) => {
                    return Ok(Answer {
                        response,
                        backend,
                        guard,
                    });
                }
                Ok(Err(Attempt::Connect(e))) => {
                    debug!(backend = %backend.backend.id, error = %e, "connect failed; redispatching");
                    tried.push(backend.backend.id.clone());
                    let (Some(b), Some(next)) = (next_body, pick(&tried)) else {
                        return Err(UpstreamError::Failed(format!(
                            "connecting to backend {} failed: {e}",
                            backend.backend.id
                        )));
                    };
                    if tried.len() > RETRIES {
                        return Err(UpstreamError::Failed(format!(
                            "connecting failed on {} backends",
                            tried.len()
                        )));
                    }
                    body = b;
                    backend = next;
                }
                Ok(Err(Attempt::Failed(e))) => {
                    return Err(UpstreamError::Failed(format!(
                        "backend {}: {e}",
                        backend.backend.id,
                    )));
                }
                Err(_) => return Err(UpstreamError::Timeout),
            }
        }
    }

    /// Whether our own client sends this request: plain HTTP/1.1 with the default connect
    /// timeout, no upgrade, and a body small enough to be read whole before sending (which
    /// makes it replayable on another connection).
    fn takes_plain(&self, out: &Outgoing, body: &RetryBody) -> bool {
        !out.h2
            && !out.upgrade
            && out.send_proxy.is_none()
            && out.profile.tls.is_none()
            && out.profile.connect == self.default_connect
            && out.method != Method::CONNECT
            && hyper::body::Body::size_hint(body)
                .exact()
                .is_some_and(|len| len <= h1::MAX_BUFFERED_BODY)
    }

    async fn attempt(
        &self,
        out: &Outgoing,
        backend: &BackendSlot,
        body: Payload,
    ) -> Result<Response<BackendBody>, Attempt> {
        let addr = backend.backend.addr;
        let req = match body {
            Payload::Whole(body) => {
                let authority = backend.authority().as_str();
                let response = self.plain.send(out, authority, addr, &body).await?;
                return Ok(response.map(BackendBody::Right));
            }
            Payload::Streamed(body) => build(out, backend, body)?,
        };
        // Boxed: hyper's clients and handshakes are KiBs of state that every request's future
        // would otherwise carry, and copy whole into its box, also on the plain path above
        // (the fast path's request future: 4.7 KiB with this box, 8.5 KiB without).
        let sent = Box::pin(self.hyper_attempt(out, addr, req)).await?;
        Ok(sent.map(BackendBody::Left))
    }

    async fn hyper_attempt(
        &self,
        out: &Outgoing,
        addr: SocketAddr,
        req: Request<RetryBody>,
    ) -> Result<Response<hyper::body::Incoming>, Attempt> {
        if let Some(proxy) = out.send_proxy {
            return direct::send(&out.profile, proxy, addr, req).await;
        }
        let sent = if out.profile.tls.is_none()
            && (out.h2 || out.profile.connect == self.default_connect)
        {
            let client = if out.h2 { &self.h2 } else { &self.h1 };
            client.request(req).await
        } else {
            self.tuned(&out.profile)?.request(req).await
        };
        sent.map_err(|e| {
            if e.is_connect() {
                Attempt::Connect(error_chain(&e))
            } else {
                Attempt::Failed(error_chain(&e))
            }
        })
    }

    /// The pool for `profile`, built on first use.
    fn tuned(&self, profile: &Profile) -> Result<TunedClient, Attempt> {
        let mut pools = self.tuned.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = pools.get(profile) {
            return Ok(client.clone());
        }
        if pools.len() >= MAX_TUNED_POOLS {
            pools.clear();
        }
        let tls = match &profile.tls {
            Some(tls) => backend_tls::client_config(tls, profile.sni.is_some())
                .map_err(|e| Attempt::Failed(e.to_string()))?,
            None => plain_tls_config(),
        };
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(Arc::unwrap_or_clone(tls))
            .https_or_http();
        let builder = match fixed_name(profile) {
            Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name)),
            None => builder,
        };
        let https = builder
            .enable_http1()
            .wrap_connector(connector(profile.connect));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        pools.insert(profile.clone(), client.clone());
        Ok(client)
    }
}

/// A request body on its way: streamed through hyper, or read whole for our own client.
enum Payload {
    Streamed(RetryBody),
    Whole(Bytes),
}

impl Payload {
    /// The body again, for another backend, if none of it was sent.
    fn retry(&self) -> Option<Payload> {
        match self {
            Payload::Streamed(body) => body.retry().map(Payload::Streamed),
            Payload::Whole(bytes) => Some(Payload::Whole(bytes.clone())),
        }
    }
}

/// A small request body, read whole (within the client's idle timeout of [`RetryBody`]).
async fn read_whole(body: RetryBody) -> Result<Bytes, UpstreamError> {
    if hyper::body::Body::is_end_stream(&body) {
        return Ok(Bytes::new());
    }
    let collected = body
        .collect()
        .await
        .map_err(|e| UpstreamError::Failed(format!("reading the request body: {e}")))?;
    Ok(collected.to_bytes())
}

fn connector(connect: Duration) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect));
    connector.set_nodelay(true);
    connector.enforce_http(false);
    connector
}

/// The TLS configuration of a plain-HTTP pool (never used: its URIs are `http://`).
fn plain_tls_config() -> Arc<rustls::ClientConfig> {
    let off = BackendTls {
        verify: false,
        ca_file: None,
        sni: None,
        sni_from_host: false,
    };
    backend_tls::client_config(&off, false).expect("no file to read")
}

/// The configured server name, as rustls takes it.
pub(crate) fn fixed_name(profile: &Profile) -> Option<ServerName<'static>> {
    ServerName::try_from(profile.sni.clone()?).ok()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

fn build(
    out: &Outgoing,
    backend: &BackendSlot,
    body: RetryBody,
) -> Result<Request<RetryBody>, Attempt> {
    let mut target = http::uri::Parts::default();
    target.scheme = Some(if out.profile.tls.is_some() {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    });
    target.authority = Some(backend.authority().clone());
    target.path_and_query = Some(out.path_and_query.clone());
    let uri =
        Uri::from_parts(target).map_err(|e| Attempt::Failed(format!("request target: {e}")))?;
    let mut req = Request::new(body);
    *req.method_mut() = out.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = if out.h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = out.headers.clone();
    if out.h2 {
        // HTTP/2 carries the host in :authority, taken from the URI; keep the client's.
        req.headers_mut().remove(header::HOST);
    }
    Ok(req)
}

/// Headers that describe one hop (RFC 9110 §7.6.1, and the legacy `keep-alive` and
/// `proxy-connection`), besides those `Connection` names, and `TE` last. A `static`, made at
/// compile time: a `const` array would be built and dropped at every use, and
/// `HeaderName::from_static` at run time parses the name every call.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
];

/// The index of `name` in [`HOP_BY_HOP`]: by its text, which the compiler matches by length
/// first, so the common names cost a comparison or two.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => 0,
        "proxy-authorization" => 1,
        "trailer" => 2,
        "transfer-encoding" => 3,
        "upgrade" => 4,
        "keep-alive" => 5,
        "proxy-connection" => 6,
        "te" => 7,
        _ => return None,
    })
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1), plus those named
/// in `Connection`. With `keep_upgrade`, `Connection: upgrade` and `Upgrade` stay (WebSocket).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds the few present (a bit per `HOP_BY_HOP` entry): most
    // messages carry none or one, and removing each of the eight by name would hash and probe
    // the map eight times. No allocation: this runs twice per request.
    const TE_BIT: u8 = 1 << 7;
    let mut found = 0u8;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            found |= 1 << i;
        }
    }
    if found == 0 && !keep_upgrade {
        return;
    }
    let is_upgrade = |name: &str| name.eq_ignore_ascii_case(header::UPGRADE.as_str());
    if found & 1 != 0 {
        // `Connection` (HOP_BY_HOP[0]) goes, and the headers it names: its values taken out
        // first (a second value is rare, and only it would need a Vec).
        if let header::Entry::Occupied(entry) = headers.entry(header::CONNECTION) {
            let (_, mut values) = entry.remove_entry_mult();
            let first = values.next();
            let rest: Vec<HeaderValue> = values.collect();
            for value in first.iter().chain(&rest) {
                let Ok(value) = value.to_str() else { continue };
                for name in value.split(',').map(str::trim) {
                    if !(keep_upgrade && is_upgrade(name)) {
                        // By `&str`: looked up without making a `HeaderName`.
                        headers.remove(name);
                    }
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate().take(7).skip(1) {
        if found & (1 << i) != 0 && !(keep_upgrade && *name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if found & TE_BIT != 0 {
        // TE: only "trailers" may go on (gRPC needs it).
        let te_trailers = headers
            .get(header::TE)
            .is_some_and(|v| has_token(v, "trailers"));
        headers.remove(header::TE);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The `X-Forwarded-*` values of one client connection, made once for all its requests.
#[derive(Clone, Debug)]
pub(crate) struct Forwarded {
    client_ip: HeaderValue,
    proto: HeaderValue,
    port: HeaderValue,
}

impl Forwarded {
    /// For a connection from `client` to local port `port`, over TLS or not.
    pub(crate) fn new(client: SocketAddr, tls: bool, port: u16) -> Forwarded {
        let ip = client.ip().to_canonical().to_string();
        Forwarded {
            client_ip: HeaderValue::from_str(&ip).expect("an IP address is a header value"),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
            port: HeaderValue::from(port),
        }
    }
}

/// How many headers [`add_forwarded`] may add to a request.
pub(crate) const FORWARDED_HEADERS: usize = 3;

/// `X-Forwarded-For` (appended to), `-Proto` and `-Port`, as marathon-lb's HAProxy set them.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, fwd: &Forwarded) {
    // Names made at compile time (`from_static` at run time parses them every request).
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    const PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
    // Room for the three at once: a map built to the size of the request's own headers would
    // otherwise grow, rehashing, twice (mlb's HTTP/1.1 server makes its maps with the room).
    headers.reserve(FORWARDED_HEADERS);
    let value = match headers.get(XFF).and_then(|v| v.to_str().ok()) {
        Some(prev) => {
            let ip = fwd.client_ip.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{prev}, {ip}")).ok()
        }
        None => Some(fwd.client_ip.clone()),
    };
    if let Some(v) = value {
        headers.insert(XFF, v);
    }
    headers.insert(PROTO, fwd.proto.clone());
    headers.insert(PORT, fwd.port.clone());
}

/// Whether to reach the backend over HTTP/2: gRPC requests need it end to end.
pub(crate) fn wants_h2(headers: &HeaderMap, client_version: Version) -> bool {
    client_version == Version::HTTP_2
        && headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        assert!(plain.get("x-secret").is_none());
        assert!(plain.get(header::CONNECTION).is_none());
        assert!(plain.get(header::UPGRADE).is_none());
        assert_eq!(plain.get(header::TE).unwrap(), "trailers");
        assert_eq!(plain.get("x-kept").unwrap(), "1");
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn every_hop_by_hop_name_is_found_at_its_index() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&header::HOST), None);
    }

    #[test]
    fn headers_of_no_hop_pass_unchanged() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("a"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
        // Kept for an upgrade, the connection says so even if the request did not.
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
    }

    #[test]
    fn a_hop_by_hop_header_named_in_connection_goes_even_if_standard() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("te, x-a"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        let left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-b"]);
    }

    #[test]
    fn forwarded_headers_append_the_client() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let fwd = Forwarded::new("127.0.0.9:5555".parse().unwrap(), true, 443);
        add_forwarded(&mut h, &fwd);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "10.0.0.1, 127.0.0.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "https");
        assert_eq!(h.get("x-forwarded-port").unwrap(), "443");
    }
}
