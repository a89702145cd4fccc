//! `cargo xtask bench tcp --churn`: sustained connection churn. In each round, for each load
//! shape (32, then 1,000 concurrent connections) every case runs in turn (interleaved) for a
//! number of 10-s windows of `Connection: close` load at full rate, from two client addresses whose port
//! ranges are widened to 16384–65000 (as traffic from many clients, which does not keep hitting
//! its own old 5-tuples). Each window reports new connections/s, the LB's CPU, the clients' SYN
//! retransmissions (a stalled handshake costs a 1-s retransmit) and what the XDP datapath's
//! counters did meanwhile, so a collapse after the first seconds shows, and its reason.
use std::{collections::BTreeMap, fmt::Write as _, thread};

use anyhow::{Context as _, Result, anyhow};

use super::{
    Case, cpu,
    lab::{self, Lab, NS_BE, NS_CLI, NS_CLI2, NS_LB},
    tcp::{HTTP_PORT, PAGE, Setup, with_case},
    wrk::{WrkLoad, wrk},
};

/// Seconds per window.
const WINDOW_SECS: u32 = 10;
/// Concurrent connections of the two load shapes (split between the two client addresses).
const SHAPES: [u32; 2] = [32, 1000];
/// The client namespaces, one address each.
const CLIENTS: [&str; 2] = [NS_CLI, NS_CLI2];
/// XDP counters shown beside each window (deltas): what a new flow cost, and the TCP states
/// its flows reached.
const COUNTERS: [&str; 11] = [
    "flow_new",
    "snat_port_collision",
    "snat_port_time_wait",
    "snat_port_reclaimed",
    "drop_snat_exhausted",
    "flow_reopened",
    "flow_orphan",
    "pass_tcp_not_syn",
    "ct_established",
    "ct_time_wait",
    "ct_closed",
];

/// One window of one case and load shape.
struct Window {
    case: Case,
    conns: u32,
    /// The round (1-based): every round runs every shape and case once, so a case is compared
    /// with direct measured minutes, not a quarter of an hour, apart.
    round: u32,
    index: u32,
    conn_per_s: Option<f64>,
    cpu1_busy_pct: Option<f64>,
    /// The machine's 1-min load average at the window's end (the CPUs are shared).
    load1: Option<f64>,
    /// SYN retransmissions of both clients over the window.
    syn_retrans: Option<u64>,
    /// SYNs the backends refused because a TIME_WAIT socket of the same 4-tuple had seen a
    /// newer TCP timestamp (`PAWSTimewait`), over the window.
    paws_timewait: Option<u64>,
    /// Deltas of [`COUNTERS`] (empty when the case has no XDP datapath).
    counters: BTreeMap<String, u64>,
    /// Entries in the XDP connection-tracking table left after the sweeper's last pass before the
    /// window's end (both flow halves, and reply halves kept for the backends' TIME_WAIT).
    ct_entries: Option<u64>,
}

/// Runs `rounds` rounds of every shape through every case for `windows` windows; the report.
pub fn run(
    lab: &mut Lab,
    cases: &[Case],
    setup: &Setup,
    windows: u32,
    rounds: u32,
) -> Result<String> {
    for ns in CLIENTS {
        lab::ns_run(
            ns,
            &["sysctl", "-qw", "net.ipv4.ip_local_port_range=16384 65000"],
        )
        .context("widening the clients' port range")?;
    }
    let mut results = Vec::new();
    let mut problems = Vec::new();
    for round in 1..=rounds {
        for conns in SHAPES {
            for &case in cases {
                eprintln!(
                    "bench tcp --churn: round {round}, {} c{conns}",
                    case.label()
                );
                let at = (case, conns, round);
                let outcome = with_case(lab, case, setup, |_, target| {
                    let url = format!("http://{target}:{HTTP_PORT}/{PAGE}");
                    (1..=windows)
                        .map(|index| window(at, index, &url, &mut problems))
                        .collect::<Vec<_>>()
                });
                match outcome {
                    Ok(w) => results.extend(w),
                    Err(e) => {
                        problems.push(format!("{} c{conns} round {round}: {e:#}", case.label()));
                    }
                }
            }
        }
    }
    Ok(report(&results, windows, rounds, &problems))
}

/// Measures one window.
fn window(
    (case, conns, round): (Case, u32, u32),
    index: u32,
    url: &str,
    problems: &mut Vec<String>,
) -> Window {
    let cpu_before = cpu::cpu_jiffies(1);
    let counters_before = xdp_snapshot().map(|(c, _)| c);
    let syn_before = netstat_sum(&CLIENTS, "TCPSynRetrans");
    let paws_before = netstat_sum(&NS_BE, "PAWSTimewait");
    let conn_per_s = match load(url, conns) {
        Ok(rps) => Some(rps),
        Err(e) => {
            problems.push(format!(
                "{} c{conns} round {round} window {index}: {e:#}",
                case.label()
            ));
            None
        }
    };
    let cpu1_busy_pct = cpu_before.zip(cpu::cpu_jiffies(1)).and_then(|(a, b)| {
        let total = b.0.saturating_sub(a.0);
        (total > 0).then(|| 100.0 * b.1.saturating_sub(a.1) as f64 / total as f64)
    });
    let after = xdp_snapshot();
    let ct_entries = after.as_ref().and_then(|(_, entries)| *entries);
    let counters = match (counters_before, after.map(|(c, _)| c)) {
        (Some(a), Some(b)) => COUNTERS
            .iter()
            .map(|&c| {
                let get = |m: &BTreeMap<String, u64>| m.get(c).copied().unwrap_or(0);
                (c.to_owned(), get(&b).saturating_sub(get(&a)))
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    Window {
        case,
        conns,
        round,
        index,
        conn_per_s,
        cpu1_busy_pct,
        load1: load_average(),
        syn_retrans: delta(syn_before, netstat_sum(&CLIENTS, "TCPSynRetrans")),
        paws_timewait: delta(paws_before, netstat_sum(&NS_BE, "PAWSTimewait")),
        counters,
        ct_entries,
    }
}

/// `conns` connections split over the two clients for one window; their summed rate.
fn load(url: &str, conns: u32) -> Result<f64> {
    let runs: Vec<Result<f64>> = thread::scope(|s| {
        let handles: Vec<_> = CLIENTS
            .iter()
            .map(|&ns| {
                s.spawn(move || {
                    let load = WrkLoad {
                        connections: conns / CLIENTS.len() as u32,
                        ns,
                        ..WrkLoad::standard(url, WINDOW_SECS, true)
                    };
                    wrk(&load).map(|r| r.rps)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("wrk thread panicked")))
            })
            .collect()
    });
    runs.into_iter().sum()
}

/// The XDP program's counters by name, and the conntrack table's entries.
pub(super) type XdpSnapshot = (BTreeMap<String, u64>, Option<u64>);

/// [`XdpSnapshot`] from mlb's admin API (`None`: no mlb XDP answering).
pub(super) fn xdp_snapshot() -> Option<XdpSnapshot> {
    let url = "http://127.0.0.1:19090/_mlb/xdp";
    let body = lab::ns_run(NS_LB, &["curl", "-sf", "-m", "2", url]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let counters = v.get("counters")?.as_object()?;
    let counters = counters
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
        .collect();
    Some((counters, v.get("conntrack_entries")?.as_u64()))
}

fn delta(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    before.zip(after).map(|(a, b)| b.saturating_sub(a))
}

/// A `TcpExt` counter so far, summed over namespaces.
fn netstat_sum(namespaces: &[&str], name: &str) -> Option<u64> {
    namespaces
        .iter()
        .map(|ns| {
            let text = lab::ns_run(ns, &["cat", "/proc/net/netstat"]).ok()?;
            netstat_value(&text, "TcpExt", name)
        })
        .sum()
}

/// One counter of `/proc/net/netstat` (a header line of names, then one of values, per group).
fn netstat_value(text: &str, group: &str, name: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let names = lines.next()?.split_whitespace().skip(1);
    let values = lines.next()?.split_whitespace().skip(1);
    names
        .zip(values)
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
}

pub(super) fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// The per-window table of every case, with ratios to direct in the same window, and each
/// case's mean over the whole run.
fn report(results: &[Window], windows: u32, rounds: u32, problems: &[String]) -> String {
    let kernel = lab::run(&["uname", "-r"]).unwrap_or_default();
    let mut s = format!(
        "# mlb bench tcp --churn\n\nKernel {}. {rounds} round(s); in each, per load shape, every \
         case in turn (interleaved), {windows} windows of {WINDOW_SECS} s each, the load balancer \
         started once per case, shape and round. Load: `wrk -t1 -H 'Connection: close'` from two client addresses at once (half \
         the connections each), client ports 16384–65000. new conn/s: both clients' requests/s \
         (one connection each), × direct in the same round and window; cpu1 busy %: the LB's CPU; load1: \
         the machine's load average (CPUs shared with other work: compare ratios); syn rtx: the \
         clients' SYN retransmissions; be paws tw: SYNs the backends refused over a TIME_WAIT \
         socket with a newer timestamp (PAWSTimewait); ct entries: the XDP conntrack table's entries \
         left after the sweeper's last pass (every 2 s) before the window's end; the other columns are \
         the XDP program's counters over the window.\n\n\
         | case | conns | round | window | new conn/s (× direct) | cpu1 busy % | load1 | syn rtx | be paws tw | ct entries | {} |\n\
         |---|---|---|---|---|---|---|---|---|---|{}\n",
        kernel.trim(),
        COUNTERS.join(" | "),
        "---|".repeat(COUNTERS.len())
    );
    let direct = |of: &Window| {
        results
            .iter()
            .find(|w| {
                w.case == Case::Direct
                    && (w.conns, w.round, w.index) == (of.conns, of.round, of.index)
            })?
            .conn_per_s
    };
    for w in results {
        let _ = writeln!(s, "{}", row(w, direct(w)));
    }
    let _ = writeln!(s, "\nWhole run (mean of the windows), × direct:\n");
    let mut cases: Vec<Case> = results.iter().map(|w| w.case).collect();
    cases.sort();
    cases.dedup();
    for conns in SHAPES {
        let d = mean(results, Case::Direct, conns);
        for &case in &cases {
            let m = mean(results, case, conns);
            let ratio = m
                .zip(d)
                .map_or("—".to_owned(), |(m, d)| format!("{:.2}", m / d));
            let m = m.map_or("failed".to_owned(), |m| format!("{m:.0}"));
            let _ = writeln!(s, "- {} c{conns}: {m} conn/s ({ratio})", case.label());
        }
    }
    if !problems.is_empty() {
        let _ = writeln!(s, "\nProblems:\n- {}", problems.join("\n- "));
    }
    s
}

/// A window's table row; `direct` is direct's rate in the same window.
fn row(w: &Window, direct: Option<f64>) -> String {
    let rate = match (w.conn_per_s, direct) {
        (Some(v), Some(d)) if d > 0.0 => format!("{v:.0} ({:.2})", v / d),
        (Some(v), _) => format!("{v:.0}"),
        (None, _) => "failed".to_owned(),
    };
    let opt = |v: Option<String>| v.unwrap_or_else(|| "—".to_owned());
    let counters: Vec<String> = COUNTERS
        .iter()
        .map(|c| opt(w.counters.get(*c).map(u64::to_string)))
        .collect();
    format!(
        "| {} | {} | {} | {} | {rate} | {} | {} | {} | {} | {} | {} |",
        w.case.label(),
        w.conns,
        w.round,
        w.index,
        opt(w.cpu1_busy_pct.map(|c| format!("{c:.0}"))),
        opt(w.load1.map(|l| format!("{l:.1}"))),
        opt(w.syn_retrans.map(|n| n.to_string())),
        opt(w.paws_timewait.map(|n| n.to_string())),
        opt(w.ct_entries.map(|n| n.to_string())),
        counters.join(" | ")
    )
}

/// The mean rate of a case's windows of one shape.
fn mean(results: &[Window], case: Case, conns: u32) -> Option<f64> {
    let v: Vec<f64> = results
        .iter()
        .filter(|w| w.case == case && w.conns == conns)
        .filter_map(|w| w.conn_per_s)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_netstat_counter() {
        let text = "TcpExt: SyncookiesSent TCPSynRetrans TWKilled\nTcpExt: 0 17 3\n\
                    IpExt: InNoRoutes TCPSynRetrans\nIpExt: 5 9\n";
        assert_eq!(netstat_value(text, "TcpExt", "TCPSynRetrans"), Some(17));
        assert_eq!(netstat_value(text, "IpExt", "InNoRoutes"), Some(5));
        assert_eq!(netstat_value(text, "TcpExt", "Missing"), None);
    }

    fn win(case: Case, index: u32, rate: f64) -> Window {
        Window {
            case,
            conns: 32,
            round: 1,
            index,
            conn_per_s: Some(rate),
            cpu1_busy_pct: None,
            load1: None,
            syn_retrans: None,
            paws_timewait: None,
            counters: BTreeMap::new(),
            ct_entries: None,
        }
    }

    #[test]
    fn every_window_is_compared_with_direct_in_the_same_window() {
        let results = [
            win(Case::Direct, 1, 1000.0),
            win(Case::Direct, 2, 2000.0),
            win(Case::Xdp, 1, 900.0),
            win(Case::Xdp, 2, 500.0),
        ];
        let r = report(&results, 2, 1, &[]);
        assert!(r.contains("| mlb XDP | 32 | 1 | 1 | 900 (0.90) |"), "{r}");
        assert!(r.contains("| mlb XDP | 32 | 1 | 2 | 500 (0.25) |"), "{r}");
        assert!(r.contains("- mlb XDP c32: 700 conn/s (0.47)"), "{r}");
    }
}
