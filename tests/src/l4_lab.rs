//! The TCP/UDP load-balancing lab of the end-to-end tests: the reference topology in uniquely
//! named namespaces, backend servers running in-process inside them, and an `mlb` agent in the
//! load-balancer namespace.
//!
//! ```text
//!  ns cli              ns lb (mlb)                       ns sw (bridge br0)     ns be1, be2
//!  cli-lb ======== lb-cli          lb-sw ============== sw-lb ─┐
//!  198.18.1.1      198.18.1.2      198.18.2.1                  ├ br0
//!  fd00:198:18:1::1 (VIP)          (SNAT source)        sw-beN ┘ ==== beN-sw 198.18.2.1N
//!                  fd00:198:18:1::2 fd00:198:18:2::1                       fd00:198:18:2::1N
//! ```
//!
//! No default route anywhere: cli reaches the backend network via lb, the backends reach the
//! client network via lb. lb forwards (`bpf_fib_lookup` needs forwarding on the ingress
//! interface) and no neighbour entry is preset: the first packets of every lab resolve ARP/ND.
//! GRO is on on every veth end: an `XDP_REDIRECT` into a veth is only delivered when its peer has
//! GRO or an XDP program.
//!
//! The XDP agent pins its datapath in a bpf filesystem the lab mounts in its work directory (in
//! the test's mount namespace, so it outlives each agent and a restarted agent adopts it).
//!
//! Everything is cleaned up on drop, also on panic: the agent is killed by PID, the backend
//! servers stop with their runtime, the bpf filesystem is unmounted (which detaches whatever
//! program is still pinned there), the namespaces are deleted, the work directory removed.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use mlb_common::stats::Counter;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use crate::{
    mlb_bin::mlb_bin,
    netns::{Child, Netns, VethEnd, veth},
};

/// The client's address.
pub const CLIENT_V4: &str = "198.18.1.1";
/// The client's IPv6 address.
pub const CLIENT_V6: &str = "fd00:198:18:1::1";
/// The VIP (lb's address on the client side).
pub const VIP_V4: &str = "198.18.1.2";
/// The IPv6 VIP.
pub const VIP_V6: &str = "fd00:198:18:1::2";
/// lb's address on the backend side: the SNAT source the backends see.
pub const SNAT_V4: &str = "198.18.2.1";
/// lb's IPv6 address on the backend side.
pub const SNAT_V6: &str = "fd00:198:18:2::1";
/// SNAT source ports of the XDP dataplane (mlb's default `--snat-ports`).
pub const SNAT_PORTS: std::ops::RangeInclusive<u16> = 40000..=59999;
/// Bound of every socket operation of the lab's clients.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// `mlb run` flags of the XDP dataplane in lb: the program on both of lb's interfaces, SNAT
/// from lb's backend-side addresses.
pub const XDP_ARGS: [&str; 10] = [
    "--dataplane",
    "xdp",
    "--xdp-iface",
    "lb-cli",
    "--xdp-iface",
    "lb-sw",
    "--snat-addr",
    SNAT_V4,
    "--snat-addr",
    SNAT_V6,
];

/// Which dataplane the agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dataplane {
    /// The XDP program on lb-cli and lb-sw (full NAT in the kernel).
    Xdp,
    /// The userspace proxy bound to the VIPs.
    Userspace,
}

/// The routed backend's IPv4 address (see [`L4Lab::routed_backend`]).
pub const ROUTED_BACKEND_V4: &str = "198.18.3.11";
/// The routed backend's IPv6 address.
pub const ROUTED_BACKEND_V6: &str = "fd00:198:18:3::11";

/// The backend IPv4 address of backend `n` (1-based).
pub fn backend_v4(n: usize) -> IpAddr {
    format!("198.18.2.{}", 10 + n).parse().expect("IPv4")
}

/// The backend IPv6 address of backend `n` (1-based).
pub fn backend_v6(n: usize) -> IpAddr {
    format!("fd00:198:18:2::{}", 10 + n).parse().expect("IPv6")
}

/// The lab: namespaces, the backend servers' runtime, and a work directory (configs, logs).
pub struct L4Lab {
    // First field, so dropped first: stops every backend server before the namespaces go.
    servers: tokio::runtime::Runtime,
    /// The client namespace.
    pub cli: Netns,
    /// The load balancer's namespace (where mlb runs).
    pub lb: Netns,
    /// The switch namespace (bridge between lb and the backends).
    pub sw: Netns,
    /// Backend namespaces be1, be2 (`backends[0]` is be1).
    pub backends: Vec<Netns>,
    /// Work directory of this lab (static config, agent log); removed on drop.
    pub dir: PathBuf,
}

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

impl L4Lab {
    /// Builds the topology with two backend namespaces.
    pub fn new() -> Result<Self> {
        let cli = Netns::new("cli")?;
        let lb = Netns::new("lb")?;
        let sw = Netns::new("sw")?;
        let backends = vec![Netns::new("be1")?, Netns::new("be2")?];
        let dir = std::env::temp_dir().join(format!(
            "mlbt-l4lab-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let servers = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("starting the backend servers' runtime")?;
        let lab = L4Lab {
            cli,
            lb,
            sw,
            backends,
            dir,
            servers,
        };
        lab.build().context("building the L4 lab topology")?;
        fs::create_dir_all(lab.bpffs_dir())?;
        // Here, not in a namespace: `ip netns exec` gives each command a mount namespace of
        // its own, and the pins must outlive the agent.
        let mounted = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(lab.bpffs_dir())
            .status()
            .context("running mount")?;
        ensure!(
            mounted.success(),
            "mounting the lab's bpf filesystem: {mounted}"
        );
        Ok(lab)
    }

    /// The bpf filesystem the agents pin their XDP datapath in (`--bpffs-dir`).
    pub fn bpffs_dir(&self) -> PathBuf {
        self.dir.join("bpf")
    }

    fn build(&self) -> Result<()> {
        veth(
            &VethEnd {
                ns: &self.cli,
                name: "cli-lb",
                addrs: &["198.18.1.1/24", "fd00:198:18:1::1/64"],
            },
            &VethEnd {
                ns: &self.lb,
                name: "lb-cli",
                addrs: &["198.18.1.2/24", "fd00:198:18:1::2/64"],
            },
        )?;
        veth(
            &VethEnd {
                ns: &self.lb,
                name: "lb-sw",
                addrs: &["198.18.2.1/24", "fd00:198:18:2::1/64"],
            },
            &VethEnd {
                ns: &self.sw,
                name: "sw-lb",
                addrs: &[],
            },
        )?;
        self.sw
            .exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        self.sw
            .exec(&["ip", "link", "set", "sw-lb", "master", "br0"])?;
        let mut gro = vec![
            (&self.cli, "cli-lb".to_owned()),
            (&self.lb, "lb-cli".to_owned()),
            (&self.lb, "lb-sw".to_owned()),
            (&self.sw, "sw-lb".to_owned()),
        ];
        for (i, be) in self.backends.iter().enumerate() {
            let n = i + 1;
            let inner = format!("be{n}-sw");
            let outer = format!("sw-be{n}");
            let v4 = format!("{}/24", backend_v4(n));
            let v6 = format!("{}/64", backend_v6(n));
            veth(
                &VethEnd {
                    ns: be,
                    name: &inner,
                    addrs: &[&v4, &v6],
                },
                &VethEnd {
                    ns: &self.sw,
                    name: &outer,
                    addrs: &[],
                },
            )?;
            self.sw
                .exec(&["ip", "link", "set", &outer, "master", "br0"])?;
            be.exec(&["ip", "route", "add", "198.18.1.0/24", "via", SNAT_V4])?;
            be.exec(&[
                "ip",
                "-6",
                "route",
                "add",
                "fd00:198:18:1::/64",
                "via",
                SNAT_V6,
            ])?;
            gro.push((be, inner));
            gro.push((&self.sw, outer));
        }
        self.sw.exec(&["ip", "link", "set", "br0", "up"])?;
        self.cli
            .exec(&["ip", "route", "add", "198.18.2.0/24", "via", VIP_V4])?;
        self.cli.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "fd00:198:18:2::/64",
            "via",
            VIP_V6,
        ])?;
        for key in [
            "net.ipv4.conf.all.forwarding=1",
            "net.ipv6.conf.all.forwarding=1",
        ] {
            self.lb.exec(&["sysctl", "-q", "-w", key])?;
        }
        for (ns, dev) in gro {
            ns.exec(&["ethtool", "-K", &dev, "gro", "on"])?;
        }
        Ok(())
    }

    /// Adds a backend namespace one router hop behind the bridge, with a smaller MTU on the
    /// way: sw routes between br0 (198.18.2.2, fd00:198:18:2::2) and a link to the new
    /// namespace (198.18.3.0/24, fd00:198:18:3::/64, [`ROUTED_BACKEND_V4`],
    /// [`ROUTED_BACKEND_V6`]) whose MTU towards it is `mtu`. So sw answers bigger packets with
    /// "fragmentation needed" / "packet too big", as a router on a real path does. The backend's
    /// own end keeps MTU 1500: a bottleneck at an endpoint would be announced in its TCP MSS,
    /// and path-MTU discovery would never be needed. The caller owns the namespace.
    pub fn routed_backend(&self, mtu: u32) -> Result<Netns> {
        let be = Netns::new("be3")?;
        veth(
            &VethEnd {
                ns: &be,
                name: "be3-sw",
                addrs: &["198.18.3.11/24", "fd00:198:18:3::11/64"],
            },
            &VethEnd {
                ns: &self.sw,
                name: "sw-be3",
                addrs: &["198.18.3.1/24", "fd00:198:18:3::1/64"],
            },
        )?;
        let sw = |argv: &[&str]| self.sw.exec(argv);
        sw(&["ip", "addr", "add", "198.18.2.2/24", "dev", "br0"])?;
        sw(&[
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:198:18:2::2/64",
            "dev",
            "br0",
            "nodad",
        ])?;
        sw(&["ip", "link", "set", "sw-be3", "mtu", &mtu.to_string()])?;
        for key in [
            "net.ipv4.conf.all.forwarding=1",
            "net.ipv6.conf.all.forwarding=1",
        ] {
            sw(&["sysctl", "-q", "-w", key])?;
        }
        be.exec(&["ip", "route", "add", "default", "via", "198.18.3.1"])?;
        be.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:198:18:3::1",
        ])?;
        self.lb
            .exec(&["ip", "route", "add", "198.18.3.0/24", "via", "198.18.2.2"])?;
        self.lb.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "fd00:198:18:3::/64",
            "via",
            "fd00:198:18:2::2",
        ])?;
        Ok(be)
    }

    /// The namespace of backend `n` (1-based).
    pub fn backend_ns(&self, n: usize) -> &Netns {
        &self.backends[n - 1]
    }

    /// Starts a TCP server in backend `n`'s namespace on `port`, on its IPv4 and IPv6 address.
    /// To each connection it sends one line, `<name> <peer address>`, with `name` =
    /// `be<n>:<port>`, then echoes what it receives until the client closes.
    pub fn tcp_backend(&self, n: usize, port: u16) -> Result<()> {
        let name = format!("be{n}:{port}");
        for ip in [backend_v4(n), backend_v6(n)] {
            let addr = SocketAddr::new(ip, port);
            let listener = self
                .backend_ns(n)
                .enter(move || std::net::TcpListener::bind(addr))?
                .with_context(|| format!("binding {addr} in be{n}"))?;
            listener.set_nonblocking(true)?;
            let name = name.clone();
            let _guard = self.servers.enter();
            let listener = tokio::net::TcpListener::from_std(listener)?;
            self.servers.spawn(async move {
                while let Ok((stream, peer)) = listener.accept().await {
                    tokio::spawn(serve_tcp(stream, peer, name.clone()));
                }
            });
        }
        Ok(())
    }

    /// Starts a UDP server in backend `n`'s namespace on `port` (IPv4 and IPv6) that answers
    /// each datagram with `<name> <peer address>`, `name` = `be<n>:<port>`.
    pub fn udp_backend(&self, n: usize, port: u16) -> Result<()> {
        let name = format!("be{n}:{port}");
        for ip in [backend_v4(n), backend_v6(n)] {
            let addr = SocketAddr::new(ip, port);
            let socket = self
                .backend_ns(n)
                .enter(move || UdpSocket::bind(addr))?
                .with_context(|| format!("binding UDP {addr} in be{n}"))?;
            socket.set_nonblocking(true)?;
            let name = name.clone();
            let _guard = self.servers.enter();
            let socket = tokio::net::UdpSocket::from_std(socket)?;
            self.servers.spawn(async move {
                let mut buf = [0u8; 2048];
                while let Ok((_, peer)) = socket.recv_from(&mut buf).await {
                    let reply = format!("{name} {peer}");
                    let _ = socket.send_to(reply.as_bytes(), peer).await;
                }
            });
        }
        Ok(())
    }

    /// Opens `count` TCP connections from cli to `target`, one after the other, each reading
    /// the backend's greeting; all stay open.
    pub fn connect_many(&self, target: SocketAddr, count: usize) -> Result<Vec<Conn>> {
        self.cli.enter(move || {
            (0..count)
                .map(|i| Conn::open(target).with_context(|| format!("connection #{i} to {target}")))
                .collect::<Result<Vec<_>>>()
        })?
    }

    /// Sends one datagram from a new cli socket to `target` and waits (bounded) for one reply.
    pub fn udp_request(&self, target: SocketAddr) -> Result<UdpReply> {
        self.cli.enter(move || -> Result<UdpReply> {
            let local: SocketAddr = match target {
                SocketAddr::V4(_) => "0.0.0.0:0".parse()?,
                SocketAddr::V6(_) => "[::]:0".parse()?,
            };
            let socket = UdpSocket::bind(local)?;
            socket.set_read_timeout(Some(IO_TIMEOUT))?;
            socket.send_to(b"request", target)?;
            let mut buf = [0u8; 2048];
            let (n, from) = socket
                .recv_from(&mut buf)
                .with_context(|| format!("no UDP reply from {target}"))?;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let (backend, peer) = parse_greeting(&text)?;
            Ok(UdpReply {
                from,
                backend,
                seen_peer: peer,
            })
        })?
    }

    /// Where an agent's static config lives.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("services.toml")
    }

    /// Writes the static config file (then [`Agent::reload`] to apply it).
    pub fn write_config(&self, toml: &str) -> Result<()> {
        // Written aside and renamed: the agent never reads a half-written file.
        let tmp = self.dir.join("services.toml.new");
        fs::write(&tmp, toml)?;
        fs::rename(&tmp, self.config_path())?;
        Ok(())
    }

    /// Starts `mlb run` in lb with the static config `toml`, VIPs and SNAT addresses of both
    /// families, plus `extra` arguments; returns once its services are applied.
    pub fn start_agent(&self, dataplane: Dataplane, toml: &str, extra: &[&str]) -> Result<Agent> {
        self.start_agent_env(dataplane, toml, extra, &[])
    }

    /// [`L4Lab::start_agent`] with extra environment variables.
    pub fn start_agent_env(
        &self,
        dataplane: Dataplane,
        toml: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Agent> {
        self.write_config(toml)?;
        let log = self.dir.join(format!(
            "mlb-{}.log",
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let config = self.config_path();
        let mut args: Vec<String> = vec![
            "run".into(),
            "--static-config".into(),
            config.display().to_string(),
            "--admin-addr".into(),
            "127.0.0.1:0".into(),
            "--vip".into(),
            VIP_V4.into(),
            "--vip".into(),
            VIP_V6.into(),
        ];
        match dataplane {
            Dataplane::Xdp => {
                args.extend(XDP_ARGS.map(String::from));
                args.push("--bpffs-dir".into());
                // A directory inside the mount: `mlb stop --detach` removes it whole.
                args.push(self.bpffs_dir().join("mlb").display().to_string());
            }
            Dataplane::Userspace => args.extend(["--dataplane", "userspace"].map(String::from)),
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let log_file = fs::File::create(&log)?;
        let bin = mlb_bin();
        let child = self
            .lb
            .spawn_command(bin.to_str().context("mlb path")?, |c| {
                c.args(&args)
                    .envs(env.iter().copied())
                    .env("NO_COLOR", "1")
                    .env("RUST_LOG", "info")
                    .stdout(Stdio::null())
                    .stderr(log_file);
            })?;
        let mut agent = Agent {
            child,
            log,
            dataplane,
        };
        agent.wait_for_log(APPLIED, 1)?;
        agent.wait_for_sighup_handler()?;
        Ok(agent)
    }

    /// `ss -tanH` in lb: lb's own TCP sockets.
    pub fn lb_tcp_sockets(&self) -> Result<String> {
        self.lb.exec(&["ss", "-tanH"])
    }

    /// Whether an XDP program is attached to `iface` in lb.
    pub fn xdp_attached(&self, iface: &str) -> Result<bool> {
        Ok(self
            .lb
            .exec(&["ip", "link", "show", "dev", iface])?
            .contains("xdp"))
    }

    /// A global counter of the XDP program attached to lb-cli, summed over CPUs (read with
    /// `bpftool` from the program's `MLB_STATS` map, so it works while mlb owns the program).
    pub fn xdp_counter(&self, counter: Counter) -> Result<u64> {
        let link: serde_json::Value = serde_json::from_str(
            &self
                .lb
                .exec(&["ip", "-j", "link", "show", "dev", "lb-cli"])?,
        )?;
        let prog_id = link[0]["xdp"]["prog"]["id"]
            .as_u64()
            .context("no XDP program attached to lb-cli")?;
        let prog = bpftool(&["prog", "show", "id", &prog_id.to_string()])?;
        let map_ids = prog["map_ids"].as_array().context("program without maps")?;
        let stats_id = map_ids
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .find(|id| {
                bpftool(&["map", "show", "id", &id.to_string()])
                    .is_ok_and(|m| m["name"] == mlb_common::maps::STATS)
            })
            .context("the program has no MLB_STATS map")?;
        let key = (counter as u32).to_le_bytes().map(|b| b.to_string());
        let mut args = vec!["map", "lookup", "id"];
        let id = stats_id.to_string();
        args.push(&id);
        args.push("key");
        args.extend(key.iter().map(String::as_str));
        let entry = bpftool(&args)?;
        let mut sum = 0u64;
        for cpu in entry["values"].as_array().context("per-CPU values")? {
            sum += match &cpu["value"] {
                serde_json::Value::Number(n) => n.as_u64().context("counter value")?,
                serde_json::Value::Array(bytes) => {
                    let mut le = [0u8; 8];
                    for (slot, b) in le.iter_mut().zip(bytes) {
                        let hex = b.as_str().context("value byte")?;
                        *slot = u8::from_str_radix(hex.trim_start_matches("0x"), 16)?;
                    }
                    u64::from_le_bytes(le)
                }
                other => bail!("unexpected bpftool value {other}"),
            };
        }
        Ok(sum)
    }

    /// lb's neighbour entry for `addr`, if any (`ip neigh show <addr>` output).
    pub fn lb_neighbour(&self, addr: IpAddr) -> Result<String> {
        Ok(self
            .lb
            .exec(&["ip", "neigh", "show", &addr.to_string()])?
            .trim()
            .to_owned())
    }

    /// TCP segments the client's kernel has retransmitted so far (`RetransSegs` of cli).
    pub fn client_tcp_retransmissions(&self) -> Result<u64> {
        let snmp = self.cli.exec(&["cat", "/proc/net/snmp"])?;
        let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
        let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
            bail!("no Tcp lines in /proc/net/snmp");
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "RetransSegs")
            .context("no RetransSegs in /proc/net/snmp")?
            .1
            .parse()
            .context("RetransSegs")
    }
}

impl Drop for L4Lab {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.bpffs_dir())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs `bpftool -j` and parses its JSON answer.
fn bpftool(args: &[&str]) -> Result<serde_json::Value> {
    let out = std::process::Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("running bpftool (cargo xtask setup installs it)")?;
    ensure!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

async fn serve_tcp(stream: tokio::net::TcpStream, peer: SocketAddr, name: String) {
    let (read, mut write) = stream.into_split();
    if write
        .write_all(format!("{name} {peer}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let mut lines = tokio::io::BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if write
            .write_all(format!("{line}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

fn parse_greeting(text: &str) -> Result<(String, SocketAddr)> {
    let (name, peer) = text
        .trim_end()
        .split_once(' ')
        .with_context(|| format!("unexpected backend greeting {text:?}"))?;
    let peer: SocketAddr = peer
        .parse()
        .with_context(|| format!("peer address in greeting {text:?}"))?;
    Ok((name.to_owned(), peer))
}

/// An open client connection through the load balancer.
pub struct Conn {
    reader: BufReader<TcpStream>,
    /// The backend that answered (`be<n>:<port>`).
    pub backend: String,
    /// The source address the backend saw.
    pub seen_peer: SocketAddr,
}

impl Conn {
    /// Connects (from the current thread's namespace) and reads the backend's greeting.
    pub fn open(target: SocketAddr) -> Result<Conn> {
        Conn::greeted(TcpStream::connect_timeout(&target, IO_TIMEOUT)?)
    }

    /// Connects from the local address `from` (one of the namespace's), giving up after
    /// `timeout`, and reads the backend's greeting.
    pub fn open_from(from: IpAddr, target: SocketAddr, timeout: Duration) -> Result<Conn> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stream = rt.block_on(async {
            let socket = match target {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(from, 0))?;
            let stream = tokio::time::timeout(timeout, socket.connect(target))
                .await
                .with_context(|| format!("connecting from {from} to {target}: timed out"))??;
            anyhow::Ok(stream.into_std()?)
        })?;
        stream.set_nonblocking(false)?;
        Conn::greeted(stream)
    }

    fn greeted(stream: TcpStream) -> Result<Conn> {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .context("reading the greeting")?;
        let (backend, seen_peer) = parse_greeting(&line)?;
        Ok(Conn {
            reader,
            backend,
            seen_peer,
        })
    }

    /// Sends `msg` (one line) and checks the backend echoes it.
    pub fn echo(&mut self, msg: &str) -> Result<()> {
        echo_line(&mut self.reader, msg)
    }

    /// The client side's local address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.reader.get_ref().local_addr()?)
    }
}

/// Sends `msg` and a newline on an echo connection and checks the same line comes back.
pub fn echo_line(conn: &mut BufReader<TcpStream>, msg: &str) -> Result<()> {
    conn.get_mut().write_all(format!("{msg}\n").as_bytes())?;
    let mut line = String::new();
    let n = conn.read_line(&mut line)?;
    ensure!(
        n > 0,
        "connection closed (EOF) instead of an echo of {msg:?}"
    );
    ensure!(line.trim_end() == msg, "echoed {line:?} instead of {msg:?}");
    Ok(())
}

/// A UDP reply received by the client.
#[derive(Debug)]
pub struct UdpReply {
    /// Where the reply came from (the VIP and service port when load balanced).
    pub from: SocketAddr,
    /// The backend that answered.
    pub backend: String,
    /// The source address the backend saw.
    pub seen_peer: SocketAddr,
}

/// Log message of the agent after each applied set of TCP/UDP service changes.
pub const APPLIED: &str = "dataplanes updated";
/// Log message of the agent when a reloaded static config is refused.
pub const RELOAD_REFUSED: &str = "SIGHUP: keeping the last good services";

/// A running `mlb` agent, killed by PID on drop.
pub struct Agent {
    child: Child,
    log: PathBuf,
    /// The dataplane it runs.
    pub dataplane: Dataplane,
}

impl Agent {
    /// The agent's PID.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// Waits (up to 20 s) until `needle` occurs on at least `count` log lines; fails early if
    /// the agent exits.
    pub fn wait_for_log(&mut self, needle: &str, count: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.log_count(needle) >= count {
                return Ok(());
            }
            if let Some(status) = self.child.0.try_wait()? {
                bail!(
                    "mlb exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "mlb did not log {needle:?} ×{count} in 20 s:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the agent catches SIGHUP (its handler is installed right after the first
    /// apply; a SIGHUP before that would kill it).
    fn wait_for_sighup_handler(&mut self) -> Result<()> {
        let status_path = format!("/proc/{}/status", self.pid());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = fs::read_to_string(&status_path)?;
            let caught = status
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                .unwrap_or(0);
            if caught & (1 << (libc::SIGHUP - 1)) != 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("mlb did not install its SIGHUP handler in 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGHUP (by PID).
    pub fn sighup(&self) -> Result<()> {
        let pid = i32::try_from(self.pid())?;
        // SAFETY: kill(2) on the PID of a child we own and have not reaped.
        let rc = unsafe { libc::kill(pid, libc::SIGHUP) };
        ensure!(
            rc == 0,
            "kill -HUP {pid}: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    /// Writes a new static config, sends SIGHUP and waits until the changes are applied.
    pub fn reload(&mut self, lab: &L4Lab, toml: &str) -> Result<()> {
        let before = self.log_count(APPLIED);
        lab.write_config(toml)?;
        self.sighup()?;
        self.wait_for_log(APPLIED, before + 1)
    }

    /// SIGTERM, then checks the agent exits 0 within 10 s and (XDP) left its program attached,
    /// forwarding for the next agent.
    pub fn stop(mut self, lab: &L4Lab) -> Result<()> {
        let status = self.child.terminate(Duration::from_secs(10))?;
        ensure!(
            status.success(),
            "mlb exited with {status}:\n{}",
            self.log()
        );
        if self.dataplane == Dataplane::Xdp {
            for iface in ["lb-cli", "lb-sw"] {
                ensure!(
                    lab.xdp_attached(iface)?,
                    "XDP program detached from {iface} by SIGTERM"
                );
            }
        }
        Ok(())
    }

    /// SIGKILL (by PID), and waits until the agent is gone.
    pub fn kill(mut self) -> Result<()> {
        self.child.0.kill()?;
        self.child.0.wait()?;
        Ok(())
    }
}
