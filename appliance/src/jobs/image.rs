//! The scheduled image job: a new image layer of every branch of the cluster whose compute
//! runs and that has WAL since its newest image.
//!
//! Invariants:
//! - A branch where no transaction committed since its newest image gets no image (the run says so); a
//!   branch without a running compute is reported, not started.
//! - One branch's failure does not stop the others; the run fails if any branch failed.

use std::sync::Arc;

use cairn_engine::catalog::ClusterKind;
use cairn_engine::progress::Progress;

use super::record::Outcome;
use crate::Appliance;

/// Takes the images of cluster `name`; the outcome and one line per branch.
pub async fn run(app: &Appliance, name: &str) -> (Outcome, String) {
    let engine = app.engine();
    let cluster = match engine.resolve_cluster(Some(name)).await {
        Ok(c) => c,
        Err(e) => return (Outcome::Failed, format!("cluster '{name}': {e}")),
    };
    if cluster.kind == ClusterKind::Adopted {
        return (
            Outcome::Skipped,
            format!(
                "cluster '{name}' is adopted: its image comes from the source at adoption; \
                 scheduled images of adopted clusters are not supported yet"
            ),
        );
    }
    let branches = match engine.catalog.branches(cluster.id).await {
        Ok(b) => b,
        Err(e) => return (Outcome::Failed, format!("branches of '{name}': {e}")),
    };
    let mut lines = Vec::new();
    let (mut taken, mut failed) = (0, 0);
    for b in branches {
        let tl = b.timeline_id;
        match engine.catalog.compute(tl).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                lines.push(format!("{}: no compute runs, no image", b.name));
                continue;
            }
            Err(e) => {
                failed += 1;
                lines.push(format!("{}: {e}", b.name));
                continue;
            }
        }
        match committed_since_image(app, &cluster, tl).await {
            Ok(false) => {
                lines.push(format!(
                    "{}: nothing new since its newest image (no transaction committed)",
                    b.name
                ));
                continue;
            }
            Ok(true) => {}
            Err(e) => {
                failed += 1;
                lines.push(format!("{}: {e}", b.name));
                continue;
            }
        }
        match engine
            .image_create(&cluster, &b.name, &Arc::new(Progress::new()))
            .await
        {
            Ok(r) => {
                taken += 1;
                tracing::info!(branch = %b.name, end = %r.end, stored = r.stored_bytes, "scheduled image layer");
                lines.push(format!(
                    "{}: image {} at {} ({} stored)",
                    b.name,
                    r.layer,
                    r.end,
                    cairn_units::fmt_size(r.stored_bytes)
                ));
            }
            Err(e) => {
                failed += 1;
                lines.push(format!("{}: {e}", b.name));
            }
        }
    }
    let outcome = if failed > 0 {
        Outcome::Failed
    } else if taken > 0 {
        Outcome::Succeeded
    } else {
        Outcome::Skipped
    };
    (outcome, lines.join("; "))
}

/// Whether a transaction committed (or aborted) on branch `tl` after its newest image, once
/// the compute's WAL is stored. An image writes WAL of its own (a checkpoint), so bytes alone
/// would never say "nothing new".
async fn committed_since_image(
    app: &Appliance,
    cluster: &cairn_engine::catalog::ClusterRow,
    tl: cairn_engine::TimelineId,
) -> crate::Result<bool> {
    let engine = app.engine();
    engine.compute_sync(cluster, tl).await?;
    let t = engine.catalog.timeline(tl).await?;
    let map = engine.layer_map(cluster).await?;
    let Ok(plan) = map.plan(tl, t.head) else {
        return Ok(true); // no image reconstructs the head: one is needed
    };
    let image_end = plan.image.end;
    Ok(engine
        .catalog
        .txn_layers_before(tl, image_end, t.head)
        .await?
        .iter()
        .any(|l| l.summary.last.end > image_end))
}
