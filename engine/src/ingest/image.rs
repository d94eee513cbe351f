//! Building an image layer from a data directory.
//!
//! Pages are hashed (SHA-256), checked against PostgreSQL's page checksum and looked up in a
//! [`DedupIndex`] of the pieces already stored by the images of the timeline's ancestry; only
//! unknown pieces are compressed (zstd) and written. The index is limited to the ancestry so
//! that deleting a branch can never remove a piece another branch's image needs.
//!
//! A page whose checksum fails is read again (PostgreSQL may be writing it); if it still fails
//! and its LSN is older than the backup's start, the page is corrupt on disk and the whole image
//! is abandoned with an error naming the file, block and page LSN. A failing page newer than the
//! start is a torn write that WAL replay repairs from its full-page image, as in
//! `pg_basebackup`.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::ids::{LayerId, Lsn};
use crate::layer::file::{LayerKind, LayerWriter};
use crate::layer::image::{BlobRef, ImageFile, ImageMeta};
use crate::pg::checksum::{page_info, verify_page, PageCheck, BLCKSZ};
use crate::pg::relfile::{self, RelFile, EXCLUDE_CONTENTS};

/// Bytes per piece of a non-relation file.
pub const WHOLE_CHUNK: usize = 1 << 20;
/// Pages read per I/O from a relation file.
const PAGES_PER_READ: usize = 128;
/// zstd level for pieces: fast, since images are large and mostly read rarely.
const ZSTD_LEVEL: i32 = 1;

pub use super::dedup::{DedupIndex, Loc};

/// A page that failed its checksum on the way in.
#[derive(Debug, Clone)]
pub struct CorruptPage {
    pub path: String,
    pub rel: Option<RelFile>,
    pub block: u32,
    pub lsn: Lsn,
    pub stored: u16,
    pub computed: u16,
}

impl CorruptPage {
    /// The error, with the relation's name when the caller could look it up.
    pub fn into_error(self, relation_name: Option<String>) -> Error {
        let what = match (&relation_name, &self.rel) {
            (Some(n), _) => format!("relation {n} (file {})", self.path),
            (None, Some(r)) => format!(
                "relation file {} (relfilenode {}{})",
                self.path,
                r.relfilenode,
                r.db.map(|d| format!(" in database oid {d}"))
                    .unwrap_or_default()
            ),
            (None, None) => format!("file {}", self.path),
        };
        Error::corrupt(
            what,
            format!(
                "block {} fails its page checksum (page LSN {}, stored checksum {:#06x}, \
                 computed {:#06x}); the page is damaged on the server's disk. No image was \
                 written. Repair the relation (restore it, or REINDEX for an index) before the \
                 next image; branches at earlier points are unaffected",
                self.block, self.lsn, self.stored, self.computed
            ),
        )
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ImageStats {
    pub files: u64,
    pub bytes_read: u64,
    pub pieces: u64,
    pub new_pieces: u64,
    /// Compressed bytes written for new pieces.
    pub stored_bytes: u64,
    pub torn_pages: u64,
}

/// An image whose pieces are written but whose metadata (known after `pg_backup_stop`) is not.
pub struct ImageDraft {
    writer: LayerWriter,
    pub files: Vec<ImageFile>,
    pub dirs: Vec<(String, u32)>,
    pub refs: Vec<LayerId>,
    pub stats: ImageStats,
}

/// The result of [`ImageDraft::finish`]: a durable layer file.
pub struct BuiltImage {
    pub id: LayerId,
    pub file_size: u64,
    pub path: PathBuf,
    pub meta: ImageMeta,
    pub stats: ImageStats,
}

impl ImageDraft {
    /// Adds the metadata and makes the file durable. `meta`'s files, dirs and refs are taken
    /// from the draft.
    pub fn finish(self, mut meta: ImageMeta) -> Result<BuiltImage> {
        meta.files = self.files;
        meta.dirs = self.dirs;
        meta.refs = self.refs;
        let encoded = meta.encode();
        let (id, file_size, path) = self.writer.finish(&encoded)?;
        Ok(BuiltImage {
            id,
            file_size,
            path,
            meta,
            stats: self.stats,
        })
    }

    /// Bytes of a file not yet renamed into place (for failpoint tests).
    pub fn temp_path(&self) -> &Path {
        self.writer.temp_path()
    }
}

/// What to read.
pub struct ImageInput<'a> {
    pub datadir: &'a Path,
    /// Pages newer than this may be torn (they are being written during the backup).
    pub backup_start: Lsn,
    pub checksums: bool,
}

enum Job {
    Relation {
        rel: String,
        file: RelFile,
        mode: u32,
        /// Size when listed: the file is read in ranges of [`RANGE`] bytes in parallel.
        len: u64,
    },
    Whole {
        rel: String,
        mode: u32,
    },
}

/// Bytes of a relation file one worker reads at a time (large relations are read by all
/// cores at once).
const RANGE: u64 = 16 << 20;

/// Directories (relative path, mode) and the files to read.
type Listing = (Vec<(String, u32)>, Vec<Job>);

/// Lists the data directory the way `pg_basebackup` would copy it.
fn walk(root: &Path) -> Result<Listing> {
    use std::os::unix::fs::MetadataExt;
    let owner = fs::metadata(root).ctx("stat", root)?.uid();
    let version_file = root.join("PG_VERSION");
    let version = fs::read_to_string(&version_file).ctx("read", &version_file)?;
    let version_prefix = format!("PG_{}_", version.trim());
    let mut dirs = Vec::new();
    let mut jobs = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel_dir) = stack.pop() {
        let abs = if rel_dir.is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel_dir)
        };
        let entries = match fs::read_dir(&abs) {
            Ok(e) => e,
            // A database directory dropped during the backup.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel_dir.is_empty() => continue,
            Err(e) => return Err(Error::path("read directory", &abs, e)),
        };
        let mut names: Vec<(String, fs::Metadata)> = Vec::new();
        for e in entries {
            let e = e.ctx("read directory", &abs)?;
            let name = e.file_name().to_string_lossy().into_owned();
            match fs::symlink_metadata(e.path()) {
                Ok(md) => names.push((name, md)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(Error::path("stat", &e.path(), err)),
            }
        }
        // Unlogged relations: only their init fork is copied.
        let unlogged: HashSet<u32> = names
            .iter()
            .filter_map(|(n, _)| match relfile::parse_name(n) {
                Some((node, relfile::Fork::Init, _)) => Some(node),
                _ => None,
            })
            .collect();
        for (name, md) in names {
            let rel = if rel_dir.is_empty() {
                name.clone()
            } else {
                format!("{rel_dir}/{name}")
            };
            let mode = md.permissions().mode() & 0o7777;
            if rel_dir == "pg_tblspc" {
                // A tablespace (a link, or an in-place directory): keyed by its OID, and only
                // this server's version directory is read.
                if crate::tablespace::oid_of(&rel).is_some()
                    && (md.file_type().is_symlink() || md.is_dir())
                {
                    dirs.push((rel.clone(), 0o700));
                    for v in version_dirs(root, &rel, &version_prefix, owner)? {
                        dirs.push((v.clone(), 0o700));
                        stack.push(v);
                    }
                }
                continue;
            }
            if md.file_type().is_symlink() {
                if rel == "pg_wal" {
                    dirs.push((rel, 0o700));
                }
                continue;
            }
            if md.is_dir() {
                if relfile::excluded(&rel, &name, true) {
                    continue;
                }
                dirs.push((rel.clone(), mode));
                if rel_dir.is_empty() && EXCLUDE_CONTENTS.contains(&name.as_str()) {
                    if rel == "pg_wal" {
                        dirs.push(("pg_wal/archive_status".into(), 0o700));
                    }
                    continue;
                }
                stack.push(rel);
                continue;
            }
            if !md.is_file() || relfile::excluded(&rel, &name, false) {
                continue;
            }
            match relfile::relation(&rel) {
                Some(f) => {
                    if unlogged.contains(&f.relfilenode) && f.fork != relfile::Fork::Init {
                        continue;
                    }
                    jobs.push(Job::Relation {
                        rel,
                        file: f,
                        mode,
                        len: md.len(),
                    })
                }
                None => jobs.push(Job::Whole { rel, mode }),
            }
        }
    }
    dirs.sort();
    Ok((dirs, jobs))
}

/// The version directories (`PG_<major>_<catver>`) of the tablespace at `rel`
/// (`pg_tblspc/<OID>`), read through its link. Anything else there (another major version's
/// directory left by `pg_upgrade`, a link) is not this server's, and neither is a directory
/// that the data directory's owner does not own: a server's superuser can point the link
/// anywhere, and the image is read as root.
fn version_dirs(root: &Path, rel: &str, prefix: &str, owner: u32) -> Result<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    let abs = root.join(rel);
    match fs::metadata(&abs) {
        Ok(m) if m.is_dir() && m.uid() == owner => {}
        Ok(_) => {
            tracing::warn!(path = %abs.display(), "tablespace directory not owned by the data directory's owner: left out of the image");
            return Ok(vec![]);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::path("stat", &abs, e)),
    }
    let entries = match fs::read_dir(&abs) {
        Ok(e) => e,
        // Dropped during the backup, or a link to nowhere: nothing of this server is there.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::path("read tablespace directory", &abs, e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.ctx("read directory", &abs)?;
        let name = e.file_name().to_string_lossy().into_owned();
        let mine = e.metadata().is_ok_and(|m| m.is_dir() && m.uid() == owner);
        if name.starts_with(prefix) && e.file_type().is_ok_and(|t| t.is_dir()) && mine {
            out.push(format!("{rel}/{name}"));
        }
    }
    Ok(out)
}

struct Shared<'a> {
    known: &'a DedupIndex,
    /// The data directory's owner: a file someone else owns is not the server's.
    owner: u32,
    writer: Mutex<LayerWriter>,
    /// Pieces written by this image: hash -> location in this layer.
    local: RwLock<HashMap<[u8; 32], Loc>>,
    progress: &'a AtomicU64,
    stats: Mutex<ImageStats>,
}

impl Shared<'_> {
    /// Stores pieces (or finds them stored) and returns their references, in order. The new
    /// pieces of a batch go into one zstd frame (compressing consecutive pages together is what
    /// makes the ratio of a streaming compressor possible with per-page deduplication). Layer
    /// index 0 is this layer, `1 + i` the i-th layer of the dedup index. Locks are taken once
    /// per batch, and compression happens outside them.
    fn put_batch(&self, pieces: &[(&[u8], [u8; 32])]) -> Result<Vec<BlobRef>> {
        let mk = |hash: [u8; 32], layer: u32, l: &Loc| BlobRef {
            hash,
            layer,
            offset: l.offset,
            clen: l.clen,
            frame_len: l.frame_len,
            at: l.at,
            raw_len: l.raw_len,
        };
        let mut out: Vec<Option<BlobRef>> = vec![None; pieces.len()];
        let mut todo = Vec::new();
        {
            let local = self.local.read().unwrap_or_else(|e| e.into_inner());
            let mut seen = std::collections::HashSet::new();
            for (i, (_, hash)) in pieces.iter().enumerate() {
                if let Some(l) = self.known.map.get(hash) {
                    out[i] = Some(mk(*hash, l.layer + 1, l));
                } else if let Some(l) = local.get(hash) {
                    out[i] = Some(mk(*hash, 0, l));
                } else if seen.insert(*hash) {
                    todo.push(i);
                }
            }
        }
        if !todo.is_empty() {
            let mut raw = Vec::with_capacity(todo.iter().map(|&i| pieces[i].0.len()).sum());
            let mut at = Vec::with_capacity(todo.len());
            for &i in &todo {
                at.push(raw.len() as u32);
                raw.extend_from_slice(pieces[i].0);
            }
            let frame = compress(&raw)?;
            let mut local = self.local.write().unwrap_or_else(|e| e.into_inner());
            let mut w = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            let offset = w.append_blob(&frame)?;
            drop(w);
            let mut new = 0u64;
            for (&i, &pos) in todo.iter().zip(&at) {
                let (piece, hash) = pieces[i];
                let loc = Loc {
                    layer: 0,
                    offset,
                    clen: frame.len() as u32,
                    frame_len: raw.len() as u32,
                    at: pos,
                    raw_len: piece.len() as u32,
                };
                // Another worker may have stored the same piece meanwhile: either copy serves.
                local.entry(hash).or_insert(loc);
                new += 1;
            }
            drop(local);
            let mut st = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            st.new_pieces += new;
            st.stored_bytes += frame.len() as u64;
        }
        // Duplicates within the batch, and the pieces just stored, resolve through `local`.
        let local = self.local.read().unwrap_or_else(|e| e.into_inner());
        out.iter()
            .zip(pieces)
            .map(|(o, (_, hash))| match o {
                Some(b) => Ok(*b),
                None => local
                    .get(hash)
                    .map(|l| mk(*hash, 0, l))
                    .ok_or_else(|| Error::corrupt("image", "a stored piece went missing")),
            })
            .collect()
    }
}

thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd with one reused context per worker thread (creating a context costs more than
/// compressing a page).
fn compress(raw: &[u8]) -> Result<Vec<u8>> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(
                zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(|e| Error::io("start zstd", e))?,
            );
        }
        c.as_mut()
            .expect("set above")
            .compress(raw)
            .map_err(|e| Error::io("compress a piece", e))
    })
}

/// Opens a file of the server for reading: never through a link in its last component, and
/// only when the data directory's owner owns it (a path swapped for another while the image
/// is read, or a hard link, never hands root's reading rights to the server's OS user). A file
/// that is not the server's reads as vanished.
fn open_nofollow(path: &Path, owner: u32) -> std::io::Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let m = f.metadata()?;
    if m.uid() != owner || !m.is_file() {
        tracing::warn!(path = %path.display(), "not a file of the server's OS user: left out of the image");
        return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
    }
    Ok(f)
}

fn read_full(f: &File, buf: &mut [u8], off: u64, path: &Path) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = f
            .read_at(&mut buf[got..], off + got as u64)
            .ctx("read", path)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Result of processing one file: `Ok(None)` when it vanished during the backup.
type FileResult = std::result::Result<Option<ImageFile>, FileError>;

enum FileError {
    Corrupt(Box<CorruptPage>),
    Other(Error),
}

impl From<Error> for FileError {
    fn from(e: Error) -> Self {
        FileError::Other(e)
    }
}

/// Pieces and bytes read of one range, `None` when its file vanished during the backup.
type RangeResult = std::result::Result<Option<(Vec<BlobRef>, u64)>, FileError>;

/// Reads pages `[from, to)` of a relation file (`to = None`: to its end); returns the pieces,
/// bytes read, and `None` when the file vanished during the backup.
fn relation_range(
    sh: &Shared,
    input: &ImageInput,
    rel: &str,
    rf: &RelFile,
    from: u64,
    to: Option<u64>,
) -> RangeResult {
    let path = input.datadir.join(rel);
    // Never through a link a server's superuser may have put in place of a file.
    let f = match open_nofollow(&path, sh.owner) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::path("open", &path, e).into()),
    };
    let mut buf = vec![0u8; BLCKSZ * PAGES_PER_READ];
    let mut blobs = Vec::new();
    let mut off = from;
    let mut torn = 0;
    loop {
        let want = match to {
            Some(t) if t <= off => break,
            Some(t) => buf.len().min((t - off) as usize),
            None => buf.len(),
        };
        let n = read_full(&f, &mut buf[..want], off, &path)?;
        if n == 0 {
            break;
        }
        sh.progress.fetch_add(n as u64, Ordering::Relaxed);
        let mut hashes = Vec::with_capacity(PAGES_PER_READ);
        for (i, page) in buf[..n].chunks_mut(BLCKSZ).enumerate() {
            let blkno = rf.block(((off as usize / BLCKSZ) + i) as u32);
            if page.len() == BLCKSZ && input.checksums {
                if let PageCheck::Mismatch { .. } = verify_page(page, blkno) {
                    // Read again: PostgreSQL may have been writing this page.
                    let at = off + (i * BLCKSZ) as u64;
                    let mut again = vec![0u8; BLCKSZ];
                    let m = read_full(&f, &mut again, at, &path)?;
                    if m == BLCKSZ {
                        page.copy_from_slice(&again);
                    }
                    if let PageCheck::Mismatch { stored, computed } = verify_page(page, blkno) {
                        let lsn = page_info(page).lsn;
                        if lsn < input.backup_start {
                            return Err(FileError::Corrupt(Box::new(CorruptPage {
                                path: rel.to_string(),
                                rel: Some(rf.clone()),
                                block: blkno,
                                lsn,
                                stored,
                                computed,
                            })));
                        }
                        torn += 1;
                    }
                }
            }
            hashes.push(<[u8; 32]>::from(Sha256::digest(&*page)));
        }
        let batch: Vec<(&[u8], [u8; 32])> = buf[..n].chunks(BLCKSZ).zip(hashes).collect();
        blobs.extend(sh.put_batch(&batch)?);
        off += n as u64;
        if n < want {
            break;
        }
    }
    let mut st = sh.stats.lock().unwrap_or_else(|e| e.into_inner());
    st.torn_pages += torn;
    st.pieces += blobs.len() as u64;
    st.bytes_read += off - from;
    Ok(Some((blobs, off - from)))
}

fn whole_file(sh: &Shared, input: &ImageInput, rel: &str, mode: u32) -> FileResult {
    let path = input.datadir.join(rel);
    // Never through a link a server's superuser may have put in place of a file.
    let f = match open_nofollow(&path, sh.owner) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::path("open", &path, e).into()),
    };
    let mut buf = vec![0u8; WHOLE_CHUNK];
    let mut blobs = Vec::new();
    let mut off = 0u64;
    loop {
        let n = read_full(&f, &mut buf, off, &path)?;
        if n == 0 && off > 0 {
            break;
        }
        sh.progress.fetch_add(n as u64, Ordering::Relaxed);
        let hash: [u8; 32] = Sha256::digest(&buf[..n]).into();
        blobs.extend(sh.put_batch(&[(&buf[..n], hash)])?);
        off += n as u64;
        if n < buf.len() {
            break;
        }
    }
    let mut st = sh.stats.lock().unwrap_or_else(|e| e.into_inner());
    st.pieces += blobs.len() as u64;
    st.bytes_read += off;
    Ok(Some(ImageFile {
        path: rel.to_string(),
        mode,
        size: off,
        relation: false,
        blobs,
    }))
}

/// Total bytes of the files an image of `datadir` would read (for progress bars).
pub fn estimate_size(datadir: &Path) -> u64 {
    let Ok((_, jobs)) = walk(datadir) else {
        return 0;
    };
    jobs.iter()
        .map(|j| match j {
            Job::Relation { rel, .. } | Job::Whole { rel, .. } => fs::metadata(datadir.join(rel))
                .map(|m| m.len())
                .unwrap_or(0),
        })
        .sum()
}

/// Reads the data directory and writes every new piece into a layer file under `out_dir`.
/// On a corrupt page, returns `Err(Ok(page))`; on any other failure `Err(Err(error))`. The
/// temporary file is removed on every error.
pub fn build(
    out_dir: &Path,
    input: &ImageInput,
    known: &DedupIndex,
    progress: &AtomicU64,
) -> std::result::Result<ImageDraft, std::result::Result<CorruptPage, Error>> {
    let (dirs, jobs) = walk(input.datadir).map_err(Err)?;
    let writer = LayerWriter::create(out_dir, LayerKind::Image).map_err(Err)?;
    let owner = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(input.datadir)
            .map_err(|e| Err(Error::path("stat", input.datadir, e)))?
            .uid()
    };
    let sh = Shared {
        owner,
        known,
        writer: Mutex::new(writer),
        local: RwLock::new(HashMap::new()),
        progress,
        stats: Mutex::new(ImageStats::default()),
    };
    // Work units: whole files, and relation files cut into ranges (the last one reads to EOF).
    let mut units: Vec<(usize, u64, Option<u64>)> = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        match j {
            Job::Relation { len, .. } => {
                let mut from = 0;
                while from + RANGE < *len {
                    units.push((i, from, Some(from + RANGE)));
                    from += RANGE;
                }
                units.push((i, from, None));
            }
            Job::Whole { .. } => units.push((i, 0, None)),
        }
    }
    // Largest first, for balance.
    units.sort_by_key(|u| std::cmp::Reverse(u.2.map_or(RANGE, |t| t - u.1)));
    let halfway = units.len() / 2;
    let results: Vec<(usize, u64, RangeResult)> = units
        .par_iter()
        .enumerate()
        .map(|(k, &(i, from, to))| {
            if k == halfway {
                crate::failpoint::hit("image-mid-write");
            }
            let r = match &jobs[i] {
                Job::Relation { rel, file, .. } => relation_range(&sh, input, rel, file, from, to),
                Job::Whole { rel, mode } => {
                    whole_file(&sh, input, rel, *mode).map(|o| o.map(|f| (f.blobs, f.size)))
                }
            };
            (i, from, r)
        })
        .collect();
    // Assemble each file from its ranges, in order.
    let mut parts: Vec<Vec<(u64, Vec<BlobRef>, u64)>> =
        (0..jobs.len()).map(|_| Vec::new()).collect();
    let mut vanished = vec![false; jobs.len()];
    for (i, from, r) in results {
        match r {
            Ok(Some((blobs, n))) => parts[i].push((from, blobs, n)),
            Ok(None) => vanished[i] = true,
            Err(FileError::Corrupt(p)) => return Err(Ok(*p)),
            Err(FileError::Other(e)) => return Err(Err(e)),
        }
    }
    let mut files = Vec::with_capacity(jobs.len());
    for (i, j) in jobs.iter().enumerate() {
        if vanished[i] {
            continue;
        }
        let mut p = std::mem::take(&mut parts[i]);
        p.sort_by_key(|x| x.0);
        let (rel, mode, relation) = match j {
            Job::Relation { rel, mode, .. } => (rel, *mode, true),
            Job::Whole { rel, mode } => (rel, *mode, false),
        };
        // A file truncated during the backup ends at its first short range.
        let mut blobs = Vec::new();
        let mut size = 0;
        for (from, b, n) in p {
            if from != size {
                break;
            }
            blobs.extend(b);
            size += n;
        }
        files.push(ImageFile {
            path: rel.clone(),
            mode,
            size,
            relation,
            blobs,
        });
    }
    sh.stats.lock().unwrap_or_else(|e| e.into_inner()).files = files.len() as u64;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    // Keep only the referenced layers, renumbered in order of first use.
    let mut remap: HashMap<u32, u32> = HashMap::new();
    let mut refs = vec![LayerId([0; 32])];
    for f in files.iter_mut() {
        for b in f.blobs.iter_mut() {
            if b.layer == 0 {
                continue;
            }
            let next = refs.len() as u32;
            let new = *remap.entry(b.layer).or_insert_with(|| {
                refs.push(known.layers[(b.layer - 1) as usize]);
                next
            });
            b.layer = new;
        }
    }
    let writer = sh.writer.into_inner().unwrap_or_else(|e| e.into_inner());
    Ok(ImageDraft {
        writer,
        files,
        dirs,
        refs,
        stats: sh.stats.into_inner().unwrap_or_else(|e| e.into_inner()),
    })
}
