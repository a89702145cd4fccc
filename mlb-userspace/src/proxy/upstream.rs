//! Requests to backends: pooled keep-alive connections, connect timeout, redispatch to another
//! backend when connecting fails (HAProxy `retries 3` + `option redispatch`), the server timeout,
//! and the header rewriting a reverse proxy owes both sides (hop-by-hop headers,
//! `X-Forwarded-*`).
use std::{net::SocketAddr, sync::Arc};

use http::{
    HeaderMap, HeaderValue, Method, Request, Response, Uri, Version,
    header::{self, HeaderName},
    uri::{PathAndQuery, Scheme},
};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use tracing::debug;

use super::{
    Timeouts,
    balance::{BackendSlot, InFlightGuard},
    body::RetryBody,
};
use crate::model::BackendId;

/// How many other backends a request is redispatched to after a connect failure.
const RETRIES: usize = 3;

/// Pooled clients to backends.
pub(crate) struct Upstream {
    /// HTTP/1.1 keep-alive (what marathon-lb's backends speak).
    h1: Client<HttpConnector, RetryBody>,
    /// HTTP/2 with prior knowledge, for gRPC (which needs HTTP/2 end to end).
    h2: Client<HttpConnector, RetryBody>,
    server_timeout: std::time::Duration,
}

/// Why no backend response came back.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// Connecting failed on every backend tried, or the backend broke the connection: 502.
    Failed(String),
    /// No response headers within the server timeout: 504.
    Timeout,
}

/// A backend's response, with the backend that gave it and its in-flight guard.
pub(crate) struct Answer {
    pub(crate) response: Response<Incoming>,
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
}

impl Upstream {
    pub(crate) fn new(timeouts: &Timeouts) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeouts.connect));
        connector.set_nodelay(true);
        let h1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(connector.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(true)
            .build(connector);
        Upstream {
            h1,
            h2,
            server_timeout: timeouts.server,
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
        let mut body = body;
        let mut tried: Vec<BackendId> = Vec::new();
        loop {
            let guard = InFlightGuard::new(backend.stats.clone());
            let next_body = body.retry();
            let req = build(out, &backend, body)?;
            let client = if out.h2 { &self.h2 } else { &self.h1 };
            match tokio::time::timeout(self.server_timeout, client.request(req)).await {
                Ok(Ok(response)) => {
                    return Ok(Answer {
                        response,
                        backend,
                        guard,
                    });
                }
                Ok(Err(e)) if e.is_connect() => {
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
                Ok(Err(e)) => {
                    return Err(UpstreamError::Failed(format!(
                        "backend {}: {}",
                        backend.backend.id,
                        error_chain(&e)
                    )));
                }
                Err(_) => return Err(UpstreamError::Timeout),
            }
        }
    }
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
) -> Result<Request<RetryBody>, UpstreamError> {
    let mut target = http::uri::Parts::default();
    target.scheme = Some(Scheme::HTTP);
    target.authority = Some(backend.authority.clone());
    target.path_and_query = Some(out.path_and_query.clone());
    let uri = Uri::from_parts(target)
        .map_err(|e| UpstreamError::Failed(format!("request target: {e}")))?;
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

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1), plus those named
/// in `Connection`. With `keep_upgrade`, `Connection: upgrade` and `Upgrade` stay (WebSocket).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        if !(keep_upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    // TE: only "trailers" may go on (gRPC needs it).
    let te_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
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

/// `X-Forwarded-For` (appended to), `-Proto` and `-Port`, as marathon-lb's HAProxy set them.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, fwd: &Forwarded) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let value = match headers.get(&xff).and_then(|v| v.to_str().ok()) {
        Some(prev) => {
            let ip = fwd.client_ip.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{prev}, {ip}")).ok()
        }
        None => Some(fwd.client_ip.clone()),
    };
    if let Some(v) = value {
        headers.insert(xff, v);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        fwd.proto.clone(),
    );
    headers.insert(
        HeaderName::from_static("x-forwarded-port"),
        fwd.port.clone(),
    );
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
