//! A single client-side limiter for every request sent to the target system.
//!
//! [`Limiter`] combines two independent bounds: a request *rate* enforced with
//! the GCRA algorithm from the `governor` crate, and a maximum number of
//! requests *in flight*, enforced with a tokio [`Semaphore`]. With a rate of
//! `R` requests per second and a burst of `B`, no one-second window holds more
//! than `R + B` request starts, and `N` requests take about `(N - B) / R`
//! seconds. All waiting is done with `tokio::time`, so the limiter behaves
//! deterministically under tokio's paused test clock
//! (`#[tokio::test(start_paused = true)]`). It deliberately avoids governor's
//! `until_ready`, which sleeps on the real clock through `futures-timer`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slowest rate that [`Limiter::new`] accepts; smaller or invalid rates are raised to it.
///
/// One request per day is far slower than any real deployment would configure,
/// and keeps the GCRA period well inside the range that `Duration` and
/// governor's nanosecond counters can represent.
pub const MIN_REQUESTS_PER_SECOND: f64 = 1.0 / 86_400.0;

/// A governor clock that reads tokio's clock, so that paused test time applies to it.
///
/// Governor needs a `Reference` type for its instants. The orphan rule forbids
/// implementing governor's `Reference` trait for `tokio::time::Instant`
/// directly, so the clock reports the time elapsed since its own origin as a
/// `Duration`, for which governor already implements `Reference`. Unlike
/// adding to an `Instant`, this arithmetic cannot overflow or panic.
#[derive(Debug, Clone, Copy)]
struct TokioClock {
    /// The tokio instant that the clock's readings are measured from.
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// Creates a clock whose zero is the current tokio time.
    fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        // Tokio's `elapsed` saturates at zero rather than panicking.
        self.origin.elapsed()
    }
}

/// The concrete governor limiter type used inside [`Limiter`].
type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// The reasons [`Limiter::try_new`] rejects a configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LimiterConfigError {
    /// The rate was not a finite number of at least [`MIN_REQUESTS_PER_SECOND`].
    InvalidRate(f64),
    /// The burst was zero.
    ZeroBurst,
    /// The in-flight bound was zero or above [`Semaphore::MAX_PERMITS`].
    InvalidMaxInFlight(usize),
}

impl std::fmt::Display for LimiterConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidRate(rate) => write!(
                f,
                "requests per second must be a finite number of at least {MIN_REQUESTS_PER_SECOND}, got {rate}"
            ),
            Self::ZeroBurst => write!(f, "burst must be at least 1"),
            Self::InvalidMaxInFlight(n) => write!(
                f,
                "max in-flight requests must be between 1 and {}, got {n}",
                Semaphore::MAX_PERMITS
            ),
        }
    }
}

impl std::error::Error for LimiterConfigError {}

/// The shared state behind every clone of a [`Limiter`].
#[derive(Debug)]
struct Inner {
    /// The GCRA rate limiter, or `None` for a limiter that only bounds concurrency.
    rate: Option<DirectLimiter>,
    /// The clock the rate limiter reads; it is also used to compute sleep durations.
    clock: TokioClock,
    /// One permit per request that may be in flight at once.
    slots: Arc<Semaphore>,
    /// How many acquisitions had to wait for a rate permit at least once.
    wait_count: AtomicU64,
    /// The total time, in nanoseconds, that acquisitions spent waiting for rate permits.
    wait_nanos: AtomicU64,
}

/// Limits both the request rate and the number of requests in flight.
///
/// Cloning is cheap and every clone shares the same budget, so one `Limiter`
/// should be created per target system and handed to every task that talks to
/// it.
#[derive(Debug, Clone)]
pub struct Limiter {
    /// The state shared by all clones.
    inner: Arc<Inner>,
}

/// Proof that a request may start now; it holds one in-flight slot until dropped.
///
/// Keep the permit alive for as long as the request is in flight (until its
/// response body has been read) and drop it afterwards.
#[derive(Debug)]
#[must_use = "the in-flight slot is released as soon as the permit is dropped"]
pub struct Permit {
    /// The semaphore permit that represents the in-flight slot.
    _slot: OwnedSemaphorePermit,
}

impl Limiter {
    /// Creates a limiter allowing `requests_per_second` requests per second on
    /// average, bursts of up to `burst` requests, and at most `max_in_flight`
    /// concurrent requests.
    ///
    /// The parameters should satisfy `requests_per_second > 0`, `burst >= 1`
    /// and `max_in_flight >= 1`; use [`Limiter::try_new`] to reject anything
    /// else. This constructor never panics: it logs a warning and clamps an
    /// invalid value to the nearest valid one, with a rate that is not a
    /// number treated as [`MIN_REQUESTS_PER_SECOND`].
    #[must_use]
    pub fn new(requests_per_second: f64, burst: u32, max_in_flight: usize) -> Limiter {
        match Self::try_new(requests_per_second, burst, max_in_flight) {
            Ok(limiter) => limiter,
            Err(error) => {
                tracing::warn!(%error, "invalid limiter configuration; clamping to valid values");
                let rate = if requests_per_second.is_nan() {
                    MIN_REQUESTS_PER_SECOND
                } else {
                    requests_per_second.max(MIN_REQUESTS_PER_SECOND)
                };
                let quota = rate.is_finite().then(|| quota_for(rate, burst.max(1)));
                Self::build(quota, max_in_flight.clamp(1, Semaphore::MAX_PERMITS))
            }
        }
    }

    /// Creates a limiter like [`Limiter::new`], but returns an error instead
    /// of clamping when a parameter is out of range.
    ///
    /// An infinite rate is accepted and behaves like [`Limiter::unlimited`].
    ///
    /// # Errors
    ///
    /// Returns a [`LimiterConfigError`] naming the first parameter that is
    /// out of range.
    pub fn try_new(
        requests_per_second: f64,
        burst: u32,
        max_in_flight: usize,
    ) -> Result<Limiter, LimiterConfigError> {
        if requests_per_second.is_nan() || requests_per_second < MIN_REQUESTS_PER_SECOND {
            return Err(LimiterConfigError::InvalidRate(requests_per_second));
        }
        if burst == 0 {
            return Err(LimiterConfigError::ZeroBurst);
        }
        if max_in_flight == 0 || max_in_flight > Semaphore::MAX_PERMITS {
            return Err(LimiterConfigError::InvalidMaxInFlight(max_in_flight));
        }
        // An infinite rate skips governor entirely: a one-nanosecond period
        // would still make callers sleep, and tokio rounds every sleep up to
        // a whole millisecond.
        let quota = requests_per_second
            .is_finite()
            .then(|| quota_for(requests_per_second, burst));
        Ok(Self::build(quota, max_in_flight))
    }

    /// Creates a limiter that never waits for the rate but still allows at
    /// most `max_in_flight` concurrent requests; meant for benchmarks and tests.
    ///
    /// A `max_in_flight` of zero is raised to one, so that callers can never
    /// deadlock on an empty semaphore.
    #[must_use]
    pub fn unlimited(max_in_flight: usize) -> Limiter {
        Self::build(None, max_in_flight.clamp(1, Semaphore::MAX_PERMITS))
    }

    /// Assembles a limiter from an already validated quota and in-flight bound.
    fn build(quota: Option<Quota>, max_in_flight: usize) -> Limiter {
        let clock = TokioClock::new();
        let rate = quota.map(|quota| RateLimiter::direct_with_clock(quota, clock));
        Limiter {
            inner: Arc::new(Inner {
                rate,
                clock,
                slots: Arc::new(Semaphore::new(max_in_flight)),
                wait_count: AtomicU64::new(0),
                wait_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Waits until a request may start: first for a free in-flight slot, then
    /// for a rate permit. The returned [`Permit`] frees the slot when dropped.
    ///
    /// The future is cancel-safe: dropping it while it waits gives back the
    /// slot and consumes no rate permit.
    ///
    /// # Panics
    ///
    /// Never in practice: the only failure, a closed semaphore, cannot
    /// happen because the limiter never closes it.
    pub async fn acquire(&self) -> Permit {
        // The slot is taken before the rate permit. A rate permit marks the
        // moment a request starts, so it must be spent only when the request
        // can really start. Taking it first and then queueing for a slot would
        // let permits pile up while every slot is busy, and the queued
        // requests would then start together as slots free up, breaking the
        // promise of at most `R + B` starts per second. This order also bounds
        // the number of tasks polling the rate limiter by `max_in_flight`, and
        // the semaphore's FIFO queue keeps waiting requests fair. The cost is
        // that a slot may sit idle during the rate wait, which only matters
        // when the in-flight bound, not the rate, is the binding limit.
        let slot = Arc::clone(&self.inner.slots)
            .acquire_owned()
            .await
            .expect("the limiter never closes its semaphore");

        if let Some(rate) = &self.inner.rate {
            let mut waited_since = None;
            loop {
                match rate.check() {
                    Ok(()) => break,
                    Err(not_until) => {
                        let now = self.inner.clock.now();
                        waited_since.get_or_insert(now);
                        // A deliberate rate-limit wait: progress for the watchdog.
                        crate::progress::sleep(not_until.wait_time_from(now)).await;
                    }
                }
            }
            if let Some(started) = waited_since {
                let waited = self.inner.clock.now().saturating_sub(started);
                let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX);
                self.inner.wait_count.fetch_add(1, Ordering::Relaxed);
                self.inner.wait_nanos.fetch_add(nanos, Ordering::Relaxed);
            }
        }

        Permit { _slot: slot }
    }

    /// Returns how many acquisitions had to wait for a rate permit, and the
    /// total time they spent waiting for it.
    ///
    /// Time spent waiting for an in-flight slot is not included. An
    /// acquisition counts once however many times it had to sleep, and only
    /// after it has obtained its permit.
    #[must_use]
    pub fn waits(&self) -> (u64, Duration) {
        let count = self.inner.wait_count.load(Ordering::Relaxed);
        let nanos = self.inner.wait_nanos.load(Ordering::Relaxed);
        (count, Duration::from_nanos(nanos))
    }
}

/// Builds the GCRA quota for a finite rate and a burst that have already been validated.
///
/// The replenishment period is `1 / requests_per_second`, never shorter than
/// the one nanosecond that governor requires.
fn quota_for(requests_per_second: f64, burst: u32) -> Quota {
    let period = Duration::try_from_secs_f64(1.0 / requests_per_second)
        .unwrap_or(Duration::MAX)
        .max(Duration::from_nanos(1));
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .expect("the period is at least one nanosecond")
        .allow_burst(burst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::time::Instant;

    /// Returns the largest number of instants in any half-open window
    /// `[t, t + window)` that starts at one of the instants.
    fn max_in_window(starts: &[Instant], window: Duration) -> usize {
        let mut sorted = starts.to_vec();
        sorted.sort();
        (0..sorted.len())
            .map(|i| {
                sorted[i..]
                    .iter()
                    .take_while(|t| **t < sorted[i] + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Asserts that `actual` lies within `fraction` of `expected`.
    fn assert_close(actual: Duration, expected: Duration, fraction: f64) {
        let diff = actual.abs_diff(expected).as_secs_f64();
        assert!(
            diff <= expected.as_secs_f64() * fraction,
            "elapsed {actual:?}, expected {expected:?} within {}%",
            fraction * 100.0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sequential_requests_respect_rate_and_burst() {
        let limiter = Limiter::new(5.0, 5, 100);
        let start = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..100 {
            let _permit = limiter.acquire().await;
            starts.push(Instant::now());
        }
        let elapsed = start.elapsed();

        assert!(max_in_window(&starts, Duration::from_secs(1)) <= 10);
        assert_close(elapsed, Duration::from_secs(19), 0.05);
        // With a 200 ms period, every wait lands exactly on a millisecond tick.
        assert_eq!(elapsed, Duration::from_secs(19));
        assert_eq!(limiter.waits(), (95, Duration::from_secs(19)));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_respect_rate_and_burst() {
        let limiter = Limiter::new(5.0, 5, 8);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = limiter.acquire().await;
                let started = Instant::now();
                tokio::time::sleep(Duration::from_millis(300)).await;
                started
            }));
        }
        let mut starts = Vec::new();
        for task in tasks {
            starts.push(task.await.expect("the task does not panic"));
        }
        let last_start = starts.iter().max().copied().unwrap_or(start);

        assert!(max_in_window(&starts, Duration::from_secs(1)) <= 10);
        assert_close(last_start - start, Duration::from_secs(19), 0.05);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_waiting_for_slots_do_not_bank_rate_permits() {
        // The first four requests hold every slot for three seconds; the
        // rest are short. If rate permits were taken before slots, the
        // queued requests would bank permits during those three seconds
        // and then start all at once when the slots free up.
        let limiter = Limiter::new(5.0, 5, 4);
        let order = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let limiter = limiter.clone();
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                let _permit = limiter.acquire().await;
                let started = Instant::now();
                let hold = if order.fetch_add(1, Ordering::SeqCst) < 4 {
                    Duration::from_secs(3)
                } else {
                    Duration::from_millis(10)
                };
                tokio::time::sleep(hold).await;
                started
            }));
        }
        let mut starts = Vec::new();
        for task in tasks {
            starts.push(task.await.expect("the task does not panic"));
        }
        assert!(max_in_window(&starts, Duration::from_secs(1)) <= 10);
    }

    #[tokio::test(start_paused = true)]
    async fn max_in_flight_is_respected() {
        let limiter = Limiter::new(1000.0, 20, 4);
        let current = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let limiter = limiter.clone();
            let current = Arc::clone(&current);
            let peak = Arc::clone(&peak);
            tasks.push(tokio::spawn(async move {
                let _permit = limiter.acquire().await;
                let now = current.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                current.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for task in tasks {
            task.await.expect("the task does not panic");
        }

        assert_eq!(peak.load(Ordering::SeqCst), 4);
        // Twenty requests of 100 ms, four at a time, take five rounds.
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_rate_works() {
        let limiter = Limiter::new(0.5, 1, 10);
        let start = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..5 {
            let _permit = limiter.acquire().await;
            starts.push(Instant::now() - start);
        }
        let expected: Vec<Duration> = (0..5).map(|i| Duration::from_secs(2 * i)).collect();
        assert_eq!(starts, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn non_integer_period_does_not_drift_with_burst() {
        // A 3 rps period (333.33 ms) is not a whole number of timer ticks.
        let limiter = Limiter::new(3.0, 2, 10);
        let start = Instant::now();
        let mut starts = Vec::new();
        for _ in 0..62 {
            let _permit = limiter.acquire().await;
            starts.push(Instant::now());
        }
        assert!(max_in_window(&starts, Duration::from_secs(1)) <= 5);
        assert_close(start.elapsed(), Duration::from_secs(20), 0.001);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn works_on_the_real_clock() {
        let limiter = Limiter::new(100.0, 5, 4);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..30 {
            let limiter = limiter.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = limiter.acquire().await;
            }));
        }
        for task in tasks {
            task.await.expect("the task does not panic");
        }
        let elapsed = start.elapsed();
        // Twenty-five requests beyond the burst at 100 rps take 250 ms; the
        // upper bound leaves room for a slow machine.
        assert!(
            elapsed >= Duration::from_millis(250) && elapsed < Duration::from_millis(750),
            "elapsed {elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits_for_rate() {
        let limiter = Limiter::unlimited(2);
        let start = Instant::now();
        for _ in 0..10_000 {
            let _permit = limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(limiter.waits(), (0, Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_still_bounds_in_flight() {
        let limiter = Limiter::unlimited(2);
        let first = limiter.acquire().await;
        let _second = limiter.acquire().await;
        let third = tokio::time::timeout(Duration::from_secs(1), limiter.acquire()).await;
        assert!(third.is_err(), "a third slot must not be granted");
        drop(first);
        let third = tokio::time::timeout(Duration::from_secs(1), limiter.acquire()).await;
        assert!(third.is_ok(), "a freed slot must be granted");
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_acquire_releases_its_slot() {
        let limiter = Limiter::new(1.0, 1, 1);
        drop(limiter.acquire().await);
        // This acquisition holds the only slot while it waits for the rate,
        // and is cancelled before the rate permit arrives.
        let cancelled = tokio::time::timeout(Duration::from_millis(500), limiter.acquire()).await;
        assert!(cancelled.is_err());
        let start = Instant::now();
        let _permit = limiter.acquire().await;
        // The cancelled call consumed no rate permit, so the next one is due
        // one second after the first.
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_configuration_is_rejected_or_clamped() {
        assert_eq!(
            Limiter::try_new(0.0, 1, 1).err(),
            Some(LimiterConfigError::InvalidRate(0.0))
        );
        assert!(matches!(
            Limiter::try_new(f64::NAN, 1, 1),
            Err(LimiterConfigError::InvalidRate(_))
        ));
        assert_eq!(
            Limiter::try_new(1.0, 0, 1).err(),
            Some(LimiterConfigError::ZeroBurst)
        );
        assert_eq!(
            Limiter::try_new(1.0, 1, 0).err(),
            Some(LimiterConfigError::InvalidMaxInFlight(0))
        );

        // Clamped limiters still work: burst and in-flight become one.
        let limiter = Limiter::new(10.0, 0, 0);
        let start = Instant::now();
        for _ in 0..3 {
            let _permit = limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(200));

        // An infinite rate never waits.
        let limiter = Limiter::new(f64::INFINITY, 1, 1);
        let start = Instant::now();
        for _ in 0..100 {
            let _permit = limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        // A negative rate is raised to the minimum and does not panic.
        let _ = Limiter::new(-1.0, 1, 1).acquire().await;
    }
}
