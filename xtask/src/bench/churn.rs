//! `cargo xtask bench tcp --churn`: sustained connection churn. Per case, `Connection: close`
//! load at full rate for a number of 10-s windows, first from 32 connections, then from 1,000
//! concurrent ones, with the client's port range widened (16384–65000, as from many clients):
//! each window reports new connections/s, the LB's CPU, and what the XDP datapath's counters did
//! meanwhile, so a collapse after the first seconds shows, and its reason.
use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::{Context as _, Result};

use super::{
    Case,
    lab::{self, NS_CLI, NS_LB},
    tcp::{cpu_times, wrk},
};

/// Seconds per window.
pub const WINDOW_SECS: u32 = 10;
/// Concurrent connections of the two load shapes.
const SHAPES: [u32; 2] = [32, 1000];
/// XDP counters shown beside each window (deltas).
const COUNTERS: [&str; 5] = [
    "flow_new",
    "snat_port_collision",
    "snat_port_reclaimed",
    "drop_snat_exhausted",
    "pass_tcp_not_syn",
];

/// One window of one load shape.
pub struct Window {
    conns: u32,
    index: u32,
    conn_per_s: Option<f64>,
    cpu1_busy_pct: Option<f64>,
    /// Deltas of [`COUNTERS`] (empty when the case has no XDP datapath).
    counters: BTreeMap<String, u64>,
}

impl Window {
    pub fn conn_per_s(&self) -> Option<f64> {
        self.conn_per_s
    }
}

/// The client's ephemeral ports: wide, so its own old connections do not limit it.
pub fn widen_client_ports() -> Result<()> {
    lab::ns_run(
        NS_CLI,
        &["sysctl", "-qw", "net.ipv4.ip_local_port_range=16384 65000"],
    )
    .map(drop)
    .context("widening the client's port range")
}

/// Runs every shape for `windows` windows against `url`.
pub fn measure(url: &str, windows: u32, problems: &mut Vec<String>) -> Vec<Window> {
    let mut out = Vec::new();
    for conns in SHAPES {
        for index in 1..=windows {
            let cpu = cpu_times(1);
            let before = xdp_counters();
            let conn_per_s = match wrk(url, WINDOW_SECS, conns, true) {
                Ok(r) => Some(r.rps),
                Err(e) => {
                    problems.push(format!("churn c{conns} window {index}: {e:#}"));
                    None
                }
            };
            let cpu1_busy_pct = cpu.zip(cpu_times(1)).and_then(|(a, b)| {
                let total = b.0.saturating_sub(a.0);
                (total > 0).then(|| 100.0 * b.1.saturating_sub(a.1) as f64 / total as f64)
            });
            let counters = match (before, xdp_counters()) {
                (Some(a), Some(b)) => COUNTERS
                    .iter()
                    .map(|c| {
                        let d = b
                            .get(*c)
                            .unwrap_or(&0)
                            .saturating_sub(*a.get(*c).unwrap_or(&0));
                        ((*c).to_owned(), d)
                    })
                    .collect(),
                _ => BTreeMap::new(),
            };
            out.push(Window {
                conns,
                index,
                conn_per_s,
                cpu1_busy_pct,
                counters,
            });
        }
    }
    out
}

/// The XDP program's counters from mlb's admin API (`None`: no mlb XDP answering).
fn xdp_counters() -> Option<BTreeMap<String, u64>> {
    let body = lab::ns_run(
        NS_LB,
        &["curl", "-sf", "-m", "2", "http://127.0.0.1:19090/_mlb/xdp"],
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let counters = v.get("counters")?.as_object()?;
    Some(
        counters
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
            .collect(),
    )
}

/// The per-window table of every case, with ratios to direct in the same window, and each
/// case's mean over the whole run.
pub fn report(results: &[(Case, Vec<Window>)]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## Sustained churn\n\nwrk -t1 `Connection: close`, {WINDOW_SECS}-s windows, client ports \
         16384–65000, one client address. Counters: the XDP program's, over the window.\n\n\
         | case | conns | window | new conn/s (× direct) | cpu1 busy % | {} |\n|---|---|---|---|---|{}",
        COUNTERS.join(" | "),
        "---|".repeat(COUNTERS.len())
    );
    let direct = results.iter().find(|(c, _)| *c == Case::Direct);
    let direct_rate = |conns: u32, index: u32| {
        direct?
            .1
            .iter()
            .find(|w| w.conns == conns && w.index == index)?
            .conn_per_s
    };
    for (case, windows) in results {
        for w in windows {
            let rate = match (w.conn_per_s, direct_rate(w.conns, w.index)) {
                (Some(v), Some(d)) if d > 0.0 => format!("{v:.0} ({:.2})", v / d),
                (Some(v), _) => format!("{v:.0}"),
                (None, _) => "failed".to_owned(),
            };
            let cpu = w
                .cpu1_busy_pct
                .map_or("—".to_owned(), |c| format!("{c:.0}"));
            let counters: Vec<String> = COUNTERS
                .iter()
                .map(|c| w.counters.get(*c).map_or("—".to_owned(), u64::to_string))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {rate} | {cpu} | {} |",
                case.label(),
                w.conns,
                w.index,
                counters.join(" | ")
            );
        }
    }
    let _ = writeln!(s, "\nWhole run (mean of the windows), × direct:\n");
    for (case, windows) in results {
        for conns in SHAPES {
            let mean = |ws: &[Window]| {
                let v: Vec<f64> = ws
                    .iter()
                    .filter(|w| w.conns == conns)
                    .filter_map(|w| w.conn_per_s)
                    .collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            let m = mean(windows);
            let d = direct.and_then(|(_, ws)| mean(ws));
            let ratio = m
                .zip(d)
                .map_or("—".to_owned(), |(m, d)| format!("{:.2}", m / d));
            let m = m.map_or("failed".to_owned(), |m| format!("{m:.0}"));
            let _ = writeln!(s, "- {} c{conns}: {m} conn/s ({ratio})", case.label());
        }
    }
    s
}
