//! The chain of verification reports, as an attacker with write access to a region (or to the
//! catalog) would try it: every single byte of a stored report changed, a report removed from
//! the middle or the end, two swapped, one re-signed by another key, one replayed from another
//! chain. `cairn report verify` rests on [`verify_chain`]; each case must be found at the
//! right report with the right reason. Appending from several tasks at once keeps one chain;
//! a file region's copy verifies against the catalog's head, and an edit there is found.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_backup::keys::Signer;
use cairn_backup::region::{Region, RegionConfig};
use cairn_engine::catalog::Catalog;
use cairn_verifier::report::chain::{file_name, verify_chain, BrokenLink};
use cairn_verifier::report::html;
use cairn_verifier::report::seal::{open, seal};
use cairn_verifier::report::{CheckResult, Outcome, Phase, PointRef, PolicyRef, Report};
use cairn_verifier::store;
use proptest::prelude::*;

fn draft(i: u64) -> Report {
    let checks = vec![
        CheckResult {
            name: "object_integrity".into(),
            outcome: Outcome::Passed,
            duration_ms: 120 + i,
            counts: BTreeMap::from([("objects".into(), 12), ("bytes".into(), 4_194_304)]),
            details: vec![],
        },
        CheckResult {
            name: "sql_probes".into(),
            outcome: if i.is_multiple_of(2) {
                Outcome::Failed
            } else {
                Outcome::Passed
            },
            duration_ms: 7,
            counts: BTreeMap::from([("probes".into(), 2)]),
            details: if i.is_multiple_of(2) {
                vec!["probe `SELECT '<script>alert(1)</script>' = ''` returned false".into()]
            } else {
                vec![]
            },
        },
    ];
    Report {
        format: 1,
        sequence: 0,
        previous: None,
        id: format!("run-{i}"),
        appliance_version: "0.1.0".into(),
        requested_by: "cli:alice".into(),
        cluster: "shop".into(),
        cluster_id: "0123456789abcdef0123456789abcdef".into(),
        policy: Some(PolicyRef {
            name: "gold".into(),
            file_sha256: "ab".repeat(32),
            rpo_ms: 30_000,
            rto_ms: 3_600_000,
        }),
        region: "region-a".into(),
        point: PointRef {
            branch: "main".into(),
            selection: "latest".into(),
            lsn: format!("0/{:X}", 0x1600_0000 + i),
            time_us: Some(1_796_534_157_000_000 + i as i64),
        },
        started_at_us: 1_796_534_157_000_000 + i as i64 * 60_000_000,
        ended_at_us: 1_796_534_160_000_000 + i as i64 * 60_000_000,
        outcome: Report::outcome_of(&checks),
        checks,
        phases: vec![
            Phase {
                name: "restore".into(),
                duration_ms: 2_500,
            },
            Phase {
                name: "start".into(),
                duration_ms: 400,
            },
        ],
        measured_rto_ms: 2_900,
        achieved_rpo_ms: Some(1_000 + i),
        repairs: vec![],
        teardown: "removed".into(),
    }
}

async fn catalog(dir: &std::path::Path) -> Catalog {
    Catalog::open(&format!(
        "sqlite://{}?mode=rwc",
        dir.join("catalog.db").display()
    ))
    .await
    .unwrap()
}

/// A catalog with `n` reports appended by `signer`.
async fn chain_of(dir: &std::path::Path, signer: &Signer, n: u64) -> Catalog {
    let cat = catalog(dir).await;
    for i in 1..=n {
        store::append(&cat, signer, &draft(i)).await.unwrap();
    }
    cat
}

fn broken_at(stored: &[(String, Vec<u8>)], trusted: &[[u8; 32]]) -> BrokenLink {
    verify_chain(stored, trusted, None)
        .broken
        .expect("the chain must be found broken")
}

#[tokio::test]
async fn a_clean_chain_verifies_and_every_edited_byte_is_found_at_its_report() {
    let tmp = tempfile::tempdir().unwrap();
    let (signer, _) = Signer::generate();
    let trusted = [signer.public()];
    let cat = chain_of(tmp.path(), &signer, 4).await;
    let stored = store::all_stored(&cat).await.unwrap();
    assert_eq!(stored.len(), 4);
    let ok = verify_chain(&stored, &trusted, None);
    assert_eq!((ok.good, ok.broken.clone()), (4, None), "{ok:?}");
    let head = store::head(&cat).await.unwrap().unwrap();
    assert_eq!(ok.head, Some(head.clone()));
    assert_eq!(head.0, 4);

    // Each report names the digest of the one before it; the first names none.
    let opened: Vec<_> = stored
        .iter()
        .map(|(_, b)| open(b, &trusted).unwrap())
        .collect();
    assert_eq!(opened[0].report.previous, None);
    for w in opened.windows(2) {
        assert_eq!(w[1].report.previous.as_deref(), Some(w[0].digest.as_str()));
    }

    // Every byte of report 2, changed: found at report 2, nowhere else.
    let (name, bytes) = &stored[1];
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x20] {
            let mut edited = stored.clone();
            edited[1].1[i] ^= flip;
            let b = broken_at(&edited, &trusted);
            assert_eq!(&b.at, name, "byte {i} ^ {flip:#x}: {b:?}");
        }
    }
    println!("{} bytes x 2 edits of {name}: each found", bytes.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Any byte of any report set to any other value is found at that report.
    #[test]
    fn any_byte_set_to_any_value_breaks_the_chain_there(
        which in 0usize..3, at in any::<prop::sample::Index>(), value in any::<u8>()
    ) {
        let (stored, trusted) = fixed_chain();
        let mut edited = stored.clone();
        let i = at.index(edited[which].1.len());
        prop_assume!(edited[which].1[i] != value);
        edited[which].1[i] = value;
        let b = broken_at(&edited, &trusted);
        prop_assert_eq!(&b.at, &stored[which].0);
    }
}

/// Stored reports: (name, bytes).
type Stored = Vec<(String, Vec<u8>)>;

/// A chain of three sealed in memory, the way `store::append` links them.
fn fixed_chain() -> (Stored, Vec<[u8; 32]>) {
    let (signer, _) = Signer::generate();
    let mut out = Vec::new();
    let mut previous = None;
    for i in 1..=3u64 {
        let r = Report {
            sequence: i,
            previous: previous.clone(),
            ..draft(i)
        };
        let s = seal(&r, &signer);
        previous = Some(s.digest.clone());
        out.push((file_name(i), s.bytes));
    }
    (out, vec![signer.public()])
}

#[tokio::test]
async fn removed_swapped_forged_and_replayed_reports_are_each_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (signer, _) = Signer::generate();
    let trusted = [signer.public()];
    let cat = chain_of(tmp.path(), &signer, 5).await;
    let stored = store::all_stored(&cat).await.unwrap();
    let head = store::head(&cat).await.unwrap().unwrap();

    // Report 3 removed from the middle.
    let mut gap = stored.clone();
    gap.remove(2);
    let b = broken_at(&gap, &trusted);
    assert_eq!(b.at, file_name(4));
    assert!(
        b.why
            .contains("follows report 2: reports 3..=3 are missing"),
        "{b:?}"
    );

    // Reports 2 and 3 swapped (each file holding the other's bytes).
    let mut swapped = stored.clone();
    let (a, c) = (swapped[1].1.clone(), swapped[2].1.clone());
    swapped[1].1 = c;
    swapped[2].1 = a;
    let b = broken_at(&swapped, &trusted);
    assert_eq!(b.at, file_name(2));
    assert!(b.why.contains("holds report 3, not report 2"), "{b:?}");

    // The first report removed.
    let b = broken_at(&stored[1..], &trusted);
    assert_eq!(b.at, file_name(2));
    assert!(b.why.contains("reports 1..=1 are missing"), "{b:?}");

    // The newest report removed: only the recorded head shows it.
    let short = verify_chain(&stored[..4], &trusted, Some((head.0, &head.1)));
    let b = short.broken.expect("found against the head");
    assert_eq!(b.at, file_name(5));
    assert!(b.why.contains("the chain ends at report 4"), "{b:?}");
    assert_eq!(short.good, 4);
    let full = verify_chain(&stored, &trusted, Some((head.0, &head.1)));
    assert_eq!(full.broken, None);

    // Report 3 edited and signed again with another key: not a trusted signer.
    let (mallory, _) = Signer::generate();
    let mut r3 = open(&stored[2].1, &trusted).unwrap().report;
    r3.outcome = Outcome::Passed;
    r3.checks
        .iter_mut()
        .for_each(|c| c.outcome = Outcome::Passed);
    let mut forged = stored.clone();
    forged[2].1 = seal(&r3, &mallory).bytes;
    let b = broken_at(&forged, &trusted);
    assert_eq!(b.at, file_name(3));
    assert!(b.why.contains("not a trusted signer"), "{b:?}");

    // Report 3 of another chain by the same appliance (another history): it does not follow
    // report 2 of this one.
    let other = tempfile::tempdir().unwrap();
    let other_cat = catalog(other.path()).await;
    for i in 1..=3 {
        store::append(&other_cat, &signer, &draft(i + 100))
            .await
            .unwrap();
    }
    let theirs = store::all_stored(&other_cat).await.unwrap();
    let mut replayed = stored.clone();
    replayed[2].1 = theirs[2].1.clone();
    let b = broken_at(&replayed, &trusted);
    assert_eq!(b.at, file_name(3));
    assert!(b.why.contains("does not follow report 2"), "{b:?}");

    // A stored name that is not a report's.
    let mut odd = stored.clone();
    odd[0].0 = "report-1.json".into();
    assert!(broken_at(&odd, &trusted).why.contains("not the name"));
}

#[tokio::test(flavor = "multi_thread")]
async fn appends_from_several_tasks_keep_one_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let (signer, _) = Signer::generate();
    let signer = Arc::new(signer);
    let cat = Arc::new(catalog(tmp.path()).await);
    store::head(&cat).await.unwrap(); // the table exists before the race
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let (cat, signer) = (cat.clone(), signer.clone());
        tasks.push(tokio::spawn(async move {
            store::append(&cat, &signer, &draft(i)).await.unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap().report.sequence);
    }
    seqs.sort();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
    let status = store::verify_catalog(&cat, &[signer.public()])
        .await
        .unwrap();
    assert_eq!((status.good, status.broken), (8, None));
    let listed = store::list(&cat, Some("shop"), 100).await.unwrap();
    assert_eq!(listed.len(), 8);
    assert_eq!(listed[0].sequence, 8, "newest first");
    assert!(store::list(&cat, Some("other"), 100)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_region_copy_verifies_against_the_catalog_and_an_edit_there_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let (signer, _) = Signer::generate();
    let trusted = [signer.public()];
    let cat = chain_of(tmp.path(), &signer, 3).await;
    let dir = tmp.path().join("region-a");
    std::fs::create_dir_all(&dir).unwrap();
    let region = Region::connect(&RegionConfig {
        name: "region-a".into(),
        url: format!("file://{}", dir.display()),
        endpoint: None,
        s3_region: None,
        credentials_file: None,
        allow_http: false,
        tags: BTreeMap::new(),
    })
    .unwrap();
    assert_eq!(store::publish(&cat, &region).await.unwrap(), 3);
    assert_eq!(
        store::publish(&cat, &region).await.unwrap(),
        0,
        "idempotent"
    );
    let ok = store::verify_region(&cat, &region, &trusted).await.unwrap();
    assert_eq!((ok.good, ok.broken), (3, None));

    // A fourth report not yet copied: the region's chain is short of the catalog's head.
    store::append(&cat, &signer, &draft(4)).await.unwrap();
    let short = store::verify_region(&cat, &region, &trusted).await.unwrap();
    assert!(short
        .broken
        .unwrap()
        .why
        .contains("reports 4..=4 are missing"));
    assert_eq!(store::publish(&cat, &region).await.unwrap(), 1);

    // One byte of report 2 edited in the region's files.
    let file = walk(&dir)
        .into_iter()
        .find(|p| p.ends_with(file_name(2)))
        .expect("report 2 in the region");
    let mut bytes = std::fs::read(&file).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x04;
    std::fs::write(&file, bytes).unwrap();
    let b = store::verify_region(&cat, &region, &trusted)
        .await
        .unwrap()
        .broken
        .unwrap();
    assert_eq!(b.at, file_name(2));
    // The catalog's chain is untouched.
    let c = store::verify_catalog(&cat, &trusted).await.unwrap();
    assert_eq!((c.good, c.broken), (4, None));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[tokio::test]
async fn the_html_page_escapes_what_the_report_quotes_and_needs_no_script() {
    let (signer, _) = Signer::generate();
    let sealed = seal(
        &Report {
            sequence: 1,
            ..draft(2)
        },
        &signer,
    );
    let page = html::render(&sealed);
    assert!(!page.contains("<script"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(page.contains("FAILED"));
    assert!(page.contains(&sealed.digest));
    assert!(
        page.contains("measured 2.900 s against 3600.000 s"),
        "{page}"
    );
    assert!(page.contains("2026-12-06"), "{page}");
}
