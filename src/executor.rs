//! The executor: the only code that writes to SocialTalent. It carries out a [`Plan`] wave by
//! wave (managers before their reports), concurrently within the client's limits, records each
//! confirmed write in the state at once, and goes on past per-user failures.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{DeactivateWith, UpdateWith};
use crate::model::{AccountStatus, Attributes, IdpId, UserRecord, attr};
use crate::plan::{Action, Op, Plan, diff};
use crate::scim::client::{ScimClient, ScimError};
use crate::scim::wire;
use crate::state::{State, StateError, now_rfc3339};

/// How the executor sends writes.
#[derive(Debug, Clone, Copy)]
pub struct WriteSettings {
    /// `PUT` or `PATCH` for updates.
    pub update_with: UpdateWith,
    /// `DELETE` or `PATCH` for deactivations.
    pub deactivate_with: DeactivateWith,
    /// Concurrent actions.
    pub max_in_flight: usize,
    /// Consecutive failed runs before a user is quarantined.
    pub quarantine_after: u32,
}

/// The result of one action.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionResult {
    /// SocialTalent confirmed it (and the state recorded it).
    Ok {
        /// What else happened (for example an adoption after a 409).
        note: Option<String>,
        /// The SocialTalent id the user now has.
        scim_id: Option<String>,
    },
    /// It failed; the user is retried on the next run.
    Failed {
        /// Why.
        error: String,
    },
    /// Nothing to send (skips, held deactivations).
    NotSent,
}

/// What carrying out a plan produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Execution {
    /// One result per action, in the plan's order.
    pub results: Vec<ActionResult>,
    /// Why the run stopped early (bad credentials, target unreachable), if it did.
    pub stopped: Option<String>,
}

/// Carries out the plan; returns one result per action, in the plan's order.
///
/// `known_scim_ids` maps SocialTalent ids the state already gives to an IdP user, so that a
/// 409 never adopts another person's account. `on_done` is called after each action (progress).
///
/// Each action runs as its own tokio task, at most `max_in_flight` at a time, so that building
/// documents, reading answers and recording successes spread over the runtime's threads instead
/// of queueing on the one task that drives the run (which made creates CPU-bound at a third of
/// what the HTTP stack can do). The tasks own what they use: the client, the state and the known
/// ids are shared, and each action is cloned into its task. Within a wave, actions start in the
/// plan's order; a wave starts when the previous one has finished. If this future is dropped,
/// the tasks still running are aborted (at an `.await`, so never between a confirmed write and
/// its record).
pub async fn execute(
    client: &ScimClient,
    state: &State,
    settings: WriteSettings,
    plan: &Plan,
    known_scim_ids: &HashMap<String, IdpId>,
    cancel: &CancellationToken,
    on_done: &(dyn Fn() + Sync),
) -> Execution {
    let mut results = vec![ActionResult::NotSent; plan.actions.len()];
    let mut waves: Vec<u32> = plan
        .actions
        .iter()
        .filter(|a| a.op.writes_target())
        .map(|a| a.wave)
        .collect();
    waves.sort_unstable();
    waves.dedup();
    if waves.is_empty() {
        return Execution {
            results,
            stopped: None,
        };
    }
    let shared = Arc::new(Shared {
        client: client.clone(),
        state: state.clone(),
        settings,
        known: known_scim_ids.clone(),
    });
    let max_in_flight = settings.max_in_flight.max(1);
    // A failure that is not about one user (bad credentials, target down) stops the run: the
    // remaining actions are not sent, and nobody's failure count goes up for it.
    let mut stopped: Option<String> = None;
    for wave in waves {
        let mut work = plan
            .actions
            .iter()
            .enumerate()
            .filter(|(_, action)| action.op.writes_target() && action.wave == wave);
        let mut tasks = JoinSet::new();
        let mut running: HashMap<tokio::task::Id, usize> = HashMap::new();
        loop {
            while tasks.len() < max_in_flight {
                let Some((index, action)) = work.next() else {
                    break;
                };
                if cancel.is_cancelled() {
                    stopped.get_or_insert_with(|| "shutting down".to_owned());
                }
                if let Some(reason) = &stopped {
                    let error = ActionError::NotSent(reason.clone());
                    finish(
                        &mut results,
                        &mut stopped,
                        state,
                        settings,
                        action,
                        index,
                        Err(error),
                    );
                    on_done();
                    continue;
                }
                let handle = tasks.spawn(carry_out(Arc::clone(&shared), action.clone()));
                running.insert(handle.id(), index);
            }
            let Some(joined) = tasks.join_next_with_id().await else {
                break;
            };
            let (id, result) = match joined {
                Ok((id, result)) => (id, result),
                Err(join_error) => (
                    join_error.id(),
                    Err(ActionError::Refused(format!(
                        "internal: the action's task failed: {join_error}"
                    ))),
                ),
            };
            if let Some(index) = running.remove(&id) {
                let action = &plan.actions[index];
                finish(
                    &mut results,
                    &mut stopped,
                    state,
                    settings,
                    action,
                    index,
                    result,
                );
                on_done();
            }
        }
    }
    Execution { results, stopped }
}

/// What every action's task shares.
struct Shared {
    client: ScimClient,
    state: State,
    settings: WriteSettings,
    known: HashMap<String, IdpId>,
}

/// Records the outcome of the action at `index`: a systemic failure stops the run, a per-user
/// one counts towards the user's quarantine.
fn finish(
    results: &mut [ActionResult],
    stopped: &mut Option<String>,
    state: &State,
    settings: WriteSettings,
    action: &Action,
    index: usize,
    result: Result<Done, ActionError>,
) {
    results[index] = match result {
        Ok((note, scim_id)) => ActionResult::Ok { note, scim_id },
        Err(error) => {
            let message = error.to_string();
            if error.is_systemic() {
                if stopped.is_none() {
                    tracing::error!(
                        message = "Stopping the run: SocialTalent cannot be used.",
                        error = %message
                    );
                    *stopped = Some(message.clone());
                }
            } else if !matches!(error, ActionError::NotSent(_)) {
                note_failure(state, settings, action, &message);
            }
            ActionResult::Failed { error: message }
        }
    };
}

/// What went wrong with one action.
#[derive(Debug, thiserror::Error)]
enum ActionError {
    #[error(transparent)]
    Scim(#[from] ScimError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0}")]
    Refused(String),
    #[error("not sent: the run stopped after an earlier error ({0})")]
    NotSent(String),
}

impl ActionError {
    /// Whether the error is about SocialTalent as a whole rather than this user.
    fn is_systemic(&self) -> bool {
        matches!(
            self,
            ActionError::Scim(
                ScimError::Unauthorized { .. }
                    | ScimError::Transport { .. }
                    | ScimError::Unavailable { .. }
            ) | ActionError::State(_)
        )
    }
}

type Done = (Option<String>, Option<String>);

/// One action, in its own task; the action's attributes move into the state's record.
async fn carry_out(shared: Arc<Shared>, mut action: Action) -> Result<Done, ActionError> {
    let Shared {
        client,
        state,
        settings,
        known,
    } = &*shared;
    let settings = *settings;
    let action = &mut action;
    let extension = client.extension_schema();
    match action.op {
        Op::Create => {
            let attributes = desired(action)?;
            create_or_adopt(client, state, settings, action, attributes, known).await
        }
        Op::Adopt => {
            // An account found by the read-back: take it over, then update it if it differs.
            let attributes = desired(action)?;
            let scim_id = scim_id(action)?;
            if !action.changes.is_empty() {
                send_update(client, settings, action, scim_id, &attributes).await?;
            }
            record_active(state, action, scim_id, attributes)?;
            Ok((
                Some("adopted an existing account".into()),
                Some(scim_id.to_owned()),
            ))
        }
        Op::Update | Op::Reactivate => {
            let attributes = desired(action)?;
            let scim_id = scim_id(action)?;
            match send_update(client, settings, action, scim_id, &attributes).await {
                Ok(()) => {
                    record_active(state, action, scim_id, attributes)?;
                    Ok((None, Some(scim_id.to_owned())))
                }
                Err(ScimError::NotFound { .. }) => {
                    // The account vanished in SocialTalent: create it again. A crash after an
                    // earlier re-creation may have left one that the state does not know, so a
                    // 409 adopts it like any create.
                    let (note, scim_id) =
                        create_or_adopt(client, state, settings, action, attributes, known).await?;
                    Ok((
                        Some(note.unwrap_or_else(|| {
                            "the account had vanished in SocialTalent; created again".into()
                        })),
                        scim_id,
                    ))
                }
                Err(error) => Err(error.into()),
            }
        }
        Op::Deactivate => {
            let scim_id = scim_id(action)?;
            let sent = match settings.deactivate_with {
                DeactivateWith::Delete => client.delete(scim_id).await,
                DeactivateWith::Patch => {
                    client
                        .patch(scim_id, &wire::patch_document(&[], extension, Some(false)))
                        .await
                }
            };
            let note = match sent {
                Ok(()) => None,
                Err(ScimError::NotFound { .. }) => {
                    Some("the account was already gone in SocialTalent".to_owned())
                }
                Err(error) => return Err(error.into()),
            };
            // Orphans (accounts no IdP user has) have no record to update.
            if let Some(mut record) = state.user(&action.idp_id)? {
                record.status = AccountStatus::Deactivated;
                record.updated_at = now_rfc3339();
                state.record_success(&action.idp_id, &record)?;
            }
            Ok((note, Some(scim_id.to_owned())))
        }
        Op::Held | Op::Skip | Op::Writeback => Ok((None, None)),
    }
}

/// Sends an update (or a reactivation) the configured way: a `PUT` of the whole document,
/// keeping what the read-back saw beyond our attributes, or a `PATCH` of the changes.
async fn send_update(
    client: &ScimClient,
    settings: WriteSettings,
    action: &Action,
    scim_id: &str,
    attributes: &Attributes,
) -> Result<(), ScimError> {
    let extension = client.extension_schema();
    match settings.update_with {
        UpdateWith::Put => {
            let document = match &action.keep {
                Some(kept) => wire::user_document_keeping(
                    attributes,
                    extension,
                    true,
                    &kept.attributes,
                    &kept.extras,
                ),
                None => wire::user_document(attributes, extension, true),
            };
            client.replace(scim_id, &document).await
        }
        UpdateWith::Patch => {
            let reactivate = action.op == Op::Reactivate
                && !action
                    .changes
                    .iter()
                    .any(|change| change.attribute == "active");
            let body = wire::patch_document(&action.changes, extension, reactivate.then_some(true));
            client.patch(scim_id, &body).await
        }
    }
}

async fn create_or_adopt(
    client: &ScimClient,
    state: &State,
    settings: WriteSettings,
    action: &Action,
    attributes: Attributes,
    known: &HashMap<String, IdpId>,
) -> Result<Done, ActionError> {
    let extension = client.extension_schema();
    let document = wire::UserDocument::new(&attributes, extension, true);
    match client.create(&document).await {
        Ok(created_id) => {
            record_active(state, action, &created_id, attributes)?;
            Ok((None, Some(created_id)))
        }
        Err(ScimError::Conflict { detail }) => {
            // The account exists: adopt it instead of creating a duplicate.
            let existing = client
                .find_by_user_name(&action.user_name)
                .await?
                .ok_or_else(|| {
                    ActionError::Refused(format!(
                        "SocialTalent reports a conflict ({detail}) but has no account with userName {}",
                        action.user_name
                    ))
                })?;
            if let Some(owner) = known
                .get(&existing.id)
                .filter(|owner| **owner != action.idp_id)
            {
                return Err(ActionError::Refused(format!(
                    "the account with userName {} belongs to IdP user {owner}; not adopted",
                    action.user_name
                )));
            }
            match settings.update_with {
                UpdateWith::Put => client.replace(&existing.id, &document).await?,
                UpdateWith::Patch => {
                    let changes = diff(&existing.attributes, &attributes);
                    let changes: Vec<_> = changes
                        .into_iter()
                        .filter(|change| !change.to.is_null())
                        .collect();
                    let body = wire::patch_document(&changes, extension, Some(true));
                    client.patch(&existing.id, &body).await?;
                }
            }
            record_active(state, action, &existing.id, attributes)?;
            Ok((
                Some("an account with this userName existed; adopted and updated".into()),
                Some(existing.id),
            ))
        }
        Err(error) => Err(error.into()),
    }
}

fn record_active(
    state: &State,
    action: &Action,
    scim_id: &str,
    attributes: Attributes,
) -> Result<(), StateError> {
    let user_name = attributes
        .get(attr::USER_NAME)
        .and_then(Value::as_str)
        .unwrap_or(&action.user_name)
        .to_owned();
    state.record_success(
        &action.idp_id,
        &UserRecord {
            scim_id: scim_id.to_owned(),
            user_name,
            pushed: attributes,
            status: AccountStatus::Active,
            updated_at: now_rfc3339(),
            digest: action.digest,
            pushed_digest: None,
        },
    )
}

fn note_failure(state: &State, settings: WriteSettings, action: &Action, error: &str) {
    tracing::warn!(
        message = "SocialTalent write failed.",
        op = ?action.op,
        user = %action.user_name,
        idp_id = %action.idp_id,
        %error
    );
    match state.record_failure(&action.idp_id, &action.user_name, error) {
        Ok(count) if count >= settings.quarantine_after => tracing::warn!(
            message = "User quarantined after repeated failures; retried on full runs.",
            user = %action.user_name,
            idp_id = %action.idp_id,
            failures = count
        ),
        Ok(_) => {}
        Err(state_error) => tracing::error!(
            message = "Cannot record a failure in the state.",
            idp_id = %action.idp_id,
            error = %state_error
        ),
    }
}

/// Takes the action's desired attributes (the action is the task's own copy).
fn desired(action: &mut Action) -> Result<Attributes, ActionError> {
    action
        .attributes
        .take()
        .ok_or_else(|| ActionError::Refused("internal: the action carries no attributes".into()))
}

fn scim_id(action: &Action) -> Result<&str, ActionError> {
    action.scim_id.as_deref().ok_or_else(|| {
        ActionError::Refused("internal: the action carries no SocialTalent id".into())
    })
}
