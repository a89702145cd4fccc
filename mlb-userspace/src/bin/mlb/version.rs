//! `mlb version`: what this binary is, for bug reports and for checking a deployed image.
use mlb::dataplane::xdp::embedded_object;

/// The lines `mlb version` prints.
pub fn text() -> String {
    let object = embedded_object();
    let xdp = if object.is_empty() {
        "xdp: not embedded (built with AYA_BUILD_SKIP)".to_owned()
    } else {
        let digest = ring::digest::digest(&ring::digest::SHA256, object);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("xdp program sha256: {hex} ({} bytes)", object.len())
    };
    format!(
        "mlb {}\ngit commit: {}\n{xdp}\ntarget: {}-{}\nfeatures: {}\n",
        version(),
        env!("MLB_GIT_COMMIT"),
        std::env::consts::ARCH,
        std::env::consts::OS,
        FEATURES.join(", ")
    )
}

/// The version this binary reports: the crate's, or `MLB_VERSION_OVERRIDE`, read for this
/// string only (the restart test "upgrades" to a binary that reports another version).
pub fn version() -> String {
    std::env::var("MLB_VERSION_OVERRIDE").unwrap_or_else(|_| env!("CARGO_PKG_VERSION").to_owned())
}

/// What this build does (mlb has no optional cargo features: every build has all of these).
const FEATURES: &[&str] = &[
    "xdp-l4 (maglev, full NAT)",
    "userspace-l4",
    "http-proxy (http/1.1, h2)",
    "tls (rustls, ring)",
    "marathon (sse, poll, basic auth, dcos service account)",
    "marathon-lb command line and image environment",
    "syslog",
];
