//! Materialise: write a (timeline, LSN) as a PostgreSQL data directory.
//!
//! The data directory is the image layer's files plus its `backup_label`, and `pg_wal` holds
//! exactly the WAL from the image's redo point up to the target LSN, zeroed after it. No
//! `recovery.signal` is written: the server performs crash recovery from the backup label,
//! replays every record up to the target, finds zeroes, and ends recovery *on the same
//! PostgreSQL timeline* with an end-of-recovery checkpoint at the target. This is how a
//! branch point is reached exactly, and why Cairn never needs timeline history files: the WAL
//! a branch writes afterwards continues the byte stream of its own history.
//!
//! Every piece is checked against its SHA-256 while it is written; a damaged layer aborts the
//! materialisation with the layer and offset named.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};
use crate::ids::{LayerId, Lsn};
use crate::layer::file::{LayerFile, LayerKind};
use crate::layer::image::{validate_rel_path, ImageMeta};
use crate::layer::wal::WalMeta;
use crate::layer_map::Plan;
use crate::wal::segment_file_name;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct MaterialiseStats {
    pub files: u64,
    pub data_bytes: u64,
    pub wal_segments: u64,
    pub seconds: f64,
}

/// Finds the file of a layer.
pub trait LayerResolver: Sync {
    fn path(&self, id: LayerId, kind: LayerKind) -> Result<PathBuf>;
}

impl LayerResolver for HashMap<LayerId, PathBuf> {
    fn path(&self, id: LayerId, kind: LayerKind) -> Result<PathBuf> {
        self.get(&id).cloned().ok_or_else(|| {
            Error::corrupt(
                format!("{} layer {id}", kind.as_str()),
                "is referenced but not in the catalog",
            )
        })
    }
}

fn ensure_empty_dir(target: &Path) -> Result<()> {
    if target.exists() {
        let mut rd = fs::read_dir(target).ctx("read directory", target)?;
        if rd.next().is_some() {
            return Err(Error::Refused(format!(
                "target directory {} is not empty; choose an empty or new directory",
                target.display()
            )));
        }
    }
    crate::fsutil::create_dir_mode(target, 0o700).ctx("create directory", target)
}

/// Writes the point `plan` describes into `target` (which must be empty or absent).
pub fn materialise(
    plan: &Plan,
    layers: &dyn LayerResolver,
    target: &Path,
    progress: &AtomicU64,
) -> Result<MaterialiseStats> {
    let started = Instant::now();
    ensure_empty_dir(target)?;
    let img_path = layers.path(plan.image.id, LayerKind::Image)?;
    let img = LayerFile::open(&img_path, LayerKind::Image)?;
    let meta = ImageMeta::decode(&img.meta)
        .map_err(|e| Error::corrupt(format!("image layer {}", img_path.display()), e.0))?;
    let mut sources: Vec<LayerFile> = Vec::with_capacity(meta.refs.len());
    sources.push(img);
    for r in meta.referenced_layers() {
        sources.push(LayerFile::open(
            &layers.path(*r, LayerKind::Image)?,
            LayerKind::Image,
        )?);
    }
    for (d, mode) in &meta.dirs {
        validate_rel_path(d)
            .map_err(|e| Error::corrupt(format!("image layer {}", img_path.display()), e))?;
        let p = target.join(d);
        fs::create_dir_all(&p).ctx("create directory", &p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode & 0o777 | 0o700))
            .ctx("set mode", &p)?;
    }
    let bytes: u64 = meta
        .files
        .par_iter()
        .map(|f| -> Result<u64> {
            validate_rel_path(&f.path)
                .map_err(|e| Error::corrupt(format!("image layer {}", img_path.display()), e))?;
            let p = target.join(&f.path);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent).ctx("create directory", parent)?;
            }
            let out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(f.mode & 0o777 | 0o600)
                .open(&p)
                .ctx("create file", &p)?;
            let mut w = BufWriter::with_capacity(1 << 20, out);
            let mut n = 0u64;
            // Consecutive pieces usually share a frame: decompress each frame once.
            let mut frame: Option<((u32, u64), Vec<u8>)> = None;
            for b in &f.blobs {
                let src = sources.get(b.layer as usize).ok_or_else(|| {
                    Error::corrupt(
                        format!("image layer {}", img_path.display()),
                        "bad layer index",
                    )
                })?;
                let key = (b.layer, b.offset);
                if frame.as_ref().is_none_or(|(k, _)| *k != key) {
                    frame = Some((key, src.read_frame(b.offset, b.clen, b.frame_len)?));
                }
                let data = &frame.as_ref().expect("just set").1;
                let raw = b
                    .cut(data, &format!("layer file {}", src.path.display()))
                    .map_err(|e| Error::corrupt("image piece", e))?;
                w.write_all(raw).ctx("write", &p)?;
                n += raw.len() as u64;
                progress.fetch_add(raw.len() as u64, Ordering::Relaxed);
            }
            w.flush().ctx("write", &p)?;
            Ok(n)
        })
        .try_reduce(|| 0, |a, b| Ok(a + b))?;
    let label = target.join("backup_label");
    fs::write(&label, meta.backup_label.as_bytes()).ctx("write", &label)?;
    let wal_dir = target.join("pg_wal");
    fs::create_dir_all(wal_dir.join("archive_status")).ctx("create directory", &wal_dir)?;
    let segments = write_wal(plan, layers, &meta, &wal_dir)?;
    Ok(MaterialiseStats {
        files: meta.files.len() as u64,
        data_bytes: bytes,
        wal_segments: segments,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Writes the segments from the image's redo point to the plan's LSN.
fn write_wal(
    plan: &Plan,
    layers: &dyn LayerResolver,
    image: &ImageMeta,
    wal_dir: &Path,
) -> Result<u64> {
    let mut open: HashMap<LayerId, (LayerFile, WalMeta)> = HashMap::new();
    for w in plan.wal_layers() {
        if open.contains_key(&w.id) {
            continue;
        }
        let path = layers.path(w.id, LayerKind::Wal)?;
        let f = LayerFile::open(&path, LayerKind::Wal)?;
        let m = WalMeta::decode(&f.meta)
            .map_err(|e| Error::corrupt(format!("WAL layer {}", path.display()), e.0))?;
        open.insert(w.id, (f, m));
    }
    let segment_size = match open.values().next() {
        Some((_, m)) => m.segment_size,
        None => 16 << 20,
    };
    let tli = open.values().next().map_or(image.tli, |(_, m)| m.tli);
    let target = plan.lsn;
    let first = image.start_lsn.segment_number(segment_size);
    let last = target.segment_number(segment_size);
    let mut buf = vec![0u8; segment_size as usize];
    for segno in first..=last {
        buf.fill(0);
        let seg_start = Lsn(segno * segment_size);
        let seg_end = Lsn(seg_start.0 + segment_size);
        for piece in &plan.wal {
            for w in &piece.layers {
                let (f, m) = &open[&w.id];
                let from = m.data_start.max(seg_start);
                let to = m.end.min(piece.to).min(target).min(seg_end);
                if from >= to {
                    continue;
                }
                crate::ingest::wal::read_range(f, m, from, to, &mut buf, seg_start)?;
            }
        }
        let path = wal_dir.join(segment_file_name(tli, segno, segment_size));
        let mut out = File::create(&path).ctx("create WAL segment", &path)?;
        out.write_all(&buf).ctx("write WAL segment", &path)?;
    }
    Ok(last - first + 1)
}
