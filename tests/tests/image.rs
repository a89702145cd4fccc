//! The container image (`cargo xtask image --test` builds it and runs this): started by podman
//! with host networking (a test namespace's), only the documented capabilities and no
//! `--privileged`, with the stock marathon-lb command line, it routes the simulator's apps.
//! Ignored by `cargo test`: it needs root, podman and the image (`MLB_IMAGE`).
//!
//! Sandboxes differ in what an OCI runtime may do: crun refuses a host whose cgroup v2
//! hierarchy has controllers while v1 is mounted ("hybrid mode"), and a root without
//! CAP_SYS_RESOURCE cannot raise the open-files and process limits podman asks for by default.
//! So the test passes limits no higher than its own, tries podman's default runtime then runc,
//! and when neither can start a container it says why and runs the image's own root file system
//! (exported by podman) with `chroot` in the same namespace lab instead.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
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

/// The stock DC/OS package's arguments (after the image's `mlb` entry point).
const STOCK_ARGS: [&str; 7] = [
    "sse",
    "-m",
    "{marathon}",
    "--health-check",
    "--haproxy-map",
    "--group",
    "external",
];

#[test]
#[ignore = "run by `cargo xtask image --test` (root, podman, the image)"]
fn image_routes_the_apps_with_host_networking_and_documented_capabilities() {
    if !require_netns_and_bpf("image_routes_the_apps") {
        return;
    }
    let image = std::env::var("MLB_IMAGE").expect("MLB_IMAGE: the image to test (mlb:<version>)");
    let limits = ulimit_args();
    let forced_rootfs = std::env::var("MLB_IMAGE_RUN").is_ok_and(|v| v == "rootfs");
    let runtime = if forced_rootfs {
        Err("MLB_IMAGE_RUN=rootfs".to_owned())
    } else {
        pick_runtime(&image, &limits)
    };
    let result = match runtime {
        Ok(runtime) => {
            eprintln!(
                "image: podman runtime {}",
                runtime.as_deref().unwrap_or("(default)")
            );
            run_with_podman(&image, runtime.as_deref(), &limits)
        }
        Err(why) => {
            eprintln!(
                "image: podman cannot start a container here ({why}); running the image's root \
                 file system with chroot instead"
            );
            run_rootfs(&image)
        }
    };
    if let Err(e) = result {
        panic!("image: {e:#}");
    }
}

/// `--ulimit nofile=N:N --ulimit nproc=M:M` at most this process's own limits: podman's
/// defaults (1,048,576 files as root) need CAP_SYS_RESOURCE to be raised to.
fn ulimit_args() -> Vec<String> {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let hard = |name: &str, cap: u64| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| {
                l[name.len()..]
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u64>()
                    .ok()
            })
            .map_or(cap, |h| h.min(cap))
    };
    let (files, procs) = (hard("Max open files", 16_384), hard("Max processes", 4_096));
    vec![
        "--ulimit".into(),
        format!("nofile={files}:{files}"),
        "--ulimit".into(),
        format!("nproc={procs}:{procs}"),
    ]
}

/// The first runtime (podman's default, then runc) that runs `mlb version` from the image;
/// `Err` says why each failed.
fn pick_runtime(image: &str, limits: &[String]) -> Result<Option<String>, String> {
    let mut failures = Vec::new();
    for runtime in [None, Some("runc")] {
        let mut cmd = Command::new("podman");
        if let Some(r) = runtime {
            cmd.args(["--runtime", r]);
        }
        let out = cmd
            .args(["run", "--rm", "--network", "none"])
            .args(limits)
            .args([image, "version"])
            .output();
        match out {
            Ok(o) if String::from_utf8_lossy(&o.stdout).contains("xdp program sha256") => {
                return Ok(runtime.map(str::to_owned));
            }
            Ok(o) => failures.push(format!(
                "{}: {}",
                runtime.unwrap_or("default runtime"),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => failures.push(format!("{}: {e}", runtime.unwrap_or("podman"))),
        }
    }
    Err(failures.join("; "))
}

/// `podman run` in the lab's namespace. The lab starts programs with `ip netns exec`, which
/// remounts /sys and so hides the cgroup mounts podman needs: `nsenter` takes podman back to
/// this test's mount namespace, its network namespace staying the lab's.
fn run_with_podman(image: &str, runtime: Option<&str>, limits: &[String]) -> Result<()> {
    let container = Container(format!("mlbt-image-{}", std::process::id()));
    let mount_ns = format!("--mount=/proc/{}/ns/mnt", std::process::id());
    let mut argv: Vec<&str> = vec![&mount_ns, "podman"];
    if let Some(r) = runtime {
        argv.extend(["--runtime", r]);
    }
    argv.extend(["run", "--rm", "--name", &container.0, "--network", "host"]);
    argv.extend([
        "--cap-drop",
        "ALL",
        "--cap-add",
        "BPF,NET_ADMIN,SYS_ADMIN,NET_BIND_SERVICE",
    ]);
    argv.extend(limits.iter().map(String::as_str));
    argv.extend(["--env", "RUST_LOG=info", image]);
    argv.extend(STOCK_ARGS);
    in_netns_lab(Path::new("nsenter"), &argv, &[], Vec::new(), |_, _, _| {
        Ok(())
    })
}

/// The image's root file system, exported by podman (`create` needs no runtime), with `mlb`
/// run from it by `chroot`: the same binary and libraries the container would run.
fn run_rootfs(image: &str) -> Result<()> {
    let container = Container(format!("mlbt-image-fs-{}", std::process::id()));
    let dir = std::env::temp_dir().join(&container.0);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        podman(&["create", "--name", &container.0, image])?;
        let tar = dir.with_extension("tar");
        podman(&["export", "--output", &tar.to_string_lossy(), &container.0])?;
        let status = Command::new("tar")
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&dir)
            .status()?;
        let _ = std::fs::remove_file(&tar);
        if !status.success() {
            bail!("extracting the image's file system failed");
        }
        let root = dir.to_string_lossy().into_owned();
        let mut argv = vec![root.as_str(), "/usr/local/bin/mlb"];
        argv.extend(STOCK_ARGS);
        in_netns_lab(
            Path::new("chroot"),
            &argv,
            &[],
            Vec::new(),
            |_, _, _| Ok(()),
        )
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn podman(args: &[&str]) -> Result<()> {
    let out = Command::new("podman")
        .args(args)
        .output()
        .with_context(|| format!("podman {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "podman {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
