//! Block-level deduplication: after pgbench churn that touches a small fraction of the pages, a
//! second image layer stores only a small fraction of what the first one stored.

mod common;

use common::*;

fn pgbench(url: &str, args: &[&str]) {
    let out = std::process::Command::new(pg_bin().join("pgbench"))
        .args(args)
        .arg(url)
        .output()
        .expect("run pgbench");
    assert!(
        out.status.success(),
        "pgbench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn second_image_after_small_churn_stores_a_small_fraction() {
    let env = Env::new();
    env.ok(&["cluster", "create", "bench"]);
    let url = env.start("main");
    pgbench(&url, &["-i", "-s", "5", "-q"]);
    let first = env.json(&["image", "create", "main"]);
    // 100 transactions update at most 100 of the ~8,200 pgbench_accounts pages (and, with
    // fillfactor 100, move those rows to new pages and add index entries).
    pgbench(&url, &["-t", "100", "-c", "1", "-n"]);
    let second = env.json(&["image", "create", "main"]);

    let stored1 = first["stored_bytes"].as_u64().unwrap();
    let stored2 = second["stored_bytes"].as_u64().unwrap();
    let logical1 = first["logical_bytes"].as_u64().unwrap();
    let logical2 = second["logical_bytes"].as_u64().unwrap();
    let ratio = stored2 as f64 / stored1 as f64;
    println!(
        "image 1: {logical1} bytes of data, {stored1} stored; image 2: {logical2} bytes of data, \
         {stored2} stored; ratio {ratio:.4}"
    );
    assert!(
        logical2 >= logical1 && logical1 > 70 << 20,
        "scale 5 is about 75 MiB"
    );
    assert!(
        ratio < 0.10,
        "the second image stored {stored2} bytes, {ratio:.3} of the first's {stored1}"
    );
    let pieces = second["stats"]["pieces"].as_u64().unwrap();
    let new = second["stats"]["new_pieces"].as_u64().unwrap();
    assert!(new * 10 < pieces, "{new} of {pieces} pieces were new");

    // And the deduplicated image restores exactly: a branch at its end, materialised from it.
    let c = connect(&url).await;
    let expected = table_checksum(&c, "pgbench_accounts").await;
    drop(c);
    env.ok(&["branch", "create", "check", "--from", "main"]);
    let b = connect(&env.start("check")).await;
    assert_eq!(table_checksum(&b, "pgbench_accounts").await, expected);
    drop(b);
    env.stop_all();
    env.ok(&["check", "--full"]);
}
