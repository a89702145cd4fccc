//! The container image (`cargo xtask image --test` builds it and runs this): started by podman
//! with host networking (a test namespace's), only the documented capabilities and no
//! `--privileged`, with the stock marathon-lb command line, it routes the simulator's apps.
//! Ignored by `cargo test`: it needs root, podman and the image (`MLB_IMAGE`).
use std::{path::Path, process::Command};

use dropin_common::in_netns_lab;
use mlb_tests::privileges::require_netns_and_bpf;

mod dropin_common;

/// Removes the container when the test ends, whatever happened (killing `podman run` leaves it).
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.0])
            .output();
    }
}

#[test]
#[ignore = "run by `cargo xtask image --test` (root, podman, the image)"]
fn image_routes_the_apps_with_host_networking_and_documented_capabilities() {
    if !require_netns_and_bpf("image_routes_the_apps") {
        return;
    }
    let image = std::env::var("MLB_IMAGE").expect("MLB_IMAGE: the image to test (mlb:<version>)");
    let container = Container(format!("mlbt-image-{}", std::process::id()));
    let argv = [
        "run",
        "--rm",
        "--name",
        &container.0,
        "--network",
        "host",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "BPF,NET_ADMIN,SYS_ADMIN,NET_BIND_SERVICE",
        "--env",
        "RUST_LOG=info",
        &image,
        "sse",
        "-m",
        "{marathon}",
        "--health-check",
        "--haproxy-map",
        "--group",
        "external",
    ];
    let result = in_netns_lab(
        Path::new("podman"),
        &argv,
        &[],
        Vec::new(),
        |_, _, _| Ok(()),
    );
    drop(container);
    if let Err(e) = result {
        panic!("image: {e:#}");
    }
}
