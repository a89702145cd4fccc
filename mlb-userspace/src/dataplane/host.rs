//! What the XDP dataplane needs from the host it runs on: interface indexes and addresses, the
//! SNAT port reservation, and the forwarding sysctls `bpf_fib_lookup` depends on.
//!
//! Interfaces are read with `ip -j` (iproute2), which answers for the network namespace the agent
//! runs in; sysctls under `/proc/sys/net` are likewise those of the agent's namespace.
use std::{net::IpAddr, process::Command};

use tracing::{info, warn};

/// Why a host query failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("interface {iface}: {reason}")]
    Interface { iface: String, reason: String },
    #[error("{path}: {source}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn ip_json(iface: &str, args: &[&str]) -> Result<serde_json::Value, HostError> {
    let err = |reason: String| HostError::Interface {
        iface: iface.to_owned(),
        reason,
    };
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .args(["dev", iface])
        .output()
        .map_err(|e| err(format!("running ip (iproute2): {e}")))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| err(format!("unexpected `ip -j` output: {e}")))
}

/// The interface's index.
pub fn ifindex(iface: &str) -> Result<u32, HostError> {
    let v = ip_json(iface, &["link", "show"])?;
    v.get(0)
        .and_then(|l| l.get("ifindex"))
        .and_then(serde_json::Value::as_u64)
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| HostError::Interface {
            iface: iface.to_owned(),
            reason: "no ifindex in `ip -j link` output".into(),
        })
}

/// The interface's global (non link-local) addresses.
pub fn addresses(iface: &str) -> Result<Vec<IpAddr>, HostError> {
    let v = ip_json(iface, &["addr", "show"])?;
    let infos = v
        .get(0)
        .and_then(|l| l.get("addr_info"))
        .and_then(serde_json::Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(infos
        .iter()
        .filter(|a| a.get("scope").and_then(serde_json::Value::as_str) == Some("global"))
        .filter_map(|a| a.get("local")?.as_str()?.parse().ok())
        .collect())
}

/// Adds `first-last` to `net.ipv4.ip_local_reserved_ports` (which also covers IPv6), keeping
/// what is there: the kernel then never picks a SNAT port as an ephemeral port of a local socket.
pub fn reserve_ports(first: u16, last: u16) -> Result<(), HostError> {
    let path = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let sysctl_err = |source| HostError::Sysctl {
        path: path.into(),
        source,
    };
    let current = std::fs::read_to_string(path).map_err(sysctl_err)?;
    let range = format!("{first}-{last}");
    let current = current.trim();
    if current.split(',').any(|r| r == range) {
        return Ok(());
    }
    let value = if current.is_empty() {
        range
    } else {
        format!("{current},{range}")
    };
    std::fs::write(path, &value).map_err(sysctl_err)?;
    info!(ports = %format!("{first}-{last}"), "SNAT ports reserved from local ephemeral use");
    Ok(())
}

/// Warns about each XDP interface on which `bpf_fib_lookup` will refuse to forward because
/// forwarding is off (the kernel checks the ingress interface), for the families in use.
/// Returns the ones that are off.
pub fn check_forwarding(ifaces: &[String], v4: bool, v6: bool) -> Vec<String> {
    let mut off = Vec::new();
    for iface in ifaces {
        let families = [
            (
                v4,
                "IPv4",
                format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"),
            ),
            (
                v6,
                "IPv6",
                format!("/proc/sys/net/ipv6/conf/{iface}/forwarding"),
            ),
        ];
        for (family, path) in families
            .into_iter()
            .filter(|(used, ..)| *used)
            .map(|(_, f, p)| (f, p))
        {
            if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "0") {
                warn!(
                    iface,
                    "{family} forwarding is off on {iface}: the XDP program cannot forward {family} \
                     service traffic arriving there (bpf_fib_lookup needs it). Enable it with \
                     `sysctl -w {}=1`",
                    path.trim_start_matches("/proc/sys/").replace('/', ".")
                );
                off.push(format!("{iface} ({family})"));
            }
        }
    }
    off
}

/// Sets `net.ipv4.conf.<iface>.accept_local=1` on each XDP interface.
///
/// When the next hop of a rewritten packet has no neighbour entry yet, the program hands the
/// packet to the kernel to forward it and resolve ARP. Its source is then the load balancer's
/// own SNAT address (or VIP, for replies), which the kernel drops as a "martian" unless
/// `accept_local` is on. Only IPv4 has this check.
pub fn accept_local_sources(ifaces: &[String]) -> Result<(), HostError> {
    for iface in ifaces {
        let path = format!("/proc/sys/net/ipv4/conf/{iface}/accept_local");
        std::fs::write(&path, "1").map_err(|source| HostError::Sysctl { path, source })?;
    }
    Ok(())
}
