//! Task state changes applied straight from `status_update_event`s, before the app is re-read.
//!
//! A task event only names an app to re-read (see [`super::events`]), and that re-read is what
//! the model trusts. But the re-read costs a request to Marathon, which takes tens of
//! milliseconds on a busy Marathon, while a task that is being killed should leave the rotation
//! at once. The event itself says which task of which app is now in which state, and for a task
//! mlb already knows that is all a re-read would change about it: so the new state is patched
//! into the stored app right away, and the re-read follows as before.
//!
//! A re-read that began before the event may still show the older state: the patch is kept
//! over such reads ([`StatePatches::reconcile`]) until a read shows the task at least that far
//! in its life (or not at all).
use std::collections::HashMap;

use serde::Deserialize;

use super::{sse::SseEvent, types::App};

/// A task's new state, as a `status_update_event` gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskStatus {
    pub app_id: String,
    pub task_id: String,
    /// Mesos state (`TASK_KILLING`, `TASK_RUNNING`...).
    pub state: String,
}

/// The task status of a `status_update_event`; `None` for any other event, or one without an
/// app id, a task id or a state.
pub fn task_status(event: &SseEvent) -> Option<TaskStatus> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct StatusUpdate {
        event_type: Option<String>,
        app_id: Option<String>,
        task_id: Option<String>,
        task_status: Option<String>,
    }
    // Cheap test first: most events on a large cluster are of other types.
    if !event.event.is_empty() && event.event != "status_update_event" {
        return None;
    }
    let doc: StatusUpdate = serde_json::from_str(&event.data).ok()?;
    if doc.event_type.as_deref() != Some("status_update_event") {
        return None;
    }
    let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
    Some(TaskStatus {
        app_id: non_empty(doc.app_id)?,
        task_id: non_empty(doc.task_id)?,
        state: non_empty(doc.task_status)?,
    })
}

/// How far a task is in its life: a state from a later step is newer. Unknown states count as
/// the end (Mesos adds terminal states, not live ones).
fn life_step(state: &str) -> u8 {
    match state {
        "TASK_STAGING" => 0,
        "TASK_STARTING" => 1,
        "TASK_RUNNING" | "TASK_UNREACHABLE" | "TASK_LOST" => 2,
        "TASK_KILLING" => 3,
        _ => 4,
    }
}

/// Beyond this many patches pending confirmation, they are all dropped (the re-reads still
/// bring the truth): a burst cannot make the set grow without bound.
const MAX_PATCHES: usize = 100_000;

/// States patched in from events and not yet confirmed by a read, by task id.
#[derive(Debug, Default)]
pub(crate) struct StatePatches {
    by_task: HashMap<String, String>,
}

impl StatePatches {
    /// Patches `status` into `app` when the task is there in an earlier state; true when the
    /// app changed.
    pub(crate) fn apply(&mut self, app: &mut App, status: &TaskStatus) -> bool {
        let Some(task) = app.tasks.iter_mut().find(|t| t.id == status.task_id) else {
            return false;
        };
        let current = task.state.as_deref().unwrap_or("");
        if current == status.state || life_step(current) > life_step(&status.state) {
            return false;
        }
        task.state = Some(super::intern::intern(&status.state));
        if self.by_task.len() >= MAX_PATCHES {
            self.by_task.clear();
        }
        (self.by_task).insert(status.task_id.clone(), status.state.clone());
        true
    }

    /// `app` was just read: a patched task it shows in an earlier state keeps the patched one
    /// (the read began before the event); a patch the read caught up with, or whose task it no
    /// longer lists, is done.
    pub(crate) fn reconcile(&mut self, app: &mut App) {
        if self.by_task.is_empty() {
            return;
        }
        for task in &mut app.tasks {
            let Some(patched) = self.by_task.get(&task.id) else {
                continue;
            };
            let read = task.state.as_deref().unwrap_or("");
            if life_step(read) < life_step(patched) {
                task.state = Some(super::intern::intern(patched));
            } else {
                self.by_task.remove(&task.id);
            }
        }
    }

    /// Forgets the patches of tasks a full read did not list (they are gone).
    pub(crate) fn retain_listed<'a>(&mut self, apps: impl IntoIterator<Item = &'a App>) {
        if self.by_task.is_empty() {
            return;
        }
        let listed: std::collections::HashSet<&str> = apps
            .into_iter()
            .flat_map(|a| &a.tasks)
            .map(|t| t.id.as_str())
            .collect();
        self.by_task.retain(|id, _| listed.contains(id.as_str()));
    }

    /// Patches waiting for a read to confirm them.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_task.len()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::marathon::types::parse_app;

    fn sse(event: &str, data: serde_json::Value) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.to_string(),
            id: None,
        }
    }

    fn status(task: &str, state: &str) -> TaskStatus {
        TaskStatus {
            app_id: "/a".into(),
            task_id: task.into(),
            state: state.into(),
        }
    }

    fn app(states: &[(&str, &str)]) -> App {
        let tasks: Vec<_> = states
            .iter()
            .map(|(id, s)| json!({"id": id, "host": "198.18.2.1", "ports": [31000], "state": s}))
            .collect();
        parse_app(&json!({"id": "/a", "tasks": tasks})).unwrap()
    }

    fn states(app: &App) -> Vec<&str> {
        app.tasks
            .iter()
            .map(|t| t.state.as_deref().unwrap())
            .collect()
    }

    #[test]
    fn only_status_updates_with_app_task_and_state_are_taken() {
        let doc = json!({"eventType": "status_update_event", "appId": "/a", "taskId": "a.1",
                         "taskStatus": "TASK_KILLING", "host": "h", "ports": [1]});
        assert_eq!(
            task_status(&sse("status_update_event", doc.clone())),
            Some(status("a.1", "TASK_KILLING"))
        );
        assert_eq!(
            task_status(&sse("", doc.clone())),
            Some(status("a.1", "TASK_KILLING"))
        );
        assert_eq!(task_status(&sse("api_post_event", doc)), None);
        for doc in [
            json!({"eventType": "status_update_event", "appId": "/a", "taskId": "a.1"}),
            json!({"eventType": "status_update_event", "appId": "", "taskId": "a.1",
                   "taskStatus": "TASK_KILLED"}),
            json!({"eventType": "instance_changed_event", "appId": "/a", "taskId": "a.1",
                   "taskStatus": "TASK_KILLED"}),
            json!("not an object"),
        ] {
            assert_eq!(task_status(&sse("status_update_event", doc)), None);
        }
    }

    #[test]
    fn a_patch_moves_a_known_task_forward_only() {
        let mut patches = StatePatches::default();
        let mut a = app(&[("a.1", "TASK_RUNNING"), ("a.2", "TASK_STAGING")]);
        assert!(patches.apply(&mut a, &status("a.1", "TASK_KILLING")));
        assert!(patches.apply(&mut a, &status("a.2", "TASK_RUNNING")));
        assert_eq!(states(&a), ["TASK_KILLING", "TASK_RUNNING"]);
        // Older news, the same state, or a task the app does not have: nothing changes.
        assert!(!patches.apply(&mut a, &status("a.1", "TASK_RUNNING")));
        assert!(!patches.apply(&mut a, &status("a.2", "TASK_RUNNING")));
        assert!(!patches.apply(&mut a, &status("a.9", "TASK_KILLED")));
        assert_eq!(states(&a), ["TASK_KILLING", "TASK_RUNNING"]);
        assert_eq!(patches.len(), 2);
    }

    #[test]
    fn a_read_from_before_the_event_keeps_the_patch_a_later_one_confirms_it() {
        let mut patches = StatePatches::default();
        let mut a = app(&[("a.1", "TASK_RUNNING"), ("a.2", "TASK_RUNNING")]);
        patches.apply(&mut a, &status("a.1", "TASK_KILLING"));
        // A read that began before the kill.
        let mut stale = app(&[("a.1", "TASK_RUNNING"), ("a.2", "TASK_RUNNING")]);
        patches.reconcile(&mut stale);
        assert_eq!(states(&stale), ["TASK_KILLING", "TASK_RUNNING"]);
        assert_eq!(patches.len(), 1);
        // A read that saw the kill: the patch is done, later reads are taken as they are.
        let mut fresh = app(&[("a.1", "TASK_KILLED"), ("a.2", "TASK_RUNNING")]);
        patches.reconcile(&mut fresh);
        assert_eq!(states(&fresh), ["TASK_KILLED", "TASK_RUNNING"]);
        assert_eq!(patches.len(), 0);
    }

    #[test]
    fn a_full_read_without_the_task_ends_its_patch() {
        let mut patches = StatePatches::default();
        let mut a = app(&[("a.1", "TASK_RUNNING")]);
        patches.apply(&mut a, &status("a.1", "TASK_KILLING"));
        patches.retain_listed([&app(&[("a.1", "TASK_RUNNING")])]);
        assert_eq!(patches.len(), 1);
        patches.retain_listed([&app(&[("a.2", "TASK_RUNNING")])]);
        assert_eq!(patches.len(), 0);
    }
}
