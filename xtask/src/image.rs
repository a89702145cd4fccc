//! `cargo xtask image`: an OCI image of mlb built without pulling anything. The `mlb` binary and
//! the shared libraries it links (from the Debian packages installed here), the CA bundle and an
//! empty /tmp make a root file system; `podman build` puts it in a `FROM scratch` image whose
//! entry point is `mlb`. `--test` then runs the image (host networking in a test namespace, the
//! documented capabilities, no `--privileged`) against the Marathon simulator.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{cargo, setup};

/// Debian packages building and running the image needs (runc: crun cannot start containers on
/// hosts with cgroup v1 plus a v2 hierarchy that has controllers; the image test falls back to it).
pub const IMAGE_PACKAGES: &[&str] = &["podman", "runc", "iproute2"];

/// `mlb:<version>`.
pub fn tag() -> String {
    format!("mlb:{}", env!("CARGO_PKG_VERSION"))
}

/// Builds the image (release binary, or the debug one with `dev`); with `test`, runs the image
/// test.
pub fn run(dev: bool, test: bool) -> Result<()> {
    setup::run(IMAGE_PACKAGES)?;
    let (profile_args, profile_dir): (&[&str], &str) = if dev {
        (&[], "debug")
    } else {
        (&["--release"], "release")
    };
    let mut build = vec!["build", "--package", "mlb-userspace", "--bin", "mlb"];
    build.extend(profile_args);
    cargo(&build)?;
    let target = PathBuf::from("target");
    let bin = target.join(profile_dir).join("mlb");
    let context = target.join("image");
    let _ = fs::remove_dir_all(&context);
    let rootfs = context.join("rootfs");
    make_rootfs(&bin, &rootfs)?;
    fs::write(
        context.join("Containerfile"),
        "FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/usr/local/bin/mlb\"]\nCMD [\"--help\"]\n",
    )?;
    let tag = tag();
    let status = Command::new("podman")
        .args(["build", "--pull=never", "--tag", &tag, "--file"])
        .arg(context.join("Containerfile"))
        .arg(&context)
        .status()
        .context("running podman build")?;
    if !status.success() {
        bail!("podman build failed");
    }
    let _ = fs::remove_dir_all(&context);
    eprintln!("xtask image: built {tag} (podman images {tag}; podman save {tag} | docker load)");
    if test {
        cargo(&["build", "--package", "mlb-userspace", "--bin", "mlb"])?;
        let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo_bin)
            .args(["test", "--package", "tests", "--test", "image"])
            .args(["--", "--ignored", "--nocapture"])
            .env("MLB_IMAGE", &tag)
            .status()?;
        if !status.success() {
            bail!("the image test failed");
        }
    }
    Ok(())
}

/// `rootfs/usr/local/bin/mlb`, every library `ldd` lists at its own path, the CA bundle (for
/// HTTPS to Marathon) and a world-writable /tmp (certificates from the environment go there).
fn make_rootfs(bin: &Path, rootfs: &Path) -> Result<()> {
    let dest = rootfs.join("usr/local/bin");
    fs::create_dir_all(&dest)?;
    fs::copy(bin, dest.join("mlb")).with_context(|| format!("copying {}", bin.display()))?;
    let ldd = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    if !ldd.status.success() {
        bail!(
            "ldd {}: {}",
            bin.display(),
            String::from_utf8_lossy(&ldd.stderr)
        );
    }
    for lib in libraries(&String::from_utf8_lossy(&ldd.stdout)) {
        copy_into(rootfs, &lib)?;
    }
    let ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if ca.exists() {
        copy_into(rootfs, ca)?;
    }
    let tmp = rootfs.join("tmp");
    fs::create_dir_all(&tmp)?;
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

/// Paths of the libraries in `ldd` output (`libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (…)`
/// and the loader's own line `/lib64/ld-linux-x86-64.so.2 (…)`).
fn libraries(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies `path` (following symlinks) to the same path under `rootfs`.
fn copy_into(rootfs: &Path, path: &Path) -> Result<()> {
    let dest = rootfs.join(path.strip_prefix("/")?);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(path, &dest).with_context(|| format!("copying {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_libraries_from_ldd() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        assert_eq!(
            libraries(ldd),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }
}
