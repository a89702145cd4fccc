//! What the controller publishes: the [`Status`] the admin API reads, and [`StateQueries`] for
//! the rare copy of the whole desired state.
use std::{collections::BTreeMap, sync::Arc};

use tokio::sync::{mpsc, oneshot};

use crate::model::{BackendId, DesiredState, explanations::Explanations};

/// What the admin API shows. The controller keeps one, updates it in place and publishes a copy
/// after every change (the explanations are shared, only the shards that changed are copied).
#[derive(Clone, Debug, Default)]
pub struct Status {
    /// Bumped every time a dataplane was given changes.
    pub generation: u64,
    /// Of the services the dataplanes were given and the Maglev table size: equal on every
    /// instance that agrees (16 hex digits).
    pub fingerprint: String,
    /// Whether Marathon has been read successfully at least once.
    pub synced: bool,
    /// The last failed Marathon read, until the next good one.
    pub last_error: Option<String>,
    /// Apps known (parsed or not).
    pub apps: usize,
    /// Services and rejections in the desired state (the state itself: [`StateQueries`]).
    pub l4_services: usize,
    pub http_services: usize,
    pub rejected: usize,
    /// Full model passes since start (the rest were incremental).
    pub full_passes: u64,
    /// Why each app is or is not exposed, by app id.
    pub explanations: Explanations,
    /// L4 backends mlb's active health checks keep out of rotation.
    pub l4_unhealthy: Vec<BackendId>,
    /// L4 services a dataplane refused, with the reason, by service (`10001/tcp`).
    pub l4_errors: BTreeMap<String, String>,
    /// HTTP configuration problems in effect after the last apply.
    pub http_errors: Vec<String>,
}

/// Asks the controller for a copy of the desired state (for the admin API's rare state
/// endpoints: copying 10,000 services at every change would cost more than the change).
#[derive(Clone, Debug)]
pub struct StateQueries(pub(super) mpsc::Sender<StateReply>);

/// Where the controller sends the copy of the state asked for.
pub(super) type StateReply = oneshot::Sender<Arc<DesiredState>>;

impl StateQueries {
    /// The current desired state; `None` when the controller is gone.
    pub async fn get(&self) -> Option<Arc<DesiredState>> {
        let (tx, rx) = oneshot::channel();
        self.0.send(tx).await.ok()?;
        rx.await.ok()
    }
}
