//! Active health checks (marathon-lb's `check inter <interval> fall <n>` from the app's Marathon
//! `healthChecks`): TCP connect or HTTP `GET path` answering 2xx/3xx.
//!
//! Not tied to the HTTP proxy: any dataplane hands [`HealthChecker::set_targets`] its backends
//! and reads the set of backends out of rotation from the `watch` channel. A backend leaves
//! rotation after `max_consecutive_failures` failed checks in a row and comes back at its first
//! passing check. Backends start healthy: an unknown state fails open.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::Empty;
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, runtime::Handle, sync::watch, task::JoinHandle};
use tracing::{info, warn};

use crate::model::{Backend, BackendId, HealthCheck, HealthCheckKind, HttpService, L4Service};

/// Backends currently out of rotation.
pub type UnhealthySet = HashSet<BackendId>;

/// One backend to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthTarget {
    /// The backend; its state is published under this id.
    pub id: BackendId,
    /// Address probed: the backend's own address (`HealthCheck::port_index` is resolved by
    /// whoever builds the target; [`targets_of_http`] and [`targets_of_l4`] use the backend's
    /// address as it is).
    pub addr: SocketAddr,
    /// What to check and how often.
    pub check: HealthCheck,
}

/// Targets for every backend of HTTP services that define a health check.
pub fn targets_of_http<'a>(
    services: impl IntoIterator<Item = &'a HttpService>,
) -> Vec<HealthTarget> {
    targets(
        services
            .into_iter()
            .map(|s| (s.health_check.as_ref(), s.backends.as_slice())),
    )
}

/// Targets for every backend of L4 services that define a health check.
pub fn targets_of_l4<'a>(services: impl IntoIterator<Item = &'a L4Service>) -> Vec<HealthTarget> {
    targets(
        services
            .into_iter()
            .map(|s| (s.health_check.as_ref(), s.backends.as_slice())),
    )
}

fn targets<'a>(
    services: impl Iterator<Item = (Option<&'a HealthCheck>, &'a [Backend])>,
) -> Vec<HealthTarget> {
    services
        .filter_map(|(hc, backends)| hc.map(|hc| (hc, backends)))
        .flat_map(|(hc, backends)| {
            backends.iter().map(|b| HealthTarget {
                id: b.id.clone(),
                addr: b.addr,
                check: hc.clone(),
            })
        })
        .collect()
}

/// Runs one check loop per target; publishes the unhealthy set on a `watch` channel.
pub struct HealthChecker {
    handle: Handle,
    running: HashMap<BackendId, (HealthTarget, JoinHandle<()>)>,
    state: Arc<Mutex<UnhealthySet>>,
    tx: Arc<watch::Sender<Arc<UnhealthySet>>>,
}

impl HealthChecker {
    /// A checker with no targets, spawning its checks on `handle`, and the receiver of the
    /// unhealthy set (empty at first).
    pub fn new(handle: Handle) -> (HealthChecker, watch::Receiver<Arc<UnhealthySet>>) {
        let (tx, rx) = watch::channel(Arc::new(UnhealthySet::new()));
        (
            HealthChecker {
                handle,
                running: HashMap::new(),
                state: Arc::default(),
                tx: Arc::new(tx),
            },
            rx,
        )
    }

    /// A new receiver of the unhealthy set.
    pub fn subscribe(&self) -> watch::Receiver<Arc<UnhealthySet>> {
        self.tx.subscribe()
    }

    /// Checks exactly `targets` from now on: new targets start (healthy), removed ones stop and
    /// leave the unhealthy set, changed ones (address or check) restart. Unchanged targets keep
    /// their state and schedule.
    pub fn set_targets(&mut self, targets: impl IntoIterator<Item = HealthTarget>) {
        let wanted = first_by_id(targets);
        let gone: Vec<BackendId> = self
            .running
            .keys()
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect();
        self.update(gone, wanted);
    }

    /// The targeted form of [`HealthChecker::set_targets`], for a dataplane that knows what
    /// changed: stops checking `removed` (unless `added` has them again) and checks `added` from
    /// now on (an `added` target already checked as it is keeps its state and schedule; one
    /// whose address or check changed restarts). Costs only what is named, whatever the number
    /// of targets checked.
    pub fn update_targets(
        &mut self,
        removed: impl IntoIterator<Item = BackendId>,
        added: impl IntoIterator<Item = HealthTarget>,
    ) {
        let added = first_by_id(added);
        let removed: Vec<BackendId> = removed
            .into_iter()
            .filter(|id| !added.contains_key(id))
            .collect();
        self.update(removed, added);
    }

    fn update(&mut self, removed: Vec<BackendId>, added: HashMap<BackendId, HealthTarget>) {
        let mut forget = Vec::new();
        for id in removed {
            if let Some((_, task)) = self.running.remove(&id) {
                task.abort();
                forget.push(id);
            }
        }
        let mut start = Vec::new();
        for (id, target) in added {
            match self.running.get(&id) {
                Some((running, _)) if *running == target => {}
                Some(_) => {
                    if let Some((_, task)) = self.running.remove(&id) {
                        task.abort();
                    }
                    forget.push(id);
                    start.push(target);
                }
                None => start.push(target),
            }
        }
        if !forget.is_empty() {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let before = state.len();
            for id in &forget {
                state.remove(id);
            }
            if state.len() != before {
                self.tx.send_replace(Arc::new(state.clone()));
            }
        }
        for target in start {
            let task = self.handle.spawn(check_loop(
                target.clone(),
                self.state.clone(),
                self.tx.clone(),
            ));
            self.running.insert(target.id.clone(), (target, task));
        }
    }
}

/// `targets` by id; the first of the same id wins.
fn first_by_id(
    targets: impl IntoIterator<Item = HealthTarget>,
) -> HashMap<BackendId, HealthTarget> {
    let mut by_id: HashMap<BackendId, HealthTarget> = HashMap::new();
    for t in targets {
        by_id.entry(t.id.clone()).or_insert(t);
    }
    by_id
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        for (_, task) in self.running.values() {
            task.abort();
        }
    }
}

async fn check_loop(
    target: HealthTarget,
    state: Arc<Mutex<UnhealthySet>>,
    tx: Arc<watch::Sender<Arc<UnhealthySet>>>,
) {
    let fall = target.check.max_consecutive_failures.max(1);
    let interval = target.check.interval.max(Duration::from_millis(50));
    let mut failures = 0u32;
    let mut down = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = probe(&target).await;
        let change = match result {
            Ok(()) => {
                failures = 0;
                down.then_some(false)
            }
            Err(why) => {
                failures = failures.saturating_add(1);
                (!down && failures >= fall).then(|| {
                    warn!(backend = %target.id, addr = %target.addr, %why, failures, "backend failed its health check; out of rotation");
                    true
                })
            }
        };
        if let Some(now_down) = change {
            down = now_down;
            if !now_down {
                info!(backend = %target.id, "backend passes its health check again; back in rotation");
            }
            let mut set = state.lock().unwrap_or_else(|e| e.into_inner());
            if now_down {
                set.insert(target.id.clone());
            } else {
                set.remove(&target.id);
            }
            tx.send_replace(Arc::new(set.clone()));
        }
    }
}

/// One check; `Err` says why it failed.
async fn probe(target: &HealthTarget) -> Result<(), String> {
    let check = async {
        let stream = TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let HealthCheckKind::Http { path } = &target.check.kind else {
            return Ok(());
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(conn);
        let req = Request::get(if path.is_empty() { "/" } else { path.as_str() })
            .header(hyper::header::HOST, target.addr.to_string())
            .header(hyper::header::USER_AGENT, "mlb-health-check")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad path {path:?}: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = resp.status();
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("GET {path} answered {status}"))
        }
    };
    tokio::time::timeout(target.check.timeout.max(Duration::from_millis(10)), check)
        .await
        .map_err(|_| format!("no answer within {:?}", target.check.timeout))?
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use hyper::{Response, server::conn::http1, service::service_fn};
    use tokio::net::TcpListener;

    use super::*;

    /// An HTTP backend whose `/health` answers 200 or 500 as `healthy` says.
    async fn backend(healthy: Arc<AtomicBool>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let healthy = healthy.clone();
                tokio::spawn(http1::Builder::new().serve_connection(
                    TokioIo::new(s),
                    service_fn(move |_req| {
                        let ok = healthy.load(Ordering::SeqCst);
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(if ok { 200 } else { 500 })
                                    .body(Empty::<Bytes>::new())
                                    .unwrap(),
                            )
                        }
                    }),
                ));
            }
        });
        addr
    }

    async fn wait_for(
        rx: &mut watch::Receiver<Arc<UnhealthySet>>,
        what: impl Fn(&UnhealthySet) -> bool,
    ) {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| what(s)))
            .await
            .expect("health state reached in time")
            .unwrap();
    }

    #[tokio::test]
    async fn http_check_takes_a_failing_backend_out_and_back() {
        let healthy = Arc::new(AtomicBool::new(true));
        let addr = backend(healthy.clone()).await;
        let (mut checker, mut rx) = HealthChecker::new(Handle::current());
        let id = BackendId("app.1:0".into());
        checker.set_targets([HealthTarget {
            id: id.clone(),
            addr,
            check: HealthCheck {
                kind: HealthCheckKind::Http {
                    path: "/health".into(),
                },
                port_index: 0,
                interval: Duration::from_millis(100),
                timeout: Duration::from_millis(500),
                max_consecutive_failures: 2,
            },
        }]);
        healthy.store(false, Ordering::SeqCst);
        wait_for(&mut rx, |s| s.contains(&id)).await;
        healthy.store(true, Ordering::SeqCst);
        wait_for(&mut rx, |s| !s.contains(&id)).await;
    }

    #[tokio::test]
    async fn tcp_check_fails_on_a_closed_port_and_removal_clears_it() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let (mut checker, mut rx) = HealthChecker::new(Handle::current());
        let id = BackendId("gone.1:0".into());
        checker.set_targets([HealthTarget {
            id: id.clone(),
            addr: closed,
            check: HealthCheck {
                kind: HealthCheckKind::Tcp,
                port_index: 0,
                interval: Duration::from_millis(100),
                timeout: Duration::from_millis(500),
                max_consecutive_failures: 1,
            },
        }]);
        wait_for(&mut rx, |s| s.contains(&id)).await;
        checker.set_targets([]);
        wait_for(&mut rx, |s| s.is_empty()).await;
    }
}
