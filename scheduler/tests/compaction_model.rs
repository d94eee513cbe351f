//! WAL compaction against the engine's layer map, over generated histories (a branch and a
//! child branch, WAL with gaps, images, young and unsettled layers): every group follows the
//! rules, merging the groups leaves every timeline's reconstructible windows as they were, and
//! planning again over the merged layers finds nothing.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use cairn_engine::layer_map::{ImageDesc, LayerMap, TimelineDesc, WalDesc};
use cairn_engine::{LayerId, Lsn, TimelineId};
use cairn_scheduler::compaction::{plan_compaction, CompactGroup, CompactWal, CompactionRules};

const NOW: i64 = 1_000;

fn tl(i: u8) -> TimelineId {
    TimelineId([i; 16])
}

fn layer(n: u32) -> LayerId {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&n.to_be_bytes());
    LayerId(b)
}

#[derive(Debug, Clone)]
struct Gen {
    /// Per layer: length, gap before it, bytes, age, settled.
    parent: Vec<(u64, u64, u64, i64, bool)>,
    child: Vec<(u64, u64, u64, i64, bool)>,
    /// Image starts as fractions (per mille) of each timeline's span.
    images: Vec<(bool, u16)>,
    branch_at: u16,
    target: u64,
}

fn gen() -> impl Strategy<Value = Gen> {
    let wal = (
        1u64..20,
        prop_oneof![8 => Just(0u64), 1 => 1u64..5],
        1u64..40,
        0i64..200,
        prop_oneof![9 => Just(true), 1 => Just(false)],
    );
    (
        prop::collection::vec(wal.clone(), 1..40),
        prop::collection::vec(wal, 0..15),
        prop::collection::vec((any::<bool>(), 0u16..1000), 1..6),
        0u16..1000,
        20u64..120,
    )
        .prop_map(|(parent, child, images, branch_at, target)| Gen {
            parent,
            child,
            images,
            branch_at,
            target,
        })
}

struct Built {
    timelines: Vec<TimelineDesc>,
    images: Vec<ImageDesc>,
    wals: Vec<CompactWal>,
}

fn build(g: &Gen) -> Built {
    let mut n = 0;
    let mut wals = Vec::new();
    let mut lay = |timeline, from: u64, spec: &[(u64, u64, u64, i64, bool)]| {
        let mut at = from;
        for &(len, gap, bytes, age, settled) in spec {
            at += gap;
            n += 1;
            wals.push(CompactWal {
                desc: WalDesc {
                    id: layer(n),
                    timeline,
                    start: Lsn(at),
                    end: Lsn(at + len),
                },
                bytes,
                created_us: NOW - age,
                settled,
            });
            at += len;
        }
        at
    };
    let head1 = lay(tl(1), 100, &g.parent);
    let bp = 100 + (head1 - 100) * u64::from(g.branch_at) / 1000;
    let head2 = lay(tl(2), bp, &g.child);
    let timelines = vec![
        TimelineDesc {
            id: tl(1),
            ancestor: None,
            head: Lsn(head1),
        },
        TimelineDesc {
            id: tl(2),
            ancestor: Some((tl(1), Lsn(bp))),
            head: Lsn(head2),
        },
    ];
    // An image at the start of the parent, so something is reconstructible, and the others.
    let mut images = vec![ImageDesc {
        id: layer(10_000),
        timeline: tl(1),
        start: Lsn(100),
        end: Lsn(100),
    }];
    for (k, &(child, at)) in g.images.iter().enumerate() {
        let (t, lo, hi) = if child {
            (tl(2), bp, head2)
        } else {
            (tl(1), 100, head1)
        };
        let start = lo + (hi - lo) * u64::from(at) / 1000;
        images.push(ImageDesc {
            id: layer(10_001 + k as u32),
            timeline: t,
            start: Lsn(start),
            end: Lsn(start),
        });
    }
    Built {
        timelines,
        images,
        wals,
    }
}

fn windows(b: &Built, wals: &[CompactWal]) -> Vec<Vec<(Lsn, Lsn)>> {
    let map = LayerMap::new(
        b.timelines.clone(),
        b.images.clone(),
        wals.iter().map(|w| w.desc),
    );
    b.timelines
        .iter()
        .map(|t| map.reconstructible_windows(t.id))
        .collect()
}

fn image_starts(b: &Built) -> BTreeMap<TimelineId, Vec<Lsn>> {
    let mut m: BTreeMap<TimelineId, Vec<Lsn>> = BTreeMap::new();
    for i in &b.images {
        m.entry(i.timeline).or_default().push(i.start);
    }
    m
}

/// The layers after merging each group into one (settled, as old as its youngest part).
fn merged(wals: &[CompactWal], groups: &[CompactGroup]) -> Vec<CompactWal> {
    let gone: BTreeSet<LayerId> = groups.iter().flat_map(|g| g.layers.clone()).collect();
    let mut out: Vec<CompactWal> = wals
        .iter()
        .filter(|w| !gone.contains(&w.desc.id))
        .copied()
        .collect();
    for (k, g) in groups.iter().enumerate() {
        let parts: Vec<&CompactWal> = wals
            .iter()
            .filter(|w| g.layers.contains(&w.desc.id))
            .collect();
        out.push(CompactWal {
            desc: WalDesc {
                id: layer(20_000 + k as u32),
                timeline: g.timeline,
                start: g.start,
                end: g.end,
            },
            bytes: g.bytes,
            created_us: parts.iter().map(|w| w.created_us).max().unwrap(),
            settled: true,
        });
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn compaction_keeps_what_is_reconstructible(g in gen()) {
        let b = build(&g);
        let rules = CompactionRules { target_bytes: g.target, min_age_us: 50 };
        let starts = image_starts(&b);
        let groups = plan_compaction(&b.wals, &starts, rules, NOW);
        let by_id: BTreeMap<LayerId, &CompactWal> = b.wals.iter().map(|w| (w.desc.id, w)).collect();
        let mut seen = BTreeSet::new();
        for grp in &groups {
            prop_assert!(grp.layers.len() >= 2, "{grp:?}");
            let parts: Vec<&CompactWal> = grp.layers.iter().map(|l| by_id[l]).collect();
            prop_assert_eq!(parts[0].desc.start, grp.start);
            prop_assert_eq!(parts[parts.len() - 1].desc.end, grp.end);
            prop_assert_eq!(parts.iter().map(|w| w.bytes).sum::<u64>(), grp.bytes);
            prop_assert!(grp.bytes <= g.target, "{grp:?}");
            for pair in parts.windows(2) {
                prop_assert_eq!(pair[0].desc.end, pair[1].desc.start, "not contiguous: {:?}", grp);
            }
            for w in &parts {
                prop_assert_eq!(w.desc.timeline, grp.timeline);
                prop_assert!(w.settled && NOW - w.created_us >= 50, "not eligible: {w:?}");
                prop_assert!(seen.insert(w.desc.id), "in two groups: {w:?}");
            }
            for c in starts.get(&grp.timeline).into_iter().flatten() {
                prop_assert!(!(grp.start < *c && *c < grp.end), "spans the image at {c:?}: {grp:?}");
            }
        }
        let after = merged(&b.wals, &groups);
        prop_assert_eq!(windows(&b, &b.wals), windows(&b, &after));
        let again = plan_compaction(&after, &starts, rules, NOW);
        prop_assert!(again.is_empty(), "not a fixpoint: {again:?}");
    }
}

/// The model is not vacuous: across generated histories, groups are found and merging does
/// reduce the layer count.
#[test]
fn generated_histories_do_compact() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut with_groups, mut layers_before, mut layers_after) = (0, 0, 0);
    for _ in 0..200 {
        let g = gen().new_tree(&mut runner).unwrap().current();
        let b = build(&g);
        let rules = CompactionRules {
            target_bytes: g.target,
            min_age_us: 50,
        };
        let groups = plan_compaction(&b.wals, &image_starts(&b), rules, NOW);
        with_groups += usize::from(!groups.is_empty());
        layers_before += b.wals.len();
        layers_after += merged(&b.wals, &groups).len();
    }
    assert!(
        with_groups > 150,
        "{with_groups} of 200 histories had something to merge"
    );
    // Young, unsettled and large layers, gaps and images keep many apart; still a fifth go.
    println!("{layers_before} layers became {layers_after}");
    assert!(
        layers_after * 5 < layers_before * 4,
        "{layers_before} layers became {layers_after}"
    );
}
