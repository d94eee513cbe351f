//! Verification as the appliance asks for it: the request built from the policy in force for
//! the cluster (its checks, probes, point selection, RPO and RTO), with what the caller
//! overrides, carried out by [`cairn_verifier::run`].
//!
//! Invariants:
//! - Without a policy, or with checks given, the run does what it is told; a policy's probes
//!   run only with the `probes` check.
//! - A random point is drawn within the policy's range up to now, from the operating system's
//!   random source.
//! - A run has a time limit (the caller's, the policy's, else four hours), and its restored
//!   copy is kept for the policy's `verification.window` unless the caller says otherwise
//!   (removed at once without a policy).
//! - Every run reads back its share of the cluster's objects in every region, so that each is
//!   proven within 7 days given the longest gap of the policy's verify schedule (a day
//!   without a policy).

use std::sync::Arc;

use cairn_engine::branch::PointSpec;
use cairn_engine::progress::Progress;
use cairn_policies::{Check, Probe, VerifyPoint};
use cairn_verifier::coverage::DEFAULT_PERIOD as COVERAGE_PERIOD;
use cairn_verifier::report::PolicyRef;
use cairn_verifier::run::{Coverage, Verified, VerifyRequest};

use crate::error::Result;
use crate::Appliance;

/// What the caller decides about a verification (the rest comes from the policy in force).
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    pub branch: Option<String>,
    pub point: Option<PointSpec>,
    pub region: Option<String>,
    pub checks: Option<Vec<Check>>,
    pub probes: Vec<Probe>,
    pub requested_by: String,
    pub parallel: usize,
    /// The run's time limit (default: the policy's `verification.time_limit`, else
    /// [`cairn_policies::defaults::TIME_LIMIT`]).
    pub time_limit: Option<std::time::Duration>,
    /// How long the restored copy is kept for inspection (default: the policy's
    /// `verification.window`, else removed at once); zero removes it at once.
    pub keep: Option<std::time::Duration>,
}

/// The checks run when neither a policy nor the caller names them: every check this cairn
/// carries out on its own (not heartbeats: `cairn up` writes them only into clusters whose
/// policy lists the check).
pub const UNGOVERNED_CHECKS: [Check; 6] = [
    Check::ObjectIntegrity,
    Check::WalContinuity,
    Check::PageChecksums,
    Check::RecoveryTarget,
    Check::Amcheck,
    Check::Fingerprint,
];

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The request for verifying `cluster` at `now_us`.
pub async fn request(
    app: &Appliance,
    cluster: &str,
    o: &VerifyOptions,
    now_us: i64,
) -> Result<VerifyRequest> {
    let engine = app.engine();
    let ctx = crate::policy::context(engine, crate::policy::DEFAULT_SHIP_INTERVAL).await?;
    let set = crate::policy_change::in_force(engine, &ctx, now_us).await?;
    let policy = set
        .as_ref()
        .and_then(|(_, s)| s.for_cluster(cluster))
        .cloned();
    let (point, selection) = match (&o.point, policy.as_ref().map(|p| p.verification.point)) {
        (Some(p), _) => (p.clone(), "given".to_string()),
        (None, Some(VerifyPoint::Random { within })) => {
            let mut b = [0u8; 8];
            cairn_engine::ids::random_bytes(&mut b);
            let back = (u64::from_le_bytes(b) % (micros(within).max(1) as u64)) as i64;
            (
                PointSpec::Time(now_us - back),
                format!("random within {}", cairn_units::fmt_duration(within)),
            )
        }
        (None, Some(VerifyPoint::At(t))) => (
            PointSpec::Time(t.timestamp_micros()),
            format!("the policy's point {}", t.to_rfc3339()),
        ),
        (None, _) => (PointSpec::Head, "latest".to_string()),
    };
    let mut probes = o.probes.clone();
    let checks = match (&o.checks, &policy) {
        (Some(c), _) => c.clone(),
        (None, Some(p)) => {
            probes.extend(p.verification.probes.iter().cloned());
            p.verification.checks.clone()
        }
        (None, None) => {
            let mut c = UNGOVERNED_CHECKS.to_vec();
            if !probes.is_empty() {
                c.push(Check::Probes);
            }
            c
        }
    };
    // Coverage: each object read within the default period, the runs as far apart as the
    // policy's verify schedule allows (a day without a policy).
    let until_next = policy
        .as_ref()
        .and_then(|p| {
            let from = chrono::DateTime::from_timestamp_micros(now_us)?;
            p.schedules
                .verify
                .longest_interval(from, COVERAGE_PERIOD * 4)
        })
        .unwrap_or(std::time::Duration::from_secs(86_400));
    Ok(VerifyRequest {
        cluster: cluster.to_string(),
        branch: o.branch.clone().unwrap_or_else(|| "main".into()),
        point,
        selection,
        region: o.region.clone(),
        requested_by: o.requested_by.clone(),
        policy: policy.as_ref().map(|p| PolicyRef {
            name: p.name.clone(),
            file_sha256: p.sha256.clone(),
            rpo_ms: p.objectives.rpo.as_millis() as u64,
            rto_ms: p.objectives.rto.as_millis() as u64,
        }),
        checks,
        probes,
        parallel: o.parallel.max(1),
        coverage: Some(Coverage {
            period: COVERAGE_PERIOD,
            until_next: until_next.min(COVERAGE_PERIOD),
        }),
        time_limit: Some(
            o.time_limit
                .or(policy.as_ref().map(|p| p.verification.time_limit))
                .unwrap_or(cairn_policies::defaults::TIME_LIMIT),
        ),
        keep: o
            .keep
            .or(policy.as_ref().map(|p| p.verification.window))
            .filter(|d| !d.is_zero()),
    })
}

/// Verifies `cluster` now.
pub async fn verify(
    app: &Appliance,
    cluster: &str,
    o: &VerifyOptions,
    progress: &Arc<Progress>,
) -> Result<Verified> {
    let req = request(app, cluster, o, cairn_engine::catalog::now_us()).await?;
    Ok(cairn_verifier::run::verify(app.protection(), &req, progress).await?)
}
