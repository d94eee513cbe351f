//! Cron schedules in a time zone, and when they fire across daylight-saving changes.
//!
//! Invariants:
//! - An expression is Unix cron as `crontab` reads it (5 fields, 6 with seconds first, or an
//!   `@daily`-style macro; see `crontab` for the exact syntax and what is refused). A seconds
//!   field must name a single second: a schedule fires at most once a minute.
//! - The expression is matched against wall-clock time in the schedule's zone; every fire is
//!   returned as a UTC instant, strictly increasing and never twice.
//! - Daylight saving (the rule of Vixie cron and cronie):
//!   - *Fixed-time schedules* (whose hour field does not cover every hour): a wall-clock time
//!     skipped by a spring-forward change fires once, at the first minute after the gap (a
//!     daily 02:30 job in Europe/Berlin fires at 03:00 CEST on 2026-03-29); a wall-clock time
//!     that happens twice on fall-back fires once, at its first occurrence.
//!   - *Interval schedules* (hour field `*`: every hour, every 15 minutes, ...) follow real
//!     time: a skipped wall-clock time does not fire (the next one is an interval later in real
//!     time anyway) and a repeated one fires at both occurrences, so the interval stays even.
//! - `jitter` and `max_concurrent` are carried for the scheduler; fire times are the nominal
//!   ones, before any jitter.

use std::str::FromStr;
use std::time::Duration;

use chrono::offset::LocalResult;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use cron::TimeUnitSpec;

use crate::crontab::{bad_field, translate};

/// How far one zone's UTC offset can move in one change, with margin (Samoa skipped a whole
/// day in 2011). Candidates this far apart in wall-clock time are in order in real time.
const SLACK: chrono::Duration = chrono::Duration::hours(26);

/// A parsed cron expression, its time zone, and how the scheduler may spread its runs.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    cron: cron::Schedule,
    timezone: Tz,
    jitter: Duration,
    max_concurrent: u32,
    /// The hour field covers every hour: fire in real-time steps across DST changes.
    interval: bool,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        self.expression == other.expression
            && self.timezone == other.timezone
            && self.jitter == other.jitter
            && self.max_concurrent == other.max_concurrent
    }
}

impl Schedule {
    /// Parses `expression` (see the module documentation for the accepted forms).
    pub fn new(
        expression: &str,
        timezone: Tz,
        jitter: Duration,
        max_concurrent: u32,
    ) -> Result<Schedule, String> {
        let translated = translate(expression)?;
        let cron = cron::Schedule::from_str(&translated).map_err(|e| {
            // The crate's message quotes the translation; name the field as it was written.
            let detail = bad_field(expression, &translated).unwrap_or_else(|| {
                let e = e.to_string();
                e.lines().last().unwrap_or_default().trim().to_string()
            });
            format!("`{}` is not a cron expression: {detail}", expression.trim())
        })?;
        if cron.seconds().count() != 1 {
            return Err(format!(
                "`{}` fires several times a minute: the seconds field must be a single value",
                expression.trim()
            ));
        }
        let interval = cron.hours().is_all();
        Ok(Schedule {
            expression: expression.trim().to_string(),
            cron,
            timezone,
            jitter,
            max_concurrent,
            interval,
        })
    }

    /// The expression as written in the policy.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    /// The most the scheduler may delay a run after its nominal time.
    pub fn jitter(&self) -> Duration {
        self.jitter
    }

    /// How many runs of this schedule (across the policy's clusters) may run at once.
    pub fn max_concurrent(&self) -> u32 {
        self.max_concurrent
    }

    /// The first fire strictly after `t`, or `None` if the expression never fires again.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = self.local(t).checked_sub_signed(SLACK)?;
        let mut best: Option<(DateTime<Utc>, NaiveDateTime)> = None;
        let mut found = Vec::with_capacity(2);
        for candidate in self.cron.after_owned(start.and_utc()) {
            let naive = candidate.naive_utc();
            if let Some((_, best_naive)) = best {
                if naive > best_naive + SLACK {
                    break;
                }
            }
            found.clear();
            self.instants(naive, &mut found);
            for &instant in &found {
                if instant > t && best.is_none_or(|(b, _)| instant < b) {
                    best = Some((instant, naive));
                }
            }
        }
        best.map(|(instant, _)| instant)
    }

    /// Every fire in `(from, to]`, in order: the same instants as calling
    /// [`Schedule::next_after`] from `from` until it passes `to`.
    pub fn fires_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let mut fires = Vec::new();
        if to <= from {
            return fires;
        }
        let (Some(start), Some(end)) = (
            self.local(from).checked_sub_signed(SLACK),
            self.local(to).checked_add_signed(SLACK),
        ) else {
            return fires;
        };
        let mut found = Vec::with_capacity(2);
        for candidate in self.cron.after_owned(start.and_utc()) {
            let naive = candidate.naive_utc();
            if naive > end {
                break;
            }
            found.clear();
            self.instants(naive, &mut found);
            fires.extend(found.iter().filter(|&&i| i > from && i <= to));
        }
        fires.sort_unstable();
        fires.dedup();
        fires
    }

    /// The longest time between two consecutive fires from `from` over `horizon`, taking at
    /// least two fires even if they lie beyond the horizon (a yearly schedule has a one-year
    /// interval). `None` if the schedule fires fewer than twice after `from`.
    pub fn longest_interval(&self, from: DateTime<Utc>, horizon: Duration) -> Option<Duration> {
        let to = from + chrono::Duration::from_std(horizon).ok()?;
        let mut fires = self.fires_between(from, to);
        // The step from the last fire in the horizon to the next one counts too, and a sparse
        // schedule needs two fires however far away they are.
        loop {
            let last = fires.last().copied().unwrap_or(from);
            match self.next_after(last) {
                Some(next) => fires.push(next),
                None => break,
            }
            if fires.len() >= 2 {
                break;
            }
        }
        fires
            .windows(2)
            .filter_map(|w| (w[1] - w[0]).to_std().ok())
            .max()
    }

    fn local(&self, t: DateTime<Utc>) -> NaiveDateTime {
        t.with_timezone(&self.timezone).naive_local()
    }

    /// The instants at which the wall-clock time `naive` fires (see the module's DST rule).
    fn instants(&self, naive: NaiveDateTime, out: &mut Vec<DateTime<Utc>>) {
        match self.timezone.from_local_datetime(&naive) {
            LocalResult::Single(t) => out.push(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(a, b) => {
                let (first, second) = if a <= b { (a, b) } else { (b, a) };
                out.push(first.with_timezone(&Utc));
                if self.interval {
                    out.push(second.with_timezone(&Utc));
                }
            }
            LocalResult::None => {
                if !self.interval {
                    out.extend(self.after_gap(naive));
                }
            }
        }
    }

    /// The first whole wall-clock minute after a skipped `naive`, as an instant.
    fn after_gap(&self, naive: NaiveDateTime) -> Option<DateTime<Utc>> {
        let minute = chrono::Duration::minutes(1);
        let mut m = naive.checked_add_signed(minute)?;
        m = m.checked_sub_signed(chrono::Duration::seconds(i64::from(
            chrono::Timelike::second(&m),
        )))?;
        for _ in 0..SLACK.num_minutes() {
            if let Some(t) = self.timezone.from_local_datetime(&m).earliest() {
                return Some(t.with_timezone(&Utc));
            }
            m = m.checked_add_signed(minute)?;
        }
        None
    }
}
