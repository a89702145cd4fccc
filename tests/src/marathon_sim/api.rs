//! The HTTP side: Marathon's REST API, the `/v2/events` SSE stream, and the simulator-only
//! control endpoints under `/_sim`.
use std::{collections::BTreeSet, convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::UnsyncBoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{broadcast, mpsc},
    task::JoinSet,
};

use super::{
    Fault, Sim, SimError,
    events::{self, SimEvent, StreamFilter},
    model::{self, Embed, TaskState},
};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Largest request body accepted (app definitions are small).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// Accepts API connections until the simulator shuts down; connections die with it.
pub(crate) async fn serve(sim: Arc<Sim>, listener: TcpListener) {
    let mut shutdown = sim.shutdown.subscribe();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // As Marathon's server does (Akka's TCP sockets have TCP_NODELAY on by
                    // default). With Nagle, an event written while the subscriber had not yet
                    // acknowledged the previous one waited for its delayed ACK, up to 40 ms.
                    let _ = stream.set_nodelay(true);
                    let sim = sim.clone();
                    conns.spawn(async move {
                        let service = service_fn(move |req| handle(sim.clone(), peer, req));
                        if let Err(e) = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            tracing::debug!(error = %e, "marathon-sim: API connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "marathon-sim: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        while conns.try_join_next().is_some() {}
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed_unsync()
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(body.to_string()))
        .expect("static response parts are valid")
}

fn message(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    json_response(status, &json!({ "message": msg.into() }))
}

fn error_response(err: &SimError) -> Response<Body> {
    match err {
        SimError::InvalidApp { reason, .. } => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"message": "Object is not valid", "details": [{"path": "/", "errors": [err.to_string()]}], "reason": reason}),
        ),
        SimError::AppExists { .. } | SimError::AppLocked { .. } => {
            message(StatusCode::CONFLICT, err.to_string())
        }
        SimError::UnknownApp { .. } | SimError::UnknownTask { .. } => {
            message(StatusCode::NOT_FOUND, err.to_string())
        }
        _ => message(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

/// Query parameters in order, percent-decoded (`+` is a space).
fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn values<'a>(query: &'a [(String, String)], key: &'a str) -> impl Iterator<Item = &'a str> {
    query
        .iter()
        .filter(move |(k, _)| k == key)
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

fn first<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

async fn read_json(req: Request<Incoming>) -> Result<Value, Response<Body>> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            message(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        json_response(
            StatusCode::BAD_REQUEST,
            &json!({"message": "Invalid JSON", "details": [{"path": "/", "errors": [e.to_string()]}]}),
        )
    })
}

async fn handle(
    sim: Arc<Sim>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |p| p.as_str().to_string());
    let query = parse_query(req.uri().query());
    let method = req.method().clone();
    if path.starts_with("/_sim/") {
        return Ok(control(&sim, &method, &path, &query, req).await);
    }
    let delay = sim.faults.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let faults = sim.faults.current();
    let apps_path = path == "/v2/apps" || path.starts_with("/v2/apps/");
    if let Some(leader) = &faults.leader_url
        && (apps_path || path == "/v2/events")
    {
        return Ok(Response::builder()
            .status(StatusCode::TEMPORARY_REDIRECT)
            .header(header::LOCATION, format!("{leader}{path_and_query}"))
            .body(full(""))
            .expect("valid redirect"));
    }
    if apps_path {
        if let Some(status) = faults.apps_status {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Ok(message(status, "simulated Marathon failure"));
        }
        if faults.apps_garbage {
            return Ok(Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(full(
                    "{\"apps\": [{\"id\": \"/garbage\", <html>502 Bad Gateway",
                ))
                .expect("valid response"));
        }
    }
    let client_ip = peer.ip().to_string();
    let resp = match (&method, path.as_str()) {
        (&Method::GET, "/ping") => Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(full("pong"))
            .expect("valid response"),
        (&Method::GET, "/v2/info") => json_response(StatusCode::OK, &info(&sim)),
        (&Method::GET, "/v2/leader") => {
            json_response(StatusCode::OK, &json!({"leader": leader_host_port(&sim)}))
        }
        (&Method::GET, "/v2/apps") => list_apps(&sim, &query),
        (&Method::POST, "/v2/apps") => match read_json(req).await {
            Err(resp) => resp,
            Ok(def) => match sim.create_app(def, &client_ip, "/v2/apps") {
                Err(e) => error_response(&e),
                Ok((id, _ticket)) => {
                    let w = sim.lock();
                    let body = w.apps.get(&id).map_or(Value::Null, |a| {
                        w.app_json(a, Embed::parse(["app.tasks"].into_iter(), "app.", true))
                    });
                    let mut resp = json_response(StatusCode::CREATED, &body);
                    if let Ok(loc) = format!("/v2/apps{id}").parse() {
                        resp.headers_mut().insert(header::LOCATION, loc);
                    }
                    resp
                }
            },
        },
        (&Method::GET, "/v2/tasks") => list_tasks(&sim, &query, &req),
        (&Method::POST, "/v2/tasks/delete") => match read_json(req).await {
            Err(resp) => resp,
            Ok(body) => {
                let ids: Vec<String> = body
                    .get("ids")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default();
                let scale = first(&query, "scale") == Some("true");
                match sim.kill_tasks(&ids, scale) {
                    Err(e) => error_response(&e),
                    Ok((_, ticket)) if scale => json_response(
                        StatusCode::OK,
                        &json!({"version": ticket.version, "deploymentId": ticket.id}),
                    ),
                    Ok((killed, _)) => json_response(StatusCode::OK, &json!({"tasks": killed})),
                }
            }
        },
        (&Method::GET, "/v2/deployments") => {
            let w = sim.lock();
            let deps: Vec<Value> = w
                .deployments
                .values()
                .map(super::model::Deployment::to_json)
                .collect();
            json_response(StatusCode::OK, &Value::Array(deps))
        }
        (&Method::GET, "/v2/events") => event_stream(&sim, peer, &query, &req),
        (_, p) if p.starts_with("/v2/apps/") => {
            app_route(
                &sim,
                &method,
                &p["/v2/apps".len()..],
                &query,
                &client_ip,
                req,
            )
            .await
        }
        _ => message(StatusCode::NOT_FOUND, format!("{method} {path}: not found")),
    };
    Ok(resp)
}

async fn app_route(
    sim: &Arc<Sim>,
    method: &Method,
    raw_id: &str,
    query: &[(String, String)],
    client_ip: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    // `/v2/apps/{id}/tasks` unless an app is literally called `.../tasks`.
    let (raw_id, tasks_only) = match raw_id.strip_suffix("/tasks") {
        Some(prefix) if !sim.lock().apps.contains_key(raw_id.trim_end_matches('/')) => {
            (prefix, true)
        }
        _ => (raw_id, false),
    };
    let id = match model::normalize_app_id(raw_id) {
        Ok(id) => id,
        Err(e) => return error_response(&e),
    };
    match *method {
        Method::GET => {
            let w = sim.lock();
            let Some(app) = w.apps.get(&id).filter(|a| !a.deleting) else {
                return error_response(&SimError::UnknownApp { id });
            };
            if tasks_only {
                let checks = app.health_checks().len();
                let tasks: Vec<Value> = app.tasks.iter().map(|t| t.to_json(checks, true)).collect();
                return json_response(StatusCode::OK, &json!({ "tasks": tasks }));
            }
            let embed = Embed::parse(values(query, "embed"), "app.", true);
            json_response(StatusCode::OK, &json!({ "app": w.app_json(app, embed) }))
        }
        Method::PUT => match read_json(req).await {
            Err(resp) => resp,
            Ok(update) => match sim.update_app(&id, update, client_ip) {
                Err(e) => error_response(&e),
                Ok((created, ticket)) => json_response(
                    if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    },
                    &json!({"version": ticket.version, "deploymentId": ticket.id}),
                ),
            },
        },
        Method::DELETE => match sim.delete_app(&id, client_ip) {
            Err(e) => error_response(&e),
            Ok(ticket) => json_response(
                StatusCode::OK,
                &json!({"version": ticket.version, "deploymentId": ticket.id}),
            ),
        },
        _ => message(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} not allowed on /v2/apps{id}"),
        ),
    }
}

/// One term of Marathon's `label` selector: `key`, `key==value`, `key!=value`,
/// `key in (a,b)`, `key notin (a,b)`.
fn label_matches(labels: &Value, selector: &str) -> bool {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    let get = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
    let set = |s: &str| -> BTreeSet<String> {
        s.trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .map(|v| v.trim().to_string())
            .collect()
    };
    terms
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("==") {
                get(k) == Some(v.trim())
            } else if let Some((k, v)) = term.split_once("!=") {
                get(k) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once(" notin ") {
                get(k).is_none_or(|x| !set(v).contains(x))
            } else if let Some((k, v)) = term.split_once(" in ") {
                get(k).is_some_and(|x| set(v).contains(x))
            } else {
                get(term).is_some()
            }
        })
}

fn list_apps(sim: &Sim, query: &[(String, String)]) -> Response<Body> {
    let embed = Embed::parse(values(query, "embed"), "apps.", false);
    let id_filter = first(query, "id");
    let cmd_filter = first(query, "cmd");
    let label_filter = first(query, "label");
    let w = sim.lock();
    let apps: Vec<Value> = w
        .apps
        .values()
        .filter(|a| !a.deleting)
        .filter(|a| id_filter.is_none_or(|f| a.id().contains(f)))
        .filter(|a| {
            cmd_filter.is_none_or(|f| a.definition["cmd"].as_str().is_some_and(|c| c.contains(f)))
        })
        .filter(|a| label_filter.is_none_or(|f| label_matches(&a.definition["labels"], f)))
        .map(|a| w.app_json(a, embed))
        .collect();
    json_response(StatusCode::OK, &json!({ "apps": apps }))
}

fn list_tasks(sim: &Sim, query: &[(String, String)], req: &Request<Incoming>) -> Response<Body> {
    let wanted: BTreeSet<String> = values(query, "status")
        .chain(values(query, "status[]"))
        .map(str::to_ascii_lowercase)
        .collect();
    let state_ok = |s: TaskState| {
        wanted.is_empty()
            || wanted.contains(match s {
                TaskState::Staging => "staging",
                TaskState::Running => "running",
                TaskState::Killing => "killing",
            })
    };
    let plain = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/plain") && !a.contains("json"));
    let w = sim.lock();
    let apps = w.apps.values().filter(|a| !a.deleting);
    if plain {
        // `app\tservicePort\thost:port\t...` per service port, like Marathon's text format.
        let mut out = String::new();
        for app in apps {
            let name = app.id().trim_start_matches('/').replace('/', "_");
            let tasks: Vec<_> = app.tasks.iter().filter(|t| state_ok(t.state)).collect();
            for (i, spec) in model::port_specs(&app.definition).iter().enumerate() {
                out.push_str(&format!("{name}\t{}\t", spec.service_port));
                for t in &tasks {
                    if let Some(p) = t.bound_ports.get(i) {
                        out.push_str(&format!("{}:{p}\t", t.host));
                    }
                }
                out.push('\n');
            }
        }
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(full(out))
            .expect("valid response");
    }
    let tasks: Vec<Value> = apps
        .flat_map(|app| {
            let checks = app.health_checks().len();
            app.tasks
                .iter()
                .filter(|t| state_ok(t.state))
                .map(move |t| t.to_json(checks, true))
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "tasks": tasks }))
}

fn leader_host_port(sim: &Sim) -> String {
    match sim.faults.current().leader_url {
        Some(url) => url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_string(),
        None => sim.addr().to_string(),
    }
}

fn info(sim: &Sim) -> Value {
    let addr = sim.addr();
    json!({
        "name": "marathon",
        "version": "1.9.109",
        "buildref": "marathon-sim",
        "elected": sim.faults.current().leader_url.is_none(),
        "leader": leader_host_port(sim),
        "frameworkId": "marathon-sim-0000",
        "marathon_config": {
            "master": "zk://marathon-sim:2181/mesos",
            "hostname": addr.ip().to_string(),
            "http_port": addr.port(),
            "task_launch_timeout": 300_000,
            "mesos_leader_ui_url": null,
        },
        "zookeeper_config": {"zk": "zk://marathon-sim:2181/marathon", "zk_timeout": 10_000},
        "http_config": {"http_port": addr.port(), "https_port": 8443},
        "event_subscriber": null,
    })
}

fn event_stream(
    sim: &Arc<Sim>,
    peer: SocketAddr,
    query: &[(String, String)],
    req: &Request<Incoming>,
) -> Response<Body> {
    let accepts_sse = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|a| a.contains("text/event-stream"));
    if !accepts_sse {
        return message(
            StatusCode::METHOD_NOT_ALLOWED,
            "/v2/events needs the header Accept: text/event-stream",
        );
    }
    let filter = StreamFilter {
        types: values(query, "event_type").map(String::from).collect(),
        light: first(query, "plan-format") == Some("light"),
    };
    // Subscribe before answering: once the client has the headers it sees every later event.
    let bus = sim.events.subscribe();
    let remote = peer.ip().to_string();
    sim.events
        .publish("event_stream_attached", json!({ "remoteAddress": remote }));
    let (tx, mut rx) = mpsc::channel::<Bytes>(256);
    sim.spawn(sse_session(sim.clone(), bus, filter, tx, remote));
    let body = StreamBody::new(stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|o| o.map(|b| Ok::<_, Infallible>(Frame::data(b))))
    }));
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache, no-store, must-revalidate")
        // When the stream ends (dropped by a fault), the connection ends with it.
        .header(header::CONNECTION, "close")
        .body(body.boxed_unsync())
        .expect("valid response")
}

/// How long an event may wait for room in a connection's queue before the client is dropped
/// as too slow.
const SLOW_CONSUMER: std::time::Duration = std::time::Duration::from_millis(500);

/// Feeds one SSE connection until the client leaves, the stream is dropped by a fault, or the
/// client is too slow (Marathon disconnects slow consumers too).
async fn sse_session(
    sim: Arc<Sim>,
    mut bus: broadcast::Receiver<Arc<SimEvent>>,
    filter: StreamFilter,
    tx: mpsc::Sender<Bytes>,
    remote: String,
) {
    let mut drops = sim.faults.drops();
    drops.borrow_and_update();
    let stall = sim.faults.stall();
    let period = sim.config.keep_alive;
    let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let reason = loop {
        tokio::select! {
            _ = drops.changed() => break "dropped by fault",
            _ = tx.closed() => break "client left",
            _ = keep_alive.tick() => {
                // A full queue is already more than a keep-alive: skip it.
                if !*stall.borrow() {
                    let _ = tx.try_send(Bytes::from_static(events::KEEP_ALIVE));
                }
            }
            received = bus.recv() => match received {
                Ok(event) => {
                    if *stall.borrow() || !filter.wants(&event.event_type) {
                        continue;
                    }
                    // A burst fills the queue faster than the connection task writes it out,
                    // however fast the client reads: only a queue that stays full means the
                    // client stopped reading (and the socket buffers are full too).
                    match tokio::time::timeout(SLOW_CONSUMER, tx.reserve()).await {
                        Ok(Ok(permit)) => permit.send(events::sse_frame(&event, filter.light)),
                        Ok(Err(_)) => break "client left",
                        Err(_) => break "client too slow",
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => break "client lagged",
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    };
    tracing::debug!(%remote, reason, "marathon-sim: event stream closed");
    drop(tx);
    sim.events
        .publish("event_stream_detached", json!({ "remoteAddress": remote }));
}

/// `/_sim/...`: fault injection and task health, for tests and demos.
async fn control(
    sim: &Arc<Sim>,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    req: Request<Incoming>,
) -> Response<Body> {
    match (method, path) {
        (&Method::GET, "/_sim/faults") => {
            json_response(StatusCode::OK, &json!(sim.faults.current()))
        }
        (&Method::POST, "/_sim/faults") => match read_json(req).await {
            Err(resp) => resp,
            Ok(body) => match serde_json::from_value::<Fault>(body) {
                Err(e) => message(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("invalid fault: {e}"),
                ),
                Ok(fault) => {
                    sim.faults.apply(fault);
                    json_response(StatusCode::OK, &json!(sim.faults.current()))
                }
            },
        },
        (&Method::POST, p) if p.starts_with("/_sim/tasks/") && p.ends_with("/health") => {
            let task_id = &p["/_sim/tasks/".len()..p.len() - "/health".len()];
            let healthy = match first(query, "healthy") {
                None | Some("true") => true,
                Some("false") => false,
                Some(other) => {
                    return message(
                        StatusCode::BAD_REQUEST,
                        format!("healthy: expected true or false, got {other:?}"),
                    );
                }
            };
            match sim.set_task_health(task_id, healthy) {
                Err(e) => error_response(&e),
                Ok(()) => json_response(
                    StatusCode::OK,
                    &json!({"taskId": task_id, "healthy": healthy}),
                ),
            }
        }
        _ => message(StatusCode::NOT_FOUND, format!("{method} {path}: not found")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query(Some(
            "embed=apps.tasks&event_type=a&event_type=b&label=HAPROXY_GROUP%3D%3Dexternal",
        ));
        assert_eq!(values(&q, "event_type").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(first(&q, "label"), Some("HAPROXY_GROUP==external"));
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    #[test]
    fn label_selectors() {
        let labels = json!({"HAPROXY_GROUP": "external", "tier": "web"});
        assert!(label_matches(&labels, "HAPROXY_GROUP"));
        assert!(label_matches(&labels, "HAPROXY_GROUP==external,tier!=db"));
        assert!(label_matches(&labels, "tier in (web, api)"));
        assert!(!label_matches(&labels, "tier notin (web,api)"));
        assert!(!label_matches(&labels, "missing"));
    }
}
