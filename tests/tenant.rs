//! Computes are tenants: the URL a compute prints logs in as the owner role, which can do what
//! an application needs and nothing that reaches the OS user, other clusters or the
//! appliance's keys. The superuser is handed out only when asked for, and only when its OS
//! user reaches nothing but the cluster.

mod common;

use std::process::Command;

use common::*;

/// Runs `sql` and returns the error text, panicking when it succeeds.
async fn refused(c: &tokio_postgres::Client, sql: &str) -> String {
    match c.batch_execute(sql).await {
        Ok(()) => panic!("{sql}: should have been refused"),
        Err(e) => e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_printed_url_is_an_owner_that_builds_applications_but_reaches_no_files() {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    assert!(url.contains("://cairn_owner:"), "{url}");
    let c = connect(&url).await;
    assert_eq!(
        scalar(
            &c,
            "SELECT rolsuper::text || rolcreaterole::text || rolreplication::text || \
             rolcreatedb::text FROM pg_roles WHERE rolname = current_user"
        )
        .await,
        "falsefalsefalsetrue"
    );

    // What an application does: pgbench's schema and load, DDL, a database of its own,
    // trusted extensions, roles through cairn.create_role, restore points, checkpoints.
    let out = Command::new(pg_bin().join("pgbench"))
        .args(["-i", "-s", "1", "-q", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        scalar(&c, "SELECT count(*)::text FROM pgbench_accounts").await,
        "100000"
    );
    c.batch_execute(
        "CREATE SCHEMA app;
         CREATE TABLE app.orders (id bigserial PRIMARY KEY, total numeric NOT NULL);
         CREATE INDEX ON app.orders (total);
         CREATE VIEW app.big AS SELECT * FROM app.orders WHERE total > 100;
         CREATE FUNCTION app.twice(x int) RETURNS int LANGUAGE sql AS 'SELECT 2 * x';
         CREATE EXTENSION pgcrypto;
         SELECT cairn.create_role('reporter', 'reporter-pw');
         GRANT USAGE ON SCHEMA app TO reporter;
         GRANT SELECT ON app.orders TO reporter;
         INSERT INTO app.orders (total) SELECT g FROM generate_series(1, 200) g;
         SELECT pg_create_restore_point('tenant_rp');
         CHECKPOINT;",
    )
    .await
    .unwrap();
    c.batch_execute("CREATE DATABASE analytics").await.unwrap();
    let reporter = format!(
        "postgresql://reporter:reporter-pw@127.0.0.1:{}/postgres",
        port_of(&url)
    );
    assert_eq!(psql(&reporter, "SELECT count(*) FROM app.orders"), "200");
    let analytics = url.replace("/postgres", "/analytics");
    assert_eq!(
        psql(&analytics, "CREATE TABLE t (x int); SELECT current_user"),
        "cairn_owner"
    );
    c.batch_execute("SELECT cairn.alter_role_password('reporter', 'new-pw')")
        .await
        .unwrap();

    // What it must not do: anything that runs as, or reads and writes as, the OS user.
    let mut wrong = vec![];
    for (sql, why) in [
        ("COPY (SELECT 1) TO PROGRAM 'id'", "pg_execute_server_program"),
        ("SELECT pg_read_file('/etc/passwd')", "permission denied"),
        ("SELECT pg_read_binary_file('PG_VERSION')", "permission denied"),
        ("COPY app.orders FROM '/etc/hostname'", "pg_read_server_files"),
        ("COPY app.orders TO '/tmp/cairn-tenant-out'", "pg_write_server_files"),
        ("SELECT lo_import('/etc/passwd')", "permission denied"),
        ("CREATE TABLESPACE evil LOCATION '/tmp'", "permission denied"),
        ("ALTER SYSTEM SET archive_command = 'id'", "permission denied"),
        ("GRANT pg_execute_server_program TO cairn_owner", "admin option"),
        ("GRANT pg_read_server_files TO reporter", "admin option"),
        ("CREATE ROLE root2 SUPERUSER", "must be superuser"),
        ("CREATE ROLE app3 LOGIN", "permission denied"),
        ("ALTER ROLE cairn_owner SUPERUSER", "must be superuser"),
        ("ALTER ROLE postgres PASSWORD 'x'", "must be superuser"),
        ("CREATE EXTENSION file_fdw", "permission denied"),
        (
            "CREATE FUNCTION pid() RETURNS int LANGUAGE c AS 'libc.so.6', 'getpid'",
            "permission denied for language c",
        ),
        (
            "SELECT pg_drop_replication_slot('cairn')",
            "must be superuser or replication role",
        ),
        ("ALTER DATABASE postgres SET search_path = app, pg_catalog", "must be owner"),
        ("SELECT cairn.create_role('pg_evil', 'x')", "not allowed"),
        ("SELECT cairn.alter_role_password('postgres', 'x')", "not created with"),
        ("SELECT cairn.drop_role('cairn_owner')", "not created with"),
        ("CREATE OR REPLACE FUNCTION cairn.create_role(n text, p text) RETURNS void LANGUAGE sql AS ''", "permission denied"),
        ("SET ROLE postgres", "permission denied"),
    ] {
        let err = refused(&c, sql).await;
        if !err.contains(why) {
            wrong.push(format!("{sql}: {err}"));
        }
    }
    assert!(wrong.is_empty(), "refused for another reason: {wrong:#?}");
    // The replication slot that keeps the branch's WAL is still there.
    let su = env.start_superuser("main");
    let admin = connect(&su).await;
    assert_eq!(
        scalar(
            &admin,
            "SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = 'cairn'"
        )
        .await,
        "1"
    );
    drop((c, admin));

    // Everything the tenant did is in the branch: after a restart, as the owner again.
    env.ok(&["compute", "stop", "main"]);
    let url = env.start("main");
    let c = connect(&url).await;
    assert_eq!(
        scalar(&c, "SELECT count(*)::text FROM app.orders").await,
        "200"
    );
    assert_eq!(
        psql(
            &format!(
                "postgresql://reporter:new-pw@127.0.0.1:{}/postgres",
                port_of(&url)
            ),
            "SELECT current_user"
        ),
        "reporter"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_superuser_is_given_only_where_it_reaches_nothing_else_and_roles_migrate() {
    let env = Env::new();
    env.two_file_regions();
    env.ok(&["cluster", "create", "shop"]);
    env.start("main");
    env.ok(&["backup", "now"]);
    let key_files: Vec<std::path::PathBuf> = walk(&env.home)
        .into_iter()
        .filter(|p| !p.starts_with(env.home.join("computes")))
        .filter(|p| p.is_file())
        // SQLite's shared-memory and journal files come and go.
        .filter(|p| {
            !p.to_string_lossy().ends_with("-shm") && !p.to_string_lossy().ends_with("-wal")
        })
        .collect();
    assert!(
        key_files
            .iter()
            .any(|p| p.starts_with(env.home.join("keys"))),
        "the appliance has key files: {key_files:?}"
    );
    if !is_root() {
        // Computes run as the appliance's own OS user: no superuser, ever.
        let err = env.fail(&["compute", "start", "main", "--superuser"]);
        assert!(err.contains("run Cairn as root"), "{err}");
        return;
    }

    // One cluster, Cairn as root: the operator may have a superuser, whose OS user can read
    // nothing of the appliance outside the computes.
    let su = env.start_superuser("main");
    assert!(su.contains("://postgres:"), "{su}");
    let admin = connect(&su).await;
    for p in &key_files {
        let sql = format!(
            "SELECT pg_read_binary_file('{}')",
            p.display().to_string().replace('\'', "''")
        );
        let err = refused(&admin, &sql).await;
        assert!(err.contains("Permission denied"), "{}: {err}", p.display());
    }
    let listing = admin
        .batch_execute(&format!(
            "CREATE TEMP TABLE ls (line text); COPY ls FROM PROGRAM 'cat {}/keys/* 2>&1; true'",
            env.home.display()
        ))
        .await;
    listing.unwrap();
    let seen = scalar(&admin, "SELECT string_agg(line, ' ') FROM ls").await;
    assert!(seen.contains("Permission denied"), "{seen}");

    // A superuser who turned the owner into a superuser, or dropped it: the next start puts
    // it back (the same path migrates clusters made before owner roles existed).
    admin
        .batch_execute(
            "ALTER ROLE cairn_owner SUPERUSER; GRANT pg_read_server_files TO cairn_owner;",
        )
        .await
        .unwrap();
    drop(admin);
    env.ok(&["compute", "stop", "main"]);
    let url = env.start("main");
    let c = connect(&url).await;
    assert_eq!(
        scalar(
            &c,
            "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user"
        )
        .await,
        "false"
    );
    let err = refused(&c, "COPY (SELECT 1) TO '/tmp/cairn-tenant-x'").await;
    assert!(err.contains("pg_write_server_files"), "{err}");
    drop(c);
    let admin = connect(&env.start_superuser("main")).await;
    admin
        .batch_execute(
            "REASSIGN OWNED BY cairn_owner TO postgres; DROP OWNED BY cairn_owner; \
             DROP SCHEMA cairn CASCADE; DROP ROLE cairn_owner;",
        )
        .await
        .unwrap();
    drop(admin);
    env.ok(&["compute", "stop", "main"]);
    let c = connect(&env.start("main")).await;
    c.batch_execute("CREATE TABLE after_migration (x int); SELECT cairn.create_role('app2', 'p')")
        .await
        .unwrap();
    drop(c);

    // A second cluster shares the OS user: no superuser for either.
    env.ok(&["cluster", "create", "other"]);
    let err = env.fail(&[
        "compute",
        "start",
        "main",
        "--cluster",
        "shop",
        "--superuser",
    ]);
    assert!(
        err.contains("other") && err.contains("one cluster"),
        "{err}"
    );
    let err = env.fail(&[
        "compute",
        "start",
        "main",
        "--cluster",
        "other",
        "--superuser",
    ]);
    assert!(err.contains("shop"), "{err}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restored_data_directory_says_how_to_log_in() {
    let env = Env::new();
    env.two_file_regions();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let c = connect(&url).await;
    c.batch_execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g")
        .await
        .unwrap();
    drop(c);
    env.stop_all();
    env.ok(&["backup", "now"]);
    let target = env.dir.path().join("restored");
    let report = env.json(&["restore", "shop", "--to-datadir", target.to_str().unwrap()]);
    let logins = report["logins"].as_array().unwrap();
    let roles: Vec<&str> = logins.iter().map(|l| l["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["postgres", "cairn_owner"], "{report}");
    let how = logins[1]["how"].as_str().unwrap();
    assert!(how.contains("cairn cluster password shop"), "{how}");
    // The text report says the same.
    let text = env.ok(&[
        "restore",
        "shop",
        "--to-datadir",
        env.dir.path().join("restored-2").to_str().unwrap(),
    ]);
    assert!(
        text.contains("logging in:") && text.contains("cairn_owner"),
        "{text}"
    );

    // The owner logs in with the password the command prints (no password in the report).
    assert!(
        !report.to_string().contains(&login_of(&url)[12..]),
        "{report}"
    );
    let pw = env.ok(&["cluster", "password", "shop"]).trim().to_string();
    assert_eq!(format!("cairn_owner:{pw}"), login_of(&url));
    let sockets = env.dir.path().join("sockets");
    std::fs::create_dir(&sockets).unwrap();
    chown_postgres(&sockets);
    let server = Plain::start_with_socket(&target, Some(&sockets));
    let c = connect(&server.url_as(&format!("cairn_owner:{pw}"))).await;
    assert_eq!(scalar(&c, "SELECT count(*)::text FROM t").await, "100");
    // The OS user that owns the directory is the superuser over the socket, no password.
    if is_root() {
        let out = psql_over_socket(
            "postgres",
            &sockets,
            server.port,
            "SELECT current_user || ' ' || rolsuper FROM pg_roles WHERE rolname = current_user",
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "postgres true",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Another OS user is not let in by that line.
        let out = psql_over_socket("nobody", &sockets, server.port, "SELECT 1");
        assert!(!out.status.success());
    }
}

/// `psql` as OS user `os_user` over the Unix socket in `sockets`, as role postgres, never
/// prompting for a password.
fn psql_over_socket(
    os_user: &str,
    sockets: &std::path::Path,
    port: u16,
    sql: &str,
) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", os_user, "--"])
        .arg(pg_bin().join("psql"))
        .args(["-XAtqw", "-h"])
        .arg(sockets)
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ])
        .output()
        .unwrap()
}

/// The heartbeat a verification measures the achieved RPO with is the appliance's, not the
/// tenant's: an owner who made schema `cairn_heartbeat` first (a far-future heartbeat, to pass
/// any RPO) gets no heartbeat written and a verification that says the heartbeat cannot be
/// trusted and names what the owner made; once a superuser dropped it, `cairn up` writes its
/// own, which the owner cannot see in `\dt`, read, write or add to.
#[tokio::test(flavor = "multi_thread")]
async fn a_compute_owner_can_neither_forge_nor_touch_the_heartbeat() {
    let env = Env::new();
    env.two_file_regions();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    // (Asked for before a verification made HOME/verify, which the superuser's OS user could
    // search: the superuser URL is refused from then on.)
    let su_login = login_of(&env.start_superuser("main"));
    let owner = psql(&url, "SELECT current_user || ' ' || current_database()");
    let (owner, db) = owner.split_once(' ').unwrap();
    assert_eq!(db, "postgres", "the heartbeat lives in database postgres");
    psql(
        &url,
        "CREATE SCHEMA cairn_heartbeat; \
         CREATE TABLE cairn_heartbeat.beat (id int PRIMARY KEY, at_us bigint, beats bigint); \
         INSERT INTO cairn_heartbeat.beat VALUES (1, 9000000000000000, 1)",
    );
    let dir = env.home.join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("beat.toml"),
        "clusters = [\"shop\"]\n[objectives]\nrpo = \"5m\"\nrto = \"1h\"\n\
         [schedules]\nimage = \"@daily\"\nverify = \"@daily\"\n[retention]\npitr = \"1d\"\n\
         [regions]\nuse = [\"region-a\", \"region-b\"]\nmin_copies = 2\n\
         [verification]\nchecks = [\"heartbeat\"]\n",
    )
    .unwrap();
    env.ok(&["policy", "apply", "--by", "alice"]);

    // Forged: no heartbeat is written, and the status says why.
    let (up, port) = env.spawn_up(&["--heartbeat-every", "1s"]);
    let up = KillOnDrop(up);
    let problem = wait_for("the refused heartbeat in the status", 60, || {
        let st = api(port, "/api/health")?;
        st["recent_errors"]
            .as_array()?
            .iter()
            .filter_map(|e| e["message"].as_str())
            .find(|m| m.starts_with("heartbeat of branch 'main'"))
            .map(str::to_string)
    });
    assert!(
        problem.contains(&format!("schema cairn_heartbeat (owned by {owner})"))
            && problem.contains(&format!("relation cairn_heartbeat.beat (owned by {owner})"))
            && problem.contains("DROP SCHEMA cairn_heartbeat CASCADE"),
        "{problem}"
    );
    drop(up); // (A clean stop: the compute stops too.)
    let url = env.start("main");
    assert_eq!(
        psql(&url, "SELECT at_us FROM cairn_heartbeat.beat"),
        "9000000000000000",
        "Cairn wrote nothing into the owner's table"
    );
    // A verification of a copy holding the forged heartbeat does not believe it.
    env.ok(&["backup", "now"]);
    let out = env.run(&["verify", "shop", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hb = report_check(&r, "heartbeat");
    assert_eq!(hb["outcome"], "failed", "{hb:#}");
    let why = hb["details"][0].as_str().unwrap();
    assert!(
        why.starts_with("the heartbeat cannot be trusted")
            && why.contains(&format!("schema cairn_heartbeat (owned by {owner})")),
        "{why}"
    );
    assert_eq!(r["achieved_rpo_ms"], serde_json::Value::Null, "{r:#}");

    // A superuser drops it; Cairn's own heartbeat follows.
    let su = format!(
        "postgresql://{su_login}@127.0.0.1:{}/postgres",
        port_of(&url)
    );
    psql(&su, "DROP SCHEMA cairn_heartbeat CASCADE");
    let (up, _port) = env.spawn_up(&["--heartbeat-every", "1s"]);
    let _up = KillOnDrop(up);
    wait_for("Cairn's heartbeats", 60, || {
        let made = psql(
            &su,
            "SELECT to_regclass('cairn_heartbeat.beat') IS NOT NULL",
        );
        if made != "t" {
            return None;
        }
        let beats = psql(&su, "SELECT beats FROM cairn_heartbeat.beat");
        (beats.parse::<i64>().ok()? >= 2).then_some(())
    });
    let made_by = psql(
        &su,
        "SELECT r.rolsuper FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner \
         WHERE n.nspname = 'cairn_heartbeat'",
    );
    assert_eq!(made_by, "t");
    let listed = psql(&url, "\\dt");
    assert!(
        !listed.contains("beat"),
        "the owner's \\dt lists it: {listed}"
    );
    let c = connect(&url).await;
    for sql in [
        "SELECT at_us FROM cairn_heartbeat.beat",
        "UPDATE cairn_heartbeat.beat SET at_us = 9000000000000000",
        "INSERT INTO cairn_heartbeat.beat VALUES (2, 9000000000000000, 1)",
        "CREATE TABLE cairn_heartbeat.more (x int)",
        "CREATE FUNCTION cairn_heartbeat.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "DROP SCHEMA cairn_heartbeat CASCADE",
        "ALTER SCHEMA cairn_heartbeat RENAME TO mine",
    ] {
        let err = refused(&c, sql).await;
        assert!(
            err.contains("permission denied") || err.contains("must be owner"),
            "{sql}: {err}"
        );
    }
    env.stop_all();
}

/// What a verification runs in a tenant's data must never run the tenant's code as a
/// superuser. The owner plants code where a verifier's queries would resolve to it: a cast of
/// its table's row type to text (the fingerprint reads rows as text), a `lower(varchar)` that
/// beats the built-in `lower(text)` for a varchar column (as a probe might call it), and a
/// `hashtextextended(text, integer)`, and an expression index whose function `amcheck
/// --heapallindexed` evaluates. Each tries to write a file with `COPY ... TO`, which only a
/// superuser may; an owner's own call fails quietly, so the planted code changes no result.
/// After a verification with the fingerprint, amcheck and a probe that calls `lower`, all pass
/// and no file was written.
#[tokio::test(flavor = "multi_thread")]
async fn a_verification_never_runs_a_tenants_code_as_superuser() {
    let env = Env::new();
    env.ok(&["cluster", "create", "shop"]);
    let url = env.start("main");
    let c = connect(&url).await;
    let tag = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let marker = |what: &str| std::path::PathBuf::from(format!("/tmp/cairn-pwned-{what}-{tag}"));
    let attempt = |what: &str| {
        format!(
            "BEGIN EXECUTE format('COPY (SELECT 1) TO %L', '{}'); \
             EXCEPTION WHEN others THEN NULL; END;",
            marker(what).display()
        )
    };
    c.batch_execute(&format!(
        "CREATE TABLE t (v varchar);
         INSERT INTO t SELECT 'Row ' || g FROM generate_series(1, 50) g;
         CREATE FUNCTION row_as_text(t) RETURNS text LANGUAGE plpgsql AS $$
           BEGIN {cast} RETURN 'same for every row'; END $$;
         CREATE CAST (t AS text) WITH FUNCTION row_as_text(t);
         CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE plpgsql AS $$
           BEGIN {lower} RETURN pg_catalog.lower($1::text); END $$;
         CREATE FUNCTION public.hashtextextended(text, integer) RETURNS bigint
           LANGUAGE plpgsql AS $$
           BEGIN {hash} RETURN 0; END $$;
         CREATE FUNCTION folded(varchar) RETURNS text IMMUTABLE LANGUAGE plpgsql AS $$
           BEGIN {index} RETURN pg_catalog.upper($1::text); END $$;
         CREATE INDEX t_folded ON t (folded(v));",
        cast = attempt("cast"),
        lower = attempt("lower"),
        hash = attempt("hash"),
        index = attempt("index"),
    ))
    .await
    .unwrap();
    // The planted code is live for the owner, and harmless in the owner's hands.
    assert_eq!(
        scalar(&c, "SELECT (t)::text FROM t LIMIT 1").await,
        "same for every row"
    );
    assert_eq!(scalar(&c, "SELECT lower(v) FROM t LIMIT 1").await, "row 1");
    for what in ["cast", "lower", "hash", "index"] {
        assert!(!marker(what).exists());
    }
    drop(c);
    env.ok(&["backup", "now"]);

    let out = env.run(&[
        "verify",
        "shop",
        "--json",
        "--check",
        "recovery_target",
        "--check",
        "fingerprint",
        "--check",
        "amcheck",
        "--check",
        "probes",
        "--probe",
        "lowered=SELECT bool_and(lower(v) LIKE 'row %') FROM t",
    ]);
    let written: Vec<_> = ["cast", "lower", "hash", "index"]
        .into_iter()
        .filter(|w| marker(w).exists())
        .collect();
    for w in &written {
        let _ = std::fs::remove_file(marker(w));
    }
    assert!(
        written.is_empty(),
        "the tenant's code ran as a superuser during the verification: {written:?}"
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    for check in ["recovery_target", "fingerprint", "amcheck", "probes"] {
        assert_eq!(
            report_check(&r, check)["outcome"],
            "passed",
            "{check}: {r:#}"
        );
    }
    assert_eq!(r["outcome"], "passed", "{r:#}");
    env.stop_all();
}
