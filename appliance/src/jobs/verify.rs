//! The scheduled verification job: one verification run of the cluster as its policy says
//! (checks, probes, point selection), from the region verified least recently
//! ([`crate::verify`], [`cairn_verifier::run`]).
//!
//! Invariants: the run always leaves a report (the job's detail names it); the job succeeds
//! only when every check passed.

use std::sync::Arc;

use cairn_engine::progress::Progress;
use cairn_verifier::report::Outcome as Checked;

use super::record::{JobRun, Outcome};
use crate::verify::VerifyOptions;
use crate::Appliance;

/// Verifies the run's cluster; the outcome and what the report says.
pub async fn run(app: &Appliance, run: &JobRun) -> (Outcome, String) {
    let o = VerifyOptions {
        requested_by: format!("schedule:{}/{}", run.key.policy, run.id),
        parallel: 4,
        ..VerifyOptions::default()
    };
    let progress = Arc::new(Progress::new());
    match crate::verify::verify(app, &run.key.cluster, &o, &progress).await {
        Err(e) => (Outcome::Failed, format!("verification could not run: {e}")),
        Ok(done) => {
            let r = &done.sealed.report;
            let failed: Vec<&str> = r
                .checks
                .iter()
                .filter(|c| c.outcome == Checked::Failed)
                .map(|c| c.name.as_str())
                .collect();
            let what = format!(
                "report {} from {}, point {} ({}), RTO measured {} ms",
                r.sequence, r.region, r.point.lsn, r.point.selection, r.measured_rto_ms
            );
            if failed.is_empty() {
                (Outcome::Succeeded, format!("passed: {what}"))
            } else {
                (
                    Outcome::Failed,
                    format!("FAILED ({}): {what}", failed.join(", ")),
                )
            }
        }
    }
}
