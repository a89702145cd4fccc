//! Command-line flags. Every flag can also be set from the environment as `MLB_<FLAG>`; where
//! marathon-lb had a flag for the same thing, mlb keeps its name.
//!
//! The flags are turned here into each part's own configuration type ([`ModelOptions`],
//! [`ProxyConfig`], [`MarathonFlags`], [`AttachMode`]): no other module reads the command line.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    dataplane::{
        xdp::AttachMode,
        xdp_l4::{FlowTimeouts, HashSecret},
    },
    logging::LogFormat,
    marathon::config::MarathonFlags,
    model::{ModelError, ModelOptions},
    proxy::ProxyConfig,
    secret::Secret,
};

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
    /// Say, for every app and service port, what is exposed where, or exactly why not. With
    /// `--marathon`, reads Marathon once and evaluates it with the given flags (`--group`,
    /// `--strict-mode`, `--health-check` ...); without, asks the mlb running at `--admin-addr`.
    Explain(Box<ExplainOptions>),
    /// Print the version.
    Version,
}

/// Flags of `mlb explain`: the app to explain, the output format, and `mlb run`'s flags.
#[derive(Debug, Args)]
pub struct ExplainOptions {
    /// Only this app (its Marathon id, e.g. `/shop/web`); default: every app.
    pub app_id: Option<String>,
    /// Print JSON (the admin API's `/_mlb/explain` document) instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub run: RunOptions,
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
    /// Service address(es) (VIPs) TCP/UDP services are exposed on (repeatable). None: every
    /// IPv4 address of the host (userspace dataplane only).
    #[arg(long = "vip", env = "MLB_VIP", value_delimiter = ',')]
    pub vip: Vec<IpAddr>,
    /// Source address(es) the XDP dataplane uses towards backends (full NAT; repeatable, up to
    /// 8 per family: each adds a whole `--snat-ports` range towards every backend). Default: the
    /// VIPs.
    #[arg(long = "snat-addr", env = "MLB_SNAT_ADDR", value_delimiter = ',')]
    pub snat_addr: Vec<IpAddr>,
    /// Key of the XDP flow hash, 16 hex digits (e.g. `openssl rand -hex 8`). Give every load
    /// balancer of a fleet the same one so they agree on backends; default: random at start.
    #[arg(
        long,
        env = "MLB_HASH_SECRET",
        hide_env_values = true,
        value_name = "HEX16"
    )]
    pub hash_secret: Option<HashSecret>,
    /// XDP connection tracking: idle seconds of a TCP flow whose handshake is not complete
    /// (bounds how long a SYN flood holds SNAT ports).
    #[arg(
        long,
        env = "MLB_CT_TCP_SYN_TIMEOUT",
        default_value_t = 10,
        value_name = "SECS"
    )]
    pub ct_tcp_syn_timeout: u64,
    /// XDP connection tracking: idle seconds of an established TCP flow.
    #[arg(
        long,
        env = "MLB_CT_TCP_TIMEOUT",
        default_value_t = 3600,
        value_name = "SECS"
    )]
    pub ct_tcp_timeout: u64,
    /// XDP connection tracking: idle seconds of a TCP flow after the first FIN.
    #[arg(
        long,
        env = "MLB_CT_TCP_FIN_TIMEOUT",
        default_value_t = 60,
        value_name = "SECS"
    )]
    pub ct_tcp_fin_timeout: u64,
    /// XDP connection tracking: seconds a TCP flow closed by FINs from both sides (TIME_WAIT) or
    /// by a RST keeps its SNAT port.
    #[arg(
        long,
        env = "MLB_CT_TCP_CLOSE_TIMEOUT",
        default_value_t = 2,
        value_name = "SECS"
    )]
    pub ct_tcp_close_timeout: u64,
    /// XDP connection tracking: idle seconds of a UDP flow.
    #[arg(
        long,
        env = "MLB_CT_UDP_TIMEOUT",
        default_value_t = 60,
        value_name = "SECS"
    )]
    pub ct_udp_timeout: u64,
    /// Source ports the XDP dataplane allocates for SNAT (`FIRST-LAST`).
    #[arg(long, env = "MLB_SNAT_PORTS", default_value = "40000-59999")]
    pub snat_ports: PortRange,
    /// Slots of each service's Maglev table (a prime; > 100 × the largest backend count keeps
    /// shares within 1%).
    #[arg(long, env = "MLB_MAGLEV_TABLE_SIZE", default_value_t = crate::dataplane::maglev::DEFAULT_TABLE_SIZE, value_parser = parse_table_size)]
    pub maglev_table_size: u32,
    /// Seconds a backend removed from a TCP/UDP service keeps its established XDP flows before
    /// it is declared dead and they are re-balanced (the new backend resets TCP ones).
    #[arg(long, env = "MLB_DRAIN_TIMEOUT", default_value_t = 300)]
    pub drain_timeout: u64,
    /// Connection-tracking entries of the XDP dataplane (two per flow; LRU when full).
    #[arg(long, env = "MLB_CONNTRACK_SIZE", default_value_t = mlb_common::consts::CT_MAX_ENTRIES)]
    pub conntrack_size: u32,
    /// Marathon basic auth as `user:password` (a `:` in the password is fine). Prefer
    /// `--marathon-auth-credential-file` or the environment: arguments are visible in `ps`.
    #[arg(
        long,
        env = "MLB_AUTH_CREDENTIALS",
        hide_env_values = true,
        value_name = "USER:PASS"
    )]
    pub auth_credentials: Option<Secret>,
    /// File whose first line is `user:password` for Marathon basic auth (wins over
    /// `--auth-credentials`, as in marathon-lb).
    #[arg(long, env = "MLB_MARATHON_AUTH_CREDENTIAL_FILE", value_name = "PATH")]
    pub marathon_auth_credential_file: Option<PathBuf>,
    /// DC/OS service-account JSON `{"uid","private_key","login_endpoint"}`, or the path of a
    /// file holding it. Falls back to `DCOS_SERVICE_ACCOUNT_CREDENTIAL` like marathon-lb; used
    /// only when no basic auth is given.
    #[arg(
        long,
        env = "MLB_DCOS_AUTH_CREDENTIALS",
        hide_env_values = true,
        value_name = "JSON|PATH"
    )]
    pub dcos_auth_credentials: Option<Secret>,
    /// CA bundle (PEM) that Marathon's certificate must chain to. Without it the system roots
    /// are used: unlike marathon-lb, verification is always on unless `--marathon-insecure`.
    #[arg(long, env = "MLB_MARATHON_CA_CERT", value_name = "PATH")]
    pub marathon_ca_cert: Option<PathBuf>,
    /// Do not verify Marathon's TLS certificate (explicit opt-out).
    #[arg(long, env = "MLB_MARATHON_INSECURE")]
    pub marathon_insecure: bool,
    /// Reconnect the event stream when no byte (keep-alives included) arrives for this many
    /// seconds (marathon-lb's curl low-speed limit: 300).
    #[arg(
        long,
        env = "MLB_SSE_STALL_TIMEOUT",
        default_value_t = 300,
        value_name = "SECS"
    )]
    pub sse_stall_timeout: u64,
    /// Cap, in seconds, of the jittered exponential backoff between reconnects (marathon-lb).
    #[arg(
        long,
        env = "MLB_MAX_BACKOFF",
        default_value_t = 300,
        value_name = "SECS"
    )]
    pub max_backoff: u64,
    /// Full resync from `/v2/apps` every this many seconds, besides the one after each
    /// (re)connect (marathon-lb's implicit 300 s).
    #[arg(
        long,
        env = "MLB_RESYNC_INTERVAL",
        default_value_t = 300,
        value_name = "SECS"
    )]
    pub resync_interval: u64,
    /// Poll `/v2/apps` every this many seconds instead of following the event stream.
    #[arg(long, env = "MLB_POLL_INTERVAL", value_name = "SECS")]
    pub poll_interval: Option<u64>,
    /// Lowest service port auto-assigned to IP-per-task apps that declare none (0 with
    /// `--max-serv-port-ip-per-task 0`: no auto-assignment), as marathon-lb.
    #[arg(long, env = "MLB_MIN_SERV_PORT_IP_PER_TASK", default_value_t = 10050)]
    pub min_serv_port_ip_per_task: u16,
    /// Highest auto-assigned service port for IP-per-task apps.
    #[arg(long, env = "MLB_MAX_SERV_PORT_IP_PER_TASK", default_value_t = 10100)]
    pub max_serv_port_ip_per_task: u16,
}

impl XdpAttachMode {
    /// The dataplane's attach mode.
    pub fn attach_mode(self) -> AttachMode {
        match self {
            XdpAttachMode::Native => AttachMode::Native,
            XdpAttachMode::Skb => AttachMode::Skb,
        }
    }
}

impl RunOptions {
    /// The model's options: marathon-lb's defaults, these flags, the ports mlb listens on
    /// itself reserved; `framework_name` is the `FRAMEWORK_NAME` environment value. Fails when
    /// the IP-per-task port range is not a range.
    pub fn model_options(
        &self,
        framework_name: Option<String>,
    ) -> Result<ModelOptions, ModelError> {
        let mut model = ModelOptions {
            strict_mode: self.strict_mode,
            health_check: self.health_check,
            framework_name,
            ..ModelOptions::new(self.group.clone())
        }
        .with_ip_per_task_port_range(
            self.min_serv_port_ip_per_task,
            self.max_serv_port_ip_per_task,
        )?;
        model.reserved_ports.insert(self.admin_addr.port());
        model.reserved_ports.insert(self.appid_port);
        if !self.dont_bind_http_https {
            model.reserved_ports.insert(self.http_port);
            model.reserved_ports.insert(self.https_port);
        }
        model.reserved_ports.remove(&0);
        Ok(model)
    }

    /// The proxy's configuration: frontends on every address, certificates, default timeouts.
    pub fn proxy_config(&self) -> ProxyConfig {
        let any = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        let bind_vhost = !self.dont_bind_http_https;
        ProxyConfig {
            http_addr: bind_vhost.then(|| SocketAddr::new(any, self.http_port)),
            https_addr: bind_vhost.then(|| SocketAddr::new(any, self.https_port)),
            appid_addr: Some(SocketAddr::new(any, self.appid_port)),
            ssl_certs: self.ssl_certs.clone(),
            ..ProxyConfig::default()
        }
    }

    /// The XDP dataplane's connection-tracking timeouts.
    pub fn flow_timeouts(&self) -> FlowTimeouts {
        let secs = Duration::from_secs;
        FlowTimeouts {
            tcp_syn: secs(self.ct_tcp_syn_timeout),
            tcp_established: secs(self.ct_tcp_timeout),
            tcp_half_closed: secs(self.ct_tcp_fin_timeout),
            tcp_time_wait: secs(self.ct_tcp_close_timeout),
            tcp_closed: secs(self.ct_tcp_close_timeout),
            udp: secs(self.ct_udp_timeout),
        }
    }

    /// The Marathon flags, for [`crate::marathon::config::MarathonConfig::from_flags`].
    pub fn marathon_flags(&self) -> MarathonFlags<'_> {
        MarathonFlags {
            marathon: &self.marathon,
            auth_credentials: self.auth_credentials.as_ref(),
            marathon_auth_credential_file: self.marathon_auth_credential_file.as_deref(),
            dcos_auth_credentials: self.dcos_auth_credentials.as_ref(),
            marathon_ca_cert: self.marathon_ca_cert.as_deref(),
            marathon_insecure: self.marathon_insecure,
            sse_stall_timeout: self.sse_stall_timeout,
            max_backoff: self.max_backoff,
            resync_interval: self.resync_interval,
            poll_interval: self.poll_interval,
        }
    }
}

fn parse_table_size(s: &str) -> Result<u32, String> {
    let size: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    crate::dataplane::maglev::validate_table_size(size).map_err(|e| e.to_string())?;
    Ok(size)
}

/// An inclusive range of ports, `FIRST-LAST` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// How many ports the range holds.
    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Always false: a range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (first, last) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: expected FIRST-LAST, e.g. 40000-59999"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{s:?}: {p:?} is not a port (1-65535)"))
        };
        let (first, last) = (port(first)?, port(last)?);
        if first > last {
            return Err(format!("{s:?}: the first port is above the last"));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn run(args: &[&str]) -> Result<Box<RunOptions>, clap::Error> {
        let mut argv = vec!["mlb", "run"];
        argv.extend(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Run(opts) => Ok(opts),
            _ => unreachable!(),
        }
    }

    #[test]
    fn options_l4_flags() {
        let o = run(&[
            "--vip",
            "198.18.1.2",
            "--vip",
            "fd00:198:18:1::2",
            "--snat-addr",
            "198.18.2.1",
            "--snat-ports",
            "1024-2047",
            "--maglev-table-size",
            "16381",
        ])
        .unwrap();
        assert_eq!(o.vip.len(), 2);
        assert_eq!(o.snat_addr, ["198.18.2.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(o.snat_ports.len(), 1024);
        assert_eq!(o.maglev_table_size, 16381);
        let d = run(&[]).unwrap();
        assert_eq!(
            d.snat_ports,
            PortRange {
                first: 40000,
                last: 59999
            }
        );
        assert_eq!(d.maglev_table_size, 65537);
        let e = run(&["--maglev-table-size", "65536"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a prime"), "{e}");
        assert!(run(&["--snat-ports", "5000-4000"]).is_err());
        assert!(run(&["--hash-secret", "xyz"]).is_err());
        let t = run(&[
            "--ct-tcp-close-timeout",
            "5",
            "--snat-addr",
            "198.18.2.1,198.18.2.2",
        ])
        .unwrap();
        assert_eq!(t.snat_addr.len(), 2);
        let timeouts = t.flow_timeouts();
        assert_eq!(timeouts.tcp_time_wait, Duration::from_secs(5));
        assert_eq!(timeouts.tcp_closed, Duration::from_secs(5));
        assert_eq!(d.flow_timeouts().tcp_syn, Duration::from_secs(10));
        assert!(run(&["--snat-ports", "0-10"]).is_err());
    }
}
