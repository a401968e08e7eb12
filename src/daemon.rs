//! The daemon (`run`): one [`sync::run_once`] per schedule tick until told to stop. The first
//! run after start is full and starts at once; runs never overlap (ticks that pass during a run
//! are skipped and logged); a failed run is logged and recorded and never ends the loop. SIGHUP
//! reloads the configuration (the old one stays when the new one is invalid); cancellation (the
//! binary wires SIGTERM/SIGINT to it) stops taking work, lets in-flight requests finish within
//! [`SHUTDOWN_GRACE`], persists, and returns. With systemd (`Type=notify`) it reports
//! `READY=1`, `WATCHDOG=1` (only while it makes progress, see [`crate::progress`]) and
//! `STATUS=`. While it runs it owns the state: other commands are served through its control
//! socket ([`crate::control`]), between runs, through the same [`sync::run_once`].

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli;
use crate::config::Config;
use crate::control::{self, ControlSocket, Request, Response};
use crate::executor::ActionResult;
use crate::observability::{self, RunSummary, Shared};
use crate::schedule::{self, RunKind};
use crate::state::{State, StateError};
use crate::status::StatusReport;
use crate::sync::{self, Mode, Options, Release, RunOutcome, SyncError};

/// How long in-flight requests may take to finish after a shutdown request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state is unusable or held by another process.
    #[error(transparent)]
    State(#[from] StateError),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] control::BindError),
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
    let first = current(&config);
    let watchdog = sd_notify::watchdog_enabled().filter(|interval| !interval.is_zero());
    let shared = Arc::new(Shared::new(
        max_age(&first),
        watchdog.unwrap_or(observability::DEFAULT_LIVENESS_WINDOW),
    ));
    crate::progress::beat();
    publish_status(&shared, &state, &first);
    let tracker = TaskTracker::new();
    let server = match first.observability.listen {
        Some(address) => {
            Some(serve(address, Arc::clone(&shared), shutdown.clone(), &tracker).await?)
        }
        None => None,
    };
    let socket = ControlSocket::bind(&first.state.path)?;
    let socket_path = socket.path().to_owned();
    let (jobs_sender, mut jobs) = tokio::sync::mpsc::unbounded_channel();
    tracker.spawn(control::serve(
        socket,
        control::Server {
            state: state.clone(),
            config: Arc::clone(&config),
            jobs: jobs_sender,
        },
        shutdown.clone(),
        tracker.clone(),
    ));
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("waiting for the first run"),
    ]);
    tracing::info!(
        message = "Daemon started.",
        state = %first.state.path.display(),
        control_socket = %socket_path.display(),
        listen = ?first.observability.listen,
        source = %first.source.kind()
    );
    start_watchdog(&tracker, shutdown.clone(), Arc::clone(&shared), watchdog);
    let daemon = Daemon {
        state,
        shared,
        shutdown: shutdown.clone(),
    };

    let mut next: Option<(chrono::DateTime<Utc>, RunKind)> = Some((Utc::now(), RunKind::Full));
    loop {
        if next.is_none() {
            tracing::error!(
                message =
                    "The schedule has no future tick; waiting for a reload, a request or a stop."
            );
        }
        let due = next.map(|(when, _)| when);
        let tick = async move {
            match due {
                Some(when) => {
                    tokio::time::sleep((when - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                        .await;
                }
                None => std::future::pending().await,
            }
        };
        // Due ticks before requests: the first (full) run after start always comes first.
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(()) = reload.recv() => {
                reload_config(&config_path, &config, &daemon.shared);
                // A new schedule may move the next tick; the first full run stays first.
                if next.is_none_or(|(_, kind)| kind == RunKind::Incremental) {
                    next = schedule::next_run(&current(&config).schedule, Utc::now());
                }
                continue;
            }
            () = tick => {
                let kind = next.map_or(RunKind::Incremental, |(_, kind)| kind);
                let started = Utc::now();
                let options = Options {
                    mode: Mode::Apply,
                    full: kind == RunKind::Full,
                    release: Release::Nothing,
                };
                let _ = daemon.apply_run(&current(&config), options).await;
                if shutdown.is_cancelled() {
                    break;
                }
                next = next_after(&current(&config).schedule, started);
            }
            Some(job) = jobs.recv() => {
                let started = Utc::now();
                let response = daemon.serve_job(&current(&config), &job.request, job.release).await;
                // The client may have gone; the run is recorded either way.
                let _ = job.reply.send(response);
                if shutdown.is_cancelled() {
                    break;
                }
                if next.is_some_and(|(when, _)| when <= Utc::now()) {
                    next = next_after(&current(&config).schedule, started);
                }
            }
        }
    }

    tracing::info!(message = "Shutting down.");
    notify(&[sd_notify::NotifyState::Stopping]);
    // Requests still queued are answered "shutting down" as their channel closes.
    drop(jobs);
    if let Err(error) = daemon.state.flush() {
        tracing::error!(message = "Cannot flush the state.", %error);
    }
    tracker.close();
    if let Some(server) = server {
        let _ = server.await;
    }
    tracker.wait().await;
    Ok(())
}

/// The next tick after a run (or a served request) that started at `started`; ticks that passed
/// meanwhile are skipped, and logged.
fn next_after(
    schedule: &crate::config::ScheduleConfig,
    started: chrono::DateTime<Utc>,
) -> Option<(chrono::DateTime<Utc>, RunKind)> {
    let skipped = schedule::ticks_between(schedule, started, Utc::now());
    if skipped > 0 {
        tracing::warn!(
            message = "Scheduled ticks passed while the run was going; they were skipped.",
            skipped
        );
    }
    schedule::next_run(schedule, Utc::now())
}

fn current(config: &Mutex<Arc<Config>>) -> Arc<Config> {
    Arc::clone(&config.lock().unwrap_or_else(PoisonError::into_inner))
}

/// What the loop's runs and served requests share.
struct Daemon {
    state: State,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl Daemon {
    /// One applied run (scheduled or requested): runs, records it for the metrics, `/healthz`
    /// and systemd, and returns its result (`None` when shutdown cut it short).
    async fn apply_run(
        &self,
        config: &Config,
        options: Options,
    ) -> Option<Result<RunOutcome, SyncError>> {
        let full = options.full;
        let started = Utc::now();
        tracing::info!(message = "Run starting.", full);
        notify(&[sd_notify::NotifyState::Status(if full {
            "running a full sync"
        } else {
            "running an incremental sync"
        })]);
        let _busy = Busy::start(&self.shared);
        let run = sync::run_once(config, Some(&self.state), options, &self.shutdown, &|_| {});
        let result = tokio::select! {
            result = run => Some(result),
            () = async {
                self.shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => None,
        };
        let finished = Utc::now();
        let summary = match &result {
            Some(Ok(outcome)) => summarise(outcome, started, finished),
            Some(Err(error)) => {
                tracing::error!(message = "Run failed.", %error);
                failed_summary(full, started, finished, error.to_string())
            }
            None => {
                tracing::warn!(
                    message = "In-flight requests did not finish within the shutdown grace period.",
                    grace_seconds = SHUTDOWN_GRACE.as_secs()
                );
                failed_summary(full, started, finished, "stopped by shutdown".into())
            }
        };
        tracing::info!(
            message = "Run finished.",
            outcome = %summary.outcome,
            full = summary.full,
            duration_seconds = summary.duration_seconds
        );
        notify(&[sd_notify::NotifyState::Status(&status_line(&summary))]);
        self.shared.metrics.record_run(&summary);
        *self
            .shared
            .last_run
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(summary);
        publish_status(&self.shared, &self.state, config);
        result
    }

    /// Serves a request from the control socket, between runs: a dry run or a preview is
    /// planned on the state; a sync, an approval or a preview's `--apply` is carried out here.
    async fn serve_job(
        &self,
        config: &Config,
        request: &Request,
        release: Option<Arc<std::collections::BTreeSet<crate::holds::HoldKey>>>,
    ) -> Response {
        let approved = || Release::Pending(release.clone().unwrap_or_default());
        let (dry_run, options, output) = match request {
            Request::Status { output } => {
                return match StatusReport::of(&self.state, config.safety.failure_quarantine_after) {
                    Ok(report) => Response {
                        code: 0,
                        stdout: cli::render_status(&report, *output),
                        stderr: String::new(),
                    },
                    Err(error) => Response::failure(1, &error.to_string()),
                };
            }
            Request::Preview {
                user,
                apply,
                output,
            } => {
                let _busy = Busy::start(&self.shared);
                let mut out = String::new();
                let result =
                    cli::preview_to(config, Some(&self.state), user, *apply, *output, &mut out)
                        .await;
                if *apply {
                    publish_status(&self.shared, &self.state, config);
                }
                return match result {
                    Ok(code) => Response {
                        code,
                        stdout: out,
                        stderr: String::new(),
                    },
                    Err(failure) => Response {
                        stdout: out,
                        ..Response::failure(failure.code, &failure.message)
                    },
                };
            }
            Request::Sync {
                dry_run,
                full,
                allow_deactivations,
                output,
            } => {
                let release = if *allow_deactivations {
                    approved()
                } else {
                    Release::Nothing
                };
                let options = Options {
                    mode: Mode::Apply,
                    full: *full || *allow_deactivations,
                    release,
                };
                (*dry_run, options, *output)
            }
            Request::Approve { dry_run, output } => {
                let options = Options {
                    mode: Mode::Apply,
                    full: true,
                    release: approved(),
                };
                (*dry_run, options, *output)
            }
        };
        // `approve` with nothing pending has nothing to run for (a `sync` still runs).
        if let (Request::Approve { .. }, Release::Pending(keys)) = (request, &options.release)
            && keys.is_empty()
        {
            return Response {
                code: 0,
                stdout: cli::nothing_to_approve(output),
                stderr: String::new(),
            };
        }
        let result = if dry_run {
            let _busy = Busy::start(&self.shared);
            let options = Options {
                mode: Mode::DryRun,
                ..options
            };
            Some(sync::run_once(config, Some(&self.state), options, &self.shutdown, &|_| {}).await)
        } else {
            self.apply_run(config, options).await
        };
        match result {
            Some(Ok(outcome)) => {
                let mut out = Vec::new();
                match cli::write_report(&outcome, output, &mut out) {
                    Ok(()) => Response {
                        code: outcome.exit_code(),
                        stdout: String::from_utf8_lossy(&out).into_owned(),
                        stderr: String::new(),
                    },
                    Err(error) => {
                        Response::failure(1, &format!("cannot write the report: {error}"))
                    }
                }
            }
            Some(Err(error)) => {
                let failure = cli::Failure::from(error);
                Response::failure(failure.code, &failure.message)
            }
            None => Response::failure(1, "the daemon is shutting down; the run was cut short"),
        }
    }
}

/// Marks the daemon busy (a run or a served request is going) for the watchdog and `/livez`
/// while it lives.
struct Busy<'a>(&'a Shared);

impl<'a> Busy<'a> {
    fn start(shared: &'a Shared) -> Busy<'a> {
        crate::progress::beat();
        shared.running.store(true, Ordering::Relaxed);
        Busy(shared)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        crate::progress::beat();
        self.0.running.store(false, Ordering::Relaxed);
    }
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
    full: bool,
    started: chrono::DateTime<Utc>,
    finished: chrono::DateTime<Utc>,
    error: String,
) -> RunSummary {
    RunSummary {
        outcome: "failed".into(),
        full,
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
    let app = observability::router(shared, observability::StatusRoute::for_address(address));
    Ok(tracker.spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(message = "The HTTP endpoint failed.", %error);
        }
    }))
}

/// Pings systemd's watchdog at half its interval, but only while the daemon makes progress
/// (idle between runs, or a run whose last progress is younger than the interval,
/// [`Shared::is_live`]): a run stuck without progress for the interval stops the pings, and
/// systemd restarts the service.
fn start_watchdog(
    tracker: &TaskTracker,
    shutdown: CancellationToken,
    shared: Arc<Shared>,
    interval: Option<Duration>,
) {
    let Some(interval) = interval else {
        return;
    };
    let period = interval / 2;
    tracker.spawn(async move {
        let mut ticker = tokio::time::interval(period);
        let mut withheld = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    if shared.is_live() {
                        withheld = false;
                        notify(&[sd_notify::NotifyState::Watchdog]);
                    } else if !withheld {
                        withheld = true;
                        tracing::error!(
                            message = "The run has made no progress for the watchdog interval; no longer feeding the watchdog.",
                            interval_seconds = interval.as_secs_f64()
                        );
                    }
                }
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
