//! Global per-CPU counters of the XDP program: one slot per verdict and per pass/drop reason.

/// Index of a counter in the per-CPU `MLB_STATS` array.
///
/// The discriminants are the array indices; user space sums each slot over all CPUs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every packet the program saw.
    Total = 0,
    /// Packets returned with `XDP_PASS`.
    VerdictPass,
    /// Packets returned with `XDP_TX`.
    VerdictTx,
    /// Packets returned with `XDP_REDIRECT`.
    VerdictRedirect,
    /// Packets returned with `XDP_DROP`.
    VerdictDrop,
    /// Packets returned with `XDP_ABORTED` (a bug or a map failure).
    VerdictAborted,
    /// Passed: frame shorter than its Ethernet (+VLAN) header.
    PassTruncatedEth,
    /// Passed: EtherType is neither IPv4 nor IPv6 (ARP, LLDP, ...).
    PassNotIp,
    /// Passed: IPv4/IPv6 header truncated or malformed (bad version, IHL < 5, ...).
    PassBadL3,
    /// Passed: IPv4 fragment (first or later): no L4 ports to match on.
    PassFragment,
    /// Passed: IPv6 with an extension header (not parsed).
    PassIpv6ExtHeader,
    /// Passed: L4 protocol other than TCP or UDP, and no ICMP error (echo, ...).
    PassNotTcpUdp,
    /// Passed: TCP/UDP header truncated or malformed.
    PassBadL4,
    /// Passed: well-formed TCP/UDP packet addressed to no configured service.
    PassNoService,
    /// Parsed IPv4 TCP packets.
    ParsedTcp4,
    /// Parsed IPv4 UDP packets.
    ParsedUdp4,
    /// Parsed IPv6 TCP packets.
    ParsedTcp6,
    /// Parsed IPv6 UDP packets.
    ParsedUdp6,
    /// Passed: the agent has not configured the program yet.
    PassNotReady,
    /// Passed: the service has no usable backend (the kernel answers, e.g. with a RST).
    PassNoBackend,
    /// Passed: rewritten packet whose next hop has no neighbour entry yet; the kernel forwards
    /// it and resolves ARP/ND (needs ip_forward).
    PassNoNeighbour,
    /// Passed as it arrived: no route to the rewritten destination (FIB lookup failed).
    PassFibFailed,
    /// Passed: rewritten packet whose egress interface is not one the program may redirect to;
    /// the kernel forwards it (needs ip_forward).
    PassRedirectFailed,
    /// Dropped: no free SNAT port for a new flow (exhaustion).
    DropSnatExhausted,
    /// Dropped: the connection table refused an insert.
    DropConntrackFull,
    /// New flows created (a client → service packet without a tracked flow).
    FlowNew,
    /// Packets of tracked flows towards a backend.
    FlowToBackend,
    /// Packets of tracked flows back towards a client.
    FlowToClient,
    /// Tracked flows whose backend was dead, re-balanced to a live backend.
    FlowBackendDead,
    /// SNAT port collisions retried while creating flows.
    SnatPortCollision,
    /// Passed: a TCP segment to a service without SYN (or with ACK/RST) that matches no tracked
    /// flow: only a SYN opens a flow; the kernel answers with a RST.
    PassTcpNotSyn,
    /// Tracked entries whose other half was gone (LRU eviction) or belonged to another flow:
    /// forgotten, so a half can never outlive its partner.
    FlowOrphan,
    /// Tracked entries found idle past their state's timeout by a packet (before the sweeper):
    /// forgotten.
    FlowExpired,
    /// A SYN matched a flow in TIME_WAIT or CLOSED: the old flow was replaced by a new one.
    FlowReopened,
    /// A SNAT search found a port held by a dead flow (expired or orphaned) and took it.
    SnatPortReclaimed,
    /// TCP state transitions, by the state entered.
    CtSynRecv,
    CtEstablished,
    CtFinWait,
    CtCloseWait,
    CtTimeWait,
    CtClosed,
    /// Dropped: the client's address is not in the service's allow-list
    /// (`HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL`).
    DropAclDenied,
    /// SNAT ports a search passed over, free here but not at the backend: it still holds the
    /// 4-tuple's last flow in TIME_WAIT and would refuse this SYN (older timestamp or
    /// sequence number), which would cost the client a retransmission.
    SnatPortTimeWait,
    /// Packets encapsulated to their backend (direct server return).
    DsrEncapsulated,
    /// Dropped: encapsulated, the packet would exceed the MTU towards its backend (the path
    /// to backends must carry the outer header's 20 or 40 more bytes) and cannot be answered
    /// with "fragmentation needed" (IPv4 without DF, ICMP); the others are (`icmp_too_big_sent`,
    /// with the MTU less the outer header).
    DropEncapTooBig,
    /// Dropped: no room in front of the packet for the outer header (driver headroom).
    DropEncapFailed,
    /// Passed, not forwarded: TTL or hop limit ≤ 1 on a packet the program would forward (a
    /// router may not send it on); the kernel decides what to answer.
    PassTtlExceeded,
    /// ICMP/ICMPv6 errors about a tracked flow (unreachable, fragmentation needed, packet too
    /// big, time exceeded) translated back for the flow's other end and forwarded.
    IcmpErrorTranslated,
    /// Passed: an ICMP/ICMPv6 error whose quoted packet matches no live tracked flow.
    PassIcmpNoFlow,
    /// Passed: an ICMP/ICMPv6 error the program does not translate: quoted packet truncated,
    /// with IPv4 options or IPv6 extension headers, a fragment, or neither TCP nor UDP.
    PassIcmpUnsupported,
    /// Packets too big for their next hop (and not allowed to be fragmented) answered with
    /// IPv4 fragmentation needed / IPv6 packet too big, as a router does.
    IcmpTooBigSent,
    /// Packets of tracked flows whose next hop was looked up (`bpf_fib_lookup`); the others
    /// reused their flow's cached hop. About one per flow direction per second, plus new
    /// flows and packets longer than any their hop carried before.
    HopLookedUp,
}

impl Counter {
    /// Number of counters (the size of the stats array).
    pub const COUNT: usize = Counter::HopLookedUp as usize + 1;

    /// Every counter, in index order, with the name user space reports it under.
    pub const ALL: [(Counter, &'static str); Counter::COUNT] = [
        (Counter::Total, "total"),
        (Counter::VerdictPass, "verdict_pass"),
        (Counter::VerdictTx, "verdict_tx"),
        (Counter::VerdictRedirect, "verdict_redirect"),
        (Counter::VerdictDrop, "verdict_drop"),
        (Counter::VerdictAborted, "verdict_aborted"),
        (Counter::PassTruncatedEth, "pass_truncated_eth"),
        (Counter::PassNotIp, "pass_not_ip"),
        (Counter::PassBadL3, "pass_bad_l3"),
        (Counter::PassFragment, "pass_fragment"),
        (Counter::PassIpv6ExtHeader, "pass_ipv6_ext_header"),
        (Counter::PassNotTcpUdp, "pass_not_tcp_udp"),
        (Counter::PassBadL4, "pass_bad_l4"),
        (Counter::PassNoService, "pass_no_service"),
        (Counter::ParsedTcp4, "parsed_tcp4"),
        (Counter::ParsedUdp4, "parsed_udp4"),
        (Counter::ParsedTcp6, "parsed_tcp6"),
        (Counter::ParsedUdp6, "parsed_udp6"),
        (Counter::PassNotReady, "pass_not_ready"),
        (Counter::PassNoBackend, "pass_no_backend"),
        (Counter::PassNoNeighbour, "pass_no_neighbour"),
        (Counter::PassFibFailed, "pass_fib_failed"),
        (Counter::PassRedirectFailed, "pass_redirect_failed"),
        (Counter::DropSnatExhausted, "drop_snat_exhausted"),
        (Counter::DropConntrackFull, "drop_conntrack_full"),
        (Counter::FlowNew, "flow_new"),
        (Counter::FlowToBackend, "flow_to_backend"),
        (Counter::FlowToClient, "flow_to_client"),
        (Counter::FlowBackendDead, "flow_backend_dead"),
        (Counter::SnatPortCollision, "snat_port_collision"),
        (Counter::PassTcpNotSyn, "pass_tcp_not_syn"),
        (Counter::FlowOrphan, "flow_orphan"),
        (Counter::FlowExpired, "flow_expired"),
        (Counter::FlowReopened, "flow_reopened"),
        (Counter::SnatPortReclaimed, "snat_port_reclaimed"),
        (Counter::CtSynRecv, "ct_syn_recv"),
        (Counter::CtEstablished, "ct_established"),
        (Counter::CtFinWait, "ct_fin_wait"),
        (Counter::CtCloseWait, "ct_close_wait"),
        (Counter::CtTimeWait, "ct_time_wait"),
        (Counter::CtClosed, "ct_closed"),
        (Counter::DropAclDenied, "drop_acl_denied"),
        (Counter::SnatPortTimeWait, "snat_port_time_wait"),
        (Counter::DsrEncapsulated, "dsr_encapsulated"),
        (Counter::DropEncapTooBig, "drop_encap_too_big"),
        (Counter::DropEncapFailed, "drop_encap_failed"),
        (Counter::PassTtlExceeded, "pass_ttl_exceeded"),
        (Counter::IcmpErrorTranslated, "icmp_error_translated"),
        (Counter::PassIcmpNoFlow, "pass_icmp_no_flow"),
        (Counter::PassIcmpUnsupported, "pass_icmp_unsupported"),
        (Counter::IcmpTooBigSent, "icmp_too_big_sent"),
        (Counter::HopLookedUp, "hop_looked_up"),
    ];

    /// The counter of a transition into `state` (a `ct::CT_*`), if it has one.
    #[inline(always)]
    pub const fn entering(state: u8) -> Option<Counter> {
        use crate::ct::*;
        match state {
            CT_SYN_RECV => Some(Counter::CtSynRecv),
            CT_ESTABLISHED => Some(Counter::CtEstablished),
            CT_FIN_WAIT => Some(Counter::CtFinWait),
            CT_CLOSE_WAIT => Some(Counter::CtCloseWait),
            CT_TIME_WAIT => Some(Counter::CtTimeWait),
            CT_CLOSED => Some(Counter::CtClosed),
            _ => None,
        }
    }
}
