//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, §3.4): the lookup table that maps a
//! flow hash to a backend, shared by the XDP and the userspace TCP/UDP dataplanes.
//!
//! Properties the dataplanes rely on:
//! - **Deterministic across instances.** Each backend's preference list comes from a fixed,
//!   well-known hash of its id string (FNV-1a 64 with a SplitMix64 finaliser, fixed prefixes),
//!   never from a per-process random seed, and backends are ordered by id before filling. Several
//!   mlb instances behind ECMP, given the same backend set in any order, build the same table.
//! - **Balanced.** Backends take turns; with equal weights every backend gets ⌊M/N⌋ or ⌈M/N⌉
//!   slots.
//! - **Weighted by credit.** Each round every backend earns its weight in credit; a backend
//!   claims one slot for every `max_weight` of credit it holds. The heaviest backend claims one
//!   slot per round, a backend of weight w claims w/max_weight per round on average, so shares are
//!   proportional to weight (within a slot or two). With equal weights this is plain Maglev.
//! - **Minimal disruption.** Removing one backend of N mostly moves only its own slots.
//!
//! The table size M must be prime (so every `skip` walks all slots); 65,537 by default, which
//! keeps shares within 1% for up to a few hundred backends (M > 100·N).
use std::cmp::Ordering;

/// Default lookup-table size (a prime; Katran's and the Maglev paper's choice).
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

/// Largest accepted table size: 16 Mi slots (64 MiB of `u32` per service) is already far beyond
/// any useful size; bigger values are surely a typo.
pub const MAX_TABLE_SIZE: u32 = 1 << 24;

/// The value of every slot of a table built for an empty (or all-zero-weight) backend set: "no
/// backend", drop or refuse the flow.
pub const NO_BACKEND: u32 = u32::MAX;

/// One backend as Maglev sees it: a stable id and a weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    /// Stable id (the [`crate::model::BackendId`] string): decides the backend's preference list.
    pub key: &'a str,
    /// Relative weight; 0 means "gets no slot".
    pub weight: u32,
}

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("Maglev table size {0} is not a prime number (try 65537, 16381 or 655373)")]
    NotPrime(u32),
    #[error("Maglev table size {0} is larger than the maximum {MAX_TABLE_SIZE}")]
    TooLarge(u32),
    #[error("backend id {0:?} appears twice in one service")]
    DuplicateKey(String),
}

/// Whether `n` is prime (trial division: at most 2^16 steps for any `u32`).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Checks that `size` is usable as a Maglev table size.
pub fn validate_table_size(size: u32) -> Result<(), MaglevError> {
    if size > MAX_TABLE_SIZE {
        return Err(MaglevError::TooLarge(size));
    }
    if !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    Ok(())
}

/// FNV-1a 64 of `prefix` then `data`, finished with SplitMix64's mixer: FNV alone leaves ids that
/// differ only in their last character (`…:11`, `…:12`) close in the low bits.
pub fn stable_hash(prefix: &[u8], data: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET_BASIS;
    for &b in prefix.iter().chain(data) {
        h ^= u64::from(b);
        h = h.wrapping_mul(PRIME);
    }
    mix64(h)
}

/// SplitMix64's finaliser: a bijection on `u64` that spreads every input bit over all outputs.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Builds the lookup table: `size` slots, each the index (into `backends`, as given) of the
/// backend that owns it, or [`NO_BACKEND`] in every slot when no backend has a weight above 0.
///
/// The result depends only on the set of (key, weight) pairs, not on their order in `backends`:
/// map the indices back to keys to compare tables built from differently ordered inputs.
pub fn build_table(backends: &[MaglevBackend<'_>], size: u32) -> Result<Vec<u32>, MaglevError> {
    validate_table_size(size)?;
    // Fill in key order so the input order does not matter.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_by(|&a, &b| backends[a].key.cmp(backends[b].key));
    for pair in order.windows(2) {
        if backends[pair[0]].key.cmp(backends[pair[1]].key) == Ordering::Equal {
            return Err(MaglevError::DuplicateKey(backends[pair[0]].key.to_owned()));
        }
    }
    order.retain(|&i| backends[i].weight > 0);
    let m = u64::from(size);
    let mut table = vec![NO_BACKEND; size as usize];
    if order.is_empty() {
        return Ok(table);
    }

    struct Filler {
        index: u32,
        offset: u64,
        skip: u64,
        /// How far along its preference list the backend is.
        next: u64,
        weight: u64,
        credit: u64,
    }
    let mut fillers: Vec<Filler> = order
        .iter()
        .map(|&i| {
            let key = backends[i].key.as_bytes();
            Filler {
                index: i as u32,
                offset: stable_hash(b"mlb-maglev-offset\0", key) % m,
                skip: if m > 1 {
                    stable_hash(b"mlb-maglev-skip\0", key) % (m - 1) + 1
                } else {
                    1
                },
                next: 0,
                weight: u64::from(backends[i].weight),
                credit: 0,
            }
        })
        .collect();
    let max_weight = fillers.iter().map(|f| f.weight).max().unwrap_or(1);

    let mut filled = 0u64;
    // Each round the heaviest backend claims at least one slot, so this ends after ≤ M rounds.
    'rounds: loop {
        for f in &mut fillers {
            f.credit += f.weight;
            while f.credit >= max_weight {
                f.credit -= max_weight;
                // Walk this backend's preference list to its next free slot. M is prime and
                // 1 ≤ skip < M, so the walk visits every slot: a free one is always found.
                loop {
                    let slot = ((f.offset + f.next * f.skip) % m) as usize;
                    f.next += 1;
                    if table[slot] == NO_BACKEND {
                        table[slot] = f.index;
                        break;
                    }
                }
                filled += 1;
                if filled == m {
                    break 'rounds;
                }
            }
        }
    }
    Ok(table)
}

/// The slots whose value differs between `old` and `new`, as `(slot, new value)`: what a
/// dataplane writes to move from one table to the other. When the sizes differ (or `old` is
/// empty) every slot of `new` is returned.
pub fn slot_changes(old: &[u32], new: &[u32]) -> Vec<(u32, u32)> {
    if old.len() != new.len() {
        return new
            .iter()
            .enumerate()
            .map(|(slot, &v)| (slot as u32, v))
            .collect();
    }
    old.iter()
        .zip(new)
        .enumerate()
        .filter(|(_, (o, n))| o != n)
        .map(|(slot, (_, &n))| (slot as u32, n))
        .collect()
}

/// The table slot a flow hash selects.
pub fn slot_of(hash: u64, table_len: usize) -> usize {
    (hash % table_len as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = DEFAULT_TABLE_SIZE;

    fn keys(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("198.18.2.{}:{}", 10 + i % 200, 8000 + i))
            .collect()
    }

    fn backends<'a>(keys: &'a [String], weight: impl Fn(usize) -> u32) -> Vec<MaglevBackend<'a>> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| MaglevBackend {
                key: k,
                weight: weight(i),
            })
            .collect()
    }

    fn counts(table: &[u32], n: usize) -> Vec<u64> {
        let mut c = vec![0u64; n];
        for &v in table {
            c[v as usize] += 1;
        }
        c
    }

    #[test]
    fn maglev_is_prime() {
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
        assert!(is_prime(65_537));
        assert!(is_prime(16_381));
        assert!(is_prime(4_294_967_291));
        assert!(!is_prime(65_536));
        assert!(!is_prime(65_539 * 3));
        assert!(!is_prime(u32::MAX));
    }

    #[test]
    fn maglev_rejects_non_prime_and_huge_sizes() {
        let k = keys(2);
        let b = backends(&k, |_| 1);
        assert_eq!(build_table(&b, 65_536), Err(MaglevError::NotPrime(65_536)));
        assert_eq!(build_table(&b, 1), Err(MaglevError::NotPrime(1)));
        assert_eq!(
            build_table(&b, 4_294_967_291),
            Err(MaglevError::TooLarge(4_294_967_291))
        );
        assert!(build_table(&b, 16_381).is_ok());
    }

    #[test]
    fn maglev_rejects_duplicate_keys() {
        let k = vec!["a".to_owned(), "b".to_owned(), "a".to_owned()];
        let b = backends(&k, |_| 1);
        assert_eq!(
            build_table(&b, 13),
            Err(MaglevError::DuplicateKey("a".into()))
        );
    }

    #[test]
    fn maglev_empty_set_gives_sentinel_table() {
        let t = build_table(&[], M).unwrap();
        assert_eq!(t.len(), M as usize);
        assert!(t.iter().all(|&v| v == NO_BACKEND));
        let k = keys(2);
        let zero = backends(&k, |_| 0);
        assert!(
            build_table(&zero, 13)
                .unwrap()
                .iter()
                .all(|&v| v == NO_BACKEND)
        );
    }

    #[test]
    fn maglev_equal_weights_fair_share_within_1_percent() {
        for n in [2usize, 3, 10, 100] {
            let k = keys(n);
            let t = build_table(&backends(&k, |_| 1), M).unwrap();
            assert_eq!(t.len(), M as usize);
            let fair = f64::from(M) / n as f64;
            for (i, c) in counts(&t, n).into_iter().enumerate() {
                let dev = (c as f64 - fair).abs() / fair;
                assert!(
                    dev <= 0.01,
                    "N={n}: backend {i} has {c} slots, fair {fair:.1}"
                );
            }
        }
    }

    #[test]
    fn maglev_weighted_fair_share_within_1_percent() {
        for n in [2usize, 3, 10, 100] {
            let k = keys(n);
            let weight = |i: usize| (i % 4 + 1) as u32; // 1, 2, 3, 4, 1, …
            let b = backends(&k, weight);
            let t = build_table(&b, M).unwrap();
            let total: u32 = b.iter().map(|b| b.weight).sum();
            for (i, c) in counts(&t, n).into_iter().enumerate() {
                let fair = f64::from(M) * f64::from(weight(i)) / f64::from(total);
                let dev = (c as f64 - fair).abs() / fair;
                assert!(
                    dev <= 0.01,
                    "N={n}: backend {i} (weight {}) has {c} slots, fair {fair:.1}",
                    weight(i)
                );
            }
        }
    }

    /// Removing one backend moves its own slots, and almost nothing else.
    #[test]
    fn maglev_removal_moves_few_other_slots() {
        for n in [2usize, 3, 10, 100] {
            let k = keys(n);
            let all = backends(&k, |_| 1);
            let before = build_table(&all, M).unwrap();
            for removed in [0, n / 2, n - 1] {
                let rest: Vec<MaglevBackend> = all
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != removed)
                    .map(|(_, b)| *b)
                    .collect();
                let after = build_table(&rest, M).unwrap();
                let moved_others = before
                    .iter()
                    .zip(&after)
                    .filter(|(b, a)| {
                        **b as usize != removed && all[**b as usize].key != rest[**a as usize].key
                    })
                    .count();
                assert!(
                    moved_others as f64 <= 0.01 * f64::from(M),
                    "N={n}, removed {removed}: {moved_others} slots of other backends moved"
                );
                assert!(after.iter().all(|&v| (v as usize) < rest.len()));
            }
        }
    }

    #[test]
    fn maglev_same_table_whatever_the_input_order() {
        let k = keys(10);
        let forward = backends(&k, |i| (i % 3 + 1) as u32);
        let mut reversed = forward.clone();
        reversed.reverse();
        let mut shuffled = forward.clone();
        shuffled.swap(0, 7);
        shuffled.swap(2, 5);
        let as_keys = |b: &[MaglevBackend], t: Vec<u32>| -> Vec<String> {
            t.into_iter()
                .map(|v| b[v as usize].key.to_owned())
                .collect()
        };
        let a = as_keys(&forward, build_table(&forward, M).unwrap());
        let b = as_keys(&reversed, build_table(&reversed, M).unwrap());
        let c = as_keys(&shuffled, build_table(&shuffled, M).unwrap());
        assert!(a == b && b == c);
    }

    /// The hash is a fixed function: a change here would reshuffle every flow on upgrade and make
    /// mixed-version instances disagree.
    #[test]
    fn maglev_hash_is_stable() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (published test vector), then mixed.
        assert_eq!(stable_hash(b"", b"a"), mix64(0xaf63_dc4c_8601_ec8c));
        let k = vec!["x".to_owned(), "y".to_owned(), "z".to_owned()];
        let t = build_table(&backends(&k, |_| 1), 13).unwrap();
        let again = build_table(&backends(&k, |_| 1), 13).unwrap();
        assert_eq!(t, again);
        assert_eq!(counts(&t, 3).iter().sum::<u64>(), 13);
    }

    #[test]
    fn maglev_slot_changes_lists_only_differences() {
        assert_eq!(slot_changes(&[0, 1, 2], &[0, 2, 2]), vec![(1, 2)]);
        assert!(slot_changes(&[0, 1], &[0, 1]).is_empty());
        assert_eq!(slot_changes(&[], &[5, 6]), vec![(0, 5), (1, 6)]);
        let k = keys(5);
        let all = backends(&k, |_| 1);
        let before = build_table(&all, M).unwrap();
        let after = build_table(&all[..4], M).unwrap();
        let mut patched = before.clone();
        for (slot, v) in slot_changes(&before, &after) {
            patched[slot as usize] = v;
        }
        assert_eq!(patched, after);
    }
}
