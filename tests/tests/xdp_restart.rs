//! Restarting mlb breaks no flow. 200 long-lived TCP connections stream through the XDP
//! datapath and new connections open at a steady rate while the agent is stopped (SIGTERM),
//! killed (SIGKILL) and upgraded (a binary reporting another version); each new agent adopts
//! the pinned program, conntrack and tables, resyncs, then switches the links to its own
//! program. Not one long-lived connection may break, not one new connection may fail (one may
//! wait for a retransmitted SYN).
use std::{
    net::SocketAddr,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use mlb_tests::{
    l4_lab::{Agent, Conn, Dataplane, L4Lab, VIP_V4, backend_v4},
    privileges::require_netns_and_bpf,
};

const PORT: u16 = 8080;
const LONG_LIVED: usize = 200;
/// Pause between two new connections (about 40 per second).
const NEW_EVERY: Duration = Duration::from_millis(25);
/// Logged by an agent once the adopted links run its program.
const SWITCHED: &str = "the adopted XDP links now run this agent's program";

#[derive(Clone, Copy, Debug)]
enum Restart {
    Term,
    Kill,
    Upgrade,
}

/// What the traffic threads saw.
#[derive(Default)]
struct Traffic {
    stop: AtomicBool,
    /// Echo rounds over every long-lived connection.
    rounds: AtomicU64,
    /// Long-lived connections that failed an echo (each stops being used).
    broken: AtomicU64,
    new_ok: AtomicU64,
    new_failed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Traffic {
    fn record_error(&self, what: String) {
        let mut first = self.first_error.lock().expect("error slot");
        first.get_or_insert(what);
    }

    /// Echoes on every live connection, round after round, until stopped (at most 60 s).
    fn stream(&self, mut conns: Vec<Conn>) {
        let end = Instant::now() + Duration::from_secs(60);
        let mut live = vec![true; conns.len()];
        for round in 0u64.. {
            if self.stop.load(Ordering::Relaxed) || Instant::now() > end {
                return;
            }
            for (i, conn) in conns.iter_mut().enumerate() {
                if !live[i] {
                    continue;
                }
                if let Err(e) = conn.echo(&format!("round {round} conn {i}")) {
                    live[i] = false;
                    self.broken.fetch_add(1, Ordering::Relaxed);
                    self.record_error(format!("long-lived connection {i}: {e:#}"));
                }
            }
            self.rounds.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Opens a connection every [`NEW_EVERY`] (greeting and one echo), until stopped.
    fn open_new(&self, vip: SocketAddr) {
        let end = Instant::now() + Duration::from_secs(60);
        while !self.stop.load(Ordering::Relaxed) && Instant::now() < end {
            match Conn::open(vip).and_then(|mut c| c.echo("new")) {
                Ok(()) => self.new_ok.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    self.record_error(format!("new connection: {e:#}"));
                    self.new_failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            std::thread::sleep(NEW_EVERY);
        }
    }

    /// Waits (up to 15 s) until both kinds of traffic made progress.
    fn wait_progress(&self) -> Result<()> {
        let (rounds, new) = (self.rounds(), self.new_ok.load(Ordering::Relaxed));
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.rounds() < rounds + 2 || self.new_ok.load(Ordering::Relaxed) < new + 10 {
            ensure!(Instant::now() < deadline, "traffic stalled after a restart");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }
}

/// Id of the XDP program attached to `iface` in lb.
fn prog_id(lab: &L4Lab, iface: &str) -> Result<u64> {
    let link: serde_json::Value =
        serde_json::from_str(&lab.lb.exec(&["ip", "-j", "link", "show", "dev", iface])?)?;
    link[0]["xdp"]["prog"]["id"]
        .as_u64()
        .with_context(|| format!("no XDP program on {iface}"))
}

fn restart(lab: &L4Lab, agent: Agent, how: Restart, toml: &str) -> Result<Agent> {
    let before = (prog_id(lab, "lb-cli")?, prog_id(lab, "lb-sw")?);
    match how {
        Restart::Term | Restart::Upgrade => agent.stop(lab)?,
        Restart::Kill => agent.kill()?,
    }
    let env: &[(&str, &str)] = match how {
        Restart::Upgrade => &[("MLB_VERSION_OVERRIDE", "9.9.9-upgrade")],
        _ => &[],
    };
    let mut agent = lab.start_agent_env(Dataplane::Xdp, toml, &[], env)?;
    agent.wait_for_log(SWITCHED, 1)?;
    ensure!(
        agent.log().contains("adopted the pinned XDP tables"),
        "the agent did not adopt the tables ({how:?}):\n{}",
        agent.log()
    );
    if let Restart::Upgrade = how {
        ensure!(
            agent.log().contains("9.9.9-upgrade"),
            "the upgrade reports its version"
        );
    }
    let after = (prog_id(lab, "lb-cli")?, prog_id(lab, "lb-sw")?);
    ensure!(
        after.0 != before.0 && after.1 != before.1,
        "the links still run the previous program after {how:?}: {before:?} -> {after:?}"
    );
    Ok(agent)
}

fn body() -> Result<()> {
    let lab = L4Lab::new()?;
    for n in [1, 2] {
        lab.tcp_backend(n, PORT)?;
    }
    let backends: Vec<String> = [1, 2]
        .map(|n| format!("\"{}\"", SocketAddr::new(backend_v4(n), PORT)))
        .into();
    let toml = format!(
        "[[service]]\nname = \"web\"\nport = {PORT}\nprotocol = \"tcp\"\nbackends = [{}]\n",
        backends.join(", ")
    );
    let mut agent = Some(lab.start_agent(Dataplane::Xdp, &toml, &[])?);
    let vip = SocketAddr::new(VIP_V4.parse()?, PORT);
    let conns = lab.connect_many(vip, LONG_LIVED)?;
    let traffic = Traffic::default();
    let started = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        s.spawn(|| traffic.stream(conns));
        let opener = s.spawn(|| lab.cli.enter(|| traffic.open_new(vip)));
        let result = (|| -> Result<()> {
            traffic.wait_progress()?;
            for how in [Restart::Term, Restart::Kill, Restart::Upgrade] {
                let previous = agent.take().context("no agent")?;
                agent = Some(restart(&lab, previous, how, &toml)?);
                traffic.wait_progress()?;
            }
            Ok(())
        })();
        traffic.stop.store(true, Ordering::Relaxed);
        opener.join().expect("opener thread")?;
        result
    })?;
    let (broken, failed) = (
        traffic.broken.load(Ordering::Relaxed),
        traffic.new_failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "{:?}: {} echo rounds over {LONG_LIVED} connections, {} new connections, {broken} broken, \
         {failed} failed",
        started.elapsed(),
        traffic.rounds(),
        traffic.new_ok.load(Ordering::Relaxed),
    );
    let first = traffic.first_error.lock().expect("error slot").clone();
    ensure!(
        broken == 0,
        "{broken} long-lived connections broke; first: {first:?}"
    );
    ensure!(
        failed == 0,
        "{failed} new connections failed; first: {first:?}"
    );
    agent.context("no agent")?.stop(&lab)
}

#[test]
fn restarts_break_no_flow() {
    if !require_netns_and_bpf("restarts_break_no_flow") {
        return;
    }
    if let Err(e) = body() {
        panic!("restarts_break_no_flow: {e:#}");
    }
}
