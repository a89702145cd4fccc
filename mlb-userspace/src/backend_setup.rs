//! `mlb backend-setup`: what a backend host needs for direct server return (`--forwarding
//! dsr`), checked (`--check`) or done, idempotently.
//!
//! The load balancers send the client's packet inside an outer IP header (IPIP, ip6ip6). The
//! backend must take the outer header off (a tunnel device of the kernel's `ipip` /
//! `ip6_tunnel` modules, or mlb's XDP decapsulation program), own the VIP so the inner packet
//! is delivered locally (without answering ARP for it: the VIP's owner on the network is the
//! router in front of the load balancers), and accept that packet although it came in on
//! another interface than its reply goes out of (`rp_filter` off). Its replies go straight to
//! the client.
//!
//! Done with the `ip` command and `/proc/sys` rather than an rtnetlink library: no extra
//! dependency or runtime for a one-shot command, and `--check` prints the very commands an
//! operator would type.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use crate::options::{BackendSetupOptions, DecapKind, XdpAttachMode};

mod explain;
pub mod xdp_decap;

pub use explain::dsr_section;

/// Why a backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BackendSetupError {
    #[error("`{command}`: {reason}")]
    Command { command: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "device {dev} exists but is a {found} device, not {want}: remove it or choose another name (--device / --device6)"
    )]
    WrongDevice {
        dev: String,
        found: String,
        want: &'static str,
    },
    #[error("--decap xdp needs the interface(s) the encapsulated packets arrive on (--iface)")]
    NoInterface,
    #[error("XDP decapsulation on {iface}: {reason}")]
    Decap { iface: String, reason: String },
}

/// A network device as `ip -d link` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// `info_kind` (`ipip`, `ip6tnl`, `veth`, ...; empty for plain devices such as `lo`).
    pub kind: String,
    pub up: bool,
}

/// What the host has now, of what the setup looks at.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub links: BTreeMap<String, LinkState>,
    /// Addresses by device.
    pub addrs: BTreeMap<String, Vec<IpAddr>>,
    /// Sysctl values by dotted key; absent when the key does not exist (yet).
    pub sysctls: BTreeMap<String, String>,
    /// Interfaces with a pinned XDP decapsulation link.
    pub decap_links: BTreeSet<String>,
}

/// One thing to do; displayed as the command that does it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    AddTunnel {
        dev: String,
        v6: bool,
    },
    LinkUp {
        dev: String,
    },
    AddAddr {
        dev: String,
        addr: IpAddr,
    },
    Sysctl {
        key: String,
        value: &'static str,
    },
    AttachDecap {
        iface: String,
        pin: PathBuf,
        mode: XdpAttachMode,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::AttachDecap { iface, pin, mode } => write!(
                f,
                "attach mlb's XDP decapsulation program to {iface} ({mode:?} mode, link pinned at {})",
                pin.display()
            ),
            Step::Sysctl { key, value } => write!(f, "sysctl -w {key}={value}"),
            _ => write!(f, "ip {}", self.ip_args().unwrap_or_default().join(" ")),
        }
    }
}

impl Step {
    /// The `ip` arguments of a step done by `ip`.
    fn ip_args(&self) -> Option<Vec<String>> {
        let args: Vec<&str> = match self {
            Step::AddTunnel { dev, v6: false } => {
                vec!["link", "add", dev, "type", "ipip", "external"]
            }
            Step::AddTunnel { dev, v6: true } => {
                vec![
                    "link", "add", dev, "type", "ip6tnl", "mode", "ip6ip6", "external",
                ]
            }
            Step::LinkUp { dev } => vec!["link", "set", dev, "up"],
            Step::AddAddr { dev, addr } => {
                let (cidr, extra) = match addr {
                    IpAddr::V4(a) => (format!("{a}/32"), None),
                    // No duplicate address detection: every backend has the VIP.
                    IpAddr::V6(a) => (format!("{a}/128"), Some("nodad")),
                };
                let mut v: Vec<String> = ["addr", "add", &cidr, "dev", dev]
                    .map(String::from)
                    .to_vec();
                v.extend(extra.map(String::from));
                return Some(v);
            }
            _ => return None,
        };
        Some(args.into_iter().map(String::from).collect())
    }

    /// Does the step.
    fn apply(&self) -> Result<(), BackendSetupError> {
        match self {
            Step::Sysctl { key, value } => {
                let path = sysctl_path(key);
                std::fs::write(&path, value)
                    .map_err(|source| BackendSetupError::Io { path, source })
            }
            Step::AttachDecap { iface, pin, mode } => xdp_decap::attach(iface, *mode, pin),
            _ => run_ip(&self.ip_args().unwrap_or_default()).map(drop),
        }
    }
}

/// The devices the VIPs go on: the tunnel devices (kernel decapsulation), or `lo` (XDP).
fn vip_device(opts: &BackendSetupOptions, vip: &IpAddr) -> String {
    match (opts.decap, vip) {
        (DecapKind::Xdp, _) => "lo".into(),
        (DecapKind::Kernel, IpAddr::V4(_)) => opts.device.clone(),
        (DecapKind::Kernel, IpAddr::V6(_)) => opts.device6.clone(),
    }
}

/// Where the decapsulation link of `iface` is pinned.
pub fn decap_pin(bpffs_dir: &Path, iface: &str) -> PathBuf {
    bpffs_dir.join("decap").join(iface)
}

/// The devices the setup looks at.
fn devices(opts: &BackendSetupOptions) -> BTreeSet<String> {
    let mut devs: BTreeSet<String> = opts.vip.iter().map(|v| vip_device(opts, v)).collect();
    if opts.decap == DecapKind::Xdp {
        devs.extend(opts.iface.iter().cloned());
    }
    devs
}

/// What is missing, in the order to do it: tunnel devices (or decapsulation programs), VIPs,
/// sysctls.
pub fn plan(opts: &BackendSetupOptions, seen: &Observed) -> Result<Vec<Step>, BackendSetupError> {
    let mut steps = Vec::new();
    let has_v4 = opts.vip.iter().any(IpAddr::is_ipv4);
    let mut rp_devs = Vec::new();
    match opts.decap {
        DecapKind::Kernel => {
            let tunnels = [
                (&opts.device, false, "ipip"),
                (&opts.device6, true, "ip6tnl"),
            ];
            for (dev, v6, want) in tunnels {
                if !opts.vip.iter().any(|v| v.is_ipv6() == v6) {
                    continue;
                }
                match seen.links.get(dev) {
                    None => steps.extend([
                        Step::AddTunnel {
                            dev: dev.clone(),
                            v6,
                        },
                        Step::LinkUp { dev: dev.clone() },
                    ]),
                    Some(l) if l.kind != want => {
                        return Err(BackendSetupError::WrongDevice {
                            dev: dev.clone(),
                            found: if l.kind.is_empty() {
                                "plain".into()
                            } else {
                                l.kind.clone()
                            },
                            want,
                        });
                    }
                    Some(l) if !l.up => steps.push(Step::LinkUp { dev: dev.clone() }),
                    Some(_) => {}
                }
            }
            rp_devs.push(opts.device.clone());
        }
        DecapKind::Xdp => {
            if opts.iface.is_empty() {
                return Err(BackendSetupError::NoInterface);
            }
            for iface in &opts.iface {
                if !seen.decap_links.contains(iface) {
                    let pin = decap_pin(&opts.bpffs_dir, iface);
                    steps.push(Step::AttachDecap {
                        iface: iface.clone(),
                        pin,
                        mode: opts.xdp_mode,
                    });
                }
            }
            rp_devs.extend(opts.iface.iter().cloned());
        }
    }
    for vip in &opts.vip {
        let dev = vip_device(opts, vip);
        if !seen.addrs.get(&dev).is_some_and(|a| a.contains(vip)) {
            steps.push(Step::AddAddr { dev, addr: *vip });
        }
    }
    if has_v4 {
        let mut wanted = vec![("net.ipv4.conf.all.rp_filter".to_owned(), "0")];
        wanted.extend(
            rp_devs
                .iter()
                .map(|d| (format!("net.ipv4.conf.{d}.rp_filter"), "0")),
        );
        wanted.push(("net.ipv4.conf.all.arp_ignore".into(), "1"));
        wanted.push(("net.ipv4.conf.all.arp_announce".into(), "2"));
        for (key, value) in wanted {
            if seen.sysctls.get(&key).map(String::as_str) != Some(value) {
                steps.push(Step::Sysctl { key, value });
            }
        }
    }
    Ok(steps)
}

/// Reads what [`plan`] needs from the host.
pub fn observe(opts: &BackendSetupOptions) -> Result<Observed, BackendSetupError> {
    let mut seen = Observed::default();
    for dev in devices(opts)
        .into_iter()
        .chain([opts.device.clone(), opts.device6.clone()])
    {
        let Ok(link) = run_ip(&["-j", "-d", "link", "show", "dev", &dev].map(String::from)) else {
            continue;
        };
        let link: serde_json::Value = serde_json::from_str(&link).unwrap_or_default();
        let kind = link[0]["linkinfo"]["info_kind"]
            .as_str()
            .unwrap_or_default();
        let up = link[0]["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP"));
        seen.links.insert(
            dev.clone(),
            LinkState {
                kind: kind.into(),
                up,
            },
        );
        let addrs = run_ip(&["-j", "addr", "show", "dev", &dev].map(String::from))?;
        let addrs: serde_json::Value = serde_json::from_str(&addrs).unwrap_or_default();
        let list = addrs[0]["addr_info"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ips = list
            .iter()
            .filter_map(|a| a["local"].as_str()?.parse().ok());
        seen.addrs.insert(dev.clone(), ips.collect());
        for key in ["rp_filter", "arp_ignore", "arp_announce"] {
            for scope in ["all", dev.as_str()] {
                let key = format!("net.ipv4.conf.{scope}.{key}");
                if let Ok(v) = std::fs::read_to_string(sysctl_path(&key)) {
                    seen.sysctls.insert(key, v.trim().to_owned());
                }
            }
        }
        if decap_pin(&opts.bpffs_dir, &dev).exists() {
            seen.decap_links.insert(dev);
        }
    }
    Ok(seen)
}

/// Does every step, in order.
pub fn apply(steps: &[Step]) -> Result<(), BackendSetupError> {
    steps.iter().try_for_each(Step::apply)
}

fn sysctl_path(key: &str) -> PathBuf {
    // Device names may hold dots (VLANs): only the fixed prefix is split.
    let mut parts = key.splitn(4, '.');
    let mut path = PathBuf::from("/proc/sys");
    for _ in 0..3 {
        path.push(parts.next().unwrap_or_default());
    }
    match parts.next() {
        // net.ipv4.conf.<dev>.<key>: the device is everything but the last part.
        Some(rest) => match rest.rsplit_once('.') {
            Some((dev, k)) => path.join(dev).join(k),
            None => path.join(rest),
        },
        None => path,
    }
}

fn run_ip(args: &[String]) -> Result<String, BackendSetupError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| BackendSetupError::Command {
            command: command.clone(),
            reason: format!("running ip (iproute2): {e}"),
        })?;
    if !out.status.success() {
        let mut reason = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if reason.contains("Unknown device type") {
            reason.push_str(
                " (this kernel has no ipip / ip6_tunnel support: load the module, or use --decap xdp)",
            );
        }
        return Err(BackendSetupError::Command { command, reason });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests;
