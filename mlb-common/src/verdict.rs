//! What the XDP program does with a packet.
use crate::stats::Counter;

/// The program's answer for one packet: the kernel's `enum xdp_action`, whose values the
/// discriminants are.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A bug or a map failure; the kernel drops the packet and reports `xdp:xdp_exception`.
    Aborted = 0,
    Drop = 1,
    /// The kernel's own stack handles the packet.
    Pass = 2,
    /// Sent back out of the interface it arrived on.
    Tx = 3,
    /// Sent out of the interface chosen by `bpf_redirect_map`.
    Redirect = 4,
}

impl Verdict {
    /// The counter that records this verdict.
    #[inline(always)]
    pub const fn counter(self) -> Counter {
        match self {
            Verdict::Aborted => Counter::VerdictAborted,
            Verdict::Drop => Counter::VerdictDrop,
            Verdict::Pass => Counter::VerdictPass,
            Verdict::Tx => Counter::VerdictTx,
            Verdict::Redirect => Counter::VerdictRedirect,
        }
    }
}
