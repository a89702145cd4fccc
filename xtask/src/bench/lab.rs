//! The benchmark lab: network namespaces and the processes started in them, owned by one guard
//! ([`Lab`]) that stops every process by PID ([`ChildGuard`]) and deletes every namespace when
//! dropped, on success, error or panic.
//!
//! Topology: the load balancer's host (lb) has one plain veth towards the client and one towards
//! a bridge with the backends, so an XDP program has exactly two attach points and one redirect
//! target per direction:
//! ```text
//!  ns cli          ns lb (the LB host)              ns sw (bridge)         ns be1, be2
//!  cli-lb ==== lb-cli        lb-sw ============== sw-lb ─┐
//!  198.18.1.1  198.18.1.2    198.18.2.1                 ├ br0
//!   │          (VIP)         (SNAT source)       sw-beN ┘ ==== beN-sw 198.18.2.1N
//!  cli-cli2 198.18.3.2 ==== cli2-cli 198.18.3.1 (ns cli2)
//! ```
//! cli2 is a second client host, routed by cli: lb sees a second client address.
//! No default route anywhere; cli reaches 198.18.2.0/24 via lb and the backends reach
//! 198.18.1.0/24 via lb, which forwards only in the "direct" case. IPv4 only.
use std::{
    fs,
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Namespace names (prefixed so they cannot be mistaken for anyone else's).
pub const NS_CLI: &str = "mlbb-cli";
pub const NS_CLI2: &str = "mlbb-cli2";
pub const NS_LB: &str = "mlbb-lb";
pub const NS_SW: &str = "mlbb-sw";
pub const NS_BE: [&str; 2] = ["mlbb-be1", "mlbb-be2"];

pub const CLIENT_IP: &str = "198.18.1.1";
pub const CLIENT2_IP: &str = "198.18.3.1";
const CLIENT2_NET: &str = "198.18.3.0/24";
pub const VIP: &str = "198.18.1.2";
pub const LB_BACKEND_SIDE_IP: &str = "198.18.2.1";
pub const BACKEND_IPS: [&str; 2] = ["198.18.2.11", "198.18.2.12"];

const ALL_NAMESPACES: [&str; 6] = [NS_CLI, NS_CLI2, NS_LB, NS_SW, NS_BE[0], NS_BE[1]];

/// Where a run keeps its configs and logs, and the PIDs of what it started (so that a run killed
/// before its guard ran can be cleaned up by the next one).
const WORK_DIR: &str = "/tmp/mlb-bench";
const PID_FILE: &str = "/tmp/mlb-bench.pids";
/// Held (exclusive `flock`) for a run's whole life: two runs share the namespace names, the work
/// directory and the PID file, so a second run would kill the first one's processes and delete
/// its namespaces as "stale" and both would report garbage. The second one waits instead.
const LOCK_FILE: &str = "/tmp/mlb-bench.lock";
/// Only processes with one of these names are ever killed from a stale PID file.
const OUR_PROGRAMS: &[&str] = &["nginx", "haproxy", "mlb", "l7_bench_proxy", "iperf3", "wrk"];

/// A process started in the lab.
struct Proc {
    name: String,
    child: ChildGuard,
}

/// The namespaces and processes of one benchmark run.
pub struct Lab {
    pub dir: PathBuf,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
    /// The run's lock; released when the lab is dropped (after its namespaces are gone).
    _lock: fs::File,
}

impl Lab {
    /// Cleans what an interrupted run left behind, then builds the topology.
    pub fn create() -> Result<Lab> {
        let lock = exclusive_run_lock()?;
        cleanup_stale();
        let dir = PathBuf::from(WORK_DIR);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let mut lab = Lab {
            dir,
            namespaces: Vec::new(),
            procs: Vec::new(),
            _lock: lock,
        };
        lab.build_topology()
            .context("building the namespace topology")?;
        Ok(lab)
    }

    fn build_topology(&mut self) -> Result<()> {
        for ns in ALL_NAMESPACES {
            run(&["ip", "netns", "add", ns])?;
            self.namespaces.push(ns.to_owned());
            ip(ns, &["link", "set", "lo", "up"])?;
            sysctl(ns, "net.ipv4.tcp_tw_reuse", "1")?;
        }
        ip(
            NS_CLI,
            &[
                "link", "add", "cli-lb", "type", "veth", "peer", "name", "lb-cli", "netns", NS_LB,
            ],
        )?;
        ip(
            NS_LB,
            &[
                "link", "add", "lb-sw", "type", "veth", "peer", "name", "sw-lb", "netns", NS_SW,
            ],
        )?;
        ip(NS_SW, &["link", "add", "br0", "type", "bridge"])?;
        ip(NS_SW, &["link", "set", "sw-lb", "master", "br0"])?;
        for (i, be) in NS_BE.iter().enumerate() {
            let inner = format!("be{}-sw", i + 1);
            let outer = format!("sw-be{}", i + 1);
            ip(
                be,
                &[
                    "link", "add", &inner, "type", "veth", "peer", "name", &outer, "netns", NS_SW,
                ],
            )?;
            ip(NS_SW, &["link", "set", &outer, "master", "br0"])?;
            ip(NS_SW, &["link", "set", &outer, "up"])?;
            // nginx also listens on the VIP, which is the backends' own only while the DSR
            // case runs (`mlb backend-setup` puts it on `lo`).
            sysctl(be, "net.ipv4.ip_nonlocal_bind", "1")?;
        }
        ip(NS_SW, &["link", "set", "sw-lb", "up"])?;
        ip(NS_SW, &["link", "set", "br0", "up"])?;

        // Fixed MACs, so the permanent neighbour entries below are right.
        let mac_cli = "02:00:c6:12:01:01";
        let mac_lb_cli = "02:00:c6:12:01:02";
        let mac_lb_sw = "02:00:c6:12:02:01";
        let mac_be = ["02:00:c6:12:02:11", "02:00:c6:12:02:12"];
        let setup_if = |ns: &str, dev: &str, mac: &str, addr: &str| -> Result<()> {
            ip(ns, &["link", "set", dev, "address", mac])?;
            ip(ns, &["addr", "add", addr, "dev", dev])?;
            ip(ns, &["link", "set", dev, "up"]).map(drop)
        };
        setup_if(NS_CLI, "cli-lb", mac_cli, "198.18.1.1/24")?;
        setup_if(NS_LB, "lb-cli", mac_lb_cli, "198.18.1.2/24")?;
        setup_if(NS_LB, "lb-sw", mac_lb_sw, "198.18.2.1/24")?;
        for (i, be) in NS_BE.iter().enumerate() {
            let dev = format!("be{}-sw", i + 1);
            setup_if(be, &dev, mac_be[i], &format!("{}/24", BACKEND_IPS[i]))?;
            ip(
                be,
                &["route", "add", "198.18.1.0/24", "via", LB_BACKEND_SIDE_IP],
            )?;
            neigh(be, LB_BACKEND_SIDE_IP, mac_lb_sw, &dev)?;
            neigh(NS_LB, BACKEND_IPS[i], mac_be[i], "lb-sw")?;
        }
        ip(NS_CLI, &["route", "add", "198.18.2.0/24", "via", VIP])?;
        neigh(NS_CLI, VIP, mac_lb_cli, "cli-lb")?;
        neigh(NS_LB, CLIENT_IP, mac_cli, "lb-cli")?;
        second_client()?;
        self.set_forwarding(false)?;

        // Same offloads for every case: TX checksum offload off on the senders (XDP forwarding
        // would pass partial checksums), GRO on so every veth has NAPI (XDP_TX/REDIRECT into a
        // veth needs it on the peer).
        let devices = [
            (NS_CLI, "cli-lb"),
            (NS_LB, "lb-cli"),
            (NS_LB, "lb-sw"),
            (NS_SW, "sw-lb"),
            (NS_SW, "sw-be1"),
            (NS_SW, "sw-be2"),
            (NS_BE[0], "be1-sw"),
            (NS_BE[1], "be2-sw"),
        ];
        for (ns, dev) in devices {
            ns_run(ns, &["ethtool", "-K", dev, "tx", "off", "gro", "on"])?;
        }
        // The backends' network carries 100 more bytes than the client's, as a DSR deployment
        // needs (the outer header of full-size client packets); the client's MTU still bounds
        // every segment, so the other cases see no difference.
        let backend_side = [
            (NS_LB, "lb-sw"),
            (NS_SW, "sw-lb"),
            (NS_SW, "br0"),
            (NS_SW, "sw-be1"),
            (NS_SW, "sw-be2"),
            (NS_BE[0], "be1-sw"),
            (NS_BE[1], "be2-sw"),
        ];
        for (ns, dev) in backend_side {
            ip(ns, &["link", "set", dev, "mtu", "1600"])?;
        }
        // lb's receive work on cpu1 (the LB's CPU): RPS, threaded NAPI.
        for dev in ["lb-cli", "lb-sw"] {
            ns_run(
                NS_LB,
                &[
                    "sh",
                    "-c",
                    &format!(
                        "echo 2 > /sys/class/net/{dev}/queues/rx-0/rps_cpus; \
                         echo 1 > /sys/class/net/{dev}/threaded || true"
                    ),
                ],
            )?;
        }
        pin_napi_threads();
        Ok(())
    }

    /// Moves the receive work of the veths lb sends into (towards the bridge and towards the
    /// client) off the LB's CPU: threaded NAPI, pinned to cpu0 with the client and the
    /// backends. Otherwise the kernel runs it in softirq on the CPU that sent, cpu1, and the LB's
    /// CPU also pays the bridge, the backends' TCP receive and the client's ACK processing,
    /// which no real load balancer does (its NIC hands the packet to the wire).
    pub fn network_off_lb_cpu(&self) -> Result<()> {
        for (ns, dev) in PEERS_OF_LB {
            let threaded = format!("echo 1 > /sys/class/net/{dev}/threaded");
            ns_run(ns, &["sh", "-c", &threaded])?;
        }
        pin_napi_threads();
        Ok(())
    }

    /// Makes what crosses lb's veths behave as on a wire, the same in every case. Frames of the
    /// link's MTU: once lb runs an XDP program on a veth, the kernel turns TSO off on its peer
    /// (a frame for XDP must fit one page), so the sender segments; without XDP the sender's
    /// 64 KB segments would cross whole, which no wire carries, sparing direct routing the
    /// per-frame receive work that XDP pays. Receivers that check checksums: a veth vouches
    /// for the checksum of every skb it passes (`CHECKSUM_UNNECESSARY`), but a frame that XDP
    /// redirected arrives as a new skb that the receiving host checks in software; with RX
    /// checksumming off on the peers the hosts check in both cases (on real NICs, both in
    /// hardware). TSO and RX checksumming off on both peers, always.
    pub fn like_a_wire(&self) -> Result<()> {
        for (ns, dev) in PEERS_OF_LB {
            ns_run(ns, &["ethtool", "-K", dev, "tso", "off", "rx", "off"])?;
        }
        Ok(())
    }

    /// Turns kernel forwarding in lb on (the "direct" case) or off (every proxy case: a proxy
    /// under test cannot then leak traffic by plain routing).
    pub fn set_forwarding(&self, on: bool) -> Result<()> {
        sysctl(NS_LB, "net.ipv4.ip_forward", if on { "1" } else { "0" }).map(drop)
    }

    /// Starts `args` in `ns` pinned to `cpu`, output to `<dir>/<name>.log`; returns its PID.
    pub fn spawn(&mut self, name: &str, ns: &str, cpu: u32, args: &[&str]) -> Result<u32> {
        self.spawn_on_cpus(name, ns, &cpu.to_string(), args)
    }

    /// [`Lab::spawn`] on a `taskset -c` CPU list (`"0-1"`).
    pub fn spawn_on_cpus(&mut self, name: &str, ns: &str, cpu: &str, args: &[&str]) -> Result<u32> {
        let log = fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "taskset", "-c", cpu])
            .args(args)
            // Plain logs (the failure messages quote them).
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}: {}", args.join(" ")))?;
        // `ip netns exec` and `taskset` exec in place: this PID is the program's.
        let pid = child.id();
        self.procs.push(Proc {
            name: name.to_owned(),
            child: ChildGuard(child),
        });
        self.write_pid_file();
        Ok(pid)
    }

    /// Whether the process is still running; if not, why (exit status and the end of its log).
    pub fn check_alive(&mut self, pid: u32) -> Result<(), String> {
        let Some(p) = self.procs.iter_mut().find(|p| p.child.id() == pid) else {
            return Err("not started".into());
        };
        match p.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                let name = p.name.clone();
                Err(format!("{name} exited ({status}): {}", self.log_tail(pid)))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The last lines of a process's log.
    pub fn log_tail(&self, pid: u32) -> String {
        let Some(p) = self.procs.iter().find(|p| p.child.id() == pid) else {
            return String::new();
        };
        let text = fs::read_to_string(self.dir.join(format!("{}.log", p.name))).unwrap_or_default();
        let text = strip_ansi(&text);
        let lines: Vec<&str> = text.lines().rev().take(3).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }

    /// SIGTERM, up to 3 s of grace, then SIGKILL; by PID.
    pub fn stop(&mut self, pid: u32) {
        if let Some(i) = self.procs.iter().position(|p| p.child.id() == pid) {
            drop(self.procs.remove(i));
            self.write_pid_file();
        }
    }

    fn write_pid_file(&self) {
        let pids: Vec<String> = self
            .procs
            .iter()
            .map(|p| p.child.id().to_string())
            .collect();
        let _ = fs::write(PID_FILE, pids.join("\n"));
    }

    /// Path of a file in the work directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first: a namespace is only gone once nothing runs in it.
        self.procs.clear();
        let _ = fs::remove_file(PID_FILE);
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Removes terminal colour sequences (`ESC [ … letter`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A child process, stopped by PID when the guard is dropped: SIGTERM, up to 3 s of grace,
/// then SIGKILL.
pub struct ChildGuard(Child);

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(child)
    }
}

impl Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        stop_child(&mut self.0);
    }
}

fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Takes the machine-wide bench lock, waiting (and saying so) while another run holds it.
fn exclusive_run_lock() -> Result<fs::File> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .with_context(|| format!("opening {LOCK_FILE}"))?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(fs::TryLockError::WouldBlock) => {
            eprintln!("bench: another benchmark run holds {LOCK_FILE}; waiting for it to end");
        }
        Err(fs::TryLockError::Error(e)) => return Err(e).context(format!("locking {LOCK_FILE}")),
    }
    file.lock()
        .with_context(|| format!("waiting for {LOCK_FILE}"))?;
    Ok(file)
}

/// Kills the processes a previous, interrupted run recorded (only if they still carry one of our
/// program names) and deletes its namespaces.
fn cleanup_stale() {
    if let Ok(text) = fs::read_to_string(PID_FILE) {
        for pid in text.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if OUR_PROGRAMS.contains(&comm.trim()) {
                eprintln!(
                    "bench: killing {} (PID {pid}) left by an earlier run",
                    comm.trim()
                );
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        let _ = fs::remove_file(PID_FILE);
    }
    for ns in ALL_NAMESPACES {
        if Path::new("/run/netns").join(ns).exists() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// cli2: a second client host behind cli (veth cli2-cli, 198.18.3.0/24, cli routes), so that
/// lb sees a second client address; lb and the backends route that network via cli and lb.
fn second_client() -> Result<()> {
    ip(
        NS_CLI2,
        &[
            "link", "add", "cli2-cli", "type", "veth", "peer", "name", "cli-cli2", "netns", NS_CLI,
        ],
    )?;
    ip(
        NS_CLI2,
        &[
            "addr",
            "add",
            &format!("{CLIENT2_IP}/24"),
            "dev",
            "cli2-cli",
        ],
    )?;
    ip(NS_CLI, &["addr", "add", "198.18.3.2/24", "dev", "cli-cli2"])?;
    for (ns, dev) in [(NS_CLI2, "cli2-cli"), (NS_CLI, "cli-cli2")] {
        ip(ns, &["link", "set", dev, "up"])?;
        // As on every sender: no partial checksums for an XDP program to forward.
        ns_run(ns, &["ethtool", "-K", dev, "tx", "off", "gro", "on"])?;
    }
    sysctl(NS_CLI, "net.ipv4.ip_forward", "1")?;
    ip(
        NS_CLI2,
        &["route", "add", "198.18.0.0/15", "via", "198.18.3.2"],
    )?;
    ip(NS_LB, &["route", "add", CLIENT2_NET, "via", CLIENT_IP])?;
    for be in NS_BE {
        ip(
            be,
            &["route", "add", CLIENT2_NET, "via", LB_BACKEND_SIDE_IP],
        )?;
    }
    Ok(())
}

/// The veths lb sends into, seen from the other end: what they receive is the network's and the
/// hosts' work (a NIC would hand it to the wire), not the load balancer's.
const PEERS_OF_LB: [(&str, &str); 2] = [(NS_SW, "sw-lb"), (NS_CLI, "cli-lb")];

/// Which CPU runs a threaded-NAPI kthread, by its name (`napi/<device>-<id>`): lb's own
/// interfaces on cpu1 with the load balancer, the peers of [`PEERS_OF_LB`] on cpu0.
fn napi_cpu(comm: &str) -> Option<&'static str> {
    let dev = comm.strip_prefix("napi/")?;
    if dev.starts_with("lb-") {
        Some("1")
    } else if PEERS_OF_LB
        .iter()
        .any(|(_, peer)| dev.starts_with(&format!("{peer}-")))
    {
        Some("0")
    } else {
        None
    }
}

/// Real-time priority of the lab's NAPI kthreads: that of the kernel's threaded interrupt
/// handlers. Receive work run in softirq (a NIC's, or lb's forwarding after RPS) comes before
/// any process; a NAPI kthread at the default priority would instead share its CPU with
/// whatever else runs there (another engineer's build on a shared machine), and so would the
/// XDP program it runs, while direct routing's softirq work would not.
const NAPI_PRIORITY: &str = "50";

/// Pins the threaded-NAPI kthreads of the lab's veths (see [`napi_cpu`]) and gives them
/// [`NAPI_PRIORITY`]; call again after an XDP program is attached: the driver may re-create
/// them.
pub fn pin_napi_threads() {
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let pid = e.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if let Some(cpu) = napi_cpu(comm.trim()) {
            let _ = Command::new("taskset")
                .args(["-pc", cpu, &pid])
                .stdout(Stdio::null())
                .status();
            let _ = Command::new("chrt")
                .args(["-f", "-p", NAPI_PRIORITY, &pid])
                .status();
        }
    }
}

/// Runs a command to completion; its stdout, or an error with its stderr.
pub fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside a namespace.
pub fn ns_run(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend(args);
    run(&full)
}

fn ip(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "-n", ns];
    full.extend(args);
    run(&full)
}

fn neigh(ns: &str, addr: &str, mac: &str, dev: &str) -> Result<String> {
    ip(
        ns,
        &[
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ],
    )
}

fn sysctl(ns: &str, key: &str, value: &str) -> Result<String> {
    ns_run(ns, &["sysctl", "-q", "-w", &format!("{key}={value}")])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `pid` is a running process (a reaped one is gone from `/proc`).
    fn running(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn dropping_the_guard_stops_the_child() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let start = Instant::now();
        drop(ChildGuard::new(child));
        assert!(!running(pid));
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "SIGTERM was enough"
        );
    }

    #[test]
    fn a_child_ignoring_sigterm_is_killed_after_the_grace_time() {
        // An ignored signal stays ignored across exec.
        let child = Command::new("sh")
            .args(["-c", "trap '' TERM; exec sleep 30"])
            .spawn()
            .unwrap();
        let pid = child.id();
        // Once it is `sleep`, the trap is set.
        let comm = || fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(5);
        while comm().trim() != "sleep" && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let start = Instant::now();
        drop(ChildGuard::new(child));
        assert!(!running(pid));
        assert!(start.elapsed() >= Duration::from_secs(3));
    }

    #[test]
    fn napi_threads_of_lb_run_on_its_cpu_and_those_of_its_peers_off_it() {
        assert_eq!(napi_cpu("napi/lb-cli-8193"), Some("1"));
        assert_eq!(napi_cpu("napi/lb-sw-8194"), Some("1"));
        assert_eq!(napi_cpu("napi/sw-lb-8195"), Some("0"));
        assert_eq!(napi_cpu("napi/cli-lb-8196"), Some("0"));
        // Other devices' threads, and anything else, are left where the kernel put them.
        assert_eq!(napi_cpu("napi/sw-be1-8197"), None);
        assert_eq!(napi_cpu("napi/cli-lb2-1"), None);
        assert_eq!(napi_cpu("kworker/0:1"), None);
    }

    #[test]
    fn strips_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[2mtime\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x"),
            "time  WARN x"
        );
    }
}
