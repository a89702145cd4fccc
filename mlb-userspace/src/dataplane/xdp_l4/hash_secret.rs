//! The key of the XDP program's flow hash. Kept secret so nobody can compute which backend (or
//! Maglev slot) a 5-tuple lands on and aim flows at one backend; shared by every load balancer
//! of a fleet that must agree on backends (`--hash-secret`), random per agent otherwise.
use std::{fmt, str::FromStr};

/// 64 bits of key (HalfSipHash's key size). `Debug` never shows it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HashSecret([u32; 2]);

impl HashSecret {
    /// A fresh random secret from the operating system's generator.
    pub fn random() -> Self {
        HashSecret(rand::random())
    }

    /// The key words, as the program's configuration stores them.
    pub fn words(&self) -> [u32; 2] {
        self.0
    }
}

impl fmt::Debug for HashSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashSecret(<redacted>)")
    }
}

/// 16 hexadecimal digits (e.g. from `openssl rand -hex 8`).
impl FromStr for HashSecret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            // The value itself is not echoed: it is meant to be secret.
            return Err(format!(
                "expected 16 hexadecimal digits (64 bits), got {} characters",
                s.len()
            ));
        }
        let word = |range: std::ops::Range<usize>| {
            u32::from_str_radix(&s[range], 16).map_err(|e| e.to_string())
        };
        Ok(HashSecret([word(0..8)?, word(8..16)?]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_never_shows_it_and_random_ones_differ() {
        let s: HashSecret = "0123456789abcdef".parse().unwrap();
        assert_eq!(s.words(), [0x0123_4567, 0x89ab_cdef]);
        assert_eq!(format!("{s:?}"), "HashSecret(<redacted>)");
        let err = "0123456789abcdeg".parse::<HashSecret>().unwrap_err();
        assert!(!err.contains("0123"), "{err}");
        assert!("0123".parse::<HashSecret>().is_err());
        assert_ne!(HashSecret::random(), HashSecret::random());
    }
}
