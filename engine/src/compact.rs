//! WAL compaction carried out: adjacent WAL layers of one timeline replaced by one layer that
//! holds the same WAL. Which layers to merge is decided elsewhere
//! (`cairn_scheduler::compaction`); this is the one place that merges.
//!
//! It happens in two steps so that the caller can put the merged layer where it must be
//! before the old ones go (`cairn up` ships it to every region first, see
//! `cairn_appliance::compaction_run`): [`Engine::stage_compaction`] writes the merged layer
//! outside the timeline, [`Engine::commit_compaction`] swaps it in. [`Engine::compact_wal`]
//! does both at once.
//!
//! Invariants:
//! - Each step holds the cluster's lock and the timeline's lock (no ingest, image or
//!   retirement on the timeline meanwhile); between them the timeline is free, so the merged
//!   file waits in `HOME/compacting/`, where no sweep of the timeline's strays can remove it.
//! - Refused whole, writing nothing, unless the layers are at least two WAL layers of the
//!   cluster, of one timeline, each starting where the previous one ends. The commit is
//!   refused, changing nothing, unless every old layer is still in the catalog.
//! - The WAL is parsed again from the old layers, record by record, with the chain checks of
//!   ingest; the new layer must end exactly where the last old one ends. Its transaction
//!   summary and markers come from that parse, so they describe the same records. Its time of
//!   writing is the newest old layer's, so merging the same layers twice gives the same layer.
//! - The new layer file is durable in the timeline before the catalog changes; the new layer
//!   goes in and the old ones go out in one transaction; the old files are removed after it
//!   committed (a file a crash leaves behind is swept by the next recovery of the timeline; a
//!   staged file by the next [`Engine::sweep_compacting`]). The reconstructible points are the
//!   same before and after.
//! - Region copies are not touched here: the caller ships the new layer (before the commit,
//!   or after it like any new layer), and the deletion queue retires the old copies once they
//!   are no longer in the catalog and no index in the region names them.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::catalog::{ClusterRow, LayerRow};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::home::LockGuard;
use crate::ids::{LayerId, Lsn};
use crate::ingest::wal::{self as wal_ingest, LayerWalSource};
use crate::layer::file::{LayerFile, LayerKind};
use crate::layer::wal::WalMeta;
use crate::wal::WalSource;

/// What a compaction did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Compacted {
    pub layer: LayerId,
    pub start: Lsn,
    pub end: Lsn,
    pub replaced: usize,
    /// File bytes of the old layers, and of the new one.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// A merged layer written and waiting to be swapped in ([`Engine::commit_compaction`]) or
/// thrown away ([`Engine::discard_compaction`]).
pub struct StagedCompaction {
    /// The layers it replaces, in LSN order.
    pub old: Vec<LayerRow>,
    /// The merged layer's catalog row as it will be committed.
    pub row: LayerRow,
    /// Where its file waits (outside the timeline's directory).
    pub path: PathBuf,
    built: wal_ingest::BuiltWal,
}

/// WAL pages served from several WAL layer files of one timeline, in LSN order: each page from
/// the last layer that holds its start (a layer holds the whole page its first record is on).
struct ChainSource<'a> {
    parts: Vec<LayerWalSource<'a>>,
}

impl WalSource for ChainSource<'_> {
    fn read_page(&mut self, page: Lsn, buf: &mut [u8]) -> std::io::Result<usize> {
        match self
            .parts
            .iter_mut()
            .rev()
            .find(|p| p.meta.data_start <= page && page < p.meta.end)
        {
            Some(p) => p.read_page(page, buf),
            None => Ok(0),
        }
    }
}

impl Engine {
    /// Replaces WAL layers `ids` of `cluster` by one layer holding the same WAL, at once (see
    /// the module's invariants).
    pub async fn compact_wal(
        &self,
        cluster: &ClusterRow,
        ids: &BTreeSet<LayerId>,
    ) -> Result<Compacted> {
        let _held = self.compaction_lock(Duration::from_secs(600))?;
        let staged = self.stage_compaction(cluster, ids).await?;
        self.commit_compaction(cluster, staged).await
    }

    /// The lock whoever compacts holds from staging to commit (or discard), so that
    /// [`Engine::sweep_compacting`] never removes a staged layer still wanted.
    pub fn compaction_lock(&self, wait: Duration) -> Result<LockGuard> {
        self.home.lock("compacting", "WAL compaction", wait)
    }

    /// Where merged layers wait between staging and commit.
    pub fn compacting_dir(&self) -> PathBuf {
        self.home.root.join("compacting")
    }

    /// Removes the staged layers a dead process left in `HOME/compacting/` (the caller holds
    /// the compaction lock, so none is still wanted). Returns how many were removed.
    pub fn sweep_compacting(&self, _held: &LockGuard) -> usize {
        let mut removed = 0;
        for e in std::fs::read_dir(self.compacting_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            if std::fs::remove_file(e.path()).is_ok() {
                tracing::info!(file = %e.path().display(), "removed a merged WAL layer a stopped compaction left");
                removed += 1;
            }
        }
        removed
    }

    /// Writes the layer that would replace WAL layers `ids` of `cluster` into
    /// `HOME/compacting/`; the catalog does not change.
    pub async fn stage_compaction(
        &self,
        cluster: &ClusterRow,
        ids: &BTreeSet<LayerId>,
    ) -> Result<StagedCompaction> {
        let refuse = |why: String| {
            Err(Error::Refused(format!(
                "cannot compact {} layer(s) of cluster '{}': {why}",
                ids.len(),
                cluster.name
            )))
        };
        if ids.len() < 2 {
            return refuse("compaction merges at least two WAL layers".into());
        }
        let _c = self.home.lock(
            &format!("cluster-{}", cluster.id),
            &format!("cluster '{}'", cluster.name),
            Duration::from_secs(10),
        )?;
        let mut old: Vec<LayerRow> = self
            .catalog
            .layers(cluster.id)
            .await?
            .into_iter()
            .filter(|l| ids.contains(&l.id))
            .collect();
        if old.len() != ids.len() {
            return refuse("not all of them are layers of the cluster".into());
        }
        old.sort_by_key(|l| l.start);
        let tl = old[0].timeline_id;
        if let Some(l) = old
            .iter()
            .find(|l| l.kind != LayerKind::Wal || l.timeline_id != tl)
        {
            return refuse(format!(
                "layer {} is not a WAL layer of the same timeline",
                l.id
            ));
        }
        if let Some(w) = old.windows(2).find(|w| w[0].end != w[1].start) {
            return refuse(format!(
                "layer {} ends at {} but the next one starts at {}",
                w[0].id, w[0].end, w[1].start
            ));
        }
        let _t = self
            .home
            .lock_timeline(tl, &format!("a timeline of cluster '{}'", cluster.name))?;
        let stream = self.stream(cluster, tl);
        let out_dir = self.compacting_dir();
        let paths: Vec<_> = old.iter().map(|l| self.layer_path(l)).collect();
        let end = old[old.len() - 1].end;
        // Written when the newest WAL it holds was stored: retention's floor counts from
        // there, and staging the same layers again yields the same layer (the same id).
        let created = old.iter().map(|l| l.created_at_us).max().unwrap_or(0);
        let built = tokio::task::spawn_blocking(move || -> Result<wal_ingest::BuiltWal> {
            let mut files = Vec::with_capacity(paths.len());
            for p in &paths {
                let f = LayerFile::open(p, LayerKind::Wal)?;
                let meta = WalMeta::decode(&f.meta)
                    .map_err(|e| Error::corrupt(format!("WAL layer {}", p.display()), e.0))?;
                files.push((f, meta));
            }
            let (start, prev) = (files[0].1.start, files[0].1.prev_record);
            let mut src = ChainSource {
                parts: files
                    .iter()
                    .map(|(f, m)| LayerWalSource::new(f, m))
                    .collect(),
            };
            let out = wal_ingest::scan(
                &stream,
                &mut src,
                &paths[0],
                start,
                prev,
                Some(end),
                None,
                None,
            )?;
            if out.end != end {
                return Err(Error::corrupt(
                    format!("WAL layers {} and the next", paths[0].display()),
                    format!(
                        "their records end at {}, not at {end} as the catalog says",
                        out.end
                    ),
                ));
            }
            wal_ingest::write_layer(&out_dir, &stream, &mut src, &out, prev, created)
        })
        .await
        .map_err(|e| Error::io("WAL compaction task", std::io::Error::other(e.to_string())))??;
        let row = LayerRow {
            id: built.id,
            cluster_id: cluster.id,
            timeline_id: tl,
            kind: LayerKind::Wal,
            start: built.meta.start,
            end: built.meta.end,
            file_size: built.file_size,
            logical_size: built.meta.end.0 - built.meta.start.0,
            stored_bytes: built.file_size,
            created_at_us: built.meta.created_at_us,
        };
        Ok(StagedCompaction {
            old,
            row,
            path: built.path.clone(),
            built,
        })
    }

    /// Throws a staged merged layer away.
    pub fn discard_compaction(&self, staged: StagedCompaction) {
        if let Err(e) = std::fs::remove_file(&staged.path) {
            tracing::warn!(file = %staged.path.display(), error = %e, "staged layer left behind");
        }
    }

    /// Swaps a staged merged layer in for the layers it replaces, in one catalog transaction;
    /// refused, changing nothing but removing the staged file, when one of them left the
    /// catalog meanwhile.
    pub async fn commit_compaction(
        &self,
        cluster: &ClusterRow,
        staged: StagedCompaction,
    ) -> Result<Compacted> {
        let tl = staged.row.timeline_id;
        let locked = (|| {
            let c = self.home.lock(
                &format!("cluster-{}", cluster.id),
                &format!("cluster '{}'", cluster.name),
                Duration::from_secs(10),
            )?;
            let t = self
                .home
                .lock_timeline(tl, &format!("a timeline of cluster '{}'", cluster.name))?;
            Ok::<_, Error>((c, t))
        })();
        let _locks = match locked {
            Ok(l) => l,
            Err(e) => {
                self.discard_compaction(staged);
                return Err(e);
            }
        };
        let now: BTreeSet<LayerId> = self
            .catalog
            .layers(cluster.id)
            .await?
            .into_iter()
            .map(|l| l.id)
            .collect();
        if let Some(gone) = staged.old.iter().find(|l| !now.contains(&l.id)) {
            let why = format!(
                "cannot compact {} layer(s) of cluster '{}': layer {} left the catalog meanwhile",
                staged.old.len(),
                cluster.name,
                gone.id
            );
            self.discard_compaction(staged);
            return Err(Error::Refused(why));
        }
        let dest = self.layer_path(&staged.row);
        crate::fsutil::commit_rename(&staged.path, &dest)
            .map_err(|e| Error::path("move the merged WAL layer into its timeline", &dest, e))?;
        let built = wal_ingest::BuiltWal {
            path: dest,
            ..staged.built
        };
        let old = staged.old;
        let tl_row = self.catalog.timeline(tl).await?;
        let mut tx = self.catalog.begin().await?;
        crate::timeline::add_layers(
            &mut tx,
            cluster,
            &tl_row,
            None,
            std::slice::from_ref(&built),
        )
        .await?;
        for l in &old {
            tx.delete_layer(l.id).await?;
        }
        tx.commit().await?;
        for l in &old {
            let p = self.layer_path(l);
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::warn!(file = %p.display(), error = %e, "compacted layer file left behind");
            }
        }
        Ok(Compacted {
            layer: built.id,
            start: old[0].start,
            end: old[old.len() - 1].end,
            replaced: old.len(),
            bytes_before: old.iter().map(|l| l.file_size).sum(),
            bytes_after: built.file_size,
        })
    }
}
