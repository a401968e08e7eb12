//! The daemon's HTTP endpoint (`[observability] listen`, loopback by default): `GET /healthz`
//! (200 while the last run succeeded and is recent, else 503, with a JSON body), `GET /metrics`
//! (Prometheus text), and `GET /status` (what `status` prints, as JSON).

use std::sync::{Arc, Mutex, PoisonError};

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
            "Deactivations held by the last run",
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
}

impl Shared {
    /// An empty shared record.
    pub fn new(max_age: chrono::Duration) -> Shared {
        Shared {
            metrics: Metrics::new(),
            last_run: Mutex::new(None),
            status: Mutex::new(None),
            max_age: Mutex::new(max_age),
        }
    }
}

// The locks guard plain values for the instant it takes to copy them; a poisoned lock still
// holds a usable value.
fn read<T: Clone>(lock: &Mutex<T>) -> T {
    lock.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// The health verdict at `now`: 200 while the last run succeeded (or held deactivations) and
/// is no older than `max_age`; 503 otherwise (no run yet, failed, or stale).
pub fn health(shared: &Shared, now: DateTime<Utc>) -> (StatusCode, serde_json::Value) {
    let max_age = read(&shared.max_age);
    match read(&shared.last_run) {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "starting", "detail": "no run has finished yet"}),
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
                }),
            )
        }
    }
}

/// The endpoint's routes.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(shared)
}

async fn healthz(AxumState(shared): AxumState<Arc<Shared>>) -> Response {
    let (code, body) = health(&shared, Utc::now());
    (code, axum::Json(body)).into_response()
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
        let shared = Shared::new(chrono::Duration::minutes(20));
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
