//! Source allow-lists (`HAPROXY_{n}_BACKEND_NETWORK_ALLOWED_ACL`): a service flagged
//! [`SVC_F_ACL`] opens flows only for clients whose address is in one of its blocks. One LPM
//! trie holds every service's blocks, keyed by (slot, block); a lookup with the full key finds
//! the longest block of that slot containing the client, or nothing.
//!
//! Checked when a packet opens a flow (after the conntrack lookup): a tracked flow was allowed
//! when it opened, as HAProxy's `tcp-request content` rules decide once per connection.
use aya_ebpf::maps::lpm_trie::Key;
use mlb_common::{
    maps::{AclKey, SVC_F_ACL, ServiceValue},
    stats::Counter,
};

use crate::{exit::Exit, maps::ACL};

/// Passes a client the service allows; drops (counted) one it does not. `key` is scratch
/// space for the trie key.
#[inline(always)]
pub fn check_source(svc: &ServiceValue, src: &[u32; 4], key: &mut Key<AclKey>) -> Result<(), Exit> {
    if svc.flags & SVC_F_ACL == 0 {
        return Ok(());
    }
    key.prefix_len = AclKey::prefix_len(128);
    key.data = AclKey::new(svc.slot, *src);
    match ACL.get(&*key) {
        Some(_) => Ok(()),
        None => Err(Exit::Drop(Counter::DropAclDenied)),
    }
}
