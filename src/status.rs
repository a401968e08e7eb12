//! What `status` shows: the state's counts, recent runs, held deactivations and failing users,
//! as one serialisable [`StatusReport`] built from the state, rendered as text by the CLI and
//! served as JSON by the daemon's `/status` (so `status` works while the daemon holds the state).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::model::IdpId;
use crate::state::{HeldEntry, RunRecord, State, StateError};

/// The status document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The state directory.
    pub state: String,
    /// Whether a state exists.
    pub initialised: bool,
    /// Provisioned users by status.
    pub users: UserCounts,
    /// The last runs, newest first.
    pub last_runs: Vec<RunRecord>,
    /// Deactivations held and still pending (until released with `approve`, or moot).
    pub held_deactivations: Vec<HeldEntry>,
    /// Users whose writes are failing.
    pub failing_users: Vec<FailingUser>,
    /// Managed attributes SocialTalent did not keep, with how many active users they concern
    /// (not sent again until their mapped value changes).
    #[serde(default)]
    pub not_kept: std::collections::BTreeMap<String, usize>,
}

/// Provisioned users by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCounts {
    /// Active accounts.
    pub active: usize,
    /// Deactivated accounts.
    pub deactivated: usize,
}

/// A user whose writes failed in the last runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailingUser {
    /// The IdP user.
    pub idp_id: IdpId,
    /// The user's label.
    #[serde(rename = "userName")]
    pub user_name: String,
    /// Failed runs in a row.
    pub consecutive_failures: u32,
    /// Whether the user is quarantined (skipped until a full run).
    pub quarantined: bool,
    /// The last error.
    pub last_error: String,
    /// When it last failed.
    pub last_failed_at: String,
}

impl StatusReport {
    /// The report of a state directory that does not exist yet.
    pub fn uninitialised(path: &std::path::Path) -> StatusReport {
        StatusReport {
            state: path.display().to_string(),
            initialised: false,
            users: UserCounts::default(),
            last_runs: Vec::new(),
            held_deactivations: Vec::new(),
            failing_users: Vec::new(),
            not_kept: std::collections::BTreeMap::new(),
        }
    }

    /// Reads the report from an open state.
    ///
    /// # Errors
    /// [`StateError`] when the state cannot be read.
    pub fn of(state: &State, quarantine_after: u32) -> Result<StatusReport, StateError> {
        let snapshot = state.snapshot()?;
        let runs = state.recent_runs(10)?;
        let active = snapshot.active_count();
        let mut not_kept = std::collections::BTreeMap::new();
        for record in snapshot
            .users
            .values()
            .filter(|record| record.status == crate::model::AccountStatus::Active)
        {
            for attribute in &record.not_kept {
                *not_kept.entry(attribute.clone()).or_insert(0) += 1;
            }
        }
        Ok(StatusReport {
            not_kept,
            state: state.path().display().to_string(),
            initialised: true,
            users: UserCounts {
                active,
                deactivated: snapshot.users.len() - active,
            },
            held_deactivations: state.pending_holds()?,
            last_runs: runs,
            failing_users: snapshot
                .failures
                .into_iter()
                .map(|(idp_id, failure)| FailingUser {
                    idp_id,
                    user_name: failure.label,
                    consecutive_failures: failure.consecutive,
                    quarantined: failure.consecutive >= quarantine_after,
                    last_error: failure.last_error,
                    last_failed_at: failure.last_failed_at,
                })
                .collect(),
        })
    }

    /// The text form of `status`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if !self.initialised {
            let _ = writeln!(out, "No state yet at {} (no sync has run).", self.state);
            return out;
        }
        let _ = writeln!(out, "State: {}", self.state);
        let _ = writeln!(
            out,
            "Users: {} active, {} deactivated",
            self.users.active, self.users.deactivated
        );
        out.push_str("\nLast runs (newest first):\n");
        if self.last_runs.is_empty() {
            out.push_str("  none\n");
        }
        for run in &self.last_runs {
            let s = run.summary;
            let _ = writeln!(
                out,
                "  {}  {:<6} {} {}: {} read; {} created, {} updated, {} deactivated, {} reactivated, {} held, {} skipped, {} failed{}",
                run.finished_at,
                run.outcome,
                run.source,
                if run.full { "full" } else { "incremental" },
                run.users_read,
                s.create,
                s.update,
                s.deactivate,
                s.reactivate,
                s.held,
                s.skipped,
                s.failed,
                run.error
                    .as_ref()
                    .map(|e| format!(" — {e}"))
                    .unwrap_or_default(),
            );
        }
        out.push_str(
            "\nHeld deactivations (pending until released with `socialtalent-sync approve`, or moot):\n",
        );
        if self.held_deactivations.is_empty() {
            out.push_str("  none\n");
        }
        for entry in &self.held_deactivations {
            let identity = if entry.idp_id.0.is_empty() {
                format!("account {}", entry.scim_id.as_deref().unwrap_or_default())
            } else {
                entry.idp_id.to_string()
            };
            let since = if entry.since.is_empty() {
                String::new()
            } else {
                format!(" — held since {}", entry.since)
            };
            let _ = writeln!(
                out,
                "  {} ({identity}): {}{since}",
                entry.user_name, entry.reason
            );
        }
        out.push_str("\nFailing users:\n");
        if self.failing_users.is_empty() {
            out.push_str("  none\n");
        }
        for user in &self.failing_users {
            let _ = writeln!(
                out,
                "  {} ({}): {} failed run(s) in a row{} — {}",
                user.user_name,
                user.idp_id,
                user.consecutive_failures,
                if user.quarantined {
                    ", QUARANTINED"
                } else {
                    ""
                },
                user.last_error
            );
        }
        out.push_str(
            "\nNot kept by SocialTalent (not sent again until the mapped value changes):\n",
        );
        if self.not_kept.is_empty() {
            out.push_str("  none\n");
        }
        for (attribute, users) in &self.not_kept {
            let _ = writeln!(
                out,
                "  {attribute}: {users} user(s) (does SocialTalent declare it? `check-config --connect` lists what it does not)"
            );
        }
        out
    }
}
