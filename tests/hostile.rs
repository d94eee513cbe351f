//! A region is untrusted storage. Each test here plays an attacker who can write one region
//! (a `file://` directory, or a real S3 server) but holds none of the appliance's keys, and
//! tries the attacks of the security review end to end against the real binary and real
//! PostgreSQL: junk and forged indexes, forged key objects, planted WAL metadata, replayed
//! indexes, recipient injection, forged secrets, cluster-name collisions, oversized objects,
//! long labels. Each attack must be refused or reported (region, object, reason), a restore
//! must fall back to the good region, and the attacker's identity must open nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use cairn_backup::crypto::keyobj::KeyObject;
use cairn_backup::crypto::stream::{seal_all, Compression, Header, ObjectKind};
use cairn_backup::keys::{Identity, RecipientEntry};
use cairn_backup::region::Region;
use common::attacker::*;
use common::garage::Garage;
use common::*;
use serde_json::Value;

/// A backed-up cluster: what a successful restore must bring back.
struct Victim {
    cluster_id: String,
    sum: String,
    password: String,
    kit: PathBuf,
}

async fn victim(env: &Env, extra_regions: &str) -> Victim {
    env.write_regions(&format!(
        "min_copies = 2\ndeletion_delay = \"24h\"\n{}\n{}",
        env.file_region("region-a"),
        if extra_regions.is_empty() {
            env.file_region("region-b")
        } else {
            extra_regions.to_string()
        }
    ));
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let c = connect(&url).await;
    c.batch_execute(
        "CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g;
         SELECT pg_create_restore_point('rp_good');
         INSERT INTO t SELECT g, 'late' FROM generate_series(20001, 20500) g;",
    )
    .await
    .unwrap();
    // Commits of their own, so that WAL layers carry metadata worth forging.
    c.batch_execute("CREATE TABLE ticks (n int)").await.unwrap();
    for n in 0..100 {
        c.execute("INSERT INTO ticks VALUES ($1)", &[&n])
            .await
            .unwrap();
    }
    let sum = table_checksum(&c, "t").await;
    drop(c);
    env.stop_all();
    env.ok(&["backup", "now"]);
    let cluster_id = env.json(&["cluster", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    Victim {
        cluster_id,
        sum,
        password: login_of(&url),
        kit: env.recovery_kit(),
    }
}

/// The restored data directory's table checksum, checked on a plain PostgreSQL.
async fn restored_sum(dir: &Path, password: &str) -> String {
    let server = Plain::start(dir);
    let c = connect(&server.url_as(password)).await;
    table_checksum(&c, "t").await
}

fn rejected_of(report: &Value, region: &str) -> Vec<String> {
    report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["region"] == region)
        .flat_map(|p| p["rejected"].as_array().unwrap().clone())
        .map(|r| {
            format!(
                "{}: {}",
                r["object"].as_str().unwrap(),
                r["reason"].as_str().unwrap()
            )
        })
        .collect()
}

fn substitutions(report: &Value) -> Vec<(String, String, String)> {
    report["substitutions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["object"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
                s["served_by"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn junk_forged_signers_forged_keys_and_planted_metadata_never_decide_a_restore() {
    let env = Env::new();
    let v = victim(&env, "").await;
    let a = file_region_of(&env, "region-a");
    let attacker = Attacker::new();
    // 1, 2. Junk under the highest generation name; an index signed by the attacker.
    let (main_idx, prefix) = plant_indexes(&a, &attacker).await;
    // 3. A forged key object (and envelope) for the newest image layer.
    let image = main_idx
        .layers
        .iter()
        .filter(|l| l.kind == "image")
        .max_by_key(|l| l.created_at_us)
        .unwrap()
        .id
        .clone();
    forge_layer(&a, &v.cluster_id, &image).await;
    // 4. Commit times moved in a WAL layer by someone who knows its data key.
    let kit_identity = Identity::load(&v.kit).unwrap();
    let wal: Vec<String> = main_idx
        .layers
        .iter()
        .filter(|l| l.kind == "wal")
        .map(|l| l.id.clone())
        .collect();
    let planted = plant_commit_times(&a, &v.cluster_id, &wal, &kit_identity).await;
    // 5. An oversized index planted one generation lower (sparse: nothing is read).
    let big = env
        .region_root("region-a")
        .join(format!("{prefix}/index-fffffffffffffffd"));
    std::fs::File::create(&big)
        .unwrap()
        .set_len(10 << 30)
        .unwrap();

    for (who, extra) in [("appliance", vec![]), ("empty machine", vec!["kit"])] {
        let runner = if extra.is_empty() {
            None
        } else {
            Some(Env::new())
        };
        let e = runner.as_ref().unwrap_or(&env);
        if runner.is_some() {
            e.write_regions(&format!(
                "min_copies = 1\n{}\n{}",
                env.file_region("region-a"),
                env.file_region("region-b")
            ));
            // Without a trust anchor nothing is believed: no trust on first use.
            let target = e.dir.path().join("refused");
            let err = e.fail(&[
                "restore",
                "shop",
                "--region",
                "region-a",
                "--to-datadir",
                target.to_str().unwrap(),
            ]);
            assert!(err.contains("--recovery-kit"), "{err}");
            assert!(!target.exists() || std::fs::read_dir(&target).unwrap().next().is_none());
            // A short key id is not a pin.
            let err = e.fail(&[
                "restore",
                "shop",
                "--to-datadir",
                target.to_str().unwrap(),
                "--trust-signer",
                "0123456789abcdef",
            ]);
            assert!(err.contains("64 hex digits"), "{err}");
        }
        let target = e
            .dir
            .path()
            .join(format!("restored-{}", who.replace(' ', "-")));
        let mut args = vec![
            "restore",
            "shop",
            "--region",
            "region-a",
            "--to-datadir",
            target.to_str().unwrap(),
        ];
        let kit = v.kit.to_str().unwrap().to_string();
        if runner.is_some() {
            args.extend(["--recovery-kit", &kit]);
        }
        let report = e.json(&args);
        // The junk did not block the region: its genuine index was used.
        assert_eq!(report["region"], "region-a", "{who}: {report}");
        let rejected = rejected_of(&report, "region-a");
        let has =
            |name: &str, why: &str| rejected.iter().any(|r| r.contains(name) && r.contains(why));
        assert!(
            has("index-ffffffffffffffff", "not a signed cairn index"),
            "{who}: {rejected:?}"
        );
        assert!(
            has(
                "index-fffffffffffffffe",
                "not a trusted appliance signing key"
            ),
            "{who}: {rejected:?}"
        );
        assert!(
            has("index-fffffffffffffffd", "more than an index can be"),
            "{who}: {rejected:?}"
        );
        let subs = substitutions(&report);
        assert!(
            subs.iter().any(|(o, r, by)| o.contains(&image)
                && r.contains("forged key object")
                && by == "region-b"),
            "{who}: {subs:?}"
        );
        assert!(
            subs.iter().any(|(o, r, by)| o.contains(&planted)
                && o.starts_with("metadata")
                && r.contains("does not hash to what the signed index binds")
                && by == "region-b"),
            "{who}: {subs:?}"
        );
        assert_eq!(restored_sum(&target, &v.password).await, v.sum, "{who}");
    }
    // The attacker's identity opens nothing, in either region.
    attacker.assert_opens_nothing(&a).await;
    attacker
        .assert_opens_nothing(&file_region_of(&env, "region-b"))
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebuild_takes_its_keyring_from_the_kit_and_stays_fenced_until_promoted() {
    let env = Env::new();
    let v = victim(&env, "").await;
    let b = file_region_of(&env, "region-b");
    let attacker = Attacker::new();
    // Recipient injection: the attacker's key added to the clear list of every key object.
    let mut injected = 0;
    for (k, _) in b.list("clusters").await.unwrap() {
        if k.contains("/keys/") {
            let mut ko = KeyObject::decode(&b.get(&k).await.unwrap(), &k).unwrap();
            ko.recipients.push(attacker.entry());
            b.put(&k, Bytes::from(ko.encode())).await.unwrap();
            injected += 1;
        }
    }
    assert!(injected >= 3);
    // Forged secrets: the attacker's password, wrapped for the appliance's public recipient.
    // The attacker keeps the object id the signed index names (it is public), so that only
    // the data key commitment can tell the forgery.
    let sk = format!("clusters/{}/keys/secrets", v.cluster_id);
    let real = KeyObject::decode(&b.get(&sk).await.unwrap(), "s").unwrap();
    let body =
        br#"{"password":"attacker-chosen","source_password":null,"owner_password":"attacker-chosen"}"#;
    let id = real.object_id;
    let dek = [9u8; 32];
    let appliance: Vec<RecipientEntry> = real
        .recipients
        .iter()
        .filter(|r| r.role == "appliance")
        .cloned()
        .collect();
    let fk = KeyObject::wrap(&dek, id, real.key_id, &appliance).unwrap();
    b.put(&sk, Bytes::from(fk.encode())).await.unwrap();
    let header = Header {
        kind: ObjectKind::Secrets,
        compression: Compression::None,
        chunk_size: 1 << 20,
        object_id: id,
        key_id: real.key_id,
    };
    b.put(
        &format!("clusters/{}/secrets", v.cluster_id),
        Bytes::from(seal_all(&dek, &header, body)),
    )
    .await
    .unwrap();

    // Disaster recovery from region-b, with region-a configured too.
    let dr = Env::new();
    dr.write_regions(&format!(
        "min_copies = 2\n{}\n{}",
        env.file_region("region-b"),
        env.file_region("region-a")
    ));
    let r = dr.json(&[
        "catalog",
        "rebuild",
        "--from-region",
        "region-b",
        "--recovery-kit",
        v.kit.to_str().unwrap(),
    ]);
    assert_eq!(r["fenced"], true, "{r}");
    let unknown: Vec<&str> = r["unknown_recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(unknown, vec![attacker.identity.recipient.as_str()], "{r}");
    let rejected = r["rejected"].to_string();
    assert!(
        rejected.contains("keys/secrets") && rejected.contains("forged key object"),
        "the forged secrets are reported: {r}"
    );
    let keyring = dr.json(&["key", "list"]);
    assert!(
        !keyring.to_string().contains(&attacker.identity.recipient),
        "{keyring}"
    );
    let kit_keyring = env.json(&["key", "list"])["keyring_fingerprint"].clone();
    assert_eq!(
        keyring["keyring_fingerprint"], kit_keyring,
        "the kit's keyring"
    );
    // The real owner password came from region-a; the attacker's was never written.
    let secret = std::fs::read_to_string(
        dr.home
            .join("secrets")
            .join(format!("{}.owner-password", v.cluster_id)),
    )
    .unwrap();
    assert_eq!(
        format!("cairn_owner:{}", secret.trim()),
        v.password,
        "the owner's login"
    );
    // Fenced: it computes and restores, but writes nothing to any region.
    let snapshot = |name: &str| -> BTreeMap<String, Vec<u8>> {
        env.region_objects(name)
            .into_iter()
            .map(|k| {
                let b = std::fs::read(env.region_root(name).join(&k)).unwrap();
                (k, Sha256::digest(&b).to_vec())
            })
            .collect()
    };
    let (before_a, before_b) = (snapshot("region-a"), snapshot("region-b"));
    let c = connect(&dr.start("main")).await;
    assert_eq!(table_checksum(&c, "t").await, v.sum);
    c.batch_execute("CREATE TABLE after_dr AS SELECT 1 AS x")
        .await
        .unwrap();
    drop(c);
    dr.stop_all();
    let err = dr.fail(&["backup", "now", "--no-image"]);
    assert!(
        err.contains("fenced") && err.contains("catalog promote"),
        "{err}"
    );
    dr.fail(&["regions", "gc"]);
    assert_eq!(
        snapshot("region-a"),
        before_a,
        "a fenced appliance wrote to region-a"
    );
    assert_eq!(
        snapshot("region-b"),
        before_b,
        "a fenced appliance wrote to region-b"
    );
    assert_eq!(dr.json(&["key", "list"])["fenced"], true);

    // Promoted, it ships at the next generation and re-wraps the key objects for its keyring.
    dr.ok(&["catalog", "promote"]);
    dr.ok(&["backup", "now", "--no-image"]);
    let states: Vec<String> = env
        .region_objects("region-b")
        .into_iter()
        .filter(|k| k.starts_with("state/"))
        .collect();
    assert!(
        states.iter().any(|k| k.ends_with("state-0000000000000002")),
        "{states:?}"
    );
    for name in ["region-a", "region-b"] {
        let region = file_region_of(&env, name);
        attacker.assert_opens_nothing(&region).await;
        for (k, _) in region.list("clusters").await.unwrap() {
            if k.contains("/keys/") {
                let ko = KeyObject::decode(&region.get(&k).await.unwrap(), &k).unwrap();
                assert!(
                    !ko.recipients
                        .iter()
                        .any(|r| r.recipient == attacker.identity.recipient),
                    "{k} still lists the attacker"
                );
            }
        }
    }
    // The promoted appliance's backup restores on yet another machine, with its own kit.
    let kit2 = dr.recovery_kit();
    let third = Env::new();
    third.write_regions(&format!("min_copies = 1\n{}", env.file_region("region-a")));
    let target = third.dir.path().join("restored");
    third.ok(&[
        "restore",
        "shop",
        "--to-datadir",
        target.to_str().unwrap(),
        "--recovery-kit",
        kit2.to_str().unwrap(),
    ]);
    let server = Plain::start(&target);
    let c = connect(&server.url_as(&v.password)).await;
    assert_eq!(table_checksum(&c, "t").await, v.sum);
    assert_eq!(scalar(&c, "SELECT count(*)::text FROM after_dr").await, "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_indexes_and_clusters_sharing_a_name_are_refused() {
    let env = Env::new();
    let v = victim(&env, "").await;
    let a = file_region_of(&env, "region-a");
    let old: Vec<(String, Bytes)> = {
        let mut out = Vec::new();
        for (k, _) in a.list("clusters").await.unwrap() {
            if k.contains("/timelines/") {
                out.push((k.clone(), a.get(&k).await.unwrap()));
            }
        }
        out
    };
    // More data, a new backup: the indexes move on.
    let c = connect(&env.start("main")).await;
    c.batch_execute("INSERT INTO t SELECT g, 'newer' FROM generate_series(30001, 30100) g")
        .await
        .unwrap();
    let sum2 = table_checksum(&c, "t").await;
    drop(c);
    env.stop_all();
    env.ok(&["backup", "now"]);
    assert_ne!(sum2, v.sum);
    // The attacker puts the old (genuinely signed) indexes back.
    for (k, b) in &old {
        a.put(k, b.clone()).await.unwrap();
    }
    let dr = Env::new();
    dr.write_regions(&format!(
        "min_copies = 1\n{}\n{}",
        env.file_region("region-a"),
        env.file_region("region-b")
    ));
    for (e, why) in [(&env, "already seen"), (&dr, "rolled back")] {
        let target = e.dir.path().join("after-replay");
        let report = e.json(&[
            "restore",
            "shop",
            "--region",
            "region-a",
            "--to-datadir",
            target.to_str().unwrap(),
            "--recovery-kit",
            v.kit.to_str().unwrap(),
        ]);
        let rejected = rejected_of(&report, "region-a");
        assert!(
            rejected
                .iter()
                .any(|r| r.contains("index-") && r.contains(why)),
            "{why}: {rejected:?}"
        );
        assert_eq!(report["region"], "region-b", "fell back: {report}");
        assert_eq!(restored_sum(&target, &v.password).await, sum2, "{why}");
    }

    // A cluster deleted and created again under the same name: two ids in the regions.
    env.ok(&["cluster", "delete", "shop", "--yes"]);
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let c = connect(&url).await;
    c.batch_execute("CREATE TABLE t AS SELECT 1 AS g, 'second shop' AS h")
        .await
        .unwrap();
    drop(c);
    env.stop_all();
    env.ok(&["backup", "now"]);
    let new_id = env.json(&["cluster", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_id, v.cluster_id);
    let err = dr.fail(&[
        "restore",
        "shop",
        "--region",
        "region-b",
        "--to-datadir",
        dr.dir.path().join("ambiguous").to_str().unwrap(),
        "--recovery-kit",
        v.kit.to_str().unwrap(),
    ]);
    assert!(
        err.contains("2 clusters named 'shop'")
            && err.contains(&v.cluster_id)
            && err.contains(&new_id)
            && err.contains("--cluster-id"),
        "{err}"
    );
    // Named by id, the old one comes back; on the appliance, its own (new) cluster does.
    let target = dr.dir.path().join("old-shop");
    dr.ok(&[
        "restore",
        "shop",
        "--region",
        "region-b",
        "--cluster-id",
        &v.cluster_id,
        "--to-datadir",
        target.to_str().unwrap(),
        "--recovery-kit",
        v.kit.to_str().unwrap(),
    ]);
    assert_eq!(restored_sum(&target, &v.password).await, sum2);
    let target = env.dir.path().join("new-shop");
    env.ok(&[
        "restore",
        "shop",
        "--region",
        "region-b",
        "--to-datadir",
        target.to_str().unwrap(),
    ]);
    let server = Plain::start(&target);
    let c = connect(&server.url_as(&login_of(&url))).await;
    assert_eq!(scalar(&c, "SELECT h FROM t").await, "second shop");
}

#[tokio::test(flavor = "multi_thread")]
async fn keyring_entries_that_would_corrupt_key_objects_are_refused() {
    let env = Env::new();
    env.write_regions(&format!("min_copies = 1\n{}", env.file_region("region-a")));
    let before = env.json(&["key", "list"]);
    let escrow = env.dir.path().join("escrow.age");
    let recipient = env.ok(&["key", "new-identity", "--out", escrow.to_str().unwrap()]);
    let long = "x".repeat(70_000);
    let err = env.fail(&["key", "add-recipient", recipient.trim(), "--label", &long]);
    assert!(err.contains("at most 256 bytes"), "{err}");
    let err = env.fail(&[
        "key",
        "add-recipient",
        recipient.trim(),
        "--label",
        "two\nlines",
    ]);
    assert!(err.contains("control characters"), "{err}");
    assert_eq!(env.json(&["key", "list"]), before, "nothing changed");
    env.ok(&["key", "add-recipient", recipient.trim(), "--label", "vault"]);
    assert_eq!(
        env.json(&["key", "list"])["recipients"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Whoever can write the catalog (a remote PostgreSQL catalog's administrators) cannot add
    // a recipient or a trusted signer: trust lives in the signed trust file, not in rows.
    let attacker = Attacker::new();
    let cat = cairn_engine::catalog::Catalog::open(&cairn_engine::catalog::Catalog::sqlite_url(
        &env.home,
    ))
    .await
    .unwrap();
    sqlx::query("INSERT INTO key_recipients (recipient, role, label, added_at) VALUES ($1, 'escrow', 'x', 0)")
        .bind(attacker.identity.recipient.clone())
        .execute(cat.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE appliance SET trusted_signers = $1")
        .bind(hex::encode(attacker.signer.public()))
        .execute(cat.pool())
        .await
        .unwrap();
    cat.close().await;
    let list = env.json(&["key", "list"]).to_string();
    assert!(!list.contains(&attacker.identity.recipient), "{list}");
    assert!(
        !list.contains(&hex::encode(attacker.signer.public())),
        "{list}"
    );
    // The trust file itself, edited outside cairn, is refused rather than believed.
    let trust = env.home.join("keys/trust");
    let mut b = std::fs::read(&trust).unwrap();
    let n = b.len();
    b[n - 2] ^= 1;
    std::fs::write(&trust, &b).unwrap();
    let err = env.fail(&["key", "list"]);
    assert!(
        err.contains("keys/trust") && err.contains("signature"),
        "{err}"
    );
    // The catalog is the appliance's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.home.join("catalog.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_region_under_attack_is_read_around_not_trusted() {
    let env = Env::new();
    let garage = Garage::start(&env.dir.path().join("garage"));
    let v = victim(&env, &garage.region_toml("s3", "prod")).await;
    let s3 = Region::connect(&garage.region_config("s3", "prod")).unwrap();
    let attacker = Attacker::new();
    let (main_idx, _) = plant_indexes(&s3, &attacker).await;
    let image = main_idx
        .layers
        .iter()
        .find(|l| l.kind == "image")
        .unwrap()
        .id
        .clone();
    forge_layer(&s3, &v.cluster_id, &image).await;
    // On an empty machine with the S3 region first and the file region as a fallback.
    let dr = Env::new();
    dr.write_regions(&format!(
        "min_copies = 1\n{}\n{}",
        garage.region_toml("s3", "prod"),
        env.file_region("region-a")
    ));
    let target = dr.dir.path().join("restored");
    let report = dr.json(&[
        "restore",
        "shop",
        "--region",
        "s3",
        "--to-datadir",
        target.to_str().unwrap(),
        "--recovery-kit",
        v.kit.to_str().unwrap(),
    ]);
    assert_eq!(report["region"], "s3", "{report}");
    let rejected = rejected_of(&report, "s3");
    assert!(
        rejected
            .iter()
            .any(|r| r.contains("index-ffffffffffffffff")),
        "{rejected:?}"
    );
    assert!(
        rejected
            .iter()
            .any(|r| r.contains("index-fffffffffffffffe") && r.contains("not a trusted")),
        "{rejected:?}"
    );
    let subs = substitutions(&report);
    assert!(
        subs.iter().any(|(o, r, by)| o.contains(&image)
            && r.contains("forged key object")
            && by == "region-a"),
        "{subs:?}"
    );
    assert_eq!(restored_sum(&target, &v.password).await, v.sum);
    attacker.assert_opens_nothing(&s3).await;
}
