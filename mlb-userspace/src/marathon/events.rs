//! Marathon events: which ones mlb subscribes to, and what each one means for the routing state.
//!
//! An event is never applied as a patch: it only names what must be re-read from the REST API
//! (one app, or everything). Re-reading is authoritative and makes lost, duplicated or reordered
//! events harmless; the watcher coalesces the re-reads (see `watch.rs`).
use serde_json::Value;
use tracing::{debug, warn};

use super::sse::SseEvent;

/// The `event_type` filters sent to `/v2/events` (server-side filtering, Marathon >= 1.3.7).
///
/// Compared to marathon-lb (`api_post_event`, `health_status_changed_event`,
/// `status_update_event`) this adds the instance events that replaced the health event in
/// Marathon 1.4, app removal, deployments, unhealthy kills and leader changes.
/// `failed_health_check_event` is left out on purpose: it fires on every failed probe, and the
/// change that matters (the instance turning unhealthy) arrives as
/// `instance_health_changed_event`.
pub const SUBSCRIBED_EVENT_TYPES: &[&str] = &[
    "status_update_event",
    "health_status_changed_event",
    "instance_health_changed_event",
    "instance_changed_event",
    "unknown_instance_terminated_event",
    "unhealthy_instance_kill_event",
    "unhealthy_task_kill_event",
    "api_post_event",
    "app_terminated_event",
    "deployment_info",
    "deployment_success",
    "deployment_failed",
    "deployment_step_success",
    "deployment_step_failure",
    "scheduler_registered_event",
    "scheduler_reregistered_event",
];

/// What an event asks the watcher to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventAction {
    /// Nothing (bookkeeping or irrelevant events, pods, unknown types).
    Ignore,
    /// Re-read these apps (ids as Marathon writes them, e.g. `/group/app`).
    Refresh(Vec<String>),
    /// The app was removed from Marathon.
    Removed(String),
    /// Re-read everything (the event does not say which apps it affects, or the leader changed).
    Resync,
}

/// Why an event's data could not be turned into an action.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The data is not JSON (or one of several documents is not).
    #[error("event {event_type}: data is not JSON: {source}")]
    InvalidJson {
        /// The SSE `event:` field (or `?` when absent).
        event_type: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A document is JSON but not an object with the fields the event type requires.
    #[error("event {event_type}: {reason}")]
    InvalidEvent {
        /// The `eventType` of the document.
        event_type: String,
        /// What is missing or wrong.
        reason: String,
    },
}

/// Turns one SSE event into actions, one per JSON document in its data (marathon-lb accepts
/// several documents in one event, one per `data:` line). A document that cannot be understood
/// yields an error for that document only; the others still count.
pub fn actions_for(event: &SseEvent) -> Vec<Result<EventAction, EventError>> {
    let sse_type = if event.event.is_empty() {
        "?"
    } else {
        event.event.as_str()
    };
    let mut out = Vec::new();
    let mut docs = serde_json::Deserializer::from_str(&event.data).into_iter::<Value>();
    loop {
        match docs.next() {
            None => break,
            Some(Ok(doc)) => out.push(action_for_document(sse_type, &doc)),
            Some(Err(source)) => {
                // The rest of the data cannot be re-synchronised reliably: stop here.
                out.push(Err(EventError::InvalidJson {
                    event_type: sse_type.to_owned(),
                    source,
                }));
                break;
            }
        }
    }
    out
}

/// Like [`actions_for`], logging (with the event type) and dropping the documents that fail.
pub fn actions_for_logged(event: &SseEvent) -> Vec<EventAction> {
    actions_for(event)
        .into_iter()
        .filter_map(|r| match r {
            Ok(EventAction::Ignore) => None,
            Ok(a) => Some(a),
            Err(e) => {
                warn!(error = %e, "skipping an invalid Marathon event");
                None
            }
        })
        .collect()
}

fn action_for_document(sse_type: &str, doc: &Value) -> Result<EventAction, EventError> {
    let Some(obj) = doc.as_object() else {
        return Err(EventError::InvalidEvent {
            event_type: sse_type.to_owned(),
            reason: "data is not a JSON object".into(),
        });
    };
    // The document's own `eventType` is authoritative; the SSE `event:` line is a fallback.
    let event_type = obj
        .get("eventType")
        .and_then(Value::as_str)
        .unwrap_or(sse_type);
    let invalid = |reason: &str| EventError::InvalidEvent {
        event_type: event_type.to_owned(),
        reason: reason.to_owned(),
    };
    let string_field = |names: &[&str]| -> Result<String, EventError> {
        names
            .iter()
            .find_map(|n| obj.get(*n).and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| invalid(&format!("no {} string", names.join(" or "))))
    };
    let action = match event_type {
        "status_update_event"
        | "health_status_changed_event"
        | "unhealthy_instance_kill_event"
        | "unhealthy_task_kill_event"
        | "failed_health_check_event"
        | "add_health_check_event"
        | "remove_health_check_event" => {
            EventAction::Refresh(vec![string_field(&["appId", "runSpecId"])?])
        }
        "instance_health_changed_event"
        | "instance_changed_event"
        | "unknown_instance_terminated_event" => {
            EventAction::Refresh(vec![string_field(&["runSpecId", "appId"])?])
        }
        "app_terminated_event" => EventAction::Removed(string_field(&["appId"])?),
        "api_post_event" => {
            // The definition is in the event, but re-reading gets tasks and deployments too,
            // and a DELETE shows up as a 404.
            match obj
                .get("appDefinition")
                .and_then(|d| d.get("id"))
                .and_then(Value::as_str)
            {
                Some(id) if !id.is_empty() => EventAction::Refresh(vec![id.to_owned()]),
                // A group or pod change: the affected apps are not named.
                _ => EventAction::Resync,
            }
        }
        "deployment_info"
        | "deployment_success"
        | "deployment_failed"
        | "deployment_step_success"
        | "deployment_step_failure" => {
            let ids = deployment_app_ids(doc);
            if ids.is_empty() {
                EventAction::Resync
            } else {
                EventAction::Refresh(ids)
            }
        }
        "scheduler_registered_event" | "scheduler_reregistered_event" => EventAction::Resync,
        other => {
            debug!(event_type = other, "ignoring Marathon event");
            EventAction::Ignore
        }
    };
    Ok(action)
}

/// The app ids a deployment event names: the actions of `currentStep` and of every step of
/// `plan` (present in the light plan format), deduplicated in first-seen order.
fn deployment_app_ids(doc: &Value) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let mut add_actions = |step: &Value| {
        for action in step
            .get("actions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(app) = action.get("app").and_then(Value::as_str)
                && !app.is_empty()
                && !ids.iter().any(|i| i == app)
            {
                ids.push(app.to_owned());
            }
        }
    };
    if let Some(step) = doc.get("currentStep") {
        add_actions(step);
    }
    for step in doc
        .get("plan")
        .and_then(|p| p.get("steps"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        add_actions(step);
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
            id: None,
        }
    }

    fn one(event: &str, data: &str) -> EventAction {
        let mut r = actions_for(&sse(event, data));
        assert_eq!(r.len(), 1, "{r:?}");
        r.remove(0).expect("valid event")
    }

    fn refresh(ids: &[&str]) -> EventAction {
        EventAction::Refresh(ids.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn task_and_health_events_refresh_their_app() {
        let cases = [
            (
                "status_update_event",
                r#"{"eventType":"status_update_event","taskId":"a.1","taskStatus":"TASK_RUNNING","appId":"/my-app"}"#,
            ),
            (
                "health_status_changed_event",
                r#"{"eventType":"health_status_changed_event","appId":"/my-app","instanceId":"i","alive":true}"#,
            ),
            (
                "instance_health_changed_event",
                r#"{"eventType":"instance_health_changed_event","instanceId":"i","runSpecId":"/my-app","healthy":true}"#,
            ),
            (
                "instance_changed_event",
                r#"{"eventType":"instance_changed_event","condition":"Created","instanceId":"i","runSpecId":"/my-app"}"#,
            ),
            (
                "unhealthy_instance_kill_event",
                r#"{"eventType":"unhealthy_instance_kill_event","appId":"/my-app","taskId":"t"}"#,
            ),
        ];
        for (t, data) in cases {
            assert_eq!(one(t, data), refresh(&["/my-app"]), "{t}");
        }
    }

    #[test]
    fn api_post_event_refreshes_the_posted_app_or_resyncs() {
        let data = r#"{"eventType":"api_post_event","uri":"/v2/apps/x","appDefinition":{"id":"/x","instances":2}}"#;
        assert_eq!(one("api_post_event", data), refresh(&["/x"]));
        let data = r#"{"eventType":"api_post_event","uri":"/v2/groups/g"}"#;
        assert_eq!(one("api_post_event", data), EventAction::Resync);
    }

    #[test]
    fn app_terminated_event_removes_the_app() {
        let data = r#"{"eventType":"app_terminated_event","appId":"/gone"}"#;
        assert_eq!(
            one("app_terminated_event", data),
            EventAction::Removed("/gone".into())
        );
    }

    #[test]
    fn deployment_events_name_their_apps_or_resync() {
        let data = r#"{"eventType":"deployment_info","plan":{"id":"p","steps":[
            {"actions":[{"action":"StartApplication","app":"/a"}]},
            {"actions":[{"action":"ScaleApplication","app":"/b"},{"action":"ScaleApplication","app":"/a"}]}]},
            "currentStep":{"actions":[{"action":"ScaleApplication","app":"/c"}]}}"#;
        assert_eq!(one("deployment_info", data), refresh(&["/c", "/a", "/b"]));
        let data = r#"{"eventType":"deployment_success","id":"p"}"#;
        assert_eq!(one("deployment_success", data), EventAction::Resync);
    }

    #[test]
    fn leader_change_resyncs_and_unknown_events_are_ignored() {
        let data = r#"{"eventType":"scheduler_reregistered_event","frameworkId":"f"}"#;
        assert_eq!(one("", data), EventAction::Resync);
        let data = r#"{"eventType":"pod_created_event","uri":"/v2/pods/p"}"#;
        assert_eq!(one("pod_created_event", data), EventAction::Ignore);
        let data = r#"{"eventType":"something_new_in_marathon_2"}"#;
        assert_eq!(one("x", data), EventAction::Ignore);
        let data = r#"{"eventType":"event_stream_attached","remoteAddress":"1.2.3.4"}"#;
        assert_eq!(one("event_stream_attached", data), EventAction::Ignore);
    }

    #[test]
    fn several_documents_in_one_event_each_count() {
        let data = "{\"eventType\":\"status_update_event\",\"appId\":\"/a\"}\n\
                    {\"eventType\":\"app_terminated_event\",\"appId\":\"/b\"}";
        let got: Vec<_> = actions_for(&sse("status_update_event", data))
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            got,
            vec![refresh(&["/a"]), EventAction::Removed("/b".into())]
        );
    }

    #[test]
    fn invalid_json_is_an_error_naming_the_event_type() {
        let r = actions_for(&sse("status_update_event", "{\"eventType\": nope"));
        assert_eq!(r.len(), 1);
        let msg = r[0].as_ref().unwrap_err().to_string();
        assert!(msg.contains("status_update_event"), "{msg}");
        assert!(msg.contains("not JSON"), "{msg}");
    }

    #[test]
    fn valid_documents_before_a_broken_one_still_count() {
        let data = "{\"eventType\":\"status_update_event\",\"appId\":\"/a\"}\n{broken";
        let r = actions_for(&sse("status_update_event", data));
        assert_eq!(r.len(), 2);
        assert_eq!(*r[0].as_ref().unwrap(), refresh(&["/a"]));
        assert!(r[1].is_err());
        assert_eq!(
            actions_for_logged(&sse("status_update_event", data)),
            vec![refresh(&["/a"])]
        );
    }

    #[test]
    fn missing_app_id_is_an_error_naming_the_field() {
        let r = actions_for(&sse(
            "status_update_event",
            r#"{"eventType":"status_update_event","taskId":"t"}"#,
        ));
        let msg = r[0].as_ref().unwrap_err().to_string();
        assert!(
            msg.contains("status_update_event") && msg.contains("appId"),
            "{msg}"
        );
        let r = actions_for(&sse("x", "[1,2]"));
        assert!(r[0].is_err());
    }
}
