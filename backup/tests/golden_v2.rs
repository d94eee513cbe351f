//! Golden vectors of the formats that make a region untrusted storage (docs/FORMAT.md): index
//! format 2, region state format 1, trust file format 1 and recovery kit format 1, signed with
//! the test-only keys of `tests/golden/v1/`. They are written once, pinned by
//! `tests/golden/v2/SHA256SUMS`, and must decode to the same values forever.
//!
//! Written only when the directory does not exist yet:
//! `CAIRN_WRITE_GOLDEN_V2=1 cargo test -p cairn-backup --test golden_v2` (the writer refuses to
//! overwrite a released version; a format change adds a version with its own goldens).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_backup::index::{
    decode_verified, index_key, BranchName, ClusterInfo, IndexedLayer, PolicySnapshot, SealedRef,
    TimelineIndex, TimelineInfo, Trust, WalTail,
};
use cairn_backup::keys::{Identity, RecipientEntry, Signer};
use cairn_backup::kit::{keyring_fingerprint, RecoveryKit};
use cairn_backup::region_state::{state_key, RegionState, TimelineMark};
use cairn_backup::trust::TrustState;
use sha2::{Digest, Sha256};

const C: &str = "87d5f66a79bb26404ee382b2bad18677";
const T: &str = "3f16a41e69f334efc49ad51731c9cf8b";
const FILES: [&str; 4] = ["index", "state", "trust", "recovery.kit"];

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v2")
}

fn keys() -> (Identity, Signer) {
    let v1 = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1");
    let identity = Identity::load(&v1.join("identity.age")).unwrap();
    let signer = Signer::from_pkcs8(&std::fs::read(v1.join("signing.pkcs8")).unwrap()).unwrap();
    (identity, signer)
}

fn keyring(identity: &Identity) -> Vec<RecipientEntry> {
    vec![RecipientEntry {
        recipient: identity.recipient.clone(),
        role: "appliance".into(),
        label: "golden appliance".into(),
    }]
}

fn index(identity: &Identity) -> TimelineIndex {
    TimelineIndex {
        format: 2,
        path: index_key(C, T, 3),
        generation: 3,
        sequence: 7,
        written_at_us: 1_795_431_976_000_000,
        cluster: ClusterInfo {
            id: C.into(),
            name: "shop".into(),
            kind: "managed".into(),
            pg_major: 15,
            system_id: "7711329878729406627".into(),
            segment_size: 16 << 20,
            tli: 1,
            created_at_us: 1_795_431_900_000_000,
            source: None,
            slot: None,
            secrets: Some(SealedRef {
                object_id: "11".repeat(32),
                object_size: 160,
                object_sha256: "22".repeat(32),
                dek_commitment: "33".repeat(32),
            }),
        },
        timeline: TimelineInfo {
            id: T.into(),
            ancestor: None,
            head: "0/5000000".into(),
            ancestor_prev: None,
            created_at_us: 1_795_431_900_000_000,
            branch: Some(BranchName {
                name: "main".into(),
                protected: true,
            }),
        },
        layers: vec![IndexedLayer {
            id: "8f9a8941f53c88d544d826ac8d751461360b4c690e457793f56f9d3c31ceba5d".into(),
            kind: "wal".into(),
            start: "0/2000028".into(),
            end: "0/5000000".into(),
            file_size: 1445,
            logical_size: 50_331_608,
            stored_bytes: 1445,
            created_at_us: 1_795_431_901_000_000,
            object_size: 1525,
            object_sha256: "44".repeat(32),
            key_id: "55".repeat(16),
            dek_commitment: "66".repeat(32),
            tail: Some(WalTail {
                len: 312,
                sha256: "77".repeat(32),
            }),
            refs: vec![],
        }],
        policy: PolicySnapshot {
            min_copies: 2,
            regions: vec!["region-a".into(), "region-b".into()],
        },
        keyring_fingerprint: keyring_fingerprint(&keyring(identity)),
    }
}

fn state(identity: &Identity) -> RegionState {
    let mut timelines = BTreeMap::new();
    timelines.insert(
        T.to_string(),
        TimelineMark {
            cluster: C.into(),
            generation: 3,
            sequence: 7,
        },
    );
    RegionState {
        format: 1,
        path: state_key(3),
        region: "region-a".into(),
        generation: 3,
        sequence: 12,
        written_at_us: 1_795_431_977_000_000,
        keyring: keyring(identity),
        keyring_fingerprint: keyring_fingerprint(&keyring(identity)),
        timelines,
    }
}

fn trust(identity: &Identity) -> TrustState {
    TrustState {
        format: 1,
        sequence: 4,
        written_at_us: 1_795_431_978_000_000,
        recipients: keyring(identity),
        signers: vec!["ab".repeat(32)],
        fenced: true,
    }
}

fn sha256sums(d: &Path) -> String {
    FILES
        .iter()
        .map(|f| {
            let b = std::fs::read(d.join(f)).unwrap();
            format!("{}  {f}\n", hex::encode(Sha256::digest(&b)))
        })
        .collect()
}

fn write_golden() {
    let d = dir();
    assert!(
        !d.exists(),
        "{} exists: released golden vectors are never rewritten; a format change adds a new \
         version directory",
        d.display()
    );
    std::fs::create_dir_all(&d).unwrap();
    let (identity, signer) = keys();
    std::fs::write(d.join("index"), index(&identity).encode_signed(&signer)).unwrap();
    std::fs::write(d.join("state"), state(&identity).encode_signed(&signer)).unwrap();
    trust(&identity).save(&d.join("trust"), &signer).unwrap();
    RecoveryKit {
        signers: vec![signer.public()],
        keyring: keyring(&identity),
        identity: Some(identity.clone()),
    }
    .write(&d.join("recovery.kit"))
    .unwrap();
    std::fs::write(d.join("SHA256SUMS"), sha256sums(&d)).unwrap();
}

#[test]
fn untrusted_region_formats_decode_forever() {
    if std::env::var_os("CAIRN_WRITE_GOLDEN_V2").is_some() {
        write_golden();
    }
    let d = dir();
    assert_eq!(
        std::fs::read_to_string(d.join("SHA256SUMS")).unwrap(),
        sha256sums(&d),
        "a golden file changed: released vectors are frozen"
    );
    // And the list itself is pinned here, so that no rewrite of both can pass.
    assert_eq!(
        hex::encode(Sha256::digest(std::fs::read(d.join("SHA256SUMS")).unwrap())),
        "f3f86541d83ad3e614b1cb515d83f35d81df2c7fd7188a6b18144e0e4dbcc11d"
    );
    let (identity, signer) = keys();
    let (idx, who) = decode_verified(
        &std::fs::read(d.join("index")).unwrap(),
        &index_key(C, T, 3),
        "golden",
        &Trust {
            signers: &[signer.public()],
            seen: Some((3, 7)),
        },
    )
    .unwrap();
    assert_eq!(who, signer.public());
    assert_eq!(idx, index(&identity));
    let s = RegionState::decode_verified(
        &std::fs::read(d.join("state")).unwrap(),
        &state_key(3),
        "golden",
        &[signer.public()],
    )
    .unwrap();
    assert_eq!(s, state(&identity));
    let t = TrustState::load(&d.join("trust"), &signer)
        .unwrap()
        .unwrap();
    assert_eq!(t, trust(&identity));
    let kit = RecoveryKit::load(&d.join("recovery.kit")).unwrap();
    assert_eq!(kit.signers, vec![signer.public()]);
    assert_eq!(kit.keyring, keyring(&identity));
    assert_eq!(kit.identity.unwrap().recipient, identity.recipient);
    // Layouts as documented: the signed prefix and the kit's first line.
    let raw = std::fs::read(d.join("index")).unwrap();
    assert_eq!(&raw[..8], b"CAIRNIDX");
    assert_eq!(u16::from_le_bytes([raw[8], raw[9]]), 2);
    let raw = std::fs::read(d.join("state")).unwrap();
    assert_eq!(&raw[..8], b"CAIRNRST");
    let text = std::fs::read_to_string(d.join("recovery.kit")).unwrap();
    assert!(text.lines().any(|l| l == cairn_backup::kit::HEADER));
}
