//! Attaching the XDP decapsulation program (`mlb_decap`, in the embedded object) to a backend's
//! interface, its link pinned so it stays after `mlb backend-setup` exits.
use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode, links::FdLink},
};
use mlb_common::maps;

use super::BackendSetupError;
use crate::{dataplane::xdp::embedded_object, options::XdpAttachMode};

/// Name of the decapsulation entry point in the object.
pub const DECAP_PROGRAM: &str = "mlb_decap";

/// The per-CPU scratch map of the load-balancing program (not part of the agent's ABI).
const SCRATCH_MAP: &str = "MLB_SCRATCH";

/// The embedded object with `mlb_decap` loaded into the kernel (verifier included); its
/// entry point is [`DECAP_PROGRAM`].
pub fn load() -> Result<Ebpf, String> {
    let mut loader = EbpfLoader::new();
    // The object's maps belong to the load-balancing program: created (the loader creates
    // them all), but as small as can be, since the decapsulation program uses none.
    for name in maps::ALL.iter().chain(&[SCRATCH_MAP]) {
        loader.map_max_entries(name, 1);
    }
    let mut ebpf = loader
        .load(embedded_object())
        .map_err(|e| format!("loading the object: {e}"))?;
    let program: &mut Xdp = ebpf
        .program_mut(DECAP_PROGRAM)
        .ok_or_else(|| format!("no program {DECAP_PROGRAM} in the object"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    program.load().map_err(|e| format!("loading: {e}"))?;
    Ok(ebpf)
}

/// Loads `mlb_decap`, attaches it to `iface` and pins the link at `pin`.
pub fn attach(iface: &str, mode: XdpAttachMode, pin: &Path) -> Result<(), BackendSetupError> {
    let err = |reason: String| BackendSetupError::Decap {
        iface: iface.to_owned(),
        reason,
    };
    let mut ebpf = load().map_err(err)?;
    let program: &mut Xdp = ebpf
        .program_mut(DECAP_PROGRAM)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| err(format!("no XDP program {DECAP_PROGRAM}")))?;
    let xdp_mode = match mode {
        XdpAttachMode::Native => XdpMode::Driver,
        XdpAttachMode::Skb => XdpMode::Skb,
    };
    let id = program.attach(iface, xdp_mode).map_err(|e| {
        err(format!(
            "attaching ({mode:?} mode; try --xdp-mode skb): {e}"
        ))
    })?;
    let link = program.take_link(id).map_err(|e| err(e.to_string()))?;
    let fd = FdLink::try_from(link).map_err(|e| err(format!("no bpf link (Linux >= 5.9): {e}")))?;
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).map_err(|source| BackendSetupError::Io {
            path: dir.to_owned(),
            source,
        })?;
    }
    fd.pin(pin).map_err(|e| {
        err(format!(
            "pinning at {} (a bpf filesystem?): {e}",
            pin.display()
        ))
    })?;
    Ok(())
}
