//! `cairn check`: proves that the catalog and the layer files agree.
//!
//! For every layer row: the file exists, opens, its metadata decodes and matches the row
//! (kind, timeline, LSN range); with `full`, the whole file re-hashes to its name and every
//! piece re-hashes to its recorded SHA-256. For every timeline: its WAL layers form one
//! unbroken chain (each starts where the previous ended) up to its head. Files in a timeline's
//! directory that no row names are reported too (a running process may still be writing them).

use crate::catalog::ClusterRow;
use crate::engine::Engine;
use crate::error::Result;
use crate::layer::file::{parse_file_name, LayerFile, LayerKind};
use crate::layer::image::ImageMeta;
use crate::layer::wal::WalMeta;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct CheckReport {
    pub layers: usize,
    pub problems: Vec<String>,
}

impl Engine {
    pub async fn check_cluster(&self, c: &ClusterRow, full: bool) -> Result<CheckReport> {
        let mut r = CheckReport::default();
        let layers = self.catalog.layers(c.id).await?;
        for l in &layers {
            r.layers += 1;
            let path = self.layer_path(l);
            let f = match LayerFile::open(&path, l.kind) {
                Ok(f) => f,
                Err(e) => {
                    r.problems.push(format!("cluster {}: {e}", c.name));
                    continue;
                }
            };
            if f.size != l.file_size {
                r.problems.push(format!(
                    "{}: size {} differs from the catalog's {}",
                    path.display(),
                    f.size,
                    l.file_size
                ));
            }
            let (tl, start, end) = match l.kind {
                LayerKind::Image => match ImageMeta::decode(&f.meta, f.version) {
                    Ok(m) => {
                        if full {
                            // Every frame of this layer, decompressed once; every piece in it
                            // re-hashed.
                            let mut frames: std::collections::BTreeMap<u64, Vec<_>> =
                                std::collections::BTreeMap::new();
                            for file in &m.files {
                                for b in file.blobs.iter().filter(|b| b.layer == 0) {
                                    frames.entry(b.offset).or_default().push(*b);
                                }
                            }
                            for (off, pieces) in frames {
                                let b0 = pieces[0];
                                match f.read_frame(off, b0.clen, b0.frame_len) {
                                    Ok(data) => {
                                        for b in pieces {
                                            if let Err(e) =
                                                b.cut(&data, &path.display().to_string())
                                            {
                                                r.problems.push(e);
                                            }
                                        }
                                    }
                                    Err(e) => r.problems.push(e.to_string()),
                                }
                            }
                        }
                        (m.timeline, m.start_lsn, m.end_lsn)
                    }
                    Err(e) => {
                        r.problems.push(format!("{}: {}", path.display(), e.0));
                        continue;
                    }
                },
                LayerKind::Wal => match WalMeta::decode(&f.meta) {
                    Ok(m) => {
                        if full {
                            for ch in &m.chunks {
                                if let Err(e) =
                                    f.read_blob(ch.offset, ch.clen, ch.raw_len, &ch.hash)
                                {
                                    r.problems.push(e.to_string());
                                }
                            }
                        }
                        (m.timeline, m.start, m.end)
                    }
                    Err(e) => {
                        r.problems.push(format!("{}: {}", path.display(), e.0));
                        continue;
                    }
                },
            };
            if tl != l.timeline_id || start != l.start || end != l.end {
                r.problems.push(format!(
                    "{}: holds timeline {tl} {start}..{end}, the catalog says {} {}..{}",
                    path.display(),
                    l.timeline_id,
                    l.start,
                    l.end
                ));
            }
            if full {
                if let Err(e) = f.verify_id(l.id) {
                    r.problems.push(e.to_string());
                }
            }
        }
        for t in self.catalog.timelines(c.id).await? {
            let mut wals: Vec<_> = layers
                .iter()
                .filter(|l| l.timeline_id == t.id && l.kind == LayerKind::Wal)
                .collect();
            wals.sort_by_key(|l| l.start);
            for pair in wals.windows(2) {
                if pair[1].start != pair[0].end {
                    r.problems.push(format!(
                        "timeline {}: WAL layers leave a gap or overlap between {} and {}",
                        t.id, pair[0].end, pair[1].start
                    ));
                }
            }
            if let Some(last) = wals.last() {
                if last.end != t.head {
                    r.problems.push(format!(
                        "timeline {}: head {} but its WAL ends at {}",
                        t.id, t.head, last.end
                    ));
                }
            }
            let dir = self.home.timeline_dir(c.id, t.id);
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                match parse_file_name(&name) {
                    Some((_, id)) if layers.iter().any(|l| l.id == id) => {}
                    _ => r.problems.push(format!(
                        "{}: not in the catalog (left by an interrupted operation; it is removed \
                         the next time the branch is written)",
                        e.path().display()
                    )),
                }
            }
        }
        Ok(r)
    }
}
