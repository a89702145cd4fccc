//! Every map of the XDP program, sized by `mlb_common::consts`. User space finds them by the
//! names in `mlb_common::maps`.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use mlb_common::consts::STATS_SLOTS;

/// Global counters, one `u64` per [`mlb_common::stats::Counter`], per CPU.
#[map(name = "MLB_STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_SLOTS, 0);
