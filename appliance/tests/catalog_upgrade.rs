//! Upgrades: a catalog created at every earlier schema version, holding rows in every table of
//! that version, migrates to the current version on SQLite and on PostgreSQL when an appliance
//! opens it, and everything in it reads back. Released migrations of every crate are pinned by
//! the SHA-256 of their SQL, so editing one (instead of appending a new one) fails here; version
//! numbers are unique across crates; a catalog a newer cairn wrote is refused.

use sha2::{Digest, Sha256};

use cairn_appliance::{Appliance, ApplianceOptions, CATALOG_COMPONENTS};
use cairn_engine::catalog::schema::Migration;
use cairn_engine::catalog::Catalog;
use cairn_engine::pg::scratch::ScratchServer;
use cairn_engine::Lsn;

/// Every migration of every crate, by version.
fn all_migrations() -> Vec<&'static Migration> {
    let mut all: Vec<&Migration> = CATALOG_COMPONENTS
        .iter()
        .flat_map(|c| c.migrations.iter())
        .collect();
    all.sort_by_key(|m| m.version);
    all
}

fn latest() -> i64 {
    all_migrations().last().unwrap().version
}

const C: &str = "c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0";
const MAIN: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const DEV: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";

fn id(c: char) -> String {
    c.to_string().repeat(64)
}

/// Rows a catalog of schema `version` holds, written with that version's columns.
fn rows_of(version: i64) -> Vec<String> {
    let (img, wal1, wal2) = (id('1'), id('2'), id('3'));
    let mut v = vec![
        format!(
            "INSERT INTO clusters (id, name, kind, pg_major, system_id, segment_size, tli, source,
                                   slot, created_at)
             VALUES ('{C}', 'shop', 'managed', 15, '7441431976000000123', 16777216, 1, NULL,
                     NULL, 1)"
        ),
        format!(
            "INSERT INTO timelines (id, cluster_id, ancestor_id, ancestor_lsn, ancestor_prev,
                                    head, head_prev, created_at)
             VALUES ('{MAIN}', '{C}', NULL, NULL, NULL, 50331808, 50331768, 2)"
        ),
        format!(
            "INSERT INTO timelines (id, cluster_id, ancestor_id, ancestor_lsn, ancestor_prev,
                                    head, head_prev, created_at)
             VALUES ('{DEV}', '{C}', '{MAIN}', 41943080, 41943040, 41943080, NULL, 3)"
        ),
        format!(
            "INSERT INTO branches (cluster_id, name, timeline_id, protected, created_at)
             VALUES ('{C}', 'main', '{MAIN}', 1, 2)"
        ),
        format!(
            "INSERT INTO branches (cluster_id, name, timeline_id, protected, created_at)
             VALUES ('{C}', 'dev', '{DEV}', 0, 3)"
        ),
        format!(
            "INSERT INTO layers (id, cluster_id, timeline_id, kind, start_lsn, end_lsn,
                                 file_size, logical_size, stored_bytes, created_at)
             VALUES ('{img}', '{C}', '{MAIN}', 'image', 33554472, 33554688, 4000, 40000, 3000, 2)"
        ),
        format!(
            "INSERT INTO layers (id, cluster_id, timeline_id, kind, start_lsn, end_lsn,
                                 file_size, logical_size, stored_bytes, created_at)
             VALUES ('{wal1}', '{C}', '{MAIN}', 'wal', 33554472, 50331808, 500, 16777336, 500, 2)"
        ),
        format!(
            "INSERT INTO layers (id, cluster_id, timeline_id, kind, start_lsn, end_lsn,
                                 file_size, logical_size, stored_bytes, created_at)
             VALUES ('{wal2}', '{C}', '{DEV}', 'wal', 41943080, 41943080, 100, 0, 100, 3)"
        ),
        format!("INSERT INTO layer_refs (layer_id, ref_layer_id) VALUES ('{wal1}', '{img}')"),
        format!(
            "INSERT INTO computes (timeline_id, cluster_id, desired, port, datadir, pid,
                                   started_at)
             VALUES ('{DEV}', '{C}', 'running', 5433, '/var/lib/cairn/computes/x/pgdata', NULL, 4)"
        ),
    ];
    if version < 5 {
        // Two commits and a restore point, as versions 1 to 4 kept every event.
        for (kind, before, end, t, name) in [
            (
                "commit",
                40000000,
                40000040,
                1_795_000_000_000_000i64,
                "NULL",
            ),
            (
                "restore_point",
                40000040,
                40000100,
                1_795_000_000_500_000,
                "'before'",
            ),
            ("commit", 40000100, 40000140, 1_795_000_001_000_000, "NULL"),
        ] {
            v.push(format!(
                "INSERT INTO wal_events (timeline_id, layer_id, kind, before_lsn, end_lsn,
                                         time_us, name)
                 VALUES ('{MAIN}', '{wal1}', '{kind}', {before}, {end}, {t}, {name})"
            ));
        }
    }
    if version >= 2 {
        v.extend([
            format!(
                "INSERT INTO layer_keys (layer_id, cluster_id, key_id, key_object,
                                         object_sha256, object_size, created_at)
                 VALUES ('{img}', '{C}', 'k1', 'keyobj', 'ab', 4100, 5)"
            ),
            format!(
                "INSERT INTO shipments (layer_id, region, object_sha256, shipped_at)
                 VALUES ('{img}', 'region-a', 'ab', 6)"
            ),
            format!(
                "INSERT INTO index_writes (timeline_id, cluster_id, region, generation, sequence,
                                           layers, digest, written_at)
                 VALUES ('{MAIN}', '{C}', 'region-a', 1, 3, 2, 'dd', 7)"
            ),
            "INSERT INTO key_recipients (recipient, role, label, added_at)
             VALUES ('age1xyz', 'appliance', 'this appliance', 1)"
                .to_string(),
            "INSERT INTO appliance (id, generation, trusted_signers, created_at)
             VALUES ('self', 7, '[]', 1)"
                .to_string(),
            "INSERT INTO deletions (region, object_key, reason, queued_at, not_before)
             VALUES ('region-a', 'clusters/x/layers/y', 'branch deleted', 8, 9)"
                .to_string(),
            format!(
                "INSERT INTO shreds (cluster_id, cluster_name, requested_at, due_at)
                 VALUES ('{C}', 'shop', 10, 11)"
            ),
        ]);
    }
    if version >= 3 {
        v.push(
            "INSERT INTO restores (id, cluster_name, branch, point, lsn, target, region, ok,
                                   error, report, started_at, finished_at)
             VALUES ('r1', 'shop', 'main', 'latest', 50331808, 'data directory /srv/x',
                     'region-a', 1, NULL, '{}', 12, 13)"
                .to_string(),
        );
    }
    if version >= 4 {
        v.extend([
            format!(
                "UPDATE layer_keys SET dek_commitment = 'cc', tail_len = 96, tail_sha256 = 'tt'
                 WHERE layer_id = '{img}'"
            ),
            "INSERT INTO region_states (region, generation, sequence, digest, written_at)
             VALUES ('region-a', 1, 4, 'ss', 14)"
                .to_string(),
        ]);
    }
    v
}

/// Creates a catalog of schema `version` at `url` holding [`rows_of`] it, then opens it as
/// this cairn does and checks that everything reads back.
async fn upgrade_from(url: &str, version: i64) {
    let old = Catalog::connect(url).await.unwrap();
    for c in CATALOG_COMPONENTS {
        old.migrate_until(c, version).await.unwrap();
    }
    assert_eq!(old.schema_version().await.unwrap(), version);
    for stmt in rows_of(version) {
        sqlx::query(&stmt)
            .execute(old.pool())
            .await
            .unwrap_or_else(|e| panic!("version {version}: {e}\n{stmt}"));
    }
    old.close().await;

    // Opened as an appliance opens it: the engine, then the protection layer (keys created on
    // first use in the home), then the restore.
    let home = tempfile::tempdir().unwrap();
    let (app, _) = Appliance::open(&ApplianceOptions {
        home: home.path().to_path_buf(),
        catalog_url: Some(url.to_string()),
        pg_bin: None,
    })
    .await
    .unwrap_or_else(|e| panic!("from {version}: {e}"));
    let cat = &app.engine().catalog;
    assert_eq!(
        cat.schema_version().await.unwrap(),
        latest(),
        "from {version}"
    );
    let clusters = cat.clusters().await.unwrap();
    assert_eq!(clusters.len(), 1);
    let c = &clusters[0];
    assert_eq!(
        (c.name.as_str(), c.pg_major, c.system_id),
        ("shop", 15, 7441431976000000123)
    );
    let tls = cat.timelines(c.id).await.unwrap();
    assert_eq!(tls.len(), 2);
    let dev = cat.branch(c.id, "dev").await.unwrap().unwrap();
    let dev_tl = tls.iter().find(|t| t.id == dev.timeline_id).unwrap();
    assert_eq!(
        dev_tl.ancestor.map(|(t, l)| (t.to_string(), l.0)),
        Some((MAIN.to_string(), 41943080))
    );
    assert!(cat.branch(c.id, "main").await.unwrap().unwrap().protected);
    let layers = cat.layers(c.id).await.unwrap();
    assert_eq!(layers.len(), 3);
    assert!(cat.compute(dev.timeline_id).await.unwrap().is_some());
    if version < 5 {
        // The per-commit events became a summary and a marker.
        let main = cat.branch(c.id, "main").await.unwrap().unwrap().timeline_id;
        let markers = cat.markers(main).await.unwrap();
        assert_eq!(markers.len(), 1, "{markers:?}");
        assert_eq!(markers[0].name.as_deref(), Some("before"));
        let s = cat
            .txn_layers_before(main, Lsn(0), Lsn(u32::MAX as u64))
            .await
            .unwrap();
        assert_eq!(s.len(), 1, "{s:?}");
    }
    // The protection tables kept their rows.
    for (table, from) in [
        ("layer_keys", 2),
        ("shipments", 2),
        ("index_writes", 2),
        ("deletions", 2),
        ("shreds", 2),
        ("restores", 3),
        ("region_states", 4),
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(cat.pool())
            .await
            .unwrap();
        assert_eq!(
            n,
            i64::from(version >= from),
            "{table} from version {version}"
        );
    }
    // The appliance's identity: the one the old catalog held, else the one the protection
    // layer records when it first opens; its key recipients likewise.
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT id, generation FROM appliance")
        .fetch_all(cat.pool())
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "from {version}: {rows:?}");
    assert_eq!(rows[0].1 == 7, version >= 2, "from {version}: {rows:?}");
    let recipients: Vec<String> = sqlx::query_scalar("SELECT recipient FROM key_recipients")
        .fetch_all(cat.pool())
        .await
        .unwrap();
    assert_eq!(
        recipients.contains(&"age1xyz".to_string()),
        version >= 2,
        "from {version}: {recipients:?}"
    );
    if version >= 3 {
        let restores = cairn_restore::history::list(cat, Some("shop"), 10)
            .await
            .unwrap();
        assert_eq!(restores.len(), 1);
    }
    // Every applied migration is named with the crate that owns it.
    for c in CATALOG_COMPONENTS {
        let owned: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM cairn_schema WHERE component = $1 ORDER BY version",
        )
        .bind(c.name)
        .fetch_all(cat.pool())
        .await
        .unwrap();
        let expected: Vec<i64> = c.migrations.iter().map(|m| m.version).collect();
        assert_eq!(owned, expected, "{} from {version}", c.name);
    }
    cat.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_earlier_schema_version_upgrades_on_sqlite() {
    for version in 1..latest() {
        let dir = tempfile::tempdir().unwrap();
        upgrade_from(&Catalog::sqlite_url(dir.path()), version).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_earlier_schema_version_upgrades_on_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let server = ScratchServer::start(&dir.path().join("pg"), &[]).expect("start PostgreSQL");
    for version in 1..latest() {
        let db = format!("upgrade{version}");
        let admin = Catalog::open(&server.url("postgres")).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(admin.pool())
            .await
            .unwrap();
        admin.close().await;
        upgrade_from(&server.url(&db), version).await;
    }
}

/// SHA-256 of each released migration (its version, description and statements): a released
/// migration is never edited; a schema change appends one.
const RELEASED: &[(i64, &str)] = &[
    (
        1,
        "46bb552a61f13182b3f9eab9ca6396a9c545226d4bbb899606d9622d900725fd",
    ),
    (
        2,
        "f9de03e4d84a1cb1946f95e2e41c5c72b88ea1e6c7443993d39d42f44ecbae1c",
    ),
    (
        3,
        "58ac738143f7558428b16d27f94df9500f55689c12da1e7e582e43e8e59d9d8e",
    ),
    (
        4,
        "65a911afa6c15a3fada687887ee049056916fe0ac8c7fbdf18e81c1b3448dd60",
    ),
    (
        5,
        "7d68e71c2c3cf08f7993f442e55626503b10a80dbb0775c39021cec2a73dbf94",
    ),
    (
        6,
        "05a7211505b04bce683e34e177775c3c6559f3b58800852af41f802ded696a4e",
    ),
    (
        7,
        "b52ef900385a50d889e27dd62327020471a014ceae9171b8150277bef1e05269",
    ),
    (
        8,
        "9a3682b35b623a8a8cf2dd136e99e56eb3abf22fd6f6f92ef4657f3bc67ce7e4",
    ),
    (
        9,
        "c84f4546b3609f7da53da45d901f14fe9eae25d52ab686d738a80adac0982599",
    ),
    (
        10,
        "79e85f275543619f82e7e36fa23180d58fbe8e80509b4017e0b48591d076ac05",
    ),
    (
        11,
        "7c17bbf4b2cd6d08e492495934b7135d3899b80c09e9ab28883dc2e71245238d",
    ),
    (
        12,
        "9b0ee19d07aa41901a548ed5375cd308f89b5ec9c6bbbe7927cdd2d760620f7e",
    ),
];

#[test]
fn released_migrations_are_never_edited() {
    let mut got = Vec::new();
    for m in all_migrations() {
        let mut h = Sha256::new();
        h.update(m.version.to_le_bytes());
        h.update(m.description.as_bytes());
        for s in m.statements {
            h.update([0u8]);
            h.update(s.as_bytes());
        }
        got.push((m.version, hex::encode(h.finalize())));
    }
    for (v, hash) in RELEASED {
        let (_, now) = got
            .iter()
            .find(|(g, _)| g == v)
            .unwrap_or_else(|| panic!("migration {v} was removed"));
        assert_eq!(
            now, hash,
            "migration {v} was edited: append a new one instead"
        );
    }
    assert_eq!(
        RELEASED.len(),
        got.len(),
        "pin the new migration's hash: {got:?}"
    );
}

#[test]
fn version_numbers_are_unique_across_crates() {
    let versions: Vec<i64> = all_migrations().iter().map(|m| m.version).collect();
    let mut unique = versions.clone();
    unique.dedup();
    assert_eq!(versions, unique, "two crates share a migration version");
    assert_eq!(
        versions,
        (1..=latest()).collect::<Vec<_>>(),
        "versions are consecutive"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_catalog_a_newer_cairn_wrote_is_refused_naming_the_crate() {
    for owner in ["engine", "backup"] {
        let dir = tempfile::tempdir().unwrap();
        let url = Catalog::sqlite_url(dir.path());
        let cat = Catalog::open(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO cairn_schema (version, description, applied_at, component)
             VALUES (99, 'from the future', 1, $1)",
        )
        .bind(owner)
        .execute(cat.pool())
        .await
        .unwrap();
        cat.close().await;
        let home = tempfile::tempdir().unwrap();
        let err = Appliance::open(&ApplianceOptions {
            home: home.path().to_path_buf(),
            catalog_url: Some(url.clone()),
            pg_bin: None,
        })
        .await
        .err()
        .expect("refused")
        .to_string();
        assert!(
            err.contains(&format!("{owner} tables have schema version 99"))
                && err.contains("upgrade cairn"),
            "{owner}: {err}"
        );
        // The engine alone opens a catalog whose protection tables are newer.
        assert_eq!(Catalog::open(&url).await.is_ok(), owner != "engine");
    }
}
