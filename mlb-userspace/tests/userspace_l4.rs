//! The userspace TCP/UDP dataplane with real sockets on loopback: clients connect to a VIP
//! (127.0.3.x), backends are echo servers on ephemeral ports of 127.0.0.1 that greet with their
//! name, so every test sees which backend served each connection.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
use std::{
    collections::BTreeMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use mlb::{
    dataplane::{
        Dataplane, L4Change,
        userspace_l4::{UserspaceL4, UserspaceL4Config},
    },
    model::{Backend, BackendId, BackendState, L4Service, L4ServiceKey, Protocol},
    proxy::access_log::{AccessLogConfig, AccessLogFormat, AccessLogTarget},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream, UdpSocket},
    runtime::Handle,
    task::JoinHandle,
};

/// Every test is bounded.
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test took longer than 60 s");
}

fn vip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 3, last])
}

/// A TCP backend: says `<name>\n` on accept, then echoes.
struct TcpBackend {
    name: String,
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn tcp_backend(name: &str) -> TcpBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let greeting = format!("{name}\n");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let greeting = greeting.clone();
            tokio::spawn(async move {
                if conn.write_all(greeting.as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    TcpBackend {
        name: name.to_owned(),
        addr,
        accepted,
        task,
    }
}

fn backend(name: &str, addr: SocketAddr, state: BackendState) -> Backend {
    Backend {
        id: BackendId::from(name),
        addr,
        weight: 1,
        state,
    }
}

fn service(port: u16, protocol: Protocol, backends: Vec<Backend>) -> L4Service {
    let mut backends = backends;
    backends.sort();
    L4Service {
        key: L4ServiceKey { port, protocol },
        app_id: format!("/test/app{port}"),
        bind_addr: None,
        backends,
        health_check: None,
        tuning: Default::default(),
        balance: Default::default(),
        allowed_networks: Vec::new(),
    }
}

fn tcp_service(port: u16, backends: &[(&TcpBackend, BackendState)]) -> L4Service {
    service(
        port,
        Protocol::Tcp,
        backends
            .iter()
            .map(|(b, s)| backend(&b.name, b.addr, *s))
            .collect(),
    )
}

fn dataplane(vip: IpAddr) -> UserspaceL4 {
    UserspaceL4::new(Handle::current(), UserspaceL4Config::new(vec![vip])).unwrap()
}

/// An open client connection and the backend that greeted it.
struct Client {
    backend: String,
    stream: BufReader<TcpStream>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        let mut stream = BufReader::new(stream);
        let mut line = String::new();
        stream.read_line(&mut line).await?;
        if !line.ends_with('\n') {
            return Err(std::io::Error::other(format!(
                "no greeting from a backend (got {line:?})"
            )));
        }
        line.pop();
        Ok(Client {
            backend: line,
            stream,
        })
    }

    /// Sends `msg` and checks it comes back.
    async fn echo(&mut self, msg: &str) {
        self.stream
            .get_mut()
            .write_all(msg.as_bytes())
            .await
            .unwrap();
        let mut back = vec![0u8; msg.len()];
        self.stream.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg.as_bytes());
    }
}

async fn counts_of(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let mut c = Client::connect(addr).await.unwrap();
        c.echo(&format!("ping {i}")).await;
        *counts.entry(c.backend).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_l4_spreads_tcp_connections_over_backends() {
    bounded(async {
        let backends = [
            tcp_backend("a").await,
            tcp_backend("b").await,
            tcp_backend("c").await,
        ];
        let vip = vip(1);
        let mut dp = dataplane(vip);
        let svc = tcp_service(
            23011,
            &[
                (&backends[0], BackendState::Active),
                (&backends[1], BackendState::Active),
                (&backends[2], BackendState::Active),
            ],
        );
        dp.apply(&[L4Change::Upsert(svc.clone())]).unwrap();
        assert_eq!(dp.listening(svc.key), vec![SocketAddr::new(vip, 23011)]);

        let counts = counts_of(SocketAddr::new(vip, 23011), 300).await;
        for b in &backends {
            let seen = counts.get(&b.name).copied().unwrap_or(0);
            assert!(
                (65..=135).contains(&seen),
                "backend {} got {seen} of 300 connections: {counts:?}",
                b.name
            );
            // The backend itself saw every connection attributed to it.
            assert_eq!(b.accepted.load(Ordering::SeqCst), seen);
        }
        let stats = &dp.stats().snapshot()[&svc.key];
        let total: u64 = stats.backends.values().map(|s| s.connections_total).sum();
        assert_eq!(total, 300);
        let bytes: u64 = stats.backends.values().map(|s| s.bytes_to_backend).sum();
        assert!(bytes >= 300 * "ping 0".len() as u64, "{stats:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_l4_established_connections_survive_backend_changes() {
    bounded(async {
        let backends = [
            tcp_backend("a").await,
            tcp_backend("b").await,
            tcp_backend("c").await,
        ];
        let vip = vip(2);
        let addr = SocketAddr::new(vip, 23021);
        let mut dp = dataplane(vip);
        let all = |s: [BackendState; 3]| {
            tcp_service(
                23021,
                &[
                    (&backends[0], s[0]),
                    (&backends[1], s[1]),
                    (&backends[2], s[2]),
                ],
            )
        };
        use BackendState::{Active, Draining};
        dp.apply(&[L4Change::Upsert(all([Active; 3]))]).unwrap();

        let mut held = Vec::new();
        for _ in 0..30 {
            held.push(Client::connect(addr).await.unwrap());
        }
        // Remove the backend of the first connection from the service.
        let removed = held[0].backend.clone();
        let rest: Vec<(&TcpBackend, BackendState)> = backends
            .iter()
            .filter(|b| b.name != removed)
            .map(|b| (b, Active))
            .collect();
        let svc = tcp_service(23021, &rest);
        dp.apply(&[L4Change::Upsert(svc)]).unwrap();
        for (i, c) in held.iter_mut().enumerate() {
            c.echo(&format!("still there {i}")).await;
        }
        let counts = counts_of(addr, 60).await;
        assert!(
            !counts.contains_key(&removed),
            "{removed} removed: {counts:?}"
        );
        assert_eq!(counts.values().sum::<usize>(), 60);

        // Now every backend is back but one is draining: it keeps its connections and gets no
        // new one.
        let draining = rest[0].0.name.clone();
        let states = backends
            .each_ref()
            .map(|b| if b.name == draining { Draining } else { Active });
        dp.apply(&[L4Change::Upsert(all(states))]).unwrap();
        let counts = counts_of(addr, 60).await;
        assert!(
            !counts.contains_key(&draining),
            "{draining} draining: {counts:?}"
        );
        for (i, c) in held.iter_mut().enumerate() {
            c.echo(&format!("after drain {i}")).await;
        }
        assert!(
            held.iter()
                .any(|c| c.backend == draining || c.backend == removed)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_l4_removing_a_service_closes_only_its_listener() {
    bounded(async {
        let be = tcp_backend("a").await;
        let vip = vip(3);
        let mut dp = dataplane(vip);
        let one = tcp_service(23031, &[(&be, BackendState::Active)]);
        let two = tcp_service(23032, &[(&be, BackendState::Active)]);
        dp.apply(&[L4Change::Upsert(one.clone()), L4Change::Upsert(two.clone())])
            .unwrap();
        let mut held = Client::connect(SocketAddr::new(vip, 23031)).await.unwrap();

        dp.apply(&[L4Change::Remove(one.key)]).unwrap();
        assert!(dp.listening(one.key).is_empty());
        let refused = TcpStream::connect(SocketAddr::new(vip, 23031)).await;
        assert_eq!(
            refused.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        // Drain, don't cut: the connection of the removed service keeps working.
        held.echo("still open").await;
        let mut other = Client::connect(SocketAddr::new(vip, 23032)).await.unwrap();
        other.echo("other service").await;
        // The service can come back on the same port at once.
        dp.apply(&[L4Change::Upsert(one)]).unwrap();
        Client::connect(SocketAddr::new(vip, 23031))
            .await
            .unwrap()
            .echo("back")
            .await;
    })
    .await;
}

/// A UDP backend: answers every datagram with `<name>:<datagram>`.
async fn udp_backend(name: &str) -> (SocketAddr, JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let prefix = format!("{name}:");
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let mut reply = prefix.clone().into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from).await;
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_l4_udp_request_response_and_idle_sessions() {
    bounded(async {
        let (a, ta) = udp_backend("a").await;
        let (b, tb) = udp_backend("b").await;
        let vip = vip(4);
        let service_addr = SocketAddr::new(vip, 23041);
        let mut config = UserspaceL4Config::new(vec![vip]);
        config.udp_idle_timeout = Duration::from_millis(300);
        let mut dp = UserspaceL4::new(Handle::current(), config).unwrap();
        let svc = service(
            23041,
            Protocol::Udp,
            vec![
                backend("a", a, BackendState::Active),
                backend("b", b, BackendState::Active),
            ],
        );
        dp.apply(&[L4Change::Upsert(svc.clone())]).unwrap();

        let mut seen = BTreeMap::new();
        for client_no in 0..10 {
            let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut served_by = None;
            for i in 0..3 {
                let msg = format!("hello {client_no}.{i}");
                client.send_to(msg.as_bytes(), service_addr).await.unwrap();
                let mut buf = [0u8; 2048];
                let (n, from) =
                    tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
                        .await
                        .expect("no UDP reply")
                        .unwrap();
                // The reply comes from the service address, not from the backend.
                assert_eq!(from, service_addr);
                let reply = std::str::from_utf8(&buf[..n]).unwrap();
                let (name, echoed) = reply.split_once(':').unwrap();
                assert_eq!(echoed, msg);
                // One session per client: always the same backend.
                assert_eq!(*served_by.get_or_insert(name.to_owned()), name);
            }
            *seen.entry(served_by.unwrap()).or_insert(0) += 1;
        }
        assert_eq!(seen.values().sum::<i32>(), 10);

        let snapshot = |dp: &UserspaceL4| dp.stats().snapshot()[&svc.key].clone();
        let total: u64 = snapshot(&dp)
            .backends
            .values()
            .map(|s| s.connections_total)
            .sum();
        assert_eq!(total, 10, "one session per client");
        // Idle sessions close (bounded wait).
        let mut active = u64::MAX;
        for _ in 0..100 {
            active = snapshot(&dp)
                .backends
                .values()
                .map(|s| s.connections_active)
                .sum();
            if active == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(active, 0, "idle UDP sessions were not closed");
        ta.abort();
        tb.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_l4_dead_backend_is_redispatched() {
    bounded(async {
        let live = tcp_backend("live").await;
        // A port nobody listens on.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let vip = vip(5);
        let mut dp = dataplane(vip);
        let svc = service(
            23051,
            Protocol::Tcp,
            vec![
                backend("dead", dead, BackendState::Active),
                backend("live", live.addr, BackendState::Active),
            ],
        );
        dp.apply(&[L4Change::Upsert(svc.clone())]).unwrap();
        let counts = counts_of(SocketAddr::new(vip, 23051), 20).await;
        assert_eq!(counts.get("live"), Some(&20), "{counts:?}");
        let stats = &dp.stats().snapshot()[&svc.key];
        let dead_stats = &stats.backends[&BackendId::from("dead")];
        assert!(dead_stats.connect_failures > 0, "{stats:?}");
        assert_eq!(dead_stats.connections_total, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_l4_bad_service_fails_alone() {
    bounded(async {
        let be = tcp_backend("a").await;
        let vip = vip(6);
        // Someone else already has the port of the first service.
        let _squatter = std::net::TcpListener::bind(SocketAddr::new(vip, 23061)).unwrap();
        let mut dp = dataplane(vip);
        let bad = tcp_service(23061, &[(&be, BackendState::Active)]);
        let good = tcp_service(23062, &[(&be, BackendState::Active)]);
        let err = dp
            .apply(&[
                L4Change::Upsert(bad.clone()),
                L4Change::Upsert(good.clone()),
            ])
            .unwrap_err();
        assert_eq!(err.len(), 1, "{err:?}");
        assert_eq!(err[0].l4_service(), Some(bad.key));
        let message = err[0].to_string();
        assert!(
            message.contains("127.0.3.6:23061") && message.contains("/test/app23061"),
            "{message}"
        );
        assert!(dp.listening(bad.key).is_empty());
        assert!(!dp.stats().snapshot().contains_key(&bad.key));
        Client::connect(SocketAddr::new(vip, 23062))
            .await
            .unwrap()
            .echo("fine")
            .await;
    })
    .await;
}

/// `apply` is synchronous: the agent's control loop may call it from a plain thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_l4_apply_from_a_plain_thread() {
    bounded(async {
        let be = tcp_backend("a").await;
        let vip = vip(7);
        let dp = dataplane(vip);
        let svc = tcp_service(23071, &[(&be, BackendState::Active)]);
        let dp = std::thread::spawn(move || {
            let mut dp = dp;
            dp.apply(&[L4Change::Upsert(svc)]).map(|()| dp)
        })
        .join()
        .unwrap()
        .unwrap();
        Client::connect(SocketAddr::new(vip, 23071))
            .await
            .unwrap()
            .echo("from a thread")
            .await;
        drop(dp);
    })
    .await;
}

/// `bind_addr` replaces the VIPs; changing it moves the listener and keeps open connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_l4_bind_addr_overrides_vips() {
    bounded(async {
        let be = tcp_backend("a").await;
        let mut dp = dataplane(vip(9));
        let mut svc = tcp_service(23081, &[(&be, BackendState::Active)]);
        svc.bind_addr = Some(vip(8));
        dp.apply(&[L4Change::Upsert(svc.clone())]).unwrap();
        assert_eq!(dp.listening(svc.key), vec![SocketAddr::new(vip(8), 23081)]);
        let mut held = Client::connect(SocketAddr::new(vip(8), 23081))
            .await
            .unwrap();
        assert!(
            TcpStream::connect(SocketAddr::new(vip(9), 23081))
                .await
                .is_err()
        );

        svc.bind_addr = None;
        dp.apply(&[L4Change::Upsert(svc.clone())]).unwrap();
        assert_eq!(dp.listening(svc.key), vec![SocketAddr::new(vip(9), 23081)]);
        assert!(
            TcpStream::connect(SocketAddr::new(vip(8), 23081))
                .await
                .is_err()
        );
        Client::connect(SocketAddr::new(vip(9), 23081))
            .await
            .unwrap()
            .echo("moved")
            .await;
        held.echo("kept").await;
    })
    .await;
}

/// Resident and peak memory of this process in KiB (`VmRSS`, `VmHWM`).
/// `--access-log file:PATH --access-log-format json`: one line per TCP connection once it ends,
/// naming the service and the backend that served it, with the bytes each way, the duration and
/// the termination state (`--` closed normally, `SC` when no backend could take it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_l4_logs_one_line_per_tcp_connection() {
    bounded(async {
        let a = tcp_backend("a").await;
        let vip = vip(10);
        let path = std::env::temp_dir().join(format!("mlb-l4-access-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut config = UserspaceL4Config::new(vec![vip]);
        config.access_log = AccessLogConfig {
            target: Some(AccessLogTarget::File(path.clone())),
            format: AccessLogFormat::Json,
            sample: 1,
        };
        let mut dp = UserspaceL4::new(Handle::current(), config).unwrap();
        let served = tcp_service(23101, &[(&a, BackendState::Active)]);
        let down = tcp_service(23102, &[(&a, BackendState::Draining)]);
        dp.apply(&[L4Change::Upsert(served), L4Change::Upsert(down)])
            .unwrap();
        for i in 0..3 {
            let mut c = Client::connect(SocketAddr::new(vip, 23101)).await.unwrap();
            c.echo(&format!("hello {i}")).await;
        }
        // No active backend: accepted, then closed at once.
        let mut refused = TcpStream::connect(SocketAddr::new(vip, 23102))
            .await
            .unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(refused.read(&mut buf).await.unwrap_or(0), 0);

        let mut lines = Vec::new();
        for _ in 0..200 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            lines = text
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect();
            if lines.len() >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_file(&path);
        assert_eq!(lines.len(), 4, "{lines:?}");
        let (ok, sc): (Vec<_>, Vec<_>) = lines.iter().partition(|l| l["termination"] == "--");
        assert_eq!((ok.len(), sc.len()), (3, 1), "{lines:?}");
        let server = format!("127_0_0_1_{}", a.addr.port());
        for l in ok {
            assert_eq!(l["backend"], "test_app23101_23101", "{l}");
            assert_eq!(l["server"], server.as_str(), "{l}");
            // "hello N" in; greeting "a\n" and the echo out.
            assert_eq!(l["bytes_in"], 7, "{l}");
            assert_eq!(l["bytes_out"], 9, "{l}");
            assert!(l["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{l}");
            assert!(
                l["client"].as_str().is_some_and(|c| c.starts_with("127.")),
                "{l}"
            );
        }
        assert_eq!(sc[0]["server"], "<NOSRV>", "{}", sc[0]);
        assert_eq!(sc[0]["backend"], "test_app23102_23102", "{}", sc[0]);
    })
    .await;
}

fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Cost of a first full apply: 1,000 TCP services × 10 backends (`cargo test --release -p
/// mlb-userspace --test userspace_l4 -- --ignored --nocapture sync_bench`).
#[ignore = "benchmark"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_l4_sync_bench() {
    const SERVICES: u16 = 1_000;
    const BACKENDS: u16 = 10;
    let services: Vec<L4Service> = (0..SERVICES)
        .map(|s| {
            let backends = (0..BACKENDS)
                .map(|b| {
                    let addr =
                        SocketAddr::from(([198, 18, (s / 250) as u8, (s % 250) as u8], 8000 + b));
                    backend(&addr.to_string(), addr, BackendState::Active)
                })
                .collect();
            service(41_000 + s, Protocol::Tcp, backends)
        })
        .collect();
    let full: Vec<L4Change> = services.iter().cloned().map(L4Change::Upsert).collect();
    let mut dp = dataplane(vip(250));
    let (rss0, _) = memory_kib();
    let start = std::time::Instant::now();
    dp.apply(&full).unwrap();
    let first = start.elapsed();
    let (rss1, hwm1) = memory_kib();
    // Then one backend less in every service.
    let fewer: Vec<L4Change> = services
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.backends.pop();
            L4Change::Upsert(s)
        })
        .collect();
    let start = std::time::Instant::now();
    dp.apply(&fewer).unwrap();
    let second = start.elapsed();
    let (rss2, hwm2) = memory_kib();
    println!(
        "{SERVICES} services x {BACKENDS} backends: first apply {first:?} ({:?}/service), \
         RSS {rss0} -> {rss1} KiB (+{} KiB, peak {hwm1} KiB); one backend less everywhere: \
         {second:?}, RSS {rss2} KiB, peak {hwm2} KiB",
        first / u32::from(SERVICES),
        rss1.saturating_sub(rss0),
    );
}

/// Connects from `from` (a loopback address of the client's choosing) and reads the greeting.
async fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<Client> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = socket.connect(to).await?;
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    if !line.ends_with('\n') {
        return Err(std::io::Error::other(format!("no greeting (got {line:?})")));
    }
    line.pop();
    Ok(Client {
        backend: line,
        stream,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userspace_l4_balance_source_and_allowed_networks() {
    bounded(async {
        let backends = [
            tcp_backend("a").await,
            tcp_backend("b").await,
            tcp_backend("c").await,
        ];
        let vip = vip(9);
        let mut dp = dataplane(vip);
        let mut svc = tcp_service(
            23091,
            &[
                (&backends[0], BackendState::Active),
                (&backends[1], BackendState::Active),
                (&backends[2], BackendState::Active),
            ],
        );
        svc.balance = mlb::model::Balance::Source;
        svc.allowed_networks = vec!["127.0.4.0/24".parse().unwrap()];
        dp.apply(&[L4Change::Upsert(svc.clone())]).unwrap();
        let target = SocketAddr::new(vip, 23091);

        // Each client address sticks to one backend across its connections (new source port
        // each time); eight addresses do not all land on one backend.
        let mut chosen = BTreeMap::new();
        for host in 1..=8u8 {
            let from = IpAddr::from([127, 0, 4, host]);
            let mut seen = std::collections::BTreeSet::new();
            for i in 0..6 {
                let mut c = connect_from(from, target).await.unwrap();
                c.echo(&format!("{host}/{i}")).await;
                seen.insert(c.backend);
            }
            assert_eq!(seen.len(), 1, "{from} was spread over {seen:?}");
            chosen.insert(from, seen.pop_first().unwrap());
        }
        let distinct: std::collections::BTreeSet<_> = chosen.values().collect();
        assert!(
            distinct.len() >= 2,
            "every client on one backend: {chosen:?}"
        );

        // A client outside the allowed network gets no backend, and is counted.
        let denied = connect_from(IpAddr::from([127, 0, 5, 1]), target).await;
        assert!(denied.is_err(), "a denied client reached a backend");
        let stats = &dp.stats().snapshot()[&svc.key];
        assert_eq!(stats.denied, 1, "{stats:?}");
        let total: u64 = stats.backends.values().map(|s| s.connections_total).sum();
        assert_eq!(total, 48, "the denied client never reached a backend");
    })
    .await;
}
