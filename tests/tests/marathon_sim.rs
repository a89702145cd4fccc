//! The Marathon simulator seen from a real HTTP client: Marathon's JSON shapes, the SSE event
//! bus, real task backends, faults, and the Rust API. Everything runs on 127.0.0.0/8 (each test
//! places its tasks on its own loopback address so that port checks cannot see another test's
//! tasks); one test binds inside a network namespace it creates on 198.18.0.0/15.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::Pin,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use mlb_tests::marathon_sim::{Agent, Fault, MarathonSim, SAMPLE_APPS_JSON, SimConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    time::timeout,
};

/// Bound on every single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

fn agent_addr(test: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 31, test))
}

fn config(test: u8) -> SimConfig {
    SimConfig {
        agents: vec![Agent::local(agent_addr(test))],
        ..SimConfig::default()
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("reqwest client")
}

async fn get_json(url: &str) -> Value {
    let resp = client().get(url).send().await.expect("GET");
    assert_eq!(resp.status(), StatusCode::OK, "GET {url}");
    resp.json().await.expect("JSON body")
}

/// Polls `/v2/apps/{id}` until no deployment is running and `tasksRunning == instances`.
async fn wait_deployed(base: &str, id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let resp = client()
            .get(format!("{base}/v2/apps{id}"))
            .send()
            .await
            .expect("GET app");
        if resp.status() == StatusCode::OK {
            let app: Value = resp.json().await.expect("JSON");
            let app = app["app"].clone();
            if app["deployments"]
                .as_array()
                .is_some_and(std::vec::Vec::is_empty)
                && app["tasksRunning"] == app["instances"]
                && app["tasksStaged"] == 0
                && app["tasks"].as_array().map(Vec::len)
                    == app["instances"].as_u64().map(|n| n as usize)
            {
                return app;
            }
        }
        assert!(
            Instant::now() < deadline,
            "app {id} never finished deploying"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads `/v2/events` frames from a real streaming HTTP response.
struct EventReader {
    stream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buf: String,
    keep_alives: usize,
}

impl EventReader {
    async fn open(base: &str, query: &str) -> EventReader {
        let resp = reqwest::Client::new()
            .get(format!("{base}/v2/events{query}"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("GET /v2/events");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        EventReader {
            stream: Box::pin(resp.bytes_stream()),
            buf: String::new(),
            keep_alives: 0,
        }
    }

    /// Takes one complete frame from the buffer, counting keep-alive lines on the way.
    fn take_frame(&mut self) -> Option<(String, Value)> {
        loop {
            if self.buf.starts_with('\n') {
                self.buf.remove(0);
                self.keep_alives += 1;
                continue;
            }
            let end = self.buf.find("\n\n")?;
            let frame: String = self.buf.drain(..end + 2).collect();
            let mut event_type = String::new();
            let mut data = Value::Null;
            for line in frame.lines() {
                if let Some(t) = line.strip_prefix("event: ") {
                    event_type = t.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).expect("event data is JSON");
                }
            }
            assert_eq!(
                data["eventType"],
                event_type.as_str(),
                "event: line matches eventType"
            );
            assert!(data["timestamp"].is_string(), "every event has a timestamp");
            return Some((event_type, data));
        }
    }

    /// Reads more bytes: `Ok(false)` at the end of the stream, `Err` when nothing arrives in
    /// `within`.
    async fn fill(&mut self, within: Duration) -> Result<bool, ()> {
        match timeout(within, self.stream.next()).await {
            Err(_) => Err(()),
            Ok(None | Some(Err(_))) => Ok(false),
            Ok(Some(Ok(bytes))) => {
                self.buf
                    .push_str(std::str::from_utf8(&bytes).expect("UTF-8 stream"));
                Ok(true)
            }
        }
    }

    /// The next event; panics if none arrives within [`WAIT`] or the stream ends.
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(ev) = self.take_frame() {
                return ev;
            }
            match self.fill(WAIT).await {
                Ok(true) => {}
                Ok(false) => panic!("event stream ended"),
                Err(()) => panic!("no event within {WAIT:?}"),
            }
        }
    }

    /// Every event up to and including the first one matching `done`.
    async fn until(&mut self, done: impl Fn(&str, &Value) -> bool) -> Vec<(String, Value)> {
        let mut seen = Vec::new();
        loop {
            let (t, d) = self.next().await;
            let stop = done(&t, &d);
            seen.push((t, d));
            if stop {
                return seen;
            }
        }
    }

    /// Whether the stream ends (rather than staying open) within [`WAIT`].
    async fn ends(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.fill(deadline - Instant::now()).await {
                Ok(true) => self.buf.clear(),
                Ok(false) => return true,
                Err(()) => return false,
            }
        }
        false
    }
}

fn position(events: &[(String, Value)], pred: impl Fn(&str, &Value) -> bool) -> usize {
    events
        .iter()
        .position(|(t, d)| pred(t, d))
        .unwrap_or_else(|| {
            panic!(
                "event not found in {:#?}",
                events.iter().map(|e| &e.0).collect::<Vec<_>>()
            )
        })
}

fn status(events: &[(String, Value)], task: &str, state: &str) -> usize {
    position(events, |t, d| {
        t == "status_update_event" && d["taskId"] == task && d["taskStatus"] == state
    })
}

async fn http_get_task(host: &str, port: u64) -> (StatusCode, String, String) {
    let resp = client()
        .get(format!("http://{host}:{port}/some/path?q=1"))
        .header("x-forwarded-for", "198.18.9.9")
        .send()
        .await
        .expect("backend answers HTTP");
    let status = resp.status();
    let header = resp.headers()["x-task-id"].to_str().unwrap().to_string();
    assert_eq!(resp.headers()["x-seen-path"], "/some/path?q=1");
    assert_eq!(resp.headers()["x-seen-forwarded-for"], "198.18.9.9");
    (status, header, resp.text().await.unwrap())
}

async fn tcp_refused(host: IpAddr, port: u16) -> bool {
    matches!(
        timeout(WAIT, TcpStream::connect(SocketAddr::new(host, port))).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[tokio::test]
async fn apps_have_marathon_shape_and_real_reachable_tasks() {
    let sim = MarathonSim::start(config(1)).await.unwrap();
    let base = sim.url();
    let resp = client()
        .post(format!("{base}/v2/apps"))
        .json(&json!({
            "id": "group/web", "instances": 2,
            "portDefinitions": [{"port": 0, "name": "http"}, {"port": 12001}],
            "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_VHOST": "web.example.test"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(resp.headers()["location"], "/v2/apps/group/web");
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["id"], "/group/web");
    assert_eq!(
        created["deployments"].as_array().unwrap().len(),
        1,
        "a deployment is running"
    );

    let app = wait_deployed(&base, "/group/web").await;
    assert_eq!(app["labels"]["HAPROXY_0_VHOST"], "web.example.test");
    let service_port = app["portDefinitions"][0]["port"].as_u64().unwrap();
    assert!(
        (10_000..=20_000).contains(&service_port),
        "service port 0 gets assigned"
    );
    assert_eq!(app["portDefinitions"][1]["port"], 12001);
    assert_eq!(app["portDefinitions"][0]["protocol"], "tcp");
    assert_eq!(app["networks"], json!([{"mode": "host"}]));
    assert!(app["versionInfo"]["lastConfigChangeAt"].is_string());

    // Without embed: counts and deployments, no tasks.
    let listed = get_json(&format!("{base}/v2/apps")).await;
    let plain = &listed["apps"][0];
    assert!(plain.get("tasks").is_none());
    assert_eq!(plain["tasksRunning"], 2);
    // With embed=apps.tasks: real tasks.
    let listed = get_json(&format!(
        "{base}/v2/apps?embed=apps.tasks&embed=apps.counts"
    ))
    .await;
    let tasks = listed["apps"][0]["tasks"].as_array().unwrap().clone();
    assert_eq!(tasks.len(), 2);
    let host = agent_addr(1).to_string();
    for task in &tasks {
        let id = task["id"].as_str().unwrap();
        assert!(id.starts_with("group_web."), "{id}");
        assert_eq!(task["appId"], "/group/web");
        assert_eq!(task["state"], "TASK_RUNNING");
        assert_eq!(task["host"], host.as_str());
        assert_eq!(task["ipAddresses"][0]["ipAddress"], host.as_str());
        assert!(task["startedAt"].is_string() && task["stagedAt"].is_string());
        assert!(
            task.get("healthCheckResults").is_none(),
            "no health checks, no results"
        );
        let ports = task["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 2);
        for port in ports {
            let (status, header, body) = http_get_task(&host, port.as_u64().unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(header, id);
            assert_eq!(body, format!("{id}\n"));
        }
        // Not HTTP: the same port echoes.
        let port = ports[0].as_u64().unwrap() as u16;
        let mut conn = TcpStream::connect((agent_addr(1), port)).await.unwrap();
        conn.write_all(b"\x00\x01hello").await.unwrap();
        let mut echo = [0u8; 7];
        timeout(WAIT, conn.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&echo, b"\x00\x01hello");
    }

    // Ids with slashes on the single-app endpoint; tasks embedded by default there.
    let one = get_json(&format!("{base}/v2/apps/group/web")).await;
    assert_eq!(one["app"]["id"], "/group/web");
    assert_eq!(one["app"]["tasks"].as_array().unwrap().len(), 2);
    let no_tasks = get_json(&format!("{base}/v2/apps/group/web?embed=app.counts")).await;
    assert!(no_tasks["app"].get("tasks").is_none());

    // /v2/tasks carries servicePorts.
    let all = get_json(&format!("{base}/v2/tasks")).await;
    assert_eq!(all["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(
        all["tasks"][0]["servicePorts"],
        json!([service_port, 12001])
    );
    let missing = client()
        .get(format!("{base}/v2/apps/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(missing.text().await.unwrap().contains("/nope"));
    // Marathon's misc endpoints.
    let ping = client().get(format!("{base}/ping")).send().await.unwrap();
    assert_eq!(ping.text().await.unwrap(), "pong");
    assert_eq!(
        get_json(&format!("{base}/v2/leader")).await["leader"],
        sim.addr().to_string()
    );
    assert_eq!(get_json(&format!("{base}/v2/info")).await["elected"], true);
}

#[tokio::test]
async fn bridge_and_udp_tasks_answer_on_their_reported_ports() {
    let sim = MarathonSim::start(config(2)).await.unwrap();
    sim.create_app(json!({
        "id": "/dns", "instances": 2,
        "portDefinitions": [{"port": 10053, "protocol": "udp"}, {"port": 10054, "protocol": "udp,tcp"}]
    }))
    .await
    .unwrap();
    sim.create_app(json!({
        "id": "/bridged",
        "container": {"type": "DOCKER", "docker": {"image": "x"},
                      "portMappings": [{"containerPort": 80, "hostPort": 0, "servicePort": 10080}]},
        "networks": [{"mode": "container/bridge"}]
    }))
    .await
    .unwrap();
    let udp = UdpSocket::bind((agent_addr(2), 0)).await.unwrap();
    for task in sim.tasks("/dns") {
        assert_eq!(task.service_ports, vec![10053, 10054]);
        for port in &task.ports {
            udp.send_to(b"query", (task.address, *port)).await.unwrap();
            let mut buf = [0u8; 512];
            let (n, from) = timeout(WAIT, udp.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(from, SocketAddr::new(task.address, *port));
            assert_eq!(&buf[..n], task.id.as_bytes());
        }
        // "udp,tcp" binds both.
        let (status, id, _) = http_get_task(&task.host, u64::from(task.ports[1])).await;
        assert_eq!((status, id), (StatusCode::OK, task.id.clone()));
        assert!(
            tcp_refused(task.address, task.ports[0]).await,
            "a udp-only port has no TCP listener"
        );
    }
    let app = get_json(&format!("{}/v2/apps/bridged", sim.url())).await["app"].clone();
    assert_eq!(app["container"]["portMappings"][0]["servicePort"], 10080);
    assert!(app.get("portDefinitions").is_none());
    let task = &app["tasks"][0];
    let (status, id, _) = http_get_task(
        task["host"].as_str().unwrap(),
        task["ports"][0].as_u64().unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(id, task["id"].as_str().unwrap());
}

#[tokio::test]
async fn scaling_emits_marathons_event_sequence_and_stops_listeners() {
    let sim = MarathonSim::start(config(3)).await.unwrap();
    let base = sim.url();
    sim.create_app(json!({"id": "/app", "instances": 1}))
        .await
        .unwrap();
    let mut events = EventReader::open(&base, "").await;
    let (t, d) = events.next().await;
    assert_eq!(t, "event_stream_attached");
    assert_eq!(d["remoteAddress"], "127.0.0.1");

    let resp = client()
        .put(format!("{base}/v2/apps/app"))
        .json(&json!({"instances": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let deployment = body["deploymentId"].as_str().unwrap().to_string();
    assert!(body["version"].is_string());
    let seen = events
        .until(|t, d| t == "deployment_success" && d["id"] == deployment.as_str())
        .await;
    let api = position(&seen, |t, d| {
        t == "api_post_event" && d["appDefinition"]["instances"] == 3
    });
    assert_eq!(seen[api].1["uri"], "/v2/apps/app");
    let info = position(&seen, |t, d| {
        t == "deployment_info" && d["plan"]["id"] == deployment.as_str()
    });
    assert_eq!(
        seen[info].1["currentStep"]["actions"][0],
        json!({"action": "ScaleApplication", "app": "/app"})
    );
    let new_tasks: Vec<String> = sim.tasks("/app")[1..]
        .iter()
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(new_tasks.len(), 2);
    for task in &new_tasks {
        let staging = status(&seen, task, "TASK_STAGING");
        let running = status(&seen, task, "TASK_RUNNING");
        assert!(
            api < info && info < staging && staging < running,
            "order: api, info, staging, running"
        );
        let ev = &seen[running].1;
        assert_eq!(ev["appId"], "/app");
        assert_eq!(ev["host"], agent_addr(3).to_string().as_str());
        assert_eq!(ev["ports"].as_array().unwrap().len(), 1);
        position(&seen, |t, d| {
            t == "instance_changed_event" && d["condition"] == "Running" && d["runSpecId"] == "/app"
        });
    }
    let step = position(&seen, |t, _| t == "deployment_step_success");
    assert!(step < seen.len() - 1);

    // Scale down: the youngest tasks die and their listeners close.
    let doomed = sim.tasks("/app")[1..].to_vec();
    client()
        .put(format!("{base}/v2/apps/app"))
        .json(&json!({"instances": 1}))
        .send()
        .await
        .unwrap();
    let seen = events.until(|t, _| t == "deployment_success").await;
    for task in &doomed {
        assert!(status(&seen, &task.id, "TASK_KILLING") < status(&seen, &task.id, "TASK_KILLED"));
        assert!(
            tcp_refused(task.address, task.ports[0]).await,
            "killed task {} still listens",
            task.id
        );
    }
    assert_eq!(sim.running_tasks("/app").len(), 1);
}

#[tokio::test]
async fn label_change_restarts_tasks_new_before_old() {
    let sim = MarathonSim::start(config(4)).await.unwrap();
    sim.create_app(json!({"id": "/web", "instances": 2, "labels": {"A": "1"}}))
        .await
        .unwrap();
    let old: Vec<String> = sim.tasks("/web").into_iter().map(|t| t.id).collect();
    let mut events = EventReader::open(&sim.url(), "?plan-format=light").await;
    let resp = client()
        .put(format!("{}/v2/apps/web", sim.url()))
        .json(&json!({"labels": {"A": "2"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let seen = events.until(|t, _| t == "deployment_success").await;
    let info = position(&seen, |t, _| t == "deployment_info");
    assert_eq!(
        seen[info].1["currentStep"]["actions"][0]["action"],
        "RestartApplication"
    );
    assert!(seen[info].1["plan"].get("original").is_none(), "light plan");
    let new: Vec<String> = sim.tasks("/web").into_iter().map(|t| t.id).collect();
    assert_eq!(new.len(), 2);
    for (o, n) in old.iter().zip(&new) {
        assert!(!new.contains(o));
        assert!(
            status(&seen, n, "TASK_RUNNING") < status(&seen, o, "TASK_KILLING"),
            "new runs before old dies"
        );
    }
    let app = get_json(&format!("{}/v2/apps/web", sim.url())).await["app"].clone();
    assert_eq!(app["labels"]["A"], "2");
    assert_eq!(app["instances"], 2, "a partial PUT keeps the other fields");
}

#[tokio::test]
async fn health_flip_changes_backend_answer_and_emits_health_events() {
    let sim = MarathonSim::start(config(5)).await.unwrap();
    let base = sim.url();
    let mut events = EventReader::open(&base, "").await;
    sim.create_app(json!({
        "id": "/checked", "instances": 2,
        "healthChecks": [{"protocol": "HTTP", "path": "/health", "portIndex": 0}]
    }))
    .await
    .unwrap();
    let tasks = sim.tasks("/checked");
    let seen = events.until(|t, _| t == "deployment_success").await;
    for task in &tasks {
        position(&seen, |t, d| {
            t == "health_status_changed_event"
                && d["alive"] == true
                && d["instanceId"].as_str().unwrap().contains(".marathon-")
        });
        assert!(
            status(&seen, &task.id, "TASK_RUNNING")
                < position(&seen, |t, d| t == "instance_health_changed_event"
                    && d["healthy"] == true)
        );
        assert_eq!(task.healthy, Some(true));
    }
    let app = wait_deployed(&base, "/checked").await;
    assert_eq!(app["tasksHealthy"], 2);
    assert_eq!(
        app["healthChecks"][0]["intervalSeconds"], 60,
        "Marathon defaults filled in"
    );
    assert_eq!(app["tasks"][0]["healthCheckResults"][0]["alive"], true);

    let victim = &tasks[0];
    let resp = client()
        .post(format!(
            "{base}/_sim/tasks/{}/health?healthy=false",
            victim.id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (t, d) = events.next().await;
    assert_eq!(t, "failed_health_check_event");
    assert_eq!(d["taskId"], victim.id.as_str());
    let (t, d) = events.next().await;
    assert_eq!(
        (t.as_str(), &d["alive"]),
        ("health_status_changed_event", &json!(false))
    );
    let (t, d) = events.next().await;
    assert_eq!(
        (t.as_str(), &d["healthy"]),
        ("instance_health_changed_event", &json!(false))
    );
    assert_eq!(d["runSpecId"], "/checked");
    let (status, _, _) = http_get_task(&victim.host, u64::from(victim.ports[0])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let app = get_json(&format!("{base}/v2/apps/checked")).await["app"].clone();
    assert_eq!(app["tasksUnhealthy"], 1);
    let result = app["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == victim.id.as_str())
        .unwrap()["healthCheckResults"][0]
        .clone();
    assert_eq!(result["alive"], false);
    assert!(result["lastFailure"].is_string());

    sim.set_task_health(&victim.id, true).unwrap();
    let (t, d) = events.next().await;
    assert_eq!(
        (t.as_str(), &d["alive"]),
        ("health_status_changed_event", &json!(true))
    );
    let (status, _, _) = http_get_task(&victim.host, u64::from(victim.ports[0])).await;
    assert_eq!(status, StatusCode::OK);
    let unknown = client()
        .post(format!("{base}/_sim/tasks/nope/health?healthy=false"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn killed_tasks_are_replaced_or_scaled_away() {
    let sim = MarathonSim::start(config(6)).await.unwrap();
    let base = sim.url();
    // A task id starts with its app's id, groups joined by `_` (`shop_svc.…`); an app
    // beside it is left alone.
    sim.create_app(json!({"id": "/shop/svc", "instances": 2}))
        .await
        .unwrap();
    sim.create_app(json!({"id": "/shop", "instances": 1}))
        .await
        .unwrap();
    let bystander = sim.tasks("/shop")[0].id.clone();
    let mut events = EventReader::open(&base, "?event_type=status_update_event").await;
    let victim = sim.tasks("/shop/svc")[0].clone();
    let resp = client()
        .post(format!("{base}/v2/tasks/delete"))
        .json(&json!({"ids": [victim.id]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["tasks"][0]["id"], victim.id.as_str());
    // Killed, then a replacement runs; every event passes the filter.
    let seen = events.until(|_, d| d["taskStatus"] == "TASK_RUNNING").await;
    assert!(seen.iter().all(|(t, _)| t == "status_update_event"));
    status(&seen, &victim.id, "TASK_KILLED");
    assert!(tcp_refused(victim.address, victim.ports[0]).await);
    let app = wait_deployed(&base, "/shop/svc").await;
    assert_eq!(app["instances"], 2);

    let victim = sim.tasks("/shop/svc")[0].clone();
    let resp = client()
        .post(format!("{base}/v2/tasks/delete?scale=true"))
        .json(&json!({"ids": [victim.id]}))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert!(body["deploymentId"].is_string());
    let app = wait_deployed(&base, "/shop/svc").await;
    assert_eq!(app["instances"], 1);
    assert!(sim.tasks("/shop/svc").iter().all(|t| t.id != victim.id));

    // The Rust API: kill with replacement.
    let before = sim.tasks("/shop/svc")[0].clone();
    sim.kill_task(&before.id).await.unwrap();
    let after = sim.running_tasks("/shop/svc");
    assert_eq!(after.len(), 1);
    assert_ne!(after[0].id, before.id);
    assert_eq!(sim.running_tasks("/shop")[0].id, bystander);
}

#[tokio::test]
async fn event_type_filter_and_plan_formats() {
    let sim = MarathonSim::start(config(7)).await.unwrap();
    let base = sim.url();
    let mut filtered = EventReader::open(
        &base,
        "?plan-format=light&event_type=deployment_success&event_type=api_post_event",
    )
    .await;
    let mut heavy = EventReader::open(&base, "").await;
    sim.create_app(json!({"id": "/f", "instances": 1}))
        .await
        .unwrap();
    let (t, _) = filtered.next().await;
    assert_eq!(t, "api_post_event");
    let (t, d) = filtered.next().await;
    assert_eq!(t, "deployment_success");
    assert!(d["plan"].get("original").is_none() && d["plan"].get("target").is_none());
    assert_eq!(
        d["plan"]["steps"][0]["actions"][0]["action"],
        "StartApplication"
    );
    let seen = heavy.until(|t, _| t == "deployment_success").await;
    let success = &seen.last().unwrap().1;
    assert_eq!(success["plan"]["original"]["apps"], json!([]));
    assert_eq!(success["plan"]["target"]["apps"][0]["id"], "/f");
    // Nothing else was delivered to the filtered stream.
    assert!(filtered.take_frame().is_none());
}

#[tokio::test]
async fn keep_alives_arrive_on_an_idle_stream() {
    let sim = MarathonSim::start(SimConfig {
        keep_alive: Duration::from_millis(50),
        ..config(8)
    })
    .await
    .unwrap();
    let mut events = EventReader::open(&sim.url(), "?event_type=status_update_event").await;
    while events.keep_alives < 3 {
        assert_eq!(events.fill(WAIT).await, Ok(true), "keep-alives keep coming");
        assert!(
            events.take_frame().is_none(),
            "no event on an idle, filtered stream"
        );
    }
}

#[tokio::test]
async fn events_need_the_sse_accept_header() {
    let sim = MarathonSim::start(config(9)).await.unwrap();
    let resp = client()
        .get(format!("{}/v2/events", sim.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn faults_5xx_garbage_and_delay() {
    let sim = MarathonSim::start(config(10)).await.unwrap();
    let base = sim.url();
    sim.create_app(json!({"id": "/a"})).await.unwrap();
    let set = client()
        .post(format!("{base}/_sim/faults"))
        .json(&json!({"kind": "apps_status", "status": 503}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    let resp = client()
        .get(format!("{base}/v2/apps?embed=apps.tasks"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let resp = client()
        .get(format!("{base}/v2/apps/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Other endpoints still work.
    assert_eq!(
        get_json(&format!("{base}/v2/tasks")).await["tasks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    sim.inject(Fault::AppsStatus { status: None });
    sim.inject(Fault::AppsGarbage { enabled: true });
    let resp = client()
        .get(format!("{base}/v2/apps"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    assert!(
        serde_json::from_str::<Value>(&text).is_err(),
        "garbage is not JSON: {text}"
    );

    sim.inject(Fault::Clear);
    sim.inject(Fault::Delay { millis: 300 });
    let started = Instant::now();
    let listed = get_json(&format!("{base}/v2/apps")).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(listed["apps"][0]["id"], "/a");
    sim.inject(Fault::Clear);
    assert_eq!(sim.faults(), Default::default());
    let bad = client()
        .post(format!("{base}/_sim/faults"))
        .json(&json!({"kind": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn stalled_stream_stays_open_and_silent() {
    let sim = MarathonSim::start(SimConfig {
        keep_alive: Duration::from_millis(30),
        ..config(11)
    })
    .await
    .unwrap();
    let mut events = EventReader::open(&sim.url(), "").await;
    assert_eq!(events.next().await.0, "event_stream_attached");
    sim.inject(Fault::StallEventStreams { stalled: true });
    sim.create_app(json!({"id": "/during-stall"}))
        .await
        .unwrap();
    // Ten keep-alive periods without a single byte, and the connection is still open.
    assert_eq!(
        events.fill(Duration::from_millis(300)).await,
        Err(()),
        "a stalled stream sends nothing"
    );
    sim.inject(Fault::StallEventStreams { stalled: false });
    sim.scale("/during-stall", 2).await.unwrap();
    let seen = events.until(|t, _| t == "deployment_success").await;
    let stalled_task = &sim.tasks("/during-stall")[0].id;
    assert!(
        seen.iter()
            .all(|(_, d)| d["taskId"] != stalled_task.as_str()),
        "events of the stalled period were not delivered late"
    );
    assert!(
        seen.iter().any(|(_, d)| d["taskStatus"] == "TASK_RUNNING"),
        "events flow again"
    );
}

#[tokio::test]
async fn drop_fault_closes_every_stream_and_new_ones_work() {
    let sim = MarathonSim::start(config(12)).await.unwrap();
    let mut a = EventReader::open(&sim.url(), "").await;
    let mut b = EventReader::open(&sim.url(), "?event_type=status_update_event").await;
    assert_eq!(a.next().await.0, "event_stream_attached");
    sim.inject(Fault::DropEventStreams);
    assert!(a.ends().await, "stream a closed");
    assert!(b.ends().await, "stream b closed");
    let mut c = EventReader::open(&sim.url(), "").await;
    assert_eq!(c.next().await.0, "event_stream_attached");
    sim.create_app(json!({"id": "/after-drop"})).await.unwrap();
    c.until(|t, _| t == "deployment_success").await;
}

#[tokio::test]
async fn non_leader_redirects_apps_and_events_to_the_leader() {
    let leader = MarathonSim::start(config(13)).await.unwrap();
    let follower = MarathonSim::start(config(13)).await.unwrap();
    leader
        .create_app(json!({"id": "/on-leader"}))
        .await
        .unwrap();
    follower.inject(Fault::NotLeader {
        leader_url: Some(leader.url()),
    });

    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT)
        .build()
        .unwrap();
    let resp = no_follow
        .get(format!("{}/v2/apps?embed=apps.tasks", follower.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        resp.headers()["location"],
        format!("{}/v2/apps?embed=apps.tasks", leader.url()).as_str()
    );
    // A client that follows redirects sees the leader's apps and the leader's event stream.
    let apps = get_json(&format!("{}/v2/apps", follower.url())).await;
    assert_eq!(apps["apps"][0]["id"], "/on-leader");
    let mut events = EventReader::open(&follower.url(), "?event_type=api_post_event").await;
    leader.scale("/on-leader", 2).await.unwrap();
    let (_, d) = events.next().await;
    assert_eq!(d["appDefinition"]["id"], "/on-leader");
    let l = get_json(&format!("{}/v2/leader", follower.url())).await;
    assert_eq!(l["leader"], leader.addr().to_string());
    assert_eq!(
        get_json(&format!("{}/v2/info", follower.url())).await["elected"],
        false
    );
}

#[tokio::test]
async fn deleting_an_app_closes_its_listeners() {
    let sim = MarathonSim::start(config(14)).await.unwrap();
    let base = sim.url();
    sim.create_app(json!({"id": "/gone", "instances": 2, "portDefinitions": [{"port": 0}, {"port": 0, "protocol": "udp"}]}))
        .await
        .unwrap();
    let tasks = sim.tasks("/gone");
    let mut open = TcpStream::connect((tasks[0].address, tasks[0].ports[0]))
        .await
        .unwrap();
    let mut events = EventReader::open(&base, "?event_type=app_terminated_event").await;
    let resp = client()
        .delete(format!("{base}/v2/apps/gone"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.json::<Value>().await.unwrap()["deploymentId"].is_string());
    let missing = client()
        .get(format!("{base}/v2/apps/gone"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        missing.status(),
        StatusCode::NOT_FOUND,
        "deleted apps disappear at once"
    );
    let (_, d) = events.next().await;
    assert_eq!(d["appId"], "/gone");
    for task in &tasks {
        assert!(
            tcp_refused(task.address, task.ports[0]).await,
            "task {} still listens",
            task.id
        );
    }
    // The established connection was closed too.
    let mut buf = [0u8; 1];
    let read = timeout(WAIT, open.read(&mut buf))
        .await
        .expect("closed, not hanging");
    assert!(matches!(read, Ok(0) | Err(_)));
    // UDP: nobody answers any more.
    let udp = UdpSocket::bind((agent_addr(14), 0)).await.unwrap();
    udp.send_to(b"x", (tasks[0].address, tasks[0].ports[1]))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        timeout(Duration::from_millis(300), udp.recv_from(&mut buf))
            .await
            .map_or(true, |r| r.is_err())
    );
    assert!(
        get_json(&format!("{base}/v2/apps")).await["apps"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn write_api_errors_are_marathons() {
    let sim = MarathonSim::start(config(15)).await.unwrap();
    let base = sim.url();
    let post = |body: &'static str| {
        client()
            .post(format!("{base}/v2/apps"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    assert_eq!(
        post(r#"{"id": "/dup", "instances": 0}"#)
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    let dup = post(r#"{"id": "/dup"}"#).await.unwrap();
    assert_eq!(dup.status(), StatusCode::CONFLICT);
    assert!(dup.text().await.unwrap().contains("/dup"));
    let invalid = post(r#"{"id": "/x", "labels": {"HAPROXY_0_PORT": 80}}"#)
        .await
        .unwrap();
    assert_eq!(invalid.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        invalid
            .text()
            .await
            .unwrap()
            .contains("labels.HAPROXY_0_PORT")
    );
    assert_eq!(
        post("{not json").await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    let deployments = get_json(&format!("{base}/v2/deployments")).await;
    assert!(deployments.is_array());
    // PUT on a missing app creates it.
    let put = client()
        .put(format!("{base}/v2/apps/made/by/put"))
        .json(&json!({"instances": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    wait_deployed(&base, "/made/by/put").await;
    let del = client()
        .delete(format!("{base}/v2/apps/never"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rust_api_round_trip_and_drop_closes_everything() {
    let sim = MarathonSim::start(SimConfig {
        agents: vec![Agent::local(agent_addr(16)), Agent::local(agent_addr(17))],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let id = sim
        .create_app(json!({"id": "spread", "instances": 4}))
        .await
        .unwrap();
    assert_eq!(id, "/spread");
    let tasks = sim.tasks(&id);
    let hosts: std::collections::BTreeSet<_> = tasks.iter().map(|t| t.address).collect();
    assert_eq!(hosts.len(), 2, "tasks are placed round-robin over agents");
    sim.scale(&id, 1).await.unwrap();
    assert_eq!(sim.tasks(&id).len(), 1);
    let survivor = sim.tasks(&id)[0].clone();
    assert_eq!(
        survivor.id, tasks[0].id,
        "scale-down kills the youngest first"
    );
    sim.delete_app(&id).await.unwrap();
    assert!(sim.app_ids().is_empty());
    assert!(tcp_refused(survivor.address, survivor.ports[0]).await);

    sim.create_app(json!({"id": "/left-running", "instances": 2}))
        .await
        .unwrap();
    let left = sim.tasks("/left-running");
    let url = sim.url();
    drop(sim);
    for task in &left {
        let deadline = Instant::now() + WAIT;
        while !tcp_refused(task.address, task.ports[0]).await {
            assert!(
                Instant::now() < deadline,
                "task {} outlived the simulator",
                task.id
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(
        client().get(format!("{url}/ping")).send().await.is_err(),
        "API closed"
    );
}

#[tokio::test]
async fn sample_apps_deploy_with_their_labels_and_ports() {
    let apps: Vec<Value> = serde_json::from_str(SAMPLE_APPS_JSON).unwrap();
    let sim = MarathonSim::start(SimConfig { apps, ..config(18) })
        .await
        .unwrap();
    let listed = get_json(&format!("{}/v2/apps?embed=apps.tasks", sim.url())).await;
    let apps = listed["apps"].as_array().unwrap();
    assert_eq!(apps.len(), 5);
    let by_id = |id: &str| {
        apps.iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("{id}"))
    };
    for app in apps {
        assert_eq!(app["labels"]["HAPROXY_GROUP"], "external");
        assert_eq!(
            app["tasks"].as_array().unwrap().len() as u64,
            app["instances"].as_u64().unwrap()
        );
    }
    assert_eq!(by_id("/demo/tcp-echo")["labels"]["HAPROXY_0_MODE"], "tcp");
    assert_eq!(by_id("/demo/tcp-echo")["portDefinitions"][0]["port"], 10001);
    assert_eq!(
        by_id("/demo/udp-echo")["portDefinitions"][0]["protocol"],
        "udp"
    );
    assert_eq!(by_id("/demo/udp-echo")["portDefinitions"][0]["port"], 10002);
    assert_eq!(
        by_id("/demo/web")["labels"]["HAPROXY_0_VHOST"],
        "web.example.test"
    );
    assert_eq!(
        by_id("/demo/api")["labels"]["HAPROXY_0_VHOST"],
        "api.example.test"
    );
    assert_eq!(
        by_id("/demo/secure")["labels"]["HAPROXY_0_REDIRECT_TO_HTTPS"],
        "true"
    );
    let udp = UdpSocket::bind((agent_addr(18), 0)).await.unwrap();
    let task = sim.tasks("/demo/udp-echo")[0].clone();
    udp.send_to(b"ping", (task.address, task.ports[0]))
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let (n, _) = timeout(WAIT, udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], task.id.as_bytes());
    let task = sim.tasks("/demo/api")[0].clone();
    let (status, id, _) = http_get_task(&task.host, u64::from(task.ports[0])).await;
    assert_eq!((status, id), (StatusCode::OK, task.id));
}

#[tokio::test]
async fn binary_serves_an_apps_file() {
    let dir = std::env::temp_dir().join(format!("marathon-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let apps = dir.join("apps.json");
    std::fs::write(&apps, r#"[{"id": "/from-file", "instances": 2}]"#).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_marathon-sim"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--backend-addr",
            "127.0.0.19",
            "--duration",
            "60",
            "--apps",
        ])
        .arg(&apps)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte != *b"\n" {
        timeout(WAIT, stdout.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        line.push(byte[0]);
    }
    let url = String::from_utf8(line).unwrap().trim().to_string();
    let app = wait_deployed(&url, "/from-file").await;
    assert_eq!(app["tasks"][0]["host"], "127.0.0.19");
    child.start_kill().unwrap();
    let _ = timeout(WAIT, child.wait()).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A network namespace for one test, removed on drop.
struct Netns(String);

impl Netns {
    fn create(name: String, addr: &str) -> Netns {
        let run = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("ip runs");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["netns", "add", &name]);
        let ns = Netns(name);
        run(&["-n", &ns.0, "link", "set", "lo", "up"]);
        run(&[
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{addr}/32"),
            "dev",
            "lo",
        ]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

#[tokio::test]
async fn tasks_bind_inside_an_agent_network_namespace() {
    let ns = Netns::create(format!("mlbsim-{}", std::process::id()), "198.18.77.1");
    let addr: IpAddr = "198.18.77.1".parse().unwrap();
    let sim = MarathonSim::start(SimConfig {
        agents: vec![Agent::in_netns(addr, ns.0.clone())],
        ..SimConfig::default()
    })
    .await
    .unwrap();
    sim.create_app(json!({"id": "/in-ns"})).await.unwrap();
    let task = sim.tasks("/in-ns")[0].clone();
    assert_eq!(task.host, "198.18.77.1");
    // Only reachable from inside the namespace: connect from a thread that entered it.
    let path = format!("/var/run/netns/{}", ns.0);
    let port = task.ports[0];
    let answer = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(path).unwrap();
            // SAFETY: entering a namespace on this short-lived thread only.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let mut s =
                std::net::TcpStream::connect_timeout(&SocketAddr::new(addr, port), WAIT).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
        .join()
        .unwrap()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with(&format!("{}\n", task.id)), "{answer}");
    drop(sim);
    drop(ns);
}
