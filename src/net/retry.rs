//! Retry policy shared by every HTTP client in the crate.
//!
//! [`classify_status`] decides whether a response is final, worth retrying,
//! or a permanent failure, and extracts the server's `Retry-After` hint with
//! [`parse_retry_after`]. [`Backoff`] turns a retry number and an optional
//! hint into a delay, using capped exponential backoff with *equal jitter*.
//! [`retry`] runs an async attempt in a loop under that policy. Everything
//! sleeps with `tokio::time::sleep`, so tests can run under tokio's paused
//! clock. Nothing here depends on a particular HTTP client or error type
//! beyond the `StatusCode` and `HeaderMap` types that `reqwest` re-exports.

use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

/// The longest delay that a `Retry-After` header can ask for; longer values are cut to it.
pub const MAX_RETRY_AFTER: Duration = Duration::from_hours(1);

/// The longest one rate-limit wait may last, on every edge: a server that asks for more (a
/// `Retry-After`, an Okta reset) fails the run, with the time it named, and the next tick tries
/// again, rather than holding the run — and the daemon's progress — for longer.
pub const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(15 * 60);

/// When a server asks for a wait longer than [`MAX_RATE_LIMIT_WAIT`]: why the run stops, with
/// the time the server named (for the error's message).
#[must_use]
pub fn wait_too_long(wait: Duration, now: SystemTime) -> Option<String> {
    if wait <= MAX_RATE_LIMIT_WAIT {
        return None;
    }
    let until = chrono::DateTime::<chrono::Utc>::from(now + wait);
    Some(format!(
        "it asks to wait {} s, until {} — longer than the 15 minutes one rate-limit wait may last, so the run stops here and is tried again at the next scheduled run",
        wait.as_secs(),
        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ))
}

/// Logs one retry of a request at warn level: every edge's `on_retry` (`edge` names the
/// service, e.g. "Okta"; `url` is the request as shown, without secrets).
pub fn log_retry(
    edge: &str,
    method: &reqwest::Method,
    url: &str,
    retry: u32,
    delay: Duration,
    error: &dyn std::fmt::Display,
) {
    tracing::warn!(
        message = %format_args!("Retrying {edge} request."),
        method = %method,
        url,
        retry,
        delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
        %error
    );
}

/// How the client should treat the outcome of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The response is final; the caller decides what its status means.
    Done,
    /// The request may be retried, after the server-provided delay if there is one.
    RetryAfter(Option<Duration>),
    /// The request failed permanently and retrying it cannot help.
    Fail,
}

/// Classifies a response status for retrying.
///
/// * 429 Too Many Requests and every 5xx status except those below are
///   retriable. The `Retry-After` header is honoured whenever it is present
///   and valid; in practice servers send it with 429 and 503.
/// * 501 Not Implemented and 505 HTTP Version Not Supported are permanent
///   server errors, as is any status of 600 or above: [`Verdict::Fail`].
/// * Every other status (1xx, 2xx, 3xx and 4xx other than 429) is
///   [`Verdict::Done`]; the caller decides what it means.
#[must_use]
pub fn classify_status(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Verdict {
    let retriable = status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error()
            && status != StatusCode::NOT_IMPLEMENTED
            && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED);
    if retriable {
        let hint = headers
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, now));
        Verdict::RetryAfter(hint)
    } else if status.as_u16() >= 500 {
        Verdict::Fail
    } else {
        Verdict::Done
    }
}

/// Parses a `Retry-After` header value into a delay from `now`.
///
/// Accepts a whole number of seconds (`"120"`), a decimal number of seconds
/// (`"2.128"`, which some rate limiters send although RFC 9110 does not
/// allow it), or an HTTP date in any of the three formats of RFC 9110. A
/// date, which has one-second resolution, is taken relative to `now`; a date
/// in the past gives a zero delay. Surrounding whitespace is ignored. Anything else, including
/// negative numbers, signs, exponents and empty values, gives `None`. The
/// result never exceeds [`MAX_RETRY_AFTER`].
#[must_use]
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if value.starts_with(|c: char| c.is_ascii_digit()) {
        parse_seconds(value)?
    } else {
        let date = httpdate::parse_http_date(value).ok()?;
        date.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Parses `digits` or `digits.digits` as a number of seconds, saturating on overflow.
fn parse_seconds(value: &str) -> Option<Duration> {
    let (whole, fraction) = match value.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (value, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || !fraction.is_none_or(all_digits) {
        return None;
    }
    // Only digits remain, so parsing can fail only by overflowing, which
    // saturates because the result is capped anyway.
    let secs = whole.parse::<u64>().unwrap_or(u64::MAX);
    let nanos = fraction.map_or(0, |fraction| {
        // Digits past the ninth are below a nanosecond and are dropped.
        let digits = fraction.get(..9).unwrap_or(fraction);
        let scale = 10u32.pow(9u32.saturating_sub(u32::try_from(digits.len()).unwrap_or(9)));
        digits.parse::<u32>().unwrap_or(0).saturating_mul(scale)
    });
    Some(Duration::new(secs, nanos))
}

/// Capped exponential backoff with equal jitter, and a bound on the number of retries.
///
/// Equal jitter keeps half of the exponential delay and randomises the other
/// half, so a retry never comes sooner than half the nominal delay (unlike
/// full jitter, which can retry almost at once and hit a server that has just
/// asked us to slow down) while concurrent clients still spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The nominal delay before the first retry.
    base: Duration,
    /// The cap on the nominal exponential delay.
    max: Duration,
    /// How many retries follow the first attempt at most.
    max_retries: u32,
    /// The cap on a server-provided delay.
    max_hint: Duration,
}

impl Backoff {
    /// Creates a policy whose nominal delay before retry `n` is
    /// `base * 2^(n - 1)`, capped at `max`, with at most `max_retries` retries
    /// after the first attempt. Server hints are capped at [`MAX_RETRY_AFTER`].
    #[must_use]
    pub fn new(base: Duration, max: Duration, max_retries: u32) -> Self {
        Self {
            base,
            max,
            max_retries,
            max_hint: MAX_RETRY_AFTER,
        }
    }

    /// Returns the policy with server-provided delays capped at `max_hint`
    /// instead of [`MAX_RETRY_AFTER`].
    ///
    /// A job that would rather retry sooner than wait up to an hour on a
    /// misbehaving server can lower the cap here.
    #[must_use]
    pub fn with_max_hint(self, max_hint: Duration) -> Self {
        Self { max_hint, ..self }
    }

    /// Returns the delay before retry number `attempt`, counted from 1.
    ///
    /// A `server_hint` (from `Retry-After`) wins when present and is used
    /// exactly, without jitter, capped only by the hint cap (see
    /// [`Backoff::with_max_hint`]); the limiter already spreads out the
    /// retried requests. Otherwise the nominal delay
    /// `min(base * 2^(attempt - 1), max)` gets equal jitter: the result lies
    /// uniformly in `[nominal / 2, nominal]`. An `attempt` of 0 is treated as 1.
    #[must_use]
    pub fn delay(&self, attempt: u32, server_hint: Option<Duration>) -> Duration {
        if let Some(hint) = server_hint {
            return hint.min(self.max_hint);
        }
        let nominal = self.nominal_delay(attempt);
        let half = nominal / 2;
        let spread = u64::try_from(nominal.saturating_sub(half).as_nanos()).unwrap_or(u64::MAX);
        half.saturating_add(Duration::from_nanos(rand::rng().random_range(0..=spread)))
    }

    /// Returns the un-jittered delay `min(base * 2^(attempt - 1), max)`.
    fn nominal_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1);
        2u32.checked_pow(exponent)
            .and_then(|factor| self.base.checked_mul(factor))
            .unwrap_or(Duration::MAX)
            .min(self.max)
    }

    /// Returns how many retries follow the first attempt at most.
    #[must_use]
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }
}

/// The failed outcome of one attempt, as reported to [`retry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt<E> {
    /// The attempt failed in a way that a later attempt may not.
    Retry {
        /// What went wrong; returned to the caller if retries run out.
        error: E,
        /// The server-provided delay before the next attempt, if any.
        after: Option<Duration>,
    },
    /// The attempt failed permanently; no retry is made.
    Fatal(E),
}

impl<E> Attempt<E> {
    /// Builds the failure for a [`Verdict`]: [`Verdict::RetryAfter`] becomes
    /// [`Attempt::Retry`] and anything else becomes [`Attempt::Fatal`].
    ///
    /// Callers usually handle [`Verdict::Done`] themselves before getting
    /// here; if they pass it anyway, the error is treated as final.
    #[must_use]
    pub fn from_verdict(verdict: Verdict, error: E) -> Self {
        match verdict {
            Verdict::RetryAfter(after) => Attempt::Retry { error, after },
            Verdict::Done | Verdict::Fail => Attempt::Fatal(error),
        }
    }

    /// Returns the error carried by either variant.
    #[must_use]
    pub fn into_error(self) -> E {
        match self {
            Attempt::Retry { error, .. } | Attempt::Fatal(error) => error,
        }
    }
}

/// Runs `attempt` until it succeeds, fails fatally, or retries run out.
///
/// Before each retry it calls `on_retry(retry_no, delay, &error)`, where
/// `retry_no` counts retries from 1 and `error` is the failure being retried,
/// so that the caller can log or count it. It then sleeps for `delay` with
/// [`crate::progress::sleep`] (a deliberate wait, which feeds the progress heartbeat). Every
/// attempt's end, answered or failed, beats the heartbeat too.
///
/// Anything that should happen once per attempt, such as taking a
/// [`Limiter`](super::limiter::Limiter) permit, belongs inside `attempt`, so
/// that every retry waits for its own permit.
///
/// # Errors
///
/// Returns the error of an [`Attempt::Fatal`] outcome at once, or the error
/// of the last attempt once [`Backoff::max_retries`] retries have all failed.
pub async fn retry<T, E, F, Fut>(
    backoff: &Backoff,
    mut attempt: F,
    mut on_retry: impl FnMut(u32, Duration, &E),
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Attempt<E>>>,
{
    let mut retries = 0u32;
    loop {
        let outcome = attempt().await;
        // An answer, or a failure by the request's timeout, is progress (the watchdog's rule).
        crate::progress::request_answered();
        match outcome {
            Ok(value) => return Ok(value),
            Err(Attempt::Fatal(error)) => return Err(error),
            Err(Attempt::Retry { error, after }) => {
                if retries >= backoff.max_retries() {
                    return Err(error);
                }
                retries += 1;
                let delay = backoff.delay(retries, after);
                on_retry(retries, delay, &error);
                crate::progress::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    /// A fixed "now" with no sub-second part, so that HTTP dates compare exactly.
    fn fixed_now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn headers_with_retry_after(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_str(value).expect("test header values are valid"),
        );
        headers
    }

    #[test]
    fn parses_integer_and_fractional_seconds() {
        let now = fixed_now();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("2.128", now),
            Some(Duration::from_millis(2128))
        );
        assert_eq!(
            parse_retry_after("2.5", now),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            parse_retry_after("0.0000000019", now),
            Some(Duration::from_nanos(1))
        );
    }

    #[test]
    fn parses_http_dates_relative_to_now() {
        let now = fixed_now();
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        // The obsolete RFC 850 and asctime formats are accepted too.
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after(
                "Sun Nov  6 08:49:37 1994",
                SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_770)
            ),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn rejects_garbage() {
        let now = fixed_now();
        for value in [
            "",
            " ",
            "-5",
            "+5",
            "1e3",
            "2.",
            ".5",
            "1.2.3",
            "NaN",
            "inf",
            "soon",
            "5 s",
            "Mon, 32 Foo 2024 99:99:99 GMT",
        ] {
            assert_eq!(parse_retry_after(value, now), None, "{value:?}");
        }
    }

    #[test]
    fn caps_absurd_delays() {
        let now = fixed_now();
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
        let far = httpdate::fmt_http_date(now + Duration::from_secs(10 * 86_400));
        assert_eq!(parse_retry_after(&far, now), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn classifies_statuses() {
        let now = fixed_now();
        let none = HeaderMap::new();
        let hinted = headers_with_retry_after("3");
        let three = Some(Duration::from_secs(3));

        for code in [200, 201, 204, 301, 304, 400, 401, 403, 404, 409, 412] {
            let status = StatusCode::from_u16(code).expect("valid status");
            assert_eq!(
                classify_status(status, &hinted, now),
                Verdict::Done,
                "{code}"
            );
        }
        assert_eq!(
            classify_status(StatusCode::TOO_MANY_REQUESTS, &hinted, now),
            Verdict::RetryAfter(three)
        );
        assert_eq!(
            classify_status(StatusCode::SERVICE_UNAVAILABLE, &hinted, now),
            Verdict::RetryAfter(three)
        );
        assert_eq!(
            classify_status(StatusCode::TOO_MANY_REQUESTS, &none, now),
            Verdict::RetryAfter(None)
        );
        assert_eq!(
            classify_status(
                StatusCode::TOO_MANY_REQUESTS,
                &headers_with_retry_after("later"),
                now
            ),
            Verdict::RetryAfter(None)
        );
        for code in [500, 502, 504, 599] {
            let status = StatusCode::from_u16(code).expect("valid status");
            assert_eq!(
                classify_status(status, &none, now),
                Verdict::RetryAfter(None),
                "{code}"
            );
        }
        for code in [501, 505, 600, 999] {
            let status = StatusCode::from_u16(code).expect("valid status");
            assert_eq!(
                classify_status(status, &hinted, now),
                Verdict::Fail,
                "{code}"
            );
        }
    }

    #[test]
    fn delays_grow_exponentially_within_jitter_bounds() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 10);
        for attempt in 1..=10u32 {
            let nominal =
                Duration::from_millis(100 * 2u64.pow(attempt - 1)).min(Duration::from_secs(5));
            let delays: Vec<Duration> = (0..200).map(|_| backoff.delay(attempt, None)).collect();
            for delay in &delays {
                assert!(
                    *delay >= nominal / 2 && *delay <= nominal,
                    "retry {attempt}: {delay:?} outside [{:?}, {nominal:?}]",
                    nominal / 2
                );
            }
            // The jitter really varies the delay.
            assert!(delays.iter().any(|d| *d != delays[0]), "retry {attempt}");
        }
        // Attempt zero is treated as the first retry, and huge attempts saturate at the cap.
        assert!(backoff.delay(0, None) <= Duration::from_millis(100));
        assert!(backoff.delay(u32::MAX, None) >= Duration::from_millis(2500));
        assert_eq!(
            Backoff::new(Duration::ZERO, Duration::ZERO, 1).delay(3, None),
            Duration::ZERO
        );
    }

    #[test]
    fn server_hint_wins_but_is_capped() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 3);
        assert_eq!(
            backoff.delay(1, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(backoff.delay(1, Some(Duration::ZERO)), Duration::ZERO);
        assert_eq!(
            backoff.delay(1, Some(Duration::from_secs(86_400))),
            MAX_RETRY_AFTER
        );
        let strict = backoff.with_max_hint(Duration::from_secs(10));
        assert_eq!(
            strict.delay(1, Some(Duration::from_secs(30))),
            Duration::from_secs(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_exactly() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 3);
        let calls = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let result: Result<&str, &str> = retry(
            &backoff,
            || {
                let calls = Arc::clone(&calls);
                async move {
                    let mut calls = calls.lock().expect("the lock is not poisoned");
                    calls.push(start.elapsed());
                    if calls.len() == 1 {
                        let headers = headers_with_retry_after("2.5");
                        let verdict =
                            classify_status(StatusCode::TOO_MANY_REQUESTS, &headers, fixed_now());
                        assert_eq!(
                            verdict,
                            Verdict::RetryAfter(Some(Duration::from_millis(2500)))
                        );
                        Err(Attempt::from_verdict(verdict, "429"))
                    } else {
                        Ok("ok")
                    }
                }
            },
            |_, _, _| {},
        )
        .await;
        assert_eq!(result, Ok("ok"));
        let calls = calls.lock().expect("the lock is not poisoned").clone();
        assert_eq!(calls, vec![Duration::ZERO, Duration::from_millis(2500)]);
    }

    #[tokio::test(start_paused = true)]
    async fn http_date_retry_after_is_honoured() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 3);
        let now = fixed_now();
        let headers =
            headers_with_retry_after(&httpdate::fmt_http_date(now + Duration::from_secs(7)));
        let start = Instant::now();
        let mut calls = 0;
        let result: Result<u32, ()> = retry(
            &backoff,
            || {
                calls += 1;
                let verdict = classify_status(StatusCode::SERVICE_UNAVAILABLE, &headers, now);
                let done = calls > 1;
                async move {
                    if done {
                        Ok(7)
                    } else {
                        Err(Attempt::from_verdict(verdict, ()))
                    }
                }
            },
            |_, _, _| {},
        )
        .await;
        assert_eq!(result, Ok(7));
        assert_eq!(start.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_retries_with_the_last_error() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 4);
        let mut attempts = 0u32;
        let mut retries = Vec::new();
        let start = Instant::now();
        let result: Result<(), u32> = retry(
            &backoff,
            || {
                attempts += 1;
                let n = attempts;
                async move {
                    Err(Attempt::Retry {
                        error: n,
                        after: None,
                    })
                }
            },
            |retry_no, delay, error: &u32| retries.push((retry_no, delay, *error)),
        )
        .await;
        let elapsed = start.elapsed();

        assert_eq!(result, Err(5), "four retries follow the first attempt");
        assert_eq!(attempts, 5);
        let numbers: Vec<(u32, u32)> = retries.iter().map(|(n, _, e)| (*n, *e)).collect();
        assert_eq!(numbers, vec![(1, 1), (2, 2), (3, 3), (4, 4)]);
        // Nominal delays are 100, 200, 400 and 800 ms, each jittered into [half, full].
        for (n, delay, _) in &retries {
            let nominal = Duration::from_millis(100 * 2u64.pow(n - 1));
            assert!(
                *delay >= nominal / 2 && *delay <= nominal,
                "retry {n}: {delay:?}"
            );
        }
        let slept: Duration = retries.iter().map(|(_, d, _)| *d).sum();
        // Tokio rounds each sleep up to the next millisecond.
        assert!(elapsed >= slept && elapsed <= slept + Duration::from_millis(4));
        assert!(elapsed >= Duration::from_millis(750) && elapsed <= Duration::from_millis(1504));
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_stops_at_once() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 5);
        let mut attempts = 0;
        let mut retried = false;
        let start = Instant::now();
        let result: Result<(), &str> = retry(
            &backoff,
            || {
                attempts += 1;
                async { Err(Attempt::Fatal("bad request")) }
            },
            |_, _, _| retried = true,
        )
        .await;
        assert_eq!(result, Err("bad request"));
        assert_eq!(attempts, 1);
        assert!(!retried);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_max_retries_makes_one_attempt() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 0);
        let mut attempts = 0;
        let result: Result<(), &str> = retry(
            &backoff,
            || {
                attempts += 1;
                async {
                    Err(Attempt::Retry {
                        error: "busy",
                        after: None,
                    })
                }
            },
            |_, _, _| {},
        )
        .await;
        assert_eq!(result, Err("busy"));
        assert_eq!(attempts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn each_retry_takes_a_new_limiter_permit() {
        use super::super::limiter::Limiter;

        // One request per second with no burst: the retry after a zero
        // Retry-After must still wait for its own rate permit.
        let limiter = Limiter::new(1.0, 1, 1);
        let backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1), 3);
        let start = Instant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let starts = Arc::clone(&starts);
            // Spawning proves that the retry future is `Send`.
            tokio::spawn(async move {
                retry(
                    &backoff,
                    || {
                        let limiter = limiter.clone();
                        let starts = Arc::clone(&starts);
                        async move {
                            let _permit = limiter.acquire().await;
                            let mut starts = starts.lock().expect("the lock is not poisoned");
                            starts.push(start.elapsed());
                            if starts.len() < 3 {
                                Err(Attempt::Retry {
                                    error: "busy",
                                    after: Some(Duration::ZERO),
                                })
                            } else {
                                Ok(())
                            }
                        }
                    },
                    |_, _, _| {},
                )
                .await
            })
        };
        let result = task.await.expect("the task does not panic");
        assert_eq!(result, Ok(()));
        let starts = starts.lock().expect("the lock is not poisoned").clone();
        assert_eq!(
            starts,
            vec![
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(2)
            ]
        );
    }

    #[test]
    fn a_wait_longer_than_fifteen_minutes_names_its_end() {
        let now = fixed_now();
        assert_eq!(wait_too_long(MAX_RATE_LIMIT_WAIT, now), None);
        let why = wait_too_long(Duration::from_secs(3600), now).expect("too long");
        assert!(why.contains("3600 s"), "{why}");
        assert!(why.contains("2025-06-15T16:06:40Z"), "{why}");
    }
}
