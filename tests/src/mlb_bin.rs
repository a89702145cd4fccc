//! Locating the `mlb` binary that `cargo xtask test` builds before the tests run.
use std::path::PathBuf;

/// Path of the `mlb` binary: `$MLB_BIN`, else `target/<profile>/mlb` next to this test binary.
pub fn mlb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MLB_BIN") {
        return PathBuf::from(p);
    }
    // Test binaries live in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary under target/<profile>/deps");
    let bin = profile_dir.join("mlb");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p mlb-userspace`, done by `cargo xtask test`)",
        bin.display()
    );
    bin
}
