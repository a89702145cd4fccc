//! A fleet of mlb instances behaves as one load balancer (issue 14).
//!
//! `fleet_tables_agree`: two XDP agents read one Marathon simulator through a series of
//! scale, kill and deploy steps, one of them restarted in the middle (it adopts its pinned
//! maps, then reads Marathon whole, where the other saw every event in turn). After each step
//! the Maglev tables read back from each agent's maps (`/_mlb/xdp/tables`) are identical, as
//! backend addresses and as backend ids, and so are the fingerprints of `/_mlb/status`.
//!
//! Needs root (namespaces, XDP, a bpf filesystem); says SKIPPED otherwise.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use mlb_tests::{
    agent::{EchoConn, HttpConn, Mlb, wait_for},
    ecmp_lab::{EcmpLab, VIP, backend_addr, rt_addr},
    marathon_sim::{Agent as SimAgent, MarathonSim, SimConfig},
    mlb_bin::mlb_bin,
    netns::on,
    privileges::require_netns_and_bpf,
};
use serde_json::{Value, json};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn run(test: &str, body: fn() -> Result<()>) {
    if let Err(e) = body() {
        panic!("{test}: {e:#}");
    }
}

/// A TCP app on `service_port`.
fn tcp_app(id: &str, service_port: u16, instances: usize) -> Value {
    json!({
        "id": id,
        "instances": instances,
        "portDefinitions": [{"port": service_port, "protocol": "tcp", "name": "echo"}],
        "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_MODE": "tcp"},
    })
}

/// Starts instance `i` of `lab` reading the simulator (which listens in the router).
fn start<'l>(lab: &'l EcmpLab, i: usize, sim: &MarathonSim) -> Result<Mlb<'l>> {
    let marathon = format!("http://{}:{}", rt_addr(i), sim.addr().port());
    let admin = SocketAddr::new(LOCALHOST, 19090);
    Mlb::start(Some(&lab.lbs[i]), admin, &lab.agent_args(i, &marathon))
}

/// One simulator agent per backend namespace of `lab` (its tasks listen there).
fn backend_agents(lab: &EcmpLab) -> Vec<SimAgent> {
    lab.backends
        .iter()
        .enumerate()
        .map(|(n, be)| SimAgent::in_netns(backend_addr(n + 1).parse().expect("IPv4"), be.name()))
        .collect()
}

/// A simulator with the TCP app `app` (4 tasks bound on the backends) and both instances of
/// `lab` reading it, checked to agree.
fn two_instances_on<'l>(
    lab: &'l EcmpLab,
    rt: &tokio::runtime::Runtime,
    app: (&str, u16),
) -> Result<(Arc<MarathonSim>, Mlb<'l>, Mlb<'l>)> {
    let config = sim_config(vec![tcp_app(app.0, app.1, 4)], backend_agents(lab), true);
    let sim = Arc::new(on(rt, MarathonSim::start(config))?.context("starting the simulator")?);
    let a = start(lab, 0, &sim)?;
    let b = start(lab, 1, &sim)?;
    assert_agree("start", &sim, &[app], &[&a, &b])?;
    Ok((sim, a, b))
}

/// The simulator's configuration: listening on every address of the router, `apps` on tasks
/// in `agents`.
fn sim_config(apps: Vec<Value>, agents: Vec<SimAgent>, bind_tasks: bool) -> SimConfig {
    SimConfig {
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        agents,
        step_delay: Duration::from_millis(100),
        keep_alive: Duration::from_millis(500),
        apps,
        bind_tasks,
        ..SimConfig::default()
    }
}

/// `/_mlb/xdp/tables` of an agent.
fn tables(mlb: &Mlb<'_>) -> Result<Value> {
    let reply = mlb.admin_get("/_mlb/xdp/tables")?;
    ensure!(reply.status == 200, "/_mlb/xdp/tables: {}", reply.body);
    Ok(serde_json::from_str(&reply.body)?)
}

/// The backend addresses of `port`'s table in `view` (without `none`).
fn table_backends(view: &Value, port: u16) -> BTreeSet<String> {
    let services = view["services"].as_array().into_iter().flatten();
    services
        .filter(|s| s["port"] == port)
        .flat_map(|s| s["slots"].as_object().into_iter().flatten())
        .map(|(addr, _)| addr.clone())
        .filter(|a| a != "none")
        .collect()
}

/// `host:port` of every running task of `app`.
fn task_addrs(sim: &MarathonSim, app: &str) -> BTreeSet<String> {
    sim.running_tasks(app)
        .into_iter()
        .map(|t| format!("{}:{}", t.address, t.ports[0]))
        .collect()
}

/// Waits until every agent's tables hold exactly the running tasks of `apps`, then checks that
/// the agents agree: table fingerprints (addresses and ids) and status fingerprints.
fn assert_agree(
    step: &str,
    sim: &MarathonSim,
    apps: &[(&str, u16)],
    agents: &[&Mlb<'_>],
) -> Result<()> {
    let mut views = Vec::new();
    for (n, mlb) in agents.iter().enumerate() {
        let view = wait_for(
            &format!("agent {n} to program the tasks after {step}"),
            Duration::from_secs(15),
            || {
                let view = tables(mlb)?;
                let ports: BTreeSet<u64> = view["services"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s["port"].as_u64())
                    .collect();
                let want: BTreeSet<u64> = apps.iter().map(|(_, p)| u64::from(*p)).collect();
                if ports != want {
                    bail!("services on ports {ports:?}, want {want:?}");
                }
                for (app, port) in apps {
                    let (want, got) = (task_addrs(sim, app), table_backends(&view, *port));
                    if want != got {
                        bail!("{app}: tables name {got:?}, tasks are {want:?}");
                    }
                }
                Ok(Some(view))
            },
        )?;
        views.push((view, mlb.status()?));
    }
    let (first, first_status) = &views[0];
    for (n, (view, status)) in views.iter().enumerate().skip(1) {
        ensure!(
            view["fingerprint"] == first["fingerprint"],
            "after {step}: agent {n}'s tables differ from agent 0's:\n{view:#}\n{first:#}"
        );
        let ids = |v: &Value| -> Vec<Value> {
            let services = v["services"].as_array().cloned().unwrap_or_default();
            services
                .iter()
                .map(|s| s["id_fingerprint"].clone())
                .collect()
        };
        ensure!(
            ids(view) == ids(first),
            "after {step}: agent {n}'s tables hold other backend ids"
        );
        ensure!(
            status["fingerprint"] == first_status["fingerprint"],
            "after {step}: status fingerprints differ: {} vs {}",
            status["fingerprint"],
            first_status["fingerprint"]
        );
    }
    Ok(())
}

#[test]
fn fleet_tables_agree() {
    if require_netns_and_bpf("fleet_tables_agree") {
        run("fleet_tables_agree", fleet_tables_agree_body);
    }
}

fn fleet_tables_agree_body() -> Result<()> {
    const A: (&str, u16) = ("/fleet/a", 10001);
    const B: (&str, u16) = ("/fleet/b", 10002);
    let lab = EcmpLab::new(2, 0)?;
    let rt = lab.rt.runtime(1)?;
    // Tasks need no listener here: only the tables are compared.
    let agents = (11..14)
        .map(|h| SimAgent::local(format!("198.18.2.{h}").parse().expect("IPv4")))
        .collect();
    let config = sim_config(vec![tcp_app(A.0, A.1, 3)], agents, false);
    let sim = Arc::new(on(&rt, MarathonSim::start(config))?.context("starting the simulator")?);
    let a = start(&lab, 0, &sim)?;
    // The second instance starts later: it reads as a snapshot what the first saw as events.
    let s = sim.clone();
    on(&rt, async move { s.create_app(tcp_app(B.0, B.1, 2)).await })??;
    let mut b = start(&lab, 1, &sim)?;
    assert_agree("start", &sim, &[A, B], &[&a, &b])?;

    let s = sim.clone();
    on(&rt, async move { s.scale(A.0, 6).await })??;
    assert_agree("scaling a to 6", &sim, &[A, B], &[&a, &b])?;

    let victim = sim.running_tasks(A.0)[2].id.clone();
    let s = sim.clone();
    on(&rt, async move { s.kill_task(&victim).await })??;
    assert_agree("killing a task of a", &sim, &[A, B], &[&a, &b])?;

    // Restart the second instance while Marathon changes: it adopts its pinned tables.
    b.terminate(Duration::from_secs(10))?;
    b.finish();
    let s = sim.clone();
    on(&rt, async move {
        s.update_app(B.0, json!({"env": {"V": "2"}, "instances": 4}))
            .await
    })??;
    let b = start(&lab, 1, &sim)?;
    assert_agree(
        "a deployment of b, second instance restarted",
        &sim,
        &[A, B],
        &[&a, &b],
    )?;

    let s = sim.clone();
    on(&rt, async move { s.scale(A.0, 2).await })??;
    let s = sim.clone();
    on(&rt, async move { s.delete_app(B.0).await })??;
    assert_agree("scaling a down, deleting b", &sim, &[A], &[&a, &b])?;

    a.finish();
    b.finish();
    let sim = Arc::into_inner(sim).context("the simulator is still shared")?;
    on(&rt, sim.shutdown())?;
    Ok(())
}

/// New flows the XDP program of `mlb` forwarded, over every backend.
fn new_flows(mlb: &Mlb<'_>) -> Result<u64> {
    let reply = mlb.admin_get("/_mlb/xdp")?;
    ensure!(reply.status == 200, "/_mlb/xdp: {}", reply.body);
    let view: Value = serde_json::from_str(&reply.body)?;
    let backends = view["backends"].as_object().into_iter().flatten();
    Ok(backends.filter_map(|(_, b)| b["new_flows"].as_u64()).sum())
}

/// A counter of an agent's XDP program (`/_mlb/xdp`).
fn xdp_counter(mlb: &Mlb<'_>, name: &str) -> Result<u64> {
    let reply = mlb.admin_get("/_mlb/xdp")?;
    ensure!(reply.status == 200, "/_mlb/xdp: {}", reply.body);
    let view: Value = serde_json::from_str(&reply.body)?;
    view["counters"][name]
        .as_u64()
        .with_context(|| format!("no counter {name} in {view}"))
}

/// ECMP in front of two instances: the router spreads new connections over both (L4 hash),
/// each forwards its share to the tasks, and every connection is answered.
#[test]
fn ecmp_spreads_new_connections() {
    if require_netns_and_bpf("ecmp_spreads_new_connections") {
        run("ecmp_spreads_new_connections", ecmp_spreads_body);
    }
}

fn ecmp_spreads_body() -> Result<()> {
    const APP: (&str, u16) = ("/fleet/web", 10001);
    const CONNECTIONS: usize = 32;
    let lab = EcmpLab::new(2, 2)?;
    let rt = lab.rt.runtime(1)?;
    let (sim, a, b) = two_instances_on(&lab, &rt, APP)?;

    let vip = SocketAddr::new(VIP.parse()?, APP.1);
    let answered: Vec<String> = lab.cli.enter(move || {
        (0..CONNECTIONS)
            .map(|i| {
                let mut conn = HttpConn::open(vip)?;
                let reply = conn.get("fleet", "/", true);
                reply
                    .and_then(|r| r.task_id())
                    .with_context(|| format!("connection #{i}"))
            })
            .collect::<Result<_>>()
    })??;
    let tasks: BTreeSet<String> = sim.running_tasks(APP.0).into_iter().map(|t| t.id).collect();
    ensure!(
        answered.iter().all(|t| tasks.contains(t)),
        "answers from unknown tasks: {answered:?} (tasks {tasks:?})"
    );
    let (fa, fb) = (new_flows(&a)?, new_flows(&b)?);
    ensure!(
        fa > 0 && fb > 0 && fa + fb >= CONNECTIONS as u64,
        "{CONNECTIONS} connections: instance 0 forwarded {fa} new flows, instance 1 {fb}"
    );
    eprintln!("ecmp: {CONNECTIONS} connections answered, {fa} through instance 0, {fb} through 1");
    a.finish();
    b.finish();
    let sim = Arc::into_inner(sim).context("the simulator is still shared")?;
    on(&rt, sim.shutdown())?;
    Ok(())
}

/// How the instances of [`lose_an_instance`] forward.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Forwarding {
    Nat,
    Dsr,
}

/// Losing an instance with direct server return: every connection it carried survives the
/// router moving it to the other instance (same Maglev choice, nothing tracked).
#[test]
fn dsr_loses_no_connection_with_an_instance() {
    if require_netns_and_bpf("dsr_loses_no_connection_with_an_instance") {
        run("dsr_loses_no_connection_with_an_instance", || {
            let (through_a, broken) = lose_an_instance(Forwarding::Dsr)?;
            ensure!(
                broken == 0,
                "DSR: {broken} of the {through_a} connections through the lost instance broke"
            );
            Ok(())
        });
    }
}

/// The same loss with full NAT: exactly the connections through the lost instance break (by
/// design: the other instance has neither their conntrack entries nor their SNAT ports),
/// the others go on.
#[test]
fn full_nat_loses_the_connections_of_a_lost_instance() {
    if require_netns_and_bpf("full_nat_loses_the_connections_of_a_lost_instance") {
        run("full_nat_loses_the_connections_of_a_lost_instance", || {
            let (through_a, broken) = lose_an_instance(Forwarding::Nat)?;
            ensure!(
                broken as u64 == through_a,
                "full NAT: {broken} broken, {through_a} through the lost instance"
            );
            Ok(())
        });
    }
}

/// Two instances behind the router, two backends echoing on the service port (`requirePorts`:
/// DSR leaves the destination port as the client sent it). Long-lived connections exchange
/// lines; instance A is killed (SIGKILL) and the router withdraws its route; every connection
/// then exchanges more lines. Returns (connections A carried, connections broken).
fn lose_an_instance(mode: Forwarding) -> Result<(u64, usize)> {
    const PORT: u16 = 10002;
    const CONNECTIONS: usize = 24;
    let lab = EcmpLab::new(2, 2)?;
    let rt = lab.rt.runtime(2)?;
    if mode == Forwarding::Dsr {
        for n in 1..=2 {
            lab.backend_setup(n, &[])?;
            // Idempotent: now nothing is missing.
            lab.backend_setup(n, &["--check"])?;
        }
    }
    lab.echo_backends(PORT, &rt)?;
    let agents = backend_agents(&lab);
    let mut app = tcp_app("/fleet/stream", PORT, 2);
    app["requirePorts"] = json!(true);
    let sim = Arc::new(
        on(
            &rt,
            MarathonSim::start(sim_config(vec![app], agents, false)),
        )?
        .context("starting the simulator")?,
    );
    let marathon = |i: usize| format!("http://{}:{}", rt_addr(i), sim.addr().port());
    let args = |i: usize| {
        let mut args = lab.agent_args(i, &marathon(i));
        if mode == Forwarding::Dsr {
            args.extend(EcmpLab::dsr_args(i));
        }
        args
    };
    let admin = SocketAddr::new(LOCALHOST, 19090);
    let mut a = Mlb::start(Some(&lab.lbs[0]), admin, &args(0))?;
    let b = Mlb::start(Some(&lab.lbs[1]), admin, &args(1))?;
    assert_agree("start", &sim, &[("/fleet/stream", PORT)], &[&a, &b])?;

    if mode == Forwarding::Dsr {
        // `mlb explain` says what the backends need.
        let explain = lab.lbs[1].exec(&[
            &mlb_bin().display().to_string(),
            "explain",
            "--forwarding",
            "dsr",
            "--vip",
            VIP,
            "--admin-addr",
            &admin.to_string(),
        ])?;
        let needs = format!("mlb backend-setup --vip {VIP}");
        ensure!(
            explain.contains(&needs),
            "mlb explain --forwarding dsr:\n{explain}"
        );
    }
    let vip = SocketAddr::new(VIP.parse()?, PORT);
    let mut conns: Vec<EchoConn> = lab.cli.enter(move || {
        (0..CONNECTIONS)
            .map(|i| {
                let mut c = EchoConn::open(vip)?;
                c.echo(&format!("hello {i}"))
                    .with_context(|| format!("connection #{i}"))?;
                Ok(c)
            })
            .collect::<Result<_>>()
    })??;
    let through_a = new_flows(&a)?;
    ensure!(
        through_a > 0 && through_a < CONNECTIONS as u64,
        "the router sent {through_a} of {CONNECTIONS} connections through instance A"
    );

    let killed = std::process::Command::new("kill")
        .args(["-KILL", &a.pid().to_string()])
        .status()?;
    ensure!(killed.success(), "kill -KILL instance A: {killed}");
    lab.withdraw(0)?;
    let broken = std::thread::scope(|s| {
        let workers: Vec<_> = conns
            .iter_mut()
            .enumerate()
            .map(|(i, c)| {
                s.spawn(move || (0..3).try_for_each(|r| c.echo(&format!("after {r} on {i}"))))
            })
            .collect();
        workers
            .into_iter()
            .map(std::thread::ScopedJoinHandle::join)
            .filter(|r| !matches!(r, Ok(Ok(()))))
            .count()
    });
    // DSR: B encapsulated the moved flows, and no reply came back through an instance.
    let (encapsulated, replies) = (
        xdp_counter(&b, "dsr_encapsulated")?,
        xdp_counter(&b, "flow_to_client")?,
    );
    match mode {
        Forwarding::Dsr => ensure!(
            encapsulated > 0 && replies == 0,
            "DSR: B encapsulated {encapsulated}, translated {replies} replies"
        ),
        Forwarding::Nat => ensure!(
            encapsulated == 0 && replies > 0,
            "NAT: B encapsulated {encapsulated}, translated {replies} replies"
        ),
    }
    eprintln!(
        "{mode:?}: {CONNECTIONS} connections, {through_a} through the lost instance, {broken} broken"
    );
    let _ = a.terminate(Duration::from_secs(1));
    a.finish();
    b.finish();
    let sim = Arc::into_inner(sim).context("the simulator is still shared")?;
    on(&rt, sim.shutdown())?;
    Ok((through_a, broken))
}

/// `deploy/marathon/mlb-fleet.json` is `mlb.json` for N instances: one per public agent, every
/// one with the same hash secret (from a secret store), nothing else different.
#[test]
fn fleet_app_definition_is_mlb_json_for_n_instances() -> Result<()> {
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/marathon");
    let read = |name: &str| -> Result<Value> {
        let text = std::fs::read_to_string(deploy.join(name)).context(name.to_owned())?;
        Ok(serde_json::from_str(&text)?)
    };
    let (single, mut fleet) = (read("mlb.json")?, read("mlb-fleet.json")?);
    ensure!(
        fleet["instances"].as_u64() > Some(1),
        "{}",
        fleet["instances"]
    );
    ensure!(fleet["constraints"] == json!([["hostname", "UNIQUE"]]));
    let secret = fleet["env"]["MLB_HASH_SECRET"]["secret"].clone();
    let name = secret.as_str().context("MLB_HASH_SECRET from a secret")?;
    ensure!(
        fleet["secrets"][name]["source"].is_string(),
        "secret {name} has no source"
    );
    let obj = fleet.as_object_mut().context("an object")?;
    obj.remove("secrets");
    obj.insert("instances".into(), single["instances"].clone());
    fleet["env"]
        .as_object_mut()
        .context("env")?
        .remove("MLB_HASH_SECRET");
    ensure!(
        fleet == single,
        "mlb-fleet.json differs from mlb.json beyond instances and secret"
    );
    Ok(())
}

/// New connections per second through the VIP with 1 and with 2 instances behind the router,
/// interleaved (1, 2, 1, 2, ...: ratios come from neighbouring runs). Each connection: connect,
/// one request, close. Run: `cargo test -p tests --test fleet -- --ignored --nocapture
/// ecmp_bench`. On a 2-core machine the client, the router, both instances and the backends
/// share the cores, so this shows what the machine allows, not what instances add.
#[test]
#[ignore = "benchmark"]
fn ecmp_bench() {
    if require_netns_and_bpf("ecmp_bench") {
        run("ecmp_bench", ecmp_bench_body);
    }
}

/// Connections answered and failed in `secs` by `threads` clients in `lab`'s client namespace.
fn connection_rate(
    lab: &EcmpLab,
    vip: SocketAddr,
    threads: usize,
    secs: u64,
) -> Result<(u64, u64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    let counts = lab.cli.enter(move || {
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(move || {
                        let (mut ok, mut failed) = (0u64, 0u64);
                        // Bounded by the deadline and by a count.
                        for _ in 0..1_000_000 {
                            if std::time::Instant::now() >= deadline {
                                break;
                            }
                            let answered = HttpConn::open(vip)
                                .and_then(|mut c| c.get("fleet", "/", true))
                                .and_then(|r| r.task_id());
                            if answered.is_ok() {
                                ok += 1;
                            } else {
                                failed += 1;
                            }
                        }
                        (ok, failed)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or((0, 1)))
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        })
    })?;
    Ok(counts)
}

fn ecmp_bench_body() -> Result<()> {
    const APP: (&str, u16) = ("/fleet/bench", 10001);
    const SECS: u64 = 5;
    const ROUNDS: usize = 3;
    let lab = EcmpLab::new(2, 2)?;
    let rt = lab.rt.runtime(2)?;
    let (sim, a, b) = two_instances_on(&lab, &rt, APP)?;
    let vip = SocketAddr::new(VIP.parse()?, APP.1);
    let route = |instances: usize| -> Result<()> {
        let dst = format!("{VIP}/32");
        let mut argv = vec!["ip".to_owned(), "route".into(), "replace".into(), dst];
        for i in 0..instances {
            argv.extend([
                "nexthop".into(),
                "via".into(),
                mlb_tests::ecmp_lab::lb_addr(i),
            ]);
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        lab.rt.exec(&argv)?;
        Ok(())
    };
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let new_flows =
        || -> Result<[u64; 2]> { Ok([xdp_counter(&a, "flow_new")?, xdp_counter(&b, "flow_new")?]) };
    for round in 0..ROUNDS {
        for instances in [1, 2] {
            route(instances)?;
            let before = new_flows()?;
            let (ok, failed) = connection_rate(&lab, vip, 4, SECS)?;
            let after = new_flows()?;
            let rate = ok as f64 / SECS as f64;
            // What each instance carried: on a machine whose CPUs the clients and backends
            // saturate first, the rate cannot grow with instances, but each instance's share
            // of the flows (its XDP work) halves, which is the capacity a fleet adds.
            let share = [after[0] - before[0], after[1] - before[1]];
            eprintln!(
                "round {round}: {instances} instance(s): {rate:.0} connections/s, {failed} failed, \
                 new flows A {} B {}",
                share[0], share[1]
            );
            // A bench reports; it fails only when the fleet loses a noticeable part of the
            // connections (a stray SYN lost to a busy machine is a retry, not a broken fleet).
            ensure!(
                failed * 1000 <= ok.max(1),
                "{failed} of {} connections failed with {instances} instance(s)",
                ok + failed
            );
            rates[instances - 1].push(rate);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (one, two) = (median(&mut rates[0]), median(&mut rates[1]));
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "ecmp bench: median {one:.0} connections/s with 1 instance, {two:.0} with 2 ({:.2}x); \
         {} CPUs, load average {}",
        two / one,
        std::thread::available_parallelism().map_or(0, usize::from),
        load.trim()
    );
    a.finish();
    b.finish();
    let sim = Arc::into_inner(sim).context("the simulator is still shared")?;
    on(&rt, sim.shutdown())?;
    Ok(())
}
