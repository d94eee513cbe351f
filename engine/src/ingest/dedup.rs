//! The dedup index: the pieces a new image may reference instead of storing, by SHA-256.
//!
//! An image references the pieces of earlier images it shares, so an earlier image stays as
//! long as an image kept by retention references any of its pieces. Left alone, that chains
//! every image ever taken: each one contributes a few pieces (a catalog page changed once, then
//! never again) that the newest image still reads, and retention can delete none of them. So
//! the index only offers the pieces of **dense** images: those of which the newest image (the
//! last one given) reads at least [`MIN_LIVE`] of the bytes they stored themselves. The live
//! pieces of a sparse image are stored again by the next image; after that nothing new reads
//! the sparse one, and it goes once retention no longer keeps it for its own points.
//!
//! Retention keeps an image together with everything it reads, and what those read in turn.
//! So the offered set is also **closed under references**: an image that itself reads a piece
//! of an image left out is left out as well. Without that, each image reading the one before
//! (dense, a minute old) keeps a chain back to the first image through images no one needs for
//! their own points (the retention soak under a one-minute window showed every image kept).
//! With it, every image a new image keeps, directly or not, holds at least half live data of
//! the newest image; when the oldest of them turns sparse, the next image stores the pieces
//! of the chain again and the chain restarts.
//!
//! Invariants:
//! - The offered images read only offered images (or themselves).
//! - The newest image is offered unless it reads an image left out.
//! - Only which pieces are offered changes; a piece is still taken from the oldest dense image
//!   that stored it, so images taken without the rule stay readable and equal.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::ids::LayerId;
use crate::layer::file::{LayerFile, LayerKind};
use crate::layer::image::ImageMeta;

/// The share of the bytes an image stored that the newest image must still read for new
/// images to reference it.
pub const MIN_LIVE: f64 = 0.5;

/// Where an already-stored piece lives (see [`crate::layer::image::BlobRef`]).
#[derive(Debug, Clone, Copy)]
pub struct Loc {
    pub layer: u32,
    pub offset: u64,
    pub clen: u32,
    pub frame_len: u32,
    pub at: u32,
    pub raw_len: u32,
}

/// The pieces stored by a set of image layers, by SHA-256.
#[derive(Default)]
pub struct DedupIndex {
    pub layers: Vec<LayerId>,
    pub map: HashMap<[u8; 32], Loc>,
}

/// The layer that stored each piece `meta` (image `id`) reads: (owner, hash, length).
fn pieces(id: LayerId, meta: &ImageMeta) -> impl Iterator<Item = (LayerId, [u8; 32], u32)> + '_ {
    meta.files.iter().flat_map(move |f| {
        f.blobs.iter().map(move |b| {
            let owner = if b.layer == 0 {
                id
            } else {
                meta.refs[b.layer as usize]
            };
            (owner, b.hash, b.raw_len)
        })
    })
}

/// The images (of `images`, oldest first) of which the newest reads at least `min_live` of the
/// bytes they stored themselves, less those that read a piece of an image not in the set.
pub fn dense(images: &[(LayerId, ImageMeta)], min_live: f64) -> HashSet<LayerId> {
    let Some((newest, newest_meta)) = images.last() else {
        return HashSet::new();
    };
    let mut stored: HashMap<LayerId, u64> = HashMap::new();
    for (id, meta) in images {
        let own: HashSet<([u8; 32], u32)> = pieces(*id, meta)
            .filter(|(o, _, _)| o == id)
            .map(|(_, h, n)| (h, n))
            .collect();
        stored.insert(*id, own.iter().map(|(_, n)| u64::from(*n)).sum());
    }
    let mut live: HashMap<LayerId, HashSet<([u8; 32], u32)>> = HashMap::new();
    for (owner, h, n) in pieces(*newest, newest_meta) {
        live.entry(owner).or_default().insert((h, n));
    }
    let mut out: HashSet<LayerId> = images
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| {
            let read: u64 = live
                .get(id)
                .map_or(0, |s| s.iter().map(|(_, n)| u64::from(*n)).sum());
            let own = stored.get(id).copied().unwrap_or(0);
            own > 0 && read as f64 >= min_live * own as f64
        })
        .collect();
    out.insert(*newest);
    // Closed under references: an image that reads a piece of one left out is left out too,
    // or a new image reading it would keep, through it, what was left out.
    let owners: HashMap<LayerId, HashSet<LayerId>> = images
        .iter()
        .map(|(id, meta)| (*id, pieces(*id, meta).map(|(o, _, _)| o).collect()))
        .collect();
    loop {
        let open: Vec<LayerId> = out
            .iter()
            .filter(|id| owners.get(id).is_some_and(|o| !o.is_subset(&out)))
            .copied()
            .collect();
        if open.is_empty() {
            return out;
        }
        for id in open {
            out.remove(&id);
        }
    }
}

impl DedupIndex {
    /// Loads the pieces of the dense ones of the given image layers (oldest first).
    pub fn load(images: &[(LayerId, PathBuf)]) -> Result<DedupIndex> {
        let mut metas = Vec::with_capacity(images.len());
        for (id, path) in images {
            let f = LayerFile::open(path, LayerKind::Image)?;
            let meta = ImageMeta::decode(&f.meta, f.version)
                .map_err(|e| Error::corrupt(format!("image layer {}", path.display()), e.0))?;
            metas.push((*id, meta));
        }
        let dense = dense(&metas, MIN_LIVE);
        let mut idx = DedupIndex::default();
        let mut pos: HashMap<LayerId, u32> = HashMap::new();
        for (id, meta) in &metas {
            for file in &meta.files {
                for b in &file.blobs {
                    let owner = if b.layer == 0 {
                        *id
                    } else {
                        meta.refs[b.layer as usize]
                    };
                    if !dense.contains(&owner) {
                        continue;
                    }
                    let n = idx.layers.len() as u32;
                    let li = *pos.entry(owner).or_insert_with(|| {
                        idx.layers.push(owner);
                        n
                    });
                    idx.map.entry(b.hash).or_insert(Loc {
                        layer: li,
                        offset: b.offset,
                        clen: b.clen,
                        frame_len: b.frame_len,
                        at: b.at,
                        raw_len: b.raw_len,
                    });
                }
            }
        }
        tracing::debug!(
            images = metas.len(),
            dense = dense.len(),
            pieces = idx.map.len(),
            "dedup index"
        );
        Ok(idx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Lsn, TimelineId};
    use crate::layer::image::{BlobRef, ImageFile};

    fn id(n: u8) -> LayerId {
        LayerId([n; 32])
    }

    /// An image `n` reading `pieces` (hash byte, length, the image that stored it).
    fn image(n: u8, pieces: &[(u8, u32, u8)]) -> (LayerId, ImageMeta) {
        let mut refs = vec![LayerId([0; 32])];
        let blobs = pieces
            .iter()
            .map(|&(h, len, owner)| {
                let layer = if owner == n {
                    0
                } else {
                    match refs.iter().position(|r| *r == id(owner)) {
                        Some(i) => i as u32,
                        None => {
                            refs.push(id(owner));
                            refs.len() as u32 - 1
                        }
                    }
                };
                BlobRef {
                    hash: [h; 32],
                    layer,
                    offset: 0,
                    clen: 0,
                    frame_len: 0,
                    at: 0,
                    raw_len: len,
                }
            })
            .collect();
        let meta = ImageMeta {
            system_id: 1,
            pg_major: 15,
            timeline: TimelineId([1; 16]),
            start_lsn: Lsn(0),
            end_lsn: Lsn(0),
            tli: 1,
            created_at_us: 0,
            backup_label: String::new(),
            refs,
            dirs: vec![],
            files: vec![ImageFile {
                path: "base/1/1".into(),
                mode: 0o600,
                size: 0,
                relation: true,
                blobs,
            }],
            tablespaces: vec![],
        };
        (id(n), meta)
    }

    #[test]
    fn only_images_the_newest_still_mostly_reads_are_offered() {
        // 1: a base of four pieces; 2 changed one of them; 3 (the newest) changed two more,
        // reads the one piece 2 stored and one piece of the base.
        let images = [
            image(1, &[(1, 100, 1), (2, 100, 1), (3, 100, 1), (4, 100, 1)]),
            image(2, &[(9, 100, 2), (2, 100, 1), (3, 100, 1), (4, 100, 1)]),
            image(3, &[(9, 100, 2), (7, 100, 3), (8, 100, 3), (4, 100, 1)]),
        ];
        // The newest reads 1/4 of the base (piece 4): sparse. All of 2's one piece: dense, but
        // 2 and 3 read the base, so neither is offered (the next image stores it all again).
        assert_eq!(dense(&images, 0.5), HashSet::new());
        // A lower bar keeps the base, and with it the images that read it.
        assert_eq!(dense(&images, 0.25), HashSet::from([id(1), id(2), id(3)]));
        // Duplicate references count once.
        let twice = [
            image(1, &[(1, 100, 1), (2, 100, 1)]),
            image(2, &[(1, 100, 1), (1, 100, 1), (5, 100, 2)]),
        ];
        assert_eq!(dense(&twice, 0.6), HashSet::new());
        assert_eq!(dense(&twice, 0.5), HashSet::from([id(1), id(2)]));
        assert!(dense(&[], 0.5).is_empty());
    }

    #[test]
    fn an_image_reading_one_left_out_is_left_out_too() {
        // A chain: 2 reads a piece of 1, 3 (the newest) reads all of 2 and nothing of 1.
        let chain = [
            image(1, &[(1, 100, 1), (2, 100, 1)]),
            image(2, &[(1, 100, 1), (3, 100, 2), (4, 100, 2)]),
            image(3, &[(5, 100, 3), (3, 100, 2), (4, 100, 2)]),
        ];
        // Without the closure 2 and 3 would be offered: 3 reads all of 2. But 2 reads 1, which
        // 3 no longer reads, so offering 2 would keep 1 alive through any image reading 2.
        assert_eq!(dense(&chain, 0.5), HashSet::new());
        // Once 1 is live again (the newest reads it), the chain is whole and offered.
        let whole = [
            image(1, &[(1, 100, 1), (2, 100, 1)]),
            image(2, &[(1, 100, 1), (3, 100, 2), (4, 100, 2)]),
            image(3, &[(1, 100, 1), (3, 100, 2), (4, 100, 2), (5, 100, 3)]),
        ];
        assert_eq!(dense(&whole, 0.5), HashSet::from([id(1), id(2), id(3)]));
        // An image that reads only itself is offered whatever the others are.
        let apart = [
            image(1, &[(1, 100, 1)]),
            image(2, &[(1, 100, 1), (3, 100, 2)]),
            image(3, &[(6, 100, 3)]),
        ];
        assert_eq!(dense(&apart, 0.5), HashSet::from([id(3)]));
    }
}
