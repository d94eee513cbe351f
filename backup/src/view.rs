//! What a region holds, as far as it can be believed: the newest *valid* index of every
//! timeline, checked against the region's signed state and against what this appliance has
//! already seen, with every object that was set aside and why.
//!
//! Invariants (a region is untrusted storage):
//! - Trust is given, never learnt: only indexes and states signed by the caller's trusted keys
//!   count; there is no trust on first use. An empty trust set is refused with the way out.
//! - Junk never blocks: per timeline, index objects are tried from the highest generation down
//!   and the first one that verifies wins; an oversized, unsigned, forged, moved or unknown
//!   object is set aside as [`Rejected`] (region, object, reason) and reading goes on.
//! - Rollbacks are reported: an index older than the caller has seen, or than the region's
//!   newest valid state says, is set aside too, and its timeline is left out rather than
//!   served stale.

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};
use crate::index::{decode_verified, generation_of, TimelineIndex, Trust, MAX_INDEX_BYTES};
use crate::region::Region;
use crate::region_state::{self, RegionState, MAX_STATE_BYTES};
use crate::shred::{ShredRecord, MAX_RECORD_BYTES};

/// An object a reader did not believe.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    pub region: String,
    pub object: String,
    pub reason: String,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "region '{}', {}: {}",
            self.region, self.object, self.reason
        )
    }
}

/// The believable content of one region.
#[derive(Debug, Clone)]
pub struct RegionView {
    pub region: String,
    /// The newest valid index of each timeline.
    pub indexes: Vec<TimelineIndex>,
    /// The newest valid state object, when there is one.
    pub state: Option<RegionState>,
    pub rejected: Vec<Rejected>,
    /// Signers of the indexes accepted.
    pub signers: Vec<[u8; 32]>,
    /// Valid records of clusters that were crypto-shredded (their indexes are left out).
    pub shredded: Vec<ShredRecord>,
}

/// Strips the `region 'R', OBJECT: ` prefix an error repeats.
fn reason_of(e: &Error) -> String {
    match e {
        Error::Tampered { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// An index object found by listing: (generation, key, size).
type Candidate = (u64, String, u64);

/// Reads a small object of `size` bytes (as listed) and decodes it with `decode`. Anything
/// wrong with it — too large, unreadable for good, not decoding — is set aside in `rejected`
/// (`None`); only a region that cannot be reached now is an error.
async fn fetch_decoded<T>(
    region: &Region,
    key: &str,
    size: u64,
    max: u64,
    kind: &str,
    rejected: &mut Vec<Rejected>,
    decode: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<Option<T>> {
    let reject = |reason: String| Rejected {
        region: region.name.clone(),
        object: key.to_string(),
        reason,
    };
    if size > max {
        rejected.push(reject(format!(
            "is {size} bytes, more than {kind} can be: not read"
        )));
        return Ok(None);
    }
    let bytes = match region.get_bounded(key, max).await {
        Ok(b) => b,
        Err(e) if e.retryable() => return Err(e),
        Err(e) => {
            rejected.push(reject(reason_of(&e)));
            return Ok(None);
        }
    };
    match decode(&bytes) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            rejected.push(reject(reason_of(&e)));
            Ok(None)
        }
    }
}

/// Reads the newest valid state object of a region.
async fn read_state(
    region: &Region,
    signers: &[[u8; 32]],
    rejected: &mut Vec<Rejected>,
) -> Result<Option<RegionState>> {
    let mut names: Vec<(u64, String, u64)> = region
        .list("state")
        .await?
        .into_iter()
        .filter_map(|(k, size)| region_state::generation_of(&k).map(|g| (g, k, size)))
        .collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.0));
    for (_, key, size) in names {
        let decode = |b: &[u8]| RegionState::decode_verified(b, &key, &region.name, signers);
        let found = fetch_decoded(
            region,
            &key,
            size,
            MAX_STATE_BYTES,
            "a state object",
            rejected,
            decode,
        )
        .await?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Reads what `region` holds that `signers` vouch for. `seen` maps timeline ids to the
/// highest (generation, sequence) this reader already saw there.
pub async fn read_region(
    region: &Region,
    signers: &[[u8; 32]],
    seen: &HashMap<String, (u64, u64)>,
) -> Result<RegionView> {
    if signers.is_empty() {
        return Err(Error::Refused(
            "no signing key is trusted here, so no index can be believed: pass the recovery kit \
             of the appliance that wrote the backups (--recovery-kit FILE)"
                .into(),
        ));
    }
    let mut rejected = Vec::new();
    let state = read_state(region, signers, &mut rejected).await?;
    let mut candidates: BTreeMap<(String, String), Vec<Candidate>> = BTreeMap::new();
    let mut shredded = Vec::new();
    for (key, size) in region.list("clusters").await? {
        let parts: Vec<&str> = key.split('/').collect();
        if let ["clusters", _, "shredded"] = parts.as_slice() {
            let decode = |b: &[u8]| ShredRecord::decode_verified(b, &key, &region.name, signers);
            shredded.extend(
                fetch_decoded(
                    region,
                    &key,
                    size,
                    MAX_RECORD_BYTES,
                    "a shred record",
                    &mut rejected,
                    decode,
                )
                .await?,
            );
            continue;
        }
        if let ["clusters", c, "timelines", t, name] = parts.as_slice() {
            match generation_of(name) {
                Some(g) => candidates
                    .entry((c.to_string(), t.to_string()))
                    .or_default()
                    .push((g, key.clone(), size)),
                None => rejected.push(Rejected {
                    region: region.name.clone(),
                    object: key.clone(),
                    reason: "is not a cairn object name: ignored".into(),
                }),
            }
        }
    }
    let mut indexes = Vec::new();
    let mut accepted_signers: Vec<[u8; 32]> = Vec::new();
    for ((_, t), mut list) in candidates {
        list.sort_by_key(|n| std::cmp::Reverse(n.0));
        let trust = Trust {
            signers,
            seen: seen.get(&t).copied(),
        };
        for (_, key, size) in list {
            let decode = |b: &[u8]| decode_verified(b, &key, &region.name, &trust);
            let found = fetch_decoded(
                region,
                &key,
                size,
                MAX_INDEX_BYTES,
                "an index",
                &mut rejected,
                decode,
            )
            .await?;
            if let Some((idx, signer)) = found {
                if !accepted_signers.contains(&signer) {
                    accepted_signers.push(signer);
                }
                indexes.push(idx);
                break;
            }
        }
    }
    // A shredded cluster's indexes may outlive it for the deletion delay: never serve them.
    indexes.retain(|i| !shredded.iter().any(|r| r.cluster_id == i.cluster.id));
    // The region's own high-water marks.
    if let Some(s) = &state {
        let mut kept = Vec::with_capacity(indexes.len());
        for idx in indexes {
            match s.mark(&idx.timeline.id) {
                Some(mark) if (idx.generation, idx.sequence) < mark => {
                    rejected.push(Rejected {
                        region: region.name.clone(),
                        object: idx.path.clone(),
                        reason: format!(
                            "is older (generation {}, sequence {}) than the region's signed \
                             state {} says (generation {}, sequence {}): the index was rolled \
                             back or replayed",
                            idx.generation, idx.sequence, s.path, mark.0, mark.1
                        ),
                    });
                }
                _ => kept.push(idx),
            }
        }
        indexes = kept;
        for (t, m) in &s.timelines {
            if shredded.iter().any(|r| r.cluster_id == m.cluster) {
                continue;
            }
            if !indexes.iter().any(|i| &i.timeline.id == t) {
                rejected.push(Rejected {
                    region: region.name.clone(),
                    object: format!("clusters/{}/timelines/{t}", m.cluster),
                    reason: format!(
                        "the region's signed state {} names this timeline (generation {}, \
                         sequence {}) but no valid index of it is here (deleted or replaced)",
                        s.path, m.generation, m.sequence
                    ),
                });
            }
        }
    }
    Ok(RegionView {
        region: region.name.clone(),
        indexes,
        state,
        rejected,
        signers: accepted_signers,
        shredded,
    })
}
