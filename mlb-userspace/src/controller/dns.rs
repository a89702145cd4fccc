//! Agent host names → addresses, resolved off the controller's task.
//!
//! Marathon names tasks by their agent's host name; marathon-lb resolved each with
//! `socket.gethostbyname`, one after the other. mlb resolves every name of a batch at once, on a
//! task of its own, so an unresolvable name (up to [`LOOKUP_TIMEOUT`]) never holds an update: the
//! controller routes what it can now, and the answers trigger another pass when they arrive.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinSet};
use tracing::warn;

/// How long one name may take to resolve.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// A name that did not resolve is not asked again for this long (every task event would ask).
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The answers of one batch: the names that resolved, and those asked.
#[derive(Debug)]
pub(super) struct Answers {
    pub asked: Vec<String>,
    pub found: Vec<(String, IpAddr)>,
}

/// The lookups the controller has started and the names that recently failed.
pub(super) struct Resolver {
    in_flight: HashSet<String>,
    failed_at: HashMap<String, Instant>,
    tx: mpsc::Sender<Answers>,
    pub(super) rx: mpsc::Receiver<Answers>,
}

impl Default for Resolver {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(16);
        Resolver {
            in_flight: HashSet::new(),
            failed_at: HashMap::new(),
            tx,
            rx,
        }
    }
}

impl Resolver {
    /// Starts resolving the `names` not already being resolved nor recently failed; the answers
    /// arrive on `rx`. Needs a tokio runtime.
    pub fn start(&mut self, names: Vec<String>) {
        let now = Instant::now();
        self.failed_at
            .retain(|_, at| now.duration_since(*at) < RETRY_AFTER);
        let asked: Vec<String> = names
            .into_iter()
            .filter(|n| !self.in_flight.contains(n) && !self.failed_at.contains_key(n))
            .collect();
        if asked.is_empty() {
            return;
        }
        self.in_flight.extend(asked.iter().cloned());
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let found = resolve_hosts(asked.clone()).await;
            let _ = tx.send(Answers { asked, found }).await;
        });
    }

    /// Takes a batch's answers: the names no longer in flight, the ones that failed remembered.
    pub fn finish(&mut self, answers: &Answers) {
        let now = Instant::now();
        for name in &answers.asked {
            self.in_flight.remove(name);
            if !answers.found.iter().any(|(n, _)| n == name) {
                self.failed_at.insert(name.clone(), now);
            }
        }
    }
}

/// Resolves agent host names, all at once, IPv4 first. A name that does not resolve within
/// [`LOOKUP_TIMEOUT`] is left out (logged): its tasks stay unrouted, with that reason in explain.
pub async fn resolve_hosts(names: Vec<String>) -> Vec<(String, IpAddr)> {
    let mut lookups = JoinSet::new();
    for name in names {
        lookups.spawn(async move {
            let lookup = tokio::net::lookup_host((name.clone(), 0));
            let result = tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await;
            (name, result)
        });
    }
    let mut found = Vec::new();
    while let Some(joined) = lookups.join_next().await {
        let Ok((name, result)) = joined else { continue };
        match result {
            Ok(Ok(addrs)) => {
                let addrs: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                if let Some(ip) = addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()) {
                    found.push((name, *ip));
                }
            }
            Ok(Err(e)) => warn!(host = %name, "agent host name does not resolve: {e}"),
            Err(_) => warn!(host = %name, "agent host name: DNS timed out"),
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One batch answers for every name asked, a name in flight is not asked twice, and a name
    /// that failed is not asked again at the next event.
    #[tokio::test]
    async fn names_resolve_concurrently_and_failures_are_not_retried_at_once() {
        let mut r = Resolver::default();
        r.start(vec!["localhost".into(), "no-such-host.invalid".into()]);
        // Asking again while in flight starts nothing new.
        r.start(vec!["localhost".into()]);
        let answers = r.rx.recv().await.unwrap();
        assert_eq!(answers.asked.len(), 2);
        assert!(answers.found.iter().any(|(n, _)| n == "localhost"));
        assert!(
            !answers
                .found
                .iter()
                .any(|(n, _)| n == "no-such-host.invalid")
        );
        r.finish(&answers);
        // The failed name is not asked again right away.
        r.start(vec!["no-such-host.invalid".into()]);
        assert!(r.in_flight.is_empty());
    }
}
