//! The layer file container shared by image and WAL layers.
//!
//! ```text
//! 0   magic        8 bytes  "CAIRNIMG" | "CAIRNWAL"
//! 8   version      u16      format version of this kind (image 2, WAL 1)
//! 10  reserved     u16, u32 zero
//! 16  blobs        zstd frames, referenced by (offset, length) from the metadata
//! M   metadata     zstd frame of the kind's metadata (little-endian, see docs/FORMAT.md)
//! end trailer      meta_offset u64, meta_len u64, meta_sha256 [32], "CAIRNEND"
//! ```
//!
//! The layer id is the SHA-256 of the whole file, which is also its name. A writer produces
//! the file under a temporary name and only [`LayerWriter::finish`] renames it into place,
//! after fsync; a crash before that leaves only a `.tmp-` file, which recovery removes.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::ids::LayerId;

pub const HEADER_LEN: u64 = 16;
pub const TRAILER_LEN: u64 = 8 + 8 + 32 + 8;
const END_MAGIC: &[u8; 8] = b"CAIRNEND";
/// The most a layer's metadata may inflate to (a WAL layer's events and chunks, an image's
/// file and piece tables): far above any layer cairn writes, far below what exhausts memory.
pub const MAX_META: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    Image,
    Wal,
}

impl LayerKind {
    pub fn magic(self) -> &'static [u8; 8] {
        match self {
            LayerKind::Image => b"CAIRNIMG",
            LayerKind::Wal => b"CAIRNWAL",
        }
    }
    pub fn extension(self) -> &'static str {
        match self {
            LayerKind::Image => "img",
            LayerKind::Wal => "wal",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            LayerKind::Image => "image",
            LayerKind::Wal => "wal",
        }
    }
    pub fn parse(s: &str) -> Option<LayerKind> {
        match s {
            "image" => Some(LayerKind::Image),
            "wal" => Some(LayerKind::Wal),
            _ => None,
        }
    }
    /// The current format version written for this kind (every older one still reads).
    pub fn version(self) -> u16 {
        match self {
            // 2: image metadata ends with the tablespace list.
            LayerKind::Image => 2,
            LayerKind::Wal => 1,
        }
    }
}

/// File name of a layer in its timeline directory.
pub fn file_name(kind: LayerKind, id: LayerId) -> String {
    format!("{id}.{}", kind.extension())
}

/// Parses a layer file name back into (kind, id).
pub fn parse_file_name(name: &str) -> Option<(LayerKind, LayerId)> {
    let (id, ext) = name.split_once('.')?;
    let kind = match ext {
        "img" => LayerKind::Image,
        "wal" => LayerKind::Wal,
        _ => return None,
    };
    Some((kind, id.parse().ok()?))
}

/// Builds one layer file.
pub struct LayerWriter {
    out: BufWriter<File>,
    hasher: Sha256,
    tmp: PathBuf,
    dir: PathBuf,
    pos: u64,
    kind: LayerKind,
    done: bool,
}

impl LayerWriter {
    pub fn create(dir: &Path, kind: LayerKind) -> Result<LayerWriter> {
        // A new timeline's directory must survive a power loss with its first layer.
        fsutil::create_dirs_durable(dir).ctx("create layer directory", dir)?;
        let tmp = fsutil::temp_path(dir);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .ctx("create layer file", &tmp)?;
        let mut w = LayerWriter {
            out: BufWriter::with_capacity(1 << 20, f),
            hasher: Sha256::new(),
            tmp,
            dir: dir.to_path_buf(),
            pos: 0,
            kind,
            done: false,
        };
        let mut header = Vec::with_capacity(16);
        header.extend_from_slice(kind.magic());
        header.extend_from_slice(&kind.version().to_le_bytes());
        header.extend_from_slice(&[0u8; 6]);
        w.write(&header)?;
        Ok(w)
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).ctx("write layer file", &self.tmp)?;
        self.hasher.update(b);
        self.pos += b.len() as u64;
        Ok(())
    }

    /// Appends an already-compressed blob and returns its offset.
    pub fn append_blob(&mut self, blob: &[u8]) -> Result<u64> {
        let at = self.pos;
        self.write(blob)?;
        Ok(at)
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Writes metadata and trailer, makes the file durable under its content-hash name and
    /// returns (id, size, path).
    pub fn finish(mut self, meta: &[u8]) -> Result<(LayerId, u64, PathBuf)> {
        let compressed = zstd::bulk::compress(meta, 3).ctx("compress layer metadata", &self.tmp)?;
        let meta_offset = self.pos;
        self.write(&compressed)?;
        let mut trailer = Vec::with_capacity(TRAILER_LEN as usize);
        trailer.extend_from_slice(&meta_offset.to_le_bytes());
        trailer.extend_from_slice(&(compressed.len() as u64).to_le_bytes());
        trailer.extend_from_slice(&Sha256::digest(&compressed));
        trailer.extend_from_slice(END_MAGIC);
        self.write(&trailer)?;
        self.out.flush().ctx("write layer file", &self.tmp)?;
        let id = LayerId(self.hasher.clone().finalize().into());
        let dest = self.dir.join(file_name(self.kind, id));
        crate::failpoint::hit("layer-before-rename");
        fsutil::commit_rename(&self.tmp, &dest).ctx("make layer file durable", &dest)?;
        self.done = true;
        Ok((id, self.pos, dest))
    }
}

impl Drop for LayerWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// An open, immutable layer file.
/// The trailer of a layer file: where its metadata lies, and the metadata's SHA-256.
#[derive(Debug, Clone, Copy)]
pub struct Trailer {
    pub meta_offset: u64,
    pub meta_len: u64,
    pub meta_sha256: [u8; 32],
}

impl Trailer {
    /// Parses the last [`TRAILER_LEN`] bytes of a layer file of `size` bytes.
    pub fn parse(trailer: &[u8], size: u64, what: &str) -> Result<Trailer> {
        if trailer.len() != TRAILER_LEN as usize || &trailer[48..56] != END_MAGIC {
            return Err(Error::corrupt(what, "trailer missing (truncated file?)"));
        }
        let meta_offset = u64::from_le_bytes(trailer[0..8].try_into().expect("8"));
        let meta_len = u64::from_le_bytes(trailer[8..16].try_into().expect("8"));
        if meta_offset < HEADER_LEN || meta_offset.checked_add(meta_len) != Some(size - TRAILER_LEN)
        {
            return Err(Error::corrupt(what, "trailer offsets are inconsistent"));
        }
        Ok(Trailer {
            meta_offset,
            meta_len,
            meta_sha256: trailer[16..48].try_into().expect("32"),
        })
    }

    /// Checks and decompresses the metadata bytes the trailer points at.
    pub fn decode_meta(&self, compressed: &[u8], what: &str) -> Result<Vec<u8>> {
        if Sha256::digest(compressed).as_slice() != self.meta_sha256 {
            return Err(Error::corrupt(what, "metadata checksum mismatch"));
        }
        super::codec::decompress_bounded(compressed, MAX_META)
            .map_err(|e| Error::corrupt(what, format!("metadata does not decompress: {e}")))
    }
}

/// The tail of a layer file — its compressed metadata and its trailer, `[meta_offset, size)` —
/// as (length, SHA-256). A reader that reads only the tail (a restore planning from a region)
/// checks it against this digest, which the signed index carries.
pub fn tail_digest(path: &Path) -> Result<(u64, [u8; 32])> {
    let obj = || format!("layer file {}", path.display());
    let file = File::open(path).ctx("open layer file", path)?;
    let size = file.metadata().ctx("stat layer file", path)?.len();
    if size < HEADER_LEN + TRAILER_LEN {
        return Err(Error::corrupt(obj(), format!("only {size} bytes long")));
    }
    let mut trailer = [0u8; TRAILER_LEN as usize];
    file.read_exact_at(&mut trailer, size - TRAILER_LEN)
        .ctx("read layer file", path)?;
    let t = Trailer::parse(&trailer, size, &obj())?;
    let mut tail = vec![0u8; (size - t.meta_offset) as usize];
    file.read_exact_at(&mut tail, t.meta_offset)
        .ctx("read layer file", path)?;
    Ok((tail.len() as u64, Sha256::digest(&tail).into()))
}

pub struct LayerFile {
    file: File,
    pub path: PathBuf,
    pub kind: LayerKind,
    pub version: u16,
    pub size: u64,
    /// Decompressed metadata.
    pub meta: Vec<u8>,
}

impl LayerFile {
    pub fn open(path: &Path, kind: LayerKind) -> Result<LayerFile> {
        let obj = || format!("layer file {}", path.display());
        let mut file = File::open(path).ctx("open layer file", path)?;
        let size = file.metadata().ctx("stat layer file", path)?.len();
        if size < HEADER_LEN + TRAILER_LEN {
            return Err(Error::corrupt(obj(), format!("only {size} bytes long")));
        }
        let mut header = [0u8; HEADER_LEN as usize];
        file.read_exact(&mut header).ctx("read layer file", path)?;
        if &header[..8] != kind.magic() {
            let what = match kind {
                LayerKind::Image => "an image",
                LayerKind::Wal => "a WAL",
            };
            return Err(Error::corrupt(
                obj(),
                format!("not {what} layer (bad magic)"),
            ));
        }
        let version = u16::from_le_bytes([header[8], header[9]]);
        if version == 0 || version > kind.version() {
            return Err(Error::corrupt(
                obj(),
                format!(
                    "format version {version} is newer than this cairn understands ({}); \
                     upgrade cairn",
                    kind.version()
                ),
            ));
        }
        let mut trailer = [0u8; TRAILER_LEN as usize];
        file.seek(SeekFrom::Start(size - TRAILER_LEN))
            .ctx("read layer file", path)?;
        file.read_exact(&mut trailer).ctx("read layer file", path)?;
        let t = Trailer::parse(&trailer, size, &obj())?;
        let mut compressed = vec![0u8; t.meta_len as usize];
        file.read_exact_at(&mut compressed, t.meta_offset)
            .ctx("read layer file", path)?;
        let meta = t.decode_meta(&compressed, &obj())?;
        Ok(LayerFile {
            file,
            path: path.to_path_buf(),
            kind,
            version,
            size,
            meta,
        })
    }

    /// Reads a blob, decompresses it and checks its SHA-256.
    pub fn read_blob(
        &self,
        offset: u64,
        clen: u32,
        raw_len: u32,
        hash: &[u8; 32],
    ) -> Result<Vec<u8>> {
        let obj = || format!("layer file {}", self.path.display());
        if offset < HEADER_LEN || offset + clen as u64 > self.size - TRAILER_LEN {
            return Err(Error::corrupt(
                obj(),
                format!("piece at offset {offset} lies outside the file"),
            ));
        }
        let mut c = vec![0u8; clen as usize];
        self.file
            .read_exact_at(&mut c, offset)
            .ctx("read layer file", &self.path)?;
        let raw = zstd::bulk::decompress(&c, raw_len as usize).map_err(|e| {
            Error::corrupt(
                obj(),
                format!("piece at offset {offset} does not decompress: {e}"),
            )
        })?;
        if raw.len() != raw_len as usize || Sha256::digest(&raw).as_slice() != hash {
            return Err(Error::corrupt(
                obj(),
                format!("piece at offset {offset} fails its SHA-256 check"),
            ));
        }
        Ok(raw)
    }

    /// Reads and decompresses a frame that holds several pieces (each checked by its reader).
    pub fn read_frame(&self, offset: u64, clen: u32, frame_len: u32) -> Result<Vec<u8>> {
        let obj = || format!("layer file {}", self.path.display());
        if offset < HEADER_LEN || offset + clen as u64 > self.size - TRAILER_LEN {
            return Err(Error::corrupt(
                obj(),
                format!("frame at offset {offset} lies outside the file"),
            ));
        }
        let mut c = vec![0u8; clen as usize];
        self.file
            .read_exact_at(&mut c, offset)
            .ctx("read layer file", &self.path)?;
        let raw = zstd::bulk::decompress(&c, frame_len as usize).map_err(|e| {
            Error::corrupt(
                obj(),
                format!("frame at offset {offset} does not decompress: {e}"),
            )
        })?;
        if raw.len() != frame_len as usize {
            return Err(Error::corrupt(
                obj(),
                format!("frame at offset {offset} has the wrong length"),
            ));
        }
        Ok(raw)
    }

    /// Hashes the whole file and compares it with the id it is named by.
    pub fn verify_id(&self, id: LayerId) -> Result<()> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        while off < self.size {
            let n = self
                .file
                .read_at(&mut buf, off)
                .ctx("read layer file", &self.path)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            off += n as u64;
        }
        if h.finalize().as_slice() != id.0 {
            return Err(Error::corrupt(
                format!("layer file {}", self.path.display()),
                "content does not match its name (SHA-256 mismatch)",
            ));
        }
        Ok(())
    }
}
