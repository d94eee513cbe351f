//! Coverage: every object of every region read back and verified at least once per period
//! (7 days by default), spread over the verification runs instead of all in one.
//!
//! An object's last proof is the later of its upload (shipping reads every upload back) and
//! its last read here. Each run reads ([`plan_reads`], pure):
//! - every object whose proof would be older than the period by the next run (`until_next`:
//!   the longest gap between two runs), so none is ever overdue while runs keep their
//!   schedule;
//! - then the oldest others, up to an even share (`objects × until_next / period`), so the
//!   reading is spread rather than bunched when the period comes round.
//!
//! Invariants:
//! - A read is the full proof of `cairn regions check --full` (key object, every chunk's AEAD
//!   tag, the ciphertext and plaintext hashes). A failed read leaves the object unproven (and
//!   due again at once) until a read passes, whatever its upload time.
//! - What fails is returned as problems for the caller to repair and report; rows of objects
//!   no region holds any more are deleted.
//! - The clock is an argument: tested over simulated weeks.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cairn_backup::check::Problem;
use cairn_backup::Protection;
use cairn_engine::catalog::{column as get, Catalog};

use crate::error::{Error, Result};

/// `read_at` of an object whose last read failed.
const FAILED: i64 = -1;

/// The default period within which every object is read.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(7 * 86_400);

/// One object held by one region, and when it was last proven there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub region: String,
    pub object: String,
    pub proven_at_us: i64,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

/// The indices of `held` to read at `now_us` (see the module's rules).
pub fn plan_reads(
    held: &[Held],
    period: Duration,
    until_next: Duration,
    now_us: i64,
) -> Vec<usize> {
    let (period, next) = (micros(period), micros(until_next).min(micros(period)));
    let mut order: Vec<usize> = (0..held.len()).collect();
    order.sort_by_key(|&i| (held[i].proven_at_us, i));
    let share = if period == 0 {
        held.len()
    } else {
        let (n, next, period) = (held.len() as u128, next.max(0) as u128, period as u128);
        (n * next).div_ceil(period) as usize
    };
    let mut out = Vec::new();
    for (n, i) in order.into_iter().enumerate() {
        let due = held[i].proven_at_us.saturating_add(period - next) <= now_us;
        if due || n < share {
            out.push(i);
        }
    }
    out
}

/// How many of `held` were proven within the period before `now_us`.
pub fn covered(held: &[Held], period: Duration, now_us: i64) -> usize {
    let since = now_us.saturating_sub(micros(period));
    held.iter().filter(|h| h.proven_at_us > since).count()
}

/// What one coverage pass did.
#[derive(Debug, Clone, Default)]
pub struct CoverageRun {
    /// Objects held in all regions.
    pub objects: u64,
    pub read: u64,
    /// Objects proven within the period once this pass is done.
    pub covered: u64,
    pub problems: Vec<Problem>,
}

/// Every object of cluster `cluster_id` every region holds, with its last proof.
async fn inventory(p: &Protection, cluster_id: &str) -> Result<Vec<Held>> {
    let cat = &p.engine.catalog;
    cat.migrate(&crate::schema::COMPONENT).await?;
    let reads: HashMap<(String, String), i64> =
        sqlx::query("SELECT region, object, read_at FROM object_reads")
            .fetch_all(cat.pool())
            .await
            .map_err(|e| Error::catalog("read the coverage of the regions", e))?
            .iter()
            .map(|r| Ok(((get(r, "region")?, get(r, "object")?), get(r, "read_at")?)))
            .collect::<Result<_>>()?;
    let configured: HashSet<String> = p.regions.regions.iter().map(|r| r.name.clone()).collect();
    let ours: HashSet<String> = p
        .state()
        .object_keys_by_name()
        .await?
        .into_values()
        .filter(|k| k.cluster_id == cluster_id && k.key_object != b"shredded")
        .map(|k| k.object)
        .collect();
    Ok(p.state()
        .shipments_with_times()
        .await?
        .into_iter()
        .filter(|s| configured.contains(&s.region) && ours.contains(&s.object))
        .map(|s| {
            let proven = match reads.get(&(s.region.clone(), s.object.clone())) {
                // Its last read failed: not proven until a read passes (it is due at once).
                Some(&FAILED) => i64::MIN,
                Some(&read) => s.shipped_at_us.max(read),
                None => s.shipped_at_us,
            };
            Held {
                proven_at_us: proven,
                region: s.region,
                object: s.object,
            }
        })
        .collect())
}

async fn record_read(cat: &Catalog, region: &str, object: &str, at_us: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO object_reads (region, object, read_at) VALUES ($1, $2, $3)
         ON CONFLICT (region, object) DO UPDATE SET read_at = excluded.read_at",
    )
    .bind(region)
    .bind(object)
    .bind(at_us)
    .execute(cat.pool())
    .await
    .map_err(|e| Error::catalog("record a read of a region's object", e))?;
    Ok(())
}

/// Deletes the rows of objects no region holds any more.
async fn forget_gone(p: &Protection) -> Result<()> {
    let cat = &p.engine.catalog;
    let live: HashSet<(String, String)> = p
        .state()
        .shipments_with_times()
        .await?
        .into_iter()
        .map(|s| (s.region, s.object))
        .collect();
    let rows = sqlx::query("SELECT region, object FROM object_reads")
        .fetch_all(cat.pool())
        .await
        .map_err(|e| Error::catalog("read the coverage of the regions", e))?;
    for r in rows {
        let (region, object): (String, String) = (get(&r, "region")?, get(&r, "object")?);
        if !live.contains(&(region.clone(), object.clone())) {
            sqlx::query("DELETE FROM object_reads WHERE region = $1 AND object = $2")
                .bind(&region)
                .bind(&object)
                .execute(cat.pool())
                .await
                .map_err(|e| Error::catalog("forget a read", e))?;
        }
    }
    Ok(())
}

/// One coverage pass over the objects of cluster `cluster_id` at `now_us`: reads what
/// [`plan_reads`] picks, records what passed, returns what failed.
pub async fn read_due(
    p: &Protection,
    cluster_id: &str,
    period: Duration,
    until_next: Duration,
    now_us: i64,
) -> Result<CoverageRun> {
    let cat = &p.engine.catalog;
    let mut held = inventory(p, cluster_id).await?;
    forget_gone(p).await?;
    let keys = p.state().object_keys_by_name().await?;
    let shas: HashMap<(String, String), String> = p
        .state()
        .shipments_with_times()
        .await?
        .into_iter()
        .map(|s| ((s.region, s.object), s.sha256))
        .collect();
    let identities = p.identities();
    let ids: Vec<_> = identities.iter().collect();
    let mut out = CoverageRun {
        objects: held.len() as u64,
        ..CoverageRun::default()
    };
    for i in plan_reads(&held, period, until_next, now_us) {
        let h = held[i].clone();
        let (Some(k), Some(sha)) = (
            keys.get(&h.object),
            shas.get(&(h.region.clone(), h.object.clone())),
        ) else {
            continue;
        };
        if k.key_object == b"shredded" {
            continue;
        }
        let region = p.regions.get(&h.region)?;
        out.read += 1;
        match p.verify_object(region, k, sha, &ids).await {
            Ok(()) => {
                record_read(cat, &h.region, &h.object, now_us).await?;
                held[i].proven_at_us = now_us;
            }
            Err((object, reason)) => {
                record_read(cat, &h.region, &h.object, FAILED).await?;
                held[i].proven_at_us = i64::MIN;
                out.problems.push(Problem {
                    region: h.region.clone(),
                    object,
                    reason,
                });
            }
        }
    }
    out.covered = covered(&held, period, now_us) as u64;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;

    fn held(n: usize, at: i64) -> Vec<Held> {
        (0..n)
            .map(|i| Held {
                region: format!("r{}", i % 2),
                object: format!("o{i}"),
                proven_at_us: at,
            })
            .collect()
    }

    #[test]
    fn a_daily_run_spreads_a_weekly_period_and_nothing_gets_overdue() {
        let week = Duration::from_secs(7 * 86_400);
        let day = Duration::from_secs(86_400);
        // 70 objects all uploaded at day 0: about 10 a day, none older than a week.
        let mut h = held(70, 0);
        let mut per_day = Vec::new();
        for d in 1..=28 {
            let now = d * DAY;
            let picked = plan_reads(&h, week, day, now);
            per_day.push(picked.len());
            for i in picked {
                h[i].proven_at_us = now;
            }
            assert!(
                h.iter().all(|x| now - x.proven_at_us <= 7 * DAY),
                "day {d}: an object overdue"
            );
            assert_eq!(covered(&h, week, now), 70, "day {d}");
        }
        assert!(per_day.iter().all(|&n| n <= 20), "spread: {per_day:?}");
        assert!(per_day[7..].iter().all(|&n| n >= 10), "{per_day:?}");
    }

    #[test]
    fn overdue_objects_are_all_read_and_new_uploads_wait_their_turn() {
        let week = Duration::from_secs(7 * 86_400);
        let day = Duration::from_secs(86_400);
        let mut h = held(5, 0);
        h.extend(held(5, 9 * DAY).into_iter().map(|mut x| {
            x.object.push('n');
            x
        }));
        let picked = plan_reads(&h, week, day, 10 * DAY);
        // The five proven at day 0 are overdue; the share (10 × 1/7 → 2) is within them.
        assert_eq!(picked.len(), 5, "{picked:?}");
        assert!(picked.iter().all(|&i| i < 5));
        assert_eq!(covered(&h, week, 10 * DAY), 5);
    }
}
