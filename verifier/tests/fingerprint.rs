//! The logical fingerprint against a real PostgreSQL: the same rows in another physical order
//! (another insertion order, another table layout after VACUUM FULL) give the same digest; one
//! changed value, one row more or a row traded for another change it; an empty table and a
//! table whose name needs quoting are covered.

use cairn_engine::pg::scratch::ScratchServer;
use cairn_verifier::run::conn::Server;
use cairn_verifier::run::fingerprint::{differences, fingerprint, Fingerprint};

async fn digest(s: &Server) -> Fingerprint {
    fingerprint(s).await.expect("fingerprint")
}

#[tokio::test(flavor = "multi_thread")]
async fn equal_rows_in_any_order_match_and_any_change_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let pg = ScratchServer::start(&dir.path().join("pg"), &[]).expect("start PostgreSQL");
    let s = Server::Loopback {
        port: pg.port(),
        user: pg.creds.user.clone(),
        password: pg.creds.password.clone(),
    };
    let c = pg.connect("postgres").await.unwrap();
    c.batch_execute(
        "CREATE TABLE a (id int, v text);
         INSERT INTO a SELECT g, 'v' || g FROM generate_series(1, 20000) g;
         CREATE TABLE \"Odd Name\" (x int);
         CREATE TABLE empty (x int);",
    )
    .await
    .unwrap();
    let first = digest(&s).await;
    assert_eq!(first.len(), 3, "{first:?}");
    // Schema-qualified: the fingerprint's session pins search_path to pg_catalog.
    assert_eq!(first[&("postgres".into(), "public.a".into())].0, 20000);
    assert!(first.contains_key(&("postgres".into(), "public.\"Odd Name\"".into())));

    // The same rows, inserted in reverse and rewritten: another physical order.
    c.batch_execute(
        "CREATE TABLE a2 AS SELECT * FROM a ORDER BY id DESC; DROP TABLE a;
         ALTER TABLE a2 RENAME TO a;",
    )
    .await
    .unwrap();
    c.batch_execute("VACUUM FULL a").await.unwrap();
    assert!(differences(&digest(&s).await, &first).is_empty());

    // Each change committed (the fingerprint reads in sessions of its own), then undone.
    for (sql, undo, want) in [
        (
            "UPDATE a SET v = 'w' WHERE id = 777",
            "UPDATE a SET v = 'v777' WHERE id = 777",
            "content differs",
        ),
        (
            "INSERT INTO a VALUES (20001, 'v20001')",
            "DELETE FROM a WHERE id = 20001",
            "20001 rows restored, 20000",
        ),
        (
            // A row traded for another: the count stays, the content does not.
            "DELETE FROM a WHERE id = 5; INSERT INTO a VALUES (5, 'v6')",
            "DELETE FROM a WHERE id = 5; INSERT INTO a VALUES (5, 'v5')",
            "content differs",
        ),
        (
            "INSERT INTO empty VALUES (1)",
            "DELETE FROM empty",
            "postgres.public.empty: 1 rows restored, 0",
        ),
    ] {
        c.batch_execute(sql).await.unwrap();
        let d = differences(&digest(&s).await, &first);
        c.batch_execute(undo).await.unwrap();
        assert_eq!(d.len(), 1, "{sql}: {d:?}");
        assert!(d[0].contains(want), "{sql}: {d:?}");
        assert!(
            differences(&digest(&s).await, &first).is_empty(),
            "{undo} restores the digest"
        );
    }
}
