//! When the daemon runs: the incremental and full cron schedules of `[schedule]`, read in its
//! time zone. Pure arithmetic on instants; the daemon does the waiting.
//!
//! Cron expressions follow standard (Vixie) cron, also for the day fields: when both the day of
//! the month and the day of the week are restricted (neither starts with `*`), a time matches
//! when *either* does — `0 9 13 * Fri` runs on every 13th and on every Friday. Otherwise both
//! must match (with `*` that is the other field alone; `*/10` in one field still counts its
//! days, as in Vixie cron). The cron crate alone always requires both (Friday the 13th only),
//! so [`Cron`] is the union of two schedules when both fields are restricted.

use chrono::{DateTime, TimeZone, Utc};

use crate::config::ScheduleConfig;

/// How the day-of-month and day-of-week fields combine when both are restricted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DayMatch {
    /// Either field matching is enough (standard cron; both fields are restricted).
    Either,
    /// Both fields must match (at most one of them is restricted, so it makes no difference).
    Both,
}

/// A parsed cron schedule with standard cron's day rule (see the module docs).
#[derive(Debug, Clone)]
pub struct Cron {
    /// One schedule, or two (by day of the month, by day of the week) whose ticks are merged.
    schedules: Vec<cron::Schedule>,
}

impl Cron {
    /// Parses an expression in the cron crate's form (6 or 7 fields, seconds first; weekdays
    /// as the crate reads them). With [`DayMatch::Either`] and both day fields restricted, a
    /// time matches when either day field does.
    ///
    /// # Errors
    /// The cron crate's error for an expression it cannot parse.
    pub fn parse(expression: &str, days: DayMatch) -> Result<Cron, cron::error::Error> {
        let fields: Vec<&str> = expression.split_whitespace().collect();
        let unrestricted = |field: &str| field.starts_with('*') || field.starts_with('?');
        if days == DayMatch::Either
            && fields.len() >= 6
            && !unrestricted(fields[3])
            && !unrestricted(fields[5])
        {
            let mut by_month_day = fields.clone();
            by_month_day[5] = "*";
            let mut by_weekday = fields;
            by_weekday[3] = "*";
            return Ok(Cron {
                schedules: vec![
                    by_month_day.join(" ").parse()?,
                    by_weekday.join(" ").parse()?,
                ],
            });
        }
        Ok(Cron {
            schedules: vec![expression.parse()?],
        })
    }

    /// The ticks after `after`, in order, each once.
    pub fn after<'a, Z: TimeZone + 'a>(
        &'a self,
        after: &DateTime<Z>,
    ) -> impl Iterator<Item = DateTime<Z>> + use<'a, Z> {
        let mut ticks: Vec<_> = self
            .schedules
            .iter()
            .map(|schedule| schedule.after(after).peekable())
            .collect();
        std::iter::from_fn(move || {
            let next = ticks
                .iter_mut()
                .filter_map(|ticks| ticks.peek().cloned())
                .min()?;
            for ticks in &mut ticks {
                if ticks.peek() == Some(&next) {
                    ticks.next();
                }
            }
            Some(next)
        })
    }

    /// The ticks from now on, in `timezone`.
    pub fn upcoming<'a, Z: TimeZone + 'a>(
        &'a self,
        timezone: Z,
    ) -> impl Iterator<Item = DateTime<Z>> + use<'a, Z> {
        self.after(&Utc::now().with_timezone(&timezone))
    }
}

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

    /// Standard cron: with both day fields restricted either one matching is enough; when one of
    /// them starts with `*` (`*`, `*/n`), both must match, as in Vixie cron.
    #[test]
    fn both_day_fields_restricted_match_either_as_in_standard_cron() {
        let days = |expression: &str| -> Vec<String> {
            let cron = parse_cron(expression).expect("valid");
            cron.after(&at("2026-01-31T12:00:00Z"))
                .take(6)
                .map(|t| t.format("%a %d %b").to_string())
                .collect()
        };
        // Every 13th and every Friday, not only Friday the 13th.
        assert_eq!(
            days("0 9 13 * Fri"),
            [
                "Fri 06 Feb",
                "Fri 13 Feb",
                "Fri 20 Feb",
                "Fri 27 Feb",
                "Fri 06 Mar",
                "Fri 13 Mar"
            ]
        );
        assert_eq!(
            days("0 9 1,15 * 1"),
            [
                "Sun 01 Feb",
                "Mon 02 Feb",
                "Mon 09 Feb",
                "Sun 15 Feb",
                "Mon 16 Feb",
                "Mon 23 Feb"
            ]
        );
        // The same in the 6-field form.
        assert_eq!(days("0 0 9 13 * Fri"), days("0 9 13 * Fri"));
        // One field restricted: that one alone decides.
        assert_eq!(
            days("0 9 13 * *"),
            [
                "Fri 13 Feb",
                "Fri 13 Mar",
                "Mon 13 Apr",
                "Wed 13 May",
                "Sat 13 Jun",
                "Mon 13 Jul"
            ]
        );
        assert_eq!(days("0 9 * * Fri")[..2], ["Fri 06 Feb", "Fri 13 Feb"]);
        // A field that starts with `*` (`*/10`) does not count as restricted, as in Vixie cron:
        // then both must match (Mondays that are the 1st, 11th, 21st or 31st).
        assert_eq!(
            days("0 9 */10 * Mon"),
            [
                "Mon 11 May",
                "Mon 01 Jun",
                "Mon 31 Aug",
                "Mon 21 Sep",
                "Mon 21 Dec",
                "Mon 11 Jan"
            ]
        );
        // A tick both fields match comes once.
        let ticks: Vec<_> = parse_cron("0 9 13 * Fri")
            .expect("valid")
            .after(&at("2026-02-12T12:00:00Z"))
            .take(3)
            .collect();
        assert_eq!(ticks[0], at("2026-02-13T09:00:00Z"));
        assert_eq!(ticks[1], at("2026-02-20T09:00:00Z"));
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
