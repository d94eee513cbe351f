//! Exports: a logical copy of one database at one point (a `pg_dump` archive in custom
//! format), sealed like any other object, written to a file or to regions.
//!
//! ```text
//! manifest      signed blob (keys::sign_blob): magic "CAIRNEXM" | version u16 = 1 | signer [32]
//!               | signature [64] | JSON body (Manifest)
//! export file   magic "CAIRNEXP" 8 | version u16 = 1 | manifest_len u32 | manifest
//!               | key_len u32 | key object (CAIRNKEY) | sealed object (CAIRNOBJ, kind 3) to the end
//! in a region   clusters/C/exports/ID           the sealed object
//!               clusters/C/keys/export-ID       its key object
//!               clusters/C/exports/ID.manifest  the manifest, written last
//! ```
//!
//! Invariants:
//! - The sealed dump is an ordinary envelope object: its own random data key wrapped for the
//!   keyring's recipients, object id = SHA-256 of the dump. Reading it back checks the manifest's
//!   signature and signer first, then that key object, header and manifest name the same
//!   object, every chunk's tag, the dump's SHA-256, and the sealed bytes' size and SHA-256
//!   against the manifest. Nothing unverified is left under the destination name.
//! - In a region the manifest is written after the object and its key: an export that is
//!   listed is complete. An export's data key is recorded in the catalog like a layer's, so key
//!   changes re-wrap it, `regions check` proves it, and shredding its cluster destroys it.
//! - Decrypted dumps and export files are created with mode 0600 under a temporary name and
//!   renamed into place; an existing destination is never overwritten.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use cairn_engine::progress::Progress;

use crate::crypto::keyobj::KeyObject;
use crate::crypto::random;
use crate::crypto::stream::{Compression, Header, ObjectKind, Opener, CHUNK_SIZE, HEADER_LEN};
use crate::error::{Error, Result};
use crate::fetch::MAX_KEY_OBJECT_BYTES;
use crate::fetch::{download, Expect, Layout};
use crate::keys::{open_blob, require_trusted, sign_blob, Identity};
use crate::protection::Protection;
use crate::region::{keys, Region};
use crate::ship::SealedReader;

pub const MANIFEST_MAGIC: &[u8; 8] = b"CAIRNEXM";
pub const FILE_MAGIC: &[u8; 8] = b"CAIRNEXP";
pub const VERSION: u16 = 1;
/// Upper bound on the manifest and key object of an export file (sanity, not a format limit
/// any real export approaches).
const MAX_SECTION: u32 = 1 << 20;

/// What an export holds and how to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// `YYYYMMDDTHHMMSSZ-xxxxxx`: sortable by creation time, unique.
    pub id: String,
    pub cluster_id: String,
    pub cluster: String,
    pub branch: String,
    pub database: String,
    /// The point as it was asked for ("latest", "lsn 0/3000150", "time ...", ...).
    pub point: String,
    /// The LSN the dump was taken at.
    pub lsn: String,
    /// Time of the last commit at or before the point, when known.
    pub point_time: Option<String>,
    pub pg_major: u32,
    /// `pg_dump --version` of the binary that wrote the archive.
    pub pg_dump: String,
    /// Where the point was read from: "local layers" or "region NAME".
    pub source: String,
    pub created_at: String,
    pub dump_bytes: u64,
    /// SHA-256 of the dump (the sealed object's id), hex.
    pub dump_sha256: String,
    pub sealed_bytes: u64,
    pub sealed_sha256: String,
    /// Id of the data key (names its key object).
    pub key_id: String,
}

impl Manifest {
    /// The catalog name of this export's data key and shipments.
    pub fn object(&self) -> String {
        keys::export_object(&self.id)
    }

    pub fn encode_signed(&self, signer: &crate::keys::Signer) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("manifest serialises");
        sign_blob(MANIFEST_MAGIC, VERSION, signer, &body)
    }

    /// Decodes a signed manifest and checks its signature and signer.
    pub fn decode_verified(
        bytes: &[u8],
        what: &str,
        trust: &SignerTrust,
    ) -> Result<(Manifest, [u8; 32])> {
        let (signer, body) = open_blob(MANIFEST_MAGIC, VERSION, bytes, what, "export manifest")?;
        trust.check(&signer, what)?;
        let m: Manifest = serde_json::from_slice(body)
            .map_err(|e| Error::tampered(what, format!("manifest does not parse: {e}")))?;
        if m.format != 1 {
            return Err(Error::tampered(
                what,
                format!("unknown export format {}", m.format),
            ));
        }
        validate_id(&m.id).map_err(|e| Error::tampered(what, e.to_string()))?;
        Ok((m, signer))
    }
}

/// Which manifest signers are believed: the appliance's trusted signing keys, plus those the
/// operator names (a recovery kit's, `--trust-signer` with a full key, for exports of another
/// appliance).
#[derive(Debug, Clone, Default)]
pub struct SignerTrust {
    pub signers: Vec<[u8; 32]>,
}

impl SignerTrust {
    pub fn check(&self, signer: &[u8; 32], what: &str) -> Result<()> {
        require_trusted(signer, &self.signers, what)
    }
}

/// A new export id: creation time and 24 random bits.
pub fn new_id() -> String {
    let r: [u8; 3] = random();
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        hex::encode(r)
    )
}

/// Export ids become object keys: only letters, digits and '-' pass.
pub fn validate_id(id: &str) -> Result<()> {
    if !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "'{id}' is not an export id (like 20261123T101500Z-3fa2c1): `cairn export list` \
             shows them"
        )))
    }
}

/// An export sealed and signed, ready to be written to a file or uploaded.
pub struct Prepared {
    pub manifest: Manifest,
    manifest_bytes: Vec<u8>,
    key_object: Vec<u8>,
    header: Header,
    dek: [u8; 32],
}

fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let r = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io("export task", std::io::Error::other(e.to_string())))?
}

/// Creates `dest`'s temporary sibling with mode 0600, refusing an existing `dest`.
fn create_private(dest: &Path) -> Result<(std::path::PathBuf, File)> {
    if dest.exists() {
        return Err(Error::Refused(format!(
            "{} already exists: choose another name or remove it first",
            dest.display()
        )));
    }
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(Error::Refused(format!(
            "directory {} does not exist: create it first",
            dir.display()
        )));
    }
    let tmp = cairn_engine::fsutil::temp_path(dir);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
    Ok((tmp, f))
}

impl Protection {
    /// Seals the dump at `dump` as export `m` (its identity fields filled by the caller; sizes,
    /// hashes and key id are filled here). With `for_regions` the data key is recorded in the
    /// catalog, so that it follows key changes like a layer's.
    pub async fn prepare_export(
        &self,
        dump: &Path,
        mut m: Manifest,
        for_regions: bool,
    ) -> Result<Prepared> {
        validate_id(&m.id)?;
        let p = dump.to_path_buf();
        let (dump_sha, dump_bytes) = blocking(move || sha256_file(&p)).await?;
        let object_id: [u8; 32] = hex::decode(&dump_sha)
            .ok()
            .and_then(|v| v.try_into().ok())
            .expect("a SHA-256 in hex");
        let sealed_bytes = Opener::sealed_len(CHUNK_SIZE, dump_bytes);
        let (dek, key_id, key_object) = if for_regions {
            let (row, dek) = self
                .ensure_object_key(&m.object(), object_id, &m.cluster_id, sealed_bytes, None)
                .await?;
            let kid: [u8; 16] = hex::decode(&row.key_id)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| Error::tampered("catalog", "bad key id of an export"))?;
            (dek, kid, row.key_object)
        } else {
            let dek: [u8; 32] = random();
            let kid: [u8; 16] = random();
            let ko = KeyObject::wrap(&dek, object_id, kid, &self.recipients())?;
            (dek, kid, ko.encode())
        };
        let header = Header {
            kind: ObjectKind::Export,
            compression: Compression::None,
            chunk_size: CHUNK_SIZE,
            object_id,
            key_id,
        };
        let p = dump.to_path_buf();
        let (sealed_sha, n) = blocking(move || Self::seal_digest(&p, header, dek)).await?;
        if n != sealed_bytes {
            return Err(Error::io(
                format!("seal {}", dump.display()),
                std::io::Error::other("the dump changed while it was sealed"),
            ));
        }
        m.format = 1;
        m.dump_bytes = dump_bytes;
        m.dump_sha256 = dump_sha;
        m.sealed_bytes = sealed_bytes;
        m.sealed_sha256 = sealed_sha;
        m.key_id = hex::encode(key_id);
        let manifest_bytes = m.encode_signed(self.signer());
        Ok(Prepared {
            manifest: m,
            manifest_bytes,
            key_object,
            header,
            dek,
        })
    }

    /// Writes a prepared export to the file `dest` (which must not exist).
    pub async fn write_export_file(
        &self,
        prepared: &Prepared,
        dump: &Path,
        dest: &Path,
        progress: Option<Arc<Progress>>,
    ) -> Result<()> {
        let (tmp, f) = create_private(dest)?;
        let (dump, dest2, tmp2) = (dump.to_path_buf(), dest.to_path_buf(), tmp.clone());
        let (header, dek) = (prepared.header, prepared.dek);
        let mut head = Vec::new();
        head.extend_from_slice(FILE_MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(prepared.manifest_bytes.len() as u32).to_le_bytes());
        head.extend_from_slice(&prepared.manifest_bytes);
        head.extend_from_slice(&(prepared.key_object.len() as u32).to_le_bytes());
        head.extend_from_slice(&prepared.key_object);
        let expect = (
            prepared.manifest.sealed_bytes,
            prepared.manifest.sealed_sha256.clone(),
        );
        let r = blocking(move || {
            let what = format!("write {}", tmp2.display());
            let mut w = BufWriter::with_capacity(1 << 20, f);
            w.write_all(&head).map_err(|e| Error::io(&what, e))?;
            let mut r = SealedReader::open(&dump, header, dek)?;
            let mut h = Sha256::new();
            let mut n = 0u64;
            while let Some(part) = r.next_part(8 << 20)? {
                h.update(&part);
                n += part.len() as u64;
                w.write_all(&part).map_err(|e| Error::io(&what, e))?;
                if let Some(p) = &progress {
                    p.done.fetch_add(part.len() as u64, Ordering::Relaxed);
                }
            }
            if (n, hex::encode(h.finalize())) != expect {
                return Err(Error::io(
                    &what,
                    std::io::Error::other("the dump changed while it was written"),
                ));
            }
            let f = w
                .into_inner()
                .map_err(|e| Error::io(&what, e.into_error()))?;
            f.sync_all().map_err(|e| Error::io(&what, e))?;
            cairn_engine::fsutil::commit_new(&tmp2, &dest2)
                .map_err(|e| Error::io(format!("write {}", dest2.display()), e))
        })
        .await;
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    /// Uploads a prepared export to `region`: object, key object, then the manifest.
    pub async fn put_export(
        &self,
        region: &Region,
        prepared: &Prepared,
        dump: &Path,
    ) -> Result<()> {
        self.require_unfenced("write exports to the regions")?;
        let m = &prepared.manifest;
        let obj = keys::export(&m.cluster_id, &m.id);
        let sha = self
            .upload(
                region,
                &obj,
                dump,
                prepared.header,
                prepared.dek,
                m.sealed_bytes,
            )
            .await?;
        if sha != m.sealed_sha256 {
            return Err(Error::io(
                format!("upload {obj}"),
                std::io::Error::other("the dump changed while it was uploaded"),
            ));
        }
        self.put_key_object_of(region, &m.cluster_id, &m.object())
            .await?;
        region
            .put(
                &keys::export_manifest(&m.cluster_id, &m.id),
                Bytes::from(prepared.manifest_bytes.clone()),
            )
            .await?;
        let st = self.state();
        st.set_object_sha(&m.object(), &sha).await?;
        st.record_shipment(&m.object(), &region.name, &sha).await
    }
}

/// An export found in a region.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub region: String,
    pub manifest: Option<Manifest>,
    /// The manifest's object key.
    pub key: String,
    pub signer: Option<String>,
    /// Why the manifest cannot be believed, if it cannot.
    pub problem: Option<String>,
}

/// Every export manifest in `region`, verified against `trusted` (newest first).
pub async fn list_exports(region: &Region, trust: &SignerTrust) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    for (key, _) in region.list("clusters").await? {
        let parts: Vec<&str> = key.split('/').collect();
        let ["clusters", cluster, "exports", name] = parts.as_slice() else {
            continue;
        };
        let Some(id) = name.strip_suffix(".manifest") else {
            continue;
        };
        let what = format!("region '{}', {key}", region.name);
        let checked = match region.get_bounded(&key, MAX_SECTION as u64).await {
            Ok(b) => Manifest::decode_verified(&b, &what, trust).and_then(|(m, s)| {
                if m.id != id || m.cluster_id != *cluster {
                    Err(Error::tampered(
                        &what,
                        "names another export (moved or replayed)",
                    ))
                } else {
                    Ok((m, s))
                }
            }),
            Err(e) => Err(e),
        };
        out.push(match checked {
            Ok((m, s)) => Listed {
                region: region.name.clone(),
                manifest: Some(m),
                key,
                signer: Some(hex::encode(s)),
                problem: None,
            },
            Err(e) => Listed {
                region: region.name.clone(),
                manifest: None,
                key,
                signer: None,
                problem: Some(e.to_string()),
            },
        });
    }
    out.sort_by(|a, b| b.key.cmp(&a.key));
    Ok(out)
}

fn unwrap_key(
    key_object: &[u8],
    m: &Manifest,
    identities: &[&Identity],
    what: &str,
) -> Result<([u8; 32], KeyObject)> {
    let ko = KeyObject::decode(key_object, what)?;
    let dek = ko.unwrap(identities, what)?;
    if hex::encode(ko.object_id) != m.dump_sha256 || hex::encode(ko.key_id) != m.key_id {
        return Err(Error::tampered(
            what,
            "its key object belongs to another object",
        ));
    }
    Ok((dek, ko))
}

/// Decrypts export `id` from `region` into `dest` (a plain `pg_dump` archive).
pub async fn decrypt_from_region(
    region: &Region,
    id: &str,
    identities: &[&Identity],
    trust: &SignerTrust,
    dest: &Path,
    progress: Option<&AtomicU64>,
) -> Result<Manifest> {
    validate_id(id)?;
    let found = list_exports(region, trust)
        .await?
        .into_iter()
        .find(|l| l.key.ends_with(&format!("/exports/{id}.manifest")))
        .ok_or_else(|| {
            Error::Refused(format!(
                "region '{}' holds no export {id}: `cairn export list` shows those it holds",
                region.name
            ))
        })?;
    let m = match (found.manifest, found.problem) {
        (Some(m), _) => m,
        (None, p) => {
            return Err(Error::Refused(
                p.unwrap_or_else(|| "unreadable manifest".into()),
            ));
        }
    };
    let kk = keys::key(&m.cluster_id, &m.object());
    let what = format!("region '{}', {kk}", region.name);
    let (dek, ko) = unwrap_key(
        &region.get_bounded(&kk, MAX_KEY_OBJECT_BYTES).await?,
        &m,
        identities,
        &what,
    )?;
    if dest.exists() {
        return Err(Error::Refused(format!(
            "{} already exists: choose another name or remove it first",
            dest.display()
        )));
    }
    download(
        region,
        &keys::export(&m.cluster_id, &m.id),
        &dek,
        Expect {
            object_id: &ko.object_id,
            sealed: Some((m.sealed_bytes, &m.sealed_sha256)),
        },
        dest,
        progress,
    )
    .await?;
    Ok(m)
}

/// The parts of an export file.
pub struct ExportFile {
    pub manifest: Manifest,
    pub signer: [u8; 32],
    key_object: Vec<u8>,
    sealed_offset: u64,
}

/// Reads and checks an export file's manifest (signature and signer) and key object.
pub fn read_export_file(path: &Path, trust: &SignerTrust) -> Result<ExportFile> {
    let what = format!("export file {}", path.display());
    let mut f = File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    let len = f
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
        .len();
    let mut read = |n: usize| -> Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        f.read_exact(&mut b)
            .map_err(|_| Error::tampered(&what, "truncated (shorter than its sections)"))?;
        Ok(b)
    };
    let head = read(10)?;
    if &head[..8] != FILE_MAGIC {
        return Err(Error::tampered(
            &what,
            "not a cairn export file (bad magic): it may be a plain pg_dump archive already",
        ));
    }
    let v = u16::from_le_bytes([head[8], head[9]]);
    if v != VERSION {
        return Err(Error::tampered(
            &what,
            format!("export file version {v} is not one this cairn reads ({VERSION})"),
        ));
    }
    let mut section = || -> Result<Vec<u8>> {
        let n = u32::from_le_bytes(read(4)?.try_into().expect("4"));
        if n > MAX_SECTION {
            return Err(Error::tampered(
                &what,
                format!("implausible section of {n} bytes"),
            ));
        }
        read(n as usize)
    };
    let manifest_bytes = section()?;
    let key_object = section()?;
    let sealed_offset = 10 + 4 + manifest_bytes.len() as u64 + 4 + key_object.len() as u64;
    let (manifest, signer) = Manifest::decode_verified(&manifest_bytes, &what, trust)?;
    if len - sealed_offset != manifest.sealed_bytes {
        return Err(Error::tampered(
            &what,
            format!(
                "holds {} sealed bytes, its manifest says {} (truncated or extended)",
                len - sealed_offset,
                manifest.sealed_bytes
            ),
        ));
    }
    Ok(ExportFile {
        manifest,
        signer,
        key_object,
        sealed_offset,
    })
}

/// Decrypts the export file `path` into `dest` (a plain `pg_dump` archive), checking
/// everything the manifest promises.
pub fn decrypt_file(
    path: &Path,
    identities: &[&Identity],
    trust: &SignerTrust,
    dest: &Path,
    progress: Option<&AtomicU64>,
) -> Result<Manifest> {
    let ef = read_export_file(path, trust)?;
    let m = ef.manifest;
    let what = format!("export file {}", path.display());
    let (dek, ko) = unwrap_key(&ef.key_object, &m, identities, &what)?;
    let mut f = File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(ef.sealed_offset))
        .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    let mut f = std::io::BufReader::with_capacity(1 << 20, f);
    let mut sealed_hash = Sha256::new();
    let mut hb = [0u8; HEADER_LEN];
    f.read_exact(&mut hb)
        .map_err(|_| Error::tampered(&what, "truncated object header"))?;
    sealed_hash.update(hb);
    let header = Header::decode(&hb, &what)?;
    if header.kind != ObjectKind::Export || header.object_id != ko.object_id {
        return Err(Error::tampered(
            &what,
            "its sealed object is not the export its manifest names",
        ));
    }
    let layout = Layout::of(&header, m.sealed_bytes, &what)?;
    let opener = Opener::new(&dek, header, &what);
    let (tmp, out) = create_private(dest)?;
    let result = (|| -> Result<()> {
        let mut w = BufWriter::with_capacity(1 << 20, out);
        let mut plain_hash = Sha256::new();
        let sealed_chunk = layout.chunk_size as usize + crate::crypto::stream::TAG_LEN;
        let mut left = m.sealed_bytes - HEADER_LEN as u64;
        let mut buf = vec![0u8; sealed_chunk];
        for i in 0..layout.chunks {
            let n = (left as usize).min(sealed_chunk);
            f.read_exact(&mut buf[..n])
                .map_err(|e| Error::io(format!("read {}", path.display()), e))?;
            left -= n as u64;
            sealed_hash.update(&buf[..n]);
            let plain = opener.open(i, &mut buf[..n], i + 1 == layout.chunks)?;
            plain_hash.update(&buf[..plain]);
            w.write_all(&buf[..plain])
                .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
            if let Some(p) = progress {
                p.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        if hex::encode(plain_hash.finalize()) != m.dump_sha256 {
            return Err(Error::tampered(&what, "the dump does not hash to its id"));
        }
        if hex::encode(sealed_hash.finalize()) != m.sealed_sha256 {
            return Err(Error::tampered(
                &what,
                "sealed bytes differ from those the manifest records",
            ));
        }
        let out = w
            .into_inner()
            .map_err(|e| Error::io(format!("write {}", tmp.display()), e.into_error()))?;
        out.sync_all()
            .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
        cairn_engine::fsutil::commit_new(&tmp, dest)
            .map_err(|e| Error::io(format!("write {}", dest.display()), e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| m)
}
