//! The daemon (`run`): one [`sync::run_once`] per schedule tick until told to stop. The first
//! run after start is full and starts at once; runs never overlap (ticks that pass during a run
//! are skipped and logged); a failed run is logged and recorded and never ends the loop. SIGHUP
//! reloads the configuration (the old one stays when the new one is invalid); cancellation (the
//! binary wires SIGTERM/SIGINT to it) stops taking work, lets in-flight requests finish within
//! [`SHUTDOWN_GRACE`], persists, and returns. With systemd (`Type=notify`) it reports
//! `READY=1`, `WATCHDOG=1` and `STATUS=`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::executor::ActionResult;
use crate::observability::{self, RunSummary, Shared};
use crate::schedule::{self, RunKind};
use crate::state::{State, StateError};
use crate::status::StatusReport;
use crate::sync::{self, Mode, Options, RunOutcome};

/// How long in-flight requests may take to finish after a shutdown request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state is unusable or held by another process.
    #[error(transparent)]
    State(#[from] StateError),
    /// The HTTP endpoint could not listen.
    #[error("cannot listen on {address} ([observability] listen): {source}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Signals the daemon reacts to, as futures the binary supplies (tests supply their own).
pub struct Signals {
    /// Cancelled to shut down.
    pub shutdown: CancellationToken,
    /// Receives one message per reload request.
    pub reload: tokio::sync::mpsc::UnboundedReceiver<()>,
}

/// Runs the daemon until `signals.shutdown` is cancelled.
///
/// # Errors
/// [`DaemonError`] when it cannot start; a failing run is recorded, not returned.
pub async fn run(
    config_path: PathBuf,
    config: Config,
    signals: Signals,
) -> Result<(), DaemonError> {
    let Signals {
        shutdown,
        mut reload,
    } = signals;
    let state = State::open(&config.state.path)?;
    let config = Arc::new(Mutex::new(Arc::new(config)));
    let current = |config: &Mutex<Arc<Config>>| -> Arc<Config> {
        Arc::clone(&config.lock().unwrap_or_else(PoisonError::into_inner))
    };
    let first = current(&config);
    let shared = Arc::new(Shared::new(max_age(&first)));
    publish_status(&shared, &state, &first);
    let tracker = TaskTracker::new();
    let server = match first.observability.listen {
        Some(address) => {
            Some(serve(address, Arc::clone(&shared), shutdown.clone(), &tracker).await?)
        }
        None => None,
    };
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("waiting for the first run"),
    ]);
    tracing::info!(
        message = "Daemon started.",
        state = %first.state.path.display(),
        listen = ?first.observability.listen,
        source = %first.source.kind()
    );
    start_watchdog(&tracker, shutdown.clone());

    let mut next: Option<(chrono::DateTime<Utc>, RunKind)> = Some((Utc::now(), RunKind::Full));
    loop {
        let Some((when, kind)) = next else {
            tracing::error!(
                message = "The schedule has no future tick; waiting for a reload or a stop."
            );
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(()) = reload.recv() => {
                    reload_config(&config_path, &config, &shared);
                    next = schedule::next_run(&current(&config).schedule, Utc::now());
                    continue;
                }
            }
        };
        let wait = (when - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(()) = reload.recv() => {
                reload_config(&config_path, &config, &shared);
                // A new schedule may move the next tick; the first full run stays first.
                if kind == RunKind::Incremental {
                    next = schedule::next_run(&current(&config).schedule, Utc::now());
                }
                continue;
            }
            () = tokio::time::sleep(wait) => {}
        }
        let config_now = current(&config);
        let started = Utc::now();
        tracing::info!(message = "Run starting.", full = kind == RunKind::Full);
        notify(&[sd_notify::NotifyState::Status(if kind == RunKind::Full {
            "running a full sync"
        } else {
            "running an incremental sync"
        })]);
        let options = Options {
            mode: Mode::Apply,
            full: kind == RunKind::Full,
            allow_deactivations: false,
        };
        let run = sync::run_once(&config_now, Some(&state), options, &shutdown, &|_| {});
        let result = tokio::select! {
            result = run => Some(result),
            () = async {
                shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => None,
        };
        let finished = Utc::now();
        let summary = match result {
            Some(Ok(outcome)) => summarise(&outcome, started, finished),
            Some(Err(error)) => {
                tracing::error!(message = "Run failed.", %error);
                failed_summary(kind, started, finished, error.to_string())
            }
            None => {
                tracing::warn!(
                    message = "In-flight requests did not finish within the shutdown grace period.",
                    grace_seconds = SHUTDOWN_GRACE.as_secs()
                );
                failed_summary(kind, started, finished, "stopped by shutdown".into())
            }
        };
        tracing::info!(
            message = "Run finished.",
            outcome = %summary.outcome,
            full = summary.full,
            duration_seconds = summary.duration_seconds
        );
        notify(&[sd_notify::NotifyState::Status(&status_line(&summary))]);
        shared.metrics.record_run(&summary);
        *shared
            .last_run
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(summary);
        publish_status(&shared, &state, &config_now);
        if shutdown.is_cancelled() {
            break;
        }
        let schedule = &current(&config).schedule;
        let skipped = schedule::ticks_between(schedule, started, Utc::now());
        if skipped > 0 {
            tracing::warn!(
                message = "Scheduled ticks passed while the run was going; they were skipped.",
                skipped
            );
        }
        next = schedule::next_run(schedule, Utc::now());
    }

    tracing::info!(message = "Shutting down.");
    notify(&[sd_notify::NotifyState::Stopping]);
    if let Err(error) = state.flush() {
        tracing::error!(message = "Cannot flush the state.", %error);
    }
    tracker.close();
    if let Some(server) = server {
        let _ = server.await;
    }
    tracker.wait().await;
    Ok(())
}

/// Two incremental periods: older than that, the last run is stale.
fn max_age(config: &Config) -> chrono::Duration {
    schedule::period(&config.schedule, Utc::now())
        .map_or_else(|| chrono::Duration::hours(48), |period| period * 2)
}

fn reload_config(path: &std::path::Path, config: &Mutex<Arc<Config>>, shared: &Shared) {
    match Config::load(path) {
        Ok(new) => {
            let mut current = config.lock().unwrap_or_else(PoisonError::into_inner);
            if new.state.path != current.state.path {
                tracing::warn!(
                    message = "[state] path changed; the daemon keeps the state it opened until restarted.",
                    old = %current.state.path.display(),
                    new = %new.state.path.display()
                );
            }
            if new.observability.listen != current.observability.listen {
                tracing::warn!(
                    message = "[observability] listen changed; it takes effect on restart."
                );
            }
            *shared
                .max_age
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = max_age(&new);
            *current = Arc::new(new);
            tracing::info!(message = "Configuration reloaded.", file = %path.display());
        }
        Err(error) => tracing::error!(
            message = "The new configuration is invalid; keeping the old one.",
            %error
        ),
    }
}

fn publish_status(shared: &Shared, state: &State, config: &Config) {
    match StatusReport::of(state, config.safety.failure_quarantine_after) {
        Ok(report) => {
            shared.metrics.record_status(&report);
            *shared.status.lock().unwrap_or_else(PoisonError::into_inner) = Some(report);
        }
        Err(error) => tracing::error!(message = "Cannot read the state for /status.", %error),
    }
}

fn summarise(
    outcome: &RunOutcome,
    started: chrono::DateTime<Utc>,
    finished: chrono::DateTime<Utc>,
) -> RunSummary {
    let mut counts: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for (index, action) in outcome.plan.actions.iter().enumerate() {
        let op = serde_json::to_value(action.op)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let result = match outcome.results.as_ref().and_then(|r| r.get(index)) {
            Some(ActionResult::Ok { .. }) => "ok",
            Some(ActionResult::Failed { .. }) => "failed",
            Some(ActionResult::NotSent) | None => "not_sent",
        };
        *counts.entry((op, result.to_owned())).or_default() += 1;
    }
    let stats = outcome.stats.unwrap_or_default();
    RunSummary {
        outcome: match outcome.exit_code() {
            0 => "ok",
            3 => "held",
            _ => "failed",
        }
        .to_owned(),
        full: outcome.read.full,
        finished_at: finished,
        duration_seconds: (finished - started).num_milliseconds() as f64 / 1000.0,
        error: outcome.stopped.clone().or_else(|| {
            (outcome.failed() > 0).then(|| format!("{} writes failed", outcome.failed()))
        }),
        actions: counts
            .into_iter()
            .map(|((op, result), n)| (op, result, n))
            .collect(),
        retries: stats.retries,
        rate_limit_waits: (stats.rate_limit_waits, stats.rate_limit_wait.as_secs_f64()),
    }
}

fn failed_summary(
    kind: RunKind,
    started: chrono::DateTime<Utc>,
    finished: chrono::DateTime<Utc>,
    error: String,
) -> RunSummary {
    RunSummary {
        outcome: "failed".into(),
        full: kind == RunKind::Full,
        finished_at: finished,
        duration_seconds: (finished - started).num_milliseconds() as f64 / 1000.0,
        error: Some(error),
        actions: Vec::new(),
        retries: 0,
        rate_limit_waits: (0, 0.0),
    }
}

fn status_line(summary: &RunSummary) -> String {
    let count = |op: &str| -> u64 {
        summary
            .actions
            .iter()
            .filter(|(o, r, _)| o == op && r == "ok")
            .map(|(_, _, n)| n)
            .sum()
    };
    format!(
        "last run {} at {}: {} created, {} updated, {} deactivated, {} reactivated{}",
        summary.outcome,
        summary.finished_at.format("%Y-%m-%d %H:%M:%S UTC"),
        count("create"),
        count("update"),
        count("deactivate"),
        count("reactivate"),
        summary
            .error
            .as_ref()
            .map(|e| format!(" — {e}"))
            .unwrap_or_default()
    )
}

async fn serve(
    address: std::net::SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<JoinHandle<()>, DaemonError> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| DaemonError::Listen { address, source })?;
    let app = observability::router(shared);
    Ok(tracker.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(message = "The HTTP endpoint failed.", %error);
        }
    }))
}

/// Pings systemd's watchdog at half its interval while the runtime is serving tasks.
fn start_watchdog(tracker: &TaskTracker, shutdown: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled().filter(|i| !i.is_zero()) else {
        return;
    };
    let period = interval / 2;
    tracker.spawn(async move {
        let mut ticker = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => notify(&[sd_notify::NotifyState::Watchdog]),
            }
        }
    });
}

/// Tells systemd, when it listens (`NOTIFY_SOCKET`); a failure only matters to systemd.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(error) = sd_notify::notify(states)
    {
        tracing::debug!(message = "sd_notify failed.", %error);
    }
}
