//! `marathon-sim`: a standalone Marathon simulator for demos and end-to-end tests.
//!
//! Serves Marathon's REST API and `/v2/events` on `--listen`, creates the apps of `--apps`, and
//! runs real task listeners on `--backend-addr` (inside `--netns` when given). Prints the API
//! URL on stdout once it is ready.
use std::{net::IpAddr, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use clap::Parser;
use mlb_tests::marathon_sim::{Agent, MarathonSim, SimConfig};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "marathon-sim",
    about = "A Marathon simulator with real task backends"
)]
struct Args {
    /// Address the Marathon API listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// JSON file with an array of Marathon app definitions to create at start.
    #[arg(long)]
    apps: Option<PathBuf>,
    /// JSON file with an array of app definitions that already run at start: all their tasks
    /// are placed in TASK_RUNNING at once, without deployments or events (fast for thousands of
    /// apps, where `--apps` deploys them one by one).
    #[arg(long)]
    running_apps: Option<PathBuf>,
    /// Tasks do not bind their ports: ports are allocated and reported, nothing listens
    /// (benchmarks with more tasks than sockets).
    #[arg(long)]
    no_bind_tasks: bool,
    /// Address task listeners bind to; repeat for several agents (tasks are placed
    /// round-robin).
    #[arg(long = "backend-addr", default_value = "127.0.0.1")]
    backend_addrs: Vec<IpAddr>,
    /// Network namespace (under /var/run/netns) to bind task listeners in: once for every
    /// backend address, or once per --backend-addr in the same order.
    #[arg(long = "netns")]
    netns: Vec<String>,
    /// Host port range for task listeners, `FIRST-LAST`.
    #[arg(long, default_value = "31000-32999")]
    task_ports: String,
    /// Pause between deployment phases, in milliseconds.
    #[arg(long, default_value_t = 5)]
    step_delay_ms: u64,
    /// Interval of SSE keep-alive lines, in seconds.
    #[arg(long, default_value_t = 5.0)]
    keep_alive_secs: f64,
    /// Exit after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
}

fn agents(args: &Args) -> anyhow::Result<Vec<Agent>> {
    let netns_for = |i: usize| -> anyhow::Result<Option<String>> {
        Ok(match args.netns.len() {
            0 => None,
            1 => Some(args.netns[0].clone()),
            n if n == args.backend_addrs.len() => Some(args.netns[i].clone()),
            n => bail!(
                "--netns given {n} times for {} --backend-addr: give it once or once per address",
                args.backend_addrs.len()
            ),
        })
    };
    args.backend_addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            Ok(Agent {
                address: *addr,
                netns: netns_for(i)?,
                hostname: None,
            })
        })
        .collect()
}

/// The app definitions of a JSON array file (none without a file).
fn read_apps(flag: &str, path: Option<&std::path::Path>) -> anyhow::Result<Vec<serde_json::Value>> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {flag} {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{flag} {}: expected a JSON array of app definitions",
            path.display()
        )
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "marathon_sim=info,mlb_tests=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let apps = read_apps("--apps", args.apps.as_deref())?;
    let running_apps = read_apps("--running-apps", args.running_apps.as_deref())?;
    let (first, last) = args
        .task_ports
        .split_once('-')
        .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
        .filter(|(a, b)| a <= b)
        .with_context(|| format!("--task-ports {}: expected FIRST-LAST", args.task_ports))?;
    let config = SimConfig {
        listen: args.listen,
        agents: agents(&args)?,
        task_port_range: first..=last,
        step_delay: Duration::from_millis(args.step_delay_ms),
        keep_alive: Duration::from_secs_f64(args.keep_alive_secs.max(0.01)),
        apps,
        running_apps,
        bind_tasks: !args.no_bind_tasks,
    };
    let sim = MarathonSim::start(config)
        .await
        .context("starting the simulator")?;
    println!("{}", sim.url());
    match args.duration {
        Some(secs) => {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        None => tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?,
    }
    sim.shutdown().await;
    Ok(())
}
