//! Golden vectors of the verification report format, version 1: a chain of two stored reports
//! under `tests/golden/v1/`, with the (test-only) signing key that signed them. They are pinned
//! by SHA-256 and must open, verify as a chain and decode to the same values forever; sealing
//! the decoded reports again with the same key gives the same bytes (canonical JSON, Ed25519
//! signatures are deterministic). The writer (`CAIRN_WRITE_GOLDEN_REPORTS=1`) refuses to
//! overwrite a file; a format change adds a version directory.

use std::collections::BTreeMap;
use std::path::PathBuf;

use cairn_backup::keys::Signer;
use cairn_verifier::report::chain::{file_name, verify_chain};
use cairn_verifier::report::seal::{open, seal};
use cairn_verifier::report::{CheckResult, Outcome, Phase, PointRef, PolicyRef, Repair, Report};
use sha2::{Digest, Sha256};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1")
}

const PINNED: [(&str, &str); 3] = [
    (
        "report-0000000001.json",
        "e899f33469c6f70ecb87fe6dac89f301e302e434a588a20cf1a61616d43d0b53",
    ),
    (
        "report-0000000002.json",
        "ae7bd91c64c303aa7d6d69764bca8c328ead7ab6348ab34e9ef0bbe2d433b64d",
    ),
    (
        "signing.pkcs8",
        "fcb674a3bfd2f471403ba36e7e68ebb4ae17cdf1b695fd8941debae84b2084e7",
    ),
];

fn first() -> Report {
    let checks = vec![
        CheckResult {
            name: "object_integrity".into(),
            outcome: Outcome::Passed,
            duration_ms: 812,
            counts: BTreeMap::from([("objects".into(), 14), ("bytes".into(), 9_437_184)]),
            details: vec![],
        },
        CheckResult {
            name: "page_checksums".into(),
            outcome: Outcome::Passed,
            duration_ms: 1_204,
            counts: BTreeMap::from([("pages".into(), 2_112)]),
            details: vec![],
        },
    ];
    Report {
        format: 1,
        sequence: 1,
        previous: None,
        id: "vr-20261206-051557-3f2a".into(),
        appliance_version: "0.1.0".into(),
        requested_by: "schedule:gold/job-7".into(),
        cluster: "shop".into(),
        cluster_id: "6c1f0e0b9a8d4c3e2f1a0b9c8d7e6f50".into(),
        policy: Some(PolicyRef {
            name: "gold".into(),
            file_sha256: "5d41402abc4b2a76b9719d911017c592ae2a2e0a77f7ee2b0f5c0b5e4a6f1c2d".into(),
            rpo_ms: 30_000,
            rto_ms: 3_600_000,
        }),
        region: "region-a".into(),
        point: PointRef {
            branch: "main".into(),
            selection: "latest".into(),
            lsn: "0/16B3D28".into(),
            time_us: Some(1_796_534_100_000_000),
        },
        started_at_us: 1_796_534_157_000_000,
        ended_at_us: 1_796_534_171_500_000,
        outcome: Report::outcome_of(&checks),
        checks,
        phases: vec![
            Phase {
                name: "restore".into(),
                duration_ms: 9_800,
            },
            Phase {
                name: "start".into(),
                duration_ms: 1_100,
            },
            Phase {
                name: "checks".into(),
                duration_ms: 2_016,
            },
        ],
        measured_rto_ms: 10_900,
        achieved_rpo_ms: Some(4_000),
        repairs: vec![],
        teardown: "removed".into(),
    }
}

fn second(previous: &str) -> Report {
    let checks = vec![CheckResult {
        name: "sql_probes".into(),
        outcome: Outcome::Failed,
        duration_ms: 15,
        counts: BTreeMap::from([("probes".into(), 1)]),
        details: vec![
            "probe 'orders present' (SELECT count(*) > 0 FROM orders) returned false".into(),
        ],
    }];
    Report {
        sequence: 2,
        previous: Some(previous.into()),
        id: "vr-20261206-061557-9b10".into(),
        requested_by: "cli:alice".into(),
        region: "region-b".into(),
        point: PointRef {
            branch: "main".into(),
            selection: "given".into(),
            lsn: "0/2000060".into(),
            time_us: None,
        },
        started_at_us: 1_796_537_757_000_000,
        ended_at_us: 1_796_537_769_000_000,
        outcome: Report::outcome_of(&checks),
        checks,
        achieved_rpo_ms: None,
        repairs: vec![Repair {
            region: "region-b".into(),
            object: "clusters/6c1f0e0b9a8d4c3e2f1a0b9c8d7e6f50/layers/ab12".into(),
            from: "region-a".into(),
            reason: "AEAD tag of chunk 3 did not verify".into(),
        }],
        ..first()
    }
}

#[test]
#[ignore = "writes the golden vectors once: CAIRN_WRITE_GOLDEN_REPORTS=1"]
fn write_version_1_vectors() {
    assert!(std::env::var_os("CAIRN_WRITE_GOLDEN_REPORTS").is_some());
    for (f, _) in PINNED {
        assert!(
            !dir().join(f).exists(),
            "{f} exists: released golden vectors are never rewritten"
        );
    }
    let (signer, pkcs8) = Signer::generate();
    std::fs::write(dir().join("signing.pkcs8"), pkcs8).unwrap();
    let one = seal(&first(), &signer);
    let two = seal(&second(&one.digest), &signer);
    std::fs::write(dir().join(file_name(1)), &one.bytes).unwrap();
    std::fs::write(dir().join(file_name(2)), &two.bytes).unwrap();
}

#[test]
fn version_1_reports_open_chain_and_reseal_to_the_same_bytes() {
    for (f, hash) in PINNED {
        let got = hex::encode(Sha256::digest(std::fs::read(dir().join(f)).unwrap()));
        assert_eq!(got, hash, "{f} changed: released golden vectors are frozen");
    }
    let signer = Signer::from_pkcs8(&std::fs::read(dir().join("signing.pkcs8")).unwrap()).unwrap();
    let trusted = [signer.public()];
    let stored: Vec<(String, Vec<u8>)> = [1, 2]
        .map(|n| {
            (
                file_name(n),
                std::fs::read(dir().join(file_name(n))).unwrap(),
            )
        })
        .into();
    let status = verify_chain(&stored, &trusted, None);
    assert_eq!((status.good, status.broken), (2, None));
    let one = open(&stored[0].1, &trusted).unwrap();
    let two = open(&stored[1].1, &trusted).unwrap();
    assert_eq!(one.report, first());
    assert_eq!(two.report, second(&one.digest));
    assert_eq!(seal(&one.report, &signer).bytes, stored[0].1);
    assert_eq!(seal(&two.report, &signer).bytes, stored[1].1);
}
