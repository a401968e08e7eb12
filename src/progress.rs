//! The process's progress heartbeat, for systemd's watchdog and `/livez`. Work that moves
//! forward [`beat`]s: a request answered or failed by its timeout (every HTTP edge's retry loop),
//! a deliberate rate-limit wait (which beats while it sleeps, see [`sleep`]), a phase of a run
//! finished, a write recorded. The daemon feeds the watchdog only while the last beat is
//! recent or no run is going ([`is_live`]): a run stuck on a target that accepts connections
//! and never answers stops the pings, and systemd restarts the service.
//!
//! One heartbeat per process, like the metrics registry: every edge reaches it without a
//! handle being threaded through every client, and only the daemon reads it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The longest stretch a deliberate wait sleeps without beating.
const WAIT_BEAT: Duration = Duration::from_secs(1);

/// Milliseconds since [`origin`] at the last beat.
static LAST_BEAT_MS: AtomicU64 = AtomicU64::new(0);

/// The instant the heartbeat counts from (the first time anything looked at it).
fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn millis_since_origin(now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(origin()).as_millis()).unwrap_or(u64::MAX)
}

/// Records that work made progress now.
pub fn beat() {
    LAST_BEAT_MS.fetch_max(millis_since_origin(Instant::now()), Ordering::Relaxed);
}

/// How long ago the last beat was (since the process's first look at the heartbeat when
/// nothing has beaten yet).
pub fn since_last_beat() -> Duration {
    let now = millis_since_origin(Instant::now());
    Duration::from_millis(now.saturating_sub(LAST_BEAT_MS.load(Ordering::Relaxed)))
}

/// Sleeps for `duration` as a deliberate wait (a rate-limit reset, a `Retry-After`, a backoff):
/// waiting on purpose is progress, so it beats at least every second while it sleeps. It
/// sleeps with `tokio::time`, so it runs on paused time in tests.
pub async fn sleep(duration: Duration) {
    let deadline = tokio::time::Instant::now() + duration;
    beat();
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep((deadline - now).min(WAIT_BEAT)).await;
        beat();
    }
}

/// Sleeps until `deadline` as a deliberate wait (see [`sleep`]).
pub async fn sleep_until(deadline: tokio::time::Instant) {
    sleep(deadline.saturating_duration_since(tokio::time::Instant::now())).await;
}

/// Whether the daemon is making progress: idle between runs, or its last beat no older than
/// `window` (the watchdog interval). The watchdog's rule and `/livez`'s.
pub fn is_live(running: bool, since_last_beat: Duration, window: Duration) -> bool {
    !running || since_last_beat < window
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_is_live_and_a_run_is_live_only_while_it_beats() {
        let window = Duration::from_secs(60);
        assert!(is_live(false, Duration::from_secs(3600), window));
        assert!(is_live(true, Duration::from_secs(59), window));
        assert!(!is_live(true, Duration::from_secs(60), window));
    }

    #[test]
    fn a_beat_resets_the_age() {
        beat();
        assert!(since_last_beat() < Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deliberate_wait_sleeps_its_whole_duration() {
        let started = tokio::time::Instant::now();
        sleep(Duration::from_millis(3500)).await;
        assert_eq!(started.elapsed(), Duration::from_millis(3500));
        sleep_until(started).await;
        assert_eq!(started.elapsed(), Duration::from_millis(3500));
    }
}
