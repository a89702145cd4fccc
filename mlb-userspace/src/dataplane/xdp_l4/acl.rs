//! The per-service source allow-lists in the program's ACL trie
//! (`HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL`), and the service flags that turn them and
//! `BALANCE=source` on.
//!
//! A VIP key's blocks are the service's blocks of the VIP's family (an IPv4 VIP never sees an
//! IPv6 client); a service with a list but no block of the VIP's family admits nobody there,
//! as HAProxy would. Entries are added before the service value that flags the list goes live,
//! and removed after it, so no packet sees a flagged service with a half-written list.
use std::collections::BTreeSet;

use aya::maps::{
    MapData,
    lpm_trie::{Key, LpmTrie},
};
use mlb_common::maps::{self, AclKey, SVC_F_ACL, SVC_F_SOURCE_HASH};

use super::{XdpL4, addr_words, family_of};
use crate::{
    dataplane::xdp::XdpError,
    model::{Balance, L4Service},
};

/// One programmed block: (prefix length of the address part, address words).
pub(super) type AclBlock = (u32, [u32; 4]);

/// The `SVC_F_*` flags of `svc`.
pub(super) fn service_flags(svc: &L4Service) -> u32 {
    let source = if svc.balance == Balance::Source {
        SVC_F_SOURCE_HASH
    } else {
        0
    };
    let acl = if svc.allowed_networks.is_empty() {
        0
    } else {
        SVC_F_ACL
    };
    source | acl
}

/// The blocks of `svc`'s allow-list that apply to a VIP of `family`.
pub(super) fn service_blocks(svc: &L4Service, family: u8) -> BTreeSet<AclBlock> {
    svc.allowed_networks
        .iter()
        .filter(|n| family_of(n.addr) == family)
        .map(|n| {
            (
                u32::from(n.prefix_len),
                addr_words(masked(n.addr, n.prefix_len)),
            )
        })
        .collect()
}

/// `addr` with the bits past `len` cleared (the kernel keeps them, and a trie key with stray
/// host bits would be a different entry than the same block written cleanly).
fn masked(addr: std::net::IpAddr, len: u8) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

fn trie_key(slot: u32, (len, addr): &AclBlock) -> Key<AclKey> {
    Key::new(AclKey::prefix_len(*len), AclKey::new(slot, *addr))
}

impl XdpL4 {
    fn acl_map(&mut self) -> Result<LpmTrie<&mut MapData, AclKey, u32>, XdpError> {
        self.program.map_mut(maps::ACL)
    }

    /// Writes the blocks of `wanted` that `slot` does not have yet.
    pub(super) fn add_acl_blocks(
        &mut self,
        slot: u32,
        have: &BTreeSet<AclBlock>,
        wanted: &BTreeSet<AclBlock>,
    ) -> Result<(), XdpError> {
        let mut trie = self.acl_map()?;
        for block in wanted.difference(have) {
            trie.insert(&trie_key(slot, block), 1, 0)?;
        }
        Ok(())
    }

    /// Removes the blocks of `have` that `slot` no longer wants.
    pub(super) fn remove_acl_blocks(
        &mut self,
        slot: u32,
        have: &BTreeSet<AclBlock>,
        wanted: &BTreeSet<AclBlock>,
    ) -> Result<(), XdpError> {
        let mut trie = self.acl_map()?;
        for block in have.difference(wanted) {
            match trie.remove(&trie_key(slot, block)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Every block in the trie by slot: what a previous agent left (adoption).
    pub(super) fn read_acl_blocks(&self) -> Result<Vec<(u32, AclBlock)>, XdpError> {
        let trie: LpmTrie<&MapData, AclKey, u32> = self.program.map(maps::ACL)?;
        let keys = trie.keys().collect::<Result<Vec<_>, _>>()?;
        Ok(keys
            .into_iter()
            .map(|k| {
                let data = k.data();
                let block = (k.prefix_len().saturating_sub(32), data.addr);
                (u32::from_be(data.slot_be), block)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{IpNet, L4ServiceKey, Protocol};

    #[test]
    fn blocks_are_per_family_and_masked() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let svc = L4Service {
            key: L4ServiceKey {
                port: 80,
                protocol: Protocol::Tcp,
            },
            app_id: "/a".into(),
            bind_addr: None,
            backends: vec![],
            health_check: None,
            tuning: Box::default(),
            balance: Balance::Source,
            allowed_networks: vec![net("198.18.1.77/24"), net("fd00::1/8"), net("0.0.0.0/0")],
        };
        assert_eq!(service_flags(&svc), SVC_F_ACL | SVC_F_SOURCE_HASH);
        let v4 = service_blocks(&svc, mlb_common::maps::FAMILY_V4);
        let want = [
            (0, [0, 0, 0, 0]),
            (24, addr_words("198.18.1.0".parse().unwrap())),
        ];
        assert_eq!(v4, want.into_iter().collect());
        let v6 = service_blocks(&svc, mlb_common::maps::FAMILY_V6);
        assert_eq!(
            v6,
            [(8, addr_words("fd00::".parse().unwrap()))]
                .into_iter()
                .collect()
        );
    }
}
