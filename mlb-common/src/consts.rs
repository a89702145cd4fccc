//! Sizes and limits shared by the XDP program and the agent.

/// Number of per-CPU counter slots in the global statistics array (see [`crate::stats::Counter`]).
pub const STATS_SLOTS: u32 = crate::stats::Counter::COUNT as u32;

/// XDP return codes (`enum xdp_action` of the kernel UAPI), for user space and tests.
pub mod xdp_action {
    pub const XDP_ABORTED: u32 = 0;
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
    pub const XDP_TX: u32 = 3;
    pub const XDP_REDIRECT: u32 = 4;
}
