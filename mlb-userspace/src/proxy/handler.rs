//! One request: pick the service (by frontend), apply marathon-lb's frontend rules (redirect to
//! HTTPS, basic auth, 421 on SNI/Host mismatch) and backend rules (allow-list, redirect from `/`,
//! proxypass, revproxy, HSTS, sticky cookie), then forward it, or tunnel it after an upgrade.
use std::{borrow::Cow, convert::Infallible, sync::Arc, time::Duration};

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use tracing::{debug, warn};

use super::access_log::Entry;
use super::{
    Shared,
    balance::{BackendSlot, STICKY_COOKIE},
    body::{ClientBody, GuardedBody, IdleTimeout, ProxyBody, RetryBody, full},
    headers,
    listeners::{ConnInfo, Frontend, client_timeout},
    router::{Service, normalize_host},
    tunnel,
    upstream::{Outgoing, Profile, UpstreamError, add_forwarded, strip_hop_by_hop, wants_h2},
};
use crate::proxy::headers::has_token;
use crate::{
    model::{BackendId, tuning::Tuning},
    stats::live::{ErrorKind, live},
};

/// HSTS header value marathon-lb added with `HAPROXY_{n}_USE_HSTS`.
const HSTS: &str = "max-age=15768000";

/// Serves one request; never fails (errors become 4xx/5xx responses).
pub(crate) async fn handle(
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    req: Request<ClientBody>,
) -> Result<Response<ProxyBody>, Infallible> {
    let Some(log) = &shared.access_log else {
        return Ok(route(&shared, &info, req).await);
    };
    let accepted = std::time::SystemTime::now();
    let started = std::time::Instant::now();
    let (method, uri, version) = (
        req.method().clone(),
        req.uri().to_string(),
        format!("{:?}", req.version()),
    );
    let response = route(&shared, &info, req).await;
    let served = response.extensions().get::<ServedBy>();
    let frontend = info.frontend.to_string();
    log.record(&Entry {
        client: info.peer,
        accepted,
        frontend: &frontend,
        backend: served.map_or("<NOSRV>", |s| &s.backend),
        server: served.map_or("<NOSRV>", |s| &s.server),
        elapsed: started.elapsed(),
        status: response.status().as_u16(),
        bytes: hyper::body::Body::size_hint(response.body()).exact(),
        method: method.as_str(),
        uri: &uri,
        version: &version,
    });
    Ok(response)
}

/// Which backend and server answered a request (a response extension, for the access log).
#[derive(Clone, Debug)]
struct ServedBy {
    backend: String,
    server: String,
}

async fn route(
    shared: &Arc<Shared>,
    info: &ConnInfo,
    req: Request<ClientBody>,
) -> Response<ProxyBody> {
    let host = match request_host(&req) {
        Ok(h) => h,
        Err(msg) => return error_page(StatusCode::BAD_REQUEST, msg),
    };
    let table = shared.table.load_full();
    let svc = match info.frontend {
        Frontend::Http | Frontend::Https => {
            let Some(host) = host.as_deref() else {
                return error_page(StatusCode::BAD_REQUEST, "no Host");
            };
            if let Some(r) = misdirected(shared, info, None, host) {
                return r;
            }
            let Some(svc) = table.lookup_vhost(host, req.uri().path()) else {
                return no_route();
            };
            if info.frontend == Frontend::Http && svc.spec.redirect_to_https {
                return redirect_to_https(shared, host, &req);
            }
            if svc.spec.tls_passthrough {
                // Its backends speak TLS; only the redirect above applies to plain requests.
                return no_route();
            }
            // Every auth rule of the host (and path) applies, not only the routed app's.
            for auth in table.vhost_auth(host, req.uri().path()) {
                if let Some(challenge) = challenge(auth, &req).await {
                    return challenge;
                }
            }
            svc.clone()
        }
        Frontend::AppId => {
            let app = req
                .headers()
                .get("x-marathon-app-id")
                .and_then(|v| v.to_str().ok());
            let Some(svc) = app
                .and_then(|a| table.lookup_app_id(a))
                .filter(|svc| !svc.spec.tls_passthrough)
            else {
                return no_route();
            };
            if let Some(auth) = &svc.auth
                && let Some(challenge) = challenge(auth, &req).await
            {
                return challenge;
            }
            svc.clone()
        }
        Frontend::ServicePort(port) => {
            if let Some(host) = host.as_deref()
                && let Some(r) = misdirected(shared, info, Some(port), host)
            {
                return r;
            }
            let Some(svc) = table.lookup_port(port) else {
                return no_route();
            };
            if let Some(auth) = &svc.auth
                && let Some(challenge) = challenge(auth, &req).await
            {
                return challenge;
            }
            svc.clone()
        }
    };
    // Known before the request, which the host borrows, is handed on.
    let by_own_vhost =
        svc.spec.redirect_root_to.is_some() && host.as_deref().is_some_and(|h| svc.has_vhost(h));
    drop(host);
    let mut response = backend_rules(shared, info, &svc, by_own_vhost, req).await;
    if svc.spec.use_hsts {
        response.headers_mut().insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    response
}

/// `None` when the request carries `auth`'s user and password; else the 401 to answer.
async fn challenge(
    auth: &Arc<crate::proxy::auth::Authenticator>,
    req: &Request<ClientBody>,
) -> Option<Response<ProxyBody>> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if auth.check(given).await {
        return None;
    }
    let mut r = error_page(StatusCode::UNAUTHORIZED, "authentication required");
    if let Ok(v) = HeaderValue::from_str(&auth.challenge()) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    Some(r)
}

/// The normalised host of a request (`:authority` or Host), `None` without one (HTTP/1.0).
fn request_host(req: &Request<ClientBody>) -> Result<Option<Cow<'_, str>>, &'static str> {
    if let Some(authority) = req.uri().authority() {
        return Ok(Some(normalize_host(authority.as_str())));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err("several Host headers"),
        (Some(h), None) => {
            let h = h.to_str().map_err(|_| "bad Host")?;
            // ASCII (`to_str` takes nothing else): its bytes are its characters.
            if h.is_empty()
                || h.bytes().any(|b| {
                    b.is_ascii_whitespace() || b == b'/' || b == b'@' || b.is_ascii_control()
                })
            {
                return Err("bad Host");
            }
            Ok(Some(normalize_host(h)))
        }
        (None, _) if req.version() == Version::HTTP_11 => Err("no Host"),
        (None, _) => Ok(None),
    }
}

/// 421 when a TLS request's Host would have been served another certificate than its SNI got:
/// a client reused a connection across names (HTTP/2 connection coalescing) that this
/// connection is not for.
fn misdirected(
    shared: &Shared,
    info: &ConnInfo,
    port: Option<u16>,
    host: &str,
) -> Option<Response<ProxyBody>> {
    let sni = info.sni.as_deref()?;
    if sni == host || shared.certs.same_certificate(port, sni, host) {
        return None;
    }
    debug!(sni, host, "Host does not match the TLS server name");
    Some(error_page(
        StatusCode::MISDIRECTED_REQUEST,
        "this connection is not for that host",
    ))
}

fn redirect_to_https(
    shared: &Shared,
    host: &str,
    req: &Request<ClientBody>,
) -> Response<ProxyBody> {
    let port = match shared.https_port.get().copied() {
        Some(443) | None => String::new(),
        Some(p) => format!(":{p}"),
    };
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    redirect(&format!("https://{host}{port}{target}"))
}

fn redirect(location: &str) -> Response<ProxyBody> {
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::MOVED_PERMANENTLY;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    r
}

/// marathon-lb's 503 for a request no route takes: short, never forwarded anywhere.
fn no_route() -> Response<ProxyBody> {
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "No server is available to handle this request.",
    )
}

fn error_page(status: StatusCode, detail: &str) -> Response<ProxyBody> {
    let reason = status.canonical_reason().unwrap_or("");
    let body = format!(
        "<html><body><h1>{} {reason}</h1>\n{detail}\n</body></html>\n",
        status.as_u16()
    );
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The backend-section rules, then forwarding.
async fn backend_rules(
    shared: &Arc<Shared>,
    info: &ConnInfo,
    svc: &Arc<Service>,
    by_own_vhost: bool,
    mut req: Request<ClientBody>,
) -> Response<ProxyBody> {
    let client_ip = info.peer.ip().to_canonical();
    if !svc.spec.allows(client_ip) {
        return error_page(
            StatusCode::FORBIDDEN,
            "Request forbidden by administrative rules.",
        );
    }
    if let Some(target) = &svc.spec.redirect_root_to
        && req.uri().path() == "/"
        && by_own_vhost
    {
        return redirect(target);
    }

    let upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let version = req.version();
    let (parts, body) = req.into_parts();
    // Counted as the backend's `bin` (a chunked body's size is not known in advance).
    let request_body_len = hyper::body::Body::size_hint(&body).exact().unwrap_or(0);
    let mut headers = parts.headers;

    // Sticky: a valid cookie names the backend; it is not passed on (HAProxy `indirect`).
    let sticky_choice = if svc.spec.sticky {
        let unhealthy = shared.health.borrow().clone();
        let cookie = take_cookie(&mut headers, STICKY_COOKIE);
        cookie.and_then(|c| {
            svc.selector
                .by_cookie(&c, &|id| unhealthy.contains(id))
                .cloned()
        })
    } else {
        None
    };

    // The request was routed on the URI's authority when it has one (absolute form, h2
    // `:authority`): the backend must see that host, not another a Host header claimed.
    if let Some(authority) = parts.uri.authority()
        && let Ok(v) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, v);
    }
    let mut path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    if let Some(prefix) = &svc.spec.proxypass_path {
        // A suffix of a valid path behind a `/` is a valid path.
        if let Ok(stripped) = strip_path_prefix(path_and_query.as_str(), prefix).parse() {
            path_and_query = stripped;
        }
        if let Some(vhost) = svc.spec.vhosts.first()
            && let Ok(v) = HeaderValue::from_str(vhost)
        {
            headers.insert(header::HOST, v);
        }
    }
    let h2 = wants_h2(&headers, version);
    // `Expect: 100-continue` was answered to the client by this hop when its body was read.
    headers.remove(header::EXPECT);
    strip_hop_by_hop(&mut headers, upgrade.is_some());
    let tuning = &svc.spec.tuning;
    if tuning.forwardfor != Some(false) {
        add_forwarded(&mut headers, &info.forwarded);
    }
    headers::apply(&mut headers, &tuning.request_headers, info);
    let server_timeout = tuning
        .timeouts
        .server
        .unwrap_or(shared.config.timeouts.server);

    let unhealthy = shared.health.borrow().clone();
    let is_unhealthy = |id: &BackendId| unhealthy.contains(id);
    let Some(first) = sticky_choice
        .clone()
        .or_else(|| svc.selector.pick(client_ip, &is_unhealthy, &[]).cloned())
    else {
        return no_route();
    };
    let profile = backend_profile(tuning, &headers, shared.config.timeouts.connect);
    let out = Outgoing {
        method: parts.method,
        path_and_query,
        headers,
        h2,
        upgrade: upgrade.is_some(),
        server_timeout,
        profile,
        send_proxy: tuning.send_proxy.map(|v| (v, info.peer, info.local)),
        maxconn: (tuning.maxconn_server.filter(|max| *max > 0))
            .map(|max| (max, shared.config.conn_gate.limits().queue_timeout)),
        // Both of mlb's own servers write a raw head (hyper's HTTP/1 session materializes it).
        raw_response: leaves_response_headers(svc),
    };
    let started = std::time::Instant::now();
    let answer = shared
        .upstream()
        .send(
            &out,
            RetryBody::new(body, client_timeout(shared, info.frontend)),
            first,
            |tried| svc.selector.pick(client_ip, &is_unhealthy, tried).cloned(),
        )
        .await;
    let answer = match answer {
        Ok(a) => a,
        Err(UpstreamError::Failed(why)) => {
            live().error(ErrorKind::BackendFailed);
            warn!(app = %svc.spec.key.app_id, %why, "backend request failed");
            return error_page(StatusCode::BAD_GATEWAY, "The backend failed to answer.");
        }
        Err(UpstreamError::Queued) => {
            warn!(app = %svc.spec.key.app_id, "backends at maxconn for the queue timeout");
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Every backend is at its connection limit.",
            );
        }
        Err(UpstreamError::Timeout) => {
            live().error(ErrorKind::BackendTimeout);
            warn!(app = %svc.spec.key.app_id, "backend timed out");
            return error_page(
                StatusCode::GATEWAY_TIMEOUT,
                "The backend did not answer in time.",
            );
        }
    };
    let mut response = answer.response;
    let backend = answer.backend;
    let stats = answer.guard.stats();
    stats.record_response(response.status().as_u16());
    if shared.access_log.is_some() {
        response.extensions_mut().insert(ServedBy {
            backend: svc.stats_name.clone(),
            server: crate::stats::server_name(backend.backend.addr),
        });
    }
    svc.record_request(started.elapsed());
    stats.record_bytes_in(request_body_len);

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = upgrade else {
            return error_page(StatusCode::BAD_GATEWAY, "unexpected protocol switch");
        };
        let backend_upgrade = hyper::upgrade::on(&mut response);
        let guard = answer.guard;
        let idle = svc
            .spec
            .tuning
            .timeouts
            .tunnel
            .unwrap_or(shared.config.timeouts.tunnel);
        tokio::spawn(async move {
            let _guard = guard;
            match tokio::try_join!(client_upgrade, backend_upgrade) {
                Ok((client, backend)) => {
                    tunnel::splice(TokioIo::new(client), TokioIo::new(backend), idle).await;
                }
                Err(e) => debug!(error = %e, "upgrade failed"),
            }
        });
        let (mut parts, _) = response.into_parts();
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return Response::from_parts(parts, full(""));
    }

    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    headers::apply(&mut parts.headers, &svc.spec.tuning.response_headers, info);
    if svc.spec.tuning.keep_alive == Some(false) {
        // `option httpclose`: hyper closes the client connection after this response.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(prefix) = &svc.spec.revproxy_path {
        rewrite_location(&mut parts.headers, prefix, &svc.spec.vhosts);
    }
    if svc.spec.sticky && !sticky_choice.is_some_and(|b| Arc::ptr_eq(&b, &backend)) {
        set_sticky_cookie(&mut parts.headers, &backend);
    }
    let body = IdleTimeout::new(GuardedBody::new(body, answer.guard), server_timeout);
    Response::from_parts(parts, body.boxed())
}

/// No rule of `svc` edits a response's headers (HSTS in `handle`; the header rules,
/// `httpclose`, revproxy and sticky cookie in `forward`): its response may come as a raw head,
/// written to an HTTP/1.1 client as the backend's lines.
fn leaves_response_headers(svc: &Service) -> bool {
    let spec = &svc.spec;
    !spec.use_hsts
        && !spec.sticky
        && spec.revproxy_path.is_none()
        && spec.tuning.keep_alive != Some(false)
        && spec.tuning.response_headers.is_empty()
}

/// A WebSocket upgrade: the only protocol switch tunneled. Others (`h2c` above all) would
/// leave later bytes unrouted: their `Upgrade` header is dropped like any hop-by-hop header.
fn is_upgrade(req: &Request<ClientBody>) -> bool {
    let websocket = req
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| has_token(v, "websocket"));
    req.version() == Version::HTTP_11
        && websocket
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v, "upgrade"))
}

/// Removes cookie `name` from the Cookie headers and returns its value.
fn take_cookie(headers: &mut HeaderMap, name: &str) -> Option<String> {
    let mut found = None;
    let mut kept = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for pair in value.split(';') {
            let pair = pair.trim();
            match pair.split_once('=') {
                Some((k, v)) if k.trim() == name => found = Some(v.trim().to_owned()),
                _ if !pair.is_empty() => kept.push(pair.to_owned()),
                _ => {}
            }
        }
    }
    if found.is_some() {
        headers.remove(header::COOKIE);
        if !kept.is_empty()
            && let Ok(v) = HeaderValue::from_str(&kept.join("; "))
        {
            headers.insert(header::COOKIE, v);
        }
    }
    found
}

fn set_sticky_cookie(headers: &mut HeaderMap, backend: &BackendSlot) {
    let cookie = format!("{STICKY_COOKIE}={}; path=/", backend.cookie());
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        headers.append(header::SET_COOKIE, v);
    }
    // HAProxy's `nocache`: a response that sets the cookie must not be cached by shared caches.
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
    }
}

/// `HTTP_BACKEND_PROXYPASS_PATH`: `/p/x` → `/x`, `/p` → `/` (HAProxy `reqirep "^([^ :]*)\ /p/?(.*)"
/// "\1\ /\2"`).
fn strip_path_prefix(path_and_query: &str, prefix: &str) -> String {
    match path_and_query.strip_prefix(prefix) {
        Some(rest) => format!("/{}", rest.strip_prefix('/').unwrap_or(rest)),
        None => path_and_query.to_owned(),
    }
}

/// `HTTP_BACKEND_REVPROXY_PATH`: a `Location` pointing at the app itself (relative, or absolute
/// to one of its vhosts) gets the public prefix put back in front of its path.
fn rewrite_location(headers: &mut HeaderMap, prefix: &str, vhosts: &[String]) {
    let Some(location) = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()) else {
        return;
    };
    let path = if location.starts_with('/') {
        Some(location)
    } else {
        location
            .strip_prefix("http://")
            .or_else(|| location.strip_prefix("https://"))
            .and_then(|rest| {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                vhosts
                    .iter()
                    .any(|v| *normalize_host(authority) == **v)
                    .then_some(if path.is_empty() { "/" } else { path })
            })
    };
    if let Some(path) = path {
        let rewritten = format!("{}{path}", prefix.trim_end_matches('/'));
        if let Ok(v) = HeaderValue::from_str(&rewritten) {
            headers.insert(header::LOCATION, v);
        }
    }
}

/// How this request reaches the service's backends: its `timeout connect`, and its backend TLS
/// with the server name (`sni req.hdr(host)`: the request's host, port removed).
fn backend_profile(tuning: &Tuning, headers: &HeaderMap, default_connect: Duration) -> Profile {
    let tls = tuning.backend_tls.clone();
    let sni = tls.as_ref().and_then(|t| {
        if t.sni_from_host {
            let host = headers.get(header::HOST)?.to_str().ok()?;
            Some(normalize_host(host).into_owned())
        } else {
            t.sni.clone()
        }
    });
    Profile {
        connect: tuning.timeouts.connect.unwrap_or(default_connect),
        tls,
        sni,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxypass_strips_the_prefix() {
        assert_eq!(strip_path_prefix("/p/x?y=1", "/p"), "/x?y=1");
        assert_eq!(strip_path_prefix("/p", "/p"), "/");
        assert_eq!(strip_path_prefix("/other", "/p"), "/other");
    }

    #[test]
    fn revproxy_prefixes_locations_of_the_app_only() {
        let vhosts = vec!["app.example.com".to_owned()];
        for (given, want) in [
            ("/login", "/r/login"),
            ("http://app.example.com:8080/x", "/r/x"),
            ("https://elsewhere.com/x", "https://elsewhere.com/x"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::LOCATION, HeaderValue::from_static(given));
            rewrite_location(&mut h, "/r/", &vhosts);
            assert_eq!(h.get(header::LOCATION).unwrap(), want, "{given}");
        }
    }

    #[test]
    fn sticky_cookie_is_taken_out_of_the_request() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; mesosphere_server_id=abc; b=2"),
        );
        assert_eq!(take_cookie(&mut h, STICKY_COOKIE).as_deref(), Some("abc"));
        assert_eq!(h.get(header::COOKIE).unwrap(), "a=1; b=2");
    }
}
