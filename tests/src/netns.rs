//! Network namespaces and veth links for end-to-end tests.
//!
//! Every namespace gets a unique name (`mlbt-<pid>-<n>-<tag>`), so tests run in parallel without
//! colliding, and is deleted on drop, also when the test panics. Processes spawned with
//! [`Netns::spawn`] are killed by PID when their [`Child`] guard drops. Addresses come from
//! 198.18.0.0/15 and fd00::/8 and namespaces get no default route: test traffic cannot leave.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, Result, bail};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A named network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with `lo` up. `tag` (a few letters) shows up in its name for debugging.
    pub fn new(tag: &str) -> Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("mlbt-{}-{id}-{tag}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))
            .with_context(|| format!("creating namespace {name}"))?;
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace and returns its stdout; fails if it fails.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        let out = run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a long-running command inside the namespace; it is killed when the guard drops.
    pub fn spawn(&self, argv: &[&str]) -> Result<Child> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {argv:?} in {}", self.name))?;
        Ok(Child(child))
    }

    /// Like [`Netns::spawn`], with a configured [`Command`] (env, stdio) run inside the namespace.
    pub fn spawn_command(
        &self,
        program: &str,
        configure: impl FnOnce(&mut Command),
    ) -> Result<Child> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program])
            .stdin(Stdio::null());
        configure(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {program} in {}", self.name))?;
        Ok(Child(child))
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    ///
    /// Sockets keep the namespace they were created in, so a listener bound here can be used
    /// from any thread afterwards; likewise interface names are resolved in this namespace.
    pub fn enter<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a namespace fd only changes this (scoped, short-lived) thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    bail!("setns({path}): {}", std::io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in namespace {} panicked", self.name))?
        })
    }
}

impl Netns {
    /// A tokio runtime whose threads all live in this namespace: sockets made on them (a
    /// simulator's listener) are here. Futures must run on its threads ([`on`]), not on the
    /// calling one.
    pub fn runtime(&self, threads: usize) -> Result<tokio::runtime::Runtime> {
        // Threads inherit the namespace of the thread that creates them.
        self.enter(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()
        })?
        .with_context(|| format!("tokio runtime in namespace {}", self.name))
    }
}

/// Runs `fut` on one of `rt`'s threads (so its sockets are made in `rt`'s namespace).
pub fn on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T> {
    Ok(rt.block_on(rt.spawn(fut))?)
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A process started in a namespace; killed (by PID) and reaped on drop.
pub struct Child(pub std::process::Child);

impl Child {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit; returns its status.
    pub fn terminate(&mut self, timeout: std::time::Duration) -> Result<std::process::ExitStatus> {
        let pid = i32::try_from(self.0.id())?;
        // SAFETY: plain kill(2) on the PID of a child we own and have not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!("process {pid} did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// One end of a veth link.
pub struct VethEnd<'a> {
    pub ns: &'a Netns,
    /// Interface name (≤ 15 bytes), unique within its namespace.
    pub name: &'a str,
    /// Addresses with prefix, e.g. `198.18.1.1/24`, `fd00:198:18:1::1/64`.
    pub addrs: &'a [&'a str],
}

/// Creates a veth pair between two namespaces, assigns addresses, brings both ends up, and turns
/// TX checksum offload off on both: packets a namespace sends otherwise carry partial checksums,
/// which XDP forwarding turns into bad checksums on arrival.
pub fn veth(a: &VethEnd<'_>, b: &VethEnd<'_>) -> Result<()> {
    run(Command::new("ip").args([
        "link",
        "add",
        a.name,
        "netns",
        a.ns.name(),
        "type",
        "veth",
        "peer",
        "name",
        b.name,
        "netns",
        b.ns.name(),
    ]))
    .with_context(|| format!("creating veth {} <-> {}", a.name, b.name))?;
    for end in [a, b] {
        for addr in end.addrs {
            // `nodad`: IPv6 addresses usable at once, no duplicate-address detection wait.
            if addr.contains(':') {
                end.ns
                    .exec(&["ip", "-6", "addr", "add", addr, "dev", end.name, "nodad"])?;
            } else {
                end.ns.exec(&["ip", "addr", "add", addr, "dev", end.name])?;
            }
        }
        end.ns.exec(&["ip", "link", "set", end.name, "up"])?;
        end.ns
            .exec(&["ethtool", "-K", end.name, "tx", "off"])
            .context("ethtool is needed (cargo xtask setup installs it)")?;
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
