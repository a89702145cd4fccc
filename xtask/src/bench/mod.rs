//! `cargo xtask bench`: load balancer benchmarks in network namespaces, following
//! `/work/shared/reference/benchmark-method.md` (topology, CPU placement, interleaved rounds,
//! medians, ratios to the "direct" routing reference).
mod churn;
mod lab;
mod sync;
mod tcp;

use clap::{Args, Subcommand, ValueEnum};

/// Which benchmark to run.
#[derive(Subcommand)]
pub enum BenchCmd {
    /// Plain TCP: direct routing vs mlb XDP vs mlb userspace vs HAProxy mode tcp.
    Tcp(TcpArgs),
    /// HTTP: the mlb L7 proxy vs HAProxy `mode http` (Host ACL) vs direct routing; plain
    /// HTTP/1.1, new TLS handshakes/s (ECDSA P-256) and HTTP/2 over TLS.
    Http(HttpArgs),
    /// Internal: the TLS handshake load generator `bench http` runs in the client namespace.
    #[command(hide = true)]
    TlsClient(crate::bench_http::TlsClientArgs),
    /// Marathon sync at scale: full sync time and RSS, event → dataplane latency, a burst.
    Sync(SyncArgs),
}

/// Flags of `cargo xtask bench sync`.
#[derive(Args)]
pub struct SyncArgs {
    /// Smoke test: 1,000 apps, 50 events, a burst of 100.
    #[arg(long)]
    pub quick: bool,
    /// Apps in Marathon (one service port each, 10000 upwards).
    #[arg(long, default_value_t = 10_000)]
    pub apps: usize,
    /// Tasks per app.
    #[arg(long, default_value_t = 10)]
    pub tasks: usize,
    /// Every n-th app is plain TCP (an L4 service); the others are HTTP vhosts. 0: none.
    #[arg(long, default_value_t = 10)]
    pub tcp_every: usize,
    /// Single task events measured one after the other.
    #[arg(long, default_value_t = 200)]
    pub events: usize,
    /// Tasks killed at once in the burst (0: no burst).
    #[arg(long, default_value_t = 1_000)]
    pub burst: usize,
    /// The simulator's pause between task state changes (killing → killed, staging → running).
    #[arg(long, default_value_t = 20)]
    pub step_delay_ms: u64,
    /// Extra flag for `mlb run` (repeatable), e.g. `--mlb-arg=--maglev-table-size=1009`.
    #[arg(long, allow_hyphen_values = true)]
    pub mlb_arg: Vec<String>,
}

/// Flags of `cargo xtask bench http`.
#[derive(Args)]
pub struct HttpArgs {
    /// Smoke test of the harness: 1 round of 3 s runs.
    #[arg(long)]
    pub quick: bool,
    /// Rounds (each runs every case once, interleaved); the table shows medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

/// Flags of `cargo xtask bench tcp`.
#[derive(Args)]
pub struct TcpArgs {
    /// Smoke test of the harness: 1 round of 3 s runs.
    #[arg(long)]
    pub quick: bool,
    /// Rounds (each runs every case once, interleaved); the table shows medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// The HTTP service of the load balancers uses be1 only (as direct does) instead of be1
    /// and be2.
    #[arg(long)]
    pub single_backend: bool,
    /// Sustained churn instead of the standard metrics: this many 10-s windows of
    /// `Connection: close` per load shape (32 and 1,000 connections), one round, client ports
    /// widened; per window new conn/s, LB CPU and the XDP counters.
    #[arg(long, value_name = "WINDOWS")]
    pub churn: Option<u32>,
    /// Cases to run (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Case::Direct, Case::Xdp, Case::Userspace, Case::Haproxy])]
    pub cases: Vec<Case>,
}

/// One way of getting the client's traffic to the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Case {
    /// Kernel routing in lb, no load balancer: the reference.
    Direct,
    /// mlb with the XDP dataplane.
    Xdp,
    /// mlb with the userspace (tokio) dataplane.
    Userspace,
    /// HAProxy 2.6 `mode tcp`, `nbthread 1`, `balance roundrobin`.
    Haproxy,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::Direct => "direct (routing only)",
            Case::Xdp => "mlb XDP",
            Case::Userspace => "mlb userspace",
            Case::Haproxy => "HAProxy mode tcp",
        }
    }
}

/// Runs a benchmark.
pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Tcp(args) => tcp::run(&args),
        BenchCmd::Sync(args) => sync::run(&args),
        BenchCmd::TlsClient(args) => crate::bench_http::tls_client(&args),
        BenchCmd::Http(args) => {
            crate::setup::run(crate::setup::BENCH_PACKAGES)?;
            crate::cargo(&[
                "build",
                "--release",
                "--package",
                "mlb-userspace",
                "--example",
                "l7_bench_proxy",
            ])?;
            // The TLS handshake client runs from the release build (rustls and ring's C at -O0
            // would make the client, not the load balancer, the limit).
            crate::cargo(&["build", "--release", "--package", "xtask"])?;
            let release = tcp::target_dir().join("release");
            crate::bench_http::run(
                &release.join("examples/l7_bench_proxy"),
                &release.join("xtask"),
                &args,
            )
        }
    }
}

/// Median of the values (mean of the middle two for an even count).
fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
