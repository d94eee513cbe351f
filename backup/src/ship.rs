//! Shipping: sealed layers go to every region; indexes follow once layers are durable.
//!
//! For each layer the first shipment creates its data key (random, 256 bits) and key object
//! (wrapped for the keyring) and records both in the catalog; sealing is deterministic for a
//! given data key, so every region receives byte-identical objects and a region that was down
//! catches up later without any copy kept aside. A region upload is: look the object up (an
//! object of the expected size is already complete: object stores publish whole objects only),
//! else stream it up — one part in memory at a time, multipart above the part size — then the
//! key object, then the shipment row. Each region is shipped independently, so a slow or dead
//! region holds up only itself.
//!
//! An object counts as shipped only once read back from the region byte for byte; a local
//! layer is hashed while it is sealed and never shipped if it no longer hashes to its id. What
//! the regions then hold is published by [`crate::publish`].

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use object_store::PutPayload;
use sha2::{Digest, Sha256};

use cairn_engine::catalog::{now_us, ClusterRow, LayerRow};
use cairn_engine::ClusterId;

use crate::crypto::stream::{Compression, Header, ObjectKind, Opener, Sealer, CHUNK_SIZE};
use crate::error::{Error, Result};
use crate::protection::Protection;
use crate::region::{keys, Region};

/// Retries of one upload before the region is reported failing for this round.
const ATTEMPTS: u32 = 3;

impl Protection {
    /// The secrets of a cluster as shipped: JSON of its superuser, source and owner-role
    /// passwords. A
    /// secret that exists but cannot be read is an error (shipping `null` would lose it).
    fn secrets_body(&self, c: &ClusterRow) -> Result<Vec<u8>> {
        let home = &self.engine.home;
        let read = |what: &str| -> Result<Option<String>> {
            let p = home.root.join("secrets").join(format!("{}.{what}", c.id));
            match std::fs::read_to_string(&p) {
                Ok(s) => Ok(Some(s.trim().to_string())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
            }
        };
        Ok(serde_json::json!({
            "password": read("password")?,
            "source_password": read("source-password")?,
            "owner_password": read("owner-password")?,
        })
        .to_string()
        .into_bytes())
    }

    /// Ships a cluster's secrets (superuser and source passwords) to a region, sealed like any
    /// other object and named by its content, so that a region and a key are enough to log
    /// into restored computes. Changed secrets get a new data key.
    async fn ship_secrets(&self, region: &Region, c: &ClusterRow) -> Result<()> {
        let name = keys::secrets_object(&c.id.to_string());
        let body = self.secrets_body(c)?;
        let object_id: [u8; 32] = Sha256::digest(&body).into();
        let (key, dek) = self
            .ensure_object_key(
                &name,
                object_id,
                &c.id.to_string(),
                Opener::sealed_len(CHUNK_SIZE, body.len() as u64),
                None,
            )
            .await?;
        if key.object_sha256.is_some() && self.state().shipped_to(&name, &region.name).await? {
            return Ok(());
        }
        let header = Header {
            kind: ObjectKind::Secrets,
            compression: Compression::None,
            chunk_size: CHUNK_SIZE,
            object_id,
            key_id: hex::decode(&key.key_id)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| Error::tampered("catalog", format!("bad key id of {name}")))?,
        };
        let sealed = crate::crypto::stream::seal_all(&dek, &header, &body);
        let sha = hex::encode(Sha256::digest(&sealed));
        let cid = c.id.to_string();
        let size = sealed.len() as u64;
        region
            .put(&keys::secrets(&cid), Bytes::from(sealed))
            .await?;
        region
            .verify_stored(&keys::secrets(&cid), size, &sha)
            .await?;
        self.put_key_object_of(region, &cid, &name).await?;
        let st = self.state();
        st.set_object_sha(&name, &sha).await?;
        st.record_shipment(&name, &region.name, &sha).await
    }

    /// Puts the current key object of every export this region holds but whose shipment was
    /// forgotten (a keyring change could not reach the region): otherwise its old key object,
    /// wrapped for a removed recipient, would stay there.
    async fn restore_export_keys(
        &self,
        region: &Region,
        shredding: &HashSet<ClusterId>,
    ) -> Result<()> {
        let st = self.state();
        for k in st.object_keys().await? {
            let Some(id) = k.object.strip_prefix("export-") else {
                continue;
            };
            if k.key_object == b"shredded"
                || shredding.iter().any(|c| c.to_string() == k.cluster_id)
                || st.shipped_to(&k.object, &region.name).await?
            {
                continue;
            }
            let Some(sha) = k.object_sha256.clone() else {
                continue;
            };
            if region
                .head(&keys::export_manifest(&k.cluster_id, id))
                .await?
                .is_none()
            {
                continue;
            }
            self.put_key_object_of(region, &k.cluster_id, &k.object)
                .await?;
            st.record_shipment(&k.object, &region.name, &sha).await?;
        }
        Ok(())
    }

    /// Layers of `filter` (or every cluster) not yet shipped to `region`, oldest first.
    async fn pending(&self, region: &str, filter: Option<ClusterId>) -> Result<Vec<LayerRow>> {
        let shipped: HashSet<String> = self
            .state()
            .shipments()
            .await?
            .into_iter()
            .filter(|(_, r, _)| r == region)
            .map(|(l, _, _)| l)
            .collect();
        let mut out = Vec::new();
        for c in self.engine.catalog.clusters().await? {
            if filter.is_some_and(|f| f != c.id) {
                continue;
            }
            let scratch = self.scratch_timelines(&c).await?;
            let mut layers = self.engine.catalog.layers(c.id).await?;
            layers.retain(|l| {
                !shipped.contains(&l.id.to_string()) && !scratch.contains(&l.timeline_id)
            });
            out.extend(layers);
        }
        out.sort_by_key(|l| l.created_at_us);
        Ok(out)
    }

    /// Seals a layer file (or computes what sealing produces) and returns (sha256, size).
    pub(crate) fn seal_digest(
        path: &std::path::Path,
        header: Header,
        dek: [u8; 32],
    ) -> Result<(String, u64)> {
        let mut r = SealedReader::open(path, header, dek)?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(part) = r.next_part(8 << 20)? {
            h.update(&part);
            n += part.len() as u64;
        }
        Ok((hex::encode(h.finalize()), n))
    }

    /// Ships one layer, whose file is at `path`, to one region (object, then key object, then
    /// the shipment row).
    async fn ship_layer(
        &self,
        region: &Region,
        layer: &LayerRow,
        path: &std::path::Path,
    ) -> Result<u64> {
        let (key, dek) = self.ensure_key(layer, path).await?;
        let cluster = layer.cluster_id.to_string();
        let name = layer.id.to_string();
        let obj_key = keys::layer(&cluster, &name);
        let header = Header {
            kind: ObjectKind::Layer,
            compression: Compression::None,
            chunk_size: CHUNK_SIZE,
            object_id: layer.id.0,
            key_id: hex::decode(&key.key_id)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| Error::tampered("catalog", format!("bad key id of {name}")))?,
        };
        let expected = key.object_size;
        // An object already there (an interrupted run, another appliance) counts only once its
        // bytes are proven to be the ones this appliance seals; otherwise it is replaced.
        let present = match (region.head(&obj_key).await?, &key.object_sha256) {
            (Some(size), Some(sha)) if size == expected => {
                match region.verify_stored(&obj_key, expected, sha).await {
                    Ok(()) => Some(sha.clone()),
                    Err(e) if e.retryable() => return Err(e),
                    Err(e) => {
                        tracing::warn!(region = %region.name, error = %e, "replacing a bad copy");
                        None
                    }
                }
            }
            _ => None,
        };
        let sha = match present {
            Some(sha) => sha,
            None => {
                let sha = self
                    .upload(region, &obj_key, path, header, dek, expected)
                    .await?;
                if let Some(recorded) = &key.object_sha256 {
                    if *recorded != sha {
                        return Err(Error::tampered(
                            format!("local layer {}", path.display()),
                            "sealed to other bytes than for an earlier region: the file \
                             changed on disk; run `cairn check --full`",
                        ));
                    }
                }
                region.verify_stored(&obj_key, expected, &sha).await?;
                sha
            }
        };
        cairn_engine::failpoint::hit("ship-before-key-object");
        self.put_key_object_of(region, &cluster, &name).await?;
        let st = self.state();
        st.set_object_sha(&name, &sha).await?;
        st.record_shipment(&name, &region.name, &sha).await?;
        Ok(expected)
    }

    /// The catalog row of layer `id`, when this appliance still has its file.
    pub(crate) async fn local_layer(&self, id: &str) -> Result<Option<LayerRow>> {
        for c in self.engine.catalog.clusters().await? {
            if let Some(l) = self
                .engine
                .catalog
                .layers(c.id)
                .await?
                .into_iter()
                .find(|l| l.id.to_string() == id)
            {
                return Ok(self.engine.layer_path(&l).exists().then_some(l));
            }
        }
        Ok(None)
    }

    /// Ships a layer to `region` again (repair): the copy there is replaced by a proven one.
    pub(crate) async fn ship_layer_again(&self, region: &Region, layer: &LayerRow) -> Result<()> {
        self.require_unfenced("repair the regions")?;
        self.state()
            .forget_shipment(&layer.id.to_string(), &region.name)
            .await?;
        self.ship_layer(region, layer, &self.engine.layer_path(layer))
            .await
            .map(|_| ())
    }

    /// Ships one layer to one region, trying again after an error worth retrying.
    async fn ship_layer_retrying(
        &self,
        region: &Region,
        layer: &LayerRow,
        path: &std::path::Path,
    ) -> Result<u64> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.ship_layer(region, layer, path).await {
                Err(e) if e.retryable() && attempt < ATTEMPTS => {
                    tracing::debug!(region = %region.name, error = %e, attempt, "retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
                r => return r,
            }
        }
    }

    /// Ships a layer the catalog does not name yet (a merged WAL layer that compaction
    /// staged, its file at `path`) to every region at once, and records the shipments: once
    /// the catalog names the layer it is durable everywhere from the start, so nothing that
    /// was durable stops being so. Any region failing is an error (and the layer must not go
    /// into the catalog); copies already made are then removed by the deletion queue, as the
    /// catalog never names them.
    pub async fn ship_staged(&self, layer: &LayerRow, path: &std::path::Path) -> Result<()> {
        self.require_unfenced("ship to the regions")?;
        let futs = self
            .regions
            .regions
            .iter()
            .map(|r| self.ship_layer_retrying(r, layer, path));
        for r in futures::future::join_all(futs).await {
            r?;
        }
        Ok(())
    }

    pub(crate) async fn upload(
        &self,
        region: &Region,
        obj_key: &str,
        path: &std::path::Path,
        header: Header,
        dek: [u8; 32],
        expected: u64,
    ) -> Result<String> {
        let part_size = self.regions.part_size as usize;
        let p = path.to_path_buf();
        let mut reader = tokio::task::spawn_blocking(move || SealedReader::open(&p, header, dek))
            .await
            .map_err(|e| Error::io("seal", std::io::Error::other(e.to_string())))??;
        let next = |mut r: SealedReader| async move {
            tokio::task::spawn_blocking(move || {
                let part = r.next_part(part_size);
                (r, part)
            })
            .await
            .map_err(|e| Error::io("seal", std::io::Error::other(e.to_string())))
        };
        let mut hasher = Sha256::new();
        let mut sent = 0u64;
        let object_id = header.object_id;
        let damaged = |path: &std::path::Path| {
            Error::tampered(
                format!("local file {}", path.display()),
                "does not hash to its id (damaged on disk): not shipped; run `cairn check --full`",
            )
        };
        if expected <= part_size as u64 {
            let (r, part) = next(reader).await?;
            let part = part?.unwrap_or_default();
            if r.plain_digest() != Some(object_id) {
                return Err(damaged(path));
            }
            hasher.update(&part);
            sent += part.len() as u64;
            region.put(obj_key, Bytes::from(part)).await?;
            self.update(&region.name, |s| s.shipped_bytes += sent);
        } else {
            let mut up = region.put_multipart(obj_key).await?;
            loop {
                let (r, part) = next(reader).await?;
                reader = r;
                let part = match part {
                    Ok(Some(p)) => p,
                    Ok(None) => {
                        if reader.plain_digest() != Some(object_id) {
                            let _ = up.abort().await;
                            return Err(damaged(path));
                        }
                        break;
                    }
                    Err(e) => {
                        let _ = up.abort().await;
                        return Err(e);
                    }
                };
                hasher.update(&part);
                sent += part.len() as u64;
                let n = part.len() as u64;
                if let Err(e) = up.put_part(PutPayload::from(part)).await {
                    let _ = up.abort().await;
                    return Err(Error::region(
                        &region.name,
                        format!("upload part of {obj_key}"),
                        e,
                    ));
                }
                self.update(&region.name, |s| s.shipped_bytes += n);
                cairn_engine::failpoint::hit("ship-mid-upload");
            }
            if let Err(e) = up.complete().await {
                let _ = up.abort().await;
                return Err(Error::region(
                    &region.name,
                    format!("complete {obj_key}"),
                    e,
                ));
            }
            region.sync(obj_key)?;
        }
        if sent != expected {
            return Err(Error::io(
                format!("seal {}", path.display()),
                std::io::Error::other(format!(
                    "sealed {sent} bytes, expected {expected} (the layer file changed?)"
                )),
            ));
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// Ships every pending layer to `region` and rewrites its indexes. Errors are recorded in
    /// the region's status and returned.
    pub async fn ship_region(&self, region: &Region, filter: Option<ClusterId>) -> Result<usize> {
        let r = self.ship_region_inner(region, filter).await;
        match &r {
            Ok(_) => self.update(&region.name, |s| {
                s.last_success_at_us = Some(now_us());
                s.last_error = None;
                s.current = None;
            }),
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(region = %region.name, error = %msg, "shipping failed");
                self.update(&region.name, |s| {
                    s.last_error = Some(msg);
                    s.last_error_at_us = Some(now_us());
                    s.current = None;
                })
            }
        }
        r
    }

    async fn ship_region_inner(&self, region: &Region, filter: Option<ClusterId>) -> Result<usize> {
        self.require_unfenced("ship to the regions")?;
        self.refresh()?;
        let mut shredding = HashSet::new();
        for c in self.engine.catalog.clusters().await? {
            if self.shred_due(&c.id.to_string()).await? {
                shredding.insert(c.id);
                continue;
            }
            if filter.is_none_or(|f| f == c.id) {
                self.ship_secrets(region, &c).await?;
            }
        }
        self.restore_export_keys(region, &shredding).await?;
        let mut pending = self.pending(&region.name, filter).await?;
        pending.retain(|l| !shredding.contains(&l.cluster_id));
        self.update(&region.name, |s| {
            s.pending_objects = pending.len() as u64;
            s.pending_bytes = pending.iter().map(|l| l.file_size).sum();
        });
        let mut shipped = 0;
        for layer in &pending {
            self.update(&region.name, |s| s.current = Some(layer.id.to_string()));
            self.ship_layer_retrying(region, layer, &self.engine.layer_path(layer))
                .await?;
            shipped += 1;
            self.update(&region.name, |s| {
                s.pending_objects = s.pending_objects.saturating_sub(1);
                s.pending_bytes = s.pending_bytes.saturating_sub(layer.file_size);
            });
        }
        self.write_indexes(region, filter).await?;
        Ok(shipped)
    }

    /// Ships to every region at once; returns each region's outcome.
    pub async fn ship_all(&self, filter: Option<ClusterId>) -> Vec<(String, Result<usize>)> {
        let futs = self
            .regions
            .regions
            .iter()
            .map(|r| async move { (r.name.clone(), self.ship_region(r, filter).await) });
        let mut results = futures::future::join_all(futs).await;
        // A region that finished first wrote its indexes before the others made its layers
        // durable in min_copies regions: now they are, so its indexes can name them.
        for (r, (name, res)) in self.regions.regions.iter().zip(results.iter_mut()) {
            debug_assert_eq!(&r.name, name);
            if res.is_ok() {
                if let Err(e) = self.write_indexes(r, filter).await {
                    *res = Err(e);
                }
            }
        }
        results
    }

    /// Timelines of an export's scratch branches: never shipped or indexed.
    pub(crate) async fn scratch_timelines(
        &self,
        c: &ClusterRow,
    ) -> Result<HashSet<cairn_engine::TimelineId>> {
        Ok(self
            .engine
            .catalog
            .branches(c.id)
            .await?
            .into_iter()
            .filter(|b| b.name.starts_with(cairn_engine::branch::SCRATCH_PREFIX))
            .map(|b| b.timeline_id)
            .collect())
    }

    /// (object -> regions holding it) from the catalog.
    pub async fn copies(&self) -> Result<HashMap<String, HashSet<String>>> {
        let mut m: HashMap<String, HashSet<String>> = HashMap::new();
        for (l, r, _) in self.state().shipments().await? {
            m.entry(l).or_default().insert(r);
        }
        Ok(m)
    }
}

/// Reads a layer file and yields its sealed form part by part, hashing the plaintext on the
/// way (so that a file damaged on disk is never shipped as if it were its id).
pub struct SealedReader {
    file: File,
    sealer: Sealer,
    header_sent: bool,
    chunk_size: usize,
    remaining: u64,
    finished: bool,
    plain: Sha256,
}

impl SealedReader {
    pub fn open(path: &std::path::Path, header: Header, dek: [u8; 32]) -> Result<SealedReader> {
        let file =
            File::open(path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let remaining = file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
            .len();
        Ok(SealedReader {
            file,
            sealer: Sealer::new(&dek, &header),
            header_sent: false,
            chunk_size: header.chunk_size as usize,
            remaining,
            finished: false,
            plain: Sha256::new(),
        })
    }

    /// The SHA-256 of the plaintext, once every part was read.
    pub fn plain_digest(&self) -> Option<[u8; 32]> {
        self.finished.then(|| self.plain.clone().finalize().into())
    }

    /// The next part of about `max` bytes (whole chunks), or `None` at the end.
    pub fn next_part(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        if self.finished {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(max + self.chunk_size + 64);
        if !self.header_sent {
            out.extend_from_slice(self.sealer.header());
            self.header_sent = true;
        }
        while out.len() < max && !self.finished {
            let n = (self.remaining as usize).min(self.chunk_size);
            let mut chunk = vec![0u8; n];
            self.file
                .read_exact(&mut chunk)
                .map_err(|e| Error::io("read a layer file", e))?;
            self.remaining -= n as u64;
            let last = self.remaining == 0;
            self.plain.update(&chunk);
            self.sealer.seal(&mut chunk, last);
            out.extend_from_slice(&chunk);
            self.finished = last;
        }
        Ok(Some(out))
    }
}
