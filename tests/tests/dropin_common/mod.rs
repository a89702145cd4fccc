//! The namespace lab of the drop-in tests: the Marathon simulator on 127.0.0.1:8080 and mlb
//! (the binary, or its image) started with a marathon-lb-style command line, both inside a
//! network namespace of their own, so the stock ports (:80, :443, :9090, :9091) are free.
#![allow(dead_code, reason = "each test binary uses a different subset")]
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use mlb_tests::{
    agent::{Mlb, http_get},
    marathon_sim::{Agent as SimAgent, MarathonSim, SimConfig},
    netns::Netns,
};
use serde_json::{Value, json};

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

pub fn vhost_app(id: &str, port: u16, vhost: &str) -> Value {
    json!({
        "id": id, "instances": 2,
        "portDefinitions": [{"port": port, "protocol": "tcp"}],
        "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_MODE": "http", "HAPROXY_0_VHOST": vhost},
    })
}

pub fn tcp_app(id: &str, port: u16) -> Value {
    json!({
        "id": id, "instances": 1,
        "portDefinitions": [{"port": port, "protocol": "tcp"}],
        "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_MODE": "tcp"},
    })
}

pub fn task_ids(sim: &MarathonSim, app: &str) -> Vec<String> {
    let mut ids: Vec<String> = sim.running_tasks(app).into_iter().map(|t| t.id).collect();
    ids.sort();
    ids
}

/// A runtime whose worker threads live in `ns`: sockets its tasks create are the namespace's.
pub fn runtime_in(ns: &Netns) -> Result<tokio::runtime::Runtime> {
    let rt = ns.enter(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    })??;
    Ok(rt)
}

/// A namespace with the simulator on 127.0.0.1:8080 running `/web` (vhost `web.dropin.test`,
/// service port 10001) and `/db` (TCP, 10002) plus `extra_apps`, and `mlb <argv>` (`{marathon}`
/// replaced by the simulator's URL) run by `program` (the `mlb` binary, or `podman`) there
/// with `env`; checks both apps are served on :80 and :10002, then runs `check`.
pub fn in_netns_lab(
    program: &Path,
    argv: &[&str],
    env: &[(String, String)],
    extra_apps: Vec<Value>,
    check: impl FnOnce(&Netns, &MarathonSim, &Mlb<'_>) -> Result<()>,
) -> Result<()> {
    let ns = Netns::new("dropin")?;
    let rt = runtime_in(&ns)?;
    let mut apps = vec![
        vhost_app("/web", 10001, "web.dropin.test"),
        tcp_app("/db", 10002),
    ];
    apps.extend(extra_apps);
    let config = SimConfig {
        listen: "127.0.0.1:8080".parse()?,
        agents: vec![SimAgent {
            netns: Some(ns.name().to_owned()),
            ..SimAgent::local(LOCALHOST)
        }],
        step_delay: Duration::from_millis(100),
        apps,
        ..SimConfig::default()
    };
    let sim = rt
        .block_on(async { tokio::spawn(MarathonSim::start(config)).await })?
        .context("starting the simulator in the namespace")?;
    let argv: Vec<String> = argv
        .iter()
        .map(|a| a.replace("{marathon}", &sim.url()))
        .collect();
    let admin = SocketAddr::new(LOCALHOST, 9090);
    let mlb = Mlb::start_program(Some(&ns), admin, program, &argv, env)?;
    let web = task_ids(&sim, "/web");
    mlb.wait_routed("/web", 0, &web)?;
    mlb.wait_routed("/db", 0, &task_ids(&sim, "/db"))?;
    let http = ns.enter(|| http_get(SocketAddr::new(LOCALHOST, 80), "web.dropin.test", "/"))??;
    ensure!(
        web.contains(&http.task_id()?),
        "vhost on :80 answered {http:?}"
    );
    let tcp = ns.enter(|| http_get(SocketAddr::new(LOCALHOST, 10002), "db", "/"))??;
    ensure!(
        task_ids(&sim, "/db").contains(&tcp.task_id()?),
        "TCP service port 10002"
    );
    check(&ns, &sim, &mlb)?;
    mlb.finish();
    Ok(())
}
