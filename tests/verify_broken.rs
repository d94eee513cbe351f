//! Deliberately broken repositories, each found by the right check with the right diagnosis.
//! One cluster with two backups in two file regions; before each verification of region-a
//! the test breaks one thing there (or everywhere), and repairs it afterwards:
//! a flipped bit, a missing object, a truncated object, another layer's key object, a key
//! object wrapped for another appliance's key (a wrong key) or forged for this one's, a
//! replayed older index (all `object_integrity`, naming the object and the region, the good
//! copy served by region-b; the run then repairs region-a — objects copied from region-b back
//! to their exact bytes, the key object and the index written again — and the report lists
//! each repair), and a WAL layer gone from every region (`wal_continuity`: the restore cannot
//! run, the checks it made impossible are skipped, nothing to repair from). Untouched, region-a
//! passes.
//! (A failing probe and a corrupted B-tree entry are in `tests/verify.rs`.)

mod common;

use std::path::{Path, PathBuf};

use cairn_backup::crypto::keyobj::KeyObject;
use cairn_backup::keys::{Identity, RecipientEntry};
use common::report_check as check;
use common::*;

struct Broken {
    env: Env,
    cluster: String,
}

impl Broken {
    fn root(&self, region: &str) -> PathBuf {
        self.env
            .region_root(region)
            .join("clusters")
            .join(&self.cluster)
    }

    fn layer(&self, region: &str, id: &str) -> PathBuf {
        self.root(region).join("layers").join(id)
    }

    /// Verifies region-a with two checks; the report (exit 1 expected when `fails`).
    fn verify(&self, fails: bool) -> serde_json::Value {
        let out = self.env.run(&[
            "verify",
            "shop",
            "--region",
            "region-a",
            "--json",
            "--check",
            "object_integrity",
            "--check",
            "wal_continuity",
            "--check",
            "recovery_target",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(if fails { 1 } else { 0 }), "{err}");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"))
    }
}

/// Runs `damage`, verifies region-a, puts the saved files back; returns the report and
/// whether the run had already repaired every file to its saved bytes.
fn broken_by(b: &Broken, files: &[&Path], damage: impl FnOnce()) -> (serde_json::Value, bool) {
    let saved: Vec<(PathBuf, Vec<u8>)> = files
        .iter()
        .map(|f| (f.to_path_buf(), std::fs::read(f).unwrap()))
        .collect();
    damage();
    let r = b.verify(true);
    let repaired = saved
        .iter()
        .all(|(f, bytes)| std::fs::read(f).is_ok_and(|now| now == *bytes));
    for (f, bytes) in saved {
        std::fs::write(f, bytes).unwrap();
    }
    (r, repaired)
}

/// The run repaired `object` of region-a, from `from`.
fn assert_repaired(r: &serde_json::Value, object: &str, from: &str) {
    let repairs = r["repairs"].as_array().unwrap();
    assert!(
        repairs.iter().any(|x| x["region"] == "region-a"
            && x["object"].as_str().unwrap().contains(object)
            && x["from"] == from),
        "{object} repaired from {from}: {r:#}"
    );
    assert!(
        check(r, "object_integrity")["counts"]["repaired"]
            .as_u64()
            .unwrap()
            >= 1
    );
}

fn assert_integrity_names(r: &serde_json::Value, object: &str, why: &str) {
    assert_eq!(r["outcome"], "failed", "{r:#}");
    let c = check(r, "object_integrity");
    assert_eq!(c["outcome"], "failed", "{r:#}");
    let d = c["details"].to_string();
    assert!(
        d.contains(object) && d.contains("region-a") && d.contains(why),
        "object {object}, reason {why}: {d}"
    );
    assert!(
        d.contains("a good copy came from region-b"),
        "served by the other region: {d}"
    );
    // The data itself came back whole from the other region.
    assert_eq!(check(r, "recovery_target")["outcome"], "passed", "{r:#}");
}

#[test]
fn each_kind_of_damage_is_found_by_its_check_with_its_diagnosis() {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let psql = |sql: &str| {
        let out = std::process::Command::new(pg_bin().join("psql"))
            .arg(&url)
            .args(["-qc", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 5000) g");
    env.ok(&["backup", "now"]);
    let clusters = std::fs::read_dir(env.region_root("region-a").join("clusters")).unwrap();
    let cluster = clusters
        .flatten()
        .next()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned();
    let b = Broken { env, cluster };
    // The older index, before a second backup rewrites it.
    let index: PathBuf = std::fs::read_dir(b.root("region-a").join("timelines"))
        .unwrap()
        .flatten()
        .flat_map(|t| std::fs::read_dir(t.path()).unwrap().flatten())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("index-")
        })
        .unwrap();
    let old_index = std::fs::read(&index).unwrap();
    psql("INSERT INTO t SELECT generate_series(1, 100)");
    b.env.ok(&["backup", "now"]);
    assert_ne!(std::fs::read(&index).unwrap(), old_index, "rewritten");

    let layers = b.env.layers();
    let id = |kind: &str| -> String {
        layers
            .iter()
            .filter(|l| l["kind"] == kind)
            .max_by_key(|l| l["created_at_us"].as_i64())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (image, wal) = (id("image"), id("wal"));
    let clean = b.verify(false);
    assert_eq!(clean["outcome"], "passed", "{clean:#}");

    // A flipped bit in the image's object.
    let img = b.layer("region-a", &image);
    let (r, fixed) = broken_by(&b, &[&img], || {
        let mut bytes = std::fs::read(&img).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x10;
        std::fs::write(&img, bytes).unwrap();
    });
    assert_integrity_names(&r, &image, "fails authentication");
    assert_repaired(&r, &image, "region-b");
    assert!(fixed, "region-a holds the good copy again");

    // The image's object missing.
    let (r, fixed) = broken_by(&b, &[&img], || std::fs::remove_file(&img).unwrap());
    assert_integrity_names(&r, &image, "missing");
    assert_repaired(&r, &image, "region-b");
    assert!(fixed);

    // The image's object truncated to half.
    let (r, fixed) = broken_by(&b, &[&img], || {
        let bytes = std::fs::read(&img).unwrap();
        std::fs::write(&img, &bytes[..bytes.len() / 2]).unwrap();
    });
    assert_integrity_names(&r, &image, &image);
    assert_repaired(&r, &image, "region-b");
    assert!(fixed);

    // The image's key object replaced by the WAL layer's.
    let (key, other) = (
        b.root("region-a").join("keys").join(&image),
        b.root("region-a").join("keys").join(&wal),
    );
    let (r, fixed) = broken_by(&b, &[&key], || {
        std::fs::copy(&other, &key).unwrap();
    });
    assert_integrity_names(&r, &image, &image);
    assert_repaired(&r, &format!("keys/{image}"), "this appliance");
    assert!(fixed);

    // The image's key object wrapped for another appliance's key (a region written by a
    // stranger, or holding a keyring this appliance is not in): the right data key, but not
    // one this appliance can open. Named as a wrong key with the key that can open it, the
    // good copy served by region-b, the key object wrapped again by this appliance.
    let own = Identity::load(&b.env.home.join("keys").join("appliance.age")).unwrap();
    let real = KeyObject::decode(&std::fs::read(&key).unwrap(), "key").unwrap();
    let dek = real.unwrap(&[&own], "key").unwrap();
    let stranger_file = b.env.dir.path().join("stranger.age");
    b.env.ok(&[
        "key",
        "new-identity",
        "--out",
        stranger_file.to_str().unwrap(),
    ]);
    let stranger = Identity::load(&stranger_file).unwrap();
    let wrapped_for = |id: &Identity, dek: &[u8; 32]| {
        let entry = RecipientEntry {
            recipient: id.recipient.clone(),
            role: "appliance".into(),
            label: "elsewhere".into(),
        };
        KeyObject::wrap(dek, real.object_id, real.key_id, &[entry])
            .unwrap()
            .encode()
    };
    let (r, fixed) = broken_by(&b, &[&key], || {
        std::fs::write(&key, wrapped_for(&stranger, &dek)).unwrap();
    });
    assert_integrity_names(&r, &format!("keys/{image}"), "cannot be opened with");
    assert!(
        r.to_string().contains(&stranger.id()),
        "the key that would open it is named: {r:#}"
    );
    assert_repaired(&r, &format!("keys/{image}"), "this appliance");
    assert!(fixed, "wrapped again for this appliance's keyring");

    // A key object wrapped for this appliance's own (public) key by someone else, holding a
    // data key of their choosing: it opens, but not to the key the signed index commits to.
    let (r, fixed) = broken_by(&b, &[&key], || {
        std::fs::write(&key, wrapped_for(&own, &[7u8; 32])).unwrap();
    });
    assert_integrity_names(&r, &format!("keys/{image}"), "a forged key object");
    assert_repaired(&r, &format!("keys/{image}"), "this appliance");
    assert!(fixed);

    // The older index put back (a replay): refused, the newer one of region-b used.
    // Nothing put back afterwards: the repair wrote a newer index than the one replaced, and
    // the final clean run below proves region-a serves it.
    let (r, _) = broken_by(&b, &[], || std::fs::write(&index, &old_index).unwrap());
    assert_integrity_names(&r, "indexes of cluster 'shop'", "an old index was replayed");
    assert_repaired(&r, "/timelines/", "this appliance");
    assert_ne!(std::fs::read(&index).unwrap(), old_index, "rewritten");

    // The newest WAL layer gone from every region: no restore, a WAL gap.
    let (wa, wb) = (b.layer("region-a", &wal), b.layer("region-b", &wal));
    let (r, _) = broken_by(&b, &[&wa, &wb], || {
        std::fs::remove_file(&wa).unwrap();
        std::fs::remove_file(&wb).unwrap();
    });
    let c = check(&r, "wal_continuity");
    assert_eq!(c["outcome"], "failed", "{r:#}");
    let d = c["details"].to_string();
    assert!(
        d.contains(&wal) && d.contains("could not be fetched intact from any region"),
        "{d}"
    );
    assert_eq!(check(&r, "object_integrity")["outcome"], "skipped");
    assert!(r["repairs"].as_array().unwrap().is_empty(), "{r:#}");
    assert_eq!(check(&r, "recovery_target")["outcome"], "skipped");
    assert!(
        check(&r, "recovery_target")["details"]
            .to_string()
            .contains("the restore failed"),
        "{r:#}"
    );

    // Repaired: region-a passes again, and the chain holds every report.
    assert_eq!(b.verify(false)["outcome"], "passed");
    let v = b.env.ok(&["report", "verify"]);
    assert!(v.contains("catalog: 10 report(s), chain intact"), "{v}");
    b.env.stop_all();
}
