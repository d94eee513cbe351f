//! Image layer metadata: which files a data directory holds and where each piece is stored.

use super::codec::{Dec, DecodeError, Enc};
use crate::ids::{LayerId, Lsn, TimelineId};

/// Where one piece (a page or a chunk) is stored: inside a zstd frame of a layer file, which
/// may hold several pieces. `layer` indexes [`ImageMeta::refs`]; index 0 is the layer that holds
/// this metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    /// SHA-256 of the piece.
    pub hash: [u8; 32],
    pub layer: u32,
    /// Offset and compressed length of the frame in the layer file.
    pub offset: u64,
    pub clen: u32,
    /// Decompressed length of the frame.
    pub frame_len: u32,
    /// Offset of the piece in the decompressed frame.
    pub at: u32,
    /// Length of the piece.
    pub raw_len: u32,
}

impl BlobRef {
    /// The piece within its decompressed frame, checked against its hash.
    pub fn cut<'a>(&self, frame: &'a [u8], what: &str) -> Result<&'a [u8], String> {
        let (a, b) = (self.at as usize, self.at as usize + self.raw_len as usize);
        let piece = frame.get(a..b).ok_or_else(|| {
            format!(
                "{what}: piece at {}+{} lies outside its frame",
                self.offset, self.at
            )
        })?;
        use sha2::Digest;
        if sha2::Sha256::digest(piece).as_slice() != self.hash {
            return Err(format!(
                "{what}: piece in the frame at offset {} (+{}) fails its SHA-256 check",
                self.offset, self.at
            ));
        }
        Ok(piece)
    }
}

/// A file of the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// Relative to the data directory, `/`-separated, validated against traversal on read.
    pub path: String,
    pub mode: u32,
    pub size: u64,
    /// A relation file: its pieces are 8 KiB pages whose checksums were verified.
    pub relation: bool,
    pub blobs: Vec<BlobRef>,
}

/// A tablespace the image holds (its files are under `pg_tblspc/<oid>/`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TablespaceInfo {
    pub oid: u32,
    pub name: String,
    /// Where the server that was imaged kept it: for people to recognise it, never used to
    /// place files.
    pub location: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMeta {
    pub system_id: u64,
    pub pg_major: u32,
    pub timeline: TimelineId,
    /// Redo point of the backup's checkpoint: WAL replay starts here.
    pub start_lsn: Lsn,
    /// The backup's stop point: the image is consistent from here on.
    pub end_lsn: Lsn,
    pub tli: u32,
    pub created_at_us: i64,
    /// The `backup_label` PostgreSQL returned; written into the data directory on materialise.
    pub backup_label: String,
    /// Layers referenced by [`BlobRef::layer`] (entry 0 is a placeholder for this layer).
    pub refs: Vec<LayerId>,
    /// Directories (relative path, mode), parents before children.
    pub dirs: Vec<(String, u32)>,
    pub files: Vec<ImageFile>,
    /// Tablespaces other than `pg_default` and `pg_global` (format version 2; empty for
    /// version 1 images).
    pub tablespaces: Vec<TablespaceInfo>,
}

impl ImageMeta {
    /// Metadata of a base backup of `cluster` from `start` to `end`; files, directories and
    /// references are filled in by [`crate::ingest::image::ImageDraft::finish`].
    pub fn of_backup(
        cluster: &crate::catalog::ClusterRow,
        timeline: TimelineId,
        start: Lsn,
        end: Lsn,
        backup_label: String,
    ) -> ImageMeta {
        ImageMeta {
            system_id: cluster.system_id,
            pg_major: cluster.pg_major,
            timeline,
            start_lsn: start,
            end_lsn: end,
            tli: cluster.tli,
            created_at_us: crate::catalog::now_us(),
            backup_label,
            refs: vec![],
            dirs: vec![],
            files: vec![],
            tablespaces: vec![],
        }
    }

    /// Encodes in the current format version ([`crate::layer::LayerKind::version`]).
    pub fn encode(&self) -> Vec<u8> {
        self.encode_version(2)
    }

    /// Encodes in format version 1 (no tablespace list) or 2: for golden vectors.
    pub fn encode_version(&self, version: u16) -> Vec<u8> {
        let mut e = Enc::default();
        e.u64(self.system_id);
        e.u32(self.pg_major);
        e.bytes(&self.timeline.0);
        e.u64(self.start_lsn.0);
        e.u64(self.end_lsn.0);
        e.u32(self.tli);
        e.i64(self.created_at_us);
        e.str(&self.backup_label);
        e.u32(self.refs.len() as u32);
        for r in &self.refs {
            e.bytes(&r.0);
        }
        e.u32(self.dirs.len() as u32);
        for (p, m) in &self.dirs {
            e.str(p);
            e.u32(*m);
        }
        e.u32(self.files.len() as u32);
        for f in &self.files {
            e.str(&f.path);
            e.u32(f.mode);
            e.u64(f.size);
            e.u8(f.relation as u8);
            e.u32(f.blobs.len() as u32);
            for b in &f.blobs {
                e.bytes(&b.hash);
                e.u32(b.layer);
                e.u64(b.offset);
                e.u32(b.clen);
                e.u32(b.frame_len);
                e.u32(b.at);
                e.u32(b.raw_len);
            }
        }
        if version >= 2 {
            e.u32(self.tablespaces.len() as u32);
            for t in &self.tablespaces {
                e.u32(t.oid);
                e.str(&t.name);
                e.str(&t.location);
            }
        }
        e.buf
    }

    /// Decodes metadata of format `version` (the layer file's header says which).
    pub fn decode(buf: &[u8], version: u16) -> Result<ImageMeta, DecodeError> {
        if !(1..=2).contains(&version) {
            return Err(DecodeError(format!(
                "image metadata version {version} is not one this cairn reads (1, 2)"
            )));
        }
        let mut d = Dec::new(buf);
        let system_id = d.u64("system id")?;
        let pg_major = d.u32("pg major")?;
        let timeline = TimelineId(d.array("timeline")?);
        let start_lsn = Lsn(d.u64("start lsn")?);
        let end_lsn = Lsn(d.u64("end lsn")?);
        let tli = d.u32("tli")?;
        let created_at_us = d.i64("created at")?;
        let backup_label = d.str("backup label")?;
        let n = d.count("refs", 32)?;
        let mut refs = Vec::with_capacity(n);
        for _ in 0..n {
            refs.push(LayerId(d.array("ref")?));
        }
        let n = d.count("dirs", 8)?;
        let mut dirs = Vec::with_capacity(n);
        for _ in 0..n {
            dirs.push((d.str("dir")?, d.u32("dir mode")?));
        }
        let n = d.count("files", 21)?;
        let mut files = Vec::with_capacity(n);
        for _ in 0..n {
            let path = d.str("file path")?;
            let mode = d.u32("file mode")?;
            let size = d.u64("file size")?;
            let relation = d.u8("relation flag")? != 0;
            let nb = d.count("blobs", 60)?;
            let mut blobs = Vec::with_capacity(nb);
            for _ in 0..nb {
                let hash = d.array("blob hash")?;
                let layer = d.u32("blob layer")?;
                if layer as usize >= refs.len().max(1) {
                    return Err(DecodeError(format!(
                        "{path}: blob names layer #{layer}, only {} referenced",
                        refs.len()
                    )));
                }
                blobs.push(BlobRef {
                    hash,
                    layer,
                    offset: d.u64("blob offset")?,
                    clen: d.u32("blob length")?,
                    frame_len: d.u32("frame length")?,
                    at: d.u32("blob position")?,
                    raw_len: d.u32("blob raw length")?,
                });
            }
            files.push(ImageFile {
                path,
                mode,
                size,
                relation,
                blobs,
            });
        }
        let mut tablespaces = Vec::new();
        if version >= 2 {
            let n = d.count("tablespaces", 12)?;
            for _ in 0..n {
                tablespaces.push(TablespaceInfo {
                    oid: d.u32("tablespace oid")?,
                    name: d.str("tablespace name")?,
                    location: d.str("tablespace location")?,
                });
            }
        }
        d.finish()?;
        Ok(ImageMeta {
            system_id,
            pg_major,
            timeline,
            start_lsn,
            end_lsn,
            tli,
            created_at_us,
            backup_label,
            refs,
            dirs,
            files,
            tablespaces,
        })
    }

    /// Sum of the logical sizes of the files.
    pub fn logical_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Every layer this image needs besides itself.
    pub fn referenced_layers(&self) -> impl Iterator<Item = &LayerId> {
        self.refs.iter().skip(1)
    }
}

/// Checks that a stored relative path cannot escape the data directory.
pub fn validate_rel_path(p: &str) -> Result<(), String> {
    if p.is_empty()
        || p.starts_with('/')
        || p.contains('\0')
        || p.contains('\\')
        || p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!("unsafe path '{p}' in image metadata"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> ImageMeta {
        ImageMeta {
            system_id: 7_441_000_000_000_000_123,
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
                    path: "base/5/1259".into(),
                    mode: 0o600,
                    size: 16384,
                    relation: true,
                    blobs: vec![
                        BlobRef {
                            hash: [1; 32],
                            layer: 0,
                            offset: 16,
                            clen: 100,
                            frame_len: 16384,
                            at: 0,
                            raw_len: 8192,
                        },
                        BlobRef {
                            hash: [2; 32],
                            layer: 1,
                            offset: 4096,
                            clen: 90,
                            frame_len: 8192,
                            at: 0,
                            raw_len: 8192,
                        },
                    ],
                },
                ImageFile {
                    path: "PG_VERSION".into(),
                    mode: 0o600,
                    size: 3,
                    relation: false,
                    blobs: vec![BlobRef {
                        hash: [3; 32],
                        layer: 0,
                        offset: 116,
                        clen: 12,
                        frame_len: 3,
                        at: 0,
                        raw_len: 3,
                    }],
                },
            ],
            tablespaces: vec![],
        }
    }

    #[test]
    fn meta_round_trips() {
        let mut m = sample();
        for v in [1, 2] {
            assert_eq!(ImageMeta::decode(&m.encode_version(v), v).unwrap(), m);
        }
        assert_eq!(m.logical_size(), 16387);
        // Truncations never panic and never decode.
        let b = m.encode();
        for cut in 0..b.len() {
            assert!(ImageMeta::decode(&b[..cut], 2).is_err());
        }
        // A version-2 list is not read as version 1, nor the other way round.
        m.tablespaces.push(TablespaceInfo {
            oid: 1,
            name: "t".into(),
            location: "/t".into(),
        });
        assert!(ImageMeta::decode(&m.encode_version(2), 1).is_err());
        assert!(ImageMeta::decode(&m.encode_version(1), 2).is_err());
        assert!(ImageMeta::decode(&m.encode(), 3).is_err());
    }

    /// Version 2 adds the tablespace list after the files; everything before it is version 1
    /// byte for byte. These bytes are frozen.
    #[test]
    fn tablespace_list_golden() {
        let mut m = sample();
        m.tablespaces = vec![TablespaceInfo {
            oid: 16384,
            name: "fast".into(),
            location: "/ssd/ts".into(),
        }];
        let v1 = m.encode_version(1);
        let b = m.encode();
        assert_eq!(&b[..v1.len()], &v1[..]);
        let golden: &[u8] = &[
            1, 0, 0, 0, // count
            0x00, 0x40, 0, 0, // oid 16384
            4, 0, 0, 0, b'f', b'a', b's', b't', // name
            7, 0, 0, 0, b'/', b's', b's', b'd', b'/', b't', b's', // location
        ];
        assert_eq!(&b[v1.len()..], golden);
        assert_eq!(ImageMeta::decode(&b, 2).unwrap(), m);
        // Without tablespaces, version 2 ends with a zero count.
        let plain = sample();
        assert_eq!(
            &plain.encode()[plain.encode_version(1).len()..],
            &[0, 0, 0, 0]
        );
    }

    #[test]
    fn traversal_is_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "base/../../x",
            "a//b",
            "./a",
            "a\\b",
        ] {
            assert!(validate_rel_path(bad).is_err(), "{bad}");
        }
        assert!(validate_rel_path("base/5/1259.1").is_ok());
    }
}
