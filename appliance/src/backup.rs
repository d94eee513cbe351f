//! "Back up now": an image layer (unless asked not to), then shipping until every layer of the
//! cluster is in `min_copies` regions, or a report of what is not.
//!
//! Invariants:
//! - A backup is called durable only when the catalog's shipment records show every layer of
//!   the cluster in at least `min_copies` regions after shipping; anything less is
//!   [`Error::NotDurable`](crate::Error::NotDurable), naming the regions' errors.
//! - A fenced appliance (rebuilt, not promoted) refuses before doing anything.
//! - With `no_image`, what running computes have committed is synced first, so that everything
//!   committed before the call is in the backup.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_engine::catalog::{ClusterKind, ClusterRow};
use cairn_engine::progress::Progress;
use serde::Serialize;

use crate::{Appliance, Error, Result};

/// How often shipping progress is sampled into [`Progress`].
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// What happened to the image step of a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageStep {
    /// An image layer of every branch with a running compute (or of main) was taken.
    Taken { branches: usize },
    /// Asked not to take one (`no_image`).
    Skipped,
    /// An adopted cluster without a running compute: its latest image and WAL are shipped.
    AdoptedShipsLatest,
}

/// One region's part of a backup.
#[derive(Debug, Clone, Serialize)]
pub struct RegionShipment {
    pub region: String,
    /// Objects shipped, when the region took everything.
    pub shipped: Option<usize>,
    pub error: Option<String>,
}

/// The outcome of a durable backup of one cluster.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    pub cluster: String,
    pub image: ImageStep,
    pub durable: bool,
    pub under_replicated_layers: usize,
    pub min_copies: u32,
    pub regions: Vec<RegionShipment>,
}

impl BackupReport {
    /// `Ok` when the backup is durable, else [`Error::NotDurable`] naming the regions' errors.
    pub fn require_durable(&self) -> Result<()> {
        if self.durable {
            return Ok(());
        }
        Err(Error::NotDurable {
            cluster: self.cluster.clone(),
            layers: self.under_replicated_layers,
            min_copies: self.min_copies,
            reasons: self
                .regions
                .iter()
                .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.region)))
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}

impl Appliance {
    /// Backs up one cluster now (see the module's invariants). `progress` shows the image and
    /// the shipping. The report says whether the backup is durable
    /// ([`BackupReport::require_durable`]).
    pub async fn backup_now(
        &self,
        c: &ClusterRow,
        no_image: bool,
        progress: &Arc<Progress>,
    ) -> Result<BackupReport> {
        let p = &self.protection;
        p.require_unfenced("take backups")?;
        let image = if no_image {
            // Everything committed so far goes into this backup.
            for x in self.engine.compute_list().await? {
                if x.cluster == c.name && x.state == "running" {
                    self.engine.compute_sync(c, x.timeline).await?;
                }
            }
            ImageStep::Skipped
        } else {
            self.image_now(c, progress).await?
        };
        let ship = p.ship_all(Some(c.id));
        tokio::pin!(ship);
        let results = loop {
            tokio::select! {
                r = &mut ship => break r,
                _ = tokio::time::sleep(PROGRESS_EVERY) => {
                    let st = p.status();
                    let total: u64 = st.iter().map(|s| s.pending_bytes + s.shipped_bytes).sum();
                    let done: u64 = st.iter().map(|s| s.shipped_bytes).sum();
                    progress.phase("shipping", total);
                    progress.done.store(done, Ordering::Relaxed);
                }
            }
        };
        let missing = self.under_replicated(c).await?;
        let report = BackupReport {
            cluster: c.name.clone(),
            image,
            durable: missing.is_empty(),
            under_replicated_layers: missing.len(),
            min_copies: p.regions.min_copies,
            regions: results
                .iter()
                .map(|(r, x)| RegionShipment {
                    region: r.clone(),
                    shipped: x.as_ref().ok().copied(),
                    error: x.as_ref().err().map(|e| e.to_string()),
                })
                .collect(),
        };
        Ok(report)
    }

    /// The clusters a backup of `name` (or of everything) covers, refused before anything
    /// is done when the appliance is fenced or has no cluster.
    pub async fn backup_targets(&self, name: Option<&str>) -> Result<Vec<ClusterRow>> {
        self.protection.require_unfenced("take backups")?;
        let clusters = self.clusters(name).await?;
        if clusters.is_empty() {
            return Err(Error::Refused(
                "there is no cluster to back up; create one with `cairn cluster create`".into(),
            ));
        }
        Ok(clusters)
    }

    /// Layers of `c` held by fewer than `min_copies` regions.
    pub async fn under_replicated(&self, c: &ClusterRow) -> Result<Vec<String>> {
        let p = &self.protection;
        let copies = p.copies().await?;
        let min = p.regions.min_copies as usize;
        Ok(self
            .engine
            .catalog
            .layers(c.id)
            .await?
            .into_iter()
            .map(|l| l.id.to_string())
            .filter(|id| copies.get(id).map_or(0, |s| s.len()) < min)
            .collect())
    }

    /// Takes an image of every branch with a running compute; for a managed cluster without
    /// one, starts main's compute for the image and stops it again.
    async fn image_now(&self, c: &ClusterRow, progress: &Arc<Progress>) -> Result<ImageStep> {
        let engine = &self.engine;
        let computes = engine.compute_list().await?;
        let running: Vec<_> = computes
            .iter()
            .filter(|x| x.cluster == c.name && x.state == "running")
            .collect();
        if running.is_empty() {
            if c.kind == ClusterKind::Adopted {
                return Ok(ImageStep::AdoptedShipsLatest);
            }
            engine.compute_start(c, "main", None, progress).await?;
            let r = engine.image_create(c, "main", progress).await;
            engine.compute_stop(c, "main").await?;
            r?;
            return Ok(ImageStep::Taken { branches: 1 });
        }
        for x in &running {
            engine.image_create(c, &x.branch, progress).await?;
        }
        Ok(ImageStep::Taken {
            branches: running.len(),
        })
    }
}
