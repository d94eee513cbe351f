//! Reading objects back from a region: streamed, verified, decrypted.
//!
//! Invariants:
//! - Nothing unverified leaves this module. A data key is believed only when it matches the
//!   commitment a signed index carries ([`open_key`]): anyone can wrap a key of their own for
//!   the appliance's public recipient. A whole-object download checks the object's size
//!   before reading, the header names the expected object, every chunk's AEAD tag (bound to
//!   its index and to the final-chunk flag, so reordering and truncation fail), the plaintext
//!   SHA-256 against the object id and, when the index recorded them, the ciphertext's
//!   SHA-256. A ranged read checks the size, the header and the tag of every chunk it opens:
//!   with a committed key, it proves those bytes are that object's.
//! - A download writes to a temporary name (mode 0600: it is plaintext) and renames into place only after every check
//!   passed; a failed or interrupted download leaves nothing under the destination name.
//! - Memory stays bounded: at most [`CHUNKS_PER_GET`] sealed chunks of one object are in
//!   memory at a time, whatever the object's size.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::crypto::dek_commitment;
use crate::crypto::keyobj::KeyObject;
use crate::crypto::stream::{Compression, Header, Opener, HEADER_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::keys::Identity;
use crate::region::Region;

/// The largest key object a reader fetches (a keyring of 256 recipients needs about 60 KiB).
pub const MAX_KEY_OBJECT_BYTES: u64 = 1 << 20;

/// Reads the key object at `key` and opens the data key of object `object_id` with one of
/// `identities`, believing it only if it matches `commitment` (from a signed index).
pub async fn open_key(
    region: &Region,
    key: &str,
    object_id: &[u8; 32],
    commitment: &str,
    identities: &[&Identity],
) -> Result<[u8; 32]> {
    let what = format!("region '{}', {key}", region.name);
    let kb = region.get_bounded(key, MAX_KEY_OBJECT_BYTES).await?;
    let ko = KeyObject::decode(&kb, &what)?;
    if &ko.object_id != object_id {
        return Err(Error::tampered(
            &what,
            "is the key object of another object (key objects swapped)",
        ));
    }
    let dek = ko.unwrap(identities, &what)?;
    if dek_commitment(&ko.object_id, &ko.key_id, &dek) != commitment {
        return Err(Error::tampered(
            &what,
            "opens a data key other than the one the signed index names (a forged key object)",
        ));
    }
    Ok(dek)
}

/// Sealed chunks fetched per ranged GET (8 MiB with 1 MiB chunks).
pub const CHUNKS_PER_GET: u64 = 8;

/// What a downloaded object must turn out to be.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    /// The plaintext SHA-256 (a layer's id; the id in the header for other objects).
    pub object_id: &'a [u8; 32],
    /// The encrypted object's size and SHA-256 (hex), when recorded.
    pub sealed: Option<(u64, &'a str)>,
}

/// Layout of an encrypted object of `size` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub size: u64,
    pub chunk_size: u64,
    pub chunks: u64,
    pub plain_len: u64,
}

impl Layout {
    pub fn of(header: &Header, size: u64, what: &str) -> Result<Layout> {
        let sealed = header.chunk_size as u64 + TAG_LEN as u64;
        let body = size
            .checked_sub(HEADER_LEN as u64)
            .ok_or_else(|| Error::tampered(what, "shorter than its header"))?;
        let chunks = body.div_ceil(sealed).max(1);
        let plain_len = body
            .checked_sub(chunks * TAG_LEN as u64)
            .ok_or_else(|| Error::tampered(what, "truncated: shorter than its chunk tags"))?;
        Ok(Layout {
            size,
            chunk_size: header.chunk_size as u64,
            chunks,
            plain_len,
        })
    }

    fn sealed(&self) -> u64 {
        self.chunk_size + TAG_LEN as u64
    }
}

/// An object opened for reading: its header, layout and opener.
pub struct OpenedObject<'r> {
    pub region: &'r Region,
    pub key: String,
    pub layout: Layout,
    opener: Opener,
    what: String,
}

impl<'r> OpenedObject<'r> {
    /// Looks the object up and checks its size (`expected_size`, from a signed index) and
    /// that its header names `object_id`.
    pub async fn open(
        region: &'r Region,
        key: &str,
        dek: &[u8; 32],
        object_id: &[u8; 32],
        expected_size: Option<u64>,
    ) -> Result<OpenedObject<'r>> {
        let what = format!("region '{}', {key}", region.name);
        let size = region
            .head(key)
            .await?
            .ok_or_else(|| Error::tampered(&what, "missing"))?;
        let head = region
            .get_range(key, 0, (HEADER_LEN as u64).min(size))
            .await?;
        let header = Header::decode(&head, &what)?;
        if &header.object_id != object_id {
            return Err(Error::tampered(
                &what,
                "holds another object (objects swapped)",
            ));
        }
        if let Some(expected) = expected_size {
            if size != expected {
                return Err(Error::tampered(
                    &what,
                    format!(
                        "is {size} bytes, the index recorded {expected} (truncated or extended)"
                    ),
                ));
            }
        }
        let layout = Layout::of(&header, size, &what)?;
        Ok(OpenedObject {
            region,
            key: key.to_string(),
            layout,
            opener: Opener::new(dek, header, &what),
            what,
        })
    }

    /// Fetches and opens chunks `[first, first + n)`, calling `each(index, plaintext)`.
    async fn chunks(
        &self,
        first: u64,
        n: u64,
        hasher: Option<&mut Sha256>,
        mut each: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let l = &self.layout;
        let from = HEADER_LEN as u64 + first * l.sealed();
        let to = (from + n * l.sealed()).min(l.size);
        let data = self.region.get_range(&self.key, from, to).await?;
        if data.len() as u64 != to - from {
            return Err(Error::tampered(&self.what, "a read returned a short range"));
        }
        if let Some(h) = hasher {
            h.update(&data);
        }
        for j in 0..n {
            let idx = first + j;
            let a = (j * l.sealed()) as usize;
            let b = ((j + 1) * l.sealed()).min(data.len() as u64) as usize;
            let mut c = data[a..b].to_vec();
            let len = self.opener.open(idx, &mut c, idx + 1 == l.chunks)?;
            each(idx, &c[..len])?;
        }
        Ok(())
    }

    /// Reads plaintext `[from, to)`, opening only the chunks that hold it.
    pub async fn read_plain(&self, from: u64, to: u64) -> Result<Vec<u8>> {
        let l = self.layout;
        if from > to || to > l.plain_len {
            return Err(Error::tampered(
                &self.what,
                format!(
                    "range {from}..{to} lies outside its {} plaintext bytes",
                    l.plain_len
                ),
            ));
        }
        let mut out = Vec::with_capacity((to - from) as usize);
        if from == to {
            return Ok(out);
        }
        let first = from / l.chunk_size;
        let last = (to - 1) / l.chunk_size;
        let mut i = first;
        while i <= last {
            let n = CHUNKS_PER_GET.min(last + 1 - i);
            self.chunks(i, n, None, |idx, plain| {
                let start = idx * l.chunk_size;
                let a = from.saturating_sub(start).min(plain.len() as u64) as usize;
                let b = (to - start).min(plain.len() as u64) as usize;
                out.extend_from_slice(&plain[a..b]);
                Ok(())
            })
            .await?;
            i += n;
        }
        Ok(out)
    }
}

/// Reads an object chunk by chunk, handing each verified plaintext chunk to `sink`, and checks
/// it whole against `expect` (every tag, the plaintext hash, the sealed hash) before returning.
/// What `sink` received is only trustworthy once this returns `Ok`. Memory stays bounded by
/// [`CHUNKS_PER_GET`] chunks. Returns the plaintext length.
pub async fn stream_verified(
    region: &Region,
    key: &str,
    dek: &[u8; 32],
    expect: Expect<'_>,
    progress: Option<&AtomicU64>,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let obj = OpenedObject::open(
        region,
        key,
        dek,
        expect.object_id,
        expect.sealed.map(|(s, _)| s),
    )
    .await?;
    let what = obj.what.clone();
    if obj.opener.header.compression != Compression::None {
        return Err(Error::tampered(
            &what,
            "is compressed, which no object cairn writes to a region is",
        ));
    }
    let mut plain_hash = Sha256::new();
    let mut sealed_hash = Sha256::new();
    // The header bytes were checked to decode to this header, and encoding is canonical.
    sealed_hash.update(obj.opener.header.encode());
    let mut written = 0u64;
    let mut i = 0u64;
    while i < obj.layout.chunks {
        let n = CHUNKS_PER_GET.min(obj.layout.chunks - i);
        obj.chunks(i, n, Some(&mut sealed_hash), |_, plain| {
            plain_hash.update(plain);
            written += plain.len() as u64;
            sink(plain)
        })
        .await?;
        if let Some(p) = progress {
            let bytes = (n * obj.layout.sealed()).min(obj.layout.size);
            p.fetch_add(bytes, Ordering::Relaxed);
        }
        i += n;
    }
    let digest: [u8; 32] = plain_hash.finalize().into();
    if &digest != expect.object_id {
        return Err(Error::tampered(&what, "plaintext does not hash to its id"));
    }
    if let Some((_, sha)) = expect.sealed {
        let got = hex::encode(sealed_hash.finalize());
        if got != sha {
            return Err(Error::tampered(
                &what,
                format!(
                    "content hash {} differs from the recorded {}",
                    &got[..16],
                    &sha[..16.min(sha.len())]
                ),
            ));
        }
    }
    Ok(written)
}

/// Downloads an object, decrypting it chunk by chunk into `dest`, and verifies it against
/// `expect`. Adds sealed bytes to `progress` as they arrive. Returns the plaintext length.
pub async fn download(
    region: &Region,
    key: &str,
    dek: &[u8; 32],
    expect: Expect<'_>,
    dest: &Path,
    progress: Option<&AtomicU64>,
) -> Result<u64> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    cairn_engine::fsutil::create_dirs_durable(dir)
        .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let tmp = cairn_engine::fsutil::temp_path(dir);
    let mut out = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?,
    );
    let result = stream_verified(region, key, dek, expect, progress, |plain| {
        out.write_all(plain)
            .map_err(|e| Error::io(format!("write {}", tmp.display()), e))
    })
    .await
    .and_then(|n| {
        out.flush()
            .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
        Ok(n)
    });
    drop(out);
    let written = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    cairn_engine::fsutil::commit_rename(&tmp, dest)
        .map_err(|e| Error::io(format!("write {}", dest.display()), e))?;
    Ok(written)
}
