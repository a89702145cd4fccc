//! The Marathon REST client: full app list, one app, and opening `/v2/events`.
//!
//! Hosts are tried in order starting with the one that answered last (marathon-lb's sticky
//! failover). Redirects are followed by hand, so credentials go to the redirect target (the
//! leader, for `/v2/events` on a non-leader; reqwest would drop them on a host change) but never
//! from https to http.
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url, header};
use serde_json::Value;
use tracing::{debug, warn};

use super::{
    MarathonError,
    auth::DcosAuth,
    config::{Credentials, MarathonConfig, TlsVerification},
    events::SUBSCRIBED_EVENT_TYPES,
    types::{AppList, parse_app_list_json},
};
use crate::secret::Secret;

/// Redirect hops followed per request (Marathon needs one: non-leader to leader).
const MAX_REDIRECTS: usize = 3;
const USER_AGENT: &str = concat!("mlb/", env!("CARGO_PKG_VERSION"));
/// At most this much is reserved up front for a body from its Content-Length (it grows past).
const MAX_BODY_RESERVE: u64 = 256 << 20;
/// Largest response body read (`/v2/apps` of 10,000 apps is about 50 MB): a Marathon, or
/// something posing as one, cannot exhaust memory.
const MAX_BODY: usize = 512 << 20;

enum Auth {
    None,
    Basic { user: String, password: Secret },
    Dcos(DcosAuth),
}

struct Inner {
    http: reqwest::Client,
    hosts: Vec<Url>,
    /// Index into `hosts` of the host that answered last: tried first.
    current: AtomicUsize,
    auth: Auth,
    request_timeout: std::time::Duration,
}

/// A cheap-to-clone Marathon client.
#[derive(Clone)]
pub struct MarathonClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MarathonClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.inner.auth {
            Auth::None => "none".to_owned(),
            Auth::Basic { user, .. } => format!("basic user {user}"),
            Auth::Dcos(d) => format!("{d:?}"),
        };
        f.debug_struct("MarathonClient")
            .field(
                "hosts",
                &self.inner.hosts.iter().map(Url::as_str).collect::<Vec<_>>(),
            )
            .field("current", &self.inner.current.load(Ordering::Relaxed))
            .field("auth", &auth)
            .finish()
    }
}

/// What a full read of `/v2/apps` took (logged with each full sync).
#[derive(Clone, Copy, Debug, Default)]
pub struct FullReadTimes {
    /// Size of the body.
    pub bytes: usize,
    /// From the request until the whole body was read.
    pub read: Duration,
    /// Parsing the body into apps.
    pub parse: Duration,
}

/// An open `/v2/events` response.
#[derive(Debug)]
pub struct EventStream {
    /// The URL the stream came from (after redirects).
    pub url: Url,
    response: Response,
}

impl EventStream {
    /// The next chunk of bytes; `Ok(None)` when the server ended the stream.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, MarathonError> {
        self.response
            .chunk()
            .await
            .map_err(|e| MarathonError::Stream {
                url: self.url.to_string(),
                reason: e.without_url().to_string(),
            })
    }
}

impl MarathonClient {
    /// Builds the client (TLS settings, key parsing). Does no I/O.
    pub fn new(cfg: &MarathonConfig) -> Result<Self, MarathonError> {
        if cfg.urls.is_empty() {
            return Err(MarathonError::Config("no Marathon URL".into()));
        }
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.connect_timeout)
            .user_agent(USER_AGENT);
        match &cfg.tls {
            TlsVerification::SystemRoots => {}
            TlsVerification::CaFile(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    MarathonError::Config(format!("--marathon-ca-cert {}: {e}", path.display()))
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    MarathonError::Config(format!("--marathon-ca-cert {}: {e}", path.display()))
                })?;
                if certs.is_empty() {
                    return Err(MarathonError::Config(format!(
                        "--marathon-ca-cert {}: no PEM certificate in the file",
                        path.display()
                    )));
                }
                // Only the given CAs are trusted, as with marathon-lb's `verify=<ca file>`.
                builder = builder.tls_built_in_root_certs(false);
                for c in certs {
                    builder = builder.add_root_certificate(c);
                }
            }
            TlsVerification::Insecure => {
                warn!("--marathon-insecure: the Marathon server certificate is not verified");
                builder = builder.danger_accept_invalid_certs(true);
            }
        }
        let http = builder
            .build()
            .map_err(|e| MarathonError::Config(format!("building the HTTP client: {e}")))?;
        let auth = match &cfg.credentials {
            Credentials::None => Auth::None,
            Credentials::Basic { user, password } => Auth::Basic {
                user: user.clone(),
                password: password.clone(),
            },
            Credentials::Dcos(c) => Auth::Dcos(DcosAuth::new(c.clone())?),
        };
        Ok(MarathonClient {
            inner: Arc::new(Inner {
                http,
                hosts: cfg.urls.clone(),
                current: AtomicUsize::new(0),
                auth,
                request_timeout: cfg.request_timeout,
            }),
        })
    }

    /// The host tried first by the next request (the one that answered last).
    pub fn current_host(&self) -> &Url {
        &self.inner.hosts[self.inner.current.load(Ordering::Relaxed) % self.inner.hosts.len()]
    }

    /// `GET /v2/apps` with tasks, deployments and readiness embedded, parsed app by app (a
    /// malformed app is in [`AppList::invalid`], naming the field). Anything but a 200 with
    /// `{"apps": [...]}` from some host is an error, so the caller keeps its last good state.
    ///
    /// The body is held once, as bytes, while its apps are parsed one at a time from it (never
    /// the whole body as `Value`s); the parsing runs on a blocking thread, as it takes a few
    /// hundred milliseconds for 10,000 apps.
    pub async fn list_apps(&self) -> Result<AppList, MarathonError> {
        self.list_apps_timed().await.map(|(list, _)| list)
    }

    /// [`MarathonClient::list_apps`], with how long the body took to read and to parse.
    pub async fn list_apps_timed(&self) -> Result<(AppList, FullReadTimes), MarathonError> {
        self.with_failover(|base| async move {
            let mut url = endpoint(&base, &["v2", "apps"]);
            url.query_pairs_mut()
                .append_pair("embed", "apps.tasks")
                .append_pair("embed", "apps.deployments")
                .append_pair("embed", "apps.readiness");
            let started = Instant::now();
            let resp = self.get(url.clone(), "application/json", true).await?;
            let resp = expect_success(resp, &url).await?;
            let body = read_body(resp, &url).await?;
            let mut times = FullReadTimes {
                bytes: body.len(),
                read: started.elapsed(),
                parse: Duration::ZERO,
            };
            let started = Instant::now();
            let parsed = tokio::task::spawn_blocking(move || {
                let list = parse_app_list_json(&body);
                // The body and the parse's scratch go before the model is built beside them.
                drop(body);
                crate::stats::memory::release_freed();
                list
            })
            .await;
            times.parse = started.elapsed();
            let invalid = |reason: String| MarathonError::InvalidResponse {
                url: without_query(url.clone()).to_string(),
                reason,
            };
            match parsed {
                Ok(Ok(list)) => Ok((list, times)),
                Ok(Err(e)) => Err(invalid(e.to_string())),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => Err(invalid(format!("parsing the apps: {e}"))),
            }
        })
        .await
    }

    /// `GET /v2/apps/{id}` with tasks, deployments and readiness embedded. `Ok(None)` when
    /// Marathon says 404 (the app is gone).
    pub async fn get_app(&self, app_id: &str) -> Result<Option<Value>, MarathonError> {
        let segments = app_id_segments(app_id)?;
        let segments = &segments;
        self.with_failover(|base| async move {
            let mut path = vec!["v2", "apps"];
            path.extend(segments.iter().copied());
            let mut url = endpoint(&base, &path);
            url.query_pairs_mut()
                .append_pair("embed", "app.tasks")
                .append_pair("embed", "app.deployments")
                .append_pair("embed", "app.readiness");
            let resp = self.get(url.clone(), "application/json", true).await?;
            if resp.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            let resp = expect_success(resp, &url).await?;
            let mut body = read_json(resp, &url).await?;
            match body.get_mut("app").map(Value::take) {
                Some(app @ Value::Object(_)) => Ok(Some(app)),
                _ => Err(MarathonError::InvalidResponse {
                    url: url.to_string(),
                    reason: format!("no \"app\" object for {app_id}"),
                }),
            }
        })
        .await
    }

    /// Opens `GET /v2/events?plan-format=light&event_type=...` on the first host that accepts,
    /// following the non-leader redirect.
    pub async fn open_events(&self) -> Result<EventStream, MarathonError> {
        self.with_failover(|base| async move {
            let mut url = endpoint(&base, &["v2", "events"]);
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("plan-format", "light");
                for t in SUBSCRIBED_EVENT_TYPES {
                    q.append_pair("event_type", t);
                }
            }
            let resp = self.get(url.clone(), "text/event-stream", false).await?;
            let final_url = resp.url().clone();
            let response = expect_success(resp, &url).await?;
            Ok(EventStream {
                url: without_query(final_url),
                response,
            })
        })
        .await
    }

    /// Runs `attempt` against each host, starting with the sticky one, until one succeeds.
    ///
    /// `attempt` takes the base URL by value: a borrowed one would make the futures of the
    /// callers not provably `Send` (higher-ranked lifetimes, rust-lang/rust#102211).
    async fn with_failover<T, F, Fut>(&self, mut attempt: F) -> Result<T, MarathonError>
    where
        F: FnMut(Url) -> Fut,
        Fut: Future<Output = Result<T, MarathonError>>,
    {
        let hosts = &self.inner.hosts;
        let start = self.inner.current.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..hosts.len() {
            let i = (start + k) % hosts.len();
            match attempt(hosts[i].clone()).await {
                Ok(v) => {
                    if i != start % hosts.len() {
                        debug!(host = %hosts[i], "Marathon host answered; using it first from now on");
                    }
                    self.inner.current.store(i, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) => {
                    if hosts.len() > 1 {
                        warn!(host = %hosts[i], error = %e, "Marathon host failed; trying the next");
                    }
                    last = Some(e);
                }
            }
        }
        let last = last.expect("at least one host");
        if hosts.len() == 1 {
            Err(last)
        } else {
            Err(MarathonError::AllHostsFailed {
                count: hosts.len(),
                last: Box::new(last),
            })
        }
    }

    /// GET with auth, following redirects (keeping auth, refusing https→http), retrying once
    /// after a DC/OS 401 with a fresh token.
    async fn get(
        &self,
        mut url: Url,
        accept: &str,
        with_timeout: bool,
    ) -> Result<Response, MarathonError> {
        let mut hops = 0;
        let mut relogged = false;
        loop {
            let mut req = self
                .inner
                .http
                .request(Method::GET, url.clone())
                .header(header::ACCEPT, accept);
            if accept == "text/event-stream" {
                req = req.header(header::CACHE_CONTROL, "no-cache");
            }
            if with_timeout {
                req = req.timeout(self.inner.request_timeout);
            }
            // Credentials go to the Marathon hosts configured, never to another host a
            // redirect names (as python-requests, marathon-lb's client, strips them).
            if self.is_configured_origin(&url) {
                req = self.authorize(req).await?;
            }
            // The event stream has no whole-request timeout, but its response headers must come
            // as fast as any answer's: a Marathon that accepts and says nothing would hang the
            // watcher (and the resyncs it owes) forever.
            let sent = tokio::time::timeout(self.inner.request_timeout, req.send()).await;
            let transport = |source: reqwest::Error| MarathonError::Transport {
                method: "GET",
                url: without_query(url.clone()).to_string(),
                source: source.without_url(),
            };
            let resp = match sent {
                Ok(r) => r.map_err(transport)?,
                Err(_) => {
                    return Err(MarathonError::InvalidResponse {
                        url: without_query(url.clone()).to_string(),
                        reason: format!(
                            "no response headers within {:?}",
                            self.inner.request_timeout
                        ),
                    });
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED
                && let Auth::Dcos(d) = &self.inner.auth
                && !relogged
            {
                relogged = true;
                d.invalidate().await;
                continue;
            }
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let redirect_err = |reason: String| MarathonError::Redirect {
                    url: without_query(url.clone()).to_string(),
                    reason,
                };
                hops += 1;
                if hops > MAX_REDIRECTS {
                    return Err(redirect_err(format!("more than {MAX_REDIRECTS} redirects")));
                }
                let location = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| redirect_err(format!("HTTP {status} without Location")))?;
                let next = url
                    .join(location)
                    .map_err(|e| redirect_err(format!("bad Location {location:?}: {e}")))?;
                if url.scheme() == "https" && next.scheme() != "https" {
                    return Err(redirect_err(format!("refusing to downgrade to {next}")));
                }
                debug!(from = %without_query(url.clone()), to = %without_query(next.clone()), "following Marathon redirect");
                url = next;
                continue;
            }
            return Ok(resp);
        }
    }

    fn is_configured_origin(&self, url: &Url) -> bool {
        self.inner.hosts.iter().any(|h| h.origin() == url.origin())
    }

    async fn authorize(&self, req: RequestBuilder) -> Result<RequestBuilder, MarathonError> {
        Ok(match &self.inner.auth {
            Auth::None => req,
            Auth::Basic { user, password } => req.basic_auth(user, Some(password.expose())),
            Auth::Dcos(d) => {
                let token = d.token(&self.inner.http).await?;
                let mut value = header::HeaderValue::try_from(format!("token={}", token.expose()))
                    .map_err(|_| {
                        MarathonError::Config("DC/OS token is not a valid header value".into())
                    })?;
                value.set_sensitive(true);
                req.header(header::AUTHORIZATION, value)
            }
        })
    }
}

fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut p) = url.path_segments_mut() {
        p.pop_if_empty().extend(segments);
    }
    url
}

fn without_query(mut url: Url) -> Url {
    url.set_query(None);
    url
}

/// Marathon app ids are `/`-separated names; `.` and `..` segments or an empty id would change
/// which resource is read, so they are refused.
fn app_id_segments(app_id: &str) -> Result<Vec<&str>, MarathonError> {
    let segments: Vec<&str> = app_id.split('/').filter(|s| !s.is_empty()).collect();
    if segments.is_empty() || segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(MarathonError::InvalidResponse {
            url: String::new(),
            reason: format!("invalid app id {app_id:?}"),
        });
    }
    Ok(segments)
}

async fn expect_success(resp: Response, url: &Url) -> Result<Response, MarathonError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    // Marathon's errors are `{"message": "..."}`; show it, shortened.
    let body = resp.bytes().await.unwrap_or_default();
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
        .map(|m| format!(": {}", m.chars().take(200).collect::<String>()))
        .unwrap_or_default();
    Err(MarathonError::Status {
        method: "GET",
        url: without_query(url.clone()).to_string(),
        status: status.as_u16(),
        message,
    })
}

/// The whole body in one buffer, read chunk by chunk, each chunk dropped once copied.
/// (`Response::bytes` gathers every chunk, then copies them into one more buffer: twice a 44 MB
/// `/v2/apps` at its peak.)
async fn read_body(mut resp: Response, url: &Url) -> Result<Vec<u8>, MarathonError> {
    let transport = |e: reqwest::Error| MarathonError::Transport {
        method: "GET",
        url: without_query(url.clone()).to_string(),
        source: e.without_url(),
    };
    // Content-Length only sizes the buffer, within reason (a server could announce anything).
    let hint = resp.content_length().unwrap_or(0).min(MAX_BODY_RESERVE);
    let mut body = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(MarathonError::InvalidResponse {
                url: without_query(url.clone()).to_string(),
                reason: format!("body larger than {MAX_BODY} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

async fn read_json(resp: Response, url: &Url) -> Result<Value, MarathonError> {
    let bytes = read_body(resp, url).await?;
    serde_json::from_slice(&bytes).map_err(|e| MarathonError::InvalidResponse {
        url: without_query(url.clone()).to_string(),
        reason: format!("body is not JSON: {e}"),
    })
}
