//! Table tests over Marathon JSON fixtures (`fixtures/*.json`, in Marathon's real response
//! shapes; `marathon15_bridge.json` and `zdd_apps.json` follow marathon-lb's own test fixtures).
use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use serde_json::json;

use super::{
    explain::{consistent_with, explain, render_text},
    health::HealthVerdict,
    *,
};
use crate::marathon::types::{AppList, parse_app_list};

fn fixture(name: &str) -> AppList {
    let path = format!("{}/src/model/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse_app_list(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn inline(apps: serde_json::Value) -> AppList {
    parse_app_list(&json!({ "apps": apps })).unwrap()
}

fn opts(groups: &[&str]) -> ModelOptions {
    ModelOptions::new(groups.iter().map(|g| (*g).to_owned()).collect())
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000)
}

fn run(list: &AppList, opts: &ModelOptions) -> DesiredState {
    desired_state(list, opts, &HealthCache::new(), now()).0
}

fn addrs(backends: &[Backend]) -> Vec<(String, BackendState)> {
    backends
        .iter()
        .map(|b| (b.addr.to_string(), b.state))
        .collect()
}

fn active(addr: &str) -> (String, BackendState) {
    (addr.to_owned(), BackendState::Active)
}

fn l4(s: &DesiredState, port: u16, protocol: Protocol) -> Option<&L4Service> {
    s.l4.get(&L4ServiceKey { port, protocol })
}

fn http<'a>(s: &'a DesiredState, app: &str, index: usize) -> Option<&'a HttpService> {
    s.http
        .get(&HttpServiceKey {
            app_id: app.into(),
            port_index: index,
        })
        .map(|svc| &**svc)
}

fn rejected<'a>(s: &'a DesiredState, app: &str) -> Vec<&'a Rejected> {
    s.rejected.iter().filter(|r| r.app_id == app).collect()
}

/// marathon-lb `test_bridge_app_marathon15`: bridge networking in the 1.5 shape, a vhost and no
/// health check → an HTTP service on 10101 routed to the agent address and host port (the
/// container address is ignored in bridge mode).
#[test]
fn bridge_app_marathon15_becomes_an_http_vhost_service() {
    let s = run(&fixture("marathon15_bridge.json"), &opts(&["external"]));
    let svc = http(&s, "/pywebserver", 0).expect("http service");
    assert_eq!(svc.service_port, 10101);
    assert_eq!(svc.vhosts, ["myvhost.com"]);
    assert_eq!(addrs(&svc.backends), [active("10.0.2.148:1565")]);
    assert_eq!(
        svc.backends[0].id.as_str(),
        "pywebserver.8cad6a69-6cab-11e7-a6a2-0242ac110002:0"
    );
    assert_eq!(svc.health_check, None);
    assert!(s.l4.is_empty() && s.rejected.is_empty() && s.warnings.is_empty());
    assert!(
        run(&fixture("marathon15_bridge.json"), &opts(&["internal"]))
            .http
            .is_empty()
    );
}

/// marathon-lb `test_zdd_app`: both colours merged into `/nginx` on the original port 10000
/// (the alternate port 10001 never appears), http mode from the HTTP check, and exactly one
/// old (green) task draining: the one with the smallest task id, on port 31184.
#[test]
fn zdd_group_merges_colours_and_drains_one_old_task() {
    let mut o = opts(&["external"]);
    o.health_check = true;
    let list = fixture("zdd_apps.json");
    let s = run(&list, &o);
    assert_eq!(s.http.len(), 1, "{:?}", s.http.keys());
    let svc = http(&s, "/nginx", 0).expect("merged service");
    assert_eq!(svc.service_port, 10000);
    let mut got = addrs(&svc.backends);
    got.sort();
    assert_eq!(
        got,
        [
            active("10.0.1.147:25724"),
            active("10.0.6.25:16916"),
            active("10.0.6.25:23336"),
            ("10.0.6.25:31184".to_owned(), BackendState::Draining),
        ]
    );
    let hc = svc.health_check.as_ref().unwrap();
    assert_eq!(
        hc.kind,
        HealthCheckKind::Http {
            path: "/".to_owned()
        }
    );
    assert_eq!(hc.interval, Duration::from_secs(3));
    assert_eq!(hc.max_consecutive_failures, 11);
    assert!(s.l4.is_empty());
    assert!(s.rejected.is_empty(), "{:?}", s.rejected);
    let ex = explain(&list, &o, &HealthCache::new(), now());
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].marathon_app_ids, ["/nginx-green", "/nginx-blue"]);
}

/// As the new colour gets healthy, more old tasks drain (never below the target count).
#[test]
fn zdd_drains_more_old_tasks_as_new_ones_become_healthy() {
    let mut list = fixture("zdd_apps.json");
    let blue = list
        .apps
        .iter_mut()
        .find(|a| a.id == "/nginx-blue")
        .unwrap();
    for (i, port) in [(2, 25725), (3, 25726)] {
        let mut t = blue.tasks[0].clone();
        t.id = format!("nginx-blue.{i}");
        t.ports = Box::new([port]);
        blue.tasks.push(t);
    }
    blue.instances = Some(3);
    let s = run(&list, &opts(&["external"]));
    let svc = http(&s, "/nginx", 0).unwrap();
    let draining: Vec<_> = svc
        .backends
        .iter()
        .filter(|b| b.state == BackendState::Draining)
        .map(|b| b.addr.port())
        .collect();
    // 3 healthy new + 3 old - target 3 = 3 drainable: every green task.
    assert_eq!(draining.len(), 3, "{draining:?}");
    assert!(draining.iter().all(|p| [16916, 23336, 31184].contains(p)));
    // An unhealthy new task does not count: back to one drained.
    let blue = list
        .apps
        .iter_mut()
        .find(|a| a.id == "/nginx-blue")
        .unwrap();
    for t in &mut blue.tasks[1..] {
        t.health_check_results = Some(Box::new([Default::default()]));
    }
    let s = run(&list, &opts(&["external"]));
    let n = http(&s, "/nginx", 0)
        .unwrap()
        .backends
        .iter()
        .filter(|b| b.state == BackendState::Draining)
        .count();
    assert_eq!(n, 1);
}

/// The colour scaled most recently counts as the new one (a rollback with `--complete-prev`
/// scales the previous colour up), unless it is the smaller one: zdd's kills scale the old
/// colour down, and its remaining tasks must go on draining, not the new colour's.
#[test]
fn zdd_colour_scaled_last_is_new_unless_smaller() {
    let draining_ports = |green_instances: u32, blue_instances: u32| {
        let mut list = fixture("zdd_apps.json");
        for app in &mut list.apps {
            app.labels
                .insert("HAPROXY_DEPLOYMENT_NEW_INSTANCES".into(), "0".into());
            app.labels
                .insert("HAPROXY_DEPLOYMENT_TARGET_INSTANCES".into(), "3".into());
            if app.id == "/nginx-green" {
                // Green (the older colour) was scaled after blue.
                let info = app.version_info.as_mut().unwrap();
                info.last_scaling_at = Some("2016-02-01T23:00:00.000Z".into());
                app.tasks.truncate(green_instances as usize);
                app.instances = Some(green_instances);
            } else {
                for i in 1..blue_instances {
                    let mut t = app.tasks[0].clone();
                    t.id = format!("nginx-blue.{i}");
                    t.ports = Box::new([25724 + i as u16]);
                    app.tasks.push(t);
                }
                app.instances = Some(blue_instances);
            }
        }
        let s = run(&list, &opts(&["external"]));
        let mut ports: Vec<u16> = http(&s, "/nginx", 0)
            .unwrap()
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Draining)
            .map(|b| b.addr.port())
            .collect();
        ports.sort_unstable();
        ports
    };
    // Rolled back: green grown to 3, more than blue's 1: blue's task drains.
    assert_eq!(draining_ports(3, 1), [25724]);
    // Green shrunk by a kill to 1, blue grown to 3: green's remaining task still drains.
    let green_left = draining_ports(1, 3);
    assert_eq!(green_left.len(), 1);
    assert!(
        green_left[0] < 25724 || green_left[0] > 25726,
        "{green_left:?}"
    );
}

/// Marathon ≤1.4 shapes: host networking with `tcp,udp` and `udp` ports, legacy `ports`, an
/// agent host name resolved by the caller, 1.4 IP-per-task with discovery ports (auto-assigned
/// service port), USER network with port mappings, and BRIDGE with a MESOS_HTTP check (which
/// does not make the port http: marathon-lb quirk 2, kept).
#[test]
fn marathon14_host_bridge_and_ip_per_task_shapes() {
    let list = fixture("host_bridge_ippt_14.json");
    let mut o = opts(&["external"]);
    o.host_addrs = BTreeMap::from([("agent-1.example".to_owned(), "198.18.0.24".parse().unwrap())]);
    let s = run(&list, &o);
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let svc = l4(&s, 10053, proto).unwrap_or_else(|| panic!("10053/{proto}"));
        assert_eq!(addrs(&svc.backends), [active("198.18.0.21:31053")]);
        assert_eq!(svc.app_id, "/dns");
    }
    assert!(l4(&s, 10514, Protocol::Udp).is_some());
    assert!(l4(&s, 10514, Protocol::Tcp).is_none(), "udp-only port");
    assert_eq!(
        addrs(&l4(&s, 10200, Protocol::Tcp).unwrap().backends),
        [active("198.18.0.24:31200")]
    );
    let ippt = http(&s, "/ippt14", 0).expect("IP-per-task vhost");
    // marathon-lb: 10050 + int(sha1("/ippt14-8080-0")[:8], 16) % 51.
    assert_eq!(ippt.service_port, 10099);
    assert_eq!(addrs(&ippt.backends), [active("198.18.5.1:8080")]);
    assert_eq!(
        addrs(&l4(&s, 10300, Protocol::Tcp).unwrap().backends),
        [active("198.18.5.2:80")]
    );
    let bridge = l4(&s, 10400, Protocol::Tcp).expect("MESOS_HTTP check keeps tcp mode");
    assert_eq!(addrs(&bridge.backends), [active("198.18.0.22:31400")]);
    let hc = bridge.health_check.as_ref().unwrap();
    assert_eq!(
        (hc.kind.clone(), hc.max_consecutive_failures, hc.timeout),
        (
            HealthCheckKind::Http {
                path: "/health".into()
            },
            3,
            Duration::from_secs(5)
        )
    );
    assert!(s.rejected.is_empty(), "{:?}", s.rejected);
    assert_eq!(
        hosts_to_resolve(&list.apps).into_iter().collect::<Vec<_>>(),
        ["agent-1.example"]
    );

    // Unresolved host: only that app's port is affected, and explain says why.
    let o = opts(&["external"]);
    let s2 = run(&list, &o);
    assert!(l4(&s2, 10200, Protocol::Tcp).is_none());
    assert_eq!(s2.l4.len() + s2.http.len(), s.l4.len() + s.http.len() - 1);
    let ex = explain(&list, &o, &HealthCache::new(), now());
    let legacy = ex.iter().find(|a| a.app_id == "/legacy").unwrap();
    assert_eq!(
        legacy.ports[0].excluded_tasks[0].reason.to_string(),
        "agent host \"agent-1.example\" is not resolved"
    );
}

/// Marathon ≥1.5 shapes: container networking without service ports (auto-assigned, matching
/// marathon-lb's hash), a udp container port, and a bridge app whose middle mapping has no
/// service port: label indices shift as in marathon-lb, but the second service port is still
/// routed to its own mapping's host port (marathon-lb quirk 4, fixed).
#[test]
fn marathon15_ip_per_task_auto_assignment_and_bridge_index_shift() {
    let list = fixture("ippt_15.json");
    let s = run(&list, &opts(&["external"]));
    let web = http(&s, "/ippt15", 0).expect("vhost on IP-per-task");
    assert_eq!(web.service_port, 10067);
    assert_eq!(
        addrs(&web.backends),
        [active("198.18.6.1:8080"), active("198.18.6.2:8080")]
    );
    let dns = l4(&s, 10095, Protocol::Udp).expect("udp auto-assigned port");
    assert_eq!(addrs(&dns.backends), [active("198.18.6.3:53")]);
    assert_eq!(
        addrs(&l4(&s, 10600, Protocol::Tcp).unwrap().backends),
        [active("198.18.0.33:31600")]
    );
    let admin = http(&s, "/bridge15", 1).expect("HAPROXY_1_MODE=http applies to 10601");
    assert_eq!(admin.service_port, 10601);
    assert_eq!(addrs(&admin.backends), [active("198.18.0.33:31602")]);

    let mut o = opts(&["external"]);
    o.ip_per_task_port_range = None;
    let s = run(&list, &o);
    assert!(http(&s, "/ippt15", 0).is_none());
    let ex = explain(&list, &o, &HealthCache::new(), now());
    let app = ex.iter().find(|a| a.app_id == "/ippt15").unwrap();
    assert!(
        app.problem
            .as_deref()
            .unwrap()
            .starts_with("no service ports")
    );
}

fn exposed_ports(s: &DesiredState) -> Vec<u16> {
    let mut v: Vec<u16> =
        s.l4.keys()
            .map(|k| k.port)
            .chain(s.http.values().map(|h| h.service_port))
            .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// `--group`: intersect, `*` for all (including apps without a group), port-level groups
/// replace the app's; `--strict-mode` needs `HAPROXY_{n}_ENABLED=true`; `ENABLED=false` always
/// disables.
#[test]
fn groups_strict_mode_and_per_port_groups() {
    let list = fixture("mixed_apps.json");
    let s = run(&list, &opts(&["external"]));
    let ports = exposed_ports(&s);
    assert!(ports.contains(&10500) && ports.contains(&10503));
    for p in [10501, 10502, 10504, 10505] {
        assert!(!ports.contains(&p), "{p} exposed: {ports:?}");
    }
    let s = run(&list, &opts(&["internal"]));
    assert_eq!(exposed_ports(&s), [10501, 10504]);
    let s = run(&list, &opts(&["*"]));
    let ports = exposed_ports(&s);
    assert!(ports.contains(&10501) && ports.contains(&10502) && ports.contains(&10504));
    assert!(!ports.contains(&10505), "ENABLED=false");

    let mut strict = opts(&["external"]);
    strict.strict_mode = true;
    let s = run(&list, &strict);
    assert_eq!(exposed_ports(&s), [10500, 10503]);
    let ex = explain(&list, &strict, &HealthCache::new(), now());
    let killing = ex.iter().find(|a| a.app_id == "/killing").unwrap();
    assert_eq!(
        killing.ports[0].reason.as_deref(),
        Some("not enabled: --strict-mode is on and HAPROXY_0_ENABLED is not true")
    );
}

/// Invalid JSON, a bad label, a port conflict and an unsupported combination are each
/// rejected naming the app, the port and the field; nothing else is affected.
#[test]
fn bad_input_is_rejected_alone_naming_app_and_field() {
    let list = fixture("mixed_apps.json");
    assert_eq!(list.invalid.len(), 1);
    let s = run(&list, &opts(&["external"]));
    let broken = rejected(&s, "/broken");
    assert_eq!(broken.len(), 1);
    assert_eq!(broken[0].port_index, None);
    assert!(
        broken[0]
            .reason
            .starts_with("invalid app JSON: field portDefinitions[0].port:"),
        "{}",
        broken[0].reason
    );
    let bad = rejected(&s, "/badport");
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].port_index, Some(0));
    assert_eq!(
        bad[0].reason,
        "label HAPROXY_0_PORT=\"abc\": not a port number"
    );
    assert!(
        l4(&s, 10516, Protocol::Tcp).is_some(),
        "the app's other port is fine"
    );

    let conflict = rejected(&s, "/zconflict");
    assert_eq!(conflict.len(), 1);
    assert_eq!(
        conflict[0].reason,
        "service port 10500/tcp is already used by /ext port 0"
    );
    assert_eq!(
        addrs(&l4(&s, 10500, Protocol::Tcp).unwrap().backends),
        [active("198.18.1.1:31500")]
    );
    // tcp mode with a certificate: TLS terminated by the proxy, plain TCP to the backends.
    assert!(rejected(&s, "/tcpcert").is_empty());
    let tls_tcp = http(&s, "/tcpcert", 0).unwrap();
    assert!(tls_tcp.tcp_tls && tls_tcp.vhosts.is_empty());
    assert_eq!(
        tls_tcp.ssl_certs,
        [std::path::PathBuf::from("/etc/ssl/tcp.pem")]
    );
    assert!(
        l4(&s, 10510, Protocol::Tcp).is_none(),
        "not also an XDP service"
    );
    assert_eq!(s.rejected.len(), 3, "{:#?}", s.rejected);
}

/// Template labels: the tuning ones are read directive by directive (applied ones land in the
/// service, the rest give one warning per port), the others give one warning per app naming
/// them; the app is still exposed.
#[test]
fn template_labels_are_applied_or_warned_about() {
    let list = fixture("mixed_apps.json");
    let s = run(&list, &opts(&["external"]));
    let w: Vec<_> = s
        .warnings
        .iter()
        .map(|w| (w.app_id.as_str(), w.port_index, w.message.as_str()))
        .filter(|w| w.0 == "/templated")
        .collect();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].2
            .starts_with("these HAProxy template labels have no effect")
            && w[0].2.ends_with(": HAPROXY_0_BACKEND_HSTS_OPTIONS"),
        "{w:?}"
    );
    assert_eq!(
        (w[1].1, w[1].2),
        (
            Some(0),
            "template directives not applied (see mlb explain -v): HAPROXY_HEAD: daemon"
        )
    );
    let svc = l4(&s, 10507, Protocol::Tcp).unwrap();
    assert_eq!(svc.tuning.maxconn_server, Some(10));
    let ex = explain(&list, &opts(&["external"]), &HealthCache::new(), now());
    let text = render_text(&ex);
    assert!(
        text.contains("template HAPROXY_0_BACKEND_SERVER_OPTIONS: applied: server {serverName}"),
        "{text}"
    );
    assert!(
        text.contains(
            "template HAPROXY_0_FRONTEND_HEAD: template structure, built by mlb: mode tcp"
        ),
        "{text}"
    );
    assert!(
        s.warnings.iter().all(|w| w.app_id == "/templated"),
        "{:?}",
        s.warnings
    );
}

/// `FRAMEWORK_NAME`: mlb never load-balances its own app; `reserved_ports` keeps apps off
/// mlb's listeners.
#[test]
fn framework_name_skips_mlb_itself_and_reserved_ports_are_refused() {
    let list = fixture("mixed_apps.json");
    let s = run(&list, &opts(&["external"]));
    assert!(
        l4(&s, 80, Protocol::Tcp).is_some(),
        "without FRAMEWORK_NAME it is just an app"
    );
    let mut o = opts(&["external"]);
    o.framework_name = Some("marathon-lb".into());
    let s = run(&list, &o);
    assert!(l4(&s, 80, Protocol::Tcp).is_none());
    assert!(rejected(&s, "/marathon-lb").is_empty());
    let ex = explain(&list, &o, &HealthCache::new(), now());
    let me = ex.iter().find(|a| a.app_id == "/marathon-lb").unwrap();
    assert!(
        me.problem
            .as_deref()
            .unwrap()
            .contains("this is mlb itself")
    );

    let mut o = opts(&["external"]);
    o.reserved_ports = [80, 443, 9090].into();
    let s = run(&list, &o);
    let r = rejected(&s, "/marathon-lb");
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].reason, "service port 80 is one of mlb's own listeners");
}

/// TASK_RUNNING is active, TASK_KILLING drains, other states and not-ready tasks (readiness
/// during a deployment) are excluded, and a port without routable tasks is not exposed.
#[test]
fn task_states_readiness_and_draining() {
    let list = fixture("mixed_apps.json");
    let o = opts(&["external"]);
    let s = run(&list, &o);
    assert_eq!(
        addrs(&l4(&s, 10511, Protocol::Tcp).unwrap().backends),
        [
            active("198.18.1.9:31511"),
            ("198.18.1.10:31511".to_owned(), BackendState::Draining)
        ]
    );
    assert_eq!(
        addrs(&l4(&s, 10512, Protocol::Tcp).unwrap().backends),
        [active("198.18.1.11:31512")]
    );
    assert!(l4(&s, 10508, Protocol::Tcp).is_none());
    assert!(l4(&s, 10509, Protocol::Tcp).is_none());
    let ex = explain(&list, &o, &HealthCache::new(), now());
    let port = |id: &str| ex.iter().find(|a| a.app_id == id).unwrap().ports[0].clone();
    let staging = port("/staging");
    assert_eq!(
        staging.reason.as_deref(),
        Some("no routable task (see the excluded tasks)")
    );
    assert_eq!(
        staging.excluded_tasks[0].reason.to_string(),
        "state TASK_STAGING"
    );
    assert_eq!(port("/notasks").reason.as_deref(), Some("no tasks"));
    let deploying = port("/deploying");
    assert_eq!(deploying.excluded_tasks[0].task_id, "deploying.t2");
    assert!(
        deploying.excluded_tasks[0]
            .reason
            .to_string()
            .contains("not ready")
    );
}

/// `--health-check`: only healthy tasks; after a Marathon leader failover (no results at all)
/// the returned cache keeps the last known verdicts, so the healthy task stays routed and a new
/// unchecked task does not get traffic. Without the cache the service would vanish.
#[test]
fn health_gating_survives_a_failover_snapshot() {
    let mut o = opts(&["external"]);
    o.health_check = true;
    let before = fixture("health_before_failover.json");
    let after = fixture("health_after_failover.json");
    let (s1, cache) = desired_state(&before, &o, &HealthCache::new(), now());
    let web = |s: &DesiredState| http(s, "/web", 0).map(|h| addrs(&h.backends));
    assert_eq!(web(&s1), Some(vec![active("198.18.0.41:31010")]));
    let later = now() + Duration::from_secs(30);
    let (s2, cache2) = desired_state(&after, &o, &cache, later);
    assert_eq!(web(&s2), Some(vec![active("198.18.0.41:31010")]));
    assert_eq!(cache2.last_known("web.instance-0001._app.1"), Some(true));

    let (s3, _) = desired_state(&after, &o, &HealthCache::new(), later);
    assert_eq!(web(&s3), None, "no cache: nothing known healthy");
    let ex = explain(&after, &o, &HealthCache::new(), later);
    assert_eq!(
        ex[0].ports[0].reason.as_deref(),
        Some("no healthy task (--health-check)")
    );

    // explain with the returned cache agrees with the state it came with.
    let ex = explain(&after, &o, &cache2, later);
    assert!(consistent_with(&ex, &s2));
    assert_eq!(
        ex[0].ports[0].backends[0].health,
        HealthVerdict::CachedHealthy
    );
    let reasons: Vec<_> = ex[0].ports[0]
        .excluded_tasks
        .iter()
        .map(|t| t.reason.to_string())
        .collect();
    assert_eq!(
        reasons,
        [
            "not healthy in Marathon: unhealthy (last known; Marathon reports no result now)",
            "not healthy in Marathon: not checked by Marathon yet"
        ]
    );

    // Without --health-check every running task is routed.
    o.health_check = false;
    assert_eq!(web(&run(&after, &o)).map(|b| b.len()), Some(3));
}

/// Mode resolution as marathon-lb: a vhost without MODE is http, MODE=tcp beats an HTTP check
/// (quirk 1), `tcp,udp` in http mode is an HTTP service plus a UDP L4 service, http on a
/// udp-only port is rejected, and TLS passthrough needs a vhost.
#[test]
fn mode_resolution_and_protocol_combinations() {
    let task = |id: &str, port: u16| json!({"id": id, "host": "198.18.2.1", "ports": [port], "state": "TASK_RUNNING"});
    let list = inline(json!([
        {"id": "/vhost", "portDefinitions": [{"port": 10700}],
         "labels": {"HAPROXY_GROUP": "g", "HAPROXY_0_VHOST": "v.example"}, "tasks": [task("a", 1)]},
        {"id": "/forced-tcp", "portDefinitions": [{"port": 10701}],
         "healthChecks": [{"protocol": "HTTP", "path": "/h", "portIndex": 0}],
         "labels": {"HAPROXY_GROUP": "g", "HAPROXY_0_MODE": "tcp"}, "tasks": [task("b", 2)]},
        {"id": "/http-check", "portDefinitions": [{"port": 10702}],
         "healthChecks": [{"protocol": "HTTP", "path": "/h", "portIndex": 0}],
         "labels": {"HAPROXY_GROUP": "g"}, "tasks": [task("c", 3)]},
        {"id": "/quic", "portDefinitions": [{"port": 10703, "protocol": "tcp,udp"}],
         "labels": {"HAPROXY_GROUP": "g", "HAPROXY_0_VHOST": "q.example"}, "tasks": [task("d", 4)]},
        {"id": "/udp-http", "portDefinitions": [{"port": 10704, "protocol": "udp"}],
         "labels": {"HAPROXY_GROUP": "g", "HAPROXY_0_MODE": "http"}, "tasks": [task("e", 5)]},
        {"id": "/passthrough", "portDefinitions": [{"port": 10705}, {"port": 10706}],
         "labels": {"HAPROXY_GROUP": "g", "HAPROXY_0_VHOST": "p.example", "MLB_0_TLS_PASSTHROUGH": "true",
                    "MLB_1_TLS_PASSTHROUGH": "true"}, "tasks": [{"id": "f", "host": "198.18.2.1", "ports": [6, 7], "state": "TASK_RUNNING"}]},
    ]));
    let s = run(&list, &opts(&["g"]));
    assert!(http(&s, "/vhost", 0).is_some());
    let forced = l4(&s, 10701, Protocol::Tcp).expect("MODE=tcp wins over the HTTP check");
    assert!(matches!(
        forced.health_check.as_ref().unwrap().kind,
        HealthCheckKind::Http { .. }
    ));
    assert!(
        http(&s, "/http-check", 0).is_some(),
        "an HTTP check implies http"
    );
    assert!(http(&s, "/quic", 0).is_some());
    assert!(l4(&s, 10703, Protocol::Udp).is_some());
    assert!(
        l4(&s, 10703, Protocol::Tcp).is_none(),
        "tcp side is the HTTP service"
    );
    assert!(
        rejected(&s, "/udp-http")[0]
            .reason
            .contains("HTTP needs tcp")
    );
    assert!(http(&s, "/passthrough", 0).unwrap().tls_passthrough);
    let r = rejected(&s, "/passthrough");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].port_index, Some(1));
    assert!(
        r[0].reason
            .contains("MLB_1_TLS_PASSTHROUGH=true needs HAPROXY_1_VHOST")
    );
}

/// Every behavioural label reaches the HTTP service it configures.
#[test]
fn http_labels_reach_the_service() {
    let list = inline(
        json!([{"id": "/full", "portDefinitions": [{"port": 10800}, {"port": 10801}],
        "labels": {
            "HAPROXY_GROUP": "g", "HAPROXY_0_VHOST": "Full.example.com,www.full.example.com",
            "HAPROXY_0_PATH": "/api", "HAPROXY_0_BALANCE": "source", "HAPROXY_0_STICKY": "true",
            "HAPROXY_0_REDIRECT_TO_HTTPS": "true", "HAPROXY_0_USE_HSTS": "true",
            "HAPROXY_0_SSL_CERT": "/etc/ssl/full.pem", "HAPROXY_0_BIND_ADDR": "198.18.9.9",
            "HAPROXY_0_BIND_OPTIONS": "alpn h2,http/1.1", "HAPROXY_0_PORT": "10900",
            "HAPROXY_0_AUTH": "Restricted:admin:$6$abc$def",
            "HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL": "198.18.0.0/16",
            "HAPROXY_0_HTTP_BACKEND_PROXYPASS_PATH": "/api", "HAPROXY_0_HTTP_BACKEND_REVPROXY_PATH": "/api",
            "HAPROXY_0_HTTP_BACKEND_REDIR": "/home", "HAPROXY_0_BACKEND_WEIGHT": "7",
            "HAPROXY_0_BACKEND_HEALTHCHECK_PORT_INDEX": "1"},
        "healthChecks": [{"protocol": "HTTP", "path": "/status", "portIndex": 1, "intervalSeconds": 7}],
        "tasks": [{"id": "t", "host": "198.18.2.2", "ports": [1000, 1001], "state": "TASK_RUNNING"}]}]),
    );
    let s = run(&list, &opts(&["g"]));
    let svc = http(&s, "/full", 0).expect("http service");
    assert_eq!(svc.service_port, 10900, "HAPROXY_0_PORT overrides");
    assert_eq!(svc.vhosts, ["full.example.com", "www.full.example.com"]);
    assert_eq!(svc.paths, ["/api"]);
    assert_eq!(svc.balance, Balance::Source);
    assert!(svc.sticky && svc.redirect_to_https && svc.use_hsts);
    assert_eq!(
        svc.ssl_certs,
        [std::path::PathBuf::from("/etc/ssl/full.pem")]
    );
    assert_eq!(svc.bind_addr, Some("198.18.9.9".parse().unwrap()));
    assert_eq!(svc.tls.alpn, ["h2", "http/1.1"]);
    assert_eq!(svc.auth.as_ref().unwrap().realm, "Restricted");
    assert_eq!(svc.allowed_networks.len(), 1);
    assert_eq!(svc.proxypass_path.as_deref(), Some("/api"));
    assert_eq!(svc.revproxy_path.as_deref(), Some("/api"));
    assert_eq!(svc.redirect_root_to.as_deref(), Some("/home"));
    assert_eq!(svc.weight, 7);
    let hc = svc.health_check.as_ref().unwrap();
    assert_eq!(
        (hc.port_index, hc.interval, &hc.kind),
        (
            1,
            Duration::from_secs(7),
            &HealthCheckKind::Http {
                path: "/status".into()
            }
        )
    );
    assert_eq!(addrs(&svc.backends), [active("198.18.2.2:1000")]);
    // Port 1 has the HTTP check itself: http mode, on its own port.
    assert_eq!(http(&s, "/full", 1).unwrap().service_port, 10801);
}

/// The result does not depend on the order Marathon lists apps in (no auto-assignment clash
/// here), so several mlb instances agree.
#[test]
fn state_is_independent_of_api_order() {
    let list = fixture("mixed_apps.json");
    let mut reversed = list.clone();
    reversed.apps.reverse();
    let o = opts(&["*"]);
    assert_eq!(run(&list, &o), run(&reversed, &o));
}

/// `mlb explain`: consistent with the state, names group mismatches on both sides, and renders
/// as text and JSON.
#[test]
fn explain_matches_state_and_renders() {
    let list = fixture("mixed_apps.json");
    let mut o = opts(&["external"]);
    o.framework_name = Some("marathon-lb".into());
    let s = run(&list, &o);
    let ex = explain(&list, &o, &HealthCache::new(), now());
    assert!(consistent_with(&ex, &s));
    let exposed: usize = ex
        .iter()
        .flat_map(|a| &a.ports)
        .filter(|p| p.exposed)
        .count();
    assert_eq!(exposed, s.l4.len() + s.http.len());
    let text = render_text(&ex);
    assert!(text.contains("/int: NOT EXPOSED"), "{text}");
    assert!(
        text.contains("NOT EXPOSED: group mismatch: app is in group(s) internal, this mlb serves --group external"),
        "{text}"
    );
    assert!(text.contains("/ext: exposed"), "{text}");
    assert!(
        text.contains("backend ext.t1:0 198.18.1.1:31500 active"),
        "{text}"
    );
    assert!(
        text.contains("label HAPROXY_0_PORT=\"abc\": not a port number"),
        "{text}"
    );
    let json = serde_json::to_value(&ex).unwrap();
    assert_eq!(json.as_array().unwrap().len(), ex.len());
}

/// TCP-mode labels reach the L4 service: `BALANCE=source` and the allow-list on tcp and udp
/// ports; `leastconn` on a tcp port is served by hash, with a warning `mlb explain` shows.
#[test]
fn tcp_mode_balance_and_allowed_networks_reach_the_l4_service() {
    let list = inline(json!([
        {"id": "/db", "portDefinitions": [{"port": 10810, "protocol": "tcp,udp"}],
         "labels": {"HAPROXY_GROUP": "g", "HAPROXY_0_BALANCE": "source",
                    "HAPROXY_0_BACKEND_NETWORK_ALLOWED_ACL": "198.18.1.0/24 fd00::/8"},
         "tasks": [{"id": "t", "host": "198.18.2.2", "ports": [1000], "state": "TASK_RUNNING"}]},
        {"id": "/cache", "portDefinitions": [{"port": 10811}],
         "labels": {"HAPROXY_GROUP": "g", "HAPROXY_0_BALANCE": "leastconn"},
         "tasks": [{"id": "t", "host": "198.18.2.3", "ports": [1000], "state": "TASK_RUNNING"}]}
    ]));
    let o = opts(&["g"]);
    let s = run(&list, &o);
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let db = l4(&s, 10810, protocol).expect("an ACL no longer hides the port");
        assert_eq!(db.balance, Balance::Source);
        assert!(db.allows("198.18.1.77".parse().unwrap()));
        assert!(db.allows("fd00::5".parse().unwrap()));
        assert!(!db.allows("198.18.3.1".parse().unwrap()));
    }
    let cache = l4(&s, 10811, Protocol::Tcp).expect("leastconn is served");
    assert_eq!(cache.balance, Balance::LeastConn);
    assert!(
        cache.allows("198.18.3.1".parse().unwrap()),
        "no list: everyone"
    );
    assert!(s.rejected.is_empty(), "{:?}", s.rejected);
    let warned: Vec<_> = s.warnings.iter().filter(|w| w.app_id == "/cache").collect();
    assert_eq!(warned.len(), 1, "{:?}", s.warnings);
    assert!(
        warned[0].message.contains("BALANCE=leastconn"),
        "{warned:?}"
    );
    let text = render_text(&explain(&list, &o, &HealthCache::new(), now()));
    assert!(
        text.contains("HAPROXY_0_BALANCE=leastconn on a tcp-mode port"),
        "{text}"
    );
}
