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
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use mlb_tests::{
    agent::{Mlb, wait_for},
    marathon_sim::{Agent as SimAgent, MarathonSim, SimConfig},
    netns::{Netns, on},
    privileges::require_netns_and_bpf,
};
use serde_json::{Value, json};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The fleet's VIP: the same on every instance.
const VIP: &str = "198.18.100.1";
/// The fleet's flow-hash key: the same on every instance.
const HASH_SECRET: &str = "0123456789abcdef";

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

/// One namespace with an interface per agent (a veth pair each: native XDP on one end) and a
/// bpf filesystem per agent, unmounted on drop.
struct Fleet {
    ns: Netns,
    dir: PathBuf,
    mounts: Vec<PathBuf>,
}

impl Fleet {
    fn new(agents: usize) -> Result<Fleet> {
        let ns = Netns::new("fleet")?;
        let dir = std::env::temp_dir().join(format!("mlbt-fleet-{}", std::process::id()));
        let mut fleet = Fleet {
            ns,
            dir,
            mounts: Vec::new(),
        };
        for i in 0..agents {
            let (dev, peer) = (format!("lb{i}"), format!("lb{i}p"));
            let addr = format!("198.18.{}.1/24", 10 + i);
            let ns = &fleet.ns;
            ns.exec(&[
                "ip", "link", "add", &dev, "type", "veth", "peer", "name", &peer,
            ])?;
            ns.exec(&["ip", "addr", "add", &addr, "dev", &dev])?;
            for d in [&dev, &peer] {
                ns.exec(&["ip", "link", "set", d, "up"])?;
            }
            let bpf = fleet.dir.join(format!("bpf{i}"));
            fs::create_dir_all(&bpf)?;
            // In the test's mount namespace: the pins outlive each agent.
            let mounted = std::process::Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(&bpf)
                .status()?;
            ensure!(mounted.success(), "mounting {}: {mounted}", bpf.display());
            fleet.mounts.push(bpf);
        }
        Ok(fleet)
    }

    /// `mlb run` flags of agent `i`: XDP on its interface, pinned in its bpf filesystem, the
    /// fleet's VIP and hash secret, its own admin and HTTP ports.
    fn args(&self, i: usize, marathon: &str) -> Vec<String> {
        let port = |base: u16| (base + i as u16).to_string();
        let bpffs = self.mounts[i].join("mlb").display().to_string();
        let snat = format!("198.18.{}.1", 10 + i);
        [
            "-m",
            marathon,
            "--group",
            "external",
            "--vip",
            VIP,
            "--dataplane",
            "xdp",
            "--xdp-iface",
            &format!("lb{i}"),
            "--snat-addr",
            &snat,
            "--bpffs-dir",
            &bpffs,
            "--hash-secret",
            HASH_SECRET,
            "--http-port",
            &port(18080),
            "--https-port",
            &port(18443),
            "--appid-port",
            &port(19100),
        ]
        .map(String::from)
        .to_vec()
    }

    fn start(&self, i: usize, marathon: &str) -> Result<Mlb<'_>> {
        let admin = SocketAddr::new(LOCALHOST, 19090 + i as u16);
        Mlb::start(Some(&self.ns), admin, &self.args(i, marathon))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = std::process::Command::new("umount").arg(m).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
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
    let fleet = Fleet::new(2)?;
    let rt = fleet.ns.runtime(1)?;
    let config = SimConfig {
        agents: (11..14)
            .map(|h| SimAgent::local(format!("198.18.20.{h}").parse().expect("IPv4")))
            .collect(),
        step_delay: Duration::from_millis(100),
        keep_alive: Duration::from_millis(500),
        apps: vec![tcp_app(A.0, A.1, 3)],
        bind_tasks: false,
        ..SimConfig::default()
    };
    let sim = Arc::new(on(&rt, MarathonSim::start(config))?.context("starting the simulator")?);
    let url = sim.url();
    let a = fleet.start(0, &url)?;
    // The second instance starts later: it reads as a snapshot what the first saw as events.
    let s = sim.clone();
    on(&rt, async move { s.create_app(tcp_app(B.0, B.1, 2)).await })??;
    let mut b = fleet.start(1, &url)?;
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
    let b = fleet.start(1, &url)?;
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
