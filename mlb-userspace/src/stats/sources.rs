//! Each dataplane as a [`StatsSource`]: its own counters mapped to HAProxy's.
use std::sync::Mutex;

use super::{Counters, Observed, StatsSource, XdpGlobals};
use crate::{dataplane::userspace_l4::L4Stats, dataplane::xdp_l4::XdpL4, proxy::HttpProxy};

/// The userspace L4 dataplane: connections (UDP sessions) and bytes each way.
impl StatsSource for L4Stats {
    fn observe(&self, into: &mut Observed) {
        for (key, svc) in self.snapshot() {
            for (id, b) in svc.backends {
                let counters = Counters {
                    scur: b.connections_active,
                    stot: b.connections_total,
                    bin: b.bytes_to_backend,
                    bout: Some(b.bytes_from_backend),
                    hrsp: None,
                };
                into.l4.insert((key, id), counters);
            }
        }
    }
}

/// The XDP dataplane: new flows as sessions, tracked flows as current sessions, and the bytes
/// of both directions (the program counts them together) as `bin`.
impl StatsSource for Mutex<XdpL4> {
    fn observe(&self, into: &mut Observed) {
        let dp = self
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stats = match dp.backend_stats() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("reading the XDP backend counters: {e}");
                return;
            }
        };
        let open = dp.backend_open_flows().unwrap_or_else(|e| {
            tracing::warn!("counting the XDP flows per backend: {e}");
            Default::default()
        });
        into.xdp = Some(xdp_globals(&dp));
        for (addr, s) in stats {
            let counters = Counters {
                scur: open.get(&addr).copied().unwrap_or(0),
                stot: s.new_flows,
                bin: s.bytes,
                bout: None,
                hrsp: None,
            };
            into.l4_by_addr.insert(addr, counters);
        }
    }
}

/// The HTTP proxy: requests in flight and in total, body bytes, responses by class.
impl StatsSource for HttpProxy {
    fn observe(&self, into: &mut Observed) {
        for (id, c) in self.backend_counters() {
            let counters = Counters {
                scur: c.in_flight,
                stot: c.requests,
                bin: c.bytes_in,
                bout: Some(c.bytes_out),
                hrsp: Some(c.responses),
            };
            into.http.insert(id, counters);
        }
    }
}

/// The program's global counters and connection-table size (zero when a read fails: logged).
fn xdp_globals(dp: &XdpL4) -> XdpGlobals {
    let counters = match dp.program().counters() {
        Ok(c) => c.named().collect(),
        Err(e) => {
            tracing::warn!("reading the XDP counters: {e}");
            Vec::new()
        }
    };
    let conntrack_entries = dp.conntrack_entries().unwrap_or_else(|e| {
        tracing::warn!("counting the XDP connection table: {e}");
        0
    }) as u64;
    let snat_ports = dp
        .snat_occupancy()
        .unwrap_or_else(|e| {
            tracing::warn!("counting the XDP SNAT ports in use: {e}");
            Vec::new()
        })
        .into_iter()
        .map(|o| (super::server_name(o.backend), o.used, o.capacity))
        .collect();
    XdpGlobals {
        counters,
        conntrack_entries,
        snat_ports,
    }
}
