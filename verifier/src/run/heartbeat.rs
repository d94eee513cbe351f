//! The heartbeat check: how recent the restored copy is, against the time of the point it was
//! restored for — the RPO the point *achieved*.
//!
//! - A managed cluster's copy carries the newest heartbeat `cairn up` wrote into it
//!   ([`cairn_engine::heartbeat`]); it is read over a connection whose `search_path` is
//!   pinned, and only when everything in its schema belongs to superusers (a compute's owner
//!   could otherwise have made a table that forges recency).
//! - An adopted cluster is the owner's: Cairn writes nothing into it, and the newest commit at
//!   or before the point (from the region's WAL index) stands in for the heartbeat.
//! - The point's time ([`reference`]): the time asked for; for "latest", when the run
//!   started (a disaster now would restore this point); for an LSN or a restore point, the
//!   newest commit it holds.
//!
//! Invariants:
//! - The achieved RPO is `reference - newest`, never negative, in milliseconds; it over-states
//!   the loss by at most one heartbeat interval, never under-states it.
//! - No heartbeat, an untrusted one, or one older than the policy's RPO allows, fails the
//!   check and says which, and what to do.

use std::collections::BTreeMap;
use std::time::Instant;

use cairn_engine::branch::PointSpec;
use cairn_engine::catalog::{ClusterKind, ClusterRow};
use cairn_engine::heartbeat::Found;
use cairn_policies::Check;

use super::checks::result;
use super::conn::Server;
use crate::report::{CheckResult, Outcome};

/// The count a passed or failed heartbeat check carries the achieved RPO in.
pub const ACHIEVED_RPO_MS: &str = "achieved_rpo_ms";

/// The time a point stands for (Unix µs): see the module header.
pub fn reference(point: &PointSpec, newest_commit_us: Option<i64>, started_at_us: i64) -> i64 {
    match point {
        PointSpec::Time(t) => *t,
        PointSpec::Head => started_at_us,
        _ => newest_commit_us.unwrap_or(started_at_us),
    }
}

/// The achieved RPO (ms) of a copy whose newest heartbeat or commit is `newest_us`.
pub fn achieved_rpo_ms(reference_us: i64, newest_us: i64) -> u64 {
    (reference_us.saturating_sub(newest_us).max(0) / 1000) as u64
}

/// What the copy says of its recency: (time, heartbeats counted, where it came from).
async fn newest(
    server: &Server,
    cluster: &ClusterRow,
    newest_commit_us: Option<i64>,
) -> Result<(i64, Option<i64>, &'static str), String> {
    if cluster.kind == ClusterKind::Adopted {
        return newest_commit_us
            .map(|t| (t, None, "newest commit"))
            .ok_or_else(|| {
                "no commit at or before the point is known: the adopted cluster's WAL index \
                 holds none, so the point's recency cannot be measured"
                    .to_string()
            });
    }
    let c = server.connect_control("postgres").await?;
    match cairn_engine::heartbeat::read(&c)
        .await
        .map_err(|e| e.to_string())?
    {
        Found::Beat(b) => Ok((b.at_us, Some(b.beats), "heartbeat")),
        Found::Missing => Err(format!(
            "no heartbeat in the restored copy: `cairn up` writes one into every running \
             compute of a managed cluster whose policy lists the heartbeat check (every \
             --heartbeat-every, 10s by default); a point from before that started holds none \
             (table {}.beat in database postgres)",
            cairn_engine::heartbeat::SCHEMA
        )),
        Found::Untrusted(what) => Err(format!(
            "the heartbeat cannot be trusted: {} in the restored copy was made by a role \
             that is not a superuser and could forge it; in the cluster, a superuser should \
             drop it (DROP SCHEMA {} CASCADE) and Cairn makes it again",
            what.join(", "),
            cairn_engine::heartbeat::SCHEMA
        )),
    }
}

/// The heartbeat check of the restored copy on `server`, for a point standing for
/// `reference_us`, against the policy's RPO (if a policy governs the cluster).
pub async fn check(
    server: &Server,
    cluster: &ClusterRow,
    newest_commit_us: Option<i64>,
    reference_us: i64,
    rpo_ms: Option<u64>,
) -> CheckResult {
    let started = Instant::now();
    let (at_us, beats, source) = match newest(server, cluster, newest_commit_us).await {
        Ok(n) => n,
        Err(why) => {
            return result(
                Check::Heartbeat,
                Outcome::Failed,
                started,
                BTreeMap::new(),
                vec![why],
            )
        }
    };
    let achieved = achieved_rpo_ms(reference_us, at_us);
    let mut counts = BTreeMap::from([
        (ACHIEVED_RPO_MS.to_string(), achieved),
        ("newest_at_us".to_string(), at_us.max(0) as u64),
    ]);
    if let Some(b) = beats {
        counts.insert("beats".to_string(), b.max(0) as u64);
    }
    let mut details = Vec::new();
    if let Some(rpo) = rpo_ms.filter(|rpo| achieved > *rpo) {
        details.push(format!(
            "achieved RPO {:.1}s exceeds the policy's RPO of {:.1}s: the {source} in the copy \
             is from {}, the point stands for {}; WAL was not stored and shipped often enough \
             (see `cairn status` for the exposure and the region lag)",
            achieved as f64 / 1000.0,
            rpo as f64 / 1000.0,
            cairn_engine::engine::fmt_time(at_us),
            cairn_engine::engine::fmt_time(reference_us)
        ));
    }
    let outcome = if details.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Failed
    };
    result(Check::Heartbeat, outcome, started, counts, details)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_is_the_asked_time_else_the_start_else_the_newest_commit() {
        assert_eq!(reference(&PointSpec::Time(5), Some(3), 9), 5);
        assert_eq!(reference(&PointSpec::Head, Some(3), 9), 9);
        let lsn = PointSpec::Lsn(cairn_engine::Lsn(42));
        assert_eq!(reference(&lsn, Some(3), 9), 3);
        assert_eq!(reference(&lsn, None, 9), 9);
    }

    #[test]
    fn the_achieved_rpo_is_the_gap_in_ms_and_never_negative() {
        assert_eq!(achieved_rpo_ms(10_000_000, 7_500_000), 2_500);
        assert_eq!(achieved_rpo_ms(10_000_999, 10_000_000), 0);
        assert_eq!(achieved_rpo_ms(10_000_000, 12_000_000), 0);
        assert_eq!(
            achieved_rpo_ms(i64::MAX, i64::MIN),
            (i64::MAX / 1000) as u64
        );
    }
}
