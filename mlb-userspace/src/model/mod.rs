//! The model: pure functions from Marathon apps (or a static config) to the [`DesiredState`] the
//! dataplanes implement. No async, no I/O, no clock reads: everything here is table-tested.
pub mod state;

pub use state::*;
