use super::*;

fn opts(decap: DecapKind, vips: &[&str], ifaces: &[&str]) -> BackendSetupOptions {
    BackendSetupOptions {
        vip: vips.iter().map(|v| v.parse().unwrap()).collect(),
        decap,
        device: "mlb-dsr0".into(),
        device6: "mlb-dsr6".into(),
        iface: ifaces.iter().map(ToString::to_string).collect(),
        xdp_mode: XdpAttachMode::Native,
        bpffs_dir: "/sys/fs/bpf/mlb".into(),
        check: false,
    }
}

fn commands(steps: &[Step]) -> Vec<String> {
    steps.iter().map(Step::to_string).collect()
}

#[test]
fn a_bare_host_gets_the_tunnel_device_the_vips_and_the_sysctls() {
    let o = opts(DecapKind::Kernel, &["198.18.100.1", "fd00:100::1"], &[]);
    let steps = plan(&o, &Observed::default()).unwrap();
    assert_eq!(
        commands(&steps),
        [
            "ip link add mlb-dsr0 type ipip external",
            "ip link set mlb-dsr0 up",
            "ip link add mlb-dsr6 type ip6tnl mode ip6ip6 external",
            "ip link set mlb-dsr6 up",
            "ip addr add 198.18.100.1/32 dev mlb-dsr0",
            "ip addr add fd00:100::1/128 dev mlb-dsr6 nodad",
            "sysctl -w net.ipv4.conf.all.rp_filter=0",
            "sysctl -w net.ipv4.conf.mlb-dsr0.rp_filter=0",
            "sysctl -w net.ipv4.conf.all.arp_ignore=1",
            "sysctl -w net.ipv4.conf.all.arp_announce=2",
        ]
    );
}

/// The host after the steps above: nothing left to do (idempotent), and each missing piece
/// alone is found again.
#[test]
fn a_set_up_host_needs_nothing_and_each_missing_piece_is_named() {
    let o = opts(DecapKind::Kernel, &["198.18.100.1"], &[]);
    let mut seen = Observed::default();
    seen.links.insert(
        "mlb-dsr0".into(),
        LinkState {
            kind: "ipip".into(),
            up: true,
        },
    );
    seen.addrs
        .insert("mlb-dsr0".into(), vec!["198.18.100.1".parse().unwrap()]);
    for (k, v) in [
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.mlb-dsr0.rp_filter", "0"),
        ("net.ipv4.conf.all.arp_ignore", "1"),
        ("net.ipv4.conf.all.arp_announce", "2"),
    ] {
        seen.sysctls.insert(k.into(), v.into());
    }
    assert_eq!(plan(&o, &seen).unwrap(), []);

    let mut down = seen.clone();
    down.links.get_mut("mlb-dsr0").unwrap().up = false;
    assert_eq!(
        commands(&plan(&o, &down).unwrap()),
        ["ip link set mlb-dsr0 up"]
    );
    let mut strict = seen.clone();
    strict
        .sysctls
        .insert("net.ipv4.conf.all.rp_filter".into(), "1".into());
    assert_eq!(
        commands(&plan(&o, &strict).unwrap()),
        ["sysctl -w net.ipv4.conf.all.rp_filter=0"]
    );
}

#[test]
fn a_device_of_another_kind_is_not_touched() {
    let o = opts(DecapKind::Kernel, &["198.18.100.1"], &[]);
    let mut seen = Observed::default();
    seen.links.insert(
        "mlb-dsr0".into(),
        LinkState {
            kind: "veth".into(),
            up: true,
        },
    );
    let e = plan(&o, &seen).unwrap_err().to_string();
    assert!(e.contains("mlb-dsr0") && e.contains("veth"), "{e}");
}

#[test]
fn xdp_decapsulation_puts_the_vip_on_lo_and_needs_interfaces() {
    let o = opts(DecapKind::Xdp, &["198.18.100.1"], &["eth0"]);
    let steps = plan(&o, &Observed::default()).unwrap();
    assert_eq!(
        steps[0],
        Step::AttachDecap {
            iface: "eth0".into(),
            pin: "/sys/fs/bpf/mlb/decap/eth0".into(),
            mode: XdpAttachMode::Native
        }
    );
    assert_eq!(steps[1].to_string(), "ip addr add 198.18.100.1/32 dev lo");
    assert!(commands(&steps).contains(&"sysctl -w net.ipv4.conf.eth0.rp_filter=0".to_owned()));
    let none = opts(DecapKind::Xdp, &["198.18.100.1"], &[]);
    assert!(matches!(
        plan(&none, &Observed::default()),
        Err(BackendSetupError::NoInterface)
    ));
}

#[test]
fn sysctl_keys_map_to_proc_paths_with_dotted_devices() {
    assert_eq!(
        sysctl_path("net.ipv4.conf.all.rp_filter"),
        Path::new("/proc/sys/net/ipv4/conf/all/rp_filter")
    );
    assert_eq!(
        sysctl_path("net.ipv4.conf.eth0.100.rp_filter"),
        Path::new("/proc/sys/net/ipv4/conf/eth0.100/rp_filter")
    );
}
