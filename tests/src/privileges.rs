//! Tests that need root (network namespaces, XDP, BPF_PROG_TEST_RUN) check here first and say
//! in the output that they were skipped and why, instead of silently passing.

/// Whether this process can create namespaces and load BPF programs (root, or CAP_NET_ADMIN +
/// CAP_BPF + CAP_SYS_ADMIN in its effective set).
pub fn can_use_netns_and_bpf() -> bool {
    // Effective capabilities from /proc: CAP_NET_ADMIN = 12, CAP_SYS_ADMIN = 21, CAP_BPF = 39.
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        return false;
    };
    let needed = (1u64 << 12) | (1u64 << 21) | (1u64 << 39);
    eff & needed == needed
}

/// Returns `true` when the test may run; otherwise prints why it is skipped and returns `false`.
///
/// ```ignore
/// if !mlb_tests::privileges::require_netns_and_bpf("xdp_counts_tcp") { return; }
/// ```
pub fn require_netns_and_bpf(test: &str) -> bool {
    if can_use_netns_and_bpf() {
        return true;
    }
    eprintln!(
        "SKIPPED {test}: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF) to create network \
         namespaces and load XDP programs; run the tests as root (`cargo xtask test` as root)"
    );
    false
}
