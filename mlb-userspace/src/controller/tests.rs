//! The controller hands each dataplane only what changed, keeps the last good state on failed
//! reads, isolates bad apps and applies L4 health-check verdicts.
use std::{
    sync::{Arc, Mutex},
    time::SystemTime,
};

use serde_json::{Value, json};

use super::*;
use crate::{
    dataplane::{Dataplane, DataplaneError, HttpChange, L4Change},
    marathon::types::AppList,
    model::{BackendId, BackendState},
};

/// An L4 dataplane that records what it was given; refuses one port if told to.
#[derive(Clone, Default)]
struct Recorder {
    changes: Arc<Mutex<Vec<L4Change>>>,
    refuse_port: Arc<Mutex<Option<u16>>>,
}

impl Dataplane for Recorder {
    type Change = L4Change;

    fn apply(&mut self, changes: &[L4Change]) -> Result<(), Vec<DataplaneError>> {
        let mut refused = Vec::new();
        for c in changes {
            if let L4Change::Upsert(s) = c
                && Some(s.key.port) == *self.refuse_port.lock().unwrap()
            {
                refused.push(DataplaneError::l4(s.key, "address in use"));
                continue;
            }
            self.changes.lock().unwrap().push(c.clone());
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(refused)
        }
    }
}

impl Recorder {
    fn take(&self) -> Vec<L4Change> {
        std::mem::take(&mut self.changes.lock().unwrap())
    }
}

#[derive(Clone, Default)]
struct HttpRecorder(Arc<Mutex<Vec<usize>>>);

impl Dataplane for HttpRecorder {
    type Change = HttpChange;

    fn apply(&mut self, changes: &[HttpChange]) -> Result<(), Vec<DataplaneError>> {
        assert!(!changes.is_empty(), "called without changes");
        self.0.lock().unwrap().push(changes.len());
        Ok(())
    }
}

fn tcp_app(id: &str, port: u16, tasks: &[(&str, u16)]) -> Value {
    json!({
        "id": id,
        "instances": tasks.len(),
        "portDefinitions": [{"port": port, "protocol": "tcp"}],
        "labels": {"HAPROXY_GROUP": "external"},
        "tasks": tasks.iter().map(|(tid, hp)| json!({
            "id": tid, "host": "198.18.2.10", "ports": [hp], "state": "TASK_RUNNING"
        })).collect::<Vec<_>>(),
    })
}

fn web_app(id: &str, port: u16, vhost: &str) -> Value {
    json!({
        "id": id,
        "instances": 1,
        "portDefinitions": [{"port": port}],
        "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_VHOST": vhost},
        "tasks": [{"id": format!("{}.t1", id.trim_start_matches('/')), "host": "198.18.2.11",
                   "ports": [31000], "state": "TASK_RUNNING"}],
    })
}

fn controller() -> (Controller, Recorder, HttpRecorder) {
    let l4 = Recorder::default();
    let http = HttpRecorder::default();
    let c = Controller::new(
        ModelOptions::new(vec!["external".into()]),
        Box::new(l4.clone()),
        Some(Box::new(http.clone())),
    );
    (c, l4, http)
}

fn feed(c: &mut Controller, update: MarathonUpdate) {
    if c.take_update(update) {
        c.recompute(SystemTime::now());
    }
}

#[test]
fn only_changed_services_reach_the_dataplanes() {
    let (mut c, l4, http) = controller();
    feed(
        &mut c,
        MarathonUpdate::snapshot_from_values(vec![
            tcp_app("/a", 10001, &[("a.1", 31001)]),
            tcp_app("/b", 10002, &[("b.1", 31002)]),
            web_app("/web", 10003, "web.example.test"),
        ]),
    );
    assert_eq!(l4.take().len(), 2);
    assert_eq!(*http.0.lock().unwrap(), [1]);
    let gen1 = c.status().load().generation;

    // One app scales: one upsert for its service, nothing for the other, no HTTP swap.
    feed(
        &mut c,
        MarathonUpdate::Apps {
            changed: AppList::from_rereads(vec![tcp_app(
                "/a",
                10001,
                &[("a.1", 31001), ("a.2", 31011)],
            )]),
            removed: vec![],
            since: None,
            marathon: Duration::ZERO,
        },
    );
    let changes = l4.take();
    assert_eq!(changes.len(), 1, "{changes:?}");
    let L4Change::Upsert(svc) = &changes[0] else {
        panic!("{changes:?}")
    };
    assert_eq!((svc.key.port, svc.backends.len()), (10001, 2));
    assert_eq!(http.0.lock().unwrap().len(), 1, "HTTP unchanged: no swap");
    assert_eq!(c.status().load().generation, gen1 + 1);

    // The same state again changes nothing.
    feed(
        &mut c,
        MarathonUpdate::Apps {
            changed: AppList::from_rereads(vec![tcp_app(
                "/a",
                10001,
                &[("a.1", 31001), ("a.2", 31011)],
            )]),
            removed: vec![],
            since: None,
            marathon: Duration::ZERO,
        },
    );
    assert!(l4.take().is_empty());
    assert_eq!(c.status().load().generation, gen1 + 1);

    // Removal of an app removes its service.
    feed(
        &mut c,
        MarathonUpdate::Apps {
            changed: AppList::from_rereads(vec![]),
            removed: vec!["/b".into()],
            since: None,
            marathon: Duration::ZERO,
        },
    );
    assert!(matches!(&l4.take()[..], [L4Change::Remove(k)] if k.port == 10002));
}

#[test]
fn failed_reads_keep_the_last_good_state() {
    let (mut c, l4, _) = controller();
    feed(
        &mut c,
        MarathonUpdate::snapshot_from_values(vec![tcp_app("/a", 10001, &[("a.1", 31001)])]),
    );
    l4.take();
    feed(
        &mut c,
        MarathonUpdate::SyncFailed {
            error: "GET /v2/apps: HTTP 503".into(),
        },
    );
    assert!(l4.take().is_empty());
    let status = c.status().load_full();
    assert_eq!(status.last_error.as_deref(), Some("GET /v2/apps: HTTP 503"));
    assert_eq!(status.l4_services, 1, "still served");
    assert_eq!(c.state().l4.len(), 1);
}

#[test]
fn a_bad_app_is_rejected_alone_with_its_field() {
    let (mut c, l4, _) = controller();
    feed(
        &mut c,
        MarathonUpdate::snapshot_from_values(vec![
            tcp_app("/a", 10001, &[("a.1", 31001)]),
            json!({"id": "/bad", "portDefinitions": [{"port": "eighty"}]}),
        ]),
    );
    assert_eq!(l4.take().len(), 1);
    let status = c.status().load_full();
    let bad = status.explanations.get("/bad").expect("explained");
    let problem = bad.problem.as_deref().unwrap_or_default();
    assert!(problem.contains("portDefinitions"), "{problem}");
    assert!(!bad.exposed);
}

#[test]
fn a_refused_service_is_retried_and_does_not_block_others() {
    let (mut c, l4, _) = controller();
    *l4.refuse_port.lock().unwrap() = Some(10001);
    feed(
        &mut c,
        MarathonUpdate::snapshot_from_values(vec![
            tcp_app("/a", 10001, &[("a.1", 31001)]),
            tcp_app("/b", 10002, &[("b.1", 31002)]),
        ]),
    );
    assert!(matches!(&l4.take()[..], [L4Change::Upsert(s)] if s.key.port == 10002));
    assert!(c.status().load().l4_errors.contains_key("10001/tcp"));
    // The port is free now: the next update retries it.
    *l4.refuse_port.lock().unwrap() = None;
    feed(
        &mut c,
        MarathonUpdate::Apps {
            changed: AppList::from_rereads(vec![tcp_app("/b", 10002, &[("b.1", 31002)])]),
            removed: vec![],
            since: None,
            marathon: Duration::ZERO,
        },
    );
    assert!(matches!(&l4.take()[..], [L4Change::Upsert(s)] if s.key.port == 10001));
    assert!(c.status().load().l4_errors.is_empty());
}

#[test]
fn failing_l4_health_checks_take_a_backend_out_of_rotation() {
    let (mut c, l4, _) = controller();
    feed(
        &mut c,
        MarathonUpdate::snapshot_from_values(vec![tcp_app(
            "/a",
            10001,
            &[("a.1", 31001), ("a.2", 31002)],
        )]),
    );
    l4.take();
    let sick = BackendId::from("a.2:0");
    c.set_l4_unhealthy(Arc::new([sick.clone()].into()));
    let changes = l4.take();
    let [L4Change::Upsert(svc)] = &changes[..] else {
        panic!("{changes:?}")
    };
    assert_eq!(svc.backends.len(), 1);
    assert_ne!(svc.backends[0].id, sick);
    // The model's view is unchanged: explain still lists the task, status says why it is out.
    assert_eq!(c.state().l4.values().next().unwrap().backends.len(), 2);
    assert_eq!(c.status().load().l4_unhealthy, [sick]);
    c.set_l4_unhealthy(Arc::default());
    assert!(matches!(&l4.take()[..], [L4Change::Upsert(s)] if s.backends.len() == 2));
}

#[test]
fn static_services_are_served_and_win_their_port() {
    let (mut c, l4, _) = controller();
    let static_svc = L4Service {
        key: L4ServiceKey {
            port: 10001,
            protocol: crate::model::Protocol::Tcp,
        },
        app_id: "static".into(),
        bind_addr: None,
        backends: vec![],
        health_check: None,
        tuning: Default::default(),
        balance: Default::default(),
        allowed_networks: Vec::new(),
    };
    c.set_static_l4([(static_svc.key, static_svc.clone())].into());
    feed(
        &mut c,
        MarathonUpdate::snapshot_from_values(vec![tcp_app("/a", 10001, &[("a.1", 31001)])]),
    );
    assert!(matches!(&l4.take()[..], [L4Change::Upsert(s)] if s.app_id == "static"));
    let status = c.status().load_full();
    let a = status.explanations.get("/a").unwrap();
    assert!(!a.exposed, "{a:?}");
}

/// The running controller probes L4 backends itself (the app's Marathon TCP health check): a
/// task whose port does not answer leaves the Maglev set, the answering one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_controller_drops_l4_backends_failing_their_tcp_check() {
    let alive = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let alive_port = alive.local_addr().unwrap().port();
    let accept = tokio::spawn(async move {
        loop {
            if alive.accept().await.is_err() {
                return;
            }
        }
    });
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let app = json!({
        "id": "/checked",
        "instances": 2,
        "portDefinitions": [{"port": 10001, "protocol": "tcp"}],
        "labels": {"HAPROXY_GROUP": "external"},
        "healthChecks": [{"protocol": "TCP", "portIndex": 0, "intervalSeconds": 1,
                          "timeoutSeconds": 1, "maxConsecutiveFailures": 1}],
        "tasks": [
            {"id": "checked.alive", "host": "127.0.0.1", "ports": [alive_port], "state": "TASK_RUNNING"},
            {"id": "checked.dead", "host": "127.0.0.1", "ports": [dead_port], "state": "TASK_RUNNING"},
        ],
    });
    let l4 = Recorder::default();
    let c = Controller::new(
        ModelOptions::new(vec!["external".into()]),
        Box::new(l4.clone()),
        None,
    )
    .with_l4_health_checks(tokio::runtime::Handle::current());
    let status = c.status();
    let (tx, rx) = mpsc::channel(4);
    let (_control_tx, control_rx) = mpsc::channel(1);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(c.run(Inputs {
        marathon: Some(rx),
        control: control_rx,
        shutdown: shutdown_rx,
    }));
    tx.send(MarathonUpdate::snapshot_from_values(vec![app]))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = None;
    while tokio::time::Instant::now() < deadline {
        for change in l4.take() {
            if let L4Change::Upsert(s) = change {
                last = Some(s);
            }
        }
        if last.as_ref().is_some_and(|s| s.backends.len() == 1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let svc = last.expect("the service was applied");
    let ids: Vec<&str> = svc.backends.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, ["checked.alive:0"], "the dead task left rotation");
    assert_eq!(
        status.load().l4_unhealthy,
        [BackendId::from("checked.dead:0")]
    );
    shutdown_tx.send(true).unwrap();
    task.await.unwrap();
    accept.abort();
}

/// A task being killed leaves the rotation on its status event alone, incrementally; a re-read
/// that began before the kill does not bring it back, and one without the task removes it.
#[test]
fn a_killed_task_leaves_on_its_event_before_any_reread() {
    use crate::marathon::task_status::TaskStatus;
    let (mut c, l4, _) = controller();
    let two = tcp_app("/a", 10001, &[("a.1", 31001), ("a.2", 31002)]);
    feed(
        &mut c,
        MarathonUpdate::snapshot_from_values(vec![two.clone()]),
    );
    l4.take();
    let passes = c.status().load().full_passes;
    let states = |l4: &Recorder| -> Vec<(String, BackendState)> {
        let changes = l4.take();
        let [L4Change::Upsert(svc)] = changes.as_slice() else {
            panic!("{changes:?}")
        };
        (svc.backends.iter())
            .map(|b| (b.id.to_string(), b.state))
            .collect()
    };
    let killing = TaskStatus {
        app_id: "/a".into(),
        task_id: "a.1".into(),
        state: "TASK_KILLING".into(),
    };
    feed(
        &mut c,
        MarathonUpdate::TaskStatuses {
            statuses: vec![killing],
            since: std::time::Instant::now(),
        },
    );
    let draining = vec![
        ("a.1:0".to_owned(), BackendState::Draining),
        ("a.2:0".to_owned(), BackendState::Active),
    ];
    assert_eq!(states(&l4), draining);
    assert_eq!(c.status().load().full_passes, passes, "incremental");

    // The re-read that was on its way: still both tasks running. The kill stands.
    let stale = MarathonUpdate::Apps {
        changed: AppList::from_rereads(vec![two]),
        removed: vec![],
        since: None,
        marathon: Duration::ZERO,
    };
    feed(&mut c, stale);
    assert!(l4.take().is_empty());
    let gone = MarathonUpdate::Apps {
        changed: AppList::from_rereads(vec![tcp_app("/a", 10001, &[("a.2", 31002)])]),
        removed: vec![],
        since: None,
        marathon: Duration::ZERO,
    };
    feed(&mut c, gone);
    assert_eq!(states(&l4), [("a.2:0".to_owned(), BackendState::Active)]);
}

/// An HTTP dataplane that keeps the services it was given.
#[derive(Clone, Default)]
struct HttpKeeper(Arc<Mutex<Vec<HttpChange>>>);

impl Dataplane for HttpKeeper {
    type Change = HttpChange;

    fn apply(&mut self, changes: &[HttpChange]) -> Result<(), Vec<DataplaneError>> {
        self.0.lock().unwrap().extend_from_slice(changes);
        Ok(())
    }
}

#[test]
fn the_proxy_is_given_the_models_services_not_copies() {
    let http = HttpKeeper::default();
    let mut c = Controller::new(
        ModelOptions::new(vec!["external".into()]),
        Box::new(Recorder::default()),
        Some(Box::new(http.clone())),
    );
    feed(
        &mut c,
        MarathonUpdate::snapshot_from_values(vec![web_app("/web", 10003, "web.example.test")]),
    );
    let given = http.0.lock().unwrap().clone();
    let [HttpChange::Upsert(svc)] = &given[..] else {
        panic!("one upsert expected: {given:?}");
    };
    // At 10,000 apps a copy per side would hold every HTTP service and backend twice.
    assert!(Arc::ptr_eq(svc, &c.state().http[&svc.key]));
}

fn killing(app: &str, task: &str) -> MarathonUpdate {
    use crate::marathon::task_status::TaskStatus;
    MarathonUpdate::TaskStatuses {
        statuses: vec![TaskStatus {
            app_id: app.into(),
            task_id: task.into(),
            state: "TASK_KILLING".into(),
        }],
        since: std::time::Instant::now(),
    }
}

fn reread(apps: Vec<Value>) -> MarathonUpdate {
    MarathonUpdate::Apps {
        changed: AppList::from_rereads(apps),
        removed: vec![],
        since: None,
        marathon: Duration::ZERO,
    }
}

/// Updates queued together: the task states go first, in a dataplane update of their own, so
/// a killed task leaves the rotation without waiting for the re-reads queued ahead of it (a
/// burst's parts of hundreds of apps).
#[test]
fn task_states_queued_behind_rereads_are_applied_first() {
    let (mut c, l4, _) = controller();
    let killed = tcp_app("/k", 10003, &[("k.1", 31003), ("k.2", 31013)]);
    feed(&mut c, MarathonUpdate::snapshot_from_values(vec![killed]));
    l4.take();
    let generation = c.status().load().generation;
    let (tx, mut rx) = mpsc::channel(16);
    tx.try_send(killing("/k", "k.1")).unwrap();
    tx.try_send(reread(vec![tcp_app("/b", 10002, &[("b.1", 31002)])]))
        .unwrap();
    let first = reread(vec![tcp_app("/a", 10001, &[("a.1", 31001)])]);
    c.on_marathon(first, &mut rx);
    let ports: Vec<u16> = l4.take().iter().map(|c| c.key().port).collect();
    assert_eq!(ports, [10003, 10001, 10002], "the kill first");
    assert_eq!(c.status().load().generation, generation + 2);
}

/// A task state queued behind the re-read that brings its task (a task launched) still
/// applies: the state is not lost for being taken first.
#[test]
fn a_task_state_applies_to_the_task_a_queued_reread_brings() {
    let (mut c, l4, _) = controller();
    let one = tcp_app("/a", 10001, &[("a.1", 31001)]);
    feed(&mut c, MarathonUpdate::snapshot_from_values(vec![one]));
    l4.take();
    let (tx, mut rx) = mpsc::channel(16);
    tx.try_send(killing("/a", "a.2")).unwrap();
    let two = tcp_app("/a", 10001, &[("a.1", 31001), ("a.2", 31002)]);
    c.on_marathon(reread(vec![two]), &mut rx);
    let changes = l4.take();
    let Some(L4Change::Upsert(svc)) = changes.last() else {
        panic!("{changes:?}")
    };
    let states: Vec<(String, BackendState)> = (svc.backends.iter())
        .map(|b| (b.id.to_string(), b.state))
        .collect();
    assert_eq!(
        states,
        [
            ("a.1:0".to_owned(), BackendState::Active),
            ("a.2:0".to_owned(), BackendState::Draining)
        ]
    );
}
