//! Tablespaces end to end, on real PostgreSQL: tablespaces at absolute locations created on a
//! running compute before and after an image; a branch whose compute replays their creation
//! gets directories of its own (the parent's files hash the same after the branch writes,
//! vacuums and checkpoints); images and backups of such a cluster work; a disaster-recovery
//! restore with `--tablespace-map` (by name and by OID, from an image that has one tablespace
//! and WAL that creates the other) brings every table back.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use sha2::{Digest, Sha256};

/// Every file below `root` and its SHA-256.
fn hash_tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(&p, root, out);
            } else if ft.is_file() {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, hex::encode(Sha256::digest(std::fs::read(&p).unwrap())));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// A directory the postgres OS user owns, for `CREATE TABLESPACE ... LOCATION`.
fn location(env: &Env, name: &str) -> PathBuf {
    let d = env.dir.path().join("locations").join(name);
    std::fs::create_dir_all(&d).unwrap();
    chown_postgres(&env.dir.path().join("locations"));
    chown_postgres(&d);
    d
}

/// (OID, location) of each tablespace but the built-in ones, by name.
async fn tablespaces(c: &tokio_postgres::Client) -> BTreeMap<String, (u32, String)> {
    c.query(
        "SELECT spcname::text, oid, pg_tablespace_location(oid) FROM pg_tablespace \
         WHERE spcname NOT IN ('pg_default', 'pg_global')",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get::<_, String>(0), (r.get::<_, u32>(1), r.get(2))))
    .collect()
}

async fn checksums(c: &tokio_postgres::Client) -> (String, String) {
    (table_checksum(c, "a").await, table_checksum(c, "b").await)
}

/// The directory of a running compute (its data directory's parent).
fn compute_dir(env: &Env, branch: &str) -> PathBuf {
    let info = env.json(&["compute", "start", branch]);
    assert_eq!(info["already_running"], true, "{info}");
    PathBuf::from(info["datadir"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `restore shop --to-datadir TARGET`, a `--tablespace-map KEY=DIR` per map, the recovery
/// kit, then `extra`.
fn restore_args(target: &Path, maps: &[(&str, &Path)], kit: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["restore", "shop", "--to-datadir"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(target.display().to_string());
    for (k, d) in maps {
        a.push("--tablespace-map".into());
        a.push(format!("{k}={}", d.display()));
    }
    a.push("--recovery-kit".into());
    a.push(kit.display().to_string());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn strs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn tablespaces_are_per_compute_backed_up_and_restored_with_a_map() {
    let env = Env::new();
    env.two_file_regions();
    env.ok(&["cluster", "create", "shop"]);
    let (loc_a, loc_b) = (location(&env, "ts_a"), location(&env, "ts_b"));
    // Only a superuser creates tablespaces; one cluster, so the operator may have one.
    let main_url = env.start_superuser("main");
    let main = connect(&main_url).await;
    // Its own statement: CREATE TABLESPACE refuses to run in a transaction block.
    main.batch_execute(&format!(
        "CREATE TABLESPACE ta LOCATION '{}'",
        loc_a.display()
    ))
    .await
    .unwrap();
    main.batch_execute(
        "CREATE TABLE a (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = off) TABLESPACE ta;
         INSERT INTO a SELECT g, md5(g::text) FROM generate_series(1, 3000) g;",
    )
    .await
    .unwrap();
    // An image that holds tablespace ta (keyed by its OID).
    env.ok(&["image", "create", "main"]);
    main.batch_execute(&format!(
        "CREATE TABLESPACE tb LOCATION '{}'",
        loc_b.display()
    ))
    .await
    .unwrap();
    main.batch_execute(
        "CREATE TABLE b (id int, w text) WITH (autovacuum_enabled = off) TABLESPACE tb;
         CREATE INDEX b_id ON b (id) TABLESPACE ta;
         INSERT INTO b SELECT g, repeat('x', g % 50) FROM generate_series(1, 2000) g;
         CHECKPOINT;",
    )
    .await
    .unwrap();
    main.batch_execute("SELECT pg_create_restore_point('with_tb')")
        .await
        .unwrap();
    let at_with_tb = checksums(&main).await;
    // Reading set hint bits: written now, so that the parent's files stay still from here on.
    main.batch_execute("CHECKPOINT").await.unwrap();
    let main_spaces = tablespaces(&main).await;
    assert_eq!(main_spaces["ta"].1, loc_a.display().to_string());
    assert_eq!(main_spaces["tb"].1, loc_b.display().to_string());

    // A branch replays the creation of tb (and has ta from the image): its own directories.
    env.ok(&["branch", "create", "b1", "--from", "main"]);
    let before = (hash_tree(&loc_a), hash_tree(&loc_b));
    assert!(
        before.0.keys().any(|k| k.contains("PG_15_")) && !before.1.is_empty(),
        "the parent's tablespaces hold files: {before:?}"
    );
    let b1_url = env.start_superuser("b1");
    let b1 = connect(&b1_url).await;
    let own = compute_dir(&env, "b1").join("tablespaces");
    let b1_spaces = tablespaces(&b1).await;
    for name in ["ta", "tb"] {
        let (oid, loc) = &b1_spaces[name];
        assert_eq!(*oid, main_spaces[name].0, "same OID on the branch");
        assert_eq!(
            PathBuf::from(loc),
            own.join(oid.to_string()),
            "tablespace {name} of the branch lives in the branch's compute directory"
        );
    }
    assert_eq!(checksums(&b1).await, at_with_tb);
    b1.batch_execute(
        "DELETE FROM a WHERE id % 2 = 0;
         UPDATE b SET w = 'branch' WHERE id < 500;
         INSERT INTO a VALUES (-1, 'only on b1');",
    )
    .await
    .unwrap();
    for sql in ["VACUUM a", "VACUUM b", "CHECKPOINT"] {
        b1.batch_execute(sql).await.unwrap();
    }
    // The documented way to add one on a compute: in place, inside its own directory.
    b1.batch_execute("CREATE TABLESPACE tc LOCATION ''")
        .await
        .unwrap();
    b1.batch_execute("CREATE TABLE c TABLESPACE tc AS SELECT g FROM generate_series(1, 500) g")
        .await
        .unwrap();
    let b1_rows = checksums(&b1).await;
    assert_ne!(b1_rows, at_with_tb);
    // The parent's tablespace files did not change, and its rows are its own.
    assert_eq!(
        hash_tree(&loc_a),
        before.0,
        "ta of main untouched by the branch"
    );
    assert_eq!(
        hash_tree(&loc_b),
        before.1,
        "tb of main untouched by the branch"
    );
    assert_eq!(checksums(&main).await, at_with_tb);
    main.batch_execute("INSERT INTO a VALUES (-2, 'only on main')")
        .await
        .unwrap();
    let main_rows = checksums(&main).await;
    drop((main, b1));

    // Restarts: each server shows only its own rows, from directories of its own.
    env.ok(&["compute", "stop", "main"]);
    env.ok(&["compute", "stop", "b1"]);
    let stopped = (hash_tree(&loc_a), hash_tree(&loc_b));
    let main = connect(&env.start_superuser("main")).await;
    let b1 = connect(&env.start_superuser("b1")).await;
    assert_eq!(checksums(&main).await, main_rows);
    assert_eq!(checksums(&b1).await, b1_rows);
    let main_own = compute_dir(&env, "main").join("tablespaces");
    for (name, (oid, loc)) in tablespaces(&main).await {
        assert_eq!(PathBuf::from(loc), main_own.join(oid.to_string()), "{name}");
    }
    assert_eq!(
        scalar(&main, "SELECT v FROM a WHERE id < 0").await,
        "only on main"
    );
    assert_eq!(
        scalar(&b1, "SELECT v FROM a WHERE id < 0").await,
        "only on b1"
    );
    // The in-place tablespace came back from the WAL as a directory of b1's own.
    assert_eq!(scalar(&b1, "SELECT count(*)::text FROM c").await, "500");
    let b1_own = compute_dir(&env, "b1").join("tablespaces");
    let tc = &tablespaces(&b1).await["tc"];
    assert_eq!(PathBuf::from(&tc.1), b1_own.join(tc.0.to_string()));
    drop((main, b1));

    // Images and backups of a cluster with tablespaces work.
    env.ok(&["backup", "now"]);
    let images: Vec<_> = env
        .layers()
        .into_iter()
        .filter(|l| l["kind"] == "image")
        .collect();
    assert!(images.len() >= 3, "the backup took new images: {images:?}");
    env.stop_all();
    env.ok(&["check", "--full"]);
    // An export from the region: a scratch copy with its tablespaces, removed afterwards.
    let file = env.dir.path().join("shop.export");
    env.ok(&[
        "export",
        "shop",
        "--from-regions",
        "--region",
        "region-b",
        "--to",
        file.to_str().unwrap(),
    ]);
    let leftovers = env.export_leftovers();
    assert!(leftovers.is_empty(), "no scratch left: {leftovers:?}");
    let dump = env.dir.path().join("shop.dump");
    env.decrypt_export(&file, &dump);
    let out = std::process::Command::new(pg_bin().join("pg_restore"))
        .args(["-f", "-"])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sql = String::from_utf8_lossy(&out.stdout);
    assert!(
        sql.contains("SET default_tablespace = tb;"),
        "b lives in tb"
    );
    let copy = sql.split("COPY public.b ").nth(1).expect("b's data");
    assert_eq!(copy.lines().take_while(|l| *l != "\\.").count() - 1, 2000);
    let kit = env.recovery_kit();

    // Disaster: the appliance is gone; restore from region B with the recovery kit.
    std::fs::remove_dir_all(&env.home).unwrap();
    let dr = env.disaster_recovery_from("region-b");
    let (oid_a, oid_b) = (main_spaces["ta"].0, main_spaces["tb"].0);
    // A name the point does not know is refused with the tablespaces it has; nothing written.
    let refused = dr.dir.path().join("refused");
    let nosuch = dr.dir.path().join("maps/x");
    let err = dr.fail(&strs(&restore_args(
        &refused,
        &[("nosuch", &nosuch)],
        &kit,
        &[],
    )));
    assert!(
        err.contains("no tablespace named 'nosuch'")
            && err.contains(&format!("ta (OID {}", main_spaces["ta"].0)),
        "{err}"
    );
    assert!(!refused.exists() && !dr.dir.path().join("maps").exists());
    // At the restore point: the image before tb, and WAL that creates it (known by OID only).
    let target = dr.dir.path().join("at-with-tb");
    let map_a = dr.dir.path().join("maps/a");
    let map_b = dr.dir.path().join("maps/b");
    let oid_b_key = oid_b.to_string();
    let maps = [
        ("ta", map_a.as_path()),
        (oid_b_key.as_str(), map_b.as_path()),
    ];
    let report = dr.json(&strs(&restore_args(
        &target,
        &maps,
        &kit,
        &["--at-restore-point", "with_tb"],
    )));
    let placed: BTreeMap<u64, String> = report["tablespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["oid"].as_u64().unwrap(),
                t["directory"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        placed,
        BTreeMap::from([
            (oid_a as u64, map_a.display().to_string()),
            (oid_b as u64, map_b.display().to_string())
        ]),
        "{report}"
    );
    for (oid, dir) in [(oid_a, &map_a), (oid_b, &map_b)] {
        assert_eq!(
            std::fs::read_link(target.join(format!("pg_tblspc/{oid}"))).unwrap(),
            *dir
        );
    }
    let server = Plain::start(&target);
    let login = login_of(&main_url);
    let c = connect(&server.url_as(&login)).await;
    assert_eq!(checksums(&c).await, at_with_tb);
    let restored = tablespaces(&c).await;
    assert_eq!(restored["ta"].1, map_a.display().to_string());
    assert_eq!(restored["tb"].1, map_b.display().to_string());
    drop((c, server));
    // The latest point, from the backup's image (both tablespaces in it): unmapped ones go
    // beside the data directory.
    let latest = dr.dir.path().join("latest");
    let latest_b = dr.dir.path().join("maps/latest-b");
    let report = dr.json(&strs(&restore_args(
        &latest,
        &[("tb", &latest_b)],
        &kit,
        &[],
    )));
    let names: Vec<_> = report["tablespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].clone(), t["directory"].clone()))
        .collect();
    assert!(
        names.contains(&(
            "ta".into(),
            format!("{}.tablespaces/{oid_a}", latest.display()).into()
        )),
        "{report}"
    );
    let server = Plain::start(&latest);
    let c = connect(&server.url_as(&login)).await;
    assert_eq!(checksums(&c).await, main_rows);
    drop((c, server));
    // --delta over the earlier restore, with the same map: a stray file in a tablespace
    // directory goes, and the server has the latest rows.
    let stray = map_a.join("stray");
    std::fs::write(&stray, "x").unwrap();
    let report = dr.json(&strs(&restore_args(&target, &maps, &kit, &["--delta"])));
    assert!(report["removed"].as_u64().unwrap() >= 1, "{report}");
    assert!(
        !stray.exists(),
        "the stray file in tablespace ta was removed"
    );
    let server = Plain::start(&target);
    let c = connect(&server.url_as(&login)).await;
    assert_eq!(checksums(&c).await, main_rows);
    drop((c, server));
    // And --delta back to the point whose WAL creates tb: tb's directory is rebuilt by the
    // replay from nothing (a file left there by the later restore goes).
    let stray_b = map_b.join("stray");
    std::fs::write(&stray_b, "x").unwrap();
    dr.json(&strs(&restore_args(
        &target,
        &maps,
        &kit,
        &["--delta", "--at-restore-point", "with_tb"],
    )));
    assert!(
        !stray_b.exists(),
        "tb's directory was rebuilt by the replay"
    );
    let server = Plain::start(&target);
    let c = connect(&server.url_as(&login)).await;
    assert_eq!(checksums(&c).await, at_with_tb);
    // Since main stopped, nothing was written where it first kept its tablespaces.
    assert_eq!((hash_tree(&loc_a), hash_tree(&loc_b)), stopped);
}

/// A superuser on a compute (the operator's own `--superuser`) plants links in and as
/// tablespaces; the image Cairn takes as root follows none of them, so nothing outside the
/// compute's tablespace version directories reaches a layer or a branch.
#[tokio::test(flavor = "multi_thread")]
async fn images_never_follow_links_a_superuser_plants_in_tablespaces() {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let main = connect(&env.start_superuser("main")).await;
    main.batch_execute("CREATE TABLESPACE tx LOCATION ''")
        .await
        .unwrap();
    main.batch_execute("CREATE TABLE x TABLESPACE tx AS SELECT g FROM generate_series(1, 100) g")
        .await
        .unwrap();
    let datadir = scalar(&main, "SELECT current_setting('data_directory')").await;
    let rel = scalar(&main, "SELECT pg_relation_filepath('x')").await;
    let db_dir = Path::new(&datadir)
        .join(&rel)
        .parent()
        .unwrap()
        .to_path_buf();
    // Root-only secrets outside the compute, and links to them where the image walk looks.
    let secret_dir = env.dir.path().join("root-only");
    std::fs::create_dir_all(secret_dir.join("PG_15_202209061/5")).unwrap();
    std::fs::write(secret_dir.join("PG_15_202209061/5/1259"), "root secret").unwrap();
    std::fs::write(secret_dir.join("key"), "root secret").unwrap();
    for (p, mode) in [
        (secret_dir.join("PG_15_202209061/5/1259"), 0o600),
        (secret_dir.join("key"), 0o600),
        (secret_dir.clone(), 0o700),
    ] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    for (link, to) in [
        (db_dir.join("99999"), secret_dir.join("key")),
        (
            Path::new(&datadir).join("pg_tblspc/88888"),
            secret_dir.clone(),
        ),
    ] {
        main.batch_execute(&format!(
            "COPY (SELECT 1) TO PROGRAM 'ln -s {} {}'",
            to.display(),
            link.display()
        ))
        .await
        .unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    }
    env.ok(&["image", "create", "main"]);
    drop(main);
    env.ok(&["compute", "stop", "main"]);
    env.ok(&["branch", "create", "b", "--from", "main"]);
    let b = connect(&env.start_superuser("b")).await;
    assert_eq!(scalar(&b, "SELECT count(*)::text FROM x").await, "100");
    let dir = compute_dir(&env, "b");
    let leaked: Vec<_> = hash_tree(&dir)
        .into_iter()
        .filter(|(_, h)| *h == hex::encode(Sha256::digest(b"root secret")))
        .collect();
    assert!(
        leaked.is_empty(),
        "files outside the compute were copied: {leaked:?}"
    );
}
