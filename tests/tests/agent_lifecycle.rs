//! The `mlb` agent attaches its XDP program where told, detaches it on SIGTERM, and refuses an
//! interface that another XDP program already owns.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
use std::{process::Stdio, time::Duration};

use mlb_tests::{
    mlb_bin::mlb_bin,
    netns::{Netns, VethEnd, veth},
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

#[test]
fn agent_attaches_and_detaches_on_sigterm() {
    if !require_netns_and_bpf("agent_attaches_and_detaches_on_sigterm") {
        return;
    }
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
    let bin = mlb_bin();
    let mut agent = lb
        .spawn_command(bin.to_str().unwrap(), |c| {
            c.args([
                "run",
                "--xdp-iface",
                "lb-cli",
                "--dataplane",
                "xdp",
                "--admin-addr",
                "127.0.0.1:0",
            ])
            .stderr(Stdio::null());
        })
        .unwrap();
    assert!(
        wait_until(|| xdp_attached(&lb, "lb-cli")),
        "mlb did not attach XDP to lb-cli"
    );

    // A second agent on the same interface must refuse to start, with a non-zero exit.
    let second = std::process::Command::new("ip")
        .args(["netns", "exec", lb.name(), bin.to_str().unwrap()])
        .args([
            "run",
            "--xdp-iface",
            "lb-cli",
            "--dataplane",
            "xdp",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(
        !second.status.success(),
        "a second mlb attached to an owned interface"
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("lb-cli"),
        "the refusal names the interface: {err}"
    );

    let status = agent.terminate(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "mlb exited with {status}");
    assert!(
        !xdp_attached(&lb, "lb-cli"),
        "XDP program left attached after SIGTERM"
    );
}
