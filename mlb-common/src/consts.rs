//! Sizes and limits shared by the XDP program and the agent.

/// Number of per-CPU counter slots in the global statistics array (see [`crate::stats::Counter`]).
pub const STATS_SLOTS: u32 = crate::stats::Counter::COUNT as u32;
