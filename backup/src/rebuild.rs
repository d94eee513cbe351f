//! `cairn catalog rebuild`: an empty appliance becomes the owner of what one region holds.
//!
//! From the region alone and an identity that opens its data keys: every timeline's newest
//! index is read and verified; every layer it names is downloaded, decrypted chunk by chunk,
//! checked against its id and written to the data directory; the clusters, timelines, branches,
//! layers and WAL events are inserted into the catalog; the secrets come back too. The rebuilt
//! appliance takes the next generation, so the indexes it writes supersede the old appliance's,
//! and re-wraps every data key for its own identity as well as the old recipients.
//!
//! Trust: indexes must be signed by a signer this appliance trusts. With `--trust-signer` the
//! operator names that key; without it the single signing key found in the region is trusted
//! on first use and reported (several different signers are refused).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use cairn_engine::catalog::{BranchRow, ClusterKind, ClusterRow, LayerRow, TimelineRow};
use cairn_engine::ids::{ClusterId, LayerId, Lsn, TimelineId};
use cairn_engine::layer::image::ImageMeta;
use cairn_engine::layer::wal::WalMeta;
use cairn_engine::layer::{LayerFile, LayerKind};

use crate::crypto::keyobj::KeyObject;
use crate::crypto::stream::{open_all, Header, Opener, HEADER_LEN, TAG_LEN};
use crate::error::{Error, Result};
use crate::index::{decode_verified, generation_of, TimelineIndex, Trust};
use crate::keys::{key_id, Identity, RecipientEntry};
use crate::region::{keys, Region};
use crate::ship::Protection;
use crate::state::ObjectKeyRow;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RebuildReport {
    pub clusters: Vec<String>,
    pub branches: usize,
    pub layers: usize,
    pub bytes: u64,
    pub signer: String,
    pub generation: u64,
}

/// A downloaded layer: its row, references, WAL events and WAL metadata.
type Downloaded = (
    LayerRow,
    Vec<LayerId>,
    Vec<cairn_engine::wal::WalEvent>,
    Option<WalMeta>,
);

fn parse<T: std::str::FromStr<Err = String>>(s: &str, what: &str) -> Result<T> {
    s.parse().map_err(|e: String| Error::tampered(what, e))
}

/// Downloads an object, decrypting it chunk by chunk into `dest`; returns the plaintext hash.
async fn download(
    region: &Region,
    key: &str,
    dek: &[u8; 32],
    object_id: &[u8; 32],
    dest: &Path,
) -> Result<[u8; 32]> {
    let what = format!("region '{}', {key}", region.name);
    let size = region
        .head(key)
        .await?
        .ok_or_else(|| Error::tampered(&what, "missing"))?;
    let head = region.get_range(key, 0, HEADER_LEN as u64).await?;
    let header = Header::decode(&head, &what)?;
    if &header.object_id != object_id {
        return Err(Error::tampered(
            &what,
            "holds another object (objects swapped)",
        ));
    }
    let opener = Opener::new(dek, header, &what);
    let sealed = header.chunk_size as u64 + TAG_LEN as u64;
    let body = size - HEADER_LEN as u64;
    let chunks = body.div_ceil(sealed).max(1);
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    let tmp = cairn_engine::fsutil::temp_path(dir);
    let mut out = std::fs::File::create(&tmp)
        .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
    let mut hasher = Sha256::new();
    let per_get = 8u64;
    let mut i = 0u64;
    let result: Result<()> = async {
        while i < chunks {
            let n = per_get.min(chunks - i);
            let from = HEADER_LEN as u64 + i * sealed;
            let to = (from + n * sealed).min(size);
            let data = region.get_range(key, from, to).await?;
            for j in 0..n {
                let idx = i + j;
                let a = (j * sealed) as usize;
                let b = ((j + 1) * sealed).min(data.len() as u64) as usize;
                let mut c = data[a..b].to_vec();
                let len = opener.open(idx, &mut c, idx + 1 == chunks)?;
                hasher.update(&c[..len]);
                out.write_all(&c[..len])
                    .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
            }
            i += n;
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    drop(out);
    let digest: [u8; 32] = hasher.finalize().into();
    if &digest != object_id && header.kind == crate::crypto::stream::ObjectKind::Layer {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::tampered(&what, "plaintext does not hash to its id"));
    }
    cairn_engine::fsutil::commit_rename(&tmp, dest)
        .map_err(|e| Error::io(format!("write {}", dest.display()), e))?;
    Ok(digest)
}

impl Protection {
    /// Rebuilds an empty appliance from `region_name`, opening data keys with `identity`.
    pub async fn rebuild(
        &self,
        region_name: &str,
        identity: &Identity,
        trust_signer: Option<&str>,
    ) -> Result<RebuildReport> {
        let engine = &self.engine;
        if !engine.catalog.clusters().await?.is_empty() {
            return Err(Error::Refused(
                "this appliance already has clusters; rebuild the catalog into an empty data \
                 directory (a fresh --home)"
                    .into(),
            ));
        }
        let region = self.regions.get(region_name)?;
        // Newest index object of every timeline.
        let mut newest: BTreeMap<(String, String), (u64, String)> = BTreeMap::new();
        for (key, _) in region.list("clusters").await? {
            let parts: Vec<&str> = key.split('/').collect();
            if let ["clusters", c, "timelines", t, name] = parts.as_slice() {
                if let Some(g) = generation_of(name) {
                    let e = newest
                        .entry((c.to_string(), t.to_string()))
                        .or_insert((g, key.clone()));
                    if g > e.0 {
                        *e = (g, key.clone());
                    }
                }
            }
        }
        if newest.is_empty() {
            return Err(Error::Refused(format!(
                "region '{region_name}' holds no cairn index: nothing to rebuild from (is it the \
                 right region and prefix?)"
            )));
        }
        // Trust: a pinned signer, or the single signer found.
        let mut raw = Vec::new();
        for (_, key) in newest.values() {
            raw.push((key.clone(), region.get(key).await?));
        }
        let signers: HashSet<[u8; 32]> = raw
            .iter()
            .filter_map(|(_, b)| b.get(10..42).and_then(|s| s.try_into().ok()))
            .collect();
        let trusted: Vec<[u8; 32]> =
            match trust_signer {
                Some(pin) => {
                    let pin = pin.trim();
                    let found: Vec<[u8; 32]> = signers
                        .iter()
                        .filter(|s| key_id(&s[..]) == pin || hex::encode(s) == pin)
                        .copied()
                        .collect();
                    if found.is_empty() {
                        return Err(Error::Refused(format!(
                        "no index in region '{region_name}' is signed by {pin}; its indexes are \
                         signed by: {}",
                        signers.iter().map(|s| key_id(&s[..])).collect::<Vec<_>>().join(", ")
                    )));
                    }
                    found
                }
                None if signers.len() == 1 => signers.iter().copied().collect(),
                None => {
                    return Err(Error::Refused(format!(
                    "region '{region_name}' holds indexes signed by several keys ({}); name the \
                     old appliance's signing key with --trust-signer",
                    signers.iter().map(|s| key_id(&s[..])).collect::<Vec<_>>().join(", ")
                )))
                }
            };
        let mut indexes: Vec<TimelineIndex> = Vec::new();
        for (key, bytes) in &raw {
            let (idx, _) = decode_verified(
                bytes,
                key,
                region_name,
                &Trust {
                    signers: &trusted,
                    seen: None,
                },
            )?;
            indexes.push(idx);
        }
        let identities = [identity];
        let mut report = RebuildReport {
            signer: trusted
                .iter()
                .map(|s| key_id(&s[..]))
                .collect::<Vec<_>>()
                .join(", "),
            ..Default::default()
        };
        // Clusters.
        let mut clusters: BTreeMap<String, ClusterRow> = BTreeMap::new();
        for idx in &indexes {
            let c = &idx.cluster;
            let what = format!("index of cluster {}", c.name);
            clusters.entry(c.id.clone()).or_insert(ClusterRow {
                id: parse(&c.id, &what)?,
                name: c.name.clone(),
                kind: if c.kind == "adopted" {
                    ClusterKind::Adopted
                } else {
                    ClusterKind::Managed
                },
                pg_major: c.pg_major,
                system_id: c
                    .system_id
                    .parse()
                    .map_err(|_| Error::tampered(&what, "bad system id"))?,
                segment_size: c.segment_size,
                tli: c.tli,
                source: c.source.clone(),
                slot: c.slot.clone(),
                created_at_us: c.created_at_us,
            });
        }
        // Layers: download, verify, decode.
        let mut layer_rows: Vec<Downloaded> = Vec::new();
        let mut key_rows: Vec<ObjectKeyRow> = Vec::new();
        let mut recipients: Vec<RecipientEntry> = Vec::new();
        for idx in &indexes {
            let cid: ClusterId = parse(&idx.cluster.id, "index")?;
            let tid: TimelineId = parse(&idx.timeline.id, "index")?;
            for l in &idx.layers {
                let what = format!("region '{region_name}', layer {}", l.id);
                let lid: LayerId = parse(&l.id, &what)?;
                let kind = LayerKind::parse(&l.kind)
                    .ok_or_else(|| Error::tampered(&what, "unknown kind"))?;
                let kb = region.get(&keys::key(&idx.cluster.id, &l.id)).await?;
                let ko = KeyObject::decode(&kb, &what)?;
                let dek = ko.unwrap(&identities, &what)?;
                for r in &ko.recipients {
                    if !recipients.iter().any(|x| x.recipient == r.recipient) {
                        recipients.push(r.clone());
                    }
                }
                let dest = engine.home.layer_path(cid, tid, kind, lid);
                download(
                    region,
                    &keys::layer(&idx.cluster.id, &l.id),
                    &dek,
                    &lid.0,
                    &dest,
                )
                .await?;
                report.bytes += l.file_size;
                let f = LayerFile::open(&dest, kind)?;
                let (refs, events, wal) = match kind {
                    LayerKind::Image => {
                        let m =
                            ImageMeta::decode(&f.meta).map_err(|e| Error::tampered(&what, e.0))?;
                        (m.referenced_layers().copied().collect(), vec![], None)
                    }
                    LayerKind::Wal => {
                        let m =
                            WalMeta::decode(&f.meta).map_err(|e| Error::tampered(&what, e.0))?;
                        (vec![], m.events.clone(), Some(m))
                    }
                };
                layer_rows.push((
                    LayerRow {
                        id: lid,
                        cluster_id: cid,
                        timeline_id: tid,
                        kind,
                        start: parse(&l.start, &what)?,
                        end: parse(&l.end, &what)?,
                        file_size: l.file_size,
                        logical_size: l.logical_size,
                        stored_bytes: l.stored_bytes,
                        created_at_us: l.created_at_us,
                    },
                    refs,
                    events,
                    wal,
                ));
                key_rows.push(ObjectKeyRow {
                    object: l.id.clone(),
                    cluster_id: idx.cluster.id.clone(),
                    key_id: l.key_id.clone(),
                    key_object: kb.to_vec(),
                    object_sha256: Some(l.object_sha256.clone()),
                    object_size: l.object_size,
                });
                report.layers += 1;
            }
        }
        // Timelines, ancestors first.
        let mut tl_rows: HashMap<String, TimelineRow> = HashMap::new();
        for idx in &indexes {
            let t = &idx.timeline;
            let what = format!("index of timeline {}", t.id);
            let id: TimelineId = parse(&t.id, &what)?;
            let wal_last = layer_rows
                .iter()
                .filter_map(|(l, _, _, m)| (l.timeline_id == id).then_some(m.as_ref()).flatten())
                .max_by_key(|m| m.end);
            let ancestor = match &t.ancestor {
                Some((a, l)) => Some((parse::<TimelineId>(a, &what)?, parse::<Lsn>(l, &what)?)),
                None => None,
            };
            let ancestor_prev = t
                .ancestor_prev
                .as_deref()
                .map(|p| parse::<Lsn>(p, &what))
                .transpose()?;
            let (head, head_prev) = match wal_last {
                Some(m) => (m.end, Some(m.last_record)),
                None => (ancestor.map_or(Lsn(0), |a| a.1), ancestor_prev),
            };
            tl_rows.insert(
                t.id.clone(),
                TimelineRow {
                    id,
                    cluster_id: parse(&idx.cluster.id, &what)?,
                    ancestor,
                    ancestor_prev,
                    head,
                    head_prev,
                    created_at_us: t.created_at_us,
                },
            );
        }
        let mut ordered: Vec<TimelineRow> = Vec::new();
        let mut placed: HashSet<TimelineId> = HashSet::new();
        while ordered.len() < tl_rows.len() {
            let before = ordered.len();
            let mut next: Vec<&TimelineRow> = tl_rows
                .values()
                .filter(|t| !placed.contains(&t.id))
                .filter(|t| {
                    t.ancestor.is_none_or(|(a, _)| {
                        placed.contains(&a) || !tl_rows.contains_key(&a.to_string())
                    })
                })
                .collect();
            next.sort_by_key(|t| t.created_at_us);
            for t in next {
                placed.insert(t.id);
                ordered.push(t.clone());
            }
            if ordered.len() == before {
                return Err(Error::tampered(
                    region_name,
                    "timeline ancestry in the indexes has a loop",
                ));
            }
        }
        // One transaction for the whole catalog.
        let mut tx = engine.catalog.begin().await?;
        for c in clusters.values() {
            tx.insert_cluster(c).await?;
            report.clusters.push(c.name.clone());
        }
        for t in &ordered {
            tx.insert_timeline(t).await?;
        }
        for idx in &indexes {
            if let Some(b) = &idx.timeline.branch {
                tx.insert_branch(&BranchRow {
                    cluster_id: parse(&idx.cluster.id, "index")?,
                    name: b.name.clone(),
                    timeline_id: parse(&idx.timeline.id, "index")?,
                    protected: b.protected,
                    created_at_us: idx.timeline.created_at_us,
                })
                .await?;
                report.branches += 1;
            }
        }
        layer_rows.sort_by_key(|(l, _, _, _)| (l.kind == LayerKind::Image, l.created_at_us));
        for (l, refs, events, _) in &layer_rows {
            tx.insert_layer(l, refs, events).await?;
        }
        tx.commit().await?;
        // Protection state: data keys, shipments here, keyring, generation, trust.
        let st = self.state();
        for k in &key_rows {
            st.insert_object_key(k).await?;
            st.record_shipment(
                &k.object,
                region_name,
                k.object_sha256.as_deref().unwrap_or_default(),
            )
            .await?;
        }
        // Keep every old recipient — the previous appliance's key too, as an escrow — so that
        // re-wrapping for this appliance never locks out a key that could open the data.
        for r in &recipients {
            let mut r = r.clone();
            if r.role == "appliance" {
                r.role = "escrow".into();
                r.label = format!("previous appliance {}", r.id());
            }
            st.add_recipient(&r).await?;
        }
        let generation = indexes.iter().map(|i| i.generation).max().unwrap_or(0) + 1;
        let mut all_trusted = self.trusted.clone();
        for t in &trusted {
            if !all_trusted.contains(t) {
                all_trusted.push(*t);
            }
        }
        st.set_appliance(generation, &all_trusted).await?;
        report.generation = generation;
        // Secrets.
        for c in clusters.values() {
            let cid = c.id.to_string();
            let (Ok(kb), Ok(sb)) = (
                region.get(&keys::secrets_key(&cid)).await,
                region.get(&keys::secrets(&cid)).await,
            ) else {
                tracing::warn!(cluster = %c.name, "no secrets object in the region");
                continue;
            };
            let what = format!("region '{region_name}', secrets of {}", c.name);
            let ko = KeyObject::decode(&kb, &what)?;
            let dek = ko.unwrap(&identities, &what)?;
            let plain = open_all(&dek, &sb, &ko.object_id, &what)?;
            let v: serde_json::Value = serde_json::from_slice(&plain)
                .map_err(|e| Error::tampered(&what, e.to_string()))?;
            if let Some(p) = v["password"].as_str() {
                engine.home.write_secret(c.id, "password", p)?;
            }
            if let Some(p) = v["source_password"].as_str() {
                engine.home.write_secret(c.id, "source-password", p)?;
            }
        }
        Ok(report)
    }
}
