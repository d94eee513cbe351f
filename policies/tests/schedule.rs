//! When schedules fire, at fixed instants (no clock, no sleeping): Unix day-of-week numbers,
//! macros, seconds, and the daylight-saving rules of `schedule.rs` in Europe/Berlin and
//! America/New_York (2026: Berlin springs forward on 03-29 and falls back on 10-25, New York
//! on 03-08 and 11-01).

use std::time::Duration;

use cairn_policies::Schedule;
use chrono::{DateTime, Utc};
use chrono_tz::{America::New_York, Europe::Berlin, Tz};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn sched(expr: &str, tz: Tz) -> Schedule {
    Schedule::new(expr, tz, Duration::ZERO, 1).unwrap()
}

fn strings(v: &[DateTime<Utc>]) -> Vec<String> {
    v.iter()
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .collect()
}

fn fires(expr: &str, tz: Tz, from: &str, to: &str) -> Vec<String> {
    strings(&sched(expr, tz).fires_between(utc(from), utc(to)))
}

#[test]
fn day_of_week_one_is_monday_and_seven_is_sunday() {
    // 2026-03-02 is a Monday.
    let monday = sched("0 12 * * 1", Tz::UTC);
    assert_eq!(
        monday.next_after(utc("2026-02-28T00:00:00Z")),
        Some(utc("2026-03-02T12:00:00Z"))
    );
    for sunday in ["0 12 * * 7", "0 12 * * 0", "0 12 * * SUN"] {
        assert_eq!(
            sched(sunday, Tz::UTC).next_after(utc("2026-02-28T00:00:00Z")),
            Some(utc("2026-03-01T12:00:00Z")),
            "{sunday}"
        );
    }
}

#[test]
fn next_after_is_strict_and_zone_aware() {
    let s = sched("0 3 * * *", Berlin);
    // 03:00 CET is 02:00 UTC in winter.
    assert_eq!(
        s.next_after(utc("2026-01-10T01:00:00Z")),
        Some(utc("2026-01-10T02:00:00Z"))
    );
    assert_eq!(
        s.next_after(utc("2026-01-10T02:00:00Z")),
        Some(utc("2026-01-11T02:00:00Z"))
    );
    assert_eq!(
        sched("0 0 30 2 *", Tz::UTC).next_after(utc("2026-01-01T00:00:00Z")),
        None
    );
}

#[test]
fn macros_fire_like_vixie_cron_in_the_schedule_zone() {
    // @daily is midnight in Berlin: 23:00 UTC the day before in winter, 22:00 in summer.
    assert_eq!(
        fires(
            "@daily",
            Berlin,
            "2026-03-27T12:00:00Z",
            "2026-03-30T12:00:00Z"
        ),
        [
            "2026-03-27T23:00:00Z",
            "2026-03-28T23:00:00Z",
            "2026-03-29T22:00:00Z"
        ]
    );
    assert_eq!(
        fires(
            "@midnight",
            Tz::UTC,
            "2026-01-01T00:00:00Z",
            "2026-01-03T00:00:00Z"
        ),
        ["2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"]
    );
    // @weekly is Sunday midnight; 2026-03-01 is a Sunday.
    assert_eq!(
        fires(
            "@weekly",
            Tz::UTC,
            "2026-02-25T00:00:00Z",
            "2026-03-10T00:00:00Z"
        ),
        ["2026-03-01T00:00:00Z", "2026-03-08T00:00:00Z"]
    );
    assert_eq!(
        fires(
            "@monthly",
            New_York,
            "2026-01-15T00:00:00Z",
            "2026-03-15T00:00:00Z"
        ),
        ["2026-02-01T05:00:00Z", "2026-03-01T05:00:00Z"]
    );
    assert_eq!(
        sched("@yearly", Tz::UTC).next_after(utc("2026-06-01T00:00:00Z")),
        Some(utc("2027-01-01T00:00:00Z"))
    );
    assert_eq!(
        sched("@annually", Tz::UTC).next_after(utc("2026-06-01T00:00:00Z")),
        Some(utc("2027-01-01T00:00:00Z"))
    );
    assert_eq!(
        fires(
            "@hourly",
            Tz::UTC,
            "2026-01-01T00:30:00Z",
            "2026-01-01T02:30:00Z"
        ),
        ["2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"]
    );
}

#[test]
fn six_fields_put_seconds_first() {
    assert_eq!(
        fires(
            "30 15 3 * * *",
            Tz::UTC,
            "2026-01-01T00:00:00Z",
            "2026-01-02T12:00:00Z"
        ),
        ["2026-01-01T03:15:30Z", "2026-01-02T03:15:30Z"]
    );
    // A 6-field expression is still Unix cron: day-of-week 0 is Sunday.
    assert_eq!(
        sched("0 0 12 * * 0", Tz::UTC).next_after(utc("2026-02-28T00:00:00Z")),
        Some(utc("2026-03-01T12:00:00Z"))
    );
}

#[test]
fn ambiguous_and_sub_minute_expressions_are_refused() {
    let err = |e: &str| Schedule::new(e, Tz::UTC, Duration::ZERO, 1).unwrap_err();
    assert_eq!(
        err("0 3 1 * 1"),
        "`0 3 1 * 1` restricts both day-of-month and day-of-week, which cron implementations \
         read differently (either or both); restrict only one of them"
    );
    assert!(
        err("0 0 3 1 * MON").contains("restricts both"),
        "6 fields too"
    );
    // Restricting one of them is fine; `?` counts as unrestricted.
    assert!(Schedule::new("0 3 1 * *", Tz::UTC, Duration::ZERO, 1).is_ok());
    assert!(Schedule::new("0 3 * * 1-5", Tz::UTC, Duration::ZERO, 1).is_ok());
    assert!(Schedule::new("0 3 1 * ?", Tz::UTC, Duration::ZERO, 1).is_ok());
    assert_eq!(
        err("*/10 * * * * *"),
        "`*/10 * * * * *` fires several times a minute: the seconds field must be a single value"
    );
    assert_eq!(
        err("0 25 * * *"),
        "`0 25 * * *` is not a cron expression: its hour field `25` is not valid (0-23)"
    );
    assert_eq!(
        err("@reboot"),
        "`@reboot` is not a schedule macro: use @hourly, @daily, @weekly, @monthly or @yearly"
    );
}

#[test]
fn berlin_spring_forward_moves_the_skipped_0230_to_0300_once() {
    // 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 does not exist.
    assert_eq!(
        fires(
            "30 2 * * *",
            Berlin,
            "2026-03-27T12:00:00Z",
            "2026-03-31T12:00:00Z"
        ),
        [
            "2026-03-28T01:30:00Z", // 02:30 CET
            "2026-03-29T01:00:00Z", // 03:00 CEST, the first minute after the gap
            "2026-03-30T00:30:00Z", // 02:30 CEST
            "2026-03-31T00:30:00Z",
        ]
    );
}

#[test]
fn berlin_fall_back_fires_the_repeated_0230_once() {
    // 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
    assert_eq!(
        fires(
            "30 2 * * *",
            Berlin,
            "2026-10-23T12:00:00Z",
            "2026-10-26T12:00:00Z"
        ),
        [
            "2026-10-24T00:30:00Z", // 02:30 CEST
            "2026-10-25T00:30:00Z", // the first 02:30 (CEST) only
            "2026-10-26T01:30:00Z", // 02:30 CET
        ]
    );
}

#[test]
fn new_york_fixed_time_spring_forward_and_fall_back() {
    // 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
    assert_eq!(
        fires(
            "30 2 * * *",
            New_York,
            "2026-03-07T00:00:00Z",
            "2026-03-10T00:00:00Z"
        ),
        [
            "2026-03-07T07:30:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-09T06:30:00Z"
        ]
    );
    // 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice, fires once.
    assert_eq!(
        fires(
            "30 1 * * *",
            New_York,
            "2026-10-31T00:00:00Z",
            "2026-11-03T00:00:00Z"
        ),
        [
            "2026-10-31T05:30:00Z",
            "2026-11-01T05:30:00Z",
            "2026-11-02T06:30:00Z"
        ]
    );
}

#[test]
fn berlin_interval_schedules_keep_real_time_steps() {
    assert_eq!(
        fires(
            "0 * * * *",
            Berlin,
            "2026-03-28T23:30:00Z",
            "2026-03-29T03:30:00Z"
        ),
        [
            "2026-03-29T00:00:00Z", // 01:00 CET
            "2026-03-29T01:00:00Z", // 03:00 CEST (02:00 does not exist, and does not fire)
            "2026-03-29T02:00:00Z",
            "2026-03-29T03:00:00Z",
        ]
    );
    assert_eq!(
        fires(
            "0 * * * *",
            Berlin,
            "2026-10-24T23:30:00Z",
            "2026-10-25T02:30:00Z"
        ),
        [
            "2026-10-25T00:00:00Z", // 02:00 CEST
            "2026-10-25T01:00:00Z", // 02:00 CET: the repeated hour fires again
            "2026-10-25T02:00:00Z", // 03:00 CET
        ]
    );
}

#[test]
fn new_york_interval_schedules_keep_real_time_steps() {
    let half_hourly = sched("*/30 * * * *", New_York);
    let even = |v: &[DateTime<Utc>]| {
        v.windows(2)
            .all(|w| w[1] - w[0] == chrono::Duration::minutes(30))
    };
    // Spring forward: 01:30 EST (06:30Z), then 03:00 EDT (07:00Z); 02:00 and 02:30 do not exist.
    let spring =
        half_hourly.fires_between(utc("2026-03-08T05:50:00Z"), utc("2026-03-08T08:10:00Z"));
    assert_eq!(
        strings(&spring),
        [
            "2026-03-08T06:00:00Z", // 01:00 EST
            "2026-03-08T06:30:00Z", // 01:30 EST
            "2026-03-08T07:00:00Z", // 03:00 EDT
            "2026-03-08T07:30:00Z",
            "2026-03-08T08:00:00Z",
        ]
    );
    assert!(even(&spring));
    // Fall back: 01:00 and 01:30 happen twice and fire twice, 30 minutes apart throughout.
    let fall = half_hourly.fires_between(utc("2026-11-01T04:50:00Z"), utc("2026-11-01T07:10:00Z"));
    assert_eq!(
        strings(&fall),
        [
            "2026-11-01T05:00:00Z", // 01:00 EDT
            "2026-11-01T05:30:00Z", // 01:30 EDT
            "2026-11-01T06:00:00Z", // 01:00 EST
            "2026-11-01T06:30:00Z", // 01:30 EST
            "2026-11-01T07:00:00Z", // 02:00 EST
        ]
    );
    assert!(even(&fall));
}

#[test]
fn every_minute_in_the_skipped_hour_collapses_into_one_fire() {
    assert_eq!(
        fires(
            "*/15 2 * * *",
            Berlin,
            "2026-03-28T22:00:00Z",
            "2026-03-29T22:00:00Z"
        ),
        ["2026-03-29T01:00:00Z"]
    );
}

#[test]
fn fires_between_agrees_with_repeated_next_after() {
    let cases = [
        ("30 2 * * *", Berlin, "2026-03-20T00:00:00Z"),
        ("30 2 * * *", Berlin, "2026-10-20T00:00:00Z"),
        ("*/20 1-3 * * *", New_York, "2026-11-01T00:00:00Z"),
        ("*/20 1-3 * * *", New_York, "2026-03-07T12:00:00Z"),
        ("0 */2 * * *", Berlin, "2026-10-24T12:00:00Z"),
        (
            "15 * * * *",
            chrono_tz::Australia::Lord_Howe,
            "2026-04-04T00:00:00Z",
        ),
    ];
    for (expr, tz, from) in cases {
        let s = sched(expr, tz);
        let from = utc(from);
        let to = from + chrono::Duration::days(3);
        let mut stepped = Vec::new();
        let mut t = from;
        while let Some(n) = s.next_after(t).filter(|&n| n <= to) {
            stepped.push(n);
            t = n;
        }
        let fires = s.fires_between(from, to);
        assert!(!fires.is_empty(), "{expr} in {tz}");
        assert_eq!(fires, stepped, "{expr} in {tz}");
        assert!(
            fires.windows(2).all(|w| w[0] < w[1]),
            "{expr} strictly increasing"
        );
    }
}

#[test]
fn longest_interval_sees_dst_and_sparse_schedules() {
    let from = utc("2026-01-01T00:00:00Z");
    let year = Duration::from_secs(366 * 86400);
    let two_hourly = sched("0 */2 * * *", Berlin);
    // Fall-back makes one gap 3h long (02:00 CEST, then 04:00 CET).
    assert_eq!(
        two_hourly.longest_interval(from, year),
        Some(Duration::from_secs(3 * 3600))
    );
    // A fixed-time daily job's longest gap is the 25h of the fall-back day.
    let berlin_daily = sched("0 3 * * *", Berlin);
    assert_eq!(
        berlin_daily.longest_interval(from, year),
        Some(Duration::from_secs(25 * 3600))
    );
    let daily = sched("0 3 * * *", Tz::UTC);
    assert_eq!(
        daily.longest_interval(from, year),
        Some(Duration::from_secs(86400))
    );
    let yearly = sched("0 0 1 1 *", Tz::UTC);
    assert_eq!(
        yearly.longest_interval(from, Duration::from_secs(86400)),
        Some(Duration::from_secs(365 * 86400))
    );
    let monthly = sched("0 0 1 * *", Tz::UTC);
    assert_eq!(
        monthly.longest_interval(from, year),
        Some(Duration::from_secs(31 * 86400))
    );
    assert_eq!(
        sched("0 0 30 2 *", Tz::UTC).longest_interval(from, year),
        None
    );
}

#[test]
fn schedules_carry_jitter_and_concurrency_and_compare_by_what_was_written() {
    let s = Schedule::new(" 0 3 * * * ", Berlin, Duration::from_secs(300), 4).unwrap();
    assert_eq!(s.expression(), "0 3 * * *");
    assert_eq!(s.timezone(), Berlin);
    assert_eq!(s.jitter(), Duration::from_secs(300));
    assert_eq!(s.max_concurrent(), 4);
    assert_eq!(
        s,
        Schedule::new("0 3 * * *", Berlin, Duration::from_secs(300), 4).unwrap()
    );
    assert_ne!(
        s,
        Schedule::new("0 3 * * *", Tz::UTC, Duration::from_secs(300), 4).unwrap()
    );
}
