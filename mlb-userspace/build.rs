//! Builds the XDP program (`mlb-ebpf`) for `bpfel-unknown-none` with the nightly toolchain and
//! `bpf-linker`, and leaves the object in `OUT_DIR/mlb-ebpf` for `include_bytes_aligned!`.
//!
//! `cargo xtask setup` installs what this needs (nightly `rust-src`, `bpf-linker` built against
//! nightly's LLVM); the error below says so when something is missing.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        // Lint/doc builds that never run the program: embed an empty object.
        let out = std::env::var("OUT_DIR")?;
        std::fs::write(format!("{out}/mlb-ebpf"), [])?;
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    which::which("bpf-linker").map_err(|_| {
        anyhow!(
            "bpf-linker is not on PATH: the XDP program cannot be linked. \
             Run `cargo xtask setup` (it installs bpf-linker against the nightly toolchain's LLVM)."
        )
    })?;
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "mlb-ebpf")
        .ok_or_else(|| anyhow!("mlb-ebpf package not found in the workspace"))?;
    let cargo_metadata::Package {
        name,
        manifest_path,
        ..
    } = ebpf_package;
    let root_dir = manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?;
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], aya_build::Toolchain::default())
        .context("building the XDP program (mlb-ebpf); `cargo xtask setup` installs its toolchain")
}
