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
//! The table size M must be prime (so every `skip` walks all slots). Shares stay within 1% of
//! fair when every backend's fair share is at least 100 slots (M ≥ 100·N with equal weights).
//! - The XDP dataplane uses `--maglev-table-size` (65,537 by default, enough for a few hundred
//!   backends) for every service: its tables are kernel maps of a fixed layout.
//! - The userspace dataplane sizes each service's table to its backends with
//!   [`fitted_table_size`] (1,031 slots for up to 10 equal backends, capped at
//!   `--maglev-table-size`) and stores `u16` entries ([`build_table_of`]): 2 KiB instead of
//!   256 KiB per service. Its table only spreads new connections (established ones are proxied
//!   sockets), so a size change costs nothing but the usual reshuffle of new flows; the size moves
//!   in powers of two, so most backend changes keep it and stay minimally disruptive.
use std::cmp::Ordering;

/// Default lookup-table size (a prime; Katran's and the Maglev paper's choice).
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;

/// Largest accepted table size: 16 Mi slots (64 MiB of `u32` per service) is already far beyond
/// any useful size; bigger values are surely a typo.
pub const MAX_TABLE_SIZE: u32 = 1 << 24;

/// The value of every slot of a table built for an empty (or all-zero-weight) backend set: "no
/// backend", drop or refuse the flow.
pub const NO_BACKEND: u32 = u32::MAX;

/// Smallest size [`fitted_table_size`] picks, the cap aside: the smallest prime ≥
/// [`MIN_FITTED_NEED`].
pub const MIN_FITTED_SIZE: u32 = 1_031;

/// The floor of [`fitted_table_size`]'s need (a power of two).
pub const MIN_FITTED_NEED: u64 = 1_024;

/// Slots [`fitted_table_size`] gives to the fair share of the lightest backend, at least: with
/// ≥ 100 slots the rounding of Maglev's turns stays within 1% of that share.
pub const SLOTS_PER_LIGHTEST_SHARE: u64 = 100;

/// A table entry: a backend index, or "no backend".
pub trait TableEntry: Copy + Eq {
    /// "No backend" ([`NO_BACKEND`] for `u32`, `u16::MAX` for `u16`).
    const NONE: Self;
    /// Most backends a table of this entry type can index (the largest index is `NONE - 1`).
    const MAX_BACKENDS: usize;
    /// The entry for backend index `i` (`i < MAX_BACKENDS`).
    fn from_index(i: u32) -> Self;
    /// The backend index, or `None` for [`Self::NONE`].
    fn index(self) -> Option<usize>;
}

impl TableEntry for u32 {
    const NONE: Self = NO_BACKEND;
    const MAX_BACKENDS: usize = NO_BACKEND as usize;
    fn from_index(i: u32) -> Self {
        i
    }
    fn index(self) -> Option<usize> {
        (self != Self::NONE).then_some(self as usize)
    }
}

impl TableEntry for u16 {
    const NONE: Self = u16::MAX;
    const MAX_BACKENDS: usize = u16::MAX as usize;
    fn from_index(i: u32) -> Self {
        i as u16
    }
    fn index(self) -> Option<usize> {
        (self != Self::NONE).then_some(self as usize)
    }
}

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
    #[error("{0} backends are more than this table's entries can index")]
    TooManyBackends(usize),
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
    let mut h = StableHasher::new(prefix);
    h.update(data);
    h.finish()
}

/// [`stable_hash`] over data written in pieces (e.g. serialized straight into it, with no
/// buffer): the same value as over the pieces joined.
pub struct StableHasher(u64);

impl StableHasher {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub fn new(prefix: &[u8]) -> Self {
        let mut h = StableHasher(Self::OFFSET_BASIS);
        h.update(prefix);
        h
    }

    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    pub fn finish(&self) -> u64 {
        mix64(self.0)
    }
}

impl std::io::Write for StableHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// SplitMix64's finaliser: a bijection on `u64` that spreads every input bit over all outputs.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The table size a backend set needs (userspace dataplane): the smallest prime ≥ the power of
/// two ≥ max(1,024, 100 × ⌈total weight / lightest weight⌉), at most `max` (a valid table size,
/// returned as is when the need reaches it). Backends of weight 0 do not count.
///
/// ⌈total / lightest⌉ is N with equal weights, and keeps the lightest backend's fair share at
/// ≥ 100 slots otherwise, which keeps every share within 1% ([`build_table`]'s turns round to a
/// slot or so). It depends only on the weights (several instances agree) and is unchanged when
/// all weights are scaled alike. Powers of two make the size change rarely: 11 to 20 equal
/// backends all get 2,053 slots, so removing one of them moves its ~1/N of the slots and ≤ 3%
/// of the others' (≤ 1% at 65,537 slots; only new flows are concerned). A size change
/// reshuffles the table.
pub fn fitted_table_size(backends: &[MaglevBackend<'_>], max: u32) -> u32 {
    let (total, lightest) = backends
        .iter()
        .map(|b| u64::from(b.weight))
        .filter(|&w| w > 0)
        .fold((0u64, u64::MAX), |(t, l), w| (t + w, l.min(w)));
    let shares = if total == 0 {
        1
    } else {
        total.div_ceil(lightest)
    };
    let need = shares
        .saturating_mul(SLOTS_PER_LIGHTEST_SHARE)
        .max(MIN_FITTED_NEED)
        .next_power_of_two();
    if need >= u64::from(max) {
        return max;
    }
    // need < max ≤ 2^32 - 1: a u32, and a prime below 2·need exists (Bertrand).
    let mut size = need as u32;
    while !is_prime(size) {
        size += 1;
    }
    size.min(max)
}

/// Builds the lookup table: `size` slots, each the index (into `backends`, as given) of the
/// backend that owns it, or [`NO_BACKEND`] in every slot when no backend has a weight above 0.
///
/// The result depends only on the set of (key, weight) pairs, not on their order in `backends`:
/// map the indices back to keys to compare tables built from differently ordered inputs.
pub fn build_table(backends: &[MaglevBackend<'_>], size: u32) -> Result<Vec<u32>, MaglevError> {
    build_table_of(backends, size)
}

/// [`build_table`] with entries of type `E`: the same table, e.g. in `u16` (half the memory) for
/// up to 65,535 backends.
pub fn build_table_of<E: TableEntry>(
    backends: &[MaglevBackend<'_>],
    size: u32,
) -> Result<Vec<E>, MaglevError> {
    validate_table_size(size)?;
    if backends.len() > E::MAX_BACKENDS {
        return Err(MaglevError::TooManyBackends(backends.len()));
    }
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
    let mut table = vec![E::NONE; size as usize];
    if order.is_empty() {
        return Ok(table);
    }

    struct Filler<E> {
        index: E,
        /// The next slot of the backend's preference list, `(offset + k·skip) mod M` for the
        /// k-th try: kept as a running sum (no division per step).
        slot: u64,
        skip: u64,
        weight: u64,
        credit: u64,
    }
    let mut fillers: Vec<Filler<E>> = order
        .iter()
        .map(|&i| {
            let key = backends[i].key.as_bytes();
            Filler {
                index: E::from_index(i as u32),
                slot: stable_hash(b"mlb-maglev-offset\0", key) % m,
                skip: if m > 1 {
                    stable_hash(b"mlb-maglev-skip\0", key) % (m - 1) + 1
                } else {
                    1
                },
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
                    let slot = f.slot as usize;
                    f.slot += f.skip;
                    if f.slot >= m {
                        f.slot -= m;
                    }
                    if table[slot] == E::NONE {
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

    /// Fingerprints hash services as they are serialized: in pieces, the value must be the one
    /// over the joined bytes, or instances would disagree with older ones.
    #[test]
    fn hashing_in_pieces_equals_hashing_the_whole() {
        let whole = stable_hash(b"http\0", b"{\"key\":1,\"backends\":[]}");
        let mut h = StableHasher::new(b"http\0");
        for piece in [&b"{\"key\""[..], b":1,", b"", b"\"backends\":[]}"] {
            std::io::Write::write_all(&mut h, piece).unwrap();
        }
        assert_eq!(h.finish(), whole);
        assert_ne!(stable_hash(b"l4\0", b"{}"), stable_hash(b"http\0", b"{}"));
    }

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
            assert_removal_moves_few_other_slots(n, M, 0.01);
        }
    }

    /// Removing one of `n` equal backends from a table of `size` slots moves at most the
    /// fraction `max_moved` of the table among the other backends (its own slots aside).
    fn assert_removal_moves_few_other_slots(n: usize, size: u32, max_moved: f64) {
        let k = keys(n);
        let all = backends(&k, |_| 1);
        let before = build_table(&all, size).unwrap();
        for removed in [0, n / 2, n - 1] {
            let rest: Vec<MaglevBackend> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != removed)
                .map(|(_, b)| *b)
                .collect();
            let after = build_table(&rest, size).unwrap();
            let moved_others = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| {
                    **b as usize != removed && all[**b as usize].key != rest[**a as usize].key
                })
                .count();
            assert!(
                moved_others as f64 <= max_moved * f64::from(size),
                "N={n}, M={size}, removed {removed}: {moved_others} slots of other backends \
                     moved"
            );
            assert!(after.iter().all(|&v| (v as usize) < rest.len()));
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

    /// The tables themselves are fixed: these fingerprints were taken from the first version
    /// (offset + k·skip mod M per step); a change would make mixed-version instances disagree.
    #[test]
    fn maglev_tables_are_stable() {
        for (n, size, weighted, fingerprint) in [
            (10, 65_537, true, 0x8051_bbc7_930d_3d6a_u64),
            (100, 16_411, false, 0xab67_232d_d728_ef89),
            (7, 1_031, true, 0xe0ab_2ce2_c9c5_8af5),
        ] {
            let k = keys(n);
            let b = backends(&k, |i| if weighted { (i % 3 + 1) as u32 } else { 1 });
            let t = build_table(&b, size).unwrap();
            let bytes: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
            assert_eq!(stable_hash(b"", &bytes), fingerprint, "N={n}, M={size}");
        }
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

    /// Every backend's share of `table` is within 1% of its weighted fair share.
    fn assert_fair(b: &[MaglevBackend], table: &[u32], what: &str) {
        let total: u64 = b.iter().map(|b| u64::from(b.weight)).sum();
        let m = table.len() as f64;
        for (i, c) in counts(table, b.len()).into_iter().enumerate() {
            let fair = m * b[i].weight as f64 / total as f64;
            let dev = (c as f64 - fair).abs() / fair;
            assert!(
                dev <= 0.01,
                "{what}, M={m}: backend {i} (weight {}) has {c} slots, fair {fair:.1}",
                b[i].weight
            );
        }
    }

    /// Weight of the i-th backend.
    type Weights = fn(usize) -> u32;

    /// The weight patterns the sizing tests try.
    const PATTERNS: [(&str, Weights); 5] = [
        ("equal", |_| 1),
        ("1,2,3,4", |i| (i % 4 + 1) as u32),
        ("one heavy", |i| if i == 0 { 10 } else { 1 }),
        ("one light", |i| if i == 0 { 1 } else { 7 }),
        ("scaled", |i| 1_000 * (i % 2 + 1) as u32),
    ];

    #[test]
    fn maglev_fitted_size_rule() {
        let sized = |n: usize, w: Weights| {
            let k = keys(n);
            fitted_table_size(&backends(&k, w), M)
        };
        let equal = |n| sized(n, |_| 1);
        // 100 × N, rounded up to a power of two (at least 1,024), then to a prime.
        assert_eq!(equal(0), MIN_FITTED_SIZE);
        assert_eq!(equal(1), 1_031);
        assert_eq!(equal(10), 1_031);
        assert_eq!(equal(11), 2_053);
        assert_eq!(equal(20), 2_053);
        assert_eq!(equal(21), 4_099);
        assert_eq!(equal(41), 8_209);
        assert_eq!(equal(100), 16_411);
        assert_eq!(equal(327), 32_771);
        // Capped at the configured size, whatever it is.
        assert_eq!(equal(328), M);
        assert_eq!(equal(5_000), M);
        let k = keys(10);
        assert_eq!(fitted_table_size(&backends(&k, |_| 1), 13), 13);
        assert_eq!(fitted_table_size(&backends(&k, |_| 1), 655_373), 1_031);
        // Weights count in units of the lightest; weight 0 does not count.
        assert_eq!(sized(10, |_| 5), 1_031);
        assert_eq!(sized(10, |_| 0), MIN_FITTED_SIZE);
        assert_eq!(sized(10, |i| (i % 2) as u32), 1_031);
        // 1+2+3+4+1+2+3+4+1+2 = 23 shares: 2,300 → 4,096.
        assert_eq!(sized(10, |i| (i % 4 + 1) as u32), 4_099);
        assert_eq!(sized(10, |i| 1_000 * (i % 4 + 1) as u32), 4_099);
        // 10 + 9 = 19 shares: 1,900 → 2,048; 1 + 9·7 = 64 shares: 6,400 → 8,192.
        assert_eq!(sized(10, PATTERNS[2].1), 2_053);
        assert_eq!(sized(10, PATTERNS[3].1), 8_209);
        // A huge spread of weights is capped, without overflow.
        let k = keys(3);
        let spread = backends(&k, |i| [1, u32::MAX, u32::MAX][i]);
        assert_eq!(fitted_table_size(&spread, M), M);
        // Always a prime within the cap, and independent of the input order.
        for n in 0..400 {
            for (_, w) in PATTERNS {
                let k = keys(n);
                let mut b = backends(&k, w);
                let size = fitted_table_size(&b, M);
                assert!(is_prime(size) && size <= M, "N={n}: {size}");
                b.reverse();
                assert_eq!(fitted_table_size(&b, M), size);
            }
        }
    }

    /// At the fitted size every backend still gets its fair share within 1%, whatever the
    /// number of backends (the worst case is a need just at a power of two), unless the cap
    /// is reached (a cap well above the needs here).
    #[test]
    fn maglev_fitted_size_fair_share_within_1_percent() {
        const CAP: u32 = 655_373;
        assert!(is_prime(CAP));
        for n in (1..=64).chain([99, 100, 101, 160, 163, 200, 327]) {
            for (name, w) in PATTERNS {
                let k = keys(n);
                let b = backends(&k, w);
                let t = build_table(&b, fitted_table_size(&b, CAP)).unwrap();
                assert_fair(&b, &t, &format!("{name}, N={n}"));
            }
        }
    }

    /// At a fixed fitted size, removing a backend moves its own slots and few others: ≤ 3% of
    /// the table (≤ 2.7% measured over N = 2..41, 60, 80, 160, 327: a smaller M/N disrupts a
    /// little more than 65,537 slots do); and one backend less usually keeps the size.
    #[test]
    fn maglev_fitted_size_removal_moves_few_other_slots() {
        for n in [2usize, 3, 10, 20, 40, 100] {
            let k = keys(n);
            let size = fitted_table_size(&backends(&k, |_| 1), M);
            assert_removal_moves_few_other_slots(n, size, 0.03);
        }
        let equal = |n| fitted_table_size(&backends(&keys(n), |_| 1), M);
        for n in [2, 10, 12, 20, 30, 40, 100, 160] {
            assert_eq!(equal(n - 1), equal(n), "N={n}");
        }
    }

    /// The compact (`u16`) table is the same table.
    #[test]
    fn maglev_u16_table_matches_u32() {
        for n in [0usize, 1, 3, 10, 100] {
            let k = keys(n);
            let b = backends(&k, |i| (i % 3) as u32);
            let size = fitted_table_size(&b, M);
            let wide = build_table(&b, size).unwrap();
            let narrow: Vec<u16> = build_table_of(&b, size).unwrap();
            assert_eq!(narrow.len(), wide.len());
            assert!(
                narrow
                    .iter()
                    .zip(&wide)
                    .all(|(&n, &w)| n.index() == w.index())
            );
        }
        let k = keys(70_000);
        assert_eq!(
            build_table_of::<u16>(&backends(&k, |_| 1), 13),
            Err(MaglevError::TooManyBackends(70_000))
        );
    }

    /// Build cost at the default (XDP) size and at the fitted (userspace) size: `cargo test --release -p mlb-userspace --lib --
    /// --ignored --nocapture maglev_build_bench`.
    #[ignore = "benchmark"]
    #[test]
    fn maglev_build_bench() {
        let k = keys(10);
        let b = backends(&k, |_| 1);
        let start = std::time::Instant::now();
        for _ in 0..100 {
            std::hint::black_box(build_table(&b, M).unwrap());
        }
        println!("build_table(10 backends, {M}): {:?}", start.elapsed() / 100);
        let size = fitted_table_size(&b, M);
        let start = std::time::Instant::now();
        for _ in 0..1_000 {
            std::hint::black_box(build_table_of::<u16>(&b, size).unwrap());
        }
        println!(
            "build_table_of::<u16>(10 backends, {size}): {:?}",
            start.elapsed() / 1_000
        );
    }
}
