//! One reconciliation, shared by `sync` and the daemon: read the source, map, plan against the
//! state, and (unless dry-run) execute and record. [`run_once`] builds the whole plan before
//! anything is sent.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, SecretError};
use crate::executor::{self, ActionResult, WriteSettings};
use crate::holds::{self, HoldKey};
use crate::mapping::MappedUser;
use crate::model::{AccountStatus, IdpId, Snapshot, SourceRead};
use crate::net::limiter::Limiter;
use crate::plan::{self, Op, Plan};
use crate::scim::client::ScimClient;
use crate::source::{self, SourceError};
use crate::state::{HeldEntry, RunRecord, State, StateError, now_rfc3339};

/// Plan only, or plan and apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Print the plan; write nothing anywhere.
    DryRun,
    /// Carry the plan out.
    Apply,
}

/// How one run behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Dry run or apply.
    pub mode: Mode,
    /// Force a full read.
    pub full: bool,
    /// Which deactivations held by the safety limits the run releases.
    pub release: Release,
}

/// Which deactivations held by the safety limits a run releases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Release {
    /// None: the limits hold as usual.
    #[default]
    Nothing,
    /// Every deactivation of this run (`sync --allow-deactivations` on a state no daemon holds).
    All,
    /// Exactly these pending holds (`approve`, and `sync --allow-deactivations` served by the
    /// daemon): anything else the limits hold stays held.
    Pending(Arc<BTreeSet<HoldKey>>),
}

/// Why a run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The source could not be read; nothing was written.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The state could not be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// A secret the run needs is missing.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The SCIM client could not be built.
    #[error(transparent)]
    Client(#[from] crate::scim::client::ScimError),
    /// A bug: a task failed unexpectedly.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Everything a run produced, for the report.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// Dry run or applied.
    pub mode: Mode,
    /// The source read.
    pub read: SourceRead,
    /// The plan.
    pub plan: Plan,
    /// Per-action results (applied runs only), in plan order.
    pub results: Option<Vec<ActionResult>>,
    /// Why the run stopped early, if it did.
    pub stopped: Option<String>,
    /// What the SCIM client counted (applied runs that sent something).
    pub stats: Option<ClientStatistics>,
    /// The extension schema payloads are shown with.
    pub extension_schema: String,
    /// The deactivations held and pending after this run (this run's holds and earlier ones
    /// that still apply); for a dry run, what would be pending after applying it.
    pub pending_holds: Vec<HeldEntry>,
}

impl RunOutcome {
    /// How many actions failed.
    pub fn failed(&self) -> usize {
        self.results
            .iter()
            .flatten()
            .filter(|result| matches!(result, ActionResult::Failed { .. }))
            .count()
    }

    /// How many deactivations were held.
    pub fn held(&self) -> usize {
        self.plan
            .actions
            .iter()
            .filter(|action| action.op == Op::Held)
            .count()
    }

    /// The process exit code SPEC §3 gives this outcome: 1 when a write failed, 3 when
    /// deactivations were held or are still pending, else 0 (skips alone leave it 0).
    pub fn exit_code(&self) -> u8 {
        if self.failed() > 0 {
            1
        } else if self.held() > 0 || !self.pending_holds.is_empty() {
            3
        } else {
            0
        }
    }
}

/// The inputs of a plan, for `--dump` fixtures and `preview`.
#[derive(Debug, Clone)]
pub struct Planned {
    /// The source read.
    pub read: SourceRead,
    /// The mapping's decisions.
    pub mapped: Vec<MappedUser>,
    /// The state snapshot.
    pub snapshot: Snapshot,
    /// The plan.
    pub plan: Plan,
}

/// Reads, maps and plans, touching nothing.
///
/// Users whose digest the state holds are not mapped again
/// ([`crate::mapping::Decision::Unchanged`]), and
/// only the stored attributes the plan compares are loaded: a run's memory and time follow
/// what changed, not the size of the directory.
///
/// # Errors
/// [`SyncError`] when the source or the state cannot be read.
pub async fn plan_run(
    config: &Config,
    state: Option<&State>,
    options: Options,
) -> Result<Planned, SyncError> {
    plan_run_with(config, state, options, &|_| {}).await
}

/// [`plan_run`], telling `on_progress` each phase as it starts.
///
/// # Errors
/// As [`plan_run`].
async fn plan_run_with(
    config: &Config,
    state: Option<&State>,
    options: Options,
    on_progress: &(dyn Fn(Progress) + Sync),
) -> Result<Planned, SyncError> {
    let started = std::time::Instant::now();
    on_progress(Progress::Phase(Phase::ReadingSource));
    // The state loads while the source is read.
    let loading = state
        .cloned()
        .map(|state| tokio::task::spawn_blocking(move || state.snapshot()));
    let mut read = source::read(&config.source, state, options.full).await?;
    crate::progress::beat();
    let snapshot = match loading {
        Some(task) => task.await.map_err(|error| {
            SyncError::Internal(format!("the state loading task failed: {error}"))
        })??,
        None => Snapshot::default(),
    };
    if let (false, Some(state)) = (read.full, state) {
        retry_failing_users(&mut read, &snapshot, state)?;
    }
    tracing::debug!(message = "Source read.", users = read.users.len(), elapsed = ?started.elapsed(), rss_kib = resident_kib(), cpu_ms = cpu_ms());
    on_progress(Progress::Phase(Phase::Mapping {
        users: read.users.len(),
    }));
    let shared = Arc::new(config.clone());
    // Mapping 100,000 users is CPU work: keep it off the async workers.
    let (read, mapped, mut snapshot) = tokio::task::spawn_blocking(move || {
        let mapped = shared
            .mapping
            .map_all_unless(&read.users, &|idp_id, digest| {
                snapshot.users.get(idp_id).is_some_and(|record| {
                    record.status == AccountStatus::Active && record.digest == Some(digest)
                })
            });
        (read, mapped, snapshot)
    })
    .await
    .map_err(|error| SyncError::Internal(format!("the mapping task failed: {error}")))?;
    crate::progress::beat();
    tracing::debug!(message = "Users mapped.", elapsed = ?started.elapsed(), rss_kib = resident_kib(), cpu_ms = cpu_ms());
    let managed = config.mapping.attributes();
    // Full runs read SocialTalent back (adoption, drift, orphans); accounts of unchanged users
    // that still hold what we pushed are kept as ids only.
    let target = if read.full && config.reconcile.read_back {
        on_progress(Progress::Phase(Phase::ReadingTarget));
        let client = scim_client(config)?;
        let compactor = plan::Compactor::new(&mapped, &snapshot, &managed);
        let accounts = client
            .read_all(
                config.reconcile.page_size as usize,
                config.target.max_in_flight,
                &|account| compactor.compact(account),
            )
            .await?;
        crate::progress::beat();
        tracing::info!(
            message = "Read SocialTalent back.",
            accounts = accounts.len()
        );
        Some(accounts)
    } else {
        None
    };
    if let Some(state) = state {
        let wanted = plan::needs_pushed(&mapped, &snapshot, target.as_deref(), &managed);
        state.load_pushed(&mut snapshot, &wanted)?;
        tracing::debug!(message = "Stored attributes loaded.", users = wanted.len(), elapsed = ?started.elapsed(), rss_kib = resident_kib(), cpu_ms = cpu_ms());
    }
    on_progress(Progress::Phase(Phase::Planning));
    let config = Arc::new(config.clone());
    let release = options.release;
    let planned = tokio::task::spawn_blocking(move || {
        plan_mapped(&config, read, mapped, snapshot, target, &release)
    })
    .await
    .map_err(|error| SyncError::Internal(format!("the planning task failed: {error}")))?;
    crate::progress::beat();
    tracing::debug!(message = "Planned.", actions = planned.plan.actions.len(), elapsed = ?started.elapsed(), rss_kib = resident_kib(), cpu_ms = cpu_ms());
    Ok(planned)
}

/// Maps (every user, without the unchanged shortcut, so that `preview` shows the mapped
/// document) and plans a read that is already in hand, without read-back.
///
/// # Errors
/// [`SyncError::State`] when the state cannot be read.
pub fn plan_read(
    config: &Config,
    state: Option<&State>,
    read: SourceRead,
    release: &Release,
) -> Result<Planned, SyncError> {
    let mapped = config.mapping.map_all(&read.users);
    let mut snapshot = match state {
        Some(state) => state.snapshot()?,
        None => Snapshot::default(),
    };
    if let Some(state) = state {
        let managed = config.mapping.attributes();
        let wanted = plan::needs_pushed(&mapped, &snapshot, None, &managed);
        state.load_pushed(&mut snapshot, &wanted)?;
    }
    Ok(plan_mapped(config, read, mapped, snapshot, None, release))
}

fn plan_mapped(
    config: &Config,
    read: SourceRead,
    mapped: Vec<MappedUser>,
    snapshot: Snapshot,
    target: Option<Vec<crate::model::TargetUser>>,
    release: &Release,
) -> Planned {
    let managed = config.mapping.attributes();
    let mut plan = plan::build(&plan::Inputs {
        read: &read,
        mapped: &mapped,
        state: &snapshot,
        safety: &config.safety,
        allow_deactivations: *release == Release::All,
        target: target.as_deref(),
        managed: &managed,
        reconcile: plan::Reconcile {
            drift: config.reconcile.drift,
            orphans: config.reconcile.orphans,
        },
    });
    if let Release::Pending(approved) = release {
        holds::release(&mut plan, approved);
    }
    if let Some(writeback) = &config.writeback {
        let mut accounts = active_accounts(&snapshot);
        for action in &plan.actions {
            if let (Op::Adopt | Op::Update | Op::Reactivate, Some(scim_id)) =
                (action.op, &action.scim_id)
            {
                accounts.insert(
                    action.idp_id.clone(),
                    (scim_id.clone(), action.user_name.clone()),
                );
            }
        }
        let pending: std::collections::HashSet<&IdpId> = plan
            .actions
            .iter()
            .filter(|action| action.op == Op::Create)
            .map(|action| &action.idp_id)
            .collect();
        for idp_id in &pending {
            accounts.remove(*idp_id);
        }
        let writebacks = crate::writeback::plan(
            &config.mapping,
            &writeback.attribute,
            &mapped,
            &read.users,
            &accounts,
            &pending,
        );
        plan.actions.extend(writebacks);
    }
    Planned {
        read,
        mapped,
        snapshot,
        plan,
    }
}

/// This process's resident memory in KiB, for the phase logs (Linux; `None` elsewhere).
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The CPU time this process has used so far, in milliseconds, for the phase logs (Linux;
/// `None` elsewhere). Read from `/proc/self/stat` (user and system time, in clock ticks of
/// 10 ms on Linux's usual `USER_HZ` of 100).
fn cpu_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after it are space-separated.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) * 10)
}

/// Each active provisioned user's SocialTalent account (id, userName).
fn active_accounts(snapshot: &Snapshot) -> HashMap<IdpId, (String, String)> {
    snapshot
        .users
        .iter()
        .filter(|(_, record)| record.status == crate::model::AccountStatus::Active)
        .map(|(idp_id, record)| {
            (
                idp_id.clone(),
                (record.scim_id.clone(), record.user_name.clone()),
            )
        })
        .collect()
}

/// Sets the IdP attribute of every provisioned user whose account is now known and whose
/// attribute differs; returns the actions with their results.
async fn write_back(
    config: &Config,
    state: &State,
    mapped: &[crate::mapping::MappedUser],
    read: &SourceRead,
) -> Result<Vec<(plan::Action, ActionResult)>, StateError> {
    let Some(writeback) = &config.writeback else {
        return Ok(Vec::new());
    };
    let accounts = active_accounts(&state.snapshot()?);
    let actions = crate::writeback::plan(
        &config.mapping,
        &writeback.attribute,
        mapped,
        &read.users,
        &accounts,
        &std::collections::HashSet::new(),
    );
    if actions.is_empty() {
        note_writeback_retries(state, read, &[])?;
        return Ok(Vec::new());
    }
    let writer = source::Writer::new(&config.source).map_err(|error| error.to_string());
    let mut done = Vec::with_capacity(actions.len());
    for action in actions {
        let value = action
            .changes
            .first()
            .and_then(|change| change.to.as_str())
            .unwrap_or_default()
            .to_owned();
        let result = match (&writer, &action.error) {
            (_, Some(error)) => Err(error.clone()),
            (Err(error), None) => Err(error.clone()),
            (Ok(writer), None) => {
                writer
                    .write(&action.idp_id, &writeback.attribute, &value)
                    .await
            }
        };
        let result = match result {
            Ok(()) => ActionResult::Ok {
                note: None,
                scim_id: action.scim_id.clone(),
                not_kept: Vec::new(),
            },
            Err(error) => {
                tracing::warn!(message = "Write-back failed; retried next run.", idp_id = %action.idp_id, %error);
                ActionResult::Failed { error }
            }
        };
        done.push((action, result));
    }
    note_writeback_retries(state, read, &done)?;
    Ok(done)
}

/// An incremental read only returns what changed; users whose writes failed last time are
/// added from the source cache so that they are retried (quarantined ones are skipped by the
/// planner and wait for a full run).
fn retry_failing_users(
    read: &mut SourceRead,
    snapshot: &Snapshot,
    state: &State,
) -> Result<(), StateError> {
    let present: std::collections::HashSet<IdpId> = read
        .users
        .iter()
        .map(|user| user.id.clone())
        .chain(read.removed.iter().cloned())
        .collect();
    let writebacks = writeback_retries(state)?;
    let mut added = std::collections::HashSet::new();
    for idp_id in snapshot.failures.keys().chain(writebacks.iter()) {
        if present.contains(idp_id) || !added.insert(idp_id.clone()) {
            continue;
        }
        if let Some(user) = state.cached_source_user(idp_id)? {
            read.users.push(Arc::new(user));
        }
    }
    Ok(())
}

/// The state's meta key listing users whose write-back failed: retried on the next run, read
/// again from the source cache if the source does not report them changed.
const WRITEBACK_RETRY: &str = "writeback_retry";

/// Users whose write-back failed in an earlier run and is still to be retried.
fn writeback_retries(state: &State) -> Result<Vec<IdpId>, StateError> {
    Ok(state
        .meta(WRITEBACK_RETRY)?
        .and_then(|text| serde_json::from_str::<Vec<String>>(&text).ok())
        .unwrap_or_default()
        .into_iter()
        .map(IdpId)
        .collect())
}

/// Remembers which write-backs failed this run (and keeps those of users this run did not
/// read), so that the next run retries them.
fn note_writeback_retries(
    state: &State,
    read: &SourceRead,
    done: &[(plan::Action, ActionResult)],
) -> Result<(), StateError> {
    let read_ids: std::collections::HashSet<&IdpId> =
        read.users.iter().map(|user| &user.id).collect();
    let mut retry: Vec<String> = writeback_retries(state)?
        .into_iter()
        .filter(|idp_id| !read_ids.contains(idp_id))
        .map(|idp_id| idp_id.0)
        .collect();
    retry.extend(
        done.iter()
            .filter(|(_, result)| matches!(result, ActionResult::Failed { .. }))
            .map(|(action, _)| action.idp_id.0.clone()),
    );
    retry.sort();
    retry.dedup();
    let text = serde_json::to_string(&retry).map_err(|error| StateError::Storage {
        path: state.path().to_owned(),
        message: error.to_string(),
    })?;
    state.set_meta(WRITEBACK_RETRY, &text)
}

/// Builds the SCIM client for the configured target (reads the token now).
///
/// # Errors
/// [`SyncError::Secret`] when the token is missing, or [`SyncError::Client`].
pub fn scim_client(config: &Config) -> Result<ScimClient, SyncError> {
    let token = config.target.token.resolve()?;
    let target = &config.target;
    let limiter = Limiter::new(
        target.requests_per_second,
        target.burst,
        target.max_in_flight,
    );
    Ok(ScimClient::new(target, token, limiter)?)
}

/// One reconciliation: plan, then (in [`Mode::Apply`]) execute and record the run.
///
/// # Errors
/// [`SyncError`] when the run cannot start or the source cannot be read; per-user failures
/// are results, not errors.
pub async fn run_once(
    config: &Config,
    state: Option<&State>,
    options: Options,
    cancel: &CancellationToken,
    on_progress: &(dyn Fn(Progress) + Sync),
) -> Result<RunOutcome, SyncError> {
    let started_at = now_rfc3339();
    let mode = options.mode;
    let full = options.full;
    let planned = match plan_run_with(config, state, options, on_progress).await {
        Ok(planned) => planned,
        Err(error) => {
            if let (Mode::Apply, Some(state)) = (mode, state) {
                let full = source::reads_full(&config.source, Some(state), full);
                record_failed_run(state, config, &started_at, full, &error);
            }
            return Err(error);
        }
    };
    on_progress(Progress::Planned {
        users_read: planned.read.records_read(),
        writes: planned
            .plan
            .actions
            .iter()
            .filter(|a| a.op.writes_target())
            .count(),
    });
    let Planned {
        read,
        snapshot,
        mut plan,
        mapped,
    } = planned;
    let extension_schema = config.target.extension_schema.clone();
    let (Mode::Apply, Some(state)) = (mode, state) else {
        let pending_holds = match state {
            Some(state) => carry_holds(config, state, &read, &plan, None, &snapshot)?,
            None => Vec::new(),
        };
        return Ok(RunOutcome {
            mode: Mode::DryRun,
            read,
            plan,
            results: None,
            stopped: None,
            extension_schema,
            stats: None,
            pending_holds,
        });
    };
    // Write-backs are planned again once the writes are done (new accounts have ids then).
    if config.writeback.is_some() {
        plan.actions.retain(|action| action.op != Op::Writeback);
    }
    let mut stats = None;
    let execution = if plan.is_noop() || cancel.is_cancelled() {
        executor::Execution {
            results: vec![ActionResult::NotSent; plan.actions.len()],
            stopped: cancel
                .is_cancelled()
                .then(|| "shutting down before anything was sent".to_owned()),
        }
    } else {
        let client = scim_client(config)?;
        let settings = WriteSettings {
            update_with: config.target.update_with,
            deactivate_with: config.target.deactivate_with,
            max_in_flight: config.target.max_in_flight,
            quarantine_after: config.safety.failure_quarantine_after,
        };
        let guards = guards(config, &read, &snapshot);
        let execution = executor::execute(
            &client,
            state,
            settings,
            &plan,
            &snapshot,
            &guards,
            cancel,
            &|| {
                crate::progress::beat();
                on_progress(Progress::ActionDone);
            },
        )
        .await;
        note_not_kept(&mut plan, &execution.results);
        tracing::debug!(
            message = "Executed.",
            actions = plan.actions.len(),
            rss_kib = resident_kib(),
            cpu_ms = cpu_ms()
        );
        stats = Some(ClientStatistics::of(&client));
        execution
    };
    // Users found unchanged by comparison get their digest, so the next run skips them.
    state.refresh_digests(&plan.refresh, &config.mapping.attributes())?;
    state.record_keeping(&plan.keeping)?;
    let mut results = execution.results;
    if execution.stopped.is_none() {
        for (action, result) in write_back(config, state, &mapped, &read).await? {
            plan.actions.push(action);
            results.push(result);
        }
    }
    let pending_holds = carry_holds(config, state, &read, &plan, Some(&results), &snapshot)?;
    state.set_pending_holds(&pending_holds)?;
    let outcome = RunOutcome {
        mode: Mode::Apply,
        read,
        plan,
        results: Some(results),
        stopped: execution.stopped,
        extension_schema,
        stats,
        pending_holds,
    };
    record_run(state, &outcome, &started_at)?;
    tracing::debug!(
        message = "Run recorded.",
        rss_kib = resident_kib(),
        cpu_ms = cpu_ms()
    );
    // Cursors advance only after the writes are recorded, and not at all when the run held
    // deactivations or stopped early: the next run must read those changes again.
    if outcome.held() == 0 && outcome.stopped.is_none() {
        state.apply_source_commit(&outcome.read.commit)?;
        state.flush()?;
    }
    Ok(outcome)
}

/// What the executor checks before it adopts an account a create's `409` names: the managed
/// attributes, every IdP id the run knows, and `[safety] protect`.
pub fn guards(config: &Config, read: &SourceRead, snapshot: &Snapshot) -> executor::Guards {
    let known_ids = read
        .users
        .iter()
        .map(|user| user.id.0.clone())
        .chain(
            read.rejected
                .iter()
                .filter_map(|rejected| rejected.idp_id.as_ref().map(|id| id.0.clone())),
        )
        .chain(read.removed.iter().map(|id| id.0.clone()))
        .chain(snapshot.users.keys().map(|id| id.0.clone()))
        .collect();
    executor::Guards {
        managed: config.mapping.attributes(),
        known_ids,
        protect: config.safety.protect.clone(),
    }
}

/// Brings the plan's list of attributes SocialTalent did not keep up to date with what the
/// writes' answers said.
fn note_not_kept(plan: &mut Plan, results: &[ActionResult]) {
    for (action, result) in plan.actions.iter().zip(results) {
        if let ActionResult::Ok { not_kept, .. } = result
            && matches!(
                action.op,
                Op::Create | Op::Adopt | Op::Update | Op::Reactivate
            )
        {
            if not_kept.is_empty() {
                plan.not_kept.remove(&action.idp_id);
            } else {
                plan.not_kept
                    .insert(action.idp_id.clone(), not_kept.clone());
            }
        }
    }
}

/// The pending holds after this run ([`holds::carry`]); `results` is `None` for a dry run.
fn carry_holds(
    config: &Config,
    state: &State,
    read: &SourceRead,
    plan: &Plan,
    results: Option<&[ActionResult]>,
    snapshot: &Snapshot,
) -> Result<Vec<HeldEntry>, StateError> {
    let previous = state.pending_holds()?;
    let still_active: HashSet<IdpId> = previous
        .iter()
        .filter(|entry| {
            snapshot
                .users
                .get(&entry.idp_id)
                .is_some_and(|record| record.status == AccountStatus::Active)
        })
        .map(|entry| entry.idp_id.clone())
        .collect();
    let now = now_rfc3339();
    Ok(holds::carry(
        &previous,
        &holds::RunView {
            plan,
            results,
            full: read.full,
            read_back: read.full && config.reconcile.read_back,
            still_active: &still_active,
            now: &now,
        },
    ))
}

/// What the SCIM client counted during a run, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClientStatistics {
    /// Requests sent, retries included.
    pub requests: u64,
    /// Retries.
    pub retries: u64,
    /// Times a request waited for the rate limiter.
    pub rate_limit_waits: u64,
    /// Total time spent waiting for the rate limiter.
    pub rate_limit_wait: std::time::Duration,
}

impl ClientStatistics {
    fn of(client: &ScimClient) -> ClientStatistics {
        use std::sync::atomic::Ordering::Relaxed;
        let (rate_limit_waits, rate_limit_wait) = client.limiter().waits();
        ClientStatistics {
            requests: client.stats().requests.load(Relaxed),
            retries: client.stats().retries.load(Relaxed),
            rate_limit_waits,
            rate_limit_wait,
        }
    }
}

/// A phase of a run, before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the source (its pages).
    ReadingSource,
    /// Mapping the users read.
    Mapping {
        /// Users to map.
        users: usize,
    },
    /// Reading SocialTalent's accounts back (full runs with read-back).
    ReadingTarget,
    /// Building the plan.
    Planning,
}

/// Progress events for a terminal display.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// A phase starts.
    Phase(Phase),
    /// The plan is built.
    Planned {
        /// Records read.
        users_read: usize,
        /// Writes to send.
        writes: usize,
    },
    /// One write finished.
    ActionDone,
}

fn record_run(state: &State, outcome: &RunOutcome, started_at: &str) -> Result<(), StateError> {
    let mut summary = outcome.plan.summary();
    summary.failed = outcome.failed();
    // A run that stopped early (a shutdown, SocialTalent unusable) did not do its work, even
    // when nothing it sent failed.
    let outcome_word = match (outcome.exit_code(), &outcome.stopped) {
        (_, Some(_)) => "failed",
        (0, None) => "ok",
        (3, None) => "held",
        _ => "failed",
    };
    let held = outcome
        .plan
        .actions
        .iter()
        .filter(|action| action.op == Op::Held)
        .map(|action| HeldEntry {
            idp_id: action.idp_id.clone(),
            user_name: action.user_name.clone(),
            reason: action.reason.clone().unwrap_or_default(),
            scim_id: action.scim_id.clone(),
            since: String::new(),
        })
        .collect();
    state.record_run(&RunRecord {
        started_at: started_at.to_owned(),
        finished_at: now_rfc3339(),
        full: outcome.read.full,
        source: outcome.read.kind.to_string(),
        users_read: outcome.read.records_read(),
        summary,
        outcome: outcome_word.to_owned(),
        error: outcome
            .stopped
            .clone()
            .or_else(|| (summary.failed > 0).then(|| format!("{} writes failed", summary.failed))),
        held,
    })?;
    state.flush()
}

fn record_failed_run(
    state: &State,
    config: &Config,
    started_at: &str,
    full: bool,
    error: &SyncError,
) {
    let run = RunRecord {
        started_at: started_at.to_owned(),
        finished_at: now_rfc3339(),
        full,
        source: config.source.kind().to_string(),
        users_read: 0,
        summary: plan::Summary::default(),
        outcome: "failed".into(),
        error: Some(error.to_string()),
        held: Vec::new(),
    };
    if let Err(state_error) = state.record_run(&run).and_then(|()| state.flush()) {
        tracing::error!(message = "Cannot record the failed run.", error = %state_error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CacheUpdate, SourceCommit, SourceKind, SourceUser};

    fn user(id: &str) -> Arc<SourceUser> {
        Arc::new(SourceUser {
            id: IdpId(id.into()),
            login: Some(format!("{id}@example.com")),
            email: None,
            given_name: None,
            family_name: None,
            display_name: None,
            active: true,
            status: None,
            department: None,
            title: None,
            employee_id: None,
            manager_id: None,
            manager: None,
            groups: Vec::new(),
            attrs: crate::model::Attrs::empty(),
        })
    }

    fn read(users: Vec<Arc<SourceUser>>, full: bool) -> SourceRead {
        SourceRead {
            kind: SourceKind::Okta,
            full,
            users,
            removed: Vec::new(),
            rejected: Vec::new(),
            warnings: Vec::new(),
            reasons: Default::default(),
            commit: SourceCommit::default(),
        }
    }

    fn config(source: &str) -> Config {
        Config::parse(
            std::path::Path::new("t.toml"),
            &format!(
                "{source}\n[target]\nbase_url = \"http://127.0.0.1:9/v2\"\ntoken = \"t\"\n[mapping]\nuserName = \"{{{{ user.login }}}}\"\ncoreTeam = \"Sales\"\nrole = \"user\"\n"
            ),
        )
        .expect("configuration")
    }

    #[tokio::test]
    async fn a_dry_run_reports_each_phase_in_order_before_the_plan() {
        let dir = tempfile::tempdir().expect("temp dir");
        let directory = dir.path().join("d.json");
        std::fs::write(
            &directory,
            r#"[{"id": "1", "login": "a@example.com", "active": true},
                {"id": "2", "login": "b@example.com", "active": true}]"#,
        )
        .expect("directory");
        let config = config(&format!(
            "[source]\nkind = \"file\"\n[source.file]\npath = \"{}\"\n[reconcile]\nread_back = false",
            directory.display()
        ));
        let events = std::sync::Mutex::new(Vec::new());
        let options = Options {
            mode: Mode::DryRun,
            full: true,
            release: Release::Nothing,
        };
        run_once(
            &config,
            None,
            options,
            &CancellationToken::new(),
            &|event| {
                events.lock().expect("events").push(event);
            },
        )
        .await
        .expect("dry run");
        let events = events.into_inner().expect("events");
        assert!(
            matches!(
                events.as_slice(),
                [
                    Progress::Phase(Phase::ReadingSource),
                    Progress::Phase(Phase::Mapping { users: 2 }),
                    Progress::Phase(Phase::Planning),
                    Progress::Planned {
                        users_read: 2,
                        writes: 2
                    },
                ]
            ),
            "{events:?}"
        );
    }

    #[test]
    fn a_run_that_stopped_before_doing_its_work_is_not_recorded_as_ok() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = State::open(dir.path()).expect("state");
        let outcome = RunOutcome {
            mode: Mode::Apply,
            read: read(Vec::new(), false),
            plan: Plan::default(),
            results: Some(Vec::new()),
            stopped: Some("shutting down before anything was sent".into()),
            stats: None,
            extension_schema: String::new(),
            pending_holds: Vec::new(),
        };
        record_run(&state, &outcome, &now_rfc3339()).expect("recorded");
        let runs = state.recent_runs(1).expect("runs");
        assert_eq!(runs[0].outcome, "failed");
        assert_eq!(
            runs[0].error.as_deref(),
            Some("shutting down before anything was sent")
        );
    }

    #[test]
    fn a_failed_incremental_run_is_recorded_as_incremental() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = State::open(dir.path()).expect("state");
        let okta = config(
            "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"https://example.okta.com\"\ntoken = \"x\"",
        );
        assert!(
            source::reads_full(&okta.source, Some(&state), false),
            "no watermark yet: the first run is full"
        );
        state
            .set_meta(source::okta::WATERMARK_KEY, "2026-12-01T00:00:00Z")
            .expect("meta");
        assert!(
            source::reads_full(&okta.source, Some(&state), false),
            "a state without the group names is read in full once"
        );
        state
            .set_meta(source::okta::GROUP_NAMES_KEY, "{}")
            .expect("meta");
        assert!(!source::reads_full(&okta.source, Some(&state), false));
        assert!(source::reads_full(&okta.source, Some(&state), true));
        let error = SyncError::Internal("the source failed".into());
        record_failed_run(&state, &okta, &now_rfc3339(), false, &error);
        assert!(!state.recent_runs(1).expect("runs")[0].full);
        let file = config("[source]\nkind = \"file\"\n[source.file]\npath = \"d.json\"");
        assert!(source::reads_full(&file.source, Some(&state), false));
    }

    #[test]
    fn an_entra_state_without_a_fitting_membership_cache_is_read_in_full() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = State::open(dir.path()).expect("state");
        let entra = |extra: &str| {
            config(&format!(
                "[source]\nkind = \"entra\"\n[source.entra]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"s\"\ngroups = [\"LP *\"]\n{extra}"
            ))
        };
        let nested = entra("");
        for key in [
            source::entra::USERS_LINK_KEY,
            source::entra::GROUPS_LINK_KEY,
        ] {
            state
                .set_meta(key, "https://graph.example/delta")
                .expect("meta");
        }
        assert!(
            source::reads_full(&nested.source, Some(&state), false),
            "delta links without the membership cache (an older version's state): full once"
        );
        state
            .set_meta(
                source::entra::GROUP_GRAPH_KEY,
                r#"{"format":1,"nested_groups":true,"groups":["LP *"],"children":{}}"#,
            )
            .expect("meta");
        assert!(!source::reads_full(&nested.source, Some(&state), false));
        assert!(
            source::reads_full(&entra("nested_groups = false").source, Some(&state), false),
            "a cache read with the other setting"
        );
        assert!(
            source::reads_full(&entra("").source, None, false),
            "no state at all"
        );
        state
            .set_meta(
                source::entra::GROUP_GRAPH_KEY,
                r#"{"format":1,"nested_groups":true,"groups":["SocialTalent"],"children":{}}"#,
            )
            .expect("meta");
        assert!(
            source::reads_full(&nested.source, Some(&state), false),
            "a cache read with other globs"
        );
    }

    #[test]
    fn a_failed_writeback_is_retried_by_the_next_incremental_run() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = State::open(dir.path()).expect("state");
        state
            .apply_source_commit(&SourceCommit {
                cursors: Vec::new(),
                tables: Vec::new(),
                cache: CacheUpdate::Replace(vec![user("00u1"), user("00u2")]),
            })
            .expect("cache");
        let failed = plan::Action {
            idp_id: IdpId("00u1".into()),
            ..plan::Action::empty(Op::Writeback)
        };
        let done = vec![(
            failed,
            ActionResult::Failed {
                error: "no such profile attribute".into(),
            },
        )];
        note_writeback_retries(&state, &read(vec![user("00u1")], true), &done).expect("noted");

        // The next incremental read returns nobody changed: 00u1 is read from the cache.
        let mut next = read(Vec::new(), false);
        retry_failing_users(&mut next, &Snapshot::default(), &state).expect("retried");
        let ids: Vec<&str> = next.users.iter().map(|user| user.id.0.as_str()).collect();
        assert_eq!(ids, ["00u1"]);

        // Once it succeeds (no failed action for it), it is not retried again.
        note_writeback_retries(&state, &next, &[]).expect("noted");
        let mut after = read(Vec::new(), false);
        retry_failing_users(&mut after, &Snapshot::default(), &state).expect("retried");
        assert!(after.users.is_empty());
    }
}
