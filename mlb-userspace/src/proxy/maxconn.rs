//! `maxconn` on `server` lines and frontends, with HAProxy's behaviour at the limit: a request
//! (or connection) waits in a queue for a moment (`--queue-timeout`, HAProxy's `timeout queue`),
//! then is refused (503, or a closed connection on a frontend).
use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Entries kept before idle ones are forgotten (backends come and go).
const PRUNE_AT: usize = 4096;

/// One limit per key (a backend, a frontend).
pub(crate) struct Limits<K> {
    by_key: Mutex<HashMap<K, Limit>>,
}

struct Limit {
    max: u32,
    slots: Arc<Semaphore>,
}

impl Limit {
    fn idle(&self) -> bool {
        self.slots.available_permits() == self.max as usize
    }
}

impl<K: Hash + Eq + Clone> Limits<K> {
    pub(crate) fn new() -> Self {
        Limits {
            by_key: Mutex::new(HashMap::new()),
        }
    }

    /// A slot under `key`'s limit of `max`, waiting at most `wait` for one; `None`: refused.
    /// A changed `max` starts a new count (connections under the old one finish on their own).
    pub(crate) async fn acquire(
        &self,
        key: &K,
        max: u32,
        wait: Duration,
    ) -> Option<OwnedSemaphorePermit> {
        let slots = {
            let mut by_key = self.by_key.lock().unwrap_or_else(PoisonError::into_inner);
            if by_key.len() >= PRUNE_AT {
                by_key.retain(|_, l| !l.idle());
            }
            let limit = by_key.entry(key.clone()).or_insert_with(|| Limit {
                max,
                slots: Arc::new(Semaphore::new(max as usize)),
            });
            if limit.max != max {
                *limit = Limit {
                    max,
                    slots: Arc::new(Semaphore::new(max as usize)),
                };
            }
            limit.slots.clone()
        };
        match slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => tokio::time::timeout(wait, slots.acquire_owned())
                .await
                .ok()?
                .ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn at_the_limit_a_request_waits_then_is_refused() {
        let limits = Limits::new();
        let wait = Duration::from_millis(500);
        let a = limits.acquire(&"b1", 2, wait).await.unwrap();
        let _b = limits.acquire(&"b1", 2, wait).await.unwrap();
        assert!(
            limits.acquire(&"b1", 2, wait).await.is_none(),
            "third refused"
        );
        assert!(limits.acquire(&"b2", 2, wait).await.is_some(), "per key");
        // A slot freed while a request waits goes to it.
        let waiter = limits.acquire(&"b1", 2, wait);
        let release = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(a);
        };
        let (got, ()) = tokio::join!(waiter, release);
        assert!(got.is_some());
    }
}
