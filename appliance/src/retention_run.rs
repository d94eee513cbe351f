//! Retention carried out: each cluster's layers that the policies in force no longer keep are
//! retired ([`cairn_engine::retire`]); their copies in the regions follow through the deletion
//! queue, after its delay.
//!
//! Invariants:
//! - Only the policies in force count (read back from the audit log at `now`): a destructive
//!   change cooling off deletes nothing until it takes effect, and a cluster no policy governs
//!   keeps everything.
//! - What is deleted is exactly the plan of [`crate::retention::ClusterLayers::impact`], the
//!   same plan `policy plan` shows; the engine refuses it whole if it would break a branch
//!   head or an image's references.
//! - One cluster's failure does not stop the others; each is reported.
//! - A fenced appliance retires nothing (its caller does not call this).

use cairn_policies::Context;

use crate::error::Result;
use crate::retention::{ClusterLayers, WindowView};
use crate::Appliance;

/// What retention did to one cluster.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterRetention {
    pub cluster: String,
    pub policy: String,
    /// The policy change in force.
    pub change: String,
    pub retired: cairn_engine::retire::Retired,
    pub kept_layers: usize,
    /// What stays restorable.
    pub windows: Vec<WindowView>,
}

/// One pass over every cluster at `now_us`: the clusters retention touched (or would have,
/// with the error that stopped it).
pub async fn run(
    app: &Appliance,
    ctx: &Context,
    now_us: i64,
) -> Result<Vec<std::result::Result<ClusterRetention, (String, crate::Error)>>> {
    let engine = app.engine();
    let Some((change, set)) = crate::policy_change::in_force(engine, ctx, now_us).await? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for c in engine.catalog.clusters().await? {
        let Some(p) = set.for_cluster(&c.name) else {
            continue;
        };
        let one = async {
            let layers = ClusterLayers::load(engine, &c).await?;
            let impact = layers.impact(Some((&p.retention, p.timezone)), now_us);
            let retired = engine.retire_layers(&c, &impact.plan.delete).await?;
            Ok::<_, crate::Error>(ClusterRetention {
                cluster: c.name.clone(),
                policy: p.name.clone(),
                change: change.id.clone(),
                retired,
                kept_layers: impact.keep_layers,
                windows: impact.windows,
            })
        };
        out.push(one.await.map_err(|e| (c.name.clone(), e)));
    }
    Ok(out)
}
