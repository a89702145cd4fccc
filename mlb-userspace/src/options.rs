//! Command-line flags. Every flag can also be set from the environment as `MLB_<FLAG>`; where
//! marathon-lb had a flag for the same thing, mlb keeps its name.
//!
//! The flags are turned here into each part's own configuration type ([`ModelOptions`],
//! [`ProxyConfig`], [`UserspaceL4Config`], [`ConnLimits`], [`MarathonFlags`], [`AttachMode`]):
//! no other module reads the command line.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing::Level;

use crate::{
    dataplane::{
        userspace_l4::UserspaceL4Config,
        xdp::AttachMode,
        xdp_l4::{FlowTimeouts, HashSecret},
        xdp_pin::DEFAULT_BPFFS_DIR,
    },
    logging::LogFormat,
    marathon::config::MarathonFlags,
    model::{ModelError, ModelOptions, TlsVersion},
    overload::{self, ConnGate, ConnLimits},
    proxy::{
        ProxyConfig, Timeouts,
        access_log::{AccessLogConfig, AccessLogFormat, AccessLogTarget},
        tls_policy::TlsPolicy,
    },
    secret::Secret,
};

/// mlb: load balancer for Marathon apps (XDP for TCP/UDP, hyper + rustls for HTTP/TLS).
///
/// marathon-lb's command line works too: `mlb sse -m URL --group external ...` (its Docker
/// image's form) or `mlb --marathon URL --group external --sse` (its script's form).
#[derive(Debug, Parser)]
#[command(name = "mlb", version, about)]
pub struct Cli {
    /// Log format: `text`, `json`, or a Python logging format string (marathon-lb's; mlb then
    /// logs text, with a notice).
    #[arg(long, global = true, env = "MLB_LOG_FORMAT", default_value = "text", value_parser = parse_log_format, help_heading = LOGGING)]
    pub log_format: LogFormatArg,
    /// Log level: error, warn, info, debug, trace, or marathon-lb's CRITICAL, WARNING, NOTSET
    /// (any case). Wins over `RUST_LOG`; default `info` (none for `mlb explain`).
    #[arg(long, global = true, env = "MLB_LOG_LEVEL", value_parser = parse_log_level, help_heading = LOGGING)]
    pub log_level: Option<Level>,
    /// Also send logs to syslog through this unix datagram socket (e.g. `/dev/log`);
    /// `/dev/null` (the marathon-lb image's default) disables it.
    #[arg(long, global = true, env = "MLB_SYSLOG_SOCKET", value_name = "PATH", help_heading = LOGGING)]
    pub syslog_socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Help headings of `mlb run --help`.
const MARATHON: &str = "Marathon";
const ROUTING: &str = "Routing";
const TLS: &str = "TLS";
const L4: &str = "TCP/UDP dataplane (XDP)";
const ADMIN: &str = "Admin and shutdown";
const LIMITS: &str = "Connection limits and timeouts";
const LOGGING: &str = "Logging";
const HAPROXY_ONLY: &str = "marathon-lb flags without effect in mlb (accepted, logged once)";

/// A `--log-format` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFormatArg {
    /// How mlb logs.
    pub format: LogFormat,
    /// The Python format string given instead of `text`/`json`, if any.
    pub python: Option<String>,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: watch Marathon (or a static config) and route its apps.
    Run(Box<RunOptions>),
    /// marathon-lb's `sse` mode: `mlb run` following Marathon's event stream, reading the
    /// marathon-lb image's environment (HAPROXY_SSL_CERT*, MARATHON_USER/PASSWORD, ...).
    Sse(Box<RunOptions>),
    /// marathon-lb's `poll` mode: `mlb run` re-reading Marathon every `POLL_INTERVAL` seconds
    /// (default 60), reading the marathon-lb image's environment.
    Poll(Box<RunOptions>),
    /// Say, for every app, what is exposed where, or exactly why not: one line per app, the
    /// ports, backends and excluded tasks with `-v`. With `--marathon`, reads Marathon once
    /// and evaluates it with the given flags (`--group`, `--strict-mode`, `--health-check`
    /// ...); without, asks the mlb running at `--admin-addr`.
    Explain(Box<ExplainOptions>),
    /// Blue/green deployment of one app, as marathon-lb's `zdd.py` does it (same flags and exit
    /// codes), reading the stats of every mlb listed.
    Zdd(Box<ZddOptions>),
    /// Remove the pinned XDP datapath (`--detach`): detach the program from every interface and
    /// delete its maps. An agent stopped with SIGTERM leaves it forwarding for the next one.
    Stop(StopOptions),
    /// Prepare this host as a backend of direct server return (`mlb run --forwarding dsr`):
    /// a tunnel device (or XDP decapsulation) taking the load balancers' outer header off, the
    /// VIP(s) on it, `rp_filter` off, no ARP answers for the VIPs. Idempotent; `--check` only
    /// prints what is missing.
    BackendSetup(BackendSetupOptions),
    /// Print the version, git commit, the embedded XDP program's SHA-256 and the features.
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
    /// Details: every port, backend and excluded task, and the warnings.
    #[arg(short, long)]
    pub verbose: bool,
    #[command(flatten)]
    pub run: RunOptions,
}

/// Flags of `mlb backend-setup`.
#[derive(Debug, Args)]
pub struct BackendSetupOptions {
    /// VIP(s) the load balancers encapsulate packets for (repeatable).
    #[arg(long = "vip", env = "MLB_VIP", value_delimiter = ',', required = true)]
    pub vip: Vec<IpAddr>,
    /// What takes the outer header off: `kernel` (an ipip / ip6tnl device: Linux's `ipip` and
    /// `ip6_tunnel` modules) or `xdp` (mlb's XDP program on `--iface`, for kernels without them).
    #[arg(long, value_enum, default_value_t = DecapKind::Kernel)]
    pub decap: DecapKind,
    /// Tunnel device of the IPv4 VIPs (`--decap kernel`).
    #[arg(long, default_value = "mlb-dsr0")]
    pub device: String,
    /// Tunnel device of the IPv6 VIPs (`--decap kernel`).
    #[arg(long, default_value = "mlb-dsr6")]
    pub device6: String,
    /// Interface(s) the encapsulated packets arrive on (`--decap xdp`; repeatable).
    #[arg(long = "iface", value_delimiter = ',')]
    pub iface: Vec<String>,
    /// XDP attach mode of the decapsulation program.
    #[arg(long, value_enum, default_value_t = XdpAttachMode::Native)]
    pub xdp_mode: XdpAttachMode,
    /// bpffs directory the decapsulation links are pinned under (`<dir>/decap/<iface>`).
    #[arg(long, env = "MLB_BPFFS_DIR", default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs_dir: PathBuf,
    /// Change nothing: print what is missing, exit with status 1 if anything is.
    #[arg(long)]
    pub check: bool,
}

/// What takes the outer header off on a DSR backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DecapKind {
    /// An `ipip` / `ip6tnl` device in external (collect-metadata) mode.
    #[default]
    Kernel,
    /// mlb's XDP decapsulation program on the receiving interfaces.
    Xdp,
}

/// Flags of `mlb stop`.
#[derive(Debug, Args)]
pub struct StopOptions {
    /// Detach the XDP program from every interface and remove its pins (conntrack, services,
    /// Maglev tables): TCP/UDP traffic through mlb stops. Required: without it there is nothing
    /// to do, as stopping the agent itself (SIGTERM) leaves the datapath forwarding.
    #[arg(long)]
    pub detach: bool,
    /// Where the XDP datapath is pinned (as given to `mlb run`).
    #[arg(long, env = "MLB_BPFFS_DIR", default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs_dir: PathBuf,
}

/// Flags of `mlb zdd`: zdd.py's.
#[derive(Debug, Args)]
pub struct ZddOptions {
    /// The app definition (JSON) to deploy; it needs the labels HAPROXY_DEPLOYMENT_GROUP and
    /// HAPROXY_DEPLOYMENT_ALT_PORT.
    #[arg(long, short = 'j')]
    pub json: PathBuf,
    /// Marathon's URL.
    #[arg(long, short = 'm', env = "MLB_ZDD_MARATHON")]
    pub marathon: reqwest::Url,
    /// An mlb admin URL (e.g. `http://mlb.example:9090`); repeat for several, and a name stands
    /// for every address it resolves to.
    #[arg(long = "marathon-lb", short = 'l', required = true)]
    pub marathon_lb: Vec<reqwest::Url>,
    /// Print the new app's definition and stop.
    #[arg(long, short = 'd')]
    pub dry_run: bool,
    /// Never ask for confirmation.
    #[arg(long, short = 'f')]
    pub force: bool,
    /// Seconds between polling steps.
    #[arg(long, short = 's', default_value_t = 5.0)]
    pub step_delay: f64,
    /// Instances of the new colour at first launch (at most the old app's).
    #[arg(long, short = 'i', default_value_t = 1)]
    pub initial_instances: u64,
    /// Grow the new app by this many per step instead of by half.
    #[arg(long, default_value_t = 0)]
    pub linear_increase: u64,
    /// Resume a deployment left in progress (two apps of the group live).
    #[arg(long, short = 'r')]
    pub resume: bool,
    /// Seconds to wait for old tasks to drain in each step before killing them anyway.
    #[arg(long, short = 'w', default_value_t = 300.0)]
    pub max_wait: f64,
    /// Hybrid deployment: keep this many new instances next to the old ones.
    #[arg(long, short = 'n', default_value_t = 0)]
    pub new_instances: u64,
    /// Finish a hybrid deployment towards the newest colour.
    #[arg(long, short = 'c', conflicts_with = "complete_prev")]
    pub complete_cur: bool,
    /// Finish a hybrid deployment towards the previous colour (roll back).
    #[arg(long, short = 'p')]
    pub complete_prev: bool,
    /// Run before each kill as `HOOK '<old app>' '<task ids>' '<new app>'`; failing stops zdd.
    #[arg(long)]
    pub pre_kill_hook: Option<PathBuf>,
    /// Load balancers that must answer before tasks are killed (default: every one listed).
    #[arg(long)]
    pub listening_instances: Option<usize>,
}

impl ZddOptions {
    /// The driver's configuration.
    pub fn config(&self) -> Result<crate::zdd::run::ZddConfig, crate::zdd::ZddError> {
        use crate::zdd::plan::{Resume, Sizing};
        let seconds = |flag: &str, v: f64| {
            std::time::Duration::try_from_secs_f64(v).map_err(|_| {
                crate::zdd::ZddError::InvalidArg(format!("{flag} {v}: not a duration"))
            })
        };
        let resume = match (self.resume || self.complete_cur, self.complete_prev) {
            (_, true) => Resume::Previous,
            (true, false) => Resume::Current,
            (false, false) => Resume::No,
        };
        Ok(crate::zdd::run::ZddConfig {
            json: self.json.clone(),
            marathon: self.marathon.clone(),
            marathon_lb: self.marathon_lb.clone(),
            dry_run: self.dry_run,
            force: self.force,
            step_delay: seconds("--step-delay", self.step_delay)?,
            sizing: Sizing {
                initial_instances: self.initial_instances,
                new_instances: self.new_instances,
            },
            linear_increase: self.linear_increase,
            resume,
            complete: self.complete_cur || self.complete_prev,
            max_wait: seconds("--max-wait", self.max_wait)?,
            pre_kill_hook: self.pre_kill_hook.clone(),
            listening_instances: self.listening_instances,
        })
    }
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

/// How the XDP dataplane forwards to backends (`--forwarding`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ForwardingKind {
    /// Full NAT: flows tracked, backends answer the load balancer.
    #[default]
    Nat,
    /// Direct server return: IPIP / ip6ip6 to the backend, which answers clients directly.
    Dsr,
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
    /// Marathon URL(s), tried in order (`-m a b`, `-m a -m b` or `-m a,b`).
    #[arg(
        short = 'm',
        long = "marathon",
        env = "MLB_MARATHON",
        value_delimiter = ',',
        num_args = 1..,
        help_heading = MARATHON
    )]
    pub marathon: Vec<String>,
    /// Follow Marathon's event stream (mlb's default; wins over `--poll-interval` and
    /// `POLL_INTERVAL`).
    #[arg(short = 's', long, env = "MLB_SSE", help_heading = MARATHON)]
    pub sse: bool,
    /// Marathon basic auth as `user:password` (a `:` in the password is fine). Prefer
    /// `--marathon-auth-credential-file` or the environment: arguments are visible in `ps`.
    #[arg(
        long,
        env = "MLB_AUTH_CREDENTIALS",
        hide_env_values = true,
        value_name = "USER:PASS",
        help_heading = MARATHON
    )]
    pub auth_credentials: Option<Secret>,
    /// File whose first line is `user:password` for Marathon basic auth (wins over
    /// `--auth-credentials`, as in marathon-lb).
    #[arg(long, env = "MLB_MARATHON_AUTH_CREDENTIAL_FILE", value_name = "PATH", help_heading = MARATHON)]
    pub marathon_auth_credential_file: Option<PathBuf>,
    /// DC/OS service-account JSON `{"uid","private_key","login_endpoint"}`, or the path of a
    /// file holding it. Falls back to `DCOS_SERVICE_ACCOUNT_CREDENTIAL` like marathon-lb; used
    /// only when no basic auth is given.
    #[arg(
        long,
        env = "MLB_DCOS_AUTH_CREDENTIALS",
        hide_env_values = true,
        value_name = "JSON|PATH",
        help_heading = MARATHON
    )]
    pub dcos_auth_credentials: Option<Secret>,
    /// CA bundle (PEM) that Marathon's certificate must chain to. Without it the system roots
    /// are used: unlike marathon-lb, verification is always on unless `--marathon-insecure`.
    #[arg(long, env = "MLB_MARATHON_CA_CERT", value_name = "PATH", help_heading = MARATHON)]
    pub marathon_ca_cert: Option<PathBuf>,
    /// Do not verify Marathon's TLS certificate (explicit opt-out).
    #[arg(long, env = "MLB_MARATHON_INSECURE", help_heading = MARATHON)]
    pub marathon_insecure: bool,
    /// Reconnect the event stream when no byte (keep-alives included) arrives for this many
    /// seconds (marathon-lb's curl low-speed limit: 300).
    #[arg(long, env = "MLB_SSE_STALL_TIMEOUT", default_value_t = 300, value_name = "SECS", help_heading = MARATHON)]
    pub sse_stall_timeout: u64,
    /// Cap, in seconds, of the jittered exponential backoff between reconnects (marathon-lb).
    #[arg(long, env = "MLB_MAX_BACKOFF", default_value_t = 300, value_name = "SECS", help_heading = MARATHON)]
    pub max_backoff: u64,
    /// Full resync from `/v2/apps` every this many seconds, besides the one after each
    /// (re)connect (marathon-lb's implicit 300 s).
    #[arg(long, env = "MLB_RESYNC_INTERVAL", default_value_t = 300, value_name = "SECS", help_heading = MARATHON)]
    pub resync_interval: u64,
    /// Poll `/v2/apps` every this many seconds instead of following the event stream.
    #[arg(long, env = "MLB_POLL_INTERVAL", value_name = "SECS", help_heading = MARATHON)]
    pub poll_interval: Option<u64>,
    /// Static services instead of (or before) Marathon: a JSON or TOML file.
    #[arg(long, env = "MLB_STATIC_CONFIG", help_heading = MARATHON)]
    pub static_config: Option<PathBuf>,

    /// Only expose apps in these HAPROXY_GROUPs; `*` for all (repeatable).
    #[arg(long = "group", env = "MLB_GROUP", value_delimiter = ',', help_heading = ROUTING)]
    pub group: Vec<String>,
    /// Only expose service ports labelled `HAPROXY_<n>_ENABLED=true` (`<n>`: the port's index).
    // Not `{n}`: clap's help renders `{n}` as a line break.
    #[arg(long, env = "MLB_STRICT_MODE", help_heading = ROUTING)]
    pub strict_mode: bool,
    /// Only route to tasks whose Marathon health checks pass.
    #[arg(short = 'H', long, env = "MLB_HEALTH_CHECK", help_heading = ROUTING)]
    pub health_check: bool,
    /// Most tasks whose health verdict is remembered (marathon-lb's health-result cache).
    #[arg(long, env = "MLB_LRU_CACHE_CAPACITY", default_value_t = 1000, help_heading = ROUTING)]
    pub lru_cache_capacity: usize,
    /// Port of the HTTP vhost frontend (marathon-lb's `:80`).
    #[arg(long, env = "MLB_HTTP_PORT", default_value_t = 80, help_heading = ROUTING)]
    pub http_port: u16,
    /// Port of the HTTPS vhost frontend (marathon-lb's `:443`).
    #[arg(long, env = "MLB_HTTPS_PORT", default_value_t = 443, help_heading = ROUTING)]
    pub https_port: u16,
    /// Port of the frontend that routes on the `X-Marathon-App-Id` header (marathon-lb's `:9091`).
    #[arg(long, env = "MLB_APPID_PORT", default_value_t = 9091, help_heading = ROUTING)]
    pub appid_port: u16,
    /// Do not bind the HTTP and HTTPS vhost frontends (service ports and the app-id frontend
    /// are still served).
    #[arg(long, env = "MLB_DONT_BIND_HTTP_HTTPS", help_heading = ROUTING)]
    pub dont_bind_http_https: bool,
    /// Address of the HTTP vhost frontend: an IP (with `--http-port`) or IP:port. Default: every
    /// IPv4 address.
    #[arg(long, env = "MLB_HTTP_ADDR", value_parser = parse_bind, help_heading = ROUTING)]
    pub http_addr: Option<BindAddr>,
    /// Address of the HTTPS vhost frontend: an IP (with `--https-port`) or IP:port.
    #[arg(long, env = "MLB_HTTPS_ADDR", value_parser = parse_bind, help_heading = ROUTING)]
    pub https_addr: Option<BindAddr>,
    /// Address of the `X-Marathon-App-Id` frontend: an IP (with `--appid-port`) or IP:port.
    #[arg(long, env = "MLB_APPID_ADDR", value_parser = parse_bind, help_heading = ROUTING)]
    pub appid_addr: Option<BindAddr>,
    /// Connections open at once over every HTTP, TLS and TCP listener, plus UDP sessions
    /// (HAProxy's global `maxconn`). Default: what the open-files limit allows (two descriptors
    /// a connection), at most 50,000 as marathon-lb.
    #[arg(long, env = "MLB_MAX_CONNECTIONS", help_heading = LIMITS)]
    pub max_connections: Option<usize>,
    /// Connections open at once on one listener (marathon-lb's `maxconn 10000`).
    #[arg(long, env = "MLB_MAX_CONNECTIONS_PER_LISTENER", default_value_t = 10_000, help_heading = LIMITS)]
    pub max_connections_per_listener: usize,
    /// At a connection limit, how long a new connection waits for a slot before it is refused
    /// (the oldest connection that has sent no request is closed to make room first).
    #[arg(long, env = "MLB_QUEUE_TIMEOUT", default_value = "1s", value_parser = parse_duration, help_heading = LIMITS)]
    pub queue_timeout: Duration,
    /// From accept to the first complete request head, TLS handshake included (HAProxy's
    /// `timeout http-request`).
    #[arg(long, env = "MLB_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration, help_heading = LIMITS)]
    pub request_timeout: Duration,
    /// An HTTP connection with no request in flight and no byte either way for this long is
    /// closed.
    #[arg(long, env = "MLB_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration, help_heading = LIMITS)]
    pub idle_timeout: Duration,
    /// A write to a client that makes no progress for this long fails (slow readers).
    #[arg(long, env = "MLB_SEND_TIMEOUT", default_value = "30s", value_parser = parse_duration, help_heading = LIMITS)]
    pub send_timeout: Duration,
    /// Threads of the HTTP proxy (HAProxy's `nbthread`): each serves its share of the
    /// connections with its own listening sockets (`SO_REUSEPORT`) and backend connections.
    /// Default: none of its own, the proxy shares mlb's runtime.
    #[arg(long, env = "MLB_THREADS", value_parser = clap::value_parser!(u16).range(1..), help_heading = LIMITS)]
    pub threads: Option<u16>,
    /// A userspace-dataplane TCP connection with no byte either way for this long is closed.
    #[arg(long, env = "MLB_TCP_IDLE_TIMEOUT", default_value = "300s", value_parser = parse_duration, help_heading = LIMITS)]
    pub tcp_idle_timeout: Duration,
    /// UDP sessions per userspace-dataplane service; beyond it the least recently used closes.
    #[arg(long, env = "MLB_UDP_MAX_SESSIONS", default_value_t = 4_096, help_heading = LIMITS)]
    pub udp_max_sessions: usize,
    /// Default `timeout client` of HTTP services (HAProxy units: 500ms, 30s, 5m); an app's
    /// `MLB_{n}_TIMEOUT_CLIENT` or template label overrides it.
    #[arg(long, env = "MLB_TIMEOUT_CLIENT", default_value = "30s", value_parser = parse_haproxy_duration, help_heading = ROUTING)]
    pub timeout_client: Duration,
    /// Default `timeout server`: how long a backend may take to answer (then 504).
    #[arg(long, env = "MLB_TIMEOUT_SERVER", default_value = "30s", value_parser = parse_haproxy_duration, help_heading = ROUTING)]
    pub timeout_server: Duration,
    /// Default `timeout connect` to a backend (then the next backend is tried).
    #[arg(long, env = "MLB_TIMEOUT_CONNECT", default_value = "3s", value_parser = parse_haproxy_duration, help_heading = ROUTING)]
    pub timeout_connect: Duration,
    /// Default `timeout tunnel`: idle WebSocket and TLS-passthrough connections are closed.
    #[arg(long, env = "MLB_TIMEOUT_TUNNEL", default_value = "1h", value_parser = parse_haproxy_duration, help_heading = ROUTING)]
    pub timeout_tunnel: Duration,
    /// Lowest service port auto-assigned to IP-per-task apps that declare none (0 with
    /// `--max-serv-port-ip-per-task 0`: no auto-assignment), as marathon-lb.
    #[arg(long, env = "MLB_MIN_SERV_PORT_IP_PER_TASK", default_value_t = 10050, help_heading = ROUTING)]
    pub min_serv_port_ip_per_task: u16,
    /// Highest auto-assigned service port for IP-per-task apps.
    #[arg(long, env = "MLB_MAX_SERV_PORT_IP_PER_TASK", default_value_t = 10100, help_heading = ROUTING)]
    pub max_serv_port_ip_per_task: u16,

    /// TLS certificate files or directories (PEM chain + key in one file).
    #[arg(long = "ssl-certs", env = "MLB_SSL_CERTS", value_delimiter = ',', help_heading = TLS)]
    pub ssl_certs: Vec<PathBuf>,
    /// Directories `HAPROXY_{n}_SSL_CERT` files must be in (repeatable). Default: anywhere mlb
    /// can read, as marathon-lb; set it so a label cannot read arbitrary host files.
    #[arg(long = "ssl-certs-dir", env = "MLB_SSL_CERTS_DIR", value_delimiter = ',', help_heading = TLS)]
    pub ssl_certs_dir: Vec<PathBuf>,
    /// Lowest TLS version the frontends accept: 1.2 or 1.3 (HAProxy's `ssl-min-ver`).
    #[arg(long, env = "MLB_TLS_MIN_VERSION", default_value = "1.2", value_parser = parse_tls_version, help_heading = TLS)]
    pub tls_min_version: TlsVersion,
    /// TLS 1.2 cipher suites, OpenSSL or IANA names separated by `:` (HAProxy's
    /// `ssl-default-bind-ciphers`; names rustls lacks are skipped). Default: all rustls offers.
    #[arg(long, env = "MLB_TLS_CIPHERS", value_parser = |s: &str| tls_list("ciphers", s), help_heading = TLS)]
    pub tls_ciphers: Option<TlsList>,
    /// TLS 1.3 cipher suites (HAProxy's `ssl-default-bind-ciphersuites`).
    #[arg(long, env = "MLB_TLS_CIPHERSUITES", value_parser = |s: &str| tls_list("ciphersuites", s), help_heading = TLS)]
    pub tls_ciphersuites: Option<TlsList>,
    /// Key-exchange groups, e.g. `X25519:P-256` (HAProxy's `ssl-default-bind-curves`).
    #[arg(long, env = "MLB_TLS_CURVES", value_parser = |s: &str| tls_list("curves", s), help_heading = TLS)]
    pub tls_curves: Option<TlsList>,
    /// Every HTTP/TLS frontend expects a PROXY protocol v1 or v2 header first and takes the
    /// client address from it (HAProxy's `accept-proxy`: mlb behind an ELB or another proxy).
    #[arg(long, env = "MLB_ACCEPT_PROXY", help_heading = TLS)]
    pub accept_proxy: bool,
    /// Accepted for marathon-lb: mlb always picks each vhost's certificate and TLS options by
    /// SNI on the HTTPS frontend, which is what this flag enabled there.
    #[arg(long, env = "MLB_GROUP_HTTPS_BY_VHOST", help_heading = TLS)]
    pub group_https_by_vhost: bool,

    /// Dataplane for TCP/UDP services.
    #[arg(long, env = "MLB_DATAPLANE", value_enum, default_value_t = DataplaneKind::Auto, help_heading = L4)]
    pub dataplane: DataplaneKind,
    /// Interface(s) to attach the XDP program to (repeatable).
    #[arg(long = "xdp-iface", env = "MLB_XDP_IFACE", value_delimiter = ',', help_heading = L4)]
    pub xdp_iface: Vec<String>,
    /// XDP attach mode.
    #[arg(long, env = "MLB_XDP_MODE", value_enum, default_value_t = XdpAttachMode::Native, help_heading = L4)]
    pub xdp_mode: XdpAttachMode,
    /// bpffs directory where the XDP program, its links and maps are pinned, so that they
    /// outlive the agent: a restarted or upgraded mlb adopts them without breaking a flow. One
    /// directory per agent (it is locked while the agent runs).
    #[arg(long, env = "MLB_BPFFS_DIR", default_value = DEFAULT_BPFFS_DIR, help_heading = L4)]
    pub bpffs_dir: PathBuf,
    /// On exit, detach the XDP program and remove its pins (as `mlb stop --detach`) instead of
    /// leaving the datapath forwarding for the next agent.
    #[arg(long, env = "MLB_DETACH_ON_EXIT", help_heading = L4)]
    pub detach_on_exit: bool,
    /// Service address(es) (VIPs) TCP/UDP services are exposed on (repeatable). None: every
    /// IPv4 address of the host (userspace dataplane only).
    #[arg(long = "vip", env = "MLB_VIP", value_delimiter = ',', help_heading = L4)]
    pub vip: Vec<IpAddr>,
    /// Source address(es) the XDP dataplane uses towards backends (full NAT; repeatable, up to
    /// 8 per family: each adds a whole `--snat-ports` range towards every backend). Default: the
    /// VIPs.
    #[arg(long = "snat-addr", env = "MLB_SNAT_ADDR", value_delimiter = ',', help_heading = L4)]
    pub snat_addr: Vec<IpAddr>,
    /// How the XDP dataplane sends packets to backends: `nat` (full NAT, flows tracked,
    /// backends answer the load balancer) or `dsr` (direct server return: packets encapsulated
    /// in IPIP / ip6ip6 to the backend, which answers clients itself; see `mlb backend-setup`).
    #[arg(long, env = "MLB_FORWARDING", value_enum, default_value_t = ForwardingKind::Nat, help_heading = L4)]
    pub forwarding: ForwardingKind,
    /// Outer source address(es) of DSR-encapsulated packets, at most one per family. Default:
    /// the first address of that family on the `--xdp-iface` interfaces that is not a VIP.
    #[arg(long = "dsr-source", env = "MLB_DSR_SOURCE", value_delimiter = ',', help_heading = L4)]
    pub dsr_source: Vec<IpAddr>,
    /// Key of the XDP flow hash, 16 hex digits (e.g. `openssl rand -hex 8`). Give every load
    /// balancer of a fleet the same one so they agree on backends; default: random at start.
    #[arg(long, env = "MLB_HASH_SECRET", hide_env_values = true, value_name = "HEX16", help_heading = L4)]
    pub hash_secret: Option<HashSecret>,
    /// XDP connection tracking: idle seconds of a TCP flow whose handshake is not complete
    /// (bounds how long a SYN flood holds SNAT ports).
    #[arg(long, env = "MLB_CT_TCP_SYN_TIMEOUT", default_value_t = 10, value_name = "SECS", help_heading = L4)]
    pub ct_tcp_syn_timeout: u64,
    /// XDP connection tracking: idle seconds of an established TCP flow.
    #[arg(long, env = "MLB_CT_TCP_TIMEOUT", default_value_t = 3600, value_name = "SECS", help_heading = L4)]
    pub ct_tcp_timeout: u64,
    /// XDP connection tracking: idle seconds of a TCP flow after the first FIN.
    #[arg(long, env = "MLB_CT_TCP_FIN_TIMEOUT", default_value_t = 60, value_name = "SECS", help_heading = L4)]
    pub ct_tcp_fin_timeout: u64,
    /// XDP connection tracking: seconds a TCP flow closed by FINs from both sides (TIME_WAIT) or
    /// by a RST is still translated (its last ACK, a retransmitted FIN); a new flow's SYN may
    /// take its SNAT port after 0.25 s already.
    #[arg(long, env = "MLB_CT_TCP_CLOSE_TIMEOUT", default_value_t = 2, value_name = "SECS", help_heading = L4)]
    pub ct_tcp_close_timeout: u64,
    /// XDP connection tracking: idle seconds of a UDP flow.
    #[arg(long, env = "MLB_CT_UDP_TIMEOUT", default_value_t = 60, value_name = "SECS", help_heading = L4)]
    pub ct_udp_timeout: u64,
    /// Source ports the XDP dataplane allocates for SNAT (`FIRST-LAST`).
    #[arg(long, env = "MLB_SNAT_PORTS", default_value = "40000-59999", help_heading = L4)]
    pub snat_ports: PortRange,
    /// Slots of each service's Maglev table (a prime; > 100 × the largest backend count keeps
    /// shares within 1%).
    #[arg(long, env = "MLB_MAGLEV_TABLE_SIZE", default_value_t = crate::dataplane::maglev::DEFAULT_TABLE_SIZE, value_parser = parse_table_size, help_heading = L4)]
    pub maglev_table_size: u32,
    /// Seconds a backend removed from a TCP/UDP service keeps its established XDP flows before
    /// it is declared dead and they are re-balanced (the new backend resets TCP ones).
    #[arg(long, env = "MLB_DRAIN_TIMEOUT", default_value_t = 300, help_heading = L4)]
    pub drain_timeout: u64,
    /// Connection-tracking entries of the XDP dataplane (two per flow; LRU when full).
    #[arg(long, env = "MLB_CONNTRACK_SIZE", default_value_t = mlb_common::consts::CT_MAX_ENTRIES, help_heading = L4)]
    pub conntrack_size: u32,

    /// Admin listener: health check, explain JSON, stats, signals. Its signal endpoints answer
    /// only POSTs from loopback unless `--admin-token` is set.
    #[arg(long, env = "MLB_ADMIN_ADDR", default_value = "0.0.0.0:9090", help_heading = ADMIN)]
    pub admin_addr: SocketAddr,
    /// Bearer token that allows `POST /_mlb_signal/*` from any address (`Authorization: Bearer
    /// <token>`). Without it, only loopback clients may signal.
    #[arg(long, env = "MLB_ADMIN_TOKEN", hide_env_values = true, value_name = "TOKEN", help_heading = ADMIN)]
    pub admin_token: Option<Secret>,
    /// On SIGTERM, `/_haproxy_health_check` answers 503 at once; the listeners keep accepting
    /// for this many seconds (time for a load balancer in front to notice), then close.
    #[arg(long, env = "MLB_DRAIN_DELAY", default_value_t = 5, value_name = "SECS", help_heading = ADMIN)]
    pub drain_delay: u64,
    /// After the listeners close, requests in flight get this many seconds to finish (and
    /// kept-alive client connections to close, each after its last response).
    #[arg(long, env = "MLB_SHUTDOWN_TIMEOUT", default_value_t = 30, value_name = "SECS", help_heading = ADMIN)]
    pub shutdown_timeout: u64,
    /// Print the help with every flag's details and exit (marathon-lb's `--longhelp`).
    #[arg(long, help_heading = ADMIN)]
    pub longhelp: bool,

    #[command(flatten)]
    pub haproxy_only: HaproxyOnlyFlags,

    /// Access log: one line per HTTP request and per TCP connection of the userspace
    /// dataplane, to `stdout`, `file:PATH` or `syslog` (`/dev/log`). Off by default.
    #[arg(long, env = "MLB_ACCESS_LOG", help_heading = LOGGING)]
    pub access_log: Option<AccessLogTarget>,
    /// Access log lines as HAProxy's httplog / tcplog fields (`text`) or JSON objects (`json`).
    #[arg(long, env = "MLB_ACCESS_LOG_FORMAT", value_enum, default_value_t = AccessLogFormat::Text, help_heading = LOGGING)]
    pub access_log_format: AccessLogFormat,
    /// Log one request (or TCP connection) in N, for high rates.
    #[arg(long, env = "MLB_ACCESS_LOG_SAMPLE", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..), help_heading = LOGGING)]
    pub access_log_sample: u64,
}

/// marathon-lb flags that only steer HAProxy (its config file, reloads, validation): accepted so
/// an existing command line starts mlb, and named in one start-up line.
#[derive(Debug, Default, Args)]
pub struct HaproxyOnlyFlags {
    /// Where marathon-lb wrote haproxy.cfg.
    #[arg(long, value_name = "PATH", help_heading = HAPROXY_ONLY)]
    pub haproxy_config: Option<PathBuf>,
    /// HAProxy reload command.
    #[arg(short = 'c', long, value_name = "CMD", help_heading = HAPROXY_ONLY)]
    pub command: Option<String>,
    /// Re-runs of the reload command while no new HAProxy PID shows.
    #[arg(long, allow_negative_numbers = true, value_name = "N", help_heading = HAPROXY_ONLY)]
    pub max_reload_retries: Option<i64>,
    /// Period of that retry loop.
    #[arg(long, value_name = "SECS", help_heading = HAPROXY_ONLY)]
    pub reload_interval: Option<u64>,
    /// Copies of past configs kept in /tmp.
    #[arg(long, value_name = "N", help_heading = HAPROXY_ONLY)]
    pub archive_versions: Option<u32>,
    /// HAProxy map files for vhost and app-id lookups.
    #[arg(long, help_heading = HAPROXY_ONLY)]
    pub haproxy_map: bool,
    /// Skip `haproxy -c` on a new config.
    #[arg(long, help_heading = HAPROXY_ONLY)]
    pub skip_validation: bool,
    /// Keep a config that fails validation instead of rebuilding it app by app.
    #[arg(long, help_heading = HAPROXY_ONLY)]
    pub skip_config_cleanup: bool,
    /// Print the config instead of writing it.
    #[arg(short = 'd', long, help_heading = HAPROXY_ONLY)]
    pub dry: bool,
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
            health_cache_capacity: self.lru_cache_capacity,
            ..ModelOptions::new(self.group.clone())
        }
        .with_ip_per_task_port_range(
            self.min_serv_port_ip_per_task,
            self.max_serv_port_ip_per_task,
        )?;
        model.reserved_ports.insert(self.admin_addr.port());
        model.reserved_ports.insert(self.appid_bind().port());
        if !self.dont_bind_http_https {
            model.reserved_ports.insert(self.http_bind().port());
            model.reserved_ports.insert(self.https_bind().port());
        }
        model.reserved_ports.remove(&0);
        Ok(model)
    }

    fn http_bind(&self) -> SocketAddr {
        BindAddr::resolve(self.http_addr, self.http_port)
    }

    fn https_bind(&self) -> SocketAddr {
        BindAddr::resolve(self.https_addr, self.https_port)
    }

    fn appid_bind(&self) -> SocketAddr {
        BindAddr::resolve(self.appid_addr, self.appid_port)
    }

    /// The connection limits and timeouts of the proxy and the userspace dataplane, for a
    /// process allowed `nofile` open files.
    pub fn conn_limits(&self, nofile: u64) -> ConnLimits {
        ConnLimits {
            max_connections: self
                .max_connections
                .unwrap_or_else(|| overload::connections_for_fd_limit(nofile).min(50_000)),
            max_per_listener: self.max_connections_per_listener,
            queue_timeout: self.queue_timeout,
            request_timeout: self.request_timeout,
            idle_timeout: self.idle_timeout,
            send_timeout: self.send_timeout,
        }
    }

    /// The admin API's limits: a budget of its own (so a flood on the proxy cannot starve the
    /// health check), small, with the same timeouts.
    pub fn admin_conn_limits(&self) -> ConnLimits {
        ConnLimits {
            max_connections: 64,
            max_per_listener: 64,
            ..self.conn_limits(u64::MAX)
        }
    }

    /// The proxy's configuration: frontends on `--http-addr` & co (every IPv4 address by
    /// default), certificates, default timeouts, connections taken from `conn_gate`.
    pub fn proxy_config(&self, conn_gate: Arc<ConnGate>) -> ProxyConfig {
        let bind_vhost = !self.dont_bind_http_https;
        ProxyConfig {
            http_addr: bind_vhost.then(|| self.http_bind()),
            https_addr: bind_vhost.then(|| self.https_bind()),
            appid_addr: Some(self.appid_bind()),
            ssl_certs: self.ssl_certs.clone(),
            ssl_certs_dirs: self.ssl_certs_dir.clone(),
            conn_gate,
            access_log: self.access_log_config(),
            accept_proxy: self.accept_proxy,
            tls_policy: TlsPolicy {
                min_version: self.tls_min_version,
                ciphers: self.tls_ciphers.clone().map(|l| l.0).unwrap_or_default(),
                ciphersuites: self
                    .tls_ciphersuites
                    .clone()
                    .map(|l| l.0)
                    .unwrap_or_default(),
                curves: self.tls_curves.clone().map(|l| l.0).unwrap_or_default(),
            },
            timeouts: Timeouts {
                connect: self.timeout_connect,
                client: self.timeout_client,
                server: self.timeout_server,
                tunnel: self.timeout_tunnel,
            },
            threads: self.proxy_threads(),
            ..ProxyConfig::default()
        }
    }

    /// `--threads`; 0 (the proxy on mlb's runtime) without it. Not yet one per CPU by default:
    /// with several `SO_REUSEPORT` sockets, a flood of silent connections fills every socket's
    /// backlog and delays real clients past the overload tests' bound (tests/hostile.rs).
    pub fn proxy_threads(&self) -> usize {
        self.threads.map_or(0, usize::from)
    }

    /// The userspace TCP/UDP dataplane's configuration, connections taken from `conn_gate`.
    pub fn userspace_l4_config(&self, conn_gate: Arc<ConnGate>) -> UserspaceL4Config {
        UserspaceL4Config {
            maglev_table_size: self.maglev_table_size,
            max_udp_sessions: self.udp_max_sessions,
            tcp_idle_timeout: self.tcp_idle_timeout,
            conn_gate,
            access_log: self.access_log_config(),
            ..UserspaceL4Config::new(self.vip.clone())
        }
    }

    /// `--access-log*`: the HTTP proxy and the userspace dataplane log alike.
    fn access_log_config(&self) -> AccessLogConfig {
        AccessLogConfig {
            target: self.access_log.clone(),
            format: self.access_log_format,
            sample: self.access_log_sample,
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
            // `--sse` (marathon-lb's) wins over a poll interval from the environment.
            poll_interval: self.poll_interval.filter(|_| !self.sse),
        }
    }
}

impl HaproxyOnlyFlags {
    /// The flags given, as typed on the command line.
    pub fn given(&self) -> Vec<&'static str> {
        let mut given = Vec::new();
        let mut add = |set: bool, name| {
            if set {
                given.push(name);
            }
        };
        add(self.haproxy_config.is_some(), "--haproxy-config");
        add(self.command.is_some(), "--command");
        add(self.max_reload_retries.is_some(), "--max-reload-retries");
        add(self.reload_interval.is_some(), "--reload-interval");
        add(self.archive_versions.is_some(), "--archive-versions");
        add(self.haproxy_map, "--haproxy-map");
        add(self.skip_validation, "--skip-validation");
        add(self.skip_config_cleanup, "--skip-config-cleanup");
        add(self.dry, "--dry");
        given
    }
}

/// `text`, `json`, or anything with a `%(...)` Python logging placeholder.
fn parse_log_format(s: &str) -> Result<LogFormatArg, String> {
    match s.to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormatArg {
            format: LogFormat::Text,
            python: None,
        }),
        "json" => Ok(LogFormatArg {
            format: LogFormat::Json,
            python: None,
        }),
        _ if s.contains("%(") => Ok(LogFormatArg {
            format: LogFormat::Text,
            python: Some(s.to_owned()),
        }),
        _ => Err(format!(
            "{s:?}: expected text, json or a Python logging format such as \"%(asctime)s %(message)s\""
        )),
    }
}

/// mlb's level names and Python logging's (marathon-lb's `--log-level`), any case.
fn parse_log_level(s: &str) -> Result<Level, String> {
    match s.to_ascii_lowercase().as_str() {
        "critical" | "error" => Ok(Level::ERROR),
        "warning" | "warn" => Ok(Level::WARN),
        "info" => Ok(Level::INFO),
        "debug" => Ok(Level::DEBUG),
        "notset" | "trace" => Ok(Level::TRACE),
        _ => Err(format!(
            "Invalid log level: {s} (CRITICAL, ERROR, WARNING, INFO, DEBUG, NOTSET or trace)"
        )),
    }
}

/// A listener address: an IP (the port comes from the matching `--*-port` flag) or IP:port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindAddr {
    Ip(IpAddr),
    Socket(SocketAddr),
}

impl BindAddr {
    fn resolve(bind: Option<BindAddr>, port: u16) -> SocketAddr {
        match bind {
            None => SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port),
            Some(BindAddr::Ip(ip)) => SocketAddr::new(ip, port),
            Some(BindAddr::Socket(addr)) => addr,
        }
    }
}

fn parse_bind(s: &str) -> Result<BindAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(BindAddr::Socket(addr));
    }
    s.trim_matches(|c| c == '[' || c == ']')
        .parse::<IpAddr>()
        .map(BindAddr::Ip)
        .map_err(|_| format!("{s:?}: expected an IP address or IP:port"))
}

/// A duration: seconds, or a number with `ms`, `s` or `m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 500ms, 15s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unit must be ms, s or m")),
    }
}

fn parse_tls_version(s: &str) -> Result<TlsVersion, String> {
    match s.trim_start_matches("TLSv").trim_start_matches("tlsv") {
        "1.2" => Ok(TlsVersion::Tls12),
        "1.3" => Ok(TlsVersion::Tls13),
        _ => Err(format!("{s:?}: mlb supports TLS 1.2 and 1.3")),
    }
}

/// A `:`-separated list of TLS suite or curve names (one flag value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsList(pub Vec<String>);

fn tls_list(what: &'static str, s: &str) -> Result<TlsList, String> {
    crate::proxy::tls_policy::parse_list(what, s)
        .map(TlsList)
        .map_err(|e| e.to_string())
}

fn parse_haproxy_duration(s: &str) -> Result<Duration, String> {
    crate::model::tuning::parse_duration(s)
        .ok_or_else(|| format!("{s:?}: expected a duration such as 500ms, 30s, 5m or 1h"))
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
    fn options_run_help_is_grouped_and_whole() {
        use clap::CommandFactory as _;
        let mut cli = Cli::command();
        // Propagates the global (logging) flags into the subcommands, as parsing does.
        cli.build();
        let run = cli.find_subcommand_mut("run").unwrap();
        let help = run.render_long_help().to_string();
        let mut at = 0;
        for heading in [MARATHON, ROUTING, TLS, L4, ADMIN, HAPROXY_ONLY, LOGGING] {
            let found = help[at..].find(&format!("{heading}:"));
            assert!(
                found.is_some(),
                "heading {heading:?} missing or out of order:\n{help}"
            );
            at += found.unwrap_or_default();
        }
        let strict = help
            .lines()
            .skip_while(|l| !l.contains("--strict-mode"))
            .nth(1)
            .unwrap();
        assert!(
            strict.contains("`HAPROXY_<n>_ENABLED=true`"),
            "the label is named whole: {strict:?}"
        );
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
        assert_eq!(d.forwarding, ForwardingKind::Nat);
        let dsr = run(&["--forwarding", "dsr", "--dsr-source", "198.18.2.1,fd00::1"]).unwrap();
        assert_eq!(
            (dsr.forwarding, dsr.dsr_source.len()),
            (ForwardingKind::Dsr, 2)
        );
        assert!(run(&["--forwarding", "tunnel"]).is_err());
    }

    #[test]
    fn options_pinning_flags() {
        let d = run(&[]).unwrap();
        assert_eq!(d.bpffs_dir, PathBuf::from("/sys/fs/bpf/mlb"));
        assert!(!d.detach_on_exit);
        let o = run(&["--bpffs-dir", "/run/mlb-bpf", "--detach-on-exit"]).unwrap();
        assert_eq!(o.bpffs_dir, PathBuf::from("/run/mlb-bpf"));
        assert!(o.detach_on_exit);
        let Command::Stop(stop) = Cli::try_parse_from(["mlb", "stop", "--detach"])
            .unwrap()
            .command
        else {
            panic!("not a stop command");
        };
        assert!(stop.detach);
        assert_eq!(stop.bpffs_dir, PathBuf::from("/sys/fs/bpf/mlb"));
    }

    /// Frontends bind where `--http-addr` & co say (an IP takes the `--*-port`), so nothing is
    /// forced onto 0.0.0.0; connection limits and timeouts come from their flags.
    #[test]
    fn bind_and_limit_flags() {
        let o = run(&[
            "--http-addr",
            "127.0.0.1",
            "--http-port",
            "8080",
            "--https-addr",
            "[::1]:8443",
            "--appid-addr",
            "198.18.0.1:9999",
            "--request-timeout",
            "500ms",
            "--max-connections",
            "100",
        ])
        .unwrap();
        let c = o.proxy_config(ConnGate::new(o.conn_limits(1024)));
        assert_eq!(c.http_addr, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.https_addr, Some("[::1]:8443".parse().unwrap()));
        assert_eq!(c.appid_addr, Some("198.18.0.1:9999".parse().unwrap()));
        let limits = o.conn_limits(1024);
        assert_eq!(limits.max_connections, 100);
        assert_eq!(limits.request_timeout, Duration::from_millis(500));
        let reserved = o.model_options(None).unwrap().reserved_ports;
        assert!([8080, 8443, 9999].iter().all(|p| reserved.contains(p)));

        let d = run(&[]).unwrap();
        let limits = d.conn_limits(1024);
        assert_eq!(
            limits.max_connections, 384,
            "(1024 - 256) / 2 from the descriptor limit"
        );
        assert_eq!(
            d.conn_limits(1 << 20).max_connections,
            50_000,
            "marathon-lb's maxconn"
        );
        assert_eq!(limits.request_timeout, Duration::from_secs(15));
        assert!(run(&["--http-addr", "nowhere"]).is_err());
        assert!(run(&["--idle-timeout", "5h"]).is_err());
    }
}
