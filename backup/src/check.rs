//! `cairn regions check` and `cairn regions repair`.
//!
//! A check lists each region once and compares it with what the catalog says was shipped there:
//! every payload and key object present, with the expected size; every index object verified
//! (signature, trusted signer, generation, not older than what this appliance wrote) and naming
//! only objects the region holds. A full check also reads every object back: the ciphertext
//! must hash to the recorded SHA-256, the data key must unwrap with one of the identities, every
//! chunk must authenticate, and the plaintext must hash to the layer's id.
//!
//! Repair copies a good object from another region, streamed and committed only once it hashes
//! to the recorded SHA-256, or, when no region has one, ships it again from the local layer
//! file (or the secrets). Nothing is deleted: a damaged copy is replaced by a proven one or
//! left in place and reported. Memory stays bounded by one part, whatever the object's size.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::crypto::dek_commitment;
use crate::crypto::keyobj::KeyObject;
use crate::error::{Error, Result};
use crate::fetch::{stream_verified, Expect, MAX_KEY_OBJECT_BYTES};
use crate::index::{decode_verified, index_key, Trust, MAX_INDEX_BYTES};
use crate::keys::Identity;
use crate::protection::Protection;
use crate::region::{keys, Region};
use crate::state::ObjectKeyRow;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    pub region: String,
    /// The object key in the region.
    pub object: String,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "region '{}', {}: {}",
            self.region, self.object, self.reason
        )
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CheckReport {
    pub objects: usize,
    pub indexes: usize,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RepairReport {
    pub copied: Vec<String>,
    pub reshipped: Vec<String>,
    pub unrepaired: Vec<String>,
    /// Every object repaired, and where the good copy came from.
    pub repaired: Vec<Repaired>,
}

/// One object of a region replaced by a good copy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Repaired {
    pub region: String,
    /// The object key in the region.
    pub object: String,
    /// Another region's name, or `this appliance` (written again from the catalog or a local
    /// layer file).
    pub from: String,
    /// What was wrong with it.
    pub reason: String,
}

fn payload_key(k: &ObjectKeyRow) -> String {
    keys::payload_of(&k.cluster_id, &k.object)
}

fn key_object_key(k: &ObjectKeyRow) -> String {
    keys::key_of(&k.cluster_id, &k.object)
}

impl Protection {
    /// Reads a payload back and proves it: size, ciphertext hash, key, every chunk, plaintext
    /// hash — streamed, with memory bounded whatever the object's size. The error names the
    /// object at fault: the key object (unreadable, not for this object, opening another data
    /// key) or the payload.
    pub async fn verify_object(
        &self,
        region: &Region,
        k: &ObjectKeyRow,
        expected_sha: &str,
        identities: &[&Identity],
    ) -> std::result::Result<(), (String, String)> {
        let pk = payload_key(k);
        let kk = key_object_key(k);
        let what = format!("region '{}', {}", region.name, kk);
        let key_fault = |why: String| (kk.clone(), why);
        let kb = region
            .get_bounded(&kk, MAX_KEY_OBJECT_BYTES)
            .await
            .map_err(|e| key_fault(format!("its key object: {e}")))?;
        let ko = KeyObject::decode(&kb, &what).map_err(|e| key_fault(e.to_string()))?;
        // Secrets and exports are named otherwise; a layer's key object names the layer.
        if !k.object.starts_with("secrets-")
            && !k.object.starts_with("export-")
            && hex::encode(ko.object_id) != k.object
        {
            return Err(key_fault(format!(
                "the key object {kk} belongs to another layer (swapped or forged)"
            )));
        }
        let dek = ko
            .unwrap(identities, &what)
            .map_err(|e| key_fault(e.to_string()))?;
        if let Some(c) = &k.dek_commitment {
            if dek_commitment(&ko.object_id, &ko.key_id, &dek) != *c {
                return Err(key_fault(format!(
                    "its key object {kk} opens another data key than the one recorded (forged)"
                )));
            }
        }
        // Every object is named by the SHA-256 of its plaintext (a layer's id, an export's
        // dump hash, the secrets' JSON hash).
        stream_verified(
            region,
            &pk,
            &dek,
            Expect {
                object_id: &ko.object_id,
                sealed: Some((k.object_size, expected_sha)),
            },
            None,
            |_| Ok(()),
        )
        .await
        .map(|_| ())
        .map_err(|e| {
            let why = match e {
                Error::Tampered { reason, .. } => reason,
                other => other.to_string(),
            };
            (pk.clone(), why)
        })
    }

    pub async fn check_regions(
        &self,
        full: bool,
        only: Option<&str>,
        identity: Option<&Identity>,
    ) -> Result<CheckReport> {
        let st = self.state();
        let keys_by_obj = st.object_keys_by_name().await?;
        let shipments = st.shipments().await?;
        let own = self.identities();
        let ids: Vec<&Identity> = match identity {
            Some(i) => vec![i],
            None => own.iter().collect(),
        };
        let trusted = self.trusted();
        let mut report = CheckReport::default();
        for region in &self.regions.regions {
            if only.is_some_and(|o| o != region.name) {
                continue;
            }
            let problem = |object: &str, reason: String| Problem {
                region: region.name.clone(),
                object: object.to_string(),
                reason,
            };
            let listing: BTreeMap<String, u64> = match region.list("clusters").await {
                Ok(l) => l.into_iter().collect(),
                Err(e) => {
                    report.problems.push(problem("(listing)", e.to_string()));
                    continue;
                }
            };
            for (obj, r, sha) in shipments.iter().filter(|(_, r, _)| *r == region.name) {
                let _ = r;
                let Some(k) = keys_by_obj.get(obj) else {
                    continue;
                };
                report.objects += 1;
                let pk = payload_key(k);
                match listing.get(&pk) {
                    None => report.problems.push(problem(&pk, "missing".into())),
                    Some(size) => {
                        let wrong_size = *size != k.object_size;
                        let reason = if full {
                            // Reading it back says precisely what happened to it.
                            self.verify_object(region, k, sha, &ids).await.err()
                        } else {
                            None
                        };
                        match (reason, wrong_size) {
                            (Some((at, r)), true) => report.problems.push(problem(
                                &at,
                                format!("{r} ({size} bytes instead of {})", k.object_size),
                            )),
                            (Some((at, r)), false) => report.problems.push(problem(&at, r)),
                            (None, true) => report.problems.push(problem(
                                &pk,
                                format!(
                                    "{size} bytes instead of {} (truncated or replaced)",
                                    k.object_size
                                ),
                            )),
                            (None, false) => {}
                        }
                    }
                }
                let kk = key_object_key(k);
                if !listing.contains_key(&kk) {
                    report
                        .problems
                        .push(problem(&kk, "key object missing".into()));
                }
            }
            // Indexes this appliance wrote here.
            for (tl, cluster, r) in st.index_writes().await? {
                if r != region.name {
                    continue;
                }
                let Some(w) = st.index_write(&tl, &r).await? else {
                    continue;
                };
                report.indexes += 1;
                let key = index_key(&cluster, &tl, w.generation);
                let bytes = match region.get_bounded(&key, MAX_INDEX_BYTES).await {
                    Ok(b) => b,
                    Err(e) => {
                        report.problems.push(problem(&key, e.to_string()));
                        continue;
                    }
                };
                let trust = Trust {
                    signers: &trusted,
                    seen: Some((w.generation, w.sequence)),
                };
                match decode_verified(&bytes, &key, &region.name, &trust) {
                    Ok((idx, _)) => {
                        for l in &idx.layers {
                            let lk = keys::layer(&cluster, &l.id);
                            if !listing.contains_key(&lk) {
                                report
                                    .problems
                                    .push(problem(&key, format!("names {lk}, which is missing")));
                            }
                        }
                    }
                    Err(e) => report.problems.push(problem(&key, e.to_string())),
                }
            }
        }
        Ok(report)
    }

    /// Repairs what a check found: copies from a healthy region, or ships again.
    pub async fn repair_regions(&self, report: &CheckReport) -> Result<RepairReport> {
        self.require_unfenced("repair the regions")?;
        let st = self.state();
        let keys_by_obj = st.object_keys_by_name().await?;
        let shipments = st.shipments().await?;
        let mut out = RepairReport::default();
        let mut index_regions = Vec::new();
        for p in &report.problems {
            let broken = self.regions.get(&p.region)?;
            if p.object.contains("/timelines/") {
                index_regions.push(p.region.clone());
                continue;
            }
            // Which object is it?
            let Some(k) = keys_by_obj
                .values()
                .find(|k| payload_key(k) == p.object || key_object_key(k) == p.object)
            else {
                out.unrepaired.push(format!("{p} (unknown object)"));
                continue;
            };
            if p.object == key_object_key(k) {
                // Key objects are ours: write the current one.
                let _keyring = self.lock_keyring().await?;
                let fresh = st.object_key(&k.object).await?.unwrap_or_else(|| k.clone());
                broken
                    .put_verified(&p.object, Bytes::from(fresh.key_object))
                    .await?;
                out.copied.push(format!(
                    "{} in '{}' (key object rewritten)",
                    p.object, p.region
                ));
                out.repaired.push(repaired(p, "this appliance"));
                continue;
            }
            let Some(sha) = k.object_sha256.clone() else {
                out.unrepaired
                    .push(format!("{p} (no recorded hash to prove a copy against)"));
                continue;
            };
            let mut fixed = false;
            let mut tried = Vec::new();
            for good in self.regions.regions.iter().filter(|r| r.name != p.region) {
                if !shipments
                    .iter()
                    .any(|(o, r, _)| *o == k.object && *r == good.name)
                {
                    continue;
                }
                match broken
                    .copy_from(good, &p.object, k.object_size, &sha, self.regions.part_size)
                    .await
                {
                    Ok(()) => {
                        out.copied.push(format!(
                            "{} from '{}' to '{}'",
                            p.object, good.name, p.region
                        ));
                        out.repaired.push(repaired(p, &good.name));
                        fixed = true;
                        cairn_engine::failpoint::hit("repair-copied");
                        break;
                    }
                    Err(e) => tried.push(e.to_string()),
                }
            }
            if fixed {
                continue;
            }
            // No good copy anywhere: ship it again from what this appliance holds. The broken
            // copy is replaced by the upload, never deleted first.
            let layer = if k.object.starts_with("secrets-") || k.object.starts_with("export-") {
                None
            } else {
                self.local_layer(&k.object).await?
            };
            match (k.object.starts_with("secrets-"), layer) {
                (true, _) => {
                    st.forget_shipment(&k.object, &p.region).await?;
                    match self.ship_region(broken, None).await {
                        Ok(_) => {
                            out.reshipped
                                .push(format!("{} to '{}'", p.object, p.region));
                            out.repaired.push(repaired(p, "this appliance"));
                        }
                        Err(e) => out.unrepaired.push(format!("{p}: {e}")),
                    }
                }
                (false, Some(layer)) => match self.ship_layer_again(broken, &layer).await {
                    Ok(()) => {
                        out.reshipped
                            .push(format!("{} to '{}'", p.object, p.region));
                        out.repaired.push(repaired(p, "this appliance"));
                    }
                    Err(e) => out.unrepaired.push(format!("{p}: {e}")),
                },
                (false, None) => out.unrepaired.push(format!(
                    "{p}: no other region holds a good copy ({}) and this appliance keeps none \
                     to ship again; the damaged copy was left in place",
                    if tried.is_empty() {
                        "no other region has it".to_string()
                    } else {
                        tried.join("; ")
                    }
                )),
            }
        }
        index_regions.sort();
        index_regions.dedup();
        for r in index_regions {
            // Rewritten with higher sequences: a reader that saw the damaged ones must not
            // take the new ones for replays.
            st.invalidate_index_writes(&r).await?;
            let region = self.regions.get(&r)?;
            self.write_indexes(region, None).await?;
            out.copied.push(format!("indexes of '{r}' rewritten"));
            for p in report
                .problems
                .iter()
                .filter(|p| p.region == r && p.object.contains("/timelines/"))
            {
                out.repaired.push(repaired(p, "this appliance"));
            }
        }
        Ok(out)
    }
}

fn repaired(p: &Problem, from: &str) -> Repaired {
    Repaired {
        region: p.region.clone(),
        object: p.object.clone(),
        from: from.to_string(),
        reason: p.reason.clone(),
    }
}

impl Problem {
    pub fn error(&self) -> Error {
        Error::tampered(
            format!("region '{}', {}", self.region, self.object),
            self.reason.clone(),
        )
    }
}
