//! HTTP basic auth for `HAPROXY_{n}_AUTH=realm:user:hash`, checked against crypt(3) hashes as
//! HAProxy userlists take them: SHA-512 (`$6$`), SHA-256 (`$5$`) and bcrypt (`$2a$`, `$2b$`,
//! `$2y$`).
//!
//! A hash check costs milliseconds (bcrypt: tens), so it runs on the blocking pool, and the
//! credentials that passed are remembered (as a SHA-256 digest, never in clear) so a keep-alive
//! client does not pay it on every request.
use std::{collections::HashSet, sync::Mutex};

use base64::Engine as _;
use sha_crypt::PasswordVerifier as _;

use crate::model::BasicAuth;

/// Most remembered credentials per service; the memory is cleared when full.
const REMEMBERED_MAX: usize = 1024;

/// Which crypt(3) scheme a hash uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashKind {
    /// `$6$`
    Sha512,
    /// `$5$`
    Sha256,
    /// `$2a$`, `$2b$`, `$2x$`, `$2y$`
    Bcrypt,
}

impl HashKind {
    /// The scheme of `hash`, or why it is not supported.
    pub fn of(hash: &str) -> Result<HashKind, String> {
        if hash.starts_with("$6$") {
            Ok(HashKind::Sha512)
        } else if hash.starts_with("$5$") {
            Ok(HashKind::Sha256)
        } else if ["$2a$", "$2b$", "$2x$", "$2y$"]
            .iter()
            .any(|p| hash.starts_with(p))
        {
            Ok(HashKind::Bcrypt)
        } else {
            // Never quote the hash: even its first characters are the secret's.
            Err("unsupported password hash (want a crypt(3) $6$, $5$ or $2y$ hash)".to_owned())
        }
    }
}

/// Checks `Authorization: Basic …` headers for one service.
#[derive(Debug)]
pub struct Authenticator {
    /// Realm sent in `WWW-Authenticate`.
    pub realm: String,
    user: String,
    hash: String,
    kind: HashKind,
    remembered: Mutex<HashSet<[u8; 32]>>,
}

impl Authenticator {
    /// An authenticator for `auth`, or why its hash cannot be used.
    pub fn new(auth: &BasicAuth) -> Result<Authenticator, String> {
        let kind = HashKind::of(&auth.password_hash)?;
        Ok(Authenticator {
            realm: auth.realm.clone(),
            user: auth.user.clone(),
            hash: auth.password_hash.clone(),
            kind,
            remembered: Mutex::new(HashSet::new()),
        })
    }

    /// The value of the `WWW-Authenticate` header of a 401.
    pub fn challenge(&self) -> String {
        format!("Basic realm=\"{}\"", self.realm.replace('"', ""))
    }

    /// Whether an `Authorization` header value carries this service's user and password.
    /// Runs the hash on the blocking pool unless these credentials passed before.
    pub async fn check(self: &std::sync::Arc<Self>, authorization: Option<&str>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        if user != self.user {
            return false;
        }
        let key = digest(authorization.unwrap_or_default());
        if self.remembered().contains(&key) {
            return true;
        }
        let this = self.clone();
        let ok = tokio::task::spawn_blocking(move || this.verify(&password))
            .await
            .unwrap_or(false);
        if ok {
            let mut remembered = self.remembered();
            if remembered.len() >= REMEMBERED_MAX {
                remembered.clear();
            }
            remembered.insert(key);
        }
        ok
    }

    /// Whether `password` matches the hash (slow: call off the async threads).
    pub fn verify(&self, password: &str) -> bool {
        match self.kind {
            HashKind::Sha512 | HashKind::Sha256 => sha_crypt::ShaCrypt::default()
                .verify_password(password.as_bytes(), self.hash.as_str())
                .is_ok(),
            HashKind::Bcrypt => bcrypt::verify(password, &self.hash).unwrap_or(false),
        }
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        self.remembered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn digest(s: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let mut out = [0; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// `(user, password)` from `Basic <base64(user:password)>`.
fn parse_basic(header: &str) -> Option<(String, String)> {
    let (scheme, creds) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(creds.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sha_crypt::PasswordHasher as _;

    use super::*;

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    fn auth(hash: String) -> Arc<Authenticator> {
        Arc::new(
            Authenticator::new(&BasicAuth {
                realm: "r".into(),
                user: "alice".into(),
                password_hash: hash,
            })
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn each_hash_kind_accepts_the_password_and_rejects_others() {
        let hashes = [
            sha_crypt::ShaCrypt::SHA512
                .hash_password_with_salt(b"s3cret", b"saltsalt")
                .unwrap()
                .to_string(),
            sha_crypt::ShaCrypt::SHA256
                .hash_password_with_salt(b"s3cret", b"saltsalt")
                .unwrap()
                .to_string(),
            bcrypt::hash("s3cret", 4).unwrap(),
            bcrypt::hash("s3cret", 4)
                .unwrap()
                .replacen("$2b$", "$2y$", 1),
        ];
        for hash in hashes {
            let a = auth(hash.clone());
            assert!(a.check(Some(&basic("alice", "s3cret"))).await, "{hash}");
            assert!(
                a.check(Some(&basic("alice", "s3cret"))).await,
                "{hash} remembered"
            );
            assert!(!a.check(Some(&basic("alice", "wrong"))).await, "{hash}");
            assert!(!a.check(Some(&basic("bob", "s3cret"))).await, "{hash}");
            assert!(!a.check(None).await);
            assert!(!a.check(Some("Bearer x")).await);
        }
    }

    #[test]
    fn hashes_made_by_openssl_passwd_verify() {
        // `openssl passwd -6 -salt saltsalt password` and `-5`: what users paste into labels.
        for hash in [
            "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/",
            "$5$saltsalt$gOjOtoMpVhru2uyjeJSEc/JaLQWOXMNmlOnj6T4AtC.",
        ] {
            let a = auth(hash.into());
            assert!(a.verify("password"), "{hash}");
            assert!(!a.verify("Password"), "{hash}");
        }
    }

    #[test]
    fn unsupported_hashes_are_rejected_with_a_reason() {
        let err = HashKind::of("$1$abc$def").unwrap_err();
        assert!(err.contains("unsupported"), "{err}");
        assert!(HashKind::of("plain").is_err());
    }
}
