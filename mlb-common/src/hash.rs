//! The keyed flow hash: HalfSipHash-1-3 (Linux's `hsiphash`) over a flow's 5-tuple, keyed with
//! a secret the agent generates. Without the key nobody can compute which backend a 5-tuple
//! lands on, so no client can aim its flows at one backend.
use crate::maps::FlowKey;

#[inline(always)]
fn round(v: &mut [u32; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(5) ^ v[0];
    v[0] = v[0].rotate_left(16);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(8) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(7) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[2];
    v[2] = v[2].rotate_left(16);
}

#[inline(always)]
fn absorb(v: &mut [u32; 4], m: u32) {
    v[3] ^= m;
    round(v);
    v[0] ^= m;
}

#[inline(always)]
fn init(secret: &[u32; 2]) -> [u32; 4] {
    [
        secret[0],
        secret[1],
        0x6c79_6765 ^ secret[0],
        0x7465_6462 ^ secret[1],
    ]
}

/// The finalization: message length `len` in bytes (SipHash's padding word), three rounds.
#[inline(always)]
fn finish(mut v: [u32; 4], len: u32) -> u32 {
    absorb(&mut v, len << 24);
    v[2] ^= 0xff;
    round(&mut v);
    round(&mut v);
    round(&mut v);
    v[1] ^ v[3]
}

/// HalfSipHash-1-3 of the words of `key` (addresses and ports as stored, protocol and family)
/// under `secret`.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, secret: &[u32; 2]) -> u32 {
    let mut v = init(secret);
    for i in 0..4 {
        absorb(&mut v, key.src[i]);
        absorb(&mut v, key.dst[i]);
    }
    absorb(&mut v, (u32::from(key.sport) << 16) | u32::from(key.dport));
    absorb(&mut v, (u32::from(key.proto) << 8) | u32::from(key.family));
    finish(v, 40)
}

/// HalfSipHash-1-3 of the flow's source address and family only (`BALANCE=source`): every
/// flow of one client gets the same hash, so the same backend while the table holds.
#[inline(always)]
pub fn source_hash(key: &FlowKey, secret: &[u32; 2]) -> u32 {
    let mut v = init(secret);
    for i in 0..4 {
        absorb(&mut v, key.src[i]);
    }
    absorb(&mut v, u32::from(key.family));
    finish(v, 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            src: [0x0101_12c6, 0, 0, 0],
            dst: [0x0201_12c6, 0, 0, 0],
            sport,
            dport: 80,
            proto: 6,
            family: 4,
            _pad: [0; 2],
        }
    }

    #[test]
    fn same_flow_same_hash_and_the_secret_changes_everything() {
        let a = [1, 2];
        assert_eq!(flow_hash(&key(1000), &a), flow_hash(&key(1000), &a));
        assert_ne!(flow_hash(&key(1000), &a), flow_hash(&key(1001), &a));
        // Another secret: about half the bits of each hash flip, for every flow.
        let b = [1, 3];
        for sport in 0..64 {
            let flipped = (flow_hash(&key(sport), &a) ^ flow_hash(&key(sport), &b)).count_ones();
            assert!((4..=28).contains(&flipped), "{sport}: {flipped} bits");
        }
    }

    #[test]
    fn source_hash_ignores_everything_but_the_client_address() {
        let s = [5, 6];
        let mut other = key(1000);
        other.dst = [0x0301_12c6, 0, 0, 0];
        other.dport = 443;
        assert_eq!(source_hash(&key(1000), &s), source_hash(&other, &s));
        other.src = [0x0501_12c6, 0, 0, 0];
        assert_ne!(source_hash(&key(1000), &s), source_hash(&other, &s));
        assert_ne!(
            source_hash(&key(1000), &s),
            source_hash(&key(1000), &[5, 7])
        );
    }

    #[test]
    fn consecutive_ports_spread_over_buckets() {
        let mut buckets = [0u32; 8];
        for sport in 0..8000u16 {
            buckets[(flow_hash(&key(sport), &[7, 9]) % 8) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|n| (850..=1150).contains(n)),
            "{buckets:?}"
        );
    }
}
