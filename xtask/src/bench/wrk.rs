//! The HTTP/1.1 load generator of `bench tcp` and `bench http`: `wrk -t1 -c32 --latency` in
//! a client namespace on cpu0 (the client's CPU), bounded by `timeout`.
use anyhow::{Result, bail};

use super::{CONNECTIONS, lab};

/// One wrk run.
pub struct WrkLoad<'a> {
    pub url: &'a str,
    pub secs: u32,
    /// Concurrent connections (`-c`).
    pub connections: u32,
    /// The client namespace wrk runs in (its address is the client's).
    pub ns: &'a str,
    /// Every request with `Connection: close` (a new TCP connection each), else keep-alive.
    pub close: bool,
    /// A `Host` header (the virtual host an L7 load balancer routes on).
    pub host: Option<&'a str>,
    /// Any non-2xx/3xx response or socket error fails the run; otherwise up to 1 % non-2xx/3xx
    /// responses are tolerated and socket errors ignored.
    pub strict: bool,
}

/// What wrk reported.
#[derive(Debug, PartialEq)]
pub struct WrkResult {
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub requests: u64,
    /// Responses other than 2xx/3xx.
    pub bad_responses: u64,
    /// Connect, read, write errors and timeouts.
    pub socket_errors: u64,
}

/// Runs wrk; fails when it fails, completes no request, or sees more errors than `load` allows.
pub fn wrk(load: &WrkLoad) -> Result<WrkResult> {
    let limit = (load.secs + 20).to_string();
    let duration = format!("{}s", load.secs);
    let connections = format!("-c{}", load.connections);
    let host = load.host.map(|h| format!("Host: {h}"));
    let mut args = vec!["timeout", &limit, "taskset", "-c", "0", "wrk", "-t1"];
    args.extend([connections.as_str(), "-d", &duration, "--latency"]);
    if let Some(host) = &host {
        args.extend(["-H", host]);
    }
    if load.close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(load.url);
    let out = lab::ns_run(load.ns, &args)?;
    let result = parse(&out)?;
    result.check_errors(load.strict)?;
    Ok(result)
}

impl WrkLoad<'_> {
    /// The standard load: [`CONNECTIONS`] connections from the client namespace, no `Host`,
    /// errors tolerated.
    pub fn standard(url: &str, secs: u32, close: bool) -> WrkLoad<'_> {
        WrkLoad {
            url,
            secs,
            connections: CONNECTIONS,
            ns: lab::NS_CLI,
            close,
            host: None,
            strict: false,
        }
    }
}

impl WrkResult {
    fn check_errors(&self, strict: bool) -> Result<()> {
        let (bad, requests) = (self.bad_responses, self.requests);
        if strict && (bad > 0 || self.socket_errors > 0) {
            bail!(
                "{bad} of {requests} responses were not 2xx/3xx, {} socket errors",
                self.socket_errors
            );
        }
        if bad * 100 > requests {
            bail!("{bad} of {requests} responses were not 2xx/3xx");
        }
        Ok(())
    }
}

fn parse(out: &str) -> Result<WrkResult> {
    let (mut rps, mut requests) = (None, None);
    let (mut p50_ms, mut p99_ms) = (None, None);
    let (mut bad_responses, mut socket_errors) = (0, 0);
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => rps = v.parse::<f64>().ok(),
            ["50%", v] => p50_ms = parse_duration_ms(v),
            ["99%", v] => p99_ms = parse_duration_ms(v),
            [n, "requests", "in", ..] => requests = n.parse::<u64>().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => bad_responses = n.parse().unwrap_or(0),
            ["Socket", "errors:", counts @ ..] => socket_errors = sum_counts(counts),
            _ => {}
        }
    }
    let (Some(rps), Some(requests)) = (rps, requests) else {
        bail!("unexpected wrk output: {}", out.trim());
    };
    if requests == 0 {
        bail!("no request completed");
    }
    Ok(WrkResult {
        rps,
        p50_ms,
        p99_ms,
        requests,
        bad_responses,
        socket_errors,
    })
}

/// The sum of `connect 0, read 5, write 0, timeout 2`.
fn sum_counts(words: &[&str]) -> u64 {
    words
        .iter()
        .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
        .sum()
}

/// `123.45us`, `1.23ms`, `2.00s`, `1.00m` → milliseconds.
fn parse_duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "Running 3s test @ http://198.18.1.2:80/small.html\n\
      1 threads and 32 connections\n\
      Latency Distribution\n     50%  312.00us\n     75%  400.00us\n     90%    1.10ms\n     99%    2.50ms\n\
      30000 requests in 3.00s, 20.00MB read\n\
    Requests/sec:  10000.50\nTransfer/sec:      6.67MB\n";

    #[test]
    fn parses_wrk_output() {
        let r = parse(OUT).unwrap();
        assert_eq!(r.rps, 10000.5);
        assert_eq!(r.p50_ms, Some(0.312));
        assert_eq!(r.p99_ms, Some(2.5));
        assert_eq!(r.requests, 30000);
        assert_eq!((r.bad_responses, r.socket_errors), (0, 0));
        assert!(r.check_errors(true).is_ok());
        assert!(parse("unable to connect").is_err());
        assert!(parse(&OUT.replace("30000 requests", "0 requests")).is_err());
    }

    #[test]
    fn errors_fail_a_strict_run_and_many_errors_any_run() {
        let few = format!("{OUT}  Non-2xx or 3xx responses: 300\n");
        let r = parse(&few).unwrap();
        assert_eq!(r.bad_responses, 300);
        assert!(r.check_errors(false).is_ok());
        assert!(r.check_errors(true).is_err());
        let many = parse(&format!("{OUT}  Non-2xx or 3xx responses: 301\n")).unwrap();
        assert!(many.check_errors(false).is_err());
        let sockets = format!("{OUT}  Socket errors: connect 0, read 5, write 0, timeout 2\n");
        let r = parse(&sockets).unwrap();
        assert_eq!(r.socket_errors, 7);
        assert!(r.check_errors(false).is_ok());
        assert!(r.check_errors(true).is_err());
    }

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration_ms("500.00us"), Some(0.5));
        assert_eq!(parse_duration_ms("1.50s"), Some(1500.0));
        assert_eq!(parse_duration_ms("2.00m"), Some(120_000.0));
        assert_eq!(parse_duration_ms("3.00h"), None);
    }
}
