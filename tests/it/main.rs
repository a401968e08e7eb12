//! The integration tests: one binary, one module per area (ripgrep's layout).
//! `support` starts the real SCIM peer (scim2-server) and holds shared helpers.

mod cli;
mod crash;
mod daemon;
mod docs;
mod e2e;
mod entra;
mod fake_graph_selftest;
mod fake_okta_selftest;
mod fake_onelogin_selftest;
mod faults;
mod group_changes;
mod kit;
mod okta;
mod onelogin;
mod readback;
mod scim_client;
mod secrets;
mod support;
mod trust;
