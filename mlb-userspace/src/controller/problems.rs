//! Rejections and warnings logged once each, not at every recompute.
use std::collections::{BTreeMap, BTreeSet};

use tracing::{error, warn};

use crate::model::DesiredState;

/// The problem lines already logged, by app id.
#[derive(Debug, Default)]
pub(super) struct ProblemLog {
    logged: BTreeMap<String, BTreeSet<String>>,
}

impl ProblemLog {
    /// Logs each rejection and warning of `state` once (again only after it went away and came
    /// back), looking at the apps in `scope` only, or at every app.
    pub fn log(&mut self, state: &DesiredState, scope: Option<&BTreeSet<String>>) {
        let in_scope = |app_id: &str| scope.is_none_or(|ids| ids.contains(app_id));
        let rejected = state
            .rejected
            .iter()
            .filter(|r| in_scope(&r.app_id))
            .map(|r| {
                let line = problem_line(&r.app_id, r.port_index, " not exposed: ", &r.reason);
                (&r.app_id, line, true)
            });
        let warnings = state
            .warnings
            .iter()
            .filter(|w| in_scope(&w.app_id))
            .map(|w| {
                let line = problem_line(&w.app_id, w.port_index, ": ", &w.message);
                (&w.app_id, line, false)
            });
        let mut now: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (app_id, line, is_error) in rejected.chain(warnings) {
            if !self.logged.get(app_id).is_some_and(|l| l.contains(&line)) {
                if is_error {
                    error!("{line}");
                } else {
                    warn!("{line}");
                }
            }
            now.entry(app_id.clone()).or_default().insert(line);
        }
        match scope {
            None => self.logged = now,
            Some(ids) => {
                for id in ids {
                    match now.remove(id) {
                        Some(lines) => self.logged.insert(id.clone(), lines),
                        None => self.logged.remove(id),
                    };
                }
            }
        }
    }
}

/// `app /x port index 1<infix><message>`: one log line per problem of an app (or one port).
fn problem_line(
    app_id: &str,
    port_index: Option<usize>,
    infix: &str,
    message: &impl std::fmt::Display,
) -> String {
    let port = port_index
        .map(|i| format!(" port index {i}"))
        .unwrap_or_default();
    format!("app {app_id}{port}{infix}{message}")
}
