//! The veths on the bulk path as each case runs: their offload settings (`ethtool -k`), which
//! must be the same in every case but for what the kernel forces when an XDP program is
//! attached (it turns TSO off on the peer of a veth running one), and what they dropped (a full
//! veth ring drops frames silently, and TCP then slows down).
use std::fmt::Write as _;

use super::lab::{self, NS_CLI, NS_LB, NS_SW};

/// The client → backend path: the client's veth, lb's two, and the bridge's side of lb-sw
/// (the redirect target's peer, whose GRO coalesces what XDP forwards).
const PATH: [(&str, &str); 4] = [
    (NS_CLI, "cli-lb"),
    (NS_LB, "lb-cli"),
    (NS_LB, "lb-sw"),
    (NS_SW, "sw-lb"),
];

/// `ethtool -k` features that change what each hop handles, with short names.
const FEATURES: [(&str, &str); 6] = [
    ("rx-checksumming", "rx-csum"),
    ("tx-checksumming", "tx-csum"),
    ("scatter-gather", "sg"),
    ("tcp-segmentation-offload", "tso"),
    ("generic-segmentation-offload", "gso"),
    ("generic-receive-offload", "gro"),
];

/// One device's [`FEATURES`], e.g. `tx-csum off, sg off, tso off, gso on, gro on`.
pub type Offloads = Vec<(&'static str, String)>;

/// Every [`PATH`] device's offloads now; a device that cannot be read is left out.
pub fn read() -> Offloads {
    PATH.iter()
        .filter_map(|&(ns, dev)| {
            let text = lab::ns_run(ns, &["ethtool", "-k", dev]).ok()?;
            Some((dev, parse(&text)))
        })
        .collect()
}

/// [`FEATURES`] from `ethtool -k` output (`name: on|off [fixed]`).
fn parse(text: &str) -> String {
    FEATURES
        .iter()
        .filter_map(|(name, short)| {
            let value = text.lines().find_map(|l| {
                let (key, value) = l.trim().split_once(':')?;
                (key == *name).then(|| value.split_whitespace().next().unwrap_or_default())
            })?;
            Some(format!("{short} {value}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per device, where `case` differs from `reference`: `lb-cli: tso off (direct: tso on)`.
pub fn differences(reference: &Offloads, case: &Offloads) -> Vec<String> {
    let mut out = Vec::new();
    for (dev, settings) in case {
        let Some((_, theirs)) = reference.iter().find(|(d, _)| d == dev) else {
            continue;
        };
        let ours: Vec<&str> = settings.split(", ").collect();
        let theirs: Vec<&str> = theirs.split(", ").collect();
        let changed: Vec<String> = ours
            .iter()
            .zip(&theirs)
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("{a} (direct: {b})"))
            .collect();
        if !changed.is_empty() {
            out.push(format!("{dev}: {}", changed.join(", ")));
        }
    }
    out
}

/// The packets every [`PATH`] device has dropped so far (received and sent), summed.
pub fn drops() -> Option<u64> {
    PATH.iter()
        .map(|&(ns, dev)| {
            let stat = |name: &str| -> Option<u64> {
                let file = format!("/sys/class/net/{dev}/statistics/{name}");
                lab::ns_run(ns, &["cat", &file]).ok()?.trim().parse().ok()
            };
            Some(stat("rx_dropped")? + stat("tx_dropped")?)
        })
        .sum()
}

/// Each device's offloads, one line each.
pub fn describe(offloads: &Offloads) -> String {
    let mut s = String::new();
    for (dev, settings) in offloads {
        let _ = write!(s, "{dev}: {settings}; ");
    }
    s.trim_end_matches("; ").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETHTOOL: &str = "Features for lb-cli:\n\
        rx-checksumming: on\n\
        tx-checksumming: off\n\
        \ttx-checksum-ip-generic: off\n\
        scatter-gather: off\n\
        \ttx-scatter-gather: off\n\
        tcp-segmentation-offload: off\n\
        \ttx-tcp-segmentation: off [requested on]\n\
        generic-segmentation-offload: on\n\
        generic-receive-offload: on\n\
        rx-gro-list: off\n";

    #[test]
    fn reads_the_features_that_shape_the_path() {
        assert_eq!(
            parse(ETHTOOL),
            "rx-csum on, tx-csum off, sg off, tso off, gso on, gro on"
        );
        assert_eq!(parse("Features for x:\n"), "");
    }

    #[test]
    fn names_only_what_differs_from_direct() {
        let direct: Offloads = vec![
            ("cli-lb", "tso on, gso on".to_owned()),
            ("lb-cli", "tso off, gro on".to_owned()),
        ];
        let xdp: Offloads = vec![
            ("cli-lb", "tso off, gso on".to_owned()),
            ("lb-cli", "tso off, gro on".to_owned()),
        ];
        assert_eq!(
            differences(&direct, &xdp),
            ["cli-lb: tso off (direct: tso on)"]
        );
        assert!(differences(&direct, &direct).is_empty());
        assert_eq!(
            describe(&direct),
            "cli-lb: tso on, gso on; lb-cli: tso off, gro on"
        );
    }
}
