//! Metrics recorded as things happen, rather than read from the dataplanes at each scrape: HTTP
//! request durations, health-check failures, Marathon events, event → dataplane latency and
//! errors by kind.
//!
//! They live for the whole process in one [`Live`] ([`live`]), so the proxy, the health
//! checker, the watcher and the controller record into it without being handed a registry;
//! `/metrics` registers them next to the snapshot's families at each scrape. Recording is a few
//! atomic operations (a hash lookup for labelled families), never a lock held across I/O.
use std::{sync::LazyLock, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabel {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabel {
    server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// What went wrong, as the `kind` label of `mlb_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Reading Marathon failed (the last good state is kept).
    MarathonRead,
    /// A backend failed to answer an HTTP request (502).
    BackendFailed,
    /// A backend did not answer an HTTP request in time (504).
    BackendTimeout,
    /// The L4 dataplane refused a service.
    L4Dataplane,
    /// The HTTP proxy reported a problem applying a change.
    HttpDataplane,
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::MarathonRead => "marathon_read",
            ErrorKind::BackendFailed => "backend_failed",
            ErrorKind::BackendTimeout => "backend_timeout",
            ErrorKind::L4Dataplane => "l4_dataplane",
            ErrorKind::HttpDataplane => "http_dataplane",
        }
    }
}

/// 1 ms to about 33 s.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The process' live metrics.
pub struct Live {
    request_duration: Family<BackendLabel, Histogram, fn() -> Histogram>,
    health_check_failures: Family<ServerLabel, Counter>,
    events_received: Counter,
    event_to_dataplane: Histogram,
    errors: Family<KindLabel, Counter>,
    access_log_dropped: Counter,
}

static LIVE: LazyLock<Live> = LazyLock::new(|| Live {
    request_duration: Family::new_with_constructor(request_histogram),
    health_check_failures: Family::default(),
    events_received: Counter::default(),
    // 5 ms to about 40 s.
    event_to_dataplane: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
    errors: Family::default(),
    access_log_dropped: Counter::default(),
});

/// The process' live metrics.
pub fn live() -> &'static Live {
    &LIVE
}

impl Live {
    /// An HTTP request of `backend` (the stats proxy name) got its response headers after
    /// `elapsed`.
    pub fn request_done(&self, backend: String, elapsed: Duration) {
        self.request_duration
            .get_or_create(&BackendLabel { backend })
            .observe(elapsed.as_secs_f64());
    }

    /// The request-duration histogram of `backend` (the stats proxy name), for a caller that
    /// records many requests of it without a lookup each.
    pub fn request_duration(&self, backend: String) -> Histogram {
        self.request_duration
            .get_or_create(&BackendLabel { backend })
            .clone()
    }

    /// A health check of `server` (the stats server name) failed.
    pub fn health_check_failed(&self, server: String) {
        self.health_check_failures
            .get_or_create(&ServerLabel { server })
            .inc();
    }

    /// A Marathon event arrived.
    pub fn event_received(&self) {
        self.events_received.inc();
    }

    /// The dataplanes reflect a Marathon update whose oldest event was read `age` ago.
    pub fn event_applied(&self, age: Duration) {
        self.event_to_dataplane.observe(age.as_secs_f64());
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .inc();
    }

    /// An access log line was dropped (the writer is behind, or the sink failed).
    pub fn access_log_dropped(&self) {
        self.access_log_dropped.inc();
    }

    pub fn access_log_dropped_count(&self) -> u64 {
        self.access_log_dropped.get()
    }

    /// Adds every live family to `registry` (they share their values with this one).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mlb_http_request_duration_seconds",
            "Time from sending an HTTP request to a backend to its response headers, per backend",
            self.request_duration.clone(),
        );
        registry.register(
            "mlb_health_check_failures",
            "Failed active health checks per server",
            self.health_check_failures.clone(),
        );
        registry.register(
            "mlb_marathon_events",
            "Marathon events received",
            self.events_received.clone(),
        );
        registry.register(
            "mlb_event_to_dataplane_seconds",
            "Time from a Marathon event to the dataplanes reflecting it (oldest pending event)",
            self.event_to_dataplane.clone(),
        );
        registry.register("mlb_errors", "Errors by kind", self.errors.clone());
        registry.register(
            "mlb_access_log_dropped",
            "Access log lines dropped because the writer was behind or the sink failed",
            self.access_log_dropped.clone(),
        );
    }
}
