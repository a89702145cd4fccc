//! `/haproxy?stats;csv`: HAProxy 2.0's stats CSV, the version marathon-lb 1.15 ships.
//!
//! Exactly HAProxy 2.0's 99 columns, in its order, each value followed by a comma (so every line
//! ends with one), the header starting with `# `. `zdd.py` depends on all of it: it strips
//! `# ` and the trailing comma from the header, splits each row on commas (with `'` as the quote
//! character) and builds a namedtuple from all fields but the last, so one column more or less
//! (HAProxy 2.2 added `-`) breaks it. Values therefore never contain `,`, `'` or a newline.
//! Columns mlb has no figure for are empty, as HAProxy leaves columns that do not apply.
use super::{Counters, Proxy, Server, Snapshot};

/// HAProxy 2.0's columns, in order.
pub const COLUMNS: [&str; 99] = [
    "pxname",
    "svname",
    "qcur",
    "qmax",
    "scur",
    "smax",
    "slim",
    "stot",
    "bin",
    "bout",
    "dreq",
    "dresp",
    "ereq",
    "econ",
    "eresp",
    "wretr",
    "wredis",
    "status",
    "weight",
    "act",
    "bck",
    "chkfail",
    "chkdown",
    "lastchg",
    "downtime",
    "qlimit",
    "pid",
    "iid",
    "sid",
    "throttle",
    "lbtot",
    "tracked",
    "type",
    "rate",
    "rate_lim",
    "rate_max",
    "check_status",
    "check_code",
    "check_duration",
    "hrsp_1xx",
    "hrsp_2xx",
    "hrsp_3xx",
    "hrsp_4xx",
    "hrsp_5xx",
    "hrsp_other",
    "hanafail",
    "req_rate",
    "req_rate_max",
    "req_tot",
    "cli_abrt",
    "srv_abrt",
    "comp_in",
    "comp_out",
    "comp_byp",
    "comp_rsp",
    "lastsess",
    "last_chk",
    "last_agt",
    "qtime",
    "ctime",
    "rtime",
    "ttime",
    "agent_status",
    "agent_code",
    "agent_duration",
    "check_desc",
    "agent_desc",
    "check_rise",
    "check_fall",
    "check_health",
    "agent_rise",
    "agent_fall",
    "agent_health",
    "addr",
    "cookie",
    "mode",
    "algo",
    "conn_rate",
    "conn_rate_max",
    "conn_tot",
    "intercepted",
    "dcon",
    "dses",
    "wrew",
    "connect",
    "reuse",
    "cache_lookups",
    "cache_hits",
    "srv_icur",
    "src_ilim",
    "qtime_max",
    "ctime_max",
    "rtime_max",
    "ttime_max",
    "eint",
    "idle_conn_cur",
    "safe_conn_cur",
    "used_conn_cur",
    "need_conn_est",
];

/// HAProxy's `type` column.
const TYPE_FRONTEND: &str = "0";
const TYPE_BACKEND: &str = "1";
const TYPE_SERVER: &str = "2";

/// One row being filled, column by column.
struct Row([String; COLUMNS.len()]);

impl Row {
    fn new(pxname: &str, svname: &str, kind: &str) -> Row {
        let mut row = Row(std::array::from_fn(|_| String::new()));
        row.set("pxname", clean(pxname));
        row.set("svname", clean(svname));
        row.set("pid", "1");
        row.set("type", kind);
        row
    }

    fn set(&mut self, column: &str, value: impl ToString) {
        let i = COLUMNS
            .iter()
            .position(|c| *c == column)
            .unwrap_or_else(|| unreachable!("unknown CSV column {column}"));
        self.0[i] = value.to_string();
    }

    /// The session, byte and HTTP columns every row kind has.
    fn traffic(&mut self, c: &Counters) {
        self.set("scur", c.scur);
        self.set("stot", c.stot);
        self.set("bin", c.bin);
        if let Some(bout) = c.bout {
            self.set("bout", bout);
        }
        if let Some(h) = c.hrsp {
            for (col, v) in ["hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx"]
                .iter()
                .zip(h)
            {
                self.set(col, v);
            }
            self.set("hrsp_other", h[5]);
            self.set("req_tot", h.iter().sum::<u64>());
        }
    }

    /// New sessions per second, when measured.
    fn rate(&mut self, rate: Option<u64>) {
        if let Some(r) = rate {
            self.set("rate", r);
        }
    }

    fn write(&self, out: &mut String) {
        for v in &self.0 {
            out.push_str(v);
            out.push(',');
        }
        out.push('\n');
    }
}

/// Proxy and server names come from Marathon app ids: keep the CSV's separators out of them.
fn clean(name: &str) -> String {
    name.replace([',', '\'', '\n', '\r'], "_")
}

/// The CSV of `snapshot`: the header, then per service its FRONTEND row, its servers and its
/// BACKEND row.
pub fn render(snapshot: &Snapshot) -> String {
    let mut out = String::with_capacity(1024 + snapshot.proxies.len() * 2048);
    out.push_str("# ");
    for c in COLUMNS {
        out.push_str(c);
        out.push(',');
    }
    out.push('\n');
    for (iid, proxy) in snapshot.proxies.iter().enumerate() {
        write_proxy(&mut out, proxy, iid + 2);
    }
    out
}

fn write_proxy(out: &mut String, proxy: &Proxy, iid: usize) {
    let totals = proxy.totals();
    let mode = proxy.mode.as_str();
    let rate = proxy.rate();
    let mut fe = Row::new(&proxy.name, "FRONTEND", TYPE_FRONTEND);
    fe.traffic(&totals);
    fe.rate(rate);
    fe.set("status", "OPEN");
    fe.set("iid", iid);
    fe.set("sid", 0);
    fe.set("mode", mode);
    fe.write(out);
    for (sid, server) in proxy.servers.iter().enumerate() {
        server_row(proxy, server, iid, sid + 1).write(out);
    }
    let mut be = Row::new(&proxy.name, "BACKEND", TYPE_BACKEND);
    be.traffic(&totals);
    be.rate(rate);
    be.set("status", if proxy.backend_up() { "UP" } else { "DOWN" });
    let active = proxy.servers.iter().filter(|s| s.status.in_rotation());
    be.set(
        "weight",
        active.clone().map(|s| u64::from(s.weight)).sum::<u64>(),
    );
    be.set("act", active.count());
    be.set("bck", 0);
    be.set("iid", iid);
    be.set("sid", 0);
    be.set("lbtot", totals.stot);
    be.set("mode", mode);
    be.set("algo", "roundrobin");
    be.write(out);
}

fn server_row(proxy: &Proxy, server: &Server, iid: usize, sid: usize) -> Row {
    let mut row = Row::new(&proxy.name, &server.name, TYPE_SERVER);
    row.traffic(&server.counters);
    row.rate(server.rate);
    row.set("qcur", 0);
    row.set("qmax", 0);
    row.set("status", server.status.as_str());
    row.set("weight", server.weight);
    row.set("act", 1);
    row.set("bck", 0);
    if let Some(d) = server.last_change {
        row.set("lastchg", d.as_secs());
    }
    row.set("iid", iid);
    row.set("sid", sid);
    row.set("lbtot", server.counters.stot);
    if let Some((status, desc)) = server.check(proxy.checked) {
        row.set("check_status", status);
        row.set("check_desc", desc);
    }
    row.set("addr", clean(&server.addr.to_string()));
    row.set("mode", proxy.mode.as_str());
    row
}

/// One row of a stats CSV: its values by column name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record(std::collections::HashMap<String, String>);

impl Record {
    /// The value of `column` (empty when the CSV has no such column).
    pub fn get(&self, column: &str) -> &str {
        self.0.get(column).map_or("", String::as_str)
    }

    /// The value of `column` as a number, as zdd's `int(...)` reads it.
    pub fn int(&self, column: &str) -> Result<u64, ParseError> {
        self.get(column)
            .parse()
            .map_err(|_| ParseError::NotANumber {
                column: column.to_owned(),
                value: self.get(column).to_owned(),
            })
    }

    /// A server row (neither FRONTEND nor BACKEND).
    pub fn is_server(&self) -> bool {
        !matches!(self.get("svname"), "FRONTEND" | "BACKEND")
    }
}

/// Why a stats CSV is not one `zdd.py` can read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the stats CSV is empty (no header line)")]
    NoHeader,
    #[error("stats CSV column {column:?} is not a valid field name")]
    BadColumn { column: String },
    #[error("stats CSV line {line} is empty")]
    EmptyLine { line: usize },
    #[error("stats CSV line {line} has {got} fields before the trailing comma, the header {want}")]
    Width {
        line: usize,
        got: usize,
        want: usize,
    },
    #[error("stats CSV column {column} is {value:?}, not a number")]
    NotANumber { column: String, value: String },
}

/// Parses a stats CSV, or several concatenated (one per load balancer), by `zdd.py`'s rules:
/// the first line is the header (`# ` and the trailing comma stripped; its names must be
/// Python identifiers, as zdd makes a namedtuple of them); later lines starting with `#` (the
/// other load balancers' headers) are skipped; every other line must have exactly one field
/// per column plus the empty one after the trailing comma.
pub fn parse(text: &str) -> Result<Vec<Record>, ParseError> {
    let mut lines = text.lines();
    let header = lines.next().ok_or(ParseError::NoHeader)?;
    let columns: Vec<&str> = header
        .trim_start_matches(['#', ' '])
        .trim_end_matches(',')
        .split(',')
        .collect();
    if let Some(bad) = columns.iter().find(|c| {
        c.is_empty()
            || c.starts_with(|ch: char| ch.is_ascii_digit())
            || !c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    }) {
        return Err(ParseError::BadColumn {
            column: (*bad).to_owned(),
        });
    }
    let mut records = Vec::new();
    for (i, line) in lines.enumerate() {
        let line_no = i + 2;
        if line.is_empty() {
            return Err(ParseError::EmptyLine { line: line_no });
        }
        if line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != columns.len() + 1 {
            return Err(ParseError::Width {
                line: line_no,
                got: fields.len() - 1,
                want: columns.len(),
            });
        }
        let values = columns
            .iter()
            .zip(&fields)
            .map(|(c, v)| ((*c).to_owned(), (*v).to_owned()))
            .collect();
        records.push(Record(values));
    }
    Ok(records)
}
