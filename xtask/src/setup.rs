//! `cargo xtask setup`: makes this machine able to build and test mlb, idempotently.
//!
//! What it ensures, cheapest check first, so that a machine that has everything pays only a few
//! process spawns (well under a second):
//! 1. the nightly toolchain with its `rust-src` component (the eBPF crate is built with
//!    `-Z build-std=core` for `bpfel-unknown-none`);
//! 2. `bpf-linker`, built against the **same LLVM** as nightly rustc (the bitcode rustc emits
//!    must be readable by the linker's LLVM). It links against the nightly's own `libLLVM`
//!    through a directory of symlinks given as `LLVM_PREFIX`; a stamp file records which rustc it
//!    was built for, so a new nightly triggers a rebuild;
//! 3. the Debian packages the tests (or, for `bench`, the benchmarks) run.
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

/// Debian packages the test suite needs: `ip` (namespaces, veth), `ethtool` (offloads), `curl`
/// and `h2load` (real HTTP/1.1 and HTTP/2 clients in the proxy tests), `bpftool` (the XDP tests
/// read the program's counters with it), `prlimit` (util-linux: mlb under a 1,024 open-files limit).
pub const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "curl",
    "nghttp2-client",
    "bpftool",
    // promtool, which checks the `/metrics` exposition in the tests.
    "prometheus",
    "util-linux",
    // Headless Chromium loads the stats page in the tests (DOM and screenshot).
    "chromium",
    // marathon-lb's zdd.py runs against mlb when MLB_ZDD_PY names it (its imports).
    "python3-requests",
    "python3-six",
    "python3-dateutil",
    "python3-jwt",
    "python3-pycurl",
    // `openssl s_client` talks to TLS on a tcp-mode port in the tests.
    "openssl",
];
/// Packages `cargo xtask demo` needs: namespaces and offloads, and the `curl` and `nc` it tells
/// the user to try.
pub const DEMO_PACKAGES: &[&str] = &["iproute2", "ethtool", "curl", "netcat-openbsd"];
/// Extra packages for `cargo xtask bench`: the reference load balancer and the load generators
/// (`h2load` from nghttp2-client for the HTTP/2 case of `bench http`).
pub const BENCH_PACKAGES: &[&str] = &[
    "haproxy",
    "wrk",
    "iperf3",
    "nginx-light",
    "util-linux",
    "nghttp2-client",
    "curl",
];

/// Runs every step; `packages` are the Debian packages this command needs.
pub fn run(packages: &[&str]) -> Result<()> {
    let start = Instant::now();
    let nightly = ensure_nightly_rust_src()?;
    ensure_bpf_linker(&nightly)?;
    ensure_debian_packages(packages)?;
    eprintln!(
        "xtask setup: toolchain ready ({:.2}s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What we need to know about the nightly toolchain.
pub struct Nightly {
    sysroot: PathBuf,
    /// LLVM major version, e.g. 22.
    llvm_major: u32,
    /// `rustc -vV` output: identifies the exact compiler bpf-linker was built for.
    version_text: String,
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn ensure_nightly_rust_src() -> Result<Nightly> {
    let version_text = if let Ok(v) = output(Command::new("rustc").args(["+nightly", "-vV"])) {
        v
    } else {
        eprintln!(
            "xtask setup: installing the nightly toolchain (rustup toolchain install nightly)"
        );
        let ok = Command::new("rustup")
            .args(["toolchain", "install", "nightly", "--profile", "minimal"])
            .status()
            .context("running rustup: is rustup installed? See https://rustup.rs")?
            .success();
        if !ok {
            bail!(
                "could not install the nightly toolchain; run `rustup toolchain install nightly` by hand"
            );
        }
        output(Command::new("rustc").args(["+nightly", "-vV"]))?
    };
    let llvm_major = version_text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .context("`rustc +nightly -vV` did not print an LLVM version")?;
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let core_src = sysroot.join("lib/rustlib/src/rust/library/core/Cargo.toml");
    if !core_src.exists() {
        eprintln!("xtask setup: adding rust-src to the nightly toolchain");
        let ok = Command::new("rustup")
            .args(["component", "add", "rust-src", "--toolchain", "nightly"])
            .status()?
            .success();
        if !ok || !core_src.exists() {
            bail!(
                "could not add rust-src; run `rustup component add rust-src --toolchain nightly`"
            );
        }
    }
    Ok(Nightly {
        sysroot,
        llvm_major,
        version_text,
    })
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

fn ensure_bpf_linker(nightly: &Nightly) -> Result<()> {
    let home = cargo_home();
    let linker = home.join("bin/bpf-linker");
    let stamp = home.join("mlb-bpf-linker.stamp");
    let want = format!("llvm-{}\n{}", nightly.llvm_major, nightly.version_text);
    if linker.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(());
    }
    eprintln!(
        "xtask setup: building bpf-linker against nightly's LLVM {} (takes a few minutes, once)",
        nightly.llvm_major
    );
    let prefix = home.join(format!("mlb-llvm-{}", nightly.llvm_major));
    let prefix_lib = prefix.join("lib");
    let _ = fs::remove_dir_all(&prefix);
    fs::create_dir_all(&prefix_lib)?;
    // The nightly ships libLLVM as `libLLVM.so.<major>.<minor>-rust-<ver>` (the soname) and
    // `libLLVM-<major>-rust-<ver>.so`; llvm-sys wants `libLLVM.so` under `$LLVM_PREFIX/lib`.
    let sys_lib = nightly.sysroot.join("lib");
    let mut soname = None;
    for entry in fs::read_dir(&sys_lib)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM.so.") {
            soname = Some(name);
        }
    }
    let soname = soname.with_context(|| {
        format!(
            "no libLLVM.so.* in {}: this nightly does not ship a shared LLVM",
            sys_lib.display()
        )
    })?;
    std::os::unix::fs::symlink(sys_lib.join(&soname), prefix_lib.join(&soname))?;
    std::os::unix::fs::symlink(sys_lib.join(&soname), prefix_lib.join("libLLVM.so"))?;
    let status = Command::new("cargo")
        .args([
            "+stable",
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{}", nightly.llvm_major),
        ])
        .env("LLVM_PREFIX", &prefix)
        // llvm-sys links by path; the binary then needs to find libLLVM at run time.
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", sys_lib.display()),
        )
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!(
            "cargo install bpf-linker failed (LLVM {} from {}). Check that crates.io is reachable \
             and that the nightly toolchain ships libLLVM; then run `cargo xtask setup` again",
            nightly.llvm_major,
            sys_lib.display()
        );
    }
    let check = Command::new(&linker).arg("--version").output();
    if !check.as_ref().is_ok_and(|o| o.status.success()) {
        bail!("bpf-linker was installed but does not run: {check:?}");
    }
    fs::write(&stamp, want)?;
    Ok(())
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn ensure_debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() {
        bail!("missing Debian packages: {list}. Install them as root: apt-get install {list}");
    }
    eprintln!("xtask setup: installing {list}");
    let update_ok = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .is_ok_and(|s| s.success());
    let install_ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    if !update_ok || !install_ok {
        bail!("could not install {list} with apt-get; install them by hand and run again");
    }
    Ok(())
}

/// Whether this process runs as root (needed for namespaces, XDP and apt).
pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|u| u.trim() == "0")
}
