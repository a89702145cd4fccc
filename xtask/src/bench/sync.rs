//! `cargo xtask bench sync`: how fast mlb follows a large Marathon.
//!
//! The Marathon simulator (`marathon-sim`, release build) starts with `--apps` apps of
//! `--tasks` tasks each already running (`--running-apps`: no deployments), on ten agents
//! (127.0.89.1–10). Tasks do not bind sockets (`--no-bind-tasks`): 100,000 real listeners would
//! exceed the port space of one address and tell nothing about mlb. mlb (release build,
//! `--dataplane userspace`, VIP 127.0.88.1) then really binds one listener per service port.
//!
//! The app mix: every `--tcp-every`-th app is a plain TCP app (`HAPROXY_0_MODE=tcp`, an L4
//! service with its Maglev table), the others are HTTP virtual hosts (`HAPROXY_0_VHOST`, a
//! route in the HTTP proxy and a service-port listener), as in large marathon-lb installations
//! where most apps are web services.
//!
//! Measured, with only loopback traffic:
//! 1. full sync: from spawning mlb until `/_mlb/status` says synced with every service applied;
//!    mlb's own log splits it into "Marathon read and parsed" and "dataplanes updated". mlb
//!    reads Marathon through the bench's front ([`super::sync_front`]), which answers the full
//!    read from a body the simulator rendered beforehand, so the figure is mlb's own; the
//!    simulator's time to serve the same `/v2/apps` is shown for reference. Peak RSS
//!    (`VmHWM`), CPU time of mlb, and its hottest symbols (`perf record`) during the sync.
//! 2. event → dataplane, `--events` times: one task is killed (`POST /v2/tasks/delete`). t0 is
//!    when our own `/v2/events` subscriber receives its `TASK_KILLING` event (the simulator
//!    sends it to every subscriber at the same time); visible is the first 1 ms poll of
//!    `/_mlb/status` whose generation shows the task's backend out of rotation in
//!    `/_mlb/explain/APP`. Then the same for the replacement task the simulator launches
//!    (`TASK_RUNNING` → its backend active). These latencies include mlb's event coalescing
//!    window (2 ms idle, 50 ms at most by default).
//! 3. burst: `--burst` tasks of as many apps killed in one call (as many `TASK_KILLING`
//!    events at once): dataplane updates (generation increments) and time until every one of
//!    them is out of rotation; then until every replacement is active (the simulator relaunches
//!    them one app at a time, `--step-delay-ms` apart twice per task).
//!
//! Every wait is bounded; both processes are stopped by PID when the run ends or fails.
use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};

use super::{
    SyncArgs, cpu, lab::ChildGuard, profile::Profile, stats::percentile, sync_front::Front,
};

/// The VIP mlb's services listen on (loopback; no other test uses it).
const VIP: &str = "127.0.88.1";
/// Agents the simulated tasks are placed on.
const AGENTS: u8 = 10;
/// Host ports of the (unbound) tasks: 40,001 ports, coprime with the agent count, so that
/// every (agent, port) pair of 100,000 tasks is distinct.
const TASK_PORTS: &str = "20000-60000";
/// First service port (Marathon's range starts there; the simulator allows 10000–20000).
const FIRST_SERVICE_PORT: u16 = 10_000;
/// Bounds of the waits.
const SETUP_LIMIT: Duration = Duration::from_secs(300);
const EVENT_LIMIT: Duration = Duration::from_secs(10);
/// The admin API is polled this often while waiting for a change.
const POLL: Duration = Duration::from_millis(1);

pub fn run(args: &SyncArgs) -> Result<()> {
    let apps = if args.quick { 1_000 } else { args.apps };
    let events = if args.quick { 50 } else { args.events };
    let burst = if args.quick { 100 } else { args.burst };
    if apps == 0 || apps > 10_000 {
        bail!("--apps {apps}: between 1 and 10000 (one service port each in 10000-19999)");
    }
    if burst > apps {
        bail!("--burst {burst} is more than --apps {apps}");
    }
    for (package, bin) in [("mlb-userspace", "mlb"), ("tests", "marathon-sim")] {
        let built = super::target_dir().join("release").join(bin);
        if args.prebuilt && built.exists() {
            eprintln!("bench sync: using {} as built", built.display());
            continue;
        }
        crate::cargo(&["build", "--release", "--package", package, "--bin", bin])?;
    }
    let release = super::target_dir().join("release");
    let dir = std::env::temp_dir().join(format!("mlb-bench-sync-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let result = measure(args, apps, events, burst, &release, &dir);
    match &result {
        Ok(report) => {
            println!("{report}");
            super::write_report("sync", report)?;
            if args.keep {
                eprintln!("bench sync: logs and profile kept in {}", dir.display());
            } else {
                let _ = fs::remove_dir_all(&dir);
            }
        }
        Err(_) => eprintln!("bench sync: logs kept in {}", dir.display()),
    }
    result.map(|_| ())
}

/// The app definitions: `tcp_every`-th apps plain TCP, the others HTTP vhosts.
fn app_definitions(apps: usize, tasks: usize, tcp_every: usize) -> Vec<Value> {
    (0..apps)
        .map(|i| {
            let mut labels = json!({"HAPROXY_GROUP": "external"});
            if is_tcp(i, tcp_every) {
                labels["HAPROXY_0_MODE"] = json!("tcp");
            } else {
                labels["HAPROXY_0_VHOST"] = json!(format!("app-{i:05}.bench.test"));
            }
            json!({
                "id": app_id(i),
                "instances": tasks,
                "cmd": "sleep infinity",
                "cpus": 0.1,
                "mem": 64,
                "portDefinitions": [{"port": FIRST_SERVICE_PORT + i as u16, "protocol": "tcp"}],
                "labels": labels,
            })
        })
        .collect()
}

fn is_tcp(i: usize, tcp_every: usize) -> bool {
    tcp_every > 0 && i.is_multiple_of(tcp_every)
}

fn app_id(i: usize) -> String {
    format!("/app-{i:05}")
}

/// Everything one run measured.
#[derive(Default)]
struct Results {
    sim_load: Duration,
    sim_list: Duration,
    front_list: Duration,
    front_served: usize,
    list_bytes: usize,
    /// The hottest symbols of mlb during the full sync, or why there is no profile.
    profile: Vec<String>,
    /// The same during the single events.
    events_profile: Vec<String>,
    sync: Duration,
    sync_read_at: Option<f64>,
    sync_applied_at: Option<f64>,
    /// mlb's own split of the full sync, from its log lines' fields.
    phases: Vec<String>,
    sync_cpu: f64,
    /// The load average as mlb was started.
    sync_load: String,
    rss_after_sync: Rss,
    services: (u64, u64, u64),
    kill_ms: Vec<f64>,
    start_ms: Vec<f64>,
    /// mlb's own part of each update, by phase (single events, the burst's kills, its
    /// relaunches): from reading the oldest event it reflects off the stream to the dataplanes
    /// updated (`event_ms` of its log lines); of the updates from task events, of those from
    /// re-read apps, and of the latter without the wait for Marathon's answers.
    mlb_event_ms: Vec<(&'static str, [Vec<f64>; 3])>,
    /// mlb's CPU seconds over the single-event phase, and the load average before and after.
    events_cpu: f64,
    load: (String, String),
    event_failures: Vec<String>,
    event_generations: u64,
    rss_after_events: Rss,
    burst: Option<Burst>,
    rss_after_burst: Rss,
    stream_problems: Vec<String>,
}

#[derive(Default)]
struct Burst {
    call: Duration,
    events_received: usize,
    events_spread: Duration,
    converged: Option<Duration>,
    /// Length of mlb's log when the burst's kills were all visible.
    log_at_converged: usize,
    generations: u64,
    full_syncs: usize,
    relaunched: Option<Duration>,
    relaunch_generations: u64,
}

#[derive(Clone, Copy, Default)]
struct Rss {
    hwm_mb: f64,
    rss_mb: f64,
}

fn measure(
    args: &SyncArgs,
    apps: usize,
    events: usize,
    burst: usize,
    release: &Path,
    dir: &Path,
) -> Result<String> {
    let n_tcp = (0..apps).filter(|&i| is_tcp(i, args.tcp_every)).count();
    let n_http = apps - n_tcp;
    let mut r = Results::default();

    // The simulator, loaded.
    let apps_file = dir.join("apps.json");
    fs::write(
        &apps_file,
        serde_json::to_vec(&app_definitions(apps, args.tasks, args.tcp_every))?,
    )?;
    eprintln!(
        "bench sync: starting marathon-sim with {apps} apps × {} tasks",
        args.tasks
    );
    let started = Instant::now();
    let mut sim_args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--running-apps",
        &apps_file.display().to_string(),
        "--no-bind-tasks",
        "--task-ports",
        TASK_PORTS,
        "--step-delay-ms",
        &args.step_delay_ms.to_string(),
    ]
    .iter()
    .map(std::string::ToString::to_string)
    .collect();
    for a in 1..=AGENTS {
        sim_args.extend(["--backend-addr".into(), format!("127.0.89.{a}")]);
    }
    let (sim, sim_url) = Proc::spawn_sim(&release.join("marathon-sim"), &sim_args, dir)?;
    r.sim_load = started.elapsed();
    let sim_addr: SocketAddr = sim_url
        .trim_start_matches("http://")
        .parse()
        .with_context(|| format!("marathon-sim printed {sim_url:?}, not its URL"))?;
    let mut marathon = Http::new(sim_addr);
    let list = "/v2/apps?embed=apps.tasks&embed=apps.deployments&embed=apps.readiness";
    let t = Instant::now();
    let (status, body) = marathon.request("GET", list, None)?;
    r.sim_list = t.elapsed();
    r.list_bytes = body.len();
    if status != 200 {
        bail!("marathon-sim GET /v2/apps: status {status}");
    }
    let front = Front::start(sim_addr, body)?;
    let t = Instant::now();
    Http::new(front.addr()).request("GET", list, None)?;
    r.front_list = t.elapsed();
    let task_events = subscribe_task_events(sim_addr)?;

    // mlb, and the full sync.
    let [http_port, https_port, appid_port, admin_port] = free_ports()?;
    let admin_addr: SocketAddr = format!("127.0.0.1:{admin_port}").parse()?;
    let mut mlb_args: Vec<String> = [
        "--log-format",
        "json",
        "run",
        "-m",
        &front.url(),
        "--group",
        "external",
        "--dataplane",
        "userspace",
        "--vip",
        VIP,
        "--http-port",
        &http_port.to_string(),
        "--https-port",
        &https_port.to_string(),
        "--appid-port",
        &appid_port.to_string(),
        "--admin-addr",
        &admin_addr.to_string(),
    ]
    .iter()
    .map(std::string::ToString::to_string)
    .collect();
    mlb_args.extend(args.mlb_arg.iter().cloned());
    eprintln!("bench sync: starting mlb");
    r.sync_load = load_average();
    let spawned_wall = SystemTime::now();
    let spawned = Instant::now();
    let mut mlb = Proc::spawn_mlb(&release.join("mlb"), &mlb_args, dir)?;
    let profile = (!args.no_perf)
        .then(|| Profile::start(mlb.pid(), dir, "mlb-sync", args.call_graph))
        .transpose()?;
    let mut admin = Http::new(admin_addr);
    let deadline = spawned + SETUP_LIMIT;
    let status = loop {
        mlb.check_alive()?;
        if Instant::now() > deadline {
            bail!("mlb did not sync within {} s", SETUP_LIMIT.as_secs());
        }
        if let Ok(s) = admin_status(&mut admin)
            && s["synced"] == true
            && s["l4_services"].as_u64() == Some(n_tcp as u64)
            && s["http_services"].as_u64() == Some(n_http as u64)
            && s["generation"].as_u64().unwrap_or(0) > 0
        {
            break s;
        }
        thread::sleep(Duration::from_millis(2));
    };
    r.sync = spawned.elapsed();
    r.sync_cpu = cpu::process_secs(mlb.pid()).unwrap_or(f64::NAN);
    r.rss_after_sync = rss(mlb.pid())?;
    r.front_served = front.served();
    r.profile = profile_lines(profile);
    r.services = (
        status["l4_services"].as_u64().unwrap_or(0),
        status["http_services"].as_u64().unwrap_or(0),
        status["rejected"].as_u64().unwrap_or(0),
    );
    for key in ["l4_errors", "http_errors"] {
        let n = status[key]
            .as_object()
            .map(serde_json::Map::len)
            .or(status[key].as_array().map(Vec::len))
            .unwrap_or(0);
        if n > 0 {
            r.stream_problems.push(format!(
                "after the full sync: {n} {key} (e.g. {})",
                status[key]
            ));
        }
    }
    let log = fs::read_to_string(&mlb.stderr_path).unwrap_or_default();
    r.sync_read_at = log_time(&log, "Marathon full sync", spawned_wall);
    r.sync_applied_at = log_time(&log, "dataplanes updated", spawned_wall);
    r.phases = sync_phases(&log);
    eprintln!(
        "bench sync: synced in {:.2} s, VmHWM {:.0} MB",
        r.sync.as_secs_f64(),
        r.rss_after_sync.hwm_mb
    );

    // One task event at a time. From the first kill on, full reads see the simulator's state.
    front.stale();
    let gen_before = generation(&mut admin)?;
    let log_before = log_len(&mlb.stderr_path);
    let cpu_before = cpu::process_secs(mlb.pid()).unwrap_or(f64::NAN);
    r.load.0 = load_average();
    let profile = (!args.no_perf)
        .then(|| Profile::start(mlb.pid(), dir, "mlb-events", args.call_graph))
        .transpose()?;
    for k in 0..events {
        mlb.check_alive()?;
        let app = app_id((k * 7919) % apps);
        match one_event(&mut marathon, &mut admin, &task_events, &app, args.tasks) {
            Ok((kill, start)) => {
                r.kill_ms.push(kill);
                r.start_ms.push(start);
            }
            Err(e) => r.event_failures.push(format!("{app}: {e:#}")),
        }
        if r.event_failures.len() > 10 {
            bail!("too many failed events: {:?}", r.event_failures);
        }
    }
    r.events_profile = profile_lines(profile);
    r.event_generations = generation(&mut admin)? - gen_before;
    r.events_cpu = cpu::process_secs(mlb.pid()).unwrap_or(f64::NAN) - cpu_before;
    r.load.1 = load_average();
    let log_after_events = log_len(&mlb.stderr_path);
    let log = fs::read(&mlb.stderr_path).unwrap_or_default();
    r.mlb_event_ms.push((
        "single events",
        phase_ages(&log, log_before, log_after_events),
    ));
    r.rss_after_events = rss(mlb.pid())?;
    eprintln!(
        "bench sync: {} events, kill p50 {:.1} ms",
        r.kill_ms.len(),
        percentile(&r.kill_ms, 50.0).unwrap_or(f64::NAN)
    );

    // The burst.
    if burst > 0 {
        let log_before = fs::read_to_string(&mlb.stderr_path)
            .unwrap_or_default()
            .matches("Marathon full sync")
            .count();
        let log_start = log_len(&mlb.stderr_path);
        let b = run_burst(
            &mut marathon,
            &mut admin,
            &task_events,
            &mlb.stderr_path,
            (apps, burst),
            args,
        )?;
        let log_end = log_len(&mlb.stderr_path);
        let log_bytes = fs::read(&mlb.stderr_path).unwrap_or_default();
        r.mlb_event_ms.push((
            "the burst's kills",
            phase_ages(&log_bytes, log_start, b.log_at_converged),
        ));
        r.mlb_event_ms.push((
            "the burst's relaunches",
            phase_ages(&log_bytes, b.log_at_converged, log_end),
        ));
        let log = String::from_utf8_lossy(&log_bytes);
        let full_syncs = log.matches("Marathon full sync").count() - log_before;
        r.burst = Some(Burst { full_syncs, ..b });
        r.rss_after_burst = rss(mlb.pid())?;
    }
    mlb.check_alive()?;
    let log = fs::read_to_string(&mlb.stderr_path).unwrap_or_default();
    for line in log
        .lines()
        .filter(|l| l.contains("event stream") && (l.contains("WARN") || l.contains("ERROR")))
    {
        r.stream_problems.push(line.chars().take(300).collect());
    }
    drop(mlb);
    drop(sim);
    Ok(report(args, apps, events, burst, n_tcp, n_http, &r))
}

/// The hottest symbols a profile found, or why there are none.
fn profile_lines(profile: Option<Profile>) -> Vec<String> {
    match profile.map(Profile::finish) {
        Some(Ok(top)) => top,
        Some(Err(e)) => vec![format!("no profile: {e:#}")],
        None => vec!["no profile (--no-perf)".into()],
    }
}

/// Kills one task of `app`; returns (TASK_KILLING → out of rotation, replacement's
/// TASK_RUNNING → active) in ms.
fn one_event(
    marathon: &mut Http,
    admin: &mut Http,
    events: &mpsc::Receiver<TaskEvent>,
    app: &str,
    tasks: usize,
) -> Result<(f64, f64)> {
    let task = running_tasks(marathon, app)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no running task"))?;
    while events.try_recv().is_ok() {}
    let gen0 = generation(admin)?;
    kill_tasks(marathon, std::slice::from_ref(&task))?;
    let gone = wait_visible(admin, gen0, EVENT_LIMIT, |admin| {
        Ok(!backends(admin, app)?
            .iter()
            .any(|(id, state)| is_backend_of(id, &task) && state == "active"))
    })?
    .ok_or_else(|| anyhow!("task {task} still active after {} s", EVENT_LIMIT.as_secs()))?;
    let mut killing = None;
    let mut running = None;
    let deadline = Instant::now() + EVENT_LIMIT;
    while running.is_none() && Instant::now() < deadline {
        match events.recv_timeout(Duration::from_millis(100)) {
            Ok(ev) if ev.task_id == task && ev.status == "TASK_KILLING" => {
                killing.get_or_insert(ev.at);
            }
            Ok(ev) if ev.app_id == app && ev.task_id != task && ev.status == "TASK_RUNNING" => {
                running = Some((ev.at, ev.task_id));
            }
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("our event stream closed"),
        }
    }
    let killing = killing.ok_or_else(|| anyhow!("no TASK_KILLING event for {task}"))?;
    let (running_at, new_task) =
        running.ok_or_else(|| anyhow!("no replacement TASK_RUNNING event for {app}"))?;
    // Active once the new task is routed and the killed one is gone.
    let added = wait_visible(admin, 0, EVENT_LIMIT, |admin| {
        let b = backends(admin, app)?;
        Ok(b.iter()
            .any(|(id, s)| is_backend_of(id, &new_task) && s == "active")
            && b.iter().filter(|(_, s)| s == "active").count() == tasks)
    })?
    .ok_or_else(|| {
        anyhow!(
            "task {new_task} not active after {} s",
            EVENT_LIMIT.as_secs()
        )
    })?;
    // The replacement may already be visible when its event is seen: the wait then returns
    // the moment it checked, so clamp below at its own event time.
    let ms = |later: Instant, earlier: Instant| {
        later.saturating_duration_since(earlier).as_secs_f64() * 1e3
    };
    Ok((ms(gone, killing), ms(added, running_at)))
}

/// Kills one task of each of `burst` apps (of `apps`) in one call; `log` is mlb's log, whose
/// length when the kills were all visible splits mlb's part of the burst in two.
fn run_burst(
    marathon: &mut Http,
    admin: &mut Http,
    events: &mpsc::Receiver<TaskEvent>,
    log: &Path,
    (apps, burst): (usize, usize),
    args: &SyncArgs,
) -> Result<Burst> {
    eprintln!("bench sync: burst of {burst} task kills");
    // Apps spread over the id space, one task each.
    let stride = apps / burst;
    let mut victims: Vec<(String, String)> = Vec::with_capacity(burst);
    for k in 0..burst {
        let app = app_id(k * stride + stride / 2);
        let task = running_tasks(marathon, &app)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("{app}: no running task"))?;
        victims.push((app, task));
    }
    let ids: Vec<String> = victims.iter().map(|(_, t)| t.clone()).collect();
    let killed: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    while events.try_recv().is_ok() {}
    let gen0 = generation(admin)?;
    let t_call = Instant::now();
    kill_tasks(marathon, &ids)?;
    let call = t_call.elapsed();
    let mut pending: Vec<&(String, String)> = victims.iter().collect();
    let converged = wait_visible(admin, gen0, Duration::from_secs(120), |admin| {
        let mut still = Vec::new();
        for v in pending.drain(..) {
            let active = backends(admin, &v.0)?
                .iter()
                .any(|(id, s)| is_backend_of(id, &v.1) && s == "active");
            if active {
                still.push(v);
            }
        }
        pending = still;
        Ok(pending.is_empty())
    })?;
    let log_at_converged = log_len(log);
    let gen1 = generation(admin)?;
    let mut b = Burst {
        call,
        converged: converged.map(|t| t.saturating_duration_since(t_call)),
        log_at_converged,
        generations: gen1 - gen0,
        ..Burst::default()
    };
    // The replacements: relaunched one app at a time by the simulator.
    let limit = Duration::from_millis(4 * args.step_delay_ms * burst as u64 + 60_000);
    let mut pending: Vec<&(String, String)> = victims.iter().collect();
    let relaunched = wait_visible(admin, 0, limit, |admin| {
        let mut still = Vec::new();
        for v in pending.drain(..) {
            let b = backends(admin, &v.0)?;
            let done = !b.iter().any(|(id, _)| is_backend_of(id, &v.1))
                && b.iter().filter(|(_, s)| s == "active").count() == args.tasks;
            if !done {
                still.push(v);
            }
        }
        pending = still;
        // Between checks, give the simulator time: these are slow.
        if !pending.is_empty() {
            thread::sleep(Duration::from_millis(50));
        }
        Ok(pending.is_empty())
    })?;
    b.relaunched = relaunched.map(|t| t.saturating_duration_since(t_call));
    b.relaunch_generations = generation(admin)? - gen1;
    let mut first = None;
    let mut last = None;
    while let Ok(ev) = events.try_recv() {
        if ev.status == "TASK_KILLING" && killed.contains(ev.task_id.as_str()) {
            b.events_received += 1;
            first.get_or_insert(ev.at);
            last = Some(ev.at);
        }
    }
    if let (Some(f), Some(l)) = (first, last) {
        b.events_spread = l - f;
    }
    Ok(b)
}

/// Polls the generation every [`POLL`]; at each new generation (above `after`) runs `check`.
/// Returns when `check` first said yes: the time that generation was first seen when no other
/// came during the check, else the time after the check (an upper bound). `None` after `limit`.
fn wait_visible(
    admin: &mut Http,
    after: u64,
    limit: Duration,
    mut check: impl FnMut(&mut Http) -> Result<bool>,
) -> Result<Option<Instant>> {
    let deadline = Instant::now() + limit;
    let mut checked = after;
    while Instant::now() < deadline {
        let g = generation(admin)?;
        let seen = Instant::now();
        if g == checked && after != 0 {
            thread::sleep(POLL);
            continue;
        }
        let ok = check(admin)?;
        let g2 = generation(admin)?;
        if ok {
            return Ok(Some(if g2 == g { seen } else { Instant::now() }));
        }
        checked = g;
        if after == 0 {
            // Checking at every poll (the change may already be applied): keep the pace.
            thread::sleep(POLL);
        }
    }
    Ok(None)
}

fn is_backend_of(backend_id: &str, task: &str) -> bool {
    backend_id
        .strip_prefix(task)
        .is_some_and(|rest| rest.starts_with(':'))
}

/// (backend id, state) of every port of `app` in `/_mlb/explain/APP`.
fn backends(admin: &mut Http, app: &str) -> Result<Vec<(String, String)>> {
    let (status, body) = admin.request("GET", &format!("/_mlb/explain{app}"), None)?;
    if status != 200 {
        bail!("GET /_mlb/explain{app}: status {status}");
    }
    let v: Value = serde_json::from_slice(&body)?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["ports"].as_array().into_iter().flatten())
        .flat_map(|p| p["backends"].as_array().into_iter().flatten())
        .map(|b| {
            (
                b["id"].as_str().unwrap_or_default().to_string(),
                b["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

fn admin_status(admin: &mut Http) -> Result<Value> {
    let (status, body) = admin.request("GET", "/_mlb/status", None)?;
    if status != 200 {
        bail!("GET /_mlb/status: status {status}");
    }
    Ok(serde_json::from_slice(&body)?)
}

fn generation(admin: &mut Http) -> Result<u64> {
    admin_status(admin)?["generation"]
        .as_u64()
        .ok_or_else(|| anyhow!("/_mlb/status without a generation"))
}

fn running_tasks(marathon: &mut Http, app: &str) -> Result<Vec<String>> {
    let (status, body) = marathon.request("GET", &format!("/v2/apps{app}/tasks"), None)?;
    if status != 200 {
        bail!("GET /v2/apps{app}/tasks: status {status}");
    }
    let v: Value = serde_json::from_slice(&body)?;
    Ok(v["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["state"] == "TASK_RUNNING")
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect())
}

/// `POST /v2/tasks/delete` without scaling: the tasks die, Marathon relaunches them.
fn kill_tasks(marathon: &mut Http, ids: &[String]) -> Result<()> {
    let body = json!({ "ids": ids }).to_string();
    let (status, resp) = marathon.request("POST", "/v2/tasks/delete", Some(&body))?;
    if status != 200 {
        bail!(
            "POST /v2/tasks/delete: status {status}: {}",
            String::from_utf8_lossy(&resp)
        );
    }
    Ok(())
}

/// A `status_update_event` as our own `/v2/events` subscriber received it.
struct TaskEvent {
    at: Instant,
    task_id: String,
    app_id: String,
    status: String,
}

/// Opens `/v2/events?event_type=status_update_event`; a thread forwards each event, stamped
/// with the moment its bytes were read.
fn subscribe_task_events(addr: SocketAddr) -> Result<mpsc::Receiver<TaskEvent>> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    let mut conn = BufReader::new(stream);
    conn.get_mut().write_all(
        format!(
            "GET /v2/events?event_type=status_update_event HTTP/1.1\r\nHost: {addr}\r\n\
             Accept: text/event-stream\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let (status, headers) = read_head(&mut conn)?;
    if status != 200 {
        bail!("GET /v2/events: status {status}");
    }
    let chunked = header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("sync-events".into())
        .spawn(move || {
            let mut buf: Vec<u8> = Vec::new();
            loop {
                let bytes = if chunked {
                    match read_chunk(&mut conn) {
                        Ok(Some(b)) => b,
                        _ => return,
                    }
                } else {
                    let mut b = vec![0u8; 65_536];
                    match conn.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            b.truncate(n);
                            b
                        }
                    }
                };
                let at = Instant::now();
                buf.extend_from_slice(&bytes);
                while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                    let frame: Vec<u8> = buf.drain(..end + 2).collect();
                    let frame = String::from_utf8_lossy(&frame);
                    let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) else {
                        continue;
                    };
                    let Ok(v) = serde_json::from_str::<Value>(data.trim()) else {
                        continue;
                    };
                    let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                    let ev = TaskEvent {
                        at,
                        task_id: field("taskId"),
                        app_id: field("appId"),
                        status: field("taskStatus"),
                    };
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            }
        })?;
    Ok(rx)
}

/// A minimal HTTP/1.1 client on one keep-alive connection (reconnects when it closes).
struct Http {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Http {
    fn new(addr: SocketAddr) -> Self {
        Http { addr, conn: None }
    }

    fn request(&mut self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, Vec<u8>)> {
        let mut last = None;
        for _ in 0..2 {
            match self.try_request(method, path, body) {
                Ok(r) => return Ok(r),
                Err(e) => {
                    self.conn = None;
                    last = Some(e);
                }
            }
        }
        Err(last
            .unwrap_or_else(|| anyhow!("no attempt"))
            .context(format!("{method} http://{}{path}", self.addr)))
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Vec<u8>)> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n",
            self.addr
        );
        if let Some(b) = body {
            let _ = write!(
                req,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            );
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or_default());
        conn.get_mut().write_all(req.as_bytes())?;
        let (status, headers) = read_head(conn)?;
        let mut out = Vec::new();
        if let Some(len) = header(&headers, "content-length") {
            out.resize(len.parse().context("content-length")?, 0);
            conn.read_exact(&mut out)?;
        } else if header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            while let Some(chunk) = read_chunk(conn)? {
                out.extend_from_slice(&chunk);
            }
        } else {
            conn.read_to_end(&mut out)?;
            self.conn = None;
        }
        if header(&headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            self.conn = None;
        }
        Ok((status, out))
    }
}

/// Status code and headers (names lower-cased) of a response.
fn read_head(r: &mut impl BufRead) -> Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        bail!("connection closed before the response");
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Ok((status, headers))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// One chunk of a chunked body; `None` after the last one.
fn read_chunk(r: &mut impl BufRead) -> Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        bail!("connection closed inside a chunked body");
    }
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
        .with_context(|| format!("bad chunk size {line:?}"))?;
    let mut chunk = vec![0u8; size + 2];
    r.read_exact(&mut chunk)?;
    chunk.truncate(size);
    if size == 0 {
        // Trailers end with the empty line just read.
        return Ok(None);
    }
    Ok(Some(chunk))
}

/// Four ports free on loopback now (the kernel's choice).
fn free_ports() -> Result<[u16; 4]> {
    let listeners = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0u16; 4];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

/// A child process, stopped by PID when dropped.
struct Proc {
    name: &'static str,
    child: ChildGuard,
    stderr_path: PathBuf,
}

impl Proc {
    /// Spawns with a raised open-file limit (10,000 service listeners, plus connections):
    /// 200,000, or the hard limit when that cannot be raised.
    fn spawn(name: &'static str, bin: &Path, args: &[String], dir: &Path) -> Result<Proc> {
        let stderr_path = dir.join(format!("{name}.log"));
        let child = Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 200000 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec \"$@\"")
            .arg(name)
            .arg(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr_path)?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Proc {
            name,
            child: ChildGuard::new(child),
            stderr_path,
        })
    }

    /// Starts the simulator and waits for the URL it prints once every app is placed.
    fn spawn_sim(bin: &Path, args: &[String], dir: &Path) -> Result<(Proc, String)> {
        let mut sim = Proc::spawn("marathon-sim", bin, args, dir)?;
        let stdout = sim.child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let url = rx.recv_timeout(SETUP_LIMIT).map_err(|_| {
            anyhow!(
                "marathon-sim printed no URL within {} s",
                SETUP_LIMIT.as_secs()
            )
        })?;
        if url.trim().is_empty() {
            bail!(
                "marathon-sim exited: {}",
                tail(&fs::read_to_string(&sim.stderr_path).unwrap_or_default())
            );
        }
        Ok((sim, url.trim().to_string()))
    }

    fn spawn_mlb(bin: &Path, args: &[String], dir: &Path) -> Result<Proc> {
        let mut mlb = Proc::spawn("mlb", bin, args, dir)?;
        drop(mlb.child.stdout.take());
        Ok(mlb)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}): {}",
                self.name,
                tail(&fs::read_to_string(&self.stderr_path).unwrap_or_default())
            );
        }
        Ok(())
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Peak and current resident set size from `/proc/PID/status`.
fn rss(pid: u32) -> Result<Rss> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Ok(Rss {
        hwm_mb: kb("VmHWM:") / 1024.0,
        rss_mb: kb("VmRSS:") / 1024.0,
    })
}

/// Seconds after `since` of the first JSON log line whose message is `message`.
fn log_time(log: &str, message: &str, since: SystemTime) -> Option<f64> {
    let line = log.lines().find_map(|l| {
        let v: Value = serde_json::from_str(l).ok()?;
        (v["message"] == message).then(|| v["timestamp"].as_str().map(str::to_string))?
    })?;
    let at = utc_seconds_of_day(&line)?;
    let since = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs_f64()
        % 86_400.0;
    Some((at - since).rem_euclid(86_400.0))
}

/// The length of the file at `path` (0 when it cannot be read).
fn log_len(path: &Path) -> usize {
    fs::metadata(path).map_or(0, |m| m.len() as usize)
}

/// mlb's part of the updates logged between bytes `from` and `to` of `log`: of those from task
/// events, of those from re-read apps, and of the latter without waiting for Marathon. Cut at
/// line starts: a line being written when the length was taken belongs to the later phase.
fn phase_ages(log: &[u8], from: usize, to: usize) -> [Vec<f64>; 3] {
    let line_start = |at: usize| {
        let at = at.min(log.len());
        log[..at]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1)
    };
    let text = String::from_utf8_lossy(&log[line_start(from)..line_start(to)]);
    [
        event_ages(&text, "task status", false),
        event_ages(&text, "re-read", false),
        event_ages(&text, "re-read", true),
    ]
}

/// The `event_ms` of the "dataplanes updated" lines of `log` brought by `cause`: mlb's share of
/// the latency; `mlb_only`: without the time its re-reads waited for Marathon's answers
/// (`marathon_ms`).
fn event_ages(log: &str, cause: &str, mlb_only: bool) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("dataplanes updated"))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["cause"] == cause)
        .filter_map(|v| {
            let marathon = if mlb_only {
                v["marathon_ms"].as_f64()
            } else {
                None
            };
            Some(v["event_ms"].as_f64()? - marathon.unwrap_or(0.0))
        })
        .collect()
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    let text = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// mlb's split of its first full sync, from the fields of its log lines: read and parse (and
/// RSS then), model, L4 and HTTP (compile, listeners; the fingerprint beside them) and RSS at
/// the end. The L4 dataplane and the fingerprint run beside the proxy's update.
fn sync_phases(log: &str) -> Vec<String> {
    // From the first full read on: mlb's pass over its static services comes before it.
    let from_read = log
        .find("\"Marathon full sync\"")
        .map_or(log, |i| &log[log[..i].rfind('\n').map_or(0, |n| n + 1)..]);
    let first = |message: &str| {
        from_read
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["message"] == message)
    };
    let field = |v: &Option<Value>, name: &str| {
        v.as_ref()
            .and_then(|v| v[name].as_f64())
            .map_or("—".into(), |x| format!("{x:.0}"))
    };
    let read = first("Marathon full sync");
    let model = first("full model pass done");
    let swap = first("HTTP routing table swapped");
    let applied = first("dataplanes updated");
    vec![
        format!(
            "read {} ms, parse {} ms (RSS then {} MB)",
            field(&read, "read_ms"),
            field(&read, "parse_ms"),
            field(&read, "rss_mb")
        ),
        format!(
            "model {} ms (RSS then {} MB); HTTP proxy {} ms (compile {} ms, RSS then {} MB; \
             listeners {} ms, RSS then {} MB); beside it L4 {} ms and fingerprint {} ms (RSS \
             after {} MB)",
            field(&applied, "model_ms"),
            field(&model, "rss_mb"),
            field(&applied, "http_ms"),
            field(&swap, "compile_ms"),
            field(&swap, "compiled_rss_mb"),
            field(&swap, "listeners_ms"),
            field(&swap, "rss_mb"),
            field(&applied, "l4_ms"),
            field(&applied, "fingerprint_ms"),
            field(&applied, "rss_mb")
        ),
    ]
}

/// `...THH:MM:SS.fffZ` → seconds since midnight UTC.
fn utc_seconds_of_day(ts: &str) -> Option<f64> {
    let time = ts.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// One row of the results table.
fn row(out: &mut String, what: &str, result: &str, target: &str) {
    let _ = writeln!(out, "| {what} | {result} | {target} |");
}

/// A row with p50 / p99 / max of latencies in ms, against the 20 ms p99 target (issue 13).
fn latency_row(out: &mut String, what: &str, values: &[f64]) {
    let ms = |p: f64| percentile(values, p).map_or("—".into(), |v| format!("{v:.1} ms"));
    let p99 = percentile(values, 99.0);
    row(
        out,
        &format!("{what}, p50 / p99 / max"),
        &format!("{} / {} / {}", ms(50.0), ms(99.0), ms(100.0)),
        &format!("p99 < 20 ms: {}", verdict(p99.is_some_and(|p| p < 20.0))),
    );
}

/// Rows of mlb's part of the updates in each phase, from task events and from re-read apps
/// (with and without the wait for Marathon's answers).
fn mlb_part_rows(out: &mut String, phases: &[(&str, [Vec<f64>; 3])]) {
    let causes = [
        "a task's event",
        "a re-read app",
        "a re-read app, without waiting for Marathon's answer",
    ];
    for (phase, ages) in phases {
        for (ms, cause) in ages.iter().zip(causes) {
            let what = format!(
                "— mlb's part in {phase}: event read → dataplanes updated, from {cause} ({} \
                 updates, mlb log)",
                ms.len()
            );
            latency_row(out, &what, ms);
        }
    }
}

/// A row with peak RSS (and current RSS), against the 150 MB target.
fn rss_row(out: &mut String, when: &str, rss: Rss) {
    row(
        out,
        &format!("peak RSS {when} (VmHWM; VmRSS then)"),
        &format!("{:.0} MB ({:.0} MB)", rss.hwm_mb, rss.rss_mb),
        &format!("< 150 MB: {}", verdict(rss.hwm_mb < 150.0)),
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

fn report(
    args: &SyncArgs,
    apps: usize,
    events: usize,
    burst: usize,
    n_tcp: usize,
    n_http: usize,
    r: &Results,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# mlb Marathon sync benchmark\n");
    let _ = writeln!(
        out,
        "{apps} apps × {} tasks ({n_tcp} plain TCP, {n_http} HTTP vhosts; {} tasks), mlb \
         `--dataplane userspace` (release){}; marathon-sim (release) with the apps already \
         running, tasks not binding sockets, step delay {} ms. `cargo xtask bench sync{}`.\n",
        args.tasks,
        apps * args.tasks,
        if args.mlb_arg.is_empty() {
            String::new()
        } else {
            format!(" with `{}`", args.mlb_arg.join(" "))
        },
        args.step_delay_ms,
        if args.quick { " --quick" } else { "" },
    );
    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let at = |v: Option<f64>| v.map_or("—".into(), |v| format!("at {v:.2} s"));
    let _ = writeln!(out, "| measurement | result | target |\n|---|---|---|");
    let sync_ok = verdict(r.sync < Duration::from_secs(1));
    let o = &mut out;
    row(
        o,
        &format!("full sync: mlb started → all {apps} services applied"),
        &s(r.sync),
        &format!("< 1 s: {sync_ok}"),
    );
    row(
        o,
        "— `/v2/apps` read and parsed (mlb log)",
        &at(r.sync_read_at),
        "",
    );
    row(
        o,
        "— dataplanes updated (mlb log)",
        &at(r.sync_applied_at),
        "",
    );
    for phase in &r.phases {
        row(o, "— mlb's own split (its log lines' fields)", phase, "");
    }
    let list = format!(
        "— reference: marathon-sim serving that `/v2/apps` alone ({:.0} MB)",
        r.list_bytes as f64 / 1e6
    );
    row(o, &list, &s(r.sim_list), "");
    let front = format!(
        "— reference: the same body served from memory by the bench ({} of mlb's full reads \
         were; the sync above excludes the simulator's rendering)",
        r.front_served
    );
    row(o, &front, &s(r.front_list), "");
    row(
        o,
        "mlb CPU time until synced (user + system)",
        &format!(
            "{:.2} s; load average {} at the start",
            r.sync_cpu, r.sync_load
        ),
        "",
    );
    rss_row(o, "after the full sync", r.rss_after_sync);
    let killed = format!(
        "task killed: TASK_KILLING → out of rotation ({} events)",
        r.kill_ms.len()
    );
    latency_row(o, &killed, &r.kill_ms);
    latency_row(o, "replacement: TASK_RUNNING → active", &r.start_ms);
    let (single, burst_parts) = r.mlb_event_ms.split_at(r.mlb_event_ms.len().min(1));
    mlb_part_rows(o, single);
    let cpu = format!(
        "{:.2} s; load average {} before, {} after",
        r.events_cpu, r.load.0, r.load.1
    );
    row(o, "— mlb CPU time over the single events", &cpu, "");
    let updates = format!("dataplane updates during the {events} single events");
    row(o, &updates, &r.event_generations.to_string(), "");
    rss_row(o, "after the single events", r.rss_after_events);
    if let Some(b) = &r.burst {
        let what = format!(
            "burst: {burst} tasks killed in one call ({:.0} ms); their TASK_KILLING events received",
            b.call.as_secs_f64() * 1e3
        );
        let got = format!(
            "{} within {:.0} ms",
            b.events_received,
            b.events_spread.as_secs_f64() * 1e3
        );
        row(o, &what, &got, "");
        let done = b.converged.map_or("not within 120 s".into(), s);
        let fast = b
            .converged
            .is_some_and(|d| d < Duration::from_secs(1) && b.full_syncs == 0);
        row(
            o,
            &format!("burst: call → all {burst} out of rotation"),
            &done,
            &format!("< 1 s, no resync: {}", verdict(fast)),
        );
        let counts = format!("{}; {}", b.generations, b.full_syncs);
        row(
            o,
            "burst: dataplane updates until then; full resyncs in the burst",
            &counts,
            "",
        );
        let what = format!(
            "burst: call → all {burst} replacements active (the simulator relaunches them one by one)"
        );
        let done = format!(
            "{} ({} more updates)",
            b.relaunched.map_or("not in time".into(), s),
            b.relaunch_generations
        );
        row(o, &what, &done, "");
        mlb_part_rows(o, burst_parts);
        rss_row(o, "after the burst", r.rss_after_burst);
    }
    let _ = writeln!(
        out,
        "\nSetup: marathon-sim placed the apps in {:.2} s. Services in mlb: {} L4, {} HTTP, {} \
         rejected. t0 of an event is when our own `/v2/events` subscriber read it; \"visible\" \
         is the first 1 ms poll of `/_mlb/status` at whose generation `/_mlb/explain/APP` shows \
         the change. A task's own state change is applied from its event; its app is then re-read \
         after mlb's coalescing window (2 ms idle / 50 ms max). mlb's part ends when its \
         dataplanes are updated; the rest is the event reaching mlb and the admin API polls.",
        r.sim_load.as_secs_f64(),
        r.services.0,
        r.services.1,
        r.services.2
    );
    let _ = writeln!(
        out,
        "\nmlb's hottest symbols during the full sync (`perf record -F 999`, self time):\n\n```"
    );
    for line in &r.profile {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "```\n\nmlb's hottest symbols during the single events (same):\n\n```"
    );
    for line in &r.events_profile {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out, "```");
    if !r.event_failures.is_empty() {
        let _ = writeln!(out, "\nFailed events ({}):", r.event_failures.len());
        for f in &r.event_failures {
            let _ = writeln!(out, "- {f}");
        }
    }
    if !r.stream_problems.is_empty() {
        let _ = writeln!(out, "\nProblems seen:");
        for p in r.stream_problems.iter().take(20) {
            let _ = writeln!(out, "- `{p}`");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunks_and_log_times() {
        let mut r = BufReader::new(&b"5\r\nhello\r\n0\r\n\r\n"[..]);
        assert_eq!(read_chunk(&mut r).unwrap(), Some(b"hello".to_vec()));
        assert_eq!(read_chunk(&mut r).unwrap(), None);
        assert_eq!(utc_seconds_of_day("2026-12-01T01:02:03.5Z"), Some(3723.5));
        assert!(is_backend_of("app-1.abc:0", "app-1.abc"));
        assert!(!is_backend_of("app-1.abcd:0", "app-1.abc"));
    }

    #[test]
    fn mlb_part_of_a_phase_counts_the_lines_begun_in_it() {
        let line = |cause: &str, ms: f64| {
            format!(r#"{{"message":"dataplanes updated","cause":"{cause}","event_ms":{ms}}}"#)
        };
        let reread = r#"{"message":"dataplanes updated","cause":"re-read","event_ms":43.0,"marathon_ms":40.0}"#;
        let first = format!("{}\n{reread}\n", line("task status", 0.5));
        let second = format!("{}\n", line("task status", 41.0));
        let log = format!("{first}{second}");
        let cut = first.len() + 10; // the second phase's line was being written
        assert_eq!(
            phase_ages(log.as_bytes(), 0, cut),
            [vec![0.5], vec![43.0], vec![3.0]]
        );
        assert_eq!(
            phase_ages(log.as_bytes(), cut, log.len()),
            [vec![41.0], vec![], vec![]]
        );
    }

    #[test]
    fn the_sync_split_comes_from_the_first_full_sync_lines() {
        let log = [
            r#"{"message":"full model pass done","rss_mb":12.0}"#,
            r#"{"message":"dataplanes updated","model_ms":0.1,"rss_mb":12.5}"#,
            r#"{"message":"Marathon full sync","read_ms":93.4,"parse_ms":268.6,"rss_mb":112.6}"#,
            r#"{"message":"full model pass done","rss_mb":150.2}"#,
            r#"{"message":"HTTP routing table swapped","compile_ms":447.2,"listeners_ms":642.4,"compiled_rss_mb":180.4,"rss_mb":200.1}"#,
            r#"{"message":"dataplanes updated","model_ms":234.6,"l4_ms":213.5,"http_ms":1099.0,"fingerprint_ms":263.0,"rss_mb":222.4}"#,
            r#"{"message":"dataplanes updated","model_ms":1.0}"#,
        ]
        .join("\n");
        assert_eq!(
            sync_phases(&log),
            [
                "read 93 ms, parse 269 ms (RSS then 113 MB)",
                "model 235 ms (RSS then 150 MB); HTTP proxy 1099 ms (compile 447 ms, RSS then \
                 180 MB; listeners 642 ms, RSS then 200 MB); beside it L4 214 ms and fingerprint \
                 263 ms (RSS after 222 MB)"
            ]
        );
    }
}
