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

use cairn_engine::catalog::{BranchRow, ClusterKind, ClusterRow, LayerRow, TimelineRow};
use cairn_engine::ids::{ClusterId, LayerId, Lsn, TimelineId};
use cairn_engine::layer::wal::WalMeta;
use cairn_engine::layer::{LayerFile, LayerKind};
use cairn_engine::wal::WalEvent;
use cairn_engine::Engine;

use crate::crypto::keyobj::KeyObject;
use crate::crypto::stream::open_all;
use crate::error::{Error, Result};
use crate::fetch::{download, Expect};
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

fn parse<T: std::str::FromStr<Err = String>>(s: &str, what: &str) -> Result<T> {
    s.parse().map_err(|e: String| Error::tampered(what, e))
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
        let (indexes, trusted) = read_indexes(region, &[], trust_signer).await?;
        let identities = [identity];
        let mut report = RebuildReport {
            signer: trusted
                .iter()
                .map(|s| key_id(&s[..]))
                .collect::<Vec<_>>()
                .join(", "),
            ..Default::default()
        };
        // Layers: download, verify, keep the WAL layers' metadata.
        let mut metas: HashMap<LayerId, WalMeta> = HashMap::new();
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
                    Expect {
                        object_id: &lid.0,
                        sealed: Some((l.object_size, &l.object_sha256)),
                    },
                    &dest,
                    None,
                )
                .await?;
                report.bytes += l.file_size;
                let f = LayerFile::open(&dest, kind)?;
                if kind == LayerKind::Wal {
                    let m = WalMeta::decode(&f.meta).map_err(|e| Error::tampered(&what, e.0))?;
                    metas.insert(lid, m);
                }
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
        let rows = catalog_rows(&indexes, &metas, region_name)?;
        rows.insert(engine).await?;
        report.clusters = rows.clusters.iter().map(|c| c.name.clone()).collect();
        report.branches = rows.branches.len();
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
        for c in &rows.clusters {
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

/// Catalog rows that describe what a set of verified indexes holds.
#[derive(Debug, Default)]
pub struct CatalogRows {
    pub clusters: Vec<ClusterRow>,
    /// Ancestors before their descendants.
    pub timelines: Vec<TimelineRow>,
    pub branches: Vec<BranchRow>,
    /// Each layer with the layers it references and its WAL events; WAL layers first.
    pub layers: Vec<(LayerRow, Vec<LayerId>, Vec<WalEvent>)>,
}

impl CatalogRows {
    /// Inserts every row in one catalog transaction.
    pub async fn insert(&self, engine: &Engine) -> Result<()> {
        let mut tx = engine.catalog.begin().await?;
        for c in &self.clusters {
            tx.insert_cluster(c).await?;
        }
        for t in &self.timelines {
            tx.insert_timeline(t).await?;
        }
        for b in &self.branches {
            tx.insert_branch(b).await?;
        }
        for (l, refs, events) in &self.layers {
            tx.insert_layer(l, refs, events).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Derives catalog rows from verified indexes and the metadata of their WAL layers (heads and
/// WAL events come from there). A WAL layer whose metadata is missing from `metas` is left
/// out of the rows; `region` names the source in errors.
pub fn catalog_rows(
    indexes: &[TimelineIndex],
    metas: &HashMap<LayerId, WalMeta>,
    region: &str,
) -> Result<CatalogRows> {
    let mut rows = CatalogRows::default();
    let mut clusters: BTreeMap<String, ClusterRow> = BTreeMap::new();
    for idx in indexes {
        let c = &idx.cluster;
        let what = format!("index of cluster {}", c.name);
        if clusters.contains_key(&c.id) {
            continue;
        }
        clusters.insert(
            c.id.clone(),
            ClusterRow {
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
            },
        );
    }
    rows.clusters = clusters.into_values().collect();
    for idx in indexes {
        let cid: ClusterId = parse(&idx.cluster.id, "index")?;
        let tid: TimelineId = parse(&idx.timeline.id, "index")?;
        for l in &idx.layers {
            let what = format!("region '{region}', layer {}", l.id);
            let lid: LayerId = parse(&l.id, &what)?;
            let kind =
                LayerKind::parse(&l.kind).ok_or_else(|| Error::tampered(&what, "unknown kind"))?;
            let events = match kind {
                LayerKind::Wal => match metas.get(&lid) {
                    Some(m) => m.events.clone(),
                    None => continue,
                },
                LayerKind::Image => vec![],
            };
            let refs = l
                .refs
                .iter()
                .map(|r| parse::<LayerId>(r, &what))
                .collect::<Result<Vec<_>>>()?;
            rows.layers.push((
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
            ));
        }
    }
    // Timelines: heads from their WAL layers, ancestors first.
    let mut tl_rows: HashMap<String, TimelineRow> = HashMap::new();
    for idx in indexes {
        let t = &idx.timeline;
        let what = format!("index of timeline {}", t.id);
        let id: TimelineId = parse(&t.id, &what)?;
        let wal_last = rows
            .layers
            .iter()
            .filter(|(l, _, _)| l.timeline_id == id && l.kind == LayerKind::Wal)
            .filter_map(|(l, _, _)| metas.get(&l.id))
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
        if let Some(b) = &t.branch {
            rows.branches.push(BranchRow {
                cluster_id: parse(&idx.cluster.id, &what)?,
                name: b.name.clone(),
                timeline_id: id,
                protected: b.protected,
                created_at_us: t.created_at_us,
            });
        }
    }
    let mut placed: HashSet<TimelineId> = HashSet::new();
    while rows.timelines.len() < tl_rows.len() {
        let before = rows.timelines.len();
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
            rows.timelines.push(t.clone());
        }
        if rows.timelines.len() == before {
            return Err(Error::tampered(
                region,
                "timeline ancestry in the indexes has a loop",
            ));
        }
    }
    rows.layers
        .sort_by_key(|(l, _, _)| (l.kind == LayerKind::Image, l.created_at_us));
    Ok(rows)
}

/// Reads and verifies the newest index of every timeline a region holds. Signers are trusted
/// in this order: the one `pin` names (key id or hex); else those of `known` found in the
/// region; else the single signer found, on first use. Several unknown signers are refused.
/// Returns the indexes and the signers trusted.
pub async fn read_indexes(
    region: &Region,
    known: &[[u8; 32]],
    pin: Option<&str>,
) -> Result<(Vec<TimelineIndex>, Vec<[u8; 32]>)> {
    let region_name = &region.name;
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
            "region '{region_name}' holds no cairn index: nothing to restore from (is it the \
             right region and prefix?)"
        )));
    }
    let mut raw = Vec::new();
    for (_, key) in newest.values() {
        raw.push((key.clone(), region.get(key).await?));
    }
    let signers: HashSet<[u8; 32]> = raw
        .iter()
        .filter_map(|(_, b)| b.get(10..42).and_then(|s| s.try_into().ok()))
        .collect();
    let list = |s: &HashSet<[u8; 32]>| {
        s.iter()
            .map(|k| key_id(&k[..]))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let known_here: Vec<[u8; 32]> = signers
        .iter()
        .filter(|s| known.contains(s))
        .copied()
        .collect();
    let trusted: Vec<[u8; 32]> = match pin {
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
                    list(&signers)
                )));
            }
            found
        }
        None if !known_here.is_empty() => known_here,
        None if signers.len() == 1 => signers.iter().copied().collect(),
        None => {
            return Err(Error::Refused(format!(
                "region '{region_name}' holds indexes signed by several keys ({}); name the \
                 old appliance's signing key with --trust-signer",
                list(&signers)
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
    Ok((indexes, trusted))
}
