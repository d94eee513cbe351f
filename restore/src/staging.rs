//! The staging area: a throw-away engine that knows one branch's history as a region tells it.
//!
//! A restore must not trust, or even need, the local catalog and layer cache. It builds a
//! private engine (own SQLite catalog and layer directory, under `HOME/restore/`) from the
//! region's verified indexes and the metadata of the WAL layers on the branch's ancestry
//! (fetched by ranged reads, not whole), so the engine's own point resolution and layer map
//! answer "which layers rebuild this point" exactly as they would locally. Only the layers of
//! the chosen plan are then downloaded into it. The directory is removed when the staging
//! area is dropped, whatever happened.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use futures::StreamExt;

use cairn_backup::index::IndexedLayer;
use cairn_backup::rebuild::catalog_rows;
use cairn_backup::{Error, Result};
use cairn_engine::catalog::{ClusterRow, LayerRow};
use cairn_engine::layer::LayerKind;
use cairn_engine::{Engine, EngineOptions, LayerId};

use crate::source::{ClusterView, Source};

pub struct Staging {
    pub engine: Engine,
    pub dir: PathBuf,
    pub cluster: ClusterRow,
    /// Every layer of the staged history: its catalog row and what the index says of it.
    pub layers: HashMap<LayerId, (LayerRow, IndexedLayer)>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove the staging area");
            }
        }
    }
}

impl Staging {
    /// Stages the ancestry of `branch` from `view` under `root` (created, removed on drop).
    pub async fn build(
        root: &Path,
        pg_bin: Option<PathBuf>,
        view: &ClusterView,
        branch: &str,
        source: &Source,
        parallel: usize,
    ) -> Result<Staging> {
        let tip = view.branch(branch)?;
        let ancestry = view.ancestry(&tip.timeline.id)?;
        let cluster_id = view.cluster.id.clone();
        // WAL metadata (events, heads) of every WAL layer on the ancestry.
        let wal: Vec<&IndexedLayer> = ancestry
            .iter()
            .flat_map(|i| i.layers.iter())
            .filter(|l| l.kind == LayerKind::Wal.as_str())
            .collect();
        let metas: Vec<Result<(LayerId, cairn_engine::layer::wal::WalMeta)>> =
            futures::stream::iter(wal.into_iter().map(|l| {
                let cluster_id = cluster_id.clone();
                async move {
                    let id: LayerId =
                        l.id.parse()
                            .map_err(|e: String| Error::tampered(format!("layer {}", l.id), e))?;
                    Ok((id, source.fetch_wal_meta(&cluster_id, l).await?))
                }
            }))
            .buffer_unordered(parallel.max(1) * 2)
            .collect()
            .await;
        let metas: HashMap<_, _> = metas.into_iter().collect::<Result<_>>()?;
        let indexes: Vec<_> = ancestry.iter().map(|i| (*i).clone()).collect();
        let rows = catalog_rows(&indexes, &metas, &view.region)?;
        let dir = root.join(format!("staging-{}", cairn_engine::TimelineId::generate()));
        cairn_engine::fsutil::create_dir_mode(&dir, 0o700)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let engine = match Engine::open(EngineOptions {
            home: dir.clone(),
            catalog_url: None,
            pg_bin,
        })
        .await
        {
            Ok(e) => e,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.into());
            }
        };
        let cluster = rows
            .clusters
            .first()
            .cloned()
            .ok_or_else(|| Error::tampered(&view.region, "an index without its cluster"))?;
        let by_id: HashMap<String, &LayerRow> = rows
            .layers
            .iter()
            .map(|(r, _, _)| (r.id.to_string(), r))
            .collect();
        let mut layers = HashMap::new();
        for l in indexes.iter().flat_map(|i| i.layers.iter()) {
            if let Some(row) = by_id.get(&l.id) {
                layers.insert(row.id, ((*row).clone(), l.clone()));
            }
        }
        let staging = Staging {
            engine,
            dir,
            cluster,
            layers,
        };
        rows.insert(&staging.engine).await?;
        Ok(staging)
    }

    /// Where a staged layer's file goes.
    pub fn path(&self, id: LayerId) -> Option<PathBuf> {
        self.layers
            .get(&id)
            .map(|(row, _)| self.engine.layer_path(row))
    }
}
