//! Logical export end to end, on file regions and real PostgreSQL: a `pg_dump` of a past point
//! taken from a scratch branch (and, as an empty machine would, from a region), sealed to a
//! file and to a region, decrypted, loaded with plain `pg_restore` into a fresh server; tampered
//! files, foreign keys and signers refused with the reason named.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

fn two_regions(env: &Env) {
    env.write_regions(&format!(
        "min_copies = 2\ndeletion_delay = \"0s\"\n{}\n{}",
        env.file_region("region-a"),
        env.file_region("region-b")
    ));
}

/// A fresh, empty PostgreSQL server (trust authentication on 127.0.0.1).
fn fresh_server(dir: &Path) -> Plain {
    std::fs::create_dir_all(dir).unwrap();
    chown_postgres(dir);
    let out = pg_command("initdb")
        .arg("-D")
        .arg(dir)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Plain::start(dir)
}

/// What a pg_dump archive restores, as SQL text (minus the per-run `\restrict` keys).
fn archive_sql(dump: &Path) -> String {
    let out = Command::new(pg_bin().join("pg_restore"))
        .arg("--file=-")
        .arg(dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_restore of {}: {}",
        dump.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    strip_restrict(&String::from_utf8(out.stdout).unwrap())
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_of_a_past_point_decrypts_and_loads_into_a_fresh_server_as_it_was() {
    let env = Env::new();
    two_regions(&env);
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let c = connect(&url).await;
    c.batch_execute(
        "CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 30000) g;
         CREATE INDEX t_h ON t (h);
         CREATE VIEW big AS SELECT g FROM t WHERE g > 29990;",
    )
    .await
    .unwrap();
    let point = scalar(&c, "SELECT pg_current_wal_lsn()::text").await;
    let sum = table_checksum(&c, "t").await;
    // After the point: changes the export must not show.
    c.batch_execute("UPDATE t SET h = 'later' WHERE g <= 100; CREATE TABLE after_point (x int);")
        .await
        .unwrap();
    drop(c);

    // 1. From a scratch branch of this appliance, to a file.
    let file = env.dir.path().join("shop.cairnexp");
    let r = env.json(&[
        "export",
        "shop",
        "--at",
        &point,
        "--to",
        file.to_str().unwrap(),
    ]);
    assert_eq!(r["manifest"]["source"], "local layers", "{r}");
    assert_eq!(r["manifest"]["database"], "postgres");
    assert_eq!(mode(&file), 0o600, "export files are private");
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..8], b"CAIRNEXP");
    let branches = env.ok(&["branch", "list"]);
    assert!(
        !branches.contains("export-"),
        "the scratch branch is gone: {branches}"
    );
    let leftovers = env.export_leftovers();
    assert!(leftovers.is_empty(), "no plaintext left: {leftovers:?}");

    let dump = env.dir.path().join("shop.dump");
    env.decrypt_export(&file, &dump);
    assert_eq!(mode(&dump), 0o600);

    // Plain pg_restore into a fresh server gives the point back.
    let server = fresh_server(&env.dir.path().join("fresh"));
    let out = Command::new(pg_bin().join("pg_restore"))
        .args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
        .args([
            "-U",
            "postgres",
            "-d",
            "postgres",
            "--exit-on-error",
            "--no-owner",
            "--no-privileges",
        ])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = connect(&server.url("unused")).await;
    assert_eq!(
        table_checksum(&c, "t").await,
        sum,
        "every row as at the point"
    );
    assert_eq!(
        scalar(&c, "SELECT (to_regclass('after_point') IS NULL)::text").await,
        "true",
        "nothing after the point"
    );
    assert_eq!(scalar(&c, "SELECT count(*)::text FROM big").await, "10");
    assert_eq!(
        scalar(&c, "SELECT (to_regclass('t_h') IS NOT NULL)::text").await,
        "true"
    );
    drop(c);
    drop(server);

    // 2. From a region (as an empty machine would), to another region.
    env.stop_all();
    env.ok(&["backup", "now"]);
    let r2 = env.json(&[
        "export",
        "shop",
        "--at",
        &point,
        "--from-regions",
        "--region",
        "region-b",
        "--to-region",
        "region-a",
    ]);
    assert_eq!(r2["manifest"]["source"], "region region-b", "{r2}");
    let id = r2["manifest"]["id"].as_str().unwrap().to_string();
    let objects = env.region_objects("region-a");
    let cid = r2["manifest"]["cluster_id"].as_str().unwrap();
    for k in [
        format!("clusters/{cid}/exports/{id}"),
        format!("clusters/{cid}/exports/{id}.manifest"),
        format!("clusters/{cid}/keys/export-{id}"),
    ] {
        assert!(objects.contains(&k), "{k} in {objects:?}");
    }
    // Exports outlive garbage collection and are proved by a full check.
    env.ok(&["regions", "gc"]);
    let listed = env.json(&["export", "list"]);
    let found = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["manifest"]["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} listed: {listed}"));
    assert_eq!(found["region"], "region-a");
    let check = env.json(&["regions", "check", "--full"]);
    assert_eq!(check["problems"], serde_json::json!([]), "{check}");

    let dump2 = env.dir.path().join("shop-region.dump");
    env.ok(&[
        "export",
        "decrypt",
        &id,
        "--region",
        "region-a",
        "--out",
        dump2.to_str().unwrap(),
    ]);
    assert_eq!(
        archive_sql(&dump2),
        archive_sql(&dump),
        "the same point, whichever way it was read"
    );

    // A damaged region object is found by a full check.
    let obj = env
        .region_root("region-a")
        .join(format!("clusters/{cid}/exports/{id}"));
    let mut b = std::fs::read(&obj).unwrap();
    let n = b.len();
    b[n / 2] ^= 0x40;
    std::fs::write(&obj, &b).unwrap();
    let out = env.run(&["regions", "check", "--full", "--json"]);
    assert!(!out.status.success(), "a damaged export fails the check");
    let check: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problems = check["problems"].to_string();
    assert!(problems.contains(&format!("exports/{id}")), "{problems}");
    let bad = env.dir.path().join("bad-region.dump");
    let err = env.fail(&[
        "export",
        "decrypt",
        &id,
        "--region",
        "region-a",
        "--out",
        bad.to_str().unwrap(),
    ]);
    assert!(err.contains(&format!("exports/{id}")), "{err}");
    assert!(!bad.exists(), "nothing unverified written");

    // 3. A tampered file is refused and leaves nothing.
    let tampered = env.dir.path().join("tampered.cairnexp");
    let mut b = bytes.clone();
    let n = b.len();
    b[n - 100] ^= 1;
    std::fs::write(&tampered, &b).unwrap();
    let out = env.dir.path().join("tampered.dump");
    let err = env.fail(&[
        "export",
        "decrypt",
        tampered.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("tampered.cairnexp"), "{err}");
    assert!(!out.exists());
    std::fs::write(&tampered, &bytes[..n - 5000]).unwrap();
    let err = env.fail(&[
        "export",
        "decrypt",
        tampered.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("truncated"), "{err}");

    // 4. Another machine: its own keys open nothing; the signer must be named; with the
    // identity file and the signer's key id the same dump comes back.
    let other = Env::new();
    let elsewhere = other.dir.path().join("x.dump");
    let err = other.fail(&[
        "export",
        "decrypt",
        file.to_str().unwrap(),
        "--out",
        elsewhere.to_str().unwrap(),
    ]);
    let signer = r["signer"].as_str().unwrap();
    assert_eq!(signer.len(), 64, "a signer is named by its full key");
    assert!(
        err.contains(signer) && err.contains("--recovery-kit"),
        "{err}"
    );
    let err = other.fail(&[
        "export",
        "decrypt",
        file.to_str().unwrap(),
        "--out",
        elsewhere.to_str().unwrap(),
        "--trust-signer",
        signer,
    ]);
    assert!(
        err.contains("cannot be opened with") && err.contains("its data key is wrapped for"),
        "{err}"
    );
    assert!(!elsewhere.exists());
    let identity = env.home.join("keys/appliance.age");
    other.ok(&[
        "export",
        "decrypt",
        file.to_str().unwrap(),
        "--out",
        elsewhere.to_str().unwrap(),
        "--trust-signer",
        signer,
        "--identity",
        identity.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&elsewhere).unwrap(),
        std::fs::read(&dump).unwrap()
    );

    // 5. Refusals that name the problem.
    let err = env.fail(&[
        "export",
        "decrypt",
        file.to_str().unwrap(),
        "--out",
        dump.to_str().unwrap(),
    ]);
    assert!(err.contains("already exists"), "{err}");
    let err = env.fail(&["export", "shop", "--to", file.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");
    let err = env.fail(&[
        "export",
        "shop",
        "--database",
        "nosuch",
        "--to",
        env.dir.path().join("n.cairnexp").to_str().unwrap(),
    ]);
    assert!(err.contains("nosuch"), "{err}");
    assert!(!env.dir.path().join("n.cairnexp").exists());
    // A "database name" that libpq would read as a connection string (another host): refused
    // before anything runs.
    let err = env.fail(&[
        "export",
        "shop",
        "--database",
        "host=203.0.113.9 dbname=postgres",
        "--to",
        env.dir.path().join("m.cairnexp").to_str().unwrap(),
    ]);
    assert!(err.contains("cannot be exported by name"), "{err}");
    let err = env.fail(&[
        "export", "decrypt", "../etc", "--region", "region-a", "--out", "x",
    ]);
    assert!(err.contains("not an export id"), "{err}");
}
