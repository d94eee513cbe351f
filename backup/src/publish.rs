//! Publishing what the regions hold: a timeline's index object in a region names exactly the
//! layers that are durable there *and* in `min_copies` regions (an image only together with the
//! layers its pieces live in), with everything a reader needs to trust them (sizes, hashes, data
//! key commitments, WAL metadata digests, the secrets object); the region's signed state object
//! follows, carrying the keyring and the high-water mark of every index.
//!
//! Invariants: an index is rewritten when what it names changes, never before its layers are
//! durable, always with a higher sequence; the state object is written after the indexes of a
//! round; nothing is published by a fenced appliance.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use cairn_engine::catalog::{now_us, ClusterRow, LayerRow, TimelineRow};
use cairn_engine::layer::file::tail_digest;
use cairn_engine::layer::LayerKind;
use cairn_engine::ClusterId;

use crate::crypto::dek_commitment;
use crate::crypto::keyobj::KeyObject;
use crate::error::{Error, Result};
use crate::index::{
    index_key, BranchName, ClusterInfo, IndexedLayer, PolicySnapshot, SealedRef, TimelineIndex,
    TimelineInfo, WalTail,
};
use crate::kit::keyring_fingerprint;
use crate::protection::Protection;
use crate::region::{keys, Region};
use crate::region_state::{state_key, RegionState, TimelineMark};
use crate::state::{IndexWrite, ObjectKeyRow};

impl Protection {
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

    /// Fills in what format-2 indexes bind (data key commitment, WAL tail) for key rows
    /// written before migration 4.
    async fn fill_bindings(&self) -> Result<()> {
        let st = self.state();
        let missing: Vec<ObjectKeyRow> = st
            .object_keys()
            .await?
            .into_iter()
            .filter(|k| k.dek_commitment.is_none() && k.key_object != b"shredded")
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut layers: HashMap<String, LayerRow> = HashMap::new();
        for c in self.engine.catalog.clusters().await? {
            for l in self.engine.catalog.layers(c.id).await? {
                layers.insert(l.id.to_string(), l);
            }
        }
        for k in missing {
            let what = format!("data key of {}", k.object);
            let ko = KeyObject::decode(&k.key_object, &what)?;
            let dek = self.unwrap_key(&ko, &what)?;
            let commitment = dek_commitment(&ko.object_id, &ko.key_id, &dek);
            let mut tail = None;
            if let Some(layer) = layers.get(&k.object).filter(|l| l.kind == LayerKind::Wal) {
                let path = self.engine.layer_path(layer);
                let (len, sha) = tokio::task::spawn_blocking(move || tail_digest(&path))
                    .await
                    .map_err(|e| {
                        Error::io("read a layer", std::io::Error::other(e.to_string()))
                    })??;
                tail = Some((len, hex::encode(sha)));
            }
            st.set_bindings(&k.object, &commitment, tail.as_ref())
                .await?;
        }
        Ok(())
    }

    /// Writes (or rewrites) the index of every timeline whose durable layer set changed, then
    /// the region's state object when any index changed.
    pub async fn write_indexes(&self, region: &Region, filter: Option<ClusterId>) -> Result<usize> {
        self.require_unfenced("write indexes to the regions")?;
        self.fill_bindings().await?;
        let copies = self.copies().await?;
        let st = self.state();
        let keys = st.object_keys_by_name().await?;
        let keyring = self.keyring_fingerprint();
        let mut written = 0;
        for c in self.engine.catalog.clusters().await? {
            if filter.is_some_and(|f| f != c.id) {
                continue;
            }
            let layers = self.engine.catalog.layers(c.id).await?;
            let refs = self.layer_refs(&c).await?;
            let branches = self.engine.catalog.branches(c.id).await?;
            let secrets = self.secrets_ref(&c, &region.name, &keys).await?;
            let scratch = self.scratch_timelines(&c).await?;
            for tl in self.engine.catalog.timelines(c.id).await? {
                if scratch.contains(&tl.id) {
                    continue;
                }
                let own: Vec<LayerRow> = layers
                    .iter()
                    .filter(|l| l.timeline_id == tl.id)
                    .cloned()
                    .collect();
                let chosen = self.eligible(&own, &refs, &copies, &region.name);
                let branch = branches.iter().find(|b| b.timeline_id == tl.id);
                let idx = self.build_index(
                    &c,
                    &tl,
                    branch,
                    &chosen,
                    &refs,
                    &keys,
                    secrets.clone(),
                    &keyring,
                )?;
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
                region.put_verified(&idx.path, Bytes::from(bytes)).await?;
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
        self.write_state(region).await?;
        Ok(written)
    }

    /// Rewrites the region's signed state object when its content changed: the keyring and
    /// the newest index of every timeline written there (high-water marks for readers).
    async fn write_state(&self, region: &Region) -> Result<()> {
        let st = self.state();
        let mut timelines = BTreeMap::new();
        for (tl, cluster, w) in st.index_writes_in(&region.name).await? {
            if w.generation == self.generation {
                timelines.insert(
                    tl,
                    TimelineMark {
                        cluster,
                        generation: w.generation,
                        sequence: w.sequence,
                    },
                );
            }
        }
        let keyring = self.recipients();
        let fingerprint = keyring_fingerprint(&keyring);
        let digest = hex::encode(Sha256::digest(
            serde_json::json!({"keyring": fingerprint, "timelines": timelines})
                .to_string()
                .as_bytes(),
        ));
        let prev = st.region_state(&region.name).await?;
        if prev
            .as_ref()
            .is_some_and(|(g, _, d)| *g == self.generation && *d == digest)
        {
            return Ok(());
        }
        let sequence = match prev {
            Some((g, s, _)) if g == self.generation => s + 1,
            _ => 1,
        };
        let state = RegionState {
            format: 1,
            path: state_key(self.generation),
            region: region.name.clone(),
            generation: self.generation,
            sequence,
            written_at_us: now_us(),
            keyring,
            keyring_fingerprint: fingerprint,
            timelines,
        };
        region
            .put_verified(&state.path, Bytes::from(state.encode_signed(&self.signer)))
            .await?;
        st.record_region_state(&region.name, self.generation, sequence, &digest)
            .await
    }

    /// What an index of cluster `c` in `region` says of its secrets object.
    async fn secrets_ref(
        &self,
        c: &ClusterRow,
        region: &str,
        keys: &HashMap<String, ObjectKeyRow>,
    ) -> Result<Option<SealedRef>> {
        let name = keys::secrets_object(&c.id.to_string());
        let Some(k) = keys.get(&name) else {
            return Ok(None);
        };
        if !self.state().shipped_to(&name, region).await? {
            return Ok(None);
        }
        let (Some(sha), Some(commitment)) = (&k.object_sha256, &k.dek_commitment) else {
            return Ok(None);
        };
        let ko = KeyObject::decode(&k.key_object, &format!("data key of {name}"))?;
        Ok(Some(SealedRef {
            object_id: hex::encode(ko.object_id),
            object_size: k.object_size,
            object_sha256: sha.clone(),
            dek_commitment: commitment.clone(),
        }))
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
        keys: &HashMap<String, ObjectKeyRow>,
        secrets: Option<SealedRef>,
        keyring_fingerprint: &str,
    ) -> Result<TimelineIndex> {
        let mut ls: Vec<IndexedLayer> = Vec::with_capacity(layers.len());
        for l in layers {
            let id = l.id.to_string();
            let k = keys.get(&id).ok_or_else(|| {
                Error::tampered(
                    "catalog",
                    format!("layer {id} was shipped without a data key"),
                )
            })?;
            let (Some(sha), Some(commitment)) = (&k.object_sha256, &k.dek_commitment) else {
                return Err(Error::tampered(
                    "catalog",
                    format!("layer {id} was shipped without its hash or key commitment"),
                ));
            };
            let tail = match (l.kind, &k.tail) {
                (LayerKind::Wal, Some((len, sha))) => Some(WalTail {
                    len: *len,
                    sha256: sha.clone(),
                }),
                (LayerKind::Wal, None) => {
                    return Err(Error::tampered(
                        "catalog",
                        format!("WAL layer {id} has no recorded tail digest"),
                    ))
                }
                (LayerKind::Image, _) => None,
            };
            ls.push(IndexedLayer {
                kind: l.kind.as_str().into(),
                start: l.start.to_string(),
                end: l.end.to_string(),
                file_size: l.file_size,
                logical_size: l.logical_size,
                stored_bytes: l.stored_bytes,
                created_at_us: l.created_at_us,
                object_size: k.object_size,
                object_sha256: sha.clone(),
                key_id: k.key_id.clone(),
                dek_commitment: commitment.clone(),
                tail,
                refs: refs.get(&id).cloned().unwrap_or_default(),
                id,
            });
        }
        ls.sort_by(|a, b| (&a.kind, &a.start, &a.id).cmp(&(&b.kind, &b.start, &b.id)));
        let head = layers
            .iter()
            .filter(|l| l.kind == LayerKind::Wal)
            .map(|l| l.end)
            .max()
            .unwrap_or(tl.ancestor.map_or(tl.head, |a| a.1));
        let cid = c.id.to_string();
        let tid = tl.id.to_string();
        Ok(TimelineIndex {
            format: 2,
            path: index_key(&cid, &tid, self.generation),
            generation: self.generation,
            sequence: 0,
            written_at_us: now_us(),
            cluster: ClusterInfo {
                id: cid,
                name: c.name.clone(),
                kind: c.kind.as_str().into(),
                pg_major: c.pg_major,
                system_id: c.system_id.to_string(),
                segment_size: c.segment_size,
                tli: c.tli,
                created_at_us: c.created_at_us,
                source: c.source.clone(),
                slot: c.slot.clone(),
                secrets,
            },
            timeline: TimelineInfo {
                id: tid,
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
            keyring_fingerprint: keyring_fingerprint.to_string(),
        })
    }
}

/// What distinguishes one index from another (everything but sequence and time).
fn index_digest(idx: &TimelineIndex) -> String {
    let v = serde_json::json!({
        "format": idx.format, "cluster": idx.cluster, "timeline": idx.timeline,
        "layers": idx.layers, "policy": idx.policy, "keyring": idx.keyring_fingerprint
    });
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}
