//! Changing policies: what a new policy set would change against the set in force (`policy
//! plan`), and recording it (`policy apply`) with a cooling-off period for destructive changes.
//!
//! Invariants:
//! - Planning writes nothing. Applying writes one audit record ([`crate::audit`]) and nothing
//!   else.
//! - A change is destructive when, for some cluster, retention under the new policies would
//!   delete layers it keeps under the policies in force, or when a policy in force is removed or
//!   its retention weakened (a shorter PITR window or floor, fewer GFS images, a hold removed).
//!   A destructive change takes effect only after the longest `cooling_off` of the policies
//!   involved, unless confirmed; the audit record says which.
//! - The policies in force are read back from the audit record (the files as applied), never
//!   from the policy directory.

use std::path::Path;

use cairn_engine::Engine;
use cairn_policies::{Context, Policy, PolicySet, Retention};

use crate::audit::{self, AppliedFile, ChangeStatus, PolicyChange};
use crate::error::{Error, Result};
use crate::retention::{ClusterLayers, WindowView};

/// How one policy differs between the set in force and the new set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delta {
    Added,
    Removed,
    Changed,
    Unchanged,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyDelta {
    pub name: String,
    pub delta: Delta,
    pub old_sha256: Option<String>,
    pub new_sha256: Option<String>,
}

/// A schedule added, removed or changed (`from`/`to` are cron expressions with their zone).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScheduleDelta {
    pub policy: String,
    pub kind: &'static str,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// What retention would do to one cluster under the new policies, beyond what it does now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterDelta {
    pub cluster: String,
    pub old_policy: Option<String>,
    pub new_policy: Option<String>,
    /// Layers deleted under the new policies that the policies in force keep.
    pub newly_deleted_layers: usize,
    pub newly_deleted_bytes: u64,
    /// What stays restorable under the new policies.
    pub windows: Vec<WindowView>,
}

/// What applying a policy set would change.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyPlan {
    pub as_of_us: i64,
    /// The change in force, if any.
    pub in_force: Option<String>,
    pub policies: Vec<PolicyDelta>,
    pub schedules: Vec<ScheduleDelta>,
    pub clusters: Vec<ClusterDelta>,
    pub destructive: bool,
    /// Why it is destructive, one line each.
    pub reasons: Vec<String>,
    /// How long a destructive change waits unless confirmed.
    pub cooling_off_seconds: u64,
}

/// The policies in force at `now_us` and the change that put them there.
pub async fn in_force(
    engine: &Engine,
    ctx: &Context,
    now_us: i64,
) -> Result<Option<(PolicyChange, PolicySet)>> {
    let changes = audit::list(&engine.catalog).await?;
    let statuses = audit::statuses(&changes, now_us);
    let Some(i) = statuses.iter().position(|s| *s == ChangeStatus::InForce) else {
        return Ok(None);
    };
    let c = changes[i].clone();
    let files: Vec<(std::path::PathBuf, Vec<u8>)> = c
        .files
        .iter()
        .map(|f| {
            (
                std::path::PathBuf::from(&f.file),
                f.content.clone().into_bytes(),
            )
        })
        .collect();
    let set =
        cairn_policies::parse_set(files.iter().map(|(p, b)| (p.as_path(), b.as_slice())), ctx)
            .map_err(|errors| Error::Policies {
                dir: std::path::PathBuf::from(format!("{} (as applied in change {})", c.dir, c.id)),
                errors,
            })?;
    Ok(Some((c, set)))
}

fn schedules(p: &Policy) -> Vec<(&'static str, String)> {
    let show = |s: &cairn_policies::Schedule| format!("{} ({})", s.expression(), s.timezone());
    let mut v = vec![
        ("image", show(&p.schedules.image)),
        ("verify", show(&p.schedules.verify)),
    ];
    if let Some(d) = &p.schedules.drill {
        v.push(("drill", show(d)));
    }
    v
}

/// Ways `new` keeps less than `old`.
fn weakened(old: &Retention, new: &Retention) -> Vec<String> {
    let d = cairn_units::fmt_duration;
    let mut out = Vec::new();
    if new.pitr < old.pitr {
        out.push(format!(
            "PITR window shortened from {} to {}",
            d(old.pitr),
            d(new.pitr)
        ));
    }
    if new.min_retention < old.min_retention {
        out.push(format!(
            "min_retention shortened from {} to {}",
            d(old.min_retention),
            d(new.min_retention)
        ));
    }
    for (kind, o, n) in [
        ("hourly", old.gfs.hourly, new.gfs.hourly),
        ("daily", old.gfs.daily, new.gfs.daily),
        ("weekly", old.gfs.weekly, new.gfs.weekly),
        ("monthly", old.gfs.monthly, new.gfs.monthly),
        ("yearly", old.gfs.yearly, new.gfs.yearly),
    ] {
        if n < o {
            out.push(format!("{kind} images kept reduced from {o} to {n}"));
        }
    }
    for h in &old.legal_holds {
        if !new.legal_holds.contains(h) {
            out.push(format!("legal hold on {} ({}) removed", h.point, h.reason));
        }
    }
    out
}

/// What applying `new` would change at `now_us`.
pub async fn plan(
    engine: &Engine,
    ctx: &Context,
    new: &PolicySet,
    now_us: i64,
) -> Result<PolicyPlan> {
    let current = in_force(engine, ctx, now_us).await?;
    let old = current.as_ref().map(|(_, s)| s);
    let old_policies: &[Policy] = old.map_or(&[], |s| s.policies.as_slice());
    let mut policies = Vec::new();
    let mut sched = Vec::new();
    let mut reasons = Vec::new();
    let mut cooling = std::time::Duration::ZERO;
    for p in &new.policies {
        let before = old_policies.iter().find(|o| o.name == p.name);
        policies.push(PolicyDelta {
            name: p.name.clone(),
            delta: match before {
                None => Delta::Added,
                Some(o) if o.sha256 == p.sha256 => Delta::Unchanged,
                Some(_) => Delta::Changed,
            },
            old_sha256: before.map(|o| o.sha256.clone()),
            new_sha256: Some(p.sha256.clone()),
        });
        let was = before.map(schedules).unwrap_or_default();
        for (kind, expr) in schedules(p) {
            let from = was.iter().find(|(k, _)| *k == kind).map(|(_, e)| e.clone());
            if from.as_ref() != Some(&expr) {
                sched.push(ScheduleDelta {
                    policy: p.name.clone(),
                    kind,
                    from,
                    to: Some(expr),
                });
            }
        }
        for (kind, expr) in was {
            if !schedules(p).iter().any(|(k, _)| *k == kind) {
                sched.push(ScheduleDelta {
                    policy: p.name.clone(),
                    kind,
                    from: Some(expr),
                    to: None,
                });
            }
        }
        if let Some(o) = before {
            for w in weakened(&o.retention, &p.retention) {
                reasons.push(format!("policy {}: {w}", p.name));
            }
            cooling = cooling.max(o.retention.cooling_off);
        }
        cooling = cooling.max(p.retention.cooling_off);
    }
    for o in old_policies {
        if !new.policies.iter().any(|p| p.name == o.name) {
            policies.push(PolicyDelta {
                name: o.name.clone(),
                delta: Delta::Removed,
                old_sha256: Some(o.sha256.clone()),
                new_sha256: None,
            });
            for (kind, expr) in schedules(o) {
                sched.push(ScheduleDelta {
                    policy: o.name.clone(),
                    kind,
                    from: Some(expr),
                    to: None,
                });
            }
            reasons.push(format!("policy {} removed", o.name));
            cooling = cooling.max(o.retention.cooling_off);
        }
    }
    let mut clusters = Vec::new();
    for c in engine.catalog.clusters().await? {
        let before = old.and_then(|s| s.for_cluster(&c.name));
        let after = new.for_cluster(&c.name);
        let layers = ClusterLayers::load(engine, &c).await?;
        let was = layers.impact(rules_of(before), now_us);
        let will = layers.impact(rules_of(after), now_us);
        let newly: std::collections::BTreeSet<_> = will
            .plan
            .delete
            .difference(&was.plan.delete)
            .copied()
            .collect();
        let bytes = layers.bytes(&newly);
        if !newly.is_empty() {
            reasons.push(format!(
                "cluster {}: retention would delete {} layer(s) ({}) that are kept now",
                c.name,
                newly.len(),
                cairn_units::fmt_size(bytes)
            ));
        }
        clusters.push(ClusterDelta {
            cluster: c.name.clone(),
            old_policy: before.map(|p| p.name.clone()),
            new_policy: after.map(|p| p.name.clone()),
            newly_deleted_layers: newly.len(),
            newly_deleted_bytes: bytes,
            windows: will.windows,
        });
    }
    Ok(PolicyPlan {
        as_of_us: now_us,
        in_force: current.map(|(c, _)| c.id),
        policies,
        schedules: sched,
        clusters,
        destructive: !reasons.is_empty(),
        reasons,
        cooling_off_seconds: cooling.as_secs(),
    })
}

/// Records `new` (read from `dir`) as the policies in force: now, or after the cooling-off
/// period when the change is destructive and not `confirm`ed.
pub async fn apply(
    engine: &Engine,
    ctx: &Context,
    dir: &Path,
    new: &PolicySet,
    by: &str,
    confirm: bool,
    now_us: i64,
) -> Result<(PolicyPlan, PolicyChange)> {
    let p = plan(engine, ctx, new, now_us).await?;
    let delay = if p.destructive && !confirm {
        i64::try_from(p.cooling_off_seconds).unwrap_or(i64::MAX / 2_000_000) * 1_000_000
    } else {
        0
    };
    let files = new
        .policies
        .iter()
        .map(|pol| {
            let content = std::fs::read_to_string(&pol.file)
                .map_err(|e| Error::Refused(format!("cannot read {}: {e}", pol.file.display())))?;
            let sha = cairn_policies_sha(&content);
            if sha != pol.sha256 {
                return Err(Error::Refused(format!(
                    "{} changed while it was being applied; run `cairn policy apply` again",
                    pol.file.display()
                )));
            }
            Ok(AppliedFile {
                name: pol.name.clone(),
                file: pol.file.display().to_string(),
                sha256: pol.sha256.clone(),
                content,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let change = PolicyChange {
        id: audit::new_id(),
        requested_at_us: now_us,
        requested_by: by.to_string(),
        dir: dir.display().to_string(),
        destructive: p.destructive,
        confirmed: p.destructive && confirm,
        effective_at_us: now_us + delay,
        cancelled_at_us: None,
        cancelled_by: None,
        summary: p.reasons.join("\n"),
        files,
    };
    audit::record(&engine.catalog, &change).await?;
    Ok((p, change))
}

fn rules_of(p: Option<&Policy>) -> Option<(&Retention, chrono_tz::Tz)> {
    p.map(|p| (&p.retention, p.timezone))
}

/// SHA-256 of a policy file's text, as the policies crate records it.
fn cairn_policies_sha(content: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(content.as_bytes()))
}
