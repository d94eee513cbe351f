//! Block-level deduplication: after pgbench churn that touches a small fraction of the pages, a
//! second image layer adds only a small fraction of the first one's bytes to the disk. Sizes
//! are measured on the layer files themselves (their length, and their metadata's length read
//! from the trailer as docs/FORMAT.md lays it out), not taken from what Cairn reports.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The file of image layer `id`.
fn layer_file(env: &Env, id: &str) -> PathBuf {
    env.layer_files()
        .into_iter()
        .find(|(i, ext, _)| i == id && ext == "img")
        .unwrap_or_else(|| panic!("no file for image layer {id}"))
        .2
}

/// (bytes on disk, bytes of its metadata frame) of a layer file.
fn on_disk(path: &Path) -> (u64, u64) {
    let b = std::fs::read(path).unwrap();
    let t = &b[b.len() - 56..];
    assert_eq!(&t[48..], b"CAIRNEND");
    let meta_len = u64::from_le_bytes(t[8..16].try_into().unwrap());
    (b.len() as u64, meta_len)
}

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

    let logical1 = first["logical_bytes"].as_u64().unwrap();
    let logical2 = second["logical_bytes"].as_u64().unwrap();
    let (file1, meta1) = on_disk(&layer_file(&env, first["layer"].as_str().unwrap()));
    let (file2, meta2) = on_disk(&layer_file(&env, second["layer"].as_str().unwrap()));
    let (data1, data2) = (file1 - meta1 - 72, file2 - meta2 - 72);
    let ratio = file2 as f64 / file1 as f64;
    let data_ratio = data2 as f64 / data1 as f64;
    let pages2 = logical2 / 8192;
    println!(
        "image 1: {logical1} bytes of data, file {file1} (metadata {meta1}); image 2: {logical2} \
         bytes of data, file {file2} (metadata {meta2}); on disk {ratio:.4}, pieces {data_ratio:.4}, \
         metadata {:.1} bytes per page",
        meta2 as f64 / pages2 as f64
    );
    assert!(
        logical2 >= logical1 && logical1 > 70 << 20,
        "scale 5 is about 75 MiB"
    );
    // What the second image adds to the disk, all of it: new pieces and its page list.
    assert!(
        ratio < 0.25,
        "the second image's file is {file2} bytes, {ratio:.3} of the first's {file1}"
    );
    // The new pieces alone: the churned pages, not the cluster again.
    assert!(
        data_ratio < 0.10,
        "the second image stored {data2} bytes of pieces, {data_ratio:.3} of the first's {data1}"
    );
    // The page list costs a bounded amount per page of the cluster (a hash and a location each,
    // compressed): this is the price of per-page deduplication.
    assert!(
        meta2 < 64 * pages2,
        "{meta2} bytes of metadata for {pages2} pages"
    );
    // And it did store the churn: a bug that stores nothing fails too.
    assert!(
        data2 > 16 << 10,
        "the churned pages were stored: {data2} bytes"
    );
    // And the deduplicated image restores exactly: a branch at its end, materialised from it.
    restores_exactly(&env, connect(&url).await).await;
}

/// A branch at main's end, materialised from the newest image, holds main's accounts; then
/// everything stops and the store checks out.
async fn restores_exactly(env: &Env, main: tokio_postgres::Client) {
    let expected = table_checksum(&main, "pgbench_accounts").await;
    drop(main);
    env.ok(&["branch", "create", "check", "--from", "main"]);
    let b = connect(&env.start("check")).await;
    assert_eq!(table_checksum(&b, "pgbench_accounts").await, expected);
    drop(b);
    env.stop_all();
    env.ok(&["check", "--full"]);
}

/// A new image of main; its layer id.
fn image(env: &Env) -> String {
    env.json(&["image", "create", "main"])["layer"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The images an image layer references, from the catalog (`layer_refs`).
async fn refs_of(env: &Env, layer: &str) -> Vec<String> {
    sqlx::any::install_default_drivers();
    let url = format!("sqlite://{}?mode=ro", env.home.join("catalog.db").display());
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let refs = sqlx::query_scalar("SELECT ref_layer_id FROM layer_refs WHERE layer_id = $1")
        .bind(layer)
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    refs
}

/// An image stops referencing an earlier image once the newest image reads less than half of
/// what that one stored (its live pages are stored again), and stops referencing the images
/// that read such an image, so an old image is not kept for a few pages forever; an image
/// still mostly read stays referenced.
#[tokio::test(flavor = "multi_thread")]
async fn images_stop_referencing_an_image_that_is_mostly_rewritten() {
    let env = Env::new();
    env.ok(&["cluster", "create", "bench"]);
    let url = env.start("main");
    pgbench(&url, &["-i", "-s", "2", "-q"]);
    let base = image(&env);
    // Small churn: the next image reads most of the base.
    pgbench(&url, &["-t", "50", "-c", "1", "-n"]);
    let second = image(&env);
    assert!(refs_of(&env, &second).await.contains(&base));
    // Every account rewritten (most of the cluster's bytes): the image after that reads
    // little of the base, ...
    let c = connect(&url).await;
    for sql in [
        "UPDATE pgbench_accounts SET abalance = abalance + 1",
        "VACUUM FULL pgbench_accounts",
        "CHECKPOINT",
    ] {
        c.batch_execute(sql).await.unwrap();
    }
    let third = image(&env);
    let third_refs = refs_of(&env, &third).await;
    println!("the third image references {third_refs:?} (base {base}, second {second})");
    // ... so the one after it no longer references the base (it stores the base's live
    // pages), nor any image that reads the base (the third does): referencing one would keep
    // the base through it.
    assert!(third_refs.contains(&base), "{third_refs:?}");
    pgbench(&url, &["-t", "50", "-c", "1", "-n"]);
    let fourth = image(&env);
    let fourth_refs = refs_of(&env, &fourth).await;
    println!("the fourth image references {fourth_refs:?}");
    assert!(!fourth_refs.contains(&base), "{fourth_refs:?}");
    assert!(!fourth_refs.contains(&third), "{fourth_refs:?}");
    // The chain restarts from the fourth: the fifth references it.
    pgbench(&url, &["-t", "50", "-c", "1", "-n"]);
    let fifth = image(&env);
    let fifth_refs = refs_of(&env, &fifth).await;
    assert!(fifth_refs.contains(&fourth), "{fifth_refs:?}");
    assert!(
        !fifth_refs.contains(&base) && !fifth_refs.contains(&third),
        "{fifth_refs:?}"
    );
    // And it restores exactly.
    restores_exactly(&env, c).await;
}
