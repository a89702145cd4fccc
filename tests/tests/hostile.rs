//! Hostile input and overload against the whole `mlb run` agent (userspace dataplane, loopback),
//! under the common 1,024 open-files limit: floods of silent TCP connections and of UDP source
//! ports leave HTTP, the admin API and new clients served; userspace TCP connections are bounded
//! in memory and closed when idle; the admin API's signals are closed to non-POST requests.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use mlb_tests::{
    agent::{Mlb, free_port, http_get, loopback_args, wait_for},
    marathon_sim::{MarathonSim, SimConfig},
};
use serde_json::{Value, json};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The open-files limit of many hosts, soft and hard, so mlb cannot raise it.
const NOFILE: u64 = 1024;

fn run(test: &str, body: fn() -> Result<()>) {
    if let Err(e) = body() {
        panic!("{test}: {e:#}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn app(id: &str, port: u16, protocol: &str, labels: Value) -> Value {
    json!({
        "id": id,
        "instances": 1,
        "portDefinitions": [{"port": port, "protocol": protocol}],
        "labels": labels,
    })
}

/// mlb on loopback with the userspace dataplane, its HTTP frontend on `http`.
fn start_mlb(sim: &MarathonSim, http: u16, extra: &[&str]) -> Result<Mlb<'static>> {
    let mut args = loopback_args(&sim.url(), http, free_port(), free_port());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    Mlb::start_limited(
        None,
        SocketAddr::new(LOCALHOST, free_port()),
        &args,
        Some(NOFILE),
    )
}

/// A vhost request and the admin health check both answer, each within `within`.
fn still_served(mlb: &Mlb, http: SocketAddr, within: Duration) -> Result<()> {
    // Retried within `within`: the slots of connections a flood just closed come free as mlb
    // reads their ends, which on a loaded machine can take longer than the test's pause.
    let start = Instant::now();
    loop {
        let reply = http_get(http, "web.example.com", "/").context("HTTP request")?;
        let took = start.elapsed();
        if reply.status == 200 {
            ensure!(took < within, "HTTP answered after {took:?}");
            break;
        }
        ensure!(took < within, "HTTP after {took:?}: {reply:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let start = Instant::now();
    let health = mlb.admin_get("/_haproxy_health_check").context("admin")?;
    ensure!(health.status == 200, "admin: {health:?}");
    ensure!(
        start.elapsed() < within,
        "admin answered after {:?}",
        start.elapsed()
    );
    Ok(())
}

/// Sessions open now to the backends of the UDP service of app `app` (the stats CSV's `scur`).
fn udp_sessions(mlb: &Mlb, app: &str) -> Result<u64> {
    let prefix = format!("{app}_");
    let rows = mlb.stats_csv()?;
    let backend = rows
        .iter()
        .find(|r| r.get("pxname").starts_with(&prefix) && r.get("svname") == "BACKEND")
        .with_context(|| format!("no BACKEND row of {app} in the stats CSV"))?;
    Ok(backend.int("scur")?)
}

/// Lines of the agent's log containing `what`.
fn log_count(mlb: &Mlb, what: &str) -> usize {
    mlb.log().lines().filter(|l| l.contains(what)).count()
}

/// 1,100 connections that send nothing, then 1,200 UDP source ports: before, both exhausted the
/// descriptors (proxy, admin and health check dead; thousands of "accept failed" warnings).
#[test]
fn floods_under_1024_descriptors_leave_http_admin_and_new_clients_served() {
    run(
        "floods_under_1024_descriptors_leave_http_admin_and_new_clients_served",
        || {
            let rt = runtime();
            let (web_port, udp_port) = (free_port(), free_port());
            let labels = json!({"HAPROXY_GROUP": "external", "HAPROXY_0_MODE": "http",
                "HAPROXY_0_VHOST": "web.example.com"});
            let udp_labels = json!({"HAPROXY_GROUP": "external"});
            let apps = vec![
                app("/web", web_port, "tcp", labels),
                app("/dns", udp_port, "udp", udp_labels),
            ];
            let sim = rt.block_on(MarathonSim::start(SimConfig {
                apps,
                ..SimConfig::default()
            }))?;
            let http_port = free_port();
            let mlb = start_mlb(&sim, http_port, &[])?;
            let http = SocketAddr::new(LOCALHOST, http_port);
            wait_for("the vhost routed", Duration::from_secs(10), || {
                Ok(http_get(http, "web.example.com", "/")
                    .is_ok_and(|r| r.status == 200)
                    .then_some(()))
            })?;

            let mut silent = Vec::new();
            for _ in 0..1_100 {
                if let Ok(s) = TcpStream::connect_timeout(&http, Duration::from_millis(500)) {
                    silent.push(s);
                }
            }
            eprintln!("{} silent connections open", silent.len());
            still_served(&mlb, http, Duration::from_secs(2)).context("during the TCP flood")?;
            drop(silent);

            let udp = SocketAddr::new(LOCALHOST, udp_port);
            let clients = (0..1_200)
                .map(|_| UdpSocket::bind((LOCALHOST, 0)))
                .collect::<std::io::Result<Vec<_>>>()?;
            // Every source port sends until the flood holds (nearly) the whole connection
            // budget of 384 (1,024 descriptors), which without room made for them would keep a
            // new HTTP client out; paced, and repeated a few times, because the service socket's
            // receive buffer drops datagrams that come faster than mlb reads them.
            let mut sessions = 0;
            for _ in 0..5 {
                for (i, c) in clients.iter().enumerate() {
                    c.send_to(format!("query {i}").as_bytes(), udp)?;
                    if i % 50 == 49 {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                std::thread::sleep(Duration::from_millis(300));
                sessions = udp_sessions(&mlb, "dns")?;
                if sessions >= 370 {
                    break;
                }
            }
            ensure!(
                sessions >= 370,
                "the UDP flood opened only {sessions} sessions: the budget is not full, the test \
                 proves nothing"
            );
            still_served(&mlb, http, Duration::from_secs(2)).context("after the UDP flood")?;
            // A new UDP client still gets its answer.
            let c = UdpSocket::bind((LOCALHOST, 0))?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            c.send_to(b"late query", udp)?;
            let mut buf = [0u8; 512];
            let n = c.recv(&mut buf).context("a new UDP client got no answer")?;
            ensure!(n > 0);
            let warnings = log_count(&mlb, "accept failed");
            ensure!(warnings <= 5, "{warnings} accept warnings");
            mlb.finish();
            rt.block_on(sim.shutdown());
            Ok(())
        },
    );
}

/// 500 userspace-L4 TCP connections whose client sends and never reads: before, 140 KiB each
/// and no idle timeout. Then a connection with no traffic is closed at `--tcp-idle-timeout`.
#[test]
fn userspace_tcp_connections_are_bounded_in_memory_and_idle_time() {
    run(
        "userspace_tcp_connections_are_bounded_in_memory_and_idle_time",
        || {
            let rt = runtime();
            let port = free_port();
            let labels = json!({"HAPROXY_GROUP": "external", "HAPROXY_0_MODE": "tcp"});
            let sim = rt.block_on(MarathonSim::start(SimConfig {
                apps: vec![app("/echo", port, "tcp", labels)],
                ..SimConfig::default()
            }))?;
            let mlb = start_mlb(&sim, free_port(), &["--tcp-idle-timeout", "2s"])?;
            let service = SocketAddr::new(LOCALHOST, port);
            wait_for("the TCP service", Duration::from_secs(10), || {
                Ok(TcpStream::connect(service).is_ok().then_some(()))
            })?;
            let before = mlb.rss_kib()?;
            let chunk = vec![b'x'; 64 * 1024];
            let mut conns = Vec::new();
            for _ in 0..300 {
                let mut s = TcpStream::connect_timeout(&service, Duration::from_secs(1))?;
                s.set_nonblocking(true)?;
                for _ in 0..8 {
                    if s.write(&chunk).is_err() {
                        break;
                    }
                }
                conns.push(s);
            }
            std::thread::sleep(Duration::from_millis(800));
            let after = mlb.rss_kib()?;
            let per_conn = after.saturating_sub(before) / conns.len() as u64;
            eprintln!("RSS {before} KiB -> {after} KiB: {per_conn} KiB per connection");
            ensure!(per_conn < 80, "{per_conn} KiB per connection");
            drop(conns);

            let mut idle = TcpStream::connect(service)?;
            idle.set_read_timeout(Some(Duration::from_secs(6)))?;
            let start = Instant::now();
            let mut buf = [0u8; 16];
            let closed = matches!(idle.read(&mut buf), Ok(0) | Err(_));
            let took = start.elapsed();
            ensure!(
                closed && took < Duration::from_secs(5),
                "idle connection open after {took:?}"
            );
            ensure!(
                took >= Duration::from_millis(1500),
                "closed too early: {took:?}"
            );
            mlb.finish();
            rt.block_on(sim.shutdown());
            Ok(())
        },
    );
}

/// The signal endpoints: a GET (what a cross-site link can do) is refused, a POST from loopback
/// is accepted; the admin listener closes a connection that sends nothing.
#[test]
fn admin_signals_need_post_and_silent_admin_connections_close() {
    run(
        "admin_signals_need_post_and_silent_admin_connections_close",
        || {
            let rt = runtime();
            let sim = rt.block_on(MarathonSim::start(SimConfig::default()))?;
            let mlb = start_mlb(&sim, free_port(), &["--request-timeout", "1s"])?;
            let get = mlb.admin_get("/_mlb_signal/hup")?;
            ensure!(get.status == 405, "GET: {get:?}");
            let mut s = TcpStream::connect(mlb.admin)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(b"POST /_mlb_signal/hup HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
            let mut answer = String::new();
            s.read_to_string(&mut answer)?;
            ensure!(answer.starts_with("HTTP/1.1 200"), "POST: {answer}");

            let mut silent = TcpStream::connect(mlb.admin)?;
            silent.set_read_timeout(Some(Duration::from_secs(4)))?;
            let start = Instant::now();
            let closed = matches!(silent.read(&mut [0u8; 8]), Ok(0) | Err(_));
            ensure!(
                closed && start.elapsed() < Duration::from_secs(3),
                "silent admin connection kept {:?}",
                start.elapsed()
            );
            mlb.finish();
            rt.block_on(sim.shutdown());
            Ok(())
        },
    );
}

/// Certificate labels naming a FIFO nobody writes to (before: the whole process froze) and
/// `/dev/zero` (before: 537 MB, then "out of memory"): each is a clear error naming the app and
/// label, and everything else keeps being served.
#[test]
fn certificate_labels_naming_a_fifo_or_a_device_cannot_block_mlb() {
    run(
        "certificate_labels_naming_a_fifo_or_a_device_cannot_block_mlb",
        || {
            let rt = runtime();
            let dir = std::env::temp_dir().join(format!("mlbt-fifo-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let fifo = dir.join("cert.pem");
            let _ = std::fs::remove_file(&fifo);
            let made = std::process::Command::new("mkfifo").arg(&fifo).status()?;
            ensure!(made.success(), "mkfifo");
            let tls = |cert: &str| {
                json!({"HAPROXY_GROUP": "external", "HAPROXY_0_MODE": "http",
                    "HAPROXY_0_SSL_CERT": cert})
            };
            let web = json!({"HAPROXY_GROUP": "external", "HAPROXY_0_MODE": "http",
                "HAPROXY_0_VHOST": "web.example.com"});
            let apps = vec![
                app(
                    "/fifo",
                    free_port(),
                    "tcp",
                    tls(fifo.to_str().context("path")?),
                ),
                app("/zero", free_port(), "tcp", tls("/dev/zero")),
                app("/web", free_port(), "tcp", web),
            ];
            let sim = rt.block_on(MarathonSim::start(SimConfig {
                apps,
                ..SimConfig::default()
            }))?;
            let http_port = free_port();
            let mlb = start_mlb(&sim, http_port, &[])?;
            let http = SocketAddr::new(LOCALHOST, http_port);
            wait_for("the vhost routed", Duration::from_secs(10), || {
                Ok(http_get(http, "web.example.com", "/")
                    .is_ok_and(|r| r.status == 200)
                    .then_some(()))
            })?;
            still_served(&mlb, http, Duration::from_secs(2))?;
            let errors = mlb.status()?["http_errors"].to_string();
            for app in ["/fifo", "/zero"] {
                ensure!(
                    errors.contains(&format!("app {app}: HAPROXY_0_SSL_CERT"))
                        && errors.contains("not a regular file"),
                    "{app} not reported: {errors}"
                );
            }
            let rss = mlb.rss_kib()?;
            ensure!(rss < 100 * 1024, "{rss} KiB resident");
            mlb.finish();
            rt.block_on(sim.shutdown());
            let _ = std::fs::remove_dir_all(&dir);
            Ok(())
        },
    );
}
