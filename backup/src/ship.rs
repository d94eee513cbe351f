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
//! A timeline's index in a region names exactly the layers that are durable there *and* in
//! `min_copies` regions (an image only together with the layers its pieces live in). It is
//! rewritten when that set changes, never before its layers are durable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use object_store::PutPayload;
use sha2::{Digest, Sha256};

use cairn_engine::catalog::{now_us, ClusterRow, LayerRow, TimelineRow};
use cairn_engine::layer::LayerKind;
use cairn_engine::{ClusterId, Engine};

use crate::crypto::keyobj::KeyObject;
use crate::crypto::random;
use crate::crypto::stream::{Compression, Header, ObjectKind, Opener, Sealer, CHUNK_SIZE};
use crate::error::{Error, Result};
use crate::index::{
    index_key, BranchName, ClusterInfo, IndexedLayer, PolicySnapshot, TimelineIndex, TimelineInfo,
};
use crate::keys::{Generated, Identity, KeyFiles, RecipientEntry, Signer};
use crate::region::{keys, Region, RegionSet};
use crate::state::{IndexWrite, ObjectKeyRow, State};

/// What a region is doing, for `backup list`, the API and progress bars.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RegionStatus {
    pub region: String,
    pub pending_objects: u64,
    pub pending_bytes: u64,
    pub shipped_bytes: u64,
    pub current: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at_us: Option<i64>,
    pub last_success_at_us: Option<i64>,
}

/// The protection layer of one appliance.
pub struct Protection {
    pub engine: Arc<Engine>,
    pub regions: RegionSet,
    pub key_files: KeyFiles,
    identities: Vec<Identity>,
    signer: Signer,
    pub generation: u64,
    pub trusted: Vec<[u8; 32]>,
    status: Mutex<BTreeMap<String, RegionStatus>>,
    key_lock: tokio::sync::Mutex<()>,
}

/// Retries of one upload before the region is reported failing for this round.
const ATTEMPTS: u32 = 3;

impl Protection {
    /// Opens the protection layer: keys (created on first use), keyring, regions.
    pub async fn open(engine: Arc<Engine>) -> Result<(Protection, Generated)> {
        let key_files = KeyFiles::new(&engine.home.root);
        let generated = key_files.ensure()?;
        let identities = key_files.all_identities();
        let signer = key_files.signer()?;
        let st = State {
            cat: &engine.catalog,
        };
        let (generation, trusted) = st.appliance(&signer.public()).await?;
        let current = identities
            .first()
            .ok_or_else(|| Error::Refused("the appliance identity is missing".into()))?;
        if !st
            .recipients()
            .await?
            .iter()
            .any(|r| r.recipient == current.recipient)
        {
            st.add_recipient(&RecipientEntry {
                recipient: current.recipient.clone(),
                role: "appliance".into(),
                label: format!("appliance identity {}", current.id()),
            })
            .await?;
        }
        let regions = RegionSet::open(&engine.home.root)?;
        let status = regions
            .regions
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    RegionStatus {
                        region: r.name.clone(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        Ok((
            Protection {
                engine,
                regions,
                key_files,
                identities,
                signer,
                generation,
                trusted,
                status: Mutex::new(status),
                key_lock: tokio::sync::Mutex::new(()),
            },
            generated,
        ))
    }

    pub fn state(&self) -> State<'_> {
        State {
            cat: &self.engine.catalog,
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identities[0]
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    pub fn identities(&self) -> Vec<&Identity> {
        self.identities.iter().collect()
    }

    pub fn status(&self) -> Vec<RegionStatus> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn update(&self, region: &str, f: impl FnOnce(&mut RegionStatus)) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(st) = s.get_mut(region) {
            f(st);
        }
    }

    pub(crate) fn set_identities(&mut self, v: Vec<Identity>) {
        self.identities = v;
    }

    /// The data key of a layer, creating it (and its key object) on first use.
    pub async fn ensure_key(&self, layer: &LayerRow) -> Result<(ObjectKeyRow, [u8; 32])> {
        self.ensure_object_key(
            &layer.id.to_string(),
            layer.id.0,
            &layer.cluster_id.to_string(),
            Opener::sealed_len(CHUNK_SIZE, layer.file_size),
        )
        .await
    }

    /// The data key of object `name`, creating it (and its key object) on first use.
    pub async fn ensure_object_key(
        &self,
        name: &str,
        object_id: [u8; 32],
        cluster_id: &str,
        sealed_size: u64,
    ) -> Result<(ObjectKeyRow, [u8; 32])> {
        let _g = self.key_lock.lock().await;
        let st = self.state();
        let what = format!("data key of {name}");
        if let Some(k) = st.object_key(name).await? {
            let ko = KeyObject::decode(&k.key_object, &what)?;
            let dek = ko.unwrap(&self.identities(), &what)?;
            return Ok((k, dek));
        }
        let dek: [u8; 32] = random();
        let key_id: [u8; 16] = random();
        let recipients = st.recipients().await?;
        let ko = KeyObject::wrap(&dek, object_id, key_id, &recipients)?;
        let row = ObjectKeyRow {
            object: name.to_string(),
            cluster_id: cluster_id.to_string(),
            key_id: hex::encode(key_id),
            key_object: ko.encode(),
            object_sha256: None,
            object_size: sealed_size,
        };
        st.insert_object_key(&row).await?;
        Ok((row, dek))
    }

    /// Ships a cluster's secrets (superuser and source passwords) to a region, sealed like any
    /// other object, so that a region and a key are enough to log into restored computes.
    async fn ship_secrets(
        &self,
        region: &Region,
        c: &ClusterRow,
        shipped: &HashSet<String>,
    ) -> Result<()> {
        let name = format!("secrets-{}", c.id);
        if shipped.contains(&name) {
            return Ok(());
        }
        let home = &self.engine.home;
        let body = serde_json::json!({
            "password": home.read_secret(c.id, "password").ok(),
            "source_password": home.read_secret(c.id, "source-password").ok(),
        })
        .to_string();
        let object_id: [u8; 32] = Sha256::digest(name.as_bytes()).into();
        let (key, dek) = self
            .ensure_object_key(&name, object_id, &c.id.to_string(), 0)
            .await?;
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
        let sealed = crate::crypto::stream::seal_all(&dek, &header, body.as_bytes());
        let sha = hex::encode(Sha256::digest(&sealed));
        let cid = c.id.to_string();
        region
            .put(&keys::secrets(&cid), Bytes::from(sealed))
            .await?;
        region
            .put(
                &keys::secrets_key(&cid),
                Bytes::from(key.key_object.clone()),
            )
            .await?;
        self.state()
            .record_shipment(&name, &region.name, &sha)
            .await
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
            let mut layers = self.engine.catalog.layers(c.id).await?;
            layers.retain(|l| !shipped.contains(&l.id.to_string()));
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

    /// Ships one layer to one region (object, then key object, then the shipment row).
    async fn ship_layer(&self, region: &Region, layer: &LayerRow) -> Result<u64> {
        let (key, dek) = self.ensure_key(layer).await?;
        let cluster = layer.cluster_id.to_string();
        let name = layer.id.to_string();
        let obj_key = keys::layer(&cluster, &name);
        let path = self.engine.layer_path(layer);
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
        let sha = match region.head(&obj_key).await? {
            Some(size) if size == expected => {
                // Already there from an interrupted run: it is complete, and identical.
                match key.object_sha256.clone() {
                    Some(s) => s,
                    None => {
                        let p = path.clone();
                        tokio::task::spawn_blocking(move || Self::seal_digest(&p, header, dek))
                            .await
                            .map_err(|e| Error::io("seal", std::io::Error::other(e.to_string())))??
                            .0
                    }
                }
            }
            _ => {
                self.upload(region, &obj_key, &path, header, dek, expected)
                    .await?
            }
        };
        cairn_engine::failpoint::hit("ship-before-key-object");
        region
            .put(
                &keys::key(&cluster, &name),
                Bytes::from(key.key_object.clone()),
            )
            .await?;
        let st = self.state();
        st.set_object_sha(&name, &sha).await?;
        st.record_shipment(&name, &region.name, &sha).await?;
        Ok(expected)
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
        if expected <= part_size as u64 {
            let (_, part) = next(reader).await?;
            let part = part?.unwrap_or_default();
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
                    Ok(None) => break,
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
        let shipped_here: HashSet<String> = self
            .state()
            .shipments()
            .await?
            .into_iter()
            .filter(|(_, r, _)| *r == region.name)
            .map(|(o, _, _)| o)
            .collect();
        for c in self.engine.catalog.clusters().await? {
            if filter.is_none_or(|f| f == c.id) {
                self.ship_secrets(region, &c, &shipped_here).await?;
            }
        }
        let pending = self.pending(&region.name, filter).await?;
        self.update(&region.name, |s| {
            s.pending_objects = pending.len() as u64;
            s.pending_bytes = pending.iter().map(|l| l.file_size).sum();
        });
        let mut shipped = 0;
        for layer in &pending {
            self.update(&region.name, |s| s.current = Some(layer.id.to_string()));
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self.ship_layer(region, layer).await {
                    Ok(_) => {
                        shipped += 1;
                        self.update(&region.name, |s| {
                            s.pending_objects = s.pending_objects.saturating_sub(1);
                            s.pending_bytes = s.pending_bytes.saturating_sub(layer.file_size);
                        });
                        break;
                    }
                    Err(e) if e.retryable() && attempt < ATTEMPTS => {
                        tracing::debug!(region = %region.name, error = %e, attempt, "retrying");
                        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
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

    /// (object -> regions holding it) from the catalog.
    pub async fn copies(&self) -> Result<HashMap<String, HashSet<String>>> {
        let mut m: HashMap<String, HashSet<String>> = HashMap::new();
        for (l, r, _) in self.state().shipments().await? {
            m.entry(l).or_default().insert(r);
        }
        Ok(m)
    }

    /// Layers of `tl` an index in `region` may name now.
    fn eligible<'a>(
        &self,
        layers: &'a [LayerRow],
        refs: &HashMap<String, Vec<String>>,
        copies: &HashMap<String, HashSet<String>>,
        region: &str,
    ) -> Vec<&'a LayerRow> {
        let durable = |id: &str| {
            copies
                .get(id)
                .is_some_and(|rs| rs.contains(region) && rs.len() as u32 >= self.regions.min_copies)
        };
        layers
            .iter()
            .filter(|l| {
                let id = l.id.to_string();
                durable(&id) && refs.get(&id).into_iter().flatten().all(|r| durable(r))
            })
            .collect()
    }

    /// Writes (or rewrites) the index of every timeline whose durable layer set changed.
    pub async fn write_indexes(&self, region: &Region, filter: Option<ClusterId>) -> Result<usize> {
        let copies = self.copies().await?;
        let st = self.state();
        let keys = st.object_keys_by_name().await?;
        let mut written = 0;
        for c in self.engine.catalog.clusters().await? {
            if filter.is_some_and(|f| f != c.id) {
                continue;
            }
            let layers = self.engine.catalog.layers(c.id).await?;
            let refs = self.layer_refs(&c).await?;
            let branches = self.engine.catalog.branches(c.id).await?;
            for tl in self.engine.catalog.timelines(c.id).await? {
                let own: Vec<LayerRow> = layers
                    .iter()
                    .filter(|l| l.timeline_id == tl.id)
                    .cloned()
                    .collect();
                let chosen = self.eligible(&own, &refs, &copies, &region.name);
                let branch = branches.iter().find(|b| b.timeline_id == tl.id);
                let idx = self.build_index(&c, &tl, branch, &chosen, &refs, &copies, &keys);
                let digest = index_digest(&idx);
                let prev = st.index_write(&tl.id.to_string(), &region.name).await?;
                if prev
                    .as_ref()
                    .is_some_and(|p| p.digest == digest && p.generation == self.generation)
                {
                    continue;
                }
                let sequence = match &prev {
                    Some(p) if p.generation == self.generation => p.sequence + 1,
                    _ => 1,
                };
                let idx = TimelineIndex { sequence, ..idx };
                let bytes = idx.encode_signed(&self.signer);
                region
                    .put(
                        &index_key(&c.id.to_string(), &tl.id.to_string(), self.generation),
                        Bytes::from(bytes),
                    )
                    .await?;
                st.record_index_write(
                    &tl.id.to_string(),
                    &c.id.to_string(),
                    &region.name,
                    &IndexWrite {
                        generation: self.generation,
                        sequence,
                        layers: idx.layers.len() as u64,
                        digest,
                        written_at_us: idx.written_at_us,
                    },
                )
                .await?;
                written += 1;
            }
        }
        Ok(written)
    }

    /// Which layers each image layer references (from the catalog).
    async fn layer_refs(&self, c: &ClusterRow) -> Result<HashMap<String, Vec<String>>> {
        let rows = sqlx::query(
            "SELECT r.layer_id, r.ref_layer_id FROM layer_refs r JOIN layers l ON l.id = r.layer_id
              WHERE l.cluster_id = $1",
        )
        .bind(c.id.to_string())
        .fetch_all(self.engine.catalog.pool())
        .await
        .map_err(|e| Error::catalog("read layer references", e))?;
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for r in rows {
            use sqlx::Row;
            let l: String = r
                .try_get(0)
                .map_err(|e| Error::catalog("read layer references", e))?;
            let t: String = r
                .try_get(1)
                .map_err(|e| Error::catalog("read layer references", e))?;
            m.entry(l).or_default().push(t);
        }
        Ok(m)
    }

    #[allow(clippy::too_many_arguments)]
    fn build_index(
        &self,
        c: &ClusterRow,
        tl: &TimelineRow,
        branch: Option<&cairn_engine::catalog::BranchRow>,
        layers: &[&LayerRow],
        refs: &HashMap<String, Vec<String>>,
        _copies: &HashMap<String, HashSet<String>>,
        keys: &HashMap<String, ObjectKeyRow>,
    ) -> TimelineIndex {
        let mut ls: Vec<IndexedLayer> = layers
            .iter()
            .map(|l| {
                let id = l.id.to_string();
                let k = keys.get(&id);
                IndexedLayer {
                    kind: l.kind.as_str().into(),
                    start: l.start.to_string(),
                    end: l.end.to_string(),
                    file_size: l.file_size,
                    logical_size: l.logical_size,
                    stored_bytes: l.stored_bytes,
                    created_at_us: l.created_at_us,
                    object_size: k.map_or(0, |k| k.object_size),
                    object_sha256: k.and_then(|k| k.object_sha256.clone()).unwrap_or_default(),
                    key_id: k.map_or_else(String::new, |k| k.key_id.clone()),
                    refs: refs.get(&id).cloned().unwrap_or_default(),
                    id,
                }
            })
            .collect();
        ls.sort_by(|a, b| (&a.kind, &a.start, &a.id).cmp(&(&b.kind, &b.start, &b.id)));
        let head = layers
            .iter()
            .filter(|l| l.kind == LayerKind::Wal)
            .map(|l| l.end)
            .max()
            .unwrap_or(tl.ancestor.map_or(tl.head, |a| a.1));
        TimelineIndex {
            format: 1,
            generation: self.generation,
            sequence: 0,
            written_at_us: now_us(),
            cluster: ClusterInfo {
                id: c.id.to_string(),
                name: c.name.clone(),
                kind: c.kind.as_str().into(),
                pg_major: c.pg_major,
                system_id: c.system_id.to_string(),
                segment_size: c.segment_size,
                tli: c.tli,
                created_at_us: c.created_at_us,
                source: c.source.clone(),
                slot: c.slot.clone(),
            },
            timeline: TimelineInfo {
                id: tl.id.to_string(),
                ancestor: tl.ancestor.map(|(t, l)| (t.to_string(), l.to_string())),
                head: head.to_string(),
                ancestor_prev: tl.ancestor_prev.map(|l| l.to_string()),
                created_at_us: tl.created_at_us,
                branch: branch.map(|b| BranchName {
                    name: b.name.clone(),
                    protected: b.protected,
                }),
            },
            layers: ls,
            policy: PolicySnapshot {
                min_copies: self.regions.min_copies,
                regions: self.regions.names(),
            },
        }
    }
}

/// What distinguishes one index from another (everything but sequence and time).
fn index_digest(idx: &TimelineIndex) -> String {
    let v = serde_json::json!({
        "cluster": idx.cluster, "timeline": idx.timeline, "layers": idx.layers, "policy": idx.policy
    });
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

/// Reads a layer file and yields its sealed form part by part.
pub struct SealedReader {
    file: File,
    sealer: Sealer,
    header_sent: bool,
    chunk_size: usize,
    remaining: u64,
    finished: bool,
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
        })
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
            self.sealer.seal(&mut chunk, last);
            out.extend_from_slice(&chunk);
            self.finished = last;
        }
        Ok(Some(out))
    }
}
