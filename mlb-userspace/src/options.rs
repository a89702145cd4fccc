//! Command-line flags. Every flag can also be set from the environment as `MLB_<FLAG>`; where
//! marathon-lb had a flag for the same thing, mlb keeps its name.
use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::logging::LogFormat;

/// mlb: load balancer for Marathon apps (XDP for TCP/UDP, hyper + rustls for HTTP/TLS).
#[derive(Debug, Parser)]
#[command(name = "mlb", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "MLB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: watch Marathon (or a static config) and route its apps.
    Run(Box<RunOptions>),
    /// Print the version and the features of this build.
    Version,
}

/// Which dataplane forwards plain TCP/UDP services.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DataplaneKind {
    /// XDP when it can be attached, else the userspace proxy (with a warning saying why).
    #[default]
    Auto,
    /// XDP only: fail when it cannot be attached.
    Xdp,
    /// The userspace (tokio) TCP/UDP proxy.
    Userspace,
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum XdpAttachMode {
    /// Native (driver) mode: the fast path.
    #[default]
    Native,
    /// Generic (skb) mode: works on any device, slower; a fallback.
    Skb,
}

/// Flags of `mlb run`.
#[derive(Debug, Args)]
pub struct RunOptions {
    /// Marathon URL(s); several for failover (marathon-lb's `--marathon`).
    #[arg(
        short = 'm',
        long = "marathon",
        env = "MLB_MARATHON",
        value_delimiter = ','
    )]
    pub marathon: Vec<String>,
    /// Only expose apps in these HAPROXY_GROUPs; `*` for all (repeatable).
    #[arg(long = "group", env = "MLB_GROUP", value_delimiter = ',')]
    pub group: Vec<String>,
    /// TLS certificate files or directories (PEM chain + key in one file).
    #[arg(long = "ssl-certs", env = "MLB_SSL_CERTS", value_delimiter = ',')]
    pub ssl_certs: Vec<PathBuf>,
    /// Only expose apps whose HAPROXY_{n}_ENABLED label is true.
    #[arg(long, env = "MLB_STRICT_MODE")]
    pub strict_mode: bool,
    /// Only route to tasks whose Marathon health checks pass.
    #[arg(long, env = "MLB_HEALTH_CHECK")]
    pub health_check: bool,
    /// Static services instead of (or before) Marathon: a JSON or TOML file.
    #[arg(long, env = "MLB_STATIC_CONFIG")]
    pub static_config: Option<PathBuf>,
    /// Dataplane for TCP/UDP services.
    #[arg(long, env = "MLB_DATAPLANE", value_enum, default_value_t = DataplaneKind::Auto)]
    pub dataplane: DataplaneKind,
    /// Interface(s) to attach the XDP program to (repeatable).
    #[arg(long = "xdp-iface", env = "MLB_XDP_IFACE", value_delimiter = ',')]
    pub xdp_iface: Vec<String>,
    /// XDP attach mode.
    #[arg(long, env = "MLB_XDP_MODE", value_enum, default_value_t = XdpAttachMode::Native)]
    pub xdp_mode: XdpAttachMode,
    /// Port of the HTTP vhost frontend (marathon-lb's `:80`).
    #[arg(long, env = "MLB_HTTP_PORT", default_value_t = 80)]
    pub http_port: u16,
    /// Port of the HTTPS vhost frontend (marathon-lb's `:443`).
    #[arg(long, env = "MLB_HTTPS_PORT", default_value_t = 443)]
    pub https_port: u16,
    /// Port of the frontend that routes on the `X-Marathon-App-Id` header (marathon-lb's `:9091`).
    #[arg(long, env = "MLB_APPID_PORT", default_value_t = 9091)]
    pub appid_port: u16,
    /// Do not bind the HTTP and HTTPS vhost frontends (service ports and the app-id frontend
    /// are still served).
    #[arg(long, env = "MLB_DONT_BIND_HTTP_HTTPS")]
    pub dont_bind_http_https: bool,
    /// Admin listener: health check, explain JSON, stats.
    #[arg(long, env = "MLB_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,
}
