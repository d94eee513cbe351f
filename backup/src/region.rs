//! Regions: named object-store targets, read from `HOME/regions.toml`.
//!
//! ```toml
//! min_copies = 2            # an index is written once its layers are in this many regions
//! part_size = "8MiB"        # multipart part size for large objects
//!
//! [[region]]
//! name = "region-a"
//! url = "file:///var/lib/cairn/region-a"
//!
//! [[region]]
//! name = "s3-eu"
//! url = "s3://cairn-backups/prod"      # also file:///path; gs:// and az:// untested
//! endpoint = "http://127.0.0.1:3900"   # S3-compatible servers
//! s3_region = "garage"
//! credentials_file = "/etc/cairn/s3-eu.env"   # AWS_ACCESS_KEY_ID=... lines, mode 0600;
//! allow_http = true                            # without it: AWS_* from the environment
//! tags = { jurisdiction = "eu" }
//! ```
//!
//! The embedded default is two `file://` regions inside the data directory. Object keys are
//! built from ids and fixed words only, and are checked against traversal.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};

use crate::error::{Error, Result};

/// Everything Cairn writes to a region lives below this prefix.
pub const ROOT: &str = "cairn/v1";

mod config;
pub use config::{parse_duration, parse_size, RegionConfig, RegionsConfig};

/// A connected region.
#[derive(Clone)]
pub struct Region {
    pub name: String,
    pub url: String,
    pub tags: BTreeMap<String, String>,
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// For `file://` regions: the directory, so that writes can be made durable (the object
    /// store writes and renames but never fsyncs).
    local_root: Option<PathBuf>,
}

/// Bytes read per request when a stored object is read back to be proven.
const VERIFY_READ: u64 = 8 << 20;

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Region({} at {})", self.name, self.url)
    }
}

fn read_credentials(path: &Path) -> Result<BTreeMap<String, String>> {
    let md = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("read credentials file {}", path.display()), e))?;
    if md.permissions().mode() & 0o077 != 0 {
        return Err(Error::Refused(format!(
            "credentials file {} is readable by others; run chmod 600 {}",
            path.display(),
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("read credentials file {}", path.display()), e))?;
    Ok(text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect())
}

fn split_bucket(rest: &str) -> (String, String) {
    match rest.split_once('/') {
        Some((b, p)) => (b.to_string(), p.trim_matches('/').to_string()),
        None => (rest.to_string(), String::new()),
    }
}

impl Region {
    pub fn connect(c: &RegionConfig) -> Result<Region> {
        let client = ClientOptions::new()
            .with_timeout(Duration::from_secs(120))
            .with_connect_timeout(Duration::from_secs(5))
            .with_allow_http(c.allow_http);
        // Our own loop retries with backoff and reports; keep the store's retries short.
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(20),
            ..RetryConfig::default()
        };
        let cfg_err = |e: object_store::Error| Error::region(&c.name, "configure", e);
        let mut local_root = None;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = if let Some(path) =
            c.url.strip_prefix("file://")
        {
            // A region is not needed to start: one whose directory cannot be made now (a
            // file in its place, a mount gone) is opened anyway, and its shipments fail and
            // are reported like any outage. Only a path that does not exist is refused.
            if let Err(e) = cairn_engine::fsutil::create_dir_mode(Path::new(path), 0o700) {
                if !Path::new(path).exists() {
                    return Err(Error::io(format!("region '{}': create {path}", c.name), e));
                }
                tracing::warn!(region = %c.name, error = %e, "region directory {path} is unusable");
            }
            local_root = Some(PathBuf::from(path));
            let fs =
                object_store::local::LocalFileSystem::new_with_prefix(path).map_err(cfg_err)?;
            (Arc::new(fs), String::new())
        } else if let Some(rest) = c.url.strip_prefix("s3://") {
            let (bucket, prefix) = split_bucket(rest);
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_client_options(client)
                .with_retry(retry);
            if let Some(r) = &c.s3_region {
                b = b.with_region(r);
            }
            if let Some(e) = &c.endpoint {
                // S3-compatible servers are addressed by path, not by virtual host.
                b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
            }
            if let Some(f) = &c.credentials_file {
                let creds = read_credentials(f)?;
                if let Some(k) = creds.get("AWS_ACCESS_KEY_ID") {
                    b = b.with_access_key_id(k);
                }
                if let Some(k) = creds.get("AWS_SECRET_ACCESS_KEY") {
                    b = b.with_secret_access_key(k);
                }
            }
            (Arc::new(b.build().map_err(cfg_err)?), prefix)
        } else if let Some(rest) = c.url.strip_prefix("gs://") {
            let (bucket, prefix) = split_bucket(rest);
            let b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_client_options(client)
                .with_retry(retry);
            (Arc::new(b.build().map_err(cfg_err)?), prefix)
        } else if let Some(rest) = c.url.strip_prefix("az://") {
            let (container, prefix) = split_bucket(rest);
            let b = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(container)
                .with_client_options(client)
                .with_retry(retry);
            (Arc::new(b.build().map_err(cfg_err)?), prefix)
        } else {
            return Err(Error::Refused(format!(
                "region '{}': unsupported url '{}'",
                c.name, c.url
            )));
        };
        Ok(Region {
            name: c.name.clone(),
            url: c.url.clone(),
            tags: c.tags.clone(),
            store,
            prefix,
            local_root,
        })
    }

    /// Makes a written object of a `file://` region durable: fsyncs the file and every
    /// directory from it up to the region's root (new directories included). A no-op for
    /// object stores, which acknowledge only what they stored.
    pub fn sync(&self, key: &str) -> Result<()> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let rel = self.path(key)?.to_string();
        let file = root.join(&rel);
        let err = |e| Error::io(format!("region '{}': make {key} durable", self.name), e);
        std::fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .map_err(err)?;
        let mut dir = file.parent();
        while let Some(d) = dir {
            cairn_engine::fsutil::fsync_dir(d).map_err(err)?;
            if d == root.as_path() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }

    /// Reads an object back and proves it is `size` bytes hashing to `sha256` (hex): an
    /// object counts as stored only then. Streams with bounded memory.
    pub async fn verify_stored(&self, key: &str, size: u64, sha256: &str) -> Result<()> {
        use sha2::{Digest, Sha256};
        let what = format!("region '{}', {key}", self.name);
        let found = self
            .head(key)
            .await?
            .ok_or_else(|| Error::tampered(&what, "missing right after it was written"))?;
        if found != size {
            return Err(Error::tampered(
                &what,
                format!(
                    "holds {found} bytes right after {size} were written: the region does not \
                     keep what it acknowledges"
                ),
            ));
        }
        let mut h = Sha256::new();
        let mut at = 0u64;
        while at < size {
            let to = (at + VERIFY_READ).min(size);
            let b = self.get_range(key, at, to).await?;
            if b.len() as u64 != to - at {
                return Err(Error::tampered(&what, "a read returned a short range"));
            }
            h.update(&b);
            at = to;
        }
        let got = hex::encode(h.finalize());
        if got != sha256 {
            return Err(Error::tampered(
                &what,
                format!(
                    "stored bytes hash to {} but {} were written: the region does not keep \
                     what it acknowledges",
                    &got[..16],
                    &sha256[..16.min(sha256.len())]
                ),
            ));
        }
        Ok(())
    }

    /// Copies object `key` of `src` into this region, streaming `part` bytes at a time
    /// (multipart above one part), and commits it only if what was read hashes to `sha256`
    /// (hex) and is `size` bytes; then reads the copy back. A bad source aborts the upload: the
    /// object already here is never replaced by anything unproven, and nothing is deleted.
    pub async fn copy_from(
        &self,
        src: &Region,
        key: &str,
        size: u64,
        sha256: &str,
        part: u64,
    ) -> Result<()> {
        use sha2::{Digest, Sha256};
        let what = format!("region '{}', {key}", src.name);
        let what = what.as_str();
        let mut h = Sha256::new();
        let read = |at: u64| async move {
            let to = (at + part).min(size);
            let b = src.get_range(key, at, to).await?;
            if b.len() as u64 != to - at {
                return Err(Error::tampered(what, "a read returned a short range"));
            }
            Ok::<Bytes, Error>(b)
        };
        let mismatch = |got: String| {
            Error::tampered(
                format!("region '{}', {key}", src.name),
                format!(
                    "hashes to {} instead of the recorded {}: not a good copy",
                    &got[..16],
                    &sha256[..16.min(sha256.len())]
                ),
            )
        };
        if src.head(key).await? != Some(size) {
            return Err(Error::tampered(
                format!("region '{}', {key}", src.name),
                format!("is not the recorded {size} bytes: not a good copy"),
            ));
        }
        if size <= part {
            let b = if size == 0 {
                Bytes::new()
            } else {
                read(0).await?
            };
            h.update(&b);
            let got = hex::encode(h.finalize());
            if got != sha256 {
                return Err(mismatch(got));
            }
            self.put(key, b).await?;
        } else {
            let mut up = self.put_multipart(key).await?;
            let mut at = 0;
            while at < size {
                let b = match read(at).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = up.abort().await;
                        return Err(e);
                    }
                };
                h.update(&b);
                at += b.len() as u64;
                if let Err(e) = up.put_part(PutPayload::from(b)).await {
                    let _ = up.abort().await;
                    return Err(Error::region(
                        &self.name,
                        format!("upload part of {key}"),
                        e,
                    ));
                }
            }
            let got = hex::encode(h.finalize());
            if got != sha256 {
                let _ = up.abort().await;
                return Err(mismatch(got));
            }
            up.complete()
                .await
                .map_err(|e| Error::region(&self.name, format!("complete {key}"), e))?;
            self.sync(key)?;
        }
        self.verify_stored(key, size, sha256).await
    }

    /// Writes a small object and reads it back: it counts as written only if the region
    /// returns exactly these bytes.
    pub async fn put_verified(&self, key: &str, data: Bytes) -> Result<()> {
        use sha2::{Digest, Sha256};
        let sha = hex::encode(Sha256::digest(&data));
        let size = data.len() as u64;
        self.put(key, data).await?;
        self.verify_stored(key, size, &sha).await
    }

    /// The store path of a key relative to Cairn's root in this region.
    pub fn path(&self, key: &str) -> Result<ObjPath> {
        if key.is_empty()
            || key.starts_with('/')
            || key
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(Error::Refused(format!("invalid object key '{key}'")));
        }
        let full = if self.prefix.is_empty() {
            format!("{ROOT}/{key}")
        } else {
            format!("{}/{ROOT}/{key}", self.prefix)
        };
        ObjPath::parse(&full).map_err(|e| {
            Error::region(
                &self.name,
                format!("object key {key}"),
                object_store::Error::from(e),
            )
        })
    }

    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        self.store
            .put(&self.path(key)?, PutPayload::from(data))
            .await
            .map(|_| ())
            .map_err(|e| Error::region(&self.name, format!("write {key}"), e))?;
        self.sync(key)
    }

    /// Starts a multipart upload (for objects larger than a part).
    pub async fn put_multipart(&self, key: &str) -> Result<Box<dyn object_store::MultipartUpload>> {
        self.store
            .put_multipart(&self.path(key)?)
            .await
            .map_err(|e| Error::region(&self.name, format!("start upload of {key}"), e))
    }

    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let r = self
            .store
            .get(&self.path(key)?)
            .await
            .map_err(|e| Error::region(&self.name, format!("read {key}"), e))?;
        r.bytes()
            .await
            .map_err(|e| Error::region(&self.name, format!("read {key}"), e))
    }

    /// Reads a whole object of at most `max` bytes. Its size is looked up first, so an
    /// oversized object planted in a region is refused before any of it is read, and the
    /// read asks for exactly that many bytes, so a server cannot send more.
    pub async fn get_bounded(&self, key: &str, max: u64) -> Result<Bytes> {
        let what = format!("region '{}', {key}", self.name);
        let size = self
            .head(key)
            .await?
            .ok_or_else(|| Error::tampered(&what, "missing"))?;
        if size > max {
            return Err(Error::tampered(
                &what,
                format!("is {size} bytes, more than such an object can be ({max}): not read"),
            ));
        }
        if size == 0 {
            return Ok(Bytes::new());
        }
        let b = self.get_range(key, 0, size).await?;
        if b.len() as u64 != size {
            return Err(Error::tampered(&what, "a read returned a short range"));
        }
        Ok(b)
    }

    /// Reads `[start, end)` of an object.
    pub async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        self.store
            .get_range(&self.path(key)?, start..end)
            .await
            .map_err(|e| Error::region(&self.name, format!("read {key}"), e))
    }

    /// Size of an object, or `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<u64>> {
        match self.store.head(&self.path(key)?).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::region(&self.name, format!("look up {key}"), e)),
        }
    }

    /// The object's entity tag as the store reports it, or `None` when it does not exist. On
    /// S3 an object written by a multipart upload has the form `"<md5>-<parts>"`.
    pub async fn etag(&self, key: &str) -> Result<Option<String>> {
        match self.store.head(&self.path(key)?).await {
            Ok(m) => Ok(m.e_tag),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::region(&self.name, format!("look up {key}"), e)),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::region(&self.name, format!("delete {key}"), e)),
        }
    }

    /// Keys (relative to Cairn's root) below `prefix`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let root = self.path(prefix)?;
        let strip = if self.prefix.is_empty() {
            format!("{ROOT}/")
        } else {
            format!("{}/{ROOT}/", self.prefix)
        };
        let items: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&root))
            .try_collect()
            .await
            .map_err(|e| Error::region(&self.name, format!("list {prefix}"), e))?;
        Ok(items
            .into_iter()
            .filter_map(|m| {
                let k = m.location.to_string();
                k.strip_prefix(&strip).map(|s| (s.to_string(), m.size))
            })
            .collect())
    }
}

/// The configured regions, connected.
#[derive(Clone, Debug)]
pub struct RegionSet {
    pub regions: Vec<Region>,
    pub min_copies: u32,
    pub part_size: u64,
    pub deletion_delay: Duration,
}

impl RegionSet {
    pub fn open(home: &Path) -> Result<RegionSet> {
        let c = RegionsConfig::load_or_init(home)?;
        let regions = c
            .regions
            .iter()
            .map(Region::connect)
            .collect::<Result<Vec<_>>>()?;
        Ok(RegionSet {
            regions,
            min_copies: c.min_copies,
            part_size: c.part_size(),
            deletion_delay: c.deletion_delay(),
        })
    }

    pub fn get(&self, name: &str) -> Result<&Region> {
        self.regions.iter().find(|r| r.name == name).ok_or_else(|| {
            Error::Refused(format!(
                "region '{name}' is not configured; regions: {}",
                self.regions
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.regions.iter().map(|r| r.name.clone()).collect()
    }
}

/// Object keys, all relative to [`ROOT`].
pub mod keys {
    pub fn layer(cluster: &str, layer: &str) -> String {
        format!("clusters/{cluster}/layers/{layer}")
    }
    pub fn key(cluster: &str, layer: &str) -> String {
        format!("clusters/{cluster}/keys/{layer}")
    }
    pub fn timeline_prefix(cluster: &str, timeline: &str) -> String {
        format!("clusters/{cluster}/timelines/{timeline}")
    }
    /// Catalog name of a cluster's secrets object (its data key and shipments).
    pub fn secrets_object(cluster: &str) -> String {
        format!("secrets-{cluster}")
    }
    pub fn secrets(cluster: &str) -> String {
        format!("clusters/{cluster}/secrets")
    }
    pub fn secrets_key(cluster: &str) -> String {
        format!("clusters/{cluster}/keys/secrets")
    }
    pub fn export(cluster: &str, id: &str) -> String {
        format!("clusters/{cluster}/exports/{id}")
    }
    pub fn export_manifest(cluster: &str, id: &str) -> String {
        format!("clusters/{cluster}/exports/{id}.manifest")
    }

    /// Catalog name of an export's data key and shipments.
    pub fn export_object(id: &str) -> String {
        format!("export-{id}")
    }

    /// Every region object of catalog object `object` of `cluster`: payload, key object, and
    /// for an export its manifest. Catalog objects are layer ids, `secrets-CLUSTER` and
    /// `export-ID`.
    pub fn objects_of(cluster: &str, object: &str) -> Vec<String> {
        if object.starts_with("secrets-") {
            vec![secrets(cluster), secrets_key(cluster)]
        } else if let Some(id) = object.strip_prefix("export-") {
            vec![
                export(cluster, id),
                key(cluster, object),
                export_manifest(cluster, id),
            ]
        } else {
            vec![layer(cluster, object), key(cluster, object)]
        }
    }

    /// The payload object of catalog object `object` (see [`objects_of`]).
    pub fn payload_of(cluster: &str, object: &str) -> String {
        objects_of(cluster, object).swap_remove(0)
    }

    /// The key object of catalog object `object` (see [`objects_of`]).
    pub fn key_of(cluster: &str, object: &str) -> String {
        objects_of(cluster, object).swap_remove(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let c = RegionsConfig::load_or_init(dir.path()).unwrap();
        assert_eq!(c.regions.len(), 2);
        assert_eq!(c.min_copies, 2);
        let p = RegionsConfig::path(dir.path());
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::write(
            &p,
            "min_copies = 3\n[[region]]\nname = \"a\"\nurl = \"file:///tmp/x\"\n",
        )
        .unwrap();
        let e = RegionsConfig::load_or_init(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("regions.toml") && e.contains("min_copies = 3"),
            "{e}"
        );
        std::fs::write(&p, "[[region]]\nname = \"a\"\nurl = \"ftp://x\"\n").unwrap();
        let e = RegionsConfig::load_or_init(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("ftp://x"), "{e}");
        std::fs::write(&p, "[[region]]\nnam = \"a\"\n").unwrap();
        let e = RegionsConfig::load_or_init(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("regions.toml") && e.contains("nam"), "{e}");
        // A deletion delay that would overflow microseconds is refused, never wrapped into
        // the past (the parsing itself is tested in cairn-units).
        std::fs::write(
            &p,
            "min_copies = 1\ndeletion_delay = \"999999999d\"\n[[region]]\nname = \"a\"\nurl = \"file:///tmp/a\"\n",
        )
        .unwrap();
        let e = RegionsConfig::load_or_init(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("deletion_delay") && e.contains("100 years"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn file_regions_store_list_and_refuse_traversal() {
        let dir = tempfile::tempdir().unwrap();
        let set = RegionSet::open(dir.path()).unwrap();
        let r = &set.regions[0];
        r.put("clusters/c/layers/l1", Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert_eq!(r.head("clusters/c/layers/l1").await.unwrap(), Some(3));
        assert_eq!(r.head("clusters/c/layers/nope").await.unwrap(), None);
        assert_eq!(&r.get("clusters/c/layers/l1").await.unwrap()[..], b"abc");
        assert_eq!(
            &r.get_range("clusters/c/layers/l1", 1, 3).await.unwrap()[..],
            b"bc"
        );
        let l = r.list("clusters/c").await.unwrap();
        assert_eq!(l, vec![("clusters/c/layers/l1".to_string(), 3)]);
        assert!(r.path("../etc/passwd").is_err());
        assert!(r.path("a//b").is_err());
        r.delete("clusters/c/layers/l1").await.unwrap();
        r.delete("clusters/c/layers/l1").await.unwrap();
        assert_eq!(r.head("clusters/c/layers/l1").await.unwrap(), None);
    }
}
