//! Client and watcher tests against a small real HTTP server on 127.0.0.1 that plays Marathon:
//! `/v2/apps`, `/v2/apps/{id}`, `/v2/events` streaming what the test pushes, redirects, errors,
//! garbage, silence, and a DC/OS login endpoint.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    time::timeout,
};

use super::{
    MarathonError,
    auth::DcosCredentials,
    client::MarathonClient,
    config::{Credentials, MarathonConfig},
    types::AppList,
    watch::{MarathonUpdate, MarathonWatcher},
};
use crate::secret::Secret;

type Body = BoxBody<Bytes, Infallible>;

/// What the fake Marathon answers and what it saw.
#[derive(Default)]
struct State {
    apps: BTreeMap<String, Value>,
    /// Answer `/v2/apps...` with this status instead.
    apps_status: Option<u16>,
    /// Answer `/v2/apps...` with 200 and a body that is not JSON.
    apps_garbage: bool,
    /// Answer `GET /v2/apps` with 200 and this body.
    apps_body: Option<String>,
    /// Answer `/v2/events` with a 307 to this base URL (a non-leader).
    events_redirect: Option<String>,
    /// Answer `/v2/events` with this status instead.
    events_status: Option<u16>,
    /// Expected `Authorization` header; anything else gets 401.
    require_auth: Option<String>,
    /// DC/OS login: the uid to accept, the public key to verify with, the tokens issued.
    dcos_uid: Option<String>,
    logins: usize,
    list_hits: usize,
    app_hits: BTreeMap<String, usize>,
    event_connects: usize,
    event_queries: Vec<String>,
    streams: Vec<mpsc::UnboundedSender<Bytes>>,
    /// While set, `GET /v2/apps/{id}` (counted first) waits for this to be notified.
    hold_rereads: Option<Arc<tokio::sync::Notify>>,
}

#[derive(Clone)]
struct Fake {
    addr: SocketAddr,
    scheme: &'static str,
    state: Arc<Mutex<State>>,
}

const TEST_PUBLIC_KEY: &str = include_str!("testdata/dcos-test-key.pub.pem");
const TEST_PRIVATE_KEY: &str = include_str!("testdata/dcos-test-key.pem");

fn full(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

fn app(id: &str, instances: u64) -> Value {
    json!({"id": id, "instances": instances, "tasks": []})
}

impl Fake {
    async fn start() -> Fake {
        Self::start_with(None).await
    }

    /// Serves HTTPS when given an acceptor.
    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Fake {
            addr: listener.local_addr().unwrap(),
            scheme: if tls.is_some() { "https" } else { "http" },
            state: Arc::default(),
        };
        let f = fake.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let f = f.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let f = f.clone();
                        async move { Ok::<_, Infallible>(f.handle(req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(sock), svc).await,
                        Some(acceptor) => match acceptor.accept(sock).await {
                            Ok(tls_sock) => {
                                http.serve_connection(TokioIo::new(tls_sock), svc).await
                            }
                            Err(_) => return, // the client refused our certificate
                        },
                    };
                });
            }
        });
        fake
    }

    fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    fn set_app(&self, id: &str, instances: u64) {
        self.with(|s| s.apps.insert(id.to_owned(), app(id, instances)));
    }

    /// Sends raw bytes to every open event stream.
    fn push_raw(&self, bytes: impl Into<Bytes>) {
        let bytes = bytes.into();
        self.with(|s| s.streams.retain(|tx| tx.send(bytes.clone()).is_ok()));
    }

    fn push(&self, event_type: &str, data: &Value) {
        self.push_raw(format!("event: {event_type}\r\ndata: {data}\r\n\r\n"));
    }

    fn close_streams(&self) {
        self.with(|s| s.streams.clear());
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or("").to_owned();
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if path == "/acs/api/v1/auth/login" {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            return self.login(&body);
        }
        self.hold_reread(&path).await;
        let mut s = self.state.lock().unwrap();
        if let Some(required) = &s.require_auth
            && auth.as_deref() != Some(required.as_str())
        {
            return full(401, r#"{"message":"Unauthorized"}"#);
        }
        if path == "/v2/events" {
            s.event_connects += 1;
            s.event_queries.push(query.clone());
            if let Some(status) = s.events_status {
                return full(status, "");
            }
            if let Some(leader) = &s.events_redirect {
                return Response::builder()
                    .status(307)
                    .header("location", format!("{leader}/v2/events?{query}"))
                    .body(Full::new(Bytes::new()).boxed())
                    .unwrap();
            }
            let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
            // Marathon greets every subscriber.
            let _ = tx.send(Bytes::from_static(
                b"event: event_stream_attached\r\ndata: {\"eventType\":\"event_stream_attached\",\"remoteAddress\":\"127.0.0.1\"}\r\n\r\n",
            ));
            s.streams.push(tx);
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            return Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(StreamBody::new(stream).boxed())
                .unwrap();
        }
        if let Some(rest) = path.strip_prefix("/v2/apps") {
            if let Some(status) = s.apps_status {
                return full(status, r#"{"message":"leader election in progress"}"#);
            }
            if s.apps_garbage {
                return full(200, "<html>proxy error</html>");
            }
            if rest.is_empty() {
                s.list_hits += 1;
                if let Some(body) = &s.apps_body {
                    return full(200, body.clone());
                }
                let apps: Vec<&Value> = s.apps.values().collect();
                return full(200, json!({ "apps": apps }).to_string());
            }
            *s.app_hits.entry(rest.to_owned()).or_default() += 1;
            return match s.apps.get(rest) {
                Some(a) => full(200, json!({ "app": a }).to_string()),
                None => full(
                    404,
                    format!(r#"{{"message":"App '{rest}' does not exist"}}"#),
                ),
            };
        }
        full(404, "{}")
    }

    /// With `hold_rereads` set, a `GET /v2/apps/{id}` waits for it (counted while waiting).
    async fn hold_reread(&self, path: &str) {
        let Some(id) = path.strip_prefix("/v2/apps").filter(|id| !id.is_empty()) else {
            return;
        };
        let Some(hold) = self.with(|s| s.hold_rereads.clone()) else {
            return;
        };
        self.with(|s| *s.app_hits.entry(id.to_owned()).or_default() += 1);
        hold.notified().await;
        self.with(|s| *s.app_hits.entry(id.to_owned()).or_default() -= 1); // counted again
    }

    fn login(&self, body: &[u8]) -> Response<Body> {
        #[derive(serde::Deserialize)]
        struct Claims {
            uid: String,
        }
        let mut s = self.state.lock().unwrap();
        let Some(uid) = s.dcos_uid.clone() else {
            return full(404, "{}");
        };
        let req: Value = serde_json::from_slice(body).unwrap_or_default();
        let jwt = req["token"].as_str().unwrap_or("");
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(TEST_PUBLIC_KEY.as_bytes()).unwrap();
        let validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        match jsonwebtoken::decode::<Claims>(jwt, &key, &validation) {
            Ok(data) if data.claims.uid == uid && req["uid"] == uid.as_str() => {
                s.logins += 1;
                let token = format!("tok-{}", s.logins);
                s.require_auth = Some(format!("token={token}"));
                full(200, json!({ "token": token }).to_string())
            }
            _ => full(401, r#"{"title":"Invalid JWT"}"#),
        }
    }
}

fn config(urls: &[String]) -> MarathonConfig {
    MarathonConfig {
        urls: urls.iter().map(|u| u.parse().unwrap()).collect(),
        stall_timeout: Duration::from_secs(20),
        max_backoff: Duration::from_secs(10),
        resync_interval: Duration::from_secs(1000),
        ..MarathonConfig::default()
    }
}

fn client(urls: &[String]) -> MarathonClient {
    MarathonClient::new(&config(urls)).unwrap()
}

/// A URL where nothing listens (a port bound, then released).
async fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

/// Ids of a full read's apps, the rejected ones included (as `!id`), in API order.
fn list_ids(list: &AppList) -> Vec<String> {
    let mut ids: Vec<String> = list.apps.iter().map(|a| a.id.clone()).collect();
    ids.extend(list.invalid.iter().map(|e| format!("!{}", e.app_id)));
    ids
}

#[tokio::test]
async fn list_apps_parses_each_app_and_rejects_a_malformed_one_alone() {
    let m = Fake::start().await;
    m.set_app("/a", 1);
    m.set_app("/c", 2);
    m.with(|s| {
        s.apps
            .insert("/b".into(), json!({"id": "/b", "instances": "three"}));
    });
    let list = client(&[m.url()]).list_apps().await.unwrap();
    assert_eq!(list_ids(&list), ["/a", "/c", "!/b"]);
    assert_eq!(list.apps[1].instances, Some(2));
    assert_eq!(list.invalid[0].field, "instances");
}

#[tokio::test]
async fn list_apps_refuses_a_body_without_an_apps_array() {
    let m = Fake::start().await;
    m.with(|s| s.apps_body = Some(r#"{"message": "not the leader"}"#.into()));
    let e = client(&[m.url()])
        .list_apps()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(r#"no "apps" array"#) && e.contains("/v2/apps"),
        "{e}"
    );
    m.with(|s| s.apps_body = Some(r#"{"apps": [{"id": "/a"}, {"id": "/b""#.into()));
    let e = client(&[m.url()])
        .list_apps()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not JSON"), "{e}");
}

#[tokio::test]
async fn failover_to_the_second_url_sticks_until_it_fails() {
    let a = Fake::start().await;
    let b = Fake::start().await;
    a.with(|s| s.apps_status = Some(503));
    b.set_app("/from-b", 1);
    a.set_app("/from-a", 1);
    let c = client(&[a.url(), b.url()]);

    assert_eq!(list_ids(&c.list_apps().await.unwrap()), ["/from-b"]);
    assert_eq!(c.current_host().as_str(), format!("{}/", b.url()));
    // Sticky: the next call goes straight to b.
    assert_eq!(list_ids(&c.list_apps().await.unwrap()), ["/from-b"]);
    assert_eq!(b.with(|s| s.list_hits), 2);

    // b fails, a recovered: back to a, which then sticks.
    a.with(|s| s.apps_status = None);
    b.with(|s| s.apps_status = Some(500));
    assert_eq!(list_ids(&c.list_apps().await.unwrap()), ["/from-a"]);
    assert_eq!(list_ids(&c.list_apps().await.unwrap()), ["/from-a"]);
    assert_eq!(a.with(|s| s.list_hits), 2);
    assert_eq!(c.current_host().as_str(), format!("{}/", a.url()));
}

#[tokio::test]
async fn unreachable_first_url_fails_over() {
    let b = Fake::start().await;
    b.set_app("/x", 1);
    let c = client(&[dead_url().await, b.url()]);
    assert_eq!(list_ids(&c.list_apps().await.unwrap()), ["/x"]);
    let err = client(&[dead_url().await, dead_url().await])
        .list_apps()
        .await
        .unwrap_err();
    assert!(
        matches!(err, MarathonError::AllHostsFailed { count: 2, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn server_errors_and_garbage_are_errors() {
    let m = Fake::start().await;
    let c = client(&[m.url()]);
    m.with(|s| s.apps_status = Some(502));
    let e = c.list_apps().await.unwrap_err().to_string();
    assert!(
        e.contains("HTTP 502") && e.contains("leader election in progress"),
        "{e}"
    );
    m.with(|s| {
        s.apps_status = None;
        s.apps_garbage = true;
    });
    let e = c.list_apps().await.unwrap_err().to_string();
    assert!(e.contains("not JSON") && e.contains("/v2/apps"), "{e}");
    let e = c.get_app("/a").await.unwrap_err().to_string();
    assert!(e.contains("not JSON"), "{e}");
}

#[tokio::test]
async fn get_app_reads_one_app_and_404_means_gone() {
    let m = Fake::start().await;
    m.set_app("/group/app", 3);
    let c = client(&[m.url()]);
    let a = c.get_app("/group/app").await.unwrap().unwrap();
    assert_eq!(a["instances"], 3);
    assert_eq!(c.get_app("/nope").await.unwrap(), None);
    assert!(c.get_app("/../v2/apps").await.is_err());
    assert_eq!(m.with(|s| s.app_hits.get("/group/app").copied()), Some(1));
}

/// A Marathon that accepts `/v2/events` but never sends response headers: before, the watcher
/// hung there (no request to Marathon, SIGHUP ignored); now it is an error after the request
/// timeout, and the watcher retries.
#[tokio::test]
async fn event_stream_without_response_headers_times_out() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let mut cfg = config(&[url]);
    cfg.request_timeout = Duration::from_millis(300);
    let c = MarathonClient::new(&cfg).unwrap();
    let start = std::time::Instant::now();
    let e = timeout(Duration::from_secs(5), c.open_events())
        .await
        .expect("open_events hung")
        .expect_err("no stream from a silent Marathon")
        .to_string();
    assert!(e.contains("no response headers"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(2));
    held.abort();
}

#[tokio::test]
async fn event_stream_follows_the_leader_redirect_with_credentials() {
    let follower = Fake::start().await;
    let leader = Fake::start().await;
    let auth = "Basic dXNlcjpwYXNz"; // user:pass
    for m in [&follower, &leader] {
        m.with(|s| s.require_auth = Some(auth.into()));
    }
    follower.with(|s| s.events_redirect = Some(leader.url()));
    let credentials = Credentials::Basic {
        user: "user".into(),
        password: Secret::new("pass"),
    };
    // A redirect to a host not configured gets no credentials (the leader refuses).
    let mut cfg = config(&[follower.url()]);
    cfg.credentials = credentials.clone();
    let e = MarathonClient::new(&cfg)
        .unwrap()
        .open_events()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("401"), "{e}");
    // To a configured Marathon, they go.
    let mut cfg = config(&[follower.url(), leader.url()]);
    cfg.credentials = credentials;
    let c = MarathonClient::new(&cfg).unwrap();
    let mut stream = c.open_events().await.unwrap();
    assert_eq!(
        stream.url.as_str(),
        format!("{}/v2/events", leader.url()),
        "the stream comes from the leader"
    );
    let first = timeout(Duration::from_secs(10), stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event_stream_attached"));
    let q = leader.with(|s| s.event_queries[0].clone());
    assert!(q.contains("plan-format=light"), "{q}");
    for t in [
        "status_update_event",
        "instance_health_changed_event",
        "api_post_event",
        "app_terminated_event",
        "deployment_success",
    ] {
        assert!(q.contains(&format!("event_type={t}")), "{t} missing in {q}");
    }
}

#[tokio::test]
async fn dcos_token_is_used_and_renewed_after_a_401() {
    let m = Fake::start().await;
    m.set_app("/a", 1);
    m.with(|s| {
        s.dcos_uid = Some("mlb-svc".into());
        s.require_auth = Some("token=never-issued".into());
    });
    let creds = json!({
        "uid": "mlb-svc",
        "private_key": TEST_PRIVATE_KEY,
        "login_endpoint": format!("{}/acs/api/v1/auth/login", m.url()),
    });
    let mut cfg = config(&[m.url()]);
    cfg.credentials = Credentials::Dcos(DcosCredentials::parse(&creds.to_string()).unwrap());
    let c = MarathonClient::new(&cfg).unwrap();
    assert_eq!(list_ids(&c.list_apps().await.unwrap()), ["/a"]);
    assert_eq!(m.with(|s| s.logins), 1);
    assert_eq!(list_ids(&c.list_apps().await.unwrap()), ["/a"]);
    assert_eq!(m.with(|s| s.logins), 1, "the token is cached");
    // Marathon stops accepting the token: one 401, a new login, then success.
    m.with(|s| s.require_auth = Some("token=revoked".into()));
    assert_eq!(list_ids(&c.list_apps().await.unwrap()), ["/a"]);
    assert_eq!(m.with(|s| s.logins), 2);

    let dbg = format!("{c:?} {cfg:?}");
    assert!(dbg.contains("mlb-svc"), "{dbg}");
    assert!(
        !dbg.contains("PRIVATE KEY") && !dbg.contains("tok-"),
        "{dbg}"
    );
}

#[tokio::test]
async fn bad_dcos_key_is_a_startup_error() {
    let creds =
        json!({"uid": "svc", "private_key": "not a key", "login_endpoint": "http://127.0.0.1:1/x"});
    let mut cfg = config(&["http://127.0.0.1:1".into()]);
    cfg.credentials = Credentials::Dcos(DcosCredentials::parse(&creds.to_string()).unwrap());
    let e = MarathonClient::new(&cfg).unwrap_err().to_string();
    assert!(e.contains("private_key") && e.contains("svc"), "{e}");
}

#[tokio::test]
async fn credentials_never_show_in_debug_or_errors() {
    let m = Fake::start().await;
    m.with(|s| s.require_auth = Some("Basic something-else".into()));
    let mut cfg = config(&[m.url()]);
    cfg.credentials = Credentials::Basic {
        user: "alice".into(),
        password: Secret::new("hunter2-password"),
    };
    let c = MarathonClient::new(&cfg).unwrap();
    let err = c.list_apps().await.unwrap_err();
    let text = format!("{c:?} {cfg:?} {err} {err:?}");
    assert!(text.contains("HTTP 401"), "{text}");
    assert!(text.contains("alice"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn https_marathon_is_verified_by_default() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let m = Fake::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))).await;
    m.set_app("/secure", 1);

    // Default: system roots, which do not know our CA.
    let e = client(&[m.url()]).list_apps().await.unwrap_err();
    assert!(matches!(e, MarathonError::Transport { .. }), "{e}");

    let dir = std::env::temp_dir().join(format!("mlb-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let mut cfg = config(&[m.url()]);
    cfg.tls = super::config::TlsVerification::CaFile(ca_file);
    let apps = MarathonClient::new(&cfg).unwrap().list_apps().await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(list_ids(&apps.unwrap()), ["/secure"]);

    cfg.tls = super::config::TlsVerification::Insecure;
    let apps = MarathonClient::new(&cfg)
        .unwrap()
        .list_apps()
        .await
        .unwrap();
    assert_eq!(list_ids(&apps), ["/secure"]);
}

// ---- watcher ----

struct Watching {
    rx: mpsc::Receiver<MarathonUpdate>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    resync: super::watch::ResyncTrigger,
    counters: Arc<super::watch::WatcherCounters>,
}

impl Watching {
    fn start(cfg: MarathonConfig) -> Watching {
        let (tx, rx) = mpsc::channel(16);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let w = MarathonWatcher::new(cfg).unwrap();
        let resync = w.resync_trigger();
        let counters = w.counters();
        let task = tokio::spawn(w.run(tx, shutdown_rx));
        Watching {
            rx,
            shutdown,
            task,
            resync,
            counters,
        }
    }

    /// The next update; the virtual clock moves on while waiting, so this also lets timers fire.
    /// The next update but task states (sent ahead of each re-read: see `task_states_*`).
    async fn next(&mut self) -> MarathonUpdate {
        loop {
            match self.next_any().await {
                MarathonUpdate::TaskStatuses { .. } => {}
                other => return other,
            }
        }
    }

    async fn next_any(&mut self) -> MarathonUpdate {
        timeout(Duration::from_secs(3600), self.rx.recv())
            .await
            .expect("an update within an hour of virtual time")
            .expect("the watcher is running")
    }

    async fn snapshot(&mut self) -> AppList {
        match self.next().await {
            MarathonUpdate::Snapshot(list) => list,
            other => panic!("expected a snapshot, got {other:?}"),
        }
    }

    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the watcher stops on shutdown")
            .unwrap();
    }
}

fn status_update(app_id: &str) -> Value {
    json!({"eventType": "status_update_event", "appId": app_id, "taskId": "t", "taskStatus": "TASK_RUNNING"})
}

/// `n` status updates in one write, the i-th about app `app_id(i)`.
fn status_update_burst(n: usize, app_id: impl Fn(usize) -> String) -> String {
    (0..n)
        .map(|i| {
            let ev = status_update(&app_id(i));
            format!("event: status_update_event\ndata: {ev}\n\n")
        })
        .collect()
}

/// A status update's task state reaches the controller as soon as the event is read, before
/// the re-read of its app (which follows, as for every task event).
#[tokio::test(start_paused = true)]
async fn task_states_are_sent_ahead_of_the_reread() {
    let m = Fake::start().await;
    m.set_app("/a", 1);
    let mut w = Watching::start(config(&[m.url()]));
    assert_eq!(list_ids(&w.snapshot().await), ["/a"]);
    let killing = json!({"eventType": "status_update_event", "appId": "/a", "taskId": "a.1",
                         "taskStatus": "TASK_KILLING"});
    m.push("status_update_event", &killing);
    match w.next_any().await {
        MarathonUpdate::TaskStatuses { statuses, .. } => {
            let got: Vec<_> = statuses
                .iter()
                .map(|s| (s.app_id.as_str(), s.task_id.as_str(), s.state.as_str()))
                .collect();
            assert_eq!(got, [("/a", "a.1", "TASK_KILLING")]);
        }
        other => panic!("expected the task state first, got {other:?}"),
    }
    assert!(matches!(w.next_any().await, MarathonUpdate::Apps { .. }));
    w.stop().await;
}

/// Each update says when the oldest event it reflects was read off the stream, where mlb's
/// event → dataplane latency starts (its log, `mlb_event_to_dataplane_seconds`): a task's state
/// from its own event, a re-read from the first event that asked for it, not the last.
#[tokio::test(start_paused = true)]
async fn updates_carry_when_their_oldest_event_was_read() {
    let (m, mut w) = watching_one_app().await;
    let before = tokio::time::Instant::now().into_std();
    let killing = json!({"eventType": "status_update_event", "appId": "/a", "taskId": "a.1",
                         "taskStatus": "TASK_KILLING"});
    m.push("status_update_event", &killing);
    let MarathonUpdate::TaskStatuses { since: read, .. } = w.next_any().await else {
        panic!("expected the task state first");
    };
    assert!(read >= before);
    // A second event for the app inside the coalescing window: one re-read for both, as old
    // as the first.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let changed = json!({"eventType": "instance_changed_event", "runSpecId": "/a",
                         "condition": "Killed"});
    m.push("instance_changed_event", &changed);
    match w.next().await {
        MarathonUpdate::Apps { since, .. } => assert_eq!(since, Some(read)),
        other => panic!("{other:?}"),
    }
    w.stop().await;
}

/// Task states that find the update channel full (the controller busy with a burst) are sent
/// as soon as it has room, not with the next chunk of the stream: after a burst the stream may
/// stay quiet for long.
#[tokio::test(start_paused = true)]
async fn task_states_behind_a_full_channel_go_once_it_has_room() {
    let (m, mut w) = watching_one_app().await;
    // More chunks than the channel holds, none received meanwhile.
    let tasks: Vec<String> = (0..40).map(|i| format!("a.{i}")).collect();
    for task in &tasks {
        let killing = json!({"eventType": "status_update_event", "appId": "/a",
                             "taskId": task, "taskStatus": "TASK_KILLING"});
        m.push("status_update_event", &killing);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Well within the stall timeout (20 s): no reconnect, no further event.
    let mut seen = std::collections::BTreeSet::new();
    timeout(Duration::from_secs(5), async {
        while seen.len() < tasks.len() {
            if let MarathonUpdate::TaskStatuses { statuses, .. } = w.next_any().await {
                seen.extend(statuses.into_iter().map(|s| s.task_id));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("states sent: {} of {}", seen.len(), tasks.len()));
    assert_eq!(w.counters.stream_connects(), 1);
    w.stop().await;
}

/// A re-read's update says how long it waited for Marathon's answer: of its latency since the
/// event, the share that is Marathon's, not mlb's (bench sync shows mlb's part without it).
#[tokio::test(start_paused = true)]
async fn a_reread_reports_its_wait_for_marathon() {
    let (m, mut w) = watching_one_app().await;
    let hold = Arc::new(tokio::sync::Notify::new());
    m.with(|s| s.hold_rereads = Some(hold.clone()));
    let changed = json!({"eventType": "instance_changed_event", "runSpecId": "/a",
                         "condition": "Killed"});
    m.push("instance_changed_event", &changed);
    wait_until(|| m.with(|s| s.app_hits.get("/a").copied()) == Some(1)).await;
    let slow = Duration::from_millis(300);
    tokio::time::sleep(slow).await;
    m.with(|s| s.hold_rereads = None);
    hold.notify_waiters();
    match w.next().await {
        MarathonUpdate::Apps {
            since, marathon, ..
        } => {
            let age = tokio::time::Instant::now().into_std() - since.expect("from an event");
            assert!(marathon >= slow, "{marathon:?}");
            assert!(marathon <= age, "{marathon:?} of {age:?}");
        }
        other => panic!("{other:?}"),
    }
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn watcher_snapshots_then_sends_each_changed_app() {
    let m = Fake::start().await;
    m.set_app("/a", 1);
    m.set_app("/b", 1);
    let mut w = Watching::start(config(&[m.url()]));
    assert_eq!(list_ids(&w.snapshot().await), ["/a", "/b"]);

    m.set_app("/a", 5);
    m.push("status_update_event", &status_update("/a"));
    match w.next().await {
        MarathonUpdate::Apps {
            changed, removed, ..
        } => {
            assert_eq!(changed, AppList::from_rereads(vec![app("/a", 5)]));
            assert!(removed.is_empty());
        }
        other => panic!("{other:?}"),
    }

    // Removed by app_terminated_event directly, and by a re-read that finds a 404.
    m.with(|s| s.apps.clear());
    m.push(
        "app_terminated_event",
        &json!({"eventType": "app_terminated_event", "appId": "/a"}),
    );
    m.push(
        "instance_changed_event",
        &json!({"eventType": "instance_changed_event", "runSpecId": "/b", "condition": "Killed"}),
    );
    match w.next().await {
        MarathonUpdate::Apps {
            changed, removed, ..
        } => {
            assert!(changed.is_empty());
            assert_eq!(removed, ["/a", "/b"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.with(|s| s.app_hits.get("/a").copied()), Some(1));
    assert_eq!(m.with(|s| (s.list_hits, s.event_connects)), (1, 1));
    w.stop().await;
}

/// A fake Marathon with `/a` (one task) and a watcher past its first snapshot of it.
async fn watching_one_app() -> (Fake, Watching) {
    let m = Fake::start().await;
    m.set_app("/a", 1);
    let mut w = Watching::start(config(&[m.url()]));
    w.snapshot().await;
    (m, w)
}

/// A fake Marathon with `/app0`… (`count` apps of one task each) and a watcher past its first
/// snapshot of them.
async fn watching_apps(count: usize) -> (Fake, Watching) {
    let m = Fake::start().await;
    for i in 0..count {
        m.set_app(&format!("/app{i}"), 1);
    }
    let mut w = Watching::start(config(&[m.url()]));
    w.snapshot().await;
    (m, w)
}

#[tokio::test(start_paused = true)]
async fn burst_of_1000_events_costs_a_bounded_number_of_rereads() {
    let (m, mut w) = watching_apps(5).await;

    // 1,000 events about 5 apps, written in one go: one re-read per app.
    m.push_raw(status_update_burst(1000, |i| format!("/app{}", i % 5)));
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 5 {
        match w.next().await {
            MarathonUpdate::Apps { changed, .. } => {
                seen.extend(changed.ids().map(str::to_owned));
            }
            other => panic!("{other:?}"),
        }
    }
    let rereads: usize = m.with(|s| s.app_hits.values().sum());
    assert!(
        (5..=15).contains(&rereads),
        "1,000 events about 5 apps cost {rereads} re-reads"
    );

    // 1,000 events about 1,000 different apps: one full resync, no per-app reads.
    m.push_raw(status_update_burst(1000, |i| format!("/other{i}")));
    assert_eq!(w.snapshot().await.apps.len(), 5);
    assert_eq!(m.with(|s| s.app_hits.values().sum::<usize>()), rereads);
    assert_eq!(m.with(|s| s.list_hits), 2);
    w.stop().await;
}

/// A burst's re-read apps reach the controller in parts as they are read (each part's previous
/// versions replaced before the next: a bounded peak), every one of them.
#[tokio::test(start_paused = true)]
async fn a_burst_of_rereads_arrives_whole_in_bounded_parts() {
    let (m, mut w) = watching_apps(1000).await;

    // 220 apps: past two parts, under the share of the known apps that makes a full resync.
    m.push_raw(status_update_burst(220, |i| format!("/app{i}")));
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 220 {
        match w.next().await {
            MarathonUpdate::Apps {
                changed, removed, ..
            } => {
                assert!(removed.is_empty());
                let ids: Vec<_> = changed.ids().map(str::to_owned).collect();
                assert!(
                    (1..=super::watch::REREAD_CHUNK).contains(&ids.len()),
                    "a part of {} apps",
                    ids.len()
                );
                seen.extend(ids);
            }
            other => panic!("{other:?}"),
        }
    }
    let expected: std::collections::BTreeSet<_> = (0..220).map(|i| format!("/app{i}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(m.with(|s| s.list_hits), 1);
    w.stop().await;
}

/// Marathon drops an event subscriber that does not keep up, so the stream must be read while
/// apps are being re-read: with one re-read hanging, 300 more events are still read at once,
/// and once it answers the apps they named follow, on the same connection.
#[tokio::test(start_paused = true)]
async fn events_are_read_while_a_reread_hangs() {
    let (m, mut w) = watching_apps(4).await;
    let hold = Arc::new(tokio::sync::Notify::new());
    m.with(|s| s.hold_rereads = Some(hold.clone()));
    m.push("status_update_event", &status_update("/app0"));
    let hanging = || m.with(|s| s.app_hits.get("/app0").copied()) == Some(1);
    wait_until(hanging).await;
    let before = w.counters.events();
    m.push_raw(status_update_burst(300, |i| format!("/app{}", 1 + i % 3)));
    wait_until(|| w.counters.events() == before + 300).await;
    assert!(hanging(), "the re-read of /app0 still hangs");

    m.set_app("/app1", 7);
    m.with(|s| s.hold_rereads = None);
    hold.notify_waiters();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 4 {
        match w.next().await {
            MarathonUpdate::Apps { changed, .. } => {
                seen.extend(changed.ids().map(str::to_owned));
                if let Some(a) = changed.apps.iter().find(|a| a.id == "/app1") {
                    assert_eq!(a.instances, Some(7));
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(w.counters.stream_connects(), 1, "no reconnect");
    assert_eq!(w.counters.full_syncs(), 1, "no resync");
    assert_eq!(m.with(|s| (s.event_connects, s.list_hits)), (1, 1));
    w.stop().await;
}

/// Polls `done` every 10 ms of virtual time, for at most 20 s (below the request timeout).
async fn wait_until(done: impl Fn() -> bool) {
    timeout(Duration::from_secs(20), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the condition within 20 s");
}

#[tokio::test(start_paused = true)]
async fn invalid_event_json_is_skipped_and_the_stream_continues() {
    let (m, mut w) = watching_one_app().await;
    m.push_raw("event: status_update_event\ndata: {\"eventType\": broken\n\n");
    m.push_raw("event: status_update_event\ndata: [1]\n\n");
    m.push_raw("event: something_new\ndata: {\"eventType\":\"something_new\"}\n\n");
    m.push("status_update_event", &status_update("/a"));
    match w.next().await {
        MarathonUpdate::Apps { changed, .. } => {
            assert_eq!(changed.ids().collect::<Vec<_>>(), ["/a"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.with(|s| s.event_connects), 1, "no reconnect");
    w.stop().await;
}

/// The event stream keeps failing, so reconnects back off up to the cap; meanwhile a requested
/// resync reads `/v2/apps` at once (before, it waited for the next reconnect).
#[tokio::test(start_paused = true)]
async fn resync_requests_are_served_while_the_stream_backs_off() {
    let m = Fake::start().await;
    m.set_app("/a", 1);
    m.with(|s| s.events_status = Some(503));
    let mut cfg = config(&[m.url()]);
    cfg.max_backoff = Duration::from_secs(300);
    let mut w = Watching::start(cfg);
    // Let the backoff grow: each failed open sends a SyncFailed.
    for _ in 0..6 {
        assert!(matches!(w.next().await, MarathonUpdate::SyncFailed { .. }));
    }
    let connects = m.with(|s| s.event_connects);
    m.set_app("/b", 1);
    w.resync.request();
    let list = timeout(Duration::from_secs(1), w.snapshot())
        .await
        .expect("the resync waited for the backoff");
    assert_eq!(list_ids(&list), ["/a", "/b"]);
    assert_eq!(
        m.with(|s| s.event_connects),
        connects,
        "a resync, not a reconnect"
    );
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stalled_stream_reconnects_and_resyncs() {
    let m = Fake::start().await;
    m.set_app("/a", 1);
    let mut w = Watching::start(config(&[m.url()])); // stall timeout 20 s
    assert_eq!(list_ids(&w.snapshot().await), ["/a"]);
    // Keep-alives keep the connection: 3 × 15 s of comments, longer than the stall timeout.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(15)).await;
        m.push_raw(":\n");
    }
    assert_eq!(m.with(|s| s.event_connects), 1);
    // Then silence: the watcher reconnects on its own and resyncs.
    m.set_app("/b", 1);
    assert_eq!(list_ids(&w.snapshot().await), ["/a", "/b"]);
    assert_eq!(m.with(|s| (s.event_connects, s.list_hits)), (2, 2));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn closed_stream_reconnects_after_a_backoff_and_resyncs() {
    let m = Fake::start().await;
    m.set_app("/a", 1);
    let mut w = Watching::start(config(&[m.url()]));
    w.snapshot().await;
    let closed_at = tokio::time::Instant::now();
    m.close_streams();
    w.snapshot().await;
    let waited = closed_at.elapsed();
    // First backoff: 0.5-1 s (jittered), far below the 10 s cap.
    assert!(
        waited >= Duration::from_millis(500) && waited <= Duration::from_secs(2),
        "{waited:?}"
    );
    assert_eq!(m.with(|s| s.event_connects), 2);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_up_to_the_cap_while_marathon_is_down() {
    // A "Marathon" that accepts connections and closes them at once, counting attempts.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let attempts = Arc::new(Mutex::new(0usize));
    let counter = attempts.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            *counter.lock().unwrap() += 1;
            drop(sock);
        }
    });
    let mut cfg = config(&[url]);
    cfg.max_backoff = Duration::from_secs(4);
    let (tx, _rx) = mpsc::channel(16);
    let (_stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(MarathonWatcher::new(cfg).unwrap().run(tx, stop_rx));
    // Backoffs of 0.5-1, 1-2, 2-4 s, then 2-4 s each (capped): in 60 s between ~16 and ~31
    // attempts. Without a backoff there would be thousands; without the cap, about 6.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let n = *attempts.lock().unwrap();
    assert!((12..=40).contains(&n), "{n} connection attempts in 60 s");
    task.abort();
}

#[tokio::test(start_paused = true)]
async fn failed_resync_keeps_state_reports_and_retries() {
    let m = Fake::start().await;
    m.set_app("/a", 1);
    let mut cfg = config(&[m.url()]);
    cfg.resync_interval = Duration::from_secs(60);
    cfg.stall_timeout = Duration::from_secs(1000);
    let mut w = Watching::start(cfg);
    w.snapshot().await;
    m.with(|s| s.apps_status = Some(500));
    // Periodic resync fails: reported, not a snapshot.
    match w.next().await {
        MarathonUpdate::SyncFailed { error } => assert!(error.contains("HTTP 500"), "{error}"),
        other => panic!("{other:?}"),
    }
    m.with(|s| {
        s.apps_status = None;
        s.apps_garbage = true;
    });
    match w.next().await {
        MarathonUpdate::SyncFailed { error } => assert!(error.contains("not JSON"), "{error}"),
        other => panic!("{other:?}"),
    }
    m.with(|s| s.apps_garbage = false);
    m.set_app("/b", 1);
    assert_eq!(list_ids(&w.snapshot().await), ["/a", "/b"]);
    assert_eq!(m.with(|s| s.event_connects), 1, "the stream stayed up");
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn periodic_resync_without_events() {
    let m = Fake::start().await;
    m.set_app("/a", 1);
    let mut cfg = config(&[m.url()]);
    cfg.resync_interval = Duration::from_secs(60);
    cfg.stall_timeout = Duration::from_secs(1000);
    let mut w = Watching::start(cfg);
    w.snapshot().await;
    let t0 = tokio::time::Instant::now();
    m.set_app("/b", 1);
    assert_eq!(list_ids(&w.snapshot().await), ["/a", "/b"]);
    assert!(
        t0.elapsed() >= Duration::from_secs(59),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(m.with(|s| s.event_connects), 1);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn poll_mode_reads_every_interval_without_the_event_stream() {
    let m = Fake::start().await;
    m.set_app("/a", 1);
    let mut cfg = config(&[m.url()]);
    cfg.poll_interval = Some(Duration::from_secs(30));
    let mut w = Watching::start(cfg);
    assert_eq!(list_ids(&w.snapshot().await), ["/a"]);
    m.set_app("/b", 1);
    assert_eq!(list_ids(&w.snapshot().await), ["/a", "/b"]);
    m.with(|s| s.apps_status = Some(503));
    assert!(matches!(w.next().await, MarathonUpdate::SyncFailed { .. }));
    assert_eq!(m.with(|s| s.event_connects), 0);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn watcher_fails_over_and_follows_the_redirect() {
    let follower = Fake::start().await;
    let leader = Fake::start().await;
    follower.with(|s| s.events_redirect = Some(leader.url()));
    follower.set_app("/a", 1);
    leader.set_app("/a", 1);
    let mut w = Watching::start(config(&[dead_url().await, follower.url()]));
    assert_eq!(list_ids(&w.snapshot().await), ["/a"]);
    leader.set_app("/a", 2);
    follower.set_app("/a", 2);
    leader.push("status_update_event", &status_update("/a"));
    match w.next().await {
        MarathonUpdate::Apps { changed, .. } => {
            assert_eq!(changed, AppList::from_rereads(vec![app("/a", 2)]));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(leader.with(|s| s.event_connects), 1);
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn resync_trigger_forces_a_snapshot() {
    let m = Fake::start().await;
    m.set_app("/a", 1);
    let (tx, mut rx) = mpsc::channel(16);
    let (stop, stop_rx) = watch::channel(false);
    let watcher = MarathonWatcher::new(config(&[m.url()])).unwrap();
    let trigger = watcher.resync_trigger();
    let task = tokio::spawn(watcher.run(tx, stop_rx));
    assert!(matches!(rx.recv().await, Some(MarathonUpdate::Snapshot(_))));
    trigger.request();
    assert!(matches!(rx.recv().await, Some(MarathonUpdate::Snapshot(_))));
    assert_eq!(m.with(|s| s.list_hits), 2);
    stop.send(true).unwrap();
    timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}
