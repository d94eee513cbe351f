//! `cairn catalog rebuild`: an empty appliance becomes the keeper of what one region holds.
//!
//! From the region alone and the operator's recovery kit: every timeline's newest valid index
//! is read ([`crate::view`]); every layer it names is downloaded, its data key believed only if
//! it matches the index's commitment, decrypted chunk by chunk, checked against its id and
//! written to the data directory; the clusters, timelines, branches, layers and WAL events are
//! inserted into the catalog; the secrets come back too, checked against the index.
//!
//! Invariants (a region is untrusted storage):
//! - Trust comes from the kit only: its signing keys decide which indexes count, and the new
//!   keyring is exactly the kit's (with this appliance's identity). Recipients listed in the
//!   region's key objects or state are never added; those the kit does not know are reported.
//! - An escrow identity given for the rebuild is used in memory and never written to disk.
//! - The rebuilt appliance is fenced: it takes the next generation but writes nothing to any
//!   region and takes over no source until `cairn catalog promote`.

use std::collections::{BTreeMap, HashMap, HashSet};

use cairn_engine::catalog::{BranchRow, ClusterKind, ClusterRow, LayerRow, TimelineRow};
use cairn_engine::ids::{ClusterId, LayerId, Lsn, TimelineId};
use cairn_engine::layer::wal::WalMeta;
use cairn_engine::layer::{LayerFile, LayerKind};
use cairn_engine::wal::WalEvent;
use cairn_engine::Engine;

use crate::crypto::keyobj::KeyObject;
use crate::error::{Error, Result};
use crate::fetch::{download, open_key, Expect, MAX_KEY_OBJECT_BYTES};
use crate::index::{SealedRef, TimelineIndex};
use crate::keys::{key_id, Identity, RecipientEntry};
use crate::kit::{keyring_fingerprint, RecoveryKit};
use crate::protection::Protection;
use crate::region::{keys, Region};
use crate::state::ObjectKeyRow;
use crate::view::{read_region, Rejected};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RebuildReport {
    pub clusters: Vec<String>,
    pub branches: usize,
    pub layers: usize,
    pub bytes: u64,
    /// Key ids of the signers whose indexes were used.
    pub signers: Vec<String>,
    pub generation: u64,
    /// Objects of the region that were not believed, and why.
    pub rejected: Vec<Rejected>,
    /// Recipients the region's key objects or state list that the kit's keyring does not
    /// hold: never added; someone with write access to the region may have planted them.
    pub unknown_recipients: Vec<String>,
    /// Whether the region's signed state names a keyring other than the kit's (a kit older
    /// than the last keyring change).
    pub keyring_differs: bool,
    /// The rebuilt appliance writes nothing to the regions until promoted.
    pub fenced: bool,
    /// Clusters the region records as crypto-shredded (left out).
    pub shredded: Vec<String>,
}

fn parse<T: std::str::FromStr<Err = String>>(s: &str, what: &str) -> Result<T> {
    s.parse().map_err(|e: String| Error::tampered(what, e))
}

/// Decodes a 64-hex object id.
pub fn hex_id(s: &str, what: &str) -> Result<[u8; 32]> {
    hex::decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| Error::tampered(what, format!("'{s}' is not an object id")))
}

/// Refuses a name that several cluster ids carry among `indexes`, listing them.
pub fn refuse_ambiguous_names(indexes: &[TimelineIndex], region: &str) -> Result<()> {
    let mut by_name: BTreeMap<&str, BTreeMap<String, i64>> = BTreeMap::new();
    for i in indexes {
        by_name
            .entry(&i.cluster.name)
            .or_default()
            .insert(i.cluster.id.clone(), i.cluster.created_at_us);
    }
    for (name, ids) in by_name {
        if ids.len() > 1 {
            return Err(ambiguous(name, &format!("region '{region}'"), &ids));
        }
    }
    Ok(())
}

/// The error for a cluster name that several ids carry (id -> creation time).
pub fn ambiguous(name: &str, where_: &str, ids: &BTreeMap<String, i64>) -> Error {
    Error::Refused(format!(
        "{where_} holds {} clusters named '{name}': {}; name the one you mean with --cluster-id",
        ids.len(),
        ids.iter()
            .map(|(id, at)| format!("{id} (created {})", cairn_engine::engine::fmt_time(*at)))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Downloads a cluster's secrets object as an index binds it, and returns its JSON.
pub async fn fetch_secrets(
    region: &Region,
    cluster_id: &str,
    r: &SealedRef,
    identities: &[&Identity],
    scratch: &std::path::Path,
) -> Result<serde_json::Value> {
    let what = format!("region '{}', secrets of cluster {cluster_id}", region.name);
    let object_id = hex_id(&r.object_id, &what)?;
    let dek = open_key(
        region,
        &keys::secrets_key(cluster_id),
        &object_id,
        &r.dek_commitment,
        identities,
    )
    .await?;
    let dest = scratch.join(format!("secrets-{cluster_id}"));
    let result = async {
        download(
            region,
            &keys::secrets(cluster_id),
            &dek,
            Expect {
                object_id: &object_id,
                sealed: Some((r.object_size, &r.object_sha256)),
            },
            &dest,
            None,
        )
        .await?;
        let text =
            std::fs::read(&dest).map_err(|e| Error::io(format!("read {}", dest.display()), e))?;
        serde_json::from_slice(&text).map_err(|e| Error::tampered(&what, e.to_string()))
    }
    .await;
    let _ = std::fs::remove_file(&dest);
    result
}

impl Protection {
    /// Rebuilds an empty appliance from `region_name`, trusting what `kit` says; data keys
    /// are opened with `identity` (an escrow key) or else the kit's own identity.
    pub async fn rebuild(
        &self,
        region_name: &str,
        kit: &RecoveryKit,
        identity: Option<&Identity>,
    ) -> Result<RebuildReport> {
        let engine = &self.engine;
        if !engine.catalog.clusters().await?.is_empty()
            || !self.state().object_keys().await?.is_empty()
        {
            return Err(Error::Refused(
                "this appliance already has clusters; rebuild the catalog into an empty data \
                 directory (a fresh --home)"
                    .into(),
            ));
        }
        let opener = identity.or(kit.identity.as_ref()).ok_or_else(|| {
            Error::Refused(
                "the recovery kit holds no identity: pass the identity that opens the data keys \
                 (--identity FILE, an escrow key)"
                    .into(),
            )
        })?;
        let region = self.regions.get(region_name)?;
        let view = read_region(region, &kit.signers, &HashMap::new()).await?;
        if view.indexes.is_empty() {
            return Err(Error::Refused(format!(
                "region '{region_name}' holds no index signed by a key of the recovery kit{}",
                if view.rejected.is_empty() {
                    " (is it the right region and prefix?)".to_string()
                } else {
                    format!(
                        "; set aside: {}",
                        view.rejected
                            .iter()
                            .map(|r| r.to_string())
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                }
            )));
        }
        refuse_ambiguous_names(&view.indexes, region_name)?;
        let indexes = &view.indexes;
        let identities = [opener];
        let kit_recipients: HashSet<&str> =
            kit.keyring.iter().map(|r| r.recipient.as_str()).collect();
        let mut report = RebuildReport {
            shredded: view
                .shredded
                .iter()
                .map(|r| format!("{} ({})", r.cluster_name, r.cluster_id))
                .collect(),
            signers: view.signers.iter().map(|s| key_id(&s[..])).collect(),
            rejected: view.rejected.clone(),
            fenced: true,
            ..Default::default()
        };
        let note_unknown = |recipients: &[RecipientEntry], report: &mut RebuildReport| {
            for r in recipients {
                if !kit_recipients.contains(r.recipient.as_str())
                    && !report.unknown_recipients.contains(&r.recipient)
                {
                    report.unknown_recipients.push(r.recipient.clone());
                }
            }
        };
        if let Some(s) = &view.state {
            note_unknown(&s.keyring, &mut report);
            report.keyring_differs = s.keyring_fingerprint != keyring_fingerprint(&kit.keyring);
        }
        // Layers: download, verify, keep the WAL layers' metadata.
        let mut metas: HashMap<LayerId, WalMeta> = HashMap::new();
        let mut key_rows: Vec<ObjectKeyRow> = Vec::new();
        for idx in indexes {
            let cid: ClusterId = parse(&idx.cluster.id, "index")?;
            let tid: TimelineId = parse(&idx.timeline.id, "index")?;
            for l in &idx.layers {
                let what = format!("region '{region_name}', layer {}", l.id);
                let lid: LayerId = parse(&l.id, &what)?;
                let kind = LayerKind::parse(&l.kind)
                    .ok_or_else(|| Error::tampered(&what, "unknown kind"))?;
                let kk = keys::key(&idx.cluster.id, &l.id);
                let dek = open_key(region, &kk, &lid.0, &l.dek_commitment, &identities).await?;
                let kb = region.get_bounded(&kk, MAX_KEY_OBJECT_BYTES).await?;
                let ko = KeyObject::decode(&kb, &what)?;
                note_unknown(&ko.recipients, &mut report);
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
                    dek_commitment: Some(l.dek_commitment.clone()),
                    tail: l.tail.as_ref().map(|t| (t.len, t.sha256.clone())),
                });
                report.layers += 1;
            }
        }
        let rows = catalog_rows(indexes, &metas, region_name)?;
        // The keys first: from here on this appliance opens data keys with the kit's identity
        // (an escrow identity stays in memory only), and trusts exactly the kit.
        {
            let _keyring = self.lock_keyring().await?;
            if identity.is_none() {
                if let Some(id) = &kit.identity {
                    self.key_files.install_identity(id)?;
                }
            }
            let own = self.key_files.identity()?;
            self.change_trust(|t| {
                t.recipients = kit
                    .keyring
                    .iter()
                    .map(|r| {
                        let mut r = r.clone();
                        if r.role == "appliance" && r.recipient != own.recipient {
                            r.role = "escrow".into();
                            r.label = format!("previous appliance {}", r.id());
                        }
                        r
                    })
                    .collect();
                if !t.recipients.iter().any(|r| r.recipient == own.recipient) {
                    t.recipients.push(RecipientEntry {
                        recipient: own.recipient.clone(),
                        role: "appliance".into(),
                        label: format!("appliance identity {}", own.id()),
                    });
                }
                for s in &kit.signers {
                    t.add_signer(s);
                }
                t.fenced = true;
                Ok(())
            })?;
        }
        rows.insert(engine).await?;
        report.clusters = rows.clusters.iter().map(|c| c.name.clone()).collect();
        report.branches = rows.branches.len();
        // Protection state: data keys — wrapped anew for the kit's keyring, whatever the
        // region's key objects listed — and the shipments they prove. (Fenced, this appliance
        // writes the new key objects to no region; promotion ships them.)
        let st = self.state();
        let recipients = self.recipients();
        for k in &mut key_rows {
            let what = format!("data key of {}", k.object);
            let ko = KeyObject::decode(&k.key_object, &what)?;
            let dek = ko.unwrap(&identities, &what)?;
            k.key_object = KeyObject::wrap(&dek, ko.object_id, ko.key_id, &recipients)?.encode();
        }
        for k in &key_rows {
            st.insert_object_key(k).await?;
            st.record_shipment(
                &k.object,
                region_name,
                k.object_sha256.as_deref().unwrap_or_default(),
            )
            .await?;
        }
        let newest = indexes
            .iter()
            .map(|i| i.generation)
            .chain(view.state.iter().map(|s| s.generation))
            .max()
            .unwrap_or(0);
        report.generation = newest + 1;
        st.set_generation(report.generation).await?;
        // Secrets, as the newest index of each cluster binds them.
        let scratch = engine.home.root.join("restore");
        cairn_engine::fsutil::create_dir_mode(&scratch, 0o700)
            .map_err(|e| Error::io(format!("create {}", scratch.display()), e))?;
        for c in &rows.clusters {
            let cid = c.id.to_string();
            let Some(r) = indexes
                .iter()
                .filter(|i| i.cluster.id == cid)
                .max_by_key(|i| (i.generation, i.sequence, i.written_at_us))
                .and_then(|i| i.cluster.secrets.clone())
            else {
                tracing::warn!(cluster = %c.name, "the region's indexes name no secrets object");
                continue;
            };
            // From this region, else from any other configured region holding the object the
            // index binds (a forged or damaged copy is reported, never used).
            let mut found = None;
            let mut failures = Vec::new();
            let others = self
                .regions
                .regions
                .iter()
                .filter(|x| x.name != region.name);
            for from in std::iter::once(region).chain(others) {
                match fetch_secrets(from, &cid, &r, &identities, &scratch).await {
                    Ok(v) => {
                        found = Some(v);
                        break;
                    }
                    Err(e) => {
                        let reason = match &e {
                            Error::Tampered { reason, .. } => reason.clone(),
                            other => other.to_string(),
                        };
                        report.rejected.push(Rejected {
                            region: from.name.clone(),
                            object: keys::secrets_key(&cid),
                            reason: reason.clone(),
                        });
                        failures.push(format!("region '{}': {reason}", from.name));
                    }
                }
            }
            let Some(v) = found else {
                return Err(Error::Refused(format!(
                    "the secrets of cluster '{}' could not be read intact from any region ({}); \
                     the catalog was rebuilt, but computes of this cluster need the superuser \
                     password",
                    c.name,
                    failures.join("; ")
                )));
            };
            if let Some(p) = v["password"].as_str() {
                engine.home.write_secret(c.id, "password", p)?;
            }
            if let Some(p) = v["source_password"].as_str() {
                engine.home.write_secret(c.id, "source-password", p)?;
            }
            if let Some(p) = v["owner_password"].as_str() {
                engine.home.write_secret(c.id, "owner-password", p)?;
            }
        }
        Ok(report)
    }

    /// Ends the fence of a rebuilt appliance: from now on it ships, writes indexes (at a
    /// generation above every one in its regions, so readers take its indexes), collects
    /// garbage and receives from adopted sources. Returns the generation it writes.
    pub async fn promote(&self) -> Result<u64> {
        if !self.fenced() {
            return Err(Error::Refused(
                "this appliance is not fenced: there is nothing to promote".into(),
            ));
        }
        let mut newest = self.generation;
        for r in &self.regions.regions {
            let listed = r.list("state").await.unwrap_or_default();
            for (k, _) in listed {
                if let Some(g) = crate::region_state::generation_of(&k) {
                    newest = newest.max(g + 1);
                }
            }
        }
        self.state().set_generation(newest).await?;
        self.change_trust_locked(|t| {
            t.fenced = false;
            Ok(())
        })
        .await?;
        // The regions get key objects wrapped for this appliance's keyring.
        self.rewrap_all().await?;
        Ok(newest)
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
        cairn_engine::failpoint::hit("rebuild-before-insert");
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
