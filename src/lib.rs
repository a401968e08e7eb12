//! socialtalent-sync keeps SocialTalent's user list in step with a company's identity provider:
//! it reads users from Okta, Microsoft Entra ID or an HR export, maps them to SocialTalent's SCIM
//! 2.0 users through configurable templates, plans creates, updates, deactivations and
//! reactivations against an embedded state, and carries the plan out under a rate limit.
//!
//! # Layout
//! - [`model`]: the IdP-neutral values of the pure core (users, reads, state records).
//! - [`config`]: the TOML configuration, raw then validated; secrets.
//! - [`mapping`]: the mapping language (minijinja), user → attributes. Pure.
//! - [`plan`]: the planner, (read, mapped users, state) → plan. Pure.
//! - [`source`]: the edges that read IdP users (`file`).
//! - [`scim`]: the edge that talks to SocialTalent (`wire` formats, `client`).
//! - [`net`]: the request limiter and the retry policy shared by every HTTP edge.
//! - [`progress`]: the progress heartbeat that feeds the watchdog and `/livez`.
//! - [`state`]: the sled state.
//! - [`executor`]: carries a plan out; the only code that writes to SocialTalent.
//! - [`holds`]: pending holds, carried from run to run until released or moot. Pure.
//! - [`sync`]: one reconciliation (`run_once`), shared by `sync` and the daemon.
//! - [`report`]: the JSON and text reports.
//! - [`control`]: the daemon's local control socket (commands served while it holds the state).
//! - [`cli`]: the command line and exit codes.
//! - [`version`]: what `--version` prints (version, git commit, state format).

#![deny(
    clippy::unwrap_used,
    clippy::panic,
    clippy::todo,
    clippy::unimplemented,
    clippy::await_holding_lock
)]
// Tests state their expectations with panics; the rule is for the program.
#![cfg_attr(test, allow(clippy::panic, clippy::unwrap_used))]

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod executor;
pub mod holds;
pub mod mapping;
pub mod model;
pub mod net;
pub mod observability;
pub mod plan;
pub mod progress;
pub mod report;
pub mod schedule;
pub mod scim;
pub mod source;
pub mod state;
pub mod status;
pub mod sync;
pub mod version;
pub mod writeback;
