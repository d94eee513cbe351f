//! Golden vectors of the protection formats, version 1: an envelope object, its key object,
//! a signed index and an export file, written once and checked in under `tests/golden/v1/`,
//! with the (test-only) age identity and signing key that open and verify them. They are
//! pinned by SHA-256 ([`PINNED`]) and must decode to the same values forever; a format change
//! bumps a version and adds its own vectors (see `golden_v2.rs`). The writers that produced
//! them (`CAIRN_WRITE_GOLDEN=1`, `CAIRN_WRITE_GOLDEN_EXPORT=1`) refuse to overwrite a file.

use std::path::PathBuf;

use cairn_backup::crypto::keyobj::KeyObject;
use cairn_backup::crypto::stream::{open_all, seal_all, Compression, Header, ObjectKind};
use cairn_backup::export::{decrypt_file, Manifest, SignerTrust};
use cairn_backup::index::{index_key, v1};
use cairn_backup::keys::{Identity, RecipientEntry, Signer};
use sha2::{Digest, Sha256};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1")
}

/// Every version 1 golden file and its SHA-256: released vectors never change.
const PINNED: [(&str, &str); 6] = [
    (
        "export-file",
        "2d0813fb4c5fcea131d899ab316714b105e245f20696aedd853e79ec078faa0a",
    ),
    (
        "identity.age",
        "73264c21766c591fadd21a1af3bfff794039af55aa42f38d81c47be1b145c380",
    ),
    (
        "index",
        "2fd0c0928a6a1534a49bfe9d064c5735bfe11769f436626b6027801750fcb76a",
    ),
    (
        "key",
        "9cf7f657b0816902364f041a33ff9389efc5b19d3c7da50b2d2a5170c5547788",
    ),
    (
        "object",
        "40209ea4d8e94f61a9422b439e070b952435a55c1e7cf81c13e1a044014d0434",
    ),
    (
        "signing.pkcs8",
        "e4c174290a69e9893cf55caaa540946f9998e7ce473d0cd8ef9ee21359c10980",
    ),
];

/// Writers never replace a released vector.
fn refuse_overwrite(files: &[&str]) {
    for f in files {
        assert!(
            !dir().join(f).exists(),
            "{f} exists: released golden vectors are never rewritten; a format change adds a \
             new version directory"
        );
    }
}

#[test]
fn version_1_files_are_pinned() {
    let mut found: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let pinned: Vec<&str> = PINNED.iter().map(|(f, _)| *f).collect();
    assert_eq!(found, pinned);
    for (f, hash) in PINNED {
        let got = hex::encode(Sha256::digest(std::fs::read(dir().join(f)).unwrap()));
        assert_eq!(got, hash, "{f} changed: released golden vectors are frozen");
    }
}

fn plaintext() -> Vec<u8> {
    // Three chunks of 64 bytes and a short last one.
    (0..200u32).map(|i| (i * 7 % 256) as u8).collect()
}

fn index_json() -> &'static str {
    r#"{"format":1,"generation":3,"sequence":7,"written_at_us":1795431976000000,
"cluster":{"id":"87d5f66a79bb26404ee382b2bad18677","name":"shop","kind":"managed","pg_major":15,
"system_id":"7711329878729406627","segment_size":16777216,"tli":1,"created_at_us":1795431900000000,
"source":null,"slot":null},
"timeline":{"id":"3f16a41e69f334efc49ad51731c9cf8b","ancestor":null,"head":"0/5000000",
"ancestor_prev":null,"created_at_us":1795431900000000,"branch":{"name":"main","protected":true}},
"layers":[{"id":"8f9a8941f53c88d544d826ac8d751461360b4c690e457793f56f9d3c31ceba5d","kind":"wal",
"start":"0/2000028","end":"0/5000000","file_size":1445,"logical_size":50331608,"stored_bytes":1445,
"created_at_us":1795431901000000,"object_size":1525,"object_sha256":"00","key_id":"11","refs":[]}],
"policy":{"min_copies":2,"regions":["region-a","region-b"]}}"#
}

fn write_golden() {
    refuse_overwrite(&["identity.age", "signing.pkcs8", "object", "key", "index"]);
    let d = dir();
    std::fs::create_dir_all(&d).unwrap();
    let id = age::x25519::Identity::generate();
    std::fs::write(
        d.join("identity.age"),
        format!(
            "# test-only identity for the golden vectors\n{}\n",
            age::secrecy::ExposeSecret::expose_secret(&id.to_string())
        ),
    )
    .unwrap();
    let (signer, pkcs8) = Signer::generate();
    std::fs::write(d.join("signing.pkcs8"), pkcs8).unwrap();
    let dek = [0x42u8; 32];
    let object_id: [u8; 32] = Sha256::digest(plaintext()).into();
    let header = Header {
        kind: ObjectKind::Layer,
        compression: Compression::None,
        chunk_size: 64,
        object_id,
        key_id: [0x5A; 16],
    };
    std::fs::write(d.join("object"), seal_all(&dek, &header, &plaintext())).unwrap();
    let recipient = RecipientEntry {
        recipient: id.to_public().to_string(),
        role: "appliance".into(),
        label: "golden".into(),
    };
    let ko = KeyObject::wrap(&dek, object_id, [0x5A; 16], &[recipient]).unwrap();
    std::fs::write(d.join("key"), ko.encode()).unwrap();
    let idx: v1::TimelineIndex = serde_json::from_str(index_json()).unwrap();
    let body = serde_json::to_vec(&idx).unwrap();
    std::fs::write(
        d.join("index"),
        cairn_backup::keys::sign_blob(b"CAIRNIDX", 1, &signer, &body),
    )
    .unwrap();
}

#[test]
fn version_1_objects_keys_and_indexes_decode_forever() {
    if std::env::var_os("CAIRN_WRITE_GOLDEN").is_some() {
        write_golden();
    }
    let d = dir();
    let identity = Identity::load(&d.join("identity.age")).unwrap();
    let ko = KeyObject::decode(&std::fs::read(d.join("key")).unwrap(), "golden key").unwrap();
    assert_eq!(ko.key_id, [0x5A; 16]);
    assert_eq!(ko.recipients.len(), 1);
    assert_eq!(ko.recipients[0].recipient, identity.recipient);
    let dek = ko.unwrap(&[&identity], "golden key").unwrap();
    assert_eq!(dek, [0x42; 32]);
    let object = std::fs::read(d.join("object")).unwrap();
    let expected_id: [u8; 32] = Sha256::digest(plaintext()).into();
    assert_eq!(ko.object_id, expected_id);
    assert_eq!(
        open_all(&dek, &object, &expected_id, "golden object").unwrap(),
        plaintext()
    );
    // Header bytes as documented in docs/FORMAT.md.
    assert_eq!(&object[..8], b"CAIRNOBJ");
    assert_eq!(u16::from_le_bytes([object[8], object[9]]), 1);
    assert_eq!(object.len(), 64 + 200 + 4 * 16);

    let signer = Signer::from_pkcs8(&std::fs::read(d.join("signing.pkcs8")).unwrap()).unwrap();
    let bytes = std::fs::read(d.join("index")).unwrap();
    let name = index_key(
        "87d5f66a79bb26404ee382b2bad18677",
        "3f16a41e69f334efc49ad51731c9cf8b",
        3,
    );
    let (idx, who) = v1::decode_verified(&bytes, &name, "golden", &[signer.public()]).unwrap();
    assert_eq!(who, signer.public());
    // Under another generation's name it is refused: the name binds the signed generation.
    let other = index_key(
        "87d5f66a79bb26404ee382b2bad18677",
        "3f16a41e69f334efc49ad51731c9cf8b",
        4,
    );
    let e = v1::decode_verified(&bytes, &other, "golden", &[signer.public()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a format 1 index of this name"), "{e}");
    let expected: v1::TimelineIndex = serde_json::from_str(index_json()).unwrap();
    assert_eq!(idx, expected);
    // A format 1 index still decodes, but a restore refuses to trust it (docs/FORMAT.md).
    let e = cairn_backup::index::decode_verified(
        &bytes,
        &name,
        "golden",
        &cairn_backup::index::Trust {
            signers: &[signer.public()],
            seen: None,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("format 1"), "{e}");
}

fn dump_plaintext() -> Vec<u8> {
    // Stands in for a pg_dump archive: the format does not look inside.
    let mut v = b"PGDMP".to_vec();
    v.extend((0..195u32).map(|i| (i * 13 % 251) as u8));
    v
}

fn export_manifest(sealed: &[u8]) -> Manifest {
    Manifest {
        format: 1,
        id: "20261123T101500Z-3fa2c1".into(),
        cluster_id: "87d5f66a79bb26404ee382b2bad18677".into(),
        cluster: "shop".into(),
        branch: "main".into(),
        database: "app".into(),
        point: "lsn 0/3000150".into(),
        lsn: "0/3000150".into(),
        point_time: Some("2026-11-23T10:14:59.000000Z".into()),
        pg_major: 15,
        pg_dump: "pg_dump (PostgreSQL) 15.14".into(),
        source: "local layers".into(),
        created_at: "2026-11-23T10:15:00.000000Z".into(),
        dump_bytes: dump_plaintext().len() as u64,
        dump_sha256: hex::encode(Sha256::digest(dump_plaintext())),
        sealed_bytes: sealed.len() as u64,
        sealed_sha256: hex::encode(Sha256::digest(sealed)),
        key_id: hex::encode([0x6B; 16]),
    }
}

/// Builds the export file byte by byte as docs/FORMAT.md describes it.
fn write_golden_export() {
    refuse_overwrite(&["export-file"]);
    let d = dir();
    let identity = Identity::load(&d.join("identity.age")).unwrap();
    let signer = Signer::from_pkcs8(&std::fs::read(d.join("signing.pkcs8")).unwrap()).unwrap();
    let dek = [0x24u8; 32];
    let object_id: [u8; 32] = Sha256::digest(dump_plaintext()).into();
    let header = Header {
        kind: ObjectKind::Export,
        compression: Compression::None,
        chunk_size: 64,
        object_id,
        key_id: [0x6B; 16],
    };
    let sealed = seal_all(&dek, &header, &dump_plaintext());
    let recipient = RecipientEntry {
        recipient: identity.recipient.clone(),
        role: "appliance".into(),
        label: "golden".into(),
    };
    let key = KeyObject::wrap(&dek, object_id, [0x6B; 16], &[recipient])
        .unwrap()
        .encode();
    let manifest = export_manifest(&sealed).encode_signed(&signer);
    let mut f = b"CAIRNEXP".to_vec();
    f.extend_from_slice(&1u16.to_le_bytes());
    f.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    f.extend_from_slice(&manifest);
    f.extend_from_slice(&(key.len() as u32).to_le_bytes());
    f.extend_from_slice(&key);
    f.extend_from_slice(&sealed);
    std::fs::write(d.join("export-file"), f).unwrap();
}

#[test]
fn version_1_export_files_decrypt_forever() {
    if std::env::var_os("CAIRN_WRITE_GOLDEN_EXPORT").is_some() {
        write_golden_export();
    }
    let d = dir();
    let identity = Identity::load(&d.join("identity.age")).unwrap();
    let signer = Signer::from_pkcs8(&std::fs::read(d.join("signing.pkcs8")).unwrap()).unwrap();
    let trust = SignerTrust {
        signers: vec![signer.public()],
    };
    let file = d.join("export-file");
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("dump");
    let m = decrypt_file(&file, &[&identity], &trust, &out, None).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), dump_plaintext());
    let bytes = std::fs::read(&file).unwrap();
    let manifest_len = u32::from_le_bytes(bytes[10..14].try_into().unwrap()) as usize;
    let key_len = u32::from_le_bytes(
        bytes[14 + manifest_len..18 + manifest_len]
            .try_into()
            .unwrap(),
    ) as usize;
    let sealed = &bytes[18 + manifest_len + key_len..];
    assert_eq!(&sealed[..8], b"CAIRNOBJ");
    assert_eq!(sealed[10], 3, "kind 3: export");
    assert_eq!(m, export_manifest(sealed));
    // Signed by another key: refused, naming the key and the way out.
    let err = decrypt_file(
        &file,
        &[&identity],
        &SignerTrust::default(),
        &out_dir.path().join("other"),
        None,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("--trust-signer"), "{err}");
}
