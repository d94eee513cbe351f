//! WAL compaction carried out: adjacent WAL layers of one timeline replaced by one layer that
//! holds the same WAL. Which layers to merge is decided elsewhere
//! (`cairn_scheduler::compaction`); this is the one place that merges.
//!
//! Invariants:
//! - Under the cluster's lock and the timeline's lock (no ingest, image or retirement on it
//!   meanwhile).
//! - Refused whole, writing nothing, unless the layers are at least two WAL layers of the
//!   cluster, of one timeline, each starting where the previous one ends.
//! - The WAL is parsed again from the old layers, record by record, with the chain checks of
//!   ingest; the new layer must end exactly where the last old one ends. Its transaction
//!   summary and markers come from that parse, so they describe the same records.
//! - The new layer file is durable before the catalog changes; the new layer goes in and the
//!   old ones go out in one transaction; the old files are removed after it committed (a file
//!   a crash leaves behind is swept by the next recovery of the timeline). The reconstructible
//!   points are the same before and after.
//! - Region copies are not touched here: the new layer is shipped like any new layer, and the
//!   deletion queue retires the old copies once they are no longer in the catalog.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::catalog::{ClusterRow, LayerRow};
use crate::engine::Engine;
use crate::error::{Error, Result};
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
    /// Replaces WAL layers `ids` of `cluster` by one layer holding the same WAL (see the
    /// module's invariants).
    pub async fn compact_wal(
        &self,
        cluster: &ClusterRow,
        ids: &BTreeSet<LayerId>,
    ) -> Result<Compacted> {
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
        let out_dir = self.home.timeline_dir(cluster.id, tl);
        let paths: Vec<_> = old.iter().map(|l| self.layer_path(l)).collect();
        let end = old[old.len() - 1].end;
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
            wal_ingest::write_layer(
                &out_dir,
                &stream,
                &mut src,
                &out,
                prev,
                crate::catalog::now_us(),
            )
        })
        .await
        .map_err(|e| Error::io("WAL compaction task", std::io::Error::other(e.to_string())))??;
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
            end,
            replaced: old.len(),
            bytes_before: old.iter().map(|l| l.file_size).sum(),
            bytes_after: built.file_size,
        })
    }
}
