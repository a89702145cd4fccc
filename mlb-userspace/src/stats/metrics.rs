//! `/metrics`: the stats [`Snapshot`] and the controller's [`Status`] in Prometheus' text format,
//! encoded by `prometheus-client`.
//!
//! The per-proxy families follow HAProxy's built-in exporter (`frontend`, `backend`, `server`
//! labels; sessions, bytes, responses by class), prefixed `mlb_`. The values are read from the
//! dataplanes at each scrape, so a fresh registry is filled every time; counters are the
//! dataplanes' own, monotonic while the service exists. The control-plane gauges keep the names
//! mlb has always exported (`mlb_synced`, `mlb_generation`, ...).
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::{Counters, Proxy, Snapshot};
use crate::controller::Status;

/// Label pairs (`backend`, `server`, `code`...) in the order they are written.
type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CounterLabels {
    counter: &'static str,
}

/// The exposition's media type: Prometheus' text format, which every scraper and `promtool`
/// read (see [`to_text_format`]).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const CODES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
const STATES: [&str; 4] = ["UP", "DOWN", "MAINT", "no check"];

/// The traffic families of one level (frontend, backend or server).
struct Traffic {
    current: Family<Labels, Gauge>,
    total: Family<Labels, Counter>,
    bytes_in: Family<Labels, Counter>,
    bytes_out: Family<Labels, Counter>,
    responses: Family<Labels, Counter>,
}

impl Traffic {
    fn register(registry: &mut Registry, level: &str) -> Self {
        let t = Traffic {
            current: Family::default(),
            total: Family::default(),
            bytes_in: Family::default(),
            bytes_out: Family::default(),
            responses: Family::default(),
        };
        registry.register(
            format!("mlb_{level}_current_sessions"),
            format!("Sessions open now per {level} (connections, flows, requests in flight)"),
            t.current.clone(),
        );
        registry.register(
            format!("mlb_{level}_sessions"),
            format!("Sessions per {level} since it appeared"),
            t.total.clone(),
        );
        registry.register(
            format!("mlb_{level}_bytes_in"),
            format!("Bytes from clients per {level} (XDP: both directions)"),
            t.bytes_in.clone(),
        );
        registry.register(
            format!("mlb_{level}_bytes_out"),
            format!("Bytes to clients per {level} (not counted apart by XDP)"),
            t.bytes_out.clone(),
        );
        registry.register(
            format!("mlb_{level}_http_responses"),
            format!("HTTP responses per {level} by status class"),
            t.responses.clone(),
        );
        t
    }

    fn record(&self, labels: &Labels, c: &Counters) {
        self.current.get_or_create(labels).set(c.scur as i64);
        self.total.get_or_create(labels).inc_by(c.stot);
        self.bytes_in.get_or_create(labels).inc_by(c.bin);
        if let Some(b) = c.bout {
            self.bytes_out.get_or_create(labels).inc_by(b);
        }
        if let Some(hrsp) = c.hrsp {
            for (code, n) in CODES.iter().zip(hrsp) {
                let mut labels = labels.clone();
                labels.push(("code", (*code).to_owned()));
                self.responses.get_or_create(&labels).inc_by(n);
            }
        }
    }
}

/// The Prometheus exposition of `snapshot` and `status`.
pub fn render(snapshot: &Snapshot, status: &Status) -> String {
    let mut registry = Registry::default();
    control_plane(&mut registry, status);
    proxies(&mut registry, &snapshot.proxies);
    super::live::live().register(&mut registry);
    if let Some(xdp) = &snapshot.xdp {
        let packets = Family::<CounterLabels, Counter>::default();
        registry.register(
            "mlb_xdp_packets",
            "Packets by XDP verdict, pass/drop reason and flow event (counter label)",
            packets.clone(),
        );
        for (counter, value) in &xdp.counters {
            packets
                .get_or_create(&CounterLabels { counter })
                .inc_by(*value);
        }
        let conntrack = Gauge::<i64>::default();
        conntrack.set(xdp.conntrack_entries as i64);
        registry.register(
            "mlb_xdp_conntrack_entries",
            "Tracked flow directions in the XDP connection table (two per flow)",
            conntrack,
        );
        snat_ports(&mut registry, &xdp.snat_ports);
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &registry);
    to_text_format(&out)
}

/// SNAT ports towards each backend: held now, and there are in all (their ratio is the
/// occupancy; new flows to a backend are dropped once it reaches 1).
fn snat_ports(registry: &mut Registry, ports: &[(String, u64, u64)]) {
    let used = Family::<SnatLabels, Gauge<i64>>::default();
    let capacity = Family::<SnatLabels, Gauge<i64>>::default();
    for (server, held, all) in ports {
        let labels = SnatLabels {
            server: server.clone(),
        };
        used.get_or_create(&labels).set(*held as i64);
        capacity.get_or_create(&labels).set(*all as i64);
    }
    registry.register(
        "mlb_xdp_snat_ports_used",
        "SNAT ports held by tracked flows towards the backend",
        used,
    );
    registry.register(
        "mlb_xdp_snat_ports_capacity",
        "SNAT ports towards the backend in all (SNAT addresses of its family x port range)",
        capacity,
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnatLabels {
    server: String,
}

/// OpenMetrics text (what `prometheus-client` writes) as Prometheus' text format: a counter's
/// `# HELP` and `# TYPE` lines name it with its samples' `_total` suffix, and there is no
/// `# EOF` line. Prometheus' text parser would otherwise see samples without metadata.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn proxies(registry: &mut Registry, proxies: &[Proxy]) {
    let frontends = Traffic::register(registry, "frontend");
    let backends = Traffic::register(registry, "backend");
    let servers = Traffic::register(registry, "server");
    let backend_up = Family::<Labels, Gauge>::default();
    registry.register(
        "mlb_backend_up",
        "1 while a server of the backend takes new sessions",
        backend_up.clone(),
    );
    let server_state = Family::<Labels, Gauge>::default();
    registry.register(
        "mlb_server_state",
        "1 for the server's state: UP, DOWN (failing its health check), MAINT (draining), no check",
        server_state.clone(),
    );
    let server_weight = Family::<Labels, Gauge>::default();
    registry.register("mlb_server_weight", "Server weight", server_weight.clone());
    for p in proxies {
        let totals = p.totals();
        frontends.record(&vec![("frontend", p.name.clone())], &totals);
        let be = vec![("backend", p.name.clone())];
        backends.record(&be, &totals);
        backend_up.get_or_create(&be).set(i64::from(p.backend_up()));
        for s in &p.servers {
            let labels = vec![("backend", p.name.clone()), ("server", s.name.clone())];
            servers.record(&labels, &s.counters);
            server_weight
                .get_or_create(&labels)
                .set(i64::from(s.weight));
            for state in STATES {
                let mut labels = labels.clone();
                labels.push(("state", state.to_owned()));
                let on = s.status.as_str() == state;
                server_state.get_or_create(&labels).set(i64::from(on));
            }
        }
    }
}

/// The controller's gauges, under the names mlb has always exported.
fn control_plane(registry: &mut Registry, s: &Status) {
    let mut gauge = |name: &str, help: &str, value: u64| {
        let g = Gauge::<i64>::default();
        g.set(value as i64);
        registry.register(name, help, g);
    };
    gauge(
        "mlb_synced",
        "1 once Marathon was read successfully",
        u64::from(s.synced),
    );
    gauge(
        "mlb_generation",
        "Dataplane updates applied since start",
        s.generation,
    );
    gauge(
        "mlb_full_passes",
        "Full recomputations of the desired state since start",
        s.full_passes,
    );
    gauge("mlb_apps", "Marathon apps known", s.apps as u64);
    gauge("mlb_l4_services", "TCP/UDP services", s.l4_services as u64);
    gauge("mlb_http_services", "HTTP services", s.http_services as u64);
    gauge(
        "mlb_rejected",
        "Apps or ports not exposed because of a problem",
        s.rejected as u64,
    );
    gauge(
        "mlb_l4_unhealthy_backends",
        "L4 backends failing mlb's health checks",
        s.l4_unhealthy.len() as u64,
    );
    gauge(
        "mlb_marathon_read_failing",
        "1 while the last Marathon read failed",
        u64::from(s.last_error.is_some()),
    );
    gauge(
        "mlb_l4_dataplane_errors",
        "L4 services the dataplane could not program",
        s.l4_errors.len() as u64,
    );
    gauge(
        "mlb_http_dataplane_errors",
        "Problems the HTTP proxy reports (unbindable ports, bad certificates or auth labels)",
        s.http_errors.len() as u64,
    );
}
