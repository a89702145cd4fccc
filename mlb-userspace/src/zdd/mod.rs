//! `mlb zdd`: marathon-lb's blue/green deployment (`zdd.py`), its algorithm, flags and exit codes,
//! reading the load balancers' stats CSV (mlb's or HAProxy's).
//!
//! The new colour is launched next to the old one with zdd's labels; mlb merges both into one
//! backend and drains old tasks as new ones become healthy ([`crate::model`]); zdd kills the old
//! tasks every load balancer shows drained (MAINT, no session), grows the new app, and deletes
//! the old one at the end. [`plan`] holds the decisions (pure), [`run`] the driver.
pub mod plan;
pub mod run;

/// Why a zdd run stopped, with zdd.py's exit code for each.
#[derive(Debug, thiserror::Error)]
pub enum ZddError {
    #[error("declined at the prompt")]
    Declined,
    #[error("deployment in progress: {0}")]
    InProgress(String),
    #[error("invalid arguments: {0}")]
    InvalidArg(String),
    #[error("missing field: {0}")]
    MissingField(String),
    #[error("load balancer {url}: {reason}")]
    MarathonLb { url: String, reason: String },
    #[error("Marathon: {0}")]
    Marathon(String),
    #[error("creating the app: {0}")]
    AppCreate(String),
    #[error("deleting the app: {0}")]
    AppDelete(String),
    #[error("scaling: {0}")]
    AppScale(String),
    #[error("pre-kill hook: {0}")]
    PreKillHook(String),
    #[error("reading {path}: {reason}")]
    Input { path: String, reason: String },
}

impl ZddError {
    /// zdd.py's exit code (`zdd_exceptions.py`).
    pub fn exit_code(&self) -> i32 {
        match self {
            ZddError::Declined => 1,
            ZddError::InProgress(_) | ZddError::PreKillHook(_) | ZddError::Input { .. } => 2,
            ZddError::InvalidArg(_) => 3,
            ZddError::MissingField(_) => 4,
            ZddError::MarathonLb { .. } => 5,
            ZddError::Marathon(_) => 6,
            ZddError::AppCreate(_) => 7,
            ZddError::AppDelete(_) => 8,
            ZddError::AppScale(_) => 9,
        }
    }
}

#[cfg(test)]
mod tests;
