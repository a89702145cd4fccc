//! BPF_PROG_TEST_RUN: hand-built frames through the real XDP program, asserting the verdict and
//! the per-CPU counter that names why. No interface is involved.
#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions fail the test loudly"
)]
use aya::programs::{TestRun, TestRunOptions};
use mlb::dataplane::xdp::XdpProgram;
use mlb_common::{
    consts::xdp_action,
    net::{
        IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_UDP, eth, ipv4, ipv6, tcp, udp, vlan,
    },
    stats::Counter,
};
use mlb_tests::{
    packet::{PacketBuilder, TCP_ACK, TCP_SYN},
    privileges::require_netns_and_bpf,
};

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    /// The counter this frame must bump (besides Total and the verdict).
    counter: Counter,
}

fn v4() -> PacketBuilder {
    PacketBuilder::new().ipv4("198.18.1.1".parse().unwrap(), "198.18.1.2".parse().unwrap())
}

fn v6() -> PacketBuilder {
    PacketBuilder::new().ipv6(
        "fd00:198:18:1::1".parse().unwrap(),
        "fd00:198:18:1::2".parse().unwrap(),
    )
}

fn truncate(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

fn cases() -> Vec<Case> {
    let syn = v4().tcp(40000, 80, TCP_SYN).build();
    vec![
        Case {
            name: "ipv4 tcp syn",
            frame: syn.clone(),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::ParsedTcp4,
        },
        Case {
            name: "ipv4 tcp ack with payload",
            frame: v4()
                .tcp(40000, 80, TCP_ACK)
                .payload(b"GET / HTTP/1.1\r\n\r\n")
                .build(),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::ParsedTcp4,
        },
        Case {
            name: "ipv4 udp",
            frame: v4().udp(5000, 53).payload(b"q").build(),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::ParsedUdp4,
        },
        Case {
            name: "ipv6 tcp",
            frame: v6().tcp(40000, 80, TCP_SYN).build(),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::ParsedTcp6,
        },
        Case {
            name: "ipv6 udp",
            frame: v6().udp(5000, 53).build(),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::ParsedUdp6,
        },
        Case {
            name: "vlan tagged ipv4 tcp",
            frame: v4().vlan(7).tcp(40000, 80, TCP_SYN).build(),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::ParsedTcp4,
        },
        Case {
            name: "ipv4 with options",
            frame: v4()
                .ipv4_options(&[0x94, 0x04, 0, 0, 1, 1, 1, 0])
                .tcp(40000, 80, TCP_SYN)
                .build(),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::ParsedTcp4,
        },
        Case {
            name: "arp",
            frame: PacketBuilder::new().payload(&[0; 28]).build(),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::PassNotIp,
        },
        // The kernel refuses test frames shorter than an Ethernet header; a VLAN tag cut short is the
        // shortest truncation that reaches the program.
        Case {
            name: "vlan tag cut short",
            frame: truncate(
                v4().vlan(7).tcp(1, 2, TCP_SYN).build(),
                eth::HLEN + vlan::TYPE,
            ),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::PassTruncatedEth,
        },
        Case {
            name: "truncated ipv4 header",
            frame: truncate(syn.clone(), eth::HLEN + ipv4::HLEN_MIN - 1),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::PassBadL3,
        },
        Case {
            name: "truncated tcp header",
            frame: truncate(syn.clone(), eth::HLEN + ipv4::HLEN_MIN + tcp::HLEN_MIN - 1),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::PassBadL4,
        },
        Case {
            name: "truncated ipv6 header",
            frame: truncate(v6().tcp(1, 2, TCP_SYN).build(), eth::HLEN + ipv6::HLEN - 1),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::PassBadL3,
        },
        Case {
            name: "ipv4 IHL below 5",
            frame: {
                let mut f = syn.clone();
                f[eth::HLEN + ipv4::VER_IHL] = 0x44;
                f
            },
            verdict: xdp_action::XDP_PASS,
            counter: Counter::PassBadL3,
        },
        Case {
            name: "ipv4 IHL beyond the packet",
            frame: {
                let mut f = v4().udp(1, 2).build();
                f[eth::HLEN + ipv4::VER_IHL] = 0x4F;
                f
            },
            verdict: xdp_action::XDP_PASS,
            counter: Counter::PassBadL4,
        },
        Case {
            name: "version 5 in an ipv4 ethertype",
            frame: {
                let mut f = syn.clone();
                f[eth::HLEN + ipv4::VER_IHL] = 0x55;
                f
            },
            verdict: xdp_action::XDP_PASS,
            counter: Counter::PassBadL3,
        },
        Case {
            name: "tcp data offset below 5",
            frame: {
                let mut f = syn.clone();
                f[eth::HLEN + ipv4::HLEN_MIN + tcp::DOFF] = 0x40;
                f
            },
            verdict: xdp_action::XDP_PASS,
            counter: Counter::PassBadL4,
        },
        Case {
            name: "ipv4 first fragment",
            frame: v4().ipv4_fragment(true, 0).udp(5000, 53).build(),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::PassFragment,
        },
        Case {
            name: "ipv4 later fragment",
            frame: v4()
                .ipv4_fragment(false, 185)
                .l4_proto(IPPROTO_UDP)
                .payload(&[0; 16])
                .build(),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::PassFragment,
        },
        Case {
            name: "icmp",
            frame: v4()
                .l4_proto(IPPROTO_ICMP)
                .payload(&[8, 0, 0, 0, 0, 0, 0, 0])
                .build(),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::PassNotTcpUdp,
        },
        Case {
            name: "ipv6 hop-by-hop extension header",
            frame: v6()
                .ipv6_next_header(IPPROTO_HOPOPTS)
                .payload(&[6, 0, 0, 0, 0, 0, 0, 0])
                .build(),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::PassIpv6ExtHeader,
        },
        Case {
            name: "ipv6 icmpv6",
            frame: v6()
                .l4_proto(IPPROTO_ICMPV6)
                .payload(&[128, 0, 0, 0])
                .build(),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::PassNotTcpUdp,
        },
        Case {
            name: "truncated udp header",
            frame: truncate(
                v4().udp(1, 2).build(),
                eth::HLEN + ipv4::HLEN_MIN + udp::HLEN - 1,
            ),
            verdict: xdp_action::XDP_PASS,
            counter: Counter::PassBadL4,
        },
    ]
}

#[test]
fn verdicts_and_reasons_for_hand_built_frames() {
    if !require_netns_and_bpf("verdicts_and_reasons_for_hand_built_frames") {
        return;
    }
    let program = XdpProgram::load().expect("load the XDP program");
    for case in cases() {
        let before = program.counters().unwrap();
        let mut out = vec![0u8; case.frame.len() + 256];
        let result = program
            .program()
            .unwrap()
            .test_run(TestRunOptions {
                data_in: Some(&case.frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|e| panic!("{}: test run failed: {e}", case.name));
        assert_eq!(result.return_value, case.verdict, "{}: verdict", case.name);
        // XDP_PASS leaves the packet untouched.
        let out_len = result.data_size_out as usize;
        assert_eq!(
            &out[..out_len],
            &case.frame[..],
            "{}: packet modified",
            case.name
        );
        let delta = program.counters().unwrap().since(&before);
        assert_eq!(delta.get(Counter::Total), 1, "{}: total", case.name);
        assert_eq!(
            delta.get(case.counter),
            1,
            "{}: expected {:?} in {:?}",
            case.name,
            case.counter,
            delta
        );
        let bumped: u64 = delta.0.iter().sum();
        // Total + verdict + reason (+ PassNotReady for a parsed packet: nothing is configured).
        let parsed = matches!(
            case.counter,
            Counter::ParsedTcp4 | Counter::ParsedUdp4 | Counter::ParsedTcp6 | Counter::ParsedUdp6
        );
        assert_eq!(
            bumped,
            if parsed { 4 } else { 3 },
            "{}: unexpected counters {:?}",
            case.name,
            delta
        );
    }
}
