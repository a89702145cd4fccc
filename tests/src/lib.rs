//! mlb's integration-test helpers: the Marathon simulator (and, later, network namespaces and
//! packet builders).

pub mod marathon_sim;
