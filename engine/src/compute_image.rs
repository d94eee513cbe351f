//! Image layers of running computes: a base backup of a live server becomes a layer.
//!
//! An image is taken between `pg_backup_start` and `pg_backup_stop` of the running compute
//! (or of the server `cluster create` starts once); its file is durable when
//! [`Engine::take_image`] returns and nothing is committed yet: the caller commits the layer
//! with the WAL that makes it consistent ([`Engine::image_create`] does both under the
//! timeline lock). A page whose checksum fails is reported with the relation it belongs to,
//! looked up on the server on a best-effort basis.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::catalog::{ClusterRow, TimelineRow};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ids::Lsn;
use crate::ingest::image::{self, BuiltImage, DedupIndex, ImageInput};
use crate::layer::image::ImageMeta;
use crate::pg::server::{Credentials, Server};
use crate::progress::Progress;
use crate::timeline::{advance_slot, flush_lsn};

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageReport {
    pub layer: String,
    pub start: Lsn,
    pub end: Lsn,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub file_bytes: u64,
    pub stats: image::ImageStats,
    pub seconds: f64,
}

fn stop_sql(cluster: &ClusterRow) -> &'static str {
    if cluster.pg_major >= 15 {
        "SELECT lsn::text, labelfile FROM pg_backup_stop(false)"
    } else {
        "SELECT lsn::text, labelfile FROM pg_stop_backup(false, false)"
    }
}

/// The server's tablespaces besides `pg_default` and `pg_global`, with their locations.
pub(crate) async fn tablespaces(
    client: &tokio_postgres::Client,
) -> Result<Vec<crate::layer::image::TablespaceInfo>> {
    let rows = client
        .query(
            "SELECT oid, spcname::text, pg_tablespace_location(oid) FROM pg_tablespace \
             WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid",
            &[],
        )
        .await
        .map_err(|e| Error::postgres("list the server's tablespaces", e.to_string()))?;
    Ok(rows
        .iter()
        .map(|r| crate::layer::image::TablespaceInfo {
            oid: r.get::<_, u32>(0),
            name: r.get(1),
            location: r.get(2),
        })
        .collect())
}

impl Engine {
    /// Takes an image layer of a running server (between `pg_backup_start` and
    /// `pg_backup_stop`). The layer file is durable on return; nothing is committed.
    pub(crate) async fn take_image(
        &self,
        cluster: &ClusterRow,
        tl: &TimelineRow,
        server: &Server,
        creds: &Credentials,
        progress: &Arc<Progress>,
    ) -> Result<BuiltImage> {
        let client = server.connect_control(creds, "postgres").await?;
        let checksums: String = client
            .query_one("SHOW data_checksums", &[])
            .await
            .map_err(|e| Error::postgres("read data_checksums", e.to_string()))?
            .get(0);
        let known = {
            let images = self.ancestry_images(tl).await?;
            tokio::task::spawn_blocking(move || DedupIndex::load(&images))
                .await
                .map_err(|e| {
                    Error::io("load dedup index", std::io::Error::other(e.to_string()))
                })??
        };
        let start_sql = if cluster.pg_major >= 15 {
            "SELECT pg_backup_start('cairn', true)::text"
        } else {
            "SELECT pg_start_backup('cairn', true, false)::text"
        };
        let start: String = client
            .query_one(start_sql, &[])
            .await
            .map_err(|e| {
                Error::postgres(
                    "start the base backup (pg_backup_start)",
                    format!("{e}; the role needs superuser or EXECUTE on pg_backup_start"),
                )
            })?
            .get(0);
        let start: Lsn = start
            .parse()
            .map_err(|e: String| Error::postgres("pg_backup_start", e))?;
        let t0 = std::time::Instant::now();
        tracing::debug!(%start, "base backup started");
        let tablespaces = match tablespaces(&client).await {
            Ok(t) => t,
            Err(e) => {
                let _ = client.query_one(stop_sql(cluster), &[]).await;
                return Err(e);
            }
        };
        let datadir = server.datadir.clone();
        let out_dir = self.home.timeline_dir(cluster.id, tl.id);
        progress.phase("image", image::estimate_size(&datadir));
        let p = progress.clone();
        let built = tokio::task::spawn_blocking(move || {
            image::build(
                &out_dir,
                &ImageInput {
                    datadir: &datadir,
                    backup_start: start,
                    checksums: checksums == "on",
                },
                &known,
                &p.done,
            )
        })
        .await
        .map_err(|e| Error::io("image task", std::io::Error::other(e.to_string())))?;
        let stop_sql = stop_sql(cluster);
        let draft = match built {
            Ok(d) => d,
            Err(err) => {
                let _ = client.query_one(stop_sql, &[]).await;
                return Err(match err {
                    Ok(page) => {
                        let name = relation_name(server, creds, &page).await;
                        page.into_error(name)
                    }
                    Err(e) => e,
                });
            }
        };
        tracing::debug!(seconds = t0.elapsed().as_secs_f64(), stats = ?draft.stats, "data files read");
        let row = client
            .query_one(stop_sql, &[])
            .await
            .map_err(|e| Error::postgres("stop the base backup (pg_backup_stop)", e.to_string()))?;
        tracing::debug!(seconds = t0.elapsed().as_secs_f64(), "base backup stopped");
        let stop: String = row.get(0);
        let label: String = row.get(1);
        let end: Lsn = stop
            .parse()
            .map_err(|e: String| Error::postgres("pg_backup_stop", e))?;
        let mut meta = ImageMeta::of_backup(cluster, tl.id, start, end, label);
        meta.tablespaces = tablespaces;
        crate::failpoint::hit("image-before-finish");
        tokio::task::spawn_blocking(move || draft.finish(meta))
            .await
            .map_err(|e| Error::io("image task", std::io::Error::other(e.to_string())))?
    }

    /// Takes an image layer of the branch's running compute, now.
    pub async fn image_create(
        &self,
        cluster: &ClusterRow,
        branch: &str,
        progress: &Arc<Progress>,
    ) -> Result<ImageReport> {
        let started = std::time::Instant::now();
        let (_, tl) = self.resolve_branch(cluster, branch).await?;
        let _g = self
            .home
            .lock_timeline(tl.id, &format!("branch '{branch}'"))?;
        self.recover_timeline(cluster, tl.id).await?;
        let c = self.catalog.compute(tl.id).await?;
        let server = match c {
            Some(c) => self.server_for(cluster, tl.id, c.port)?,
            None => {
                return Err(Error::Refused(format!(
                    "an image is taken from a running compute; start one with `cairn compute \
                     start {branch}` first"
                )))
            }
        };
        if server.pid().is_none() {
            return Err(Error::Refused(format!(
                "the compute of branch '{branch}' is not running; start it with `cairn compute \
                 start {branch}`"
            )));
        }
        let creds = self.credentials(cluster)?;
        // Ingest first, so the image's WAL continues the committed chain.
        self.sync_locked(cluster, tl.id).await?;
        let tl = self.catalog.timeline(tl.id).await?;
        let img = self
            .take_image(cluster, &tl, &server, &creds, progress)
            .await?;
        let end = img.meta.end_lsn;
        // The image is usable once the WAL up to its end is in layers.
        let client = server.connect_control(&creds, "postgres").await?;
        let mut flush = tl.head;
        for _ in 0..100 {
            flush = flush_lsn(&client).await?;
            if flush >= end {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let built = self
            .write_wal_layers(
                cluster,
                &tl,
                &server.datadir.join("pg_wal"),
                Some(flush),
                None,
            )
            .await?;
        let head = built.last().map_or(tl.head, |b| b.meta.end);
        if head < end {
            return Err(Error::postgres(
                "take an image",
                format!("WAL reached only {head}, the image needs it up to {end}"),
            ));
        }
        crate::failpoint::hit("image-before-commit");
        let (head, _) = self.commit_layers(cluster, &tl, Some(&img), &built).await?;
        advance_slot(&client, head).await?;
        progress
            .done
            .store(progress.total.load(Ordering::Relaxed), Ordering::Relaxed);
        Ok(ImageReport {
            layer: img.id.to_string(),
            start: img.meta.start_lsn,
            end,
            logical_bytes: img.meta.logical_size(),
            stored_bytes: img.stats.stored_bytes,
            file_bytes: img.file_size,
            stats: img.stats,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// Looks up `schema.table` for a corrupt page's relation file, best effort.
async fn relation_name(
    server: &Server,
    creds: &Credentials,
    page: &image::CorruptPage,
) -> Option<String> {
    let rel = page.rel.as_ref()?;
    let admin = server.connect_control(creds, "postgres").await.ok()?;
    let db: String = match rel.db {
        Some(oid) => admin
            .query_opt(
                "SELECT datname FROM pg_database WHERE oid = $1::int8::oid",
                &[&(oid as i64)],
            )
            .await
            .ok()??
            .get(0),
        None => "postgres".into(),
    };
    let client = server.connect_control(creds, &db).await.ok()?;
    let row = client
        .query_opt(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE pg_relation_filenode(c.oid) = $1::int8::oid",
            &[&(rel.relfilenode as i64)],
        )
        .await
        .ok()??;
    Some(format!("{} in database {db}", row.get::<_, String>(0)))
}
