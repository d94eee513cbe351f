//! The staging area: a throw-away engine that knows one branch's history as a region tells it.
//!
//! A restore must not trust, or even need, the local catalog and layer cache. It builds a
//! private engine (own SQLite catalog and layer directory, under `HOME/restore/`) from the
//! region's verified indexes and the metadata of the WAL layers on the branch's ancestry
//! (fetched by ranged reads, not whole), so the engine's own point resolution and layer map
//! answer "which layers rebuild this point" exactly as they would locally (the WAL layers'
//! events, which the catalog only summarises, are registered with that engine in memory, see
//! [`cairn_engine::wal_index`]). Only the layers of the chosen plan are then downloaded into
//! it. The directory (plaintext layers) is removed when the staging area is dropped, and, if
//! the process is killed, by the next sweep of scratch directories
//! ([`cairn_engine::home::Home::sweep_scratch`]).

use std::collections::HashMap;
use std::path::PathBuf;

use cairn_engine::home::{Home, ScratchDir};

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
    /// Locks the directory while the staging area lives; removes it when dropped (after the
    /// engine's catalog is closed: fields drop in order).
    _scratch: ScratchDir,
}

impl Staging {
    /// Stages the ancestry of `branch` from `view` in a scratch directory of `home` (created,
    /// removed on drop).
    pub async fn build(
        home: &Home,
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
        // Owned: a stream of futures borrowing its items is not `Send` for every lifetime,
        // and a restore must be able to run in a spawned task (scheduled verifications).
        let wal: Vec<IndexedLayer> = ancestry
            .iter()
            .flat_map(|i| i.layers.iter())
            .filter(|l| l.kind == LayerKind::Wal.as_str())
            .cloned()
            .collect();
        let metas: Vec<Result<(LayerId, cairn_engine::layer::wal::WalMeta)>> =
            futures::stream::iter(wal.into_iter().map(|l| {
                let cluster_id = cluster_id.clone();
                async move {
                    let id: LayerId =
                        l.id.parse()
                            .map_err(|e: String| Error::tampered(format!("layer {}", l.id), e))?;
                    Ok((id, source.fetch_wal_meta(&cluster_id, &l).await?))
                }
            }))
            .buffer_unordered(parallel.max(1) * 2)
            .collect()
            .await;
        let metas: HashMap<_, _> = metas.into_iter().collect::<Result<_>>()?;
        let indexes: Vec<_> = ancestry.iter().map(|i| (*i).clone()).collect();
        let rows = catalog_rows(&indexes, &metas, &view.region)?;
        drop(metas);
        let scratch = home.scratch_dir(
            "restore",
            &format!("staging-{}", cairn_engine::TimelineId::generate()),
            0o700,
            0o700,
        )?;
        let dir = scratch.path.clone();
        let engine = Engine::open(EngineOptions {
            home: dir.clone(),
            catalog_url: None,
            pg_bin,
        })
        .await?;
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
            _scratch: scratch,
        };
        rows.insert(&staging.engine).await?;
        // The catalog keeps a summary of each WAL layer's transactions; resolving a time reads
        // the layer's events, which stay in memory here until the layer files are fetched.
        for (row, _, events) in rows.layers {
            if row.kind == LayerKind::Wal {
                staging.engine.wal_events.register(row.id, events);
            }
        }
        Ok(staging)
    }

    /// Where a staged layer's file goes.
    pub fn path(&self, id: LayerId) -> Option<PathBuf> {
        self.layers
            .get(&id)
            .map(|(row, _)| self.engine.layer_path(row))
    }
}
