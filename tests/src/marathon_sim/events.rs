//! Marathon's event bus: the event JSON of `Events.scala` / `event-bus.md` and the SSE framing
//! of `/v2/events`.
use std::{collections::BTreeSet, sync::Arc};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use super::clock;

/// One published event: its `eventType` and the full JSON object (heavy plan format).
#[derive(Debug)]
pub(crate) struct SimEvent {
    pub(crate) event_type: String,
    pub(crate) data: Value,
}

/// Fan-out of events to every attached `/v2/events` stream.
pub(crate) struct EventBus {
    tx: broadcast::Sender<Arc<SimEvent>>,
}

impl EventBus {
    /// A bus that keeps up to `capacity` events for a slow reader before it is disconnected
    /// (Marathon drops slow SSE consumers too).
    pub(crate) fn new(capacity: usize) -> Self {
        EventBus {
            tx: broadcast::Sender::new(capacity),
        }
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<SimEvent>> {
        self.tx.subscribe()
    }

    /// A task's new state: its `status_update_event` (`status`, e.g. `TASK_RUNNING`), then its
    /// instance's `instance_changed_event` (`condition`, e.g. `Running`), as Marathon sends them.
    pub(crate) fn publish_task_state(&self, t: &TaskRef<'_>, status: &str, condition: &str) {
        self.publish("status_update_event", status_update(t, status));
        self.publish("instance_changed_event", instance_changed(t, condition));
    }

    /// Publishes an event; `fields` gets `eventType` and `timestamp` added.
    pub(crate) fn publish(&self, event_type: &str, fields: Value) {
        let mut data = match fields {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        data.insert("eventType".into(), Value::String(event_type.into()));
        data.insert("timestamp".into(), Value::String(clock::now()));
        tracing::debug!(event_type, "marathon-sim: event");
        // No receiver is fine: nobody is attached.
        let _ = self.tx.send(Arc::new(SimEvent {
            event_type: event_type.into(),
            data: Value::Object(data),
        }));
    }
}

/// What one `/v2/events` connection asked for.
#[derive(Clone, Debug, Default)]
pub(crate) struct StreamFilter {
    /// `event_type=` values; empty means every event.
    pub(crate) types: BTreeSet<String>,
    /// `plan-format=light`: deployment plans without `original` and `target`.
    pub(crate) light: bool,
}

impl StreamFilter {
    pub(crate) fn wants(&self, event_type: &str) -> bool {
        self.types.is_empty() || self.types.contains(event_type)
    }
}

/// One SSE frame: `event: <type>\ndata: <json>\n\n`.
pub(crate) fn sse_frame(event: &SimEvent, light: bool) -> Bytes {
    let data = if light && event.data.get("plan").is_some() {
        let mut d = event.data.clone();
        if let Some(plan) = d.get_mut("plan").and_then(Value::as_object_mut) {
            plan.remove("original");
            plan.remove("target");
        }
        d
    } else {
        event.data.clone()
    };
    Bytes::from(format!("event: {}\ndata: {}\n\n", event.event_type, data))
}

/// The keep-alive Marathon's SSE stream sends between events: an empty line, which every SSE
/// parser ignores.
pub(crate) const KEEP_ALIVE: &[u8] = b"\n";

/// The fields a task's events share.
pub(crate) struct TaskRef<'a> {
    pub(crate) app_id: &'a str,
    pub(crate) task_id: &'a str,
    pub(crate) instance_id: &'a str,
    pub(crate) slave_id: &'a str,
    pub(crate) host: &'a str,
    pub(crate) ip: String,
    pub(crate) ports: &'a [u16],
    pub(crate) version: &'a str,
}

/// `status_update_event` fields.
pub(crate) fn status_update(t: &TaskRef<'_>, status: &str) -> Value {
    json!({
        "slaveId": t.slave_id,
        "taskId": t.task_id,
        "taskStatus": status,
        "message": "",
        "appId": t.app_id,
        "host": t.host,
        "ipAddresses": [{"ipAddress": t.ip, "protocol": "IPv4"}],
        "ports": t.ports,
        "version": t.version,
    })
}

/// `instance_changed_event` fields.
pub(crate) fn instance_changed(t: &TaskRef<'_>, condition: &str) -> Value {
    json!({
        "instanceId": t.instance_id,
        "condition": condition,
        "runSpecId": t.app_id,
        "agentId": t.slave_id,
        "host": t.host,
        "runSpecVersion": t.version,
    })
}

/// `health_status_changed_event` fields.
pub(crate) fn health_status_changed(t: &TaskRef<'_>, alive: bool) -> Value {
    json!({
        "appId": t.app_id,
        "instanceId": t.instance_id,
        "version": t.version,
        "alive": alive,
    })
}

/// `instance_health_changed_event` fields.
pub(crate) fn instance_health_changed(t: &TaskRef<'_>, healthy: bool) -> Value {
    json!({
        "instanceId": t.instance_id,
        "runSpecId": t.app_id,
        "runSpecVersion": t.version,
        "healthy": healthy,
    })
}

/// `failed_health_check_event` fields.
pub(crate) fn failed_health_check(t: &TaskRef<'_>, health_check: &Value) -> Value {
    json!({
        "appId": t.app_id,
        "taskId": t.task_id,
        "instanceId": t.instance_id,
        "version": t.version,
        "healthCheck": health_check,
    })
}
