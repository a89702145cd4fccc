//! A Marathon simulator that speaks Marathon's real REST API and `/v2/events` SSE bus, with
//! real task backends (TCP/HTTP/UDP listeners) and fault injection.
//!
//! It exists so that Marathon clients (mlb's, marathon-lb's, zdd's) can be tested end to end
//! without a Mesos cluster: apps are created from Marathon app definitions, deployments move
//! tasks through `TASK_STAGING` → `TASK_RUNNING` (and health results) with the events real
//! Marathon emits, and every task really listens on the ports it reports.
//!
//! Endpoints: `GET/POST /v2/apps`, `GET/PUT/DELETE /v2/apps/{id}` (ids may contain slashes),
//! `GET /v2/apps/{id}/tasks`, `GET /v2/tasks` (JSON or `text/plain`), `POST /v2/tasks/delete`
//! (`?scale=true`), `GET /v2/deployments`, `GET /v2/events` (SSE; `event_type=` repeatable,
//! `plan-format=light`), `GET /v2/leader`, `GET /v2/info`, `GET /ping`. Simulator-only:
//! `GET/POST /_sim/faults` (a [`Fault`] as JSON, e.g. `{"kind":"stall_event_streams",
//! "stalled":true}`) and `POST /_sim/tasks/{task_id}/health?healthy=false|true`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mlb_tests::marathon_sim::SimError> {
//! use mlb_tests::marathon_sim::{MarathonSim, SimConfig};
//! let sim = MarathonSim::start(SimConfig::default()).await?;
//! sim.create_app(serde_json::json!({"id": "/web", "instances": 2})).await?;
//! let tasks = sim.tasks("/web");
//! println!("{} has {} tasks on {:?}", sim.url(), tasks.len(), tasks[0].ports);
//! # Ok(()) }
//! ```
mod api;
mod backend;
mod clock;
mod deploy;
mod events;
mod faults;
mod model;

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    ops::RangeInclusive,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use serde_json::Value;
use tokio::{
    sync::{oneshot, watch},
    task::{JoinHandle, JoinSet},
};

pub use faults::{Fault, FaultSettings};

use backend::PortAllocator;
use events::EventBus;
use faults::FaultState;
use model::{TaskState, World};

/// The sample apps for the demo (`sample_apps.json`): a TCP echo app, a UDP app, two HTTP
/// vhosts and a TLS vhost, all in `HAPROXY_GROUP=external`.
pub const SAMPLE_APPS_JSON: &str = include_str!("sample_apps.json");

/// Errors of the simulator; each names the app, task or address involved.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A socket could not be bound (API listener or task port).
    #[error("marathon-sim: cannot bind {addr}: {source}")]
    Bind {
        /// The address that failed (port 0 when the whole range was tried).
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// A task's sockets could not be created inside a network namespace.
    #[error("marathon-sim: network namespace {name}: {source}")]
    Netns {
        /// The namespace name under /var/run/netns.
        name: String,
        /// The OS error.
        source: io::Error,
    },
    /// An app definition or update was rejected.
    #[error("app {id}: invalid definition: {reason}")]
    InvalidApp {
        /// The app id as submitted.
        id: String,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// `POST /v2/apps` for an id that exists.
    #[error("An app with id [{id}] already exists.")]
    AppExists {
        /// The app id.
        id: String,
    },
    /// The app is being deleted.
    #[error("App is locked by one or more deployments: app {id} is being deleted")]
    AppLocked {
        /// The app id.
        id: String,
    },
    /// No such app.
    #[error("App '{id}' does not exist")]
    UnknownApp {
        /// The app id.
        id: String,
    },
    /// No such task.
    #[error("Task '{id}' does not exist")]
    UnknownTask {
        /// The task id.
        id: String,
    },
    /// A deployment failed (task ports could not be bound, or the `fail_deployments` fault).
    #[error("deployment {id} failed: {reason}")]
    DeploymentFailed {
        /// The deployment id.
        id: String,
        /// Why.
        reason: String,
    },
    /// The simulator was shut down while the operation was in progress.
    #[error("marathon-sim: shut down")]
    ShutDown,
}

/// A Mesos agent the simulator places tasks on: the address task listeners bind to, optionally
/// inside a network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    /// Address task sockets bind to; reported as `host` and in `ipAddresses`.
    pub address: IpAddr,
    /// Network namespace (name under /var/run/netns) to bind in; `None` binds in the
    /// simulator's own namespace.
    pub netns: Option<String>,
    /// Reported as the task's `host` instead of the address (marathon-lb resolves it by DNS).
    pub hostname: Option<String>,
}

impl Agent {
    /// An agent binding on `address` in the current namespace.
    pub fn local(address: IpAddr) -> Self {
        Agent {
            address,
            netns: None,
            hostname: None,
        }
    }

    /// An agent binding on `address` inside network namespace `netns`.
    pub fn in_netns(address: IpAddr, netns: impl Into<String>) -> Self {
        Agent {
            address,
            netns: Some(netns.into()),
            hostname: None,
        }
    }

    fn host(&self) -> String {
        self.hostname
            .clone()
            .unwrap_or_else(|| self.address.to_string())
    }
}

/// How to start a simulator.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Where the Marathon API listens (port 0: any free port).
    pub listen: SocketAddr,
    /// Agents tasks are placed on, round-robin.
    pub agents: Vec<Agent>,
    /// Host ports task listeners are allocated from (like a Mesos agent's `ports` resource).
    pub task_port_range: RangeInclusive<u16>,
    /// Pause between deployment phases (staging → running → healthy, killing → killed).
    pub step_delay: Duration,
    /// Interval of keep-alive lines on `/v2/events`.
    pub keep_alive: Duration,
    /// App definitions created (and deployed) at start.
    pub apps: Vec<Value>,
    /// App definitions that already run when the simulator starts, as in a Marathon mlb
    /// connects to: every task is placed in `TASK_RUNNING` at once (healthy, for apps with
    /// `healthChecks`), without deployments or events. Unlike `apps`, which are deployed one by
    /// one, this scales to tens of thousands of apps (benchmarks).
    pub running_apps: Vec<Value>,
    /// Whether tasks bind real sockets on their ports (the default). With `false`, task ports
    /// are still allocated from `task_port_range` and reported, but nothing listens on them:
    /// for benchmarks with more tasks than a process can hold sockets.
    pub bind_tasks: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            agents: vec![Agent::local(IpAddr::V4(Ipv4Addr::LOCALHOST))],
            task_port_range: 31_000..=32_999,
            step_delay: Duration::from_millis(5),
            keep_alive: Duration::from_secs(5),
            apps: Vec::new(),
            running_apps: Vec::new(),
            bind_tasks: true,
        }
    }
}

/// A task as tests see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    /// Marathon task id (`app.<uuid>`); also what its backends answer.
    pub id: String,
    /// The app id.
    pub app_id: String,
    /// The reported `host`.
    pub host: String,
    /// The address its sockets are bound to.
    pub address: IpAddr,
    /// The ports its sockets are bound to, in port-definition order.
    pub ports: Vec<u16>,
    /// The app's service ports, in the same order.
    pub service_ports: Vec<u16>,
    /// Mesos state (`TASK_RUNNING`, ...).
    pub state: String,
    /// Marathon's health verdict (`None` before the first check or without health checks).
    pub healthy: Option<bool>,
}

/// The state shared by the API server, the deployment runner and the handle.
pub(crate) struct Sim {
    config: SimConfig,
    world: Mutex<World>,
    events: EventBus,
    faults: FaultState,
    /// Deployments (and task replacements) run one at a time, in submission order.
    deploy_lock: tokio::sync::Mutex<()>,
    ports: Arc<PortAllocator>,
    addr: OnceLock<SocketAddr>,
    shutdown: watch::Sender<bool>,
    background: Mutex<JoinSet<()>>,
}

/// A deployment that was accepted; `done` resolves when it finishes.
pub(crate) struct DeploymentTicket {
    pub(crate) id: String,
    pub(crate) version: String,
    pub(crate) done: oneshot::Receiver<Result<(), SimError>>,
}

impl DeploymentTicket {
    async fn wait(self) -> Result<(), SimError> {
        self.done.await.map_err(|_| SimError::ShutDown)?
    }
}

impl Sim {
    fn lock(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().expect("marathon-sim world lock")
    }

    /// Runs `fut` in the background; aborted at shutdown.
    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut set = self.background.lock().expect("background lock");
        while set.try_join_next().is_some() {}
        set.spawn(fut);
    }

    fn addr(&self) -> SocketAddr {
        *self
            .addr
            .get()
            .expect("the API listener is bound before use")
    }

    fn stop(&self) {
        self.shutdown.send_replace(true);
        self.background.lock().expect("background lock").abort_all();
        // Dropping the tasks closes every backend listener and connection.
        let apps = std::mem::take(&mut self.lock().apps);
        drop(apps);
    }

    fn task_infos(&self, app_id: &str) -> Vec<TaskInfo> {
        let w = self.lock();
        let Ok(id) = model::normalize_app_id(app_id) else {
            return Vec::new();
        };
        w.apps
            .get(&id)
            .map(|app| {
                app.tasks
                    .iter()
                    .map(|t| TaskInfo {
                        id: t.id.clone(),
                        app_id: t.app_id.clone(),
                        host: t.host.clone(),
                        address: t.address,
                        ports: t.bound_ports.clone(),
                        service_ports: t.service_ports.clone(),
                        state: t.state.as_mesos().to_string(),
                        healthy: t.health.as_ref().map(|_| t.is_alive()),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A running simulator. Dropping it stops the API server, every event stream and every task
/// listener.
pub struct MarathonSim {
    sim: Arc<Sim>,
    server: JoinHandle<()>,
}

impl MarathonSim {
    /// Binds the API, places `config.running_apps`, starts serving, and creates `config.apps`
    /// (waiting for their deployments).
    pub async fn start(config: SimConfig) -> Result<MarathonSim, SimError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: config.listen,
            source,
        })?;
        let mut config = config;
        if config.agents.is_empty() {
            config.agents = SimConfig::default().agents;
        }
        let apps = std::mem::take(&mut config.apps);
        let running_apps = std::mem::take(&mut config.running_apps);
        let sim = Arc::new(Sim {
            ports: Arc::new(PortAllocator::new(config.task_port_range.clone())),
            config,
            world: Mutex::new(World::default()),
            events: EventBus::new(4096),
            faults: FaultState::new(),
            deploy_lock: tokio::sync::Mutex::new(()),
            addr: OnceLock::new(),
            shutdown: watch::Sender::new(false),
            background: Mutex::new(JoinSet::new()),
        });
        let _ = sim.addr.set(addr);
        sim.preload(running_apps).await?;
        let server = tokio::spawn(api::serve(sim.clone(), listener));
        tracing::info!(%addr, "marathon-sim: listening");
        let handle = MarathonSim { sim, server };
        for app in apps {
            handle.create_app(app).await?;
        }
        Ok(handle)
    }

    /// The API base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.sim.addr())
    }

    /// The API listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.sim.addr()
    }

    /// Creates an app (`POST /v2/apps`) and waits until its deployment finished; returns the
    /// normalized app id.
    pub async fn create_app(&self, app: Value) -> Result<String, SimError> {
        let (id, ticket) = self.sim.create_app(app, "127.0.0.1", "/v2/apps")?;
        ticket.wait().await?;
        Ok(id)
    }

    /// Updates an app like `PUT /v2/apps/{id}` (labels, ports... restart its tasks; only
    /// `instances` scales) and waits for the deployment.
    pub async fn update_app(&self, id: &str, update: Value) -> Result<(), SimError> {
        let (_, ticket) = self.sim.update_app(id, update, "127.0.0.1")?;
        ticket.wait().await
    }

    /// Scales an app to `instances` and waits for the deployment.
    pub async fn scale(&self, id: &str, instances: usize) -> Result<(), SimError> {
        self.update_app(id, serde_json::json!({ "instances": instances }))
            .await
    }

    /// Kills a task the way a crash would: Marathon then launches a replacement. Waits until
    /// the replacement runs.
    pub async fn kill_task(&self, task_id: &str) -> Result<(), SimError> {
        let (_, ticket) = self.sim.kill_tasks(&[task_id.to_string()], false)?;
        ticket.wait().await
    }

    /// Kills a task and scales its app down by one (`/v2/tasks/delete?scale=true`).
    pub async fn kill_task_and_scale(&self, task_id: &str) -> Result<(), SimError> {
        let (_, ticket) = self.sim.kill_tasks(&[task_id.to_string()], true)?;
        ticket.wait().await
    }

    /// Flips a task's health: its HTTP answers become 503 (or 200 again), and for apps with
    /// `healthChecks` Marathon's verdict and health events follow.
    pub fn set_task_health(&self, task_id: &str, healthy: bool) -> Result<(), SimError> {
        self.sim.set_task_health(task_id, healthy)
    }

    /// Deletes an app and waits until its tasks are gone.
    pub async fn delete_app(&self, id: &str) -> Result<(), SimError> {
        let ticket = self.sim.delete_app(id, "127.0.0.1")?;
        ticket.wait().await
    }

    /// Injects a fault (see [`Fault`]).
    pub fn inject(&self, fault: Fault) {
        self.sim.faults.apply(fault);
    }

    /// The faults in effect.
    pub fn faults(&self) -> FaultSettings {
        self.sim.faults.current()
    }

    /// The tasks of an app (staging, running or killing), in launch order.
    pub fn tasks(&self, app_id: &str) -> Vec<TaskInfo> {
        self.sim.task_infos(app_id)
    }

    /// The running tasks of an app.
    pub fn running_tasks(&self, app_id: &str) -> Vec<TaskInfo> {
        self.tasks(app_id)
            .into_iter()
            .filter(|t| t.state == TaskState::Running.as_mesos())
            .collect()
    }

    /// The ids of every app.
    pub fn app_ids(&self) -> Vec<String> {
        let w = self.sim.lock();
        w.apps
            .values()
            .filter(|a| !a.deleting)
            .map(|a| a.id().to_string())
            .collect()
    }

    /// Stops everything and waits for the API server to finish.
    pub async fn shutdown(mut self) {
        self.sim.stop();
        self.server.abort();
        let server = std::mem::replace(&mut self.server, tokio::spawn(async {}));
        let _ = server.await;
    }
}

impl Drop for MarathonSim {
    fn drop(&mut self) {
        self.sim.stop();
        self.server.abort();
    }
}
