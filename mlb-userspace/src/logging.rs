//! Logging setup: human-readable text by default, one JSON object per line with `--log-format
//! json`, on stderr (colours only on a terminal); optionally also to syslog (`--syslog-socket`).
use std::{
    io::{IsTerminal as _, Write},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    sync::Arc,
};

use clap::ValueEnum;
use tracing::{Level, Metadata};
use tracing_subscriber::{
    EnvFilter, Layer, Registry, fmt, fmt::MakeWriter, layer::Layered, prelude::*,
};

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per event, for log shippers.
    Json,
}

/// How to log.
#[derive(Clone, Debug)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `--log-level`: wins over `RUST_LOG`.
    pub level: Option<Level>,
    /// Without `--log-level` and `RUST_LOG`; `None`: no logs (`mlb explain` prints its answer
    /// only; its errors end the command with a message).
    pub default_level: Option<Level>,
    /// `--syslog-socket`; `/dev/null` means none (marathon-lb's way to turn it off).
    pub syslog_socket: Option<PathBuf>,
}

type Base = Layered<EnvFilter, Registry>;
type BoxedLayer = Box<dyn Layer<Base> + Send + Sync>;

/// Installs the global subscriber. Returns a warning to log when the syslog socket could not be
/// used (mlb then logs to stderr only: losing syslog must not stop the load balancer).
pub fn init(settings: &LogSettings) -> Option<String> {
    let mut layers: Vec<BoxedLayer> = vec![stderr_layer(settings.format)];
    let mut warning = None;
    match settings.syslog_socket.as_deref() {
        None => {}
        Some(p) if p == Path::new("/dev/null") => {}
        Some(path) => match Syslog::connect(path) {
            Ok(syslog) => layers.push(
                fmt::layer()
                    .with_writer(syslog)
                    .with_ansi(false)
                    .without_time()
                    .with_target(false)
                    .boxed(),
            ),
            Err(e) => {
                warning = Some(format!(
                    "--syslog-socket {}: {e}; logging to stderr only",
                    path.display()
                ));
            }
        },
    }
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter(settings))
        .with(layers)
        .try_init();
    warning
}

fn filter(settings: &LogSettings) -> EnvFilter {
    let directive = |level: Level| {
        // Dependencies (hyper, rustls, reqwest) stay at info when mlb's level is more verbose.
        if level > Level::INFO {
            format!("info,mlb={level}")
        } else {
            level.to_string()
        }
    };
    match settings.level {
        Some(level) => EnvFilter::new(directive(level)),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            EnvFilter::new(settings.default_level.map_or("off".to_owned(), directive))
        }),
    }
}

fn stderr_layer(format: LogFormat) -> BoxedLayer {
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let layer = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
    }
}

/// A connected unix datagram socket; each event becomes one datagram
/// `<PRI>mlb[PID]: message` (facility user, as marathon-lb's Python handler).
#[derive(Clone)]
struct Syslog {
    socket: Arc<UnixDatagram>,
}

impl Syslog {
    fn connect(path: &Path) -> std::io::Result<Syslog> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        // A stalled syslog daemon drops lines instead of blocking mlb.
        socket.set_nonblocking(true)?;
        Ok(Syslog {
            socket: Arc::new(socket),
        })
    }

    fn line(&self, severity: u8) -> SyslogLine {
        const FACILITY_USER: u8 = 1;
        let mut buf = Vec::with_capacity(256);
        let _ = write!(
            buf,
            "<{}>mlb[{}]: ",
            FACILITY_USER * 8 + severity,
            std::process::id()
        );
        SyslogLine {
            socket: self.socket.clone(),
            buf,
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        self.line(6)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> SyslogLine {
        let severity = match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        self.line(severity)
    }
}

/// One event's text, sent as one datagram when dropped.
struct SyslogLine {
    socket: Arc<UnixDatagram>,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        while self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        let _ = self.socket.send(&self.buf);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn logging_syslog_gets_one_datagram_per_event_with_priority() {
        let dir = std::env::temp_dir().join(format!("mlb-syslog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let syslog = Syslog::connect(&path).unwrap();
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .with_writer(syslog)
                .with_ansi(false)
                .without_time()
                .with_target(false),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(app = "/web", "backend gone");
            tracing::info!("synced");
        });
        let mut buf = [0u8; 512];
        let n = server.recv(&mut buf).unwrap();
        let first = String::from_utf8_lossy(&buf[..n]).into_owned();
        let pid = std::process::id();
        assert!(first.starts_with(&format!("<12>mlb[{pid}]: ")), "{first:?}");
        assert!(
            first.contains("backend gone") && first.contains("app=\"/web\""),
            "{first:?}"
        );
        assert!(!first.ends_with('\n'));
        let n = server.recv(&mut buf).unwrap();
        let second = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            second.starts_with("<14>mlb[") && second.ends_with("synced"),
            "{second:?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn logging_level_flag_wins_and_keeps_dependencies_at_info() {
        let settings = |level| LogSettings {
            format: LogFormat::Text,
            level,
            default_level: Some(Level::INFO),
            syslog_socket: None,
        };
        assert_eq!(
            filter(&settings(Some(Level::DEBUG))).to_string(),
            "mlb=debug,info"
        );
        assert_eq!(filter(&settings(Some(Level::ERROR))).to_string(), "error");
    }
}
