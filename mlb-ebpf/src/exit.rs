//! Early exits: why a packet leaves the fast path before it is forwarded.
//!
//! Every step returns `Result<_, Exit>`; the entry point turns an `Exit` into a verdict and counts
//! its reason in one place ([`Exit::into_verdict`]). An exit always happens before the packet is
//! written (the rewrite is the last step), so a passed packet reaches the kernel untouched; only
//! an answer the program sends back ([`Exit::Answered`]) replaces the packet.
use mlb_common::{stats::Counter, verdict::Verdict};

use crate::stats::count;

#[derive(Clone, Copy)]
pub enum Exit {
    /// Not for the fast path (not ours, malformed, not configured, no route): the kernel gets
    /// the packet as it arrived. The counter names why.
    Pass(Counter),
    /// Refused on purpose (a table is full). The counter names why.
    Drop(Counter),
    /// Answered by the program itself, sent back out of the ingress interface with the given
    /// verdict (`too_big.rs`: the one exit that writes the packet). The counter names the answer.
    Answered(Counter, Verdict),
    /// A map lookup that cannot fail did: a bug. Counted as its verdict only.
    Aborted,
}

impl Exit {
    /// Counts the reason and returns the verdict.
    #[inline(always)]
    pub fn into_verdict(self) -> Verdict {
        match self {
            Exit::Pass(reason) => {
                count(reason);
                Verdict::Pass
            }
            Exit::Drop(reason) => {
                count(reason);
                Verdict::Drop
            }
            Exit::Answered(answer, verdict) => {
                count(answer);
                verdict
            }
            Exit::Aborted => Verdict::Aborted,
        }
    }
}
