//! The executor: the only code that writes to SocialTalent. It carries out a [`Plan`] wave by
//! wave (managers before their reports), concurrently within the client's limits, records each
//! confirmed write in the state (in small batches, within 100 ms), and goes on past
//! per-user failures.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{DeactivateWith, Protect, UpdateWith};
use crate::model::{AccountStatus, Attributes, IdpId, Keeping, Snapshot, TargetUser, attr};
use crate::plan::{Action, Change, Op, Plan, diff};
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
        /// Managed attributes SocialTalent did not keep (see [`crate::model::UserRecord::not_kept`]).
        not_kept: Vec<String>,
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
/// gives to another IdP user (nor one `guards` refuse), and the records whose attributes the plan replaces lose their
/// digest before anything is sent (see [`State::record_active`]). `on_done` is called once per
/// finished action (progress), in batches: the driving task counts them every 100 ms.
///
/// Each wave (managers before their reports) is carried out by at most `max_in_flight`
/// worker tasks on the runtime's threads. A worker takes the wave's next action, sends it,
/// queues what SocialTalent confirmed and takes the next: no task is spawned per action and
/// nothing goes back to the driving task per action. The queue is recorded in the state by
/// one thread at a time, in key order, by the worker that fills it to 64 writes, by
/// the driving task every 100 ms, and at the end of each wave; an action's result
/// is `Ok` only once its record is written. Within a wave, actions start in the order of
/// their users' IdP ids (see below); a wave starts when the previous one has finished and its
/// writes are recorded. If this future is dropped, the workers are aborted (at an `.await`)
/// and every write already confirmed is recorded before the drop returns.
#[allow(clippy::too_many_arguments)] // Each is a separate input of the run; a struct would only rename them.
pub async fn execute(
    client: &ScimClient,
    state: &State,
    settings: WriteSettings,
    plan: &Plan,
    snapshot: &Snapshot,
    guards: &Guards,
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
        guards: guards.clone(),
        cancel: cancel.clone(),
        stopped: Mutex::new(None),
        results: Mutex::new(vec![ActionResult::NotSent; plan.actions.len()]),
        done: AtomicUsize::new(0),
        pending: Mutex::new(Vec::new()),
        recording: Mutex::new(()),
        abandoned: AtomicBool::new(false),
    });
    // Dropped with this future (the daemon gives up on a run after its shutdown grace), the
    // guard records every write already confirmed.
    let _settle = Settle(&shared);
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
        // in (nearly) key order, and sled keeps the few tree nodes being filled in its cache
        // instead of paging a random node in for most writes (sled alone, 100,000 users' two
        // records: 15.2 → 4.7 µs per insert). Reversed, because workers pop from the end.
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
                _ = progress.tick() => {
                    shared.record_pending(Wait::No);
                    report_progress(&shared);
                }
            }
        }
        shared.record_pending(Wait::Yes);
        // If every worker failed, actions are left behind: not sent.
        let left: Vec<(usize, Action)> = std::mem::take(&mut *lock(&queue));
        for (index, action) in left {
            let error = ActionError::Refused("internal: the executor stopped before it".into());
            shared.finish(index, &action, Err(error), Vec::new());
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
    guards: Guards,
    cancel: CancellationToken,
    /// Why the run stopped early (a failure that is not about one user), once it has.
    stopped: Mutex<Option<String>>,
    /// One result per action of the plan.
    results: Mutex<Vec<ActionResult>>,
    /// Actions finished so far (progress).
    done: AtomicUsize,
    /// Confirmed writes waiting to be recorded in the state.
    pending: Mutex<Vec<Confirmed>>,
    /// Held by whoever records the pending writes: one thread at a time writes them.
    recording: Mutex<()>,
    /// Set when the execution is dropped: a worker still running records what it confirms.
    abandoned: AtomicBool,
}

/// How many confirmed writes a worker lets wait before it records them (the driving task also
/// records them every [`PROGRESS_EVERY`] and at the end of each wave).
///
/// sled's inserts into the same trees from both runtime threads at once contend, and between
/// requests each finds little of the tree in the CPU's caches: recorded one by one as they were
/// confirmed, the two writes of a create cost ≈ 28 µs of CPU; in key-sorted batches on one
/// thread ≈ 11 µs (`BENCHMARKS.md`). A batch takes ≈ 0.7 ms.
const RECORD_BATCH: usize = 64;

/// A write SocialTalent confirmed, waiting to be recorded.
struct Confirmed {
    index: usize,
    action: Action,
    done: Done,
    record: Record,
}

/// What the state must record for a confirmed action.
enum Record {
    /// The user's account `scim_id` is active with the action's attributes; `keeping` says
    /// which of them SocialTalent did not keep, or is still to confirm.
    Active { scim_id: String, keeping: Keeping },
    /// The user's account is deactivated.
    Deactivated,
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
        match result {
            Ok((done, Some(record))) => shared.confirm(Confirmed {
                index,
                action,
                done,
                record,
            }),
            Ok((done, None)) => shared.finish(index, &action, Ok(done), Vec::new()),
            Err(error) => shared.finish(index, &action, Err(error), Vec::new()),
        }
    }
}

/// Whether [`Shared::record_pending`] waits for a worker that is recording.
#[derive(Clone, Copy, PartialEq)]
enum Wait {
    Yes,
    No,
}

/// Records the pending writes when the execution ends, however it ends.
struct Settle<'a>(&'a Shared);

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.0.abandoned.store(true, Ordering::SeqCst);
        self.0.record_pending(Wait::Yes);
    }
}

impl Shared {
    /// Queues a confirmed write to be recorded; records the queue when it is full (or when the
    /// execution was dropped meanwhile).
    fn confirm(&self, confirmed: Confirmed) {
        let waiting = {
            let mut pending = lock(&self.pending);
            pending.push(confirmed);
            pending.len()
        };
        if self.abandoned.load(Ordering::SeqCst) {
            self.record_pending(Wait::Yes);
        } else if waiting >= RECORD_BATCH {
            self.record_pending(Wait::No);
        }
    }

    /// Records the pending confirmed writes in the state, in key order, and notes their
    /// results: `Ok` once recorded. With [`Wait::No`] it leaves them to the thread already
    /// recording, if one is.
    fn record_pending(&self, wait: Wait) {
        let _recording = match wait {
            Wait::Yes => lock(&self.recording),
            Wait::No => match self.recording.try_lock() {
                Ok(guard) => guard,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            },
        };
        loop {
            let mut batch = std::mem::take(&mut *lock(&self.pending));
            if batch.is_empty() {
                return;
            }
            batch.sort_unstable_by(|a, b| a.action.idp_id.0.cmp(&b.action.idp_id.0));
            for Confirmed {
                index,
                action,
                done,
                record,
            } in batch
            {
                let recorded = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    record_confirmed(&self.state, &action, &record)
                }))
                .unwrap_or_else(|_| {
                    Err(ActionError::Refused(
                        "internal: recording the action in the state panicked".into(),
                    ))
                });
                let not_kept = match record {
                    Record::Active { keeping, .. } => keeping.not_kept,
                    Record::Deactivated => Vec::new(),
                };
                self.finish(index, &action, recorded.map(|()| done), not_kept);
            }
        }
    }

    /// Records the outcome of the action at `index`: a systemic failure stops the run, a
    /// per-user one counts towards the user's quarantine.
    fn finish(
        &self,
        index: usize,
        action: &Action,
        result: Result<Done, ActionError>,
        not_kept: Vec<String>,
    ) {
        let result = match result {
            Ok((note, scim_id)) => ActionResult::Ok {
                note,
                scim_id,
                not_kept,
            },
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

/// What a finished action reports: a note (for example an adoption after a 409) and the
/// SocialTalent id the user now has.
type Done = (Option<String>, Option<String>);

/// What SocialTalent confirmed for an action, and what the state must record of it (nothing
/// for an action that sends nothing).
type Sent = (Done, Option<Record>);

/// Records a confirmed action in the state.
fn record_confirmed(state: &State, action: &Action, record: &Record) -> Result<(), ActionError> {
    match record {
        Record::Active { scim_id, keeping } => {
            let attributes = desired(action)?;
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
                keeping,
            )?;
        }
        Record::Deactivated => {
            // Orphans (accounts no IdP user has) have no record to update.
            if let Some(mut user) = state.user(&action.idp_id)? {
                user.status = AccountStatus::Deactivated;
                user.updated_at = now_rfc3339();
                state.record_success(&action.idp_id, &user)?;
            }
        }
    }
    Ok(())
}

/// One action: send it; returns what SocialTalent confirmed, to be recorded.
async fn carry_out(shared: &Shared, action: &Action) -> Result<Sent, ActionError> {
    let Shared {
        client, settings, ..
    } = shared;
    let settings = *settings;
    let extension = client.extension_schema();
    match action.op {
        Op::Create => {
            let attributes = desired(action)?;
            create_or_adopt(shared, action, attributes).await
        }
        Op::Adopt => {
            // An account found by the read-back: take it over, then update it if it differs.
            let attributes = desired(action)?;
            let scim_id = scim_id(action)?;
            let keeping = if action.changes.is_empty() {
                action.keeping.clone()
            } else {
                let answered = send_update(shared, scim_id, &action.changes, None).await?;
                judged(
                    answered.as_ref(),
                    attributes,
                    &action.changes,
                    &action.keeping,
                )
            };
            Ok(confirmed(
                Some("adopted an existing account".into()),
                scim_id,
                keeping,
            ))
        }
        Op::Update | Op::Reactivate => {
            let attributes = desired(action)?;
            let scim_id = scim_id(action)?;
            // Only a rehire (inactive → active in the IdP) makes the account active again; an
            // update leaves `active` as SocialTalent holds it (an account deactivated there by
            // hand stays so).
            let active = (action.op == Op::Reactivate).then_some(true);
            match send_update(shared, scim_id, &action.changes, active).await {
                Ok(answered) => Ok(confirmed(
                    None,
                    scim_id,
                    judged(
                        answered.as_ref(),
                        attributes,
                        &action.changes,
                        &action.keeping,
                    ),
                )),
                Err(ScimError::NotFound { .. }) => {
                    // The account vanished in SocialTalent: create it again. A crash after an
                    // earlier re-creation may have left one that the state does not know, so a
                    // 409 adopts it like any create.
                    let ((note, scim_id), record) =
                        create_or_adopt(shared, action, attributes).await?;
                    let note = note.unwrap_or_else(|| {
                        "the account had vanished in SocialTalent; created again".into()
                    });
                    Ok(((Some(note), scim_id), record))
                }
                Err(error) => Err(error.into()),
            }
        }
        Op::Deactivate => {
            let scim_id = scim_id(action)?;
            let sent = match settings.deactivate_with {
                DeactivateWith::Delete => client.delete(scim_id).await,
                DeactivateWith::Patch => client
                    .patch(
                        scim_id,
                        &wire::patch_document(&[], extension, Some(false), None),
                    )
                    .await
                    .map(drop),
            };
            let note = match sent {
                Ok(()) => None,
                Err(ScimError::NotFound { .. }) => {
                    Some("the account was already gone in SocialTalent".to_owned())
                }
                Err(error) => return Err(error.into()),
            };
            Ok(((note, Some(scim_id.to_owned())), Some(Record::Deactivated)))
        }
        Op::Held | Op::Skip | Op::Writeback | Op::Protected => Ok(((None, None), None)),
    }
}

/// What an update or adoption confirmed: the account `scim_id` is active with the action's
/// attributes, as far as `keeping` says SocialTalent kept them.
fn confirmed(note: Option<String>, scim_id: &str, keeping: Keeping) -> Sent {
    (
        (note, Some(scim_id.to_owned())),
        Some(Record::Active {
            scim_id: scim_id.to_owned(),
            keeping,
        }),
    )
}

/// Sends exactly `changes` (and `active`, when given) to the account `scim_id`, the
/// configured way, and returns the account as the server answered it, when it did.
///
/// `PUT`: the account is read first (`GET /Users/{id}`, through the limiter) and sent back as
/// read with only the changes applied ([`wire::updated_document`]): nothing the mapping does
/// not manage is lost, and nothing the plan did not decide is written. When the read gives a
/// version (`ETag` or `meta.version`) the `PUT` carries `If-Match`; a `412` reads again and
/// tries once more, a second one fails the user for this run.
///
/// `PATCH`: one operation per change; the account is read first only when `emails` or
/// `phoneNumbers` change, to know whether it has a `work` entry and a primary one.
async fn send_update(
    shared: &Shared,
    scim_id: &str,
    changes: &[Change],
    active: Option<bool>,
) -> Result<Option<TargetUser>, ScimError> {
    let client = &shared.client;
    let extension = client.extension_schema();
    match shared.settings.update_with {
        UpdateWith::Put => {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let (account, version) = client.get_user(scim_id).await?;
                let document = wire::updated_document(&account, changes, extension, active);
                match client.replace(scim_id, &document, version.as_deref()).await {
                    Err(ScimError::PreconditionFailed { .. }) if attempt < 2 => {
                        tracing::info!(
                            message = "The account changed while it was updated; reading it again.",
                            scim_id
                        );
                    }
                    answered => return answered,
                }
            }
        }
        UpdateWith::Patch => {
            let touches_entries = changes
                .iter()
                .any(|change| matches!(change.attribute.as_str(), "emails" | "phoneNumbers"));
            let account = match touches_entries {
                true => Some(client.get_user(scim_id).await?.0),
                false => None,
            };
            let body = wire::patch_document(changes, extension, active, account.as_ref());
            client.patch(scim_id, &body).await
        }
    }
}

/// What a write teaches about the attributes SocialTalent keeps. From an answer: the
/// attributes the user should have (`attributes`) that the answered account lacks are not kept;
/// those it holds with another non-empty value are kept in SocialTalent's own form (recorded,
/// not sent again). Without one (a `PATCH` answered `204`): the attributes this write set are
/// unconfirmed (the next read-back decides), and what was known `before` stands for the others.
fn judged(
    answered: Option<&TargetUser>,
    attributes: &Attributes,
    changes: &[Change],
    before: &Keeping,
) -> Keeping {
    match answered {
        Some(account) => Keeping {
            not_kept: attributes
                .keys()
                .filter(|name| !account.attributes.contains_key(*name))
                .cloned()
                .collect(),
            unconfirmed: Vec::new(),
            normal: attributes
                .iter()
                .filter_map(|(name, ours)| {
                    let theirs = account.attributes.get(name)?;
                    crate::plan::normal_form(name, ours, theirs).map(|form| (name.clone(), form))
                })
                .collect(),
        },
        None => {
            let changed = |name: &String| changes.iter().any(|change| &change.attribute == name);
            let mut unconfirmed: Vec<String> = before
                .unconfirmed
                .iter()
                .filter(|name| !changed(name))
                .cloned()
                .chain(
                    changes
                        .iter()
                        .filter(|change| {
                            !change.to.is_null() && attributes.contains_key(&change.attribute)
                        })
                        .map(|change| change.attribute.clone()),
                )
                .collect();
            unconfirmed.sort();
            unconfirmed.dedup();
            Keeping {
                not_kept: before
                    .not_kept
                    .iter()
                    .filter(|name| !changed(name))
                    .cloned()
                    .collect(),
                unconfirmed,
                normal: before
                    .normal
                    .iter()
                    .filter(|(name, _)| !changed(name))
                    .map(|(name, form)| (name.clone(), form.clone()))
                    .collect(),
            }
        }
    }
}

/// Creates the account; on `409` (it exists already) adopts it, under the same guards as the
/// read-back's adoption, and sends what differs.
async fn create_or_adopt(
    shared: &Shared,
    action: &Action,
    attributes: &Attributes,
) -> Result<Sent, ActionError> {
    let client = &shared.client;
    let extension = client.extension_schema();
    let document = wire::UserDocument::new(attributes, extension, true);
    match client.create(&document).await {
        Ok((created_id, answered)) => {
            let keeping = match &answered {
                Some(_) => judged(answered.as_ref(), attributes, &[], &Keeping::default()),
                // Without an answer to judge by, every attribute is still to confirm.
                None => Keeping {
                    unconfirmed: attributes.keys().cloned().collect(),
                    ..Keeping::default()
                },
            };
            Ok(confirmed(None, &created_id, keeping))
        }
        Err(ScimError::Conflict { detail }) => {
            // The account exists: adopt it instead of creating a duplicate, if it may be ours.
            let existing = client
                .find_by_user_name(&action.user_name)
                .await?
                .ok_or_else(|| {
                    ActionError::Refused(format!(
                        "SocialTalent reports a conflict ({detail}) but has no account with userName {}",
                        action.user_name
                    ))
                })?;
            if let Some(owner) = shared
                .known
                .get(&existing.id)
                .filter(|owner| **owner != action.idp_id)
            {
                return Err(ActionError::Refused(format!(
                    "the account with userName {} belongs to IdP user {owner}; not adopted",
                    action.user_name
                )));
            }
            shared.guards.may_adopt(&existing, &action.idp_id)?;
            let current: Attributes = existing
                .attributes
                .iter()
                .filter(|(name, _)| shared.guards.managed.contains(*name))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect();
            let changes = diff(&current, attributes);
            let answered = send_update(shared, &existing.id, &changes, Some(true)).await?;
            Ok(confirmed(
                Some("an account with this userName existed; adopted and updated".into()),
                &existing.id,
                judged(answered.as_ref(), attributes, &changes, &Keeping::default()),
            ))
        }
        Err(error) => Err(error.into()),
    }
}

/// What the executor checks before it takes over an account it finds by a `409`: the same
/// guards as the read-back's adoption.
#[derive(Debug, Clone, Default)]
pub struct Guards {
    /// The attributes the mapping manages: the only ones an adoption compares and sends.
    pub managed: Vec<String>,
    /// Every IdP id the run knows (read from the source, or in the state): an account whose
    /// `externalId` is one of them belongs to that user.
    pub known_ids: HashSet<String>,
    /// `[safety] protect`.
    pub protect: Protect,
}

impl Guards {
    /// Whether `account` may become `idp_id`'s.
    fn may_adopt(&self, account: &TargetUser, idp_id: &IdpId) -> Result<(), ActionError> {
        if self.protect.covers(&account.user_name) {
            return Err(ActionError::Refused(format!(
                "the account with userName {} is protected by [safety] protect; not adopted",
                account.user_name
            )));
        }
        if let Some(external_id) = account.external_id.as_deref()
            && external_id != idp_id.0
            && self.known_ids.contains(external_id)
        {
            return Err(ActionError::Refused(format!(
                "the account with userName {} has externalId {external_id}, another IdP user's; not adopted (resolve by hand)",
                account.user_name
            )));
        }
        Ok(())
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
    // An orphan's account has no IdP user: there is nobody to count the failure for (and all
    // orphans would otherwise share one counter under the empty id).
    if action.idp_id.0.is_empty() {
        return;
    }
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use super::*;
    use crate::config::{Config, Secret};
    use crate::model::{Digest, UserRecord};
    use crate::net::limiter::Limiter;

    /// What the workers of an execution share, over `state`; the client is never used.
    fn shared(state: &State) -> Shared {
        let config = Config::parse(
            Path::new("t.toml"),
            r#"[source]
kind = "file"
[source.file]
path = "directory.json"
[target]
base_url = "http://127.0.0.1:9/v2"
token = "${ST_SYNC_EXECUTOR_TEST_TOKEN_UNSET}"
[mapping]
userName = "{{ user.email }}"
coreTeam = "Sales"
role = "user"
"#,
        )
        .expect("configuration");
        let client = ScimClient::new(
            &config.target,
            Secret::new("token"),
            Limiter::new(10.0, 1, 1),
        )
        .expect("client");
        Shared {
            client,
            state: state.clone(),
            settings: WriteSettings {
                update_with: UpdateWith::Patch,
                deactivate_with: DeactivateWith::Delete,
                max_in_flight: 4,
                quarantine_after: 3,
            },
            known: HashMap::new(),
            guards: Guards::default(),
            cancel: CancellationToken::new(),
            stopped: Mutex::new(None),
            results: Mutex::new(vec![ActionResult::NotSent; 2 * RECORD_BATCH]),
            done: AtomicUsize::new(0),
            pending: Mutex::new(Vec::new()),
            recording: Mutex::new(()),
            abandoned: AtomicBool::new(false),
        }
    }

    /// A create SocialTalent confirmed as account `st-<n>`.
    fn created(n: usize) -> Confirmed {
        let user_name = format!("user{n}@example.com");
        let attributes: Attributes =
            serde_json::from_value(json!({"userName": user_name, "coreTeam": "Sales"}))
                .expect("attributes");
        let action = Action {
            idp_id: IdpId(format!("00u{n:04}")),
            user_name,
            attributes: Some(Arc::new(attributes)),
            digest: Some(Digest(n as u128)),
            ..Action::empty(Op::Create)
        };
        Confirmed {
            index: n,
            action,
            done: (None, Some(format!("st-{n}"))),
            record: Record::Active {
                scim_id: format!("st-{n}"),
                keeping: Keeping::default(),
            },
        }
    }

    fn recorded(state: &State, n: usize) -> Option<UserRecord> {
        state.user(&IdpId(format!("00u{n:04}"))).expect("state")
    }

    fn result(shared: &Shared, n: usize) -> ActionResult {
        lock(&shared.results)[n].clone()
    }

    #[test]
    fn confirmed_writes_wait_for_a_full_batch_and_the_worker_that_fills_it_records_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = State::open(dir.path()).expect("state");
        let shared = shared(&state);
        for n in 0..RECORD_BATCH - 1 {
            shared.confirm(created(n));
        }
        assert!(
            recorded(&state, 0).is_none(),
            "recorded before the batch was full"
        );
        assert_eq!(result(&shared, 0), ActionResult::NotSent);
        assert_eq!(shared.done.load(Ordering::Relaxed), 0);

        shared.confirm(created(RECORD_BATCH - 1));
        for n in 0..RECORD_BATCH {
            let record = recorded(&state, n).expect("recorded");
            assert_eq!(record.scim_id, format!("st-{n}"));
            assert_eq!(record.user_name, format!("user{n}@example.com"));
            assert_eq!(record.status, AccountStatus::Active);
            assert_eq!(record.digest, Some(Digest(n as u128)));
            assert_eq!(
                result(&shared, n),
                ActionResult::Ok {
                    note: None,
                    scim_id: Some(format!("st-{n}")),
                    not_kept: Vec::new(),
                }
            );
        }
        assert_eq!(shared.done.load(Ordering::Relaxed), RECORD_BATCH);
        assert!(lock(&shared.pending).is_empty());
    }

    #[test]
    fn dropping_the_execution_records_every_write_already_confirmed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = State::open(dir.path()).expect("state");
        let shared = shared(&state);
        let settle = Settle(&shared);
        shared.confirm(created(1));
        shared.confirm(created(2));
        assert!(recorded(&state, 1).is_none());
        drop(settle);
        assert_eq!(recorded(&state, 1).expect("recorded").scim_id, "st-1");
        assert_eq!(recorded(&state, 2).expect("recorded").scim_id, "st-2");
        assert_eq!(shared.done.load(Ordering::Relaxed), 2);

        // A worker still running when the execution was dropped records what it confirms
        // at once.
        shared.confirm(created(3));
        assert_eq!(recorded(&state, 3).expect("recorded").scim_id, "st-3");
        assert!(matches!(result(&shared, 3), ActionResult::Ok { .. }));
    }

    #[test]
    fn a_confirmed_deactivation_is_recorded_on_the_users_record() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = State::open(dir.path()).expect("state");
        let shared = shared(&state);
        shared.confirm(created(5));
        shared.record_pending(Wait::Yes);
        assert_eq!(
            recorded(&state, 5).expect("recorded").status,
            AccountStatus::Active
        );
        let mut deactivation = created(5);
        deactivation.action.op = Op::Deactivate;
        deactivation.record = Record::Deactivated;
        shared.confirm(deactivation);
        shared.record_pending(Wait::Yes);
        let record = recorded(&state, 5).expect("recorded");
        assert_eq!(record.status, AccountStatus::Deactivated);
        assert_eq!(record.scim_id, "st-5");
    }

    #[test]
    fn a_failed_orphan_deactivation_counts_against_nobody() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = State::open(dir.path()).expect("state");
        let shared = shared(&state);
        for n in 0..2 {
            let orphan = Action {
                user_name: format!("orphan{n}@example.com"),
                scim_id: Some(format!("st-{n}")),
                ..Action::empty(Op::Deactivate)
            };
            let refused = ActionError::Refused("SocialTalent refused the request (400)".into());
            shared.finish(n, &orphan, Err(refused), Vec::new());
        }
        assert!(matches!(result(&shared, 0), ActionResult::Failed { .. }));
        assert!(
            state.snapshot().expect("snapshot").failures.is_empty(),
            "no shared failure counter under an empty IdP id"
        );
    }
}
