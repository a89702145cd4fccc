//! The report of `cargo xtask bench http --proxy-b PATH`: two builds of the proxy and HAProxy,
//! interleaved in every round. A load balancer's figures move with the machine's load from one
//! minute to the next, so each round's figures are shown × HAProxy *of that round*, beside the
//! load, and then as medians of those per-round ratios.
use std::fmt::Write as _;

use anyhow::Result;

use super::{
    http::{AB_CASES, Case, Sample},
    stats::median,
};

/// The per-round table, the medians of the ratios and (with `--profile`) the profiles.
pub fn report(results: &[Vec<Sample>], method: &str) -> Result<String> {
    let haproxy = &results[slot(Case::Haproxy)];
    let mut o = String::new();
    writeln!(o, "# mlb bench http --proxy-b (A/B)\n\n{method}")?;
    writeln!(
        o,
        "| case | round | load1 | keep-alive req/s (× H) | p99 ms (× H) | new conn/s (× H) \
         | TLS handshakes/s (× H) | h2 req/s (× H) | h2 p99 ms (× H) | LB CPU % h2 \
         | backend accepts in h2 | TLS keep-alive req/s (× H) |"
    )?;
    writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|")?;
    for (case, samples) in AB_CASES.iter().zip(results) {
        for (round, (s, h)) in samples.iter().zip(haproxy).enumerate() {
            writeln!(o, "{}", round_row(*case, round + 1, s, h))?;
        }
    }
    writeln!(o, "\n{}", median_ratios(results)?)?;
    for (case, samples) in AB_CASES.iter().zip(results) {
        for (round, s) in samples.iter().enumerate() {
            for (run, lines) in [("h2", &s.h2_profile), ("TLS keep-alive", &s.tls_ka_profile)] {
                if !lines.is_empty() {
                    writeln!(
                        o,
                        "\n{} round {}, {run}: hottest symbols (self)\n\n```\n{}\n```",
                        case.name(),
                        round + 1,
                        lines.join("\n")
                    )?;
                }
            }
        }
    }
    Ok(o)
}

/// One round of one case, × HAProxy of the same round.
fn round_row(case: Case, round: usize, s: &Sample, h: &Sample) -> String {
    let x = |v: f64, r: f64, digits: usize| format!("{v:.digits$} ({:.2})", v / r);
    let opt = |v: Option<f64>, r: Option<f64>, digits: usize| match (v, r) {
        (Some(v), Some(r)) => x(v, r, digits),
        _ => "n/a".to_owned(),
    };
    format!(
        "| {} | {round} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        case.name(),
        s.load1,
        x(s.rps, h.rps, 0),
        x(s.p99_ms, h.p99_ms, 3),
        x(s.conn_rps, h.conn_rps, 0),
        opt(s.tls_hs_rps, h.tls_hs_rps, 0),
        opt(s.h2_rps, h.h2_rps, 0),
        opt(s.h2_p99_ms, h.h2_p99_ms, 3),
        s.h2_cpu_pct.map_or("n/a".to_owned(), |v| format!("{v:.0}")),
        s.h2_backend_accepts
            .map_or("n/a".to_owned(), |v| v.to_string()),
        opt(s.tls_ka_rps, h.tls_ka_rps, 0),
    )
}

/// Each proxy build's median over the rounds of its per-round ratio to HAProxy.
fn median_ratios(results: &[Vec<Sample>]) -> Result<String> {
    let haproxy = &results[slot(Case::Haproxy)];
    let mut o = String::new();
    writeln!(
        o,
        "| case | keep-alive req/s × H | new conn/s × H | TLS handshakes/s × H | h2 req/s × H \
         | h2 p99 × H | TLS keep-alive req/s × H |"
    )?;
    writeln!(o, "|---|---|---|---|---|---|---|")?;
    for case in [Case::Mlb, Case::MlbB] {
        let samples = &results[slot(case)];
        let ratio = |metric: fn(&Sample) -> Option<f64>| {
            let ratios: Option<Vec<f64>> = samples
                .iter()
                .zip(haproxy)
                .map(|(s, h)| Some(metric(s)? / metric(h)?))
                .collect();
            ratios
                .and_then(|r| median(&r))
                .map_or("n/a".to_owned(), |m| format!("{m:.2}"))
        };
        writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {} |",
            case.name(),
            ratio(|s| Some(s.rps)),
            ratio(|s| Some(s.conn_rps)),
            ratio(|s| s.tls_hs_rps),
            ratio(|s| s.h2_rps),
            ratio(|s| s.h2_p99_ms),
            ratio(|s| s.tls_ka_rps),
        )?;
    }
    Ok(o)
}

/// Where a case's samples are in the results.
fn slot(case: Case) -> usize {
    AB_CASES
        .iter()
        .position(|&c| c == case)
        .expect("AB_CASES holds every case an A/B report names")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rps: f64, h2_rps: Option<f64>) -> Sample {
        Sample {
            rps,
            h2_rps,
            ..Sample::default()
        }
    }

    #[test]
    fn ratios_are_to_haproxy_of_the_same_round() {
        let results = vec![
            vec![sample(100.0, Some(10.0)), sample(200.0, Some(20.0))],
            vec![sample(50.0, Some(12.0)), sample(140.0, Some(30.0))],
            vec![sample(100.0, None), sample(100.0, None)],
        ];
        let table = median_ratios(&results).unwrap();
        let row = |case: Case| {
            table
                .lines()
                .find(|l| l.starts_with(&format!("| {} |", case.name())))
                .unwrap()
                .to_owned()
        };
        // Rounds: 0.5 and 0.7 → 0.6; h2 1.2 and 1.5 → 1.35.
        assert!(
            row(Case::Mlb).starts_with("| mlb L7 proxy | 0.60 |"),
            "{table}"
        );
        assert!(row(Case::Mlb).contains("| 1.35 |"), "{table}");
        // No h2 in a round: no ratio rather than a wrong one.
        assert!(row(Case::MlbB).starts_with("| mlb L7 proxy, build B (--proxy-b) | 0.75 |"));
        assert_eq!(row(Case::MlbB).matches("n/a").count(), 4, "{table}");
    }
}
