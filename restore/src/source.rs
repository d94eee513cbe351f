//! Where a restore reads from: the regions, in the order objects are tried.
//!
//! The cluster's indexes come from one region: the preferred one when the operator names it,
//! else the healthiest — every region is probed, and the one whose verified indexes index the
//! most layers of the cluster wins, the fastest answer breaking ties. Objects (layers and their
//! key objects) are then fetched from that region first and from the others after it: objects
//! are content-addressed and sealed identically in every region, so any region's copy that
//! passes verification is the same object. Every object that had to come from another region
//! is recorded as a [`Substitution`] with the reason, and the restore report lists them.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_backup::crypto::keyobj::KeyObject;
use cairn_backup::fetch::{download, Expect, OpenedObject};
use cairn_backup::index::{ClusterInfo, IndexedLayer, TimelineIndex};
use cairn_backup::keys::{key_id, Identity};
use cairn_backup::rebuild::read_indexes;
use cairn_backup::region::{keys, Region};
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
}

/// One cluster as a region's verified indexes describe it.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub region: String,
    pub cluster: ClusterInfo,
    pub indexes: Vec<TimelineIndex>,
    /// Key ids of the signers whose indexes were accepted.
    pub signers: Vec<String>,
}

impl ClusterView {
    /// The index of the timeline a branch names.
    pub fn branch(&self, name: &str) -> Result<&TimelineIndex> {
        self.indexes
            .iter()
            .find(|i| i.timeline.branch.as_ref().is_some_and(|b| b.name == name))
            .ok_or_else(|| {
                let mut names: Vec<&str> = self
                    .indexes
                    .iter()
                    .filter_map(|i| i.timeline.branch.as_ref().map(|b| b.name.as_str()))
                    .collect();
                names.sort();
                Error::Refused(format!(
                    "branch '{name}' of cluster '{}' is not in region '{}'; its branches there: {}",
                    self.cluster.name,
                    self.region,
                    names.join(", ")
                ))
            })
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
                        format!("timeline {t} is named as an ancestor but has no index"),
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

async fn probe(
    region: &Region,
    cluster: &str,
    known: &[[u8; 32]],
    pin: Option<&str>,
) -> Result<ClusterView> {
    let fut = read_indexes(region, known, pin);
    let (all, signers) = match tokio::time::timeout(PROBE_TIMEOUT, fut).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::Refused(format!(
                "region '{}' did not answer within {} s",
                region.name,
                PROBE_TIMEOUT.as_secs()
            )))
        }
    };
    let indexes: Vec<TimelineIndex> = all
        .into_iter()
        .filter(|i| i.cluster.name == cluster)
        .collect();
    let first = indexes.first().ok_or_else(|| {
        Error::Refused(format!(
            "region '{}' holds no backup of cluster '{cluster}'",
            region.name
        ))
    })?;
    Ok(ClusterView {
        region: region.name.clone(),
        cluster: first.cluster.clone(),
        signers: signers.iter().map(|s| key_id(&s[..])).collect(),
        indexes,
    })
}

impl Source {
    /// Chooses the region the cluster's indexes come from and the order objects are tried in.
    pub async fn open(
        p: &Protection,
        cluster: &str,
        preferred: Option<&str>,
        extra_identity: Option<Identity>,
        trust_signer: Option<&str>,
    ) -> Result<(Source, ClusterView)> {
        let mut known = p.trusted.clone();
        known.push(p.signer().public());
        let mut identities: Vec<Identity> = extra_identity.into_iter().collect();
        identities.extend(p.identities().into_iter().cloned());
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
        let known = &known;
        for round in candidates {
            let results = futures::future::join_all(round.iter().map(|&i| async move {
                let started = Instant::now();
                let r = probe(&all[i], cluster, known, trust_signer).await;
                (i, r, started.elapsed().as_secs_f64())
            }))
            .await;
            for (i, r, secs) in results {
                match r {
                    Ok(v) => {
                        probes.push(RegionProbe {
                            region: all[i].name.clone(),
                            ok: true,
                            layers: v.layer_count(),
                            seconds: secs,
                            error: None,
                        });
                        views.push((i, v, secs));
                    }
                    Err(e) => probes.push(RegionProbe {
                        region: all[i].name.clone(),
                        ok: false,
                        layers: 0,
                        seconds: secs,
                        error: Some(e.to_string()),
                    }),
                }
            }
            if !views.is_empty() {
                break;
            }
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
        // Healthiest: the most layers indexed, then the fastest answer.
        views.sort_by(|a, b| {
            b.1.layer_count()
                .cmp(&a.1.layer_count())
                .then(a.2.total_cmp(&b.2))
        });
        if let Some(name) = preferred {
            if views[0].1.region != name {
                tracing::warn!(preferred = name, using = %views[0].1.region, "preferred region cannot serve the indexes");
            }
        }
        let first = views[0].0;
        let mut order = vec![all[first].clone()];
        // Then the other healthy regions, then the rest.
        for (i, _, _) in &views[1..] {
            order.push(all[*i].clone());
        }
        for (i, r) in all.iter().enumerate() {
            if !order.iter().any(|o| o.name == r.name) && i != first {
                order.push(r.clone());
            }
        }
        let view = views.swap_remove(0).1;
        let mut substitutions = Vec::new();
        if let Some(name) = preferred {
            if view.region != name {
                let reason = probes
                    .iter()
                    .find(|p| p.region == name)
                    .and_then(|p| p.error.clone())
                    .unwrap_or_default();
                substitutions.push(Substitution {
                    object: format!("indexes of cluster '{cluster}'"),
                    region: name.to_string(),
                    reason,
                    served_by: Some(view.region.clone()),
                });
            }
        }
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

    async fn data_key(&self, region: &Region, cluster: &str, layer: &str) -> Result<[u8; 32]> {
        let k = keys::key(cluster, layer);
        let what = format!("region '{}', {k}", region.name);
        let kb = region.get(&k).await?;
        let ko = KeyObject::decode(&kb, &what)?;
        let ids: Vec<&Identity> = self.identities.iter().collect();
        ko.unwrap(&ids, &what)
    }

    /// Runs `attempt` against each region in order until one succeeds, noting every failure.
    async fn with_failover<'a, T, F, Fut>(&'a self, object: &str, attempt: F) -> Result<(T, String)>
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
        Err(Error::Refused(format!(
            "{object} could not be fetched intact from any region ({detail}); run `cairn regions \
             check --full` and `cairn regions repair`"
        )))
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
        let id = hex_id(&l.id)?;
        let object = format!("{} layer {}", l.kind, l.id);
        let (_, region) = self
            .with_failover(&object, |region| async move {
                let dek = self.data_key(region, cluster, &l.id).await?;
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

    /// Reads only the metadata of a WAL layer (its trailer and metadata chunks).
    pub async fn fetch_wal_meta(&self, cluster: &str, l: &IndexedLayer) -> Result<WalMeta> {
        let id = hex_id(&l.id)?;
        let object = format!("metadata of WAL layer {}", l.id);
        let (meta, _) = self
            .with_failover(&object, |region| async move {
                let dek = self.data_key(region, cluster, &l.id).await?;
                let key = keys::layer(cluster, &l.id);
                let obj = OpenedObject::open(region, &key, &dek, &id).await?;
                let what = format!("region '{}', {key}", region.name);
                let size = obj.layout.plain_len;
                if size < TRAILER_LEN {
                    return Err(Error::tampered(&what, "too short to be a layer"));
                }
                let tb = obj.read_plain(size - TRAILER_LEN, size).await?;
                let t = Trailer::parse(&tb, size, &what)?;
                let mb = obj
                    .read_plain(t.meta_offset, t.meta_offset + t.meta_len)
                    .await?;
                let meta = t.decode_meta(&mb, &what)?;
                WalMeta::decode(&meta).map_err(|e| Error::tampered(&what, e.0))
            })
            .await?;
        Ok(meta)
    }
}

fn hex_id(s: &str) -> Result<[u8; 32]> {
    let v = hex::decode(s).map_err(|_| Error::tampered(format!("layer {s}"), "bad layer id"))?;
    v.try_into()
        .map_err(|_| Error::tampered(format!("layer {s}"), "bad layer id"))
}
