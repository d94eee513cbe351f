//! The restore source's pure decisions, each against small hand-built indexes: region
//! ranking and try order, index substitution, shred refusal, the wanted cluster id, WAL tail
//! bounds and metadata ranges.

use super::*;
use cairn_backup::index::{BranchName, PolicySnapshot, TimelineInfo};

fn cluster(id: &str, name: &str) -> ClusterInfo {
    ClusterInfo {
        id: id.into(),
        name: name.into(),
        kind: "created".into(),
        pg_major: 15,
        system_id: "1".into(),
        segment_size: 16 << 20,
        tli: 1,
        created_at_us: 0,
        source: None,
        slot: None,
        secrets: None,
    }
}

fn layer(n: usize) -> IndexedLayer {
    IndexedLayer {
        id: format!("{n:064x}"),
        kind: "wal".into(),
        start: "0/0".into(),
        end: "0/10".into(),
        file_size: 1,
        logical_size: 1,
        stored_bytes: 1,
        created_at_us: 0,
        object_size: 1,
        object_sha256: String::new(),
        key_id: String::new(),
        dek_commitment: String::new(),
        tail: None,
        refs: Vec::new(),
    }
}

/// An index of timeline `id` (child of `ancestor`), on branch `branch`, with `layers` layers.
fn index(id: &str, ancestor: Option<&str>, branch: &str, layers: usize) -> TimelineIndex {
    TimelineIndex {
        format: 2,
        path: format!("index-{id}"),
        generation: 1,
        sequence: 1,
        written_at_us: 0,
        cluster: cluster("c1", "shop"),
        timeline: TimelineInfo {
            id: id.into(),
            ancestor: ancestor.map(|a| (a.to_string(), "0/10".to_string())),
            head: "0/10".into(),
            ancestor_prev: None,
            created_at_us: 0,
            branch: Some(BranchName {
                name: branch.into(),
                protected: false,
            }),
        },
        layers: (0..layers).map(layer).collect(),
        policy: PolicySnapshot {
            min_copies: 1,
            regions: Vec::new(),
        },
        keyring_fingerprint: String::new(),
    }
}

fn view(indexes: Vec<TimelineIndex>, rejected: Vec<Rejected>) -> ClusterView {
    ClusterView {
        region: "region-a".into(),
        cluster: cluster("c1", "shop"),
        indexes,
        signers: Vec::new(),
        live: HashSet::new(),
        ids: BTreeMap::new(),
        rejected,
    }
}

fn rejected(object: &str, reason: &str) -> Rejected {
    Rejected {
        region: "region-a".into(),
        object: object.into(),
        reason: reason.into(),
    }
}

#[test]
fn a_missing_branch_names_the_branches_there_and_what_was_set_aside() {
    let v = view(
        vec![
            index("t1", None, "main", 1),
            index("t2", Some("t1"), "dev", 1),
        ],
        vec![rejected("index-t3", "signed by an unknown key")],
    );
    let e = v.branch("gone").unwrap_err().to_string();
    assert!(e.contains("its branches there: dev, main"), "{e}");
    assert!(
        e.contains("(objects set aside there: index-t3: signed by an unknown key)"),
        "{e}"
    );
    let clean = view(vec![index("t1", None, "main", 1)], Vec::new());
    let e = clean.branch("gone").unwrap_err().to_string();
    assert!(!e.contains("set aside"), "{e}");
    assert!(e.ends_with("its branches there: main"), "{e}");
    assert_eq!(clean.branch("main").unwrap().timeline.id, "t1");
}

#[test]
fn ancestry_is_nearest_first_and_refuses_gaps_and_loops() {
    let v = view(
        vec![
            index("t1", None, "main", 1),
            index("t2", Some("t1"), "dev", 1),
            index("t3", Some("t2"), "fix", 1),
        ],
        Vec::new(),
    );
    let ids: Vec<&str> = v
        .ancestry("t3")
        .unwrap()
        .iter()
        .map(|i| i.timeline.id.as_str())
        .collect();
    assert_eq!(ids, ["t3", "t2", "t1"]);
    let gap = view(
        vec![index("t3", Some("t2"), "fix", 1)],
        vec![rejected("index-t2", "rolled back")],
    );
    let e = gap.ancestry("t3").unwrap_err().to_string();
    assert!(e.contains("timeline t2 is named as an ancestor"), "{e}");
    assert!(e.contains("index-t2: rolled back"), "{e}");
    let looped = view(
        vec![
            index("t1", Some("t2"), "main", 1),
            index("t2", Some("t1"), "dev", 1),
        ],
        Vec::new(),
    );
    let e = looped.ancestry("t1").unwrap_err().to_string();
    assert!(e.contains("has a loop"), "{e}");
}

#[test]
fn layer_count_sums_every_index() {
    let v = view(
        vec![
            index("t1", None, "main", 2),
            index("t2", Some("t1"), "dev", 3),
        ],
        Vec::new(),
    );
    assert_eq!(v.layer_count(), 5);
    assert_eq!(view(Vec::new(), Vec::new()).layer_count(), 0);
}

#[test]
fn the_region_with_most_layers_wins_then_the_fastest_and_each_is_tried_once() {
    let h = |region, layers, seconds| Health {
        region,
        layers,
        seconds,
    };
    // Region 2 indexes more layers though it answered last.
    assert_eq!(
        try_order(4, &[h(0, 5, 0.1), h(2, 6, 3.0), h(1, 5, 0.05)]),
        [2, 1, 0, 3]
    );
    // Equal layers: the faster answer first.
    assert_eq!(try_order(2, &[h(0, 5, 0.9), h(1, 5, 0.2)]), [1, 0]);
    // Unhealthy regions last, in configuration order.
    assert_eq!(try_order(4, &[h(3, 1, 1.0)]), [3, 0, 1, 2]);
    assert_eq!(try_order(3, &[h(0, 1, 1.0)]), [0, 1, 2]);
}

fn probe(region: &str, error: Option<&str>) -> RegionProbe {
    RegionProbe {
        region: region.into(),
        ok: error.is_none(),
        layers: 0,
        seconds: 0.0,
        error: error.map(str::to_string),
        rejected: Vec::new(),
    }
}

#[test]
fn indexes_from_another_region_than_the_preferred_one_are_a_substitution() {
    let probes = [
        probe("region-a", Some("holds no backup of cluster 'shop'")),
        probe("region-b", None),
    ];
    let s = index_substitution("shop", Some("region-a"), "region-b", &probes).unwrap();
    assert_eq!(s.object, "indexes of cluster 'shop'");
    assert_eq!(s.region, "region-a");
    assert_eq!(s.reason, "holds no backup of cluster 'shop'");
    assert_eq!(s.served_by.as_deref(), Some("region-b"));
    assert!(index_substitution("shop", Some("region-b"), "region-b", &probes).is_none());
    assert!(index_substitution("shop", None, "region-b", &probes).is_none());
}

#[test]
fn a_shred_record_refuses_by_id_or_by_a_name_no_index_carries() {
    let rec = ShredRecord {
        format: 1,
        path: "clusters/c1/shredded".into(),
        cluster_id: "c1".into(),
        cluster_name: "shop".into(),
        requested_at_us: 0,
        shredded_at_us: 0,
    };
    let by_id = |id: &str| Wanted {
        name: "shop",
        id: Some(id.into()),
    };
    let by_name = Wanted {
        name: "shop",
        id: None,
    };
    assert!(shred_refuses(&rec, &by_id("c1"), &[]));
    assert!(!shred_refuses(&rec, &by_id("c2"), &[]));
    assert!(shred_refuses(&rec, &by_name, &[]));
    // A newer cluster named "shop" has a valid index: the name is not refused.
    assert!(!shred_refuses(
        &rec,
        &by_name,
        &[index("t9", None, "main", 1)]
    ));
    let other = Wanted {
        name: "cart",
        id: None,
    };
    assert!(!shred_refuses(&rec, &other, &[]));
}

#[test]
fn a_given_cluster_id_must_be_the_appliances_own() {
    let e = resolve_wanted("shop", Some("c2"), Some("c1".into()))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("has id c1, not c2"), "{e}");
    let w = resolve_wanted("shop", Some("c1"), Some("c1".into())).unwrap();
    assert_eq!(w.id.as_deref(), Some("c1"));
    let w = resolve_wanted("shop", Some("c2"), None).unwrap();
    assert_eq!(w.id.as_deref(), Some("c2"));
    let w = resolve_wanted("shop", None, Some("c1".into())).unwrap();
    assert_eq!(w.id.as_deref(), Some("c1"));
    assert!(resolve_wanted("shop", None, None).unwrap().id.is_none());
}

#[test]
fn a_wal_tail_must_hold_a_trailer_inside_the_indexed_file() {
    let t = TRAILER_LEN;
    assert!(check_tail(1000, t, 1000, "x").is_ok());
    assert!(check_tail(1000, 1000, 1000, "x").is_ok());
    assert!(check_tail(1000, t - 1, 1000, "x").is_err());
    assert!(check_tail(1000, 1001, 1000, "x").is_err());
    assert!(check_tail(999, t, 1000, "x").is_err());
    assert!(check_tail(1001, t, 1000, "x").is_err());
    let e = check_tail(999, t, 1000, "region 'a', layer").unwrap_err();
    assert!(e.to_string().contains("holds 999 plaintext bytes"), "{e}");
}

#[test]
fn wal_metadata_must_cover_exactly_the_indexed_range_at_both_ends() {
    use cairn_engine::Lsn;
    let meta = |start: u64, end: u64| WalMeta {
        system_id: 1,
        pg_major: 15,
        tli: 1,
        segment_size: 16 << 20,
        timeline: cairn_engine::TimelineId([1; 16]),
        data_start: Lsn(start),
        start: Lsn(start),
        end: Lsn(end),
        prev_record: None,
        last_record: Lsn(start),
        created_at_us: 0,
        chunks: vec![],
        events: vec![],
        resume_points: vec![],
    };
    // The index entry says 0/0..0/10.
    let l = layer(1);
    assert!(check_range(&meta(0, 0x10), &l, "x").is_ok());
    // One end off is enough to refuse, whichever end.
    assert!(check_range(&meta(0, 0x11), &l, "x").is_err());
    assert!(check_range(&meta(1, 0x10), &l, "x").is_err());
    assert!(check_range(&meta(1, 0x11), &l, "x").is_err());
    let e = check_range(&meta(0, 0x20), &l, "region 'a', layer").unwrap_err();
    assert!(
        e.to_string()
            .contains("covers 0/0..0/20, the index says 0/0..0/10"),
        "{e}"
    );
}
