//! `/haproxy?stats`: the stats page operators look at during incidents, in the spirit of
//! HAProxy's: one table per service (its FRONTEND row, one row per server, its BACKEND row),
//! state colours, sessions, rates, bytes, HTTP responses by class, last change and health.
//!
//! The page is one self-contained document (inline style, no script, no external asset, so it
//! works on an isolated network) that reloads itself every [`REFRESH_SECS`] seconds unless
//! asked not to (`;norefresh`, as HAProxy spells it). Every row carries `data-status` and its
//! names as attributes, so tools and tests can read it as well as people.
use std::{fmt::Write as _, time::Duration};

use super::{Counters, Proxy, Server, ServerStatus, Snapshot};

/// How often the page reloads itself.
pub const REFRESH_SECS: u32 = 5;

/// The page's style: HAProxy's colour code (green up, red down, blue maintenance, grey for no
/// check), compact tables.
const STYLE: &str = "\
body{font-family:sans-serif;font-size:13px;margin:12px;background:#fff;color:#000}\
h1{font-size:18px;margin:0 0 6px}h2{font-size:14px;margin:14px 0 4px}\
table{border-collapse:collapse;margin-bottom:8px}\
th,td{border:1px solid #999;padding:2px 6px;text-align:right;white-space:nowrap}\
th{background:#20507a;color:#fff;font-weight:normal}\
td.name{text-align:left}td.state{text-align:center;font-weight:bold}\
tr.fe td,tr.be td{background:#eef;font-weight:bold}\
tr.st-up td{background:#c0ffc0}tr.st-down td{background:#ff9090}\
tr.st-maint td{background:#9cc9ff}tr.st-nocheck td{background:#e8e8e8}\
tr.be.st-down td{background:#ff6060}\
.legend span{display:inline-block;padding:1px 8px;margin-right:4px;border:1px solid #999}\
.muted{color:#555}";

/// The page for `snapshot`, reloading itself when `refresh`.
pub fn render(snapshot: &Snapshot, refresh: bool) -> String {
    let mut out = String::with_capacity(4096 + snapshot.proxies.len() * 2048);
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    if refresh {
        let _ = write!(
            out,
            "<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">"
        );
    }
    let _ = write!(
        out,
        "<title>mlb statistics</title><style>{STYLE}</style></head><body>"
    );
    summary(&mut out, snapshot, refresh);
    for proxy in &snapshot.proxies {
        proxy_table(&mut out, proxy);
    }
    if let Some(xdp) = &snapshot.xdp {
        out.push_str(
            "<h2>XDP program</h2><table id=\"xdp\"><tr><th>counter</th><th>value</th></tr>",
        );
        for (name, value) in &xdp.counters {
            let _ = write!(
                out,
                "<tr><td class=\"name\">{name}</td><td>{value}</td></tr>"
            );
        }
        let _ = write!(
            out,
            "<tr><td class=\"name\">conntrack entries</td><td>{}</td></tr></table>",
            xdp.conntrack_entries
        );
    }
    out.push_str("</body></html>\n");
    out
}

/// The heading: what the page shows, the server counts by state, the legend.
fn summary(out: &mut String, snapshot: &Snapshot, refresh: bool) {
    let servers = snapshot.proxies.iter().flat_map(|p| &p.servers);
    let count = |st: ServerStatus| servers.clone().filter(|s| s.status == st).count();
    let _ = write!(
        out,
        "<h1>mlb statistics</h1><p id=\"summary\">{} services, {} servers: \
         <b>{}</b> up, <b>{}</b> no check, <b>{}</b> down, <b>{}</b> maintenance (draining). \
         <span class=\"muted\">{}</span></p>",
        snapshot.proxies.len(),
        servers.clone().count(),
        count(ServerStatus::Up),
        count(ServerStatus::NoCheck),
        count(ServerStatus::Down),
        count(ServerStatus::Maint),
        if refresh {
            format!("Refreshes every {REFRESH_SECS} s; <a href=\"?stats;norefresh\">stop</a>.")
        } else {
            "<a href=\"?stats\">Refresh automatically</a>.".to_owned()
        },
    );
    out.push_str(
        "<p class=\"legend\"><span style=\"background:#c0ffc0\">UP</span>\
         <span style=\"background:#ff9090\">DOWN</span>\
         <span style=\"background:#9cc9ff\">MAINT (draining)</span>\
         <span style=\"background:#e8e8e8\">no check</span> \
         <a href=\"?stats;csv\">CSV export</a></p>",
    );
}

const HEADER: &str = "<tr><th rowspan=\"2\">name</th><th rowspan=\"2\">status</th>\
<th rowspan=\"2\">last change</th><th rowspan=\"2\">health</th><th rowspan=\"2\">weight</th>\
<th colspan=\"3\">sessions</th><th colspan=\"2\">bytes</th><th colspan=\"5\">responses</th></tr>\
<tr><th>cur</th><th>total</th><th>rate/s</th><th>in</th><th>out</th>\
<th>1xx</th><th>2xx</th><th>3xx</th><th>4xx</th><th>5xx</th></tr>";

/// One service: its name and mode, then FRONTEND, servers, BACKEND.
fn proxy_table(out: &mut String, proxy: &Proxy) {
    let name = escape(&proxy.name);
    let _ = write!(
        out,
        "<h2>{name} <span class=\"muted\">({} {}, port {})</span></h2>\
         <table class=\"proxy\" data-proxy=\"{name}\">{HEADER}",
        proxy.mode.as_str(),
        escape(&proxy.app_id),
        proxy.port,
    );
    let totals = proxy.totals();
    let rate = proxy.rate();
    let fe = Line {
        kind: "fe",
        name: "Frontend",
        status: "OPEN",
        class: "st-open",
        last_change: None,
        health: None,
        weight: None,
    };
    fe.write(out, &name, &totals, rate);
    for server in &proxy.servers {
        server_line(proxy, server).write(out, &name, &server.counters, server.rate);
    }
    let up = proxy.backend_up();
    let weight = proxy
        .servers
        .iter()
        .filter(|s| s.status.in_rotation())
        .map(|s| u64::from(s.weight))
        .sum();
    let be = Line {
        kind: "be",
        name: "Backend",
        status: if up { "UP" } else { "DOWN" },
        class: if up { "st-up" } else { "st-down" },
        last_change: None,
        health: None,
        weight: Some(weight),
    };
    be.write(out, &name, &totals, rate);
    out.push_str("</table>");
    if totals.bout.is_none() {
        // The XDP dataplane counts both directions as one figure.
        out.push_str("<p class=\"muted\">bytes in: both directions</p>");
    }
}

fn server_line<'a>(proxy: &Proxy, server: &'a Server) -> Line<'a> {
    let class = match server.status {
        ServerStatus::Up => "st-up",
        ServerStatus::Down => "st-down",
        ServerStatus::Maint => "st-maint",
        ServerStatus::NoCheck => "st-nocheck",
    };
    Line {
        kind: "srv",
        name: &server.name,
        status: server.status.as_str(),
        class,
        last_change: server.last_change,
        health: server.check(proxy.checked).map(|(_, desc)| desc),
        weight: Some(u64::from(server.weight)),
    }
}

/// One row of a service's table.
struct Line<'a> {
    /// `fe`, `srv` or `be`.
    kind: &'static str,
    name: &'a str,
    status: &'static str,
    class: &'static str,
    last_change: Option<Duration>,
    health: Option<&'static str>,
    weight: Option<u64>,
}

impl Line<'_> {
    fn write(&self, out: &mut String, proxy: &str, c: &Counters, rate: Option<u64>) {
        let name = escape(self.name);
        let _ = write!(
            out,
            "<tr class=\"{} {}\" data-proxy=\"{proxy}\" data-name=\"{name}\" \
             data-status=\"{}\"><td class=\"name\">{name}</td><td class=\"state\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{}{}",
            self.kind,
            self.class,
            self.status,
            self.status,
            self.last_change
                .map_or_else(|| "-".to_owned(), human_duration),
            self.health.unwrap_or("-"),
            opt(self.weight),
            c.scur,
            c.stot,
            opt(rate),
            bytes_cell(Some(c.bin)),
            bytes_cell(c.bout),
        );
        match c.hrsp {
            Some(h) => {
                for v in &h[..5] {
                    let _ = write!(out, "<td>{v}</td>");
                }
            }
            None => out.push_str("<td colspan=\"5\" class=\"muted\">-</td>"),
        }
        out.push_str("</tr>");
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// A byte count, readable, with the exact figure as its tooltip.
fn bytes_cell(bytes: Option<u64>) -> String {
    let Some(b) = bytes else {
        return "<td class=\"muted\">-</td>".to_owned();
    };
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = b as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let shown = if unit == 0 {
        format!("{b} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    };
    format!("<td title=\"{b}\">{shown}</td>")
}

/// `3d4h`, `2h05m`, `4m12s`, `9s`: HAProxy's way of showing how long ago.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, mins, secs) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{hours}h")
    } else if hours > 0 {
        format!("{hours}h{mins:02}m")
    } else if mins > 0 {
        format!("{mins}m{secs:02}s")
    } else {
        format!("{secs}s")
    }
}

/// Names come from Marathon app ids and labels: never markup.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_haproxys() {
        assert_eq!(human_duration(Duration::from_secs(9)), "9s");
        assert_eq!(human_duration(Duration::from_secs(252)), "4m12s");
        assert_eq!(human_duration(Duration::from_secs(7500)), "2h05m");
        assert_eq!(
            human_duration(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3d4h"
        );
    }

    #[test]
    fn names_from_marathon_cannot_inject_markup() {
        assert_eq!(
            escape("<script>\"x\"&'"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;"
        );
    }
}
