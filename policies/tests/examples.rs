//! The example policies in `policies/examples/` load without an error or a warning, and mean
//! what their comments say.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_policies::{defaults, load_dir, parse_str, Check, HoldPoint, PolicySet, VerifyPoint};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn load() -> PolicySet {
    match load_dir(&examples(), &common::context()) {
        Ok(set) => set,
        Err(e) => panic!("the examples must load:\n{e}"),
    }
}

fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[test]
fn every_example_loads_without_errors_or_warnings() {
    let set = load();
    let names: Vec<&str> = set.policies.iter().map(|p| p.name.as_str()).collect();
    // File-name order: analytics, compliance, dev, production.
    assert_eq!(
        names,
        ["analytics-warehouse", "finance", "dev", "production"]
    );
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    for p in &set.policies {
        let bytes = std::fs::read(&p.file).unwrap();
        assert_eq!(
            p.sha256,
            hex::encode(Sha256::digest(&bytes)),
            "{}",
            p.file.display()
        );
        // Each file also stands alone.
        let text = String::from_utf8(bytes).unwrap();
        let (alone, warnings) = parse_str(&p.file, &text, &common::context()).unwrap();
        assert_eq!(&alone, p);
        assert!(warnings.is_empty());
    }
}

#[test]
fn clusters_find_their_policy() {
    let set = load();
    let name = |c: &str| set.for_cluster(c).map(|p| p.name.as_str());
    assert_eq!(name("prod-eu"), Some("production"));
    assert_eq!(name("prod-us"), Some("production"));
    assert_eq!(name("billing"), Some("finance"));
    assert_eq!(name("ledger"), Some("finance"));
    assert_eq!(name("analytics-adhoc"), Some("analytics-warehouse"));
    assert_eq!(name("dev-bob"), Some("dev"));
    assert_eq!(name("staging"), None);
    assert_eq!(set.get("dev").map(|p| p.clusters.len()), Some(1));
}

#[test]
fn production_is_tight_and_spread_over_providers() {
    let set = load();
    let p = set.get("production").unwrap();
    assert_eq!(p.timezone, chrono_tz::Europe::Berlin);
    assert_eq!(p.objectives.rpo, Duration::from_secs(30));
    assert_eq!(p.objectives.rto, Duration::from_secs(15 * 60));
    let image = &p.schedules.image;
    assert_eq!(image.expression(), "0 */6 * * *");
    assert_eq!(
        image.timezone(),
        chrono_tz::Europe::Berlin,
        "the policy's zone is the default"
    );
    assert_eq!(image.jitter(), Duration::from_secs(600));
    assert_eq!(image.max_concurrent(), 2);
    let drill = p.schedules.drill.as_ref().unwrap();
    assert_eq!(drill.timezone(), chrono_tz::UTC);
    assert_eq!(
        drill.next_after(utc("2026-03-02T00:00:00Z")),
        Some(utc("2026-04-01T10:00:00Z"))
    );
    // 07:30 in Berlin is 05:30 UTC in summer.
    assert_eq!(
        p.schedules.verify.next_after(utc("2026-07-01T00:00:00Z")),
        Some(utc("2026-07-01T05:30:00Z"))
    );
    assert_eq!(p.retention.pitr, hours(14 * 24));
    assert_eq!((p.retention.gfs.daily, p.retention.gfs.weekly), (14, 8));
    assert_eq!((p.retention.gfs.monthly, p.retention.gfs.yearly), (6, 0));
    assert_eq!(p.regions.selected, ["eu-1", "eu-2", "us-1"]);
    assert_eq!(p.regions.min_copies, 2);
    assert_eq!(p.encryption.recipients.len(), 1);
    assert!(p.verification.checks.contains(&Check::Probes));
    assert!(!p.verification.checks.contains(&Check::Fingerprint));
    let probes: Vec<&str> = p
        .verification
        .probes
        .iter()
        .map(|x| x.name.as_str())
        .collect();
    assert_eq!(probes, ["orders-recent", "no-negative-stock"]);
    assert_eq!(p.verification.window, hours(2));
    assert_eq!(p.verification.time_limit, Duration::from_secs(90 * 60));
}

#[test]
fn analytics_keeps_a_long_gfs_tail_in_the_cold_tier() {
    let set = load();
    let p = set.get("analytics-warehouse").unwrap();
    assert!(p.file.ends_with("analytics.toml"));
    assert_eq!(p.schedules.image.expression(), "@weekly");
    let g = p.retention.gfs;
    assert_eq!(
        (g.hourly, g.daily, g.weekly, g.monthly, g.yearly),
        (0, 0, 12, 24, 7)
    );
    assert_eq!(p.retention.pitr, hours(30 * 24));
    assert_eq!(p.retention.min_retention, hours(7 * 24));
    assert_eq!(p.regions.selected, ["eu-2", "us-1"]);
    assert_eq!(
        p.verification.point,
        VerifyPoint::Random {
            within: hours(30 * 24)
        }
    );
    assert_eq!(
        p.verification.checks,
        [
            Check::ObjectIntegrity,
            Check::WalContinuity,
            Check::PageChecksums,
            Check::RecoveryTarget,
            Check::Fingerprint
        ]
    );
    assert_eq!(p.schedules.verify.jitter(), Duration::from_secs(1800));
}

#[test]
fn compliance_holds_points_and_waits_before_destroying() {
    let set = load();
    let p = set.get("finance").unwrap();
    assert_eq!(p.timezone, chrono_tz::America::New_York);
    let holds: Vec<HoldPoint> = p.retention.legal_holds.iter().map(|h| h.point).collect();
    assert_eq!(
        holds,
        [
            HoldPoint::Time(utc("2026-11-01T00:00:00Z")),
            HoldPoint::Lsn(0x16B_3748),
            HoldPoint::Time(utc("2025-12-31T23:59:59Z")),
        ]
    );
    assert_eq!(holds[0].to_string(), "2026-11-01T00:00:00Z");
    assert_eq!(holds[1].to_string(), "lsn:0/16B3748");
    assert!(p.retention.legal_holds[0].reason.starts_with("SEC inquiry"));
    assert_eq!(p.retention.cooling_off, hours(72));
    assert_eq!(p.retention.min_retention, hours(30 * 24));
    assert_eq!(p.regions.min_copies, 3);
    assert_eq!(p.regions.selected.len(), 3);
    let recipients: Vec<String> = p
        .encryption
        .recipients
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(
        recipients,
        [
            "age1ulksm360eyeyv7jx840jtg6sa9x42vy6xv7n644g08dz5z69nf9spn4eu0",
            "age180a95xgcm5v0xd823uxmpljmkpeppa047xxaepmn8elynfcwdcgq6gstyk"
        ]
    );
    // 02:00 New York does not exist on 2026-03-08: that day's image runs at 03:00 EDT.
    assert_eq!(
        p.schedules.image.next_after(utc("2026-03-08T00:00:00Z")),
        Some(utc("2026-03-08T07:00:00Z"))
    );
}

#[test]
fn the_minimal_dev_policy_gets_the_documented_defaults() {
    let set = load();
    let p = set.get("dev").unwrap();
    assert_eq!(p.timezone, chrono_tz::UTC);
    assert_eq!(p.schedules.image.expression(), defaults::IMAGE);
    assert_eq!(p.schedules.verify.expression(), defaults::VERIFY);
    assert_eq!(p.schedules.drill, None);
    assert_eq!(p.schedules.image.jitter(), Duration::ZERO);
    assert_eq!(p.schedules.image.max_concurrent(), 1);
    assert_eq!(p.retention.pitr, hours(7 * 24));
    assert_eq!(p.retention.min_retention, hours(24));
    assert_eq!(p.retention.cooling_off, hours(24));
    assert_eq!(p.retention.gfs, Default::default());
    assert!(p.retention.legal_holds.is_empty());
    assert!(p.encryption.recipients.is_empty());
    assert_eq!(p.verification.checks, Check::DEFAULT);
    assert_eq!(p.verification.point, VerifyPoint::Latest);
    assert_eq!(p.verification.window, hours(1));
    assert_eq!(p.verification.time_limit, hours(4));
    assert_eq!(p.regions.selected, ["eu-1"]);
}
