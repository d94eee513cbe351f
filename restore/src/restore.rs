//! One restore, from request to report: [`restore`] plans it ([`crate::plan`]: every
//! refusal, nothing written), carries the plan out ([`crate::execute`]) and records the outcome.
//!
//! Phases, each timed (these are the RTO measurements the scheduler and reports use):
//! 1. `fetch_index`: choose the region, read and verify the cluster's indexes, read the
//!    metadata of the WAL layers on the branch's ancestry, stage them, resolve the point and
//!    plan it (image + WAL pieces);
//! 2. `fetch_layers`: download the plan's layers in parallel, each verified end to end, each
//!    from the first region holding a good copy;
//! 3. `write`: materialise the data directory (image pieces checked against their SHA-256,
//!    WAL from the image's redo point to the target);
//! 4. `wal_replay`: PostgreSQL replays that WAL and ends recovery exactly at the point;
//! 5. `first_connection`: the first connection and query.
//!
//! Everything that can be refused is refused before the first layer is fetched: an unknown
//! branch or a point outside every window the region holds (the windows are listed), a
//! target directory that is not empty, PostgreSQL binaries of another major version, too little
//! free disk. A failed restore removes what it wrote; a restore as a branch removes the branch.

use std::sync::Arc;

use cairn_backup::{Protection, Result};
use cairn_engine::catalog::now_us;
use cairn_engine::progress::Progress;
use cairn_engine::TimelineId;

use crate::history::RestoreRow;
use crate::report::RestoreReport;
use crate::request::{describe, RestoreRequest};

/// Restores `req` and records the outcome (report or error) in the appliance's catalog.
pub async fn restore(
    p: &Protection,
    req: &RestoreRequest,
    progress: &Arc<Progress>,
) -> Result<RestoreReport> {
    let started_at = now_us();
    let id = TimelineId::generate().to_string();
    let result = match crate::plan::plan(p, req, progress).await {
        Ok(plan) => crate::execute::execute(p, req, plan, &id, progress).await,
        Err(e) => Err(e),
    };
    let (ok, error, report, lsn, region) = match &result {
        Ok(r) => (
            true,
            None,
            serde_json::to_string(r).unwrap_or_default(),
            Some(r.lsn),
            Some(r.region.clone()),
        ),
        Err(e) => (false, Some(e.to_string()), "{}".into(), None, None),
    };
    let row = RestoreRow {
        id,
        cluster: req.cluster.clone(),
        branch: req.branch.clone(),
        point: describe(&req.point),
        lsn,
        target: req.target.to_string(),
        region,
        ok,
        error,
        report,
        started_at_us: started_at,
        finished_at_us: now_us(),
    };
    if let Err(e) = crate::history::record(&p.engine.catalog, &row).await {
        tracing::warn!(error = %e, "could not record the restore in the catalog");
    }
    result
}
