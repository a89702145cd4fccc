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
    /// Passed: L4 protocol other than TCP or UDP.
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
}

impl Counter {
    /// Number of counters (the size of the stats array).
    pub const COUNT: usize = Counter::ParsedUdp6 as usize + 1;

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
    ];
}
