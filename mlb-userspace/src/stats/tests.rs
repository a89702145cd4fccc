use std::{
    collections::HashSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use super::{
    csv::{self, ParseError, Record},
    *,
};
use crate::model::{
    Backend, BackendId, BackendState, DesiredState, HealthCheck, HealthCheckKind, HttpService,
    L4Service, L4ServiceKey, Protocol,
};

/// zdd's `find_drained_task_ids` test on one listener: MAINT with no current or queued session.
fn zdd_drained(row: &Record) -> bool {
    row.get("status") == "MAINT" && row.int("scur") == Ok(0) && row.int("qcur") == Ok(0)
}

fn backend(id: &str, addr: [u8; 4], port: u16, state: BackendState) -> Backend {
    Backend {
        id: BackendId::from(id),
        addr: SocketAddr::from((addr, port)),
        weight: 1,
        state,
    }
}

fn tcp_check() -> HealthCheck {
    HealthCheck {
        kind: HealthCheckKind::Tcp,
        port_index: 0,
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        max_consecutive_failures: 3,
    }
}

/// A zdd in progress (`/nginx` on 10000: two old tasks draining, two new ones, one of which fails
/// its check), a TCP service without health check and a UDP one on the same port.
fn state() -> DesiredState {
    let mut state = DesiredState::default();
    let mut web = HttpService::new("/nginx", 0, 10000);
    web.health_check = Some(tcp_check());
    web.backends = vec![
        backend("green.1:0", [10, 0, 6, 25], 31184, BackendState::Draining),
        backend("green.2:0", [10, 0, 6, 26], 31185, BackendState::Draining),
        backend("blue.1:0", [10, 0, 6, 27], 31186, BackendState::Active),
        backend("blue.2:0", [10, 0, 6, 28], 31187, BackendState::Active),
    ];
    state.http.insert(web.key.clone(), std::sync::Arc::new(web));
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let key = L4ServiceKey {
            port: 10053,
            protocol,
        };
        let svc = L4Service {
            key,
            app_id: "/infra/dns".into(),
            bind_addr: None,
            backends: vec![backend("dns.1:0", [10, 0, 7, 1], 53, BackendState::Active)],
            health_check: None,
            tuning: Default::default(),
            balance: Default::default(),
            allowed_networks: Vec::new(),
        };
        state.l4.insert(key, svc);
    }
    state
}

fn observed() -> Observed {
    let mut o = Observed::default();
    let http = |scur, hrsp: [u64; 6]| Counters {
        scur,
        stot: hrsp.iter().sum::<u64>() + scur,
        bin: 100,
        bout: Some(1000),
        hrsp: Some(hrsp),
    };
    o.http
        .insert(BackendId::from("green.1:0"), http(0, [0, 7, 0, 1, 0, 0]));
    o.http
        .insert(BackendId::from("green.2:0"), http(2, [0, 5, 1, 0, 1, 0]));
    o.http
        .insert(BackendId::from("blue.1:0"), http(1, [0, 3, 0, 0, 0, 0]));
    let tcp = L4ServiceKey {
        port: 10053,
        protocol: Protocol::Tcp,
    };
    let l4 = Counters {
        scur: 4,
        stot: 9,
        bin: 10,
        bout: Some(20),
        hrsp: None,
    };
    o.l4.insert((tcp, BackendId::from("dns.1:0")), l4);
    o
}

/// The rows of `csv_text`, which must parse by zdd's rules and never contain its quote
/// character.
fn rows_of(csv_text: &str) -> Vec<Record> {
    assert!(
        !csv_text.contains('\''),
        "zdd's quote character in {csv_text}"
    );
    csv::parse(csv_text).unwrap_or_else(|e| panic!("{e}: {csv_text}"))
}

fn row<'a>(rows: &'a [Record], px: &str, sv: &str) -> &'a Record {
    rows.iter()
        .find(|r| r.get("pxname") == px && r.get("svname") == sv)
        .unwrap_or_else(|| panic!("no row {px}/{sv}"))
}

#[test]
fn header_is_haproxy_2_0s_with_a_trailing_comma() {
    let text = csv::render(&Snapshot::default());
    assert_eq!(text.lines().count(), 1, "no services: the header only");
    let header = text.lines().next().unwrap();
    assert!(header.starts_with("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,"));
    assert!(header.ends_with(",idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,"));
    assert!(header.contains(",status,weight,"), "{header}");
    assert!(!header.contains(",-,"), "HAProxy 2.2's column breaks zdd");
    assert_eq!(header.matches(',').count(), 99);
    assert!(text.ends_with('\n'));
}

#[test]
fn zdd_finds_the_draining_servers_and_their_sessions() {
    let unhealthy: HashSet<BackendId> = [BackendId::from("blue.2:0")].into();
    let snapshot = build(&state(), &unhealthy, &observed());
    let text = csv::render(&snapshot);
    let rows = rows_of(&text);

    // zdd's fetch_app_listeners: the group's server rows.
    let listeners: Vec<_> = rows
        .iter()
        .filter(|r| r.get("pxname") == "nginx_10000" && r.is_server())
        .collect();
    let names: Vec<&str> = listeners.iter().map(|r| r.get("svname")).collect();
    assert_eq!(
        names,
        [
            "10_0_6_25_31184",
            "10_0_6_26_31185",
            "10_0_6_27_31186",
            "10_0_6_28_31187"
        ],
        "marathon-lb's server names, which zdd derives from the task's host and port"
    );
    let status: Vec<&str> = listeners.iter().map(|r| r.get("status")).collect();
    assert_eq!(status, ["MAINT", "MAINT", "UP", "DOWN"]);
    let drained: Vec<&str> = listeners
        .iter()
        .filter(|r| zdd_drained(r))
        .map(|r| r.get("svname"))
        .collect();
    assert_eq!(
        drained,
        ["10_0_6_25_31184"],
        "the other draining one has sessions"
    );
    assert_eq!(listeners[1].get("scur"), "2");
    assert_eq!(listeners[1].get("hrsp_2xx"), "5");
    assert_eq!(listeners[1].get("hrsp_5xx"), "1");
    assert_eq!(listeners[1].get("check_status"), "L4OK");
    assert_eq!(listeners[3].get("check_status"), "L4CON");

    // Every LB answers alike; zdd parses them concatenated and divides by their number.
    let two = rows_of(&(text.clone() + &text));
    assert_eq!(two.len(), 2 * rows.len(), "the second header is skipped");
}

#[test]
fn frontend_and_backend_rows_sum_their_servers() {
    let unhealthy = HashSet::new();
    let rows = rows_of(&csv::render(&build(&state(), &unhealthy, &observed())));
    let fe = row(&rows, "nginx_10000", "FRONTEND");
    assert_eq!((fe.get("status"), fe.get("type")), ("OPEN", "0"));
    assert_eq!((fe.get("scur"), fe.get("stot")), ("3", "21"));
    assert_eq!((fe.get("bin"), fe.get("bout")), ("300", "3000"));
    assert_eq!(fe.get("hrsp_2xx"), "15");
    assert_eq!(fe.get("req_tot"), "18");
    assert_eq!(fe.get("mode"), "http");
    let be = row(&rows, "nginx_10000", "BACKEND");
    assert_eq!((be.get("status"), be.get("type")), ("UP", "1"));
    assert_eq!(
        be.get("act"),
        "2",
        "the draining servers take no new sessions"
    );
    assert_eq!(be.get("scur"), "3");

    let dns = row(&rows, "infra_dns_10053", "10_0_7_1_53");
    assert_eq!(dns.get("status"), "no check", "no health check defined");
    assert_eq!((dns.get("scur"), dns.get("bout")), ("4", "20"));
    assert_eq!(dns.get("hrsp_2xx"), "", "not an HTTP service");
    assert_eq!(dns.get("mode"), "tcp");
    let udp = row(&rows, "infra_dns_10053_udp", "10_0_7_1_53");
    assert_eq!(udp.get("stot"), "0", "not seen by the dataplane yet");
    assert_eq!(udp.get("mode"), "udp");
}

#[test]
fn a_service_with_every_server_out_of_rotation_is_down() {
    let unhealthy: HashSet<BackendId> =
        [BackendId::from("blue.1:0"), BackendId::from("blue.2:0")].into();
    let rows = rows_of(&csv::render(&build(
        &state(),
        &unhealthy,
        &Observed::default(),
    )));
    assert_eq!(row(&rows, "nginx_10000", "BACKEND").get("status"), "DOWN");
    assert_eq!(
        row(&rows, "nginx_10000", "10_0_6_25_31184").get("scur"),
        "0"
    );
}

#[test]
fn xdp_counters_are_found_by_backend_address() {
    let mut observed = Observed::default();
    let counted = Counters {
        scur: 1,
        stot: 5,
        bin: 999,
        bout: None,
        hrsp: None,
    };
    observed
        .l4_by_addr
        .insert(SocketAddr::from(([10, 0, 7, 1], 53)), counted);
    let rows = rows_of(&csv::render(&build(&state(), &HashSet::new(), &observed)));
    let dns = row(&rows, "infra_dns_10053", "10_0_7_1_53");
    assert_eq!((dns.get("stot"), dns.get("bin")), ("5", "999"));
    assert_eq!(dns.get("bout"), "", "XDP counts both directions in bin");
}

#[test]
fn names_are_marathon_lbs_and_never_break_the_csv() {
    assert_eq!(proxy_name("/group/web", 10001), "group_web_10001");
    assert_eq!(
        server_name(SocketAddr::from(([10, 0, 2, 148], 1565))),
        "10_0_2_148_1565"
    );
    assert_eq!(server_name("[fd00::1]:80".parse().unwrap()), "fd00__1_80");
    let mut state = DesiredState::default();
    let svc = HttpService::new("/odd,name's", 0, 10002);
    state.http.insert(svc.key.clone(), std::sync::Arc::new(svc));
    let rows = rows_of(&csv::render(&build(
        &state,
        &HashSet::new(),
        &Observed::default(),
    )));
    assert_eq!(rows[0].get("pxname"), "odd_name_s_10002");
}

#[test]
fn last_change_counts_from_the_latest_status_change() {
    let t0 = Instant::now();
    let mut tracker = ChangeTracker::default();
    let healthy = HashSet::new();
    let sick: HashSet<BackendId> = [BackendId::from("blue.2:0")].into();
    let lastchg = |snap: &Snapshot| snap.proxies[2].servers[3].last_change;

    let mut s = build(&state(), &healthy, &Observed::default());
    tracker.stamp(&mut s, t0);
    assert_eq!(lastchg(&s), Some(Duration::ZERO));
    let mut s = build(&state(), &healthy, &Observed::default());
    tracker.stamp(&mut s, t0 + Duration::from_secs(30));
    assert_eq!(
        lastchg(&s),
        Some(Duration::from_secs(30)),
        "unchanged since t0"
    );
    let mut s = build(&state(), &sick, &Observed::default());
    tracker.stamp(&mut s, t0 + Duration::from_secs(40));
    assert_eq!(lastchg(&s), Some(Duration::ZERO), "went DOWN now");
    let mut s = build(&state(), &sick, &Observed::default());
    tracker.stamp(&mut s, t0 + Duration::from_secs(45));
    assert_eq!(lastchg(&s), Some(Duration::from_secs(5)));
}

#[test]
fn the_parser_refuses_what_zdd_would_choke_on() {
    let good = csv::render(&build(&state(), &HashSet::new(), &Observed::default()));
    assert!(csv::parse(&good).is_ok());
    assert_eq!(csv::parse(""), Err(ParseError::NoHeader));
    let with_dash = good.replacen("need_conn_est,", "need_conn_est,-,", 1);
    assert!(matches!(
        csv::parse(&with_dash),
        Err(ParseError::BadColumn { .. })
    ));
    let short = good.replacen(",OPEN,", ",OPEN", 1);
    assert!(matches!(
        csv::parse(&short),
        Err(ParseError::Width { line: 2, .. })
    ));
    let blank = good.clone() + "\n";
    assert!(matches!(
        csv::parse(&blank),
        Err(ParseError::EmptyLine { .. })
    ));
}

/// Runs `promtool check metrics` (Debian's prometheus package, installed by `cargo xtask
/// setup`) on `exposition`; its complaints, if any.
pub(crate) fn promtool_check(exposition: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool (cargo xtask setup installs it): {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(exposition.as_bytes())
        .map_err(|e| e.to_string())?;
    drop(stdin);
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

#[test]
fn metrics_parse_with_promtool_and_carry_the_snapshot() {
    let mut snapshot = build(&state(), &HashSet::new(), &observed());
    snapshot.xdp = Some(XdpGlobals {
        counters: vec![("total", 10), ("verdict_tx", 7), ("drop_snat_exhausted", 1)],
        conntrack_entries: 4,
        snat_ports: vec![("198_18_2_10_80".into(), 3, 28_232)],
    });
    let status = crate::controller::Status {
        synced: true,
        ..Default::default()
    };
    let text = metrics::render(&snapshot, &status);
    promtool_check(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    for line in [
        "mlb_synced 1",
        "mlb_server_current_sessions{backend=\"nginx_10000\",server=\"10_0_6_26_31185\"} 2",
        "mlb_server_http_responses_total{backend=\"nginx_10000\",server=\"10_0_6_26_31185\",code=\"5xx\"} 1",
        "mlb_server_state{backend=\"nginx_10000\",server=\"10_0_6_25_31184\",state=\"MAINT\"} 1",
        "mlb_server_state{backend=\"nginx_10000\",server=\"10_0_6_25_31184\",state=\"UP\"} 0",
        "mlb_frontend_http_responses_total{frontend=\"nginx_10000\",code=\"2xx\"} 15",
        "mlb_backend_up{backend=\"nginx_10000\"} 1",
        "mlb_server_bytes_out_total{backend=\"infra_dns_10053\",server=\"10_0_7_1_53\"} 20",
        "mlb_xdp_packets_total{counter=\"drop_snat_exhausted\"} 1",
        "mlb_xdp_conntrack_entries 4",
        "mlb_xdp_snat_ports_used{server=\"198_18_2_10_80\"} 3",
        "mlb_xdp_snat_ports_capacity{server=\"198_18_2_10_80\"} 28232",
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line} in\n{text}");
    }
}

#[test]
fn rate_is_new_sessions_per_second_over_at_least_a_second() {
    let t0 = Instant::now();
    let mut tracker = ChangeTracker::default();
    let with_stot = |stot: u64| {
        let mut o = observed();
        let key = L4ServiceKey {
            port: 10053,
            protocol: Protocol::Tcp,
        };
        o.l4.get_mut(&(key, BackendId::from("dns.1:0")))
            .expect("dns counters")
            .stot = stot;
        build(&state(), &HashSet::new(), &o)
    };
    let rate = |s: &Snapshot| s.proxies[0].servers[0].rate;
    let mut s = with_stot(100);
    tracker.stamp(&mut s, t0);
    assert_eq!(rate(&s), None, "one sample: no rate yet");
    let mut s = with_stot(150);
    tracker.stamp(&mut s, t0 + Duration::from_millis(200));
    assert_eq!(rate(&s), None, "too soon to measure");
    let mut s = with_stot(300);
    tracker.stamp(&mut s, t0 + Duration::from_secs(2));
    assert_eq!(rate(&s), Some(100), "200 sessions in 2 s");
    let rows = rows_of(&csv::render(&s));
    assert_eq!(
        row(&rows, "infra_dns_10053", "10_0_7_1_53").get("rate"),
        "100"
    );
    assert_eq!(row(&rows, "infra_dns_10053", "FRONTEND").get("rate"), "100");
    let mut s = with_stot(300);
    tracker.stamp(&mut s, t0 + Duration::from_millis(2500));
    assert_eq!(rate(&s), Some(100), "kept until the next full interval");
    let mut s = with_stot(300);
    tracker.stamp(&mut s, t0 + Duration::from_secs(4));
    assert_eq!(rate(&s), Some(0), "idle");
}

/// The `<tr>` of `name` in proxy `px` of a stats page.
fn page_row<'a>(page: &'a str, px: &str, name: &str) -> &'a str {
    let attrs = format!("data-proxy=\"{px}\" data-name=\"{name}\"");
    let at = page
        .find(&attrs)
        .unwrap_or_else(|| panic!("no row {px}/{name} in {page}"));
    let start = page[..at].rfind("<tr").expect("row start");
    let end = at + page[at..].find("</tr>").expect("row end");
    &page[start..end]
}

#[test]
fn the_page_shows_every_row_with_its_state_and_figures() {
    let page = html::render(&build(&state(), &HashSet::new(), &observed()), true);
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    assert!(
        !page.contains("src=") && !page.contains("<link"),
        "no external asset"
    );
    let draining = page_row(&page, "nginx_10000", "10_0_6_26_31185");
    assert!(draining.contains("class=\"srv st-maint\"") && draining.contains(">MAINT<"));
    assert!(
        draining.contains("<td>2</td>"),
        "2 sessions open: {draining}"
    );
    let up = page_row(&page, "nginx_10000", "10_0_6_27_31186");
    assert!(up.contains("data-status=\"UP\"") && up.contains("Health check passed"));
    let be = page_row(&page, "nginx_10000", "Backend");
    assert!(be.contains("class=\"be st-up\""), "{be}");
    let dns = page_row(&page, "infra_dns_10053", "10_0_7_1_53");
    assert!(dns.contains("data-status=\"no check\""), "{dns}");
    assert!(page_row(&page, "infra_dns_10053_udp", "Frontend").contains(">OPEN<"));

    let sick: HashSet<BackendId> = [BackendId::from("blue.2:0")].into();
    let page = html::render(&build(&state(), &sick, &observed()), false);
    assert!(!page.contains("http-equiv=\"refresh\""));
    let down = page_row(&page, "nginx_10000", "10_0_6_28_31187");
    assert!(down.contains("st-down") && down.contains("Health check failed"));
}

/// The value of the sample `series` (name and labels) in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn live_metrics_are_exposed_and_parse_with_promtool() {
    let live = live::live();
    // The live metrics are process-wide: this test's own backend and server names, and
    // counts compared before and after.
    let status = crate::controller::Status::default();
    let before = metrics::render(&Snapshot::default(), &status);
    live.request_done("live_test_10999".into(), Duration::from_millis(20));
    live.request_done("live_test_10999".into(), Duration::from_millis(3));
    live.health_check_failed("live_test_server_1".into());
    live.event_received();
    live.event_received();
    live.event_applied(Duration::from_millis(40));
    live.error(live::ErrorKind::BackendTimeout);
    let text = metrics::render(&Snapshot::default(), &status);
    promtool_check(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    let grew = |series: &str| {
        sample(&text, series).unwrap_or_else(|| panic!("no {series} in {text}"))
            - sample(&before, series).unwrap_or(0.0)
    };
    let backend = "{backend=\"live_test_10999\"}";
    assert_eq!(
        grew(&format!("mlb_http_request_duration_seconds_count{backend}")),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "mlb_http_request_duration_seconds_bucket{le=\"0.004\",backend=\"live_test_10999\"}"
        ),
        Some(1.0),
        "3 ms is in the 4 ms bucket, 20 ms not: {text}"
    );
    assert_eq!(
        grew("mlb_health_check_failures_total{server=\"live_test_server_1\"}"),
        1.0
    );
    assert!(grew("mlb_marathon_events_total") >= 2.0);
    assert!(grew("mlb_event_to_dataplane_seconds_count") >= 1.0);
    assert!(grew("mlb_errors_total{kind=\"backend_timeout\"}") >= 1.0);
}
