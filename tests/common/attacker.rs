//! The attacker of the hostile-region tests: someone who can write one region and holds none
//! of the appliance's keys (or, for one attack, a data key of a removed escrow holder), using
//! cairn's public formats and its own region client as anyone could.
#![allow(dead_code)]

use std::collections::BTreeMap;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use cairn_backup::crypto::keyobj::KeyObject;
use cairn_backup::crypto::stream::{open_all, seal_all, Compression, Header, ObjectKind};
use cairn_backup::index::TimelineIndex;
use cairn_backup::keys::{sign_blob, Identity, RecipientEntry, Signer};
use cairn_backup::region::{Region, RegionConfig};
use cairn_engine::layer::wal::WalMeta;

use super::Env;

/// Someone with write access to a region and none of the appliance's keys.
pub struct Attacker {
    pub identity: Identity,
    pub signer: Signer,
}

impl Attacker {
    pub fn new() -> Attacker {
        let inner = age::x25519::Identity::generate();
        let recipient = inner.to_public().to_string();
        Attacker {
            identity: Identity { inner, recipient },
            signer: Signer::generate().0,
        }
    }

    pub fn entry(&self) -> RecipientEntry {
        RecipientEntry {
            recipient: self.identity.recipient.clone(),
            role: "escrow".into(),
            label: "vault".into(),
        }
    }

    /// Opens every key object of `region` with the attacker's identity: none may open.
    pub async fn assert_opens_nothing(&self, region: &Region) {
        let mut tried = 0;
        for (k, _) in region.list("clusters").await.unwrap() {
            if !k.contains("/keys/") {
                continue;
            }
            let b = region.get(&k).await.unwrap();
            let Ok(ko) = KeyObject::decode(&b, &k) else {
                continue;
            };
            tried += 1;
            assert!(
                ko.unwrap(&[&self.identity], &k).is_err(),
                "the attacker opened {k} in '{}'",
                region.name
            );
        }
        assert!(
            tried > 0,
            "there were key objects to try in '{}'",
            region.name
        );
    }
}

pub fn connect_region(name: &str, url: String) -> Region {
    Region::connect(&RegionConfig {
        name: name.into(),
        url,
        endpoint: None,
        s3_region: None,
        credentials_file: None,
        allow_http: false,
        tags: BTreeMap::new(),
    })
    .unwrap()
}

pub fn file_region_of(env: &Env, name: &str) -> Region {
    connect_region(
        name,
        format!(
            "file://{}",
            env.dir.path().join("regions").join(name).display()
        ),
    )
}

/// The signed indexes of a region, by object key (decoded without verification: the attacker
/// reads what anyone can read).
pub async fn indexes(region: &Region) -> Vec<(String, TimelineIndex)> {
    let mut out = Vec::new();
    for (k, _) in region.list("clusters").await.unwrap() {
        if k.contains("/timelines/") {
            let b = region.get(&k).await.unwrap();
            if let Ok(idx) = serde_json::from_slice::<TimelineIndex>(&b[106..]) {
                out.push((k, idx));
            }
        }
    }
    out
}

/// Replaces a layer's key object and envelope with the attacker's: a data key of their own,
/// wrapped for the appliance's public recipient (read from the region's key objects), sealing
/// junk under the layer's id.
pub async fn forge_layer(region: &Region, cluster: &str, layer: &str) {
    let kk = format!("clusters/{cluster}/keys/{layer}");
    let real = KeyObject::decode(&region.get(&kk).await.unwrap(), "k").unwrap();
    let dek = [7u8; 32];
    let forged = KeyObject::wrap(&dek, real.object_id, real.key_id, &real.recipients).unwrap();
    region.put(&kk, Bytes::from(forged.encode())).await.unwrap();
    let header = Header {
        kind: ObjectKind::Layer,
        compression: Compression::None,
        chunk_size: 1 << 20,
        object_id: real.object_id,
        key_id: real.key_id,
    };
    let junk = vec![0x41u8; 4096];
    region
        .put(
            &format!("clusters/{cluster}/layers/{layer}"),
            Bytes::from(seal_all(&dek, &header, &junk)),
        )
        .await
        .unwrap();
}

/// Someone who knows a WAL layer's data key (a removed escrow holder) moves the times of its
/// commits: same object size, valid AEAD, valid metadata checksum. Returns the layer id.
pub async fn plant_commit_times(
    region: &Region,
    cluster: &str,
    wal_layers: &[String],
    key_holder: &Identity,
) -> String {
    for layer in wal_layers {
        let kk = format!("clusters/{cluster}/keys/{layer}");
        let pk = format!("clusters/{cluster}/layers/{layer}");
        let ko = KeyObject::decode(&region.get(&kk).await.unwrap(), "k").unwrap();
        let dek = ko.unwrap(&[key_holder], "k").unwrap();
        let sealed = region.get(&pk).await.unwrap();
        let plain = open_all(&dek, &sealed, &ko.object_id, "p").unwrap();
        let n = plain.len();
        let trailer = &plain[n - 56..];
        let meta_offset = u64::from_le_bytes(trailer[0..8].try_into().unwrap()) as usize;
        let meta_len = u64::from_le_bytes(trailer[8..16].try_into().unwrap()) as usize;
        let compressed = &plain[meta_offset..meta_offset + meta_len];
        let meta = WalMeta::decode(&zstd::decode_all(compressed).unwrap()).unwrap();
        if !meta
            .events
            .iter()
            .any(|e| e.kind == cairn_engine::wal::EventKind::Commit)
        {
            continue;
        }
        // Every event moved to one time an hour before the earliest, re-compressed and padded
        // with a zstd skippable frame to exactly the old length: a valid frame sequence of the
        // same size (equal times compress better than the genuine ones, which makes room for
        // the padding frame's header).
        let earliest = meta.events.iter().map(|e| e.time_us).min().unwrap_or(0);
        let mut m = meta.clone();
        for e in &mut m.events {
            e.time_us = earliest - 3_600_000_000;
        }
        let raw = m.encode();
        let Some(c) = (1..=22)
            .rev()
            .find_map(|level| same_length_frames(&raw, level, meta_len))
        else {
            continue;
        };
        assert_eq!(
            WalMeta::decode(&zstd::decode_all(&c[..]).unwrap()).unwrap(),
            m,
            "the forged metadata decodes"
        );
        let mut forged = plain[..meta_offset].to_vec();
        forged.extend_from_slice(&c);
        forged.extend_from_slice(&(meta_offset as u64).to_le_bytes());
        forged.extend_from_slice(&(meta_len as u64).to_le_bytes());
        forged.extend_from_slice(&Sha256::digest(&c));
        forged.extend_from_slice(b"CAIRNEND");
        assert_eq!(forged.len(), n);
        let header = Header::decode(&sealed, "h").unwrap();
        let resealed = seal_all(&dek, &header, &forged);
        assert_eq!(resealed.len(), sealed.len(), "same object size");
        region.put(&pk, Bytes::from(resealed)).await.unwrap();
        return layer.clone();
    }
    panic!("no WAL layer with commits could be re-encoded to the same size");
}

/// `raw` as one zstd frame at `level` (no content size, checksum or dictionary id), padded
/// with a skippable frame to exactly `len` bytes; `None` when it does not fit.
fn same_length_frames(raw: &[u8], level: i32, len: usize) -> Option<Vec<u8>> {
    let mut z = zstd::bulk::Compressor::new(level).ok()?;
    z.include_contentsize(false).ok()?;
    z.include_checksum(false).ok()?;
    z.include_dictid(false).ok()?;
    let mut c = z.compress(raw).ok()?;
    if c.len() == len {
        return Some(c);
    }
    let pad = len.checked_sub(c.len() + 8)?;
    c.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    c.extend_from_slice(&(pad as u32).to_le_bytes());
    c.extend(std::iter::repeat_n(0u8, pad));
    Some(c)
}

/// Plants, next to main's index in `region`: junk under the highest generation name, and one
/// generation below a well-formed index signed by the attacker's own key. Returns main's
/// genuine index and the prefix of its timeline.
pub async fn plant_indexes(region: &Region, attacker: &Attacker) -> (TimelineIndex, String) {
    let idx = indexes(region).await;
    let (main_key, main_idx) = idx
        .iter()
        .find(|(_, i)| i.timeline.branch.as_ref().is_some_and(|b| b.name == "main"))
        .cloned()
        .unwrap();
    let prefix = main_key.rsplit_once('/').unwrap().0.to_string();
    region
        .put(
            &format!("{prefix}/index-ffffffffffffffff"),
            Bytes::from_static(b"not an index at all"),
        )
        .await
        .unwrap();
    let mut forged = main_idx.clone();
    forged.generation = u64::MAX - 1;
    forged.path = format!("{prefix}/index-fffffffffffffffe");
    forged.layers.truncate(1);
    region
        .put(
            &forged.path,
            Bytes::from(sign_blob(
                b"CAIRNIDX",
                2,
                &attacker.signer,
                &serde_json::to_vec(&forged).unwrap(),
            )),
        )
        .await
        .unwrap();
    (main_idx, prefix)
}
