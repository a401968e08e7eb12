//! When the daemon runs: the incremental and full cron schedules of `[schedule]`, read in its
//! time zone. Pure arithmetic on instants; the daemon does the waiting.

use chrono::{DateTime, Utc};

use crate::config::ScheduleConfig;

/// The kind of a scheduled run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Read only what changed.
    Incremental,
    /// Read the whole source (and, with read-back, SocialTalent).
    Full,
}

/// The next run after `after`: the earlier of the two schedules, a full run winning a tie.
pub fn next_run(
    schedule: &ScheduleConfig,
    after: DateTime<Utc>,
) -> Option<(DateTime<Utc>, RunKind)> {
    let local = after.with_timezone(&schedule.timezone);
    let incremental = schedule
        .cron
        .after(&local)
        .next()
        .map(|t| t.with_timezone(&Utc));
    let full = schedule
        .full_cron
        .after(&local)
        .next()
        .map(|t| t.with_timezone(&Utc));
    match (incremental, full) {
        (Some(i), Some(f)) if f <= i => Some((f, RunKind::Full)),
        (Some(i), _) => Some((i, RunKind::Incremental)),
        (None, Some(f)) => Some((f, RunKind::Full)),
        (None, None) => None,
    }
}

/// How many scheduled ticks (of either schedule) fall in `(from, to]`: the ticks skipped while a
/// run was going.
pub fn ticks_between(schedule: &ScheduleConfig, from: DateTime<Utc>, to: DateTime<Utc>) -> usize {
    let mut count = 0;
    let mut cursor = from;
    while let Some((tick, _)) = next_run(schedule, cursor) {
        if tick > to {
            break;
        }
        count += 1;
        cursor = tick;
    }
    count
}

/// The incremental schedule's period around `at` (the gap between its next two ticks), for
/// deciding when the last run is too old to be healthy.
pub fn period(schedule: &ScheduleConfig, at: DateTime<Utc>) -> Option<chrono::Duration> {
    let local = at.with_timezone(&schedule.timezone);
    let mut ticks = schedule.cron.after(&local);
    let first = ticks.next()?;
    let second = ticks.next()?;
    Some(second.with_timezone(&Utc) - first.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::config::parse_cron;

    fn schedule(cron: &str, full_cron: &str, timezone: &str) -> ScheduleConfig {
        ScheduleConfig {
            cron: parse_cron(cron).expect("valid"),
            full_cron: parse_cron(full_cron).expect("valid"),
            timezone: timezone.parse().expect("time zone"),
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    #[test]
    fn the_earlier_schedule_wins_and_full_wins_ties() {
        let s = schedule("*/10 * * * *", "0 3 * * *", "UTC");
        assert_eq!(
            next_run(&s, at("2026-11-26T02:41:00Z")),
            Some((at("2026-11-26T02:50:00Z"), RunKind::Incremental))
        );
        assert_eq!(
            next_run(&s, at("2026-11-26T02:55:00Z")),
            Some((at("2026-11-26T03:00:00Z"), RunKind::Full))
        );
    }

    #[test]
    fn six_fields_have_seconds() {
        let s = schedule("*/15 * * * * *", "0 0 3 * * *", "UTC");
        assert_eq!(
            next_run(&s, at("2026-11-26T10:00:01Z")).map(|(t, _)| t),
            Some(at("2026-11-26T10:00:15Z"))
        );
        assert_eq!(
            period(&s, at("2026-11-26T10:00:01Z")),
            Some(chrono::Duration::seconds(15))
        );
    }

    #[test]
    fn the_time_zone_is_honoured_across_daylight_saving() {
        // 03:00 in Dublin is 03:00 UTC in winter and 02:00 UTC in summer.
        let s = schedule("0 * * * *", "0 3 * * *", "Europe/Dublin");
        let full = |after: &str| {
            let mut cursor = at(after);
            loop {
                let (tick, kind) = next_run(&s, cursor).expect("a tick");
                if kind == RunKind::Full {
                    return tick;
                }
                cursor = tick;
            }
        };
        assert_eq!(full("2026-11-26T04:00:00Z"), at("2026-11-27T03:00:00Z"));
        assert_eq!(full("2026-07-01T04:00:00Z"), at("2026-07-02T02:00:00Z"));
        let dublin = chrono_tz::Europe::Dublin;
        assert_eq!(
            dublin
                .from_utc_datetime(&at("2026-07-02T02:00:00Z").naive_utc())
                .format("%H:%M")
                .to_string(),
            "03:00"
        );
    }

    #[test]
    fn ticks_skipped_during_a_long_run_are_counted() {
        let s = schedule("*/10 * * * *", "0 3 * * *", "UTC");
        assert_eq!(
            ticks_between(&s, at("2026-11-26T02:05:00Z"), at("2026-11-26T02:45:00Z")),
            4
        );
        assert_eq!(
            ticks_between(&s, at("2026-11-26T02:05:00Z"), at("2026-11-26T02:09:00Z")),
            0
        );
    }
}
