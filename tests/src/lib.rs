//! Helpers for mlb's integration tests: network namespaces and veth links ([`netns`]), a packet
//! builder for BPF_PROG_TEST_RUN fixtures ([`packet`]), privilege checks ([`privileges`]), the
//! Marathon simulator ([`marathon_sim`]), the TCP/UDP load-balancing lab ([`l4_lab`]), an
//! `mlb` agent watching Marathon with clients to check its traffic ([`agent`]), and headless
//! Chromium for the pages mlb serves ([`chromium`]).
pub mod agent;
pub mod chromium;
pub mod ecmp_lab;
pub mod l4_lab;
pub mod marathon_sim;
pub mod mlb_bin;
pub mod netns;
pub mod packet;
pub mod privileges;
