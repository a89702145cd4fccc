//! End-to-end helpers for `mlb run` watching Marathon (the simulator): the agent process and its
//! admin API, free ports, small blocking HTTP / TCP clients, and a bounded request loop that
//! counts answers and failures while a test changes Marathon.
//!
//! Everything is bounded in time and cleaned up on drop, also on panic: the agent is killed by
//! PID, its work directory removed.
use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::Value;

use crate::{
    l4_lab::echo_line,
    mlb_bin::mlb_bin,
    netns::{Child, Netns},
};

/// Bound of every socket operation of these clients.
pub const IO_TIMEOUT: Duration = Duration::from_secs(3);

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);
static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A port that is free for TCP and UDP on every address now, from 20000–29999: below the
/// kernel's ephemeral range (so no outgoing connection takes it meanwhile) and apart from the
/// simulator's task ports (31000–32999). Each call in a process returns a different port; the
/// start offset depends on the PID, so parallel test binaries rarely meet.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20_000;
    const LEN: u32 = 10_000;
    let base = (std::process::id().wrapping_mul(7919)) % LEN;
    for _ in 0..LEN {
        let n = u32::from(NEXT_PORT.fetch_add(1, Ordering::Relaxed));
        let port = (FIRST + (base + n) % LEN) as u16;
        let tcp = TcpListener::bind(("0.0.0.0", port)).is_ok();
        let udp = UdpSocket::bind(("0.0.0.0", port)).is_ok();
        if tcp && udp {
            return port;
        }
    }
    panic!("no free port in {FIRST}-{}", FIRST + LEN - 1);
}

/// `mlb run` flags for an agent on loopback with the userspace dataplane, reading `marathon`,
/// its HTTP, HTTPS and app-id frontends on the given ports (the tests' common setup).
pub fn loopback_args(marathon: &str, http: u16, https: u16, appid: u16) -> Vec<String> {
    let (http, https, appid) = (http.to_string(), https.to_string(), appid.to_string());
    [
        "-m",
        marathon,
        "--group",
        "external",
        "--dataplane",
        "userspace",
        "--vip",
        "127.0.0.1",
        "--http-port",
        &http,
        "--https-port",
        &https,
        "--appid-port",
        &appid,
    ]
    .map(String::from)
    .to_vec()
}

/// Polls `f` every 20 ms until it returns `Ok(Some(v))`, for at most `timeout`; the error names
/// `what` and the last error or state seen.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => last = String::from("(condition false)"),
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `mlb run`, killed by PID on drop; optionally inside a network namespace, whose
/// threads then also make the admin requests.
pub struct Mlb<'ns> {
    child: Child,
    ns: Option<&'ns Netns>,
    dir: PathBuf,
    /// Set by [`Mlb::finish`]; otherwise the log is printed on drop (the test failed).
    finished: bool,
    /// Where its admin API listens (inside `ns` when given).
    pub admin: SocketAddr,
}

impl<'ns> Mlb<'ns> {
    /// Starts `mlb run --admin-addr <admin> <args>` (in `ns` when given), logging to a file of
    /// its own, and waits (up to 20 s) until it reports a first successful sync from Marathon.
    pub fn start(ns: Option<&'ns Netns>, admin: SocketAddr, args: &[String]) -> Result<Self> {
        let mut argv: Vec<String> = vec!["run".into(), "--admin-addr".into(), admin.to_string()];
        argv.extend(args.iter().cloned());
        Self::start_argv(ns, admin, &argv, &[])
    }

    /// Starts `mlb <argv>` (the whole command line: `admin` must be where it puts its admin
    /// API) with `env` added to its environment, and waits until it reports a first sync.
    pub fn start_argv(
        ns: Option<&'ns Netns>,
        admin: SocketAddr,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<Self> {
        Self::start_program(ns, admin, &mlb_bin(), argv, env)
    }

    /// [`Mlb::start`], with the open-files limit (soft and hard) set to `nofile` when given, as
    /// on hosts with the common 1,024 (through `prlimit`, which execs mlb: the PID is mlb's).
    pub fn start_limited(
        ns: Option<&'ns Netns>,
        admin: SocketAddr,
        args: &[String],
        nofile: Option<u64>,
    ) -> Result<Self> {
        let Some(n) = nofile else {
            return Self::start(ns, admin, args);
        };
        let bin = mlb_bin();
        let bin = bin.to_str().context("mlb path")?.to_owned();
        let mut argv = vec![format!("--nofile={n}:{n}"), "--".into(), bin, "run".into()];
        argv.extend(["--admin-addr".into(), admin.to_string()]);
        argv.extend(args.iter().cloned());
        Self::start_program(ns, admin, std::path::Path::new("prlimit"), &argv, &[])
    }

    /// Like [`Mlb::start_argv`] with another program that runs mlb (`podman run ... IMAGE`).
    pub fn start_program(
        ns: Option<&'ns Netns>,
        admin: SocketAddr,
        program: &std::path::Path,
        argv: &[String],
        env: &[(String, String)],
    ) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "mlbt-e2e-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = fs::File::create(dir.join("mlb.log"))?;
        let bin = program.to_str().context("program path")?;
        let configure = |c: &mut Command| {
            c.args(argv)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .env("NO_COLOR", "1")
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
        };
        // `ip netns exec` execs mlb: the PID is mlb's.
        let child = if let Some(ns) = ns {
            ns.spawn_command(bin, configure)?
        } else {
            let mut cmd = Command::new(bin);
            configure(&mut cmd);
            Child(cmd.spawn().with_context(|| format!("spawning {bin}"))?)
        };
        let mut mlb = Mlb {
            child,
            ns,
            dir,
            finished: false,
            admin,
        };
        mlb.wait_synced(Duration::from_secs(20))?;
        Ok(mlb)
    }

    /// Its resident memory, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")
    }

    /// The agent's PID.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the agent to exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        self.child.terminate(timeout)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("mlb.log")).unwrap_or_default()
    }

    /// Fails (with the log) if the agent has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.0.try_wait()? {
            bail!("mlb exited ({status}):\n{}", self.log());
        }
        Ok(())
    }

    fn wait_synced(&mut self, timeout: Duration) -> Result<()> {
        wait_for("mlb to report synced", timeout, || {
            if let Some(status) = self.child.0.try_wait()? {
                return Ok(Some(Err(anyhow!("mlb exited ({status})"))));
            }
            Ok(self
                .status()
                .is_ok_and(|s| s["synced"] == true)
                .then_some(Ok(())))
        })
        .and_then(|exited| exited)
        .with_context(|| format!("mlb log:\n{}", self.log()))
    }

    /// Stops the agent at the end of a test that passed. An agent dropped without it (an error
    /// returned early, a panic) prints its log, so the failure can be understood.
    pub fn finish(mut self) {
        self.finished = true;
    }

    /// Runs `f` where the agent's sockets are (its namespace, or here).
    pub fn here<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        match self.ns {
            Some(ns) => ns.enter(f),
            None => Ok(f()),
        }
    }

    /// `GET path` on the admin API.
    pub fn admin_get(&self, path: &str) -> Result<HttpReply> {
        let addr = self.admin;
        self.here(|| http_get(addr, "mlb-admin", path))?
    }

    /// `/haproxy?stats;csv`, parsed by zdd.py's rules.
    pub fn stats_csv(&self) -> Result<Vec<mlb::stats::csv::Record>> {
        let reply = self.admin_get("/haproxy?stats;csv")?;
        ensure!(reply.status == 200, "stats CSV: HTTP {}", reply.status);
        Ok(mlb::stats::csv::parse(&reply.body)?)
    }

    /// `/_mlb/status` as JSON.
    pub fn status(&self) -> Result<Value> {
        let reply = self.admin_get("/_mlb/status")?;
        ensure!(reply.status == 200, "/_mlb/status: {}", reply.status);
        Ok(serde_json::from_str(&reply.body)?)
    }

    /// `/_mlb/explain/<app_id>` as JSON (the app's explanations); `None` when mlb answers 404
    /// (no such app in Marathon's answer).
    pub fn explain(&self, app_id: &str) -> Result<Option<Value>> {
        let reply = self.admin_get(&format!("/_mlb/explain{app_id}"))?;
        match reply.status {
            200 => Ok(Some(serde_json::from_str(&reply.body)?)),
            404 => Ok(None),
            s => bail!("/_mlb/explain{app_id}: HTTP {s}: {}", reply.body),
        }
    }

    /// The text of `mlb explain <app_id>` run against this agent's admin API (the CLI).
    pub fn explain_cli(&self, app_id: &str) -> Result<String> {
        let bin = mlb_bin();
        let admin = self.admin.to_string();
        let out = self.here(|| {
            Command::new(&bin)
                .args(["explain", "-v", app_id, "--admin-addr", &admin])
                .env("NO_COLOR", "1")
                .output()
        })??;
        ensure!(
            out.status.success(),
            "mlb explain {app_id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The task ids mlb routes to (active backends) for service port `index` of `app_id`.
    pub fn active_tasks(&self, app_id: &str, index: usize) -> Result<Vec<String>> {
        let Some(explained) = self.explain(app_id)? else {
            return Ok(Vec::new());
        };
        let mut ids = Vec::new();
        for app in explained.as_array().into_iter().flatten() {
            for port in app["ports"].as_array().into_iter().flatten() {
                if port["index"] != index {
                    continue;
                }
                for b in port["backends"].as_array().into_iter().flatten() {
                    if b["state"] == "active" {
                        let id = b["id"].as_str().unwrap_or_default();
                        // Backend ids are `<task id>:<port index>`.
                        let task = id.rsplit_once(':').map_or(id, |(t, _)| t);
                        ids.push(task.to_owned());
                    }
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Waits until mlb routes exactly `tasks` for port `index` of `app_id`.
    pub fn wait_routed(&self, app_id: &str, index: usize, tasks: &[String]) -> Result<()> {
        let mut want = tasks.to_vec();
        want.sort();
        wait_for(
            &format!("mlb to route {app_id} port {index} to {want:?}"),
            Duration::from_secs(10),
            || {
                let got = self.active_tasks(app_id, index)?;
                if got == want {
                    Ok(Some(()))
                } else {
                    bail!("routed to {got:?}")
                }
            },
        )
    }
}

impl Drop for Mlb<'_> {
    fn drop(&mut self) {
        if !self.finished {
            eprintln!("--- mlb log ({}) ---\n{}", self.dir.display(), self.log());
        }
        // The `child` guard then kills the agent by PID.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP response.
#[derive(Clone, Debug)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl HttpReply {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The simulator task that answered: its `X-Task-Id`, failing on anything but a 200.
    pub fn task_id(&self) -> Result<String> {
        ensure!(
            self.status == 200,
            "HTTP {} instead of 200: {}",
            self.status,
            self.body.trim()
        );
        self.header("x-task-id")
            .map(str::to_owned)
            .with_context(|| format!("no X-Task-Id in the answer: {self:?}"))
    }
}

/// A TCP connection from the calling thread's namespace, every operation bounded by
/// [`IO_TIMEOUT`].
fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A client connection speaking HTTP/1.1 with keep-alive (directly to a backend, or through a
/// TCP or HTTP load balancer).
pub struct HttpConn {
    reader: BufReader<TcpStream>,
}

impl HttpConn {
    /// Connects (from the calling thread's namespace), bounded by [`IO_TIMEOUT`].
    pub fn open(addr: SocketAddr) -> Result<HttpConn> {
        Ok(HttpConn {
            reader: BufReader::new(connect(addr)?),
        })
    }

    /// Sends `GET path` with `Host: host` and reads the response (`Content-Length` bodies, or
    /// until EOF with `close`).
    pub fn get(&mut self, host: &str, path: &str, close: bool) -> Result<HttpReply> {
        let connection = if close { "close" } else { "keep-alive" };
        write!(
            self.reader.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {connection}\r\n\r\n"
        )?;
        let mut line = String::new();
        ensure!(
            self.reader.read_line(&mut line)? > 0,
            "connection closed before a response"
        );
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            ensure!(
                self.reader.read_line(&mut line)? > 0,
                "connection closed in the headers"
            );
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let mut body = Vec::new();
        match length {
            Some(n) => {
                body.resize(n, 0);
                self.reader.read_exact(&mut body)?;
            }
            None => {
                self.reader.read_to_end(&mut body)?;
            }
        }
        Ok(HttpReply {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// One `GET` on a fresh connection (`Connection: close`).
pub fn http_get(addr: SocketAddr, host: &str, path: &str) -> Result<HttpReply> {
    HttpConn::open(addr)?.get(host, path, true)
}

/// A long-lived plain TCP connection to an echo backend.
pub struct EchoConn {
    reader: BufReader<TcpStream>,
}

impl EchoConn {
    /// Connects (from the calling thread's namespace).
    pub fn open(addr: SocketAddr) -> Result<EchoConn> {
        Ok(EchoConn {
            reader: BufReader::new(connect(addr)?),
        })
    }

    /// Sends one line (it must not look like an HTTP request: lower case) and checks the echo.
    pub fn echo(&mut self, msg: &str) -> Result<()> {
        echo_line(&mut self.reader, msg)
    }
}

/// What a [`RequestLoop`] saw.
#[derive(Debug, Default, Clone)]
pub struct LoopReport {
    /// Answers per task id.
    pub answers: BTreeMap<String, usize>,
    /// Task ids in the order they answered.
    pub sequence: Vec<String>,
    /// Failed requests, with the error.
    pub failures: Vec<String>,
}

impl LoopReport {
    /// Requests made.
    pub fn total(&self) -> usize {
        self.sequence.len() + self.failures.len()
    }
}

/// A thread that repeats one request (returning the answering task id) every few milliseconds
/// until stopped (or for at most 60 s, or the limit given), counting answers and failures.
pub struct RequestLoop {
    name: String,
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<LoopReport>>,
    thread: Option<JoinHandle<()>>,
}

impl RequestLoop {
    /// Starts the loop; `request` runs on the loop's thread.
    pub fn start(name: &str, request: impl Fn() -> Result<String> + Send + 'static) -> RequestLoop {
        Self::start_for(name, Duration::from_secs(60), request)
    }

    /// [`RequestLoop::start`], running for at most `limit` instead of 60 s (soak tests).
    pub fn start_for(
        name: &str,
        limit: Duration,
        request: impl Fn() -> Result<String> + Send + 'static,
    ) -> RequestLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(LoopReport::default()));
        let thread = {
            let (stop, report) = (stop.clone(), report.clone());
            std::thread::spawn(move || {
                let end = Instant::now() + limit;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    let result = request();
                    let mut r = report.lock().expect("loop report");
                    match result {
                        Ok(id) => {
                            *r.answers.entry(id.clone()).or_insert(0) += 1;
                            r.sequence.push(id);
                        }
                        Err(e) => r.failures.push(format!("{e:#}")),
                    }
                    drop(r);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        RequestLoop {
            name: name.to_owned(),
            stop,
            report,
            thread: Some(thread),
        }
    }

    /// What the loop saw so far.
    pub fn snapshot(&self) -> LoopReport {
        self.report.lock().expect("loop report").clone()
    }

    /// Waits until the loop has seen an answer from every one of `tasks` since `from` requests
    /// (bounded).
    pub fn wait_answered_by(&self, tasks: &[String], from: usize) -> Result<()> {
        wait_for(
            &format!("{} answers from every task of {tasks:?}", self.name),
            Duration::from_secs(10),
            || {
                let r = self.snapshot();
                let seen = r.sequence.get(from..).unwrap_or_default();
                let missing: Vec<&String> = tasks.iter().filter(|t| !seen.contains(t)).collect();
                if missing.is_empty() {
                    Ok(Some(()))
                } else {
                    bail!(
                        "no answer yet from {missing:?} ({} answers, {} failures)",
                        seen.len(),
                        r.failures.len()
                    )
                }
            },
        )
    }

    /// Stops the loop and returns what it saw.
    pub fn stop(mut self) -> LoopReport {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.snapshot()
    }

    /// Checks no request failed so far.
    pub fn assert_no_failures(&self, during: &str) -> Result<()> {
        let r = self.snapshot();
        ensure!(
            r.failures.is_empty(),
            "{}: {} of {} requests failed during {during}; first: {:?}",
            self.name,
            r.failures.len(),
            r.total(),
            r.failures.first()
        );
        Ok(())
    }
}

impl Drop for RequestLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
