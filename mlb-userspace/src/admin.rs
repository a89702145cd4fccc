//! The admin listener (`--admin-addr`, marathon-lb's `:9090`): the endpoints marathon-lb's
//! tooling calls, with the same paths, status codes and bodies, plus mlb's own.
//!
//! | path | answer |
//! |---|---|
//! | `/_haproxy_health_check` | 200 while mlb runs, 503 once it is stopping (load balancers in front health-check this) |
//! | `/_haproxy_getpids` | mlb's PID: always one process, so zdd never sees a reload in progress |
//! | `/_haproxy_getconfig` | the routing state mlb serves, as text (there is no HAProxy config) |
//! | `/_haproxy_getvhostmap`, `/_haproxy_getappmap` | `vhost backend` / `app-id backend` lines |
//! | `/_mlb_signal/hup` | full resync from Marathon (POST; see below) |
//! | `/_mlb_signal/usr1` | re-read every certificate file (POST; see below) |
//! | `/_mlb/explain[/APP_ID]` | why each app is or is not exposed (JSON; `?format=text`) |
//! | `/_mlb/status` | sync state, generation, errors (JSON) |
//! | `/_mlb/state` | the desired state the dataplanes were given (JSON) |
//! | `/_mlb/xdp` | the XDP datapath: counters, flows by TCP state, per-backend stats (JSON) |
//! | `/_mlb/xdp/tables` | every live Maglev table read back from the maps, with fingerprints (JSON) |
//! | `/haproxy?stats` | the live stats page (HTML, reloads itself; `?stats;norefresh` not) |
//! | `/haproxy?stats;csv` | HAProxy 2.0's stats CSV (what `zdd.py` reads) |
//! | `/metrics` | Prometheus text: per frontend, backend and server, XDP, control plane |
//!
//! The signals change what mlb does, so unlike marathon-lb they answer only `POST` (a cross-site
//! `GET` cannot trigger them) and only clients on loopback, unless `--admin-token` is set: then
//! any client with `Authorization: Bearer <token>`. Read endpoints never show credentials (auth
//! hashes are redacted). Every admin connection has the request and idle timeouts and a cap of
//! its own, so a flood on the proxy cannot starve the health check.
use std::{
    collections::HashSet,
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::debug;

use crate::{
    controller::{StateQueries, Status},
    dataplane::{xdp::XdpError, xdp_l4::XdpL4},
    marathon::watch::ResyncTrigger,
    model::{DesiredState, explain},
    overload::{AcceptErrors, ConnGate, Guarded, supervise},
    proxy::HttpProxy,
    secret::Secret,
    stats::{self, ChangeTracker, Observed, Snapshot, StatsSource},
};

/// What the admin endpoints read and trigger.
#[derive(Clone)]
pub struct AdminContext {
    /// The controller's status.
    pub status: Arc<ArcSwap<Status>>,
    /// Asks the controller for the desired state (`None`: the state endpoints answer empty).
    pub state: Option<StateQueries>,
    /// Requests a full Marathon resync (`None` without Marathon).
    pub resync: Option<ResyncTrigger>,
    /// The HTTP proxy, for certificate reloads and its health checks (`None` when not running).
    pub proxy: Option<Arc<HttpProxy>>,
    /// `--admin-token`: clients presenting it as a bearer token may signal from anywhere;
    /// without it only loopback clients may.
    pub token: Option<Secret>,
    /// Set on SIGTERM: the health check answers 503 so load balancers in front stop sending.
    pub stopping: Arc<AtomicBool>,
    /// The XDP dataplane, for its counters (`None` when not running).
    pub xdp: Option<Arc<Mutex<XdpL4>>>,
    /// The dataplanes whose counters the stats endpoints show.
    pub stats: Vec<Arc<dyn StatsSource>>,
    /// When each server's status last changed, across requests.
    pub changes: Arc<Mutex<ChangeTracker>>,
}

impl AdminContext {
    /// The stats of every service now: the desired state joined with the health checks and the
    /// dataplanes' counters.
    pub fn snapshot(&self, state: &DesiredState) -> Snapshot {
        let status = self.status.load();
        let mut unhealthy: HashSet<_> = status.l4_unhealthy.iter().cloned().collect();
        if let Some(proxy) = &self.proxy {
            unhealthy.extend(proxy.unhealthy_backends());
        }
        let mut observed = Observed::default();
        for source in &self.stats {
            source.observe(&mut observed);
        }
        let mut snapshot = stats::build(state, &unhealthy, &observed);
        self.changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stamp(&mut snapshot, Instant::now());
        snapshot
    }
}

/// Binds the admin listener. Separate from [`serve`] so a bind error stops mlb at start.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves admin requests on `listener` until the task is dropped; connections are admitted and
/// supervised by `gate` (the admin API's own, apart from the proxy's).
pub async fn serve(listener: TcpListener, ctx: AdminContext, gate: Arc<ConnGate>) {
    let ctx = Arc::new(ctx);
    let mut gate = gate.listener();
    let mut errors = AcceptErrors::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                errors.report(&"admin", &e);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = gate.reserve().await else {
            debug!(%peer, "admin connection limit reached; refused");
            continue;
        };
        let admission = slot.admit(true);
        let conn = admission.state();
        let limits = gate.limits().clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let busy_conn = conn.clone();
            let service = service_fn(move |req| {
                let ctx = ctx.clone();
                let busy = busy_conn.request();
                async move {
                    let reply = handle(&ctx, peer, &req).await;
                    drop(busy);
                    Ok::<_, Infallible>(reply)
                }
            });
            let request_timeout = limits.request_timeout;
            let serving = async move {
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(request_timeout);
                let served = builder
                    .serve_connection(TokioIo::new(Guarded::new(stream, admission)), service)
                    .await;
                if let Err(e) = served {
                    debug!(%peer, "admin connection ended: {e}");
                }
            };
            supervise(conn, &limits, std::pin::pin!(serving)).await;
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    typed(status, "text/plain; charset=utf-8", body)
}

fn typed(status: StatusCode, content_type: &'static str, body: impl Into<String>) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

fn json(value: &impl Serialize) -> Reply {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// Answers one admin request from `peer`.
pub async fn handle(ctx: &AdminContext, peer: SocketAddr, req: &Request<Incoming>) -> Reply {
    let path = req.uri().path();
    if path.starts_with("/_mlb_signal/")
        && let Err(refusal) = may_signal(ctx, peer, req.method(), req.headers())
    {
        return *refusal;
    }
    let state = match (&ctx.state, needs_state(path)) {
        (Some(queries), true) => queries.get().await,
        _ => None,
    };
    let state = state.unwrap_or_default();
    route(ctx, &state, req.method(), path, req.uri().query())
}

/// Whether `peer` may use a signal endpoint: `POST` only; with `--admin-token`, the right bearer
/// token; without, loopback clients only.
fn may_signal(
    ctx: &AdminContext,
    peer: SocketAddr,
    method: &Method,
    headers: &hyper::HeaderMap,
) -> Result<(), Box<Reply>> {
    if method != Method::POST {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "signals are sent with POST\n",
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("POST"),
        );
        return Err(Box::new(r));
    }
    match &ctx.token {
        Some(token) => {
            let presented = headers
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !same_secret(presented, token.expose()) {
                let mut r = text(
                    StatusCode::UNAUTHORIZED,
                    "a valid admin token is required\n",
                );
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Bearer"),
                );
                return Err(Box::new(r));
            }
        }
        None if !peer.ip().to_canonical().is_loopback() => {
            return Err(Box::new(text(
                StatusCode::FORBIDDEN,
                "signals are accepted from loopback only (set --admin-token to allow others)\n",
            )));
        }
        None => {}
    }
    Ok(())
}

/// Compares digests, not the strings: the time taken says nothing about the token.
fn same_secret(a: &str, b: &str) -> bool {
    let digest = |s: &str| ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    digest(a).as_ref() == digest(b).as_ref()
}

/// The endpoints that show the whole desired state (copied from the controller on demand).
fn needs_state(path: &str) -> bool {
    matches!(
        path,
        "/_haproxy_getconfig"
            | "/_haproxy_getvhostmap"
            | "/_haproxy_getappmap"
            | "/_mlb/state"
            | "/haproxy"
            | "/metrics"
    )
}

/// Routing of [`handle`], without the request body (none of the endpoints reads one); `state`
/// is the desired state for the endpoints that show it.
pub fn route(
    ctx: &AdminContext,
    state: &DesiredState,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Reply {
    if method != Method::GET && method != Method::POST && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET or POST\n");
    }
    let status = ctx.status.load_full();
    let want_text = query.is_some_and(|q| q.split('&').any(|kv| kv == "format=text"));
    match path {
        "/_haproxy_health_check" if ctx.stopping.load(Ordering::Relaxed) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n")
        }
        "/_haproxy_health_check" => text(StatusCode::OK, "OK\n"),
        "/_haproxy_getpids" => text(StatusCode::OK, std::process::id().to_string()),
        "/_haproxy_getconfig" => text(StatusCode::OK, render_config(state)),
        "/_haproxy_getvhostmap" => text(StatusCode::OK, vhost_map(state)),
        "/_haproxy_getappmap" => text(StatusCode::OK, app_map(state)),
        "/haproxy" => haproxy_stats(ctx, state, query),
        "/_mlb_signal/hup" => match &ctx.resync {
            Some(resync) => {
                resync.request();
                text(StatusCode::OK, "Sent SIGHUP signal to marathon-lb\n")
            }
            None => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Failed to send SIGHUP signal to marathon-lb: mlb is not watching Marathon\n",
            ),
        },
        "/_mlb_signal/usr1" => match &ctx.proxy {
            Some(proxy) => {
                let errors = proxy.reload_certs();
                if errors.is_empty() {
                    text(StatusCode::OK, "Sent SIGUSR1 signal to marathon-lb\n")
                } else {
                    let mut body = String::from(
                        "Sent SIGUSR1 signal to marathon-lb; these certificates kept their previous version:\n",
                    );
                    for e in errors {
                        let _ = writeln!(body, "  {e}");
                    }
                    text(StatusCode::OK, body)
                }
            }
            None => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Failed to send SIGUSR1 signal to marathon-lb: the HTTP proxy is not running\n",
            ),
        },
        "/_mlb/status" => json(&StatusView::of(&status)),
        "/_mlb/state" => json(&StateView::of(state)),
        "/_mlb/xdp" => xdp_view(ctx.xdp.as_deref(), XdpL4::snapshot),
        "/_mlb/xdp/tables" => xdp_view(ctx.xdp.as_deref(), XdpL4::tables_readback),
        "/metrics" => typed(
            StatusCode::OK,
            stats::metrics::CONTENT_TYPE,
            stats::metrics::render(&ctx.snapshot(state), &status),
        ),
        "/_mlb/explain" | "/_mlb/explain/" => {
            let apps = status.explanations.values().map(|a| &**a);
            if want_text {
                text(StatusCode::OK, explain::render_text(apps))
            } else {
                json(&apps.collect::<Vec<_>>())
            }
        }
        p if p.starts_with("/_mlb/explain/") => {
            let id = &p["/_mlb/explain".len()..];
            let apps: Vec<&crate::model::explain::AppExplanation> =
                match status.explanations.get(id) {
                    Some(app) => vec![&**app],
                    // A Marathon app merged into a deployment group is explained under the group.
                    None => status
                        .explanations
                        .values()
                        .filter(|a| a.marathon_app_ids.iter().any(|m| m == id))
                        .map(|a| &**a)
                        .collect(),
                };
            if apps.is_empty() {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("{id}: no such app in Marathon's answer (ids start with /)\n"),
                );
            }
            if want_text {
                text(StatusCode::OK, explain::render_text(apps))
            } else {
                json(&apps)
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/_mlb/xdp` and `/_mlb/xdp/tables`: what `read` finds in the datapath, or why nothing.
fn xdp_view<T: Serialize>(
    xdp: Option<&Mutex<XdpL4>>,
    read: fn(&XdpL4) -> Result<T, XdpError>,
) -> Reply {
    let Some(xdp) = xdp else {
        return text(
            StatusCode::NOT_FOUND,
            "the XDP dataplane is not running (--dataplane xdp)\n",
        );
    };
    let view = match xdp.lock() {
        Ok(dp) => read(&dp),
        Err(_) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "XDP dataplane lock poisoned\n",
            );
        }
    };
    match view {
        Ok(v) => json(&v),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the XDP maps: {e}\n"),
        ),
    }
}

/// HAProxy's stats URI: `?stats` is the page, `?stats;csv` the CSV (what `zdd.py` reads).
fn haproxy_stats(ctx: &AdminContext, state: &DesiredState, query: Option<&str>) -> Reply {
    match query {
        Some("stats;csv" | "stats;csv;norefresh") => {
            text(StatusCode::OK, stats::csv::render(&ctx.snapshot(state)))
        }
        Some(q @ ("stats" | "stats;norefresh")) => typed(
            StatusCode::OK,
            "text/html; charset=utf-8",
            stats::html::render(&ctx.snapshot(state), q == "stats"),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found (try /haproxy?stats or /haproxy?stats;csv)\n",
        ),
    }
}

/// `/_mlb/status`: the status without the (large) state and explanations.
#[derive(Serialize)]
struct StatusView<'a> {
    pid: u32,
    synced: bool,
    generation: u64,
    fingerprint: &'a str,
    full_passes: u64,
    last_error: Option<&'a str>,
    apps: usize,
    l4_services: usize,
    http_services: usize,
    rejected: usize,
    l4_unhealthy: &'a [crate::model::BackendId],
    l4_errors: &'a std::collections::BTreeMap<String, String>,
    http_errors: &'a [String],
}

impl<'a> StatusView<'a> {
    fn of(s: &'a Status) -> Self {
        StatusView {
            pid: std::process::id(),
            synced: s.synced,
            generation: s.generation,
            fingerprint: &s.fingerprint,
            full_passes: s.full_passes,
            last_error: s.last_error.as_deref(),
            apps: s.apps,
            l4_services: s.l4_services,
            http_services: s.http_services,
            rejected: s.rejected,
            l4_unhealthy: &s.l4_unhealthy,
            l4_errors: &s.l4_errors,
            http_errors: &s.http_errors,
        }
    }
}

/// `/_mlb/state`: the desired state with its maps as lists (their keys are not strings).
#[derive(Serialize)]
struct StateView<'a> {
    l4: Vec<&'a crate::model::L4Service>,
    http: Vec<&'a crate::model::HttpService>,
    rejected: &'a [crate::model::Rejected],
    warnings: &'a [crate::model::Warning],
}

impl<'a> StateView<'a> {
    fn of(s: &'a DesiredState) -> Self {
        StateView {
            l4: s.l4.values().collect(),
            http: s.http.values().map(|svc| &**svc).collect(),
            rejected: &s.rejected,
            warnings: &s.warnings,
        }
    }
}

/// marathon-lb's backend name: the app id with `/` as `_`, then the service port.
fn backend_name(app_id: &str, port: u16) -> String {
    stats::proxy_name(app_id, port)
}

fn vhost_map(state: &DesiredState) -> String {
    let mut out = String::new();
    for svc in state.http.values() {
        for vhost in &svc.vhosts {
            let _ = writeln!(
                out,
                "{vhost}\t{}",
                backend_name(&svc.key.app_id, svc.service_port)
            );
        }
    }
    out
}

fn app_map(state: &DesiredState) -> String {
    let mut out = String::new();
    for svc in state.http.values() {
        let _ = writeln!(
            out,
            "{}\t{}",
            svc.key.app_id,
            backend_name(&svc.key.app_id, svc.service_port)
        );
    }
    out
}

/// A readable account of what is routed, in the order of HAProxy's frontends.
fn render_config(state: &DesiredState) -> String {
    let mut out = String::from(
        "# mlb has no HAProxy configuration: this is the routing state it serves now.\n",
    );
    for svc in state.l4.values() {
        let mode = svc.key.protocol.to_string();
        write_frontend(&mut out, &svc.app_id, svc.bind_addr, svc.key.port, &mode);
        write_servers(&mut out, &svc.backends);
    }
    for svc in state.http.values() {
        let (id, port) = (&svc.key.app_id, svc.service_port);
        write_frontend(&mut out, id, svc.bind_addr, port, "http");
        if !svc.vhosts.is_empty() {
            let _ = writeln!(out, "  vhosts {}", svc.vhosts.join(" "));
        }
        if !svc.paths.is_empty() {
            let _ = writeln!(out, "  paths {}", svc.paths.join(" "));
        }
        write_servers(&mut out, &svc.backends);
    }
    for r in &state.rejected {
        let _ = writeln!(out, "# not exposed: {} {}", r.app_id, r.reason);
    }
    out
}

/// `frontend`, `bind` and `mode` lines, as in an HAProxy frontend section.
fn write_frontend(
    out: &mut String,
    app_id: &str,
    bind_addr: Option<std::net::IpAddr>,
    port: u16,
    mode: &str,
) {
    let bind = bind_addr.map_or_else(|| "*".to_owned(), |a| a.to_string());
    let name = backend_name(app_id, port);
    let _ = writeln!(out, "frontend {name}\n  bind {bind}:{port}\n  mode {mode}");
}

/// `server` lines, as in an HAProxy backend section.
fn write_servers(out: &mut String, backends: &[crate::model::Backend]) {
    for b in backends {
        let _ = writeln!(
            out,
            "  server {} {} weight {} {:?}",
            b.id, b.addr, b.weight, b.state
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> DesiredState {
        let key = crate::model::L4ServiceKey {
            port: 10001,
            protocol: crate::model::Protocol::Tcp,
        };
        let svc = crate::model::L4Service {
            key,
            app_id: "/shop/db".into(),
            bind_addr: None,
            backends: vec![],
            health_check: None,
            tuning: Default::default(),
            balance: Default::default(),
            allowed_networks: Vec::new(),
        };
        let mut state = DesiredState::default();
        state.l4.insert(key, svc);
        state
    }

    fn ctx() -> AdminContext {
        AdminContext {
            status: Arc::default(),
            state: None,
            resync: Some(ResyncTrigger::default()),
            proxy: None,
            stats: Vec::new(),
            changes: Arc::default(),
            stopping: Arc::default(),
            token: None,
            xdp: None,
        }
    }

    fn body(r: Reply) -> (StatusCode, String) {
        use http_body_util::BodyExt as _;
        let status = r.status();
        let bytes = futures_util::FutureExt::now_or_never(r.into_body().collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[test]
    fn xdp_endpoint_without_the_xdp_dataplane_says_so() {
        let state = DesiredState::default();
        let (status, body) = body(route(&ctx(), &state, &Method::GET, "/_mlb/xdp", None));
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("--dataplane xdp"), "{body}");
    }

    #[test]
    fn marathon_lb_endpoints_answer_as_marathon_lb_did() {
        let c = ctx();
        let st = state();
        let route = |c: &AdminContext, m: &Method, p: &str, q: Option<&str>| route(c, &st, m, p, q);
        let (s, b) = body(route(&c, &Method::GET, "/_haproxy_health_check", None));
        assert_eq!((s, b.as_str()), (StatusCode::OK, "OK\n"));
        c.stopping.store(true, Ordering::Relaxed);
        let (s, _) = body(route(&c, &Method::GET, "/_haproxy_health_check", None));
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "503 once stopping");
        c.stopping.store(false, Ordering::Relaxed);
        let (s, b) = body(route(&c, &Method::GET, "/_haproxy_getpids", None));
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            b,
            std::process::id().to_string(),
            "one PID: never reloading"
        );
        let (s, b) = body(route(&c, &Method::POST, "/_mlb_signal/hup", None));
        assert_eq!(
            (s, b.as_str()),
            (StatusCode::OK, "Sent SIGHUP signal to marathon-lb\n")
        );
        let (s, _) = body(route(&c, &Method::POST, "/_mlb_signal/usr1", None));
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR, "no proxy to reload");
        let (s, _) = body(route(&c, &Method::GET, "/_mlb/explain/nope", None));
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, b) = body(route(&c, &Method::GET, "/_mlb/state", None));
        assert_eq!(s, StatusCode::OK, "{b}");
        let state: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(state["l4"][0]["app_id"], "/shop/db", "{b}");
        assert!(state["http"].is_array(), "{b}");
        let (_, b) = body(route(&c, &Method::GET, "/_haproxy_getconfig", None));
        assert!(
            b.contains("frontend shop_db_10001") && b.contains("mode tcp"),
            "{b}"
        );
        let (s, b) = body(route(&c, &Method::GET, "/metrics", None));
        assert_eq!(s, StatusCode::OK);
        assert!(b.contains("mlb_synced 0"), "{b}");
    }

    /// Signals change what mlb does: POST only, from loopback only unless a token is set, then
    /// with that token only (a cross-site GET, or anyone who can reach `:9090`, cannot).
    #[test]
    fn signals_need_post_and_loopback_or_the_token() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "198.18.0.9:5000".parse().unwrap();
        let headers = |auth: Option<&str>| {
            let mut h = hyper::HeaderMap::new();
            if let Some(a) = auth {
                h.insert(hyper::header::AUTHORIZATION, a.parse().unwrap());
            }
            h
        };
        let status = |c: &AdminContext, peer, m: Method, auth: Option<&str>| {
            may_signal(c, peer, &m, &headers(auth))
                .err()
                .map(|r| r.status())
        };
        let open = ctx();
        for m in [Method::GET, Method::HEAD] {
            assert_eq!(
                status(&open, local, m, None),
                Some(StatusCode::METHOD_NOT_ALLOWED)
            );
        }
        assert_eq!(status(&open, local, Method::POST, None), None);
        let v6_local: SocketAddr = "[::1]:5000".parse().unwrap();
        assert_eq!(status(&open, v6_local, Method::POST, None), None);
        assert_eq!(
            status(&open, remote, Method::POST, None),
            Some(StatusCode::FORBIDDEN)
        );
        let guarded = AdminContext {
            token: Some(Secret::new("t0ken")),
            ..ctx()
        };
        assert_eq!(
            status(&guarded, remote, Method::POST, Some("Bearer t0ken")),
            None
        );
        for wrong in [
            None,
            Some("Bearer t0ke"),
            Some("Basic t0ken"),
            Some("Bearer t0ken2"),
        ] {
            assert_eq!(
                status(&guarded, remote, Method::POST, wrong),
                Some(StatusCode::UNAUTHORIZED),
                "{wrong:?}"
            );
        }
        assert_eq!(
            status(&guarded, local, Method::POST, None),
            Some(StatusCode::UNAUTHORIZED),
            "with a token, loopback needs it too"
        );
    }

    /// `/_mlb/state` shows that an app has auth, never its hash.
    #[test]
    fn state_never_shows_password_hashes() {
        let hash = "$6$saltsalt$9Yh5Lf1QXrxFGAmRgGm7ZBMwGzcRT5uXW0sI8ObVxHbQzfz";
        let mut svc = crate::model::HttpService::new("/private", 0, 10002);
        svc.auth = Some(crate::model::BasicAuth {
            realm: "realm".into(),
            user: "admin".into(),
            password_hash: hash.into(),
        });
        let mut st = state();
        st.http.insert(svc.key.clone(), Arc::new(svc.clone()));
        let (s, b) = body(route(&ctx(), &st, &Method::GET, "/_mlb/state", None));
        assert_eq!(s, StatusCode::OK);
        assert!(b.contains("\"user\": \"admin\""), "{b}");
        assert!(!b.contains("saltsalt") && b.contains("<redacted>"), "{b}");
        assert!(!format!("{svc:?}").contains("saltsalt"), "Debug (logs) too");
    }
}
