//! Names of the maps in the XDP object, as user space looks them up with `take_map`.

/// Per-CPU array of `u64` counters indexed by [`crate::stats::Counter`].
pub const STATS: &str = "MLB_STATS";

/// Every map the agent expects to find in the object (checked by a unit test).
pub const ALL: &[&str] = &[STATS];
