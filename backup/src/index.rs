//! Timeline index objects: what a region holds of one timeline, signed by the appliance.
//!
//! ```text
//! magic "CAIRNIDX" 8 | version u16 = 1 | signer public key [32] | signature [64] | body (JSON)
//! signature = Ed25519(signer, magic || version || signer || body)
//! ```
//!
//! The body names the cluster, the timeline (ancestry, head, branch), every layer of the
//! timeline that is durable in this region *and* in `min_copies` regions (with plaintext and
//! ciphertext SHA-256, sizes, key id, referenced layers), and the policy in force. Index objects
//! live at `clusters/CLUSTER/timelines/TIMELINE/index-GENERATION` (16 hex digits): an appliance
//! writes only its own generation, so two appliances never overwrite each other, and a reader
//! takes the highest generation. A reader refuses an index that is unsigned or badly signed, is
//! signed by a key it does not trust, names a generation other than its object name's, or is
//! older than one it has already seen.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{open_blob, require_trusted, sign_blob, Signer};

pub const MAGIC: &[u8; 8] = b"CAIRNIDX";
pub const VERSION: u16 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub pg_major: u32,
    pub system_id: String,
    pub segment_size: u64,
    pub tli: u32,
    pub created_at_us: i64,
    pub source: Option<String>,
    pub slot: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchName {
    pub name: String,
    pub protected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineInfo {
    pub id: String,
    pub ancestor: Option<(String, String)>,
    pub head: String,
    /// Start of the record ending at the branch point.
    pub ancestor_prev: Option<String>,
    pub created_at_us: i64,
    pub branch: Option<BranchName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexedLayer {
    pub id: String,
    pub kind: String,
    pub start: String,
    pub end: String,
    pub file_size: u64,
    pub logical_size: u64,
    pub stored_bytes: u64,
    pub created_at_us: i64,
    /// Size and SHA-256 of the encrypted object.
    pub object_size: u64,
    pub object_sha256: String,
    pub key_id: String,
    /// Layers whose pieces this image references.
    pub refs: Vec<String>,
}

/// The part of the protection policy an index was written under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySnapshot {
    pub min_copies: u32,
    pub regions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineIndex {
    pub format: u32,
    pub generation: u64,
    pub sequence: u64,
    pub written_at_us: i64,
    pub cluster: ClusterInfo,
    pub timeline: TimelineInfo,
    pub layers: Vec<IndexedLayer>,
    pub policy: PolicySnapshot,
}

/// Object name of an index.
pub fn index_key(cluster: &str, timeline: &str, generation: u64) -> String {
    format!("clusters/{cluster}/timelines/{timeline}/index-{generation:016x}")
}

/// The generation in an index object's name.
pub fn generation_of(name: &str) -> Option<u64> {
    let g = name.rsplit('/').next()?.strip_prefix("index-")?;
    (g.len() == 16)
        .then(|| u64::from_str_radix(g, 16).ok())
        .flatten()
}

impl TimelineIndex {
    pub fn encode_signed(&self, signer: &Signer) -> Vec<u8> {
        let body = serde_json::to_vec(self).expect("index serialises");
        sign_blob(MAGIC, VERSION, signer, &body)
    }
}

/// How a reader decides whether to believe an index.
pub struct Trust<'a> {
    /// Ed25519 public keys whose signatures are accepted.
    pub signers: &'a [[u8; 32]],
    /// The highest (generation, sequence) already seen for this timeline here, if any.
    pub seen: Option<(u64, u64)>,
}

/// Decodes and verifies an index object read from `name` in `region`.
pub fn decode_verified(
    bytes: &[u8],
    name: &str,
    region: &str,
    trust: &Trust,
) -> Result<(TimelineIndex, [u8; 32])> {
    let what = format!("region '{region}', index {name}");
    let (signer, body) = open_blob(MAGIC, VERSION, bytes, &what, "index")?;
    require_trusted(&signer, trust.signers, &what)?;
    let idx: TimelineIndex = serde_json::from_slice(body)
        .map_err(|e| Error::tampered(&what, format!("body does not parse: {e}")))?;
    if idx.format != 1 {
        return Err(Error::tampered(
            &what,
            format!("unknown index format {}", idx.format),
        ));
    }
    if generation_of(name) != Some(idx.generation) {
        return Err(Error::tampered(
            &what,
            format!(
                "holds generation {} under the name of another generation (an old index replayed)",
                idx.generation
            ),
        ));
    }
    if let Some((g, s)) = trust.seen {
        if (idx.generation, idx.sequence) < (g, s) {
            return Err(Error::tampered(
                &what,
                format!(
                    "is older (generation {}, sequence {}) than the index already seen \
                     (generation {g}, sequence {s}): an old index was replayed",
                    idx.generation, idx.sequence
                ),
            ));
        }
    }
    Ok((idx, signer))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample(generation: u64, sequence: u64) -> TimelineIndex {
        TimelineIndex {
            format: 1,
            generation,
            sequence,
            written_at_us: 1,
            cluster: ClusterInfo {
                id: "c".into(),
                name: "shop".into(),
                kind: "managed".into(),
                pg_major: 15,
                system_id: "7".into(),
                segment_size: 16 << 20,
                tli: 1,
                created_at_us: 0,
                source: None,
                slot: None,
            },
            timeline: TimelineInfo {
                id: "t".into(),
                ancestor: None,
                head: "0/3000000".into(),
                ancestor_prev: None,
                created_at_us: 0,
                branch: Some(BranchName {
                    name: "main".into(),
                    protected: true,
                }),
            },
            layers: vec![],
            policy: PolicySnapshot {
                min_copies: 2,
                regions: vec!["a".into(), "b".into()],
            },
        }
    }

    #[test]
    fn verification_refuses_every_forgery() {
        let (me, _) = Signer::generate();
        let (other, _) = Signer::generate();
        let trust = Trust {
            signers: &[me.public()],
            seen: Some((3, 5)),
        };
        let name = index_key("c", "t", 3);
        let good = sample(3, 6).encode_signed(&me);
        let (idx, _) = decode_verified(&good, &name, "a", &trust).unwrap();
        assert_eq!(idx.sequence, 6);
        let err = |bytes: &[u8], name: &str| {
            decode_verified(bytes, name, "a", &trust)
                .unwrap_err()
                .to_string()
        };
        let mut flipped = good.clone();
        let n = flipped.len();
        flipped[n - 5] ^= 1;
        assert!(err(&flipped, &name).contains("signature does not verify"));
        assert!(err(&sample(3, 6).encode_signed(&other), &name).contains("not a trusted"));
        assert!(err(&serde_json::to_vec(&sample(3, 6)).unwrap(), &name).contains("unsigned"));
        assert!(err(&sample(2, 9).encode_signed(&me), &name).contains("replayed"));
        assert!(err(&sample(3, 4).encode_signed(&me), &name).contains("older"));
        assert_eq!(generation_of(&name), Some(3));
        assert_eq!(generation_of("clusters/c/timelines/t/index-xyz"), None);
    }
}
