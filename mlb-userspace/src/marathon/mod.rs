//! Marathon: the REST and event-stream edge.
pub mod types;
