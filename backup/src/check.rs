//! `cairn regions check` and `cairn regions repair`.
//!
//! A check lists each region once and compares it with what the catalog says was shipped there:
//! every payload and key object present, with the expected size; every index object verified
//! (signature, trusted signer, generation, not older than what this appliance wrote) and naming
//! only objects the region holds. A full check also reads every object back: the ciphertext
//! must hash to the recorded SHA-256, the data key must unwrap with one of the identities, every
//! chunk must authenticate, and the plaintext must hash to the layer's id.
//!
//! Repair copies a good object from another region (its ciphertext hash checked on the way) or,
//! when no region has one, ships it again from the local layer file.

use std::collections::BTreeMap;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::crypto::keyobj::KeyObject;
use crate::crypto::stream::open_all;
use crate::error::{Error, Result};
use crate::index::{decode_verified, index_key, Trust, MAX_INDEX_BYTES};
use crate::keys::Identity;
use crate::region::{keys, Region};
use crate::ship::Protection;
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
}

fn payload_key(k: &ObjectKeyRow) -> String {
    keys::payload_of(&k.cluster_id, &k.object)
}

fn key_object_key(k: &ObjectKeyRow) -> String {
    keys::key_of(&k.cluster_id, &k.object)
}

impl Protection {
    /// Reads a payload back and proves it: ciphertext hash, key, chunks, plaintext hash.
    pub async fn verify_object(
        &self,
        region: &Region,
        k: &ObjectKeyRow,
        expected_sha: &str,
        identities: &[&Identity],
    ) -> std::result::Result<(), String> {
        let pk = payload_key(k);
        let bytes = region.get(&pk).await.map_err(|e| e.to_string())?;
        let kk = key_object_key(k);
        let kb = region
            .get(&kk)
            .await
            .map_err(|e| format!("its key object: {e}"))?;
        let what = format!("region '{}', {}", region.name, kk);
        let ko = KeyObject::decode(&kb, &what).map_err(|e| e.to_string())?;
        let dek = ko.unwrap(identities, &what).map_err(|e| e.to_string())?;
        // Decrypt first: the authentication failure says what happened to the object.
        let what = format!("region '{}', {}", region.name, pk);
        let plain = open_all(&dek, &bytes, &ko.object_id, &what).map_err(|e| e.to_string())?;
        // A layer is named by its plaintext hash; an export's header carries it.
        let expected_id = if k.object.starts_with("secrets-") {
            None
        } else if k.object.starts_with("export-") {
            Some(hex::encode(ko.object_id))
        } else {
            Some(k.object.clone())
        };
        if let Some(expected_id) = expected_id {
            let id = hex::encode(Sha256::digest(&plain));
            if id != expected_id {
                return Err(format!(
                    "plaintext hashes to {}, not to the object's id",
                    &id[..16]
                ));
            }
        }
        let sha = hex::encode(Sha256::digest(&bytes));
        if sha != expected_sha {
            return Err(format!(
                "content hash {} differs from the recorded {}",
                &sha[..16],
                &expected_sha[..16.min(expected_sha.len())]
            ));
        }
        Ok(())
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
                        let wrong_size = !obj.starts_with("secrets-") && *size != k.object_size;
                        let reason = if full {
                            // Reading it back says precisely what happened to it.
                            self.verify_object(region, k, sha, &ids).await.err()
                        } else {
                            None
                        };
                        match (reason, wrong_size) {
                            (Some(r), true) => report.problems.push(problem(
                                &pk,
                                format!("{r} ({size} bytes instead of {})", k.object_size),
                            )),
                            (Some(r), false) => report.problems.push(problem(&pk, r)),
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
                broken.put(&p.object, Bytes::from(fresh.key_object)).await?;
                out.copied.push(format!(
                    "{} in '{}' (key object rewritten)",
                    p.object, p.region
                ));
                continue;
            }
            let sha = shipments
                .iter()
                .find(|(o, _, _)| *o == k.object)
                .map(|(_, _, s)| s.clone())
                .unwrap_or_default();
            let mut fixed = false;
            for good in self.regions.regions.iter().filter(|r| r.name != p.region) {
                let Ok(bytes) = good.get(&p.object).await else {
                    continue;
                };
                if hex::encode(Sha256::digest(&bytes)) != sha {
                    continue;
                }
                broken.put(&p.object, bytes).await?;
                out.copied.push(format!(
                    "{} from '{}' to '{}'",
                    p.object, good.name, p.region
                ));
                fixed = true;
                break;
            }
            if !fixed {
                // No good copy anywhere: ship again from the local layer, if it is still here.
                st.forget_shipment(&k.object, &p.region).await?;
                let _ = broken.delete(&p.object).await;
                match self.ship_region(broken, None).await {
                    Ok(_) => out
                        .reshipped
                        .push(format!("{} to '{}'", p.object, p.region)),
                    Err(e) => out.unrepaired.push(format!("{p}: {e}")),
                }
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
        }
        Ok(out)
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
