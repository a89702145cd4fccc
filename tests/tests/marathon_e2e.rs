//! End to end: the whole `mlb run` agent watching the Marathon simulator, with real traffic.
//! Apps are created, scaled, killed, made unhealthy and deleted in the simulator, and the tests
//! check that requests through mlb follow: every routed task answers, removed tasks stop
//! answering without a single failed request, explain says why a task or app is left out, and
//! nothing is ever reloaded (same PID, a long-lived connection keeps working).
//!
//! The userspace-dataplane tests run on loopback without privileges, each on ports of its own so
//! they run in parallel; the XDP test builds namespaces (see [`mlb_tests::l4_lab`]) and needs root
//! (it says SKIPPED otherwise).
use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use mlb_tests::{
    agent::{
        EchoConn, HttpConn, IO_TIMEOUT, Mlb, RequestLoop, free_port, http_get, loopback_args,
        wait_for,
    },
    l4_lab::{L4Lab, VIP_V4, XDP_ARGS, backend_v4},
    marathon_sim::{Agent as SimAgent, Fault, MarathonSim, SimConfig},
    netns::on,
    privileges::require_netns_and_bpf,
};
use serde_json::{Value, json};

/// Pause between the simulator's deployment phases: a killed task is `TASK_KILLING` this long
/// before its listeners close, time enough for mlb to stop sending it new requests.
const STEP: Duration = Duration::from_millis(150);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Runs a test's body; an error fails the test with its whole chain of causes.
fn run(test: &str, body: fn() -> Result<()>) {
    if let Err(e) = body() {
        panic!("{test}: {e:#}");
    }
}

/// An HTTP vhost app (`HAPROXY_0_MODE=http`), optionally with a Marathon HTTP health check.
fn vhost_app(id: &str, service_port: u16, vhost: &str, instances: usize, health: bool) -> Value {
    let mut app = json!({
        "id": id,
        "instances": instances,
        "portDefinitions": [{"port": service_port, "protocol": "tcp", "name": "http"}],
        "labels": {
            "HAPROXY_GROUP": "external",
            "HAPROXY_0_MODE": "http",
            "HAPROXY_0_VHOST": vhost,
        },
    });
    if health {
        app["healthChecks"] = json!([{
            "protocol": "HTTP", "path": "/", "portIndex": 0, "gracePeriodSeconds": 1,
            "intervalSeconds": 1, "timeoutSeconds": 1, "maxConsecutiveFailures": 1,
        }]);
    }
    app
}

/// A plain TCP app (`HAPROXY_0_MODE=tcp`) on `service_port`.
fn tcp_app(id: &str, service_port: u16, instances: usize) -> Value {
    json!({
        "id": id,
        "instances": instances,
        "portDefinitions": [{"port": service_port, "protocol": "tcp", "name": "echo"}],
        "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_MODE": "tcp"},
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The simulator's configuration of these tests: `apps` placed on `agents`, [`STEP`] between
/// deployment phases, frequent keep-alives.
fn sim_config(apps: Vec<Value>, agents: Vec<SimAgent>) -> SimConfig {
    SimConfig {
        agents,
        step_delay: STEP,
        keep_alive: Duration::from_millis(500),
        apps,
        ..SimConfig::default()
    }
}

/// The ids of an app's running tasks, sorted.
fn task_ids(sim: &MarathonSim, app: &str) -> Vec<String> {
    let mut ids: Vec<String> = sim.running_tasks(app).into_iter().map(|t| t.id).collect();
    ids.sort();
    ids
}

/// A loopback mlb: the userspace dataplane on VIP 127.0.0.1, its HTTP frontends on ports of
/// this test.
struct Loopback {
    http: SocketAddr,
}

impl Loopback {
    fn start(sim: &MarathonSim, extra: &[&str]) -> Result<(Loopback, Mlb<'static>)> {
        Self::start_on(sim, LOCALHOST, extra)
    }

    /// [`Loopback::start`] with the TCP services on `vip` (another loopback address lets
    /// several instances serve the same service ports).
    fn start_on(
        sim: &MarathonSim,
        vip: IpAddr,
        extra: &[&str],
    ) -> Result<(Loopback, Mlb<'static>)> {
        let (http, https, appid) = (free_port(), free_port(), free_port());
        let mut args = loopback_args(&sim.url(), http, https, appid);
        for a in &mut args {
            if *a == LOCALHOST.to_string() {
                *a = vip.to_string();
            }
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let mlb = Mlb::start(None, SocketAddr::new(LOCALHOST, free_port()), &args)?;
        Ok((
            Loopback {
                http: SocketAddr::new(LOCALHOST, http),
            },
            mlb,
        ))
    }

    /// A request loop on the vhost frontend with `Host: vhost`.
    fn vhost_loop(&self, vhost: &str) -> RequestLoop {
        let (addr, host) = (self.http, vhost.to_owned());
        RequestLoop::start(&format!("vhost {vhost}"), move || {
            http_get(addr, &host, "/")?.task_id()
        })
    }
}

/// A simulator running `apps` and an mlb on loopback with `flags`, synced.
fn loopback(
    apps: Vec<Value>,
    flags: &[&str],
) -> Result<(tokio::runtime::Runtime, MarathonSim, Loopback, Mlb<'static>)> {
    let rt = runtime();
    let config = sim_config(apps, vec![SimAgent::local(LOCALHOST)]);
    let sim = rt
        .block_on(MarathonSim::start(config))
        .context("starting the simulator")?;
    let (lb, mlb) = Loopback::start(&sim, flags)?;
    Ok((rt, sim, lb, mlb))
}

/// Request loops on vhost app `web` (`Host: vhost`) and TCP app `tcp` (on `tcp_addr`), started
/// once mlb routes every task of both, and returned once each task has answered.
fn traffic(
    (sim, lb, mlb): (&MarathonSim, &Loopback, &Mlb<'_>),
    (web, vhost): (&str, &str),
    (tcp, tcp_addr): (&str, SocketAddr),
) -> Result<(RequestLoop, RequestLoop)> {
    mlb.wait_routed(web, 0, &task_ids(sim, web))?;
    mlb.wait_routed(tcp, 0, &task_ids(sim, tcp))?;
    let web_loop = lb.vhost_loop(vhost);
    let tcp_loop = tcp_loop(tcp_addr);
    web_loop.wait_answered_by(&task_ids(sim, web), 0)?;
    tcp_loop.wait_answered_by(&task_ids(sim, tcp), 0)?;
    Ok((web_loop, tcp_loop))
}

/// A request loop over a TCP service port: a fresh connection each time, through which an HTTP
/// request reaches the task (the simulator's TCP ports answer HTTP as well as echo).
fn tcp_loop(addr: SocketAddr) -> RequestLoop {
    RequestLoop::start(&format!("tcp {addr}"), move || {
        http_get(addr, "tcp", "/")?.task_id()
    })
}

/// `count` more answers after the ones seen so far; fails if any comes from `gone`.
fn assert_not_answering(l: &RequestLoop, gone: &str, count: usize) -> Result<()> {
    let mark = l.snapshot().sequence.len();
    wait_for(
        &format!("{count} more answers"),
        Duration::from_secs(10),
        || Ok((l.snapshot().sequence.len() >= mark + count).then_some(())),
    )?;
    let r = l.snapshot();
    ensure!(
        !r.sequence[mark..].iter().any(|t| t == gone),
        "removed task {gone} still answers: {:?}",
        &r.sequence[mark..]
    );
    Ok(())
}

/// Whether a TCP connection to `addr` is refused (`false`: it was accepted).
fn refuses(addr: SocketAddr) -> Result<bool> {
    match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(true),
        Err(e) => bail!("connect to {addr}: {e}"),
        Ok(_) => Ok(false),
    }
}

/// Userspace dataplane on loopback: create, scale up, kill (with and without scaling down), an
/// unhealthy task, delete, create again, all followed by real traffic without a reload.
#[test]
fn userspace_follows_marathon() {
    run(
        "userspace_follows_marathon",
        userspace_follows_marathon_body,
    );
}

fn userspace_follows_marathon_body() -> Result<()> {
    let (web_port, tcp_port, stay_port, fresh_port) =
        (free_port(), free_port(), free_port(), free_port());
    let (web, tcp, stay, fresh) = ("/e2e/web", "/e2e/tcp", "/e2e/stay", "/e2e/fresh");
    let (rt, sim, lb, mut mlb) = loopback(
        vec![
            vhost_app(web, web_port, "web.e2e.test", 2, true),
            tcp_app(tcp, tcp_port, 2),
            tcp_app(stay, stay_port, 1),
        ],
        &["--health-check"],
    )?;
    let pid = mlb.pid();
    let tcp_addr = SocketAddr::new(LOCALHOST, tcp_port);

    // Created: every task of every app is routed and answers.
    mlb.wait_routed(stay, 0, &task_ids(&sim, stay))?;
    let (web_loop, tcp_loop) = traffic((&sim, &lb, &mlb), (web, "web.e2e.test"), (tcp, tcp_addr))?;
    // An HTTP app is also served on its own service port, whatever the Host.
    let web_service = SocketAddr::new(LOCALHOST, web_port);
    let answer = http_get(web_service, "any.host", "/")?.task_id()?;
    ensure!(
        task_ids(&sim, web).contains(&answer),
        "{answer} answered on {web}'s service port"
    );
    let stay_task = task_ids(&sim, stay);
    let mut pinned = EchoConn::open(SocketAddr::new(LOCALHOST, stay_port))?;
    pinned.echo("pinned-at-start")?;

    // Scale up: the new tasks answer, nothing fails.
    rt.block_on(sim.scale(web, 3))?;
    rt.block_on(sim.scale(tcp, 3))?;
    for (app, l) in [(web, &web_loop), (tcp, &tcp_loop)] {
        let ids = task_ids(&sim, app);
        ensure!(ids.len() == 3, "{app} has {ids:?} after scaling to 3");
        mlb.wait_routed(app, 0, &ids)?;
        l.wait_answered_by(&ids, l.snapshot().sequence.len())?;
        l.assert_no_failures("the scale-up")?;
    }

    // Kill a task the way a crash would: Marathon replaces it; the dead one stops answering,
    // the others (and the replacement) answer, nothing fails.
    for (app, l) in [(web, &web_loop), (tcp, &tcp_loop)] {
        let before = task_ids(&sim, app);
        let victim = before[0].clone();
        rt.block_on(sim.kill_task(&victim))?;
        let after = task_ids(&sim, app);
        ensure!(
            after.len() == 3 && !after.contains(&victim),
            "{app}: tasks {after:?} after killing {victim}"
        );
        mlb.wait_routed(app, 0, &after)?;
        l.wait_answered_by(&after, l.snapshot().sequence.len())?;
        assert_not_answering(l, &victim, 30)?;
        l.assert_no_failures(&format!("the kill of {victim}"))?;
    }

    // Kill with scale (`/v2/tasks/delete?scale=true`): one task fewer, nothing fails.
    for (app, l) in [(web, &web_loop), (tcp, &tcp_loop)] {
        let victim = task_ids(&sim, app)[1].clone();
        rt.block_on(sim.kill_task_and_scale(&victim))?;
        let after = task_ids(&sim, app);
        ensure!(
            after.len() == 2 && !after.contains(&victim),
            "{app}: tasks {after:?} after kill-and-scale of {victim}"
        );
        mlb.wait_routed(app, 0, &after)?;
        assert_not_answering(l, &victim, 30)?;
        l.wait_answered_by(&after, l.snapshot().sequence.len())?;
        l.assert_no_failures(&format!("the kill-and-scale of {victim}"))?;
    }
    let web_report = web_loop.stop();
    let tcp_report = tcp_loop.stop();
    eprintln!(
        "changes under load: vhost {} requests {:?}, tcp {} requests {:?}, no failures",
        web_report.total(),
        web_report.answers,
        tcp_report.total(),
        tcp_report.answers
    );

    // Unhealthy (with --health-check): the task leaves rotation and explain says why.
    let web_tasks = task_ids(&sim, web);
    let (sick, well) = (web_tasks[0].clone(), web_tasks[1].clone());
    sim.set_task_health(&sick, false)?;
    let reason = wait_for(
        &format!("explain to exclude the unhealthy task {sick}"),
        Duration::from_secs(10),
        || {
            let explained = mlb.explain(web)?.context("web not explained")?;
            let port = &explained[0]["ports"][0];
            let excluded = port["excluded_tasks"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            Ok(excluded
                .iter()
                .find(|t| t["task_id"] == sick.as_str())
                .map(|t| t["reason"].as_str().unwrap_or_default().to_owned()))
        },
    )?;
    ensure!(
        reason.to_lowercase().contains("health"),
        "the exclusion of {sick} does not say it is about health: {reason:?}"
    );
    mlb.wait_routed(web, 0, std::slice::from_ref(&well))?;
    let text = mlb.explain_cli(web)?;
    ensure!(
        text.contains(&sick) && text.contains(&reason),
        "`mlb explain {web}` does not name {sick} and why ({reason:?}):\n{text}"
    );
    eprintln!("unhealthy task excluded: {reason}");
    let healthy_loop = lb.vhost_loop("web.e2e.test");
    assert_not_answering(&healthy_loop, &sick, 30)?;
    healthy_loop.assert_no_failures("the unhealthy task")?;
    // Healthy again: back in rotation.
    sim.set_task_health(&sick, true)?;
    mlb.wait_routed(web, 0, &web_tasks)?;
    healthy_loop.wait_answered_by(&web_tasks, healthy_loop.snapshot().sequence.len())?;
    healthy_loop.assert_no_failures("the recovery of the unhealthy task")?;
    drop(healthy_loop);

    // Deleted: the vhost answers 503, the TCP port refuses.
    rt.block_on(sim.delete_app(web))?;
    rt.block_on(sim.delete_app(tcp))?;
    for app in [web, tcp] {
        wait_for(
            &format!("{app} to leave mlb's explain"),
            Duration::from_secs(10),
            || Ok(mlb.explain(app)?.is_none().then_some(())),
        )?;
    }
    wait_for(
        "the deleted vhost to answer 503",
        Duration::from_secs(10),
        || {
            let r = http_get(lb.http, "web.e2e.test", "/")?;
            Ok((r.status == 503).then_some(()))
        },
    )?;
    wait_for(
        "the deleted TCP service port to refuse connections",
        Duration::from_secs(10),
        || Ok(refuses(tcp_addr)?.then_some(())),
    )?;
    wait_for(
        "the deleted HTTP app's service port to refuse connections",
        Duration::from_secs(10),
        || Ok(refuses(web_service)?.then_some(())),
    )?;

    // Created again, without restarting mlb: routed, same process, the pinned connection (to an
    // app that was never touched) still echoes.
    rt.block_on(sim.create_app(vhost_app(fresh, fresh_port, "fresh.e2e.test", 2, false)))?;
    let fresh_tasks = task_ids(&sim, fresh);
    mlb.wait_routed(fresh, 0, &fresh_tasks)?;
    let fresh_loop = lb.vhost_loop("fresh.e2e.test");
    fresh_loop.wait_answered_by(&fresh_tasks, 0)?;
    fresh_loop.assert_no_failures("the new app")?;
    drop(fresh_loop);
    mlb.check_running()?;
    ensure!(mlb.pid() == pid, "mlb was restarted");
    ensure!(
        mlb.status()?["pid"] == pid,
        "the admin API answers from another process than {pid}"
    );
    pinned.echo("pinned-at-end")?;
    ensure!(
        task_ids(&sim, stay) == stay_task,
        "the untouched app's task changed"
    );
    mlb.finish();
    Ok(())
}

/// An app with a bad label next to good ones: the good ones are served, explain names the bad
/// app and the label; fixing the label exposes it, still without disturbing the others.
#[test]
fn bad_labels_leave_good_apps_served() {
    run("bad_labels_leave_good_apps_served", bad_labels_body);
}

fn bad_labels_body() -> Result<()> {
    let (web_port, tcp_port, bad_port, fixed_port) =
        (free_port(), free_port(), free_port(), free_port());
    let (web, tcp, bad, bad_bind) = (
        "/labels/web",
        "/labels/tcp",
        "/labels/bad-port",
        "/labels/bad-bind",
    );
    let mut bad_app = tcp_app(bad, bad_port, 1);
    bad_app["labels"]["HAPROXY_0_PORT"] = json!("abc");
    let mut bad_bind_app = vhost_app(bad_bind, free_port(), "bad.labels.test", 1, false);
    bad_bind_app["labels"]["HAPROXY_0_BIND_ADDR"] = json!("not-an-ip");
    let (rt, sim, lb, mlb) = loopback(
        vec![
            vhost_app(web, web_port, "good.labels.test", 2, false),
            tcp_app(tcp, tcp_port, 2),
            bad_app,
            bad_bind_app,
        ],
        &[],
    )?;
    let (web_loop, tcp_loop) = traffic(
        (&sim, &lb, &mlb),
        (web, "good.labels.test"),
        (tcp, SocketAddr::new(LOCALHOST, tcp_port)),
    )?;

    for (app_id, label, value) in [
        (bad, "HAPROXY_0_PORT", "abc"),
        (bad_bind, "HAPROXY_0_BIND_ADDR", "not-an-ip"),
    ] {
        let explained = mlb
            .explain(app_id)?
            .with_context(|| format!("{app_id} is not explained"))?;
        let app = &explained[0];
        ensure!(
            app["app_id"] == app_id && app["exposed"] == false,
            "explain of {app_id}: {app}"
        );
        let why = format!(
            "{} {}",
            app["problem"].as_str().unwrap_or_default(),
            app["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["reason"].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        );
        ensure!(
            why.contains(label) && why.contains(value),
            "explain of {app_id} does not name {label} and its value {value:?}: {app}"
        );
        let text = mlb.explain_cli(app_id)?;
        ensure!(
            text.contains(app_id) && text.contains(label),
            "`mlb explain {app_id}` does not name the app and the label:\n{text}"
        );
        eprintln!("mlb explain {app_id}:\n{text}");
    }
    let refused = http_get(lb.http, "bad.labels.test", "/")?;
    ensure!(
        refused.status == 503,
        "the vhost of the app with a bad label answers {refused:?}"
    );
    // Nothing listens on the bad app's declared service port.
    ensure!(
        TcpStream::connect_timeout(&SocketAddr::new(LOCALHOST, bad_port), IO_TIMEOUT).is_err(),
        "the bad app is served on its service port"
    );

    // Fixed: exposed on the port the label now names; the good apps never noticed.
    rt.block_on(sim.update_app(
        bad,
        json!({"labels": {
            "HAPROXY_GROUP": "external",
            "HAPROXY_0_MODE": "tcp",
            "HAPROXY_0_PORT": fixed_port.to_string(),
        }}),
    ))?;
    let bad_tasks = task_ids(&sim, bad);
    mlb.wait_routed(bad, 0, &bad_tasks)?;
    let answer = http_get(SocketAddr::new(LOCALHOST, fixed_port), "tcp", "/")?.task_id()?;
    ensure!(
        bad_tasks.contains(&answer),
        "{answer} answered for the fixed app"
    );
    web_loop.assert_no_failures("the bad app and its fix")?;
    tcp_loop.assert_no_failures("the bad app and its fix")?;
    let (w, t) = (web_loop.stop(), tcp_loop.stop());
    ensure!(
        w.total() > 10 && t.total() > 10,
        "too few requests: {w:?} {t:?}"
    );
    mlb.finish();
    Ok(())
}

/// Marathon misbehaves (5xx, garbage, a silent event stream): mlb keeps serving the last good
/// state, and follows Marathon again once it recovers.
#[test]
fn marathon_faults_keep_last_good_state() {
    run("marathon_faults_keep_last_good_state", marathon_faults_body);
}

fn marathon_faults_body() -> Result<()> {
    let (web_port, tcp_port) = (free_port(), free_port());
    let (web, tcp) = ("/faults/web", "/faults/tcp");
    let (rt, sim, lb, mlb) = loopback(
        vec![
            vhost_app(web, web_port, "faults.e2e.test", 2, false),
            tcp_app(tcp, tcp_port, 2),
        ],
        &["--sse-stall-timeout", "1", "--max-backoff", "1"],
    )?;
    let (web_loop, tcp_loop) = traffic(
        (&sim, &lb, &mlb),
        (web, "faults.e2e.test"),
        (tcp, SocketAddr::new(LOCALHOST, tcp_port)),
    )?;

    let faults: [(&str, Vec<Fault>); 2] = [
        (
            "/v2/apps answering 503",
            vec![Fault::AppsStatus { status: Some(503) }],
        ),
        (
            "/v2/apps answering garbage",
            vec![Fault::AppsGarbage { enabled: true }],
        ),
    ];
    let mut instances = 2;
    for (name, fault) in faults {
        let routed_web = mlb.active_tasks(web, 0)?;
        let routed_tcp = mlb.active_tasks(tcp, 0)?;
        for f in fault {
            sim.inject(f);
        }
        // The reconnect re-reads /v2/apps, which fails now.
        sim.inject(Fault::DropEventStreams);
        let error = wait_for(
            &format!("mlb to report the failed read ({name})"),
            Duration::from_secs(10),
            || Ok(mlb.status()?["last_error"].as_str().map(str::to_owned)),
        )?;
        eprintln!("{name}: mlb reports {error:?}");
        // A few reconnect attempts later (backoff ≤ 1 s): still the last good state.
        std::thread::sleep(Duration::from_millis(1500));
        ensure!(
            mlb.active_tasks(web, 0)? == routed_web && mlb.active_tasks(tcp, 0)? == routed_tcp,
            "{name}: the routed tasks changed without a good read from Marathon"
        );
        for (l, routed) in [(&web_loop, &routed_web), (&tcp_loop, &routed_tcp)] {
            l.wait_answered_by(routed, l.snapshot().sequence.len())?;
            l.assert_no_failures(name)?;
        }
        // Marathon changes meanwhile (a scale-up), then recovers: mlb follows.
        instances += 1;
        rt.block_on(sim.scale(web, instances))?;
        sim.inject(Fault::Clear);
        let ids = task_ids(&sim, web);
        mlb.wait_routed(web, 0, &ids)?;
        web_loop.wait_answered_by(&ids, web_loop.snapshot().sequence.len())?;
        ensure!(
            mlb.status()?["last_error"].is_null(),
            "{name}: mlb still reports an error after the fault cleared"
        );
        web_loop.assert_no_failures(&format!("the recovery from {name}"))?;
        tcp_loop.assert_no_failures(&format!("the recovery from {name}"))?;
    }

    // The event stream goes silent (not even keep-alives): mlb notices after
    // --sse-stall-timeout, reconnects and re-reads /v2/apps, so a change made meanwhile is
    // routed although no event arrives.
    sim.inject(Fault::StallEventStreams { stalled: true });
    rt.block_on(sim.scale(tcp, 3))?;
    let ids = task_ids(&sim, tcp);
    mlb.wait_routed(tcp, 0, &ids)?;
    tcp_loop.wait_answered_by(&ids, tcp_loop.snapshot().sequence.len())?;
    ensure!(
        mlb.log().contains("stalled"),
        "mlb did not log the stalled event stream"
    );
    sim.inject(Fault::Clear);
    // And events flow again once the stream is back.
    rt.block_on(sim.scale(tcp, 2))?;
    mlb.wait_routed(tcp, 0, &task_ids(&sim, tcp))?;
    for l in [&web_loop, &tcp_loop] {
        l.assert_no_failures("the stalled event stream")?;
    }
    let (w, t) = (web_loop.stop(), tcp_loop.stop());
    eprintln!(
        "faults: vhost {} requests {:?}, tcp {} requests {:?}, no failures",
        w.total(),
        w.answers,
        t.total(),
        t.answers
    );
    mlb.finish();
    Ok(())
}

/// XDP in namespaces: the simulator's tasks in two backend namespaces, mlb in the lb namespace
/// with the XDP dataplane on lb's veths, clients in the client namespace. Connections through the
/// VIP reach the tasks, scaling changes the set, established connections survive a scale-up
/// and a scale-down of other tasks.
#[test]
fn xdp_follows_marathon() {
    if require_netns_and_bpf("xdp_follows_marathon") {
        run("xdp_follows_marathon", xdp_follows_marathon_body);
    }
}

fn xdp_follows_marathon_body() -> Result<()> {
    const PORT: u16 = 8080;
    const APP: &str = "/xdp/tcp";
    let lab = L4Lab::new()?;
    let rt = lab.lb.runtime(2)?;
    let config = sim_config(
        vec![tcp_app(APP, PORT, 2)],
        vec![
            SimAgent::in_netns(backend_v4(1), lab.backend_ns(1).name()),
            SimAgent::in_netns(backend_v4(2), lab.backend_ns(2).name()),
        ],
    );
    let sim =
        Arc::new(on(&rt, MarathonSim::start(config))?.context("starting the simulator in lb")?);
    let args: Vec<String> = [
        "-m",
        &sim.url(),
        "--group",
        "external",
        "--vip",
        VIP_V4,
        "--http-port",
        "18080",
        "--https-port",
        "18443",
        "--appid-port",
        "19091",
    ]
    .iter()
    .chain(&XDP_ARGS)
    .map(|s| (*s).to_owned())
    .collect();
    let mlb = Mlb::start(Some(&lab.lb), SocketAddr::new(LOCALHOST, 19090), &args)?;
    let pid = mlb.pid();
    let vip = SocketAddr::new(VIP_V4.parse()?, PORT);

    // `n` new connections from cli, each with one keep-alive request answered by its task.
    let connect = |n: usize| -> Result<Vec<(HttpConn, String)>> {
        lab.cli.enter(move || {
            (0..n)
                .map(|i| {
                    let mut c = HttpConn::open(vip)?;
                    let id = c
                        .get("xdp", "/", false)
                        .with_context(|| format!("connection #{i} through the VIP"))?
                        .task_id()?;
                    Ok((c, id))
                })
                .collect::<Result<Vec<_>>>()
        })?
    };
    let distinct = |conns: &[(HttpConn, String)]| {
        let mut ids: Vec<String> = conns.iter().map(|(_, id)| id.clone()).collect();
        ids.sort();
        ids.dedup();
        ids
    };
    // Another request on each open connection: still answered by the same task.
    let still_same = |open: &mut [(HttpConn, String)], skip: &str, when: &str| -> Result<()> {
        for (i, (conn, id)) in open.iter_mut().enumerate() {
            if id == skip {
                continue;
            }
            let again = conn
                .get("xdp", "/", false)
                .with_context(|| format!("open connection #{i} after {when}"))?
                .task_id()?;
            ensure!(
                again == *id,
                "open connection #{i} moved from {id} to {again} on {when}"
            );
        }
        Ok(())
    };

    let first = task_ids(&sim, APP);
    mlb.wait_routed(APP, 0, &first)?;
    let mut open = connect(24)?;
    ensure!(
        distinct(&open) == first,
        "24 connections reached {:?}, not every task of {first:?}",
        distinct(&open)
    );

    // Scale up: new connections reach the new tasks too; the open ones keep their task.
    let s = sim.clone();
    on(&rt, async move { s.scale(APP, 4).await })??;
    let grown = task_ids(&sim, APP);
    ensure!(grown.len() == 4, "tasks after scaling to 4: {grown:?}");
    mlb.wait_routed(APP, 0, &grown)?;
    let fresh = connect(40)?;
    ensure!(
        distinct(&fresh) == grown,
        "40 new connections reached {:?}, not every task of {grown:?}",
        distinct(&fresh)
    );
    still_same(&mut open, "", "the scale-up")?;
    // XDP forwarded them: lb's own TCP stack holds no socket on the VIP.
    let sockets = lab.lb_tcp_sockets()?;
    ensure!(
        !sockets.contains(&vip.to_string()),
        "lb's kernel terminates connections to {vip}:\n{sockets}"
    );

    // Scale down by killing one of the first tasks: it gets no new connections; open
    // connections to the other tasks keep working.
    let victim = first[0].clone();
    let (s, v) = (sim.clone(), victim.clone());
    on(&rt, async move { s.kill_task_and_scale(&v).await })??;
    let shrunk = task_ids(&sim, APP);
    ensure!(
        shrunk.len() == 3 && !shrunk.contains(&victim),
        "tasks after killing {victim}: {shrunk:?}"
    );
    mlb.wait_routed(APP, 0, &shrunk)?;
    let after = connect(30)?;
    ensure!(
        distinct(&after) == shrunk,
        "30 new connections reached {:?}, not exactly {shrunk:?}",
        distinct(&after)
    );
    still_same(&mut open, &victim, "the scale-down")?;
    ensure!(mlb.pid() == pid, "mlb was restarted");
    mlb.finish();
    // The simulator's sockets close on its runtime (in lb) before the namespaces go.
    let sim = Arc::into_inner(sim).context("the simulator is still shared")?;
    on(&rt, sim.shutdown())?;
    Ok(())
}

/// The server row of `task` (a simulator task on loopback) in proxy `pxname`.
fn server_row(
    rows: &[mlb::stats::csv::Record],
    pxname: &str,
    sim: &MarathonSim,
    app: &str,
    task: &str,
) -> Result<mlb::stats::csv::Record> {
    let info = sim.tasks(app).into_iter().find(|t| t.id == task);
    let port = info.context("task gone")?.ports[0];
    let svname = format!("127_0_0_1_{port}");
    rows.iter()
        .find(|r| r.get("pxname") == pxname && r.get("svname") == svname)
        .cloned()
        .with_context(|| format!("no row {pxname}/{svname}"))
}

/// The stats CSV under traffic, for the HTTP proxy and the userspace TCP dataplane: marathon-lb's
/// names, UP / `no check`, sessions, responses by class; a killed task (`TASK_KILLING`) shows
/// MAINT with its open connection, then MAINT with none once it closes, which is what zdd.py
/// waits for before killing it.
#[test]
fn stats_csv_follows_traffic_and_draining() {
    run("stats_csv_follows_traffic_and_draining", stats_csv_body);
}

fn stats_csv_body() -> Result<()> {
    let (web_port, tcp_port) = (free_port(), free_port());
    let (web, tcp) = ("/stats/web", "/stats/tcp");
    let rt = runtime();
    // A long TASK_KILLING phase: time to look at the draining server.
    let config = SimConfig {
        step_delay: Duration::from_millis(1500),
        ..sim_config(
            vec![
                vhost_app(web, web_port, "web.stats.test", 2, true),
                tcp_app(tcp, tcp_port, 1),
            ],
            vec![SimAgent::local(LOCALHOST)],
        )
    };
    let sim = rt.block_on(MarathonSim::start(config))?;
    let (lb, mlb) = Loopback::start(&sim, &["--health-check"])?;
    let tcp_addr = SocketAddr::new(LOCALHOST, tcp_port);
    let (web_loop, tcp_loop) =
        traffic((&sim, &lb, &mlb), (web, "web.stats.test"), (tcp, tcp_addr))?;
    tcp_loop.stop();
    let web_report = web_loop.stop();
    let mut pinned = EchoConn::open(tcp_addr)?;
    pinned.echo("held-open")?;

    let rows = mlb.stats_csv()?;
    let web_px = format!("stats_web_{web_port}");
    let mut answered = 0;
    for task in task_ids(&sim, web) {
        let row = server_row(&rows, &web_px, &sim, web, &task)?;
        ensure!(row.get("status") == "UP", "{task}: {row:?}");
        ensure!(
            row.get("mode") == "http" && row.get("type") == "2",
            "{row:?}"
        );
        answered += row.int("hrsp_2xx")?;
    }
    ensure!(
        answered as usize >= web_report.total(),
        "{answered} 2xx counted for {} requests made",
        web_report.total()
    );
    let fe = rows
        .iter()
        .find(|r| r.get("pxname") == web_px && r.get("svname") == "FRONTEND");
    ensure!(fe.is_some_and(|r| r.get("status") == "OPEN"), "{rows:?}");
    // The same figure in /metrics.
    let metrics = mlb.admin_get("/metrics")?.body;
    let series = format!("mlb_backend_http_responses_total{{backend=\"{web_px}\",code=\"2xx\"}} ");
    let in_metrics: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .with_context(|| format!("no {series} in {metrics}"))?
        .parse()?;
    ensure!(
        in_metrics >= answered,
        "{series}{in_metrics}, CSV {answered}"
    );
    // Every answered request timed.
    let value = |metrics: &str, series: &str| -> Result<f64> {
        let v = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .with_context(|| format!("no {series} in {metrics}"))?;
        Ok(v.parse()?)
    };
    let timed = value(
        &metrics,
        &format!("mlb_http_request_duration_seconds_count{{backend=\"{web_px}\"}}"),
    )?;
    ensure!(
        timed >= answered as f64,
        "{timed} timed, {answered} answered"
    );

    let tcp_px = format!("stats_tcp_{tcp_port}");
    let victim = task_ids(&sim, tcp)[0].clone();
    let row = server_row(&rows, &tcp_px, &sim, tcp, &victim)?;
    ensure!(
        row.get("status") == "no check",
        "no health check defined: {row:?}"
    );
    ensure!(row.int("scur")? == 1 && row.int("stot")? >= 2, "{row:?}");
    ensure!(row.int("bin")? > 0 && row.int("bout")? > 0, "{row:?}");

    // Kill it: MAINT while TASK_KILLING, its open connection counted until it closes.
    std::thread::scope(|s| -> Result<()> {
        let killing = s.spawn(|| rt.block_on(sim.kill_task(&victim)));
        let draining = |sessions: u64| {
            wait_for(
                &format!("{victim} MAINT with {sessions} sessions"),
                Duration::from_secs(1),
                || {
                    let row = server_row(&mlb.stats_csv()?, &tcp_px, &sim, tcp, &victim)?;
                    let qcur = row.int("qcur")?;
                    Ok(
                        (row.get("status") == "MAINT" && row.int("scur")? == sessions && qcur == 0)
                            .then_some(()),
                    )
                },
            )
        };
        draining(1)?;
        drop(pinned);
        draining(0)?;
        killing.join().expect("kill thread")?;
        Ok(())
    })?;
    // The kill and the replacement came as Marathon events, each applied.
    let metrics = mlb.admin_get("/metrics")?.body;
    ensure!(value(&metrics, "mlb_marathon_events_total")? >= 1.0);
    ensure!(value(&metrics, "mlb_event_to_dataplane_seconds_count")? >= 1.0);
    mlb.finish();
    Ok(())
}

/// The `<tr>` of `name` in proxy `px` of a page's DOM.
fn dom_row<'a>(dom: &'a str, px: &str, name: &str) -> Result<&'a str> {
    let attrs = format!("data-proxy=\"{px}\" data-name=\"{name}\"");
    let at = dom
        .find(&attrs)
        .with_context(|| format!("no row {px}/{name} in the DOM:\n{dom}"))?;
    let start = dom[..at].rfind("<tr").context("row start")?;
    let end = at + dom[at..].find("</tr>").context("row end")?;
    Ok(&dom[start..end])
}

/// `/haproxy?stats` as headless Chromium loads it, with an HTTP app (health-checked: UP) and a
/// TCP app (no check) under traffic, one TCP task being killed with a connection still open
/// (MAINT): every row with its state, the page reloading itself, and a screenshot in the test's
/// output directory (`docs/stats-page.png` too with `MLB_UPDATE_SCREENSHOT=1`).
#[test]
fn stats_page_in_headless_chromium() {
    run("stats_page_in_headless_chromium", stats_page_body);
}

fn stats_page_body() -> Result<()> {
    let (web_port, tcp_port) = (free_port(), free_port());
    let (web, tcp) = ("/shop/web", "/shop/db");
    let rt = runtime();
    // The killed task stays TASK_KILLING (MAINT) long enough for two Chromium runs.
    let config = SimConfig {
        step_delay: Duration::from_secs(6),
        ..sim_config(
            vec![
                vhost_app(web, web_port, "shop.example.test", 2, true),
                tcp_app(tcp, tcp_port, 2),
            ],
            vec![SimAgent::local(LOCALHOST)],
        )
    };
    let sim = rt.block_on(MarathonSim::start(config))?;
    let (lb, mlb) = Loopback::start(&sim, &["--health-check"])?;
    let tcp_addr = SocketAddr::new(LOCALHOST, tcp_port);
    let (web_loop, tcp_loop) = traffic(
        (&sim, &lb, &mlb),
        (web, "shop.example.test"),
        (tcp, tcp_addr),
    )?;
    // The TCP loop's short connections would blur which task holds the pinned one.
    tcp_loop.stop();
    let mut pinned = EchoConn::open(tcp_addr)?;
    pinned.echo("held-open")?;
    let (web_px, tcp_px) = (
        format!("shop_web_{web_port}"),
        format!("shop_db_{tcp_port}"),
    );
    let tcp_tasks = task_ids(&sim, tcp);
    // The pinned connection's task: the one with an open session.
    let victim = wait_for(
        "the pinned connection counted",
        Duration::from_secs(5),
        || {
            // Once the loop's last connections closed: one session in all, the pinned one.
            let rows = mlb.stats_csv()?;
            let mut open = Vec::new();
            for t in &tcp_tasks {
                let scur = server_row(&rows, &tcp_px, &sim, tcp, t)?.int("scur")?;
                open.extend(std::iter::repeat_n(t, scur as usize));
            }
            Ok((open.len() == 1).then(|| open[0]))
        },
    )?
    .clone();
    let svname = |app: &str, task: &str| -> Result<String> {
        let port = sim
            .tasks(app)
            .into_iter()
            .find(|t| t.id == task)
            .context("task gone")?
            .ports[0];
        Ok(format!("127_0_0_1_{port}"))
    };
    let victim_name = svname(tcp, &victim)?;
    let out_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("stats-page");
    std::fs::create_dir_all(&out_dir)?;
    let url = format!("http://{}/haproxy?stats", mlb.admin);

    std::thread::scope(|s| -> Result<()> {
        let killing = s.spawn(|| rt.block_on(sim.kill_task(&victim)));
        wait_for("the killed task MAINT", Duration::from_secs(5), || {
            let row = server_row(&mlb.stats_csv()?, &tcp_px, &sim, tcp, &victim)?;
            Ok((row.get("status") == "MAINT").then_some(()))
        })?;
        // A second apart, so the page has session rates to show.
        std::thread::sleep(Duration::from_millis(1100));
        let dom = mlb_tests::chromium::dump_dom(&out_dir.join("profile"), &url)?;
        ensure!(
            dom.contains("http-equiv=\"refresh\""),
            "no auto-refresh:\n{dom}"
        );
        for task in task_ids(&sim, web) {
            let row = dom_row(&dom, &web_px, &svname(web, &task)?)?;
            ensure!(
                row.contains("data-status=\"UP\"") && row.contains("st-up"),
                "{row}"
            );
        }
        let row = dom_row(&dom, &tcp_px, &victim_name)?;
        ensure!(
            row.contains("data-status=\"MAINT\"") && row.contains("st-maint"),
            "{row}"
        );
        for task in tcp_tasks.iter().filter(|t| **t != victim) {
            let row = dom_row(&dom, &tcp_px, &svname(tcp, task)?)?;
            ensure!(row.contains("data-status=\"no check\""), "{row}");
        }
        for px in [&web_px, &tcp_px] {
            ensure!(dom_row(&dom, px, "Frontend")?.contains(">OPEN<"));
            ensure!(dom_row(&dom, px, "Backend")?.contains("data-status=\"UP\""));
        }
        let shot = out_dir.join("stats-page.png");
        mlb_tests::chromium::screenshot(&out_dir.join("profile"), &url, &shot, (1280, 900))?;
        if std::env::var_os("MLB_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
            let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
            std::fs::copy(&shot, docs.join("stats-page.png"))?;
        }
        drop(pinned);
        killing.join().expect("kill thread")?;
        Ok(())
    })?;
    web_loop.stop();
    mlb.finish();
    Ok(())
}

/// Waits until `app` is gone from Marathon and no deployment holds its name.
fn wait_deleted(sim: &MarathonSim, app: &str) -> Result<()> {
    wait_for(&format!("{app} deleted"), Duration::from_secs(5), || {
        let deployments = http_get(sim.addr(), "marathon", "/v2/deployments")?.body;
        let idle = serde_json::from_str::<Value>(&deployments)?
            .as_array()
            .is_some_and(Vec::is_empty);
        Ok((idle && !sim.app_ids().iter().any(|a| a == app)).then_some(()))
    })
}

/// Once a deployment ended: `gone` deleted, `app` running `count` tasks, every one of them
/// answering `load`.
fn deployed(
    sim: &MarathonSim,
    load: &RequestLoop,
    (gone, app): (&str, &str),
    count: usize,
) -> Result<Vec<String>> {
    wait_deleted(sim, gone)?;
    let tasks = task_ids(sim, app);
    ensure!(tasks.len() == count, "{app}: {tasks:?}");
    load.wait_answered_by(&tasks, load.snapshot().sequence.len())?;
    Ok(tasks)
}

/// Stops `load`; fails if any of its requests failed.
fn stop_without_failures(load: RequestLoop) -> Result<()> {
    let report = load.stop();
    eprintln!("{} requests during the deployments", report.total());
    ensure!(
        report.failures.is_empty(),
        "{} of {} requests failed: {:?}",
        report.failures.len(),
        report.total(),
        report.failures
    );
    Ok(())
}

/// Writes `app` with zdd's deployment labels (group `group`, alternate port `alt_port`) to a
/// file of this test; returns its directory (to remove at the end) and the file.
fn zdd_app_file(
    mut app: Value,
    group: &str,
    alt_port: u16,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    app["labels"]["HAPROXY_DEPLOYMENT_GROUP"] = json!(group);
    app["labels"]["HAPROXY_DEPLOYMENT_ALT_PORT"] = json!(alt_port.to_string());
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{group}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("app.json");
    std::fs::write(&file, app.to_string())?;
    Ok((dir, file))
}

/// A blue/green deployment of a vhost app with `mlb zdd` under constant load: blue is deployed,
/// then green replaces it step by step (mlb drains blue tasks as green ones turn healthy, zdd
/// kills what every mlb shows drained); then a hybrid deployment (`--new-instances 1`: both
/// colours serve) completed with `--complete-cur`; all without a single failed request. The app
/// file declares only `portDefinitions` (zdd.py crashes on those).
#[test]
fn zdd_blue_green_under_load_without_a_failed_request() {
    run(
        "zdd_blue_green_under_load_without_a_failed_request",
        zdd_body,
    );
}

fn zdd_body() -> Result<()> {
    let (port, alt_port) = (free_port(), free_port());
    let (_rt, sim, lb, mlb) = loopback(Vec::new(), &["--health-check"])?;
    let app = vhost_app("/zdd/web", port, "zdd.example.test", 3, true);
    let (dir, app_file) = zdd_app_file(app, "zdd-web", alt_port)?;
    let (blue, green) = ("/zdd/web-blue", "/zdd/web-green");

    zdd_to_end(&sim, &[&mlb], &app_file, &[])?;
    wait_for("blue running", Duration::from_secs(10), || {
        Ok((task_ids(&sim, blue).len() == 3).then_some(()))
    })?;
    mlb.wait_routed("/zdd-web", 0, &task_ids(&sim, blue))?;
    let load = lb.vhost_loop("zdd.example.test");
    load.wait_answered_by(&task_ids(&sim, blue), 0)?;

    zdd_to_end(&sim, &[&mlb], &app_file, &[])?;
    // Blue was deleted at the end: its last tasks are TASK_KILLING for a moment.
    // (and its app, so that the next deployment may take its name again).
    wait_deleted(&sim, blue)?;
    let green_tasks = task_ids(&sim, green);
    ensure!(green_tasks.len() == 3, "green: {green_tasks:?}");
    mlb.wait_routed("/zdd-web", 0, &green_tasks)?;
    load.wait_answered_by(&green_tasks, 0)?;

    // Hybrid: one blue task next to green's, both colours serving; then completed to blue.
    zdd_to_end(&sim, &[&mlb], &app_file, &["--new-instances", "1"])?;
    // The green task zdd scaled away may still be stopping as zdd returns (the simulator
    // kills tasks asynchronously, like Mesos): wait for the hybrid shape, briefly.
    let (blue_tasks, green_tasks) =
        wait_for("hybrid: 1 blue, 2 green", Duration::from_secs(5), || {
            let (blue_tasks, green_tasks) = (task_ids(&sim, blue), task_ids(&sim, green));
            Ok((blue_tasks.len() == 1 && green_tasks.len() == 2)
                .then_some((blue_tasks, green_tasks)))
        })?;
    let both: Vec<String> = blue_tasks.iter().chain(&green_tasks).cloned().collect();
    load.wait_answered_by(&both, load.snapshot().sequence.len())?;
    zdd_to_end(&sim, &[&mlb], &app_file, &["--complete-cur"])?;
    deployed(&sim, &load, (green, blue), 3)?;
    stop_without_failures(load)?;
    let _ = std::fs::remove_dir_all(&dir);
    mlb.finish();
    Ok(())
}

/// The arguments of `mlb zdd` with the flags of these tests (never prompts, polls fast) and
/// `extra`, against every load balancer of `lbs`.
fn zdd_args(
    sim: &MarathonSim,
    lbs: &[&Mlb<'_>],
    app_file: &std::path::Path,
    extra: &[&str],
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        "zdd",
        "--force",
        "--step-delay",
        "0.2",
        "--max-wait",
        "30",
        "-m",
        &sim.url(),
        "-j",
    ]
    .map(Into::into)
    .to_vec();
    args.push(app_file.into());
    for lb in lbs {
        args.extend(["-l".into(), format!("http://{}", lb.admin).into()]);
    }
    args.extend(extra.iter().map(Into::into));
    args
}

/// Runs `mlb zdd` to its end (bounded in time), showing what it decided.
fn zdd_to_end(
    sim: &MarathonSim,
    lbs: &[&Mlb<'_>],
    app_file: &std::path::Path,
    extra: &[&str],
) -> Result<()> {
    let out = std::process::Command::new("timeout")
        .arg("120")
        .arg(mlb_tests::mlb_bin::mlb_bin())
        .args(zdd_args(sim, lbs, app_file, extra))
        .output()?;
    // Shown when the test fails: what zdd decided, step by step.
    eprintln!(
        "--- mlb zdd {extra:?} ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "mlb zdd {extra:?}: {}", out.status);
    Ok(())
}

/// Interrupts a deployment mid-way: starts `mlb zdd` towards `new` and kills it (SIGKILL, as a
/// lost terminal or a crashed CI runner would) once `new` serves and `old` lost a task, so both
/// colours are left live.
fn interrupted_zdd(
    sim: &MarathonSim,
    lbs: &[&Mlb<'_>],
    app_file: &std::path::Path,
    (old, new): (&str, &str),
) -> Result<()> {
    // mlb itself, not under `timeout`: the kill must reach it.
    let mut child = std::process::Command::new(mlb_tests::mlb_bin::mlb_bin())
        .args(zdd_args(sim, lbs, app_file, &[]))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let midway = wait_for("a deployment half-way", Duration::from_secs(20), || {
        if let Some(status) = child.try_wait()? {
            bail!("mlb zdd ended before it could be interrupted: {status}");
        }
        Ok((!task_ids(sim, new).is_empty() && task_ids(sim, old).len() < 3).then_some(()))
    });
    let _ = child.kill();
    child.wait()?;
    midway?;
    let apps = sim.app_ids();
    ensure!(
        apps.iter().any(|a| a == old) && apps.iter().any(|a| a == new),
        "interrupted: {apps:?}"
    );
    Ok(())
}

/// A TCP app (`portDefinitions` only) through two mlb instances (`--marathon-lb` twice), a
/// fresh connection every few milliseconds on each: `mlb zdd` deploys blue, a deployment to
/// green is interrupted (zdd killed mid-way) and finished with `--resume`, then a deployment
/// back to blue is interrupted and rolled back with `--complete-prev` (green serves alone
/// again); not one connection fails.
#[test]
fn zdd_tcp_app_two_lbs_resume_and_rollback_without_a_failed_connection() {
    run(
        "zdd_tcp_app_two_lbs_resume_and_rollback_without_a_failed_connection",
        zdd_tcp_body,
    );
}

fn zdd_tcp_body() -> Result<()> {
    let (port, alt_port) = (free_port(), free_port());
    let (_rt, sim, _, mlb_a) = loopback(Vec::new(), &[])?;
    // The second instance serves the same service ports on another loopback address.
    let vip_b = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let (_, mlb_b) = Loopback::start_on(&sim, vip_b, &[])?;
    let lbs = [&mlb_a, &mlb_b];
    let (dir, app_file) = zdd_app_file(tcp_app("/zdd/echo", port, 3), "zdd-echo", alt_port)?;
    let (blue, green) = ("/zdd/echo-blue", "/zdd/echo-green");
    let zdd = |extra: &[&str]| zdd_to_end(&sim, &lbs, &app_file, extra);

    zdd(&[])?;
    wait_for("blue running", Duration::from_secs(10), || {
        Ok((task_ids(&sim, blue).len() == 3).then_some(()))
    })?;
    for lb in lbs {
        lb.wait_routed("/zdd-echo", 0, &task_ids(&sim, blue))?;
    }
    let loops = [
        tcp_loop(SocketAddr::new(LOCALHOST, port)),
        tcp_loop(SocketAddr::new(vip_b, port)),
    ];
    let served_by = |app: &str| -> Result<()> {
        let gone = if app == blue { green } else { blue };
        for (l, lb) in loops.iter().zip(lbs) {
            let tasks = deployed(&sim, l, (gone, app), 3)?;
            lb.wait_routed("/zdd-echo", 0, &tasks)?;
        }
        Ok(())
    };
    loops[0].wait_answered_by(&task_ids(&sim, blue), 0)?;

    interrupted_zdd(&sim, &lbs, &app_file, (blue, green))?;
    zdd(&["--resume"])?;
    served_by(green)?;

    interrupted_zdd(&sim, &lbs, &app_file, (green, blue))?;
    zdd(&["--complete-prev"])?;
    served_by(green)?;

    for l in loops {
        stop_without_failures(l)?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    mlb_a.finish();
    mlb_b.finish();
    Ok(())
}

/// The real marathon-lb `zdd.py` (and its modules) at `$MLB_ZDD_PY` deploys a TCP app through
/// mlb: blue, then green while connections are held open on every blue task. mlb shows the blue
/// servers MAINT with their sessions, zdd.py kills none of them until the sessions close, then
/// completes (blue deleted, green serving); a fresh connection every few milliseconds never
/// fails. Runs only when `MLB_ZDD_PY` names zdd.py (it is not shipped here: fetch it from
/// marathon-lb's repository with `common.py`, `utils.py`, `lrucache.py` and `zdd_exceptions.py`
/// beside it; it runs on /usr/bin/python3 with Debian's python3-requests, -six, -dateutil, -jwt
/// and -pycurl, which `cargo xtask setup` installs); says SKIPPED otherwise.
#[test]
fn real_zdd_py_deploys_through_mlb() {
    let Some(zdd_py) = std::env::var_os("MLB_ZDD_PY") else {
        eprintln!("SKIPPED: set MLB_ZDD_PY=/path/to/marathon-lb/zdd.py to run it");
        return;
    };
    if let Err(e) = real_zdd_py_body(std::path::Path::new(&zdd_py)) {
        panic!("real_zdd_py_deploys_through_mlb: {e:#}");
    }
}

/// Runs zdd.py with `--force`, one-second steps and at most 30 s waiting for drains.
fn zdd_py(
    zdd_py: &std::path::Path,
    sim: &MarathonSim,
    mlb: &Mlb<'_>,
    app_file: &std::path::Path,
) -> std::process::Command {
    let mut cmd = std::process::Command::new("timeout");
    // Debian's python3, which the python3-* packages serve (not a python3 earlier in PATH).
    cmd.args(["120", "/usr/bin/python3"])
        .arg(zdd_py)
        .args(["--force", "--step-delay", "1", "--max-wait", "30"])
        .args(["--syslog-socket", "/dev/null", "--log-level", "INFO"])
        .args([
            "-m",
            &sim.url(),
            "-l",
            &format!("http://{}", mlb.admin),
            "-j",
        ])
        .arg(app_file);
    cmd
}

fn real_zdd_py_body(zdd_path: &std::path::Path) -> Result<()> {
    let (port, alt_port) = (free_port(), free_port());
    let (_rt, sim, _, mlb) = loopback(Vec::new(), &["--health-check"])?;
    // zdd.py counts only UP servers: the app has a health check. It crashes on
    // `portDefinitions`: the legacy `ports` then.
    let mut app = tcp_app("/zddpy/echo", port, 3);
    app.as_object_mut()
        .context("app")?
        .remove("portDefinitions");
    app["ports"] = json!([port]);
    app["healthChecks"] = json!([{
        "protocol": "TCP", "portIndex": 0, "gracePeriodSeconds": 1,
        "intervalSeconds": 1, "timeoutSeconds": 1, "maxConsecutiveFailures": 1,
    }]);
    let (dir, app_file) = zdd_app_file(app, "zddpy-echo", alt_port)?;
    let (blue, green) = ("/zddpy/echo-blue", "/zddpy/echo-green");
    let pxname = format!("zddpy-echo_{port}");

    let out = zdd_py(zdd_path, &sim, &mlb, &app_file).output()?;
    eprintln!(
        "--- zdd.py (blue) ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "zdd.py: {}", out.status);
    wait_for("blue running", Duration::from_secs(10), || {
        Ok((task_ids(&sim, blue).len() == 3).then_some(()))
    })?;
    mlb.wait_routed("/zddpy-echo", 0, &task_ids(&sim, blue))?;
    let addr = SocketAddr::new(LOCALHOST, port);
    let load = tcp_loop(addr);
    load.wait_answered_by(&task_ids(&sim, blue), 0)?;
    // Sessions on every blue task (the balancer spreads them).
    let mut held = Vec::new();
    for i in 0..9 {
        let mut c = EchoConn::open(addr)?;
        c.echo(&format!("held-{i}"))?;
        held.push(c);
    }

    let mut child = zdd_py(zdd_path, &sim, &mlb, &app_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().context("zdd.py stderr")?;
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    // Blue servers go MAINT as green turns healthy, their sessions still counted; zdd.py waits.
    let maint = wait_for(
        "a blue server MAINT with sessions",
        Duration::from_secs(20),
        || {
            let rows = mlb.stats_csv()?;
            Ok(rows.into_iter().find(|r| {
                r.get("pxname") == pxname
                    && r.get("status") == "MAINT"
                    && r.int("scur").is_ok_and(|n| n > 0)
            }))
        },
    )?;
    eprintln!("draining with sessions: {maint:?}");
    std::thread::sleep(Duration::from_secs(2));
    ensure!(
        child.try_wait()?.is_none(),
        "zdd.py ended with sessions open"
    );
    ensure!(
        task_ids(&sim, blue).len() == 3,
        "zdd.py killed a blue task with open sessions: {:?}",
        task_ids(&sim, blue)
    );
    drop(held);
    let status = child.wait()?;
    let log = log.join().unwrap_or_default();
    eprintln!("--- zdd.py (green) ---\n{log}");
    ensure!(status.success(), "zdd.py: {status}");
    deployed(&sim, &load, (blue, green), 3)?;
    stop_without_failures(load)?;
    let _ = std::fs::remove_dir_all(&dir);
    mlb.finish();
    Ok(())
}

/// `--access-log file:PATH --access-log-format json`: one line per request through a running
/// mlb, naming the backend and the task that answered; a host nobody serves is logged too.
#[test]
fn access_log_has_one_json_line_per_request() {
    run("access_log_has_one_json_line_per_request", access_log_body);
}

fn access_log_body() -> Result<()> {
    let port = free_port();
    let app = "/logged/web";
    let rt = runtime();
    let sim = rt.block_on(MarathonSim::start(sim_config(
        vec![vhost_app(app, port, "logged.example.test", 2, false)],
        vec![SimAgent::local(LOCALHOST)],
    )))?;
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let target = format!("file:{}", path.display());
    let (lb, mlb) = Loopback::start(
        &sim,
        &["--access-log", &target, "--access-log-format", "json"],
    )?;
    let tasks = task_ids(&sim, app);
    mlb.wait_routed(app, 0, &tasks)?;
    for _ in 0..10 {
        http_get(lb.http, "logged.example.test", "/x?n=1")?.task_id()?;
    }
    ensure!(http_get(lb.http, "nobody.example.test", "/")?.status == 503);
    let lines = wait_for("11 access log lines", Duration::from_secs(5), || {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()?;
        Ok((lines.len() >= 11).then_some(lines))
    })?;
    ensure!(lines.len() == 11, "{lines:?}");
    let backend = format!("logged_web_{port}");
    for line in &lines[..10] {
        ensure!(
            line["backend"] == backend.as_str() && line["status"] == 200,
            "{line}"
        );
        ensure!(line["method"] == "GET" && line["uri"] == "/x?n=1", "{line}");
        ensure!(
            line["server"]
                .as_str()
                .is_some_and(|s| s.starts_with("127_0_0_1_")),
            "{line}"
        );
    }
    ensure!(
        lines[10]["backend"] == "<NOSRV>" && lines[10]["status"] == 503,
        "{}",
        lines[10]
    );
    let _ = std::fs::remove_file(&path);
    mlb.finish();
    Ok(())
}
