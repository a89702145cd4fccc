//! Fault injection: the ways a real Marathon misbehaves that a client must survive.
//!
//! Faults are set through [`crate::marathon_sim::MarathonSim::inject`] or `POST /_sim/faults`
//! with the same JSON (`{"kind": "apps_status", "status": 503}`).
use std::{sync::Mutex, time::Duration};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// One fault to switch on or off. Each variant sets one knob; the others are left as they are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Switch every fault off.
    Clear,
    /// Close every open `/v2/events` connection now (one-shot; new connections work).
    DropEventStreams,
    /// Keep event streams open but send nothing at all, not even keep-alives, while `stalled`.
    StallEventStreams {
        /// Whether streams are stalled.
        stalled: bool,
    },
    /// Answer every `/v2/apps` request with this HTTP status (`None` switches the fault off).
    AppsStatus {
        /// The status to answer with, e.g. 503.
        status: Option<u16>,
    },
    /// Answer every `/v2/apps` request with a 200 whose body is not valid JSON.
    AppsGarbage {
        /// Whether the fault is on.
        enabled: bool,
    },
    /// Delay every Marathon API response (not `/_sim`) by this many milliseconds (0: off).
    Delay {
        /// The delay in milliseconds.
        millis: u64,
    },
    /// Act as a non-leader: `/v2/events` and `/v2/apps` answer `307` with `Location` on this
    /// leader URL (`None`: this instance is the leader again).
    NotLeader {
        /// The leader's base URL, e.g. `http://127.0.0.1:8080`.
        leader_url: Option<String>,
    },
    /// Make every deployment fail (`deployment_failed`) before it changes any task.
    FailDeployments {
        /// Whether the fault is on.
        enabled: bool,
    },
}

/// The faults in effect, as `GET /_sim/faults` reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultSettings {
    /// Event streams send nothing.
    pub stalled: bool,
    /// Status `/v2/apps` answers with.
    pub apps_status: Option<u16>,
    /// `/v2/apps` answers invalid JSON.
    pub apps_garbage: bool,
    /// Delay added to API responses, in milliseconds.
    pub delay_millis: u64,
    /// The leader to redirect to while this instance is not the leader.
    pub leader_url: Option<String>,
    /// Deployments fail.
    pub fail_deployments: bool,
}

/// The shared fault state: the knobs plus a generation counter that event streams watch to
/// learn they must close.
pub(crate) struct FaultState {
    settings: Mutex<FaultSettings>,
    drops: watch::Sender<u64>,
    stall: watch::Sender<bool>,
}

impl FaultState {
    pub(crate) fn new() -> Self {
        FaultState {
            settings: Mutex::new(FaultSettings::default()),
            drops: watch::Sender::new(0),
            stall: watch::Sender::new(false),
        }
    }

    /// Applies one fault.
    pub(crate) fn apply(&self, fault: Fault) {
        tracing::info!(?fault, "marathon-sim: fault injected");
        let mut s = self.settings.lock().expect("fault settings lock");
        match fault {
            Fault::Clear => *s = FaultSettings::default(),
            Fault::DropEventStreams => {
                self.drops.send_modify(|g| *g += 1);
            }
            Fault::StallEventStreams { stalled } => s.stalled = stalled,
            Fault::AppsStatus { status } => s.apps_status = status,
            Fault::AppsGarbage { enabled } => s.apps_garbage = enabled,
            Fault::Delay { millis } => s.delay_millis = millis,
            Fault::NotLeader { leader_url } => {
                s.leader_url = leader_url.map(|u| u.trim_end_matches('/').to_string());
            }
            Fault::FailDeployments { enabled } => s.fail_deployments = enabled,
        }
        self.stall.send_replace(s.stalled);
    }

    /// A copy of the current settings.
    pub(crate) fn current(&self) -> FaultSettings {
        self.settings.lock().expect("fault settings lock").clone()
    }

    /// The extra delay for API responses.
    pub(crate) fn delay(&self) -> Duration {
        Duration::from_millis(self.current().delay_millis)
    }

    /// A receiver that changes whenever streams must be dropped.
    pub(crate) fn drops(&self) -> watch::Receiver<u64> {
        self.drops.subscribe()
    }

    /// A receiver holding whether streams are stalled.
    pub(crate) fn stall(&self) -> watch::Receiver<bool> {
        self.stall.subscribe()
    }
}
