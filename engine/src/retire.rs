//! Retiring layers: what retention decided a cluster no longer needs leaves the catalog and
//! the disk. Deciding is retention's work (`cairn_scheduler::retention`); this is the one
//! place that deletes layers, and it refuses what would break the cluster's structure.
//!
//! Invariants:
//! - Under the cluster's lock (no branch is created or moved meanwhile) and the locks of the
//!   timelines touched (no ingest or image on them meanwhile). Every check, and the list of
//!   layers a file must belong to not to be a stray, is read after all those locks are held:
//!   a layer committed while a lock was awaited is known and kept.
//! - Refused whole, deleting nothing, when a layer is not the cluster's, when a layer kept
//!   would read a retired one (an image's references), or when a branch head reconstructible
//!   before would not be after. Retention keeps more than that (its windows); this is the
//!   engine's own guard, independent of retention's planner.
//! - The catalog rows (layer, references, transaction summary, markers) go in one transaction;
//!   files are removed only after it committed. A file left by a crash between the two is a
//!   layer file the catalog does not know: the next retirement on that timeline removes it
//!   (under the timeline's lock, so no ingest is writing it).
//! - Copies in regions are not touched here: the protection layer's deletion queue retires
//!   them once they are no longer in the catalog (after its deletion delay).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use crate::catalog::ClusterRow;
use crate::engine::{layer_map_of, Engine};
use crate::error::{Error, Result};
use crate::ids::{LayerId, TimelineId};

/// What a retirement removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Retired {
    pub layers: usize,
    pub file_bytes: u64,
    /// Layer files the catalog did not know (left by a crash), removed too.
    pub strays: usize,
}

impl Engine {
    /// Deletes layers `ids` of `cluster` from the catalog and the disk (see the module's
    /// invariants for what is refused).
    pub async fn retire_layers(
        &self,
        cluster: &ClusterRow,
        ids: &BTreeSet<LayerId>,
    ) -> Result<Retired> {
        if ids.is_empty() {
            return Ok(Retired::default());
        }
        let _c = self.home.lock(
            &format!("cluster-{}", cluster.id),
            &format!("cluster '{}'", cluster.name),
            Duration::from_secs(10),
        )?;
        let layers = self.catalog.layers(cluster.id).await?;
        let retired: Vec<_> = layers.iter().filter(|l| ids.contains(&l.id)).collect();
        if retired.len() != ids.len() {
            let known: HashSet<LayerId> = layers.iter().map(|l| l.id).collect();
            let missing: Vec<String> = ids
                .iter()
                .filter(|i| !known.contains(i))
                .map(|i| i.to_string())
                .collect();
            return Err(Error::Refused(format!(
                "cannot retire layer(s) {} of cluster '{}': not among its layers",
                missing.join(", "),
                cluster.name
            )));
        }
        let touched: BTreeSet<TimelineId> = retired.iter().map(|l| l.timeline_id).collect();
        let mut _locks = Vec::new();
        for tl in &touched {
            _locks.push(self.home.lock(
                &format!("timeline-{tl}"),
                &format!("a timeline of cluster '{}'", cluster.name),
                Duration::from_secs(10),
            )?);
        }
        // Read again under the timeline locks: an image or an ingest that held one while we
        // waited may have committed a layer since, and a layer missing from `kept` below would
        // have its file removed as a stray.
        let layers = self.catalog.layers(cluster.id).await?;
        let retired: Vec<_> = layers.iter().filter(|l| ids.contains(&l.id)).collect();
        if retired.len() != ids.len() {
            return Err(Error::Refused(format!(
                "cannot retire {} layer(s) of cluster '{}': some left the catalog meanwhile",
                ids.len(),
                cluster.name
            )));
        }
        // The structure after: no kept image reads a retired layer; every head that could be
        // reconstructed still can.
        for (image, r) in self.catalog.layer_refs(cluster.id).await? {
            if !ids.contains(&image) && ids.contains(&r) {
                return Err(Error::Refused(format!(
                    "cannot retire layer {r} of cluster '{}': image {image}, which is kept, reads it",
                    cluster.name
                )));
            }
        }
        let tls = self.catalog.timelines(cluster.id).await?;
        let before = layer_map_of(&tls, &layers);
        let kept: Vec<_> = layers
            .iter()
            .filter(|l| !ids.contains(&l.id))
            .cloned()
            .collect();
        let after = layer_map_of(&tls, &kept);
        for b in self.catalog.branches(cluster.id).await? {
            let Some(t) = tls.iter().find(|t| t.id == b.timeline_id) else {
                continue;
            };
            if before.plan(t.id, t.head).is_ok() && after.plan(t.id, t.head).is_err() {
                return Err(Error::Refused(format!(
                    "cannot retire {} layer(s) of cluster '{}': the head of branch '{}' would no \
                     longer be reconstructible",
                    ids.len(),
                    cluster.name,
                    b.name
                )));
            }
        }
        let mut tx = self.catalog.begin().await?;
        let doomed: Vec<LayerId> = retired.iter().map(|l| l.id).collect();
        tx.delete_layers(&doomed).await?;
        tx.commit().await?;
        let mut out = Retired {
            layers: retired.len(),
            ..Retired::default()
        };
        for l in &retired {
            let path = self.layer_path(l);
            match std::fs::remove_file(&path) {
                Ok(()) => out.file_bytes += l.file_size,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::path("remove a retired layer", &path, e)),
            }
        }
        // Strays: layer files in the touched timelines' directories that the catalog does not
        // know (a crash after the commit above, or an ingest that died before its commit).
        let known: HashSet<String> = kept.iter().map(|l| l.id.to_string()).collect();
        let mut dirs: BTreeMap<TimelineId, std::path::PathBuf> = BTreeMap::new();
        for l in &retired {
            if let Some(dir) = self.layer_path(l).parent() {
                dirs.insert(l.timeline_id, dir.to_path_buf());
            }
        }
        for dir in dirs.values() {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some((_, id)) = crate::layer::file::parse_file_name(&name) else {
                    continue;
                };
                if known.contains(&id.to_string()) {
                    continue;
                }
                if std::fs::remove_file(e.path()).is_ok() {
                    tracing::info!(file = %e.path().display(), "removed a layer file the catalog does not know");
                    out.strays += 1;
                }
            }
        }
        tracing::info!(
            cluster = %cluster.name,
            layers = out.layers,
            bytes = out.file_bytes,
            "retired layers"
        );
        Ok(out)
    }
}
