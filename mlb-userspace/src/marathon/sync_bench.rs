//! A full read of a large Marathon, measured: a 10,000-app × 10-task `GET /v2/apps` body (the
//! shape `cargo xtask bench sync` gets from the simulator) served from memory over loopback,
//! read by [`MarathonClient::list_apps`] and stored as the controller does. Reports the time
//! and the peak RSS (`VmHWM`, reset just before the read). Ignored by default; run in release:
//!
//! ```text
//! cargo test --release -p mlb-userspace --lib marathon::sync_bench -- --ignored --nocapture
//! ```
use std::{convert::Infallible, fmt::Write as _, time::Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::client::MarathonClient;
use crate::marathon::store::AppStore;

const APPS: usize = 10_000;
const TASKS: usize = 10;

/// `{"apps": [...]}` as the simulator renders running apps with embedded tasks (written as
/// text: building it as `Value`s would leave freed heap behind and skew the RSS readings).
fn v2_apps_body(apps: usize, tasks: usize) -> String {
    let mut s = String::from(r#"{"apps":["#);
    for i in 0..apps {
        if i > 0 {
            s.push(',');
        }
        let id = format!("/app-{i:05}");
        let labels = if i % 10 == 0 {
            r#"{"HAPROXY_GROUP":"external","HAPROXY_0_MODE":"tcp"}"#.to_owned()
        } else {
            format!(r#"{{"HAPROXY_GROUP":"external","HAPROXY_0_VHOST":"app-{i:05}.bench.test"}}"#)
        };
        let version = "2024-05-01T10:00:00.000Z";
        write!(
            s,
            r#"{{"id":"{id}","instances":{tasks},"cmd":"sleep infinity","cpus":0.1,"mem":64,"disk":0,"gpus":0,"executor":"","labels":{labels},"env":{{}},"constraints":[],"fetch":[],"dependencies":[],"backoffSeconds":1,"backoffFactor":1.15,"maxLaunchDelaySeconds":3600,"requirePorts":false,"upgradeStrategy":{{"minimumHealthCapacity":1,"maximumOverCapacity":1}},"unreachableStrategy":{{"inactiveAfterSeconds":300,"expungeAfterSeconds":600}},"killSelection":"YOUNGEST_FIRST","healthChecks":[],"readinessChecks":[],"networks":[{{"mode":"host"}}],"portDefinitions":[{{"port":{port},"protocol":"tcp","name":null,"labels":{{}}}}],"version":"{version}","versionInfo":{{"lastScalingAt":"{version}","lastConfigChangeAt":"{version}"}},"deployments":[],"readinessCheckResults":[],"tasks":["#,
            port = 10_000 + i,
        )
        .unwrap();
        for t in 0..tasks {
            if t > 0 {
                s.push(',');
            }
            let agent = (i * tasks + t) % 10 + 1;
            let port = 20_000 + (i * tasks + t) % 40_001;
            write!(
                s,
                r#"{{"id":"app-{i:05}.{uuid:08x}-1d2c-11ef-9a3b-0242ac110002","appId":"{id}","host":"127.0.89.{agent}","slaveId":"sim-agent-S{agent}","state":"TASK_RUNNING","stagedAt":"{version}","version":"{version}","ports":[{port}],"ipAddresses":[{{"ipAddress":"127.0.89.{agent}","protocol":"IPv4"}}],"localVolumes":[],"startedAt":"{version}"}}"#,
                uuid = i * tasks + t,
            )
            .unwrap();
        }
        s.push_str("]}");
    }
    s.push_str("]}");
    s
}

fn status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Resets `VmHWM` to the current RSS. Only the first round starts from a fresh heap: later
/// ones reuse memory freed by the previous round, which RSS does not see again.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run in release with --ignored --nocapture"]
async fn full_read_of_10k_apps() {
    let body = Bytes::from(v2_apps_body(APPS, TASKS));
    let size = body.len();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = body.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let body = served.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(body))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    let cfg = super::config::MarathonConfig {
        urls: vec![url.parse().unwrap()],
        ..Default::default()
    };
    let client = MarathonClient::new(&cfg).unwrap();

    for round in 1..=3 {
        let mut store = AppStore::default();
        reset_peak();
        let base = status_kib("VmRSS:");
        let started = Instant::now();
        let list = client.list_apps().await.unwrap();
        store.replace_all(list);
        let total = started.elapsed();
        let peak = status_kib("VmHWM:");
        let after = status_kib("VmRSS:");
        println!(
            "round {round}: {APPS} apps x {TASKS} tasks, body {:.1} MB: read+parse {total:?}; \
             RSS before {} MiB (incl. the served body), peak {} MiB (+{} MiB), after {} MiB (+{} MiB)",
            size as f64 / 1e6,
            base / 1024,
            peak / 1024,
            (peak - base) / 1024,
            after / 1024,
            after.saturating_sub(base) / 1024,
        );
        assert_eq!(store.list().apps.len(), APPS);
        assert!(store.list().invalid.is_empty());
    }
}

/// What a full sync keeps, for a heap profiler: the parsed apps, the model and the proxy's
/// compiled routes, all alive at the end (the test binary uses the system allocator, which
/// `heaptrack` sees; mlb's mimalloc it does not):
///
/// ```text
/// cargo test -p mlb-userspace --lib full_sync_heap --no-run   # prints the test binary
/// heaptrack BINARY --ignored --exact marathon::sync_bench::full_sync_heap --nocapture
/// heaptrack_print -f heaptrack.*.zst --print-peaks 1 --peak-limit 20
/// ```
#[test]
#[ignore = "a heap profile: run under heaptrack with --ignored"]
fn full_sync_heap() {
    use std::sync::Arc;
    let body = v2_apps_body(APPS, TASKS);
    let list = crate::marathon::types::parse_app_list_json(body.as_bytes()).unwrap();
    drop(body);
    let mut store = AppStore::default();
    store.replace_all(list);
    let opts = crate::model::ModelOptions::new(vec!["external".into()]);
    let mut model = crate::model::incremental::ModelState::default();
    model.full(store.list(), &opts, std::time::SystemTime::now());
    let registry = crate::proxy::balance::StatsRegistry::default();
    let compiled: Vec<_> = model
        .state()
        .http
        .values()
        .map(|spec| {
            Arc::new(crate::proxy::router::Service::compile(spec, &registry, None).unwrap())
        })
        .collect();
    let mut index = crate::proxy::router::RouteIndex::default();
    index.update(compiled, []);
    println!(
        "sizes: App {} Task {} Backend {} HttpService {} L4Service {} BackendSlot {} Service {}",
        size_of::<crate::marathon::types::App>(),
        size_of::<crate::marathon::types::Task>(),
        size_of::<crate::model::Backend>(),
        size_of::<crate::model::HttpService>(),
        size_of::<crate::model::L4Service>(),
        size_of::<crate::proxy::balance::BackendSlot>(),
        size_of::<crate::proxy::router::Service>(),
    );
    assert_eq!(index.len(), 9_000);
}
