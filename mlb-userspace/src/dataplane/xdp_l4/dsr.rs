//! Direct server return settings of the XDP dataplane (`--forwarding dsr`): the outer sources
//! of encapsulated packets, and which backends DSR can reach.
//!
//! The program leaves the client's packet as it arrived, destination port included, so a
//! backend must accept it on the service port (its task port equal to the service port, e.g.
//! `requirePorts` or host networking); a backend on another port would see packets nothing
//! listens for, so it is left out of the table, with a warning naming the app.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mlb_common::maps::{Config, FAMILY_V4, FORWARDING_DSR, FORWARDING_NAT};

use super::addr_words;

/// How the XDP dataplane sends packets to backends (`--forwarding`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Forwarding {
    /// Full NAT from the SNAT addresses, flows tracked; backends answer the load balancer.
    #[default]
    Nat,
    /// Direct server return: packets encapsulated (IPIP, ip6ip6) from these outer sources; a
    /// family without one gets no backends.
    Dsr {
        v4: Option<Ipv4Addr>,
        v6: Option<Ipv6Addr>,
    },
}

impl Forwarding {
    /// DSR with the outer sources among `sources` (the first of each family).
    pub fn dsr_from(sources: &[IpAddr]) -> Self {
        Forwarding::Dsr {
            v4: sources.iter().find_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            }),
            v6: sources.iter().find_map(|a| match a {
                IpAddr::V6(v6) => Some(*v6),
                IpAddr::V4(_) => None,
            }),
        }
    }

    /// Whether packets of `family` can be encapsulated; `None` in NAT mode (SNAT decides).
    pub fn dsr_reaches(&self, family: u8) -> Option<bool> {
        match self {
            Forwarding::Nat => None,
            Forwarding::Dsr { v4, v6 } if family == FAMILY_V4 => Some(v4.is_some()),
            Forwarding::Dsr { v6, .. } => Some(v6.is_some()),
        }
    }

    /// Whether a backend on `backend_port` can serve `service_port` in this mode.
    pub fn port_ok(&self, service_port: u16, backend_port: u16) -> bool {
        *self == Forwarding::Nat || service_port == backend_port
    }

    /// Writes the mode and outer sources into the program's settings.
    pub fn write(&self, cfg: &mut Config) {
        match self {
            Forwarding::Nat => cfg.forwarding = FORWARDING_NAT,
            Forwarding::Dsr { v4, v6 } => {
                cfg.forwarding = FORWARDING_DSR;
                cfg.encap_src_v4 = v4.map_or(0, |a| addr_words(a.into())[0]);
                cfg.encap_src_v6 = v6.map_or([0; 4], |a| addr_words(a.into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use mlb_common::maps::FAMILY_V6;

    use super::*;

    #[test]
    fn dsr_takes_one_source_per_family_and_reaches_only_those() {
        let sources: Vec<IpAddr> = ["198.18.2.1", "fd00::1", "198.18.2.2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let dsr = Forwarding::dsr_from(&sources);
        assert_eq!(dsr.dsr_reaches(FAMILY_V4), Some(true));
        assert_eq!(dsr.dsr_reaches(FAMILY_V6), Some(true));
        let v4_only = Forwarding::dsr_from(&sources[..1]);
        assert_eq!(v4_only.dsr_reaches(FAMILY_V6), Some(false));
        assert_eq!(Forwarding::Nat.dsr_reaches(FAMILY_V4), None);

        let mut cfg = Config::default();
        dsr.write(&mut cfg);
        assert_eq!(cfg.forwarding, FORWARDING_DSR);
        assert_eq!(cfg.encap_src_v4.to_ne_bytes(), [198, 18, 2, 1]);
        assert_eq!(cfg.encap_src_v6, addr_words("fd00::1".parse().unwrap()));
    }

    #[test]
    fn dsr_needs_the_backend_on_the_service_port() {
        let dsr = Forwarding::dsr_from(&["198.18.2.1".parse().unwrap()]);
        assert!(dsr.port_ok(80, 80));
        assert!(!dsr.port_ok(80, 31000));
        assert!(Forwarding::Nat.port_ok(80, 31000));
    }
}
