//! An established flow's packets reuse the next hop its earlier packets looked up (no
//! `bpf_fib_lookup` per packet), yet a neighbour change reaches the flow within about a second;
//! and an established half whose partner was evicted stops forwarding within the same bound
//! (its packets skip the partner check between refreshes).
use super::*;

/// be1's new link-layer address, as after a failover of its address to another host.
const MAC_BE1_MOVED: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x99];

/// Longer than any wait the program has (a cached hop's TTL, the last-seen refresh): 1 s.
const PAST_REFRESH: Duration = Duration::from_millis(1100);

fn data_seg(client_port: u16, len: usize) -> Vec<u8> {
    PacketBuilder::new()
        .ip(V4.client, V4.vip)
        .tcp_seq(client_port, SVC_TCP, TCP_ACK | TCP_PSH, 1001, 1)
        .payload(&vec![0x5a; len])
        .build()
}

/// Opens an established flow from `client_port`; returns its SNAT port.
fn establish(send: &impl Fn(Side, &[u8]) -> (u32, Vec<u8>, Counters), client_port: u16) -> u16 {
    let (v, out, d) = send(Side::Client, &client_seg(client_port, TCP_SYN, 1000, 500));
    assert_eq!(v, XDP_REDIRECT, "{d:?}");
    let snat = snat_port_of(&out);
    send(Side::Backend, &backend_seg(snat, TCP_SYN | TCP_ACK));
    let (_, _, d) = send(Side::Client, &client_seg(client_port, TCP_ACK, 1001, 510));
    assert_eq!(d.get(Counter::CtEstablished), 1, "{d:?}");
    snat
}

fn set_be1_mac(lab: &Lab, mac: [u8; 6]) {
    let mac = mac.map(|b| format!("{b:02x}")).join(":");
    let be1 = V4.be1.to_string();
    lab.lb
        .exec(&[
            "ip",
            "neigh",
            "replace",
            &be1,
            "lladdr",
            &mac,
            "dev",
            "lb-sw",
            "nud",
            "permanent",
        ])
        .unwrap();
}

#[test]
fn an_established_flow_reuses_its_next_hop_and_follows_a_neighbour_change() {
    if !require_netns_and_bpf("an_established_flow_reuses_its_next_hop") {
        return;
    }
    let lab = lab();
    lab.lb
        .enter(|| {
            let dp = lab.dataplane(config((40000, 59999)), &tcp_service_on_be1());
            let send = |from, frame: &[u8]| send(&dp, &lab, from, frame);
            let dst_mac = |out: &[u8]| <[u8; 6]>::try_from(&out[..6]).unwrap();
            establish(&send, 46100);

            // The first full-size segment is looked up (longer than the handshake's); the
            // next ones go out on the same hop without a lookup.
            let (v, out, d) = send(Side::Client, &data_seg(46100, 1000));
            assert_eq!((v, dst_mac(&out)), (XDP_REDIRECT, MAC_BE1), "{d:?}");
            assert_eq!(d.get(Counter::HopLookedUp), 1, "{d:?}");
            for _ in 0..3 {
                let (v, out, d) = send(Side::Client, &data_seg(46100, 1000));
                assert_eq!((v, dst_mac(&out)), (XDP_REDIRECT, MAC_BE1), "{d:?}");
                assert_eq!(d.get(Counter::HopLookedUp), 0, "{d:?}");
            }
            // A longer one than the hop carried so far is looked up again (the MTU check).
            let (_, _, d) = send(Side::Client, &data_seg(46100, 1400));
            assert_eq!(d.get(Counter::HopLookedUp), 1, "{d:?}");

            // be1 moves: within a second the flow's packets go to its new address.
            set_be1_mac(&lab, MAC_BE1_MOVED);
            std::thread::sleep(PAST_REFRESH);
            let (v, out, d) = send(Side::Client, &data_seg(46100, 1000));
            assert_eq!((v, dst_mac(&out)), (XDP_REDIRECT, MAC_BE1_MOVED), "{d:?}");
            assert_eq!(d.get(Counter::HopLookedUp), 1, "{d:?}");
            let (_, out, d) = send(Side::Client, &data_seg(46100, 1000));
            assert_eq!(dst_mac(&out), MAC_BE1_MOVED, "{d:?}");
            assert_eq!(d.get(Counter::HopLookedUp), 0, "{d:?}");

            // An established flow whose reply half is evicted: its client packets stop being
            // forwarded once the partner is checked again, within a second.
            let snat = establish(&send, 46101);
            send(Side::Client, &data_seg(46101, 1000));
            let mut ct = conntrack_of(&dp);
            ct.remove(&v4_tcp_key(&backend_seg(snat, TCP_ACK))).unwrap();
            std::thread::sleep(PAST_REFRESH);
            let (v, _, d) = send(Side::Client, &data_seg(46101, 1000));
            assert_eq!((v, d.get(Counter::FlowOrphan)), (XDP_PASS, 1), "{d:?}");
        })
        .unwrap();
}
