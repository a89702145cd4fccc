//! The direct-server-return part of `mlb explain --forwarding dsr`: what every backend host
//! needs, and which backends DSR cannot reach (not on their service port).
use std::{fmt::Write as _, net::IpAddr};

/// The DSR section for an explain document (`/_mlb/explain`'s JSON) of VIPs `vips`.
pub fn dsr_section(apps: &serde_json::Value, vips: &[IpAddr]) -> String {
    let vip_flags: Vec<String> = vips.iter().map(|v| format!("--vip {v}")).collect();
    let vip_flags = if vip_flags.is_empty() {
        "--vip <VIP>".to_owned()
    } else {
        vip_flags.join(" ")
    };
    let mut out = format!(
        "direct server return (--forwarding dsr): every backend host needs `mlb backend-setup \
         {vip_flags}` (`--check` says what it lacks), its tasks listening on the service port\n"
    );
    for app in apps.as_array().into_iter().flatten() {
        let ports = app["ports"].as_array().into_iter().flatten();
        for p in ports.filter(|p| p["exposed"] == true && p["dataplane"] == "l4") {
            let Some(service_port) = p["service_port"].as_u64() else {
                continue;
            };
            let off: Vec<&str> = p["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b["addr"].as_str())
                .filter(|a| !a.ends_with(&format!(":{service_port}")))
                .collect();
            if !off.is_empty() {
                let _ = writeln!(
                    out,
                    "{} port {service_port}: left out by DSR (task port is not the service \
                     port): {}",
                    app["app_id"].as_str().unwrap_or("?"),
                    off.join(", ")
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn names_what_backends_need_and_the_tasks_dsr_cannot_reach() {
        let apps = json!([
            {"app_id": "/db", "ports": [{"exposed": true, "dataplane": "l4", "service_port": 5432,
              "backends": [{"addr": "198.18.2.11:5432"}, {"addr": "198.18.2.12:31005"}]}]},
            {"app_id": "/web", "ports": [{"exposed": true, "dataplane": "http", "service_port": 80,
              "backends": [{"addr": "198.18.2.11:31000"}]}]},
        ]);
        let text = dsr_section(&apps, &["203.0.113.10".parse().unwrap()]);
        assert!(
            text.contains("mlb backend-setup --vip 203.0.113.10"),
            "{text}"
        );
        assert!(text.contains("/db port 5432: left out by DSR"), "{text}");
        assert!(
            text.contains("198.18.2.12:31005") && !text.contains("198.18.2.11:5432"),
            "{text}"
        );
        assert!(!text.contains("/web"), "HTTP ports are not DSR's: {text}");
    }
}
