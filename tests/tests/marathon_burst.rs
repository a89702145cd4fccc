//! A burst of task kills on a large Marathon: mlb's watcher (in-process, default settings)
//! follows the Marathon simulator while 1,000 tasks of 1,000 apps are killed in one call. The
//! stream must keep being read while those apps are re-read (Marathon drops a subscriber that
//! falls behind), so the burst is applied without a reconnect and without a full resync, and
//! routing ends exactly as Marathon says: no killed task routed, every replacement routed.
//!
//! Loopback only; the tasks bind no sockets (4,400 apps), nothing needs privileges.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail, ensure};
use mlb::{
    marathon::{
        config::MarathonConfig,
        store::AppStore,
        watch::{MarathonUpdate, MarathonWatcher, WatcherCounters},
    },
    model::{BackendState, HealthCache, ModelOptions, desired_state},
};
use mlb_tests::marathon_sim::{MarathonSim, SimConfig};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// More than four times the kills: below a quarter of the known apps, events mean re-reads.
const APPS: usize = 4_400;
const KILLS: usize = 1_000;
/// Bounds of the waits (a debug build on a shared 2-core machine).
const SYNC_LIMIT: Duration = Duration::from_secs(60);
const BURST_LIMIT: Duration = Duration::from_secs(30);

fn app(i: usize) -> Value {
    json!({
        "id": format!("/burst-{i:05}"),
        "instances": 1,
        "portDefinitions": [{"port": 10_000 + i, "protocol": "tcp"}],
        "labels": {"HAPROXY_GROUP": "external", "HAPROXY_0_MODE": "tcp"},
    })
}

/// The watcher's updates applied to a store, as the controller does.
struct Follower {
    store: AppStore,
    rx: mpsc::Receiver<MarathonUpdate>,
    counters: Arc<WatcherCounters>,
    _stop: watch::Sender<bool>,
}

impl Follower {
    fn start(url: &str) -> Result<Follower> {
        let cfg = MarathonConfig {
            urls: vec![url.parse()?],
            ..MarathonConfig::default()
        };
        let watcher = MarathonWatcher::new(cfg)?;
        let counters = watcher.counters();
        let (tx, rx) = mpsc::channel(16);
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(watcher.run(tx, stop_rx));
        Ok(Follower {
            store: AppStore::default(),
            rx,
            counters,
            _stop: stop,
        })
    }

    /// Applies updates until `done` holds for the store, for at most `limit`.
    async fn until(&mut self, limit: Duration, done: impl Fn(&AppStore) -> bool) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&self.store) {
            let update = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .context("no convergence in time")?
                .context("the watcher stopped")?;
            match update {
                MarathonUpdate::Snapshot(list) => self.store.replace_all(list),
                MarathonUpdate::Apps {
                    changed, removed, ..
                } => self.store.update(changed, &removed),
                MarathonUpdate::TaskStatuses { statuses, .. } => {
                    self.store.apply_task_statuses(&statuses);
                }
                MarathonUpdate::SyncFailed { error } => bail!("sync failed: {error}"),
            }
        }
        Ok(())
    }
}

/// Task ids per app id, as the store has them.
fn store_tasks(store: &AppStore) -> BTreeMap<String, BTreeSet<String>> {
    store
        .list()
        .apps
        .iter()
        .map(|a| (a.id.clone(), a.tasks.iter().map(|t| t.id.clone()).collect()))
        .collect()
}

/// Task ids routed per app id: the backends of the model computed from the store.
fn routed_tasks(store: &AppStore) -> BTreeMap<String, BTreeSet<String>> {
    let opts = ModelOptions::new(vec!["external".into()]);
    let (state, _) = desired_state(
        store.list(),
        &opts,
        &HealthCache::default(),
        SystemTime::now(),
    );
    let mut routed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for svc in state.l4.values() {
        // In rotation: a task being killed drains (no new connections) until it is gone.
        let active = svc
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Active);
        let tasks = active.map(|b| {
            let id = b.id.as_str();
            id.rsplit_once(':').map_or(id, |(t, _)| t).to_owned()
        });
        routed.entry(svc.app_id.clone()).or_default().extend(tasks);
    }
    routed
}

async fn kill(url: &str, ids: &[String]) -> Result<()> {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v2/tasks/delete"))
        .json(&json!({ "ids": ids }))
        .send()
        .await?;
    ensure!(resp.status().is_success(), "kill: {}", resp.status());
    Ok(())
}

async fn burst() -> Result<()> {
    let sim = MarathonSim::start(SimConfig {
        running_apps: (0..APPS).map(app).collect(),
        bind_tasks: false,
        task_port_range: 20_000..=60_000,
        step_delay: Duration::from_millis(1),
        agents: vec![mlb_tests::marathon_sim::Agent::local(IpAddr::V4(
            Ipv4Addr::new(127, 0, 91, 1),
        ))],
        ..SimConfig::default()
    })
    .await?;
    let url = sim.url();
    let mut f = Follower::start(&url)?;
    f.until(SYNC_LIMIT, |s| s.list().apps.len() == APPS).await?;
    ensure!(f.counters.full_syncs() == 1, "one full read at start");

    // One task of every fourth app... of the first KILLS × 4 apps, killed in one call.
    let victims: Vec<String> = (0..KILLS)
        .map(|k| {
            let app = format!("/burst-{:05}", k * 4);
            sim.running_tasks(&app)
                .first()
                .map(|t| t.id.clone())
                .with_context(|| format!("{app}: no running task"))
        })
        .collect::<Result<_>>()?;
    let killed: BTreeSet<String> = victims.iter().cloned().collect();
    let started = Instant::now();
    kill(&url, &victims).await?;
    let routed_killed = |s: &AppStore| {
        let running = |t: &&mlb::marathon::types::Task| t.state.as_deref() == Some("TASK_RUNNING");
        s.list()
            .apps
            .iter()
            .flat_map(|a| a.tasks.iter().filter(running))
            .any(|t| killed.contains(&t.id))
    };
    f.until(BURST_LIMIT, |s| !routed_killed(s)).await?;
    let out_of_rotation = started.elapsed();
    let routed = routed_tasks(&f.store);
    let still = routed.values().flatten().filter(|t| killed.contains(*t));
    ensure!(still.count() == 0, "killed tasks still routed");

    // The replacements: once the simulator has relaunched them all, the store is Marathon.
    let deadline = Instant::now() + BURST_LIMIT;
    let expected = loop {
        let expected: BTreeMap<String, BTreeSet<String>> = sim
            .app_ids()
            .into_iter()
            .map(|id| {
                let tasks = sim.running_tasks(&id).into_iter().map(|t| t.id).collect();
                (id, tasks)
            })
            .collect();
        if expected.values().all(|t| t.len() == 1) {
            break expected;
        }
        ensure!(Instant::now() < deadline, "the simulator did not relaunch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    f.until(BURST_LIMIT, |s| store_tasks(s) == expected).await?;
    ensure!(
        routed_tasks(&f.store) == expected,
        "routing differs from Marathon"
    );
    eprintln!(
        "burst: {KILLS} kills out of rotation in {out_of_rotation:?}; {} events, {} apps re-read",
        f.counters.events(),
        f.counters.apps_reread()
    );
    ensure!(
        f.counters.stream_connects() == 1,
        "the event stream reconnected"
    );
    ensure!(
        f.counters.full_syncs() == 1,
        "the burst caused a full resync"
    );
    sim.shutdown().await;
    Ok(())
}

#[test]
fn burst_of_1000_kills_is_applied_without_reconnect_or_resync() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(burst()) {
        panic!("{e:#}");
    }
}
