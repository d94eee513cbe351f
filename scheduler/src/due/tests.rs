//! Due runs with an injected clock: downtime catch-up, runs on time and late, a job that is
//! still running, concurrency limits, daylight saving, new jobs and jitter.

use std::time::Duration;

use chrono::TimeZone;
use chrono_tz::Tz;

use super::*;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn job(cluster: &str, cron: &str, tz: Tz, jitter: Duration, max: u32) -> Job {
    Job {
        key: JobKey {
            policy: "prod".into(),
            cluster: cluster.into(),
            kind: JobKind::Image,
        },
        schedule: Schedule::new(cron, tz, jitter, max).unwrap(),
    }
}

fn state(entries: &[(&Job, JobState)]) -> HashMap<JobKey, JobState> {
    entries.iter().map(|(j, s)| (j.key.clone(), *s)).collect()
}

fn after(last: &str) -> JobState {
    JobState {
        since: Some(t("2026-10-01T00:00:00Z")),
        last_fire: Some(t(last)),
        running: false,
    }
}

const GRACE: chrono::Duration = chrono::Duration::minutes(1);

#[test]
fn fires_missed_while_down_become_one_late_run() {
    let j = job("shop", "0 2 * * *", chrono_tz::UTC, Duration::ZERO, 1);
    let st = state(&[(&j, after("2026-11-01T02:00:00Z"))]);
    let d = due(
        std::slice::from_ref(&j),
        &st,
        t("2026-11-04T09:00:00Z"),
        GRACE,
    );
    assert_eq!(
        d.start,
        [DueRun {
            key: j.key.clone(),
            fire: t("2026-11-04T02:00:00Z"),
            start_at: t("2026-11-04T02:00:00Z"),
            missed: 2,
            late: true,
        }]
    );
    assert!(d.waiting.is_empty());
}

#[test]
fn a_run_on_time_is_not_late_and_nothing_is_due_before_its_time() {
    let j = job("shop", "0 2 * * *", chrono_tz::UTC, Duration::ZERO, 1);
    let st = state(&[(&j, after("2026-11-01T02:00:00Z"))]);
    let jobs = [j];
    assert_eq!(
        due(&jobs, &st, t("2026-11-02T01:59:59Z"), GRACE),
        Decision::default()
    );
    let d = due(&jobs, &st, t("2026-11-02T02:00:30Z"), GRACE);
    assert_eq!(
        (d.start.len(), d.start[0].missed, d.start[0].late),
        (1, 0, false)
    );
    // Two minutes after its time it is late (grace is one).
    let d = due(&jobs, &st, t("2026-11-02T02:02:00Z"), GRACE);
    assert!(d.start[0].late);
}

#[test]
fn a_job_never_overlaps_itself_and_catches_up_when_its_run_ends() {
    let j = job("shop", "0 * * * *", chrono_tz::UTC, Duration::ZERO, 4);
    let mut s = after("2026-11-01T10:00:00Z");
    s.running = true;
    let jobs = [j.clone()];
    let now = t("2026-11-01T12:30:00Z");
    assert_eq!(
        due(&jobs, &state(&[(&j, s)]), now, GRACE),
        Decision::default()
    );
    s.running = false;
    let d = due(&jobs, &state(&[(&j, s)]), now, GRACE);
    assert_eq!(d.start.len(), 1);
    assert_eq!(
        (d.start[0].fire, d.start[0].missed, d.start[0].late),
        (t("2026-11-01T12:00:00Z"), 1, true)
    );
}

#[test]
fn at_most_max_concurrent_runs_of_a_schedule_go_at_once() {
    let jobs: Vec<Job> = ["a", "b", "c", "d"]
        .iter()
        .map(|c| job(c, "0 2 * * *", chrono_tz::UTC, Duration::ZERO, 2))
        .collect();
    let mut running = after("2026-11-02T02:00:00Z");
    running.running = true;
    let st = state(&[
        (&jobs[0], after("2026-11-01T02:00:00Z")),
        (&jobs[1], after("2026-11-01T02:00:00Z")),
        (&jobs[2], after("2026-11-01T02:00:00Z")),
        (&jobs[3], running),
    ]);
    let d = due(&jobs, &st, t("2026-11-02T02:00:10Z"), GRACE);
    let started: Vec<&str> = d.start.iter().map(|r| r.key.cluster.as_str()).collect();
    let waiting: Vec<(&str, u32, u32)> = d
        .waiting
        .iter()
        .map(|w| (w.key.cluster.as_str(), w.running, w.max_concurrent))
        .collect();
    assert_eq!(started, ["a"]);
    assert_eq!(waiting, [("b", 2, 2), ("c", 2, 2)]);
    // Another policy's schedule is not held back by this one's runs.
    let mut other = job("e", "0 2 * * *", chrono_tz::UTC, Duration::ZERO, 1);
    other.key.policy = "analytics".into();
    let mut all = jobs.clone();
    all.push(other.clone());
    let mut st = st;
    st.insert(other.key.clone(), after("2026-11-01T02:00:00Z"));
    let d = due(&all, &st, t("2026-11-02T02:00:10Z"), GRACE);
    assert!(d.start.iter().any(|r| r.key.cluster == "e"));
}

#[test]
fn daylight_saving_moves_a_fixed_time_run_not_skips_it() {
    // 02:30 in Berlin does not exist on 2026-03-29: the run is at 03:00 CEST (01:00 UTC).
    let j = job(
        "shop",
        "30 2 * * *",
        chrono_tz::Europe::Berlin,
        Duration::ZERO,
        1,
    );
    let st = state(&[(&j, after("2026-03-28T01:30:00Z"))]);
    let d = due(
        std::slice::from_ref(&j),
        &st,
        t("2026-03-29T01:00:30Z"),
        GRACE,
    );
    assert_eq!(d.start.len(), 1);
    assert_eq!(
        (d.start[0].fire, d.start[0].missed, d.start[0].late),
        (t("2026-03-29T01:00:00Z"), 0, false)
    );
    // In autumn 02:30 happens twice; it runs once, at the first (00:30 UTC).
    let st = state(&[(&j, after("2026-10-24T00:30:00Z"))]);
    let d = due(
        std::slice::from_ref(&j),
        &st,
        t("2026-10-25T02:00:00Z"),
        GRACE,
    );
    assert_eq!(
        (d.start[0].fire, d.start[0].missed),
        (t("2026-10-25T00:30:00Z"), 0)
    );
}

#[test]
fn a_new_job_is_owed_nothing_from_before_it_was_seen() {
    let j = job("shop", "0 2 * * *", chrono_tz::UTC, Duration::ZERO, 1);
    let seen = JobState {
        since: Some(t("2026-11-04T08:00:00Z")),
        last_fire: None,
        running: false,
    };
    let st = state(&[(&j, seen)]);
    let jobs = [j];
    assert!(due(&jobs, &st, t("2026-11-04T09:00:00Z"), GRACE)
        .start
        .is_empty());
    let d = due(&jobs, &st, t("2026-11-05T02:00:00Z"), GRACE);
    assert_eq!((d.start.len(), d.start[0].missed), (1, 0));
    // A job with no state at all is not started: the caller records when it was seen first.
    assert!(
        due(&jobs, &HashMap::new(), t("2026-11-05T02:00:00Z"), GRACE)
            .start
            .is_empty()
    );
}

#[test]
fn jitter_spreads_a_policys_clusters_and_is_the_same_every_time() {
    let jitter = Duration::from_secs(600);
    let fire = Utc.with_ymd_and_hms(2026, 11, 2, 2, 0, 0).unwrap();
    let jobs: Vec<Job> = (0..20)
        .map(|i| job(&format!("c{i}"), "0 2 * * *", chrono_tz::UTC, jitter, 20))
        .collect();
    let delays: Vec<chrono::Duration> = jobs
        .iter()
        .map(|j| jitter_for(&j.key, fire, jitter))
        .collect();
    assert!(delays
        .iter()
        .all(|d| *d >= chrono::Duration::zero() && *d < chrono::Duration::minutes(10)));
    let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
    assert!(distinct.len() >= 15, "{delays:?}");
    assert_eq!(delays[3], jitter_for(&jobs[3].key, fire, jitter));
    // A run is not due before its jittered start, and is at it.
    let st: HashMap<JobKey, JobState> = jobs
        .iter()
        .map(|j| (j.key.clone(), after("2026-11-01T02:00:00Z")))
        .collect();
    let k = 7;
    let start = fire + delays[k];
    let before = due(
        &jobs[k..=k],
        &st,
        start - chrono::Duration::seconds(1),
        GRACE,
    );
    assert!(before.start.is_empty());
    let at = due(&jobs[k..=k], &st, start, GRACE);
    assert_eq!(at.start[0].start_at, start);
    assert!(!at.start[0].late);
}

#[test]
fn a_run_standing_for_missed_fires_is_late_even_within_grace_and_grace_is_inclusive() {
    let j = job("shop", "0 * * * *", chrono_tz::UTC, Duration::ZERO, 1);
    let st = state(&[(&j, after("2026-11-01T10:00:00Z"))]);
    let jobs = [j];
    // 11:00 was missed; 12:00 is 30 s ago, within grace: late because of the missed fire.
    let d = due(&jobs, &st, t("2026-11-01T12:00:30Z"), GRACE);
    assert_eq!((d.start[0].missed, d.start[0].late), (1, true));
    // Exactly one grace after its time, with nothing missed: still on time.
    let st = state(&[(&jobs[0], after("2026-11-01T11:00:00Z"))]);
    let d = due(&jobs, &st, t("2026-11-01T12:01:00Z"), GRACE);
    assert_eq!((d.start[0].missed, d.start[0].late), (0, false));
    let d = due(&jobs, &st, t("2026-11-01T12:01:01Z"), GRACE);
    assert!(d.start[0].late);
}
