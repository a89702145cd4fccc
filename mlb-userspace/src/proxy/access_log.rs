//! Access logs (`--access-log`): one line per HTTP request (HAProxy's httplog field order) and
//! per TCP connection of the userspace dataplane (HAProxy's tcplog order), or JSON, to stdout, a
//! file or syslog; off by default.
//!
//! The proxy never waits for the log: a line is formatted on the request's task and handed to
//! a bounded channel; a writer task drains it. When the channel is full (the sink is slower
//! than the traffic) the line is dropped and counted (`mlb_access_log_dropped_total`).
//! `--access-log-sample N` keeps one request in N for high rates.
use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use serde_json::json;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt as _},
    runtime::Handle,
    sync::mpsc,
};
use tracing::warn;

use crate::{stats::live::live, timefmt::Civil};

/// Lines waiting for the writer; beyond this they are dropped.
const QUEUE: usize = 8192;

/// Where access logs go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    /// Appended to this file.
    File(PathBuf),
    /// The local syslog socket (`/dev/log`), facility local0, severity info.
    Syslog,
}

impl std::str::FromStr for AccessLogTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" => Ok(AccessLogTarget::Stdout),
            "syslog" => Ok(AccessLogTarget::Syslog),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(AccessLogTarget::File(path.into())),
                _ => Err(format!("{s:?}: expected stdout, file:PATH or syslog")),
            },
        }
    }
}

/// The line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessLogFormat {
    /// HAProxy's httplog fields, in its order.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `--access-log*`, as the proxy takes them.
#[derive(Clone, Debug, Default)]
pub struct AccessLogConfig {
    /// `None`: no access log.
    pub target: Option<AccessLogTarget>,
    pub format: AccessLogFormat,
    /// Log one request in this many (0 and 1: every request).
    pub sample: u64,
}

/// A loggable event: its line in each format.
pub(crate) trait LogLine {
    fn text(&self) -> String;
    fn json(&self) -> String;
}

/// One request, as logged.
pub(crate) struct Entry<'a> {
    pub client: SocketAddr,
    pub accepted: SystemTime,
    pub frontend: &'a str,
    /// `<NOSRV>` when no backend was chosen.
    pub backend: &'a str,
    pub server: &'a str,
    /// Until the response headers were ready.
    pub elapsed: Duration,
    pub status: u16,
    /// The response body's declared length, when known.
    pub bytes: Option<u64>,
    pub method: &'a str,
    pub uri: &'a str,
    pub version: &'a str,
}

impl LogLine for Entry<'_> {
    /// HAProxy's httplog order: client, date, frontend, backend/server, timers
    /// (Tq/Tw/Tc/Tr/Ta; mlb measures the last), status, bytes, cookies, termination state,
    /// connection counts, queues, request line.
    fn text(&self) -> String {
        let ms = self.elapsed.as_millis();
        let mut line = String::with_capacity(160);
        let _ = write!(
            line,
            "{} [{}] {} {}/{} 0/0/-1/{ms}/{ms} {} {} - - ---- 0/0/0/0/0 0/0 \"{} {} {}\"",
            self.client,
            Civil::of(self.accepted).haproxy(),
            self.frontend,
            self.backend,
            self.server,
            self.status,
            self.bytes.unwrap_or(0),
            self.method,
            self.uri.replace(['"', '\n', '\r'], "%22"),
            self.version,
        );
        line
    }

    fn json(&self) -> String {
        json!({
            "client": self.client.to_string(),
            "time": Civil::of(self.accepted).iso(),
            "frontend": self.frontend,
            "backend": self.backend,
            "server": self.server,
            "duration_ms": self.elapsed.as_secs_f64() * 1000.0,
            "status": self.status,
            "bytes": self.bytes,
            "method": self.method,
            "uri": self.uri,
            "version": self.version,
        })
        .to_string()
    }
}

/// One TCP connection of the userspace dataplane, as logged once it ends.
pub(crate) struct L4Entry<'a> {
    pub client: SocketAddr,
    pub accepted: SystemTime,
    /// The service's proxy name (`<app>_<port>`): frontend and backend alike.
    pub service: &'a str,
    /// `<NOSRV>` when no backend took the connection.
    pub server: &'a str,
    /// Until the backend accepted (`None`: never).
    pub connect: Option<Duration>,
    /// Accept to close.
    pub duration: Duration,
    /// Bytes from the client, and to it.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// HAProxy's two-letter termination state: `--` closed normally, `SC` no backend
    /// reachable, `CD`/`SD` the client/server side failed while data flowed, `cD` idle timeout
    /// (or mlb stopping).
    pub termination: &'static str,
}

impl LogLine for L4Entry<'_> {
    /// HAProxy's tcplog order: client, date, frontend, backend/server, Tw/Tc/Tt, bytes read
    /// (to the client), termination state, connection counts, queues.
    fn text(&self) -> String {
        let tc = self
            .connect
            .map_or_else(|| "-1".to_owned(), |d| d.as_millis().to_string());
        format!(
            "{} [{}] {} {}/{} 0/{tc}/{} {} {} 0/0/0/0/0 0/0",
            self.client,
            Civil::of(self.accepted).haproxy(),
            self.service,
            self.service,
            self.server,
            self.duration.as_millis(),
            self.bytes_out,
            self.termination,
        )
    }

    fn json(&self) -> String {
        json!({
            "client": self.client.to_string(),
            "time": Civil::of(self.accepted).iso(),
            "mode": "tcp",
            "frontend": self.service,
            "backend": self.service,
            "server": self.server,
            "connect_ms": self.connect.map(|d| d.as_secs_f64() * 1000.0),
            "duration_ms": self.duration.as_secs_f64() * 1000.0,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "termination": self.termination,
        })
        .to_string()
    }
}

/// The sending end of the access log (the proxy and the userspace dataplane each hold one).
pub(crate) struct AccessLog {
    tx: mpsc::Sender<String>,
    format: AccessLogFormat,
    sample: u64,
    seen: AtomicU64,
}

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
#[error("--access-log {target:?}: {source}")]
pub struct AccessLogError {
    target: AccessLogTarget,
    source: std::io::Error,
}

impl AccessLog {
    /// Opens the sink and starts the writer on `handle`; `None` when logging is off.
    pub(crate) fn start(
        cfg: &AccessLogConfig,
        handle: &Handle,
    ) -> Result<Option<AccessLog>, AccessLogError> {
        let Some(target) = &cfg.target else {
            return Ok(None);
        };
        let err = |source| AccessLogError {
            target: target.clone(),
            source,
        };
        let sink = Sink::open(target).map_err(err)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        handle.spawn(sink.run(rx));
        Ok(Some(AccessLog {
            tx,
            format: cfg.format,
            sample: cfg.sample.max(1),
            seen: AtomicU64::new(0),
        }))
    }

    /// Logs `entry` if sampled; never waits.
    pub(crate) fn record(&self, entry: &impl LogLine) {
        if !self
            .seen
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(self.sample)
        {
            return;
        }
        let mut line = match self.format {
            AccessLogFormat::Text => entry.text(),
            AccessLogFormat::Json => entry.json(),
        };
        // Written whole, with its newline, in one write: the proxy's and the dataplane's
        // writers share the sink without splitting each other's lines.
        line.push('\n');
        if self.tx.try_send(line).is_err() {
            live().access_log_dropped();
        }
    }
}

/// Where the writer writes.
enum Sink {
    Stream(Box<dyn AsyncWrite + Send + Unpin>),
    Syslog(std::os::unix::net::UnixDatagram),
}

impl Sink {
    fn open(target: &AccessLogTarget) -> std::io::Result<Sink> {
        Ok(match target {
            AccessLogTarget::Stdout => Sink::Stream(Box::new(tokio::io::stdout())),
            AccessLogTarget::File(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                Sink::Stream(Box::new(tokio::fs::File::from_std(file)))
            }
            AccessLogTarget::Syslog => {
                let socket = std::os::unix::net::UnixDatagram::unbound()?;
                socket.connect("/dev/log")?;
                socket.set_nonblocking(true)?;
                Sink::Syslog(socket)
            }
        })
    }

    /// Writes lines until the proxy goes away, flushing whenever the queue is empty.
    async fn run(mut self, mut rx: mpsc::Receiver<String>) {
        let pid = std::process::id();
        while let Some(line) = rx.recv().await {
            let written = match &mut self {
                Sink::Stream(out) => {
                    let mut r = out.write_all(line.as_bytes()).await;
                    if rx.is_empty() {
                        r = r.and(out.flush().await);
                    }
                    r
                }
                // local0.info; a full socket buffer drops the line as syslog would.
                Sink::Syslog(socket) => socket
                    .send(format!("<134>mlb[{pid}]: {}", line.trim_end()).as_bytes())
                    .map(drop),
            };
            if let Err(e) = written {
                live().access_log_dropped();
                warn!("access log: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            client: "198.18.0.7:40312".parse().unwrap(),
            accepted: SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_545_805_123),
            frontend: "marathon_http_in",
            backend: "shop_web_10000",
            server: "10_0_6_25_31184",
            elapsed: Duration::from_millis(12),
            status: 200,
            bytes: Some(512),
            method: "GET",
            uri: "/cart?id=\"1\"",
            version: "HTTP/1.1",
        }
    }

    #[test]
    fn text_lines_follow_haproxys_httplog_order() {
        assert_eq!(
            entry().text(),
            "198.18.0.7:40312 [06/Dec/2026:08:30:05.123] marathon_http_in \
             shop_web_10000/10_0_6_25_31184 0/0/-1/12/12 200 512 - - ---- 0/0/0/0/0 0/0 \
             \"GET /cart?id=%221%22 HTTP/1.1\""
        );
    }

    #[test]
    fn json_lines_parse_and_carry_every_field() {
        let v: serde_json::Value = serde_json::from_str(&entry().json()).unwrap();
        assert_eq!(v["server"], "10_0_6_25_31184");
        assert_eq!(v["status"], 200);
        assert_eq!(v["uri"], "/cart?id=\"1\"");
        assert_eq!(v["time"], "2026-12-06T08:30:05.123000");
    }

    fn l4_entry(connect: Option<Duration>, server: &str) -> L4Entry<'_> {
        L4Entry {
            client: "198.18.0.7:40312".parse().unwrap(),
            accepted: SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_545_805_123),
            service: "shop_db_5432",
            server,
            connect,
            duration: Duration::from_millis(5007),
            bytes_in: 90,
            bytes_out: 212,
            termination: if connect.is_some() { "--" } else { "SC" },
        }
    }

    #[test]
    fn l4_lines_follow_haproxys_tcplog_order() {
        let served = l4_entry(Some(Duration::from_millis(3)), "10_0_6_25_31184");
        assert_eq!(
            served.text(),
            "198.18.0.7:40312 [06/Dec/2026:08:30:05.123] shop_db_5432 \
             shop_db_5432/10_0_6_25_31184 0/3/5007 212 -- 0/0/0/0/0 0/0"
        );
        assert!(
            l4_entry(None, "<NOSRV>")
                .text()
                .contains("<NOSRV> 0/-1/5007 212 SC ")
        );
        let v: serde_json::Value = serde_json::from_str(&served.json()).unwrap();
        assert_eq!(
            (v["bytes_in"].as_u64(), v["bytes_out"].as_u64()),
            (Some(90), Some(212))
        );
        assert_eq!(
            (v["mode"].as_str(), v["termination"].as_str()),
            (Some("tcp"), Some("--"))
        );
        assert_eq!(v["duration_ms"], 5007.0);
    }

    #[test]
    fn targets_parse_as_documented() {
        assert_eq!("stdout".parse(), Ok(AccessLogTarget::Stdout));
        assert_eq!("syslog".parse(), Ok(AccessLogTarget::Syslog));
        assert_eq!(
            "file:/var/log/mlb.log".parse(),
            Ok(AccessLogTarget::File("/var/log/mlb.log".into()))
        );
        assert!("file:".parse::<AccessLogTarget>().is_err());
        assert!("stderr".parse::<AccessLogTarget>().is_err());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (tx, _rx) = mpsc::channel(2);
        let log = AccessLog {
            tx,
            format: AccessLogFormat::Text,
            sample: 1,
            seen: AtomicU64::new(0),
        };
        let before = live().access_log_dropped_count();
        for _ in 0..5 {
            log.record(&entry());
        }
        assert!(live().access_log_dropped_count() >= before + 3);
    }

    #[tokio::test]
    async fn sampling_keeps_one_request_in_n() {
        let (tx, mut rx) = mpsc::channel(100);
        let log = AccessLog {
            tx,
            format: AccessLogFormat::Json,
            sample: 10,
            seen: AtomicU64::new(0),
        };
        for _ in 0..35 {
            log.record(&entry());
        }
        drop(log);
        let mut n = 0;
        while rx.recv().await.is_some() {
            n += 1;
        }
        assert_eq!(n, 4, "requests 0, 10, 20, 30");
    }

    #[tokio::test]
    async fn a_file_gets_one_line_per_request() {
        let path = std::env::temp_dir().join(format!("mlb-access-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let cfg = AccessLogConfig {
            target: Some(AccessLogTarget::File(path.clone())),
            format: AccessLogFormat::Text,
            sample: 1,
        };
        let log = AccessLog::start(&cfg, &Handle::current()).unwrap().unwrap();
        for _ in 0..3 {
            log.record(&entry());
        }
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_file(&path);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.lines().all(|l| l.ends_with("HTTP/1.1\"")), "{text}");
    }
}
