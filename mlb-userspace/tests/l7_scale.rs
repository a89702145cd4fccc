//! The proxy with many services: a change to one of them is applied without rebuilding the
//! others, and routing is right for both afterwards.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
mod l7_common;

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use l7_common::*;
use mlb::{
    dataplane::HttpChange,
    model::{
        Backend, BackendId, BackendState, HealthCheck, HealthCheckKind, HttpService, HttpServiceKey,
    },
};

/// Service `i` of a large configuration: a vhost, a service port, `tasks` backends that are
/// never contacted, and a health check that never runs twice in a test.
fn numbered(i: usize, tasks: usize, port_base: u16) -> HttpService {
    let mut svc = service_template(&format!("/app{i:05}"));
    svc.vhosts = vec![format!("app{i:05}.example.com")];
    svc.service_port = port_base + i as u16;
    svc.backends = (0..tasks)
        .map(|t| Backend {
            id: BackendId::from(format!("app{i:05}.task{t}:0")),
            addr: format!("127.0.0.{}:{}", 2 + t, 1 + i).parse().unwrap(),
            weight: 1,
            state: BackendState::Active,
        })
        .collect();
    svc.health_check = Some(HealthCheck {
        kind: HealthCheckKind::Tcp,
        port_index: 0,
        interval: std::time::Duration::from_secs(3600),
        timeout: std::time::Duration::from_millis(100),
        max_consecutive_failures: 1_000_000,
    });
    svc
}

fn service_template(app: &str) -> HttpService {
    let mut svc = service(app, &[]);
    svc.key = HttpServiceKey {
        app_id: app.into(),
        port_index: 0,
    };
    svc
}

/// Timing, not a pass/fail test: 9,000 vhost services with 10 backends each, then one backend of
/// one service changes. Run with
/// `cargo test --release -p mlb-userspace --test l7_scale -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing figure for the report; slow in debug builds"]
async fn time_one_change_among_9000_services() {
    const N: usize = 9_000;
    let proxy = start_proxy(vec![], |_| {});
    let mut all: BTreeMap<HttpServiceKey, HttpService> = (0..N)
        .map(|i| numbered(i, 10, 20_000))
        .map(|s| (s.key.clone(), s))
        .collect();
    let t = Instant::now();
    let errors = proxy.apply_changes(&upserts(all.values().cloned().collect()));
    assert!(errors.is_empty(), "{:?}", &errors[..errors.len().min(3)]);
    eprintln!("initial apply of {N} services: {:?}", t.elapsed());

    let rounds = 20u32;
    let mut total = std::time::Duration::ZERO;
    for r in 0..rounds {
        let key = HttpServiceKey {
            app_id: format!("/app{:05}", 31 * r as usize + 5),
            port_index: 0,
        };
        let svc = all.get_mut(&key).unwrap();
        svc.backends[3].state = BackendState::Draining;
        let change = [HttpChange::Upsert(Arc::new(svc.clone()))];
        let t = Instant::now();
        let errors = proxy.apply_changes(&change);
        total += t.elapsed();
        assert!(errors.is_empty());
    }
    eprintln!(
        "apply_changes with one backend changed: {:?} per change",
        total / rounds
    );
}

/// Real traffic: among 40 services, one gets a new backend (and loses its old one) through
/// `apply_changes`; requests for it reach the new backend, requests for an untouched service
/// still reach its own, a removed service answers 503 and its port is closed.
#[tokio::test]
async fn one_change_among_many_routes_the_changed_and_the_others() {
    let (old, new, other) = (
        TestBackend::start("old").await,
        TestBackend::start("new").await,
        TestBackend::start("other").await,
    );
    let proxy = start_proxy(vec![], |_| {});
    let list: Vec<HttpService> = (0..40)
        .map(|i| {
            let mut svc = service(
                &format!("/app{i:02}"),
                &[if i == 3 { &old } else { &other }],
            );
            svc.vhosts = vec![format!("app{i:02}.example.com")];
            svc
        })
        .collect();
    apply(&proxy, list.clone());
    let c = http_client();
    let http = proxy.local_addr("http").unwrap();
    assert_eq!(
        get(&c, http, "app03.example.com", "/", &[]).await.backend(),
        Some("old")
    );

    let mut changed = list[3].clone();
    changed.backends = vec![new.backend()];
    let errors = proxy.apply_changes(&[
        HttpChange::Upsert(Arc::new(changed)),
        HttpChange::Remove(list[5].key.clone()),
    ]);
    assert!(errors.is_empty(), "{errors:?}");
    for _ in 0..3 {
        let got = get(&c, http, "app03.example.com", "/", &[]).await;
        assert_eq!(got.backend(), Some("new"));
        let got = get(&c, http, "app04.example.com", "/", &[]).await;
        assert_eq!(got.backend(), Some("other"));
    }
    assert_eq!(
        get(&c, http, "app05.example.com", "/", &[]).await.status,
        503
    );
    let gone = list[5].service_port;
    assert!(!proxy.service_listeners().iter().any(|a| a.port() == gone));
    assert_eq!(proxy.service_listeners().len(), 39);
    let port4 = std::net::SocketAddr::from(([127, 0, 0, 1], list[4].service_port));
    assert_eq!(get(&c, port4, "x", "/", &[]).await.backend(), Some("other"));
}
