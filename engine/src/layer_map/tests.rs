//! Property tests: the layer map against a simple model of branching histories.
//!
//! The model keeps, per timeline, its own records (each with a unique id and an LSN range) and
//! computes a point's state as the list of record ids in its history. A point is reconstructible
//! in the model when some image of an ancestor-or-self timeline captured a prefix of exactly this
//! history, and every later record of the history lies inside a WAL layer of its own timeline.
//! The layer map must refuse exactly the points the model cannot reconstruct, and executing its
//! plan (image state, then the records its WAL pieces name) must give the model's state.

use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Write {
        tl: usize,
        sizes: Vec<u64>,
    },
    Image {
        tl: usize,
        back: usize,
    },
    Branch {
        tl: usize,
        pick: usize,
    },
    DropWal {
        pick: usize,
    },
    Check {
        tl: usize,
        pick: usize,
        beyond: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..8usize, prop::collection::vec(1..40u64, 1..5))
            .prop_map(|(tl, sizes)| Op::Write { tl, sizes: sizes.into_iter().map(|s| s * 8).collect() }),
        2 => (0..8usize, 0..6usize).prop_map(|(tl, back)| Op::Image { tl, back }),
        2 => (0..8usize, 0..100usize).prop_map(|(tl, pick)| Op::Branch { tl, pick }),
        1 => (0..100usize).prop_map(|pick| Op::DropWal { pick }),
        5 => (0..8usize, 0..100usize, prop::bool::weighted(0.1))
            .prop_map(|(tl, pick, beyond)| Op::Check { tl, pick, beyond }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rec {
    id: u32,
    start: u64,
    end: u64,
}

struct MTimeline {
    id: TimelineId,
    parent: Option<(usize, u64)>,
    own: Vec<Rec>,
    head: u64,
}

struct MImage {
    desc: ImageDesc,
    tl: usize,
    base: Vec<u32>,
}

#[derive(Default)]
struct Model {
    tls: Vec<MTimeline>,
    images: Vec<MImage>,
    wals: Vec<(usize, WalDesc)>,
    next_rec: u32,
    next_layer: u8,
    next_layer_hi: u8,
}

impl Model {
    fn new() -> Model {
        let mut m = Model::default();
        m.tls.push(MTimeline {
            id: TimelineId([0; 16]),
            parent: None,
            own: vec![],
            head: 0,
        });
        m
    }

    fn layer_id(&mut self) -> LayerId {
        self.next_layer = self.next_layer.wrapping_add(1);
        if self.next_layer == 0 {
            self.next_layer_hi += 1;
        }
        let mut b = [0u8; 32];
        b[0] = self.next_layer;
        b[1] = self.next_layer_hi;
        LayerId(b)
    }

    /// Records of `t`'s history that end at or before `x`.
    fn history(&self, t: usize, x: u64) -> Vec<(usize, Rec)> {
        let tl = &self.tls[t];
        let mut h = match tl.parent {
            Some((p, at)) => self.history(p, at.min(x)),
            None => vec![],
        };
        h.extend(tl.own.iter().filter(|r| r.end <= x).map(|r| (t, *r)));
        h
    }

    fn state(&self, t: usize, x: u64) -> Vec<u32> {
        self.history(t, x).iter().map(|(_, r)| r.id).collect()
    }

    /// Record boundaries of `t`'s history up to its head.
    fn boundaries(&self, t: usize) -> Vec<u64> {
        let mut b = vec![0];
        b.extend(self.history(t, self.tls[t].head).iter().map(|(_, r)| r.end));
        b
    }

    fn is_ancestor_or_self(&self, u: usize, mut t: usize) -> bool {
        loop {
            if t == u {
                return true;
            }
            match self.tls[t].parent {
                Some((p, _)) => t = p,
                None => return false,
            }
        }
    }

    fn reconstructible(&self, t: usize, x: u64) -> bool {
        if x > self.tls[t].head {
            return false;
        }
        let hist = self.history(t, x);
        self.images.iter().any(|img| {
            let (s, e) = (img.desc.start.0, img.desc.end.0);
            e <= x
                && self.is_ancestor_or_self(img.tl, t)
                && self.state(img.tl, e) == self.state(t, e)
                && hist.iter().filter(|(_, r)| r.start >= s).all(|(rt, r)| {
                    self.wals
                        .iter()
                        .any(|(wt, w)| wt == rt && w.start.0 <= r.start && r.end <= w.end.0)
                })
        })
    }

    fn map(&self) -> LayerMap {
        LayerMap::new(
            self.tls.iter().map(|t| TimelineDesc {
                id: t.id,
                ancestor: t.parent.map(|(p, at)| (self.tls[p].id, Lsn(at))),
                head: Lsn(t.head),
            }),
            self.images.iter().map(|i| i.desc),
            self.wals.iter().map(|(_, w)| *w),
        )
    }

    fn index_of(&self, id: TimelineId) -> usize {
        self.tls
            .iter()
            .position(|t| t.id == id)
            .expect("known timeline")
    }

    /// Runs a plan against the model: image state, then every record its pieces cover.
    fn execute(&self, plan: &Plan) -> Vec<u32> {
        let img = self
            .images
            .iter()
            .find(|i| i.desc == plan.image)
            .expect("plan names a known image");
        let mut state = img.base.clone();
        for piece in &plan.wal {
            let t = self.index_of(piece.timeline);
            for r in &self.tls[t].own {
                if r.start >= piece.from.0 && r.end <= piece.to.0 {
                    assert!(
                        piece
                            .layers
                            .iter()
                            .any(|w| w.start.0 <= r.start && r.end <= w.end.0),
                        "record {r:?} not inside the piece's layers"
                    );
                    state.push(r.id);
                }
            }
        }
        state
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut m = Model::new();
    for op in ops {
        match op {
            Op::Write { tl, sizes } => {
                let t = tl % m.tls.len();
                let start = m.tls[t].head;
                let mut at = start;
                for s in sizes {
                    m.next_rec += 1;
                    let r = Rec {
                        id: m.next_rec,
                        start: at,
                        end: at + s,
                    };
                    m.tls[t].own.push(r);
                    at += s;
                }
                m.tls[t].head = at;
                let id = m.layer_id();
                let tid = m.tls[t].id;
                m.wals.push((
                    t,
                    WalDesc {
                        id,
                        timeline: tid,
                        start: Lsn(start),
                        end: Lsn(at),
                    },
                ));
            }
            Op::Image { tl, back } => {
                let t = tl % m.tls.len();
                let b = m.boundaries(t);
                let start = b[b.len().saturating_sub(1 + back)];
                let base = m.state(t, start);
                let id = m.layer_id();
                m.images.push(MImage {
                    desc: ImageDesc {
                        id,
                        timeline: m.tls[t].id,
                        start: Lsn(start),
                        end: Lsn(m.tls[t].head),
                    },
                    tl: t,
                    base,
                });
            }
            Op::Branch { tl, pick } => {
                let t = tl % m.tls.len();
                if m.tls.len() >= 8 {
                    continue;
                }
                let b = m.boundaries(t);
                let at = b[pick % b.len()];
                let mut id = [0u8; 16];
                id[0] = m.tls.len() as u8;
                m.tls.push(MTimeline {
                    id: TimelineId(id),
                    parent: Some((t, at)),
                    own: vec![],
                    head: at,
                });
            }
            Op::DropWal { pick } => {
                if !m.wals.is_empty() {
                    let i = pick % m.wals.len();
                    m.wals.remove(i);
                }
            }
            Op::Check { tl, pick, beyond } => {
                let t = tl % m.tls.len();
                let b = m.boundaries(t);
                let x = if beyond {
                    m.tls[t].head + 8
                } else {
                    b[pick % b.len()]
                };
                let map = m.map();
                let expected = m.reconstructible(t, x);
                match map.plan(m.tls[t].id, Lsn(x)) {
                    Ok(plan) => {
                        prop_assert!(expected, "map reconstructs {x} on {t}, model cannot");
                        prop_assert_eq!(m.execute(&plan), m.state(t, x));
                        prop_assert!(plan.image.end.0 <= x);
                    }
                    Err(e) => {
                        prop_assert!(!expected, "map refuses {x} on {t} ({e}), model can");
                    }
                }
                // The windows the map reports are exactly the model's reconstructible set.
                let windows = map.reconstructible_windows(m.tls[t].id);
                for bnd in m.boundaries(t) {
                    let inside = windows.iter().any(|(lo, hi)| bnd >= lo.0 && bnd <= hi.0);
                    prop_assert_eq!(inside, m.reconstructible(t, bnd), "boundary {}", bnd);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn layer_map_agrees_with_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}

fn lid(n: u8) -> LayerId {
    LayerId([n; 32])
}

/// A root with an image and WAL to 300, and a child branched at 200 whose WAL starts at 250.
fn two_timelines() -> (LayerMap, TimelineId, TimelineId) {
    let root = TimelineId([1; 16]);
    let child = TimelineId([2; 16]);
    let map = LayerMap::new(
        [
            TimelineDesc {
                id: root,
                ancestor: None,
                head: Lsn(300),
            },
            TimelineDesc {
                id: child,
                ancestor: Some((root, Lsn(200))),
                head: Lsn(400),
            },
        ],
        [ImageDesc {
            id: lid(1),
            timeline: root,
            start: Lsn(80),
            end: Lsn(100),
        }],
        [
            WalDesc {
                id: lid(2),
                timeline: root,
                start: Lsn(80),
                end: Lsn(300),
            },
            WalDesc {
                id: lid(3),
                timeline: child,
                start: Lsn(250),
                end: Lsn(400),
            },
        ],
    );
    (map, root, child)
}

#[test]
fn explains_why_a_point_is_not_reconstructible() {
    let (map, root, child) = two_timelines();
    assert_eq!(
        map.plan(root, Lsn(301)),
        Err(Unreconstructible::BeyondHead {
            lsn: Lsn(301),
            head: Lsn(300)
        })
    );
    assert!(matches!(
        map.plan(root, Lsn(50)),
        Err(Unreconstructible::NoImage {
            earliest: Some(Lsn(100)),
            ..
        })
    ));
    assert_eq!(
        map.plan(child, Lsn(400)),
        Err(Unreconstructible::WalGap {
            timeline: child,
            from: Lsn(200),
            to: Lsn(250)
        })
    );
    // The child's history below its branch point is the root's.
    let p = map.plan(child, Lsn(150)).unwrap();
    assert_eq!(p.wal.len(), 1);
    assert_eq!(p.wal[0].timeline, root);
    assert_eq!((p.wal[0].from, p.wal[0].to), (Lsn(80), Lsn(150)));
    assert_eq!(
        map.reconstructible_windows(root),
        vec![(Lsn(100), Lsn(300))]
    );
    assert_eq!(
        map.reconstructible_windows(child),
        vec![(Lsn(100), Lsn(200))]
    );
}

/// What the planner's callers read besides the plan's pieces: the layers in LSN order, the
/// timeline descriptions, and the earliest point named in the refusal (found missing by
/// mutation testing: no test read them).
#[test]
fn plans_list_their_layers_and_refusals_name_the_earliest_point() {
    let (map, root, child) = two_timelines();
    let p = map.plan(root, Lsn(250)).unwrap();
    assert_eq!(
        p.wal_layers().map(|w| w.id).collect::<Vec<_>>(),
        vec![lid(2)]
    );
    assert_eq!(p.image.id, lid(1));
    assert_eq!(
        map.timeline(child).map(|t| t.ancestor),
        Some(Some((root, Lsn(200))))
    );
    assert_eq!(map.timeline(root).map(|t| t.head), Some(Lsn(300)));
    assert!(map.timeline(TimelineId([9; 16])).is_none());
    let e = map.plan(root, Lsn(50)).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "no image layer at or before LSN {} (the earliest reconstructible point is {})",
            Lsn(50),
            Lsn(100)
        )
    );
    // Without any image there is no earliest point to name.
    let bare = LayerMap::new(
        [TimelineDesc {
            id: root,
            ancestor: None,
            head: Lsn(300),
        }],
        [],
        [],
    );
    assert_eq!(
        bare.plan(root, Lsn(50)).unwrap_err().to_string(),
        format!("no image layer at or before LSN {}", Lsn(50))
    );
    assert_eq!(
        map.wals_of(root).iter().map(|w| w.id).collect::<Vec<_>>(),
        vec![lid(2)]
    );
    assert!(map.wals_of(TimelineId([9; 16])).is_empty());
}

/// A gap after an empty WAL layer ends where the next layer starts; windows of several images
/// that overlap are reported as one.
#[test]
fn gaps_after_empty_layers_and_overlapping_windows() {
    let root = TimelineId([1; 16]);
    let wal = |n: u8, start: u64, end: u64| WalDesc {
        id: lid(n),
        timeline: root,
        start: Lsn(start),
        end: Lsn(end),
    };
    let image = |n: u8, start: u64, end: u64| ImageDesc {
        id: lid(n),
        timeline: root,
        start: Lsn(start),
        end: Lsn(end),
    };
    let map = LayerMap::new(
        [TimelineDesc {
            id: root,
            ancestor: None,
            head: Lsn(300),
        }],
        [image(1, 80, 100), image(4, 140, 150)],
        [wal(2, 80, 200), wal(3, 200, 200), wal(5, 250, 300)],
    );
    assert_eq!(
        map.plan(root, Lsn(280)),
        Err(Unreconstructible::WalGap {
            timeline: root,
            from: Lsn(200),
            to: Lsn(250)
        })
    );
    assert_eq!(
        map.reconstructible_windows(root),
        vec![(Lsn(100), Lsn(200))],
        "the second image's window lies inside the first's"
    );
}
