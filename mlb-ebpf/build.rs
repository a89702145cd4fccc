//! The eBPF object is linked by `bpf-linker`, a tool cargo does not track: rebuild when it changes.
use which::which;

fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
