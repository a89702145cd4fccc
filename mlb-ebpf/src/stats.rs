//! Counting into the per-CPU statistics array.
use mlb_common::stats::Counter;

use crate::maps::STATS;

/// Adds one to `counter` on this CPU. Per-CPU slots need no atomic operation.
#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = STATS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer comes from the map lookup and is valid for this CPU.
        unsafe { *slot += 1 };
    }
}
