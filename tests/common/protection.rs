//! The protection layer's test fixtures: two file regions, a cluster backed up to them, the
//! hashes of the payload objects a region holds.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::*;

pub fn two_regions(env: &Env, extra: &str) -> String {
    let t = format!(
        "min_copies = 2\ndeletion_delay = \"0s\"\n{extra}\n{}\n{}",
        env.file_region("region-a"),
        env.file_region("region-b")
    );
    env.write_regions(&t);
    t
}

/// SHA-256 of every payload object (layers, secrets) in a file region.
pub fn payload_hashes(env: &Env, region: &str) -> BTreeMap<String, String> {
    env.region_objects(region)
        .into_iter()
        .filter(|k| k.contains("/layers/") || (k.ends_with("/secrets") && !k.contains("/keys/")))
        .map(|k| {
            let b = std::fs::read(env.region_root(region).join(&k)).unwrap();
            (k, hex::encode(Sha256::digest(b)))
        })
        .collect()
}

/// A cluster with data on main, backed up to both regions.
pub async fn backed_up_cluster(env: &Env) -> String {
    backed_up_cluster_of(env, 60_000).await
}

/// A cluster whose table has `rows` rows of random hashes, backed up; returns its checksum.
pub async fn backed_up_cluster_of(env: &Env, rows: u32) -> String {
    env.ok(&["cluster", "create", "shop"]);
    let c = connect(&env.start("main")).await;
    c.batch_execute(&format!(
        "CREATE TABLE t AS SELECT g, md5(random()::text) AS h FROM generate_series(1, {rows}) g;
         INSERT INTO t VALUES (0, md5('1'));"
    ))
    .await
    .unwrap();
    let sum = table_checksum(&c, "t").await;
    drop(c);
    env.ok(&["backup", "now"]);
    sum
}
