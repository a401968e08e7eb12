//! The daemon's HTTP endpoint (`[observability] listen`, loopback by default): `GET /healthz`
//! (200 while the last run succeeded and is recent, else 503, with a JSON body that also counts
//! the pending held deactivations), `GET /livez` (200 while the daemon makes progress — the
//! watchdog's rule, [`crate::progress::is_live`] — else 503, for container liveness probes),
//! `GET /metrics` (Prometheus text), and, only when `listen` is a loopback address, `GET /status`
//! (what `status` prints, as JSON; it names people, so it is always on the control socket and
//! never on an address other hosts can reach).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::json;

use crate::status::StatusReport;

/// The daemon's counters and gauges.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    runs: Family<OutcomeLabels, Counter>,
    run_duration: Histogram,
    actions: Family<ActionLabels, Counter>,
    retries: Counter,
    rate_limit_waits: Counter,
    rate_limit_wait_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    users: Family<StatusLabels, Gauge>,
    quarantined: Gauge,
    held: Gauge,
    last_run_timestamp: Gauge,
    last_success_timestamp: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    op: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// One finished run, as the metrics and `/healthz` see it.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// `ok`, `held` or `failed`.
    pub outcome: String,
    /// Whether it was a full run.
    pub full: bool,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// How long it took, in seconds.
    pub duration_seconds: f64,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `(op, result)` counts of its actions.
    #[serde(skip)]
    pub actions: Vec<(String, String, u64)>,
    /// SCIM retries during the run.
    #[serde(skip)]
    pub retries: u64,
    /// Rate-limiter waits during the run, and their total duration.
    #[serde(skip)]
    pub rate_limit_waits: (u64, f64),
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("socialtalent_sync");
        let runs = Family::<OutcomeLabels, Counter>::default();
        registry.register("runs", "Runs by outcome (ok, held, failed)", runs.clone());
        let run_duration = Histogram::new([1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0]);
        registry.register(
            "run_duration_seconds",
            "How long runs take",
            run_duration.clone(),
        );
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "actions",
            "Planned actions by kind and result (ok, failed, not_sent)",
            actions.clone(),
        );
        let retries = Counter::default();
        registry.register(
            "scim_retries",
            "Retried requests to SocialTalent",
            retries.clone(),
        );
        let rate_limit_waits = Counter::default();
        registry.register(
            "rate_limit_waits",
            "Requests that waited for the rate limiter",
            rate_limit_waits.clone(),
        );
        let rate_limit_wait_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "rate_limit_wait_seconds",
            "Time spent waiting for the rate limiter",
            rate_limit_wait_seconds.clone(),
        );
        let users = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "users",
            "Provisioned users in the state by status",
            users.clone(),
        );
        let quarantined = Gauge::default();
        registry.register(
            "quarantined_users",
            "Users quarantined after repeated failures",
            quarantined.clone(),
        );
        let held = Gauge::default();
        registry.register(
            "held_deactivations",
            "Deactivations held and pending (until released or moot)",
            held.clone(),
        );
        let last_run_timestamp = Gauge::default();
        registry.register(
            "last_run_timestamp_seconds",
            "When the last run finished (Unix time)",
            last_run_timestamp.clone(),
        );
        let last_success_timestamp = Gauge::default();
        registry.register(
            "last_success_timestamp_seconds",
            "When the last run that did not fail finished (Unix time; 0 before the first since start)",
            last_success_timestamp.clone(),
        );
        Metrics {
            registry,
            runs,
            run_duration,
            actions,
            retries,
            rate_limit_waits,
            rate_limit_wait_seconds,
            users,
            quarantined,
            held,
            last_run_timestamp,
            last_success_timestamp,
        }
    }

    /// Counts a finished run.
    pub fn record_run(&self, run: &RunSummary) {
        self.runs
            .get_or_create(&OutcomeLabels {
                outcome: run.outcome.clone(),
            })
            .inc();
        self.run_duration.observe(run.duration_seconds);
        for (op, result, count) in &run.actions {
            self.actions
                .get_or_create(&ActionLabels {
                    op: op.clone(),
                    result: result.clone(),
                })
                .inc_by(*count);
        }
        self.retries.inc_by(run.retries);
        self.rate_limit_waits.inc_by(run.rate_limit_waits.0);
        self.rate_limit_wait_seconds.inc_by(run.rate_limit_waits.1);
        self.last_run_timestamp.set(run.finished_at.timestamp());
        if run.outcome != "failed" {
            self.last_success_timestamp.set(run.finished_at.timestamp());
        }
    }

    /// Sets the gauges from a status report.
    pub fn record_status(&self, status: &StatusReport) {
        let gauge = |status: &str| {
            self.users.get_or_create(&StatusLabels {
                status: status.to_owned(),
            })
        };
        gauge("active").set(i64::try_from(status.users.active).unwrap_or(i64::MAX));
        gauge("deactivated").set(i64::try_from(status.users.deactivated).unwrap_or(i64::MAX));
        let quarantined = status
            .failing_users
            .iter()
            .filter(|u| u.quarantined)
            .count();
        self.quarantined
            .set(i64::try_from(quarantined).unwrap_or(i64::MAX));
        self.held
            .set(i64::try_from(status.held_deactivations.len()).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// What the endpoint serves, shared with the daemon loop.
#[derive(Debug)]
pub struct Shared {
    /// The metrics.
    pub metrics: Metrics,
    /// The last run, if any.
    pub last_run: Mutex<Option<RunSummary>>,
    /// The latest status report.
    pub status: Mutex<Option<StatusReport>>,
    /// How old the last run may be before `/healthz` calls it stale.
    pub max_age: Mutex<chrono::Duration>,
    /// Whether a run (or a command served for the control socket) is going.
    pub running: AtomicBool,
    /// How long a run may go without progress before `/livez` fails and the watchdog stops
    /// (the watchdog interval, else [`DEFAULT_LIVENESS_WINDOW`]).
    pub liveness_window: Duration,
}

/// The liveness window without a systemd watchdog: the packaged unit's `WatchdogSec`.
pub const DEFAULT_LIVENESS_WINDOW: Duration = Duration::from_secs(600);

impl Shared {
    /// An empty shared record.
    pub fn new(max_age: chrono::Duration, liveness_window: Duration) -> Shared {
        Shared {
            metrics: Metrics::new(),
            last_run: Mutex::new(None),
            status: Mutex::new(None),
            max_age: Mutex::new(max_age),
            running: AtomicBool::new(false),
            liveness_window,
        }
    }

    /// Whether the daemon makes progress now (the watchdog's rule).
    pub fn is_live(&self) -> bool {
        crate::progress::is_live(
            self.running.load(Ordering::Relaxed),
            crate::progress::since_last_beat(),
            self.liveness_window,
        )
    }
}

// The locks guard plain values for the instant it takes to copy them; a poisoned lock still
// holds a usable value.
fn read<T: Clone>(lock: &Mutex<T>) -> T {
    lock.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// The health verdict at `now`: 200 while the last run succeeded (or held deactivations) and
/// is no older than `max_age`; 503 otherwise (no run yet, failed, or stale). Pending held
/// deactivations are counted in the body (`held_deactivations`); they never fail it.
pub fn health(shared: &Shared, now: DateTime<Utc>) -> (StatusCode, serde_json::Value) {
    let max_age = read(&shared.max_age);
    let held = shared
        .status
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
        .map_or(0, |status| status.held_deactivations.len());
    match read(&shared.last_run) {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "starting", "detail": "no run has finished yet", "held_deactivations": held}),
        ),
        Some(run) => {
            let age = now - run.finished_at;
            let (code, status) = if run.outcome == "failed" {
                (StatusCode::SERVICE_UNAVAILABLE, "failing")
            } else if age > max_age {
                (StatusCode::SERVICE_UNAVAILABLE, "stale")
            } else {
                (StatusCode::OK, "ok")
            };
            (
                code,
                json!({
                    "status": status,
                    "last_run": run,
                    "age_seconds": age.num_seconds(),
                    "max_age_seconds": max_age.num_seconds(),
                    "held_deactivations": held,
                }),
            )
        }
    }
}

/// Whether `/status` is served on the HTTP endpoint: only on a loopback address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusRoute {
    /// Served (the endpoint listens on loopback).
    Served,
    /// Not served (others can reach the endpoint; `/status` names people).
    Hidden,
}

impl StatusRoute {
    /// `/status` for a loopback address only.
    pub fn for_address(address: std::net::SocketAddr) -> StatusRoute {
        if address.ip().is_loopback() {
            StatusRoute::Served
        } else {
            StatusRoute::Hidden
        }
    }
}

/// The endpoint's routes.
pub fn router(shared: Arc<Shared>, status_route: StatusRoute) -> Router {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/metrics", get(metrics));
    let router = match status_route {
        StatusRoute::Served => router.route("/status", get(status)),
        StatusRoute::Hidden => router,
    };
    router.with_state(shared)
}

async fn healthz(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    let (code, body) = health(&shared, Utc::now());
    (code, axum::Json(body)).into_response()
}

async fn livez(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    let window = shared.liveness_window.as_secs();
    if shared.is_live() {
        (StatusCode::OK, axum::Json(json!({"status": "live"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "status": "stuck",
                "detail": format!("a run has made no progress for {window} s or more"),
            })),
        )
            .into_response()
    }
}

async fn metrics(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.render(),
    )
        .into_response()
}

async fn status(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    match read(&shared.status) {
        Some(report) => axum::Json(report).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"detail": "the daemon is starting"})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(outcome: &str, finished_at: DateTime<Utc>) -> RunSummary {
        RunSummary {
            outcome: outcome.into(),
            full: true,
            finished_at,
            duration_seconds: 2.5,
            error: None,
            actions: vec![("create".into(), "ok".into(), 3)],
            retries: 1,
            rate_limit_waits: (2, 0.5),
        }
    }

    #[test]
    fn health_follows_the_last_run_and_its_age() {
        let shared = Shared::new(chrono::Duration::minutes(20), DEFAULT_LIVENESS_WINDOW);
        let now = Utc::now();
        assert_eq!(health(&shared, now).0, StatusCode::SERVICE_UNAVAILABLE);
        *shared.last_run.lock().expect("lock") =
            Some(run("ok", now - chrono::Duration::minutes(5)));
        let (code, body) = health(&shared, now);
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["last_run"]["outcome"], "ok");
        assert_eq!(
            health(&shared, now + chrono::Duration::minutes(30)).1["status"],
            "stale"
        );
        *shared.last_run.lock().expect("lock") = Some(run("failed", now));
        assert_eq!(health(&shared, now).1["status"], "failing");
        *shared.last_run.lock().expect("lock") = Some(run("held", now));
        assert_eq!(health(&shared, now).0, StatusCode::OK);
    }

    #[test]
    fn pending_holds_are_counted_in_the_health_body_and_never_fail_it() {
        let shared = Shared::new(chrono::Duration::minutes(20), DEFAULT_LIVENESS_WINDOW);
        let now = Utc::now();
        *shared.last_run.lock().expect("lock") = Some(run("held", now));
        let mut report = StatusReport::uninitialised(std::path::Path::new("state"));
        report.held_deactivations = vec![crate::state::HeldEntry {
            idp_id: crate::model::IdpId("E1".into()),
            user_name: "e1@example.com".into(),
            reason: "held".into(),
            scim_id: None,
            since: String::new(),
        }];
        *shared.status.lock().expect("lock") = Some(report);
        let (code, body) = health(&shared, now);
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["held_deactivations"], 1);
    }

    #[test]
    fn status_is_served_over_http_only_on_loopback() {
        let at = |text: &str| StatusRoute::for_address(text.parse().expect("address"));
        assert_eq!(at("127.0.0.1:9184"), StatusRoute::Served);
        assert_eq!(at("[::1]:9184"), StatusRoute::Served);
        assert_eq!(at("0.0.0.0:9184"), StatusRoute::Hidden);
        assert_eq!(at("10.1.2.3:9184"), StatusRoute::Hidden);
    }

    #[test]
    fn metrics_render_in_prometheus_text() {
        let metrics = Metrics::new();
        metrics.record_run(&run("ok", Utc::now()));
        let text = metrics.render();
        assert!(
            text.contains("socialtalent_sync_runs_total{outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("socialtalent_sync_actions_total{op=\"create\",result=\"ok\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("socialtalent_sync_scim_retries_total 1"),
            "{text}"
        );
        assert!(
            text.contains("socialtalent_sync_run_duration_seconds_count 1"),
            "{text}"
        );
    }

    #[test]
    fn the_last_success_ignores_failed_runs() {
        let metrics = Metrics::new();
        let text = metrics.render();
        assert!(
            text.contains("socialtalent_sync_last_success_timestamp_seconds 0"),
            "{text}"
        );
        let succeeded = Utc::now() - chrono::Duration::minutes(10);
        metrics.record_run(&run("held", succeeded));
        metrics.record_run(&run("failed", Utc::now()));
        let text = metrics.render();
        assert!(
            text.contains(&format!(
                "socialtalent_sync_last_success_timestamp_seconds {}",
                succeeded.timestamp()
            )),
            "{text}"
        );
    }
}
