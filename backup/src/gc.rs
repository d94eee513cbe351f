//! Deleting from regions: the deletion queue and crypto-shredding.
//!
//! Nothing is deleted from a region directly. When a layer or a timeline disappears from the
//! catalog (a branch deleted, a cluster deleted or shredded), its objects and index objects are
//! *queued* with a `not_before` time (`deletion_delay` in regions.toml, 24 h by default). A due
//! entry is executed only if no index object present in that region still names the object;
//! index objects themselves are deleted first, so the rule always leaves a region whose every
//! index names only objects it holds.
//!
//! Shredding a cluster ([`crate::shred`]) leaves its payloads unreadable; they are then queued
//! for deletion like any garbage.

use std::collections::{HashMap, HashSet};

use cairn_engine::catalog::now_us;

use crate::error::Result;
use crate::index::{decode_verified, Trust, MAX_INDEX_BYTES};
use crate::protection::Protection;
use crate::region::{keys, Region};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    pub queued: usize,
    pub deleted: usize,
    pub kept_referenced: usize,
    pub failed: Vec<String>,
}

impl Protection {
    /// Queues the region objects of layers and timelines the catalog no longer has.
    pub async fn queue_garbage(&self) -> Result<usize> {
        let st = self.state();
        let delay = self.deletion_delay_us();
        let mut live_layers: HashSet<String> = HashSet::new();
        let mut live_timelines: HashSet<String> = HashSet::new();
        let mut live_clusters: HashSet<String> = HashSet::new();
        for c in self.engine.catalog.clusters().await? {
            live_clusters.insert(c.id.to_string());
            for l in self.engine.catalog.layers(c.id).await? {
                live_layers.insert(l.id.to_string());
            }
            for t in self.engine.catalog.timelines(c.id).await? {
                live_timelines.insert(t.id.to_string());
            }
        }
        let keys_by_object: HashMap<String, String> = st
            .object_keys()
            .await?
            .into_iter()
            .map(|k| (k.object, k.cluster_id))
            .collect();
        let mut queued = 0;
        for (tl, cluster, region) in st.index_writes().await? {
            if live_timelines.contains(&tl) {
                continue;
            }
            let r = self.regions.get(&region)?;
            for (k, _) in r.list(&keys::timeline_prefix(&cluster, &tl)).await? {
                st.queue_deletion(&region, &k, "its timeline was deleted", delay)
                    .await?;
                queued += 1;
            }
            st.forget_index_write(&tl, &region).await?;
        }
        for (obj, region, _) in st.shipments().await? {
            let Some(cluster) = keys_by_object.get(&obj) else {
                continue;
            };
            // Secrets and exports live as long as their cluster; layers as long as they are
            // in the catalog.
            let gone = if obj.starts_with("secrets-") || obj.starts_with("export-") {
                !live_clusters.contains(cluster)
            } else {
                !live_layers.contains(&obj)
            };
            if !gone {
                continue;
            }
            for key in keys::objects_of(cluster, &obj) {
                st.queue_deletion(&region, &key, "no longer in the catalog", delay)
                    .await?;
                queued += 1;
            }
        }
        Ok(queued)
    }

    fn deletion_delay_us(&self) -> i64 {
        // parse_duration caps durations far below i64 microseconds; saturate regardless.
        i64::try_from(self.regions.deletion_delay.as_micros()).unwrap_or(i64::MAX / 2)
    }

    /// Every object id named by an index present in `region` for `cluster`.
    async fn referenced(&self, region: &Region, cluster: &str) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        let prefix = format!("clusters/{cluster}/timelines");
        for (key, _) in region.list(&prefix).await? {
            if !key
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("index-"))
            {
                continue;
            }
            let bytes = region.get_bounded(&key, MAX_INDEX_BYTES).await?;
            let trusted = self.trusted();
            let trust = Trust {
                signers: &trusted,
                seen: None,
            };
            // An index we cannot verify still protects what it names.
            let names: Vec<String> = match decode_verified(&bytes, &key, &region.name, &trust) {
                Ok((idx, _)) => idx.layers.into_iter().map(|l| l.id).collect(),
                Err(_) => match serde_json::from_slice::<serde_json::Value>(
                    bytes.get(106..).unwrap_or(&[]),
                ) {
                    Ok(v) => v["layers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|l| l["id"].as_str().map(str::to_string))
                        .collect(),
                    Err(_) => vec![],
                },
            };
            out.extend(names);
        }
        Ok(out)
    }

    /// Executes the due entries of the deletion queue.
    pub async fn process_deletions(&self) -> Result<GcReport> {
        self.require_unfenced("delete from the regions")?;
        let st = self.state();
        let mut report = GcReport::default();
        let now = now_us();
        let due: Vec<_> = st
            .deletions()
            .await?
            .into_iter()
            .filter(|d| d.not_before_us <= now)
            .collect();
        // Index objects first: they are what keeps the others alive.
        let (indexes, objects): (Vec<_>, Vec<_>) = due
            .into_iter()
            .partition(|d| d.object_key.contains("/timelines/"));
        let mut cache: HashMap<(String, String), HashSet<String>> = HashMap::new();
        for d in indexes.into_iter().chain(objects) {
            let Ok(region) = self.regions.get(&d.region) else {
                st.done_deletion(&d.region, &d.object_key).await?;
                continue;
            };
            let parts: Vec<&str> = d.object_key.split('/').collect();
            let (cluster, object) = match parts.as_slice() {
                ["clusters", c, "secrets"] | ["clusters", c, "keys", "secrets"] => {
                    (c.to_string(), format!("secrets-{c}"))
                }
                ["clusters", c, "exports", o] => (
                    c.to_string(),
                    keys::export_object(o.strip_suffix(".manifest").unwrap_or(o)),
                ),
                ["clusters", c, "layers", o] | ["clusters", c, "keys", o] => {
                    (c.to_string(), o.to_string())
                }
                ["clusters", c, "timelines", ..] => (c.to_string(), String::new()),
                _ => {
                    report
                        .failed
                        .push(format!("{}: unexpected key {}", d.region, d.object_key));
                    continue;
                }
            };
            // Only layers are named by indexes.
            if !object.is_empty()
                && !object.starts_with("secrets-")
                && !object.starts_with("export-")
            {
                let key = (d.region.clone(), cluster.clone());
                if !cache.contains_key(&key) {
                    match self.referenced(region, &cluster).await {
                        Ok(r) => {
                            cache.insert(key.clone(), r);
                        }
                        Err(e) => {
                            report.failed.push(e.to_string());
                            continue;
                        }
                    }
                }
                if cache[&key].contains(&object) {
                    report.kept_referenced += 1;
                    continue;
                }
            }
            match region.delete(&d.object_key).await {
                Ok(()) => {
                    cairn_engine::failpoint::hit("gc-deleted");
                    st.done_deletion(&d.region, &d.object_key).await?;
                    if !object.is_empty() {
                        st.forget_shipment(&object, &d.region).await?;
                        let left = st.shipments().await?.iter().any(|(o, _, _)| *o == object);
                        if !left {
                            st.delete_object_key(&object).await?;
                        }
                    }
                    report.deleted += 1;
                }
                Err(e) => report.failed.push(e.to_string()),
            }
        }
        Ok(report)
    }
}
