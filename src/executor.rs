//! The executor: the only code that writes to SocialTalent. It carries out a [`Plan`] wave by
//! wave (managers before their reports), concurrently within the client's limits, records each
//! confirmed write in the state at once, and goes on past per-user failures.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{DeactivateWith, UpdateWith};
use crate::model::{AccountStatus, Attributes, IdpId, Snapshot, attr};
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
/// `snapshot` is the state as the plan was made from it: a 409 never adopts an account it
/// gives to another IdP user, and the records whose attributes the plan replaces lose their
/// digest before anything is sent (see [`State::record_active`]). `on_done` is called once per
/// finished action (progress), in batches: the driving task counts them every 100 ms.
///
/// Each wave (managers before their reports) is carried out by at most `max_in_flight`
/// worker tasks on the runtime's threads. A worker takes the wave's next action, sends it,
/// records what SocialTalent confirmed in the state, notes the result in a shared table and
/// takes the next: no task is spawned per action and nothing goes back to the driving task
/// per action. Within a wave, actions start in the order of their users' IdP ids (see below);
/// a wave starts when the previous one has finished. If this future is dropped, the workers
/// are aborted (at an `.await`, so never between a confirmed write and its record).
pub async fn execute(
    client: &ScimClient,
    state: &State,
    settings: WriteSettings,
    plan: &Plan,
    snapshot: &Snapshot,
    cancel: &CancellationToken,
    on_done: &(dyn Fn() + Sync),
) -> Execution {
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
            results: vec![ActionResult::NotSent; plan.actions.len()],
            stopped: None,
        };
    }
    if let Err(error) = forget_replaced_digests(state, plan, snapshot) {
        let reason = ActionError::from(error).to_string();
        tracing::error!(message = "Stopping the run: the state cannot be written.", error = %reason);
        let not_sent = ActionError::NotSent(reason.clone()).to_string();
        let results = plan
            .actions
            .iter()
            .map(|action| match action.op.writes_target() {
                true => ActionResult::Failed {
                    error: not_sent.clone(),
                },
                false => ActionResult::NotSent,
            })
            .collect();
        return Execution {
            results,
            stopped: Some(reason),
        };
    }
    let known = snapshot
        .users
        .iter()
        .map(|(idp_id, record)| (record.scim_id.clone(), idp_id.clone()))
        .collect();
    let shared = Arc::new(Shared {
        client: client.clone(),
        state: state.clone(),
        settings,
        known,
        cancel: cancel.clone(),
        stopped: Mutex::new(None),
        results: Mutex::new(vec![ActionResult::NotSent; plan.actions.len()]),
        done: AtomicUsize::new(0),
    });
    let mut reported = 0;
    let mut report_progress = |shared: &Shared| {
        let done = shared.done.load(Ordering::Relaxed);
        for _ in reported..done {
            on_done();
        }
        reported = reported.max(done);
    };
    for wave in waves {
        // In the order of the users' IdP ids, the state's keys: the records are then written
        // in key order, and sled keeps the few tree nodes being filled in its cache instead of
        // paging a random node in for most writes (sled alone, 100,000 users' two records:
        // 15.2 → 4.7 µs per insert). Reversed, because workers pop from the end.
        let mut jobs: Vec<(usize, Action)> = plan
            .actions
            .iter()
            .enumerate()
            .filter(|(_, action)| action.op.writes_target() && action.wave == wave)
            .map(|(index, action)| (index, action.clone()))
            .collect();
        jobs.sort_unstable_by(|(_, a), (_, b)| b.idp_id.0.cmp(&a.idp_id.0));
        let workers = settings.max_in_flight.clamp(1, jobs.len().max(1));
        let queue = Arc::new(Mutex::new(jobs));
        let mut tasks = JoinSet::new();
        for _ in 0..workers {
            tasks.spawn(work(Arc::clone(&shared), Arc::clone(&queue)));
        }
        let mut progress = tokio::time::interval(PROGRESS_EVERY);
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                joined = tasks.join_next() => match joined {
                    Some(Ok(())) => {}
                    // A worker catches a panicking action; this is a bug in the worker itself.
                    // Its remaining actions are taken by the others.
                    Some(Err(join_error)) => tracing::error!(
                        message = "internal: an executor worker failed.",
                        error = %join_error
                    ),
                    None => break,
                },
                _ = progress.tick() => report_progress(&shared),
            }
        }
        // If every worker failed, actions are left behind: not sent.
        let left: Vec<(usize, Action)> = std::mem::take(&mut *lock(&queue));
        for (index, action) in left {
            let error = ActionError::Refused("internal: the executor stopped before it".into());
            shared.finish(index, &action, Err(error));
        }
        report_progress(&shared);
    }
    let results = std::mem::take(&mut *lock(&shared.results));
    let stopped = lock(&shared.stopped).clone();
    Execution { results, stopped }
}

/// Drops the digest of every record whose attributes an action of the plan replaces, before
/// anything is sent (see [`State::record_active`]). A first sync has none to drop.
fn forget_replaced_digests(
    state: &State,
    plan: &Plan,
    snapshot: &Snapshot,
) -> Result<(), StateError> {
    for action in &plan.actions {
        let replaces = matches!(
            action.op,
            Op::Create | Op::Adopt | Op::Update | Op::Reactivate
        );
        let has_digest = snapshot
            .users
            .get(&action.idp_id)
            .is_some_and(|record| record.digest.is_some());
        if replaces && has_digest {
            state.forget_digest(&action.idp_id)?;
        }
    }
    Ok(())
}

/// How often the driving task reports finished actions to `on_done`.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// What every worker shares.
struct Shared {
    client: ScimClient,
    state: State,
    settings: WriteSettings,
    known: HashMap<String, IdpId>,
    cancel: CancellationToken,
    /// Why the run stopped early (a failure that is not about one user), once it has.
    stopped: Mutex<Option<String>>,
    /// One result per action of the plan.
    results: Mutex<Vec<ActionResult>>,
    /// Actions finished so far (progress).
    done: AtomicUsize,
}

/// Locks a mutex of the executor's; a worker that panicked holding it left nothing half-done
/// (each guarded value is replaced whole), so a poisoned lock is used as it is.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A worker: takes the wave's next action until none is left.
async fn work(shared: Arc<Shared>, queue: Arc<Mutex<Vec<(usize, Action)>>>) {
    loop {
        let Some((index, action)) = lock(&queue).pop() else {
            return;
        };
        // A failure that is not about one user (bad credentials, target down) stops the run:
        // the remaining actions are not sent, and nobody's failure count goes up for it.
        if shared.cancel.is_cancelled() {
            lock(&shared.stopped).get_or_insert_with(|| "shutting down".to_owned());
        }
        let stopped = lock(&shared.stopped).clone();
        let result = match stopped {
            Some(reason) => Err(ActionError::NotSent(reason)),
            None => AssertUnwindSafe(carry_out(&shared, &action))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    Err(ActionError::Refused(
                        "internal: carrying out the action panicked".into(),
                    ))
                }),
        };
        shared.finish(index, &action, result);
    }
}

impl Shared {
    /// Records the outcome of the action at `index`: a systemic failure stops the run, a
    /// per-user one counts towards the user's quarantine.
    fn finish(&self, index: usize, action: &Action, result: Result<Done, ActionError>) {
        let result = match result {
            Ok((note, scim_id)) => ActionResult::Ok { note, scim_id },
            Err(error) => {
                let message = error.to_string();
                if error.is_systemic() {
                    let mut stopped = lock(&self.stopped);
                    if stopped.is_none() {
                        tracing::error!(
                            message = "Stopping the run: SocialTalent cannot be used.",
                            error = %message
                        );
                        *stopped = Some(message.clone());
                    }
                } else if !matches!(error, ActionError::NotSent(_)) {
                    note_failure(&self.state, self.settings, action, &message);
                }
                ActionResult::Failed { error: message }
            }
        };
        lock(&self.results)[index] = result;
        self.done.fetch_add(1, Ordering::Relaxed);
    }
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

/// Records that SocialTalent confirmed `attributes` for the active account `scim_id` (a
/// create, adoption, update or reactivation).
fn record_active(
    state: &State,
    action: &Action,
    scim_id: &str,
    attributes: &Attributes,
) -> Result<(), StateError> {
    let user_name = attributes
        .get(attr::USER_NAME)
        .and_then(Value::as_str)
        .unwrap_or(&action.user_name);
    state.record_active(
        &action.idp_id,
        scim_id,
        user_name,
        attributes,
        action.digest,
    )
}

/// One action: send it, and record what SocialTalent confirmed.
async fn carry_out(shared: &Shared, action: &Action) -> Result<Done, ActionError> {
    let Shared {
        client,
        state,
        settings,
        known,
        ..
    } = shared;
    let settings = *settings;
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
                send_update(client, settings, action, scim_id, attributes).await?;
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
            match send_update(client, settings, action, scim_id, attributes).await {
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
    attributes: &Attributes,
    known: &HashMap<String, IdpId>,
) -> Result<Done, ActionError> {
    let extension = client.extension_schema();
    let document = wire::UserDocument::new(attributes, extension, true);
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
                    let changes = diff(&existing.attributes, attributes);
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

/// The action's desired attributes.
fn desired(action: &Action) -> Result<&Attributes, ActionError> {
    action
        .attributes
        .as_deref()
        .ok_or_else(|| ActionError::Refused("internal: the action carries no attributes".into()))
}

fn scim_id(action: &Action) -> Result<&str, ActionError> {
    action.scim_id.as_deref().ok_or_else(|| {
        ActionError::Refused("internal: the action carries no SocialTalent id".into())
    })
}
