//! Soak (issue 10 §6): a real `mlb run` (userspace dataplane, loopback) under constant HTTP and
//! TCP load while Marathon (the simulator) goes through ≥ 1,000 changes — scales, task kills,
//! deployments and label edits — a leader failover (the stream cut, then a 307 to the new
//! leader), an outage (connections refused), and a burst of task kills, checking that no
//! request fails, mlb converges to Marathon's tasks and its memory stays flat.
//!
//! mlb reads Marathon through a relay of this test, which plays the leader address: it forwards,
//! cuts every connection and redirects (failover), or refuses connections (outage).
//! `MLB_SOAK_CHANGES`, `MLB_SOAK_OUTAGE_SECS` and `MLB_SOAK_BURST` size the run; the ignored
//! `soak_long` is the full variant (a 60 s outage, 3,000 changes).
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};
use mlb_tests::{
    agent::{Mlb, RequestLoop, free_port, http_get, loopback_args, wait_for},
    marathon_sim::{Fault, MarathonSim, SimConfig},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// A killed task is `TASK_KILLING` this long before its listeners close: time for mlb to stop
/// sending it new requests.
const STEP: Duration = Duration::from_millis(150);
/// Apps that take the changes (no load on them: a change to a loaded app's tasks while Marathon
/// is unreachable would fail requests by design).
const CHURN_APPS: usize = 16;

/// How big a run is.
struct Size {
    changes: usize,
    outage: Duration,
    burst: usize,
}

fn size(changes: usize, outage_secs: u64, burst: usize) -> Size {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    Size {
        changes: env("MLB_SOAK_CHANGES", changes as u64) as usize,
        outage: Duration::from_secs(env("MLB_SOAK_OUTAGE_SECS", outage_secs)),
        burst: env("MLB_SOAK_BURST", burst as u64) as usize,
    }
}

/// The CI size (about a minute): 250 changes, a 3 s outage, 1,000 task kills.
#[test]
fn soak() {
    if let Err(e) = soak_body(&size(250, 3, 1_000)) {
        panic!("soak: {e:#}");
    }
}

/// The size: 1,000 changes, a 60 s Marathon outage, 1,000 task kills (about 6 minutes).
#[test]
#[ignore = "long: cargo test -p tests --test soak -- --ignored"]
fn soak_long() {
    if let Err(e) = soak_body(&size(1_000, 60, 1_000)) {
        panic!("soak_long: {e:#}");
    }
}

/// What the relay does with connections to the leader address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Forward to the simulator.
    Forward,
    /// Answer every request `307` to the simulator's own address (a non-leader).
    Redirect,
    /// Not listening: connections are refused.
    Down,
}

/// The leader address: a TCP relay to the simulator. Changing the mode cuts every open
/// connection.
struct Relay {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
}

impl Relay {
    async fn start(to: SocketAddr) -> Result<Relay> {
        let listener = TcpListener::bind((LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(Mode::Forward);
        tokio::spawn(relay_loop(Some(listener), addr, to, rx));
        Ok(Relay { addr, mode })
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

async fn relay_loop(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    to: SocketAddr,
    mut mode: watch::Receiver<Mode>,
) {
    loop {
        let current = *mode.borrow_and_update();
        if current == Mode::Down {
            listener = None;
            if mode.changed().await.is_err() {
                return;
            }
            continue;
        }
        let Some(l) = &listener else {
            // Back up: the same port (held by nobody meanwhile: below the ephemeral range? not
            // guaranteed, so retry a little).
            match TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            continue;
        };
        tokio::select! {
            accepted = l.accept() => {
                if let Ok((client, _)) = accepted {
                    tokio::spawn(relay_conn(client, to, current, mode.clone()));
                }
            }
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// One connection, until it ends or the mode changes.
async fn relay_conn(
    mut client: TcpStream,
    to: SocketAddr,
    mode: Mode,
    mut rx: watch::Receiver<Mode>,
) {
    let serve = async {
        if mode == Mode::Redirect {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                let n = client.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                head.extend_from_slice(&buf[..n]);
            }
            let line = String::from_utf8_lossy(&head);
            let target = line.split(' ').nth(1).unwrap_or("/");
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{to}{target}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
            client.write_all(answer.as_bytes()).await?;
            return Ok(());
        }
        let mut server = TcpStream::connect(to).await?;
        tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        Ok::<_, std::io::Error>(())
    };
    tokio::select! {
        _ = serve => {}
        _ = rx.changed() => {}
    }
}

fn vhost_app(id: &str, port: u16, vhost: &str, instances: usize) -> Value {
    json!({
        "id": id,
        "instances": instances,
        "portDefinitions": [{"port": port, "protocol": "tcp", "name": "http"}],
        "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_MODE": "http", "HAPROXY_0_VHOST": vhost},
    })
}

fn tcp_app(id: &str, port: u16, instances: usize) -> Value {
    json!({
        "id": id,
        "instances": instances,
        "portDefinitions": [{"port": port, "protocol": "tcp", "name": "echo"}],
        "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_MODE": "tcp"},
    })
}

fn task_ids(sim: &MarathonSim, app: &str) -> Vec<String> {
    let mut ids: Vec<String> = sim.running_tasks(app).into_iter().map(|t| t.id).collect();
    ids.sort();
    ids
}

/// Raises this process's open-files limit to its hard limit: the simulator binds one socket per
/// task, and the burst app has a thousand.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim);
        }
    }
}

fn soak_body(size: &Size) -> Result<()> {
    raise_nofile();
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (web_port, tcp_port, burst_port) = (free_port(), free_port(), free_port());
    let churn: Vec<(String, u16)> = (0..CHURN_APPS)
        .map(|i| (format!("/soak/churn-{i}"), free_port()))
        .collect();
    let mut apps = vec![
        vhost_app("/soak/web", web_port, "web.soak.test", 2),
        tcp_app("/soak/tcp", tcp_port, 2),
    ];
    apps.extend(
        churn
            .iter()
            .map(|(id, port)| vhost_app(id, *port, &format!("{}.soak.test", &id[6..]), 1)),
    );
    let config = SimConfig {
        step_delay: STEP,
        keep_alive: Duration::from_millis(500),
        apps,
        // Room for the burst app's thousand tasks and their thousand replacements.
        task_port_range: 30_000..=32_999,
        ..SimConfig::default()
    };
    let sim = rt.block_on(MarathonSim::start(config))?;
    let relay = rt.block_on(Relay::start(sim.addr()))?;
    let (http, https, appid) = (free_port(), free_port(), free_port());
    let mut args = loopback_args(&format!("http://{}", relay.addr), http, https, appid);
    args.extend(["--max-backoff", "1", "--sse-stall-timeout", "3"].map(String::from));
    let mlb = Mlb::start(None, SocketAddr::new(LOCALHOST, free_port()), &args)?;
    for app in ["/soak/web", "/soak/tcp"] {
        mlb.wait_routed(app, 0, &task_ids(&sim, app))?;
    }

    // Constant load for the whole run.
    let limit = Duration::from_secs(600);
    let http_addr = SocketAddr::new(LOCALHOST, http);
    let web_loop = RequestLoop::start_for("http web.soak.test", limit, move || {
        http_get(http_addr, "web.soak.test", "/")?.task_id()
    });
    let tcp_addr = SocketAddr::new(LOCALHOST, tcp_port);
    let tcp_loop = RequestLoop::start_for("tcp", limit, move || {
        http_get(tcp_addr, "tcp", "/")?.task_id()
    });
    let loops = [&web_loop, &tcp_loop];
    let check = |during: &str| -> Result<()> {
        for l in loops {
            l.assert_no_failures(during)?;
        }
        Ok(())
    };

    // Warm up (a first quarter of the changes), then take the memory baseline.
    let done = AtomicUsize::new(0);
    let quarter = size.changes / 4;
    rt.block_on(churn_changes(&sim, &churn, quarter, &done));
    let baseline = mlb.rss_kib()?;
    eprintln!("soak: baseline RSS {baseline} KiB after {quarter} changes");

    // Changes, with loaded apps scaled too, and a leader failover in the middle.
    rt.block_on(async {
        let changes = churn_changes(&sim, &churn, size.changes / 4, &done);
        let loaded = async {
            for n in [3, 2, 3, 2] {
                sim.scale("/soak/web", n).await?;
                sim.scale("/soak/tcp", n).await?;
            }
            Ok::<_, anyhow::Error>(())
        };
        // The loaded apps change before the failover: a task killed while mlb cannot hear
        // Marathon would fail requests by design.
        let loaded_then_failover = async {
            loaded.await?;
            relay.set(Mode::Redirect);
            tokio::time::sleep(Duration::from_secs(3)).await;
            relay.set(Mode::Forward);
            Ok::<_, anyhow::Error>(())
        };
        let ((), result) = tokio::join!(changes, loaded_then_failover);
        result
    })?;
    check("changes and a leader failover")?;

    // A Marathon outage: changes go on in Marathon (on apps without load), mlb keeps routing
    // what it knew, then catches up.
    relay.set(Mode::Down);
    // Since the failover mlb may read the simulator directly (it followed the redirect): cut
    // that too, so its reconnect meets the outage.
    sim.inject(Fault::DropEventStreams);
    let outage_end = Instant::now() + size.outage;
    rt.block_on(async {
        while Instant::now() < outage_end {
            churn_changes(&sim, &churn, CHURN_APPS, &done).await;
        }
    });
    check("the Marathon outage")?;
    let error = mlb.status()?["last_error"].clone();
    ensure!(!error.is_null(), "mlb did not notice the outage");
    eprintln!("soak: during the outage mlb reports {error}");
    relay.set(Mode::Forward);
    rt.block_on(churn_changes(&sim, &churn, size.changes / 2, &done));
    for (id, _) in &churn {
        converge(&mlb, &sim, id, Duration::from_secs(20))?;
    }
    check("the changes after the outage")?;
    // Flat: the growth over changes, a failover and an outage, from a warmed-up baseline, stays
    // small. (Measured before the burst: the thousand tasks it adds are state, not a leak.)
    let before_burst = mlb.rss_kib()?;
    ensure!(
        before_burst <= baseline + 24 * 1024,
        "RSS grew from {baseline} KiB to {before_burst} KiB over the changes"
    );

    // A burst of task kills: every task of a big app at once.
    rt.block_on(sim.create_app(vhost_app(
        "/soak/burst",
        burst_port,
        "burst.soak.test",
        size.burst,
    )))?;
    converge(&mlb, &sim, "/soak/burst", Duration::from_secs(60))?;
    let ids = task_ids(&sim, "/soak/burst");
    rt.block_on(kill_all(&sim, &ids))?;
    let converged = Instant::now();
    converge(&mlb, &sim, "/soak/burst", Duration::from_secs(60))?;
    let after_burst = task_ids(&sim, "/soak/burst");
    ensure!(
        after_burst.iter().all(|t| !ids.contains(t)),
        "killed tasks still running in the simulator"
    );
    eprintln!(
        "soak: {} task kills converged in {:?}",
        ids.len(),
        converged.elapsed()
    );
    rt.block_on(sim.delete_app("/soak/burst"))?;
    converge(&mlb, &sim, "/soak/burst", Duration::from_secs(30))?;

    for app in ["/soak/web", "/soak/tcp"] {
        converge(&mlb, &sim, app, Duration::from_secs(10))?;
    }
    check("the burst of task kills")?;
    let end = mlb.rss_kib()?;
    let (web, tcp) = (web_loop.stop(), tcp_loop.stop());
    eprintln!(
        "soak: {} changes in {:?}; {} HTTP and {} TCP requests, 0 failed; RSS {baseline} -> {before_burst} KiB before the burst, {end} KiB after it",
        done.load(Ordering::SeqCst),
        started.elapsed(),
        web.total(),
        tcp.total()
    );
    ensure!(
        done.load(Ordering::SeqCst) >= size.changes,
        "only {done:?} changes made"
    );
    ensure!(web.total() > 100 && tcp.total() > 100, "too little load");
    // The burst's two thousand tasks came and went: what the allocator keeps of them is
    // bounded (a leak of per-task state would grow with every burst).
    ensure!(
        end <= before_burst + 64 * 1024,
        "RSS grew from {before_burst} KiB to {end} KiB over a burst of {} task kills",
        ids.len()
    );
    mlb.finish();
    Ok(())
}

/// `count` changes spread over the churn apps (each app's changes one after another, the apps
/// in parallel): scale, kill a task, a deployment, a label edit, in turn. A change Marathon
/// refuses (the app is locked by a deployment still running) is not counted.
async fn churn_changes(
    sim: &MarathonSim,
    churn: &[(String, u16)],
    count: usize,
    done: &AtomicUsize,
) {
    let start = done.load(Ordering::SeqCst);
    let target = start + count;
    let workers = churn.iter().enumerate().map(|(k, (id, _))| async move {
        let mut i = k;
        while done.load(Ordering::SeqCst) < target {
            if change(sim, id, i).await.is_ok() {
                done.fetch_add(1, Ordering::SeqCst);
            }
            i += CHURN_APPS;
        }
    });
    futures_util::future::join_all(workers).await;
}

async fn change(sim: &MarathonSim, id: &str, i: usize) -> Result<()> {
    match i / CHURN_APPS % 4 {
        0 => sim.scale(id, 1 + i % 3).await?,
        1 => {
            let Some(task) = sim.running_tasks(id).into_iter().next() else {
                bail!("no task to kill");
            };
            sim.kill_task(&task.id).await?;
        }
        2 => {
            sim.update_app(id, json!({"env": {"SOAK_VERSION": i.to_string()}}))
                .await?;
        }
        _ => {
            let vhost = format!("{}-{i}.soak.test", &id[6..]);
            let labels = json!({
                "HAPROXY_GROUP": "external",
                "HAPROXY_0_MODE": "http",
                "HAPROXY_0_VHOST": vhost,
                "HAPROXY_0_BALANCE": if i.is_multiple_of(2) { "roundrobin" } else { "leastconn" },
            });
            sim.update_app(id, json!({ "labels": labels })).await?;
        }
    }
    Ok(())
}

/// Kills every task of `ids` in one request, as a Marathon operator's bulk kill does.
async fn kill_all(sim: &MarathonSim, ids: &[String]) -> Result<()> {
    let url = format!("{}/v2/tasks/delete", sim.url());
    let resp = reqwest::Client::new()
        .post(url)
        .json(&json!({ "ids": ids }))
        .send()
        .await?;
    ensure!(resp.status().is_success(), "bulk kill: {}", resp.status());
    Ok(())
}

/// Waits until mlb routes exactly the app's running tasks in the simulator.
fn converge(mlb: &Mlb<'_>, sim: &MarathonSim, app: &str, within: Duration) -> Result<()> {
    wait_for(&format!("mlb to converge on {app}"), within, || {
        let want = task_ids(sim, app);
        let got = mlb.active_tasks(app, 0)?;
        if got == want {
            Ok(Some(()))
        } else {
            bail!("{} routed, {} running", got.len(), want.len())
        }
    })
}
