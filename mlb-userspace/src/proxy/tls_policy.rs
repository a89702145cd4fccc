//! The TLS policy of every frontend (HAProxy's `ssl-default-bind-options ssl-min-ver`,
//! `ssl-default-bind-ciphers`, `…-ciphersuites` and `…-curves`): which versions, cipher suites
//! and key-exchange groups rustls offers.
use rustls::{SupportedCipherSuite, crypto::CryptoProvider};

use crate::model::TlsVersion;

/// OpenSSL's names of the TLS 1.2 suites rustls implements (what HAProxy configurations list).
const OPENSSL_NAMES: [(&str, &str); 6] = [
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// Curve names as OpenSSL and HAProxy spell them, and rustls's.
const CURVE_NAMES: [(&str, &str); 5] = [
    ("X25519", "X25519"),
    ("P-256", "secp256r1"),
    ("PRIME256V1", "secp256r1"),
    ("P-384", "secp384r1"),
    ("SECP384R1", "secp384r1"),
];

/// Versions, suites and groups offered; empty lists mean rustls's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPolicy {
    pub min_version: TlsVersion,
    /// TLS 1.2 cipher suites (`ssl-default-bind-ciphers`), OpenSSL or IANA names.
    pub ciphers: Vec<String>,
    /// TLS 1.3 cipher suites (`ssl-default-bind-ciphersuites`).
    pub ciphersuites: Vec<String>,
    /// Key-exchange groups (`ssl-default-bind-curves`).
    pub curves: Vec<String>,
}

impl Default for TlsPolicy {
    fn default() -> Self {
        TlsPolicy {
            min_version: TlsVersion::Tls12,
            ciphers: Vec::new(),
            ciphersuites: Vec::new(),
            curves: Vec::new(),
        }
    }
}

/// A policy list that selects nothing rustls implements.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} {given:?}: none is supported (mlb supports {supported})")]
pub struct TlsPolicyError {
    pub what: &'static str,
    pub given: String,
    pub supported: String,
}

impl TlsPolicy {
    /// The ring provider narrowed to the policy's suites and groups.
    pub fn provider(&self) -> CryptoProvider {
        let mut p = rustls::crypto::ring::default_provider();
        let (v12, v13): (Vec<_>, Vec<_>) = p
            .cipher_suites
            .iter()
            .partition(|s| matches!(s, SupportedCipherSuite::Tls12(_)));
        let mut suites = pick(&v13, &self.ciphersuites, suite_matches);
        suites.extend(pick(&v12, &self.ciphers, suite_matches));
        p.cipher_suites = suites;
        p.kx_groups = pick(&p.kx_groups, &self.curves, |g, n| {
            curve_matches(&format!("{:?}", g.name()), n)
        });
        p
    }
}

/// The items `names` selects (all when `names` is empty), in the provider's order.
fn pick<T: Copy>(items: &[T], names: &[String], matches: impl Fn(&T, &str) -> bool) -> Vec<T> {
    items
        .iter()
        .filter(|i| names.is_empty() || names.iter().any(|n| matches(i, n)))
        .copied()
        .collect()
}

fn suite_matches(suite: &SupportedCipherSuite, name: &str) -> bool {
    let rustls_name = format!("{:?}", suite.suite());
    let iana = rustls_name.replacen("TLS13_", "TLS_", 1);
    let name = name.to_ascii_uppercase();
    let openssl = OPENSSL_NAMES
        .iter()
        .find(|(o, _)| *o == name)
        .map(|(_, i)| *i);
    name == rustls_name || name == iana || openssl == Some(iana.as_str())
}

fn curve_matches(rustls_name: &str, name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    let alias = CURVE_NAMES
        .iter()
        .find(|(a, _)| *a == name)
        .map(|(_, r)| *r);
    alias.unwrap_or(&name).eq_ignore_ascii_case(rustls_name)
}

/// Splits a HAProxy list (`a:b:c`, or commas) and checks that it selects something: names
/// rustls lacks (`AES256-SHA`, …) are skipped, as OpenSSL skips unknown ones.
pub fn parse_list(what: &'static str, text: &str) -> Result<Vec<String>, TlsPolicyError> {
    let names: Vec<String> = text
        .split([':', ','])
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    let p = rustls::crypto::ring::default_provider();
    let found = match what {
        "curves" => p.kx_groups.iter().any(|g| {
            names
                .iter()
                .any(|n| curve_matches(&format!("{:?}", g.name()), n))
        }),
        _ => p
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)) == (what == "ciphersuites"))
            .any(|s| names.iter().any(|n| suite_matches(s, n))),
    };
    if found {
        return Ok(names);
    }
    let supported: Vec<String> = match what {
        "curves" => vec!["X25519".into(), "P-256".into(), "P-384".into()],
        _ => p
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)) == (what == "ciphersuites"))
            .map(|s| format!("{:?}", s.suite()))
            .collect(),
    };
    Err(TlsPolicyError {
        what,
        given: text.to_owned(),
        supported: supported.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_and_iana_names_select_suites_and_curves() {
        let policy = TlsPolicy {
            ciphers: parse_list("ciphers", "ECDHE-ECDSA-AES256-GCM-SHA384:AES256-SHA").unwrap(),
            ciphersuites: parse_list("ciphersuites", "TLS_AES_256_GCM_SHA384").unwrap(),
            curves: parse_list("curves", "X25519:P-256").unwrap(),
            ..TlsPolicy::default()
        };
        let p = policy.provider();
        let suites: Vec<String> = p
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(
            suites,
            [
                "TLS13_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
            ]
        );
        let groups: Vec<String> = p
            .kx_groups
            .iter()
            .map(|g| format!("{:?}", g.name()))
            .collect();
        assert_eq!(groups, ["X25519", "secp256r1"]);
        // The default policy keeps everything.
        let all = TlsPolicy::default().provider();
        assert_eq!(all.cipher_suites.len(), 9);
    }

    #[test]
    fn a_list_with_nothing_supported_is_refused_naming_what_is() {
        let e = parse_list("ciphers", "AES256-SHA:DES-CBC3-SHA").unwrap_err();
        assert!(
            e.supported
                .contains("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"),
            "{e}"
        );
        assert!(parse_list("curves", "brainpoolP512r1").is_err());
        // A TLS 1.2 suite does not satisfy the TLS 1.3 list (that would leave TLS 1.3 empty).
        assert!(parse_list("ciphersuites", "ECDHE-RSA-AES128-GCM-SHA256").is_err());
    }
}
