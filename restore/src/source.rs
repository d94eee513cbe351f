//! Where a restore reads from: the regions, in the order objects are tried.
//!
//! The cluster's indexes come from one region: the preferred one when the operator names it,
//! else the healthiest — every region is probed, and the one whose valid indexes index the
//! most layers of the cluster wins, the fastest answer breaking ties. Objects (layers and their
//! key objects) are then fetched from that region first and from the others after it: objects
//! are content-addressed and sealed identically in every region, so any region's copy that
//! passes verification is the same object. Every object that had to come from another region
//! is recorded as a [`Substitution`] with the reason, and the restore report lists them.
//!
//! Invariants (a region is untrusted storage):
//! - Only indexes signed by a trusted key count: the appliance's own and those its trust file
//!   names, a recovery kit's, or a full key given with `--trust-signer`. Objects a region holds
//!   that are not believed are reported ([`Rejected`]) and never block a valid index.
//! - A cluster is one id: a name that several ids carry is refused with the ids listed
//!   (`--cluster-id` chooses); on an appliance that has the cluster, its id decides.
//! - A data key is believed only if it matches the index's commitment, and the WAL metadata
//!   that decides where a point in time lies only if its tail hashes to what the index binds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use cairn_backup::error::Holds;
use cairn_backup::fetch::{download, open_key, Expect, OpenedObject};
use cairn_backup::index::{ClusterInfo, IndexedLayer, TimelineIndex};
use cairn_backup::keys::{key_id, Identity};
use cairn_backup::rebuild::{ambiguous, hex_id};
use cairn_backup::region::{keys, Region};
use cairn_backup::shred::ShredRecord;
use cairn_backup::view::{read_region, Rejected};
use cairn_backup::{Error, Protection, Result};
use cairn_engine::layer::file::{Trailer, TRAILER_LEN};
use cairn_engine::layer::wal::WalMeta;

/// How long a region may take to answer the index probe before it counts as unhealthy.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// An object that was not served by the first region tried.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Substitution {
    pub object: String,
    pub region: String,
    pub reason: String,
    /// The region that served it in the end (`None`: no region could).
    pub served_by: Option<String>,
}

/// What one region answered to the index probe.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegionProbe {
    pub region: String,
    pub ok: bool,
    pub layers: usize,
    pub seconds: f64,
    pub error: Option<String>,
    /// Objects of this region that were not believed, and why.
    pub rejected: Vec<Rejected>,
}

/// One cluster as a region's valid indexes describe it.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub region: String,
    pub cluster: ClusterInfo,
    pub indexes: Vec<TimelineIndex>,
    /// Key ids of the signers whose indexes were accepted.
    pub signers: Vec<String>,
    /// Timelines the region's signed state names (the live ones).
    pub live: HashSet<String>,
    /// Every cluster id (with its creation time) the wanted name maps to here.
    pub ids: BTreeMap<String, i64>,
    pub rejected: Vec<Rejected>,
}

impl ClusterView {
    /// The index of the timeline a branch names (a live timeline before a deleted one that
    /// had the same name, then the newest).
    pub fn branch(&self, name: &str) -> Result<&TimelineIndex> {
        self.indexes
            .iter()
            .filter(|i| i.timeline.branch.as_ref().is_some_and(|b| b.name == name))
            .max_by_key(|i| (self.live.contains(&i.timeline.id), i.timeline.created_at_us))
            .ok_or_else(|| {
                let mut names: Vec<&str> = self
                    .indexes
                    .iter()
                    .filter_map(|i| i.timeline.branch.as_ref().map(|b| b.name.as_str()))
                    .collect();
                names.sort();
                names.dedup();
                Error::Refused(format!(
                    "branch '{name}' of cluster '{}' is not in region '{}'; its branches there: \
                     {}{}",
                    self.cluster.name,
                    self.region,
                    names.join(", "),
                    self.rejected_note()
                ))
            })
    }

    fn rejected_note(&self) -> String {
        if self.rejected.is_empty() {
            String::new()
        } else {
            format!(
                " (objects set aside there: {})",
                self.rejected
                    .iter()
                    .map(|r| format!("{}: {}", r.object, r.reason))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    }

    /// The indexes of a timeline and its ancestors, nearest first.
    pub fn ancestry(&self, timeline: &str) -> Result<Vec<&TimelineIndex>> {
        let mut out = Vec::new();
        let mut cur = Some(timeline.to_string());
        while let Some(t) = cur {
            if out.len() > self.indexes.len() {
                return Err(Error::tampered(
                    format!("region '{}'", self.region),
                    "timeline ancestry in the indexes has a loop",
                ));
            }
            let idx = self
                .indexes
                .iter()
                .find(|i| i.timeline.id == t)
                .ok_or_else(|| {
                    Error::tampered(
                        format!("region '{}'", self.region),
                        format!(
                            "timeline {t} is named as an ancestor but has no valid index{}",
                            self.rejected_note()
                        ),
                    )
                })?;
            out.push(idx);
            cur = idx.timeline.ancestor.as_ref().map(|a| a.0.clone());
        }
        Ok(out)
    }

    fn layer_count(&self) -> usize {
        self.indexes.iter().map(|i| i.layers.len()).sum()
    }
}

/// The regions of a restore, in the order objects are tried, and the keys that open them.
pub struct Source {
    pub order: Vec<Region>,
    identities: Vec<Identity>,
    pub probes: Vec<RegionProbe>,
    substitutions: Mutex<Vec<Substitution>>,
}

/// Which cluster a restore means.
#[derive(Debug, Clone)]
pub struct Wanted<'a> {
    pub name: &'a str,
    /// The id, when the caller knows it (`--cluster-id`, or the local catalog's).
    pub id: Option<String>,
}

/// What the caller trusts and has seen.
pub struct TrustInput<'a> {
    pub signers: &'a [[u8; 32]],
    /// region -> timeline -> (generation, sequence) this appliance wrote there.
    pub seen: &'a HashMap<String, HashMap<String, (u64, u64)>>,
}

async fn probe(
    region: &Region,
    wanted: &Wanted<'_>,
    trust: &TrustInput<'_>,
    rejected: &mut Vec<Rejected>,
) -> Result<ClusterView> {
    let empty = HashMap::new();
    let seen = trust.seen.get(&region.name).unwrap_or(&empty);
    let fut = read_region(region, trust.signers, seen);
    let view = match tokio::time::timeout(PROBE_TIMEOUT, fut).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::Refused(format!(
                "region '{}' did not answer within {} s",
                region.name,
                PROBE_TIMEOUT.as_secs()
            )))
        }
    };
    rejected.extend(view.rejected.iter().cloned());
    if let Some(r) = view
        .shredded
        .iter()
        .find(|r| shred_refuses(r, wanted, &view.indexes))
    {
        return Err(r.refusal());
    }
    let indexes: Vec<TimelineIndex> = view
        .indexes
        .into_iter()
        .filter(|i| match &wanted.id {
            Some(id) => &i.cluster.id == id,
            None => i.cluster.name == wanted.name,
        })
        .collect();
    let first = indexes.first().ok_or_else(|| {
        Error::Refused(format!(
            "region '{}' holds no backup of cluster '{}'{}{}",
            region.name,
            wanted.name,
            wanted
                .id
                .as_deref()
                .map(|i| format!(" (id {i})"))
                .unwrap_or_default(),
            if rejected.is_empty() {
                String::new()
            } else {
                format!(
                    " it can believe; set aside: {}{}",
                    rejected
                        .iter()
                        .take(3)
                        .map(|r| format!("{}: {}", r.object, r.reason))
                        .collect::<Vec<_>>()
                        .join("; "),
                    if rejected.len() > 3 {
                        format!(" (and {} more)", rejected.len() - 3)
                    } else {
                        String::new()
                    }
                )
            }
        ))
    })?;
    let live = view
        .state
        .map(|s| s.timelines.into_keys().collect())
        .unwrap_or_default();
    let ids = indexes
        .iter()
        .map(|i| (i.cluster.id.clone(), i.cluster.created_at_us))
        .collect();
    Ok(ClusterView {
        region: region.name.clone(),
        cluster: first.cluster.clone(),
        ids,
        signers: view.signers.iter().map(|s| key_id(&s[..])).collect(),
        indexes,
        live,
        rejected: rejected.clone(),
    })
}

/// Whether a region's shred record refuses the wanted cluster: by id when the id is known;
/// by name only while no valid index of that name remains (a cluster created later under a
/// shredded one's name is not refused for it).
fn shred_refuses(r: &ShredRecord, wanted: &Wanted<'_>, indexes: &[TimelineIndex]) -> bool {
    match &wanted.id {
        Some(id) => &r.cluster_id == id,
        None => {
            r.cluster_name == wanted.name && !indexes.iter().any(|i| i.cluster.name == wanted.name)
        }
    }
}

/// The cluster a restore means: an id given with `--cluster-id` must be the appliance's own
/// when the appliance has a cluster of that name; without one, the appliance's id decides.
fn resolve_wanted<'a>(
    cluster: &'a str,
    given: Option<&str>,
    local: Option<String>,
) -> Result<Wanted<'a>> {
    if let (Some(given), Some(local)) = (given, &local) {
        if given != local {
            return Err(Error::Refused(format!(
                "cluster '{cluster}' of this appliance has id {local}, not {given}"
            )));
        }
    }
    Ok(Wanted {
        name: cluster,
        id: given.map(str::to_string).or(local),
    })
}

/// How one region answered the probe, for ranking.
#[derive(Debug, Clone, Copy)]
struct Health {
    /// Position in the configured regions.
    region: usize,
    layers: usize,
    seconds: f64,
}

/// The order objects are tried in: the healthy regions, healthiest first (the most layers
/// indexed, then the fastest answer), then the others in configuration order. Each region
/// appears once.
fn try_order(regions: usize, healthy: &[Health]) -> Vec<usize> {
    let mut ranked = healthy.to_vec();
    ranked.sort_by(|a, b| {
        b.layers
            .cmp(&a.layers)
            .then(a.seconds.total_cmp(&b.seconds))
    });
    let mut order: Vec<usize> = Vec::with_capacity(regions);
    for i in ranked.iter().map(|h| h.region).chain(0..regions) {
        if !order.contains(&i) {
            order.push(i);
        }
    }
    order
}

/// When the operator preferred a region and another one served the indexes: the substitution
/// the report lists, with the preferred region's own error as the reason.
fn index_substitution(
    cluster: &str,
    preferred: Option<&str>,
    served_by: &str,
    probes: &[RegionProbe],
) -> Option<Substitution> {
    let name = preferred.filter(|p| *p != served_by)?;
    let reason = probes
        .iter()
        .find(|p| p.region == name)
        .and_then(|p| p.error.clone())
        .unwrap_or_default();
    Some(Substitution {
        object: format!("indexes of cluster '{cluster}'"),
        region: name.to_string(),
        reason,
        served_by: Some(served_by.to_string()),
    })
}

/// The plaintext size of a WAL layer object and its tail, against what the index says: the
/// object is the indexed file, and the tail holds at least a trailer and lies inside it.
fn check_tail(size: u64, tail_len: u64, file_size: u64, what: &str) -> Result<()> {
    if size != file_size || tail_len < TRAILER_LEN || tail_len > size {
        return Err(Error::tampered(
            what,
            format!(
                "holds {size} plaintext bytes with a {tail_len}-byte tail; the index says \
                 {file_size} and {tail_len}"
            ),
        ));
    }
    Ok(())
}

/// A WAL layer's metadata covers exactly the LSN range its index entry says (both ends).
fn check_range(m: &WalMeta, l: &IndexedLayer, what: &str) -> Result<()> {
    if m.start.to_string() != l.start || m.end.to_string() != l.end {
        return Err(Error::tampered(
            what,
            format!(
                "covers {}..{}, the index says {}..{}",
                m.start, m.end, l.start, l.end
            ),
        ));
    }
    Ok(())
}

/// What this appliance has written to each region: region -> timeline -> (generation,
/// sequence). A restore refuses anything older.
pub async fn seen_marks(p: &Protection) -> Result<HashMap<String, HashMap<String, (u64, u64)>>> {
    let st = p.state();
    let mut out: HashMap<String, HashMap<String, (u64, u64)>> = HashMap::new();
    for r in &p.regions.regions {
        let m = out.entry(r.name.clone()).or_default();
        for (tl, _, w) in st.index_writes_in(&r.name).await? {
            m.insert(tl, (w.generation, w.sequence));
        }
    }
    Ok(out)
}

impl Source {
    /// Chooses the region the cluster's indexes come from and the order objects are tried in.
    /// `signers` are trusted besides the appliance's own (a recovery kit's, `--trust-signer`).
    pub async fn open(
        p: &Protection,
        cluster: &str,
        cluster_id: Option<&str>,
        preferred: Option<&str>,
        extra_identity: Option<Identity>,
        signers: &[[u8; 32]],
    ) -> Result<(Source, ClusterView)> {
        let mut known = p.trusted();
        for s in signers {
            if !known.contains(s) {
                known.push(*s);
            }
        }
        let local_id = p
            .engine
            .catalog
            .cluster_by_name(cluster)
            .await?
            .map(|c| c.id.to_string());
        let wanted = resolve_wanted(cluster, cluster_id, local_id)?;
        let seen = seen_marks(p).await?;
        let trust = TrustInput {
            signers: &known,
            seen: &seen,
        };
        let mut identities: Vec<Identity> = extra_identity.into_iter().collect();
        identities.extend(p.identities());
        let all = &p.regions.regions;
        if let Some(name) = preferred {
            p.regions.get(name)?;
        }
        // The preferred region alone is probed first; the others only when it fails.
        let mut probes: Vec<RegionProbe> = Vec::new();
        let mut views: Vec<(usize, ClusterView, f64)> = Vec::new();
        let candidates: Vec<Vec<usize>> = match preferred {
            Some(name) => {
                let i = all.iter().position(|r| r.name == name).unwrap_or(0);
                vec![
                    vec![i],
                    (0..all.len()).filter(|j| *j != i).collect::<Vec<_>>(),
                ]
            }
            None => vec![(0..all.len()).collect()],
        };
        let (trust, wanted) = (&trust, &wanted);
        for round in candidates {
            let results = futures::future::join_all(round.iter().map(|&i| async move {
                let started = Instant::now();
                let mut rejected = Vec::new();
                let r = probe(&all[i], wanted, trust, &mut rejected).await;
                (i, r, started.elapsed().as_secs_f64(), rejected)
            }))
            .await;
            for (i, r, secs, rejected) in results {
                for x in &rejected {
                    tracing::warn!("{x}");
                }
                match r {
                    Ok(v) => {
                        probes.push(RegionProbe {
                            region: all[i].name.clone(),
                            ok: true,
                            layers: v.layer_count(),
                            seconds: secs,
                            error: None,
                            rejected,
                        });
                        views.push((i, v, secs));
                    }
                    Err(e) => probes.push(RegionProbe {
                        region: all[i].name.clone(),
                        ok: false,
                        layers: 0,
                        seconds: secs,
                        error: Some(e.to_string()),
                        rejected,
                    }),
                }
            }
            if !views.is_empty() {
                break;
            }
        }
        // A name that several clusters carry (a deleted cluster's backups outlive it) is the
        // operator's to resolve, whichever region answered.
        let ids: BTreeMap<String, i64> = views.iter().flat_map(|(_, v, _)| v.ids.clone()).collect();
        if ids.len() > 1 {
            let regions: Vec<&str> = views.iter().map(|(_, v, _)| v.region.as_str()).collect();
            return Err(ambiguous(
                cluster,
                &format!("the regions ({})", regions.join(", ")),
                &ids,
            ));
        }
        if views.is_empty() {
            return Err(Error::Refused(format!(
                "no region can restore cluster '{cluster}': {}",
                probes
                    .iter()
                    .map(|p| format!("{}: {}", p.region, p.error.as_deref().unwrap_or("?")))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        let health: Vec<Health> = views
            .iter()
            .map(|(i, v, secs)| Health {
                region: *i,
                layers: v.layer_count(),
                seconds: *secs,
            })
            .collect();
        let order = try_order(all.len(), &health);
        let pos = views
            .iter()
            .position(|(i, _, _)| *i == order[0])
            .ok_or_else(|| Error::Refused("no region answered the probe".into()))?;
        let view = views.swap_remove(pos).1;
        let substitutions: Vec<Substitution> =
            index_substitution(cluster, preferred, &view.region, &probes)
                .into_iter()
                .collect();
        for s in &substitutions {
            tracing::warn!(preferred = %s.region, using = %view.region, "preferred region cannot serve the indexes");
        }
        let order = order.into_iter().map(|i| all[i].clone()).collect();
        Ok((
            Source {
                order,
                identities,
                probes,
                substitutions: Mutex::new(substitutions),
            },
            view,
        ))
    }

    pub fn substitutions(&self) -> Vec<Substitution> {
        self.substitutions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn note(&self, s: Substitution) {
        self.substitutions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(s);
    }

    /// A layer's data key from `region`, believed only if it matches the index's commitment.
    async fn data_key(
        &self,
        region: &Region,
        cluster: &str,
        l: &IndexedLayer,
        id: &[u8; 32],
    ) -> Result<[u8; 32]> {
        let ids: Vec<&Identity> = self.identities.iter().collect();
        open_key(
            region,
            &keys::key(cluster, &l.id),
            id,
            &l.dek_commitment,
            &ids,
        )
        .await
    }

    /// Runs `attempt` against each region in order until one succeeds, noting every failure.
    async fn with_failover<'a, T, F, Fut>(
        &'a self,
        (object, holds): (&str, Holds),
        attempt: F,
    ) -> Result<(T, String)>
    where
        F: Fn(&'a Region) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut failures: Vec<(String, String)> = Vec::new();
        for region in &self.order {
            match attempt(region).await {
                Ok(v) => {
                    for (r, reason) in failures {
                        self.note(Substitution {
                            object: object.to_string(),
                            region: r,
                            reason,
                            served_by: Some(region.name.clone()),
                        });
                    }
                    return Ok((v, region.name.clone()));
                }
                Err(e) => {
                    tracing::warn!(region = %region.name, object, error = %e, "trying the next region");
                    failures.push((region.name.clone(), e.to_string()));
                }
            }
        }
        let detail = failures
            .iter()
            .map(|(r, e)| format!("{r}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        for (r, reason) in failures {
            self.note(Substitution {
                object: object.to_string(),
                region: r,
                reason,
                served_by: None,
            });
        }
        Err(Error::Unfetchable {
            object: object.to_string(),
            holds,
            detail,
        })
    }

    /// Downloads a layer to `dest`, verified, from the first region that has a good copy.
    /// Returns the region that served it.
    pub async fn fetch_layer(
        &self,
        cluster: &str,
        l: &IndexedLayer,
        dest: &Path,
        progress: &AtomicU64,
    ) -> Result<String> {
        let id = hex_id(&l.id, &format!("layer {}", l.id))?;
        let object = format!("{} layer {}", l.kind, l.id);
        let holds = match cairn_engine::layer::file::LayerKind::parse(&l.kind) {
            Some(cairn_engine::layer::file::LayerKind::Wal) => Holds::Wal,
            _ => Holds::Data,
        };
        let (_, region) = self
            .with_failover((&object, holds), |region| async move {
                let dek = self.data_key(region, cluster, l, &id).await?;
                download(
                    region,
                    &keys::layer(cluster, &l.id),
                    &dek,
                    Expect {
                        object_id: &id,
                        sealed: Some((l.object_size, &l.object_sha256)),
                    },
                    dest,
                    Some(progress),
                )
                .await
            })
            .await?;
        Ok(region)
    }

    /// Reads only the metadata of a WAL layer: its tail (metadata and trailer), checked
    /// against the digest the signed index binds before anything in it is believed.
    pub async fn fetch_wal_meta(&self, cluster: &str, l: &IndexedLayer) -> Result<WalMeta> {
        let id = hex_id(&l.id, &format!("layer {}", l.id))?;
        let object = format!("metadata of WAL layer {}", l.id);
        let (meta, _) = self
            .with_failover((&object, Holds::Wal), |region| async move {
                let key = keys::layer(cluster, &l.id);
                let what = format!("region '{}', {key}", region.name);
                let tail = l.tail.as_ref().ok_or_else(|| {
                    Error::tampered(
                        &what,
                        "the index binds no metadata digest of this WAL layer",
                    )
                })?;
                let dek = self.data_key(region, cluster, l, &id).await?;
                let obj = OpenedObject::open(region, &key, &dek, &id, Some(l.object_size)).await?;
                let size = obj.layout.plain_len;
                check_tail(size, tail.len, l.file_size, &what)?;
                let tb = obj.read_plain(size - tail.len, size).await?;
                if hex::encode(Sha256::digest(&tb)) != tail.sha256 {
                    return Err(Error::tampered(
                        &what,
                        "its metadata does not hash to what the signed index binds",
                    ));
                }
                let split = tb.len() - TRAILER_LEN as usize;
                let t = Trailer::parse(&tb[split..], size, &what)?;
                if t.meta_offset != size - tail.len {
                    return Err(Error::tampered(
                        &what,
                        "its trailer points outside its tail",
                    ));
                }
                let meta = t.decode_meta(&tb[..split], &what)?;
                let m = WalMeta::decode(&meta).map_err(|e| Error::tampered(&what, e.0))?;
                check_range(&m, l, &what)?;
                Ok(m)
            })
            .await?;
        Ok(meta)
    }
}

#[cfg(test)]
mod tests;
