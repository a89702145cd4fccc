//! TCP-mode labels in the program: `BACKEND_NETWORK_ALLOWED_ACL` (the ACL step drops clients
//! outside the service's blocks, IPv4 and IPv6, and counts them) and `BALANCE=source` (the
//! backend depends on the client address only).
use super::*;
use mlb::model::{Balance, IpNet};

/// TCP to `be1` (both families), only from the family's client address or its /24 (/64).
pub(super) const SVC_ACL: u16 = 87;
/// TCP to `be1` and [`BE2`] (IPv4), balanced by client address.
const SVC_SOURCE: u16 = 88;

pub(super) fn acl_service(allowed: &[&str]) -> L4Change {
    let mut svc = service(SVC_ACL, Protocol::Tcp, &[V4.be1, V6.be1]);
    svc.allowed_networks = allowed
        .iter()
        .map(|n| n.parse::<IpNet>().unwrap())
        .collect();
    L4Change::Upsert(svc)
}

fn syn(from: IpAddr, to: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    PacketBuilder::new()
        .ip(from, to)
        .tcp(sport, dport, flags)
        .build()
}

/// Runs `frame` from the client side; returns the verdict, the output and the counter deltas.
fn feed(dp: &XdpL4, lab: &Lab, frame: &[u8]) -> (u32, Vec<u8>, Counters) {
    let before = dp.program().counters().unwrap();
    let (verdict, out) = run(dp.program(), lab.cli_ifindex, frame);
    (
        verdict,
        out,
        dp.program().counters().unwrap().since(&before),
    )
}

#[test]
fn allowed_networks_and_balance_source() {
    if !require_netns_and_bpf("allowed_networks_and_balance_source") {
        return;
    }
    let lab = lab();
    lab.lb
        .enter(|| {
            let acl = acl_service(&["198.18.1.1", "fd00:198:18:1::/64"]);
            let mut dp = lab.dataplane(config((40000, 59999)), &[acl]);
            allowed_networks(&mut dp, &lab);
            balance_source(&mut dp, &lab);
        })
        .unwrap();
}

fn allowed_networks(dp: &mut XdpL4, lab: &Lab) {
    // IPv4: only the client's /32 is in the list; IPv6: the whole client /64.
    let outside_v6 = v6(0x198, 0x18, 0x77, 1);
    for (f, denied) in [(&V4, V4.not_vip), (&V6, outside_v6)] {
        let (verdict, out, delta) = feed(dp, lab, &syn(f.client, f.vip, 41000, SVC_ACL, TCP_SYN));
        assert_eq!(
            verdict, XDP_REDIRECT,
            "{} allowed client: {delta:?}",
            f.name
        );
        assert_eq!(delta.get(Counter::FlowNew), 1, "{}", f.name);
        let p = packet::parse(&out).unwrap();
        assert!(p.checksums_ok && p.dst == f.be1, "{} {p:?}", f.name);

        for (what, flags) in [("SYN", TCP_SYN), ("ACK", TCP_ACK)] {
            let frame = syn(denied, f.vip, 41001, SVC_ACL, flags);
            let (verdict, _, delta) = feed(dp, lab, &frame);
            assert_eq!(verdict, XDP_DROP, "{} denied {what}: {delta:?}", f.name);
            assert_eq!(delta.get(Counter::DropAclDenied), 1, "{} {what}", f.name);
            assert_eq!(delta.get(Counter::FlowNew), 0);
        }
        // The tracked flow of the allowed client goes on (no second ACL decision).
        let (verdict, _, delta) = feed(dp, lab, &syn(f.client, f.vip, 41000, SVC_ACL, TCP_ACK));
        assert_eq!(verdict, XDP_REDIRECT, "{} tracked flow: {delta:?}", f.name);
    }
    // A list of IPv4 blocks only admits nobody on the IPv6 VIP.
    dp.apply(&[acl_service(&["198.18.1.0/24"])]).unwrap();
    let (verdict, _, delta) = feed(dp, lab, &syn(V6.client, V6.vip, 41002, SVC_ACL, TCP_SYN));
    assert_eq!(
        (verdict, delta.get(Counter::DropAclDenied)),
        (XDP_DROP, 1),
        "v6 client, v4-only list: {delta:?}"
    );
    // The /24 now admits the IPv4 address that was denied; lifting the list admits everyone.
    let (verdict, _, _) = feed(dp, lab, &syn(V4.not_vip, V4.vip, 41003, SVC_ACL, TCP_SYN));
    assert_eq!(verdict, XDP_REDIRECT, "v4 /24 member");
    dp.apply(&[acl_service(&[])]).unwrap();
    let (verdict, _, delta) = feed(dp, lab, &syn(outside_v6, V6.vip, 41004, SVC_ACL, TCP_SYN));
    assert_eq!(verdict, XDP_REDIRECT, "no list: {delta:?}");
}

fn balance_source(dp: &mut XdpL4, lab: &Lab) {
    let mut svc = service(SVC_SOURCE, Protocol::Tcp, &[V4.be1, BE2]);
    svc.balance = Balance::Source;
    dp.apply(&[L4Change::Upsert(svc)]).unwrap();
    let mut chosen = BTreeSet::new();
    for host in 10..26u8 {
        let client = v4(198, 18, 1, host);
        let backends: BTreeSet<IpAddr> = (0..8u16)
            .map(|i| {
                let frame = syn(client, V4.vip, 42000 + i * 7, SVC_SOURCE, TCP_SYN);
                let (verdict, out, delta) = feed(dp, lab, &frame);
                assert_eq!(verdict, XDP_REDIRECT, "{client}: {delta:?}");
                packet::parse(&out).unwrap().dst
            })
            .collect();
        assert_eq!(backends.len(), 1, "{client} spread over {backends:?}");
        chosen.extend(backends);
    }
    assert_eq!(chosen.len(), 2, "16 clients, one backend: {chosen:?}");
}
