//! Connection tracking shared by the XDP program and the agent: the TCP states of a flow, how a
//! segment moves a flow between them, and how long a flow may stay idle in each.
//!
//! Both halves of a flow (one conntrack entry per direction) carry the same state: the program
//! updates both whenever a segment of either direction changes it. The transition function and
//! the timeout table live here, in plain code, so the program, the agent's sweeper and the unit
//! tests all use the one definition.
use crate::{
    maps::{DIR_TO_BACKEND, NatEntry},
    net::{IPPROTO_UDP, tcp},
};

/// Client SYN seen, no answer yet.
pub const CT_SYN_SENT: u8 = 1;
/// Backend SYN-ACK seen, client's ACK not yet.
pub const CT_SYN_RECV: u8 = 2;
/// Handshake complete (also every UDP flow).
pub const CT_ESTABLISHED: u8 = 3;
/// The client sent a FIN; the backend has not.
pub const CT_FIN_WAIT: u8 = 4;
/// The backend sent a FIN; the client has not.
pub const CT_CLOSE_WAIT: u8 = 5;
/// Both sides sent a FIN: only the last ACK (or retransmissions) may follow.
pub const CT_TIME_WAIT: u8 = 6;
/// A RST was seen.
pub const CT_CLOSED: u8 = 7;

/// Every state, with the name user space reports it under (index = state - 1).
pub const STATE_NAMES: [(u8, &str); 7] = [
    (CT_SYN_SENT, "syn_sent"),
    (CT_SYN_RECV, "syn_recv"),
    (CT_ESTABLISHED, "established"),
    (CT_FIN_WAIT, "fin_wait"),
    (CT_CLOSE_WAIT, "close_wait"),
    (CT_TIME_WAIT, "time_wait"),
    (CT_CLOSED, "closed"),
];

/// A TCP segment that may open a flow: SYN without ACK or RST.
#[inline(always)]
pub const fn is_opening_syn(flags: u8) -> bool {
    flags & (tcp::SYN | tcp::ACK | tcp::RST) == tcp::SYN
}

/// A state in which the connection is over: a new SYN for the same 5-tuple starts a new flow.
#[inline(always)]
pub const fn is_closed(state: u8) -> bool {
    state == CT_TIME_WAIT || state == CT_CLOSED
}

/// The state after a TCP segment with `flags` travelling in `direction` (a `DIR_*` of the entry
/// it matched). Like Linux conntrack without sequence tracking: a RST closes from any state, the
/// first FIN half-closes (which side sent it decides FIN_WAIT or CLOSE_WAIT), the second FIN
/// leads to TIME_WAIT.
#[inline(always)]
pub const fn next_tcp_state(state: u8, direction: u8, flags: u8) -> u8 {
    if flags & tcp::RST != 0 {
        return CT_CLOSED;
    }
    let from_client = direction == DIR_TO_BACKEND;
    let fin = flags & tcp::FIN != 0;
    let syn_ack = flags & (tcp::SYN | tcp::ACK) == tcp::SYN | tcp::ACK;
    match state {
        CT_SYN_SENT | CT_SYN_RECV | CT_ESTABLISHED if fin => {
            if from_client {
                CT_FIN_WAIT
            } else {
                CT_CLOSE_WAIT
            }
        }
        CT_SYN_SENT if !from_client && syn_ack => CT_SYN_RECV,
        CT_SYN_RECV if from_client && flags & (tcp::ACK | tcp::SYN) == tcp::ACK => CT_ESTABLISHED,
        CT_FIN_WAIT if fin && !from_client => CT_TIME_WAIT,
        CT_CLOSE_WAIT if fin && from_client => CT_TIME_WAIT,
        s => s,
    }
}

/// `NatEntry::tw_flags`: the backend closed first and the client's FIN was seen, so the backend
/// holds the flow's 4-tuple in TIME_WAIT expecting `tw_rcv_nxt` next.
pub const TW_RECORDED: u8 = 1;
/// `NatEntry::tw_flags`: the client's FIN carried a TCP timestamp, in `tw_ts_recent`.
pub const TW_TIMESTAMP: u8 = 2;

/// How long a closed flow keeps its SNAT port at least ([`CtTimeouts::holds_port`]): the last
/// ACK's round trip, and Linux's minimum retransmission timeout (200 ms) for a lost one.
pub const CLOSED_PORT_GRACE_NS: u64 = 250_000_000;

/// How long a backend keeps a 4-tuple in TIME_WAIT after the client's FIN: Linux's fixed
/// `TCP_TIMEWAIT_LEN` (60 s), plus one second for the last ACK's way.
pub const BACKEND_TIME_WAIT_NS: u64 = 61 * 1_000_000_000;

/// Whether a backend (Linux's `tcp_timewait_state_process`) holding a 4-tuple in TIME_WAIT,
/// expecting `rcv_nxt` and having last seen timestamp `ts_recent` (if the old connection used
/// timestamps), accepts a new SYN with sequence number `seq` and timestamp `tsval` as a new
/// connection. A refused SYN is answered with an ACK the client resets, and the client
/// retransmits only a second later: under churn through SNAT, where the client's ISN and
/// timestamp offset are random per 4-tuple, about half the reused ports would stall so.
#[inline(always)]
pub const fn time_wait_accepts_syn(
    rcv_nxt: u32,
    ts_recent: Option<u32>,
    seq: u32,
    tsval: Option<u32>,
) -> bool {
    let seq_after = (seq.wrapping_sub(rcv_nxt) as i32) > 0;
    match (ts_recent, tsval) {
        (Some(recent), Some(ts)) => {
            // PAWS first: an older timestamp is refused whatever its sequence number.
            let older_by = recent.wrapping_sub(ts) as i32;
            older_by < 0 || (older_by == 0 && seq_after)
        }
        // The kernel reads the SYN's timestamp only if the old connection had them.
        _ => seq_after,
    }
}

/// Whether the backend of the flow whose reply half is `entry` may still hold its 4-tuple in
/// TIME_WAIT at `now_ns`.
#[inline(always)]
pub const fn backend_in_time_wait(entry: &NatEntry, now_ns: u64) -> bool {
    entry.tw_flags & TW_RECORDED != 0
        && now_ns.saturating_sub(entry.last_seen_ns) <= BACKEND_TIME_WAIT_NS
}

/// Whether a SYN (`seq`, `tsval`) may take over the SNAT port of the dead flow whose reply half
/// is `entry`: yes unless the backend may still hold that flow in TIME_WAIT and would refuse it.
#[inline(always)]
pub const fn port_reusable_for_syn(
    entry: &NatEntry,
    now_ns: u64,
    seq: u32,
    tsval: Option<u32>,
) -> bool {
    if !backend_in_time_wait(entry, now_ns) {
        return true;
    }
    let ts_recent = if entry.tw_flags & TW_TIMESTAMP != 0 {
        Some(entry.tw_ts_recent)
    } else {
        None
    };
    time_wait_accepts_syn(entry.tw_rcv_nxt, ts_recent, seq, tsval)
}

/// Idle timeouts in seconds, written by the agent into the program's configuration. An entry
/// idle for longer than its state's timeout is dead: the program treats it as absent (its SNAT
/// port can be taken by a new flow) and the agent's sweeper deletes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtTimeouts {
    /// SYN_SENT and SYN_RECV: a SYN flood holds SNAT ports for this long at most.
    pub tcp_syn: u32,
    pub tcp_established: u32,
    /// FIN_WAIT and CLOSE_WAIT.
    pub tcp_half_closed: u32,
    /// After both FINs: how long the last ACK and retransmitted FINs are still translated
    /// (a new flow's SYN may take the SNAT port sooner: [`CtTimeouts::holds_port`]).
    pub tcp_time_wait: u32,
    /// After a RST.
    pub tcp_closed: u32,
    pub udp: u32,
}

impl CtTimeouts {
    /// The idle timeout, in seconds, of a flow of `proto` in `state`.
    #[inline(always)]
    pub const fn seconds(&self, proto: u8, state: u8) -> u32 {
        if proto == IPPROTO_UDP {
            return self.udp;
        }
        match state {
            CT_SYN_SENT | CT_SYN_RECV => self.tcp_syn,
            CT_FIN_WAIT | CT_CLOSE_WAIT => self.tcp_half_closed,
            CT_TIME_WAIT => self.tcp_time_wait,
            CT_CLOSED => self.tcp_closed,
            _ => self.tcp_established,
        }
    }

    /// Whether an entry last seen at `last_seen_ns` is dead at `now_ns` (both
    /// `bpf_ktime_get_ns`, i.e. `CLOCK_MONOTONIC`).
    #[inline(always)]
    pub const fn expired(&self, proto: u8, state: u8, last_seen_ns: u64, now_ns: u64) -> bool {
        let idle = now_ns.saturating_sub(last_seen_ns);
        idle > self.seconds(proto, state) as u64 * 1_000_000_000
    }

    /// Whether a live flow (both halves there) still holds its SNAT port against a new flow's
    /// SYN at `now_ns`: until it expires, except that a closed flow gives it up after
    /// [`CLOSED_PORT_GRACE_NS`] (its late segments are translated until then, or until its
    /// timeout if no SYN wants the port). Linux conntrack reopens a closed tuple on a SYN at
    /// once; holding every closed flow's port for its whole timeout made a busy backend's ports
    /// come round before they were free, and each such probe is map lookups on the LB's CPU.
    #[inline(always)]
    pub const fn holds_port(&self, proto: u8, state: u8, last_seen_ns: u64, now_ns: u64) -> bool {
        if self.expired(proto, state, last_seen_ns, now_ns) {
            return false;
        }
        !(is_closed(state) && now_ns.saturating_sub(last_seen_ns) >= CLOSED_PORT_GRACE_NS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::DIR_TO_CLIENT;

    const C: u8 = DIR_TO_BACKEND;
    const B: u8 = DIR_TO_CLIENT;
    const SYN: u8 = tcp::SYN;
    const ACK: u8 = tcp::ACK;
    const FIN: u8 = tcp::FIN;
    const RST: u8 = tcp::RST;

    /// Runs segments from SYN_SENT; returns every state reached.
    fn walk(segments: &[(u8, u8)]) -> [u8; 8] {
        let mut states = [0; 8];
        let mut s = CT_SYN_SENT;
        for (i, (dir, flags)) in segments.iter().enumerate() {
            s = next_tcp_state(s, *dir, *flags);
            states[i] = s;
        }
        states
    }

    #[test]
    fn handshake_data_and_close_by_the_server_first() {
        let got = walk(&[
            (B, SYN | ACK),
            (C, ACK),
            (C, ACK | tcp::PSH),
            (B, FIN | ACK),
            (C, FIN | ACK),
            (B, ACK),
        ]);
        assert_eq!(
            got[..6],
            [
                CT_SYN_RECV,
                CT_ESTABLISHED,
                CT_ESTABLISHED,
                CT_CLOSE_WAIT,
                CT_TIME_WAIT,
                CT_TIME_WAIT
            ]
        );
    }

    #[test]
    fn close_by_the_client_first_and_retransmitted_fins() {
        let got = walk(&[
            (B, SYN | ACK),
            (C, ACK),
            (C, FIN | ACK),
            (C, FIN | ACK),
            (B, FIN | ACK),
        ]);
        assert_eq!(
            got[..5],
            [
                CT_SYN_RECV,
                CT_ESTABLISHED,
                CT_FIN_WAIT,
                CT_FIN_WAIT,
                CT_TIME_WAIT
            ]
        );
    }

    #[test]
    fn rst_closes_from_any_state_and_syn_retransmits_change_nothing() {
        for s in [
            CT_SYN_SENT,
            CT_SYN_RECV,
            CT_ESTABLISHED,
            CT_FIN_WAIT,
            CT_TIME_WAIT,
        ] {
            assert_eq!(next_tcp_state(s, B, RST), CT_CLOSED);
            assert_eq!(next_tcp_state(s, C, RST | ACK), CT_CLOSED);
        }
        assert_eq!(next_tcp_state(CT_SYN_SENT, C, SYN), CT_SYN_SENT);
        // A SYN-ACK from the client side is not the backend's answer.
        assert_eq!(next_tcp_state(CT_SYN_SENT, C, SYN | ACK), CT_SYN_SENT);
    }

    #[test]
    fn only_a_bare_syn_opens_and_only_closed_states_reopen() {
        assert!(is_opening_syn(SYN));
        assert!(!is_opening_syn(SYN | ACK) && !is_opening_syn(ACK) && !is_opening_syn(SYN | RST));
        assert!(is_closed(CT_TIME_WAIT) && is_closed(CT_CLOSED));
        assert!(!is_closed(CT_ESTABLISHED) && !is_closed(CT_FIN_WAIT));
    }

    #[test]
    fn time_wait_accepts_a_newer_timestamp_or_without_timestamps_a_later_sequence() {
        // Timestamps on both: the timestamp decides; an older one is refused (PAWS) even with
        // a later sequence number; an equal one needs a later sequence number.
        assert!(time_wait_accepts_syn(1000, Some(50), 10, Some(51)));
        assert!(!time_wait_accepts_syn(1000, Some(50), 5000, Some(49)));
        assert!(time_wait_accepts_syn(1000, Some(50), 1001, Some(50)));
        assert!(!time_wait_accepts_syn(1000, Some(50), 999, Some(50)));
        // Across the 32-bit wrap.
        assert!(time_wait_accepts_syn(1000, Some(u32::MAX), 10, Some(3)));
        assert!(time_wait_accepts_syn(u32::MAX - 5, None, 3, None));
        // Without timestamps on either side: the sequence number decides.
        assert!(time_wait_accepts_syn(1000, None, 1001, Some(1)));
        assert!(!time_wait_accepts_syn(1000, Some(7), 1000, None));
        assert!(!time_wait_accepts_syn(1000, None, 999, None));
    }

    #[test]
    fn a_port_waits_for_the_backends_time_wait_only_when_it_would_refuse() {
        let s = 1_000_000_000;
        let entry = NatEntry {
            tw_flags: TW_RECORDED | TW_TIMESTAMP,
            tw_rcv_nxt: 1000,
            tw_ts_recent: 50,
            last_seen_ns: 100 * s,
            ..NatEntry::default()
        };
        assert!(!port_reusable_for_syn(&entry, 110 * s, 2000, Some(40)));
        assert!(port_reusable_for_syn(&entry, 110 * s, 2000, Some(60)));
        // The backend's TIME_WAIT is over after a minute.
        assert!(port_reusable_for_syn(&entry, 162 * s, 2000, Some(40)));
        // Nothing recorded (the client closed first, or a RST): no TIME_WAIT at the backend.
        let none = NatEntry {
            tw_flags: 0,
            ..entry
        };
        assert!(port_reusable_for_syn(&none, 110 * s, 0, Some(0)));
    }

    #[test]
    fn timeouts_by_state_and_expiry() {
        let t = CtTimeouts {
            tcp_syn: 1,
            tcp_established: 2,
            tcp_half_closed: 3,
            tcp_time_wait: 4,
            tcp_closed: 5,
            udp: 6,
        };
        let tcp = crate::net::IPPROTO_TCP;
        assert_eq!(t.seconds(tcp, CT_SYN_RECV), 1);
        assert_eq!(t.seconds(tcp, CT_ESTABLISHED), 2);
        assert_eq!(t.seconds(tcp, CT_CLOSE_WAIT), 3);
        assert_eq!(t.seconds(tcp, CT_TIME_WAIT), 4);
        assert_eq!(t.seconds(tcp, CT_CLOSED), 5);
        assert_eq!(t.seconds(IPPROTO_UDP, CT_ESTABLISHED), 6);
        let s = 1_000_000_000;
        assert!(!t.expired(tcp, CT_TIME_WAIT, 10 * s, 14 * s));
        assert!(t.expired(tcp, CT_TIME_WAIT, 10 * s, 14 * s + 1));
        // A last-seen time in the future (another CPU's clock read) is not idle.
        assert!(!t.expired(tcp, CT_CLOSED, 20 * s, 10 * s));
    }

    #[test]
    fn a_closed_flow_gives_its_port_up_after_the_grace_a_live_one_at_its_timeout() {
        let t = CtTimeouts {
            tcp_syn: 10,
            tcp_established: 3600,
            tcp_half_closed: 60,
            tcp_time_wait: 2,
            tcp_closed: 2,
            udp: 60,
        };
        let (tcp, s, ms) = (crate::net::IPPROTO_TCP, 1_000_000_000, 1_000_000);
        for closed in [CT_TIME_WAIT, CT_CLOSED] {
            assert!(t.holds_port(tcp, closed, 10 * s, 10 * s + 249 * ms));
            assert!(!t.holds_port(tcp, closed, 10 * s, 10 * s + 250 * ms));
        }
        // Open or half-closed flows keep it until they expire.
        for open in [CT_SYN_SENT, CT_ESTABLISHED, CT_FIN_WAIT, CT_CLOSE_WAIT] {
            assert!(t.holds_port(tcp, open, 10 * s, 19 * s), "{open}");
        }
        assert!(!t.holds_port(tcp, CT_SYN_SENT, 10 * s, 21 * s));
        assert!(t.holds_port(IPPROTO_UDP, CT_ESTABLISHED, 10 * s, 69 * s));
        // A timeout shorter than the grace wins.
        let zero = CtTimeouts { tcp_closed: 0, ..t };
        assert!(!zero.holds_port(tcp, CT_CLOSED, 10 * s, 10 * s + ms));
    }
}
