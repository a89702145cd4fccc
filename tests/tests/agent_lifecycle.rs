//! The `mlb` agent attaches its XDP program where told through pinned bpf links, leaves it
//! forwarding on SIGTERM (the next agent adopts it), removes it on `mlb stop --detach` or with
//! `--detach-on-exit`, and refuses an interface another XDP program owns, a pin directory
//! another agent holds, or a datapath pinned with another map layout.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use mlb_common::{consts::ABI_VERSION, maps};
use mlb_tests::{
    mlb_bin::mlb_bin,
    netns::{Child, Netns, VethEnd, veth},
    privileges::require_netns_and_bpf,
};

fn xdp_attached(ns: &Netns, iface: &str) -> bool {
    ns.exec(&["ip", "link", "show", "dev", iface])
        .unwrap()
        .contains("xdp")
}

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// A bpf filesystem mounted for one test (here: `ip netns exec` gives each command a mount
/// namespace of its own, and the pins must outlive the agent); unmounted on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    fn mount(tag: &str) -> Bpffs {
        let dir = std::env::temp_dir().join(format!("mlbt-bpffs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success(), "mount -t bpf");
        Bpffs(dir)
    }

    /// A pin directory inside it.
    fn dir(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn lab() -> (Netns, Netns) {
    let cli = Netns::new("cli").unwrap();
    let lb = Netns::new("lb").unwrap();
    veth(
        &VethEnd {
            ns: &cli,
            name: "cli-lb",
            addrs: &["198.18.1.1/24"],
        },
        &VethEnd {
            ns: &lb,
            name: "lb-cli",
            addrs: &["198.18.1.2/24"],
        },
    )
    .unwrap();
    (cli, lb)
}

fn run_args(pins: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--xdp-iface",
        "lb-cli",
        "--dataplane",
        "xdp",
        "--admin-addr",
        "127.0.0.1:0",
        "--bpffs-dir",
    ]
    .map(String::from)
    .into();
    args.push(pins.display().to_string());
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

fn spawn_agent(lb: &Netns, pins: &Path, extra: &[&str]) -> Child {
    let bin = mlb_bin();
    let args = run_args(pins, extra);
    let agent = lb
        .spawn_command(bin.to_str().unwrap(), |c| {
            c.args(&args).stderr(Stdio::null());
        })
        .unwrap();
    assert!(
        wait_until(|| xdp_attached(lb, "lb-cli")),
        "mlb did not attach XDP to lb-cli"
    );
    // A SIGTERM before the agent handles it would kill it outright.
    let status = format!("/proc/{}/status", agent.pid());
    let handles_term = || {
        std::fs::read_to_string(&status)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|caught| caught & (1 << (libc::SIGTERM - 1)) != 0)
    };
    assert!(wait_until(handles_term), "mlb does not handle SIGTERM");
    agent
}

/// `mlb <args>` in `lb`, to completion.
fn mlb_in(lb: &Netns, args: &[String]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", lb.name(), mlb_bin().to_str().unwrap()])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn agent_leaves_xdp_forwarding_on_sigterm_and_stop_detach_removes_it() {
    if !require_netns_and_bpf("agent_leaves_xdp_forwarding_on_sigterm_and_stop_detach_removes_it") {
        return;
    }
    let (_cli, lb) = lab();
    let bpffs = Bpffs::mount("lifecycle");
    let pins = bpffs.dir("mlb");
    let mut agent = spawn_agent(&lb, &pins, &[]);

    // A second agent on the same pin directory must refuse: the first one holds it.
    let second = mlb_in(&lb, &run_args(&pins, &[]));
    assert!(
        !second.status.success(),
        "a second mlb took a held pin directory"
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use by another running mlb"), "{err}");

    // A second agent with a pin directory of its own must refuse the owned interface.
    let third = mlb_in(&lb, &run_args(&bpffs.dir("other"), &[]));
    assert!(
        !third.status.success(),
        "a second mlb attached to an owned interface"
    );
    let err = String::from_utf8_lossy(&third.stderr);
    assert!(
        err.contains("lb-cli"),
        "the refusal names the interface: {err}"
    );

    let status = agent.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "mlb exited with {status}");
    assert!(
        xdp_attached(&lb, "lb-cli"),
        "SIGTERM detached the XDP program: it must keep forwarding for the next agent"
    );

    let plain = mlb_in(&lb, &["stop".into()]);
    assert!(
        !plain.status.success(),
        "`mlb stop` without --detach did something"
    );
    assert!(String::from_utf8_lossy(&plain.stderr).contains("--detach"));
    let mut stop: Vec<String> = ["stop", "--detach", "--bpffs-dir"].map(String::from).into();
    stop.push(pins.display().to_string());
    let out = mlb_in(&lb, &stop);
    assert!(
        out.status.success(),
        "mlb stop --detach: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("lb-cli"),
        "names the interface it detached from"
    );
    assert!(
        wait_until(|| !xdp_attached(&lb, "lb-cli")),
        "XDP program still attached after mlb stop --detach"
    );
    assert!(!pins.exists(), "pins left in {}", pins.display());
}

#[test]
fn detach_on_exit_removes_program_and_pins() {
    if !require_netns_and_bpf("detach_on_exit_removes_program_and_pins") {
        return;
    }
    let (_cli, lb) = lab();
    let bpffs = Bpffs::mount("detach-on-exit");
    let pins = bpffs.dir("mlb");
    let mut agent = spawn_agent(&lb, &pins, &["--detach-on-exit"]);
    let status = agent.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "mlb exited with {status}");
    assert!(
        wait_until(|| !xdp_attached(&lb, "lb-cli")),
        "XDP program left attached with --detach-on-exit"
    );
    assert!(!pins.exists(), "pins left in {}", pins.display());
}

/// `mlb <args>` in `lb` that must be refused: its error output.
fn refused(lb: &Netns, args: &[String]) -> String {
    let out = mlb_in(lb, args);
    assert!(!out.status.success(), "mlb {args:?} was not refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An upgrade never reads maps of another layout: a datapath pinned by an agent of another
/// layout version (its own `abi-N` directory), or a pinned map whose key or value size is not
/// this build's (a layout change without a version bump), is refused with the command that
/// replaces it, while the old datapath keeps forwarding; after that command the agent starts.
#[test]
fn an_agent_refuses_a_datapath_pinned_with_another_map_layout() {
    if !require_netns_and_bpf("an_agent_refuses_a_datapath_pinned_with_another_map_layout") {
        return;
    }
    let (_cli, lb) = lab();
    let bpffs = Bpffs::mount("layout");
    let pins = bpffs.dir("mlb");
    let ours = pins.join(format!("abi-{ABI_VERSION}"));
    let mut agent = spawn_agent(&lb, &pins, &[]);
    assert!(agent.terminate(Duration::from_secs(10)).unwrap().success());

    // The conntrack map as the previous layout had it: 64-byte values.
    let ct = ours.join("maps").join(maps::CONNTRACK);
    std::fs::remove_file(&ct).unwrap();
    let ct_path = ct.display().to_string();
    let created = Command::new("bpftool")
        .args(["map", "create", &ct_path, "type", "lru_hash", "key", "40"])
        .args(["value", "64", "entries", "16", "name", maps::CONNTRACK])
        .status()
        .unwrap();
    assert!(created.success(), "bpftool map create");
    let err = refused(&lb, &run_args(&pins, &[]));
    assert!(
        err.contains(maps::CONNTRACK)
            && err.contains("value size 64")
            && err.contains("mlb stop --detach"),
        "{err}"
    );

    // The datapath of an older layout version, pinned under its own directory.
    let older = format!("abi-{}", ABI_VERSION - 1);
    std::fs::rename(&ours, pins.join(&older)).unwrap();
    let err = refused(&lb, &run_args(&pins, &[]));
    assert!(
        err.contains(&older) && err.contains("mlb stop --detach"),
        "{err}"
    );
    assert!(
        xdp_attached(&lb, "lb-cli"),
        "the refused agent detached the datapath it did not adopt"
    );

    // Replaced as the refusal says.
    let mut stop: Vec<String> = ["stop", "--detach", "--bpffs-dir"].map(String::from).into();
    stop.push(pins.display().to_string());
    let out = mlb_in(&lb, &stop);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(|| !xdp_attached(&lb, "lb-cli")));
    let mut agent = spawn_agent(&lb, &pins, &["--detach-on-exit"]);
    assert!(ours.join("maps").join(maps::CONNTRACK).exists());
    assert!(agent.terminate(Duration::from_secs(10)).unwrap().success());
}
