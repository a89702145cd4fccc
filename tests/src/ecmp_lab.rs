//! The fleet lab: a router spreading the VIP over several mlb instances with ECMP, as an
//! upstream router (BGP-learnt equal-cost routes) does in front of a fleet.
//!
//! ```text
//!  ns cli              ns rt (router)                  ns lbI (mlb, XDP)         ns sw (br0)   ns beN
//!  cli-rt ========= rt-cli  rt-lbI ================ lbI-rt   lbI-sw ======== sw-lbI ┐
//!  198.18.1.1       198.18.1.2                      198.18.(3+I).2            ├ br0 ── beN-sw
//!                   198.18.(3+I).1                           198.18.2.(1+I)  ┘        198.18.2.1N
//!  VIP 198.18.100.1/32: nexthop via 198.18.3.2 nexthop via 198.18.4.2 (L4 hash policy)
//! ```
//!
//! Each instance does full NAT from its own backend-side address, so the backends answer the
//! instance that owns the flow; or, with [`EcmpLab::dsr_args`], direct server return: the
//! backends (set up by `mlb backend-setup`) answer the client through the router, which is
//! also on the backends' network (198.18.2.254). Every instance pins its datapath in a bpf filesystem of its own,
//! mounted in the test's mount namespace. Everything is cleaned up on drop.
use std::{
    fs,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, ensure};

use crate::netns::{Netns, VethEnd, veth};

/// The fleet's VIP.
pub const VIP: &str = "198.18.100.1";
/// The client's address.
pub const CLIENT: &str = "198.18.1.1";
/// The router's address on the backends' network (their way back to clients).
pub const ROUTER_ON_BACKENDS: &str = "198.18.2.254";
/// The flow-hash key every instance shares.
pub const HASH_SECRET: &str = "0123456789abcdef";

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// The router-side address of instance `i` (the router's next hop).
pub fn lb_addr(i: usize) -> String {
    format!("198.18.{}.2", 3 + i)
}

/// The router's address facing instance `i` (where the instance reaches Marathon in the tests).
pub fn rt_addr(i: usize) -> String {
    format!("198.18.{}.1", 3 + i)
}

/// The backend-side (SNAT) address of instance `i`.
pub fn snat_addr(i: usize) -> String {
    format!("198.18.2.{}", 1 + i)
}

/// The address of backend `n` (1-based).
pub fn backend_addr(n: usize) -> String {
    format!("198.18.2.{}", 10 + n)
}

/// One end of a veth link.
fn end<'a>(ns: &'a Netns, name: &'a str, addrs: &'a [&'a str]) -> VethEnd<'a> {
    VethEnd { ns, name, addrs }
}

/// The lab; see the module documentation.
pub struct EcmpLab {
    pub cli: Netns,
    pub rt: Netns,
    /// One namespace per mlb instance.
    pub lbs: Vec<Netns>,
    pub sw: Netns,
    /// Backend namespaces (`backends[0]` is be1).
    pub backends: Vec<Netns>,
    dir: PathBuf,
    mounts: Vec<PathBuf>,
}

impl EcmpLab {
    /// Builds the topology with `lbs` instances and `backends` backend namespaces.
    pub fn new(lbs: usize, backends: usize) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "mlbt-ecmp-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let mut lab = EcmpLab {
            cli: Netns::new("cli")?,
            rt: Netns::new("rt")?,
            lbs: (0..lbs).map(|_| Netns::new("lb")).collect::<Result<_>>()?,
            sw: Netns::new("sw")?,
            backends: (0..backends)
                .map(|_| Netns::new("be"))
                .collect::<Result<_>>()?,
            dir,
            mounts: Vec::new(),
        };
        lab.build().context("building the ECMP lab")?;
        // One bpf filesystem per instance, and the last one for the backends' decapsulation.
        for i in 0..=lbs {
            let bpf = lab.dir.join(format!("bpf{i}"));
            fs::create_dir_all(&bpf)?;
            let mounted = std::process::Command::new("mount")
                .args(["-t", "bpf", "bpf"])
                .arg(&bpf)
                .status()?;
            ensure!(mounted.success(), "mounting {}: {mounted}", bpf.display());
            lab.mounts.push(bpf);
        }
        Ok(lab)
    }

    fn build(&self) -> Result<()> {
        veth(
            &end(&self.cli, "cli-rt", &["198.18.1.1/24"]),
            &end(&self.rt, "rt-cli", &["198.18.1.2/24"]),
        )?;
        self.cli
            .exec(&["ip", "route", "add", "198.18.0.0/15", "via", "198.18.1.2"])?;
        self.sw
            .exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        let mut gro = vec![
            (&self.cli, "cli-rt".to_owned()),
            (&self.rt, "rt-cli".into()),
        ];
        let mut hops = Vec::new();
        for (i, lb) in self.lbs.iter().enumerate() {
            let (rt_dev, lb_rt, lb_sw, sw_lb) = (
                format!("rt-lb{i}"),
                format!("lb{i}-rt"),
                format!("lb{i}-sw"),
                format!("sw-lb{i}"),
            );
            let rt_side = format!("{}/24", rt_addr(i));
            let lb_side = format!("{}/24", lb_addr(i));
            veth(
                &end(&self.rt, &rt_dev, &[&rt_side]),
                &end(lb, &lb_rt, &[&lb_side]),
            )?;
            let snat = format!("{}/24", snat_addr(i));
            veth(&end(lb, &lb_sw, &[&snat]), &end(&self.sw, &sw_lb, &[]))?;
            self.sw
                .exec(&["ip", "link", "set", &sw_lb, "master", "br0"])?;
            lb.exec(&["ip", "route", "add", "198.18.1.0/24", "via", &rt_addr(i)])?;
            lb.exec(&["sysctl", "-q", "-w", "net.ipv4.conf.all.forwarding=1"])?;
            hops.extend(["nexthop".to_owned(), "via".into(), lb_addr(i)]);
            gro.extend([
                (&self.rt, rt_dev),
                (lb, lb_rt),
                (lb, lb_sw),
                (&self.sw, sw_lb),
            ]);
        }
        for (n, be) in self.backends.iter().enumerate() {
            let (inner, outer) = (format!("be{}-sw", n + 1), format!("sw-be{}", n + 1));
            let addr = format!("{}/24", backend_addr(n + 1));
            veth(&end(be, &inner, &[&addr]), &end(&self.sw, &outer, &[]))?;
            self.sw
                .exec(&["ip", "link", "set", &outer, "master", "br0"])?;
            gro.extend([(be, inner), (&self.sw, outer)]);
        }
        // The router on the backends' network too: with direct server return the backends
        // answer clients through it, not through the instance that forwarded the request.
        veth(
            &end(&self.rt, "rt-sw", &[&format!("{ROUTER_ON_BACKENDS}/24")]),
            &end(&self.sw, "sw-rt", &[]),
        )?;
        self.sw
            .exec(&["ip", "link", "set", "sw-rt", "master", "br0"])?;
        gro.extend([(&self.rt, "rt-sw".to_owned()), (&self.sw, "sw-rt".into())]);
        for be in &self.backends {
            be.exec(&[
                "ip",
                "route",
                "add",
                "198.18.1.0/24",
                "via",
                ROUTER_ON_BACKENDS,
            ])?;
        }
        self.sw.exec(&["ip", "link", "set", "br0", "up"])?;
        for key in [
            "net.ipv4.conf.all.forwarding=1",
            "net.ipv4.fib_multipath_hash_policy=1",
            // Backends answer from the VIP, which the router routes to the instances.
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.rt-sw.rp_filter=0",
        ] {
            self.rt.exec(&["sysctl", "-q", "-w", key])?;
        }
        let vip = format!("{VIP}/32");
        let mut route = vec!["ip", "route", "add", &vip];
        route.extend(hops.iter().map(String::as_str));
        self.rt.exec(&route)?;
        for (ns, dev) in gro {
            ns.exec(&["ethtool", "-K", &dev, "gro", "on"])?;
        }
        Ok(())
    }

    /// `mlb run` flags of instance `i` (after `run --admin-addr ...`): XDP on both its
    /// interfaces, SNAT from its backend-side address, its own bpf filesystem, the fleet's VIP
    /// and hash secret, Marathon at `marathon`.
    pub fn agent_args(&self, i: usize, marathon: &str) -> Vec<String> {
        let bpffs = self.mounts[i].join("mlb").display().to_string();
        [
            "-m",
            marathon,
            "--group",
            "external",
            "--vip",
            VIP,
            "--dataplane",
            "xdp",
            "--xdp-iface",
            &format!("lb{i}-rt"),
            "--xdp-iface",
            &format!("lb{i}-sw"),
            "--snat-addr",
            &snat_addr(i),
            "--bpffs-dir",
            &bpffs,
            "--hash-secret",
            HASH_SECRET,
            // A small (prime) table: reading it back (`/_mlb/xdp/tables`) takes one map read
            // per two slots, seconds at the default 65,537 on a loaded test machine.
            "--maglev-table-size",
            "4099",
        ]
        .map(String::from)
        .to_vec()
    }
}

impl EcmpLab {
    /// `mlb run` flags that make instance `i` forward by direct server return, encapsulating
    /// from its backend-side address.
    pub fn dsr_args(i: usize) -> Vec<String> {
        ["--forwarding", "dsr", "--dsr-source", &snat_addr(i)]
            .map(String::from)
            .to_vec()
    }

    /// Runs `mlb backend-setup` for the VIP in backend `n` (1-based), decapsulating with XDP
    /// (the test kernel may lack the `ipip` module), plus `extra` flags (`--check`). Returns
    /// its output; fails when it does (`--check` with something missing).
    pub fn backend_setup(&self, n: usize, extra: &[&str]) -> Result<String> {
        let bin = crate::mlb_bin::mlb_bin().display().to_string();
        let bpffs = self.mounts[self.lbs.len()].display().to_string();
        let iface = format!("be{n}-sw");
        let mut argv = vec![
            bin.as_str(),
            "backend-setup",
            "--vip",
            VIP,
            "--decap",
            "xdp",
            "--iface",
            &iface,
            "--bpffs-dir",
            &bpffs,
        ];
        argv.extend(extra);
        self.backends[n - 1].exec(&argv)
    }

    /// What a router does when instance `i` stops announcing the VIP (BGP withdrawal): the
    /// VIP's route keeps only the other instances' next hops.
    pub fn withdraw(&self, i: usize) -> Result<()> {
        let vip = format!("{VIP}/32");
        let mut route = vec!["ip".to_owned(), "route".into(), "replace".into(), vip];
        for j in (0..self.lbs.len()).filter(|j| *j != i) {
            route.extend(["nexthop".to_owned(), "via".into(), lb_addr(j)]);
        }
        let argv: Vec<&str> = route.iter().map(String::as_str).collect();
        self.rt.exec(&argv).map(drop)
    }

    /// Starts in every backend an echo server on `port` of all its addresses (the VIP too, for
    /// direct server return), served by `rt`.
    pub fn echo_backends(&self, port: u16, rt: &tokio::runtime::Runtime) -> Result<()> {
        for be in &self.backends {
            let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
            let listener = be.enter(move || std::net::TcpListener::bind(addr))??;
            listener.set_nonblocking(true)?;
            let _guard = rt.enter();
            let listener = tokio::net::TcpListener::from_std(listener)?;
            rt.spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let (mut r, mut w) = stream.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            });
        }
        Ok(())
    }
}

impl Drop for EcmpLab {
    fn drop(&mut self) {
        for m in &self.mounts {
            let _ = std::process::Command::new("umount").arg(m).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
