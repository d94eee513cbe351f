//! Timeline index objects: what a region holds of one timeline, signed by the appliance.
//!
//! ```text
//! magic "CAIRNIDX" 8 | version u16 = 2 | signer public key [32] | signature [64] | body (JSON)
//! signature = Ed25519(signer, magic || version || signer || body)
//! ```
//!
//! The body names the cluster, the timeline (ancestry, head, branch), every layer of the
//! timeline that is durable in this region *and* in `min_copies` regions, and the policy in
//! force. Index objects live at `clusters/CLUSTER/timelines/TIMELINE/index-GENERATION` (16 hex
//! digits): an appliance writes only its own generation, so two appliances never overwrite each
//! other, and a reader takes the highest generation *that verifies*.
//!
//! Invariants (a region is untrusted storage; everything a restore decides comes from here):
//! - The signature covers the index's own object path, so a validly signed index moved to
//!   another timeline's or generation's name is refused.
//! - Each layer entry binds the envelope's size and SHA-256, a commitment to its data key
//!   ([`crate::crypto::dek_commitment`]: a forged key object is refused), and for WAL layers the
//!   SHA-256 of the plaintext tail (metadata and trailer) that restores read by ranged reads
//!   before anything else: commit times, restore points and heads are believed only once they
//!   match it. The cluster's secrets object is bound the same way.
//! - A reader refuses an index that is unsigned or badly signed, signed by a key it does not
//!   trust, of format 1 (which bound none of the above), stored under another path than the
//!   one it names, or older than one it has already seen.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{open_blob, open_blob_versions, require_trusted, sign_blob, Signer};

pub const MAGIC: &[u8; 8] = b"CAIRNIDX";
pub const VERSION: u16 = 2;
/// The largest index object a reader fetches (an index names each layer in about 700 bytes).
pub const MAX_INDEX_BYTES: u64 = 64 << 20;

/// An envelope object the index vouches for: its id, size, SHA-256 and data key commitment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedRef {
    /// SHA-256 of the plaintext (hex).
    pub object_id: String,
    pub object_size: u64,
    pub object_sha256: String,
    pub dek_commitment: String,
}

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
    /// The cluster's secrets object (passwords), when shipped to this region.
    pub secrets: Option<SealedRef>,
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

/// The plaintext tail of a WAL layer file (metadata and trailer): its length and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalTail {
    pub len: u64,
    pub sha256: String,
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
    /// Commitment to the data key (see [`crate::crypto::dek_commitment`]).
    pub dek_commitment: String,
    /// WAL layers: the tail a restore reads before it downloads anything.
    pub tail: Option<WalTail>,
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
    /// The object key this index is stored under (bound by the signature).
    pub path: String,
    pub generation: u64,
    pub sequence: u64,
    pub written_at_us: i64,
    pub cluster: ClusterInfo,
    pub timeline: TimelineInfo,
    pub layers: Vec<IndexedLayer>,
    pub policy: PolicySnapshot,
    /// Fingerprint of the keyring data keys were wrapped for ([`crate::kit::keyring_fingerprint`]).
    pub keyring_fingerprint: String,
}

/// Object name of an index.
pub fn index_key(cluster: &str, timeline: &str, generation: u64) -> String {
    format!("clusters/{cluster}/timelines/{timeline}/index-{generation:016x}")
}

/// The generation in an index object's name.
pub fn generation_of(name: &str) -> Option<u64> {
    let g = name.rsplit('/').next()?.strip_prefix("index-")?;
    (g.len() == 16 && g.bytes().all(|b| b.is_ascii_hexdigit()))
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

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks what a restore later turns into file names, catalog rows and printed text.
fn validate_names(idx: &TimelineIndex) -> std::result::Result<(), String> {
    use cairn_engine::engine::validate_name;
    validate_name("cluster", &idx.cluster.name).map_err(|e| e.to_string())?;
    if let Some(b) = &idx.timeline.branch {
        validate_name("branch", &b.name).map_err(|e| e.to_string())?;
    }
    if let Some((a, _)) = &idx.timeline.ancestor {
        if !is_hex(a, 32) {
            return Err(format!("ancestor '{a}' is not a timeline id"));
        }
    }
    for l in &idx.layers {
        if !is_hex(&l.id, 64) {
            return Err("a layer id is not 64 hex digits".into());
        }
        if l.refs.iter().any(|r| !is_hex(r, 64)) {
            return Err(format!("layer {} references a malformed layer id", l.id));
        }
        if !is_hex(&l.key_id, 32) {
            return Err(format!("layer {} has a malformed key id", l.id));
        }
    }
    Ok(())
}

/// Decodes and verifies an index object read from `name` in `region`.
pub fn decode_verified(
    bytes: &[u8],
    name: &str,
    region: &str,
    trust: &Trust,
) -> Result<(TimelineIndex, [u8; 32])> {
    let what = format!("region '{region}', index {name}");
    let (version, signer, body) = open_blob_versions(MAGIC, &[1, VERSION], bytes, &what, "index")?;
    require_trusted(&signer, trust.signers, &what)?;
    if version == 1 {
        return Err(Error::tampered(
            &what,
            "is an index of format 1, which binds neither data keys, nor WAL metadata, nor its \
             own path: it is not trusted for restores (docs/FORMAT.md). The appliance that wrote \
             it rewrites it at format 2 on its next shipping round (`cairn backup now`)",
        ));
    }
    let idx: TimelineIndex = serde_json::from_slice(body)
        .map_err(|e| Error::tampered(&what, format!("body does not parse: {e}")))?;
    if idx.format != 2 {
        return Err(Error::tampered(
            &what,
            format!("unknown index format {}", idx.format),
        ));
    }
    if idx.path != name {
        return Err(Error::tampered(
            &what,
            format!(
                "was signed for {} (an index moved to another name, or an old one replayed)",
                idx.path
            ),
        ));
    }
    if index_key(&idx.cluster.id, &idx.timeline.id, idx.generation) != name {
        return Err(Error::tampered(
            &what,
            "names another cluster, timeline or generation than its path",
        ));
    }
    validate_names(&idx).map_err(|e| Error::tampered(&what, e))?;
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

/// Format 1 indexes, kept so that they still decode (and the golden vectors with them).
/// Readers refuse them for restores: they bind neither the data keys, nor the WAL metadata,
/// nor their own path (docs/FORMAT.md).
pub mod v1 {
    use super::*;

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
    pub struct IndexedLayer {
        pub id: String,
        pub kind: String,
        pub start: String,
        pub end: String,
        pub file_size: u64,
        pub logical_size: u64,
        pub stored_bytes: u64,
        pub created_at_us: i64,
        pub object_size: u64,
        pub object_sha256: String,
        pub key_id: String,
        pub refs: Vec<String>,
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

    /// Decodes and verifies a format 1 index (signature, signer, generation in the name).
    pub fn decode_verified(
        bytes: &[u8],
        name: &str,
        region: &str,
        signers: &[[u8; 32]],
    ) -> Result<(TimelineIndex, [u8; 32])> {
        let what = format!("region '{region}', index {name}");
        let (signer, body) = open_blob(MAGIC, 1, bytes, &what, "index")?;
        require_trusted(&signer, signers, &what)?;
        let idx: TimelineIndex = serde_json::from_slice(body)
            .map_err(|e| Error::tampered(&what, format!("body does not parse: {e}")))?;
        if idx.format != 1 || generation_of(name) != Some(idx.generation) {
            return Err(Error::tampered(&what, "not a format 1 index of this name"));
        }
        Ok((idx, signer))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const C: &str = "87d5f66a79bb26404ee382b2bad18677";
    pub const T: &str = "3f16a41e69f334efc49ad51731c9cf8b";
    pub const T2: &str = "4f16a41e69f334efc49ad51731c9cf8b";

    pub fn sample_at(timeline: &str, generation: u64, sequence: u64) -> TimelineIndex {
        TimelineIndex {
            format: 2,
            path: index_key(C, timeline, generation),
            generation,
            sequence,
            written_at_us: 1,
            cluster: ClusterInfo {
                id: C.into(),
                name: "shop".into(),
                kind: "managed".into(),
                pg_major: 15,
                system_id: "7".into(),
                segment_size: 16 << 20,
                tli: 1,
                created_at_us: 0,
                source: None,
                slot: None,
                secrets: None,
            },
            timeline: TimelineInfo {
                id: timeline.into(),
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
            keyring_fingerprint: "00".into(),
        }
    }

    pub fn sample(generation: u64, sequence: u64) -> TimelineIndex {
        sample_at(T, generation, sequence)
    }

    #[test]
    fn verification_refuses_every_forgery() {
        let (me, _) = Signer::generate();
        let (other, _) = Signer::generate();
        let trust = Trust {
            signers: &[me.public()],
            seen: Some((3, 5)),
        };
        let name = index_key(C, T, 3);
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
        // Generation 2's index replayed under generation 3's name: its signed path says so.
        assert!(err(&sample(2, 9).encode_signed(&me), &name).contains("signed for"));
        assert!(err(&sample(3, 4).encode_signed(&me), &name).contains("older"));
        // Timeline T's index copied to timeline T2's path.
        assert!(err(&good, &index_key(C, T2, 3)).contains("signed for"));
        // A path that agrees with the body's field but not with its ids.
        let mut lying = sample(3, 6);
        lying.timeline.id = T2.into();
        assert!(err(&lying.encode_signed(&me), &name).contains("another cluster"));
        // Names that would reach file names and terminals.
        let mut evil = sample(3, 6);
        evil.cluster.name = "shop\u{1b}[2J".into();
        assert!(err(&evil.encode_signed(&me), &name).contains("cluster"));
        // A format 1 body under a version 2 header, and a real version 1 blob.
        let mut old = sample(3, 6);
        old.format = 1;
        assert!(err(&old.encode_signed(&me), &name).contains("unknown index format 1"));
        let v1 = sign_blob(MAGIC, 1, &me, b"{}");
        assert!(err(&v1, &name).contains("format 1"));
        // Ids that would become paths and catalog rows: each malformed kind refused by name.
        let layer = |id: &str, key_id: &str, refs: &[&str]| IndexedLayer {
            id: id.into(),
            kind: "image".into(),
            start: "0/2000028".into(),
            end: "0/2000100".into(),
            file_size: 1,
            logical_size: 1,
            stored_bytes: 1,
            created_at_us: 0,
            object_size: 1,
            object_sha256: "00".repeat(32),
            key_id: key_id.into(),
            dek_commitment: "00".repeat(32),
            tail: None,
            refs: refs.iter().map(|r| r.to_string()).collect(),
        };
        let (id, key) = ("ab".repeat(32), "cd".repeat(16));
        let with = |l: IndexedLayer, ancestor: Option<&str>| {
            let mut i = sample(3, 6);
            i.layers = vec![l];
            i.timeline.ancestor = ancestor.map(|a| (a.to_string(), "0/3000000".to_string()));
            i.encode_signed(&me)
        };
        decode_verified(
            &with(layer(&id, &key, &[&id]), Some(T2)),
            &name,
            "a",
            &trust,
        )
        .unwrap();
        for (bytes, why) in [
            (with(layer(&id, &key, &[]), Some("../../etc")), "ancestor"),
            (
                with(layer(&id, &key, &[]), Some(&T2.to_uppercase())),
                "ancestor",
            ),
            (with(layer(&id[..62], &key, &[]), None), "layer id"),
            (with(layer(&id.to_uppercase(), &key, &[]), None), "layer id"),
            (
                with(layer(&format!("{}g", &id[..63]), &key, &[]), None),
                "layer id",
            ),
            (
                with(layer(&id, &key, &["../x"]), None),
                "malformed layer id",
            ),
            (with(layer(&id, &key[..30], &[]), None), "key id"),
        ] {
            let e = err(&bytes, &name);
            assert!(e.contains(why), "{why}: {e}");
        }
        // An index of 10,000 layers (a long-lived timeline) fits under the bound a reader
        // fetches, with room to spare.
        let mut big = sample(3, 6);
        big.layers = (0..10_000u32)
            .map(|n| layer(&format!("{n:064x}"), &key, &[]))
            .collect();
        let big = big.encode_signed(&me);
        assert!(
            (big.len() as u64) * 4 < MAX_INDEX_BYTES,
            "{} bytes",
            big.len()
        );
        assert_eq!(generation_of(&name), Some(3));
        assert_eq!(generation_of("clusters/c/timelines/t/index-xyz"), None);
        assert_eq!(
            generation_of("clusters/c/timelines/t/index-+00000000000000f"),
            None
        );
    }
}
