//! Adopting a PostgreSQL server that Cairn did not create: started here with plain initdb and
//! pg_ctl, the way an operator's server would be, with a replication role and pg_hba rules.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A server started by hand, outside Cairn.
struct Source {
    datadir: PathBuf,
    port: u16,
}

impl Source {
    fn start(dir: &Path, wal_level: &str) -> Source {
        Self::start_with(dir, wal_level, true)
    }

    fn start_with(dir: &Path, wal_level: &str, checksums: bool) -> Source {
        let datadir = dir.join("source");
        std::fs::create_dir_all(&datadir).unwrap();
        chown_postgres(dir);
        let pw = dir.join("pw");
        std::fs::write(&pw, "supersecret").unwrap();
        chown_postgres(&pw);
        let out = pg_command("initdb")
            .arg("-D")
            .arg(&datadir)
            .args(["-U", "postgres", "--auth=scram-sha-256"])
            .args(if checksums { &["-k"][..] } else { &[][..] })
            .arg(format!("--pwfile={}", pw.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(
            datadir.join("pg_hba.conf"),
            "host all all 127.0.0.1/32 scram-sha-256\n\
             host replication cairn 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let senders = if wal_level == "minimal" { 0 } else { 5 };
        let port = pg_ctl_start(
            &datadir,
            &dir.join("source.log"),
            &format!(
                "-c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
                 -c wal_level={wal_level} -c max_wal_senders={senders}"
            ),
        );
        Source { datadir, port }
    }

    fn admin_url(&self) -> String {
        format!(
            "postgresql://postgres:supersecret@127.0.0.1:{}/postgres",
            self.port
        )
    }

    fn cairn_url(&self) -> String {
        format!(
            "postgresql://cairn:repl%20pw@127.0.0.1:{}/postgres",
            self.port
        )
    }
}

/// Starts a branch's compute and connects as the source's own superuser: branches keep the
/// source's roles and passwords.
async fn start_as_admin(env: &Env, branch: &str) -> tokio_postgres::Client {
    let info = env.json(&["compute", "start", branch]);
    let port = info["port"].as_u64().unwrap();
    connect(&format!(
        "postgresql://postgres:supersecret@127.0.0.1:{port}/postgres"
    ))
    .await
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = pg_command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.datadir)
            .args(["-m", "immediate"])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn adopt_a_running_server_and_follow_its_wal() {
    let env = Env::new();
    let src = Source::start(env.dir.path(), "replica");
    let admin = connect(&src.admin_url()).await;
    admin
        .batch_execute(
            "CREATE ROLE cairn LOGIN REPLICATION PASSWORD 'repl pw';
             CREATE TABLE items (id int PRIMARY KEY, name text);
             INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 5000) g;",
        )
        .await
        .unwrap();
    let at_adoption = table_checksum(&admin, "items").await;

    let out = env.ok(&["cluster", "adopt", "erp", "--from", &src.cairn_url()]);
    assert!(out.contains("adopted 'erp'"), "{out}");
    let clusters = env.json(&["cluster", "list"]);
    assert_eq!(clusters[0]["kind"], "adopted");
    assert!(
        !clusters.to_string().contains("repl pw") && !clusters.to_string().contains("repl%20pw"),
        "the password is not in the catalog"
    );
    let slots = scalar(
        &admin,
        "SELECT string_agg(slot_name, ',') FROM pg_replication_slots",
    )
    .await;
    assert_eq!(slots, "cairn_erp");

    // A branch at the adopted head has the source's data.
    env.ok(&["branch", "create", "snap", "--from", "main"]);
    let snap = start_as_admin(&env, "snap").await;
    assert_eq!(table_checksum(&snap, "items").await, at_adoption);
    drop(snap);

    // New writes on the source reach Cairn through the slot.
    admin
        .batch_execute(
            "UPDATE items SET name = 'renamed' WHERE id % 10 = 0;
             DELETE FROM items WHERE id > 4900;",
        )
        .await
        .unwrap();
    // Its own statement: a restore point inside the transaction would precede the commit.
    admin
        .batch_execute("SELECT pg_create_restore_point('after_cleanup')")
        .await
        .unwrap();
    let after = table_checksum(&admin, "items").await;
    admin
        .batch_execute("INSERT INTO items VALUES (-1, 'later')")
        .await
        .unwrap();
    let latest = table_checksum(&admin, "items").await;
    env.ok(&["cluster", "sync", "erp"]);
    env.ok(&[
        "branch",
        "create",
        "cleanup",
        "--from",
        "main",
        "--at-restore-point",
        "after_cleanup",
    ]);
    env.ok(&["branch", "create", "latest", "--from", "main"]);
    let c = start_as_admin(&env, "cleanup").await;
    assert_eq!(table_checksum(&c, "items").await, after);
    let l = start_as_admin(&env, "latest").await;
    assert_eq!(table_checksum(&l, "items").await, latest);
    // A branch of an adopted cluster is writable and independent of the source.
    l.batch_execute("DELETE FROM items").await.unwrap();
    assert_eq!(
        scalar(&admin, "SELECT count(*)::text FROM items").await,
        "4901"
    );
    drop((c, l));

    // `cairn up` streams continuously.
    admin
        .batch_execute("INSERT INTO items VALUES (-2, 'streamed')")
        .await
        .unwrap();
    let streamed = table_checksum(&admin, "items").await;
    let api = free_port();
    let mut up = env
        .command(&[
            "up",
            "--listen",
            &format!("127.0.0.1:{api}"),
            "--sync-interval",
            "0.2",
        ])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let target = scalar(&admin, "SELECT pg_current_wal_lsn()::text").await;
    loop {
        let head = env.head("main");
        if lsn(&head) >= lsn(&target) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "WAL did not stream: head {head}, source {target}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(up.id() as i32, libc::SIGTERM);
    }
    assert!(up.wait().unwrap().success());
    env.ok(&["compute", "stop", "cleanup"]);
    env.ok(&["compute", "stop", "latest"]);
    env.ok(&["branch", "create", "streamed", "--from", "main"]);
    let s = start_as_admin(&env, "streamed").await;
    assert_eq!(table_checksum(&s, "items").await, streamed);
    drop(s);
    env.stop_all();
    env.ok(&["check", "--full"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn adopt_explains_what_the_source_lacks() {
    let env = Env::new();
    let src = Source::start(env.dir.path(), "minimal");
    let admin = connect(&src.admin_url()).await;
    admin
        .batch_execute("CREATE ROLE cairn LOGIN PASSWORD 'repl pw'")
        .await
        .unwrap();
    let err = env.fail(&["cluster", "adopt", "erp", "--from", &src.cairn_url()]);
    assert!(err.contains("wal_level = minimal"), "{err}");
    assert!(!err.contains("repl pw"), "no password in errors: {err}");
    drop(admin);
    drop(src);

    let env = Env::new();
    let src = Source::start(env.dir.path(), "replica");
    let admin = connect(&src.admin_url()).await;
    admin
        .batch_execute("CREATE ROLE cairn LOGIN PASSWORD 'repl pw'")
        .await
        .unwrap();
    let err = env.fail(&["cluster", "adopt", "erp", "--from", &src.cairn_url()]);
    assert!(err.contains("REPLICATION"), "{err}");
    let wrong = format!("postgresql://cairn:wrong@127.0.0.1:{}/postgres", src.port);
    let err = env.fail(&["cluster", "adopt", "erp", "--from", &wrong]);
    assert!(
        err.contains("cannot connect") && err.contains("pg_hba.conf"),
        "{err}"
    );
    assert!(!err.contains("wrong@"), "no password in errors: {err}");
    assert_eq!(env.json(&["cluster", "list"]), serde_json::json!([]));
    let slots = scalar(&admin, "SELECT count(*)::text FROM pg_replication_slots").await;
    assert_eq!(slots, "0", "a failed adoption leaves no slot on the source");
}

fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn adopt_a_server_without_data_checksums() {
    let env = Env::new();
    let src = Source::start_with(env.dir.path(), "replica", false);
    let admin = connect(&src.admin_url()).await;
    admin
        .batch_execute(
            "CREATE ROLE cairn LOGIN REPLICATION PASSWORD 'repl pw';
             CREATE TABLE t AS SELECT g FROM generate_series(1, 3000) g;",
        )
        .await
        .unwrap();
    assert_eq!(scalar(&admin, "SHOW data_checksums").await, "off");
    let expected = table_checksum(&admin, "t").await;
    env.ok(&["cluster", "adopt", "plain", "--from", &src.cairn_url()]);
    env.ok(&["branch", "create", "copy", "--from", "main"]);
    let c = start_as_admin(&env, "copy").await;
    assert_eq!(table_checksum(&c, "t").await, expected);
    drop(c);
    env.stop_all();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sources_configuration_runs_nothing_on_the_appliance() {
    let env = Env::new();
    let src = Source::start(env.dir.path(), "replica");
    let admin = connect(&src.admin_url()).await;
    admin
        .batch_execute("CREATE ROLE cairn LOGIN REPLICATION PASSWORD 'repl pw'")
        .await
        .unwrap();
    // The source's DBA plants a command that PostgreSQL runs at start-up (to decrypt an
    // encrypted TLS key) and a library to load, in postgresql.auto.conf, without restarting.
    let pwned = env.dir.path().join("pwned");
    let sh = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .current_dir(&src.datadir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-aes256",
        "-pass",
        "pass:secret",
        "-out",
        "server.key",
    ]);
    sh(&[
        "req",
        "-new",
        "-x509",
        "-key",
        "server.key",
        "-passin",
        "pass:secret",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
    ]);
    chown_postgres(&src.datadir);
    for f in ["server.key", "server.crt"] {
        std::fs::set_permissions(
            src.datadir.join(f),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
    }
    for stmt in [
        "ALTER SYSTEM SET ssl = on".to_string(),
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'".into(),
        "ALTER SYSTEM SET ssl_key_file = 'server.key'".into(),
        format!(
            "ALTER SYSTEM SET ssl_passphrase_command = 'touch {} && echo secret'",
            pwned.display()
        ),
        "ALTER SYSTEM SET shared_preload_libraries = 'no_such_library'".into(),
    ] {
        admin.batch_execute(&stmt).await.unwrap();
    }
    std::fs::set_permissions(
        env.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    env.ok(&["cluster", "adopt", "erp", "--from", &src.cairn_url()]);
    // A compute starts (it would not with the library) and nothing ran.
    let c = start_as_admin(&env, "main").await;
    assert_eq!(scalar(&c, "SHOW ssl").await, "off");
    assert_eq!(scalar(&c, "SHOW shared_preload_libraries").await, "");
    drop(c);
    env.stop_all();
    assert!(!pwned.exists(), "the source's ssl_passphrase_command ran");

    // A tablespace's data comes inside the base backup's archives: nothing is written at the
    // path the source gave (on this machine, here the same directory).
    let ts = env.dir.path().join("ts");
    std::fs::create_dir_all(&ts).unwrap();
    chown_postgres(&ts);
    admin
        .batch_execute(&format!("CREATE TABLESPACE ts LOCATION '{}'", ts.display()))
        .await
        .unwrap();
    admin
        .batch_execute("CREATE TABLE in_ts TABLESPACE ts AS SELECT 1 AS one")
        .await
        .unwrap();
    admin.batch_execute("CHECKPOINT").await.unwrap();
    let listing = |d: &Path| -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![d.to_path_buf()];
        while let Some(x) = stack.pop() {
            for e in std::fs::read_dir(&x).unwrap().flatten() {
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                }
                out.push((e.path().display().to_string(), m.len()));
            }
        }
        out.sort();
        out
    };
    let before = listing(&ts);
    env.ok(&["cluster", "adopt", "erp2", "--from", &src.cairn_url()]);
    assert_eq!(
        listing(&ts),
        before,
        "adoption wrote nothing at the source's path"
    );
    // An in-place tablespace would be left out of the archives: refused before any copy.
    for sql in [
        "SET allow_in_place_tablespaces = on",
        "CREATE TABLESPACE ip LOCATION ''",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    let err = env.fail(&["cluster", "adopt", "erp3", "--from", &src.cairn_url()]);
    assert!(
        err.contains("in-place tablespaces (ip)") && err.contains("nothing was copied"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(env.home.join("spool")).unwrap().count(),
        2,
        "only erp's and erp2's spools"
    );
}

/// Full-table checksums of `tables`.
async fn sums(c: &tokio_postgres::Client, tables: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for t in tables {
        out.push(table_checksum(c, t).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_with_tablespaces_is_adopted_branched_and_restored_from_a_region() {
    let env = Env::new();
    env.two_file_regions();
    let src = Source::start(env.dir.path(), "replica");
    let admin = connect(&src.admin_url()).await;
    let locations = env.dir.path().join("source-tablespaces");
    std::fs::create_dir_all(&locations).unwrap();
    chown_postgres(&locations);
    let loc = |n: &str| {
        let d = locations.join(n);
        std::fs::create_dir_all(&d).unwrap();
        chown_postgres(&d);
        d
    };
    let (l1, l2, l3) = (loc("s1"), loc("s2"), loc("s3"));
    admin
        .batch_execute("CREATE ROLE cairn LOGIN REPLICATION PASSWORD 'repl pw'")
        .await
        .unwrap();
    for (name, l) in [("s1", &l1), ("s2", &l2)] {
        admin
            .batch_execute(&format!(
                "CREATE TABLESPACE {name} LOCATION '{}'",
                l.display()
            ))
            .await
            .unwrap();
    }
    admin
        .batch_execute(
            "CREATE TABLE t1 (id int PRIMARY KEY, v text) TABLESPACE s1;
             INSERT INTO t1 SELECT g, md5(g::text) FROM generate_series(1, 4000) g;
             CREATE TABLE t2 TABLESPACE s2 AS SELECT g AS id, g * 7 AS w FROM generate_series(1, 3000) g;
             CREATE INDEX t1_v ON t1 (v) TABLESPACE s2;",
        )
        .await
        .unwrap();
    let at_adoption = sums(&admin, &["t1", "t2"]).await;
    env.ok(&["cluster", "adopt", "erp", "--from", &src.cairn_url()]);
    let image = env
        .layers()
        .into_iter()
        .find(|l| l["kind"] == "image")
        .unwrap();
    assert!(image["logical_size"].as_u64().unwrap() > 0, "{image}");

    // A branch has the tablespaces' data, in directories of its own.
    env.ok(&["branch", "create", "snap", "--from", "main"]);
    let snap = start_as_admin(&env, "snap").await;
    assert_eq!(sums(&snap, &["t1", "t2"]).await, at_adoption);
    let locs: Vec<String> = snap
        .query(
            "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname LIKE 's%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(locs.len(), 2);
    for l in &locs {
        assert!(
            !l.starts_with(locations.to_str().unwrap()) && l.contains("/tablespaces/"),
            "the branch's tablespace is its own: {l}"
        );
    }
    snap.batch_execute("DELETE FROM t1; DELETE FROM t2;")
        .await
        .unwrap();
    snap.batch_execute("CHECKPOINT").await.unwrap();
    assert_eq!(sums(&admin, &["t1", "t2"]).await, at_adoption);
    drop(snap);

    // A tablespace created on the source after the adoption comes through its WAL.
    admin
        .batch_execute(&format!("CREATE TABLESPACE s3 LOCATION '{}'", l3.display()))
        .await
        .unwrap();
    admin
        .batch_execute(
            "CREATE TABLE t3 TABLESPACE s3 AS SELECT g AS id FROM generate_series(1, 2500) g;
             UPDATE t1 SET v = 'after' WHERE id <= 100;",
        )
        .await
        .unwrap();
    let oid3 = scalar(
        &admin,
        "SELECT oid::text FROM pg_tablespace WHERE spcname = 's3'",
    )
    .await;
    let oid2 = scalar(
        &admin,
        "SELECT oid::text FROM pg_tablespace WHERE spcname = 's2'",
    )
    .await;
    let latest = sums(&admin, &["t1", "t2", "t3"]).await;
    env.ok(&["cluster", "sync", "erp"]);
    env.stop_all();
    env.ok(&["backup", "now"]);

    // Restored from region B, tablespaces mapped by name and by OID, one left to the default.
    let target = env.dir.path().join("restored");
    let (m1, m3) = (
        env.dir.path().join("maps/s1"),
        env.dir.path().join("maps/s3"),
    );
    let report = env.json(&[
        "restore",
        "erp",
        "--region",
        "region-b",
        "--to-datadir",
        target.to_str().unwrap(),
        "--tablespace-map",
        &format!("s1={}", m1.display()),
        "--tablespace-map",
        &format!("{oid3}={}", m3.display()),
    ]);
    assert_eq!(report["region"], "region-b");
    let server = Plain::start(&target);
    let c = connect(&server.url("supersecret")).await;
    assert_eq!(sums(&c, &["t1", "t2", "t3"]).await, latest);
    let got: std::collections::BTreeMap<String, String> = c
        .query(
            "SELECT spcname::text, pg_tablespace_location(oid) FROM pg_tablespace \
             WHERE spcname LIKE 's%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let default2 = format!("{}.tablespaces/{oid2}", target.display());
    assert_eq!(
        got,
        std::collections::BTreeMap::from([
            ("s1".to_string(), m1.display().to_string()),
            ("s2".to_string(), default2),
            ("s3".to_string(), m3.display().to_string()),
        ])
    );
}
