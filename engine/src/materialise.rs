//! Materialise: write a (timeline, LSN) as a PostgreSQL data directory.
//!
//! The data directory is the image layer's files plus its `backup_label`, and `pg_wal` holds
//! exactly the WAL from the image's redo point up to the target LSN, zeroed after it. Segments
//! have their full size with every block allocated, but only what recovery reads is written:
//! each segment's first page, and the WAL pages from the redo point's page on that are not
//! all zeros. No
//! `recovery.signal` is written: the server performs crash recovery from the backup label,
//! replays every record up to the target, finds zeroes, and ends recovery *on the same
//! PostgreSQL timeline* with an end-of-recovery checkpoint at the target. This is how a
//! branch point is reached exactly, and why Cairn never needs timeline history files: the WAL
//! a branch writes afterwards continues the byte stream of its own history.
//!
//! Every piece is checked against its SHA-256 while it is written; a damaged layer aborts the
//! materialisation with the layer and offset named.
//!
//! Tablespaces go where a [`Placement`] says: `pg_tblspc/<OID>` is a link to a directory of
//! this data directory's own, for the image's tablespaces and for those the replayed WAL
//! creates, whose create records are blanked in `pg_wal` so that redo keeps the link (see
//! [`crate::tablespace`]).
//!
//! A *delta* materialisation writes over an existing data directory of the same cluster and
//! rewrites only what differs: each piece already present at its offset with the right SHA-256
//! is left alone (and its frame never decompressed), files and directories the image does not
//! hold are removed, files are cut to their size, and `pg_wal` is rewritten. The result is byte
//! for byte what a fresh materialisation writes.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};
use crate::ids::{LayerId, Lsn};
use crate::layer::file::{LayerFile, LayerKind};
use crate::layer::image::{validate_rel_path, BlobRef, ImageMeta};
use crate::layer::wal::WalMeta;
use crate::layer_map::{merge_ranges, Plan};
use crate::tablespace::{self, Placement};
use crate::wal::{segment_file_name, XLOG_BLCKSZ};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct MaterialiseStats {
    pub files: u64,
    pub data_bytes: u64,
    /// Bytes of data files actually written (all of them, unless a delta found them in place).
    pub written_bytes: u64,
    /// Files and directories a delta removed because the image does not hold them.
    pub removed: u64,
    pub wal_segments: u64,
    pub seconds: f64,
    /// Where each tablespace went: (OID, directory `pg_tblspc/<OID>` links to).
    pub tablespaces: Vec<(u32, PathBuf)>,
    /// Tablespaces the replayed WAL creates: (OID, the location the source gave).
    pub wal_tablespaces: Vec<(u32, String)>,
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

/// Refuses a target directory that exists and is not empty.
pub fn check_empty(target: &Path) -> Result<()> {
    if target.exists() {
        let mut rd = fs::read_dir(target).ctx("read directory", target)?;
        if rd.next().is_some() {
            return Err(Error::Refused(format!(
                "target directory {} is not empty; choose an empty or new directory",
                target.display()
            )));
        }
    }
    Ok(())
}

fn ensure_empty_dir(target: &Path) -> Result<()> {
    check_empty(target)?;
    crate::fsutil::create_dir_mode(target, 0o700).ctx("create directory", target)
}

/// Writes the point `plan` describes into `target` (which must be empty or absent), with its
/// tablespaces where `placement` says.
pub fn materialise(
    plan: &Plan,
    layers: &dyn LayerResolver,
    target: &Path,
    placement: &Placement,
    progress: &AtomicU64,
) -> Result<MaterialiseStats> {
    ensure_empty_dir(target)?;
    write_point(plan, layers, target, placement, progress, false)
}

/// Writes the point `plan` describes over the data directory `target`, rewriting only the
/// pieces and files that differ. Refuses a directory a server may be running on.
pub fn materialise_delta(
    plan: &Plan,
    layers: &dyn LayerResolver,
    target: &Path,
    placement: &Placement,
    progress: &AtomicU64,
) -> Result<MaterialiseStats> {
    check_delta_target(target)?;
    write_point(plan, layers, target, placement, progress, true)
}

/// Refuses a delta over `target` unless it is a PostgreSQL data directory no server runs on
/// (no `postmaster.pid`). Callers that change anything in `target` first (ownership
/// included) call it before.
pub fn check_delta_target(target: &Path) -> Result<()> {
    if target.join("postmaster.pid").exists() {
        return Err(Error::Refused(format!(
            "{} holds postmaster.pid: stop the PostgreSQL server running on it first (if none \
             runs, it crashed: remove postmaster.pid)",
            target.display()
        )));
    }
    if !target.join("PG_VERSION").exists() {
        return Err(Error::Refused(format!(
            "{} is not a PostgreSQL data directory (no PG_VERSION); --delta writes over an \
             earlier restore of the same cluster",
            target.display()
        )));
    }
    Ok(())
}

/// What a delta keeps: the image's files and directories.
struct Keep<'a> {
    files: std::collections::HashSet<&'a str>,
    dirs: std::collections::HashSet<&'a str>,
    placement: &'a Placement,
}

/// Removes what `keep` does not name below `dir` (whose path relative to the data directory
/// is `rel_dir`), but not `pg_wal`, which is rewritten whole; returns how many entries went.
/// A tablespace link is followed only when it points where the placement puts that
/// tablespace; any other link is removed, never followed.
fn prune(dir: &Path, rel_dir: &str, keep: &Keep) -> Result<u64> {
    let mut removed = 0;
    for e in fs::read_dir(dir).ctx("read directory", dir)? {
        let e = e.ctx("read directory", dir)?;
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if rel_dir.is_empty() {
            name
        } else {
            format!("{rel_dir}/{name}")
        };
        if rel == "pg_wal" {
            continue;
        }
        let ft = e.file_type().ctx("stat", &p)?;
        if ft.is_symlink() && rel_dir == "pg_tblspc" && keep.dirs.contains(rel.as_str()) {
            if let Some(oid) = crate::tablespace::oid_of(&rel) {
                let want = keep.placement.dir(oid);
                if fs::read_link(&p).ok().as_deref() == Some(want.as_path()) && want.is_dir() {
                    removed += prune(&want, &rel, keep)?;
                    continue;
                }
            }
        }
        if ft.is_dir() {
            if keep.dirs.contains(rel.as_str()) {
                removed += prune(&p, &rel, keep)?;
            } else {
                fs::remove_dir_all(&p).ctx("remove", &p)?;
                removed += 1;
            }
        } else if !(ft.is_file() && keep.files.contains(rel.as_str())) {
            fs::remove_file(&p).ctx("remove", &p)?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn write_point(
    plan: &Plan,
    layers: &dyn LayerResolver,
    target: &Path,
    placement: &Placement,
    progress: &AtomicU64,
    delta: bool,
) -> Result<MaterialiseStats> {
    let started = Instant::now();
    let img_path = layers.path(plan.image.id, LayerKind::Image)?;
    let img = LayerFile::open(&img_path, LayerKind::Image)?;
    let meta = ImageMeta::decode(&img.meta, img.version)
        .map_err(|e| Error::corrupt(format!("image layer {}", img_path.display()), e.0))?;
    let mut sources: Vec<LayerFile> = Vec::with_capacity(meta.refs.len());
    sources.push(img);
    for r in meta.referenced_layers() {
        sources.push(LayerFile::open(
            &layers.path(*r, LayerKind::Image)?,
            LayerKind::Image,
        )?);
    }
    let mut removed = 0;
    if delta {
        for f in &meta.files {
            validate_rel_path(&f.path)
                .map_err(|e| Error::corrupt(format!("image layer {}", img_path.display()), e))?;
        }
        let keep = Keep {
            files: meta.files.iter().map(|f| f.path.as_str()).collect(),
            dirs: meta.dirs.iter().map(|(d, _)| d.as_str()).collect(),
            placement,
        };
        removed = prune(target, "", &keep)?;
        let wal = target.join("pg_wal");
        if wal.exists() {
            fs::remove_dir_all(&wal).ctx("remove", &wal)?;
        }
    }
    let written = AtomicU64::new(0);
    let mut tablespaces = Vec::new();
    for (d, mode) in &meta.dirs {
        validate_rel_path(d)
            .map_err(|e| Error::corrupt(format!("image layer {}", img_path.display()), e))?;
        // `pg_tblspc/<OID>` is a link to the placement's directory; what is below it is
        // written through the link.
        if let (Some(oid), 2) = (tablespace::oid_of(d), d.split('/').count()) {
            tablespaces.push((oid, tablespace::link(target, placement, oid)?));
            continue;
        }
        let p = target.join(d);
        fs::create_dir_all(&p).ctx("create directory", &p)?;
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode & 0o777 | 0o700))
            .ctx("set mode", &p)?;
    }
    for f in &meta.files {
        validate_rel_path(&f.path)
            .map_err(|e| Error::corrupt(format!("image layer {}", img_path.display()), e))?;
    }
    let label = target.join("backup_label");
    fs::write(&label, meta.backup_label.as_bytes()).ctx("write", &label)?;
    let wal_dir = target.join("pg_wal");
    fs::create_dir_all(wal_dir.join("archive_status")).ctx("create directory", &wal_dir)?;
    let files = || -> Result<u64> {
        Ok(if delta {
            meta.files
                .par_iter()
                .map(|f| {
                    let p = target.join(&f.path);
                    if let Some(parent) = p.parent() {
                        fs::create_dir_all(parent).ctx("create directory", parent)?;
                    }
                    delta_file(f, &p, &sources, &img_path, progress, &written)
                })
                .try_reduce(|| 0, |a, b| Ok(a + b))?
        } else {
            write_fresh(&meta, target, &sources, &img_path, progress, &written)?
        })
    };
    // Data files and WAL segments at once: both are spread over every core.
    let (bytes, wal) = rayon::join(files, || write_wal(plan, layers, &meta, &wal_dir));
    let (bytes, (segments, tli, segment_size)) = (bytes?, wal?);
    // Creates in the replayed WAL: blank their paths, and link their OIDs like the image's.
    let in_wal = tablespace::neutralise_wal(
        &wal_dir,
        tli,
        segment_size,
        meta.pg_major,
        meta.start_lsn,
        plan.lsn,
    )?;
    for (oid, _) in &in_wal.created {
        if !tablespaces.iter().any(|(o, _)| o == oid) {
            // Replay creates this tablespace from nothing: what an earlier restore left in
            // its directory is not part of the point.
            let dir = placement.dir(*oid);
            if delta && dir.is_dir() {
                crate::engine::remove_tree(&dir)?;
            }
            tablespaces.push((*oid, tablespace::link(target, placement, *oid)?));
        }
    }
    if delta {
        meta.files.par_iter().try_for_each(|f| -> Result<()> {
            let p = target.join(&f.path);
            File::open(&p).and_then(|h| h.sync_data()).ctx("sync", &p)
        })?;
    }
    File::open(&label)
        .and_then(|h| h.sync_all())
        .ctx("sync", &label)?;
    let mut dirs: Vec<PathBuf> = meta.dirs.iter().map(|(d, _)| target.join(d)).collect();
    dirs.extend([target.to_path_buf(), wal_dir.clone()]);
    for (_, d) in &tablespaces {
        dirs.push(d.clone());
        if let Some(parent) = d.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    for d in dirs {
        crate::fsutil::fsync_dir(&d).ctx("sync", &d)?;
    }
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        bytes,
        segments,
        "materialised"
    );
    Ok(MaterialiseStats {
        files: meta.files.len() as u64,
        data_bytes: bytes,
        written_bytes: written.load(Ordering::Relaxed),
        removed,
        wal_segments: segments,
        seconds: started.elapsed().as_secs_f64(),
        tablespaces,
        wal_tablespaces: in_wal.created,
    })
}

/// Bytes of one unit of parallel work: a large relation file is written by every core.
const UNIT: u64 = 32 << 20;

/// Creates every file, then writes them in units of about [`UNIT`] bytes in parallel, each at
/// its offset, so that one large file does not leave the other cores idle.
fn write_fresh(
    meta: &ImageMeta,
    target: &Path,
    sources: &[LayerFile],
    img_path: &Path,
    progress: &AtomicU64,
    written: &AtomicU64,
) -> Result<u64> {
    // (file, first blob, end blob, offset in the file)
    let mut units: Vec<(usize, usize, usize, u64)> = Vec::new();
    for (i, f) in meta.files.iter().enumerate() {
        let p = target.join(&f.path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).ctx("create directory", parent)?;
        }
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(f.mode & 0o777 | 0o600)
            .open(&p)
            .ctx("create file", &p)?;
        let (mut first, mut start, mut at, mut size) = (0, 0u64, 0u64, 0u64);
        for (j, b) in f.blobs.iter().enumerate() {
            if size >= UNIT {
                units.push((i, first, j, start));
                (first, start, size) = (j, at, 0);
            }
            at += b.raw_len as u64;
            size += b.raw_len as u64;
        }
        if first < f.blobs.len() {
            units.push((i, first, f.blobs.len(), start));
        }
    }
    crate::failpoint::hit("materialise-files-created");
    let total = units
        .par_iter()
        .map(|&(i, first, end, offset)| -> Result<u64> {
            use std::os::unix::fs::FileExt;
            let f = &meta.files[i];
            let p = target.join(&f.path);
            let out = OpenOptions::new().write(true).open(&p).ctx("open", &p)?;
            let mut pieces = Pieces::new(sources, img_path);
            let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
            let (mut pos, mut n) = (offset, 0u64);
            for b in &f.blobs[first..end] {
                let raw = pieces.get(b)?;
                buf.extend_from_slice(raw);
                n += raw.len() as u64;
                progress.fetch_add(raw.len() as u64, Ordering::Relaxed);
                if buf.len() >= 1 << 20 {
                    out.write_all_at(&buf, pos).ctx("write", &p)?;
                    pos += buf.len() as u64;
                    buf.clear();
                }
            }
            out.write_all_at(&buf, pos).ctx("write", &p)?;
            start_writeback(&out, offset, n);
            written.fetch_add(n, Ordering::Relaxed);
            Ok(n)
        })
        .try_reduce(|| 0, |a, b| Ok(a + b))?;
    // Durable before the restore says it is done (and PostgreSQL's start-up sync of the data
    // directory finds nothing left to do); most of it is on its way already.
    meta.files.par_iter().try_for_each(|f| -> Result<()> {
        let p = target.join(&f.path);
        File::open(&p).and_then(|h| h.sync_data()).ctx("sync", &p)
    })?;
    Ok(total)
}

/// Asks the kernel to start writing `[offset, offset + len)` of `f` to disk now, without
/// waiting: the final fsync then finds little left to do. A hint; errors are ignored.
fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor and plain integers; the call only schedules I/O.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Reads a file's pieces in order. Consecutive pieces usually share a frame: each frame is
/// decompressed once; every piece is checked against its SHA-256.
struct Pieces<'a> {
    sources: &'a [LayerFile],
    img_path: &'a Path,
    frame: Option<((u32, u64), Vec<u8>)>,
}

impl<'a> Pieces<'a> {
    fn new(sources: &'a [LayerFile], img_path: &'a Path) -> Pieces<'a> {
        Pieces {
            sources,
            img_path,
            frame: None,
        }
    }

    fn get(&mut self, b: &BlobRef) -> Result<&[u8]> {
        let src = self.sources.get(b.layer as usize).ok_or_else(|| {
            Error::corrupt(
                format!("image layer {}", self.img_path.display()),
                "bad layer index",
            )
        })?;
        let key = (b.layer, b.offset);
        if self.frame.as_ref().is_none_or(|(k, _)| *k != key) {
            self.frame = Some((key, src.read_frame(b.offset, b.clen, b.frame_len)?));
        }
        let data = &self.frame.as_ref().expect("just set").1;
        b.cut(data, &format!("layer file {}", src.path.display()))
            .map_err(|e| Error::corrupt("image piece", e))
    }
}

/// Brings one existing file to the image's content, writing only the pieces that differ.
fn delta_file(
    f: &crate::layer::image::ImageFile,
    p: &Path,
    sources: &[LayerFile],
    img_path: &Path,
    progress: &AtomicU64,
    written: &AtomicU64,
) -> Result<u64> {
    use sha2::Digest;
    use std::os::unix::fs::FileExt;
    if p.symlink_metadata().is_ok_and(|m| !m.is_file()) {
        crate::engine::remove_tree(p)?;
    }
    let out = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(f.mode & 0o777 | 0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
        .ctx("open file", p)?;
    let have = out.metadata().ctx("stat", p)?.len();
    let mut pos = 0u64;
    let mut old = Vec::new();
    let mut pieces = Pieces::new(sources, img_path);
    for b in &f.blobs {
        let len = b.raw_len as u64;
        let mut same = false;
        if pos + len <= have {
            old.resize(len as usize, 0);
            out.read_exact_at(&mut old, pos).ctx("read", p)?;
            same = sha2::Sha256::digest(&old).as_slice() == b.hash;
        }
        if !same {
            let raw = pieces.get(b)?;
            out.write_all_at(raw, pos).ctx("write", p)?;
            written.fetch_add(len, Ordering::Relaxed);
        }
        pos += len;
        progress.fetch_add(len, Ordering::Relaxed);
    }
    out.set_len(pos).ctx("truncate", p)?;
    out.set_permissions(fs::Permissions::from_mode(f.mode & 0o777 | 0o600))
        .ctx("set mode", p)?;
    Ok(pos)
}

/// Writes the segments from the image's redo point to the plan's LSN; returns how many, the
/// PostgreSQL timeline and the segment size.
fn write_wal(
    plan: &Plan,
    layers: &dyn LayerResolver,
    image: &ImageMeta,
    wal_dir: &Path,
) -> Result<(u64, u32, u64)> {
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
    let replay_from = image.start_lsn.align_down(XLOG_BLCKSZ);
    let first = image.start_lsn.segment_number(segment_size);
    let last = target.segment_number(segment_size);
    // Segments are independent: written in parallel, one buffer per task.
    (first..=last)
        .into_par_iter()
        .try_for_each(|segno| -> Result<()> {
            let mut buf = vec![0u8; segment_size as usize];
            let seg_start = Lsn(segno * segment_size);
            let seg_end = Lsn(seg_start.0 + segment_size);
            // What recovery reads: the segment's first page (its long header identifies the
            // segment to the reader) and everything from the page of the image's redo point
            // on. WAL before that point is never replayed and stays zeros, as does the rest
            // of the segment after the target.
            let mut ranges: Vec<(u64, u64)> = Vec::new();
            let first_page_end = Lsn(seg_start.0 + XLOG_BLCKSZ);
            for piece in &plan.wal {
                for w in &piece.layers {
                    let (f, m) = &open[&w.id];
                    let from = m.data_start.max(seg_start);
                    let to = m.end.min(piece.to).min(target).min(seg_end);
                    for (from, to) in [(from, to.min(first_page_end)), (from.max(replay_from), to)]
                    {
                        if from < to {
                            crate::ingest::wal::read_range(f, m, from, to, &mut buf, seg_start)?;
                            ranges.push((from.0 - seg_start.0, to.0 - seg_start.0));
                        }
                    }
                }
            }
            let path = wal_dir.join(segment_file_name(tli, segno, segment_size));
            let out = File::create(&path).ctx("create WAL segment", &path)?;
            // Full size with its blocks allocated (zeros); only the ranges above are written,
            // less their pages of zeros (the rest of a segment after a WAL switch is zeros
            // in the layer too).
            crate::fsutil::allocate(&out, segment_size).ctx("allocate WAL segment", &path)?;
            for (lo, hi) in nonzero_pages(&buf, merge_ranges(ranges)) {
                std::os::unix::fs::FileExt::write_all_at(&out, &buf[lo as usize..hi as usize], lo)
                    .ctx("write WAL segment", &path)?;
            }
            out.sync_data().ctx("sync WAL segment", &path)
        })?;
    Ok((last - first + 1, tli, segment_size))
}

/// The parts of `ranges` of `buf` that are not whole WAL pages of zeros (page-aligned, merged).
fn nonzero_pages(buf: &[u8], ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for (lo, hi) in ranges {
        let mut at = lo;
        while at < hi {
            let end = ((at / XLOG_BLCKSZ + 1) * XLOG_BLCKSZ).min(hi);
            if buf[at as usize..end as usize].iter().any(|&b| b != 0) {
                out.push((at, end));
            }
            at = end;
        }
    }
    merge_ranges(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_where_they_touch_and_pages_of_zeros_are_left_out() {
        assert_eq!(
            merge_ranges(vec![(10, 20), (0, 5), (5, 8), (15, 30)]),
            [(0, 8), (10, 30)]
        );
        assert_eq!(merge_ranges(Vec::<(u64, u64)>::new()), []);
        let page = XLOG_BLCKSZ as usize;
        let mut buf = vec![0u8; 4 * page];
        // Page 0 and page 3 hold a byte each, page 2 its last byte; page 1 is zeros.
        buf[10] = 1;
        buf[2 * page + page - 1] = 1;
        buf[3 * page] = 1;
        // Page 1 is left out; pages 2 and 3 are written as one range, cut to the range's end.
        assert_eq!(
            nonzero_pages(&buf, vec![(0, 4 * page as u64 - 8)]),
            [(0, XLOG_BLCKSZ), (2 * XLOG_BLCKSZ, 4 * XLOG_BLCKSZ - 8)]
        );
        // A range starting inside a page keeps its start.
        assert_eq!(nonzero_pages(&buf, vec![(5, 20)]), [(5, 20)]);
        assert_eq!(
            nonzero_pages(&buf, vec![(page as u64, 2 * page as u64)]),
            []
        );
    }
}
