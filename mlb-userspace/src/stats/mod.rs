//! What the load balancer is doing, in HAProxy's shapes: one [`Snapshot`] built from the
//! desired state (names, servers, drain state), the health checks (up/down) and the counters
//! the dataplanes keep ([`StatsSource`]), rendered as HAProxy 2.0's stats CSV ([`csv`]).
//!
//! Building a snapshot is pure: the admin listener collects the inputs, [`build`] joins them.
//! A service appears as a proxy named as marathon-lb named it (`<app id>_<service port>`, the
//! name `/_haproxy_getappmap` gives), with a FRONTEND row, one row per server and a BACKEND
//! row. Servers are named as marathon-lb named them when the task host is its IP
//! (`10_0_6_25_31184`), which is the name `zdd.py` derives for such tasks.
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::model::{Backend, BackendId, BackendState, DesiredState, L4ServiceKey, Protocol};

pub mod csv;
pub mod html;
pub mod live;
pub mod memory;
pub mod metrics;
mod sources;

/// What one server, backend or frontend has carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Sessions (connections, flows, requests in flight) open now: HAProxy's `scur`.
    pub scur: u64,
    /// Sessions since start: `stot`.
    pub stot: u64,
    /// Bytes from clients: `bin`. The XDP dataplane counts both directions here.
    pub bin: u64,
    /// Bytes to clients: `bout` (`None`: this dataplane does not count them apart).
    pub bout: Option<u64>,
    /// HTTP responses by class: 1xx, 2xx, 3xx, 4xx, 5xx, other (`None`: not an HTTP service).
    pub hrsp: Option<[u64; 6]>,
}

impl Counters {
    fn add(&mut self, other: &Counters) {
        self.scur += other.scur;
        self.stot += other.stot;
        self.bin += other.bin;
        if let Some(b) = other.bout {
            *self.bout.get_or_insert(0) += b;
        }
        if let Some(h) = other.hrsp {
            let sum = self.hrsp.get_or_insert([0; 6]);
            for (s, v) in sum.iter_mut().zip(h) {
                *s += v;
            }
        }
    }

    /// HTTP requests answered (the sum of the response classes).
    pub fn requests(&self) -> Option<u64> {
        self.hrsp.map(|h| h.iter().sum())
    }
}

/// A server's state, as HAProxy's `status` column spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerStatus {
    /// Passing its health check.
    Up,
    /// Failing its health check: out of rotation.
    Down,
    /// Draining (a zdd or scale-down in progress): takes no new sessions, keeps its open ones.
    Maint,
    /// Its app defines no health check: in rotation.
    NoCheck,
}

impl ServerStatus {
    /// The `status` column: `UP`, `DOWN`, `MAINT` or `no check`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerStatus::Up => "UP",
            ServerStatus::Down => "DOWN",
            ServerStatus::Maint => "MAINT",
            ServerStatus::NoCheck => "no check",
        }
    }

    /// Takes new sessions.
    pub fn in_rotation(self) -> bool {
        matches!(self, ServerStatus::Up | ServerStatus::NoCheck)
    }
}

/// HAProxy's proxy mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Http,
    Tcp,
    /// mlb's own: HAProxy has no UDP.
    Udp,
}

impl Mode {
    /// The `mode` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
            Mode::Udp => "udp",
        }
    }
}

/// One server (a task's host:port) of a proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// `svname`.
    pub name: String,
    pub id: BackendId,
    pub addr: SocketAddr,
    pub weight: u32,
    pub status: ServerStatus,
    /// Time since the status last changed (`lastchg`), when known.
    pub last_change: Option<Duration>,
    /// New sessions per second over the last sampling interval (`rate`), when known.
    pub rate: Option<u64>,
    pub counters: Counters,
}

impl Server {
    /// HAProxy's `check_status` and `check_desc` when its proxy (`checked`) has a health check.
    pub fn check(&self, checked: bool) -> Option<(&'static str, &'static str)> {
        checked.then_some(match self.status {
            ServerStatus::Down => ("L4CON", "Health check failed"),
            _ => ("L4OK", "Health check passed"),
        })
    }
}

/// One service: a frontend and a backend of the same name, as marathon-lb configured them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proxy {
    /// `pxname`: `<app id without the leading / and with / as _>_<service port>`, with `_udp`
    /// appended for a UDP service (HAProxy had none, and a TCP service may use the same port).
    pub name: String,
    pub app_id: String,
    pub port: u16,
    pub mode: Mode,
    /// Whether the app defines a health check (servers are then UP/DOWN, else `no check`).
    pub checked: bool,
    pub servers: Vec<Server>,
}

impl Proxy {
    /// New sessions per second over all servers (`None` before a second sample).
    pub fn rate(&self) -> Option<u64> {
        self.servers
            .iter()
            .filter_map(|s| s.rate)
            .reduce(|a, b| a + b)
    }

    /// The frontend's and the backend's counters: the sum of the servers'.
    pub fn totals(&self) -> Counters {
        let mut sum = Counters {
            hrsp: (self.mode == Mode::Http).then_some([0; 6]),
            ..Counters::default()
        };
        for s in &self.servers {
            sum.add(&s.counters);
        }
        sum
    }

    /// `UP` while a server takes new sessions, else `DOWN` (the BACKEND row's status).
    pub fn backend_up(&self) -> bool {
        self.servers.iter().any(|s| s.status.in_rotation())
    }
}

/// Everything the stats endpoints show, at one instant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// L4 services then HTTP services, each in key order.
    pub proxies: Vec<Proxy>,
    /// The XDP program's own counters, when it runs.
    pub xdp: Option<XdpGlobals>,
}

/// The XDP program's global counters (verdicts, every pass and drop reason, flows) and its
/// connection table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct XdpGlobals {
    /// Each counter of the program under the name it is reported as, in the program's order.
    pub counters: Vec<(&'static str, u64)>,
    /// Tracked flow directions (two per flow).
    pub conntrack_entries: u64,
    /// SNAT ports towards each backend (by server name): held, and there are in all.
    pub snat_ports: Vec<(String, u64, u64)>,
}

/// The counters the dataplanes keep, by the keys each one has.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The userspace L4 dataplane: by service and backend.
    pub l4: HashMap<(L4ServiceKey, BackendId), Counters>,
    /// The XDP dataplane: by backend address (a backend in two services counts once for both).
    pub l4_by_addr: HashMap<SocketAddr, Counters>,
    /// The HTTP proxy: by backend.
    pub http: HashMap<BackendId, Counters>,
    /// The XDP program's global counters.
    pub xdp: Option<XdpGlobals>,
}

/// A dataplane whose counters the stats endpoints show. Reading must be quick and never block
/// forwarding for long (a lock held while copying counters, a map read).
pub trait StatsSource: Send + Sync {
    /// Adds this dataplane's counters to `into`.
    fn observe(&self, into: &mut Observed);
}

/// marathon-lb's frontend and backend name: the app id without its leading `/`, `/` as `_`,
/// then the service port.
pub fn proxy_name(app_id: &str, port: u16) -> String {
    format!(
        "{}_{port}",
        app_id.trim_start_matches('/').replace('/', "_")
    )
}

/// marathon-lb's server name for a task whose host is its IP: `<ip>_<port>` with every
/// character other than ASCII letters, digits and `-` as `_`.
pub fn server_name(addr: SocketAddr) -> String {
    format!("{}_{}", addr.ip(), addr.port())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Builds the snapshot: every service of `state`, its servers' status from their drain state and
/// `unhealthy` (the health checks' verdicts), their counters from `observed` (zero when the
/// dataplane has not seen them yet).
pub fn build(
    state: &DesiredState,
    unhealthy: &HashSet<BackendId>,
    observed: &Observed,
) -> Snapshot {
    let status = |b: &Backend, checked: bool| match (b.state, checked) {
        (BackendState::Draining, _) => ServerStatus::Maint,
        (BackendState::Active, false) => ServerStatus::NoCheck,
        (BackendState::Active, true) if unhealthy.contains(&b.id) => ServerStatus::Down,
        (BackendState::Active, true) => ServerStatus::Up,
    };
    let server = |b: &Backend, checked: bool, counters: Counters| Server {
        name: server_name(b.addr),
        id: b.id.clone(),
        addr: b.addr,
        weight: b.weight,
        status: status(b, checked),
        last_change: None,
        rate: None,
        counters,
    };
    let mut proxies = Vec::with_capacity(state.l4.len() + state.http.len());
    for svc in state.l4.values() {
        let checked = svc.health_check.is_some();
        let servers = svc
            .backends
            .iter()
            .map(|b| {
                let counters = observed
                    .l4
                    .get(&(svc.key, b.id.clone()))
                    .or_else(|| observed.l4_by_addr.get(&b.addr))
                    .copied()
                    .unwrap_or_default();
                server(b, checked, counters)
            })
            .collect();
        let (mode, suffix) = match svc.key.protocol {
            Protocol::Tcp => (Mode::Tcp, ""),
            Protocol::Udp => (Mode::Udp, "_udp"),
        };
        proxies.push(Proxy {
            name: proxy_name(&svc.app_id, svc.key.port) + suffix,
            app_id: svc.app_id.clone(),
            port: svc.key.port,
            mode,
            checked,
            servers,
        });
    }
    for svc in state.http.values() {
        let checked = svc.health_check.is_some();
        let servers = svc
            .backends
            .iter()
            .map(|b| {
                let mut counters = observed.http.get(&b.id).copied().unwrap_or_default();
                counters.hrsp.get_or_insert([0; 6]);
                counters.bout.get_or_insert(0);
                server(b, checked, counters)
            })
            .collect();
        proxies.push(Proxy {
            name: proxy_name(&svc.key.app_id, svc.service_port),
            app_id: svc.key.app_id.clone(),
            port: svc.service_port,
            mode: Mode::Http,
            checked,
            servers,
        });
    }
    Snapshot {
        proxies,
        xdp: observed.xdp.clone(),
    }
}

/// Session rates are measured over at least this long, so that two clients polling the page a
/// few milliseconds apart do not see a rate made of one or two sessions.
const RATE_INTERVAL: Duration = Duration::from_secs(1);

/// What the tracker remembers of one server between snapshots.
#[derive(Debug, Clone, Copy)]
struct Seen {
    status: ServerStatus,
    since: Instant,
    /// `stot` and the instant of the sample the current rate started from.
    sample: (u64, Instant),
    rate: Option<u64>,
}

/// Remembers, across snapshots, when each server's status last changed (HAProxy's `lastchg`)
/// and how fast its session count grows (`rate`).
#[derive(Debug, Default)]
pub struct ChangeTracker {
    seen: HashMap<(String, BackendId), Seen>,
}

impl ChangeTracker {
    /// Fills in `last_change` and `rate` for every server of `snapshot` as of `now`, and forgets
    /// servers no longer in it. A server seen for the first time changed now.
    pub fn stamp(&mut self, snapshot: &mut Snapshot, now: Instant) {
        let mut seen = HashMap::with_capacity(self.seen.len());
        for proxy in &mut snapshot.proxies {
            for s in &mut proxy.servers {
                let key = (proxy.name.clone(), s.id.clone());
                let next = Self::next(self.seen.remove(&key), s, now);
                s.last_change = Some(now.saturating_duration_since(next.since));
                s.rate = next.rate;
                seen.insert(key, next);
            }
        }
        self.seen = seen;
    }

    /// What to remember of `server` now, given what was remembered before.
    fn next(before: Option<Seen>, server: &Server, now: Instant) -> Seen {
        let stot = server.counters.stot;
        let Some(before) = before else {
            return Seen {
                status: server.status,
                since: now,
                sample: (stot, now),
                rate: None,
            };
        };
        let since = if before.status == server.status {
            before.since
        } else {
            now
        };
        let (then_stot, then) = before.sample;
        let elapsed = now.saturating_duration_since(then);
        let (sample, rate) = if elapsed >= RATE_INTERVAL {
            let per_sec = stot.saturating_sub(then_stot) as f64 / elapsed.as_secs_f64();
            ((stot, now), Some(per_sec.round() as u64))
        } else {
            (before.sample, before.rate)
        };
        Seen {
            status: server.status,
            since,
            sample,
            rate,
        }
    }
}

#[cfg(test)]
mod tests;
