//! Golden vectors: layer files of every released format version, checked in under
//! `tests/golden/vN/` and pinned by their SHA-256 ([`PINNED`]). They must decode to the same
//! values forever; a format change bumps the kind's version and adds that version's vectors
//! with `CAIRN_WRITE_GOLDEN=1 cargo test -p cairn-engine --test golden`, which writes only
//! vectors that do not exist yet and refuses when there are none to write. Then pin the new
//! files' hashes here.

use std::path::PathBuf;

use cairn_engine::ids::{LayerId, Lsn, TimelineId};
use cairn_engine::layer::file::{LayerFile, LayerKind, LayerWriter};
use cairn_engine::layer::image::{BlobRef, ImageFile, ImageMeta, TablespaceInfo};
use cairn_engine::layer::wal::{WalChunk, WalMeta};
use cairn_engine::wal::{EventKind, WalEvent};
use sha2::{Digest, Sha256};

fn golden_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn golden_dir(version: u16) -> PathBuf {
    golden_root().join(format!("v{version}"))
}

/// Every golden file and its SHA-256: released vectors never change.
const PINNED: &[(&str, &str)] = &[
    (
        "v1/image.layer",
        "436d3eb4700e1c70141cf0e18341e6cbc02c30e0a92d43d6ea920740581bb6d1",
    ),
    (
        "v1/wal.layer",
        "73a9b167f12363349a1243fde58b12272a7eb38d4423ea7bc7962db83d77cc22",
    ),
    (
        "v2/image.layer",
        "4154f1d88a3631a371af774f6271e462e766ca8ae09ae4e2bb9751015e7371ae",
    ),
    (
        "real/wal-v1.layer",
        "62dbc1d1caa090967bc7a350bf37de49a1f754556b2ecbfc5bd4640ab84a42f2",
    ),
];

fn page(seed: u8) -> Vec<u8> {
    (0..8192u32).map(|i| (i as u8).wrapping_mul(seed)).collect()
}

/// The image of the vectors: version 2 adds a tablespace.
fn expected_image(blob_offsets: &[(u64, u32)], version: u16) -> ImageMeta {
    let p1 = page(3);
    let p2 = page(5);
    let pg_version = b"15\n".to_vec();
    let blob = |raw: &[u8], i: usize| BlobRef {
        hash: Sha256::digest(raw).into(),
        layer: 0,
        offset: blob_offsets[i].0,
        clen: blob_offsets[i].1,
        frame_len: raw.len() as u32,
        at: 0,
        raw_len: raw.len() as u32,
    };
    ImageMeta {
        system_id: 7_441_431_976_000_000_123,
        pg_major: 15,
        timeline: TimelineId([0x11; 16]),
        start_lsn: Lsn(0x200_0028),
        end_lsn: Lsn(0x200_0100),
        tli: 1,
        created_at_us: 1_795_431_976_000_000,
        backup_label: "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n".into(),
        refs: vec![LayerId([0; 32]), LayerId([0xAB; 32])],
        dirs: vec![("base".into(), 0o700), ("base/5".into(), 0o700)],
        files: vec![
            ImageFile {
                path: "PG_VERSION".into(),
                mode: 0o600,
                size: 3,
                relation: false,
                blobs: vec![blob(&pg_version, 2)],
            },
            ImageFile {
                path: "base/5/16384".into(),
                mode: 0o600,
                size: 3 * 8192,
                relation: true,
                blobs: vec![
                    blob(&p1, 0),
                    blob(&p2, 1),
                    // A page stored by an earlier layer.
                    BlobRef {
                        hash: [0x42; 32],
                        layer: 1,
                        offset: 4096,
                        clen: 77,
                        frame_len: 16384,
                        at: 8192,
                        raw_len: 8192,
                    },
                ],
            },
        ],
        tablespaces: if version >= 2 {
            vec![TablespaceInfo {
                oid: 16390,
                name: "fast".into(),
                location: "/ssd/pg/fast".into(),
            }]
        } else {
            vec![]
        },
    }
}

fn wal_bytes() -> Vec<u8> {
    (0..3 * 8192u32).map(|i| (i % 251) as u8).collect()
}

fn expected_wal(chunk: (u64, u32)) -> WalMeta {
    let raw = wal_bytes();
    WalMeta {
        system_id: 7_441_431_976_000_000_123,
        pg_major: 15,
        tli: 1,
        segment_size: 16 << 20,
        timeline: TimelineId([0x22; 16]),
        data_start: Lsn(0x300_0000),
        start: Lsn(0x300_00E8),
        end: Lsn(0x300_6000),
        prev_record: Some(Lsn(0x300_00C0)),
        last_record: Lsn(0x300_5F00),
        created_at_us: 1_795_431_977_000_000,
        chunks: vec![WalChunk {
            lsn: Lsn(0x300_0000),
            raw_len: raw.len() as u32,
            offset: chunk.0,
            clen: chunk.1,
            hash: Sha256::digest(&raw).into(),
        }],
        events: vec![
            WalEvent {
                kind: EventKind::Commit,
                before: Lsn(0x300_00E8),
                end: Lsn(0x300_0110),
                time_us: 1_795_431_976_457_784,
                name: None,
            },
            WalEvent {
                kind: EventKind::RestorePoint,
                before: Lsn(0x300_0110),
                end: Lsn(0x300_0148),
                time_us: 1_795_431_976_500_000,
                name: Some("before_migration".into()),
            },
        ],
        resume_points: vec![(Lsn(0x300_0110), Lsn(0x300_00E8))],
    }
}

/// Writes the current versions' vectors that do not exist yet; refuses when there are none.
fn write_golden() {
    let mut wrote = 0;
    let v = LayerKind::Image.version();
    let dir = golden_dir(v);
    if !dir.join("image.layer").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        // Image layer: three pieces of its own.
        let mut w = LayerWriter::create(&dir, LayerKind::Image).unwrap();
        let mut offs = Vec::new();
        for raw in [page(3), page(5), b"15\n".to_vec()] {
            let c = zstd::bulk::compress(&raw, 1).unwrap();
            offs.push((w.append_blob(&c).unwrap(), c.len() as u32));
        }
        let (_, _, path) = w.finish(&expected_image(&offs, v).encode()).unwrap();
        std::fs::rename(path, dir.join("image.layer")).unwrap();
        wrote += 1;
    }
    let v = LayerKind::Wal.version();
    let dir = golden_dir(v);
    if !dir.join("wal.layer").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = LayerWriter::create(&dir, LayerKind::Wal).unwrap();
        let c = zstd::bulk::compress(&wal_bytes(), 1).unwrap();
        let off = w.append_blob(&c).unwrap();
        let (_, _, path) = w
            .finish(&expected_wal((off, c.len() as u32)).encode())
            .unwrap();
        std::fs::rename(path, dir.join("wal.layer")).unwrap();
        wrote += 1;
    }
    assert!(
        wrote > 0,
        "the golden vectors of the current format versions exist and are frozen: a format \
         change bumps the version (LayerKind::version) and adds new vectors"
    );
}

#[test]
fn golden_files_are_pinned() {
    if std::env::var_os("CAIRN_WRITE_GOLDEN").is_some() {
        write_golden();
    }
    let mut found = Vec::new();
    for v in std::fs::read_dir(golden_root()).unwrap().flatten() {
        for f in std::fs::read_dir(v.path()).unwrap().flatten() {
            found.push(format!(
                "{}/{}",
                v.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            ));
        }
    }
    found.sort();
    let mut pinned: Vec<String> = PINNED.iter().map(|(p, _)| p.to_string()).collect();
    pinned.sort();
    assert_eq!(
        found, pinned,
        "every golden file is pinned, and every pinned one exists"
    );
    for (p, hash) in PINNED {
        let got = hex::encode(Sha256::digest(
            std::fs::read(golden_root().join(p)).unwrap(),
        ));
        assert_eq!(
            &got, hash,
            "{p} changed: released golden vectors are frozen"
        );
    }
}

/// Checks a golden image of `version` against the expected values, every piece included.
fn check_image(version: u16) {
    let path = golden_dir(version).join("image.layer");
    let f = LayerFile::open(&path, LayerKind::Image).unwrap();
    assert_eq!(f.version, version);
    let meta = ImageMeta::decode(&f.meta, f.version).unwrap();
    let offs: Vec<(u64, u32)> = meta.files[1].blobs[..2]
        .iter()
        .chain(meta.files[0].blobs.iter())
        .map(|b| (b.offset, b.clen))
        .collect();
    assert_eq!(meta, expected_image(&offs, version));
    assert_eq!(
        meta.encode_version(version),
        f.meta,
        "metadata re-encodes to the same bytes"
    );
    let b = &meta.files[1].blobs[0];
    assert_eq!(
        f.read_blob(b.offset, b.clen, b.raw_len, &b.hash).unwrap(),
        page(3)
    );
    let b = &meta.files[1].blobs[1];
    assert_eq!(
        f.read_blob(b.offset, b.clen, b.raw_len, &b.hash).unwrap(),
        page(5)
    );
    let b = &meta.files[0].blobs[0];
    assert_eq!(
        f.read_blob(b.offset, b.clen, b.raw_len, &b.hash).unwrap(),
        b"15\n"
    );
    // The file's name in a timeline directory is its SHA-256.
    let id = LayerId(Sha256::digest(std::fs::read(&path).unwrap()).into());
    f.verify_id(id).unwrap();
}

#[test]
fn version_2_images_decode_forever() {
    check_image(2);
}

#[test]
fn version_1_layers_decode_forever() {
    check_image(1);
    let dir = golden_dir(1);
    let f = LayerFile::open(&dir.join("wal.layer"), LayerKind::Wal).unwrap();
    assert_eq!(f.version, 1);
    let meta = WalMeta::decode(&f.meta).unwrap();
    let c = meta.chunks[0];
    assert_eq!(meta, expected_wal((c.offset, c.clen)));
    assert_eq!(meta.encode(), f.meta);
    assert_eq!(
        f.read_blob(c.offset, c.clen, c.raw_len, &c.hash).unwrap(),
        wal_bytes()
    );
}

#[test]
fn damaged_layers_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read(golden_dir(1).join("image.layer")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", src[..src.len() - 10].to_vec(), "trailer"),
        ("short", src[..20].to_vec(), "bytes long"),
        (
            "bad magic",
            [b"CAIRNXXX".as_slice(), &src[8..]].concat(),
            "bad magic",
        ),
        (
            "future version",
            [&src[..8], &[9u8, 0], &src[10..]].concat(),
            "newer than this cairn",
        ),
        (
            "metadata flipped",
            {
                let mut v = src.clone();
                let n = v.len();
                v[n - 60] ^= 1;
                v
            },
            "metadata checksum",
        ),
    ];
    for (what, bytes, reason) in cases {
        let p = dir.path().join(what);
        std::fs::write(&p, bytes).unwrap();
        let err = LayerFile::open(&p, LayerKind::Image)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(reason) && err.contains(what), "{what}: {err}");
    }
    // A flipped bit in a piece fails (its frame or) that piece's SHA-256, naming the layer and
    // offset.
    let f = LayerFile::open(&golden_dir(1).join("image.layer"), LayerKind::Image).unwrap();
    let meta = ImageMeta::decode(&f.meta, f.version).unwrap();
    let b = meta.files[1].blobs[0];
    let mut bytes = src.clone();
    bytes[b.offset as usize + b.clen as usize / 2] ^= 0x10;
    let p = dir.path().join("flipped");
    std::fs::write(&p, bytes).unwrap();
    let f = LayerFile::open(&p, LayerKind::Image).unwrap();
    let err = match f.read_frame(b.offset, b.clen, b.frame_len) {
        Err(e) => e.to_string(),
        Ok(frame) => b.cut(&frame, &p.display().to_string()).unwrap_err(),
    };
    assert!(
        err.contains("flipped") && err.contains(&format!("offset {}", b.offset)),
        "{err}"
    );
    // The wrong kind is refused.
    let err = LayerFile::open(&golden_dir(1).join("wal.layer"), LayerKind::Image)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not an image layer"), "{err}");
}

/// A WAL layer written by a real run (`cairn compute sync` of PostgreSQL 15, recipe in
/// `docs/FORMAT.md`, "Golden vectors"), decoded and compared with what `pg_waldump` printed about
/// the same WAL: the synthetic vectors above pin the layout, this one the meaning of real WAL.
#[test]
fn a_real_runs_wal_layer_decodes_to_what_pg_waldump_saw() {
    let path = golden_root().join("real/wal-v1.layer");
    let f = LayerFile::open(&path, LayerKind::Wal).unwrap();
    assert_eq!(f.version, 1);
    let id = LayerId(Sha256::digest(std::fs::read(&path).unwrap()).into());
    f.verify_id(id).unwrap();
    let meta = WalMeta::decode(&f.meta).unwrap();
    assert_eq!(
        meta.encode(),
        f.meta,
        "metadata re-encodes to the same bytes"
    );
    assert_eq!(meta.system_id, 7_715_506_054_522_863_357);
    assert_eq!((meta.pg_major, meta.tli), (15, 1));
    assert_eq!(meta.segment_size, 16 << 20);
    // pg_waldump: the first record (CHECKPOINT_SHUTDOWN) at 0/030000A0, prev 0/03000028; the
    // last (a COMMIT of 34 bytes) at 0/03046128.
    assert_eq!(meta.start, Lsn(0x300_00A0));
    assert_eq!(meta.prev_record, Some(Lsn(0x300_0028)));
    assert_eq!(meta.last_record, Lsn(0x304_6128));
    assert_eq!(meta.end, Lsn(0x304_6150));
    // Every event, as pg_waldump listed the records: (kind, start, end = start + length
    // rounded up to 8, commit time in microseconds since the Unix epoch).
    type Seen<'a> = (EventKind, Lsn, Lsn, Option<i64>, Option<&'a str>);
    let seen: Vec<Seen> = meta
        .events
        .iter()
        .map(|e| {
            let time = (e.kind == EventKind::Commit).then_some(e.time_us);
            (e.kind, e.before, e.end, time, e.name.as_deref())
        })
        .collect();
    let expected = vec![
        // CHECKPOINT_SHUTDOWN, 114 bytes.
        (
            EventKind::ShutdownCheckpoint,
            Lsn(0x300_00A0),
            Lsn(0x300_0118),
            None,
            None,
        ),
        // COMMIT 2026-12-04 17:44:03.089104 UTC, 821 bytes.
        (
            EventKind::Commit,
            Lsn(0x302_4BC0),
            Lsn(0x302_4EF8),
            Some(1_796_406_243_089_104),
            None,
        ),
        // COMMIT 2026-12-04 17:44:05.664986 UTC, 1349 bytes.
        (
            EventKind::Commit,
            Lsn(0x304_5A90),
            Lsn(0x304_5FD8),
            Some(1_796_406_245_664_986),
            None,
        ),
        // RESTORE_POINT golden_vector, 98 bytes.
        (
            EventKind::RestorePoint,
            Lsn(0x304_6038),
            Lsn(0x304_60A0),
            None,
            Some("golden_vector"),
        ),
        // COMMIT 2026-12-04 17:44:05.669208 UTC, 34 bytes.
        (
            EventKind::Commit,
            Lsn(0x304_6128),
            Lsn(0x304_6150),
            Some(1_796_406_245_669_208),
            None,
        ),
    ];
    assert_eq!(seen, expected);
    // The chunks hold the WAL itself, contiguous, each verified by its hash; the restore
    // point's name is inside its record.
    let mut wal = Vec::new();
    let mut next = meta.data_start;
    for c in &meta.chunks {
        assert_eq!(c.lsn, next, "chunks are contiguous");
        wal.extend(f.read_blob(c.offset, c.clen, c.raw_len, &c.hash).unwrap());
        next = Lsn(c.lsn.0 + u64::from(c.raw_len));
    }
    assert!(next >= meta.end, "the chunks cover the layer up to its end");
    let at = |l: Lsn| (l.0 - meta.data_start.0) as usize;
    let rp = &wal[at(Lsn(0x304_6038))..at(Lsn(0x304_60A0))];
    assert!(
        rp.windows(13).any(|w| w == b"golden_vector"),
        "the restore point's record holds its name"
    );
}
