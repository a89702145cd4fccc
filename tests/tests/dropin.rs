//! mlb as a drop-in for marathon-lb: the stock DC/OS package's command line and environment
//! start the real `mlb` binary, which serves the apps; SIGTERM drains before exiting.
//!
//! The stock-line test runs mlb and the Marathon simulator in a network namespace of its own
//! (the line binds :80, :443, :9090, :9091 and reads Marathon on :8080), so it needs root and
//! says SKIPPED otherwise; the graceful-stop test runs on loopback ports of its own.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::net::UnixDatagram,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use dropin_common::{LOCALHOST, in_netns_lab, task_ids, vhost_app};
use mlb_tests::{
    agent::{IO_TIMEOUT, Mlb, free_port, http_get, loopback_args, wait_for},
    marathon_sim::{Agent as SimAgent, MarathonSim, SimConfig},
    mlb_bin::mlb_bin,
    netns::Netns,
    privileges::require_netns_and_bpf,
};
use serde_json::{Value, json};

mod dropin_common;

/// The DC/OS universe package's `args` for marathon-lb (1.15), `{marathon}` standing for
/// `http://marathon.mesos:8080`.
const STOCK_ARGS: &[&str] = &[
    "sse",
    "-m",
    "{marathon}",
    "--health-check",
    "--haproxy-map",
    "--max-reload-retries",
    "10",
    "--reload-interval",
    "10",
    "--group",
    "external",
];

/// The package's `env` (its defaults), plus what Marathon sets for a task.
const STOCK_ENV: &[(&str, &str)] = &[
    (
        "HAPROXY_SYSCTL_PARAMS",
        "net.ipv4.tcp_tw_reuse=1 net.ipv4.tcp_fin_timeout=30 net.ipv4.tcp_max_syn_backlog=10240 \
         net.ipv4.tcp_max_tw_buckets=400000 net.ipv4.tcp_max_orphans=60000 net.core.somaxconn=10000",
    ),
    (
        "HAPROXY_GLOBAL_DEFAULT_OPTIONS",
        "redispatch,http-server-close,dontlognull",
    ),
    ("PORTS", "80,443,9090,9091"),
];

fn run(test: &str, body: fn() -> Result<()>) {
    if let Err(e) = body() {
        panic!("{test}: {e:#}");
    }
}

/// A CA and a certificate for `name` signed by it: (chain + key PEM, the CA's DER).
fn certificate(name: &str) -> Result<(String, rustls_pki_types::CertificateDer<'static>)> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let leaf =
        rcgen::CertificateParams::new(vec![name.to_owned()])?.signed_by(&key, &ca, &ca_key)?;
    Ok((leaf.pem() + &key.serialize_pem(), ca.der().clone()))
}

/// `GET /` over TLS with SNI and Host `name`, trusting only `ca`; the raw response.
fn https_get(
    addr: SocketAddr,
    name: &str,
    ca: rustls_pki_types::CertificateDer<'static>,
) -> Result<String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let server = rustls_pki_types::ServerName::try_from(name.to_owned())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), server)?;
    let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    tcp.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    // A peer closing without close_notify is fine once the answer is read.
    let _ = tls.read_to_string(&mut out);
    ensure!(!out.is_empty(), "no answer over TLS from {addr}");
    Ok(out)
}

/// Datagrams received on `socket` within `timeout`.
fn syslog_lines(socket: &UnixDatagram, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 8192];
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .ok();
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    lines
}

#[test]
fn stock_dcos_package_line_and_environment_serve_the_apps() {
    if !require_netns_and_bpf("stock_dcos_package_line_and_environment_serve_the_apps") {
        return;
    }
    run("stock package line", stock_line);
}

fn stock_line() -> Result<()> {
    let (cert_pem, ca) = certificate("web.dropin.test")?;
    let dir = std::env::temp_dir().join(format!("mlbt-dropin-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let syslog_path = dir.join("syslog.sock");
    let syslog = UnixDatagram::bind(&syslog_path)?;
    let mut env: Vec<(String, String)> = STOCK_ENV
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.push(("HAPROXY_SSL_CERT".into(), cert_pem));
    env.push(("SYSLOG_SOCKET".into(), syslog_path.display().to_string()));
    let result = in_netns_lab(&mlb_bin(), STOCK_ARGS, &env, Vec::new(), |ns, sim, mlb| {
        check_stock_agent(ns, sim, mlb, ca, &syslog)
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn check_stock_agent(
    ns: &Netns,
    sim: &MarathonSim,
    mlb: &Mlb<'_>,
    ca: rustls_pki_types::CertificateDer<'static>,
    syslog: &UnixDatagram,
) -> Result<()> {
    let web = task_ids(sim, "/web");
    // :443 serves the certificate from HAPROXY_SSL_CERT (the client trusts only its CA).
    let https =
        ns.enter(|| https_get(SocketAddr::new(LOCALHOST, 443), "web.dropin.test", ca))??;
    ensure!(
        https.starts_with("HTTP/1.1 200") && web.iter().any(|t| https.contains(t.as_str())),
        "HTTPS vhost: {https}"
    );

    let log = mlb.log();
    let notices: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("marathon-lb flags without effect"))
        .collect();
    ensure!(
        notices.len() == 1,
        "one line for the HAProxy-only flags:\n{log}"
    );
    for flag in ["--haproxy-map", "--max-reload-retries", "--reload-interval"] {
        ensure!(
            notices[0].contains(flag),
            "{flag} not named: {}",
            notices[0]
        );
    }
    for needle in [
        "HAPROXY_SYSCTL_PARAMS not applied",
        "HAPROXY_GLOBAL_DEFAULT_OPTIONS: dontlognull",
        "certificates from HAPROXY_SSL_CERT",
    ] {
        ensure!(log.contains(needle), "{needle:?} not in the log:\n{log}");
    }
    ensure!(!log.contains("BEGIN PRIVATE KEY"), "no secret in the log");
    let sent = syslog_lines(syslog, Duration::from_millis(300));
    ensure!(
        sent.iter()
            .any(|l| l.starts_with("<14>mlb[") && l.contains("marathon-lb flags without effect")),
        "syslog got {sent:?}"
    );
    Ok(())
}

#[test]
fn sigterm_drains_health_then_listeners_then_in_flight_requests() {
    run("graceful stop", graceful_stop);
}

fn graceful_stop() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let config = SimConfig {
        agents: vec![SimAgent::local(LOCALHOST)],
        step_delay: Duration::from_millis(100),
        apps: vec![vhost_app("/slow", free_port(), "slow.dropin.test")],
        ..SimConfig::default()
    };
    let sim = rt.block_on(MarathonSim::start(config))?;
    let (http_port, https_port, appid_port) = (free_port(), free_port(), free_port());
    let http = SocketAddr::new(LOCALHOST, http_port);
    let mut args = loopback_args(&sim.url(), http_port, https_port, appid_port);
    args.extend(["--drain-delay", "1", "--shutdown-timeout", "10"].map(String::from));
    let mut mlb = Mlb::start(None, SocketAddr::new(LOCALHOST, free_port()), &args)?;
    let tasks = task_ids(&sim, "/slow");
    mlb.wait_routed("/slow", 0, &tasks)?;

    // A request the backend answers after 2.5 s: still in flight when the listeners close.
    let slow = std::thread::spawn(move || {
        let mut conn = mlb_tests::agent::HttpConn::open(http)?;
        conn.get("slow.dropin.test", "/?delay_ms=2500", true)
    });
    std::thread::sleep(Duration::from_millis(300));
    let term = Instant::now();
    // SAFETY: kill(2) on the PID of the agent this test started and has not reaped.
    unsafe { libc::kill(i32::try_from(mlb.pid())?, libc::SIGTERM) };

    let health = wait_for(
        "the health check to answer 503",
        Duration::from_secs(1),
        || {
            let reply = mlb.admin_get("/_haproxy_health_check")?;
            Ok((reply.status == 503).then_some(term.elapsed()))
        },
    )?;
    ensure!(health < Duration::from_millis(500), "503 after {health:?}");
    // Within --drain-delay new requests are still served.
    let during = http_get(http, "slow.dropin.test", "/")?;
    ensure!(
        term.elapsed() < Duration::from_secs(1) && tasks.contains(&during.task_id()?),
        "served during the drain delay"
    );
    let closed = wait_for("the listener to close", Duration::from_secs(3), || {
        let refused = TcpStream::connect_timeout(&http, IO_TIMEOUT).is_err();
        Ok(refused.then_some(term.elapsed()))
    })?;
    ensure!(
        closed >= Duration::from_millis(900),
        "listener closed after {closed:?}, before --drain-delay"
    );
    let status = mlb.terminate(Duration::from_secs(10))?;
    let exited = term.elapsed();
    let answer = slow
        .join()
        .map_err(|_| anyhow::anyhow!("slow request thread panicked"))??;
    ensure!(
        tasks.contains(&answer.task_id()?),
        "the request in flight finished: {answer:?}"
    );
    ensure!(status.success(), "exit status {status}");
    ensure!(
        exited >= Duration::from_millis(2200),
        "exited after {exited:?}, before the request in flight finished"
    );
    eprintln!(
        "SIGTERM: 503 after {health:?}, listener closed after {closed:?}, exit after {exited:?}"
    );
    mlb.finish();
    Ok(())
}

/// The repository's `deploy/` directory.
fn deploy_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The simulator binds a task's ports itself: without `requirePorts` it takes free ones instead
/// of mlb's 80, 443, 9090 and 9091 (which the real task, mlb, binds).
fn as_simulated_task(mut app: Value) -> Value {
    app["requirePorts"] = json!(false);
    app
}

fn marathon_app() -> Result<Value> {
    let path = deploy_dir().join("marathon/mlb.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// Old instances Marathon kills at once when replacing `n` (TaskReplaceActor): `n -
/// ceil(n × minimumHealthCapacity)`, or one when that equals the capacity ceiling `floor(n × (1 +
/// maximumOverCapacity))` (it then kills one to make room), and the instances it may run at once.
fn marathon_upgrade_step(n: u32, min_health: f64, over: f64) -> (u32, u32) {
    let min_healthy = (f64::from(n) * min_health).ceil() as u32;
    let max_capacity = (f64::from(n) * (1.0 + over)).floor() as u32;
    let kill_now = if min_healthy == max_capacity {
        n - min_healthy + 1
    } else {
        n.saturating_sub(min_healthy)
    };
    (kill_now, max_capacity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marathon_app_definition_is_valid_and_upgrades_one_agent_at_a_time() {
    let app = marathon_app().unwrap();
    assert_eq!(app["networks"], json!([{"mode": "host"}]));
    assert_eq!(app["constraints"], json!([["hostname", "UNIQUE"]]));
    assert_eq!(app["acceptedResourceRoles"], json!(["slave_public"]));
    assert_eq!(app["container"]["docker"]["privileged"], false);
    let caps: Vec<&str> = app["container"]["docker"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["key"] == "cap-add")
        .map(|p| p["value"].as_str().unwrap())
        .collect();
    assert_eq!(caps, ["BPF", "NET_ADMIN", "SYS_ADMIN", "NET_BIND_SERVICE"]);
    let check = &app["healthChecks"][0];
    assert_eq!(check["path"], "/_haproxy_health_check");
    let index = check["portIndex"].as_u64().unwrap() as usize;
    assert_eq!(
        app["portDefinitions"][index]["port"], 9090,
        "the admin port"
    );
    // Marathon waits this long after SIGTERM before SIGKILL: room for the drain.
    assert!(app["taskKillGracePeriodSeconds"].as_u64().unwrap() >= 5 + 30);
    let strategy = &app["upgradeStrategy"];
    let (min_health, over) = (
        strategy["minimumHealthCapacity"].as_f64().unwrap(),
        strategy["maximumOverCapacity"].as_f64().unwrap(),
    );
    for n in 1..=50 {
        let (kill_now, capacity) = marathon_upgrade_step(n, min_health, over);
        assert_eq!(kill_now, 1, "{n} agents: {kill_now} taken down at once");
        // One instance per agent on fixed ports: no room for extra instances.
        assert_eq!(capacity, n, "{n} agents: capacity {capacity}");
    }
    // Marathon's own parsing (the simulator's): it accepts and deploys the definition.
    let sim = MarathonSim::start(SimConfig::default()).await.unwrap();
    let id = sim.create_app(as_simulated_task(app)).await.unwrap();
    assert_eq!(id, "/mlb");
    assert_eq!(sim.running_tasks("/mlb").len(), 1);
}

#[test]
fn marathon_app_args_start_mlb_and_serve() {
    if !require_netns_and_bpf("marathon_app_args_start_mlb_and_serve") {
        return;
    }
    run("mlb.json args", || {
        let app = marathon_app()?;
        let args: Vec<String> = app["args"]
            .as_array()
            .context("args")?
            .iter()
            .map(|a| {
                a.as_str()
                    .unwrap_or_default()
                    .replace("http://marathon.mesos:8080", "{marathon}")
            })
            .collect();
        ensure!(
            args.iter().any(|a| a == "{marathon}"),
            "args name Marathon: {args:?}"
        );
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(String, String)> = app["env"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        // mlb's own app is in Marathon too, and not routed (it has no HAPROXY_GROUP).
        in_netns_lab(
            &mlb_bin(),
            &argv,
            &env,
            vec![as_simulated_task(app.clone())],
            |_, _, mlb| {
                let own = mlb.explain("/mlb")?.context("/mlb explained")?;
                ensure!(own[0]["exposed"] == false, "mlb routes itself: {own}");
                Ok(())
            },
        )
    });
}

#[test]
fn systemd_unit_verifies() {
    let unit = deploy_dir().join("systemd/mlb.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    let directive = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {}", unit.display()))
            .to_owned()
    };
    let caps = "CAP_BPF CAP_NET_ADMIN CAP_SYS_ADMIN CAP_NET_BIND_SERVICE";
    assert_eq!(directive("AmbientCapabilities"), caps);
    assert_eq!(directive("CapabilityBoundingSet"), caps);
    assert_eq!(directive("DynamicUser"), "yes");
    assert_eq!(directive("ProtectSystem"), "strict");
    assert_eq!(directive("Restart"), "on-failure");
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED systemd-analyze verify: systemd-analyze is not installed");
        return;
    }
    // Verify checks that ExecStart exists: point it at the binary under test.
    let bin = mlb_tests::mlb_bin::mlb_bin();
    let dir = std::env::temp_dir().join(format!("mlbt-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("mlb.service");
    let text = text.replace("/usr/local/bin/mlb", bin.to_str().unwrap());
    std::fs::write(&copy, text).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
