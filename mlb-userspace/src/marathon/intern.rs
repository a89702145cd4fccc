//! Shared text for the strings that repeat across tasks: an agent's host name and address,
//! and the task state. At 10,000 apps × 10 tasks on a few hundred agents, each task holding
//! its own copy of `"10.0.3.17"` and `"TASK_RUNNING"` costs megabytes; one `Arc<str>` per
//! distinct value, shared by every task that names it, costs almost nothing.
//!
//! The pool is per thread (the full read parses on several threads; no lock on the parse
//! path) and bounded: past [`MAX_POOLED`] distinct values (e.g. one address per task on an
//! IP-per-task network) it starts over, so it never holds more than a few hundred kilobytes,
//! and a value merely stops being shared.
use std::{cell::RefCell, collections::HashSet, fmt, sync::Arc};

use serde::{Deserializer, de};

/// Distinct values a thread's pool holds at most before it is emptied.
const MAX_POOLED: usize = 4096;

thread_local! {
    static POOL: RefCell<HashSet<Arc<str>>> = RefCell::new(HashSet::new());
}

/// The pooled copy of `s` (made and pooled if new).
pub fn intern(s: &str) -> Arc<str> {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if let Some(shared) = pool.get(s) {
            return shared.clone();
        }
        if pool.len() >= MAX_POOLED {
            pool.clear();
        }
        let shared: Arc<str> = Arc::from(s);
        pool.insert(shared.clone());
        shared
    })
}

struct Interned;

impl de::Visitor<'_> for Interned {
    type Value = Arc<str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Arc<str>, E> {
        Ok(intern(v))
    }
}

/// `#[serde(deserialize_with)]` for an `Arc<str>` field: a pooled string.
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
    d.deserialize_str(Interned)
}

/// `#[serde(deserialize_with)]` for an `Option<Arc<str>>` field (`null` is `None`).
pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<str>>, D::Error> {
    struct MaybeInterned;

    impl<'de> de::Visitor<'de> for MaybeInterned {
        type Value = Option<Arc<str>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or null")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            string(d).map(Some)
        }
    }

    d.deserialize_option(MaybeInterned)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Doc {
        #[serde(deserialize_with = "string")]
        host: Arc<str>,
        #[serde(default, deserialize_with = "optional")]
        state: Option<Arc<str>>,
    }

    #[test]
    fn equal_values_share_one_allocation() {
        let a: Doc = serde_json::from_str(r#"{"host":"10.0.0.1","state":"TASK_RUNNING"}"#).unwrap();
        let b: Doc =
            serde_json::from_value(serde_json::json!({"host":"10.0.0.1","state":null})).unwrap();
        assert_eq!(&*a.host, "10.0.0.1");
        assert!(Arc::ptr_eq(&a.host, &b.host));
        assert_eq!(a.state.as_deref(), Some("TASK_RUNNING"));
        assert_eq!(b.state, None);
        // Escaped text is unescaped before pooling.
        let c: Doc = serde_json::from_str(r#"{"host":"10.0.0.\u0031"}"#).unwrap();
        assert!(Arc::ptr_eq(&a.host, &c.host));
    }

    #[test]
    fn the_pool_stays_bounded() {
        let first = intern("agent-0");
        for i in 0..MAX_POOLED + 10 {
            intern(&format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255));
        }
        POOL.with(|p| assert!(p.borrow().len() <= MAX_POOLED));
        // Values still come out right after the pool started over.
        assert_eq!(&*intern("agent-0"), &*first);
    }
}
